//! The fused attention layer (`Op::Attention` and its VJP), one atom at a time: the
//! projections, the `[s, s]` logits and weights, the weighted sum, the residual and the
//! layer norm all stay in a per-thread scratch that fits in L2, where the elementary graph
//! wrote a dozen `[n, s, s]` tensors to memory and read them back.
//!
//! The VJP re-runs the atom's forward pass (cheaper than keeping `[s, s]` weights per atom
//! in memory) and back-propagates by hand through each step of `build/dpa1.rs`'s
//! `gated_attention`, in reverse.

use dpc_compiler::graph::{Attention, Data, Tensor};
use rayon::prelude::*;

use super::net::{layers, sized, Layer, Packs};
use super::real::Real;
use super::reduce::{dot, max, sum};
use super::ExecError;

type R<T> = Result<T, ExecError>;

/// One atom's `(x [s, d], sw [s], mask [s], r [s, 3])`.
type Slots<'a, T> = (&'a [T], &'a [T], &'a [bool], &'a [T]);

/// Atoms per parallel task: enough to amortise scheduling, few enough to balance.
const ATOMS_PER_TASK: usize = 4;

/// The layer's weights as slices of the element type, and its sizes.
struct Parts<'a, T: Real> {
    at: &'a Attention,
    inp: Layer<'a, T>,
    outp: Layer<'a, T>,
    ln_w: &'a [T],
    ln_b: &'a [T],
    /// Slots per atom, feature width, hidden width.
    s: usize,
    d: usize,
    h: usize,
    /// The layer norm's `1/d` and epsilon.
    inv_d: T,
    eps: T,
}

/// One thread's buffers, reused from atom to atom.
#[derive(Default)]
struct Work<T> {
    /// `[s, 3h]`: `q`, `k`, `v` per slot (normalised when the layer says so; `q` unscaled).
    qkv: Vec<T>,
    /// `[s, 3]`: the norms `q`, `k`, `v` were divided by.
    norms: Vec<T>,
    /// `[s, s]`: `scaling q k^T`.
    logit: Vec<T>,
    /// `[s, s]`: the softmax of the gated logits.
    p6: Vec<T>,
    /// `[s, s]`: the softmax with masked queries zeroed and the smooth gate applied.
    p8: Vec<T>,
    /// `[s, s]`: the cosines `r_j . r_k`, and `p8` times them (with `dotr`).
    ang: Vec<T>,
    pf: Vec<T>,
    /// `[s, h]`: `P V`.
    o: Vec<T>,
    /// `[s, d]`: `x + OutProj(o)`, before the layer norm.
    y: Vec<T>,
    /// The backward pass's cotangents.
    dy: Vec<T>,
    d_o: Vec<T>,
    dp: Vec<T>,
    tmp: Vec<T>,
    dqkv: Vec<T>,
    /// `[3, s]`: `r` by columns, and the column sums of the backward pass.
    rt: Vec<T>,
    drt: Vec<T>,
}

/// A row's mean and `sqrt(variance + eps)` (the layer norm's).
#[inline(always)]
fn moments<T: Real>(y: &[T], inv_d: T, eps: T) -> (T, T) {
    let mean = sum(y) * inv_d;
    let var = y
        .iter()
        .fold(T::default(), |a, &v| a + (v - mean) * (v - mean))
        * inv_d;
    (mean, (var + eps).sqrt())
}

/// `c [m, n] = alpha a b`, `a [m, k]` and `b [k, n]` read through (row, column) strides,
/// `c` row-major with row stride `ldc`.
fn mm<T: Real>(
    (m, k, n): (usize, usize, usize),
    alpha: T,
    a: (&[T], usize, usize),
    b: (&[T], usize, usize),
    c: &mut [T],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let reach = |rows: usize, cols: usize, rs: usize, cs: usize| {
        if cols == 0 {
            0
        } else {
            (rows - 1) * rs + (cols - 1) * cs + 1
        }
    };
    assert!(
        a.0.len() >= reach(m, k, a.1, a.2)
            && b.0.len() >= reach(k, n, b.1, b.2)
            && c.len() >= reach(m, n, ldc, 1),
        "attention gemm operands"
    );
    if k == 0 {
        for row in c.chunks_mut(ldc).take(m) {
            row[..n].fill(T::default());
        }
        return;
    }
    // SAFETY: the assert above bounds every element the strides reach.
    unsafe {
        T::gemm_strided(
            m,
            k,
            n,
            alpha,
            (a.0.as_ptr(), a.1 as isize, a.2 as isize),
            (b.0.as_ptr(), b.1 as isize, b.2 as isize),
            T::default(),
            (c.as_mut_ptr(), ldc as isize, 1),
        )
    }
}

