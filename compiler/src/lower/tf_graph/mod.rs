//! The IR as a frozen TensorFlow graph (`.pb`) that DeePMD-kit's TensorFlow runtime (its
//! Python `DeepPot` and C++ `DeepPotTF`, so LAMMPS) feeds and fetches: the placeholders
//! `t_coord`, `t_type`, `t_natoms`, `t_box`, `t_mesh`, the outputs `o_energy`, `o_force`,
//! `o_virial`, `o_atom_energy`, `o_atom_virial`, and the attribute constants it reads.
//!
//! The environment matrix, forces and virials come from DeePMD-kit's own ops, as in its
//! graphs: `ProdEnvMatA` builds the neighbour list (from `t_mesh`, which carries an MD
//! code's list) and the normalised matrix; `ProdForceSeA` and `ProdVirialSeA` turn the
//! energy's gradient by that matrix into forces and virials. The energy and its gradient
//! are the IR (`build::build_from_env_mat`), lowered op by op. The serialization tree rides
//! along in the string constant `dpc_attr/model_json`, so dpc reads the file back exactly.
//!
//! se_e2_a and se_e3 (`ProdEnvMatA`) and se_e2_r (`ProdEnvMatR`) models without exclusions
//! only, for now (frame and atomic parameters are fed through `t_fparam`/`t_aparam`).

mod ops;

use std::collections::HashMap;

use dpc_formats::tf::graph_def::{dtype as tfd, GraphDef, VersionDef};
use dpc_formats::Value;

use crate::build::{build_from_env_mat, env_io, io};
use crate::graph::{verify::verify, Data, GraphError, Tensor};
use crate::model::{Descriptor, Model};
use ops::{float, int, ints, shape, ty, Lowering, Tf};

/// The name of the constant holding the serialization tree (JSON).
pub use dpc_formats::pb::DPC_MODEL_JSON as MODEL_JSON;

