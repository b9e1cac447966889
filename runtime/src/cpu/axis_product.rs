//! The se_e2_a descriptor `d = g g[:axis]^T` of one row `g [m, c]` (`[m, axis]`), and its
//! VJP, over a block of rows: what a `Dense` op with `DenseInput::AxisProduct` forms in
//! scratch instead of reading the descriptor from memory.

use super::real::Real;
use super::reduce::dot;

simd_fn! {
/// `x0` gets `vec(g g[:axis]^T)` (`[m, axis]`) for each row `g [m, c]` of `src` (rows of
/// `w`); `gt` is scratch of `c * axis`. The common shapes (four channels, an axis of 4 to
/// 32) run with their sizes known to the compiler, so the loops over the axis vectorize.
pub(super) fn product_rows<T: Real>(src: &[T], w: usize, c: usize, axis: usize, gt: &mut [T], x0: &mut [T]) {
    let d = w / c * axis;
    match (c, axis) {
        (4, 4) => product_rows_n::<T, 4, 4>(src, w, x0),
        (4, 8) => product_rows_n::<T, 4, 8>(src, w, x0),
        (4, 16) => product_rows_n::<T, 4, 16>(src, w, x0),
        (4, 32) => product_rows_n::<T, 4, 32>(src, w, x0),
        _ => {
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
fn product_rows_n<T: Real, const C: usize, const A: usize>(src: &[T], w: usize, x0: &mut [T]) {
    for (g, dr) in src.chunks_exact(w).zip(x0.chunks_exact_mut(w / C * A)) {
        let mut gt = [[T::default(); A]; C];
        for (b, gb) in g.chunks_exact(C).take(A).enumerate() {
            for (k, &v) in gb.iter().enumerate() {
                gt[k][b] = v;
            }
        }
        for (ga, da) in g.chunks_exact(C).zip(dr.chunks_exact_mut(A)) {
            let mut row = [T::default(); A];
            for (&v, gk) in ga.iter().zip(&gt) {
                for (o, &t) in row.iter_mut().zip(gk) {
                    *o = *o + v * t;
                }
            }
            da.copy_from_slice(&row);
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
/// `acc`: scratch of `c * axis`); the common shapes as in `product_rows`.
pub(super) fn product_rows_vjp<T: Real>(
    src: &[T],
    dd: &[T],
    w: usize,
    c: usize,
    axis: usize,
    gt: &mut [T],
    acc: &mut [T],
    dx: &mut [T],
) {
    let d = w / c * axis;
    match (c, axis) {
        (4, 4) => product_rows_vjp_n::<T, 4, 4>(src, dd, w, dx),
        (4, 8) => product_rows_vjp_n::<T, 4, 8>(src, dd, w, dx),
        (4, 16) => product_rows_vjp_n::<T, 4, 16>(src, dd, w, dx),
        (4, 32) => product_rows_vjp_n::<T, 4, 32>(src, dd, w, dx),
        _ => {
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
    dx: &mut [T],
) {
    let d = w / C * A;
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
        for ((ga, da), oa) in g
            .chunks_exact(C)
            .zip(ddr.chunks_exact(A))
            .zip(dg.chunks_exact_mut(C))
        {
            let mut o = [T::default(); C];
            for (&v, h) in da.iter().zip(&head) {
                for (ok, &hk) in o.iter_mut().zip(h) {
                    *ok = *ok + v * hk;
                }
            }
            oa.copy_from_slice(&o);
            for (&v, ak) in ga.iter().zip(acc.iter_mut()) {
                for (s, &t) in ak.iter_mut().zip(da) {
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
