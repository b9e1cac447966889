//! DPA-3 (`deepmd/dpmodel/descriptor/dpa3.py`, `repflows.py`): a type embedding, then
//! repflow layers updating node, edge and angle embeddings by message passing.

use dpc_formats::Value;

use super::access::{to_tensor, At};
use super::descriptor::{dtype_of, parse_type_embedding, stats};
use super::network::{Activation, Layer};
use super::{EnvParams, ModelError, Stats, TypeEmbedding};
use crate::graph::{DType, Tensor};

/// How a layer adds its updates to an embedding (`update_style`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateStyle {
    /// `(u0 + u1 + ...) / sqrt(n)`.
    ResAvg,
    /// `u0 + (u1 + ...) / sqrt(n - 1)`.
    ResIncr,
    /// `u0 + r1 * u1 + ...` with a learned vector `r_i` per update.
    ResResidual,
}

impl UpdateStyle {
    /// `update_style` as DeePMD-kit spells it (`default` where the key is absent).
    pub fn parse(at: &At, default: &str) -> Result<UpdateStyle, ModelError> {
        Ok(match at.opt_str("update_style")?.unwrap_or(default) {
            "res_avg" => UpdateStyle::ResAvg,
            "res_incr" => UpdateStyle::ResIncr,
            "res_residual" => UpdateStyle::ResResidual,
            other => return Err(at.err(format!("unknown update_style `{other}`"))),
        })
    }
}

/// A layer's residual vectors `@variables.<key>`: `n` vectors of width `dim` with
/// `res_residual`, none otherwise.
pub(super) fn residuals(
    la: &At,
    style: UpdateStyle,
    key: &str,
    n: usize,
    dim: usize,
) -> Result<Vec<Tensor>, ModelError> {
    if style != UpdateStyle::ResResidual {
        return Ok(Vec::new());
    }
    let vars = la.get("@variables")?;
    let Some(Value::List(list)) = vars.v.get(key) else {
        return Err(vars.at().err(format!("missing residual list `{key}`")));
    };
    if list.len() != n {
        return Err(vars
            .at()
            .err(format!("`{key}` has {} vectors, expected {n}", list.len())));
    }
    list.iter()
        .map(|v| match v {
            Value::Array(a) if a.len() == dim => to_tensor(a, la).map(|mut t| {
                t.shape = vec![dim];
                t
            }),
            _ => Err(vars
                .at()
                .err(format!("`{key}` holds a non-vector of width != {dim}"))),
        })
        .collect()
}

/// How the node and edge embeddings are narrowed before they enter the angle update.
#[derive(Debug, Clone)]
pub enum AngleCompress {
    /// `a_compress_rate == 0`: the whole embeddings.
    None,
    /// `a_compress_use_split`: the first `n` node and `e` edge channels.
    Split { n: usize, e: usize },
    /// Bias-free linear maps (per layer, in `RepflowLayer::a_compress`).
    Linear,
}

/// The descriptor's options and weights.
#[derive(Debug, Clone)]
pub struct Dpa3 {
    pub ntypes: usize,
    /// The edge cutoff (`e_rcut`, `e_rcut_smth`): the model's cutoff.
    pub env: EnvParams,
    pub a_rcut: f64,
    pub a_rcut_smth: f64,
    pub e_sel: usize,
    pub a_sel: usize,
    /// The `e_sel` and `a_sel` the model was trained with, which its sums are divided by;
    /// they stay when the slots are narrowed to the neighbours present (`with_slots`).
    pub norm_e_sel: usize,
    pub norm_a_sel: usize,
    pub n_dim: usize,
    pub e_dim: usize,
    pub a_dim: usize,
    pub axis_neuron: usize,
    pub update_angle: bool,
    pub update_style: UpdateStyle,
    pub a_compress: AngleCompress,
    pub n_multi_edge_message: usize,
    pub smooth_edge_update: bool,
    pub edge_init_use_dist: bool,
    /// `exp(-exp(20 (r - rs) / rs))` instead of the quintic switch.
    pub use_exp_switch: bool,
    /// `use_dynamic_sel`: normalise by `sel / sel_reduce_factor` instead of `sel`.
    pub sel_reduce_factor: Option<f64>,
    pub sequential_update: bool,
    pub activation: Activation,
    pub concat_output_tebd: bool,
    pub exclude_types: Vec<(usize, usize)>,
    /// `[ntypes, e_sel, 4]`; the angle list reads its first `a_sel` slots.
    pub stats: Stats,
    pub type_embedding: TypeEmbedding,
    pub edge_embd: Layer,
    pub angle_embd: Layer,
    pub layers: Vec<RepflowLayer>,
    pub dtype: DType,
}

