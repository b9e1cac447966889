//! DPA-2 (`deepmd/dpmodel/descriptor/dpa2.py`, `repformers.py`, `se_t_tebd.py`), in
//! DeePMD-kit's dense form.
//!
//! The model's list (nearest first, the largest cutoff and width of the blocks) is cut per
//! block: its first `nsel` slots, neighbours beyond the block's cutoff set to -1
//! (`build_multiple_neighbor_list`). `repinit` is a se_atten block without attention (the
//! DPA-1 builder), the three-body block embeds neighbour-pair angles, and the repformer
//! layers update atom (`g1`), pair (`g2`) and pair-direction (`h2`) features; a neighbour's
//! `g1` is read through the extended system's `mapping`.

use std::sync::Arc;

use super::compress::{factor_contract, table_eval, Plan};
use super::dpa1::{pad_atom, softmax_last, type_pairs, type_table, MASKED_LOGIT};
use super::dpa3::list_update;
use super::env_mat::{env_from, geometry, nlist_mask, pair_keep, Switch};
use super::nn::{activation, cast_tensor, fusable, layer, layer_norm, net, net_on_parts};
use super::Inputs;
use crate::graph::table::Table;
use crate::graph::{Cmp, DType, Dim, Graph, GraphError, Mlp, Tensor, ValueId};
use crate::model::dpa2::{Atten2, Dpa2, LocalAtten, RepformerLayer, Repformers, ThreeBody};
use crate::model::se_t_tebd::SeTTebd;
use crate::model::{Activation, EnvParams, Layer, Net, TebdInput};

type R = Result<ValueId, GraphError>;

/// `symmetrization_op`'s protection of `1/nnei`.
const EPSILON: f64 = 1e-4;

pub fn build(g: &mut Graph, inp: &Inputs, d: &Dpa2, nlist: ValueId) -> R {
    let dt = d.dtype;
    let mapping = inp
        .mapping
        .ok_or_else(|| GraphError("DPA-2 needs the extended system's mapping input".into()))?;
    // Distances of the model's list, to cut it per block.
    let wide = EnvParams {
        rcut: d.rcut,
        rcut_smth: 0.0,
        protection: 0.0,
    };
    let r_all = geometry(g, inp, nlist, &wide, Switch::Quintic, DType::F64)?.r;
    let cut = |g: &mut Graph, rc: f64, ns: usize| -> R {
        let nl = g.slice_n(nlist, 1, 0, ns)?;
        let r = g.slice_n(r_all, 1, 0, ns)?;
        let r = g.reshape(r, vec![Dim::NLOC, Dim::fixed(ns)])?;
        let rc = g.scalar(rc, DType::F64);
        let beyond = g.cmp(Cmp::Gt, r, rc)?;
        let minus1 = g.scalar(-1.0, DType::I32);
        g.select(beyond, minus1, nl)
    };
    let nl_init = cut(g, d.repinit.env.rcut, d.repinit.nnei)?;
    let mut g1 = super::dpa1::build(g, inp, &d.repinit, nl_init)?;
    let table = type_table(g, &d.type_embedding, dt)?;
    if let Some(tb) = &d.three_body {
        let nl3 = cut(g, tb.env.rcut, tb.nnei)?;
        // DeePMD-kit's dp compress leaves DPA-2's three-body block as it is.
        let t = three_body(g, inp, tb, (table, nl3), None, dt)?;
        g1 = g.concat(&[g1, t], 1)?;
    }
    let mut g1 = layer(g, g1, &d.g1_shape_tranform)?;
    let tebd = g.gather(table, inp.atype_loc)?; // [nloc, tebd_dim]
    if let Some(tt) = &d.tebd_transform {
        let t = layer(g, tebd, tt)?;
        g1 = g.add(g1, t)?;
    }
    let rf = &d.repformers;
    let nl_rf = cut(g, rf.env.rcut, rf.nnei)?;
    let mut g1 = repformers(g, inp, rf, g1, nl_rf, mapping, dt)?;
    if d.concat_output_tebd {
        g1 = g.concat(&[g1, tebd], 1)?;
    }
    Ok(g1)
}

