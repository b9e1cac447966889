//! The model (deepmd/tf/model/model.py `StandardModel.serialize`): descriptor, energy fitting
//! and the graph's `out_bias`/`out_std`.

use super::fitting::ener_fitting;
use super::script::J;
use super::se::{se_a_or_r, se_e3};
use super::se_atten::se_atten;
use super::{bad, dict, s, unsupported, G, R};
use crate::tree::{NdArray, Value};

pub(super) fn build_model(g: &G, jm: &J) -> R<Value> {
    let kind = jm.str("type", "standard")?;
    if kind != "standard" {
        return Err(unsupported(format!(
            "model type `{kind}` (dpc reads standard energy models)"
        )));
    }
    if jm.get("spin").is_some() {
        return Err(unsupported("spin models are not supported"));
    }
    if jm.get("use_srtab").is_some() {
        return Err(unsupported(
            "models with a pair table (use_srtab) are not supported",
        ));
    }
    if jm.get("model_dict").is_some() {
        return Err(unsupported("multi-task models are not supported"));
    }
    if jm.get("modifier").is_some() {
        return Err(unsupported(
            "models with a data modifier (DPLR) are not supported",
        ));
    }
    let fit = jm.sub("fitting_net")?;
    let ftype = fit.str("type", "ener")?;
    if ftype != "ener" {
        return Err(unsupported(format!(
            "fitting `{ftype}` (dpc reads energy models; dipole, polar, DOS and other tensor fittings are not supported)"
        )));
    }
    // The script's type_map; graphs trained without one name their types in model_attr/tmap.
    let type_map = match jm.get("type_map") {
        Some(v) => v.clone(),
        None => match g.string("model_attr/tmap")? {
            Some(t) if !t.trim().is_empty() => Value::List(t.split_whitespace().map(s).collect()),
            _ => Value::Null,
        },
    };
    let desc_j = jm.sub("descriptor")?;
    let dtype = desc_j.str("type", "")?;
    let explicit = matches!(dtype.as_str(), "se_atten" | "dpa1" | "se_atten_v2");
    let desc = match dtype.as_str() {
        "se_e2_a" | "se_a" => se_a_or_r(g, &desc_j, &type_map, false)?,
        "se_e2_r" | "se_r" => se_a_or_r(g, &desc_j, &type_map, true)?,
        "se_e3" | "se_at" | "se_a_3be" => se_e3(g, &desc_j, &type_map)?,
        "se_atten" | "dpa1" | "se_atten_v2" => se_atten(g, &desc_j, jm, &type_map)?,
        other => {
            return Err(unsupported(format!(
                "descriptor `{other}` (dpc reads .pb models with se_e2_a/se_a, se_e2_r/se_r, se_e3/se_at, se_atten/dpa1)"
            )))
        }
    };
    if jm.get("type_embedding").is_some() && !explicit {
        return Err(unsupported(format!(
            "a model-level type_embedding with descriptor `{dtype}` (TensorFlow only; no other backend has it)"
        )));
    }
    let fitting = ener_fitting(g, &fit, &desc, explicit, &type_map)?;
    let nt = type_map.as_list().map_or(0, <[Value]>::len);
    let (out_bias, out_std) = out_stats(g, nt)?;
    Ok(dict(vec![
        ("@class", s("Model")),
        ("type", s("standard")),
        ("@version", Value::Int(2)),
        (
            "type_map",
            if type_map.is_null() {
                Value::List(vec![])
            } else {
                type_map
            },
        ),
        ("descriptor", desc.tree),
        ("fitting", fitting),
        ("atom_exclude_types", Value::List(vec![])),
        ("pair_exclude_types", Value::List(vec![])),
        ("rcond", Value::Null),
        ("preset_out_bias", Value::Null),
        (
            "@variables",
            dict(vec![
                ("out_bias", Value::Array(out_bias)),
                ("out_std", Value::Array(out_std)),
            ]),
        ),
    ]))
}

/// The out_bias/out_std the TensorFlow energy model applies (`init_out_stat` inside
/// `variable_scope("model_attr")` twice), shape `[1, ntypes, 1]`; 0 and 1 when absent.
fn out_stats(g: &G, nt: usize) -> R<(NdArray, NdArray)> {
    for pre in ["model_attr/model_attr/", "model_attr/"] {
        let (bn, sn) = (format!("{pre}t_out_bias"), format!("{pre}t_out_std"));
        if let (Some(b), Some(sd)) = (g.opt(&bn)?, g.opt(&sn)?) {
            let fix = |a: NdArray, name: &str| -> R<NdArray> {
                if a.len() != nt || !a.dtype.is_float() {
                    return Err(bad(format!(
                        "`{name}` is {} {:?}, expected [1, {nt}, 1] floats",
                        a.dtype.name(),
                        a.shape
                    )));
                }
                Ok(NdArray::from_f64(vec![1, nt, 1], &a.to_f64_vec()))
            };
            return Ok((fix(b, &bn)?, fix(sd, &sn)?));
        }
    }
    Ok((
        NdArray::from_f64(vec![1, nt, 1], &vec![0.0; nt]),
        NdArray::from_f64(vec![1, nt, 1], &vec![1.0; nt]),
    ))
}
