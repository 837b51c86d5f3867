//! IPv4 and IPv6 sockets: TCP listeners, unconnected or bound TCP sockets, UDP sockets (bound
//! and connected again), and established TCP connections with `--tcp-established` through the
//! kernel's TCP_REPAIR mode.
//!
//! Dump: each socket is a `file_entry.isk` (`inet_sk_entry`: family, type, state, addresses as
//! u32 words, backlog, options). Everything is read from our own copy of the socket
//! (pidfd_getfd): addresses with getsockname/getpeername, the state and a listener's backlog
//! from TCP_INFO. An established connection is locked (netlock.rs), put in repair mode, and
//! its state goes into `tcp-stream-<ino in hex>.img`: sequence numbers of both queues, the
//! queued bytes (receive queue, then send queue: sent-but-unacknowledged plus unsent), TCP
//! options, window. The socket stays in repair mode until the task is killed: a socket closed
//! in repair mode goes away without a FIN or a reset, so the peer keeps its end. If the dump
//! fails, or with --leave-running, repair mode is switched off and the lock taken away again
//! (`InetDump` does that when dropped, unless the tree was killed).
//!
//! Restore: a listener is bound and listens again; a UDP socket is bound and connected again;
//! a connection is made in repair mode: bound to its local address, queue sequence numbers set,
//! "connected" without a packet, options and window set, queues refilled. After the
//! post-restore notification `finish_restore` takes the network lock away, then switches
//! repair mode off (CRIU's order) and sends what had not been sent yet.
//!
//! With `--tcp-close` a connection is saved without its stream and restored as a closed TCP
//! socket (the task sees a hang-up).
//!
//! Half-closed connections are carried like established ones. The peer's FIN received
//! (CLOSE_WAIT, LAST_ACK, CLOSING): its sequence number is in the saved receive sequence and the
//! restored socket has its read side shut down. Our FIN sent (FIN_WAIT1/2, LAST_ACK, CLOSING):
//! the image holds the sequence number before it, and the restore shuts the write side down
//! once repair mode is off, which sends the FIN again at that number (the peer acknowledges a
//! FIN it had, or gets it now).
//!
//! Not supported (the dump fails naming pid, fd and socket): other protocols (raw, SCTP...),
//! connecting sockets (SYN_SENT), listeners with connections not accepted yet (unless
//! --skip-in-flight), sockets of another network namespace, IPv6 link-local addresses.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::files::{self, TaskFd};
use crate::images::{Hex, ImageDir, Kind};
use crate::netlock::{self, Connection};
use crate::options::{NetworkLock, Options};
use crate::pb;
use crate::sys::inet as sk;
use crate::sys::sockopt;

/// TCP_* states as TCP_INFO and the images give them.
pub const TCP_ESTABLISHED: u32 = 1;
/// The peer has closed its side (its FIN was received); the task has not closed yet.
pub const TCP_CLOSE_WAIT: u32 = 8;
pub const TCP_FIN_WAIT1: u32 = 4;
pub const TCP_FIN_WAIT2: u32 = 5;
pub const TCP_LAST_ACK: u32 = 9;
pub const TCP_CLOSING: u32 = 11;

/// States of a connection the dump carries through repair mode.
fn is_connected(state: u32) -> bool {
    matches!(
        state,
        TCP_ESTABLISHED
            | TCP_CLOSE_WAIT
            | TCP_FIN_WAIT1
            | TCP_FIN_WAIT2
            | TCP_LAST_ACK
            | TCP_CLOSING
    )
}

/// The task shut its side down: our FIN is sent, or queued.
fn sent_fin(state: u32) -> bool {
    matches!(
        state,
        TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_LAST_ACK | TCP_CLOSING
    )
}

/// The peer's FIN was received.
fn got_fin(state: u32) -> bool {
    matches!(state, TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING)
}
pub const TCP_CLOSE: u32 = 7;
pub const TCP_LISTEN: u32 = 10;

fn state_name(s: u32) -> &'static str {
    match s {
        1 => "established",
        2 => "syn-sent",
        3 => "syn-recv",
        4 => "fin-wait1",
        5 => "fin-wait2",
        6 => "time-wait",
        7 => "closed",
        8 => "close-wait",
        9 => "last-ack",
        10 => "listening",
        11 => "closing",
        _ => "unknown-state",
    }
}

/// A connection put in repair mode by the dump: our copy keeps it in repair mode.
struct Repaired {
    sock: OwnedFd,
    conn: Connection,
}

/// What the dump of inet sockets holds until the tree is killed or resumed.
pub struct InetDump {
    tcp_established: bool,
    tcp_close: bool,
    /// --skip-in-flight: connections a listener has not accepted yet are left behind.
    skip_in_flight: bool,
    lock: NetworkLock,
    run_id: String,
    /// Our network namespace, to refuse sockets of another.
    netns: Option<std::path::PathBuf>,
    repaired: Vec<Repaired>,
    /// Connections locked (some may have failed to go into repair mode).
    locked: Vec<Connection>,
    streams: Vec<(u32, pb::TcpStreamEntry, Vec<u8>)>,
    /// The tree was killed: leave repair mode and the lock as they are.
    killed: bool,
    /// Undoes repair mode and the lock if this dumper dies before it is done (see `Guard`).
    guard: Option<Guard>,
}

impl Default for InetDump {
    fn default() -> Self {
        InetDump::new(&Options::default())
    }
}

impl InetDump {
    pub fn new(opts: &Options) -> Self {
        InetDump {
            tcp_established: opts.tcp_established,
            tcp_close: opts.tcp_close,
            skip_in_flight: opts.tcp_skip_in_flight,
            lock: opts.network_lock,
            run_id: netlock::new_run_id(),
            netns: std::fs::read_link("/proc/self/ns/net").ok(),
            repaired: Vec::new(),
            locked: Vec::new(),
            streams: Vec::new(),
            killed: false,
            guard: None,
        }
    }

