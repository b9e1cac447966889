//! The se_e2_a descriptor (`/DescrptSeA/`): embedding networks from the flat
//! `MLPLayer[_k]` scopes, `davg`/`dstd` from how the environment matrix is normalised,
//! `sel` from the static shapes, and the cutoffs and protection from the switch constants.

use std::collections::BTreeMap;

use super::layers::{self, Roles};
use super::{bad, dict, f32_decimal, ints, s, unsupported, Ctx};
use crate::tree::Value;
use crate::FormatError;

/// davg and dstd: `[ntypes, nnei, 4]` buffers gathered by atom type in the descriptor scope,
/// then `(env - davg[t]) / dstd[t]`: operand 1 of `subtract`, operand 1 of `divide`.
pub(super) fn statistics(ctx: &Ctx, root: &str) -> Result<(String, String), FormatError> {
    let prog = &ctx.prog;
    let (mut davg, mut dstd) = (None, None);
    for (name, p) in &prog.params {
        for &(i, k) in prog.uses(p.value) {
            let op = &prog.ops[i];
            if op.kind != "1.gather_nd" || k != 0 || !op.in_scope(root) {
                continue;
            }
            let Some(&out) = op.outs.first() else {
                continue;
            };
            let Some((j, 1)) = prog.trace_to(out, &["1.subtract", "1.divide"]) else {
                continue;
            };
            let slot = if prog.ops[j].kind == "1.subtract" {
                &mut davg
            } else {
                &mut dstd
            };
            if slot.as_ref().is_some_and(|n: &String| n != name) {
                return Err(bad(format!("two normalisation buffers in {root}")));
            }
            *slot = Some(name.clone());
        }
    }
    match (davg, dstd) {
        (Some(a), Some(s)) => Ok((a, s)),
        _ => Err(bad(format!("{root}: davg/dstd not found"))),
    }
}

/// `sel` of one network: the static neighbour dim of its first layer's input `[-1, sel, 1]`.
fn sel_of(ctx: &Ctx, w: &str) -> Result<usize, FormatError> {
    let prog = &ctx.prog;
    let value = prog.params.get(w).map(|p| p.value);
    let input = value
        .into_iter()
        .flat_map(|v| prog.uses(v))
        .find(|&&(i, k)| k == 1 && prog.ops[i].kind == "1.matmul")
        .and_then(|&(i, _)| prog.ops[i].ins.first().copied());
    let dims = input.and_then(|v| prog.value_type(v)).map(|t| &t.dims);
    match dims.map(|d| &d[..]) {
        Some([_, sel, ..]) if *sel >= 0 => Ok(*sel as usize),
        _ => Err(bad(format!(
            "the input shape of embedding layer {w} is unknown"
        ))),
    }
}

/// The environment matrix constants: `length = |r| + !mask`; `length + protection` (a
/// `scale` bias); the switch on `length` is `less_equal`/`greater_equal` with float64
/// constants (older writers, exact) or `clip(length, rmin, rmax)` with float32 ones.
/// Returns (rcut_smth, rcut of the switch, protection).
pub(super) fn env_mat(ctx: &Ctx, root: &str) -> Result<(f64, f64, f64), FormatError> {
    let prog = &ctx.prog;
    let missing = || bad(format!("{root}: the environment matrix was not recognised"));
    let pnorm = prog
        .ops
        .iter()
        .find(|op| {
            op.kind == "1.p_norm" && op.scope.as_deref().is_some_and(|s| s.starts_with(root))
        })
        .and_then(|op| op.outs.first().copied())
        .ok_or_else(missing)?;
    let length = prog
        .uses(pnorm)
        .iter()
        .map(|&(i, _)| &prog.ops[i])
        .find(|op| op.kind == "1.add")
        .and_then(|op| op.outs.first().copied())
        .ok_or_else(missing)?;
    let uses: Vec<_> = prog
        .uses(length)
        .iter()
        .map(|&(i, _)| &prog.ops[i])
        .collect();
    let protection = match uses.iter().find(|op| op.kind == "1.scale") {
        Some(op) => f32_decimal(op.attr_f64("bias")?),
        None => 0.0,
    };
    let last = |kind: &str| uses.iter().rev().find(|op| op.kind == kind).copied();
    let operand = |op: &super::program::Op, k: usize| -> Result<f64, FormatError> {
        let v = *op.ins.get(k).ok_or_else(missing)?;
        let (x, is_f32) = prog.constant(v)?;
        Ok(if is_f32 { f32_decimal(x) } else { x })
    };
    let (rmin, rmax) = match (
        last("1.less_equal"),
        last("1.greater_equal"),
        last("1.clip"),
    ) {
        (Some(le), Some(ge), _) => (operand(le, 1)?, operand(ge, 1)?),
        (_, _, Some(clip)) => (operand(clip, 1)?, operand(clip, 2)?),
        _ => {
            return Err(unsupported(format!(
                "{root}: a switch function dpc does not recognise"
            )))
        }
    };
    Ok((rmin, rmax, protection))
}

