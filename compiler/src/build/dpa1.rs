//! `se_atten` / DPA-1 and `se_atten_v2` (`deepmd/dpmodel/descriptor/dpa1.py`, with the
//! PyTorch backend's numerics where they differ: normalisation floors, see the spec notes).
//!
//! Per centre i and neighbour slot j (all types in one distance-sorted list):
//! type-aware embedding G_ij, then gated self-attention over j, then
//! `gr_i = (1/nnei) sum_j G_ij^T R_ij` and `D_i = gr_i gr_i[:axis]^T` (+ centre type embedding).

use std::sync::Arc;

use super::compress::{factor_contract, table_eval, Plan};
use super::env_mat::{apply_keep, env_mat, pair_keep};
use super::nn::{cast_tensor, fusable, fusable_layers, layer, layer_norm, net, net_on_parts};
use super::Inputs;
use crate::graph::table::{Scalar, Table};
use crate::graph::{
    Attention, Cmp, DType, Dim, Graph, GraphError, Mlp, MlpLayer, Op, Residual, Tensor, ValueId,
};
use crate::model::{AttentionLayer, Dpa1, TebdInput, TypeEmbedding};

type R = Result<ValueId, GraphError>;

/// The softmax logit of masked keys: finite, so no NaN appears even in all-masked rows.
pub(super) const MASKED_LOGIT: f64 = -1e30;
/// DeePMD-kit's `attnw_shift`.
const ATTN_SHIFT: f64 = 20.0;

pub fn build(g: &mut Graph, inp: &Inputs, d: &Dpa1, nlist: ValueId) -> R {
    if inp.compress.is_some() {
        compressible(d)?;
    }
    let dt = d.dtype;
    let nnei = Dim::fixed(d.nnei);
    let env = env_mat(g, inp, nlist, &d.env, &d.stats, false, dt)?;
    let keep = pair_keep(g, inp, nlist, &d.exclude_types, d.ntypes)?;
    let nmask = match keep {
        Some(k) => g.and(env.mask, k)?,
        None => env.mask,
    };
    let nmask_f = g.cast(nmask, dt)?;
    let sw = g.mul(env.sw, nmask_f)?; // [nloc, nnei]

    // Padded slots read the type of the system's atom 0, as DeePMD-kit does.
    let pad = pad_atom(g, inp)?;
    let nl0 = g.select(nmask, nlist, pad)?;
    let rr = apply_keep(g, env.rr, keep)?; // [nloc, nnei, 4]
    let ss = g.slice_n(rr, 2, 0, 1)?;

    let table = type_table(g, &d.type_embedding, dt)?; // [ntp, nt]
    let nt = g.shape(table)[1];

    // A strip block without attention never needs `G` itself. Tabulated, one fused op
    // takes the type factor per row. With the network where the fused kernel runs it, the
    // contraction splits by neighbour type; the split's channels outnumber a small
    // network's outputs (neuron [4, 8], 3 types: 15% slower), so it runs where they do not
    // ([8, 16, 32] and sel 120: 1.8x faster; [25, 50, 100]: 2.6x).
    let strip = matches!(d.tebd_input, TebdInput::Strip) && d.attention.is_empty();
    if strip && inp.fuse && inp.compress.is_some() {
        let nei_type = g.gather(inp.atype, nl0)?; // [nloc, nnei]
        let gr = strip_contract_tabulated(g, inp, d, (rr, sw, nei_type), table)?;
        return descriptor_of(g, inp, d, gr, table);
    }
    let split = strip
        && inp.fuse
        && inp.compress.is_none()
        && d.ntypes <= MAX_SPLIT_TYPES
        && split_channels(d) <= d.embedding.n_out().unwrap_or(0);
    if let Some(mlp) = fusable(&d.embedding, dt).filter(|_| split) {
        let nei_type = g.gather(inp.atype, nl0)?; // [nloc, nnei]
        let gr = strip_contract_split(g, inp, d, (rr, sw, nei_type), table, mlp)?;
        return descriptor_of(g, inp, d, gr, table);
    }

    if inp.compress.is_none() && inp.fuse && d.attention.is_empty() {
        if let Some(nets) = concat_split_nets(d) {
            let nei_type = g.gather(inp.atype, nl0)?; // [nloc, nnei]
            let gr = concat_contract_split(g, inp, d, rr, nei_type, nets)?;
            return descriptor_of(g, inp, d, gr, table);
        }
    }

    let gmat = match d.tebd_input {
        TebdInput::Concat => {
            let temb_ext = g.gather(table, inp.atype)?; // [nall, nt]
            let nei_t = g.gather(temb_ext, nl0)?; // [nloc, nnei, nt]

            // The network on [s, T_j(, T_i)], its first layer split by input block.
            if d.type_one_side {
                net_on_parts(g, &[ss, nei_t], &d.embedding, inp.fuse)?
            } else {
                let cen = g.gather(table, inp.atype_loc)?;
                let cen = g.reshape(cen, vec![Dim::NLOC, Dim::ONE, nt])?;
                net_on_parts(g, &[ss, nei_t, cen], &d.embedding, inp.fuse)?
            }
        }
        TebdInput::Strip => {
            let nei_type = g.gather(inp.atype, nl0)?; // [nloc, nnei]
            let gt = strip_values(g, inp, d, table, nei_type)?; // [nloc, nnei, ng]
            let gt = if d.smooth_type_embedding {
                let sw3 = g.reshape(sw, vec![Dim::NLOC, nnei, Dim::ONE])?;
                g.mul(gt, sw3)?
            } else {
                gt
            };
            // With `--compress` (elementary ops: the fused form is above), the table.
            let gs = match inp.compress.as_ref() {
                Some(p) => table_eval(g, ss, &strip_table(p, d)?.1, &d.embedding)?,
                None => net(g, ss, &d.embedding)?,
            };
            let prod = g.mul(gs, gt)?;
            g.add(prod, gs)?
        }
    };

    let mut x = gmat; // [nloc, nnei, ng]
    if !d.attention.is_empty() {
        let r3 = g.slice_n(rr, 2, 1, 4)?;
        let input_r = l2_normalize(g, r3, d.norm_floor_sq)?;
        for a in &d.attention {
            let fused = fused_attention(a, g.dtype(x), d.norm_floor_sq).filter(|_| inp.fuse);
            x = match fused {
                Some(at) => g.push(Op::Attention(at), &[x, sw, nmask, input_r])?,
                None => {
                    let att =
                        gated_attention(g, a, x, sw, nmask, input_r, d.norm_floor_sq, inp.fuse)?;
                    let y = g.add(x, att)?;
                    layer_norm(g, y, &a.norm)?
                }
            };
        }
    }

    let xt = g.transpose(x, vec![0, 2, 1])?; // [nloc, ng, nnei]
    let gr = g.matmul(xt, rr)?; // [nloc, ng, 4]
    descriptor_of(g, inp, d, gr, table)
}

