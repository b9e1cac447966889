//! NumPy `.npy` files (format versions 1-3), as `deepmd/npy` training systems store
//! `coord.npy`, `box.npy`, `energy.npy`, ...: header dict, then the raw array.

use crate::tree::{DType, NdArray};
use crate::FormatError;

/// Parse an `.npy` file's bytes.
pub fn read(bytes: &[u8]) -> Result<NdArray, FormatError> {
    let bad = |m: &str| FormatError::invalid(format!(".npy: {m}"));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a NumPy .npy file (bad magic)"));
    }
    let major = bytes[6];
    let (hlen, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad("truncated header"));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(bad(&format!("unsupported format version {v}"))),
    };
    let header = bytes
        .get(start..start + hlen)
        .ok_or_else(|| bad("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text"))?;
    let descr = dict_value(header, "descr").ok_or_else(|| bad("header lacks 'descr'"))?;
    let fortran =
        dict_value(header, "fortran_order").ok_or_else(|| bad("header lacks 'fortran_order'"))?;
    let shape_text = dict_value(header, "shape").ok_or_else(|| bad("header lacks 'shape'"))?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let (big_endian, code) = match descr.as_bytes().first() {
        Some(b'<') | Some(b'|') | Some(b'=') => (false, &descr[1..]),
        Some(b'>') => (true, &descr[1..]),
        _ => (false, descr),
    };
    let dtype = match code {
        "f8" => DType::F64,
        "f4" => DType::F32,
        "f2" => DType::F16,
        "i8" => DType::I64,
        "i4" => DType::I32,
        "i2" => DType::I16,
        "i1" => DType::I8,
        "u8" => DType::U64,
        "u4" => DType::U32,
        "u2" => DType::U16,
        "u1" => DType::U8,
        "b1" => DType::Bool,
        other => return Err(FormatError::unsupported(format!(".npy dtype '{other}'"))),
    };
    let shape: Vec<usize> = shape_text
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| bad("bad shape")))
        .collect::<Result<_, _>>()?;
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad("shape too large"))?;
    let nbytes = n
        .checked_mul(dtype.size())
        .ok_or_else(|| bad("shape too large"))?;
    let data = bytes
        .get(start + hlen..start + hlen + nbytes)
        .ok_or_else(|| bad("truncated data"))?;
    let mut data = data.to_vec();
    if big_endian {
        data.chunks_exact_mut(dtype.size())
            .for_each(|c| c.reverse());
    }
    if fortran.trim() == "True" && shape.len() > 1 {
        data = fortran_to_c(&data, &shape, dtype.size());
    }
    NdArray::from_bytes(dtype, shape, data)
}

/// The text of `'key': value` in a Python dict literal (value up to the next top-level comma).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let k1 = format!("'{key}'");
    let pos = header.find(&k1)? + k1.len();
    let rest = header[pos..].trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    Some(rest.trim())
}

fn fortran_to_c(data: &[u8], shape: &[usize], size: usize) -> Vec<u8> {
    let n: usize = shape.iter().product();
    let mut out = vec![0u8; data.len()];
    let rank = shape.len();
    let mut idx = vec![0usize; rank];
    for c_off in 0..n {
        // Column-major offset of this row-major multi-index.
        let mut f_off = 0;
        let mut stride = 1;
        for ax in 0..rank {
            f_off += idx[ax] * stride;
            stride *= shape[ax];
        }
        out[c_off * size..(c_off + 1) * size]
            .copy_from_slice(&data[f_off * size..(f_off + 1) * size]);
        for ax in (0..rank).rev() {
            idx[ax] += 1;
            if idx[ax] < shape[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, fortran: bool, data: &[u8]) -> Vec<u8> {
        let mut h = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
            if fortran { "True" } else { "False" }
        );
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((h.len() as u16).to_le_bytes());
        out.extend(h.as_bytes());
        out.extend(data);
        out
    }

    #[test]
    fn reads_c_and_fortran_order() {
        let vals: Vec<u8> = [1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let a = read(&npy("<f8", "(2, 3)", false, &vals)).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.to_f64_vec(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let f = read(&npy("<f8", "(2, 3)", true, &vals)).unwrap();
        assert_eq!(f.to_f64_vec(), vec![1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
        let s = read(&npy("<f8", "(3,)", false, &vals[..24])).unwrap();
        assert_eq!(s.shape, vec![3]);
    }

    #[test]
    fn truncated_and_foreign_files_are_errors() {
        let vals: Vec<u8> = [1.0f64, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert!(read(&npy("<f8", "(3,)", false, &vals)).is_err());
        assert!(read(b"not numpy at all").is_err());
        assert!(read(&npy("<c16", "(1,)", false, &[0; 16])).is_err());
    }
}
