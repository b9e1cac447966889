//! Compression tables: a one-input embedding network replaced by piecewise quintic
//! polynomials (DeePMD-kit's `dp compress` scheme, `deepmd/dpmodel/utils/tabulate.py`).
//!
//! On each interval `[x_k, x_k + h]` every output is the quintic that matches the network's
//! value, first and second derivative at both ends (a Hermite quintic), so the table is
//! C2 across knots and its error falls as `h^6`. The knots run from `lower` to `upper` with
//! a fine stride, then on to `max` with a coarse one. Unlike DeePMD-kit's kernels, which
//! clamp inputs outside the table, an input outside `[lower, max)` is evaluated with the
//! network itself (`Table::locate` returns `None`), so compression never extrapolates.

use std::sync::Arc;

use super::mlp::{Act, Mlp, Residual};
use super::tensor::{Data, Tensor};
use super::types::DType;

/// Where the knots are: `n0` intervals of `stride0` from `lower`, then `n1` of `stride1`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Knots {
    pub lower: f64,
    pub stride0: f64,
    pub n0: usize,
    pub stride1: f64,
    pub n1: usize,
}

impl Knots {
    /// Knots covering `[lower, upper]` at `stride0` and `[upper, max]` at `stride1` (the
    /// ends rounded outwards to whole strides).
    pub fn cover(lower: f64, upper: f64, max: f64, stride0: f64, stride1: f64) -> Knots {
        let whole = |len: f64, h: f64| -> usize {
            if len > 0.0 {
                // A hair of slack so an exact multiple does not add an interval.
                ((len / h) - 1e-9).ceil().max(1.0) as usize
            } else {
                0
            }
        };
        let n0 = whole(upper - lower, stride0).max(1);
        let upper = lower + n0 as f64 * stride0;
        Knots {
            lower,
            stride0,
            n0,
            stride1,
            n1: whole(max - upper, stride1),
        }
    }

    pub fn intervals(&self) -> usize {
        self.n0 + self.n1
    }

    /// End of the fine part.
    pub fn upper(&self) -> f64 {
        self.lower + self.n0 as f64 * self.stride0
    }

    /// End of the table.
    pub fn max(&self) -> f64 {
        self.upper() + self.n1 as f64 * self.stride1
    }

    /// Start and width of interval `k`.
    pub fn interval(&self, k: usize) -> (f64, f64) {
        if k < self.n0 {
            (self.lower + k as f64 * self.stride0, self.stride0)
        } else {
            (
                self.upper() + (k - self.n0) as f64 * self.stride1,
                self.stride1,
            )
        }
    }

    /// The interval holding `x` and `x`'s offset in it; `None` outside `[lower, max)` (and
    /// for NaN).
    #[inline]
    pub fn locate(&self, x: f64) -> Option<(usize, f64)> {
        let u = self.upper();
        if x >= self.lower && x < u {
            let k = (((x - self.lower) / self.stride0) as usize).min(self.n0 - 1);
            Some((k, x - (self.lower + k as f64 * self.stride0)))
        } else if x >= u && x < self.max() {
            let k = (((x - u) / self.stride1) as usize).min(self.n1 - 1);
            Some((self.n0 + k, x - (u + k as f64 * self.stride1)))
        } else {
            None
        }
    }
}

/// A network's table and how well it matches the network.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub knots: Knots,
    /// Network outputs.
    pub m: usize,
    /// `[intervals, 6, m]` in the network's dtype: coefficient `p` of output `o` on interval
    /// `k` at `[k, p, o]`, so a kernel's inner loop runs along the outputs.
    pub coef: Arc<Tensor>,
    /// Largest `|table - net|` and `|table' - net'|` seen at sample points of every interval
    /// (the ends and three inner points) but the kinked ones, over all outputs.
    pub max_err: f64,
    pub max_err_deriv: f64,
    /// Per interval, whether a relu or relu6 neuron has a kink inside it (empty when none
    /// does). A quintic cannot follow a kink, so kernels evaluate the network there.
    pub kinked: Arc<Vec<bool>>,
}

