//! `se_atten` / DPA-1 and `se_atten_v2` (`deepmd/dpmodel/descriptor/dpa1.py`, with the
//! PyTorch backend's numerics where they differ: normalisation floors, see the spec notes).
//!
//! Per centre i and neighbour slot j (all types in one distance-sorted list):
//! type-aware embedding G_ij, then gated self-attention over j, then
//! `gr_i = (1/nnei) sum_j G_ij^T R_ij` and `D_i = gr_i gr_i[:axis]^T` (+ centre type embedding).

use std::sync::Arc;

use super::env_mat::{apply_keep, env_mat, pair_keep};
use super::nn::{cast_tensor, fusable_layers, layer, layer_norm, net, net_on_parts};
use super::Inputs;
use crate::graph::{Attention, DType, Dim, Graph, GraphError, Op, Tensor, ValueId};
use crate::model::{AttentionLayer, Dpa1, TebdInput, TypeEmbedding};

type R = Result<ValueId, GraphError>;

/// The softmax logit of masked keys: finite, so no NaN appears even in all-masked rows.
pub(super) const MASKED_LOGIT: f64 = -1e30;
/// DeePMD-kit's `attnw_shift`.
const ATTN_SHIFT: f64 = 20.0;

pub fn build(g: &mut Graph, inp: &Inputs, d: &Dpa1, nlist: ValueId) -> R {
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
    let ntp = g.shape(table)[0].factor;
    let nt = g.shape(table)[1];

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
            let strip = d
                .embedding_strip
                .as_ref()
                .expect("validated: strip mode has embeddings_strip");
            let nei_type = g.gather(inp.atype, nl0)?; // [nloc, nnei]
            let gt = if d.type_one_side {
                let tt = net(g, table, strip)?; // [ntp, ng]
                g.gather(tt, nei_type)?
            } else {
                // Row c*ntp + n of the pair table is [T[n], T[c]].
                let pair = type_pairs(g, table, true)?;
                let tt = net(g, pair, strip)?; // [ntp*ntp, ng]
                let ci = g.reshape(inp.atype_loc, vec![Dim::NLOC, Dim::ONE])?;
                let ntp_c = g.scalar(ntp as f64, DType::I32);
                let ci = g.mul(ci, ntp_c)?;
                let idx = g.add(ci, nei_type)?;
                g.gather(tt, idx)?
            };
            let gt = if d.smooth_type_embedding {
                let sw3 = g.reshape(sw, vec![Dim::NLOC, nnei, Dim::ONE])?;
                g.mul(gt, sw3)?
            } else {
                gt
            };
            let gs = net(g, ss, &d.embedding)?;
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
