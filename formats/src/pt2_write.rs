//! PT2 archives (`torch.export.save`'s zip, DeePMD-kit's `.pte`): entries stored
//! uncompressed under one root folder, each aligned to 64 bytes as torch writes them (its
//! loader copies records, so alignment is for mmap-friendly readers only).

use std::io::{Cursor, Write};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use crate::FormatError;

/// The archive holding `files` (paths relative to the root folder `root`).
pub fn archive(root: &str, files: &[(String, Vec<u8>)]) -> Result<Vec<u8>, FormatError> {
    let e = |e: zip::result::ZipError| FormatError::Io(format!("zip: {e}"));
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .large_file(true)
        .with_alignment(64);
    for (path, bytes) in files {
        zip.start_file(format!("{root}/{path}"), opts).map_err(e)?;
        zip.write_all(bytes)
            .map_err(|e| FormatError::Io(format!("zip: {e}")))?;
    }
    Ok(zip.finish().map_err(e)?.into_inner())
}
