//! Forking helper processes out of a library caller. The caller may be multi-threaded: a child
//! of fork() then holds copies of locks that other threads may have held, so what runs in the
//! child takes no lock shared with the parent (glibc's malloc is made safe across fork by glibc
//! itself; our log takes no lock, see `logfd`).

use std::os::fd::{BorrowedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::unistd::Pid;

/// Which side of a fork() we are on.
pub enum Forked {
    Child,
    Parent(Pid),
}

/// fork(2). The child must end with `exit_now`, never by returning into the caller's code.
pub fn fork() -> nix::Result<Forked> {
    // SAFETY: the callers' children only run our own code (no lock of the parent is taken) and
    // leave through exit_now().
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child)),
    }
}

/// _exit(2): ends a forked child without running the host program's atexit handlers or
/// flushing its stdio buffers (the parent owns those).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// daemon(3): leaves the caller's process tree (fork, the parent exits, setsid), optionally
/// moving to / and pointing stdin/stdout/stderr at /dev/null. libcriu detaches a self-dump's
/// dumper this way (so it is not part of the dumped tree); `criu service -d` daemonizes.
pub fn detach(chdir_root: bool, null_stdio: bool) -> nix::Result<()> {
    nix::unistd::daemon(!chdir_root, !null_stdio)
}

/// waitpid(2) for one child, returning the raw wait status (what WAIT_PID reports).
pub fn wait_status(pid: i32) -> nix::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-parameter.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        match nix::errno::Errno::result(r) {
            Ok(_) => return Ok(status),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Puts every caught signal back to its default action, as exec would. A helper that does not
/// exec must not run the host's handlers: a SIGCHLD handler reaping every child would steal the
/// engine's children. glibc's internal signals (32, 33) are left alone.
pub fn reset_signal_handlers() {
    let realtime = libc::SIGRTMIN()..=libc::SIGRTMAX();
    for sig in (1..32).chain(realtime) {
        // SAFETY: an all-zero sigaction is a valid out-parameter; we only read the old action
        // and install SIG_DFL, which is always allowed.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
    }
}

/// Unblocks SIGCHLD: callers of libcriu often block it, and the engine needs it to notice that
/// restored children died.
pub fn unblock_sigchld() {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
}

/// Sets SIGCHLD to SIG_IGN (children are reaped by the kernel) or back to SIG_DFL.
pub fn ignore_sigchld(ignore: bool) -> nix::Result<()> {
    let handler = if ignore {
        nix::sys::signal::SigHandler::SigIgn
    } else {
        nix::sys::signal::SigHandler::SigDfl
    };
    // SAFETY: SIG_IGN and SIG_DFL run no code of ours.
    unsafe { nix::sys::signal::signal(Signal::SIGCHLD, handler) }.map(|_| ())
}

/// Closes every descriptor marked close-on-exec except those in `keep`, so that a helper that
/// does not exec holds exactly the descriptors an exec'd `criu swrk` would.
pub fn close_cloexec_fds(keep: &[RawFd]) {
    // Collect first: the directory stream's own descriptor is close-on-exec too.
    let fds: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => return,
    };
    for fd in fds {
        if keep.contains(&fd) {
            continue;
        }
        // SAFETY: the descriptor is only inspected, and closed when the process would lose it
        // at exec anyway; nothing in this single-threaded child uses it afterwards.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC != 0 {
                libc::close(fd);
            }
        }
    }
}

/// Clears FD_CLOEXEC so that `fd` survives exec (the swrk end of the socket pair).
pub fn clear_cloexec(fd: BorrowedFd<'_>) -> nix::Result<()> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())).map(|_| ())
}
