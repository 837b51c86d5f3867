//! `criu_opts` and its setters. Like libcriu, the options are kept as the RPC message itself
//! (`pb::CriuOpts`): a setter stores exactly what libcriu stores, and a request sends it as is.
//!
//! The plain API (`criu_set_pid`, ...) works on one process-wide `criu_opts`; as in libcriu it is
//! not meant for concurrent use (a lock keeps it memory-safe, not meaningful). Threads that work
//! in parallel each use their own with the `criu_local_*` twins.
//!
//! Where libcriu dereferences NULL (a NULL string, a NULL `criu_opts`, the plain API before
//! criu_init_opts) we return -EINVAL or do nothing, and the plain API creates its options on
//! first use. Where libcriu returns -1 for a bad argument we return -EINVAL.

use std::ffi::{c_char, c_int, c_uint, CStr, CString};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use crate::pb::{
    CgroupRoot, CriuOpts, CriuPageServerInfo, CriuVethPair, ExtMountMap, InheritFd, JoinNamespace,
    UnixSk,
};

use super::ffi::{
    self, guard, CBool, CgModeArg, NetworkLockArg, NotUtf8, NotifyFn, PreDumpModeArg,
};

const EINVAL: c_int = -libc::EINVAL;

/// libcriu's default service socket (`criu service` without --address binds the same).
const DEFAULT_SERVICE_ADDRESS: &str = "./criu_service.socket";
/// libcriu's default service binary, looked up in PATH.
const DEFAULT_SERVICE_BINARY: &CStr = c"criu";

// The values of criu.h's enums (the header prologue declares them for C).
const CRIU_NETWORK_LOCK_IPTABLES: c_int = 1;
const CRIU_NETWORK_LOCK_SKIP: c_int = 3;
const CRIU_PRE_DUMP_SPLICE: c_int = 1;
const CRIU_PRE_DUMP_READ: c_int = 2;

/// How the library reaches a CRIU server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Service {
    /// The default: a forked helper runs our RPC server in-process; no criu binary is needed.
    Embedded,
    /// criu_set_service_binary: fork and exec `BINARY swrk FD` (libcriu's default, with "criu").
    Binary(CString),
    /// criu_set_service_address: connect to `criu service --address PATH`.
    Address(PathBuf),
    /// criu_set_service_fd: a socket connected to a server; closed after each operation.
    Fd(RawFd),
}

/// `criu_opts`: opaque to C.
#[derive(Clone)]
pub struct LibOpts {
    /// The options as they go out in each request.
    pub rpc: CriuOpts,
    pub service: Service,
    pub notify: Option<NotifyFn>,
}

impl Default for LibOpts {
    fn default() -> Self {
        LibOpts {
            rpc: CriuOpts::default(),
            service: Service::Embedded,
            notify: None,
        }
    }
}

/// The plain API's options.
static GLOBAL: Mutex<Option<LibOpts>> = Mutex::new(None);

/// Runs `f` on the plain API's options, creating them if criu_init_opts was not called.
pub fn with_global<R>(on_panic: R, f: impl FnOnce(&mut LibOpts) -> R) -> R {
    guard(on_panic, || {
        let mut g = GLOBAL.lock().unwrap_or_else(PoisonError::into_inner);
        f(g.get_or_insert_with(LibOpts::default))
    })
}

/// A copy of the plain API's options, so that an operation runs without holding the lock (a
/// notify callback may call setters; a self-dump must not freeze the process with it held).
pub fn global_snapshot() -> LibOpts {
    with_global(LibOpts::default(), |o| o.clone())
}

/// Runs `f` on the caller's options; `missing` when `opts` is NULL (or `f` panics).
///
/// # Safety
/// `opts` is NULL or a pointer from criu_local_init_opts that was not freed.
pub unsafe fn with_local<R: Copy>(
    opts: *mut LibOpts,
    missing: R,
    f: impl FnOnce(&mut LibOpts) -> R,
) -> R {
    // SAFETY: the caller passes NULL or a live criu_opts, used by one thread at a time.
    match unsafe { opts.as_mut() } {
        Some(o) => guard(missing, || f(o)),
        None => missing,
    }
}

fn ok_or_einval(set: Option<()>) -> c_int {
    if set.is_some() {
        0
    } else {
        EINVAL
    }
}

/// The setters' logic, shared by the plain and local entry points.
impl LibOpts {
    fn set_service_address(&mut self, path: Option<&CStr>) -> c_int {
        self.service = Service::Address(match path {
            Some(p) => PathBuf::from(std::ffi::OsStr::from_bytes(p.to_bytes())),
            None => PathBuf::from(DEFAULT_SERVICE_ADDRESS),
        });
        0
    }

    fn set_service_binary(&mut self, path: Option<&CStr>) -> c_int {
        self.service = Service::Binary(path.unwrap_or(DEFAULT_SERVICE_BINARY).to_owned());
        0
    }

    fn set_str(field: &mut Option<String>, value: Option<String>) -> c_int {
        ok_or_einval(value.map(|v| *field = Some(v)))
    }

