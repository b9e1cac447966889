//! `DeepPot`: evaluate a model on atomic configurations, with DeePMD-kit's inputs, outputs,
//! units and conventions (`deepmd.infer.DeepPot.eval`).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use dpc_compiler::build::{build_graph, io, BuildOptions};
use dpc_compiler::graph::{verify::verify, Bindings, Tensor};
use dpc_compiler::model::{Model, ModelError};
use dpc_formats::{FormatError, Value};
use rayon::prelude::*;

use crate::cpu::{ExecError, Executor, Profile};
use crate::nlist::{self, Cell, NlistError};

/// Why an evaluation failed. Every variant is a clear message, never a panic.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalError {
    Format(FormatError),
    Model(ModelError),
    /// The configuration handed in is unusable (sizes, NaN, unknown types, ...).
    Input(String),
    /// The model's graph failed to build (a dpc bug or an inconsistent model).
    Graph(String),
    Exec(ExecError),
    /// A device backend (a PJRT plugin) failed to load, compile or run.
    Device(String),
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvalError::Format(e) => e.fmt(f),
            EvalError::Model(e) => e.fmt(f),
            EvalError::Input(m) => write!(f, "bad input: {m}"),
            EvalError::Graph(m) => write!(f, "cannot compile the model: {m}"),
            EvalError::Exec(e) => write!(f, "evaluation failed: {e}"),
            EvalError::Device(m) => write!(f, "device backend: {m}"),
        }
    }
}

impl std::error::Error for EvalError {}

impl From<FormatError> for EvalError {
    fn from(e: FormatError) -> Self {
        EvalError::Format(e)
    }
}

impl From<ModelError> for EvalError {
    fn from(e: ModelError) -> Self {
        EvalError::Model(e)
    }
}

impl From<ExecError> for EvalError {
    fn from(e: ExecError) -> Self {
        EvalError::Exec(e)
    }
}

impl From<NlistError> for EvalError {
    fn from(e: NlistError) -> Self {
        EvalError::Input(e.0)
    }
}

/// One configuration, in DeePMD-kit's layout.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// `[natoms * 3]`, Å.
    pub coord: &'a [f64],
    /// `[natoms]`, indices into the type map; negative marks a virtual atom (ignored).
    pub atype: &'a [i32],
    /// `[9]`, rows are the cell vectors; `None` for a non-periodic system.
    pub cell: Option<&'a [f64]>,
    /// `[dim_fparam]`; `None` uses the model's `default_fparam`.
    pub fparam: Option<&'a [f64]>,
    /// `[natoms * dim_aparam]`.
    pub aparam: Option<&'a [f64]>,
}

impl<'a> Frame<'a> {
    /// A frame without frame or atomic parameters.
    pub fn new(coord: &'a [f64], atype: &'a [i32], cell: Option<&'a [f64]>) -> Frame<'a> {
        Frame {
            coord,
            atype,
            cell,
            fparam: None,
            aparam: None,
        }
    }
}

/// Energies, forces and virials of one frame (eV, eV/Å, eV).
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub energy: f64,
    /// `[natoms * 3]`.
    pub force: Vec<f64>,
    /// Row-major 3x3.
    pub virial: [f64; 9],
    /// `[natoms]`.
    pub atom_energy: Vec<f64>,
    /// `[natoms * 9]`, when asked for.
    pub atom_virial: Option<Vec<f64>>,
}

/// Results on an extended system, per extended atom (ghosts included, not folded).
#[derive(Debug, Clone, PartialEq)]
pub struct ExtendedOutput {
    pub energy: f64,
    /// `[nloc]`.
    pub atom_energy: Vec<f64>,
    /// `[nall * 3]`.
    pub force: Vec<f64>,
    pub virial: [f64; 9],
    /// `[nall * 9]`, when asked for.
    pub atom_virial: Option<Vec<f64>>,
}

/// A loaded model with its compiled graphs.
pub struct DeepPot {
    model: Model,
    tree: Value,
    plain: Executor,
    atomic: OnceLock<Result<Executor, EvalError>>,
    /// Graphs on fewer neighbour slots (DPA-3, `Model::with_slots`), by (edge slots, angle
    /// slots, atomic virial).
    narrowed: Mutex<HashMap<(usize, usize, bool), Arc<Executor>>>,
    /// Centres per graph run; `None` picks by neighbour count.
    chunk: Option<usize>,
    /// How the graphs are built (`atomic_virial` is set per graph).
    opts: BuildOptions,
    /// Where set, extended systems run through this PJRT plugin instead.
    #[cfg(feature = "pjrt")]
    pjrt: Option<std::sync::Arc<crate::pjrt::PjrtModel>>,
}

