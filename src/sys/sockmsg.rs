//! Reading a socket's receive queue without consuming it (MSG_PEEK), and refilling one.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

use crate::error::{Error, Result};

/// One peeked message (or, for stream sockets, one chunk of the byte stream).
#[derive(Debug)]
pub struct Peeked {
    /// What recvmsg returned: the bytes copied, or with MSG_TRUNC on a datagram socket the
    /// whole remaining length of the message.
    pub len: usize,
    /// The message did not fit the buffer (MSG_TRUNC in msg_flags).
    pub truncated: bool,
    /// (level, type) of the control messages that came with it (SOL_SOCKET with SCM_RIGHTS,
    /// SCM_CREDENTIALS...).
    pub control: Vec<(i32, i32)>,
    /// Our copies of the descriptors passed with SCM_RIGHTS (a peek installs them too),
    /// close-on-exec.
    pub fds: Vec<OwnedFd>,
    /// Control data did not fit our buffer (MSG_CTRUNC).
    pub control_truncated: bool,
}

/// recvmsg(MSG_PEEK | MSG_DONTWAIT | `extra`) into `buf`. `Ok(None)` when nothing more is
/// queued (EAGAIN). A return of 0 bytes is the caller's to interpret: an empty datagram, or
/// end of stream.
pub fn peek(sock: BorrowedFd<'_>, buf: &mut [u8], extra: i32) -> Result<Option<Peeked>> {
    // u64 storage keeps the control buffer aligned for cmsghdr.
    let mut control = [0u64; 128];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the pointers are filled in below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC | extra;
    let n = loop {
        // SAFETY: recvmsg writes into `buf` and `control` through `msg`, within their sizes.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) };
        if n >= 0 {
            break n as usize;
        }
        match Errno::last() {
            Errno::EINTR => continue,
            Errno::EAGAIN => return Ok(None),
            e => return Err(Error::sys("recvmsg(MSG_PEEK)", e)),
        }
    };
    let mut types = Vec::new();
    let mut fds = Vec::new();
    // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR walk the control buffer the kernel just filled, within
    // msg_controllen; SCM_RIGHTS payloads are ints the kernel installed as fds for us.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let h = &*c;
            types.push((h.cmsg_level, h.cmsg_type));
            if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const libc::c_int;
                let count = (h.cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<libc::c_int>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(Some(Peeked {
        len: n,
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        control: types,
        fds,
        control_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    }))
}

/// send(MSG_DONTWAIT | MSG_NOSIGNAL): refilling a queue must neither block nor raise SIGPIPE.
/// Returns the bytes accepted (a stream socket may take fewer than offered).
pub fn send(sock: BorrowedFd<'_>, data: &[u8]) -> Result<usize> {
    loop {
        // SAFETY: send reads `data`.
        let n = unsafe {
            libc::send(
                sock.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        match Errno::last() {
            Errno::EINTR => continue,
            e => return Err(Error::sys(format!("send({} bytes)", data.len()), e)),
        }
    }
}

/// sendmsg of `data` with `fds` passed along (SCM_RIGHTS), MSG_DONTWAIT | MSG_NOSIGNAL.
/// Returns the bytes accepted.
pub fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> Result<usize> {
    if fds.is_empty() {
        return send(sock, data);
    }
    let raw: Vec<libc::c_int> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let payload = std::mem::size_of_val(raw.as_slice());
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the pointers are filled in below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: the control buffer holds one cmsghdr with room for `payload` bytes of data.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(payload as u32) as usize;
        std::ptr::copy_nonoverlapping(raw.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), payload);
    }
    loop {
        // SAFETY: sendmsg reads `data` and the control buffer through `msg`.
        let n = unsafe {
            libc::sendmsg(
                sock.as_raw_fd(),
                &msg,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        match Errno::last() {
            Errno::EINTR => continue,
            e => {
                return Err(Error::sys(
                    format!("sendmsg({} bytes, {} fds)", data.len(), fds.len()),
                    e,
                ))
            }
        }
    }
}
