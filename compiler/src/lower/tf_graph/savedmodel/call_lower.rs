//! `call_lower`: the model on an extended system and a caller's neighbour list (DeePMD-kit's
//! lower interface, what its C++ `DeepPotJAX` calls), one frame per call.

use std::collections::HashMap;

use dpc_formats::tf::graph_def::{dtype as tfd, FunctionDef};

use super::function::function;
use super::{function_name, RESULTS};
use crate::build::{build_graph, io, BuildOptions};
use crate::graph::{verify::verify, GraphError};
use crate::lower::tf_graph::ops::{boolean, ty, Lowering, Tf};
use crate::model::Model;

/// A distance no neighbour has (padding and excluded candidates).
pub(super) const FAR: f64 = 1e300;

/// `call_lower(coord [1, nall, 3], atype [1, nall], nlist i64 [1, nloc, k], mapping i64
/// [1, nall], fparam [1, nfp], aparam [1, nloc, nap])`.
pub(super) fn call_lower(
    model: &Model,
    name: &str,
    atomic: bool,
) -> Result<FunctionDef, GraphError> {
    let g = build_graph(
        model,
        // Per-centre frame parameters and padding atom, and type -1 (virtual atoms) run
        // as type 0 and masked out of the energy, as DeePMD-kit does.
        BuildOptions {
            atomic_virial: atomic,
            unfused: true,
            flat_frames: true,
            ..Default::default()
        },
    )?;
    verify(&g).map_err(|e| GraphError(format!("the built graph fails verification: {e}")))?;
    let args = [
        ("coord", tfd::DOUBLE),
        ("atype", tfd::INT32),
        ("nlist", tfd::INT64),
        ("mapping", tfd::INT64),
        ("fparam", tfd::DOUBLE),
        ("aparam", tfd::DOUBLE),
    ];
    let mut tf = Tf::default();
    let (nfp, nap) = (model.dim_fparam() as i32, model.dim_aparam() as i32);

    // One frame: [1, nall, 3] -> [nall, 3] (a reshape that fails loudly for more frames).
    let cshape = tf.shape_of("coord", tfd::DOUBLE);
    let nall = tf.element(&cshape, 1);
    let nshape = tf.shape_of("nlist", tfd::INT64);
    let nloc = tf.element(&nshape, 1);
    let width = tf.element(&nshape, 2);
    let three = tf.i32s(&[3], true);
    let s = tf.pack(&[nall.clone(), three]);
    let coord = tf.reshape(None, "coord", &s, tfd::DOUBLE);
    let s = tf.pack(std::slice::from_ref(&nall));
    let atype = tf.reshape(None, "atype", &s, tfd::INT32);
    let s = tf.pack(&[nloc.clone(), width]);
    let nlist = tf.reshape(None, "nlist", &s, tfd::INT64);
    let nlist = tf.cast(&nlist, tfd::INT64, tfd::INT32);
    let nlist = format_nlist(&mut tf, model, &coord, &atype, &nlist, &nloc);

    // Each input the graph reads (others, such as the mapping of a model without message
    // passing, are not built).
    let mut inputs: HashMap<&str, String> = HashMap::new();
    for spec in &g.inputs {
        let name = spec.name.as_str();
        let v = match name {
            io::COORD => coord.clone(),
            io::ATYPE => atype.clone(),
            io::NLIST => nlist.clone(),
            io::FPARAM => {
                // Every centre its frame's row.
                let s = tf.i32s(&[1, nfp], false);
                let row = tf.reshape(None, "fparam", &s, tfd::DOUBLE);
                let n = tf.i32s(&[nfp], true);
                let s = tf.pack(&[nloc.clone(), n]);
                tf.broadcast_to(&row, &s, tfd::DOUBLE)
            }
            io::APARAM => {
                let n = tf.i32s(&[nap], true);
                let s = tf.pack(&[nloc.clone(), n]);
                tf.reshape(None, "aparam", &s, tfd::DOUBLE)
            }
            io::MAPPING => {
                let s = tf.pack(std::slice::from_ref(&nall));
                let mapping = tf.reshape(None, "mapping", &s, tfd::INT64);
                tf.cast(&mapping, tfd::INT64, tfd::INT32)
            }
            io::CENTRE_WEIGHT => {
                let s = tf.pack(std::slice::from_ref(&nloc));
                let one = tf.constant(None, tfd::DOUBLE, &[], 1f64.to_le_bytes().to_vec());
                tf.fill(&s, &one, tfd::DOUBLE)
            }
            // DPA-1's padded slots read the type of extended atom 0, for every centre.
            io::PAD_ATOM => {
                let s = tf.pack(std::slice::from_ref(&nloc));
                let zero = tf.i32s(&[0], true);
                tf.fill(&s, &zero, tfd::INT32)
            }
            other => {
                return Err(GraphError(format!(
                    "writing a SavedModel: unknown graph input {other}"
                )))
            }
        };
        inputs.insert(name, v);
    }
    let out = Lowering::new(&mut tf, nloc.clone())
        .with_nall(nall.clone())
        .graph(&g, &inputs)?;

    // Results, per frame.
    let (c1, c3, c9) = (
        tf.i32s(&[1], true),
        tf.i32s(&[3], true),
        tf.i32s(&[9], true),
    );
    let s = tf.pack(&[c1.clone(), nloc.clone(), c1.clone()]);
    let energy = tf.reshape(None, &out[io::ATOM_ENERGY], &s, tfd::DOUBLE);
    let s = tf.i32s(&[1, 1], false);
    let energy_redu = tf.reshape(None, &out[io::ENERGY], &s, tfd::DOUBLE);
    let s = tf.pack(&[c1.clone(), nall.clone(), c1.clone(), c3]);
    let force = tf.reshape(None, &out[io::FORCE], &s, tfd::DOUBLE);
    let s = tf.pack(&[c1.clone(), nall, c1.clone(), c9]);
    let virial = tf.reshape(None, &out[io::VIRIAL], &s, tfd::DOUBLE);
    let virial_redu = tf.sum(&virial, &[1], tfd::DOUBLE);
    let mask = atom_mask(&mut tf, model, &atype, &nloc);
    let results = [energy, virial, virial_redu, force, energy_redu, mask];
    let outputs: Vec<(&str, i32, String)> = RESULTS
        .iter()
        .zip(results)
        .map(|(&(n, t), v)| (n, t, v))
        .collect();
    function(&function_name(name), &args, tf.nodes, &outputs)
}

