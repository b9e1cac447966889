//! The slice of the PJRT C API (`xla/pjrt/c/pjrt_c_api.h`, version 0.x) dpc calls, mirrored
//! field by field. Every args struct starts with its size and an extension pointer; the size
//! given is the header's `*_STRUCT_SIZE` (which can be smaller than `size_of`), so a plugin
//! built against an older header reads only the fields it knows. Function pointers are read
//! from the `PJRT_Api` table by index; the table's own size says which ones the plugin has.

#![allow(non_camel_case_types, dead_code)]

use std::ffi::c_void;
use std::os::raw::c_char;

/// Opaque handles.
pub type Error = c_void;
pub type Client = c_void;
pub type Device = c_void;
pub type Event = c_void;
pub type Buffer = c_void;
pub type LoadedExecutable = c_void;
pub type Executable = c_void;

/// Every function in the table: `PJRT_Error* fn(Args*)`.
pub type ApiFn = unsafe extern "C" fn(*mut c_void) -> *mut Error;

/// Indices into the `PJRT_Api` function table.
pub mod idx {
    pub const ERROR_DESTROY: usize = 0;
    pub const ERROR_MESSAGE: usize = 1;
    pub const PLUGIN_INITIALIZE: usize = 3;
    pub const EVENT_DESTROY: usize = 5;
    pub const EVENT_AWAIT: usize = 8;
    pub const CLIENT_CREATE: usize = 10;
    pub const CLIENT_DESTROY: usize = 11;
    pub const CLIENT_PLATFORM_NAME: usize = 12;
    pub const CLIENT_ADDRESSABLE_DEVICES: usize = 16;
    pub const CLIENT_COMPILE: usize = 20;
    pub const CLIENT_BUFFER_FROM_HOST: usize = 22;
    pub const EXECUTABLE_DESTROY: usize = 40;
    pub const EXECUTABLE_NUM_OUTPUTS: usize = 44;
    pub const LOADED_EXECUTABLE_DESTROY: usize = 50;
    pub const LOADED_EXECUTABLE_GET_EXECUTABLE: usize = 51;
    pub const LOADED_EXECUTABLE_EXECUTE: usize = 55;
    pub const BUFFER_DESTROY: usize = 58;
    pub const BUFFER_DIMENSIONS: usize = 60;
    pub const BUFFER_TO_HOST: usize = 70;
    /// The highest index used: the table must reach it.
    pub const LAST: usize = 70;
}

/// Byte offset of function pointer 0 in `PJRT_Api` (after `struct_size`, the extension
/// pointer and the 24-byte `PJRT_Api_Version`).
pub const API_FNS_OFFSET: usize = 40;

#[repr(C)]
pub struct ApiHeader {
    pub struct_size: usize,
    pub extension_start: *mut c_void,
    pub version_struct_size: usize,
    pub version_extension_start: *mut c_void,
    pub major_version: i32,
    pub minor_version: i32,
}

/// `PJRT_Buffer_Type`.
pub mod buffer_type {
    pub const PRED: i32 = 1;
    pub const S32: i32 = 4;
    pub const S64: i32 = 5;
    pub const F32: i32 = 11;
    pub const F64: i32 = 12;
}

/// `PJRT_HostBufferSemantics::kImmutableOnlyDuringCall`: the data is copied during the call.
pub const IMMUTABLE_ONLY_DURING_CALL: i32 = 0;

/// `PJRT_NamedValue_Type::kInt64`.
pub const NAMED_INT64: i32 = 1;

/// `xla.CompileOptionsProto { executable_build_options { device_ordinal: -1,
/// num_replicas: 1, num_partitions: 1 } }`: an empty proto aborts the CPU plugins.
pub const COMPILE_OPTIONS: [u8; 17] = [
    0x1a, 0x0f, 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x20, 0x01, 0x28,
    0x01,
];

#[repr(C)]
pub struct ErrorDestroyArgs {
    pub struct_size: usize,
    pub ext: *mut c_void,
    pub error: *mut Error,
}
pub const ERROR_DESTROY_SIZE: usize = 24;

