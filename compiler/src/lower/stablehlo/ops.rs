//! The IR's ops as StableHLO, one node at a time, inside a function being written.
//!
//! Sizes come from `Dims`: the graph's `nloc`/`nall` symbols are bound to values the caller
//! computed (run-time sizes in an export, numbers in a static module). Fused ops are not
//! lowered: the graph is built unfused for this target (`BuildOptions::unfused`).

use std::collections::HashMap;

use super::text::{Elem, Func, Size, Val};
use crate::graph::{Binary, Cmp, Data, Dim, Graph, GraphError, Op, Sym, Tensor, Unary};

/// What the graph's size symbols stand for.
pub struct Dims {
    pub nloc: Size,
    pub nall: Size,
    cache: HashMap<Dim, Size>,
}

impl Dims {
    pub fn new(nloc: Size, nall: Size) -> Dims {
        Dims {
            nloc,
            nall,
            cache: HashMap::new(),
        }
    }

    pub fn size(&mut self, f: &mut Func, d: Dim) -> Size {
        let Some(sym) = d.sym else {
            return Size::Fixed(d.factor as i64);
        };
        if let Some(s) = self.cache.get(&d) {
            return s.clone();
        }
        let base = match sym {
            Sym::Nloc => self.nloc.clone(),
            Sym::Nall => self.nall.clone(),
        };
        let s = f.size_mul(&base, &Size::Fixed(d.factor as i64));
        self.cache.insert(d, s.clone());
        s
    }

    pub fn shape(&mut self, f: &mut Func, dims: &[Dim]) -> Vec<Size> {
        dims.iter().map(|&d| self.size(f, d)).collect()
    }
}

fn err(m: impl Into<String>) -> GraphError {
    GraphError(m.into())
}

