//! Periodic images and neighbour lists with DeePMD-kit's selection semantics
//! (`deepmd/pt/utils/nlist.py`, `region.py`):
//!
//! - periodic coordinates are wrapped into the cell, then images are taken over every
//!   lattice shift within `ceil(rcut / face distance)` cells (any triclinic cell, including
//!   cells smaller than rcut);
//! - each local atom keeps its `sum(sel)` nearest neighbours among all extended atoms
//!   (itself excluded), drops those beyond rcut, and, unless the model mixes types, splits
//!   them into per-type blocks of `sel[t]` slots (nearest first, -1 padded).
//!
//! Only ghosts that end up in some list are kept, so `nall` stays small; results do not
//! depend on which unused images exist.

use std::fmt;

use rayon::prelude::*;

/// A simulation cell: rows are the lattice vectors a, b, c.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cell {
    pub h: [[f64; 3]; 3],
    inv: [[f64; 3]; 3],
}

#[derive(Debug, Clone, PartialEq)]
pub struct NlistError(pub String);

impl fmt::Display for NlistError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NlistError {}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

impl Cell {
    /// From the 9 numbers of a DeePMD-kit box (row-major, rows = cell vectors).
    pub fn new(b: &[f64]) -> Result<Cell, NlistError> {
        if b.len() != 9 {
            return Err(NlistError(format!("a box has 9 numbers, got {}", b.len())));
        }
        if b.iter().any(|x| !x.is_finite()) {
            return Err(NlistError("the box contains NaN or infinite values".into()));
        }
        let h = [[b[0], b[1], b[2]], [b[3], b[4], b[5]], [b[6], b[7], b[8]]];
        let det = dot(h[0], cross(h[1], h[2]));
        let scale = norm(h[0]) * norm(h[1]) * norm(h[2]);
        if scale <= 0.0 || det.abs() <= 1e-10 * scale {
            return Err(NlistError(format!(
                "the box is singular (volume {det:e}): its cell vectors are not independent"
            )));
        }
        // inv = adj(h) / det, with h row-major: inverse columns are cross products of rows.
        let c0 = cross(h[1], h[2]);
        let c1 = cross(h[2], h[0]);
        let c2 = cross(h[0], h[1]);
        let inv = [
            [c0[0] / det, c1[0] / det, c2[0] / det],
            [c0[1] / det, c1[1] / det, c2[1] / det],
            [c0[2] / det, c1[2] / det, c2[2] / det],
        ];
        Ok(Cell { h, inv })
    }

    /// Distances between opposite faces (DeePMD-kit's `to_face_distance`).
    pub fn face_distances(&self) -> [f64; 3] {
        let vol = dot(self.h[0], cross(self.h[1], self.h[2])).abs();
        [
            vol / norm(cross(self.h[1], self.h[2])),
            vol / norm(cross(self.h[2], self.h[0])),
            vol / norm(cross(self.h[0], self.h[1])),
        ]
    }

    /// Fractional coordinates `x h^-1`.
    pub fn to_frac(&self, x: [f64; 3]) -> [f64; 3] {
        let mut s = [0.0; 3];
        for (j, sj) in s.iter_mut().enumerate() {
            *sj = x[0] * self.inv[0][j] + x[1] * self.inv[1][j] + x[2] * self.inv[2][j];
        }
        s
    }

    pub fn to_cart(&self, s: [f64; 3]) -> [f64; 3] {
        let mut x = [0.0; 3];
        for (j, xj) in x.iter_mut().enumerate() {
            *xj = s[0] * self.h[0][j] + s[1] * self.h[1][j] + s[2] * self.h[2][j];
        }
        x
    }

    /// Wrap a position into the cell (`normalize_coord`).
    pub fn wrap(&self, x: [f64; 3]) -> [f64; 3] {
        let s = self.to_frac(x).map(|v| v - v.floor());
        self.to_cart(s)
    }
}

/// A model's neighbour selection: cutoff, slots per type (one entry if types are mixed).
#[derive(Debug, Clone, Copy)]
pub struct Selection<'a> {
    pub rcut: f64,
    pub sel: &'a [usize],
    pub mixed_types: bool,
}

