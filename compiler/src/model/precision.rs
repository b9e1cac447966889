//! `--precision float32`: a float64 model evaluated with float32 networks. The descriptor
//! (environment matrix, embedding networks) and the fitting networks compute in float32;
//! the graph builder casts atom energies to float64 before they are summed, and forces and
//! virials are accumulated from there in float64 (DeePMD-kit's own float32 models work the
//! same way).

use super::{Descriptor, Model, ModelError, Net, NetCollection};
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
        Descriptor::Dpa1(d) if d.dtype != dtype => {
            return Err(ModelError::Unsupported(format!(
                "changing the precision of a se_atten/DPA-1 descriptor (it is {})",
                d.dtype
            )))
        }
        Descriptor::Dpa1(_) => {}
        Descriptor::Dpa3(d) if d.dtype != dtype => {
            return Err(ModelError::Unsupported(format!(
                "changing the precision of a DPA-3 descriptor (it is {})",
                d.dtype
            )))
        }
        Descriptor::Dpa3(_) => {}
        Descriptor::Dpa2(d) if d.dtype != dtype => {
            return Err(ModelError::Unsupported(format!(
                "changing the precision of a DPA-2 descriptor (it is {})",
                d.dtype
            )))
        }
        Descriptor::Dpa2(_) => {}
        Descriptor::SeTTebd(d) if d.dtype != dtype => {
            return Err(ModelError::Unsupported(format!(
                "changing the precision of a se_e3_tebd descriptor (it is {})",
                d.dtype
            )))
        }
        Descriptor::SeTTebd(_) => {}
    }
    Ok(())
}

fn cast_nets(c: &mut NetCollection, dtype: DType) {
    for net in c.nets.iter_mut().flatten() {
        cast_net(net, dtype);
    }
}

fn cast_net(net: &mut Net, dtype: DType) {
    for l in &mut net.layers {
        l.dtype = dtype;
        l.w = cast_tensor(&l.w, dtype);
        l.b = l.b.as_ref().map(|t| cast_tensor(t, dtype));
        l.idt = l.idt.as_ref().map(|t| cast_tensor(t, dtype));
    }
}
