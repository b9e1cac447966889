//! The compute entry points: `DP_DeepPotCompute*` (the library builds the neighbour list)
//! and `DP_DeepPotComputeNList*` (the MD code's list, with ghosts), in double and float, for
//! one model or several (model deviation). All of them decode their pointers into a
//! `System`, evaluate frame by frame, and write the outputs the caller asked for only
//! once everything succeeded, so a failed call leaves the caller's arrays untouched.

use std::ffi::c_int;

use dpc_runtime::nlist::{self, Selection};
use dpc_runtime::{DeepPot, Frame, Output};

use crate::nlist::{DP_Nlist, Rows};
use crate::{guarded, DP_DeepPot, DP_DeepPotModelDevi};

/// The element types of the C API's arrays.
pub trait Real: Copy {
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
}

impl Real for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
}

impl Real for f32 {
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

/// The caller's input arrays, as passed.
struct Request<T> {
    nframes: c_int,
    natoms: c_int,
    coord: *const T,
    atype: *const c_int,
    cell: *const T,
    fparam: *const T,
    aparam: *const T,
    /// Types given per frame (`ComputeMixedType`) instead of once for all frames.
    types_per_frame: bool,
}

/// Where the caller wants the outputs (null: not wanted).
struct Outputs<T> {
    energy: *mut f64,
    force: *mut T,
    virial: *mut T,
    atom_energy: *mut T,
    atom_virial: *mut T,
}

/// The MD code's neighbour list and ghost count.
struct ListRequest {
    nghost: c_int,
    nlist: *const DP_Nlist,
    ago: c_int,
}

/// Inputs decoded to f64 and checked for size.
struct System {
    nframes: usize,
    natoms: usize,
    coord: Vec<f64>,
    atype: Vec<i32>,
    types_per_frame: bool,
    cell: Option<Vec<f64>>,
    fparam: Option<Vec<f64>>,
    aparam: Option<Vec<f64>>,
    dim_fparam: usize,
    /// Values of `aparam` per frame.
    aparam_per_frame: usize,
}

impl System {
    fn atype(&self, f: usize) -> &[i32] {
        if self.types_per_frame {
            &self.atype[f * self.natoms..(f + 1) * self.natoms]
        } else {
            &self.atype
        }
    }

    fn frame(&self, f: usize) -> Frame<'_> {
        let n = self.natoms;
        Frame {
            coord: &self.coord[f * n * 3..(f + 1) * n * 3],
            atype: self.atype(f),
            cell: self.cell.as_ref().map(|c| &c[f * 9..f * 9 + 9]),
            fparam: self
                .fparam
                .as_ref()
                .map(|p| &p[f * self.dim_fparam..(f + 1) * self.dim_fparam]),
            aparam: self
                .aparam
                .as_ref()
                .map(|p| &p[f * self.aparam_per_frame..(f + 1) * self.aparam_per_frame]),
        }
    }
}

unsafe fn read<T: Real>(p: *const T, n: usize, what: &str) -> Result<Vec<f64>, String> {
    if p.is_null() {
        return Err(format!("{what} is a null pointer"));
    }
    Ok(std::slice::from_raw_parts(p, n)
        .iter()
        .map(|x| x.to_f64())
        .collect())
}

/// Decode the request; `aparam_atoms` is how many atoms per frame carry `aparam`.
unsafe fn decode<T: Real>(
    req: &Request<T>,
    pot: &DeepPot,
    aparam_atoms: Option<usize>,
) -> Result<System, String> {
    if req.nframes < 1 {
        return Err(format!("nframes = {} (must be at least 1)", req.nframes));
    }
    if req.natoms < 0 {
        return Err(format!("natoms = {} is negative", req.natoms));
    }
    let (nframes, natoms) = (req.nframes as usize, req.natoms as usize);
    let coord = read(req.coord, nframes * natoms * 3, "coord")?;
    let ntype_values = if req.types_per_frame {
        nframes * natoms
    } else {
        natoms
    };
    if req.atype.is_null() {
        return Err("atype is a null pointer".into());
    }
    let atype = std::slice::from_raw_parts(req.atype, ntype_values).to_vec();
    let cell = if req.cell.is_null() {
        None
    } else {
        Some(read(req.cell, nframes * 9, "cell")?)
    };
    let m = pot.model();
    let dim_fparam = m.dim_fparam();
    let fparam = if req.fparam.is_null() || dim_fparam == 0 {
        None
    } else {
        Some(read(req.fparam, nframes * dim_fparam, "fparam")?)
    };
    let aparam_per_frame = aparam_atoms.unwrap_or(natoms) * m.dim_aparam();
    let aparam = if req.aparam.is_null() || aparam_per_frame == 0 {
        None
    } else {
        Some(read(req.aparam, nframes * aparam_per_frame, "aparam")?)
    };
    Ok(System {
        nframes,
        natoms,
        coord,
        atype,
        types_per_frame: req.types_per_frame,
        cell,
        fparam,
        aparam,
        dim_fparam,
        aparam_per_frame,
    })
}

