//! DPA-2 (`deepmd/dpmodel/descriptor/dpa2.py`, `repformers.py`, `se_t_tebd.py`): a
//! se_atten-style `repinit` (no attention) and optionally a three-body block give each atom
//! its first features `g1`; repformer layers then update `g1`, the pair features `g2` and the
//! pair directions `h2` by message passing.

use super::access::At;
use super::descriptor::{dtype_of, parse_type_embedding, single_net, stats};
use super::dpa3::{residuals, UpdateStyle};
use super::network::{Activation, Layer, LayerNorm, Net};
use super::{Dpa1, EnvParams, ModelError, Stats, TebdInput, TypeEmbedding};
use crate::graph::{DType, Tensor};

#[derive(Debug, Clone)]
pub struct Dpa2 {
    pub ntypes: usize,
    /// The largest cutoff of the blocks (the model's list is built to it).
    pub rcut: f64,
    /// The largest `nsel` of the blocks (the model's list width).
    pub nsel: usize,
    pub type_embedding: TypeEmbedding,
    /// The repinit block as a DPA-1 without attention layers, reading `type_embedding`.
    pub repinit: Dpa1,
    pub three_body: Option<ThreeBody>,
    pub g1_shape_tranform: Layer,
    pub tebd_transform: Option<Layer>,
    pub repformers: Repformers,
    pub concat_output_tebd: bool,
    pub dtype: DType,
}

/// `DescrptBlockSeTTebd`: an embedding of the angle between neighbour pairs and their types.
#[derive(Debug, Clone)]
pub struct ThreeBody {
    pub env: EnvParams,
    pub nnei: usize,
    pub stats: Stats,
    pub tebd_input: TebdInput,
    pub smooth: bool,
    pub exclude_types: Vec<(usize, usize)>,
    pub embedding: Net,
    pub embedding_strip: Option<Net>,
}

#[derive(Debug, Clone)]
pub struct Repformers {
    pub env: EnvParams,
    pub nnei: usize,
    pub stats: Stats,
    pub g1_dim: usize,
    pub g2_dim: usize,
    pub axis_neuron: usize,
    pub direct_dist: bool,
    pub smooth: bool,
    pub use_sqrt_nnei: bool,
    pub update_style: UpdateStyle,
    pub activation: Activation,
    pub exclude_types: Vec<(usize, usize)>,
    pub g2_embd: Layer,
    pub layers: Vec<RepformerLayer>,
}

/// `RepformerLayer`: which updates it makes, and their weights.
#[derive(Debug, Clone)]
pub struct RepformerLayer {
    pub update_chnnl_2: bool,
    pub g1_out_conv: bool,
    pub g1_out_mlp: bool,
    pub has_grrg: bool,
    pub has_drrd: bool,
    pub linear1: Layer,
    pub linear2: Option<Layer>,
    /// With `update_g1_has_conv`.
    pub proj_g1g2: Option<Layer>,
    /// With `update_g2_has_g1g1`.
    pub proj_g1g1g2: Option<Layer>,
    /// With `update_g2_has_attn` or `update_h2`.
    pub attn2: Option<Atten2>,
    /// With `update_g2_has_attn`: the multi-head apply and its layer norm.
    pub attn2_g2: Option<(Layer, Layer, LayerNorm)>,
    /// With `update_h2`: the head map of the equivariant apply.
    pub attn2_h2: Option<Layer>,
    /// With `update_g1_has_attn`.
    pub loc_attn: Option<LocalAtten>,
    pub g1_self_mlp: Option<Layer>,
    /// Weigh neighbours by the switch (else mask them and divide by their count).
    pub smooth: bool,
    pub use_sqrt_nnei: bool,
    pub g1_residual: Vec<Tensor>,
    pub g2_residual: Vec<Tensor>,
    pub h2_residual: Vec<Tensor>,
}

/// `Atten2Map`: attention weights between a centre's neighbour pairs.
#[derive(Debug, Clone)]
pub struct Atten2 {
    pub mapqk: Layer,
    pub hidden: usize,
    pub heads: usize,
    pub has_gate: bool,
    pub smooth: bool,
    pub shift: f64,
}

