//! Run-time choice of the AVX2 + FMA (or AVX-512) build of a loop. The crate is compiled
//! for baseline x86-64 (SSE2), so plain Rust loops run two float64 lanes wide; the hot ones
//! get a second copy compiled for AVX2 and FMA, taken when the CPU has them.

/// Whether the CPU runs the AVX2 + FMA copies.
#[cfg(target_arch = "x86_64")]
pub fn avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(not(target_arch = "x86_64"))]
pub fn avx2_fma() -> bool {
    false
}

/// Whether the CPU runs the AVX-512 copies (F, DQ and VL, with AVX2 and FMA).
#[cfg(target_arch = "x86_64")]
pub fn avx512() -> bool {
    use std::arch::is_x86_feature_detected as has;
    avx2_fma() && has!("avx512f") && has!("avx512dq") && has!("avx512vl")
}

#[cfg(not(target_arch = "x86_64"))]
pub fn avx512() -> bool {
    false
}

/// A function generic over `T: Real`, compiled twice: as written, and for AVX2 and FMA,
/// the second chosen at run time. What it calls must be `#[inline(always)]` (or generic
/// and inlined) to be compiled for AVX2 with it; the GEMM and `tanh` dispatch themselves.
macro_rules! simd_fn {
    (
        $(#[$m:meta])*
        $vis:vis fn $name:ident<$t:ident: Real>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?
        $body:block
    ) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name<$t: Real>($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body<$t: Real>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2<$t: Real>($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if $crate::cpu::simd::avx2_fma() {
                // SAFETY: the CPU has AVX2 and FMA.
                return unsafe { avx2($($arg),*) };
            }
            body($($arg),*)
        }
    };
}
