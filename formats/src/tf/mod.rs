//! TensorFlow frozen graphs (`.pb` binary, `.pbtxt` text): the GraphDef protobuf and its
//! constants. Nothing is executed; weights are read from `Const` nodes.

pub mod checkpoint;
pub mod graph_def;
pub mod pbtxt;
pub mod saved_object_graph;

use std::collections::HashMap;

use prost::Message;

use crate::tree::{DType, NdArray};
use crate::FormatError;
use graph_def::{attr_value, dtype, GraphDef, NodeDef, TensorProto};

/// Parse a GraphDef from binary protobuf or, when `text`, from text format.
pub fn parse(bytes: &[u8], text: bool) -> Result<GraphDef, FormatError> {
    if text {
        pbtxt::parse(bytes)
    } else {
        GraphDef::decode(bytes)
            .map_err(|e| FormatError::invalid(format!(".pb: not a TensorFlow GraphDef ({e})")))
    }
}

/// A GraphDef as binary protobuf.
pub fn encode(gd: &GraphDef) -> Vec<u8> {
    gd.encode_to_vec()
}

/// The graph's nodes by name.
pub struct Graph {
    pub def: GraphDef,
    index: HashMap<String, usize>,
}

impl Graph {
    pub fn new(def: GraphDef) -> Graph {
        let index = def
            .node
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        Graph { def, index }
    }

    pub fn node(&self, name: &str) -> Option<&NodeDef> {
        self.index.get(name).map(|&i| &self.def.node[i])
    }

    /// The tensor of a `Const` node.
    pub fn const_tensor(&self, name: &str) -> Option<&TensorProto> {
        let n = self.node(name)?;
        if n.op != "Const" {
            return None;
        }
        match n.attr.get("value")?.value.as_ref()? {
            attr_value::Value::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// A `Const` node's array.
    pub fn array(&self, name: &str) -> Result<Option<NdArray>, FormatError> {
        self.const_tensor(name)
            .map(|t| to_ndarray(t).map_err(|e| e.context(name)))
            .transpose()
    }

    /// A scalar string `Const` (`train_attr/training_script`, `model_attr/tmap`, ...).
    pub fn string(&self, name: &str) -> Option<String> {
        let t = self.const_tensor(name)?;
        t.string_val
            .first()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.def.node.iter().map(|n| n.name.as_str())
    }
}

/// A TensorProto as an array: raw `tensor_content`, or the typed value list (a single
/// value fills the whole shape, as TensorFlow allows).
pub fn to_ndarray(t: &TensorProto) -> Result<NdArray, FormatError> {
    let shape: Vec<usize> = match &t.tensor_shape {
        Some(s) => s
            .dim
            .iter()
            .map(|d| {
                usize::try_from(d.size)
                    .map_err(|_| FormatError::invalid("negative tensor dimension"))
            })
            .collect::<Result<_, _>>()?,
        None => vec![],
    };
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| FormatError::invalid("tensor too large"))?;
    let dt = match t.dtype {
        dtype::DOUBLE => DType::F64,
        dtype::FLOAT => DType::F32,
        dtype::INT32 => DType::I32,
        dtype::INT64 => DType::I64,
        dtype::BOOL => DType::Bool,
        dtype::HALF => DType::F16,
        dtype::INT8 => DType::I8,
        dtype::UINT8 => DType::U8,
        dtype::INT16 => DType::I16,
        other => return Err(FormatError::unsupported(format!("tensor dtype {other}"))),
    };
    if !t.tensor_content.is_empty() {
        return NdArray::from_bytes(dt, shape, t.tensor_content.clone());
    }
    fn fill<T: Copy>(
        vals: &[T],
        n: usize,
        to_bytes: impl Fn(T) -> Vec<u8>,
    ) -> Result<Vec<u8>, FormatError> {
        match vals.len() {
            0 if n == 0 => Ok(vec![]),
            0 => Err(FormatError::invalid("tensor has no values")),
            k if k == n => Ok(vals.iter().flat_map(|&v| to_bytes(v)).collect()),
            k if k < n => {
                // Trailing values repeat the last one.
                let mut out: Vec<u8> = vals.iter().flat_map(|&v| to_bytes(v)).collect();
                for _ in k..n {
                    out.extend(to_bytes(vals[k - 1]));
                }
                Ok(out)
            }
            _ => Err(FormatError::invalid(
                "tensor has more values than its shape",
            )),
        }
    }
    let bytes = match dt {
        DType::F64 => fill(&t.double_val, n, |v| v.to_le_bytes().to_vec())?,
        DType::F32 => fill(&t.float_val, n, |v| v.to_le_bytes().to_vec())?,
        DType::I32 | DType::I16 | DType::I8 | DType::U8 => {
            let size = dt.size();
            fill(&t.int_val, n, |v| v.to_le_bytes()[..size].to_vec())?
        }
        DType::I64 => fill(&t.int64_val, n, |v| v.to_le_bytes().to_vec())?,
        DType::Bool => fill(&t.bool_val, n, |v| vec![v as u8])?,
        DType::F16 => fill(&t.half_val, n, |v| (v as u16).to_le_bytes().to_vec())?,
        _ => unreachable!(),
    };
    NdArray::from_bytes(dt, shape, bytes)
}