/// Write every node of `g` after its inputs, which the caller provides; returns the value
/// of every graph output, by name.
pub fn lower_graph(
    f: &mut Func,
    dims: &mut Dims,
    g: &Graph,
    inputs: &[Val],
) -> Result<HashMap<String, Val>, GraphError> {
    if inputs.len() != g.inputs.len() {
        return Err(err("lowering: wrong number of graph inputs"));
    }
    // Only what an output needs is written.
    let live = g.live();
    let mut vals: Vec<Option<Val>> = vec![None; g.nodes.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        if !live[i] {
            continue;
        }
        let args: Vec<&Val> = node
            .args
            .iter()
            .map(|a| vals[a.index()].as_ref().expect("args come first"))
            .collect();
        let out_shape = dims.shape(f, &node.ty.shape);
        let elem = Elem::of(node.ty.dtype);
        let v = match &node.op {
            Op::Input(n) => {
                let v = inputs[*n].clone();
                if v.elem != elem || v.rank() != out_shape.len() {
                    return Err(err(format!("lowering: input {n} has the wrong type")));
                }
                v
            }
            Op::Const(t) => constant(f, t),
            Op::Unary(u) => unary(f, *u, args[0]),
            Op::Binary(b) => {
                let x = f.broadcast_to(args[0], out_shape.clone());
                let y = f.broadcast_to(args[1], out_shape);
                let op = match b {
                    Binary::Add => "add",
                    Binary::Sub => "subtract",
                    Binary::Mul => "multiply",
                    Binary::Div => "divide",
                    Binary::Max => "maximum",
                    Binary::Min => "minimum",
                    Binary::And => "and",
                    Binary::Or => "or",
                };
                f.elementwise(op, &[&x, &y], elem)
            }
            Op::Compare(c) => {
                let x = f.broadcast_to(args[0], out_shape.clone());
                let y = f.broadcast_to(args[1], out_shape);
                let dir = match c {
                    Cmp::Lt => "LT",
                    Cmp::Le => "LE",
                    Cmp::Gt => "GT",
                    Cmp::Ge => "GE",
                    Cmp::Eq => "EQ",
                    Cmp::Ne => "NE",
                };
                f.compare(dir, &x, &y)
            }
            Op::Select => {
                let c = f.broadcast_to(args[0], out_shape.clone());
                let x = f.broadcast_to(args[1], out_shape.clone());
                let y = f.broadcast_to(args[2], out_shape);
                f.select(&c, &x, &y)
            }
            Op::Cast(_) => {
                if elem == Elem::I1 {
                    let z = f.splat(args[0].elem, 0.0, &args[0].shape);
                    f.compare("NE", args[0], &z)
                } else {
                    f.convert(args[0], elem)
                }
            }
            Op::MatMul => f.matmul(args[0], args[1]),
            Op::Reshape(_) => f.reshape_raw(args[0], out_shape),
            Op::Transpose(perm) => f.transpose(args[0], perm),
            Op::Broadcast(_) => f.broadcast_to(args[0], out_shape),
            Op::Slice { axis, start, end } => {
                let (s, e) = (dims.size(f, *start), dims.size(f, *end));
                f.slice(args[0], *axis, &s, &e)
            }
            Op::Pad { axis, before, size } => {
                let (b, s) = (dims.size(f, *before), dims.size(f, *size));
                f.pad(args[0], *axis, &b, &s)
            }
            Op::Concat { axis } => f.concat(&args, *axis),
            Op::ReduceSum { axes, keepdims } | Op::ReduceMax { axes, keepdims } => {
                let op = if matches!(node.op, Op::ReduceSum { .. }) {
                    "add"
                } else {
                    "maximum"
                };
                let r = f.reduce(args[0], axes, op);
                if *keepdims {
                    f.reshape_raw(&r, out_shape)
                } else {
                    r
                }
            }
            Op::Gather => f.gather_rows(args[0], args[1]),
            Op::ScatterAdd { rows } => {
                let rows = dims.size(f, *rows);
                f.scatter_add_rows(args[0], args[1], &rows)
            }
            Op::StopGradient => args[0].clone(),
            other => {
                return Err(err(format!(
                    "the StableHLO lowering takes the elementary form of every op; `{}` is a fused \
                     op (build the graph with `unfused`)",
                    other.name()
                )))
            }
        };
        vals[i] = Some(v);
    }
    let mut out = HashMap::new();
    for (name, v) in &g.outputs {
        out.insert(name.clone(), vals[v.index()].clone().expect("live"));
    }
    Ok(out)
}

/// A graph constant, bit for bit (booleans go through i32, whose hex form is unambiguous).
fn constant(f: &mut Func, t: &Tensor) -> Val {
    let shape: Vec<i64> = t.shape.iter().map(|&n| n as i64).collect();
    match &t.data {
        Data::F64(v) => {
            let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            f.constant_bytes(Elem::F64, &shape, &b)
        }
        Data::F32(v) => {
            let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            f.constant_bytes(Elem::F32, &shape, &b)
        }
        Data::I32(v) => {
            let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            f.constant_bytes(Elem::I32, &shape, &b)
        }
        Data::Bool(v) => {
            let b: Vec<u8> = v.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect();
            let i = f.constant_bytes(Elem::I32, &shape, &b);
            let z = f.splat(Elem::I32, 0.0, &i.shape);
            f.compare("NE", &i, &z)
        }
    }
}

fn unary(f: &mut Func, u: Unary, x: &Val) -> Val {
    let op = match u {
        Unary::Neg => "negate",
        Unary::Exp => "exponential",
        Unary::Log => "log",
        Unary::Tanh => "tanh",
        Unary::Sqrt => "sqrt",
        Unary::Sigmoid => "logistic",
        Unary::Floor => "floor",
        Unary::Not => "not",
        Unary::Recip => {
            let one = f.splat(x.elem, 1.0, &x.shape);
            return f.elementwise("divide", &[&one, x], x.elem);
        }
    };
    let rhs = format!("stablehlo.{op} {} : {}", x.name, x.ty());
    f.emit(x.elem, x.shape.clone(), &rhs)
}
