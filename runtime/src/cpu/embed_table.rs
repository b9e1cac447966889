//! The compressed embedding: `Op::EmbedContract` and its VJP where a table stands in for
//! the network, taken interval by interval.
//!
//! A row's `G` from the table is a few multiply-adds per output, but its interval's
//! coefficients are `6 m` numbers (4.8 KB at `m` = 100) out of a table of megabytes that L2
//! does not hold. Taken row by row in slot order, those loads were most of the compressed
//! embedding's time (se_e2_a_big: about 27 of 52 ms on one thread). So a group of atoms
//! sorts its rows by interval (a counting sort) and reads each interval's coefficients once
//! for all of the group's rows in it, while the group's sums (`G^T rr` forward, `gy`
//! backward) stay in L2. No `G` goes to memory.
//!
//! Consecutive slots of one atom with one input (the padding past its last neighbour) are
//! one entry: forward their `rr` rows are summed first, backward they share `gy^T G` and
//! `gy^T dG/dx`. Inputs off the table, and in an interval holding a relu kink, go through
//! the network itself (`Scalar`). The polynomials and sums use fused multiply-adds
//! (`Real::mul_add`), as `fastmath` does, so every CPU gives the same bits.

use dpc_compiler::graph::table::{Scalar, Table as NetTable};
use dpc_compiler::graph::{Embed, Knots};
use rayon::prelude::*;

use super::embed::{one_input, place_by_atom, slot_cotangent, store_transposed};
use super::net::sized;
use super::real::Real;
use super::ExecError;

type R<T> = Result<T, ExecError>;

/// Slots per group of atoms: enough rows per interval that its coefficients are read a
/// few times each, not once.
const GROUP_SLOTS: usize = 4096;

/// The most a group's sums (`[atoms, c, m]`) may take, so they stay in L2 beside the
/// coefficients streaming through.
const GROUP_SUM_BYTES: usize = 256 << 10;

/// An embedding's compression table in the op's dtype.
pub(super) struct Table<'a, T> {
    knots: Knots,
    m: usize,
    /// `[intervals, 6, m]`.
    coef: &'a [T],
    /// For inputs off the table, and in its kinked intervals.
    exact: Scalar,
    /// The table as built: which intervals the network runs instead (`is_kinked`).
    built: &'a NetTable,
}

impl<'a, T: Real> Table<'a, T> {
    /// `e`'s table, or `None` for an embedding without one.
    pub(super) fn of(e: &'a Embed) -> R<Option<Table<'a, T>>> {
        let Some(t) = &e.table else {
            return Ok(None);
        };
        one_input(e)?;
        let coef = T::slice(&t.coef.data)
            .ok_or_else(|| ExecError::Type("compression table of another dtype".into()))?;
        let nk = t.knots.intervals();
        if coef.len() != nk * 6 * t.m
            || t.m != e.net.n_out()
            || !(t.kinked.is_empty() || t.kinked.len() == nk)
        {
            return Err(ExecError::Shape("compression table size".into()));
        }
        Ok(Some(Table {
            knots: t.knots,
            m: t.m,
            coef,
            exact: Scalar::new(&e.net),
            built: t,
        }))
    }

    /// The interval key of entries off the table: one past the last interval.
    fn off(&self) -> u32 {
        self.knots.intervals() as u32
    }

    /// Atoms per group for `s` slots of `c` channels.
    pub(super) fn group_atoms(&self, s: usize, c: usize) -> usize {
        let per_atom = self.m * c * std::mem::size_of::<T>();
        (GROUP_SLOTS / s.max(1))
            .min(GROUP_SUM_BYTES / per_atom.max(1))
            .max(1)
    }
}

/// A per-row factor on channels `split..` (`Embed::factor`): slot `j` of atom `a` is
/// contracted there with `G * u[idx[a s + j]]`, `u [k, m]` (indices checked).
#[derive(Clone, Copy)]
pub(super) struct Factor<'a, T> {
    pub idx: &'a [i32],
    pub u: &'a [T],
    pub split: usize,
    pub s: usize,
}

impl<'a, T> Factor<'a, T> {
    /// Atom `a`'s indices, one per slot.
    fn slots(&self, a: usize) -> &'a [i32] {
        &self.idx[a * self.s..(a + 1) * self.s]
    }

    /// Row `r` of `u`.
    fn row(&self, r: u32, m: usize) -> &'a [T] {
        &self.u[r as usize * m..(r as usize + 1) * m]
    }
}

