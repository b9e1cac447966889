//! Strings handed to the caller. `DP_DeleteChar` gets only the pointer back, and file
//! contents may hold NUL bytes, so each buffer carries its length in a header before it.

use std::ffi::{c_char, c_int};

use crate::c_str;

const HEADER: usize = std::mem::size_of::<usize>();

/// A heap copy of `bytes` plus a terminating NUL, freed by `DP_DeleteChar`.
pub(crate) fn c_bytes(bytes: &[u8]) -> *const c_char {
    let mut buf = Vec::with_capacity(HEADER + bytes.len() + 1);
    buf.extend_from_slice(&bytes.len().to_ne_bytes());
    buf.extend_from_slice(bytes);
    buf.push(0);
    let boxed = buf.into_boxed_slice();
    let base = Box::into_raw(boxed) as *mut u8;
    // SAFETY: the allocation holds HEADER + len + 1 bytes.
    unsafe { base.add(HEADER) as *const c_char }
}

/// A message for the caller, as DeePMD-kit gives them: trailing whitespace removed.
pub(crate) fn c_string(s: &str) -> *const c_char {
    c_bytes(s.trim_end().as_bytes())
}

/// Free a string returned by this library (`CheckOK`, `GetTypeMap`, `ReadFileToChar*`).
#[no_mangle]
pub unsafe extern "C" fn DP_DeleteChar(c_str: *const c_char) {
    if c_str.is_null() {
        return;
    }
    let base = (c_str as *mut u8).sub(HEADER);
    let mut len = [0u8; HEADER];
    std::ptr::copy_nonoverlapping(base, len.as_mut_ptr(), HEADER);
    let total = HEADER + usize::from_ne_bytes(len) + 1;
    drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
        base, total,
    )));
}

fn read_file(path: *const c_char) -> Result<Vec<u8>, String> {
    // SAFETY: the caller passes a NUL-terminated path or null, which c_str refuses.
    let path = unsafe { c_str(path, "the file path") }?;
    std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))
}

/// The bytes of a file ("" if it cannot be read); free with `DP_DeleteChar`.
#[no_mangle]
pub unsafe extern "C" fn DP_ReadFileToChar(c_model: *const c_char) -> *const c_char {
    match std::panic::catch_unwind(|| read_file(c_model)) {
        Ok(Ok(bytes)) => c_bytes(&bytes),
        _ => c_bytes(b""),
    }
}

/// The bytes of a file, their count in `size`; on failure the message, with `size` set to
/// minus its length. Free with `DP_DeleteChar`.
#[no_mangle]
pub unsafe extern "C" fn DP_ReadFileToChar2(
    c_model: *const c_char,
    size: *mut c_int,
) -> *const c_char {
    let result = std::panic::catch_unwind(|| read_file(c_model))
        .unwrap_or_else(|_| Err("internal error in dpc while reading the file".into()))
        .and_then(|bytes| {
            if bytes.len() > c_int::MAX as usize {
                Err("File is too large to be read into a char buffer via this API".into())
            } else {
                Ok(bytes)
            }
        });
    let (text, n) = match result {
        Ok(bytes) => {
            let n = bytes.len() as c_int;
            (c_bytes(&bytes), n)
        }
        Err(msg) => {
            let msg = msg.trim_end().to_string();
            (c_bytes(msg.as_bytes()), -(msg.len() as c_int))
        }
    };
    if !size.is_null() {
        *size = n;
    }
    text
}
