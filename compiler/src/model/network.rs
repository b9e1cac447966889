//! Dense layers, networks, layer norm and activations (`deepmd/dpmodel/utils/network.py`).

use super::access::{precision, to_tensor, At};
use super::ModelError;
use crate::graph::{DType, Tensor};

/// Activation functions, parsed case-insensitively as DeePMD-kit does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Tanh,
    Relu,
    Relu6,
    Softplus,
    Sigmoid,
    Silu,
    /// The tanh approximation of GELU (`gelu`, `gelu_tf`).
    Gelu,
    /// `silut[:thr]` / `custom_silu[:thr]`: silu below `thr`, a tanh tail above it.
    Silut(f64),
    Linear,
}

impl Activation {
    pub fn parse(name: &str, at: &At) -> Result<Activation, ModelError> {
        let n = name.to_ascii_lowercase();
        Ok(match n.as_str() {
            "tanh" => Activation::Tanh,
            "relu" => Activation::Relu,
            "relu6" => Activation::Relu6,
            "softplus" => Activation::Softplus,
            "sigmoid" => Activation::Sigmoid,
            "silu" => Activation::Silu,
            "gelu" | "gelu_tf" => Activation::Gelu,
            "none" | "linear" => Activation::Linear,
            s if s.starts_with("silut") || s.starts_with("custom_silu") => {
                let thr = match s.split_once(':') {
                    Some((_, t)) => t
                        .parse::<f64>()
                        .map_err(|_| at.err(format!("bad threshold in `{name}`")))?,
                    None => 3.0,
                };
                Activation::Silut(thr)
            }
            _ => return Err(at.unsupported(format!("activation function `{name}`"))),
        })
    }
}

/// `y = act(x W + b) * idt (+ x or [x, x] when resnet)`.
#[derive(Debug, Clone)]
pub struct Layer {
    /// `[in, out]`.
    pub w: Tensor,
    pub b: Option<Tensor>,
    pub idt: Option<Tensor>,
    pub activation: Activation,
    pub resnet: bool,
    pub dtype: DType,
}

impl Layer {
    pub fn n_in(&self) -> usize {
        self.w.shape[0]
    }

    pub fn n_out(&self) -> usize {
        self.w.shape[1]
    }

    /// Parse a serialized `Layer` (versions 1..2).
    pub fn parse(at: At) -> Result<Layer, ModelError> {
        at.version(1, 1, 2)?;
        let w = at.var("w")?;
        if w.shape.len() != 2 {
            return Err(at.err(format!(
                "weight matrix w has shape {:?}, expected 2-d",
                w.shape
            )));
        }
        let dtype = match at.opt_str("precision")? {
            Some(p) => precision(p, &at)?,
            None => {
                if w.dtype == dpc_formats::DType::F32 {
                    DType::F32
                } else {
                    DType::F64
                }
            }
        };
        let (n_in, n_out) = (w.shape[0], w.shape[1]);
        let vec_var = |name: &str| -> Result<Option<Tensor>, ModelError> {
            let Some(a) = at.opt_var(name)? else {
                return Ok(None);
            };
            if a.len() != n_out {
                return Err(at.err(format!(
                    "{name} has {} values, the layer has {n_out} outputs",
                    a.len()
                )));
            }
            let mut t = to_tensor(a, &at)?;
            t.shape = vec![n_out]; // DeePMD-kit ravels b and idt (TF stores idt as [1, n])
            Ok(Some(t))
        };
        let b = vec_var("b")?;
        let idt = vec_var("idt")?;
        let act_name = at.opt_str("activation_function")?.unwrap_or("none");
        let w = to_tensor(w, &at)?;
        let layer = Layer {
            w,
            b,
            idt,
            activation: Activation::parse(act_name, &at)?,
            resnet: at.bool_or("resnet", false)?,
            dtype,
        };
        for t in [Some(&layer.w), layer.b.as_ref(), layer.idt.as_ref()]
            .into_iter()
            .flatten()
        {
            if t.dtype() != dtype {
                return Err(at.err(format!(
                    "weights are {:?} but the layer precision is {dtype:?}",
                    t.dtype()
                )));
            }
        }
        let _ = n_in;
        Ok(layer)
    }
}

/// A stack of layers applied in order (`EmbeddingNetwork`, `FittingNetwork`, `NN`).
#[derive(Debug, Clone)]
pub struct Net {
    pub layers: Vec<Layer>,
}

impl Net {
    pub fn parse(at: At) -> Result<Net, ModelError> {
        let class = at.opt_str("@class")?.unwrap_or("");
        match class {
            "EmbeddingNetwork" => at.version(1, 1, 2)?,
            "FittingNetwork" | "NN" => at.version(1, 1, 1)?,
            other => return Err(at.unsupported(format!("network class `{other}`"))),
        };
        let layers = at
            .list("layers")?
            .iter()
            .map(|l| Layer::parse(l.at()))
            .collect::<Result<Vec<_>, _>>()?;
        for pair in layers.windows(2) {
            if pair[0].n_out() != pair[1].n_in() {
                return Err(at.err(format!(
                    "layer widths do not chain ({} then {})",
                    pair[0].n_out(),
                    pair[1].n_in()
                )));
            }
        }
        Ok(Net { layers })
    }

    pub fn n_in(&self) -> Option<usize> {
        self.layers.first().map(Layer::n_in)
    }

    pub fn n_out(&self) -> Option<usize> {
        self.layers.last().map(Layer::n_out)
    }
}

/// A `NetworkCollection`: `ntypes^ndim` networks (some may be absent), flat index
/// `sum(key[i] * ntypes^i)`.
#[derive(Debug, Clone)]
pub struct NetCollection {
    pub ndim: usize,
    pub ntypes: usize,
    pub nets: Vec<Option<Net>>,
}

impl NetCollection {
    pub fn parse(at: At) -> Result<NetCollection, ModelError> {
        at.version(1, 1, 1)?;
        let ndim = at.usize("ndim")?;
        let ntypes = at.usize("ntypes")?;
        if ndim > 2 {
            return Err(at.unsupported(format!("NetworkCollection with ndim {ndim}")));
        }
        let list = at.list("networks")?;
        let want = ntypes.pow(ndim as u32);
        if list.len() != want {
            return Err(at.err(format!(
                "{} networks, expected ntypes^ndim = {want}",
                list.len()
            )));
        }
        let nets = list
            .iter()
            .map(|c| {
                if c.v.is_null() {
                    Ok(None)
                } else {
                    Net::parse(c.at()).map(Some)
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(NetCollection { ndim, ntypes, nets })
    }

    /// The network for a type key (`()`, `(t,)` or `(t0, t1)`).
    pub fn get(&self, key: &[usize]) -> Option<&Net> {
        let idx: usize = key
            .iter()
            .enumerate()
            .map(|(i, &t)| t * self.ntypes.pow(i as u32))
            .sum();
        self.nets.get(idx).and_then(|n| n.as_ref())
    }
}

/// `y = (x - mean) / sqrt(var + eps) * w + b` over the last axis.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub w: Tensor,
    pub b: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn parse(at: At) -> Result<LayerNorm, ModelError> {
        at.version(1, 1, 1)?;
        let w = to_tensor(at.var("w")?, &at)?;
        let b = to_tensor(at.var("b")?, &at)?;
        if w.shape.len() != 1 || w.shape != b.shape {
            return Err(at.err("layer norm w and b must be vectors of one length"));
        }
        Ok(LayerNorm {
            w,
            b,
            eps: at.opt_f64("eps")?.unwrap_or(1e-5),
        })
    }
}
