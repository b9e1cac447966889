//! The se_atten family: DPA-1 (`/DescrptDPA1/`, tree type `dpa1`, also written `se_atten`)
//! and se_atten_v2 (`/DescrptSeAttenV2/`). Their block `DescrptBlockSeAtten/` holds the
//! environment matrix and its statistics, the embedding network `EN/` (and in strip mode the
//! type network, traced first: `EN/` the type network, `EN_1/` the radial one), the attention
//! layers `NeighborGatedAttention/NeighborGatedAttentionLayer[_l]/` (`GatedAttentionLayer/`
//! with `in_proj` and `out_proj`, then `LayerNorm/`); the type embedding is
//! `TypeEmbedNet/TypeEmbedNetConsistent/EN/`.
//!
//! The options are read from the program's shape: `tebd_input_mode` from the number of
//! embedding networks, `type_one_side` from their input widths, `normalize` from the
//! `p_norm`s of the attention, `attn_dotr` from `r̂·r̂ᵀ`, `smooth_type_embedding` from the
//! shifted logits (`(w + 20)·sw·sw − 20`) or the switch on the type network's output,
//! the attention scale and `ln_eps` from their constants, `concat_output_tebd` from the
//! descriptor's final `concat`.

use std::collections::BTreeMap;

use super::layers::{self, Roles};
use super::program::{split_scope, Op};
use super::{bad, dict, f32_decimal, ints, s, se_a, unsupported, Ctx};
use crate::tree::{DType, Value};
use crate::FormatError;

type Layers = BTreeMap<(String, u32), Roles>;

/// The layers of `parent` (`parent` + `MLPLayer[_k]`) in call order.
fn layers_of(layers: &Layers, parent: &str) -> Vec<(u32, Roles)> {
    layers
        .iter()
        .filter(|((p, _), _)| p == parent)
        .map(|((_, k), r)| (*k, r.clone()))
        .collect()
}

/// The static dims of the first input of the `matmul` that reads weight `w`.
fn input_dims(ctx: &Ctx, w: Option<&str>) -> Option<Vec<i64>> {
    let prog = &ctx.prog;
    let v = prog.params.get(w?)?.value;
    let &(i, _) = prog
        .uses(v)
        .iter()
        .find(|&&(i, k)| k == 1 && prog.ops[i].kind == "1.matmul")?;
    let x = *prog.ops[i].ins.first()?;
    Some(prog.value_type(x)?.dims.clone())
}

fn precision_name(dtype: DType) -> Result<&'static str, FormatError> {
    match dtype {
        DType::F64 => Ok("float64"),
        DType::F32 => Ok("float32"),
        other => Err(unsupported(format!(
            "{} weights; dpc reads float64 and float32 models",
            other.name()
        ))),
    }
}

/// The shortest decimal `x` (up to 17 significant digits) near `estimate` for which
/// `reproduces(x)` holds: how a user typed the number a program stores in another form.
fn shortest_decimal(estimate: f64, reproduces: impl Fn(f64) -> bool) -> Option<f64> {
    if !estimate.is_finite() {
        return None;
    }
    for digits in 1..=17usize {
        let text = format!("{:.*e}", digits - 1, estimate);
        let (mantissa, exp) = text.split_once('e')?;
        let m: f64 = mantissa.parse().ok()?;
        let exp: i32 = exp.parse().ok()?;
        let ulp = 10f64.powi(1 - digits as i32);
        for dm in [0.0, -ulp, ulp] {
            let candidate: f64 = format!("{:.*}e{exp}", digits - 1, m + dm).parse().ok()?;
            if reproduces(candidate) {
                return Some(candidate);
            }
        }
    }
    None
}

/// The type embedding `TypeEmbedNet/TypeEmbedNetConsistent/EN/`: one-hot types (`eye`)
/// through a linear network, a zero row appended for padding.
struct TypeEmbedding {
    value: Value,
    dim: usize,
    bias: bool,
}

