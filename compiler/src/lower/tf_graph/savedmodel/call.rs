//! `call`: the model on frames of local atoms and their cells (DeePMD-kit's upper
//! interface, what its Python `DeepPot` calls through `TFModelWrapper`). As DeePMD-kit's
//! exported `call` does, each frame's coordinates are wrapped into the cell, periodic
//! images within rcut of a face appended, the nearest `sum(sel)` neighbours within rcut
//! listed, `call_lower` run, and the ghosts' forces and virials summed onto their atoms.
//!
//! `call_lower` takes one frame, so a `While` loop runs the frames, collecting each
//! result in a `TensorList`. A frame with an empty cell (`[0, 0]`) is not periodic.
//! The image count is chosen per frame (DeePMD-kit takes the most any frame needs; the
//! extra images are beyond rcut and change nothing but their order).

use dpc_formats::tf::graph_def::{
    attr_value::Value as AV, dtype as tfd, AttrValue, FunctionDef, ListValue, NameAttrList,
    TensorShapeProto,
};

use super::call_lower::{nearest_within, FAR};
use super::function::function;
use super::{function_name, RESULTS};
use crate::graph::GraphError;
use crate::lower::tf_graph::ops::{boolean, int, ty, Tf};
use crate::model::Model;

/// The arguments, in DeePMD-kit's order.
pub(super) const ARGS: [(&str, i32); 5] = [
    ("coord", tfd::DOUBLE),
    ("atype", tfd::INT32),
    ("box", tfd::DOUBLE),
    ("fparam", tfd::DOUBLE),
    ("aparam", tfd::DOUBLE),
];

/// The results: `call_lower`'s less the per-atom virial unless `atomic`.
pub(super) fn results(atomic: bool) -> Vec<(&'static str, i32)> {
    RESULTS
        .iter()
        .copied()
        .filter(|(n, _)| atomic || *n != "energy_derv_c")
        .collect()
}

fn func(name: &str) -> AttrValue {
    AttrValue {
        value: Some(AV::Func(NameAttrList { name: name.into() })),
    }
}

/// `call` (`atomic`: `call_atomic_virial`) and the loop's condition and body.
pub(super) fn call(
    model: &Model,
    name: &str,
    lower: &str,
    atomic: bool,
) -> Result<Vec<FunctionDef>, GraphError> {
    let results = results(atomic);
    let cond_name = format!("{name}_more_frames");
    let body_name = format!("{name}_frame");
    // Loop variables: frame index, frame count, the inputs, one list per result.
    let mut vars: Vec<(String, i32)> = vec![("i".into(), tfd::INT32), ("n".into(), tfd::INT32)];
    vars.extend(ARGS.iter().map(|(a, t)| (a.to_string(), *t)));
    vars.extend(
        results
            .iter()
            .map(|(r, _)| (format!("{r}_list"), tfd::VARIANT)),
    );
    let var_args: Vec<(&str, i32)> = vars.iter().map(|(v, t)| (v.as_str(), *t)).collect();

    let mut tf = Tf::default();
    let nf = tf.shape_of("atype", tfd::INT32);
    let nf = tf.element(&nf, 0);
    let zero = tf.i32s(&[0], true);
    let unknown = tf.i32s(&[-1], true);
    let mut init = vec![zero, nf.clone()];
    init.extend(ARGS.iter().map(|(a, _)| a.to_string()));
    for (_, t) in &results {
        init.push(tf.node(
            None,
            "TensorListReserve",
            &[&unknown, &nf],
            vec![("element_dtype", ty(*t)), ("shape_type", ty(tfd::INT32))],
        ));
    }
    let refs: Vec<&str> = init.iter().map(String::as_str).collect();
    let types: Vec<i32> = vars.iter().map(|v| v.1).collect();
    let unknown_shapes = vars
        .iter()
        .map(|_| TensorShapeProto {
            dim: vec![],
            unknown_rank: true,
        })
        .collect();
    let lp = tf.node(
        None,
        "While",
        &refs,
        vec![
            (
                "T",
                AttrValue {
                    value: Some(AV::List(ListValue {
                        r#type: types,
                        ..Default::default()
                    })),
                },
            ),
            ("cond", func(&function_name(&cond_name))),
            ("body", func(&function_name(&body_name))),
            (
                "output_shapes",
                AttrValue {
                    value: Some(AV::List(ListValue {
                        shape: unknown_shapes,
                        ..Default::default()
                    })),
                },
            ),
            ("parallel_iterations", int(1)),
        ],
    );
    let mut outputs = Vec::new();
    for (k, (r, t)) in results.iter().enumerate() {
        let list = format!("{lp}:{}", 2 + ARGS.len() + k);
        let v = tf.node(
            None,
            "TensorListStack",
            &[&list, &unknown],
            vec![("element_dtype", ty(*t)), ("num_elements", int(-1))],
        );
        outputs.push((*r, *t, v));
    }
    let outer = function(&function_name(name), &ARGS, tf.nodes, &outputs)?;

    let mut tf = Tf::default();
    let more = tf.binary("Less", "i", "n", tfd::INT32);
    let cond = function(
        &function_name(&cond_name),
        &var_args,
        tf.nodes,
        &[("more", tfd::BOOL, more)],
    )?;

    let body = frame(model, &body_name, lower, atomic, &vars)?;
    Ok(vec![outer, cond, body])
}