/// `LocalAtten`: a centre attending to its neighbours' `g1`.
#[derive(Debug, Clone)]
pub struct LocalAtten {
    pub mapq: Layer,
    pub mapkv: Layer,
    pub head_map: Layer,
    pub hidden: usize,
    pub heads: usize,
    pub smooth: bool,
    pub shift: f64,
}

impl Dpa2 {
    pub fn dim_out(&self) -> usize {
        self.repformers.g1_dim
            + if self.concat_output_tebd {
                self.type_embedding.dim()
            } else {
                0
            }
    }
}

fn env(at: &At, rcut: f64, rcut_smth: f64, protection: f64) -> Result<EnvParams, ModelError> {
    if !(rcut > 0.0 && rcut.is_finite() && rcut_smth < rcut) {
        return Err(at.err(format!(
            "need 0 < rcut and rcut_smth < rcut (rcut {rcut}, rcut_smth {rcut_smth})"
        )));
    }
    Ok(EnvParams {
        rcut,
        rcut_smth,
        protection,
    })
}

/// The three-body block's embedding (and, in strip mode, its pair-type embedding) under
/// `at`, checked against the type-embedding width `nt`.
pub(super) fn three_body_nets(
    at: &At,
    tebd_input: TebdInput,
    nt: usize,
) -> Result<(Net, Option<Net>), ModelError> {
    let embedding = single_net(at, "embeddings")?;
    let want = match tebd_input {
        TebdInput::Concat => 1 + 2 * nt,
        TebdInput::Strip => 1,
    };
    if embedding.n_in() != Some(want) || embedding.n_out().is_none() {
        return Err(at.err(format!(
            "the three-body embedding takes {:?} inputs, expected {want}",
            embedding.n_in()
        )));
    }
    let strip = match tebd_input {
        TebdInput::Strip => Some(single_net(at, "embeddings_strip")?),
        TebdInput::Concat => None,
    };
    if let Some(st) = &strip {
        if st.n_in() != Some(2 * nt) || st.n_out() != embedding.n_out() {
            return Err(at.err(format!(
                "the three-body strip embedding maps {:?} -> {:?}, expected {} -> {:?}",
                st.n_in(),
                st.n_out(),
                2 * nt,
                embedding.n_out()
            )));
        }
    }
    Ok((embedding, strip))
}