fn type_embedding(
    ctx: &mut Ctx,
    root: &str,
    type_map: &[String],
    layers: &Layers,
) -> Result<TypeEmbedding, FormatError> {
    let ntypes = type_map.len();
    // Traced once per use (strip mode computes the full table again outside `TypeEmbedNet/`);
    // each parameter is placed at its first use.
    let parents: Vec<&String> = layers
        .keys()
        .map(|(p, _)| p)
        .filter(|p| p.starts_with(root) && p.ends_with("/TypeEmbedNetConsistent/EN/"))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let [parent] = parents[..] else {
        return Err(bad(format!(
            "{root}: {} type embedding networks",
            parents.len()
        )));
    };
    let parent = parent.clone();
    let net = layers_of(layers, &parent);
    // The input of every call: `eye(ntypes)`; a parameter there is an electronic-configuration
    // table.
    let first = net.first().and_then(|(_, r)| r.w.clone());
    let prog = &ctx.prog;
    let calls: Vec<Option<&str>> = first
        .as_deref()
        .and_then(|w| prog.params.get(w))
        .map(|p| prog.uses(p.value))
        .unwrap_or_default()
        .iter()
        .map(|&(i, k)| (&prog.ops[i], k))
        .filter(|(op, k)| *k == 1 && op.kind == "1.matmul" && op.scope.is_some())
        .map(|(op, _)| {
            let x = *op.ins.first()?;
            prog.producer(x).map(|p| p.kind.as_str())
        })
        .collect();
    if calls.contains(&Some("p")) {
        return Err(unsupported(
            "type embeddings from electronic configurations (use_econf_tebd)",
        ));
    }
    if calls.is_empty() || calls.iter().any(|&k| k != Some("1.eye")) {
        return Err(bad(format!(
            "{parent}: the type embedding input is not eye(ntypes)"
        )));
    }
    let n = layers::embedding_network(ctx, &parent, &net, "Linear")?;
    if n.in_dim != ntypes || n.neuron.len() != 1 || n.activation != "Linear" || n.resnet_dt {
        return Err(unsupported(format!(
            "{parent}: a type embedding network {} → {:?} ({}) DeePMD-kit does not build",
            n.in_dim, n.neuron, n.activation
        )));
    }
    let dim = n.neuron[0];
    let value = dict(vec![
        ("@class", s("TypeEmbedNet")),
        ("@version", Value::Int(2)),
        ("ntypes", Value::Int(ntypes as i64)),
        ("neuron", ints(&n.neuron)),
        ("resnet_dt", Value::Bool(false)),
        ("precision", s(n.precision)),
        ("activation_function", s("Linear")),
        // Not recoverable: Paddle exports every weight as trainable.
        ("trainable", Value::Bool(true)),
        ("padding", Value::Bool(true)),
        ("use_econf_tebd", Value::Bool(false)),
        ("use_tebd_bias", Value::Bool(n.bias)),
        ("type_map", super::strs(type_map)),
        ("embedding", n.value),
    ]);
    Ok(TypeEmbedding {
        value,
        dim,
        bias: n.bias,
    })
}

/// What one `NeighborGatedAttentionLayer` computes besides its weights.
#[derive(Clone, Copy, PartialEq)]
struct AttnOptions {
    hidden: usize,
    normalize: bool,
    dotr: bool,
    smooth: bool,
    /// The logit scale `(hidden·scaling_factor)^-1/2` (or `temperature`), and whether the
    /// program holds it as float32.
    scale: (f64, bool),
    ln_eps: f64,
}

fn ops_in<'a>(ctx: &'a Ctx, scope: &str) -> impl Iterator<Item = &'a Op> + 'a {
    ctx.prog.in_scope(scope).iter().map(|&i| &ctx.prog.ops[i])
}

