//! Reference CPU kernels for each IR op, on row-major tensors.
//!
//! Plain loops over strided indices; matmul goes through `matrixmultiply`. These are the
//! correctness baseline every faster path is checked against.

use dpc_compiler::graph::{ActFn, Binary, Cmp, Data, Tensor, Unary};

use rayon::prelude::*;

use super::fastmath as fm;
use super::real::Real;
use super::ExecError;

type R<T> = Result<T, ExecError>;

/// Multiply-adds below which a matmul stays on the calling thread.
const PARALLEL_MIN_WORK: usize = 1 << 20;

/// Row-major strides of a shape.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Strides of `shape` read as if broadcast to `out` (0 on broadcast axes).
pub(crate) fn bcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let st = strides(shape);
    let lead = out.len() - shape.len();
    (0..out.len())
        .map(|i| {
            if i < lead || shape[i - lead] == 1 {
                0
            } else {
                st[i - lead]
            }
        })
        .collect()
}

/// `axes` as one run `a..b` of adjacent axes (in any order, repeats allowed), if they are.
pub(crate) fn adjacent_axes(axes: &[usize]) -> Option<(usize, usize)> {
    let mut v = axes.to_vec();
    v.sort_unstable();
    v.dedup();
    let (&a, &last) = (v.first()?, v.last()?);
    (last - a + 1 == v.len()).then_some((a, last + 1))
}

/// Numpy broadcast of concrete shapes.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> R<Vec<usize>> {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            let x = if i + a.len() >= n {
                a[i + a.len() - n]
            } else {
                1
            };
            let y = if i + b.len() >= n {
                b[i + b.len() - n]
            } else {
                1
            };
            match (x, y) {
                _ if x == y => Ok(x),
                (1, _) => Ok(y),
                (_, 1) => Ok(x),
                _ => Err(ExecError::Shape(format!(
                    "shapes {a:?} and {b:?} do not broadcast"
                ))),
            }
        })
        .collect()
}

/// Drop unit axes, then merge neighbouring axes that every operand walks the same way (both
/// broadcast, or the outer stride equal to the inner one times the inner size), so runs
/// are as long as possible.
pub(crate) fn collapse(shape: &[usize], st: Vec<Vec<usize>>) -> (Vec<usize>, Vec<Vec<usize>>) {
    let keep: Vec<usize> = (0..shape.len()).filter(|&d| shape[d] != 1).collect();
    let mut shape: Vec<usize> = keep.iter().map(|&d| shape[d]).collect();
    let mut st: Vec<Vec<usize>> = st
        .into_iter()
        .map(|s| keep.iter().map(|&d| s[d]).collect())
        .collect();
    let mut d = shape.len();
    while d >= 2 {
        let (a, b) = (d - 2, d - 1);
        if st.iter().all(|s| s[a] == s[b] * shape[b]) {
            shape[a] *= shape[b];
            shape.remove(b);
            for s in st.iter_mut() {
                s[a] = s[b];
                s.remove(b);
            }
        }
        d -= 1;
    }
    (shape, st)
}

/// Call `f(out_index, [offset in each input])` for every element of `out`, in order (the
/// tests' reference for `bcast_runs`).
#[cfg(test)]
fn for_each_bcast<const N: usize>(
    out: &[usize],
    inputs: [&[usize]; N],
    mut f: impl FnMut(usize, [usize; N]),
) {
    let total: usize = out.iter().product();
    if total == 0 {
        return;
    }
    let st: Vec<Vec<usize>> = inputs.iter().map(|s| bcast_strides(s, out)).collect();
    // Fast path: no broadcasting at all.
    if inputs.iter().all(|s| *s == out) {
        for i in 0..total {
            f(i, [i; N]);
        }
        return;
    }
    let rank = out.len();
    let mut idx = vec![0usize; rank];
    let mut off = [0usize; N];
    for i in 0..total {
        f(i, off);
        // Increment the multi-index, updating offsets.
        for ax in (0..rank).rev() {
            idx[ax] += 1;
            for k in 0..N {
                off[k] += st[k][ax];
            }
            if idx[ax] < out[ax] {
                break;
            }
            for k in 0..N {
                off[k] -= st[k][ax] * out[ax];
            }
            idx[ax] = 0;
        }
    }
}

/// Float element types the kernels are generic over.
pub trait Float:
    Copy
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::iter::Sum
    + Default
    + Send
    + Sync
    + 'static
{
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn tanh(self) -> Self;
    fn sqrt(self) -> Self;
    fn floor(self) -> Self;
    fn one() -> Self;
}

macro_rules! impl_float {
    ($t:ty) => {
        impl Float for $t {
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn floor(self) -> Self {
                <$t>::floor(self)
            }
            fn one() -> Self {
                1.0
            }
        }
    };
}
impl_float!(f32);
impl_float!(f64);

/// The scalar function of a float unary op (libm's; float64 `tanh` over slices has its own
/// vectorized kernel). The fused loop (`fuse.rs`) applies the same functions.
pub(super) fn unary_fn<T: Float>(u: Unary) -> fn(T) -> T {
    match u {
        Unary::Neg => |x| -x,
        Unary::Exp => |x| x.exp(),
        Unary::Log => |x| x.ln(),
        Unary::Tanh => |x| x.tanh(),
        Unary::Sqrt => |x| x.sqrt(),
        Unary::Recip => |x| T::one() / x,
        Unary::Sigmoid => |x| T::one() / (T::one() + (-x).exp()),
        Unary::Floor => |x| x.floor(),
        Unary::Not => unreachable!("not is boolean"),
    }
}

fn unary_f<T: Float>(u: Unary, x: &[T]) -> Vec<T> {
    let f = unary_fn::<T>(u);
    fill_par(x.len(), 1, |st, o| {
        let len = o.len();
        for (v, &a) in o.iter_mut().zip(&x[st..st + len]) {
            *v = f(a);
        }
    })
}

pub fn unary(u: Unary, x: &Tensor) -> R<Tensor> {
    let data = match (&x.data, u) {
        (Data::F64(v), Unary::Tanh) => {
            let mut out = v.clone();
            if out.len() >= PAR_MIN {
                out.par_chunks_mut(8192)
                    .for_each(super::fastmath::tanh_in_place);
            } else {
                super::fastmath::tanh_in_place(&mut out);
            }
            Data::F64(out)
        }
        (Data::F64(v), _) => Data::F64(unary_f(u, v)),
        (Data::F32(v), _) => Data::F32(unary_f(u, v)),
        (Data::Bool(v), Unary::Not) => Data::Bool(v.iter().map(|b| !b).collect()),
        _ => return Err(ExecError::Type(format!("{u:?} of {:?}", x.dtype()))),
    };
    Ok(Tensor {
        shape: x.shape.clone(),
        data,
    })
}

fn bin_num<
    T: Copy
        + PartialOrd
        + std::ops::Add<Output = T>
        + std::ops::Sub<Output = T>
        + std::ops::Mul<Output = T>,
>(
    b: Binary,
    div: Option<fn(T, T) -> T>,
) -> R<fn(T, T) -> T> {
    Ok(match b {
        Binary::Add => |x, y| x + y,
        Binary::Sub => |x, y| x - y,
        Binary::Mul => |x, y| x * y,
        Binary::Max => |x, y| if x >= y { x } else { y },
        Binary::Min => |x, y| if x <= y { x } else { y },
        Binary::Div => div.ok_or_else(|| ExecError::Type("integer division".into()))?,
        Binary::And | Binary::Or => return Err(ExecError::Type("logical op on numbers".into())),
    })
}

/// Whether `inner`, without its leading unit axes, is a suffix of `outer`: then `inner`
/// repeats contiguously over `outer` (a bias row added to every row, say).
fn is_trailing(inner: &[usize], outer: &[usize]) -> bool {
    let trimmed: &[usize] = {
        let skip = inner.iter().take_while(|&&d| d == 1).count();
        &inner[skip..]
    };
    trimmed.len() <= outer.len() && outer.ends_with(trimmed)
}

/// Elementwise outputs at least this long are computed on the thread pool, in blocks.
const PAR_MIN: usize = 1 << 15;

/// A vector of `n` values filled by `f(start, block)` over consecutive blocks of a multiple
/// of `unit` elements, in parallel when `n` is large. (The zeroed allocation is lazy: the
/// blocks' first writes fault its pages in, on their own threads.)
fn fill_par<C: Default + Clone + Send>(
    n: usize,
    unit: usize,
    f: impl Fn(usize, &mut [C]) + Sync,
) -> Vec<C> {
    let mut o = vec![C::default(); n];
    if n < PAR_MIN || rayon::current_num_threads() == 1 {
        f(0, &mut o);
        return o;
    }
    let unit = unit.max(1);
    let per = n.div_ceil(rayon::current_num_threads() * 8).max(4096);
    let ch = per.div_ceil(unit) * unit;
    o.par_chunks_mut(ch)
        .enumerate()
        .for_each(|(k, blk)| f(k * ch, blk));
    o
}