/// A group's factor: the factor, and its atoms' indices.
type GroupFactor<'f, 'a, T> = Option<(&'f Factor<'a, T>, Vec<&'a [i32]>)>;

fn group_factor<'f, 'a, T>(f: &'f Option<Factor<'a, T>>, ids: &[usize]) -> GroupFactor<'f, 'a, T> {
    f.as_ref()
        .map(|f| (f, ids.iter().map(|&a| f.slots(a)).collect()))
}

/// A run of consecutive slots of one atom with one input (and one factor row).
#[derive(Clone, Copy)]
struct Entry<T> {
    /// The input's interval (`Table::off` for an input off the table).
    key: u32,
    /// The atom, in its group.
    atom: u32,
    /// The factor's row (0 without one).
    row: u32,
    /// First slot and number of slots.
    start: u32,
    len: u32,
    /// The input's offset in its interval (off the table: the input).
    dx: T,
}

/// A worker's buffers, reused from group to group.
struct Scratch<T> {
    entries: Vec<Entry<T>>,
    sorted: Vec<Entry<T>>,
    counts: Vec<u32>,
    /// The group's sums `G^T rr`, `[atoms, c, m]` (forward).
    acc: Vec<T>,
    /// `G`, `dG/dx` and the summed `rr` (backward: the two projections) of one entry.
    g: Vec<T>,
    dg: Vec<T>,
    rs: Vec<T>,
    /// `G` and `dG/dx` times the factor's row (backward).
    gu: Vec<T>,
    dgu: Vec<T>,
}

impl<T> Default for Scratch<T> {
    fn default() -> Self {
        Scratch {
            entries: Vec::new(),
            sorted: Vec::new(),
            counts: Vec::new(),
            acc: Vec::new(),
            g: Vec::new(),
            dg: Vec::new(),
            rs: Vec::new(),
            gu: Vec::new(),
            dgu: Vec::new(),
        }
    }
}

/// The group's entries (`rows`, each atom's `s` slots of `c`; `fidx`, each atom's factor
/// indices, or none) into `sc.sorted`, in order of interval and, within one, of atom and
/// slot (a stable counting sort).
fn sort_entries<T: Real>(
    t: &Table<T>,
    (rows, fidx): (&[&[T]], &[&[i32]]),
    s: usize,
    c: usize,
    sc: &mut Scratch<T>,
) {
    let Scratch {
        entries,
        sorted,
        counts,
        ..
    } = sc;
    entries.clear();
    for (a, ra) in rows.iter().enumerate() {
        let fa = fidx.get(a).copied();
        let row_of = |j: usize| fa.map_or(0, |f| f[j] as u32);
        let mut j = 0;
        while j < s {
            let x = ra[j * c];
            let bits = x.to_f64().to_bits();
            let row = row_of(j);
            let mut e = j + 1;
            while e < s && ra[e * c].to_f64().to_bits() == bits && row_of(e) == row {
                e += 1;
            }
            let (key, dx) = match t.knots.locate(x.to_f64()) {
                Some((k, dx)) if !t.built.is_kinked(k) => (k as u32, T::from_f64(dx)),
                _ => (t.off(), x),
            };
            entries.push(Entry {
                key,
                atom: a as u32,
                row,
                start: j as u32,
                len: (e - j) as u32,
                dx,
            });
            j = e;
        }
    }
    let buckets = t.off() as usize + 1;
    counts.clear();
    counts.resize(buckets + 1, 0);
    for e in entries.iter() {
        counts[e.key as usize + 1] += 1;
    }
    for k in 1..=buckets {
        counts[k] += counts[k - 1];
    }
    sorted.clear();
    sorted.reserve(entries.len());
    let spare = &mut sorted.spare_capacity_mut()[..entries.len()];
    for e in entries.iter() {
        let at = &mut counts[e.key as usize];
        spare[*at as usize].write(*e);
        *at += 1;
    }
    // SAFETY: the counts place each of the entries at its own position below their number.
    unsafe { sorted.set_len(entries.len()) };
}

/// Interval `k`'s six coefficient rows of `m`.
#[inline(always)]
fn coefficients<'a, T>(t: &Table<'a, T>, k: u32) -> [&'a [T]; 6] {
    let m = t.m;
    let c = &t.coef[k as usize * 6 * m..(k as usize + 1) * 6 * m];
    std::array::from_fn(|p| &c[p * m..(p + 1) * m])
}

