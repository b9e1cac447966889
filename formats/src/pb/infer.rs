//! Graphs without a training script (DeePMD-kit < 2, `dp convert-from`): a minimal model JSON
//! inferred from the graph.

use super::{bad, dict, ints, s, unsupported, G, R};
use crate::tf::graph_def::{attr_value, dtype, NodeDef};
use crate::tree::Value;

const ACT_OPS: [(&str, &str); 10] = [
    ("Tanh", "tanh"),
    ("Relu", "relu"),
    ("Relu6", "relu6"),
    ("Softplus", "softplus"),
    ("Sigmoid", "sigmoid"),
    ("Gelu", "gelu"),
    ("GeluCustom", "gelu"),
    ("Elu", "elu"),
    ("Selu", "selu"),
    ("Silu", "silu"),
];

/// The activation of the ops under `prefix` (none: linear).
fn scope_activation(g: &G, prefix: &str) -> R<String> {
    let mut found: Vec<&str> = Vec::new();
    for n in g.nodes().filter(|n| n.name.starts_with(prefix)) {
        if let Some(&(_, a)) = ACT_OPS.iter().find(|(op, _)| *op == n.op) {
            if !found.contains(&a) {
                found.push(a);
            }
        }
    }
    match found.as_slice() {
        [] => Ok("linear".into()),
        [a] => Ok(a.to_string()),
        _ => Err(unsupported(format!(
            "mixed activations under `{prefix}`: {found:?}"
        ))),
    }
}

/// A float op attribute (float32): its shortest decimal, as the user typed it.
fn attr_f32(n: &NodeDef, key: &str) -> Option<f64> {
    match n.attr.get(key)?.value.as_ref()? {
        attr_value::Value::F(x) => format!("{x}").parse().ok(),
        _ => None,
    }
}

fn attr_ints(n: &NodeDef, key: &str) -> Option<Vec<usize>> {
    match n.attr.get(key)?.value.as_ref()? {
        attr_value::Value::List(l) => l.i.iter().map(|&i| usize::try_from(i).ok()).collect(),
        _ => None,
    }
}

fn precision_of(g: &G, name: &str) -> R<&'static str> {
    match g.dtype(name)? {
        Some(dtype::DOUBLE) => Ok("float64"),
        Some(dtype::FLOAT) => Ok("float32"),
        Some(dtype::HALF) => Ok("float16"),
        _ => Err(bad(format!("`{name}` is not a float constant"))),
    }
}

/// Output widths of `fmt(l)` for `l = first, first+1, ...` while the node exists.
fn widths(g: &G, fmt: impl Fn(usize) -> String, first: usize) -> R<Vec<(usize, usize)>> {
    let mut out = Vec::new();
    let mut l = first;
    while let Some(shape) = g.shape(&fmt(l))? {
        match shape.as_slice() {
            &[i, o] => out.push((i, o)),
            _ => return Err(bad(format!("`{}` is not a matrix", fmt(l)))),
        }
        l += 1;
        if l > first + 1000 {
            break;
        }
    }
    Ok(out)
}