/// `out` filled run by run with `N` operands read through numpy broadcasting: `out`'s axes
/// are collapsed where every operand walks them alike (`collapse`), and `run(o, offs,
/// steps)` fills `o`, a run along the last collapsed axis, for which operand `k` starts at
/// offset `offs[k]` and advances `steps[k]` (0 when broadcast) per element. Runs go to the
/// thread pool; each chunk finds its first run's offsets once and carries them along.
fn bcast_runs<const N: usize, C: Default + Clone + Send>(
    out: &[usize],
    shapes: [&[usize]; N],
    run: impl Fn(&mut [C], [usize; N], [usize; N]) + Sync,
) -> Vec<C> {
    let n: usize = out.iter().product();
    if n == 0 {
        return Vec::new();
    }
    let st = shapes.iter().map(|s| bcast_strides(s, out)).collect();
    let (shape, st) = collapse(out, st);
    let Some(&len) = shape.last() else {
        // Every axis of size 1: one element.
        let mut o = vec![C::default(); 1];
        run(&mut o, [0; N], [0; N]);
        return o;
    };
    let outer = shape.len() - 1;
    let steps: [usize; N] = std::array::from_fn(|k| st[k][outer]);
    fill_par(n, len, |start, o| {
        let mut idx = vec![0usize; outer];
        let mut rem = start / len;
        for d in (0..outer).rev() {
            idx[d] = rem % shape[d];
            rem /= shape[d];
        }
        let mut offs: [usize; N] =
            std::array::from_fn(|k| idx.iter().zip(&st[k]).map(|(i, s)| i * s).sum());
        for orow in o.chunks_mut(len) {
            run(orow, offs, steps);
            // The next run: carry through the outer axes.
            for d in (0..outer).rev() {
                idx[d] += 1;
                for k in 0..N {
                    offs[k] += st[k][d];
                }
                if idx[d] < shape[d] {
                    break;
                }
                for k in 0..N {
                    offs[k] -= st[k][d] * shape[d];
                }
                idx[d] = 0;
            }
        }
    })
}

fn zip_bcast<A: Copy + Sync, B: Copy + Sync, C: Default + Clone + Send>(
    out: &[usize],
    a: (&[A], &[usize]),
    b: (&[B], &[usize]),
    f: impl Fn(A, B) -> C + Sync,
) -> Vec<C> {
    let n: usize = out.iter().product();
    // Fast paths: equal shapes, and one side repeating contiguously (scalars, bias rows).
    if a.0.len() == n && b.0.len() == n && a.1 == out && b.1 == out {
        return fill_par(n, 1, |st, o| {
            let len = o.len();
            for ((v, &x), &y) in o.iter_mut().zip(&a.0[st..st + len]).zip(&b.0[st..st + len]) {
                *v = f(x, y);
            }
        });
    }
    if a.0.len() == n && a.1 == out && !b.0.is_empty() && is_trailing(b.1, out) {
        let p = b.0.len();
        return fill_par(n, p, |st, o| {
            let len = o.len();
            if let [y] = b.0 {
                for (v, &x) in o.iter_mut().zip(&a.0[st..st + len]) {
                    *v = f(x, *y);
                }
            } else {
                for (orow, arow) in o.chunks_mut(p).zip(a.0[st..st + len].chunks(p)) {
                    for ((v, &x), &y) in orow.iter_mut().zip(arow).zip(b.0) {
                        *v = f(x, y);
                    }
                }
            }
        });
    }
    if b.0.len() == n && b.1 == out && !a.0.is_empty() && is_trailing(a.1, out) {
        let p = a.0.len();
        return fill_par(n, p, |st, o| {
            let len = o.len();
            if let [x] = a.0 {
                for (v, &y) in o.iter_mut().zip(&b.0[st..st + len]) {
                    *v = f(*x, y);
                }
            } else {
                for (orow, brow) in o.chunks_mut(p).zip(b.0[st..st + len].chunks(p)) {
                    for ((v, &x), &y) in orow.iter_mut().zip(a.0).zip(brow) {
                        *v = f(x, y);
                    }
                }
            }
        });
    }
    // One side constant along trailing axes (a per-row scale such as `x * mask[..., None]`).
    if a.0.len() == n && a.1 == out {
        if let Some(block) = row_scalar(b.1, out, b.0.len()) {
            return fill_par(n, block, |st, o| {
                let len = o.len();
                let rows = a.0[st..st + len].chunks(block).zip(&b.0[st / block..]);
                for (orow, (arow, &y)) in o.chunks_mut(block).zip(rows) {
                    for (v, &x) in orow.iter_mut().zip(arow) {
                        *v = f(x, y);
                    }
                }
            });
        }
    }
    if b.0.len() == n && b.1 == out {
        if let Some(block) = row_scalar(a.1, out, a.0.len()) {
            return fill_par(n, block, |st, o| {
                let len = o.len();
                let rows = b.0[st..st + len].chunks(block).zip(&a.0[st / block..]);
                for (orow, (brow, &x)) in o.chunks_mut(block).zip(rows) {
                    for (v, &y) in orow.iter_mut().zip(brow) {
                        *v = f(x, y);
                    }
                }
            });
        }
    }
    // Any other broadcast (a mask over the middle axes), run by run.
    bcast_runs(out, [a.1, b.1], |o, [ia, ib], steps| match steps {
        [1, 1] => {
            for ((v, &x), &y) in o.iter_mut().zip(&a.0[ia..]).zip(&b.0[ib..]) {
                *v = f(x, y);
            }
        }
        [1, 0] => {
            let y = b.0[ib];
            for (v, &x) in o.iter_mut().zip(&a.0[ia..]) {
                *v = f(x, y);
            }
        }
        [0, 1] => {
            let x = a.0[ia];
            for (v, &y) in o.iter_mut().zip(&b.0[ib..]) {
                *v = f(x, y);
            }
        }
        [sa, sb] => {
            for (q, v) in o.iter_mut().enumerate() {
                *v = f(a.0[ia + q * sa], b.0[ib + q * sb]);
            }
        }
    })
}

/// If `inner` (left-padded with ones to `outer`'s rank) is `outer` with its trailing axes set
/// to 1, the number of `outer` elements each `inner` element covers.
fn row_scalar(inner: &[usize], outer: &[usize], len: usize) -> Option<usize> {
    if inner.len() > outer.len() || len == 0 {
        return None;
    }
    let pad = outer.len() - inner.len();
    let full = |i: usize| if i < pad { 1 } else { inner[i - pad] };
    let k = (0..outer.len())
        .rev()
        .find(|&i| full(i) != 1)
        .map_or(0, |i| i + 1);
    if (pad..k).all(|i| full(i) == outer[i]) && (0..pad.min(k)).all(|i| outer[i] == 1) {
        let block: usize = outer[k..].iter().product();
        let rows: usize = outer[..k].iter().product();
        (rows == len && block > 0).then_some(block)
    } else {
        None
    }
}

/// A float binary op with the operation inlined into the loop (a closure per op, not a
/// function pointer), so the loops vectorize.
fn float_binary<T>(b: Binary, out: &[usize], x: (&[T], &[usize]), y: (&[T], &[usize])) -> R<Vec<T>>
where
    T: Copy
        + Default
        + PartialOrd
        + Send
        + Sync
        + std::ops::Add<Output = T>
        + std::ops::Sub<Output = T>
        + std::ops::Mul<Output = T>
        + std::ops::Div<Output = T>,
{
    Ok(match b {
        Binary::Add => zip_bcast(out, x, y, |a, c| a + c),
        Binary::Sub => zip_bcast(out, x, y, |a, c| a - c),
        Binary::Mul => zip_bcast(out, x, y, |a, c| a * c),
        Binary::Div => zip_bcast(out, x, y, |a, c| a / c),
        Binary::Max => zip_bcast(out, x, y, |a, c| if a >= c { a } else { c }),
        Binary::Min => zip_bcast(out, x, y, |a, c| if a <= c { a } else { c }),
        Binary::And | Binary::Or => return Err(ExecError::Type("logical op on numbers".into())),
    })
}

pub fn binary(b: Binary, x: &Tensor, y: &Tensor) -> R<Tensor> {
    let out = broadcast_shape(&x.shape, &y.shape)?;
    let (xs, ys) = (&x.shape[..], &y.shape[..]);
    let data = match (&x.data, &y.data) {
        (Data::F64(p), Data::F64(q)) => Data::F64(float_binary(b, &out, (p, xs), (q, ys))?),
        (Data::F32(p), Data::F32(q)) => Data::F32(float_binary(b, &out, (p, xs), (q, ys))?),
        (Data::I32(p), Data::I32(q)) => {
            Data::I32(zip_bcast(&out, (p, xs), (q, ys), bin_num::<i32>(b, None)?))
        }
        (Data::Bool(p), Data::Bool(q)) => {
            let f: fn(bool, bool) -> bool = match b {
                Binary::And => |a, c| a && c,
                Binary::Or => |a, c| a || c,
                _ => return Err(ExecError::Type(format!("{b:?} of bools"))),
            };
            Data::Bool(zip_bcast(&out, (p, xs), (q, ys), f))
        }
        _ => {
            return Err(ExecError::Type(format!(
                "{b:?} of {:?} and {:?}",
                x.dtype(),
                y.dtype()
            )))
        }
    };
    Ok(Tensor { shape: out, data })
}

fn cmp_fn<T: PartialOrd>(c: Cmp) -> fn(T, T) -> bool {
    match c {
        Cmp::Lt => |a, b| a < b,
        Cmp::Le => |a, b| a <= b,
        Cmp::Gt => |a, b| a > b,
        Cmp::Ge => |a, b| a >= b,
        Cmp::Eq => |a, b| a == b,
        Cmp::Ne => |a, b| a != b,
    }
}