/// `G` of an input off the table into `g` (and `dG/dx` into `dg`), from the network.
fn exact<T: Real>(t: &Table<T>, x: T, g: &mut [T], dg: Option<&mut [T]>) {
    let (y, d, _) = t.exact.eval(x.to_f64());
    for (o, v) in g.iter_mut().zip(&y) {
        *o = T::from_f64(*v);
    }
    if let Some(dg) = dg {
        for (o, v) in dg.iter_mut().zip(&d) {
            *o = T::from_f64(*v);
        }
    }
}

simd_fn! {
/// `acc [c, m] += rs ⊗ G` for the quintic with coefficients `cf` at `dx`, `c = rs.len()`.
fn accumulate<T: Real>(cf: [&[T]; 6], dx: T, rs: &[T], acc: &mut [T], m: usize) {
    match rs.len() {
        4 => accumulate_c::<T, 4>(cf, dx, rs, acc, m),
        1 => accumulate_c::<T, 1>(cf, dx, rs, acc, m),
        _ => {
            for o in 0..m {
                let g = quintic(&cf, dx, o);
                for (ci, &r) in rs.iter().enumerate() {
                    acc[ci * m + o] = r.mul_add(g, acc[ci * m + o]);
                }
            }
        }
    }
}
}

simd_fn! {
/// `accumulate` with a factor: channels `split..` of `rs` take `G * u`.
fn accumulate_factor<T: Real>(
    cf: [&[T]; 6],
    dx: T,
    rs: &[T],
    u: &[T],
    split: usize,
    acc: &mut [T],
    m: usize,
) {
    match (rs.len(), split) {
        (8, 4) => accumulate_split::<T, 4, 4>(cf, dx, rs, u, acc, m),
        (2, 1) => accumulate_split::<T, 1, 1>(cf, dx, rs, u, acc, m),
        (4, 0) => accumulate_split::<T, 0, 4>(cf, dx, rs, u, acc, m),
        (1, 0) => accumulate_split::<T, 0, 1>(cf, dx, rs, u, acc, m),
        _ => {
            for o in 0..m {
                let g = quintic(&cf, dx, o);
                let gu = g * u[o];
                for (ci, &r) in rs.iter().enumerate() {
                    let v = if ci < split { g } else { gu };
                    acc[ci * m + o] = r.mul_add(v, acc[ci * m + o]);
                }
            }
        }
    }
}
}

/// `accumulate_factor` for `A` channels of `G` then `B` of `G * u`.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // `o` indexes the coefficient rows, `u` and the sums
fn accumulate_split<T: Real, const A: usize, const B: usize>(
    cf: [&[T]; 6],
    dx: T,
    rs: &[T],
    u: &[T],
    acc: &mut [T],
    m: usize,
) {
    let cf: [&[T]; 6] = std::array::from_fn(|p| &cf[p][..m]);
    let u = &u[..m];
    let (ra, rb): ([T; A], [T; B]) = (
        std::array::from_fn(|ci| rs[ci]),
        std::array::from_fn(|ci| rs[A + ci]),
    );
    let mut rows = acc.chunks_exact_mut(m);
    let a: [&mut [T]; A] = std::array::from_fn(|_| rows.next().expect("A rows of acc"));
    let b: [&mut [T]; B] = std::array::from_fn(|_| rows.next().expect("B rows of acc"));
    for o in 0..m {
        let g = quintic(&cf, dx, o);
        let gu = g * u[o];
        for ci in 0..A {
            a[ci][o] = ra[ci].mul_add(g, a[ci][o]);
        }
        for ci in 0..B {
            b[ci][o] = rb[ci].mul_add(gu, b[ci][o]);
        }
    }
}