/// One `RepFlowLayer`'s weights.
#[derive(Debug, Clone)]
pub struct RepflowLayer {
    pub node_self_mlp: Layer,
    pub node_sym_linear: Layer,
    pub node_edge_linear: Layer,
    pub edge_self_linear: Layer,
    /// With `update_angle`: `edge_angle_linear1`, `edge_angle_linear2`, `angle_self_linear`.
    pub angle: Option<AngleLinears>,
    /// With `AngleCompress::Linear`: the node and edge maps.
    pub a_compress: Option<(Layer, Layer)>,
    pub n_residual: Vec<Tensor>,
    pub e_residual: Vec<Tensor>,
    pub a_residual: Vec<Tensor>,
}

#[derive(Debug, Clone)]
pub struct AngleLinears {
    pub edge_angle_linear1: Layer,
    pub edge_angle_linear2: Layer,
    pub angle_self_linear: Layer,
}

impl Dpa3 {
    /// Width of the node embedding entering the angle update.
    pub fn n_angle_dim(&self) -> usize {
        match self.a_compress {
            AngleCompress::None => self.n_dim,
            AngleCompress::Split { n, .. } => n,
            AngleCompress::Linear => self.a_dim,
        }
    }

    /// What edge sums are divided by: `e_sel`, or `e_sel / sel_reduce_factor` with
    /// `use_dynamic_sel`.
    pub fn edge_norm(&self) -> f64 {
        self.norm_e_sel as f64 / self.sel_reduce_factor.unwrap_or(1.0)
    }

    /// The same for angle sums: `a_sel` or `a_sel / sel_reduce_factor`.
    pub fn angle_norm(&self) -> f64 {
        self.norm_a_sel as f64 / self.sel_reduce_factor.unwrap_or(1.0)
    }

    /// The same model on `e` edge and `a` angle slots (at most the trained ones). Exact for
    /// any system where every atom has at most `e` neighbours within `e_rcut` and at most `a`
    /// within `a_rcut`: the slots dropped would be padding, which adds nothing.
    pub fn with_slots(&self, e: usize, a: usize) -> Dpa3 {
        let e = e.clamp(1, self.e_sel);
        let a = a.clamp(1, self.a_sel).min(e);
        let slice = |t: &Tensor| {
            let (nt, n, c) = (t.shape[0], t.shape[1], t.shape[2]);
            let v = t.to_f64_vec();
            let mut out = Vec::with_capacity(nt * e * c);
            for ti in 0..nt {
                out.extend_from_slice(&v[ti * n * c..ti * n * c + e * c]);
            }
            crate::build::nn::cast_tensor(&Tensor::f64(vec![nt, e, c], out), t.dtype())
        };
        Dpa3 {
            e_sel: e,
            a_sel: a,
            stats: Stats {
                davg: slice(&self.stats.davg),
                dstd: slice(&self.stats.dstd),
            },
            ..self.clone()
        }
    }

    pub fn dim_out(&self) -> usize {
        self.n_dim
            + if self.concat_output_tebd {
                self.type_embedding.dim()
            } else {
                0
            }
    }
}

