//! The operations of the tensor IR and their type rules.
//!
//! Ops sit at the granularity of DeePMD-kit's own array code: elementwise maths with numpy
//! broadcasting, matmul, reshapes, reductions, and row gather/scatter for neighbour lists.
//! Every float op that can sit on the path from coordinates to energy has a VJP rule in
//! `autodiff.rs`; integer and boolean ops carry no gradient.

use std::fmt;
use std::sync::Arc;

use super::attention::Attention;
use super::mlp::{Dense, DenseInput, Embed, EnvSpec, Mlp};
use super::tensor::Tensor;
use super::types::{numel, DType, Dim, Shape, TensorType};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unary {
    Neg,
    Exp,
    Log,
    Tanh,
    Sqrt,
    Recip,
    Sigmoid,
    /// Round down to an integer value (no gradient: piecewise constant).
    Floor,
    /// Logical not (bool only).
    Not,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    /// Logical and / or (bool only).
    And,
    Or,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

/// Activations with a fused elementwise kernel (`Op::Act`): the ones whose elementary form
/// takes many passes over a tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ActFn {
    /// `x sigmoid(x)`.
    Silu,
    /// DeePMD-kit's `silut:thr`: silu below `thr`, `tanh(slope (x - thr)) + silu(thr)` above,
    /// with `slope = silu'(thr)`.
    Silut(f64),
}

/// One operation. Arguments are listed per variant.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// The graph's input number `n` (no arguments).
    Input(usize),
    /// A constant (no arguments).
    Const(Arc<Tensor>),
    /// `(x)`, elementwise.
    Unary(Unary),
    /// `(a, b)`, elementwise with numpy broadcasting; both of one dtype.
    Binary(Binary),
    /// `(a, b) -> bool`, elementwise with broadcasting.
    Compare(Cmp),
    /// `(cond, a, b)`: `cond ? a : b`, elementwise with broadcasting.
    Select,
    /// `(x)` converted to another dtype.
    Cast(DType),
    /// `(a [..., m, k], b [..., k, n] | [k, n]) -> [..., m, n]`.
    MatMul,
    /// `(x)` with the same elements in a new shape.
    Reshape(Shape),
    /// `(x)` with axes permuted: output axis `i` is input axis `perm[i]`.
    Transpose(Vec<usize>),
    /// `(x)` broadcast (numpy rules) to a shape.
    Broadcast(Shape),
    /// `(x)` restricted to `start..end` along `axis`.
    Slice { axis: usize, start: Dim, end: Dim },
    /// `(x)` placed at offset `before` in zeros of length `size` along `axis`.
    Pad { axis: usize, before: Dim, size: Dim },
    /// `(x0, x1, ...)` joined along `axis`.
    Concat { axis: usize },
    /// `(x)` summed over `axes`.
    ReduceSum { axes: Vec<usize>, keepdims: bool },
    /// `(x)` maximum over `axes` (no gradient: use under `StopGradient`).
    ReduceMax { axes: Vec<usize>, keepdims: bool },
    /// `(table [r, ...], idx i32 [...]) -> idx.shape ++ table.shape[1..]`: rows of `table`.
    Gather,
    /// `(idx i32 [...], upd [idx.shape ++ rest]) -> [rows] ++ rest`: sums `upd` into rows.
    ScatterAdd { rows: Dim },
    /// `(x)` unchanged, but autodiff treats it as a constant.
    StopGradient,
    /// `(x)`: softmax over the last axis (max-shifted), in one pass per row.
    Softmax,
    /// `(x)`: an activation, elementwise, in one pass.
    Act(ActFn),
    /// `(x, g)`: the VJP of `Act`, `g * act'(x)` (no gradient of its own).
    ActVjp(ActFn),
    /// `(y, g)`: the VJP of `Softmax` from its output `y` and cotangent `g`,
    /// `y * (g - sum(g * y))` per row (no gradient of its own).
    SoftmaxVjp,
    /// `(rr [n, s, c] [, types i32 [n]]) -> [n, m, c]`:
    /// `out[i] = sum_j Net(rr[i, j, 0])^T rr[i, j, :]`, the embedding network applied to the
    /// first channel and contracted with all channels (se_e2_a's `G^T R~`), fused so the
    /// `[n, s, m]` activations never go to memory. With `centre_type`, only centres of that
    /// type (given by `types`) are computed; the others are zero.
    EmbedContract(Embed),
    /// `(rr [n, s, c], g [n, m, c] [, types]) -> [n, s, c]`: the VJP of `EmbedContract` with
    /// respect to `rr` for the cotangent `g` (the network is re-run per block; no second
    /// derivative).
    EmbedContractVjp(Embed),
    /// `(coord [nall, 3], nlist i32 [nloc, nnei], types i32 [nloc]) -> [nloc, nnei, ncomp]`:
    /// DeePMD-kit's normalised smooth environment matrix in one pass (padding slots hold
    /// `-davg/dstd`), in the statistics' type; pair vectors are taken in the positions'
    /// type (float64) and rounded after, so a float32 matrix does not depend on where the
    /// system sits.
    EnvMat(EnvSpec),
    /// `(coord, nlist, types, g [nloc, nnei, ncomp]) -> [nall, 3]`: the VJP of `EnvMat` with
    /// respect to `coord`.
    EnvMatVjp(EnvSpec),
    /// `(x [n, d] [, types i32 [n]]) -> [n, out]`: a network on each row (a fitting net;
    /// with `DenseInput::AxisProduct`, `x [n, m, c]` and rows formed from it),
    /// fused so the activations stay in per-block scratch; with networks by type, each row
    /// through its type's (rows of a type without one are zero). With `grad` (one output), the
    /// output is `[n, 1 + d]`: `y`, then `dy/dx`.
    Dense(Dense),
    /// `(x [n, d], g [n, out] [, types]) -> [n, d]`: the VJP of `Dense` with respect to `x`
    /// (the network is re-run per block; no second derivative). With `grad` it takes the
    /// forward output and its cotangent, `(y [n, 1 + d], g [n, 1 + d] [, types])`, and is
    /// `g[:, 0] * y[:, 1:]`.
    DenseVjp(Dense),
    /// `(x [n, s, d], sw [n, s], mask bool [n, s], r [n, s, 3]) -> [n, s, d]`: one gated
    /// self-attention layer over each row's `s` slots, with its residual and layer norm
    /// (`sw` the switch weights, `mask` the real neighbours, `r` the unit pair directions).
    Attention(Arc<Attention>),
    /// `(x, sw, mask, r, g [n, s, d]) -> [n, s, d + 4]`: the VJP of `Attention` for the
    /// cotangent `g`, per slot `[dx, dsw, dr]` (the layer is re-run per row; no second
    /// derivative).
    AttentionVjp(Arc<Attention>),
}

