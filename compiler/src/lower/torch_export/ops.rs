//! The IR's ops as ATen nodes, one node (or a few) per IR node, on the frames laid end to
//! end (the graph's `nloc` is every frame's centres, `nall` every frame's atoms). The graph
//! is built unfused, as for TorchScript; weights become the program's buffers.

use std::collections::HashMap;
use std::sync::Arc;

use super::program::{dtype, Expr, Program, A, T};
use crate::graph::{Binary, DType, Dim, Graph, GraphError, Op, Sym, Tensor};
use crate::lower::torchscript::ops::{binary_name, cmp_name, unary_name};

pub fn code(dt: DType) -> i64 {
    match dt {
        DType::F32 => dtype::F32,
        DType::F64 => dtype::F64,
        DType::I32 => dtype::I32,
        DType::Bool => dtype::BOOL,
    }
}

/// What the graph's symbols stand for in the program.
pub struct Sizes {
    pub nloc: Expr,
    pub nall: Expr,
}

impl Sizes {
    pub fn dim(&self, d: Dim) -> Expr {
        let base = match d.sym {
            None => return Expr::int(d.factor as i64),
            Some(Sym::Nloc) => &self.nloc,
            Some(Sym::Nall) => &self.nall,
        };
        base.scale(d.factor as i64)
    }

    pub fn shape(&self, dims: &[Dim]) -> Vec<Expr> {
        dims.iter().map(|&d| self.dim(d)).collect()
    }
}

/// Weights stored once each (the graph may hold equal constants).
#[derive(Default)]
pub struct Weights {
    index: HashMap<(Vec<usize>, DType, Vec<u8>), T>,
}

impl Weights {
    fn get(&mut self, p: &mut Program, t: &Arc<Tensor>) -> T {
        let bytes = t.to_le_bytes();
        let key = (t.shape.clone(), t.dtype(), bytes.clone());
        if let Some(v) = self.index.get(&key) {
            return v.clone();
        }
        let v = p.buffer(code(t.dtype()), &t.shape, bytes);
        self.index.insert(key, v.clone());
        v
    }
}

