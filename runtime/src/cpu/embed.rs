//! The fused embedding kernels (`Op::EmbedContract` and its VJP).
//!
//! For a block of centre atoms the whole embedding network runs on the block's neighbour
//! rows (one GEMM per layer), the result is contracted with each atom's environment rows,
//! and only the `[m, c]` contraction per atom is written out: the `[rows, m]` activations
//! stay in a per-block scratch that fits in cache. The VJP re-runs the network on the block,
//! keeping each layer's activation for its derivative, and back-propagates in place. Blocks
//! are independent and run on the rayon pool.

use dpc_compiler::graph::table::Scalar;
use dpc_compiler::graph::{Act, Data, Embed, Knots, Mlp, Residual, Tensor};
use rayon::prelude::*;

use super::real::Real;
use super::ExecError;

type R<T> = Result<T, ExecError>;

/// Neighbour rows per block: large enough for efficient GEMMs, small enough that a block's
/// activations stay in cache.
const ROWS_PER_BLOCK: usize = 1024;

/// One layer's weights, borrowed from the graph (already in the kernel's element type).
pub(super) struct Layer<'a, T: Real> {
    pub n_in: usize,
    pub n_out: usize,
    w: &'a [T],
    /// `W` and `W^T` packed for the GEMMs (layers with more than one input).
    fwd: Option<T::Packed>,
    bwd: Option<T::Packed>,
    b: Option<&'a [T]>,
    idt: Option<&'a [T]>,
    act: Act,
    residual: Residual,
}

fn view<T: Real>(t: &Tensor) -> R<&[T]> {
    T::slice(&t.data)
        .ok_or_else(|| ExecError::Type("fused network weights of another dtype".into()))
}

/// The network's layers; `backward` packs `W^T` too (for a VJP).
impl<T: Real> Layer<'_, T> {
    /// Whether the layer's output is `tanh(z)` itself (no `idt`, no residual), so a VJP can
    /// read it where it would read the kept `tanh(z)`.
    pub fn tanh_is_output(&self) -> bool {
        self.act == Act::Tanh && self.idt.is_none() && self.residual == Residual::None
    }
}

pub(super) fn layers<T: Real>(net: &Mlp, backward: bool) -> R<Vec<Layer<'_, T>>> {
    net.layers
        .iter()
        .map(|l| {
            let w = view(&l.w)?;
            let (k, n) = (l.n_in(), l.n_out());
            let gemm = k > 1;
            Ok(Layer {
                n_in: k,
                n_out: n,
                w,
                fwd: gemm.then(|| T::pack(w, k, n, false)),
                bwd: (gemm && backward).then(|| T::pack(w, n, k, true)),
                b: l.b.as_deref().map(view).transpose()?,
                idt: l.idt.as_deref().map(view).transpose()?,
                act: l.act,
                residual: l.residual,
            })
        })
        .collect()
}

/// Where a block's embedding `G` comes from: the network, or its compression table.
enum Source<'a, T: Real> {
    Net(Vec<Layer<'a, T>>),
    Table(TableRef<'a, T>),
}

struct TableRef<'a, T> {
    knots: Knots,
    m: usize,
    /// `[intervals, 6, m]`.
    coef: &'a [T],
    /// For inputs off the table.
    exact: Scalar,
}

