//! `se_e2_r` (`deepmd/dpmodel/descriptor/se_r.py`): `D_i = (1/5) (1/nnei) sum_j Emb(s_ij)`.

use super::compress::{embedding, table_eval};
use super::env_mat::{apply_keep, env_rr, pair_keep};
use super::nn::net;
use super::Inputs;
use crate::graph::{Dim, Graph, GraphError, ValueId};
use crate::model::SeR;

pub fn build(g: &mut Graph, inp: &Inputs, d: &SeR, nlist: ValueId) -> Result<ValueId, GraphError> {
    let ntypes = d.sel.len();
    let nnei: usize = d.sel.iter().sum();
    let env_rr = match inp.env {
        Some(e) => e,
        None => env_rr(g, inp, nlist, &d.env, &d.stats, true, d.dtype)?,
    };
    let keep = pair_keep(g, inp, nlist, &d.exclude_types, ntypes)?;
    let rr = apply_keep(g, env_rr, keep)?; // [nloc, nnei, 1]
    let mut acc: Option<ValueId> = None;
    let mut start = 0;
    for (tt, &s) in d.sel.iter().enumerate() {
        if s == 0 {
            continue;
        }
        let tr = g.slice_n(rr, 1, start, start + s)?;
        start += s;
        let Some(n) = d.embeddings.get(&[tt]) else {
            continue;
        };
        let (mlp, table) = embedding(inp.compress.as_ref(), n, g.dtype(tr), |p| {
            p.radial_range(&d.env, &d.stats, start - s..start, None)
        })?;
        let sum = match mlp.filter(|_| inp.fuse) {
            Some(mlp) => {
                // sum_j G_j as the fused contraction of G with a channel of ones.
                let c = g.embed_sum(tr, mlp, table)?; // [nloc, ng, 1]
                let ng = g.shape(c)[1];
                g.reshape(c, vec![Dim::NLOC, ng])?
            }
            None => {
                let gg = match &table {
                    Some(t) => table_eval(g, tr, t, n)?,
                    None => net(g, tr, n)?,
                }; // [nloc, s, ng]
                g.sum(gg, &[1], false)? // [nloc, ng]
            }
        };
        acc = Some(match acc {
            None => sum,
            Some(a) => g.add(a, sum)?,
        });
    }
    let acc = acc.ok_or_else(|| GraphError("se_e2_r: no embedding network applies".into()))?;
    g.scale(acc, 0.2 / nnei as f64)
}
