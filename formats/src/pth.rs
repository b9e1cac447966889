//! DeePMD-kit's PyTorch models (`.pth`, TorchScript) into the serialization tree, exactly as
//! `dp convert-backend model.pth model.dp` (DeePMD-kit 3.2) writes it, without PyTorch.
//!
//! The archive holds the module object graph with its parameters, and the training input
//! (`model_def_script`). DeePMD-kit rebuilds the Python model from that script (constructor
//! defaults for missing keys), loads the parameters, and calls `serialize()`. We do the same
//! by hand: every non-array field comes from the script (or is a constant `serialize()`
//! writes), every array from the parameter at its known attribute path. Verified bit for bit
//! against DeePMD-kit's own conversions, key order included.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};

use crate::pickle::{Id, Node};
use crate::torchscript::TorchScript;
use crate::tree::{Dict, NdArray, Value};
use crate::FormatError;

fn bad(msg: impl Into<String>) -> FormatError {
    FormatError::invalid(format!(".pth: {}", msg.into()))
}

fn unsupported(msg: impl Into<String>) -> FormatError {
    FormatError::unsupported(format!(".pth: {}", msg.into()))
}

/// The module's parameters and buffers by state-dict name (`atomic_model.descriptor.sea.mean`).
struct StateDict {
    tensors: BTreeMap<String, NdArray>,
    used: RefCell<HashSet<String>>,
}

impl StateDict {
    fn collect(ts: &mut TorchScript, root: Id) -> Result<StateDict, FormatError> {
        let mut found = Vec::new();
        let mut seen = HashSet::new();
        walk(ts, root, String::new(), &mut found, &mut seen, 0)?;
        let mut tensors = BTreeMap::new();
        for (name, id) in found {
            tensors.insert(name, ts.tensor(id)?);
        }
        Ok(StateDict {
            tensors,
            used: RefCell::new(HashSet::new()),
        })
    }

    fn at<'a>(&'a self, prefix: &str) -> Sd<'a> {
        Sd {
            sd: self,
            prefix: prefix.to_string(),
        }
    }
}

/// Every tensor attribute below `obj`, named by its attribute path. `_networks` duplicates
/// `networks` (TorchScript pickles the alias twice) and is skipped.
fn walk(
    ts: &TorchScript,
    obj: Id,
    prefix: String,
    out: &mut Vec<(String, Id)>,
    seen: &mut HashSet<Id>,
    depth: usize,
) -> Result<(), FormatError> {
    if depth > 64 || !seen.insert(obj) {
        return Ok(());
    }
    for (name, v) in ts.attrs(obj) {
        if name == "_networks" {
            continue;
        }
        let path = format!("{prefix}{name}");
        if ts.is_tensor(v) {
            out.push((path, v));
        } else if matches!(ts.data.node(v), Node::Object { .. }) {
            walk(ts, v, format!("{path}."), out, seen, depth + 1)?;
        }
    }
    Ok(())
}

/// A prefix into the state dict.
struct Sd<'a> {
    sd: &'a StateDict,
    prefix: String,
}

impl Sd<'_> {
    fn sub(&self, p: &str) -> Sd<'_> {
        Sd {
            sd: self.sd,
            prefix: format!("{}{p}.", self.prefix),
        }
    }

    fn has(&self, k: &str) -> bool {
        self.sd.tensors.contains_key(&format!("{}{k}", self.prefix))
    }

    fn opt(&self, k: &str) -> Option<Value> {
        let key = format!("{}{k}", self.prefix);
        let t = self.sd.tensors.get(&key)?;
        self.sd.used.borrow_mut().insert(key);
        Some(Value::Array(t.clone()))
    }

    fn get(&self, k: &str) -> Result<Value, FormatError> {
        self.opt(k)
            .ok_or_else(|| bad(format!("parameter {}{k} is missing", self.prefix)))
    }

    fn shape(&self, k: &str) -> Result<Vec<usize>, FormatError> {
        let key = format!("{}{k}", self.prefix);
        self.sd
            .tensors
            .get(&key)
            .map(|t| t.shape.clone())
            .ok_or_else(|| bad(format!("parameter {key} is missing")))
    }
}

/// `model_def_script` sections, with Python-constructor defaults for missing keys.
struct Script<'a>(&'a Value);

impl Script<'_> {
    fn get(&self, k: &str) -> Option<&Value> {
        self.0.get(k)
    }

    fn or(&self, k: &str, default: Value) -> Value {
        self.0.get(k).cloned().unwrap_or(default)
    }

    fn bool(&self, k: &str, default: bool) -> Result<bool, FormatError> {
        match self.0.get(k) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| bad(format!("model_def_script: `{k}` is not a bool"))),
        }
    }

    fn str(&self, k: &str, default: &str) -> Result<String, FormatError> {
        match self.0.get(k) {
            None => Ok(default.to_string()),
            Some(v) => v
                .as_str()
                .map(String::from)
                .ok_or_else(|| bad(format!("model_def_script: `{k}` is not a string"))),
        }
    }

    fn usize(&self, k: &str, default: usize) -> Result<usize, FormatError> {
        match self.0.get(k) {
            None => Ok(default),
            Some(v) => v
                .as_i64()
                .and_then(|i| usize::try_from(i).ok())
                .ok_or_else(|| bad(format!("model_def_script: `{k}` is not a count"))),
        }
    }

    fn usizes(&self, k: &str, default: &[usize]) -> Result<Vec<usize>, FormatError> {
        match self.0.get(k) {
            None => Ok(default.to_vec()),
            Some(Value::List(l)) => l
                .iter()
                .map(|v| {
                    v.as_i64()
                        .and_then(|i| usize::try_from(i).ok())
                        .ok_or_else(|| bad(format!("model_def_script: `{k}` holds a non-count")))
                })
                .collect(),
            Some(v) => Ok(vec![v
                .as_i64()
                .and_then(|i| usize::try_from(i).ok())
                .ok_or_else(|| {
                    bad(format!("model_def_script: `{k}` is not a list"))
                })?]),
        }
    }

    fn f64(&self, k: &str) -> Result<f64, FormatError> {
        self.0.get(k).and_then(Value::as_f64).ok_or_else(|| {
            bad(format!(
                "model_def_script: `{k}` is missing or not a number"
            ))
        })
    }
}

