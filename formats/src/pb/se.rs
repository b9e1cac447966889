//! The smooth-edition descriptors se_e2_a / se_a, se_e2_r / se_r and se_e3 / se_at
//! (deepmd/tf/descriptor/{se_a,se_r,se_t}.py `serialize`).

use super::descriptor::{check_sel, env_mat, exclude_pairs, se_embeddings, stats, Desc};
use super::names::parse_filter;
use super::network::{matching, Collection, Net, NetSpec};
use super::script::{count, prec_name, J};
use super::{bad, dict, s, unsupported, G, R};
use crate::tree::Value;

/// What se_e2_a, se_e2_r and se_e3 share.
struct SeCommon {
    rcut: Value,
    rcut_smth: Value,
    sel_v: Value,
    sel: Vec<usize>,
    neuron_v: Value,
    neuron: Vec<usize>,
    activation: String,
    resnet_dt: bool,
    trainable: Value,
    precision: &'static str,
    exclude_v: Value,
    env_protection: Value,
    set_davg_zero: Value,
}

fn se_common(j: &J) -> R<SeCommon> {
    let (rcut, _) = j.number("rcut")?;
    let (rcut_smth, _) = j.number("rcut_smth")?;
    let (sel_v, sel) = j.counts("sel", &[])?;
    if j.get("sel").is_none() {
        return Err(bad("model definition: the descriptor has no `sel`"));
    }
    let (neuron_v, neuron) = j.counts("neuron", &[24, 48, 96])?;
    if neuron.is_empty() {
        return Err(bad("model definition: the descriptor's `neuron` is empty"));
    }
    if j.f64("env_protection", 0.0)? != 0.0 {
        return Err(unsupported(
            "env_protection != 0 (DeePMD-kit cannot convert it either)",
        ));
    }
    Ok(SeCommon {
        rcut,
        rcut_smth,
        sel_v,
        sel,
        neuron_v,
        neuron,
        activation: j.str("activation_function", "tanh")?,
        resnet_dt: j.bool("resnet_dt", false)?,
        trainable: j.or("trainable", Value::Bool(true)),
        precision: prec_name(&j.str("precision", "default")?)?,
        exclude_v: j.or("exclude_types", Value::List(vec![])),
        env_protection: j.or("env_protection", Value::Float(0.0)),
        set_davg_zero: j.or("set_davg_zero", Value::Bool(false)),
    })
}

impl SeCommon {
    fn spec(&self) -> NetSpec<'_> {
        NetSpec {
            neuron: &self.neuron,
            neuron_v: &self.neuron_v,
            activation: &self.activation,
            resnet_dt: self.resnet_dt,
            precision: self.precision,
            trainable: &self.trainable,
        }
    }

    fn last(&self) -> usize {
        self.neuron.last().copied().unwrap_or(0)
    }
}

/// se_e2_a / se_a, and se_e2_r / se_r (`radial`).
pub(super) fn se_a_or_r(g: &G, j: &J, type_map: &Value, radial: bool) -> R<Desc> {
    if !radial && j.str("tebd_input_mode", "concat")? == "strip" {
        return Err(unsupported("se_e2_a with tebd_input_mode = strip"));
    }
    let c = se_common(j)?;
    let ntypes = c.sel.len();
    if ntypes == 0 {
        return Err(bad("model definition: `sel` is empty"));
    }
    let nnei: usize = c.sel.iter().sum();
    // Graph truth: the node names say whether the nets are one-side.
    let tos = match g.type_one_side() {
        Some(t) => t,
        None => j.bool("type_one_side", true)?,
    };
    let excl = exclude_pairs(&c.exclude_v, ntypes)?;
    if tos && !excl.is_empty() {
        // TF masks a one-side descriptor's neighbour slots by their sel block, padding
        // included; dpmodel masks by the neighbour's type. Measured on graphs from
        // `deserialize_to_file`: 4e-4 (se_e2_a) and 3e-2 eV (se_e2_r) from TF's DeepPot.
        return Err(unsupported(format!(
            "one-side {} with exclude_types: TensorFlow masks excluded neighbours differently from the other backends, so the graph is a different model",
            if radial { "se_e2_r" } else { "se_e2_a" }
        )));
    }
    if !radial {
        check_sel(g, &c.sel)?;
    }
    let embeddings = se_embeddings(g, ntypes, if tos { 1 } else { 2 }, 1, &c.spec(), &excl)?;
    let vars = stats(g, ntypes, nnei, if radial { 1 } else { 4 })?;
    let common_head = vec![
        ("@class", s("Descriptor")),
        ("type", s(if radial { "se_r" } else { "se_e2_a" })),
        ("@version", Value::Int(2)),
        ("rcut", c.rcut.clone()),
        ("rcut_smth", c.rcut_smth.clone()),
        ("sel", c.sel_v.clone()),
        ("neuron", c.neuron_v.clone()),
    ];
    let mut items = common_head;
    let axis = if radial {
        1
    } else {
        let axis_v = j.or("axis_neuron", Value::Int(8));
        let axis =
            count(&axis_v).ok_or_else(|| bad("model definition: `axis_neuron` is not a count"))?;
        items.push(("axis_neuron", axis_v));
        axis
    };
    items.extend([
        ("resnet_dt", Value::Bool(c.resnet_dt)),
        ("trainable", c.trainable.clone()),
        ("type_one_side", Value::Bool(tos)),
        ("exclude_types", c.exclude_v.clone()),
        ("env_protection", c.env_protection.clone()),
        ("set_davg_zero", c.set_davg_zero.clone()),
        ("activation_function", s(&c.activation)),
        ("precision", s(c.precision)),
        ("embeddings", embeddings),
        ("env_mat", env_mat(&c.rcut, &c.rcut_smth)),
        ("@variables", vars),
        ("type_map", type_map.clone()),
        ("spin", Value::Null),
    ]);
    Ok(Desc {
        tree: dict(items),
        dim_out: c.last() * axis,
        ntypes,
        tebd_dim: 0,
    })
}

