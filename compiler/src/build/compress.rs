//! Compile-time compression (`--compress`): each embedding network of se_e2_a, se_e2_r,
//! se_e3, and the geometric one of strip-mode se_atten/DPA-1 without attention (DPA-2's
//! repinit) and se_e3_tebd, becomes a table of quintic polynomials (`graph::table`) over
//! the range its input takes, found as DeePMD-kit's `DPTabulate._get_env_mat_range` does:
//! from the descriptor's normalisation and the closest neighbour distance seen in training
//! (`min_nbor_dist`). Inputs outside the table are evaluated with the network itself.

use std::sync::Arc;

use super::nn::{fusable, tabulable};
use crate::graph::{DType, Data, Graph, GraphError, Knots, Mlp, Op, Table, Tensor, ValueId};
use crate::model::{EnvParams, Net, Stats};

/// The `--compress` settings (DeePMD-kit's `dp compress` flags and defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compress {
    /// Knot spacing on the range seen in training (`-s`, 0.01).
    pub stride0: f64,
    /// Knot spacing beyond it (10 x `stride0` in DeePMD-kit).
    pub stride1: f64,
    /// The table runs on to `extrapolate` x the range (`-e`, 5).
    pub extrapolate: f64,
    /// The closest neighbour distance to tabulate down to; `None` takes the model's
    /// `min_nbor_dist`.
    pub min_nbor_dist: Option<f64>,
}

impl Default for Compress {
    fn default() -> Self {
        Compress {
            stride0: 0.01,
            stride1: 0.1,
            extrapolate: 5.0,
            min_nbor_dist: None,
        }
    }
}

/// `Compress` with the distance settled.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub c: Compress,
    pub rmin: f64,
}

impl Plan {
    pub fn new(c: Compress, model_rmin: Option<f64>) -> Result<Plan, String> {
        let rmin = c.min_nbor_dist.or(model_rmin).ok_or(
            "compression needs the closest neighbour distance: the model records no \
             min_nbor_dist, so give one (--min-nbor-dist)",
        )?;
        if !(rmin.is_finite() && rmin > 0.0) {
            return Err(format!("min_nbor_dist {rmin} must be positive"));
        }
        let ok = |v: f64| v.is_finite() && v > 0.0;
        if !ok(c.stride0) || !ok(c.stride1) || c.extrapolate.is_nan() || c.extrapolate < 1.0 {
            return Err(format!(
                "compression strides must be positive and extrapolate >= 1, got {c:?}"
            ));
        }
        Ok(Plan { c, rmin })
    }

    /// The table of `net` on `[lower, upper]` (floored and ceiled to whole numbers, as
    /// DeePMD-kit does), extended to `extrapolate` x that length.
    pub fn table(&self, net: &Mlp, lower: f64, upper: f64) -> Result<Arc<Table>, String> {
        let (lower, upper) = (lower.floor(), upper.ceil().max(lower.floor() + 1.0));
        let max = lower + self.c.extrapolate * (upper - lower);
        let knots = Knots::cover(lower, upper, max, self.c.stride0, self.c.stride1);
        Table::build(net, knots).map(Arc::new)
    }

    /// `n` as the network to tabulate, or why it cannot be: DeePMD-kit's `dp compress`
    /// tabulates tanh, gelu, relu, relu6, softplus, sigmoid and silu networks.
    pub fn net(&self, n: &Net, dtype: DType) -> Result<Arc<Mlp>, String> {
        if let Some(net) = tabulable(n, dtype) {
            return Ok(net);
        }
        Err(match n.layers.iter().find(|l| l.dtype != dtype) {
            Some(l) => format!(
                "compression of an embedding network with {} layers in a {dtype} model is \
                 not implemented; run the model without --compress",
                l.dtype
            ),
            None => format!(
                "compression of an embedding network with activations {:?}: DeePMD-kit's \
                 dp compress tabulates tanh, gelu, relu, relu6, softplus, sigmoid and silu \
                 networks; run the model without --compress",
                n.layers.iter().map(|l| l.activation).collect::<Vec<_>>()
            ),
        })
    }