#[repr(C)]
pub struct ErrorMessageArgs {
    pub struct_size: usize,
    pub ext: *mut c_void,
    pub error: *const Error,
    pub message: *const c_char,
    pub message_size: usize,
}
pub const ERROR_MESSAGE_SIZE: usize = 40;

#[repr(C)]
pub struct PluginInitializeArgs {
    pub struct_size: usize,
    pub ext: *mut c_void,
}
pub const PLUGIN_INITIALIZE_SIZE: usize = 16;

#[repr(C)]
pub struct EventArgs {
    pub struct_size: usize,
    pub ext: *mut c_void,
    pub event: *mut Event,
}
pub const EVENT_SIZE: usize = 24;

#[repr(C)]
pub struct NamedValue {
    pub struct_size: usize,
    pub ext: *mut c_void,
    pub name: *const c_char,
    pub name_size: usize,
    pub kind: i32,
    pub value: i64,
    pub value_size: usize,
}
pub const NAMED_VALUE_SIZE: usize = 56;

#[repr(C)]
pub struct ClientCreateArgs {
    pub struct_size: usize,
    pub ext: *mut c_void,
    pub create_options: *const NamedValue,
    pub num_options: usize,
    pub kv_get_callback: *mut c_void,
    pub kv_get_user_arg: *mut c_void,
    pub kv_put_callback: *mut c_void,
    pub kv_put_user_arg: *mut c_void,
    pub client: *mut Client,
    pub kv_try_get_callback: *mut c_void,
    pub kv_try_get_user_arg: *mut c_void,
}
pub const CLIENT_CREATE_SIZE: usize = 88;

#[repr(C)]
pub struct ClientArgs {
    pub struct_size: usize,
    pub ext: *mut c_void,
    pub client: *mut Client,
}
pub const CLIENT_DESTROY_SIZE: usize = 24;

/// `PJRT_Client_PlatformName_Args` and `PJRT_Client_AddressableDevices_Args` share this
/// shape: the client, then a pointer and a length filled in.
#[repr(C)]
pub struct ClientQueryArgs {
    pub struct_size: usize,
    pub ext: *mut c_void,
    pub client: *mut Client,
    pub ptr: *const c_void,
    pub len: usize,
}
pub const CLIENT_QUERY_SIZE: usize = 40;

#[repr(C)]
pub struct Program {
    pub struct_size: usize,
    pub ext: *mut c_void,
    pub code: *const c_char,
    pub code_size: usize,
    pub format: *const c_char,
    pub format_size: usize,
}
pub const PROGRAM_SIZE: usize = 48;

#[repr(C)]
pub struct CompileArgs {
    pub struct_size: usize,
    pub ext: *mut c_void,
    pub client: *mut Client,
    pub program: *const Program,
    pub compile_options: *const c_char,
    pub compile_options_size: usize,
    pub executable: *mut LoadedExecutable,
}
pub const COMPILE_SIZE: usize = 56;

#[repr(C)]
pub struct BufferFromHostArgs {
    pub struct_size: usize,
    pub ext: *mut c_void,
    pub client: *mut Client,
    pub data: *const c_void,
    pub kind: i32,
    pub dims: *const i64,
    pub num_dims: usize,
    pub byte_strides: *const i64,
    pub num_byte_strides: usize,
    pub host_buffer_semantics: i32,
    pub device: *mut Device,
    pub memory: *mut c_void,
    pub device_layout: *mut c_void,
    pub done_with_host_buffer: *mut Event,
    pub buffer: *mut Buffer,
}
pub const BUFFER_FROM_HOST_SIZE: usize = 120;

#[repr(C)]
pub struct GetExecutableArgs {
    pub struct_size: usize,
    pub ext: *mut c_void,
    pub loaded_executable: *mut LoadedExecutable,
    pub executable: *mut Executable,
}
pub const GET_EXECUTABLE_SIZE: usize = 32;