/// The model section of a training script, inferred from a graph that has none (SPEC §6).
pub(super) fn infer_model_json(g: &G) -> R<Value> {
    let tmap = g
        .string("model_attr/tmap")?
        .ok_or_else(|| bad("the graph has neither a training script nor model_attr/tmap"))?;
    let type_map: Vec<String> = tmap.split_whitespace().map(String::from).collect();
    let ntypes = g
        .scalar_i64("descrpt_attr/ntypes")?
        .ok_or_else(|| bad("the graph has no descrpt_attr/ntypes"))?;
    if usize::try_from(ntypes).ok() != Some(type_map.len()) {
        return Err(bad(format!(
            "model_attr/tmap names {} types, descrpt_attr/ntypes says {ntypes}",
            type_map.len()
        )));
    }
    let ntypes = type_map.len();
    let env: Vec<&NodeDef> = g
        .nodes()
        .filter(|n| {
            matches!(
                n.op.as_str(),
                "ProdEnvMatA" | "ProdEnvMatR" | "ProdEnvMatAMix" | "DescrptSeA" | "DescrptSeR"
            )
        })
        .collect();
    let [env] = env.as_slice() else {
        return Err(unsupported(format!(
            "a graph without training script and {} environment-matrix ops (dpc infers se_e2_a, se_e2_r and se_e3 graphs)",
            env.len()
        )));
    };
    let rcut = g
        .scalar_f64("descrpt_attr/rcut")?
        .ok_or_else(|| bad("the graph has no descrpt_attr/rcut"))?;
    let rs_key = if env.attr.contains_key("rcut_r_smth") {
        "rcut_r_smth"
    } else {
        "rcut_smth"
    };
    let rcut_smth = attr_f32(env, rs_key)
        .ok_or_else(|| bad(format!("`{}` has no float attribute {rs_key}", env.name)))?;
    let tos = g.type_one_side();
    let (dtype, sel) = match env.op.as_str() {
        "ProdEnvMatA" | "DescrptSeA" => (
            if g.has("filter_type_all/matrix_1_0_0") {
                "se_e3"
            } else {
                "se_e2_a"
            },
            attr_ints(env, "sel_a"),
        ),
        "ProdEnvMatR" | "DescrptSeR" => ("se_e2_r", attr_ints(env, "sel")),
        _ => return Err(unsupported(
            "a se_atten graph without training script (DeePMD-kit always writes one for se_atten)",
        )),
    };
    let sel = sel.ok_or_else(|| bad(format!("`{}` has no sel attribute", env.name)))?;
    let (fmt, scope): (Box<dyn Fn(usize) -> String>, &str) = if dtype == "se_e3" {
        (
            Box::new(|l| format!("filter_type_all/matrix_{l}_0_0")),
            "filter_type_all/",
        )
    } else if tos == Some(true) {
        (
            Box::new(|l| format!("filter_type_all/matrix_{l}_0")),
            "filter_type_all/",
        )
    } else {
        (
            Box::new(|l| format!("filter_type_0/matrix_{l}_0")),
            "filter_type_0/",
        )
    };
    let shapes = widths(g, &fmt, 1)?;
    let neuron: Vec<usize> = shapes.iter().map(|s| s.1).collect();
    let last = *neuron
        .last()
        .ok_or_else(|| bad("the graph has no embedding net to infer the descriptor from"))?;
    let resnet_dt = (1..=neuron.len()).any(|l| g.has(&fmt(l).replace("/matrix_", "/idt_")));
    let mut desc = vec![
        ("type", s(dtype)),
        ("sel", ints(&sel)),
        ("rcut_smth", Value::Float(rcut_smth)),
        ("rcut", Value::Float(rcut)),
        ("neuron", ints(&neuron)),
        ("resnet_dt", Value::Bool(resnet_dt)),
        ("activation_function", s(&scope_activation(g, scope)?)),
        ("precision", s(precision_of(g, &fmt(1))?)),
    ];
    if dtype != "se_e3" {
        desc.push(("type_one_side", Value::Bool(tos == Some(true))));
    }
    if dtype == "se_e2_a" && tos != Some(true) {
        // Excluded pairs have no embedding net (one-side exclusions hide in mask constants).
        let mut excl = Vec::new();
        for i in 0..ntypes {
            for j in i..ntypes {
                if !g.has(&format!("filter_type_{i}/matrix_1_{j}")) {
                    excl.push(ints(&[i, j]));
                }
            }
        }
        desc.push(("exclude_types", Value::List(excl)));
    }
    let avg = g.get("descrpt_attr/t_avg")?;
    let zero_avg = avg.to_f64_vec().iter().all(|&x| x == 0.0);
    desc.push(("set_davg_zero", Value::Bool(zero_avg)));

    let nfp = g.scalar_i64("fitting_attr/dfparam")?.unwrap_or(0);
    let nap = g.scalar_i64("fitting_attr/daparam")?.unwrap_or(0);
    let (nfp, nap) = match (u32::try_from(nfp), u32::try_from(nap)) {
        (Ok(a), Ok(b)) => (a as usize, b as usize),
        _ => return Err(bad("fitting_attr/dfparam or daparam is not a count")),
    };
    let fpre = if g.has("layer_0_type_0/matrix") {
        "_type_0"
    } else {
        ""
    };
    let fmat = |l: usize| format!("layer_{l}{fpre}/matrix");
    let fshapes = widths(g, fmat, 0)?;
    let fneuron: Vec<usize> = fshapes.iter().map(|s| s.1).collect();
    let in_dim = fshapes
        .first()
        .map(|s| s.0)
        .ok_or_else(|| bad("the graph has no fitting net (layer_0*/matrix)"))?;
    let use_mask = nap > 0 && !g.has("fitting_attr/t_aparam_avg");
    let dim_descrpt = in_dim
        .checked_sub(nfp + if use_mask { 0 } else { nap })
        .ok_or_else(|| bad("the fitting net is narrower than its parameters"))?;
    if dtype == "se_e2_a" {
        if last == 0 {
            return Err(bad("the embedding net's last layer has no outputs"));
        }
        desc.push(("axis_neuron", Value::Int((dim_descrpt / last) as i64)));
    }
    let mut fit = vec![
        ("type", s("ener")),
        ("neuron", ints(&fneuron)),
        (
            "resnet_dt",
            Value::Bool((0..fneuron.len()).any(|l| g.has(&format!("layer_{l}{fpre}/idt")))),
        ),
        ("numb_fparam", Value::Int(nfp as i64)),
        ("numb_aparam", Value::Int(nap as i64)),
        (
            "activation_function",
            s(&scope_activation(g, &format!("layer_0{fpre}/"))?),
        ),
        ("precision", s(precision_of(g, &fmat(0))?)),
        ("use_aparam_as_mask", Value::Bool(use_mask)),
    ];
    let atom_ener = (0..ntypes)
        .map(|i| {
            g.scalar_f64(&format!("atom_{i}_ener"))
                .map(|v| v.map_or(Value::Null, Value::Float))
        })
        .collect::<R<Vec<_>>>()?;
    if atom_ener.iter().any(|v| !v.is_null()) {
        fit.push(("atom_ener", Value::List(atom_ener)));
    }
    Ok(dict(vec![
        (
            "type_map",
            Value::List(type_map.iter().map(|t| s(t)).collect()),
        ),
        ("descriptor", dict(desc)),
        ("fitting_net", dict(fit)),
    ]))
}