    /// `n` as the network to tabulate (`net`) and its table over `range(self)`.
    pub fn tabulate(
        &self,
        n: &Net,
        dtype: DType,
        range: impl FnOnce(&Plan) -> Result<(f64, f64), String>,
    ) -> Result<(Arc<Mlp>, Arc<Table>), String> {
        let net = self.net(n, dtype)?;
        let (lo, hi) = range(self)?;
        let table = self.table(&net, lo, hi)?;
        Ok((net, table))
    }

    /// The largest value of the radial column `sw(r)/r`, at the closest distance.
    fn radial_max(&self, env: &EnvParams) -> f64 {
        let r = self.rmin;
        let sw = if r < env.rcut_smth {
            1.0
        } else if r < env.rcut {
            let u = (r - env.rcut_smth) / (env.rcut - env.rcut_smth);
            u * u * u * (-6.0 * u * u + 15.0 * u - 10.0) + 1.0
        } else {
            0.0
        };
        sw / (r + env.protection)
    }

    /// The range of normalised column 0 over neighbour slots `slots` and centre types
    /// `centres` (all when `None`): `(0 - davg) / dstd` to `(sw/r - davg) / dstd`.
    pub fn radial_range(
        &self,
        env: &EnvParams,
        stats: &Stats,
        slots: std::ops::Range<usize>,
        centres: Option<usize>,
    ) -> Result<(f64, f64), String> {
        let e = self.radial_max(env);
        let mut lo = f64::INFINITY;
        let mut hi = f64::NEG_INFINITY;
        for_stats(stats, slots, centres, |avg, std| {
            for v in [(0.0 - avg[0]) / std[0], (e - avg[0]) / std[0]] {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        })?;
        Ok((lo, hi))
    }

    /// A bound on `|R_a[1:]|` for normalised rows of slots `slots` (se_e3's network input
    /// is `R_a[1:] . R_b[1:]`): the raw vector has length `sw/r`, so the normalised one is
    /// at most `(sw/r + |davg[1:]|) / min dstd[1:]` long.
    pub fn angular_bound(
        &self,
        env: &EnvParams,
        stats: &Stats,
        slots: std::ops::Range<usize>,
    ) -> Result<f64, String> {
        let e = self.radial_max(env);
        let mut b = 0.0f64;
        for_stats(stats, slots, None, |avg, std| {
            let k = 1..avg.len().min(4);
            let shift = avg[k.clone()].iter().map(|a| a * a).sum::<f64>().sqrt();
            let min_std = std[k].iter().fold(f64::INFINITY, |m, s| m.min(s.abs()));
            b = b.max((e + shift) / min_std);
        })?;
        Ok(b)
    }
}

/// A fused network and its table, either absent.
pub(crate) type NetTable = (Option<Arc<Mlp>>, Option<Arc<Table>>);

/// The fused network of embedding `n` and its table: with `--compress` (`plan`) the
/// network tabulated over `range(plan)`; without, the network if the fused kernels run it
/// (`None`: the caller builds it from elementary ops).
pub(crate) fn embedding(
    plan: Option<&Plan>,
    n: &Net,
    dtype: DType,
    range: impl FnOnce(&Plan) -> Result<(f64, f64), String>,
) -> Result<NetTable, String> {
    let Some(p) = plan else {
        return Ok((fusable(n, dtype), None));
    };
    let (net, table) = p.tabulate(n, dtype, range)?;
    Ok((Some(net), Some(table)))
}

/// Call `f(davg[t, j, :], dstd[t, j, :])` for the chosen centre types and slots.
fn for_stats(
    stats: &Stats,
    slots: std::ops::Range<usize>,
    centres: Option<usize>,
    mut f: impl FnMut(&[f64], &[f64]),
) -> Result<(), String> {
    let (Data::F64(avg), Data::F64(std)) = (&stats.davg.data, &stats.dstd.data) else {
        return Err("descriptor statistics are not float64".into());
    };
    let &[nt, nnei, nc] = stats.davg.shape.as_slice() else {
        return Err("descriptor statistics are not [ntypes, nnei, ncomp]".into());
    };
    if slots.end > nnei || nc == 0 {
        return Err("descriptor statistics do not cover the neighbour slots".into());
    }
    for t in 0..nt {
        if centres.is_some_and(|c| c != t) {
            continue;
        }
        for j in slots.clone() {
            let at = (t * nnei + j) * nc;
            let s = &std[at..at + nc];
            if s.iter().any(|v| *v == 0.0 || !v.is_finite()) {
                return Err("descriptor statistics hold a zero or non-finite dstd".into());
            }
            f(&avg[at..at + nc], s);
        }
    }
    Ok(())
}

/// What compression did to one network, for the report `dpc compile --compress` prints.
#[derive(Debug, Clone)]
pub struct TableReport {
    pub widths: Vec<usize>,
    pub lower: f64,
    pub upper: f64,
    pub max: f64,
    pub intervals: usize,
    pub bytes: usize,
    pub max_err: f64,
    pub max_err_deriv: f64,
    /// Intervals holding a relu kink, where the network runs instead.
    pub kinked: usize,
}

/// The tables of a built graph (each once, in graph order).
pub fn tables(g: &Graph) -> Vec<TableReport> {
    let mut seen: Vec<*const Table> = Vec::new();
    let mut out = Vec::new();
    for node in &g.nodes {
        let (Op::EmbedContract(e) | Op::EmbedContractVjp(e)) = &node.op else {
            continue;
        };
        let Some(t) = &e.table else { continue };
        if seen.contains(&Arc::as_ptr(t)) {
            continue;
        }
        seen.push(Arc::as_ptr(t));
        let coef: &Tensor = &t.coef;
        out.push(TableReport {
            widths: e.net.widths(),
            lower: t.knots.lower,
            upper: t.knots.upper(),
            max: t.knots.max(),
            intervals: t.knots.intervals(),
            bytes: coef.shape.iter().product::<usize>()
                * if coef.dtype() == DType::F32 { 4 } else { 8 },
            max_err: t.max_err,
            max_err_deriv: t.max_err_deriv,
            kinked: t.kinked.iter().filter(|&&k| k).count(),
        });
    }
    out
}

/// `sum_j G(x_j) (1 + w_j u[idx_j]) rr_j^T` `[n, m, c]` for `rr [n, s, c]` (`x` its channel
/// 0), `G` the tabulated network `mt`, `w [n, s, 1]` (1 where `None`), `u [k, m]` and `idx
/// [n, s]`: the strip-mode type factor of DPA-1 and of the three-body block (DeePMD-kit's
/// `tabulate_fusion_se_atten` and `_se_t_tebd`), as one fused op with a per-row factor
/// (`Embed::factor`): over `[rr, w rr]`, the factor `u` on the second half, or without `w`
/// over `rr` with the factor `1 + u`.
pub(crate) fn factor_contract(
    g: &mut Graph,
    rr: ValueId,
    w: Option<ValueId>,
    mt: (Arc<Mlp>, Arc<Table>),
    (idx, u): (ValueId, ValueId),
) -> Result<ValueId, GraphError> {
    let Some(w) = w else {
        let u1 = g.add_scalar(u, 1.0)?;
        return g.embed_contract_factor(rr, mt, (0, idx, u1));
    };
    let c = g.shape(rr)[2].factor;
    let rw = g.mul(rr, w)?;
    let both = g.concat(&[rr, rw], 2)?; // [n, s, 2c]
    let sums = g.embed_contract_factor(both, mt, (c, idx, u))?; // [n, m, 2c]
    let plain = g.slice_n(sums, 2, 0, c)?;
    let scaled = g.slice_n(sums, 2, c, 2 * c)?;
    g.add(plain, scaled)
}

/// A table of network `n` evaluated with elementary ops, for targets without the fused
/// kernels (the StableHLO lowering): `x [..., 1]` -> `[..., m]`. The interval and its start
/// are constants to autodiff, so the derivative is the polynomial's. A smooth network's
/// inputs outside the table use the polynomial of the nearest end interval (the fused
/// kernel runs the network there instead; inside the table the two agree to rounding). A
/// network with kinks (relu, relu6) is also evaluated whole, and taken where the fused
/// kernel takes it: in the kinked intervals and off the table.
pub(crate) fn table_eval(
    g: &mut Graph,
    x: crate::graph::ValueId,
    t: &Table,
    n: &Net,
) -> Result<crate::graph::ValueId, crate::graph::GraphError> {
    use crate::graph::{Cmp, Dim};
    let dt = g.dtype(x);
    let k = t.knots;
    let mut lead: Vec<Dim> = g.shape(x).to_vec();
    if lead.pop() != Some(Dim::ONE) {
        return Err(crate::graph::GraphError(
            "a table takes one input per row".into(),
        ));
    }
    let xs = g.stop_gradient(x)?;
    // Index and start of the interval, as floats: fine part, then coarse part.
    let part = |g: &mut Graph, from: f64, h: f64, n: usize| {
        let u = g.add_scalar(xs, -from)?;
        let u = g.scale(u, 1.0 / h)?;
        let u = g.floor(u)?;
        let lo = g.scalar(0.0, dt);
        let hi = g.scalar((n.max(1) - 1) as f64, dt);
        let u = g.maximum(u, lo)?;
        let i = g.minimum(u, hi)?;
        let s = g.scale(i, h)?;
        let s = g.add_scalar(s, from)?;
        Ok::<_, crate::graph::GraphError>((i, s))
    };
    let (i0, s0) = part(g, k.lower, k.stride0, k.n0)?;
    let (idx, start) = if k.n1 > 0 {
        let (i1, s1) = part(g, k.upper(), k.stride1, k.n1)?;
        let i1 = g.add_scalar(i1, k.n0 as f64)?;
        let up = g.scalar(k.upper(), dt);
        let fine = g.cmp(Cmp::Lt, xs, up)?;
        (g.select(fine, i0, i1)?, g.select(fine, s0, s1)?)
    } else {
        (i0, s0)
    };
    let tt = g.sub(x, start)?; // [..., 1], carries the gradient
    let idx = g.cast(idx, DType::I32)?;
    let idx = g.reshape(idx, lead.clone())?;
    let m = t.m;
    let nk = k.intervals();
    let coef = g.constant(Tensor {
        shape: vec![nk, 6 * m],
        data: t.coef.data.clone(),
    });
    let c = g.gather(coef, idx)?; // [..., 6 m]
    let mut cs = lead.clone();
    cs.extend([Dim::fixed(6), Dim::fixed(m)]);
    let c = g.reshape(c, cs)?;
    let axis = lead.len();
    let coeff = |g: &mut Graph, p: usize| {
        let s = g.slice_n(c, axis, p, p + 1)?;
        let mut to = lead.clone();
        to.push(Dim::fixed(m));
        g.reshape(s, to)
    };
    // Horner: ((((c5 t + c4) t + c3) t + c2) t + c1) t + c0.
    let mut v = coeff(g, 5)?;
    for p in (0..5).rev() {
        v = g.mul(v, tt)?;
        let cp = coeff(g, p)?;
        v = g.add(v, cp)?;
    }
    if !t.kinked.iter().any(|&k| k) {
        return Ok(v);
    }
    let kinked = g.constant(Tensor {
        shape: vec![nk],
        data: match dt {
            DType::F32 => Data::F32(t.kinked.iter().map(|&k| f32::from(u8::from(k))).collect()),
            _ => Data::F64(t.kinked.iter().map(|&k| f64::from(u8::from(k))).collect()),
        },
    });
    let kink = g.gather(kinked, idx)?; // [...]
    let half = g.scalar(0.5, dt);
    let kink = g.cmp(Cmp::Gt, kink, half)?;
    let mut one = lead.clone();
    one.push(Dim::ONE);
    let kink = g.reshape(kink, one)?; // [..., 1]
    let lo = g.scalar(k.lower, dt);
    let hi = g.scalar(k.max(), dt);
    let below = g.cmp(Cmp::Lt, xs, lo)?;
    let above = g.cmp(Cmp::Ge, xs, hi)?;
    let off = g.or(below, above)?;
    let exact = g.or(kink, off)?;
    let y = super::nn::net(g, x, n)?;
    g.select(exact, y, v)
}
