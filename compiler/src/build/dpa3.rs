//! DPA-3 (`deepmd/dpmodel/descriptor/repflows.py`): node, edge and angle embeddings updated
//! layer by layer by message passing.
//!
//! Node features live on local atoms only; a neighbour's features are read through the
//! extended system's `mapping` (DeePMD-kit's `use_loc_mapping`; the `nall` form it also has
//! computes the same numbers). The dense linear maps that DeePMD-kit applies to
//! concatenations are split by input block (its `optim_update` form), so a neighbour's
//! projection is computed once per atom and gathered, and no `[nloc, nnei, 2n + e]` or
//! `[nloc, a, a, ...]` concatenation is built.

use std::f64::consts::PI;

use super::dpa1::type_table;
use super::env_mat::{env_from, geometry, nlist_mask, pair_keep, Switch};
use super::nn::{activation_fused, cast_tensor, layer};
use super::Inputs;
use crate::graph::{Cmp, DType, Dim, Graph, GraphError, Tensor, ValueId};
use crate::model::dpa3::{AngleCompress, Dpa3, RepflowLayer, UpdateStyle};
use crate::model::{EnvParams, Layer};

type R = Result<ValueId, GraphError>;

/// What every layer reads besides the embeddings.
struct Ctx<'a> {
    d: &'a Dpa3,
    /// Neighbour slots as local atom indices (padding -> 0): `[nloc, nnei]`.
    nlist_loc: ValueId,
    /// Edge switch, zero on padding: `[nloc, nnei, 1]`.
    sw: ValueId,
    /// Edge `h2` (the normalised direction rows of the environment matrix): `[nloc, nnei, 3]`.
    h2: ValueId,
    /// Angle-neighbour slots, `[nloc, a_sel, 1]` in the float dtype.
    a_maskf: ValueId,
    /// Angle switch, zero on padding: `[nloc, a_sel]`.
    a_sw: ValueId,
    /// `[nloc, nnei, 1]`, with `!smooth_edge_update`: whether an edge is an angle neighbour.
    edge_in_angle: Option<ValueId>,
    /// Whether activations may be fused ops.
    fuse: bool,
}

impl Ctx<'_> {
    fn act(&self, g: &mut Graph, x: ValueId) -> R {
        activation_fused(g, x, self.d.activation, self.fuse)
    }
}

