//! The training script: the model section of `train_attr/training_script` (or the one
//! inferred from the graph), read with the TensorFlow constructors' defaults.

use super::{bad, ints, unsupported, R};
use crate::tree::Value;

/// A section of the model JSON; Python's `j.get(key, default)` with the TensorFlow
/// constructors' defaults.
#[derive(Clone, Copy)]
pub(super) struct J<'a>(pub(super) &'a Value);

impl<'a> J<'a> {
    /// Present and not null.
    pub(super) fn get(&self, k: &str) -> Option<&'a Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }

    /// `j.get(k, default)`, verbatim (a present null stays null).
    pub(super) fn or(&self, k: &str, default: Value) -> Value {
        self.0.get(k).cloned().unwrap_or(default)
    }

    pub(super) fn bool(&self, k: &str, default: bool) -> R<bool> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| bad(format!("model definition: `{k}` is not a bool"))),
        }
    }

    pub(super) fn str(&self, k: &str, default: &str) -> R<String> {
        match self.get(k) {
            None => Ok(default.to_string()),
            Some(v) => v
                .as_str()
                .map(String::from)
                .ok_or_else(|| bad(format!("model definition: `{k}` is not a string"))),
        }
    }

    pub(super) fn usize(&self, k: &str, default: usize) -> R<usize> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => {
                count(v).ok_or_else(|| bad(format!("model definition: `{k}` is not a count")))
            }
        }
    }

    pub(super) fn f64(&self, k: &str, default: f64) -> R<f64> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| bad(format!("model definition: `{k}` is not a number"))),
        }
    }

    /// A list of counts (verbatim value and parsed), or the default.
    pub(super) fn counts(&self, k: &str, default: &[usize]) -> R<(Value, Vec<usize>)> {
        match self.get(k) {
            None => Ok((ints(default), default.to_vec())),
            Some(v @ Value::List(l)) => {
                let parsed = l
                    .iter()
                    .map(|x| {
                        count(x).ok_or_else(|| {
                            bad(format!("model definition: `{k}` holds a non-count"))
                        })
                    })
                    .collect::<R<Vec<_>>>()?;
                Ok((v.clone(), parsed))
            }
            Some(_) => Err(bad(format!("model definition: `{k}` is not a list"))),
        }
    }

    pub(super) fn sub(&self, k: &str) -> R<J<'a>> {
        match self.get(k) {
            Some(v) if v.as_dict().is_some() => Ok(J(v)),
            Some(_) => Err(bad(format!("model definition: `{k}` is not a dict"))),
            None => Err(bad(format!("model definition has no `{k}`"))),
        }
    }

    /// A required number, verbatim (int or float as written) and as f64.
    pub(super) fn number(&self, k: &str) -> R<(Value, f64)> {
        let v = self
            .get(k)
            .ok_or_else(|| bad(format!("model definition: `{k}` is missing")))?;
        let f = match v {
            Value::Int(_) | Value::Float(_) => v.as_f64().unwrap_or(0.0),
            _ => return Err(bad(format!("model definition: `{k}` is not a number"))),
        };
        Ok((v.clone(), f))
    }
}

/// A non-negative JSON integer below 2^32 (sizes, counts; larger ones are not a model).
pub(super) fn count(v: &Value) -> Option<usize> {
    match v {
        Value::Int(i) if (0..1 << 32).contains(i) => usize::try_from(*i).ok(),
        _ => None,
    }
}

/// `deepmd.tf.common.get_precision(p).name` (`default` is TensorFlow's global float64).
pub(super) fn prec_name(p: &str) -> R<&'static str> {
    Ok(match p {
        "default" | "float64" => "float64",
        "float32" => "float32",
        "float16" => "float16",
        other => return Err(unsupported(format!("precision `{other}`"))),
    })
}
