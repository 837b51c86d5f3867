//! Fd-table manipulation for the task being restored.

use std::os::fd::RawFd;

use nix::errno::Errno;

use crate::error::{Error, Result};

/// Closes every fd in [first, last].
pub fn close_range(first: u32, last: u32) -> Result<()> {
    // SAFETY: closing fds; the caller guarantees no live Rust object owns them (the task being
    // restored gives up every fd the restorer had).
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
    if r < 0 {
        return Err(Error::sys(
            format!("close_range({first}, {last})"),
            Errno::last(),
        ));
    }
    Ok(())
}

/// Moves `fd` to the lowest free number >= `min` (close-on-exec) and closes the old number.
pub fn move_above(fd: RawFd, min: RawFd) -> Result<RawFd> {
    // SAFETY: plain fcntl/close on an fd the caller owns.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    if new < 0 {
        return Err(Error::last(format!("fcntl(F_DUPFD, {fd})")));
    }
    unsafe { libc::close(fd) };
    Ok(new)
}

/// Puts `fd` at number `target` (dup2 semantics, target replaced) with FD_CLOEXEC as given.
pub fn install(fd: RawFd, target: RawFd, cloexec: bool) -> Result<()> {
    let flags = if cloexec { libc::O_CLOEXEC } else { 0 };
    if fd != target {
        // SAFETY: dup3 onto a number the restored task's table reserves for this file.
        let r = unsafe { libc::dup3(fd, target, flags) };
        if r < 0 {
            return Err(Error::last(format!("dup3({fd}, {target})")));
        }
    } else {
        // SAFETY: plain fcntl.
        let r = unsafe {
            libc::fcntl(
                fd,
                libc::F_SETFD,
                if cloexec { libc::FD_CLOEXEC } else { 0 },
            )
        };
        if r < 0 {
            return Err(Error::last(format!("fcntl(F_SETFD, {fd})")));
        }
    }
    Ok(())
}

pub fn close(fd: RawFd) {
    // SAFETY: closes an fd the caller owns.
    unsafe { libc::close(fd) };
}

/// Borrows one of the standard fds (0-2), which stay open for the whole restore.
pub fn borrow_std(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    assert!((0..3).contains(&fd));
    // SAFETY: fds 0-2 of the restorer outlive every use (checked range above).
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// Takes back ownership of an fd number that was handed around as a raw number.
pub fn owned(fd: RawFd) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: the caller moved an fd it owned to this number and nothing else owns it.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

/// Borrows an fd number the caller keeps open for the borrow's lifetime.
pub fn borrow<'a>(fd: RawFd) -> std::os::fd::BorrowedFd<'a> {
    assert!(fd >= 0);
    // SAFETY: callers only borrow fds they opened and close later.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// Opens /dev/null on whichever of fds 0-2 is closed. Clients such as pycriu exec `criu swrk`
/// with them closed; the next files we open would take those numbers, and a stray write to
/// "stderr" would land in an image or a log.
pub fn ensure_std_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only inspects the descriptor table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            continue;
        }
        // SAFETY: open takes a NUL-terminated path; the lowest free number is `fd` itself.
        let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        if null >= 0 && null != fd {
            // SAFETY: closing the descriptor we just opened at an unexpected number.
            unsafe { libc::close(null) };
        }
    }
}

/// The populated ranges of a file up to `size`, page-aligned (SEEK_DATA/SEEK_HOLE).
pub fn data_ranges(f: &std::fs::File, size: u64) -> crate::error::Result<Vec<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    const PAGE: u64 = 4096;
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        // SAFETY: lseek only moves the file offset.
        let data = unsafe { libc::lseek(f.as_raw_fd(), pos as i64, libc::SEEK_DATA) };
        if data < 0 {
            let e = nix::errno::Errno::last();
            if e == nix::errno::Errno::ENXIO {
                break;
            }
            return Err(crate::error::Error::sys("lseek(SEEK_DATA)", e));
        }
        let data = (data as u64 / PAGE) * PAGE;
        if data >= size {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(f.as_raw_fd(), data as i64, libc::SEEK_HOLE) };
        let hole = if hole < 0 {
            size
        } else {
            (hole as u64).div_ceil(PAGE) * PAGE
        }
        .min(size);
        out.push((data, hole));
        pos = hole;
    }
    Ok(out)
}
