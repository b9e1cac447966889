//! The JSON of `dpc eval`: configurations in, energies/forces/virials out.
//!
//! Input: `{"coord": [...], "atype": [...], "box": [...] | null, "fparam"?: [...],
//! "aparam"?: [...]}` or a list of such frames. `coord` may be flat (`natoms*3`) or nested
//! (`[[x, y, z], ...]`); `box` flat (9) or 3x3; `atom_types` and `cell` are accepted aliases.

use anyhow::{anyhow, bail, Context, Result};
use dpc_formats::json::python_float_repr;
use dpc_formats::Value;
use dpc_runtime::Output;

/// One configuration read from JSON.
#[derive(Debug, Clone)]
pub struct FrameIn {
    pub coord: Vec<f64>,
    pub atype: Vec<i32>,
    pub cell: Option<Vec<f64>>,
    pub fparam: Option<Vec<f64>>,
    pub aparam: Option<Vec<f64>>,
}

fn flat_numbers(v: &Value, what: &str) -> Result<Vec<f64>> {
    fn walk(v: &Value, out: &mut Vec<f64>, depth: usize) -> bool {
        match v {
            Value::List(l) if depth < 4 => l.iter().all(|x| walk(x, out, depth + 1)),
            Value::Int(_) | Value::Float(_) => {
                out.push(v.as_f64().unwrap());
                true
            }
            _ => false,
        }
    }
    let mut out = Vec::new();
    if !walk(v, &mut out, 0) {
        bail!("`{what}` must be a (nested) list of numbers");
    }
    Ok(out)
}

fn field<'a>(frame: &'a Value, names: &[&str]) -> Option<&'a Value> {
    names
        .iter()
        .find_map(|n| frame.get(n))
        .filter(|v| !v.is_null())
}

fn parse_frame(v: &Value, i: usize) -> Result<FrameIn> {
    let ctx = || format!("frame {i}");
    if v.as_dict().is_none() {
        bail!("frame {i}: expected an object with coord, atype and box");
    }
    let coord = flat_numbers(
        field(v, &["coord", "coords"])
            .ok_or_else(|| anyhow!("missing `coord`"))
            .with_context(ctx)?,
        "coord",
    )
    .with_context(ctx)?;
    let types = flat_numbers(
        field(v, &["atype", "atom_types", "type"])
            .ok_or_else(|| anyhow!("missing `atype`"))
            .with_context(ctx)?,
        "atype",
    )
    .with_context(ctx)?;
    let mut atype = Vec::with_capacity(types.len());
    for t in types {
        if t.fract() != 0.0 || t.abs() > i32::MAX as f64 {
            bail!("frame {i}: atom type {t} is not an integer");
        }
        atype.push(t as i32);
    }
    let cell = field(v, &["box", "cell"])
        .map(|b| flat_numbers(b, "box"))
        .transpose()
        .with_context(ctx)?;
    let fparam = field(v, &["fparam"])
        .map(|b| flat_numbers(b, "fparam"))
        .transpose()
        .with_context(ctx)?;
    let aparam = field(v, &["aparam"])
        .map(|b| flat_numbers(b, "aparam"))
        .transpose()
        .with_context(ctx)?;
    Ok(FrameIn {
        coord,
        atype,
        cell,
        fparam,
        aparam,
    })
}

/// Parse one frame or a list of frames; the flag says whether it was a list.
pub fn parse_frames(text: &str) -> Result<(Vec<FrameIn>, bool)> {
    let doc = dpc_formats::json::parse(text)?;
    match &doc {
        Value::List(l) => Ok((
            l.iter()
                .enumerate()
                .map(|(i, f)| parse_frame(f, i))
                .collect::<Result<_>>()?,
            true,
        )),
        Value::Dict(_) => Ok((vec![parse_frame(&doc, 0)?], false)),
        _ => bail!("the input must be a frame object or a list of frames"),
    }
}

fn num_list(out: &mut String, v: &[f64]) {
    out.push('[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&python_float_repr(*x, "NaN", "Infinity"));
    }
    out.push(']');
}

/// One frame's results as a JSON object (full float64 precision).
pub fn output_json(o: &Output) -> String {
    let mut s = String::from("{\"energy\": ");
    s.push_str(&python_float_repr(o.energy, "NaN", "Infinity"));
    s.push_str(",\n \"force\": ");
    num_list(&mut s, &o.force);
    s.push_str(",\n \"virial\": ");
    num_list(&mut s, &o.virial);
    s.push_str(",\n \"atom_energy\": ");
    num_list(&mut s, &o.atom_energy);
    if let Some(av) = &o.atom_virial {
        s.push_str(",\n \"atom_virial\": ");
        num_list(&mut s, av);
    }
    s.push('}');
    s
}
