//! The fused embedding kernels (`Op::EmbedContract` and its VJP).
//!
//! For a block of centre atoms the embedding network runs on the block's neighbour rows
//! (one GEMM per layer), the result is contracted with each atom's environment rows, and
//! only the `[m, c]` contraction per atom is written out: the `[rows, m]` activations stay
//! in a per-block scratch that fits in cache. Blocks are independent and run on the rayon
//! pool.
//!
//! The network's input is one scalar per row, so its derivative `dG/dx` is an `[m]` vector
//! per row, computed forward alongside `G` (`net::forward_tangent`). The VJP is then only
//! contractions: `d_rr_j = gy^T G_j`, plus `rr_j^T gy^T dG/dx_j` on channel 0. When the
//! executor pairs a forward op with its VJP, the forward op computes the tangents too and
//! keeps `G` and `dG/dx` (`Kept`), and the VJP runs no network; otherwise the VJP
//! evaluates them itself. An embedding with a compression table goes to `embed_table`,
//! which evaluates the table as it contracts.
//!
//! Rows with the same input as the row before (the padding slots past an atom's last
//! neighbour, all holding the normalized zero) share one network evaluation.

use dpc_compiler::graph::{Data, Embed, Mlp, Tensor};
use rayon::prelude::*;

use super::embed_table::{self, Factor, Table};
use super::net::{forward, forward_tangent, layers, sized, FirstShift, Layer, Packs};
use super::real::Real;
use super::reduce::dot;
use super::ExecError;

type R<T> = Result<T, ExecError>;

/// Neighbour rows per block: large enough for efficient GEMMs, small enough that a block's
/// activations stay in cache (values and tangents of a 100-wide layer: 800 KB). 256 to 1024
/// measured within a few percent of each other on se_e2_a_big.
const ROWS_PER_BLOCK: usize = 512;

/// The most memory a network's evaluation over a whole op may take (`G` and `dG/dx` of
/// every row), which its forward op then keeps for the VJP (see `Kept`). Beyond it (an
/// se_e3 of a large `sel`: its rows grow as `sel^2`), each block of atoms evaluates its
/// own rows in cache, as for a table, and the VJP evaluates them again.
const KEEP_LIMIT_BYTES: usize = 512 << 20;

/// Whether an op of `rows` rows of width `m` is evaluated whole (`KEEP_LIMIT_BYTES`, or
/// `limit` in tests).
fn whole_op<T>(rows: usize, m: usize, limit: usize) -> bool {
    (rows * 2 * m).saturating_mul(std::mem::size_of::<T>()) <= limit
}

/// An embedding op's arguments besides `rr` (and the VJP's cotangent): the index and rows
/// of the per-row factor (`Embed::factor`) or first-layer shift (`Embed::shift`), and the
/// centres' types.
#[derive(Clone, Copy, Default)]
pub struct Extra<'a> {
    pub rows: Option<(&'a Tensor, &'a Tensor)>,
    pub types: Option<&'a Tensor>,
}

impl<'a> Extra<'a> {
    /// From the op's arguments after `rr` (and the cotangent), as `Embed::extra_args` lists
    /// them.
    pub fn of(e: &Embed, rest: &[&'a Tensor]) -> Extra<'a> {
        let rows = match (e.factor.is_some() || e.shift, rest) {
            (true, [idx, u, ..]) => Some((*idx, *u)),
            _ => None,
        };
        let types = e.centre_type.and(rest.last().copied());
        Extra { rows, types }
    }

    /// Only the centres' types.
    #[cfg(test)]
    pub fn types(types: Option<&'a Tensor>) -> Extra<'a> {
        Extra { rows: None, types }
    }
}

/// The factor of `e` over `n` atoms of `s` slots, checked: an index per slot into `u [k,
/// m]` of the op's dtype.
fn factor_of<'a, T: Real>(
    e: &Embed,
    x: Extra<'a>,
    (n, s): (usize, usize),
    win: Slots,
) -> R<Option<Factor<'a, T>>> {
    let Some(split) = e.factor else {
        return Ok(None);
    };
    let (idx, u) = indexed_rows(x, e.net.n_out(), (n, s), win, "factor")?;
    Ok(Some(Factor { idx, u, split, s }))
}

/// The index (one per slot of `n` atoms of `s`) and rows (`[k, w]`) of a factor or shift,
/// checked: every index inside the rows, the rows in the op's dtype.
fn indexed_rows<'a, T: Real>(
    x: Extra<'a>,
    w: usize,
    (n, s): (usize, usize),
    win: Slots,
    what: &str,
) -> R<(&'a [i32], &'a [T])> {
    let Some((idx, u)) = x.rows else {
        return Err(ExecError::Type(format!("embed_contract needs its {what}")));
    };
    let (Data::I32(idx), Some(rows)) = (&idx.data, T::slice(&u.data)) else {
        return Err(ExecError::Type(format!(
            "embed_contract {what} of other dtypes"
        )));
    };
    let k = rows.len() / w.max(1);
    let whole = win.start == 0 && win.stride == s;
    if !whole || idx.len() != n * s || rows.len() != k * w || u.shape != [k, w] {
        return Err(ExecError::Shape(format!(
            "embed_contract {what} index of {} for [{n}, {s}], rows {:?}",
            idx.len(),
            u.shape
        )));
    }
    if let Some(bad) = idx.iter().find(|&&i| i < 0 || i as usize >= k) {
        return Err(ExecError::Shape(format!(
            "embed_contract {what} index {bad} outside its {k} rows"
        )));
    }
    Ok((idx, rows))
}

/// A first-layer shift (`Embed::shift`): slot `j` of atom `a` adds row `idx[a s + j]` of
/// `u [k, n1]` to its first layer's pre-activation (indices checked).
#[derive(Clone, Copy)]
struct Shift<'a, T> {
    idx: &'a [i32],
    u: &'a [T],
    s: usize,
}

impl<'a, T> Shift<'a, T> {
    /// Atom `a`'s rows of `u`, one index per slot.
    fn slots(&self, a: usize) -> &'a [i32] {
        &self.idx[a * self.s..(a + 1) * self.s]
    }

    /// The slots' rows of the atoms `ids`.
    fn of_atoms(&self, ids: &[usize]) -> Vec<&'a [i32]> {
        ids.iter().map(|&a| self.slots(a)).collect()
    }
}

/// The shift of `e` over `n` atoms of `s` slots, checked.
fn shift_of<'a, T: Real>(
    e: &Embed,
    x: Extra<'a>,
    (n, s): (usize, usize),
    win: Slots,
) -> R<Option<Shift<'a, T>>> {
    if !e.shift {
        return Ok(None);
    }
    let n1 = e.net.layers.first().map_or(0, |l| l.n_out());
    let (idx, u) = indexed_rows(x, n1, (n, s), win, "shift")?;
    Ok(Some(Shift { idx, u, s }))
}

/// The embedding network (an embedding with a compression table goes to `embed_table`).
struct Source<'a, T: Real> {
    layers: Vec<Layer<'a, T>>,
}

/// An embedding network takes one scalar per row (the table's too).
pub(super) fn one_input(e: &Embed) -> R<()> {
    if e.net.n_in() != 1 {
        return Err(ExecError::Shape(format!(
            "embed_contract of a network with {} inputs (want 1)",
            e.net.n_in()
        )));
    }
    Ok(())
}

/// `out_a [m, c]` from an atom's sums `acc [c, m]` (rows along `m`, so they vectorize).
#[inline(always)]
pub(super) fn store_transposed<T: Real>(acc: &[T], m: usize, c: usize, out_a: &mut [T]) {
    for (ci, arow) in acc.chunks_exact(m).enumerate() {
        for (mi, &v) in arow.iter().enumerate() {
            out_a[mi * c + ci] = v;
        }
    }
}

/// A slot's cotangent from its input's projections `p = gy^T G` and `q = gy^T dG/dx`:
/// `d_rr_j = p`, plus `rr_j . q` on channel 0 (through `G`'s input).
#[inline(always)]
pub(super) fn slot_cotangent<T: Real>(rj: &[T], p: &[T], q: &[T], dj: &mut [T]) {
    dj.copy_from_slice(p);
    let mut dx = T::default();
    for (&rv, &qv) in rj.iter().zip(q) {
        dx = dx + rv * qv;
    }
    dj[0] = dj[0] + dx;
}

