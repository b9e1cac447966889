//! Float64 and float32 GEMMs for the fused networks: `C (+)= A B` with `B` a layer's
//! weight matrix, packed once per op call instead of once per block of rows (which is what a general GEMM
//! does, and what cost a tenth of the fitting network's time at 64-row blocks).
//!
//! The packed layout is panels of `NR` = 8 columns (16 for float32), `[k][NR]` each,
//! zero-padded at the right edge. The AVX2 micro-kernel keeps a 6 x NR block of `C` in
//! twelve registers and streams a panel of `B` and six rows of `A` (read in place,
//! broadcast one element at a time), over `K` in slices of `KC` so the slice of `A` stays in
//! L2 while each panel slice sits in L1. With AVX-512 one register spans a panel row, and
//! the kernel keeps 24 rows of `C` (24 of the 32 registers): one broadcast of `A` per FMA,
//! which on Zen 4 takes the fitting shapes from 53-56 to 56-58 GFLOP/s (the core's peak is
//! 58.7). Without AVX2 and FMA, `matrixmultiply` on the unpacked matrix does the work.

const NR: usize = 8;
const NR32: usize = 16;
const MR: usize = 6;
const KC: usize = 256;

use super::simd::avx2_fma as simd;

/// The AVX-512 path's micro-kernel at one register width (`$w` lanes): `R` rows of `C`,
/// one register each, over `kc` steps of the panel `b` (row stride `$nr`), each step one
/// broadcast of `A` per row; the first `cols` columns stored (masked when fewer than `$w`).
macro_rules! register_row_kernel {
    (
        $(#[$doc:meta])*
        $name:ident, $t:ty, $nr:expr, $w:expr, $mask:ty,
        $zero:ident, $load:ident, $store:ident, $add:ident, $fma:ident, $set1:ident,
        $mload:ident, $mstore:ident
    ) => {
        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        #[inline]
        unsafe fn $name<const R: usize, const PACKED: bool>(
            kc: usize,
            a: *const $t,
            rs: usize,
            ps: usize,
            b: *const $t,
            c: *mut $t,
            ldc: usize,
            cols: usize,
            add: bool,
        ) {
            use std::arch::x86_64::*;
            let mut acc = [$zero(); R];
            for p in 0..kc {
                let bv = $load(b.add(p * $nr));
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    // Packed, the strides are the constants (1, R).
                    let at = if PACKED { p * R + r } else { r * rs + p * ps };
                    *acc_r = $fma($set1(*a.add(at)), bv, *acc_r);
                }
            }
            let mask = (((1u32 << cols) - 1) & ((1u32 << $w) - 1)) as $mask;
            for (r, &v) in acc.iter().enumerate() {
                let cr = c.add(r * ldc);
                if cols == $w {
                    let v = if add { $add(v, $load(cr)) } else { v };
                    $store(cr, v);
                } else {
                    let v = if add { $add(v, $mload(mask, cr)) } else { v };
                    $mstore(cr, mask, v);
                }
            }
        }
    };
}