fn dict(items: Vec<(&str, Value)>) -> Value {
    Value::Dict(items.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn s(x: &str) -> Value {
    Value::Str(x.to_string())
}

fn ints(v: &[usize]) -> Value {
    Value::List(v.iter().map(|&x| Value::Int(x as i64)).collect())
}

/// DeePMD-kit's canonical precision name (`RESERVED_PRECISION_DICT[PRECISION_DICT[p]]`).
fn norm_precision(p: &str) -> Result<String, FormatError> {
    Ok(match p.to_ascii_lowercase().as_str() {
        "float16" | "half" => "float16",
        "float32" | "single" => "float32",
        "float64" | "double" | "default" => "float64",
        "int32" => "int32",
        "int64" => "int64",
        "bfloat16" => "bfloat16",
        "bool" => "bool",
        _ => return Err(bad(format!("unknown precision `{p}`"))),
    }
    .to_string())
}

fn layer(
    sd: &Sd,
    activation: Option<&str>,
    resnet: bool,
    precision: &str,
    trainable: Value,
) -> Result<Value, FormatError> {
    let w = sd.get("matrix")?;
    let b = sd.opt("bias");
    let idt = sd.opt("idt");
    Ok(dict(vec![
        ("@class", s("Layer")),
        ("@version", Value::Int(2)),
        ("bias", Value::Bool(b.is_some())),
        ("use_timestep", Value::Bool(idt.is_some())),
        ("activation_function", s(activation.unwrap_or("none"))),
        ("resnet", Value::Bool(resnet)),
        ("precision", s(&norm_precision(precision)?)),
        ("trainable", trainable),
        (
            "@variables",
            dict(vec![
                ("w", w),
                ("b", b.unwrap_or(Value::Null)),
                ("idt", idt.unwrap_or(Value::Null)),
            ]),
        ),
    ]))
}

fn n_layers(sd: &Sd) -> usize {
    (0..)
        .take_while(|i| sd.has(&format!("layers.{i}.matrix")))
        .count()
}

/// Per-layer `trainable`: a bool repeated, or the list as given.
fn per_layer(trainable: &Value, n: usize) -> Vec<Value> {
    match trainable {
        Value::List(l) if l.len() >= n => l[..n].to_vec(),
        Value::List(l) => l
            .iter()
            .cloned()
            .chain(std::iter::repeat(Value::Bool(true)))
            .take(n)
            .collect(),
        other => vec![other.clone(); n],
    }
}

struct NetSpec<'a> {
    neuron: &'a [usize],
    activation: &'a str,
    resnet_dt: bool,
    precision: &'a str,
}

fn embedding_net(
    sd: &Sd,
    n: &NetSpec,
    bias: bool,
    trainable: &Value,
) -> Result<Value, FormatError> {
    if n_layers(sd) != n.neuron.len() {
        return Err(bad(format!(
            "{} has {} layers, neuron says {}",
            sd.prefix,
            n_layers(sd),
            n.neuron.len()
        )));
    }
    let tr = per_layer(trainable, n.neuron.len());
    let in_dim = sd.shape("layers.0.matrix")?[0];
    let layers = (0..n.neuron.len())
        .map(|i| {
            layer(
                &sd.sub(&format!("layers.{i}")),
                Some(n.activation),
                true,
                n.precision,
                tr[i].clone(),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(dict(vec![
        ("@class", s("EmbeddingNetwork")),
        ("@version", Value::Int(2)),
        ("in_dim", Value::Int(in_dim as i64)),
        ("neuron", ints(n.neuron)),
        ("activation_function", s(n.activation)),
        ("resnet_dt", Value::Bool(n.resnet_dt)),
        ("bias", Value::Bool(bias)),
        ("precision", s(&norm_precision(n.precision)?)),
        ("layers", Value::List(layers)),
    ]))
}

fn fitting_net(sd: &Sd, n: &NetSpec, trainable: &Value) -> Result<Value, FormatError> {
    let depth = n.neuron.len();
    if n_layers(sd) != depth + 1 {
        return Err(bad(format!(
            "{} has {} layers, expected {}",
            sd.prefix,
            n_layers(sd),
            depth + 1
        )));
    }
    let tr = per_layer(trainable, depth + 1);
    let in_dim = sd.shape("layers.0.matrix")?[0];
    let mut layers = (0..depth)
        .map(|i| {
            layer(
                &sd.sub(&format!("layers.{i}")),
                Some(n.activation),
                true,
                n.precision,
                tr[i].clone(),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    layers.push(layer(
        &sd.sub(&format!("layers.{depth}")),
        None,
        false,
        n.precision,
        tr[depth].clone(),
    )?);
    Ok(dict(vec![
        ("@class", s("FittingNetwork")),
        ("@version", Value::Int(1)),
        ("in_dim", Value::Int(in_dim as i64)),
        ("out_dim", Value::Int(1)),
        ("neuron", ints(n.neuron)),
        ("activation_function", s(n.activation)),
        ("resnet_dt", Value::Bool(n.resnet_dt)),
        ("precision", s(n.precision)),
        ("bias_out", Value::Bool(true)),
        ("layers", Value::List(layers)),
    ]))
}

fn collection(ndim: usize, ntypes: usize, kind: &str, nets: Vec<Value>) -> Value {
    dict(vec![
        ("@class", s("NetworkCollection")),
        ("@version", Value::Int(1)),
        ("ndim", Value::Int(ndim as i64)),
        ("ntypes", Value::Int(ntypes as i64)),
        ("network_type", s(kind)),
        ("networks", Value::List(nets)),
    ])
}

fn env_mat(rcut: f64, rcut_smth: f64, protection: Value) -> Value {
    dict(vec![
        ("rcut", Value::Float(rcut)),
        ("rcut_smth", Value::Float(rcut_smth)),
        ("protection", protection),
        ("use_exp_switch", Value::Bool(false)),
    ])
}

/// What the fitting needs to know of the descriptor.
struct DescInfo {
    tree: Value,
    dim_out: usize,
    mixed_types: bool,
    ntypes: usize,
}

/// The common keys of se_e2_a / se_e2_r / se_e3.
struct SeCommon {
    sel: Vec<usize>,
    neuron: Vec<usize>,
    activation: String,
    precision: String,
    resnet_dt: bool,
    trainable: Value,
    rcut: f64,
    rcut_smth: f64,
}

fn se_common(p: &Script, default_neuron: &[usize]) -> Result<SeCommon, FormatError> {
    Ok(SeCommon {
        sel: p.usizes("sel", &[])?,
        neuron: p.usizes("neuron", default_neuron)?,
        activation: p.str("activation_function", "tanh")?,
        precision: p.str("precision", "float64")?,
        resnet_dt: p.bool("resnet_dt", false)?,
        trainable: p.or("trainable", Value::Bool(true)),
        rcut: p.f64("rcut")?,
        rcut_smth: p.f64("rcut_smth")?,
    })
}

fn se_nets(sd: &Sd, c: &SeCommon, count: usize) -> Result<Vec<Value>, FormatError> {
    let spec = NetSpec {
        neuron: &c.neuron,
        activation: &c.activation,
        resnet_dt: c.resnet_dt,
        precision: &c.precision,
    };
    (0..count)
        .map(|i| {
            embedding_net(
                &sd.sub(&format!("filter_layers.networks.{i}")),
                &spec,
                true,
                &c.trainable,
            )
        })
        .collect()
}

fn se_a(p: &Script, sd: &Sd, type_map: &Value) -> Result<DescInfo, FormatError> {
    let b = sd.sub("sea");
    let c = se_common(p, &[25, 50, 100])?;
    let ntypes = c.sel.len();
    let tos = p.bool("type_one_side", true)?;
    let ndim = if tos { 1 } else { 2 };
    let nets = se_nets(&b, &c, ntypes.pow(ndim as u32))?;
    let axis = p.usize("axis_neuron", 16)?;
    let prot = p.or("env_protection", Value::Float(0.0));
    let tree = dict(vec![
        ("@class", s("Descriptor")),
        ("type", s("se_e2_a")),
        ("@version", Value::Int(2)),
        ("rcut", Value::Float(c.rcut)),
        ("rcut_smth", Value::Float(c.rcut_smth)),
        ("sel", p.or("sel", Value::Null)),
        ("neuron", ints(&c.neuron)),
        ("axis_neuron", Value::Int(axis as i64)),
        ("resnet_dt", Value::Bool(c.resnet_dt)),
        (
            "set_davg_zero",
            Value::Bool(p.bool("set_davg_zero", false)?),
        ),
        ("activation_function", s(&c.activation)),
        ("precision", s(&norm_precision(&c.precision)?)),
        (
            "embeddings",
            collection(ndim, ntypes, "embedding_network", nets),
        ),
        ("env_mat", env_mat(c.rcut, c.rcut_smth, prot.clone())),
        ("exclude_types", p.or("exclude_types", Value::List(vec![]))),
        ("env_protection", prot),
        (
            "@variables",
            dict(vec![("davg", b.get("mean")?), ("dstd", b.get("stddev")?)]),
        ),
        ("type_map", type_map.clone()),
        ("trainable", Value::Bool(true)),
        ("type_one_side", Value::Bool(tos)),
        ("spin", Value::Null),
    ]);
    Ok(DescInfo {
        tree,
        dim_out: c.neuron.last().copied().unwrap_or(0) * axis,
        mixed_types: false,
        ntypes,
    })
}

fn se_r(p: &Script, sd: &Sd, type_map: &Value) -> Result<DescInfo, FormatError> {
    let c = se_common(p, &[25, 50, 100])?;
    let ntypes = c.sel.len();
    let nets = se_nets(sd, &c, ntypes)?;
    let tree = dict(vec![
        ("@class", s("Descriptor")),
        ("type", s("se_r")),
        ("@version", Value::Int(2)),
        ("rcut", Value::Float(c.rcut)),
        ("rcut_smth", Value::Float(c.rcut_smth)),
        ("sel", p.or("sel", Value::Null)),
        ("neuron", ints(&c.neuron)),
        ("resnet_dt", Value::Bool(c.resnet_dt)),
        (
            "set_davg_zero",
            Value::Bool(p.bool("set_davg_zero", false)?),
        ),
        ("activation_function", s(&c.activation)),
        ("precision", s(&norm_precision(&c.precision)?)),
        (
            "embeddings",
            collection(1, ntypes, "embedding_network", nets),
        ),
        // se_e2_r builds its EnvMat without the protection.
        ("env_mat", env_mat(c.rcut, c.rcut_smth, Value::Float(0.0))),
        ("exclude_types", p.or("exclude_types", Value::List(vec![]))),
        ("env_protection", p.or("env_protection", Value::Float(0.0))),
        (
            "@variables",
            dict(vec![("davg", sd.get("mean")?), ("dstd", sd.get("stddev")?)]),
        ),
        ("type_map", type_map.clone()),
        ("trainable", Value::Bool(true)),
        ("type_one_side", Value::Bool(true)),
        ("spin", Value::Null),
    ]);
    Ok(DescInfo {
        tree,
        dim_out: c.neuron.last().copied().unwrap_or(0),
        mixed_types: false,
        ntypes,
    })
}

fn se_t(p: &Script, sd: &Sd, type_map: &Value) -> Result<DescInfo, FormatError> {
    let b = sd.sub("seat");
    let c = se_common(p, &[24, 48, 96])?;
    let ntypes = c.sel.len();
    let nets = se_nets(&b, &c, ntypes * ntypes)?;
    let prot = p.or("env_protection", Value::Float(0.0));
    let tree = dict(vec![
        ("@class", s("Descriptor")),
        ("type", s("se_e3")),
        ("@version", Value::Int(2)),
        ("rcut", Value::Float(c.rcut)),
        ("rcut_smth", Value::Float(c.rcut_smth)),
        ("sel", p.or("sel", Value::Null)),
        ("neuron", ints(&c.neuron)),
        ("resnet_dt", Value::Bool(c.resnet_dt)),
        (
            "set_davg_zero",
            Value::Bool(p.bool("set_davg_zero", false)?),
        ),
        ("activation_function", s(&c.activation)),
        ("precision", s(&norm_precision(&c.precision)?)),
        (
            "embeddings",
            collection(2, ntypes, "embedding_network", nets),
        ),
        ("env_mat", env_mat(c.rcut, c.rcut_smth, prot.clone())),
        ("exclude_types", p.or("exclude_types", Value::List(vec![]))),
        ("env_protection", prot),
        ("type_map", type_map.clone()),
        (
            "@variables",
            dict(vec![("davg", b.get("mean")?), ("dstd", b.get("stddev")?)]),
        ),
        ("trainable", c.trainable.clone()),
    ]);
    Ok(DescInfo {
        tree,
        dim_out: c.neuron.last().copied().unwrap_or(0),
        mixed_types: false,
        ntypes,
    })
}

struct AttnSpec<'a> {
    nnei: usize,
    embed_dim: usize,
    precision: &'a str,
    trainable: &'a Value,
    smooth: bool,
}

fn attention(p: &Script, sd: &Sd, a: &AttnSpec) -> Result<Value, FormatError> {
    let n_layer = p.usize("attn_layer", 2)?;
    let hidden = p.usize("attn", 128)?;
    let dotr = p.bool("attn_dotr", true)?;
    let sf = p.or("scaling_factor", Value::Float(1.0));
    let normalize = p.bool("normalize", true)?;
    let temperature = p.or("temperature", Value::Null);
    let trainable_ln = p.bool("trainable_ln", true)?;
    let ln_eps = match p.get("ln_eps") {
        None | Some(Value::Null) => Value::Float(1e-5),
        Some(v) => v.clone(),
    };
    let common = || -> Vec<(&'static str, Value)> {
        vec![
            ("nnei", Value::Int(a.nnei as i64)),
            ("embed_dim", Value::Int(a.embed_dim as i64)),
            ("hidden_dim", Value::Int(hidden as i64)),
            ("dotr", Value::Bool(dotr)),
            ("do_mask", Value::Bool(false)),
            ("scaling_factor", sf.clone()),
            ("normalize", Value::Bool(normalize)),
            ("temperature", temperature.clone()),
        ]
    };
    let mut layers = Vec::with_capacity(n_layer);
    for i in 0..n_layer {
        let li = sd.sub(&format!("dpa1_attention.attention_layers.{i}"));
        let gal = dict(vec![
            ("nnei", Value::Int(a.nnei as i64)),
            ("embed_dim", Value::Int(a.embed_dim as i64)),
            ("hidden_dim", Value::Int(hidden as i64)),
            ("num_heads", Value::Int(1)),
            ("dotr", Value::Bool(dotr)),
            ("do_mask", Value::Bool(false)),
            ("scaling_factor", sf.clone()),
            ("normalize", Value::Bool(normalize)),
            ("temperature", temperature.clone()),
            ("bias", Value::Bool(true)),
            ("smooth", Value::Bool(a.smooth)),
            ("precision", s(a.precision)),
            (
                "in_proj",
                layer(
                    &li.sub("attention_layer.in_proj"),
                    None,
                    false,
                    a.precision,
                    a.trainable.clone(),
                )?,
            ),
            (
                "out_proj",
                layer(
                    &li.sub("attention_layer.out_proj"),
                    None,
                    false,
                    a.precision,
                    a.trainable.clone(),
                )?,
            ),
        ]);
        let ln = dict(vec![
            ("@class", s("LayerNorm")),
            ("@version", Value::Int(1)),
            ("eps", ln_eps.clone()),
            ("trainable", Value::Bool(trainable_ln)),
            ("precision", s(a.precision)),
            (
                "@variables",
                dict(vec![
                    ("w", li.get("attn_layer_norm.matrix")?),
                    ("b", li.get("attn_layer_norm.bias")?),
                ]),
            ),
        ]);
        let mut items = common();
        items.extend([
            ("trainable_ln", Value::Bool(trainable_ln)),
            ("ln_eps", ln_eps.clone()),
            ("precision", s(a.precision)),
            ("attention_layer", gal),
            ("attn_layer_norm", ln),
        ]);
        layers.push(dict(items));
    }
    if sd.has(&format!(
        "dpa1_attention.attention_layers.{n_layer}.attn_layer_norm.matrix"
    )) {
        return Err(bad(format!(
            "the file has more attention layers than attn_layer = {n_layer}"
        )));
    }
    let mut items = vec![
        ("@class", s("NeighborGatedAttention")),
        ("@version", Value::Int(1)),
        ("layer_num", Value::Int(n_layer as i64)),
    ];
    items.extend(common());
    items.extend([
        ("trainable_ln", Value::Bool(trainable_ln)),
        ("ln_eps", ln_eps),
        ("precision", s(a.precision)),
        ("attention_layers", Value::List(layers)),
    ]);
    Ok(dict(items))
}

fn dpa1(p: &Script, sd: &Sd, type_map: &Value, v2: bool) -> Result<DescInfo, FormatError> {
    let b = sd.sub("se_atten");
    let ntypes = type_map.as_list().map_or(0, <[Value]>::len);
    let sel = p.usizes("sel", &[])?;
    let nnei: usize = sel.iter().sum();
    let neuron = p.usizes("neuron", &[25, 50, 100])?;
    let axis = p.usize("axis_neuron", 16)?;
    let tebd_dim = p.usize("tebd_dim", 8)?;
    let (mut strip, smooth) = if v2 {
        (true, true)
    } else {
        (
            p.str("tebd_input_mode", "concat")? == "strip",
            p.bool("smooth_type_embedding", true)?,
        )
    };
    if let Some(v) = p.get("stripped_type_embedding").and_then(Value::as_bool) {
        strip = v;
    }
    if v2 && !strip {
        return Err(unsupported("se_atten_v2 with stripped_type_embedding = false (DeePMD-kit 3.2 cannot serialize it either)"));
    }
    if p.bool("attn_mask", false)? {
        return Err(unsupported("attn_mask = true"));
    }
    let activation = p.str("activation_function", "tanh")?;
    let precision = p.str("precision", "float64")?;
    let resnet_dt = p.bool("resnet_dt", false)?;
    let trainable = p.or("trainable", Value::Bool(true));
    let tos = p.bool("type_one_side", false)?;
    let prot = p.or("env_protection", Value::Float(0.0));
    let lmax = p.usize("lmax", 1)?;
    let (rcut, rcut_smth) = (p.f64("rcut")?, p.f64("rcut_smth")?);
    let spec = NetSpec {
        neuron: &neuron,
        activation: &activation,
        resnet_dt,
        precision: &precision,
    };
    let emb = collection(
        0,
        ntypes,
        "embedding_network",
        vec![embedding_net(
            &b.sub("filter_layers.networks.0"),
            &spec,
            true,
            &trainable,
        )?],
    );
    let emb_strip = if strip {
        Some(collection(
            0,
            ntypes,
            "embedding_network",
            vec![embedding_net(
                &b.sub("filter_layers_strip.networks.0"),
                &spec,
                true,
                &trainable,
            )?],
        ))
    } else {
        None
    };
    let att = attention(
        p,
        &b,
        &AttnSpec {
            nnei,
            embed_dim: neuron.last().copied().unwrap_or(0),
            precision: &precision,
            trainable: &trainable,
            smooth,
        },
    )?;
    let use_econf = p.bool("use_econf_tebd", false)?;
    let use_bias = p.bool("use_tebd_bias", false)?;
    let tebd = type_embed_net(p, sd, tebd_dim, &precision, &trainable, type_map)?;
    let mut vars = vec![("davg", b.get("mean")?), ("dstd", b.get("stddev")?)];
    if lmax > 1 {
        vars.push(("degree_gain_raw", b.get("adam_degree_gain_raw")?));
    }
    let mut items = vec![
        ("@class", s("Descriptor")),
        ("type", s(if v2 { "se_atten_v2" } else { "dpa1" })),
        ("@version", Value::Int(if lmax != 1 { 4 } else { 2 })),
        ("rcut", Value::Float(rcut)),
        ("rcut_smth", Value::Float(rcut_smth)),
        ("sel", ints(&sel)),
        ("ntypes", Value::Int(ntypes as i64)),
        ("neuron", ints(&neuron)),
        ("axis_neuron", Value::Int(axis as i64)),
        ("tebd_dim", Value::Int(tebd_dim as i64)),
    ];
    if !v2 {
        items.push(("tebd_input_mode", s(if strip { "strip" } else { "concat" })));
    }
    items.extend([
        ("set_davg_zero", Value::Bool(p.bool("set_davg_zero", true)?)),
        ("attn", Value::Int(p.usize("attn", 128)? as i64)),
        ("attn_layer", Value::Int(p.usize("attn_layer", 2)? as i64)),
        ("attn_dotr", Value::Bool(p.bool("attn_dotr", true)?)),
        ("attn_mask", Value::Bool(false)),
        ("activation_function", s(&activation)),
        ("resnet_dt", Value::Bool(resnet_dt)),
        ("scaling_factor", p.or("scaling_factor", Value::Float(1.0))),
        ("normalize", Value::Bool(p.bool("normalize", true)?)),
        ("temperature", p.or("temperature", Value::Null)),
        ("trainable_ln", Value::Bool(p.bool("trainable_ln", true)?)),
        (
            "ln_eps",
            att.get("ln_eps").cloned().unwrap_or(Value::Float(1e-5)),
        ),
    ]);
    if !v2 {
        items.push(("smooth_type_embedding", Value::Bool(smooth)));
    }
    items.extend([
        ("type_one_side", Value::Bool(tos)),
        (
            "concat_output_tebd",
            Value::Bool(p.bool("concat_output_tebd", true)?),
        ),
        ("use_econf_tebd", Value::Bool(use_econf)),
        ("use_tebd_bias", Value::Bool(use_bias)),
        ("type_map", type_map.clone()),
        ("precision", s(&norm_precision(&precision)?)),
        ("embeddings", emb),
    ]);
    if v2 {
        items.extend([
            ("embeddings_strip", emb_strip.clone().unwrap_or(Value::Null)),
            ("attention_layers", att),
            // se_atten_v2 builds its EnvMat without the protection.
            ("env_mat", env_mat(rcut, rcut_smth, Value::Float(0.0))),
        ]);
    } else {
        items.extend([
            ("attention_layers", att),
            ("env_mat", env_mat(rcut, rcut_smth, prot.clone())),
        ]);
    }
    items.extend([
        ("type_embedding", tebd),
        ("exclude_types", p.or("exclude_types", Value::List(vec![]))),
        ("env_protection", prot),
        ("@variables", dict(vars)),
        ("trainable", trainable),
        ("spin", Value::Null),
    ]);
    if lmax != 1 {
        items.push(("lmax", Value::Int(lmax as i64)));
    }
    if !v2 {
        if let Some(es) = emb_strip {
            items.push(("embeddings_strip", es));
        }
    }
    let dim_out = neuron.last().copied().unwrap_or(0) * axis
        + if p.bool("concat_output_tebd", true)? {
            tebd_dim
        } else {
            0
        };
    Ok(DescInfo {
        tree: dict(items),
        dim_out,
        mixed_types: true,
        ntypes,
    })
}

/// DPA-3: `repflow` options from the script (`RepFlowArgs` defaults), weights from
/// `descriptor.repflows`.
fn dpa3(p: &Script, sd: &Sd, type_map: &Value) -> Result<DescInfo, FormatError> {
    let ntypes = type_map.as_list().map_or(0, <[Value]>::len);
    if p.bool("add_chg_spin_ebd", false)? {
        return Err(unsupported(
            "DPA-3 with charge/spin embeddings (add_chg_spin_ebd)",
        ));
    }
    let empty = Value::Dict(Dict::new());
    let r = Script(p.get("repflow").unwrap_or(&empty));
    let b = sd.sub("repflows");
    let precision = p.str("precision", "float64")?;
    let prec = norm_precision(&precision)?;
    let activation = p.str("activation_function", "silu")?;
    let trainable = p.or("trainable", Value::Bool(true));
    let prot = p.or("env_protection", Value::Float(0.0));
    let n_dim = r.usize("n_dim", 128)?;
    let e_dim = r.usize("e_dim", 64)?;
    let a_dim = r.usize("a_dim", 64)?;
    let nlayers = r.usize("nlayers", 6)?;
    let e_sel = r.usize("e_sel", 120)?;
    let a_sel = r.usize("a_sel", 20)?;
    let num = |k: &str, d: f64| r.get(k).cloned().unwrap_or(Value::Float(d));
    let (e_rcut, e_rcut_smth) = (num("e_rcut", 6.0), num("e_rcut_smth", 5.0));
    let (a_rcut, a_rcut_smth) = (num("a_rcut", 4.0), num("a_rcut_smth", 3.5));
    let a_rate = r.usize("a_compress_rate", 0)?;
    let a_e_rate = r.usize("a_compress_e_rate", 1)?;
    let a_split = r.bool("a_compress_use_split", false)?;
    let n_multi = r.usize("n_multi_edge_message", 1)?;
    let axis = r.usize("axis_neuron", 4)?;
    let update_angle = r.bool("update_angle", true)?;
    let update_style = r.str("update_style", "res_residual")?;
    let update_residual = num("update_residual", 0.1);
    let update_residual_init = r.str("update_residual_init", "const")?;
    let fix_stat_std = if r.bool("skip_stat", false)? {
        Value::Float(0.3)
    } else {
        num("fix_stat_std", 0.3)
    };
    let optim_update = r.bool("optim_update", true)?;
    let smooth_edge_update = r.bool("smooth_edge_update", false)?;
    let edge_init_use_dist = r.bool("edge_init_use_dist", false)?;
    let use_exp_switch = r.bool("use_exp_switch", false)?;
    let use_dynamic_sel = r.bool("use_dynamic_sel", false)?;
    let sel_reduce_factor = num("sel_reduce_factor", 10.0);
    let sequential_update = r.bool("sequential_update", false)?;
    let plain = |sd: &Sd| layer(sd, None, false, &precision, trainable.clone());
    let mut layers = Vec::with_capacity(nlayers);
    for i in 0..nlayers {
        let l = b.sub(&format!("layers.{i}"));
        let mut items = vec![
            ("@class", s("RepFlowLayer")),
            ("@version", Value::Int(2)),
            ("e_rcut", e_rcut.clone()),
            ("e_rcut_smth", e_rcut_smth.clone()),
            ("e_sel", ints(&[e_sel])),
            ("a_rcut", a_rcut.clone()),
            ("a_rcut_smth", a_rcut_smth.clone()),
            ("a_sel", Value::Int(a_sel as i64)),
            ("ntypes", Value::Int(ntypes as i64)),
            ("n_dim", Value::Int(n_dim as i64)),
            ("e_dim", Value::Int(e_dim as i64)),
            ("a_dim", Value::Int(a_dim as i64)),
            ("a_compress_rate", Value::Int(a_rate as i64)),
            ("a_compress_e_rate", Value::Int(a_e_rate as i64)),
            ("a_compress_use_split", Value::Bool(a_split)),
            ("n_multi_edge_message", Value::Int(n_multi as i64)),
            ("axis_neuron", Value::Int(axis as i64)),
            ("activation_function", s(&activation)),
            ("update_angle", Value::Bool(update_angle)),
            ("update_style", s(&update_style)),
            ("update_residual", update_residual.clone()),
            ("update_residual_init", s(&update_residual_init)),
            ("precision", s(&prec)),
            ("optim_update", Value::Bool(optim_update)),
            ("smooth_edge_update", Value::Bool(smooth_edge_update)),
            ("use_dynamic_sel", Value::Bool(use_dynamic_sel)),
            ("sel_reduce_factor", sel_reduce_factor.clone()),
            ("sequential_update", Value::Bool(sequential_update)),
            ("node_self_mlp", plain(&l.sub("node_self_mlp"))?),
            ("node_sym_linear", plain(&l.sub("node_sym_linear"))?),
            ("node_edge_linear", plain(&l.sub("node_edge_linear"))?),
            ("edge_self_linear", plain(&l.sub("edge_self_linear"))?),
        ];
        if update_angle {
            items.extend([
                ("edge_angle_linear1", plain(&l.sub("edge_angle_linear1"))?),
                ("edge_angle_linear2", plain(&l.sub("edge_angle_linear2"))?),
                ("angle_self_linear", plain(&l.sub("angle_self_linear"))?),
            ]);
            if a_rate != 0 && !a_split {
                items.extend([
                    ("a_compress_n_linear", plain(&l.sub("a_compress_n_linear"))?),
                    ("a_compress_e_linear", plain(&l.sub("a_compress_e_linear"))?),
                ]);
            }
        }
        if update_style == "res_residual" {
            let list = |name: &str| -> Result<Value, FormatError> {
                let n = (0..).take_while(|k| l.has(&format!("{name}.{k}"))).count();
                Ok(Value::List(
                    (0..n)
                        .map(|k| l.get(&format!("{name}.{k}")))
                        .collect::<Result<_, _>>()?,
                ))
            };
            items.push((
                "@variables",
                dict(vec![
                    ("n_residual", list("n_residual")?),
                    ("e_residual", list("e_residual")?),
                    ("a_residual", list("a_residual")?),
                ]),
            ));
        }
        layers.push(dict(items));
    }
    let use_econf = p.bool("use_econf_tebd", false)?;
    let use_bias = p.bool("use_tebd_bias", false)?;
    let tebd = type_embed_net(p, sd, n_dim, &precision, &trainable, type_map)?;
    let args = dict(vec![
        ("n_dim", Value::Int(n_dim as i64)),
        ("e_dim", Value::Int(e_dim as i64)),
        ("a_dim", Value::Int(a_dim as i64)),
        ("nlayers", Value::Int(nlayers as i64)),
        ("e_rcut", e_rcut.clone()),
        ("e_rcut_smth", e_rcut_smth.clone()),
        ("e_sel", Value::Int(e_sel as i64)),
        ("a_rcut", a_rcut),
        ("a_rcut_smth", a_rcut_smth),
        ("a_sel", Value::Int(a_sel as i64)),
        ("a_compress_rate", Value::Int(a_rate as i64)),
        ("a_compress_e_rate", Value::Int(a_e_rate as i64)),
        ("a_compress_use_split", Value::Bool(a_split)),
        ("n_multi_edge_message", Value::Int(n_multi as i64)),
        ("axis_neuron", Value::Int(axis as i64)),
        ("update_angle", Value::Bool(update_angle)),
        ("update_style", s(&update_style)),
        ("update_residual", update_residual),
        ("update_residual_init", s(&update_residual_init)),
        ("fix_stat_std", fix_stat_std),
        ("optim_update", Value::Bool(optim_update)),
        ("smooth_edge_update", Value::Bool(smooth_edge_update)),
        ("edge_init_use_dist", Value::Bool(edge_init_use_dist)),
        ("use_exp_switch", Value::Bool(use_exp_switch)),
        ("use_dynamic_sel", Value::Bool(use_dynamic_sel)),
        ("sel_reduce_factor", sel_reduce_factor),
        ("sequential_update", Value::Bool(sequential_update)),
    ]);
    let concat = p.bool("concat_output_tebd", false)?;
    let rcut = e_rcut.as_f64().unwrap_or(6.0);
    let rcut_smth = e_rcut_smth.as_f64().unwrap_or(5.0);
    let variable = dict(vec![
        ("edge_embd", plain(&b.sub("edge_embd"))?),
        ("angle_embd", plain(&b.sub("angle_embd"))?),
        ("repflow_layers", Value::List(layers)),
        ("env_mat", env_mat(rcut, rcut_smth, Value::Float(0.0))),
        (
            "@variables",
            dict(vec![("davg", b.get("mean")?), ("dstd", b.get("stddev")?)]),
        ),
    ]);
    let tree = dict(vec![
        ("@class", s("Descriptor")),
        ("type", s("dpa3")),
        ("@version", Value::Int(2)),
        ("ntypes", Value::Int(ntypes as i64)),
        ("repflow_args", args),
        ("concat_output_tebd", Value::Bool(concat)),
        ("activation_function", s(&activation)),
        ("precision", s(&precision)),
        ("exclude_types", p.or("exclude_types", Value::List(vec![]))),
        ("env_protection", prot),
        ("trainable", trainable),
        ("use_econf_tebd", Value::Bool(use_econf)),
        ("use_tebd_bias", Value::Bool(use_bias)),
        (
            "use_loc_mapping",
            Value::Bool(p.bool("use_loc_mapping", true)?),
        ),
        ("add_chg_spin_ebd", Value::Bool(false)),
        ("default_chg_spin", p.or("default_chg_spin", Value::Null)),
        ("type_map", type_map.clone()),
        ("type_embedding", tebd),
        ("repflow_variable", variable),
    ]);
    Ok(DescInfo {
        tree,
        dim_out: n_dim + if concat { n_dim } else { 0 },
        mixed_types: true,
        ntypes,
    })
}

/// A descriptor's `TypeEmbedNet` tree (`tebd_dim` wide, with the padding row), weights from
/// `type_embedding.embedding.embedding_net`.
fn type_embed_net(
    p: &Script,
    sd: &Sd,
    tebd_dim: usize,
    precision: &str,
    trainable: &Value,
    type_map: &Value,
) -> Result<Value, FormatError> {
    let ntypes = type_map.as_list().map_or(0, <[Value]>::len);
    let use_econf = p.bool("use_econf_tebd", false)?;
    let use_bias = p.bool("use_tebd_bias", false)?;
    let te_spec = NetSpec {
        neuron: &[tebd_dim],
        activation: "Linear",
        resnet_dt: false,
        precision,
    };
    let te_net = embedding_net(
        &sd.sub("type_embedding.embedding.embedding_net"),
        &te_spec,
        use_bias,
        &Value::Bool(true),
    )?;
    Ok(dict(vec![
        ("@class", s("TypeEmbedNet")),
        ("@version", Value::Int(2)),
        ("ntypes", Value::Int(ntypes as i64)),
        ("neuron", ints(&[tebd_dim])),
        ("resnet_dt", Value::Bool(false)),
        ("precision", s(precision)),
        ("activation_function", s("Linear")),
        ("trainable", trainable.clone()),
        ("padding", Value::Bool(true)),
        ("use_econf_tebd", Value::Bool(use_econf)),
        ("use_tebd_bias", Value::Bool(use_bias)),
        ("type_map", type_map.clone()),
        ("embedding", te_net),
    ]))
}

/// `se_e3_tebd`: DPA-2's three-body block alone, weights from `se_ttebd`, in the order of
/// `DescrptSeTTebd.serialize`.
fn se_t_tebd(p: &Script, sd: &Sd, type_map: &Value) -> Result<DescInfo, FormatError> {
    let b = sd.sub("se_ttebd");
    let ntypes = type_map.as_list().map_or(0, <[Value]>::len);
    let sel = p.usizes("sel", &[])?;
    let neuron = p.usizes("neuron", &[2, 4, 8])?;
    let tebd_dim = p.usize("tebd_dim", 8)?;
    let mode = p.str("tebd_input_mode", "concat")?;
    let activation = p.str("activation_function", "tanh")?;
    let precision = p.str("precision", "float64")?;
    let resnet_dt = p.bool("resnet_dt", false)?;
    let trainable = p.or("trainable", Value::Bool(true));
    let prot = p.or("env_protection", Value::Float(0.0));
    let (rcut, rcut_smth) = (p.f64("rcut")?, p.f64("rcut_smth")?);
    let concat = p.bool("concat_output_tebd", true)?;
    let spec = NetSpec {
        neuron: &neuron,
        activation: &activation,
        resnet_dt,
        precision: &precision,
    };
    let nets = |key: &str| -> Result<Value, FormatError> {
        Ok(collection(
            0,
            ntypes,
            "embedding_network",
            vec![embedding_net(&b.sub(key), &spec, true, &trainable)?],
        ))
    };
    let tebd = type_embed_net(p, sd, tebd_dim, &precision, &trainable, type_map)?;
    let mut items = vec![
        ("@class", s("Descriptor")),
        ("type", s("se_e3_tebd")),
        ("@version", Value::Int(1)),
        ("rcut", Value::Float(rcut)),
        ("rcut_smth", Value::Float(rcut_smth)),
        ("sel", ints(&sel)),
        ("ntypes", Value::Int(ntypes as i64)),
        ("neuron", ints(&neuron)),
        ("tebd_dim", Value::Int(tebd_dim as i64)),
        ("tebd_input_mode", s(&mode)),
        ("set_davg_zero", Value::Bool(p.bool("set_davg_zero", true)?)),
        ("activation_function", s(&activation)),
        ("resnet_dt", Value::Bool(resnet_dt)),
        ("concat_output_tebd", Value::Bool(concat)),
        (
            "use_econf_tebd",
            Value::Bool(p.bool("use_econf_tebd", false)?),
        ),
        ("type_map", type_map.clone()),
        ("precision", s(&norm_precision(&precision)?)),
        ("embeddings", nets("filter_layers.networks.0")?),
        ("env_mat", env_mat(rcut, rcut_smth, prot.clone())),
        ("type_embedding", tebd),
        ("exclude_types", p.or("exclude_types", Value::List(vec![]))),
        ("env_protection", prot),
        ("smooth", Value::Bool(p.bool("smooth", true)?)),
        (
            "@variables",
            dict(vec![("davg", b.get("mean")?), ("dstd", b.get("stddev")?)]),
        ),
        ("trainable", trainable.clone()),
    ];
    if mode == "strip" {
        items.push(("embeddings_strip", nets("filter_layers_strip.networks.0")?));
    }
    Ok(DescInfo {
        tree: dict(items),
        dim_out: neuron.last().copied().unwrap_or(0) + if concat { tebd_dim } else { 0 },
        mixed_types: true,
        ntypes,
    })
}

/// The descriptor section `p` with its parameters under `sd`.
fn descriptor(p: &Script, sd: &Sd, type_map: &Value) -> Result<DescInfo, FormatError> {
    Ok(match p.str("type", "")?.as_str() {
        "se_e2_a" | "se_a" => se_a(p, sd, type_map)?,
        "se_e2_r" | "se_r" => se_r(p, sd, type_map)?,
        "se_e3" | "se_at" | "se_a_3be" => se_t(p, sd, type_map)?,
        "dpa1" | "se_atten" => dpa1(p, sd, type_map, false)?,
        "se_atten_v2" => dpa1(p, sd, type_map, true)?,
        "dpa3" => dpa3(p, sd, type_map)?,
        "dpa2" => dpa2(p, sd, type_map)?,
        "se_e3_tebd" => se_t_tebd(p, sd, type_map)?,
        "hybrid" => hybrid(p, sd, type_map)?,
        other => {
            return Err(unsupported(format!(
            "descriptor `{other}` (supported: se_e2_a, se_e2_r, se_e3, se_e3_tebd, se_atten/dpa1, se_atten_v2, dpa2, dpa3, hybrid)"
        )))
        }
    })
}

/// DPA-2: `repinit` / `repformer` options from the script (`RepinitArgs`,
/// `RepformerArgs` defaults), weights from `repinit`, `repinit_three_body`, `repformers`.
fn dpa2(p: &Script, sd: &Sd, type_map: &Value) -> Result<DescInfo, FormatError> {
    let ntypes = type_map.as_list().map_or(0, <[Value]>::len);
    let empty = Value::Dict(Dict::new());
    let ri = Script(p.get("repinit").unwrap_or(&empty));
    let rf = Script(p.get("repformer").unwrap_or(&empty));
    let precision = p.str("precision", "float64")?;
    let prec = norm_precision(&precision)?;
    let trainable = p.or("trainable", Value::Bool(true));
    let prot = p.or("env_protection", Value::Float(0.0));
    let num = |sc: &Script, k: &str, d: f64| sc.get(k).cloned().unwrap_or(Value::Float(d));
    let fnum = |v: &Value| v.as_f64().unwrap_or(0.0);
    // RepinitArgs.
    let r_rcut = num(&ri, "rcut", f64::NAN);
    let r_rcut_smth = num(&ri, "rcut_smth", f64::NAN);
    let r_nsel = ri.usize("nsel", 0)?;
    let r_neuron = ri.usizes("neuron", &[25, 50, 100])?;
    let r_axis = ri.usize("axis_neuron", 16)?;
    let tebd_dim = ri.usize("tebd_dim", 8)?;
    let tebd_mode = ri.str("tebd_input_mode", "concat")?;
    let r_act = ri.str("activation_function", "tanh")?;
    let r_resnet = ri.bool("resnet_dt", false)?;
    let use_3b = ri.bool("use_three_body", false)?;
    let t_neuron = ri.usizes("three_body_neuron", &[2, 4, 8])?;
    // Unused without the three-body block, and then kept as written (even "auto").
    let t_sel_v = ri.get("three_body_sel").cloned().unwrap_or(Value::Int(40));
    let t_rcut = num(&ri, "three_body_rcut", 4.0);
    let t_rcut_smth = num(&ri, "three_body_rcut_smth", 0.5);
    if r_nsel == 0 || fnum(&r_rcut).is_nan() || fnum(&r_rcut_smth).is_nan() {
        return Err(bad(
            "model_def_script: repinit needs rcut, rcut_smth and nsel",
        ));
    }
    let repinit_args = dict(vec![
        ("rcut", r_rcut.clone()),
        ("rcut_smth", r_rcut_smth.clone()),
        ("nsel", Value::Int(r_nsel as i64)),
        ("neuron", ints(&r_neuron)),
        ("axis_neuron", Value::Int(r_axis as i64)),
        ("tebd_dim", Value::Int(tebd_dim as i64)),
        ("tebd_input_mode", s(&tebd_mode)),
        (
            "set_davg_zero",
            Value::Bool(ri.bool("set_davg_zero", true)?),
        ),
        ("activation_function", s(&r_act)),
        ("resnet_dt", Value::Bool(r_resnet)),
        (
            "type_one_side",
            Value::Bool(ri.bool("type_one_side", false)?),
        ),
        ("use_three_body", Value::Bool(use_3b)),
        ("three_body_neuron", ints(&t_neuron)),
        ("three_body_sel", t_sel_v),
        ("three_body_rcut", t_rcut.clone()),
        ("three_body_rcut_smth", t_rcut_smth.clone()),
    ]);
    // RepformerArgs.
    let f_rcut = num(&rf, "rcut", f64::NAN);
    let f_rcut_smth = num(&rf, "rcut_smth", f64::NAN);
    let f_nsel = rf.usize("nsel", 0)?;
    if f_nsel == 0 || fnum(&f_rcut).is_nan() || fnum(&f_rcut_smth).is_nan() {
        return Err(bad(
            "model_def_script: repformer needs rcut, rcut_smth and nsel",
        ));
    }
    let nlayers = rf.usize("nlayers", 3)?;
    let g1_dim = rf.usize("g1_dim", 128)?;
    let g2_dim = rf.usize("g2_dim", 16)?;
    let f_axis = rf.usize("axis_neuron", 4)?;
    let flag = |k: &str, d: bool| rf.bool(k, d);
    let (has_conv, has_drrd, has_grrg, has_attn1) = (
        flag("update_g1_has_conv", true)?,
        flag("update_g1_has_drrd", true)?,
        flag("update_g1_has_grrg", true)?,
        flag("update_g1_has_attn", true)?,
    );
    let (has_g1g1, has_attn2, update_h2) = (
        flag("update_g2_has_g1g1", true)?,
        flag("update_g2_has_attn", true)?,
        flag("update_h2", false)?,
    );
    let (a1h, a1n) = (rf.usize("attn1_hidden", 64)?, rf.usize("attn1_nhead", 4)?);
    let (a2h, a2n) = (rf.usize("attn2_hidden", 16)?, rf.usize("attn2_nhead", 4)?);
    let a2_gate = flag("attn2_has_gate", false)?;
    let f_act = rf.str("activation_function", "tanh")?;
    let f_style = rf.str("update_style", "res_avg")?;
    let trainable_ln = flag("trainable_ln", true)?;
    let use_sqrt = flag("use_sqrt_nnei", true)?;
    let (out_conv, out_mlp) = (flag("g1_out_conv", true)?, flag("g1_out_mlp", true)?);
    let ln_eps = match rf.get("ln_eps") {
        None | Some(Value::Null) => Value::Float(1e-5),
        Some(v) => v.clone(),
    };
    let smooth = p.bool("smooth", true)?;
    let repformer_args = dict(vec![
        ("rcut", f_rcut.clone()),
        ("rcut_smth", f_rcut_smth.clone()),
        ("nsel", Value::Int(f_nsel as i64)),
        ("nlayers", Value::Int(nlayers as i64)),
        ("g1_dim", Value::Int(g1_dim as i64)),
        ("g2_dim", Value::Int(g2_dim as i64)),
        ("axis_neuron", Value::Int(f_axis as i64)),
        ("direct_dist", Value::Bool(flag("direct_dist", false)?)),
        ("update_g1_has_conv", Value::Bool(has_conv)),
        ("update_g1_has_drrd", Value::Bool(has_drrd)),
        ("update_g1_has_grrg", Value::Bool(has_grrg)),
        ("update_g1_has_attn", Value::Bool(has_attn1)),
        ("update_g2_has_g1g1", Value::Bool(has_g1g1)),
        ("update_g2_has_attn", Value::Bool(has_attn2)),
        ("update_h2", Value::Bool(update_h2)),
        ("attn1_hidden", Value::Int(a1h as i64)),
        ("attn1_nhead", Value::Int(a1n as i64)),
        ("attn2_hidden", Value::Int(a2h as i64)),
        ("attn2_nhead", Value::Int(a2n as i64)),
        ("attn2_has_gate", Value::Bool(a2_gate)),
        ("activation_function", s(&f_act)),
        ("update_style", s(&f_style)),
        ("update_residual", num(&rf, "update_residual", 0.001)),
        (
            "update_residual_init",
            s(&rf.str("update_residual_init", "norm")?),
        ),
        ("set_davg_zero", Value::Bool(flag("set_davg_zero", true)?)),
        ("trainable_ln", Value::Bool(trainable_ln)),
        ("use_sqrt_nnei", Value::Bool(use_sqrt)),
        ("g1_out_conv", Value::Bool(out_conv)),
        ("g1_out_mlp", Value::Bool(out_mlp)),
        ("ln_eps", ln_eps.clone()),
    ]);
    let use_econf = p.bool("use_econf_tebd", false)?;
    let use_bias = p.bool("use_tebd_bias", false)?;
    let tebd = type_embed_net(p, sd, tebd_dim, &precision, &trainable, type_map)?;
    let plain = |sd: &Sd| layer(sd, None, false, &precision, trainable.clone());
    let concat = p.bool("concat_output_tebd", true)?;
    let add_tebd = p.bool("add_tebd_to_repinit_out", false)?;
    let mut items = vec![
        ("@class", s("Descriptor")),
        ("type", s("dpa2")),
        ("@version", Value::Int(3)),
        ("ntypes", Value::Int(ntypes as i64)),
        ("repinit_args", repinit_args),
        ("repformer_args", repformer_args),
        ("concat_output_tebd", Value::Bool(concat)),
        ("precision", s(&precision)),
        ("smooth", Value::Bool(smooth)),
        ("exclude_types", p.or("exclude_types", Value::List(vec![]))),
        ("env_protection", prot),
        ("trainable", trainable.clone()),
        ("add_tebd_to_repinit_out", Value::Bool(add_tebd)),
        ("use_econf_tebd", Value::Bool(use_econf)),
        ("use_tebd_bias", Value::Bool(use_bias)),
        ("type_map", type_map.clone()),
        ("type_embedding", tebd),
        ("g1_shape_tranform", plain(&sd.sub("g1_shape_tranform"))?),
    ];
    if add_tebd {
        items.push(("tebd_transform", plain(&sd.sub("tebd_transform"))?));
    }
    // A se_atten-style block's variables: its embedding collection(s), env_mat, statistics.
    let block = |b: &Sd, neuron: &[usize], rc: f64, rs: f64| -> Result<Value, FormatError> {
        let spec = NetSpec {
            neuron,
            activation: &r_act,
            resnet_dt: r_resnet,
            precision: &precision,
        };
        let mut v = vec![(
            "embeddings",
            collection(
                0,
                ntypes,
                "embedding_network",
                vec![embedding_net(
                    &b.sub("filter_layers.networks.0"),
                    &spec,
                    true,
                    &trainable,
                )?],
            ),
        )];
        v.push(("env_mat", env_mat(rc, rs, Value::Float(0.0))));
        v.push((
            "@variables",
            dict(vec![("davg", b.get("mean")?), ("dstd", b.get("stddev")?)]),
        ));
        if tebd_mode == "strip" {
            v.push((
                "embeddings_strip",
                collection(
                    0,
                    ntypes,
                    "embedding_network",
                    vec![embedding_net(
                        &b.sub("filter_layers_strip.networks.0"),
                        &spec,
                        true,
                        &trainable,
                    )?],
                ),
            ));
        }
        Ok(dict(v))
    };
    let rep = sd.sub("repformers");
    let mut layers = Vec::with_capacity(nlayers);
    for i in 0..nlayers {
        let l = rep.sub(&format!("layers.{i}"));
        // The last layer leaves g2 and h2 alone (nothing reads them after it).
        let update_chnnl_2 = i + 1 != nlayers;
        let (has_g1g1, has_attn2, update_h2) = (
            has_g1g1 && update_chnnl_2,
            has_attn2 && update_chnnl_2,
            update_h2 && update_chnnl_2,
        );
        let mut li = vec![
            ("@class", s("RepformerLayer")),
            ("@version", Value::Int(2)),
            ("rcut", f_rcut.clone()),
            ("rcut_smth", f_rcut_smth.clone()),
            ("sel", ints(&[f_nsel])),
            ("ntypes", Value::Int(ntypes as i64)),
            ("g1_dim", Value::Int(g1_dim as i64)),
            ("g2_dim", Value::Int(g2_dim as i64)),
            ("axis_neuron", Value::Int(f_axis as i64)),
            ("update_chnnl_2", Value::Bool(update_chnnl_2)),
            ("update_g1_has_conv", Value::Bool(has_conv)),
            ("update_g1_has_drrd", Value::Bool(has_drrd)),
            ("update_g1_has_grrg", Value::Bool(has_grrg)),
            ("update_g1_has_attn", Value::Bool(has_attn1)),
            ("update_g2_has_g1g1", Value::Bool(has_g1g1)),
            ("update_g2_has_attn", Value::Bool(has_attn2)),
            ("update_h2", Value::Bool(update_h2)),
            ("attn1_hidden", Value::Int(a1h as i64)),
            ("attn1_nhead", Value::Int(a1n as i64)),
            ("attn2_hidden", Value::Int(a2h as i64)),
            ("attn2_nhead", Value::Int(a2n as i64)),
            ("attn2_has_gate", Value::Bool(a2_gate)),
            ("activation_function", s(&f_act)),
            ("update_style", s(&f_style)),
            ("smooth", Value::Bool(smooth)),
            ("precision", s(&prec)),
            ("trainable_ln", Value::Bool(trainable_ln)),
            ("use_sqrt_nnei", Value::Bool(use_sqrt)),
            ("g1_out_conv", Value::Bool(out_conv)),
            ("g1_out_mlp", Value::Bool(out_mlp)),
            ("ln_eps", ln_eps.clone()),
            ("linear1", plain(&l.sub("linear1"))?),
        ];
        if update_chnnl_2 {
            li.push(("linear2", plain(&l.sub("linear2"))?));
        }
        if has_conv {
            li.push(("proj_g1g2", plain(&l.sub("proj_g1g2"))?));
        }
        if has_g1g1 {
            li.push(("proj_g1g1g2", plain(&l.sub("proj_g1g1g2"))?));
        }
        if has_attn2 || update_h2 {
            li.push((
                "attn2g_map",
                dict(vec![
                    ("@class", s("Atten2Map")),
                    ("@version", Value::Int(1)),
                    ("input_dim", Value::Int(g2_dim as i64)),
                    ("hidden_dim", Value::Int(a2h as i64)),
                    ("head_num", Value::Int(a2n as i64)),
                    ("has_gate", Value::Bool(a2_gate)),
                    ("smooth", Value::Bool(smooth)),
                    ("attnw_shift", Value::Float(20.0)),
                    ("precision", s(&prec)),
                    ("mapqk", plain(&l.sub("attn2g_map.mapqk"))?),
                ]),
            ));
            if has_attn2 {
                li.push((
                    "attn2_mh_apply",
                    dict(vec![
                        ("@class", s("Atten2MultiHeadApply")),
                        ("@version", Value::Int(1)),
                        ("input_dim", Value::Int(g2_dim as i64)),
                        ("head_num", Value::Int(a2n as i64)),
                        ("precision", s(&prec)),
                        ("mapv", plain(&l.sub("attn2_mh_apply.mapv"))?),
                        ("head_map", plain(&l.sub("attn2_mh_apply.head_map"))?),
                    ]),
                ));
                li.push((
                    "attn2_lm",
                    dict(vec![
                        ("@class", s("LayerNorm")),
                        ("@version", Value::Int(1)),
                        ("eps", ln_eps.clone()),
                        ("trainable", Value::Bool(trainable_ln)),
                        ("precision", s(&prec)),
                        (
                            "@variables",
                            dict(vec![
                                ("w", l.get("attn2_lm.matrix")?),
                                ("b", l.get("attn2_lm.bias")?),
                            ]),
                        ),
                    ]),
                ));
            }
            if update_h2 {
                li.push((
                    "attn2_ev_apply",
                    dict(vec![
                        ("@class", s("Atten2EquiVarApply")),
                        ("@version", Value::Int(1)),
                        ("input_dim", Value::Int(g2_dim as i64)),
                        ("head_num", Value::Int(a2n as i64)),
                        ("precision", s(&prec)),
                        ("head_map", plain(&l.sub("attn2_ev_apply.head_map"))?),
                    ]),
                ));
            }
        }
        if has_attn1 {
            li.push((
                "loc_attn",
                dict(vec![
                    ("@class", s("LocalAtten")),
                    ("@version", Value::Int(1)),
                    ("input_dim", Value::Int(g1_dim as i64)),
                    ("hidden_dim", Value::Int(a1h as i64)),
                    ("head_num", Value::Int(a1n as i64)),
                    ("smooth", Value::Bool(smooth)),
                    ("attnw_shift", Value::Float(20.0)),
                    ("precision", s(&prec)),
                    ("mapq", plain(&l.sub("loc_attn.mapq"))?),
                    ("mapkv", plain(&l.sub("loc_attn.mapkv"))?),
                    ("head_map", plain(&l.sub("loc_attn.head_map"))?),
                ]),
            ));
        }
        if out_mlp {
            li.push(("g1_self_mlp", plain(&l.sub("g1_self_mlp"))?));
        }
        let list = |name: &str| -> Result<Value, FormatError> {
            let n = (0..).take_while(|k| l.has(&format!("{name}.{k}"))).count();
            Ok(Value::List(
                (0..n)
                    .map(|k| l.get(&format!("{name}.{k}")))
                    .collect::<Result<_, _>>()?,
            ))
        };
        if f_style == "res_residual" {
            li.push((
                "@variables",
                dict(vec![
                    ("g1_residual", list("g1_residual")?),
                    ("g2_residual", list("g2_residual")?),
                    ("h2_residual", list("h2_residual")?),
                ]),
            ));
        }
        layers.push(dict(li));
    }
    items.push((
        "repinit_variable",
        block(
            &sd.sub("repinit"),
            &r_neuron,
            fnum(&r_rcut),
            fnum(&r_rcut_smth),
        )?,
    ));
    items.push((
        "repformers_variable",
        dict(vec![
            ("g2_embd", plain(&rep.sub("g2_embd"))?),
            ("repformer_layers", Value::List(layers)),
            (
                "env_mat",
                env_mat(fnum(&f_rcut), fnum(&f_rcut_smth), Value::Float(0.0)),
            ),
            (
                "@variables",
                dict(vec![
                    ("davg", rep.get("mean")?),
                    ("dstd", rep.get("stddev")?),
                ]),
            ),
        ]),
    ));
    if use_3b {
        items.push((
            "repinit_three_body_variable",
            block(
                &sd.sub("repinit_three_body"),
                &t_neuron,
                fnum(&t_rcut),
                fnum(&t_rcut_smth),
            )?,
        ));
    }
    Ok(DescInfo {
        tree: dict(items),
        dim_out: g1_dim + if concat { tebd_dim } else { 0 },
        mixed_types: true,
        ntypes,
    })
}

/// `hybrid`: each listed descriptor from `descrpt_list.<i>`.
fn hybrid(p: &Script, sd: &Sd, type_map: &Value) -> Result<DescInfo, FormatError> {
    let Some(Value::List(list)) = p.get("list") else {
        return Err(bad("model_def_script: a hybrid descriptor without `list`"));
    };
    let mut subs = Vec::with_capacity(list.len());
    for (i, sub) in list.iter().enumerate() {
        subs.push(descriptor(
            &Script(sub),
            &sd.sub(&format!("descrpt_list.{i}")),
            type_map,
        )?);
    }
    let first = subs
        .first()
        .ok_or_else(|| bad("model_def_script: an empty hybrid descriptor list"))?;
    let (mixed, ntypes) = (subs.iter().any(|d| d.mixed_types), first.ntypes);
    Ok(DescInfo {
        dim_out: subs.iter().map(|d| d.dim_out).sum(),
        mixed_types: mixed,
        ntypes,
        tree: dict(vec![
            ("@class", s("Descriptor")),
            ("type", s("hybrid")),
            ("@version", Value::Int(1)),
            (
                "list",
                Value::List(subs.into_iter().map(|d| d.tree).collect()),
            ),
        ]),
    })
}

fn energy_fitting(
    p: &Script,
    sd: &Sd,
    d: &DescInfo,
    type_map: &Value,
    atom_excl: &Value,
) -> Result<Value, FormatError> {
    let neuron = p.usizes("neuron", &[128, 128, 128])?;
    let resnet_dt = p.bool("resnet_dt", true)?;
    let (nf, na, nc) = (
        p.usize("numb_fparam", 0)?,
        p.usize("numb_aparam", 0)?,
        p.usize("dim_case_embd", 0)?,
    );
    let activation = p.str("activation_function", "tanh")?;
    let precision = p.str("precision", "float64")?;
    let tr_raw = p.or("trainable", Value::Bool(true));
    let tr_all = match &tr_raw {
        Value::List(l) => l.iter().all(|v| v.as_bool() == Some(true)),
        v => v.as_bool().unwrap_or(true),
    };
    let use_mask = p.bool("use_aparam_as_mask", false)?;
    let nnets = if d.mixed_types { 1 } else { d.ntypes };
    let spec = NetSpec {
        neuron: &neuron,
        activation: &activation,
        resnet_dt,
        precision: &precision,
    };
    let nets = (0..nnets)
        .map(|i| {
            fitting_net(
                &sd.sub(&format!("filter_layers.networks.{i}")),
                &spec,
                &tr_raw,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let in_dim = sd
        .sub("filter_layers.networks.0")
        .shape("layers.0.matrix")?[0];
    let want = d.dim_out + nf + if use_mask { 0 } else { na } + nc;
    if in_dim != want {
        return Err(bad(format!(
            "the fitting net takes {in_dim} inputs, the script implies {want}"
        )));
    }
    let opt = |k: &str| sd.opt(k).unwrap_or(Value::Null);
    Ok(dict(vec![
        ("@class", s("Fitting")),
        ("@version", Value::Int(4)),
        ("var_name", s("energy")),
        ("ntypes", Value::Int(d.ntypes as i64)),
        ("dim_descrpt", Value::Int(d.dim_out as i64)),
        ("neuron", ints(&neuron)),
        ("resnet_dt", Value::Bool(resnet_dt)),
        ("numb_fparam", Value::Int(nf as i64)),
        ("numb_aparam", Value::Int(na as i64)),
        ("dim_case_embd", Value::Int(nc as i64)),
        ("default_fparam", p.or("default_fparam", Value::Null)),
        ("activation_function", s(&activation)),
        ("precision", s(&precision)),
        ("mixed_types", Value::Bool(d.mixed_types)),
        (
            "nets",
            collection(
                if d.mixed_types { 0 } else { 1 },
                d.ntypes,
                "fitting_network",
                nets,
            ),
        ),
        ("rcond", p.or("rcond", Value::Null)),
        // The atomic model hands its atom_exclude_types to the fitting.
        ("exclude_types", atom_excl.clone()),
        (
            "@variables",
            dict(vec![
                ("bias_atom_e", sd.get("bias_atom_e")?),
                ("case_embd", opt("case_embd")),
                ("fparam_avg", opt("fparam_avg")),
                ("fparam_inv_std", opt("fparam_inv_std")),
                ("aparam_avg", opt("aparam_avg")),
                ("aparam_inv_std", opt("aparam_inv_std")),
            ]),
        ),
        ("type_map", type_map.clone()),
        ("tot_ener_zero", Value::Bool(false)),
        (
            "trainable",
            Value::List(vec![Value::Bool(tr_all); neuron.len() + 1]),
        ),
        ("layer_name", Value::Null),
        ("use_aparam_as_mask", Value::Bool(use_mask)),
        ("spin", Value::Null),
        ("type", s("ener")),
        ("dim_out", Value::Int(1)),
        ("atom_ener", p.or("atom_ener", Value::Null)),
    ]))
}

/// Parameters that are not part of the serialized model (compression slots, caches, the
/// default-fparam copy, exclusion masks) and may be left unused.
fn ignorable(name: &str) -> bool {
    [
        "compress_info.",
        "compress_data.",
        "type_embd_data",
        "default_fparam_tensor",
        "type_mask",
        ".sec",
        "min_nbor_dist",
        "econf_tebd",
    ]
    .iter()
    .any(|p| name.contains(p))
}

/// Read a DeePMD-kit `.pth` into its serialization tree.
pub fn read(bytes: Vec<u8>) -> Result<Value, FormatError> {
    let mut ts = TorchScript::open(bytes)?;
    // A `.pth` dpc wrote carries the whole tree, as `.pte` files do.
    if let Some(json) = ts.extra("model.json")? {
        return crate::pte::from_model_json(json);
    }
    let root = ts.data.root;
    let class = ts.class(root).unwrap_or_default();
    let script_id = ts.attr(root, "model_def_script").ok_or_else(|| {
        unsupported(format!("the TorchScript module ({class}) has no model_def_script: not a frozen DeePMD-kit model"))
    })?;
    let script_text = ts
        .data
        .as_str(script_id)
        .ok_or_else(|| bad("model_def_script is not a string"))?
        .to_string();
    let script = crate::json::parse(&script_text).map_err(|e| e.context("model_def_script"))?;
    let min_nbor = match ts.attr(root, "min_nbor_dist") {
        Some(id) if ts.is_tensor(id) => {
            let t = ts.tensor(id)?;
            Some(t.get_f64(0)).filter(|&v| t.len() == 1 && v != -1.0)
        }
        _ => None,
    };
    let sd = StateDict::collect(&mut ts, root)?;
    let md = Script(&script);
    let kind = md.str("type", "standard")?;
    if kind != "standard" || md.get("spin").is_some() || md.get("use_srtab").is_some() {
        return Err(unsupported(format!(
            "model type `{kind}` (dpc reads standard energy models)"
        )));
    }
    if md.get("model_dict").is_some() {
        return Err(unsupported("multi-task models"));
    }
    if md.get("preset_out_bias").is_some_and(|v| !v.is_null()) {
        return Err(unsupported(
            "preset_out_bias (DeePMD-kit 3.2 cannot serialize it either)",
        ));
    }
    let type_map = md
        .get("type_map")
        .cloned()
        .ok_or_else(|| bad("model_def_script has no type_map"))?;
    let am = sd.at("atomic_model.");
    let dp_val = md
        .get("descriptor")
        .ok_or_else(|| bad("model_def_script has no descriptor"))?;
    let dp = Script(dp_val);
    let dsd = am.sub("descriptor");
    let desc = descriptor(&dp, &dsd, &type_map)?;
    let empty = Value::Dict(Dict::new());
    let fp = Script(md.get("fitting_net").unwrap_or(&empty));
    if fp.str("type", "ener")? != "ener" {
        return Err(unsupported(format!("fitting `{}`", fp.str("type", "")?)));
    }
    let atom_excl = md.or("atom_exclude_types", Value::List(vec![]));
    let fitting = energy_fitting(&fp, &am.sub("fitting_net"), &desc, &type_map, &atom_excl)?;
    let model = dict(vec![
        ("type_map", type_map),
        ("atom_exclude_types", atom_excl),
        (
            "pair_exclude_types",
            md.or("pair_exclude_types", Value::List(vec![])),
        ),
        ("rcond", Value::Null),
        ("preset_out_bias", Value::Null),
        (
            "@variables",
            dict(vec![
                ("out_bias", am.get("out_bias")?),
                ("out_std", am.get("out_std")?),
            ]),
        ),
        ("@class", s("Model")),
        ("@version", Value::Int(2)),
        ("type", s("standard")),
        ("descriptor", desc.tree),
        ("fitting", fitting),
    ]);
    let unused: Vec<String> = sd
        .tensors
        .keys()
        .filter(|k| !sd.used.borrow().contains(*k) && !ignorable(k))
        .cloned()
        .collect();
    if !unused.is_empty() {
        return Err(bad(format!(
            "parameters the model definition does not account for: {}",
            unused.join(", ")
        )));
    }
    let mut vars = Dict::new();
    if let Some(m) = min_nbor {
        vars.insert("min_nbor_dist".into(), Value::Float(m));
    }
    Ok(dict(vec![
        ("backend", s("PyTorch")),
        ("model", model),
        ("model_def_script", script),
        ("@variables", Value::Dict(vars)),
    ]))
}