impl Table {
    /// Tabulate a one-input network on `knots`.
    pub fn build(net: &Mlp, knots: Knots) -> Result<Table, String> {
        net.check()?;
        if net.n_in() != 1 {
            return Err("only a one-input network can be tabulated".into());
        }
        let ok = |v: f64| v.is_finite() && v > 0.0;
        if !knots.lower.is_finite() || !ok(knots.stride0) || !ok(knots.stride1) {
            return Err(format!("bad table knots {knots:?}"));
        }
        if knots.intervals() > 10_000_000 / net.n_out().max(1) {
            return Err(format!(
                "a table of {} intervals is too large; use a larger stride",
                knots.intervals()
            ));
        }
        let f = Scalar::new(net);
        let m = net.n_out();
        let nk = knots.intervals();
        // Each neuron with a kink is piecewise linear in the input between the kinks of the
        // layers before it, so an interval holds a kink exactly where some neuron's side
        // of its kink differs between the interval's ends.
        // The sides come from the same evaluation at each knot as the polynomials.
        let kinks = f.has_kinks();
        let at = |x: f64| {
            let mut sides = Vec::new();
            let v = f.eval_sides(x, kinks.then_some(&mut sides));
            (v, sides)
        };
        let mut kinked = Vec::with_capacity(if kinks { nk } else { 0 });
        let mut coef = vec![0.0; nk * 6 * m];
        let (mut left, mut left_sides) = at(knots.interval(0).0);
        for k in 0..nk {
            let (x0, h) = knots.interval(k);
            let (right, right_sides) = at(x0 + h);
            if kinks {
                kinked.push(left_sides != right_sides);
            }
            left_sides = right_sides;
            let c = &mut coef[k * 6 * m..(k + 1) * 6 * m];
            for o in 0..m {
                let q = hermite5(
                    h,
                    [left.0[o], left.1[o], left.2[o]],
                    [right.0[o], right.1[o], right.2[o]],
                );
                for (p, &v) in q.iter().enumerate() {
                    c[p * m + o] = v;
                }
            }
            left = right;
        }
        let (mut e0, mut e1) = (0.0f64, 0.0f64);
        for k in (0..nk).filter(|&k| !kinked.get(k).copied().unwrap_or(false)) {
            let (x0, h) = knots.interval(k);
            for frac in [0.0, 0.25, 0.5, 0.75, 1.0] {
                let t = frac * h;
                let (y, dy, _) = f.eval(x0 + t);
                let c = &coef[k * 6 * m..(k + 1) * 6 * m];
                for o in 0..m {
                    let (v, d) = poly(c, m, o, t);
                    e0 = e0.max((v - y[o]).abs());
                    e1 = e1.max((d - dy[o]).abs());
                }
            }
        }
        let coef = match net.dtype {
            DType::F32 => Tensor {
                shape: vec![nk, 6, m],
                data: Data::F32(coef.iter().map(|&v| v as f32).collect()),
            },
            _ => Tensor::f64(vec![nk, 6, m], coef),
        };
        Ok(Table {
            knots,
            m,
            coef: Arc::new(coef),
            max_err: e0,
            max_err_deriv: e1,
            kinked: Arc::new(kinked),
        })
    }

    /// Whether interval `k` is evaluated with the network (it holds a kink).
    #[inline]
    pub fn is_kinked(&self, k: usize) -> bool {
        self.kinked.get(k).copied().unwrap_or(false)
    }
}

/// Value and derivative of output `o` at offset `t` from `[6, m]` coefficients.
fn poly(c: &[f64], m: usize, o: usize, t: f64) -> (f64, f64) {
    let a = |p: usize| c[p * m + o];
    let v = a(0) + t * (a(1) + t * (a(2) + t * (a(3) + t * (a(4) + t * a(5)))));
    let d = a(1) + t * (2.0 * a(2) + t * (3.0 * a(3) + t * (4.0 * a(4) + t * 5.0 * a(5))));
    (v, d)
}

