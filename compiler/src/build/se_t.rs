//! `se_e3` (`deepmd/dpmodel/descriptor/se_t.py`): for neighbour-type pairs ti <= tj,
//! `theta_ab = R_a[1:] . R_b[1:]`, `D_i += sum_ab theta_ab Emb(theta_ab) / (sel_i sel_j)`.

use super::compress::{embedding, table_eval};
use super::env_mat::{apply_keep, env_rr, pair_keep};
use super::nn::net;
use super::Inputs;
use crate::graph::{Dim, Graph, GraphError, ValueId};
use crate::model::SeT;

pub fn build(g: &mut Graph, inp: &Inputs, d: &SeT, nlist: ValueId) -> Result<ValueId, GraphError> {
    let ntypes = d.sel.len();
    let env_rr = match inp.env {
        Some(e) => e,
        None => env_rr(g, inp, nlist, &d.env, &d.stats, false, d.dtype)?,
    };
    let keep = pair_keep(g, inp, nlist, &d.exclude_types, ntypes)?;
    let rr = apply_keep(g, env_rr, keep)?;
    let mut starts = vec![0];
    for s in &d.sel {
        starts.push(starts.last().unwrap() + s);
    }
    let block = |g: &mut Graph, t: usize| -> Result<ValueId, GraphError> {
        let b = g.slice_n(rr, 1, starts[t], starts[t + 1])?;
        g.slice_n(b, 2, 1, 4) // [nloc, s_t, 3]
    };
    let mut acc: Option<ValueId> = None;
    for ti in 0..ntypes {
        for tj in ti..ntypes {
            let (si, sj) = (d.sel[ti], d.sel[tj]);
            if si == 0 || sj == 0 {
                continue;
            }
            let Some(n) = d.embeddings.get(&[ti, tj]) else {
                continue;
            };
            let ri = block(g, ti)?;
            let rj = block(g, tj)?;
            let rjt = g.transpose(rj, vec![0, 2, 1])?;
            let env_ij = g.matmul(ri, rjt)?; // [nloc, si, sj]
            let (mlp, table) = embedding(inp.compress.as_ref(), n, g.dtype(env_ij), |p| {
                let bi = p.angular_bound(&d.env, &d.stats, starts[ti]..starts[ti + 1])?;
                let bj = p.angular_bound(&d.env, &d.stats, starts[tj]..starts[tj + 1])?;
                Ok((-bi * bj, bi * bj))
            })?;
            let res = match mlp.filter(|_| inp.fuse) {
                Some(mlp) => {
                    // sum_ab theta_ab G(theta_ab): the fused contraction with one channel.
                    let x = g.reshape(env_ij, vec![Dim::NLOC, Dim::fixed(si * sj), Dim::ONE])?;
                    let c = g.embed_contract(x, mlp, table, None)?; // [nloc, ng, 1]
                    let ng = g.shape(c)[1];
                    g.reshape(c, vec![Dim::NLOC, ng])?
                }
                None => {
                    let x = g.reshape(
                        env_ij,
                        vec![Dim::NLOC, Dim::fixed(si), Dim::fixed(sj), Dim::ONE],
                    )?;
                    let gg = match &table {
                        Some(t) => table_eval(g, x, t, n)?,
                        None => net(g, x, n)?,
                    }; // [nloc, si, sj, ng]
                    let ng = g.shape(gg)[3];
                    let gg = g.reshape(gg, vec![Dim::NLOC, Dim::fixed(si * sj), ng])?;
                    let e = g.reshape(env_ij, vec![Dim::NLOC, Dim::ONE, Dim::fixed(si * sj)])?;
                    let res = g.matmul(e, gg)?; // [nloc, 1, ng]
                    g.reshape(res, vec![Dim::NLOC, ng])?
                }
            };
            let res = g.scale(res, 1.0 / si as f64 / sj as f64)?;
            acc = Some(match acc {
                None => res,
                Some(a) => g.add(a, res)?,
            });
        }
    }
    acc.ok_or_else(|| GraphError("se_e3: no embedding network applies".into()))
}
