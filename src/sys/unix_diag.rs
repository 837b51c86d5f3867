//! What the kernel knows about a unix socket that belongs to another process, asked by inode
//! through NETLINK_SOCK_DIAG (unix_diag): its type and state, the inode of its peer, its queues,
//! and which directions were shut down. Also the socket itself, copied out of its owner with
//! pidfd_getfd, for the options only the socket answers (buffer sizes, timeouts).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_HDRLEN: usize = 16;

// unix_diag_req.udiag_show bits and the attributes they add (linux/unix_diag.h).
const UDIAG_SHOW_PEER: u32 = 0x04;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;

/// One unix socket as unix_diag reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnixSocket {
    /// SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET.
    pub sock_type: u8,
    /// TCP_ESTABLISHED, TCP_LISTEN or TCP_CLOSE, as the kernel numbers them for unix sockets.
    pub state: u8,
    /// Inode of the connected peer, 0 when there is none.
    pub peer: u32,
    /// What waits to be read (bytes or packets, as this kernel counts; listening: connections).
    pub rqueue: u32,
    /// Bytes sent and not yet read by the peer (listening: the backlog).
    pub wqueue: u32,
    /// The kernel's RCV_SHUTDOWN (1) | SEND_SHUTDOWN (2) bits.
    pub shutdown: u8,
}

/// Looks up the unix socket with inode `ino` in our network namespace.
pub fn unix_socket(ino: u32) -> nix::Result<UnixSocket> {
    let nl = socket::socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?;
    // nlmsghdr, then unix_diag_req {family, protocol, pad, states, ino, show, cookie[2]}; the
    // cookie "none" (all ones) lets the kernel look the socket up by inode alone.
    let mut req = Vec::with_capacity(NLMSG_HDRLEN + 24);
    req.extend_from_slice(&((NLMSG_HDRLEN + 24) as u32).to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    req.extend_from_slice(&[libc::AF_UNIX as u8, 0, 0, 0]);
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req.extend_from_slice(&ino.to_ne_bytes());
    req.extend_from_slice(&(UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN).to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    socket::send(nl.as_raw_fd(), &req, MsgFlags::empty())?;

    let mut buf = vec![0u8; 8192];
    let n = loop {
        match socket::recv(nl.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Err(Errno::EINTR) => continue,
            r => break r?,
        }
    };
    parse_reply(&buf[..n], ino)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn parse_reply(msg: &[u8], ino: u32) -> nix::Result<UnixSocket> {
    let len = u32_at(msg, 0).ok_or(Errno::EBADMSG)? as usize;
    let kind = u16_at(msg, 4).ok_or(Errno::EBADMSG)?;
    let msg = msg.get(..len).ok_or(Errno::EBADMSG)?;
    if kind == NLMSG_ERROR {
        // nlmsgerr: a negative errno (0 would be an ack, which a request without NLM_F_ACK
        // never gets).
        let err = u32_at(msg, NLMSG_HDRLEN).ok_or(Errno::EBADMSG)? as i32;
        return Err(Errno::from_raw(-err));
    }
    if kind != SOCK_DIAG_BY_FAMILY {
        return Err(Errno::EBADMSG);
    }
    // unix_diag_msg {family, type, state, pad, ino, cookie[2]}: 16 bytes, then attributes.
    let body = &msg[NLMSG_HDRLEN..];
    if u32_at(body, 4) != Some(ino) {
        return Err(Errno::EBADMSG);
    }
    let mut sk = UnixSocket {
        sock_type: *body.get(1).ok_or(Errno::EBADMSG)?,
        state: *body.get(2).ok_or(Errno::EBADMSG)?,
        ..Default::default()
    };
    let mut at = 16;
    while let (Some(alen), Some(atype)) = (u16_at(body, at), u16_at(body, at + 2)) {
        let alen = alen as usize;
        if alen < 4 {
            break;
        }
        let data = body.get(at + 4..at + alen).ok_or(Errno::EBADMSG)?;
        match atype {
            UNIX_DIAG_PEER => sk.peer = u32_at(data, 0).ok_or(Errno::EBADMSG)?,
            UNIX_DIAG_RQLEN => {
                sk.rqueue = u32_at(data, 0).ok_or(Errno::EBADMSG)?;
                sk.wqueue = u32_at(data, 4).ok_or(Errno::EBADMSG)?;
            }
            UNIX_DIAG_SHUTDOWN => sk.shutdown = *data.first().ok_or(Errno::EBADMSG)?,
            _ => {}
        }
        at += (alen + 3) & !3;
    }
    Ok(sk)
}

/// A copy of descriptor `fd` of process `pid` (pidfd_getfd; we must be allowed to ptrace it).
pub fn copy_fd(pid: libc::pid_t, fd: RawFd) -> nix::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    // SAFETY: pidfd_getfd installs a new descriptor in our table or returns -1.
    let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if copy < 0 {
        return Err(Errno::last());
    }
    // SAFETY: as above, a fresh descriptor that is ours alone (close-on-exec by the kernel).
    Ok(unsafe { OwnedFd::from_raw_fd(copy as RawFd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn ino(fd: &OwnedFd) -> u32 {
        std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap()
            .ino() as u32
    }

    #[test]
    fn a_socketpair_names_its_peer() {
        let (a, b) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        socket::send(b.as_raw_fd(), b"hello", MsgFlags::empty()).unwrap();
        socket::shutdown(a.as_raw_fd(), socket::Shutdown::Write).unwrap();
        let sk = unix_socket(ino(&a)).unwrap();
        assert_eq!(sk.sock_type, libc::SOCK_SEQPACKET as u8);
        assert_eq!(sk.state, 1, "TCP_ESTABLISHED");
        assert_eq!(sk.peer, ino(&b));
        assert_ne!(sk.rqueue, 0, "a packet is waiting");
        assert_eq!(sk.shutdown, 2, "SEND_SHUTDOWN");
        assert_eq!(unix_socket(ino(&b)).unwrap().peer, ino(&a));
    }

    #[test]
    fn an_unknown_inode_is_enoent() {
        let (a, _b) = socket::socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let not_a_socket = file.metadata().unwrap().ino() as u32;
        assert_ne!(not_a_socket, ino(&a));
        assert_eq!(unix_socket(not_a_socket), Err(Errno::ENOENT));
    }

    #[test]
    fn copy_fd_copies_our_own_descriptor() {
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let copy = copy_fd(std::process::id() as i32, file.as_raw_fd()).unwrap();
        let a = file.metadata().unwrap();
        let b = std::fs::File::from(copy).metadata().unwrap();
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));
    }
}
