//! The smooth environment matrix and the neighbour-list masks every descriptor shares
//! (`deepmd/dpmodel/utils/env_mat.py`, `exclude_mask.py`).

use std::sync::Arc;

use super::Inputs;
use crate::graph::{Cmp, DType, Dim, EnvSpec, Graph, GraphError, Op, Tensor, ValueId};
use crate::model::{EnvParams, Stats};

type R = Result<ValueId, GraphError>;

/// The environment matrix of every (centre, neighbour slot) pair.
pub struct Env {
    /// Normalised rows `(env - davg) / dstd`: `[nloc, nnei, 4]` (or `[.., 1]` radial only).
    /// Padding slots hold `-davg/dstd`, as in DeePMD-kit.
    pub rr: ValueId,
    /// The smooth switch, zero on padding slots: `[nloc, nnei]`.
    pub sw: ValueId,
    /// Real neighbour slots: bool `[nloc, nnei]`.
    pub mask: ValueId,
}

/// `nlist >= 0`, and the list with `-1` replaced by 0.
pub fn nlist_mask(g: &mut Graph, nlist: ValueId) -> Result<(ValueId, ValueId), GraphError> {
    let zero = g.scalar(0.0, DType::I32);
    let mask = g.cmp(Cmp::Ge, nlist, zero)?;
    let safe = g.select(mask, nlist, zero)?;
    Ok((mask, safe))
}

/// How the environment rows fade out towards the cutoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    /// `u^3 (-6u^2 + 15u - 10) + 1` between `rcut_smth` and `rcut`.
    Quintic,
    /// DPA-3's `use_exp_switch`: `exp(-exp(20 (r - rs) / rs))`, r clipped to `[0, rcut]`.
    Exp,
}

/// The pair geometry of every (centre, neighbour slot).
pub struct Geometry {
    /// `r_j - r_i`, `[nloc, nnei, 3]`; padding slots hold a unit vector.
    pub diff: ValueId,
    /// `|diff|`, `[nloc, nnei, 1]`; 1 on padding slots, so no derivative of |0| is taken.
    pub r: ValueId,
    /// The switch, zero on padding slots, `[nloc, nnei, 1]`.
    pub sw: ValueId,
    /// Real neighbour slots: bool `[nloc, nnei]`, and as `[nloc, nnei, 1]` in `dtype`.
    pub mask: ValueId,
    pub maskf: ValueId,
}

/// Distances and switch from extended coordinates and a neighbour list, in `dtype`.
pub fn geometry(
    g: &mut Graph,
    inp: &Inputs,
    nlist: ValueId,
    p: &EnvParams,
    switch: Switch,
    dtype: DType,
) -> Result<Geometry, GraphError> {
    let nnei = g.shape(nlist)[1];
    let (mask, safe) = nlist_mask(g, nlist)?;
    let diff = match inp.rij {
        Some(rij) => g.cast(rij, dtype)?,
        None => {
            // The pair vectors in the coordinates' own precision, rounded to `dtype` after
            // the subtraction: rounding positions first would make a float32 model depend
            // on where the system sits (1e-6 relative of a coordinate, not of a distance).
            let coord = inp.coord;
            let neigh = g.gather(coord, safe)?; // [nloc, nnei, 3]
            let centre = g.slice(coord, 0, Dim::fixed(0), Dim::NLOC)?;
            let centre = g.reshape(centre, vec![Dim::NLOC, Dim::ONE, Dim::fixed(3)])?;
            let diff = g.sub(neigh, centre)?;
            g.cast(diff, dtype)?
        }
    };
    // Padding slots get a unit vector, so their length is 1 (DeePMD-kit adds 1 there) and no
    // derivative of |0| is ever taken.
    let mask3 = g.reshape(mask, vec![Dim::NLOC, nnei, Dim::ONE])?;
    let unit = g.constant(cast(Tensor::f64(vec![3], vec![1.0, 0.0, 0.0]), dtype));
    let diff = g.select(mask3, diff, unit)?;
    let sq = g.mul(diff, diff)?;
    let r2 = g.sum(sq, &[2], true)?;
    let r = g.sqrt(r2)?; // [nloc, nnei, 1]
    let maskf = g.cast(mask3, dtype)?;
    let sw = match switch {
        Switch::Quintic => smooth_weight(g, r, p.rcut_smth, p.rcut)?,
        Switch::Exp => exp_switch(g, r, p.rcut_smth, p.rcut)?,
    };
    let sw = g.mul(sw, maskf)?;
    Ok(Geometry {
        diff,
        r,
        sw,
        mask,
        maskf,
    })
}