/// The descriptor rows from `gr = sum_j G_j^T R_j` `[nloc, ng, 4]`: `D = gr gr[:axis]^T /
/// nnei^2` (+ the centre's type embedding).
fn descriptor_of(g: &mut Graph, inp: &Inputs, d: &Dpa1, gr: ValueId, table: ValueId) -> R {
    let gr = g.scale(gr, 1.0 / d.nnei as f64)?;
    let ng = g.shape(gr)[1].factor;
    let gr1 = g.slice_n(gr, 1, 0, d.axis_neuron)?;
    let gr1t = g.transpose(gr1, vec![0, 2, 1])?;
    let dm = g.matmul(gr, gr1t)?;
    let dm = g.reshape(dm, vec![Dim::NLOC, Dim::fixed(ng * d.axis_neuron)])?;
    if d.concat_output_tebd {
        let cen = g.gather(table, inp.atype_loc)?;
        g.concat(&[dm, cen], 1)
    } else {
        Ok(dm)
    }
}

/// Whether `dpc compile --compress` can tabulate `d`, as DeePMD-kit's `dp compress` decides:
/// only the strip mode without attention layers has a geometric network to tabulate.
fn compressible(d: &Dpa1) -> Result<(), GraphError> {
    let why = match (d.tebd_input, d.attention.is_empty()) {
        (TebdInput::Concat, _) => {
            "its type embedding enters the network by concatenation (tebd_input_mode \
             concat), which DeePMD-kit cannot compress either"
        }
        (_, false) => {
            "with attention layers DeePMD-kit compresses only the strip type embedding, \
             which dpc already evaluates once per type pair, so the uncompressed model runs \
             the same computation"
        }
        (TebdInput::Strip, true) => return Ok(()),
    };
    Err(GraphError(format!(
        "compression of this se_atten/DPA-1 block (DPA-2's repinit is one): {why}; run the \
         model without --compress"
    )))
}

