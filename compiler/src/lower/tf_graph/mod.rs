//! The IR as a frozen TensorFlow graph (`.pb`) that DeePMD-kit's TensorFlow runtime (its
//! Python `DeepPot` and C++ `DeepPotTF`, so LAMMPS) feeds and fetches: the placeholders
//! `t_coord`, `t_type`, `t_natoms`, `t_box`, `t_mesh` (and `t_fparam`, `t_aparam`), the
//! outputs `o_energy`, `o_force`, `o_virial`, `o_atom_energy`, `o_atom_virial`, and the
//! attribute constants it reads.
//!
//! The neighbour list, forces and virials come from DeePMD-kit's own ops, as in its graphs:
//! a `ProdEnvMat*` op builds the list (from `t_mesh`, which carries an MD code's list), and
//! `ProdForceSe*`/`ProdVirialSe*` turn the energy's gradient into forces and virials. The
//! energy and its gradient are the IR, lowered op by op, in one of two forms (`Form`):
//! on DeePMD-kit's environment matrix (se_e2_a, se_e2_r, se_e3, as its own graphs do), or
//! on the list's pair vectors (every other descriptor without message passing: DPA-1,
//! se_e3_tebd, hybrids, exclusions). The serialization tree rides along in the string
//! constant `dpc_attr/model_json`, so dpc reads the file back exactly.

mod ops;
pub mod savedmodel;

use std::collections::HashMap;

use dpc_formats::tf::graph_def::{dtype as tfd, GraphDef, VersionDef};
use dpc_formats::Value;

use crate::build::{
    build_from_env_mat, build_from_rij, env_io, env_mat_form, io, rij_io, EnvMatForm,
};
use crate::graph::{verify::verify, Graph, GraphError, Tensor};
use crate::model::Model;
use ops::{float, int, ints, shape, ty, Lowering, Tf};

/// The name of the constant holding the serialization tree (JSON).
pub use dpc_formats::pb::DPC_MODEL_JSON as MODEL_JSON;

/// How the graph gets the geometry the IR computes on, and gives back its gradient.
enum Form<'m> {
    /// DeePMD-kit's descriptor ops (`ProdEnvMatA`, `ProdEnvMatR`) compute the normalised
    /// environment matrix, as in its se_e2_a, se_e2_r and se_e3 graphs.
    EnvMat(EnvMatForm<'m>),
    /// `ProdEnvMatA` (per-type blocks) or `ProdEnvMatAMix` (one list over all types) only
    /// builds the list and the pair vectors `r_j - r_i`; the IR computes the rest.
    PairVectors { mixed: bool },
}

/// The form `model` is written in: DeePMD-kit's descriptor ops where they compute what the
/// model does, else the pair vectors.
fn form(model: &Model) -> Result<Form<'_>, GraphError> {
    if let Some(f) = env_mat_form(model) {
        return Ok(Form::EnvMat(f));
    }
    let d = &model.descriptor;
    if d.has_message_passing() {
        return Err(GraphError(format!(
            "writing .pb: {} passes messages between atoms, which DeePMD-kit's TensorFlow \
             runtime cannot run (its MD interface exchanges no ghost-atom features); \
             write .pth, .savedmodel or .hlo instead",
            d.name()
        )));
    }
    Ok(Form::PairVectors {
        mixed: d.mixed_types(),
    })
}

/// What the geometry step hands the force and virial ops.
struct Geometry {
    /// `[nf, nloc * nnei * ncomp]` the energy's derivative by the descriptor rows.
    net_deriv: String,
    /// `[nf, nloc * nnei * ncomp * 3]` the rows' derivative by the centre's position.
    env_deriv: String,
    rij: String,
    nlist: String,
    /// `[nf * nloc]` atomic energies.
    atom_energy: String,
    radial: bool,
}

/// The placeholders and sizes every form reads.
struct Frame {
    coord: String,
    atype: String,
    box_: String,
    natoms: String,
    mesh: String,
    nloc: String,
    nall: String,
    /// `i32[nf * nloc]` the centres' types.
    loc_types: String,
    /// Graph inputs shared by both forms (frame and atomic parameters, centre types).
    inputs: HashMap<&'static str, String>,
}