/// DeePMD-kit's `mask` result `[1, nloc]`: 1 for a real centre (type >= 0) whose type is
/// not excluded.
fn atom_mask(tf: &mut Tf, model: &Model, atype: &str, nloc: &str) -> String {
    let begin = tf.i32s(&[0], false);
    let size = tf.pack(&[nloc.to_string()]);
    let local = tf.node(
        None,
        "Slice",
        &[atype, &begin, &size],
        vec![("T", ty(tfd::INT32)), ("Index", ty(tfd::INT32))],
    );
    let zero = tf.i32s(&[0], true);
    let mut keep = tf.binary("GreaterEqual", &local, &zero, tfd::INT32);
    for &t in &model.atom_exclude_types {
        let tc = tf.i32s(&[t as i32], true);
        let other = tf.binary("NotEqual", &local, &tc, tfd::INT32);
        keep = tf.node(None, "LogicalAnd", &[&keep, &other], vec![]);
    }
    let mask = tf.cast(&keep, tfd::BOOL, tfd::INT32);
    let s = tf.i32s(&[1, -1], false);
    tf.reshape(None, &mask, &s, tfd::INT32)
}

/// DeePMD-kit's `format_nlist` on an MD code's list `[nloc, k]` (any order, any width,
/// -1 padded, maybe beyond rcut): the nearest `sum(sel)` within rcut, nearest first, -1
/// padded; then, unless the model mixes types, per-type blocks of `sel[t]` (nearest first).
fn format_nlist(
    tf: &mut Tf,
    model: &Model,
    coord: &str,
    atype: &str,
    nlist: &str,
    nloc: &str,
) -> String {
    let zero = tf.i32s(&[0], true);
    let far = tf.constant(None, tfd::DOUBLE, &[], FAR.to_le_bytes().to_vec());
    let real = tf.binary("GreaterEqual", nlist, &zero, tfd::INT32);
    let safe = tf.select(&real, nlist, &zero, tfd::INT32);
    let neigh = tf.gather(coord, &safe, 0, 0, tfd::DOUBLE); // [nloc, k, 3]
    let begin = tf.i32s(&[0, 0], false);
    let three = tf.i32s(&[3], true);
    let size = tf.pack(&[nloc.to_string(), three]);
    let centre = tf.node(
        None,
        "Slice",
        &[coord, &begin, &size],
        vec![("T", ty(tfd::DOUBLE)), ("Index", ty(tfd::INT32))],
    );
    let s = tf.i32s(&[-1, 1, 3], false);
    let centre = tf.reshape(None, &centre, &s, tfd::DOUBLE);
    let d = tf.binary("Sub", &neigh, &centre, tfd::DOUBLE);
    let d2 = tf.binary("Mul", &d, &d, tfd::DOUBLE);
    let r2 = tf.sum(&d2, &[2], tfd::DOUBLE);
    let r2 = tf.select(&real, &r2, &far, tfd::DOUBLE);
    let (nlist, r2) = nearest_within(tf, model, nlist, &r2, nloc);
    if model.mixed_types() {
        return nlist;
    }
    // Per-type blocks from the sorted list.
    let minus1 = tf.i32s(&[-1], true);
    let real = tf.binary("GreaterEqual", &nlist, &zero, tfd::INT32);
    let safe = tf.select(&real, &nlist, &zero, tfd::INT32);
    let ntype = tf.gather(atype, &safe, 0, 0, tfd::INT32);
    let mut blocks = Vec::new();
    for (t, &s) in model.sel().iter().enumerate() {
        if s == 0 {
            continue;
        }
        let tc = tf.i32s(&[t as i32], true);
        let is_t = tf.binary("Equal", &ntype, &tc, tfd::INT32);
        let r2t = tf.select(&is_t, &r2, &far, tfd::DOUBLE);
        let (blk, r2b) = nearest(tf, &nlist, &r2t, s as i32);
        let half = tf.constant(None, tfd::DOUBLE, &[], (FAR / 2.0).to_le_bytes().to_vec());
        let ok = tf.binary("Less", &r2b, &half, tfd::DOUBLE);
        blocks.push(tf.select(&ok, &blk, &minus1, tfd::INT32));
    }
    let refs: Vec<&str> = blocks.iter().map(String::as_str).collect();
    tf.concat(&refs, 1, tfd::INT32)
}

