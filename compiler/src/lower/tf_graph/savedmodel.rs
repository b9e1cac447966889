//! The IR as a TensorFlow SavedModel (`.savedmodel`) for DeePMD-kit's C++ `DeepPotJAX`
//! (its LAMMPS plugin and C/C++ API), which loads the directory with
//! `TF_LoadSessionFromSavedModel` and calls functions of its library by name:
//! `call_lower_without_atomic_virial` / `call_lower_with_atomic_virial` (DeePMD-kit's
//! `call_lower`: extended coordinates, types, an MD code's neighbour list and the ghost
//! mapping in; per-atom energies, forces and virials out) and getters (`get_rcut`,
//! `get_type_map`, `get_sel`, ...).
//!
//! DeePMD-kit's own SavedModels wrap StableHLO in `XlaCallModule` ops; here the functions
//! are standard TF ops, the IR lowered op by op as for `.pb` (`ops.rs`), so no XLA is
//! needed to run them. The function formats the caller's list as DeePMD-kit's exported
//! `call_lower` does: nearest `sum(sel)` within rcut, then per-type blocks for models that
//! distinguish types. One frame per call (DeePMD-kit's C++ passes one). The
//! serialization tree rides along as the getter `get_dpc_model_json`. The Python-side
//! object graph (`tf.saved_model.load`) is not written: DeePMD-kit's Python `DeepPot`
//! cannot load these; use `.hlo` or `.pth` there.

use std::collections::HashMap;

use dpc_formats::savedmodel::{MetaGraphDef, MetaInfoDef, SavedModel};
use dpc_formats::tf::graph_def::{
    dtype as tfd, ArgDef, FunctionDef, FunctionDefLibrary, GraphDef, NodeDef, OpDef, VersionDef,
};
use dpc_formats::Value;

use super::ops::{boolean, ty, Lowering, Tf};
use crate::build::{build_graph, io, BuildOptions};
use crate::graph::{verify::verify, GraphError};
use crate::model::Model;

/// The getter holding the serialization tree (JSON), so dpc reads the directory back.
pub use dpc_formats::savedmodel::DPC_MODEL_JSON_GETTER as MODEL_JSON_GETTER;

/// `saved_model.pb` of `model` (whose serialization tree is `tree`).
pub fn saved_model(tree: &Value, model: &Model) -> Result<Vec<u8>, GraphError> {
    let mut functions = Vec::new();
    for (name, atomic) in [
        ("call_lower_without_atomic_virial", false),
        ("call_lower_with_atomic_virial", true),
    ] {
        functions.push(call_lower(model, name, atomic)?);
    }
    let json = dpc_formats::json::write_tree(tree)
        .map_err(|e| GraphError(format!("writing the model's tree: {e}")))?;
    functions.extend(getters(model, &json));
    let sm = SavedModel {
        saved_model_schema_version: 1,
        meta_graphs: vec![MetaGraphDef {
            meta_info_def: Some(MetaInfoDef {
                tags: vec!["serve".into()],
                tensorflow_version: String::new(),
            }),
            graph_def: Some(GraphDef {
                node: Vec::new(),
                library: Some(FunctionDefLibrary {
                    function: functions,
                }),
                versions: Some(VersionDef {
                    producer: 2474,
                    min_consumer: 0,
                }),
            }),
        }],
    };
    Ok(dpc_formats::savedmodel::encode(&sm))
}

/// The C++ API finds a function by its name less `__inference_` and a numeric suffix.
fn function_name(name: &str) -> String {
    format!("__inference_{name}_0")
}

/// DeePMD-kit's results, in the order its C++ reads them (the sorted keys of its dict).
const RESULTS: [(&str, i32); 6] = [
    ("energy", tfd::DOUBLE),
    ("energy_derv_c", tfd::DOUBLE),
    ("energy_derv_c_redu", tfd::DOUBLE),
    ("energy_derv_r", tfd::DOUBLE),
    ("energy_redu", tfd::DOUBLE),
    ("mask", tfd::INT32),
];

