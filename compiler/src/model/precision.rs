//! `--precision float32`: a float64 model evaluated with float32 networks. The descriptor
//! (environment matrix, embedding networks) and the fitting networks compute in float32;
//! the graph builder casts atom energies to float64 before they are summed, and forces and
//! virials are accumulated from there in float64 (DeePMD-kit's own float32 models work the
//! same way).

use super::{Descriptor, Layer, Model, ModelError, Net, NetCollection};
use crate::build::nn::cast_tensor;
use crate::graph::DType;

/// The model with its networks' weights rounded to `dtype` (F32 or F64).
pub fn with_precision(model: &Model, dtype: DType) -> Result<Model, ModelError> {
    if !matches!(dtype, DType::F32 | DType::F64) {
        return Err(ModelError::Unsupported(format!("precision {dtype}")));
    }
    let mut m = model.clone();
    descriptor_precision(&mut m.descriptor, dtype)?;
    m.fitting.dtype = dtype;
    cast_nets(&mut m.fitting.nets, dtype);
    Ok(m)
}

fn descriptor_precision(d: &mut Descriptor, dtype: DType) -> Result<(), ModelError> {
    match d {
        Descriptor::Hybrid(list) => {
            for d in list {
                descriptor_precision(d, dtype)?;
            }
        }
        Descriptor::SeA(d) => {
            d.dtype = dtype;
            cast_nets(&mut d.embeddings, dtype);
        }
        Descriptor::SeR(d) => {
            d.dtype = dtype;
            cast_nets(&mut d.embeddings, dtype);
        }
        Descriptor::SeT(d) => {
            d.dtype = dtype;
            cast_nets(&mut d.embeddings, dtype);
        }
        Descriptor::Dpa1(d) => dpa1_precision(d, dtype),
        Descriptor::Dpa3(d) => {
            d.dtype = dtype;
            cast_net(&mut d.type_embedding.net, dtype);
            cast_layer(&mut d.edge_embd, dtype);
            cast_layer(&mut d.angle_embd, dtype);
            for l in &mut d.layers {
                for x in [
                    &mut l.node_self_mlp,
                    &mut l.node_sym_linear,
                    &mut l.node_edge_linear,
                    &mut l.edge_self_linear,
                ] {
                    cast_layer(x, dtype);
                }
                if let Some(a) = l.angle.as_mut() {
                    cast_layer(&mut a.edge_angle_linear1, dtype);
                    cast_layer(&mut a.edge_angle_linear2, dtype);
                    cast_layer(&mut a.angle_self_linear, dtype);
                }
                if let Some((n, e)) = l.a_compress.as_mut() {
                    cast_layer(n, dtype);
                    cast_layer(e, dtype);
                }
                cast_tensors(&mut l.n_residual, dtype);
                cast_tensors(&mut l.e_residual, dtype);
                cast_tensors(&mut l.a_residual, dtype);
            }
        }
        Descriptor::Dpa2(d) => {
            d.dtype = dtype;
            cast_net(&mut d.type_embedding.net, dtype);
            dpa1_precision(&mut d.repinit, dtype);
            if let Some(t) = d.three_body.as_mut() {
                three_body_precision(t, dtype);
            }
            cast_layer(&mut d.g1_shape_tranform, dtype);
            if let Some(l) = d.tebd_transform.as_mut() {
                cast_layer(l, dtype);
            }
            let r = &mut d.repformers;
            cast_layer(&mut r.g2_embd, dtype);
            for l in &mut r.layers {
                cast_layer(&mut l.linear1, dtype);
                for x in [
                    l.linear2.as_mut(),
                    l.proj_g1g2.as_mut(),
                    l.proj_g1g1g2.as_mut(),
                    l.attn2_h2.as_mut(),
                    l.g1_self_mlp.as_mut(),
                ]
                .into_iter()
                .flatten()
                {
                    cast_layer(x, dtype);
                }
                if let Some(a) = l.attn2.as_mut() {
                    cast_layer(&mut a.mapqk, dtype);
                }
                if let Some((a, b, norm)) = l.attn2_g2.as_mut() {
                    cast_layer(a, dtype);
                    cast_layer(b, dtype);
                    cast_norm(norm, dtype);
                }
                if let Some(a) = l.loc_attn.as_mut() {
                    cast_layer(&mut a.mapq, dtype);
                    cast_layer(&mut a.mapkv, dtype);
                    cast_layer(&mut a.head_map, dtype);
                }
                cast_tensors(&mut l.g1_residual, dtype);
                cast_tensors(&mut l.g2_residual, dtype);
                cast_tensors(&mut l.h2_residual, dtype);
            }
        }
        Descriptor::SeTTebd(d) => {
            d.dtype = dtype;
            cast_net(&mut d.type_embedding.net, dtype);
            three_body_precision(&mut d.block, dtype);
        }
    }
    Ok(())
}

/// Every network of a DPA-1 descriptor: the embedding (and its strip half), the type
/// embedding, and each attention layer's projections and layer norm.
fn dpa1_precision(d: &mut super::Dpa1, dtype: DType) {
    d.dtype = dtype;
    cast_net(&mut d.embedding, dtype);
    if let Some(n) = d.embedding_strip.as_mut() {
        cast_net(n, dtype);
    }
    cast_net(&mut d.type_embedding.net, dtype);
    for a in &mut d.attention {
        cast_layer(&mut a.in_proj, dtype);
        cast_layer(&mut a.out_proj, dtype);
        cast_norm(&mut a.norm, dtype);
    }
}

fn three_body_precision(t: &mut super::dpa2::ThreeBody, dtype: DType) {
    cast_net(&mut t.embedding, dtype);
    if let Some(n) = t.embedding_strip.as_mut() {
        cast_net(n, dtype);
    }
}

fn cast_norm(n: &mut super::LayerNorm, dtype: DType) {
    n.w = cast_tensor(&n.w, dtype);
    n.b = cast_tensor(&n.b, dtype);
}

fn cast_tensors(ts: &mut [crate::graph::Tensor], dtype: DType) {
    for t in ts {
        *t = cast_tensor(t, dtype);
    }
}

fn cast_nets(c: &mut NetCollection, dtype: DType) {
    for net in c.nets.iter_mut().flatten() {
        cast_net(net, dtype);
    }
}

fn cast_net(net: &mut Net, dtype: DType) {
    for l in &mut net.layers {
        cast_layer(l, dtype);
    }
}

fn cast_layer(l: &mut Layer, dtype: DType) {
    l.dtype = dtype;
    l.w = cast_tensor(&l.w, dtype);
    l.b = l.b.as_ref().map(|t| cast_tensor(t, dtype));
    l.idt = l.idt.as_ref().map(|t| cast_tensor(t, dtype));
}