/// `accumulate` for `C` channels, each an `m`-long row of `acc` (so the loop vectorizes
/// along `m`).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // `o` indexes the six coefficient rows and `C` sums
fn accumulate_c<T: Real, const C: usize>(cf: [&[T]; 6], dx: T, rs: &[T], acc: &mut [T], m: usize) {
    let cf: [&[T]; 6] = std::array::from_fn(|p| &cf[p][..m]);
    let rs: [T; C] = std::array::from_fn(|ci| rs[ci]);
    let mut rows = acc.chunks_exact_mut(m);
    let a: [&mut [T]; C] = std::array::from_fn(|_| rows.next().expect("C rows of acc"));
    for o in 0..m {
        let g = quintic(&cf, dx, o);
        for ci in 0..C {
            a[ci][o] = rs[ci].mul_add(g, a[ci][o]);
        }
    }
}

/// Output `o` of the quintic at `dx`.
#[inline(always)]
fn quintic<T: Real>(cf: &[&[T]; 6], dx: T, o: usize) -> T {
    let [c0, c1, c2, c3, c4, c5] = cf;
    let v = dx.mul_add(c5[o], c4[o]);
    let v = dx.mul_add(v, c3[o]);
    let v = dx.mul_add(v, c2[o]);
    let v = dx.mul_add(v, c1[o]);
    dx.mul_add(v, c0[o])
}

simd_fn! {
/// `G` and `dG/dx` of the quintic with coefficients `cf` at `dx`.
fn quintic_and_slope<T: Real>(cf: [&[T]; 6], dx: T, g: &mut [T], dg: &mut [T]) {
    let m = g.len();
    let cf: [&[T]; 6] = std::array::from_fn(|p| &cf[p][..m]);
    let [_, c1, c2, c3, c4, c5] = cf;
    let dg = &mut dg[..m];
    let (two, three, four, five) = (
        T::from_f64(2.0),
        T::from_f64(3.0),
        T::from_f64(4.0),
        T::from_f64(5.0),
    );
    for o in 0..m {
        g[o] = quintic(&cf, dx, o);
        let d = dx.mul_add(five * c5[o], four * c4[o]);
        let d = dx.mul_add(d, three * c3[o]);
        let d = dx.mul_add(d, two * c2[o]);
        dg[o] = dx.mul_add(d, c1[o]);
    }
}
}

/// `p = gy^T g` and `q = gy^T dg` for `gy` an atom's cotangent `[m, c]`.
fn products<T: Real>(gy: &[T], g: &[T], dg: &[T], p: &mut [T], q: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f64>()
        && p.len() == 4
        && super::simd::avx2_fma()
    {
        // SAFETY: `T` is `f64` (same type, so the same layout), and the CPU has AVX2 and FMA.
        unsafe {
            let f = |v: &[T]| std::slice::from_raw_parts(v.as_ptr().cast::<f64>(), v.len());
            let (p, q) = (
                std::slice::from_raw_parts_mut(p.as_mut_ptr().cast::<f64>(), 4),
                std::slice::from_raw_parts_mut(q.as_mut_ptr().cast::<f64>(), 4),
            );
            return products4_f64(f(gy), f(g), f(dg), p, q);
        }
    }
    products_any(gy, g, dg, p, q)
}

/// `products` for four float64 channels in AVX2 registers, one channel per lane, four
/// partial sums each: LLVM leaves the generic form's sums on the stack.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn products4_f64(gy: &[f64], g: &[f64], dg: &[f64], p: &mut [f64], q: &mut [f64]) {
    use std::arch::x86_64::*;
    let m = g.len();
    assert!(gy.len() >= 4 * m && dg.len() >= m && p.len() == 4 && q.len() == 4);
    let (yp, gp, dp) = (gy.as_ptr(), g.as_ptr(), dg.as_ptr());
    let mut ap = [_mm256_setzero_pd(); 4];
    let mut aq = [_mm256_setzero_pd(); 4];
    let mut o = 0;
    // SAFETY: every offset read is below `4 m` in `gy` and below `m` in `g` and `dg`.
    unsafe {
        while o + 4 <= m {
            for k in 0..4 {
                let y = _mm256_loadu_pd(yp.add((o + k) * 4));
                ap[k] = _mm256_fmadd_pd(y, _mm256_broadcast_sd(&*gp.add(o + k)), ap[k]);
                aq[k] = _mm256_fmadd_pd(y, _mm256_broadcast_sd(&*dp.add(o + k)), aq[k]);
            }
            o += 4;
        }
        while o < m {
            let y = _mm256_loadu_pd(yp.add(o * 4));
            ap[0] = _mm256_fmadd_pd(y, _mm256_broadcast_sd(&*gp.add(o)), ap[0]);
            aq[0] = _mm256_fmadd_pd(y, _mm256_broadcast_sd(&*dp.add(o)), aq[0]);
            o += 1;
        }
        let sum =
            |a: [__m256d; 4]| _mm256_add_pd(_mm256_add_pd(a[0], a[1]), _mm256_add_pd(a[2], a[3]));
        _mm256_storeu_pd(p.as_mut_ptr(), sum(ap));
        _mm256_storeu_pd(q.as_mut_ptr(), sum(aq));
    }
}