/// `call_lower(coord [1, nall, 3], atype [1, nall], nlist i64 [1, nloc, k], mapping i64
/// [1, nall], fparam [1, nfp], aparam [1, nloc, nap])`.
fn call_lower(model: &Model, name: &str, atomic: bool) -> Result<FunctionDef, GraphError> {
    let g = build_graph(
        model,
        BuildOptions {
            atomic_virial: atomic,
            unfused: true,
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
                let s = tf.i32s(&[nfp], false);
                tf.reshape(None, "fparam", &s, tfd::DOUBLE)
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
            // DPA-1's padded slots read the type of extended atom 0.
            io::PAD_ATOM => tf.i32s(&[0], true),
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
    let s = tf.pack(&[c1.clone(), nloc]);
    let one = tf.i32s(&[1], true);
    let mask = tf.fill(&s, &one, tfd::INT32);
    let results = [energy, virial, virial_redu, force, energy_redu, mask];
    let outputs: Vec<(&str, i32, String)> = RESULTS
        .iter()
        .zip(results)
        .map(|(&(n, t), v)| (n, t, v))
        .collect();
    function(&function_name(name), &args, tf.nodes, &outputs)
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
    const FAR: f64 = 1e300;
    let nnei = model.nnei() as i32;
    let zero = tf.i32s(&[0], true);
    let minus1 = tf.i32s(&[-1], true);
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
    // At least nnei columns: append nnei padding ones.
    let n = tf.i32s(&[nnei], true);
    let s = tf.pack(&[nloc.to_string(), n]);
    let pad_i = tf.fill(&s, &minus1, tfd::INT32);
    let pad_r = tf.fill(&s, &far, tfd::DOUBLE);
    let nlist = tf.concat(&[nlist, &pad_i], 1, tfd::INT32);
    let r2 = tf.concat(&[&r2, &pad_r], 1, tfd::DOUBLE);
    let (nlist, r2) = nearest(tf, &nlist, &r2, nnei);
    let rc2 = model.rcut() * model.rcut();
    let rc2 = tf.constant(None, tfd::DOUBLE, &[], rc2.to_le_bytes().to_vec());
    let within = tf.binary("LessEqual", &r2, &rc2, tfd::DOUBLE);
    let nlist = tf.select(&within, &nlist, &minus1, tfd::INT32);
    if model.mixed_types() {
        return nlist;
    }
    // Per-type blocks from the sorted list.
    let r2 = tf.select(&within, &r2, &far, tfd::DOUBLE);
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

/// The getters `DeepPotJAX` reads (each a function returning one constant), and the tree.
fn getters(model: &Model, json: &str) -> Vec<FunctionDef> {
    let i64s = |v: &[i64]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let mut out = Vec::new();
    let mut getter =
        |name: &str, dtype: i32, dims: &[i64], content: Vec<u8>, strings: Vec<Vec<u8>>| {
            let mut tf = Tf::default();
            let value = if strings.is_empty() {
                tf.constant(None, dtype, dims, content)
            } else {
                tf.strings(None, dims, strings)
            };
            let f = function(
                &function_name(name),
                &[],
                tf.nodes,
                &[("output", dtype, value)],
            )
            .expect("a getter's constant is a known op");
            out.push(f);
        };
    getter(
        "get_rcut",
        tfd::DOUBLE,
        &[],
        model.rcut().to_le_bytes().to_vec(),
        vec![],
    );
    getter(
        "get_dim_fparam",
        tfd::INT64,
        &[],
        i64s(&[model.dim_fparam() as i64]),
        vec![],
    );
    getter(
        "get_dim_aparam",
        tfd::INT64,
        &[],
        i64s(&[model.dim_aparam() as i64]),
        vec![],
    );
    let sel: Vec<i64> = model.sel().iter().map(|&s| s as i64).collect();
    getter(
        "get_sel",
        tfd::INT64,
        &[sel.len() as i64],
        i64s(&sel),
        vec![],
    );
    let types: Vec<Vec<u8>> = model
        .type_map
        .iter()
        .map(|t| t.as_bytes().to_vec())
        .collect();
    getter(
        "get_type_map",
        tfd::STRING,
        &[types.len() as i64],
        vec![],
        types,
    );
    getter(
        "has_message_passing",
        tfd::BOOL,
        &[],
        vec![u8::from(model.descriptor.has_message_passing())],
        vec![],
    );
    getter(
        "mixed_types",
        tfd::BOOL,
        &[],
        vec![u8::from(model.mixed_types())],
        vec![],
    );
    // DeePMD-kit's C++ has no default frame parameters for this form; callers pass them.
    getter("has_default_fparam", tfd::BOOL, &[], vec![0], vec![]);
    getter(
        MODEL_JSON_GETTER,
        tfd::STRING,
        &[],
        vec![],
        vec![json.as_bytes().to_vec()],
    );
    out
}

/// The output argument names of each op the lowerings write, by output index (TF's op
/// registry; a function body names a node's output `node:arg:index`).
fn output_args(op: &str) -> Option<&'static [&'static str]> {
    Some(match op {
        "AddV2" | "Sub" | "Mul" | "RealDiv" | "TruncateDiv" | "Maximum" | "Minimum"
        | "LogicalAnd" | "LogicalOr" | "Less" | "LessEqual" | "Greater" | "GreaterEqual"
        | "Equal" | "NotEqual" => &["z"],
        "Neg" | "Exp" | "Log" | "Tanh" | "Sqrt" | "Reciprocal" | "Sigmoid" | "Floor"
        | "LogicalNot" | "Cast" | "Transpose" => &["y"],
        "Const" | "Identity" | "SelectV2" | "BatchMatMulV2" | "Reshape" | "BroadcastTo"
        | "Slice" | "Pad" | "ConcatV2" | "Sum" | "Max" | "GatherV2" | "UnsortedSegmentSum"
        | "StridedSlice" | "Pack" | "Shape" | "Range" | "Tile" | "Fill" => &["output"],
        "TopKV2" => &["values", "indices"],
        _ => return None,
    })
}

/// A function from graph-style nodes (inputs `node` or `node:k`; the function's arguments
/// by their names), renamed to a function body's conventions.
fn function(
    name: &str,
    args: &[(&str, i32)],
    nodes: Vec<NodeDef>,
    outputs: &[(&str, i32, String)],
) -> Result<FunctionDef, GraphError> {
    let ops: HashMap<String, String> = nodes
        .iter()
        .map(|n| (n.name.clone(), n.op.clone()))
        .collect();
    let is_arg = |s: &str| args.iter().any(|(a, _)| *a == s);
    let body_name = |s: &str| s.replace('/', "_");
    let rename = |s: &str| -> Result<String, GraphError> {
        if is_arg(s) {
            return Ok(s.to_string());
        }
        let (node, k) = match s.rsplit_once(':') {
            Some((n, k)) if k.parse::<usize>().is_ok() => (n, k.parse::<usize>().unwrap()),
            _ => (s, 0),
        };
        let op = ops
            .get(node)
            .ok_or_else(|| GraphError(format!("function {name}: no node {node}")))?;
        let outs = output_args(op).ok_or_else(|| {
            GraphError(format!(
                "writing a TF function: no output names for op {op}"
            ))
        })?;
        let (arg, idx) = if outs.len() > 1 {
            (outs.get(k).copied().unwrap_or(outs[0]), 0)
        } else {
            (outs[0], k)
        };
        Ok(format!("{}:{arg}:{idx}", body_name(node)))
    };
    let mut body = Vec::with_capacity(nodes.len());
    for mut n in nodes {
        n.input = n
            .input
            .iter()
            .map(|i| rename(i))
            .collect::<Result<_, _>>()?;
        n.name = body_name(&n.name);
        body.push(n);
    }
    let mut ret = HashMap::new();
    let mut output_arg = Vec::new();
    for (o, t, v) in outputs {
        ret.insert(o.to_string(), rename(v)?);
        output_arg.push(ArgDef {
            name: o.to_string(),
            r#type: *t,
        });
    }
    Ok(FunctionDef {
        signature: Some(OpDef {
            name: name.to_string(),
            input_arg: args
                .iter()
                .map(|(a, t)| ArgDef {
                    name: a.to_string(),
                    r#type: *t,
                })
                .collect(),
            output_arg,
        }),
        node_def: body,
        ret,
    })
}
