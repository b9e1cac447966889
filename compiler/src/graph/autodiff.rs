//! Reverse-mode automatic differentiation as a graph transformation.
//!
//! `vjp` appends to the graph the nodes computing `seed^T · ∂y/∂x` for each requested `x`:
//! a reverse sweep over the nodes between `x` and `y`, applying each op's VJP rule and
//! summing cotangents of values used more than once. Forces are `-vjp(energy, 1, coord)`,
//! exactly as DeePMD-kit's PyTorch and JAX backends obtain them with their own autodiff.

use std::collections::HashMap;

use super::op::{Binary, Cmp, Op, Unary};
use super::types::{numel, Dim};
use super::{Graph, GraphError, ValueId};

type R<T> = Result<T, GraphError>;

/// Cotangents of `wrt` given cotangent `seed` (same type as `y`) of `y`.
/// `None` where `y` does not depend on that value.
pub fn vjp(g: &mut Graph, y: ValueId, seed: ValueId, wrt: &[ValueId]) -> R<Vec<Option<ValueId>>> {
    if g.ty(y) != g.ty(seed) {
        return Err(GraphError(format!(
            "vjp seed {} does not match output {}",
            g.ty(seed),
            g.ty(y)
        )));
    }
    let n = y.index() + 1;
    // Values that depend on some `wrt` (forward reachability).
    let mut depends = vec![false; n];
    for w in wrt {
        if w.index() < n {
            depends[w.index()] = true;
        }
    }
    for i in 0..n {
        let node = g.node(ValueId(i as u32));
        if !depends[i]
            && !matches!(node.op, Op::StopGradient)
            && node.args.iter().any(|a| depends[a.index()])
        {
            depends[i] = node.ty.dtype.is_float();
        }
    }
    let mut adj: HashMap<ValueId, ValueId> = HashMap::new();
    if !depends[y.index()] {
        return Ok(wrt.iter().map(|_| None).collect());
    }
    adj.insert(y, seed);
    for i in (0..n).rev() {
        let v = ValueId(i as u32);
        if !depends[i] {
            continue;
        }
        let Some(&gv) = adj.get(&v) else { continue };
        let node = g.node(v).clone();
        let wanted: Vec<bool> = node.args.iter().map(|a| depends[a.index()]).collect();
        if !wanted.iter().any(|&w| w) {
            continue;
        }
        let grads = rule(g, &node.op, &node.args, v, gv, &wanted)?;
        for ((a, want), d) in node.args.iter().zip(&wanted).zip(grads) {
            if !want {
                continue;
            }
            let Some(d) = d else { continue };
            let acc = match adj.get(a) {
                Some(&prev) => g.add(prev, d)?,
                None => d,
            };
            adj.insert(*a, acc);
        }
    }
    Ok(wrt.iter().map(|w| adj.get(w).copied()).collect())
}