simd_fn! {
/// `products` for any type and channel count.
fn products_any<T: Real>(gy: &[T], g: &[T], dg: &[T], p: &mut [T], q: &mut [T]) {
    match p.len() {
        4 => products_c::<T, 4>(gy, g, dg, p, q),
        1 => products_c::<T, 1>(gy, g, dg, p, q),
        c => {
            p.fill(T::default());
            q.fill(T::default());
            for ((y, &a), &b) in gy.chunks_exact(c).zip(g).zip(dg) {
                for ((pv, qv), &yv) in p.iter_mut().zip(q.iter_mut()).zip(y) {
                    *pv = yv.mul_add(a, *pv);
                    *qv = yv.mul_add(b, *qv);
                }
            }
        }
    }
}
}

/// `products` for `C` channels, vectorized along them: four partial sums each (outputs
/// taken four at a time), so the multiply-adds do not wait on each other.
#[inline(always)]
fn products_c<T: Real, const C: usize>(gy: &[T], g: &[T], dg: &[T], p: &mut [T], q: &mut [T]) {
    const K: usize = 4;
    let m = g.len();
    let (gy, dg) = (&gy[..m * C], &dg[..m]);
    let (mut ap, mut aq) = ([[T::default(); C]; K], [[T::default(); C]; K]);
    let body = m / K * K;
    for ((y, a), b) in gy[..body * C]
        .chunks_exact(K * C)
        .zip(g[..body].chunks_exact(K))
        .zip(dg[..body].chunks_exact(K))
    {
        for k in 0..K {
            for ci in 0..C {
                ap[k][ci] = y[k * C + ci].mul_add(a[k], ap[k][ci]);
                aq[k][ci] = y[k * C + ci].mul_add(b[k], aq[k][ci]);
            }
        }
    }
    for o in body..m {
        for ci in 0..C {
            ap[0][ci] = gy[o * C + ci].mul_add(g[o], ap[0][ci]);
            aq[0][ci] = gy[o * C + ci].mul_add(dg[o], aq[0][ci]);
        }
    }
    for ci in 0..C {
        p[ci] = (ap[0][ci] + ap[1][ci]) + (ap[2][ci] + ap[3][ci]);
        q[ci] = (aq[0][ci] + aq[1][ci]) + (aq[2][ci] + aq[3][ci]);
    }
}

/// `products` with a factor: channels `split..` of `gy` project `gu = G * u` and `dgu`
/// instead of `g` and `dg`.
fn products_factor<T: Real>(
    gy: &[T],
    (g, dg): (&[T], &[T]),
    (gu, dgu, split): (&[T], &[T], usize),
    p: &mut [T],
    q: &mut [T],
) {
    if split == 0 {
        products(gy, gu, dgu, p, q)
    } else {
        products_factor_any(gy, g, dg, gu, dgu, split, p, q)
    }
}

simd_fn! {
/// `products_factor` with `G` on some channels.
fn products_factor_any<T: Real>(
    gy: &[T],
    g: &[T],
    dg: &[T],
    gu: &[T],
    dgu: &[T],
    split: usize,
    p: &mut [T],
    q: &mut [T],
) {
    match (p.len(), split) {
        (8, 4) => products_split::<T, 4, 4>(gy, (g, dg), (gu, dgu), p, q),
        (2, 1) => products_split::<T, 1, 1>(gy, (g, dg), (gu, dgu), p, q),
        (c, _) => {
            p.fill(T::default());
            q.fill(T::default());
            for (o, y) in gy.chunks_exact(c).take(g.len()).enumerate() {
                for (ci, &yv) in y.iter().enumerate() {
                    let (a, b) = if ci < split {
                        (g[o], dg[o])
                    } else {
                        (gu[o], dgu[o])
                    };
                    p[ci] = yv.mul_add(a, p[ci]);
                    q[ci] = yv.mul_add(b, q[ci]);
                }
            }
        }
    }
}
}

