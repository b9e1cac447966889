//! `se_e2_r` (`deepmd/dpmodel/descriptor/se_r.py`): `D_i = (1/5) (1/nnei) sum_j Emb(s_ij)`.

use super::env_mat::{apply_keep, env_mat, pair_keep};
use super::nn::net;
use super::Inputs;
use crate::graph::{Graph, GraphError, ValueId};
use crate::model::SeR;

pub fn build(g: &mut Graph, inp: &Inputs, d: &SeR, nlist: ValueId) -> Result<ValueId, GraphError> {
    let ntypes = d.sel.len();
    let nnei: usize = d.sel.iter().sum();
    let env = env_mat(g, inp, nlist, &d.env, &d.stats, true, d.dtype)?;
    let keep = pair_keep(g, inp, nlist, &d.exclude_types, ntypes)?;
    let rr = apply_keep(g, env.rr, keep)?; // [nloc, nnei, 1]
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
        let gg = net(g, tr, n)?; // [nloc, s, ng]
        let sum = g.sum(gg, &[1], false)?; // [nloc, ng]
        acc = Some(match acc {
            None => sum,
            Some(a) => g.add(a, sum)?,
        });
    }
    let acc = acc.ok_or_else(|| GraphError("se_e2_r: no embedding network applies".into()))?;
    g.scale(acc, 0.2 / nnei as f64)
}
