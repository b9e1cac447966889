//! DeePMD-kit Paddle inference models (`<stem>.json`, a PIR program, + `<stem>.pdiparams`)
//! into the serialization tree, without Paddle. DeePMD-kit itself cannot do this
//! (`serialize_from_file` raises for Paddle); the tree is rebuilt from the program.
//!
//! The `.pdiparams` holds the tensors in the sorted order of the program's parameter names.
//! Few names mean anything (`buffer_type_map`, `buffer_rcut`, ...), so each tensor's role
//! comes from how the program uses it, inside the `struct_name` scopes the tracer records
//! (`/DescrptSeA/MLPLayer_4/`, `/EnergyFittingNet/FN_1/MLPLayer_2/`, ...). What the files do
//! not hold (training-only settings, `trainable`) gets DeePMD-kit's defaults; float32
//! constants (`rcut_smth`, `env_protection`, `min_nbor_dist`, `ln_eps`, the attention scale
//! in current writers) come back as the shortest decimal of their float32. See
//! docs/formats.md.
//!
//! Read: se_e2_a (type_one_side, `se_a.rs`), dpa1/se_atten and se_atten_v2 (`dpa1.rs`)
//! energy models, float64 or float32, fparam/aparam, atom and fitting exclusions, the
//! activations DeePMD-kit has. Anything else is refused by name.

mod check;
mod dpa1;
mod fitting;
mod layers;
pub mod pdiparams;
pub mod program;
mod se_a;

use std::collections::{BTreeMap, HashSet};

use self::check::Kind;
use self::program::{root_class, Program};
use crate::tree::{Dict, NdArray, Value};
use crate::FormatError;

pub(crate) fn bad(msg: impl Into<String>) -> FormatError {
    FormatError::invalid(format!("Paddle model: {}", msg.into()))
}

pub(crate) fn unsupported(msg: impl Into<String>) -> FormatError {
    FormatError::unsupported(format!("Paddle model: {}", msg.into()))
}

