//! The energy fitting (`/EnergyFittingNet/`): one network per atom type in the sub-scopes
//! `FN[_t]/` (the fitting loops over types), or one `FN/` for all types with descriptors of
//! mixed types (the se_atten family), `bias_atom_e` sliced or gathered by type, the
//! fparam/aparam normalisation, and the fitting's own atom exclusion mask.

use std::collections::BTreeMap;

use super::layers::{self, Roles};
use super::program::split_scope;
use super::{bad, dict, s, unsupported, Ctx};
use crate::tree::Value;
use crate::FormatError;

/// What every per-type network of one fitting shares.
#[derive(Clone, PartialEq)]
struct Shape {
    in_dim: usize,
    out_dim: usize,
    neuron: Vec<usize>,
    activation: String,
    precision: &'static str,
    resnet_dt: bool,
}

pub struct Fitting {
    pub value: Value,
    pub dim_descrpt: usize,
}

/// The `[n]` statistics of fparam (reshaped to `[1, n]`) or aparam (`[1, 1, n]`) in the
/// fitting scope: `x - avg` (subtract operand 1) and `(x - avg) * inv_std` (multiply operand 1).
fn param_stats(ctx: &Ctx, root: &str) -> Result<BTreeMap<String, String>, FormatError> {
    let prog = &ctx.prog;
    let mut out = BTreeMap::new();
    for (name, p) in &prog.params {
        if ctx.is_used(name) || p.shape.len() != 1 || !p.dtype.is_float() {
            continue;
        }
        let Some(&(i, _)) = prog.uses(p.value).iter().find(|&&(i, k)| {
            k == 0 && prog.ops[i].kind == "1.reshape" && prog.ops[i].in_scope(root)
        }) else {
            continue;
        };
        let rank = prog.ops[i]
            .outs
            .first()
            .and_then(|&v| prog.value_type(v))
            .map(|t| t.dims.len());
        let kind = match rank {
            Some(2) => "fparam",
            Some(3) => "aparam",
            _ => {
                return Err(bad(format!(
                    "{root}: statistics {name} reshaped to rank {rank:?}"
                )))
            }
        };
        let Some((j, 1)) = prog.trace_to(p.value, &["1.subtract", "1.multiply"]) else {
            continue;
        };
        let stat = if prog.ops[j].kind == "1.subtract" {
            "avg"
        } else {
            "inv_std"
        };
        if out.insert(format!("{kind}_{stat}"), name.clone()).is_some() {
            return Err(bad(format!("{root}: two buffers for {kind}_{stat}")));
        }
    }
    Ok(out)
}

