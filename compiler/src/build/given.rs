//! A model's energy, and its gradient, on geometry a target's own ops compute: DeePMD-kit's
//! TensorFlow graphs build the neighbour list and the environment matrix (or the pair
//! vectors) with `ProdEnvMat*`, and turn the gradient into forces and virials with
//! `ProdForceSe*`/`ProdVirialSe*`. Elementary ops only, every frame's centres as rows.

use super::{atomic_energy, io, model_descriptor, Inputs};
use crate::graph::autodiff::vjp;
use crate::graph::{DType, Dim, Graph, GraphError, TensorType, ValueId};
use crate::model::{Descriptor, EnvParams, Model, Stats};

/// Names of `build_from_env_mat`'s inputs and outputs (with `io::ATYPE`, `io::ATOM_ENERGY`).
pub mod env_io {
    /// `f64[nloc, nnei, ncomp]` DeePMD-kit's normalised environment matrix (`ProdEnvMatA`'s
    /// or `ProdEnvMatR`'s `descrpt`), neighbours in per-type blocks of `sel[t]`.
    pub const ENV_MAT: &str = "env_mat";
    /// `f64[nloc, nnei, ncomp]` the derivative of the total energy by `ENV_MAT` (the
    /// `net_deriv` DeePMD-kit's force and virial ops take).
    pub const ENV_MAT_GRAD: &str = "env_mat_grad";
}

/// What DeePMD-kit's environment-matrix ops (`ProdEnvMatA`/`ProdEnvMatR`) are given for a
/// model they compute exactly: se_e2_a, se_e3 and se_e2_r without type or pair exclusions
/// or `env_protection` (which those ops do not have).
#[derive(Clone, Copy)]
pub struct EnvMatForm<'m> {
    pub env: &'m EnvParams,
    pub stats: &'m Stats,
    pub sel: &'m [usize],
    /// se_e2_r: one component per neighbour instead of four.
    pub radial: bool,
}

/// `model`'s environment-matrix form, if DeePMD-kit's ops compute its matrix.
pub fn env_mat_form(model: &Model) -> Option<EnvMatForm<'_>> {
    let (env, stats, sel, exclude, radial) = match &model.descriptor {
        Descriptor::SeA(d) => (&d.env, &d.stats, &d.sel, &d.exclude_types, false),
        Descriptor::SeT(d) => (&d.env, &d.stats, &d.sel, &d.exclude_types, false),
        Descriptor::SeR(d) => (&d.env, &d.stats, &d.sel, &d.exclude_types, true),
        _ => return None,
    };
    let plain = exclude.is_empty() && model.pair_exclude_types.is_empty() && env.protection == 0.0;
    plain.then_some(EnvMatForm {
        env,
        stats,
        sel,
        radial,
    })
}

/// A model's energy from a precomputed environment matrix (`env_mat_form`), for targets
/// whose own ops build that matrix and turn its gradient into forces and virials
/// (DeePMD-kit's TensorFlow graphs). Inputs: `env_io::ENV_MAT`, `io::ATYPE` (`i32[nloc]`,
/// the centres), and `io::FPARAM`/`io::APARAM` (`[nloc, n]`, per centre) where the model
/// has them; outputs: `io::ATOM_ENERGY`, `env_io::ENV_MAT_GRAD`. Elementary ops only.
pub fn build_from_env_mat(model: &Model) -> Result<Graph, GraphError> {
    let form = env_mat_form(model).ok_or_else(|| {
        GraphError(format!(
            "{} cannot be built on DeePMD-kit's environment matrix (se_e2_a, se_e2_r and se_e3 \
             without exclusions or env_protection can)",
            model.descriptor.name()
        ))
    })?;
    let (sel, dtype) = (form.sel, model.descriptor.dtype());
    let ncomp = if form.radial { 1 } else { 4 };
    let nnei: usize = sel.iter().sum();
    let env_shape = vec![Dim::NLOC, Dim::fixed(nnei), Dim::fixed(ncomp)];
    let mut g = Graph::new();
    let env = g.input(
        env_io::ENV_MAT,
        TensorType::new(DType::F64, env_shape.clone()),
    );
    let atype = g.input(io::ATYPE, TensorType::new(DType::I32, vec![Dim::NLOC]));
    let nlist = g.input(
        io::NLIST,
        TensorType::new(DType::I32, vec![Dim::NLOC, Dim::fixed(nnei)]),
    );
    let env_d = g.cast(env, dtype)?;
    let inp = Inputs {
        env: Some(env_d),
        ..given_inputs(&mut g, model, atype, atype)
    };
    let desc = model_descriptor(&mut g, &inp, model, nlist)?;
    energy_and_gradient(
        &mut g,
        &inp,
        model,
        desc,
        env,
        env_shape,
        env_io::ENV_MAT_GRAD,
    )?;
    Ok(g)
}

