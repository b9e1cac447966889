//! The PIR program (`<stem>.json`, `paddle.jit.save` with PIR): operations with their
//! inputs, outputs, types and attributes, flattened in program order (nested regions of
//! `if`/`while` included), plus the parameter ops and who uses each value.
//!
//! Schema (paddle/fluid/pir/serialize_deserialize/include/schema.h):
//! `{"base_code": {"magic": "pir", "version": N}, "program": {"regions": [{"blocks":
//! [{"ops": [...]}]}]}}`; an op is `{"#": "<dialect>.<name>", "I": [{"%": id}], "O":
//! [{"%": id, "TT": type}], "A": [{"N": name, "AT": {"#": kind, "D": value}}], "regions"?}`;
//! a parameter is the compressed `{"#": "p", "A": [is_distributed, is_parameter, need_clip,
//! name], "O": {"%": id, "TT": type}, ...}`. A dense tensor type is
//! `{"#": "0.t_dtensor", "D": [{"#": "0.t_f64"}, dims, layout, lod, offset]}`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use crate::tree::{DType, Value};
use crate::FormatError;

fn bad(msg: impl Into<String>) -> FormatError {
    FormatError::invalid(format!("Paddle program: {}", msg.into()))
}

/// A dense tensor type: element type (None when dpc has no dtype for it) and dims (-1 dynamic).
#[derive(Debug, Clone)]
pub struct Tensor {
    pub dtype: Option<DType>,
    pub dims: Vec<i64>,
}

#[derive(Debug)]
pub struct Op {
    /// `1.matmul`, `0.combine`, `p` (parameter), ...
    pub kind: String,
    /// The `struct_name` attribute: the path of Layer classes the op was traced in.
    pub scope: Option<String>,
    /// Attribute name to its `D` value.
    pub attrs: Vec<(String, Value)>,
    pub ins: Vec<i64>,
    pub outs: Vec<i64>,
    pub out_types: Vec<Option<Tensor>>,
}

impl Op {
    pub fn attr(&self, name: &str) -> Option<&Value> {
        self.attrs.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    pub fn attr_f64(&self, name: &str) -> Result<f64, FormatError> {
        self.attr(name)
            .and_then(Value::as_f64)
            .ok_or_else(|| bad(format!("{} has no numeric `{name}` attribute", self.kind)))
    }

    pub fn in_scope(&self, scope: &str) -> bool {
        self.scope.as_deref() == Some(scope)
    }
}

/// A parameter op: the tensor named `name` in the `.pdiparams`.
#[derive(Debug)]
pub struct Param {
    pub value: i64,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

pub struct Program {
    pub version: i64,
    pub ops: Vec<Op>,
    /// By name, sorted (the `.pdiparams` order).
    pub params: BTreeMap<String, Param>,
    producer: HashMap<i64, (usize, usize)>,
    consumers: HashMap<i64, Vec<(usize, usize)>>,
    by_scope: HashMap<String, Vec<usize>>,
    param_names: HashMap<i64, String>,
}

fn list<'a>(v: &'a Value, key: &str, what: &str) -> Result<&'a [Value], FormatError> {
    v.get(key)
        .and_then(Value::as_list)
        .ok_or_else(|| bad(format!("{what} has no `{key}` list")))
}

fn elem_dtype(kind: &str) -> Option<DType> {
    Some(match kind {
        "0.t_f64" => DType::F64,
        "0.t_f32" => DType::F32,
        "0.t_f16" => DType::F16,
        "0.t_i64" => DType::I64,
        "0.t_i32" => DType::I32,
        "0.t_i16" => DType::I16,
        "0.t_i8" => DType::I8,
        "0.t_ui8" => DType::U8,
        "0.t_bool" => DType::Bool,
        _ => return None,
    })
}

/// `{"#": "0.t_dtensor", "D": [{"#": elem}, dims, ...]}`; other types are None.
fn tensor_type(tt: &Value) -> Option<Result<Tensor, FormatError>> {
    if tt.get("#").and_then(Value::as_str) != Some("0.t_dtensor") {
        return None;
    }
    let parse = || -> Option<Tensor> {
        let d = tt.get("D")?.as_list()?;
        let elem = d.first()?.get("#")?.as_str()?;
        let dims = d.get(1)?.as_list()?;
        let dims = dims.iter().map(Value::as_i64).collect::<Option<Vec<_>>>()?;
        Some(Tensor {
            dtype: elem_dtype(elem),
            dims,
        })
    };
    Some(parse().ok_or_else(|| bad("a malformed dense tensor type")))
}

fn value_id(v: &Value, what: &str) -> Result<i64, FormatError> {
    v.get("%")
        .and_then(Value::as_i64)
        .ok_or_else(|| bad(format!("{what} without a value id `%`")))
}

