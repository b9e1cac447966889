//! The fused embedding kernels (`Op::EmbedContract` and its VJP).
//!
//! For a block of centre atoms the whole embedding network runs on the block's neighbour
//! rows (one GEMM per layer), the result is contracted with each atom's environment rows,
//! and only the `[m, c]` contraction per atom is written out: the `[rows, m]` activations
//! stay in a per-block scratch that fits in cache. The VJP re-runs the network on the block,
//! keeping each layer's activation for its derivative, and back-propagates in place. Blocks
//! are independent and run on the rayon pool.

use std::ops::{Add, Mul};

use dpc_compiler::graph::{Act, Data, Mlp, Residual, Tensor};
use rayon::prelude::*;

use super::ExecError;

type R<T> = Result<T, ExecError>;

/// Neighbour rows per block: large enough for efficient GEMMs, small enough that a block's
/// activations stay in cache.
const ROWS_PER_BLOCK: usize = 1024;

/// The element types the kernels run in.
pub trait Real:
    Copy + Send + Sync + Default + PartialEq + Add<Output = Self> + Mul<Output = Self> + 'static
{
    const ONE: Self;
    fn from_f64(v: f64) -> Self;
    fn tanh_in_place(x: &mut [Self]);
    /// `C = alpha A B + beta C` with explicit strides (matrixmultiply's contract).
    ///
    /// # Safety
    /// The pointers and strides must describe valid `m x k`, `k x n` and `m x n` matrices.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
    fn slice(d: &Data) -> Option<&[Self]>;
    fn wrap(v: Vec<Self>) -> Data;
}