    fn push_str(list: &mut Vec<String>, value: Option<String>) -> c_int {
        ok_or_einval(value.map(|v| list.push(v)))
    }

    fn add_unix_sk(&mut self, inode: c_uint) -> c_int {
        // libcriu turns ext_unix_sk on for a caller who forgot it, but refuses (and drops the
        // list) when the caller turned it off explicitly.
        match self.rpc.ext_unix_sk {
            None => self.rpc.ext_unix_sk = Some(true),
            Some(false) => {
                self.rpc.unix_sk_ino.clear();
                return EINVAL;
            }
            Some(true) => {}
        }
        self.rpc.unix_sk_ino.push(UnixSk { inode });
        0
    }

    fn add_inherit_fd(&mut self, fd: c_int, key: Option<String>) -> c_int {
        // Only a server that is our child has our descriptors (libcriu: swrk only). The
        // embedded helper is one too.
        if !matches!(self.service, Service::Binary(_) | Service::Embedded) {
            return EINVAL;
        }
        ok_or_einval(key.map(|key| self.rpc.inherit_fd.push(InheritFd { key, fd })))
    }

    fn set_page_server_address_port(
        &mut self,
        address: Result<Option<String>, NotUtf8>,
        port: c_int,
    ) -> c_int {
        let Ok(address) = address else {
            return EINVAL;
        };
        // libcriu returns -ENOMEM even when this succeeds; we return 0.
        self.rpc.ps = Some(CriuPageServerInfo {
            address,
            port: Some(port),
            pid: None,
            fd: None,
        });
        0
    }

    fn set_pre_dump_mode(&mut self, mode: PreDumpModeArg) -> c_int {
        match mode.0 {
            CRIU_PRE_DUMP_SPLICE | CRIU_PRE_DUMP_READ => {
                self.rpc.pre_dump_mode = Some(mode.0);
                0
            }
            _ => EINVAL,
        }
    }

    fn set_network_lock(&mut self, method: NetworkLockArg) -> c_int {
        match method.0 {
            CRIU_NETWORK_LOCK_IPTABLES..=CRIU_NETWORK_LOCK_SKIP => {
                self.rpc.network_lock = Some(method.0);
                0
            }
            _ => EINVAL,
        }
    }

    fn join_ns_add(
        &mut self,
        ns: Option<String>,
        ns_file: Option<String>,
        extra_opt: Result<Option<String>, NotUtf8>,
    ) -> c_int {
        let (Some(ns), Some(ns_file), Ok(extra_opt)) = (ns, ns_file, extra_opt) else {
            return EINVAL;
        };
        self.rpc.join_ns.push(JoinNamespace {
            ns,
            ns_file,
            extra_opt,
        });
        0
    }

    fn set_notify_cb(&mut self, cb: Option<NotifyFn>) {
        self.notify = cb;
        // libcriu asks for notifications even when the callback is NULL.
        self.rpc.notify_scripts = Some(true);
    }
}

// ---- Life cycle -------------------------------------------------------------------------------

/// Resets the plain API's options to the defaults. 0 (never fails).
#[no_mangle]
pub extern "C" fn criu_init_opts() -> c_int {
    guard(-1, || {
        *GLOBAL.lock().unwrap_or_else(PoisonError::into_inner) = Some(LibOpts::default());
        0
    })
}

/// Drops the plain API's options.
#[no_mangle]
pub extern "C" fn criu_free_opts() {
    guard((), || {
        *GLOBAL.lock().unwrap_or_else(PoisonError::into_inner) = None;
    })
}

/// Frees `*o` if set (as libcriu does: pass a NULL-initialized pointer the first time) and
/// stores fresh default options there. 0, or -1 when `o` is NULL.
#[no_mangle]
pub unsafe extern "C" fn criu_local_init_opts(o: *mut *mut LibOpts) -> c_int {
    guard(-1, || {
        if o.is_null() {
            return -1;
        }
        // SAFETY: the caller passes a valid slot holding NULL or our pointer.
        unsafe {
            criu_local_free_opts(*o);
            *o = Box::into_raw(Box::default());
        }
        0
    })
}

/// Frees options from criu_local_init_opts. NULL is ignored.
#[no_mangle]
pub unsafe extern "C" fn criu_local_free_opts(opts: *mut LibOpts) {
    if !opts.is_null() {
        // SAFETY: the pointer came from Box::into_raw in criu_local_init_opts.
        guard((), || drop(unsafe { Box::from_raw(opts) }))
    }
}

// ---- Service ------------------------------------------------------------------------------------

/// Use the `criu service` listening at `path` (NULL: "./criu_service.socket").
#[no_mangle]
pub unsafe extern "C" fn criu_set_service_address(path: *const c_char) -> c_int {
    // SAFETY: forwarded from the C caller.
    let path = unsafe { ffi::c_str(path) };
    with_global(EINVAL, |o| o.set_service_address(path))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_service_address(
    opts: *mut LibOpts,
    path: *const c_char,
) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, EINVAL, |o| o.set_service_address(ffi::c_str(path))) }
}

