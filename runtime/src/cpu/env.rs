//! The fused environment-matrix kernels (`Op::EnvMat` and its VJP): DeePMD-kit's
//! normalised smooth environment matrix for every (centre, neighbour slot) in one pass,
//! instead of some thirty elementwise ops and their gradients over `[nloc, nnei, 4]`.

use dpc_compiler::graph::{Data, EnvSpec, Tensor};
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
    fn u(&self, r: T) -> (T, bool) {
        let lo = if r >= self.rs { r } else { self.rs };
        let c = if lo <= self.rc { lo } else { self.rc };
        let inside = r >= self.rs && lo <= self.rc;
        ((c + (T::default() - self.rs)) * self.scale, inside)
    }

    /// `u^3 (-6 u^2 + 15 u - 10) + 1`.
    fn value(&self, r: T) -> T {
        let (u, _) = self.u(r);
        let u2 = u * u;
        let u3 = u2 * u;
        let p = u2 * T::from_f64(-6.0) + u * T::from_f64(15.0) + T::from_f64(-10.0);
        u3 * p + T::ONE
    }

    /// `d sw / d r`.
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

fn forward_t<T: Real>(
    e: &EnvSpec,
    x: &[T],
    nlist: &[i32],
    types: &[i32],
    (nall, nloc, nnei): (usize, usize, usize),
) -> R<Vec<T>> {
    let nc = e.ncomp();
    let (davg, dstd) = stats::<T>(e)?;
    let inv_std = reciprocals(dstd);
    let ntypes = e.davg.shape[0];
    let sw = Switch::<T>::new(e);
    let prot = T::from_f64(e.protection);
    let mut out = vec![T::default(); nloc * nnei * nc];
    out.par_chunks_mut(nnei * nc)
        .enumerate()
        .try_for_each(|(i, row)| -> R<()> {
            let ti = centre_type(types, i, ntypes)?;
            let st = ti * nnei * nc;
            for k in 0..nnei {
                let d = pair(x, i, nlist[i * nnei + k], nall)?;
                let (d, s) = match d {
                    Some(d) => {
                        let r = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
                        (d, Some((r, sw.value(r))))
                    }
                    None => ([T::ONE, T::default(), T::default()], None),
                };
                let o = &mut row[k * nc..(k + 1) * nc];
                let (r, s) = s.unwrap_or((T::ONE, T::default()));
                let t0 = T::ONE / if e.protection != 0.0 { r + prot } else { r };
                o[0] = t0 * s;
                if nc == 4 {
                    let t0sq = t0 * t0;
                    for c in 0..3 {
                        o[c + 1] = d[c] * t0sq * s;
                    }
                }
                for (c, v) in o.iter_mut().enumerate() {
                    let q = st + k * nc + c;
                    *v = (*v - davg[q]) * inv_std[q];
                }
            }
            Ok(())
        })?;
    Ok(out)
}

fn vjp_t<T: Real>(
    e: &EnvSpec,
    x: &[T],
    nlist: &[i32],
    types: &[i32],
    g: &[T],
    (nall, nloc, nnei): (usize, usize, usize),
) -> R<Vec<T>> {
    let nc = e.ncomp();
    let (_, dstd) = stats::<T>(e)?;
    let inv_std = reciprocals(dstd);
    let ntypes = e.davg.shape[0];
    let sw = Switch::<T>::new(e);
    let prot = T::from_f64(e.protection);
    // Each slot's cotangent of its pair vector, in parallel; summed onto atoms after.
    let mut gd = vec![T::default(); nloc * nnei * 3];
    gd.par_chunks_mut(nnei * 3)
        .enumerate()
        .try_for_each(|(i, row)| -> R<()> {
            let ti = centre_type(types, i, ntypes)?;
            let st = ti * nnei * nc;
            for k in 0..nnei {
                let Some(d) = pair(x, i, nlist[i * nnei + k], nall)? else {
                    continue;
                };
                let r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
                let r = r2.sqrt();
                let s = sw.value(r);
                let inv_r = T::ONE / r;
                let t0 = if e.protection != 0.0 {
                    T::ONE / (r + prot)
                } else {
                    inv_r
                };
                let gr = &g[(i * nnei + k) * nc..(i * nnei + k + 1) * nc];
                let gem = |c: usize| gr[c] * inv_std[st + k * nc + c];
                let mut g_d = [T::default(); 3];
                let (g_t0, g_s) = if nc == 1 {
                    (gem(0) * s, gem(0) * t0)
                } else {
                    let t0sq = t0 * t0;
                    let mut g_t0sq = T::default();
                    let mut g_s = gem(0) * t0;
                    for c in 0..3 {
                        let ge = gem(c + 1);
                        g_s = g_s + ge * d[c] * t0sq;
                        let ge = ge * s;
                        g_d[c] = ge * t0sq;
                        g_t0sq = g_t0sq + ge * d[c];
                    }
                    (gem(0) * s + T::from_f64(2.0) * t0 * g_t0sq, g_s)
                };
                let g_r = T::default() - g_t0 * (t0 * t0) + g_s * sw.derivative(r);
                let g_r2 = g_r * inv_r * T::from_f64(0.5);
                for c in 0..3 {
                    g_d[c] = g_d[c] + T::from_f64(2.0) * g_r2 * d[c];
                }
                row[k * 3..k * 3 + 3].copy_from_slice(&g_d);
            }
            Ok(())
        })?;
    let mut dx = vec![T::default(); nall * 3];
    for i in 0..nloc {
        for k in 0..nnei {
            let j = nlist[i * nnei + k];
            if j < 0 {
                continue;
            }
            let j = j as usize;
            for c in 0..3 {
                let v = gd[(i * nnei + k) * 3 + c];
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
    let data = match &coord.data {
        Data::F64(x) => f64::wrap(forward_t(e, x, nl, ty, dims)?),
        Data::F32(x) => f32::wrap(forward_t(e, x, nl, ty, dims)?),
        _ => return Err(ExecError::Type("env_mat of non-float coordinates".into())),
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
        (Data::F32(x), Data::F32(gv)) => f32::wrap(vjp_t(e, x, nl, ty, gv, dims)?),
        _ => return Err(ExecError::Type("env_mat_vjp dtypes".into())),
    };
    Ok(Tensor {
        shape: coord.shape.clone(),
        data,
    })
}
