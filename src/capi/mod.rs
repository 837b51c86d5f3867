//! libcriu.so.2: CRIU's C API, function for function, over the same RPC protocol.
//!
//! - `opts`: `criu_opts` and its setters (the plain API on a process-wide copy, `criu_local_*`
//!   on the caller's).
//! - `ops`: the operations' entry points; `client`: what they do and their return codes;
//!   `transport`: how a server is reached (embedded helper by default, `criu swrk`, a service
//!   socket or a caller's fd).
//! - `ffi`: argument types that make any C value safe to receive, panic guards, C strings.
//!
//! The entry points that take pointers are `unsafe extern "C"`: like libcriu they trust the
//! caller to pass NULL or valid pointers (C strings, `criu_opts` from criu_local_init_opts,
//! buffers of the stated size). That one contract is stated here rather than on each function,
//! whose doc comments become the header's.
//!
//! `include/criu.h` is generated from these files by cbindgen (build.rs): the functions come from
//! here, the enums, constants and types from `prologue.h`. No panic crosses into C: every entry
//! point runs under `ffi::guard`.

#![allow(clippy::missing_safety_doc)]

pub mod client;
pub mod ffi;
pub mod ops;
pub mod opts;
pub mod transport;