/// Use the server connected to socket `fd`. The library closes `fd` after the next operation.
#[no_mangle]
pub extern "C" fn criu_set_service_fd(fd: c_int) {
    with_global((), |o| o.service = Service::Fd(fd))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_service_fd(opts: *mut LibOpts, fd: c_int) {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, (), |o| o.service = Service::Fd(fd)) }
}

/// Run `path swrk FD` for each operation (NULL: "criu" from PATH) instead of the embedded server.
#[no_mangle]
pub unsafe extern "C" fn criu_set_service_binary(path: *const c_char) -> c_int {
    // SAFETY: forwarded from the C caller.
    let path = unsafe { ffi::c_str(path) };
    with_global(EINVAL, |o| o.set_service_binary(path))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_service_binary(
    opts: *mut LibOpts,
    path: *const c_char,
) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, EINVAL, |o| o.set_service_binary(ffi::c_str(path))) }
}

// ---- Options ------------------------------------------------------------------------------------
// Each pair stores one criu_opts field. String setters return -EINVAL for NULL (or non-UTF-8)
// strings, which libcriu would crash on.

#[no_mangle]
pub extern "C" fn criu_set_pid(pid: c_int) {
    with_global((), |o| o.rpc.pid = Some(pid))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_pid(opts: *mut LibOpts, pid: c_int) {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, (), |o| o.rpc.pid = Some(pid)) }
}

#[no_mangle]
pub extern "C" fn criu_set_images_dir_fd(fd: c_int) {
    with_global((), |o| o.rpc.images_dir_fd = fd)
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_images_dir_fd(opts: *mut LibOpts, fd: c_int) {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, (), |o| o.rpc.images_dir_fd = fd) }
}

#[no_mangle]
pub unsafe extern "C" fn criu_set_parent_images(path: *const c_char) -> c_int {
    // SAFETY: forwarded from the C caller.
    let v = unsafe { ffi::utf8(path) };
    with_global(EINVAL, |o| LibOpts::set_str(&mut o.rpc.parent_img, v))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_parent_images(
    opts: *mut LibOpts,
    path: *const c_char,
) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe {
        with_local(opts, EINVAL, |o| {
            LibOpts::set_str(&mut o.rpc.parent_img, ffi::utf8(path))
        })
    }
}

#[no_mangle]
pub extern "C" fn criu_set_work_dir_fd(fd: c_int) {
    with_global((), |o| o.rpc.work_dir_fd = Some(fd))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_work_dir_fd(opts: *mut LibOpts, fd: c_int) {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, (), |o| o.rpc.work_dir_fd = Some(fd)) }
}

#[no_mangle]
pub extern "C" fn criu_set_leave_running(leave_running: CBool) {
    with_global((), |o| o.rpc.leave_running = Some(leave_running.get()))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_leave_running(opts: *mut LibOpts, leave_running: CBool) {
    // SAFETY: forwarded from the C caller.
    unsafe {
        with_local(opts, (), |o| {
            o.rpc.leave_running = Some(leave_running.get())
        })
    }
}

#[no_mangle]
pub extern "C" fn criu_set_ext_unix_sk(ext_unix_sk: CBool) {
    with_global((), |o| o.rpc.ext_unix_sk = Some(ext_unix_sk.get()))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_ext_unix_sk(opts: *mut LibOpts, ext_unix_sk: CBool) {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, (), |o| o.rpc.ext_unix_sk = Some(ext_unix_sk.get())) }
}

/// Marks the unix socket with this inode external (turning ext_unix_sk on if unset). -EINVAL
/// when ext_unix_sk was explicitly turned off.
#[no_mangle]
pub extern "C" fn criu_add_unix_sk(inode: c_uint) -> c_int {
    with_global(EINVAL, |o| o.add_unix_sk(inode))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_add_unix_sk(opts: *mut LibOpts, inode: c_uint) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, EINVAL, |o| o.add_unix_sk(inode)) }
}

#[no_mangle]
pub extern "C" fn criu_set_tcp_established(tcp_established: CBool) {
    with_global((), |o| o.rpc.tcp_established = Some(tcp_established.get()))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_tcp_established(
    opts: *mut LibOpts,
    tcp_established: CBool,
) {
    // SAFETY: forwarded from the C caller.
    unsafe {
        with_local(opts, (), |o| {
            o.rpc.tcp_established = Some(tcp_established.get())
        })
    }
}

#[no_mangle]
pub extern "C" fn criu_set_tcp_skip_in_flight(tcp_skip_in_flight: CBool) {
    with_global((), |o| {
        o.rpc.tcp_skip_in_flight = Some(tcp_skip_in_flight.get())
    })
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_tcp_skip_in_flight(
    opts: *mut LibOpts,
    tcp_skip_in_flight: CBool,
) {
    // SAFETY: forwarded from the C caller.
    unsafe {
        with_local(opts, (), |o| {
            o.rpc.tcp_skip_in_flight = Some(tcp_skip_in_flight.get())
        })
    }
}

#[no_mangle]
pub extern "C" fn criu_set_tcp_close(tcp_close: CBool) {
    with_global((), |o| o.rpc.tcp_close = Some(tcp_close.get()))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_tcp_close(opts: *mut LibOpts, tcp_close: CBool) {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, (), |o| o.rpc.tcp_close = Some(tcp_close.get())) }
}

#[no_mangle]
pub extern "C" fn criu_set_weak_sysctls(val: CBool) {
    with_global((), |o| o.rpc.weak_sysctls = Some(val.get()))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_weak_sysctls(opts: *mut LibOpts, val: CBool) {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, (), |o| o.rpc.weak_sysctls = Some(val.get())) }
}

