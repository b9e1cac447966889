//! TensorFlow SavedModel directories written by DeePMD-kit's JAX backend (`.savedmodel`,
//! via jax2tf). The model's functions are `XlaCallModule` ops whose StableHLO has the
//! weights compiled in; the small getters (`get_type_map`, `get_rcut`,
//! `get_model_def_script`, ...) are functions returning one constant each. dpc reads
//! those; it cannot recover the weights (DeePMD-kit cannot either: its converter refuses
//! `.savedmodel` as a source).

use std::path::Path;

use prost::Message;

use crate::tf::graph_def::{attr_value, GraphDef, NodeDef};
use crate::tf::saved_object_graph::SavedObjectGraph;
use crate::tf::to_ndarray;
use crate::tree::{Dict, Value};
use crate::FormatError;

/// tensorflow/core/protobuf/saved_model.proto and meta_graph.proto: the part DeePMD-kit's
/// C++ `DeepPotJAX` reads through `TF_LoadSessionFromSavedModel`, and the object graph
/// Python's `tf.saved_model.load` needs. No `saver_def`: with one, the C++ loader runs a
/// restore op the graph does not have.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedModel {
    #[prost(int64, tag = "1")]
    pub saved_model_schema_version: i64,
    #[prost(message, repeated, tag = "2")]
    pub meta_graphs: Vec<MetaGraphDef>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MetaGraphDef {
    #[prost(message, optional, tag = "1")]
    pub meta_info_def: Option<MetaInfoDef>,
    #[prost(message, optional, tag = "2")]
    pub graph_def: Option<GraphDef>,
    #[prost(message, optional, tag = "7")]
    pub object_graph_def: Option<SavedObjectGraph>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MetaInfoDef {
    #[prost(string, repeated, tag = "4")]
    pub tags: Vec<String>,
    #[prost(string, tag = "5")]
    pub tensorflow_version: String,
}

/// `saved_model.pb`'s bytes.
pub fn encode(sm: &SavedModel) -> Vec<u8> {
    sm.encode_to_vec()
}

/// Write a SavedModel directory: `saved_model.pb` and the checkpoint of no variables (the
/// weights are constants of the functions). An existing directory is replaced only if it
/// is a SavedModel.
pub fn write_dir(dir: &Path, saved_model_pb: &[u8]) -> Result<(), FormatError> {
    let io = |what: &str, e: std::io::Error| {
        FormatError::Io(format!("cannot {what} {}: {e}", dir.display()))
    };
    if dir.exists() {
        if !dir.join("saved_model.pb").is_file() {
            return Err(FormatError::Io(format!(
                "{} exists and is not a SavedModel directory; not overwriting it",
                dir.display()
            )));
        }
        std::fs::remove_dir_all(dir).map_err(|e| io("replace", e))?;
    }
    let vars = dir.join("variables");
    std::fs::create_dir_all(&vars).map_err(|e| io("create", e))?;
    let (index, data) = crate::tf::checkpoint::empty_checkpoint();
    std::fs::write(vars.join("variables.index"), index).map_err(|e| io("write", e))?;
    std::fs::write(vars.join("variables.data-00000-of-00001"), data).map_err(|e| io("write", e))?;
    std::fs::write(dir.join("saved_model.pb"), saved_model_pb).map_err(|e| io("write", e))?;
    Ok(())
}

/// The getter of a dpc-written SavedModel that returns the model's serialization tree
/// (JSON), so it reads back exactly.
pub const DPC_MODEL_JSON_GETTER: &str = "get_dpc_model_json";

/// What a JAX SavedModel holds that dpc can read.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedModelInfo {
    /// `get_*` / `has_*` / ... getters and their constant values.
    pub attributes: Dict,
    /// The training input (`get_model_def_script`), when present.
    pub model_def_script: Option<Value>,
    /// Size in bytes and platforms of each `XlaCallModule` (the compiled model).
    pub modules: Vec<(usize, Vec<String>)>,
}

