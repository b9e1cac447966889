//! The IR's ops as TorchScript statements, one node at a time: a graph becomes one method of
//! the module, `v<i> = torch.<op>(...)` per node, in the serialized dialect `torch.jit.save`
//! writes (dtypes as `ScalarType` numbers, devices from `ops.prim.device`).
//!
//! Sizes are written from the node types: `nloc` and `nall` are read from the method's
//! arguments, every other size is a number. Fused ops are not lowered: the graph is built
//! unfused for this target, as for StableHLO.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use crate::build::io;
use crate::graph::{Binary, Cmp, DType, Dim, Graph, GraphError, Op, Sym, Tensor, Unary};

/// `torch.ScalarType` numbers, as serialized code writes dtypes.
pub fn scalar_type(dt: DType) -> u8 {
    match dt {
        DType::F32 => 6,
        DType::F64 => 7,
        DType::I32 => 3,
        DType::Bool => 11,
    }
}

/// The graph constants a module holds as buffers `c0, c1, ...`; equal tensors are stored
/// once (the plain and atomic-virial graphs carry the same weights).
#[derive(Default)]
pub struct Consts {
    pub tensors: Vec<Arc<Tensor>>,
    index: HashMap<(Vec<usize>, DType, Vec<u8>), usize>,
}

impl Consts {
    fn name(&mut self, t: &Arc<Tensor>) -> String {
        let bytes = t.to_le_bytes();
        let next = self.tensors.len();
        let i = *self
            .index
            .entry((t.shape.clone(), t.dtype(), bytes))
            .or_insert(next);
        if i == next {
            self.tensors.push(t.clone());
        }
        format!("self.c{i}")
    }
}

/// PyTorch's name of an elementwise IR op (`torch.<name>`, `aten::<name>`).
pub fn unary_name(u: Unary) -> &'static str {
    match u {
        Unary::Neg => "neg",
        Unary::Exp => "exp",
        Unary::Log => "log",
        Unary::Tanh => "tanh",
        Unary::Sqrt => "sqrt",
        Unary::Recip => "reciprocal",
        Unary::Sigmoid => "sigmoid",
        Unary::Floor => "floor",
        Unary::Not => "logical_not",
    }
}

pub fn binary_name(b: Binary) -> &'static str {
    match b {
        Binary::Add => "add",
        Binary::Sub => "sub",
        Binary::Mul => "mul",
        Binary::Div => "div",
        Binary::Max => "maximum",
        Binary::Min => "minimum",
        Binary::And => "logical_and",
        Binary::Or => "logical_or",
    }
}

pub fn cmp_name(c: Cmp) -> &'static str {
    match c {
        Cmp::Lt => "lt",
        Cmp::Le => "le",
        Cmp::Gt => "gt",
        Cmp::Ge => "ge",
        Cmp::Eq => "eq",
        Cmp::Ne => "ne",
    }
}

fn dim(d: Dim) -> String {
    match d.sym {
        None => d.factor.to_string(),
        Some(s) => {
            let base = match s {
                Sym::Nloc => "nloc",
                Sym::Nall => "nall",
            };
            if d.factor == 1 {
                base.to_string()
            } else {
                format!("torch.mul({base}, {})", d.factor)
            }
        }
    }
}

fn shape(dims: &[Dim]) -> String {
    format!(
        "[{}]",
        dims.iter().map(|&d| dim(d)).collect::<Vec<_>>().join(", ")
    )
}