#[no_mangle]
pub extern "C" fn criu_set_evasive_devices(evasive_devices: CBool) {
    with_global((), |o| o.rpc.evasive_devices = Some(evasive_devices.get()))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_evasive_devices(
    opts: *mut LibOpts,
    evasive_devices: CBool,
) {
    // SAFETY: forwarded from the C caller.
    unsafe {
        with_local(opts, (), |o| {
            o.rpc.evasive_devices = Some(evasive_devices.get())
        })
    }
}

#[no_mangle]
pub extern "C" fn criu_set_shell_job(shell_job: CBool) {
    with_global((), |o| o.rpc.shell_job = Some(shell_job.get()))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_shell_job(opts: *mut LibOpts, shell_job: CBool) {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, (), |o| o.rpc.shell_job = Some(shell_job.get())) }
}

#[no_mangle]
pub extern "C" fn criu_set_skip_file_rwx_check(skip_file_rwx_check: CBool) {
    with_global((), |o| {
        o.rpc.skip_file_rwx_check = Some(skip_file_rwx_check.get())
    })
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_skip_file_rwx_check(
    opts: *mut LibOpts,
    skip_file_rwx_check: CBool,
) {
    // SAFETY: forwarded from the C caller.
    unsafe {
        with_local(opts, (), |o| {
            o.rpc.skip_file_rwx_check = Some(skip_file_rwx_check.get())
        })
    }
}

#[no_mangle]
pub extern "C" fn criu_set_unprivileged(unprivileged: CBool) {
    with_global((), |o| o.rpc.unprivileged = Some(unprivileged.get()))
}

/// Not declared in CRIU's criu.h, but libcriu exports it.
#[no_mangle]
pub unsafe extern "C" fn criu_local_set_unprivileged(opts: *mut LibOpts, unprivileged: CBool) {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, (), |o| o.rpc.unprivileged = Some(unprivileged.get())) }
}

#[no_mangle]
pub extern "C" fn criu_set_orphan_pts_master(orphan_pts_master: CBool) {
    with_global((), |o| {
        o.rpc.orphan_pts_master = Some(orphan_pts_master.get())
    })
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_orphan_pts_master(
    opts: *mut LibOpts,
    orphan_pts_master: CBool,
) {
    // SAFETY: forwarded from the C caller.
    unsafe {
        with_local(opts, (), |o| {
            o.rpc.orphan_pts_master = Some(orphan_pts_master.get())
        })
    }
}

#[no_mangle]
pub extern "C" fn criu_set_file_locks(file_locks: CBool) {
    with_global((), |o| o.rpc.file_locks = Some(file_locks.get()))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_file_locks(opts: *mut LibOpts, file_locks: CBool) {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, (), |o| o.rpc.file_locks = Some(file_locks.get())) }
}

#[no_mangle]
pub extern "C" fn criu_set_track_mem(track_mem: CBool) {
    with_global((), |o| o.rpc.track_mem = Some(track_mem.get()))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_track_mem(opts: *mut LibOpts, track_mem: CBool) {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, (), |o| o.rpc.track_mem = Some(track_mem.get())) }
}

#[no_mangle]
pub extern "C" fn criu_set_auto_dedup(auto_dedup: CBool) {
    with_global((), |o| o.rpc.auto_dedup = Some(auto_dedup.get()))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_auto_dedup(opts: *mut LibOpts, auto_dedup: CBool) {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, (), |o| o.rpc.auto_dedup = Some(auto_dedup.get())) }
}

/// Restore leaves private anonymous memory to `criu lazy-pages` (not a CRIU 4.2 call: CRIU
/// offers lazy restore only on its command line).
#[no_mangle]
pub extern "C" fn criu_set_lazy_pages(lazy_pages: CBool) {
    with_global((), |o| o.rpc.lazy_pages = Some(lazy_pages.get()))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_lazy_pages(opts: *mut LibOpts, lazy_pages: CBool) {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, (), |o| o.rpc.lazy_pages = Some(lazy_pages.get())) }
}

#[no_mangle]
pub extern "C" fn criu_set_force_irmap(force_irmap: CBool) {
    with_global((), |o| o.rpc.force_irmap = Some(force_irmap.get()))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_force_irmap(opts: *mut LibOpts, force_irmap: CBool) {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, (), |o| o.rpc.force_irmap = Some(force_irmap.get())) }
}