/// One packed GEMM per element type: the struct, packing, blocking and micro-kernel, with
/// the register width and intrinsics as parameters.
macro_rules! packed_gemm {
    (
        $(#[$doc:meta])*
        $name:ident, $t:ty, $nr:expr, $half:expr, $kernel:ident, $mm:path,
        $zero:ident, $load:ident, $store:ident, $add:ident, $fma:ident, $bcast:ident,
        $kernel512:ident, $mask:ty, $zero512:ident, $load512:ident, $store512:ident,
        $add512:ident, $fma512:ident, $set1_512:ident, $mload512:ident, $mstore512:ident,
        $kernel_half:ident, $zero256:ident, $load256:ident, $store256:ident,
        $add256:ident, $fma256:ident, $set1_256:ident, $mload256:ident, $mstore256:ident
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
                // SAFETY: `c` is initialized.
                unsafe { self.gemm_raw(m, a, lda, (c.as_mut_ptr(), c.len()), ldc, accumulate) }
            }

            /// `C [m, n] = A B` into memory not yet written (a buffer the caller need not
            /// zero first): every element of the `m x n` block is written, none read.
            pub fn gemm_uninit(
                &self,
                m: usize,
                a: &[$t],
                lda: usize,
                c: &mut [std::mem::MaybeUninit<$t>],
                ldc: usize,
            ) {
                // SAFETY: without `accumulate` no element of `C` is read before it is written
                // (the kernels store first; later `KC` slices read what the first stored).
                unsafe { self.gemm_raw(m, a, lda, (c.as_mut_ptr().cast(), c.len()), ldc, false) }
            }

            /// `gemm` on `C` as a pointer and length.
            ///
            /// # Safety
            /// `c` is valid for `c.1` elements; with `accumulate` they are initialized.
            unsafe fn gemm_raw(
                &self,
                m: usize,
                a: &[$t],
                lda: usize,
                (cp, clen): (*mut $t, usize),
                ldc: usize,
                accumulate: bool,
            ) {
                let (k, n) = (self.k, self.n);
                if m == 0 || n == 0 {
                    return;
                }
                assert!(lda >= k && ldc >= n, "gemm strides");
                assert!(
                    a.len() >= (m - 1) * lda + k && clen >= (m - 1) * ldc + n,
                    "gemm sizes"
                );
                if k == 0 {
                    if !accumulate {
                        for r in 0..m {
                            for q in 0..n {
                                cp.add(r * ldc + q).write(0.0);
                            }
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
                            // beta 0: matrixmultiply does not read `C`.
                            if accumulate { 1.0 } else { 0.0 },
                            cp,
                            ldc as isize,
                            1,
                        );
                    }
                    return;
                }
                #[cfg(target_arch = "x86_64")]
                if super::simd::avx512() {
                    // SAFETY: the CPU has AVX-512 F; sizes checked above.
                    unsafe { self.gemm_avx512(m, a, lda, cp, ldc, accumulate) };
                    return;
                }
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `packed` is only set when AVX2 and FMA are present; sizes checked above.
                unsafe {
                    self.gemm_avx2(m, a, lda, cp, ldc, accumulate)
                }
            }

            /// The AVX-512 blocking: one 512-bit register spans a panel, and `MR512` rows of
            /// `C` (24 registers) are in flight, so each broadcast of `A` feeds one full-width
            /// FMA from memory.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn gemm_avx512(
                &self,
                m: usize,
                a: &[$t],
                lda: usize,
                c: *mut $t,
                ldc: usize,
                accumulate: bool,
            ) {
                let (k, n) = (self.k, self.n);
                let panels = n.div_ceil($nr);
                // The block of `A` the kernel reads, `[kc][rows]`: one pointer walks it, and
                // rows a power-of-two stride apart cannot evict each other from L1.
                // Copying costs a sixth of a small-`k` layer's time, so only strides that
                // alias (rows in at most four L1 sets) are packed.
                let aliased = num_gcd(lda * std::mem::size_of::<$t>(), 4096) >= 1024;
                let mut pa: Vec<$t> = if aliased { vec![0.0; KC * MR512] } else { Vec::new() };
                // Panels per pass over the rows: their `kc` slices (at most `L2_PANELS`
                // bytes) stay in L2 while every row group of `A` runs through them. A wide
                // `B` (a fitting layer's transpose, 1600 columns) otherwise comes from L3
                // or memory once per group of `MR512` rows instead of once per call.
                let block = (L2_PANELS / (KC.min(k) * $nr * std::mem::size_of::<$t>())).max(1);
                for k0 in (0..k).step_by(KC) {
                    let kc = KC.min(k - k0);
                    let add = accumulate || k0 > 0;
                    for j0 in (0..panels).step_by(block) {
                        let mut i = 0;
                        while i < m {
                            let rows = MR512.min(m - i);
                            // An aliased `A` is copied again for each block of panels: a
                            // copy per `8 x block` FMAs of the block's panels.
                            let (ap, rs, ps) = if aliased {
                                for r in 0..rows {
                                    let src = &a[(i + r) * lda + k0..(i + r) * lda + k0 + kc];
                                    for (p, &v) in src.iter().enumerate() {
                                        *pa.get_unchecked_mut(p * rows + r) = v;
                                    }
                                }
                                (pa.as_ptr(), 1, rows)
                            } else {
                                (a.as_ptr().add(i * lda + k0), lda, 1)
                            };
                            for j in j0..panels.min(j0 + block) {
                                let b = self.data.as_ptr().add((j * k + k0) * $nr);
                                let cols = $nr.min(n - j * $nr);
                                let cp = c.add(i * ldc + j * $nr);
                                // A last panel of at most half a register's columns runs
                                // 256 bits wide: on Zen 4 two of those FMAs issue per cycle
                                // against one 512-bit one, so its zero padding costs half.
                                macro_rules! go {
                                    ($k:ident, $p:literal) => {
                                        rows_dispatch!($k, rows, $p, (kc, ap, rs, ps, b, cp, ldc, cols, add))
                                    };
                                }
                                match (aliased, cols <= $half) {
                                    (true, true) => go!($kernel_half, true),
                                    (true, false) => go!($kernel512, true),
                                    (false, true) => go!($kernel_half, false),
                                    (false, false) => go!($kernel512, false),
                                }
                            }
                            i += rows;
                        }
                    }
                }
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn gemm_avx2(
                &self,
                m: usize,
                a: &[$t],
                lda: usize,
                c: *mut $t,
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
                            let cp = c.add(i * ldc + j * $nr);
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

        register_row_kernel!(
            /// `C[0..R, 0..cols] (+)= A[0..R, 0..kc] B_panel[0..kc, 0..NR]`, `A` read through
            /// strides `(rs, ps)` or packed `[kc][R]`, one 512-bit register per row of `C`.
            $kernel512, $t, $nr, $nr, $mask,
            $zero512, $load512, $store512, $add512, $fma512, $set1_512, $mload512, $mstore512
        );
        register_row_kernel!(
            /// The same for a panel whose first `cols <= NR / 2` columns are wanted: one
            /// 256-bit register per row of `C`.
            $kernel_half, $t, $nr, $half, __mmask8,
            $zero256, $load256, $store256, $add256, $fma256, $set1_256, $mload256, $mstore256
        );
    };
}

fn num_gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        num_gcd(b, a % b)
    }
}

