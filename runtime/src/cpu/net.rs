//! A dense network run on a block of rows, forward and backward, for the fused kernels
//! (`embed.rs`, `dense.rs`): one GEMM per layer, bias, activation, `idt` and residual in
//! the block's scratch.
//!
//! A forward run can also write each layer's activation `a_l = act(z_l)` to a buffer,
//! layer after layer (`[rows, out_0]`, then `[rows, out_1]`, ...): all a backward pass
//! needs (`tanh'(z) = 1 - a^2`). A network of one scalar input can instead carry its
//! derivative forward (`forward_tangent`), which needs no backward pass at all.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::sync::Arc;

use dpc_compiler::graph::{Act, Data, Mlp, Residual, Tensor};

use super::axis_product::{fold_rows, folded_width};
use super::real::Real;
use super::ExecError;

type R<T> = Result<T, ExecError>;

/// The networks' weight matrices packed for the GEMMs once per executor, instead of once
/// per op call (the fitting network's are about a million numbers, packed per chunk and
/// type), keyed by the weight tensor and whether it is transposed.
#[derive(Default)]
pub struct Packs {
    pub(super) f64: HashMap<(usize, bool), super::gemm::PackedB>,
    pub(super) f32: HashMap<(usize, bool), super::gemm::PackedB32>,
}

impl Packs {
    /// Pack `net`'s GEMM layers, and with `backward` their transposes too; with `fold`, its
    /// first layer for the folded input of an axis product (as `layers` takes it).
    pub fn add(&mut self, net: &Mlp, backward: bool, fold: Option<(usize, usize)>) {
        for (i, l) in net.layers.iter().enumerate().filter(|(_, l)| l.n_in() > 1) {
            let (k, n) = (l.n_in(), l.n_out());
            let (id, fold) = layer_key(&l.w, i, k, fold);
            for t in [false, true].into_iter().filter(|&t| !t || backward) {
                match &l.w.data {
                    Data::F64(w) => {
                        self.f64
                            .entry((id, t))
                            .or_insert_with(|| pack_layer(w, (k, n), fold, t));
                    }
                    Data::F32(w) => {
                        self.f32
                            .entry((id, t))
                            .or_insert_with(|| pack_layer(w, (k, n), fold, t));
                    }
                    _ => {}
                }
            }
        }
    }
}

/// A layer's weights `w [k, n]` packed (`packed`), folded first with `fold`.
fn pack_layer<T: Real>(
    w: &[T],
    (k, n): (usize, usize),
    fold: Option<(usize, usize)>,
    transpose: bool,
) -> T::Packed {
    match fold {
        Some((m, axis)) => packed(
            &fold_rows(w, m, axis, n),
            folded_width(m, axis),
            n,
            transpose,
        ),
        None => packed(w, k, n, transpose),
    }
}

/// The weight matrix `w [k, n]` packed as the right operand of `x W`, or with `transpose` of
/// `dz W^T` (a backward pass).
fn packed<T: Real>(w: &[T], k: usize, n: usize, transpose: bool) -> T::Packed {
    if transpose {
        T::pack(w, n, k, true)
    } else {
        T::pack(w, k, n, false)
    }
}

/// A weight tensor's identity: the graph holds it for the executor's lifetime.
fn key(w: &Arc<Tensor>) -> usize {
    Arc::as_ptr(w) as usize
}

/// Layer `i`'s packing key and whether it is packed folded: the first layer, `k = m axis`
/// inputs wide, with `fold`. A folded layer's key is the tensor's address (aligned, so its
/// low bit is free) with the low bit set.
fn layer_key(
    w: &Arc<Tensor>,
    i: usize,
    k: usize,
    fold: Option<(usize, usize)>,
) -> (usize, Option<(usize, usize)>) {
    let fold = fold.filter(|&(m, axis)| i == 0 && k == m * axis);
    (fold.map_or(key(w), |_| key(w) | 1), fold)
}

/// A packed matrix from the executor's `Packs`, or packed for this call.
enum Pack<'a, P> {
    Cached(&'a P),
    Own(P),
}

impl<P> std::ops::Deref for Pack<'_, P> {
    type Target = P;
    fn deref(&self) -> &P {
        match self {
            Pack::Cached(p) => p,
            Pack::Own(p) => p,
        }
    }
}

/// One layer's weights, borrowed from the graph (already in the kernel's element type).
pub(super) struct Layer<'a, T: Real> {
    pub n_in: usize,
    pub n_out: usize,
    w: &'a [T],
    /// `W` and `W^T` packed for the GEMMs (layers with more than one input).
    fwd: Option<Pack<'a, T::Packed>>,
    bwd: Option<Pack<'a, T::Packed>>,
    b: Option<&'a [T]>,
    idt: Option<&'a [T]>,
    act: Act,
    residual: Residual,
}

