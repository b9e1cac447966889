//! Descriptors: typed views of `model.descriptor`, validated against each other so the
//! graph builder can trust shapes (`deepmd/dpmodel/descriptor/*.py`).

use super::access::{precision, to_tensor, At};
use super::network::{Layer, LayerNorm, Net, NetCollection};
use super::ModelError;
use crate::graph::{DType, Tensor};

/// The smooth environment matrix's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EnvParams {
    pub rcut: f64,
    pub rcut_smth: f64,
    /// `env_protection`: added to r in the 1/r terms.
    pub protection: f64,
}

/// Per (centre type, neighbour slot) normalisation: `(env - davg) / dstd`.
#[derive(Debug, Clone)]
pub struct Stats {
    /// `[ntypes, nnei, ncomp]`.
    pub davg: Tensor,
    pub dstd: Tensor,
}

#[derive(Debug, Clone)]
pub enum Descriptor {
    SeA(SeA),
    SeR(SeR),
    SeT(SeT),
    Dpa1(Box<Dpa1>),
    Dpa3(Box<super::dpa3::Dpa3>),
    Dpa2(Box<super::dpa2::Dpa2>),
    /// `se_e3_tebd`: DPA-2's three-body block on its own.
    SeTTebd(Box<super::se_t_tebd::SeTTebd>),
    /// `hybrid`: sub-descriptors on cuts of one neighbour list, outputs concatenated.
    Hybrid(Vec<Descriptor>),
}

/// `se_e2_a`: embedding of the radial term, contracted with the full environment matrix.
#[derive(Debug, Clone)]
pub struct SeA {
    pub env: EnvParams,
    pub sel: Vec<usize>,
    pub stats: Stats,
    pub axis_neuron: usize,
    pub type_one_side: bool,
    pub exclude_types: Vec<(usize, usize)>,
    /// ndim 1 (keyed by neighbour type) or 2 (centre type, neighbour type).
    pub embeddings: NetCollection,
    pub dtype: DType,
}

/// `se_e2_r`: radial-only embedding, averaged.
#[derive(Debug, Clone)]
pub struct SeR {
    pub env: EnvParams,
    pub sel: Vec<usize>,
    pub stats: Stats,
    pub exclude_types: Vec<(usize, usize)>,
    pub embeddings: NetCollection,
    pub dtype: DType,
}