/// Lower the live nodes of `g` with its inputs bound to `inputs` (by input name); returns
/// the graph's outputs by name.
pub fn lower_graph(
    p: &mut Program,
    sizes: &Sizes,
    g: &Graph,
    inputs: &HashMap<String, T>,
) -> Result<HashMap<String, T>, GraphError> {
    let mut weights = Weights::default();
    let live = g.live();
    let mut vals: Vec<Option<T>> = vec![None; g.nodes.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        if !live[i] {
            continue;
        }
        let a: Vec<T> = node
            .args
            .iter()
            .map(|v| vals[v.index()].clone().expect("arguments come first"))
            .collect();
        let out = &node.ty;
        let dt = code(out.dtype);
        let shape = sizes.shape(&out.shape);
        let t = |x: &T| A::T(x.clone());
        let v = match &node.op {
            Op::Input(n) => {
                let name = &g.inputs[*n].name;
                inputs.get(name).cloned().ok_or_else(|| {
                    GraphError(format!("the .pte lowering has no value for graph input {name}"))
                })?
            }
            Op::Const(c) => weights.get(p, c),
            Op::Unary(u) => {
                let f = format!("{}.default", unary_name(*u));
                p.call(&f, vec![("self", t(&a[0]))], vec![], dt, shape)
            }
            Op::Binary(b) => {
                // Tensor-Tensor overloads; integer division truncates, as the other
                // lowerings' does.
                let int_div = *b == Binary::Div && !out.dtype.is_float();
                let overload = if int_div {
                    "Tensor_mode"
                } else if matches!(b, Binary::Add | Binary::Sub | Binary::Mul | Binary::Div) {
                    "Tensor"
                } else {
                    "default"
                };
                let f = format!("{}.{overload}", binary_name(*b));
                let kw = if int_div {
                    vec![("rounding_mode", A::Str("trunc".into()))]
                } else {
                    vec![]
                };
                p.call(&f, vec![("self", t(&a[0])), ("other", t(&a[1]))], kw, dt, shape)
            }
            Op::Compare(c) => {
                let f = format!("{}.Tensor", cmp_name(*c));
                p.call(&f, vec![("self", t(&a[0])), ("other", t(&a[1]))], vec![], dt, shape)
            }
            Op::Select => p.call(
                "where.self",
                vec![
                    ("condition", t(&a[0])),
                    ("self", t(&a[1])),
                    ("other", t(&a[2])),
                ],
                vec![],
                dt,
                shape,
            ),
            Op::Cast(DType::Bool) => p.call(
                "ne.Scalar",
                vec![("self", t(&a[0])), ("other", A::Int(0))],
                vec![],
                dt,
                shape,
            ),
            Op::Cast(_) => p.call(
                "_to_copy.default",
                vec![("self", t(&a[0]))],
                vec![("dtype", A::Dtype(dt))],
                dt,
                shape,
            ),
            Op::MatMul => p.call(
                "matmul.default",
                vec![("self", t(&a[0])), ("other", t(&a[1]))],
                vec![],
                dt,
                shape,
            ),
            Op::Reshape(_) => {
                let s = p.sizes(&shape);
                p.call(
                    "reshape.default",
                    vec![("self", t(&a[0])), ("shape", s)],
                    vec![],
                    dt,
                    shape,
                )
            }
            Op::Transpose(perm) => p.call(
                "permute.default",
                vec![
                    ("self", t(&a[0])),
                    ("dims", A::Ints(perm.iter().map(|&x| x as i64).collect())),
                ],
                vec![],
                dt,
                shape,
            ),
            Op::Broadcast(_) => {
                let s = p.sizes(&shape);
                p.call(
                    "expand.default",
                    vec![("self", t(&a[0])), ("size", s)],
                    vec![],
                    dt,
                    shape,
                )
            }
            Op::Slice { axis, start, end } => {
                let (b, e) = (p.size(&sizes.dim(*start)), p.size(&sizes.dim(*end)));
                p.call(
                    "slice.Tensor",
                    vec![
                        ("self", t(&a[0])),
                        ("dim", A::Int(*axis as i64)),
                        ("start", A::Sym(b)),
                        ("end", A::Sym(e)),
                    ],
                    vec![],
                    dt,
                    shape,
                )
            }
            Op::Pad { axis, before, size } => {
                // constant_pad_nd lists (before, after) from the last axis backwards.
                let len = &a[0].shape[*axis];
                let b = sizes.dim(*before);
                let after = sizes.dim(*size).sub(&b).sub(len);
                let mut pads = Vec::new();
                for ax in (*axis..shape.len()).rev() {
                    if ax == *axis {
                        pads.push(p.size(&b));
                        pads.push(p.size(&after));
                    } else {
                        pads.push(super::program::SymArg::Int(0));
                        pads.push(super::program::SymArg::Int(0));
                    }
                }
                p.call(
                    "constant_pad_nd.default",
                    vec![("self", t(&a[0])), ("pad", A::Syms(pads))],
                    vec![],
                    dt,
                    shape,
                )
            }
            Op::Concat { axis } => p.call(
                "cat.default",
                vec![("tensors", A::Ts(a.clone())), ("dim", A::Int(*axis as i64))],
                vec![],
                dt,
                shape,
            ),
            Op::ReduceSum { axes, keepdims } => {
                if axes.is_empty() {
                    a[0].clone()
                } else {
                    // dtype= keeps integer sums in their type (torch widens them to int64).
                    p.call(
                        "sum.dim_IntList",
                        vec![
                            ("self", t(&a[0])),
                            ("dim", A::Ints(axes.iter().map(|&x| x as i64).collect())),
                            ("keepdim", A::Bool(*keepdims)),
                        ],
                        vec![("dtype", A::Dtype(dt))],
                        dt,
                        shape,
                    )
                }
            }
            Op::ReduceMax { axes, keepdims } => {
                if axes.is_empty() {
                    a[0].clone()
                } else {
                    p.call(
                        "amax.default",
                        vec![
                            ("self", t(&a[0])),
                            ("dim", A::Ints(axes.iter().map(|&x| x as i64).collect())),
                            ("keepdim", A::Bool(*keepdims)),
                        ],
                        vec![],
                        dt,
                        shape,
                    )
                }
            }
            Op::Gather => {
                let n: Expr = a[1].shape.iter().fold(Expr::int(1), |acc, d| acc.mul(d));
                let flat = p.call(
                    "reshape.default",
                    vec![("self", t(&a[1])), ("shape", A::Ints(vec![-1]))],
                    vec![],
                    a[1].dtype,
                    vec![n.clone()],
                );
                let mut rows = vec![n];
                rows.extend(a[0].shape[1..].iter().cloned());
                let picked = p.call(
                    "index_select.default",
                    vec![("self", t(&a[0])), ("dim", A::Int(0)), ("index", A::T(flat))],
                    vec![],
                    dt,
                    rows,
                );
                let s = p.sizes(&shape);
                p.call(
                    "reshape.default",
                    vec![("self", A::T(picked)), ("shape", s)],
                    vec![],
                    dt,
                    shape,
                )
            }
            Op::ScatterAdd { .. } => {
                let n: Expr = a[0].shape.iter().fold(Expr::int(1), |acc, d| acc.mul(d));
                let idx = p.call(
                    "reshape.default",
                    vec![("self", t(&a[0])), ("shape", A::Ints(vec![-1]))],
                    vec![],
                    a[0].dtype,
                    vec![n.clone()],
                );
                let mut rows = vec![n];
                rows.extend(shape[1..].iter().cloned());
                let mut flat = vec![super::program::SymArg::Int(-1)];
                for e in &shape[1..] {
                    flat.push(p.size(e));
                }
                let src = p.call(
                    "reshape.default",
                    vec![("self", t(&a[1])), ("shape", A::Syms(flat))],
                    vec![],
                    dt,
                    rows,
                );
                let s = p.sizes(&shape);
                let zeros = p.call(
                    "zeros.default",
                    vec![("size", s)],
                    vec![("dtype", A::Dtype(dt))],
                    dt,
                    shape.clone(),
                );
                p.call(
                    "index_add.default",
                    vec![
                        ("self", A::T(zeros)),
                        ("dim", A::Int(0)),
                        ("index", A::T(idx)),
                        ("source", A::T(src)),
                    ],
                    vec![],
                    dt,
                    shape,
                )
            }
            Op::StopGradient => a[0].clone(),
            other => {
                return Err(GraphError(format!(
                    "the .pte lowering takes the elementary form of every op; `{}` is a fused op (build the graph with `unfused`)",
                    other.name()
                )))
            }
        };
        vals[i] = Some(v);
    }
    let mut out = HashMap::new();
    for (name, v) in &g.outputs {
        let t = vals[v.index()]
            .clone()
            .ok_or_else(|| GraphError(format!("lowering: output {name} was not computed")))?;
        out.insert(name.clone(), t);
    }
    Ok(out)
}