/// Each atom's block of `w` numbers from the parts of `atoms` taken `nb` at a time, into
/// its rows of `out`.
pub(super) fn place_by_atom<T: Real>(
    out: &mut [T],
    atoms: &[usize],
    nb: usize,
    parts: Vec<Vec<T>>,
    w: usize,
) {
    for (ids, o) in atoms.chunks(nb).zip(parts) {
        for (&a, oa) in ids.iter().zip(o.chunks_exact(w)) {
            out[a * w..(a + 1) * w].copy_from_slice(oa);
        }
    }
}

impl<'a, T: Real> Source<'a, T> {
    fn new(e: &'a Embed, packs: &'a Packs) -> R<Source<'a, T>> {
        one_input(e)?;
        Ok(Source {
            layers: layers(&e.net, false, packs, None)?,
        })
    }

    /// Hidden-layer buffers a block needs.
    fn depth(&self) -> usize {
        self.layers.len()
    }

    /// `out` set to `G [rows, m]` of the inputs `x [rows]` (with `shift`, each input's
    /// first layer shifted by its row), and with `tangent` to `[G; dG/dx]` (`[2 rows, m]`).
    fn eval(
        &self,
        x: &[T],
        shift: Option<FirstShift<'_, T>>,
        tangent: bool,
        h: &mut [Vec<T>],
        out: &mut Vec<T>,
    ) {
        let layers = &self.layers;
        let len = if tangent { 2 } else { 1 } * x.len() * self.width();
        if tangent {
            // Written whole by the network's last GEMM, so not zeroed first.
            out.clear();
            out.reserve(len);
            forward_tangent(layers, x, shift, h, &mut out.spare_capacity_mut()[..len]);
            // SAFETY: `forward_tangent` wrote all `len` elements.
            unsafe { out.set_len(len) };
        } else {
            forward(layers, x, shift, h, None);
            sized(out, len).copy_from_slice(&h[layers.len() - 1][..len]);
        }
    }

    /// The width `m` of `G`.
    fn width(&self) -> usize {
        self.layers[self.layers.len() - 1].n_out
    }
}

/// The op's `(n, s, c)`, checked (`c` 1 for a contraction with ones), and where its rows
/// sit in `rr`: with a window `start..end` on axis 1 (the executor folding a slice of `rr`
/// into the op), atom `a`'s `s` slots start at slot `a * stride + start` of the whole
/// `rr [n, stride, c]`.
fn dims(
    e: &Embed,
    rr: &Tensor,
    window: Option<(usize, usize)>,
) -> R<((usize, usize, usize), Slots)> {
    match (rr.shape.as_slice(), window) {
        (&[n, s, c], None) if c > 0 && (!e.ones || c == 1) => Ok((
            (n, s, c),
            Slots {
                stride: s,
                start: 0,
            },
        )),
        (&[n, stride, c], Some((a, b)))
            if c > 0 && (!e.ones || c == 1) && a <= b && b <= stride =>
        {
            Ok(((n, b - a, c), Slots { stride, start: a }))
        }
        (other, _) => Err(ExecError::Shape(format!(
            "embed_contract of rr {other:?}, window {window:?} (want [n, s, c])"
        ))),
    }
}

/// Where an atom's slots are in `rr` (see `dims`).
#[derive(Clone, Copy)]
struct Slots {
    stride: usize,
    start: usize,
}

impl Slots {
    /// Atom `a`'s `s` rows of `c`.
    #[inline(always)]
    fn rows<T>(self, rr: &[T], a: usize, s: usize, c: usize) -> &[T] {
        let at = (a * self.stride + self.start) * c;
        &rr[at..at + s * c]
    }
}

/// Centre atoms per block.
fn block_atoms(s: usize) -> usize {
    (ROWS_PER_BLOCK / s.max(1)).max(1)
}

/// One block's distinct inputs (`rr` the block's atoms' rows, `tags` their shift's rows):
/// `x` the network inputs (and their rows of the shift in `tag`), `idx` each row's
/// position in it (a row whose input and shift equal the row before's shares its
/// evaluation).
#[inline(always)]
fn distinct_inputs<T: Real>(
    rr: &[&[T]],
    tags: Option<&[&[i32]]>,
    c: usize,
    (x, tag): (&mut Vec<T>, &mut Vec<u32>),
    idx: &mut Vec<u32>,
) {
    x.clear();
    tag.clear();
    idx.clear();
    let mut prev: Option<(u64, u32)> = None;
    for (a, ra) in rr.iter().enumerate() {
        let ta = tags.map(|t| t[a]);
        for (j, r) in ra.iter().step_by(c).enumerate() {
            let key = (r.to_f64().to_bits(), ta.map_or(0, |t| t[j] as u32));
            if prev != Some(key) {
                x.push(*r);
                if ta.is_some() {
                    tag.push(key.1);
                }
                prev = Some(key);
            }
            idx.push(x.len() as u32 - 1);
        }
    }
}

/// The distinct inputs of all of an op's rows (`rows`, one slice of `s` rows of `c` per
/// atom, with its slots' rows of the shift where there is one), bit for bit: `x` in the
/// order first seen (with a shift, each one's row of it in `tag`), and each row's index
/// into it. The two
/// rows of a pair of same-type atoms, `(i, j)` and `(j, i)`, have the same input (the
/// distance is the same bits either way), so one network evaluation serves both: on
/// se_e2_a_big's 2048-atom bench system a 512-atom chunk has 22% fewer distinct inputs
/// than rows that differ from the row before. An open-addressing table of the input bits;
/// the padding slots (a run of one input) skip it.
fn op_inputs<'a, T: Real + 'a>(
    rows: impl Iterator<Item = (&'a [T], Option<&'a [i32]>)>,
    c: usize,
    n_rows: usize,
) -> R<(Vec<T>, Vec<u32>, Vec<u32>)> {
    if n_rows > u32::MAX as usize / 2 {
        return Err(ExecError::Shape(format!(
            "embed_contract of {n_rows} rows (at most {})",
            u32::MAX / 2
        )));
    }
    // Every row's key and input, so the probes can be prefetched a few rows ahead: the
    // table is megabytes (for DPA-2's three-body block, 1.2 M rows) and each probe of a
    // new key is a cache miss.
    let mut keys: Vec<(u64, u32)> = Vec::with_capacity(n_rows);
    let mut xs: Vec<T> = Vec::with_capacity(n_rows);
    let mut tagged = false;
    // Rows whose key differs from the row before's: the only ones that probe the table,
    // so at most that many keys go in it. The padding slots come in runs (three quarters
    // of DPA-2's three-body rows on the bench system), so sizing the table by these
    // instead of by all rows makes it a quarter as large.
    let mut starts = 0usize;
    for (a, t) in rows {
        tagged |= t.is_some();
        for (j, r) in a.iter().step_by(c).enumerate() {
            let key = (r.to_f64().to_bits(), t.map_or(0, |t| t[j] as u32));
            starts += usize::from(keys.last() != Some(&key));
            keys.push(key);
            xs.push(*r);
        }
    }
    let bits_of = (2 * starts).next_power_of_two().max(16).trailing_zeros();
    let mask = (1usize << bits_of) - 1;
    // The slot of a key: the multiply carries the low mantissa bits (where nearby inputs
    // differ) into the high bits taken as the slot; a shift's row goes into the high bits
    // first.
    let slot_of = |(bits, t): (u64, u32)| {
        let h = bits ^ u64::from(t).rotate_right(16);
        (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - bits_of)) as usize
    };
    // A slot is a quarter of a cache line: its key and value side by side. `EMPTY` marks
    // a free slot.
    #[derive(Clone, Copy)]
    struct Slot {
        bits: u64,
        tag: u32,
        val: u32,
    }
    const EMPTY: u32 = u32::MAX;
    let free = Slot {
        bits: 0,
        tag: 0,
        val: EMPTY,
    };
    let mut table = vec![free; mask + 1];
    // Rows ahead to prefetch: enough to cover a miss.
    const AHEAD: usize = 32;
    let mut x = Vec::with_capacity(n_rows);
    let mut tag = Vec::new();
    let mut uid = Vec::with_capacity(n_rows);
    let mut prev: Option<((u64, u32), u32)> = None;
    for (i, (&key, &r)) in keys.iter().zip(&xs).enumerate() {
        if let Some((k, u)) = prev {
            if k == key {
                uid.push(u);
                continue;
            }
        }
        if let Some(&ahead) = keys.get(i + AHEAD) {
            prefetch(table[slot_of(ahead)..].as_ptr());
        }
        let mut slot = slot_of(key);
        let u = loop {
            let e = &mut table[slot];
            match e.val {
                EMPTY => {
                    let u = x.len() as u32;
                    *e = Slot {
                        bits: key.0,
                        tag: key.1,
                        val: u,
                    };
                    x.push(r);
                    if tagged {
                        tag.push(key.1);
                    }
                    break u;
                }
                v if (e.bits, e.tag) == key => break v,
                _ => slot = (slot + 1) & mask,
            }
        };
        uid.push(u);
        prev = Some((key, u));
    }
    Ok((x, tag, uid))
}