impl<T: Real> Layer<'_, T> {
    /// The bias `b [n_out]`, if the layer has one.
    pub fn bias(&self) -> Option<&[T]> {
        self.b
    }

    /// `out [rows, n_out] = x W + b` for `x [rows, n_in]`: the affine part of the layer
    /// (its activation, `idt` and residual are the caller's).
    pub fn affine(&self, rows: usize, x: &[T], out: &mut [T]) {
        let (n_in, n_out) = (self.n_in, self.n_out);
        match &self.fwd {
            Some(w) => T::gemm_packed(w, rows, x, n_in, out, n_out, false),
            None => {
                for (zr, &xv) in out[..rows * n_out].chunks_exact_mut(n_out).zip(x) {
                    for (z, &w) in zr.iter_mut().zip(self.w) {
                        *z = xv * w;
                    }
                }
            }
        }
        if let Some(b) = self.b {
            for row in out[..rows * n_out].chunks_exact_mut(n_out) {
                for (v, &bb) in row.iter_mut().zip(b) {
                    *v = *v + bb;
                }
            }
        }
    }

    /// `out [rows, n_in] (+)= dz W^T` for `dz [rows, n_out]`, `out` with row stride `ldo`:
    /// the cotangent of the layer's input through its weights (built with `backward`).
    pub fn affine_t(&self, rows: usize, dz: &[T], out: &mut [T], ldo: usize, accumulate: bool) {
        let (n_in, n_out) = (self.n_in, self.n_out);
        match &self.bwd {
            Some(wt) => T::gemm_packed(wt, rows, dz, n_out, out, ldo, accumulate),
            None => {
                assert_eq!(n_in, 1, "layers(.., true) packs W^T of every GEMM layer");
                for (r, zr) in dz[..rows * n_out].chunks_exact(n_out).enumerate() {
                    let acc = zr
                        .iter()
                        .zip(self.w)
                        .fold(T::default(), |a, (&z, &w)| a + z * w);
                    let o = &mut out[r * ldo];
                    *o = if accumulate { *o + acc } else { acc };
                }
            }
        }
    }
}

fn view<T: Real>(t: &Tensor) -> R<&[T]> {
    T::slice(&t.data)
        .ok_or_else(|| ExecError::Type("fused network weights of another dtype".into()))
}

/// The network's layers; `backward` packs `W^T` too (for a VJP). Packed matrices come from
/// `packs` where it has them. With `fold` (`(m, axis)`), the first layer takes the folded
/// input of an axis product (`axis_product::fold_rows`): its `n_in` and packed matrices
/// are the folded ones (its unpacked `w` stays the graph's, which no GEMM layer reads).
pub(super) fn layers<'a, T: Real>(
    net: &'a Mlp,
    backward: bool,
    packs: &'a Packs,
    fold: Option<(usize, usize)>,
) -> R<Vec<Layer<'a, T>>> {
    // The kernels below know tanh's and linear's derivatives only (a network with another
    // activation runs off its compression table, `embed_table`).
    net.check_native().map_err(ExecError::Type)?;
    net.layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let w = view(&l.w)?;
            let (k, n) = (l.n_in(), l.n_out());
            let (id, fold) = layer_key(&l.w, i, k, fold);
            let gemm = k > 1;
            let pack = |t: bool| match T::cached(packs, (id, t)) {
                Some(p) => Pack::Cached(p),
                None => Pack::Own(pack_layer(w, (k, n), fold, t)),
            };
            Ok(Layer {
                n_in: fold.map_or(k, |(m, axis)| folded_width(m, axis)),
                n_out: n,
                w,
                fwd: gemm.then(|| pack(false)),
                bwd: (gemm && backward).then(|| pack(true)),
                b: l.b.as_deref().map(view).transpose()?,
                idt: l.idt.as_deref().map(view).transpose()?,
                act: l.act,
                residual: l.residual,
            })
        })
        .collect()
}

