//! The float types the fused kernels are generic over.

use std::ops::{Add, Div, Mul, Neg, Sub};

use dpc_compiler::graph::Data;

/// The element types the kernels run in.
pub trait Real:
    Copy
    + Send
    + Sync
    + Default
    + PartialEq
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + 'static
{
    const ONE: Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn sqrt(self) -> Self;
    /// `self * a + b`, rounded once (an FMA instruction where the code is compiled for one).
    fn mul_add(self, a: Self, b: Self) -> Self;
    /// `x <- e^x` (vectorized; underflow flushed to 0).
    fn exp_in_place(x: &mut [Self]);
    /// `C [m, n] = alpha A B + beta C` with every operand read through (row, column)
    /// strides: small GEMMs on unpacked operands (`matrixmultiply`).
    ///
    /// # Safety
    /// Every element the strides reach must lie inside its operand's allocation.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_strided(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: (*const Self, isize, isize),
        b: (*const Self, isize, isize),
        beta: Self,
        c: (*mut Self, isize, isize),
    );
    fn tanh_in_place(x: &mut [Self]);
    /// `x <- tanh(x + b)` for `x` rows of `b`'s width.
    fn bias_tanh_in_place(x: &mut [Self], b: &[Self]);
    /// A weight matrix prepared as the right operand of `gemm_packed`.
    type Packed: Send + Sync;
    /// `B = w` (`w` row-major `[k, n]`) or `B = w^T` (`w` row-major `[n, k]`).
    fn pack(w: &[Self], k: usize, n: usize, transpose: bool) -> Self::Packed;
    /// The executor's packed matrix of weight tensor `key.0` (transposed: `key.1`).
    fn cached(packs: &super::net::Packs, key: (usize, bool)) -> Option<&Self::Packed>;
    /// `C [m, n] (+)= A [m, k] B` with row strides `lda`, `ldc`.
    fn gemm_packed(
        b: &Self::Packed,
        m: usize,
        a: &[Self],
        lda: usize,
        c: &mut [Self],
        ldc: usize,
        accumulate: bool,
    );
    /// `C [m, n] = A [m, k] B` into a buffer not yet written: all of it is written.
    fn gemm_packed_uninit(
        b: &Self::Packed,
        m: usize,
        a: &[Self],
        lda: usize,
        c: &mut [std::mem::MaybeUninit<Self>],
        ldc: usize,
    );
    fn slice(d: &Data) -> Option<&[Self]>;
    fn wrap(v: Vec<Self>) -> Data;
}

impl Real for f64 {
    const ONE: f64 = 1.0;
    fn from_f64(v: f64) -> f64 {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn mul_add(self, a: f64, b: f64) -> f64 {
        f64::mul_add(self, a, b)
    }
    #[inline(always)]
    fn sqrt(self) -> f64 {
        f64::sqrt(self)
    }
    fn exp_in_place(x: &mut [f64]) {
        super::fastmath::exp_in_place(x)
    }
    unsafe fn gemm_strided(
        m: usize,
        k: usize,
        n: usize,
        alpha: f64,
        a: (*const f64, isize, isize),
        b: (*const f64, isize, isize),
        beta: f64,
        c: (*mut f64, isize, isize),
    ) {
        // SAFETY: the caller's contract.
        unsafe {
            matrixmultiply::dgemm(
                m, k, n, alpha, a.0, a.1, a.2, b.0, b.1, b.2, beta, c.0, c.1, c.2,
            )
        }
    }
    fn tanh_in_place(x: &mut [f64]) {
        super::fastmath::tanh_in_place(x)
    }
    fn bias_tanh_in_place(x: &mut [f64], b: &[f64]) {
        super::fastmath::bias_tanh_in_place(x, b)
    }
    type Packed = super::gemm::PackedB;
    fn pack(w: &[f64], k: usize, n: usize, transpose: bool) -> Self::Packed {
        super::gemm::PackedB::new(w, k, n, transpose)
    }
    fn cached(packs: &super::net::Packs, key: (usize, bool)) -> Option<&Self::Packed> {
        packs.f64.get(&key)
    }
    fn gemm_packed(
        b: &Self::Packed,
        m: usize,
        a: &[f64],
        lda: usize,
        c: &mut [f64],
        ldc: usize,
        accumulate: bool,
    ) {
        b.gemm(m, a, lda, c, ldc, accumulate)
    }
    fn gemm_packed_uninit(
        b: &Self::Packed,
        m: usize,
        a: &[f64],
        lda: usize,
        c: &mut [std::mem::MaybeUninit<f64>],
        ldc: usize,
    ) {
        b.gemm_uninit(m, a, lda, c, ldc)
    }
    fn slice(d: &Data) -> Option<&[f64]> {
        match d {
            Data::F64(v) => Some(v),
            _ => None,
        }
    }
    fn wrap(v: Vec<f64>) -> Data {
        Data::F64(v)
    }
}

impl Real for f32 {
    const ONE: f32 = 1.0;
    fn from_f64(v: f64) -> f32 {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn mul_add(self, a: f32, b: f32) -> f32 {
        f32::mul_add(self, a, b)
    }
    #[inline(always)]
    fn sqrt(self) -> f32 {
        f32::sqrt(self)
    }
    fn exp_in_place(x: &mut [f32]) {
        super::fastmath::exp_in_place_f32(x)
    }
    unsafe fn gemm_strided(
        m: usize,
        k: usize,
        n: usize,
        alpha: f32,
        a: (*const f32, isize, isize),
        b: (*const f32, isize, isize),
        beta: f32,
        c: (*mut f32, isize, isize),
    ) {
        // SAFETY: the caller's contract.
        unsafe {
            matrixmultiply::sgemm(
                m, k, n, alpha, a.0, a.1, a.2, b.0, b.1, b.2, beta, c.0, c.1, c.2,
            )
        }
    }
    fn tanh_in_place(x: &mut [f32]) {
        super::fastmath::tanh_in_place_f32(x)
    }
    fn bias_tanh_in_place(x: &mut [f32], b: &[f32]) {
        super::fastmath::bias_tanh_in_place_f32(x, b)
    }
    type Packed = super::gemm::PackedB32;
    fn pack(w: &[f32], k: usize, n: usize, transpose: bool) -> Self::Packed {
        super::gemm::PackedB32::new(w, k, n, transpose)
    }
    fn cached(packs: &super::net::Packs, key: (usize, bool)) -> Option<&Self::Packed> {
        packs.f32.get(&key)
    }
    fn gemm_packed(
        b: &Self::Packed,
        m: usize,
        a: &[f32],
        lda: usize,
        c: &mut [f32],
        ldc: usize,
        accumulate: bool,
    ) {
        b.gemm(m, a, lda, c, ldc, accumulate)
    }
    fn gemm_packed_uninit(
        b: &Self::Packed,
        m: usize,
        a: &[f32],
        lda: usize,
        c: &mut [std::mem::MaybeUninit<f32>],
        ldc: usize,
    ) {
        b.gemm_uninit(m, a, lda, c, ldc)
    }
    fn slice(d: &Data) -> Option<&[f32]> {
        match d {
            Data::F32(v) => Some(v),
            _ => None,
        }
    }
    fn wrap(v: Vec<f32>) -> Data {
        Data::F32(v)
    }
}
