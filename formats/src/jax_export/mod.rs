//! What a serialized `jax.export.Exported` (the blobs inside `.hlo`/`.xlo`) says about
//! itself: function name, platforms, argument and result shapes, versions. The format is a
//! flatbuffer (schema in jax's `jax/_src/export/serialization.fbs`); this reads the few
//! fields `dpc info` shows, with every offset bounds-checked; `write` serializes one.

mod flatbuf;
mod write;

pub use write::{write, ArrayType, Exported, Tree};

use crate::FormatError;

fn bad(m: &str) -> FormatError {
    FormatError::invalid(format!("jax export: {m}"))
}

/// A flatbuffer table at `pos` in `buf`.
#[derive(Clone, Copy)]
struct Table<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn u32_at(buf: &[u8], p: usize) -> Result<usize, FormatError> {
    let b = buf
        .get(p..p + 4)
        .ok_or_else(|| bad("offset out of range"))?;
    Ok(u32::from_le_bytes(b.try_into().unwrap()) as usize)
}

fn u16_at(buf: &[u8], p: usize) -> Result<usize, FormatError> {
    let b = buf
        .get(p..p + 2)
        .ok_or_else(|| bad("offset out of range"))?;
    Ok(u16::from_le_bytes(b.try_into().unwrap()) as usize)
}

impl<'a> Table<'a> {
    fn root(buf: &'a [u8]) -> Result<Table<'a>, FormatError> {
        Ok(Table {
            buf,
            pos: u32_at(buf, 0)?,
        })
    }

    /// Position of the field at vtable offset `slot` (4, 6, 8, ...), if present.
    fn field(&self, slot: usize) -> Result<Option<usize>, FormatError> {
        let b = self
            .buf
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| bad("table out of range"))?;
        let soff = i32::from_le_bytes(b.try_into().unwrap()) as i64;
        let vt = usize::try_from(self.pos as i64 - soff).map_err(|_| bad("bad vtable"))?;
        let vt_len = u16_at(self.buf, vt)?;
        if slot >= vt_len {
            return Ok(None);
        }
        let off = u16_at(self.buf, vt + slot)?;
        Ok((off != 0).then_some(self.pos + off))
    }

    fn scalar_u16(&self, slot: usize) -> Result<Option<usize>, FormatError> {
        self.field(slot)?.map(|p| u16_at(self.buf, p)).transpose()
    }

    fn scalar_i8(&self, slot: usize) -> Result<Option<i8>, FormatError> {
        Ok(self
            .field(slot)?
            .and_then(|p| self.buf.get(p).map(|&b| b as i8)))
    }

    /// Start and length of a vector field (`elem` bytes per element).
    fn vector(&self, slot: usize, elem: usize) -> Result<Option<(usize, usize)>, FormatError> {
        let Some(p) = self.field(slot)? else {
            return Ok(None);
        };
        let v = p + u32_at(self.buf, p)?;
        let n = u32_at(self.buf, v)?;
        if n.checked_mul(elem)
            .and_then(|b| b.checked_add(v + 4))
            .is_none_or(|end| end > self.buf.len())
        {
            return Err(bad("vector out of range"));
        }
        Ok(Some((v + 4, n)))
    }

    fn string_at(buf: &[u8], p: usize) -> Result<String, FormatError> {
        let s = p + u32_at(buf, p)?;
        let n = u32_at(buf, s)?;
        let b = buf
            .get(s + 4..s + 4 + n)
            .ok_or_else(|| bad("string out of range"))?;
        Ok(String::from_utf8_lossy(b).into_owned())
    }

    fn string(&self, slot: usize) -> Result<Option<String>, FormatError> {
        self.field(slot)?
            .map(|p| Table::string_at(self.buf, p))
            .transpose()
    }

    fn strings(&self, slot: usize) -> Result<Vec<String>, FormatError> {
        let Some((start, n)) = self.vector(slot, 4)? else {
            return Ok(vec![]);
        };
        (0..n)
            .map(|i| Table::string_at(self.buf, start + 4 * i))
            .collect()
    }