simd_fn! {
/// The atom's forward pass up to `y = x + OutProj(P V)` (left in `w.y`), keeping in `w`
/// what the backward pass needs; with `out`, also the layer norm of `y` there.
fn forward_atom<T: Real>(
    p: &Parts<'_, T>,
    slots: Slots<'_, T>,
    w: &mut Work<T>,
    out: Option<&mut [T]>,
) {
    let (x, sw, mask, r) = slots;
    let (s, d, h, at) = (sw.len(), p.d, p.h, p.at);
    let h3 = 3 * h;
    let qkv = sized(&mut w.qkv, s * h3);
    p.inp.affine(s, x, qkv);
    if at.normalize {
        let floor = T::from_f64(at.floor_sq);
        let norms = sized(&mut w.norms, s * 3);
        for (row, nr) in qkv.chunks_exact_mut(h3).zip(norms.chunks_exact_mut(3)) {
            for (seg, n) in row.chunks_exact_mut(h).zip(nr.iter_mut()) {
                let n2 = dot(seg, seg);
                *n = (if n2 > floor { n2 } else { floor }).sqrt();
                seg.iter_mut().for_each(|v| *v = *v / *n);
            }
        }
    }
    let logit = sized(&mut w.logit, s * s);
    let scaling = T::from_f64(at.scaling);
    mm((s, h, s), scaling, (qkv, h3, 1), (&qkv[h..], 1, h3), logit, s);
    let (shift, masked) = (T::from_f64(at.shift), T::from_f64(at.masked_logit));
    let p6 = sized(&mut w.p6, s * s);
    let p8 = sized(&mut w.p8, s * s);
    for j in 0..s {
        let (lr, pr) = (&logit[j * s..(j + 1) * s], &mut p6[j * s..(j + 1) * s]);
        if at.smooth {
            for ((z, &l), &swk) in pr.iter_mut().zip(lr).zip(sw) {
                *z = (l + shift) * (sw[j] * swk) - shift;
            }
        } else {
            for ((z, &l), &ok) in pr.iter_mut().zip(lr).zip(mask) {
                *z = if ok { l } else { masked };
            }
        }
        let m = max(pr);
        pr.iter_mut().for_each(|z| *z = *z - m);
        T::exp_in_place(pr);
        let inv = T::ONE / sum(pr);
        pr.iter_mut().for_each(|z| *z = *z * inv);
        let qr = &mut p8[j * s..(j + 1) * s];
        if !mask[j] {
            qr.fill(T::default());
        } else if at.smooth {
            for ((q, &pv), &swk) in qr.iter_mut().zip(pr.iter()).zip(sw) {
                *q = pv * (sw[j] * swk);
            }
        } else {
            qr.copy_from_slice(pr);
        }
    }
    let weights: &[T] = if at.dotr {
        let ang = sized(&mut w.ang, s * s);
        mm((s, 3, s), T::ONE, (r, 3, 1), (r, 1, 3), ang, s);
        let pf = sized(&mut w.pf, s * s);
        for ((f, &a), &q) in pf.iter_mut().zip(ang.iter()).zip(p8.iter()) {
            *f = q * a;
        }
        pf
    } else {
        p8
    };
    let o = sized(&mut w.o, s * h);
    mm((s, s, h), T::ONE, (weights, s, 1), (&qkv[2 * h..], h3, 1), o, h);
    let y = sized(&mut w.y, s * d);
    p.outp.affine(s, o, y);
    for (v, &xv) in y.iter_mut().zip(x) {
        *v = *v + xv;
    }
    if let Some(out) = out {
        for (yr, or) in y.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            norm_row(p, yr, or);
        }
    }
}
}

/// `out [c, s] = (m + m^T) u` for `m [s, s]` and the columns `u [c, s]`, by rows of `m`
/// (each row adds `m[j, :] . u_c` to `out_c[j]` and `m[j, :] u_c[j]` to `out_c`), so every
/// loop reads contiguous memory.
#[inline(always)]
fn symmetric_apply<T: Real>(m: &[T], u: &[T], out: &mut [T]) {
    let s = m.len().isqrt();
    debug_assert!(s * s == m.len() && u.len() == out.len() && u.len().is_multiple_of(s.max(1)));
    out.fill(T::default());
    if s == 0 {
        return;
    }
    for (j, mr) in m.chunks_exact(s).enumerate() {
        for (uc, oc) in u.chunks_exact(s).zip(out.chunks_exact_mut(s)) {
            let own = dot(mr, uc);
            let ujc = uc[j];
            for (o, &t) in oc.iter_mut().zip(mr) {
                *o = *o + t * ujc;
            }
            oc[j] = oc[j] + own;
        }
    }
}

