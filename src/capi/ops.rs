//! The operations' C entry points. The plain ones run on a copy of the process-wide options, so
//! no lock is held while the server works (or while a self-dump freezes this process).

use std::ffi::c_int;

use super::client;
use super::ffi::{criu_notify_arg_t, criu_predump_info, guard, set_errno, FeatureCheck};
use super::opts::{global_snapshot, with_local, LibOpts};

const EINVAL: c_int = -libc::EINVAL;

/// Runs `op` on the caller's options; -EINVAL for NULL options.
///
/// # Safety
/// As for `with_local`.
unsafe fn local(opts: *mut LibOpts, op: impl FnOnce(&LibOpts) -> c_int) -> c_int {
    // SAFETY: forwarded from the C caller.
    let ret = unsafe { with_local(opts, i32::MIN, |o| op(o)) };
    if ret == i32::MIN {
        set_errno(0);
        EINVAL
    } else {
        ret
    }
}

fn global(op: impl FnOnce(&LibOpts) -> c_int) -> c_int {
    guard(EINVAL, || op(&global_snapshot()))
}

/// Asks the server whether this kernel can checkpoint and restore. 0 or an error code.
#[no_mangle]
pub extern "C" fn criu_check() -> c_int {
    global(client::check)
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_check(opts: *mut LibOpts) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe { local(opts, client::check) }
}

/// Dumps the tree of criu_set_pid, or without a pid this process itself: then 0 after the dump
/// and 1 when the process returns here restored from it.
#[no_mangle]
pub extern "C" fn criu_dump() -> c_int {
    global(|o| client::dump(o, false))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_dump(opts: *mut LibOpts) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe { local(opts, |o| client::dump(o, false)) }
}

/// One pre-dump (memory only; the tree keeps running).
#[no_mangle]
pub extern "C" fn criu_pre_dump() -> c_int {
    global(|o| client::dump(o, true))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_pre_dump(opts: *mut LibOpts) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe { local(opts, |o| client::dump(o, true)) }
}

/// Restores the tree detached from the caller. The restored root's pid (> 0) or an error code.
#[no_mangle]
pub extern "C" fn criu_restore() -> c_int {
    global(client::restore)
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_restore(opts: *mut LibOpts) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe { local(opts, client::restore) }
}

/// Restores the tree as a child of the caller. The restored root's pid (> 0) or an error code.
#[no_mangle]
pub extern "C" fn criu_restore_child() -> c_int {
    global(client::restore_child)
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_restore_child(opts: *mut LibOpts) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe { local(opts, client::restore_child) }
}

/// Pre-dumps while `more` returns > 0, then dumps; `more` < 0 aborts with that value. `more`
/// may change the options (next images directory, parent) between requests.
#[no_mangle]
pub extern "C" fn criu_dump_iters(
    more: Option<unsafe extern "C" fn(pi: criu_predump_info) -> c_int>,
) -> c_int {
    guard(EINVAL, || {
        client::dump_iters(&|| Some(global_snapshot()), more)
    })
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_dump_iters(
    opts: *mut LibOpts,
    more: Option<unsafe extern "C" fn(pi: criu_predump_info) -> c_int>,
) -> c_int {
    if opts.is_null() {
        set_errno(0);
        return EINVAL;
    }
    // No reference to the caller's options is held while `more` runs (it may set them).
    guard(EINVAL, || {
        // SAFETY: a live criu_opts from criu_local_init_opts; read, not kept.
        client::dump_iters(&|| unsafe { opts.as_ref() }.cloned(), more)
    })
}

/// The server's version as major * 10000 + minor * 100 + sublevel, or an error code.
#[no_mangle]
pub extern "C" fn criu_get_version() -> c_int {
    global(client::get_version)
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_get_version(opts: *mut LibOpts) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe { local(opts, client::get_version) }
}

/// 1 if the server's version is at least `minimum`, 0 if it is older, < 0 on error.
#[no_mangle]
pub extern "C" fn criu_check_version(minimum: c_int) -> c_int {
    global(|o| client::check_version(o, minimum))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_check_version(opts: *mut LibOpts, minimum: c_int) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe { local(opts, |o| client::check_version(o, minimum)) }
}

/// Sets each member of `*features` that is true on entry to whether the feature is available
/// (the others to false). `size` is the caller's sizeof(struct criu_feature_check): a smaller
/// (older) struct is read and written only up to `size`; a larger one is -EINVAL, as is NULL.
#[no_mangle]
pub unsafe extern "C" fn criu_feature_check(features: *mut FeatureCheck, size: usize) -> c_int {
    // SAFETY: forwarded from the C caller.
    guard(EINVAL, || unsafe {
        feature_check(&global_snapshot(), features, size)
    })
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_feature_check(
    opts: *mut LibOpts,
    features: *mut FeatureCheck,
    size: usize,
) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe { local(opts, |o| feature_check(o, features, size)) }
}

const FEATURE_STRUCT_SIZE: usize = std::mem::size_of::<FeatureCheck>();

/// # Safety
/// `features` is NULL or points to `size` writable bytes.
unsafe fn feature_check(opts: &LibOpts, features: *mut FeatureCheck, size: usize) -> c_int {
    if features.is_null() || size > FEATURE_STRUCT_SIZE {
        set_errno(0);
        return EINVAL;
    }
    let mut bytes = [0u8; FEATURE_STRUCT_SIZE];
    // SAFETY: the caller's struct holds `size` bytes; read as bytes, any value is fine.
    unsafe { std::ptr::copy_nonoverlapping(features.cast::<u8>(), bytes.as_mut_ptr(), size) };
    match client::feature_check(opts, bytes.map(|b| b != 0)) {
        Ok(have) => {
            let out = have.map(u8::from);
            // SAFETY: as above, `size` bytes are writable.
            unsafe { std::ptr::copy_nonoverlapping(out.as_ptr(), features.cast::<u8>(), size) };
            0
        }
        Err(code) => code,
    }
}

/// The pid a notification carries (0 when it has none).
#[no_mangle]
pub unsafe extern "C" fn criu_notify_pid(na: criu_notify_arg_t) -> c_int {
    // SAFETY: the library passed `na` to the callback that is calling us.
    match unsafe { na.as_ref() } {
        Some(n) if n.has_pid != 0 => n.pid,
        _ => 0,
    }
}

/// The master fd of the orphan pty that came with the last "orphan-pts-master" notification
/// (-1 if none). The caller owns it. Call it from the callback, as libcriu documents.
#[no_mangle]
pub extern "C" fn criu_get_orphan_pts_master_fd() -> c_int {
    client::orphan_pts_master_fd()
}