/// se_e3 / se_at / se_a_3be (deepmd/tf/descriptor/se_t.py): nets `(i, j)` for `i <= j` from
/// `filter_type_all/*_{l}_{i}_{j}`, all-zero nets for `i > j` (they are never used).
pub(super) fn se_e3(g: &G, j: &J, type_map: &Value) -> R<Desc> {
    let c = se_common(j)?;
    let ntypes = c.sel.len();
    if ntypes == 0 {
        return Err(bad("model definition: `sel` is empty"));
    }
    if !exclude_pairs(&c.exclude_v, ntypes)?.is_empty() {
        return Err(unsupported(
            "se_e3 with exclude_types (DeePMD-kit cannot convert it either)",
        ));
    }
    let nnei: usize = c.sel.iter().sum();
    let sp = c.spec();
    let mut coll = Collection::new(2, ntypes, "embedding_network")?;
    for i in 0..ntypes {
        for jj in 0..i {
            let mut net = Net::embedding(&format!("embedding net ({i}, {jj})"), 1, &sp, true)?;
            net.clear()?;
            coll.nets[i + ntypes * jj] = Some(net);
        }
    }
    for (name, f, a) in matching(g, parse_filter)? {
        let (layer, i, jj) = match (f.owner, f.nums.as_slice()) {
            (None, &[l, i, jj]) if i < ntypes && jj < ntypes => (l, i, jj),
            _ => {
                return Err(bad(format!(
                    "embedding-net node `{name}` is not an se_e3 net of {ntypes} types"
                )))
            }
        };
        if layer == 0 {
            return Err(bad(format!("`{name}`: layers are numbered from 1")));
        }
        let slot = &mut coll.nets[i + ntypes * jj];
        if slot.is_none() {
            *slot = Some(Net::embedding(
                &format!("embedding net ({i}, {jj})"),
                1,
                &sp,
                true,
            )?);
        }
        if let Some(net) = slot {
            net.set(layer - 1, f.kind, a, &name)?;
        }
    }
    let tree = dict(vec![
        ("@class", s("Descriptor")),
        ("type", s("se_e3")),
        ("@version", Value::Int(2)),
        ("rcut", c.rcut.clone()),
        ("rcut_smth", c.rcut_smth.clone()),
        ("sel", c.sel_v.clone()),
        ("neuron", c.neuron_v.clone()),
        ("resnet_dt", Value::Bool(c.resnet_dt)),
        ("set_davg_zero", c.set_davg_zero.clone()),
        ("activation_function", s(&c.activation)),
        ("precision", s(c.precision)),
        ("embeddings", coll.finish()?),
        ("env_mat", env_mat(&c.rcut, &c.rcut_smth)),
        ("exclude_types", c.exclude_v.clone()),
        ("env_protection", c.env_protection.clone()),
        ("@variables", stats(g, ntypes, nnei, 4)?),
        ("type_map", type_map.clone()),
        ("trainable", c.trainable.clone()),
    ]);
    Ok(Desc {
        tree,
        dim_out: c.last(),
        ntypes,
        tebd_dim: 0,
    })
}