/// A `.pb` of `model` (whose serialization tree is `tree`).
pub fn pb_graph(tree: &Value, model: &Model) -> Result<Vec<u8>, GraphError> {
    let form = form(model)?;
    let g = match form {
        Form::EnvMat(_) => build_from_env_mat(model),
        Form::PairVectors { .. } => build_from_rij(model),
    }
    .map_err(|e| GraphError(format!("writing .pb: {}", e.0)))?;
    verify(&g).map_err(|e| GraphError(format!("the built graph fails verification: {e}")))?;
    let mut tf = Tf::default();
    let fr = frame(&mut tf, model)?;
    attributes(&mut tf, tree, model)?;
    let geo = match form {
        Form::EnvMat(f) => on_env_mat(&mut tf, &fr, &g, model, &f)?,
        Form::PairVectors { mixed } => on_pair_vectors(&mut tf, &fr, &g, model, mixed)?,
    };
    outputs(&mut tf, &fr, &geo, model.nnei());
    let gd = GraphDef {
        node: tf.nodes,
        library: None,
        versions: Some(VersionDef {
            producer: 2474,
            min_consumer: 0,
        }),
    };
    Ok(dpc_formats::tf::encode(&gd))
}

/// The placeholders, as DeePMD-kit declares them, reshaped per frame.
fn frame(tf: &mut Tf, model: &Model) -> Result<Frame, GraphError> {
    let ntypes = model.ntypes();
    let t_coord = placeholder(tf, "t_coord", tfd::DOUBLE, &[-1]);
    let t_type = placeholder(tf, "t_type", tfd::INT32, &[-1]);
    let natoms = placeholder(tf, "t_natoms", tfd::INT32, &[ntypes as i64 + 2]);
    let t_box = placeholder(tf, "t_box", tfd::DOUBLE, &[-1]);
    let mesh = placeholder(tf, "t_mesh", tfd::INT32, &[-1]);

    // Coordinates [nf, nall*3], types [nf, nall], box [nf, 9].
    let nloc = tf.element(&natoms, 0);
    let nall = tf.element(&natoms, 1);
    let minus1 = tf.i32s(&[-1], true);
    let three = tf.i32s(&[3], true);
    let nall3 = tf.binary("Mul", &nall, &three, tfd::INT32);
    let s = tf.pack(&[minus1.clone(), nall3]);
    let coord = tf.reshape(None, &t_coord, &s, tfd::DOUBLE);
    let s = tf.pack(&[minus1.clone(), nall.clone()]);
    let atype = tf.reshape(None, &t_type, &s, tfd::INT32);
    let s = tf.i32s(&[-1, 9], false);
    let box_ = tf.reshape(None, &t_box, &s, tfd::DOUBLE);

    let begin = tf.i32s(&[0, 0], false);
    let size = tf.pack(&[minus1, nloc.clone()]);
    let loc_types = tf.node(
        None,
        "Slice",
        &[&atype, &begin, &size],
        vec![("T", ty(tfd::INT32)), ("Index", ty(tfd::INT32))],
    );
    let flat = tf.i32s(&[-1], false);
    let loc_types = tf.reshape(None, &loc_types, &flat, tfd::INT32);

    let mut inputs = HashMap::new();
    let (nfp, nap) = (model.dim_fparam(), model.dim_aparam());
    if nfp > 0 {
        // [nf * nfp] -> every centre its frame's row: [nf * nloc, nfp].
        let t_fparam = placeholder(tf, "t_fparam", tfd::DOUBLE, &[-1]);
        let s = tf.i32s(&[-1, 1, nfp as i32], false);
        let fp = tf.reshape(None, &t_fparam, &s, tfd::DOUBLE);
        let one = tf.i32s(&[1], true);
        let mult = tf.pack(&[one.clone(), nloc.clone(), one]);
        let fp = tf.node(
            None,
            "Tile",
            &[&fp, &mult],
            vec![("T", ty(tfd::DOUBLE)), ("Tmultiples", ty(tfd::INT32))],
        );
        let s = tf.i32s(&[-1, nfp as i32], false);
        inputs.insert(io::FPARAM, tf.reshape(None, &fp, &s, tfd::DOUBLE));
    }
    if nap > 0 {
        // [nf * nloc * nap], the centres' rows in order.
        let t_aparam = placeholder(tf, "t_aparam", tfd::DOUBLE, &[-1]);
        let s = tf.i32s(&[-1, nap as i32], false);
        inputs.insert(io::APARAM, tf.reshape(None, &t_aparam, &s, tfd::DOUBLE));
    }
    Ok(Frame {
        coord,
        atype,
        box_,
        natoms,
        mesh,
        nloc,
        nall,
        loc_types,
        inputs,
    })
}

fn placeholder(tf: &mut Tf, name: &str, t: i32, dims: &[i64]) -> String {
    tf.node(
        Some(name),
        "Placeholder",
        &[],
        vec![("dtype", ty(t)), ("shape", shape(dims))],
    )
}