/// `se_e3_tebd`: the three-body block on the model's list, then (with
/// `concat_output_tebd`) the centre's type embedding.
pub fn se_t_tebd(g: &mut Graph, inp: &Inputs, d: &SeTTebd, nlist: ValueId) -> R {
    let dt = d.dtype;
    let table = type_table(g, &d.type_embedding, dt)?;
    let compress = inp.compress.as_ref();
    if compress.is_some() && !matches!(d.block.tebd_input, TebdInput::Strip) {
        return Err(GraphError(
            "compression of a se_e3_tebd descriptor in concat mode: DeePMD-kit's dp compress \
             takes strip mode only, and so does dpc; run the model without --compress"
                .into(),
        ));
    }
    let out = three_body(g, inp, &d.block, (table, nlist), compress, dt)?;
    if d.concat_output_tebd {
        let cen = g.gather(table, inp.atype_loc)?;
        g.concat(&[out, cen], 1)
    } else {
        Ok(out)
    }
}

/// `DescrptBlockSeTTebd`: `sum_jk (r_j . r_k) G_jk / nnei^2` over neighbour pairs, with
/// `G_jk = G(r_j . r_k, T_j, T_k)` (concat mode) or, in strip mode,
/// `G_jk = g(r_j . r_k) (1 + t(T_j, T_k) [sw_j sw_k])`, `t` a network on the pair of type
/// embeddings tabulated over every type pair.
fn three_body(
    g: &mut Graph,
    inp: &Inputs,
    tb: &ThreeBody,
    (table, nlist): (ValueId, ValueId),
    compress: Option<&Plan>,
    dt: DType,
) -> R {
    let nnei = tb.nnei;
    let keep = pair_keep(g, inp, nlist, &tb.exclude_types, tb.stats.davg.shape[0])?;
    let geo = geometry(g, inp, nlist, &tb.env, Switch::Quintic, dt)?;
    let env = env_from(g, inp, &geo, &tb.env, &tb.stats, false, dt)?;
    let (rr, nmask) = match keep {
        Some(k) => {
            let kf = g.cast(k, dt)?;
            let kf = g.reshape(kf, vec![Dim::NLOC, Dim::fixed(nnei), Dim::ONE])?;
            (g.mul(env.rr, kf)?, g.and(env.mask, k)?)
        }
        None => (env.rr, env.mask),
    };
    let r3 = g.slice_n(rr, 2, 1, 4)?;
    let r3t = g.transpose(r3, vec![0, 2, 1])?;
    let env_ij = g.matmul(r3, r3t)?; // [nloc, nnei, nnei]
    let sq = vec![Dim::NLOC, Dim::fixed(nnei), Dim::fixed(nnei), Dim::ONE];
    let ss = g.reshape(env_ij, sq)?;
    // Padded slots read the extended atom 0's type, as DeePMD-kit does.
    let pad = pad_atom(g, inp)?;
    let nl0 = g.select(nmask, nlist, pad)?;
    let nt = g.shape(table)[1];
    let gg = match tb.tebd_input {
        TebdInput::Concat => {
            if inp.fuse {
                if let Some(sum) = concat_fused(g, inp, tb, (ss, nl0), table)? {
                    return g.scale(sum, 1.0 / (nnei * nnei) as f64);
                }
            }
            let emb = g.gather(inp.atype, nl0)?;
            let emb = g.gather(table, emb)?; // [nloc, nnei, nt]
            let ej = g.reshape(emb, vec![Dim::NLOC, Dim::fixed(nnei), Dim::ONE, nt])?;
            let ek = g.reshape(emb, vec![Dim::NLOC, Dim::ONE, Dim::fixed(nnei), nt])?;
            // G([r_j . r_k, T_j, T_k]) with its first layer split by input block.
            net_on_parts(g, &[ss, ej, ek], &tb.embedding, inp.fuse)? // [nloc, nnei, nnei, ng]
        }
        TebdInput::Strip => {
            let strip = tb
                .embedding_strip
                .as_ref()
                .expect("validated: strip mode has embeddings_strip");
            // Row a * ntp + b of the pair table is [T[a], T[b]].
            let pair = type_pairs(g, table, false)?;
            let tt = net(g, pair, strip)?; // [ntp * ntp, ng]
            let w = if tb.smooth {
                let nf = g.cast(nmask, dt)?;
                let sw = g.mul(env.sw, nf)?; // [nloc, nnei], zero off the list
                let swj = g.reshape(sw, vec![Dim::NLOC, Dim::fixed(nnei), Dim::ONE, Dim::ONE])?;
                let swk = g.reshape(sw, vec![Dim::NLOC, Dim::ONE, Dim::fixed(nnei), Dim::ONE])?;
                Some(g.mul(swj, swk)?)
            } else {
                None
            };
            // Each pair's row of `tt`.
            let idx = pair_index(g, inp, nl0, table, nnei)?; // [nloc, nnei, nnei]
            let gs = match compress {
                Some(p) if inp.fuse => {
                    let sum = strip_tabulated(g, tb, p, (ss, idx, w), tt)?;
                    return g.scale(sum, 1.0 / (nnei * nnei) as f64);
                }
                // Elementary ops (the StableHLO lowering): the table's values.
                Some(p) => {
                    let (_, tab) = three_body_table(p, tb, dt)?;
                    table_eval(g, ss, &tab, &tb.embedding)?
                }
                None => net(g, ss, &tb.embedding)?,
            }; // [nloc, nnei, nnei, ng]
            let mut gt = g.gather(tt, idx)?; // [nloc, nnei, nnei, ng]
            if let Some(w) = w {
                gt = g.mul(gt, w)?;
            }
            let prod = g.mul(gs, gt)?;
            g.add(prod, gs)?
        }
    };
    let gg = g.mul(gg, ss)?;
    let res = g.sum(gg, &[1, 2], false)?;
    g.scale(res, 1.0 / (nnei * nnei) as f64)
}