/// A local system extended with its ghost images, and the formatted neighbour list.
#[derive(Debug, Clone, PartialEq)]
pub struct Extended {
    pub nloc: usize,
    pub nall: usize,
    /// `[nall * 3]`, local atoms first.
    pub coord: Vec<f64>,
    /// `[nall]`.
    pub atype: Vec<i32>,
    /// Extended atom -> the local atom it images.
    pub mapping: Vec<usize>,
    /// `[nloc * nnei]`, indices into the extended atoms, -1 padded.
    pub nlist: Vec<i32>,
    pub nnei: usize,
    /// `[nloc]` how much each centre's energy counts; `None`: all of them fully. Only
    /// `expand_centres` sets it (ghost atoms evaluated as centres).
    pub centre_weight: Option<Vec<f64>>,
}

/// Coincident atoms (closer than this, in Å) are an error: the model is singular there.
pub const OVERLAP_DISTANCE: f64 = 1e-8;

/// Build the extended system and neighbour list. `atype` holds valid types only.
pub fn build(
    coord: &[f64],
    atype: &[i32],
    cell: Option<&Cell>,
    rcut: f64,
    sel: &[usize],
    mixed_types: bool,
) -> Result<Extended, NlistError> {
    let nloc = atype.len();
    let pos = |i: usize| [coord[3 * i], coord[3 * i + 1], coord[3 * i + 2]];
    let local: Vec<[f64; 3]> = match cell {
        Some(c) => (0..nloc).map(|i| c.wrap(pos(i))).collect(),
        None => (0..nloc).map(pos).collect(),
    };
    let shifts = match cell {
        Some(c) => image_shifts(c, rcut)?,
        None => vec![[0.0; 3]],
    };
    // Candidate neighbours: every local atom, and every periodic image close enough to the
    // cell to matter (each fractional coordinate within rcut/face-distance of [0, 1]).
    let mut cand: Vec<([f64; 3], usize, usize)> =
        local.iter().enumerate().map(|(j, x)| (*x, 0, j)).collect();
    if let Some(c) = cell {
        let faces = c.face_distances();
        let margin = [rcut / faces[0], rcut / faces[1], rcut / faces[2]];
        let frac: Vec<[f64; 3]> = local.iter().map(|x| c.to_frac(*x)).collect();
        for (s, sh) in shifts.iter().enumerate().skip(1) {
            let ds = c.to_frac(*sh).map(f64::round);
            for (j, f) in frac.iter().enumerate() {
                let inside = (0..3).all(|k| {
                    let v = f[k] + ds[k];
                    v >= -margin[k] && v <= 1.0 + margin[k]
                });
                if inside {
                    let x = local[j];
                    cand.push(([x[0] + sh[0], x[1] + sh[1], x[2] + sh[2]], s, j));
                }
            }
        }
    }
    check_memory(nloc, cand.len(), sel.iter().sum())?;
    let grid = Grid::new(&cand, rcut);
    let nsel: usize = sel.iter().sum();
    let rc2 = rcut * rcut;
    // Rows hold candidate indices first; they are renumbered to extended indices below.
    let mut nlist = vec![-1i64; nloc * nsel];
    // A worker's buffers: the row's neighbours, the candidates near it, and every
    // candidate's distance (the filter's scratch).
    type Buffers = (Vec<(f64, usize)>, Vec<usize>, Vec<(f64, usize)>);
    // One centre's row (`row` empty when `sum(sel)` is 0: the overlap check still runs).
    let search =
        |(found, near, all): &mut Buffers,
         i: usize,
         xi: [f64; 3],
         row: &mut [i64]|
         -> Result<(), NlistError> {
            grid.around(xi, near);
            // Every candidate is written and the count moves on only for those within the
            // cutoff: no branch to mispredict on the one in six that pass.
            if all.len() < near.len() {
                all.resize(near.len(), (0.0, 0));
            }
            let mut len = 0;
            for &k in near.iter() {
                let xj = cand[k].0;
                let d = [xj[0] - xi[0], xj[1] - xi[1], xj[2] - xi[2]];
                let r2 = dot(d, d);
                // The next candidate overwrites this one unless it was kept.
                all[len] = (r2, k);
                len += (r2 <= rc2) as usize;
            }
            // The centre itself (distance 0) is not its own neighbour.
            found.clear();
            found.extend(
                all[..len]
                    .iter()
                    .filter(|f| !(cand[f.1].1 == 0 && cand[f.1].2 == i)),
            );
            if let Some(&(r2, k)) = found
                .iter()
                .find(|f| f.0 < OVERLAP_DISTANCE * OVERLAP_DISTANCE)
            {
                let (_, s, j) = cand[k];
                return Err(NlistError(format!(
                "atoms {i} and {j} overlap (distance {:.3e} Å{}): the potential is singular there",
                r2.sqrt(),
                if s == 0 { "" } else { ", through the periodic boundary" }
            )));
            }
            select_row(found, row, |k| atype[cand[k].2], sel, mixed_types);
            Ok(())
        };
    // Rows are independent: they are found side by side on the thread pool.
    let buffers = || (Vec::new(), Vec::new(), Vec::new());
    let rows: Vec<Result<(), NlistError>> = if nsel > 0 {
        nlist
            .par_chunks_mut(nsel)
            .zip(local.par_iter())
            .enumerate()
            .map_init(buffers, |b, (i, (row, &xi))| search(b, i, xi, row))
            .collect()
    } else {
        local
            .par_iter()
            .enumerate()
            .map_init(buffers, |b, (i, &xi)| search(b, i, xi, &mut []))
            .collect()
    };
    // The first error in atom order, as a serial search would report it.
    rows.into_iter().collect::<Result<Vec<()>, _>>()?;
    let mut used = vec![false; cand.len()];
    for &k in nlist.iter().filter(|&&k| k >= 0) {
        used[k as usize] = true;
    }
    if let Some(c) = cell {
        let wraps: Vec<[i64; 3]> = (0..nloc)
            .map(|i| c.to_frac(pos(i)).map(|v| v.floor() as i64))
            .collect();
        if wraps.iter().any(|w| *w != [0; 3]) {
            return Ok(in_given_frame(
                coord, atype, c, &shifts, &cand, &wraps, &nlist, nsel,
            ));
        }
    }
    // Local atoms are candidates 0..nloc; used ghosts follow in candidate order.
    let mut ext_index = vec![-1i64; cand.len()];
    let mut ext_coord = Vec::with_capacity(nloc * 3);
    let mut ext_type = Vec::with_capacity(nloc);
    let mut mapping = Vec::with_capacity(nloc);
    for (k, &(x, s, j)) in cand.iter().enumerate() {
        if s == 0 || used[k] {
            ext_index[k] = mapping.len() as i64;
            ext_coord.extend_from_slice(&x);
            ext_type.push(atype[j]);
            mapping.push(j);
        }
    }
    let nall = mapping.len();
    let nlist = nlist
        .into_iter()
        .map(|k| {
            if k < 0 {
                -1
            } else {
                ext_index[k as usize] as i32
            }
        })
        .collect();
    Ok(Extended {
        nloc,
        nall,
        coord: ext_coord,
        atype: ext_type,
        mapping,
        nlist,
        nnei: nsel,
        centre_weight: None,
    })
}