    /// Our helper processes (the guard), which hold copies of the tree's connections.
    pub fn helper_pids(&self) -> &[i32] {
        self.guard
            .as_ref()
            .map_or(&[], |g| std::slice::from_ref(&g.pid))
    }

    /// For inventory.img: names the nftables table of the lock.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn write_images(&self, dir: &ImageDir) -> Result<()> {
        for (ino, e, bytes) in &self.streams {
            let mut w = dir.create(Kind::TcpStream, Hex(*ino))?;
            w.write(e)?;
            w.write_raw(bytes)?;
            w.finish()?;
        }
        Ok(())
    }

    /// The tree is dead: its connections died in repair mode, silently. Our copies are closed
    /// (still in repair mode) and the lock stays for the restore to take away.
    pub fn tree_killed(&mut self) {
        self.killed = true;
        self.repaired.clear();
        if let Some(g) = self.guard.take() {
            g.dismiss();
        }
        if !self.locked.is_empty() {
            log::info!(
                "{} connection(s) stay locked until the restore (run id {})",
                self.locked.len(),
                self.run_id
            );
        }
    }

    /// The tree goes on running (--leave-running, or a failed dump): its connections leave
    /// repair mode and the lock goes away.
    pub fn release(&mut self) -> Result<()> {
        let mut first = None;
        for r in self.repaired.drain(..) {
            if let Err(e) = repair_off(r.sock.as_fd()) {
                log::error!(
                    "connection {} <-> {}: cannot leave repair mode: {e}",
                    r.conn.local,
                    r.conn.peer
                );
                first.get_or_insert(e);
            }
        }
        if let Err(e) = netlock::unlock(self.lock, &self.run_id, &self.locked) {
            log::error!("{e}");
            first.get_or_insert(e);
        }
        self.locked.clear();
        if let Some(g) = self.guard.take() {
            g.dismiss();
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for InetDump {
    fn drop(&mut self) {
        if !self.killed {
            let _ = self.release();
        }
    }
}

fn repair_on(s: BorrowedFd<'_>) -> Result<()> {
    sk::set_int(s, libc::IPPROTO_TCP, sk::TCP_REPAIR, 1, "TCP_REPAIR, 1")
}

fn repair_off(s: BorrowedFd<'_>) -> Result<()> {
    sk::set_int(s, libc::IPPROTO_TCP, sk::TCP_REPAIR, 0, "TCP_REPAIR, 0")
}

/// Whether `family` is one this module dumps.
pub fn is_inet(family: i32) -> bool {
    family == libc::AF_INET || family == libc::AF_INET6
}

/// `socket:[ino]` of family AF_INET or AF_INET6.
pub fn dump_socket(fd: &TaskFd, ino: u64, id: u32, dump: &mut InetDump) -> Result<pb::FileEntry> {
    let copy = fd.copy()?;
    let s = copy.as_fd();
    let family = sockopt::get_int(s, libc::SO_DOMAIN)?;
    let ty = sockopt::get_int(s, libc::SO_TYPE)?;
    let proto = sockopt::get_int(s, libc::SO_PROTOCOL)?;
    let fam = if family == libc::AF_INET {
        "IPv4"
    } else {
        "IPv6"
    };
    let kind = match (ty, proto) {
        (libc::SOCK_STREAM, libc::IPPROTO_TCP) => "TCP",
        (libc::SOCK_DGRAM, libc::IPPROTO_UDP) => "UDP",
        (libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE) => "UDP-Lite",
        (libc::SOCK_RAW, _) => "raw",
        _ => "other",
    };
    let bad = |what: String| fd.unsupported(format!("{}: {kind}/{fam} socket {what}", fd.link));
    if !matches!(kind, "TCP" | "UDP") {
        return Err(bad(format!(
            "(type {ty}, protocol {proto}; only TCP and UDP are supported)"
        )));
    }
    if let Ok(ns) = std::fs::read_link(format!("/proc/{}/ns/net", fd.pid)) {
        if dump.netns.as_ref() != Some(&ns) {
            return Err(bad(format!(
                "in another network namespace ({}; run the dump inside it)",
                ns.display()
            )));
        }
    }
    let ino = u32::try_from(ino).map_err(|_| bad("with an inode above 32 bits".into()))?;
    let local = sk::local_addr(s)?;
    let peer = sk::peer_addr(s)?;
    for a in std::iter::once(&local).chain(peer.as_ref()) {
        if let SocketAddr::V6(v6) = a {
            if v6.scope_id() != 0 {
                return Err(bad(format!(
                    "on a link-local address ({a}) (not supported yet)"
                )));
            }
        }
    }
    let sock_opts = dump_opts(s)?;
    let v6only = (family == libc::AF_INET6)
        .then(|| sk::get_int(s, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, "IPV6_V6ONLY"))
        .transpose()?
        .map(|v| v != 0);
    let ip_opts = dump_ip_opts(s, family)?;
    let mut e = pb::InetSkEntry {
        id,
        ino,
        family: family as u32,
        r#type: ty as u32,
        proto: proto as u32,
        state: TCP_CLOSE,
        src_port: local.port() as u32,
        dst_port: peer.map_or(0, |p| p.port() as u32),
        flags: fd.flags,
        backlog: 0,
        src_addr: sk::addr_words(&local.ip()),
        dst_addr: peer.map_or_else(|| zero_words(family), |p| sk::addr_words(&p.ip())),
        fown: files::dump_fown(s)?,
        opts: sock_opts,
        v6only,
        ip_opts: Some(ip_opts),
        ..Default::default()
    };

    if kind == "UDP" {
        // UDP: state "established" when connected, as the kernel (and CRIU) has it.
        e.state = if peer.is_some() {
            TCP_ESTABLISHED
        } else {
            TCP_CLOSE
        };
        let queued = sk::inq(s)?;
        if queued != 0 {
            // Like CRIU: datagrams are not guaranteed to arrive anyway.
            log::warn!(
                "pid {} fd {}: {}: {queued} queued bytes of a UDP socket are dropped",
                fd.pid,
                fd.fd,
                fd.link
            );
        }
        log::debug!(
            "pid {} fd {}: UDP/{fam} socket {ino} at {local}, peer {peer:?}",
            fd.pid,
            fd.fd
        );
        return Ok(file_entry(id, e));
    }

    let info = sk::tcp_info(s)?;
    e.state = info.state as u32;
    e.tcp_opts = Some(dump_tcp_opts(s)?);
    match e.state {
        TCP_LISTEN => {
            if info.unacked != 0 && !dump.skip_in_flight {
                return Err(bad(format!(
                    "listening on {local} with {} connection(s) not accepted yet (use \
                     --skip-in-flight to leave them behind)",
                    info.unacked
                )));
            }
            if info.unacked != 0 {
                log::warn!(
                    "pid {} fd {}: {} connection(s) not accepted yet on {local} are left \
                     behind",
                    fd.pid,
                    fd.fd,
                    info.unacked
                );
            }
            e.backlog = info.sacked;
        }
        TCP_CLOSE => {}
        st if is_connected(st) => {
            let peer = peer.ok_or_else(|| bad("established without a peer".into()))?;
            let conn = Connection { local, peer };
            if dump.tcp_established {
                dump_connection(fd, s, &copy, ino, conn, dump)
                    .map_err(|err| bad(format!("{local} <-> {peer}: {err}")))?;
            } else if !dump.tcp_close {
                return Err(bad(format!(
                    "connected {local} <-> {peer} (use --tcp-established or --tcp-close)"
                )));
            }
        }
        st => {
            return Err(bad(format!(
                "in state {} ({local} <-> {}) (not supported yet)",
                state_name(st),
                peer.map_or("-".to_owned(), |p| p.to_string())
            )))
        }
    }
    log::debug!(
        "pid {} fd {}: TCP/{fam} socket {ino} {} at {local}, peer {peer:?}",
        fd.pid,
        fd.fd,
        state_name(e.state)
    );
    Ok(file_entry(id, e))
}

fn file_entry(id: u32, e: pb::InetSkEntry) -> pb::FileEntry {
    pb::FileEntry {
        r#type: pb::FdTypes::Inetsk as i32,
        id,
        isk: Some(e),
        ..Default::default()
    }
}

fn zero_words(family: i32) -> Vec<u32> {
    vec![0; if family == libc::AF_INET { 1 } else { 4 }]
}

/// Locks `conn`, puts it in repair mode and saves its stream.
fn dump_connection(
    fd: &TaskFd,
    s: BorrowedFd<'_>,
    copy: &OwnedFd,
    ino: u32,
    conn: Connection,
    dump: &mut InetDump,
) -> Result<()> {
    if dump.guard.is_none() {
        dump.guard = Some(Guard::start(dump.lock, &dump.run_id)?);
    }
    let guard = dump.guard.as_ref().expect("started");
    // The guard learns of the connection before it is locked or repaired.
    guard.watch(copy.as_fd(), &conn)?;
    netlock::lock(dump.lock, &dump.run_id, &conn)?;
    dump.locked.push(conn);
    repair_on(s)?;
    dump.repaired.push(Repaired {
        sock: copy.try_clone().map_err(|e| Error::io("dup socket", e))?,
        conn,
    });
    let (entry, bytes) = read_stream(s)?;
    log::debug!(
        "pid {} fd {}: connection {} <-> {}: {} bytes received, {} in the send queue ({} unsent)",
        fd.pid,
        fd.fd,
        conn.local,
        conn.peer,
        entry.inq_len,
        entry.outq_len,
        entry.unsq_len.unwrap_or(0)
    );
    dump.streams.push((ino, entry, bytes));
    Ok(())
}

/// The state of a connection in repair mode, and its queued bytes (receive queue, then send
/// queue).
fn read_stream(s: BorrowedFd<'_>) -> Result<(pb::TcpStreamEntry, Vec<u8>)> {
    let tcp = libc::IPPROTO_TCP;
    let state = sk::tcp_info(s)?.state as u32;
    let inq_len = sk::inq(s)?;
    // Our FIN counts in the send queue while it is not acknowledged, and in the sequence
    // numbers: the image holds the data only and the sequence number before the FIN (the
    // restore shuts the socket down again, which sends the FIN at that number).
    let fin = sent_fin(state) as u32;
    let fin_unacked = matches!(state, TCP_FIN_WAIT1 | TCP_LAST_ACK | TCP_CLOSING) as u32;
    let outq_len = sk::outq(s)?.saturating_sub(fin_unacked);
    let unsq = sk::outq_unsent(s)?;
    // The FIN is the last thing queued: if anything is unsent, so is it.
    let unsq_len = if unsq > 0 { unsq - fin } else { 0 };
    let mut bytes = Vec::with_capacity((inq_len + outq_len) as usize);
    let mut queue_seq = |queue: i32, len: u32, name: &str| -> Result<u32> {
        sk::set_int(s, tcp, sk::TCP_REPAIR_QUEUE, queue, "TCP_REPAIR_QUEUE")?;
        let seq = sk::get_int(s, tcp, sk::TCP_QUEUE_SEQ, "TCP_QUEUE_SEQ")? as u32;
        let data = sk::peek(s, len as usize)?;
        if data.len() != len as usize {
            return Err(Error::sys(
                format!("{name} queue: read {} of {len} bytes", data.len()),
                nix::errno::Errno::EIO,
            ));
        }
        bytes.extend_from_slice(&data);
        Ok(seq)
    };
    let inq_seq = queue_seq(sk::TCP_RECV_QUEUE, inq_len, "receive")?;
    let outq_seq = queue_seq(sk::TCP_SEND_QUEUE, outq_len, "send")?.wrapping_sub(fin);
    let info = sk::tcp_info(s)?;
    let mss = sk::get_int(s, tcp, libc::TCP_MAXSEG, "TCP_MAXSEG")? as u32;
    let timestamp = sk::get_int(s, tcp, sk::TCP_TIMESTAMP, "TCP_TIMESTAMP")? as u32;
    let win = sk::get_bytes(s, tcp, sk::TCP_REPAIR_WINDOW, 20, "TCP_REPAIR_WINDOW")?;
    let w = |i: usize| u32::from_ne_bytes(win[i * 4..i * 4 + 4].try_into().unwrap());
    let has_window = win.len() == 20;
    Ok((
        pb::TcpStreamEntry {
            inq_len,
            inq_seq,
            outq_len,
            outq_seq,
            opt_mask: info.options as u32,
            snd_wscale: info.snd_wscale as u32,
            mss_clamp: mss,
            rcv_wscale: Some(info.rcv_wscale as u32),
            timestamp: Some(timestamp),
            cork: None,
            nodelay: None,
            unsq_len: Some(unsq_len),
            snd_wl1: has_window.then(|| w(0)),
            snd_wnd: has_window.then(|| w(1)),
            max_window: has_window.then(|| w(2)),
            rcv_wnd: has_window.then(|| w(3)),
            rcv_wup: has_window.then(|| w(4)),
        },
        bytes,
    ))
}

fn dump_opts(s: BorrowedFd<'_>) -> Result<pb::SkOptsEntry> {
    let int = |opt| sockopt::get_int(s, opt);
    // Options some kernels refuse on inet sockets (SO_PASSCRED, SO_PASSSEC) are left out.
    let maybe = |opt| match sockopt::get_int(s, opt) {
        Ok(v) => Ok(Some(v)),
        Err(Error::Sys {
            errno: nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::ENOPROTOOPT,
            ..
        }) => Ok(None),
        Err(e) => Err(e),
    };
    let (snd_sec, snd_usec) = sockopt::get_timeout(s, libc::SO_SNDTIMEO)?;
    let (rcv_sec, rcv_usec) = sockopt::get_timeout(s, libc::SO_RCVTIMEO)?;
    let linger = sk::get_bytes(s, libc::SOL_SOCKET, libc::SO_LINGER, 8, "SO_LINGER")?;
    let linger_on = linger.len() == 8 && i32::from_ne_bytes(linger[0..4].try_into().unwrap()) != 0;
    let linger_secs = if linger_on {
        Some(i32::from_ne_bytes(linger[4..8].try_into().unwrap()) as u32)
    } else {
        None
    };
    Ok(pb::SkOptsEntry {
        so_sndbuf: int(libc::SO_SNDBUF)? as u32,
        so_rcvbuf: int(libc::SO_RCVBUF)? as u32,
        so_snd_tmo_sec: snd_sec,
        so_snd_tmo_usec: snd_usec,
        so_rcv_tmo_sec: rcv_sec,
        so_rcv_tmo_usec: rcv_usec,
        reuseaddr: Some(int(libc::SO_REUSEADDR)? != 0),
        so_priority: Some(int(libc::SO_PRIORITY)? as u32),
        so_rcvlowat: Some(int(libc::SO_RCVLOWAT)? as u32),
        so_mark: Some(int(libc::SO_MARK)? as u32),
        so_passcred: maybe(libc::SO_PASSCRED)?.map(|v| v != 0),
        so_passsec: maybe(libc::SO_PASSSEC)?.map(|v| v != 0),
        so_dontroute: Some(int(libc::SO_DONTROUTE)? != 0),
        so_reuseport: Some(int(libc::SO_REUSEPORT)? != 0),
        so_broadcast: Some(int(libc::SO_BROADCAST)? != 0),
        so_keepalive: Some(int(libc::SO_KEEPALIVE)? != 0),
        so_oobinline: Some(int(libc::SO_OOBINLINE)? as u32),
        so_linger: linger_secs,
        so_buf_lock: maybe(sockopt::SO_BUF_LOCK)?.map(|v| v as u32),
        ..Default::default()
    })
}

fn dump_ip_opts(s: BorrowedFd<'_>, family: i32) -> Result<pb::IpOptsEntry> {
    if family == libc::AF_INET {
        let ip = |opt, name| sk::get_int(s, libc::IPPROTO_IP, opt, name);
        Ok(pb::IpOptsEntry {
            freebind: Some(ip(libc::IP_FREEBIND, "IP_FREEBIND")? != 0),
            pktinfo: Some(ip(libc::IP_PKTINFO, "IP_PKTINFO")? != 0),
            tos: Some(ip(libc::IP_TOS, "IP_TOS")? as u32),
            ttl: Some(ip(libc::IP_TTL, "IP_TTL")? as u32),
            ..Default::default()
        })
    } else {
        Ok(pb::IpOptsEntry {
            freebind: Some(
                sk::get_int(s, libc::IPPROTO_IPV6, libc::IPV6_FREEBIND, "IPV6_FREEBIND")? != 0,
            ),
            ..Default::default()
        })
    }
}

fn dump_tcp_opts(s: BorrowedFd<'_>) -> Result<pb::TcpOptsEntry> {
    let tcp = |opt, name| sk::get_int(s, libc::IPPROTO_TCP, opt, name);
    Ok(pb::TcpOptsEntry {
        cork: Some(tcp(libc::TCP_CORK, "TCP_CORK")? != 0),
        nodelay: Some(tcp(libc::TCP_NODELAY, "TCP_NODELAY")? != 0),
        keepcnt: Some(tcp(libc::TCP_KEEPCNT, "TCP_KEEPCNT")? as u32),
        keepidle: Some(tcp(libc::TCP_KEEPIDLE, "TCP_KEEPIDLE")? as u32),
        keepintvl: Some(tcp(libc::TCP_KEEPINTVL, "TCP_KEEPINTVL")? as u32),
    })
}

/// A helper process that undoes what the dump did to the tree's connections if the dumper
/// dies (SIGKILL, a crash) before it is done: a task left in repair mode after its dumper
/// vanished would have every one of its connections broken, and the lock would keep the
/// peers out. The dumper sends it a copy of each connection (SCM_RIGHTS) before locking and
/// repairing it; at the end it sends "done" (the tree was killed, or everything was undone
/// already) and the guard exits without touching anything. If the channel ends without
/// "done", the guard switches repair mode off on its copies and takes the lock away.
///
/// Left behind when even the guard is SIGKILLed (by hand) in that window: the tasks'
/// connections in repair mode and the lock (`nft delete table inet CRIU-<run id>`, or the
/// iptables DROP rules of the connections).
struct Guard {
    channel: OwnedFd,
    pid: i32,
}

const GUARD_DONE: &[u8] = b"done";

impl Guard {
    fn start(lock: NetworkLock, run_id: &str) -> Result<Guard> {
        use crate::sys::fork::{self, Forked};
        let (ours, theirs) =
            crate::sys::sock::seqpacket_pair().map_err(|e| Error::sys("socketpair", e))?;
        let run_id = run_id.to_owned();
        match fork::fork().map_err(|e| Error::sys("fork the connection guard", e))? {
            Forked::Child => {
                drop(ours);
                fork::reset_signal_handlers();
                // Out of the dumper's session: a signal to its group must not take us too.
                let _ = nix::unistd::setsid();
                // Nothing of the dumper's stays open here (a caller reading its output
                // until EOF must not wait for us): only the channel, and /dev/null as 0-2.
                let keep = theirs.as_raw_fd() as u32;
                let _ = crate::sys::fd::close_range(0, keep.saturating_sub(1));
                let _ = crate::sys::fd::close_range(keep + 1, u32::MAX);
                for _ in 0..3 {
                    if let Ok(null) = std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open("/dev/null")
                    {
                        std::mem::forget(null);
                    }
                }
                fork::exit_now(guard_main(theirs, lock, &run_id))
            }
            Forked::Parent(pid) => Ok(Guard {
                channel: ours,
                pid: pid.as_raw(),
            }),
        }
    }

    /// Hands the guard a copy of connection `conn`.
    fn watch(&self, sock: BorrowedFd<'_>, conn: &Connection) -> Result<()> {
        let text = format!("{} {}", conn.local, conn.peer);
        crate::sys::sock::send_packet(self.channel.as_fd(), text.as_bytes(), Some(sock))
            .map_err(|e| Error::sys("hand a connection to the guard", e))
    }

    /// The dumper is done: the guard exits and leaves everything as it is.
    fn dismiss(self) {
        let _ = crate::sys::sock::send_packet(self.channel.as_fd(), GUARD_DONE, None);
        drop(self.channel);
        let _ = crate::sys::fork::wait_status(self.pid);
    }
}

fn guard_main(channel: OwnedFd, lock: NetworkLock, run_id: &str) -> i32 {
    let mut held: Vec<(OwnedFd, Connection)> = Vec::new();
    loop {
        match crate::sys::sock::recv_packet(channel.as_fd()) {
            Ok(Some(p)) if p.data == GUARD_DONE => return 0,
            Ok(Some(p)) => {
                let text = String::from_utf8_lossy(&p.data).into_owned();
                let mut it = text.split(' ').map(|a| a.parse::<SocketAddr>());
                if let (Some(fd), Some(Ok(local)), Some(Ok(peer))) = (p.fd, it.next(), it.next()) {
                    held.push((fd, Connection { local, peer }));
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    // The dumper died before it was done.
    for (fd, _) in &held {
        let _ = repair_off(fd.as_fd());
    }
    let conns: Vec<Connection> = held.iter().map(|h| h.1).collect();
    let _ = netlock::unlock(lock, run_id, &conns);
    0
}

// ---------------------------------------------------------------------------------------------
// Restore

/// The saved streams of established connections, by socket inode.
#[derive(Default)]
pub struct StreamImages {
    by_ino: HashMap<u32, (pb::TcpStreamEntry, Vec<u8>)>,
    /// Restore established connections as closed sockets (--tcp-close at dump or restore).
    tcp_close: bool,
}

impl StreamImages {
    /// tcp-stream images of the established TCP sockets among `entries`.
    pub fn load<'a>(
        dir: &ImageDir,
        entries: impl Iterator<Item = &'a pb::FileEntry>,
    ) -> Result<StreamImages> {
        let mut by_ino = HashMap::new();
        let inventory: Option<pb::InventoryEntry> = dir
            .exists(Kind::Inventory, "")
            .then(|| dir.read_one(Kind::Inventory, ""))
            .transpose()?;
        let tcp_close = inventory.and_then(|i| i.tcp_close).unwrap_or(false);
        for e in entries.filter_map(|e| e.isk.as_ref()) {
            if !is_tcp(e) || !is_connected(e.state) {
                continue;
            }
            let Some(mut r) = dir.open_optional(Kind::TcpStream, Hex(e.ino))? else {
                continue;
            };
            let entry: pb::TcpStreamEntry = r
                .read_entry()?
                .ok_or_else(|| Error::image(r.path().to_owned(), "no entry"))?;
            let len = entry.inq_len as usize + entry.outq_len as usize;
            let bytes = r.read_raw(len)?;
            by_ino.insert(e.ino, (entry, bytes));
        }
        Ok(StreamImages { by_ino, tcp_close })
    }
}

fn is_tcp(e: &pb::InetSkEntry) -> bool {
    e.r#type as i32 == libc::SOCK_STREAM && e.proto as i32 == libc::IPPROTO_TCP
}

fn addr(words: &[u32], port: u32, ino: u32) -> Result<SocketAddr> {
    let ip: IpAddr = sk::words_addr(words).ok_or_else(|| {
        Error::InvalidOptions(format!(
            "inet socket {ino}: an address of {} words",
            words.len()
        ))
    })?;
    Ok(SocketAddr::new(ip, port as u16))
}

/// A connection left in repair mode by `open_socket` until `finish_restore`.
struct Pending {
    sock: OwnedFd,
    conn: Connection,
    unsent: Vec<u8>,
    /// The saved options: buffer sizes go back to them once the queues are refilled.
    opts: pb::SkOptsEntry,
    /// The task had shut its side down: the FIN goes after the unsent bytes.
    shut_write: bool,
}

/// Connections made by this restore, still in repair mode (our copies of them).
static PENDING: Mutex<Vec<Pending>> = Mutex::new(Vec::new());

/// Connections the dump locked that this restore brings back closed (--tcp-close): their lock
/// goes away all the same.
static CLOSED_INSTEAD: Mutex<Vec<Connection>> = Mutex::new(Vec::new());

/// Creates the inet socket `e`.
pub fn open_socket(
    e: &pb::InetSkEntry,
    streams: &StreamImages,
    tcp_close: bool,
) -> Result<OwnedFd> {
    let family = e.family as i32;
    if !is_inet(family) {
        return Err(Error::InvalidOptions(format!(
            "inet socket {}: family {family}",
            e.ino
        )));
    }
    let what = |w: &str| format!("inet socket {} ({w})", e.ino);
    let tcp = is_tcp(e);
    let udp = e.r#type as i32 == libc::SOCK_DGRAM && e.proto as i32 == libc::IPPROTO_UDP;
    if !tcp && !udp {
        return Err(Error::InvalidOptions(format!(
            "inet socket {}: type {} protocol {}, which this build cannot restore",
            e.ino, e.r#type, e.proto
        )));
    }
    let s = sk::socket(family, e.r#type as i32, e.proto as i32)?;
    let fd = s.as_fd();
    let local = addr(&e.src_addr, e.src_port, e.ino)?;
    let peer = addr(&e.dst_addr, e.dst_port, e.ino)?;
    if let Some(v6only) = e.v6only {
        sk::set_int(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            v6only as i32,
            "IPV6_V6ONLY",
        )?;
    }
    set_ip_opts(fd, family, e.ip_opts.as_ref())?;
    let bound = local.port() != 0 || !local.ip().is_unspecified();
    match (tcp, e.state) {
        (true, st) if is_connected(st) && !(tcp_close || streams.tcp_close) => {
            let (stream, bytes) = streams.by_ino.get(&e.ino).ok_or_else(|| {
                Error::InvalidOptions(format!(
                    "established TCP socket {} ({local} <-> {peer}) has no tcp-stream image \
                     (dumped with --tcp-close? then restore with --tcp-close)",
                    e.ino
                ))
            })?;
            set_opts(fd, &e.opts, true)?;
            // Room for the queues while they are refilled, whatever the saved sizes.
            let room = |len: u32| ((len as usize * 2 + (256 << 10)).min(i32::MAX as usize)) as i32;
            sockopt::set_int(fd, libc::SO_SNDBUFFORCE, room(stream.outq_len))?;
            sockopt::set_int(fd, libc::SO_RCVBUFFORCE, room(stream.inq_len))?;
            let unsent = restore_connection(fd, local, peer, stream, bytes)
                .map_err(|err| Error::InvalidOptions(format!("{}: {err}", what("connection"))))?;
            if got_fin(e.state) {
                // The peer's FIN was received and acknowledged: the saved receive sequence
                // counts it, so the peer sees the same acknowledgements. What the task sees of
                // it, reads ending after the queued bytes and EPOLLRDHUP, is a read shutdown.
                sk::shutdown(fd, libc::SHUT_RD).map_err(|err| relabel(err, &what("shutdown")))?;
            }
            let copy = s.try_clone().map_err(|err| Error::io("dup socket", err))?;
            PENDING.lock().unwrap().push(Pending {
                sock: copy,
                conn: Connection { local, peer },
                unsent,
                opts: e.opts.clone(),
                shut_write: sent_fin(e.state),
            });
        }
        (true, st) if is_connected(st) => {
            // --tcp-close: a fresh socket, which polls as hung up.
            set_opts(fd, &e.opts, false)?;
            if streams.by_ino.contains_key(&e.ino) {
                CLOSED_INSTEAD
                    .lock()
                    .unwrap()
                    .push(Connection { local, peer });
            }
        }
        (true, TCP_LISTEN) => {
            // The connections of this listener may be restored already, bound to the same
            // port in repair mode: bind with SO_REUSEADDR, then put the saved value back.
            sockopt::set_int(fd, libc::SO_REUSEADDR, 1)?;
            sk::bind(fd, &local).map_err(|err| relabel(err, &what("listener")))?;
            sk::listen(fd, e.backlog as i32)?;
            set_opts(fd, &e.opts, false)?;
        }
        (true, TCP_CLOSE) | (false, TCP_CLOSE) | (false, TCP_ESTABLISHED) => {
            set_opts(fd, &e.opts, false)?;
            if bound {
                sk::bind(fd, &local).map_err(|err| relabel(err, &what("bind")))?;
            }
            if !tcp && e.state == TCP_ESTABLISHED {
                sk::connect(fd, &peer).map_err(|err| relabel(err, &what("connect")))?;
            }
        }
        (_, st) => {
            return Err(Error::InvalidOptions(format!(
                "inet socket {} in state {}, which this build cannot restore",
                e.ino,
                state_name(st)
            )))
        }
    }
    if let Some(t) = &e.tcp_opts {
        set_tcp_opts(fd, t)?;
    }
    files::restore_status_flags(fd, e.flags)?;
    Ok(s)
}

fn relabel(e: Error, what: &str) -> Error {
    match e {
        Error::Sys { what: w, errno } => Error::sys(format!("{what}: {w}"), errno),
        e => e,
    }
}

/// Rebuilds a connection in repair mode; returns the bytes still to be sent once repair mode
/// is off.
fn restore_connection(
    s: BorrowedFd<'_>,
    local: SocketAddr,
    peer: SocketAddr,
    st: &pb::TcpStreamEntry,
    bytes: &[u8],
) -> Result<Vec<u8>> {
    let tcp = libc::IPPROTO_TCP;
    let (inq_len, outq_len) = (st.inq_len as usize, st.outq_len as usize);
    let unsq_len = (st.unsq_len.unwrap_or(0) as usize).min(outq_len);
    if bytes.len() != inq_len + outq_len {
        return Err(Error::InvalidOptions(format!(
            "stream of {} bytes, {} expected",
            bytes.len(),
            inq_len + outq_len
        )));
    }
    repair_on(s)?;
    sk::bind(s, &local)?;
    let set_seq = |queue: i32, seq: u32| -> Result<()> {
        sk::set_int(s, tcp, sk::TCP_REPAIR_QUEUE, queue, "TCP_REPAIR_QUEUE")?;
        sk::set_int(s, tcp, sk::TCP_QUEUE_SEQ, seq as i32, "TCP_QUEUE_SEQ")
    };
    // The saved sequence numbers are those after the queued bytes; refilling the queues moves
    // them there again.
    set_seq(sk::TCP_RECV_QUEUE, st.inq_seq.wrapping_sub(st.inq_len))?;
    set_seq(sk::TCP_SEND_QUEUE, st.outq_seq.wrapping_sub(st.outq_len))?;
    sk::connect(s, &peer)?;
    let mut opts: Vec<u8> = Vec::new();
    let mut opt = |code: u32, val: u32| {
        opts.extend_from_slice(&code.to_ne_bytes());
        opts.extend_from_slice(&val.to_ne_bytes());
    };
    opt(sk::TCPOPT_MSS, st.mss_clamp);
    if st.opt_mask & sk::TCPI_OPT_WSCALE != 0 {
        opt(
            sk::TCPOPT_WINDOW,
            st.snd_wscale | (st.rcv_wscale.unwrap_or(0) << 16),
        );
    }
    if st.opt_mask & sk::TCPI_OPT_SACK != 0 {
        opt(sk::TCPOPT_SACK_PERM, 0);
    }
    if st.opt_mask & sk::TCPI_OPT_TIMESTAMPS != 0 {
        opt(sk::TCPOPT_TIMESTAMP, 0);
    }
    sk::set_bytes(s, tcp, sk::TCP_REPAIR_OPTIONS, &opts, "TCP_REPAIR_OPTIONS")?;
    if let Some(ts) = st.timestamp {
        sk::set_int(s, tcp, sk::TCP_TIMESTAMP, ts as i32, "TCP_TIMESTAMP")?;
    }
    // Refill: the receive queue as received, the sent part of the send queue as sent.
    let (inq, outq) = bytes.split_at(inq_len);
    let (sent, unsent) = outq.split_at(outq_len - unsq_len);
    sk::set_int(
        s,
        tcp,
        sk::TCP_REPAIR_QUEUE,
        sk::TCP_RECV_QUEUE,
        "TCP_REPAIR_QUEUE",
    )?;
    sk::send_all(s, inq, "refill the receive queue")?;
    sk::set_int(
        s,
        tcp,
        sk::TCP_REPAIR_QUEUE,
        sk::TCP_SEND_QUEUE,
        "TCP_REPAIR_QUEUE",
    )?;
    sk::send_all(s, sent, "refill the send queue")?;
    if let (Some(snd_wl1), Some(snd_wnd), Some(max_window), Some(rcv_wnd), Some(rcv_wup)) = (
        st.snd_wl1,
        st.snd_wnd,
        st.max_window,
        st.rcv_wnd,
        st.rcv_wup,
    ) {
        let win: Vec<u8> = [snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        sk::set_bytes(s, tcp, sk::TCP_REPAIR_WINDOW, &win, "TCP_REPAIR_WINDOW")?;
    }
    Ok(unsent.to_vec())
}

/// After the post-restore notification: takes the network lock of the dump away (like CRIU,
/// with the method and run id saved in inventory.img), then each restored connection leaves
/// repair mode and sends what was not sent at dump time.
pub fn finish_restore(dir: &ImageDir) -> Result<()> {
    let pending: Vec<Pending> = std::mem::take(&mut *PENDING.lock().unwrap());
    let closed: Vec<Connection> = std::mem::take(&mut *CLOSED_INSTEAD.lock().unwrap());
    if pending.is_empty() && closed.is_empty() {
        return Ok(());
    }
    let inv: pb::InventoryEntry = dir.read_one(Kind::Inventory, "")?;
    let method = inv
        .network_lock_method
        .and_then(netlock::method_from_number)
        .unwrap_or_default();
    let run_id = inv.dump_criu_run_id.unwrap_or_default();
    let conns: Vec<Connection> = pending.iter().map(|p| p.conn).chain(closed).collect();
    let unlocked = netlock::unlock(method, &run_id, &conns);
    if let Err(e) = &unlocked {
        log::error!("{e}");
    }
    for p in &pending {
        repair_off(p.sock.as_fd())?;
        if !p.unsent.is_empty() {
            sk::send_all(p.sock.as_fd(), &p.unsent, "send the unsent bytes")?;
        }
        if p.shut_write {
            // The FIN at the saved sequence number: the peer has it already (an ACK comes
            // back), or gets it now.
            sk::shutdown(p.sock.as_fd(), libc::SHUT_WR)?;
        }
        set_opts(p.sock.as_fd(), &p.opts, true)?;
        log::debug!(
            "connection {} <-> {} restored ({} unsent bytes sent)",
            p.conn.local,
            p.conn.peer,
            p.unsent.len()
        );
    }
    unlocked
}

/// A failed restore: the connections made so far are closed in repair mode (silently).
pub fn abandon_restore() {
    PENDING.lock().unwrap().clear();
    CLOSED_INSTEAD.lock().unwrap().clear();
}

fn set_opts(s: BorrowedFd<'_>, o: &pb::SkOptsEntry, keep_reuse: bool) -> Result<()> {
    for (value, force, plain) in [
        (o.so_sndbuf, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        (o.so_rcvbuf, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
    ] {
        if value as i32 == sockopt::get_int(s, plain)? {
            continue;
        }
        // The saved value is the kernel's doubled one.
        if sockopt::set_int(s, force, value as i32 / 2).is_err() {
            sockopt::set_int(s, plain, value as i32 / 2)?;
        }
    }
    sockopt::set_timeout(s, libc::SO_SNDTIMEO, o.so_snd_tmo_sec, o.so_snd_tmo_usec)?;
    sockopt::set_timeout(s, libc::SO_RCVTIMEO, o.so_rcv_tmo_sec, o.so_rcv_tmo_usec)?;
    let b = |v: Option<bool>| v.map(i32::from);
    let mut flags = vec![
        (b(o.so_passcred), libc::SO_PASSCRED),
        (b(o.so_passsec), libc::SO_PASSSEC),
        (o.so_priority.map(|v| v as i32), libc::SO_PRIORITY),
        (o.so_rcvlowat.map(|v| v as i32), libc::SO_RCVLOWAT),
        (o.so_mark.map(|v| v as i32), libc::SO_MARK),
        (b(o.so_dontroute), libc::SO_DONTROUTE),
        (b(o.so_reuseport), libc::SO_REUSEPORT),
        (b(o.so_broadcast), libc::SO_BROADCAST),
        (b(o.so_keepalive), libc::SO_KEEPALIVE),
        (o.so_oobinline.map(|v| v as i32), libc::SO_OOBINLINE),
        (o.so_buf_lock.map(|v| v as i32), sockopt::SO_BUF_LOCK),
    ];
    // Repair mode forces address reuse by itself; its SO_REUSEADDR is set all the same.
    if !keep_reuse || o.reuseaddr.is_some() {
        flags.push((b(o.reuseaddr), libc::SO_REUSEADDR));
    }
    for (value, opt) in flags {
        if let Some(v) = value {
            if sockopt::get_int(s, opt)? != v {
                sockopt::set_int(s, opt, v)?;
            }
        }
    }
    if let Some(secs) = o.so_linger {
        let mut l = Vec::new();
        l.extend_from_slice(&1i32.to_ne_bytes());
        l.extend_from_slice(&(secs as i32).to_ne_bytes());
        sk::set_bytes(s, libc::SOL_SOCKET, libc::SO_LINGER, &l, "SO_LINGER")?;
    }
    Ok(())
}

fn set_ip_opts(s: BorrowedFd<'_>, family: i32, o: Option<&pb::IpOptsEntry>) -> Result<()> {
    let Some(o) = o else { return Ok(()) };
    if family == libc::AF_INET {
        let ip = |opt, v: i32, name| sk::set_int(s, libc::IPPROTO_IP, opt, v, name);
        if o.freebind == Some(true) {
            ip(libc::IP_FREEBIND, 1, "IP_FREEBIND")?;
        }
        if o.pktinfo == Some(true) {
            ip(libc::IP_PKTINFO, 1, "IP_PKTINFO")?;
        }
        if let Some(tos) = o.tos {
            ip(libc::IP_TOS, tos as i32, "IP_TOS")?;
        }
        if let Some(ttl) = o.ttl {
            ip(libc::IP_TTL, ttl as i32, "IP_TTL")?;
        }
    } else if o.freebind == Some(true) {
        sk::set_int(
            s,
            libc::IPPROTO_IPV6,
            libc::IPV6_FREEBIND,
            1,
            "IPV6_FREEBIND",
        )?;
    }
    Ok(())
}

fn set_tcp_opts(s: BorrowedFd<'_>, t: &pb::TcpOptsEntry) -> Result<()> {
    let tcp = |opt, v: u32, name| sk::set_int(s, libc::IPPROTO_TCP, opt, v as i32, name);
    if t.nodelay == Some(true) {
        tcp(libc::TCP_NODELAY, 1, "TCP_NODELAY")?;
    }
    if t.cork == Some(true) {
        tcp(libc::TCP_CORK, 1, "TCP_CORK")?;
    }
    for (v, opt, name) in [
        (t.keepcnt, libc::TCP_KEEPCNT, "TCP_KEEPCNT"),
        (t.keepidle, libc::TCP_KEEPIDLE, "TCP_KEEPIDLE"),
        (t.keepintvl, libc::TCP_KEEPINTVL, "TCP_KEEPINTVL"),
    ] {
        if let Some(v) = v.filter(|&v| v > 0) {
            tcp(opt, v, name)?;
        }
    }
    Ok(())
}