/// A `.pb` of `model` (whose serialization tree is `tree`).
pub fn pb_graph(tree: &Value, model: &Model) -> Result<Vec<u8>, GraphError> {
    // DeePMD-kit's ops for the descriptor, and their attributes.
    let (sel, env, stats, ncomp) = match &model.descriptor {
        Descriptor::SeA(d) => (&d.sel, &d.env, &d.stats, 4),
        Descriptor::SeR(d) => (&d.sel, &d.env, &d.stats, 1),
        Descriptor::SeT(d) => (&d.sel, &d.env, &d.stats, 4),
        other => {
            return Err(GraphError(format!(
                "writing .pb: {} descriptors are not lowered to TensorFlow yet (se_e2_a, se_e2_r and se_e3 are)",
                other.name()
            )))
        }
    };
    let radial = ncomp == 1;
    if env.protection != 0.0 {
        return Err(GraphError(
            "writing .pb: env_protection is not supported by DeePMD-kit's environment-matrix ops"
                .into(),
        ));
    }
    let g = build_from_env_mat(model).map_err(|e| GraphError(format!("writing .pb: {}", e.0)))?;
    verify(&g).map_err(|e| GraphError(format!("the built graph fails verification: {e}")))?;
    let ntypes = model.ntypes();
    let nnei = model.nnei();
    let mut tf = Tf::default();

    // Placeholders, as DeePMD-kit declares them.
    let ph = |tf: &mut Tf, name: &str, t: i32, dims: &[i64]| {
        tf.node(
            Some(name),
            "Placeholder",
            &[],
            vec![("dtype", ty(t)), ("shape", shape(dims))],
        )
    };
    let t_coord = ph(&mut tf, "t_coord", tfd::DOUBLE, &[-1]);
    let t_type = ph(&mut tf, "t_type", tfd::INT32, &[-1]);
    let t_natoms = ph(&mut tf, "t_natoms", tfd::INT32, &[ntypes as i64 + 2]);
    let t_box = ph(&mut tf, "t_box", tfd::DOUBLE, &[-1]);
    let t_mesh = ph(&mut tf, "t_mesh", tfd::INT32, &[-1]);

    // Attributes DeePMD-kit reads.
    tf.scalar_f64("descrpt_attr/rcut", model.rcut());
    tf.constant(
        Some("descrpt_attr/ntypes"),
        tfd::INT32,
        &[],
        (ntypes as i32).to_le_bytes().to_vec(),
    );
    let sel_i: Vec<i64> = sel.iter().map(|&s| s as i64).collect();
    let sel: Vec<i32> = sel.iter().map(|&s| s as i32).collect();
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
    let (nfp, nap) = (model.dim_fparam(), model.dim_aparam());
    for (name, n) in [("fitting_attr/dfparam", nfp), ("fitting_attr/daparam", nap)] {
        tf.constant(
            Some(name),
            tfd::INT32,
            &[],
            (n as i32).to_le_bytes().to_vec(),
        );
    }
    if let Some(m) = model.min_nbor_dist {
        tf.scalar_f64("train_attr/min_nbor_dist", m);
    }
    let json = dpc_formats::json::write_tree(tree)
        .map_err(|e| GraphError(format!("writing the model's tree: {e}")))?;
    tf.string(MODEL_JSON, &json);

    // ProdEnvMatA on the frames: coordinates [nf, nall*3], types [nf, nall], box [nf, 9].
    let nloc = tf.element(&t_natoms, 0);
    let nall = tf.element(&t_natoms, 1);
    let minus1 = tf.i32s(&[-1], true);
    let three = tf.i32s(&[3], true);
    let nall3 = tf.binary("Mul", &nall, &three, tfd::INT32);
    let s = tf.pack(&[minus1.clone(), nall3]);
    let coord = tf.reshape(None, &t_coord, &s, tfd::DOUBLE);
    let s = tf.pack(&[minus1.clone(), nall.clone()]);
    let atype = tf.reshape(None, &t_type, &s, tfd::INT32);
    let s = tf.i32s(&[-1, 9], false);
    let bx = tf.reshape(None, &t_box, &s, tfd::DOUBLE);
    let f64_bytes = |t: &Tensor| -> Vec<u8> {
        match &t.data {
            Data::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::F32(v) => v.iter().flat_map(|&x| (x as f64).to_le_bytes()).collect(),
            _ => Vec::new(),
        }
    };
    let (avg, std) = (f64_bytes(&stats.davg), f64_bytes(&stats.dstd));
    if avg.len() != ntypes * nnei * ncomp * 8 || std.len() != avg.len() {
        return Err(GraphError(
            "writing .pb: descriptor statistics of the wrong size".into(),
        ));
    }
    let dims = [ntypes as i64, (nnei * ncomp) as i64];
    let davg = tf.constant(Some("descrpt_attr/t_avg"), tfd::DOUBLE, &dims, avg);
    let dstd = tf.constant(Some("descrpt_attr/t_std"), tfd::DOUBLE, &dims, std);
    let (env_op, env_attrs) = if radial {
        (
            "ProdEnvMatR",
            vec![
                ("T", ty(tfd::DOUBLE)),
                ("rcut", float(env.rcut as f32)),
                ("rcut_smth", float(env.rcut_smth as f32)),
                ("sel", ints(&sel_i)),
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
                ("sel_a", ints(&sel_i)),
                ("sel_r", ints(&vec![0; sel_i.len()])),
            ],
        )
    };
    let env = tf.node(
        Some(env_op),
        env_op,
        &[&coord, &atype, &t_natoms, &bx, &t_mesh, &davg, &dstd],
        env_attrs,
    );
    let (deriv, rij, nlist) = (format!("{env}:1"), format!("{env}:2"), format!("{env}:3"));

    // The IR on every frame's centres at once: [nf * nloc, nnei, 4].
    let s = tf.i32s(&[-1, nnei as i32, ncomp as i32], false);
    let em = tf.reshape(None, &env, &s, tfd::DOUBLE);
    let begin = tf.i32s(&[0, 0], false);
    let size = tf.pack(&[minus1.clone(), nloc.clone()]);
    let loc_types = tf.node(
        None,
        "Slice",
        &[&atype, &begin, &size],
        vec![("T", ty(tfd::INT32)), ("Index", ty(tfd::INT32))],
    );
    let flat = tf.i32s(&[-1], false);
    let loc_types = tf.reshape(None, &loc_types, &flat, tfd::INT32);
    let em_shape = tf.node(
        None,
        "Shape",
        &[&em],
        vec![("T", ty(tfd::DOUBLE)), ("out_type", ty(tfd::INT32))],
    );
    let rows = tf.element(&em_shape, 0);
    let mut inputs: HashMap<&str, String> = HashMap::new();
    inputs.insert(env_io::ENV_MAT, em);
    inputs.insert(io::ATYPE, loc_types);
    if nfp > 0 {
        // [nf * nfp] -> every centre its frame's row: [nf * nloc, nfp].
        let t_fparam = ph(&mut tf, "t_fparam", tfd::DOUBLE, &[-1]);
        let s = tf.i32s(&[-1, 1, nfp as i32], false);
        let fp = tf.reshape(None, &t_fparam, &s, tfd::DOUBLE);
        let one_i = tf.i32s(&[1], true);
        let mult = tf.pack(&[one_i.clone(), nloc.clone(), one_i]);
        let fp = tf.node(
            None,
            "Tile",
            &[&fp, &mult],
            vec![("T", ty(tfd::DOUBLE)), ("Tmultiples", ty(tfd::INT32))],
        );
        let s = tf.i32s(&[-1, nfp as i32], false);
        let fp = tf.reshape(None, &fp, &s, tfd::DOUBLE);
        inputs.insert(io::FPARAM, fp);
    }
    if nap > 0 {
        // [nf * nloc * nap], the centres' rows in order.
        let t_aparam = ph(&mut tf, "t_aparam", tfd::DOUBLE, &[-1]);
        let s = tf.i32s(&[-1, nap as i32], false);
        let ap = tf.reshape(None, &t_aparam, &s, tfd::DOUBLE);
        inputs.insert(io::APARAM, ap);
    }
    let out = Lowering::new(&mut tf, rows).graph(&g, &inputs)?;
    let (ae, grad) = (&out[io::ATOM_ENERGY], &out[env_io::ENV_MAT_GRAD]);

    // Outputs.
    let s = tf.pack(&[minus1.clone(), nloc.clone()]);
    let atom_energy = tf.reshape(Some("o_atom_energy"), ae, &s, tfd::DOUBLE);
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
    let ndesc = tf.i32s(&[(nnei * ncomp) as i32], true);
    let width = tf.binary("Mul", &nloc, &ndesc, tfd::INT32);
    let s = tf.pack(&[minus1.clone(), width]);
    let net_deriv = tf.reshape(None, grad, &s, tfd::DOUBLE);
    let (force_op, virial_op) = if radial {
        ("ProdForceSeR", "ProdVirialSeR")
    } else {
        ("ProdForceSeA", "ProdVirialSeA")
    };
    let op_attrs = || {
        let mut a = vec![("T", ty(tfd::DOUBLE))];
        if !radial {
            a.push(("n_a_sel", int(nnei as i64)));
            a.push(("n_r_sel", int(0)));
        }
        a
    };
    let force = tf.node(
        Some(force_op),
        force_op,
        &[&net_deriv, &deriv, &nlist, &t_natoms],
        op_attrs(),
    );
    let virial = tf.node(
        Some(virial_op),
        virial_op,
        &[&net_deriv, &deriv, &rij, &nlist, &t_natoms],
        op_attrs(),
    );
    let nall3 = tf.binary("Mul", &nall, &three, tfd::INT32);
    let s = tf.pack(&[minus1.clone(), nall3]);
    tf.reshape(Some("o_force"), &force, &s, tfd::DOUBLE);
    let s = tf.i32s(&[-1, 9], false);
    tf.reshape(Some("o_virial"), &virial, &s, tfd::DOUBLE);
    let nine = tf.i32s(&[9], true);
    let nall9 = tf.binary("Mul", &nall, &nine, tfd::INT32);
    let s = tf.pack(&[minus1, nall9]);
    tf.reshape(
        Some("o_atom_virial"),
        &format!("{virial}:1"),
        &s,
        tfd::DOUBLE,
    );

    let gd = GraphDef {
        node: tf.nodes,
        versions: Some(VersionDef {
            producer: 2474,
            min_consumer: 0,
        }),
    };
    Ok(dpc_formats::tf::encode(&gd))
}