pub fn energy(
    ctx: &mut Ctx,
    root: &str,
    type_map: &[String],
    layers: &BTreeMap<(String, u32), Roles>,
    numb_fparam: usize,
    numb_aparam: usize,
    mixed: bool,
) -> Result<Fitting, FormatError> {
    let ntypes = type_map.len();
    let mut by_net: BTreeMap<u32, Vec<(&str, u32, &Roles)>> = BTreeMap::new();
    for ((parent, idx), roles) in layers {
        if !parent.starts_with(root) || parent == root {
            continue;
        }
        match split_scope(parent) {
            Some((p, "FN", t)) if p == root => {
                by_net.entry(t).or_default().push((parent, *idx, roles))
            }
            _ => return Err(unsupported(format!("fitting layers in {parent}"))),
        }
    }
    // Descriptors with mixed types (the se_atten family) get one network for all types,
    // the others one per type (`FN_t` is the network of type t).
    let nnets = if mixed { 1 } else { ntypes };
    if by_net.len() == 1 && nnets > 1 {
        return Err(unsupported(
            "a mixed-types energy fitting (one network for all types) with se_e2_a",
        ));
    }
    if by_net.len() != nnets || by_net.keys().copied().ne(0..nnets as u32) {
        return Err(bad(format!(
            "{root}: {} fitting networks for {ntypes} types",
            by_net.len()
        )));
    }
    let mut networks = Vec::new();
    let mut first: Option<Shape> = None;
    for net in by_net.values() {
        let n = net.len();
        if n < 2 {
            return Err(unsupported("a fitting network without hidden layers"));
        }
        let mut ls = Vec::new();
        for (i, &(parent, idx, roles)) in net.iter().enumerate() {
            let hidden = i + 1 < n;
            let linear = if hidden { "linear" } else { "none" };
            ls.push(layers::layer(ctx, parent, idx, roles, hidden, linear)?);
        }
        if ls.windows(2).any(|w| w[1].in_dim != w[0].out_dim) {
            return Err(bad(format!("{root}: fitting layers do not chain")));
        }
        let Some((out, hidden)) = ls.split_last().filter(|(_, h)| !h.is_empty()) else {
            return Err(bad(format!("{root}: an empty fitting network")));
        };
        if out.activation.is_some() || out.out_dim != 1 {
            return Err(unsupported(format!(
                "{root}: an output layer with an activation or {} outputs",
                out.out_dim
            )));
        }
        let neuron: Vec<usize> = hidden.iter().map(|l| l.out_dim).collect();
        let act = hidden[0]
            .activation
            .clone()
            .unwrap_or_else(|| "linear".into());
        let resnet_dt = hidden.iter().any(|l| l.timestep);
        let this = Shape {
            in_dim: hidden[0].in_dim,
            out_dim: out.out_dim,
            neuron: neuron.clone(),
            activation: act.clone(),
            precision: hidden[0].precision,
            resnet_dt,
        };
        if hidden
            .iter()
            .any(|l| l.activation.as_deref().unwrap_or("linear") != act)
            || first.get_or_insert_with(|| this.clone()) != &this
        {
            return Err(bad(format!(
                "{root}: fitting networks differ in shape or activation"
            )));
        }
        let bias_out = out.bias;
        networks.push(dict(vec![
            ("@class", s("FittingNetwork")),
            ("@version", Value::Int(1)),
            ("in_dim", Value::Int(this.in_dim as i64)),
            ("out_dim", Value::Int(this.out_dim as i64)),
            ("neuron", super::ints(&neuron)),
            ("activation_function", s(&act)),
            ("resnet_dt", Value::Bool(resnet_dt)),
            ("precision", s(this.precision)),
            ("bias_out", Value::Bool(bias_out)),
            (
                "layers",
                Value::List(ls.into_iter().map(|l| l.value).collect()),
            ),
        ]));
    }
    let Some(Shape {
        in_dim,
        out_dim: dim_out,
        neuron,
        activation: act,
        precision,
        resnet_dt,
    }) = first
    else {
        return Err(bad(format!("{root}: no fitting networks")));
    };
    let nlayers = neuron.len() + 1;
    let dim_descrpt = in_dim
        .checked_sub(numb_fparam + numb_aparam)
        .filter(|&d| d > 0)
        .ok_or_else(|| {
            bad(format!(
                "{root}: fitting input {in_dim} too small for fparam/aparam"
            ))
        })?;
    // bias_atom_e: the [ntypes, dim_out] buffer sliced (or gathered) in the fitting scope.
    let prog = &ctx.prog;
    let bias: Vec<String> = prog
        .params
        .iter()
        .filter(|(name, p)| {
            !ctx.is_used(name)
                && p.shape == [ntypes, dim_out]
                && p.dtype.is_float()
                && prog.uses(p.value).iter().any(|&(i, k)| {
                    let op = &prog.ops[i];
                    k == 0
                        && op.in_scope(root)
                        && (op.kind == "1.slice" || op.kind == "1.gather_nd")
                })
        })
        .map(|(n, _)| n.clone())
        .collect();
    let [bias] = &bias[..] else {
        return Err(bad(format!(
            "{root}: {} candidates for bias_atom_e",
            bias.len()
        )));
    };
    let mut stats = param_stats(ctx, root)?;
    let mut vars = vec![("bias_atom_e", ctx.take(bias)), ("case_embd", Value::Null)];
    for (key, n) in [
        ("fparam_avg", numb_fparam),
        ("fparam_inv_std", numb_fparam),
        ("aparam_avg", numb_aparam),
        ("aparam_inv_std", numb_aparam),
    ] {
        let v = match stats.remove(key) {
            Some(name) if n > 0 && ctx.array(&name)?.shape == [n] => ctx.take(&name),
            None if n == 0 => Value::Null,
            _ => {
                return Err(bad(format!(
                    "{root}: {key} does not match numb_fparam/numb_aparam"
                )))
            }
        };
        vars.push((key, v));
    }
    let exclude = match layers::masks(ctx)?.get(&format!("{root}AtomExcludeMask/")) {
        Some(name) => layers::excluded(ctx, name, ntypes)?,
        None => Vec::new(),
    };
    let value = dict(vec![
        ("@class", s("Fitting")),
        ("@version", Value::Int(4)),
        ("var_name", s("energy")),
        ("ntypes", Value::Int(ntypes as i64)),
        ("dim_descrpt", Value::Int(dim_descrpt as i64)),
        ("neuron", super::ints(&neuron)),
        ("resnet_dt", Value::Bool(resnet_dt)),
        ("numb_fparam", Value::Int(numb_fparam as i64)),
        ("numb_aparam", Value::Int(numb_aparam as i64)),
        ("dim_case_embd", Value::Int(0)),
        ("default_fparam", Value::Null),
        ("activation_function", s(&act)),
        ("precision", s(precision)),
        ("mixed_types", Value::Bool(mixed)),
        (
            "nets",
            dict(vec![
                ("@class", s("NetworkCollection")),
                ("@version", Value::Int(1)),
                ("ndim", Value::Int(if mixed { 0 } else { 1 })),
                ("ntypes", Value::Int(ntypes as i64)),
                ("network_type", s("fitting_network")),
                ("networks", Value::List(networks)),
            ]),
        ),
        // Not stored (training only): the defaults.
        ("rcond", Value::Null),
        ("exclude_types", Value::List(exclude)),
        ("@variables", dict(vars)),
        ("type_map", super::strs(type_map)),
        ("tot_ener_zero", Value::Bool(false)),
        ("trainable", Value::List(vec![Value::Bool(true); nlayers])),
        ("layer_name", Value::Null),
        ("use_aparam_as_mask", Value::Bool(false)),
        ("spin", Value::Null),
        ("type", s("ener")),
        ("dim_out", Value::Int(dim_out as i64)),
        ("atom_ener", Value::Null),
    ]);
    Ok(Fitting { value, dim_descrpt })
}