impl Op {
    /// The op's name in the text format.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input(_) => "input",
            Op::Const(_) => "const",
            Op::Unary(u) => match u {
                Unary::Neg => "neg",
                Unary::Exp => "exp",
                Unary::Log => "log",
                Unary::Tanh => "tanh",
                Unary::Sqrt => "sqrt",
                Unary::Recip => "recip",
                Unary::Sigmoid => "sigmoid",
                Unary::Floor => "floor",
                Unary::Not => "not",
            },
            Op::Binary(b) => match b {
                Binary::Add => "add",
                Binary::Sub => "sub",
                Binary::Mul => "mul",
                Binary::Div => "div",
                Binary::Max => "max",
                Binary::Min => "min",
                Binary::And => "and",
                Binary::Or => "or",
            },
            Op::Compare(c) => match c {
                Cmp::Lt => "lt",
                Cmp::Le => "le",
                Cmp::Gt => "gt",
                Cmp::Ge => "ge",
                Cmp::Eq => "eq",
                Cmp::Ne => "ne",
            },
            Op::Select => "select",
            Op::Cast(_) => "cast",
            Op::MatMul => "matmul",
            Op::Reshape(_) => "reshape",
            Op::Transpose(_) => "transpose",
            Op::Broadcast(_) => "broadcast",
            Op::Slice { .. } => "slice",
            Op::Pad { .. } => "pad",
            Op::Concat { .. } => "concat",
            Op::ReduceSum { .. } => "reduce_sum",
            Op::ReduceMax { .. } => "reduce_max",
            Op::Gather => "gather",
            Op::ScatterAdd { .. } => "scatter_add",
            Op::StopGradient => "stop_gradient",
            Op::Softmax => "softmax",
            Op::Act(_) => "activation",
            Op::ActVjp(_) => "activation_vjp",
            Op::SoftmaxVjp => "softmax_vjp",
            Op::EmbedContract(_) => "embed_contract",
            Op::EmbedContractVjp(_) => "embed_contract_vjp",
            Op::Dense(_) => "dense",
            Op::DenseVjp(_) => "dense_vjp",
            Op::EnvMat(_) => "env_mat",
            Op::EnvMatVjp(_) => "env_mat_vjp",
            Op::Attention(_) => "attention",
            Op::AttentionVjp(_) => "attention_vjp",
        }
    }

    /// The number of arguments the op takes (`None`: any number, at least one).
    pub fn arity(&self) -> Option<usize> {
        Some(match self {
            Op::Input(_) | Op::Const(_) => 0,
            Op::Unary(_)
            | Op::Cast(_)
            | Op::Reshape(_)
            | Op::Transpose(_)
            | Op::Broadcast(_)
            | Op::Slice { .. }
            | Op::Pad { .. }
            | Op::ReduceSum { .. }
            | Op::ReduceMax { .. }
            | Op::StopGradient
            | Op::Softmax
            | Op::Act(_) => 1,
            Op::SoftmaxVjp | Op::ActVjp(_) => 2,
            Op::EmbedContract(e) => 1 + e.extra_args(),
            Op::EmbedContractVjp(e) => 2 + e.extra_args(),
            Op::Dense(e) => 1 + usize::from(e.nets.by_type()),
            Op::DenseVjp(e) => 2 + usize::from(e.nets.by_type()),
            Op::Binary(_) | Op::Compare(_) | Op::MatMul | Op::Gather | Op::ScatterAdd { .. } => 2,
            Op::Select | Op::EnvMat(_) => 3,
            Op::EnvMatVjp(_) | Op::Attention(_) => 4,
            Op::AttentionVjp(_) => 5,
            Op::Concat { .. } => return None,
        })
    }

    /// The result type for these argument types, or why they are wrong.
    /// `Input` is typed by the graph's input list, not here.
    pub fn infer(&self, args: &[&TensorType]) -> Result<TensorType, String> {
        if let Some(n) = self.arity() {
            if args.len() != n {
                return Err(format!(
                    "{} takes {n} arguments, got {}",
                    self.name(),
                    args.len()
                ));
            }
        } else if args.is_empty() {
            return Err(format!("{} needs at least one argument", self.name()));
        }
        let a = args.first().copied();
        match self {
            Op::Input(_) => Err("input types come from the graph's input list".into()),
            Op::Const(t) => Ok(TensorType::new(
                t.dtype(),
                t.shape.iter().map(|&n| Dim::fixed(n)).collect(),
            )),
            Op::Unary(u) => {
                let a = a.unwrap();
                let ok = if *u == Unary::Not {
                    a.dtype == DType::Bool
                } else {
                    a.dtype.is_float()
                };
                if !ok {
                    return Err(format!("{} does not apply to {}", self.name(), a.dtype));
                }
                Ok(a.clone())
            }
            Op::Binary(b) => {
                let (x, y) = (args[0], args[1]);
                if x.dtype != y.dtype {
                    return Err(format!("{} of {} and {}", self.name(), x.dtype, y.dtype));
                }
                let ok = match b {
                    Binary::And | Binary::Or => x.dtype == DType::Bool,
                    Binary::Div => x.dtype.is_float(),
                    _ => x.dtype != DType::Bool,
                };
                if !ok {
                    return Err(format!("{} does not apply to {}", self.name(), x.dtype));
                }
                Ok(TensorType::new(
                    x.dtype,
                    broadcast_shapes(&x.shape, &y.shape)?,
                ))
            }
            Op::Compare(_) => {
                let (x, y) = (args[0], args[1]);
                if x.dtype != y.dtype || x.dtype == DType::Bool {
                    return Err(format!("{} of {} and {}", self.name(), x.dtype, y.dtype));
                }
                Ok(TensorType::new(
                    DType::Bool,
                    broadcast_shapes(&x.shape, &y.shape)?,
                ))
            }
            Op::Select => {
                let (c, x, y) = (args[0], args[1], args[2]);
                if c.dtype != DType::Bool || x.dtype != y.dtype {
                    return Err(format!("select({}, {}, {})", c.dtype, x.dtype, y.dtype));
                }
                let s = broadcast_shapes(&broadcast_shapes(&c.shape, &x.shape)?, &y.shape)?;
                Ok(TensorType::new(x.dtype, s))
            }
            Op::Cast(d) => Ok(TensorType::new(*d, a.unwrap().shape.clone())),
            Op::MatMul => {
                let (x, y) = (args[0], args[1]);
                if x.dtype != y.dtype || !x.dtype.is_float() {
                    return Err(format!("matmul of {} and {}", x.dtype, y.dtype));
                }
                if x.rank() < 2 || y.rank() < 2 {
                    return Err("matmul needs rank >= 2".into());
                }
                let (xb, xm) = x.shape.split_at(x.rank() - 2);
                let (yb, ym) = y.shape.split_at(y.rank() - 2);
                if xm[1] != ym[0] {
                    return Err(format!("matmul inner dims {} and {} differ", xm[1], ym[0]));
                }
                if !yb.is_empty() && yb != xb {
                    return Err("matmul batch dims differ".into());
                }
                let mut s = xb.to_vec();
                s.push(xm[0]);
                s.push(ym[1]);
                Ok(TensorType::new(x.dtype, s))
            }
            Op::Reshape(to) => {
                let x = a.unwrap();
                if numel(&x.shape) != numel(to) || numel(to).is_none() {
                    return Err(format!(
                        "reshape {} to {} changes the element count",
                        x,
                        fmt_shape(to)
                    ));
                }
                Ok(TensorType::new(x.dtype, to.clone()))
            }
            Op::Transpose(perm) => {
                let x = a.unwrap();
                let mut seen = vec![false; x.rank()];
                if perm.len() != x.rank()
                    || perm
                        .iter()
                        .any(|&p| p >= x.rank() || std::mem::replace(&mut seen[p], true))
                {
                    return Err(format!(
                        "transpose {perm:?} is not a permutation of rank {}",
                        x.rank()
                    ));
                }
                Ok(TensorType::new(
                    x.dtype,
                    perm.iter().map(|&p| x.shape[p]).collect(),
                ))
            }
            Op::Broadcast(to) => {
                let x = a.unwrap();
                if broadcast_shapes(&x.shape, to)? != *to {
                    return Err(format!("cannot broadcast {} to {}", x, fmt_shape(to)));
                }
                Ok(TensorType::new(x.dtype, to.clone()))
            }
            Op::Slice { axis, start, end } => {
                let x = a.unwrap();
                let len = x.shape.get(*axis).ok_or("slice axis out of range")?;
                let n = end.checked_sub(*start).ok_or("slice end before start")?;
                if !end.le(*len) {
                    return Err(format!("slice end {end} beyond dim {len}"));
                }
                let mut s = x.shape.clone();
                s[*axis] = n;
                Ok(TensorType::new(x.dtype, s))
            }
            Op::Pad { axis, before, size } => {
                let x = a.unwrap();
                let len = *x.shape.get(*axis).ok_or("pad axis out of range")?;
                let fits = len.checked_add(*before).is_some_and(|e| e.le(*size))
                    || (before.factor == 0 && len.le(*size));
                if !fits {
                    return Err(format!("pad of {len} at {before} does not fit in {size}"));
                }
                let mut s = x.shape.clone();
                s[*axis] = *size;
                Ok(TensorType::new(x.dtype, s))
            }
            Op::Concat { axis } => {
                let first = args[0];
                let mut total = Dim::fixed(0);
                for x in args {
                    if x.dtype != first.dtype || x.rank() != first.rank() || *axis >= x.rank() {
                        return Err("concat of mismatched tensors".into());
                    }
                    for (i, (p, q)) in x.shape.iter().zip(&first.shape).enumerate() {
                        if i != *axis && p != q {
                            return Err(format!("concat: dim {i} differs ({p} vs {q})"));
                        }
                    }
                    total = total
                        .checked_add(x.shape[*axis])
                        .ok_or("concat size not expressible")?;
                }
                let mut s = first.shape.clone();
                s[*axis] = total;
                Ok(TensorType::new(first.dtype, s))
            }
            Op::ReduceSum { axes, keepdims } | Op::ReduceMax { axes, keepdims } => {
                let x = a.unwrap();
                if axes.iter().any(|&ax| ax >= x.rank()) {
                    return Err("reduce axis out of range".into());
                }
                if x.dtype == DType::Bool {
                    return Err("reduce of bool".into());
                }
                Ok(TensorType::new(
                    x.dtype,
                    reduced_shape(&x.shape, axes, *keepdims),
                ))
            }
            Op::Gather => {
                let (t, i) = (args[0], args[1]);
                if i.dtype != DType::I32 || t.rank() == 0 {
                    return Err(format!("gather({t}, {i}) needs i32 indices into rank >= 1"));
                }
                let mut s = i.shape.clone();
                s.extend_from_slice(&t.shape[1..]);
                Ok(TensorType::new(t.dtype, s))
            }
            Op::ScatterAdd { rows } => {
                let (i, u) = (args[0], args[1]);
                if i.dtype != DType::I32 || !u.shape.starts_with(&i.shape) || u.dtype == DType::Bool
                {
                    return Err(format!(
                        "scatter_add({i}, {u}): updates must start with the index shape"
                    ));
                }
                let mut s = vec![*rows];
                s.extend_from_slice(&u.shape[i.rank()..]);
                Ok(TensorType::new(u.dtype, s))
            }
            Op::StopGradient => Ok(a.unwrap().clone()),
            Op::Softmax => {
                let x = a.unwrap();
                if !x.dtype.is_float() || x.rank() == 0 {
                    return Err(format!("softmax of {x}"));
                }
                Ok(x.clone())
            }
            Op::Act(_) => {
                let x = a.unwrap();
                if !x.dtype.is_float() {
                    return Err(format!("activation of {x}"));
                }
                Ok(x.clone())
            }
            Op::ActVjp(_) => {
                if args[0] != args[1] || !args[0].dtype.is_float() {
                    return Err(format!("activation_vjp({}, {})", args[0], args[1]));
                }
                Ok(args[0].clone())
            }
            Op::SoftmaxVjp => {
                if args[0] != args[1] || !args[0].dtype.is_float() || args[0].rank() == 0 {
                    return Err(format!("softmax_vjp({}, {})", args[0], args[1]));
                }
                Ok(args[0].clone())
            }
            // The matrix in the statistics' type, from positions of any float type (pair
            // vectors are taken in the positions' type and rounded after); the VJP returns
            // the positions' cotangent in their type.
            Op::EnvMat(e) => {
                env_input(e, args)?;
                let s = vec![args[1].shape[0], args[1].shape[1], Dim::fixed(e.ncomp())];
                Ok(TensorType::new(e.davg.dtype(), s))
            }
            Op::EnvMatVjp(e) => {
                env_input(e, args)?;
                let g = args[3];
                let want = [args[1].shape[0], args[1].shape[1], Dim::fixed(e.ncomp())];
                if g.dtype != e.davg.dtype() || g.shape != want {
                    return Err(format!("env_mat_vjp cotangent {g}"));
                }
                Ok(args[0].clone())
            }
            Op::EmbedContract(e) => {
                let rr = a.unwrap();
                embed_input(e, rr, &args[1..])?;
                let s = vec![rr.shape[0], Dim::fixed(e.net.n_out()), rr.shape[2]];
                Ok(TensorType::new(rr.dtype, s))
            }
            Op::EmbedContractVjp(e) => {
                let (rr, g) = (args[0], args[1]);
                embed_input(e, rr, &args[2..])?;
                let want = [rr.shape[0], Dim::fixed(e.net.n_out()), rr.shape[2]];
                if g.dtype != rr.dtype || g.shape != want {
                    return Err(format!(
                        "embed_contract_vjp cotangent {g} does not match {}",
                        fmt_shape(&want)
                    ));
                }
                Ok(rr.clone())
            }
            Op::Attention(at) => {
                attention_input(at, args)?;
                Ok(args[0].clone())
            }
            Op::AttentionVjp(at) => {
                attention_input(at, args)?;
                if args[4] != args[0] {
                    return Err(format!(
                        "attention_vjp cotangent {} is not {}",
                        args[4], args[0]
                    ));
                }
                let x = args[0];
                let s = vec![x.shape[0], x.shape[1], Dim::fixed(at.width() + 4)];
                Ok(TensorType::new(x.dtype, s))
            }
            Op::Dense(e) => {
                let x = a.unwrap();
                // Before the widths below, which read the networks.
                e.nets.check()?;
                dense_input(e, x, &e.x_dims(), args.last().copied())?;
                let s = vec![x.shape[0], Dim::fixed(e.out_width())];
                Ok(TensorType::new(x.dtype, s))
            }
            Op::DenseVjp(e) => {
                let (x, g) = (args[0], args[1]);
                e.nets.check()?;
                let first = if e.grad {
                    vec![e.out_width()]
                } else {
                    e.x_dims()
                };
                dense_input(e, x, &first, args.last().copied())?;
                let want = [x.shape[0], Dim::fixed(e.out_width())];
                if g.dtype != x.dtype || g.shape != want {
                    return Err(format!(
                        "dense_vjp cotangent {g} does not match {}",
                        fmt_shape(&want)
                    ));
                }
                let mut s = vec![x.shape[0]];
                s.extend(e.x_dims().into_iter().map(Dim::fixed));
                Ok(TensorType::new(x.dtype, s))
            }
        }
    }
}