/// Each neighbour pair's row `T_j * ntp + T_k` of a table over type pairs (`type_pairs`,
/// `ntp` the type embedding's rows), `[nloc, nnei, nnei]`, for `nl0` the neighbour list
/// with padded slots on a real atom.
fn pair_index(g: &mut Graph, inp: &Inputs, nl0: ValueId, table: ValueId, nnei: usize) -> R {
    let ntp = g.shape(table)[0].factor;
    let ty = g.gather(inp.atype, nl0)?; // [nloc, nnei]
    let tj = g.reshape(ty, vec![Dim::NLOC, Dim::fixed(nnei), Dim::ONE])?;
    let ntp_c = g.scalar(ntp as f64, DType::I32);
    let tj = g.mul(tj, ntp_c)?;
    let tk = g.reshape(ty, vec![Dim::NLOC, Dim::ONE, Dim::fixed(nnei)])?;
    g.add(tj, tk)
}

/// `sum_jk x_jk G([x_jk, T_j, T_k])` `[nloc, ng]` of a concat-mode three-body block as one
/// fused op (`Embed::shift`), for `x = r_j . r_k` (`ss`, `[nloc, nnei, nnei, 1]`): the first
/// layer's rows for `T_j` and `T_k` give each type pair's shift of its pre-activation (one
/// small product per type pair instead of one per neighbour pair), and the network runs
/// on `x` alone. `None` where the network is not fusable or its first layer is a residual
/// one (its input would be the whole concatenation).
fn concat_fused(
    g: &mut Graph,
    inp: &Inputs,
    tb: &ThreeBody,
    (ss, nl0): (ValueId, ValueId),
    table: ValueId,
) -> Result<Option<ValueId>, GraphError> {
    let nnei = tb.nnei;
    let dt = g.dtype(ss);
    let Some((first, rest)) = tb.embedding.layers.split_first() else {
        return Ok(None);
    };
    let nt = g.shape(table)[1].factor;
    let n1 = first.n_out();
    let total = 1 + 2 * nt;
    if first.n_in() != total || (first.resnet && (n1 == total || n1 == 2 * total)) {
        return Ok(None);
    }
    let w = first.w.to_f64_vec();
    let rows = |from: usize, to: usize| {
        let t = Tensor::f64(vec![to - from, n1], w[from * n1..to * n1].to_vec());
        cast_tensor(&t, first.dtype)
    };
    let geo = Net {
        layers: std::iter::once(Layer {
            w: rows(0, 1),
            resnet: false,
            ..first.clone()
        })
        .chain(rest.iter().cloned())
        .collect(),
    };
    let Some(mlp) = fusable(&geo, dt) else {
        return Ok(None);
    };
    // Row a * ntp + b of `u`: T[a] W_j + T[b] W_k, the first layer's type rows.
    let types = Layer {
        w: rows(1, total),
        b: None,
        idt: None,
        activation: Activation::Linear,
        resnet: false,
        dtype: first.dtype,
    };
    let pair = type_pairs(g, table, false)?; // [ntp * ntp, 2 nt]
    let u = layer(g, pair, &types)?;
    let u = g.cast(u, dt)?;
    let idx = pair_index(g, inp, nl0, table, nnei)?;
    let rows = vec![Dim::NLOC, Dim::fixed(nnei * nnei), Dim::ONE];
    let x = g.reshape(ss, rows.clone())?; // [nloc, nnei^2, 1]
    let idx = g.reshape(idx, rows[..2].to_vec())?;
    let sums = g.embed_contract_shift(x, mlp, (idx, u))?; // [nloc, ng, 1]
    let ng = Dim::fixed(tb.embedding.layers.last().map_or(0, |l| l.n_out()));
    Ok(Some(g.reshape(sums, vec![Dim::NLOC, ng])?))
}

