//! `libdeepmd_c`: DeePMD-kit's C API (`c_api.h`, API version 29) on dpc, so MD codes built
//! against DeePMD-kit's C library (LAMMPS, CP2K, ABACUS, ... through `deepmd.hpp`) can link
//! this one instead. Same symbols, same semantics, no framework behind it.
//!
//! Errors never cross the boundary as unwinding: every entry point catches failures (and
//! panics) and records them in the object, where `DP_*CheckOK` reports them, as DeePMD-kit
//! does. Null pointers and inconsistent sizes are errors, not crashes.

#![allow(
    non_snake_case,
    non_camel_case_types,
    clippy::missing_safety_doc,
    clippy::too_many_arguments
)]

mod alloc;
mod compute;
mod nlist;
mod select;

use std::ffi::{c_char, c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use dpc_runtime::{DeepPot, EvalError};

pub use alloc::{DP_DeleteChar, DP_ReadFileToChar, DP_ReadFileToChar2};
pub use compute::*;
pub use nlist::*;
pub use select::{DP_SelectByType, DP_SelectMapInt};

/// A loaded model (also used as `DP_DeepBaseModel`, as DeePMD-kit's `deepmd.hpp` casts it).
pub struct DP_DeepPot {
    pot: Option<DeepPot>,
    error: String,
    /// The MD code's neighbour list as copied at the last `ago == 0`.
    rows: Option<nlist::Rows>,
}

/// Several models evaluated together (model deviation); also `DP_DeepBaseModelDevi`.
pub struct DP_DeepPotModelDevi {
    pots: Vec<DeepPot>,
    error: String,
    rows: Option<nlist::Rows>,
}

pub type DP_DeepBaseModel = DP_DeepPot;
pub type DP_DeepBaseModelDevi = DP_DeepPotModelDevi;

/// Run `f`, turning an error or a panic into the object's message.
fn guarded(error: &mut String, f: impl FnOnce() -> Result<(), String>) {
    error.clear();
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => *error = e,
        Err(_) => *error = "internal error in dpc (a bug; please report it)".into(),
    }
}

unsafe fn c_str<'a>(p: *const c_char, what: &str) -> Result<&'a str, String> {
    if p.is_null() {
        return Err(format!("{what} is a null pointer"));
    }
    CStr::from_ptr(p)
        .to_str()
        .map_err(|_| format!("{what} is not UTF-8"))
}

fn load(path: &str, content: Option<&[u8]>) -> Result<DeepPot, String> {
    let p = Path::new(path);
    let tree = match content {
        Some(bytes) if !bytes.is_empty() => {
            let format = dpc_formats::Format::from_path(p).map_err(|e| e.to_string())?;
            dpc_formats::read_model_bytes(format, bytes.to_vec(), p)
        }
        _ => dpc_formats::read_model(p),
    }
    .map_err(|e| e.to_string())?;
    // DPC_COMPRESS / DPC_PRECISION / DPC_PJRT_PLUGIN: the C API has no options argument.
    let opts = dpc_runtime::build_options_from_env()?;
    let pot = DeepPot::from_tree_opts(tree, opts).map_err(|e: EvalError| e.to_string())?;
    dpc_runtime::device_from_env(pot)
}

fn new_pot(f: impl FnOnce() -> Result<DeepPot, String>) -> *mut DP_DeepPot {
    let mut dp = DP_DeepPot {
        pot: None,
        error: String::new(),
        rows: None,
    };
    let mut pot = None;
    guarded(&mut dp.error, || {
        pot = Some(f()?);
        Ok(())
    });
    dp.pot = pot;
    Box::into_raw(Box::new(dp))
}

/// Load a model file (any format dpc reads).
#[no_mangle]
pub unsafe extern "C" fn DP_NewDeepPot(c_model: *const c_char) -> *mut DP_DeepPot {
    new_pot(|| load(c_str(c_model, "the model path")?, None))
}

/// Load a model; `c_file_content` (if not empty) holds the file's bytes, read by the caller.
#[no_mangle]
pub unsafe extern "C" fn DP_NewDeepPotWithParam(
    c_model: *const c_char,
    _gpu_rank: c_int,
    c_file_content: *const c_char,
) -> *mut DP_DeepPot {
    new_pot(|| {
        let content = if c_file_content.is_null() {
            None
        } else {
            Some(CStr::from_ptr(c_file_content).to_bytes())
        };
        load(c_str(c_model, "the model path")?, content)
    })
}

