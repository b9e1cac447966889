//! `DeepPot`: evaluate a model on atomic configurations, with DeePMD-kit's inputs, outputs,
//! units and conventions (`deepmd.infer.DeepPot.eval`).

use std::fmt;
use std::path::Path;
use std::sync::OnceLock;

use dpc_compiler::build::{build_graph, io, BuildOptions};
use dpc_compiler::graph::{verify::verify, Bindings, Tensor};
use dpc_compiler::model::{Model, ModelError};
use dpc_formats::{FormatError, Value};

use crate::cpu::{ExecError, Executor};
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
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvalError::Format(e) => e.fmt(f),
            EvalError::Model(e) => e.fmt(f),
            EvalError::Input(m) => write!(f, "bad input: {m}"),
            EvalError::Graph(m) => write!(f, "cannot compile the model: {m}"),
            EvalError::Exec(e) => write!(f, "evaluation failed: {e}"),
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

/// A loaded model with its compiled graphs.
pub struct DeepPot {
    model: Model,
    tree: Value,
    plain: Executor,
    atomic: OnceLock<Result<Executor, EvalError>>,
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
        let model = Model::from_tree(&tree)?;
        let plain = compile(
            &model,
            BuildOptions {
                atomic_virial: false,
            },
        )?;
        Ok(DeepPot {
            model,
            tree,
            plain,
            atomic: OnceLock::new(),
        })
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
                    },
                )
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Evaluate one frame. `atomic` also returns per-atom virials.
    pub fn compute(&self, frame: &Frame, atomic: bool) -> Result<Output, EvalError> {
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
        let exec = self.executor(atomic)?;
        let mut inputs = vec![
            Tensor::f64(vec![ext.nall, 3], ext.coord.clone()),
            Tensor::i32(vec![ext.nall], ext.atype.clone()),
            Tensor::i32(vec![nloc, ext.nnei], ext.nlist.clone()),
        ];
        if let Some(fp) = fparam {
            inputs.push(Tensor::f64(vec![fp.len()], fp));
        }
        if nap > 0 {
            let a = frame.aparam.unwrap();
            let ap: Vec<f64> = real
                .iter()
                .flat_map(|&i| a[i * nap..(i + 1) * nap].iter().copied())
                .collect();
            inputs.push(Tensor::f64(vec![nloc, nap], ap));
        }
        let res = exec.run(
            inputs,
            Bindings {
                nloc,
                nall: ext.nall,
            },
        )?;
        let get = |name: &str| -> &[f64] {
            let k = exec.output_index(name).expect("graph has the output");
            res[k].as_f64().expect("outputs are f64")
        };
        out.energy = get(io::ENERGY)[0];
        let ae = get(io::ATOM_ENERGY);
        let fe = get(io::FORCE);
        let ve = get(io::VIRIAL);
        for (k, &i) in real.iter().enumerate() {
            out.atom_energy[i] = ae[k];
        }
        for (e, &owner) in ext.mapping.iter().enumerate() {
            let i = real[owner];
            for d in 0..3 {
                out.force[3 * i + d] += fe[3 * e + d];
            }
            for d in 0..9 {
                out.virial[d] += ve[9 * e + d];
            }
            if let Some(av) = out.atom_virial.as_mut() {
                for d in 0..9 {
                    av[9 * i + d] += ve[9 * e + d];
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

    fn fparam(&self, given: Option<&[f64]>) -> Result<Option<Vec<f64>>, EvalError> {
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