/// The extended system around the local atoms where the caller put them, not wrapped into
/// the cell: each pair found in the wrapped frame keeps its vector, and the neighbour
/// becomes the image `(owner, lattice shift)` of it seen from the unwrapped centre. Energies
/// and forces do not depend on the frame; per-atom virials of message-passing models do,
/// and this is the frame DeePMD-kit's PyTorch `DeepPot` uses (its vesin neighbour list).
#[allow(clippy::too_many_arguments)]
fn in_given_frame(
    coord: &[f64],
    atype: &[i32],
    c: &Cell,
    shifts: &[[f64; 3]],
    cand: &[([f64; 3], usize, usize)],
    wraps: &[[i64; 3]],
    nlist: &[i64],
    nsel: usize,
) -> Extended {
    let nloc = atype.len();
    let shift_n: Vec<[i64; 3]> = shifts
        .iter()
        .map(|sh| c.to_frac(*sh).map(|v| v.round() as i64))
        .collect();
    let mut ext_coord = coord[..nloc * 3].to_vec();
    let mut ext_type = atype.to_vec();
    let mut mapping: Vec<usize> = (0..nloc).collect();
    let mut ghosts: crate::fast_map::FastMap<(usize, [i64; 3]), i32> = Default::default();
    let mut out = vec![-1i32; nloc * nsel];
    for i in 0..nloc {
        for slot in 0..nsel {
            let k = nlist[i * nsel + slot];
            if k < 0 {
                continue;
            }
            let (_, s, j) = cand[k as usize];
            let n: [i64; 3] = std::array::from_fn(|d| shift_n[s][d] + wraps[i][d] - wraps[j][d]);
            out[i * nsel + slot] = if n == [0; 3] {
                j as i32
            } else {
                *ghosts.entry((j, n)).or_insert_with(|| {
                    let sh = c.to_cart(n.map(|v| v as f64));
                    for d in 0..3 {
                        ext_coord.push(coord[3 * j + d] + sh[d]);
                    }
                    ext_type.push(atype[j]);
                    mapping.push(j);
                    mapping.len() as i32 - 1
                })
            };
        }
    }
    Extended {
        nloc,
        nall: mapping.len(),
        coord: ext_coord,
        atype: ext_type,
        mapping,
        nlist: out,
        nnei: nsel,
        centre_weight: None,
    }
}