/// Rows of `C` per AVX-512 micro-kernel call: 24 accumulator registers of the 32.
const MR512: usize = 24;

/// Bytes of `B` panels one pass over the rows of `A` reuses: a quarter of a Zen 4 core's
/// 1 MiB L2, leaving room for `A`'s slice and `C`.
const L2_PANELS: usize = 256 * 1024;

/// `$kernel::<rows>(args)` for `rows` in `1..=MR512`: each row count its own unrolled copy.
macro_rules! rows_dispatch {
    ($kernel:ident, $rows:expr, $packed:literal, $args:tt) => {
        rows_dispatch!(@arms $kernel, $rows, $packed, $args;
            1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24)
    };
    (@arms $kernel:ident, $rows:expr, $packed:literal, $args:tt; $($r:literal)*) => {
        match $rows {
            $($r => $kernel::<$r, $packed> $args,)*
            _ => unreachable!("micro-kernel rows"),
        }
    };
}

packed_gemm!(
    /// A `k x n` float64 right-hand matrix, ready for `gemm`: panels of 8 columns.
    PackedB, f64, NR, 4, kernel, matrixmultiply::dgemm,
    _mm256_setzero_pd, _mm256_loadu_pd, _mm256_storeu_pd, _mm256_add_pd, _mm256_fmadd_pd,
    _mm256_broadcast_sd,
    kernel512, __mmask8, _mm512_setzero_pd, _mm512_loadu_pd, _mm512_storeu_pd,
    _mm512_add_pd, _mm512_fmadd_pd, _mm512_set1_pd, _mm512_maskz_loadu_pd, _mm512_mask_storeu_pd,
    kernel_half, _mm256_setzero_pd, _mm256_loadu_pd, _mm256_storeu_pd,
    _mm256_add_pd, _mm256_fmadd_pd, _mm256_set1_pd, _mm256_maskz_loadu_pd, _mm256_mask_storeu_pd
);

