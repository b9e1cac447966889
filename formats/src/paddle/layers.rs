//! What every component shares: MLP layers (`w`/`b`/`idt` found by how the scope
//! `…/MLPLayer[_k]/` uses each parameter), their activations (the op inside
//! `…/ActivationFn/`), and the int32 type masks of `…ExcludeMask/` scopes.

use std::collections::BTreeMap;

use super::program::split_scope;
use super::{bad, unsupported, Ctx};
use crate::tree::{DType, Dict, Value};
use crate::FormatError;

/// The parameters of one MLP layer, by name.
#[derive(Debug, Default, Clone)]
pub struct Roles {
    pub w: Option<String>,
    pub b: Option<String>,
    pub idt: Option<String>,
}

/// Every MLP layer, keyed by (parent scope, layer counter): `matmul` operand 1 is `w`,
/// `add` operand 1 is `b`, `multiply` operand 1 is `idt`, in a `…/MLPLayer[_k]/` scope.
pub fn mlp_layers(ctx: &Ctx) -> Result<BTreeMap<(String, u32), Roles>, FormatError> {
    let prog = &ctx.prog;
    let mut layers: BTreeMap<(String, u32), Roles> = BTreeMap::new();
    for (name, p) in &prog.params {
        for &(i, k) in prog.uses(p.value) {
            let op = &prog.ops[i];
            let Some((parent, "MLPLayer", idx)) = op.scope.as_deref().and_then(split_scope) else {
                continue;
            };
            let role = match (op.kind.as_str(), k) {
                ("1.matmul", 1) => 0,
                ("1.add", 1) => 1,
                ("1.multiply", 1) => 2,
                _ => continue,
            };
            let roles = layers.entry((parent.to_string(), idx)).or_default();
            let slot = match role {
                0 => &mut roles.w,
                1 => &mut roles.b,
                _ => &mut roles.idt,
            };
            if slot.as_deref().is_some_and(|n| n != name) {
                return Err(bad(format!(
                    "layer {parent}MLPLayer_{idx} uses two parameters in one role"
                )));
            }
            *slot = Some(name.clone());
            break;
        }
    }
    Ok(layers)
}

fn precision(dtype: DType, name: &str) -> Result<&'static str, FormatError> {
    match dtype {
        DType::F64 => Ok("float64"),
        DType::F32 => Ok("float32"),
        other => Err(unsupported(format!(
            "layer weight {name} is {}; dpc reads float64 and float32 models",
            other.name()
        ))),
    }
}

/// The activation of the MLP layer at `scope`; None when it has no `ActivationFn` (linear).
fn activation(ctx: &mut Ctx, scope: &str) -> Result<Option<String>, FormatError> {
    let act = format!("{scope}ActivationFn/");
    let silut = format!("{act}SiLUT/");
    let own = ctx.prog.in_scope(&act).to_vec();
    let less_than = ctx
        .prog
        .in_scope(&silut)
        .iter()
        .copied()
        .find(|&i| ctx.prog.ops[i].kind == "1.less_than");
    if less_than.is_none() && !ctx.prog.in_scope(&silut).is_empty() {
        return Err(unsupported(format!(
            "{silut} without its threshold comparison"
        )));
    }
    if let Some(i) = less_than {
        // silut / custom_silu: where(x < thr, silu(x), tanh tail); thr is a float64 scalar
        // parameter, compared through a `cast`.
        let prog = &ctx.prog;
        let mut src = *prog.ops[i]
            .ins
            .get(1)
            .ok_or_else(|| bad(format!("{silut}: less_than without operands")))?;
        if let Some(cast) = prog.producer(src).filter(|op| op.kind == "1.cast") {
            src = *cast.ins.first().unwrap_or(&src);
        }
        let name = prog
            .param_of(src)
            .ok_or_else(|| unsupported(format!("{silut}: a threshold that is not a parameter")))?
            .to_string();
        let thr = ctx.array(&name)?;
        if thr.len() != 1 || !thr.dtype.is_float() {
            return Err(bad(format!(
                "{silut}: threshold {name} is not a float scalar"
            )));
        }
        let thr = thr.get_f64(0);
        ctx.mark(&name);
        return Ok(Some(format!(
            "silut:{}",
            crate::json::python_float_repr(thr, "nan", "inf")
        )));
    }
    let [i] = own[..] else {
        return match own.len() {
            0 => Ok(None),
            _ => Err(unsupported(format!(
                "activation in {act} made of {} ops (a decomposed activation)",
                own.len()
            ))),
        };
    };
    let op = &ctx.prog.ops[i];
    let attr = |n: &str| op.attr(n).cloned().unwrap_or(Value::Null);
    let name = match op.kind.as_str() {
        "1.tanh" => "tanh",
        "1.relu" => "relu",
        "1.relu6" => "relu6",
        "1.sigmoid" => "sigmoid",
        "1.silu" => "silu",
        "1.gelu" if attr("approximate") == Value::Bool(true) => "gelu",
        "1.softplus"
            if attr("beta").as_f64() == Some(1.0) && attr("threshold").as_f64() == Some(20.0) =>
        {
            "softplus"
        }
        other => {
            return Err(unsupported(format!(
                "activation op {other} in {act} (with these attributes)"
            )))
        }
    };
    Ok(Some(name.to_string()))
}