/// `se_e3` (`se_t`): embedding of angles between neighbour pairs.
#[derive(Debug, Clone)]
pub struct SeT {
    pub env: EnvParams,
    pub sel: Vec<usize>,
    pub stats: Stats,
    pub exclude_types: Vec<(usize, usize)>,
    /// ndim 2, keyed (ti, tj) for neighbour-type pairs with ti <= tj.
    pub embeddings: NetCollection,
    pub dtype: DType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TebdInput {
    Concat,
    Strip,
}

/// `se_atten` / DPA-1 (and `se_atten_v2`): type embedding plus gated self-attention over
/// the neighbours, all types in one distance-sorted neighbour list.
#[derive(Debug, Clone)]
pub struct Dpa1 {
    pub env: EnvParams,
    pub nnei: usize,
    pub ntypes: usize,
    pub stats: Stats,
    pub axis_neuron: usize,
    pub tebd_input: TebdInput,
    pub type_one_side: bool,
    pub smooth_type_embedding: bool,
    pub concat_output_tebd: bool,
    pub exclude_types: Vec<(usize, usize)>,
    pub embedding: Net,
    pub embedding_strip: Option<Net>,
    pub type_embedding: TypeEmbedding,
    pub attention: Vec<AttentionLayer>,
    pub dtype: DType,
    /// Floor on the squared norm when normalising q, k, v and the neighbour directions:
    /// PyTorch's `F.normalize` (1e-24) unless the model runs with TensorFlow's numerics.
    pub norm_floor_sq: f64,
}

/// `TypeEmbedNet`: a network applied to one-hot type vectors; a zero padding row appended.
#[derive(Debug, Clone)]
pub struct TypeEmbedding {
    pub ntypes: usize,
    pub net: Net,
    pub padding: bool,
}

impl TypeEmbedding {
    pub fn dim(&self) -> usize {
        self.net.n_out().unwrap_or(self.ntypes)
    }
}

/// One `NeighborGatedAttentionLayer`: `LN(x + attention(x))`.
#[derive(Debug, Clone)]
pub struct AttentionLayer {
    pub in_proj: Layer,
    pub out_proj: Layer,
    pub hidden_dim: usize,
    /// `temperature`, or `(hidden_dim * scaling_factor)^-1/2`.
    pub scaling: f64,
    pub normalize: bool,
    pub dotr: bool,
    pub smooth: bool,
    pub norm: LayerNorm,
}

impl Descriptor {
    pub fn parse(at: At, ntypes: usize) -> Result<Descriptor, ModelError> {
        let kind = at.str("type")?;
        match kind {
            "se_e2_a" | "se_a" => Ok(Descriptor::SeA(parse_se_a(at, ntypes)?)),
            "se_e2_r" | "se_r" => Ok(Descriptor::SeR(parse_se_r(at, ntypes)?)),
            "se_e3" | "se_at" | "se_a_3be" | "se_t" => Ok(Descriptor::SeT(parse_se_t(at, ntypes)?)),
            "dpa1" | "se_atten" => Ok(Descriptor::Dpa1(Box::new(parse_dpa1(at, ntypes, false)?))),
            "se_atten_v2" => Ok(Descriptor::Dpa1(Box::new(parse_dpa1(at, ntypes, true)?))),
            "dpa3" => Ok(Descriptor::Dpa3(Box::new(super::dpa3::parse(at, ntypes)?))),
            "hybrid" => parse_hybrid(at, ntypes),
            "dpa2" => Ok(Descriptor::Dpa2(Box::new(super::dpa2::parse(at, ntypes)?))),
            "se_e3_tebd" => Ok(Descriptor::SeTTebd(Box::new(super::se_t_tebd::parse(
                at, ntypes,
            )?))),
            "dpa4" | "se_a_tpe" | "se_a_ebd" | "se_a_mask" | "loc_frame" => {
                Err(at.unsupported(format!("descriptor `{kind}` is not supported yet (supported: se_e2_a, se_e2_r, se_e3, se_e3_tebd, se_atten/dpa1, se_atten_v2, dpa2, dpa3, hybrid)")))
            }
            other => Err(at.unsupported(format!("unknown descriptor type `{other}`"))),
        }
    }

    pub fn rcut(&self) -> f64 {
        self.env().rcut
    }

    pub fn env(&self) -> EnvParams {
        match self {
            // DeePMD-kit's hybrid: the largest cutoff, the smallest smoothing start.
            Descriptor::Hybrid(list) => EnvParams {
                rcut: list.iter().map(|d| d.rcut()).fold(0.0, f64::max),
                rcut_smth: list
                    .iter()
                    .map(|d| d.env().rcut_smth)
                    .fold(f64::INFINITY, f64::min),
                protection: list[0].env().protection,
            },
            Descriptor::SeA(d) => d.env,
            Descriptor::SeR(d) => d.env,
            Descriptor::SeT(d) => d.env,
            Descriptor::Dpa1(d) => d.env,
            Descriptor::Dpa3(d) => d.env,
            Descriptor::SeTTebd(d) => d.block.env,
            Descriptor::Dpa2(d) => EnvParams {
                rcut: d.rcut,
                ..d.repinit.env
            },
        }
    }

    /// Neighbour slots per type; one entry (all types together) for mixed-type descriptors.
    pub fn sel(&self) -> Vec<usize> {
        match self {
            Descriptor::SeA(d) => d.sel.clone(),
            Descriptor::SeR(d) => d.sel.clone(),
            Descriptor::SeT(d) => d.sel.clone(),
            Descriptor::Dpa1(d) => vec![d.nnei],
            Descriptor::Dpa3(d) => vec![d.e_sel],
            Descriptor::Dpa2(d) => vec![d.nsel],
            Descriptor::SeTTebd(d) => vec![d.block.nnei],
            // The list covers every sub-descriptor's: per type (or in all) the largest sel.
            Descriptor::Hybrid(list) => {
                let sels: Vec<Vec<usize>> = list.iter().map(Descriptor::sel).collect();
                (0..sels[0].len())
                    .map(|t| sels.iter().map(|s| s[t]).max().unwrap_or(0))
                    .collect()
            }
        }
    }

