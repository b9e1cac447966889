//! `--pjrt-plugin` and `--device` of `dpc eval`, `test` and `bench`: run the model through a
//! PJRT plugin (the model lowered to StableHLO and compiled by the plugin) instead of dpc's
//! own CPU kernels.

use anyhow::Result;
use dpc_runtime::DeepPot;

#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    /// A PJRT plugin (`.so` exporting `GetPjrtApi`) to run the model with; also
    /// `DPC_PJRT_PLUGIN`. Without one, dpc's own CPU runtime evaluates.
    #[arg(long, value_name = "PLUGIN.so")]
    pub pjrt_plugin: Option<std::path::PathBuf>,
    /// The plugin's device: cpu or cuda.
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda")]
    pub device: String,
}

impl DeviceArgs {
    /// `pot`, moved onto the PJRT plugin when one is given.
    pub fn attach(&self, pot: DeepPot) -> Result<DeepPot> {
        let plugin = self
            .pjrt_plugin
            .clone()
            .or_else(|| std::env::var_os("DPC_PJRT_PLUGIN").map(Into::into));
        let Some(plugin) = plugin else {
            if self.device != "cpu" {
                anyhow::bail!(
                    "--device {} needs a PJRT plugin for it (--pjrt-plugin PATH or DPC_PJRT_PLUGIN); see docs/pjrt.md",
                    self.device
                );
            }
            return Ok(pot);
        };
        attach(pot, &plugin, &self.device)
    }
}

#[cfg(feature = "pjrt")]
fn attach(mut pot: DeepPot, plugin: &std::path::Path, device: &str) -> Result<DeepPot> {
    let device = dpc_runtime::pjrt::Device::parse(device).map_err(anyhow::Error::msg)?;
    pot.use_pjrt(plugin, device)?;
    Ok(pot)
}

#[cfg(not(feature = "pjrt"))]
fn attach(_pot: DeepPot, _plugin: &std::path::Path, _device: &str) -> Result<DeepPot> {
    anyhow::bail!(
        "this dpc was built without PJRT support: rebuild with `cargo build --release --features pjrt`"
    )
}