/// An MD rank's extended system for a model whose atoms pass features to their neighbours
/// `layers` times, when the ghost atoms' owners are unknown (several ranks): ghosts are
/// evaluated as centres too, so no features cross ranks between layers.
///
/// An atom's energy reads features that came from atoms up to `layers * rcut` away, so the
/// centres are every atom within `(layers - 1) * rcut` of a local atom (hop by hop along
/// neighbour pairs), each with its own full neighbour list; the ghosts these reach are
/// present but not evaluated, and read as a feature row the type embedding of their type
/// (an extra empty centre per type). Their later-layer features would be wrong, and so
/// would those of the outermost centres, but the error moves inwards one shell per layer
/// and never reaches a local atom. Only local atoms' energies count (`centre_weight`).
///
/// Returns the system and, per extended atom, its index in the input (`usize::MAX` for the
/// extra centres). Fails when the ghosts visibly do not reach `layers * rcut`.
pub fn expand_centres(
    coord: &[f64],
    atype: &[i32],
    nloc: usize,
    select: &Selection,
    layers: usize,
) -> Result<(Extended, Vec<usize>), NlistError> {
    let Selection {
        rcut,
        sel,
        mixed_types,
    } = *select;
    let nall = atype.len();
    if coord.len() != nall * 3 || nloc > nall || layers == 0 {
        return Err(NlistError(format!(
            "inconsistent sizes: {} coordinates, {nall} atoms, {nloc} local",
            coord.len()
        )));
    }
    let pos = |i: usize| [coord[3 * i], coord[3 * i + 1], coord[3 * i + 2]];
    check_ghost_reach(coord, nloc, rcut * (layers as f64 - 0.5))?;
    let points: Vec<([f64; 3], usize, usize)> = (0..nall).map(|k| (pos(k), 0, k)).collect();
    let grid = Grid::new(&points, rcut);
    let rc2 = rcut * rcut;
    let neighbours =
        |i: usize, (found, near): &mut (Vec<(f64, usize)>, Vec<usize>)| -> Result<(), NlistError> {
            found.clear();
            let xi = pos(i);
            grid.around(xi, near);
            for &k in near.iter() {
                if k == i {
                    continue;
                }
                let xk = pos(k);
                keep_within(
                    found,
                    i,
                    k,
                    [xk[0] - xi[0], xk[1] - xi[1], xk[2] - xi[2]],
                    rc2,
                )?;
            }
            Ok(())
        };
    // Hops from the local atoms.
    let mut depth = vec![usize::MAX; nall];
    let mut frontier: Vec<usize> = (0..nloc).collect();
    for d in depth.iter_mut().take(nloc) {
        *d = 0;
    }
    let mut buffers = (Vec::new(), Vec::new());
    for hop in 1..=layers {
        let mut next = Vec::new();
        for &i in &frontier {
            neighbours(i, &mut buffers)?;
            for &(_, k) in &buffers.0 {
                if depth[k] == usize::MAX {
                    depth[k] = hop;
                    next.push(k);
                }
            }
        }
        next.sort_unstable();
        frontier = next;
    }
    let centres: Vec<usize> = (0..nall).filter(|&k| depth[k] < layers).collect();
    let outer: Vec<usize> = (0..nall).filter(|&k| depth[k] == layers).collect();
    let mut types: Vec<i32> = outer.iter().map(|&k| atype[k]).collect();
    types.sort_unstable();
    types.dedup();
    let ncentre = centres.len() + types.len();
    let mut origin: Vec<usize> = centres.clone();
    origin.extend(std::iter::repeat_n(usize::MAX, types.len()));
    origin.extend(&outer);
    let mut ext_index = vec![-1i64; nall];
    for (e, &k) in origin.iter().enumerate() {
        if k != usize::MAX {
            ext_index[k] = e as i64;
        }
    }
    let mut ext_coord = Vec::with_capacity(origin.len() * 3);
    let mut ext_type = Vec::with_capacity(origin.len());
    for (e, &k) in origin.iter().enumerate() {
        if k == usize::MAX {
            ext_coord.extend_from_slice(&[0.0; 3]);
            ext_type.push(types[e - centres.len()]);
        } else {
            ext_coord.extend_from_slice(&pos(k));
            ext_type.push(atype[k]);
        }
    }
    let mapping: Vec<usize> = origin
        .iter()
        .enumerate()
        .map(|(e, &k)| {
            if e < ncentre {
                e
            } else {
                let t = types.binary_search(&atype[k]).expect("listed");
                centres.len() + t
            }
        })
        .collect();
    let nsel: usize = sel.iter().sum();
    check_memory(ncentre, origin.len(), nsel)?;
    let mut nlist = vec![-1i64; ncentre * nsel];
    for (e, &i) in centres.iter().enumerate() {
        neighbours(i, &mut buffers)?;
        let found = &mut buffers.0;
        for f in found.iter_mut() {
            f.1 = ext_index[f.1] as usize;
        }
        select_row(
            found,
            &mut nlist[e * nsel..(e + 1) * nsel],
            |k| ext_type[k],
            sel,
            mixed_types,
        );
    }
    let mut weight = vec![0.0; ncentre];
    for w in weight.iter_mut().take(nloc) {
        *w = 1.0;
    }
    Ok((
        Extended {
            nloc: ncentre,
            nall: origin.len(),
            coord: ext_coord,
            atype: ext_type,
            mapping,
            nlist: nlist.into_iter().map(|k| k as i32).collect(),
            nnei: nsel,
            centre_weight: Some(weight),
        },
        origin,
    ))
}