/// `out = LayerNorm(y)` for one row.
#[inline(always)]
fn norm_row<T: Real>(p: &Parts<'_, T>, y: &[T], out: &mut [T]) {
    let (mean, sd) = moments(y, p.inv_d, p.eps);
    for (((o, &v), &g), &b) in out.iter_mut().zip(y).zip(p.ln_w).zip(p.ln_b) {
        *o = (v - mean) / sd * g + b;
    }
}

/// `dy` for the cotangent `g` of `LayerNorm(y)`, one row:
/// `(gh - mean(gh) - c mean(gh c)) / sd` with `gh = g w` and `c` the normalised row.
#[inline(always)]
fn norm_row_vjp<T: Real>(p: &Parts<'_, T>, y: &[T], g: &[T], dy: &mut [T]) {
    let (mean, sd) = moments(y, p.inv_d, p.eps);
    let inv = T::ONE / sd;
    let (mut mg, mut mgc) = (T::default(), T::default());
    for ((&v, &gv), &lw) in y.iter().zip(g).zip(p.ln_w) {
        let gh = gv * lw;
        mg = mg + gh;
        mgc = mgc + gh * ((v - mean) * inv);
    }
    let (mg, mgc) = (mg * p.inv_d, mgc * p.inv_d);
    for (((o, &v), &gv), &lw) in dy.iter_mut().zip(y).zip(g).zip(p.ln_w) {
        *o = (gv * lw - mg - (v - mean) * inv * mgc) * inv;
    }
}

