//! The typed, validated Model: what `compiler::build` turns into a graph.
//!
//! Parsing follows DeePMD-kit 3.2's `deserialize` methods: the same keys, the same defaults,
//! the same `@version` ranges. Anything dpc does not evaluate (spin, DPA-2/3, hybrid, tensor
//! fittings, ...) is an `Unsupported` error naming it.

mod access;
pub mod descriptor;
pub mod dpa2;
pub mod dpa3;
pub mod fitting;
pub mod network;
pub mod precision;
pub mod se_t_tebd;

use std::fmt;

use dpc_formats::Value;

pub use access::At;
pub use descriptor::{
    AttentionLayer, Descriptor, Dpa1, EnvParams, SeA, SeR, SeT, Stats, TebdInput, TypeEmbedding,
};
pub use fitting::{EnergyFitting, ParamNorm};
pub use network::{Activation, Layer, LayerNorm, Net, NetCollection};

/// `tf.nn.l2_normalize`'s floor on the squared norm (PyTorch's `F.normalize` floors the norm
/// at 1e-12, i.e. 1e-24 squared).
pub const TF_L2_FLOOR_SQ: f64 = 1e-12;

/// Why a serialization tree is not a model dpc can evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelError {
    /// The tree is inconsistent or malformed.
    Invalid(String),
    /// A well-formed model using something dpc does not evaluate.
    Unsupported(String),
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::Invalid(m) => write!(f, "invalid model: {m}"),
            ModelError::Unsupported(m) => write!(f, "unsupported model: {m}"),
        }
    }
}

impl std::error::Error for ModelError {}

/// A standard DeePMD-kit energy model: descriptor, energy fitting and the atomic-model
/// statistics and exclusions around them.
#[derive(Debug, Clone)]
pub struct Model {
    pub type_map: Vec<String>,
    pub descriptor: Descriptor,
    pub fitting: EnergyFitting,
    /// `out_bias[0, t, 0]`: added to each atom's energy by type.
    pub out_bias: Vec<f64>,
    /// `out_std[0, t, 0]`: stored by every backend, but only TensorFlow applies it.
    pub out_std: Vec<f64>,
    /// Evaluate with TensorFlow's numerics (the model came from a `.pb`, whose truth is what
    /// DeePMD-kit's TensorFlow runtime computes): atom energies scaled by `out_std` before
    /// `out_bias` is added, and `tf.nn.l2_normalize`'s floor in DPA-1 attention.
    pub tf_semantics: bool,
    pub atom_exclude_types: Vec<usize>,
    pub pair_exclude_types: Vec<(usize, usize)>,
    /// `@variables.min_nbor_dist` of the file, when recorded.
    pub min_nbor_dist: Option<f64>,
}

impl Model {
    /// Build from a whole file's tree (`{"model": ..., ...}`) or from the model dict itself.
    pub fn from_tree(tree: &Value) -> Result<Model, ModelError> {
        let root = At::root(tree, "");
        if root.v.as_dict().is_none() {
            return Err(ModelError::Invalid(
                "the model file does not hold a dict".into(),
            ));
        }
        let min_nbor_dist = tree
            .get("@variables")
            .and_then(|v| v.get("min_nbor_dist"))
            .and_then(Value::as_f64);
        let tf_semantics = match tree.get("@dpc_runtime") {
            None => false,
            Some(Value::Str(s)) if s == "tensorflow" => true,
            Some(other) => return Err(ModelError::Unsupported(format!("@dpc_runtime {other:?}"))),
        };
        match tree.get("model") {
            Some(m) => {
                if m.get("model_dict").is_some() {
                    return Err(ModelError::Unsupported(
                        "multi-task models (model_dict); extract one branch with `dp --pt change-bias`/`freeze --head` first".into(),
                    ));
                }
                Self::parse(At::root(m, "model"), min_nbor_dist, tf_semantics)
            }
            None => Self::parse(At::root(tree, "model"), min_nbor_dist, tf_semantics),
        }
    }