/// The ghosts must reach `need` beyond the local atoms wherever they exist: per side of the
/// local atoms' bounding box, the ghosts beyond it extend either hardly at all (a
/// non-periodic side) or at least `need`.
fn check_ghost_reach(coord: &[f64], nloc: usize, need: f64) -> Result<(), NlistError> {
    let nall = coord.len() / 3;
    if nloc == 0 || nall == nloc {
        return Ok(());
    }
    let bbox = |r: std::ops::Range<usize>| {
        let mut lo = [f64::INFINITY; 3];
        let mut hi = [f64::NEG_INFINITY; 3];
        for i in r {
            for d in 0..3 {
                lo[d] = lo[d].min(coord[3 * i + d]);
                hi[d] = hi[d].max(coord[3 * i + d]);
            }
        }
        (lo, hi)
    };
    let (llo, lhi) = bbox(0..nloc);
    let (alo, ahi) = bbox(0..nall);
    for d in 0..3 {
        for reach in [llo[d] - alo[d], ahi[d] - lhi[d]] {
            if reach > 1e-6 && reach < need {
                return Err(NlistError(format!(
                    "the ghost atoms reach only {reach:.2} Å beyond the local atoms, but this \
                     message-passing model needs about {need:.2} Å of them to evaluate without \
                     exchanging features between ranks; give the MD code a ghost cutoff of at \
                     least its layers x rcut (LAMMPS: comm_modify cutoff)"
                )));
            }
        }
    }
    Ok(())
}

/// Record neighbour `k` of atom `i` (separation `d`) if it lies within the cutoff; atoms that
/// coincide are an error.
fn keep_within(
    found: &mut Vec<(f64, usize)>,
    i: usize,
    k: usize,
    d: [f64; 3],
    rc2: f64,
) -> Result<(), NlistError> {
    let r2 = dot(d, d);
    if r2 <= rc2 {
        if r2 < OVERLAP_DISTANCE * OVERLAP_DISTANCE {
            return Err(NlistError(format!(
                "atoms {i} and {k} overlap (distance {:.3e} Å)",
                r2.sqrt()
            )));
        }
        found.push((r2, k));
    }
    Ok(())
}

/// Fill one neighbour-list row from the candidates within rcut, `(distance^2, index)`:
/// DeePMD-kit's rule keeps the `sum(sel)` nearest of any type, then (unless types are mixed)
/// splits them into per-type blocks of `sel[t]` slots, nearest first. Ties keep index order.
fn select_row(
    found: &mut Vec<(f64, usize)>,
    row: &mut [i64],
    type_of: impl Fn(usize) -> i32,
    sel: &[usize],
    mixed_types: bool,
) {
    let nsel: usize = sel.iter().sum();
    // Distances are non-negative (NaN never passes the cutoff), so their bits sort as they
    // do; the index breaks ties, and with it the keys are distinct, so an unstable sort
    // gives the same order as a stable one.
    found.sort_unstable_by_key(|&(r2, k)| (r2.to_bits(), k));
    found.truncate(nsel);
    if mixed_types {
        for (slot, &(_, k)) in found.iter().enumerate() {
            row[slot] = k as i64;
        }
        return;
    }
    let mut start = 0;
    for (t, &st) in sel.iter().enumerate() {
        let of_type = found.iter().filter(|f| type_of(f.1) == t as i32).take(st);
        for (n, &(_, k)) in of_type.enumerate() {
            row[start + n] = k as i64;
        }
        start += st;
    }
}