/// The attribute constants DeePMD-kit reads, and the serialization tree.
fn attributes(tf: &mut Tf, tree: &Value, model: &Model) -> Result<(), GraphError> {
    tf.scalar_f64("descrpt_attr/rcut", model.rcut());
    let int_scalar = |tf: &mut Tf, name: &str, v: usize| {
        tf.constant(
            Some(name),
            tfd::INT32,
            &[],
            (v as i32).to_le_bytes().to_vec(),
        );
    };
    int_scalar(tf, "descrpt_attr/ntypes", model.ntypes());
    let sel: Vec<i32> = model.descriptor.sel().iter().map(|&s| s as i32).collect();
    for name in ["descrpt_attr/sel", "descrpt_attr/original_sel"] {
        tf.constant(
            Some(name),
            tfd::INT32,
            &[sel.len() as i64],
            sel.iter().flat_map(|x| x.to_le_bytes()).collect(),
        );
    }
    tf.string("model_attr/tmap", &model.type_map.join(" "));
    tf.string("model_attr/model_type", "ener");
    tf.string("model_attr/model_version", "1.1");
    int_scalar(tf, "fitting_attr/dfparam", model.dim_fparam());
    int_scalar(tf, "fitting_attr/daparam", model.dim_aparam());
    if let Some(m) = model.min_nbor_dist {
        tf.scalar_f64("train_attr/min_nbor_dist", m);
    }
    let json = dpc_formats::json::write_tree(tree)
        .map_err(|e| GraphError(format!("writing the model's tree: {e}")))?;
    tf.string(MODEL_JSON, &json);
    Ok(())
}

/// `t` as float64 little-endian bytes.
fn f64_bytes(t: &Tensor) -> Vec<u8> {
    t.to_f64_vec()
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect()
}

/// `ProdEnvMatA`/`ProdEnvMatR` compute the normalised matrix; the IR takes it to the energy
/// and the energy's gradient by it (the `net_deriv` of the force and virial ops).
fn on_env_mat(
    tf: &mut Tf,
    fr: &Frame,
    g: &Graph,
    model: &Model,
    form: &EnvMatForm,
) -> Result<Geometry, GraphError> {
    let EnvMatForm {
        env, stats, radial, ..
    } = *form;
    let (ntypes, nnei) = (model.ntypes(), model.nnei());
    let ncomp = if radial { 1 } else { 4 };
    let (avg, std) = (f64_bytes(&stats.davg), f64_bytes(&stats.dstd));
    if avg.len() != ntypes * nnei * ncomp * 8 || std.len() != avg.len() {
        return Err(GraphError(
            "writing .pb: descriptor statistics of the wrong size".into(),
        ));
    }
    let dims = [ntypes as i64, (nnei * ncomp) as i64];
    let davg = tf.constant(Some("descrpt_attr/t_avg"), tfd::DOUBLE, &dims, avg);
    let dstd = tf.constant(Some("descrpt_attr/t_std"), tfd::DOUBLE, &dims, std);
    let sel: Vec<i64> = model.descriptor.sel().iter().map(|&s| s as i64).collect();
    let (op, attrs) = if radial {
        (
            "ProdEnvMatR",
            vec![
                ("T", ty(tfd::DOUBLE)),
                ("rcut", float(env.rcut as f32)),
                ("rcut_smth", float(env.rcut_smth as f32)),
                ("sel", ints(&sel)),
            ],
        )
    } else {
        (
            "ProdEnvMatA",
            vec![
                ("T", ty(tfd::DOUBLE)),
                ("rcut_a", float(-1.0)),
                ("rcut_r", float(env.rcut as f32)),
                ("rcut_r_smth", float(env.rcut_smth as f32)),
                ("sel_a", ints(&sel)),
                ("sel_r", ints(&vec![0; sel.len()])),
            ],
        )
    };
    let env = tf.node(
        Some(op),
        op,
        &[
            &fr.coord, &fr.atype, &fr.natoms, &fr.box_, &fr.mesh, &davg, &dstd,
        ],
        attrs,
    );

    // The IR on every frame's centres at once: [nf * nloc, nnei, ncomp].
    let s = tf.i32s(&[-1, nnei as i32, ncomp as i32], false);
    let em = tf.reshape(None, &env, &s, tfd::DOUBLE);
    let rows = rows_of(tf, &em);
    let mut inputs = fr.inputs.clone();
    inputs.insert(env_io::ENV_MAT, em);
    inputs.insert(io::ATYPE, fr.loc_types.clone());
    let out = Lowering::new(tf, rows).graph(g, &inputs)?;
    let net_deriv = per_frame(tf, fr, &out[env_io::ENV_MAT_GRAD], nnei * ncomp);
    Ok(Geometry {
        net_deriv,
        env_deriv: format!("{env}:1"),
        rij: format!("{env}:2"),
        nlist: format!("{env}:3"),
        atom_energy: out[io::ATOM_ENERGY].clone(),
        radial,
    })
}

