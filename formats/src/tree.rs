//! DeePMD-kit's serialization tree: the level-1 IR every format reads into and writes from.
//!
//! The tree mirrors the Python dict that `Model.serialize()` returns and that `.dp`/`.yaml`
//! store: JSON-like scalars, lists and ordered dicts, plus n-d arrays and opaque byte blobs
//! (the StableHLO exports inside `.hlo`). Arrays keep their raw little-endian bytes and
//! numpy dtype name so every conversion is bit-exact.

use indexmap::IndexMap;

use crate::FormatError;

/// An ordered dict, as Python dicts are.
pub type Dict = IndexMap<String, Value>;

/// One node of the serialization tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Value>),
    Dict(Dict),
    Array(NdArray),
    /// An opaque byte blob (h5py `np.void`), e.g. a serialized `jax.export` module.
    Bytes(Vec<u8>),
}

/// Element types DeePMD-kit writes (numpy dtype names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F16,
    F32,
    F64,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Bool,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::F16 | DType::I16 | DType::U16 => 2,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
        }
    }

    /// The numpy name (`x.dtype.name`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F16 => "float16",
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::I8 => "int8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::U8 => "uint8",
            DType::U16 => "uint16",
            DType::U32 => "uint32",
            DType::U64 => "uint64",
            DType::Bool => "bool",
        }
    }

    pub fn from_name(name: &str) -> Option<DType> {
        Some(match name {
            "float16" | "half" => DType::F16,
            "float32" | "single" => DType::F32,
            "float64" | "double" => DType::F64,
            "int8" => DType::I8,
            "int16" => DType::I16,
            "int32" => DType::I32,
            "int64" => DType::I64,
            "uint8" => DType::U8,
            "uint16" => DType::U16,
            "uint32" => DType::U32,
            "uint64" => DType::U64,
            "bool" => DType::Bool,
            _ => return None,
        })
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::F32 | DType::F64)
    }
}

/// An n-d array: dtype, shape and the raw little-endian element bytes (C order).
#[derive(Debug, Clone, PartialEq)]
pub struct NdArray {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl NdArray {
    /// Build from raw bytes, checking that the byte count matches the shape.
    pub fn from_bytes(
        dtype: DType,
        shape: Vec<usize>,
        bytes: Vec<u8>,
    ) -> Result<Self, FormatError> {
        let n: usize = shape.iter().product();
        if n.checked_mul(dtype.size()) != Some(bytes.len()) {
            return Err(FormatError::invalid(format!(
                "array of {} {:?} needs {} bytes, got {}",
                dtype.name(),
                shape,
                n * dtype.size(),
                bytes.len()
            )));
        }
        Ok(NdArray {
            dtype,
            shape,
            bytes,
        })
    }

    pub fn from_f64(shape: Vec<usize>, data: &[f64]) -> Self {
        let bytes = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        NdArray {
            dtype: DType::F64,
            shape,
            bytes,
        }
    }