pub fn parse(at: At, ntypes_model: usize) -> Result<Dpa2, ModelError> {
    at.version(3, 1, 3)?;
    let ntypes = at.ntypes(ntypes_model)?;
    let dtype = dtype_of(&at)?;
    let smooth = at.bool_or("smooth", true)?;
    let protection = at.opt_f64("env_protection")?.unwrap_or(0.0);
    let exclude_types = at.pairs("exclude_types", ntypes)?;
    let type_embedding = parse_type_embedding(at.get("type_embedding")?.at(), ntypes)?;
    let nt = type_embedding.dim();

    // repinit: a se_atten block without attention.
    let ri = at.get("repinit_args")?;
    let ri = ri.at();
    let rv = at.get("repinit_variable")?;
    let rv = rv.at();
    let r_env = env(&ri, ri.f64("rcut")?, ri.f64("rcut_smth")?, protection)?;
    let r_nsel = ri.usize("nsel")?;
    let tebd_input = match ri.opt_str("tebd_input_mode")?.unwrap_or("concat") {
        "concat" => TebdInput::Concat,
        "strip" => TebdInput::Strip,
        other => return Err(ri.err(format!("unknown tebd_input_mode `{other}`"))),
    };
    let type_one_side = ri.bool_or("type_one_side", false)?;
    let embedding = single_net(&rv, "embeddings")?;
    let embedding_strip = match tebd_input {
        TebdInput::Strip => Some(single_net(&rv, "embeddings_strip")?),
        TebdInput::Concat => None,
    };
    let want_in = match (tebd_input, type_one_side) {
        (TebdInput::Concat, true) => 1 + nt,
        (TebdInput::Concat, false) => 1 + 2 * nt,
        (TebdInput::Strip, _) => 1,
    };
    if embedding.n_in() != Some(want_in) {
        return Err(rv.err(format!(
            "repinit embedding takes {:?} inputs, expected {want_in}",
            embedding.n_in()
        )));
    }
    let ng = embedding
        .n_out()
        .ok_or_else(|| rv.err("empty repinit embedding"))?;
    let axis = ri.usize("axis_neuron")?;
    if axis == 0 || axis > ng {
        return Err(ri.err(format!("axis_neuron {axis} must be in 1..={ng}")));
    }
    let repinit = Dpa1 {
        env: r_env,
        nnei: r_nsel,
        ntypes,
        stats: stats(&rv, ntypes, r_nsel, 4, dtype)?,
        axis_neuron: axis,
        tebd_input,
        type_one_side,
        smooth_type_embedding: smooth,
        concat_output_tebd: false,
        exclude_types: exclude_types.clone(),
        embedding,
        embedding_strip,
        type_embedding: type_embedding.clone(),
        attention: Vec::new(),
        dtype,
        norm_floor_sq: 1e-24,
    };
    let mut g1_in = ng * axis;

    let three_body = if ri.bool_or("use_three_body", false)? {
        let tv = at.get("repinit_three_body_variable")?;
        let tv = tv.at();
        let nnei = ri.usize("three_body_sel")?;
        let (embedding, embedding_strip) = three_body_nets(&tv, tebd_input, nt)?;
        g1_in += embedding.n_out().unwrap_or(0);
        Some(ThreeBody {
            env: env(
                &ri,
                ri.f64("three_body_rcut")?,
                ri.f64("three_body_rcut_smth")?,
                protection,
            )?,
            nnei,
            stats: stats(&tv, ntypes, nnei, 4, dtype)?,
            tebd_input,
            smooth,
            exclude_types: exclude_types.clone(),
            embedding,
            embedding_strip,
        })
    } else {
        None
    };

    // repformers.
    let fa = at.get("repformer_args")?;
    let fa = fa.at();
    let fv = at.get("repformers_variable")?;
    let fv = fv.at();
    let g1_dim = fa.usize("g1_dim")?;
    let g2_dim = fa.usize("g2_dim")?;
    let g1_shape_tranform = Layer::parse(at.get("g1_shape_tranform")?.at())?;
    if g1_shape_tranform.n_in() != g1_in || g1_shape_tranform.n_out() != g1_dim {
        return Err(at.err(format!(
            "g1_shape_tranform maps {} -> {}, expected {g1_in} -> {g1_dim}",
            g1_shape_tranform.n_in(),
            g1_shape_tranform.n_out()
        )));
    }
    let tebd_transform = if at.bool_or("add_tebd_to_repinit_out", false)? {
        let l = Layer::parse(at.get("tebd_transform")?.at())?;
        if l.n_in() != nt || l.n_out() != g1_dim {
            return Err(at.err("tebd_transform does not map the type embedding to g1_dim"));
        }
        Some(l)
    } else {
        None
    };
    let f_nsel = fa.usize("nsel")?;
    let activation = Activation::parse(fa.opt_str("activation_function")?.unwrap_or("tanh"), &fa)?;
    let update_style = UpdateStyle::parse(&fa, "res_avg")?;
    let f_axis = fa.usize("axis_neuron")?;
    if f_axis == 0 || f_axis > g2_dim.min(g1_dim) {
        return Err(fa.err(format!("axis_neuron {f_axis} too large for g1/g2 widths")));
    }
    let g2_embd = Layer::parse(fv.get("g2_embd")?.at())?;
    if g2_embd.n_in() != 1 || g2_embd.n_out() != g2_dim {
        return Err(fv.err("g2_embd must map 1 -> g2_dim"));
    }
    let mut layers = Vec::new();
    for l in fv.list("repformer_layers")? {
        layers.push(parse_layer(l.at(), g1_dim, g2_dim, f_axis, update_style)?);
    }
    if layers.len() != fa.usize_or("nlayers", layers.len())? {
        return Err(fa.err("nlayers differs from the stored repformer layers"));
    }
    let f_env = env(&fa, fa.f64("rcut")?, fa.f64("rcut_smth")?, protection)?;
    let repformers = Repformers {
        env: f_env,
        nnei: f_nsel,
        stats: stats(&fv, ntypes, f_nsel, 4, dtype)?,
        g1_dim,
        g2_dim,
        axis_neuron: f_axis,
        direct_dist: fa.bool_or("direct_dist", false)?,
        smooth,
        use_sqrt_nnei: fa.bool_or("use_sqrt_nnei", true)?,
        update_style,
        activation,
        exclude_types,
        g2_embd,
        layers,
    };
    // The model's list: the largest cutoff and width; DeePMD-kit requires them in one order.
    let mut blocks = vec![(r_env.rcut, r_nsel), (f_env.rcut, f_nsel)];
    if let Some(t) = &three_body {
        blocks.push((t.env.rcut, t.nnei));
    }
    blocks.sort_by(|a, b| a.0.total_cmp(&b.0));
    if blocks.windows(2).any(|w| w[0].1 > w[1].1) {
        return Err(at.err("DPA-2 blocks' cutoffs and nsel are not in the same order"));
    }
    let (rcut, nsel) = *blocks.last().expect("two blocks at least");
    Ok(Dpa2 {
        ntypes,
        rcut,
        nsel,
        type_embedding,
        repinit,
        three_body,
        g1_shape_tranform,
        tebd_transform,
        repformers,
        concat_output_tebd: at.bool_or("concat_output_tebd", true)?,
        dtype,
    })
}

