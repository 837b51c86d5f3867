//! CRIU's "service socket": the RPC client's end of its connection to the server that is dumping
//! it (a self-dump, `criu_dump()` without a pid). The client is frozen inside `criu_dump()`,
//! waiting for the answer on that socket, and its peer (our server) is not part of the dump.
//!
//! Like CRIU (sk-unix.c, USK_SERVICE) the socket is dumped as an unconnected unix socket flagged
//! USK_SERVICE. The restore builds a socket pair of the same type, queues on it the answer the
//! client is waiting for, `criu_resp{DUMP, success, dump{restored=true}}`, and gives the task the
//! other end at the same fd number. The task's interrupted receive is restarted by the restore
//! and returns that answer: `criu_dump()` returns 1 in the restored process.

use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

use libc::pid_t;
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType};
use nix::sys::time::TimeVal;
use prost::Message;

use crate::error::{Error, Result, SysContext};
use crate::pb;
use crate::sys::unix_diag;

/// unix_sk_entry.uflags: the socket was connected to the CRIU service that dumped it.
pub const USK_SERVICE: u32 = 1 << 1;
/// The state CRIU records for it: TCP_CLOSE (no peer).
const TCP_CLOSE: u32 = 7;

/// The file entry for fd `fd` of `pid` when it is the client's end of the RPC connection whose
/// server end has inode `service_ino`; None for any other file (or without a connection).
pub fn dump_service_socket(
    pid: pid_t,
    fd: RawFd,
    meta: &std::fs::Metadata,
    id: u32,
    file_flags: u32,
    service_ino: Option<u64>,
) -> Result<Option<pb::FileEntry>> {
    use std::os::unix::fs::FileTypeExt;
    let Some(service_ino) = service_ino else {
        return Ok(None);
    };
    if !meta.file_type().is_socket() {
        return Ok(None);
    }
    let ino = meta.ino() as u32;
    // Not a unix socket: unix_diag knows only those.
    let Some(sk) = unix_diag::query(ino)? else {
        return Ok(None);
    };
    if sk.peer.map(u64::from) != Some(service_ino) {
        return Ok(None);
    }
    let copy = crate::sys::pidfd::PidFd::open(pid)?.get_fd(fd)?;
    let usk = pb::UnixSkEntry {
        id,
        ino,
        r#type: sk.sock_type as u32,
        state: TCP_CLOSE,
        flags: file_flags,
        uflags: USK_SERVICE,
        backlog: sk.wqueue,
        peer: 0,
        fown: pb::FownEntry::default(),
        opts: sk_opts(copy.as_fd())?,
        name: Vec::new(),
        shutdown: (sk.shutdown != 0).then_some(sk.shutdown as i32),
        ..Default::default()
    };
    log::info!("fd {fd} of pid {pid}: the RPC client's socket {ino} (restored holding the answer to this dump)");
    Ok(Some(pb::FileEntry {
        r#type: pb::FdTypes::Unixsk as i32,
        id,
        usk: Some(usk),
        ..Default::default()
    }))
}

/// True for the entry `dump_service_socket` writes (and CRIU's equivalent).
pub fn is_service_socket(e: &pb::FileEntry) -> bool {
    e.usk.as_ref().is_some_and(|u| u.uflags & USK_SERVICE != 0)
}

/// In the task being restored: the socket holding the answer that makes `criu_dump()` return 1.
pub fn open_service_socket(e: &pb::FileEntry) -> Result<OwnedFd> {
    let usk = e
        .usk
        .as_ref()
        .ok_or_else(|| Error::InvalidOptions(format!("file {} has no unix socket entry", e.id)))?;
    let ty = match usk.r#type as i32 {
        libc::SOCK_STREAM => SockType::Stream,
        libc::SOCK_DGRAM => SockType::Datagram,
        libc::SOCK_SEQPACKET => SockType::SeqPacket,
        t => {
            return Err(Error::InvalidOptions(format!(
                "service socket {} of type {t}",
                usk.ino
            )))
        }
    };
    let (ours, theirs) = socket::socketpair(AddressFamily::Unix, ty, None, SockFlag::SOCK_CLOEXEC)
        .sys(|| "socketpair for the RPC service socket".into())?;
    let answer = pb::CriuResp {
        r#type: pb::CriuReqType::Dump as i32,
        success: true,
        dump: Some(pb::CriuDumpResp {
            restored: Some(true),
        }),
        ..Default::default()
    };
    crate::sys::sock::send_packet(theirs.as_fd(), &answer.encode_to_vec(), None)
        .sys(|| "queueing the restored answer on the RPC service socket".into())?;
    // The task sees the answer, then end-of-file: nobody is at the other end any more.
    drop(theirs);
    restore_sk_opts(ours.as_fd(), &usk.opts)?;
    let status = nix::fcntl::OFlag::from_bits_truncate(usk.flags as i32);
    nix::fcntl::fcntl(&ours, nix::fcntl::FcntlArg::F_SETFL(status))
        .sys(|| "fcntl(F_SETFL) on the RPC service socket".into())?;
    Ok(ours)
}

