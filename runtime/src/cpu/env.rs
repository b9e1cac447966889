//! The fused environment-matrix kernels (`Op::EnvMat` and its VJP): DeePMD-kit's
//! normalised smooth environment matrix for every (centre, neighbour slot) in one pass,
//! instead of some thirty elementwise ops and their gradients over `[nloc, nnei, 4]`.

use dpc_compiler::graph::{DType, Data, EnvSpec, Tensor};
use rayon::prelude::*;

use super::real::Real;
use super::ExecError;

type R<T> = Result<T, ExecError>;

/// The constants of the smooth switch in the kernel's type.
struct Switch<T> {
    rs: T,
    rc: T,
    scale: T,
}

impl<T: Real> Switch<T> {
    fn new(e: &EnvSpec) -> Switch<T> {
        Switch {
            rs: T::from_f64(e.rcut_smth),
            rc: T::from_f64(e.rcut),
            scale: T::from_f64(1.0 / (e.rcut - e.rcut_smth)),
        }
    }

    /// `u = (clip(r, rs, rc) - rs) / (rc - rs)` and whether `r` is inside the clip (where
    /// the gradient passes, with the tie rules of max/min).
    #[inline(always)]
    fn u(&self, r: T) -> (T, bool) {
        let lo = if r >= self.rs { r } else { self.rs };
        let c = if lo <= self.rc { lo } else { self.rc };
        let inside = r >= self.rs && lo <= self.rc;
        ((c + (T::default() - self.rs)) * self.scale, inside)
    }

    /// `u^3 (-6 u^2 + 15 u - 10) + 1`.
    #[inline(always)]
    fn value(&self, r: T) -> T {
        let (u, _) = self.u(r);
        let u2 = u * u;
        let u3 = u2 * u;
        let p = u2 * T::from_f64(-6.0) + u * T::from_f64(15.0) + T::from_f64(-10.0);
        u3 * p + T::ONE
    }

    /// `d sw / d r`.
    #[inline(always)]
    fn derivative(&self, r: T) -> T {
        let (u, inside) = self.u(r);
        if !inside {
            return T::default();
        }
        let u2 = u * u;
        let u3 = u2 * u;
        let p = u2 * T::from_f64(-6.0) + u * T::from_f64(15.0) + T::from_f64(-10.0);
        // d/du [u^3 p(u)] = 3 u^2 p + u^3 (-12 u + 15)
        let dv = T::from_f64(3.0) * u2 * p + u3 * (T::from_f64(-12.0) * u + T::from_f64(15.0));
        dv * self.scale
    }
}

/// Checked sizes: `(nall, nloc, nnei)`.
fn dims(coord: &Tensor, nlist: &Tensor, types: &Tensor, e: &EnvSpec) -> R<(usize, usize, usize)> {
    let (nall, nloc, nnei) = match (coord.shape.as_slice(), nlist.shape.as_slice()) {
        (&[nall, 3], &[nloc, nnei]) => (nall, nloc, nnei),
        _ => {
            return Err(ExecError::Shape(format!(
                "env_mat of coord {:?} and nlist {:?}",
                coord.shape, nlist.shape
            )))
        }
    };
    if types.shape != [nloc] || nloc > nall || e.davg.shape.get(1) != Some(&nnei) {
        return Err(ExecError::Shape(format!(
            "env_mat: types {:?}, nloc {nloc}, nall {nall}, stats {:?}",
            types.shape, e.davg.shape
        )));
    }
    Ok((nall, nloc, nnei))
}

fn ints(t: &Tensor) -> R<&[i32]> {
    match &t.data {
        Data::I32(v) => Ok(v),
        _ => Err(ExecError::Type("env_mat indices must be i32".into())),
    }
}

/// The pair vector of slot `(i, k)`, or `None` for padding; errors on a bad index.
fn pair<T: Real>(x: &[T], i: usize, j: i32, nall: usize) -> R<Option<[T; 3]>> {
    if j < 0 {
        return Ok(None);
    }
    let j = j as usize;
    if j >= nall {
        return Err(ExecError::Index(format!(
            "neighbour {j} of atom {i} is beyond the {nall} atoms"
        )));
    }
    Ok(Some([
        x[3 * j] - x[3 * i],
        x[3 * j + 1] - x[3 * i + 1],
        x[3 * j + 2] - x[3 * i + 2],
    ]))
}

/// The type of centre `i` as a row index into the stats.
fn centre_type(types: &[i32], i: usize, ntypes: usize) -> R<usize> {
    let t = types[i];
    if t < 0 || t as usize >= ntypes {
        return Err(ExecError::Index(format!(
            "atom {i} has type {t}, outside the {ntypes} types"
        )));
    }
    Ok(t as usize)
}