/// The checks `Dense` and its VJP share: `x` is `[n, dims..]` of the network's dtype.
fn dense_input(
    e: &Dense,
    x: &TensorType,
    dims: &[usize],
    last: Option<&TensorType>,
) -> Result<(), String> {
    e.nets.check()?;
    if e.grad && e.net().n_out() != 1 {
        return Err("dense with grad needs a one-output network".into());
    }
    if let DenseInput::AxisProduct { axis, channels } = e.input {
        let n_in = e.net().n_in();
        if !e.grad || axis == 0 || channels == 0 || !n_in.is_multiple_of(axis) || n_in / axis < axis
        {
            return Err(format!(
                "dense of an axis product ({axis} of {channels} channels) needs a gradient \
                 network whose input width {n_in} is a multiple of the axis, at least its square"
            ));
        }
    }
    if e.nets.by_type() {
        let t = last.ok_or("dense needs the rows' types")?;
        if t.dtype != DType::I32 || t.rank() != 1 || x.rank() < 1 || t.shape[0] != x.shape[0] {
            return Err(format!("dense row types {t} do not match x {x}"));
        }
    }
    let shape_ok = x.rank() == 1 + dims.len()
        && x.shape[1..]
            .iter()
            .zip(dims)
            .all(|(a, &b)| *a == Dim::fixed(b));
    if !shape_ok || x.dtype != e.net().dtype {
        return Err(format!(
            "dense needs [n, {dims:?}] of the network's dtype {}, got {x}",
            e.net().dtype
        ));
    }
    Ok(())
}

