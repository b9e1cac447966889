//! The `model_def_script` DeePMD-kit's runtimes read from an exported model (JSON: the
//! training input's `model` section): written from the model's own settings, since a
//! file's training input is not always at hand.

use dpc_formats::json::{python_float_repr, write_string};
use dpc_formats::Value;

use crate::model::Model;

/// The type map, the descriptor's type, rcut and sel, and the fitting's parameter sizes;
/// `full` says where the whole model is.
pub fn model_def_script(tree: &Value, model: &Model, full: &str) -> String {
    let desc = tree
        .get("model")
        .and_then(|m| m.get("descriptor"))
        .and_then(|d| d.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    let mut s = String::from("{\"type_map\":[");
    for (i, t) in model.type_map.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        write_string(t, &mut s);
    }
    s.push_str("],\"descriptor\":{\"type\":");
    write_string(desc, &mut s);
    s.push_str(&format!(
        ",\"rcut\":{},\"sel\":{:?}}},\"fitting_net\":{{\"type\":\"ener\",\"numb_fparam\":{},\"numb_aparam\":{}}},\"dpc\":",
        python_float_repr(model.rcut(), "NaN", "Infinity"),
        model.sel(),
        model.dim_fparam(),
        model.dim_aparam()
    ));
    write_string(&format!("written by dpc; {full}"), &mut s);
    s.push('}');
    s
}