/// The options of the attention layer whose `GatedAttentionLayer/` scope is `gal` and whose
/// `LayerNorm/` scope is `ln`.
fn attention_options(
    ctx: &Ctx,
    gal: &str,
    ln: &str,
    hidden: usize,
) -> Result<AttnOptions, FormatError> {
    let prog = &ctx.prog;
    let unknown = |what: &str| unsupported(format!("{gal}: {what} dpc does not recognise"));
    let normalize = ops_in(ctx, gal).any(|op| op.kind == "1.p_norm");
    // dotr: r̂·r̂ᵀ, a matmul of a value with its own transpose.
    let dotr = ops_in(ctx, gal).any(|op| {
        op.kind == "1.matmul"
            && op.ins.len() == 2
            && prog
                .producer(op.ins[1])
                .is_some_and(|t| t.kind == "1.transpose" && t.ins.first() == Some(&op.ins[0]))
    });
    // smooth: softmax((w + 20)·sw_i·sw_j − 20); otherwise softmax of the masked logits.
    let softmax: Vec<&Op> = ops_in(ctx, gal)
        .filter(|op| op.kind == "1.softmax")
        .collect();
    let [softmax] = softmax[..] else {
        return Err(unknown("an attention without one softmax"));
    };
    let smooth = match softmax.ins.first().and_then(|&v| prog.producer(v)) {
        Some(op) if op.kind == "1.scale" && op.attr_f64("bias")? == -20.0 => true,
        Some(op) if op.kind == "1.masked_fill" => false,
        _ => return Err(unknown("attention logits")),
    };
    // The scale of q in q·kᵀ: a `scale` op feeding operand 0 of a matmul.
    let scales: Vec<&Op> = ops_in(ctx, gal)
        .filter(|op| op.kind == "1.matmul")
        .filter_map(|op| prog.producer(*op.ins.first()?))
        .filter(|p| p.kind == "1.scale")
        .collect();
    let [q_scale] = scales[..] else {
        return Err(unknown("a query scaling"));
    };
    if q_scale.attr_f64("bias")? != 0.0 || q_scale.ins.len() < 2 {
        return Err(unknown("a query scaling"));
    }
    let scale = prog.constant(q_scale.ins[1])?;
    // LayerNorm: (x − mean) / sqrt(var + eps); eps is the bias of the scale before sqrt.
    let eps: Vec<f64> = ops_in(ctx, ln)
        .filter(|op| op.kind == "1.scale")
        .filter(|op| {
            op.outs.first().is_some_and(|&o| {
                prog.uses(o)
                    .iter()
                    .any(|&(i, _)| prog.ops[i].kind == "1.sqrt")
            })
        })
        .map(|op| op.attr_f64("bias"))
        .collect::<Result<_, _>>()?;
    let [eps] = eps[..] else {
        return Err(unsupported(format!(
            "{ln}: a layer normalisation dpc does not recognise"
        )));
    };
    Ok(AttnOptions {
        hidden,
        normalize,
        dotr,
        smooth,
        scale,
        ln_eps: f32_decimal(eps),
    })
}

/// `scaling_factor` and `temperature` from the logit scale: the shorter decimal of
/// `(hidden·sf)^-1/2 = scale` and `temperature = scale` (they evaluate alike).
fn scaling(hidden: usize, (scale, is_f32): (f64, bool)) -> Result<(f64, Option<f64>), FormatError> {
    let h = hidden as f64;
    let same = |x: f64| {
        if is_f32 {
            (x as f32) == (scale as f32)
        } else {
            x == scale
        }
    };
    let sf = shortest_decimal(1.0 / (scale * scale * h), |sf| same((h * sf).powf(-0.5)));
    let temp = shortest_decimal(scale, same);
    let digits = |x: f64| format!("{x:e}").split('e').next().map_or(99, |m| m.len());
    match (sf, temp) {
        (Some(sf), Some(t)) if digits(t) < digits(sf) => Ok((1.0, Some(t))),
        (Some(sf), _) => Ok((sf, None)),
        (None, Some(t)) => Ok((1.0, Some(t))),
        (None, None) => Err(bad(format!("an attention scale {scale}"))),
    }
}

