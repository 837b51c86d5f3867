//! IPv4/IPv6 sockets: addresses, IP/TCP-level options, the TCP_REPAIR interface and the queue
//! ioctls, on sockets we hold a copy of (dump) or create (restore).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

use crate::error::{Error, Result};

// From linux/tcp.h, spelled out because not every libc exports them.
pub const TCP_REPAIR: i32 = 19;
pub const TCP_REPAIR_QUEUE: i32 = 20;
pub const TCP_QUEUE_SEQ: i32 = 21;
pub const TCP_REPAIR_OPTIONS: i32 = 22;
pub const TCP_TIMESTAMP: i32 = 24;
pub const TCP_REPAIR_WINDOW: i32 = 29;
/// TCP_REPAIR_QUEUE values.
pub const TCP_RECV_QUEUE: i32 = 1;
pub const TCP_SEND_QUEUE: i32 = 2;
/// TCP option kinds for TCP_REPAIR_OPTIONS.
pub const TCPOPT_MSS: u32 = 2;
pub const TCPOPT_WINDOW: u32 = 3;
pub const TCPOPT_SACK_PERM: u32 = 4;
pub const TCPOPT_TIMESTAMP: u32 = 8;
/// tcp_info.tcpi_options bits.
pub const TCPI_OPT_TIMESTAMPS: u32 = 1;
pub const TCPI_OPT_SACK: u32 = 2;
pub const TCPI_OPT_WSCALE: u32 = 4;

const SIOCINQ: libc::c_ulong = 0x541B;
const SIOCOUTQ: libc::c_ulong = 0x5411;
const SIOCOUTQNSD: libc::c_ulong = 0x894B;

/// An int-valued option at any level.
pub fn get_int(fd: BorrowedFd<'_>, level: i32, opt: i32, what: &str) -> Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(Error::last(format!("getsockopt({what})")));
    }
    Ok(v)
}

pub fn set_int(fd: BorrowedFd<'_>, level: i32, opt: i32, value: i32, what: &str) -> Result<()> {
    set_bytes(fd, level, opt, &value.to_ne_bytes(), what)
}

/// A structured option as raw bytes, at most `max` of them.
pub fn get_bytes(
    fd: BorrowedFd<'_>,
    level: i32,
    opt: i32,
    max: usize,
    what: &str,
) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; max];
    let mut len = max as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `buf`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(Error::last(format!("getsockopt({what})")));
    }
    buf.truncate(len as usize);
    Ok(buf)
}

pub fn set_bytes(fd: BorrowedFd<'_>, level: i32, opt: i32, value: &[u8], what: &str) -> Result<()> {
    // SAFETY: setsockopt reads `value.len()` bytes.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(Error::last(format!("setsockopt({what})")));
    }
    Ok(())
}

/// The fields of `struct tcp_info` we use (its layout is stable: fields are only appended).
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpInfo {
    pub state: u8,
    pub options: u8,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    /// For a listener: connections waiting in the accept queue.
    pub unacked: u32,
    /// For a listener: its backlog.
    pub sacked: u32,
}

pub fn tcp_info(fd: BorrowedFd<'_>) -> Result<TcpInfo> {
    let b = get_bytes(fd, libc::IPPROTO_TCP, libc::TCP_INFO, 232, "TCP_INFO")?;
    if b.len() < 32 {
        return Err(Error::sys(
            "getsockopt(TCP_INFO): short answer",
            Errno::EINVAL,
        ));
    }
    let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap());
    Ok(TcpInfo {
        state: b[0],
        options: b[5],
        snd_wscale: b[6] & 0xf,
        rcv_wscale: b[6] >> 4,
        unacked: u32_at(24),
        sacked: u32_at(28),
    })
}

fn ioctl_int(fd: BorrowedFd<'_>, req: libc::c_ulong, what: &str) -> Result<u32> {
    let mut v: libc::c_int = 0;
    // SAFETY: these ioctls write one int.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, &mut v as *mut libc::c_int) };
    if r < 0 {
        return Err(Error::last(format!("ioctl({what})")));
    }
    Ok(v as u32)
}

/// Bytes in the receive queue.
pub fn inq(fd: BorrowedFd<'_>) -> Result<u32> {
    ioctl_int(fd, SIOCINQ, "SIOCINQ")
}

/// Bytes in the send queue: unsent plus sent and not yet acknowledged.
pub fn outq(fd: BorrowedFd<'_>) -> Result<u32> {
    ioctl_int(fd, SIOCOUTQ, "SIOCOUTQ")
}

/// Bytes in the send queue not sent yet.
pub fn outq_unsent(fd: BorrowedFd<'_>) -> Result<u32> {
    ioctl_int(fd, SIOCOUTQNSD, "SIOCOUTQNSD")
}

