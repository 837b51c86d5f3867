//! Unix SOCK_SEQPACKET sockets as the RPC protocol uses them: one message per packet, at most one
//! file descriptor riding along (SCM_RIGHTS).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, UnixAddr,
};
use nix::sys::stat::fstat;

/// A connected pair, both ends close-on-exec (clear it on the end a child must keep).
pub fn seqpacket_pair() -> nix::Result<(OwnedFd, OwnedFd)> {
    socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
}

/// Connects to a listening SOCK_SEQPACKET socket at `path` (`criu service --address`).
pub fn connect_seqpacket(path: &Path) -> nix::Result<OwnedFd> {
    let addr = UnixAddr::new(path)?;
    let sock = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::connect(sock.as_raw_fd(), &addr)?;
    Ok(sock)
}

/// Binds and listens at `path`, replacing a stale socket file, and lets anyone connect (0666),
/// as `criu service` does.
pub fn listen_seqpacket(path: &Path) -> nix::Result<OwnedFd> {
    let addr = UnixAddr::new(path)?;
    let sock = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    match nix::unistd::unlink(path) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(e),
    }
    socket::bind(sock.as_raw_fd(), &addr)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    socket::listen(&sock, Backlog::new(16)?)?;
    Ok(sock)
}

/// Waits for the next connection on a listening socket.
pub fn accept(listener: BorrowedFd<'_>) -> nix::Result<OwnedFd> {
    loop {
        match socket::accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            // SAFETY: accept4 returned a new descriptor that nothing else owns.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Sends one packet, with `fd` attached when given. MSG_NOSIGNAL: a peer that went away is an
/// EPIPE error for the caller to report, not a SIGPIPE that kills the host program.
pub fn send_packet(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> nix::Result<()> {
    let iov = [IoSlice::new(data)];
    let fds = fd.map(|f| [f.as_raw_fd()]);
    let cmsgs: Vec<ControlMessage> = fds.iter().map(|f| ControlMessage::ScmRights(f)).collect();
    loop {
        match socket::sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) if n == data.len() => return Ok(()),
            // A seqpacket send is all or nothing; a short count means the packet was not sent.
            Ok(_) => return Err(Errno::EMSGSIZE),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// One received packet: its bytes and the descriptor that came with it, if any.
pub struct Packet {
    pub data: Vec<u8>,
    pub fd: Option<OwnedFd>,
}

/// Receives one whole packet, sized first with MSG_PEEK|MSG_TRUNC. `Ok(None)` when the peer
/// closed the connection (a zero-length read, which is also how CRIU reads an empty packet).
pub fn recv_packet(sock: BorrowedFd<'_>) -> nix::Result<Option<Packet>> {
    let len = loop {
        match socket::recv(
            sock.as_raw_fd(),
            &mut [],
            MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC,
        ) {
            Ok(n) => break n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    };
    if len == 0 {
        // Consume the empty packet (or see EOF) so a caller that goes on does not spin.
        let _ = socket::recv(sock.as_raw_fd(), &mut [], MsgFlags::empty());
        return Ok(None);
    }
    let mut data = vec![0u8; len];
    let mut cmsg_buf = nix::cmsg_space!([RawFd; 1]);
    let (bytes, fds, truncated) = loop {
        let mut iov = [IoSliceMut::new(&mut data)];
        match socket::recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_buf),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let truncated = msg
                    .flags
                    .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
                let mut fds = Vec::new();
                if let Ok(cmsgs) = msg.cmsgs() {
                    for cmsg in cmsgs {
                        if let ControlMessageOwned::ScmRights(received) = cmsg {
                            // SAFETY: the kernel just installed these descriptors for us.
                            fds.extend(
                                received
                                    .into_iter()
                                    .map(|f| unsafe { OwnedFd::from_raw_fd(f) }),
                            );
                        }
                    }
                }
                break (msg.bytes, fds, truncated);
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    };
    if truncated {
        // More descriptors or bytes than one protocol message carries: not our peer.
        return Err(Errno::EMSGSIZE);
    }
    data.truncate(bytes);
    let mut fds = fds.into_iter();
    let fd = fds.next();
    if fds.next().is_some() {
        return Err(Errno::EMSGSIZE);
    }
    Ok(Some(Packet { data, fd }))
}

/// Takes ownership of a socket descriptor inherited by number (`criu swrk FD`), after checking
/// that it is one.
pub fn adopt_inherited(fd: RawFd) -> nix::Result<OwnedFd> {
    if fd < 0 {
        return Err(Errno::EBADF);
    }
    // SAFETY: fstat on an arbitrary number only reads the descriptor table.
    let st = fstat(unsafe { BorrowedFd::borrow_raw(fd) })?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(Errno::ENOTSOCK);
    }
    // SAFETY: the number is an open socket that our caller hands over to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The pid of the process at the other end (SO_PEERCRED): for a socketpair, the process that
/// created the pair; for an accepted connection, the one that called connect().
pub fn peer_pid(sock: BorrowedFd<'_>) -> nix::Result<i32> {
    let cred = socket::getsockopt(&sock, socket::sockopt::PeerCredentials)?;
    Ok(cred.pid())
}

/// The inode of a socket, as sock_diag reports it as the peer of the other end.
pub fn socket_inode(sock: BorrowedFd<'_>) -> nix::Result<u64> {
    Ok(fstat(sock)?.st_ino)
}