/// Outputs of all frames (and models), concatenated as the C API lays them out.
#[derive(Default)]
struct Results {
    energy: Vec<f64>,
    force: Vec<f64>,
    virial: Vec<f64>,
    atom_energy: Vec<f64>,
    atom_virial: Vec<f64>,
}

impl Results {
    fn push(&mut self, o: Output) {
        self.energy.push(o.energy);
        self.force.extend_from_slice(&o.force);
        self.virial.extend_from_slice(&o.virial);
        self.atom_energy.extend_from_slice(&o.atom_energy);
        if let Some(av) = o.atom_virial {
            self.atom_virial.extend_from_slice(&av);
        }
    }

    unsafe fn write<T: Real>(&self, out: &Outputs<T>) {
        unsafe fn put<T: Real>(p: *mut T, v: &[f64]) {
            if !p.is_null() {
                for (k, &x) in v.iter().enumerate() {
                    *p.add(k) = T::from_f64(x);
                }
            }
        }
        if !out.energy.is_null() {
            std::ptr::copy_nonoverlapping(self.energy.as_ptr(), out.energy, self.energy.len());
        }
        put(out.force, &self.force);
        put(out.virial, &self.virial);
        put(out.atom_energy, &self.atom_energy);
        put(out.atom_virial, &self.atom_virial);
    }
}

/// One frame, the library building the neighbour list.
fn eval_frame(pot: &DeepPot, sys: &System, f: usize, atomic: bool) -> Result<Output, String> {
    pot.compute(&sys.frame(f), atomic)
        .map_err(|e| e.to_string())
}

