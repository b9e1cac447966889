//! Dense layers, networks, activations and layer norm as graph nodes.

use std::sync::Arc;

use crate::graph::op::broadcast_shapes;
use crate::graph::{
    Act, Cmp, DType, Dim, Graph, GraphError, Mlp, MlpLayer, Residual, Tensor, ValueId,
};
use crate::model::{Activation, Layer, LayerNorm, Net};

type R = Result<ValueId, GraphError>;

/// Apply a layer to `x [..., in]`, giving `[..., out]` in `x`'s dtype.
pub fn layer(g: &mut Graph, x: ValueId, l: &Layer) -> R {
    let xt = g.ty(x).clone();
    let (x2, y, mut out) = rows_product(g, x, l)?;
    let mut y = bias_activation_idt(g, y, l)?;
    if l.resnet && l.n_out() == l.n_in() {
        y = g.add(y, x2)?;
    } else if l.resnet && l.n_out() == 2 * l.n_in() {
        let xx = g.concat(&[x2, x2], 1)?;
        y = g.add(y, xx)?;
    }
    out.push(crate::graph::Dim::fixed(l.n_out()));
    let y = g.reshape(y, out)?;
    g.cast(y, xt.dtype)
}

/// A layer's `act(y + b) * idt` on its product `y`.
fn bias_activation_idt(g: &mut Graph, mut y: ValueId, l: &Layer) -> R {
    if let Some(b) = &l.b {
        let b = g.constant(b.clone());
        y = g.add(y, b)?;
    }
    y = activation(g, y, l.activation)?;
    if let Some(idt) = &l.idt {
        let idt = g.constant(idt.clone());
        y = g.mul(y, idt)?;
    }
    Ok(y)
}

/// `x [..., k]` as rows `[n, k]` in the layer's dtype and their product with its weights
/// `[n, out]`, with `x`'s leading axes.
fn rows_product(
    g: &mut Graph,
    x: ValueId,
    l: &Layer,
) -> Result<(ValueId, ValueId, Vec<Dim>), GraphError> {
    let xt = g.ty(x).clone();
    let rank = xt.rank();
    let lead = xt.shape[..rank - 1].to_vec();
    let rows = crate::graph::types::numel(&lead)
        .ok_or_else(|| GraphError("layer input too large".into()))?;
    let x2 = g.cast(x, l.dtype)?;
    let x2 = g.reshape(x2, vec![rows, xt.shape[rank - 1]])?;
    let w = g.constant(l.w.clone());
    let y = g.matmul(x2, w)?;
    Ok((x2, y, lead))
}

/// `layers` on `x [..., k]`, as one fused row network (`Op::Dense`) where fusion is on
/// and the kernels can run them exactly, else layer by layer.
pub fn net_fused(g: &mut Graph, x: ValueId, layers: &[Layer], fuse: bool) -> R {
    let dt = g.dtype(x);
    // (No layers: `fusable_layers` refuses an empty network.)
    let Some(mlp) = fuse.then(|| fusable_layers(layers, dt)).flatten() else {
        return layers.iter().try_fold(x, |x, l| layer(g, x, l));
    };
    let sh = g.shape(x).to_vec();
    let (lead, k) = sh.split_at(sh.len() - 1);
    let rows = crate::graph::types::numel(lead)
        .ok_or_else(|| GraphError("network input too large".into()))?;
    let x2 = g.reshape(x, vec![rows, k[0]])?;
    let out = Dim::fixed(mlp.n_out());
    let y = g.dense(x2, mlp, None)?;
    let mut to = lead.to_vec();
    to.push(out);
    g.reshape(y, to)
}

pub fn net(g: &mut Graph, x: ValueId, n: &Net) -> R {
    n.layers.iter().try_fold(x, |x, l| layer(g, x, l))
}