#[no_mangle]
pub extern "C" fn criu_set_link_remap(link_remap: CBool) {
    with_global((), |o| o.rpc.link_remap = Some(link_remap.get()))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_link_remap(opts: *mut LibOpts, link_remap: CBool) {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, (), |o| o.rpc.link_remap = Some(link_remap.get())) }
}

/// CRIU_LOG_MSG (0) to CRIU_LOG_DEBUG (4); stored as given.
#[no_mangle]
pub extern "C" fn criu_set_log_level(log_level: c_int) {
    with_global((), |o| o.rpc.log_level = Some(log_level))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_log_level(opts: *mut LibOpts, log_level: c_int) {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, (), |o| o.rpc.log_level = Some(log_level)) }
}

/// A file name, created in the work dir (no '/': the server refuses subdirectories).
#[no_mangle]
pub unsafe extern "C" fn criu_set_log_file(log_file: *const c_char) -> c_int {
    // SAFETY: forwarded from the C caller.
    let v = unsafe { ffi::utf8(log_file) };
    with_global(EINVAL, |o| LibOpts::set_str(&mut o.rpc.log_file, v))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_log_file(
    opts: *mut LibOpts,
    log_file: *const c_char,
) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe {
        with_local(opts, EINVAL, |o| {
            LibOpts::set_str(&mut o.rpc.log_file, ffi::utf8(log_file))
        })
    }
}

#[no_mangle]
pub extern "C" fn criu_set_cpu_cap(cap: c_uint) {
    with_global((), |o| o.rpc.cpu_cap = Some(cap))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_cpu_cap(opts: *mut LibOpts, cap: c_uint) {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, (), |o| o.rpc.cpu_cap = Some(cap)) }
}

#[no_mangle]
pub unsafe extern "C" fn criu_set_root(root: *const c_char) -> c_int {
    // SAFETY: forwarded from the C caller.
    let v = unsafe { ffi::utf8(root) };
    with_global(EINVAL, |o| LibOpts::set_str(&mut o.rpc.root, v))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_root(opts: *mut LibOpts, root: *const c_char) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe {
        with_local(opts, EINVAL, |o| {
            LibOpts::set_str(&mut o.rpc.root, ffi::utf8(root))
        })
    }
}

#[no_mangle]
pub extern "C" fn criu_set_manage_cgroups(manage: CBool) {
    with_global((), |o| o.rpc.manage_cgroups = Some(manage.get()))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_manage_cgroups(opts: *mut LibOpts, manage: CBool) {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, (), |o| o.rpc.manage_cgroups = Some(manage.get())) }
}

/// Stored as given, as libcriu does: the server rejects a mode it does not know.
#[no_mangle]
pub extern "C" fn criu_set_manage_cgroups_mode(mode: CgModeArg) {
    with_global((), |o| o.rpc.manage_cgroups_mode = Some(mode.0))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_manage_cgroups_mode(opts: *mut LibOpts, mode: CgModeArg) {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, (), |o| o.rpc.manage_cgroups_mode = Some(mode.0)) }
}