pub fn build(g: &mut Graph, inp: &Inputs, d: &Dpa3, nlist: ValueId) -> R {
    let dt = d.dtype;
    let mapping = inp
        .mapping
        .ok_or_else(|| GraphError("DPA-3 needs the extended system's mapping input".into()))?;
    let nlist = match pair_keep(g, inp, nlist, &d.exclude_types, d.ntypes)? {
        Some(keep) => {
            let minus1 = g.scalar(-1.0, DType::I32);
            g.select(keep, nlist, minus1)?
        }
        None => nlist,
    };
    let switch = if d.use_exp_switch {
        Switch::Exp
    } else {
        Switch::Quintic
    };
    let geo = geometry(g, inp, nlist, &d.env, switch, dt)?;
    let env = env_from(g, inp, &geo, &d.env, &d.stats, false, dt)?;

    // The angle list: the first a_sel (nearest) edges that lie within a_rcut.
    let a_sel = d.a_sel;
    let nl_a = g.slice_n(nlist, 1, 0, a_sel)?;
    let r_a = g.slice_n(geo.r, 1, 0, a_sel)?;
    let r_a = g.reshape(r_a, vec![Dim::NLOC, Dim::fixed(a_sel)])?;
    let a_rcut = g.scalar_like(d.a_rcut, r_a);
    let within = g.cmp(Cmp::Lt, r_a, a_rcut)?;
    let minus1 = g.scalar(-1.0, DType::I32);
    let a_nlist = g.select(within, nl_a, minus1)?;
    let a_env = EnvParams {
        rcut: d.a_rcut,
        rcut_smth: d.a_rcut_smth,
        protection: d.env.protection,
    };
    let a_geo = geometry(g, inp, a_nlist, &a_env, switch, dt)?;
    let a_sw = g.reshape(a_geo.sw, vec![Dim::NLOC, Dim::fixed(a_sel)])?;

    // Edge and angle inputs.
    let edge_input = if d.edge_init_use_dist {
        g.mul(geo.r, geo.maskf)?
    } else {
        g.slice_n(env.rr, 2, 0, 1)?
    };
    let h2 = g.slice_n(env.rr, 2, 1, 4)?;
    // Unit directions (zero on padding) and their cosines, as DeePMD-kit scales them.
    let dir = g.mul(a_geo.diff, a_geo.maskf)?;
    let den = g.add_scalar(a_geo.r, 1e-6)?;
    let dir = g.div(dir, den)?; // [nloc, a, 3]
    let dir_t = g.transpose(dir, vec![0, 2, 1])?;
    let cos = g.matmul(dir, dir_t)?; // [nloc, a, a]
    let cos = g.scale(cos, (1.0 - 1e-6) / PI.sqrt())?;
    let angle_input = g.reshape(
        cos,
        vec![Dim::NLOC, Dim::fixed(a_sel), Dim::fixed(a_sel), Dim::ONE],
    )?;

    let (_, safe) = nlist_mask(g, nlist)?;
    let nlist_loc = g.gather(mapping, safe)?;

    let table = type_table(g, &d.type_embedding, dt)?;
    let tebd = g.gather(table, inp.atype_loc)?; // [nloc, n_dim]
    let mut node = activation_fused(g, tebd, d.activation, inp.fuse)?;
    let mut edge = layer(g, edge_input, &d.edge_embd)?;
    if !d.edge_init_use_dist {
        edge = activation_fused(g, edge, d.activation, inp.fuse)?;
    }
    let mut angle = layer(g, angle_input, &d.angle_embd)?;

    let edge_in_angle = if d.smooth_edge_update {
        None
    } else {
        let m = g.cast(a_geo.mask, dt)?;
        let m = g.pad(m, 1, Dim::fixed(0), Dim::fixed(d.e_sel))?;
        let half = g.scalar_like(0.5, m);
        let m = g.cmp(Cmp::Gt, m, half)?;
        Some(g.reshape(m, vec![Dim::NLOC, Dim::fixed(d.e_sel), Dim::ONE])?)
    };
    let ctx = Ctx {
        d,
        nlist_loc,
        sw: geo.sw,
        h2,
        a_maskf: a_geo.maskf,
        a_sw,
        edge_in_angle,
        fuse: inp.fuse,
    };
    for l in &d.layers {
        (node, edge, angle) = if d.sequential_update {
            layer_sequential(g, &ctx, l, node, edge, angle)?
        } else {
            layer_parallel(g, &ctx, l, node, edge, angle)?
        };
    }
    if d.concat_output_tebd {
        node = g.concat(&[node, tebd], 1)?;
    }
    Ok(node)
}

/// One repflow layer with every update computed from the layer's inputs.
fn layer_parallel(
    g: &mut Graph,
    c: &Ctx,
    l: &RepflowLayer,
    node: ValueId,
    edge: ValueId,
    angle: ValueId,
) -> Result<(ValueId, ValueId, ValueId), GraphError> {
    let mut n_list = vec![node];
    let s = layer(g, node, &l.node_self_mlp)?;
    n_list.push(c.act(g, s)?);
    n_list.push(node_sym(g, c, l, edge, node)?);
    n_list.extend(node_edge_message(g, c, l, node, edge)?);
    let n_upd = list_update(g, c.d.update_style, &n_list, &l.n_residual)?;

    let mut e_list = vec![edge];
    let es = pair_linear(g, c, &l.edge_self_linear, node, edge)?;
    e_list.push(c.act(g, es)?);
    let a_upd = match &l.angle {
        Some(al) => {
            let (node_a, edge_a) = angle_inputs(g, c, l, node, edge)?;
            let ea = triple_linear(g, c, &al.edge_angle_linear1, angle, node_a, edge_a)?;
            let ea = c.act(g, ea)?;
            e_list.push(edge_angle_reduce(g, c, &al.edge_angle_linear2, ea, edge)?);
            let aa = triple_linear(g, c, &al.angle_self_linear, angle, node_a, edge_a)?;
            let aa = c.act(g, aa)?;
            list_update(g, c.d.update_style, &[angle, aa], &l.a_residual)?
        }
        None => list_update(g, c.d.update_style, &[angle], &l.a_residual)?,
    };
    let e_upd = list_update(g, c.d.update_style, &e_list, &l.e_residual)?;
    Ok((n_upd, e_upd, a_upd))
}