/// The environment matrix in `dtype` from extended coordinates and a neighbour list.
pub fn env_mat(
    g: &mut Graph,
    inp: &Inputs,
    nlist: ValueId,
    p: &EnvParams,
    stats: &Stats,
    radial_only: bool,
    dtype: DType,
) -> Result<Env, GraphError> {
    let geo = geometry(g, inp, nlist, p, Switch::Quintic, dtype)?;
    env_from(g, inp, &geo, p, stats, radial_only, dtype)
}

/// The normalised environment rows of a pair geometry.
pub fn env_from(
    g: &mut Graph,
    inp: &Inputs,
    geo: &Geometry,
    p: &EnvParams,
    stats: &Stats,
    radial_only: bool,
    dtype: DType,
) -> Result<Env, GraphError> {
    let nnei = g.shape(geo.mask)[1];
    let (r, sw) = (geo.r, geo.sw);
    let rp = if p.protection != 0.0 {
        g.add_scalar(r, p.protection)?
    } else {
        r
    };
    let t0 = g.recip(rp)?;
    let em = if radial_only {
        g.mul(t0, sw)?
    } else {
        let t0sq = g.mul(t0, t0)?;
        let t1 = g.mul(geo.diff, t0sq)?;
        let e = g.concat(&[t0, t1], 2)?;
        g.mul(e, sw)?
    };
    let davg = g.constant(cast(stats.davg.clone(), dtype));
    let dstd = g.constant(cast(stats.dstd.clone(), dtype));
    let davg = g.gather(davg, inp.atype_loc)?; // [nloc, nnei, ncomp]
    let dstd = g.gather(dstd, inp.atype_loc)?;
    let em = g.sub(em, davg)?;
    let rr = g.div(em, dstd)?;
    let sw = g.reshape(sw, vec![Dim::NLOC, nnei])?;
    Ok(Env {
        rr,
        sw,
        mask: geo.mask,
    })
}

/// The normalised environment rows alone (`Env::rr`): one fused op unless fusion is off.
pub fn env_rr(
    g: &mut Graph,
    inp: &Inputs,
    nlist: ValueId,
    p: &EnvParams,
    stats: &Stats,
    radial_only: bool,
    dtype: DType,
) -> R {
    // The fused op gathers coordinates itself.
    if !inp.fuse || inp.rij.is_some() {
        return Ok(env_mat(g, inp, nlist, p, stats, radial_only, dtype)?.rr);
    }
    let spec = EnvSpec {
        rcut_smth: p.rcut_smth,
        rcut: p.rcut,
        protection: p.protection,
        radial_only,
        davg: Arc::new(cast(stats.davg.clone(), dtype)),
        dstd: Arc::new(cast(stats.dstd.clone(), dtype)),
    };
    // Positions as given (float64): the op rounds pair vectors, not positions, to `dtype`.
    g.push(Op::EnvMat(spec), &[inp.coord, nlist, inp.atype_loc])
}