    pub fn from_i64(shape: Vec<usize>, data: &[i64]) -> Self {
        let bytes = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        NdArray {
            dtype: DType::I64,
            shape,
            bytes,
        }
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` widened to f64 (exact for every supported type except 64-bit ints > 2^53).
    pub fn get_f64(&self, i: usize) -> f64 {
        let s = self.dtype.size();
        let b = &self.bytes[i * s..(i + 1) * s];
        match self.dtype {
            DType::F16 => f16_to_f64(u16::from_le_bytes([b[0], b[1]])),
            DType::F32 => f32::from_le_bytes(b.try_into().unwrap()) as f64,
            DType::F64 => f64::from_le_bytes(b.try_into().unwrap()),
            DType::I8 => b[0] as i8 as f64,
            DType::I16 => i16::from_le_bytes([b[0], b[1]]) as f64,
            DType::I32 => i32::from_le_bytes(b.try_into().unwrap()) as f64,
            DType::I64 => i64::from_le_bytes(b.try_into().unwrap()) as f64,
            DType::U8 => b[0] as f64,
            DType::U16 => u16::from_le_bytes([b[0], b[1]]) as f64,
            DType::U32 => u32::from_le_bytes(b.try_into().unwrap()) as f64,
            DType::U64 => u64::from_le_bytes(b.try_into().unwrap()) as f64,
            DType::Bool => (b[0] != 0) as u8 as f64,
        }
    }

    /// Element `i` as an integer, when the dtype is an integer or bool type.
    pub fn get_i64(&self, i: usize) -> Option<i64> {
        let s = self.dtype.size();
        let b = &self.bytes[i * s..(i + 1) * s];
        Some(match self.dtype {
            DType::I8 => b[0] as i8 as i64,
            DType::I16 => i16::from_le_bytes([b[0], b[1]]) as i64,
            DType::I32 => i32::from_le_bytes(b.try_into().unwrap()) as i64,
            DType::I64 => i64::from_le_bytes(b.try_into().unwrap()),
            DType::U8 => b[0] as i64,
            DType::U16 => u16::from_le_bytes([b[0], b[1]]) as i64,
            DType::U32 => u32::from_le_bytes(b.try_into().unwrap()) as i64,
            DType::U64 => i64::try_from(u64::from_le_bytes(b.try_into().unwrap())).ok()?,
            DType::Bool => (b[0] != 0) as i64,
            DType::F16 | DType::F32 | DType::F64 => return None,
        })
    }

    /// All elements widened to f64.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        (0..self.len()).map(|i| self.get_f64(i)).collect()
    }
}

/// IEEE half to f64 (exact).
pub fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f64;
    match exp {
        0 => sign * frac * 2f64.powi(-24),
        31 => {
            if frac == 0.0 {
                sign * f64::INFINITY
            } else {
                f64::NAN
            }
        }
        _ => sign * (1.0 + frac / 1024.0) * 2f64.powi(exp - 15),
    }
}

impl Value {
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Array(_) => "array",
            Value::Bytes(_) => "bytes",
        }
    }

    pub fn as_dict(&self) -> Option<&Dict> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// Integers, and floats with an exact integer value (Python writes `1.0` for some ints).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Some(*f as i64),
            Value::Array(a) if a.len() == 1 => a.get_i64(0),
            _ => None,
        }
    }

    /// Numbers of either kind, and one-element arrays (0-d datasets from `.dp`).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::Array(a) if a.len() == 1 => Some(a.get_f64(0)),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&NdArray> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// `self[key]` for dicts; `None` for missing keys or non-dicts.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_dict().and_then(|d| d.get(key))
    }

    /// Visit every array and byte blob, depth first, in tree order.
    pub fn for_each_leaf_array(&self, f: &mut dyn FnMut(&Value)) {
        match self {
            Value::Array(_) | Value::Bytes(_) => f(self),
            Value::List(l) => l.iter().for_each(|v| v.for_each_leaf_array(f)),
            Value::Dict(d) => d.values().for_each(|v| v.for_each_leaf_array(f)),
            _ => {}
        }
    }

    /// Total number of array elements in the tree (the model's parameter count).
    pub fn count_array_elements(&self) -> usize {
        let mut n = 0;
        self.for_each_leaf_array(&mut |v| {
            if let Value::Array(a) = v {
                n += a.len();
            }
        });
        n
    }
}

/// DeePMD-kit's variable rule (`traverse_model_dict`): every non-null leaf below a key named
/// `@variables`, and every dict carrying `"@is_variable": true`, is a variable.
/// `f` receives each variable and returns its replacement.
pub fn map_variables(
    v: Value,
    in_variables: bool,
    f: &mut dyn FnMut(Value) -> Result<Value, FormatError>,
) -> Result<Value, FormatError> {
    match v {
        Value::Dict(d) => {
            if matches!(d.get("@is_variable"), Some(Value::Bool(true))) {
                return f(Value::Dict(d));
            }
            let mut out = Dict::with_capacity(d.len());
            for (k, child) in d {
                let inner = in_variables || k == "@variables";
                let mapped = map_variables(child, inner, f)?;
                out.insert(k, mapped);
            }
            Ok(Value::Dict(out))
        }
        Value::List(l) => Ok(Value::List(
            l.into_iter()
                .map(|c| map_variables(c, in_variables, f))
                .collect::<Result<_, _>>()?,
        )),
        Value::Null => Ok(Value::Null),
        other if in_variables => f(other),
        other => Ok(other),
    }
}

/// An array as DeePMD-kit's `np.ndarray` variable dict (YAML, and the JSON inside `.pte`).
pub fn ndarray_to_dict(a: &NdArray) -> Dict {
    let mut d = Dict::new();
    d.insert("@class".into(), Value::Str("np.ndarray".into()));
    d.insert("@is_variable".into(), Value::Bool(true));
    d.insert("@version".into(), Value::Int(1));
    d.insert("dtype".into(), Value::Str(a.dtype.name().into()));
    d.insert("value".into(), Value::Str(String::new())); // placeholder, replaced below
    let elems: Vec<Value> = (0..a.len())
        .map(|i| match a.dtype {
            DType::F16 | DType::F32 | DType::F64 => Value::Float(a.get_f64(i)),
            DType::Bool => Value::Bool(a.get_i64(i) != Some(0)),
            _ => Value::Int(a.get_i64(i).unwrap_or(i64::MAX)),
        })
        .collect();
    d.insert("value".into(), nest(&elems, &a.shape));
    d
}

fn nest(flat: &[Value], shape: &[usize]) -> Value {
    match shape.split_first() {
        None => flat[0].clone(),
        Some((&n, rest)) => {
            let stride: usize = rest.iter().product();
            Value::List(
                (0..n)
                    .map(|i| nest(&flat[i * stride..(i + 1) * stride], rest))
                    .collect(),
            )
        }
    }
}

/// Replace every `np.ndarray` variable dict in a tree by the array it encodes.
pub fn inline_ndarrays(tree: Value) -> Result<Value, FormatError> {
    map_variables(tree, false, &mut |v| match v {
        Value::Dict(d) if d.get("@class").and_then(Value::as_str) == Some("np.ndarray") => {
            ndarray_from_dict(&d).map(Value::Array)
        }
        other => Ok(other),
    })
}

/// An array from its `{"@class": "np.ndarray", "dtype", "value"}` encoding (YAML, and the
/// JSON inside `.pte`/`.pt2`).
pub fn ndarray_from_dict(d: &Dict) -> Result<NdArray, FormatError> {
    let dtype_name = d
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| FormatError::invalid("np.ndarray without a `dtype`"))?;
    let dtype = DType::from_name(dtype_name)
        .ok_or_else(|| FormatError::unsupported(format!("array dtype `{dtype_name}`")))?;
    let value = d
        .get("value")
        .ok_or_else(|| FormatError::invalid("np.ndarray without a `value`"))?;
    let mut shape = Vec::new();
    let mut probe = value;
    while let Value::List(l) = probe {
        shape.push(l.len());
        match l.first() {
            Some(first) => probe = first,
            None => break,
        }
    }
    let mut flat = Vec::new();
    flatten(value, &shape, 0, &mut flat)?;
    let mut bytes = Vec::with_capacity(flat.len() * dtype.size());
    for x in flat {
        push_element(dtype, x, &mut bytes)?;
    }
    NdArray::from_bytes(dtype, shape, bytes)
}

fn flatten<'a>(
    v: &'a Value,
    shape: &[usize],
    depth: usize,
    out: &mut Vec<&'a Value>,
) -> Result<(), FormatError> {
    match v {
        Value::List(l) => {
            if depth >= shape.len() || l.len() != shape[depth] {
                return Err(FormatError::invalid(
                    "np.ndarray `value` is a ragged nested list",
                ));
            }
            l.iter().try_for_each(|x| flatten(x, shape, depth + 1, out))
        }
        scalar if depth == shape.len() => {
            out.push(scalar);
            Ok(())
        }
        _ => Err(FormatError::invalid(
            "np.ndarray `value` is a ragged nested list",
        )),
    }
}

fn push_element(dtype: DType, x: &Value, bytes: &mut Vec<u8>) -> Result<(), FormatError> {
    let bad = || {
        FormatError::invalid(format!(
            "np.ndarray element {x:?} does not fit dtype {}",
            dtype.name()
        ))
    };
    if dtype.is_float() {
        let f = x.as_f64().ok_or_else(bad)?;
        match dtype {
            DType::F64 => bytes.extend(f.to_le_bytes()),
            DType::F32 => bytes.extend((f as f32).to_le_bytes()),
            _ => return Err(FormatError::unsupported("float16 arrays in YAML")),
        }
        return Ok(());
    }
    let i = match x {
        Value::Bool(b) => *b as i64,
        _ => x.as_i64().ok_or_else(bad)?,
    };
    match dtype {
        DType::I8 => bytes.extend(i8::try_from(i).map_err(|_| bad())?.to_le_bytes()),
        DType::I16 => bytes.extend(i16::try_from(i).map_err(|_| bad())?.to_le_bytes()),
        DType::I32 => bytes.extend(i32::try_from(i).map_err(|_| bad())?.to_le_bytes()),
        DType::I64 => bytes.extend(i.to_le_bytes()),
        DType::U8 | DType::Bool => bytes.extend(u8::try_from(i).map_err(|_| bad())?.to_le_bytes()),
        DType::U16 => bytes.extend(u16::try_from(i).map_err(|_| bad())?.to_le_bytes()),
        DType::U32 => bytes.extend(u32::try_from(i).map_err(|_| bad())?.to_le_bytes()),
        DType::U64 => bytes.extend(u64::try_from(i).map_err(|_| bad())?.to_le_bytes()),
        _ => unreachable!(),
    }
    Ok(())
}
