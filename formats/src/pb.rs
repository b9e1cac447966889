//! DeePMD-kit's TensorFlow frozen graphs (`.pb` binary, `.pbtxt` text) into the serialization
//! tree, without TensorFlow.
//!
//! DeePMD-kit's own `serialize_from_file` rebuilds the model from the graph's
//! `train_attr/training_script` and copies weights from `Const` nodes; it drops what the graph
//! computes beyond that (`out_bias`/`out_std`, the layer-norm epsilon, the one-side layout of the
//! embedding nets). We build the *graph-truth* tree instead: the same keys and key order, every
//! array from its `Const` node, and everything the graph stores overriding the script:
//!
//! * `out_bias`/`out_std` from `model_attr/model_attr/t_out_*` (fallback `model_attr/t_out_*`);
//! * `type_one_side` from the node names (`filter_type_all/...` vs `filter_type_<i>/...`);
//! * `ln_eps` from `attention_layer_<k>/layer_normalization/add/y`;
//! * the TensorFlow fitting net's residual rule: no residual on layer 0 and none on layers that
//!   double their width, so those layers get `resnet: false` and no `idt`;
//! * TensorFlow's unscaled attention logits (`temperature: 1.0`).
//!
//! What the tree cannot say is marked by `"@dpc_runtime": "tensorflow"`: per-atom energies are
//! `(fit + bias_atom_e) * out_std + out_bias` (the other backends ignore `out_std`), and DPA-1's
//! attention uses `tf.nn.l2_normalize`'s floor. For a `.pb` converted from PyTorch, the arrays
//! equal the original model's bit for bit (se_e2_a, se_atten). Graphs without a training script
//! (DeePMD-kit < 2) get a minimal model definition inferred from the graph.

use std::path::Path;

use crate::tf::graph_def::{attr_value, dtype, NodeDef, TensorProto};
use crate::tf::{self, Graph};
use crate::tree::{DType, Dict, NdArray, Value};
use crate::FormatError;

type R<T> = Result<T, FormatError>;

fn bad(msg: impl Into<String>) -> FormatError {
    FormatError::invalid(format!(".pb: {}", msg.into()))
}

fn unsupported(msg: impl Into<String>) -> FormatError {
    FormatError::unsupported(format!(".pb: {}", msg.into()))
}

/// Constants stored as a short value list that TensorFlow repeats to fill the shape may not
/// expand beyond this many elements (a hostile file could ask for terabytes).
const MAX_FILL: usize = 1 << 24;
/// Largest all-zero network layer (`rows * cols`) made for an excluded type pair.
const MAX_ZERO_LAYER: usize = 1 << 24;
/// Most atom types a model may have.
const MAX_TYPES: usize = 1024;

/// Whether a `.pb`/`.pbtxt` file is protobuf text: the `.pbtxt` extension, or bytes that
/// start like a text-format message (`node {`, `versions {`, a `#` comment).
pub fn is_text(path: &Path, bytes: &[u8]) -> bool {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    ext.as_deref() == Some("pbtxt") || looks_like_text(bytes)
}

fn looks_like_text(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(512)];
    // Binary GraphDefs have field tags and lengths (control bytes) within a few bytes.
    if head
        .iter()
        .any(|&c| (c < 0x20 && !matches!(c, b'\t' | b'\n' | b'\r')) || c == 0x7f)
    {
        return false;
    }
    let mut i = 0;
    loop {
        while i < head.len() && head[i].is_ascii_whitespace() {
            i += 1;
        }
        if head.get(i) == Some(&b'#') {
            while i < head.len() && head[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        break;
    }
    let start = i;
    while i < head.len() && (head[i].is_ascii_alphanumeric() || head[i] == b'_') {
        i += 1;
    }
    if i == start || head[start].is_ascii_digit() {
        return false;
    }
    while i < head.len() && head[i].is_ascii_whitespace() {
        i += 1;
    }
    matches!(head.get(i), Some(b'{' | b':' | b'<'))
}

/// Read a DeePMD-kit frozen graph into its serialization tree (binary protobuf, or text
/// format when `text`).
pub fn read(bytes: &[u8], text: bool) -> R<Value> {
    let def = tf::parse(bytes, text)?;
    let g = G(Graph::new(def));
    g.check_supported()?;
    let jmodel = match g.string("train_attr/training_script")? {
        Some(s) => {
            let doc =
                crate::json::parse(&s).map_err(|e| e.context("train_attr/training_script"))?;
            let m = doc
                .get("model")
                .cloned()
                .ok_or_else(|| bad("train_attr/training_script has no `model` section"))?;
            if m.as_dict().is_none() {
                return Err(bad("the training script's `model` is not a dict"));
            }
            m
        }
        None => infer_model_json(&g)?,
    };
    let model = build_model(&g, &J(&jmodel))?;
    let mut vars = Dict::new();
    if let Some(d) = g.scalar_f64("train_attr/min_nbor_dist")? {
        vars.insert("min_nbor_dist".into(), Value::Float(d));
    }
    Ok(dict(vec![
        ("backend", s("TensorFlow")),
        ("model", model),
        ("model_def_script", jmodel),
        ("@variables", Value::Dict(vars)),
        ("@dpc_runtime", s("tensorflow")),
    ]))
}

// ---------------------------------------------------------------------------------------------
// the graph
// ---------------------------------------------------------------------------------------------

struct G(Graph);

impl G {
    fn nodes(&self) -> impl Iterator<Item = &NodeDef> {
        self.0.def.node.iter()
    }

    fn has(&self, name: &str) -> bool {
        self.0.node(name).is_some()
    }

    /// The tensor of the `Const` node `name`; an error when the node exists but is not a
    /// constant (an unfrozen graph).
    fn tensor(&self, name: &str) -> R<Option<&TensorProto>> {
        let Some(n) = self.0.node(name) else {
            return Ok(None);
        };
        match self.0.const_tensor(name) {
            Some(t) => Ok(Some(t)),
            None => Err(bad(format!(
                "node `{name}` is a {} node, not a constant (freeze the graph with `dp freeze` first)",
                n.op
            ))),
        }
    }

    fn opt(&self, name: &str) -> R<Option<NdArray>> {
        match self.tensor(name)? {
            None => Ok(None),
            Some(t) => const_array(t).map(Some).map_err(|e| e.context(name)),
        }
    }

    fn get(&self, name: &str) -> R<NdArray> {
        self.opt(name)?
            .ok_or_else(|| bad(format!("the graph has no constant `{name}`")))
    }

    /// The shape of a constant without decoding it.
    fn shape(&self, name: &str) -> R<Option<Vec<usize>>> {
        let Some(t) = self.tensor(name)? else {
            return Ok(None);
        };
        let dims = t.tensor_shape.as_ref().map_or(&[][..], |s| &s.dim[..]);
        dims.iter()
            .map(|d| {
                usize::try_from(d.size)
                    .map_err(|_| bad(format!("`{name}` has a negative dimension")))
            })
            .collect::<R<Vec<_>>>()
            .map(Some)
    }

    fn dtype(&self, name: &str) -> R<Option<i32>> {
        Ok(self.tensor(name)?.map(|t| t.dtype))
    }

    fn scalar_f64(&self, name: &str) -> R<Option<f64>> {
        match self.opt(name)? {
            None => Ok(None),
            Some(a) if a.len() == 1 && a.dtype.is_float() => Ok(Some(a.get_f64(0))),
            Some(a) => Err(bad(format!(
                "`{name}` should be one float, it is {} {:?}",
                a.dtype.name(),
                a.shape
            ))),
        }
    }

    fn scalar_i64(&self, name: &str) -> R<Option<i64>> {
        match self.opt(name)? {
            None => Ok(None),
            Some(a) if a.len() == 1 => a
                .get_i64(0)
                .map(Some)
                .ok_or_else(|| bad(format!("`{name}` should be an integer"))),
            Some(a) => Err(bad(format!(
                "`{name}` should be one integer, it has shape {:?}",
                a.shape
            ))),
        }
    }

    fn ints(&self, name: &str) -> R<Option<Vec<i64>>> {
        match self.opt(name)? {
            None => Ok(None),
            Some(a) => (0..a.len())
                .map(|i| {
                    a.get_i64(i)
                        .ok_or_else(|| bad(format!("`{name}` should hold integers")))
                })
                .collect::<R<Vec<_>>>()
                .map(Some),
        }
    }

    fn string(&self, name: &str) -> R<Option<String>> {
        if self.tensor(name)?.is_none() {
            return Ok(None);
        }
        self.0
            .string(name)
            .map(Some)
            .ok_or_else(|| bad(format!("`{name}` is not a string constant")))
    }

    /// Refuse what this reader does not turn into a tree, naming it.
    fn check_supported(&self) -> R<()> {
        for n in self.nodes() {
            if n.op.starts_with("TabulateFusion") {
                return Err(unsupported(
                    "compressed .pb (tabulated embedding nets) is not supported; use the uncompressed model",
                ));
            }
        }
        if self.has("modifier_attr/type") {
            let kind = self.0.string("modifier_attr/type").unwrap_or_default();
            return Err(unsupported(format!(
                "models with a data modifier (`{kind}`, e.g. DPLR) are not supported"
            )));
        }
        if self.has("spin_attr/ntypes_spin") {
            return Err(unsupported("spin models are not supported"));
        }
        if let Some(t) = self.string("model_attr/model_type")? {
            if t != "ener" {
                return Err(unsupported(format!(
                    "model type `{t}` (dpc reads energy models; dipole, polar, DOS and other tensor fittings are not supported)"
                )));
            }
        }
        if !self.has("train_attr/training_script") && !self.has("model_attr/tmap") {
            return Err(bad(
                "not a DeePMD-kit frozen graph (neither train_attr/training_script nor model_attr/tmap)",
            ));
        }
        Ok(())
    }

    /// `true` if the embedding nets are named `filter_type_all/...`, `false` for
    /// `filter_type_<i>/...`, `None` without embedding nets (the first such node decides).
    fn type_one_side(&self) -> Option<bool> {
        self.nodes().find_map(|n| match parse_filter(&n.name) {
            Some(f) if f.kind == Kind::Matrix && f.owner.is_none() && f.nums.len() <= 2 => {
                Some(true)
            }
            Some(f) if f.kind == Kind::Matrix && f.owner.is_some() => Some(false),
            _ => None,
        })
    }
}

/// A constant as an array, as `tf.make_ndarray` decodes it: raw `tensor_content`, else the
/// typed value list with the last value repeated (no values: zeros).
fn const_array(t: &TensorProto) -> R<NdArray> {
    if t.tensor_content.is_empty() {
        let dims = t.tensor_shape.as_ref().map_or(&[][..], |s| &s.dim[..]);
        let mut n: usize = 1;
        for d in dims {
            let d = usize::try_from(d.size).map_err(|_| bad("negative tensor dimension"))?;
            n = n.checked_mul(d).ok_or_else(|| bad("tensor too large"))?;
        }
        let nvals = match t.dtype {
            dtype::DOUBLE => t.double_val.len(),
            dtype::FLOAT => t.float_val.len(),
            dtype::INT32 | dtype::INT16 | dtype::INT8 | dtype::UINT8 => t.int_val.len(),
            dtype::INT64 => t.int64_val.len(),
            dtype::BOOL => t.bool_val.len(),
            dtype::HALF => t.half_val.len(),
            _ => return tf::to_ndarray(t),
        };
        if nvals < n && n > MAX_FILL {
            return Err(bad(format!(
                "a constant of {n} elements stored as {nvals} values is too large"
            )));
        }
        if nvals == 0 && n > 0 {
            let mut z = t.clone();
            match t.dtype {
                dtype::DOUBLE => z.double_val = vec![0.0],
                dtype::FLOAT => z.float_val = vec![0.0],
                dtype::INT64 => z.int64_val = vec![0],
                dtype::BOOL => z.bool_val = vec![false],
                dtype::HALF => z.half_val = vec![0],
                _ => z.int_val = vec![0],
            }
            return tf::to_ndarray(&z);
        }
    }
    tf::to_ndarray(t)
}

// ---------------------------------------------------------------------------------------------
// node names (DeePMD-kit matches them with the regexes of deepmd/tf/env.py, `re.fullmatch`)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Matrix,
    Bias,
    Idt,
}

