//! se_atten / dpa1 (deepmd/tf/descriptor/se_atten.py) and the model-level type embedding
//! (deepmd/tf/utils/type_embed.py).

use super::attention::{attention, Attn};
use super::descriptor::{check_sel, env_mat, exclude_pairs, se_embeddings, stats, Desc};
use super::names::{digits, Kind};
use super::network::{matching, Collection, Net, NetSpec};
use super::script::{count, prec_name, J};
use super::{bad, dict, ints, s, unsupported, G, R};
use crate::tree::Value;

/// The model-level type embedding (deepmd/tf/utils/type_embed.py `TypeEmbedNet.serialize`):
/// built from the script's `model.type_embedding`, or the TensorFlow defaults (`neuron [8]`, no
/// activation, no bias), with the widths and bias presence the graph's nodes show.
fn type_embedding(g: &G, jmodel: &J, ntypes: usize, type_map: &Value) -> R<(Value, usize, bool)> {
    let src = jmodel.get("type_embedding").map(J);
    let (mut neuron, resnet_dt, activation, precision, trainable, econf, mut use_bias) = match src {
        None => (
            vec![8],
            false,
            "None".to_string(),
            "default".to_string(),
            Value::Bool(true),
            false,
            false,
        ),
        Some(t) => (
            t.counts("neuron", &[8])?.1,
            t.bool("resnet_dt", false)?,
            match t.0.get("activation_function") {
                Some(Value::Null) => "None".to_string(),
                _ => t.str("activation_function", "tanh")?,
            },
            t.str("precision", "default")?,
            t.or("trainable", Value::Bool(true)),
            t.bool("use_econf_tebd", false)?,
            t.bool("use_tebd_bias", false)?,
        ),
    };
    if econf {
        return Err(unsupported(
            "type embedding from electronic configurations (use_econf_tebd)",
        ));
    }
    // Graph truth: widths of type_embed_net/matrix_{l}, bias presence.
    let mut widths = Vec::new();
    while let Some(shape) = g.shape(&format!("type_embed_net/matrix_{}", widths.len() + 1))? {
        match shape.as_slice() {
            &[_, o] => widths.push(o),
            _ => return Err(bad("type_embed_net matrices must be 2-d")),
        }
    }
    if !widths.is_empty() {
        neuron = widths;
        use_bias = g.has("type_embed_net/bias_1");
    }
    let precision = prec_name(&precision)?;
    let neuron_v = ints(&neuron);
    let sp = NetSpec {
        neuron: &neuron,
        neuron_v: &neuron_v,
        activation: &activation,
        resnet_dt,
        precision,
        trainable: &Value::Bool(true),
    };
    let mut net = Net::embedding("type embedding net", ntypes, &sp, use_bias)?;
    let parse = |n: &str| {
        let leaf = n.strip_prefix("type_embed_net/")?;
        let (kind, tail) = Kind::strip(leaf)?;
        digits(tail.strip_prefix('_')?).map(|l| (kind, l))
    };
    for (name, (kind, l), a) in matching(g, parse)? {
        if l == 0 {
            return Err(bad(format!("`{name}`: layers are numbered from 1")));
        }
        if kind == Kind::Bias && !use_bias {
            continue;
        }
        net.set(l - 1, kind, a, &name)?;
    }
    let tebd_dim = neuron.first().copied().unwrap_or(0);
    let tree = dict(vec![
        ("@class", s("TypeEmbedNet")),
        ("@version", Value::Int(2)),
        ("ntypes", Value::Int(ntypes as i64)),
        ("neuron", neuron_v.clone()),
        ("resnet_dt", Value::Bool(resnet_dt)),
        ("precision", s(precision)),
        ("activation_function", s(&activation)),
        ("trainable", trainable),
        ("padding", Value::Bool(true)),
        ("use_econf_tebd", Value::Bool(false)),
        ("use_tebd_bias", Value::Bool(use_bias)),
        ("type_map", type_map.clone()),
        ("embedding", net.finish()?),
    ]);
    Ok((tree, tebd_dim, use_bias))
}