pub fn compare(c: Cmp, x: &Tensor, y: &Tensor) -> R<Tensor> {
    let out = broadcast_shape(&x.shape, &y.shape)?;
    let (xs, ys) = (&x.shape[..], &y.shape[..]);
    let v = match (&x.data, &y.data) {
        (Data::F64(p), Data::F64(q)) => zip_bcast(&out, (p, xs), (q, ys), cmp_fn::<f64>(c)),
        (Data::F32(p), Data::F32(q)) => zip_bcast(&out, (p, xs), (q, ys), cmp_fn::<f32>(c)),
        (Data::I32(p), Data::I32(q)) => zip_bcast(&out, (p, xs), (q, ys), cmp_fn::<i32>(c)),
        _ => {
            return Err(ExecError::Type(format!(
                "{c:?} of {:?} and {:?}",
                x.dtype(),
                y.dtype()
            )))
        }
    };
    Ok(Tensor::bool(out, v))
}

pub fn select(c: &Tensor, x: &Tensor, y: &Tensor) -> R<Tensor> {
    let out = broadcast_shape(&broadcast_shape(&c.shape, &x.shape)?, &y.shape)?;
    let Data::Bool(cv) = &c.data else {
        return Err(ExecError::Type("select condition must be bool".into()));
    };
    fn sel<T: Copy + Default + Send + Sync>(
        out: &[usize],
        c: (&[bool], &[usize]),
        x: (&[T], &[usize]),
        y: (&[T], &[usize]),
    ) -> Vec<T> {
        let n: usize = out.iter().product();
        // Each operand whole, a scalar, or one value per row of `block` elements: one pass
        // with no multi-index bookkeeping.
        let step = |len: usize, shape: &[usize]| -> Option<usize> {
            if len == n && shape == out {
                Some(1)
            } else if len == 1 {
                Some(n.max(1))
            } else {
                row_scalar(shape, out, len)
            }
        };
        if let (Some(sc), Some(sx), Some(sy)) = (
            step(c.0.len(), c.1),
            step(x.0.len(), x.1),
            step(y.0.len(), y.1),
        ) {
            let at = |s: usize, i: usize| if s == 1 { i } else { i / s };
            return fill_par(n, 1, |st, o| {
                for (k, v) in o.iter_mut().enumerate() {
                    let i = st + k;
                    *v = if c.0[at(sc, i)] {
                        x.0[at(sx, i)]
                    } else {
                        y.0[at(sy, i)]
                    };
                }
            });
        }
        bcast_runs(out, [c.1, x.1, y.1], |o, [ic, ix, iy], [sc, sx, sy]| {
            for (q, v) in o.iter_mut().enumerate() {
                *v = if c.0[ic + q * sc] {
                    x.0[ix + q * sx]
                } else {
                    y.0[iy + q * sy]
                };
            }
        })
    }
    let cc = (&cv[..], &c.shape[..]);
    let data = match (&x.data, &y.data) {
        (Data::F64(p), Data::F64(q)) => Data::F64(sel(&out, cc, (p, &x.shape), (q, &y.shape))),
        (Data::F32(p), Data::F32(q)) => Data::F32(sel(&out, cc, (p, &x.shape), (q, &y.shape))),
        (Data::I32(p), Data::I32(q)) => Data::I32(sel(&out, cc, (p, &x.shape), (q, &y.shape))),
        (Data::Bool(p), Data::Bool(q)) => Data::Bool(sel(&out, cc, (p, &x.shape), (q, &y.shape))),
        _ => return Err(ExecError::Type("select branches differ in type".into())),
    };
    Ok(Tensor { shape: out, data })
}

pub fn cast(x: &Tensor, to: dpc_compiler::graph::DType) -> Tensor {
    use dpc_compiler::graph::DType as D;
    // The float conversions the mixed-precision graphs do on large tensors, directly.
    match (&x.data, to) {
        (Data::F64(v), D::F32) => {
            return Tensor {
                shape: x.shape.clone(),
                data: Data::F32(v.iter().map(|&a| a as f32).collect()),
            }
        }
        (Data::F32(v), D::F64) => {
            return Tensor {
                shape: x.shape.clone(),
                data: Data::F64(v.iter().map(|&a| a as f64).collect()),
            }
        }
        _ => {}
    }
    let v = x.to_f64_vec();
    let data = match to {
        D::F64 => Data::F64(v),
        D::F32 => match &x.data {
            Data::F32(p) => Data::F32(p.clone()),
            _ => Data::F32(v.iter().map(|&a| a as f32).collect()),
        },
        D::I32 => Data::I32(v.iter().map(|&a| a as i32).collect()),
        D::Bool => Data::Bool(v.iter().map(|&a| a != 0.0).collect()),
    };
    Tensor {
        shape: x.shape.clone(),
        data,
    }
}

pub fn matmul(a: &Tensor, b: &Tensor) -> R<Tensor> {
    matmul_t(a, b, [false, false])
}

/// `matmul` of the operands' last-two-axes transposes where `trans` says so: `a` stored
/// `[..., k, m]`, `b` stored `[..., n, k]` (or `[n, k]`), read in place through strides
/// instead of transposed into a copy first.
pub fn matmul_t(a: &Tensor, b: &Tensor, trans: [bool; 2]) -> R<Tensor> {
    let (ra, rb) = (a.shape.len(), b.shape.len());
    if ra < 2 || rb < 2 {
        return Err(ExecError::Shape(format!(
            "matmul {:?} x {:?}",
            a.shape, b.shape
        )));
    }
    let [ta, tb] = trans;
    let (m, k) = if ta {
        (a.shape[ra - 1], a.shape[ra - 2])
    } else {
        (a.shape[ra - 2], a.shape[ra - 1])
    };
    let (k2, n) = if tb {
        (b.shape[rb - 1], b.shape[rb - 2])
    } else {
        (b.shape[rb - 2], b.shape[rb - 1])
    };
    if k != k2 {
        return Err(ExecError::Shape(format!(
            "matmul {:?} x {:?}",
            a.shape, b.shape
        )));
    }
    let batch: usize = a.shape[..ra - 2].iter().product();
    let b_batched = rb > 2;
    let mut shape = a.shape[..ra - 2].to_vec();
    shape.extend([m, n]);
    // (row, column) strides of the logical operands.
    let (rsa, csa) = if ta { (1, m) } else { (k, 1) };
    let (rsb, csb) = if tb { (1, k) } else { (n, 1) };
    // Work is split over the rayon pool: by batch when there are many, else by row blocks
    // of one large product. Each piece is an independent GEMM, so results do not depend on
    // the thread count.
    macro_rules! mm {
        ($p:expr, $q:expr, $gemm:path, $zero:expr) => {{
            let mut o = vec![$zero; batch * m * n];
            if m * n > 0 {
                let one = |bi: usize, r0: usize, rows: usize, op: &mut [_]| {
                    let ap = &$p[bi * m * k + r0 * rsa..];
                    let bp = if b_batched {
                        &$q[bi * k * n..]
                    } else {
                        &$q[..]
                    };
                    // SAFETY: from these offsets the strides reach rows x k elements of
                    // `a`'s matrix, k x n of `b`'s and rows x n of the output's.
                    unsafe {
                        $gemm(
                            rows,
                            k,
                            n,
                            1.0,
                            ap.as_ptr(),
                            rsa as isize,
                            csa as isize,
                            bp.as_ptr(),
                            rsb as isize,
                            csb as isize,
                            0.0,
                            op.as_mut_ptr(),
                            n as isize,
                            1,
                        );
                    }
                };
                let work = batch * m * n * k.max(1);
                if work < PARALLEL_MIN_WORK {
                    for (bi, op) in o.chunks_mut(m * n).enumerate() {
                        one(bi, 0, m, op);
                    }
                } else if batch > 1 {
                    o.par_chunks_mut(m * n)
                        .enumerate()
                        .for_each(|(bi, op)| one(bi, 0, m, op));
                } else {
                    let rows = m.div_ceil(rayon::current_num_threads() * 4).max(16);
                    o.par_chunks_mut(rows * n).enumerate().for_each(|(c, op)| {
                        let r0 = c * rows;
                        one(0, r0, op.len() / n, op)
                    });
                }
            }
            o
        }};
    }
    let data = match (&a.data, &b.data) {
        // Many rows times one small matrix (a layer's weights): pack the matrix once and
        // stream the rows through the register-blocked kernel.
        (Data::F64(p), Data::F64(q))
            if !ta && !b_batched && batch * m >= 64 && k <= ROWS_MATMUL_MAX_K =>
        {
            Data::F64(rows_times_matrix(p, q, batch * m, k, n, tb))
        }
        (Data::F32(p), Data::F32(q))
            if !ta && !b_batched && batch * m >= 64 && k <= ROWS_MATMUL_MAX_K =>
        {
            Data::F32(rows_times_matrix(p, q, batch * m, k, n, tb))
        }
        // Many small products (a descriptor's per-atom matrices): plain loops, which beat
        // a general GEMM's packing at these sizes.
        (Data::F64(p), Data::F64(q)) if batch > 1 && m * k * n <= SMALL_MATMUL_MAX => Data::F64(
            small_batched(p, q, batch, (m, k, n), b_batched, [(rsa, csa), (rsb, csb)]),
        ),
        (Data::F32(p), Data::F32(q)) if batch > 1 && m * k * n <= SMALL_MATMUL_MAX => Data::F32(
            small_batched(p, q, batch, (m, k, n), b_batched, [(rsa, csa), (rsb, csb)]),
        ),
        (Data::F64(p), Data::F64(q)) => Data::F64(mm!(p, q, matrixmultiply::dgemm, 0.0f64)),
        (Data::F32(p), Data::F32(q)) => Data::F32(mm!(p, q, matrixmultiply::sgemm, 0.0f32)),
        _ => return Err(ExecError::Type("matmul of non-floats".into())),
    };
    Ok(Tensor { shape, data })
}