/// The three-body block's geometric network `gs` and its table over `x = r_j . r_k`:
/// `[-b^2, b^2]` for `b` the largest `|r|` (`--compress`).
fn three_body_table(
    p: &Plan,
    tb: &ThreeBody,
    dt: DType,
) -> Result<(Arc<Mlp>, Arc<Table>), GraphError> {
    Ok(p.tabulate(&tb.embedding, dt, |p| {
        let b = p.angular_bound(&tb.env, &tb.stats, 0..tb.nnei)?;
        Ok((-b * b, b * b))
    })?)
}

/// `sum_jk x_jk G_jk` `[nloc, ng]` of a strip-mode three-body block with its geometric
/// network `gs` tabulated (`--compress`, DeePMD-kit's `tabulate_fusion_se_t_tebd`), for `x =
/// r_j . r_k` (`ss`, `[nloc, nnei, nnei, 1]`), `G_jk = gs(x_jk) (1 + t[T_j, T_k] w_jk)`,
/// `t` the strip network's value of each type pair (`tt`, row `a * ntp + b`), `w` the
/// switches' product with `smooth`, else 1, and `idx` each pair's row: `factor_contract`
/// over the pairs as rows. Any number of types.
fn strip_tabulated(
    g: &mut Graph,
    tb: &ThreeBody,
    p: &Plan,
    (ss, idx, w): (ValueId, ValueId, Option<ValueId>),
    tt: ValueId,
) -> R {
    let nnei = tb.nnei;
    let mt = three_body_table(p, tb, g.dtype(ss))?;
    let ng = Dim::fixed(mt.0.n_out());
    let rows = vec![Dim::NLOC, Dim::fixed(nnei * nnei), Dim::ONE];
    let x = g.reshape(ss, rows.clone())?; // [nloc, nnei^2, 1]
    let idx = g.reshape(idx, rows[..2].to_vec())?;
    let w = match w {
        Some(w) => Some(g.reshape(w, rows)?),
        None => None,
    };
    let sums = factor_contract(g, x, w, mt, (idx, tt))?; // [nloc, ng, 1]
    g.reshape(sums, vec![Dim::NLOC, ng])
}

/// What every repformer layer reads besides the features.
struct Ctx<'a> {
    rf: &'a Repformers,
    /// Neighbour slots as local atom indices (padding -> 0): `[nloc, nnei]`.
    nlist_loc: ValueId,
    /// Real neighbour slots, `[nloc, nnei, 1]` in the float dtype, and as a bool `[nloc, nnei]`.
    maskf: ValueId,
    mask: ValueId,
    /// The switch, zero on padding: `[nloc, nnei, 1]`.
    sw: ValueId,
    dt: DType,
    fuse: bool,
}

