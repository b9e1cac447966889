//! Where a model comes from: a file, or one of the models built into the binary.

use std::path::Path;

use anyhow::Result;
use dpc_formats::{Format, Value};

/// DeePMD-kit's own test model (water, se_e2_a), so `dpc` works with no files at hand.
const WATER_YAML: &str = include_str!("../assets/water_se_e2_a.yaml");

/// Two water molecules in a 13 Å box (DeePMD-kit's `deeppot-testcase.yaml`, block 1).
pub const WATER_SAMPLE: &str = r#"{"coord": [12.83, 2.56, 2.18, 12.09, 2.87, 2.74, 0.25, 3.32, 1.68,
  3.36, 3.00, 1.81, 3.51, 2.51, 2.60, 4.27, 3.22, 1.56],
 "atype": [0, 1, 1, 0, 1, 1],
 "box": [13.0, 0.0, 0.0, 0.0, 13.0, 0.0, 0.0, 0.0, 13.0]}"#;

pub const BUILTIN_PREFIX: &str = "builtin:";

/// The built-in models: name, description.
pub const BUILTINS: [(&str, &str); 1] = [(
    "water",
    "DeePMD-kit's test water model (se_e2_a, O/H, rcut 6 Å)",
)];

/// Read a model's serialization tree from a path or `builtin:NAME`.
pub fn read_tree(spec: &str) -> Result<(Value, String)> {
    if let Some(name) = spec.strip_prefix(BUILTIN_PREFIX) {
        return match name {
            "water" => Ok((dpc_formats::yaml::read(WATER_YAML)?, "builtin yaml".into())),
            other => anyhow::bail!(
                "no built-in model `{other}` (available: {})",
                BUILTINS
                    .map(|(n, _)| format!("{BUILTIN_PREFIX}{n}"))
                    .join(", ")
            ),
        };
    }
    let path = Path::new(spec);
    let format = Format::from_path(path)?;
    let tree = dpc_formats::read_model(path)?;
    Ok((tree, format.name().to_string()))
}

/// A sample configuration for a built-in model (`None` for files).
pub fn sample_input(spec: &str) -> Option<&'static str> {
    (spec == "builtin:water").then_some(WATER_SAMPLE)
}