/// The most types an uncompressed strip block splits its contraction by (see
/// `strip_contract_split`): its channels grow as `4 (1 + ntypes)`.
const MAX_SPLIT_TYPES: usize = 8;

/// The channels of `strip_contract_split`'s contraction: `R`, and `R` masked to each
/// neighbour type but the last (all of them when weighted by the switch).
fn split_channels(d: &Dpa1) -> usize {
    let typed = if d.smooth_type_embedding {
        d.ntypes
    } else {
        d.ntypes.saturating_sub(1)
    };
    4 * (1 + typed)
}

/// The strip network's values `U[c_i, t]` for the types `types` (`i32`): `[..types.., ng]`
/// with `type_one_side` (no centre), else `[nloc, ..types.., ng]` for `types` `[nloc or 1,
/// ...]`.
fn strip_values(g: &mut Graph, inp: &Inputs, d: &Dpa1, table: ValueId, types: ValueId) -> R {
    let (tt, idx) = strip_rows(g, inp, d, table, types)?;
    g.gather(tt, idx)
}

/// The strip network on every type (pair) `[ntp, ng]` (`[ntp * ntp, ng]` without
/// `type_one_side`: row `c * ntp + n` is centre type `c`, neighbour type `n`), and the row
/// each of `types` takes (`[..types..]`, or `[nloc, ..types..]` for `types` `[nloc or 1,
/// ...]`).
fn strip_rows(
    g: &mut Graph,
    inp: &Inputs,
    d: &Dpa1,
    table: ValueId,
    types: ValueId,
) -> Result<(ValueId, ValueId), GraphError> {
    let strip = d
        .embedding_strip
        .as_ref()
        .expect("validated: strip mode has embeddings_strip");
    if d.type_one_side {
        return Ok((net(g, table, strip)?, types));
    }
    let ntp = g.shape(table)[0].factor;
    let pair = type_pairs(g, table, true)?;
    let tt = net(g, pair, strip)?;
    let ci = g.reshape(inp.atype_loc, vec![Dim::NLOC, Dim::ONE])?;
    let ntp_c = g.scalar(ntp as f64, DType::I32);
    let ci = g.mul(ci, ntp_c)?;
    Ok((tt, g.add(ci, types)?))
}

/// `sum_j G_j^T R_j` `[nloc, ng, 4]` of a strip-mode block without attention, its
/// geometric network `gs` tabulated (`--compress`, DeePMD-kit's `tabulate_fusion_se_atten`):
/// `G_j = gs(s_j) (1 + w_j U[c_i, t_j])` (see `strip_contract_split`) in one fused op whose
/// per-row factor is the strip network's row `U[c_i, t_j]` (`Embed::factor`): over `[R, w
/// R]`, the factor on the second half; without the switch, over `R` with the factor `1 +
/// U`. Any number of types.
fn strip_contract_tabulated(
    g: &mut Graph,
    inp: &Inputs,
    d: &Dpa1,
    (rr, sw, nei_type): (ValueId, ValueId, ValueId),
    table: ValueId,
) -> R {
    let plan = inp.compress.as_ref().expect("called with --compress");
    let mt = strip_table(plan, d)?;
    let (u, idx) = strip_rows(g, inp, d, table, nei_type)?; // idx [nloc, nnei]
    let w = if d.smooth_type_embedding {
        Some(g.reshape(sw, vec![Dim::NLOC, Dim::fixed(d.nnei), Dim::ONE])?)
    } else {
        None
    };
    factor_contract(g, rr, w, mt, (idx, u))
}

/// The strip block's geometric network and its table over the radial column's range
/// (`--compress`).
fn strip_table(p: &Plan, d: &Dpa1) -> Result<(Arc<Mlp>, Arc<Table>), GraphError> {
    Ok(p.tabulate(&d.embedding, d.dtype, |p| {
        p.radial_range(&d.env, &d.stats, 0..d.nnei, None)
    })?)
}