/// `u^3 (-6u^2 + 15u - 10) + 1` with `u = (clip(r, rs, rc) - rs) / (rc - rs)`.
fn smooth_weight(g: &mut Graph, r: ValueId, rs: f64, rc: f64) -> R {
    let lo = g.scalar_like(rs, r);
    let hi = g.scalar_like(rc, r);
    let c = g.maximum(r, lo)?;
    let c = g.minimum(c, hi)?;
    let u = g.add_scalar(c, -rs)?;
    let u = g.scale(u, 1.0 / (rc - rs))?;
    let u2 = g.mul(u, u)?;
    let u3 = g.mul(u2, u)?;
    let a = g.scale(u2, -6.0)?;
    let b = g.scale(u, 15.0)?;
    let p = g.add(a, b)?;
    let p = g.add_scalar(p, -10.0)?;
    let v = g.mul(u3, p)?;
    g.add_scalar(v, 1.0)
}

/// `exp(-exp(20 (clip(r, 0, rc) - rs) / rs))` (DeePMD-kit's `compute_exp_sw`).
fn exp_switch(g: &mut Graph, r: ValueId, rs: f64, rc: f64) -> R {
    let lo = g.scalar_like(0.0, r);
    let hi = g.scalar_like(rc, r);
    let c = g.maximum(r, lo)?;
    let c = g.minimum(c, hi)?;
    let u = g.add_scalar(c, -rs)?;
    let u = g.scale(u, 20.0 / rs)?;
    let e = g.exp(u)?;
    let e = g.neg(e)?;
    g.exp(e)
}

/// Type-pair exclusion: bool `[nloc, nnei]`, false where (centre type, neighbour type) is
/// excluded. Padding slots count as type `ntypes`, never excluded. `None` if nothing is.
pub fn pair_keep(
    g: &mut Graph,
    inp: &Inputs,
    nlist: ValueId,
    pairs: &[(usize, usize)],
    ntypes: usize,
) -> Result<Option<ValueId>, GraphError> {
    if pairs.is_empty() {
        return Ok(None);
    }
    let n1 = ntypes + 1;
    let mut table = vec![true; n1 * n1];
    for &(a, b) in pairs {
        table[a * n1 + b] = false;
        table[b * n1 + a] = false;
    }
    let table = g.constant(Tensor::bool(vec![n1 * n1], table));
    let (mask, safe) = nlist_mask(g, nlist)?;
    let tj = g.gather(inp.atype, safe)?;
    let pad_t = g.scalar(ntypes as f64, DType::I32);
    let tj = g.select(mask, tj, pad_t)?;
    let ti = g.reshape(inp.atype_loc, vec![Dim::NLOC, Dim::ONE])?;
    let n1c = g.scalar(n1 as f64, DType::I32);
    let ti = g.mul(ti, n1c)?;
    let idx = g.add(ti, tj)?;
    Ok(Some(g.gather(table, idx)?))
}

/// `nlist` with excluded pairs set to -1 (model-level `pair_exclude_types`).
pub fn exclude_pairs(
    g: &mut Graph,
    inp: &Inputs,
    nlist: ValueId,
    pairs: &[(usize, usize)],
    ntypes: usize,
) -> R {
    match pair_keep(g, inp, nlist, pairs, ntypes)? {
        None => Ok(nlist),
        Some(keep) => {
            let minus1 = g.scalar(-1.0, DType::I32);
            g.select(keep, nlist, minus1)
        }
    }
}

/// Zero the rows of `rr [nloc, nnei, c]` where `keep` is false.
pub fn apply_keep(g: &mut Graph, rr: ValueId, keep: Option<ValueId>) -> R {
    let Some(keep) = keep else { return Ok(rr) };
    let nnei = g.shape(rr)[1];
    let k = g.reshape(keep, vec![Dim::NLOC, nnei, Dim::ONE])?;
    let dt = g.dtype(rr);
    let kf = g.cast(k, dt)?;
    g.mul(rr, kf)
}

pub fn cast(t: Tensor, dt: DType) -> Tensor {
    super::nn::cast_tensor(&t, dt)
}
