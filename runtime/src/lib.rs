//! dpc's runtime: neighbor lists, the CPU executor, and `DeepPot`, which evaluates a model
//! on atomic configurations with DeePMD-kit's semantics.

pub mod cpu;
mod deep_pot;
pub mod nlist;
pub mod threads;

pub use deep_pot::{DeepPot, EvalError, ExtendedOutput, Frame, Output};
