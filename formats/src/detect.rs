//! Which container a file is: by extension, as DeePMD-kit decides, confirmed by magic bytes.

use std::path::Path;

use crate::FormatError;

/// The model file formats dpc knows by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.dp`: HDF5 container of the serialization tree.
    Dp,
    /// `.yaml` / `.yml`: the serialization tree as YAML.
    Yaml,
    /// `.hlo` / `.xlo`: JAX export; the `.dp` container plus StableHLO blobs.
    Hlo,
    /// `.pth`: TorchScript zip.
    Pth,
    /// `.pb` / `.pbtxt`: TensorFlow GraphDef.
    Pb,
    /// `.pte` / `.pt2`: torch.export archive.
    Pte,
    /// `.savedmodel`: TensorFlow SavedModel directory (JAX export).
    SavedModel,
    /// `.json` (+ `.pdiparams`): Paddle inference program.
    Paddle,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Dp => "dp",
            Format::Yaml => "yaml",
            Format::Hlo => "hlo",
            Format::Pth => "pth",
            Format::Pb => "pb",
            Format::Pte => "pte",
            Format::SavedModel => "savedmodel",
            Format::Paddle => "paddle",
        }
    }

    /// The format a path names by its extension.
    pub fn from_path(path: &Path) -> Result<Format, FormatError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        Ok(match ext.as_str() {
            "dp" => Format::Dp,
            "yaml" | "yml" => Format::Yaml,
            "hlo" | "xlo" => Format::Hlo,
            "pth" => Format::Pth,
            "pb" | "pbtxt" => Format::Pb,
            "pte" | "pt2" => Format::Pte,
            "savedmodel" => Format::SavedModel,
            "json" | "pdmodel" => Format::Paddle,
            "" => {
                return Err(FormatError::invalid(format!(
                    "{}: no file extension; name the model .dp, .yaml, .pth, .pb, .hlo/.xlo, .pte/.pt2, .savedmodel or .json",
                    path.display()
                )))
            }
            other => {
                return Err(FormatError::unsupported(format!(
                    "{}: unknown model extension `.{other}` (known: .dp .yaml .yml .pth .pb .pbtxt .hlo .xlo .pte .pt2 .savedmodel .json)",
                    path.display()
                )))
            }
        })
    }
}

const HDF5_MAGIC: &[u8] = b"\x89HDF\r\n\x1a\n";

/// Check that the bytes look like the container the extension promised.
pub fn check_magic(format: Format, bytes: &[u8], path: &Path) -> Result<(), FormatError> {
    let ok = match format {
        // HDF5 allows a user block, so the signature may sit at 0, 512, 1024, ...
        Format::Dp | Format::Hlo => [0usize, 512, 1024, 2048]
            .iter()
            .any(|&off| bytes.get(off..off + HDF5_MAGIC.len()) == Some(HDF5_MAGIC)),
        Format::Pth | Format::Pte => bytes.starts_with(b"PK\x03\x04"),
        Format::Yaml => {
            std::str::from_utf8(&bytes[..bytes.len().min(4096)]).is_ok()
                || std::str::from_utf8(&bytes[..bytes.len().min(4096).saturating_sub(3)]).is_ok()
        }
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        let what = match format {
            Format::Dp | Format::Hlo => "an HDF5 file",
            Format::Pth | Format::Pte => "a zip archive",
            _ => "text",
        };
        Err(FormatError::invalid(format!(
            "{} is named .{} but is not {what} (wrong extension, or a corrupt/truncated file)",
            path.display(),
            format.name()
        )))
    }
}
