//! What the descriptors (deepmd/tf/descriptor/{se_a,se_r,se_t,se_atten}.py `serialize`) share:
//! the result, the embedding-net collection, `env_mat`, the statistics, `sel` and
//! `exclude_types`.

use super::names::parse_filter;
use super::network::{matching, Collection, Net, NetSpec};
use super::script::count;
use super::{bad, dict, unsupported, G, R};
use crate::tree::{NdArray, Value};

pub(super) struct Desc {
    pub(super) tree: Value,
    pub(super) dim_out: usize,
    pub(super) ntypes: usize,
    pub(super) tebd_dim: usize,
}

/// `DescrptSe.serialize_network` (deepmd/tf/descriptor/se.py): the embedding nets of
/// se_e2_a / se_e2_r (`ndim` 1 one-side, 2 two-side) and se_atten (`ndim` 0). Excluded pairs of
/// a two-side collection get all-zero nets at both `(i, j)` and `(j, i)`.
pub(super) fn se_embeddings(
    g: &G,
    ntypes: usize,
    ndim: usize,
    in_dim: usize,
    sp: &NetSpec,
    excluded: &[(usize, usize)],
) -> R<Value> {
    let mut c = Collection::new(ndim, ntypes, "embedding_network")?;
    if ndim == 2 {
        for &(a, b) in excluded {
            for (i, j) in [(a, b), (b, a)] {
                let mut net =
                    Net::embedding(&format!("embedding net ({i}, {j})"), in_dim, sp, true)?;
                net.clear()?;
                c.nets[i + ntypes * j] = Some(net);
            }
        }
    }
    for (name, f, a) in matching(g, parse_filter)? {
        let (idx, layer) = match (ndim, f.owner, f.nums.as_slice()) {
            (0, None, &[l]) => (0, l),
            (1, None, &[l, j]) if j < ntypes => (j, l),
            (2, Some(i), &[l, j]) if i < ntypes && j < ntypes => (i + ntypes * j, l),
            _ => {
                return Err(bad(format!(
                    "embedding-net node `{name}` does not fit a collection of {ntypes} types and ndim {ndim} (inconsistent graph)"
                )))
            }
        };
        if layer == 0 {
            return Err(bad(format!("`{name}`: layers are numbered from 1")));
        }
        let slot = &mut c.nets[idx];
        if slot.is_none() {
            *slot = Some(Net::embedding(
                &format!("embedding net {idx}"),
                in_dim,
                sp,
                true,
            )?);
        }
        if let Some(net) = slot {
            net.set(layer - 1, f.kind, a, &name)?;
        }
    }
    c.finish()
}

pub(super) fn env_mat(rcut: &Value, rcut_smth: &Value) -> Value {
    dict(vec![
        ("rcut", rcut.clone()),
        ("rcut_smth", rcut_smth.clone()),
        ("protection", Value::Float(0.0)),
        ("use_exp_switch", Value::Bool(false)),
    ])
}

/// `davg`/`dstd` from `descrpt_attr/t_avg`/`t_std`, reshaped `(ntypes, nnei, ncomp)`.
pub(super) fn stats(g: &G, ntypes: usize, nnei: usize, ncomp: usize) -> R<Value> {
    let mut out = Vec::new();
    for (key, node) in [
        ("davg", "descrpt_attr/t_avg"),
        ("dstd", "descrpt_attr/t_std"),
    ] {
        let a = g.get(node)?;
        let want = [ntypes, nnei, ncomp];
        if Some(a.len()) != ntypes.checked_mul(nnei).and_then(|x| x.checked_mul(ncomp)) {
            return Err(bad(format!(
                "`{node}` has shape {:?}, expected {ntypes} types x {nnei} neighbours x {ncomp} values",
                a.shape
            )));
        }
        out.push((
            key,
            Value::Array(NdArray {
                shape: want.to_vec(),
                ..a
            }),
        ));
    }
    Ok(dict(out))
}

/// se_a.py / se_atten.py `init_variables`: the graph's `sel` must be the script's.
pub(super) fn check_sel(g: &G, sel: &[usize]) -> R<()> {
    let want: Vec<i64> = sel.iter().map(|&x| x as i64).collect();
    if let Some(gs) = g.ints("descrpt_attr/sel")? {
        if gs != want {
            return Err(bad(format!(
                "the graph's sel {gs:?} differs from the training script's {want:?}"
            )));
        }
    }
    if let Some(os) = g.ints("descrpt_attr/original_sel")? {
        if os != want {
            return Err(unsupported(
                "a graph whose sel was adjusted after training (original_sel differs from sel)",
            ));
        }
    }
    Ok(())
}

pub(super) fn exclude_pairs(v: &Value, ntypes: usize) -> R<Vec<(usize, usize)>> {
    let Some(l) = v.as_list() else {
        return if v.is_null() {
            Ok(vec![])
        } else {
            Err(bad("exclude_types is not a list"))
        };
    };
    l.iter()
        .map(|p| match p.as_list() {
            Some([a, b]) => match (count(a), count(b)) {
                (Some(a), Some(b)) if a < ntypes && b < ntypes => Ok((a, b)),
                _ => Err(bad(format!("exclude_types pair {p:?} is not two types"))),
            },
            _ => Err(bad(format!("exclude_types entry {p:?} is not a pair"))),
        })
        .collect()
}