/// The checks `EnvMat` and its VJP share.
fn env_input(e: &EnvSpec, args: &[&TensorType]) -> Result<(), String> {
    let (coord, nlist, types) = (args[0], args[1], args[2]);
    let ncomp = e.ncomp();
    let ok = coord.dtype.is_float()
        && coord.rank() == 2
        && coord.shape[1] == Dim::fixed(3)
        && nlist.dtype == DType::I32
        && nlist.rank() == 2
        && types.dtype == DType::I32
        && types.rank() == 1
        && types.shape[0] == nlist.shape[0]
        && e.davg.shape.len() == 3
        && e.davg.shape == e.dstd.shape
        && e.davg.shape[2] == ncomp
        && Dim::fixed(e.davg.shape[1]) == nlist.shape[1]
        && e.davg.dtype().is_float()
        && e.dstd.dtype() == e.davg.dtype()
        && e.rcut > e.rcut_smth;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "env_mat of coord {coord}, nlist {nlist}, types {types} with stats {:?}",
            e.davg.shape
        ))
    }
}

/// The checks `EmbedContract` and its VJP share on `rr`, the network, the factor's or the
/// shift's index and rows, and the types (`rest`: the arguments after `rr`, and after the VJP's
/// cotangent).
fn embed_input(e: &Embed, rr: &TensorType, rest: &[&TensorType]) -> Result<(), String> {
    let net: &Mlp = &e.net;
    match e.table {
        Some(_) => net.check()?,
        None => net.check_native()?,
    }
    if let Some(split) = e.factor {
        let (idx, u) = (rest[0], rest[1]);
        if e.table.is_none() || e.ones {
            return Err("embed_contract's per-row factor needs a table (and no ones)".into());
        }
        if rr.rank() != 3 || rr.shape[2].sym.is_some() || split > rr.shape[2].factor {
            return Err(format!(
                "embed_contract factor from channel {split} of rr {rr}"
            ));
        }
        if idx.dtype != DType::I32 || idx.shape[..] != rr.shape[..2] {
            return Err(format!(
                "embed_contract factor index {idx} does not match rr {rr}"
            ));
        }
        let m = Dim::fixed(net.n_out());
        if u.dtype != rr.dtype || u.rank() != 2 || u.shape[1] != m || u.shape[0].sym.is_some() {
            return Err(format!(
                "embed_contract factor rows {u} (want [k, {m}] of rr's dtype)"
            ));
        }
    }
    if e.shift {
        let (idx, u) = (rest[0], rest[1]);
        if e.table.is_some() || e.factor.is_some() {
            return Err("embed_contract's first-layer shift takes a network alone".into());
        }
        if rr.rank() != 3 || idx.dtype != DType::I32 || idx.shape[..] != rr.shape[..2] {
            return Err(format!(
                "embed_contract shift index {idx} does not match rr {rr}"
            ));
        }
        let n1 = net.layers.first().map_or(0, |l| l.n_out());
        if u.dtype != rr.dtype
            || u.rank() != 2
            || u.shape[1] != Dim::fixed(n1)
            || u.shape[0].sym.is_some()
        {
            return Err(format!(
                "embed_contract shift rows {u} (want [k, {n1}] of rr's dtype)"
            ));
        }
    }
    if e.centre_type.is_some() {
        let t = *rest
            .last()
            .ok_or("embed_contract needs the centres' types")?;
        if t.dtype != DType::I32 || t.rank() != 1 || rr.rank() < 1 || t.shape[0] != rr.shape[0] {
            return Err(format!(
                "embed_contract centre types {t} do not match rr {rr}"
            ));
        }
    }
    if rr.rank() != 3 || rr.dtype != net.dtype || net.n_in() != 1 {
        return Err(format!(
            "embed_contract needs rr [n, s, c] of the network's dtype {} and a one-input network, got {rr}",
            net.dtype
        ));
    }
    if rr.shape[2].sym.is_some() || rr.shape[2].factor == 0 {
        return Err("embed_contract needs a fixed, non-empty channel axis".into());
    }
    if e.ones && rr.shape[2] != Dim::ONE {
        return Err(format!(
            "embed_contract with a channel of ones needs rr [n, s, 1], got {rr}"
        ));
    }
    Ok(())
}