packed_gemm!(
    /// The float32 twin of `PackedB`: panels of 16 columns (two 8-lane registers).
    PackedB32, f32, NR32, 8, kernel32, matrixmultiply::sgemm,
    _mm256_setzero_ps, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_add_ps, _mm256_fmadd_ps,
    _mm256_broadcast_ss,
    kernel32_512, __mmask16, _mm512_setzero_ps, _mm512_loadu_ps, _mm512_storeu_ps,
    _mm512_add_ps, _mm512_fmadd_ps, _mm512_set1_ps, _mm512_maskz_loadu_ps, _mm512_mask_storeu_ps,
    kernel32_half, _mm256_setzero_ps, _mm256_loadu_ps, _mm256_storeu_ps,
    _mm256_add_ps, _mm256_fmadd_ps, _mm256_set1_ps, _mm256_maskz_loadu_ps, _mm256_mask_storeu_ps
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
            // Wider than one pass's panels (`L2_PANELS`), ragged last panel.
            (50, 240, 1603),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i as f32) * 0.37).sin()).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i as f32) * 0.11).cos()).collect();
            let a64: Vec<f64> = a.iter().map(|&v| v as f64).collect();
            let b64: Vec<f64> = b.iter().map(|&v| v as f64).collect();
            let want = naive(m, k, n, &a64, &b64);
            let pb = PackedB32::new(&b, k, n, false);
            let mut c = vec![f32::NAN; m * n];
            pb.gemm(m, &a, k, &mut c, n, false);
            #[cfg(target_arch = "x86_64")]
            if crate::cpu::simd::avx512() {
                let mut c2 = vec![f32::NAN; m * n];
                // SAFETY: AVX-512 implies AVX2 and FMA; sizes as above.
                unsafe { pb.gemm_avx2(m, &a, k, c2.as_mut_ptr(), n, false) };
                assert_eq!(c, c2, "{m}x{k}x{n}: the two kernels add in the same order");
            }
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
            // A fitting layer's transpose: many passes over the panels, ragged ends.
            (50, 240, 1603),
        ] {
            let a: Vec<f64> = (0..m * k).map(|i| ((i as f64) * 0.37).sin()).collect();
            let b: Vec<f64> = (0..k * n).map(|i| ((i as f64) * 0.11).cos()).collect();
            let want = naive(m, k, n, &a, &b);
            let pb = PackedB::new(&b, k, n, false);
            let mut c = vec![f64::NAN; m * n];
            pb.gemm(m, &a, k, &mut c, n, false);
            // The AVX2 kernel, where the AVX-512 one ran above.
            #[cfg(target_arch = "x86_64")]
            if crate::cpu::simd::avx512() {
                let mut c2 = vec![f64::NAN; m * n];
                // SAFETY: AVX-512 implies AVX2 and FMA; sizes as above.
                unsafe { pb.gemm_avx2(m, &a, k, c2.as_mut_ptr(), n, false) };
                for (x, y) in c2.iter().zip(&want) {
                    assert!((x - y).abs() < 1e-12 * (1.0 + y.abs()), "{m}x{k}x{n} avx2");
                }
            }
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

    #[test]
    fn strided_rows_that_alias_in_cache_give_the_same_product() {
        // lda = 512 doubles (4 KiB): the AVX-512 path packs A; lda = 300 it reads in place.
        for lda in [512, 300] {
            let (m, k, n) = (53, 290, 21);
            let a: Vec<f64> = (0..m * lda).map(|i| ((i as f64) * 0.29).sin()).collect();
            let b: Vec<f64> = (0..k * n).map(|i| ((i as f64) * 0.13).cos()).collect();
            let dense: Vec<f64> = (0..m)
                .flat_map(|i| a[i * lda..i * lda + k].to_vec())
                .collect();
            let want = naive(m, k, n, &dense, &b);
            let pb = PackedB::new(&b, k, n, false);
            let mut c = vec![0.5; m * 40];
            pb.gemm(m, &a, lda, &mut c, 40, true);
            for i in 0..m {
                for q in 0..n {
                    let (x, y) = (c[i * 40 + q], want[i * n + q] + 0.5);
                    assert!(
                        (x - y).abs() < 1e-12 * (1.0 + y.abs()),
                        "lda {lda}: {x} {y}"
                    );
                }
                assert!(c[i * 40 + n..(i + 1) * 40].iter().all(|&v| v == 0.5));
            }
        }
    }
}
