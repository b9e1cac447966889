//! Model -> Graph: the forward pass of a DeePMD-kit energy model as IR, then its forces and
//! virials by reverse-mode autodiff of the same IR.
//!
//! The graph is DeePMD-kit's "lower" interface (`call_common_lower`): it takes the extended
//! system (local atoms first, then ghosts) and a formatted neighbour list, and returns
//! per-extended-atom forces and virials; the runtime folds ghosts back onto their owners.

pub mod compress;
mod dpa1;
mod dpa2;
mod dpa3;
mod env_mat;
mod fitting;
mod given;
mod hybrid;
pub(crate) mod nn;
mod se_a;
mod se_r;
mod se_t;

pub use compress::{Compress, TableReport};
pub use given::{build_from_env_mat, build_from_rij, env_io, env_mat_form, rij_io, EnvMatForm};

use crate::graph::autodiff::vjp;
use crate::graph::{DType, Dim, Graph, GraphError, TensorType, ValueId};
use crate::model::{Descriptor, Model};

/// What the graph should compute besides energies.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BuildOptions {
    /// Per-atom virials with DeePMD-kit's correction term (three more backward passes).
    pub atomic_virial: bool,
    /// Build every network from elementary ops, without fused kernels (the reference form
    /// the fused ops are tested against).
    pub unfused: bool,
    /// Tabulate the embedding networks (`--compress`).
    pub compress: Option<Compress>,
    /// Evaluate the networks in this precision (`--precision float32`); energies and
    /// virials are still accumulated in float64.
    pub precision: Option<DType>,
    /// The graph serves several frames laid end to end as one system (DeePMD-kit's `nf`
    /// axis, flattened by a lowering such as `lower::stablehlo`): frame parameters and the
    /// DPA-1 pad atom come per centre, and `atype` may hold -1 (virtual atoms: typed 0
    /// for the networks, their atomic energies zeroed, as DeePMD-kit's `make_atom_mask`).
    pub flat_frames: bool,
}

/// Names of the graph's inputs and outputs.
pub mod io {
    /// `f64[nall, 3]` extended coordinates, local atoms first.
    pub const COORD: &str = "coord";
    /// `i32[nall]` extended atom types (all >= 0).
    pub const ATYPE: &str = "atype";
    /// `i32[nloc, nnei]` neighbour list into the extended atoms, -1 padded, formatted for the
    /// model (per-type blocks of `sel[t]` slots, or one distance-sorted block if mixed).
    pub const NLIST: &str = "nlist";
    /// `f64[numb_fparam]` frame parameters (only if the model has them); `f64[nloc,
    /// numb_fparam]` with `flat_frames`.
    pub const FPARAM: &str = "fparam";
    /// `f64[nloc, numb_aparam]` atomic parameters (only if the model has them).
    pub const APARAM: &str = "aparam";
    /// `i32[]` the extended atom whose type DeePMD-kit's DPA-1 reads for padded neighbour
    /// slots (it gathers index 0 of the whole extended system there, and in `concat` mode
    /// that type reaches the result); only in graphs that read it. A run on a chunk of
    /// centres passes where the system's atom 0 sits in the chunk. With `flat_frames` it
    /// is `i32[nloc]`: each centre's own frame's atom 0.
    pub const PAD_ATOM: &str = "pad_atom";
    /// `i32[nall]` the local atom each extended atom images (only in graphs of
    /// message-passing descriptors, which read neighbours' features through it).
    pub const MAPPING: &str = "mapping";
    /// `f64[nloc]` how much each centre's energy counts (1 or 0; only in graphs of
    /// message-passing descriptors): an MD rank evaluates ghost atoms as centres too, for
    /// the features its own atoms read, without counting their energies.
    pub const CENTRE_WEIGHT: &str = "centre_weight";
    /// `f64[nloc]` atomic energies.
    pub const ATOM_ENERGY: &str = "atom_energy";
    /// `f64[]` total energy.
    pub const ENERGY: &str = "energy";
    /// `f64[nall, 3]` force on every extended atom, `-dE/dR`.
    pub const FORCE: &str = "extended_force";
    /// `f64[nall, 9]` virial of every extended atom, row-major `F_a R_b` (+ correction).
    pub const VIRIAL: &str = "extended_virial";
}