/// The largest `m k n` of one product that `small_batched` takes: its operands stay in L1.
const SMALL_MATMUL_MAX: usize = 1 << 15;

/// `batch` products `[m, k] x [k, n]` (operands through `(row, column)` strides, `b` shared
/// when not `b_batched`), split over the pool by batch when there is enough work.
fn small_batched<T: Real>(
    a: &[T],
    b: &[T],
    batch: usize,
    (m, k, n): (usize, usize, usize),
    b_batched: bool,
    strides: [(usize, usize); 2],
) -> Vec<T> {
    let mut o = vec![T::default(); batch * m * n];
    if m * n == 0 {
        return o;
    }
    let one = |bi: usize, op: &mut [T], bt: &mut Vec<T>| {
        let bp = if b_batched { &b[bi * k * n..] } else { b };
        small_matmul(&a[bi * m * k..], bp, (m, k, n), strides, op, bt);
    };
    if batch * m * n * k.max(1) < PARALLEL_MIN_WORK {
        let mut bt = Vec::new();
        for (bi, op) in o.chunks_mut(m * n).enumerate() {
            one(bi, op, &mut bt);
        }
    } else {
        o.par_chunks_mut(m * n)
            .enumerate()
            .for_each_init(Vec::new, |bt, (bi, op)| one(bi, op, bt));
    }
    o
}

simd_fn! {
/// `c [m, n] = a b` for small operands: `b` copied row-major into `bt` (unless it is), then
/// each row of `c` accumulated over `k` as rows of `b` scaled by `a`'s elements, so the
/// inner loop runs along `n` in SIMD registers.
fn small_matmul<T: Real>(
    a: &[T],
    b: &[T],
    dims: (usize, usize, usize),
    strides: [(usize, usize); 2],
    c: &mut [T],
    bt: &mut Vec<T>,
) {
    let (m, k, n) = dims;
    let [(rsa, csa), (rsb, csb)] = strides;
    let b: &[T] = if csb == 1 && rsb == n {
        &b[..k * n]
    } else {
        // Plain loops: an iterator chain (`flat_map`) here took DPA-3 6% of its time.
        bt.clear();
        bt.resize(k * n, T::default());
        for (p, row) in bt.chunks_exact_mut(n.max(1)).enumerate() {
            for (q, v) in row.iter_mut().enumerate() {
                *v = b[p * rsb + q * csb];
            }
        }
        &bt[..]
    };
    // A row of `c` in registers, a block of 32, 16, 8 or 4 columns at a time (any `n`:
    // DPA-2's attention over 24 neighbours is 16 + 8), the last few columns in memory.
    let mut j0 = 0;
    while j0 < n {
        let w = n - j0;
        let (b, c) = (&b[j0..], &mut c[j0..]);
        let ab = (a, (rsa, csa));
        j0 += match w {
            32.. => rows_of::<T, 32>(ab, (b, n), (m, k), (c, n)),
            16.. => rows_of::<T, 16>(ab, (b, n), (m, k), (c, n)),
            8.. => rows_of::<T, 8>(ab, (b, n), (m, k), (c, n)),
            4.. => rows_of::<T, 4>(ab, (b, n), (m, k), (c, n)),
            _ => {
                for i in 0..m {
                    let crow = &mut c[i * n..i * n + w];
                    crow.fill(T::default());
                    for p in 0..k {
                        let av = a[i * rsa + p * csa];
                        for (cv, &bv) in crow.iter_mut().zip(&b[p * n..p * n + w]) {
                            *cv = *cv + av * bv;
                        }
                    }
                }
                w
            }
        };
    }
}
}

/// `small_matmul`'s loop for `N` columns (of `b` and `c`, rows `ldb` and `ldc` apart):
/// each row of `c` accumulated in an `[T; N]`. Returns `N`.
#[inline(always)]
fn rows_of<T: Real, const N: usize>(
    (a, (rsa, csa)): (&[T], (usize, usize)),
    (b, ldb): (&[T], usize),
    (m, k): (usize, usize),
    (c, ldc): (&mut [T], usize),
) -> usize {
    for i in 0..m {
        let mut acc = [T::default(); N];
        for p in 0..k {
            let av = a[i * rsa + p * csa];
            let brow = &b[p * ldb..p * ldb + N];
            for (x, &bv) in acc.iter_mut().zip(brow) {
                *x = *x + av * bv;
            }
        }
        c[i * ldc..i * ldc + N].copy_from_slice(&acc);
    }
    N
}

/// The widest `k` `rows_times_matrix` takes (one slice of the packed kernel; the fused
/// products in `fuse` use the same bound, so both round alike).
pub(crate) const ROWS_MATMUL_MAX_K: usize = 256;

/// `a [rows, k] @ b` with `b` (`[k, n]`, or `[n, k]` transposed when `tb`) packed once
/// (`gemm::PackedB`, or `PackedB32` in float32), rows split over the thread pool.
fn rows_times_matrix<T: super::real::Real>(
    a: &[T],
    b: &[T],
    rows: usize,
    k: usize,
    n: usize,
    tb: bool,
) -> Vec<T> {
    let packed = T::pack(b, k, n, tb);
    let mut o = vec![T::default(); rows * n];
    if n == 0 {
        return o;
    }
    let per = if rows * n * k.max(1) < PARALLEL_MIN_WORK {
        rows
    } else {
        rows.div_ceil(rayon::current_num_threads() * 4).max(16)
    };
    o.par_chunks_mut(per * n).enumerate().for_each(|(c, op)| {
        let r = op.len() / n;
        T::gemm_packed(&packed, r, &a[c * per * k..], k, op, n, false);
    });
    o
}

/// Whether `perm` swaps the last two axes and keeps the others in place.
pub(super) fn swaps_last_two(perm: &[usize]) -> bool {
    let r = perm.len();
    r >= 2
        && perm[r - 2] == r - 1
        && perm[r - 1] == r - 2
        && perm[..r - 2].iter().enumerate().all(|(i, &p)| p == i)
}

pub fn transpose(x: &Tensor, perm: &[usize]) -> Tensor {
    let out: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    // Swapping the last two axes (the common case): blocked 2-d transposes per batch.
    let r = perm.len();
    if swaps_last_two(perm) {
        let (m, n) = (x.shape[r - 2], x.shape[r - 1]);
        fn t2<T: Copy + Default + Send + Sync>(v: &[T], m: usize, n: usize) -> Vec<T> {
            if m * n == 0 {
                return vec![T::default(); v.len()];
            }
            // Whole matrices per block, blocks on the thread pool.
            fill_par(v.len(), m * n, |st, o| {
                for (src, dst) in v[st..st + o.len()].chunks(m * n).zip(o.chunks_mut(m * n)) {
                    for ib in (0..m).step_by(32) {
                        for jb in (0..n).step_by(32) {
                            for i in ib..(ib + 32).min(m) {
                                for j in jb..(jb + 32).min(n) {
                                    dst[j * m + i] = src[i * n + j];
                                }
                            }
                        }
                    }
                }
            })
        }
        let data = match &x.data {
            Data::F64(v) => Data::F64(t2(v, m, n)),
            Data::F32(v) => Data::F32(t2(v, m, n)),
            Data::I32(v) => Data::I32(t2(v, m, n)),
            Data::Bool(v) => Data::Bool(t2(v, m, n)),
        };
        return Tensor { shape: out, data };
    }
    let st = strides(&x.shape);
    let permuted: Vec<usize> = perm.iter().map(|&p| st[p]).collect();
    strided(x, out, &permuted, 0)
}

/// The tensor of `shape` whose element at multi-index `i` is `x`'s element at
/// `base + sum(i * st)`: a view (broadcast, slice, transpose) made contiguous, copied a
/// last-axis run at a time.
fn strided(x: &Tensor, shape: Vec<usize>, st: &[usize], base: usize) -> Tensor {
    fn copy<T: Copy>(v: &[T], shape: &[usize], st: &[usize], base: usize) -> Vec<T> {
        let total: usize = shape.iter().product();
        let mut o = Vec::with_capacity(total);
        if total == 0 {
            return o;
        }
        let Some((&inner, outer)) = shape.split_last() else {
            o.push(v[base]);
            return o;
        };
        let si = st[outer.len()];
        let mut idx = vec![0usize; outer.len()];
        let mut off = base;
        loop {
            match si {
                1 => o.extend_from_slice(&v[off..off + inner]),
                0 => o.extend(std::iter::repeat_n(v[off], inner)),
                _ => o.extend((0..inner).map(|k| v[off + k * si])),
            }
            let mut ax = outer.len();
            loop {
                if ax == 0 {
                    return o;
                }
                ax -= 1;
                idx[ax] += 1;
                off += st[ax];
                if idx[ax] < outer[ax] {
                    break;
                }
                off -= st[ax] * outer[ax];
                idx[ax] = 0;
            }
        }
    }
    let data = match &x.data {
        Data::F64(v) => Data::F64(copy(v, &shape, st, base)),
        Data::F32(v) => Data::F32(copy(v, &shape, st, base)),
        Data::I32(v) => Data::I32(copy(v, &shape, st, base)),
        Data::Bool(v) => Data::Bool(copy(v, &shape, st, base)),
    };
    Tensor { shape, data }
}

/// Visit every multi-index of `shape` in row-major order, passing `sum(index * stride)`.
fn walk(shape: &[usize], st: &[usize], mut f: impl FnMut(usize)) {
    let total: usize = shape.iter().product();
    if total == 0 {
        return;
    }
    let rank = shape.len();
    let mut idx = vec![0usize; rank];
    let mut off = 0usize;
    for _ in 0..total {
        f(off);
        for ax in (0..rank).rev() {
            idx[ax] += 1;
            off += st[ax];
            if idx[ax] < shape[ax] {
                break;
            }
            off -= st[ax] * shape[ax];
            idx[ax] = 0;
        }
    }
}