/// One centre's pair vectors by slot, a coordinate per array (so the slot loops vectorize),
/// and which slots hold a neighbour. A padding slot holds (1, 0, 0): finite values the slot
/// loops compute on and then discard.
#[derive(Default)]
struct Pairs<T> {
    x: Vec<T>,
    y: Vec<T>,
    z: Vec<T>,
    valid: Vec<bool>,
}

impl<T: Real> Pairs<T> {
    /// Atom `i`'s pairs from its row `nl` of the list; errors on an index past `nall`.
    fn gather<C: Real>(&mut self, coord: &[C], i: usize, nl: &[i32], nall: usize) -> R<()> {
        // Indices checked first (the error names the first bad one), so the copy below
        // runs without a branch that can fail.
        if nl.iter().any(|&j| j >= 0 && j as usize >= nall) || 3 * i + 3 > coord.len() {
            for &j in nl {
                pair(coord, i, j, nall)?;
            }
            return Err(ExecError::Index(format!(
                "centre {i} is beyond the {nall} atoms"
            )));
        }
        let n = nl.len();
        for v in [&mut self.x, &mut self.y, &mut self.z] {
            v.resize(n, T::default());
        }
        self.valid.resize(n, false);
        let xi = [coord[3 * i], coord[3 * i + 1], coord[3 * i + 2]];
        for (s, &j) in nl.iter().enumerate() {
            let (d, ok) = if j >= 0 {
                let j = j as usize;
                let xj = &coord[3 * j..3 * j + 3];
                // Subtracted in the positions' type, then rounded to the matrix's.
                let r = |c: usize| T::from_f64((xj[c] - xi[c]).to_f64());
                ([r(0), r(1), r(2)], true)
            } else {
                ([T::ONE, T::default(), T::default()], false)
            };
            self.x[s] = d[0];
            self.y[s] = d[1];
            self.z[s] = d[2];
            self.valid[s] = ok;
        }
        Ok(())
    }
}

/// What the slot loops of one centre read besides its pairs.
struct RowConsts<'a, T> {
    sw: &'a Switch<T>,
    /// DeePMD-kit's `protection` added to `r` in `1/r` (`None` when 0).
    prot: Option<T>,
    /// The centre type's statistics, `[nnei * nc]`.
    davg: &'a [T],
    inv_std: &'a [T],
}

simd_fn! {
/// One centre's rows `[nnei, nc]` of the environment matrix. The same operations in the
/// same order as a slot-by-slot loop, so the same bits, but vectorized across slots (each
/// component first into its own array `comp`, then interleaved).
fn forward_row<T: Real>(p: &Pairs<T>, k: &RowConsts<T>, comp: &mut [Vec<T>; 4], row: &mut [T]) {
    let n = p.x.len();
    let nc = row.len() / n.max(1);
    for v in comp.iter_mut() {
        v.resize(n, T::default());
    }
    let [c0, c1, c2, c3] = comp;
    let (x, y, z, valid) = (&p.x[..n], &p.y[..n], &p.z[..n], &p.valid[..n]);
    let (c0, c1, c2, c3) = (&mut c0[..n], &mut c1[..n], &mut c2[..n], &mut c3[..n]);
    for s in 0..n {
        let r = (x[s] * x[s] + y[s] * y[s] + z[s] * z[s]).sqrt();
        let sv = k.sw.value(r);
        let sv = if valid[s] { sv } else { T::default() };
        let t0 = T::ONE / match k.prot {
            Some(pr) => r + pr,
            None => r,
        };
        c0[s] = t0 * sv;
        let t0sq = t0 * t0;
        c1[s] = x[s] * t0sq * sv;
        c2[s] = y[s] * t0sq * sv;
        c3[s] = z[s] * t0sq * sv;
    }
    let (davg, inv_std) = (&k.davg[..n * nc], &k.inv_std[..n * nc]);
    if nc == 4 {
        for (s, o) in row.chunks_exact_mut(4).enumerate() {
            let q = 4 * s;
            o[0] = (c0[s] - davg[q]) * inv_std[q];
            o[1] = (c1[s] - davg[q + 1]) * inv_std[q + 1];
            o[2] = (c2[s] - davg[q + 2]) * inv_std[q + 2];
            o[3] = (c3[s] - davg[q + 3]) * inv_std[q + 3];
        }
    } else {
        for (s, o) in row.iter_mut().enumerate() {
            *o = (c0[s] - davg[s]) * inv_std[s];
        }
    }
}
}

/// A worker's scratch for `each_centre`: a centre's pairs and the slot loops' per-component
/// arrays.
type RowScratch<T> = (Pairs<T>, [Vec<T>; 4]);