/// `log2(ROWS_PER_BLOCK)`: a distinct input's block and place in it are a shift and a mask.
const BLOCK_SHIFT: u32 = ROWS_PER_BLOCK.trailing_zeros();
const _: () = assert!(ROWS_PER_BLOCK.is_power_of_two());

/// `G` (and `dG/dx`) of distinct inputs, evaluated `ROWS_PER_BLOCK` at a time: input `u`
/// is row `u % ROWS_PER_BLOCK` of block `u / ROWS_PER_BLOCK`, each block `[G; dG/dx]` as
/// `Source::eval` writes it.
struct GRows<'a, T> {
    blocks: &'a [Vec<T>],
    m: usize,
    /// `BLOCK_SHIFT`, or 31 for one block of any size.
    shift: u32,
    /// The last block's rows (the others have `1 << shift`): where its `dG/dx` starts,
    /// without a division per row.
    last: usize,
}

// Not derived: that would ask `T: Copy`, and only the references are copied.
impl<T> Clone for GRows<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for GRows<'_, T> {}

impl<'a, T> GRows<'a, T> {
    /// `blocks` of `[G; dG/dx]` (with `tangent`, else `G` alone), `1 << shift` rows each
    /// but the last.
    fn new(blocks: &'a [Vec<T>], m: usize, shift: u32, tangent: bool) -> GRows<'a, T> {
        let per_row = m * if tangent { 2 } else { 1 };
        let last = blocks.last().map_or(0, |b| b.len() / per_row.max(1));
        GRows {
            blocks,
            m,
            shift,
            last,
        }
    }

    /// Input `u`'s block and row in it.
    #[inline(always)]
    fn at(self, u: u32) -> (usize, usize) {
        (
            (u >> self.shift) as usize,
            (u & ((1 << self.shift) - 1)) as usize,
        )
    }

    /// `G` of input `u`.
    #[inline(always)]
    fn g(self, u: u32) -> &'a [T] {
        let (b, o) = self.at(u);
        &self.blocks[b][o * self.m..(o + 1) * self.m]
    }

    /// `dG/dx` of input `u` (the blocks hold tangents).
    #[inline(always)]
    fn dg(self, u: u32) -> &'a [T] {
        let (b, o) = self.at(u);
        let rows = if b + 1 == self.blocks.len() {
            self.last
        } else {
            1 << self.shift
        };
        let k = rows + o;
        &self.blocks[b][k * self.m..(k + 1) * self.m]
    }
}

/// `G` (and with `tangent`, `dG/dx`) of the inputs `x` (with `shift`'s rows `u`, input
/// `i` shifted by row `tag[i]`), on the thread pool.
fn evaluate<T: Real>(
    src: &Source<T>,
    (x, tag): (&[T], &[u32]),
    u: Option<&[T]>,
    tangent: bool,
) -> Vec<Vec<T>> {
    x.par_chunks(ROWS_PER_BLOCK)
        .enumerate()
        .map_init(
            || Scratch::new(src.depth()),
            |sc, (b, xb)| {
                let shift = u.map(|u| FirstShift {
                    u,
                    rows: &tag[b * ROWS_PER_BLOCK..b * ROWS_PER_BLOCK + xb.len()],
                });
                let mut out = Vec::new();
                src.eval(xb, shift, tangent, &mut sc.h, &mut out);
                out
            },
        )
        .collect()
}

simd_fn! {
/// `out_a [m, c] = sum_j G_(idx j)^T rr_j` for each atom `a` of a block (`s` rows each):
/// rank-1 updates into `acc [c, m]` (long rows, so the loop vectorizes over `m`), then
/// transposed: the shapes are too small for a GEMM call to pay off. With `ones` (`c` 1),
/// `sum_j G_(idx j)`.
fn contract_block<T: Real>(
    g: GRows<'_, T>,
    idx: &[u32],
    r: &[&[T]],
    out: &mut [T],
    dims: (usize, usize, usize),
    ones: bool,
    acc: &mut [T],
) {
    let (m, s, c) = dims;
    for ((ia, ra), oa) in idx
        .chunks_exact(s)
        .zip(r)
        .zip(out.chunks_exact_mut(m * c))
    {
        acc.fill(T::default());
        for (j, (&u, rj)) in ia.iter().zip(ra.chunks_exact(c)).enumerate() {
            // The row after next where it does not follow the row before in memory: an
            // input shared with an earlier atom.
            if let (Some(&w), Some(&v)) = (ia.get(j + 1), ia.get(j + 2)) {
                if v != w && v != w + 1 {
                    prefetch_row(g.g(v));
                }
            }
            let gj = g.g(u);
            if ones {
                for (a, &gv) in acc.iter_mut().zip(gj) {
                    *a = *a + gv;
                }
                continue;
            }
            for (arow, &rv) in acc.chunks_exact_mut(m).zip(rj) {
                for (a, &gv) in arow.iter_mut().zip(gj) {
                    *a = *a + rv * gv;
                }
            }
        }
        store_transposed(acc, m, c, oa);
    }
}
}

/// `out [nu, C] = g [nu, m] gy [m, C]` (`row(i)` the `i`th row of `g`): four rows at a
/// time, so their sums run side by side (each one's additions wait on the one before),
/// vectorized along `C`.
#[inline(always)]
fn project<'a, T: Real + 'a, const C: usize>(
    row: impl Fn(usize) -> &'a [T],
    nu: usize,
    gy: &[T],
    m: usize,
    out: &mut [T],
) {
    let mut i = 0;
    for o4 in out[..nu / 4 * 4 * C].chunks_exact_mut(4 * C) {
        let g4 = [
            &row(i)[..m],
            &row(i + 1)[..m],
            &row(i + 2)[..m],
            &row(i + 3)[..m],
        ];
        // The next four rows, on their way while these are read: the rows were written
        // long before (by the forward op) and the hardware prefetcher misses their
        // streams (se_e2_a_big's embedding VJP: 40 -> 19 ms on one thread). Most follow
        // each other in memory and are swept in order, half a line per step; one that
        // does not (an input shared with an earlier atom) is fetched whole here.
        let next = if i + 8 <= nu { row(i + 4) } else { g4[3] }.as_ptr();
        if i + 8 <= nu {
            for k in 1..4 {
                let r = row(i + 4 + k);
                if r.as_ptr() != next.wrapping_add(k * m) {
                    prefetch_row(r);
                }
            }
        }
        let mut acc = [[T::default(); C]; 4];
        for (mi, gyr) in gy.chunks_exact(C).enumerate() {
            prefetch(next.wrapping_add(4 * mi));
            for (ar, gr) in acc.iter_mut().zip(&g4) {
                let gv = gr[mi];
                for (a, &y) in ar.iter_mut().zip(gyr) {
                    *a = *a + gv * y;
                }
            }
        }
        for (o, ar) in o4.chunks_exact_mut(C).zip(&acc) {
            o.copy_from_slice(ar);
        }
        i += 4;
    }
    for (k, o) in out[i * C..nu * C].chunks_exact_mut(C).enumerate() {
        let mut acc = [T::default(); C];
        for (&gv, gyr) in row(i + k).iter().zip(gy.chunks_exact(C)) {
            for (a, &y) in acc.iter_mut().zip(gyr) {
                *a = *a + gv * y;
            }
        }
        o.copy_from_slice(&acc);
    }
}

/// A hint to load the cache line of `p` (which need not be in bounds: a prefetch never
/// faults).
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching any address is allowed; nothing is read through `p`.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
}

/// `prefetch` of every cache line of `row`.
#[inline(always)]
fn prefetch_row<T>(row: &[T]) {
    let line = 64 / std::mem::size_of::<T>().max(1);
    for k in (0..row.len()).step_by(line) {
        prefetch(row[k..].as_ptr());
    }
}

/// `project` for any `c`: the dot products along `m`, with `gy` transposed into
/// `gyt [c, m]`.
#[inline(always)]
fn project_any<'a, T: Real + 'a>(
    row: impl Fn(usize) -> &'a [T],
    nu: usize,
    gy: &[T],
    m: usize,
    c: usize,
    gyt: &mut [T],
    out: &mut [T],
) {
    for (mi, r) in gy.chunks_exact(c).enumerate() {
        for (ci, &v) in r.iter().enumerate() {
            gyt[ci * m + mi] = v;
        }
    }
    for (i, o) in out[..nu * c].chunks_exact_mut(c).enumerate() {
        let gr = row(i);
        for (ov, grow) in o.iter_mut().zip(gyt.chunks_exact(m)) {
            *ov = dot(grow, gr);
        }
    }
}

