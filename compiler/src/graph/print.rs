//! The IR's text form (`dpc compile --emit-ir`):
//!
//! ```text
//! graph(coord: f64[nall,3], atype: i32[nall], nlist: i32[nloc,80]) {
//!   %0 = input 0 : f64[nall,3]
//!   %5 = const : f64[2,80,4] {0.0, 0.1, ... (640 values)}
//!   %6 = gather %5, %4 : f64[nloc,80,4]
//!   return energy = %90, force = %120
//! }
//! ```

use std::fmt::Write;

use super::op::Op;
use super::tensor::Tensor;
use super::Graph;

/// Constants with at most this many elements are printed in full.
const INLINE_CONST: usize = 8;

pub fn print(g: &Graph) -> String {
    let mut s = String::new();
    let ins: Vec<String> = g
        .inputs
        .iter()
        .map(|i| format!("{}: {}", i.name, i.ty))
        .collect();
    let _ = writeln!(s, "graph({}) {{", ins.join(", "));
    for (i, node) in g.nodes.iter().enumerate() {
        let args: Vec<String> = node.args.iter().map(|a| a.to_string()).collect();
        let _ = write!(s, "  %{i} = {}", node.op);
        if !args.is_empty() {
            let _ = write!(s, " {}", args.join(", "));
        }
        let _ = write!(s, " : {}", node.ty);
        if let Op::Const(t) = &node.op {
            let _ = write!(s, " {}", const_summary(t));
        }
        s.push('\n');
    }
    let outs: Vec<String> = g
        .outputs
        .iter()
        .map(|(n, v)| format!("{n} = {v}"))
        .collect();
    let _ = writeln!(s, "  return {}", outs.join(", "));
    s.push_str("}\n");
    s
}

fn const_summary(t: &Tensor) -> String {
    let n = t.len();
    let shown: Vec<String> = (0..n.min(INLINE_CONST))
        .map(|i| format!("{:?}", t.get_f64(i)))
        .collect();
    if n <= INLINE_CONST {
        format!("{{{}}}", shown.join(", "))
    } else {
        format!("{{{}, ... ({n} values)}}", shown[..3].join(", "))
    }
}

/// A one-line size summary: node counts per op.
pub fn summary(g: &Graph) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for node in &g.nodes {
        let name = node.op.name();
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some(c) => c.1 += 1,
            None => counts.push((name, 1)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let parts: Vec<String> = counts.iter().map(|(n, c)| format!("{n} {c}")).collect();
    format!("{} nodes ({})", g.nodes.len(), parts.join(", "))
}