/// Activations per row a forward run keeps (the sum of the layer widths).
pub(super) fn acts_width<T: Real>(net: &[Layer<'_, T>]) -> usize {
    net.iter().map(|l| l.n_out).sum()
}

/// Per-thread buffers, reused from block to block so the hot loop does not allocate.
pub(super) struct Scratch<T> {
    /// The network input of the block's rows.
    pub x0: Vec<T>,
    /// Each layer's output `h_l [rows, out_l]`.
    pub h: Vec<Vec<T>>,
    /// The activations a forward run keeps for its backward pass (see the module doc).
    pub acts: Vec<T>,
    pub g: Grads<T>,
}

/// The cotangent buffers of a backward pass.
#[derive(Default)]
pub(super) struct Grads<T> {
    /// In: the cotangent of the network output; out: that of its input.
    pub dh: Vec<T>,
    pub dz: Vec<T>,
    pub dprev: Vec<T>,
}

impl<T: Real> Scratch<T> {
    pub fn new(layers: usize) -> Scratch<T> {
        Scratch {
            x0: Vec::new(),
            h: (0..layers).map(|_| Vec::new()).collect(),
            acts: Vec::new(),
            g: Grads::default(),
        }
    }
}

/// `v` resized to `n` elements, reusing its allocation (contents are overwritten by callers).
#[inline(always)]
pub(super) fn sized<T: Real>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    v.resize(n, T::default());
    &mut v[..n]
}

/// `z <- act(z + b)` for a layer's output rows `z`, the bias added in the activation's
/// pass where there is one.
#[inline(always)]
fn bias_act<T: Real>(l: &Layer<'_, T>, z: &mut [T]) {
    match (l.b, l.act == Act::Tanh) {
        (Some(b), true) => T::bias_tanh_in_place(z, b),
        (Some(b), false) => {
            for row in z.chunks_exact_mut(l.n_out) {
                for (v, &bb) in row.iter_mut().zip(b.iter()) {
                    *v = *v + bb;
                }
            }
        }
        (None, true) => T::tanh_in_place(z),
        (None, false) => {}
    }
}

/// `h <- h * idt + residual(x)`, in place (`x [rows, n_in]`, `h [rows, n_out]`).
#[inline(always)]
fn finish_layer<T: Real>(l: &Layer<'_, T>, x: &[T], h: &mut [T]) {
    let (n_in, n_out) = (l.n_in, l.n_out);
    if let Some(idt) = &l.idt {
        for row in h.chunks_exact_mut(n_out) {
            for (v, &sc) in row.iter_mut().zip(idt.iter()) {
                *v = *v * sc;
            }
        }
    }
    match l.residual {
        Residual::None => {}
        Residual::Same => {
            for (v, &xv) in h.iter_mut().zip(x) {
                *v = *v + xv;
            }
        }
        Residual::Doubled => {
            // Each half its own loop over two slices (one over three went element by
            // element).
            for (row, xr) in h.chunks_exact_mut(n_out).zip(x.chunks_exact(n_in)) {
                let (lo, hi) = row.split_at_mut(n_in);
                for half in [lo, hi] {
                    for (v, &xv) in half.iter_mut().zip(xr) {
                        *v = *v + xv;
                    }
                }
            }
        }
    }
}

/// A per-row term added to the first layer's pre-activation (`Embed::shift`): row `r`
/// adds row `rows[r]` of `u [k, n1]`.
#[derive(Clone, Copy)]
pub(super) struct FirstShift<'a, T> {
    pub u: &'a [T],
    pub rows: &'a [u32],
}

/// `z [rows, n1] += u[rows]`, before the first layer's bias and activation.
#[inline(always)]
fn add_shift<T: Real>(shift: Option<FirstShift<'_, T>>, n1: usize, z: &mut [T]) {
    let Some(FirstShift { u, rows }) = shift else {
        return;
    };
    for (zr, &k) in z.chunks_exact_mut(n1).zip(rows) {
        let ur = &u[k as usize * n1..(k as usize + 1) * n1];
        for (v, &a) in zr.iter_mut().zip(ur) {
            *v = *v + a;
        }
    }
}