/// The quintic on `[0, h]` with value, slope and curvature `l` at 0 and `r` at `h`.
fn hermite5(h: f64, l: [f64; 3], r: [f64; 3]) -> [f64; 6] {
    let [y0, d0, s0] = l;
    let [y1, d1, s1] = r;
    // Residuals of the quadratic Taylor part at h, then the 3x3 solve in closed form.
    let a = y1 - (y0 + d0 * h + 0.5 * s0 * h * h);
    let b = d1 - (d0 + s0 * h);
    let c = s1 - s0;
    let (h2, h3) = (h * h, h * h * h);
    [
        y0,
        d0,
        0.5 * s0,
        (20.0 * a - 8.0 * b * h + c * h2) / (2.0 * h3),
        (-30.0 * a + 14.0 * b * h - 2.0 * c * h2) / (2.0 * h3 * h),
        (12.0 * a - 6.0 * b * h + c * h2) / (2.0 * h3 * h2),
    ]
}

/// A one-input network evaluated in f64 with its first and second derivatives (forward
/// mode): what the tables are fitted to, and what a kernel falls back to off the table.
pub struct Scalar {
    layers: Vec<ScalarLayer>,
}

struct ScalarLayer {
    n_in: usize,
    n_out: usize,
    w: Vec<f64>,
    b: Option<Vec<f64>>,
    idt: Option<Vec<f64>>,
    act: Act,
    residual: Residual,
}

impl Scalar {
    pub fn new(net: &Mlp) -> Scalar {
        Scalar {
            layers: net
                .layers
                .iter()
                .map(|l| ScalarLayer {
                    n_in: l.n_in(),
                    n_out: l.n_out(),
                    w: l.w.to_f64_vec(),
                    b: l.b.as_deref().map(Tensor::to_f64_vec),
                    idt: l.idt.as_deref().map(Tensor::to_f64_vec),
                    act: l.act,
                    residual: l.residual,
                })
                .collect(),
        }
    }

    /// Whether a layer's activation has kinks (relu, relu6).
    pub fn has_kinks(&self) -> bool {
        self.layers.iter().any(|l| l.act.kinks().is_some())
    }

    /// `(y, dy/dx, d2y/dx2)` at `x`.
    pub fn eval(&self, x: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        self.eval_sides(x, None)
    }

    /// The network's outputs on one row `x` of any input width (no derivatives).
    pub fn values(&self, x: Vec<f64>) -> Vec<f64> {
        let zeros = vec![0.0; x.len()];
        self.run((x, zeros.clone(), zeros), None).0
    }

    /// At `x`, for each neuron whose activation has kinks, how many of them its
    /// pre-activation is above (`Table::build` takes them from its own evaluations; the
    /// tests read them here).
    #[cfg(test)]
    fn sides(&self, x: f64) -> Vec<u8> {
        let mut sides = Vec::new();
        self.eval_sides(x, Some(&mut sides));
        sides
    }