simd_fn! {
/// The contraction's VJP for each atom of a block, from `G` and `dG/dx` of the inputs
/// (`g`, with tangents): `d_rr_j = gy_a^T G_j` and, through `G_j`'s input,
/// `d_rr_j [0] += rr_j . (gy_a^T dG/dx_j)`. Both products are taken once per run of rows
/// with one input (`us` the runs' inputs; `pq`, `[2, runs, c]`), then read by its rows;
/// `gyt` is scratch. With `ones` (the contraction with a channel of ones, `c` 1),
/// `d_rr_j = gy_a . dG/dx_j`.
fn contract_vjp_block<T: Real>(
    g: GRows<'_, T>,
    idx: &[u32],
    r: &[&[T]],
    gy: &[&[T]],
    d_rr: &mut [&mut [T]],
    dims: (usize, usize, usize),
    ones: bool,
    scratch: &mut VjpScratch<T>,
) {
    let (m, s, c) = dims;
    let VjpScratch { gyt, pq, us } = scratch;
    for (((ia, ra), gya), da) in idx.chunks_exact(s).zip(r).zip(gy).zip(d_rr.iter_mut()) {
        us.clear();
        for &u in ia {
            if us.last() != Some(&u) {
                us.push(u);
            }
        }
        let nu = us.len();
        let pq = sized(pq, 2 * nu * c);
        let (p, q) = pq.split_at_mut(nu * c);
        let gu = |i: usize| g.g(us[i]);
        let tu = |i: usize| g.dg(us[i]);
        if ones {
            project::<T, 1>(tu, nu, gya, m, q);
            for (k, dj) in runs(ia).zip(da.iter_mut()) {
                *dj = q[k];
            }
            continue;
        }
        match c {
            4 => {
                project::<T, 4>(gu, nu, gya, m, p);
                project::<T, 4>(tu, nu, gya, m, q);
            }
            1 => {
                project::<T, 1>(gu, nu, gya, m, p);
                project::<T, 1>(tu, nu, gya, m, q);
            }
            _ => {
                let gyt = sized(gyt, m * c);
                project_any(gu, nu, gya, m, c, gyt, p);
                project_any(tu, nu, gya, m, c, gyt, q);
            }
        }
        for ((k, rj), dj) in runs(ia).zip(ra.chunks_exact(c)).zip(da.chunks_exact_mut(c)) {
            slot_cotangent(rj, &p[k * c..(k + 1) * c], &q[k * c..(k + 1) * c], dj);
        }
    }
}
}

/// Each row's run of one input (see `contract_vjp_block`): the count of input changes
/// before it.
#[inline(always)]
fn runs(ia: &[u32]) -> impl Iterator<Item = usize> + '_ {
    let mut k = 0;
    ia.iter().enumerate().map(move |(j, &u)| {
        if j > 0 && u != ia[j - 1] {
            k += 1;
        }
        k
    })
}

/// `contract_vjp_block`'s scratch.
struct VjpScratch<T> {
    gyt: Vec<T>,
    pq: Vec<T>,
    us: Vec<u32>,
}

impl<T> Default for VjpScratch<T> {
    fn default() -> Self {
        VjpScratch {
            gyt: Vec::new(),
            pq: Vec::new(),
            us: Vec::new(),
        }
    }
}

/// What a forward op keeps for its VJP: each row's input (`op_inputs`) and `[G; dG/dx]`
/// of the distinct inputs.
pub struct Kept(KeptData);

enum KeptData {
    F64(KeptRows<f64>),
    F32(KeptRows<f32>),
}

struct KeptRows<T> {
    uid: Vec<u32>,
    blocks: Vec<Vec<T>>,
}

/// A worker's buffers, reused from block to block so the hot loop does not allocate.
struct Scratch<T> {
    x: Vec<T>,
    tag: Vec<u32>,
    idx: Vec<u32>,
    h: Vec<Vec<T>>,
    gt: Vec<T>,
}

impl<T: Real> Scratch<T> {
    fn new(depth: usize) -> Scratch<T> {
        Scratch {
            x: Vec::new(),
            tag: Vec::new(),
            idx: Vec::new(),
            h: (0..depth).map(|_| Vec::new()).collect(),
            gt: Vec::new(),
        }
    }

    /// A block's own rows (`r`, its atoms' rows of `c`; `shift`, their rows of it and its
    /// `u`) evaluated here, in cache, with `tangent` also `dG/dx`: their inputs (a row
    /// sharing only with the row before it) and each row's index among them.
    #[allow(clippy::too_many_arguments)]
    fn local_rows<'s>(
        &'s mut self,
        src: &Source<'_, T>,
        r: &[&[T]],
        shift: Option<(&[&[i32]], &[T])>,
        c: usize,
        m: usize,
        tangent: bool,
    ) -> (GRows<'s, T>, &'s [u32]) {
        let tags = shift.map(|s| s.0);
        distinct_inputs(r, tags, c, (&mut self.x, &mut self.tag), &mut self.idx);
        let first = shift.map(|(_, u)| FirstShift { u, rows: &self.tag });
        src.eval(&self.x, first, tangent, &mut self.h, &mut self.gt);
        let g = GRows::new(std::slice::from_ref(&self.gt), m, 31, tangent);
        (g, &self.idx)
    }
}

/// `G^T rr` for the atoms `atoms` (rows of `rr [n, s, c]`; the other rows of the result are
/// zero); with `keep`, also `G` and `dG/dx` for the VJP (`None` when the op is not
/// evaluated whole, `whole_op`). Rows are read and written in place, by atom.
///
/// A network is evaluated once per distinct input of the whole op (`op_inputs`), then
/// contracted block by block; a network whose op is too large to evaluate whole is
/// evaluated by each block of atoms for its own rows, in cache, and again by the VJP. A
/// table is cheap to evaluate and its `G` would go to memory for nothing: `embed_table`
/// contracts as it evaluates, and the VJP evaluates again.
#[allow(clippy::too_many_arguments)]
fn contract_t<T: Real>(
    e: &Embed,
    (rr, x): (&[T], Extra),
    atoms: &[usize],
    (n, s, c): (usize, usize, usize),
    win: Slots,
    keep: bool,
    packs: &Packs,
    limit: usize,
) -> R<(Vec<T>, Option<KeptRows<T>>)> {
    let m = e.net.n_out();
    let factor = factor_of(e, x, (n, s), win)?;
    let shift = shift_of::<T>(e, x, (n, s), win)?;
    let mut out = vec![T::default(); n * m * c];
    let row = |a: usize| win.rows(rr, a, s, c);
    let tags = |a: usize| shift.map(|sh| sh.slots(a));
    if let Some(t) = Table::<T>::of(e)? {
        if s > 0 {
            embed_table::contract(&t, row, factor, atoms, (s, c), e.ones, &mut out);
        }
        return Ok((out, None));
    }
    let src = Source::<T>::new(e, packs)?;
    if atoms.is_empty() || s == 0 {
        return Ok((out, None));
    }
    let nb = block_atoms(s);
    let mut kept = None;
    let parts: Vec<Vec<T>> = if whole_op::<T>(atoms.len() * s, m, limit) {
        let rows = atoms.iter().map(|&a| (row(a), tags(a)));
        let (x, tag, uid) = op_inputs(rows, c, atoms.len() * s)?;
        let blocks = evaluate(&src, (&x, &tag), shift.map(|sh| sh.u), keep);
        let g = GRows::new(&blocks, m, BLOCK_SHIFT, keep);
        let parts = atoms
            .par_chunks(nb)
            .zip(uid.par_chunks(nb * s))
            .map_init(Vec::new, |acc, (ids, ia)| {
                let r: Vec<&[T]> = ids.iter().map(|&a| row(a)).collect();
                let mut o = vec![T::default(); ids.len() * m * c];
                contract_block(g, ia, &r, &mut o, (m, s, c), e.ones, sized(acc, m * c));
                o
            })
            .collect();
        if keep {
            kept = Some(KeptRows { uid, blocks });
        }
        parts
    } else {
        atoms
            .par_chunks(nb)
            .map_init(
                || (Scratch::new(src.depth()), Vec::new()),
                |(sc, acc), ids| {
                    let r: Vec<&[T]> = ids.iter().map(|&a| row(a)).collect();
                    let t = shift.map(|sh| sh.of_atoms(ids));
                    let sh = t.as_deref().zip(shift.map(|sh| sh.u));
                    let (g, idx) = sc.local_rows(&src, &r, sh, c, m, false);
                    let mut o = vec![T::default(); ids.len() * m * c];
                    contract_block(g, idx, &r, &mut o, (m, s, c), e.ones, sized(acc, m * c));
                    o
                },
            )
            .collect()
    };
    place_by_atom(&mut out, atoms, nb, parts, m * c);
    Ok((out, kept))
}

