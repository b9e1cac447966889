//! Float64 and float32 GEMMs for the fused networks: `C (+)= A B` with `B` a layer's
//! weight matrix, packed once per op call instead of once per block of rows (which is what a general GEMM
//! does, and what cost a tenth of the fitting network's time at 64-row blocks).
//!
//! The packed layout is panels of `NR` = 8 columns (16 for float32), `[k][NR]` each,
//! zero-padded at the right edge. The micro-kernel keeps a 6 x NR block of `C` in twelve
//! AVX2 registers and streams
//! a panel of `B` and six rows of `A` (read in place, broadcast one element at a time), over
//! `K` in slices of `KC` so the slice of `A` stays in L2 while each panel slice sits in L1.
//! Without AVX2 and FMA, `matrixmultiply` on the unpacked matrix does the work.

const NR: usize = 8;
const NR32: usize = 16;
const MR: usize = 6;
const KC: usize = 256;

use super::simd::avx2_fma as simd;

/// One packed GEMM per element type: the struct, packing, blocking and micro-kernel, with
/// the register width and intrinsics as parameters.
macro_rules! packed_gemm {
    (
        $(#[$doc:meta])*
        $name:ident, $t:ty, $nr:expr, $half:expr, $kernel:ident, $mm:path,
        $zero:ident, $load:ident, $store:ident, $add:ident, $fma:ident, $bcast:ident
    ) => {
        $(#[$doc])*
        pub struct $name {
            k: usize,
            n: usize,
            /// The panels (with AVX2 and FMA), else the matrix row-major.
            data: Vec<$t>,
            packed: bool,
        }

        impl $name {
            /// `B = w` for `w` row-major `[k, n]`, or `B = w^T` for `w` row-major `[n, k]` when
            /// `transpose`.
            pub fn new(w: &[$t], k: usize, n: usize, transpose: bool) -> $name {
                assert_eq!(w.len(), k * n, "packed matrix size");
                let at = |p: usize, q: usize| {
                    if transpose {
                        w[q * k + p]
                    } else {
                        w[p * n + q]
                    }
                };
                if !simd() {
                    let data = (0..k)
                        .flat_map(|p| (0..n).map(move |q| (p, q)))
                        .map(|(p, q)| at(p, q))
                        .collect();
                    return $name {
                        k,
                        n,
                        data,
                        packed: false,
                    };
                }
                let panels = n.div_ceil($nr);
                let mut data = vec![0.0; panels * k * $nr];
                for j in 0..panels {
                    for p in 0..k {
                        for q in 0..$nr.min(n - j * $nr) {
                            data[(j * k + p) * $nr + q] = at(p, j * $nr + q);
                        }
                    }
                }
                $name {
                    k,
                    n,
                    data,
                    packed: true,
                }
            }

            /// `C [m, n] = A [m, k] B` (or `C += A B` with `accumulate`); `A` and `C` row-major with
            /// row strides `lda` and `ldc`.
            pub fn gemm(
                &self,
                m: usize,
                a: &[$t],
                lda: usize,
                c: &mut [$t],
                ldc: usize,
                accumulate: bool,
            ) {
                let (k, n) = (self.k, self.n);
                if m == 0 || n == 0 {
                    return;
                }
                assert!(lda >= k && ldc >= n, "gemm strides");
                assert!(
                    a.len() >= (m - 1) * lda + k && c.len() >= (m - 1) * ldc + n,
                    "gemm sizes"
                );
                if k == 0 {
                    if !accumulate {
                        for r in 0..m {
                            c[r * ldc..r * ldc + n].fill(0.0);
                        }
                    }
                    return;
                }
                if !self.packed {
                    // SAFETY: sizes checked above; matrixmultiply reads/writes within them.
                    unsafe {
                        $mm(
                            m,
                            k,
                            n,
                            1.0,
                            a.as_ptr(),
                            lda as isize,
                            1,
                            self.data.as_ptr(),
                            n as isize,
                            1,
                            if accumulate { 1.0 } else { 0.0 },
                            c.as_mut_ptr(),
                            ldc as isize,
                            1,
                        );
                    }
                    return;
                }
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `packed` is only set when AVX2 and FMA are present; sizes checked above.
                unsafe {
                    self.gemm_avx2(m, a, lda, c, ldc, accumulate)
                }
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn gemm_avx2(
                &self,
                m: usize,
                a: &[$t],
                lda: usize,
                c: &mut [$t],
                ldc: usize,
                accumulate: bool,
            ) {
                let (k, n) = (self.k, self.n);
                let panels = n.div_ceil($nr);
                for k0 in (0..k).step_by(KC) {
                    let kc = KC.min(k - k0);
                    let add = accumulate || k0 > 0;
                    for j in 0..panels {
                        let b = self.data.as_ptr().add((j * k + k0) * $nr);
                        let cols = $nr.min(n - j * $nr);
                        let mut i = 0;
                        while i < m {
                            let rows = MR.min(m - i);
                            let ap = a.as_ptr().add(i * lda + k0);
                            let cp = c.as_mut_ptr().add(i * ldc + j * $nr);
                            match rows {
                                6 => $kernel::<6>(kc, ap, lda, b, cp, ldc, cols, add),
                                5 => $kernel::<5>(kc, ap, lda, b, cp, ldc, cols, add),
                                4 => $kernel::<4>(kc, ap, lda, b, cp, ldc, cols, add),
                                3 => $kernel::<3>(kc, ap, lda, b, cp, ldc, cols, add),
                                2 => $kernel::<2>(kc, ap, lda, b, cp, ldc, cols, add),
                                _ => $kernel::<1>(kc, ap, lda, b, cp, ldc, cols, add),
                            }
                            i += rows;
                        }
                    }
                }
            }
        }

        /// `C[0..R, 0..cols] (+)= A[0..R, 0..kc] B_panel[0..kc, 0..8]`.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        #[inline]
        unsafe fn $kernel<const R: usize>(
            kc: usize,
            a: *const $t,
            lda: usize,
            b: *const $t,
            c: *mut $t,
            ldc: usize,
            cols: usize,
            add: bool,
        ) {
            use std::arch::x86_64::*;
            let mut acc = [[$zero(); 2]; R];
            for p in 0..kc {
                let b0 = $load(b.add(p * $nr));
                let b1 = $load(b.add(p * $nr + $half));
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let av = $bcast(&*a.add(r * lda + p));
                    acc_r[0] = $fma(av, b0, acc_r[0]);
                    acc_r[1] = $fma(av, b1, acc_r[1]);
                }
            }
            for (r, acc_r) in acc.iter().enumerate() {
                let cr = c.add(r * ldc);
                if cols == $nr {
                    let (mut v0, mut v1) = (acc_r[0], acc_r[1]);
                    if add {
                        v0 = $add(v0, $load(cr));
                        v1 = $add(v1, $load(cr.add($half)));
                    }
                    $store(cr, v0);
                    $store(cr.add($half), v1);
                } else {
                    let mut tmp: [$t; $nr] = [0.0; $nr];
                    $store(tmp.as_mut_ptr(), acc_r[0]);
                    $store(tmp.as_mut_ptr().add($half), acc_r[1]);
                    for (q, &t) in tmp.iter().enumerate().take(cols) {
                        let dst = cr.add(q);
                        *dst = if add { *dst + t } else { t };
                    }
                }
            }
        }
    };
}

packed_gemm!(
    /// A `k x n` float64 right-hand matrix, ready for `gemm`: panels of 8 columns.
    PackedB, f64, NR, 4, kernel, matrixmultiply::dgemm,
    _mm256_setzero_pd, _mm256_loadu_pd, _mm256_storeu_pd, _mm256_add_pd, _mm256_fmadd_pd,
    _mm256_broadcast_sd
);

packed_gemm!(
    /// The float32 twin of `PackedB`: panels of 16 columns (two 8-lane registers).
    PackedB32, f32, NR32, 8, kernel32, matrixmultiply::sgemm,
    _mm256_setzero_ps, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_add_ps, _mm256_fmadd_ps,
    _mm256_broadcast_ss
);

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, k: usize, n: usize, a: &[f64], b: &[f64]) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for p in 0..k {
                for q in 0..n {
                    c[i * n + q] += a[i * k + p] * b[p * n + q];
                }
            }
        }
        c
    }

    #[test]
    fn float32_matches_the_naive_product() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (7, 3, 5),
            (64, 300, 240),
            (13, 257, 17),
            (6, 512, 16),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i as f32) * 0.37).sin()).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i as f32) * 0.11).cos()).collect();
            let a64: Vec<f64> = a.iter().map(|&v| v as f64).collect();
            let b64: Vec<f64> = b.iter().map(|&v| v as f64).collect();
            let want = naive(m, k, n, &a64, &b64);
            let pb = PackedB32::new(&b, k, n, false);
            let mut c = vec![f32::NAN; m * n];
            pb.gemm(m, &a, k, &mut c, n, false);
            for (x, y) in c.iter().zip(&want) {
                assert!(
                    (*x as f64 - y).abs() < 1e-4 * (1.0 + y.abs()),
                    "{m}x{k}x{n}: {x} {y}"
                );
            }
        }
    }

    #[test]
    fn matches_the_naive_product_on_every_edge() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (7, 3, 5),
            (64, 300, 240),
            (13, 257, 17),
            (6, 512, 8),
            (5, 1, 100),
            (64, 240, 1),
        ] {
            let a: Vec<f64> = (0..m * k).map(|i| ((i as f64) * 0.37).sin()).collect();
            let b: Vec<f64> = (0..k * n).map(|i| ((i as f64) * 0.11).cos()).collect();
            let want = naive(m, k, n, &a, &b);
            let pb = PackedB::new(&b, k, n, false);
            let mut c = vec![f64::NAN; m * n];
            pb.gemm(m, &a, k, &mut c, n, false);
            for (x, y) in c.iter().zip(&want) {
                assert!(
                    (x - y).abs() < 1e-12 * (1.0 + y.abs()),
                    "{m}x{k}x{n}: {x} {y}"
                );
            }
            pb.gemm(m, &a, k, &mut c, n, true);
            for (x, y) in c.iter().zip(&want) {
                assert!(
                    (x - 2.0 * y).abs() < 1e-12 * (1.0 + y.abs()),
                    "{m}x{k}x{n} +="
                );
            }
            // The transposed packing of b^T gives the same product.
            let mut bt = vec![0.0; k * n];
            for p in 0..k {
                for q in 0..n {
                    bt[q * k + p] = b[p * n + q];
                }
            }
            let pt = PackedB::new(&bt, k, n, true);
            let mut c2 = vec![0.0; m * n];
            pt.gemm(m, &a, k, &mut c2, n, false);
            for (x, y) in c2.iter().zip(&want) {
                assert!(
                    (x - y).abs() < 1e-12 * (1.0 + y.abs()),
                    "{m}x{k}x{n} transposed"
                );
            }
        }
    }
}