fn repformers(
    g: &mut Graph,
    inp: &Inputs,
    rf: &Repformers,
    g1: ValueId,
    nlist: ValueId,
    mapping: ValueId,
    dt: DType,
) -> R {
    let nnei = rf.nnei;
    let nlist = match pair_keep(g, inp, nlist, &rf.exclude_types, ntypes_of(rf))? {
        Some(keep) => {
            let minus1 = g.scalar(-1.0, DType::I32);
            g.select(keep, nlist, minus1)?
        }
        None => nlist,
    };
    let geo = geometry(g, inp, nlist, &rf.env, Switch::Quintic, dt)?;
    let env = env_from(g, inp, &geo, &rf.env, &rf.stats, false, dt)?;
    let sw = g.reshape(env.sw, vec![Dim::NLOC, Dim::fixed(nnei), Dim::ONE])?;
    let mut g1 = activation(g, g1, rf.activation)?;
    let (g2, mut h2) = if rf.direct_dist {
        let r = g.mul(geo.r, geo.maskf)?;
        let d = g.mul(geo.diff, geo.maskf)?;
        (
            g.scale(r, 1.0 / rf.env.rcut)?,
            g.scale(d, 1.0 / rf.env.rcut)?,
        )
    } else {
        (g.slice_n(env.rr, 2, 0, 1)?, g.slice_n(env.rr, 2, 1, 4)?)
    };
    let g2 = layer(g, g2, &rf.g2_embd)?;
    let mut g2 = activation(g, g2, rf.activation)?;
    let (_, safe) = nlist_mask(g, nlist)?;
    let ctx = Ctx {
        rf,
        nlist_loc: g.gather(mapping, safe)?,
        maskf: geo.maskf,
        mask: env.mask,
        sw,
        dt,
        fuse: inp.fuse,
    };
    for l in &rf.layers {
        (g1, g2, h2) = repformer_layer(g, &ctx, l, g1, g2, h2)?;
    }
    Ok(g1)
}

fn ntypes_of(rf: &Repformers) -> usize {
    rf.stats.davg.shape[0]
}

fn repformer_layer(
    g: &mut Graph,
    c: &Ctx,
    l: &RepformerLayer,
    g1: ValueId,
    g2: ValueId,
    h2: ValueId,
) -> Result<(ValueId, ValueId, ValueId), GraphError> {
    let act = c.rf.activation;
    let style = c.rf.update_style;
    let mut g2_upd = vec![g2];
    let mut h2_upd = vec![h2];
    let mut g1_upd = vec![g1];
    let mut g1_mlp = if l.g1_out_mlp { vec![] } else { vec![g1] };
    if let Some(m) = &l.g1_self_mlp {
        let y = layer(g, g1, m)?;
        g1_upd.push(activation(g, y, act)?);
    }
    let gg1 = g.gather(g1, c.nlist_loc)?; // [nloc, nnei, ng1]; unused ones are dropped
    if let Some(lin2) = &l.linear2 {
        let y = layer(g, g2, lin2)?;
        g2_upd.push(activation(g, y, act)?);
        if let Some(p) = &l.proj_g1g1g2 {
            let gi = g.expand_dims(g1, 1)?;
            let y = g.mul(gi, gg1)?;
            let y = weigh(g, c, y, l.smooth)?;
            g2_upd.push(layer(g, y, p)?);
        }
        if let Some(a) = &l.attn2 {
            let aa = atten2_map(g, c, a, g2, h2)?; // [nloc, nh, nnei, nnei]
            if let Some((mapv, head_map, lm)) = &l.attn2_g2 {
                let y = atten2_apply(g, c, a.heads, aa, g2, mapv, head_map)?;
                g2_upd.push(layer_norm(g, y, lm)?);
            }
            if let Some(hm) = &l.attn2_h2 {
                h2_upd.push(atten2_equivar(g, c, a.heads, aa, h2, hm)?);
            }
        }
    }
    if let Some(p) = &l.proj_g1g2 {
        let conv = g1_conv(g, c, l, p, gg1, g2)?;
        if l.g1_out_conv {
            g1_upd.push(conv);
        } else {
            g1_mlp.push(conv);
        }
    }
    if l.has_grrg {
        g1_mlp.push(symmetrize(g, c, l, g2, h2)?);
    }
    if l.has_drrd {
        g1_mlp.push(symmetrize(g, c, l, gg1, h2)?);
    }
    let x = match g1_mlp.as_slice() {
        [one] => *one,
        _ => g.concat(&g1_mlp, 1)?,
    };
    let y = layer(g, x, &l.linear1)?;
    g1_upd.push(activation(g, y, act)?);
    if let Some(la) = &l.loc_attn {
        g1_upd.push(local_atten(g, c, la, g1, gg1)?);
    }
    let (g2n, h2n) = if l.update_chnnl_2 {
        (
            list_update(g, style, &g2_upd, &l.g2_residual)?,
            list_update(g, style, &h2_upd, &l.h2_residual)?,
        )
    } else {
        (g2, h2)
    };
    let g1n = list_update(g, style, &g1_upd, &l.g1_residual)?;
    Ok((g1n, g2n, h2n))
}

