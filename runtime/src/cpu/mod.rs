//! The CPU executor: runs a graph node by node with the reference kernels, freeing each
//! value after its last use.

#[macro_use]
mod simd;
mod attention;
mod axis_product;
mod dense;
mod embed;
mod embed_table;
mod env;
pub mod fastmath;
mod fuse;
pub mod gemm;
mod kernels;
mod net;
mod real;
mod reduce;

use std::fmt;
use std::sync::Arc;

use dpc_compiler::graph::{Bindings, Dim, Graph, Op, Tensor};

pub use kernels::strides;

/// Why a graph could not run on the given inputs.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecError {
    Input(String),
    Shape(String),
    Type(String),
    Index(String),
}

impl fmt::Display for ExecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecError::Input(m) => write!(f, "bad graph input: {m}"),
            ExecError::Shape(m) => write!(f, "shape error: {m}"),
            ExecError::Type(m) => write!(f, "type error: {m}"),
            ExecError::Index(m) => write!(f, "index error: {m}"),
        }
    }
}

impl std::error::Error for ExecError {}

/// Where one or more runs spent their time.
#[derive(Debug, Default, Clone)]
pub struct Profile {
    /// Seconds and node count per op kind.
    pub kinds: std::collections::BTreeMap<&'static str, (f64, usize)>,
    /// Seconds per node: `(node index, op kind, output shape, seconds)`, in run order.
    pub nodes: Vec<(usize, &'static str, Vec<usize>, f64)>,
}

impl Profile {
    pub fn new() -> Profile {
        Profile::default()
    }

    fn add(&mut self, node: usize, kind: &'static str, shape: &[usize], secs: f64) {
        let e = self.kinds.entry(kind).or_default();
        e.0 += secs;
        e.1 += 1;
        self.nodes.push((node, kind, shape.to_vec(), secs));
    }

    /// Total seconds in graph ops.
    pub fn total(&self) -> f64 {
        self.kinds.values().map(|v| v.0).sum()
    }

