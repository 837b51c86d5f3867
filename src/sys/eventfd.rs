//! eventfd(2) for the restore: a new counter, and adding to it.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::error::{Error, Result};

/// A new eventfd at 0, close-on-exec and non-blocking (so that `add` can never hang);
/// `semaphore` gives EFD_SEMAPHORE, which only eventfd() can set.
pub fn create(semaphore: bool) -> Result<OwnedFd> {
    let mut flags = libc::EFD_CLOEXEC | libc::EFD_NONBLOCK;
    if semaphore {
        flags |= libc::EFD_SEMAPHORE;
    }
    // SAFETY: eventfd takes two integers.
    let r = unsafe { libc::eventfd(0, flags) };
    if r < 0 {
        return Err(Error::last("eventfd"));
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// Adds `value` to the counter (eventfd() itself only takes a 32-bit initial value).
pub fn add(fd: BorrowedFd<'_>, value: u64) -> Result<()> {
    let bytes = value.to_ne_bytes();
    // SAFETY: writes 8 bytes from a local array.
    let r = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    if r != bytes.len() as isize {
        return Err(Error::last(format!("write({value}) to an eventfd")));
    }
    Ok(())
}