/// `[nloc, nnei, 1]`: 1 where the neighbour is of type `t`, else 0.
fn type_mask(g: &mut Graph, d: &Dpa1, nei_type: ValueId, t: usize) -> R {
    let shape = vec![Dim::NLOC, Dim::fixed(d.nnei), Dim::ONE];
    is_type(g, nei_type, t, d.dtype, shape)
}

/// `types == t` (`types` `i32`) as 1 or 0 in `dt`, reshaped to `shape`.
pub(super) fn is_type(g: &mut Graph, types: ValueId, t: usize, dt: DType, shape: Vec<Dim>) -> R {
    let tv = g.scalar(t as f64, DType::I32);
    let is_t = g.cmp(Cmp::Eq, types, tv)?;
    let is_t = g.cast(is_t, dt)?;
    g.reshape(is_t, shape)
}

/// `sum_j G_j^T R_j` `[nloc, ng, 4]` of a strip-mode block without attention, with the
/// geometric network `gs` (`mlp`) in one fused op:
/// `G_j = gs(s_j) (1 + w_j U[c_i, t_j])`, `U` the strip network on the type embedding
/// (of the neighbour's type `t_j`, and with `type_one_side` false the centre's `c_i`), `w_j`
/// the switch with `smooth_type_embedding`, else 1. Since `U` takes one value per type, the
/// sum splits as `sum_j gs_j R_j^T + sum_t U[c_i, t] * sum_(j of type t) gs_j (w_j R_j)^T`:
/// one fused contraction (of the network, or its table) over `R` and its per-type masked
/// copies, then a weighted sum over types.
fn strip_contract_split(
    g: &mut Graph,
    inp: &Inputs,
    d: &Dpa1,
    (rr, sw, nei_type): (ValueId, ValueId, ValueId),
    table: ValueId,
    mlp: Arc<Mlp>,
) -> R {
    let dt = d.dtype;
    let nt = d.ntypes;
    let nnei = Dim::fixed(d.nnei);
    let r3 = vec![Dim::NLOC, nnei, Dim::ONE];
    let w = if d.smooth_type_embedding {
        Some(g.reshape(sw, r3.clone())?)
    } else {
        None
    };
    // R, then for each type t, R masked to the neighbours of type t (and weighted by w).
    // Unweighted, the last type's part is R less the others', so it is left out.
    let typed = split_channels(d) / 4 - 1;
    let mut parts = vec![rr];
    for t in 0..typed {
        let mut f = type_mask(g, d, nei_type, t)?;
        if let Some(w) = w {
            f = g.mul(f, w)?;
        }
        parts.push(g.mul(rr, f)?);
    }
    let split = g.concat(&parts, 2)?; // [nloc, nnei, 4 (1 + typed)]
    let sums = g.embed_contract(split, mlp, None, None)?; // [nloc, ng, 4 (1 + typed)]
    let ng = g.shape(sums)[1];
    let sums = g.reshape(
        sums,
        vec![Dim::NLOC, ng, Dim::fixed(1 + typed), Dim::fixed(4)],
    )?;
    let base = g.slice_n(sums, 2, 0, 1)?; // [nloc, ng, 1, 4]
    let by_type = g.slice_n(sums, 2, 1, 1 + typed)?; // [nloc, ng, typed, 4]

    // U of every type, `[1 or nloc, nt, ng]` (one row with `type_one_side`), as
    // `[.., ng, nt, 1]`.
    let types = g.constant(Tensor::i32(vec![1, nt], (0..nt as i32).collect()));
    let u = strip_values(g, inp, d, table, types)?;
    let lead = g.shape(u)[0];
    let u = g.transpose(u, vec![0, 2, 1])?;
    let u = g.reshape(u, vec![lead, ng, Dim::fixed(nt), Dim::ONE])?;
    // `base + sum_t U_t P_t`; unweighted, `(1 + U_last) base + sum_(t < last) (U_t -
    // U_last) P_t`, the same sum with `P_last = base - sum_(t < last) P_t`.
    let (base, u) = if typed == nt {
        (base, u)
    } else {
        let last = g.slice_n(u, 2, nt - 1, nt)?;
        let one = g.scalar(1.0, dt);
        let scale = g.add(last, one)?;
        let base = g.mul(base, scale)?;
        let rest = g.slice_n(u, 2, 0, nt - 1)?;
        (base, g.sub(rest, last)?)
    };
    let base = g.reshape(base, vec![Dim::NLOC, ng, Dim::fixed(4)])?;
    if typed == 0 {
        return Ok(base);
    }
    let weighted = g.mul(by_type, u)?;
    let weighted = g.sum(weighted, &[2], false)?; // [nloc, ng, 4]
    g.add(base, weighted)
}