#[no_mangle]
pub unsafe extern "C" fn criu_set_freeze_cgroup(name: *const c_char) -> c_int {
    // SAFETY: forwarded from the C caller.
    let v = unsafe { ffi::utf8(name) };
    with_global(EINVAL, |o| LibOpts::set_str(&mut o.rpc.freeze_cgroup, v))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_freeze_cgroup(
    opts: *mut LibOpts,
    name: *const c_char,
) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe {
        with_local(opts, EINVAL, |o| {
            LibOpts::set_str(&mut o.rpc.freeze_cgroup, ffi::utf8(name))
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn criu_set_lsm_profile(name: *const c_char) -> c_int {
    // SAFETY: forwarded from the C caller.
    let v = unsafe { ffi::utf8(name) };
    with_global(EINVAL, |o| LibOpts::set_str(&mut o.rpc.lsm_profile, v))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_lsm_profile(
    opts: *mut LibOpts,
    name: *const c_char,
) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe {
        with_local(opts, EINVAL, |o| {
            LibOpts::set_str(&mut o.rpc.lsm_profile, ffi::utf8(name))
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn criu_set_lsm_mount_context(name: *const c_char) -> c_int {
    // SAFETY: forwarded from the C caller.
    let v = unsafe { ffi::utf8(name) };
    with_global(EINVAL, |o| {
        LibOpts::set_str(&mut o.rpc.lsm_mount_context, v)
    })
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_lsm_mount_context(
    opts: *mut LibOpts,
    name: *const c_char,
) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe {
        with_local(opts, EINVAL, |o| {
            LibOpts::set_str(&mut o.rpc.lsm_mount_context, ffi::utf8(name))
        })
    }
}

/// Seconds to wait for the tree to freeze. libcriu stores this without marking the field
/// present, so CRIU never receives it; we send it.
#[no_mangle]
pub extern "C" fn criu_set_timeout(timeout: c_uint) {
    with_global((), |o| o.rpc.timeout = Some(timeout))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_timeout(opts: *mut LibOpts, timeout: c_uint) {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, (), |o| o.rpc.timeout = Some(timeout)) }
}

#[no_mangle]
pub extern "C" fn criu_set_auto_ext_mnt(val: CBool) {
    with_global((), |o| o.rpc.auto_ext_mnt = Some(val.get()))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_auto_ext_mnt(opts: *mut LibOpts, val: CBool) {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, (), |o| o.rpc.auto_ext_mnt = Some(val.get())) }
}

#[no_mangle]
pub extern "C" fn criu_set_ext_sharing(val: CBool) {
    with_global((), |o| o.rpc.ext_sharing = Some(val.get()))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_ext_sharing(opts: *mut LibOpts, val: CBool) {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, (), |o| o.rpc.ext_sharing = Some(val.get())) }
}

#[no_mangle]
pub extern "C" fn criu_set_ext_masters(val: CBool) {
    with_global((), |o| o.rpc.ext_masters = Some(val.get()))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_ext_masters(opts: *mut LibOpts, val: CBool) {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, (), |o| o.rpc.ext_masters = Some(val.get())) }
}

/// Replaces the command run after a restore. -EINVAL for a negative argc or a NULL argument.
#[no_mangle]
pub unsafe extern "C" fn criu_set_exec_cmd(argc: c_int, argv: *mut *mut c_char) -> c_int {
    // SAFETY: forwarded from the C caller.
    let cmd = unsafe { ffi::utf8_array(argc, argv) };
    with_global(EINVAL, |o| set_exec_cmd(o, cmd))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_exec_cmd(
    opts: *mut LibOpts,
    argc: c_int,
    argv: *mut *mut c_char,
) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe {
        with_local(opts, EINVAL, |o| {
            set_exec_cmd(o, ffi::utf8_array(argc, argv))
        })
    }
}

fn set_exec_cmd(o: &mut LibOpts, cmd: Option<Vec<String>>) -> c_int {
    ok_or_einval(cmd.map(|cmd| o.rpc.exec_cmd = cmd))
}

#[no_mangle]
pub unsafe extern "C" fn criu_add_ext_mount(key: *const c_char, val: *const c_char) -> c_int {
    // SAFETY: forwarded from the C caller.
    let (key, val) = unsafe { (ffi::utf8(key), ffi::utf8(val)) };
    with_global(EINVAL, |o| add_ext_mount(o, key, val))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_add_ext_mount(
    opts: *mut LibOpts,
    key: *const c_char,
    val: *const c_char,
) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe {
        with_local(opts, EINVAL, |o| {
            add_ext_mount(o, ffi::utf8(key), ffi::utf8(val))
        })
    }
}

fn add_ext_mount(o: &mut LibOpts, key: Option<String>, val: Option<String>) -> c_int {
    ok_or_einval(
        key.zip(val)
            .map(|(key, val)| o.rpc.ext_mnt.push(ExtMountMap { key, val })),
    )
}

#[no_mangle]
pub unsafe extern "C" fn criu_add_veth_pair(r#in: *const c_char, out: *const c_char) -> c_int {
    // SAFETY: forwarded from the C caller.
    let (if_in, if_out) = unsafe { (ffi::utf8(r#in), ffi::utf8(out)) };
    with_global(EINVAL, |o| add_veth_pair(o, if_in, if_out))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_add_veth_pair(
    opts: *mut LibOpts,
    r#in: *const c_char,
    out: *const c_char,
) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe {
        with_local(opts, EINVAL, |o| {
            add_veth_pair(o, ffi::utf8(r#in), ffi::utf8(out))
        })
    }
}

fn add_veth_pair(o: &mut LibOpts, if_in: Option<String>, if_out: Option<String>) -> c_int {
    ok_or_einval(
        if_in
            .zip(if_out)
            .map(|(if_in, if_out)| o.rpc.veths.push(CriuVethPair { if_in, if_out })),
    )
}

/// `ctrl` may be NULL (all controllers).
#[no_mangle]
pub unsafe extern "C" fn criu_add_cg_root(ctrl: *const c_char, path: *const c_char) -> c_int {
    // SAFETY: forwarded from the C caller.
    let (ctrl, path) = unsafe { (ffi::opt_utf8(ctrl), ffi::utf8(path)) };
    with_global(EINVAL, |o| add_cg_root(o, ctrl, path))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_add_cg_root(
    opts: *mut LibOpts,
    ctrl: *const c_char,
    path: *const c_char,
) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe {
        with_local(opts, EINVAL, |o| {
            add_cg_root(o, ffi::opt_utf8(ctrl), ffi::utf8(path))
        })
    }
}

fn add_cg_root(
    o: &mut LibOpts,
    ctrl: Result<Option<String>, NotUtf8>,
    path: Option<String>,
) -> c_int {
    let Ok(ctrl) = ctrl else {
        return EINVAL;
    };
    ok_or_einval(path.map(|path| o.rpc.cg_root.push(CgroupRoot { ctrl, path })))
}

#[no_mangle]
pub unsafe extern "C" fn criu_add_enable_fs(fs: *const c_char) -> c_int {
    // SAFETY: forwarded from the C caller.
    let v = unsafe { ffi::utf8(fs) };
    with_global(EINVAL, |o| LibOpts::push_str(&mut o.rpc.enable_fs, v))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_add_enable_fs(opts: *mut LibOpts, fs: *const c_char) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe {
        with_local(opts, EINVAL, |o| {
            LibOpts::push_str(&mut o.rpc.enable_fs, ffi::utf8(fs))
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn criu_add_skip_mnt(mnt: *const c_char) -> c_int {
    // SAFETY: forwarded from the C caller.
    let v = unsafe { ffi::utf8(mnt) };
    with_global(EINVAL, |o| LibOpts::push_str(&mut o.rpc.skip_mnt, v))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_add_skip_mnt(opts: *mut LibOpts, mnt: *const c_char) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe {
        with_local(opts, EINVAL, |o| {
            LibOpts::push_str(&mut o.rpc.skip_mnt, ffi::utf8(mnt))
        })
    }
}

#[no_mangle]
pub extern "C" fn criu_set_ghost_limit(limit: c_uint) {
    with_global((), |o| o.rpc.ghost_limit = Some(limit))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_ghost_limit(opts: *mut LibOpts, limit: c_uint) {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, (), |o| o.rpc.ghost_limit = Some(limit)) }
}

#[no_mangle]
pub unsafe extern "C" fn criu_add_irmap_path(path: *const c_char) -> c_int {
    // SAFETY: forwarded from the C caller.
    let v = unsafe { ffi::utf8(path) };
    with_global(EINVAL, |o| {
        LibOpts::push_str(&mut o.rpc.irmap_scan_paths, v)
    })
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_add_irmap_path(
    opts: *mut LibOpts,
    path: *const c_char,
) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe {
        with_local(opts, EINVAL, |o| {
            LibOpts::push_str(&mut o.rpc.irmap_scan_paths, ffi::utf8(path))
        })
    }
}

/// Replaces the cgroup properties (YAML text). Local API only, as in libcriu.
#[no_mangle]
pub unsafe extern "C" fn criu_local_add_cg_props(
    opts: *mut LibOpts,
    stream: *const c_char,
) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe {
        with_local(opts, EINVAL, |o| {
            LibOpts::set_str(&mut o.rpc.cgroup_props, ffi::utf8(stream))
        })
    }
}

/// Replaces the cgroup properties file. Local API only, as in libcriu.
#[no_mangle]
pub unsafe extern "C" fn criu_local_add_cg_props_file(
    opts: *mut LibOpts,
    path: *const c_char,
) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe {
        with_local(opts, EINVAL, |o| {
            LibOpts::set_str(&mut o.rpc.cgroup_props_file, ffi::utf8(path))
        })
    }
}

/// Local API only, as in libcriu.
#[no_mangle]
pub unsafe extern "C" fn criu_local_add_cg_dump_controller(
    opts: *mut LibOpts,
    name: *const c_char,
) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe {
        with_local(opts, EINVAL, |o| {
            LibOpts::push_str(&mut o.rpc.cgroup_dump_controller, ffi::utf8(name))
        })
    }
}

/// Replaces the cgroup yard. Local API only, as in libcriu.
#[no_mangle]
pub unsafe extern "C" fn criu_local_add_cg_yard(opts: *mut LibOpts, path: *const c_char) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe {
        with_local(opts, EINVAL, |o| {
            LibOpts::set_str(&mut o.rpc.cgroup_yard, ffi::utf8(path))
        })
    }
}

/// Hands our descriptor `fd` to the restored tree in place of the file named `key`. Needs a
/// server that is our child: the embedded default or a service binary (-EINVAL otherwise).
#[no_mangle]
pub unsafe extern "C" fn criu_add_inherit_fd(fd: c_int, key: *const c_char) -> c_int {
    // SAFETY: forwarded from the C caller.
    let key = unsafe { ffi::utf8(key) };
    with_global(EINVAL, |o| o.add_inherit_fd(fd, key))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_add_inherit_fd(
    opts: *mut LibOpts,
    fd: c_int,
    key: *const c_char,
) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, EINVAL, |o| o.add_inherit_fd(fd, ffi::utf8(key))) }
}

#[no_mangle]
pub unsafe extern "C" fn criu_add_external(key: *const c_char) -> c_int {
    // SAFETY: forwarded from the C caller.
    let v = unsafe { ffi::utf8(key) };
    with_global(EINVAL, |o| LibOpts::push_str(&mut o.rpc.external, v))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_add_external(opts: *mut LibOpts, key: *const c_char) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe {
        with_local(opts, EINVAL, |o| {
            LibOpts::push_str(&mut o.rpc.external, ffi::utf8(key))
        })
    }
}

/// Send pages to the page server at `address`:`port` (NULL address: the server's default).
#[no_mangle]
pub unsafe extern "C" fn criu_set_page_server_address_port(
    address: *const c_char,
    port: c_int,
) -> c_int {
    // SAFETY: forwarded from the C caller.
    let address = unsafe { ffi::opt_utf8(address) };
    with_global(EINVAL, |o| o.set_page_server_address_port(address, port))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_page_server_address_port(
    opts: *mut LibOpts,
    address: *const c_char,
    port: c_int,
) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe {
        with_local(opts, EINVAL, |o| {
            o.set_page_server_address_port(ffi::opt_utf8(address), port)
        })
    }
}

/// CRIU_PRE_DUMP_SPLICE or CRIU_PRE_DUMP_READ; anything else is -EINVAL and changes nothing.
#[no_mangle]
pub extern "C" fn criu_set_pre_dump_mode(mode: PreDumpModeArg) -> c_int {
    with_global(EINVAL, |o| o.set_pre_dump_mode(mode))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_pre_dump_mode(
    opts: *mut LibOpts,
    mode: PreDumpModeArg,
) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, EINVAL, |o| o.set_pre_dump_mode(mode)) }
}

#[no_mangle]
pub extern "C" fn criu_set_pidfd_store_sk(sk: c_int) {
    with_global((), |o| o.rpc.pidfd_store_sk = Some(sk))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_pidfd_store_sk(opts: *mut LibOpts, sk: c_int) {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, (), |o| o.rpc.pidfd_store_sk = Some(sk)) }
}

/// CRIU_NETWORK_LOCK_IPTABLES, _NFTABLES or _SKIP; anything else is -EINVAL and changes nothing.
#[no_mangle]
pub extern "C" fn criu_set_network_lock(method: NetworkLockArg) -> c_int {
    with_global(EINVAL, |o| o.set_network_lock(method))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_network_lock(
    opts: *mut LibOpts,
    method: NetworkLockArg,
) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, EINVAL, |o| o.set_network_lock(method)) }
}

/// Restore into an existing namespace. `ns` and `ns_file` are required, `extra_opt` may be NULL.
#[no_mangle]
pub unsafe extern "C" fn criu_join_ns_add(
    ns: *const c_char,
    ns_file: *const c_char,
    extra_opt: *const c_char,
) -> c_int {
    // SAFETY: forwarded from the C caller.
    let (ns, ns_file, extra_opt) =
        unsafe { (ffi::utf8(ns), ffi::utf8(ns_file), ffi::opt_utf8(extra_opt)) };
    with_global(EINVAL, |o| o.join_ns_add(ns, ns_file, extra_opt))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_join_ns_add(
    opts: *mut LibOpts,
    ns: *const c_char,
    ns_file: *const c_char,
    extra_opt: *const c_char,
) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe {
        with_local(opts, EINVAL, |o| {
            o.join_ns_add(ffi::utf8(ns), ffi::utf8(ns_file), ffi::opt_utf8(extra_opt))
        })
    }
}

#[no_mangle]
pub extern "C" fn criu_set_mntns_compat_mode(val: CBool) {
    with_global((), |o| o.rpc.mntns_compat_mode = Some(val.get()))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_mntns_compat_mode(opts: *mut LibOpts, val: CBool) {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, (), |o| o.rpc.mntns_compat_mode = Some(val.get())) }
}