/// One frame on the MD code's extended system: `natoms - nghost` local atoms first, then
/// ghosts. Outputs are per extended atom (ghost forces for the caller to send home);
/// atoms of negative type are virtual and take no part, as in DeePMD-kit.
fn eval_frame_nlist(
    pot: &DeepPot,
    sys: &System,
    f: usize,
    rows: &Rows,
    mapping: Option<&[usize]>,
    atomic: bool,
) -> Result<Output, String> {
    let m = pot.model();
    let (nall, nloc) = (rows.nall, rows.nloc);
    let frame = sys.frame(f);
    let ntypes = m.ntypes() as i32;
    if let Some(i) = frame.atype.iter().position(|&t| t >= ntypes) {
        return Err(format!(
            "atom {i} has type {}, but the model's type map has {ntypes} types {:?}",
            frame.atype[i], m.type_map
        ));
    }
    if let Some(i) = frame.coord.iter().position(|x| !x.is_finite()) {
        return Err(format!(
            "coordinate {} of atom {} is {}",
            i % 3,
            i / 3,
            frame.coord[i]
        ));
    }
    // Renumber the real atoms; locals stay ahead of ghosts.
    let mut fwd = vec![usize::MAX; nall];
    let mut real = Vec::with_capacity(nall);
    for (k, &t) in frame.atype.iter().enumerate() {
        if t >= 0 {
            fwd[k] = real.len();
            real.push(k);
        }
    }
    let nloc_real = real.iter().take_while(|&&k| k < nloc).count();
    let mut out = Output {
        energy: 0.0,
        force: vec![0.0; nall * 3],
        virial: [0.0; 9],
        atom_energy: vec![0.0; nall],
        atom_virial: atomic.then(|| vec![0.0; nall * 9]),
    };
    let fparam = pot.fparam(frame.fparam).map_err(|e| e.to_string())?;
    let nap = m.dim_aparam();
    if nap > 0 && frame.aparam.is_none() {
        return Err(format!("the model needs aparam ({nap} per local atom)"));
    }
    if nloc_real == 0 {
        // An MD rank whose domain holds no atoms: nothing to add.
        return Ok(out);
    }
    let coord: Vec<f64> = real
        .iter()
        .flat_map(|&k| frame.coord[3 * k..3 * k + 3].iter().copied())
        .collect();
    let atype: Vec<i32> = real.iter().map(|&k| frame.atype[k]).collect();
    let neighbors: Vec<Vec<usize>> = real[..nloc_real]
        .iter()
        .map(|&i| {
            rows.rows[i]
                .iter()
                .map(|&j| fwd[j])
                .filter(|&j| j != usize::MAX)
                .collect()
        })
        .collect();
    let mapping: Option<Vec<usize>> = match mapping {
        None => None,
        Some(map) => Some(
            real.iter()
                .map(|&k| match fwd[map[k]] {
                    usize::MAX => Err(format!(
                        "mapping sends real atom {k} to the virtual atom {}",
                        map[k]
                    )),
                    o => Ok(o),
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    let aparam: Option<Vec<f64>> = frame.aparam.filter(|_| nap > 0).map(|a| {
        real[..nloc_real]
            .iter()
            .flat_map(|&i| a[i * nap..(i + 1) * nap].iter().copied())
            .collect()
    });
    if aparam
        .as_ref()
        .is_some_and(|a| a.iter().any(|x| !x.is_finite()))
    {
        return Err("aparam contains NaN or infinity".into());
    }
    let sel = m.sel();
    let select = Selection {
        rcut: m.rcut(),
        sel: &sel,
        mixed_types: m.mixed_types(),
    };
    let layers = m.descriptor.message_passing_layers();
    // Extended atom -> index into `real` (`usize::MAX`: none).
    let (ext, origin) = if layers > 0 && mapping.is_none() {
        // Ghost owners unknown (several ranks): ghosts are evaluated as centres as well.
        if nap > 0 {
            return Err(
                "aparam with a message-passing model needs the atom mapping (one MPI rank)".into(),
            );
        }
        nlist::expand_centres(&coord, &atype, nloc_real, &select, layers).map_err(|e| e.0)?
    } else {
        let ext = nlist::from_md_list(
            &coord,
            &atype,
            nloc_real,
            &neighbors,
            mapping.as_deref(),
            &select,
        )
        .map_err(|e| e.0)?;
        (ext, (0..real.len()).collect())
    };
    let ex = pot
        .evaluate_extended(&ext, fparam.as_deref(), aparam.as_deref(), atomic, None)
        .map_err(|e| e.to_string())?;
    out.energy = ex.energy;
    out.virial = ex.virial;
    for (e, &r) in origin.iter().enumerate() {
        if r == usize::MAX {
            continue;
        }
        let k = real[r];
        out.force[3 * k..3 * k + 3].copy_from_slice(&ex.force[3 * e..3 * e + 3]);
        if r < nloc_real {
            out.atom_energy[k] = ex.atom_energy[e];
        }
        if let (Some(av), Some(ev)) = (out.atom_virial.as_mut(), ex.atom_virial.as_ref()) {
            av[9 * k..9 * k + 9].copy_from_slice(&ev[9 * e..9 * e + 9]);
        }
    }
    let finite =
        out.energy.is_finite() && out.force.iter().chain(&out.virial).all(|x| x.is_finite());
    if !finite {
        return Err("the model produced NaN or infinite values for this configuration".into());
    }
    Ok(out)
}

/// The neighbour list to use: the caller's, copied when `ago == 0` (or on first use), else
/// the copy kept from then, as DeePMD-kit does between rebuilds.
unsafe fn list_rows<'a>(
    cache: &'a mut Option<Rows>,
    lr: &ListRequest,
    natoms: usize,
) -> Result<(&'a Rows, usize), String> {
    if lr.nghost < 0 || lr.nghost as usize > natoms {
        return Err(format!("nghost = {} is not within 0..={natoms}", lr.nghost));
    }
    let nloc = natoms - lr.nghost as usize;
    let stale = match cache.as_ref() {
        Some(r) if lr.ago > 0 => {
            if r.nloc != nloc || r.nall != natoms {
                return Err(format!(
                    "ago = {} reuses the neighbour list of {} local and {} ghost atoms, but this call has {nloc} and {}; pass ago = 0 after the atoms change",
                    lr.ago,
                    r.nloc,
                    r.nall - r.nloc,
                    lr.nghost
                ));
            }
            false
        }
        _ => true,
    };
    if stale {
        let nl = lr
            .nlist
            .as_ref()
            .ok_or("the neighbour list is a null pointer")?;
        *cache = Some(nl.copy_rows(nloc, natoms)?);
    }
    Ok((cache.as_ref().expect("just filled"), nloc))
}

unsafe fn list_mapping(
    lr: &ListRequest,
    nloc: usize,
    nall: usize,
) -> Result<Option<Vec<usize>>, String> {
    match lr.nlist.as_ref() {
        Some(nl) => nl.mapping(nloc, nall),
        None => Ok(None),
    }
}

unsafe fn compute<T: Real>(
    dp: *mut DP_DeepPot,
    req: Request<T>,
    list: Option<ListRequest>,
    out: Outputs<T>,
) {
    let Some(dp) = dp.as_mut() else { return };
    let load_error = dp.error.clone();
    let DP_DeepPot { pot, error, rows } = dp;
    let mut results = Results::default();
    guarded(error, || {
        let pot = pot.as_ref().ok_or_else(|| no_model(&load_error))?;
        let atomic = !out.atom_virial.is_null();
        match list {
            None => {
                let sys = decode(&req, pot, None)?;
                for f in 0..sys.nframes {
                    results.push(eval_frame(pot, &sys, f, atomic)?);
                }
            }
            Some(lr) => {
                let natoms = req.natoms.max(0) as usize;
                let (rows, nloc) = list_rows(rows, &lr, natoms)?;
                let sys = decode(&req, pot, Some(nloc))?;
                let mapping = list_mapping(&lr, nloc, natoms)?;
                for f in 0..sys.nframes {
                    results.push(eval_frame_nlist(
                        pot,
                        &sys,
                        f,
                        rows,
                        mapping.as_deref(),
                        atomic,
                    )?);
                }
            }
        }
        Ok(())
    });
    if error.is_empty() {
        results.write(&out);
    }
}

unsafe fn compute_devi<T: Real>(
    dp: *mut DP_DeepPotModelDevi,
    req: Request<T>,
    list: Option<ListRequest>,
    out: Outputs<T>,
) {
    let Some(dp) = dp.as_mut() else { return };
    let load_error = dp.error.clone();
    let DP_DeepPotModelDevi { pots, error, rows } = dp;
    let mut results = Results::default();
    guarded(error, || {
        if pots.is_empty() {
            return Err(no_model(&load_error));
        }
        if req.nframes != 1 {
            return Err(format!(
                "model deviation takes exactly one frame (nframes = {})",
                req.nframes
            ));
        }
        let atomic = !out.atom_virial.is_null();
        let natoms = req.natoms.max(0) as usize;
        let listed = match &list {
            Some(lr) => {
                let (rows, nloc) = list_rows(rows, lr, natoms)?;
                Some((rows, nloc, list_mapping(lr, nloc, natoms)?))
            }
            None => None,
        };
        for (k, pot) in pots.iter().enumerate() {
            let model = |e: String| {
                if pots.len() > 1 {
                    format!("model {k}: {e}")
                } else {
                    e
                }
            };
            let one = match &listed {
                None => {
                    let sys = decode(&req, pot, None)?;
                    eval_frame(pot, &sys, 0, atomic)
                }
                Some((rows, nloc, mapping)) => {
                    let sys = decode(&req, pot, Some(*nloc))?;
                    eval_frame_nlist(pot, &sys, 0, rows, mapping.as_deref(), atomic)
                }
            };
            results.push(one.map_err(model)?);
        }
        Ok(())
    });
    if error.is_empty() {
        results.write(&out);
    }
}

fn no_model(load_error: &str) -> String {
    if load_error.is_empty() {
        "no model is loaded".into()
    } else {
        format!("no model is loaded ({load_error})")
    }
}

/// Declare the entry points of one family (plain or model deviation) in one precision.
macro_rules! entry_points {
    ($handle:ty, $run:ident, $t:ty,
     v1: $v1:ident, nlist1: $nl1:ident, v2: $v2:ident, nlist2: $nl2:ident, v3: $v3:ident, nlist3: $nl3:ident) => {
        /// One frame, no frame or atomic parameters.
        #[no_mangle]
        pub unsafe extern "C" fn $v1(
            dp: *mut $handle,
            natoms: c_int,
            coord: *const $t,
            atype: *const c_int,
            cell: *const $t,
            energy: *mut f64,
            force: *mut $t,
            virial: *mut $t,
            atomic_energy: *mut $t,
            atomic_virial: *mut $t,
        ) {
            $v2(
                dp,
                1,
                natoms,
                coord,
                atype,
                cell,
                std::ptr::null(),
                std::ptr::null(),
                energy,
                force,
                virial,
                atomic_energy,
                atomic_virial,
            )
        }

        /// One frame on the caller's neighbour list, no frame or atomic parameters.
        #[no_mangle]
        pub unsafe extern "C" fn $nl1(
            dp: *mut $handle,
            natoms: c_int,
            coord: *const $t,
            atype: *const c_int,
            cell: *const $t,
            nghost: c_int,
            nlist: *const DP_Nlist,
            ago: c_int,
            energy: *mut f64,
            force: *mut $t,
            virial: *mut $t,
            atomic_energy: *mut $t,
            atomic_virial: *mut $t,
        ) {
            $nl2(
                dp,
                1,
                natoms,
                coord,
                atype,
                cell,
                nghost,
                nlist,
                ago,
                std::ptr::null(),
                std::ptr::null(),
                energy,
                force,
                virial,
                atomic_energy,
                atomic_virial,
            )
        }

        /// `nframes` frames sharing the atom types; the library builds the neighbour list.
        #[no_mangle]
        pub unsafe extern "C" fn $v2(
            dp: *mut $handle,
            nframes: c_int,
            natoms: c_int,
            coord: *const $t,
            atype: *const c_int,
            cell: *const $t,
            fparam: *const $t,
            aparam: *const $t,
            energy: *mut f64,
            force: *mut $t,
            virial: *mut $t,
            atomic_energy: *mut $t,
            atomic_virial: *mut $t,
        ) {
            let req = Request {
                nframes,
                natoms,
                coord,
                atype,
                cell,
                fparam,
                aparam,
                types_per_frame: false,
            };
            let out = Outputs {
                energy,
                force,
                virial,
                atom_energy: atomic_energy,
                atom_virial: atomic_virial,
            };
            $run(dp, req, None, out)
        }

        /// `nframes` frames on the caller's neighbour list: `natoms` counts the ghosts,
        /// which come last; outputs are per atom, ghosts included.
        #[no_mangle]
        pub unsafe extern "C" fn $nl2(
            dp: *mut $handle,
            nframes: c_int,
            natoms: c_int,
            coord: *const $t,
            atype: *const c_int,
            cell: *const $t,
            nghost: c_int,
            nlist: *const DP_Nlist,
            ago: c_int,
            fparam: *const $t,
            aparam: *const $t,
            energy: *mut f64,
            force: *mut $t,
            virial: *mut $t,
            atomic_energy: *mut $t,
            atomic_virial: *mut $t,
        ) {
            let req = Request {
                nframes,
                natoms,
                coord,
                atype,
                cell,
                fparam,
                aparam,
                types_per_frame: false,
            };
            let out = Outputs {
                energy,
                force,
                virial,
                atom_energy: atomic_energy,
                atom_virial: atomic_virial,
            };
            $run(dp, req, Some(ListRequest { nghost, nlist, ago }), out)
        }

        /// `_2` with a charge/spin input, which no model dpc evaluates takes (ignored).
        #[no_mangle]
        pub unsafe extern "C" fn $v3(
            dp: *mut $handle,
            nframes: c_int,
            natoms: c_int,
            coord: *const $t,
            atype: *const c_int,
            cell: *const $t,
            fparam: *const $t,
            aparam: *const $t,
            _charge_spin: *const $t,
            energy: *mut f64,
            force: *mut $t,
            virial: *mut $t,
            atomic_energy: *mut $t,
            atomic_virial: *mut $t,
        ) {
            $v2(
                dp,
                nframes,
                natoms,
                coord,
                atype,
                cell,
                fparam,
                aparam,
                energy,
                force,
                virial,
                atomic_energy,
                atomic_virial,
            )
        }

        /// `NList2` with a charge/spin input, which no model dpc evaluates takes (ignored).
        #[no_mangle]
        pub unsafe extern "C" fn $nl3(
            dp: *mut $handle,
            nframes: c_int,
            natoms: c_int,
            coord: *const $t,
            atype: *const c_int,
            cell: *const $t,
            nghost: c_int,
            nlist: *const DP_Nlist,
            ago: c_int,
            fparam: *const $t,
            aparam: *const $t,
            _charge_spin: *const $t,
            energy: *mut f64,
            force: *mut $t,
            virial: *mut $t,
            atomic_energy: *mut $t,
            atomic_virial: *mut $t,
        ) {
            $nl2(
                dp,
                nframes,
                natoms,
                coord,
                atype,
                cell,
                nghost,
                nlist,
                ago,
                fparam,
                aparam,
                energy,
                force,
                virial,
                atomic_energy,
                atomic_virial,
            )
        }
    };
}

entry_points!(DP_DeepPot, compute, f64,
    v1: DP_DeepPotCompute, nlist1: DP_DeepPotComputeNList, v2: DP_DeepPotCompute2,
    nlist2: DP_DeepPotComputeNList2, v3: DP_DeepPotCompute3, nlist3: DP_DeepPotComputeNList3);
entry_points!(DP_DeepPot, compute, f32,
    v1: DP_DeepPotComputef, nlist1: DP_DeepPotComputeNListf, v2: DP_DeepPotComputef2,
    nlist2: DP_DeepPotComputeNListf2, v3: DP_DeepPotComputef3, nlist3: DP_DeepPotComputeNListf3);
entry_points!(DP_DeepPotModelDevi, compute_devi, f64,
    v1: DP_DeepPotModelDeviCompute, nlist1: DP_DeepPotModelDeviComputeNList, v2: DP_DeepPotModelDeviCompute2,
    nlist2: DP_DeepPotModelDeviComputeNList2, v3: DP_DeepPotModelDeviCompute3, nlist3: DP_DeepPotModelDeviComputeNList3);
entry_points!(DP_DeepPotModelDevi, compute_devi, f32,
    v1: DP_DeepPotModelDeviComputef, nlist1: DP_DeepPotModelDeviComputeNListf, v2: DP_DeepPotModelDeviComputef2,
    nlist2: DP_DeepPotModelDeviComputeNListf2, v3: DP_DeepPotModelDeviComputef3, nlist3: DP_DeepPotModelDeviComputeNListf3);

macro_rules! mixed_type {
    ($name:ident, $t:ty) => {
        /// `nframes` frames, each with its own atom types (`nframes * natoms` of them).
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            dp: *mut DP_DeepPot,
            nframes: c_int,
            natoms: c_int,
            coord: *const $t,
            atype: *const c_int,
            cell: *const $t,
            fparam: *const $t,
            aparam: *const $t,
            energy: *mut f64,
            force: *mut $t,
            virial: *mut $t,
            atomic_energy: *mut $t,
            atomic_virial: *mut $t,
        ) {
            let req = Request {
                nframes,
                natoms,
                coord,
                atype,
                cell,
                fparam,
                aparam,
                types_per_frame: true,
            };
            let out = Outputs {
                energy,
                force,
                virial,
                atom_energy: atomic_energy,
                atom_virial: atomic_virial,
            };
            compute(dp, req, None, out)
        }
    };
}

mixed_type!(DP_DeepPotComputeMixedType, f64);
mixed_type!(DP_DeepPotComputeMixedTypef, f32);
