//! The operations, in Rust terms: build the request, reach a server, exchange messages (running
//! the notify callback when asked), and turn the answer into libcriu's return codes:
//!
//! | return          | errno              | meaning                                           |
//! |-----------------|--------------------|---------------------------------------------------|
//! | 0 (or > 0)      | 0 / cr_errno       | success (restore: the pid; dump: 1 when restored) |
//! | -EBADE          | cr_errno           | the server ran the request and it failed          |
//! | -ECONNREFUSED   | why                | no server could be reached or started             |
//! | -ECOMM          | why                | sending or receiving failed                       |
//! | -EINVAL         | undefined          | bad arguments, or a request the server refused    |
//! | -EBADMSG        | undefined          | an answer of the wrong type                       |
//! | callback's      | 0                  | the notify callback returned non-zero: aborted    |
//!
//! Unsupported options: with the embedded server (the default) the library checks the options
//! before it forks anything, and an operation naming an option the engine does not implement
//! fails with -EINVAL (errno EOPNOTSUPP) and a log line naming the option. A `criu` binary or
//! service decides for itself (ours answers -EBADE with errno EOPNOTSUPP and the option's name
//! in its log).

use std::cell::Cell;
use std::ffi::{c_int, CString};
use std::os::fd::{BorrowedFd, IntoRawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use super::ffi::{set_errno, MoreFn, NotifyArg, NotifyFn};
use super::opts::{LibOpts, Service};
use super::transport;
use crate::pb::{CriuFeatures, CriuReq, CriuReqType, CriuResp};
use crate::rpc::convert::{self, Purpose};
use crate::rpc::wire;
use crate::sys::logfd;

/// A failed operation: what it returns and what errno it leaves.
pub struct Failure {
    pub code: c_int,
    pub errno: i32,
}

type Outcome<T> = Result<T, Failure>;

fn fail(code: c_int, errno: i32) -> Failure {
    Failure { code: -code, errno }
}

/// The descriptor that came with the last "orphan-pts-master" notification, process-wide as in
/// libcriu, and per thread so that parallel criu_local_* callers each see their own.
static ORPHAN_PTS_MASTER: AtomicI32 = AtomicI32::new(-1);
thread_local! {
    static ORPHAN_PTS_MASTER_HERE: Cell<i32> = const { Cell::new(-1) };
}

pub fn orphan_pts_master_fd() -> c_int {
    let here = ORPHAN_PTS_MASTER_HERE.with(Cell::get);
    if here >= 0 {
        here
    } else {
        ORPHAN_PTS_MASTER.load(Ordering::Relaxed)
    }
}

fn log_line(msg: &str) {
    logfd::write_line(format!("libcriu: {msg}\n").as_bytes());
}

/// Sends `req` on `sk` and returns the answer, serving NOTIFY round trips on the way.
fn exchange(sk: BorrowedFd<'_>, req: &CriuReq, notify: Option<NotifyFn>) -> Outcome<CriuResp> {
    wire::send(sk, req, None).map_err(|e| {
        log_line(&format!("cannot send the request: {e}"));
        fail(libc::ECOMM, e.errno())
    })?;
    loop {
        let received = match wire::recv::<CriuResp>(sk, "criu_resp") {
            Ok(Some(r)) => r,
            Ok(None) => {
                log_line("the server closed the connection without an answer");
                return Err(fail(libc::ECOMM, libc::ECONNRESET));
            }
            Err(e) => {
                log_line(&format!("cannot receive the answer: {e}"));
                return Err(fail(libc::ECOMM, e.errno()));
            }
        };
        if let Some(fd) = received.fd {
            // Only "orphan-pts-master" carries one; the caller owns it from now on.
            let fd = fd.into_raw_fd();
            ORPHAN_PTS_MASTER.store(fd, Ordering::Relaxed);
            ORPHAN_PTS_MASTER_HERE.with(|c| c.set(fd));
        }
        let resp = received.msg;
        if resp.r#type == CriuReqType::Notify as i32 {
            let ret = run_callback(notify, &resp);
            let ack = CriuReq {
                r#type: CriuReqType::Notify as i32,
                notify_success: Some(ret == 0),
                ..Default::default()
            };
            let sent = wire::send(sk, &ack, None);
            if ret != 0 {
                // The callback's value is what the operation returns (libcriu does the same).
                return Err(Failure {
                    code: ret,
                    errno: 0,
                });
            }
            if let Err(e) = sent {
                return Err(fail(libc::ECOMM, e.errno()));
            }
            continue;
        }
        let errno = resp.cr_errno.unwrap_or(0);
        if resp.r#type != req.r#type {
            if resp.r#type == CriuReqType::Empty as i32 && !resp.success {
                if let Some(msg) = &resp.cr_errmsg {
                    log_line(&format!("the server refused the request: {msg}"));
                }
                return Err(fail(libc::EINVAL, errno));
            }
            log_line(&format!(
                "unexpected answer of type {} to a request of type {}",
                resp.r#type, req.r#type
            ));
            return Err(fail(libc::EBADMSG, errno));
        }
        return Ok(resp);
    }
}