impl<'a, T: Real> Source<'a, T> {
    fn new(e: &'a Embed, backward: bool) -> R<Source<'a, T>> {
        match &e.table {
            None => Ok(Source::Net(layers(&e.net, backward)?)),
            Some(t) => {
                let coef = T::slice(&t.coef.data)
                    .ok_or_else(|| ExecError::Type("compression table of another dtype".into()))?;
                if coef.len() != t.knots.intervals() * 6 * t.m || t.m != e.net.n_out() {
                    return Err(ExecError::Shape("compression table size".into()));
                }
                Ok(Source::Table(TableRef {
                    knots: t.knots,
                    m: t.m,
                    coef,
                    exact: Scalar::new(&e.net),
                }))
            }
        }
    }

    /// Scratch slots: one per layer, or one for the table.
    fn depth(&self) -> usize {
        match self {
            Source::Net(l) => l.len(),
            Source::Table(_) => 1,
        }
    }

    /// `G [rows, m]` of the inputs in `sc.x0`, left in the last `sc.h`; with `keep`, what
    /// the VJP needs: tanh outputs of each layer in `sc.t`, or for a table `dG/dx` in
    /// `sc.t[0]`.
    fn run(&self, sc: &mut Scratch<T>, keep: bool) {
        match self {
            Source::Net(layers) => forward(layers, sc, keep),
            Source::Table(t) => {
                let rows = sc.x0.len();
                let g = sized(&mut sc.h[0], rows * t.m);
                let dg = if keep {
                    Some(sized(&mut sc.t[0], rows * t.m))
                } else {
                    None
                };
                table_eval(t, &sc.x0, g, dg);
            }
        }
    }
}

/// The table's `G` (and `dG/dx`) for inputs `x`; inputs off the table go through the network.
fn table_eval<T: Real>(t: &TableRef<T>, x: &[T], g: &mut [T], mut dg: Option<&mut [T]>) {
    let m = t.m;
    let (two, three, four, five) = (
        T::from_f64(2.0),
        T::from_f64(3.0),
        T::from_f64(4.0),
        T::from_f64(5.0),
    );
    for (r, (&xv, gr)) in x.iter().zip(g.chunks_exact_mut(m)).enumerate() {
        let dgr = dg.as_deref_mut().map(|d| &mut d[r * m..(r + 1) * m]);
        let Some((k, dx)) = t.knots.locate(xv.to_f64()) else {
            if std::env::var("DPC_DEBUG_TABLE").is_ok() {
                eprintln!(
                    "off table {} [{}, {})",
                    xv.to_f64(),
                    t.knots.lower,
                    t.knots.max()
                );
            }
            let (y, d, _) = t.exact.eval(xv.to_f64());
            for (o, v) in gr.iter_mut().zip(&y) {
                *o = T::from_f64(*v);
            }
            if let Some(dgr) = dgr {
                for (o, v) in dgr.iter_mut().zip(&d) {
                    *o = T::from_f64(*v);
                }
            }
            continue;
        };
        let dx = T::from_f64(dx);
        let c = &t.coef[k * 6 * m..(k + 1) * 6 * m];
        let (c0, c) = c.split_at(m);
        let (c1, c) = c.split_at(m);
        let (c2, c) = c.split_at(m);
        let (c3, c) = c.split_at(m);
        let (c4, c5) = c.split_at(m);
        for (o, gv) in gr.iter_mut().enumerate() {
            *gv = c0[o] + dx * (c1[o] + dx * (c2[o] + dx * (c3[o] + dx * (c4[o] + dx * c5[o]))));
        }
        if let Some(dgr) = dgr {
            for (o, dv) in dgr.iter_mut().enumerate() {
                *dv = c1[o]
                    + dx * (two * c2[o]
                        + dx * (three * c3[o] + dx * (four * c4[o] + dx * five * c5[o])));
            }
        }
    }
}

/// Per-thread buffers, reused from block to block so the hot loop does not allocate.
pub(super) struct Scratch<T> {
    /// The network input of the block's rows.
    pub x0: Vec<T>,
    /// Each layer's output `h_l [rows, out_l]`.
    pub h: Vec<Vec<T>>,
    /// For tanh layers in a VJP: `tanh(z_l)`, the input of the derivative.
    pub t: Vec<Vec<T>>,
    pub dh: Vec<T>,
    pub dz: Vec<T>,
    pub dprev: Vec<T>,
}

impl<T: Real> Scratch<T> {
    pub fn new(layers: usize) -> Scratch<T> {
        Scratch {
            x0: Vec::new(),
            h: (0..layers).map(|_| Vec::new()).collect(),
            t: (0..layers).map(|_| Vec::new()).collect(),
            dh: Vec::new(),
            dz: Vec::new(),
            dprev: Vec::new(),
        }
    }
}

/// `v` resized to `n` elements, reusing its allocation (contents are overwritten by callers).
pub(super) fn sized<T: Real>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    v.resize(n, T::default());
    &mut v[..n]
}

