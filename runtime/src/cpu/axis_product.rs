//! The se_e2_a descriptor `d = g g[:axis]^T` of one row `g [m, c]` (`[m, axis]`), and its
//! VJP, over a block of rows: what a `Dense` op with `DenseInput::AxisProduct` forms in
//! scratch instead of reading the descriptor from memory.
//!
//! The head `d[:axis, :axis]` is symmetric (`d[i, j]` and `d[j, i]` are the same products
//! summed in the same order, so the same bits), so the fused kernels can take it folded:
//! only `j <= i` of the head, with the network's first layer summing the two weight rows
//! of each pair (`fold_rows`). The fitting's largest GEMM, forward and backward, then has
//! `axis (axis - 1) / 2` fewer rows of `K` (se_e2_a_big: 1480 instead of 1600).

use super::real::Real;
use super::reduce::dot;

/// Whether the `(channels, axis)` of an axis product have the folded layout (the shapes
/// with their own kernels below), for rows of `m >= axis`.
pub(super) fn foldable(c: usize, axis: usize, m: usize) -> bool {
    c == 4 && matches!(axis, 4 | 8 | 16 | 32) && m >= axis
}

/// Numbers in a row's folded product: `m` rows of `axis`, less the head's upper triangle.
pub(super) fn folded_width(m: usize, axis: usize) -> usize {
    m * axis - axis * (axis - 1) / 2
}

/// Numbers in a row's product, folded or not.
pub(super) fn product_width(m: usize, axis: usize, fold: bool) -> usize {
    if fold {
        folded_width(m, axis)
    } else {
        m * axis
    }
}

/// Entries of row `i` of the product that the folded layout keeps (`j <= i` in the head).
#[inline(always)]
fn kept(fold: bool, i: usize, axis: usize) -> usize {
    if fold && i < axis {
        i + 1
    } else {
        axis
    }
}

/// A first layer's weights `w [m axis, n]` for the folded input: row `(i, j)`, `j < i <
/// axis`, gets the sum of the rows `(i, j)` and `(j, i)`, the rows `(j, i)` go, and the rest
/// stay, in the order `product_rows` writes the folded input.
pub(super) fn fold_rows<T: Real>(w: &[T], m: usize, axis: usize, n: usize) -> Vec<T> {
    assert_eq!(w.len(), m * axis * n, "fold_rows size");
    let mut out = Vec::with_capacity(folded_width(m, axis) * n);
    for i in 0..m {
        for j in 0..kept(true, i, axis) {
            let row = &w[(i * axis + j) * n..(i * axis + j + 1) * n];
            if j < i && i < axis {
                let twin = &w[(j * axis + i) * n..(j * axis + i + 1) * n];
                out.extend(row.iter().zip(twin).map(|(&a, &b)| a + b));
            } else {
                out.extend_from_slice(row);
            }
        }
    }
    out
}

simd_fn! {
/// `x0` gets `vec(g g[:axis]^T)` (`[m, axis]`) for each row `g [m, c]` of `src` (rows of
/// `w`), or with `fold` its folded layout (`foldable` shapes only); `gt` is scratch of
/// `c * axis`. The common shapes (four channels, an axis of 4 to 32) run with their sizes
/// known to the compiler, so the loops over the axis vectorize.
pub(super) fn product_rows<T: Real>(src: &[T], w: usize, c: usize, axis: usize, fold: bool, gt: &mut [T], x0: &mut [T]) {
    let d = w / c * axis;
    match (c, axis) {
        (4, 4) => product_rows_n::<T, 4, 4>(src, w, fold, x0),
        (4, 8) => product_rows_n::<T, 4, 8>(src, w, fold, x0),
        (4, 16) => product_rows_n::<T, 4, 16>(src, w, fold, x0),
        (4, 32) => product_rows_n::<T, 4, 32>(src, w, fold, x0),
        _ => {
            assert!(!fold, "a folded axis product of {c} channels, axis {axis}");
            for (g, dr) in src.chunks_exact(w).zip(x0.chunks_exact_mut(d)) {
                head_transposed(g, c, axis, gt);
                for (ga, da) in g.chunks_exact(c).zip(dr.chunks_exact_mut(axis)) {
                    da.fill(T::default());
                    for (&v, gk) in ga.iter().zip(gt.chunks_exact(axis)) {
                        for (o, &t) in da.iter_mut().zip(gk) {
                            *o = *o + v * t;
                        }
                    }
                }
            }
        }
    }
}
}

/// `product_rows` for `c == C`, `axis == A`: the same sums in the same order.
#[inline(always)]
fn product_rows_n<T: Real, const C: usize, const A: usize>(
    src: &[T],
    w: usize,
    fold: bool,
    x0: &mut [T],
) {
    let d = product_width(w / C, A, fold);
    for (g, dr) in src.chunks_exact(w).zip(x0.chunks_exact_mut(d)) {
        let mut gt = [[T::default(); A]; C];
        for (b, gb) in g.chunks_exact(C).take(A).enumerate() {
            for (k, &v) in gb.iter().enumerate() {
                gt[k][b] = v;
            }
        }
        let mut at = 0;
        for (i, ga) in g.chunks_exact(C).enumerate() {
            let mut row = [T::default(); A];
            for (&v, gk) in ga.iter().zip(&gt) {
                for (o, &t) in row.iter_mut().zip(gk) {
                    *o = *o + v * t;
                }
            }
            let k = kept(fold, i, A);
            dr[at..at + k].copy_from_slice(&row[..k]);
            at += k;
        }
    }
}