/// The values every descriptor builder reads.
#[derive(Clone, Copy)]
pub(crate) struct Inputs {
    pub coord: ValueId,
    pub atype: ValueId,
    pub atype_loc: ValueId,
    pub fparam: Option<ValueId>,
    pub aparam: Option<ValueId>,
    /// Whether networks may be fused into single ops.
    pub fuse: bool,
    /// Tabulate fused embedding networks.
    pub compress: Option<compress::Plan>,
    /// See `BuildOptions::flat_frames`.
    pub flat_frames: bool,
    /// `io::MAPPING`, for message-passing descriptors.
    pub mapping: Option<ValueId>,
    /// A precomputed normalised environment matrix `[nloc, nnei, 4]` (`build_from_env_mat`):
    /// se_e2_a reads it instead of computing one from coordinates.
    pub env: Option<ValueId>,
    /// Precomputed pair vectors `r_j - r_i`, `[nloc, nnei, 3]` (`build_from_rij`): the
    /// pair geometry reads them instead of gathering coordinates.
    pub rij: Option<ValueId>,
}

/// Build the graph for `model`.
pub fn build_graph(model: &Model, opts: BuildOptions) -> Result<Graph, GraphError> {
    let converted;
    let model = match opts.precision {
        Some(dt) => {
            converted = crate::model::precision::with_precision(model, dt)
                .map_err(|e| GraphError(e.to_string()))?;
            &converted
        }
        None => model,
    };
    let mut g = Graph::new();
    let coord = g.input(
        io::COORD,
        TensorType::new(DType::F64, vec![Dim::NALL, Dim::fixed(3)]),
    );
    let atype_in = g.input(io::ATYPE, TensorType::new(DType::I32, vec![Dim::NALL]));
    // Virtual atoms (type -1) run as type 0 and are masked out of the energy.
    let real = if opts.flat_frames {
        let zero = g.scalar(0.0, DType::I32);
        Some(g.cmp(crate::graph::Cmp::Ge, atype_in, zero)?)
    } else {
        None
    };
    let atype = match real {
        Some(r) => {
            let zero = g.scalar(0.0, DType::I32);
            g.select(r, atype_in, zero)?
        }
        None => atype_in,
    };
    let nlist = g.input(
        io::NLIST,
        TensorType::new(DType::I32, vec![Dim::NLOC, Dim::fixed(model.nnei())]),
    );
    let nfp = model.dim_fparam();
    let nap = model.dim_aparam();
    let fparam = (nfp > 0).then(|| {
        let shape = if opts.flat_frames {
            vec![Dim::NLOC, Dim::fixed(nfp)]
        } else {
            vec![Dim::fixed(nfp)]
        };
        g.input(io::FPARAM, TensorType::new(DType::F64, shape))
    });
    let aparam = (nap > 0).then(|| {
        g.input(
            io::APARAM,
            TensorType::new(DType::F64, vec![Dim::NLOC, Dim::fixed(nap)]),
        )
    });
    let atype_loc = g.slice(atype, 0, Dim::fixed(0), Dim::NLOC)?;
    let mapping = model
        .descriptor
        .has_message_passing()
        .then(|| g.input(io::MAPPING, TensorType::new(DType::I32, vec![Dim::NALL])));
    let inp = Inputs {
        coord,
        atype,
        atype_loc,
        fparam,
        aparam,
        fuse: !opts.unfused,
        compress: match opts.compress {
            Some(c) => Some(compress::Plan::new(c, model.min_nbor_dist).map_err(GraphError)?),
            None => None,
        },
        flat_frames: opts.flat_frames,
        mapping,
        env: None,
        rij: None,
    };

    let desc = model_descriptor(&mut g, &inp, model, nlist)?;
    let mut ae = atomic_energy(&mut g, &inp, model, desc)?;
    if let Some(r) = real {
        let r = g.slice(r, 0, Dim::fixed(0), Dim::NLOC)?;
        let r = g.cast(r, DType::F64)?;
        ae = g.mul(ae, r)?;
    }
    if model.descriptor.has_message_passing() {
        let w = g.input(
            io::CENTRE_WEIGHT,
            TensorType::new(DType::F64, vec![Dim::NLOC]),
        );
        ae = g.mul(ae, w)?;
    }
    let energy = g.sum(ae, &[0], false)?;
    g.set_output(io::ATOM_ENERGY, ae);
    g.set_output(io::ENERGY, energy);
    derivatives(&mut g, coord, ae, energy, opts)?;
    Ok(g)
}