/// `sequential_update`: edge self, then angle self, then edge-angle, then node updates,
/// each reading the newest embeddings (residual style only).
fn layer_sequential(
    g: &mut Graph,
    c: &Ctx,
    l: &RepflowLayer,
    node: ValueId,
    edge: ValueId,
    angle: ValueId,
) -> Result<(ValueId, ValueId, ValueId), GraphError> {
    let al = l
        .angle
        .as_ref()
        .ok_or_else(|| GraphError("sequential_update needs the angle update".into()))?;
    let es = pair_linear(g, c, &l.edge_self_linear, node, edge)?;
    let es = c.act(g, es)?;
    let edge1 = residual_add(g, edge, &l.e_residual[0], es)?;
    let (node_a, edge_a) = angle_inputs(g, c, l, node, edge1)?;
    let aa = triple_linear(g, c, &al.angle_self_linear, angle, node_a, edge_a)?;
    let aa = c.act(g, aa)?;
    let a_upd = residual_add(g, angle, &l.a_residual[0], aa)?;
    let ea = triple_linear(g, c, &al.edge_angle_linear1, a_upd, node_a, edge_a)?;
    let ea = c.act(g, ea)?;
    let ea = edge_angle_reduce(g, c, &al.edge_angle_linear2, ea, edge1)?;
    let e_upd = residual_add(g, edge1, &l.e_residual[1], ea)?;

    let mut n_list = vec![node];
    let s = layer(g, node, &l.node_self_mlp)?;
    n_list.push(c.act(g, s)?);
    n_list.push(node_sym(g, c, l, e_upd, node)?);
    n_list.extend(node_edge_message(g, c, l, node, e_upd)?);
    let n_upd = list_update(g, c.d.update_style, &n_list, &l.n_residual)?;
    Ok((n_upd, e_upd, a_upd))
}

/// `act(node_sym_linear([grrg(edge), grrg(neighbour node)]))`.
fn node_sym(g: &mut Graph, c: &Ctx, l: &RepflowLayer, edge: ValueId, node: ValueId) -> R {
    let nei = g.gather(node, c.nlist_loc)?; // [nloc, nnei, n_dim]
    let a = grrg(g, c, edge)?;
    let b = grrg(g, c, nei)?;
    let x = g.concat(&[a, b], 1)?;
    let y = layer(g, x, &l.node_sym_linear)?;
    c.act(g, y)
}

/// DeePMD-kit's `symmetrization_op`: `hg = h2^T (g sw) / sqrt(nnei)` (`[nloc, 3, ng]`), then
/// `hg[:, :, :axis]^T hg / 3`, flattened to `[nloc, axis * ng]`.
fn grrg(g: &mut Graph, c: &Ctx, x: ValueId) -> R {
    let ng = g.shape(x)[2];
    let xs = g.mul(x, c.sw)?;
    let ht = g.transpose(c.h2, vec![0, 2, 1])?;
    let hg = g.matmul(ht, xs)?;
    let hg = g.scale(hg, c.d.edge_norm().powf(-0.5))?;
    let axis = c.d.axis_neuron;
    let hgm = g.slice_n(hg, 2, 0, axis)?;
    let hgm_t = g.transpose(hgm, vec![0, 2, 1])?;
    let r = g.matmul(hgm_t, hg)?; // [nloc, axis, ng]
    let r = g.scale(r, 1.0 / 3.0)?;
    g.reshape(r, vec![Dim::NLOC, Dim::fixed(axis * ng.factor)])
}

