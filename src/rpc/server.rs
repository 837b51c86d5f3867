//! Serving one client connection: read requests, run them, answer. Like CRIU's cr_service_work:
//! one request per connection unless it carries keep_open (allowed for VERSION, FEATURE_CHECK
//! the page server requests and the not-yet-supported cpuinfo requests), and PRE_DUMP requests chain on
//! one connection until the final DUMP.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};

use nix::errno::Errno;

use crate::engine::{self, NoNotify, Notify};
use crate::error::{Error, Result};
use crate::options::Options;
use crate::pb::{
    CriuDumpResp, CriuFeatures, CriuOpts, CriuPageServerInfo, CriuReq, CriuReqType, CriuResp,
    CriuRestoreResp, CriuVersion,
};
use crate::rpc::convert::{self, Client, ClientFds, Purpose};
use crate::rpc::notify::RpcNotify;
use crate::rpc::wire;
use crate::sys::{fork, sock};

/// One client connection.
pub struct Connection {
    sk: OwnedFd,
    peer_pid: i32,
    sk_ino: u64,
    /// We are the client's child (swrk, embedded helper), not a standalone service.
    is_parent: bool,
}

impl Connection {
    pub fn new(sk: OwnedFd, is_parent: bool) -> Result<Self> {
        let peer_pid = sock::peer_pid(sk.as_fd()).map_err(|e| Error::sys("SO_PEERCRED", e))?;
        let sk_ino = sock::socket_inode(sk.as_fd()).map_err(|e| Error::sys("fstat(socket)", e))?;
        Ok(Connection {
            sk,
            peer_pid,
            sk_ino,
            is_parent,
        })
    }