/// Load a model; `c_file_content` of `size_file_content` bytes, if positive, holds the file.
#[no_mangle]
pub unsafe extern "C" fn DP_NewDeepPotWithParam2(
    c_model: *const c_char,
    _gpu_rank: c_int,
    c_file_content: *const c_char,
    size_file_content: c_int,
) -> *mut DP_DeepPot {
    new_pot(|| {
        let content = (!c_file_content.is_null() && size_file_content > 0).then(|| {
            std::slice::from_raw_parts(c_file_content as *const u8, size_file_content as usize)
        });
        load(c_str(c_model, "the model path")?, content)
    })
}

#[no_mangle]
pub unsafe extern "C" fn DP_DeleteDeepPot(dp: *mut DP_DeepPot) {
    if !dp.is_null() {
        drop(Box::from_raw(dp));
    }
}

#[no_mangle]
pub unsafe extern "C" fn DP_DeleteDeepBaseModel(dp: *mut DP_DeepBaseModel) {
    DP_DeleteDeepPot(dp)
}

/// The last error of `dp` ("" when fine); free it with `DP_DeleteChar`.
#[no_mangle]
pub unsafe extern "C" fn DP_DeepPotCheckOK(dp: *mut DP_DeepPot) -> *const c_char {
    match dp.as_ref() {
        None => alloc::c_string("DP_DeepPot is a null pointer"),
        Some(d) => alloc::c_string(&d.error),
    }
}

#[no_mangle]
pub unsafe extern "C" fn DP_DeepBaseModelCheckOK(dp: *mut DP_DeepBaseModel) -> *const c_char {
    DP_DeepPotCheckOK(dp)
}

/// Models for deviation statistics, all evaluated on the same input.
#[no_mangle]
pub unsafe extern "C" fn DP_NewDeepPotModelDevi(
    c_models: *const *const c_char,
    n_models: c_int,
) -> *mut DP_DeepPotModelDevi {
    DP_NewDeepPotModelDeviWithParam(c_models, n_models, 0, std::ptr::null(), 0, std::ptr::null())
}

#[no_mangle]
pub unsafe extern "C" fn DP_NewDeepPotModelDeviWithParam(
    c_models: *const *const c_char,
    n_models: c_int,
    _gpu_rank: c_int,
    c_file_contents: *const *const c_char,
    n_file_contents: c_int,
    size_file_contents: *const c_int,
) -> *mut DP_DeepPotModelDevi {
    let mut dp = DP_DeepPotModelDevi {
        pots: Vec::new(),
        error: String::new(),
        rows: None,
    };
    let mut pots = Vec::new();
    guarded(&mut dp.error, || {
        if c_models.is_null() || n_models <= 0 {
            return Err("no models given".into());
        }
        for i in 0..n_models as usize {
            let path = c_str(*c_models.add(i), "a model path")?;
            let content = if !c_file_contents.is_null()
                && !size_file_contents.is_null()
                && (i as c_int) < n_file_contents
            {
                let size = *size_file_contents.add(i);
                let ptr = *c_file_contents.add(i);
                (!ptr.is_null() && size > 0)
                    .then(|| std::slice::from_raw_parts(ptr as *const u8, size as usize))
            } else {
                None
            };
            pots.push(load(path, content).map_err(|e| format!("model {i} ({path}): {e}"))?);
        }
        let first = &pots[0];
        if pots.iter().any(|p| {
            p.model().rcut() != first.model().rcut() || p.model().type_map != first.model().type_map
        }) {
            return Err("the models differ in cutoff or type map".into());
        }
        Ok(())
    });
    dp.pots = pots;
    Box::into_raw(Box::new(dp))
}

#[no_mangle]
pub unsafe extern "C" fn DP_DeleteDeepPotModelDevi(dp: *mut DP_DeepPotModelDevi) {
    if !dp.is_null() {
        drop(Box::from_raw(dp));
    }
}

#[no_mangle]
pub unsafe extern "C" fn DP_DeleteDeepBaseModelDevi(dp: *mut DP_DeepBaseModelDevi) {
    DP_DeleteDeepPotModelDevi(dp)
}

#[no_mangle]
pub unsafe extern "C" fn DP_DeepPotModelDeviCheckOK(dp: *mut DP_DeepPotModelDevi) -> *const c_char {
    match dp.as_ref() {
        None => alloc::c_string("DP_DeepPotModelDevi is a null pointer"),
        Some(d) => alloc::c_string(&d.error),
    }
}

#[no_mangle]
pub unsafe extern "C" fn DP_DeepBaseModelDeviCheckOK(
    dp: *mut DP_DeepBaseModelDevi,
) -> *const c_char {
    DP_DeepPotModelDeviCheckOK(dp)
}

/// Print what this library is (the analogue of DeePMD-kit's build summary).
#[no_mangle]
pub unsafe extern "C" fn DP_PrintSummary(c_pre: *const c_char) {
    let pre = if c_pre.is_null() {
        ""
    } else {
        CStr::from_ptr(c_pre).to_str().unwrap_or("")
    };
    println!(
        "{pre}dpc libdeepmd_c {} (DeePMD-kit C API version 29)",
        env!("CARGO_PKG_VERSION")
    );
    println!(
        "{pre}backend: dpc CPU runtime; formats: .dp .yaml .pth .pb .pbtxt .hlo .xlo .pte .pt2"
    );
}

