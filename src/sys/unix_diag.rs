//! NETLINK_SOCK_DIAG for unix sockets (linux/unix_diag.h): what the kernel knows about one socket
//! by inode — type, state, bound name, peer inode, queue lengths, shutdown state. /proc/net/unix
//! lacks the peer and the queues, which are what a checkpoint needs.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

use crate::error::{Error, Result};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_HDR_LEN: usize = 16;

// udiag_show bits and the attribute types they bring.
const UDIAG_SHOW_NAME: u32 = 0x01;
const UDIAG_SHOW_VFS: u32 = 0x02;
const UDIAG_SHOW_PEER: u32 = 0x04;
const UDIAG_SHOW_ICONS: u32 = 0x08;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UDIAG_SHOW_MEMINFO: u32 = 0x20;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_MEMINFO: u16 = 5;
/// Index of SK_MEMINFO_WMEM_ALLOC in the UNIX_DIAG_MEMINFO array of u32.
const SK_MEMINFO_WMEM_ALLOC: usize = 2;
const UNIX_DIAG_SHUTDOWN: u16 = 6;

/// Socket states as unix_diag reports them (the TCP_* numbers).
pub const STATE_ESTABLISHED: u8 = 1;
pub const STATE_CLOSE: u8 = 7;
pub const STATE_LISTEN: u8 = 10;

#[derive(Clone, Debug, Default)]
pub struct UnixSockInfo {
    pub ino: u32,
    /// SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET.
    pub sock_type: u8,
    pub state: u8,
    /// The bound address (sun_path bytes; abstract names start with NUL); None when unbound.
    pub name: Option<Vec<u8>>,
    /// (device, inode) of the socket file of a name bound in the filesystem.
    pub vfs: Option<(u32, u32)>,
    /// The inode of the connected peer, None when unconnected (or when the peer is gone).
    pub peer: Option<u32>,
    /// Receive queue: bytes for stream and seqpacket sockets, the first datagram's length for
    /// datagram sockets; for listeners the number of pending connections.
    pub rqueue: u32,
    /// Bytes sent and not yet received (listeners: the backlog).
    pub wqueue: u32,
    /// RCV_SHUTDOWN (1) | SEND_SHUTDOWN (2).
    pub shutdown: u8,
    /// A listener's connections not accepted yet, oldest first: the inode of each one's
    /// client (0 when the client is closed).
    pub icons: Vec<u32>,
    /// Bytes this socket sent that no one has read yet (sk_wmem_alloc).
    pub wmem_alloc: u32,
}

/// Asks the kernel about the unix socket with inode `ino` in our network namespace.
/// `Ok(None)` when there is no such unix socket.
pub fn query(ino: u32) -> Result<Option<UnixSockInfo>> {
    Ok(request(Some(ino), u32::MAX)?.into_iter().next())
}

/// Every listening unix socket of our network namespace, with its pending connections.
pub fn listeners() -> Result<Vec<UnixSockInfo>> {
    request(None, 1 << STATE_LISTEN)
}