/// `ProdEnvMatA`/`ProdEnvMatAMix` build the list within the model's cutoff and its pair
/// vectors; the IR takes those to the energy and its gradient by them. The force and virial
/// ops then see the pair vectors themselves as the descriptor: each slot's four rows are
/// `r_j - r_i` and a zero row, whose derivative by the centre's position is `-I` and 0.
fn on_pair_vectors(
    tf: &mut Tf,
    fr: &Frame,
    g: &Graph,
    model: &Model,
    mixed: bool,
) -> Result<Geometry, GraphError> {
    let (ntypes, nnei) = (model.ntypes(), model.nnei());
    let sel: Vec<i64> = if mixed {
        vec![nnei as i64]
    } else {
        model.descriptor.sel().iter().map(|&s| s as i64).collect()
    };
    // The op normalises a matrix nothing reads: zero mean, unit deviation.
    let dims = [ntypes as i64, (nnei * 4) as i64];
    let n = ntypes * nnei * 4;
    let davg = tf.constant(None, tfd::DOUBLE, &dims, vec![0; n * 8]);
    let ones: Vec<u8> = std::iter::repeat_n(1f64.to_le_bytes(), n)
        .flatten()
        .collect();
    let dstd = tf.constant(None, tfd::DOUBLE, &dims, ones);
    let op = if mixed {
        "ProdEnvMatAMix"
    } else {
        "ProdEnvMatA"
    };
    let env = tf.node(
        Some(op),
        op,
        &[
            &fr.coord, &fr.atype, &fr.natoms, &fr.box_, &fr.mesh, &davg, &dstd,
        ],
        vec![
            ("T", ty(tfd::DOUBLE)),
            ("rcut_a", float(-1.0)),
            ("rcut_r", float(model.rcut() as f32)),
            ("rcut_r_smth", float(0.0)),
            ("sel_a", ints(&sel)),
            ("sel_r", ints(&vec![0; sel.len()])),
        ],
    );
    let (rij, nlist) = (format!("{env}:2"), format!("{env}:3"));

    let s = tf.i32s(&[-1, nnei as i32, 3], false);
    let rij3 = tf.reshape(None, &rij, &s, tfd::DOUBLE);
    let rows = rows_of(tf, &rij3);
    // The list indexes each frame's atoms; the IR reads all frames' types as one array, so
    // shift each frame's entries by its offset (padding stays -1).
    let nf = rows_of(tf, &fr.coord);
    let (zero, one) = (tf.i32s(&[0], true), tf.i32s(&[1], true));
    let frames = tf.node(
        None,
        "Range",
        &[&zero, &nf, &one],
        vec![("Tidx", ty(tfd::INT32))],
    );
    let first = tf.binary("Mul", &frames, &fr.nall, tfd::INT32); // [nf]
    let s = tf.i32s(&[-1, 1], false);
    let first = tf.reshape(None, &first, &s, tfd::INT32);
    let shifted = tf.binary("AddV2", &nlist, &first, tfd::INT32);
    let real = tf.binary("GreaterEqual", &nlist, &zero, tfd::INT32);
    let flat_nlist = tf.select(&real, &shifted, &nlist, tfd::INT32);
    let s = tf.i32s(&[-1, nnei as i32], false);
    let flat_nlist = tf.reshape(None, &flat_nlist, &s, tfd::INT32);
    let flat = tf.i32s(&[-1], false);
    let all_types = tf.reshape(None, &fr.atype, &flat, tfd::INT32);
    // DPA-1 reads the type of each frame's atom 0 on padded slots.
    let s = tf.pack(&[nf, fr.nloc.clone()]);
    let pad = tf.broadcast_to(&first, &s, tfd::INT32);
    let pad = tf.reshape(None, &pad, &flat, tfd::INT32);

    let mut inputs = fr.inputs.clone();
    inputs.insert(rij_io::RIJ, rij3);
    inputs.insert(rij_io::ATYPE_LOC, fr.loc_types.clone());
    inputs.insert(io::ATYPE, all_types);
    inputs.insert(io::NLIST, flat_nlist);
    inputs.insert(io::PAD_ATOM, pad);
    let out = Lowering::new(tf, rows.clone()).graph(g, &inputs)?;

    // Each slot's rows: the gradient by r_j - r_i, then 0.
    let pads = tf.i32s(&[0, 0, 0, 0, 0, 1], false);
    let s = tf.i32s(&[3, 2], false);
    let pads = tf.reshape(None, &pads, &s, tfd::INT32);
    let grad4 = tf.node(
        None,
        "Pad",
        &[&out[rij_io::RIJ_GRAD], &pads],
        vec![("T", ty(tfd::DOUBLE)), ("Tpaddings", ty(tfd::INT32))],
    );
    let net_deriv = per_frame(tf, fr, &grad4, nnei * 4);
    let minus_i: Vec<f64> = vec![-1., 0., 0., 0., -1., 0., 0., 0., -1., 0., 0., 0.];
    let minus_i = tf.constant(
        None,
        tfd::DOUBLE,
        &[1, 12],
        minus_i.iter().flat_map(|x| x.to_le_bytes()).collect(),
    );
    let nnei_c = tf.i32s(&[nnei as i32], true);
    let slots = tf.binary("Mul", &rows, &nnei_c, tfd::INT32);
    let twelve = tf.i32s(&[12], true);
    let s = tf.pack(&[slots, twelve]);
    let env_deriv = tf.broadcast_to(&minus_i, &s, tfd::DOUBLE);
    let env_deriv = per_frame(tf, fr, &env_deriv, nnei * 12);
    Ok(Geometry {
        net_deriv,
        env_deriv,
        rij,
        nlist,
        atom_energy: out[io::ATOM_ENERGY].clone(),
        radial: false,
    })
}

