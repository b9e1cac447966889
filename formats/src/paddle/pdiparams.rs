//! `.pdiparams`: Paddle's `save_combine` output. DenseTensor records back to back, with no
//! header, names, count or padding; the records pair with the program's parameter names in
//! sorted order (see `mod.rs`).
//!
//! One record (little-endian): `u32` DenseTensor version (0), `u64` LoD level count `L`,
//! `L` × (`u64` byte size + that many bytes of offsets), `u32` Tensor version (0), `i32`
//! TensorDesc size `d`, `d` bytes of TensorDesc protobuf (`1: data_type` varint,
//! `2: dims` repeated int64), then `numel × sizeof(dtype)` bytes of data in C order.

use crate::tree::{DType, NdArray};
use crate::FormatError;

fn bad(msg: impl Into<String>) -> FormatError {
    FormatError::invalid(format!(".pdiparams: {}", msg.into()))
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], FormatError> {
        let end = self
            .i
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| {
                bad(format!(
                    "truncated: {what} needs {n} bytes at offset {}, the file has {}",
                    self.i,
                    self.b.len()
                ))
            })?;
        let s = &self.b[self.i..end];
        self.i = end;
        Ok(s)
    }

    fn u32(&mut self, what: &str) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }

    fn u64(&mut self, what: &str) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
}

/// `VarType.Type` (paddle/fluid/framework/framework.proto) to our dtype.
fn dtype(code: u64) -> Result<DType, FormatError> {
    Ok(match code {
        0 => DType::Bool,
        1 => DType::I16,
        2 => DType::I32,
        3 => DType::I64,
        4 => DType::F16,
        5 => DType::F32,
        6 => DType::F64,
        20 => DType::U8,
        21 => DType::I8,
        22 => return Err(FormatError::unsupported(".pdiparams: bfloat16 tensors")),
        23 | 24 => return Err(FormatError::unsupported(".pdiparams: complex tensors")),
        other => return Err(bad(format!("unknown tensor data type {other}"))),
    })
}

fn varint(b: &[u8], i: &mut usize) -> Result<u64, FormatError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let c = *b
            .get(*i)
            .ok_or_else(|| bad("truncated varint in a TensorDesc"))?;
        *i += 1;
        v |= ((c & 0x7f) as u64) << shift;
        if c & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(bad("varint longer than 10 bytes in a TensorDesc"))
}

fn dim(v: u64) -> Result<usize, FormatError> {
    // int64 on the wire: a negative dim is a huge u64.
    usize::try_from(v)
        .ok()
        .filter(|&d| d <= i64::MAX as usize)
        .ok_or_else(|| bad(format!("tensor dimension {} is negative", v as i64)))
}

/// `TensorDesc { required VarType.Type data_type = 1; repeated int64 dims = 2; }`.
fn tensor_desc(b: &[u8]) -> Result<(DType, Vec<usize>), FormatError> {
    let (mut code, mut dims, mut i) = (None, Vec::new(), 0);
    while i < b.len() {
        let key = varint(b, &mut i)?;
        match (key >> 3, key & 7) {
            (1, 0) => code = Some(varint(b, &mut i)?),
            (2, 0) => dims.push(dim(varint(b, &mut i)?)?),
            (2, 2) => {
                // Packed (Paddle writes proto2 unpacked, but both are valid encodings).
                let n = usize::try_from(varint(b, &mut i)?).unwrap_or(usize::MAX);
                let end = i
                    .checked_add(n)
                    .filter(|&e| e <= b.len())
                    .ok_or_else(|| bad("truncated packed dims in a TensorDesc"))?;
                while i < end {
                    dims.push(dim(varint(b, &mut i)?)?);
                }
                if i != end {
                    return Err(bad("packed dims overrun their length in a TensorDesc"));
                }
            }
            (f, w) => {
                return Err(bad(format!(
                    "unexpected field {f} (wire type {w}) in a TensorDesc"
                )))
            }
        }
    }
    let code = code.ok_or_else(|| bad("a TensorDesc without a data type"))?;
    Ok((dtype(code)?, dims))
}

/// Every tensor record of the file, in file order.
pub fn read(b: &[u8]) -> Result<Vec<NdArray>, FormatError> {
    let mut c = Cursor { b, i: 0 };
    let mut out = Vec::new();
    while c.i < b.len() {
        let k = out.len();
        let start = c.i;
        let ctx = |e: FormatError| e.context(&format!("tensor {k} (offset {start})"));
        let v = c.u32("the DenseTensor version").map_err(ctx)?;
        if v != 0 {
            return Err(ctx(bad(format!("DenseTensor version {v}, expected 0"))));
        }
        let lod_levels = c.u64("the LoD level count").map_err(ctx)?;
        for _ in 0..lod_levels {
            let n = c.u64("a LoD level size").map_err(ctx)?;
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            c.take(n, "a LoD level").map_err(ctx)?;
        }
        let v = c.u32("the Tensor version").map_err(ctx)?;
        if v != 0 {
            return Err(ctx(bad(format!("Tensor version {v}, expected 0"))));
        }
        let d = c.u32("the TensorDesc size").map_err(ctx)? as i32;
        let d =
            usize::try_from(d).map_err(|_| ctx(bad(format!("negative TensorDesc size {d}"))))?;
        let (dtype, shape) = tensor_desc(c.take(d, "the TensorDesc").map_err(ctx)?).map_err(ctx)?;
        let nbytes = shape
            .iter()
            .try_fold(dtype.size(), |n, &x| n.checked_mul(x))
            .ok_or_else(|| ctx(bad(format!("tensor shape {shape:?} overflows"))))?;
        let data = c.take(nbytes, "the tensor data").map_err(ctx)?;
        out.push(NdArray::from_bytes(dtype, shape, data.to_vec()).map_err(ctx)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(desc: &[u8], data: &[u8]) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend(0u32.to_le_bytes());
        r.extend(0u64.to_le_bytes());
        r.extend(0u32.to_le_bytes());
        r.extend((desc.len() as i32).to_le_bytes());
        r.extend(desc);
        r.extend(data);
        r
    }

    #[test]
    fn reads_records_and_refuses_damage() {
        // FP64 [2, 1] and an INT32 scalar.
        let mut f = record(&[0x08, 0x06, 0x10, 0x02, 0x10, 0x01], &[0; 16]);
        f.extend(record(&[0x08, 0x02], &7i32.to_le_bytes()));
        let t = read(&f).unwrap();
        assert_eq!((t[0].dtype, t[0].shape.clone()), (DType::F64, vec![2, 1]));
        assert_eq!((t[1].dtype, t[1].shape.clone()), (DType::I32, vec![]));
        assert_eq!(t[1].get_i64(0), Some(7));
        // Every cut but the record boundaries (0 and 42) is an error.
        for n in 0..f.len() {
            if n != 0 && n != 42 {
                assert!(read(&f[..n]).is_err(), "truncated at {n}");
            }
        }
        // Huge and negative dims are errors, not allocations.
        let huge = record(
            &[
                0x08, 0x06, 0x10, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x10, 0xff, 0xff, 0xff, 0xff, 0x0f,
            ],
            &[],
        );
        assert!(read(&huge).is_err());
        let neg = [
            0x08, 0x06, 0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        assert!(read(&record(&neg, &[])).is_err());
        assert!(read(&record(&[0x08, 0x16], &[0; 2])).is_err());
    }
}
