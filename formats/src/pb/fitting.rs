//! The energy fitting (deepmd/tf/fit/ener.py `EnerFitting.serialize`).

use super::descriptor::Desc;
use super::names::parse_fitting;
use super::network::{matching, zeros, Collection, Net, NetSpec};
use super::script::{prec_name, J};
use super::{bad, dict, s, unsupported, G, R};
use crate::tree::{DType, NdArray, Value};

pub(super) fn ener_fitting(g: &G, f: &J, d: &Desc, mixed: bool, type_map: &Value) -> R<Value> {
    if f.usize("dim_case_embd", 0)? > 0 {
        return Err(unsupported(
            "dim_case_embd > 0 (TensorFlow does not implement it)",
        ));
    }
    if f.get("default_fparam").is_some() {
        return Err(unsupported(
            "default_fparam (TensorFlow does not implement it)",
        ));
    }
    if f.get("layer_name").is_some() || g.nodes().any(|n| n.name.starts_with("share_")) {
        return Err(unsupported("fitting nets with shared layers (layer_name)"));
    }
    let ntypes = d.ntypes;
    let (neuron_v, neuron) = f.counts("neuron", &[120, 120, 120])?;
    let resnet_dt = f.bool("resnet_dt", true)?;
    let nfp = f.usize("numb_fparam", 0)?;
    let nap = f.usize("numb_aparam", 0)?;
    let activation = f.str("activation_function", "tanh")?;
    let precision = prec_name(&f.str("precision", "default")?)?;
    let use_mask = f.bool("use_aparam_as_mask", false)?;
    let trainable =
        match f.get("trainable") {
            None => Value::List(vec![Value::Bool(true); neuron.len() + 1]),
            Some(Value::Bool(b)) => Value::List(vec![Value::Bool(*b); neuron.len() + 1]),
            Some(v @ Value::List(l)) if l.len() == neuron.len() + 1 => v.clone(),
            Some(_) => return Err(bad(
                "model definition: fitting `trainable` is neither a bool nor one entry per layer",
            )),
        };
    let ndim = if mixed { 0 } else { 1 };
    let in_dim = d.dim_out + d.tebd_dim + nfp + if use_mask { 0 } else { nap };
    let sp = NetSpec {
        neuron: &neuron,
        neuron_v: &neuron_v,
        activation: &activation,
        resnet_dt,
        precision,
        trainable: &trainable,
    };
    let mut coll = Collection::new(ndim, ntypes, "fitting_network")?;
    for (name, fname, a) in matching(g, parse_fitting)? {
        let idx = match (ndim, fname.ty) {
            (0, None) => 0,
            (1, Some(t)) if t < ntypes => t,
            _ => {
                return Err(bad(format!(
                    "fitting node `{name}` does not fit {} fitting nets for {ntypes} types",
                    if mixed { "shared" } else { "per-type" }
                )))
            }
        };
        let layer = fname.layer.unwrap_or(neuron.len());
        if layer > neuron.len() {
            return Err(bad(format!(
                "`{name}`: the fitting net has {} hidden layers",
                neuron.len()
            )));
        }
        let slot = &mut coll.nets[idx];
        if slot.is_none() {
            *slot = Some(Net::fitting(&format!("fitting net {idx}"), in_dim, &sp)?);
        }
        if let Some(net) = slot {
            net.set(layer, fname.kind, a, &name)?;
        }
    }
    let bias = match g.opt("fitting_attr/t_bias_atom_e")? {
        Some(a) if a.len() == ntypes => NdArray {
            shape: vec![ntypes, 1],
            ..a
        },
        Some(a) => {
            return Err(bad(format!(
                "fitting_attr/t_bias_atom_e has shape {:?}, expected [{ntypes}]",
                a.shape
            )))
        }
        // Old graphs fold the bias into final_layer*/bias.
        None => zeros(DType::F64, vec![ntypes, 1]),
    };
    let stat = |node: &str, n: usize| -> R<Value> {
        let a = g.get(node)?;
        if a.len() != n {
            return Err(bad(format!(
                "`{node}` has shape {:?}, expected [{n}]",
                a.shape
            )));
        }
        Ok(Value::Array(NdArray {
            shape: vec![n],
            ..a
        }))
    };
    let (mut fp_avg, mut fp_istd, mut ap_avg, mut ap_istd) =
        (Value::Null, Value::Null, Value::Null, Value::Null);
    if nfp > 0 {
        fp_avg = stat("fitting_attr/t_fparam_avg", nfp)?;
        fp_istd = stat("fitting_attr/t_fparam_istd", nfp)?;
    }
    if nap > 0 && !use_mask {
        ap_avg = stat("fitting_attr/t_aparam_avg", nap)?;
        ap_istd = stat("fitting_attr/t_aparam_istd", nap)?;
    }
    Ok(dict(vec![
        ("@class", s("Fitting")),
        ("type", s("ener")),
        ("@version", Value::Int(4)),
        ("var_name", s("energy")),
        ("ntypes", Value::Int(ntypes as i64)),
        ("dim_descrpt", Value::Int((d.dim_out + d.tebd_dim) as i64)),
        ("mixed_types", Value::Bool(mixed)),
        ("dim_out", Value::Int(1)),
        ("neuron", neuron_v.clone()),
        ("resnet_dt", Value::Bool(resnet_dt)),
        ("numb_fparam", Value::Int(nfp as i64)),
        ("numb_aparam", Value::Int(nap as i64)),
        ("dim_case_embd", f.or("dim_case_embd", Value::Int(0))),
        ("default_fparam", f.or("default_fparam", Value::Null)),
        ("rcond", f.or("rcond", Value::Null)),
        ("tot_ener_zero", f.or("tot_ener_zero", Value::Bool(false))),
        ("trainable", trainable.clone()),
        ("atom_ener", f.or("atom_ener", Value::List(vec![]))),
        ("activation_function", s(&activation)),
        ("precision", s(precision)),
        ("layer_name", Value::Null),
        ("use_aparam_as_mask", Value::Bool(use_mask)),
        ("spin", Value::Null),
        ("exclude_types", Value::List(vec![])),
        ("nets", coll.finish()?),
        (
            "@variables",
            dict(vec![
                ("bias_atom_e", Value::Array(bias)),
                ("fparam_avg", fp_avg),
                ("fparam_inv_std", fp_istd),
                ("aparam_avg", ap_avg),
                ("aparam_inv_std", ap_istd),
                ("case_embd", Value::Null),
            ]),
        ),
        ("type_map", type_map.clone()),
    ]))
}