/// Atomic energies `[nloc]` from descriptor rows: the fitting network, TensorFlow's
/// `out_std` scaling where the model has it, the output bias and atom exclusions.
pub(crate) fn atomic_energy(
    g: &mut Graph,
    inp: &Inputs,
    model: &Model,
    desc: ValueId,
) -> Result<ValueId, GraphError> {
    let desc = g.cast(desc, DType::F64)?;
    let mut ae = fitting::build(g, inp, &model.fitting, desc)?;
    if model.tf_semantics {
        // TensorFlow scales the fitted energy by out_std before adding out_bias.
        let std = g.constant(crate::graph::Tensor::f64(
            vec![model.ntypes()],
            model.out_std.clone(),
        ));
        let std = g.gather(std, inp.atype_loc)?;
        ae = g.mul(ae, std)?;
    }
    let out_bias = g.constant(crate::graph::Tensor::f64(
        vec![model.ntypes()],
        model.out_bias.clone(),
    ));
    let out_bias = g.gather(out_bias, inp.atype_loc)?;
    let ae = g.add(ae, out_bias)?;
    fitting::exclude_atoms(g, inp, ae, &model.atom_exclude_types, model.ntypes())
}

/// The model's descriptor rows `[nloc, dim_out]`, on its list less the excluded pairs.
pub(crate) fn model_descriptor(
    g: &mut Graph,
    inp: &Inputs,
    model: &Model,
    nlist: ValueId,
) -> Result<ValueId, GraphError> {
    let nlist = env_mat::exclude_pairs(g, inp, nlist, &model.pair_exclude_types, model.ntypes())?;
    descriptor(g, inp, &model.descriptor, nlist)
}

/// The descriptor rows `[nloc, dim_out]` of the centres.
pub(crate) fn descriptor(
    g: &mut Graph,
    inp: &Inputs,
    d: &Descriptor,
    nlist: ValueId,
) -> Result<ValueId, GraphError> {
    let refuse = |what: &str| {
        GraphError(format!(
            "compression of {what} descriptors is not implemented; run the model without \
             --compress"
        ))
    };
    Ok(match d {
        Descriptor::SeA(d) => se_a::build(g, inp, d, nlist)?,
        Descriptor::SeR(d) => se_r::build(g, inp, d, nlist)?,
        Descriptor::SeT(d) => se_t::build(g, inp, d, nlist)?,
        Descriptor::Dpa1(d) => dpa1::build(g, inp, d, nlist)?,
        Descriptor::Dpa3(_) if inp.compress.is_some() => return Err(refuse("DPA-3")),
        Descriptor::Dpa3(d) => dpa3::build(g, inp, d, nlist)?,
        Descriptor::Dpa2(d) => dpa2::build(g, inp, d, nlist)?,
        Descriptor::SeTTebd(d) => dpa2::se_t_tebd(g, inp, d, nlist)?,
        Descriptor::Hybrid(list) => hybrid::build(g, inp, d, list, nlist)?,
    })
}

/// Forces `-dE/dR` and virials `F (x) R` of every extended atom; with `atomic_virial`, plus
/// DeePMD-kit's correction `d(sum_i e_i R_i,b)/dR_k,a` (R_i local, held constant), which
/// makes each atom's virial independent of how the box is wrapped (the corrections sum to 0).
fn derivatives(
    g: &mut Graph,
    coord: ValueId,
    ae: ValueId,
    energy: ValueId,
    opts: BuildOptions,
) -> Result<(), GraphError> {
    let one = g.scalar(1.0, DType::F64);
    let grad = vjp(g, energy, one, &[coord])?[0];
    let force = match grad {
        Some(d) => g.neg(d)?,
        None => {
            let z = g.scalar(0.0, DType::F64);
            g.broadcast(z, vec![Dim::NALL, Dim::fixed(3)])?
        }
    };
    let f3 = g.reshape(force, vec![Dim::NALL, Dim::fixed(3), Dim::ONE])?;
    let r3 = g.reshape(coord, vec![Dim::NALL, Dim::ONE, Dim::fixed(3)])?;
    let mut virial = g.mul(f3, r3)?; // [nall, 3 (force comp), 3 (coord comp)]
    if opts.atomic_virial {
        let local = g.slice(coord, 0, Dim::fixed(0), Dim::NLOC)?;
        let mut cols = Vec::with_capacity(3);
        for b in 0..3 {
            let seed = g.slice_n(local, 1, b, b + 1)?;
            let seed = g.reshape(seed, vec![Dim::NLOC])?;
            let corr = match vjp(g, ae, seed, &[coord])?[0] {
                Some(c) => c,
                None => {
                    let z = g.scalar(0.0, DType::F64);
                    g.broadcast(z, vec![Dim::NALL, Dim::fixed(3)])?
                }
            };
            cols.push(g.reshape(corr, vec![Dim::NALL, Dim::fixed(3), Dim::ONE])?);
        }
        let corr = g.concat(&cols, 2)?;
        virial = g.add(virial, corr)?;
    }
    let virial = g.reshape(virial, vec![Dim::NALL, Dim::fixed(9)])?;
    g.set_output(io::FORCE, force);
    g.set_output(io::VIRIAL, virial);
    Ok(())
}