simd_fn! {
/// The atom's VJP: `dout [s, d + 4]` gets `[dx, dsw, dr]` per slot for the cotangent `g`
/// of the layer's output (`w` must hold the atom's forward pass).
fn backward_atom<T: Real>(
    p: &Parts<'_, T>,
    slots: Slots<'_, T>,
    g: &[T],
    w: &mut Work<T>,
    dout: &mut [T],
) {
    let (_, sw, mask, r) = slots;
    let (s, d, h, at) = (sw.len(), p.d, p.h, p.at);
    let (h3, ld) = (3 * h, d + 4);
    let dy = sized(&mut w.dy, s * d);
    for ((yr, gr), dr) in w.y.chunks_exact(d).zip(g.chunks_exact(d)).zip(dy.chunks_exact_mut(d)) {
        norm_row_vjp(p, yr, gr, dr);
    }
    // The residual: dx starts as dy.
    for (orow, dr) in dout.chunks_exact_mut(ld).zip(dy.chunks_exact(d)) {
        orow[..d].copy_from_slice(dr);
    }
    let d_o = sized(&mut w.d_o, s * h);
    p.outp.affine_t(s, dy, d_o, h, false);
    let qkv = &w.qkv[..s * h3];
    // o = P V: dP = dO V^T, dV = P^T dO.
    let dqkv = sized(&mut w.dqkv, s * h3);
    let dp = sized(&mut w.dp, s * s);
    mm((s, h, s), T::ONE, (d_o, h, 1), (&qkv[2 * h..], 1, h3), dp, s);
    let weights: &[T] = if at.dotr { &w.pf } else { &w.p8 };
    mm((s, s, h), T::ONE, (weights, 1, s), (d_o, h, 1), &mut dqkv[2 * h..], h3);
    for orow in dout.chunks_exact_mut(ld) {
        orow[d..].fill(T::default());
    }
    let tmp = sized(&mut w.tmp, s * s);
    if at.dotr {
        // P = P8 A with A = r r^T: dA = dP P8, dP8 = dP A, dr = (dA + dA^T) r.
        for (((t, dv), &q), &a) in tmp.iter_mut().zip(dp.iter_mut()).zip(&w.p8).zip(&w.ang) {
            *t = *dv * q;
            *dv = *dv * a;
        }
        let rt = sized(&mut w.rt, 3 * s);
        for (k, rk) in r.chunks_exact(3).enumerate() {
            for c in 0..3 {
                rt[c * s + k] = rk[c];
            }
        }
        let drt = sized(&mut w.drt, 3 * s);
        symmetric_apply(tmp, rt, drt);
        for (k, orow) in dout.chunks_exact_mut(ld).enumerate() {
            for c in 0..3 {
                orow[d + 1 + c] = drt[c * s + k];
            }
        }
    }
    // Back through the query mask and the smooth gate (dsw2 into tmp), then the softmax.
    let p6 = &w.p6[..s * s];
    let logit = &w.logit[..s * s];
    let shift = T::from_f64(at.shift);
    for j in 0..s {
        let row = j * s..(j + 1) * s;
        let (dr, tr, pr, lr) = (&mut dp[row.clone()], &mut tmp[row.clone()], &p6[row.clone()], &logit[row]);
        if !mask[j] {
            dr.fill(T::default());
            tr.fill(T::default());
            continue;
        }
        if at.smooth {
            for ((dv, t), (&pv, &swk)) in dr.iter_mut().zip(tr.iter_mut()).zip(pr.iter().zip(sw)) {
                *t = *dv * pv;
                *dv = *dv * (sw[j] * swk);
            }
        }
        let dp_p = dot(dr, pr);
        for (dv, &pv) in dr.iter_mut().zip(pr) {
            *dv = pv * (*dv - dp_p);
        }
        if at.smooth {
            // z = (l + shift) sw2 - shift: dl = dz sw2, dsw2 += dz (l + shift).
            for (((dv, t), &l), &swk) in dr.iter_mut().zip(tr.iter_mut()).zip(lr).zip(sw) {
                *t = *t + *dv * (l + shift);
                *dv = *dv * (sw[j] * swk);
            }
        } else {
            for (dv, &ok) in dr.iter_mut().zip(mask) {
                if !ok {
                    *dv = T::default();
                }
            }
        }
    }
    if at.smooth {
        // sw2 = sw_j sw_k: dsw = (dsw2 + dsw2^T) sw.
        let dsw = sized(&mut w.drt, s);
        symmetric_apply(tmp, sw, dsw);
        for (orow, &v) in dout.chunks_exact_mut(ld).zip(dsw.iter()) {
            orow[d] = v;
        }
    }
    // logit = scaling q k^T: dq = scaling dl k, dk = scaling dl^T q.
    let scaling = T::from_f64(at.scaling);
    mm((s, s, h), scaling, (dp, s, 1), (&qkv[h..], h3, 1), &mut dqkv[..], h3);
    mm((s, s, h), scaling, (dp, 1, s), (qkv, h3, 1), &mut dqkv[h..], h3);
    if at.normalize {
        // y = v / n: dv = (gy - y (gy . y)) / n above the floor, gy / n at it.
        let floor = T::from_f64(at.floor_sq);
        for ((grow, yrow), nr) in dqkv.chunks_exact_mut(h3).zip(qkv.chunks_exact(h3)).zip(w.norms.chunks_exact(3)) {
            for ((gs, ys), &n) in grow.chunks_exact_mut(h).zip(yrow.chunks_exact(h)).zip(nr) {
                let gy = if n * n > floor { dot(gs, ys) } else { T::default() };
                for (gv, &yv) in gs.iter_mut().zip(ys) {
                    *gv = (*gv - yv * gy) / n;
                }
            }
        }
    }
    p.inp.affine_t(s, dqkv, dout, ld, true);
}
}

/// The layer's pieces for element type `T`, and the atom count of `x [n, s, d]`.
fn parts<'a, T: Real>(
    at: &'a Attention,
    x: &Tensor,
    packs: &'a Packs,
    backward: bool,
) -> R<(Parts<'a, T>, usize)> {
    let &[n, s, d] = x.shape.as_slice() else {
        return Err(ExecError::Shape(format!("attention of {:?}", x.shape)));
    };
    if d != at.width() {
        return Err(ExecError::Shape(format!(
            "attention of {:?}: width {}",
            x.shape,
            at.width()
        )));
    }
    let one = |net| -> R<Layer<'a, T>> {
        layers::<T>(net, backward, packs, None)?
            .into_iter()
            .next()
            .ok_or_else(|| ExecError::Shape("attention projection without a layer".into()))
    };
    let vec = |t: &'a Tensor| {
        T::slice(&t.data).ok_or_else(|| ExecError::Type("attention norm of another dtype".into()))
    };
    Ok((
        Parts {
            at,
            inp: one(&at.in_proj)?,
            outp: one(&at.out_proj)?,
            ln_w: vec(&at.norm_w)?,
            ln_b: vec(&at.norm_b)?,
            s,
            d,
            h: at.hidden,
            inv_d: T::ONE / T::from_f64(d as f64),
            eps: T::from_f64(at.eps),
        },
        n,
    ))
}