impl Kind {
    fn strip(s: &str) -> Option<(Kind, &str)> {
        [
            ("matrix", Kind::Matrix),
            ("bias", Kind::Bias),
            ("idt", Kind::Idt),
        ]
        .into_iter()
        .find_map(|(p, k)| s.strip_prefix(p).map(|rest| (k, rest)))
    }
}

fn digits(s: &str) -> Option<usize> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `_1_2_3` → `[1, 2, 3]` (at least one number).
fn underscore_nums(s: &str) -> Option<Vec<usize>> {
    let rest = s.strip_prefix('_')?;
    rest.split('_').map(digits).collect()
}

/// An embedding-net weight: `filter_type_{i}/{kind}_{l}_{j}` or
/// `filter_type_all/{kind}_{l}[_{a}[_{b}]]`.
struct FilterName {
    owner: Option<usize>,
    kind: Kind,
    nums: Vec<usize>,
}

fn parse_filter(name: &str) -> Option<FilterName> {
    let rest = name.strip_prefix("filter_type_")?;
    let (owner, leaf) = rest.split_once('/')?;
    let owner = if owner == "all" {
        None
    } else {
        Some(digits(owner)?)
    };
    let (kind, tail) = Kind::strip(leaf)?;
    let nums = underscore_nums(tail)?;
    let ok = match owner {
        Some(_) => nums.len() == 2,
        None => (1..=3).contains(&nums.len()),
    };
    ok.then_some(FilterName { owner, kind, nums })
}

/// A fitting-net weight: `layer_{l}[_type_{t}]/{kind}` or `final_layer[_type_{t}]/{matrix|bias}`;
/// `layer` is `None` for the final layer.
struct FitName {
    layer: Option<usize>,
    ty: Option<usize>,
    kind: Kind,
}

fn parse_fitting(name: &str) -> Option<FitName> {
    let (scope, leaf) = name.split_once('/')?;
    let kind = match leaf {
        "matrix" => Kind::Matrix,
        "bias" => Kind::Bias,
        "idt" => Kind::Idt,
        _ => return None,
    };
    let (layer, rest) = if let Some(r) = scope.strip_prefix("final_layer") {
        if kind == Kind::Idt {
            return None;
        }
        (None, r)
    } else {
        let r = scope.strip_prefix("layer_")?;
        let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
        (Some(digits(&r[..end])?), &r[end..])
    };
    let ty = if rest.is_empty() {
        None
    } else {
        Some(digits(rest.strip_prefix("_type_")?)?)
    };
    Some(FitName { layer, ty, kind })
}

// ---------------------------------------------------------------------------------------------
// the training script
// ---------------------------------------------------------------------------------------------

/// A section of the model JSON; Python's `j.get(key, default)` with the TensorFlow
/// constructors' defaults.
#[derive(Clone, Copy)]
struct J<'a>(&'a Value);

impl<'a> J<'a> {
    /// Present and not null.
    fn get(&self, k: &str) -> Option<&'a Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }

    /// `j.get(k, default)`, verbatim (a present null stays null).
    fn or(&self, k: &str, default: Value) -> Value {
        self.0.get(k).cloned().unwrap_or(default)
    }

    fn bool(&self, k: &str, default: bool) -> R<bool> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| bad(format!("model definition: `{k}` is not a bool"))),
        }
    }

    fn str(&self, k: &str, default: &str) -> R<String> {
        match self.get(k) {
            None => Ok(default.to_string()),
            Some(v) => v
                .as_str()
                .map(String::from)
                .ok_or_else(|| bad(format!("model definition: `{k}` is not a string"))),
        }
    }

    fn usize(&self, k: &str, default: usize) -> R<usize> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => {
                count(v).ok_or_else(|| bad(format!("model definition: `{k}` is not a count")))
            }
        }
    }

    fn f64(&self, k: &str, default: f64) -> R<f64> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| bad(format!("model definition: `{k}` is not a number"))),
        }
    }

    /// A list of counts (verbatim value and parsed), or the default.
    fn counts(&self, k: &str, default: &[usize]) -> R<(Value, Vec<usize>)> {
        match self.get(k) {
            None => Ok((ints(default), default.to_vec())),
            Some(v @ Value::List(l)) => {
                let parsed = l
                    .iter()
                    .map(|x| {
                        count(x).ok_or_else(|| {
                            bad(format!("model definition: `{k}` holds a non-count"))
                        })
                    })
                    .collect::<R<Vec<_>>>()?;
                Ok((v.clone(), parsed))
            }
            Some(_) => Err(bad(format!("model definition: `{k}` is not a list"))),
        }
    }

    fn sub(&self, k: &str) -> R<J<'a>> {
        match self.get(k) {
            Some(v) if v.as_dict().is_some() => Ok(J(v)),
            Some(_) => Err(bad(format!("model definition: `{k}` is not a dict"))),
            None => Err(bad(format!("model definition has no `{k}`"))),
        }
    }

    /// A required number, verbatim (int or float as written) and as f64.
    fn number(&self, k: &str) -> R<(Value, f64)> {
        let v = self
            .get(k)
            .ok_or_else(|| bad(format!("model definition: `{k}` is missing")))?;
        let f = match v {
            Value::Int(_) | Value::Float(_) => v.as_f64().unwrap_or(0.0),
            _ => return Err(bad(format!("model definition: `{k}` is not a number"))),
        };
        Ok((v.clone(), f))
    }
}