/// One network of `concat_split_nets`: for centres of one type (all with `type_one_side`),
/// on neighbours of one type.
type SplitNet = (Option<usize>, usize, Arc<Mlp>);

/// A concat-mode block's network as one network of `s` per neighbour type `t` (and with
/// `type_one_side` false, per centre type `c`), as `(c, t, net)`: the input is `[s, T[t]
/// (, T[c])]`, so the type columns of the first layer add a constant per type to its bias.
/// `None` where the split does not apply or would not pay: attention layers, a first layer
/// with a residual, a network the fused kernel does not run, a type embedding that is not
/// tanh/linear, or more split channels (4 per network) than the network has outputs.
fn concat_split_nets(d: &Dpa1) -> Option<Vec<SplitNet>> {
    if !matches!(d.tebd_input, TebdInput::Concat) || !d.attention.is_empty() {
        return None;
    }
    let dt = d.dtype;
    let nt = d.ntypes;
    let mlp = fusable(&d.embedding, dt)?;
    let centres = if d.type_one_side { 1 } else { nt };
    if 4 * centres * nt > mlp.n_out() {
        return None;
    }
    let first = &mlp.layers[0];
    let tebd = type_values(&d.type_embedding)?;
    let dim = tebd.first()?.len();
    let sides = if d.type_one_side { 1 } else { 2 };
    if first.residual != Residual::None || first.n_in() != 1 + sides * dim || tebd.len() < nt {
        return None;
    }
    let n1 = first.n_out();
    let w = first.w.to_f64_vec();
    let b = first.b.as_ref().map_or(vec![0.0; n1], |b| b.to_f64_vec());
    // Input row `1 + k` (`k < dim`) takes T[t][k], row `1 + dim + k` takes T[c][k].
    let add_rows = |bias: &mut [f64], from: usize, v: &[f64]| {
        for (k, &tv) in v.iter().enumerate() {
            let row = &w[(from + k) * n1..(from + k + 1) * n1];
            for (o, &wv) in bias.iter_mut().zip(row) {
                *o += tv * wv;
            }
        }
    };
    let mut out = Vec::new();
    for c in 0..centres {
        for t in 0..nt {
            let mut bias = b.clone();
            add_rows(&mut bias, 1, &tebd[t]);
            if !d.type_one_side {
                add_rows(&mut bias, 1 + dim, &tebd[c]);
            }
            let mut layers = mlp.layers.clone();
            layers[0] = MlpLayer {
                w: Arc::new(cast_tensor(&Tensor::f64(vec![1, n1], w[..n1].to_vec()), dt)),
                b: Some(Arc::new(cast_tensor(&Tensor::f64(vec![n1], bias), dt))),
                ..first.clone()
            };
            let net = Mlp { dtype: dt, layers };
            net.check().ok()?;
            out.push(((!d.type_one_side).then_some(c), t, Arc::new(net)));
        }
    }
    Some(out)
}

/// The type embedding's rows `T[t]` for the real types, evaluated once here in float64 (the
/// graph's `type_table` computes the same network); `None` for a network the fused kernels
/// would not run (other activations).
fn type_values(te: &TypeEmbedding) -> Option<Vec<Vec<f64>>> {
    let n = te.ntypes;
    let eye = |i: usize| {
        (0..n)
            .map(|j| if i == j { 1.0 } else { 0.0 })
            .collect::<Vec<f64>>()
    };
    if te.net.layers.is_empty() {
        return Some((0..n).map(eye).collect());
    }
    let netdt = te.net.layers[0].dtype;
    let net = Scalar::new(&*fusable_layers(&te.net.layers, netdt)?);
    Some((0..n).map(|i| net.values(eye(i))).collect())
}