/// `d_rr` (zero outside the rows of `atoms`) from the cotangent `gy` of `G^T rr`; `kept` is
/// what `contract_t` kept for the same atoms.
#[allow(clippy::too_many_arguments)]
fn contract_vjp_t<T: Real>(
    e: &Embed,
    (rr, gy, x): (&[T], &[T], Extra),
    kept: Option<&KeptRows<T>>,
    atoms: &[usize],
    (n, s, c): (usize, usize, usize),
    win: Slots,
    packs: &Packs,
    limit: usize,
) -> R<Vec<T>> {
    let m = e.net.n_out();
    let factor = factor_of(e, x, (n, s), win)?;
    let shift = shift_of::<T>(e, x, (n, s), win)?;
    let mut d_rr = vec![T::default(); n * s * c];
    if atoms.is_empty() || s == 0 {
        return Ok(d_rr);
    }
    let row = |a: usize| win.rows(rr, a, s, c);
    if let Some(t) = Table::<T>::of(e)? {
        let work = rows_by_block(d_rr.as_mut_slice(), atoms, t.group_atoms(s, c), s * c);
        embed_table::contract_vjp(&t, row, factor, gy, work, (s, c), e.ones);
        return Ok(d_rr);
    }
    let src = Source::<T>::new(e, packs)?;
    if let Some(k) = kept {
        if k.uid.len() != atoms.len() * s {
            return Err(ExecError::Shape(format!(
                "embed_contract_vjp given kept values of {} rows for {} x {s}",
                k.uid.len(),
                atoms.len()
            )));
        }
    }
    // An op too large to evaluate whole, block by block in cache.
    if kept.is_none() && !whole_op::<T>(atoms.len() * s, m, limit) {
        local_vjp(e, &src, (rr, gy, shift), &mut d_rr, atoms, (m, s, c), win);
        return Ok(d_rr);
    }
    // A network's inputs, evaluated over the whole op as the forward op does (unless it
    // kept them).
    let owned;
    let (uid, blocks) = match kept {
        Some(k) => (&k.uid[..], &k.blocks[..]),
        None => {
            let rows = atoms.iter().map(|&a| (row(a), shift.map(|sh| sh.slots(a))));
            let (x, tag, uid) = op_inputs(rows, c, atoms.len() * s)?;
            owned = (uid, evaluate(&src, (&x, &tag), shift.map(|sh| sh.u), true));
            (&owned.0[..], &owned.1[..])
        }
    };
    let g = GRows::new(blocks, m, BLOCK_SHIFT, true);
    let nb = block_atoms(s);
    let work: Vec<_> = rows_by_block(d_rr.as_mut_slice(), atoms, nb, s * c)
        .into_iter()
        .zip(uid.chunks(nb * s))
        .map(|((ids, d), ia)| (ids, ia, d))
        .collect();
    work.into_par_iter()
        .for_each_init(VjpScratch::default, |vs, (ids, ia, mut d)| {
            let r: Vec<&[T]> = ids.iter().map(|&a| row(a)).collect();
            let gy: Vec<&[T]> = ids
                .iter()
                .map(|&a| &gy[a * m * c..(a + 1) * m * c])
                .collect();
            contract_vjp_block(g, ia, &r, &gy, &mut d, (m, s, c), e.ones, vs);
        });
    Ok(d_rr)
}

/// Each block of `nb` atoms with its atoms' rows of `d` (`w` elements per atom), so the
/// blocks can write them side by side.
fn rows_by_block<'a, T>(
    d: &'a mut [T],
    atoms: &'a [usize],
    nb: usize,
    w: usize,
) -> Vec<(&'a [usize], Vec<&'a mut [T]>)> {
    let mut slots: Vec<Option<&mut [T]>> = d.chunks_mut(w).map(Some).collect();
    atoms
        .chunks(nb)
        .map(|ids| {
            let rows = ids
                .iter()
                .map(|&a| slots[a].take().expect("each atom once"))
                .collect();
            (ids, rows)
        })
        .collect()
}

/// `contract_vjp_t` for an op too large to evaluate whole: each block of atoms
/// evaluates its rows' `G` and `dG/dx` in cache and contracts them by atom.
fn local_vjp<T: Real>(
    e: &Embed,
    src: &Source<T>,
    (rr, gy, shift): (&[T], &[T], Option<Shift<'_, T>>),
    d_rr: &mut [T],
    atoms: &[usize],
    (m, s, c): (usize, usize, usize),
    win: Slots,
) {
    let work = rows_by_block(d_rr, atoms, block_atoms(s), s * c);
    work.into_par_iter().for_each_init(
        || (Scratch::new(src.depth()), VjpScratch::default()),
        |(sc, vs), (ids, mut d)| {
            let r: Vec<&[T]> = ids.iter().map(|&a| win.rows(rr, a, s, c)).collect();
            let g: Vec<&[T]> = ids
                .iter()
                .map(|&a| &gy[a * m * c..(a + 1) * m * c])
                .collect();
            let t = shift.map(|sh| sh.of_atoms(ids));
            let sh = t.as_deref().zip(shift.map(|sh| sh.u));
            let (rows, idx) = sc.local_rows(src, &r, sh, c, m, true);
            contract_vjp_block(rows, idx, &r, &g, &mut d, (m, s, c), e.ones, vs);
        },
    );
}

/// The rows an op computes: all (`None`), or those whose type is `centre_type`.
fn selected(
    centre_type: Option<i32>,
    types: Option<&Tensor>,
    n: usize,
    op: &str,
) -> R<Option<Vec<usize>>> {
    let Some(t) = centre_type else {
        return Ok(None);
    };
    Ok(Some(
        row_types(types, n, op)?
            .iter()
            .enumerate()
            .filter(|(_, &x)| x == t)
            .map(|(i, _)| i)
            .collect(),
    ))
}

/// The rows' types an op takes as its last argument, checked to be `i32 [n]`.
pub(super) fn row_types<'a>(types: Option<&'a Tensor>, n: usize, op: &str) -> R<&'a [i32]> {
    match types.map(|x| &x.data) {
        Some(Data::I32(v)) if v.len() == n => Ok(v),
        _ => Err(ExecError::Type(format!(
            "{op} needs the rows' types (i32 [n])"
        ))),
    }
}

/// The atoms an op computes: those of its centre type, or all.
fn atom_list(sel: Option<Vec<usize>>, n: usize) -> Vec<usize> {
    sel.unwrap_or_else(|| (0..n).collect())
}

/// `Op::EmbedContract`. With `keep`, also what its VJP can start from (`embed_contract_vjp`'s
/// `kept`), where that fits in `KEEP_LIMIT_BYTES`. With `window`, the op's `rr` is the slots
/// `start..end` (axis 1) of the `rr` given.
pub fn embed_contract(
    e: &Embed,
    rr: &Tensor,
    window: Option<(usize, usize)>,
    x: Extra,
    keep: bool,
    packs: &Packs,
) -> R<(Tensor, Option<Kept>)> {
    let net: &Mlp = &e.net;
    let m = net.n_out();
    let (dims, slots) = dims(e, rr, window)?;
    let (n, _, c) = dims;
    let limit = KEEP_LIMIT_BYTES;
    let atoms = atom_list(selected(e.centre_type, x.types, n, "embed_contract")?, n);
    let (data, kept) = match &rr.data {
        Data::F64(v) => {
            let (o, k) = contract_t(e, (v, x), &atoms, dims, slots, keep, packs, limit)?;
            (f64::wrap(o), k.map(|k| Kept(KeptData::F64(k))))
        }
        Data::F32(v) => {
            let (o, k) = contract_t(e, (v, x), &atoms, dims, slots, keep, packs, limit)?;
            (f32::wrap(o), k.map(|k| Kept(KeptData::F32(k))))
        }
        _ => return Err(ExecError::Type("embed_contract of non-floats".into())),
    };
    Ok((
        Tensor {
            shape: vec![n, m, c],
            data,
        },
        kept,
    ))
}

