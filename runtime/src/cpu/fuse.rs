//! Elementwise fusion for the CPU executor: a tree of elementwise ops of one output shape
//! and one float type (float64 or float32) runs as one loop over tiles of that output, so
//! its intermediate tensors never go to memory. Message-passing descriptors are dominated
//! by such chains (DPA-3's split linear maps add four broadcast operands on
//! `[nloc, a, a, d]` and then activate).
//!
//! The plan is made once per graph (`plan`): a node joins its consumer's cluster when it is
//! elementwise, has that one consumer, has the consumer's output shape and is not a graph
//! output; other operands are leaves, read with numpy broadcasting (a `Broadcast` node is
//! read through, from its own input). A product of rows by a small constant matrix (a
//! split linear layer, `x [.., k] @ W [k, n]`, possibly reshaped) feeding the cluster is
//! computed inside it too, tile by tile, from the rows of `x`; and a sum over adjacent axes
//! of such a tree adds the tiles up as they are made. Each op computes exactly what
//! its own kernel computes, with the same functions in the same order (the products with
//! the same packed GEMM), so fusion changes no bits.

use std::sync::Arc;

use dpc_compiler::graph::{ActFn, Binary, Bindings, DType, Data, Dim, Graph, Op, Tensor, Unary};
use rayon::prelude::*;

use super::fastmath as fm;
use super::gemm::{PackedB, PackedB32};
use super::kernels::{
    adjacent_axes, bcast_strides, broadcast_shape, collapse, run32, run32_vjp, silut_consts,
    strides, unary_fn, ROWS_MATMUL_MAX_K,
};
use super::real::Real;
use super::ExecError;

/// Where an instruction reads an operand.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Src {
    /// The cluster's leaf `k`.
    Leaf(usize),
    /// The result of instruction `k`.
    Tmp(usize),
}

#[derive(Clone)]
enum Elem {
    Unary(Unary),
    Binary(Binary),
    Act(ActFn),
    ActVjp(ActFn),
    /// `select(cond, a, b)`, the condition a leaf read as 1 or 0 in the cluster's type.
    Select,
    /// The rows of a `Rows` leaf times a constant matrix with the output's last axis as
    /// columns.
    RowsMatmul(Arc<Packed>),
}

struct Instr {
    op: Elem,
    args: Vec<Src>,
}

/// How a leaf is read.
#[derive(Debug, Clone, Copy, PartialEq)]
enum LeafKind {
    /// Broadcast (numpy rules) to the cluster's shape.
    Broadcast,
    /// As rows of `k` values, one per row of the output's last axis (a `RowsMatmul`
    /// operand).
    Rows(usize),
}

/// One fused tree: its leaves (node indices) and its instructions in evaluation order; the
/// last one is the tree's value, of `shape`.
pub struct Cluster {
    pub leaves: Vec<usize>,
    kinds: Vec<LeafKind>,
    prog: Vec<Instr>,
    /// The shape the instructions compute.
    shape: Vec<Dim>,
    /// The last axis when the cluster has a `RowsMatmul`: tiles hold whole rows.
    row: Option<usize>,
    /// With `Some((a, b))`, the cluster's node is a sum of the tree's value over the axes
    /// `a..b` (the tree's value never goes to memory either).
    reduce: Option<(usize, usize)>,
    /// The element type of every value in the tree (float64 or float32).
    dtype: DType,
}

fn elem(op: &Op) -> Option<Elem> {
    match op {
        Op::Unary(u) if !matches!(u, Unary::Not | Unary::Floor) => Some(Elem::Unary(*u)),
        Op::Binary(b) if !matches!(b, Binary::And | Binary::Or) => Some(Elem::Binary(*b)),
        Op::Act(f) => Some(Elem::Act(*f)),
        Op::ActVjp(f) => Some(Elem::ActVjp(*f)),
        Op::Select => Some(Elem::Select),
        _ => None,
    }
}

/// The fusion plan of `g`: for each node, the cluster it roots (if any). A node absorbed
/// into a cluster is no cluster's leaf, so the executor, which reads a cluster's leaves as
/// its arguments, finds it unneeded. `needed` marks the nodes the outputs need, before
/// fusion.
pub fn plan(g: &Graph, needed: &[bool]) -> Vec<Option<Arc<Cluster>>> {
    let n = g.nodes.len();
    let mut users = vec![0usize; n];
    for (i, node) in g.nodes.iter().enumerate() {
        if needed[i] {
            for a in &node.args {
                users[a.index()] += 1;
            }
        }
    }
    let mut is_output = vec![false; n];
    for (_, v) in &g.outputs {
        is_output[v.index()] = true;
    }
    let fusable = |i: usize| {
        let node = &g.nodes[i];
        matches!(node.ty.dtype, DType::F64 | DType::F32) && elem(&node.op).is_some()
    };
    let mut roots: Vec<Option<Arc<Cluster>>> = vec![None; n];
    let mut absorbed = vec![false; n];
    for i in (0..n).rev() {
        if !needed[i] || absorbed[i] {
            continue;
        }
        // A sum over adjacent axes of a private elementwise value: the tree is that value's,
        // summed as it is computed.
        let (top, reduce) = match (&g.nodes[i].op, g.nodes[i].args.as_slice()) {
            (Op::ReduceSum { axes, .. }, [x])
                if fusable(x.index())
                    && users[x.index()] == 1
                    && !is_output[x.index()]
                    && !absorbed[x.index()] =>
            {
                match adjacent_axes(axes) {
                    Some(r) => (x.index(), Some(r)),
                    None => continue,
                }
            }
            _ if fusable(i) => (i, None),
            _ => continue,
        };
        let shape = g.nodes[top].ty.shape.clone();
        let mut c = Cluster {
            leaves: Vec::new(),
            kinds: Vec::new(),
            prog: Vec::new(),
            shape: shape.clone(),
            row: None,
            reduce,
            dtype: g.nodes[top].ty.dtype,
        };
        let mut members = Vec::new();
        let mut reads_through = false;
        grow(
            g,
            top,
            &shape,
            &users,
            &is_output,
            &fusable,
            &mut c,
            &mut members,
            &mut reads_through,
        );
        // One op alone gains nothing over its own kernel unless it reads a broadcast
        // through or feeds a sum.
        if c.prog.len() >= 2 || reads_through || reduce.is_some() {
            for m in members {
                if m != i {
                    absorbed[m] = true;
                }
            }
            roots[i] = Some(Arc::new(c));
        }
    }
    roots
}

