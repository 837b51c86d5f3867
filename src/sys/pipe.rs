//! Pipes as the dump and restore of pipes and FIFOs need them: capacity, bytes queued, and
//! tee(2), which copies a pipe's buffers into another pipe without consuming them.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

use crate::error::{Error, Result};

/// A new pipe, both ends close-on-exec and non-blocking (filling it must never hang).
pub fn pipe_nonblocking() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two ints into the array we pass.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if r < 0 {
        return Err(Error::last("pipe2"));
    }
    // SAFETY: the kernel returned two new fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// F_GETPIPE_SZ: the pipe's capacity in bytes.
pub fn capacity(fd: BorrowedFd<'_>) -> Result<u32> {
    // SAFETY: fcntl without a pointer argument.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) };
    if r < 0 {
        return Err(Error::last("fcntl(F_GETPIPE_SZ)"));
    }
    Ok(r as u32)
}

/// F_SETPIPE_SZ. Without CAP_SYS_RESOURCE the kernel refuses sizes above
/// /proc/sys/fs/pipe-max-size with EPERM: the error says so.
pub fn set_capacity(fd: BorrowedFd<'_>, size: u32) -> Result<()> {
    // SAFETY: fcntl with an integer argument.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
    if r < 0 {
        let errno = Errno::last();
        let what = if errno == Errno::EPERM {
            format!(
                "fcntl(F_SETPIPE_SZ, {size}): above fs.pipe-max-size ({}) and no CAP_SYS_RESOURCE",
                max_size().map_or("unknown".to_owned(), |m| m.to_string())
            )
        } else {
            format!("fcntl(F_SETPIPE_SZ, {size})")
        };
        return Err(Error::sys(what, errno));
    }
    Ok(())
}

/// /proc/sys/fs/pipe-max-size: the largest capacity an unprivileged F_SETPIPE_SZ may set.
pub fn max_size() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// FIONREAD: bytes waiting in a pipe (or in a socket's receive queue).
pub fn queued_bytes(fd: BorrowedFd<'_>) -> Result<u32> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    if r < 0 {
        return Err(Error::last("ioctl(FIONREAD)"));
    }
    Ok(n as u32)
}

/// tee(2) without blocking: copies up to `len` bytes from the pipe `from` (which must be open
/// for reading) into the pipe `to`, leaving `from` as it was. An empty pipe gives 0.
pub fn tee(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> Result<usize> {
    // SAFETY: tee takes two fds, a length and flags; no memory.
    let r = unsafe {
        libc::tee(
            from.as_raw_fd(),
            to.as_raw_fd(),
            len,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    if r < 0 {
        let errno = Errno::last();
        if errno == Errno::EAGAIN {
            return Ok(0);
        }
        return Err(Error::sys("tee", errno));
    }
    Ok(r as usize)
}