pub fn descriptor(
    ctx: &mut Ctx,
    root: &str,
    type_map: &[String],
    layers: &BTreeMap<(String, u32), Roles>,
    dim_descrpt: usize,
    rcut: f64,
) -> Result<Value, FormatError> {
    let ntypes = type_map.len();
    let (davg, dstd) = statistics(ctx, root)?;
    let shape = ctx.array(&davg)?.shape.clone();
    let nnei = match shape[..] {
        [n, nnei, 4] if n == ntypes && ctx.array(&dstd)?.shape == shape => nnei,
        _ => {
            return Err(bad(format!(
                "{root}: davg/dstd of shape {shape:?} for {ntypes} types"
            )))
        }
    };
    // Embedding layers in call order (= construction order = `networks` order); a network
    // starts at each layer whose weight has one input.
    let mut nets: Vec<Vec<(u32, &Roles)>> = Vec::new();
    for ((parent, idx), roles) in layers {
        if parent != root {
            continue;
        }
        let w = roles
            .w
            .as_deref()
            .ok_or_else(|| bad(format!("{root}: embedding layer {idx} has no weight")))?;
        if ctx.array(w)?.shape.first() == Some(&1) || nets.is_empty() {
            nets.push(Vec::new());
        }
        if let Some(net) = nets.last_mut() {
            net.push((*idx, roles));
        }
    }
    if nets.len() == ntypes * ntypes && ntypes > 1 {
        return Err(unsupported(
            "se_e2_a with type_one_side = false (DeePMD-kit 3.2 cannot export it to Paddle, so no such file could be checked)",
        ));
    }
    if nets.len() != ntypes {
        return Err(bad(format!(
            "{root}: {} embedding networks for {ntypes} types",
            nets.len()
        )));
    }
    let mut networks = Vec::new();
    let mut sel = Vec::new();
    let mut first: Option<(Vec<usize>, String, &str)> = None;
    let mut resnet_dt = false;
    for net in &nets {
        let mut ls = Vec::new();
        for &(idx, roles) in net {
            ls.push(layers::layer(ctx, root, idx, roles, true, "linear")?);
        }
        let mut width = 1;
        for l in &ls {
            if l.in_dim != width {
                return Err(bad(format!("{root}: embedding layers do not chain")));
            }
            width = l.out_dim;
        }
        let neuron: Vec<usize> = ls.iter().map(|l| l.out_dim).collect();
        let act = ls[0].activation.clone().unwrap_or_else(|| "linear".into());
        let this = (neuron.clone(), act.clone(), ls[0].precision);
        if ls
            .iter()
            .any(|l| l.activation.as_deref().unwrap_or("linear") != act)
            || first.get_or_insert_with(|| this.clone()) != &this
        {
            return Err(bad(format!(
                "{root}: embedding networks differ in shape or activation"
            )));
        }
        let timestep = ls.iter().any(|l| l.timestep);
        resnet_dt |= timestep;
        sel.push(sel_of(ctx, net[0].1.w.as_deref().unwrap_or_default())?);
        networks.push(dict(vec![
            ("@class", s("EmbeddingNetwork")),
            ("@version", Value::Int(2)),
            ("in_dim", Value::Int(1)),
            ("neuron", ints(&neuron)),
            ("activation_function", s(&act)),
            ("resnet_dt", Value::Bool(timestep)),
            ("bias", Value::Bool(ls[0].bias)),
            ("precision", s(ls[0].precision)),
            (
                "layers",
                Value::List(ls.into_iter().map(|l| l.value).collect()),
            ),
        ]));
    }
    let Some((neuron, act, precision)) = first else {
        return Err(bad(format!("{root}: no embedding networks")));
    };
    if sel.iter().sum::<usize>() != nnei {
        return Err(bad(format!(
            "{root}: sel {sel:?} does not add up to {nnei} neighbours"
        )));
    }
    let last = *neuron.last().unwrap_or(&0);
    if last == 0 || dim_descrpt == 0 || !dim_descrpt.is_multiple_of(last) {
        return Err(bad(format!(
            "{root}: the fitting input {dim_descrpt} is not a multiple of the embedding width {last}"
        )));
    }
    let (rcut_smth, rcut_switch, protection) = env_mat(ctx, root)?;
    if (rcut_switch - rcut).abs() >= 1e-5 * rcut.max(1.0) {
        return Err(bad(format!(
            "{root}: the switch ends at {rcut_switch}, buffer_rcut is {rcut}"
        )));
    }
    // Pair exclusions: a (ntypes+1)² mask, used only when some pair is excluded.
    let masks = layers::masks(ctx)?;
    if let Some(name) = masks.get(&format!("{root}PairExcludeMask/")) {
        let m = ctx.array(name)?;
        let n1 = ntypes + 1;
        if m.len() != n1 * n1 {
            return Err(bad(format!(
                "{root}: pair mask {name} of {} entries",
                m.len()
            )));
        }
        if (0..ntypes).any(|i| (0..ntypes).any(|j| m.get_i64(i * n1 + j) == Some(0))) {
            return Err(unsupported(
                "se_e2_a exclude_types (DeePMD-kit 3.2 cannot export them to Paddle, so no such file could be checked)",
            ));
        }
        ctx.mark(name);
    }
    let f = Value::Float;
    let davg_zero = ctx.all_zero(&davg)?;
    let stats = dict(vec![("davg", ctx.take(&davg)), ("dstd", ctx.take(&dstd))]);
    Ok(dict(vec![
        ("@class", s("Descriptor")),
        ("type", s("se_e2_a")),
        ("@version", Value::Int(2)),
        ("rcut", f(rcut)),
        ("rcut_smth", f(rcut_smth)),
        ("sel", ints(&sel)),
        ("neuron", ints(&neuron)),
        ("axis_neuron", Value::Int((dim_descrpt / last) as i64)),
        ("resnet_dt", Value::Bool(resnet_dt)),
        // Not stored: with set_davg_zero the statistics keep a zero davg.
        ("set_davg_zero", Value::Bool(davg_zero)),
        ("activation_function", s(&act)),
        ("precision", s(precision)),
        (
            "embeddings",
            dict(vec![
                ("@class", s("NetworkCollection")),
                ("@version", Value::Int(1)),
                ("ndim", Value::Int(1)),
                ("ntypes", Value::Int(ntypes as i64)),
                ("network_type", s("embedding_network")),
                ("networks", Value::List(networks)),
            ]),
        ),
        (
            "env_mat",
            dict(vec![
                ("rcut", f(rcut)),
                ("rcut_smth", f(rcut_smth)),
                ("protection", f(protection)),
                ("use_exp_switch", Value::Bool(false)),
            ]),
        ),
        ("exclude_types", Value::List(Vec::new())),
        ("env_protection", f(protection)),
        ("@variables", stats),
        ("type_map", super::strs(type_map)),
        // Not recoverable; DeePMD-kit's Paddle backend writes true too.
        ("trainable", Value::Bool(true)),
        ("type_one_side", Value::Bool(true)),
        ("spin", Value::Null),
    ]))
}