/// Run the network on the rows of `sc.x0` (`[rows, n_in]`), leaving each layer's output in
/// `sc.h`; with `keep`, tanh layers also leave `tanh(z_l)` in `sc.t`.
pub(super) fn forward<T: Real>(net: &[Layer<'_, T>], sc: &mut Scratch<T>, keep: bool) {
    let rows = sc.x0.len() / net[0].n_in.max(1);
    for (k, l) in net.iter().enumerate() {
        let (n_in, n_out) = (l.n_in, l.n_out);
        let (before, after) = sc.h.split_at_mut(k);
        let x: &[T] = if k == 0 { &sc.x0 } else { &before[k - 1] };
        let z = sized(&mut after[0], rows * n_out);
        if n_in == 1 {
            for (zr, &xv) in z.chunks_exact_mut(n_out).zip(x) {
                for (zo, &w) in zr.iter_mut().zip(l.w) {
                    *zo = xv * w;
                }
            }
        } else {
            let w = l.fwd.as_ref().expect("layers() packs every GEMM layer");
            T::gemm_packed(w, rows, x, n_in, z, n_out, false);
        }
        if let Some(b) = &l.b {
            for row in z.chunks_exact_mut(n_out) {
                for (v, &bb) in row.iter_mut().zip(b.iter()) {
                    *v = *v + bb;
                }
            }
        }
        if l.act == Act::Tanh {
            T::tanh_in_place(z);
            // A layer whose output is tanh(z) itself needs no copy: the VJP reads `sc.h`.
            if keep && !l.tanh_is_output() {
                sized(&mut sc.t[k], rows * n_out).copy_from_slice(z);
            }
        }
        if let Some(idt) = &l.idt {
            for row in z.chunks_exact_mut(n_out) {
                for (v, &sc) in row.iter_mut().zip(idt.iter()) {
                    *v = *v * sc;
                }
            }
        }
        match l.residual {
            Residual::None => {}
            Residual::Same => {
                for (v, &xv) in z.iter_mut().zip(x) {
                    *v = *v + xv;
                }
            }
            Residual::Doubled => {
                for (row, xr) in z.chunks_exact_mut(n_out).zip(x.chunks_exact(n_in)) {
                    let (lo, hi) = row.split_at_mut(n_in);
                    for ((a, b), &xv) in lo.iter_mut().zip(hi.iter_mut()).zip(xr) {
                        *a = *a + xv;
                        *b = *b + xv;
                    }
                }
            }
        }
    }
}

/// Back-propagate `sc.dh` (the cotangent of the last layer's output, `[rows, out]`) through
/// the layers of a `forward(.., keep = true)` on the same rows, leaving the cotangent of the
/// network input (`[rows, n_in]`) in `sc.dh`.
pub(super) fn backward<T: Real>(layers: &[Layer<'_, T>], sc: &mut Scratch<T>, rows: usize) {
    // Back through the layers: h_l = act(z_l) idt + residual(h_{l-1}).
    for (k, l) in layers.iter().enumerate().rev() {
        let (n_in, n_out) = (l.n_in, l.n_out);
        let dh = &sc.dh[..rows * n_out];
        let dz = sized(&mut sc.dz, rows * n_out);
        // dz = dh * idt * tanh'(z), in one pass.
        let t: &[T] = if l.tanh_is_output() {
            &sc.h[k]
        } else {
            &sc.t[k]
        };
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
        let dprev = sized(&mut sc.dprev, rows * n_in);
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
            let wt = l.bwd.as_ref().expect("layers(.., true) packs W^T");
            T::gemm_packed(wt, rows, dz, n_out, dprev, n_in, true);
        }
        std::mem::swap(&mut sc.dh, &mut sc.dprev);
    }
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

/// `out [m, c] = G^T [m, s] rr [s, c]` for one atom (`G [s, m]`), as rank-1 updates into
/// `acc [c, m]` (long rows, so the inner loop vectorizes over `m`), then transposed: the
/// shapes are too small for a GEMM call to pay off.
fn contract_atom<T: Real>(g: &[T], r: &[T], m: usize, c: usize, acc: &mut [T], out: &mut [T]) {
    acc.fill(T::default());
    for (gj, rj) in g.chunks_exact(m).zip(r.chunks_exact(c)) {
        for (arow, &rv) in acc.chunks_exact_mut(m).zip(rj) {
            for (a, &gv) in arow.iter_mut().zip(gj) {
                *a = *a + rv * gv;
            }
        }
    }
    for (ci, arow) in acc.chunks_exact(m).enumerate() {
        for (mi, &v) in arow.iter().enumerate() {
            out[mi * c + ci] = v;
        }
    }
}

fn contract_t<T: Real>(e: &Embed, rr: &[T], n: usize, s: usize, c: usize) -> R<Vec<T>> {
    let src = Source::<T>::new(e, false)?;
    let depth = src.depth();
    let m = e.net.n_out();
    let mut out = vec![T::default(); n * m * c];
    if n == 0 || s == 0 {
        return Ok(out);
    }
    let nb = block_atoms(s);
    out.par_chunks_mut(nb * m * c)
        .zip(rr.par_chunks(nb * s * c))
        .for_each_init(
            || Scratch::new(depth),
            |sc, (o, r)| {
                sc.x0.clear();
                sc.x0.extend(r.iter().step_by(c).copied());
                src.run(sc, false);
                let g = &sc.h[depth - 1];
                let acc = sized(&mut sc.dz, m * c);
                for ((ga, ra), oa) in g
                    .chunks_exact(s * m)
                    .zip(r.chunks_exact(s * c))
                    .zip(o.chunks_exact_mut(m * c))
                {
                    contract_atom(ga, ra, m, c, acc, oa);
                }
            },
        );
    Ok(out)
}

fn contract_vjp_t<T: Real>(
    e: &Embed,
    rr: &[T],
    gy: &[T],
    n: usize,
    s: usize,
    c: usize,
) -> R<Vec<T>> {
    let src = Source::<T>::new(e, true)?;
    let depth = src.depth();
    let m = e.net.n_out();
    let mut d_rr = vec![T::default(); n * s * c];
    if n == 0 || s == 0 {
        return Ok(d_rr);
    }
    let nb = block_atoms(s);
    let last = depth - 1;
    d_rr.par_chunks_mut(nb * s * c)
        .zip(rr.par_chunks(nb * s * c))
        .zip(gy.par_chunks(nb * m * c))
        .for_each_init(
            || Scratch::new(depth),
            |sc, ((d, r), gb)| {
                let rows = r.len() / c;
                sc.x0.clear();
                sc.x0.extend(r.iter().step_by(c).copied());
                src.run(sc, true);
                // dG_j [m] = gy_a [m, c] rr_j [c];  d_rr_j [c] = gy_a^T [c, m] G_j [m], with
                // gy_a transposed to [c, m] so both loops run along m.
                let g = &sc.h[last];
                let dh = sized(&mut sc.dh, rows * m);
                let gyt = sized(&mut sc.dprev, m * c);
                for (((ga, ra), gya), (dha, da)) in g
                    .chunks_exact(s * m)
                    .zip(r.chunks_exact(s * c))
                    .zip(gb.chunks_exact(m * c))
                    .zip(dh.chunks_exact_mut(s * m).zip(d.chunks_exact_mut(s * c)))
                {
                    for (mi, row) in gya.chunks_exact(c).enumerate() {
                        for (ci, &v) in row.iter().enumerate() {
                            gyt[ci * m + mi] = v;
                        }
                    }
                    for (((gj, rj), dhj), dj) in ga
                        .chunks_exact(m)
                        .zip(ra.chunks_exact(c))
                        .zip(dha.chunks_exact_mut(m))
                        .zip(da.chunks_exact_mut(c))
                    {
                        dhj.fill(T::default());
                        for ((grow, &rv), dv) in gyt.chunks_exact(m).zip(rj).zip(dj.iter_mut()) {
                            let mut dot = T::default();
                            for ((dg, &gyv), &gv) in dhj.iter_mut().zip(grow).zip(gj) {
                                *dg = *dg + gyv * rv;
                                dot = dot + gyv * gv;
                            }
                            *dv = dot;
                        }
                    }
                }
                let layers = match &src {
                    Source::Net(layers) => layers,
                    Source::Table(_) => {
                        // dx = dG . dG/dx, row by row.
                        for ((row, dhr), dgr) in d
                            .chunks_exact_mut(c)
                            .zip(sc.dh[..rows * m].chunks_exact(m))
                            .zip(sc.t[0][..rows * m].chunks_exact(m))
                        {
                            let mut acc = T::default();
                            for (&a, &b) in dhr.iter().zip(dgr) {
                                acc = acc + a * b;
                            }
                            row[0] = row[0] + acc;
                        }
                        return;
                    }
                };
                backward(layers, sc, rows);
                // sc.dh is now the cotangent of the network input, channel 0 of rr.
                for (row, &dx) in d.chunks_exact_mut(c).zip(&sc.dh[..rows]) {
                    row[0] = row[0] + dx;
                }
            },
        );
    Ok(d_rr)
}

/// The rows an op computes: all (`None`), or those whose type is `centre_type`.
pub(super) fn selected(
    centre_type: Option<i32>,
    types: Option<&Tensor>,
    n: usize,
    op: &str,
) -> R<Option<Vec<usize>>> {
    let Some(t) = centre_type else {
        return Ok(None);
    };
    match types.map(|x| &x.data) {
        Some(Data::I32(v)) if v.len() == n => Ok(Some(
            v.iter()
                .enumerate()
                .filter(|(_, &x)| x == t)
                .map(|(i, _)| i)
                .collect(),
        )),
        _ => Err(ExecError::Type(format!(
            "{op} needs the rows' types (i32 [n])"
        ))),
    }
}

/// Rows `sel` of `x [n, width]`, packed.
fn pack<T: Real>(x: &[T], sel: &[usize], width: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(sel.len() * width);
    for &i in sel {
        out.extend_from_slice(&x[i * width..(i + 1) * width]);
    }
    out
}

/// `packed [k, width]` placed at rows `sel` of zeros `[n, width]`.
fn unpack<T: Real>(packed: &[T], sel: &[usize], n: usize, width: usize) -> Vec<T> {
    let mut out = vec![T::default(); n * width];
    for (k, &i) in sel.iter().enumerate() {
        out[i * width..(i + 1) * width].copy_from_slice(&packed[k * width..(k + 1) * width]);
    }
    out
}

fn contract_sel<T: Real>(
    e: &Embed,
    rr: &[T],
    sel: Option<&[usize]>,
    n: usize,
    s: usize,
    c: usize,
) -> R<Vec<T>> {
    let m = e.net.n_out();
    match sel {
        None => contract_t(e, rr, n, s, c),
        Some(sel) => {
            let packed = contract_t(e, &pack(rr, sel, s * c), sel.len(), s, c)?;
            Ok(unpack(&packed, sel, n, m * c))
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn contract_vjp_sel<T: Real>(
    e: &Embed,
    rr: &[T],
    gy: &[T],
    sel: Option<&[usize]>,
    n: usize,
    s: usize,
    c: usize,
) -> R<Vec<T>> {
    let m = e.net.n_out();
    match sel {
        None => contract_vjp_t(e, rr, gy, n, s, c),
        Some(sel) => {
            let packed = contract_vjp_t(
                e,
                &pack(rr, sel, s * c),
                &pack(gy, sel, m * c),
                sel.len(),
                s,
                c,
            )?;
            Ok(unpack(&packed, sel, n, s * c))
        }
    }
}

/// `Op::EmbedContract`.
pub fn embed_contract(e: &Embed, rr: &Tensor, types: Option<&Tensor>) -> R<Tensor> {
    let net: &Mlp = &e.net;
    let m = net.n_out();
    let (n, s, c) = dims(rr)?;
    let sel = selected(e.centre_type, types, n, "embed_contract")?;
    let sel = sel.as_deref();
    let data = match &rr.data {
        Data::F64(v) => f64::wrap(contract_sel(e, v, sel, n, s, c)?),
        Data::F32(v) => f32::wrap(contract_sel(e, v, sel, n, s, c)?),
        _ => return Err(ExecError::Type("embed_contract of non-floats".into())),
    };
    Ok(Tensor {
        shape: vec![n, m, c],
        data,
    })
}

/// `Op::EmbedContractVjp`.
pub fn embed_contract_vjp(
    e: &Embed,
    rr: &Tensor,
    gy: &Tensor,
    types: Option<&Tensor>,
) -> R<Tensor> {
    let net: &Mlp = &e.net;
    let m = net.n_out();
    let (n, s, c) = dims(rr)?;
    if gy.shape != [n, m, c] {
        return Err(ExecError::Shape(format!(
            "embed_contract_vjp cotangent {:?} for rr {:?}",
            gy.shape, rr.shape
        )));
    }
    let sel = selected(e.centre_type, types, n, "embed_contract")?;
    let sel = sel.as_deref();
    let data = match (&rr.data, &gy.data) {
        (Data::F64(v), Data::F64(g)) => f64::wrap(contract_vjp_sel(e, v, g, sel, n, s, c)?),
        (Data::F32(v), Data::F32(g)) => f32::wrap(contract_vjp_sel(e, v, g, sel, n, s, c)?),
        _ => return Err(ExecError::Type("embed_contract_vjp dtypes".into())),
    };
    Ok(Tensor {
        shape: rr.shape.clone(),
        data,
    })
}
