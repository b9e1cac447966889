//! The `.yaml`/`.yml` container: the serialization tree as YAML, each array written as
//! `{"@class": "np.ndarray", "@is_variable": true, "@version": 1, "dtype", "value"}`
//! (DeePMD-kit `save_dp_model`). Reading goes through `serde_yaml_ng`; writing is our own
//! emitter because PyYAML (YAML 1.1) reads `1e-05` as a string: floats must carry a `.` and
//! a signed exponent (`1.0e-05`), exactly as PyYAML's own representer writes them.

use crate::json::python_float_repr;
use crate::tree::{inline_ndarrays, Dict, Value};
use crate::FormatError;

/// Parse YAML text into a tree, turning every `np.ndarray` variable into an array.
pub fn read(text: &str) -> Result<Value, FormatError> {
    let raw: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| FormatError::invalid(format!("YAML: {e}")))?;
    let tree = from_yaml(raw, 0)?;
    if tree.as_dict().is_none() {
        return Err(FormatError::invalid(
            "the YAML document is not a mapping: not a DeePMD-kit model",
        ));
    }
    inline_ndarrays(tree)
}

const MAX_DEPTH: usize = 256;

fn from_yaml(v: serde_yaml_ng::Value, depth: usize) -> Result<Value, FormatError> {
    use serde_yaml_ng::Value as Y;
    if depth > MAX_DEPTH {
        return Err(FormatError::invalid("YAML nesting too deep"));
    }
    Ok(match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else {
                Value::Float(
                    n.as_f64()
                        .ok_or_else(|| FormatError::invalid("YAML number out of range"))?,
                )
            }
        }
        Y::String(s) => Value::Str(s),
        Y::Sequence(s) => Value::List(
            s.into_iter()
                .map(|x| from_yaml(x, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(m) => {
            let mut d = Dict::with_capacity(m.len());
            for (k, v) in m {
                let key = match k {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    other => {
                        return Err(FormatError::invalid(format!(
                            "unsupported YAML key {other:?}"
                        )))
                    }
                };
                d.insert(key, from_yaml(v, depth + 1)?);
            }
            Value::Dict(d)
        }
        Y::Tagged(t) => from_yaml(t.value, depth + 1)?,
    })
}

/// Write a tree as YAML that PyYAML's `safe_load` (and so DeePMD-kit) reads back identically.
pub fn write(tree: &Value) -> Result<String, FormatError> {
    let Value::Dict(d) = tree else {
        return Err(FormatError::invalid(
            "a model tree must be a dict at the top",
        ));
    };
    let mut out = String::new();
    emit_dict(d, 0, &mut out)?;
    Ok(out)
}

fn emit_dict(d: &Dict, indent: usize, out: &mut String) -> Result<(), FormatError> {
    if d.is_empty() {
        out.push_str(&" ".repeat(indent));
        out.push_str("{}\n");
        return Ok(());
    }
    for (k, v) in d {
        out.push_str(&" ".repeat(indent));
        out.push_str(&scalar_str(k));
        out.push(':');
        emit_child(v, indent, out)?;
    }
    Ok(())
}

/// After `key:` or `-`: a flow value on the same line, or a nested block below.
fn emit_child(v: &Value, indent: usize, out: &mut String) -> Result<(), FormatError> {
    match v {
        Value::Dict(d) if !d.is_empty() => {
            out.push('\n');
            emit_dict(d, indent + 2, out)
        }
        Value::Array(a) => {
            out.push('\n');
            emit_dict(&crate::tree::ndarray_to_dict(a), indent + 2, out)
        }
        Value::List(l)
            if l.iter()
                .any(|x| matches!(x, Value::Dict(_) | Value::List(_) | Value::Array(_))) =>
        {
            out.push('\n');
            for item in l {
                out.push_str(&" ".repeat(indent));
                out.push('-');
                emit_child(item, indent + 2, out)?;
            }
            Ok(())
        }
        other => {
            out.push(' ');
            flow(other, out)?;
            out.push('\n');
            Ok(())
        }
    }
}

fn flow(v: &Value, out: &mut String) -> Result<(), FormatError> {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::Float(f) => out.push_str(&yaml_float(*f)),
        Value::Str(s) => out.push_str(&scalar_str(s)),
        Value::List(l) => {
            out.push('[');
            for (i, x) in l.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                flow(x, out)?;
            }
            out.push(']');
        }
        Value::Dict(d) if d.is_empty() => out.push_str("{}"),
        Value::Dict(_) | Value::Array(_) => unreachable!("block values are emitted by emit_child"),
        Value::Bytes(_) => {
            return Err(FormatError::unsupported(
                "byte blobs (StableHLO exports) in YAML; write a .dp or .hlo file instead",
            ))
        }
    }
    Ok(())
}