pub fn broadcast(x: &Tensor, to: &[usize]) -> R<Tensor> {
    if broadcast_shape(&x.shape, to)? != to {
        return Err(ExecError::Shape(format!(
            "broadcast {:?} to {to:?}",
            x.shape
        )));
    }
    let st = bcast_strides(&x.shape, to);
    Ok(strided(x, to.to_vec(), &st, 0))
}

pub fn slice(x: &Tensor, axis: usize, start: usize, end: usize) -> R<Tensor> {
    if end > x.shape[axis] || start > end {
        return Err(ExecError::Shape(format!(
            "slice {start}..{end} of axis {axis} in {:?}",
            x.shape
        )));
    }
    let mut out = x.shape.clone();
    out[axis] = end - start;
    let st = strides(&x.shape);
    let base = start * st[axis];
    Ok(strided(x, out, &st, base))
}

/// Concatenate along `axis`.
pub fn concat(xs: &[&Tensor], axis: usize) -> R<Tensor> {
    let first = xs[0];
    let outer: usize = first.shape[..axis].iter().product();
    let inner: usize = first.shape[axis + 1..].iter().product();
    let mut shape = first.shape.clone();
    shape[axis] = xs.iter().map(|x| x.shape[axis]).sum();
    macro_rules! cat {
        ($variant:ident) => {{
            let mut o = Vec::with_capacity(shape.iter().product());
            for i in 0..outer {
                for x in xs {
                    let Data::$variant(v) = &x.data else {
                        return Err(ExecError::Type("concat of mixed types".into()));
                    };
                    let chunk = x.shape[axis] * inner;
                    o.extend_from_slice(&v[i * chunk..(i + 1) * chunk]);
                }
            }
            Data::$variant(o)
        }};
    }
    let data = match &first.data {
        Data::F64(_) => cat!(F64),
        Data::F32(_) => cat!(F32),
        Data::I32(_) => cat!(I32),
        Data::Bool(_) => cat!(Bool),
    };
    Ok(Tensor { shape, data })
}

pub fn pad(x: &Tensor, axis: usize, before: usize, after: usize) -> R<Tensor> {
    let dt = x.dtype();
    let mut parts = Vec::new();
    let mut zb = x.shape.clone();
    zb[axis] = before;
    let mut za = x.shape.clone();
    za[axis] = after;
    let (zb, za) = (Tensor::zeros(dt, zb), Tensor::zeros(dt, za));
    if before > 0 {
        parts.push(&zb);
    }
    parts.push(x);
    if after > 0 {
        parts.push(&za);
    }
    concat(&parts, axis)
}

/// Output shape and, per input element, its output offset, for a reduction over `axes`.
fn reduce_map(shape: &[usize], axes: &[usize], keepdims: bool) -> (Vec<usize>, Vec<usize>) {
    let kept: Vec<usize> = shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
        .collect();
    let kst = strides(&kept);
    let st: Vec<usize> = (0..shape.len())
        .map(|i| if axes.contains(&i) { 0 } else { kst[i] })
        .collect();
    let mut map = Vec::with_capacity(shape.iter().product());
    walk(shape, &st, |off| map.push(off));
    let out = if keepdims {
        kept
    } else {
        shape
            .iter()
            .enumerate()
            .filter(|(i, _)| !axes.contains(i))
            .map(|(_, &d)| d)
            .collect()
    };
    (out, map)
}

pub fn reduce_sum(x: &Tensor, axes: &[usize], keepdims: bool) -> R<Tensor> {
    // Contiguous cases without an index map; each output still adds its inputs in
    // element order, so the sums are bit-identical to the general path.
    let Some((a, b)) = adjacent_axes(axes) else {
        return reduce_general(x, axes, keepdims);
    };
    let rank = x.shape.len();
    let out: Vec<usize> = (0..rank)
        .filter_map(|i| match (axes.contains(&i), keepdims) {
            (false, _) => Some(x.shape[i]),
            (true, true) => Some(1),
            (true, false) => None,
        })
        .collect();
    let trailing = b == rank;
    if trailing || a == 0 {
        let n: usize = out.iter().product();
        fn rows<T: Copy + Default + std::ops::Add<Output = T>>(v: &[T], n: usize) -> Vec<T> {
            if n == 0 {
                return Vec::new();
            }
            let block = v.len() / n;
            if block == 0 {
                return vec![T::default(); n];
            }
            v.chunks(block)
                .map(|r| r.iter().fold(T::default(), |a, &b| a + b))
                .collect()
        }
        fn cols<T: Copy + Default + std::ops::Add<Output = T>>(v: &[T], n: usize) -> Vec<T> {
            let mut o = vec![T::default(); n];
            if n == 0 {
                return o;
            }
            for r in v.chunks(n) {
                for (a, &b) in o.iter_mut().zip(r) {
                    *a = *a + b;
                }
            }
            o
        }
        let data = match (&x.data, trailing) {
            (Data::F64(v), true) => Data::F64(rows(v, n)),
            (Data::F32(v), true) => Data::F32(rows(v, n)),
            (Data::I32(v), true) => Data::I32(rows(v, n)),
            (Data::F64(v), false) => Data::F64(cols(v, n)),
            (Data::F32(v), false) => Data::F32(cols(v, n)),
            (Data::I32(v), false) => Data::I32(cols(v, n)),
            (Data::Bool(_), _) => return Err(ExecError::Type("sum of bools".into())),
        };
        return Ok(Tensor { shape: out, data });
    }
    // One run of adjacent axes in the middle: `[outer, mid, inner]` summed over `mid`, a row
    // of `inner` at a time, outer rows on the thread pool. Each output adds its inputs in
    // increasing `mid`, the general path's order.
    {
        let outer: usize = x.shape[..a].iter().product();
        let mid: usize = x.shape[a..b].iter().product();
        let inner: usize = x.shape[b..].iter().product();
        fn mids<T: Copy + Default + Send + Sync + std::ops::Add<Output = T>>(
            v: &[T],
            outer: usize,
            mid: usize,
            inner: usize,
        ) -> Vec<T> {
            fill_par(outer * inner, inner, |st, o| {
                if inner == 0 {
                    return;
                }
                for (k, orow) in o.chunks_mut(inner).enumerate() {
                    let base = (st / inner + k) * mid * inner;
                    for m in 0..mid {
                        let row = &v[base + m * inner..base + (m + 1) * inner];
                        for (a, &b) in orow.iter_mut().zip(row) {
                            *a = *a + b;
                        }
                    }
                }
            })
        }
        let data = match &x.data {
            Data::F64(v) => Data::F64(mids(v, outer, mid, inner)),
            Data::F32(v) => Data::F32(mids(v, outer, mid, inner)),
            Data::I32(v) => Data::I32(mids(v, outer, mid, inner)),
            Data::Bool(_) => return Err(ExecError::Type("sum of bools".into())),
        };
        Ok(Tensor { shape: out, data })
    }
}

/// `reduce_sum` over any axes: the shape as runs of kept and summed axes (adjacent axes of
/// one kind merged), walked in element order, so each output adds its inputs in increasing
/// element order from zero (the order of every other path). Blocks of the leading kept run
/// go to the thread pool.
fn reduce_general(x: &Tensor, axes: &[usize], keepdims: bool) -> R<Tensor> {
    let mut groups: Vec<(usize, bool)> = Vec::new();
    for (i, &d) in x.shape.iter().enumerate() {
        let summed = axes.contains(&i);
        match groups.last_mut() {
            Some((n, s)) if *s == summed => *n *= d,
            _ => groups.push((d, summed)),
        }
    }
    let out: Vec<usize> = (0..x.shape.len())
        .filter_map(|i| match (axes.contains(&i), keepdims) {
            (false, _) => Some(x.shape[i]),
            (true, true) => Some(1),
            (true, false) => None,
        })
        .collect();
    fn sum<T: Copy + Default + Send + Sync + std::ops::Add<Output = T>>(
        v: &[T],
        groups: &[(usize, bool)],
    ) -> Vec<T> {
        let n: usize = groups.iter().filter(|g| !g.1).map(|g| g.0).product();
        let mut o = vec![T::default(); n];
        if v.is_empty() || n == 0 {
            return o;
        }
        match groups {
            // A leading kept run: its blocks are independent.
            [(lead, false), rest @ ..] => {
                let (ib, ob) = (v.len() / lead, n / lead);
                let per = (PAR_MIN / ib.max(1)).max(1);
                o.par_chunks_mut(per * ob)
                    .zip(v.par_chunks(per * ib))
                    .for_each(|(oc, vc)| {
                        for (os, vs) in oc.chunks_mut(ob).zip(vc.chunks(ib)) {
                            sum_into(vs, rest, os);
                        }
                    });
            }
            _ => sum_into(v, groups, &mut o),
        }
        o
    }
    let data = match &x.data {
        Data::F64(v) => Data::F64(sum(v, &groups)),
        Data::F32(v) => Data::F32(sum(v, &groups)),
        Data::I32(v) => Data::I32(sum(v, &groups)),
        Data::Bool(_) => return Err(ExecError::Type("sum of bools".into())),
    };
    Ok(Tensor { shape: out, data })
}