fn dict(items: Vec<(&str, Value)>) -> Value {
    Value::Dict(items.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn s(x: &str) -> Value {
    Value::Str(x.to_string())
}

fn strs(x: &[String]) -> Value {
    Value::List(x.iter().map(|t| s(t)).collect())
}

fn ints(v: &[usize]) -> Value {
    Value::List(v.iter().map(|&x| Value::Int(x as i64)).collect())
}

/// The shortest decimal that rounds to the same float32 (how a float32 constant was typed).
fn f32_decimal(x: f64) -> f64 {
    let x = x as f32;
    format!("{x}").parse().unwrap_or(x as f64)
}

/// The program, its tensors by name, and which tensors the tree has taken.
pub(crate) struct Ctx {
    prog: Program,
    arrays: BTreeMap<String, NdArray>,
    used: HashSet<String>,
}

impl Ctx {
    fn array(&self, name: &str) -> Result<&NdArray, FormatError> {
        self.arrays
            .get(name)
            .ok_or_else(|| bad(format!("tensor {name} is missing")))
    }

    fn take(&mut self, name: &str) -> Value {
        self.used.insert(name.to_string());
        self.arrays
            .get(name)
            .map_or(Value::Null, |a| Value::Array(a.clone()))
    }

    /// Whether every element of tensor `name` is zero (`set_davg_zero` leaves davg so).
    fn all_zero(&self, name: &str) -> Result<bool, FormatError> {
        let a = self.array(name)?;
        Ok((0..a.len()).all(|i| a.get_f64(i) == 0.0))
    }

    fn mark(&mut self, name: &str) {
        self.used.insert(name.to_string());
    }

    fn is_used(&self, name: &str) -> bool {
        self.used.contains(name)
    }

    /// A named scalar buffer (`buffer_ntypes`, ...) as f64, None when absent.
    fn scalar(&mut self, name: &str) -> Result<Option<f64>, FormatError> {
        let Some(a) = self.arrays.get(name) else {
            return Ok(None);
        };
        if a.len() != 1 {
            return Err(bad(format!("{name} has shape {:?}, not a scalar", a.shape)));
        }
        let v = a.get_f64(0);
        self.mark(name);
        Ok(Some(v))
    }

    fn count(&mut self, name: &str) -> Result<Option<usize>, FormatError> {
        match self.scalar(name)? {
            None => Ok(None),
            Some(v) if v >= 0.0 && v <= u32::MAX as f64 && v.fract() == 0.0 => Ok(Some(v as usize)),
            Some(v) => Err(bad(format!("{name} is {v}, not a count"))),
        }
    }
}

/// `create_parameter_18.w_0_deepcopy_3` → (18, 0); `generated_tensor_107` → (107, 0):
/// the per-process counters Paddle names tensors with, i.e. creation order.
fn creation_index(name: &str) -> (u64, u64) {
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let base = match name.rsplit_once("_deepcopy_") {
        Some((h, t)) if digits(t) => h,
        _ => name,
    };
    let (head, w) = match base.rsplit_once(".w_") {
        Some((h, t)) if digits(t) => (h, t.parse().unwrap_or(u64::MAX)),
        _ => (base, 0),
    };
    match head.rsplit_once('_') {
        Some((_, n)) if digits(n) => (n.parse().unwrap_or(u64::MAX), w),
        _ => (1 << 60, 0),
    }
}

/// out_bias and out_std: the two `[n_out, ntypes, max_out]` float buffers no component
/// took, in creation order; out_bias is the one whose value reaches an `add`.
fn out_stat(ctx: &mut Ctx, ntypes: usize) -> Result<(Value, Value), FormatError> {
    let prog = &ctx.prog;
    let mut cand: Vec<&String> = prog
        .params
        .iter()
        .filter(|(n, p)| {
            !ctx.is_used(n)
                && p.shape.len() == 3
                && p.shape[1] == ntypes
                && p.dtype.is_float()
                && !n.starts_with("buffer_")
        })
        .map(|(n, _)| n)
        .collect();
    cand.sort_by_key(|n| creation_index(n));
    let [a, b] = cand[..] else {
        return Err(bad(format!(
            "{} candidates for out_bias/out_std",
            cand.len()
        )));
    };
    let reaches = |n: &String| prog.trace_to(prog.params[n].value, &["1.add"]).is_some();
    let (bias, std) = match (reaches(a), reaches(b)) {
        (false, true) => (b.clone(), a.clone()),
        _ => (a.clone(), b.clone()),
    };
    Ok((ctx.take(&bias), ctx.take(&std)))
}

/// `min_nbor_dist`: registered after the model is built, from a Python float, so it is the
/// unused float scalar `generated_tensor_N` created after every other buffer.
fn min_nbor_dist(ctx: &mut Ctx) -> Result<Option<f64>, FormatError> {
    if let Some(v) = ctx.scalar("buffer_min_nbor_dist")? {
        return Ok(Some(v));
    }
    let prog = &ctx.prog;
    let auto: Vec<(&String, &program::Param)> = prog
        .params
        .iter()
        .filter(|(n, _)| n.starts_with("generated_tensor_"))
        .collect();
    let Some(&(last, p)) = auto.iter().max_by_key(|(n, _)| creation_index(n)) else {
        return Ok(None);
    };
    let newest_buffer = auto
        .iter()
        .filter(|(_, p)| !p.shape.is_empty())
        .map(|(n, _)| creation_index(n))
        .max();
    let is_it = p.shape.is_empty()
        && p.dtype.is_float()
        && prog.uses(p.value).is_empty()
        && newest_buffer.is_some_and(|b| creation_index(last) > b);
    if !is_it {
        return Ok(None);
    }
    let (name, f32) = (last.clone(), p.dtype == crate::tree::DType::F32);
    let v = ctx.scalar(&name)?.unwrap_or(f64::NAN);
    Ok(Some(if f32 { f32_decimal(v) } else { v }))
}

/// Read a Paddle model: the program's JSON text and the `.pdiparams` bytes.
pub fn read(json: &[u8], params: &[u8]) -> Result<Value, FormatError> {
    let tensors = pdiparams::read(params)?;
    let text = std::str::from_utf8(json).map_err(|_| bad("the program .json is not UTF-8"))?;
    let prog = Program::parse(&crate::json::parse(text)?)?;
    let check::Components {
        kind,
        desc_root,
        fit_root,
    } = check::check(&prog)?;
    if tensors.len() != prog.params.len() {
        return Err(bad(format!(
            "the .pdiparams holds {} tensors, the program names {} parameters",
            tensors.len(),
            prog.params.len()
        )));
    }
    let mut arrays = BTreeMap::new();
    for ((name, p), t) in prog.params.iter().zip(tensors) {
        if t.dtype != p.dtype || t.shape != p.shape {
            return Err(bad(format!(
                "parameter {name} is {} {:?} in the program, {} {:?} in the .pdiparams",
                p.dtype.name(),
                p.shape,
                t.dtype.name(),
                t.shape
            )));
        }
        arrays.insert(name.clone(), t);
    }
    let mut ctx = Ctx {
        prog,
        arrays,
        used: HashSet::new(),
    };
    let codes = ctx.array("buffer_type_map")?;
    let text: Option<String> = (0..codes.len())
        .map(|i| char::from_u32(u32::try_from(codes.get_i64(i)?).ok()?))
        .collect();
    ctx.mark("buffer_type_map");
    let type_map: Vec<String> = text
        .ok_or_else(|| bad("buffer_type_map does not hold character codes"))?
        .split(' ')
        .map(String::from)
        .collect();
    let ntypes = type_map.len();
    if type_map.iter().any(String::is_empty) || ctx.count("buffer_ntypes")? != Some(ntypes) {
        return Err(bad(
            "buffer_ntypes is missing or disagrees with buffer_type_map",
        ));
    }
    let rcut = ctx
        .scalar("buffer_rcut")?
        .filter(|r| r.is_finite() && *r > 0.0)
        .ok_or_else(|| bad("buffer_rcut is missing or not a cutoff"))?;
    let numb_fparam = ctx.count("buffer_dfparam")?.unwrap_or(0);
    let numb_aparam = ctx.count("buffer_daparam")?.unwrap_or(0);
    if ctx.count("buffer_has_message_passing")?.unwrap_or(0) != 0 {
        return Err(unsupported("models with message passing"));
    }
    if ctx.count("buffer_aparam_nall")?.unwrap_or(0) != 0 {
        return Err(unsupported("aparam given for all (ghost included) atoms"));
    }
    let layers = layers::mlp_layers(&ctx)?;
    let fit = fitting::energy(
        &mut ctx,
        &fit_root,
        &type_map,
        &layers,
        numb_fparam,
        numb_aparam,
        kind != Kind::SeA,
    )?;
    let descriptor = match kind {
        Kind::SeA => se_a::descriptor(
            &mut ctx,
            &desc_root,
            &type_map,
            &layers,
            fit.dim_descrpt,
            rcut,
        )?,
        Kind::Dpa1 | Kind::SeAttenV2 => dpa1::descriptor(
            &mut ctx,
            &desc_root,
            kind == Kind::SeAttenV2,
            &type_map,
            &layers,
            fit.dim_descrpt,
            rcut,
        )?,
    };
    let (out_bias, out_std) = out_stat(&mut ctx, ntypes)?;
    let mut atom_exclude = None;
    for (scope, name) in layers::masks(&ctx)? {
        if scope.starts_with(&desc_root) || scope.starts_with(&fit_root) {
            continue;
        }
        if root_class(&scope) != "AtomExcludeMask" || atom_exclude.is_some() {
            return Err(unsupported(format!("the type mask in {scope}")));
        }
        atom_exclude = Some(layers::excluded(&mut ctx, &name, ntypes)?);
    }
    let min_nbor_dist = min_nbor_dist(&mut ctx)?;
    // Every tensor the program reads must have found its place in the tree.
    for (name, p) in &ctx.prog.params {
        if !ctx.is_used(name) && !ctx.prog.uses(p.value).is_empty() {
            return Err(unsupported(format!(
                "tensor {name} is used by the program but has no place in the tree"
            )));
        }
    }
    let pick = |from: &Value, keys: &[&str]| -> Value {
        Value::Dict(
            keys.iter()
                .map(|&k| (k.to_string(), from.get(k).cloned().unwrap_or(Value::Null)))
                .collect(),
        )
    };
    let desc_keys: &[&str] = match kind {
        Kind::SeA => &[
            "type",
            "sel",
            "rcut_smth",
            "rcut",
            "neuron",
            "resnet_dt",
            "axis_neuron",
            "type_one_side",
            "precision",
            "activation_function",
            "exclude_types",
            "env_protection",
            "trainable",
        ],
        Kind::Dpa1 | Kind::SeAttenV2 => &[
            "type",
            "sel",
            "rcut_smth",
            "rcut",
            "neuron",
            "axis_neuron",
            "tebd_dim",
            "tebd_input_mode",
            "resnet_dt",
            "type_one_side",
            "attn",
            "attn_layer",
            "attn_dotr",
            "attn_mask",
            "scaling_factor",
            "normalize",
            "temperature",
            "ln_eps",
            "smooth_type_embedding",
            "concat_output_tebd",
            "use_tebd_bias",
            "set_davg_zero",
            "precision",
            "activation_function",
            "exclude_types",
            "env_protection",
            "trainable",
        ],
    };
    let mut script_desc = pick(&descriptor, desc_keys);
    if let Value::Dict(d) = &mut script_desc {
        // What a user writes: no keys se_atten_v2 fixes, `sel` as one number for DPA-1.
        d.retain(|_, v| !v.is_null());
        if kind != Kind::SeA {
            if let Some(Value::List(sel)) = d.get("sel") {
                if let [n] = &sel[..] {
                    let n = n.clone();
                    d.insert("sel".into(), n);
                }
            }
        }
    }
    let script = dict(vec![
        ("type_map", strs(&type_map)),
        ("descriptor", script_desc),
        (
            "fitting_net",
            pick(
                &fit.value,
                &[
                    "type",
                    "neuron",
                    "resnet_dt",
                    "precision",
                    "activation_function",
                    "numb_fparam",
                    "numb_aparam",
                ],
            ),
        ),
    ]);
    let model = dict(vec![
        ("type_map", strs(&type_map)),
        (
            "atom_exclude_types",
            Value::List(atom_exclude.unwrap_or_default()),
        ),
        ("pair_exclude_types", Value::List(Vec::new())),
        ("rcond", Value::Null),
        ("preset_out_bias", Value::Null),
        (
            "@variables",
            dict(vec![("out_bias", out_bias), ("out_std", out_std)]),
        ),
        ("@class", s("Model")),
        ("@version", Value::Int(2)),
        ("type", s("standard")),
        ("descriptor", descriptor),
        ("fitting", fit.value),
    ]);
    let mut variables = Dict::new();
    if let Some(d) = min_nbor_dist {
        variables.insert("min_nbor_dist".into(), Value::Float(d));
    }
    Ok(dict(vec![
        ("backend", s("Paddle")),
        ("model", model),
        ("model_def_script", script),
        ("@variables", Value::Dict(variables)),
    ]))
}
