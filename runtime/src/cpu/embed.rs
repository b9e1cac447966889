//! The fused embedding kernels (`Op::EmbedContract` and its VJP).
//!
//! For a block of centre atoms the whole embedding network runs on the block's neighbour
//! rows (one GEMM per layer), the result is contracted with each atom's environment rows,
//! and only the `[m, c]` contraction per atom is written out: the `[rows, m]` activations
//! stay in a per-block scratch that fits in cache. Blocks are independent and run on the
//! rayon pool.
//!
//! The VJP needs each layer's activation. When the executor pairs a forward op with its
//! VJP, the forward op writes them out (`Saved`, about 1.4 KB per neighbour row for a
//! [25, 50, 100] network) and the VJP only back-propagates; otherwise the VJP re-runs the
//! network on the block. Writing and reading them back costs far less than the GEMMs and
//! `tanh`s of a second forward pass.

use dpc_compiler::graph::table::Scalar;
use dpc_compiler::graph::{Data, Embed, Knots, Mlp, Tensor};
use rayon::prelude::*;

use super::net::{acts_width, backward, forward, layers, replay, sized, Layer, Scratch};
use super::real::Real;
use super::ExecError;

type R<T> = Result<T, ExecError>;

/// Neighbour rows per block: large enough for efficient GEMMs, small enough that a block's
/// activations stay in cache.
const ROWS_PER_BLOCK: usize = 1024;

/// The most memory a forward op keeps for its VJP (see `Saved`); beyond it the VJP re-runs
/// the network.
const SAVE_LIMIT_BYTES: usize = 512 << 20;

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

    /// Activations per row a network keeps for its VJP (none for a table).
    fn saved_width(&self) -> usize {
        match self {
            Source::Net(l) => acts_width(l),
            Source::Table(_) => 0,
        }
    }

    /// `G [rows, m]` of the inputs in `sc.x0`, left in the last `sc.h`. With `keep`, what
    /// the VJP needs goes to `sc.acts`: the network's activations, or a table's `dG/dx`.
    fn run(&self, sc: &mut Scratch<T>, keep: bool) {
        match self {
            Source::Net(layers) => {
                let acts = keep.then(|| {
                    let rows = sc.x0.len();
                    sized(&mut sc.acts, rows * acts_width(layers))
                });
                forward(layers, &sc.x0, &mut sc.h, acts)
            }
            Source::Table(t) => {
                let rows = sc.x0.len();
                let g = sized(&mut sc.h[0], rows * t.m);
                let dg = if keep {
                    Some(sized(&mut sc.acts, rows * t.m))
                } else {
                    None
                };
                table_eval(t, &sc.x0, g, dg);
            }
        }
    }
}

