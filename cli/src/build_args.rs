//! The flags that shape the compiled graph (`--compress`, `--precision`), shared by `dpc eval`,
//! `test`, `bench` and `compile`.

use anyhow::Result;
use dpc_compiler::build::{BuildOptions, Compress};
use dpc_compiler::graph::DType;
use dpc_formats::Value;
use dpc_runtime::DeepPot;

#[derive(clap::Args, Debug, Clone)]
pub struct BuildArgs {
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
    /// Network precision: `float64` (the model's own) or `float32` (float32 networks,
    /// energies and virials accumulated in float64).
    #[arg(long, value_name = "float32|float64")]
    pub precision: Option<String>,
}

impl BuildArgs {
    pub fn options(&self) -> Result<BuildOptions> {
        let precision = match self.precision.as_deref() {
            None => None,
            Some("float32" | "f32" | "single") => Some(DType::F32),
            Some("float64" | "f64" | "double") => Some(DType::F64),
            Some(other) => anyhow::bail!("--precision {other}: use float32 or float64"),
        };
        Ok(BuildOptions {
            precision,
            compress: self.compress.then_some(Compress {
                stride0: self.compress_stride,
                stride1: 10.0 * self.compress_stride,
                extrapolate: self.compress_extrapolate,
                min_nbor_dist: self.min_nbor_dist,
            }),
            ..BuildOptions::default()
        })
    }

    /// The model ready to evaluate, compressed if asked.
    pub fn load(&self, tree: Value) -> Result<DeepPot> {
        Ok(DeepPot::from_tree_opts(tree, self.options()?)?)
    }
}