/// One loop iteration: frame `i` through `call_lower`, its results appended to the lists.
fn frame(
    model: &Model,
    name: &str,
    lower: &str,
    atomic: bool,
    vars: &[(String, i32)],
) -> Result<FunctionDef, GraphError> {
    let mut tf = Tf::default();
    let tf = &mut tf;
    let f64c = |tf: &mut Tf, dims: &[i64], v: &[f64]| {
        tf.constant(
            None,
            tfd::DOUBLE,
            dims,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    };
    let expand = |tf: &mut Tf, x: &str, axis: i32, t: i32| {
        let a = tf.i32s(&[axis], true);
        tf.node(
            None,
            "ExpandDims",
            &[x, &a],
            vec![("T", ty(t)), ("Tdim", ty(tfd::INT32))],
        )
    };
    let matmul = |tf: &mut Tf, a: &str, b: &str| {
        tf.node(None, "MatMul", &[a, b], vec![("T", ty(tfd::DOUBLE))])
    };
    let range = |tf: &mut Tf, lo: &str, hi: &str| {
        let one = tf.i32s(&[1], true);
        tf.node(
            None,
            "Range",
            &[lo, hi, &one],
            vec![("Tidx", ty(tfd::INT32))],
        )
    };
    let reshape = |tf: &mut Tf, x: &str, dims: &[i32], t: i32| {
        let s = tf.i32s(dims, false);
        tf.reshape(None, x, &s, t)
    };

    // This frame's inputs.
    let coord = tf.gather("coord", "i", 0, 0, tfd::DOUBLE); // [nloc, 3]
    let atype = tf.gather("atype", "i", 0, 0, tfd::INT32); // [nloc]
    let cell_in = tf.gather("box", "i", 0, 0, tfd::DOUBLE); // [3, 3] or [0, 0]
    let fparam = tf.gather("fparam", "i", 0, 0, tfd::DOUBLE);
    let aparam = tf.gather("aparam", "i", 0, 0, tfd::DOUBLE);
    let s = tf.shape_of(&atype, tfd::INT32);
    let nloc = tf.element(&s, 0);

    // The cell, or the identity (unused) when the frame has none.
    let flat = reshape(tf, &cell_in, &[-1], tfd::DOUBLE);
    let size = tf.node(
        None,
        "Size",
        &[&flat],
        vec![("T", ty(tfd::DOUBLE)), ("out_type", ty(tfd::INT32))],
    );
    let zero = tf.i32s(&[0], true);
    let periodic = tf.binary("Greater", &size, &zero, tfd::INT32);
    let eye = f64c(tf, &[9], &[1., 0., 0., 0., 1., 0., 0., 0., 1.]);
    let both = tf.concat(&[&flat, &eye], 0, tfd::DOUBLE);
    let (b0, n9) = (tf.i32s(&[0], false), tf.i32s(&[9], false));
    let first = tf.node(
        None,
        "Slice",
        &[&both, &b0, &n9],
        vec![("T", ty(tfd::DOUBLE)), ("Index", ty(tfd::INT32))],
    );
    let cell = reshape(tf, &first, &[3, 3], tfd::DOUBLE);

    // Coordinates wrapped into the cell: fractional, floor-mod 1, back (DeePMD-kit's
    // `normalize_coord`).
    let inv = tf.node(
        None,
        "MatrixInverse",
        &[&cell],
        vec![("T", ty(tfd::DOUBLE))],
    );
    let frac = matmul(tf, &coord, &inv);
    let one = f64c(tf, &[], &[1.0]);
    let frac = tf.binary("FloorMod", &frac, &one, tfd::DOUBLE);
    let wrapped = matmul(tf, &frac, &cell);
    let coord = tf.select(&periodic, &wrapped, &coord, tfd::DOUBLE);

    // Images per direction: ceil(rcut / distance between opposite faces).
    let det = tf.node(
        None,
        "MatrixDeterminant",
        &[&cell],
        vec![("T", ty(tfd::DOUBLE))],
    );
    let volume = tf.node(None, "Abs", &[&det], vec![("T", ty(tfd::DOUBLE))]);
    let p1 = tf.i32s(&[1, 2, 0], false);
    let p2 = tf.i32s(&[2, 0, 1], false);
    let a1 = tf.gather(&cell, &p1, 0, 0, tfd::DOUBLE);
    let a2 = tf.gather(&cell, &p2, 0, 0, tfd::DOUBLE);
    let normals = tf.node(None, "Cross", &[&a1, &a2], vec![("T", ty(tfd::DOUBLE))]);
    let sq = tf.binary("Mul", &normals, &normals, tfd::DOUBLE);
    let sq = tf.sum(&sq, &[1], tfd::DOUBLE);
    let len = tf.node(None, "Sqrt", &[&sq], vec![("T", ty(tfd::DOUBLE))]);
    let to_face = tf.binary("RealDiv", &volume, &len, tfd::DOUBLE);
    let rcut = f64c(tf, &[], &[model.rcut()]);
    let ratio = tf.binary("RealDiv", &rcut, &to_face, tfd::DOUBLE);
    let up = tf.node(None, "Ceil", &[&ratio], vec![("T", ty(tfd::DOUBLE))]);
    let nbuff = tf.cast(&up, tfd::DOUBLE, tfd::INT32);
    let none = tf.i32s(&[0, 0, 0], false);
    let nbuff = tf.select(&periodic, &nbuff, &none, tfd::INT32);

    // The image shifts, nearest first (the cell itself first).
    let c1 = tf.i32s(&[1], true);
    let mut axes = Vec::new();
    let mut sizes = Vec::new();
    for d in 0..3 {
        let n = tf.element(&nbuff, d);
        let lo = tf.node(None, "Neg", &[&n], vec![("T", ty(tfd::INT32))]);
        let hi = tf.binary("AddV2", &n, &c1, tfd::INT32);
        let r = range(tf, &lo, &hi);
        let r = tf.cast(&r, tfd::INT32, tfd::DOUBLE);
        let mut dims = [1, 1, 1];
        dims[d as usize] = -1;
        axes.push(reshape(tf, &r, &dims, tfd::DOUBLE));
        sizes.push(tf.binary("Sub", &hi, &lo, tfd::INT32));
    }
    let grid = tf.pack(&sizes);
    let mut comps = Vec::new();
    for a in &axes {
        let full = tf.broadcast_to(a, &grid, tfd::DOUBLE);
        comps.push(reshape(tf, &full, &[-1], tfd::DOUBLE));
    }
    let refs: Vec<&str> = comps.iter().map(String::as_str).collect();
    let shifts = tf.node(
        None,
        "Pack",
        &refs,
        vec![("T", ty(tfd::DOUBLE)), ("N", int(3)), ("axis", int(1))],
    ); // [S, 3]
    let sq = tf.binary("Mul", &shifts, &shifts, tfd::DOUBLE);
    let norm2 = tf.sum(&sq, &[1], tfd::DOUBLE);
    let nshift = tf.node(
        None,
        "Size",
        &[&norm2],
        vec![("T", ty(tfd::DOUBLE)), ("out_type", ty(tfd::INT32))],
    );
    let neg = tf.node(None, "Neg", &[&norm2], vec![("T", ty(tfd::DOUBLE))]);
    let top = tf.node(
        None,
        "TopKV2",
        &[&neg, &nshift],
        vec![
            ("T", ty(tfd::DOUBLE)),
            ("sorted", boolean(true)),
            ("Tk", ty(tfd::INT32)),
            ("index_type", ty(tfd::INT32)),
        ],
    );
    let order = format!("{top}:1");
    let shifts = tf.gather(&shifts, &order, 0, 0, tfd::DOUBLE);
    let shift_vec = matmul(tf, &shifts, &cell); // [S, 3]

    // The extended system: image s of atom a is atom s * nloc + a.
    let c0 = expand(tf, &coord, 0, tfd::DOUBLE);
    let sv = expand(tf, &shift_vec, 1, tfd::DOUBLE);
    let ext = tf.binary("AddV2", &c0, &sv, tfd::DOUBLE);
    let ext = reshape(tf, &ext, &[-1, 3], tfd::DOUBLE);
    let reps = tf.pack(std::slice::from_ref(&nshift));
    let ext_type = tf.node(
        None,
        "Tile",
        &[&atype, &reps],
        vec![("T", ty(tfd::INT32)), ("Tmultiples", ty(tfd::INT32))],
    );
    let local = range(tf, &zero, &nloc);
    let mapping = tf.node(
        None,
        "Tile",
        &[&local, &reps],
        vec![("T", ty(tfd::INT32)), ("Tmultiples", ty(tfd::INT32))],
    );
    let s = tf.shape_of(&ext_type, tfd::INT32);
    let nall = tf.element(&s, 0);

    // Every extended atom but itself is a candidate of each local atom.
    let e0 = expand(tf, &ext, 0, tfd::DOUBLE);
    let cl = expand(tf, &coord, 1, tfd::DOUBLE);
    let d = tf.binary("Sub", &e0, &cl, tfd::DOUBLE);
    let d2 = tf.binary("Mul", &d, &d, tfd::DOUBLE);
    let r2 = tf.sum(&d2, &[2], tfd::DOUBLE); // [nloc, nall]
    let cols = range(tf, &zero, &nall);
    let rows = reshape(tf, &local, &[-1, 1], tfd::INT32);
    let is_self = tf.binary("Equal", &rows, &cols, tfd::INT32);
    let far = f64c(tf, &[], &[FAR]);
    let r2 = tf.select(&is_self, &far, &r2, tfd::DOUBLE);
    // Virtual atoms (type -1) neither have nor are neighbours (DeePMD-kit's
    // `build_neighbor_list`).
    let virtual_col = tf.binary("Less", &ext_type, &zero, tfd::INT32);
    let r2 = tf.select(&virtual_col, &far, &r2, tfd::DOUBLE);
    let virtual_row = tf.binary("Less", &atype, &zero, tfd::INT32);
    let virtual_row = reshape(tf, &virtual_row, &[-1, 1], tfd::BOOL);
    let r2 = tf.select(&virtual_row, &far, &r2, tfd::DOUBLE);
    let s = tf.pack(&[nloc.clone(), nall.clone()]);
    let candidates = tf.broadcast_to(&cols, &s, tfd::INT32);
    let (nlist, _) = nearest_within(tf, model, &candidates, &r2, &nloc);

    // call_lower on the frame.
    let ext = expand(tf, &ext, 0, tfd::DOUBLE);
    let ext_type1 = expand(tf, &ext_type, 0, tfd::INT32);
    let nlist = tf.cast(&nlist, tfd::INT32, tfd::INT64);
    let nlist = expand(tf, &nlist, 0, tfd::INT64);
    let map64 = tf.cast(&mapping, tfd::INT32, tfd::INT64);
    let map64 = expand(tf, &map64, 0, tfd::INT64);
    let fparam = expand(tf, &fparam, 0, tfd::DOUBLE);
    let aparam = expand(tf, &aparam, 0, tfd::DOUBLE);
    let out = tf.node(
        None,
        &function_name(lower),
        &[&ext, &ext_type1, &nlist, &map64, &fparam, &aparam],
        vec![],
    );
    let result = |k: &str| {
        let i = RESULTS.iter().position(|r| r.0 == k).expect("a result");
        format!("{out}:{i}")
    };

    // Per-frame results; forces and atomic virials of images go to their atoms.
    let fold = |tf: &mut Tf, x: &str, width: i32| {
        let rows = reshape(tf, x, &[-1, width], tfd::DOUBLE);
        let summed = tf.node(
            None,
            "UnsortedSegmentSum",
            &[&rows, &mapping, &nloc],
            vec![
                ("T", ty(tfd::DOUBLE)),
                ("Tindices", ty(tfd::INT32)),
                ("Tnumsegments", ty(tfd::INT32)),
            ],
        );
        reshape(tf, &summed, &[-1, 1, width], tfd::DOUBLE)
    };
    let mut items = Vec::new();
    for (r, _) in results(atomic) {
        let v = match r {
            "energy" => reshape(tf, &result(r), &[-1, 1], tfd::DOUBLE),
            "energy_derv_c" => fold(tf, &result(r), 9),
            "energy_derv_c_redu" => reshape(tf, &result(r), &[1, 9], tfd::DOUBLE),
            "energy_derv_r" => fold(tf, &result(r), 3),
            "energy_redu" => reshape(tf, &result(r), &[1], tfd::DOUBLE),
            "mask" => reshape(tf, &result(r), &[-1], tfd::INT32),
            other => return Err(GraphError(format!("call: unknown result {other}"))),
        };
        items.push((r, v));
    }

    let mut outputs: Vec<(String, i32, String)> = Vec::new();
    let next = tf.binary("AddV2", "i", &c1, tfd::INT32);
    outputs.push(("i_next".into(), tfd::INT32, next));
    for (v, t) in &vars[1..2 + ARGS.len()] {
        let same = tf.node(None, "Identity", &[v], vec![("T", ty(*t))]);
        outputs.push((format!("{v}_next"), *t, same));
    }
    for (r, item) in &items {
        let list = format!("{r}_list");
        let t = RESULTS.iter().find(|x| x.0 == *r).expect("a result").1;
        let set = tf.node(
            None,
            "TensorListSetItem",
            &[&list, "i", item],
            vec![("element_dtype", ty(t))],
        );
        outputs.push((format!("{list}_next"), tfd::VARIANT, set));
    }
    let args: Vec<(&str, i32)> = vars.iter().map(|(v, t)| (v.as_str(), *t)).collect();
    let outs: Vec<(&str, i32, String)> = outputs
        .iter()
        .map(|(n, t, v)| (n.as_str(), *t, v.clone()))
        .collect();
    function(
        &function_name(name),
        &args,
        std::mem::take(&mut tf.nodes),
        &outs,
    )
}