/// The node-edge message, summed over neighbours with the switch, one tensor per head.
fn node_edge_message(
    g: &mut Graph,
    c: &Ctx,
    l: &RepflowLayer,
    node: ValueId,
    edge: ValueId,
) -> Result<Vec<ValueId>, GraphError> {
    let m = pair_linear(g, c, &l.node_edge_linear, node, edge)?;
    let m = c.act(g, m)?;
    let m = g.mul(m, c.sw)?;
    let m = g.sum(m, &[1], false)?;
    let m = g.scale(m, 1.0 / c.d.edge_norm())?;
    let heads = c.d.n_multi_edge_message;
    let n = c.d.n_dim;
    (0..heads)
        .map(|h| g.slice_n(m, 1, h * n, (h + 1) * n))
        .collect()
}

/// A linear map of `[node_i, node_j, edge_ij]` per edge, `[nloc, nnei, out]`, computed by
/// input block: `node W0 + gather(node W1) + edge W2 + b`.
fn pair_linear(g: &mut Graph, c: &Ctx, lin: &Layer, node: ValueId, edge: ValueId) -> R {
    let n = c.d.n_dim;
    let e = c.d.e_dim;
    let own = matmul_rows(g, node, lin, 0, n)?; // [nloc, out]
    let nei = matmul_rows(g, node, lin, n, 2 * n)?;
    let nei = g.gather(nei, c.nlist_loc)?; // [nloc, nnei, out]
    let ed = matmul_rows(g, edge, lin, 2 * n, 2 * n + e)?;
    let own = g.expand_dims(own, 1)?;
    let y = g.add(ed, nei)?;
    let y = g.add(y, own)?;
    add_bias(g, y, lin)
}

/// A linear map of `[angle_ijk, node_i, edge_ik, edge_ij]` per angle, `[nloc, a, a, out]`
/// (axis 1 is j, axis 2 is k), computed by input block.
fn triple_linear(
    g: &mut Graph,
    c: &Ctx,
    lin: &Layer,
    angle: ValueId,
    node_a: ValueId,
    edge_a: ValueId,
) -> R {
    let a = c.d.a_dim;
    let n = g.shape(node_a)[1].factor;
    let e = g.shape(edge_a)[2].factor;
    let ang = matmul_rows(g, angle, lin, 0, a)?;
    let nd = matmul_rows(g, node_a, lin, a, a + n)?; // [nloc, out]
    let ek = matmul_rows(g, edge_a, lin, a + n, a + n + e)?; // [nloc, a, out]
    let ej = matmul_rows(g, edge_a, lin, a + n + e, a + n + 2 * e)?;
    let nd = g.expand_dims(nd, 1)?;
    let nd = g.expand_dims(nd, 1)?;
    let ek = g.expand_dims(ek, 1)?;
    let ej = g.expand_dims(ej, 2)?;
    let y = g.add(ang, nd)?;
    let y = g.add(y, ek)?;
    let y = g.add(y, ej)?;
    add_bias(g, y, lin)
}

/// The node and edge embeddings the angle update reads: compressed, edges cut to the
/// angle list and zeroed outside it.
fn angle_inputs(
    g: &mut Graph,
    c: &Ctx,
    l: &RepflowLayer,
    node: ValueId,
    edge: ValueId,
) -> Result<(ValueId, ValueId), GraphError> {
    let (node_a, edge_a) = match (&c.d.a_compress, &l.a_compress) {
        (AngleCompress::Split { n, e }, _) => {
            (g.slice_n(node, 1, 0, *n)?, g.slice_n(edge, 2, 0, *e)?)
        }
        (AngleCompress::Linear, Some((ln, le))) => (layer(g, node, ln)?, layer(g, edge, le)?),
        _ => (node, edge),
    };
    let edge_a = g.slice_n(edge_a, 1, 0, c.d.a_sel)?;
    let edge_a = g.mul(edge_a, c.a_maskf)?;
    Ok((node_a, edge_a))
}