simd_fn! {
/// Run the network on the rows of `x0` (`[rows, n_in]`), leaving each layer's output in
/// `h`; with `acts` (`rows * acts_width` long), also each layer's activation there; with
/// `shift`, the first layer's pre-activation shifted per row.
pub(super) fn forward<T: Real>(
    net: &[Layer<'_, T>],
    x0: &[T],
    shift: Option<FirstShift<'_, T>>,
    h: &mut [Vec<T>],
    acts: Option<&mut [T]>,
) {
    let mut acts = acts;
    let rows = x0.len() / net[0].n_in.max(1);
    let mut at = 0;
    for (k, l) in net.iter().enumerate() {
        let (n_in, n_out) = (l.n_in, l.n_out);
        let (before, after) = h.split_at_mut(k);
        let x: &[T] = if k == 0 { x0 } else { &before[k - 1] };
        let z = sized(&mut after[0], rows * n_out);
        if n_in == 1 {
            for (zr, &xv) in z.chunks_exact_mut(n_out).zip(x) {
                for (zo, &w) in zr.iter_mut().zip(l.w) {
                    *zo = xv * w;
                }
            }
        } else {
            let w = l.fwd.as_deref().expect("layers() packs every GEMM layer");
            T::gemm_packed(w, rows, x, n_in, z, n_out, false);
        }
        if k == 0 {
            add_shift(shift, n_out, z);
        }
        bias_act(l, z);
        if let Some(a) = acts.as_deref_mut() {
            a[at..at + rows * n_out].copy_from_slice(z);
        }
        at += rows * n_out;
        finish_layer(l, x, z);
    }
}
}

/// The end of a layer for values `zv = act(z)` and tangents `zt = dz` at once:
/// `zt <- zt tanh'(z) idt + residual(xt)` and `zv <- zv idt + residual(xv)`. Each step is a
/// pass over the block (the block is in L2): a loop over one or two slices vectorizes,
/// where one loop per row over four zipped rows of 8 to 32 went element by element. Every
/// element gets the same operations in the same order either way.
#[inline(always)]
fn finish_pair<T: Real, const TANH: bool>(
    l: &Layer<'_, T>,
    (xv, xt): (&[T], &[T]),
    zv: &mut [T],
    zt: &mut [T],
) {
    if TANH {
        for (t, &a) in zt.iter_mut().zip(zv.iter()) {
            *t = *t * (T::ONE - a * a);
        }
    }
    finish_layer(l, xv, zv);
    finish_layer(l, xt, zt);
}

/// `h <- h + residual(1)`: a residual whose input is the constant tangent 1 (of the
/// network's scalar input).
#[inline(always)]
fn add_unit_residual<T: Real>(l: &Layer<'_, T>, h: &mut [T]) {
    match l.residual {
        Residual::None => {}
        Residual::Same | Residual::Doubled => {
            for v in h.iter_mut() {
                *v = *v + T::ONE;
            }
        }
    }
}

simd_fn! {
/// The network of one scalar input on `x [rows]`, with its derivative: `out [2 rows, n_out]`
/// gets the outputs `G` (rows `0..rows`) and the tangents `dG/dx` (rows `rows..`). Values
/// and tangents go through each layer as one stacked GEMM (the tangent of `z = x W + b` is
/// `dx W`), and `tanh'` comes from the value just computed, so the derivative costs a
/// second GEMM per layer and nothing is kept for a backward pass. `buf` holds the hidden
/// layers' stacks. `out` need not be initialized: all of it is written (the last layer's
/// GEMM writes it; the caller then skips zeroing a buffer as large as the block's `G` and
/// `dG/dx`). With `shift`, the first layer's pre-activation is shifted per row (its
/// tangent is not: the shift does not depend on `x`).
pub(super) fn forward_tangent<T: Real>(
    net: &[Layer<'_, T>],
    x: &[T],
    shift: Option<FirstShift<'_, T>>,
    buf: &mut [Vec<T>],
    out: &mut [MaybeUninit<T>],
) {
    let rows = x.len();
    let last = net.len() - 1;
    for (k, l) in net.iter().enumerate() {
        let (n_in, n_out) = (l.n_in, l.n_out);
        let (before, after) = buf.split_at_mut(k);
        let st: &mut [T] = if k == last {
            let o = &mut out[..2 * rows * n_out];
            if n_in == 1 {
                o.fill(MaybeUninit::new(T::default()));
            } else {
                let w = l.fwd.as_deref().expect("layers() packs every GEMM layer");
                T::gemm_packed_uninit(w, 2 * rows, &before[k - 1][..2 * rows * n_in], n_in, o, n_out);
            }
            // SAFETY: every element was written just above.
            unsafe { &mut *(o as *mut [MaybeUninit<T>] as *mut [T]) }
        } else {
            sized(&mut after[0], 2 * rows * n_out)
        };
        // The layer's input: values and tangents; the network input's tangent is 1.
        let (xv, xt): (&[T], Option<&[T]>) = if k == 0 {
            (x, None)
        } else {
            let (v, t) = before[k - 1].split_at(rows * n_in);
            (v, Some(t))
        };
        if n_in == 1 {
            let (zv, zt) = st.split_at_mut(rows * n_out);
            for (r, (zr, tr)) in zv
                .chunks_exact_mut(n_out)
                .zip(zt.chunks_exact_mut(n_out))
                .enumerate()
            {
                let dx = xt.map_or(T::ONE, |t| t[r]);
                for ((zo, to), &w) in zr.iter_mut().zip(tr.iter_mut()).zip(l.w) {
                    *zo = xv[r] * w;
                    *to = dx * w;
                }
            }
        } else if k != last {
            let w = l.fwd.as_deref().expect("layers() packs every GEMM layer");
            let stacked = &before[k - 1][..2 * rows * n_in];
            T::gemm_packed(w, 2 * rows, stacked, n_in, st, n_out, false);
        }
        let (zv, zt) = st.split_at_mut(rows * n_out);
        let tanh = l.act == Act::Tanh;
        if k == 0 {
            add_shift(shift, n_out, zv);
        }
        bias_act(l, zv);
        match xt {
            // One pass for the tangent's tanh', both idt scales and both residuals.
            Some(xt) if tanh => finish_pair::<T, true>(l, (xv, xt), zv, zt),
            Some(xt) => finish_pair::<T, false>(l, (xv, xt), zv, zt),
            None => {
                if tanh {
                    for (t, &a) in zt.iter_mut().zip(zv.iter()) {
                        *t = *t * (T::ONE - a * a);
                    }
                }
                finish_layer(l, xv, zv);
                if let Some(idt) = &l.idt {
                    for row in zt.chunks_exact_mut(n_out) {
                        for (v, &sc) in row.iter_mut().zip(idt.iter()) {
                            *v = *v * sc;
                        }
                    }
                }
                add_unit_residual(l, zt);
            }
        }
    }
}
}

simd_fn! {
/// Back-propagate `g.dh` (the cotangent of the last layer's output, `[rows, out]`) through
/// the layers of a `forward` on `rows` rows that kept `acts`, leaving the cotangent of the
/// network input (`[rows, n_in]`) in `g.dh`.
pub(super) fn backward<T: Real>(
    layers: &[Layer<'_, T>],
    acts: &[T],
    rows: usize,
    g: &mut Grads<T>,
) {
    // Back through the layers: h_l = act(z_l) idt + residual(h_{l-1}).
    let mut end = acts_width(layers) * rows;
    for l in layers.iter().rev() {
        let (n_in, n_out) = (l.n_in, l.n_out);
        let t = &acts[end - rows * n_out..end];
        end -= rows * n_out;
        let dh = &g.dh[..rows * n_out];
        let dz = sized(&mut g.dz, rows * n_out);
        // dz = dh * idt * tanh'(z), in one pass.
        match (l.act, l.idt) {
            (Act::Tanh, Some(idt)) => {
                for ((zr, hr), tr) in dz
                    .chunks_exact_mut(n_out)
                    .zip(dh.chunks_exact(n_out))
                    .zip(t.chunks_exact(n_out))
                {
                    for (((v, &g), &tt), &sc) in zr.iter_mut().zip(hr).zip(tr).zip(idt) {
                        *v = g * sc * (T::ONE - tt * tt);
                    }
                }
            }
            (Act::Tanh, None) => {
                for ((v, &g), &tt) in dz.iter_mut().zip(dh).zip(t) {
                    *v = g * (T::ONE - tt * tt);
                }
            }
            (_, Some(idt)) => {
                for (zr, hr) in dz.chunks_exact_mut(n_out).zip(dh.chunks_exact(n_out)) {
                    for ((v, &g), &sc) in zr.iter_mut().zip(hr).zip(idt) {
                        *v = g * sc;
                    }
                }
            }
            (_, None) => dz.copy_from_slice(dh),
        }
        let dprev = sized(&mut g.dprev, rows * n_in);
        match l.residual {
            Residual::None => dprev.fill(T::default()),
            Residual::Same => dprev.copy_from_slice(dh),
            Residual::Doubled => {
                for (pr, hr) in dprev.chunks_exact_mut(n_in).zip(dh.chunks_exact(n_out)) {
                    for (i, v) in pr.iter_mut().enumerate() {
                        *v = hr[i] + hr[i + n_in];
                    }
                }
            }
        }
        if n_in == 1 {
            for (p, zr) in dprev.iter_mut().zip(dz.chunks_exact(n_out)) {
                let mut acc = T::default();
                for (&zv, &w) in zr.iter().zip(l.w) {
                    acc = acc + zv * w;
                }
                *p = *p + acc;
            }
        } else {
            // dprev += dz [rows, out] x W^T [out, in]
            let wt = l.bwd.as_deref().expect("layers(.., true) packs W^T");
            T::gemm_packed(wt, rows, dz, n_out, dprev, n_in, true);
        }
        std::mem::swap(&mut g.dh, &mut g.dprev);
    }
}
}
