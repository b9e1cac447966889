//! Networks (deepmd/dpmodel/utils/network.py, built the way the TensorFlow serializers build
//! them): layers, embedding and fitting nets, network collections.

use super::names::Kind;
use super::{bad, dict, s, G, MAX_TYPES, MAX_ZERO_LAYER, R};
use crate::tree::{DType, NdArray, Value};

pub(super) struct Lay {
    pub(super) n_in: usize,
    pub(super) n_out: usize,
    pub(super) w: Option<NdArray>,
    pub(super) b: Option<NdArray>,
    pub(super) idt: Option<NdArray>,
    pub(super) has_bias: bool,
    /// dpmodel would give the layer a timestep (`resnet_dt` and a residual shape).
    pub(super) timestep: bool,
    pub(super) activation: String,
    pub(super) resnet: bool,
    pub(super) trainable: Value,
}

impl Lay {
    fn residual_shape(&self) -> bool {
        self.n_out == self.n_in || self.n_out == 2 * self.n_in
    }
}

#[derive(PartialEq)]
enum NetClass {
    Embedding { bias: bool },
    Fitting,
}

pub(super) struct Net {
    class: NetClass,
    label: String,
    in_dim: usize,
    neuron: Value,
    activation: String,
    resnet_dt: bool,
    precision: &'static str,
    layers: Vec<Lay>,
}

/// How to build one kind of network.
pub(super) struct NetSpec<'a> {
    pub(super) neuron: &'a [usize],
    pub(super) neuron_v: &'a Value,
    pub(super) activation: &'a str,
    pub(super) resnet_dt: bool,
    pub(super) precision: &'static str,
    pub(super) trainable: &'a Value,
}

/// Per-layer `trainable`: a bool repeated, or the list as given.
fn per_layer(trainable: &Value, n: usize, label: &str) -> R<Vec<Value>> {
    match trainable {
        Value::List(l) if l.len() >= n => Ok(l[..n].to_vec()),
        Value::List(_) => Err(bad(format!(
            "{label}: `trainable` lists fewer entries than the net has layers"
        ))),
        other => Ok(vec![other.clone(); n]),
    }
}

impl Net {
    /// dpmodel `EmbeddingNet(in_dim, neuron, ...)`: residual layers, one timestep each when
    /// `resnet_dt` and the shape allows.
    pub(super) fn embedding(label: &str, in_dim: usize, sp: &NetSpec, bias: bool) -> R<Net> {
        let tr = per_layer(sp.trainable, sp.neuron.len(), label)?;
        let mut layers = Vec::with_capacity(sp.neuron.len());
        let mut i_in = in_dim;
        for (k, &o) in sp.neuron.iter().enumerate() {
            layers.push(Lay {
                n_in: i_in,
                n_out: o,
                w: None,
                b: None,
                idt: None,
                has_bias: bias,
                timestep: sp.resnet_dt && (o == i_in || o == 2 * i_in),
                activation: sp.activation.to_string(),
                resnet: true,
                trainable: tr[k].clone(),
            });
            i_in = o;
        }
        Ok(Net {
            class: NetClass::Embedding { bias },
            label: label.to_string(),
            in_dim,
            neuron: sp.neuron_v.clone(),
            activation: sp.activation.to_string(),
            resnet_dt: sp.resnet_dt,
            precision: sp.precision,
            layers,
        })
    }

    /// dpmodel `FittingNet(in_dim, 1, neuron, ...)`: the hidden layers of an embedding net
    /// plus a linear output layer.
    pub(super) fn fitting(label: &str, in_dim: usize, sp: &NetSpec) -> R<Net> {
        let n = sp.neuron.len();
        let tr = per_layer(sp.trainable, n + 1, label)?;
        let hidden = NetSpec {
            trainable: &Value::List(tr[..n].to_vec()),
            ..*sp
        };
        let mut net = Net::embedding(label, in_dim, &hidden, true)?;
        net.class = NetClass::Fitting;
        net.layers.push(Lay {
            n_in: sp.neuron.last().copied().unwrap_or(in_dim),
            n_out: 1,
            w: None,
            b: None,
            idt: None,
            has_bias: true,
            timestep: false,
            activation: "none".into(),
            resnet: false,
            trainable: tr[n].clone(),
        });
        Ok(net)
    }