/// `o += v` summed over `groups`' summed runs, `v` and `o` in element order (see
/// `reduce_general`).
fn sum_into<T: Copy + std::ops::Add<Output = T>>(v: &[T], groups: &[(usize, bool)], o: &mut [T]) {
    match groups {
        [] => o[0] = o[0] + v[0],
        [(n, true)] => {
            let mut a = o[0];
            for &x in &v[..*n] {
                a = a + x;
            }
            o[0] = a;
        }
        [(n, false)] => {
            for (a, &x) in o[..*n].iter_mut().zip(v) {
                *a = *a + x;
            }
        }
        [(n, summed), rest @ ..] => {
            let ib: usize = rest.iter().map(|g| g.0).product();
            let ob: usize = rest.iter().filter(|g| !g.1).map(|g| g.0).product();
            for i in 0..*n {
                let os = if *summed {
                    &mut o[..ob]
                } else {
                    &mut o[i * ob..(i + 1) * ob]
                };
                sum_into(&v[i * ib..(i + 1) * ib], rest, os);
            }
        }
    }
}

pub fn reduce_max(x: &Tensor, axes: &[usize], keepdims: bool) -> R<Tensor> {
    let (out, map) = reduce_map(&x.shape, axes, keepdims);
    let n: usize = out.iter().product();
    fn mx<T: Copy + PartialOrd>(v: &[T], map: &[usize], n: usize, lowest: T) -> Vec<T> {
        let mut o = vec![lowest; n];
        for (x, &m) in v.iter().zip(map) {
            if *x > o[m] {
                o[m] = *x;
            }
        }
        o
    }
    let data = match &x.data {
        Data::F64(v) => Data::F64(mx(v, &map, n, f64::NEG_INFINITY)),
        Data::F32(v) => Data::F32(mx(v, &map, n, f32::NEG_INFINITY)),
        Data::I32(v) => Data::I32(mx(v, &map, n, i32::MIN)),
        Data::Bool(_) => return Err(ExecError::Type("max of bools".into())),
    };
    Ok(Tensor { shape: out, data })
}

fn check_index(i: i32, rows: usize) -> R<usize> {
    if i < 0 || i as usize >= rows {
        return Err(ExecError::Index(format!("index {i} outside 0..{rows}")));
    }
    Ok(i as usize)
}

pub fn gather(table: &Tensor, idx: &Tensor) -> R<Tensor> {
    let Data::I32(iv) = &idx.data else {
        return Err(ExecError::Type("gather index must be i32".into()));
    };
    let rows = table.shape[0];
    let row: usize = table.shape[1..].iter().product();
    let src: Vec<usize> = iv.iter().map(|&i| check_index(i, rows)).collect::<R<_>>()?;
    // Whole rows copied, blocks of rows on the thread pool.
    fn rows_of<T: Copy + Default + Send + Sync>(v: &[T], src: &[usize], row: usize) -> Vec<T> {
        if row == 0 {
            return Vec::new();
        }
        fill_par(src.len() * row, row, |st, o| {
            for (orow, &r) in o.chunks_mut(row).zip(&src[st / row..]) {
                orow.copy_from_slice(&v[r * row..(r + 1) * row]);
            }
        })
    }
    let data = match &table.data {
        Data::F64(v) => Data::F64(rows_of(v, &src, row)),
        Data::F32(v) => Data::F32(rows_of(v, &src, row)),
        Data::I32(v) => Data::I32(rows_of(v, &src, row)),
        Data::Bool(v) => Data::Bool(rows_of(v, &src, row)),
    };
    let mut shape = idx.shape.clone();
    shape.extend_from_slice(&table.shape[1..]);
    Ok(Tensor { shape, data })
}