fn timeout_parts(tv: TimeVal) -> (u64, u64) {
    (tv.tv_sec().max(0) as u64, tv.tv_usec().max(0) as u64)
}

/// The socket options CRIU records for every socket (the ones a socket pair can carry).
fn sk_opts(sk: std::os::fd::BorrowedFd<'_>) -> Result<pb::SkOptsEntry> {
    let get = |what: &str, r: nix::Result<usize>| r.map_err(|e| Error::sys(what.to_owned(), e));
    let sndbuf = get("SO_SNDBUF", socket::getsockopt(&sk, sockopt::SndBuf))?;
    let rcvbuf = get("SO_RCVBUF", socket::getsockopt(&sk, sockopt::RcvBuf))?;
    let (snd_sec, snd_usec) =
        timeout_parts(socket::getsockopt(&sk, sockopt::SendTimeout).sys(|| "SO_SNDTIMEO".into())?);
    let (rcv_sec, rcv_usec) = timeout_parts(
        socket::getsockopt(&sk, sockopt::ReceiveTimeout).sys(|| "SO_RCVTIMEO".into())?,
    );
    let passcred = socket::getsockopt(&sk, sockopt::PassCred).sys(|| "SO_PASSCRED".into())?;
    Ok(pb::SkOptsEntry {
        so_sndbuf: sndbuf as u32,
        so_rcvbuf: rcvbuf as u32,
        so_snd_tmo_sec: snd_sec,
        so_snd_tmo_usec: snd_usec,
        so_rcv_tmo_sec: rcv_sec,
        so_rcv_tmo_usec: rcv_usec,
        so_passcred: Some(passcred),
        ..Default::default()
    })
}

fn restore_sk_opts(sk: std::os::fd::BorrowedFd<'_>, o: &pb::SkOptsEntry) -> Result<()> {
    // The kernel doubles what it is given (CRIU halves the saved values the same way); without
    // CAP_NET_ADMIN the plain options cap them at the system limits, which is all we can do.
    let (snd, rcv) = ((o.so_sndbuf / 2) as usize, (o.so_rcvbuf / 2) as usize);
    if socket::setsockopt(&sk, sockopt::SndBufForce, &snd).is_err() {
        socket::setsockopt(&sk, sockopt::SndBuf, &snd).sys(|| "SO_SNDBUF".into())?;
    }
    if socket::setsockopt(&sk, sockopt::RcvBufForce, &rcv).is_err() {
        socket::setsockopt(&sk, sockopt::RcvBuf, &rcv).sys(|| "SO_RCVBUF".into())?;
    }
    let tv = |sec: u64, usec: u64| TimeVal::new(sec as i64, usec.min(999_999) as i64);
    socket::setsockopt(
        &sk,
        sockopt::SendTimeout,
        &tv(o.so_snd_tmo_sec, o.so_snd_tmo_usec),
    )
    .sys(|| "SO_SNDTIMEO".into())?;
    socket::setsockopt(
        &sk,
        sockopt::ReceiveTimeout,
        &tv(o.so_rcv_tmo_sec, o.so_rcv_tmo_usec),
    )
    .sys(|| "SO_RCVTIMEO".into())?;
    if o.so_passcred == Some(true) {
        socket::setsockopt(&sk, sockopt::PassCred, &true).sys(|| "SO_PASSCRED".into())?;
    }
    Ok(())
}
