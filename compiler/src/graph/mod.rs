//! The tensor IR: a graph of SSA values in construction (topological) order.
//!
//! Each node holds one `Op`, its argument values and its inferred `TensorType`. A graph has
//! named, typed inputs and named outputs. Autodiff (`autodiff.rs`) appends the backward
//! nodes to the same graph, so forces and virials are ordinary outputs. `verify.rs` checks
//! the invariants; `print.rs` gives the text form shown by `dpc compile --emit-ir`.

pub mod attention;
pub mod autodiff;
mod builder;
pub mod mlp;
pub mod op;
pub mod print;
pub mod table;
pub mod tensor;
pub mod types;
pub mod verify;

use std::fmt;

pub use attention::Attention;
pub use mlp::{Act, Dense, DenseInput, Embed, EnvSpec, Mlp, MlpLayer, Residual, RowNets};
pub use op::{ActFn, Binary, Cmp, Op, Unary};
pub use table::{Knots, Table};
pub use tensor::{Data, Tensor};
pub use types::{Bindings, DType, Dim, Shape, Sym, TensorType};

/// A value in a graph: the result of node number `.0`. Printed `%N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

impl ValueId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub op: Op,
    pub args: Vec<ValueId>,
    pub ty: TensorType,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    pub name: String,
    pub ty: TensorType,
}

/// A tensor graph.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub inputs: Vec<InputSpec>,
    pub outputs: Vec<(String, ValueId)>,
}

/// A malformed graph or an op applied to the wrong types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphError(pub String);

impl fmt::Display for GraphError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GraphError {}

impl From<String> for GraphError {
    fn from(s: String) -> Self {
        GraphError(s)
    }
}

impl Graph {
    pub fn new() -> Graph {
        Graph::default()
    }

    /// Declare the next input and return its value.
    pub fn input(&mut self, name: &str, ty: TensorType) -> ValueId {
        let n = self.inputs.len();
        self.inputs.push(InputSpec {
            name: name.to_string(),
            ty: ty.clone(),
        });
        self.nodes.push(Node {
            op: Op::Input(n),
            args: vec![],
            ty,
        });
        ValueId(self.nodes.len() as u32 - 1)
    }

    /// The input called `name` if one is declared (with this type), else a new one: for
    /// inputs several builders read (a hybrid's sub-descriptors).
    pub fn shared_input(&mut self, name: &str, ty: TensorType) -> ValueId {
        if let Some(k) = self
            .inputs
            .iter()
            .position(|i| i.name == name && i.ty == ty)
        {
            if let Some(v) = self
                .nodes
                .iter()
                .position(|n| matches!(n.op, Op::Input(j) if j == k))
            {
                return ValueId(v as u32);
            }
        }
        self.input(name, ty)
    }

    /// Append a node, inferring its type from the arguments.
    pub fn push(&mut self, op: Op, args: &[ValueId]) -> Result<ValueId, GraphError> {
        for a in args {
            if a.index() >= self.nodes.len() {
                return Err(GraphError(format!(
                    "{} refers to undefined value {a}",
                    op.name()
                )));
            }
        }
        let tys: Vec<&TensorType> = args.iter().map(|a| &self.nodes[a.index()].ty).collect();
        let ty = op.infer(&tys).map_err(|e| {
            let shown: Vec<String> = tys.iter().map(|t| t.to_string()).collect();
            GraphError(format!("{op}({}): {e}", shown.join(", ")))
        })?;
        self.nodes.push(Node {
            op,
            args: args.to_vec(),
            ty,
        });
        Ok(ValueId(self.nodes.len() as u32 - 1))
    }

    pub fn node(&self, v: ValueId) -> &Node {
        &self.nodes[v.index()]
    }

    pub fn ty(&self, v: ValueId) -> &TensorType {
        &self.nodes[v.index()].ty
    }

    pub fn shape(&self, v: ValueId) -> &[Dim] {
        &self.nodes[v.index()].ty.shape
    }

    pub fn dtype(&self, v: ValueId) -> DType {
        self.nodes[v.index()].ty.dtype
    }

    /// Name a value as an output (replacing an output of the same name).
    pub fn set_output(&mut self, name: &str, v: ValueId) {
        if let Some(o) = self.outputs.iter_mut().find(|(n, _)| n == name) {
            o.1 = v;
        } else {
            self.outputs.push((name.to_string(), v));
        }
    }

    pub fn output(&self, name: &str) -> Option<ValueId> {
        self.outputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    pub fn input_index(&self, name: &str) -> Option<usize> {
        self.inputs.iter().position(|i| i.name == name)
    }

    /// Which nodes some output needs (the ones a lowering writes).
    pub fn live(&self) -> Vec<bool> {
        let mut live = vec![false; self.nodes.len()];
        for (_, v) in &self.outputs {
            live[v.index()] = true;
        }
        for i in (0..self.nodes.len()).rev() {
            if live[i] {
                for a in &self.nodes[i].args {
                    live[a.index()] = true;
                }
            }
        }
        live
    }
}