/// `f(pairs, consts, i, comp, row)` for each centre `i` and its `row` of `out` (`width`
/// elements per centre), side by side on the pool: the centre's pairs gathered and its
/// type's statistics and switch set up the same way for the forward pass and the VJP.
fn each_centre<T: Real, C: Real>(
    e: &EnvSpec,
    x: &[C],
    nlist: &[i32],
    types: &[i32],
    (nall, nnei): (usize, usize),
    (out, width): (&mut [T], usize),
    f: impl Fn(&Pairs<T>, &RowConsts<T>, usize, &mut [Vec<T>; 4], &mut [T]) + Sync,
) -> R<()> {
    let nc = e.ncomp();
    let (davg, dstd) = stats::<T>(e)?;
    if nnei == 0 || width == 0 {
        return Ok(());
    }
    let inv_std = reciprocals(dstd);
    let ntypes = e.davg.shape[0];
    let sw = Switch::<T>::new(e);
    let prot = (e.protection != 0.0).then(|| T::from_f64(e.protection));
    out.par_chunks_mut(width).enumerate().try_for_each_init(
        || -> RowScratch<T> { (Pairs::default(), [vec![], vec![], vec![], vec![]]) },
        |(p, comp), (i, row)| -> R<()> {
            let ti = centre_type(types, i, ntypes)?;
            let st = ti * nnei * nc;
            p.gather(x, i, &nlist[i * nnei..(i + 1) * nnei], nall)?;
            let k = RowConsts {
                sw: &sw,
                prot,
                davg: &davg[st..st + nnei * nc],
                inv_std: &inv_std[st..st + nnei * nc],
            };
            f(p, &k, i, comp, row);
            Ok(())
        },
    )
}

fn forward_t<T: Real, C: Real>(
    e: &EnvSpec,
    x: &[C],
    nlist: &[i32],
    types: &[i32],
    (nall, nloc, nnei): (usize, usize, usize),
) -> R<Vec<T>> {
    let nc = e.ncomp();
    let mut out = vec![T::default(); nloc * nnei * nc];
    each_centre(
        e,
        x,
        nlist,
        types,
        (nall, nnei),
        (&mut out, nnei * nc),
        |p, k, _, comp, row| forward_row(p, k, comp, row),
    )?;
    Ok(out)
}

simd_fn! {
/// One centre's cotangents of its pair vectors, `row [nnei, 3]`, from the cotangent `g`
/// `[nnei, nc]` of its environment rows; zero on padding slots. Slot by slot the same
/// operations as the scalar formula, vectorized across slots as `forward_row` is.
fn vjp_row<T: Real>(p: &Pairs<T>, k: &RowConsts<T>, g: &[T], comp: &mut [Vec<T>; 4], row: &mut [T]) {
    let n = p.x.len();
    let nc = g.len() / n.max(1);
    for v in comp.iter_mut() {
        v.resize(n, T::default());
    }
    let [ge0, ge1, ge2, ge3] = comp;
    let (ge0, ge1, ge2, ge3) = (&mut ge0[..n], &mut ge1[..n], &mut ge2[..n], &mut ge3[..n]);
    let inv_std = &k.inv_std[..n * nc];
    // The cotangent through the statistics' scaling, by component.
    if nc == 4 {
        for (s, gr) in g.chunks_exact(4).enumerate() {
            let q = 4 * s;
            ge0[s] = gr[0] * inv_std[q];
            ge1[s] = gr[1] * inv_std[q + 1];
            ge2[s] = gr[2] * inv_std[q + 2];
            ge3[s] = gr[3] * inv_std[q + 3];
        }
    } else {
        for (s, &gv) in g.iter().enumerate() {
            ge0[s] = gv * inv_std[s];
        }
    }
    let (x, y, z, valid) = (&p.x[..n], &p.y[..n], &p.z[..n], &p.valid[..n]);
    let two = T::from_f64(2.0);
    let half = T::from_f64(0.5);
    let row = &mut row[..3 * n];
    for s in 0..n {
        let d = [x[s], y[s], z[s]];
        let r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
        let r = r2.sqrt();
        let sv = k.sw.value(r);
        let inv_r = T::ONE / r;
        let t0 = match k.prot {
            Some(pr) => T::ONE / (r + pr),
            None => inv_r,
        };
        let mut g_d = [T::default(); 3];
        let (g_t0, g_s) = if nc == 1 {
            (ge0[s] * sv, ge0[s] * t0)
        } else {
            let ge = [ge1[s], ge2[s], ge3[s]];
            let t0sq = t0 * t0;
            let mut g_t0sq = T::default();
            let mut g_s = ge0[s] * t0;
            for c in 0..3 {
                g_s = g_s + ge[c] * d[c] * t0sq;
                let gs = ge[c] * sv;
                g_d[c] = gs * t0sq;
                g_t0sq = g_t0sq + gs * d[c];
            }
            (ge0[s] * sv + two * t0 * g_t0sq, g_s)
        };
        let g_r = T::default() - g_t0 * (t0 * t0) + g_s * k.sw.derivative(r);
        let g_r2 = g_r * inv_r * half;
        for c in 0..3 {
            let v = g_d[c] + two * g_r2 * d[c];
            row[3 * s + c] = if valid[s] { v } else { T::default() };
        }
    }
}
}