fn layer_norm(
    ctx: &mut Ctx,
    scope: &str,
    roles: &Roles,
    eps: f64,
    width: usize,
) -> Result<Value, FormatError> {
    let (Some(w), Some(b)) = (roles.w.as_deref(), roles.b.as_deref()) else {
        return Err(bad(format!(
            "{scope}: the layer normalisation has no weight or bias"
        )));
    };
    let (wa, ba) = (ctx.array(w)?, ctx.array(b)?);
    if wa.shape != [width] || ba.shape != [width] || wa.dtype != ba.dtype {
        return Err(bad(format!(
            "{scope}: weight {:?} and bias {:?} for width {width}",
            wa.shape, ba.shape
        )));
    }
    let precision = precision_name(wa.dtype)?;
    Ok(dict(vec![
        ("@class", s("LayerNorm")),
        ("@version", Value::Int(1)),
        ("eps", Value::Float(eps)),
        // Not recoverable (trainable_ln): true.
        ("trainable", Value::Bool(true)),
        ("precision", s(precision)),
        (
            "@variables",
            dict(vec![("w", ctx.take(w)), ("b", ctx.take(b))]),
        ),
    ]))
}

/// The smoothing of strip mode: the type network's output, gathered per pair, is multiplied
/// by the switch before it meets the radial network's output (`gg_s·(gg_t·sw) + gg_s`), or
/// meets it directly (`gg_s·gg_t + gg_s`).
fn strip_smooth(ctx: &Ctx, type_out: i64, radial_out: i64) -> Result<bool, FormatError> {
    let prog = &ctx.prog;
    let through = ["1.take_along_axis", "1.reshape"];
    let unknown = || unsupported("a strip-mode type embedding dpc does not recognise");
    let first = prog.reach(type_out, &through, &["1.multiply"]);
    let [(i, k)] = first[..] else {
        return Err(unknown());
    };
    let op = &prog.ops[i];
    let other = |op: &Op, k: usize| op.ins.get(1 - k.min(1)).copied();
    if other(op, k) == Some(radial_out) {
        return Ok(false);
    }
    let out = *op.outs.first().ok_or_else(unknown)?;
    let second = prog.reach(out, &[], &["1.multiply"]);
    match second[..] {
        [(j, k2)] if other(&prog.ops[j], k2) == Some(radial_out) => Ok(true),
        _ => Err(unknown()),
    }
}