pub fn scatter_add(idx: &Tensor, upd: &Tensor, rows: usize) -> R<Tensor> {
    let Data::I32(iv) = &idx.data else {
        return Err(ExecError::Type("scatter index must be i32".into()));
    };
    let row: usize = upd.shape[idx.shape.len()..].iter().product();
    let mut shape = vec![rows];
    shape.extend_from_slice(&upd.shape[idx.shape.len()..]);
    fn sc<T: Copy + Default + std::ops::Add<Output = T>>(
        iv: &[i32],
        u: &[T],
        rows: usize,
        row: usize,
    ) -> R<Vec<T>> {
        let mut o = vec![T::default(); rows * row];
        for (k, &i) in iv.iter().enumerate() {
            let r = check_index(i, rows)?;
            for j in 0..row {
                o[r * row + j] = o[r * row + j] + u[k * row + j];
            }
        }
        Ok(o)
    }
    let data = match &upd.data {
        Data::F64(u) => Data::F64(sc(iv, u, rows, row)?),
        Data::F32(u) => Data::F32(sc(iv, u, rows, row)?),
        Data::I32(u) => Data::I32(sc(iv, u, rows, row)?),
        Data::Bool(_) => return Err(ExecError::Type("scatter of bools".into())),
    };
    Ok(Tensor { shape, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A matmul reading transposed operands through strides equals the product of the
    /// transposed copies, for every flag pair, batched and unbatched right operands, small
    /// products and ones split over threads, float64 and float32.
    #[test]
    fn matmul_of_transposed_operands_equals_the_copies() {
        let swap = |t: &Tensor| {
            let r = t.shape.len();
            let mut p: Vec<usize> = (0..r).collect();
            p.swap(r - 2, r - 1);
            transpose(t, &p)
        };
        let fill = |shape: Vec<usize>, seed: usize| {
            let n: usize = shape.iter().product();
            let v = (0..n)
                .map(|i| (((i + seed) * 7919) % 1013) as f64 * 0.01 - 5.0)
                .collect();
            Tensor::f64(shape, v)
        };
        for (batch, m, k, n, b_batched) in [
            (3usize, 4usize, 5usize, 6usize, true),
            (2, 70, 33, 9, false),
            (1, 300, 40, 120, false),
            (40, 72, 32, 4, true),
            // Small products of widths split into column blocks (16 + 8, 32 + 8 + 3, 2).
            (64, 24, 16, 24, true),
            (5, 6, 7, 43, true),
            (9, 3, 5, 2, false),
        ] {
            let a = fill(vec![batch, m, k], 1);
            let b = if b_batched {
                fill(vec![batch, k, n], 2)
            } else {
                fill(vec![k, n], 2)
            };
            let want = matmul(&a, &b).unwrap();
            // Against the naive sum, for the small-product and the GEMM paths alike.
            let (Data::F64(av), Data::F64(bv), Data::F64(wv)) = (&a.data, &b.data, &want.data)
            else {
                panic!("float64");
            };
            for bi in 0..batch {
                let bo = if b_batched { bi * k * n } else { 0 };
                for i in 0..m {
                    for j in 0..n {
                        let s: f64 = (0..k)
                            .map(|p| av[bi * m * k + i * k + p] * bv[bo + p * n + j])
                            .sum();
                        let got = wv[bi * m * n + i * n + j];
                        assert!((got - s).abs() <= 1e-12 * (1.0 + s.abs()), "{got} {s}");
                    }
                }
            }
            for ta in [false, true] {
                for tb in [false, true] {
                    let aa = if ta { swap(&a) } else { a.clone() };
                    let bb = if tb { swap(&b) } else { b.clone() };
                    let got = matmul_t(&aa, &bb, [ta, tb]).unwrap();
                    assert_eq!(got.shape, want.shape);
                    let (Data::F64(g), Data::F64(w)) = (&got.data, &want.data) else {
                        panic!("float64");
                    };
                    for (x, y) in g.iter().zip(w) {
                        assert!(
                            (x - y).abs() <= 1e-12 * (1.0 + y.abs()),
                            "{ta} {tb}: {x} {y}"
                        );
                    }
                    let f32t = dpc_compiler::graph::DType::F32;
                    let (a32, b32) = (cast(&aa, f32t), cast(&bb, f32t));
                    let got32 = matmul_t(&a32, &b32, [ta, tb]).unwrap();
                    let Data::F32(g32) = &got32.data else {
                        panic!("float32");
                    };
                    for (x, y) in g32.iter().zip(w) {
                        assert!((*x as f64 - y).abs() <= 1e-3 * (1.0 + y.abs()));
                    }
                }
            }
            assert!(matmul_t(&a, &b, [true, false]).is_err() || k == m);
        }
    }

    /// Sums over every run of adjacent axes (the strided fast path, with outputs large
    /// enough to split over threads) equal the naive index loop exactly, and so do strided
    /// broadcasts, slices and transposes.
    #[test]
    fn strided_paths_equal_the_index_loops() {
        let shape = [3usize, 5, 7, 600];
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n)
            .map(|i| ((i * 7919) % 1009) as f64 * 0.37 - 100.0)
            .collect();
        let x = Tensor::f64(shape.to_vec(), v.clone());
        let st = strides(&shape);
        for axes in [
            vec![1],
            vec![1, 2],
            vec![2],
            vec![0, 1],
            vec![2, 3],
            vec![1, 2, 3],
        ] {
            let got = reduce_sum(&x, &axes, true).unwrap();
            let kept: Vec<usize> = (0..4)
                .map(|i| if axes.contains(&i) { 1 } else { shape[i] })
                .collect();
            let kst = strides(&kept);
            let mut want = vec![0.0; kept.iter().product()];
            let mut idx = [0usize; 4];
            for (flat, &val) in v.iter().enumerate() {
                let mut r = flat;
                for d in 0..4 {
                    idx[d] = r / st[d];
                    r %= st[d];
                }
                let o: usize = (0..4)
                    .map(|d| {
                        if axes.contains(&d) {
                            0
                        } else {
                            idx[d] * kst[d]
                        }
                    })
                    .sum();
                want[o] += val;
            }
            assert_eq!(got.shape, kept, "{axes:?}");
            assert_eq!(got.as_f64().unwrap(), &want[..], "{axes:?}");
        }
        let t = transpose(&x, &[2, 0, 3, 1]);
        let ts = strides(&t.shape);
        for (flat, &got) in t.as_f64().unwrap().iter().enumerate() {
            let (a, b, c, d) = (
                flat / ts[0],
                flat % ts[0] / ts[1],
                flat % ts[1] / ts[2],
                flat % ts[2],
            );
            assert_eq!(got, v[b * st[0] + d * st[1] + a * st[2] + c]);
        }
        let sl = slice(&x, 2, 2, 5).unwrap();
        assert_eq!(sl.shape, vec![3, 5, 3, 600]);
        assert_eq!(sl.as_f64().unwrap()[0], v[2 * st[2]]);
        let row = Tensor::f64(vec![1, 5, 1, 1], (0..5).map(f64::from).collect());
        let b = broadcast(&row, &[3, 5, 7, 2]).unwrap();
        assert!(b
            .as_f64()
            .unwrap()
            .chunks(14)
            .enumerate()
            .all(|(k, c)| c.iter().all(|&y| y == (k % 5) as f64)));
    }

    /// `select`'s fast path against the general broadcasting loop.
    #[test]
    fn select_fast_path_equals_the_general_loop() {
        let cases: [(&[usize], &[usize], &[usize]); 9] = [
            (&[2, 3, 4], &[2, 3, 4], &[2, 3, 4]),
            (&[2, 3, 1], &[2, 3, 4], &[]),
            (&[2, 1, 1], &[2, 3, 4], &[2, 3, 1]),
            (&[], &[2, 3, 4], &[2, 3, 4]),
            (&[1, 3, 1], &[2, 3, 4], &[]),
            // Masks over middle and last axes (DPA-2's attention), run by run.
            (&[2, 1, 1, 4], &[2, 2, 4, 4], &[]),
            (&[2, 1, 4, 1], &[2, 2, 4, 4], &[]),
            (&[2, 1, 4, 1], &[2, 1, 1, 4], &[2, 2, 1, 1]),
            (&[1, 1, 1, 1], &[1, 1], &[1]),
        ];
        for (sc, sx, sy) in cases {
            let out = broadcast_shape(&broadcast_shape(sc, sx).unwrap(), sy).unwrap();
            let len = |s: &[usize]| s.iter().product::<usize>();
            let c = Tensor::bool(sc.to_vec(), (0..len(sc)).map(|i| i % 3 != 1).collect());
            let x = Tensor::f64(sx.to_vec(), (0..len(sx)).map(|i| i as f64).collect());
            let y = Tensor::f64(
                sy.to_vec(),
                (0..len(sy)).map(|i| -(i as f64) - 0.5).collect(),
            );
            let got = select(&c, &x, &y).unwrap();
            let (Data::Bool(cv), Data::F64(xv), Data::F64(yv)) = (&c.data, &x.data, &y.data) else {
                unreachable!()
            };
            let mut want = vec![0.0; out.iter().product()];
            for_each_bcast(&out, [sc, sx, sy], |i, [ic, ix, iy]| {
                want[i] = if cv[ic] { xv[ix] } else { yv[iy] }
            });
            assert_eq!(got.shape, out.to_vec(), "{sc:?} {sx:?} {sy:?}");
            assert_eq!(got.data, Data::F64(want), "{sc:?} {sx:?} {sy:?}");
        }
    }

    /// The contiguous reductions against the general path, bit for bit.
    #[test]
    fn reduce_sum_fast_paths_equal_the_general_path() {
        // Every path against an index map adding in element order: the contiguous ones, and
        // runs of summed axes between kept ones (DPA-2's attention sums over heads and
        // neighbours, `[n, 2, 24, 24]` over axes 1 and 3, large enough for the thread pool).
        let cases: [(Vec<usize>, Vec<Vec<usize>>); 2] = [
            (
                vec![3, 4, 5],
                vec![
                    vec![2],
                    vec![1, 2],
                    vec![0],
                    vec![0, 1],
                    vec![0, 1, 2],
                    vec![1],
                    vec![0, 2],
                ],
            ),
            (
                vec![64, 2, 24, 24],
                vec![vec![1, 3], vec![0, 2], vec![0, 3], vec![0, 1, 3], vec![2]],
            ),
        ];
        for (shape, all) in cases {
            let n: usize = shape.iter().product();
            let x = Tensor::f64(
                shape.clone(),
                (0..n).map(|i| (i as f64 * 0.7).sin()).collect(),
            );
            reduce_cases(&x, &shape, &all);
        }
    }

    fn reduce_cases(x: &Tensor, shape: &[usize], all: &[Vec<usize>]) {
        for axes in all {
            for keep in [false, true] {
                let got = reduce_sum(x, axes, keep).unwrap();
                let (out, map) = reduce_map(shape, axes, keep);
                let Data::F64(v) = &x.data else {
                    unreachable!()
                };
                let mut want = vec![0.0; out.iter().product()];
                for (a, &m) in v.iter().zip(&map) {
                    want[m] += a;
                }
                assert_eq!(got.shape, out, "{axes:?} {keep}");
                assert_eq!(got.data, Data::F64(want), "{axes:?} {keep}");
            }
        }
    }

    /// Every fast path of `zip_bcast` against the general broadcasting loop.
    #[test]
    fn binary_fast_paths_equal_the_general_loop() {
        let shapes: [(&[usize], &[usize]); 13] = [
            // Middle-axis broadcasts (DPA-2's attention weights by a switch of j or k),
            // run by run; also runs of one, a single element, and one large enough to be
            // split between threads at a run that is not the first.
            (&[3, 2, 4, 4], &[3, 1, 1, 4]),
            (&[3, 2, 4, 4], &[3, 1, 4, 1]),
            (&[3, 1, 4, 1], &[3, 2, 1, 4]),
            (&[1, 1], &[1]),
            (&[97, 3, 61, 7], &[97, 1, 61, 1]),
            (&[2, 3, 4], &[2, 3, 4]),
            (&[2, 3, 4], &[4]),
            (&[2, 3, 4], &[1, 1, 4]),
            (&[2, 3, 4], &[2, 3, 1]),
            (&[2, 3, 1], &[2, 3, 4]),
            (&[2, 3, 4], &[2, 1, 1]),
            (&[2, 3, 4], &[1, 3, 1]),
            (&[3, 4], &[2, 1, 1]),
        ];
        let fill = |s: &[usize], k: f64| {
            let n = s.iter().product::<usize>();
            Tensor::f64(
                s.to_vec(),
                (0..n).map(|i| (i as f64 + k).sin() + 2.0).collect(),
            )
        };
        for (sa, sb) in shapes {
            let (a, b) = (fill(sa, 0.3), fill(sb, 1.7));
            let out = broadcast_shape(sa, sb).unwrap();
            let (Data::F64(p), Data::F64(q)) = (&a.data, &b.data) else {
                unreachable!()
            };
            for op in [
                Binary::Add,
                Binary::Sub,
                Binary::Mul,
                Binary::Div,
                Binary::Max,
            ] {
                let got = binary(op, &a, &b).unwrap();
                let f = |x: f64, y: f64| match op {
                    Binary::Add => x + y,
                    Binary::Sub => x - y,
                    Binary::Mul => x * y,
                    Binary::Div => x / y,
                    _ => x.max(y),
                };
                let mut want = vec![0.0; out.iter().product()];
                for_each_bcast(&out, [sa, sb], |i, [ia, ib]| want[i] = f(p[ia], q[ib]));
                assert_eq!(got.shape, out, "{sa:?} {sb:?}");
                assert_eq!(got.data, Data::F64(want), "{op:?} {sa:?} {sb:?}");
            }
        }
    }

    #[test]
    fn broadcasting_binary_and_reduce() {
        let a = Tensor::f64(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]);
        let b = Tensor::f64(vec![3], vec![10., 20., 30.]);
        let c = binary(Binary::Add, &a, &b).unwrap();
        assert_eq!(c.as_f64().unwrap(), &[11., 22., 33., 14., 25., 36.]);
        let col = Tensor::f64(vec![2, 1], vec![1., 2.]);
        let d = binary(Binary::Mul, &a, &col).unwrap();
        assert_eq!(d.as_f64().unwrap(), &[1., 2., 3., 8., 10., 12.]);
        let s = reduce_sum(&a, &[0], false).unwrap();
        assert_eq!(s.shape, vec![3]);
        assert_eq!(s.as_f64().unwrap(), &[5., 7., 9.]);
        let s = reduce_sum(&a, &[1], true).unwrap();
        assert_eq!(s.shape, vec![2, 1]);
        assert_eq!(s.as_f64().unwrap(), &[6., 15.]);
    }

    #[test]
    fn layout_ops() {
        let a = Tensor::f64(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]);
        let t = transpose(&a, &[1, 0]);
        assert_eq!(t.as_f64().unwrap(), &[1., 4., 2., 5., 3., 6.]);
        let s = slice(&a, 1, 1, 3).unwrap();
        assert_eq!(s.as_f64().unwrap(), &[2., 3., 5., 6.]);
        let p = pad(&s, 1, 1, 0).unwrap();
        assert_eq!(p.as_f64().unwrap(), &[0., 2., 3., 0., 5., 6.]);
        let c = concat(&[&a, &s], 1).unwrap();
        assert_eq!(
            c.as_f64().unwrap(),
            &[1., 2., 3., 2., 3., 4., 5., 6., 5., 6.]
        );
        let m = matmul(&a, &t).unwrap();
        assert_eq!(m.as_f64().unwrap(), &[14., 32., 32., 77.]);
    }

    #[test]
    fn gather_scatter_check_bounds() {
        let t = Tensor::f64(vec![3, 2], vec![1., 2., 3., 4., 5., 6.]);
        let i = Tensor::i32(vec![2], vec![2, 0]);
        let g = gather(&t, &i).unwrap();
        assert_eq!(g.as_f64().unwrap(), &[5., 6., 1., 2.]);
        let s = scatter_add(&i, &g, 3).unwrap();
        assert_eq!(s.as_f64().unwrap(), &[1., 2., 0., 0., 5., 6.]);
        assert!(gather(&t, &Tensor::i32(vec![1], vec![3])).is_err());
        assert!(gather(&t, &Tensor::i32(vec![1], vec![-1])).is_err());
    }
}