/// The checks `Attention` and its VJP share on `(x, sw, mask, r)`.
fn attention_input(a: &Attention, args: &[&TensorType]) -> Result<(), String> {
    a.check()?;
    let (x, sw, mask, r) = (args[0], args[1], args[2], args[3]);
    let ok = x.rank() == 3
        && x.dtype == a.in_proj.dtype
        && x.shape[2] == Dim::fixed(a.width())
        && sw.dtype == x.dtype
        && sw.shape == x.shape[..2]
        && mask.dtype == DType::Bool
        && mask.shape == x.shape[..2]
        && r.dtype == x.dtype
        && r.rank() == 3
        && r.shape[..2] == x.shape[..2]
        && r.shape[2] == Dim::fixed(3);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "attention of x {x}, sw {sw}, mask {mask}, r {r} (want x [n, s, {}] of {})",
            a.width(),
            a.in_proj.dtype
        ))
    }
}

/// Numpy broadcasting of two shapes.
pub fn broadcast_shapes(a: &[Dim], b: &[Dim]) -> Result<Shape, String> {
    let n = a.len().max(b.len());
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            Dim::ONE
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            Dim::ONE
        };
        out.push(if da == db || db.is_one() {
            da
        } else if da.is_one() {
            db
        } else {
            return Err(format!(
                "shapes {} and {} do not broadcast",
                fmt_shape(a),
                fmt_shape(b)
            ));
        });
    }
    Ok(out)
}