/// `x [nloc, nnei, d]` with padding slots zeroed, and with `smooth` weighed by the switch.
fn weigh(g: &mut Graph, c: &Ctx, x: ValueId, smooth: bool) -> R {
    let x = g.mul(x, c.maskf)?;
    if smooth {
        g.mul(x, c.sw)
    } else {
        Ok(x)
    }
}

/// `1/nnei` (or its square root): a constant when smooth, else per centre from its count of
/// neighbours, `1/(eps + n)`; shaped `[nloc, 1, 1]` or a scalar.
fn inv_nnei(g: &mut Graph, c: &Ctx, smooth: bool, sqrt: bool) -> R {
    let nnei = c.rf.nnei as f64;
    if smooth {
        let v = if sqrt { nnei.sqrt() } else { nnei };
        return Ok(g.scalar(1.0 / v, c.dt));
    }
    let n = g.sum(c.maskf, &[1], true)?; // [nloc, 1, 1]
    let n = if sqrt { g.sqrt(n)? } else { n };
    let n = g.add_scalar(n, EPSILON)?;
    g.recip(n)
}

/// `symmetrization_op`: `hg = h2^T x / nnei`, then `hg[:, :, :axis]^T hg / 3`, flattened.
fn symmetrize(g: &mut Graph, c: &Ctx, l: &RepformerLayer, x: ValueId, h2: ValueId) -> R {
    let ng = g.shape(x)[2].factor;
    let xs = weigh(g, c, x, l.smooth)?;
    let ht = g.transpose(h2, vec![0, 2, 1])?;
    let hg = g.matmul(ht, xs)?; // [nloc, 3, ng]
    let inv = inv_nnei(g, c, l.smooth, l.use_sqrt_nnei)?;
    let hg = g.mul(hg, inv)?;
    let axis = c.rf.axis_neuron;
    let hgm = g.slice_n(hg, 2, 0, axis)?;
    let hgm_t = g.transpose(hgm, vec![0, 2, 1])?;
    let r = g.matmul(hgm_t, hg)?; // [nloc, axis, ng]
    let r = g.scale(r, 1.0 / 3.0)?;
    g.reshape(r, vec![Dim::NLOC, Dim::fixed(axis * ng)])
}

/// `_update_g1_conv`: neighbours' `g1` convolved with the pair features.
fn g1_conv(
    g: &mut Graph,
    c: &Ctx,
    l: &RepformerLayer,
    proj: &Layer,
    gg1: ValueId,
    g2: ValueId,
) -> R {
    let (a, b) = if l.g1_out_conv {
        (layer(g, g2, proj)?, gg1)
    } else {
        (g2, layer(g, gg1, proj)?)
    };
    let b = weigh(g, c, b, l.smooth)?;
    let y = g.mul(a, b)?;
    let y = g.sum(y, &[1], true)?; // [nloc, 1, d]
    let inv = inv_nnei(g, c, l.smooth, false)?;
    let y = g.mul(y, inv)?;
    let d = g.shape(y)[2];
    g.reshape(y, vec![Dim::NLOC, d])
}