fn const_value(n: &NodeDef) -> Option<Value> {
    let Some(attr_value::Value::Tensor(t)) = n.attr.get("value")?.value.as_ref() else {
        return None;
    };
    if !t.string_val.is_empty() {
        let strs: Vec<Value> = t
            .string_val
            .iter()
            .map(|b| Value::Str(String::from_utf8_lossy(b).into_owned()))
            .collect();
        return Some(
            if t.tensor_shape.as_ref().is_none_or(|s| s.dim.is_empty()) {
                strs.into_iter().next()?
            } else {
                Value::List(strs)
            },
        );
    }
    let a = to_ndarray(t).ok()?;
    Some(match a.len() {
        1 if a.shape.is_empty() => match a.get_i64(0) {
            Some(i) if a.dtype == crate::tree::DType::Bool => Value::Bool(i != 0),
            Some(i) => Value::Int(i),
            None => Value::Float(a.get_f64(0)),
        },
        _ => Value::Array(a),
    })
}

/// Read `saved_model.pb` of a SavedModel directory.
pub fn inspect(dir: &Path) -> Result<SavedModelInfo, FormatError> {
    let file = dir.join("saved_model.pb");
    let bytes = std::fs::read(&file)
        .map_err(|e| FormatError::Io(format!("cannot read {}: {e}", file.display())))?;
    let sm = SavedModel::decode(bytes.as_slice())
        .map_err(|e| FormatError::invalid(format!("{}: not a SavedModel ({e})", file.display())))?;
    let mut attributes = Dict::new();
    let mut modules = Vec::new();
    let functions = sm
        .meta_graphs
        .iter()
        .filter_map(|m| m.graph_def.as_ref()?.library.as_ref())
        .flat_map(|l| &l.function);
    for f in functions {
        let name = f.signature.as_ref().map_or("", |s| s.name.as_str());
        for n in &f.node_def {
            if n.op == "XlaCallModule" {
                let size = match n.attr.get("module").and_then(|a| a.value.as_ref()) {
                    Some(attr_value::Value::S(b)) => b.len(),
                    _ => 0,
                };
                let platforms = match n.attr.get("platforms").and_then(|a| a.value.as_ref()) {
                    Some(attr_value::Value::List(l)) => {
                        l.s.iter()
                            .map(|b| String::from_utf8_lossy(b).into_owned())
                            .collect()
                    }
                    _ => vec![],
                };
                modules.push((size, platforms));
            }
        }
        // `__inference_get_rcut_1916` -> `get_rcut`: a getter is one Const (plus its output).
        let Some(getter) = name
            .strip_prefix("__inference_")
            .and_then(|s| s.rsplit_once('_'))
            .map(|(g, _)| g)
        else {
            continue;
        };
        let consts: Vec<&NodeDef> = f.node_def.iter().filter(|n| n.op == "Const").collect();
        if consts.len() == 1 && f.node_def.len() <= 3 {
            if let Some(v) = const_value(consts[0]) {
                attributes.insert(getter.to_string(), v);
            }
        }
    }
    if attributes.is_empty() && modules.is_empty() {
        return Err(FormatError::unsupported(format!(
            "{}: not a DeePMD-kit model SavedModel (no getters, no XLA modules)",
            dir.display()
        )));
    }
    let model_def_script = match attributes.get("get_model_def_script") {
        Some(Value::Str(s)) => Some(crate::json::parse(s)?),
        _ => None,
    };
    Ok(SavedModelInfo {
        attributes,
        model_def_script,
        modules,
    })
}

/// The error for evaluating or converting a SavedModel.
pub fn no_weights(dir: &Path) -> FormatError {
    FormatError::unsupported(format!(
        "{}: a JAX SavedModel keeps its weights compiled into StableHLO (XlaCallModule) and they cannot be recovered; \
         use the .hlo/.dp/.pth the model was exported from (`dpc info` shows what this file holds)",
        dir.display()
    ))
}