/// A non-negative JSON integer below 2^32 (sizes, counts; larger ones are not a model).
fn count(v: &Value) -> Option<usize> {
    match v {
        Value::Int(i) if (0..1 << 32).contains(i) => usize::try_from(*i).ok(),
        _ => None,
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

/// `deepmd.tf.common.get_precision(p).name` (`default` is TensorFlow's global float64).
fn prec_name(p: &str) -> R<&'static str> {
    Ok(match p {
        "default" | "float64" => "float64",
        "float32" => "float32",
        "float16" => "float16",
        other => return Err(unsupported(format!("precision `{other}`"))),
    })
}

// ---------------------------------------------------------------------------------------------
// networks (deepmd/dpmodel/utils/network.py, built the way the TensorFlow serializers build them)
// ---------------------------------------------------------------------------------------------

struct Lay {
    n_in: usize,
    n_out: usize,
    w: Option<NdArray>,
    b: Option<NdArray>,
    idt: Option<NdArray>,
    has_bias: bool,
    /// dpmodel would give the layer a timestep (`resnet_dt` and a residual shape).
    timestep: bool,
    activation: String,
    resnet: bool,
    trainable: Value,
}

impl Lay {
    fn residual_shape(&self) -> bool {
        self.n_out == self.n_in || self.n_out == 2 * self.n_in
    }
}

#[derive(PartialEq)]
enum NetClass {
    Embedding { bias: bool },
    Fitting,
}

struct Net {
    class: NetClass,
    label: String,
    in_dim: usize,
    neuron: Value,
    activation: String,
    resnet_dt: bool,
    precision: &'static str,
    layers: Vec<Lay>,
}

/// How to build one kind of network.
struct NetSpec<'a> {
    neuron: &'a [usize],
    neuron_v: &'a Value,
    activation: &'a str,
    resnet_dt: bool,
    precision: &'static str,
    trainable: &'a Value,
}

/// Per-layer `trainable`: a bool repeated, or the list as given.
fn per_layer(trainable: &Value, n: usize, label: &str) -> R<Vec<Value>> {
    match trainable {
        Value::List(l) if l.len() >= n => Ok(l[..n].to_vec()),
        Value::List(_) => Err(bad(format!(
            "{label}: `trainable` lists fewer entries than the net has layers"
        ))),
        other => Ok(vec![other.clone(); n]),
    }
}

impl Net {
    /// dpmodel `EmbeddingNet(in_dim, neuron, ...)`: residual layers, one timestep each when
    /// `resnet_dt` and the shape allows.
    fn embedding(label: &str, in_dim: usize, sp: &NetSpec, bias: bool) -> R<Net> {
        let tr = per_layer(sp.trainable, sp.neuron.len(), label)?;
        let mut layers = Vec::with_capacity(sp.neuron.len());
        let mut i_in = in_dim;
        for (k, &o) in sp.neuron.iter().enumerate() {
            layers.push(Lay {
                n_in: i_in,
                n_out: o,
                w: None,
                b: None,
                idt: None,
                has_bias: bias,
                timestep: sp.resnet_dt && (o == i_in || o == 2 * i_in),
                activation: sp.activation.to_string(),
                resnet: true,
                trainable: tr[k].clone(),
            });
            i_in = o;
        }
        Ok(Net {
            class: NetClass::Embedding { bias },
            label: label.to_string(),
            in_dim,
            neuron: sp.neuron_v.clone(),
            activation: sp.activation.to_string(),
            resnet_dt: sp.resnet_dt,
            precision: sp.precision,
            layers,
        })
    }

    /// dpmodel `FittingNet(in_dim, 1, neuron, ...)`: the hidden layers of an embedding net
    /// plus a linear output layer.
    fn fitting(label: &str, in_dim: usize, sp: &NetSpec) -> R<Net> {
        let n = sp.neuron.len();
        let tr = per_layer(sp.trainable, n + 1, label)?;
        let hidden = NetSpec {
            trainable: &Value::List(tr[..n].to_vec()),
            ..*sp
        };
        let mut net = Net::embedding(label, in_dim, &hidden, true)?;
        net.class = NetClass::Fitting;
        net.layers.push(Lay {
            n_in: sp.neuron.last().copied().unwrap_or(in_dim),
            n_out: 1,
            w: None,
            b: None,
            idt: None,
            has_bias: true,
            timestep: false,
            activation: "none".into(),
            resnet: false,
            trainable: tr[n].clone(),
        });
        Ok(net)
    }

    /// All-zero weights (`NativeLayer.clear()`): the nets of excluded type pairs.
    fn clear(&mut self) -> R<()> {
        let dt = dtype_of(self.precision);
        for l in &mut self.layers {
            if l.n_in.saturating_mul(l.n_out) > MAX_ZERO_LAYER {
                return Err(bad(format!(
                    "{}: layer {}x{} is too large",
                    self.label, l.n_in, l.n_out
                )));
            }
            l.w = Some(zeros(dt, vec![l.n_in, l.n_out]));
            l.b = l.has_bias.then(|| zeros(dt, vec![l.n_out]));
            l.idt = l.timestep.then(|| zeros(dt, vec![l.n_out]));
        }
        Ok(())
    }

    /// Set one weight of layer `layer` (0-based) from graph node `node`, checking its shape.
    fn set(&mut self, layer: usize, kind: Kind, a: NdArray, node: &str) -> R<()> {
        let Some(l) = self.layers.get_mut(layer) else {
            return Err(bad(format!(
                "`{node}`: layer {} but {} has {} layers",
                layer + 1,
                self.label,
                self.layers.len()
            )));
        };
        let (i, o) = (l.n_in, l.n_out);
        match kind {
            Kind::Matrix => {
                if a.shape != [i, o] {
                    return Err(bad(format!(
                        "`{node}` has shape {:?}, expected [{i}, {o}]",
                        a.shape
                    )));
                }
                l.w = Some(a);
            }
            Kind::Bias => {
                // Old graphs store [1, out]; DeePMD-kit copies it unreshaped.
                if !(a.shape == [o] || a.shape == [1, o]) {
                    return Err(bad(format!(
                        "`{node}` has shape {:?}, expected [{o}]",
                        a.shape
                    )));
                }
                l.b = Some(a);
            }
            Kind::Idt => {
                if a.len() != o {
                    return Err(bad(format!(
                        "`{node}` has shape {:?}, expected {o} values",
                        a.shape
                    )));
                }
                l.idt = Some(NdArray {
                    shape: vec![o],
                    ..a
                });
            }
        }
        Ok(())
    }

