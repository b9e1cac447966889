//! torch.export archives (`.pte`, `.pt2`) written by DeePMD-kit's `pt_expt` backend: the
//! whole serialization tree is stored as JSON in `extra/model.json` (arrays in the YAML
//! `np.ndarray` encoding), so reading it is lossless and needs no PyTorch
//! (`deepmd/pt_expt/utils/serialization.py`).

use crate::archive::Archive;
use crate::tree::{inline_ndarrays, Value};
use crate::FormatError;

pub fn read(bytes: Vec<u8>) -> Result<Value, FormatError> {
    let mut zip = Archive::open(bytes)?;
    let name = zip.find("extra/model.json").ok_or_else(|| {
        FormatError::unsupported(
            "this torch.export archive has no extra/model.json (not written by DeePMD-kit's pt_expt backend), so its model cannot be recovered",
        )
    })?;
    from_model_json(zip.read(&name)?)
}

/// The tree in an `extra/model.json` (also what dpc puts in the `.pth` files it writes).
pub fn from_model_json(bytes: Vec<u8>) -> Result<Value, FormatError> {
    let text = String::from_utf8(bytes)
        .map_err(|_| FormatError::invalid("extra/model.json is not UTF-8"))?;
    let tree = inline_ndarrays(crate::json::parse(&text)?)?;
    if tree.get("model").is_none() {
        return Err(FormatError::invalid("extra/model.json holds no `model`"));
    }
    Ok(tree)
}
