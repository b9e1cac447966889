//! TorchScript archives (`torch.jit.save`): a zip holding `data.pkl` (the module object
//! graph: classes, attributes, parameters), `data/N` (raw tensor storages), `code/` and
//! `extra/`. Read with the safe unpickler; tensors are rebuilt from their storages.

use crate::archive::Archive;
use crate::pickle::{self, Id, Node, Pickle};
use crate::tree::{DType, Dict, NdArray, Value};
use crate::FormatError;

/// The globals a TorchScript `data.pkl` names: its own classes (`__torch__.*`, which are
/// only names here) and torch's tensor/list rebuilders. Nothing else is accepted.
pub fn allowed_global(module: &str, name: &str) -> bool {
    module.starts_with("__torch__.")
        || matches!(
            (module, name),
            (
                "torch._utils",
                "_rebuild_tensor_v2" | "_rebuild_tensor" | "_rebuild_parameter"
            ) | ("collections", "OrderedDict")
                | (
                    "torch.jit._pickle",
                    "build_intlist"
                        | "build_doublelist"
                        | "build_boollist"
                        | "build_tensorlist"
                        | "build_tensor_from_id"
                        | "restore_type_tag"
                )
        )
        || (module == "torch" && name.ends_with("Storage"))
}

pub struct TorchScript {
    archive: Archive,
    prefix: String,
    pub data: Pickle,
}

fn bad(msg: impl Into<String>) -> FormatError {
    FormatError::invalid(format!("TorchScript: {}", msg.into()))
}

impl TorchScript {
    pub fn open(bytes: Vec<u8>) -> Result<TorchScript, FormatError> {
        let mut archive = Archive::open(bytes)?;
        let pkl = archive
            .find("data.pkl")
            .ok_or_else(|| bad("no data.pkl: not a TorchScript archive"))?;
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        if let Some(order) = archive.find("byteorder") {
            if archive.read(&order)? != b"little" {
                return Err(FormatError::unsupported("big-endian TorchScript archives"));
            }
        }
        let bytes = archive.read(&pkl)?;
        let data = pickle::parse(&bytes, &allowed_global)?;
        Ok(TorchScript {
            archive,
            prefix,
            data,
        })
    }

    /// A file under `extra/` (e.g. `data_modifier.pth`), if present.
    pub fn extra(&mut self, name: &str) -> Result<Option<Vec<u8>>, FormatError> {
        let full = format!("{}extra/{name}", self.prefix);
        if self.archive.names().contains(&full) {
            Ok(Some(self.archive.read(&full)?))
        } else {
            Ok(None)
        }
    }

    /// The class name (`module.Name`) of a module object.
    pub fn class(&self, obj: Id) -> Option<String> {
        match self.data.node(obj) {
            Node::Object { class, .. } => self.data.global(*class).map(|(m, n)| format!("{m}.{n}")),
            _ => None,
        }
    }

    /// An attribute of a module object (its `BUILD` state dict).
    pub fn attr(&self, obj: Id, name: &str) -> Option<Id> {
        match self.data.node(obj) {
            Node::Object { state: Some(s), .. } => self.data.dict_get(*s, name),
            _ => None,
        }
    }

    /// All attributes of a module object, in order.
    pub fn attrs(&self, obj: Id) -> Vec<(String, Id)> {
        match self.data.node(obj) {
            Node::Object { state: Some(s), .. } => match self.data.node(*s) {
                Node::Dict(kv) => kv
                    .iter()
                    .filter_map(|&(k, v)| self.data.as_str(k).map(|k| (k.to_string(), v)))
                    .collect(),
                _ => vec![],
            },
            _ => vec![],
        }
    }

    /// Whether a value is a tensor (a `_rebuild_tensor*` call).
    pub fn is_tensor(&self, id: Id) -> bool {
        match self.data.node(id) {
            Node::Call(f, _) => {
                matches!(self.data.global(*f), Some(("torch._utils", n)) if n.starts_with("_rebuild_"))
            }
            _ => false,
        }
    }