/// `net` applied to the concatenation of `parts` along their last axis, where the parts'
/// leading axes broadcast against each other (a pair's angle with each atom's type
/// embedding, say). The first layer's product is split by input block, `sum_i part_i W_i`,
/// each on its part's own (smaller) shape, so the broadcast concatenation is never built;
/// the sums round differently from one product over the concatenation, at the level of
/// the last bit. A first layer with a residual connection (which reads the concatenation)
/// falls back to building it.
pub fn net_on_parts(g: &mut Graph, parts: &[ValueId], n: &Net, fuse: bool) -> R {
    let mut lead: Vec<Dim> = Vec::new();
    for &p in parts {
        let sh = g.shape(p);
        let pl = &sh[..sh.len() - 1];
        lead = broadcast_shapes(&lead, pl).map_err(GraphError)?;
    }
    let widths: Vec<usize> = parts
        .iter()
        .map(|&p| g.shape(p).last().map_or(0, |d| d.factor))
        .collect();
    let total: usize = widths.iter().sum();
    let Some((first, rest)) = n.layers.split_first() else {
        return Ok(parts[0]);
    };
    if first.n_in() != total {
        return Err(GraphError(format!(
            "a layer of {} inputs on parts of {total}",
            first.n_in()
        )));
    }
    let resnet = first.resnet && (first.n_out() == total || first.n_out() == 2 * total);
    if resnet || parts.len() == 1 {
        let full: Vec<ValueId> = parts
            .iter()
            .zip(&widths)
            .map(|(&p, &w)| {
                let mut to = lead.clone();
                to.push(Dim::fixed(w));
                if g.shape(p) == to.as_slice() {
                    Ok(p)
                } else {
                    g.broadcast(p, to)
                }
            })
            .collect::<Result<_, _>>()?;
        let x = if full.len() == 1 {
            full[0]
        } else {
            g.concat(&full, lead.len())?
        };
        return net_fused(g, x, &n.layers, fuse);
    }
    let out_dt = g.dtype(parts[0]);
    let w_all = first.w.to_f64_vec();
    let nout = first.n_out();
    let mut y: Option<ValueId> = None;
    let mut row = 0;
    for (&p, &w) in parts.iter().zip(&widths) {
        let rows = Tensor::f64(vec![w, nout], w_all[row * nout..(row + w) * nout].to_vec());
        row += w;
        let block = Layer {
            w: cast_tensor(&rows, first.dtype),
            b: None,
            idt: None,
            activation: Activation::Linear,
            resnet: false,
            dtype: first.dtype,
        };
        let t = layer_product(g, p, &block)?;
        y = Some(match y {
            None => t,
            Some(acc) => g.add(acc, t)?,
        });
    }
    let y = bias_activation_idt(g, y.expect("at least two parts"), first)?;
    let y = g.cast(y, out_dt)?;
    net_fused(g, y, rest, fuse)
}

/// `x [..., k] @ l.w` in the layer's dtype, `[..., out]` (no bias or activation).
fn layer_product(g: &mut Graph, x: ValueId, l: &Layer) -> R {
    let (_, y, mut out) = rows_product(g, x, l)?;
    out.push(Dim::fixed(l.n_out()));
    g.reshape(y, out)
}

/// `n` as a fused network computing in `dtype`, if the fused kernels can run it exactly as
/// `net` would: every layer in `dtype` (no casts between layers) with an activation the
/// kernels implement. `None` otherwise (the caller builds it from elementary ops).
pub fn fusable(n: &Net, dtype: DType) -> Option<Arc<Mlp>> {
    fusable_layers(&n.layers, dtype)
}

/// `fusable` for a run of layers.
pub fn fusable_layers(layers: &[Layer], dtype: DType) -> Option<Arc<Mlp>> {
    as_mlp(layers, dtype, false)
}

/// `n` as a fused network to tabulate (`--compress`): as `fusable`, and also with the
/// other activations DeePMD-kit's `dp compress` tabulates (gelu, relu, relu6, softplus,
/// sigmoid, silu). Such a network may only go into an op with its table (`Mlp::check_native`).
pub fn tabulable(n: &Net, dtype: DType) -> Option<Arc<Mlp>> {
    as_mlp(&n.layers, dtype, true)
}

fn as_mlp(layers: &[Layer], dtype: DType, tabulated: bool) -> Option<Arc<Mlp>> {
    let layers = layers
        .iter()
        .map(|l| fusable_layer(l, dtype, tabulated))
        .collect::<Option<Vec<_>>>()?;
    let mlp = Mlp { dtype, layers };
    mlp.check().ok()?;
    Some(Arc::new(mlp))
}

/// One layer as a fused network's layer, if it computes in `dtype` with an activation the
/// kernels implement (or, `tabulated`, one the table builder takes).
fn fusable_layer(l: &Layer, dtype: DType, tabulated: bool) -> Option<MlpLayer> {
    let act = match l.activation {
        Activation::Tanh => Act::Tanh,
        Activation::Linear => Act::Linear,
        Activation::Relu if tabulated => Act::Relu,
        Activation::Relu6 if tabulated => Act::Relu6,
        Activation::Softplus if tabulated => Act::Softplus,
        Activation::Sigmoid if tabulated => Act::Sigmoid,
        Activation::Silu if tabulated => Act::Silu,
        Activation::Gelu if tabulated => Act::Gelu,
        _ => return None,
    };
    let residual = match (l.resnet, l.n_out()) {
        (true, o) if o == l.n_in() => Residual::Same,
        (true, o) if o == 2 * l.n_in() => Residual::Doubled,
        _ => Residual::None,
    };
    (l.dtype == dtype).then(|| MlpLayer {
        w: Arc::new(l.w.clone()),
        b: l.b.clone().map(Arc::new),
        idt: l.idt.clone().map(Arc::new),
        act,
        residual,
    })
}