macro_rules! getter {
    ($name:ident, $base:ident, $ty:ty, $default:expr, |$p:ident| $body:expr) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(dp: *mut DP_DeepPot) -> $ty {
            match dp.as_ref().and_then(|d| d.pot.as_ref()) {
                Some($p) => $body,
                None => $default,
            }
        }
        #[no_mangle]
        pub unsafe extern "C" fn $base(dp: *mut DP_DeepBaseModel) -> $ty {
            $name(dp)
        }
    };
}

getter!(
    DP_DeepPotGetCutoff,
    DP_DeepBaseModelGetCutoff,
    f64,
    0.0,
    |p| p.model().rcut()
);
getter!(
    DP_DeepPotGetNumbTypes,
    DP_DeepBaseModelGetNumbTypes,
    c_int,
    0,
    |p| p.model().ntypes() as c_int
);
getter!(
    DP_DeepPotGetNumbTypesSpin,
    DP_DeepBaseModelGetNumbTypesSpin,
    c_int,
    0,
    |_p| 0
);
getter!(
    DP_DeepPotGetDimFParam,
    DP_DeepBaseModelGetDimFParam,
    c_int,
    0,
    |p| p.model().dim_fparam() as c_int
);
getter!(
    DP_DeepPotGetDimAParam,
    DP_DeepBaseModelGetDimAParam,
    c_int,
    0,
    |p| p.model().dim_aparam() as c_int
);
getter!(
    DP_DeepPotIsAParamNAll,
    DP_DeepBaseModelIsAParamNAll,
    bool,
    false,
    |_p| false
);
getter!(
    DP_DeepPotHasDefaultFParam,
    DP_DeepBaseModelHasDefaultFParam,
    bool,
    false,
    |p| p.model().fitting.default_fparam.is_some()
);

/// Charge/spin conditioning width (DPA-3/4 only): 0 for every model dpc evaluates.
#[no_mangle]
pub unsafe extern "C" fn DP_DeepPotGetDimChgSpin(_dp: *mut DP_DeepPot) -> c_int {
    0
}

/// The type map, space separated; free it with `DP_DeleteChar`.
#[no_mangle]
pub unsafe extern "C" fn DP_DeepPotGetTypeMap(dp: *mut DP_DeepPot) -> *const c_char {
    match dp.as_ref().and_then(|d| d.pot.as_ref()) {
        Some(p) => alloc::c_string(&p.model().type_map.join(" ")),
        None => alloc::c_string(""),
    }
}

#[no_mangle]
pub unsafe extern "C" fn DP_DeepBaseModelGetTypeMap(dp: *mut DP_DeepBaseModel) -> *const c_char {
    DP_DeepPotGetTypeMap(dp)
}

/// How far beyond the local atoms an MD code's ghost atoms must reach when it cannot give
/// their owners (several ranks): the cutoff times the message-passing layers (dpc
/// extension; 0 for a null or failed handle).
fn ghost_cutoff(p: &DeepPot) -> f64 {
    p.model().rcut() * p.model().descriptor.message_passing_layers().max(1) as f64
}

/// dpc extension: see `ghost_cutoff`.
#[no_mangle]
pub unsafe extern "C" fn dpc_DeepPotGetGhostCutoff(dp: *mut DP_DeepPot) -> f64 {
    match dp.as_ref().and_then(|d| d.pot.as_ref()) {
        Some(p) => ghost_cutoff(p),
        None => 0.0,
    }
}

/// dpc extension: the largest ghost cutoff of the models.
#[no_mangle]
pub unsafe extern "C" fn dpc_DeepPotModelDeviGetGhostCutoff(dp: *mut DP_DeepPotModelDevi) -> f64 {
    match dp.as_ref() {
        Some(d) => d.pots.iter().map(ghost_cutoff).fold(0.0, f64::max),
        None => 0.0,
    }
}

macro_rules! devi_getter {
    ($name:ident, $base:ident, $ty:ty, $default:expr, |$p:ident| $body:expr) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(dp: *mut DP_DeepPotModelDevi) -> $ty {
            match dp.as_ref().and_then(|d| d.pots.first()) {
                Some($p) => $body,
                None => $default,
            }
        }
        #[no_mangle]
        pub unsafe extern "C" fn $base(dp: *mut DP_DeepBaseModelDevi) -> $ty {
            $name(dp)
        }
    };
}

