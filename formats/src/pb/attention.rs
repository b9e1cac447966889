//! se_atten's attention layers (`NeighborGatedAttention` as TensorFlow's se_atten writes it).

use super::names::parse_attention;
use super::network::{layer_value, matching, Lay};
use super::{bad, dict, s, G, R};
use crate::tree::{Dict, NdArray, Value};

/// What the attention layers of se_atten share.
pub(super) struct Attn<'a> {
    pub(super) layers: usize,
    pub(super) nnei: usize,
    pub(super) embed_dim: usize,
    pub(super) hidden: usize,
    pub(super) dotr: bool,
    pub(super) mask: bool,
    pub(super) trainable_ln: bool,
    /// The first layer's epsilon (or the script's): the descriptor-level `ln_eps`.
    pub(super) ln_eps: f64,
    pub(super) precision: &'static str,
    pub(super) trainable: &'a Value,
}

/// `NeighborGatedAttention.serialize` as TensorFlow's se_atten writes it, with
/// `temperature: 1.0` (TF does not scale the logits) and each layer's own epsilon
/// (`attention_layer_{k}/layer_normalization/add/y`).
pub(super) fn attention(g: &G, a: &Attn) -> R<Value> {
    let mut params: Vec<Dict> = (0..a.layers).map(|_| Dict::new()).collect();
    for (name, (k, part, leaf), arr) in matching(g, parse_attention)? {
        let p = params.get_mut(k).ok_or_else(|| {
            bad(format!(
                "`{name}`: the graph has more attention layers than attn_layer = {}",
                a.layers
            ))
        })?;
        p.insert(format!("{part}/{leaf}"), Value::Array(arr));
    }
    let info = || -> Vec<(&'static str, Value)> {
        vec![
            ("nnei", Value::Int(a.nnei as i64)),
            ("embed_dim", Value::Int(a.embed_dim as i64)),
            ("hidden_dim", Value::Int(a.hidden as i64)),
            ("dotr", Value::Bool(a.dotr)),
            ("do_mask", Value::Bool(a.mask)),
            ("scaling_factor", Value::Float(1.0)),
            ("normalize", Value::Bool(true)),
            ("temperature", Value::Float(1.0)),
            ("precision", s(a.precision)),
        ]
    };
    let mut layers = Vec::with_capacity(a.layers);
    for (k, p) in params.iter().enumerate() {
        let get = |key: &str| -> R<NdArray> {
            p.get(key)
                .and_then(Value::as_array)
                .cloned()
                .ok_or_else(|| {
                    bad(format!(
                        "the graph has no constant `attention_layer_{k}/{key}`"
                    ))
                })
        };
        let qkv = |leaf: &str| -> R<NdArray> {
            let parts = ["c_query", "c_key", "c_value"]
                .map(|c| get(&format!("{c}/{leaf}")))
                .into_iter()
                .collect::<R<Vec<_>>>()?;
            concat_last(
                &parts.iter().collect::<Vec<_>>(),
                &format!("attention layer {k}"),
            )
        };
        let in_proj = projection(a, qkv("matrix")?, qkv("bias")?, a.embed_dim, 3 * a.hidden)
            .map_err(|e| e.context(&format!("attention_layer_{k}/c_query|c_key|c_value")))?;
        let out_proj = projection(
            a,
            get("c_out/matrix")?,
            get("c_out/bias")?,
            a.hidden,
            a.embed_dim,
        )
        .map_err(|e| e.context(&format!("attention_layer_{k}/c_out")))?;
        let gamma = get("layer_normalization/gamma")?;
        let beta = get("layer_normalization/beta")?;
        if gamma.shape != [a.embed_dim] || beta.shape != [a.embed_dim] {
            return Err(bad(format!(
                "attention_layer_{k}/layer_normalization: gamma/beta have shapes {:?}/{:?}, expected [{}]",
                gamma.shape, beta.shape, a.embed_dim
            )));
        }
        let eps = g
            .scalar_f64(&format!("attention_layer_{k}/layer_normalization/add/y"))?
            .unwrap_or(a.ln_eps);
        let ln = dict(vec![
            ("@class", s("LayerNorm")),
            ("@version", Value::Int(1)),
            ("eps", Value::Float(eps)),
            ("trainable", Value::Bool(a.trainable_ln)),
            ("precision", s(a.precision)),
            (
                "@variables",
                dict(vec![("w", Value::Array(gamma)), ("b", Value::Array(beta))]),
            ),
        ]);
        let mut att = vec![
            ("in_proj", in_proj),
            ("out_proj", out_proj),
            ("bias", Value::Bool(true)),
            ("smooth", Value::Bool(false)),
        ];
        att.extend(info());
        att.push(("num_heads", Value::Int(1)));
        let mut lay = vec![
            ("attention_layer", dict(att)),
            ("attn_layer_norm", ln),
            ("trainable_ln", Value::Bool(a.trainable_ln)),
            ("ln_eps", Value::Float(eps)),
        ];
        lay.extend(info());
        layers.push(dict(lay));
    }
    let mut items = vec![
        ("@class", s("NeighborGatedAttention")),
        ("@version", Value::Int(1)),
        ("scaling_factor", Value::Float(1.0)),
        ("normalize", Value::Bool(true)),
        ("temperature", Value::Float(1.0)),
        ("layer_num", Value::Int(a.layers as i64)),
    ];
    items.extend(info().into_iter().take(5));
    items.extend([
        ("trainable_ln", Value::Bool(a.trainable_ln)),
        ("ln_eps", Value::Float(a.ln_eps)),
        ("precision", s(a.precision)),
        ("attention_layers", Value::List(layers)),
    ]);
    Ok(dict(items))
}