/// An extended system handed in by an MD code: `nall` atoms, the first `nloc` local, and for
/// each local atom the indices of its candidate neighbours (LAMMPS's rcut+skin list). The
/// list is formatted as DeePMD-kit's `format_nlist` does: candidates beyond rcut dropped,
/// then [`select_row`]. `mapping` (ghost -> owner) defaults to the identity.
pub fn from_md_list(
    coord: &[f64],
    atype: &[i32],
    nloc: usize,
    neighbors: &[Vec<usize>],
    mapping: Option<&[usize]>,
    select: &Selection,
) -> Result<Extended, NlistError> {
    let Selection {
        rcut,
        sel,
        mixed_types,
    } = *select;
    let nall = atype.len();
    if coord.len() != nall * 3 || nloc > nall || neighbors.len() != nloc {
        return Err(NlistError(format!(
            "inconsistent sizes: {} coordinates, {nall} atoms, {nloc} local, {} neighbour rows",
            coord.len(),
            neighbors.len()
        )));
    }
    let nsel: usize = sel.iter().sum();
    check_memory(nloc, nall, nsel)?;
    let rc2 = rcut * rcut;
    let mut nlist = vec![-1i64; nloc * nsel];
    let mut found = Vec::new();
    for (i, cands) in neighbors.iter().enumerate() {
        found.clear();
        let xi = [coord[3 * i], coord[3 * i + 1], coord[3 * i + 2]];
        for &j in cands {
            if j >= nall {
                return Err(NlistError(format!(
                    "neighbour index {j} of atom {i} is beyond the {nall} atoms"
                )));
            }
            if j == i || atype[j] < 0 {
                continue;
            }
            let d = [
                coord[3 * j] - xi[0],
                coord[3 * j + 1] - xi[1],
                coord[3 * j + 2] - xi[2],
            ];
            keep_within(&mut found, i, j, d, rc2)?;
        }
        select_row(
            &mut found,
            &mut nlist[i * nsel..(i + 1) * nsel],
            |k| atype[k],
            sel,
            mixed_types,
        );
    }
    let mapping = match mapping {
        Some(m) if m.len() == nall && m.iter().all(|&o| o < nloc) => m.to_vec(),
        Some(_) => {
            return Err(NlistError(
                "the atom mapping must give a local atom for each of the nall atoms".into(),
            ))
        }
        None => (0..nall)
            .map(|k| if k < nloc { k } else { usize::MAX })
            .collect(),
    };
    Ok(Extended {
        nloc,
        nall,
        coord: coord.to_vec(),
        atype: atype.to_vec(),
        mapping,
        nlist: nlist.into_iter().map(|k| k as i32).collect(),
        nnei: nsel,
        centre_weight: None,
    })
}

/// Refuse systems whose neighbour data would not fit in memory, instead of being killed.
fn check_memory(nloc: usize, ncand: usize, nsel: usize) -> Result<(), NlistError> {
    let need = nloc as f64 * nsel as f64 * 12.0 + ncand as f64 * 100.0;
    if ncand > i32::MAX as usize / 2 {
        return Err(NlistError(format!(
            "the system is too large: {ncand} atoms with periodic images (limit {})",
            i32::MAX / 2
        )));
    }
    if let Some(avail) = available_memory() {
        if need > 0.8 * avail {
            return Err(NlistError(format!(
                "the system is too large for this machine: its neighbour lists need about {:.1} GB, {:.1} GB are available",
                need / 1e9,
                avail / 1e9
            )));
        }
    }
    Ok(())
}

/// `MemAvailable` from /proc/meminfo (Linux); `None` elsewhere.
fn available_memory() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// Points binned into cubes of edge rcut, so the neighbours of a point are in the 27 cubes
/// around it: neighbour search in O(N) instead of O(N^2). The cubes are a dense array
/// (points listed cube by cube) when the points' bounding box holds few enough of them, else
/// a hash map of the occupied ones (points scattered far apart).
struct Grid {
    origin: [f64; 3],
    inv_edge: f64,
    bins: Bins,
}