/// An RPC configuration file that overrides the options (CRIU skips it if it does not exist).
#[no_mangle]
pub unsafe extern "C" fn criu_set_config_file(path: *const c_char) -> c_int {
    // SAFETY: forwarded from the C caller.
    let v = unsafe { ffi::utf8(path) };
    with_global(EINVAL, |o| LibOpts::set_str(&mut o.rpc.config_file, v))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_config_file(
    opts: *mut LibOpts,
    path: *const c_char,
) -> c_int {
    // SAFETY: forwarded from the C caller.
    unsafe {
        with_local(opts, EINVAL, |o| {
            LibOpts::set_str(&mut o.rpc.config_file, ffi::utf8(path))
        })
    }
}

/// CLONE_NEW* flags of namespaces to restore empty (CRIU accepts only CLONE_NEWNET).
#[no_mangle]
pub extern "C" fn criu_set_empty_ns(namespaces: c_int) {
    with_global((), |o| o.rpc.empty_ns = Some(namespaces as u32))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_empty_ns(opts: *mut LibOpts, namespaces: c_int) {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, (), |o| o.rpc.empty_ns = Some(namespaces as u32)) }
}

/// Calls `cb` for each notification ("pre-dump", "post-dump", "post-restore", ...). A non-zero
/// return aborts the operation, which then returns that value.
#[no_mangle]
pub extern "C" fn criu_set_notify_cb(
    cb: Option<unsafe extern "C" fn(action: *mut c_char, na: ffi::criu_notify_arg_t) -> c_int>,
) {
    with_global((), |o| o.set_notify_cb(cb))
}

#[no_mangle]
pub unsafe extern "C" fn criu_local_set_notify_cb(
    opts: *mut LibOpts,
    cb: Option<unsafe extern "C" fn(action: *mut c_char, na: ffi::criu_notify_arg_t) -> c_int>,
) {
    // SAFETY: forwarded from the C caller.
    unsafe { with_local(opts, (), |o| o.set_notify_cb(cb)) }
}
