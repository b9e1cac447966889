//! Graph-style nodes (as `Tf` builds them) turned into a `FunctionDef` body, whose inputs
//! name outputs by argument name (`node:output_arg:index`) rather than by position.

use std::collections::HashMap;

use dpc_formats::tf::graph_def::{ArgDef, FunctionDef, NodeDef, OpDef};

use super::RESULTS;
use crate::graph::GraphError;

/// The output argument names of each op the lowerings write, by output index (TF's op
/// registry); a call of one of the library's `call_lower` functions has DeePMD-kit's
/// result names.
fn output_args(op: &str) -> Option<Vec<&'static str>> {
    if op.starts_with("__inference_call_lower_") {
        return Some(RESULTS.iter().map(|r| r.0).collect());
    }
    Some(match op {
        "AddV2" | "Sub" | "Mul" | "RealDiv" | "TruncateDiv" | "FloorMod" | "Maximum"
        | "Minimum" | "LogicalAnd" | "LogicalOr" | "Less" | "LessEqual" | "Greater"
        | "GreaterEqual" | "Equal" | "NotEqual" => vec!["z"],
        "Neg" | "Exp" | "Log" | "Tanh" | "Sqrt" | "Reciprocal" | "Sigmoid" | "Floor" | "Ceil"
        | "Abs" | "LogicalNot" | "Cast" | "Transpose" => vec!["y"],
        "MatMul" | "Cross" => vec!["product"],
        "Const" | "Identity" | "SelectV2" | "BatchMatMulV2" | "Reshape" | "BroadcastTo"
        | "Slice" | "Pad" | "ConcatV2" | "Sum" | "Max" | "GatherV2" | "UnsortedSegmentSum"
        | "StridedSlice" | "Pack" | "Shape" | "Size" | "Range" | "Tile" | "Fill" | "ExpandDims"
        | "MatrixInverse" | "MatrixDeterminant" | "While" => vec!["output"],
        "TopKV2" => vec!["values", "indices"],
        "TensorListReserve" => vec!["handle"],
        "TensorListSetItem" => vec!["output_handle"],
        "TensorListStack" => vec!["tensor"],
        _ => return None,
    })
}

/// A function from graph-style nodes (inputs `node` or `node:k`; the function's arguments
/// by their names), renamed to a function body's conventions.
pub(super) fn function(
    name: &str,
    args: &[(&str, i32)],
    nodes: Vec<NodeDef>,
    outputs: &[(&str, i32, String)],
) -> Result<FunctionDef, GraphError> {
    let ops: HashMap<String, String> = nodes
        .iter()
        .map(|n| (n.name.clone(), n.op.clone()))
        .collect();
    let is_arg = |s: &str| args.iter().any(|(a, _)| *a == s);
    let body_name = |s: &str| s.replace('/', "_");
    let rename = |s: &str| -> Result<String, GraphError> {
        if is_arg(s) {
            return Ok(s.to_string());
        }
        let (node, k) = match s.rsplit_once(':') {
            Some((n, k)) if k.parse::<usize>().is_ok() => (n, k.parse::<usize>().unwrap()),
            _ => (s, 0),
        };
        let op = ops
            .get(node)
            .ok_or_else(|| GraphError(format!("function {name}: no node {node}")))?;
        let outs = output_args(op).ok_or_else(|| {
            GraphError(format!(
                "writing a TF function: no output names for op {op}"
            ))
        })?;
        // One output argument may be a list (`While`'s `output:k`).
        let (arg, idx) = if outs.len() > 1 {
            (outs.get(k).copied().unwrap_or(outs[0]), 0)
        } else {
            (outs[0], k)
        };
        Ok(format!("{}:{arg}:{idx}", body_name(node)))
    };
    let mut body = Vec::with_capacity(nodes.len());
    for mut n in nodes {
        n.input = n
            .input
            .iter()
            .map(|i| rename(i))
            .collect::<Result<_, _>>()?;
        n.name = body_name(&n.name);
        body.push(n);
    }
    let mut ret = HashMap::new();
    let mut output_arg = Vec::new();
    for (o, t, v) in outputs {
        ret.insert(o.to_string(), rename(v)?);
        output_arg.push(ArgDef {
            name: o.to_string(),
            r#type: *t,
        });
    }
    Ok(FunctionDef {
        signature: Some(OpDef {
            name: name.to_string(),
            input_arg: args
                .iter()
                .map(|(a, t)| ArgDef {
                    name: a.to_string(),
                    r#type: *t,
                })
                .collect(),
            output_arg,
        }),
        node_def: body,
        ret,
    })
}
