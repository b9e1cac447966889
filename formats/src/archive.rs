//! Zip archives (TorchScript `.pth`, torch.export `.pte`/`.pt2`): list and read entries with
//! size limits, so a hostile archive cannot exhaust memory; and write them as torch does.

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

/// An archive holding `files` (paths relative to the folder `root` every entry sits in),
/// as torch writes them: stored uncompressed, each entry aligned to 64 bytes (its loaders
/// copy records, so alignment is for mmap-friendly readers only).
pub fn write<B: AsRef<[u8]>>(root: &str, files: &[(String, B)]) -> Result<Vec<u8>, FormatError> {
    use std::io::Write;
    use zip::write::SimpleFileOptions;
    use zip::{CompressionMethod, ZipWriter};

    let e = |e: zip::result::ZipError| FormatError::Io(format!("zip: {e}"));
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .large_file(true)
        .with_alignment(64);
    for (path, bytes) in files {
        zip.start_file(format!("{root}/{path}"), opts).map_err(e)?;
        zip.write_all(bytes.as_ref())
            .map_err(|e| FormatError::Io(format!("zip: {e}")))?;
    }
    Ok(zip.finish().map_err(e)?.into_inner())
}
