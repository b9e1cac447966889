//! dpc's codecs: every model file format read into, and written from, DeePMD-kit's
//! serialization tree (`tree::Value`). This crate knows nothing of graphs or devices.

pub mod archive;
pub mod detect;
pub mod dp;
mod error;
pub mod jax_export;
pub mod json;
pub mod npy;
pub mod paddle;
pub mod pb;
pub mod pickle;
pub mod pte;
pub mod pth;
pub mod savedmodel;
pub mod tf;
pub mod torchscript;
pub mod torchscript_write;
pub mod tree;
pub mod yaml;

use std::path::Path;

pub use detect::Format;
pub use error::FormatError;
pub use tree::{DType, Dict, NdArray, Value};

/// Read any supported model file into its serialization tree.
pub fn read_model(path: &Path) -> Result<Value, FormatError> {
    let format = Format::from_path(path)?;
    if format == Format::SavedModel {
        // dpc's own SavedModels carry the tree; DeePMD-kit's keep only compiled weights.
        let info = savedmodel::inspect(path)?;
        return match info.attributes.get(savedmodel::DPC_MODEL_JSON_GETTER) {
            Some(Value::Str(json)) => pte::from_model_json(json.clone().into_bytes()),
            _ => Err(savedmodel::no_weights(path)),
        };
    }
    if path.is_dir() {
        return Err(FormatError::invalid(format!(
            "{} is a directory, not a model file",
            path.display()
        )));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| FormatError::Io(format!("cannot read {}: {e}", path.display())))?;
    read_model_bytes(format, bytes, path)
}

/// Read a model from bytes already in memory; `path` names it in errors.
pub fn read_model_bytes(format: Format, bytes: Vec<u8>, path: &Path) -> Result<Value, FormatError> {
    detect::check_magic(format, &bytes, path)?;
    let ctx = path.display().to_string();
    match format {
        Format::Dp | Format::Hlo => dp::read(bytes),
        Format::Pte => pte::read(bytes),
        Format::Pth => pth::read(bytes),
        Format::Pb => pb::read(&bytes, pb::is_text(path, &bytes)),
        Format::Yaml => {
            let text = String::from_utf8(bytes)
                .map_err(|_| FormatError::invalid("the YAML file is not UTF-8"))?;
            yaml::read(&text)
        }
        Format::Paddle => read_paddle(&bytes, path),
        other => Err(FormatError::unsupported(format!(
            "reading .{} models is not implemented yet (dpc reads .dp, .yaml/.yml, .hlo/.xlo, .pte/.pt2, .pth, .pb/.pbtxt and Paddle .json today)",
            other.name()
        ))),
    }
    .map_err(|e| e.context(&ctx))
}

/// A Paddle model: `path` is the program (`.json`), its tensors are the sibling
/// `.pdiparams` of the same stem. Old static-graph programs (`.pdmodel`) are not read.
fn read_paddle(json: &[u8], path: &Path) -> Result<Value, FormatError> {
    let is_pdmodel = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("pdmodel"));
    if is_pdmodel {
        return Err(FormatError::unsupported(
            "old static-graph Paddle programs (.pdmodel protobuf) are not supported; dpc reads the PIR .json program DeePMD-kit writes (`dp convert-backend model.yaml model.json`)",
        ));
    }
    let params_path = path.with_extension("pdiparams");
    let params = std::fs::read(&params_path).map_err(|e| {
        FormatError::Io(format!(
            "a Paddle model needs its parameters beside the program: cannot read {}: {e}",
            params_path.display()
        ))
    })?;
    paddle::read(json, &params)
}

/// Write a serialization tree in the format the path's extension names.
pub fn write_model(path: &Path, tree: &Value) -> Result<(), FormatError> {
    let format = Format::from_path(path)?;
    let bytes = match format {
        Format::Dp => dp::write(tree)?,
        Format::Yaml => yaml::write(tree)?.into_bytes(),
        other => {
            return Err(FormatError::unsupported(format!(
                "writing .{} models is not implemented yet (dpc writes .dp and .yaml/.yml today)",
                other.name()
            )))
        }
    };
    std::fs::write(path, bytes)
        .map_err(|e| FormatError::Io(format!("cannot write {}: {e}", path.display())))
}
