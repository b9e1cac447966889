//! The `.dp` container (also the outer layer of JAX `.hlo`/`.xlo`): an HDF5 file whose root
//! attribute `json` holds the serialization tree with every variable replaced by the name of
//! a root dataset `/variable_NNNN` (DeePMD-kit `deepmd/dpmodel/utils/serialization.py`).
//! Byte blobs are 1-d opaque datasets (`|V1`), as h5py writes `np.void`.
//!
//! HDF5 is read and written by `hdf5-pure` (no system library). It may panic on some corrupt
//! inputs, so every call into it runs under `catch_unwind` and a panic becomes an error.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use hdf5_pure::{AttrValue, Datatype, DatatypeByteOrder, FileBuilder, LibVer};

use crate::tree::{map_variables, DType, NdArray, Value};
use crate::{json, FormatError};

/// Read a `.dp`/`.hlo` file from its bytes into a tree with every variable inlined.
pub fn read(bytes: Vec<u8>) -> Result<Value, FormatError> {
    let (json_text, datasets) = guarded(|| read_hdf5(bytes))??;
    let tree = json::parse(&json_text).map_err(|e| e.context("the root attribute `json`"))?;
    let mut used = 0usize;
    let tree = map_variables(tree, false, &mut |v| match v {
        Value::Str(path) => {
            let name = path.trim_start_matches('/');
            used += 1;
            datasets.get(name).cloned().ok_or_else(|| {
                FormatError::invalid(format!(
                    "the tree refers to dataset {path}, which the file lacks"
                ))
            })
        }
        other => Ok(other),
    })?;
    if tree.as_dict().is_none() {
        return Err(FormatError::invalid(
            "the root attribute `json` is not a JSON object",
        ));
    }
    Ok(tree)
}

/// Write a tree as a `.dp`/`.hlo` file and return its bytes.
pub fn write(tree: &Value) -> Result<Vec<u8>, FormatError> {
    if tree.as_dict().is_none() {
        return Err(FormatError::invalid(
            "a model tree must be a dict at the top",
        ));
    }
    let mut datasets: Vec<(String, Value)> = Vec::new();
    let skeleton = map_variables(tree.clone(), false, &mut |v| {
        let name = format!("variable_{:04}", datasets.len());
        let stored = match v {
            Value::Float(f) => Value::Array(NdArray::from_f64(vec![], &[f])),
            Value::Int(i) => Value::Array(NdArray::from_i64(vec![], &[i])),
            Value::Array(_) | Value::Bytes(_) => v,
            other => {
                return Err(FormatError::invalid(format!(
                    "cannot store a {} as an HDF5 variable",
                    other.kind()
                )))
            }
        };
        datasets.push((name.clone(), stored));
        Ok(Value::Str(format!("/{name}")))
    })?;
    let json_text = json::write(&skeleton)?;
    guarded(move || write_hdf5(json_text, datasets))?
}

fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, FormatError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| {
        FormatError::invalid("the HDF5 reader failed on this file (corrupt or unsupported layout)")
    })
}

fn h5err(e: impl std::fmt::Display) -> FormatError {
    FormatError::invalid(format!("HDF5: {e}"))
}

