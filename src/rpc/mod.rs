//! CRIU's RPC protocol: one `criu_req`/`criu_resp` protobuf per SOCK_SEQPACKET packet.
//!
//! Three ways in, one server loop (`server::Connection`):
//! - `swrk(fd)`: `criu swrk FD`, started by libcriu, pycriu, go-criu and runc on an inherited
//!   socket; one client, we are its child.
//! - `service(path, ...)`: `criu service --address PATH`; one forked worker per connection.
//! - `serve(sock)`: the library's embedded helper, forked from the library caller without exec.

pub mod convert;
mod notify;
mod server;
pub mod wire;

use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::path::Path;

use crate::sys::{fork, sock};

pub use notify::RpcNotify;

/// `criu swrk FD`: serves requests on an inherited socket until the peer closes it. Returns the
/// exit code.
pub fn swrk(fd: RawFd) -> i32 {
    let _ = crate::logging::init(None, 2, false);
    match sock::adopt_inherited(fd) {
        Ok(sk) => serve_as_child(sk),
        Err(e) => {
            log::error!("criu swrk {fd}: not a socket: {e}");
            1
        }
    }
}

/// The library's embedded helper: same as swrk, on a socket we already own.
pub fn serve(sk: OwnedFd) -> i32 {
    let _ = crate::logging::init(None, 2, false);
    serve_as_child(sk)
}

fn serve_as_child(sk: OwnedFd) -> i32 {
    // A client that ignores SIGCHLD passes that on (through exec too); the engine must be able
    // to wait for the tasks it creates.
    if let Err(e) = fork::ignore_sigchld(false) {
        log::warn!("cannot reset SIGCHLD: {e}");
    }
    match server::Connection::new(sk, true) {
        Ok(mut conn) => conn.serve(),
        Err(e) => {
            log::error!("{e}");
            1
        }
    }
}

/// `criu service --address PATH`: listens on PATH (a SOCK_SEQPACKET unix socket, mode 0666) and
/// serves each connection in a forked worker, one request at a time, as CRIU does. With
/// `daemonize` it detaches first (stdio to /dev/null); `pidfile` gets the serving pid. Returns
/// only on error.
pub fn service(address: &Path, daemonize: bool, pidfile: Option<&Path>) -> i32 {
    let listener = match sock::listen_seqpacket(address) {
        Ok(l) => l,
        Err(e) => {
            log::error!("cannot listen on {}: {e}", address.display());
            return 1;
        }
    };
    log::info!("the service socket is bound to {}", address.display());
    // With daemonize, the command returns only once the service runs and its pidfile exists
    // (what an init system that starts a forking service expects).
    let ready = if daemonize {
        match background() {
            Ok(ready) => Some(ready),
            Err(e) => {
                log::error!("cannot run the service in the background: {e}");
                return 1;
            }
        }
    } else {
        None
    };
    if let Some(pidfile) = pidfile {
        if let Err(e) = std::fs::write(pidfile, std::process::id().to_string()) {
            log::error!("cannot write the pidfile {}: {e}", pidfile.display());
            return 1;
        }
    }
    if let Some(ready) = ready {
        let _ = nix::unistd::write(&ready, b"1");
    }
    // Workers are reaped by the kernel; each worker restores SIGCHLD for its own children.
    if let Err(e) = fork::ignore_sigchld(true) {
        log::error!("cannot set up SIGCHLD: {e}");
        return 1;
    }
    loop {
        let conn = match sock::accept(listener.as_fd()) {
            Ok(c) => c,
            Err(e) => {
                log::error!("cannot accept a connection: {e}");
                return 1;
            }
        };
        log::info!("connected");
        match fork::fork() {
            Ok(fork::Forked::Child) => {
                drop(listener);
                let code = match fork::ignore_sigchld(false) {
                    Ok(()) => match server::Connection::new(conn, false) {
                        Ok(mut c) => c.serve(),
                        Err(e) => {
                            log::error!("{e}");
                            1
                        }
                    },
                    Err(e) => {
                        log::error!("cannot restore SIGCHLD: {e}");
                        1
                    }
                };
                fork::exit_now(code);
            }
            Ok(fork::Forked::Parent(_)) => drop(conn),
            Err(e) => log::error!("cannot fork a worker: {e}"),
        }
    }
}

/// Moves the service into the background (daemon(3)). The foreground process waits until the
/// background one writes to the returned pipe, and exits 0 then (1 if it died first).
pub(crate) fn background() -> nix::Result<OwnedFd> {
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    match fork::fork()? {
        fork::Forked::Parent(_) => {
            drop(ready_w);
            let mut byte = [0u8; 1];
            let started = loop {
                match nix::unistd::read(&ready_r, &mut byte) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    r => break r == Ok(1),
                }
            };
            fork::exit_now(if started { 0 } else { 1 })
        }
        fork::Forked::Child => {
            drop(ready_r);
            fork::detach(false, true)?;
            Ok(ready_w)
        }
    }
}
