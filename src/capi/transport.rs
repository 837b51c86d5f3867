//! Reaching a server for one operation, as libcriu does: a caller-supplied socket, a `criu
//! service` socket, or a freshly forked child server over a socketpair. The child either execs
//! `BINARY swrk FD` or, by default, runs our RPC server in-process (the embedded helper). Either
//! child first sends its pid as one 4-byte packet, which is how the parent knows it started.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use super::opts::Service;
use crate::sys::fork::{self, Forked};
use crate::sys::{logfd, sock};

/// A connection for one operation. Dropping it closes the socket, then reaps the child server
/// we forked, if any (libcriu's swrk_wait).
pub struct Connection {
    sk: Option<OwnedFd>,
    child: Option<Pid>,
    /// The pid a forked server reported (after it detached, for a self-dump).
    server_pid: Option<i32>,
}

impl Connection {
    pub fn sk(&self) -> BorrowedFd<'_> {
        self.sk.as_ref().expect("socket is open until drop").as_fd()
    }

    pub fn server_pid(&self) -> Option<i32> {
        self.server_pid
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Close first: the child server ends when it sees EOF.
        drop(self.sk.take());
        if let Some(pid) = self.child {
            while let Err(Errno::EINTR) = waitpid(pid, None) {}
        }
    }
}

/// How a forked child server runs.
enum ChildServer {
    /// exec `argv[0] swrk FD`.
    Exec(Vec<CString>),
    /// Our RPC server, without exec.
    Embedded,
}

/// Connects as `service` says. `detach`: the request is a self-dump, so a child server must
/// leave our process tree first (it would be dumped along with us otherwise).
pub fn connect(service: &Service, detach: bool) -> Result<Connection, Errno> {
    match service {
        Service::Fd(fd) => Ok(Connection {
            sk: Some(sock::adopt_inherited(*fd)?),
            child: None,
            server_pid: None,
        }),
        Service::Address(path) => Ok(Connection {
            sk: Some(sock::connect_seqpacket(path)?),
            child: None,
            server_pid: None,
        }),
        Service::Binary(binary) => spawn(Some(binary), detach),
        Service::Embedded => spawn(None, detach),
    }
}

fn spawn(binary: Option<&CString>, detach: bool) -> Result<Connection, Errno> {
    let (ours, theirs) = sock::seqpacket_pair()?;
    // Build everything the child needs before fork: the child of a multi-threaded caller
    // should do as little as possible.
    let how = match binary {
        Some(bin) => {
            let fd = CString::new(theirs.as_raw_fd().to_string()).map_err(|_| Errno::EINVAL)?;
            ChildServer::Exec(vec![bin.clone(), c"swrk".to_owned(), fd])
        }
        None => {
            // The engine's kernel facts are a once-cell: should another thread of the caller be
            // filling it at the fork, the child would wait forever for a thread it does not
            // have. Fill it here first (or wait for whoever is filling it).
            let _ = crate::kerndat::get();
            ChildServer::Embedded
        }
    };
    match fork::fork()? {
        Forked::Child => {
            drop(ours);
            let code = std::panic::catch_unwind(|| child_main(theirs, &how, detach)).unwrap_or(1);
            fork::exit_now(code)
        }
        Forked::Parent(child) => {
            drop(theirs);
            let started = read_child_pid(ours.as_fd());
            if started.is_err() || detach {
                // A detached server's first process exits at once; a failed one is dead.
                while let Err(Errno::EINTR) = waitpid(child, None) {}
            }
            Ok(Connection {
                sk: Some(ours),
                child: (!detach).then_some(child),
                server_pid: Some(started?),
            })
        }
    }
}

/// The forked child: becomes the server. Returns the exit code if it cannot.
fn child_main(sk: OwnedFd, how: &ChildServer, detach: bool) -> i32 {
    // Callers often block SIGCHLD; the server needs it (libcriu unblocks it too).
    fork::unblock_sigchld();
    if detach && fork::detach(true, false).is_err() {
        logfd::write_line(b"libcriu: cannot detach the server for a self-dump\n");
        return 1;
    }
    let pid = std::process::id() as i32;
    if sock::send_packet(sk.as_fd(), &pid.to_ne_bytes(), None).is_err() {
        return 1;
    }
    match how {
        ChildServer::Exec(argv) => {
            if fork::clear_cloexec(sk.as_fd()).is_err() {
                return 1;
            }
            let err = nix::unistd::execvp(&argv[0], argv).unwrap_err();
            let line = format!("libcriu: cannot exec {:?} swrk: {err}\n", argv[0]);
            logfd::write_line(line.as_bytes());
            1
        }
        ChildServer::Embedded => {
            // Look like a freshly exec'd `criu swrk`: default signal handlers, and none of the
            // descriptors the caller marked close-on-exec.
            fork::reset_signal_handlers();
            let mut keep = vec![sk.as_raw_fd()];
            keep.extend(logfd::current());
            fork::close_cloexec_fds(&keep);
            crate::rpc::serve(sk)
        }
    }
}

/// The child server's first packet: its pid. An error means it never started.
fn read_child_pid(sk: BorrowedFd<'_>) -> Result<i32, Errno> {
    match sock::recv_packet(sk)? {
        Some(p) if p.data.len() == 4 => Ok(i32::from_ne_bytes([
            p.data[0], p.data[1], p.data[2], p.data[3],
        ])),
        Some(_) => Err(Errno::EBADMSG),
        None => Err(Errno::ECONNRESET),
    }
}