/// `(x, sw, mask, r)` as slices, checked against `[n, s]`.
fn views<'a, T: Real>(args: [&'a Tensor; 4], n: usize, s: usize) -> R<Slots<'a, T>> {
    let [x, sw, mask, r] = args;
    let f =
        |t: &'a Tensor| T::slice(&t.data).ok_or_else(|| ExecError::Type("attention dtypes".into()));
    let m = match &mask.data {
        Data::Bool(v) => v.as_slice(),
        _ => return Err(ExecError::Type("attention mask must be bool".into())),
    };
    let (x, sw, r) = (f(x)?, f(sw)?, f(r)?);
    if sw.len() != n * s || m.len() != n * s || r.len() != n * s * 3 {
        return Err(ExecError::Shape(
            "attention: sw, mask or r do not match x".into(),
        ));
    }
    Ok((x, sw, m, r))
}

/// One atom's real neighbours gathered (the layer without the smooth gate ignores the
/// masked slots: they neither attend nor are attended to, so only the residual and the
/// layer norm reach them), and what the compacted run gives back.
#[derive(Default)]
struct Compact<T> {
    idx: Vec<usize>,
    x: Vec<T>,
    sw: Vec<T>,
    mask: Vec<bool>,
    r: Vec<T>,
    g: Vec<T>,
    out: Vec<T>,
    y: Vec<T>,
}

impl<T: Real> Compact<T> {
    /// Gather the slots of `mask`'s real neighbours (and `g`'s rows), or `false` when the
    /// atom runs whole: the smooth gate, or no masked slot.
    fn gather(&mut self, p: &Parts<'_, T>, slots: Slots<'_, T>, g: Option<&[T]>) -> bool {
        let (x, sw, mask, r) = slots;
        if p.at.smooth || mask.iter().all(|&m| m) {
            return false;
        }
        let d = p.d;
        self.idx.clear();
        self.idx
            .extend(mask.iter().enumerate().filter(|(_, &m)| m).map(|(j, _)| j));
        let n = self.idx.len();
        self.x.clear();
        self.r.clear();
        self.sw.clear();
        self.g.clear();
        for &j in &self.idx {
            self.x.extend_from_slice(&x[j * d..(j + 1) * d]);
            self.r.extend_from_slice(&r[j * 3..(j + 1) * 3]);
            self.sw.push(sw[j]);
            if let Some(g) = g {
                self.g.extend_from_slice(&g[j * d..(j + 1) * d]);
            }
        }
        self.mask.clear();
        self.mask.resize(n, true);
        true
    }

    fn slots(&self) -> Slots<'_, T> {
        (&self.x, &self.sw, &self.mask, &self.r)
    }
}

/// A masked slot's pre-norm row `x + OutProj(0)`, in `buf`.
fn masked_row<'b, T: Real>(p: &Parts<'_, T>, x: &[T], buf: &'b mut Vec<T>) -> &'b [T] {
    let y = sized(buf, p.d);
    y.copy_from_slice(x);
    if let Some(b) = p.outp.bias() {
        for (v, &bb) in y.iter_mut().zip(b) {
            *v = *v + bb;
        }
    }
    y
}

/// The per-thread state of both kernels.
type State<T> = (Work<T>, Compact<T>);

/// One atom of `Op::Attention` into `out [s, d]`.
fn atom<T: Real>(p: &Parts<'_, T>, slots: Slots<'_, T>, (w, c): &mut State<T>, out: &mut [T]) {
    if !c.gather(p, slots, None) {
        forward_atom(p, slots, w, Some(out));
        return;
    }
    let d = p.d;
    let n = c.idx.len();
    let mut co = std::mem::take(&mut c.out);
    if n > 0 {
        forward_atom(p, c.slots(), w, Some(sized(&mut co, n * d)));
    }
    scatter(&c.idx, &co, d, out, |j, orow| {
        let y = masked_row(p, &slots.0[j * d..(j + 1) * d], &mut c.y);
        norm_row(p, y, orow);
    });
    c.out = co;
}

/// The compacted run's rows (`rows`, one per slot of `idx`, in order) to their slots of
/// `out` (`width` wide); every other slot's row by `masked(slot, row)`.
fn scatter<T: Real>(
    idx: &[usize],
    rows: &[T],
    width: usize,
    out: &mut [T],
    mut masked: impl FnMut(usize, &mut [T]),
) {
    let mut next = idx.iter().copied().zip(rows.chunks_exact(width)).peekable();
    for (j, orow) in out.chunks_exact_mut(width).enumerate() {
        match next.peek() {
            Some(&(k, row)) if k == j => {
                orow.copy_from_slice(row);
                next.next();
            }
            _ => masked(j, orow),
        }
    }
}

