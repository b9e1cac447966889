//! Typed, path-tracking access to the serialization tree, so every error names the field
//! (`model.descriptor.embeddings.networks[3].layers[0].@variables.w: ...`).

use dpc_formats::{DType as FDType, NdArray, Value};

use super::ModelError;
use crate::graph::{DType, Tensor};

/// A position in the tree: the value and its path from the root.
#[derive(Clone, Copy)]
pub struct At<'a> {
    pub v: &'a Value,
    path: &'a str,
}

/// Owned path for children (paths are built as strings on the fly).
pub struct Child<'a> {
    pub v: &'a Value,
    pub path: String,
}

impl<'a> Child<'a> {
    pub fn at(&self) -> At<'_> {
        At {
            v: self.v,
            path: &self.path,
        }
    }
}

impl<'a> At<'a> {
    pub fn root(v: &'a Value, path: &'a str) -> At<'a> {
        At { v, path }
    }

    pub fn path(&self) -> &str {
        self.path
    }

    pub fn err(&self, msg: impl std::fmt::Display) -> ModelError {
        ModelError::Invalid(format!("{}: {msg}", self.path))
    }

    pub fn unsupported(&self, msg: impl std::fmt::Display) -> ModelError {
        ModelError::Unsupported(format!("{}: {msg}", self.path))
    }

    pub fn has(&self, key: &str) -> bool {
        self.v.get(key).is_some_and(|x| !x.is_null())
    }

    /// A required child.
    pub fn get(&self, key: &str) -> Result<Child<'a>, ModelError> {
        if self.v.as_dict().is_none() {
            return Err(self.err(format!("expected a dict, found {}", self.v.kind())));
        }
        match self.v.get(key) {
            Some(v) => Ok(Child {
                v,
                path: format!("{}.{key}", self.path),
            }),
            None => Err(self.err(format!("missing key `{key}`"))),
        }
    }

    /// An optional child (missing or null gives `None`).
    pub fn opt(&self, key: &str) -> Option<Child<'a>> {
        match self.v.get(key) {
            Some(v) if !v.is_null() => Some(Child {
                v,
                path: format!("{}.{key}", self.path),
            }),
            _ => None,
        }
    }

    pub fn f64(&self, key: &str) -> Result<f64, ModelError> {
        let c = self.get(key)?;
        c.v.as_f64().ok_or_else(|| {
            c.at()
                .err(format!("expected a number, found {}", c.v.kind()))
        })
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, ModelError> {
        match self.opt(key) {
            None => Ok(None),
            Some(c) => {
                c.v.as_f64()
                    .map(Some)
                    .ok_or_else(|| c.at().err("expected a number"))
            }
        }
    }

    /// `ntypes`, checked against the model's type map (`ntypes_model` types).
    pub fn ntypes(&self, ntypes_model: usize) -> Result<usize, ModelError> {
        let ntypes = self.usize("ntypes")?;
        if ntypes != ntypes_model {
            return Err(self.err(format!(
                "ntypes {ntypes} differs from the type map's {ntypes_model}"
            )));
        }
        Ok(ntypes)
    }

    pub fn usize(&self, key: &str) -> Result<usize, ModelError> {
        let c = self.get(key)?;
        c.at().as_usize()
    }

    pub fn as_usize(&self) -> Result<usize, ModelError> {
        match self.v.as_i64() {
            Some(i) if i >= 0 => Ok(i as usize),
            _ => Err(self.err(format!(
                "expected a non-negative integer, found {}",
                self.v.kind()
            ))),
        }
    }

    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize, ModelError> {
        match self.opt(key) {
            None => Ok(default),
            Some(c) => c.at().as_usize(),
        }
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, ModelError> {
        match self.opt(key) {
            None => Ok(default),
            Some(c) => {
                c.v.as_bool()
                    .ok_or_else(|| c.at().err("expected true or false"))
            }
        }
    }

    pub fn str(&self, key: &str) -> Result<&'a str, ModelError> {
        let c = self.get(key)?;
        c.v.as_str().ok_or_else(|| {
            c.at()
                .err(format!("expected a string, found {}", c.v.kind()))
        })
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&'a str>, ModelError> {
        match self.opt(key) {
            None => Ok(None),
            Some(c) => {
                c.v.as_str()
                    .map(Some)
                    .ok_or_else(|| c.at().err("expected a string"))
            }
        }
    }

    pub fn list(&self, key: &str) -> Result<Vec<Child<'a>>, ModelError> {
        let c = self.get(key)?;
        let l =
            c.v.as_list()
                .ok_or_else(|| c.at().err(format!("expected a list, found {}", c.v.kind())))?;
        Ok(l.iter()
            .enumerate()
            .map(|(i, v)| Child {
                v,
                path: format!("{}[{i}]", c.path),
            })
            .collect())
    }

    /// A list of non-negative integers (`sel`, `neuron`, ...). A bare integer is a 1-list.
    pub fn usizes(&self, key: &str) -> Result<Vec<usize>, ModelError> {
        let c = self.get(key)?;
        if c.v.as_i64().is_some() {
            return Ok(vec![c.at().as_usize()?]);
        }
        self.list(key)?.iter().map(|x| x.at().as_usize()).collect()
    }

    /// A list of integer pairs (`exclude_types`, `pair_exclude_types`).
    pub fn pairs(&self, key: &str, ntypes: usize) -> Result<Vec<(usize, usize)>, ModelError> {
        let Some(c) = self.opt(key) else {
            return Ok(vec![]);
        };
        let Some(l) = c.v.as_list() else {
            return Err(c.at().err("expected a list of type pairs"));
        };
        let mut out = Vec::new();
        for (i, p) in l.iter().enumerate() {
            let here = format!("{}[{i}]", c.path);
            let at = At { v: p, path: &here };
            let pair = p
                .as_list()
                .filter(|x| x.len() == 2)
                .ok_or_else(|| at.err("expected a pair [ti, tj]"))?;
            let a = At {
                v: &pair[0],
                path: &here,
            }
            .as_usize()?;
            let b = At {
                v: &pair[1],
                path: &here,
            }
            .as_usize()?;
            if a >= ntypes || b >= ntypes {
                return Err(at.err(format!("type index out of range (ntypes = {ntypes})")));
            }
            out.push((a, b));
        }
        Ok(out)
    }

    /// A list of type indices (`exclude_types` of fittings, `atom_exclude_types`).
    pub fn types(&self, key: &str, ntypes: usize) -> Result<Vec<usize>, ModelError> {
        let Some(c) = self.opt(key) else {
            return Ok(vec![]);
        };
        let Some(l) = c.v.as_list() else {
            return Err(c.at().err("expected a list of types"));
        };
        let out: Vec<usize> = l
            .iter()
            .map(|x| {
                At {
                    v: x,
                    path: &c.path,
                }
                .as_usize()
            })
            .collect::<Result<_, _>>()?;
        if let Some(t) = out.iter().find(|&&t| t >= ntypes) {
            return Err(c
                .at()
                .err(format!("type {t} out of range (ntypes = {ntypes})")));
        }
        Ok(out)
    }

    /// Check `@version` against the range DeePMD-kit 3.2 accepts (`default` when missing).
    pub fn version(&self, default: i64, min: i64, max: i64) -> Result<i64, ModelError> {
        let v = match self.opt("@version") {
            None => default,
            Some(c) => {
                c.v.as_i64()
                    .ok_or_else(|| c.at().err("expected an integer @version"))?
            }
        };
        if v < min || v > max {
            return Err(self.unsupported(format!(
                "@version {v} is outside the range {min}..={max} that DeePMD-kit 3.2 accepts"
            )));
        }
        Ok(v)
    }

    /// A float array under this node's `@variables`.
    pub fn var(&self, name: &str) -> Result<&'a NdArray, ModelError> {
        self.opt_var(name)?
            .ok_or_else(|| self.err(format!("missing variable @variables.{name}")))
    }

    pub fn opt_var(&self, name: &str) -> Result<Option<&'a NdArray>, ModelError> {
        let vars = self.get("@variables")?;
        match vars.v.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(other) => Err(vars.at().err(format!(
                "`{name}` should be an array, found {}",
                other.kind()
            ))),
        }
    }
}

/// Convert a stored float array to a graph tensor of its own precision.
pub fn to_tensor(a: &NdArray, what: &At) -> Result<Tensor, ModelError> {
    match a.dtype {
        FDType::F64 => Ok(Tensor::f64(a.shape.clone(), a.to_f64_vec())),
        FDType::F32 => Ok(Tensor::f32(
            a.shape.clone(),
            a.to_f64_vec().iter().map(|&x| x as f32).collect(),
        )),
        other => Err(what.unsupported(format!("weights of dtype {}", other.name()))),
    }
}

/// DeePMD-kit's precision names.
pub fn precision(name: &str, at: &At) -> Result<DType, ModelError> {
    match name.to_ascii_lowercase().as_str() {
        "float64" | "double" | "default" => Ok(DType::F64),
        "float32" | "single" => Ok(DType::F32),
        other => Err(at.unsupported(format!(
            "precision `{other}` (dpc computes in float64 or float32)"
        ))),
    }
}
