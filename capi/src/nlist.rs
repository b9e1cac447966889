//! `DP_Nlist`: an MD code's neighbour list (LAMMPS's `inum/ilist/numneigh/firstneigh`),
//! held by pointer as DeePMD-kit's `InputNlist` holds it, and read when a computation with
//! `ago == 0` takes a copy.

use std::ffi::{c_char, c_int, c_void};

use crate::{alloc, guarded};

pub struct DP_Nlist {
    inum: c_int,
    ilist: *const c_int,
    numneigh: *const c_int,
    firstneigh: *const *const c_int,
    /// Applied to every neighbour index (LAMMPS keeps special-bond bits above `NEIGHMASK`).
    mask: c_int,
    /// Extended atom -> the local atom it images, `nall` long (for the caller's bookkeeping).
    mapping: *const c_int,
    error: String,
}

/// The neighbour list copied out of the caller's arrays: one row per local atom.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rows {
    pub nloc: usize,
    pub nall: usize,
    pub rows: Vec<Vec<usize>>,
}

impl DP_Nlist {
    /// Copy the list for a system of `nloc` local atoms among `nall`: row `i` holds the
    /// neighbours of local atom `i` (the list's `ilist` says which row is which).
    pub(crate) unsafe fn copy_rows(&self, nloc: usize, nall: usize) -> Result<Rows, String> {
        if !self.error.is_empty() {
            return Err(format!("the neighbour list is invalid: {}", self.error));
        }
        let inum = self.inum as usize;
        if inum > nloc {
            return Err(format!(
                "the neighbour list has {inum} atoms, but only {nloc} are local (natoms - nghost)"
            ));
        }
        let mut rows = vec![Vec::new(); nloc];
        let mut seen = vec![false; nloc];
        for ii in 0..inum {
            let i = *self.ilist.add(ii);
            if i < 0 || i as usize >= nloc || seen[i as usize] {
                return Err(format!(
                    "ilist[{ii}] = {i} is not a local atom index (0..{nloc}) or repeats"
                ));
            }
            seen[i as usize] = true;
            let n = *self.numneigh.add(ii);
            if n < 0 {
                return Err(format!("numneigh[{ii}] = {n} is negative"));
            }
            let first = *self.firstneigh.add(ii);
            if first.is_null() && n > 0 {
                return Err(format!("firstneigh[{ii}] is a null pointer"));
            }
            let row = &mut rows[i as usize];
            row.reserve(n as usize);
            for jj in 0..n as usize {
                let j = *first.add(jj) & self.mask;
                if j < 0 || j as usize >= nall {
                    return Err(format!(
                        "neighbour {j} of atom {i} is outside the {nall} atoms (set the mask with DP_NlistSetMask?)"
                    ));
                }
                row.push(j as usize);
            }
        }
        Ok(Rows { nloc, nall, rows })
    }

    /// The mapping set by `DP_NlistSetMapping`, checked against the system.
    pub(crate) unsafe fn mapping(
        &self,
        nloc: usize,
        nall: usize,
    ) -> Result<Option<Vec<usize>>, String> {
        if self.mapping.is_null() {
            return Ok(None);
        }
        (0..nall)
            .map(|k| {
                let m = *self.mapping.add(k);
                if m < 0 || m as usize >= nloc {
                    Err(format!(
                        "mapping[{k}] = {m} is not a local atom index (0..{nloc})"
                    ))
                } else {
                    Ok(m as usize)
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

/// Wrap an MD code's neighbour list (its arrays must outlive the `DP_Nlist`).
#[no_mangle]
pub unsafe extern "C" fn DP_NewNlist(
    inum_: c_int,
    ilist_: *mut c_int,
    numneigh_: *mut c_int,
    firstneigh_: *mut *mut c_int,
) -> *mut DP_Nlist {
    let mut nl = DP_Nlist {
        inum: inum_.max(0),
        ilist: ilist_,
        numneigh: numneigh_,
        firstneigh: firstneigh_ as *const *const c_int,
        mask: -1,
        mapping: std::ptr::null(),
        error: String::new(),
    };
    guarded(&mut nl.error, || {
        if inum_ < 0 {
            return Err(format!("inum = {inum_} is negative"));
        }
        if inum_ > 0 && (ilist_.is_null() || numneigh_.is_null() || firstneigh_.is_null()) {
            return Err("ilist, numneigh and firstneigh must not be null pointers".into());
        }
        Ok(())
    });
    Box::into_raw(Box::new(nl))
}

/// `DP_NewNlist` with the communication pattern of a domain-decomposed run. dpc's models
/// need only each rank's own atoms and ghosts, so the pattern is accepted and not used;
/// message-passing descriptors (DPA-2/3), which would use it, are refused at load time.
#[no_mangle]
pub unsafe extern "C" fn DP_NewNlist_comm(
    inum_: c_int,
    ilist_: *mut c_int,
    numneigh_: *mut c_int,
    firstneigh_: *mut *mut c_int,
    _nswap: c_int,
    _sendnum: *mut c_int,
    _recvnum: *mut c_int,
    _firstrecv: *mut c_int,
    _sendlist: *mut *mut c_int,
    _sendproc: *mut c_int,
    _recvproc: *mut c_int,
    _world: *mut c_void,
    _nprocs: c_int,
) -> *mut DP_Nlist {
    DP_NewNlist(inum_, ilist_, numneigh_, firstneigh_)
}

#[no_mangle]
pub unsafe extern "C" fn DP_NlistSetMask(nl: *mut DP_Nlist, mask: c_int) {
    if let Some(nl) = nl.as_mut() {
        nl.mask = mask;
    }
}

#[no_mangle]
pub unsafe extern "C" fn DP_NlistSetMapping(nl: *mut DP_Nlist, mapping: *mut c_int) {
    if let Some(nl) = nl.as_mut() {
        nl.mapping = mapping;
    }
}

#[no_mangle]
pub unsafe extern "C" fn DP_DeleteNlist(nl: *mut DP_Nlist) {
    if !nl.is_null() {
        drop(Box::from_raw(nl));
    }
}

/// The list's error ("" when fine); free with `DP_DeleteChar`.
#[no_mangle]
pub unsafe extern "C" fn DP_NlistCheckOK(nl: *mut DP_Nlist) -> *const c_char {
    match nl.as_ref() {
        None => alloc::c_string("DP_Nlist is a null pointer"),
        Some(n) => alloc::c_string(&n.error),
    }
}