fn read_hdf5(bytes: Vec<u8>) -> Result<(String, HashMap<String, Value>), FormatError> {
    let file = hdf5_pure::File::from_bytes(bytes).map_err(h5err)?;
    let root = file.root();
    let attrs = root.attrs().map_err(h5err)?;
    let json_text = attrs
        .get("json")
        .and_then(AttrValue::as_str)
        .ok_or_else(|| {
            FormatError::invalid(
                "no string attribute `json` at the HDF5 root: not a DeePMD-kit model",
            )
        })?
        .to_owned();
    let mut datasets = HashMap::new();
    for name in root.datasets().map_err(h5err)? {
        let d = file.dataset(&name).map_err(h5err)?;
        let shape: Vec<usize> = d
            .shape()
            .map_err(h5err)?
            .into_iter()
            .map(|x| x as usize)
            .collect();
        let dt = d.datatype().map_err(h5err)?;
        let mut raw = d.read_raw().map_err(h5err)?;
        let value = match &dt {
            Datatype::Opaque { .. } => Value::Bytes(raw),
            _ => {
                let (dtype, big_endian) = dtype_of(&dt).ok_or_else(|| {
                    FormatError::invalid(format!("dataset {name}: unsupported HDF5 type {dt:?}"))
                })?;
                if big_endian {
                    raw.chunks_exact_mut(dtype.size()).for_each(|c| c.reverse());
                }
                Value::Array(NdArray::from_bytes(dtype, shape, raw).map_err(|e| e.context(&name))?)
            }
        };
        datasets.insert(name, value);
    }
    Ok((json_text, datasets))
}

fn dtype_of(dt: &Datatype) -> Option<(DType, bool)> {
    Some(match dt {
        Datatype::FloatingPoint {
            size, byte_order, ..
        } => {
            let t = match size {
                2 => DType::F16,
                4 => DType::F32,
                8 => DType::F64,
                _ => return None,
            };
            (t, *byte_order == DatatypeByteOrder::BigEndian)
        }
        Datatype::FixedPoint {
            size,
            byte_order,
            layout,
        } => {
            let t = match (size, layout.signed) {
                (1, true) => DType::I8,
                (2, true) => DType::I16,
                (4, true) => DType::I32,
                (8, true) => DType::I64,
                (1, false) => DType::U8,
                (2, false) => DType::U16,
                (4, false) => DType::U32,
                (8, false) => DType::U64,
                _ => return None,
            };
            (t, *byte_order == DatatypeByteOrder::BigEndian)
        }
        _ => return None,
    })
}

fn hdf5_type(dtype: DType) -> Result<Datatype, FormatError> {
    use hdf5_pure as h;
    Ok(match dtype {
        DType::F64 => h::make_f64_type(),
        DType::F32 => h::make_f32_type(),
        DType::I8 => h::make_i8_type(),
        DType::I16 => h::make_i16_type(),
        DType::I32 => h::make_i32_type(),
        DType::I64 => h::make_i64_type(),
        DType::U8 => h::make_u8_type(),
        DType::U16 => h::make_u16_type(),
        DType::U32 => h::make_u32_type(),
        DType::U64 => h::make_u64_type(),
        DType::F16 | DType::Bool => {
            return Err(FormatError::unsupported(format!(
                "writing {} arrays to HDF5",
                dtype.name()
            )))
        }
    })
}

fn write_hdf5(json_text: String, datasets: Vec<(String, Value)>) -> Result<Vec<u8>, FormatError> {
    let mut b = FileBuilder::new();
    // HDF5 1.8 layout: readable by every h5py/HDF5 a DeePMD-kit user may have.
    b.with_libver_bounds(LibVer::Earliest, LibVer::V18);
    // A variable-length string keeps the (large) JSON in the global heap, as h5py does.
    b.set_attr("json", AttrValue::VarLenString(json_text));
    for (name, v) in datasets {
        let ds = b.create_dataset(&name);
        match v {
            Value::Array(a) => {
                let n = a.len() as u64;
                let shape: Vec<u64> = a.shape.iter().map(|&x| x as u64).collect();
                ds.with_raw_data(hdf5_type(a.dtype)?, a.bytes, n)
                    .with_shape(&shape);
            }
            Value::Bytes(bytes) => {
                let n = bytes.len() as u64;
                ds.with_raw_data(
                    Datatype::Opaque {
                        size: 1,
                        tag: vec![],
                    },
                    bytes,
                    n,
                )
                .with_shape(&[n]);
            }
            _ => unreachable!("only arrays and blobs are collected"),
        }
    }
    b.finish().map_err(h5err)
}
