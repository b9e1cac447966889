//! Lowerings of the IR to other targets' program formats.

pub mod hlo_file;
pub mod model_def_script;
pub mod stablehlo;
pub mod tf_graph;
pub mod torch_export;
pub mod torchscript;