impl Program {
    pub fn parse(doc: &Value) -> Result<Program, FormatError> {
        let base = doc
            .get("base_code")
            .ok_or_else(|| bad("no `base_code`: not a PIR program"))?;
        if base.get("magic").and_then(Value::as_str) != Some("pir") {
            return Err(bad("`base_code.magic` is not \"pir\": not a PIR program"));
        }
        let version = base
            .get("version")
            .and_then(Value::as_i64)
            .ok_or_else(|| bad("`base_code.version` is missing"))?;
        let program = doc
            .get("program")
            .ok_or_else(|| bad("no `program` in the document"))?;
        let mut p = Program {
            version,
            ops: Vec::new(),
            params: BTreeMap::new(),
            producer: HashMap::new(),
            consumers: HashMap::new(),
            by_scope: HashMap::new(),
            param_names: HashMap::new(),
        };
        p.walk_regions(program, "the program")?;
        for (i, op) in p.ops.iter().enumerate() {
            for (k, &v) in op.outs.iter().enumerate() {
                p.producer.insert(v, (i, k));
            }
            for (k, &v) in op.ins.iter().enumerate() {
                p.consumers.entry(v).or_default().push((i, k));
            }
            if let Some(scope) = &op.scope {
                p.by_scope.entry(scope.clone()).or_default().push(i);
            }
        }
        for (name, param) in &p.params {
            p.param_names.insert(param.value, name.clone());
        }
        Ok(p)
    }

    fn walk_regions(&mut self, holder: &Value, what: &str) -> Result<(), FormatError> {
        for region in list(holder, "regions", what)? {
            for block in list(region, "blocks", "a region")? {
                for raw in list(block, "ops", "a block")? {
                    self.add_op(raw)?;
                    if raw.get("regions").is_some() {
                        self.walk_regions(raw, "an op")?;
                    }
                }
            }
        }
        Ok(())
    }