pub fn parse(at: At, ntypes_model: usize) -> Result<Dpa3, ModelError> {
    at.version(2, 1, 2)?;
    let ntypes = at.ntypes(ntypes_model)?;
    if at.bool_or("add_chg_spin_ebd", false)? {
        return Err(at.unsupported(
            "DPA-3 with charge/spin embeddings (add_chg_spin_ebd): dpc has no charge_spin input",
        ));
    }
    let args = at.get("repflow_args")?;
    let args = args.at();
    let var = at.get("repflow_variable")?;
    let var = var.at();
    let dtype = dtype_of(&at)?;
    let e_rcut = args.f64("e_rcut")?;
    let e_rcut_smth = args.f64("e_rcut_smth")?;
    let a_rcut = args.f64("a_rcut")?;
    let a_rcut_smth = args.f64("a_rcut_smth")?;
    if !(e_rcut > 0.0 && e_rcut.is_finite() && e_rcut_smth < e_rcut) {
        return Err(args.err(format!(
            "need 0 < e_rcut and e_rcut_smth < e_rcut (e_rcut {e_rcut}, e_rcut_smth {e_rcut_smth})"
        )));
    }
    if !(a_rcut > 0.0 && a_rcut_smth < a_rcut && a_rcut <= e_rcut) {
        return Err(args.err(format!(
            "need 0 < a_rcut <= e_rcut and a_rcut_smth < a_rcut (a_rcut {a_rcut}, a_rcut_smth \
             {a_rcut_smth}, e_rcut {e_rcut})"
        )));
    }
    let e_sel = match args.opt("e_sel") {
        Some(c) if c.v.as_list().is_some() => {
            let s = args.usizes("e_sel")?;
            if s.len() != 1 {
                return Err(args.err("e_sel must be one number (all types together)"));
            }
            s[0]
        }
        _ => args.usize("e_sel")?,
    };
    let a_sel = args.usize("a_sel")?;
    if a_sel > e_sel || e_sel == 0 {
        return Err(args.err(format!(
            "need 0 < e_sel and a_sel <= e_sel (e_sel {e_sel}, a_sel {a_sel})"
        )));
    }
    let n_dim = args.usize("n_dim")?;
    let e_dim = args.usize("e_dim")?;
    let a_dim = args.usize("a_dim")?;
    let axis_neuron = args.usize("axis_neuron")?;
    if axis_neuron == 0 || axis_neuron > e_dim.min(n_dim) {
        return Err(args.err(format!(
            "axis_neuron {axis_neuron} must be in 1..={}",
            e_dim.min(n_dim)
        )));
    }
    let update_angle = args.bool_or("update_angle", true)?;
    let update_style = UpdateStyle::parse(&args, "res_residual")?;
    let rate = args.usize_or("a_compress_rate", 0)?;
    let e_rate = args.usize_or("a_compress_e_rate", 1)?;
    let a_compress = if rate == 0 {
        AngleCompress::None
    } else {
        if (a_dim * e_rate) % (2 * rate) != 0 {
            return Err(args.err(format!(
                "a_dim * a_compress_e_rate ({}) must be divisible by 2 * a_compress_rate ({})",
                a_dim * e_rate,
                2 * rate
            )));
        }
        if args.bool_or("a_compress_use_split", false)? {
            AngleCompress::Split {
                n: a_dim / rate,
                e: a_dim / (2 * rate) * e_rate,
            }
        } else {
            AngleCompress::Linear
        }
    };
    let (n_a, e_a) = match a_compress {
        AngleCompress::None => (n_dim, e_dim),
        AngleCompress::Split { n, e } => (n, e),
        AngleCompress::Linear => (a_dim / rate, a_dim / (2 * rate) * e_rate),
    };
    if n_a > n_dim || e_a > e_dim {
        return Err(args.err("the angle compression keeps more channels than the embeddings have"));
    }
    let n_multi_edge_message = args.usize_or("n_multi_edge_message", 1)?;
    let sequential_update = args.bool_or("sequential_update", false)?;
    if sequential_update && (update_style != UpdateStyle::ResResidual || !update_angle) {
        return Err(args.err("sequential_update needs update_style res_residual and update_angle"));
    }
    let use_dynamic_sel = args.bool_or("use_dynamic_sel", false)?;
    let smooth_edge_update = args.bool_or("smooth_edge_update", false)?;
    if use_dynamic_sel && !smooth_edge_update {
        return Err(args.err("use_dynamic_sel needs smooth_edge_update"));
    }
    let sel_reduce_factor = if use_dynamic_sel {
        let f = args.opt_f64("sel_reduce_factor")?.unwrap_or(10.0);
        if !(f > 0.0 && f.is_finite()) {
            return Err(args.err(format!("sel_reduce_factor must be > 0, got {f}")));
        }
        Some(f)
    } else {
        None
    };
    let activation = Activation::parse(at.opt_str("activation_function")?.unwrap_or("silu"), &at)?;
    let type_embedding = parse_type_embedding(at.get("type_embedding")?.at(), ntypes)?;
    if type_embedding.dim() != n_dim {
        return Err(at.err(format!(
            "type embedding width {} differs from n_dim {n_dim}",
            type_embedding.dim()
        )));
    }
    let edge_embd = Layer::parse(var.get("edge_embd")?.at())?;
    let angle_embd = Layer::parse(var.get("angle_embd")?.at())?;
    check_layer(&var, "edge_embd", &edge_embd, 1, e_dim)?;
    check_layer(&var, "angle_embd", &angle_embd, 1, a_dim)?;
    let mut layers = Vec::new();
    for l in var.list("repflow_layers")? {
        let la = l.at();
        la.version(2, 1, 2)?;
        let lay = |key: &str, n_in: usize, n_out: usize| -> Result<Layer, ModelError> {
            let layer = Layer::parse(la.get(key)?.at())?;
            check_layer(&la, key, &layer, n_in, n_out)?;
            Ok(layer)
        };
        let edge_info = 2 * n_dim + e_dim;
        let angle_info = a_dim + n_a + 2 * e_a;
        let angle = if update_angle {
            Some(AngleLinears {
                edge_angle_linear1: lay("edge_angle_linear1", angle_info, e_dim)?,
                edge_angle_linear2: lay("edge_angle_linear2", e_dim, e_dim)?,
                angle_self_linear: lay("angle_self_linear", angle_info, a_dim)?,
            })
        } else {
            None
        };
        let a_comp = match (update_angle, &a_compress) {
            (true, AngleCompress::Linear) => Some((
                lay("a_compress_n_linear", n_dim, n_a)?,
                lay("a_compress_e_linear", e_dim, e_a)?,
            )),
            _ => None,
        };
        let n_count = 2 + n_multi_edge_message;
        let e_count = 1 + usize::from(update_angle);
        let a_count = usize::from(update_angle);
        layers.push(RepflowLayer {
            node_self_mlp: lay("node_self_mlp", n_dim, n_dim)?,
            node_sym_linear: lay("node_sym_linear", (n_dim + e_dim) * axis_neuron, n_dim)?,
            node_edge_linear: lay("node_edge_linear", edge_info, n_multi_edge_message * n_dim)?,
            edge_self_linear: lay("edge_self_linear", edge_info, e_dim)?,
            angle,
            a_compress: a_comp,
            n_residual: residuals(&la, update_style, "n_residual", n_count, n_dim)?,
            e_residual: residuals(&la, update_style, "e_residual", e_count, e_dim)?,
            a_residual: residuals(&la, update_style, "a_residual", a_count, a_dim)?,
        });
    }
    if layers.is_empty() {
        return Err(var.err("no repflow layers"));
    }
    if let Some(n) = args.opt("nlayers") {
        if n.at().as_usize()? != layers.len() {
            return Err(args.err(format!(
                "nlayers says {}, but {} layers are stored",
                n.at().as_usize()?,
                layers.len()
            )));
        }
    }
    Ok(Dpa3 {
        ntypes,
        env: EnvParams {
            rcut: e_rcut,
            rcut_smth: e_rcut_smth,
            protection: at.opt_f64("env_protection")?.unwrap_or(0.0),
        },
        a_rcut,
        a_rcut_smth,
        e_sel,
        a_sel,
        norm_e_sel: e_sel,
        norm_a_sel: a_sel,
        n_dim,
        e_dim,
        a_dim,
        axis_neuron,
        update_angle,
        update_style,
        a_compress,
        n_multi_edge_message,
        smooth_edge_update,
        edge_init_use_dist: args.bool_or("edge_init_use_dist", false)?,
        use_exp_switch: args.bool_or("use_exp_switch", false)?,
        sel_reduce_factor,
        sequential_update,
        activation,
        concat_output_tebd: at.bool_or("concat_output_tebd", false)?,
        exclude_types: at.pairs("exclude_types", ntypes)?,
        stats: stats(&var, ntypes, e_sel, 4, dtype)?,
        type_embedding,
        edge_embd,
        angle_embd,
        layers,
        dtype,
    })
}

fn check_layer(at: &At, key: &str, l: &Layer, n_in: usize, n_out: usize) -> Result<(), ModelError> {
    if l.n_in() != n_in || l.n_out() != n_out {
        return Err(at.err(format!(
            "{key} maps {} -> {}, expected {n_in} -> {n_out}",
            l.n_in(),
            l.n_out()
        )));
    }
    if l.activation != Activation::Linear || l.idt.is_some() || l.resnet && n_in == n_out {
        return Err(at.unsupported(format!(
            "{key} with an activation, timestep or resnet (DeePMD-kit builds plain linear maps)"
        )));
    }
    Ok(())
}