/// The VJP rule of one op: cotangents of its arguments (only those marked `wanted`).
fn rule(
    g: &mut Graph,
    op: &Op,
    args: &[ValueId],
    y: ValueId,
    gy: ValueId,
    wanted: &[bool],
) -> R<Vec<Option<ValueId>>> {
    let shape_of = |g: &Graph, v: ValueId| g.shape(v).to_vec();
    let one = |d: ValueId| Ok(vec![Some(d)]);
    match op {
        Op::Input(_) | Op::Const(_) | Op::Compare(_) | Op::StopGradient => {
            Ok(vec![None; args.len()])
        }
        Op::Unary(u) => {
            let x = args[0];
            let d = match u {
                Unary::Neg => g.neg(gy)?,
                Unary::Exp => g.mul(gy, y)?,
                Unary::Log => g.div(gy, x)?,
                Unary::Tanh => {
                    // (1 - y^2) g
                    let y2 = g.mul(y, y)?;
                    let one = g.scalar_like(1.0, y);
                    let t = g.sub(one, y2)?;
                    g.mul(gy, t)?
                }
                Unary::Sqrt => {
                    let t = g.div(gy, y)?;
                    g.scale(t, 0.5)?
                }
                Unary::Recip => {
                    let y2 = g.mul(y, y)?;
                    let t = g.mul(gy, y2)?;
                    g.neg(t)?
                }
                Unary::Sigmoid => {
                    let one = g.scalar_like(1.0, y);
                    let t = g.sub(one, y)?;
                    let t = g.mul(y, t)?;
                    g.mul(gy, t)?
                }
                Unary::Not | Unary::Floor => return Ok(vec![None]),
            };
            one(d)
        }
        Op::Binary(b) => {
            let (a, c) = (args[0], args[1]);
            let (sa, sc) = (shape_of(g, a), shape_of(g, c));
            let (da, dc) = match b {
                Binary::Add => (gy, gy),
                Binary::Sub => (gy, g.neg(gy)?),
                Binary::Mul => (
                    if wanted[0] { g.mul(gy, c)? } else { gy },
                    if wanted[1] { g.mul(gy, a)? } else { gy },
                ),
                Binary::Div => {
                    let da = g.div(gy, c)?;
                    let dc = if wanted[1] {
                        let t = g.mul(da, y)?;
                        g.neg(t)?
                    } else {
                        gy
                    };
                    (da, dc)
                }
                Binary::Max | Binary::Min => {
                    let cmp = if *b == Binary::Max { Cmp::Ge } else { Cmp::Le };
                    let pick_a = g.cmp(cmp, a, c)?;
                    let zero = g.scalar_like(0.0, gy);
                    (g.select(pick_a, gy, zero)?, g.select(pick_a, zero, gy)?)
                }
                Binary::And | Binary::Or => return Ok(vec![None, None]),
            };
            let da = if wanted[0] {
                Some(g.sum_to(da, &sa)?)
            } else {
                None
            };
            let dc = if wanted[1] {
                Some(g.sum_to(dc, &sc)?)
            } else {
                None
            };
            Ok(vec![da, dc])
        }
        Op::Select => {
            let (cond, a, b) = (args[0], args[1], args[2]);
            let zero = g.scalar_like(0.0, gy);
            let da = if wanted[1] {
                let t = g.select(cond, gy, zero)?;
                Some(g.sum_to(t, &shape_of(g, a))?)
            } else {
                None
            };
            let db = if wanted[2] {
                let t = g.select(cond, zero, gy)?;
                Some(g.sum_to(t, &shape_of(g, b))?)
            } else {
                None
            };
            Ok(vec![None, da, db])
        }
        Op::Cast(_) => {
            let d = g.dtype(args[0]);
            one(g.cast(gy, d)?)
        }
        Op::MatMul => {
            let (a, b) = (args[0], args[1]);
            let da = if wanted[0] {
                let bt = g.transpose_last2(b)?;
                Some(g.matmul(gy, bt)?)
            } else {
                None
            };
            let db = if wanted[1] {
                let (ra, rb) = (g.ty(a).rank(), g.ty(b).rank());
                if rb == 2 && ra > 2 {
                    // b is shared by every batch: fold the batch into the rows.
                    let sa = shape_of(g, a);
                    let rows = numel(&sa[..ra - 1])
                        .ok_or_else(|| GraphError("matmul batch too large".into()))?;
                    let a2 = g.reshape(a, vec![rows, sa[ra - 1]])?;
                    let n = *shape_of(g, gy).last().unwrap();
                    let g2 = g.reshape(gy, vec![rows, n])?;
                    let at = g.transpose_last2(a2)?;
                    Some(g.matmul(at, g2)?)
                } else {
                    let at = g.transpose_last2(a)?;
                    Some(g.matmul(at, gy)?)
                }
            } else {
                None
            };
            Ok(vec![da, db])
        }
        Op::Reshape(_) => {
            let s = shape_of(g, args[0]);
            one(g.reshape(gy, s)?)
        }
        Op::Transpose(perm) => {
            let mut inv = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            one(g.transpose(gy, inv)?)
        }
        Op::Broadcast(_) => {
            let s = shape_of(g, args[0]);
            one(g.sum_to(gy, &s)?)
        }
        Op::Slice { axis, start, .. } => {
            let len = shape_of(g, args[0])[*axis];
            one(g.pad(gy, *axis, *start, len)?)
        }
        Op::Pad { axis, before, .. } => {
            let len = shape_of(g, args[0])[*axis];
            let end = before
                .checked_add(len)
                .ok_or_else(|| GraphError("pad size".into()))?;
            one(g.slice(gy, *axis, *before, end)?)
        }
        Op::Concat { axis } => {
            let mut start = Dim::fixed(0);
            let mut out = Vec::with_capacity(args.len());
            for (a, want) in args.iter().zip(wanted) {
                let len = shape_of(g, *a)[*axis];
                let end = start
                    .checked_add(len)
                    .ok_or_else(|| GraphError("concat size".into()))?;
                out.push(if *want {
                    Some(g.slice(gy, *axis, start, end)?)
                } else {
                    None
                });
                start = end;
            }
            Ok(out)
        }
        Op::ReduceSum { axes, .. } => {
            let s = shape_of(g, args[0]);
            let kept: Vec<Dim> = s
                .iter()
                .enumerate()
                .map(|(i, d)| if axes.contains(&i) { Dim::ONE } else { *d })
                .collect();
            let t = g.reshape(gy, kept)?;
            one(g.broadcast(t, s)?)
        }
        Op::ReduceMax { .. } => Err(GraphError(
            "reduce_max has no gradient; wrap it in stop_gradient (as a softmax shift)".into(),
        )),
        Op::Gather => {
            let rows = shape_of(g, args[0])[0];
            Ok(vec![Some(g.scatter_add(args[1], gy, rows)?), None])
        }
        Op::ScatterAdd { .. } => Ok(vec![None, Some(g.gather(gy, args[0])?)]),
        Op::EmbedContract(e) => {
            // The factor's and the shift's rows are constants of the model (networks on
            // the type embedding): the VJP has no rule for them.
            if (e.factor.is_some() || e.shift) && wanted[2] {
                return Err(GraphError(
                    "embed_contract's factor or shift rows take no gradient".into(),
                ));
            }
            let mut vargs = vec![args[0], gy];
            vargs.extend_from_slice(&args[1..]);
            let d = g.push(Op::EmbedContractVjp(e.clone()), &vargs)?;
            let mut out = vec![Some(d)];
            out.extend(args[1..].iter().map(|_| None));
            Ok(out)
        }
        Op::Dense(e) => {
            // With `grad`, the VJP scales the gradient the forward op returned.
            let first = if e.grad { y } else { args[0] };
            let mut vargs = vec![first, gy];
            vargs.extend(args.get(1).copied());
            let d = g.push(Op::DenseVjp(e.clone()), &vargs)?;
            let mut out = vec![Some(d)];
            out.extend(args.get(1).map(|_| None));
            Ok(out)
        }
        Op::DenseVjp(_) => Err(GraphError(
            "dense_vjp has no gradient (second derivatives are not supported)".into(),
        )),
        Op::EnvMat(e) => {
            let d = g.push(Op::EnvMatVjp(e.clone()), &[args[0], args[1], args[2], gy])?;
            Ok(vec![Some(d), None, None])
        }
        Op::Attention(a) => {
            let d = a.width();
            let mut vargs = args.to_vec();
            vargs.push(gy);
            let all = g.push(Op::AttentionVjp(a.clone()), &vargs)?;
            let dx = g.slice_n(all, 2, 0, d)?;
            let dsw = g.slice_n(all, 2, d, d + 1)?;
            let dsw = g.reshape(dsw, shape_of(g, args[1]))?;
            let dr = g.slice_n(all, 2, d + 1, d + 4)?;
            Ok(vec![Some(dx), Some(dsw), None, Some(dr)])
        }
        Op::AttentionVjp(_) => Err(GraphError(
            "attention_vjp has no gradient (second derivatives are not supported)".into(),
        )),
        Op::Softmax => Ok(vec![Some(g.push(Op::SoftmaxVjp, &[y, gy])?)]),
        Op::Act(f) => Ok(vec![Some(g.push(Op::ActVjp(*f), &[args[0], gy])?)]),
        Op::ActVjp(_) => Err(GraphError(
            "activation_vjp has no gradient (second derivatives are not supported)".into(),
        )),
        Op::SoftmaxVjp => Err(GraphError(
            "softmax_vjp has no gradient (second derivatives are not supported)".into(),
        )),
        Op::EnvMatVjp(_) => Err(GraphError(
            "env_mat_vjp has no gradient (second derivatives are not supported)".into(),
        )),
        Op::EmbedContractVjp(_) => Err(GraphError(
            "embed_contract_vjp has no gradient (second derivatives are not supported)".into(),
        )),
    }
}