/// `gt [c, axis] = g[:axis]^T` for `g [m, c]`.
#[inline(always)]
fn head_transposed<T: Real>(g: &[T], c: usize, axis: usize, gt: &mut [T]) {
    for (b, gb) in g.chunks_exact(c).take(axis).enumerate() {
        for (k, &v) in gb.iter().enumerate() {
            gt[k * axis + b] = v;
        }
    }
}

simd_fn! {
/// `dx` gets, for each row `g [m, c]` of `src` and its cotangent `dd [m, axis]` of
/// `d = g g[:axis]^T`, `dg = dd g[:axis]` plus `dd^T g` on the first `axis` rows (`gt`,
/// `acc`: scratch of `c * axis`); the common shapes as in `product_rows`. With `fold`, `dd`
/// is the cotangent of the folded layout: each kept head entry `(i, j)`, `j < i`, carries
/// the pair's sum, and the formula with zeros at `(j, i)` gives the same derivative.
pub(super) fn product_rows_vjp<T: Real>(
    src: &[T],
    dd: &[T],
    w: usize,
    shape: (usize, usize, bool),
    gt: &mut [T],
    acc: &mut [T],
    dx: &mut [T],
) {
    // `(c, axis, fold)`.
    let (c, axis, fold) = shape;
    let d = w / c * axis;
    match (c, axis) {
        (4, 4) => product_rows_vjp_n::<T, 4, 4>(src, dd, w, fold, dx),
        (4, 8) => product_rows_vjp_n::<T, 4, 8>(src, dd, w, fold, dx),
        (4, 16) => product_rows_vjp_n::<T, 4, 16>(src, dd, w, fold, dx),
        (4, 32) => product_rows_vjp_n::<T, 4, 32>(src, dd, w, fold, dx),
        _ => {
            assert!(!fold, "a folded axis product of {c} channels, axis {axis}");
            for ((g, ddr), dg) in src.chunks_exact(w).zip(dd.chunks_exact(d)).zip(dx.chunks_exact_mut(w)) {
                head_transposed(g, c, axis, gt);
                acc.fill(T::default());
                for ((ga, da), oa) in g.chunks_exact(c).zip(ddr.chunks_exact(axis)).zip(dg.chunks_exact_mut(c)) {
                    for (o, gk) in oa.iter_mut().zip(gt.chunks_exact(axis)) {
                        *o = dot(da, gk);
                    }
                    // acc [c, axis] = (dd^T g)^T, one row of dd at a time.
                    for (&v, ak) in ga.iter().zip(acc.chunks_exact_mut(axis)) {
                        for (s, &t) in ak.iter_mut().zip(da) {
                            *s = *s + v * t;
                        }
                    }
                }
                for (a, oa) in dg.chunks_exact_mut(c).take(axis).enumerate() {
                    for (k, o) in oa.iter_mut().enumerate() {
                        *o = *o + acc[k * axis + a];
                    }
                }
            }
        }
    }
}
}

/// `product_rows_vjp` for `c == C`, `axis == A`, the first term summed along the channels
/// (`dd[a, b] g[b, :]` for each `b`) so it vectorizes across them.
#[inline(always)]
fn product_rows_vjp_n<T: Real, const C: usize, const A: usize>(
    src: &[T],
    dd: &[T],
    w: usize,
    fold: bool,
    dx: &mut [T],
) {
    let d = product_width(w / C, A, fold);
    for ((g, ddr), dg) in src
        .chunks_exact(w)
        .zip(dd.chunks_exact(d))
        .zip(dx.chunks_exact_mut(w))
    {
        let mut head = [[T::default(); C]; A];
        for (h, gb) in head.iter_mut().zip(g.chunks_exact(C)) {
            h.copy_from_slice(gb);
        }
        let mut acc = [[T::default(); A]; C];
        let mut at = 0;
        for (i, (ga, oa)) in g.chunks_exact(C).zip(dg.chunks_exact_mut(C)).enumerate() {
            // The row's cotangent, zero past what the folded layout keeps.
            let k = kept(fold, i, A);
            let mut da = [T::default(); A];
            da[..k].copy_from_slice(&ddr[at..at + k]);
            at += k;
            let mut o = [T::default(); C];
            for (&v, h) in da.iter().zip(&head) {
                for (ok, &hk) in o.iter_mut().zip(h) {
                    *ok = *ok + v * hk;
                }
            }
            oa.copy_from_slice(&o);
            for (&v, ak) in ga.iter().zip(acc.iter_mut()) {
                for (s, &t) in ak.iter_mut().zip(&da) {
                    *s = *s + v * t;
                }
            }
        }
        for (a, oa) in dg.chunks_exact_mut(C).take(A).enumerate() {
            for (k, o) in oa.iter_mut().enumerate() {
                *o = *o + acc[k][a];
            }
        }
    }
}