    /// The serialized network. Embedding nets keep `idt` only on residual layers (the TF
    /// `embedding_net` applies it only there); fitting nets follow TensorFlow's residual rule:
    /// none on layer 0 and none on layers that double their width (deepmd/tf/fit/ener.py), so
    /// where dpmodel would add one, the layer gets `resnet: false`.
    fn finish(mut self) -> R<Value> {
        let nhidden = match self.class {
            NetClass::Fitting => self.layers.len() - 1,
            NetClass::Embedding { .. } => self.layers.len(),
        };
        let mut layers = Vec::with_capacity(self.layers.len());
        for (k, l) in self.layers.iter_mut().enumerate() {
            let w = l.w.take().ok_or_else(|| {
                bad(format!(
                    "{}: layer {} has no weight matrix in the graph",
                    self.label,
                    k + 1
                ))
            })?;
            let b = if l.has_bias {
                Some(l.b.take().ok_or_else(|| {
                    bad(format!(
                        "{}: layer {} has no bias in the graph",
                        self.label,
                        k + 1
                    ))
                })?)
            } else {
                None
            };
            let mut idt = l.idt.take();
            match self.class {
                NetClass::Embedding { .. } => {
                    // TF's embedding_net has an idt exactly where dpmodel gives a timestep.
                    if !l.residual_shape() {
                        idt = None;
                    } else if l.timestep && idt.is_none() {
                        return Err(bad(format!(
                            "{}: layer {} has no idt in the graph, but resnet_dt says it should",
                            self.label,
                            k + 1
                        )));
                    }
                }
                NetClass::Fitting => {
                    // TF: `x + act(x W + b) [* idt]` only for ii >= 1 with equal widths.
                    let tf_res = k >= 1 && k < nhidden && l.n_in == l.n_out;
                    if k < nhidden && l.residual_shape() && !tf_res {
                        l.resnet = false;
                        idt = None;
                    }
                    if tf_res && self.resnet_dt && idt.is_none() {
                        return Err(bad(format!(
                            "{}: layer {k} has no idt in the graph, but resnet_dt says it should",
                            self.label
                        )));
                    }
                }
            }
            layers.push(layer_value(l, w, b, idt, self.precision));
        }
        Ok(match self.class {
            NetClass::Embedding { bias } => dict(vec![
                ("@class", s("EmbeddingNetwork")),
                ("@version", Value::Int(2)),
                ("in_dim", Value::Int(self.in_dim as i64)),
                ("neuron", self.neuron),
                ("activation_function", s(&self.activation)),
                ("resnet_dt", Value::Bool(self.resnet_dt)),
                ("bias", Value::Bool(bias)),
                ("precision", s(self.precision)),
                ("layers", Value::List(layers)),
            ]),
            NetClass::Fitting => dict(vec![
                ("@class", s("FittingNetwork")),
                ("@version", Value::Int(1)),
                ("in_dim", Value::Int(self.in_dim as i64)),
                ("out_dim", Value::Int(1)),
                ("neuron", self.neuron),
                ("activation_function", s(&self.activation)),
                ("resnet_dt", Value::Bool(self.resnet_dt)),
                ("precision", s(self.precision)),
                ("bias_out", Value::Bool(true)),
                ("layers", Value::List(layers)),
            ]),
        })
    }
}

/// A serialized dpmodel `Layer` (`NativeLayer.serialize`).
fn layer_value(
    l: &Lay,
    w: NdArray,
    b: Option<NdArray>,
    idt: Option<NdArray>,
    precision: &str,
) -> Value {
    dict(vec![
        ("@class", s("Layer")),
        ("@version", Value::Int(2)),
        ("bias", Value::Bool(b.is_some())),
        ("use_timestep", Value::Bool(idt.is_some())),
        ("activation_function", s(&l.activation)),
        ("resnet", Value::Bool(l.resnet)),
        ("precision", s(precision)),
        ("trainable", l.trainable.clone()),
        (
            "@variables",
            dict(vec![
                ("w", Value::Array(w)),
                ("b", b.map_or(Value::Null, Value::Array)),
                ("idt", idt.map_or(Value::Null, Value::Array)),
            ]),
        ),
    ])
}

fn dtype_of(precision: &str) -> DType {
    match precision {
        "float32" => DType::F32,
        "float16" => DType::F16,
        _ => DType::F64,
    }
}

fn zeros(dt: DType, shape: Vec<usize>) -> NdArray {
    let n: usize = shape.iter().product();
    NdArray {
        dtype: dt,
        shape,
        bytes: vec![0; n * dt.size()],
    }
}

/// A `NetworkCollection` of `ntypes^ndim` slots.
struct Collection {
    ndim: usize,
    ntypes: usize,
    kind: &'static str,
    nets: Vec<Option<Net>>,
}

impl Collection {
    fn new(ndim: usize, ntypes: usize, kind: &'static str) -> R<Collection> {
        if ntypes > MAX_TYPES {
            return Err(bad(format!("{ntypes} atom types is too many")));
        }
        let n = ntypes.pow(ndim as u32);
        Ok(Collection {
            ndim,
            ntypes,
            kind,
            nets: (0..n).map(|_| None).collect(),
        })
    }

    fn finish(self) -> R<Value> {
        let nets = self
            .nets
            .into_iter()
            .map(|n| n.map_or(Ok(Value::Null), Net::finish))
            .collect::<R<Vec<_>>>()?;
        Ok(dict(vec![
            ("@class", s("NetworkCollection")),
            ("@version", Value::Int(1)),
            ("ndim", Value::Int(self.ndim as i64)),
            ("ntypes", Value::Int(self.ntypes as i64)),
            ("network_type", s(self.kind)),
            ("networks", Value::List(nets)),
        ]))
    }
}

/// Every node whose name `parse` accepts, in graph order, with its decoded value.
fn matching<T>(g: &G, parse: impl Fn(&str) -> Option<T>) -> R<Vec<(String, T, NdArray)>> {
    let mut out = Vec::new();
    for n in g.nodes() {
        if let Some(p) = parse(&n.name) {
            let a = g.get(&n.name)?;
            out.push((n.name.clone(), p, a));
        }
    }
    Ok(out)
}

/// `DescrptSe.serialize_network` (deepmd/tf/descriptor/se.py): the embedding nets of
/// se_e2_a / se_e2_r (`ndim` 1 one-side, 2 two-side) and se_atten (`ndim` 0). Excluded pairs of
/// a two-side collection get all-zero nets at both `(i, j)` and `(j, i)`.
fn se_embeddings(
    g: &G,
    ntypes: usize,
    ndim: usize,
    in_dim: usize,
    sp: &NetSpec,
    excluded: &[(usize, usize)],
) -> R<Value> {
    let mut c = Collection::new(ndim, ntypes, "embedding_network")?;
    if ndim == 2 {
        for &(a, b) in excluded {
            for (i, j) in [(a, b), (b, a)] {
                let mut net =
                    Net::embedding(&format!("embedding net ({i}, {j})"), in_dim, sp, true)?;
                net.clear()?;
                c.nets[i + ntypes * j] = Some(net);
            }
        }
    }
    for (name, f, a) in matching(g, parse_filter)? {
        let (idx, layer) = match (ndim, f.owner, f.nums.as_slice()) {
            (0, None, &[l]) => (0, l),
            (1, None, &[l, j]) if j < ntypes => (j, l),
            (2, Some(i), &[l, j]) if i < ntypes && j < ntypes => (i + ntypes * j, l),
            _ => {
                return Err(bad(format!(
                    "embedding-net node `{name}` does not fit a collection of {ntypes} types and ndim {ndim} (inconsistent graph)"
                )))
            }
        };
        if layer == 0 {
            return Err(bad(format!("`{name}`: layers are numbered from 1")));
        }
        let slot = &mut c.nets[idx];
        if slot.is_none() {
            *slot = Some(Net::embedding(
                &format!("embedding net {idx}"),
                in_dim,
                sp,
                true,
            )?);
        }
        if let Some(net) = slot {
            net.set(layer - 1, f.kind, a, &name)?;
        }
    }
    c.finish()
}

fn env_mat(rcut: &Value, rcut_smth: &Value) -> Value {
    dict(vec![
        ("rcut", rcut.clone()),
        ("rcut_smth", rcut_smth.clone()),
        ("protection", Value::Float(0.0)),
        ("use_exp_switch", Value::Bool(false)),
    ])
}

/// `davg`/`dstd` from `descrpt_attr/t_avg`/`t_std`, reshaped `(ntypes, nnei, ncomp)`.
fn stats(g: &G, ntypes: usize, nnei: usize, ncomp: usize) -> R<Value> {
    let mut out = Vec::new();
    for (key, node) in [
        ("davg", "descrpt_attr/t_avg"),
        ("dstd", "descrpt_attr/t_std"),
    ] {
        let a = g.get(node)?;
        let want = [ntypes, nnei, ncomp];
        if Some(a.len()) != ntypes.checked_mul(nnei).and_then(|x| x.checked_mul(ncomp)) {
            return Err(bad(format!(
                "`{node}` has shape {:?}, expected {ntypes} types x {nnei} neighbours x {ncomp} values",
                a.shape
            )));
        }
        out.push((
            key,
            Value::Array(NdArray {
                shape: want.to_vec(),
                ..a
            }),
        ));
    }
    Ok(dict(out))
}