devi_getter!(
    DP_DeepPotModelDeviGetCutoff,
    DP_DeepBaseModelDeviGetCutoff,
    f64,
    0.0,
    |p| p.model().rcut()
);
devi_getter!(
    DP_DeepPotModelDeviGetNumbTypes,
    DP_DeepBaseModelDeviGetNumbTypes,
    c_int,
    0,
    |p| p.model().ntypes() as c_int
);
devi_getter!(
    DP_DeepPotModelDeviGetNumbTypesSpin,
    DP_DeepBaseModelDeviGetNumbTypesSpin,
    c_int,
    0,
    |_p| 0
);
devi_getter!(
    DP_DeepPotModelDeviGetDimFParam,
    DP_DeepBaseModelDeviGetDimFParam,
    c_int,
    0,
    |p| p.model().dim_fparam() as c_int
);
devi_getter!(
    DP_DeepPotModelDeviGetDimAParam,
    DP_DeepBaseModelDeviGetDimAParam,
    c_int,
    0,
    |p| p.model().dim_aparam() as c_int
);
devi_getter!(
    DP_DeepPotModelDeviIsAParamNAll,
    DP_DeepBaseModelDeviIsAParamNAll,
    bool,
    false,
    |_p| false
);
devi_getter!(
    DP_DeepPotModelDeviHasDefaultFParam,
    DP_DeepBaseModelDeviHasDefaultFParam,
    bool,
    false,
    |p| p.model().fitting.default_fparam.is_some()
);

#[no_mangle]
pub unsafe extern "C" fn DP_DeepPotModelDeviGetDimChgSpin(_dp: *mut DP_DeepPotModelDevi) -> c_int {
    0
}

/// Device-edge inference (GPU graph inputs, as GPUMD uses): not offered by dpc's library,
/// so callers take the neighbour-list path.
#[no_mangle]
pub unsafe extern "C" fn DP_DeepPotSupportsDeviceEdgeInference(_dp: *mut DP_DeepPot) -> bool {
    false
}

#[no_mangle]
pub unsafe extern "C" fn DP_DeepPotUsesCanonicalGraphInference(_dp: *mut DP_DeepPot) -> bool {
    false
}

#[no_mangle]
pub unsafe extern "C" fn DP_DeepPotUsesFP32EdgeVectors(_dp: *mut DP_DeepPot) -> bool {
    false
}

fn refuse_device_edges(dp: *mut DP_DeepPot) {
    // SAFETY: a handle from DP_NewDeepPot* or null.
    if let Some(d) = unsafe { dp.as_mut() } {
        d.error = "device-edge inference is not available in dpc's libdeepmd_c \
                   (DP_DeepPotSupportsDeviceEdgeInference is false); use DP_DeepPotComputeNList2"
            .into();
    }
}

#[no_mangle]
pub unsafe extern "C" fn DP_DeepPotComputeEdgesGPU(
    dp: *mut DP_DeepPot,
    _d_atom_energy: *mut f64,
    _d_force: *mut f64,
    _d_atom_virial: *mut f64,
    _d_coord: *const f64,
    _d_atype: *const c_int,
    _d_edge_index: *const c_int,
    _d_edge_vec: *const f64,
    _nloc: c_int,
    _nedge: c_int,
    _fparam: *const f64,
    _fparam_size: i64,
    _aparam: *const f64,
    _aparam_size: i64,
    _nall_nodes: c_int,
    _comm_nlist: *const DP_Nlist,
) {
    refuse_device_edges(dp)
}

#[no_mangle]
pub unsafe extern "C" fn DP_DeepPotComputeEdgesGPUFloat32(
    dp: *mut DP_DeepPot,
    _d_atom_energy: *mut f64,
    _d_force: *mut f64,
    _d_atom_virial: *mut f64,
    _d_coord: *const f64,
    _d_atype: *const c_int,
    _d_edge_index: *const c_int,
    _d_edge_vec: *const f32,
    _nloc: c_int,
    _nedge: c_int,
    _fparam: *const f64,
    _fparam_size: i64,
    _aparam: *const f64,
    _aparam_size: i64,
    _nall_nodes: c_int,
    _comm_nlist: *const DP_Nlist,
) {
    refuse_device_edges(dp)
}

#[no_mangle]
pub unsafe extern "C" fn DP_DeepPotComputeCanonicalGraphGPU(
    dp: *mut DP_DeepPot,
    _d_atom_energy: *mut f64,
    _d_force: *mut f64,
    _d_atom_virial: *mut f64,
    _d_atype: *const i64,
    _d_source: *const i64,
    _d_edge_vec: *const f32,
    _d_destination_row_ptr: *const i64,
    _d_source_row_ptr: *const i64,
    _d_source_order: *const i64,
    _nloc: c_int,
    _nall_nodes: c_int,
    _edge_storage: i64,
) {
    refuse_device_edges(dp)
}