pub fn reduced_shape(shape: &[Dim], axes: &[usize], keepdims: bool) -> Shape {
    shape
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            if axes.contains(&i) {
                keepdims.then_some(Dim::ONE)
            } else {
                Some(*d)
            }
        })
        .collect()
}

pub fn fmt_shape(s: &[Dim]) -> String {
    let parts: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(","))
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        match self {
            Op::Input(n) => write!(f, " {n}"),
            Op::Cast(d) => write!(f, " {d}"),
            Op::Reshape(s) | Op::Broadcast(s) => write!(f, " {}", fmt_shape(s)),
            Op::Transpose(p) => write!(f, " {p:?}"),
            Op::Slice { axis, start, end } => write!(f, " axis={axis} {start}..{end}"),
            Op::Pad { axis, before, size } => write!(f, " axis={axis} at={before} size={size}"),
            Op::Concat { axis } => write!(f, " axis={axis}"),
            Op::ReduceSum { axes, keepdims } | Op::ReduceMax { axes, keepdims } => {
                write!(
                    f,
                    " axes={axes:?}{}",
                    if *keepdims { " keepdims" } else { "" }
                )
            }
            Op::ScatterAdd { rows } => write!(f, " rows={rows}"),
            Op::EnvMat(e) | Op::EnvMatVjp(e) => write!(
                f,
                " rcut={} rcut_smth={}{}",
                e.rcut,
                e.rcut_smth,
                if e.radial_only { " radial" } else { "" }
            ),
            Op::EmbedContract(e) | Op::EmbedContractVjp(e) => {
                write!(f, " widths={:?}", e.net.widths())?;
                if e.ones {
                    write!(f, " ones")?;
                }
                if let Some(t) = e.centre_type {
                    write!(f, " centre_type={t}")?;
                }
                if let Some(s) = e.factor {
                    write!(f, " factor_from={s}")?;
                }
                if e.shift {
                    write!(f, " shift")?;
                }
                match &e.table {
                    Some(t) => write!(
                        f,
                        " table=[{}, {}) x{} intervals",
                        t.knots.lower,
                        t.knots.max(),
                        t.knots.intervals()
                    ),
                    None => Ok(()),
                }
            }
            Op::Attention(a) | Op::AttentionVjp(a) => write!(
                f,
                " width={} hidden={}{}{}{}",
                a.width(),
                a.hidden,
                if a.normalize { " normalize" } else { "" },
                if a.dotr { " dotr" } else { "" },
                if a.smooth { " smooth" } else { "" }
            ),
            Op::Dense(e) | Op::DenseVjp(e) => {
                if let Some(net) = e.nets.first() {
                    write!(f, " widths={:?}", net.widths())?;
                }
                if e.grad {
                    write!(f, " grad")?;
                }
                if e.nets.by_type() {
                    let types: Vec<i32> = e.nets.iter().filter_map(|(t, _)| t).collect();
                    write!(f, " types={types:?}")?;
                }
                match e.input {
                    DenseInput::Rows => Ok(()),
                    DenseInput::AxisProduct { axis, .. } => write!(f, " axis_product={axis}"),
                }
            }
            _ => Ok(()),
        }
    }
}
