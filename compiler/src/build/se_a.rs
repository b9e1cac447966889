//! `se_e2_a` (`deepmd/dpmodel/descriptor/se_e2_a.py`):
//! `G_ij = Emb(s_ij)`, `gr_i = (1/nnei) sum_j G_ij^T R_ij`, `D_i = gr_i gr_i[:axis]^T`.

use super::compress::{embedding, table_eval};
use super::env_mat::{apply_keep, env_rr, pair_keep};
use super::nn::net;
use super::Inputs;
use crate::graph::{Cmp, DType, Dim, Graph, GraphError, ValueId};
use crate::model::SeA;

pub fn build(g: &mut Graph, inp: &Inputs, d: &SeA, nlist: ValueId) -> Result<ValueId, GraphError> {
    let ntypes = d.sel.len();
    let nnei: usize = d.sel.iter().sum();
    let env_rr = match inp.env {
        Some(e) => e,
        None => env_rr(g, inp, nlist, &d.env, &d.stats, false, d.dtype)?,
    };
    let keep = pair_keep(g, inp, nlist, &d.exclude_types, ntypes)?;
    let rr = apply_keep(g, env_rr, keep)?;
    let mut gr: Option<ValueId> = None;
    let mut start = 0;
    for (tt, &s) in d.sel.iter().enumerate() {
        if s == 0 {
            continue;
        }
        let tr = g.slice_n(rr, 1, start, start + s)?; // [nloc, s, 4]
        let ss = g.slice_n(tr, 2, 0, 1)?; // [nloc, s, 1]
        let mut add = |g: &mut Graph, c: ValueId| -> Result<(), GraphError> {
            gr = Some(match gr {
                None => c,
                Some(acc) => g.add(acc, c)?,
            });
            Ok(())
        };
        if d.type_one_side {
            if let Some(n) = d.embeddings.get(&[tt]) {
                let c = contract(g, inp, d, start..start + s, ss, tr, n, None)?;
                add(g, c)?;
            }
        } else {
            for ti in 0..ntypes {
                let Some(n) = d.embeddings.get(&[ti, tt]) else {
                    continue;
                };
                let c = contract(g, inp, d, start..start + s, ss, tr, n, Some(ti))?;
                add(g, c)?;
            }
        }
        start += s;
    }
    let gr = gr.ok_or_else(|| GraphError("se_e2_a: no embedding network applies".into()))?;
    let gr = g.scale(gr, 1.0 / nnei as f64)?; // [nloc, ng, 4]
    let ng = g.shape(gr)[1].factor;
    let gr1 = g.slice_n(gr, 1, 0, d.axis_neuron)?; // [nloc, axis, 4]
    let gr1t = g.transpose(gr1, vec![0, 2, 1])?;
    let dm = g.matmul(gr, gr1t)?; // [nloc, ng, axis]
    g.reshape(dm, vec![Dim::NLOC, Dim::fixed(ng * d.axis_neuron)])
}

/// `sum_j Emb(s_j)^T R_j`: `[nloc, ng, 4]`, for every centre or only those of type
/// `centre` (zero elsewhere); one fused op where the kernels can run the net.
#[allow(clippy::too_many_arguments)]
fn contract(
    g: &mut Graph,
    inp: &Inputs,
    d: &SeA,
    slots: std::ops::Range<usize>,
    ss: ValueId,
    tr: ValueId,
    n: &crate::model::Net,
    centre: Option<usize>,
) -> Result<ValueId, GraphError> {
    // With type_one_side the net serves every centre type.
    let (mlp, table) = embedding(inp.compress.as_ref(), n, g.dtype(tr), |p| {
        p.radial_range(&d.env, &d.stats, slots, centre)
    })?;
    if let (true, Some(mlp)) = (inp.fuse, mlp) {
        return g.embed_contract(tr, mlp, table, centre.map(|t| (t as i32, inp.atype_loc)));
    }
    let gg = match &table {
        Some(t) => table_eval(g, ss, t, n)?,
        None => net(g, ss, n)?,
    }; // [nloc, s, ng]
    let ggt = g.transpose(gg, vec![0, 2, 1])?;
    let c = g.matmul(ggt, tr)?;
    match centre {
        Some(t) => centre_type_only(g, inp, c, t, g.dtype(tr)),
        None => Ok(c),
    }
}

/// Keep `x [nloc, ...]` only for centres of type `t` (zero elsewhere).
pub fn centre_type_only(
    g: &mut Graph,
    inp: &Inputs,
    x: ValueId,
    t: usize,
    dtype: DType,
) -> Result<ValueId, GraphError> {
    let tv = g.scalar(t as f64, DType::I32);
    let is_t = g.cmp(Cmp::Eq, inp.atype_loc, tv)?;
    let mut shape = vec![Dim::NLOC];
    shape.extend(std::iter::repeat_n(Dim::ONE, g.ty(x).rank() - 1));
    let is_t = g.reshape(is_t, shape)?;
    let zero = g.scalar(0.0, dtype);
    g.select(is_t, x, zero)
}