fn compile(model: &Model, opts: BuildOptions) -> Result<Executor, EvalError> {
    let g = build_graph(model, opts).map_err(|e| EvalError::Graph(e.0))?;
    verify(&g).map_err(EvalError::Graph)?;
    Ok(Executor::new(g))
}

impl DeepPot {
    /// Load any supported model file.
    pub fn load(path: &Path) -> Result<DeepPot, EvalError> {
        let tree = dpc_formats::read_model(path)?;
        DeepPot::from_tree(tree)
    }

    pub fn from_tree(tree: Value) -> Result<DeepPot, EvalError> {
        DeepPot::from_tree_with(tree, false)
    }

    /// `from_tree`, optionally built from elementary ops only (no fused kernels): the
    /// reference the fused kernels are tested against.
    pub fn from_tree_with(tree: Value, unfused: bool) -> Result<DeepPot, EvalError> {
        DeepPot::from_tree_opts(
            tree,
            BuildOptions {
                unfused,
                ..BuildOptions::default()
            },
        )
    }

    /// `from_tree` with explicit build options (compression, unfused networks).
    pub fn from_tree_opts(tree: Value, opts: BuildOptions) -> Result<DeepPot, EvalError> {
        crate::threads::init(None);
        let model = Model::from_tree(&tree)?;
        let opts = BuildOptions {
            atomic_virial: false,
            ..opts
        };
        let plain = compile(&model, opts)?;
        Ok(DeepPot {
            model,
            tree,
            plain,
            atomic: OnceLock::new(),
            narrowed: Mutex::new(HashMap::new()),
            chunk: None,
            opts,
            #[cfg(feature = "pjrt")]
            pjrt: None,
        })
    }

    /// Evaluate through a PJRT plugin on `device` from now on: the model is lowered to
    /// StableHLO and compiled by the plugin (per size bucket, on first use).
    #[cfg(feature = "pjrt")]
    pub fn use_pjrt(
        &mut self,
        plugin: &Path,
        device: crate::pjrt::Device,
    ) -> Result<(), EvalError> {
        let lower = dpc_compiler::lower::stablehlo::LowerOptions {
            precision: self.opts.precision,
            compress: self.opts.compress,
            sizes: None,
            platform_index: false,
        };
        let p = crate::pjrt::PjrtModel::new(plugin, device, self.model.clone(), lower)?;
        self.pjrt = Some(std::sync::Arc::new(p));
        Ok(())
    }

    /// Which backend evaluates: dpc's CPU kernels or a PJRT plugin.
    pub fn backend(&self) -> String {
        #[cfg(feature = "pjrt")]
        if let Some(p) = &self.pjrt {
            return p.describe();
        }
        "dpc CPU".into()
    }

    /// The options the graphs were built with.
    pub fn build_options(&self) -> BuildOptions {
        self.opts
    }