    fn eval_sides(&self, x: f64, sides: Option<&mut Vec<u8>>) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        self.run((vec![x], vec![1.0], vec![0.0]), sides)
    }

    /// Forward mode from the input's value, slope and curvature `(h, d, s)`.
    fn run(
        &self,
        (mut h, mut d, mut s): (Vec<f64>, Vec<f64>, Vec<f64>),
        mut sides: Option<&mut Vec<u8>>,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        for l in &self.layers {
            let mut z = l.b.clone().unwrap_or_else(|| vec![0.0; l.n_out]);
            let mut dz = vec![0.0; l.n_out];
            let mut sz = vec![0.0; l.n_out];
            for i in 0..l.n_in {
                let row = &l.w[i * l.n_out..(i + 1) * l.n_out];
                for (o, &w) in row.iter().enumerate() {
                    z[o] += h[i] * w;
                    dz[o] += d[i] * w;
                    sz[o] += s[i] * w;
                }
            }
            if let (Some(sides), Some(kinks)) = (sides.as_deref_mut(), l.act.kinks()) {
                sides.extend(
                    z.iter()
                        .map(|&v| kinks.iter().filter(|&&c| v > c).count() as u8),
                );
            }
            if l.act != Act::Linear {
                for o in 0..l.n_out {
                    let (f, f1, f2) = l.act.eval(z[o]);
                    let (dzo, szo) = (dz[o], sz[o]);
                    z[o] = f;
                    dz[o] = f1 * dzo;
                    sz[o] = f1 * szo + f2 * dzo * dzo;
                }
            }
            if let Some(idt) = &l.idt {
                for o in 0..l.n_out {
                    z[o] *= idt[o];
                    dz[o] *= idt[o];
                    sz[o] *= idt[o];
                }
            }
            let add = |dst: &mut [f64], src: &[f64]| match l.residual {
                Residual::None => {}
                Residual::Same => dst.iter_mut().zip(src).for_each(|(a, b)| *a += b),
                Residual::Doubled => {
                    let n = src.len();
                    for (i, &v) in src.iter().enumerate() {
                        dst[i] += v;
                        dst[i + n] += v;
                    }
                }
            };
            add(&mut z, &h);
            add(&mut dz, &d);
            add(&mut sz, &s);
            (h, d, s) = (z, dz, sz);
        }
        (h, d, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::mlp::MlpLayer;

    fn net() -> Mlp {
        net_with(Act::Tanh)
    }

    fn net_with(act: Act) -> Mlp {
        let t = |shape: Vec<usize>, seed: f64| {
            let n: usize = shape.iter().product();
            let v = (0..n)
                .map(|i| ((i as f64 + 1.0) * seed).sin() * 0.7)
                .collect();
            Some(Arc::new(Tensor::f64(shape, v)))
        };
        let layer = |i: usize, o: usize, res: Residual, seed: f64| MlpLayer {
            w: t(vec![i, o], seed).unwrap(),
            b: t(vec![o], seed * 1.3),
            idt: None,
            act,
            residual: res,
        };
        Mlp {
            dtype: DType::F64,
            layers: vec![
                layer(1, 4, Residual::None, 0.37),
                layer(4, 8, Residual::Doubled, 0.91),
                layer(8, 8, Residual::Same, 0.53),
            ],
        }
    }

    #[test]
    fn derivatives_match_finite_differences() {
        let f = Scalar::new(&net());
        let (x, h) = (0.3, 1e-5);
        let (_, d, s) = f.eval(x);
        let (yp, dp, _) = f.eval(x + h);
        let (ym, dm, _) = f.eval(x - h);
        for o in 0..8 {
            assert!((d[o] - (yp[o] - ym[o]) / (2.0 * h)).abs() < 1e-8);
            assert!((s[o] - (dp[o] - dm[o]) / (2.0 * h)).abs() < 1e-8);
        }
    }

    /// Every activation DeePMD-kit tabulates, away from kinks and from softplus's switch.
    const ACTS: [Act; 8] = [
        Act::Linear,
        Act::Tanh,
        Act::Relu,
        Act::Relu6,
        Act::Softplus,
        Act::Sigmoid,
        Act::Silu,
        Act::Gelu,
    ];

    #[test]
    fn activation_derivatives_match_finite_differences() {
        let h = 1e-5;
        for act in ACTS {
            for x in [-7.3, -2.1, -0.4, 0.3, 1.7, 4.9, 8.2, 19.0, 23.0] {
                let (f, d, s) = act.eval(x);
                let (fp, dp, _) = act.eval(x + h);
                let (fm, dm, _) = act.eval(x - h);
                let tol = 1e-7 * (1.0 + f.abs());
                assert!((d - (fp - fm) / (2.0 * h)).abs() < tol, "{act:?} {x}");
                assert!((s - (dp - dm) / (2.0 * h)).abs() < tol, "{act:?} {x}");
            }
        }
        // The values themselves, against their textbook forms.
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let x = 0.83;
        let gelu = 0.5
            * x
            * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh());
        assert_eq!(Act::Gelu.eval(x).0, gelu);
        assert_eq!(Act::Silu.eval(x).0, x * sig(x));
        assert_eq!(Act::Softplus.eval(x).0, (1.0 + x.exp()).ln());
        assert_eq!(Act::Softplus.eval(21.0).0, 21.0);
        assert_eq!(Act::Relu6.eval(7.5), (6.0, 0.0, 0.0));
        assert_eq!(Act::Relu.eval(-1.0), (0.0, 0.0, 0.0));
    }

    #[test]
    fn tables_of_smooth_activations_match_their_networks() {
        let knots = Knots::cover(-1.0, 2.0, 10.0, 0.01, 0.1);
        for act in [Act::Softplus, Act::Sigmoid, Act::Silu, Act::Gelu] {
            let net = net_with(act);
            let (_, d, s) = Scalar::new(&net).eval(0.3);
            let f = Scalar::new(&net);
            let h = 1e-5;
            let (dp, dm) = (f.eval(0.3 + h), f.eval(0.3 - h));
            for o in 0..8 {
                assert!(
                    (d[o] - (dp.0[o] - dm.0[o]) / (2.0 * h)).abs() < 1e-8,
                    "{act:?}"
                );
                assert!(
                    (s[o] - (dp.1[o] - dm.1[o]) / (2.0 * h)).abs() < 1e-8,
                    "{act:?}"
                );
            }
            let t = Table::build(&net, knots).unwrap();
            let e = (t.max_err, t.max_err_deriv);
            assert!(e.0 < 1e-10 && e.1 < 1e-8, "{act:?} {e:?}");
            assert!(t.kinked.is_empty(), "{act:?}");
        }
    }

    /// relu and relu6 networks: the intervals holding a kink are found, and everywhere
    /// else the quintics match the network (sampled densely, so a kink missed would show).
    #[test]
    fn kinked_intervals_are_found_and_the_rest_match() {
        let knots = Knots::cover(-3.0, 3.0, 12.0, 0.01, 0.1);
        for act in [Act::Relu, Act::Relu6] {
            let mut net = net_with(act);
            // Pre-activations past 6 somewhere, for relu6's upper kink.
            let w = Arc::make_mut(&mut net.layers[0].w);
            let Data::F64(v) = &mut w.data else { panic!() };
            v.iter_mut().for_each(|x| *x *= 12.0);
            let t = Table::build(&net, knots).unwrap();
            let n_kinked = t.kinked.iter().filter(|&&k| k).count();
            assert!((4..100).contains(&n_kinked), "{act:?}: {n_kinked} kinked");
            let e = (t.max_err, t.max_err_deriv);
            assert!(e.0 < 1e-11 && e.1 < 1e-9, "{act:?} {e:?}");
            let f = Scalar::new(&net);
            let Data::F64(c) = &t.coef.data else { panic!() };
            let mut upper_kink = false;
            for k in 0..knots.intervals() {
                let (x0, h) = knots.interval(k);
                upper_kink |=
                    t.is_kinked(k) && f.sides(x0).iter().chain(&f.sides(x0 + h)).any(|&s| s == 2);
                if t.is_kinked(k) {
                    continue;
                }
                for i in 0..=40 {
                    let dx = h * i as f64 / 40.0;
                    let (y, dy, _) = f.eval(x0 + dx);
                    for o in 0..8 {
                        let (v, d) = poly(&c[k * 48..(k + 1) * 48], 8, o, dx);
                        assert!((v - y[o]).abs() < 1e-11, "{act:?} {k} {o}");
                        assert!((d - dy[o]).abs() < 1e-9, "{act:?} {k} {o}");
                    }
                }
            }
            assert_eq!(upper_kink, act == Act::Relu6);
        }
        // A smooth network has none.
        assert!(Table::build(&net(), knots).unwrap().kinked.is_empty());
    }

    #[test]
    fn table_matches_the_network_and_refuses_outside() {
        let net = net();
        let knots = Knots::cover(-1.0, 2.0, 10.0, 0.01, 0.1);
        assert_eq!((knots.n0, knots.n1), (300, 80));
        let t = Table::build(&net, knots).unwrap();
        assert!(t.max_err < 1e-11 && t.max_err_deriv < 1e-8, "{t:?}");
        let f = Scalar::new(&net);
        let Data::F64(c) = &t.coef.data else { panic!() };
        for x in [-1.0, -0.5, 0.0, 1.234567, 1.999, 2.0, 5.55, 9.99] {
            let (k, dx) = knots.locate(x).unwrap();
            let (y, dy, _) = f.eval(x);
            for o in 0..8 {
                let (v, d) = poly(&c[k * 48..(k + 1) * 48], 8, o, dx);
                assert!((v - y[o]).abs() < 1e-11, "{x} {o}");
                assert!((d - dy[o]).abs() < 1e-8, "{x} {o}");
            }
        }
        for x in [-1.0001, 10.0, 1e9, f64::NAN, f64::INFINITY] {
            assert!(knots.locate(x).is_none(), "{x}");
        }
    }
}