/// One atom of `Op::AttentionVjp` into `dout [s, d + 4]`.
fn atom_vjp<T: Real>(
    p: &Parts<'_, T>,
    slots: Slots<'_, T>,
    g: &[T],
    (w, c): &mut State<T>,
    dout: &mut [T],
) {
    if !c.gather(p, slots, Some(g)) {
        forward_atom(p, slots, w, None);
        backward_atom(p, slots, g, w, dout);
        return;
    }
    let (d, ld) = (p.d, p.d + 4);
    let n = c.idx.len();
    let mut co = std::mem::take(&mut c.out);
    let gc = std::mem::take(&mut c.g);
    if n > 0 {
        forward_atom(p, c.slots(), w, None);
        backward_atom(p, c.slots(), &gc, w, sized(&mut co, n * ld));
    }
    scatter(&c.idx, &co, ld, dout, |j, orow| {
        let y = masked_row(p, &slots.0[j * d..(j + 1) * d], &mut c.y);
        norm_row_vjp(p, y, &g[j * d..(j + 1) * d], &mut orow[..d]);
        orow[d..].fill(T::default());
    });
    c.out = co;
    c.g = gc;
}

/// Atom `i`'s slots.
fn slots_of<'a, T>(all: Slots<'a, T>, i: usize, s: usize, d: usize) -> Slots<'a, T> {
    let (x, sw, mask, r) = all;
    (
        &x[i * s * d..(i + 1) * s * d],
        &sw[i * s..(i + 1) * s],
        &mask[i * s..(i + 1) * s],
        &r[i * s * 3..(i + 1) * s * 3],
    )
}

/// `[n, s, width]` filled atom by atom, `f(state, atom, rows)`, with `ATOMS_PER_TASK` atoms
/// per parallel task.
fn per_atom<T: Real>(
    (n, s, width): (usize, usize, usize),
    f: impl Fn(&mut State<T>, usize, &mut [T]) + Sync + Send,
) -> Tensor {
    let mut out = vec![T::default(); n * s * width];
    let per = s * width;
    if per > 0 {
        out.par_chunks_mut(ATOMS_PER_TASK * per)
            .enumerate()
            .for_each_init(State::default, |st, (t, oc)| {
                for (a, rows) in oc.chunks_exact_mut(per).enumerate() {
                    f(st, t * ATOMS_PER_TASK + a, rows);
                }
            });
    }
    Tensor {
        shape: vec![n, s, width],
        data: T::wrap(out),
    }
}

fn attention_t<T: Real>(at: &Attention, args: [&Tensor; 4], packs: &Packs) -> R<Tensor> {
    let (p, n) = parts::<T>(at, args[0], packs, false)?;
    let (s, d) = (p.s, p.d);
    let all = views::<T>(args, n, s)?;
    Ok(per_atom((n, s, d), |st, i, rows| {
        atom(&p, slots_of(all, i, s, d), st, rows)
    }))
}

fn attention_vjp_t<T: Real>(
    at: &Attention,
    args: [&Tensor; 4],
    g: &Tensor,
    packs: &Packs,
) -> R<Tensor> {
    let (p, n) = parts::<T>(at, args[0], packs, true)?;
    let (s, d) = (p.s, p.d);
    let all = views::<T>(args, n, s)?;
    if g.shape != args[0].shape {
        return Err(ExecError::Shape(format!(
            "attention_vjp cotangent {:?} for x {:?}",
            g.shape, args[0].shape
        )));
    }
    let g =
        T::slice(&g.data).ok_or_else(|| ExecError::Type("attention_vjp cotangent dtype".into()))?;
    Ok(per_atom((n, s, d + 4), |st, i, rows| {
        let gi = &g[i * s * d..(i + 1) * s * d];
        atom_vjp(&p, slots_of(all, i, s, d), gi, st, rows)
    }))
}

/// `Op::Attention`.
pub fn attention(at: &Attention, args: [&Tensor; 4], packs: &Packs) -> R<Tensor> {
    match &args[0].data {
        Data::F64(_) => attention_t::<f64>(at, args, packs),
        Data::F32(_) => attention_t::<f32>(at, args, packs),
        _ => Err(ExecError::Type("attention of non-floats".into())),
    }
}

