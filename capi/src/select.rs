//! Atom selection helpers of DeePMD-kit's C API (used by `deepmd.hpp` for tensor models
//! and by LAMMPS's `fix dplr`). They have no error channel: null outputs are skipped and
//! indices out of range are ignored rather than written out of bounds.

use std::ffi::c_int;

/// Select the atoms whose type is in `sel_type`: `fwd_map[natoms]` gives each atom's new
/// index (-1 if not selected), `bkw_map[nreal]` the old index of each selected atom.
#[no_mangle]
pub unsafe extern "C" fn DP_SelectByType(
    natoms: c_int,
    atype: *const c_int,
    nghost: c_int,
    nsel_type: c_int,
    sel_type: *const c_int,
    fwd_map: *mut c_int,
    nreal: *mut c_int,
    bkw_map: *mut c_int,
    nghost_real: *mut c_int,
) {
    let _ = std::panic::catch_unwind(|| {
        if natoms < 0 || (natoms > 0 && atype.is_null()) || (nsel_type > 0 && sel_type.is_null()) {
            return;
        }
        let atype = std::slice::from_raw_parts(atype, natoms as usize);
        let sel: &[c_int] = if nsel_type > 0 {
            std::slice::from_raw_parts(sel_type, nsel_type as usize)
        } else {
            &[]
        };
        let nloc = (natoms - nghost.clamp(0, natoms)) as usize;
        let (mut count, mut ghosts) = (0, 0);
        for (i, t) in atype.iter().enumerate() {
            let chosen = sel.contains(t);
            if chosen {
                if !bkw_map.is_null() {
                    *bkw_map.add(count as usize) = i as c_int;
                }
                if i >= nloc {
                    ghosts += 1;
                }
            }
            if !fwd_map.is_null() {
                *fwd_map.add(i) = if chosen { count } else { -1 };
            }
            if chosen {
                count += 1;
            }
        }
        if !nreal.is_null() {
            *nreal = count;
        }
        if !nghost_real.is_null() {
            *nghost_real = ghosts;
        }
    });
}

/// Scatter `in[nall1 * stride]` to `out[nall2 * stride]` by `fwd_map` (entries -1 dropped,
/// slots not written become 0).
#[no_mangle]
pub unsafe extern "C" fn DP_SelectMapInt(
    in_: *const c_int,
    fwd_map: *const c_int,
    stride: c_int,
    nall1: c_int,
    nall2: c_int,
    out: *mut c_int,
) {
    let _ = std::panic::catch_unwind(|| {
        if out.is_null()
            || stride <= 0
            || nall1 < 0
            || nall2 < 0
            || (nall1 > 0 && (in_.is_null() || fwd_map.is_null()))
        {
            return;
        }
        let (stride, nall1, nall2) = (stride as usize, nall1 as usize, nall2 as usize);
        let mut result = vec![0 as c_int; nall2 * stride];
        for ii in 0..nall1 {
            let to = *fwd_map.add(ii);
            if to >= 0 && (to as usize) < nall2 {
                for d in 0..stride {
                    result[to as usize * stride + d] = *in_.add(ii * stride + d);
                }
            }
        }
        std::ptr::copy_nonoverlapping(result.as_ptr(), out, result.len());
    });
}