#[repr(C)]
pub struct NumOutputsArgs {
    pub struct_size: usize,
    pub ext: *mut c_void,
    pub executable: *mut Executable,
    pub num_outputs: usize,
}
pub const NUM_OUTPUTS_SIZE: usize = 32;

/// `PJRT_Executable_Destroy_Args`, `PJRT_LoadedExecutable_Destroy_Args`,
/// `PJRT_Buffer_Destroy_Args`: one handle.
#[repr(C)]
pub struct HandleArgs {
    pub struct_size: usize,
    pub ext: *mut c_void,
    pub handle: *mut c_void,
}
pub const HANDLE_SIZE: usize = 24;

#[repr(C)]
pub struct ExecuteOptions {
    pub struct_size: usize,
    pub ext: *mut c_void,
    pub send_callbacks: *mut c_void,
    pub recv_callbacks: *mut c_void,
    pub num_send_ops: usize,
    pub num_recv_ops: usize,
    pub launch_id: i32,
    pub non_donatable_input_indices: *const i64,
    pub num_non_donatable_input_indices: usize,
    pub context: *mut c_void,
    pub call_location: *const c_char,
    pub num_tasks: usize,
    pub task_ids: *mut i32,
    pub incarnation_ids: *mut i64,
    pub multi_slice_config: *mut c_void,
    pub use_major_to_minor_data_layout_for_callbacks: bool,
    pub hlo_output_callbacks: *mut c_void,
    pub num_hlo_output_callbacks: usize,
}
pub const EXECUTE_OPTIONS_SIZE: usize = 144;

#[repr(C)]
pub struct ExecuteArgs {
    pub struct_size: usize,
    pub ext: *mut c_void,
    pub executable: *mut LoadedExecutable,
    pub options: *mut ExecuteOptions,
    pub argument_lists: *const *const *mut Buffer,
    pub num_devices: usize,
    pub num_args: usize,
    pub output_lists: *const *mut *mut Buffer,
    pub device_complete_events: *mut *mut Event,
    pub execute_device: *mut Device,
}
pub const EXECUTE_SIZE: usize = 80;

#[repr(C)]
pub struct BufferDimensionsArgs {
    pub struct_size: usize,
    pub ext: *mut c_void,
    pub buffer: *mut Buffer,
    pub dims: *const i64,
    pub num_dims: usize,
}
pub const BUFFER_DIMENSIONS_SIZE: usize = 40;

#[repr(C)]
pub struct ToHostArgs {
    pub struct_size: usize,
    pub ext: *mut c_void,
    pub src: *mut Buffer,
    pub host_layout: *mut c_void,
    pub dst: *mut c_void,
    pub dst_size: usize,
    pub event: *mut Event,
}
pub const TO_HOST_SIZE: usize = 56;

const _: () = {
    // The mirrored layouts (x86-64/aarch64, LP64) against the header's sizes.
    assert!(std::mem::size_of::<ClientCreateArgs>() == CLIENT_CREATE_SIZE);
    assert!(std::mem::size_of::<BufferFromHostArgs>() == BUFFER_FROM_HOST_SIZE);
    assert!(std::mem::size_of::<ExecuteOptions>() == EXECUTE_OPTIONS_SIZE);
    assert!(std::mem::size_of::<ExecuteArgs>() == EXECUTE_SIZE);
    assert!(std::mem::size_of::<NamedValue>() == NAMED_VALUE_SIZE);
    assert!(std::mem::size_of::<CompileArgs>() == COMPILE_SIZE);
    assert!(std::mem::size_of::<ToHostArgs>() == TO_HOST_SIZE);
    assert!(std::mem::size_of::<Program>() == PROGRAM_SIZE);
};

extern "C" {
    pub fn dlopen(filename: *const c_char, flag: i32) -> *mut c_void;
    pub fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    pub fn dlerror() -> *const c_char;
}

pub const RTLD_NOW: i32 = 2;
pub const RTLD_LOCAL: i32 = 0;
