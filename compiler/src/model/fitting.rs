//! The energy fitting net (`deepmd/dpmodel/fitting/{general,invar,ener}_fitting.py`).

use super::access::{precision, to_tensor, At};
use super::network::{Net, NetCollection};
use super::ModelError;
use crate::graph::{DType, Tensor};

/// Per-atom energy from the descriptor (plus frame/atomic parameters).
#[derive(Debug, Clone)]
pub struct EnergyFitting {
    pub ntypes: usize,
    pub dim_descrpt: usize,
    /// One net shared by all types (`mixed_types`), or one per atom type.
    pub mixed_types: bool,
    pub nets: NetCollection,
    /// `[ntypes]`: added to each atom's output by its type.
    pub bias_atom_e: Vec<f64>,
    pub fparam: Option<ParamNorm>,
    pub aparam: Option<ParamNorm>,
    /// aparam is a mask, not a network input (`use_aparam_as_mask`).
    pub aparam_is_mask: bool,
    pub numb_aparam: usize,
    pub case_embd: Option<Tensor>,
    pub default_fparam: Option<Vec<f64>>,
    pub exclude_types: Vec<usize>,
    /// Per type: subtract the net's output at a zero descriptor (`atom_ener` set).
    pub remove_vacuum: Option<Vec<bool>>,
    pub dtype: DType,
}

/// `(x - avg) * inv_std` applied to fparam or aparam before they join the descriptor.
#[derive(Debug, Clone)]
pub struct ParamNorm {
    pub avg: Vec<f64>,
    pub inv_std: Vec<f64>,
}

impl ParamNorm {
    pub fn dim(&self) -> usize {
        self.avg.len()
    }
}

