//! dpc's compiler: the typed `Model` read from DeePMD-kit's serialization tree, the tensor
//! graph IR with autodiff, and the builder that turns a Model into a Graph computing energy,
//! forces and virials. No IO and no devices here.

pub mod build;
pub mod graph;
pub mod lower;
pub mod model;
