//! The `--compress` flags shared by `dpc eval`, `test`, `bench` and `compile`.

use anyhow::Result;
use dpc_compiler::build::{BuildOptions, Compress};
use dpc_formats::Value;
use dpc_runtime::DeepPot;

#[derive(clap::Args, Debug, Clone)]
pub struct CompressArgs {
    /// Tabulate the embedding networks as piecewise quintics (DeePMD-kit's `dp compress`);
    /// inputs off the table still go through the network.
    #[arg(long)]
    pub compress: bool,
    /// Knot spacing of the table on the range seen in training (`dp compress -s`); 10x
    /// beyond it.
    #[arg(
        long,
        default_value_t = 0.01,
        value_name = "STRIDE",
        requires = "compress"
    )]
    pub compress_stride: f64,
    /// The table reaches this multiple of the training range (`dp compress -e`).
    #[arg(
        long,
        default_value_t = 5.0,
        value_name = "FACTOR",
        requires = "compress"
    )]
    pub compress_extrapolate: f64,
    /// The closest neighbour distance to tabulate down to (default: the model's
    /// min_nbor_dist).
    #[arg(long, value_name = "Å", requires = "compress")]
    pub min_nbor_dist: Option<f64>,
}

impl CompressArgs {
    pub fn options(&self) -> BuildOptions {
        BuildOptions {
            compress: self.compress.then_some(Compress {
                stride0: self.compress_stride,
                stride1: 10.0 * self.compress_stride,
                extrapolate: self.compress_extrapolate,
                min_nbor_dist: self.min_nbor_dist,
            }),
            ..BuildOptions::default()
        }
    }

    /// The model ready to evaluate, compressed if asked.
    pub fn load(&self, tree: Value) -> Result<DeepPot> {
        Ok(DeepPot::from_tree_opts(tree, self.options())?)
    }
}