simd_fn! {
/// The table's `G` (and `dG/dx`) for inputs `x`; inputs off the table go through the network.
fn table_eval<T: Real>(t: &TableRef<T>, x: &[T], g: &mut [T], dg: Option<&mut [T]>) {
    let mut dg = dg;
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
#[inline(always)]
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

simd_fn! {
/// `contract_atom` for each atom of a block: `G [atoms * s, m]`, `rr [atoms * s, c]`,
/// `out [atoms, m, c]`.
fn contract_block<T: Real>(
    g: &[T],
    r: &[T],
    out: &mut [T],
    dims: (usize, usize, usize),
    acc: &mut [T],
) {
    let (m, s, c) = dims;
    for ((ga, ra), oa) in g
        .chunks_exact(s * m)
        .zip(r.chunks_exact(s * c))
        .zip(out.chunks_exact_mut(m * c))
    {
        contract_atom(ga, ra, m, c, acc, oa);
    }
}
}

/// `sum a_i b_i` in eight interleaved partial sums, so the loop vectorizes and its additions
/// do not wait on each other.
#[inline(always)]
fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    const L: usize = 8;
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
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

simd_fn! {
/// The contraction's VJP for each atom of a block: `dG_j [m] = gy_a [m, c] rr_j [c]` into
/// `dg` and `d_rr_j [c] = gy_a^T [c, m] G_j [m]` into `d_rr` (`G`, `dg [atoms * s, m]`;
/// `rr`, `d_rr [atoms * s, c]`; `gy [atoms, m, c]`), with `gy_a` transposed into
/// `gyt [c, m]` so both loops run along `m`.
fn contract_vjp_block<T: Real>(
    g: &[T],
    r: &[T],
    gy: &[T],
    dg: &mut [T],
    d_rr: &mut [T],
    dims: (usize, usize, usize),
    gyt: &mut [T],
) {
    let (m, s, c) = dims;
    for (((ga, ra), gya), (dga, da)) in g
        .chunks_exact(s * m)
        .zip(r.chunks_exact(s * c))
        .zip(gy.chunks_exact(m * c))
        .zip(dg.chunks_exact_mut(s * m).zip(d_rr.chunks_exact_mut(s * c)))
    {
        for (mi, row) in gya.chunks_exact(c).enumerate() {
            for (ci, &v) in row.iter().enumerate() {
                gyt[ci * m + mi] = v;
            }
        }
        for (((gj, rj), dgj), dj) in ga
            .chunks_exact(m)
            .zip(ra.chunks_exact(c))
            .zip(dga.chunks_exact_mut(m))
            .zip(da.chunks_exact_mut(c))
        {
            dgj.fill(T::default());
            for ((grow, &rv), dv) in gyt.chunks_exact(m).zip(rj).zip(dj.iter_mut()) {
                for (o, &gyv) in dgj.iter_mut().zip(grow) {
                    *o = *o + gyv * rv;
                }
                *dv = dot(grow, gj);
            }
        }
    }
}
}

simd_fn! {
/// Channel 0 of each `d_rr` row gains `dG_j . dG/dx_j` (a table's VJP).
fn table_vjp_rows<T: Real>(d_rr: &mut [T], dg: &[T], dg_dx: &[T], m: usize, c: usize) {
    for ((row, a), b) in d_rr
        .chunks_exact_mut(c)
        .zip(dg.chunks_exact(m))
        .zip(dg_dx.chunks_exact(m))
    {
        row[0] = row[0] + dot(a, b);
    }
}
}

/// Per-block slices of a buffer of `per_block` elements a block (the last may be shorter),
/// or `None` for every block when there is no buffer.
fn blocks_mut<T>(buf: Option<&mut [T]>, per_block: usize, blocks: usize) -> Vec<Option<&mut [T]>> {
    match buf {
        Some(b) => b.chunks_mut(per_block.max(1)).map(Some).collect(),
        None => (0..blocks).map(|_| None).collect(),
    }
}

/// `G^T rr` per atom; with `save`, also the network's activations for the VJP (`None` for
/// a table, or when they would pass `SAVE_LIMIT_BYTES`).
fn contract_t<T: Real>(
    e: &Embed,
    rr: &[T],
    n: usize,
    s: usize,
    c: usize,
    save: bool,
) -> R<(Vec<T>, Option<Vec<T>>)> {
    let src = Source::<T>::new(e, false)?;
    let depth = src.depth();
    let m = e.net.n_out();
    let mut out = vec![T::default(); n * m * c];
    if n == 0 || s == 0 {
        return Ok((out, None));
    }
    let width = src.saved_width();
    let saved_len = n * s * width;
    let mut saved = (save
        && width > 0
        && saved_len.saturating_mul(std::mem::size_of::<T>()) <= SAVE_LIMIT_BYTES)
        .then(|| vec![T::default(); saved_len]);
    let nb = block_atoms(s);
    let blocks = n.div_ceil(nb);
    let kept = blocks_mut(saved.as_deref_mut(), nb * s * width, blocks);
    out.par_chunks_mut(nb * m * c)
        .zip(rr.par_chunks(nb * s * c))
        .zip(kept)
        .for_each_init(
            || Scratch::new(depth),
            |sc, ((o, r), kept)| {
                sc.x0.clear();
                sc.x0.extend(r.iter().step_by(c).copied());
                match (&src, kept) {
                    (Source::Net(layers), Some(k)) => forward(layers, &sc.x0, &mut sc.h, Some(k)),
                    _ => src.run(sc, false),
                }
                let acc = sized(&mut sc.g.dz, m * c);
                contract_block(&sc.h[depth - 1], r, o, (m, s, c), acc);
            },
        );
    Ok((out, saved))
}

/// `d_rr` from the cotangent `gy` of `G^T rr`; `saved` is what `contract_t` kept for it.
fn contract_vjp_t<T: Real>(
    e: &Embed,
    rr: &[T],
    gy: &[T],
    saved: Option<&[T]>,
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
    let width = src.saved_width();
    if let Some(k) = saved {
        if k.len() != n * s * width {
            return Err(ExecError::Shape(format!(
                "embed_contract_vjp given {} kept activations for {n} x {s} rows of {width}",
                k.len()
            )));
        }
    }
    let nb = block_atoms(s);
    let blocks = n.div_ceil(nb);
    let kept: Vec<Option<&[T]>> = match saved {
        Some(k) => k.chunks(nb * s * width).map(Some).collect(),
        None => vec![None; blocks],
    };
    let last = depth - 1;
    d_rr.par_chunks_mut(nb * s * c)
        .zip(rr.par_chunks(nb * s * c))
        .zip(gy.par_chunks(nb * m * c))
        .zip(kept)
        .for_each_init(
            || Scratch::new(depth),
            |sc, (((d, r), gb), kept)| {
                let rows = r.len() / c;
                sc.x0.clear();
                sc.x0.extend(r.iter().step_by(c).copied());
                match (&src, kept) {
                    (Source::Net(layers), Some(k)) => replay(layers, &sc.x0, k, &mut sc.h),
                    _ => src.run(sc, true),
                }
                let dg = sized(&mut sc.g.dh, rows * m);
                let gyt = sized(&mut sc.g.dprev, m * c);
                contract_vjp_block(&sc.h[last], r, gb, dg, d, (m, s, c), gyt);
                let layers = match &src {
                    Source::Net(layers) => layers,
                    Source::Table(_) => {
                        let (dg, dg_dx) = (&sc.g.dh[..rows * m], &sc.acts[..rows * m]);
                        table_vjp_rows(d, dg, dg_dx, m, c);
                        return;
                    }
                };
                let acts = kept.unwrap_or(&sc.acts);
                backward(layers, acts, rows, &mut sc.g);
                // sc.g.dh is now the cotangent of the network input, channel 0 of rr.
                for (row, &dx) in d.chunks_exact_mut(c).zip(&sc.g.dh[..rows]) {
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
    (n, s, c): (usize, usize, usize),
    save: bool,
) -> R<(Vec<T>, Option<Vec<T>>)> {
    let m = e.net.n_out();
    match sel {
        None => contract_t(e, rr, n, s, c, save),
        Some(sel) => {
            let (packed, saved) = contract_t(e, &pack(rr, sel, s * c), sel.len(), s, c, save)?;
            Ok((unpack(&packed, sel, n, m * c), saved))
        }
    }
}

fn contract_vjp_sel<T: Real>(
    e: &Embed,
    (rr, gy): (&[T], &[T]),
    saved: Option<&[T]>,
    sel: Option<&[usize]>,
    (n, s, c): (usize, usize, usize),
) -> R<Vec<T>> {
    let m = e.net.n_out();
    match sel {
        None => contract_vjp_t(e, rr, gy, saved, n, s, c),
        Some(sel) => {
            // The saved activations are of the packed rows, as the forward op ran them.
            let packed = contract_vjp_t(
                e,
                &pack(rr, sel, s * c),
                &pack(gy, sel, m * c),
                saved,
                sel.len(),
                s,
                c,
            )?;
            Ok(unpack(&packed, sel, n, s * c))
        }
    }
}

/// `Op::EmbedContract`. With `save`, also the activations its VJP can start from
/// (`embed_contract_vjp`'s `saved`), where the network is not a table and they fit in
/// `SAVE_LIMIT_BYTES`.
pub fn embed_contract(
    e: &Embed,
    rr: &Tensor,
    types: Option<&Tensor>,
    save: bool,
) -> R<(Tensor, Option<Tensor>)> {
    let net: &Mlp = &e.net;
    let m = net.n_out();
    let dims = dims(rr)?;
    let (n, _, c) = dims;
    let sel = selected(e.centre_type, types, n, "embed_contract")?;
    let sel = sel.as_deref();
    let (data, saved) = match &rr.data {
        Data::F64(v) => {
            let (o, k) = contract_sel(e, v, sel, dims, save)?;
            (f64::wrap(o), k.map(|k| Tensor::f64(vec![k.len()], k)))
        }
        Data::F32(v) => {
            let (o, k) = contract_sel(e, v, sel, dims, save)?;
            (f32::wrap(o), k.map(|k| Tensor::f32(vec![k.len()], k)))
        }
        _ => return Err(ExecError::Type("embed_contract of non-floats".into())),
    };
    Ok((
        Tensor {
            shape: vec![n, m, c],
            data,
        },
        saved,
    ))
}

/// `Op::EmbedContractVjp`; `saved` is what the paired `embed_contract(.., save = true)` of
/// the same `rr` and types kept, or `None` to re-run the network.
pub fn embed_contract_vjp(
    e: &Embed,
    rr: &Tensor,
    gy: &Tensor,
    types: Option<&Tensor>,
    saved: Option<&Tensor>,
) -> R<Tensor> {
    let net: &Mlp = &e.net;
    let m = net.n_out();
    let dims = dims(rr)?;
    let (n, _, c) = dims;
    if gy.shape != [n, m, c] {
        return Err(ExecError::Shape(format!(
            "embed_contract_vjp cotangent {:?} for rr {:?}",
            gy.shape, rr.shape
        )));
    }
    let sel = selected(e.centre_type, types, n, "embed_contract")?;
    let sel = sel.as_deref();
    let saved = saved.map(|t| &t.data);
    let data = match (&rr.data, &gy.data, saved) {
        (Data::F64(v), Data::F64(g), None) => {
            f64::wrap(contract_vjp_sel(e, (v, g), None, sel, dims)?)
        }
        (Data::F64(v), Data::F64(g), Some(Data::F64(k))) => {
            f64::wrap(contract_vjp_sel(e, (v, g), Some(k), sel, dims)?)
        }
        (Data::F32(v), Data::F32(g), None) => {
            f32::wrap(contract_vjp_sel(e, (v, g), None, sel, dims)?)
        }
        (Data::F32(v), Data::F32(g), Some(Data::F32(k))) => {
            f32::wrap(contract_vjp_sel(e, (v, g), Some(k), sel, dims)?)
        }
        _ => return Err(ExecError::Type("embed_contract_vjp dtypes".into())),
    };
    Ok(Tensor {
        shape: rr.shape.clone(),
        data,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use dpc_compiler::graph::{Act, DType, Mlp, MlpLayer, Residual};

    use super::*;

    fn vector(n: usize, seed: f64) -> Arc<Tensor> {
        Arc::new(Tensor::f64(
            vec![n],
            (0..n)
                .map(|i| (seed + i as f64 * 0.7).sin() * 0.5)
                .collect(),
        ))
    }

    fn layer(n_in: usize, n_out: usize, act: Act, residual: Residual, idt: bool) -> MlpLayer {
        let w = (0..n_in * n_out)
            .map(|i| ((i * 7 + n_out) as f64 * 0.31).cos() / (n_in as f64).sqrt())
            .collect();
        MlpLayer {
            w: Arc::new(Tensor::f64(vec![n_in, n_out], w)),
            b: Some(vector(n_out, n_in as f64)),
            idt: idt.then(|| vector(n_out, 0.3)),
            act,
            residual,
        }
    }

    /// A network with every layer kind: tanh with and without `idt`, both residuals, and
    /// a linear layer.
    fn embed(centre_type: Option<i32>) -> Embed {
        Embed {
            net: Arc::new(Mlp {
                dtype: DType::F64,
                layers: vec![
                    layer(1, 4, Act::Tanh, Residual::None, false),
                    layer(4, 8, Act::Tanh, Residual::Doubled, true),
                    layer(8, 8, Act::Linear, Residual::Same, false),
                    layer(8, 8, Act::Tanh, Residual::Same, true),
                ],
            }),
            centre_type,
            table: None,
        }
    }

    #[test]
    fn a_vjp_from_kept_activations_equals_one_that_reruns_the_network() {
        // 300 neighbours: blocks of 3 atoms, the last one short.
        let (n, s, c) = (7, 300, 4);
        let rr = Tensor::f64(
            vec![n, s, c],
            (0..n * s * c).map(|i| (i as f64 * 0.013).sin()).collect(),
        );
        let gy = Tensor::f64(
            vec![n, 8, c],
            (0..n * 8 * c).map(|i| (i as f64 * 0.21).cos()).collect(),
        );
        let types = Tensor::i32(vec![n], vec![0, 1, 1, 0, 1, 0, 1]);
        for ct in [None, Some(1)] {
            let e = embed(ct);
            let (plain, none) = embed_contract(&e, &rr, Some(&types), false).unwrap();
            let (out, kept) = embed_contract(&e, &rr, Some(&types), true).unwrap();
            assert!(none.is_none());
            assert_eq!(plain, out, "the forward result does not depend on keeping");
            let kept = kept.expect("a network keeps its activations");
            let rows = if ct.is_some() { 4 } else { n };
            assert_eq!(kept.len(), rows * s * (4 + 8 + 8 + 8));
            let rerun = embed_contract_vjp(&e, &rr, &gy, Some(&types), None).unwrap();
            let from_kept = embed_contract_vjp(&e, &rr, &gy, Some(&types), Some(&kept)).unwrap();
            assert_eq!(rerun, from_kept, "centre type {ct:?}");
            assert!(rerun.as_f64().unwrap().iter().any(|v| *v != 0.0));
            // Activations of another size are refused, not misread.
            let short = Tensor::f64(vec![3], vec![0.0; 3]);
            assert!(embed_contract_vjp(&e, &rr, &gy, Some(&types), Some(&short)).is_err());
        }
    }
}