pub fn descriptor(
    ctx: &mut Ctx,
    root: &str,
    v2: bool,
    type_map: &[String],
    layers: &Layers,
    dim_descrpt: usize,
    rcut: f64,
) -> Result<Value, FormatError> {
    let ntypes = type_map.len();
    let block = format!("{root}DescrptBlockSeAtten/");
    if ctx.prog.in_scope(&block).is_empty() {
        return Err(bad(format!("{root}: no DescrptBlockSeAtten scope")));
    }
    for (parent, _) in layers.keys() {
        let known = parent.starts_with(&block) || parent.ends_with("/TypeEmbedNetConsistent/EN/");
        if parent.starts_with(root) && !known {
            return Err(unsupported(format!("layers in {parent}")));
        }
    }
    let (davg, dstd) = se_a::statistics(ctx, &block)?;
    let shape = ctx.array(&davg)?.shape.clone();
    let nnei = match shape[..] {
        [n, nnei, 4] if n == ntypes && ctx.array(&dstd)?.shape == shape => nnei,
        _ => {
            return Err(bad(format!(
                "{block}: davg/dstd of shape {shape:?} for {ntypes} types"
            )))
        }
    };
    let tebd = type_embedding(ctx, root, type_map, layers)?;

    // Embedding networks: `EN[_k]/` in call order; the radial one reads [-1, nnei, in].
    let mut nets: BTreeMap<u32, String> = BTreeMap::new();
    for (parent, _) in layers.keys() {
        if let Some((p, "EN", k)) = split_scope(parent) {
            if p == block {
                nets.insert(k, parent.clone());
            }
        }
    }
    let is_radial = |ctx: &Ctx, parent: &str| {
        let w = layers_of(layers, parent)
            .first()
            .and_then(|(_, r)| r.w.clone());
        matches!(input_dims(ctx, w.as_deref()).as_deref(), Some([-1, n, _]) if *n == nnei as i64)
    };
    let (radial_scope, strip_scope) = match nets.values().collect::<Vec<_>>()[..] {
        [r] if is_radial(ctx, r) => (r.to_string(), None),
        [t, r] if is_radial(ctx, r) && !is_radial(ctx, t) => (r.to_string(), Some(t.to_string())),
        _ => {
            return Err(bad(format!(
                "{block}: {} embedding networks, not the radial one (+ the type one)",
                nets.len()
            )))
        }
    };
    if v2 && strip_scope.is_none() {
        return Err(bad(format!("{root}: se_atten_v2 without its type network")));
    }
    let radial_net = layers_of(layers, &radial_scope);
    let radial = layers::embedding_network(ctx, &radial_scope, &radial_net, "linear")?;
    let nt = tebd.dim;
    let (strip, type_one_side) = match &strip_scope {
        None => {
            let one_side = match radial.in_dim {
                d if d == 1 + nt => true,
                d if d == 1 + 2 * nt => false,
                d => {
                    return Err(bad(format!(
                        "{radial_scope}: {d} inputs for type embeddings of {nt}"
                    )))
                }
            };
            (None, one_side)
        }
        Some(scope) => {
            let net = layers_of(layers, scope);
            let n = layers::embedding_network(ctx, scope, &net, "linear")?;
            let one_side = match n.in_dim {
                d if d == nt => true,
                d if d == 2 * nt => false,
                d => {
                    return Err(bad(format!(
                        "{scope}: {d} inputs for type embeddings of {nt}"
                    )))
                }
            };
            if radial.in_dim != 1
                || n.neuron != radial.neuron
                || n.activation != radial.activation
                || n.precision != radial.precision
            {
                return Err(bad(format!("{block}: the type and radial networks differ")));
            }
            (Some((scope.clone(), net, n)), one_side)
        }
    };
    let ng = *radial.neuron.last().unwrap_or(&0);
    let precision = radial.precision;

    // Attention layers, in order.
    let nga = format!("{block}NeighborGatedAttention/");
    let mut attn_scopes: BTreeMap<u32, String> = BTreeMap::new();
    for (parent, _) in layers.keys() {
        if !parent.starts_with(&nga) {
            continue;
        }
        let layer_scope = split_scope(parent)
            .filter(|(_, c, k)| *c == "GatedAttentionLayer" && *k == 0)
            .and_then(|(p, _, _)| split_scope(p).map(|x| (p, x)));
        match layer_scope {
            Some((p, (n, "NeighborGatedAttentionLayer", l))) if n == nga => {
                attn_scopes.insert(l, p.to_string());
            }
            _ => return Err(unsupported(format!("layers in {parent}"))),
        }
    }
    if attn_scopes.keys().copied().ne(0..attn_scopes.len() as u32) {
        return Err(bad(format!("{nga}: attention layers out of order")));
    }
    let norms = layers::layer_norms(ctx)?;
    let mut attention = Vec::new();
    let mut options: Option<AttnOptions> = None;
    for scope in attn_scopes.values() {
        let gal = format!("{scope}GatedAttentionLayer/");
        let ln = format!("{scope}LayerNorm/");
        let net = layers_of(layers, &gal);
        let [(0, in_roles), (1, out_roles)] = &net[..] else {
            return Err(bad(format!("{gal}: not an in_proj and an out_proj")));
        };
        let in_proj = layers::layer(ctx, &gal, 0, in_roles, false, "none")?;
        let out_proj = layers::layer(ctx, &gal, 1, out_roles, false, "none")?;
        let hidden = in_proj.out_dim / 3;
        if in_proj.in_dim != ng
            || in_proj.out_dim != 3 * hidden
            || out_proj.in_dim != hidden
            || out_proj.out_dim != ng
            || in_proj.activation.is_some()
            || out_proj.activation.is_some()
            || in_proj.bias != out_proj.bias
            || in_proj.timestep
            || out_proj.timestep
        {
            return Err(bad(format!(
                "{gal}: projections {}→{} and {}→{} for an embedding width {ng}",
                in_proj.in_dim, in_proj.out_dim, out_proj.in_dim, out_proj.out_dim
            )));
        }
        let opts = attention_options(ctx, &gal, &ln, hidden)?;
        if options.get_or_insert(opts) != &opts {
            return Err(bad(format!(
                "{nga}: attention layers with different options"
            )));
        }
        let roles = norms
            .get(&ln)
            .ok_or_else(|| bad(format!("{ln}: no layer normalisation")))?;
        let norm = layer_norm(ctx, &ln, roles, opts.ln_eps, ng)?;
        attention.push((in_proj, out_proj, norm));
    }

    // smooth_type_embedding: seen in the attention, and in strip mode on the type network.
    let strip_is_smooth = match &strip {
        None => None,
        Some((scope, net, _)) => {
            // A network's output: what the last op of its last layer's own scope returns.
            let last = |scope: &str, net: &[(u32, Roles)]| {
                let s = match net.last().map(|(k, _)| *k) {
                    Some(0) => format!("{scope}MLPLayer/"),
                    Some(k) => format!("{scope}MLPLayer_{k}/"),
                    None => return None,
                };
                ctx.prog.last_output(&s)
            };
            match (last(scope, net), last(&radial_scope, &radial_net)) {
                (Some(t), Some(r)) => Some(strip_smooth(ctx, t, r)?),
                _ => return Err(bad(format!("{block}: embedding outputs not found"))),
            }
        }
    };
    let smooth = match (options.map(|o| o.smooth), strip_is_smooth) {
        (Some(a), Some(b)) if a != b => {
            return Err(bad(format!(
                "{block}: the attention and the type network disagree on smoothing"
            )))
        }
        (Some(a), _) | (None, Some(a)) => a,
        // Concat mode without attention layers: no effect, DeePMD-kit's default.
        (None, None) => false,
    };
    if v2 && !smooth {
        return Err(bad(format!("{root}: se_atten_v2 without smoothing")));
    }

    // The output: [g·gᵀ[:axis_neuron]] (+ the atom's type embedding: concat_output_tebd).
    let concat_output_tebd = ops_in(ctx, root).any(|op| op.kind == "1.concat");
    let grr = dim_descrpt.saturating_sub(if concat_output_tebd { nt } else { 0 });
    if ng == 0 || grr == 0 || !grr.is_multiple_of(ng) {
        return Err(bad(format!(
            "{root}: the fitting input {dim_descrpt} does not match the embedding width {ng}"
        )));
    }
    let axis_neuron = grr / ng;
    let axis_slice = ops_in(ctx, &block).any(|op| {
        op.kind == "1.slice"
            && op
                .out_types
                .first()
                .and_then(|t| t.as_ref())
                .map(|t| &t.dims[..])
                == Some(&[-1, 4, axis_neuron as i64][..])
    });
    if !axis_slice || axis_neuron > ng {
        return Err(bad(format!(
            "{block}: axis_neuron {axis_neuron} is not the descriptor's slice"
        )));
    }

    let (rcut_smth, rcut_switch, protection) = se_a::env_mat(ctx, &block)?;
    if (rcut_switch - rcut).abs() >= 1e-5 * rcut.max(1.0) {
        return Err(bad(format!(
            "{block}: the switch ends at {rcut_switch}, buffer_rcut is {rcut}"
        )));
    }
    // Pair exclusions: a (ntypes+1)² mask, used only when some pair is excluded.
    let masks = layers::masks(ctx)?;
    if let Some(name) = masks.get(&format!("{block}PairExcludeMask/")) {
        let m = ctx.array(name)?;
        let n1 = ntypes + 1;
        if m.len() != n1 * n1 {
            return Err(bad(format!(
                "{block}: pair mask {name} of {} entries",
                m.len()
            )));
        }
        if (0..ntypes).any(|i| (0..ntypes).any(|j| m.get_i64(i * n1 + j) == Some(0))) {
            return Err(unsupported(
                "descriptor exclude_types (DeePMD-kit 3.2 cannot export them to Paddle, so no such file could be checked)",
            ));
        }
        ctx.mark(name);
    }

    // Options of a model without attention layers have no effect: DeePMD-kit's defaults.
    let o = options.unwrap_or(AttnOptions {
        hidden: 128,
        normalize: true,
        dotr: true,
        smooth,
        scale: ((128f64).powf(-0.5), false),
        ln_eps: 1e-5,
    });
    let (scaling_factor, temperature) = if attention.is_empty() {
        (1.0, None)
    } else {
        scaling(o.hidden, o.scale)?
    };
    let f = Value::Float;
    let temp = temperature.map_or(Value::Null, f);
    let common = |l: &mut Vec<(&str, Value)>| {
        l.extend([
            ("nnei", Value::Int(nnei as i64)),
            ("embed_dim", Value::Int(ng as i64)),
            ("hidden_dim", Value::Int(o.hidden as i64)),
        ]);
    };
    let mut layer_values = Vec::new();
    for (in_proj, out_proj, norm) in attention.drain(..) {
        let mut gated = Vec::new();
        common(&mut gated);
        gated.extend([
            ("num_heads", Value::Int(1)),
            ("dotr", Value::Bool(o.dotr)),
            ("do_mask", Value::Bool(false)),
            ("scaling_factor", f(scaling_factor)),
            ("normalize", Value::Bool(o.normalize)),
            ("temperature", temp.clone()),
            ("bias", Value::Bool(in_proj.bias)),
            ("smooth", Value::Bool(o.smooth)),
            ("precision", s(precision)),
            ("in_proj", in_proj.value),
            ("out_proj", out_proj.value),
        ]);
        let mut layer = Vec::new();
        common(&mut layer);
        layer.extend([
            ("dotr", Value::Bool(o.dotr)),
            ("do_mask", Value::Bool(false)),
            ("scaling_factor", f(scaling_factor)),
            ("normalize", Value::Bool(o.normalize)),
            ("temperature", temp.clone()),
            ("trainable_ln", Value::Bool(true)),
            ("ln_eps", f(o.ln_eps)),
            ("precision", s(precision)),
            ("attention_layer", dict(gated)),
            ("attn_layer_norm", norm),
        ]);
        layer_values.push(dict(layer));
    }
    let nlayers = layer_values.len();
    let mut attention_value = vec![
        ("@class", s("NeighborGatedAttention")),
        ("@version", Value::Int(1)),
        ("layer_num", Value::Int(nlayers as i64)),
    ];
    common(&mut attention_value);
    attention_value.extend([
        ("dotr", Value::Bool(o.dotr)),
        ("do_mask", Value::Bool(false)),
        ("scaling_factor", f(scaling_factor)),
        ("normalize", Value::Bool(o.normalize)),
        ("temperature", temp.clone()),
        ("trainable_ln", Value::Bool(true)),
        ("ln_eps", f(o.ln_eps)),
        ("precision", s(precision)),
        ("attention_layers", Value::List(layer_values)),
    ]);

    let davg_zero = ctx.all_zero(&davg)?;
    let stats = dict(vec![("davg", ctx.take(&davg)), ("dstd", ctx.take(&dstd))]);
    let mut d: Vec<(&str, Value)> = vec![
        ("@class", s("Descriptor")),
        ("type", s(if v2 { "se_atten_v2" } else { "dpa1" })),
        ("@version", Value::Int(2)),
        ("rcut", f(rcut)),
        ("rcut_smth", f(rcut_smth)),
        ("sel", ints(&[nnei])),
        ("ntypes", Value::Int(ntypes as i64)),
        ("neuron", ints(&radial.neuron)),
        ("axis_neuron", Value::Int(axis_neuron as i64)),
        ("tebd_dim", Value::Int(nt as i64)),
    ];
    if !v2 {
        let mode = if strip.is_some() { "strip" } else { "concat" };
        d.push(("tebd_input_mode", s(mode)));
    }
    d.extend([
        // Not stored: with set_davg_zero the statistics keep a zero davg.
        ("set_davg_zero", Value::Bool(davg_zero)),
        ("attn", Value::Int(o.hidden as i64)),
        ("attn_layer", Value::Int(nlayers as i64)),
        ("attn_dotr", Value::Bool(o.dotr)),
        ("attn_mask", Value::Bool(false)),
        ("activation_function", s(&radial.activation)),
        ("resnet_dt", Value::Bool(radial.resnet_dt)),
        ("scaling_factor", f(scaling_factor)),
        ("normalize", Value::Bool(o.normalize)),
        ("temperature", temp),
        ("trainable_ln", Value::Bool(true)),
        ("ln_eps", f(o.ln_eps)),
    ]);
    if !v2 {
        d.push(("smooth_type_embedding", Value::Bool(smooth)));
    }
    let embeddings = layers::shared_collection(ntypes, "embedding_network", radial.value);
    let mut strip_value =
        strip.map(|(_, _, n)| layers::shared_collection(ntypes, "embedding_network", n.value));
    d.extend([
        ("type_one_side", Value::Bool(type_one_side)),
        ("concat_output_tebd", Value::Bool(concat_output_tebd)),
        ("use_econf_tebd", Value::Bool(false)),
        ("use_tebd_bias", Value::Bool(tebd.bias)),
        ("type_map", super::strs(type_map)),
        ("precision", s(precision)),
        ("embeddings", embeddings),
    ]);
    if v2 {
        d.push((
            "embeddings_strip",
            strip_value.take().unwrap_or(Value::Null),
        ));
    }
    d.extend([
        ("attention_layers", dict(attention_value)),
        (
            "env_mat",
            dict(vec![
                ("rcut", f(rcut)),
                ("rcut_smth", f(rcut_smth)),
                ("protection", f(protection)),
                ("use_exp_switch", Value::Bool(false)),
            ]),
        ),
        ("type_embedding", tebd.value),
        ("exclude_types", Value::List(Vec::new())),
        ("env_protection", f(protection)),
        ("@variables", stats),
        // Not recoverable; DeePMD-kit's Paddle backend writes true too.
        ("trainable", Value::Bool(true)),
        ("spin", Value::Null),
    ]);
    if let Some(v) = strip_value {
        d.push(("embeddings_strip", v));
    }
    Ok(dict(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_scale_comes_back_as_typed() {
        let f32s = |x: f64| (x as f32) as f64;
        // (hidden·sf)^-1/2 with sf 1 and 0.5; temperature 0.8; all as float32 constants.
        assert_eq!(
            scaling(8, (f32s(8f64.powf(-0.5)), true)).unwrap(),
            (1.0, None)
        );
        assert_eq!(
            scaling(6, (f32s(3f64.powf(-0.5)), true)).unwrap(),
            (0.5, None)
        );
        assert_eq!(scaling(6, (f32s(0.8), true)).unwrap(), (1.0, Some(0.8)));
        // A float64 constant must be reproduced exactly.
        assert_eq!(scaling(6, (12f64.powf(-0.5), false)).unwrap(), (2.0, None));
        assert!(scaling(6, (f64::NAN, true)).is_err());
        assert_eq!(
            shortest_decimal(0.30000001192092896, |x| x as f32 == 0.3f32),
            Some(0.3)
        );
    }
}
