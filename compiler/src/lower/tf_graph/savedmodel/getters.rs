//! The getters DeePMD-kit's runtimes read (each a function returning one constant), and
//! the serialization tree for dpc.

use dpc_formats::tf::graph_def::dtype as tfd;
use dpc_formats::Value;

use super::function::function;
use super::{function_name, Exported, Returns, Spec, MODEL_JSON_GETTER};
use crate::lower::model_def_script::model_def_script;
use crate::lower::tf_graph::ops::Tf;
use crate::model::Model;

enum Const {
    F64s(Vec<f64>),
    I64s(Vec<i64>),
    Bool(bool),
    Strs(Vec<String>),
}

/// `name` returning `value` of shape `dims` (`[]`: a scalar).
fn getter(name: &'static str, dims: &[i64], value: Const) -> Exported {
    let mut tf = Tf::default();
    let (dtype, node) = match value {
        Const::F64s(v) => (
            tfd::DOUBLE,
            tf.constant(
                None,
                tfd::DOUBLE,
                dims,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
        ),
        Const::I64s(v) => (
            tfd::INT64,
            tf.constant(
                None,
                tfd::INT64,
                dims,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
        ),
        Const::Bool(b) => (
            tfd::BOOL,
            tf.constant(None, tfd::BOOL, dims, vec![u8::from(b)]),
        ),
        Const::Strs(v) => (
            tfd::STRING,
            tf.strings(None, dims, v.into_iter().map(String::into_bytes).collect()),
        ),
    };
    let def = function(
        &function_name(name),
        &[],
        tf.nodes,
        &[("output", dtype, node)],
    )
    .expect("a getter's constant is a known op");
    Exported {
        attribute: name,
        def,
        args: vec![],
        returns: Returns::One(Spec::new("output", dtype, dims)),
    }
}

/// What `DeepPotJAX` (C++) and `TFModelWrapper` (Python) read, and the tree.
pub(super) fn getters(tree: &Value, model: &Model, json: &str) -> Vec<Exported> {
    let ntypes = model.ntypes();
    let sel: Vec<i64> = model.sel().iter().map(|&s| s as i64).collect();
    let sel_type: Vec<i64> = model.sel_type().into_iter().map(|t| t as i64).collect();
    let nfp = model.dim_fparam();
    let default_fparam = model.default_fparam();
    let mut out = vec![
        getter("get_rcut", &[], Const::F64s(vec![model.rcut()])),
        getter("get_dim_fparam", &[], Const::I64s(vec![nfp as i64])),
        getter(
            "get_dim_aparam",
            &[],
            Const::I64s(vec![model.dim_aparam() as i64]),
        ),
        getter("get_sel", &[sel.len() as i64], Const::I64s(sel)),
        getter(
            "get_sel_type",
            &[sel_type.len() as i64],
            Const::I64s(sel_type),
        ),
        getter(
            "get_type_map",
            &[ntypes as i64],
            Const::Strs(model.type_map.clone()),
        ),
        getter(
            "has_message_passing",
            &[],
            Const::Bool(model.descriptor.has_message_passing()),
        ),
        getter("mixed_types", &[], Const::Bool(model.mixed_types())),
        getter("is_aparam_nall", &[], Const::Bool(false)),
        getter(
            "model_output_type",
            &[2],
            Const::Strs(vec!["energy".into(), "mask".into()]),
        ),
        getter(
            "get_model_def_script",
            &[],
            Const::Strs(vec![model_def_script(
                tree,
                model,
                "the serialized model is get_dpc_model_json",
            )]),
        ),
        getter(
            "has_default_fparam",
            &[],
            Const::Bool(default_fparam.is_some()),
        ),
    ];
    let default_fparam = default_fparam.unwrap_or_default();
    out.push(getter(
        "get_default_fparam",
        &[default_fparam.len() as i64],
        Const::F64s(default_fparam.to_vec()),
    ));
    if let Some(d) = model.min_nbor_dist {
        out.push(getter("get_min_nbor_dist", &[], Const::F64s(vec![d])));
    }
    out.push(getter(
        MODEL_JSON_GETTER,
        &[],
        Const::Strs(vec![json.to_string()]),
    ));
    out
}