/// `sum_j G_j^T R_j` `[nloc, ng, 4]` of a concat-mode block without attention from
/// `concat_split_nets`: one fused `EmbedContract` per network on `R` masked to the
/// neighbours of its type (a masked row's input is 0, one network evaluation for all of
/// them, and its `R` is 0), over the centres of its type.
fn concat_contract_split(
    g: &mut Graph,
    inp: &Inputs,
    d: &Dpa1,
    rr: ValueId,
    nei_type: ValueId,
    nets: Vec<SplitNet>,
) -> R {
    let mut masked: Vec<Option<ValueId>> = vec![None; d.ntypes];
    let mut gr: Option<ValueId> = None;
    for (c, t, net) in nets {
        let rr_t = match masked[t] {
            Some(v) => v,
            None => {
                let is_t = type_mask(g, d, nei_type, t)?;
                let v = g.mul(rr, is_t)?;
                masked[t] = Some(v);
                v
            }
        };
        let part = g.embed_contract(rr_t, net, None, c.map(|c| (c as i32, inp.atype_loc)))?;
        gr = Some(match gr {
            None => part,
            Some(acc) => g.add(acc, part)?,
        });
    }
    gr.ok_or_else(|| GraphError("se_atten: no embedding network applies".into()))
}

/// The layer as one fused op (residual and layer norm included), if its projections are
/// plain linear layers computing in `dt`.
fn fused_attention(a: &AttentionLayer, dt: DType, floor_sq: f64) -> Option<Arc<Attention>> {
    let proj = |l: &crate::model::Layer| fusable_layers(std::slice::from_ref(l), dt);
    let at = Attention {
        in_proj: proj(&a.in_proj)?,
        out_proj: proj(&a.out_proj)?,
        hidden: a.hidden_dim,
        scaling: a.scaling,
        normalize: a.normalize,
        floor_sq,
        dotr: a.dotr,
        smooth: a.smooth,
        shift: ATTN_SHIFT,
        masked_logit: MASKED_LOGIT,
        norm_w: Arc::new(cast_tensor(&a.norm.w, dt)),
        norm_b: Arc::new(cast_tensor(&a.norm.b, dt)),
        eps: a.norm.eps,
    };
    at.check().ok()?;
    Some(Arc::new(at))
}

/// The type-embedding table: the net applied to one-hot rows, plus a zero padding row.
pub(super) fn type_table(g: &mut Graph, te: &TypeEmbedding, dt: DType) -> R {
    let n = te.ntypes;
    let mut eye = vec![0.0; n * n];
    for i in 0..n {
        eye[i * n + i] = 1.0;
    }
    let netdt = te.net.layers.first().map_or(dt, |l| l.dtype);
    let eye = g.constant(cast_tensor(&Tensor::f64(vec![n, n], eye), netdt));
    let e = net(g, eye, &te.net)?;
    let e = g.cast(e, dt)?;
    if te.padding {
        g.pad(e, 0, Dim::fixed(0), Dim::fixed(n + 1))
    } else {
        Ok(e)
    }
}

/// Every ordered pair of rows of the type-embedding table `[ntp, nt]`, as `[ntp * ntp,
/// 2 nt]`: row `a * ntp + b` is `[T[a], T[b]]`, or `[T[b], T[a]]` when `swapped`.
pub(super) fn type_pairs(g: &mut Graph, table: ValueId, swapped: bool) -> R {
    let ntp = g.shape(table)[0];
    let nt = g.shape(table)[1];
    let sq = vec![ntp, ntp, nt];
    let ta = g.reshape(table, vec![ntp, Dim::ONE, nt])?;
    let ta = g.broadcast(ta, sq.clone())?; // [a, b] -> T[a]
    let tb = g.reshape(table, vec![Dim::ONE, ntp, nt])?;
    let tb = g.broadcast(tb, sq)?; // [a, b] -> T[b]
    let parts = if swapped { [tb, ta] } else { [ta, tb] };
    let pair = g.concat(&parts, 2)?;
    g.reshape(
        pair,
        vec![
            Dim::fixed(ntp.factor * ntp.factor),
            Dim::fixed(2 * nt.factor),
        ],
    )
}