/// An attention projection: a linear `Layer` with bias and no timestep.
fn projection(a: &Attn, w: NdArray, b: NdArray, n_in: usize, n_out: usize) -> R<Value> {
    if w.shape != [n_in, n_out] || b.shape != [n_out] {
        return Err(bad(format!(
            "weights {:?} and bias {:?} do not form a [{n_in}, {n_out}] projection",
            w.shape, b.shape
        )));
    }
    let l = Lay {
        n_in,
        n_out,
        w: None,
        b: None,
        idt: None,
        has_bias: true,
        timestep: false,
        activation: "none".into(),
        resnet: false,
        trainable: a.trainable.clone(),
    };
    Ok(layer_value(&l, w, Some(b), None, a.precision))
}

/// Last-axis concatenation (the q, k, v projections into one `in_proj`).
fn concat_last(parts: &[&NdArray], what: &str) -> R<NdArray> {
    let first = parts[0];
    let Some((_, lead)) = first.shape.split_last() else {
        return Err(bad(format!("{what}: scalar weights")));
    };
    let rows: usize = lead.iter().product();
    let mut width = 0;
    for p in parts {
        if p.dtype != first.dtype
            || p.shape.len() != first.shape.len()
            || p.shape[..lead.len()] != *lead
        {
            return Err(bad(format!(
                "{what}: query, key and value weights differ in shape or type"
            )));
        }
        width += p.shape[lead.len()];
    }
    let size = first.dtype.size();
    let mut bytes = Vec::with_capacity(rows * width * size);
    for r in 0..rows {
        for p in parts {
            let w = p.shape[lead.len()] * size;
            bytes.extend_from_slice(&p.bytes[r * w..(r + 1) * w]);
        }
    }
    let mut shape = lead.to_vec();
    shape.push(width);
    NdArray::from_bytes(first.dtype, shape, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_axis_concat() {
        let a = NdArray::from_f64(vec![2, 1], &[1.0, 2.0]);
        let b = NdArray::from_f64(vec![2, 2], &[3.0, 4.0, 5.0, 6.0]);
        let c = concat_last(&[&a, &b], "t").unwrap();
        assert_eq!(c.shape, vec![2, 3]);
        assert_eq!(c.to_f64_vec(), vec![1.0, 3.0, 4.0, 2.0, 5.0, 6.0]);
    }
}