fn run_callback(notify: Option<NotifyFn>, resp: &CriuResp) -> c_int {
    let Some(cb) = notify else {
        return 0;
    };
    let n = resp.notify.clone().unwrap_or_default();
    let script = n.script.unwrap_or_default().replace('\0', "");
    let mut action = CString::new(script)
        .unwrap_or_default()
        .into_bytes_with_nul();
    let mut arg = NotifyArg::new(action.as_mut_ptr().cast(), n.pid);
    // SAFETY: the caller registered `cb` with this signature; `action` and `arg` outlive the call.
    unsafe { cb(action.as_mut_ptr().cast(), &mut arg) }
}

/// The purpose whose options the engine checks, for requests that run the engine.
fn purpose_of(kind: CriuReqType) -> Option<Purpose> {
    match kind {
        CriuReqType::Dump => Some(Purpose::Dump),
        CriuReqType::PreDump | CriuReqType::SinglePreDump => Some(Purpose::PreDump),
        CriuReqType::Restore => Some(Purpose::Restore),
        _ => None,
    }
}

/// With the embedded server, refuses options the engine cannot honour before forking anything.
fn check_supported(service: &Service, req: &CriuReq) -> Outcome<()> {
    let (Service::Embedded, Some(opts)) = (service, &req.opts) else {
        return Ok(());
    };
    let Some(purpose) = CriuReqType::try_from(req.r#type).ok().and_then(purpose_of) else {
        return Ok(());
    };
    match convert::unsupported_option(opts, purpose) {
        Some(name) => {
            log_line(&format!("Error: option {name} is not supported yet"));
            Err(fail(libc::EINVAL, libc::EOPNOTSUPP))
        }
        None => Ok(()),
    }
}

/// One request on a fresh connection (libcriu's send_req_and_recv_resp).
fn call(opts: &LibOpts, service: &Service, req: &CriuReq) -> Outcome<CriuResp> {
    check_supported(service, req)?;
    // A dump without a pid dumps us: the server must not be our child then.
    let detach = req.r#type == CriuReqType::Dump as i32 && opts.rpc.pid.is_none();
    let conn = transport::connect(service, detach).map_err(|e| {
        log_line(&format!("cannot connect to criu: {e}"));
        fail(libc::ECONNREFUSED, e as i32)
    })?;
    // A detached server is no longer our ancestor: under Yama's ptrace_scope 1 it may trace
    // us only when we name it. Without Yama this fails harmlessly (EINVAL).
    let ptracer = conn.server_pid().filter(|_| detach);
    if let Some(pid) = ptracer {
        let _ = crate::sys::process::prctl(libc::PR_SET_PTRACER, pid as u64);
    }
    let answer = exchange(conn.sk(), req, opts.notify);
    if ptracer.is_some() {
        let _ = crate::sys::process::prctl(libc::PR_SET_PTRACER, 0);
    }
    answer
}

fn request(kind: CriuReqType, opts: &LibOpts) -> CriuReq {
    CriuReq {
        r#type: kind as i32,
        opts: Some(opts.rpc.clone()),
        ..Default::default()
    }
}

/// Sets errno and computes the return code: `ok` maps a successful answer.
fn finish(out: Outcome<CriuResp>, ok: impl FnOnce(&CriuResp) -> c_int) -> c_int {
    match out {
        Ok(resp) => {
            set_errno(resp.cr_errno.unwrap_or(0));
            if resp.success {
                ok(&resp)
            } else {
                -libc::EBADE
            }
        }
        Err(f) => {
            set_errno(f.errno);
            f.code
        }
    }
}

pub fn check(opts: &LibOpts) -> c_int {
    // libcriu sends CHECK without options.
    let req = CriuReq {
        r#type: CriuReqType::Check as i32,
        ..Default::default()
    };
    finish(call(opts, &opts.service, &req), |_| 0)
}

/// DUMP (0, or 1 in a process restored from this self-dump) or SINGLE_PRE_DUMP (0).
pub fn dump(opts: &LibOpts, pre_dump: bool) -> c_int {
    let kind = if pre_dump {
        CriuReqType::SinglePreDump
    } else {
        CriuReqType::Dump
    };
    let req = request(kind, opts);
    finish(call(opts, &opts.service, &req), |resp| {
        let restored = resp.dump.as_ref().is_some_and(|d| d.restored());
        c_int::from(!pre_dump && restored)
    })
}

