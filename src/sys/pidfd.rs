//! pidfd_open + pidfd_getfd: our own copy of one of a task's fds, to look into the pipe or socket
//! behind it (the same open file description, so nothing about the task's fd changes).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use libc::pid_t;

use crate::error::{Error, Result};

pub struct PidFd {
    pid: pid_t,
    fd: OwnedFd,
}

impl PidFd {
    pub fn open(pid: pid_t) -> Result<PidFd> {
        // SAFETY: pidfd_open takes a pid and flags, no memory.
        let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if r < 0 {
            return Err(Error::last(format!("pidfd_open({pid})")));
        }
        // SAFETY: the kernel returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(r as RawFd) };
        Ok(PidFd { pid, fd })
    }

    /// A copy of the task's `fd`, close-on-exec. Needs ptrace-attach rights over the task
    /// (we are its tracer).
    pub fn get_fd(&self, fd: RawFd) -> Result<OwnedFd> {
        // SAFETY: pidfd_getfd takes two fds and flags (must be 0), no memory.
        let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, self.fd.as_raw_fd(), fd, 0) };
        if r < 0 {
            return Err(Error::last(format!(
                "pidfd_getfd(pid {}, fd {fd})",
                self.pid
            )));
        }
        // SAFETY: as above.
        Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
    }
}