/// One socket by inode, or (None) a dump of every socket in `states`.
fn request(ino: Option<u32>, states: u32) -> Result<Vec<UnixSockInfo>> {
    // SAFETY: socket() takes three integers.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(Error::last("socket(AF_NETLINK, NETLINK_SOCK_DIAG)"));
    }
    // SAFETY: a new fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };

    const SEQ: u32 = 0x5eed;
    let mut req = Vec::with_capacity(NLMSG_HDR_LEN + 24);
    req.extend_from_slice(&((NLMSG_HDR_LEN + 24) as u32).to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = libc::NLM_F_REQUEST | if ino.is_none() { libc::NLM_F_DUMP } else { 0 };
    req.extend_from_slice(&(flags as u16).to_ne_bytes());
    req.extend_from_slice(&SEQ.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    // struct unix_diag_req
    req.push(libc::AF_UNIX as u8);
    req.push(0); // sdiag_protocol
    req.extend_from_slice(&0u16.to_ne_bytes());
    req.extend_from_slice(&states.to_ne_bytes());
    req.extend_from_slice(&ino.unwrap_or(0).to_ne_bytes());
    req.extend_from_slice(
        &(UDIAG_SHOW_NAME
            | UDIAG_SHOW_VFS
            | UDIAG_SHOW_PEER
            | UDIAG_SHOW_ICONS
            | UDIAG_SHOW_RQLEN
            | UDIAG_SHOW_MEMINFO)
            .to_ne_bytes(),
    );
    // INET_DIAG_NOCOOKIE: match the socket whatever its cookie.
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());

    // SAFETY: an all-zero sockaddr_nl addresses the kernel.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: sendto reads `req` and the address, both live locals of the sizes given.
    let r = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(Error::last("send sock_diag request"));
    }

    let mut buf = vec![0u8; 64 << 10];
    let mut found = Vec::new();
    loop {
        // SAFETY: recv writes at most buf.len() bytes into buf.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let errno = Errno::last();
            if errno == Errno::EINTR {
                continue;
            }
            return Err(Error::sys("receive sock_diag answer", errno));
        }
        let mut msgs = &buf[..n as usize];
        while msgs.len() >= NLMSG_HDR_LEN {
            let len = u32::from_ne_bytes(msgs[0..4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes(msgs[4..6].try_into().unwrap());
            let seq = u32::from_ne_bytes(msgs[8..12].try_into().unwrap());
            if len < NLMSG_HDR_LEN || len > msgs.len() {
                return Err(Error::sys(
                    "sock_diag answer: malformed message",
                    Errno::EBADMSG,
                ));
            }
            let body = &msgs[NLMSG_HDR_LEN..len];
            if seq == SEQ {
                if ty == libc::NLMSG_ERROR as u16 {
                    let code = body
                        .get(0..4)
                        .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                        .unwrap_or(-libc::EBADMSG);
                    if code == -libc::ENOENT || code == 0 {
                        return Ok(found);
                    }
                    return Err(Error::sys(
                        match ino {
                            Some(ino) => format!("sock_diag query of unix socket {ino}"),
                            None => "sock_diag dump of unix sockets".to_owned(),
                        },
                        Errno::from_raw(-code),
                    ));
                }
                if ty == libc::NLMSG_DONE as u16 {
                    return Ok(found);
                }
                if ty == SOCK_DIAG_BY_FAMILY {
                    found.push(parse(body)?);
                    if ino.is_some() {
                        return Ok(found);
                    }
                }
            }
            msgs = &msgs[align4(len).min(msgs.len())..];
        }
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// struct unix_diag_msg, then netlink attributes.
fn parse(body: &[u8]) -> Result<UnixSockInfo> {
    let bad = || Error::sys("sock_diag answer: short unix_diag_msg", Errno::EBADMSG);
    if body.len() < 16 {
        return Err(bad());
    }
    let mut info = UnixSockInfo {
        sock_type: body[1],
        state: body[2],
        ino: u32::from_ne_bytes(body[4..8].try_into().unwrap()),
        ..Default::default()
    };
    let u32_at = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let mut attrs = &body[16..];
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes(attrs[0..2].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes(attrs[2..4].try_into().unwrap()) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return Err(bad());
        }
        let data = &attrs[4..len];
        match ty {
            UNIX_DIAG_NAME => info.name = Some(data.to_vec()),
            UNIX_DIAG_VFS => {
                if let (Some(vino), Some(dev)) = (u32_at(data, 0), u32_at(data, 4)) {
                    info.vfs = Some((dev, vino));
                }
            }
            UNIX_DIAG_PEER => info.peer = u32_at(data, 0).filter(|&p| p != 0),
            UNIX_DIAG_RQLEN => {
                info.rqueue = u32_at(data, 0).ok_or_else(bad)?;
                info.wqueue = u32_at(data, 4).ok_or_else(bad)?;
            }
            UNIX_DIAG_SHUTDOWN => info.shutdown = data.first().copied().unwrap_or(0),
            UNIX_DIAG_ICONS => {
                info.icons = data
                    .chunks_exact(4)
                    .map(|c| u32::from_ne_bytes(c.try_into().unwrap()))
                    .collect()
            }
            UNIX_DIAG_MEMINFO => {
                info.wmem_alloc = u32_at(data, SK_MEMINFO_WMEM_ALLOC * 4).unwrap_or(0)
            }
            _ => {}
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    Ok(info)
}