/// PyYAML's float representer: repr, lowercased, `.0` inserted before a bare exponent.
fn yaml_float(f: f64) -> String {
    let s = python_float_repr(f, ".nan", ".inf");
    if s.contains('e') && !s.contains('.') {
        s.replacen('e', ".0e", 1)
    } else {
        s
    }
}

/// A string as a YAML scalar: plain when it cannot be mistaken for anything else, else quoted.
fn scalar_str(s: &str) -> String {
    const SPECIAL: [&str; 12] = [
        "y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf", "~",
    ];
    let plain = !s.is_empty()
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !SPECIAL.contains(&s.to_ascii_lowercase().as_str());
    if plain {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    crate::json::write_string(s, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_pyyaml_floats() {
        assert_eq!(yaml_float(1e-5), "1.0e-05");
        assert_eq!(yaml_float(1.5e-7), "1.5e-07");
        assert_eq!(yaml_float(2.0), "2.0");
        assert_eq!(yaml_float(f64::NAN), ".nan");
        assert_eq!(yaml_float(f64::NEG_INFINITY), "-.inf");
    }

    #[test]
    fn round_trip_with_arrays() {
        let text = "\"@variables\":\n  w:\n    \"@class\": np.ndarray\n    \"@is_variable\": true\n    \"@version\": 1\n    dtype: float64\n    value: [[1.0, 2.5e-07], [3.0, .nan]]\n  s: 0.5\nname: \"yes\"\nsel: [46, 92]\nlayers:\n- a: 1\n  b: []\n- c: {}\n";
        let tree = read(text).unwrap();
        let w = tree
            .get("@variables")
            .unwrap()
            .get("w")
            .unwrap()
            .as_array()
            .unwrap();
        assert_eq!(w.shape, vec![2, 2]);
        assert_eq!(w.get_f64(1), 2.5e-7);
        assert_eq!(tree.get("name").unwrap().as_str(), Some("yes"));
        let again = read(&write(&tree).unwrap()).unwrap();
        // NaN != NaN, so compare bytes of the array and the rest structurally.
        let w2 = again
            .get("@variables")
            .unwrap()
            .get("w")
            .unwrap()
            .as_array()
            .unwrap();
        assert_eq!(w.bytes, w2.bytes);
        assert_eq!(tree.get("layers"), again.get("layers"));
        assert_eq!(tree.get("sel"), again.get("sel"));
    }

    #[test]
    fn ragged_and_bad_arrays_are_errors() {
        let ragged = "\"@variables\":\n  w: {\"@class\": np.ndarray, \"@is_variable\": true, dtype: float64, value: [[1.0], [2.0, 3.0]]}\n";
        assert!(read(ragged).is_err());
        let badtype = "\"@variables\":\n  w: {\"@class\": np.ndarray, \"@is_variable\": true, dtype: complex128, value: [1.0]}\n";
        assert!(read(badtype).is_err());
        assert!(read("- just\n- a list\n").is_err());
        assert!(read("a: [1, 2\n").is_err());
    }
}