fn ints(v: &[usize]) -> String {
    format!(
        "[{}]",
        v.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The method `name(coord, atype, nlist, mapping, fparam, aparam) -> (atom_energy, force,
/// virial)` computing `g` on one system (float64 results).
pub fn method(g: &Graph, name: &str, consts: &mut Consts) -> Result<String, GraphError> {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  def {name}(self: __torch__.dpc.Model,\n    coord: Tensor,\n    atype: Tensor,\n    nlist: Tensor,\n    mapping: Tensor,\n    fparam: Tensor,\n    aparam: Tensor) -> Tuple[Tensor, Tensor, Tensor]:"
    );
    s.push_str("    nloc = (torch.size(nlist))[0]\n    nall = (torch.size(coord))[0]\n    dev = ops.prim.device(coord)\n");

    // Only what an output needs is written.
    let live = g.live();
    for (i, node) in g.nodes.iter().enumerate() {
        if !live[i] {
            continue;
        }
        let a: Vec<String> = node.args.iter().map(|v| format!("v{}", v.0)).collect();
        let out = &node.ty;
        let st = scalar_type(out.dtype);
        let rhs = match &node.op {
            Op::Input(n) => {
                let spec = &g.inputs[*n];
                match spec.name.as_str() {
                    io::COORD => "coord".to_string(),
                    io::ATYPE => "atype".to_string(),
                    io::NLIST => "nlist".to_string(),
                    io::MAPPING => "mapping".to_string(),
                    io::FPARAM => "fparam".to_string(),
                    io::APARAM => "aparam".to_string(),
                    io::CENTRE_WEIGHT => {
                        "torch.ones([nloc], dtype=7, layout=None, device=dev)".to_string()
                    }
                    // Padded slots read the system's first atom, as DeePMD-kit's DPA-1 does.
                    io::PAD_ATOM => {
                        "torch.zeros([nloc], dtype=3, layout=None, device=dev)".to_string()
                    }
                    other => {
                        return Err(GraphError(format!(
                            "the TorchScript lowering has no value for graph input {other}"
                        )))
                    }
                }
            }
            Op::Const(t) => consts.name(t),
            Op::Unary(u) => {
                let f = unary_name(*u);
                format!("torch.{f}({})", a[0])
            }
            Op::Binary(b) => {
                let f = binary_name(*b);
                if *b == Binary::Div && !out.dtype.is_float() {
                    // Integer division truncates, as StableHLO's and the CPU runtime's do.
                    format!("torch.div({}, {}, rounding_mode=\"trunc\")", a[0], a[1])
                } else {
                    format!("torch.{f}({}, {})", a[0], a[1])
                }
            }
            Op::Compare(c) => {
                let f = cmp_name(*c);
                format!("torch.{f}({}, {})", a[0], a[1])
            }
            Op::Select => format!("torch.where({}, {}, {})", a[0], a[1], a[2]),
            Op::Cast(DType::Bool) => format!("torch.ne({}, 0)", a[0]),
            Op::Cast(_) => format!("torch.to({}, {st})", a[0]),
            Op::MatMul => format!("torch.matmul({}, {})", a[0], a[1]),
            Op::Reshape(_) => format!("torch.reshape({}, {})", a[0], shape(&out.shape)),
            Op::Transpose(perm) => format!("torch.permute({}, {})", a[0], ints(perm)),
            Op::Broadcast(_) => format!("torch.broadcast_to({}, {})", a[0], shape(&out.shape)),
            Op::Slice { axis, start, end } => format!(
                "torch.slice({}, {axis}, {}, {})",
                a[0],
                dim(*start),
                dim(*end)
            ),
            Op::Pad { axis, before, size } => {
                // constant_pad_nd lists (before, after) from the last axis backwards.
                let rank = out.shape.len();
                let mut pads = Vec::new();
                for ax in (*axis..rank).rev() {
                    if ax == *axis {
                        let len = format!("(torch.size({}))[{axis}]", a[0]);
                        pads.push(dim(*before));
                        pads.push(format!(
                            "torch.sub(torch.sub({}, {}), {len})",
                            dim(*size),
                            dim(*before)
                        ));
                    } else {
                        pads.push("0".into());
                        pads.push("0".into());
                    }
                }
                format!("torch.constant_pad_nd({}, [{}], 0)", a[0], pads.join(", "))
            }
            Op::Concat { axis } => format!("torch.cat([{}], {axis})", a.join(", ")),
            Op::ReduceSum { axes, keepdims } => {
                if axes.is_empty() {
                    a[0].clone()
                } else {
                    let k = if *keepdims { "True" } else { "False" };
                    // dtype= keeps integer sums in their type (torch widens them to int64).
                    format!("torch.sum({}, {}, {k}, dtype={st})", a[0], ints(axes))
                }
            }
            Op::ReduceMax { axes, keepdims } => {
                if axes.is_empty() {
                    a[0].clone()
                } else {
                    let k = if *keepdims { "True" } else { "False" };
                    format!("torch.amax({}, {}, {k})", a[0], ints(axes))
                }
            }
            Op::Gather => format!(
                "torch.reshape(torch.index_select({}, 0, torch.reshape({}, [-1])), {})",
                a[0],
                a[1],
                shape(&out.shape)
            ),
            Op::ScatterAdd { .. } => {
                let mut flat = vec!["-1".to_string()];
                flat.extend(out.shape[1..].iter().map(|&d| dim(d)));
                let flat = format!("[{}]", flat.join(", "));
                format!(
                    "torch.index_add(torch.zeros({}, dtype={st}, layout=None, device=dev), 0, torch.reshape({}, [-1]), torch.reshape({}, {flat}))",
                    shape(&out.shape),
                    a[0],
                    a[1]
                )
            }
            Op::StopGradient => a[0].clone(),
            other => {
                return Err(GraphError(format!(
                    "the TorchScript lowering takes the elementary form of every op; `{}` is a fused op (build the graph with `unfused`)",
                    other.name()
                )))
            }
        };
        let _ = writeln!(s, "    v{i} = {rhs}");
    }
    let out = |n: &str| {
        g.output(n)
            .map(|v| format!("torch.to(v{}, 7)", v.0))
            .ok_or_else(|| GraphError(format!("lowering: the graph has no output {n}")))
    };
    let _ = writeln!(
        s,
        "    return ({}, {}, {})",
        out(io::ATOM_ENERGY)?,
        out(io::FORCE)?,
        out(io::VIRIAL)?
    );
    Ok(s)
}