/// Add node `i` (and the producers it absorbs) to `c`; returns where its value is.
#[allow(clippy::too_many_arguments)]
fn grow(
    g: &Graph,
    i: usize,
    shape: &[Dim],
    users: &[usize],
    is_output: &[bool],
    fusable: &dyn Fn(usize) -> bool,
    c: &mut Cluster,
    members: &mut Vec<usize>,
    reads_through: &mut bool,
) -> Src {
    members.push(i);
    let node = &g.nodes[i];
    let mut args = Vec::with_capacity(node.args.len());
    for a in &node.args {
        let j = a.index();
        let src = g.nodes[j].ty.shape.as_slice() == shape
            && g.nodes[j].ty.dtype == c.dtype
            && users[j] == 1
            && !is_output[j]
            && fusable(j);
        if src {
            args.push(grow(
                g,
                j,
                shape,
                users,
                is_output,
                fusable,
                c,
                members,
                reads_through,
            ));
            continue;
        }
        if let Some((x, w)) = rows_matmul(g, j, shape, c.dtype, users, is_output) {
            let (k, n) = (w.shape[0], w.shape[1]);
            let packed = match &w.data {
                Data::F64(v) => Packed::F64(PackedB::new(v, k, n, false)),
                Data::F32(v) => Packed::F32(PackedB32::new(v, k, n, false)),
                _ => unreachable!("rows_matmul checks the weights' type"),
            };
            members.extend(matmul_nodes(g, j));
            c.row = Some(n);
            let leaf = add_leaf(c, x, LeafKind::Rows(k));
            c.prog.push(Instr {
                op: Elem::RowsMatmul(Arc::new(packed)),
                args: vec![Src::Leaf(leaf)],
            });
            args.push(Src::Tmp(c.prog.len() - 1));
            continue;
        }
        let leaf = match (&g.nodes[j].op, g.nodes[j].args.as_slice()) {
            (Op::Broadcast(_), [x]) => {
                *reads_through = true;
                x.index()
            }
            _ => j,
        };
        args.push(Src::Leaf(add_leaf(c, leaf, LeafKind::Broadcast)));
    }
    c.prog.push(Instr {
        op: elem(&node.op).expect("fusable node"),
        args,
    });
    Src::Tmp(c.prog.len() - 1)
}

fn add_leaf(c: &mut Cluster, node: usize, kind: LeafKind) -> usize {
    let found = (0..c.leaves.len()).find(|&k| c.leaves[k] == node && c.kinds[k] == kind);
    found.unwrap_or_else(|| {
        c.leaves.push(node);
        c.kinds.push(kind);
        c.leaves.len() - 1
    })
}

/// `j` as `x @ W` (`W` a constant `[k, n]` of the cluster's type, `k` small), possibly
/// behind a reshape, of the cluster's shape with `n` as its last axis, and used only here:
/// `(x, W)`.
fn rows_matmul<'g>(
    g: &'g Graph,
    j: usize,
    shape: &[Dim],
    dtype: DType,
    users: &[usize],
    is_output: &[bool],
) -> Option<(usize, &'g Tensor)> {
    let private = |i: usize| users[i] == 1 && !is_output[i];
    if !private(j) || g.nodes[j].ty.shape.as_slice() != shape {
        return None;
    }
    let [.., m] = matmul_nodes(g, j)[..] else {
        return None;
    };
    if !private(m) || g.nodes[m].ty.dtype != dtype {
        return None;
    }
    let [x, w] = g.nodes[m].args[..] else {
        return None;
    };
    let Op::Const(w) = &g.nodes[w.index()].op else {
        return None;
    };
    let last = shape.last()?;
    let fits = w.shape.len() == 2
        && w.dtype() == dtype
        && w.shape[0] <= ROWS_MATMUL_MAX_K
        && last.sym.is_none()
        && last.factor == w.shape[1]
        && w.shape[1] > 0;
    fits.then_some((x.index(), &**w))
}

/// The nodes of `j` read as a matmul: `[j]` when it is one, `[j, m]` when it reshapes one.
fn matmul_nodes(g: &Graph, j: usize) -> Vec<usize> {
    match (&g.nodes[j].op, g.nodes[j].args.as_slice()) {
        (Op::MatMul, _) => vec![j],
        (Op::Reshape(_), [m]) if g.nodes[m.index()].op == Op::MatMul => vec![j, m.index()],
        _ => vec![],
    }
}