/// The nearest `sum(sel)` candidates of `nlist` `[nloc, k]` (squared distances `r2`, FAR
/// for none) within rcut, nearest first, -1 padded; and their `r2` (FAR where padded).
pub(super) fn nearest_within(
    tf: &mut Tf,
    model: &Model,
    nlist: &str,
    r2: &str,
    nloc: &str,
) -> (String, String) {
    let nnei = model.nnei() as i32;
    let minus1 = tf.i32s(&[-1], true);
    let far = tf.constant(None, tfd::DOUBLE, &[], FAR.to_le_bytes().to_vec());
    // At least nnei columns: append nnei padding ones.
    let n = tf.i32s(&[nnei], true);
    let s = tf.pack(&[nloc.to_string(), n]);
    let pad_i = tf.fill(&s, &minus1, tfd::INT32);
    let pad_r = tf.fill(&s, &far, tfd::DOUBLE);
    let nlist = tf.concat(&[nlist, &pad_i], 1, tfd::INT32);
    let r2 = tf.concat(&[r2, &pad_r], 1, tfd::DOUBLE);
    let (nlist, r2) = nearest(tf, &nlist, &r2, nnei);
    let rc2 = model.rcut() * model.rcut();
    let rc2 = tf.constant(None, tfd::DOUBLE, &[], rc2.to_le_bytes().to_vec());
    let within = tf.binary("LessEqual", &r2, &rc2, tfd::DOUBLE);
    let nlist = tf.select(&within, &nlist, &minus1, tfd::INT32);
    let r2 = tf.select(&within, &r2, &far, tfd::DOUBLE);
    (nlist, r2)
}

/// The `k` columns of `nlist` with the smallest `r2` per row, nearest first (ties in column
/// order), and their `r2`.
fn nearest(tf: &mut Tf, nlist: &str, r2: &str, k: i32) -> (String, String) {
    let neg = tf.node(None, "Neg", &[r2], vec![("T", ty(tfd::DOUBLE))]);
    let kc = tf.i32s(&[k], true);
    let top = tf.node(
        None,
        "TopKV2",
        &[&neg, &kc],
        vec![
            ("T", ty(tfd::DOUBLE)),
            ("sorted", boolean(true)),
            ("Tk", ty(tfd::INT32)),
            ("index_type", ty(tfd::INT32)),
        ],
    );
    let idx = format!("{top}:1");
    let picked = tf.gather(nlist, &idx, 1, 1, tfd::INT32);
    let r2 = tf.node(None, "Neg", &[&top], vec![("T", ty(tfd::DOUBLE))]);
    (picked, r2)
}