/// `Atten2Map`: `[nloc, nh, nnei, nnei]` attention weights between a centre's neighbours,
/// times `h2_j . h2_k / sqrt(3)`.
fn atten2_map(g: &mut Graph, c: &Ctx, a: &Atten2, g2: ValueId, h2: ValueId) -> R {
    let (nd, nh, nnei) = (a.hidden, a.heads, c.rf.nnei);
    let qk = layer(g, g2, &a.mapqk)?; // [nloc, nnei, nd * 2nh]
    let qk = g.reshape(
        qk,
        vec![
            Dim::NLOC,
            Dim::fixed(nnei),
            Dim::fixed(nd),
            Dim::fixed(2 * nh),
        ],
    )?;
    let qk = g.transpose(qk, vec![0, 3, 1, 2])?; // [nloc, 2nh, nnei, nd]
    let q = g.slice_n(qk, 1, 0, nh)?;
    let k = g.slice_n(qk, 1, nh, 2 * nh)?;
    let kt = g.transpose(k, vec![0, 1, 3, 2])?;
    let w = g.matmul(q, kt)?; // [nloc, nh, nnei, nnei]
    let mut w = g.scale(w, 1.0 / (nd as f64).sqrt())?;
    let h2t = g.transpose(h2, vec![0, 2, 1])?;
    let hh = g.matmul(h2, h2t)?; // [nloc, nnei, nnei]
    let hh = g.reshape(
        hh,
        vec![Dim::NLOC, Dim::ONE, Dim::fixed(nnei), Dim::fixed(nnei)],
    )?;
    if a.has_gate {
        w = g.mul(w, hh)?;
    }
    let sw_q = g.reshape(c.sw, vec![Dim::NLOC, Dim::ONE, Dim::fixed(nnei), Dim::ONE])?;
    let sw_k = g.reshape(c.sw, vec![Dim::NLOC, Dim::ONE, Dim::ONE, Dim::fixed(nnei)])?;
    let m_q = g.reshape(
        c.mask,
        vec![Dim::NLOC, Dim::ONE, Dim::fixed(nnei), Dim::ONE],
    )?;
    let m_k = g.reshape(
        c.mask,
        vec![Dim::NLOC, Dim::ONE, Dim::ONE, Dim::fixed(nnei)],
    )?;
    if a.smooth {
        let s = g.add_scalar(w, a.shift)?;
        let s = g.mul(s, sw_q)?;
        let s = g.mul(s, sw_k)?;
        w = g.add_scalar(s, -a.shift)?;
    } else {
        let lo = g.scalar_like(MASKED_LOGIT, w);
        w = g.select(m_k, w, lo)?;
    }
    let w = softmax_last(g, w, c.fuse)?;
    let zero = g.scalar_like(0.0, w);
    let w = g.select(m_k, w, zero)?;
    let mut w = g.select(m_q, w, zero)?;
    if a.smooth {
        w = g.mul(w, sw_q)?;
        w = g.mul(w, sw_k)?;
    }
    let hh = g.scale(hh, 1.0 / 3f64.sqrt())?;
    g.mul(w, hh)
}

/// `Atten2MultiHeadApply`: the pair features mixed by each head's weights, heads mapped back.
fn atten2_apply(
    g: &mut Graph,
    c: &Ctx,
    nh: usize,
    aa: ValueId,
    g2: ValueId,
    mapv: &Layer,
    head_map: &Layer,
) -> R {
    let (nnei, ng2) = (c.rf.nnei, c.rf.g2_dim);
    let v = layer(g, g2, mapv)?; // [nloc, nnei, ng2 * nh]
    let v = g.reshape(
        v,
        vec![Dim::NLOC, Dim::fixed(nnei), Dim::fixed(ng2), Dim::fixed(nh)],
    )?;
    let v = g.transpose(v, vec![0, 3, 1, 2])?; // [nloc, nh, nnei, ng2]
    let r = g.matmul(aa, v)?; // [nloc, nh, nnei, ng2]
    let r = g.transpose(r, vec![0, 2, 3, 1])?; // [nloc, nnei, ng2, nh]
    let r = g.reshape(r, vec![Dim::NLOC, Dim::fixed(nnei), Dim::fixed(ng2 * nh)])?;
    layer(g, r, head_map)
}