/// `act(edge_angle_linear2(sum_k a_sw_j a_sw_k m_jk / sqrt(a_sel)))`, padded with zeros from
/// `a_sel` to `nnei` edges (or, without `smooth_edge_update`, with the edge embedding).
fn edge_angle_reduce(g: &mut Graph, c: &Ctx, lin2: &Layer, m: ValueId, edge: ValueId) -> R {
    let a = c.d.a_sel;
    let swj = g.reshape(c.a_sw, vec![Dim::NLOC, Dim::fixed(a), Dim::ONE, Dim::ONE])?;
    let swk = g.reshape(c.a_sw, vec![Dim::NLOC, Dim::ONE, Dim::fixed(a), Dim::ONE])?;
    let w = g.mul(swj, swk)?;
    let m = g.mul(m, w)?;
    let m = g.sum(m, &[2], false)?; // [nloc, a, e]
    let m = g.scale(m, c.d.angle_norm().powf(-0.5))?;
    let mut m = g.pad(m, 1, Dim::fixed(0), Dim::fixed(c.d.e_sel))?;
    if let Some(inside) = c.edge_in_angle {
        m = g.select(inside, m, edge)?;
    }
    let y = layer(g, m, lin2)?;
    c.act(g, y)
}

/// Combine an embedding with its updates (`update_style`).
pub(super) fn list_update(
    g: &mut Graph,
    style: UpdateStyle,
    list: &[ValueId],
    res: &[Tensor],
) -> R {
    let n = list.len();
    match style {
        UpdateStyle::ResAvg => {
            let mut u = list[0];
            for &v in &list[1..] {
                u = g.add(u, v)?;
            }
            g.scale(u, 1.0 / (n as f64).sqrt())
        }
        UpdateStyle::ResIncr => {
            let mut u = list[0];
            let k = if n > 1 {
                1.0 / ((n - 1) as f64).sqrt()
            } else {
                0.0
            };
            for &v in &list[1..] {
                let v = g.scale(v, k)?;
                u = g.add(u, v)?;
            }
            Ok(u)
        }
        UpdateStyle::ResResidual => {
            if res.len() != n - 1 {
                return Err(GraphError(format!(
                    "{} updates but {} residual vectors",
                    n - 1,
                    res.len()
                )));
            }
            let mut u = list[0];
            for (&v, r) in list[1..].iter().zip(res) {
                u = residual_add(g, u, r, v)?;
            }
            Ok(u)
        }
    }
}

/// `u + r * v` with `r` broadcast over the last axis.
pub(super) fn residual_add(g: &mut Graph, u: ValueId, r: &Tensor, v: ValueId) -> R {
    let dt = g.dtype(v);
    let r = g.constant(cast_tensor(r, dt));
    let rv = g.mul(v, r)?;
    g.add(u, rv)
}

/// `x [..., b - a] @ w[a..b, :]`, in the layer's dtype.
fn matmul_rows(g: &mut Graph, x: ValueId, lin: &Layer, a: usize, b: usize) -> R {
    let out = lin.n_out();
    let w = lin.w.to_f64_vec();
    let rows = Tensor::f64(vec![b - a, out], w[a * out..b * out].to_vec());
    let w = g.constant(cast_tensor(&rows, lin.dtype));
    let xt = g.ty(x).clone();
    let rank = xt.rank();
    let lead = xt.shape[..rank - 1].to_vec();
    let n = crate::graph::types::numel(&lead)
        .ok_or_else(|| GraphError("layer input too large".into()))?;
    let x2 = g.reshape(x, vec![n, Dim::fixed(b - a)])?;
    let y = g.matmul(x2, w)?;
    let mut shape = lead;
    shape.push(Dim::fixed(out));
    g.reshape(y, shape)
}

fn add_bias(g: &mut Graph, y: ValueId, lin: &Layer) -> R {
    match &lin.b {
        Some(b) => {
            let b = g.constant(b.clone());
            g.add(y, b)
        }
        None => Ok(y),
    }
}