    /// Rebuild a tensor from its storage, offset, size and stride, as a C-order array.
    pub fn tensor(&mut self, id: Id) -> Result<NdArray, FormatError> {
        let Node::Call(f, args) = self.data.node(id).clone() else {
            return Err(bad("expected a tensor"));
        };
        let (_, fname) = self
            .data
            .global(f)
            .ok_or_else(|| bad("expected a tensor"))?;
        if fname == "_rebuild_parameter" {
            return self.tensor(*args.first().ok_or_else(|| bad("empty parameter"))?);
        }
        let [storage, offset, size, stride, ..] = args[..] else {
            return Err(bad("short tensor record"));
        };
        let Node::PersId(pid) = *self.data.node(storage) else {
            return Err(bad("tensor without a storage"));
        };
        let rec = self
            .data
            .items(pid)
            .ok_or_else(|| bad("bad storage record"))?
            .to_vec();
        if rec.len() < 5 || self.data.as_str(rec[0]) != Some("storage") {
            return Err(bad("bad storage record"));
        }
        let (_, stype) = self
            .data
            .global(rec[1])
            .ok_or_else(|| bad("storage type is not a global"))?;
        let dtype = match stype {
            "DoubleStorage" => DType::F64,
            "FloatStorage" => DType::F32,
            "HalfStorage" => DType::F16,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            other => return Err(FormatError::unsupported(format!("tensor storage {other}"))),
        };
        let key = self
            .data
            .as_str(rec[2])
            .ok_or_else(|| bad("storage key is not a string"))?
            .to_string();
        let ints = |p: &Pickle, id: Id| -> Result<Vec<usize>, FormatError> {
            p.items(id)
                .ok_or_else(|| bad("tensor size/stride is not a tuple"))?
                .iter()
                .map(|&x| {
                    p.as_int(x)
                        .and_then(|v| usize::try_from(v).ok())
                        .ok_or_else(|| bad("bad tensor size/stride"))
                })
                .collect()
        };
        let shape = ints(&self.data, size)?;
        let strides = ints(&self.data, stride)?;
        let offset = self
            .data
            .as_int(offset)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| bad("bad storage offset"))?;
        if strides.len() != shape.len() {
            return Err(bad("tensor size and stride differ in rank"));
        }
        let raw = self.archive.read(&format!("{}data/{key}", self.prefix))?;
        let es = dtype.size();
        let n: usize = shape.iter().product();
        let mut bytes = Vec::with_capacity(n * es);
        let mut idx = vec![0usize; shape.len()];
        for _ in 0..n {
            let elem = offset + idx.iter().zip(&strides).map(|(i, s)| i * s).sum::<usize>();
            let src = raw
                .get(elem * es..(elem + 1) * es)
                .ok_or_else(|| bad(format!("tensor reaches past storage {key}")))?;
            bytes.extend_from_slice(src);
            for ax in (0..shape.len()).rev() {
                idx[ax] += 1;
                if idx[ax] < shape[ax] {
                    break;
                }
                idx[ax] = 0;
            }
        }
        NdArray::from_bytes(dtype, shape, bytes)
    }

    /// A plain (non-tensor, non-module) attribute as a tree value: numbers, strings, lists,
    /// dicts; TorchScript's typed-list wrappers are unwrapped.
    pub fn value(&self, id: Id) -> Result<Value, FormatError> {
        self.value_depth(id, 0)
    }

    fn value_depth(&self, id: Id, depth: usize) -> Result<Value, FormatError> {
        if depth > 64 {
            return Err(bad("value nested too deeply"));
        }
        let p = &self.data;
        Ok(match p.node(id) {
            Node::None => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Int(i) => Value::Int(*i),
            Node::Float(f) => Value::Float(*f),
            Node::Str(s) => Value::Str(s.clone()),
            Node::Tuple(v) | Node::List(v) => Value::List(
                v.iter()
                    .map(|&x| self.value_depth(x, depth + 1))
                    .collect::<Result<_, _>>()?,
            ),
            Node::Dict(kv) => {
                let mut d = Dict::new();
                for &(k, v) in kv {
                    let key = p
                        .as_str(k)
                        .map(String::from)
                        .or_else(|| p.as_int(k).map(|i| i.to_string()))
                        .ok_or_else(|| bad("dict key is not a string"))?;
                    d.insert(key, self.value_depth(v, depth + 1)?);
                }
                Value::Dict(d)
            }
            Node::Call(f, args) => match p.global(*f) {
                Some((
                    "torch.jit._pickle",
                    "restore_type_tag" | "build_intlist" | "build_doublelist" | "build_boollist",
                )) => self.value_depth(
                    *args.first().ok_or_else(|| bad("empty typed list"))?,
                    depth + 1,
                )?,
                Some(("collections", "OrderedDict")) => Value::Dict(Dict::new()),
                _ => return Err(bad("expected a plain value, found a call")),
            },
            other => return Err(bad(format!("expected a plain value, found {other:?}"))),
        })
    }
}