/// se_atten / dpa1 (deepmd/tf/descriptor/se_atten.py `DescrptSeAtten.serialize`), with the
/// graph's `ln_eps`, one-side layout and type-embedding width, and TensorFlow's unscaled
/// attention logits (`temperature: 1.0`).
pub(super) fn se_atten(g: &G, j: &J, jmodel: &J, type_map: &Value) -> R<Desc> {
    let dtype_name = j.str("type", "")?;
    if dtype_name == "se_atten_v2" || j.bool("smooth_type_embedding", false)? {
        return Err(unsupported(
            "se_atten_v2 / smooth_type_embedding: TensorFlow's implementation differs from the other backends (DeePMD-kit cannot convert it either)",
        ));
    }
    let ntypes = type_map.as_list().map_or(0, <[Value]>::len);
    if ntypes == 0 {
        return Err(bad("se_atten needs a type_map"));
    }
    let nnei = match j.get("sel") {
        Some(Value::List(l)) => l
            .iter()
            .map(|x| count(x).ok_or_else(|| bad("model definition: `sel` holds a non-count")))
            .sum::<R<usize>>()?,
        Some(v) => count(v).ok_or_else(|| bad("model definition: `sel` is not a count"))?,
        None => return Err(bad("model definition: the descriptor has no `sel`")),
    };
    let (rcut, _) = j.number("rcut")?;
    let (rcut_smth, _) = j.number("rcut_smth")?;
    let (neuron_v, neuron) = j.counts("neuron", &[25, 50, 100])?;
    let embed_dim = neuron
        .last()
        .copied()
        .ok_or_else(|| bad("model definition: the descriptor's `neuron` is empty"))?;
    let axis_v = j.or("axis_neuron", Value::Int(8));
    let axis =
        count(&axis_v).ok_or_else(|| bad("model definition: `axis_neuron` is not a count"))?;
    let resnet_dt = j.bool("resnet_dt", false)?;
    let trainable = j.or("trainable", Value::Bool(true));
    let activation = j.str("activation_function", "tanh")?;
    let precision = prec_name(&j.str("precision", "default")?)?;
    let attn = j.usize("attn", 128)?;
    let attn_layer = j.usize("attn_layer", 2)?;
    let attn_dotr = j.bool("attn_dotr", true)?;
    let attn_mask = j.bool("attn_mask", false)?;
    let mut strip = j.str("tebd_input_mode", "concat")? == "strip";
    if let Some(v) = j.get("stripped_type_embedding") {
        strip = v
            .as_bool()
            .ok_or_else(|| bad("model definition: `stripped_type_embedding` is not a bool"))?;
    }
    if j.f64("scaling_factor", 1.0)? != 1.0
        || !j.bool("normalize", true)?
        || j.get("temperature").is_some()
        || !j.bool("concat_output_tebd", true)?
        || j.f64("env_protection", 0.0)? != 0.0
    {
        return Err(unsupported(
            "se_atten with scaling_factor != 1, normalize = false, a temperature, concat_output_tebd = false or env_protection != 0 (TensorFlow does not implement them)",
        ));
    }
    let trainable_ln = j.bool("trainable_ln", true)?;
    let mut tos = j.bool("type_one_side", true)?;
    if strip {
        // Graph truth: the strip net's name says which side.
        if g.has("filter_type_all/matrix_1_two_side_ebd") {
            tos = false;
        } else if g.has("filter_type_all/matrix_1_one_side_ebd") {
            tos = true;
        }
        if tos {
            return Err(unsupported(
                "se_atten with tebd_input_mode = strip and type_one_side = true (DeePMD-kit cannot convert it either)",
            ));
        }
    }
    check_sel(g, &[nnei])?;

    let (tebd_tree, tebd_dim, use_tebd_bias) = type_embedding(g, jmodel, ntypes, type_map)?;
    let mut embd_in = if strip {
        1
    } else if tos {
        1 + tebd_dim
    } else {
        1 + 2 * tebd_dim
    };
    if let Some(shape) = g.shape("filter_type_all/matrix_1")? {
        embd_in = *shape
            .first()
            .ok_or_else(|| bad("filter_type_all/matrix_1 is not a matrix"))?;
        if !strip {
            tos = embd_in == 1 + tebd_dim;
        }
    }

    // Layer-norm epsilon: the graph's constant, else the script's (TF maps null to 1e-3).
    let ln_eps = match g.scalar_f64("attention_layer_0/layer_normalization/add/y")? {
        Some(e) => e,
        None => match j.get("ln_eps") {
            Some(v) => v
                .as_f64()
                .ok_or_else(|| bad("model definition: `ln_eps` is not a number"))?,
            None => 1e-3,
        },
    };

    let temperature = Value::Float(1.0);
    let attention = attention(
        g,
        &Attn {
            layers: attn_layer,
            nnei,
            embed_dim,
            hidden: attn,
            dotr: attn_dotr,
            mask: attn_mask,
            trainable_ln,
            ln_eps,
            precision,
            trainable: &trainable,
        },
    )?;

    let exclude_v = j.or("exclude_types", Value::List(vec![]));
    let excl = exclude_pairs(&exclude_v, ntypes)?;
    let sp = NetSpec {
        neuron: &neuron,
        neuron_v: &neuron_v,
        activation: &activation,
        resnet_dt,
        precision,
        trainable: &trainable,
    };
    let embeddings = se_embeddings(g, ntypes, 0, embd_in, &sp, &excl)?;
    let mut items = vec![
        ("@class", s("Descriptor")),
        ("type", s("dpa1")),
        ("@version", Value::Int(2)),
        ("rcut", rcut.clone()),
        ("rcut_smth", rcut_smth.clone()),
        ("sel", ints(&[nnei])),
        ("ntypes", Value::Int(ntypes as i64)),
        ("neuron", neuron_v.clone()),
        ("axis_neuron", axis_v),
        ("set_davg_zero", j.or("set_davg_zero", Value::Bool(true))),
        ("attn", Value::Int(attn as i64)),
        ("attn_layer", Value::Int(attn_layer as i64)),
        ("attn_dotr", Value::Bool(attn_dotr)),
        ("attn_mask", Value::Bool(attn_mask)),
        ("activation_function", s(&activation)),
        ("resnet_dt", Value::Bool(resnet_dt)),
        ("smooth_type_embedding", Value::Bool(false)),
        ("tebd_input_mode", s(if strip { "strip" } else { "concat" })),
        ("trainable_ln", Value::Bool(trainable_ln)),
        ("ln_eps", Value::Float(ln_eps)),
        ("precision", s(precision)),
        ("embeddings", embeddings),
        ("attention_layers", attention),
        ("env_mat", env_mat(&rcut, &rcut_smth)),
        ("exclude_types", exclude_v),
        ("env_protection", j.or("env_protection", Value::Float(0.0))),
        ("@variables", stats(g, ntypes, nnei, 4)?),
        ("type_map", type_map.clone()),
        ("trainable", trainable.clone()),
        ("type_one_side", Value::Bool(tos)),
        ("spin", Value::Null),
        ("type_embedding", tebd_tree),
        ("use_tebd_bias", Value::Bool(use_tebd_bias)),
        ("tebd_dim", Value::Int(tebd_dim as i64)),
    ];
    if strip {
        let mut coll = Collection::new(0, ntypes, "embedding_network")?;
        let parse = |n: &str| {
            let leaf = n.strip_prefix("filter_type_all/")?;
            let (kind, tail) = Kind::strip(leaf)?;
            let l = digits(tail.strip_prefix('_')?.strip_suffix("_two_side_ebd")?)?;
            Some((kind, l))
        };
        for (name, (kind, l), a) in matching(g, parse)? {
            if l == 0 {
                return Err(bad(format!("`{name}`: layers are numbered from 1")));
            }
            if coll.nets[0].is_none() {
                coll.nets[0] = Some(Net::embedding(
                    "strip embedding net",
                    2 * tebd_dim,
                    &sp,
                    true,
                )?);
            }
            if let Some(net) = &mut coll.nets[0] {
                net.set(l - 1, kind, a, &name)?;
            }
        }
        items.push(("embeddings_strip", coll.finish()?));
    }
    items.extend([
        ("scaling_factor", Value::Float(1.0)),
        ("normalize", Value::Bool(true)),
        ("temperature", temperature),
        ("concat_output_tebd", Value::Bool(true)),
        ("use_econf_tebd", Value::Bool(false)),
    ]);
    Ok(Desc {
        tree: dict(items),
        dim_out: embed_dim * axis,
        ntypes,
        tebd_dim,
    })
}