/// `products_factor` for `A` channels of `G` then `B` of `G * u`, with `products_c`'s four
/// partial sums.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // `k` and `ci` index the partial sums
fn products_split<T: Real, const A: usize, const B: usize>(
    gy: &[T],
    (g, dg): (&[T], &[T]),
    (gu, dgu): (&[T], &[T]),
    p: &mut [T],
    q: &mut [T],
) {
    const K: usize = 4;
    let m = g.len();
    let c = A + B;
    let (gy, dg, gu, dgu) = (&gy[..m * c], &dg[..m], &gu[..m], &dgu[..m]);
    let mut ap = [[T::default(); K]; 8];
    let mut aq = [[T::default(); K]; 8];
    for o in 0..m {
        let k = o % K;
        let y = &gy[o * c..(o + 1) * c];
        for ci in 0..A {
            ap[ci][k] = y[ci].mul_add(g[o], ap[ci][k]);
            aq[ci][k] = y[ci].mul_add(dg[o], aq[ci][k]);
        }
        for ci in A..A + B {
            ap[ci][k] = y[ci].mul_add(gu[o], ap[ci][k]);
            aq[ci][k] = y[ci].mul_add(dgu[o], aq[ci][k]);
        }
    }
    for ci in 0..c {
        p[ci] = (ap[ci][0] + ap[ci][1]) + (ap[ci][2] + ap[ci][3]);
        q[ci] = (aq[ci][0] + aq[ci][1]) + (aq[ci][2] + aq[ci][3]);
    }
}

/// `out_a [m, c] = sum_j G(x_j)^T rr_j` for each atom of a group (`rows`, `s` slots of `c`
/// each); with `ones` (`c` 1), `sum_j G(x_j)`.
fn contract_group<T: Real>(
    t: &Table<T>,
    (rows, fac): (&[&[T]], &GroupFactor<T>),
    (s, c): (usize, usize),
    ones: bool,
    sc: &mut Scratch<T>,
    out: &mut [T],
) {
    let m = t.m;
    let fidx = fac.as_ref().map_or(&[][..], |f| &f.1[..]);
    sort_entries(t, (rows, fidx), s, c, sc);
    let Scratch {
        sorted, acc, g, rs, ..
    } = sc;
    let acc = sized(acc, rows.len() * c * m);
    acc.fill(T::default());
    let rs = sized(rs, c);
    for e in sorted.iter() {
        let ra = rows[e.atom as usize];
        let run = &ra[e.start as usize * c..(e.start + e.len) as usize * c];
        if ones {
            rs[0] = T::from_f64(e.len as f64);
        } else {
            rs.copy_from_slice(&run[..c]);
            for rj in run[c..].chunks_exact(c) {
                for (r, &v) in rs.iter_mut().zip(rj) {
                    *r = *r + v;
                }
            }
        }
        let acc_a = &mut acc[e.atom as usize * c * m..(e.atom as usize + 1) * c * m];
        let factor = fac.as_ref().map(|(f, _)| (f.row(e.row, m), f.split));
        if e.key == t.off() {
            let g = sized(g, m);
            exact(t, e.dx, g, None);
            for (ci, &r) in rs.iter().enumerate() {
                let u = factor.filter(|f| ci >= f.1).map(|f| f.0);
                for (o, a) in acc_a[ci * m..(ci + 1) * m].iter_mut().enumerate() {
                    let gv = u.map_or(g[o], |u| g[o] * u[o]);
                    *a = r.mul_add(gv, *a);
                }
            }
        } else if let Some((u, split)) = factor {
            accumulate_factor(coefficients(t, e.key), e.dx, rs, u, split, acc_a, m);
        } else {
            accumulate(coefficients(t, e.key), e.dx, rs, acc_a, m);
        }
    }
    for (oa, aa) in out.chunks_exact_mut(m * c).zip(acc.chunks_exact(m * c)) {
        store_transposed(aa, m, c, oa);
    }
}

