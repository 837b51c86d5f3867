//! Where the log goes. Each line is one write(2) on a descriptor number that, once chosen, never
//! changes: switching to another file dup()s the new file over that number. No lock is taken, so
//! a helper forked from a multi-threaded program can log even if one of the parent's threads was
//! logging at the moment of fork, and a write racing with a switch never hits a closed or reused
//! descriptor.

use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::errno::Errno;

/// The log descriptor, or -1 while the log goes to stderr.
static LOG_FD: AtomicI32 = AtomicI32::new(-1);

/// Sends the log to `file`, or back to stderr with None.
pub fn redirect(file: Option<OwnedFd>) -> nix::Result<()> {
    let cur = LOG_FD.load(Ordering::Acquire);
    match file {
        Some(file) if cur < 0 => {
            let raw = file.into_raw_fd();
            if let Err(winner) =
                LOG_FD.compare_exchange(-1, raw, Ordering::AcqRel, Ordering::Acquire)
            {
                // Another thread chose the number first: point it at our file instead.
                let r = dup_over(raw, winner);
                // SAFETY: `raw` came from into_raw_fd above and is ours alone.
                unsafe { libc::close(raw) };
                return r;
            }
            Ok(())
        }
        Some(file) => dup_over(file.as_raw_fd(), cur),
        None if cur >= 0 => dup_over(libc::STDERR_FILENO, cur),
        None => Ok(()),
    }
}

/// The descriptor the log writes to (a helper that closes descriptors must keep it).
pub fn current() -> Option<RawFd> {
    let fd = LOG_FD.load(Ordering::Acquire);
    (fd >= 0).then_some(fd)
}

/// Writes one log line. Errors are dropped: there is nowhere left to report them.
pub fn write_line(line: &[u8]) {
    let fd = current().unwrap_or(libc::STDERR_FILENO);
    let mut rest = line;
    while !rest.is_empty() {
        // SAFETY: `rest` is a valid buffer; a bad descriptor only makes write fail.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        if n > 0 {
            rest = &rest[n as usize..];
        } else if n < 0 && Errno::last() == Errno::EINTR {
            continue;
        } else {
            return;
        }
    }
}

fn dup_over(src: RawFd, dst: RawFd) -> nix::Result<()> {
    if src == dst {
        return Ok(());
    }
    // SAFETY: dup3 replaces `dst` atomically; both numbers are descriptors this module manages.
    let r = unsafe { libc::dup3(src, dst, libc::O_CLOEXEC) };
    Errno::result(r).map(|_| ())
}