    /// One run's profile from profiles of the same runs repeated: each node's least time
    /// (a shared host moves single nodes by a factor of two from run to run).
    pub fn least(runs: &[Profile]) -> Profile {
        let mut out = Profile::new();
        let Some((first, rest)) = runs.split_first() else {
            return out;
        };
        for (i, &(node, kind, ref shape, secs)) in first.nodes.iter().enumerate() {
            let least = rest
                .iter()
                .filter_map(|p| p.nodes.get(i).map(|n| n.3))
                .fold(secs, f64::min);
            out.add(node, kind, shape, least);
        }
        out
    }
}

/// A graph prepared for repeated runs: which nodes the outputs need, which run fused
/// (`fuse`), and when each value can be dropped.
pub struct Executor {
    graph: Graph,
    needed: Vec<bool>,
    last_use: Vec<usize>,
    /// The elementwise cluster each node roots, if any.
    fused: Vec<Option<Arc<fuse::Cluster>>>,
    /// For an `embed_contract_vjp`, the `embed_contract` of the same network, environment
    /// and types that keeps its activations for it (see `kept_for`).
    kept_from: Vec<Option<usize>>,
    /// For an `embed_contract` that keeps its activations, the last VJP to read them.
    kept_until: Vec<Option<usize>>,
    /// The fused networks' weights, packed for the GEMMs.
    packs: net::Packs,
    /// Each node's arguments as it runs (`narrowed` and `fold_transposes` replace some).
    args: Vec<Vec<usize>>,
    /// For a `matmul`, which operands it reads as the transpose of its (new) argument.
    transposed: Vec<[bool; 2]>,
    /// For an embedding op, the slots (axis 1) of its new first argument it reads.
    windows: Vec<Option<(usize, usize)>>,
}

/// Let each embedding op (forward and VJP) read a slice of `rr` along its slot axis
/// straight from the slice's input (`embed::Slots`), instead of from a copy: se_e2_a
/// slices its environment matrix by neighbour type, and those copies were a tenth of its
/// time. The slice then runs only if something else reads it.
fn fold_slices(graph: &Graph, args: &mut [Vec<usize>]) -> Vec<Option<(usize, usize)>> {
    let mut windows = vec![None; graph.nodes.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        // A factor's or shift's index is by slot too; those ops read `rr` whole.
        if !matches!(&node.op, Op::EmbedContract(e) | Op::EmbedContractVjp(e) if e.factor.is_none() && !e.shift)
        {
            continue;
        }
        let src = &graph.nodes[args[i][0]];
        if let (
            Op::Slice {
                axis: 1,
                start,
                end,
            },
            [from],
        ) = (&src.op, src.args.as_slice())
        {
            let fixed = |d: &Dim| d.sym.is_none().then_some(d.factor);
            if let (Some(a), Some(b), 3) = (fixed(start), fixed(end), src.ty.rank()) {
                args[i][0] = from.index();
                windows[i] = Some((a, b));
            }
        }
    }
    windows
}

/// Let each `matmul` read an operand that is a transpose of its last two axes straight
/// from the transpose's input, through strides (`kernels::matmul_t`), instead of from a
/// transposed copy; the transpose then runs only if something else reads it.
fn fold_transposes(graph: &Graph, args: &mut [Vec<usize>]) -> Vec<[bool; 2]> {
    let mut flags = vec![[false; 2]; graph.nodes.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        if node.op != Op::MatMul {
            continue;
        }
        // A transposed left operand times one unbatched matrix stays a copy: the copy's rows
        // then stream through the packed kernel (`rows_times_matrix`).
        let b_batched = graph.nodes[args[i][1]].ty.rank() > 2;
        for slot in (0..2).filter(|&s| s == 1 || b_batched) {
            // Through a chain of such transposes: each one flips the operand once more.
            while let Op::Transpose(perm) = &graph.nodes[args[i][slot]].op {
                if !kernels::swaps_last_two(perm) {
                    break;
                }
                args[i][slot] = graph.nodes[args[i][slot]].args[0].index();
                flags[i][slot] = !flags[i][slot];
            }
        }
    }
    flags
}

/// The argument lists, with the cotangent of a `dense_vjp` that only reads the output
/// column replaced by that column: autodiff hands it the `[n, 1]` energy cotangent padded
/// with zeros to the forward op's `[n, 1 + n_in]` (a slice's VJP), a pass over megabytes
/// per chunk that the kernel then ignores.
fn narrowed(graph: &Graph) -> Vec<Vec<usize>> {
    graph
        .nodes
        .iter()
        .map(|node| {
            let mut args: Vec<usize> = node.args.iter().map(|a| a.index()).collect();
            if let (Op::DenseVjp(d), Some(&gy)) = (&node.op, args.get(1)) {
                let pad = &graph.nodes[gy];
                if let (
                    true,
                    Op::Pad {
                        axis: 1, before, ..
                    },
                    [inner],
                ) = (d.grad, &pad.op, pad.args.as_slice())
                {
                    let width = graph.nodes[inner.index()].ty.shape.get(1).copied();
                    if *before == Dim::fixed(0) && width == Some(Dim::ONE) {
                        args[1] = inner.index();
                    }
                }
            }
            args
        })
        .collect()
}

/// Pair each `embed_contract_vjp` with the `embed_contract` it differentiates (same
/// network, same `rr` and types arguments): the forward op then keeps its activations and
/// the VJPs (one per differentiated output) do not re-run the network.
fn kept_for(graph: &Graph, needed: &[bool]) -> Vec<Option<usize>> {
    let mut pair = vec![None; graph.nodes.len()];
    for (j, node) in graph.nodes.iter().enumerate() {
        let Op::EmbedContractVjp(e) = &node.op else {
            continue;
        };
        if !needed[j] {
            continue;
        }
        // The same `rr`, factor and types: every argument but the cotangent.
        let (rr, rest) = (node.args[0], &node.args[2..]);
        pair[j] = graph.nodes[..j].iter().enumerate().position(|(i, f)| {
            needed[i]
                && matches!(&f.op, Op::EmbedContract(fe) if fe == e)
                && f.args[0] == rr
                && f.args[1..] == *rest
        });
    }
    pair
}

impl Executor {
    /// Prepare `graph`, with chains of elementwise ops fused.
    pub fn new(graph: Graph) -> Executor {
        Executor::prepare(graph, true)
    }

    /// Prepare `graph` to run node by node (the reference the fused run is tested against).
    pub fn unfused(graph: Graph) -> Executor {
        Executor::prepare(graph, false)
    }