/// Softmax over the last axis: per row, shift by the maximum, exponentiate, normalise.
pub fn softmax(x: &Tensor) -> R<Tensor> {
    /// `exp(row - m)` of one row into `o`.
    type ExpRow<T> = fn(&[T], T, &mut [T]);
    fn rows<T: Float + Send + Sync>(v: &[T], len: usize, exp: ExpRow<T>) -> Vec<T> {
        let mut o = vec![T::default(); v.len()];
        if len == 0 {
            return o;
        }
        o.par_chunks_mut(len * 64)
            .zip(v.par_chunks(len * 64))
            .for_each(|(ob, xb)| {
                for (orow, xrow) in ob.chunks_mut(len).zip(xb.chunks(len)) {
                    let m = xrow
                        .iter()
                        .copied()
                        .fold(xrow[0], |a, b| if b > a { b } else { a });
                    exp(xrow, m, orow);
                    let z = orow.iter().fold(T::default(), |a, &b| a + b);
                    let inv = T::one() / z;
                    orow.iter_mut().for_each(|o| *o = *o * inv);
                }
            });
        o
    }
    let len = *x
        .shape
        .last()
        .ok_or_else(|| ExecError::Shape("softmax of a scalar".into()))?;
    // float64: `exp` vectorized (`fastmath::exp_flush`, as the fused attention takes it)
    // instead of a libm call per element.
    let rows_f64 = |v: &[f64], len| {
        rows(v, len, |x, m, o| {
            super::fastmath::map_into(x, o, |x| super::fastmath::exp_flush(x - m))
        })
    };
    let rows_f32 = |v: &[f32], len| {
        rows(v, len, |x, m, o| {
            o.iter_mut().zip(x).for_each(|(o, &x)| *o = (x - m).exp())
        })
    };
    let data = match &x.data {
        Data::F64(v) => Data::F64(rows_f64(v, len)),
        Data::F32(v) => Data::F32(rows_f32(v, len)),
        _ => return Err(ExecError::Type("softmax of integers".into())),
    };
    Ok(Tensor {
        shape: x.shape.clone(),
        data,
    })
}

/// The VJP of `softmax` from its output `y` and cotangent `g`: `y * (g - sum(g * y))` per
/// row of the last axis.
pub fn softmax_vjp(y: &Tensor, g: &Tensor) -> R<Tensor> {
    fn rows<T: Float + Send + Sync>(y: &[T], g: &[T], len: usize) -> Vec<T> {
        let mut o = vec![T::default(); y.len()];
        if len == 0 {
            return o;
        }
        o.par_chunks_mut(len * 64)
            .zip(y.par_chunks(len * 64).zip(g.par_chunks(len * 64)))
            .for_each(|(ob, (yb, gb))| {
                for ((orow, yrow), grow) in
                    ob.chunks_mut(len).zip(yb.chunks(len)).zip(gb.chunks(len))
                {
                    let s = yrow
                        .iter()
                        .zip(grow)
                        .fold(T::default(), |a, (&y, &g)| a + y * g);
                    for ((o, &y), &g) in orow.iter_mut().zip(yrow).zip(grow) {
                        *o = y * (g - s);
                    }
                }
            });
        o
    }
    if y.shape != g.shape {
        return Err(ExecError::Shape("softmax_vjp: shapes differ".into()));
    }
    let len = *y
        .shape
        .last()
        .ok_or_else(|| ExecError::Shape("softmax of a scalar".into()))?;
    let data = match (&y.data, &g.data) {
        (Data::F64(a), Data::F64(b)) => Data::F64(rows(a, b, len)),
        (Data::F32(a), Data::F32(b)) => Data::F32(rows(a, b, len)),
        _ => return Err(ExecError::Type("softmax_vjp dtypes".into())),
    };
    Ok(Tensor {
        shape: y.shape.clone(),
        data,
    })
}

#[cfg(test)]
mod softmax_tests {
    use super::*;

    #[test]
    fn softmax_rows_sum_to_one_and_match_the_definition() {
        let x = Tensor::f64(vec![2, 3], vec![1.0, 2.0, 3.0, -1e30, 0.5, 0.5]);
        let y = softmax(&x).unwrap();
        let v = y.as_f64().unwrap();
        let z: f64 = [1.0f64, 2.0, 3.0].iter().map(|a| (a - 3.0).exp()).sum();
        assert!((v[0] - (-2.0f64).exp() / z).abs() < 1e-15);
        assert_eq!(v[3], 0.0);
        assert!((v[4] - 0.5).abs() < 1e-15 && (v[5] - 0.5).abs() < 1e-15);
        let g = Tensor::f64(vec![2, 3], vec![1.0; 6]);
        let d = softmax_vjp(&y, &g).unwrap();
        // A constant cotangent has no effect through a softmax.
        assert!(d.as_f64().unwrap().iter().all(|x| x.abs() < 1e-15));
    }
}

/// `silut`'s constants at `thr`: the tail's slope `silu'(thr)` and offset `silu(thr)`.
pub(crate) fn silut_consts(thr: f64) -> (f64, f64) {
    let s = 1.0 / (1.0 + (-thr).exp());
    (s + thr * s * (1.0 - s), thr * s)
}

/// A fused activation, elementwise (`Op::Act`), with the vectorized `exp`/`tanh` of
/// `fastmath` (a few ulp from the elementary form's libm calls).
pub fn act(f: ActFn, x: &Tensor) -> R<Tensor> {
    fn run(f: ActFn, v: &[f64]) -> Vec<f64> {
        match f {
            ActFn::Silu => fill_par(v.len(), 1, |st, o| {
                let len = o.len();
                fm::map_into(&v[st..st + len], o, fm::silu)
            }),
            ActFn::Silut(thr) => {
                let (slope, konst) = silut_consts(thr);
                fill_par(v.len(), 1, |st, o| {
                    let len = o.len();
                    fm::silut_into(&v[st..st + len], o, thr, slope, konst)
                })
            }
        }
    }
    let data = match &x.data {
        Data::F64(v) => Data::F64(run(f, v)),
        Data::F32(v) => Data::F32(run32(f, v)),
        _ => return Err(ExecError::Type(format!("activation of {:?}", x.dtype()))),
    };
    Ok(Tensor {
        shape: x.shape.clone(),
        data,
    })
}

/// `g * act'(x)` (`Op::ActVjp`), vectorized like `act`.
pub fn act_vjp(f: ActFn, x: &Tensor, g: &Tensor) -> R<Tensor> {
    if x.shape != g.shape {
        return Err(ExecError::Shape(format!(
            "activation_vjp of {:?} and {:?}",
            x.shape, g.shape
        )));
    }
    fn run(f: ActFn, v: &[f64], gv: &[f64]) -> Vec<f64> {
        match f {
            ActFn::Silu => fill_par(v.len(), 1, |st, o| {
                let len = o.len();
                fm::map2_into(&v[st..st + len], &gv[st..st + len], o, |x, g| {
                    g * fm::silu_grad(x)
                })
            }),
            ActFn::Silut(thr) => {
                let (slope, _) = silut_consts(thr);
                fill_par(v.len(), 1, |st, o| {
                    let len = o.len();
                    fm::silut_vjp_into(&v[st..st + len], &gv[st..st + len], o, thr, slope)
                })
            }
        }
    }
    let data = match (&x.data, &g.data) {
        (Data::F64(v), Data::F64(gv)) => Data::F64(run(f, v, gv)),
        (Data::F32(v), Data::F32(gv)) => Data::F32(run32_vjp(f, v, gv)),
        _ => return Err(ExecError::Type("activation_vjp of mixed types".into())),
    };
    Ok(Tensor {
        shape: x.shape.clone(),
        data,
    })
}

/// The float32 forms, through float64 (f32 has no `From<f64>`); as exact as the elementary
/// form, whose float32 constants are rounded the same way.
pub(super) fn run32(f: ActFn, v: &[f32]) -> Vec<f32> {
    let w: Vec<f64> = v.iter().map(|&x| f64::from(x)).collect();
    let t = Tensor::f64(vec![w.len()], w);
    match act(f, &t).map(|t| t.data) {
        Ok(Data::F64(o)) => o.into_iter().map(|x| x as f32).collect(),
        _ => unreachable!("f64 activation"),
    }
}

pub(super) fn run32_vjp(f: ActFn, v: &[f32], g: &[f32]) -> Vec<f32> {
    let t = Tensor::f64(vec![v.len()], v.iter().map(|&x| f64::from(x)).collect());
    let u = Tensor::f64(vec![g.len()], g.iter().map(|&x| f64::from(x)).collect());
    match act_vjp(f, &t, &u).map(|t| t.data) {
        Ok(Data::F64(o)) => o.into_iter().map(|x| x as f32).collect(),
        _ => unreachable!("f64 activation"),
    }
}