fn parse_layer(
    la: At,
    g1: usize,
    g2: usize,
    axis: usize,
    style: UpdateStyle,
) -> Result<RepformerLayer, ModelError> {
    la.version(2, 1, 2)?;
    let lay = |key: &str| -> Result<Option<Layer>, ModelError> {
        match la.opt(key) {
            Some(c) if !c.v.is_null() => Ok(Some(Layer::parse(c.at())?)),
            _ => Ok(None),
        }
    };
    let need = |key: &str| -> Result<Layer, ModelError> {
        lay(key)?.ok_or_else(|| la.err(format!("missing {key}")))
    };
    let check = |key: &str, l: &Layer, n_in: usize, n_out: usize| -> Result<(), ModelError> {
        if l.n_in() != n_in || l.n_out() != n_out {
            return Err(la.err(format!(
                "{key} maps {} -> {}, expected {n_in} -> {n_out}",
                l.n_in(),
                l.n_out()
            )));
        }
        Ok(())
    };
    let b = |k: &str, d: bool| la.bool_or(k, d);
    let update_chnnl_2 = b("update_chnnl_2", true)?;
    let has_conv = b("update_g1_has_conv", true)?;
    let has_drrd = b("update_g1_has_drrd", true)?;
    let has_grrg = b("update_g1_has_grrg", true)?;
    let has_attn1 = b("update_g1_has_attn", true)?;
    let has_g1g1 = b("update_g2_has_g1g1", true)? && update_chnnl_2;
    let has_attn2 = b("update_g2_has_attn", true)? && update_chnnl_2;
    let update_h2 = b("update_h2", false)? && update_chnnl_2;
    let g1_out_conv = b("g1_out_conv", true)?;
    let g1_out_mlp = b("g1_out_mlp", true)?;
    let smooth = b("smooth", true)?;
    let linear1 = need("linear1")?;
    let mut in1 = if g1_out_mlp { 0 } else { g1 };
    if has_conv && !g1_out_conv {
        in1 += g2;
    }
    if has_grrg {
        in1 += axis * g2;
    }
    if has_drrd {
        in1 += axis * g1;
    }
    check("linear1", &linear1, in1, g1)?;
    let linear2 = if update_chnnl_2 {
        let l = need("linear2")?;
        check("linear2", &l, g2, g2)?;
        Some(l)
    } else {
        None
    };
    let proj_g1g2 = if has_conv {
        let l = need("proj_g1g2")?;
        if g1_out_conv {
            check("proj_g1g2", &l, g2, g1)?;
        } else {
            check("proj_g1g2", &l, g1, g2)?;
        }
        Some(l)
    } else {
        None
    };
    let proj_g1g1g2 = if has_g1g1 {
        let l = need("proj_g1g1g2")?;
        check("proj_g1g1g2", &l, g1, g2)?;
        Some(l)
    } else {
        None
    };
    let (attn2, attn2_g2, attn2_h2) = if has_attn2 || update_h2 {
        let m = la.get("attn2g_map")?;
        let m = m.at();
        let hidden = m.usize("hidden_dim")?;
        let heads = m.usize("head_num")?;
        let mapqk = Layer::parse(m.get("mapqk")?.at())?;
        check("attn2g_map.mapqk", &mapqk, g2, 2 * hidden * heads)?;
        let map = Atten2 {
            mapqk,
            hidden,
            heads,
            has_gate: m.bool_or("has_gate", false)?,
            smooth: m.bool_or("smooth", true)?,
            shift: m.opt_f64("attnw_shift")?.unwrap_or(20.0),
        };
        let g2_apply = if has_attn2 {
            let a = la.get("attn2_mh_apply")?;
            let a = a.at();
            let mapv = Layer::parse(a.get("mapv")?.at())?;
            let head_map = Layer::parse(a.get("head_map")?.at())?;
            check("attn2_mh_apply.mapv", &mapv, g2, g2 * heads)?;
            check("attn2_mh_apply.head_map", &head_map, g2 * heads, g2)?;
            let lm = LayerNorm::parse(la.get("attn2_lm")?.at())?;
            if lm.w.shape != [g2] {
                return Err(la.err("attn2_lm width differs from g2_dim"));
            }
            Some((mapv, head_map, lm))
        } else {
            None
        };
        let h2_apply = if update_h2 {
            let a = la.get("attn2_ev_apply")?;
            let hm = Layer::parse(a.at().get("head_map")?.at())?;
            check("attn2_ev_apply.head_map", &hm, heads, 1)?;
            Some(hm)
        } else {
            None
        };
        (Some(map), g2_apply, h2_apply)
    } else {
        (None, None, None)
    };
    let loc_attn = if has_attn1 {
        let a = la.get("loc_attn")?;
        let a = a.at();
        let hidden = a.usize("hidden_dim")?;
        let heads = a.usize("head_num")?;
        let mapq = Layer::parse(a.get("mapq")?.at())?;
        let mapkv = Layer::parse(a.get("mapkv")?.at())?;
        let head_map = Layer::parse(a.get("head_map")?.at())?;
        check("loc_attn.mapq", &mapq, g1, hidden * heads)?;
        check("loc_attn.mapkv", &mapkv, g1, (hidden + g1) * heads)?;
        check("loc_attn.head_map", &head_map, g1 * heads, g1)?;
        Some(LocalAtten {
            mapq,
            mapkv,
            head_map,
            hidden,
            heads,
            smooth: a.bool_or("smooth", true)?,
            shift: a.opt_f64("attnw_shift")?.unwrap_or(20.0),
        })
    } else {
        None
    };
    let g1_self_mlp = if g1_out_mlp {
        let l = need("g1_self_mlp")?;
        check("g1_self_mlp", &l, g1, g1)?;
        Some(l)
    } else {
        None
    };
    // Updates per channel, in the order the layer lists them.
    let n_g1 =
        usize::from(g1_out_mlp) + usize::from(has_conv && g1_out_conv) + 1 + usize::from(has_attn1);
    let n_g2 = if update_chnnl_2 {
        1 + usize::from(has_g1g1) + usize::from(has_attn2)
    } else {
        0
    };
    let n_h2 = usize::from(update_h2);
    Ok(RepformerLayer {
        update_chnnl_2,
        g1_out_conv,
        g1_out_mlp,
        has_grrg,
        has_drrd,
        linear1,
        linear2,
        proj_g1g2,
        proj_g1g1g2,
        attn2,
        attn2_g2,
        attn2_h2,
        loc_attn,
        g1_self_mlp,
        smooth,
        use_sqrt_nnei: b("use_sqrt_nnei", true)?,
        g1_residual: residuals(&la, style, "g1_residual", n_g1, g1)?,
        g2_residual: residuals(&la, style, "g2_residual", n_g2, g2)?,
        h2_residual: residuals(&la, style, "h2_residual", n_h2, 1)?,
    })
}