impl Real for f64 {
    const ONE: f64 = 1.0;
    fn from_f64(v: f64) -> f64 {
        v
    }
    fn tanh_in_place(x: &mut [f64]) {
        super::fastmath::tanh_in_place(x)
    }
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        a: *const f64,
        rsa: isize,
        csa: isize,
        b: *const f64,
        rsb: isize,
        csb: isize,
        beta: f64,
        c: *mut f64,
        rsc: isize,
        csc: isize,
    ) {
        matrixmultiply::dgemm(m, k, n, 1.0, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
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
    fn tanh_in_place(x: &mut [f32]) {
        super::fastmath::tanh_in_place_f32(x)
    }
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        a: *const f32,
        rsa: isize,
        csa: isize,
        b: *const f32,
        rsb: isize,
        csb: isize,
        beta: f32,
        c: *mut f32,
        rsc: isize,
        csc: isize,
    ) {
        matrixmultiply::sgemm(m, k, n, 1.0, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
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

/// One layer's weights in the kernel's element type.
struct Layer<T> {
    n_in: usize,
    n_out: usize,
    w: Vec<T>,
    b: Option<Vec<T>>,
    idt: Option<Vec<T>>,
    act: Act,
    residual: Residual,
}

fn layers<T: Real>(net: &Mlp) -> R<Vec<Layer<T>>> {
    let conv = |t: &Tensor| -> R<Vec<T>> {
        T::slice(&t.data)
            .map(|v| v.to_vec())
            .ok_or_else(|| ExecError::Type("fused network weights of another dtype".into()))
    };
    net.layers
        .iter()
        .map(|l| {
            Ok(Layer {
                n_in: l.n_in(),
                n_out: l.n_out(),
                w: conv(&l.w)?,
                b: l.b.as_deref().map(conv).transpose()?,
                idt: l.idt.as_deref().map(conv).transpose()?,
                act: l.act,
                residual: l.residual,
            })
        })
        .collect()
}

/// Run the network on `rows` inputs `x0 [rows]` (the network has one input). Returns every
/// layer's output `h_l [rows, out_l]`, and, for tanh layers, `t_l = tanh(z_l)` (the input of
/// the derivative) when `keep` is set.
fn forward<T: Real>(net: &[Layer<T>], x0: &[T], keep: bool) -> (Vec<T>, Vec<Option<Vec<T>>>) {
    let rows = x0.len();
    let mut h: Vec<T> = x0.to_vec();
    let mut kept = Vec::with_capacity(net.len());
    for l in net {
        let (n_in, n_out) = (l.n_in, l.n_out);
        let mut z = vec![T::default(); rows * n_out];
        if n_in == 1 {
            for r in 0..rows {
                let x = h[r];
                for (o, zo) in z[r * n_out..(r + 1) * n_out].iter_mut().enumerate() {
                    *zo = x * l.w[o];
                }
            }
        } else {
            // SAFETY: h is rows x n_in, w is n_in x n_out, z is rows x n_out, all row-major.
            unsafe {
                T::gemm(
                    rows,
                    n_in,
                    n_out,
                    h.as_ptr(),
                    n_in as isize,
                    1,
                    l.w.as_ptr(),
                    n_out as isize,
                    1,
                    T::default(),
                    z.as_mut_ptr(),
                    n_out as isize,
                    1,
                );
            }
        }
        if let Some(b) = &l.b {
            for row in z.chunks_exact_mut(n_out) {
                for (v, &bb) in row.iter_mut().zip(b) {
                    *v = *v + bb;
                }
            }
        }
        if l.act == Act::Tanh {
            T::tanh_in_place(&mut z);
        }
        kept.push((keep && l.act == Act::Tanh).then(|| z.clone()));
        if let Some(idt) = &l.idt {
            for row in z.chunks_exact_mut(n_out) {
                for (v, &s) in row.iter_mut().zip(idt) {
                    *v = *v * s;
                }
            }
        }
        match l.residual {
            Residual::None => {}
            Residual::Same => {
                for (v, &x) in z.iter_mut().zip(&h) {
                    *v = *v + x;
                }
            }
            Residual::Doubled => {
                for (row, xr) in z.chunks_exact_mut(n_out).zip(h.chunks_exact(n_in)) {
                    for (o, v) in row.iter_mut().enumerate() {
                        *v = *v + xr[o % n_in];
                    }
                }
            }
        }
        h = z;
    }
    (h, kept)
}

/// `rr [n, s, c]`'s sizes, checked.
fn dims(rr: &Tensor) -> R<(usize, usize, usize)> {
    match rr.shape.as_slice() {
        &[n, s, c] if c > 0 => Ok((n, s, c)),
        other => Err(ExecError::Shape(format!(
            "embed_contract of rr {other:?} (want [n, s, c])"
        ))),
    }
}

/// Centre atoms per block.
fn block_atoms(s: usize) -> usize {
    (ROWS_PER_BLOCK / s.max(1)).max(1)
}

fn contract_t<T: Real>(net: &Mlp, rr: &[T], n: usize, s: usize, c: usize) -> R<Vec<T>> {
    let layers = layers::<T>(net)?;
    let m = net.n_out();
    let mut out = vec![T::default(); n * m * c];
    if n == 0 || s == 0 {
        return Ok(out);
    }
    let nb = block_atoms(s);
    out.par_chunks_mut(nb * m * c)
        .zip(rr.par_chunks(nb * s * c))
        .for_each(|(o, r)| {
            let atoms = r.len() / (s * c);
            let x0: Vec<T> = r.iter().step_by(c).copied().collect();
            let (g, _) = forward(&layers, &x0, false);
            for a in 0..atoms {
                // out_a [m, c] = G_a^T [m, s] x rr_a [s, c]
                // SAFETY: G_a is s x m row-major (read transposed), rr_a is s x c, out_a m x c.
                unsafe {
                    T::gemm(
                        m,
                        s,
                        c,
                        g[a * s * m..].as_ptr(),
                        1,
                        m as isize,
                        r[a * s * c..].as_ptr(),
                        c as isize,
                        1,
                        T::default(),
                        o[a * m * c..].as_mut_ptr(),
                        c as isize,
                        1,
                    );
                }
            }
        });
    Ok(out)
}

fn contract_vjp_t<T: Real>(
    net: &Mlp,
    rr: &[T],
    gy: &[T],
    n: usize,
    s: usize,
    c: usize,
) -> R<Vec<T>> {
    let layers = layers::<T>(net)?;
    let m = net.n_out();
    let mut d_rr = vec![T::default(); n * s * c];
    if n == 0 || s == 0 {
        return Ok(d_rr);
    }
    let nb = block_atoms(s);
    d_rr.par_chunks_mut(nb * s * c)
        .zip(rr.par_chunks(nb * s * c))
        .zip(gy.par_chunks(nb * m * c))
        .for_each(|((d, r), gb)| {
            let atoms = r.len() / (s * c);
            let rows = atoms * s;
            let x0: Vec<T> = r.iter().step_by(c).copied().collect();
            let (g, kept) = forward(&layers, &x0, true);
            // dG_a [s, m] = rr_a [s, c] x gy_a^T [c, m];  d_rr_a [s, c] = G_a [s, m] x gy_a [m, c].
            let mut dh = vec![T::default(); rows * m];
            for a in 0..atoms {
                // SAFETY: slices of the block with the shapes and row-major strides above.
                unsafe {
                    T::gemm(
                        s,
                        c,
                        m,
                        r[a * s * c..].as_ptr(),
                        c as isize,
                        1,
                        gb[a * m * c..].as_ptr(),
                        1,
                        c as isize,
                        T::default(),
                        dh[a * s * m..].as_mut_ptr(),
                        m as isize,
                        1,
                    );
                    T::gemm(
                        s,
                        m,
                        c,
                        g[a * s * m..].as_ptr(),
                        m as isize,
                        1,
                        gb[a * m * c..].as_ptr(),
                        c as isize,
                        1,
                        T::default(),
                        d[a * s * c..].as_mut_ptr(),
                        c as isize,
                        1,
                    );
                }
            }
            // Back through the layers: h_l = act(z_l) idt + residual(h_{l-1}).
            for (l, t) in layers.iter().zip(&kept).rev() {
                let (n_in, n_out) = (l.n_in, l.n_out);
                let mut dz = dh.clone();
                if let Some(idt) = &l.idt {
                    for row in dz.chunks_exact_mut(n_out) {
                        for (v, &sc) in row.iter_mut().zip(idt) {
                            *v = *v * sc;
                        }
                    }
                }
                if let Some(t) = t {
                    for (v, &tt) in dz.iter_mut().zip(t) {
                        *v = *v * (T::ONE + T::from_f64(-1.0) * tt * tt);
                    }
                }
                let mut dprev = vec![T::default(); rows * n_in];
                match l.residual {
                    Residual::None => {}
                    Residual::Same => dprev.copy_from_slice(&dh),
                    Residual::Doubled => {
                        for (pr, hr) in dprev.chunks_exact_mut(n_in).zip(dh.chunks_exact(n_out)) {
                            for (i, v) in pr.iter_mut().enumerate() {
                                *v = hr[i] + hr[i + n_in];
                            }
                        }
                    }
                }
                // dprev += dz [rows, out] x W^T [out, in]
                // SAFETY: W is n_in x n_out row-major, read transposed.
                unsafe {
                    T::gemm(
                        rows,
                        n_out,
                        n_in,
                        dz.as_ptr(),
                        n_out as isize,
                        1,
                        l.w.as_ptr(),
                        1,
                        n_out as isize,
                        T::ONE,
                        dprev.as_mut_ptr(),
                        n_in as isize,
                        1,
                    );
                }
                dh = dprev;
            }
            // dh is the cotangent of the network input, channel 0 of rr.
            for (row, &dx) in d.chunks_exact_mut(c).zip(&dh) {
                row[0] = row[0] + dx;
            }
        });
    Ok(d_rr)
}

/// `Op::EmbedContract`.
pub fn embed_contract(net: &Mlp, rr: &Tensor) -> R<Tensor> {
    let m = net.n_out();
    let (n, s, c) = dims(rr)?;
    let data = match &rr.data {
        Data::F64(v) => f64::wrap(contract_t(net, v, n, s, c)?),
        Data::F32(v) => f32::wrap(contract_t(net, v, n, s, c)?),
        _ => return Err(ExecError::Type("embed_contract of non-floats".into())),
    };
    Ok(Tensor {
        shape: vec![n, m, c],
        data,
    })
}

/// `Op::EmbedContractVjp`.
pub fn embed_contract_vjp(net: &Mlp, rr: &Tensor, gy: &Tensor) -> R<Tensor> {
    let m = net.n_out();
    let (n, s, c) = dims(rr)?;
    if gy.shape != [n, m, c] {
        return Err(ExecError::Shape(format!(
            "embed_contract_vjp cotangent {:?} for rr {:?}",
            gy.shape, rr.shape
        )));
    }
    let data = match (&rr.data, &gy.data) {
        (Data::F64(v), Data::F64(g)) => f64::wrap(contract_vjp_t(net, v, g, n, s, c)?),
        (Data::F32(v), Data::F32(g)) => f32::wrap(contract_vjp_t(net, v, g, n, s, c)?),
        _ => return Err(ExecError::Type("embed_contract_vjp dtypes".into())),
    };
    Ok(Tensor {
        shape: rr.shape.clone(),
        data,
    })
}
