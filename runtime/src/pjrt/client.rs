//! A PJRT plugin loaded at run time: one client, modules compiled from StableHLO text, and
//! host arrays in and out. Every PJRT error becomes a `PjrtError` with the plugin's message.

use std::ffi::{c_void, CStr, CString};
use std::fmt;
use std::path::Path;
use std::ptr::null_mut;

use super::ffi::{self, idx, ApiFn};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PjrtError(pub String);

impl fmt::Display for PjrtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PJRT: {}", self.0)
    }
}

impl std::error::Error for PjrtError {}

type R<T> = Result<T, PjrtError>;

/// Element types of the arrays passed in and out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    F64,
    I32,
    I64,
}

impl Elem {
    fn code(self) -> i32 {
        match self {
            Elem::F64 => ffi::buffer_type::F64,
            Elem::I32 => ffi::buffer_type::S32,
            Elem::I64 => ffi::buffer_type::S64,
        }
    }

    fn size(self) -> usize {
        match self {
            Elem::I32 => 4,
            Elem::F64 | Elem::I64 => 8,
        }
    }
}

/// A dense row-major host array: element type, dimensions and little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct HostArray {
    pub elem: Elem,
    pub dims: Vec<i64>,
    pub bytes: Vec<u8>,
}

impl HostArray {
    pub fn f64(dims: Vec<i64>, v: &[f64]) -> HostArray {
        HostArray {
            elem: Elem::F64,
            dims,
            bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    pub fn i32(dims: Vec<i64>, v: &[i32]) -> HostArray {
        HostArray {
            elem: Elem::I32,
            dims,
            bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    pub fn i64(dims: Vec<i64>, v: &[i64]) -> HostArray {
        HostArray {
            elem: Elem::I64,
            dims,
            bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    /// The elements as f64 (the array must be f64).
    pub fn to_f64(&self) -> Vec<f64> {
        self.bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
}

/// A loaded plugin with its client. The handles are thread-safe by PJRT's contract.
pub struct Plugin {
    api: *const u8,
    client: *mut ffi::Client,
    device: *mut ffi::Device,
    pub platform: String,
    pub api_version: (i32, i32),
}

unsafe impl Send for Plugin {}
unsafe impl Sync for Plugin {}

/// A compiled module on the plugin's device.
pub struct Compiled {
    exe: *mut ffi::LoadedExecutable,
    num_outputs: usize,
}

unsafe impl Send for Compiled {}
unsafe impl Sync for Compiled {}

impl Plugin {
    /// `dlopen` the plugin (never downloaded: the path comes from the user), initialise it
    /// and create a client. `cpu`: ask for one CPU device (the CPU plugins default to
    /// several).
    pub fn load(path: &Path, cpu: bool) -> R<Plugin> {
        let cpath = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| PjrtError("plugin path contains a NUL byte".into()))?;
        // SAFETY: dlopen/dlsym with valid C strings; the handle is kept for the process.
        let api = unsafe {
            let h = ffi::dlopen(cpath.as_ptr(), ffi::RTLD_NOW | ffi::RTLD_LOCAL);
            if h.is_null() {
                let e = ffi::dlerror();
                let why = if e.is_null() {
                    "unknown error".to_string()
                } else {
                    CStr::from_ptr(e).to_string_lossy().into_owned()
                };
                return Err(PjrtError(format!(
                    "cannot load the plugin {}: {why}",
                    path.display()
                )));
            }
            let sym = ffi::dlsym(h, c"GetPjrtApi".as_ptr());
            if sym.is_null() {
                return Err(PjrtError(format!(
                    "{} is not a PJRT plugin (no GetPjrtApi symbol)",
                    path.display()
                )));
            }
            let get: unsafe extern "C" fn() -> *const u8 = std::mem::transmute(sym);
            get()
        };
        if api.is_null() {
            return Err(PjrtError("GetPjrtApi returned NULL".into()));
        }
        // SAFETY: the table starts with the header struct.
        let header = unsafe { &*(api as *const ffi::ApiHeader) };
        let need = ffi::API_FNS_OFFSET + 8 * (idx::LAST + 1);
        if header.major_version != 0 || header.struct_size < need {
            return Err(PjrtError(format!(
                "unsupported PJRT C API {}.{} (table of {} bytes; dpc needs version 0.x with at least {need})",
                header.major_version, header.minor_version, header.struct_size
            )));
        }
        let mut p = Plugin {
            api,
            client: null_mut(),
            device: null_mut(),
            platform: String::new(),
            api_version: (header.major_version, header.minor_version),
        };
        let mut init = ffi::PluginInitializeArgs {
            struct_size: ffi::PLUGIN_INITIALIZE_SIZE,
            ext: null_mut(),
        };
        p.call(idx::PLUGIN_INITIALIZE, &mut init)?;
        let name = c"cpu_device_count";
        let opt = ffi::NamedValue {
            struct_size: ffi::NAMED_VALUE_SIZE,
            ext: null_mut(),
            name: name.as_ptr(),
            name_size: name.to_bytes().len(),
            kind: ffi::NAMED_INT64,
            value: 1,
            value_size: 1,
        };
        let mut create = ffi::ClientCreateArgs {
            struct_size: ffi::CLIENT_CREATE_SIZE,
            ext: null_mut(),
            create_options: if cpu { &opt } else { std::ptr::null() },
            num_options: usize::from(cpu),
            kv_get_callback: null_mut(),
            kv_get_user_arg: null_mut(),
            kv_put_callback: null_mut(),
            kv_put_user_arg: null_mut(),
            client: null_mut(),
            kv_try_get_callback: null_mut(),
            kv_try_get_user_arg: null_mut(),
        };
        p.call(idx::CLIENT_CREATE, &mut create)?;
        p.client = create.client;
        let mut q = ffi::ClientQueryArgs {
            struct_size: ffi::CLIENT_QUERY_SIZE,
            ext: null_mut(),
            client: p.client,
            ptr: std::ptr::null(),
            len: 0,
        };
        p.call(idx::CLIENT_PLATFORM_NAME, &mut q)?;
        // SAFETY: the plugin returned a string of `len` bytes that lives with the client.
        p.platform = unsafe {
            String::from_utf8_lossy(std::slice::from_raw_parts(q.ptr as *const u8, q.len))
                .into_owned()
        };
        q.ptr = std::ptr::null();
        q.len = 0;
        p.call(idx::CLIENT_ADDRESSABLE_DEVICES, &mut q)?;
        if q.len == 0 {
            return Err(PjrtError(format!(
                "the {} plugin has no device here",
                p.platform
            )));
        }
        // SAFETY: an array of `len` device pointers.
        p.device = unsafe { *(q.ptr as *const *mut ffi::Device) };
        Ok(p)
    }

    fn func(&self, i: usize) -> ApiFn {
        // SAFETY: `load` checked the table reaches index `idx::LAST`.
        unsafe {
            let slot = self.api.add(ffi::API_FNS_OFFSET + 8 * i) as *const Option<ApiFn>;
            (*slot).expect("PJRT function missing from the table")
        }
    }

    /// Call table entry `i` with `args`; a returned error becomes `Err` with its message.
    fn call<T>(&self, i: usize, args: &mut T) -> R<()> {
        // SAFETY: `args` is the repr(C) struct entry `i` takes.
        let err = unsafe { (self.func(i))(args as *mut T as *mut c_void) };
        if err.is_null() {
            return Ok(());
        }
        let mut m = ffi::ErrorMessageArgs {
            struct_size: ffi::ERROR_MESSAGE_SIZE,
            ext: null_mut(),
            error: err,
            message: std::ptr::null(),
            message_size: 0,
        };
        // SAFETY: message and destroy on the error just returned.
        let msg = unsafe {
            (self.func(idx::ERROR_MESSAGE))(&mut m as *mut _ as *mut c_void);
            let s = if m.message.is_null() {
                "unknown error".to_string()
            } else {
                String::from_utf8_lossy(std::slice::from_raw_parts(
                    m.message as *const u8,
                    m.message_size,
                ))
                .into_owned()
            };
            let mut d = ffi::ErrorDestroyArgs {
                struct_size: ffi::ERROR_DESTROY_SIZE,
                ext: null_mut(),
                error: err,
            };
            (self.func(idx::ERROR_DESTROY))(&mut d as *mut _ as *mut c_void);
            s
        };
        Err(PjrtError(msg))
    }

    fn await_event(&self, ev: *mut ffi::Event) -> R<()> {
        if ev.is_null() {
            return Ok(());
        }
        let mut a = ffi::EventArgs {
            struct_size: ffi::EVENT_SIZE,
            ext: null_mut(),
            event: ev,
        };
        let r = self.call(idx::EVENT_AWAIT, &mut a);
        let mut d = ffi::EventArgs {
            struct_size: ffi::EVENT_SIZE,
            ext: null_mut(),
            event: ev,
        };
        let _ = self.call(idx::EVENT_DESTROY, &mut d);
        r
    }

    fn destroy(&self, i: usize, handle: *mut c_void) {
        if handle.is_null() {
            return;
        }
        let mut a = ffi::HandleArgs {
            struct_size: ffi::HANDLE_SIZE,
            ext: null_mut(),
            handle,
        };
        let _ = self.call(i, &mut a);
    }

    /// Compile a StableHLO module given as MLIR text (static shapes).
    pub fn compile(&self, mlir: &str) -> R<Compiled> {
        let fmt = b"mlir";
        let program = ffi::Program {
            struct_size: ffi::PROGRAM_SIZE,
            ext: null_mut(),
            code: mlir.as_ptr() as *const _,
            code_size: mlir.len(),
            format: fmt.as_ptr() as *const _,
            format_size: fmt.len(),
        };
        let mut c = ffi::CompileArgs {
            struct_size: ffi::COMPILE_SIZE,
            ext: null_mut(),
            client: self.client,
            program: &program,
            compile_options: ffi::COMPILE_OPTIONS.as_ptr() as *const _,
            compile_options_size: ffi::COMPILE_OPTIONS.len(),
            executable: null_mut(),
        };
        self.call(idx::CLIENT_COMPILE, &mut c)?;
        let mut g = ffi::GetExecutableArgs {
            struct_size: ffi::GET_EXECUTABLE_SIZE,
            ext: null_mut(),
            loaded_executable: c.executable,
            executable: null_mut(),
        };
        self.call(idx::LOADED_EXECUTABLE_GET_EXECUTABLE, &mut g)?;
        let mut n = ffi::NumOutputsArgs {
            struct_size: ffi::NUM_OUTPUTS_SIZE,
            ext: null_mut(),
            executable: g.executable,
            num_outputs: 0,
        };
        let r = self.call(idx::EXECUTABLE_NUM_OUTPUTS, &mut n);
        self.destroy(idx::EXECUTABLE_DESTROY, g.executable);
        r?;
        Ok(Compiled {
            exe: c.executable,
            num_outputs: n.num_outputs,
        })
    }

    /// Run `exe` on `args`; returns every output as a host array of `out_elems[i]`.
    pub fn execute(
        &self,
        exe: &Compiled,
        args: &[HostArray],
        out_elems: &[Elem],
    ) -> R<Vec<HostArray>> {
        if out_elems.len() != exe.num_outputs {
            return Err(PjrtError(format!(
                "the module has {} outputs, {} expected",
                exe.num_outputs,
                out_elems.len()
            )));
        }
        let mut inputs: Vec<*mut ffi::Buffer> = Vec::with_capacity(args.len());
        let result = self.execute_inner(exe, args, out_elems, &mut inputs);
        for b in inputs {
            self.destroy(idx::BUFFER_DESTROY, b);
        }
        result
    }

    fn execute_inner(
        &self,
        exe: &Compiled,
        args: &[HostArray],
        out_elems: &[Elem],
        inputs: &mut Vec<*mut ffi::Buffer>,
    ) -> R<Vec<HostArray>> {
        for a in args {
            let n: i64 = a.dims.iter().product();
            if a.bytes.len() != n as usize * a.elem.size() {
                return Err(PjrtError("host array size does not match its shape".into()));
            }
            let mut b = ffi::BufferFromHostArgs {
                struct_size: ffi::BUFFER_FROM_HOST_SIZE,
                ext: null_mut(),
                client: self.client,
                data: a.bytes.as_ptr() as *const c_void,
                kind: a.elem.code(),
                dims: a.dims.as_ptr(),
                num_dims: a.dims.len(),
                byte_strides: std::ptr::null(),
                num_byte_strides: 0,
                host_buffer_semantics: ffi::IMMUTABLE_ONLY_DURING_CALL,
                device: self.device,
                memory: null_mut(),
                device_layout: null_mut(),
                done_with_host_buffer: null_mut(),
                buffer: null_mut(),
            };
            self.call(idx::CLIENT_BUFFER_FROM_HOST, &mut b)?;
            inputs.push(b.buffer);
            self.await_event(b.done_with_host_buffer)?;
        }
        let mut opts = ffi::ExecuteOptions {
            struct_size: ffi::EXECUTE_OPTIONS_SIZE,
            ext: null_mut(),
            send_callbacks: null_mut(),
            recv_callbacks: null_mut(),
            num_send_ops: 0,
            num_recv_ops: 0,
            launch_id: 0,
            non_donatable_input_indices: std::ptr::null(),
            num_non_donatable_input_indices: 0,
            context: null_mut(),
            call_location: std::ptr::null(),
            num_tasks: 0,
            task_ids: null_mut(),
            incarnation_ids: null_mut(),
            multi_slice_config: null_mut(),
            use_major_to_minor_data_layout_for_callbacks: false,
            hlo_output_callbacks: null_mut(),
            num_hlo_output_callbacks: 0,
        };
        let arg_list: *const *mut ffi::Buffer = inputs.as_ptr();
        let mut outs: Vec<*mut ffi::Buffer> = vec![null_mut(); exe.num_outputs];
        let out_list: *mut *mut ffi::Buffer = outs.as_mut_ptr();
        let mut done: *mut ffi::Event = null_mut();
        let mut e = ffi::ExecuteArgs {
            struct_size: ffi::EXECUTE_SIZE,
            ext: null_mut(),
            executable: exe.exe,
            options: &mut opts,
            argument_lists: &arg_list,
            num_devices: 1,
            num_args: inputs.len(),
            output_lists: &out_list,
            device_complete_events: &mut done,
            execute_device: null_mut(),
        };
        let run = self.call(idx::LOADED_EXECUTABLE_EXECUTE, &mut e);
        let run = run.and_then(|_| self.await_event(done));
        let mut results = Vec::with_capacity(outs.len());
        let mut failure = run.err();
        for (&b, &elem) in outs.iter().zip(out_elems) {
            if failure.is_none() {
                match self.to_host(b, elem) {
                    Ok(h) => results.push(h),
                    Err(err) => failure = Some(err),
                }
            }
            self.destroy(idx::BUFFER_DESTROY, b);
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(results),
        }
    }

    fn to_host(&self, b: *mut ffi::Buffer, elem: Elem) -> R<HostArray> {
        let mut d = ffi::BufferDimensionsArgs {
            struct_size: ffi::BUFFER_DIMENSIONS_SIZE,
            ext: null_mut(),
            buffer: b,
            dims: std::ptr::null(),
            num_dims: 0,
        };
        self.call(idx::BUFFER_DIMENSIONS, &mut d)?;
        // SAFETY: `num_dims` dims owned by the buffer.
        let dims: Vec<i64> = if d.num_dims == 0 {
            vec![]
        } else {
            unsafe { std::slice::from_raw_parts(d.dims, d.num_dims).to_vec() }
        };
        let n: i64 = dims.iter().product();
        let mut bytes = vec![0u8; n as usize * elem.size()];
        let mut t = ffi::ToHostArgs {
            struct_size: ffi::TO_HOST_SIZE,
            ext: null_mut(),
            src: b,
            host_layout: null_mut(),
            dst: bytes.as_mut_ptr() as *mut c_void,
            dst_size: bytes.len(),
            event: null_mut(),
        };
        self.call(idx::BUFFER_TO_HOST, &mut t)?;
        self.await_event(t.event)?;
        Ok(HostArray { elem, dims, bytes })
    }

    /// Release a compiled module.
    pub fn release(&self, c: Compiled) {
        self.destroy(idx::LOADED_EXECUTABLE_DESTROY, c.exe);
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        if !self.client.is_null() {
            let mut a = ffi::ClientArgs {
                struct_size: ffi::CLIENT_DESTROY_SIZE,
                ext: null_mut(),
                client: self.client,
            };
            let _ = self.call(idx::CLIENT_DESTROY, &mut a);
        }
    }
}
