//! Build options from the environment, for hosts that load models through a fixed API (the
//! C library inside LAMMPS and other MD codes): `DPC_COMPRESS=1` tabulates the embedding
//! networks (`DPC_MIN_NBOR_DIST` overrides the model's closest neighbour distance), and
//! `DPC_PRECISION=float32` evaluates the networks in float32.

use dpc_compiler::build::{BuildOptions, Compress};
use dpc_compiler::graph::DType;

/// The options `DPC_COMPRESS`, `DPC_MIN_NBOR_DIST` and `DPC_PRECISION` ask for.
pub fn build_options_from_env() -> Result<BuildOptions, String> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let compress = match var("DPC_COMPRESS").as_deref().map(str::trim) {
        None | Some("0" | "false" | "no") => None,
        Some("1" | "true" | "yes") => {
            let min_nbor_dist = match var("DPC_MIN_NBOR_DIST") {
                None => None,
                Some(v) => Some(
                    v.trim()
                        .parse::<f64>()
                        .map_err(|_| format!("DPC_MIN_NBOR_DIST={v} is not a number"))?,
                ),
            };
            Some(Compress {
                min_nbor_dist,
                ..Compress::default()
            })
        }
        Some(other) => return Err(format!("DPC_COMPRESS={other}: use 1 or 0")),
    };
    let precision = match var("DPC_PRECISION").as_deref().map(str::trim) {
        None | Some("float64" | "double") => None,
        Some("float32" | "single") => Some(DType::F32),
        Some(other) => return Err(format!("DPC_PRECISION={other}: use float32 or float64")),
    };
    Ok(BuildOptions {
        compress,
        precision,
        ..BuildOptions::default()
    })
}

/// `pot` moved onto a PJRT plugin when `DPC_PJRT_PLUGIN` names one (`DPC_DEVICE`: cpu, the
/// default, or cuda).
pub fn device_from_env(pot: crate::DeepPot) -> Result<crate::DeepPot, String> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let device = var("DPC_DEVICE").unwrap_or_else(|| "cpu".into());
    let Some(plugin) = var("DPC_PJRT_PLUGIN") else {
        if device.trim() != "cpu" {
            return Err(format!(
                "DPC_DEVICE={device} needs DPC_PJRT_PLUGIN (a PJRT plugin for that device)"
            ));
        }
        return Ok(pot);
    };
    attach_pjrt(pot, std::path::Path::new(plugin.trim()), device.trim())
}

/// `pot` moved onto the PJRT `plugin` for `device` (`cpu` or `cuda`); the one place the
/// `pjrt` feature decides, for the C library's environment and the command line alike.
#[cfg(feature = "pjrt")]
pub fn attach_pjrt(
    mut pot: crate::DeepPot,
    plugin: &std::path::Path,
    device: &str,
) -> Result<crate::DeepPot, String> {
    let device = crate::pjrt::Device::parse(device)?;
    pot.use_pjrt(plugin, device).map_err(|e| e.to_string())?;
    Ok(pot)
}

#[cfg(not(feature = "pjrt"))]
pub fn attach_pjrt(
    _pot: crate::DeepPot,
    _plugin: &std::path::Path,
    _device: &str,
) -> Result<crate::DeepPot, String> {
    Err("a PJRT plugin was given, but this build of dpc/libdeepmd_c has no PJRT support: rebuild with `cargo build --release --features pjrt`".into())
}