/// recv(MSG_PEEK | MSG_DONTWAIT) of up to `len` bytes: in repair mode, from the queue chosen
/// with TCP_REPAIR_QUEUE, without consuming it.
pub fn peek(fd: BorrowedFd<'_>, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    if len == 0 {
        return Ok(buf);
    }
    loop {
        // SAFETY: recv writes at most `len` bytes into `buf`.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                len,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf);
        }
        match Errno::last() {
            Errno::EINTR => continue,
            e => return Err(Error::sys(format!("recv(MSG_PEEK, {len} bytes)"), e)),
        }
    }
}

/// send(MSG_DONTWAIT | MSG_NOSIGNAL) of all of `data` (in repair mode: into the queue chosen
/// with TCP_REPAIR_QUEUE).
pub fn send_all(fd: BorrowedFd<'_>, data: &[u8], what: &str) -> Result<()> {
    let mut done = 0;
    while done < data.len() {
        // SAFETY: send reads the rest of `data`.
        let n = unsafe {
            libc::send(
                fd.as_raw_fd(),
                data[done..].as_ptr().cast(),
                data.len() - done,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n > 0 {
            done += n as usize;
            continue;
        }
        match Errno::last() {
            Errno::EINTR => continue,
            e => {
                return Err(Error::sys(
                    format!("{what}: send ({done} of {} bytes sent)", data.len()),
                    e,
                ))
            }
        }
    }
    Ok(())
}

fn to_storage(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn from_storage(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: libc::sockaddr_in =
                unsafe { std::ptr::read((ss as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6: libc::sockaddr_in6 =
                unsafe { std::ptr::read((ss as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn name_of(fd: BorrowedFd<'_>, peer: bool) -> Result<Option<SocketAddr>> {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = (&mut ss as *mut libc::sockaddr_storage).cast();
    // SAFETY: the kernel writes at most `len` bytes into `ss`.
    let r = unsafe {
        if peer {
            libc::getpeername(fd.as_raw_fd(), p, &mut len)
        } else {
            libc::getsockname(fd.as_raw_fd(), p, &mut len)
        }
    };
    if r < 0 {
        let e = Errno::last();
        if peer && e == Errno::ENOTCONN {
            return Ok(None);
        }
        let what = if peer { "getpeername" } else { "getsockname" };
        return Err(Error::sys(what, e));
    }
    Ok(from_storage(&ss))
}

/// The local address (port 0 and the unspecified address when unbound).
pub fn local_addr(fd: BorrowedFd<'_>) -> Result<SocketAddr> {
    name_of(fd, false)?
        .ok_or_else(|| Error::sys("getsockname: not an inet address", Errno::EAFNOSUPPORT))
}

/// The peer's address, None when not connected.
pub fn peer_addr(fd: BorrowedFd<'_>) -> Result<Option<SocketAddr>> {
    name_of(fd, true)
}

/// A new close-on-exec socket.
pub fn socket(family: i32, ty: i32, proto: i32) -> Result<OwnedFd> {
    // SAFETY: socket() has no memory arguments.
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(Error::last(format!("socket({family}, {ty}, {proto})")));
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn bind(fd: BorrowedFd<'_>, addr: &SocketAddr) -> Result<()> {
    let (ss, len) = to_storage(addr);
    // SAFETY: bind reads `len` bytes of `ss`.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if r < 0 {
        return Err(Error::last(format!("bind to {addr}")));
    }
    Ok(())
}

pub fn connect(fd: BorrowedFd<'_>, addr: &SocketAddr) -> Result<()> {
    let (ss, len) = to_storage(addr);
    // SAFETY: connect reads `len` bytes of `ss`.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if r < 0 {
        return Err(Error::last(format!("connect to {addr}")));
    }
    Ok(())
}

pub fn listen(fd: BorrowedFd<'_>, backlog: i32) -> Result<()> {
    // SAFETY: listen has no memory arguments.
    if unsafe { libc::listen(fd.as_raw_fd(), backlog) } < 0 {
        return Err(Error::last(format!("listen({backlog})")));
    }
    Ok(())
}

pub fn shutdown(fd: BorrowedFd<'_>, how: i32) -> Result<()> {
    // SAFETY: shutdown has no memory arguments.
    if unsafe { libc::shutdown(fd.as_raw_fd(), how) } < 0 {
        return Err(Error::last(format!("shutdown({how})")));
    }
    Ok(())
}

/// An address as the u32 words of an image (network byte order in memory).
pub fn addr_words(ip: &IpAddr) -> Vec<u32> {
    let bytes: Vec<u8> = match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    bytes
        .chunks(4)
        .map(|c| u32::from_ne_bytes(c.try_into().unwrap()))
        .collect()
}

/// The inverse of `addr_words`; None when the word count fits neither family.
pub fn words_addr(words: &[u32]) -> Option<IpAddr> {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(bytes).ok()?,
        ))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_words_round_trip() {
        for ip in ["127.0.0.1", "10.1.2.3", "::1", "fe80::1:2"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(words_addr(&addr_words(&ip)), Some(ip));
        }
        assert_eq!(addr_words(&"127.0.0.1".parse().unwrap()).len(), 1);
        assert_eq!(words_addr(&[1, 2]), None);
    }
}