/// `Op::AttentionVjp`.
pub fn attention_vjp(at: &Attention, args: [&Tensor; 4], g: &Tensor, packs: &Packs) -> R<Tensor> {
    match &args[0].data {
        Data::F64(_) => attention_vjp_t::<f64>(at, args, g, packs),
        Data::F32(_) => attention_vjp_t::<f32>(at, args, g, packs),
        _ => Err(ExecError::Type("attention_vjp of non-floats".into())),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use dpc_compiler::graph::{Act, DType, Mlp, MlpLayer, Residual};

    use super::*;

    /// A small deterministic pseudo-random sequence in [-1, 1).
    fn noise(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    fn linear(k: usize, n: usize, seed: u64, dt: DType) -> Arc<Mlp> {
        let t = |shape: Vec<usize>, v: Vec<f64>| match dt {
            DType::F32 => Tensor::f32(shape, v.iter().map(|&x| x as f32).collect()),
            _ => Tensor::f64(shape, v),
        };
        Arc::new(Mlp {
            dtype: dt,
            layers: vec![MlpLayer {
                w: Arc::new(t(vec![k, n], noise(k * n, seed))),
                b: Some(Arc::new(t(vec![n], noise(n, seed + 1)))),
                idt: None,
                act: Act::Linear,
                residual: Residual::None,
            }],
        })
    }

    const D: usize = 5;
    const H: usize = 3;
    const S: usize = 6;
    const N: usize = 3;

    fn layer(smooth: bool, normalize: bool, dotr: bool, dt: DType) -> Attention {
        let v = |x: Vec<f64>| match dt {
            DType::F32 => Tensor::f32(vec![D], x.iter().map(|&x| x as f32).collect()),
            _ => Tensor::f64(vec![D], x),
        };
        Attention {
            in_proj: linear(D, 3 * H, 1, dt),
            out_proj: linear(H, D, 3, dt),
            hidden: H,
            scaling: 0.7,
            normalize,
            floor_sq: 1e-24,
            dotr,
            smooth,
            shift: 20.0,
            masked_logit: -1e30,
            norm_w: Arc::new(v(noise(D, 5).iter().map(|w| 1.0 + 0.3 * w).collect())),
            norm_b: Arc::new(v(noise(D, 6))),
            eps: 1e-5,
        }
    }

    /// Atom 0 has holes in the middle of its mask, atom 1 none, atom 2 no neighbour.
    fn inputs() -> (Vec<f64>, Vec<f64>, Vec<bool>, Vec<f64>) {
        let x = noise(N * S * D, 11);
        let mask: Vec<bool> = (0..N * S)
            .map(|i| match i / S {
                0 => !matches!(i % S, 1 | 4),
                1 => true,
                _ => false,
            })
            .collect();
        let sw: Vec<f64> = noise(N * S, 12)
            .iter()
            .zip(&mask)
            .map(|(v, &m)| if m { 0.5 + 0.4 * v } else { 0.0 })
            .collect();
        let mut r = noise(N * S * 3, 13);
        for v in r.chunks_exact_mut(3) {
            let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
            v.iter_mut().for_each(|c| *c /= n);
        }
        (x, sw, mask, r)
    }

    fn tensors(x: &[f64], sw: &[f64], mask: &[bool], r: &[f64]) -> [Tensor; 4] {
        [
            Tensor::f64(vec![N, S, D], x.to_vec()),
            Tensor::f64(vec![N, S], sw.to_vec()),
            Tensor::bool(vec![N, S], mask.to_vec()),
            Tensor::f64(vec![N, S, 3], r.to_vec()),
        ]
    }

    fn packs(at: &Attention) -> Packs {
        let mut p = Packs::default();
        p.add(&at.in_proj, true, None);
        p.add(&at.out_proj, true, None);
        p
    }

    fn values(t: &Tensor) -> Vec<f64> {
        match &t.data {
            Data::F64(v) => v.clone(),
            Data::F32(v) => v.iter().map(|&x| x as f64).collect(),
            _ => panic!("not floats"),
        }
    }

    /// `sum g * layer(x, sw, r)`.
    fn loss(at: &Attention, pk: &Packs, a: &[Tensor; 4], g: &[f64]) -> f64 {
        let y = values(&attention(at, [&a[0], &a[1], &a[2], &a[3]], pk).unwrap());
        y.iter().zip(g).map(|(y, g)| y * g).sum()
    }

    #[test]
    fn the_vjp_matches_central_differences() {
        let (x, sw, mask, r) = inputs();
        let g = noise(N * S * D, 14);
        for (smooth, normalize, dotr) in [
            (false, true, true),
            (true, true, true),
            (false, false, false),
            (true, false, true),
        ] {
            let at = layer(smooth, normalize, dotr, DType::F64);
            let pk = packs(&at);
            let a = tensors(&x, &sw, &mask, &r);
            let gt = Tensor::f64(vec![N, S, D], g.clone());
            let vjp = values(&attention_vjp(&at, [&a[0], &a[1], &a[2], &a[3]], &gt, &pk).unwrap());
            let eps = 1e-6;
            let at_ = |which: usize, i: usize| {
                let mut v = [x.clone(), sw.clone(), r.clone()];
                v[which][i] += eps;
                let up = loss(&at, &pk, &tensors(&v[0], &v[1], &mask, &v[2]), &g);
                v[which][i] -= 2.0 * eps;
                let down = loss(&at, &pk, &tensors(&v[0], &v[1], &mask, &v[2]), &g);
                (up - down) / (2.0 * eps)
            };
            let label = format!("smooth {smooth} normalize {normalize} dotr {dotr}");
            for slot in 0..N * S {
                let row = &vjp[slot * (D + 4)..(slot + 1) * (D + 4)];
                let mut want: Vec<f64> = (0..D).map(|c| at_(0, slot * D + c)).collect();
                // The switch only enters with the smooth gate, and only at real neighbours
                // do the op's derivatives reach the model (sw is zero elsewhere).
                want.push(if smooth && mask[slot] {
                    at_(1, slot)
                } else {
                    row[D]
                });
                want.extend((0..3).map(|c| at_(2, slot * 3 + c)));
                for (c, (&got, &w)) in row.iter().zip(&want).enumerate() {
                    assert!(
                        (got - w).abs() < 1e-6 * (1.0 + w.abs()),
                        "{label}: slot {slot} column {c}: vjp {got}, differences {w}"
                    );
                }
                if !smooth {
                    assert_eq!(row[D], 0.0, "{label}: dsw without the smooth gate");
                }
            }
        }
    }

    fn args(t: &[Tensor; 4]) -> [&Tensor; 4] {
        [&t[0], &t[1], &t[2], &t[3]]
    }

    #[test]
    fn float32_follows_float64() {
        let (x, sw, mask, r) = inputs();
        let g = noise(N * S * D, 14);
        for smooth in [false, true] {
            let a64 = layer(smooth, true, true, DType::F64);
            let a32 = layer(smooth, true, true, DType::F32);
            let (p64, p32) = (packs(&a64), packs(&a32));
            let t64 = tensors(&x, &sw, &mask, &r);
            let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
            let t32 = [
                Tensor::f32(vec![N, S, D], f32s(&x)),
                Tensor::f32(vec![N, S], f32s(&sw)),
                Tensor::bool(vec![N, S], mask.clone()),
                Tensor::f32(vec![N, S, 3], f32s(&r)),
            ];
            let y64 = values(&attention(&a64, args(&t64), &p64).unwrap());
            let y32 = values(&attention(&a32, args(&t32), &p32).unwrap());
            let g64 = Tensor::f64(vec![N, S, D], g.clone());
            let g32 = Tensor::f32(vec![N, S, D], f32s(&g));
            let d64 = values(&attention_vjp(&a64, args(&t64), &g64, &p64).unwrap());
            let d32 = values(&attention_vjp(&a32, args(&t32), &g32, &p32).unwrap());
            for (a, b) in y64.iter().zip(&y32).chain(d64.iter().zip(&d32)) {
                assert!(
                    (a - b).abs() < 1e-4 * (1.0 + a.abs()),
                    "float64 {a}, float32 {b}"
                );
            }
        }
    }

    #[test]
    fn mismatched_inputs_are_errors() {
        let at = layer(false, true, true, DType::F64);
        let pk = packs(&at);
        let (x, sw, mask, r) = inputs();
        let a = tensors(&x, &sw, &mask, &r);
        let short = Tensor::f64(vec![N, S - 1], vec![0.0; N * (S - 1)]);
        assert!(attention(&at, [&a[0], &short, &a[2], &a[3]], &pk).is_err());
        let wrong = Tensor::f64(vec![N, S], vec![0.0; N * S]);
        assert!(attention(&at, [&a[0], &a[1], &wrong, &a[3]], &pk).is_err());
        let g = Tensor::f64(vec![N, S, D + 1], vec![0.0; N * S * (D + 1)]);
        assert!(attention_vjp(&at, [&a[0], &a[1], &a[2], &a[3]], &g, &pk).is_err());
    }
}
