//! The IR as a TensorFlow SavedModel (`.savedmodel`) that DeePMD-kit's JAX-backend
//! runtimes load:
//! - its C++ `DeepPotJAX` (LAMMPS plugin, C/C++ API) loads the directory with
//!   `TF_LoadSessionFromSavedModel` and calls library functions by name:
//!   `call_lower_without_atomic_virial` / `call_lower_with_atomic_virial` (extended
//!   coordinates, types, an MD code's neighbour list and the ghost mapping in; per-atom
//!   energies, forces and virials out) and getters (`get_rcut`, `get_type_map`, ...);
//! - its Python `DeepPot` (`TFModelWrapper`) loads it with `tf.saved_model.load` and calls
//!   the object graph's attributes: `call` / `call_atomic_virial` (frames of local atoms
//!   and cells; the neighbour list is built inside), `call_lower`, and the getters.
//!
//! DeePMD-kit's own SavedModels wrap StableHLO in `XlaCallModule` ops; here the functions
//! are standard TF ops, the IR lowered op by op as for `.pb` (`ops.rs`), so no XLA is
//! needed to run them. The serialization tree rides along as the getter
//! `get_dpc_model_json`.

mod call;
mod call_lower;
mod function;
mod getters;
mod object_graph;

use dpc_formats::savedmodel::{MetaGraphDef, MetaInfoDef, SavedModel};
use dpc_formats::tf::graph_def::{
    dtype as tfd, FunctionDef, FunctionDefLibrary, GraphDef, VersionDef,
};
use dpc_formats::Value;

use crate::graph::GraphError;
use crate::model::Model;

/// The getter holding the serialization tree (JSON), so dpc reads the directory back.
pub use dpc_formats::savedmodel::DPC_MODEL_JSON_GETTER as MODEL_JSON_GETTER;

/// A tensor as the object graph describes it (dims -1 where they vary).
pub(super) struct Spec {
    name: String,
    dtype: i32,
    dims: Vec<i64>,
}

impl Spec {
    fn new(name: &str, dtype: i32, dims: &[i64]) -> Self {
        Spec {
            name: name.to_string(),
            dtype,
            dims: dims.to_vec(),
        }
    }
}

/// What a function returns: one tensor, or a dict (its specs in sorted key order, the
/// order of the function's outputs).
pub(super) enum Returns {
    One(Spec),
    Dict(Vec<Spec>),
}

/// A library function Python reaches as an attribute of the loaded object.
pub(super) struct Exported {
    attribute: &'static str,
    def: FunctionDef,
    args: Vec<Spec>,
    returns: Returns,
}

/// DeePMD-kit's results, in the order its C++ reads them (the sorted keys of its dict),
/// and their dtypes.
const RESULTS: [(&str, i32); 6] = [
    ("energy", tfd::DOUBLE),
    ("energy_derv_c", tfd::DOUBLE),
    ("energy_derv_c_redu", tfd::DOUBLE),
    ("energy_derv_r", tfd::DOUBLE),
    ("energy_redu", tfd::DOUBLE),
    ("mask", tfd::INT32),
];

/// The shape of each result (`-1`: frames, atoms).
fn result_dims(name: &str) -> &'static [i64] {
    match name {
        "energy" => &[-1, -1, 1],
        "energy_derv_c" => &[-1, -1, 1, 9],
        "energy_derv_c_redu" => &[-1, 1, 9],
        "energy_derv_r" => &[-1, -1, 1, 3],
        "energy_redu" => &[-1, 1],
        _ => &[-1, -1],
    }
}

fn dict(results: &[(&str, i32)]) -> Returns {
    debug_assert!(results.windows(2).all(|w| w[0].0 < w[1].0));
    Returns::Dict(
        results
            .iter()
            .map(|&(n, t)| Spec::new(n, t, result_dims(n)))
            .collect(),
    )
}

/// The C++ API finds a function by its name less `__inference_` and a numeric suffix.
fn function_name(name: &str) -> String {
    format!("__inference_{name}_0")
}

/// `saved_model.pb` of `model` (whose serialization tree is `tree`).
pub fn saved_model(tree: &Value, model: &Model) -> Result<Vec<u8>, GraphError> {
    let (nfp, nap) = (model.dim_fparam() as i64, model.dim_aparam() as i64);
    let mut exported = Vec::new();
    let mut internal = Vec::new();
    for (attribute, name, atomic) in [
        ("call_lower", "call_lower_without_atomic_virial", false),
        (
            "call_lower_atomic_virial",
            "call_lower_with_atomic_virial",
            true,
        ),
    ] {
        exported.push(Exported {
            attribute,
            def: call_lower::call_lower(model, name, atomic)?,
            args: vec![
                Spec::new("coord", tfd::DOUBLE, &[-1, -1, 3]),
                Spec::new("atype", tfd::INT32, &[-1, -1]),
                Spec::new("nlist", tfd::INT64, &[-1, -1, -1]),
                Spec::new("mapping", tfd::INT64, &[-1, -1]),
                Spec::new("fparam", tfd::DOUBLE, &[-1, nfp]),
                Spec::new("aparam", tfd::DOUBLE, &[-1, -1, nap]),
            ],
            returns: dict(&RESULTS),
        });
    }
    for (attribute, name, lower, atomic) in [
        (
            "call",
            "call_without_atomic_virial",
            "call_lower_without_atomic_virial",
            false,
        ),
        (
            "call_atomic_virial",
            "call_with_atomic_virial",
            "call_lower_with_atomic_virial",
            true,
        ),
    ] {
        let mut defs = call::call(model, name, lower, atomic)?.into_iter();
        let def = defs.next().expect("call's outer function");
        internal.extend(defs);
        exported.push(Exported {
            attribute,
            def,
            args: vec![
                Spec::new("coord", tfd::DOUBLE, &[-1, -1, 3]),
                Spec::new("atype", tfd::INT32, &[-1, -1]),
                Spec::new("box", tfd::DOUBLE, &[-1, -1, -1]),
                Spec::new("fparam", tfd::DOUBLE, &[-1, nfp]),
                Spec::new("aparam", tfd::DOUBLE, &[-1, -1, nap]),
            ],
            returns: dict(&call::results(atomic)),
        });
    }
    let json = dpc_formats::json::write_tree(tree)
        .map_err(|e| GraphError(format!("writing the model's tree: {e}")))?;
    exported.extend(getters::getters(tree, model, &json));
    let object_graph = object_graph::object_graph(&exported);
    let mut functions: Vec<FunctionDef> = exported.into_iter().map(|e| e.def).collect();
    functions.extend(internal);
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
            object_graph_def: Some(object_graph),
        }],
    };
    Ok(dpc_formats::savedmodel::encode(&sm))
}