    fn parse(at: At, min_nbor_dist: Option<f64>, tf_semantics: bool) -> Result<Model, ModelError> {
        let kind = at.opt_str("type")?.unwrap_or("standard");
        if kind != "standard" {
            return Err(at.unsupported(format!(
                "model type `{kind}` (dpc evaluates standard models; zbl/linear/pairtab/spin/frozen are not supported)"
            )));
        }
        if at.opt_str("@class")?.is_some_and(|c| c != "Model") {
            return Err(at.err("expected @class Model"));
        }
        at.version(1, 2, 2)?;
        let type_map: Vec<String> = at
            .list("type_map")?
            .iter()
            .map(|c| {
                c.v.as_str()
                    .map(String::from)
                    .ok_or_else(|| c.at().err("expected a type name"))
            })
            .collect::<Result<_, _>>()?;
        let ntypes = type_map.len();
        if ntypes == 0 {
            return Err(at.err("empty type_map"));
        }
        let descriptor = Descriptor::parse(at.get("descriptor")?.at(), ntypes)?;
        let fitting = EnergyFitting::parse(at.get("fitting")?.at(), ntypes, descriptor.dim_out())?;
        let stat = |name: &str, default: f64| -> Result<Vec<f64>, ModelError> {
            match at.opt_var(name)? {
                None => Ok(vec![default; ntypes]),
                Some(a) if a.shape == [1, ntypes, 1] => Ok(a.to_f64_vec()),
                Some(a) => Err(at.err(format!(
                    "{name} has shape {:?}, expected [1, {ntypes}, 1]",
                    a.shape
                ))),
            }
        };
        let out_bias = stat("out_bias", 0.0)?;
        let out_std = stat("out_std", 1.0)?;
        let mut descriptor = descriptor;
        if let (true, Descriptor::Dpa1(d)) = (tf_semantics, &mut descriptor) {
            d.norm_floor_sq = TF_L2_FLOOR_SQ;
        }
        Ok(Model {
            atom_exclude_types: at.types("atom_exclude_types", ntypes)?,
            pair_exclude_types: at.pairs("pair_exclude_types", ntypes)?,
            type_map,
            descriptor,
            fitting,
            out_bias,
            out_std,
            tf_semantics,
            min_nbor_dist,
        })
    }

    pub fn ntypes(&self) -> usize {
        self.type_map.len()
    }

    pub fn rcut(&self) -> f64 {
        self.descriptor.rcut()
    }

    pub fn sel(&self) -> Vec<usize> {
        self.descriptor.sel()
    }

    /// For a descriptor whose neighbour slots can be narrowed to the neighbours a system
    /// has (DPA-3; see `Dpa3::with_slots`), the model on `e` edge and `a` angle slots.
    pub fn with_slots(&self, e: usize, a: usize) -> Option<Model> {
        match &self.descriptor {
            Descriptor::Dpa3(d) => Some(Model {
                descriptor: Descriptor::Dpa3(Box::new(d.with_slots(e, a))),
                ..self.clone()
            }),
            _ => None,
        }
    }

    pub fn nnei(&self) -> usize {
        self.sel().iter().sum()
    }

    pub fn mixed_types(&self) -> bool {
        self.descriptor.mixed_types()
    }

    pub fn dim_fparam(&self) -> usize {
        self.fitting.numb_fparam()
    }

    pub fn dim_aparam(&self) -> usize {
        self.fitting.numb_aparam
    }

    /// The types whose atoms contribute (DeePMD-kit's `get_sel_type`).
    pub fn sel_type(&self) -> Vec<usize> {
        (0..self.ntypes())
            .filter(|t| !self.atom_exclude_types.contains(t))
            .collect()
    }

    /// The frame parameters used when a caller passes none (for a model that takes some).
    pub fn default_fparam(&self) -> Option<&[f64]> {
        self.fitting
            .default_fparam
            .as_deref()
            .filter(|_| self.dim_fparam() > 0)
    }
}
