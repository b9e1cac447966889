//! The graph verifier. Invariants checked:
//!
//! 1. SSA in order: every argument of node `i` is a node `< i` (so node order is a
//!    topological order and there are no cycles).
//! 2. Arity: each op has the number of arguments it takes.
//! 3. Types: each node's recorded type equals the type its op infers from its arguments.
//! 4. Inputs: node `Input(n)` exists once per declared input `n`, with the declared type.
//! 5. Outputs: every output names an existing node, and output names are unique.
//!
//! All violations are collected, each naming the offending value, so a broken pass shows
//! every problem at once.

use std::collections::HashSet;

use super::op::Op;
use super::{Graph, ValueId};

/// Check every invariant; `Err` lists each violation on its own line.
pub fn verify(g: &Graph) -> Result<(), String> {
    let mut errors = Vec::new();
    let mut seen_inputs = vec![0usize; g.inputs.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        let v = ValueId(i as u32);
        if let Some(bad) = node.args.iter().find(|a| a.index() >= i) {
            errors.push(format!("{v}: argument {bad} is not defined before use"));
            continue;
        }
        if let Op::Input(n) = node.op {
            match g.inputs.get(n) {
                None => errors.push(format!("{v}: input {n} is not declared")),
                Some(spec) => {
                    seen_inputs[n] += 1;
                    if spec.ty != node.ty {
                        errors.push(format!(
                            "{v}: input `{}` declared {} but typed {}",
                            spec.name, spec.ty, node.ty
                        ));
                    }
                }
            }
            continue;
        }
        let tys: Vec<_> = node.args.iter().map(|a| &g.nodes[a.index()].ty).collect();
        match node.op.infer(&tys) {
            Ok(t) if t == node.ty => {}
            Ok(t) => errors.push(format!(
                "{v}: {} is typed {} but its arguments give {t}",
                node.op.name(),
                node.ty
            )),
            Err(e) => errors.push(format!("{v}: {e}")),
        }
    }
    for (n, count) in seen_inputs.iter().enumerate() {
        if *count != 1 {
            errors.push(format!(
                "input `{}` has {count} input nodes (expected 1)",
                g.inputs[n].name
            ));
        }
    }
    let mut names = HashSet::new();
    for (name, v) in &g.outputs {
        if v.index() >= g.nodes.len() {
            errors.push(format!("output `{name}` refers to undefined {v}"));
        }
        if !names.insert(name) {
            errors.push(format!("output `{name}` is defined twice"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}