    /// Serves requests until the connection is done. Returns the process exit code: 0 when the
    /// last request succeeded.
    pub fn serve(&mut self) -> i32 {
        let mut served = false;
        loop {
            let req = match wire::recv::<CriuReq>(self.sk.as_fd(), "criu_req") {
                Ok(Some(r)) => r.msg,
                Ok(None) => {
                    if !served {
                        log::info!("the client closed the connection without a request");
                    }
                    return if served { 0 } else { 1 };
                }
                Err(e) => {
                    self.send_invalid(&e);
                    return 1;
                }
            };
            served = true;
            let keep_open = req.keep_open();
            if keep_open && !keep_open_allowed(req.r#type) {
                let e = Error::Rpc(format!(
                    "keep_open is not allowed for request type {}",
                    type_name(req.r#type)
                ));
                self.send_invalid(&e);
                return 1;
            }
            let ok = self.handle(req);
            if !ok || !keep_open {
                return if ok { 0 } else { 1 };
            }
        }
    }

    /// Runs one request and answers it. True when it succeeded.
    fn handle(&mut self, req: CriuReq) -> bool {
        let Ok(kind) = CriuReqType::try_from(req.r#type) else {
            self.send_invalid(&Error::Rpc(format!("unknown request type {}", req.r#type)));
            return false;
        };
        log::debug!("request {}", kind.as_str_name());
        match kind {
            CriuReqType::Dump => self.dump(req.opts.unwrap_or_default()),
            CriuReqType::PreDump => self.pre_dump_chain(req),
            CriuReqType::SinglePreDump => {
                self.pre_dump(req.opts.unwrap_or_default(), CriuReqType::SinglePreDump)
            }
            CriuReqType::Restore => self.restore(req.opts.unwrap_or_default()),
            CriuReqType::Check => self.check(req.opts.unwrap_or_default()),
            CriuReqType::Version => self.version(),
            CriuReqType::FeatureCheck => self.feature_check(req.features),
            CriuReqType::WaitPid => self.wait_pid(req.pid),
            CriuReqType::PageServer | CriuReqType::PageServerChld => {
                self.page_server(req.opts.unwrap_or_default(), kind)
            }
            CriuReqType::CpuinfoDump | CriuReqType::CpuinfoCheck => {
                let msg = format!("{}: not supported yet", kind.as_str_name());
                log::error!("{msg}");
                let mut resp = response(kind, false);
                resp.cr_errno = Some(libc::EOPNOTSUPP);
                resp.cr_errmsg = Some(msg);
                self.send(&resp);
                false
            }
            CriuReqType::Notify => {
                self.send_invalid(&Error::Rpc("NOTIFY answer outside a notification".into()));
                false
            }
            CriuReqType::Empty => {
                self.send_invalid(&Error::Rpc("empty request".into()));
                false
            }
        }
    }

    fn dump(&mut self, req: CriuOpts) -> bool {
        // CRIU's rule: no pid means the client dumps itself.
        let self_dump = req.pid.unwrap_or(0) == 0;
        let leave_running = req.leave_running();
        let result = self.prepare(&req, Purpose::Dump).and_then(|opts| {
            if self_dump && req.notify_scripts() {
                // post-dump is sent while the client is frozen: it could never answer.
                return Err(Error::BadRequest(
                    "notifications cannot be delivered to a process that dumps itself".into(),
                ));
            }
            let sk = self.sk.as_fd();
            run_engine(|| engine::dump(&opts, notifier(sk, &req).as_mut()))
        });
        let success = result.is_ok();
        // A successful self-dump killed the client (unless it keeps running): nobody to answer.
        // The restored client gets its answer from the socket the restore rebuilds.
        if leave_running || !self_dump || !success {
            let mut resp = outcome(CriuReqType::Dump, result.as_ref().err());
            resp.dump = Some(CriuDumpResp {
                restored: Some(result.as_ref().is_ok_and(|o| o.restored)),
            });
            self.send(&resp);
        }
        success
    }

    fn pre_dump(&mut self, req: CriuOpts, kind: CriuReqType) -> bool {
        let result = self.prepare(&req, Purpose::PreDump).and_then(|opts| {
            let sk = self.sk.as_fd();
            run_engine(|| engine::pre_dump(&opts, notifier(sk, &req).as_mut()))
        });
        self.send(&outcome(kind, result.as_ref().err()));
        result.is_ok()
    }

    /// PRE_DUMP, PRE_DUMP..., DUMP on one connection (criu_dump_iters).
    fn pre_dump_chain(&mut self, first: CriuReq) -> bool {
        let mut req = first;
        loop {
            if !self.pre_dump(req.opts.unwrap_or_default(), CriuReqType::PreDump) {
                return false;
            }
            req = match wire::recv::<CriuReq>(self.sk.as_fd(), "criu_req") {
                Ok(Some(r)) => r.msg,
                Ok(None) => {
                    log::info!("the client ended the pre-dump iterations without a dump");
                    return false;
                }
                Err(e) => {
                    self.send_invalid(&e);
                    return false;
                }
            };
            match CriuReqType::try_from(req.r#type) {
                Ok(CriuReqType::PreDump) => continue,
                Ok(CriuReqType::Dump) => return self.dump(req.opts.unwrap_or_default()),
                _ => {
                    let e = Error::Rpc(format!(
                        "bad request sequence: {} after PRE_DUMP (expected PRE_DUMP or DUMP)",
                        type_name(req.r#type)
                    ));
                    self.send_invalid(&e);
                    return false;
                }
            }
        }
    }

    fn restore(&mut self, req: CriuOpts) -> bool {
        let result = self.prepare(&req, Purpose::Restore).and_then(|opts| {
            let sk = self.sk.as_fd();
            run_engine(|| engine::restore(&opts, notifier(sk, &req).as_mut()))
        });
        let mut resp = outcome(CriuReqType::Restore, result.as_ref().err());
        resp.restore = Some(CriuRestoreResp {
            pid: result.as_ref().map_or(-1, |o| o.pid),
        });
        self.send(&resp);
        result.is_ok()
    }

    /// CHECK: the options (and log file) must be usable, and this kernel must offer what dump
    /// and restore need (CRIU runs its `criu check` here).
    fn check(&mut self, req: CriuOpts) -> bool {
        let result = self
            .prepare(&req, Purpose::Check)
            .and_then(|_| run_engine(kernel_check));
        self.send(&outcome(CriuReqType::Check, result.as_ref().err()));
        result.is_ok()
    }

    /// Starts a page server in a child (PAGE_SERVER: in its own session, outliving us) that
    /// receives one dump, and reports its pid and port.
    fn page_server(&mut self, req: CriuOpts, kind: CriuReqType) -> bool {
        let started = self.prepare(&req, Purpose::PageServer).and_then(|opts| {
            if opts.auto_dedup {
                return Err(Error::OptionNotSupported("auto-dedup"));
            }
            let (address, port) = match &opts.page_server {
                Some(ps) => (ps.address.clone(), ps.port),
                None => (None, 0),
            };
            let listener = crate::pageserver::server::listen(address.as_deref(), port)?;
            let port = listener.port;
            match fork::fork().map_err(|e| Error::sys("fork the page server", e))? {
                fork::Forked::Child => {
                    let _ = crate::sys::probe::close_inherited_fd(self.sk.as_raw_fd());
                    if kind == CriuReqType::PageServer {
                        let _ = nix::unistd::setsid();
                    }
                    let code = match listener.serve_one(&opts) {
                        Ok(()) => 0,
                        Err(e) => {
                            log::error!("{e}");
                            1
                        }
                    };
                    fork::exit_now(code)
                }
                fork::Forked::Parent(pid) => Ok((pid.as_raw(), port)),
            }
        });
        let mut resp = outcome(kind, started.as_ref().err());
        if let Ok((pid, port)) = started {
            log::info!("page server started: pid {pid}, port {port}");
            resp.ps = Some(CriuPageServerInfo {
                address: None,
                port: Some(port as i32),
                pid: Some(pid),
                fd: None,
            });
        }
        self.send(&resp) && resp.success
    }

    fn version(&mut self) -> bool {
        let mut resp = response(CriuReqType::Version, true);
        resp.version = Some(CriuVersion {
            major_number: crate::VERSION_MAJOR as i32,
            minor_number: crate::VERSION_MINOR as i32,
            sublevel: Some(crate::VERSION_SUBLEVEL as i32),
            // A gitid would make libcriu report minor + 1, as for CRIU's git builds.
            gitid: None,
            extra: None,
            name: None,
        });
        self.send(&resp)
    }

    /// Answers each requested feature; unrequested ones are reported false, as CRIU does.
    fn feature_check(&mut self, asked: Option<CriuFeatures>) -> bool {
        let Some(asked) = asked else {
            let e = Error::Rpc("FEATURE_CHECK without a features field".into());
            log::error!("{e}");
            self.send(&outcome(CriuReqType::FeatureCheck, Some(&e)));
            return false;
        };
        let have = match run_engine(|| Ok(engine::features())) {
            Ok(f) => f,
            Err(e) => {
                self.send(&outcome(CriuReqType::FeatureCheck, Some(&e)));
                return false;
            }
        };
        let mut resp = response(CriuReqType::FeatureCheck, true);
        resp.features = Some(CriuFeatures {
            mem_track: Some(asked.mem_track() && have.mem_track),
            lazy_pages: Some(asked.lazy_pages() && have.lazy_pages),
            pidfd_store: Some(asked.pidfd_store() && have.pidfd_store),
        });
        self.send(&resp)
    }

    /// WAIT_PID: the wait status of one of our children (a tree restored detached by us).
    fn wait_pid(&mut self, pid: Option<u32>) -> bool {
        let result = match pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 0) {
            Some(pid) => {
                fork::wait_status(pid).map_err(|e| Error::sys(format!("waitpid({pid})"), e))
            }
            None => Err(Error::InvalidOptions("WAIT_PID without a valid pid".into())),
        };
        if let Err(e) = &result {
            log::error!("{e}");
        }
        let mut resp = outcome(CriuReqType::WaitPid, result.as_ref().err());
        resp.status = result.as_ref().ok().copied();
        self.send(&resp);
        result.is_ok()
    }

    /// Request options to engine options, plus what only the server knows, and the log opened
    /// in the work dir. Unlike CRIU we do not chdir there: every path handed to the engine is
    /// absolute already, and the embedded helper and tests share no cwd assumptions.
    /// Failures are CRIU's EBADRQC, except options this build does not implement yet.
    fn prepare(&self, req: &CriuOpts, purpose: Purpose) -> Result<Options> {
        self.prepare_options(req, purpose).map_err(|e| match e {
            Error::OptionNotSupported(_) => e,
            Error::InvalidOptions(msg) => Error::BadRequest(msg),
            e => Error::BadRequest(e.to_string()),
        })
    }

    fn prepare_options(&self, req: &CriuOpts, purpose: Purpose) -> Result<Options> {
        let client = Client {
            fds: ClientFds::Peer(self.peer_pid),
            is_parent: self.is_parent,
        };
        let mut opts =
            convert::options_from_req(req, purpose, client).inspect_err(|e| log::error!("{e}"))?;
        opts.rpc_server_socket_ino = Some(self.sk_ino);
        let log_file = opts.log_file.as_ref().map(|f| opts.work_dir().join(f));
        crate::logging::init(log_file.as_deref(), opts.log_level, opts.log_pid).map_err(|e| {
            let file = log_file
                .as_deref()
                .unwrap_or(std::path::Path::new("stderr"));
            let e = Error::io(format!("opening the log file {}", file.display()), e);
            log::error!("{e}");
            e
        })?;
        log::info!(
            "{purpose:?} requested by pid {} (images dir {})",
            self.peer_pid,
            opts.images_dir.display()
        );
        if purpose != Purpose::Check {
            if let Some(why) = crate::kerndat::privilege_problem(opts.unprivileged) {
                log::error!("{why}");
                return Err(Error::BadRequest(why));
            }
        }
        Ok(opts)
    }

    /// Answers an unusable request the way CRIU does: type EMPTY, success false (libcriu turns
    /// that into -EINVAL).
    fn send_invalid(&self, e: &Error) {
        log::error!("{e}");
        let mut resp = response(CriuReqType::Empty, false);
        resp.cr_errno = Some(e.errno());
        resp.cr_errmsg = Some(e.to_string());
        self.send(&resp);
    }

    fn send(&self, resp: &CriuResp) -> bool {
        match wire::send(self.sk.as_fd(), resp, None) {
            Ok(()) => true,
            Err(e) => {
                log::error!("cannot answer the client: {e}");
                false
            }
        }
    }
}

/// What `criu check` reports as missing for dump or restore, as one error.
fn kernel_check() -> Result<()> {
    let k = crate::kerndat::get();
    let mut missing = k.missing_for_dump();
    missing.extend(k.missing_for_restore());
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::sys(
        format!(
            "dump and restore cannot work here: no {}",
            missing.join(", ")
        ),
        Errno::ENOSYS,
    ))
}

/// The notifier for a request: round trips with the client if it asked for notifications.
fn notifier<'a>(sk: BorrowedFd<'a>, req: &CriuOpts) -> Box<dyn Notify + 'a> {
    if req.notify_scripts() {
        Box::new(RpcNotify::new(sk))
    } else {
        Box::new(NoNotify)
    }
}

/// Runs engine code; a panic becomes an error answer instead of a dead server (and, in the
/// library's embedded helper, instead of unwinding into the host program's stack frames).
fn run_engine<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => {
            if let Err(e) = &r {
                log::error!("{e}");
            }
            r
        }
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            log::error!("internal error: {msg}");
            Err(Error::sys(
                format!("internal error ({msg})"),
                Errno::ENOTRECOVERABLE,
            ))
        }
    }
}

fn response(kind: CriuReqType, success: bool) -> CriuResp {
    CriuResp {
        r#type: kind as i32,
        success,
        ..Default::default()
    }
}

/// A response of `kind`: success, or failure carrying the error's errno and message.
fn outcome(kind: CriuReqType, err: Option<&Error>) -> CriuResp {
    let mut resp = response(kind, err.is_none());
    if let Some(e) = err {
        resp.cr_errno = Some(e.errno());
        resp.cr_errmsg = Some(e.to_string());
    }
    resp
}

fn keep_open_allowed(kind: i32) -> bool {
    matches!(
        CriuReqType::try_from(kind),
        Ok(CriuReqType::PageServer
            | CriuReqType::PageServerChld
            | CriuReqType::CpuinfoDump
            | CriuReqType::CpuinfoCheck
            | CriuReqType::FeatureCheck
            | CriuReqType::Version)
    )
}

fn type_name(kind: i32) -> String {
    match CriuReqType::try_from(kind) {
        Ok(k) => k.as_str_name().to_string(),
        Err(_) => kind.to_string(),
    }
}
