//! Sums, dot products and maxima over slices in eight interleaved partial results, so the
//! loops vectorize and their additions do not wait on each other (a plain fold is one
//! serial chain: the compiler may not reorder float additions).

use super::real::Real;

const L: usize = 8;

/// `sum a_i b_i`.
#[inline(always)]
pub(super) fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::default(); L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let tail = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .fold(T::default(), |t, (&x, &y)| t + x * y);
    for (x, y) in ca.zip(cb) {
        for k in 0..L {
            acc[k] = acc[k] + x[k] * y[k];
        }
    }
    fold8(acc) + tail
}

/// `sum a_i`.
#[inline(always)]
pub(super) fn sum<T: Real>(a: &[T]) -> T {
    let mut acc = [T::default(); L];
    let ca = a.chunks_exact(L);
    let tail = ca.remainder().iter().fold(T::default(), |t, &x| t + x);
    for x in ca {
        for k in 0..L {
            acc[k] = acc[k] + x[k];
        }
    }
    fold8(acc) + tail
}

/// `max a_i` of a non-empty slice (a NaN element may or may not win).
#[inline(always)]
pub(super) fn max<T: Real>(a: &[T]) -> T {
    let big = |x: T, y: T| if y > x { y } else { x };
    let mut acc = [a[0]; L];
    let ca = a.chunks_exact(L);
    let tail = ca.remainder().iter().fold(a[0], |t, &x| big(t, x));
    for x in ca {
        for k in 0..L {
            acc[k] = big(acc[k], x[k]);
        }
    }
    acc.into_iter().fold(tail, big)
}

#[inline(always)]
fn fold8<T: Real>(a: [T; L]) -> T {
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reductions_match_the_plain_folds() {
        for n in [1usize, 7, 8, 9, 72, 101] {
            let a: Vec<f64> = (0..n)
                .map(|i| ((i * 37 % 11) as f64 - 5.0) * 0.25)
                .collect();
            let b: Vec<f64> = (0..n).map(|i| (i as f64).sin()).collect();
            let d: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - d).abs() < 1e-12);
            assert!((sum(&a) - a.iter().sum::<f64>()).abs() < 1e-12);
            assert_eq!(max(&b), b.iter().copied().fold(f64::MIN, f64::max));
        }
    }
}