fn vjp_t<T: Real, C: Real>(
    e: &EnvSpec,
    x: &[C],
    nlist: &[i32],
    types: &[i32],
    g: &[T],
    (nall, nloc, nnei): (usize, usize, usize),
) -> R<Vec<C>> {
    let nc = e.ncomp();
    // Each slot's cotangent of its pair vector, in parallel; summed onto atoms after, in
    // the positions' type.
    let mut gd = vec![T::default(); nloc * nnei * 3];
    let mut dx = vec![C::default(); nall * 3];
    each_centre(
        e,
        x,
        nlist,
        types,
        (nall, nnei),
        (&mut gd, nnei * 3),
        |p, k, i, comp, row| vjp_row(p, k, &g[i * nnei * nc..(i + 1) * nnei * nc], comp, row),
    )?;
    for i in 0..nloc {
        for k in 0..nnei {
            let j = nlist[i * nnei + k];
            if j < 0 {
                continue;
            }
            let j = j as usize;
            for c in 0..3 {
                let v = C::from_f64(gd[(i * nnei + k) * 3 + c].to_f64());
                dx[3 * j + c] = dx[3 * j + c] + v;
                dx[3 * i + c] = dx[3 * i + c] - v;
            }
        }
    }
    Ok(dx)
}

/// `1 / d` elementwise: the kernels multiply by the statistics' reciprocals instead of
/// dividing by them (a division costs several multiplications; the results differ in the
/// last bit at most).
fn reciprocals<T: Real>(d: &[T]) -> Vec<T> {
    d.iter().map(|&v| T::ONE / v).collect()
}

fn stats<T: Real>(e: &EnvSpec) -> R<(&[T], &[T])> {
    match (T::slice(&e.davg.data), T::slice(&e.dstd.data)) {
        (Some(a), Some(s)) => Ok((a, s)),
        _ => Err(ExecError::Type(
            "env_mat statistics of another dtype".into(),
        )),
    }
}

/// `Op::EnvMat`.
pub fn env_mat(e: &EnvSpec, coord: &Tensor, nlist: &Tensor, types: &Tensor) -> R<Tensor> {
    let dims = dims(coord, nlist, types, e)?;
    let (nl, ty) = (ints(nlist)?, ints(types)?);
    let data = match (&coord.data, e.davg.dtype()) {
        (Data::F64(x), DType::F64) => f64::wrap(forward_t::<f64, f64>(e, x, nl, ty, dims)?),
        (Data::F64(x), DType::F32) => f32::wrap(forward_t::<f32, f64>(e, x, nl, ty, dims)?),
        (Data::F32(x), DType::F32) => f32::wrap(forward_t::<f32, f32>(e, x, nl, ty, dims)?),
        (_, st) => {
            return Err(ExecError::Type(format!(
                "env_mat of {:?} positions with {st:?} statistics",
                coord.dtype()
            )))
        }
    };
    Ok(Tensor {
        shape: vec![dims.1, dims.2, e.ncomp()],
        data,
    })
}

/// `Op::EnvMatVjp`.
pub fn env_mat_vjp(
    e: &EnvSpec,
    coord: &Tensor,
    nlist: &Tensor,
    types: &Tensor,
    g: &Tensor,
) -> R<Tensor> {
    let dims = dims(coord, nlist, types, e)?;
    if g.shape != [dims.1, dims.2, e.ncomp()] {
        return Err(ExecError::Shape(format!(
            "env_mat_vjp cotangent {:?}",
            g.shape
        )));
    }
    let (nl, ty) = (ints(nlist)?, ints(types)?);
    let data = match (&coord.data, &g.data) {
        (Data::F64(x), Data::F64(gv)) => f64::wrap(vjp_t(e, x, nl, ty, gv, dims)?),
        (Data::F64(x), Data::F32(gv)) => f64::wrap(vjp_t(e, x, nl, ty, gv, dims)?),
        (Data::F32(x), Data::F32(gv)) => f32::wrap(vjp_t(e, x, nl, ty, gv, dims)?),
        _ => return Err(ExecError::Type("env_mat_vjp dtypes".into())),
    };
    Ok(Tensor {
        shape: coord.shape.clone(),
        data,
    })
}