/// `d_rr_j = gy_a^T G(x_j)` and `d_rr_j [0] += rr_j . (gy_a^T dG/dx (x_j))` for each atom
/// of a group (`gy`, `[m, c]` per atom; `d`, `s` slots of `c` per atom); with `ones`,
/// `d_rr_j = gy_a . dG/dx (x_j)`.
fn contract_vjp_group<T: Real>(
    t: &Table<T>,
    (rows, gy, fac): (&[&[T]], &[&[T]], &GroupFactor<T>),
    d: &mut [&mut [T]],
    (s, c): (usize, usize),
    ones: bool,
    sc: &mut Scratch<T>,
) {
    let m = t.m;
    let fidx = fac.as_ref().map_or(&[][..], |f| &f.1[..]);
    sort_entries(t, (rows, fidx), s, c, sc);
    let Scratch {
        sorted,
        g,
        dg,
        rs,
        gu,
        dgu,
        ..
    } = sc;
    let (g, dg, gu, dgu) = (sized(g, m), sized(dg, m), sized(gu, m), sized(dgu, m));
    // `gy^T G` then `gy^T dG/dx`, `c` each.
    let pq = sized(rs, 2 * c);
    for e in sorted.iter() {
        if e.key == t.off() {
            exact(t, e.dx, g, Some(dg));
        } else {
            quintic_and_slope(coefficients(t, e.key), e.dx, g, dg);
        }
        let (p, q) = pq.split_at_mut(c);
        let gya = gy[e.atom as usize];
        match fac {
            Some((f, _)) => {
                let u = f.row(e.row, m);
                for o in 0..m {
                    gu[o] = g[o] * u[o];
                    dgu[o] = dg[o] * u[o];
                }
                products_factor(gya, (g, dg), (gu, dgu, f.split), p, q);
            }
            None => products(gya, g, dg, p, q),
        }
        let (a, j0, j1) = (
            e.atom as usize,
            e.start as usize,
            (e.start + e.len) as usize,
        );
        let ra = &rows[a][j0 * c..j1 * c];
        for (rj, dj) in ra
            .chunks_exact(c)
            .zip(d[a][j0 * c..j1 * c].chunks_exact_mut(c))
        {
            if ones {
                dj[0] = q[0];
            } else {
                slot_cotangent(rj, p, q, dj);
            }
        }
    }
}

/// The contraction of `atoms` (each's `s` slots of `c` through `row`) into `out [n, m, c]`.
pub(super) fn contract<'r, T: Real>(
    t: &Table<T>,
    row: impl Fn(usize) -> &'r [T] + Sync,
    factor: Option<Factor<T>>,
    atoms: &[usize],
    (s, c): (usize, usize),
    ones: bool,
    out: &mut [T],
) {
    let m = t.m;
    let ga = t.group_atoms(s, c);
    let parts: Vec<Vec<T>> = atoms
        .par_chunks(ga)
        .map_init(Scratch::default, |sc, ids| {
            let rows: Vec<&[T]> = ids.iter().map(|&a| row(a)).collect();
            let fac = group_factor(&factor, ids);
            let mut o = vec![T::default(); ids.len() * m * c];
            contract_group(t, (&rows, &fac), (s, c), ones, sc, &mut o);
            o
        })
        .collect();
    place_by_atom(out, atoms, ga, parts, m * c);
}

/// The contraction's VJP for `atoms`: `work` holds each group's atoms with their rows of
/// `d_rr` (`s` slots of `c` each), `gy [n, m, c]` the cotangent.
pub(super) fn contract_vjp<'r, T: Real>(
    t: &Table<T>,
    row: impl Fn(usize) -> &'r [T] + Sync,
    factor: Option<Factor<T>>,
    gy: &[T],
    work: Vec<(&[usize], Vec<&mut [T]>)>,
    (s, c): (usize, usize),
    ones: bool,
) {
    let m = t.m;
    work.into_par_iter()
        .for_each_init(Scratch::default, |sc, (ids, mut d)| {
            let rows: Vec<&[T]> = ids.iter().map(|&a| row(a)).collect();
            let g: Vec<&[T]> = ids
                .iter()
                .map(|&a| &gy[a * m * c..(a + 1) * m * c])
                .collect();
            let fac = group_factor(&factor, ids);
            contract_vjp_group(t, (&rows, &g, &fac), &mut d, (s, c), ones, sc);
        });
}
