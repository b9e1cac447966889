//! dpc's runtime: neighbor lists, the CPU executor, and `DeepPot`, which evaluates a model
//! on atomic configurations with DeePMD-kit's semantics.

pub mod cpu;
mod deep_pot;
mod env_options;
mod fast_map;
pub mod nlist;
#[cfg(feature = "pjrt")]
pub mod pjrt;
pub mod threads;

pub use deep_pot::{DeepPot, EvalError, ExtendedOutput, Frame, Output};
pub use env_options::{attach_pjrt, build_options_from_env, device_from_env};
