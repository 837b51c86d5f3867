//! The boundary itself: C argument types taken in a form where no value the caller passes is
//! undefined behaviour, panics stopped before they reach C frames, C strings read.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A C `bool` argument (cbindgen writes `bool`). Taken as a byte: Rust's `bool` has two valid
/// values, and callers that reach us through dlsym casts or other languages may pass others.
#[repr(transparent)]
#[derive(Clone, Copy, Debug)]
pub struct CBool(u8);

impl CBool {
    pub fn get(self) -> bool {
        self.0 != 0
    }
}

impl From<bool> for CBool {
    fn from(b: bool) -> Self {
        CBool(b.into())
    }
}

/// An `enum criu_cg_mode` argument, taken as the int C passes: an out-of-range value is data
/// to reject, not undefined behaviour.
#[repr(transparent)]
#[derive(Clone, Copy, Debug)]
pub struct CgModeArg(pub c_int);

/// An `enum criu_network_lock_method` argument (see `CgModeArg`).
#[repr(transparent)]
#[derive(Clone, Copy, Debug)]
pub struct NetworkLockArg(pub c_int);

/// An `enum criu_pre_dump_mode` argument (see `CgModeArg`).
#[repr(transparent)]
#[derive(Clone, Copy, Debug)]
pub struct PreDumpModeArg(pub c_int);

/// `struct criu_feature_check`: three C bools. Only ever accessed as bytes, so that whatever
/// the caller stored in them is fine.
#[repr(C)]
pub struct FeatureCheck {
    pub mem_track: u8,
    pub lazy_pages: u8,
    pub pidfd_store: u8,
}

/// What the notify callback receives as `criu_notify_arg_t`. The header keeps it opaque; the
/// layout is protobuf-c's `CriuNotify` all the same, so a program built against CRIU's headers
/// that reads `na->pid` directly still works.
#[repr(C)]
pub struct NotifyArg {
    descriptor: *const c_void,
    n_unknown_fields: c_uint,
    unknown_fields: *mut c_void,
    pub script: *mut c_char,
    pub has_pid: c_int,
    pub pid: i32,
}

impl NotifyArg {
    pub fn new(script: *mut c_char, pid: Option<i32>) -> Self {
        NotifyArg {
            descriptor: std::ptr::null(),
            n_unknown_fields: 0,
            unknown_fields: std::ptr::null_mut(),
            script,
            has_pid: pid.is_some() as c_int,
            pid: pid.unwrap_or(0),
        }
    }
}

/// `criu_notify_arg_t`.
#[allow(non_camel_case_types)]
pub type criu_notify_arg_t = *mut NotifyArg;

/// `criu_predump_info`: reserved by libcriu for pre-dump statistics; always NULL.
#[allow(non_camel_case_types)]
pub type criu_predump_info = *mut c_void;

/// The notify callback: `int (*cb)(char *action, criu_notify_arg_t na)`.
pub type NotifyFn = unsafe extern "C" fn(action: *mut c_char, na: criu_notify_arg_t) -> c_int;

/// The criu_dump_iters callback: `int (*more)(criu_predump_info pi)`.
pub type MoreFn = unsafe extern "C" fn(pi: criu_predump_info) -> c_int;

/// Runs `f`, returning `on_panic` if it panics: unwinding into C frames is undefined behaviour.
pub fn guard<R>(on_panic: R, f: impl FnOnce() -> R) -> R {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(on_panic)
}

/// A C string argument: None for NULL.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that outlives the call.
pub unsafe fn c_str<'a>(p: *const c_char) -> Option<&'a CStr> {
    if p.is_null() {
        None
    } else {
        // SAFETY: non-NULL, and the caller promises a NUL-terminated string.
        Some(unsafe { CStr::from_ptr(p) })
    }
}

/// A C string argument that goes into a protobuf string field, which must be UTF-8. None for
/// NULL or for bytes that are not UTF-8 (the setter then fails with -EINVAL instead of sending
/// a mangled path).
///
/// # Safety
/// As for `c_str`.
pub unsafe fn utf8(p: *const c_char) -> Option<String> {
    // SAFETY: forwarded from the caller.
    unsafe { c_str(p) }?.to_str().ok().map(str::to_owned)
}

/// A string that is not UTF-8 (protobuf strings must be).
#[derive(Debug)]
pub struct NotUtf8;

/// An optional C string argument: Ok(None) for NULL.
///
/// # Safety
/// As for `c_str`.
pub unsafe fn opt_utf8(p: *const c_char) -> Result<Option<String>, NotUtf8> {
    // SAFETY: forwarded from the caller.
    match unsafe { c_str(p) } {
        None => Ok(None),
        Some(s) => s.to_str().map(|s| Some(s.to_owned())).map_err(|_| NotUtf8),
    }
}

/// A C `argc`/`argv` pair; None when argc is negative or an argument is NULL or not UTF-8.
///
/// # Safety
/// `argv` is NULL or holds at least `argc` pointers, each NULL or a valid C string.
pub unsafe fn utf8_array(argc: c_int, argv: *const *mut c_char) -> Option<Vec<String>> {
    let n = usize::try_from(argc).ok()?;
    if n > 0 && argv.is_null() {
        return None;
    }
    // SAFETY: argv holds n pointers (checked non-NULL above when n > 0).
    (0..n).map(|i| unsafe { utf8(*argv.add(i)) }).collect()
}

/// Sets the calling thread's errno, which libcriu's callers read after a failed call.
pub fn set_errno(e: i32) {
    nix::errno::Errno::set_raw(e);
}