    fn tables(&self, slot: usize) -> Result<Vec<Table<'a>>, FormatError> {
        let Some((start, n)) = self.vector(slot, 4)? else {
            return Ok(vec![]);
        };
        (0..n)
            .map(|i| {
                Ok(Table {
                    buf: self.buf,
                    pos: start + 4 * i + u32_at(self.buf, start + 4 * i)?,
                })
            })
            .collect()
    }

    fn u32s(&self, slot: usize) -> Result<Vec<usize>, FormatError> {
        let Some((start, n)) = self.vector(slot, 4)? else {
            return Ok(vec![]);
        };
        (0..n).map(|i| u32_at(self.buf, start + 4 * i)).collect()
    }
}

/// One argument or result: dtype and (possibly symbolic) dimensions.
#[derive(Debug, Clone, PartialEq)]
pub struct Aval {
    pub dtype: String,
    pub shape: Vec<String>,
}

impl std::fmt::Display for Aval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.dtype, self.shape.join(","))
    }
}

/// The header of a serialized export.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportInfo {
    pub serialization_version: usize,
    pub function_name: String,
    pub platforms: Vec<String>,
    pub inputs: Vec<Aval>,
    pub outputs: Vec<Aval>,
    pub calling_convention_version: usize,
    /// Size of the StableHLO module and whether it is MLIR bytecode (`ML\xefR`) or text.
    pub module_bytes: usize,
    pub module_is_bytecode: bool,
}

const DTYPES: [&str; 30] = [
    "bool",
    "i8",
    "i16",
    "i32",
    "i64",
    "u8",
    "u16",
    "u32",
    "u64",
    "f16",
    "f32",
    "f64",
    "c64",
    "c128",
    "bf16",
    "i4",
    "u4",
    "f8_e4m3b11fnuz",
    "f8_e4m3fn",
    "f8_e4m3fnuz",
    "f8_e5m2",
    "f8_e5m2fnuz",
    "f0",
    "f8_e4m3",
    "f8_e3m4",
    "f8_e8m0fnu",
    "f4_e2m1fn",
    "key_fry",
    "key_rbg",
    "key_unsafe_rbg",
];

fn aval(t: Table) -> Result<Aval, FormatError> {
    let d = t.scalar_i8(8)?.unwrap_or(0);
    Ok(Aval {
        dtype: usize::try_from(d)
            .ok()
            .and_then(|i| DTYPES.get(i))
            .map_or_else(|| format!("dtype{d}"), |s| s.to_string()),
        shape: t.strings(6)?,
    })
}

/// Read the header of a serialized `Exported`.
pub fn info(buf: &[u8]) -> Result<ExportInfo, FormatError> {
    let t = Table::root(buf)?;
    // Version 3+ stores avals once (`unique_avals`) and refers to them by index.
    let unique = t
        .tables(42)?
        .into_iter()
        .map(aval)
        .collect::<Result<Vec<_>, _>>()?;
    let avals = |direct: usize, idxs: usize| -> Result<Vec<Aval>, FormatError> {
        let d = t.tables(direct)?;
        if !d.is_empty() {
            return d.into_iter().map(aval).collect();
        }
        t.u32s(idxs)?
            .into_iter()
            .map(|i| {
                unique
                    .get(i)
                    .cloned()
                    .ok_or_else(|| bad("aval index out of range"))
            })
            .collect()
    };
    let (module_bytes, module_is_bytecode) = match t.vector(30, 1)? {
        Some((start, n)) => (n, buf[start..start + n].starts_with(b"ML\xefR")),
        None => (0, false),
    };
    Ok(ExportInfo {
        serialization_version: t.scalar_u16(4)?.unwrap_or(0),
        function_name: t.string(6)?.unwrap_or_default(),
        platforms: t.strings(22)?,
        inputs: avals(10, 48)?,
        outputs: avals(14, 50)?,
        calling_convention_version: t.scalar_u16(32)?.unwrap_or(0),
        module_bytes,
        module_is_bytecode,
    })
}