pub fn restore(opts: &LibOpts) -> c_int {
    let req = request(CriuReqType::Restore, opts);
    finish(call(opts, &opts.service, &req), restored_pid)
}

/// RESTORE with rst_sibling, from a server that is our child, so that the restored tree becomes
/// our child. Service sockets cannot do that: like libcriu we switch to a child server (ours is
/// the embedded one unless a binary was set).
pub fn restore_child(opts: &LibOpts) -> c_int {
    let service = match &opts.service {
        Service::Binary(b) => Service::Binary(b.clone()),
        _ => Service::Embedded,
    };
    let mut req = request(CriuReqType::Restore, opts);
    if let Some(o) = req.opts.as_mut() {
        o.rst_sibling = Some(true);
    }
    finish(call(opts, &service, &req), restored_pid)
}

fn restored_pid(resp: &CriuResp) -> c_int {
    match &resp.restore {
        Some(r) => r.pid,
        None => -libc::EBADMSG,
    }
}

/// PRE_DUMP while `more` returns > 0, then DUMP, on one connection. `more` < 0 aborts with that
/// value. Needs a pid (no iterative self-dump) and a callback, else -EINVAL. The options are
/// read again (`current`) before each request: `more` typically moves the images directory and
/// the parent link on to the next iteration, as with libcriu.
pub fn dump_iters(current: &dyn Fn() -> Option<LibOpts>, more: Option<MoreFn>) -> c_int {
    let Some(first) = current() else {
        set_errno(0);
        return -libc::EINVAL;
    };
    let (Some(more), Some(_)) = (more, first.rpc.pid) else {
        set_errno(0);
        return -libc::EINVAL;
    };
    let run = || -> Outcome<CriuResp> {
        let mut opts = first;
        check_supported(&opts.service, &request(CriuReqType::PreDump, &opts))?;
        let conn = transport::connect(&opts.service, false).map_err(|e| {
            log_line(&format!("cannot connect to criu: {e}"));
            fail(libc::ECONNREFUSED, e as i32)
        })?;
        loop {
            let pre = request(CriuReqType::PreDump, &opts);
            check_supported(&opts.service, &pre)?;
            let resp = exchange(conn.sk(), &pre, opts.notify)?;
            if !resp.success {
                return Ok(resp);
            }
            // SAFETY: the caller registered `more` with this signature; libcriu passes NULL.
            let more = unsafe { more(std::ptr::null_mut()) };
            if more < 0 {
                return Err(Failure {
                    code: more,
                    errno: 0,
                });
            }
            opts = current().ok_or(Failure {
                code: -libc::EINVAL,
                errno: 0,
            })?;
            if more == 0 {
                break;
            }
        }
        let last = request(CriuReqType::Dump, &opts);
        check_supported(&opts.service, &last)?;
        exchange(conn.sk(), &last, opts.notify)
    };
    finish(run(), |_| 0)
}

/// major * 10000 + minor * 100 + sublevel; a git build (gitid set) counts as the next minor.
pub fn get_version(opts: &LibOpts) -> c_int {
    let req = request(CriuReqType::Version, opts);
    finish(call(opts, &opts.service, &req), |resp| {
        match &resp.version {
            Some(v) => {
                let mut version =
                    v.major_number * 10000 + v.minor_number * 100 + v.sublevel.unwrap_or(0);
                if v.gitid.is_some() {
                    version = version - version % 100 + 100;
                }
                version
            }
            None => -libc::EBADMSG,
        }
    })
}

/// 1 if the server is at least `minimum`, 0 if older, < 0 on error.
pub fn check_version(opts: &LibOpts, minimum: c_int) -> c_int {
    match get_version(opts) {
        v if v < 0 => v,
        v => c_int::from(minimum <= v),
    }
}

/// The features `asked` (mem_track, lazy_pages, pidfd_store, as C bools) that the server has.
pub fn feature_check(opts: &LibOpts, asked: [bool; 3]) -> Result<[bool; 3], c_int> {
    let on = |b: bool| b.then_some(true);
    let mut req = request(CriuReqType::FeatureCheck, opts);
    req.features = Some(CriuFeatures {
        mem_track: on(asked[0]),
        lazy_pages: on(asked[1]),
        pidfd_store: on(asked[2]),
    });
    let mut have = [false; 3];
    let ret = finish(call(opts, &opts.service, &req), |resp| {
        match &resp.features {
            Some(f) => {
                have = [f.mem_track(), f.lazy_pages(), f.pidfd_store()];
                0
            }
            None => -libc::EBADMSG,
        }
    });
    if ret == 0 {
        Ok(have)
    } else {
        Err(ret)
    }
}