/// `Op::EmbedContractVjp`; `kept` is what the paired `embed_contract(.., keep = true)` of
/// the same `rr` and types kept, or `None` to evaluate the network here. `window` as for
/// `embed_contract`; the result has the window's shape.
pub fn embed_contract_vjp(
    e: &Embed,
    rr: &Tensor,
    window: Option<(usize, usize)>,
    gy: &Tensor,
    x: Extra,
    kept: Option<&Kept>,
    packs: &Packs,
) -> R<Tensor> {
    let net: &Mlp = &e.net;
    let m = net.n_out();
    let (dims, slots) = dims(e, rr, window)?;
    let (n, s, c) = dims;
    if gy.shape != [n, m, c] {
        return Err(ExecError::Shape(format!(
            "embed_contract_vjp cotangent {:?} for rr {:?}",
            gy.shape, rr.shape
        )));
    }
    let atoms = atom_list(selected(e.centre_type, x.types, n, "embed_contract")?, n);
    let kept = kept.map(|k| &k.0);
    let limit = KEEP_LIMIT_BYTES;
    let run = |(r, g): (&[f64], &[f64]), k: Option<&KeptRows<f64>>| {
        contract_vjp_t(e, (r, g, x), k, &atoms, dims, slots, packs, limit)
    };
    let run32 = |(r, g): (&[f32], &[f32]), k: Option<&KeptRows<f32>>| {
        contract_vjp_t(e, (r, g, x), k, &atoms, dims, slots, packs, limit)
    };
    let data = match (&rr.data, &gy.data, kept) {
        (Data::F64(v), Data::F64(g), None) => f64::wrap(run((v, g), None)?),
        (Data::F64(v), Data::F64(g), Some(KeptData::F64(k))) => f64::wrap(run((v, g), Some(k))?),
        (Data::F32(v), Data::F32(g), None) => f32::wrap(run32((v, g), None)?),
        (Data::F32(v), Data::F32(g), Some(KeptData::F32(k))) => f32::wrap(run32((v, g), Some(k))?),
        _ => return Err(ExecError::Type("embed_contract_vjp dtypes".into())),
    };
    Ok(Tensor {
        shape: vec![n, s, c],
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
            ones: false,
            factor: None,
            shift: false,
        }
    }

    fn inputs(n: usize, s: usize, c: usize) -> (Tensor, Tensor, Tensor) {
        // Some rows repeat the row before, as padding does.
        let rr = (0..n * s * c)
            .map(|i| {
                let (row, ch) = (i / c, i % c);
                let row = if row % s > s - 5 {
                    row - row % s + s - 5
                } else {
                    row
                };
                ((row * c + ch) as f64 * 0.013).sin()
            })
            .collect();
        let gy = (0..n * 8 * c).map(|i| (i as f64 * 0.21).cos()).collect();
        (
            Tensor::f64(vec![n, s, c], rr),
            Tensor::f64(vec![n, 8, c], gy),
            Tensor::i32(vec![n], (0..n as i32).map(|i| (i * 5 / 3) % 2).collect()),
        )
    }

    #[test]
    fn a_vjp_from_kept_values_equals_one_that_evaluates_the_network() {
        // 300 neighbours: blocks of 3 atoms, the last one short.
        let (n, s, c) = (7, 300, 4);
        let (rr, gy, types) = inputs(n, s, c);
        for ct in [None, Some(1)] {
            let e = embed(ct);
            let mut np = Packs::default();
            if ct.is_some() {
                // Packed once (the executor's way) or per call: the same numbers.
                np.add(&e.net, false, None);
            }
            let (plain, none) =
                embed_contract(&e, &rr, None, Extra::types(Some(&types)), false, &np).unwrap();
            let (out, kept) =
                embed_contract(&e, &rr, None, Extra::types(Some(&types)), true, &np).unwrap();
            assert!(none.is_none());
            assert_eq!(plain, out, "the forward result does not depend on keeping");
            let kept = kept.expect("the values fit");
            let again =
                embed_contract_vjp(&e, &rr, None, &gy, Extra::types(Some(&types)), None, &np)
                    .unwrap();
            let from_kept = embed_contract_vjp(
                &e,
                &rr,
                None,
                &gy,
                Extra::types(Some(&types)),
                Some(&kept),
                &np,
            )
            .unwrap();
            assert_eq!(again, from_kept, "centre type {ct:?}");
            assert!(again.as_f64().unwrap().iter().any(|v| *v != 0.0));
            // Values kept for other rows are refused, not misread.
            let (rr2, _, t2) = inputs(2, s, c);
            let (_, other) =
                embed_contract(&e, &rr2, None, Extra::types(Some(&t2)), true, &np).unwrap();
            assert!(embed_contract_vjp(
                &e,
                &rr,
                None,
                &gy,
                Extra::types(Some(&types)),
                other.as_ref(),
                &np
            )
            .is_err());
        }
    }

    #[test]
    fn an_op_too_large_to_evaluate_whole_gets_the_same_numbers_block_by_block() {
        // With no memory allowed for the whole op, the network is evaluated block by block
        // (rows sharing only with the row before), nothing is kept, and the VJP evaluates
        // again: the same numbers, bit for bit.
        let (n, s, c) = (7, 300, 4);
        let (rr, gy, _) = inputs(n, s, c);
        let (rv, gv) = (rr.as_f64().unwrap(), gy.as_f64().unwrap());
        let e = embed(None);
        let np = Packs::default();
        let atoms: Vec<usize> = (0..n).collect();
        let win = Slots {
            stride: s,
            start: 0,
        };
        let dims = (n, s, c);
        for limit in [KEEP_LIMIT_BYTES, 0] {
            let (o, kept) = contract_t(
                &e,
                (rv, Extra::default()),
                &atoms,
                dims,
                win,
                true,
                &np,
                limit,
            )
            .unwrap();
            assert_eq!(kept.is_some(), limit > 0);
            let d = contract_vjp_t(
                &e,
                (rv, gv, Extra::default()),
                kept.as_ref(),
                &atoms,
                dims,
                win,
                &np,
                limit,
            )
            .unwrap();
            let (want, _) = embed_contract(&e, &rr, None, Extra::types(None), false, &np).unwrap();
            let want_d =
                embed_contract_vjp(&e, &rr, None, &gy, Extra::types(None), None, &np).unwrap();
            assert_eq!(o, want.as_f64().unwrap(), "limit {limit}");
            assert_eq!(d, want_d.as_f64().unwrap(), "limit {limit}");
        }
    }

    #[test]
    fn distinct_inputs_are_told_apart_by_their_bits() {
        // -0.0 and 0.0 go through the network apart (their bits differ), a NaN shares
        // with a NaN of the same bits; channel 1 is not the input.
        let nan = f64::NAN;
        let v = [0.0, 9.0, -0.0, 9.0, nan, 1.0, nan, 2.0, 1.5, 3.0, 0.0, 4.0];
        let rows = [&v[..6], &v[6..]].map(|r| (r, None));
        let (x, _, uid) = op_inputs(rows.into_iter(), 2, 6).unwrap();
        let bits: Vec<u64> = x.iter().map(|v| v.to_bits()).collect();
        let want = [0.0f64, -0.0, nan, 1.5].map(f64::to_bits);
        assert_eq!(bits, want);
        assert_eq!(uid, [0, 1, 2, 2, 3, 0]);
    }

    /// The table is sized by the rows that differ from the row before, not by all rows:
    /// long runs of one key (padding), keys that come back after other keys, and many
    /// distinct keys between the runs still dedupe exactly (against a plain map), tags
    /// included.
    #[test]
    fn inputs_in_long_runs_dedupe_as_a_map_would() {
        use std::collections::HashMap;
        let atoms = 40;
        let s = 64;
        let v: Vec<f64> = (0..atoms * s)
            .map(|i| match (i % s, i / s) {
                (j, _) if j >= 20 => 0.0,                   // a run of padding per atom
                (j, a) if j % 3 == 0 => (j + a % 4) as f64, // back across atoms
                (j, a) => (j * 1000 + a) as f64 * 0.5,      // seen once
            })
            .collect();
        let t: Vec<i32> = (0..atoms * s).map(|i| ((i % s) / 30) as i32).collect();
        let rows = (0..atoms).map(|a| (&v[a * s..(a + 1) * s], Some(&t[a * s..(a + 1) * s])));
        let (x, tag, uid) = op_inputs(rows, 1, atoms * s).unwrap();
        let mut seen: HashMap<(u64, u32), u32> = HashMap::new();
        let mut want = (Vec::new(), Vec::new(), Vec::new());
        for (&r, &k) in v.iter().zip(&t) {
            let key = (r.to_bits(), k as u32);
            let n = seen.len() as u32;
            let u = *seen.entry(key).or_insert_with(|| {
                want.0.push(r);
                want.1.push(k as u32);
                n
            });
            want.2.push(u);
        }
        assert_eq!((x, tag, uid), want);
    }

    #[test]
    fn rows_that_share_an_input_across_atoms_get_what_each_atom_alone_would() {
        // Atom k > 0 takes a third of its rows' inputs from atom k - 1's, in another order
        // (the two rows of a same-type pair), and ends in a run of padding; 900 rows over
        // more than one evaluation block.
        let (n, s, c) = (6, 150, 4);
        let mut v: Vec<f64> = (0..n * s * c)
            .map(|i| ((i as f64) * 0.0137).sin() * 0.9)
            .collect();
        for a in 1..n {
            for j in (0..s).step_by(3) {
                let from = (a - 1) * s + (s - 1 - j);
                v[(a * s + j) * c] = v[from * c];
            }
            for j in s - 6..s {
                v[(a * s + j) * c] = 0.25;
            }
        }
        let rr = Tensor::f64(vec![n, s, c], v.clone());
        let rows = (0..n).map(|a| (&v[a * s * c..(a + 1) * s * c], None));
        let (x, _, uid) = op_inputs(rows, c, n * s).unwrap();
        assert!(x.len() > ROWS_PER_BLOCK && x.len() < n * s - (n - 1) * s / 3);
        for (j, &u) in uid.iter().enumerate() {
            assert_eq!(x[u as usize].to_bits(), v[j * c].to_bits(), "row {j}");
        }
        let gy: Vec<f64> = (0..n * 8 * c).map(|i| (i as f64 * 0.31).cos()).collect();
        let gy = Tensor::f64(vec![n, 8, c], gy);
        let np = Packs::default();
        for ones in [false, true] {
            let (rr, gy, c) = if ones {
                let pick = |t: &Tensor, w: usize| {
                    let d = t.as_f64().unwrap();
                    Tensor::f64(vec![n, w, 1], d.iter().step_by(c).copied().collect())
                };
                (pick(&rr, s), pick(&gy, 8), 1)
            } else {
                (rr.clone(), gy.clone(), c)
            };
            let e = Embed {
                ones,
                ..embed(None)
            };
            let (out, kept) = embed_contract(&e, &rr, None, Extra::types(None), true, &np).unwrap();
            let d = embed_contract_vjp(&e, &rr, None, &gy, Extra::types(None), kept.as_ref(), &np)
                .unwrap();
            let d_again =
                embed_contract_vjp(&e, &rr, None, &gy, Extra::types(None), None, &np).unwrap();
            assert_eq!(d, d_again);
            let (o, dv) = (out.as_f64().unwrap(), d.as_f64().unwrap());
            let (rv, gv) = (rr.as_f64().unwrap(), gy.as_f64().unwrap());
            for a in 0..n {
                let one = |t: &[f64], w: usize| {
                    Tensor::f64(vec![1, w, c], t[a * w * c..(a + 1) * w * c].to_vec())
                };
                let ra = one(rv, s);
                let (oa, _) =
                    embed_contract(&e, &ra, None, Extra::types(None), false, &np).unwrap();
                assert_eq!(
                    oa.as_f64().unwrap(),
                    &o[a * 8 * c..(a + 1) * 8 * c],
                    "atom {a}"
                );
                let da =
                    embed_contract_vjp(&e, &ra, None, &one(gv, 8), Extra::types(None), None, &np)
                        .unwrap();
                assert_eq!(
                    da.as_f64().unwrap(),
                    &dv[a * s * c..(a + 1) * s * c],
                    "atom {a}"
                );
            }
        }
    }

    #[test]
    fn a_window_of_slots_reads_what_the_slice_would_hold() {
        let (n, s, c) = (5, 40, 4);
        let (rr, gy, types) = inputs(n, s, c);
        let (a, b) = (7, 31);
        let v = rr.as_f64().unwrap();
        let sliced = Tensor::f64(
            vec![n, b - a, c],
            (0..n)
                .flat_map(|i| v[(i * s + a) * c..(i * s + b) * c].to_vec())
                .collect(),
        );
        let e = embed(Some(0));
        let np = Packs::default();
        let t = Some(&types);
        let (want, _) = embed_contract(&e, &sliced, None, Extra::types(t), false, &np).unwrap();
        let (got, kept) =
            embed_contract(&e, &rr, Some((a, b)), Extra::types(t), true, &np).unwrap();
        assert_eq!(want, got);
        let want_d =
            embed_contract_vjp(&e, &sliced, None, &gy, Extra::types(t), None, &np).unwrap();
        let got_d = embed_contract_vjp(
            &e,
            &rr,
            Some((a, b)),
            &gy,
            Extra::types(t),
            kept.as_ref(),
            &np,
        )
        .unwrap();
        assert_eq!(want_d, got_d);
        assert!(embed_contract(&e, &rr, Some((a, s + 1)), Extra::types(t), false, &np).is_err());
    }

    /// `embed_contract_vjp` of `e` at `rr` for the cotangent `gy` against central
    /// differences of `<gy, embed_contract(rr)>`, every `step`-th entry of `rr`, within `tol`
    /// relative to `1 + |d|`.
    /// `sum_j G_j^T (f * rr_j)` `[n, m, c]` row by row, for `G_j = g(slot, x_j)` (`slot`
    /// counting over all atoms' slots) and a weight `f(slot, output, channel)`.
    fn row_by_row(
        rr: &Tensor,
        m: usize,
        g: impl Fn(usize, f64) -> Vec<f64>,
        f: impl Fn(usize, usize, usize) -> f64,
    ) -> Vec<f64> {
        let (n, s, c) = (rr.shape[0], rr.shape[1], rr.shape[2]);
        let r = rr.as_f64().unwrap();
        let mut want = vec![0.0; n * m * c];
        for (slot, row) in r.chunks_exact(c).enumerate() {
            let a = slot / s;
            for (o, gv) in g(slot, row[0]).iter().enumerate() {
                for (ci, rv) in row.iter().enumerate() {
                    want[(a * m + o) * c + ci] += gv * f(slot, o, ci) * rv;
                }
            }
        }
        want
    }

    fn vjp_matches_differences(
        e: &Embed,
        (rr, gy): (&Tensor, &Tensor),
        x: Extra,
        (step, tol): (usize, f64),
        what: &str,
    ) {
        let np = Packs::default();
        let d = embed_contract_vjp(e, rr, None, gy, x, None, &np).unwrap();
        let f = |xr: &Tensor| -> f64 {
            let (y, _) = embed_contract(e, xr, None, x, false, &np).unwrap();
            let (y, g) = (y.as_f64().unwrap(), gy.as_f64().unwrap());
            y.iter().zip(g).map(|(a, b)| a * b).sum()
        };
        let h = 1e-6;
        for i in (0..rr.len()).step_by(step) {
            let (mut plus, mut minus) = (rr.clone(), rr.clone());
            if let (Data::F64(p), Data::F64(q)) = (&mut plus.data, &mut minus.data) {
                p[i] += h;
                q[i] -= h;
            }
            let fd = (f(&plus) - f(&minus)) / (2.0 * h);
            let got = d.as_f64().unwrap()[i];
            assert!(
                (fd - got).abs() < tol * (1.0 + got.abs()),
                "{what}: rr[{i}]: {got} vs {fd}"
            );
        }
    }

    #[test]
    fn the_vjp_is_the_derivative_of_the_contraction() {
        // <gy, f(rr)> against central differences, one entry of rr at a time; also for the
        // contraction with a channel of ones (one channel).
        for (c, ones) in [(4, false), (1, true)] {
            let (n, s) = (2, 12);
            let (rr, gy, _) = inputs(n, s, c);
            let e = Embed {
                ones,
                ..embed(None)
            };
            let step = if ones { 1 } else { 5 };
            vjp_matches_differences(
                &e,
                (&rr, &gy),
                Extra::default(),
                (step, 1e-7),
                "ones {ones}",
            );
        }
        // The sum needs one channel.
        let (rr, _, _) = inputs(2, 12, 4);
        let e = Embed {
            ones: true,
            ..embed(None)
        };
        assert!(
            embed_contract(&e, &rr, None, Extra::types(None), false, &Packs::default()).is_err()
        );
    }

    #[test]
    fn a_table_contracts_and_differentiates_as_its_network_does() {
        // Inputs in [-1, 1]; the table covers [-0.6, 0.7), so some rows go through the
        // network, and 40 atoms of 300 slots make several groups. With channels and with
        // the sum over neighbours (one channel of ones), a centre type or none: the table's
        // numbers are the network's to within its error (float32 tables: tests/compress.rs).
        use dpc_compiler::graph::table::Table as NetTable;
        use dpc_compiler::graph::Knots;
        let (n, s) = (40, 300);
        for (c, ones) in [(4, false), (1, true), (3, false)] {
            let (rr, gy, types) = inputs(n, s, c);
            for ct in [None, Some(1)] {
                let net = Embed { ones, ..embed(ct) };
                let knots = Knots::cover(-0.6, 0.5, 0.7, 0.002, 0.01);
                let table = NetTable::build(&net.net, knots).unwrap();
                assert!(table.max_err < 1e-12 && table.max_err_deriv < 1e-10);
                let tab = Embed {
                    table: Some(Arc::new(table)),
                    ..net.clone()
                };
                let np = Packs::default();
                let close = |a: &Tensor, b: &Tensor, tol: f64, what: &str| {
                    let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
                    assert_eq!(a.len(), b.len());
                    let worst = a
                        .iter()
                        .zip(b)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0.0, f64::max);
                    assert!(worst < tol, "c {c}, type {ct:?}, {what}: off by {worst}");
                    assert!(a.iter().any(|v| *v != 0.0), "{what} all zero");
                };
                let t = Some(&types);
                let (want, _) =
                    embed_contract(&net, &rr, None, Extra::types(t), false, &np).unwrap();
                let (got, kept) =
                    embed_contract(&tab, &rr, None, Extra::types(t), true, &np).unwrap();
                assert!(kept.is_none(), "a table keeps nothing");
                close(&got, &want, 1e-9, "forward");
                let want_d =
                    embed_contract_vjp(&net, &rr, None, &gy, Extra::types(t), None, &np).unwrap();
                let got_d =
                    embed_contract_vjp(&tab, &rr, None, &gy, Extra::types(t), None, &np).unwrap();
                close(&got_d, &want_d, 1e-8, "vjp");
            }
        }
    }

    #[test]
    fn a_factor_scales_its_channels_by_the_rows_it_indexes() {
        // Channels `split..` contract with `G * u[idx]`: against the table's network run row
        // by row, and the VJP against central differences. Without a split (all channels
        // take the factor) and with one; runs of equal inputs with different indices stay
        // apart (the repeated padding rows of `inputs` get two indices).
        use dpc_compiler::graph::table::{Scalar, Table as NetTable};
        use dpc_compiler::graph::Knots;
        let (n, s, m) = (3, 40, 8);
        let knots = Knots::cover(-0.6, 0.5, 0.7, 0.002, 0.01);
        let net = embed(None);
        let table = Arc::new(NetTable::build(&net.net, knots).unwrap());
        let exact = Scalar::new(&net.net);
        let k = 5;
        let u = Tensor::f64(
            vec![k, m],
            (0..k * m).map(|i| 0.5 + (i as f64 * 0.37).sin()).collect(),
        );
        let idx: Vec<i32> = (0..n * s).map(|i| ((i * 7 + i / 3) % k) as i32).collect();
        let idx = Tensor::i32(vec![n, s], idx);
        let np = Packs::default();
        for (c, split) in [(8, 4), (2, 1), (4, 0), (3, 1)] {
            let (rr, gy, _) = inputs(n, s, c);
            let e = Embed {
                table: Some(table.clone()),
                factor: Some(split),
                ..net.clone()
            };
            let x = Extra {
                rows: Some((&idx, &u)),
                types: None,
            };
            let (out, _) = embed_contract(&e, &rr, None, x, false, &np).unwrap();
            let (uf, id) = (u.as_f64().unwrap(), idx.as_i32().unwrap());
            let want = row_by_row(
                &rr,
                m,
                |_, x| exact.eval(x).0,
                |slot, o, ci| {
                    if ci < split {
                        1.0
                    } else {
                        uf[id[slot] as usize * m + o]
                    }
                },
            );
            for (w, g) in want.iter().zip(out.as_f64().unwrap()) {
                assert!((w - g).abs() < 1e-10, "c {c} split {split}: {w} vs {g}");
            }
            let what = format!("c {c} split {split}");
            vjp_matches_differences(&e, (&rr, &gy), x, (7, 1e-6), &what);
        }
        // An index outside the rows is an error, not a read past them.
        let bad = Tensor::i32(vec![n, s], vec![k as i32; n * s]);
        let (rr, _, _) = inputs(n, s, 2);
        let e = Embed {
            table: Some(table),
            factor: Some(1),
            ..net
        };
        let x = Extra {
            rows: Some((&bad, &u)),
            types: None,
        };
        assert!(embed_contract(&e, &rr, None, x, false, &np).is_err());
    }

    #[test]
    fn a_shift_adds_its_row_to_the_first_layer() {
        // Row j enters the network as `x_j W1 + u[idx_j] + b1`: against each row's own
        // network (the first layer's bias moved by its row of `u`) run row by row, for the
        // op evaluated whole, kept or not, and block by block; the VJP against central
        // differences. Runs of one input with different indices stay apart (the repeated
        // padding rows of `inputs` get several indices).
        use dpc_compiler::graph::table::Scalar;
        let (n, s, k) = (3, 40, 5);
        let base = embed(None);
        let n1 = base.net.layers[0].n_out();
        let m = base.net.n_out();
        let u = Tensor::f64(
            vec![k, n1],
            (0..k * n1).map(|i| (i as f64 * 0.73).sin()).collect(),
        );
        let idx: Vec<i32> = (0..n * s).map(|i| ((i * 3 + i / 7) % k) as i32).collect();
        let idx = Tensor::i32(vec![n, s], idx);
        let e = Embed {
            shift: true,
            ..base.clone()
        };
        let x = Extra {
            rows: Some((&idx, &u)),
            types: None,
        };
        // Row k's network: the first layer's bias plus row k of u.
        let exact: Vec<Scalar> = (0..k)
            .map(|r| {
                let mut net = (*base.net).clone();
                let b = net.layers[0].b.as_ref().unwrap().as_f64().unwrap().to_vec();
                let uf = &u.as_f64().unwrap()[r * n1..(r + 1) * n1];
                let b: Vec<f64> = b.iter().zip(uf).map(|(a, v)| a + v).collect();
                net.layers[0].b = Some(Arc::new(Tensor::f64(vec![n1], b)));
                Scalar::new(&net)
            })
            .collect();
        let np = Packs::default();
        for c in [4, 1] {
            let (rr, gy, _) = inputs(n, s, c);
            let (out, _) = embed_contract(&e, &rr, None, x, false, &np).unwrap();
            let o = out.as_f64().unwrap();
            let id = idx.as_i32().unwrap();
            let want = row_by_row(
                &rr,
                m,
                |slot, x| exact[id[slot] as usize].eval(x).0,
                |_, _, _| 1.0,
            );
            for (w, g) in want.iter().zip(o) {
                assert!((w - g).abs() < 1e-12, "c {c}: {w} vs {g}");
            }
            vjp_matches_differences(&e, (&rr, &gy), x, (7, 1e-6), &format!("shift, c {c}"));
            // Kept, and block by block: the same bits as the op evaluated whole.
            let want_d = embed_contract_vjp(&e, &rr, None, &gy, x, None, &np).unwrap();
            let atoms: Vec<usize> = (0..n).collect();
            let win = Slots {
                stride: s,
                start: 0,
            };
            let (rv, gv) = (rr.as_f64().unwrap(), gy.as_f64().unwrap());
            for limit in [KEEP_LIMIT_BYTES, 0] {
                let (o2, kept) =
                    contract_t(&e, (rv, x), &atoms, (n, s, c), win, true, &np, limit).unwrap();
                let d = contract_vjp_t(
                    &e,
                    (rv, gv, x),
                    kept.as_ref(),
                    &atoms,
                    (n, s, c),
                    win,
                    &np,
                    limit,
                )
                .unwrap();
                assert_eq!(o2, o, "c {c}, limit {limit}");
                assert_eq!(d, want_d.as_f64().unwrap(), "c {c}, limit {limit}");
            }
        }
        // An index outside the rows is an error, not a read past them.
        let bad = Tensor::i32(vec![n, s], vec![k as i32; n * s]);
        let (rr, _, _) = inputs(n, s, 2);
        let x = Extra {
            rows: Some((&bad, &u)),
            types: None,
        };
        assert!(embed_contract(&e, &rr, None, x, false, &np).is_err());
    }
}