enum Bins {
    /// `dims` cubes; cube `c`'s points are `items[start[c]..start[c + 1]]`.
    Dense {
        dims: [i64; 3],
        start: Vec<u32>,
        items: Vec<u32>,
    },
    Sparse(std::collections::HashMap<[i64; 3], Vec<usize>>),
}

impl Grid {
    fn new(points: &[([f64; 3], usize, usize)], rcut: f64) -> Grid {
        let mut origin = [f64::INFINITY; 3];
        let mut top = [f64::NEG_INFINITY; 3];
        for (p, _, _) in points {
            for k in 0..3 {
                origin[k] = origin[k].min(p[k]);
                top[k] = top[k].max(p[k]);
            }
        }
        let mut g = Grid {
            origin,
            inv_edge: 1.0 / rcut,
            bins: Bins::Sparse(Default::default()),
        };
        if points.is_empty() {
            return g;
        }
        let dims = [0, 1, 2].map(|k| ((top[k] - origin[k]) * g.inv_edge).floor() as i64 + 1);
        let cubes = dims.iter().map(|&d| d as f64).product::<f64>();
        if cubes <= 8.0 * points.len() as f64 + 1024.0 && points.len() < u32::MAX as usize {
            let flat = |c: [i64; 3]| ((c[0] * dims[1] + c[1]) * dims[2] + c[2]) as usize;
            let keys: Vec<usize> = points.iter().map(|(p, _, _)| flat(g.key(*p))).collect();
            let mut start = vec![0u32; cubes as usize + 1];
            for &k in &keys {
                start[k + 1] += 1;
            }
            for c in 0..cubes as usize {
                start[c + 1] += start[c];
            }
            let mut fill = start.clone();
            let mut items = vec![0u32; points.len()];
            for (n, &k) in keys.iter().enumerate() {
                items[fill[k] as usize] = n as u32;
                fill[k] += 1;
            }
            g.bins = Bins::Dense { dims, start, items };
        } else {
            let mut bins: std::collections::HashMap<[i64; 3], Vec<usize>> = Default::default();
            for (n, (p, _, _)) in points.iter().enumerate() {
                bins.entry(g.key(*p)).or_default().push(n);
            }
            g.bins = Bins::Sparse(bins);
        }
        g
    }

    fn key(&self, p: [f64; 3]) -> [i64; 3] {
        [0, 1, 2].map(|k| ((p[k] - self.origin[k]) * self.inv_edge).floor() as i64)
    }