    /// Whether the neighbour list mixes types (one distance-sorted block).
    pub fn mixed_types(&self) -> bool {
        match self {
            Descriptor::Hybrid(list) => list[0].mixed_types(),
            d => matches!(
                d,
                Descriptor::Dpa1(_)
                    | Descriptor::Dpa2(_)
                    | Descriptor::Dpa3(_)
                    | Descriptor::SeTTebd(_)
            ),
        }
    }

    /// Whether atoms' features pass between neighbours layer by layer, so ghost atoms need
    /// the `mapping` to their local owners and centres cannot be evaluated in chunks.
    pub fn has_message_passing(&self) -> bool {
        self.message_passing_layers() > 0
    }

    /// How many times features hop from atom to neighbouring atom before the energy: an
    /// atom's energy reads atoms up to `layers * rcut` away (0: only its own neighbours).
    /// DPA-2's first features (repinit) already come from a neighbourhood, so they count as
    /// one more hop; DPA-3's are the type embedding.
    pub fn message_passing_layers(&self) -> usize {
        match self {
            Descriptor::Dpa3(d) => d.layers.len(),
            Descriptor::Dpa2(d) => d.repformers.layers.len() + 1,
            Descriptor::Hybrid(list) => list
                .iter()
                .map(Descriptor::message_passing_layers)
                .max()
                .unwrap_or(0),
            _ => 0,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Descriptor::SeA(_) => "se_e2_a",
            Descriptor::SeR(_) => "se_e2_r",
            Descriptor::SeT(_) => "se_e3",
            Descriptor::Dpa1(_) => "se_atten",
            Descriptor::Dpa3(_) => "dpa3",
            Descriptor::Dpa2(_) => "dpa2",
            Descriptor::SeTTebd(_) => "se_e3_tebd",
            Descriptor::Hybrid(_) => "hybrid",
        }
    }