impl EnergyFitting {
    pub fn parse(
        at: At,
        ntypes_model: usize,
        dim_descrpt_model: usize,
    ) -> Result<EnergyFitting, ModelError> {
        let kind = at.opt_str("type")?.unwrap_or("ener");
        if kind != "ener" {
            return Err(at.unsupported(format!(
                "fitting `{kind}` (dpc evaluates energy models; dipole, polar, dos and property fittings are not supported)"
            )));
        }
        at.version(1, 1, 4)?;
        if at.opt("spin").is_some() {
            return Err(at.unsupported("spin fitting"));
        }
        if at.bool_or("tot_ener_zero", false)? {
            return Err(at.unsupported("tot_ener_zero"));
        }
        if at.opt("layer_name").is_some() {
            return Err(at.unsupported("shared fitting layers (layer_name)"));
        }
        if let Some(d) = at.opt("dim_out") {
            if d.at().as_usize()? != 1 {
                return Err(at.err("an energy fitting has dim_out 1"));
            }
        }
        let ntypes = at.ntypes(ntypes_model)?;
        let dim_descrpt = at.usize("dim_descrpt")?;
        if dim_descrpt != dim_descrpt_model {
            return Err(at.err(format!(
                "dim_descrpt {dim_descrpt} but the descriptor gives {dim_descrpt_model}"
            )));
        }
        let dtype = precision(at.opt_str("precision")?.unwrap_or("float64"), &at)?;
        let mixed_types = at.bool_or("mixed_types", false)?;
        let nets = NetCollection::parse(at.get("nets")?.at())?;
        if nets.ndim != if mixed_types { 0 } else { 1 } {
            return Err(at.err("fitting nets' ndim does not match mixed_types"));
        }
        let numb_fparam = at.usize_or("numb_fparam", 0)?;
        let numb_aparam = at.usize_or("numb_aparam", 0)?;
        let dim_case_embd = at.usize_or("dim_case_embd", 0)?;
        let aparam_is_mask = at.bool_or("use_aparam_as_mask", false)?;
        let vec_var = |name: &str, n: usize| -> Result<Option<Vec<f64>>, ModelError> {
            match at.opt_var(name)? {
                None => Ok(None),
                Some(a) if a.len() == n => Ok(Some(a.to_f64_vec())),
                Some(a) => Err(at.err(format!("{name} has {} values, expected {n}", a.len()))),
            }
        };
        let norm = |n: usize, avg: &str, inv: &str| -> Result<Option<ParamNorm>, ModelError> {
            if n == 0 {
                return Ok(None);
            }
            Ok(Some(ParamNorm {
                avg: vec_var(avg, n)?.unwrap_or_else(|| vec![0.0; n]),
                inv_std: vec_var(inv, n)?.unwrap_or_else(|| vec![1.0; n]),
            }))
        };
        let bias = at.var("bias_atom_e")?;
        if bias.len() != ntypes {
            return Err(at.err(format!(
                "bias_atom_e has shape {:?}, expected [{ntypes}, 1]",
                bias.shape
            )));
        }
        let case_embd = match at.opt_var("case_embd")? {
            Some(a) if dim_case_embd > 0 => {
                if a.len() != dim_case_embd {
                    return Err(at.err("case_embd length differs from dim_case_embd"));
                }
                let mut t = to_tensor(a, &at)?;
                t.shape = vec![dim_case_embd];
                Some(t)
            }
            None if dim_case_embd > 0 => return Err(at.err("dim_case_embd > 0 but no case_embd")),
            _ => None,
        };
        let default_fparam = match at.opt("default_fparam") {
            None => None,
            Some(c) => {
                let l =
                    c.v.as_list()
                        .ok_or_else(|| c.at().err("expected a list of numbers"))?;
                let v: Option<Vec<f64>> = l.iter().map(|x| x.as_f64()).collect();
                let v = v.ok_or_else(|| c.at().err("expected a list of numbers"))?;
                if v.len() != numb_fparam {
                    return Err(c
                        .at()
                        .err(format!("{} values, numb_fparam is {numb_fparam}", v.len())));
                }
                Some(v)
            }
        };
        let remove_vacuum = match at.opt("atom_ener") {
            Some(c) => {
                let l = c.v.as_list().ok_or_else(|| c.at().err("expected a list"))?;
                let flags: Vec<bool> = l.iter().map(|x| !x.is_null()).collect();
                flags.iter().any(|&f| f).then_some(flags)
            }
            None => None,
        };
        let in_dim = dim_descrpt
            + numb_fparam
            + if aparam_is_mask { 0 } else { numb_aparam }
            + dim_case_embd;
        for net in nets.nets.iter().flatten() {
            check_fitting_net(&at, net, in_dim)?;
        }
        let needed: Vec<usize> = if mixed_types {
            vec![0]
        } else {
            (0..ntypes).collect()
        };
        for t in needed {
            if nets.nets.get(t).is_none_or(|n| n.is_none()) {
                return Err(at.err(format!("missing fitting network for type {t}")));
            }
        }
        Ok(EnergyFitting {
            ntypes,
            dim_descrpt,
            mixed_types,
            nets,
            bias_atom_e: bias.to_f64_vec(),
            fparam: norm(numb_fparam, "fparam_avg", "fparam_inv_std")?,
            aparam: norm(numb_aparam, "aparam_avg", "aparam_inv_std")?,
            aparam_is_mask,
            numb_aparam,
            case_embd,
            default_fparam,
            exclude_types: at.types("exclude_types", ntypes)?,
            remove_vacuum,
            dtype,
        })
    }

    pub fn numb_fparam(&self) -> usize {
        self.fparam.as_ref().map_or(0, ParamNorm::dim)
    }
}

fn check_fitting_net(at: &At, net: &Net, in_dim: usize) -> Result<(), ModelError> {
    if net.n_in() != Some(in_dim) {
        return Err(at.err(format!(
            "a fitting net takes {:?} inputs, expected {in_dim}",
            net.n_in()
        )));
    }
    if net.n_out() != Some(1) {
        return Err(at.err(format!(
            "a fitting net gives {:?} outputs, expected 1",
            net.n_out()
        )));
    }
    Ok(())
}
