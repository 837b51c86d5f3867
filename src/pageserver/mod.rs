//! Page server: a dump's page data crosses TCP (optionally TLS) to `criu page-server` on the
//! destination, which writes the pagemap and pages images there; the source keeps only the
//! small metadata images. The wire protocol is CRIU's (page-xfer), so either side can be CRIU.
//!
//! Each command is a 32-byte header (`cmd`, `nr_pages`, `vaddr`, `dst_id` in native layout);
//! ADD_F with PE_PRESENT is followed by the page data. OPEN2 is answered with one byte (does the
//! destination hold a parent for this pagemap), PARENT with an int, CLOSE with an int status.

pub mod client;
pub mod lazy;
pub mod server;
pub mod tls;

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};

use crate::error::{Error, Result};

pub const PS_IOV_ADD: u32 = 1;
pub const PS_IOV_HOLE: u32 = 2;
pub const PS_IOV_OPEN: u32 = 3;
pub const PS_IOV_OPEN2: u32 = 4;
pub const PS_IOV_PARENT: u32 = 5;
pub const PS_IOV_ADD_F: u32 = 6;
pub const PS_IOV_GET: u32 = 7;
pub const PS_IOV_CLOSE: u32 = 0x1023;
pub const PS_IOV_FORCE_CLOSE: u32 = 0x1024;

const PS_CMD_BITS: u32 = 16;
const PS_TYPE_BITS: u32 = 8;
pub const PS_TYPE_PID: u64 = 1;
pub const PS_TYPE_SHMEM: u64 = 2;

/// CRIU's page server port when none is given.
pub const DEFAULT_PORT: u16 = 27;

/// One command header (`struct page_server_iov`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Iov {
    pub cmd: u32,
    pub nr_pages: u64,
    pub vaddr: u64,
    pub dst_id: u64,
}

pub const IOV_SIZE: usize = 32;

impl Iov {
    pub fn new(op: u32, flags: u32, nr_pages: u64, vaddr: u64, dst_id: u64) -> Iov {
        Iov {
            cmd: flags << PS_CMD_BITS | op,
            nr_pages,
            vaddr,
            dst_id,
        }
    }

    /// The operation; CLOSE and FORCE_CLOSE use bits above the flags' place, so they are
    /// matched whole.
    pub fn op(&self) -> u32 {
        match self.cmd {
            PS_IOV_CLOSE | PS_IOV_FORCE_CLOSE => self.cmd,
            c => c & ((1 << PS_CMD_BITS) - 1),
        }
    }

    pub fn flags(&self) -> u32 {
        match self.cmd {
            PS_IOV_CLOSE | PS_IOV_FORCE_CLOSE => 0,
            c => c >> PS_CMD_BITS,
        }
    }

    pub fn to_bytes(self) -> [u8; IOV_SIZE] {
        let mut b = [0u8; IOV_SIZE];
        // u32 cmd, 4 bytes of padding, then the three u64 (native layout, as CRIU's struct).
        b[0..4].copy_from_slice(&self.cmd.to_ne_bytes());
        b[8..16].copy_from_slice(&self.nr_pages.to_ne_bytes());
        b[16..24].copy_from_slice(&self.vaddr.to_ne_bytes());
        b[24..32].copy_from_slice(&self.dst_id.to_ne_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; IOV_SIZE]) -> Iov {
        let u64_at = |i: usize| u64::from_ne_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Iov {
            cmd: u32::from_ne_bytes(b[0..4].try_into().expect("4 bytes")),
            nr_pages: u64_at(8),
            vaddr: u64_at(16),
            dst_id: u64_at(24),
        }
    }
}

pub fn dst_id(kind: u64, id: u64) -> u64 {
    id << PS_TYPE_BITS | kind
}

/// (type, id) of a dst_id.
pub fn split_dst_id(dst: u64) -> (u64, u64) {
    (dst & ((1 << PS_TYPE_BITS) - 1), dst >> PS_TYPE_BITS)
}

/// A connection to the other side: plain TCP or TLS over it.
pub trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

/// Socket buffers large enough for a few MiB in flight each way, forced past the sysctl limits
/// when we may (a refusal only costs speed), and no Nagle delay.
fn tune(sock: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    const BUF: usize = 8 << 20;
    // Every write is either a whole command or a large block of pages: Nagle would only hold
    // a command header back until the previous block is acknowledged.
    let _ = sock.set_nodelay(true);
    if setsockopt(sock, sockopt::SndBufForce, &BUF).is_err() {
        let _ = setsockopt(sock, sockopt::SndBuf, &BUF);
    }
    if setsockopt(sock, sockopt::RcvBufForce, &BUF).is_err() {
        let _ = setsockopt(sock, sockopt::RcvBuf, &BUF);
    }
}

/// `address:port` as a socket address string (IPv6 literals get brackets).
fn host_port(address: &str, port: u16) -> String {
    if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

pub fn connect_tcp(address: &str, port: u16) -> Result<TcpStream> {
    let target = host_port(address, port);
    let addrs = target
        .to_socket_addrs()
        .map_err(|e| Error::io(format!("resolve the page server address {target}"), e))?;
    let mut last = None;
    for a in addrs {
        match TcpStream::connect(a) {
            Ok(s) => {
                tune(&s);
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(Error::io(
        format!("connect to the page server at {target}"),
        last.unwrap_or_else(|| std::io::Error::from(std::io::ErrorKind::AddrNotAvailable)),
    ))
}

/// Reads exactly `buf.len()` bytes; a connection that ends first is "truncated".
pub fn read_exact(conn: &mut dyn Conn, buf: &mut [u8], what: &str) -> Result<()> {
    conn.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::PageServer(format!(
                "the peer closed the connection while {what} was expected"
            ))
        } else {
            Error::io(format!("page server connection: read {what}"), e)
        }
    })
}
