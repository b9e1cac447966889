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

mod attention;
mod descriptor;
mod fitting;
mod infer;
mod model;
mod names;
mod network;
mod script;
mod se;
mod se_atten;

use std::path::Path;

use crate::tf::graph_def::{dtype, NodeDef, TensorProto};
use crate::tf::{self, Graph};
use crate::tree::{Dict, NdArray, Value};
use crate::FormatError;

use infer::infer_model_json;
use model::build_model;
use names::{parse_filter, Kind};
use script::J;

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
/// The string constant in which dpc's `.pb` files carry the serialization tree (JSON).
pub const DPC_MODEL_JSON: &str = "dpc_attr/model_json";

pub fn read(bytes: &[u8], text: bool) -> R<Value> {
    let def = tf::parse(bytes, text)?;
    let g = G(Graph::new(def));
    // A .pb dpc wrote carries the whole tree (its graph runs the model; it is not rebuilt).
    if let Some(json) = g.string(DPC_MODEL_JSON)? {
        return crate::pte::from_model_json(json.into_bytes());
    }
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
// shared helpers (building tree values)
// ---------------------------------------------------------------------------------------------

fn dict(items: Vec<(&str, Value)>) -> Value {
    Value::Dict(items.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn s(x: &str) -> Value {
    Value::Str(x.to_string())
}

fn ints(v: &[usize]) -> Value {
    Value::List(v.iter().map(|&x| Value::Int(x as i64)).collect())
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
}