/// Elements per tile: the scratch of a tile stays in the first-level caches.
const TILE: usize = 512;

/// A leaf as read by the loop: its data and its strides in the (collapsed) output shape.
struct Leaf<'a, T> {
    data: &'a [T],
    strides: Vec<usize>,
    /// Contiguous over the whole output (tiles are slices of it), or rows of a
    /// `RowsMatmul` (read by the instruction).
    dense: bool,
}

/// Run `c` on its leaves' values, producing its node's value, of `out_shape`.
pub fn run(
    c: &Cluster,
    leaves: &[&Tensor],
    out_shape: &[usize],
    bind: &Bindings,
) -> Result<Tensor, ExecError> {
    match c.dtype {
        DType::F64 => run_t::<f64>(c, leaves, out_shape, bind),
        DType::F32 => run_t::<f32>(c, leaves, out_shape, bind),
        other => Err(ExecError::Type(format!("fused op in {other:?}"))),
    }
}

fn run_t<T: FuseReal>(
    c: &Cluster,
    leaves: &[&Tensor],
    out_shape: &[usize],
    bind: &Bindings,
) -> Result<Tensor, ExecError> {
    let full = bind.shape(&c.shape);
    let n: usize = full.iter().product();
    // A select's condition, as 1 and 0 in `T` (a mask, broadcast: small).
    let masks: Vec<Option<Vec<T>>> = leaves
        .iter()
        .map(|t| match &t.data {
            Data::Bool(b) => Some(
                b.iter()
                    .map(|&v| if v { T::ONE } else { T::default() })
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    let mut raw: Vec<(&[T], Vec<usize>)> = Vec::with_capacity(leaves.len());
    for ((t, kind), mask) in leaves.iter().zip(&c.kinds).zip(&masks) {
        let data = match mask {
            Some(m) => &m[..],
            None => T::slice(&t.data)
                .ok_or_else(|| ExecError::Type(format!("fused op on {:?}", t.dtype())))?,
        };
        let st = match *kind {
            LeafKind::Broadcast => {
                if t.shape.len() > full.len() || broadcast_shape(&t.shape, &full)? != full {
                    return Err(ExecError::Shape(format!(
                        "fused operand {:?} into {full:?}",
                        t.shape
                    )));
                }
                bcast_strides(&t.shape, &full)
            }
            LeafKind::Rows(k) => {
                let rows = n / c.row.unwrap_or(1).max(1);
                if data.len() != rows * k {
                    return Err(ExecError::Shape(format!(
                        "fused matmul of {:?} into {full:?}",
                        t.shape
                    )));
                }
                vec![0; full.len()]
            }
        };
        raw.push((data, st));
    }
    let (shape, strides) = collapse(&full, raw.iter().map(|r| r.1.clone()).collect());
    let dense_st = self::strides(&shape);
    let leaves: Vec<Leaf<T>> = raw
        .iter()
        .zip(strides)
        .zip(&c.kinds)
        .map(|(((data, _), st), kind)| Leaf {
            data,
            dense: *kind != LeafKind::Broadcast || (st == dense_st && data.len() == n),
            strides: st,
        })
        .collect();
    // Tiles of whole rows when a product is fused.
    let tile = match c.row {
        Some(r) => r * (TILE / r).max(1),
        None => TILE,
    };
    let threads = rayon::current_num_threads();
    let data = match c.reduce {
        None => {
            let mut out = vec![T::default(); n];
            let per = if threads > 1 && n >= 1 << 15 {
                n.div_ceil(threads * 8).div_ceil(tile).max(8) * tile
            } else {
                n.max(1)
            };
            out.par_chunks_mut(per).enumerate().for_each(|(b, blk)| {
                let mut scratch = Scratch::new(c, leaves.len(), tile);
                for (t, part) in blk.chunks_mut(tile).enumerate() {
                    run_tile(c, &leaves, &shape, b * per + t * tile, part, &mut scratch);
                }
            });
            out
        }
        Some((a, b)) => {
            let outer: usize = full[..a].iter().product();
            let inner: usize = full[b..].iter().product();
            let mid: usize = full[a..b].iter().product();
            summed(c, &leaves, &shape, (outer, mid, inner), tile)
        }
    };
    let want: usize = out_shape.iter().product();
    if data.len() != want {
        return Err(ExecError::Shape(format!(
            "fused sum of {full:?} into {out_shape:?}"
        )));
    }
    Ok(Tensor {
        shape: out_shape.to_vec(),
        data: T::wrap(data),
    })
}

/// The tree's value `[outer, mid, inner]` summed over `mid`, without storing it: tiles of
/// whole `mid x inner` blocks (or, for large blocks, row-aligned pieces of one), each output
/// adding its inputs in increasing `mid` from zero, as `reduce_sum` does, so the sums are
/// bit-identical. Blocks of `outer` run on the thread pool.
fn summed<T: FuseReal>(
    c: &Cluster,
    leaves: &[Leaf<T>],
    shape: &[usize],
    (outer, mid, inner): (usize, usize, usize),
    tile: usize,
) -> Vec<T> {
    let mut out = vec![T::default(); outer * inner];
    let block = mid * inner;
    if out.is_empty() || block == 0 {
        return out;
    }
    // Blocks per tile (small blocks) and tile length; `tile` is a multiple of the fused
    // products' row, and so is `block` (the row is the last axis, inside every block).
    let (per_tile, len) = if block <= tile {
        let k = (tile / block).max(1);
        (k, k * block)
    } else {
        (1, tile)
    };
    let threads = rayon::current_num_threads();
    let blocks_per_task = if threads > 1 && outer * block >= 1 << 15 {
        outer.div_ceil(threads * 8).div_ceil(per_tile).max(1) * per_tile
    } else {
        outer
    };
    out.par_chunks_mut(blocks_per_task * inner)
        .enumerate()
        .for_each(|(t, oblk)| {
            let mut scratch = Scratch::new(c, leaves.len(), len);
            let mut buf = vec![T::default(); len];
            let first = t * blocks_per_task;
            let count = oblk.len() / inner;
            let (start, end) = (first * block, (first + count) * block);
            let mut f = start;
            while f < end {
                let l = len.min(end - f);
                run_tile(c, leaves, shape, f, &mut buf[..l], &mut scratch);
                // Element f of the value adds into output (f / block) * inner + f % inner,
                // a contiguous piece at a time.
                let (mut o, mut at) = ((f - start) / block, (f - start) % block);
                let mut rest = &buf[..l];
                while !rest.is_empty() {
                    if inner == 1 {
                        // A run of one output's inputs: add them in a register.
                        let take = (block - at).min(rest.len());
                        let acc = &mut oblk[o];
                        *acc = rest[..take].iter().fold(*acc, |a, &v| a + v);
                        rest = &rest[take..];
                        at += take;
                    } else {
                        let q = at % inner;
                        let take = (inner - q).min(rest.len());
                        let row = &mut oblk[o * inner + q..o * inner + q + take];
                        for (a, &v) in row.iter_mut().zip(&rest[..take]) {
                            *a = *a + v;
                        }
                        rest = &rest[take..];
                        at += take;
                    }
                    if at == block {
                        (o, at) = (o + 1, 0);
                    }
                }
                f += l;
            }
        });
    out
}

/// Per-thread buffers: one per non-dense leaf and one per instruction.
struct Scratch<T> {
    leaf: Vec<Vec<T>>,
    tmp: Vec<Vec<T>>,
}

impl<T: Real> Scratch<T> {
    fn new(c: &Cluster, nleaves: usize, tile: usize) -> Scratch<T> {
        Scratch {
            leaf: vec![vec![T::default(); tile]; nleaves],
            tmp: vec![vec![T::default(); tile]; c.prog.len().saturating_sub(1)],
        }
    }
}

fn run_tile<T: FuseReal>(
    c: &Cluster,
    leaves: &[Leaf<T>],
    shape: &[usize],
    start: usize,
    out: &mut [T],
    s: &mut Scratch<T>,
) {
    let len = out.len();
    for (l, buf) in leaves.iter().zip(&mut s.leaf) {
        if !l.dense {
            gather_tile(l, shape, start, &mut buf[..len]);
        }
    }
    let last = c.prog.len() - 1;
    for (k, ins) in c.prog.iter().enumerate() {
        // Instruction k writes tmp[k] (or the output); its operands come before it.
        let (done, rest) = s.tmp.split_at_mut(k.min(last));
        let dst: &mut [T] = if k == last {
            &mut *out
        } else {
            &mut rest[0][..len]
        };
        let read = |src: Src| -> &[T] {
            match src {
                Src::Leaf(j) if leaves[j].dense => &leaves[j].data[start..start + len],
                Src::Leaf(j) => &s.leaf[j][..len],
                Src::Tmp(j) => &done[j][..len],
            }
        };
        if let (Elem::RowsMatmul(w), [Src::Leaf(j)]) = (&ins.op, ins.args.as_slice()) {
            let (LeafKind::Rows(k), Some(n)) = (c.kinds[*j], c.row) else {
                unreachable!("a product reads a rows leaf")
            };
            let (r0, rows) = (start / n, len / n);
            let w = T::packed(w).expect("a product in the cluster's type");
            T::gemm_packed(
                w,
                rows,
                &leaves[*j].data[r0 * k..(r0 + rows) * k],
                k,
                dst,
                n,
                false,
            );
            continue;
        }
        let x = read(ins.args[0]);
        let y = ins.args.get(1).map(|&a| read(a));
        if let (Elem::Select, Some(&z)) = (&ins.op, ins.args.get(2)) {
            select_into(x, y.expect("select's operands"), read(z), dst);
            continue;
        }
        apply(&ins.op, x, y, dst);
    }
}

/// Fill `buf` with the leaf's values at output positions `start..start + buf.len()`.
fn gather_tile<T: Copy>(l: &Leaf<T>, shape: &[usize], start: usize, buf: &mut [T]) {
    let rank = shape.len();
    if rank == 0 {
        buf.fill(l.data[0]);
        return;
    }
    let mut idx = vec![0usize; rank];
    let mut rem = start;
    for d in (0..rank).rev() {
        idx[d] = rem % shape[d];
        rem /= shape[d];
    }
    let mut off: usize = idx.iter().zip(&l.strides).map(|(i, s)| i * s).sum();
    let (ld, ls) = (shape[rank - 1], l.strides[rank - 1]);
    let mut k = 0;
    while k < buf.len() {
        let run = (ld - idx[rank - 1]).min(buf.len() - k);
        if run < 16 {
            // Short rows (a broadcast of a few values along an inner axis): a plain loop,
            // not a call to memcpy or memset per row.
            for (q, v) in buf[k..k + run].iter_mut().enumerate() {
                *v = l.data[off + q * ls];
            }
        } else if ls == 0 {
            buf[k..k + run].fill(l.data[off]);
        } else if ls == 1 {
            buf[k..k + run].copy_from_slice(&l.data[off..off + run]);
        } else {
            for (q, v) in buf[k..k + run].iter_mut().enumerate() {
                *v = l.data[off + q * ls];
            }
        }
        k += run;
        idx[rank - 1] += run;
        off += run * ls;
        // A whole row of a leaf broadcast along the next axis out (a `[.., 1, d]` read as
        // `[.., n, d]`): the rows after it in the tile are copies of it, made by doubling
        // copies within the tile instead of row by row.
        if rank >= 2 && l.strides[rank - 2] == 0 && idx[rank - 1] == ld && run == ld {
            let reps = (shape[rank - 2] - idx[rank - 2] - 1).min((buf.len() - k) / ld);
            if reps > 0 {
                let row = k - ld;
                let mut have = ld;
                let want = ld * (reps + 1);
                while have < want {
                    let n = have.min(want - have);
                    buf.copy_within(row..row + n, row + have);
                    have += n;
                }
                k += reps * ld;
                idx[rank - 2] += reps;
            }
        }
        // Carry into the outer axes.
        let mut d = rank - 1;
        while idx[d] == shape[d] && d > 0 {
            off -= shape[d] * l.strides[d];
            idx[d] = 0;
            d -= 1;
            idx[d] += 1;
            off += l.strides[d];
        }
    }
}

/// One instruction over a tile: `o = op(x[, y])`.
fn apply<T: FuseReal>(op: &Elem, x: &[T], y: Option<&[T]>, o: &mut [T]) {
    let y = || y.expect("binary operand");
    match *op {
        Elem::Binary(b) => binary_into(b, x, y(), o),
        Elem::Unary(u @ (Unary::Neg | Unary::Sqrt | Unary::Recip)) => unary_into(u, x, o),
        Elem::Unary(u) => T::unary(u, x, o),
        Elem::Act(f) => T::act(f, x, o),
        Elem::ActVjp(f) => T::act_vjp(f, x, y(), o),
        Elem::Select | Elem::RowsMatmul(_) => unreachable!("run_tile runs these"),
    }
}

simd_fn! {
/// `o = x (op) y` elementwise, one vectorized loop per op (with AVX2 where the CPU has it:
/// the tiles are in L1, so the width of the loop is its speed). Each is one IEEE operation,
/// so every width gives the same bits.
fn binary_into<T: Real>(b: Binary, x: &[T], y: &[T], o: &mut [T]) {
    let n = o.len();
    let (x, y) = (&x[..n], &y[..n]);
    match b {
        Binary::Add => (0..n).for_each(|i| o[i] = x[i] + y[i]),
        Binary::Sub => (0..n).for_each(|i| o[i] = x[i] - y[i]),
        Binary::Mul => (0..n).for_each(|i| o[i] = x[i] * y[i]),
        Binary::Div => (0..n).for_each(|i| o[i] = x[i] / y[i]),
        Binary::Max => (0..n).for_each(|i| o[i] = if x[i] >= y[i] { x[i] } else { y[i] }),
        Binary::Min => (0..n).for_each(|i| o[i] = if x[i] <= y[i] { x[i] } else { y[i] }),
        Binary::And | Binary::Or => unreachable!("not fused"),
    }
}
}

simd_fn! {
/// `o = c ? a : b` elementwise, the condition read as nonzero (one of `a`'s or `b`'s own
/// values, as `kernels::select` picks them).
fn select_into<T: Real>(c: &[T], a: &[T], b: &[T], o: &mut [T]) {
    let n = o.len();
    let (c, a, b) = (&c[..n], &a[..n], &b[..n]);
    (0..n).for_each(|i| o[i] = if c[i] != T::default() { a[i] } else { b[i] });
}
}

simd_fn! {
/// The unary ops that are one IEEE operation (`-x`, `sqrt`, `1 / x`) as vectorized loops:
/// the same bits as `kernels::unary_fn`'s, without a call per element.
fn unary_into<T: Real>(u: Unary, x: &[T], o: &mut [T]) {
    let n = o.len();
    let x = &x[..n];
    match u {
        Unary::Neg => (0..n).for_each(|i| o[i] = -x[i]),
        Unary::Sqrt => (0..n).for_each(|i| o[i] = x[i].sqrt()),
        Unary::Recip => (0..n).for_each(|i| o[i] = T::ONE / x[i]),
        _ => unreachable!("only the one-operation unary ops"),
    }
}
}

/// A constant matrix packed for the fused products, in the cluster's type.
enum Packed {
    F64(PackedB),
    F32(PackedB32),
}

/// What the fused loop needs of an element type beyond `Real`: its packed products and its
/// elementwise functions, each computing exactly what the op's own kernel computes for that
/// type (`kernels::unary`, `act`, `act_vjp`), so fusion changes no bits in either type.
trait FuseReal: Real {
    fn packed(p: &Packed) -> Option<&Self::Packed>;
    fn unary(u: Unary, x: &[Self], o: &mut [Self]);
    fn act(f: ActFn, x: &[Self], o: &mut [Self]);
    fn act_vjp(f: ActFn, x: &[Self], g: &[Self], o: &mut [Self]);
}

impl FuseReal for f64 {
    fn packed(p: &Packed) -> Option<&PackedB> {
        match p {
            Packed::F64(b) => Some(b),
            Packed::F32(_) => None,
        }
    }
    fn unary(u: Unary, x: &[f64], o: &mut [f64]) {
        if u == Unary::Tanh {
            return fm::map_into(x, o, fm::tanh);
        }
        let f = unary_fn::<f64>(u);
        o.iter_mut().zip(x).for_each(|(v, &p)| *v = f(p));
    }
    fn act(f: ActFn, x: &[f64], o: &mut [f64]) {
        match f {
            ActFn::Silu => fm::map_into(x, o, fm::silu),
            ActFn::Silut(thr) => {
                let (slope, konst) = silut_consts(thr);
                fm::silut_into(x, o, thr, slope, konst)
            }
        }
    }
    fn act_vjp(f: ActFn, x: &[f64], g: &[f64], o: &mut [f64]) {
        match f {
            ActFn::Silu => fm::map2_into(x, g, o, |p, g| g * fm::silu_grad(p)),
            ActFn::Silut(thr) => {
                let (slope, _) = silut_consts(thr);
                fm::silut_vjp_into(x, g, o, thr, slope)
            }
        }
    }
}

/// float32: the float32 kernels' own functions (libm's float32 ones for the unary ops, the
/// activations through float64 rounded once).
impl FuseReal for f32 {
    fn packed(p: &Packed) -> Option<&PackedB32> {
        match p {
            Packed::F32(b) => Some(b),
            Packed::F64(_) => None,
        }
    }
    fn unary(u: Unary, x: &[f32], o: &mut [f32]) {
        let f = unary_fn::<f32>(u);
        o.iter_mut().zip(x).for_each(|(v, &p)| *v = f(p));
    }
    fn act(f: ActFn, x: &[f32], o: &mut [f32]) {
        o.copy_from_slice(&run32(f, x));
    }
    fn act_vjp(f: ActFn, x: &[f32], g: &[f32], o: &mut [f32]) {
        o.copy_from_slice(&run32_vjp(f, x, g));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::Executor;
    use dpc_compiler::graph::{Bindings, TensorType, ValueId};

    fn ty(s: &[usize]) -> TensorType {
        TensorType::new(DType::F64, s.iter().map(|&d| Dim::fixed(d)).collect())
    }

    /// `x [rows.., k]` reshaped to `[prod rows, k]`, times `w`, reshaped to `[rows.., n]`:
    /// a split linear layer as the builders write it.
    fn rows_times(g: &mut Graph, x: ValueId, w: Tensor) -> ValueId {
        let xs = g.shape(x).to_vec();
        let (lead, k) = xs.split_at(xs.len() - 1);
        let rows: usize = lead.iter().map(|d| d.factor).product();
        let n = w.shape[1];
        let w = g.constant(w);
        let x2 = g.reshape(x, vec![Dim::fixed(rows), k[0]]).unwrap();
        let y = g.matmul(x2, w).unwrap();
        let mut dims = lead.to_vec();
        dims.push(Dim::fixed(n));
        g.reshape(y, dims).unwrap()
    }

    /// Run `g` fused (expecting `clusters` clusters, if given) and node by node: the same
    /// bits.
    fn fused_equals_unfused(g: Graph, inputs: Vec<Tensor>, clusters: Option<usize>, what: &str) {
        let fused = Executor::new(g.clone());
        if let Some(c) = clusters {
            assert_eq!(fused.fused_clusters(), c, "{what}: clusters");
        }
        let got = fused.run(inputs.clone(), Bindings::default()).unwrap();
        let want = Executor::unfused(g)
            .run(inputs, Bindings::default())
            .unwrap();
        assert_eq!(got, want, "{what}");
    }

    /// A DPA-3-like chain: four broadcast operands added, activated, scaled; run fused and
    /// node by node, bit for bit.
    #[test]
    fn a_fused_chain_equals_the_node_by_node_run() {
        let mut g = Graph::new();
        let ang = g.input("ang", ty(&[5, 3, 3, 7]));
        let nd = g.input("nd", ty(&[5, 1, 1, 7]));
        let ek = g.input("ek", ty(&[5, 1, 3, 7]));
        let ej = g.input("ej", ty(&[5, 3, 1, 7]));
        let b = g.input("b", ty(&[7]));
        let y = g.add(ang, nd).unwrap();
        let y = g.add(y, ek).unwrap();
        let y = g.add(y, ej).unwrap();
        let y = g.add(y, b).unwrap();
        let a = g.push(Op::Act(ActFn::Silut(0.7)), &[y]).unwrap();
        let th = g.push(Op::Unary(Unary::Tanh), &[a]).unwrap();
        let z = g
            .push(
                Op::Broadcast(vec![5, 3, 3, 7].into_iter().map(Dim::fixed).collect()),
                &[ek],
            )
            .unwrap();
        let out = g.mul(th, z).unwrap();
        g.set_output("out", out);
        g.set_output("y", y);
        let vals = |n: usize, k: f64| -> Vec<f64> {
            (0..n).map(|i| ((i as f64) * k).sin() * 2.0).collect()
        };
        let inputs = vec![
            Tensor::f64(vec![5, 3, 3, 7], vals(315, 0.37)),
            Tensor::f64(vec![5, 1, 1, 7], vals(35, 1.1)),
            Tensor::f64(vec![5, 1, 3, 7], vals(105, 0.91)),
            Tensor::f64(vec![5, 3, 1, 7], vals(105, 0.53)),
            Tensor::f64(vec![7], vals(7, 2.9)),
        ];
        assert!(
            Executor::new(g.clone()).fused_clusters() >= 2,
            "the chains were fused"
        );
        fused_equals_unfused(g, inputs, None, "chain");
    }

    /// Every one-operation elementwise op (the vectorized loops), on short broadcast rows
    /// and signed zeros, bit for bit as node by node: `-0.0` and `0.0` differ in `1 / x`.
    #[test]
    fn the_vectorized_ops_keep_every_bit() {
        let mut g = Graph::new();
        let x = g.input("x", ty(&[4, 3, 5, 2]));
        let y = g.input("y", ty(&[4, 1, 5, 2]));
        let a = g.push(Op::Unary(Unary::Neg), &[x]).unwrap();
        let b = g.push(Op::Unary(Unary::Recip), &[a]).unwrap();
        let yy = g.mul(y, y).unwrap();
        let c = g.push(Op::Unary(Unary::Sqrt), &[yy]).unwrap();
        let d = g.maximum(b, c).unwrap();
        let e = g.push(Op::Binary(Binary::Min), &[d, x]).unwrap();
        let f = g.sub(e, y).unwrap();
        let h = g.div(f, c).unwrap();
        let o1 = g.add(h, b).unwrap();
        // A select on a broadcast mask, fused too.
        let m = g.input(
            "m",
            TensorType::new(
                DType::Bool,
                vec![Dim::fixed(4), Dim::fixed(3), Dim::ONE, Dim::fixed(2)],
            ),
        );
        let s1 = g.select(m, o1, x).unwrap();
        let out = g.mul(s1, y).unwrap();
        g.set_output("out", out);
        let vals = |n: usize, k: f64| -> Vec<f64> {
            (0..n)
                .map(|i| match i % 7 {
                    0 => 0.0,
                    3 => -0.0,
                    _ => ((i as f64) * k).sin() * 2.0,
                })
                .collect()
        };
        let inputs = vec![
            Tensor::f64(vec![4, 3, 5, 2], vals(120, 0.37)),
            Tensor::f64(vec![4, 1, 5, 2], vals(40, 1.1)),
            Tensor {
                shape: vec![4, 3, 1, 2],
                data: Data::Bool((0..24).map(|i| i % 3 != 1).collect()),
            },
        ];
        let fused = Executor::new(g.clone());
        assert!(fused.fused_clusters() >= 2, "the chains were fused");
        let clusters = plan(&g, &vec![true; g.nodes.len()]);
        let selects = clusters
            .iter()
            .flatten()
            .flat_map(|c| &c.prog)
            .filter(|i| matches!(i.op, Elem::Select))
            .count();
        assert_eq!(selects, 1, "the select was fused");
        let got = fused.run(inputs.clone(), Bindings::default()).unwrap();
        let want = Executor::unfused(g)
            .run(inputs, Bindings::default())
            .unwrap();
        let bits =
            |t: &Tensor| -> Vec<u64> { t.as_f64().unwrap().iter().map(|v| v.to_bits()).collect() };
        assert_eq!(bits(&got[0]), bits(&want[0]));
        assert!(got[0].as_f64().unwrap().iter().any(|v| v.is_infinite()));
    }

    /// A split linear layer: `reshape(x [rows, k] @ W) + broadcast rows`, activated, with
    /// the product computed inside the cluster, bit for bit as the matmul kernel does.
    #[test]
    fn a_fused_product_equals_the_matmul_kernel() {
        let (b, a, k, n) = (80, 9, 5, 7); // over the parallel threshold
        let mut g = Graph::new();
        let x = g.input("x", ty(&[b, a, a, k]));
        let e = g.input("e", ty(&[b, 1, a, n]));
        let w = Tensor::f64(
            vec![k, n],
            (0..k * n).map(|i| (i as f64 * 0.77).cos()).collect(),
        );
        let y = rows_times(&mut g, x, w);
        let y = g.add(y, e).unwrap();
        let y = g.push(Op::Act(ActFn::Silu), &[y]).unwrap();
        g.set_output("y", y);
        let xs = Tensor::f64(
            vec![b, a, a, k],
            (0..b * a * a * k)
                .map(|i| ((i * 7919) % 1000) as f64 * 4e-3 - 2.0)
                .collect(),
        );
        let es = Tensor::f64(
            vec![b, 1, a, n],
            (0..b * a * n).map(|i| (i as f64 * 0.13).sin()).collect(),
        );
        fused_equals_unfused(g, vec![xs, es], Some(1), "product");
    }

    /// Sums over leading, middle and trailing axes of fused values, small and large blocks,
    /// with and without a fused product: bit for bit as `reduce_sum` of the stored value.
    #[test]
    fn fused_sums_equal_the_reduce_kernel() {
        let (b, a, k, n) = (70, 9, 5, 8);
        for (axes, keep) in [
            (vec![2], false),
            (vec![3], true),
            (vec![1, 2], true),
            (vec![0], false),
            (vec![0, 1, 2, 3], false),
        ] {
            let mut g = Graph::new();
            let x = g.input("x", ty(&[b, a, a, k]));
            let e = g.input("e", ty(&[b, a, 1, 1]));
            let w = Tensor::f64(
                vec![k, n],
                (0..k * n).map(|i| (i as f64 * 0.31).sin()).collect(),
            );
            let y = rows_times(&mut g, x, w);
            let y = g.push(Op::Act(ActFn::Silut(3.0)), &[y]).unwrap();
            let y = g.mul(y, e).unwrap();
            let s = g.sum(y, &axes, keep).unwrap();
            g.set_output("s", s);
            let xs = Tensor::f64(
                vec![b, a, a, k],
                (0..b * a * a * k)
                    .map(|i| ((i * 7919) % 1000) as f64 * 5e-3 - 2.0)
                    .collect(),
            );
            let es = Tensor::f64(
                vec![b, a, 1, 1],
                (0..b * a).map(|i| (i as f64 * 0.7).cos()).collect(),
            );
            fused_equals_unfused(g, vec![xs, es], Some(1), &format!("sum over {axes:?}"));
        }
    }

    /// The same three kinds of cluster in float32 (libm's float32 tanh, activations through
    /// float64, products with the float32 packed GEMM): bit for bit as the float32 kernels.
    #[test]
    fn float32_clusters_equal_the_float32_kernels() {
        let t32 =
            |s: &[usize]| TensorType::new(DType::F32, s.iter().map(|&d| Dim::fixed(d)).collect());
        let v32 = |n: usize, k: f64| -> Vec<f32> {
            (0..n)
                .map(|i| (((i as f64) * k).sin() * 2.0) as f32)
                .collect()
        };
        let (b, a, k, n) = (80, 9, 5, 7);
        let mut g = Graph::new();
        let x = g.input("x", t32(&[b, a, a, k]));
        let e = g.input("e", t32(&[b, 1, a, n]));
        let w = Tensor::f32(vec![k, n], v32(k * n, 0.77));
        let y = rows_times(&mut g, x, w);
        let y = g.add(y, e).unwrap();
        let y = g.push(Op::Act(ActFn::Silut(0.7)), &[y]).unwrap();
        let t = g.push(Op::Unary(Unary::Tanh), &[y]).unwrap();
        let z = g.mul(t, e).unwrap();
        let v = g.push(Op::ActVjp(ActFn::Silu), &[z, y]).unwrap();
        let s = g.sum(v, &[1, 2], true).unwrap();
        g.set_output("s", s);
        g.set_output("z", z);
        let inputs = vec![
            Tensor::f32(vec![b, a, a, k], v32(b * a * a * k, 0.37)),
            Tensor::f32(vec![b, 1, a, n], v32(b * a * n, 0.91)),
        ];
        assert!(
            Executor::new(g.clone()).fused_clusters() >= 1,
            "float32 was fused"
        );
        fused_equals_unfused(g, inputs, None, "float32");
    }

    /// Leaves broadcast along the axis next to the last (`[a, 1, 1, d]`, `[a, b, 1, d]`) are
    /// gathered a row and then doubling copies of it; tiles that start and end inside such
    /// runs of copies, rows of 16 and of 5, one thread's share and several: bit for bit
    /// as node by node.
    #[test]
    fn repeated_broadcast_rows_are_gathered_whole() {
        for dims in [[7, 13, 11, 16], [9, 6, 19, 5], [9, 13, 23, 16]] {
            let [a, b, c, d] = dims;
            let mut g = Graph::new();
            let x = g.input("x", ty(&dims));
            let nd = g.input("nd", ty(&[a, 1, 1, d]));
            let ej = g.input("ej", ty(&[a, b, 1, d]));
            let ek = g.input("ek", ty(&[a, 1, c, d]));
            let y = g.add(x, nd).unwrap();
            let y = g.add(y, ej).unwrap();
            let y = g.mul(y, ek).unwrap();
            g.set_output("y", y);
            let vals = |shape: Vec<usize>, k: f64| {
                let n: usize = shape.iter().product();
                Tensor::f64(shape, (0..n).map(|i| ((i as f64) * k).sin()).collect())
            };
            let inputs = vec![
                vals(dims.to_vec(), 0.37),
                vals(vec![a, 1, 1, d], 1.1),
                vals(vec![a, b, 1, d], 0.53),
                vals(vec![a, 1, c, d], 0.91),
            ];
            fused_equals_unfused(g, inputs, Some(1), &format!("{dims:?}"));
        }
    }

    #[test]
    fn tiles_cross_rows_and_threads() {
        // An output larger than a tile and than the parallel threshold, with a leaf whose
        // broadcast axis is inner.
        let (n, m) = (1000, 67);
        let mut g = Graph::new();
        let x = g.input("x", ty(&[n, m]));
        let c = g.input("c", ty(&[n, 1]));
        let y = g.add(x, c).unwrap();
        let y = g.push(Op::Act(ActFn::Silu), &[y]).unwrap();
        g.set_output("y", y);
        let xs = Tensor::f64(
            vec![n, m],
            (0..n * m).map(|i| (i % 97) as f64 * 0.1 - 4.0).collect(),
        );
        let cs = Tensor::f64(vec![n, 1], (0..n).map(|i| i as f64 * 1e-3).collect());
        fused_equals_unfused(g, vec![xs, cs], Some(1), "tiles");
    }
}