    fn prepare(graph: Graph, fuse: bool) -> Executor {
        let n = graph.nodes.len();
        let needed_by = |args: &dyn Fn(usize) -> Vec<usize>| {
            let mut needed = vec![false; n];
            for (_, v) in &graph.outputs {
                needed[v.index()] = true;
            }
            for i in (0..n).rev() {
                if needed[i] {
                    for a in args(i) {
                        needed[a] = true;
                    }
                }
            }
            needed
        };
        let mut run_args = narrowed(&graph);
        let transposed = fold_transposes(&graph, &mut run_args);
        let windows = fold_slices(&graph, &mut run_args);
        let node_args = |i: usize| run_args[i].clone();
        let fused = if fuse {
            fuse::plan(&graph, &needed_by(&node_args))
        } else {
            vec![None; n]
        };
        // A fused node reads its cluster's leaves instead of its own arguments; absorbed
        // nodes are needed no more.
        let args = |i: usize| -> Vec<usize> {
            match &fused[i] {
                Some(c) => c.leaves.clone(),
                None => node_args(i),
            }
        };
        let needed = needed_by(&args);
        let mut last_use = vec![0usize; n];
        for (i, _) in needed.iter().enumerate().filter(|(_, &n)| n) {
            for a in args(i) {
                last_use[a] = i;
            }
        }
        for (_, v) in &graph.outputs {
            last_use[v.index()] = usize::MAX;
        }
        let kept_from = kept_for(&graph, &needed);
        let mut kept_until = vec![None; n];
        for (j, i) in kept_from.iter().enumerate() {
            if let Some(i) = i {
                kept_until[*i] = Some(j);
            }
        }
        let mut packs = net::Packs::default();
        for (node, _) in graph.nodes.iter().zip(&needed).filter(|(_, &n)| n) {
            match &node.op {
                Op::EmbedContract(e) | Op::EmbedContractVjp(e) => packs.add(&e.net, false, None),
                Op::Dense(d) => {
                    let fold = dense::fold_of(d);
                    d.nets.iter().for_each(|(_, n)| packs.add(n, d.grad, fold))
                }
                Op::DenseVjp(d) => d.nets.iter().for_each(|(_, n)| packs.add(n, !d.grad, None)),
                Op::Attention(a) | Op::AttentionVjp(a) => {
                    let backward = matches!(node.op, Op::AttentionVjp(_));
                    packs.add(&a.in_proj, backward, None);
                    packs.add(&a.out_proj, backward, None);
                }
                _ => {}
            }
        }
        Executor {
            graph,
            needed,
            last_use,
            fused,
            kept_from,
            kept_until,
            packs,
            args: run_args,
            transposed,
            windows,
        }
    }

    /// How many fused clusters the plan has.
    pub fn fused_clusters(&self) -> usize {
        self.fused
            .iter()
            .zip(&self.needed)
            .filter(|(c, &n)| n && c.is_some())
            .count()
    }

    /// How many `dense_vjp`s read the output column's cotangent without its zero padding.
    pub fn narrowed_cotangents(&self) -> usize {
        self.args
            .iter()
            .zip(&self.graph.nodes)
            .zip(&self.needed)
            .filter(|((a, n), &needed)| {
                needed
                    && matches!(n.op, Op::DenseVjp(_))
                    && a.iter().copied().ne(n.args.iter().map(|v| v.index()))
            })
            .count()
    }

