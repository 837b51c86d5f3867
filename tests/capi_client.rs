//! The C API called from Rust, through the default embedded server: a helper forked from this
//! multi-threaded test process runs the RPC server. The C tests in ctests/ cover the rest.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::ptr::null_mut;

use criu::capi::ffi::FeatureCheck;
use criu::capi::ops::*;
use criu::capi::opts::*;

/// Options of our own (criu_local_*), freed on drop.
struct Opts(*mut LibOpts);

impl Opts {
    fn new() -> Opts {
        let mut p = null_mut();
        assert_eq!(unsafe { criu_local_init_opts(&mut p) }, 0);
        Opts(p)
    }
}

impl Drop for Opts {
    fn drop(&mut self) {
        unsafe { criu_local_free_opts(self.0) }
    }
}

fn errno() -> i32 {
    nix::errno::Errno::last_raw()
}

#[test]
fn version_through_the_embedded_server() {
    let o = Opts::new();
    unsafe {
        assert_eq!(criu_local_get_version(o.0), 40200);
        assert_eq!(criu_local_check_version(o.0, 40200), 1);
        assert_eq!(criu_local_check_version(o.0, 40201), 0);
        assert_eq!(criu_local_check(o.0), 0);
    }
}

#[test]
fn feature_check_through_the_embedded_server() {
    let have = criu::engine::features();
    let o = Opts::new();
    let mut f = FeatureCheck {
        mem_track: 1,
        lazy_pages: 0,
        pidfd_store: 7, // any non-zero byte asks
    };
    unsafe {
        assert_eq!(criu_local_feature_check(o.0, &mut f, 3), 0);
    }
    assert_eq!(f.mem_track, have.mem_track as u8);
    assert_eq!(f.lazy_pages, 0);
    assert_eq!(f.pidfd_store, have.pidfd_store as u8);
}

#[test]
fn dump_reports_the_engines_failure() {
    let dir = std::fs::File::open(std::env::temp_dir()).unwrap();
    let o = Opts::new();
    unsafe {
        criu_local_set_images_dir_fd(o.0, dir.as_raw_fd());
        // Above pid_max: never a process. The request runs and the engine fails.
        criu_local_set_pid(o.0, 99_999_999);
        criu_local_set_leave_running(o.0, true.into());
        let log = CString::new("capi-dump-test.log").unwrap();
        assert_eq!(criu_local_set_log_file(o.0, log.as_ptr()), 0);
        assert_eq!(criu_local_dump(o.0), -libc::EBADE);
        assert_eq!(errno(), libc::ESRCH);
    }
    let _ = std::fs::remove_file(std::env::temp_dir().join("capi-dump-test.log"));
}

/// A dump without a pid dumps the caller: the server (detached from our tree) must see the
/// caller's pid as the tree to dump. The engine then fails, but its log names the pid.
#[test]
fn self_dump_targets_the_caller() {
    let dir = std::env::temp_dir().join(format!("criu-capi-self-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let images = std::fs::File::open(&dir).unwrap();
    let o = Opts::new();
    let log = CString::new("self.log").unwrap();
    unsafe {
        criu_local_set_images_dir_fd(o.0, images.as_raw_fd());
        criu_local_set_leave_running(o.0, true.into());
        criu_local_set_log_level(o.0, 4);
        assert_eq!(criu_local_set_log_file(o.0, log.as_ptr()), 0);
        assert_eq!(criu_local_dump(o.0), -libc::EBADE);
    }
    let text = std::fs::read_to_string(dir.join("self.log")).unwrap();
    let me = format!("Dump requested by pid {}", std::process::id());
    assert!(text.contains(&me), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unsupported_option_fails_before_forking() {
    let o = Opts::new();
    let root = CString::new("/some/root").unwrap();
    unsafe {
        criu_local_set_images_dir_fd(o.0, 0);
        assert_eq!(criu_local_set_root(o.0, root.as_ptr()), 0);
        assert_eq!(criu_local_dump(o.0), -libc::EINVAL);
        assert_eq!(errno(), libc::EOPNOTSUPP);
        assert_eq!(criu_local_restore_child(o.0), -libc::EINVAL);
        // Requests that do not run the engine ignore it.
        assert_eq!(criu_local_get_version(o.0), 40200);
    }
}

#[test]
fn restore_child_reports_the_engines_failure() {
    let o = Opts::new();
    let dir = CString::new("/tmp").unwrap();
    unsafe {
        // images_dir by path: there is no setter, so go through the stored message.
        (*o.0).rpc.images_dir = Some(dir.to_str().unwrap().into());
        (*o.0).rpc.log_to_stderr = Some(true);
        assert_eq!(criu_local_restore_child(o.0), -libc::EBADE);
        assert_eq!(errno(), libc::EBADMSG);
    }
}

#[test]
fn missing_binary_is_connection_refused() {
    let o = Opts::new();
    let bin = CString::new("/nonexistent/criu").unwrap();
    unsafe {
        assert_eq!(criu_local_set_service_binary(o.0, bin.as_ptr()), 0);
        // The child starts, fails to exec and exits: the request cannot be answered.
        let ret = criu_local_get_version(o.0);
        assert!(ret == -libc::ECOMM || ret == -libc::ECONNREFUSED, "{ret}");
    }
}

#[test]
fn null_options_are_einval() {
    unsafe {
        assert_eq!(criu_local_check(null_mut()), -libc::EINVAL);
        assert_eq!(criu_local_dump(null_mut()), -libc::EINVAL);
        assert_eq!(criu_local_get_version(null_mut()), -libc::EINVAL);
        assert_eq!(criu_local_init_opts(null_mut()), -1);
        criu_local_set_pid(null_mut(), 1);
        criu_local_free_opts(null_mut());
    }
}