/// `Atten2EquiVarApply`: the pair directions mixed by each head's weights, heads summed by
/// a linear map.
fn atten2_equivar(
    g: &mut Graph,
    c: &Ctx,
    nh: usize,
    aa: ValueId,
    h2: ValueId,
    head_map: &Layer,
) -> R {
    let nnei = c.rf.nnei;
    let h = g.reshape(
        h2,
        vec![Dim::NLOC, Dim::ONE, Dim::fixed(nnei), Dim::fixed(3)],
    )?;
    let h = g.broadcast(
        h,
        vec![Dim::NLOC, Dim::fixed(nh), Dim::fixed(nnei), Dim::fixed(3)],
    )?;
    let r = g.matmul(aa, h)?; // [nloc, nh, nnei, 3]
    let r = g.transpose(r, vec![0, 2, 3, 1])?; // [nloc, nnei, 3, nh]
    let r = layer(g, r, head_map)?; // [nloc, nnei, 3, 1]
    g.reshape(r, vec![Dim::NLOC, Dim::fixed(nnei), Dim::fixed(3)])
}

/// `LocalAtten`: each centre attends to its neighbours' `g1`.
fn local_atten(g: &mut Graph, c: &Ctx, la: &LocalAtten, g1: ValueId, gg1: ValueId) -> R {
    let (nd, nh, nnei, ni) = (la.hidden, la.heads, c.rf.nnei, c.rf.g1_dim);
    let q = layer(g, g1, &la.mapq)?; // [nloc, nd * nh]
    let q = g.reshape(q, vec![Dim::NLOC, Dim::fixed(nd), Dim::fixed(nh)])?;
    let q = g.transpose(q, vec![0, 2, 1])?; // [nloc, nh, nd]
    let q = g.reshape(q, vec![Dim::NLOC, Dim::fixed(nh), Dim::ONE, Dim::fixed(nd)])?;
    let kv = layer(g, gg1, &la.mapkv)?; // [nloc, nnei, (nd + ni) * nh]
    let kv = g.reshape(
        kv,
        vec![
            Dim::NLOC,
            Dim::fixed(nnei),
            Dim::fixed(nd + ni),
            Dim::fixed(nh),
        ],
    )?;
    let kv = g.transpose(kv, vec![0, 3, 1, 2])?; // [nloc, nh, nnei, nd + ni]
    let k = g.slice_n(kv, 3, 0, nd)?;
    let v = g.slice_n(kv, 3, nd, nd + ni)?;
    let kt = g.transpose(k, vec![0, 1, 3, 2])?;
    let w = g.matmul(q, kt)?; // [nloc, nh, 1, nnei]
    let mut w = g.scale(w, 1.0 / (nd as f64).sqrt())?;
    let sw = g.reshape(c.sw, vec![Dim::NLOC, Dim::ONE, Dim::ONE, Dim::fixed(nnei)])?;
    let m = g.reshape(
        c.mask,
        vec![Dim::NLOC, Dim::ONE, Dim::ONE, Dim::fixed(nnei)],
    )?;
    if la.smooth {
        let s = g.add_scalar(w, la.shift)?;
        let s = g.mul(s, sw)?;
        w = g.add_scalar(s, -la.shift)?;
    } else {
        let lo = g.scalar_like(MASKED_LOGIT, w);
        w = g.select(m, w, lo)?;
    }
    let w = softmax_last(g, w, c.fuse)?;
    let zero = g.scalar_like(0.0, w);
    let mut w = g.select(m, w, zero)?;
    if la.smooth {
        w = g.mul(w, sw)?;
    }
    let r = g.matmul(w, v)?; // [nloc, nh, 1, ni]
    let r = g.reshape(r, vec![Dim::NLOC, Dim::fixed(nh * ni)])?;
    layer(g, r, &la.head_map)
}