/// One `Layer` of the tree, in DeePMD-kit's key order, with what networks need to know.
pub struct Layer {
    pub value: Value,
    pub in_dim: usize,
    pub out_dim: usize,
    pub activation: Option<String>,
    pub bias: bool,
    pub timestep: bool,
    pub precision: &'static str,
}

pub fn layer(
    ctx: &mut Ctx,
    parent: &str,
    idx: u32,
    roles: &Roles,
    resnet: bool,
    linear_name: &str,
) -> Result<Layer, FormatError> {
    let scope = if idx == 0 {
        format!("{parent}MLPLayer/")
    } else {
        format!("{parent}MLPLayer_{idx}/")
    };
    let w_name = roles
        .w
        .as_deref()
        .ok_or_else(|| bad(format!("layer {scope} has no weight")))?;
    let w = ctx.array(w_name)?;
    let (dtype, shape) = (w.dtype, w.shape.clone());
    let precision = precision(dtype, w_name)?;
    let [in_dim, out_dim] = shape[..] else {
        return Err(bad(format!("layer {scope}: weight of shape {shape:?}")));
    };
    let mut vector = |name: &Option<String>| -> Result<Value, FormatError> {
        let Some(n) = name else {
            return Ok(Value::Null);
        };
        let a = ctx.array(n)?;
        if a.dtype != dtype || a.shape != [out_dim] {
            return Err(bad(format!(
                "layer {scope}: {n} is {} {:?}, the weight {} [{in_dim}, {out_dim}]",
                a.dtype.name(),
                a.shape,
                dtype.name()
            )));
        }
        Ok(ctx.take(n))
    };
    let b = vector(&roles.b)?;
    let idt = vector(&roles.idt)?;
    let w = ctx.take(w_name);
    let activation = activation(ctx, &scope)?;
    let (bias, timestep) = (!b.is_null(), !idt.is_null());
    let vars: Dict = [("w", w), ("b", b), ("idt", idt)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let value = super::dict(vec![
        ("@class", super::s("Layer")),
        ("@version", Value::Int(2)),
        ("bias", Value::Bool(bias)),
        ("use_timestep", Value::Bool(timestep)),
        (
            "activation_function",
            super::s(activation.as_deref().unwrap_or(linear_name)),
        ),
        ("resnet", Value::Bool(resnet)),
        ("precision", super::s(precision)),
        // Not recoverable: Paddle exports every MLP weight as trainable.
        ("trainable", Value::Bool(true)),
        ("@variables", Value::Dict(vars)),
    ]);
    Ok(Layer {
        value,
        in_dim,
        out_dim,
        activation,
        bias,
        timestep,
        precision,
    })
}

/// int32 type masks read by `gather_nd` (operand 0) in `…ExcludeMask/` scopes: scope → name.
pub fn masks(ctx: &Ctx) -> Result<BTreeMap<String, String>, FormatError> {
    let prog = &ctx.prog;
    let mut out = BTreeMap::new();
    for (name, p) in &prog.params {
        if p.dtype != DType::I32 || p.shape.len() != 1 {
            continue;
        }
        for &(i, k) in prog.uses(p.value) {
            let op = &prog.ops[i];
            let Some(scope) = op.scope.as_deref() else {
                continue;
            };
            // `/AtomExcludeMask_1/` when the model was traced twice (forward_lower).
            let is_mask = split_scope(scope).is_some_and(|(_, c, _)| c.ends_with("ExcludeMask"));
            if op.kind == "1.gather_nd" && k == 0 && is_mask {
                if out.get(scope).is_some_and(|n: &String| n != name) {
                    return Err(bad(format!("two type masks in {scope}")));
                }
                out.insert(scope.to_string(), name.clone());
            }
        }
    }
    Ok(out)
}

/// The excluded types of a per-type mask of `ntypes` entries: its zeros.
pub fn excluded(ctx: &mut Ctx, name: &str, ntypes: usize) -> Result<Vec<Value>, FormatError> {
    let m = ctx.array(name)?;
    if m.len() != ntypes {
        return Err(bad(format!(
            "atom type mask {name} has {} entries for {ntypes} types",
            m.len()
        )));
    }
    let zeros = (0..ntypes)
        .filter(|&i| m.get_i64(i) == Some(0))
        .map(|i| Value::Int(i as i64))
        .collect();
    ctx.mark(name);
    Ok(zeros)
}

/// The parameters of every `…/LayerNorm/` scope: (w, b) as operand 1 of its `multiply` and
/// `add` (the prim decomposition `(x - mean) / sqrt(var + eps) * w + b`).
pub fn layer_norms(ctx: &Ctx) -> Result<BTreeMap<String, Roles>, FormatError> {
    let prog = &ctx.prog;
    let mut out: BTreeMap<String, Roles> = BTreeMap::new();
    for (name, p) in &prog.params {
        for &(i, k) in prog.uses(p.value) {
            let op = &prog.ops[i];
            let Some(scope) = op.scope.as_deref() else {
                continue;
            };
            if k != 1 || split_scope(scope).is_none_or(|(_, c, _)| c != "LayerNorm") {
                continue;
            }
            let roles = out.entry(scope.to_string()).or_default();
            let slot = match op.kind.as_str() {
                "1.multiply" => &mut roles.w,
                "1.add" => &mut roles.b,
                _ => continue,
            };
            if slot.as_deref().is_some_and(|n| n != name) {
                return Err(bad(format!("{scope} uses two parameters in one role")));
            }
            *slot = Some(name.clone());
            break;
        }
    }
    Ok(out)
}

/// A chain of MLP layers (`parent` + `MLPLayer[_k]` in `k` order) as DeePMD-kit's
/// `EmbeddingNetwork`: every layer a residual one where widths allow.
pub struct Network {
    pub value: Value,
    pub in_dim: usize,
    pub neuron: Vec<usize>,
    pub activation: String,
    pub resnet_dt: bool,
    pub bias: bool,
    pub precision: &'static str,
}

pub fn embedding_network(
    ctx: &mut Ctx,
    parent: &str,
    net: &[(u32, Roles)],
    linear_name: &str,
) -> Result<Network, FormatError> {
    if net.iter().map(|(k, _)| *k).ne(0..net.len() as u32) {
        return Err(bad(format!("{parent}: layers missing from the network")));
    }
    let mut ls = Vec::new();
    for (idx, roles) in net {
        ls.push(layer(ctx, parent, *idx, roles, true, linear_name)?);
    }
    let Some(first) = ls.first() else {
        return Err(bad(format!("{parent}: a network without layers")));
    };
    if ls.windows(2).any(|w| w[1].in_dim != w[0].out_dim) {
        return Err(bad(format!("{parent}: layers do not chain")));
    }
    let act = first
        .activation
        .clone()
        .unwrap_or_else(|| linear_name.to_string());
    if ls
        .iter()
        .any(|l| l.activation.as_deref().unwrap_or(linear_name) != act || l.bias != first.bias)
    {
        return Err(bad(format!(
            "{parent}: layers differ in activation or bias"
        )));
    }
    let (in_dim, bias, precision) = (first.in_dim, first.bias, first.precision);
    let neuron: Vec<usize> = ls.iter().map(|l| l.out_dim).collect();
    let resnet_dt = ls.iter().any(|l| l.timestep);
    let value = super::dict(vec![
        ("@class", super::s("EmbeddingNetwork")),
        ("@version", Value::Int(2)),
        ("in_dim", Value::Int(in_dim as i64)),
        ("neuron", super::ints(&neuron)),
        ("activation_function", super::s(&act)),
        ("resnet_dt", Value::Bool(resnet_dt)),
        ("bias", Value::Bool(bias)),
        ("precision", super::s(precision)),
        (
            "layers",
            Value::List(ls.into_iter().map(|l| l.value).collect()),
        ),
    ]);
    Ok(Network {
        value,
        in_dim,
        neuron,
        activation: act,
        resnet_dt,
        bias,
        precision,
    })
}

/// `{"@class": "NetworkCollection", ...}` holding one network shared by all types (ndim 0).
pub fn shared_collection(ntypes: usize, network_type: &str, net: Value) -> Value {
    super::dict(vec![
        ("@class", super::s("NetworkCollection")),
        ("@version", Value::Int(1)),
        ("ndim", Value::Int(0)),
        ("ntypes", Value::Int(ntypes as i64)),
        ("network_type", super::s(network_type)),
        ("networks", Value::List(vec![net])),
    ])
}