    /// Run at most `n` centre atoms through the graph at a time (bounds memory; results are
    /// the same up to summation order).
    pub fn set_chunk_size(&mut self, n: usize) {
        self.chunk = Some(n.max(1));
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The serialization tree the model was read from.
    pub fn tree(&self) -> &Value {
        &self.tree
    }

    /// The graph used for evaluation (with per-atom virials when `atomic`).
    pub fn executor(&self, atomic: bool) -> Result<&Executor, EvalError> {
        if !atomic {
            return Ok(&self.plain);
        }
        self.atomic
            .get_or_init(|| {
                compile(
                    &self.model,
                    BuildOptions {
                        atomic_virial: true,
                        ..self.opts
                    },
                )
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Evaluate one frame. `atomic` also returns per-atom virials.
    pub fn compute(&self, frame: &Frame, atomic: bool) -> Result<Output, EvalError> {
        self.compute_with(frame, atomic, None)
    }

    /// `compute`, adding the time spent per op kind to `profile`.
    pub fn compute_profiled(
        &self,
        frame: &Frame,
        atomic: bool,
        profile: &mut Profile,
    ) -> Result<Output, EvalError> {
        self.compute_with(frame, atomic, Some(profile))
    }

    fn compute_with(
        &self,
        frame: &Frame,
        atomic: bool,
        profile: Option<&mut Profile>,
    ) -> Result<Output, EvalError> {
        let m = &self.model;
        let natoms = frame.atype.len();
        if natoms == 0 {
            return Err(EvalError::Input("the system is empty (no atoms)".into()));
        }
        if frame.coord.len() != natoms * 3 {
            return Err(EvalError::Input(format!(
                "{} coordinates for {natoms} atoms (need {})",
                frame.coord.len(),
                natoms * 3
            )));
        }
        if let Some(i) = frame.coord.iter().position(|x| !x.is_finite()) {
            return Err(EvalError::Input(format!(
                "coordinate {} of atom {} is {}",
                i % 3,
                i / 3,
                frame.coord[i]
            )));
        }
        let ntypes = m.ntypes() as i32;
        if let Some(i) = frame.atype.iter().position(|&t| t >= ntypes) {
            return Err(EvalError::Input(format!(
                "atom {i} has type {}, but the model's type map has {ntypes} types {:?}",
                frame.atype[i], m.type_map
            )));
        }
        let cell = frame.cell.map(Cell::new).transpose()?;
        let fparam = self.fparam(frame.fparam)?;
        let nap = m.dim_aparam();
        if nap > 0 {
            match frame.aparam {
                None => {
                    return Err(EvalError::Input(format!(
                        "the model needs aparam ({nap} per atom)"
                    )))
                }
                Some(a) if a.len() != natoms * nap => {
                    return Err(EvalError::Input(format!(
                        "aparam has {} values, need {} ({nap} per atom)",
                        a.len(),
                        natoms * nap
                    )))
                }
                Some(a) if a.iter().any(|x| !x.is_finite()) => {
                    return Err(EvalError::Input("aparam contains NaN or infinity".into()))
                }
                _ => {}
            }
        }

        // Virtual atoms (negative types) take no part; their outputs stay zero.
        let real: Vec<usize> = (0..natoms).filter(|&i| frame.atype[i] >= 0).collect();
        let nloc = real.len();
        let coord: Vec<f64> = real
            .iter()
            .flat_map(|&i| frame.coord[3 * i..3 * i + 3].iter().copied())
            .collect();
        let atype: Vec<i32> = real.iter().map(|&i| frame.atype[i]).collect();
        let mut out = Output {
            energy: 0.0,
            force: vec![0.0; natoms * 3],
            virial: [0.0; 9],
            atom_energy: vec![0.0; natoms],
            atom_virial: atomic.then(|| vec![0.0; natoms * 9]),
        };
        if nloc == 0 {
            return Ok(out);
        }
        let ext = nlist::build(
            &coord,
            &atype,
            cell.as_ref(),
            m.rcut(),
            &m.sel(),
            m.mixed_types(),
        )?;
        let aparam: Option<Vec<f64>> = (nap > 0).then(|| {
            let a = frame.aparam.unwrap();
            real.iter()
                .flat_map(|&i| a[i * nap..(i + 1) * nap].iter().copied())
                .collect()
        });
        let ex =
            self.evaluate_extended(&ext, fparam.as_deref(), aparam.as_deref(), atomic, profile)?;
        out.energy = ex.energy;
        for (k, &e) in ex.atom_energy.iter().enumerate() {
            out.atom_energy[real[k]] = e;
        }
        out.virial = ex.virial;
        for (k, &owner) in ext.mapping.iter().enumerate() {
            let i = real[owner];
            for d in 0..3 {
                out.force[3 * i + d] += ex.force[3 * k + d];
            }
            if let (Some(av), Some(ev)) = (out.atom_virial.as_mut(), ex.atom_virial.as_ref()) {
                for d in 0..9 {
                    av[9 * i + d] += ev[9 * k + d];
                }
            }
        }
        let finite =
            out.energy.is_finite() && out.force.iter().chain(&out.virial).all(|x| x.is_finite());
        if !finite {
            return Err(EvalError::Exec(ExecError::Shape(
                "the model produced NaN or infinite values for this configuration".into(),
            )));
        }
        Ok(out)
    }

    /// Evaluate an extended system: local atoms first, ghosts after, a formatted neighbour
    /// list (`nlist::build` or `nlist::from_md_list`). Forces and virials stay per extended
    /// atom; `aparam` is `nloc * dim_aparam`, `fparam` already defaulted.
    pub fn evaluate_extended(
        &self,
        ext: &nlist::Extended,
        fparam: Option<&[f64]>,
        aparam: Option<&[f64]>,
        atomic: bool,
        profile: Option<&mut Profile>,
    ) -> Result<ExtendedOutput, EvalError> {
        #[cfg(feature = "pjrt")]
        if let Some(p) = &self.pjrt {
            if ext.centre_weight.is_some() {
                return Err(EvalError::Input(
                    "a message-passing model over several MPI ranks runs on dpc's CPU \
                     runtime, not through a PJRT plugin"
                        .into(),
                ));
            }
            return p.evaluate_extended(ext, fparam, aparam, atomic);
        }
        if self.model.descriptor.has_message_passing() && ext.mapping.iter().any(|&o| o >= ext.nloc)
        {
            return Err(EvalError::Input(format!(
                "the {} descriptor passes messages between atoms, so it needs the mapping \
                 from every ghost atom to its local owner (one MPI rank with the atom map), \
                 and the caller gave none",
                self.model.descriptor.name()
            )));
        }
        let narrowed = self.narrow(ext, atomic)?;
        let (exec, ext) = match &narrowed {
            Some((e, x)) => (&**e, x),
            None => (self.executor(atomic)?, ext),
        };
        let nloc = ext.nloc;
        let mut out = ExtendedOutput {
            energy: 0.0,
            atom_energy: vec![0.0; nloc],
            force: vec![0.0; ext.nall * 3],
            virial: [0.0; 9],
            atom_virial: atomic.then(|| vec![0.0; ext.nall * 9]),
        };
        // Centres go through the graph in chunks, each with only the atoms its neighbour
        // lists touch, so memory stays bounded however large the system is. Energies,
        // forces and virials (with the correction term) are sums over centres, so the
        // chunks add up to the whole. Chunks run side by side on the thread pool (every op
        // of the graph then runs in parallel, not only the kernels that split their own
        // work), and are added up in order, so the result does not depend on timing.
        // A message-passing model reads its neighbours' features, which depend on their own
        // neighbours, so its centres go through the graph together.
        let chunk = if self.model.descriptor.has_message_passing() {
            nloc.max(1)
        } else {
            self.chunk
                .unwrap_or_else(|| balanced_chunk(nloc, ext.nnei, rayon::current_num_threads()))
        };
        let ranges: Vec<(usize, usize)> = (0..nloc)
            .step_by(chunk)
            .map(|s| (s, (s + chunk).min(nloc)))
            .collect();
        let run = |(start, end): (usize, usize), profile: Option<&mut Profile>| {
            self.run_chunk(exec, ext, start, end, fparam, aparam, profile)
        };
        let parts: Vec<ChunkOutput> = match profile {
            Some(p) => ranges
                .iter()
                .map(|&r| run(r, Some(&mut *p)))
                .collect::<Result<_, _>>()?,
            None => ranges
                .par_iter()
                .map(|&r| run(r, None))
                .collect::<Result<_, _>>()?,
        };
        for (part, &(start, end)) in parts.iter().zip(&ranges) {
            out.energy += part.energy;
            out.atom_energy[start..end].copy_from_slice(&part.atom_energy);
            for (s, &k) in part.atoms.iter().enumerate() {
                for d in 0..3 {
                    out.force[3 * k + d] += part.force[3 * s + d];
                }
                for d in 0..9 {
                    out.virial[d] += part.virial[9 * s + d];
                }
                if let Some(av) = out.atom_virial.as_mut() {
                    for d in 0..9 {
                        av[9 * k + d] += part.virial[9 * s + d];
                    }
                }
            }
        }
        Ok(out)
    }

    /// For a model whose neighbour slots can be narrowed (DPA-3), the graph on as many slots
    /// as this system fills (rounded up, so a few graphs serve a whole MD run) and the system
    /// with its list cut to them: padding slots cost as much as real ones, and DPA-3's angle
    /// work grows with the square of its slots.
    fn narrow(
        &self,
        ext: &nlist::Extended,
        atomic: bool,
    ) -> Result<Option<(Arc<Executor>, nlist::Extended)>, EvalError> {
        let dpc_compiler::model::Descriptor::Dpa3(d) = &self.model.descriptor else {
            return Ok(None);
        };
        let (nnei, a_rc2) = (ext.nnei, d.a_rcut * d.a_rcut);
        let mut edges = 0;
        let mut angles = 0;
        for i in 0..ext.nloc {
            let row = &ext.nlist[i * nnei..(i + 1) * nnei];
            let used = row.iter().rposition(|&k| k >= 0).map_or(0, |p| p + 1);
            edges = edges.max(used);
            let xi = &ext.coord[3 * i..3 * i + 3];
            let near = row[..used.min(d.a_sel)]
                .iter()
                .filter(|&&k| {
                    k >= 0 && {
                        let xk = &ext.coord[3 * k as usize..3 * k as usize + 3];
                        let r2: f64 = (0..3).map(|c| (xk[c] - xi[c]).powi(2)).sum();
                        r2 < a_rc2
                    }
                })
                .count();
            angles = angles.max(near);
        }
        let e = edges.div_ceil(4).max(1) * 4;
        let a = angles.div_ceil(2).max(1) * 2;
        let (e, a) = (e.min(d.e_sel), a.min(d.a_sel).min(e.min(d.e_sel)));
        if e == d.e_sel && a == d.a_sel {
            return Ok(None);
        }
        let key = (e, a, atomic);
        let cached = self
            .narrowed
            .lock()
            .expect("not poisoned")
            .get(&key)
            .cloned();
        let exec = match cached {
            Some(x) => x,
            None => {
                let model = self.model.with_slots(e, a).expect("DPA-3 narrows");
                let x = Arc::new(compile(
                    &model,
                    BuildOptions {
                        atomic_virial: atomic,
                        ..self.opts
                    },
                )?);
                self.narrowed
                    .lock()
                    .expect("not poisoned")
                    .insert(key, x.clone());
                x
            }
        };
        let mut nlist = Vec::with_capacity(ext.nloc * e);
        for i in 0..ext.nloc {
            nlist.extend_from_slice(&ext.nlist[i * nnei..i * nnei + e]);
        }
        let cut = nlist::Extended {
            nlist,
            nnei: e,
            ..ext.clone()
        };
        Ok(Some((exec, cut)))
    }

    /// The graph on centres `start..end`.
    #[allow(clippy::too_many_arguments)]
    fn run_chunk(
        &self,
        exec: &Executor,
        ext: &nlist::Extended,
        start: usize,
        end: usize,
        fparam: Option<&[f64]>,
        aparam: Option<&[f64]>,
        profile: Option<&mut Profile>,
    ) -> Result<ChunkOutput, EvalError> {
        let nap = self.model.dim_aparam();
        let mut sub = SubSystem::new(ext, start, end);
        // Where the system's atom 0 is in the chunk (added as an unused extra atom if no
        // neighbour list reaches it), for graphs that read its type.
        let pad_input = exec.graph().input_index(io::PAD_ATOM);
        let pad_atom = pad_input.map(|_| match sub.atoms.iter().position(|&k| k == 0) {
            Some(p) => p,
            None => {
                sub.atoms.push(0);
                sub.atoms.len() - 1
            }
        });
        let n = sub.atoms.len();
        let mut named: Vec<(&str, Tensor)> = vec![
            (
                io::COORD,
                Tensor::f64(
                    vec![n, 3],
                    sub.atoms
                        .iter()
                        .flat_map(|&k| ext.coord[3 * k..3 * k + 3].iter().copied())
                        .collect(),
                ),
            ),
            (
                io::ATYPE,
                Tensor::i32(vec![n], sub.atoms.iter().map(|&k| ext.atype[k]).collect()),
            ),
            (
                io::NLIST,
                Tensor::i32(vec![end - start, ext.nnei], std::mem::take(&mut sub.nlist)),
            ),
        ];
        if let Some(fp) = fparam {
            named.push((io::FPARAM, Tensor::f64(vec![fp.len()], fp.to_vec())));
        }
        if let Some(ap) = aparam {
            named.push((
                io::APARAM,
                Tensor::f64(vec![end - start, nap], ap[start * nap..end * nap].to_vec()),
            ));
        }
        if let Some(p) = pad_atom {
            named.push((io::PAD_ATOM, Tensor::i32(vec![], vec![p as i32])));
        }
        if exec.graph().input_index(io::MAPPING).is_some() {
            // Whole-system runs only (see `evaluate_extended`): sub-system atoms are the
            // extended atoms themselves.
            debug_assert!(start == 0 && end == ext.nloc);
            named.push((
                io::MAPPING,
                Tensor::i32(
                    vec![n],
                    sub.atoms.iter().map(|&k| ext.mapping[k] as i32).collect(),
                ),
            ));
            let w = match &ext.centre_weight {
                Some(w) => w[start..end].to_vec(),
                None => vec![1.0; end - start],
            };
            named.push((io::CENTRE_WEIGHT, Tensor::f64(vec![end - start], w)));
        }
        let mut inputs = Vec::with_capacity(named.len());
        for spec in &exec.graph().inputs {
            let k = named
                .iter()
                .position(|(name, _)| *name == spec.name)
                .ok_or_else(|| {
                    EvalError::Exec(ExecError::Input(format!(
                        "no value for the graph input {}",
                        spec.name
                    )))
                })?;
            inputs.push(named.swap_remove(k).1);
        }
        let bind = Bindings {
            nloc: end - start,
            nall: sub.atoms.len(),
        };
        let mut res = match profile {
            Some(p) => exec.run_profiled(inputs, bind, p)?,
            None => exec.run(inputs, bind)?,
        };
        let mut take = |name: &str| -> Vec<f64> {
            let k = exec.output_index(name).expect("graph has the output");
            match std::mem::replace(&mut res[k], Tensor::f64(vec![0], vec![])).data {
                dpc_compiler::graph::Data::F64(v) => v,
                _ => unreachable!("outputs are f64"),
            }
        };
        Ok(ChunkOutput {
            energy: take(io::ENERGY)[0],
            atom_energy: take(io::ATOM_ENERGY),
            force: take(io::FORCE),
            virial: take(io::VIRIAL),
            atoms: sub.atoms,
        })
    }

    /// The frame parameters to use: given, or the model's default.
    pub fn fparam(&self, given: Option<&[f64]>) -> Result<Option<Vec<f64>>, EvalError> {
        let nfp = self.model.dim_fparam();
        if nfp == 0 {
            return Ok(None);
        }
        let v = match (given, &self.model.fitting.default_fparam) {
            (Some(f), _) => f.to_vec(),
            (None, Some(d)) => d.clone(),
            (None, None) => {
                return Err(EvalError::Input(format!(
                    "the model needs fparam ({nfp} values) and has no default"
                )))
            }
        };
        if v.len() != nfp {
            return Err(EvalError::Input(format!(
                "fparam has {} values, the model takes {nfp}",
                v.len()
            )));
        }
        if v.iter().any(|x| !x.is_finite()) {
            return Err(EvalError::Input("fparam contains NaN or infinity".into()));
        }
        Ok(Some(v))
    }
}

/// Centres per graph run: about 64k neighbour slots, so the reference executor's largest
/// intermediates stay in the tens of megabytes.
fn chunk_size(nnei: usize) -> usize {
    (65_536 / nnei.max(1)).clamp(16, 4096)
}

/// `chunk_size`, shrunk so the chunks come in a multiple of `threads` of equal size (each
/// thread gets the same work).
fn balanced_chunk(nloc: usize, nnei: usize, threads: usize) -> usize {
    let threads = threads.max(1);
    let n = nloc.div_ceil(chunk_size(nnei)).div_ceil(threads) * threads;
    nloc.div_ceil(n.max(1)).max(1)
}

/// One chunk's outputs, per sub-system atom (`atoms` maps them back).
struct ChunkOutput {
    energy: f64,
    atom_energy: Vec<f64>,
    force: Vec<f64>,
    virial: Vec<f64>,
    atoms: Vec<usize>,
}

/// The centres `start..end` of an extended system, renumbered: those centres first, then
/// every other atom their neighbour lists refer to.
struct SubSystem {
    /// Extended-system index of each sub-system atom.
    atoms: Vec<usize>,
    /// `[(end - start) * nnei]` in sub-system indices, -1 padded.
    nlist: Vec<i32>,
}

impl SubSystem {
    fn new(ext: &nlist::Extended, start: usize, end: usize) -> SubSystem {
        let rows = &ext.nlist[start * ext.nnei..end * ext.nnei];
        if start == 0 && end == ext.nloc {
            return SubSystem {
                atoms: (0..ext.nall).collect(),
                nlist: rows.to_vec(),
            };
        }
        let mut index: crate::fast_map::FastMap<usize, i32> = Default::default();
        index.reserve(4 * (end - start));
        let mut atoms: Vec<usize> = (start..end).collect();
        for (s, &k) in atoms.iter().enumerate() {
            index.insert(k, s as i32);
        }
        let nlist = rows
            .iter()
            .map(|&k| {
                if k < 0 {
                    return -1;
                }
                *index.entry(k as usize).or_insert_with(|| {
                    atoms.push(k as usize);
                    atoms.len() as i32 - 1
                })
            })
            .collect();
        SubSystem { atoms, nlist }
    }
}