/// Names of `build_from_rij`'s inputs and outputs (with `io::ATYPE`, `io::NLIST`,
/// `io::PAD_ATOM`, `io::FPARAM`, `io::APARAM` and `io::ATOM_ENERGY`).
pub mod rij_io {
    /// `f64[nloc, nnei, 3]` the pair vectors `r_j - r_i` of every centre's neighbour slots
    /// (`ProdEnvMatA`'s or `ProdEnvMatAMix`'s `rij`); padding slots are not read.
    pub const RIJ: &str = "rij";
    /// `i32[nloc]` the centres' types.
    pub const ATYPE_LOC: &str = "atype_loc";
    /// `f64[nloc, nnei, 3]` the derivative of the total energy by `RIJ`.
    pub const RIJ_GRAD: &str = "rij_grad";
}

/// A model's energy from the pair vectors of its neighbour list, for targets whose own ops
/// build that list and turn the energy's gradient by the vectors into forces and virials.
/// Every descriptor that reads only its neighbours' positions and types (all but the
/// message-passing ones) is built this way. Inputs: `rij_io::RIJ`, `rij_io::ATYPE_LOC`,
/// `io::NLIST` (`i32[nloc, nnei]`, formatted for the model, -1 padded) indexing `io::ATYPE`
/// (`i32[nall]`, the types of every atom the list may name), `io::PAD_ATOM` (`i32[nloc]`,
/// where a DPA-1 model reads it), and `io::FPARAM`/`io::APARAM` (`[nloc, n]`, per centre)
/// where the model has them; outputs `io::ATOM_ENERGY` and `rij_io::RIJ_GRAD`.
pub fn build_from_rij(model: &Model) -> Result<Graph, GraphError> {
    if model.descriptor.has_message_passing() {
        return Err(GraphError(format!(
            "{} descriptors pass messages between atoms, so their energy is not a function \
             of each centre's neighbour vectors alone",
            model.descriptor.name()
        )));
    }
    let nnei = model.nnei();
    let rij_shape = vec![Dim::NLOC, Dim::fixed(nnei), Dim::fixed(3)];
    let mut g = Graph::new();
    let rij = g.input(rij_io::RIJ, TensorType::new(DType::F64, rij_shape.clone()));
    let atype = g.input(io::ATYPE, TensorType::new(DType::I32, vec![Dim::NALL]));
    let atype_loc = g.input(
        rij_io::ATYPE_LOC,
        TensorType::new(DType::I32, vec![Dim::NLOC]),
    );
    let nlist = g.input(
        io::NLIST,
        TensorType::new(DType::I32, vec![Dim::NLOC, Dim::fixed(nnei)]),
    );
    let inp = Inputs {
        rij: Some(rij),
        ..given_inputs(&mut g, model, atype, atype_loc)
    };
    let desc = model_descriptor(&mut g, &inp, model, nlist)?;
    energy_and_gradient(&mut g, &inp, model, desc, rij, rij_shape, rij_io::RIJ_GRAD)?;
    Ok(g)
}

/// The builders' inputs, elementary ops on every frame's centres, with the frame and
/// atomic parameters as per-centre inputs where the model has them.
fn given_inputs(g: &mut Graph, model: &Model, atype: ValueId, atype_loc: ValueId) -> Inputs {
    // Read by no builder once the geometry is given.
    let coord = g.input(
        io::COORD,
        TensorType::new(DType::F64, vec![Dim::NALL, Dim::fixed(3)]),
    );
    let (fparam, aparam) = per_centre_params(g, model);
    Inputs {
        coord,
        atype,
        atype_loc,
        fparam,
        aparam,
        fuse: false,
        compress: None,
        flat_frames: true,
        mapping: None,
        env: None,
        rij: None,
    }
}

/// Frame and atomic parameters as per-centre inputs, where the model has them (the frames
/// are laid end to end, as with `flat_frames`).
fn per_centre_params(g: &mut Graph, model: &Model) -> (Option<ValueId>, Option<ValueId>) {
    let mut param = |name: &str, n: usize| {
        (n > 0).then(|| {
            g.input(
                name,
                TensorType::new(DType::F64, vec![Dim::NLOC, Dim::fixed(n)]),
            )
        })
    };
    (
        param(io::FPARAM, model.dim_fparam()),
        param(io::APARAM, model.dim_aparam()),
    )
}

/// Outputs `io::ATOM_ENERGY` and, as `grad_name`, the total energy's derivative by `wrt`.
fn energy_and_gradient(
    g: &mut Graph,
    inp: &Inputs,
    model: &Model,
    desc: ValueId,
    wrt: ValueId,
    wrt_shape: Vec<Dim>,
    grad_name: &str,
) -> Result<(), GraphError> {
    let ae = atomic_energy(g, inp, model, desc)?;
    let energy = g.sum(ae, &[0], false)?;
    let one = g.scalar(1.0, DType::F64);
    let grad = match vjp(g, energy, one, &[wrt])?[0] {
        Some(v) => v,
        None => {
            let z = g.scalar(0.0, DType::F64);
            g.broadcast(z, wrt_shape)?
        }
    };
    g.set_output(io::ATOM_ENERGY, ae);
    g.set_output(grad_name, grad);
    Ok(())
}