    /// Width of the descriptor vector each atom gets.
    pub fn dim_out(&self) -> usize {
        let ng = |c: &NetCollection| c.nets.iter().flatten().find_map(Net::n_out).unwrap_or(0);
        match self {
            Descriptor::SeA(d) => ng(&d.embeddings) * d.axis_neuron,
            Descriptor::SeR(d) => ng(&d.embeddings),
            Descriptor::SeT(d) => ng(&d.embeddings),
            Descriptor::Dpa3(d) => d.dim_out(),
            Descriptor::Dpa2(d) => d.dim_out(),
            Descriptor::SeTTebd(d) => d.dim_out(),
            Descriptor::Hybrid(list) => list.iter().map(Descriptor::dim_out).sum(),
            Descriptor::Dpa1(d) => {
                d.embedding.n_out().unwrap_or(0) * d.axis_neuron
                    + if d.concat_output_tebd {
                        d.type_embedding.dim()
                    } else {
                        0
                    }
            }
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            Descriptor::SeA(d) => d.dtype,
            Descriptor::SeR(d) => d.dtype,
            Descriptor::SeT(d) => d.dtype,
            Descriptor::Dpa1(d) => d.dtype,
            Descriptor::Dpa3(d) => d.dtype,
            Descriptor::Dpa2(d) => d.dtype,
            Descriptor::SeTTebd(d) => d.dtype,
            // The concatenated output is float64.
            Descriptor::Hybrid(_) => DType::F64,
        }
    }
}

pub(super) fn env_params(at: &At) -> Result<EnvParams, ModelError> {
    let rcut = at.f64("rcut")?;
    let rcut_smth = at.f64("rcut_smth")?;
    if !(rcut > 0.0 && rcut.is_finite() && rcut_smth < rcut && rcut_smth.is_finite()) {
        return Err(at.err(format!(
            "need 0 < rcut and rcut_smth < rcut (rcut {rcut}, rcut_smth {rcut_smth})"
        )));
    }
    if at.opt("spin").is_some() {
        return Err(at.unsupported("spin descriptors"));
    }
    Ok(EnvParams {
        rcut,
        rcut_smth,
        protection: at.opt_f64("env_protection")?.unwrap_or(0.0),
    })
}

pub(super) fn stats(
    at: &At,
    ntypes: usize,
    nnei: usize,
    ncomp: usize,
    dtype: DType,
) -> Result<Stats, ModelError> {
    let load = |name: &str| -> Result<Tensor, ModelError> {
        let a = at.var(name)?;
        if a.shape != [ntypes, nnei, ncomp] {
            return Err(at.err(format!(
                "{name} has shape {:?}, expected [{ntypes}, {nnei}, {ncomp}]",
                a.shape
            )));
        }
        let t = to_tensor(a, at)?;
        Ok(match dtype {
            DType::F32 => Tensor::f32(
                t.shape.clone(),
                t.to_f64_vec().iter().map(|&x| x as f32).collect(),
            ),
            _ => Tensor::f64(t.shape.clone(), t.to_f64_vec()),
        })
    };
    Ok(Stats {
        davg: load("davg")?,
        dstd: load("dstd")?,
    })
}

pub(super) fn dtype_of(at: &At) -> Result<DType, ModelError> {
    precision(at.opt_str("precision")?.unwrap_or("float64"), at)
}

/// Every present network of a collection maps `n_in` inputs to `ng` outputs.
fn check_nets(at: &At, nets: &NetCollection, n_in: usize) -> Result<usize, ModelError> {
    let mut ng = None;
    for net in nets.nets.iter().flatten() {
        if net.n_in() != Some(n_in) {
            return Err(at.err(format!(
                "an embedding network takes {:?} inputs, expected {n_in}",
                net.n_in()
            )));
        }
        match (ng, net.n_out()) {
            (None, o) => ng = o,
            (Some(a), Some(b)) if a != b => {
                return Err(at.err("embedding networks differ in output width"))
            }
            _ => {}
        }
    }
    ng.ok_or_else(|| at.err("no embedding network present"))
}

fn check_types(at: &At, sel: &[usize], ntypes: usize) -> Result<(), ModelError> {
    if sel.len() != ntypes {
        return Err(at.err(format!(
            "sel has {} entries but the model has {ntypes} types",
            sel.len()
        )));
    }
    Ok(())
}

/// What se_e2_a, se_e2_r and se_e3 share: version range, cutoff, `sel`, statistics with
/// `ncomp` components, exclusions and a collection of `ndim` embedding nets of input width 1.
struct SeParts {
    env: EnvParams,
    sel: Vec<usize>,
    stats: Stats,
    exclude_types: Vec<(usize, usize)>,
    embeddings: NetCollection,
    ng: usize,
    dtype: DType,
}

fn parse_se_parts(
    at: &At,
    ntypes: usize,
    ncomp: usize,
    ndim: usize,
) -> Result<SeParts, ModelError> {
    at.version(1, 1, 3)?;
    let env = env_params(at)?;
    let sel = at.usizes("sel")?;
    check_types(at, &sel, ntypes)?;
    let nnei = sel.iter().sum();
    let dtype = dtype_of(at)?;
    let embeddings = NetCollection::parse(at.get("embeddings")?.at())?;
    if embeddings.ndim != ndim || embeddings.ntypes != ntypes {
        return Err(at.err(format!(
            "embeddings have ndim {} for {} types, expected {ndim} for {ntypes}",
            embeddings.ndim, embeddings.ntypes
        )));
    }
    let ng = check_nets(at, &embeddings, 1)?;
    Ok(SeParts {
        env,
        stats: stats(at, ntypes, nnei, ncomp, dtype)?,
        sel,
        exclude_types: at.pairs("exclude_types", ntypes)?,
        embeddings,
        ng,
        dtype,
    })
}

fn parse_se_a(at: At, ntypes: usize) -> Result<SeA, ModelError> {
    let type_one_side = at.bool_or("type_one_side", true)?;
    let p = parse_se_parts(&at, ntypes, 4, if type_one_side { 1 } else { 2 })?;
    let axis_neuron = at.usize("axis_neuron")?;
    if axis_neuron == 0 || axis_neuron > p.ng {
        return Err(at.err(format!("axis_neuron {axis_neuron} must be in 1..={}", p.ng)));
    }
    Ok(SeA {
        env: p.env,
        sel: p.sel,
        stats: p.stats,
        axis_neuron,
        type_one_side,
        exclude_types: p.exclude_types,
        embeddings: p.embeddings,
        dtype: p.dtype,
    })
}

fn parse_se_r(at: At, ntypes: usize) -> Result<SeR, ModelError> {
    if !at.bool_or("type_one_side", true)? {
        return Err(at.unsupported(
            "se_e2_r with type_one_side = false (DeePMD-kit does not implement it either)",
        ));
    }
    let p = parse_se_parts(&at, ntypes, 1, 1)?;
    Ok(SeR {
        env: p.env,
        sel: p.sel,
        stats: p.stats,
        exclude_types: p.exclude_types,
        embeddings: p.embeddings,
        dtype: p.dtype,
    })
}

fn parse_se_t(at: At, ntypes: usize) -> Result<SeT, ModelError> {
    let p = parse_se_parts(&at, ntypes, 4, 2)?;
    for ti in 0..ntypes {
        for tj in ti..ntypes {
            if p.sel[ti] > 0 && p.sel[tj] > 0 && p.embeddings.get(&[ti, tj]).is_none() {
                return Err(at.err(format!(
                    "missing embedding network for neighbour types ({ti}, {tj})"
                )));
            }
        }
    }
    Ok(SeT {
        env: p.env,
        sel: p.sel,
        stats: p.stats,
        exclude_types: p.exclude_types,
        embeddings: p.embeddings,
        dtype: p.dtype,
    })
}

pub(super) fn parse_type_embedding(at: At, ntypes: usize) -> Result<TypeEmbedding, ModelError> {
    at.version(1, 1, 2)?;
    if at.bool_or("use_econf_tebd", false)? {
        return Err(
            at.unsupported("type embeddings from electronic configurations (use_econf_tebd)")
        );
    }
    let net = Net::parse(at.get("embedding")?.at())?;
    if net.n_in() != Some(ntypes) {
        return Err(at.err(format!(
            "type embedding net takes {:?} inputs, expected ntypes = {ntypes}",
            net.n_in()
        )));
    }
    Ok(TypeEmbedding {
        ntypes,
        net,
        padding: at.bool_or("padding", true)?,
    })
}

fn parse_attention(at: At, nnei: usize, ng: usize) -> Result<Vec<AttentionLayer>, ModelError> {
    if at.opt_str("@class")? != Some("NeighborGatedAttention") {
        return Err(at.err("expected @class NeighborGatedAttention"));
    }
    at.version(1, 1, 1)?;
    let mut layers = Vec::new();
    for layer in at.list("attention_layers")? {
        let la = layer.at();
        let inner = la.get("attention_layer")?;
        let a = inner.at();
        let hidden_dim = a.usize("hidden_dim")?;
        let num_heads = a.usize_or("num_heads", 1)?;
        if num_heads != 1 {
            return Err(a.unsupported(format!("{num_heads} attention heads (DeePMD-kit builds 1)")));
        }
        if a.usize_or("nnei", nnei)? != nnei {
            return Err(a.err("attention nnei differs from the descriptor's sel"));
        }
        let in_proj = Layer::parse(a.get("in_proj")?.at())?;
        let out_proj = Layer::parse(a.get("out_proj")?.at())?;
        if in_proj.n_in() != ng
            || in_proj.n_out() != 3 * hidden_dim
            || out_proj.n_in() != hidden_dim
            || out_proj.n_out() != ng
        {
            return Err(a.err("attention projections do not match embed_dim and hidden_dim"));
        }
        let scaling = match a.opt_f64("temperature")? {
            Some(t) => t,
            None => {
                let sf = a.opt_f64("scaling_factor")?.unwrap_or(1.0);
                (hidden_dim as f64 * sf).powf(-0.5)
            }
        };
        let norm = LayerNorm::parse(la.get("attn_layer_norm")?.at())?;
        if norm.w.shape != [ng] {
            return Err(la.err("attention layer norm width differs from embed_dim"));
        }
        layers.push(AttentionLayer {
            in_proj,
            out_proj,
            hidden_dim,
            scaling,
            normalize: a.bool_or("normalize", true)?,
            dotr: a.bool_or("dotr", true)?,
            smooth: a.bool_or("smooth", true)?,
            norm,
        });
    }
    Ok(layers)
}

fn parse_dpa1(at: At, ntypes_model: usize, v2: bool) -> Result<Dpa1, ModelError> {
    at.version(1, 1, 4)?;
    if at.usize_or("lmax", 1)? != 1 {
        return Err(at.unsupported("DPA-1 with lmax > 1 (spherical-harmonic moments)"));
    }
    if at.bool_or("attn_mask", false)? {
        return Err(at.unsupported("attn_mask = true (DeePMD-kit does not implement it either)"));
    }
    let env = env_params(&at)?;
    let ntypes = at.ntypes(ntypes_model)?;
    let nnei: usize = at.usizes("sel")?.iter().sum();
    let dtype = dtype_of(&at)?;
    let tebd_input = if v2 {
        TebdInput::Strip
    } else {
        let strip = match at
            .opt("stripped_type_embedding")
            .and_then(|c| c.v.as_bool())
        {
            Some(s) => s,
            None => at.opt_str("tebd_input_mode")?.unwrap_or("concat") == "strip",
        };
        if strip {
            TebdInput::Strip
        } else {
            TebdInput::Concat
        }
    };
    let smooth_type_embedding = v2 || at.bool_or("smooth_type_embedding", false)?;
    let type_one_side = at.bool_or("type_one_side", false)?;
    let type_embedding = parse_type_embedding(at.get("type_embedding")?.at(), ntypes)?;
    let nt = type_embedding.dim();
    let embedding = single_net(&at, "embeddings")?;
    let ng = embedding
        .n_out()
        .ok_or_else(|| at.err("empty embedding network"))?;
    let (want_in, strip_in) = match (tebd_input, type_one_side) {
        (TebdInput::Concat, true) => (1 + nt, 0),
        (TebdInput::Concat, false) => (1 + 2 * nt, 0),
        (TebdInput::Strip, true) => (1, nt),
        (TebdInput::Strip, false) => (1, 2 * nt),
    };
    if embedding.n_in() != Some(want_in) {
        return Err(at.err(format!(
            "embedding net takes {:?} inputs, expected {want_in}",
            embedding.n_in()
        )));
    }
    let embedding_strip = match tebd_input {
        TebdInput::Concat => None,
        TebdInput::Strip => {
            let s = single_net(&at, "embeddings_strip")?;
            if s.n_in() != Some(strip_in) || s.n_out() != Some(ng) {
                return Err(at.err(
                    "embeddings_strip does not match the type embedding and embedding widths",
                ));
            }
            Some(s)
        }
    };
    let axis_neuron = at.usize("axis_neuron")?;
    if axis_neuron == 0 || axis_neuron > ng {
        return Err(at.err(format!("axis_neuron {axis_neuron} must be in 1..={ng}")));
    }
    Ok(Dpa1 {
        env,
        nnei,
        ntypes,
        stats: stats(&at, ntypes, nnei, 4, dtype)?,
        axis_neuron,
        tebd_input,
        type_one_side,
        smooth_type_embedding,
        concat_output_tebd: at.bool_or("concat_output_tebd", true)?,
        exclude_types: at.pairs("exclude_types", ntypes)?,
        embedding,
        embedding_strip,
        type_embedding,
        attention: parse_attention(at.get("attention_layers")?.at(), nnei, ng)?,
        dtype,
        norm_floor_sq: 1e-24,
    })
}

fn parse_hybrid(at: At, ntypes: usize) -> Result<Descriptor, ModelError> {
    at.version(1, 1, 1)?;
    let list = at
        .list("list")?
        .into_iter()
        .map(|c| Descriptor::parse(c.at(), ntypes))
        .collect::<Result<Vec<_>, _>>()?;
    if list.is_empty() {
        return Err(at.err("a hybrid descriptor needs at least one descriptor in `list`"));
    }
    if list
        .iter()
        .any(|d| d.mixed_types() != list[0].mixed_types())
    {
        return Err(at.unsupported(
            "a hybrid of mixed-type (se_atten, DPA-3) and per-type (se_e2_a, se_e2_r, se_e3) \
             descriptors: each needs its own neighbour-list layout",
        ));
    }
    Ok(Descriptor::Hybrid(list))
}

/// The one network of an ndim-0 collection.
pub(super) fn single_net(at: &At, key: &str) -> Result<Net, ModelError> {
    let c = NetCollection::parse(at.get(key)?.at())?;
    if c.ndim != 0 {
        return Err(at.err(format!("{key} must be a single shared network (ndim 0)")));
    }
    c.nets
        .into_iter()
        .next()
        .flatten()
        .ok_or_else(|| at.err(format!("{key} holds no network")))
}
