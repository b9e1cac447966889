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
        dpc_runtime::attach_pjrt(pot, &plugin, &self.device).map_err(anyhow::Error::msg)
    }
}