/// `x / sqrt(max(|x|^2, floor_sq))` over the last axis: PyTorch's `x / max(|x|, 1e-12)`
/// with `floor_sq = 1e-24`, TensorFlow's `l2_normalize` with 1e-12. The floor keeps the
/// derivative at a zero vector finite.
fn l2_normalize(g: &mut Graph, x: ValueId, floor_sq: f64) -> R {
    let last = g.ty(x).rank() - 1;
    let sq = g.mul(x, x)?;
    let n2 = g.sum(sq, &[last], true)?;
    let floor = g.scalar_like(floor_sq, x);
    let n2 = g.maximum(n2, floor)?;
    let n = g.sqrt(n2)?;
    g.div(x, n)
}

/// The extended atom DeePMD-kit reads for padded neighbour slots (`io::PAD_ATOM`), shaped to
/// broadcast against `[nloc, nnei]`.
pub(super) fn pad_atom(g: &mut Graph, inp: &Inputs) -> R {
    if inp.flat_frames {
        let p = g.shared_input(
            super::io::PAD_ATOM,
            crate::graph::TensorType::new(DType::I32, vec![Dim::NLOC]),
        );
        g.reshape(p, vec![Dim::NLOC, Dim::ONE])
    } else {
        Ok(g.shared_input(
            super::io::PAD_ATOM,
            crate::graph::TensorType::new(DType::I32, vec![]),
        ))
    }
}

pub(super) fn softmax_last(g: &mut Graph, a: ValueId, fuse: bool) -> R {
    if fuse {
        return g.softmax(a);
    }
    let last = g.ty(a).rank() - 1;
    let m = g.reduce_max(a, &[last], true)?;
    let m = g.stop_gradient(m)?;
    let s = g.sub(a, m)?;
    let e = g.exp(s)?;
    let z = g.sum(e, &[last], true)?;
    g.div(e, z)
}

#[allow(clippy::too_many_arguments)]
fn gated_attention(
    g: &mut Graph,
    a: &AttentionLayer,
    x: ValueId,
    sw: ValueId,
    nmask: ValueId,
    input_r: ValueId,
    floor_sq: f64,
    fuse: bool,
) -> R {
    let hd = a.hidden_dim;
    let nnei = g.shape(x)[1];
    let qkv = layer(g, x, &a.in_proj)?; // [nloc, nnei, 3hd]
    let mut q = g.slice_n(qkv, 2, 0, hd)?;
    let mut k = g.slice_n(qkv, 2, hd, 2 * hd)?;
    let mut v = g.slice_n(qkv, 2, 2 * hd, 3 * hd)?;
    if a.normalize {
        q = l2_normalize(g, q, floor_sq)?;
        k = l2_normalize(g, k, floor_sq)?;
        v = l2_normalize(g, v, floor_sq)?;
    }
    let q = g.scale(q, a.scaling)?;
    let kt = g.transpose(k, vec![0, 2, 1])?;
    let mut w = g.matmul(q, kt)?; // [nloc, nnei(query), nnei(key)]
    let sw_q = g.reshape(sw, vec![Dim::NLOC, nnei, Dim::ONE])?;
    let sw_k = g.reshape(sw, vec![Dim::NLOC, Dim::ONE, nnei])?;
    let sw2 = g.mul(sw_q, sw_k)?;
    if a.smooth {
        let s = g.add_scalar(w, ATTN_SHIFT)?;
        let s = g.mul(s, sw2)?;
        w = g.add_scalar(s, -ATTN_SHIFT)?;
    } else {
        let key_ok = g.reshape(nmask, vec![Dim::NLOC, Dim::ONE, nnei])?;
        let masked = g.scalar_like(MASKED_LOGIT, w);
        w = g.select(key_ok, w, masked)?;
    }
    let mut p = softmax_last(g, w, fuse)?;
    let query_ok = g.reshape(nmask, vec![Dim::NLOC, nnei, Dim::ONE])?;
    let zero = g.scalar_like(0.0, p);
    p = g.select(query_ok, p, zero)?;
    if a.smooth {
        p = g.mul(p, sw2)?;
    }
    if a.dotr {
        let rt = g.transpose(input_r, vec![0, 2, 1])?;
        let angle = g.matmul(input_r, rt)?;
        p = g.mul(p, angle)?;
    }
    let o = g.matmul(p, v)?; // [nloc, nnei, hd]
    layer(g, o, &a.out_proj)
}