/// se_a.py / se_atten.py `init_variables`: the graph's `sel` must be the script's.
fn check_sel(g: &G, sel: &[usize]) -> R<()> {
    let want: Vec<i64> = sel.iter().map(|&x| x as i64).collect();
    if let Some(gs) = g.ints("descrpt_attr/sel")? {
        if gs != want {
            return Err(bad(format!(
                "the graph's sel {gs:?} differs from the training script's {want:?}"
            )));
        }
    }
    if let Some(os) = g.ints("descrpt_attr/original_sel")? {
        if os != want {
            return Err(unsupported(
                "a graph whose sel was adjusted after training (original_sel differs from sel)",
            ));
        }
    }
    Ok(())
}

fn exclude_pairs(v: &Value, ntypes: usize) -> R<Vec<(usize, usize)>> {
    let Some(l) = v.as_list() else {
        return if v.is_null() {
            Ok(vec![])
        } else {
            Err(bad("exclude_types is not a list"))
        };
    };
    l.iter()
        .map(|p| match p.as_list() {
            Some([a, b]) => match (count(a), count(b)) {
                (Some(a), Some(b)) if a < ntypes && b < ntypes => Ok((a, b)),
                _ => Err(bad(format!("exclude_types pair {p:?} is not two types"))),
            },
            _ => Err(bad(format!("exclude_types entry {p:?} is not a pair"))),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// descriptors (deepmd/tf/descriptor/{se_a,se_r,se_t,se_atten}.py `serialize`)
// ---------------------------------------------------------------------------------------------

struct Desc {
    tree: Value,
    dim_out: usize,
    ntypes: usize,
    tebd_dim: usize,
}

/// What se_e2_a, se_e2_r and se_e3 share.
struct SeCommon {
    rcut: Value,
    rcut_smth: Value,
    sel_v: Value,
    sel: Vec<usize>,
    neuron_v: Value,
    neuron: Vec<usize>,
    activation: String,
    resnet_dt: bool,
    trainable: Value,
    precision: &'static str,
    exclude_v: Value,
    env_protection: Value,
    set_davg_zero: Value,
}

fn se_common(j: &J) -> R<SeCommon> {
    let (rcut, _) = j.number("rcut")?;
    let (rcut_smth, _) = j.number("rcut_smth")?;
    let (sel_v, sel) = j.counts("sel", &[])?;
    if j.get("sel").is_none() {
        return Err(bad("model definition: the descriptor has no `sel`"));
    }
    let (neuron_v, neuron) = j.counts("neuron", &[24, 48, 96])?;
    if neuron.is_empty() {
        return Err(bad("model definition: the descriptor's `neuron` is empty"));
    }
    if j.f64("env_protection", 0.0)? != 0.0 {
        return Err(unsupported(
            "env_protection != 0 (DeePMD-kit cannot convert it either)",
        ));
    }
    Ok(SeCommon {
        rcut,
        rcut_smth,
        sel_v,
        sel,
        neuron_v,
        neuron,
        activation: j.str("activation_function", "tanh")?,
        resnet_dt: j.bool("resnet_dt", false)?,
        trainable: j.or("trainable", Value::Bool(true)),
        precision: prec_name(&j.str("precision", "default")?)?,
        exclude_v: j.or("exclude_types", Value::List(vec![])),
        env_protection: j.or("env_protection", Value::Float(0.0)),
        set_davg_zero: j.or("set_davg_zero", Value::Bool(false)),
    })
}

impl SeCommon {
    fn spec(&self) -> NetSpec<'_> {
        NetSpec {
            neuron: &self.neuron,
            neuron_v: &self.neuron_v,
            activation: &self.activation,
            resnet_dt: self.resnet_dt,
            precision: self.precision,
            trainable: &self.trainable,
        }
    }

    fn last(&self) -> usize {
        self.neuron.last().copied().unwrap_or(0)
    }
}

/// se_e2_a / se_a, and se_e2_r / se_r (`radial`).
fn se_a_or_r(g: &G, j: &J, type_map: &Value, radial: bool) -> R<Desc> {
    if !radial && j.str("tebd_input_mode", "concat")? == "strip" {
        return Err(unsupported("se_e2_a with tebd_input_mode = strip"));
    }
    let c = se_common(j)?;
    let ntypes = c.sel.len();
    if ntypes == 0 {
        return Err(bad("model definition: `sel` is empty"));
    }
    let nnei: usize = c.sel.iter().sum();
    // Graph truth: the node names say whether the nets are one-side.
    let tos = match g.type_one_side() {
        Some(t) => t,
        None => j.bool("type_one_side", true)?,
    };
    let excl = exclude_pairs(&c.exclude_v, ntypes)?;
    if tos && !excl.is_empty() {
        // TF masks a one-side descriptor's neighbour slots by their sel block, padding
        // included; dpmodel masks by the neighbour's type. Measured on graphs from
        // `deserialize_to_file`: 4e-4 (se_e2_a) and 3e-2 eV (se_e2_r) from TF's DeepPot.
        return Err(unsupported(format!(
            "one-side {} with exclude_types: TensorFlow masks excluded neighbours differently from the other backends, so the graph is a different model",
            if radial { "se_e2_r" } else { "se_e2_a" }
        )));
    }
    if !radial {
        check_sel(g, &c.sel)?;
    }
    let embeddings = se_embeddings(g, ntypes, if tos { 1 } else { 2 }, 1, &c.spec(), &excl)?;
    let vars = stats(g, ntypes, nnei, if radial { 1 } else { 4 })?;
    let common_head = vec![
        ("@class", s("Descriptor")),
        ("type", s(if radial { "se_r" } else { "se_e2_a" })),
        ("@version", Value::Int(2)),
        ("rcut", c.rcut.clone()),
        ("rcut_smth", c.rcut_smth.clone()),
        ("sel", c.sel_v.clone()),
        ("neuron", c.neuron_v.clone()),
    ];
    let mut items = common_head;
    let axis = if radial {
        1
    } else {
        let axis_v = j.or("axis_neuron", Value::Int(8));
        let axis =
            count(&axis_v).ok_or_else(|| bad("model definition: `axis_neuron` is not a count"))?;
        items.push(("axis_neuron", axis_v));
        axis
    };
    items.extend([
        ("resnet_dt", Value::Bool(c.resnet_dt)),
        ("trainable", c.trainable.clone()),
        ("type_one_side", Value::Bool(tos)),
        ("exclude_types", c.exclude_v.clone()),
        ("env_protection", c.env_protection.clone()),
        ("set_davg_zero", c.set_davg_zero.clone()),
        ("activation_function", s(&c.activation)),
        ("precision", s(c.precision)),
        ("embeddings", embeddings),
        ("env_mat", env_mat(&c.rcut, &c.rcut_smth)),
        ("@variables", vars),
        ("type_map", type_map.clone()),
        ("spin", Value::Null),
    ]);
    Ok(Desc {
        tree: dict(items),
        dim_out: c.last() * axis,
        ntypes,
        tebd_dim: 0,
    })
}

/// se_e3 / se_at / se_a_3be (deepmd/tf/descriptor/se_t.py): nets `(i, j)` for `i <= j` from
/// `filter_type_all/*_{l}_{i}_{j}`, all-zero nets for `i > j` (they are never used).
fn se_e3(g: &G, j: &J, type_map: &Value) -> R<Desc> {
    let c = se_common(j)?;
    let ntypes = c.sel.len();
    if ntypes == 0 {
        return Err(bad("model definition: `sel` is empty"));
    }
    if !exclude_pairs(&c.exclude_v, ntypes)?.is_empty() {
        return Err(unsupported(
            "se_e3 with exclude_types (DeePMD-kit cannot convert it either)",
        ));
    }
    let nnei: usize = c.sel.iter().sum();
    let sp = c.spec();
    let mut coll = Collection::new(2, ntypes, "embedding_network")?;
    for i in 0..ntypes {
        for jj in 0..i {
            let mut net = Net::embedding(&format!("embedding net ({i}, {jj})"), 1, &sp, true)?;
            net.clear()?;
            coll.nets[i + ntypes * jj] = Some(net);
        }
    }
    for (name, f, a) in matching(g, parse_filter)? {
        let (layer, i, jj) = match (f.owner, f.nums.as_slice()) {
            (None, &[l, i, jj]) if i < ntypes && jj < ntypes => (l, i, jj),
            _ => {
                return Err(bad(format!(
                    "embedding-net node `{name}` is not an se_e3 net of {ntypes} types"
                )))
            }
        };
        if layer == 0 {
            return Err(bad(format!("`{name}`: layers are numbered from 1")));
        }
        let slot = &mut coll.nets[i + ntypes * jj];
        if slot.is_none() {
            *slot = Some(Net::embedding(
                &format!("embedding net ({i}, {jj})"),
                1,
                &sp,
                true,
            )?);
        }
        if let Some(net) = slot {
            net.set(layer - 1, f.kind, a, &name)?;
        }
    }
    let tree = dict(vec![
        ("@class", s("Descriptor")),
        ("type", s("se_e3")),
        ("@version", Value::Int(2)),
        ("rcut", c.rcut.clone()),
        ("rcut_smth", c.rcut_smth.clone()),
        ("sel", c.sel_v.clone()),
        ("neuron", c.neuron_v.clone()),
        ("resnet_dt", Value::Bool(c.resnet_dt)),
        ("set_davg_zero", c.set_davg_zero.clone()),
        ("activation_function", s(&c.activation)),
        ("precision", s(c.precision)),
        ("embeddings", coll.finish()?),
        ("env_mat", env_mat(&c.rcut, &c.rcut_smth)),
        ("exclude_types", c.exclude_v.clone()),
        ("env_protection", c.env_protection.clone()),
        ("@variables", stats(g, ntypes, nnei, 4)?),
        ("type_map", type_map.clone()),
        ("trainable", c.trainable.clone()),
    ]);
    Ok(Desc {
        tree,
        dim_out: c.last(),
        ntypes,
        tebd_dim: 0,
    })
}

/// The model-level type embedding (deepmd/tf/utils/type_embed.py `TypeEmbedNet.serialize`):
/// built from the script's `model.type_embedding`, or the TensorFlow defaults (`neuron [8]`, no
/// activation, no bias), with the widths and bias presence the graph's nodes show.
fn type_embedding(g: &G, jmodel: &J, ntypes: usize, type_map: &Value) -> R<(Value, usize, bool)> {
    let src = jmodel.get("type_embedding").map(J);
    let (mut neuron, resnet_dt, activation, precision, trainable, econf, mut use_bias) = match src {
        None => (
            vec![8],
            false,
            "None".to_string(),
            "default".to_string(),
            Value::Bool(true),
            false,
            false,
        ),
        Some(t) => (
            t.counts("neuron", &[8])?.1,
            t.bool("resnet_dt", false)?,
            match t.0.get("activation_function") {
                Some(Value::Null) => "None".to_string(),
                _ => t.str("activation_function", "tanh")?,
            },
            t.str("precision", "default")?,
            t.or("trainable", Value::Bool(true)),
            t.bool("use_econf_tebd", false)?,
            t.bool("use_tebd_bias", false)?,
        ),
    };
    if econf {
        return Err(unsupported(
            "type embedding from electronic configurations (use_econf_tebd)",
        ));
    }
    // Graph truth: widths of type_embed_net/matrix_{l}, bias presence.
    let mut widths = Vec::new();
    while let Some(shape) = g.shape(&format!("type_embed_net/matrix_{}", widths.len() + 1))? {
        match shape.as_slice() {
            &[_, o] => widths.push(o),
            _ => return Err(bad("type_embed_net matrices must be 2-d")),
        }
    }
    if !widths.is_empty() {
        neuron = widths;
        use_bias = g.has("type_embed_net/bias_1");
    }
    let precision = prec_name(&precision)?;
    let neuron_v = ints(&neuron);
    let sp = NetSpec {
        neuron: &neuron,
        neuron_v: &neuron_v,
        activation: &activation,
        resnet_dt,
        precision,
        trainable: &Value::Bool(true),
    };
    let mut net = Net::embedding("type embedding net", ntypes, &sp, use_bias)?;
    let parse = |n: &str| {
        let leaf = n.strip_prefix("type_embed_net/")?;
        let (kind, tail) = Kind::strip(leaf)?;
        digits(tail.strip_prefix('_')?).map(|l| (kind, l))
    };
    for (name, (kind, l), a) in matching(g, parse)? {
        if l == 0 {
            return Err(bad(format!("`{name}`: layers are numbered from 1")));
        }
        if kind == Kind::Bias && !use_bias {
            continue;
        }
        net.set(l - 1, kind, a, &name)?;
    }
    let tebd_dim = neuron.first().copied().unwrap_or(0);
    let tree = dict(vec![
        ("@class", s("TypeEmbedNet")),
        ("@version", Value::Int(2)),
        ("ntypes", Value::Int(ntypes as i64)),
        ("neuron", neuron_v.clone()),
        ("resnet_dt", Value::Bool(resnet_dt)),
        ("precision", s(precision)),
        ("activation_function", s(&activation)),
        ("trainable", trainable),
        ("padding", Value::Bool(true)),
        ("use_econf_tebd", Value::Bool(false)),
        ("use_tebd_bias", Value::Bool(use_bias)),
        ("type_map", type_map.clone()),
        ("embedding", net.finish()?),
    ]);
    Ok((tree, tebd_dim, use_bias))
}

/// Last-axis concatenation (the q, k, v projections into one `in_proj`).
fn concat_last(parts: &[&NdArray], what: &str) -> R<NdArray> {
    let first = parts[0];
    let Some((_, lead)) = first.shape.split_last() else {
        return Err(bad(format!("{what}: scalar weights")));
    };
    let rows: usize = lead.iter().product();
    let mut width = 0;
    for p in parts {
        if p.dtype != first.dtype
            || p.shape.len() != first.shape.len()
            || p.shape[..lead.len()] != *lead
        {
            return Err(bad(format!(
                "{what}: query, key and value weights differ in shape or type"
            )));
        }
        width += p.shape[lead.len()];
    }
    let size = first.dtype.size();
    let mut bytes = Vec::with_capacity(rows * width * size);
    for r in 0..rows {
        for p in parts {
            let w = p.shape[lead.len()] * size;
            bytes.extend_from_slice(&p.bytes[r * w..(r + 1) * w]);
        }
    }
    let mut shape = lead.to_vec();
    shape.push(width);
    NdArray::from_bytes(first.dtype, shape, bytes)
}

/// An attention weight: `attention_layer_{k}/{c_query|c_key|c_value|c_out}/{matrix|bias}` or
/// `attention_layer_{k}/layer_normalization[_n]/{gamma|beta}` → (k, part, leaf).
fn parse_attention(name: &str) -> Option<(usize, String, String)> {
    let rest = name.strip_prefix("attention_layer_")?;
    let mut it = rest.split('/');
    let (k, part, leaf) = (digits(it.next()?)?, it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    match part {
        "c_query" | "c_key" | "c_value" | "c_out" if matches!(leaf, "matrix" | "bias") => {}
        _ if matches!(leaf, "gamma" | "beta")
            && (part == "layer_normalization"
                || part
                    .strip_prefix("layer_normalization_")
                    .is_some_and(|n| digits(n).is_some())) => {}
        _ => return None,
    }
    let part = if part.starts_with("layer_normalization") {
        "layer_normalization"
    } else {
        part
    };
    Some((k, part.to_string(), leaf.to_string()))
}

/// se_atten / dpa1 (deepmd/tf/descriptor/se_atten.py `DescrptSeAtten.serialize`), with the
/// graph's `ln_eps`, one-side layout and type-embedding width, and TensorFlow's unscaled
/// attention logits (`temperature: 1.0`).
fn se_atten(g: &G, j: &J, jmodel: &J, type_map: &Value) -> R<Desc> {
    let dtype_name = j.str("type", "")?;
    if dtype_name == "se_atten_v2" || j.bool("smooth_type_embedding", false)? {
        return Err(unsupported(
            "se_atten_v2 / smooth_type_embedding: TensorFlow's implementation differs from the other backends (DeePMD-kit cannot convert it either)",
        ));
    }
    let ntypes = type_map.as_list().map_or(0, <[Value]>::len);
    if ntypes == 0 {
        return Err(bad("se_atten needs a type_map"));
    }
    let nnei = match j.get("sel") {
        Some(Value::List(l)) => l
            .iter()
            .map(|x| count(x).ok_or_else(|| bad("model definition: `sel` holds a non-count")))
            .sum::<R<usize>>()?,
        Some(v) => count(v).ok_or_else(|| bad("model definition: `sel` is not a count"))?,
        None => return Err(bad("model definition: the descriptor has no `sel`")),
    };
    let (rcut, _) = j.number("rcut")?;
    let (rcut_smth, _) = j.number("rcut_smth")?;
    let (neuron_v, neuron) = j.counts("neuron", &[25, 50, 100])?;
    let embed_dim = neuron
        .last()
        .copied()
        .ok_or_else(|| bad("model definition: the descriptor's `neuron` is empty"))?;
    let axis_v = j.or("axis_neuron", Value::Int(8));
    let axis =
        count(&axis_v).ok_or_else(|| bad("model definition: `axis_neuron` is not a count"))?;
    let resnet_dt = j.bool("resnet_dt", false)?;
    let trainable = j.or("trainable", Value::Bool(true));
    let activation = j.str("activation_function", "tanh")?;
    let precision = prec_name(&j.str("precision", "default")?)?;
    let attn = j.usize("attn", 128)?;
    let attn_layer = j.usize("attn_layer", 2)?;
    let attn_dotr = j.bool("attn_dotr", true)?;
    let attn_mask = j.bool("attn_mask", false)?;
    let mut strip = j.str("tebd_input_mode", "concat")? == "strip";
    if let Some(v) = j.get("stripped_type_embedding") {
        strip = v
            .as_bool()
            .ok_or_else(|| bad("model definition: `stripped_type_embedding` is not a bool"))?;
    }
    if j.f64("scaling_factor", 1.0)? != 1.0
        || !j.bool("normalize", true)?
        || j.get("temperature").is_some()
        || !j.bool("concat_output_tebd", true)?
        || j.f64("env_protection", 0.0)? != 0.0
    {
        return Err(unsupported(
            "se_atten with scaling_factor != 1, normalize = false, a temperature, concat_output_tebd = false or env_protection != 0 (TensorFlow does not implement them)",
        ));
    }
    let trainable_ln = j.bool("trainable_ln", true)?;
    let mut tos = j.bool("type_one_side", true)?;
    if strip {
        // Graph truth: the strip net's name says which side.
        if g.has("filter_type_all/matrix_1_two_side_ebd") {
            tos = false;
        } else if g.has("filter_type_all/matrix_1_one_side_ebd") {
            tos = true;
        }
        if tos {
            return Err(unsupported(
                "se_atten with tebd_input_mode = strip and type_one_side = true (DeePMD-kit cannot convert it either)",
            ));
        }
    }
    check_sel(g, &[nnei])?;

    let (tebd_tree, tebd_dim, use_tebd_bias) = type_embedding(g, jmodel, ntypes, type_map)?;
    let mut embd_in = if strip {
        1
    } else if tos {
        1 + tebd_dim
    } else {
        1 + 2 * tebd_dim
    };
    if let Some(shape) = g.shape("filter_type_all/matrix_1")? {
        embd_in = *shape
            .first()
            .ok_or_else(|| bad("filter_type_all/matrix_1 is not a matrix"))?;
        if !strip {
            tos = embd_in == 1 + tebd_dim;
        }
    }

    // Layer-norm epsilon: the graph's constant, else the script's (TF maps null to 1e-3).
    let ln_eps = match g.scalar_f64("attention_layer_0/layer_normalization/add/y")? {
        Some(e) => e,
        None => match j.get("ln_eps") {
            Some(v) => v
                .as_f64()
                .ok_or_else(|| bad("model definition: `ln_eps` is not a number"))?,
            None => 1e-3,
        },
    };

    let temperature = Value::Float(1.0);
    let attention = attention(
        g,
        &Attn {
            layers: attn_layer,
            nnei,
            embed_dim,
            hidden: attn,
            dotr: attn_dotr,
            mask: attn_mask,
            trainable_ln,
            ln_eps,
            precision,
            trainable: &trainable,
        },
    )?;

    let exclude_v = j.or("exclude_types", Value::List(vec![]));
    let excl = exclude_pairs(&exclude_v, ntypes)?;
    let sp = NetSpec {
        neuron: &neuron,
        neuron_v: &neuron_v,
        activation: &activation,
        resnet_dt,
        precision,
        trainable: &trainable,
    };
    let embeddings = se_embeddings(g, ntypes, 0, embd_in, &sp, &excl)?;
    let mut items = vec![
        ("@class", s("Descriptor")),
        ("type", s("dpa1")),
        ("@version", Value::Int(2)),
        ("rcut", rcut.clone()),
        ("rcut_smth", rcut_smth.clone()),
        ("sel", ints(&[nnei])),
        ("ntypes", Value::Int(ntypes as i64)),
        ("neuron", neuron_v.clone()),
        ("axis_neuron", axis_v),
        ("set_davg_zero", j.or("set_davg_zero", Value::Bool(true))),
        ("attn", Value::Int(attn as i64)),
        ("attn_layer", Value::Int(attn_layer as i64)),
        ("attn_dotr", Value::Bool(attn_dotr)),
        ("attn_mask", Value::Bool(attn_mask)),
        ("activation_function", s(&activation)),
        ("resnet_dt", Value::Bool(resnet_dt)),
        ("smooth_type_embedding", Value::Bool(false)),
        ("tebd_input_mode", s(if strip { "strip" } else { "concat" })),
        ("trainable_ln", Value::Bool(trainable_ln)),
        ("ln_eps", Value::Float(ln_eps)),
        ("precision", s(precision)),
        ("embeddings", embeddings),
        ("attention_layers", attention),
        ("env_mat", env_mat(&rcut, &rcut_smth)),
        ("exclude_types", exclude_v),
        ("env_protection", j.or("env_protection", Value::Float(0.0))),
        ("@variables", stats(g, ntypes, nnei, 4)?),
        ("type_map", type_map.clone()),
        ("trainable", trainable.clone()),
        ("type_one_side", Value::Bool(tos)),
        ("spin", Value::Null),
        ("type_embedding", tebd_tree),
        ("use_tebd_bias", Value::Bool(use_tebd_bias)),
        ("tebd_dim", Value::Int(tebd_dim as i64)),
    ];
    if strip {
        let mut coll = Collection::new(0, ntypes, "embedding_network")?;
        let parse = |n: &str| {
            let leaf = n.strip_prefix("filter_type_all/")?;
            let (kind, tail) = Kind::strip(leaf)?;
            let l = digits(tail.strip_prefix('_')?.strip_suffix("_two_side_ebd")?)?;
            Some((kind, l))
        };
        for (name, (kind, l), a) in matching(g, parse)? {
            if l == 0 {
                return Err(bad(format!("`{name}`: layers are numbered from 1")));
            }
            if coll.nets[0].is_none() {
                coll.nets[0] = Some(Net::embedding(
                    "strip embedding net",
                    2 * tebd_dim,
                    &sp,
                    true,
                )?);
            }
            if let Some(net) = &mut coll.nets[0] {
                net.set(l - 1, kind, a, &name)?;
            }
        }
        items.push(("embeddings_strip", coll.finish()?));
    }
    items.extend([
        ("scaling_factor", Value::Float(1.0)),
        ("normalize", Value::Bool(true)),
        ("temperature", temperature),
        ("concat_output_tebd", Value::Bool(true)),
        ("use_econf_tebd", Value::Bool(false)),
    ]);
    Ok(Desc {
        tree: dict(items),
        dim_out: embed_dim * axis,
        ntypes,
        tebd_dim,
    })
}

/// What the attention layers of se_atten share.
struct Attn<'a> {
    layers: usize,
    nnei: usize,
    embed_dim: usize,
    hidden: usize,
    dotr: bool,
    mask: bool,
    trainable_ln: bool,
    /// The first layer's epsilon (or the script's): the descriptor-level `ln_eps`.
    ln_eps: f64,
    precision: &'static str,
    trainable: &'a Value,
}

/// `NeighborGatedAttention.serialize` as TensorFlow's se_atten writes it, with
/// `temperature: 1.0` (TF does not scale the logits) and each layer's own epsilon
/// (`attention_layer_{k}/layer_normalization/add/y`).
fn attention(g: &G, a: &Attn) -> R<Value> {
    let mut params: Vec<Dict> = (0..a.layers).map(|_| Dict::new()).collect();
    for (name, (k, part, leaf), arr) in matching(g, parse_attention)? {
        let p = params.get_mut(k).ok_or_else(|| {
            bad(format!(
                "`{name}`: the graph has more attention layers than attn_layer = {}",
                a.layers
            ))
        })?;
        p.insert(format!("{part}/{leaf}"), Value::Array(arr));
    }
    let info = || -> Vec<(&'static str, Value)> {
        vec![
            ("nnei", Value::Int(a.nnei as i64)),
            ("embed_dim", Value::Int(a.embed_dim as i64)),
            ("hidden_dim", Value::Int(a.hidden as i64)),
            ("dotr", Value::Bool(a.dotr)),
            ("do_mask", Value::Bool(a.mask)),
            ("scaling_factor", Value::Float(1.0)),
            ("normalize", Value::Bool(true)),
            ("temperature", Value::Float(1.0)),
            ("precision", s(a.precision)),
        ]
    };
    let mut layers = Vec::with_capacity(a.layers);
    for (k, p) in params.iter().enumerate() {
        let get = |key: &str| -> R<NdArray> {
            p.get(key)
                .and_then(Value::as_array)
                .cloned()
                .ok_or_else(|| {
                    bad(format!(
                        "the graph has no constant `attention_layer_{k}/{key}`"
                    ))
                })
        };
        let qkv = |leaf: &str| -> R<NdArray> {
            let parts = ["c_query", "c_key", "c_value"]
                .map(|c| get(&format!("{c}/{leaf}")))
                .into_iter()
                .collect::<R<Vec<_>>>()?;
            concat_last(
                &parts.iter().collect::<Vec<_>>(),
                &format!("attention layer {k}"),
            )
        };
        let in_proj = projection(a, qkv("matrix")?, qkv("bias")?, a.embed_dim, 3 * a.hidden)
            .map_err(|e| e.context(&format!("attention_layer_{k}/c_query|c_key|c_value")))?;
        let out_proj = projection(
            a,
            get("c_out/matrix")?,
            get("c_out/bias")?,
            a.hidden,
            a.embed_dim,
        )
        .map_err(|e| e.context(&format!("attention_layer_{k}/c_out")))?;
        let gamma = get("layer_normalization/gamma")?;
        let beta = get("layer_normalization/beta")?;
        if gamma.shape != [a.embed_dim] || beta.shape != [a.embed_dim] {
            return Err(bad(format!(
                "attention_layer_{k}/layer_normalization: gamma/beta have shapes {:?}/{:?}, expected [{}]",
                gamma.shape, beta.shape, a.embed_dim
            )));
        }
        let eps = g
            .scalar_f64(&format!("attention_layer_{k}/layer_normalization/add/y"))?
            .unwrap_or(a.ln_eps);
        let ln = dict(vec![
            ("@class", s("LayerNorm")),
            ("@version", Value::Int(1)),
            ("eps", Value::Float(eps)),
            ("trainable", Value::Bool(a.trainable_ln)),
            ("precision", s(a.precision)),
            (
                "@variables",
                dict(vec![("w", Value::Array(gamma)), ("b", Value::Array(beta))]),
            ),
        ]);
        let mut att = vec![
            ("in_proj", in_proj),
            ("out_proj", out_proj),
            ("bias", Value::Bool(true)),
            ("smooth", Value::Bool(false)),
        ];
        att.extend(info());
        att.push(("num_heads", Value::Int(1)));
        let mut lay = vec![
            ("attention_layer", dict(att)),
            ("attn_layer_norm", ln),
            ("trainable_ln", Value::Bool(a.trainable_ln)),
            ("ln_eps", Value::Float(eps)),
        ];
        lay.extend(info());
        layers.push(dict(lay));
    }
    let mut items = vec![
        ("@class", s("NeighborGatedAttention")),
        ("@version", Value::Int(1)),
        ("scaling_factor", Value::Float(1.0)),
        ("normalize", Value::Bool(true)),
        ("temperature", Value::Float(1.0)),
        ("layer_num", Value::Int(a.layers as i64)),
    ];
    items.extend(info().into_iter().take(5));
    items.extend([
        ("trainable_ln", Value::Bool(a.trainable_ln)),
        ("ln_eps", Value::Float(a.ln_eps)),
        ("precision", s(a.precision)),
        ("attention_layers", Value::List(layers)),
    ]);
    Ok(dict(items))
}

/// An attention projection: a linear `Layer` with bias and no timestep.
fn projection(a: &Attn, w: NdArray, b: NdArray, n_in: usize, n_out: usize) -> R<Value> {
    if w.shape != [n_in, n_out] || b.shape != [n_out] {
        return Err(bad(format!(
            "weights {:?} and bias {:?} do not form a [{n_in}, {n_out}] projection",
            w.shape, b.shape
        )));
    }
    let l = Lay {
        n_in,
        n_out,
        w: None,
        b: None,
        idt: None,
        has_bias: true,
        timestep: false,
        activation: "none".into(),
        resnet: false,
        trainable: a.trainable.clone(),
    };
    Ok(layer_value(&l, w, Some(b), None, a.precision))
}

// ---------------------------------------------------------------------------------------------
// energy fitting (deepmd/tf/fit/ener.py `EnerFitting.serialize`)
// ---------------------------------------------------------------------------------------------

fn ener_fitting(g: &G, f: &J, d: &Desc, mixed: bool, type_map: &Value) -> R<Value> {
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

// ---------------------------------------------------------------------------------------------
// the model (deepmd/tf/model/model.py `StandardModel.serialize`)
// ---------------------------------------------------------------------------------------------

fn build_model(g: &G, jm: &J) -> R<Value> {
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

// ---------------------------------------------------------------------------------------------
// graphs without a training script (DeePMD-kit < 2, `dp convert-from`): a minimal model JSON
// ---------------------------------------------------------------------------------------------

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
fn infer_model_json(g: &G) -> R<Value> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_detection() {
        let p = Path::new("m.pb");
        assert!(looks_like_text(b"node {\n  name: \"a\"\n}"));
        assert!(looks_like_text(b"# comment\nversions { producer: 1 }"));
        assert!(!looks_like_text(b"\n+\n\x15descrpt_attr/rcut\x12\x05Const"));
        assert!(!looks_like_text(b""));
        assert!(is_text(Path::new("m.PBTXT"), b"\x00"));
        assert!(!is_text(p, b"\x0a\x05hello"));
    }

    #[test]
    fn node_names() {
        let f = parse_filter("filter_type_1/matrix_2_0").unwrap();
        assert_eq!(
            (f.owner, f.kind, f.nums),
            (Some(1), Kind::Matrix, vec![2, 0])
        );
        let f = parse_filter("filter_type_all/idt_3_0_1").unwrap();
        assert_eq!((f.owner, f.kind, f.nums), (None, Kind::Idt, vec![3, 0, 1]));
        assert!(parse_filter("filter_type_all/matrix_1_two_side_ebd").is_none());
        assert!(parse_filter("filter_type_0/matrix_1").is_none());
        assert!(parse_filter("filter_type_all/Slice/begin").is_none());
        let f = parse_fitting("layer_2_type_1/idt").unwrap();
        assert_eq!((f.layer, f.ty, f.kind), (Some(2), Some(1), Kind::Idt));
        let f = parse_fitting("final_layer/bias").unwrap();
        assert_eq!((f.layer, f.ty, f.kind), (None, None, Kind::Bias));
        assert!(parse_fitting("final_layer/idt").is_none());
        assert!(parse_fitting("attention_layer_0/c_out/matrix").is_none());
        assert!(parse_fitting("layer_0/Reshape/shape").is_none());
        assert_eq!(
            parse_attention("attention_layer_1/layer_normalization_3/gamma"),
            Some((1, "layer_normalization".into(), "gamma".into()))
        );
        assert!(parse_attention("attention_layer_0/layer_normalization/add/y").is_none());
    }

    #[test]
    fn last_axis_concat() {
        let a = NdArray::from_f64(vec![2, 1], &[1.0, 2.0]);
        let b = NdArray::from_f64(vec![2, 2], &[3.0, 4.0, 5.0, 6.0]);
        let c = concat_last(&[&a, &b], "t").unwrap();
        assert_eq!(c.shape, vec![2, 3]);
        assert_eq!(c.to_f64_vec(), vec![1.0, 3.0, 4.0, 2.0, 5.0, 6.0]);
    }
}