    /// Indices of the points in the 27 cubes around `p`, into `out` (cleared first).
    fn around(&self, p: [f64; 3], out: &mut Vec<usize>) {
        out.clear();
        let c = self.key(p);
        for a in -1..=1i64 {
            for b in -1..=1i64 {
                for d in -1..=1i64 {
                    let q = [c[0] + a, c[1] + b, c[2] + d];
                    match &self.bins {
                        Bins::Dense { dims, start, items } => {
                            if (0..3).any(|k| q[k] < 0 || q[k] >= dims[k]) {
                                continue;
                            }
                            let f = ((q[0] * dims[1] + q[1]) * dims[2] + q[2]) as usize;
                            let (s, e) = (start[f] as usize, start[f + 1] as usize);
                            out.extend(items[s..e].iter().map(|&i| i as usize));
                        }
                        Bins::Sparse(bins) => {
                            if let Some(v) = bins.get(&q) {
                                out.extend_from_slice(v);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Lattice shift vectors covering rcut, the zero shift first, then by length.
fn image_shifts(c: &Cell, rcut: f64) -> Result<Vec<[f64; 3]>, NlistError> {
    let faces = c.face_distances();
    let nb: Vec<i64> = faces.iter().map(|d| (rcut / d).ceil() as i64).collect();
    let count: i64 = nb.iter().map(|n| 2 * n + 1).product();
    if count > 2_000_000 {
        return Err(NlistError(format!(
            "the cell is far thinner than the cutoff ({count} periodic images needed; face distances {faces:?} Å, rcut {rcut} Å)"
        )));
    }
    let mut shifts = Vec::with_capacity(count as usize);
    for i in -nb[0]..=nb[0] {
        for j in -nb[1]..=nb[1] {
            for k in -nb[2]..=nb[2] {
                let s = c.to_cart([i as f64, j as f64, k as f64]);
                shifts.push((i * i + j * j + k * k, s));
            }
        }
    }
    shifts.sort_by(|a, b| norm(a.1).total_cmp(&norm(b.1)).then(a.0.cmp(&b.0)));
    // The zero shift has length 0 and sorts first.
    Ok(shifts.into_iter().map(|(_, s)| s).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_box_sees_its_own_images() {
        // One atom in a 2 Å cube with rcut 2.5: images at 2 Å (6) and 2.83 Å (none; > 2.5).
        let cell = Cell::new(&[2.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 2.0]).unwrap();
        let e = build(&[0.5, 0.5, 0.5], &[0], Some(&cell), 2.5, &[10], false).unwrap();
        let row = &e.nlist[..10];
        assert_eq!(row.iter().filter(|&&x| x >= 0).count(), 6);
        assert!(row
            .iter()
            .filter(|&&x| x >= 0)
            .all(|&x| e.mapping[x as usize] == 0));
        assert_eq!(e.nall, 7);
    }

    #[test]
    fn types_split_into_blocks_nearest_first() {
        let coord = [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 1.5];
        let e = build(&coord, &[0, 1, 0, 1], None, 3.0, &[2, 2], false).unwrap();
        assert_eq!(&e.nlist[..4], &[2, -1, 1, 3]);
        let m = build(&coord, &[0, 1, 0, 1], None, 3.0, &[4], true).unwrap();
        assert_eq!(&m.nlist[..4], &[1, 3, 2, -1]);
    }

    /// All neighbours within rcut by brute force over every image: (distance, owner) sorted.
    fn brute(coord: &[f64], cell: &Cell, rcut: f64, i: usize) -> Vec<(f64, usize)> {
        let n = coord.len() / 3;
        let x = |k: usize| cell.wrap([coord[3 * k], coord[3 * k + 1], coord[3 * k + 2]]);
        let xi = x(i);
        let mut out = Vec::new();
        for s in image_shifts(cell, rcut).unwrap() {
            for j in 0..n {
                let xj = x(j);
                let d = norm([
                    xj[0] + s[0] - xi[0],
                    xj[1] + s[1] - xi[1],
                    xj[2] + s[2] - xi[2],
                ]);
                if d <= rcut && d > 1e-12 {
                    out.push((d, j));
                }
            }
        }
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }

    #[test]
    fn cell_list_finds_what_brute_force_finds() {
        let mut state = 12345u64;
        let mut rnd = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        for (h, rcut) in [
            ([7.0, 0.0, 0.0, 2.1, 6.5, 0.0, -1.3, 1.7, 6.8], 4.0),
            ([3.1, 0.0, 0.0, 0.9, 2.9, 0.0, 0.4, -0.6, 3.3], 5.0),
        ] {
            let cell = Cell::new(&h).unwrap();
            let n = 30;
            let coord: Vec<f64> = (0..n)
                .flat_map(|_| {
                    let s = [rnd() * 1.4 - 0.2, rnd() * 1.4 - 0.2, rnd() * 1.4 - 0.2];
                    cell.to_cart(s)
                })
                .collect();
            let e = build(&coord, &vec![0; n], Some(&cell), rcut, &[1000], true).unwrap();
            for i in 0..n {
                let want = brute(&coord, &cell, rcut, i);
                let row = &e.nlist[i * 1000..(i + 1) * 1000];
                let got: Vec<(f64, usize)> = row
                    .iter()
                    .filter(|&&k| k >= 0)
                    .map(|&k| {
                        let k = k as usize;
                        let d = norm([0, 1, 2].map(|c| e.coord[3 * k + c] - e.coord[3 * i + c]));
                        (d, e.mapping[k])
                    })
                    .collect();
                assert_eq!(got.len(), want.len(), "atom {i}");
                for (g, w) in got.iter().zip(&want) {
                    assert!((g.0 - w.0).abs() < 1e-12, "atom {i}: {g:?} vs {w:?}");
                }
            }
        }
    }

    #[test]
    fn systems_too_large_for_memory_are_refused() {
        let e = check_memory(900_000_000, 900_000_000, 138).unwrap_err();
        assert!(e.0.contains("too large"), "{}", e.0);
        assert!(check_memory(3_000_000_000, 3_000_000_000, 10).is_err());
        assert!(check_memory(1000, 27_000, 138).is_ok());
    }

    #[test]
    fn singular_boxes_and_overlaps_are_errors() {
        assert!(Cell::new(&[1.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 1.0]).is_err());
        assert!(Cell::new(&[1.0, 0.0, 0.0, 0.0, f64::NAN, 0.0, 0.0, 0.0, 1.0]).is_err());
        assert!(build(&[0.0; 6], &[0, 0], None, 3.0, &[4], false).is_err());
    }
}