/// The leading size of the float64 `x`, as an int32 scalar.
fn rows_of(tf: &mut Tf, x: &str) -> String {
    let s = tf.shape_of(x, tfd::DOUBLE);
    tf.element(&s, 0)
}

/// Per-centre rows of `width` values each, as `[nf, nloc * width]`.
fn per_frame(tf: &mut Tf, fr: &Frame, x: &str, width: usize) -> String {
    let w = tf.i32s(&[width as i32], true);
    let w = tf.binary("Mul", &fr.nloc, &w, tfd::INT32);
    let minus1 = tf.i32s(&[-1], true);
    let s = tf.pack(&[minus1, w]);
    tf.reshape(None, x, &s, tfd::DOUBLE)
}

/// Energies, forces and virials from the atomic energies and the geometry's gradient.
fn outputs(tf: &mut Tf, fr: &Frame, geo: &Geometry, nnei: usize) {
    let minus1 = tf.i32s(&[-1], true);
    let s = tf.pack(&[minus1.clone(), fr.nloc.clone()]);
    let atom_energy = tf.reshape(Some("o_atom_energy"), &geo.atom_energy, &s, tfd::DOUBLE);
    let one = tf.i32s(&[1], false);
    tf.node(
        Some("o_energy"),
        "Sum",
        &[&atom_energy, &one],
        vec![
            ("T", ty(tfd::DOUBLE)),
            ("Tidx", ty(tfd::INT32)),
            ("keep_dims", ops::boolean(false)),
        ],
    );
    let (force_op, virial_op) = if geo.radial {
        ("ProdForceSeR", "ProdVirialSeR")
    } else {
        ("ProdForceSeA", "ProdVirialSeA")
    };
    let op_attrs = || {
        let mut a = vec![("T", ty(tfd::DOUBLE))];
        if !geo.radial {
            a.push(("n_a_sel", int(nnei as i64)));
            a.push(("n_r_sel", int(0)));
        }
        a
    };
    let force = tf.node(
        Some(force_op),
        force_op,
        &[&geo.net_deriv, &geo.env_deriv, &geo.nlist, &fr.natoms],
        op_attrs(),
    );
    let virial = tf.node(
        Some(virial_op),
        virial_op,
        &[
            &geo.net_deriv,
            &geo.env_deriv,
            &geo.rij,
            &geo.nlist,
            &fr.natoms,
        ],
        op_attrs(),
    );
    let three = tf.i32s(&[3], true);
    let nall3 = tf.binary("Mul", &fr.nall, &three, tfd::INT32);
    let s = tf.pack(&[minus1.clone(), nall3]);
    tf.reshape(Some("o_force"), &force, &s, tfd::DOUBLE);
    let s = tf.i32s(&[-1, 9], false);
    tf.reshape(Some("o_virial"), &virial, &s, tfd::DOUBLE);
    let nine = tf.i32s(&[9], true);
    let nall9 = tf.binary("Mul", &fr.nall, &nine, tfd::INT32);
    let s = tf.pack(&[minus1, nall9]);
    tf.reshape(
        Some("o_atom_virial"),
        &format!("{virial}:1"),
        &s,
        tfd::DOUBLE,
    );
}