    /// How many `embed_contract_vjp`s start from activations their forward op kept.
    pub fn kept_pairs(&self) -> usize {
        self.kept_from.iter().flatten().count()
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Run on `inputs` (in the graph's input order) with the symbol sizes `bind`.
    /// Returns the outputs in the graph's output order.
    pub fn run(&self, inputs: Vec<Tensor>, bind: Bindings) -> Result<Vec<Tensor>, ExecError> {
        self.run_with(inputs, bind, None)
    }

    /// `run`, also adding the time spent in each op kind to `profile`.
    pub fn run_profiled(
        &self,
        inputs: Vec<Tensor>,
        bind: Bindings,
        profile: &mut Profile,
    ) -> Result<Vec<Tensor>, ExecError> {
        self.run_with(inputs, bind, Some(profile))
    }

    fn run_with(
        &self,
        inputs: Vec<Tensor>,
        bind: Bindings,
        mut profile: Option<&mut Profile>,
    ) -> Result<Vec<Tensor>, ExecError> {
        let g = &self.graph;
        if inputs.len() != g.inputs.len() {
            return Err(ExecError::Input(format!(
                "{} inputs given, the graph takes {}",
                inputs.len(),
                g.inputs.len()
            )));
        }
        for (t, spec) in inputs.iter().zip(&g.inputs) {
            let want = bind.shape(&spec.ty.shape);
            if t.shape != want || t.dtype() != spec.ty.dtype {
                return Err(ExecError::Input(format!(
                    "`{}` is {:?}{:?}, expected {:?}{:?}",
                    spec.name,
                    t.dtype(),
                    t.shape,
                    spec.ty.dtype,
                    want
                )));
            }
        }
        let mut inputs: Vec<Option<Tensor>> = inputs.into_iter().map(Some).collect();
        let mut vals: Vec<Option<Tensor>> = vec![None; g.nodes.len()];
        // What forward ops keep for their VJPs, by forward node.
        let mut kept: Vec<Option<embed::Kept>> = (0..g.nodes.len()).map(|_| None).collect();
        for (i, node) in g.nodes.iter().enumerate() {
            if !self.needed[i] {
                continue;
            }
            let started = profile.is_some().then(std::time::Instant::now);
            // A reshape of a value used for the last time moves its data instead of copying.
            if let (Op::Reshape(to), [a]) = (&node.op, node.args.as_slice()) {
                if self.last_use[a.index()] == i {
                    let mut t = vals[a.index()]
                        .take()
                        .expect("argument computed before use");
                    let shape = bind.shape(to);
                    if shape.iter().product::<usize>() != t.len() {
                        return Err(ExecError::Shape(format!(
                            "reshape {:?} to {shape:?}",
                            t.shape
                        )));
                    }
                    t.shape = shape;
                    if let (Some(p), Some(t0)) = (profile.as_deref_mut(), started) {
                        p.add(i, node.op.name(), &t.shape, t0.elapsed().as_secs_f64());
                    }
                    vals[i] = Some(t);
                    continue;
                }
            }
            if let Some(c) = &self.fused[i] {
                let out = {
                    let leaves: Vec<&Tensor> = c
                        .leaves
                        .iter()
                        .map(|&l| vals[l].as_ref().expect("leaf computed before use"))
                        .collect();
                    fuse::run(c, &leaves, &bind.shape(&node.ty.shape), &bind)?
                };
                if let (Some(p), Some(t)) = (profile.as_deref_mut(), started) {
                    p.add(i, "fused", &out.shape, t.elapsed().as_secs_f64());
                }
                vals[i] = Some(out);
                for &l in &c.leaves {
                    if self.last_use[l] == i {
                        vals[l] = None;
                    }
                }
                continue;
            }
            let out = {
                let args: Vec<&Tensor> = self.args[i]
                    .iter()
                    .map(|&a| vals[a].as_ref().expect("argument computed before use"))
                    .collect();
                match &node.op {
                    Op::EmbedContract(e) => {
                        let (out, k) = embed::embed_contract(
                            e,
                            args[0],
                            self.windows[i],
                            embed::Extra::of(e, &args[1..]),
                            self.kept_until[i].is_some(),
                            &self.packs,
                        )?;
                        kept[i] = k;
                        out
                    }
                    Op::EmbedContractVjp(e) => {
                        let f = self.kept_from[i];
                        let out = embed::embed_contract_vjp(
                            e,
                            args[0],
                            self.windows[i],
                            args[1],
                            embed::Extra::of(e, &args[2..]),
                            f.and_then(|f| kept[f].as_ref()),
                            &self.packs,
                        )?;
                        if let Some(f) = f.filter(|&f| self.kept_until[f] == Some(i)) {
                            kept[f] = None;
                        }
                        out
                    }
                    Op::MatMul if self.transposed[i] != [false; 2] => {
                        kernels::matmul_t(args[0], args[1], self.transposed[i])?
                    }
                    op => eval(op, &args, &mut inputs, bind, &self.packs)?,
                }
            };
            if let (Some(p), Some(t)) = (profile.as_deref_mut(), started) {
                p.add(i, node.op.name(), &out.shape, t.elapsed().as_secs_f64());
            }
            let want = bind.shape(&node.ty.shape);
            if out.shape != want {
                return Err(ExecError::Shape(format!(
                    "%{i} ({}) produced {:?}, typed {want:?}",
                    node.op.name(),
                    out.shape
                )));
            }
            vals[i] = Some(out);
            for &a in &self.args[i] {
                if self.last_use[a] == i {
                    vals[a] = None;
                }
            }
        }
        Ok(g.outputs
            .iter()
            .map(|(_, v)| vals[v.index()].clone().expect("output computed"))
            .collect())
    }

    /// The position of output `name`.
    pub fn output_index(&self, name: &str) -> Option<usize> {
        self.graph.outputs.iter().position(|(n, _)| n == name)
    }
}

fn eval(
    op: &Op,
    a: &[&Tensor],
    inputs: &mut [Option<Tensor>],
    bind: Bindings,
    packs: &net::Packs,
) -> Result<Tensor, ExecError> {
    use kernels as k;
    Ok(match op {
        Op::Input(n) => inputs[*n]
            .take()
            .ok_or_else(|| ExecError::Input(format!("input {n} used twice")))?,
        Op::Const(t) => (**t).clone(),
        Op::Unary(u) => k::unary(*u, a[0])?,
        Op::Binary(b) => k::binary(*b, a[0], a[1])?,
        Op::Compare(c) => k::compare(*c, a[0], a[1])?,
        Op::Select => k::select(a[0], a[1], a[2])?,
        Op::Cast(d) => k::cast(a[0], *d),
        Op::MatMul => k::matmul(a[0], a[1])?,
        Op::Reshape(s) => {
            let shape = bind.shape(s);
            if shape.iter().product::<usize>() != a[0].len() {
                return Err(ExecError::Shape(format!(
                    "reshape {:?} to {shape:?}",
                    a[0].shape
                )));
            }
            Tensor {
                shape,
                data: a[0].data.clone(),
            }
        }
        Op::Transpose(p) => k::transpose(a[0], p),
        Op::Broadcast(s) => k::broadcast(a[0], &bind.shape(s))?,
        Op::Slice { axis, start, end } => {
            k::slice(a[0], *axis, start.eval(&bind), end.eval(&bind))?
        }
        Op::Pad { axis, before, size } => {
            let (b, s, len) = (before.eval(&bind), size.eval(&bind), a[0].shape[*axis]);
            if b + len > s {
                return Err(ExecError::Shape(format!("pad of {len} at {b} in {s}")));
            }
            k::pad(a[0], *axis, b, s - b - len)?
        }
        Op::Concat { axis } => k::concat(a, *axis)?,
        Op::ReduceSum { axes, keepdims } => k::reduce_sum(a[0], axes, *keepdims)?,
        Op::ReduceMax { axes, keepdims } => k::reduce_max(a[0], axes, *keepdims)?,
        Op::Gather => k::gather(a[0], a[1])?,
        Op::ScatterAdd { rows } => k::scatter_add(a[0], a[1], rows.eval(&bind))?,
        Op::StopGradient => a[0].clone(),
        Op::Softmax => k::softmax(a[0])?,
        Op::SoftmaxVjp => k::softmax_vjp(a[0], a[1])?,
        Op::Act(f) => k::act(*f, a[0])?,
        Op::ActVjp(f) => k::act_vjp(*f, a[0], a[1])?,
        Op::EnvMat(e) => env::env_mat(e, a[0], a[1], a[2])?,
        Op::EnvMatVjp(e) => env::env_mat_vjp(e, a[0], a[1], a[2], a[3])?,
        // The executor runs these itself (they may read a window of their first argument
        // and keep values for each other).
        Op::EmbedContract(_) | Op::EmbedContractVjp(_) => {
            unreachable!("embedding ops are run by Executor::run_with")
        }
        Op::Dense(e) => dense::dense(e, a[0], a.get(1).copied(), packs)?,
        Op::DenseVjp(e) => dense::dense_vjp(e, a[0], a[1], a.get(2).copied(), packs)?,
        Op::Attention(at) => attention::attention(at, [a[0], a[1], a[2], a[3]], packs)?,
        Op::AttentionVjp(at) => {
            attention::attention_vjp(at, [a[0], a[1], a[2], a[3]], a[4], packs)?
        }
    })
}

/// Run a graph once (convenience for tests and one-off evaluations).
pub fn run_once(
    graph: &Graph,
    inputs: Vec<Tensor>,
    bind: Bindings,
) -> Result<Vec<Tensor>, ExecError> {
    Executor::new(graph.clone()).run(inputs, bind)
}

#[cfg(test)]
mod tests {
    use super::Profile;

    /// Each node takes its least time over the runs, and the kinds sum those.
    #[test]
    fn the_least_profile_takes_each_nodes_least_time() {
        let run = |t: [f64; 3]| {
            let mut p = Profile::new();
            p.add(0, "matmul", &[2], t[0]);
            p.add(1, "add", &[2], t[1]);
            p.add(2, "matmul", &[3], t[2]);
            p
        };
        let p = Profile::least(&[run([3.0, 1.0, 2.0]), run([1.0, 4.0, 5.0])]);
        let times: Vec<f64> = p.nodes.iter().map(|n| n.3).collect();
        assert_eq!(times, [1.0, 1.0, 2.0]);
        assert_eq!(p.kinds["matmul"], (3.0, 2));
        assert_eq!(p.total(), 4.0);
        assert!(Profile::least(&[]).nodes.is_empty());
    }
}