/// `activation`, as one fused op where there is one and fusion is on (`fuse`).
pub fn activation_fused(g: &mut Graph, x: ValueId, a: Activation, fuse: bool) -> R {
    match a {
        Activation::Silu if fuse => g.act(crate::graph::ActFn::Silu, x),
        Activation::Silut(thr) if fuse => g.act(crate::graph::ActFn::Silut(thr), x),
        _ => activation(g, x, a),
    }
}

pub fn activation(g: &mut Graph, x: ValueId, a: Activation) -> R {
    match a {
        Activation::Linear => Ok(x),
        Activation::Tanh => g.tanh(x),
        Activation::Sigmoid => g.sigmoid(x),
        Activation::Relu => {
            let zero = g.scalar_like(0.0, x);
            let pos = g.cmp(Cmp::Gt, x, zero)?;
            g.select(pos, x, zero)
        }
        Activation::Relu6 => {
            let zero = g.scalar_like(0.0, x);
            let six = g.scalar_like(6.0, x);
            let neg = g.cmp(Cmp::Lt, x, zero)?;
            let big = g.cmp(Cmp::Gt, x, six)?;
            let top = g.select(big, six, x)?;
            g.select(neg, zero, top)
        }
        Activation::Softplus => {
            // PyTorch's softplus (the .pth reference): x above 20, else log(1 + e^x).
            // The exp branch sees min(x, 20) so its unselected gradient stays finite.
            let twenty = g.scalar_like(20.0, x);
            let big = g.cmp(Cmp::Gt, x, twenty)?;
            let xs = g.minimum(x, twenty)?;
            let e = g.exp(xs)?;
            let e1 = g.add_scalar(e, 1.0)?;
            let sp = g.log(e1)?;
            g.select(big, x, sp)
        }
        Activation::Silu => {
            let s = g.sigmoid(x)?;
            g.mul(x, s)
        }
        Activation::Gelu => {
            // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
            let x2 = g.mul(x, x)?;
            let x3 = g.mul(x2, x)?;
            let c = g.scale(x3, 0.044715)?;
            let inner = g.add(x, c)?;
            let inner = g.scale(inner, (2.0 / std::f64::consts::PI).sqrt())?;
            let t = g.tanh(inner)?;
            let t1 = g.add_scalar(t, 1.0)?;
            let hx = g.scale(x, 0.5)?;
            g.mul(hx, t1)
        }
        Activation::Silut(thr) => {
            let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
            let slope = sig(thr) + thr * sig(thr) * (1.0 - sig(thr));
            let konst = thr * sig(thr);
            let s = g.sigmoid(x)?;
            let silu = g.mul(x, s)?;
            let shifted = g.add_scalar(x, -thr)?;
            let scaled = g.scale(shifted, slope)?;
            let t = g.tanh(scaled)?;
            let tail = g.add_scalar(t, konst)?;
            let thr_v = g.scalar_like(thr, x);
            let below = g.cmp(Cmp::Lt, x, thr_v)?;
            g.select(below, silu, tail)
        }
    }
}

/// Layer norm over the last axis (population variance).
pub fn layer_norm(g: &mut Graph, x: ValueId, ln: &LayerNorm) -> R {
    let last = g.ty(x).rank() - 1;
    let mean = g.mean(x, &[last], true)?;
    let centred = g.sub(x, mean)?;
    let sq = g.mul(centred, centred)?;
    let var = g.mean(sq, &[last], true)?;
    let var = g.add_scalar(var, ln.eps)?;
    let sd = g.sqrt(var)?;
    let y = g.div(centred, sd)?;
    let dt = g.dtype(x);
    let w = g.constant(cast_tensor(&ln.w, dt));
    let b = g.constant(cast_tensor(&ln.b, dt));
    let y = g.mul(y, w)?;
    g.add(y, b)
}

/// A copy of `t` in dtype `dt` (weights are stored in their layer's precision).
pub fn cast_tensor(t: &Tensor, dt: crate::graph::DType) -> Tensor {
    use crate::graph::DType;
    match dt {
        DType::F64 => Tensor::f64(t.shape.clone(), t.to_f64_vec()),
        DType::F32 => Tensor::f32(
            t.shape.clone(),
            t.to_f64_vec().iter().map(|&v| v as f32).collect(),
        ),
        _ => t.clone(),
    }
}
