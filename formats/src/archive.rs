//! Zip archives (TorchScript `.pth`, torch.export `.pte`/`.pt2`): list and read entries with
//! size limits, so a hostile archive cannot exhaust memory.

use std::io::{Cursor, Read};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::FormatError;

/// Entries larger than this (uncompressed) are refused.
pub const MAX_ENTRY: u64 = 8 << 30;

pub struct Archive {
    zip: zip::ZipArchive<Cursor<Vec<u8>>>,
    names: Vec<String>,
}

fn zerr(e: impl std::fmt::Display) -> FormatError {
    FormatError::invalid(format!("zip: {e}"))
}

impl Archive {
    pub fn open(bytes: Vec<u8>) -> Result<Archive, FormatError> {
        let zip = catch_unwind(AssertUnwindSafe(|| {
            zip::ZipArchive::new(Cursor::new(bytes))
        }))
        .map_err(|_| FormatError::invalid("zip: the archive reader failed on this file"))?
        .map_err(zerr)?;
        let names = zip
            .file_names()
            .map(|n| n.map(|c| c.to_string()))
            .collect::<Result<_, _>>()
            .map_err(zerr)?;
        Ok(Archive { zip, names })
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The entry whose name ends with `/suffix` (archives put everything under one
    /// top-level folder whose name varies).
    pub fn find(&self, suffix: &str) -> Option<String> {
        let tail = format!("/{suffix}");
        self.names
            .iter()
            .find(|n| n.ends_with(&tail) || n.as_str() == suffix)
            .cloned()
    }

    /// Read an entry whole.
    pub fn read(&mut self, name: &str) -> Result<Vec<u8>, FormatError> {
        let result = catch_unwind(AssertUnwindSafe(|| -> Result<Vec<u8>, FormatError> {
            let mut f = self
                .zip
                .by_name(name)
                .map_err(|e| zerr(format!("{name}: {e}")))?;
            let size = f.size();
            if size > MAX_ENTRY {
                return Err(FormatError::invalid(format!(
                    "zip entry {name} is {size} bytes, over the limit"
                )));
            }
            let mut out = Vec::with_capacity(size as usize);
            f.by_ref()
                .take(MAX_ENTRY + 1)
                .read_to_end(&mut out)
                .map_err(|e| zerr(format!("{name}: {e}")))?;
            if out.len() as u64 != size {
                return Err(FormatError::invalid(format!(
                    "zip entry {name} is truncated or its size is wrong"
                )));
            }
            Ok(out)
        }));
        result.map_err(|_| FormatError::invalid(format!("zip: reading {name} failed")))?
    }
}
