//! The energy fitting (`deepmd/dpmodel/fitting/general_fitting.py: _call_common`).

use super::nn::{cast_tensor, fusable, net};
use super::se_a::centre_type_only;
use super::Inputs;
use crate::graph::{DType, DenseInput, Dim, Graph, GraphError, RowNets, Tensor, ValueId};
use crate::model::{EnergyFitting, ParamNorm};

/// Atomic energies `[nloc]` (f64) from the descriptor `[nloc, dim_descrpt]`.
pub fn build(
    g: &mut Graph,
    inp: &Inputs,
    f: &EnergyFitting,
    desc: ValueId,
) -> Result<ValueId, GraphError> {
    let dt = f.dtype;
    let desc = g.cast(desc, dt)?;
    let mut extra = Vec::new();
    if let (Some(norm), Some(fp)) = (&f.fparam, inp.fparam) {
        let x = normalise(g, fp, norm, dt)?; // [nfp], or [nloc, nfp] per centre
        let x = if inp.flat_frames {
            x
        } else {
            let x = g.reshape(x, vec![Dim::ONE, Dim::fixed(norm.dim())])?;
            g.broadcast(x, vec![Dim::NLOC, Dim::fixed(norm.dim())])?
        };
        extra.push(x);
    }
    if let (Some(norm), Some(ap), false) = (&f.aparam, inp.aparam, f.aparam_is_mask) {
        extra.push(normalise(g, ap, norm, dt)?); // [nloc, nap]
    }
    if let Some(ce) = &f.case_embd {
        let n = ce.len();
        let c = g.constant(cast_tensor(ce, dt));
        let c = g.reshape(c, vec![Dim::ONE, Dim::fixed(n)])?;
        extra.push(g.broadcast(c, vec![Dim::NLOC, Dim::fixed(n)])?);
    }
    let mut parts = vec![desc];
    parts.extend(&extra);
    let xx = g.concat(&parts, 1)?;
    let vacuum_input = match &f.remove_vacuum {
        None => None,
        Some(_) => {
            let zero = g.scalar(0.0, dt);
            let z = g.broadcast(zero, g.shape(desc).to_vec())?;
            let mut zp = vec![z];
            zp.extend(&extra);
            Some(g.concat(&zp, 1)?)
        }
    };
    let removes = |t: usize| {
        f.remove_vacuum
            .as_ref()
            .is_some_and(|r| t >= r.len() || r[t])
    };
    // The fused row kernel, where the network allows it (no vacuum subtraction, whose
    // second network input the kernel does not take).
    let fused =
        |n: &crate::model::Net| fusable(n, dt).filter(|_| inp.fuse && f.remove_vacuum.is_none());
    // An energy fitting (one output, whose op returns its gradient) on se_e2_a's
    // descriptor alone takes `gr` and forms the product itself, so the descriptor and its
    // gradient never go to memory.
    let product = g.axis_product_of(xx).map(|(gr, axis)| {
        let channels = g.shape(gr)[2].factor;
        (gr, DenseInput::AxisProduct { axis, channels })
    });
    let input_for = |n_out: usize| match product {
        Some(p) if n_out == 1 => p,
        _ => (xx, DenseInput::Rows),
    };
    let out = if f.mixed_types {
        let n = f.nets.get(&[]).expect("validated");
        if let Some(mlp) = fused(n) {
            let (x, input) = input_for(mlp.n_out());
            g.dense_op(x, RowNets::All(mlp), None, input)?
        } else {
            let mut o = net(g, xx, n)?;
            if let Some(z) = vacuum_input {
                let v = net(g, z, n)?;
                o = g.sub(o, v)?;
            }
            o
        }
    } else if let Some(nets) = (0..f.ntypes)
        .map(|t| fused(f.nets.get(&[t]).expect("validated")))
        .collect::<Option<Vec<_>>>()
    {
        // Every type's network fuses: one op, each row through its type's network.
        let (x, input) = input_for(nets.first().map_or(0, |n| n.n_out()));
        let nets = RowNets::ByType(nets.into_iter().map(Some).collect());
        g.dense_op(x, nets, Some(inp.atype_loc), input)?
    } else {
        let mut acc: Option<ValueId> = None;
        for t in 0..f.ntypes {
            let n = f.nets.get(&[t]).expect("validated");
            let o = match fused(n) {
                Some(mlp) => g.dense(xx, mlp, Some((t as i32, inp.atype_loc)))?,
                None => {
                    let mut o = net(g, xx, n)?;
                    if let (Some(z), true) = (vacuum_input, removes(t)) {
                        let v = net(g, z, n)?;
                        o = g.sub(o, v)?;
                    }
                    centre_type_only(g, inp, o, t, dt)?
                }
            };
            acc = Some(match acc {
                None => o,
                Some(a) => g.add(a, o)?,
            });
        }
        acc.expect("at least one type")
    }; // [nloc, 1]
    let bias = g.constant(cast_tensor(
        &Tensor::f64(vec![f.ntypes, 1], f.bias_atom_e.clone()),
        dt,
    ));
    let bias = g.gather(bias, inp.atype_loc)?;
    let out = g.add(out, bias)?;
    let out = exclude_atoms(g, inp, out, &f.exclude_types, f.ntypes)?;
    let out = g.cast(out, DType::F64)?;
    g.reshape(out, vec![Dim::NLOC])
}

fn normalise(g: &mut Graph, x: ValueId, n: &ParamNorm, dt: DType) -> Result<ValueId, GraphError> {
    let x = g.cast(x, dt)?;
    let avg = g.constant(cast_tensor(&Tensor::f64(vec![n.dim()], n.avg.clone()), dt));
    let inv = g.constant(cast_tensor(
        &Tensor::f64(vec![n.dim()], n.inv_std.clone()),
        dt,
    ));
    let c = g.sub(x, avg)?;
    g.mul(c, inv)
}

/// Zero the rows of `x [nloc, ...]` whose atom type is in `types`.
pub fn exclude_atoms(
    g: &mut Graph,
    inp: &Inputs,
    x: ValueId,
    types: &[usize],
    ntypes: usize,
) -> Result<ValueId, GraphError> {
    if types.is_empty() {
        return Ok(x);
    }
    let keep: Vec<bool> = (0..ntypes).map(|t| !types.contains(&t)).collect();
    let table = g.constant(Tensor::bool(vec![ntypes], keep));
    let k = g.gather(table, inp.atype_loc)?; // [nloc]
    let mut shape = vec![Dim::NLOC];
    shape.extend(std::iter::repeat_n(Dim::ONE, g.ty(x).rank() - 1));
    let k = g.reshape(k, shape)?;
    let zero = g.scalar_like(0.0, x);
    g.select(k, x, zero)
}
