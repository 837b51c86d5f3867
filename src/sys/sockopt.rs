//! getsockopt/setsockopt on sockets we hold a copy of (dump) or create (restore).

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::error::{Error, Result};

// From asm-generic/socket.h, spelled out because not every libc exports them.
pub const SO_GET_FILTER: i32 = 26;
pub const SO_PEEK_OFF: i32 = 42;
pub const SO_BUF_LOCK: i32 = 72;

fn name(opt: i32) -> String {
    let known = [
        (libc::SO_TYPE, "SO_TYPE"),
        (libc::SO_DOMAIN, "SO_DOMAIN"),
        (libc::SO_PROTOCOL, "SO_PROTOCOL"),
        (libc::SO_ACCEPTCONN, "SO_ACCEPTCONN"),
        (libc::SO_SNDBUF, "SO_SNDBUF"),
        (libc::SO_RCVBUF, "SO_RCVBUF"),
        (libc::SO_SNDBUFFORCE, "SO_SNDBUFFORCE"),
        (libc::SO_RCVBUFFORCE, "SO_RCVBUFFORCE"),
        (libc::SO_SNDTIMEO, "SO_SNDTIMEO"),
        (libc::SO_RCVTIMEO, "SO_RCVTIMEO"),
        (libc::SO_PASSCRED, "SO_PASSCRED"),
        (libc::SO_PASSSEC, "SO_PASSSEC"),
        (libc::SO_PRIORITY, "SO_PRIORITY"),
        (libc::SO_MARK, "SO_MARK"),
        (libc::SO_RCVLOWAT, "SO_RCVLOWAT"),
        (SO_GET_FILTER, "SO_GET_FILTER"),
        (SO_PEEK_OFF, "SO_PEEK_OFF"),
        (SO_BUF_LOCK, "SO_BUF_LOCK"),
    ];
    known
        .iter()
        .find(|(o, _)| *o == opt)
        .map_or_else(|| format!("option {opt}"), |(_, n)| (*n).to_owned())
}

/// An int-valued SOL_SOCKET option.
pub fn get_int(fd: BorrowedFd<'_>, opt: i32) -> Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(Error::last(format!("getsockopt({})", name(opt))));
    }
    Ok(v)
}

pub fn set_int(fd: BorrowedFd<'_>, opt: i32, value: i32) -> Result<()> {
    // SAFETY: setsockopt reads one int.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(Error::last(format!("setsockopt({}, {value})", name(opt))));
    }
    Ok(())
}

/// SO_SNDTIMEO / SO_RCVTIMEO as (seconds, microseconds).
pub fn get_timeout(fd: BorrowedFd<'_>, opt: i32) -> Result<(u64, u64)> {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `tv`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&mut tv as *mut libc::timeval).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(Error::last(format!("getsockopt({})", name(opt))));
    }
    Ok((tv.tv_sec as u64, tv.tv_usec as u64))
}

pub fn set_timeout(fd: BorrowedFd<'_>, opt: i32, sec: u64, usec: u64) -> Result<()> {
    let tv = libc::timeval {
        tv_sec: sec as libc::time_t,
        tv_usec: usec as libc::suseconds_t,
    };
    // SAFETY: setsockopt reads one timeval.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(Error::last(format!(
            "setsockopt({}, {sec}.{usec:06})",
            name(opt)
        )));
    }
    Ok(())
}

/// The number of instructions of an attached socket filter (0: none). With a zero-length
/// buffer, SO_GET_FILTER only reports the count.
pub fn filter_len(fd: BorrowedFd<'_>) -> Result<u32> {
    let mut len: libc::socklen_t = 0;
    // SAFETY: with optlen 0 the kernel writes nothing but optlen.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_GET_FILTER,
            std::ptr::null_mut(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(Error::last("getsockopt(SO_GET_FILTER)"));
    }
    Ok(len)
}