    /// All-zero weights (`NativeLayer.clear()`): the nets of excluded type pairs.
    pub(super) fn clear(&mut self) -> R<()> {
        let dt = dtype_of(self.precision);
        for l in &mut self.layers {
            if l.n_in.saturating_mul(l.n_out) > MAX_ZERO_LAYER {
                return Err(bad(format!(
                    "{}: layer {}x{} is too large",
                    self.label, l.n_in, l.n_out
                )));
            }
            l.w = Some(zeros(dt, vec![l.n_in, l.n_out]));
            l.b = l.has_bias.then(|| zeros(dt, vec![l.n_out]));
            l.idt = l.timestep.then(|| zeros(dt, vec![l.n_out]));
        }
        Ok(())
    }

    /// Set one weight of layer `layer` (0-based) from graph node `node`, checking its shape.
    pub(super) fn set(&mut self, layer: usize, kind: Kind, a: NdArray, node: &str) -> R<()> {
        let Some(l) = self.layers.get_mut(layer) else {
            return Err(bad(format!(
                "`{node}`: layer {} but {} has {} layers",
                layer + 1,
                self.label,
                self.layers.len()
            )));
        };
        let (i, o) = (l.n_in, l.n_out);
        match kind {
            Kind::Matrix => {
                if a.shape != [i, o] {
                    return Err(bad(format!(
                        "`{node}` has shape {:?}, expected [{i}, {o}]",
                        a.shape
                    )));
                }
                l.w = Some(a);
            }
            Kind::Bias => {
                // Old graphs store [1, out]; DeePMD-kit copies it unreshaped.
                if !(a.shape == [o] || a.shape == [1, o]) {
                    return Err(bad(format!(
                        "`{node}` has shape {:?}, expected [{o}]",
                        a.shape
                    )));
                }
                l.b = Some(a);
            }
            Kind::Idt => {
                if a.len() != o {
                    return Err(bad(format!(
                        "`{node}` has shape {:?}, expected {o} values",
                        a.shape
                    )));
                }
                l.idt = Some(NdArray {
                    shape: vec![o],
                    ..a
                });
            }
        }
        Ok(())
    }

    /// The serialized network. Embedding nets keep `idt` only on residual layers (the TF
    /// `embedding_net` applies it only there); fitting nets follow TensorFlow's residual rule:
    /// none on layer 0 and none on layers that double their width (deepmd/tf/fit/ener.py), so
    /// where dpmodel would add one, the layer gets `resnet: false`.
    pub(super) fn finish(mut self) -> R<Value> {
        let nhidden = match self.class {
            NetClass::Fitting => self.layers.len() - 1,
            NetClass::Embedding { .. } => self.layers.len(),
        };
        let mut layers = Vec::with_capacity(self.layers.len());
        for (k, l) in self.layers.iter_mut().enumerate() {
            let w = l.w.take().ok_or_else(|| {
                bad(format!(
                    "{}: layer {} has no weight matrix in the graph",
                    self.label,
                    k + 1
                ))
            })?;
            let b = if l.has_bias {
                Some(l.b.take().ok_or_else(|| {
                    bad(format!(
                        "{}: layer {} has no bias in the graph",
                        self.label,
                        k + 1
                    ))
                })?)
            } else {
                None
            };
            let mut idt = l.idt.take();
            match self.class {
                NetClass::Embedding { .. } => {
                    // TF's embedding_net has an idt exactly where dpmodel gives a timestep.
                    if !l.residual_shape() {
                        idt = None;
                    } else if l.timestep && idt.is_none() {
                        return Err(bad(format!(
                            "{}: layer {} has no idt in the graph, but resnet_dt says it should",
                            self.label,
                            k + 1
                        )));
                    }
                }
                NetClass::Fitting => {
                    // TF: `x + act(x W + b) [* idt]` only for ii >= 1 with equal widths.
                    let tf_res = k >= 1 && k < nhidden && l.n_in == l.n_out;
                    if k < nhidden && l.residual_shape() && !tf_res {
                        l.resnet = false;
                        idt = None;
                    }
                    if tf_res && self.resnet_dt && idt.is_none() {
                        return Err(bad(format!(
                            "{}: layer {k} has no idt in the graph, but resnet_dt says it should",
                            self.label
                        )));
                    }
                }
            }
            layers.push(layer_value(l, w, b, idt, self.precision));
        }
        Ok(match self.class {
            NetClass::Embedding { bias } => dict(vec![
                ("@class", s("EmbeddingNetwork")),
                ("@version", Value::Int(2)),
                ("in_dim", Value::Int(self.in_dim as i64)),
                ("neuron", self.neuron),
                ("activation_function", s(&self.activation)),
                ("resnet_dt", Value::Bool(self.resnet_dt)),
                ("bias", Value::Bool(bias)),
                ("precision", s(self.precision)),
                ("layers", Value::List(layers)),
            ]),
            NetClass::Fitting => dict(vec![
                ("@class", s("FittingNetwork")),
                ("@version", Value::Int(1)),
                ("in_dim", Value::Int(self.in_dim as i64)),
                ("out_dim", Value::Int(1)),
                ("neuron", self.neuron),
                ("activation_function", s(&self.activation)),
                ("resnet_dt", Value::Bool(self.resnet_dt)),
                ("precision", s(self.precision)),
                ("bias_out", Value::Bool(true)),
                ("layers", Value::List(layers)),
            ]),
        })
    }
}