    fn add_op(&mut self, raw: &Value) -> Result<(), FormatError> {
        let kind = raw
            .get("#")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("an op without a name `#`"))?
            .to_string();
        let outs_raw: Vec<&Value> = match raw.get("O") {
            Some(Value::List(l)) => l.iter().collect(),
            Some(o @ Value::Dict(_)) => vec![o],
            _ => return Err(bad(format!("op {kind} has no outputs `O`"))),
        };
        let mut outs = Vec::new();
        let mut out_types = Vec::new();
        for o in outs_raw {
            outs.push(value_id(o, &format!("an output of {kind}"))?);
            out_types.push(match o.get("TT").and_then(tensor_type) {
                Some(t) => Some(t?),
                None => None,
            });
        }
        let ins = match raw.get("I") {
            None => Vec::new(),
            Some(Value::List(l)) => l
                .iter()
                .map(|i| value_id(i, &format!("an input of {kind}")))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(bad(format!("op {kind}: `I` is not a list"))),
        };
        let mut attrs = Vec::new();
        if kind == "p" {
            self.add_param(raw, &outs, &out_types)?;
        } else if let Some(a) = raw.get("A").and_then(Value::as_list) {
            for a in a {
                if let (Some(n), Some(d)) = (
                    a.get("N").and_then(Value::as_str),
                    a.get("AT").and_then(|t| t.get("D")),
                ) {
                    attrs.push((n.to_string(), d.clone()));
                }
            }
        }
        let scope = attrs
            .iter()
            .find(|(n, _)| n == "struct_name")
            .and_then(|(_, v)| v.as_str())
            .map(String::from);
        self.ops.push(Op {
            kind,
            scope,
            attrs,
            ins,
            outs,
            out_types,
        });
        Ok(())
    }

    fn add_param(
        &mut self,
        raw: &Value,
        outs: &[i64],
        types: &[Option<Tensor>],
    ) -> Result<(), FormatError> {
        let name = raw
            .get("A")
            .and_then(Value::as_list)
            .and_then(|a| a.get(3))
            .and_then(Value::as_str)
            .ok_or_else(|| bad("a parameter op without a name (A[3])"))?;
        let (Some(&value), Some(Some(t))) = (outs.first(), types.first()) else {
            return Err(bad(format!("parameter {name} is not a dense tensor")));
        };
        let dtype = t.dtype.ok_or_else(|| {
            FormatError::unsupported(format!(
                "Paddle program: parameter {name} has an element type dpc does not read"
            ))
        })?;
        let shape = t
            .dims
            .iter()
            .map(|&d| usize::try_from(d).ok())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad(format!("parameter {name} has dynamic dims {:?}", t.dims)))?;
        let p = Param {
            value,
            dtype,
            shape,
        };
        if self.params.insert(name.to_string(), p).is_some() {
            return Err(bad(format!("two parameters named {name}")));
        }
        Ok(())
    }

    /// The ops using value `v`, as (op index, operand index), in program order.
    pub fn uses(&self, v: i64) -> &[(usize, usize)] {
        self.consumers.get(&v).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn producer(&self, v: i64) -> Option<&Op> {
        self.producer.get(&v).map(|&(i, _)| &self.ops[i])
    }

    /// The dense tensor type of value `v`.
    pub fn value_type(&self, v: i64) -> Option<&Tensor> {
        let &(i, k) = self.producer.get(&v)?;
        self.ops[i].out_types.get(k)?.as_ref()
    }

    /// Value of the `1.full` op producing `v`, and whether that constant is float32.
    pub fn constant(&self, v: i64) -> Result<(f64, bool), FormatError> {
        let op = self
            .producer(v)
            .filter(|op| op.kind == "1.full")
            .ok_or_else(|| bad(format!("value %{v} is not a `1.full` constant")))?;
        let f32 = op.out_types.first().and_then(|t| t.as_ref()?.dtype) == Some(DType::F32);
        Ok((op.attr_f64("value")?, f32))
    }

    /// The name of the parameter whose value is `v`.
    pub fn param_of(&self, v: i64) -> Option<&str> {
        self.param_names.get(&v).map(String::as_str)
    }

    /// The ops whose `struct_name` is exactly `scope`, in program order.
    pub fn in_scope(&self, scope: &str) -> &[usize] {
        self.by_scope.get(scope).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The output of the last op whose `struct_name` is exactly `scope` (what a Layer's call
    /// returns when its last op is its own).
    pub fn last_output(&self, scope: &str) -> Option<i64> {
        let &i = self.in_scope(scope).last()?;
        self.ops[i].outs.first().copied()
    }

    /// Follow `v` forward through forward ops (those with a scope; the gradient ops the
    /// program also holds have none) of the kinds in `through` (breadth first, program
    /// order) to every such op of a kind in `want`: (op index, operand index).
    pub fn reach(&self, v: i64, through: &[&str], want: &[&str]) -> Vec<(usize, usize)> {
        let mut todo = VecDeque::from([v]);
        let mut seen = HashSet::new();
        let mut found = Vec::new();
        while let Some(x) = todo.pop_front() {
            if !seen.insert(x) {
                continue;
            }
            for &(i, k) in self.uses(x) {
                let op = &self.ops[i];
                if op.scope.is_none() {
                    continue;
                }
                if want.contains(&op.kind.as_str()) {
                    found.push((i, k));
                } else if through.contains(&op.kind.as_str()) {
                    todo.extend(op.outs.iter().copied());
                }
            }
        }
        found
    }

    /// Follow `v` forward through shape-only ops (breadth first, program order) to the first
    /// op of a kind in `want`: (op index, operand index).
    pub fn trace_to(&self, v: i64, want: &[&str]) -> Option<(usize, usize)> {
        const THROUGH: [&str; 8] = [
            "1.slice",
            "1.reshape",
            "1.unsqueeze",
            "1.cast",
            "1.assign",
            "1.gather_nd",
            "1.expand",
            "1.tile",
        ];
        let mut todo = VecDeque::from([v]);
        let mut seen = HashSet::new();
        while let Some(x) = todo.pop_front() {
            if !seen.insert(x) {
                continue;
            }
            for &(i, k) in self.uses(x) {
                let op = &self.ops[i];
                if want.contains(&op.kind.as_str()) {
                    return Some((i, k));
                }
                if THROUGH.contains(&op.kind.as_str()) {
                    todo.extend(op.outs.iter().copied());
                }
            }
        }
        None
    }
}

/// `/EnergyFittingNet/FN_1/MLPLayer_2/` → (`/EnergyFittingNet/FN_1/`, `MLPLayer`, 2): a
/// scope's parent, its last Layer class and that class's call counter (0 when absent).
pub fn split_scope(scope: &str) -> Option<(&str, &str, u32)> {
    let body = scope.strip_suffix('/')?;
    let cut = body.rfind('/')? + 1;
    let (parent, last) = (&scope[..cut], &body[cut..]);
    let (class, idx) = match last.rsplit_once('_') {
        Some((c, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            (c, n.parse().ok()?)
        }
        _ => (last, 0),
    };
    if class.is_empty() || !class.bytes().all(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    Some((parent, class, idx))
}

/// The Layer class at the root of a scope, without the counter a second trace adds
/// (`/DescrptSeA_1/MLPLayer/` → `DescrptSeA`).
pub fn root_class(scope: &str) -> &str {
    let top = scope
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("");
    match top.rsplit_once('_') {
        Some((c, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => c,
        _ => top,
    }
}

/// `/DescrptSeA_1/MLPLayer/` → `/DescrptSeA_1/`.
pub fn root_scope(scope: &str) -> String {
    let top = scope
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("");
    format!("/{top}/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_split() {
        assert_eq!(
            split_scope("/EnergyFittingNet/FN_1/MLPLayer_2/"),
            Some(("/EnergyFittingNet/FN_1/", "MLPLayer", 2))
        );
        assert_eq!(
            split_scope("/DescrptSeA/MLPLayer/"),
            Some(("/DescrptSeA/", "MLPLayer", 0))
        );
        assert_eq!(split_scope("/DescrptDPA1/"), None);
        assert_eq!(split_scope("nothing"), None);
        assert_eq!(split_scope("/A/B_99999999999/"), None);
        assert_eq!(root_class("/DescrptSeA_1/MLPLayer/"), "DescrptSeA");
        assert_eq!(root_scope("/DescrptSeA_1/MLPLayer/"), "/DescrptSeA_1/");
    }
}
