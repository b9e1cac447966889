//! Graph -> StableHLO (MLIR text), the program format of JAX's exports and of PJRT.
//!
//! `deepmd` writes DeePMD-kit's exported entry point around the graph; `ops` lowers the IR's
//! elementary ops; `text` writes MLIR. The text form is what `.hlo` files carry from dpc:
//! `jax.export.deserialize` and PJRT's compile both parse it (they also take MLIR bytecode,
//! which DeePMD-kit's own exporter writes).

pub mod deepmd;
mod ops;
mod text;

pub use deepmd::{export, Export, LowerOptions, Port, PortType, StaticSizes, Variant};