/// A serialized dpmodel `Layer` (`NativeLayer.serialize`).
pub(super) fn layer_value(
    l: &Lay,
    w: NdArray,
    b: Option<NdArray>,
    idt: Option<NdArray>,
    precision: &str,
) -> Value {
    dict(vec![
        ("@class", s("Layer")),
        ("@version", Value::Int(2)),
        ("bias", Value::Bool(b.is_some())),
        ("use_timestep", Value::Bool(idt.is_some())),
        ("activation_function", s(&l.activation)),
        ("resnet", Value::Bool(l.resnet)),
        ("precision", s(precision)),
        ("trainable", l.trainable.clone()),
        (
            "@variables",
            dict(vec![
                ("w", Value::Array(w)),
                ("b", b.map_or(Value::Null, Value::Array)),
                ("idt", idt.map_or(Value::Null, Value::Array)),
            ]),
        ),
    ])
}

fn dtype_of(precision: &str) -> DType {
    match precision {
        "float32" => DType::F32,
        "float16" => DType::F16,
        _ => DType::F64,
    }
}

pub(super) fn zeros(dt: DType, shape: Vec<usize>) -> NdArray {
    let n: usize = shape.iter().product();
    NdArray {
        dtype: dt,
        shape,
        bytes: vec![0; n * dt.size()],
    }
}

/// A `NetworkCollection` of `ntypes^ndim` slots.
pub(super) struct Collection {
    ndim: usize,
    ntypes: usize,
    kind: &'static str,
    pub(super) nets: Vec<Option<Net>>,
}

impl Collection {
    pub(super) fn new(ndim: usize, ntypes: usize, kind: &'static str) -> R<Collection> {
        if ntypes > MAX_TYPES {
            return Err(bad(format!("{ntypes} atom types is too many")));
        }
        let n = ntypes.pow(ndim as u32);
        Ok(Collection {
            ndim,
            ntypes,
            kind,
            nets: (0..n).map(|_| None).collect(),
        })
    }

    pub(super) fn finish(self) -> R<Value> {
        let nets = self
            .nets
            .into_iter()
            .map(|n| n.map_or(Ok(Value::Null), Net::finish))
            .collect::<R<Vec<_>>>()?;
        Ok(dict(vec![
            ("@class", s("NetworkCollection")),
            ("@version", Value::Int(1)),
            ("ndim", Value::Int(self.ndim as i64)),
            ("ntypes", Value::Int(self.ntypes as i64)),
            ("network_type", s(self.kind)),
            ("networks", Value::List(nets)),
        ]))
    }
}

/// Every node whose name `parse` accepts, in graph order, with its decoded value.
pub(super) fn matching<T>(
    g: &G,
    parse: impl Fn(&str) -> Option<T>,
) -> R<Vec<(String, T, NdArray)>> {
    let mut out = Vec::new();
    for n in g.nodes() {
        if let Some(p) = parse(&n.name) {
            let a = g.get(&n.name)?;
            out.push((n.name.clone(), p, a));
        }
    }
    Ok(out)
}
