//! Unix sockets: connected pairs (socketpair, stream/datagram/seqpacket) with the messages
//! queued in both directions, unconnected sockets, bound ones (absolute path or abstract name;
//! a removed socket file is removed again), listeners with their backlog, and stream or
//! seqpacket connections accepted by a listener (the accepted side has the listener's name),
//! datagram sockets connected to a named socket not connected back (connected again by name;
//! outside the dump with --ext-unix-sk, written as an external entry as CRIU does), and files
//! in flight (SCM_RIGHTS) in datagram, seqpacket and stream queues: the peek gives us copies, which
//! files.rs dumps as files; each message's entry names them by id, and the refill passes them
//! along again. Connections waiting in a listener's queue (not accepted yet) from clients of
//! the dump: the client's entry names the listener as its peer, as CRIU does, and the restore
//! connects the client to the listener's name again (the server side has no inode and no
//! task; sock_diag lists the clients as the listener's "icons"); what a client sent before
//! the accept sits in that server side, read by accepting from our copy of the listener at
//! the very end of a dump that kills the tree (`take_unaccepted_data`), and sent again by the
//! client at restore. A socket connected to one
//! outside the dump with `--external unix[INO]` (INO: the socket of the dump): its peer is
//! written as an external entry, and the restore takes the caller's descriptor in its place
//! (`--inherit-fd fd[N]:socket:[INO]`, files.rs).
//!
//! Dump: type, state and peer come from NETLINK_SOCK_DIAG (sys::unix_diag), by inode. Each
//! socket is a `file_entry.usk` (`unix_sk_entry`: `ino`, and `peer` = the peer's ino). Its
//! receive queue goes into sk-queues.img: one `sk_packet_entry` (`id_for` = the receiving
//! socket's file id, `length`) followed by the bytes, per datagram — message boundaries kept —
//! or, for a stream, the whole byte stream (in pieces when it carries files: see
//! `walk_stream`). The queue is read with MSG_PEEK from our own copy of
//! the socket (pidfd_getfd), so nothing is consumed: a stream in one peek from its start; a
//! datagram queue message by message with SO_PEEK_OFF, as CRIU's sk-queue.c does, then the peek
//! offset is switched off again.
//!
//! Restore: one socketpair() for a pair; each socket's queue is sent from its peer, one send per
//! saved message; then options, flags and owners.
//!
//! Not supported (the dump fails naming pid, fd and socket): other families, names relative to
//! a directory, connections not accepted yet whose client is outside the dump or closed, or
//! that carry data with --leave-running (only an accept reads it) or on seqpacket sockets,
//! connected datagram sockets that have a name, connections whose both ends have a name,
//! sockets connected to a socket outside the dump (except datagram ones with --ext-unix-sk,
//! and any named by --external) or to one that is gone, shut-down sockets, unix sockets in
//! flight, credentials in flight, attached socket filters, an SO_PEEK_OFF in use by the task.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use libc::pid_t;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType};

use crate::error::{Error, Result};
use crate::files::{self, TaskFd};
use crate::images::{ImageDir, Kind};
use crate::pb;
use crate::sys::sockmsg::{self, Peeked};
use crate::sys::sockopt::{self, SO_BUF_LOCK, SO_PEEK_OFF};
use crate::sys::unix_diag::{self, UnixSockInfo, STATE_CLOSE, STATE_ESTABLISHED, STATE_LISTEN};

/// A walk over a datagram queue that finds more than this is not a frozen queue.
const MAX_QUEUE_BYTES: usize = 256 << 20;

struct SeenSocket {
    peer: Option<u32>,
    /// Bound to a name.
    named: bool,
    /// A datagram socket connected to a named one that is not connected back: the peer's
    /// type and name (it is connected to again by name at restore).
    one_way: Option<(u8, Vec<u8>)>,
    /// Connected to a socket outside the dump that `--external unix[INO]` (INO: this socket)
    /// allows: the peer's type and name, for its external entry.
    outside: Option<(u8, Vec<u8>)>,
    /// A client whose connection waits in this listener's queue (not accepted yet): it is
    /// connected to that listener again by name at restore.
    pending_on: Option<u32>,
    /// A listener: the clients of the connections in its queue, oldest first.
    icons: Vec<u32>,
    /// Its file id.
    id: u32,
    pid: pid_t,
    fd: i32,
    link: String,
}

/// Unix sockets dumped so far, by inode, and their queues.
/// Descriptors in flight with one queued message: our copies, until files.rs has dumped
/// them as files and named them in the message's entry (`set_rights`).
pub struct InFlight {
    /// Index of the message in `UnixDump::queues`.
    pub message: usize,
    pub fds: Vec<OwnedFd>,
    /// The task and fd of the socket whose queue holds them.
    pub holder: (pid_t, i32),
}

#[derive(Default)]
pub struct UnixDump {
    sockets: BTreeMap<u32, SeenSocket>,
    queues: Vec<(pb::SkPacketEntry, Vec<u8>)>,
    /// Found by the last `dump_socket`, for files.rs to take.
    in_flight: Vec<InFlight>,
    /// --ext-unix-sk: a datagram socket may be connected to a named socket outside the dump.
    pub ext_unix_sk: bool,
    /// `--external unix[INO]`: sockets of the dump (by inode) that may be connected to a
    /// socket outside it; the restore gives them back with `--inherit-fd`.
    pub external: std::collections::HashSet<u32>,
    /// --leave-running: the tree runs on after the dump.
    pub leave_running: bool,
    /// Our copies of the listeners (by inode) whose queues hold connections of clients that
    /// sent data before being accepted: `take_unaccepted_data` reads it once the tree is
    /// about to be killed.
    unaccepted_data: Vec<(u32, OwnedFd)>,
    /// Clients (by inode) that sent data before being accepted, with the listener's inode.
    early_senders: BTreeMap<u32, u32>,
}

/// The inodes named by `--external unix[INO]` entries (other kinds are left to others).
pub fn external_inos(external: &[String]) -> std::collections::HashSet<u32> {
    external
        .iter()
        .filter_map(|e| e.strip_prefix("unix[")?.strip_suffix(']')?.parse().ok())
        .collect()
}

impl UnixDump {
    /// Every connected socket's peer must have been dumped too and be connected back to it: a
    /// peer outside the dumped tasks cannot be reconnected on restore.
    pub fn check_peers(&self) -> Result<()> {
        self.check_pending()?;
        for (&ino, s) in &self.sockets {
            let Some(peer) = s.peer else { continue };
            if s.pending_on.is_some() {
                if !self.sockets.contains_key(&peer) {
                    return Err(Error::unsupported(
                        s.pid,
                        format!(
                            "fd {}: unix {} waits to be accepted by the listener \
                             socket:[{peer}], which no dumped task holds",
                            s.fd, s.link
                        ),
                    ));
                }
                continue;
            }
            match self.sockets.get(&peer) {
                None if self.external.contains(&ino) => {}
                None if s.one_way.is_some() && self.ext_unix_sk => {}
                None if s.one_way.is_some() => {
                    return Err(Error::unsupported(
                        s.pid,
                        format!(
                            "fd {}: unix {} is connected to socket:[{peer}]{}, which no dumped \
                             task holds: use --ext-unix-sk to connect to that name again at \
                             restore",
                            s.fd,
                            s.link,
                            s.one_way
                                .as_ref()
                                .map(|(_, n)| printable_name(n))
                                .unwrap_or_default()
                        ),
                    ))
                }
                Some(_) if s.one_way.is_some() => {}
                None => {
                    return Err(Error::unsupported(
                        s.pid,
                        format!(
                            "fd {}: unix {} is connected to socket:[{peer}], which no dumped \
                             task holds: use --external unix[{ino}] to dump it anyway, and \
                             --inherit-fd fd[N]:socket:[{ino}] at restore to give it back",
                            s.fd, s.link
                        ),
                    ))
                }
                Some(p) if p.peer != Some(ino) => {
                    return Err(Error::unsupported(
                        s.pid,
                        format!(
                            "fd {}: unix {} is connected to socket:[{peer}], which is connected \
                             elsewhere (one-way connections are not supported yet)",
                            s.fd, s.link
                        ),
                    ))
                }
                Some(p) if p.named && s.named && ino < peer => {
                    return Err(Error::unsupported(
                        s.pid,
                        format!(
                            "fd {}: unix {} and its peer socket:[{peer}] are both bound to a                              name (not supported yet)",
                            s.fd, s.link
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Every connection waiting in a dumped listener's queue must come from a client of the
    /// dump: the restore makes it again by connecting that client.
    fn check_pending(&self) -> Result<()> {
        for s in self.sockets.values() {
            if let Some(&client) = s.icons.iter().find(|c| !self.sockets.contains_key(c)) {
                return Err(Error::unsupported(
                    s.pid,
                    format!(
                        "fd {}: unix {} has a connection not accepted yet from socket:[{client}], \
                         which no dumped task holds (not supported yet)",
                        s.fd, s.link
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether `take_unaccepted_data` has anything to do.
    pub fn has_unaccepted_data(&self) -> bool {
        !self.early_senders.is_empty()
    }

    /// The bytes clients sent on connections not accepted yet sit in the server-side sockets,
    /// which no task holds and which can only be read once accepted. So once the dump is
    /// complete and the tree is about to be killed (never with --leave-running: this takes
    /// the connections from the tree), every pending connection of such a listener is
    /// accepted from our copy of it, and what each client sent is queued for that client:
    /// the restore sends it again after connecting (a pending client's own queue is always
    /// empty). sk-queues.img is written again with them.
    pub fn take_unaccepted_data(&mut self, dir: &ImageDir) -> Result<()> {
        let by_ino: HashMap<u32, u32> = self.sockets.iter().map(|(&i, s)| (i, s.id)).collect();
        for (listener, copy) in std::mem::take(&mut self.unaccepted_data) {
            if !self.early_senders.values().any(|&l| l == listener) {
                continue;
            }
            // The tree's listener may block: as many accepts as it has connections waiting.
            let waiting = unix_diag::query(listener)?.map_or(0, |l| l.rqueue);
            for _ in 0..waiting {
                let raw = match socket::accept4(copy.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                    Ok(raw) => raw,
                    Err(e) => {
                        return Err(Error::sys(
                            format!("accept a pending connection of unix socket {listener}"),
                            e,
                        ))
                    }
                };
                // SAFETY: accept4 returned a new fd that nothing else owns.
                let server = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
                let ino = nix::sys::stat::fstat(&server)
                    .map_err(|e| Error::sys("fstat an accepted unix socket", e))?
                    .st_ino as u32;
                let Some(info) = unix_diag::query(ino)? else {
                    continue;
                };
                let (Some(client), true) = (info.peer, info.rqueue > 0) else {
                    continue;
                };
                let Some(&id) = by_ino.get(&client) else {
                    continue;
                };
                let mut buf = vec![0u8; info.rqueue as usize];
                let p = sockmsg::peek(server.as_fd(), &mut buf, libc::MSG_DONTWAIT)?;
                if p.as_ref().is_none_or(|p| {
                    !p.control.is_empty() || p.control_truncated || p.len != buf.len()
                }) {
                    return Err(Error::task(
                        self.sockets[&client].pid,
                        format!(
                            "fd {}: a connection not accepted yet: what it sent carries control \
                             data or could not be read whole",
                            self.sockets[&client].fd
                        ),
                    ));
                }
                log::debug!(
                    "unix socket {client}: {} byte(s) sent before the accept",
                    buf.len()
                );
                self.queues.push((
                    pb::SkPacketEntry {
                        id_for: id,
                        length: buf.len() as u32,
                        scm: Vec::new(),
                    },
                    buf,
                ));
            }
        }
        self.write_images(dir)
    }

    /// The descriptors in flight found since the last call.
    pub fn take_in_flight(&mut self) -> Vec<InFlight> {
        std::mem::take(&mut self.in_flight)
    }

    /// Names the files (by file id) that travel with queued message `message`.
    pub fn set_rights(&mut self, message: usize, ids: Vec<u32>) {
        self.queues[message].0.scm = vec![pb::ScmEntry {
            r#type: libc::SCM_RIGHTS as u32,
            rights: ids,
        }];
    }

    /// files.img entries for the named sockets outside the dump that datagram sockets of the
    /// dump are connected to (--ext-unix-sk), marked external, with ids from `first_id` on.
    pub fn external_peers(&self, first_id: u32) -> Vec<pb::FileEntry> {
        let mut out: Vec<pb::FileEntry> = Vec::new();
        for s in self.sockets.values() {
            let (Some(peer), Some((ty, name))) =
                (s.peer, s.one_way.as_ref().or(s.outside.as_ref()))
            else {
                continue;
            };
            if self.sockets.contains_key(&peer)
                || out
                    .iter()
                    .any(|e| e.usk.as_ref().is_some_and(|u| u.ino == peer))
            {
                continue;
            }
            let id = first_id + out.len() as u32;
            out.push(pb::FileEntry {
                r#type: pb::FdTypes::Unixsk as i32,
                id,
                usk: Some(pb::UnixSkEntry {
                    id,
                    ino: peer,
                    r#type: *ty as u32,
                    state: STATE_CLOSE as u32,
                    uflags: USK_EXTERN,
                    name: name.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        out
    }

    pub fn write_images(&self, dir: &ImageDir) -> Result<()> {
        if self.queues.is_empty() {
            return Ok(());
        }
        let mut w = dir.create(Kind::SkQueues, "")?;
        for (e, bytes) in &self.queues {
            w.write(e)?;
            w.write_raw(bytes)?;
        }
        w.finish()
    }
}

/// `socket:[ino]`: a unix socket, or an error naming what it is.
pub fn dump_socket(fd: &TaskFd, ino: u64, id: u32, dump: &mut UnixDump) -> Result<pb::FileEntry> {
    let copy = fd.copy()?;
    let sock = copy.as_fd();
    let family = sockopt::get_int(sock, libc::SO_DOMAIN)?;
    if family != libc::AF_UNIX {
        return Err(fd.unsupported(format!(
            "{}: {} (only unix sockets are supported yet)",
            fd.link,
            describe_other(sock, family)
        )));
    }
    let ino = u32::try_from(ino)
        .map_err(|_| fd.unsupported(format!("{}: inode above 32 bits", fd.link)))?;
    let info = unix_diag::query(ino)?.ok_or_else(|| {
        fd.unsupported(format!(
            "{}: sock_diag does not know this unix socket (in another network namespace?)",
            fd.link
        ))
    })?;
    let mut info = info;
    // A datagram socket others connected to reads as established, with no peer of its own.
    if info.sock_type as i32 == libc::SOCK_DGRAM
        && info.state == STATE_ESTABLISHED
        && info.peer.is_none()
    {
        info.state = STATE_CLOSE;
    }
    let kind = type_name(info.sock_type);
    let bad = |what: String| fd.unsupported(format!("{}: unix {kind} socket {what}", fd.link));
    let named = info.name.as_ref().is_some_and(|n| !n.is_empty());
    if info.state == STATE_LISTEN && info.rqueue != 0 {
        // Made again at restore by connecting each client to the listener's name.
        let why = if info.icons.contains(&0) {
            Some("one of them from a client that is closed")
        } else if !named {
            Some("no name to connect to")
        } else if info.icons.len() != info.rqueue as usize {
            Some("the kernel did not list them all")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(bad(format!(
                "listening{} with {} connection(s) not accepted yet: {why} (not supported yet)",
                name_suffix(&info),
                info.rqueue
            )));
        }
    }
    // A client whose connection waits in a listener's queue: its peer (the server side, not
    // accepted yet) has no inode; the listener lists it.
    let mut pending_on = None;
    if info.state == STATE_ESTABLISHED && info.peer.is_none() && info.shutdown == 0 {
        if let Some(l) = unix_diag::listeners()?
            .into_iter()
            .find(|l| l.icons.contains(&ino))
        {
            if info.wmem_alloc != 0 {
                // Read only by accepting the connection, which the tree must not see.
                if dump.leave_running || info.sock_type as i32 != libc::SOCK_STREAM {
                    return Err(bad(format!(
                        "waiting to be accepted by the listener socket:[{}]{}, with data sent \
                         that the server has not read ({})",
                        l.ino,
                        name_suffix(&l),
                        if dump.leave_running {
                            "it can only be read by accepting the connection: not with \
                             --leave-running"
                        } else {
                            "not supported yet on seqpacket sockets"
                        }
                    )));
                }
                dump.early_senders.insert(ino, l.ino);
            }
            pending_on = Some(l.ino);
            info.peer = Some(l.ino);
        }
    }
    if named && info.state == STATE_ESTABLISHED && info.sock_type as i32 == libc::SOCK_DGRAM {
        return Err(bad(format!(
            "connected and bound to a name{} (not supported yet)",
            name_suffix(&info)
        )));
    }
    let bound = match &info.name {
        Some(n) if named => Some(bound_name(fd, n, info.vfs, &bad)?),
        _ => None,
    };
    if info.state == STATE_LISTEN && info.rqueue != 0 && bound.as_ref().is_some_and(|b| b.deleted) {
        return Err(bad(format!(
            "listening{} with connection(s) not accepted yet, its socket file removed (not \
             supported yet)",
            name_suffix(&info)
        )));
    }
    if named && info.state == STATE_CLOSE && info.rqueue != 0 {
        return Err(bad(format!(
            "bound to a name{} with datagrams queued (their senders' addresses would be lost: \
             not supported yet)",
            name_suffix(&info)
        )));
    }
    // A datagram socket connected to a named socket that is not connected back to it.
    let one_way = match info.peer {
        Some(p) if info.sock_type as i32 == libc::SOCK_DGRAM => match unix_diag::query(p)? {
            Some(pi) if pi.peer != Some(ino) => match pi.name {
                Some(n) if !n.is_empty() => Some((pi.sock_type, n)),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    };
    // Allowed outside the dump by --external unix[INO]: the peer's kind, for its entry.
    let outside = match info.peer {
        Some(p) if one_way.is_none() && dump.external.contains(&ino) => {
            unix_diag::query(p)?.map(|pi| (pi.sock_type, pi.name.unwrap_or_default()))
        }
        _ => None,
    };
    if one_way.is_some() && info.rqueue != 0 {
        return Err(bad(
            "connected to a named socket, with datagrams queued (not supported yet)".into(),
        ));
    }
    if !matches!(
        info.sock_type as i32,
        libc::SOCK_STREAM | libc::SOCK_DGRAM | libc::SOCK_SEQPACKET
    ) {
        return Err(bad("of an unknown type".into()));
    }
    match (info.state, info.peer) {
        (STATE_ESTABLISHED, Some(_)) | (STATE_CLOSE, None) | (STATE_LISTEN, None) => {}
        (STATE_ESTABLISHED, None) => {
            return Err(bad("whose peer is closed (not supported yet)".to_owned()))
        }
        (state, _) => return Err(bad(format!("in state {state} (not supported yet)"))),
    }
    if info.shutdown != 0 {
        let how = match info.shutdown {
            1 => "for reading",
            2 => "for writing",
            _ => "both ways",
        };
        return Err(bad(format!("shut down {how} (not supported yet)")));
    }
    let in_flight: u32 = fd
        .info
        .extra
        .iter()
        .find(|(k, _)| k == "scm_fds")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    if sockopt::filter_len(sock)? != 0 {
        return Err(bad(
            "with a socket filter attached (not supported yet)".into()
        ));
    }
    if sockopt::get_int(sock, SO_PEEK_OFF)? != -1 {
        return Err(bad("with SO_PEEK_OFF in use (not supported yet)".to_owned()));
    }

    if info.state == STATE_LISTEN && info.rqueue != 0 {
        dump.unaccepted_data.push((ino, fd.copy()?));
    }
    let opts = dump_opts(sock)?;
    let fown = files::dump_fown(sock)?;
    // A listener's queue holds connections, refused above when there are any.
    let mut rights: Vec<(usize, Vec<OwnedFd>)> = Vec::new();
    let queue = if info.state == STATE_LISTEN {
        Vec::new()
    } else {
        read_queue(fd, sock, &info, in_flight != 0, &mut rights)?
    };
    log::debug!(
        "pid {} fd {}: unix {kind} socket {ino}, peer {:?}, {} queued message(s), {} bytes",
        fd.pid,
        fd.fd,
        info.peer,
        queue.len(),
        queue.iter().map(Vec::len).sum::<usize>()
    );
    for (i, fds) in rights {
        dump.in_flight.push(InFlight {
            message: dump.queues.len() + i,
            fds,
            holder: (fd.pid, fd.fd),
        });
    }
    for bytes in queue {
        dump.queues.push((
            pb::SkPacketEntry {
                id_for: id,
                length: bytes.len() as u32,
                scm: Vec::new(),
            },
            bytes,
        ));
    }
    dump.sockets.insert(
        ino,
        SeenSocket {
            peer: info.peer,
            named,
            one_way,
            outside,
            pending_on,
            icons: if info.state == STATE_LISTEN {
                info.icons.clone()
            } else {
                Vec::new()
            },
            id,
            pid: fd.pid,
            fd: fd.fd,
            link: fd.link.to_owned(),
        },
    );
    Ok(pb::FileEntry {
        r#type: pb::FdTypes::Unixsk as i32,
        id,
        usk: Some(pb::UnixSkEntry {
            id,
            ino,
            r#type: info.sock_type as u32,
            state: info.state as u32,
            flags: fd.flags,
            uflags: 0,
            // Only listeners have a backlog (sock_diag reports it as their write queue).
            backlog: if info.state == STATE_LISTEN {
                info.wqueue
            } else {
                0
            },
            peer: info.peer.unwrap_or(0),
            fown,
            opts,
            name: bound.as_ref().map(|b| b.name.clone()).unwrap_or_default(),
            file_perms: bound.as_ref().and_then(|b| b.perms),
            deleted: bound.as_ref().map(|b| b.deleted),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The name a socket is bound to, as the images keep it.
struct BoundName {
    /// sun_path bytes: an absolute path, or NUL and an abstract name.
    name: Vec<u8>,
    /// Owner and mode of the socket file (a path still naming this socket).
    perms: Option<pb::FilePermsEntry>,
    /// The socket file was removed (or replaced) since the bind: bound again, then removed.
    deleted: bool,
}

fn bound_name(
    fd: &TaskFd,
    name: &[u8],
    vfs: Option<(u32, u32)>,
    bad: &dyn Fn(String) -> Error,
) -> Result<BoundName> {
    if name.first() == Some(&0) {
        return Ok(BoundName {
            name: name.to_vec(),
            perms: None,
            deleted: false,
        });
    }
    let path = String::from_utf8_lossy(until_nul(name)).into_owned();
    if !path.starts_with('/') {
        return Err(bad(format!(
            "bound to the relative path {path} (not supported yet)"
        )));
    }
    // The path may name our socket still, or nothing (unlinked), or another file now.
    let meta = std::fs::symlink_metadata(&path).ok();
    let ours = match (&meta, vfs) {
        (Some(m), Some((_, ino))) => {
            use std::os::unix::fs::{FileTypeExt, MetadataExt};
            m.file_type().is_socket() && m.ino() == ino as u64
        }
        _ => false,
    };
    log::debug!(
        "pid {} fd {}: unix socket bound to {path}{}",
        fd.pid,
        fd.fd,
        if ours { "" } else { " (file removed)" }
    );
    Ok(BoundName {
        name: name.to_vec(),
        perms: meta.filter(|_| ours).map(|m| {
            use std::os::unix::fs::MetadataExt;
            pb::FilePermsEntry {
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
            }
        }),
        deleted: !ours,
    })
}

/// " to NAME" (" to @NAME" for an abstract one), for messages.
fn printable_name(n: &[u8]) -> String {
    match n.first() {
        Some(0) => format!(" @{}", String::from_utf8_lossy(&n[1..])),
        Some(_) => format!(" {}", String::from_utf8_lossy(until_nul(n))),
        None => String::new(),
    }
}

/// CRIU's mark of a socket outside the dump (unix_sk_entry.uflags).
const USK_EXTERN: u32 = 1;

/// A path name as bound: sun_path may carry the terminating NUL (and more).
fn until_nul(name: &[u8]) -> &[u8] {
    name.split(|&b| b == 0).next().unwrap_or(name)
}

fn type_name(ty: u8) -> &'static str {
    match ty as i32 {
        libc::SOCK_STREAM => "stream",
        libc::SOCK_DGRAM => "datagram",
        libc::SOCK_SEQPACKET => "seqpacket",
        _ => "unknown-type",
    }
}

fn name_suffix(info: &UnixSockInfo) -> String {
    match &info.name {
        Some(n) if n.first() == Some(&0) => {
            format!(" to @{}", String::from_utf8_lossy(&n[1..]))
        }
        Some(n) if !n.is_empty() => format!(" to {}", String::from_utf8_lossy(until_nul(n))),
        _ => String::new(),
    }
}

/// "listening TCP/IPv4 socket" and the like, for the error about a socket we do not support.
fn describe_other(sock: BorrowedFd<'_>, family: i32) -> String {
    let fam = match family {
        libc::AF_INET => "IPv4".to_owned(),
        libc::AF_INET6 => "IPv6".to_owned(),
        libc::AF_NETLINK => "netlink".to_owned(),
        libc::AF_PACKET => "packet".to_owned(),
        f => format!("family {f}"),
    };
    let ty = sockopt::get_int(sock, libc::SO_TYPE).unwrap_or(-1);
    let proto = sockopt::get_int(sock, libc::SO_PROTOCOL).unwrap_or(-1);
    let what = match (family, ty, proto) {
        (libc::AF_INET | libc::AF_INET6, _, libc::IPPROTO_TCP) => format!("TCP/{fam}"),
        (libc::AF_INET | libc::AF_INET6, _, libc::IPPROTO_UDP) => format!("UDP/{fam}"),
        _ => format!("{fam} {}", type_name(ty as u8)),
    };
    let listening = sockopt::get_int(sock, libc::SO_ACCEPTCONN).unwrap_or(0) != 0;
    format!("{}{what} socket", if listening { "listening " } else { "" })
}

fn dump_opts(sock: BorrowedFd<'_>) -> Result<pb::SkOptsEntry> {
    let int = |opt| sockopt::get_int(sock, opt);
    let (snd_sec, snd_usec) = sockopt::get_timeout(sock, libc::SO_SNDTIMEO)?;
    let (rcv_sec, rcv_usec) = sockopt::get_timeout(sock, libc::SO_RCVTIMEO)?;
    Ok(pb::SkOptsEntry {
        so_sndbuf: int(libc::SO_SNDBUF)? as u32,
        so_rcvbuf: int(libc::SO_RCVBUF)? as u32,
        so_snd_tmo_sec: snd_sec,
        so_snd_tmo_usec: snd_usec,
        so_rcv_tmo_sec: rcv_sec,
        so_rcv_tmo_usec: rcv_usec,
        so_priority: Some(int(libc::SO_PRIORITY)? as u32),
        so_rcvlowat: Some(int(libc::SO_RCVLOWAT)? as u32),
        so_mark: Some(int(libc::SO_MARK)? as u32),
        so_passcred: Some(int(libc::SO_PASSCRED)? != 0),
        so_passsec: Some(int(libc::SO_PASSSEC)? != 0),
        so_buf_lock: Some(int(SO_BUF_LOCK)? as u32),
        ..Default::default()
    })
}

/// The socket's receive queue, oldest first, without consuming it.
fn read_queue(
    fd: &TaskFd,
    sock: BorrowedFd<'_>,
    info: &UnixSockInfo,
    carries_files: bool,
    rights: &mut Vec<(usize, Vec<OwnedFd>)>,
) -> Result<Vec<Vec<u8>>> {
    if info.sock_type as i32 == libc::SOCK_STREAM && carries_files && info.rqueue != 0 {
        sockopt::set_int(sock, SO_PEEK_OFF, 0)?;
        let walked = walk_stream(fd, sock, info.rqueue as usize, rights);
        let reset = sockopt::set_int(sock, SO_PEEK_OFF, -1);
        let chunks = walked?;
        reset?;
        return Ok(chunks);
    }
    if info.sock_type as i32 == libc::SOCK_STREAM {
        // One peek from the start of the stream reads across all its buffers.
        if info.rqueue == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; info.rqueue as usize];
        let got = match sockmsg::peek(sock, &mut buf, 0)? {
            Some(p) => {
                check_control(fd, &p, false)?;
                p.len
            }
            None => 0,
        };
        if got != buf.len() {
            return Err(fd.unsupported(format!(
                "{}: only {got} of the {} queued bytes could be read (out-of-band data?)",
                fd.link,
                buf.len()
            )));
        }
        return Ok(vec![buf]);
    }

    // Datagrams: walk the queue with a peek offset, each message probed for its length first
    // (MSG_TRUNC with no buffer), then peeked whole.
    sockopt::set_int(sock, SO_PEEK_OFF, 0)?;
    let walked = walk_datagrams(fd, sock, rights);
    let reset = sockopt::set_int(sock, SO_PEEK_OFF, -1);
    let messages = walked?;
    reset?;
    if info.sock_type as i32 == libc::SOCK_SEQPACKET {
        // For seqpacket sockets sock_diag counts all queued bytes: check that we saw them.
        let total: usize = messages.iter().map(Vec::len).sum();
        if total != info.rqueue as usize {
            return Err(fd.unsupported(format!(
                "{}: read {total} of the {} queued bytes",
                fd.link, info.rqueue
            )));
        }
    }
    Ok(messages)
}

/// A stream whose queue carries files, in the pieces a read returns: the kernel ends a read
/// after the bytes that came with descriptors (and between different writers), so each
/// piece's descriptors belong with it; the refill sends each piece with its descriptors.
/// Where in a piece the bytes sent with the descriptors begin is lost: a peek reports the
/// descriptors of the next buffer whatever byte it stops at. So after a restore they come
/// with the first read of the piece, not of their own bytes (a reader that reads whole
/// pieces sees no difference).
fn walk_stream(
    fd: &TaskFd,
    sock: BorrowedFd<'_>,
    queued: usize,
    rights: &mut Vec<(usize, Vec<OwnedFd>)>,
) -> Result<Vec<Vec<u8>>> {
    let mut chunks = Vec::new();
    let mut total = 0;
    while total < queued {
        let mut buf = vec![0u8; queued - total];
        let Some(p) = sockmsg::peek(sock, &mut buf, 0)? else {
            break;
        };
        check_control(fd, &p, true)?;
        if p.len == 0 {
            break;
        }
        buf.truncate(p.len);
        if !p.fds.is_empty() {
            rights.push((chunks.len(), p.fds));
        }
        total += p.len;
        chunks.push(buf);
    }
    if total != queued {
        return Err(fd.unsupported(format!(
            "{}: only {total} of the {queued} queued bytes could be read",
            fd.link
        )));
    }
    Ok(chunks)
}

/// Each message's bytes; the descriptors in flight with any of them go into `rights` as
/// (message index, our copies).
fn walk_datagrams(
    fd: &TaskFd,
    sock: BorrowedFd<'_>,
    rights: &mut Vec<(usize, Vec<OwnedFd>)>,
) -> Result<Vec<Vec<u8>>> {
    let mut messages = Vec::new();
    let mut total = 0usize;
    while let Some(probe) = sockmsg::peek(sock, &mut [], libc::MSG_TRUNC)? {
        check_control(fd, &probe, true)?;
        let len = probe.len;
        let mut fds = probe.fds;
        // An empty datagram: the probe has stepped over it already (the kernel marks it
        // peeked and the next peek at this offset skips it).
        let mut buf = vec![0u8; len];
        if len > 0 {
            let p = sockmsg::peek(sock, &mut buf, 0)?.ok_or_else(|| {
                Error::task(fd.pid, format!("fd {}: {}: queue changed", fd.fd, fd.link))
            })?;
            check_control(fd, &p, true)?;
            fds = p.fds;
            if p.len != len || p.truncated {
                return Err(Error::task(
                    fd.pid,
                    format!(
                        "fd {}: {}: a {len}-byte message peeked as {} bytes",
                        fd.fd, fd.link, p.len
                    ),
                ));
            }
        }
        total += len;
        if total > MAX_QUEUE_BYTES || messages.len() > MAX_QUEUE_BYTES / 64 {
            return Err(fd.unsupported(format!(
                "{}: the queue does not end (is something still sending to it?)",
                fd.link
            )));
        }
        if !fds.is_empty() {
            rights.push((messages.len(), fds));
        }
        messages.push(buf);
    }
    Ok(messages)
}

/// Control data we cannot carry: anything but descriptors (`rights_ok`: on a datagram or
/// seqpacket queue).
fn check_control(fd: &TaskFd, p: &Peeked, rights_ok: bool) -> Result<()> {
    if p.control.is_empty() && !p.control_truncated {
        return Ok(());
    }
    if rights_ok
        && !p.control_truncated
        && p.control
            .iter()
            .all(|&c| c == (libc::SOL_SOCKET, libc::SCM_RIGHTS))
    {
        return Ok(());
    }
    let has = |ty| p.control.contains(&(libc::SOL_SOCKET, ty));
    let what = if has(libc::SCM_RIGHTS) {
        "file descriptors in flight (SCM_RIGHTS)"
    } else if has(libc::SCM_CREDENTIALS) {
        "credentials (SCM_CREDENTIALS, SO_PASSCRED)"
    } else {
        "control messages"
    };
    Err(fd.unsupported(format!(
        "{}: a queued message carries {what} (not supported yet)",
        fd.link
    )))
}

// ---------------------------------------------------------------------------------------------
// Restore

/// sk-queues.img: the saved messages of each socket, by its file id, oldest first.
#[derive(Default)]
pub struct QueueImages {
    by_socket: HashMap<u32, Vec<Vec<u8>>>,
    /// Files in flight: (socket id, message index) → file ids, passed along with the message.
    rights: HashMap<(u32, usize), Vec<u32>>,
}

impl QueueImages {
    pub fn load(dir: &ImageDir) -> Result<QueueImages> {
        let mut by_socket: HashMap<u32, Vec<Vec<u8>>> = HashMap::new();
        let mut rights = HashMap::new();
        if let Some(mut r) = dir.open_optional(Kind::SkQueues, "")? {
            while let Some(e) = r.read_entry::<pb::SkPacketEntry>()? {
                let bytes = r.read_raw(e.length as usize)?;
                let queue = by_socket.entry(e.id_for).or_default();
                for scm in &e.scm {
                    if scm.r#type != libc::SCM_RIGHTS as u32 {
                        return Err(Error::image(
                            r.path().to_owned(),
                            format!(
                                "a message queued for socket {} carries control data of type \
                                 {}, which this build cannot restore",
                                e.id_for, scm.r#type
                            ),
                        ));
                    }
                    rights
                        .entry((e.id_for, queue.len()))
                        .or_insert_with(Vec::new)
                        .extend(scm.rights.iter().copied());
                }
                queue.push(bytes);
            }
        }
        Ok(QueueImages { by_socket, rights })
    }

    fn of(&self, id: u32) -> &[Vec<u8>] {
        self.by_socket.get(&id).map_or(&[], Vec::as_slice)
    }

    /// Every file in flight: they are opened like the tasks' files, before the sockets whose
    /// queues carry them.
    pub fn files_in_flight(&self) -> impl Iterator<Item = u32> + '_ {
        self.rights.values().flatten().copied()
    }

    /// Whether socket `id`'s queue carries files.
    pub fn carries_files(&self, id: u32) -> bool {
        self.rights.keys().any(|&(s, _)| s == id)
    }
}

/// Whether the saved socket is opened after the others: a listener (after the connections it
/// accepted, made through a stand-in bound to its name), or a socket connected by name to a
/// socket that is not connected back (after that one is bound).
pub fn opens_late(sk: &pb::UnixSkEntry, peer: Option<&pb::UnixSkEntry>) -> bool {
    sk.state as u8 == STATE_LISTEN || peer.is_some_and(|p| p.peer != sk.ino && !p.name.is_empty())
}

/// Whether the saved socket is a client whose connection waited in `peer`'s queue (a
/// listener): it connects again once every listener listens.
pub fn waits_for_listener(sk: &pb::UnixSkEntry, peer: Option<&pb::UnixSkEntry>) -> bool {
    sk.state as u8 == STATE_ESTABLISHED && peer.is_some_and(|p| p.state as u8 == STATE_LISTEN)
}

/// Connects `s` to the name `peer` is bound to.
fn connect_by_name(s: &OwnedFd, peer: &pb::UnixSkEntry) -> Result<()> {
    let name = printable_name(&peer.name);
    let addr = if peer.name.first() == Some(&0) {
        socket::UnixAddr::new_abstract(&peer.name[1..])
    } else {
        socket::UnixAddr::new(std::path::Path::new(std::ffi::OsStr::from_bytes(
            until_nul(&peer.name),
        )))
    }
    .map_err(|e| Error::sys(format!("unix address{name}"), e))?;
    socket::connect(s.as_raw_fd(), &addr)
        .map_err(|e| Error::sys(format!("connect to the unix socket{name}"), e))
}

/// Creates the socket `sk` and, when it is connected, its peer `peer` with it (one
/// socketpair), each with its queue refilled from the other.
pub fn open_socket(
    sk: &pb::UnixSkEntry,
    peer: Option<&pb::UnixSkEntry>,
    queues: &QueueImages,
    opened: &dyn Fn(u32) -> Option<std::os::fd::RawFd>,
) -> Result<Vec<(u32, OwnedFd)>> {
    check_restorable(sk)?;
    let ty = SockType::try_from(sk.r#type as i32).map_err(|_| {
        Error::InvalidOptions(format!(
            "unix socket {}: unknown type {}",
            sk.ino, sk.r#type
        ))
    })?;
    let what = |verb: &str| format!("{verb} for unix socket {}", sk.ino);
    // Only a datagram socket is connected again by name to a socket outside the dump; other
    // connections to one come back only as a descriptor the caller gives.
    let peer = match peer {
        Some(p) if p.uflags & USK_EXTERN != 0 && sk.r#type as i32 != libc::SOCK_DGRAM => {
            return Err(Error::InvalidOptions(format!(
                "unix socket {} was connected to socket {} outside the dump: give a socket \
                 in its place with --inherit-fd fd[N]:socket:[{}]",
                sk.ino, p.ino, sk.ino
            )))
        }
        p => p,
    };
    match (sk.state as u8, peer) {
        (STATE_ESTABLISHED, Some(listener)) if listener.state as u8 == STATE_LISTEN => {
            // A connection not accepted at dump time: connected again, it waits in the
            // restored listener's queue (the server side has nothing to send before accept).
            let s = socket::socket(AddressFamily::Unix, ty, SockFlag::SOCK_CLOEXEC, None)
                .map_err(|e| Error::sys(what("socket"), e))?;
            bind_name(&s, sk)?;
            connect_by_name(&s, listener)?;
            // Its queue in the images is what it had sent before the accept: sent again.
            make_room(s.as_fd(), &sk.opts, queues.of(sk.id))?;
            refill(s.as_fd(), queues, sk, opened)?;
            set_buffers(s.as_fd(), &sk.opts)?;
            set_behaviour(s.as_fd(), &sk.opts)?;
            files::restore_status_flags(s.as_fd(), sk.flags)?;
            Ok(vec![(sk.id, s)])
        }
        (STATE_ESTABLISHED, Some(peer))
            if peer.peer != sk.ino
                && sk.r#type as i32 == libc::SOCK_DGRAM
                && !peer.name.is_empty() =>
        {
            // Connected again by name: the peer is bound already (a socket of the tree, opened
            // before: see `opens_late`) or lives outside (--ext-unix-sk).
            if !queues.of(sk.id).is_empty() {
                return Err(Error::InvalidOptions(format!(
                    "unix socket {} connected to a named socket has queued messages",
                    sk.ino
                )));
            }
            let s = socket::socket(AddressFamily::Unix, ty, SockFlag::SOCK_CLOEXEC, None)
                .map_err(|e| Error::sys(what("socket"), e))?;
            bind_name(&s, sk)?;
            connect_by_name(&s, peer)?;
            set_buffers(s.as_fd(), &sk.opts)?;
            set_behaviour(s.as_fd(), &sk.opts)?;
            files::restore_status_flags(s.as_fd(), sk.flags)?;
            Ok(vec![(sk.id, s)])
        }
        (STATE_ESTABLISHED, Some(peer)) => {
            check_restorable(peer)?;
            if peer.peer != sk.ino || peer.r#type != sk.r#type {
                return Err(Error::InvalidOptions(format!(
                    "unix socket {} and its peer {} do not form a pair",
                    sk.ino, peer.ino
                )));
            }
            let (a, b) = if !sk.name.is_empty() {
                let (accepted, client) = accepted_pair(sk, ty)?;
                (accepted, client)
            } else if !peer.name.is_empty() {
                let (accepted, client) = accepted_pair(peer, ty)?;
                (client, accepted)
            } else {
                socket::socketpair(AddressFamily::Unix, ty, None, SockFlag::SOCK_CLOEXEC)
                    .map_err(|e| Error::sys(what("socketpair"), e))?
            };
            // Each queue is sent by the peer: room for it in the sender's buffer first.
            make_room(b.as_fd(), &peer.opts, queues.of(sk.id))?;
            make_room(a.as_fd(), &sk.opts, queues.of(peer.id))?;
            refill(b.as_fd(), queues, sk, opened)?;
            refill(a.as_fd(), queues, peer, opened)?;
            for (fd, e) in [(&a, sk), (&b, peer)] {
                set_buffers(fd.as_fd(), &e.opts)?;
                set_behaviour(fd.as_fd(), &e.opts)?;
                files::restore_status_flags(fd.as_fd(), e.flags)?;
            }
            Ok(vec![(sk.id, a), (peer.id, b)])
        }
        (STATE_CLOSE | STATE_LISTEN, None) if sk.peer == 0 => {
            if !queues.of(sk.id).is_empty() {
                return Err(Error::InvalidOptions(format!(
                    "unconnected unix socket {} has queued messages",
                    sk.ino
                )));
            }
            let s = socket::socket(AddressFamily::Unix, ty, SockFlag::SOCK_CLOEXEC, None)
                .map_err(|e| Error::sys(what("socket"), e))?;
            bind_name(&s, sk)?;
            if sk.state as u8 == STATE_LISTEN {
                let backlog = socket::Backlog::new(sk.backlog.min(i32::MAX as u32) as i32)
                    .map_err(|e| Error::sys(what("listen backlog"), e))?;
                socket::listen(&s, backlog).map_err(|e| Error::sys(what("listen"), e))?;
            }
            set_buffers(s.as_fd(), &sk.opts)?;
            set_behaviour(s.as_fd(), &sk.opts)?;
            files::restore_status_flags(s.as_fd(), sk.flags)?;
            Ok(vec![(sk.id, s)])
        }
        (STATE_ESTABLISHED, None) => Err(Error::InvalidOptions(format!(
            "unix socket {}: its peer {} is not among the files to restore (a socket \
             connected outside the dump comes back with --inherit-fd fd[N]:socket:[{}])",
            sk.ino, sk.peer, sk.ino
        ))),
        (state, _) => Err(Error::InvalidOptions(format!(
            "unix socket {} in state {state}, which this build cannot restore",
            sk.ino
        ))),
    }
}

/// Binds a restored socket to its saved name. A path still naming a socket file is the dead
/// original's (its file outlives it): removed first. A socket file removed at dump time is
/// removed again after the bind.
fn bind_name(s: &OwnedFd, sk: &pb::UnixSkEntry) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    if sk.name.is_empty() {
        return Ok(());
    }
    if sk.name[0] == 0 {
        let addr = socket::UnixAddr::new_abstract(&sk.name[1..])
            .map_err(|e| Error::sys(format!("abstract name of unix socket {}", sk.ino), e))?;
        return socket::bind(s.as_raw_fd(), &addr).map_err(|e| {
            Error::sys(
                format!(
                    "bind unix socket {} to @{}",
                    sk.ino,
                    String::from_utf8_lossy(&sk.name[1..])
                ),
                e,
            )
        });
    }
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(until_nul(&sk.name)));
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() || sk.deleted == Some(true) {
            return Err(Error::InvalidOptions(format!(
                "unix socket {}: {} is taken by another file",
                sk.ino,
                path.display()
            )));
        }
        std::fs::remove_file(path)
            .map_err(|e| Error::io(format!("remove the old socket file {}", path.display()), e))?;
    }
    let addr = socket::UnixAddr::new(path)
        .map_err(|e| Error::sys(format!("name of unix socket {}", sk.ino), e))?;
    socket::bind(s.as_raw_fd(), &addr).map_err(|e| {
        Error::sys(
            format!("bind unix socket {} to {}", sk.ino, path.display()),
            e,
        )
    })?;
    if sk.deleted == Some(true) {
        std::fs::remove_file(path)
            .map_err(|e| Error::io(format!("remove {} again", path.display()), e))?;
    } else if let Some(p) = &sk.file_perms {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(p.mode & 0o7777))
            .map_err(|e| Error::io(format!("chmod {}", path.display()), e))?;
        std::os::unix::fs::lchown(path, Some(p.uid), Some(p.gid))
            .map_err(|e| Error::io(format!("chown {}", path.display()), e))?;
    }
    Ok(())
}

/// A connection accepted by a listener bound to `accepted`'s name: a stand-in listener bound
/// to that name for the time of one connect and accept (the accepted socket takes its name
/// from it), then closed and its file removed, before the tree's own listener (if any) binds
/// the name: `files::open_all` opens such pairs before listeners. Returns (accepted, client).
fn accepted_pair(accepted: &pb::UnixSkEntry, ty: SockType) -> Result<(OwnedFd, OwnedFd)> {
    let what = |verb: &str| format!("{verb} for the accepted unix socket {}", accepted.ino);
    let stand_in = socket::socket(AddressFamily::Unix, ty, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| Error::sys(what("socket"), e))?;
    bind_name_keeping_file(&stand_in, accepted)?;
    let result = (|| {
        socket::listen(
            &stand_in,
            socket::Backlog::new(1).expect("1 is a valid backlog"),
        )
        .map_err(|e| Error::sys(what("listen"), e))?;
        let client = socket::socket(AddressFamily::Unix, ty, SockFlag::SOCK_CLOEXEC, None)
            .map_err(|e| Error::sys(what("socket"), e))?;
        let addr = socket::getsockname::<socket::UnixAddr>(stand_in.as_raw_fd())
            .map_err(|e| Error::sys(what("getsockname"), e))?;
        socket::connect(client.as_raw_fd(), &addr).map_err(|e| Error::sys(what("connect"), e))?;
        let raw = socket::accept4(stand_in.as_raw_fd(), SockFlag::SOCK_CLOEXEC)
            .map_err(|e| Error::sys(what("accept"), e))?;
        // SAFETY: accept4 returned a new fd that nothing else owns.
        let server = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        Ok((server, client))
    })();
    drop(stand_in);
    if accepted.name.first() != Some(&0) {
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(until_nul(&accepted.name)));
        let _ = std::fs::remove_file(path);
    }
    result
}

/// `bind_name`, leaving a path's socket file in place whatever the entry says.
fn bind_name_keeping_file(s: &OwnedFd, sk: &pb::UnixSkEntry) -> Result<()> {
    bind_name(
        s,
        &pb::UnixSkEntry {
            deleted: Some(false),
            ..sk.clone()
        },
    )
}

fn check_restorable(sk: &pb::UnixSkEntry) -> Result<()> {
    let why = if !sk.name.is_empty()
        && sk.state as u8 == STATE_ESTABLISHED
        && sk.r#type as i32 == libc::SOCK_DGRAM
    {
        "connected and bound to a name"
    } else if sk.uflags != 0 {
        "external or inherited (uflags)"
    } else if sk
        .shutdown
        .is_some_and(|s| s != pb::SkShutdown::None as i32)
    {
        "shut down"
    } else {
        return Ok(());
    };
    Err(Error::InvalidOptions(format!(
        "unix socket {} is {why}, which this build cannot restore",
        sk.ino
    )))
}

/// Bytes the kernel charges per queued message beyond its data (the skb), for sizing the
/// sender's buffer during the refill; generous on purpose.
const MESSAGE_OVERHEAD: usize = 1024;

/// The refill is bounded by the sender's SO_SNDBUF (and a datagram by SO_SNDBUF - 32), and the
/// task may have lowered it after its messages were queued: during the refill the sender gets
/// the saved size or what the queue needs, whichever is larger. `set_buffers` puts the saved
/// size back afterwards.
fn make_room(sender: BorrowedFd<'_>, o: &pb::SkOptsEntry, messages: &[Vec<u8>]) -> Result<()> {
    let needed: usize = messages
        .iter()
        .map(|m| m.len() + MESSAGE_OVERHEAD)
        .sum::<usize>()
        + 64 * 1024;
    let want = (o.so_sndbuf as usize).max(needed).min(i32::MAX as usize) as i32;
    if sockopt::get_int(sender, libc::SO_SNDBUF)? >= want {
        return Ok(());
    }
    // The kernel doubles what it is given. FORCE (CAP_NET_ADMIN) ignores net.core.wmem_max.
    if sockopt::set_int(sender, libc::SO_SNDBUFFORCE, want / 2 + 1).is_err() {
        sockopt::set_int(sender, libc::SO_SNDBUF, want / 2 + 1)?;
    }
    Ok(())
}

/// SO_SNDBUF and SO_RCVBUF as saved (this locks them; `set_behaviour` puts the saved locks
/// back).
fn set_buffers(sock: BorrowedFd<'_>, o: &pb::SkOptsEntry) -> Result<()> {
    for (value, force, plain) in [
        (o.so_sndbuf, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        (o.so_rcvbuf, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
    ] {
        if value as i32 == sockopt::get_int(sock, plain)? {
            continue;
        }
        // The kernel doubles what it is given; the saved value is the doubled one. The FORCE
        // variant (CAP_NET_ADMIN) ignores net.core.[wr]mem_max, which the original may have
        // been allowed to exceed.
        if sockopt::set_int(sock, force, value as i32 / 2).is_err() {
            sockopt::set_int(sock, plain, value as i32 / 2)?;
        }
    }
    Ok(())
}

/// Options that change how the socket behaves for its owner, set after the refill (credentials
/// passing, for one, would change what the refill sends).
fn set_behaviour(sock: BorrowedFd<'_>, o: &pb::SkOptsEntry) -> Result<()> {
    sockopt::set_timeout(sock, libc::SO_SNDTIMEO, o.so_snd_tmo_sec, o.so_snd_tmo_usec)?;
    sockopt::set_timeout(sock, libc::SO_RCVTIMEO, o.so_rcv_tmo_sec, o.so_rcv_tmo_usec)?;
    let flags = [
        (o.so_passcred.map(i32::from), libc::SO_PASSCRED),
        (o.so_passsec.map(i32::from), libc::SO_PASSSEC),
        (o.so_priority.map(|v| v as i32), libc::SO_PRIORITY),
        (o.so_rcvlowat.map(|v| v as i32), libc::SO_RCVLOWAT),
        (o.so_mark.map(|v| v as i32), libc::SO_MARK),
        // Last: setting the buffer sizes above locked them; put the saved locks back.
        (o.so_buf_lock.map(|v| v as i32), SO_BUF_LOCK),
    ];
    for (value, opt) in flags {
        if let Some(v) = value {
            if sockopt::get_int(sock, opt)? != v {
                sockopt::set_int(sock, opt, v)?;
            }
        }
    }
    Ok(())
}

/// Sends `messages` from `sender` into its peer's queue, one send per saved message.
/// Sends `receiver`'s saved queue from `sender`, with the files in flight (found in
/// `opened` by file id) passed along with their messages.
fn refill(
    sender: BorrowedFd<'_>,
    queues: &QueueImages,
    receiver: &pb::UnixSkEntry,
    opened: &dyn Fn(u32) -> Option<std::os::fd::RawFd>,
) -> Result<()> {
    let messages = queues.of(receiver.id);
    let stream = receiver.r#type as i32 == libc::SOCK_STREAM;
    for (i, m) in messages.iter().enumerate() {
        let mut done = 0;
        let mut fds = Vec::new();
        for &id in queues
            .rights
            .get(&(receiver.id, i))
            .map_or(&[][..], Vec::as_slice)
        {
            fds.push(opened(id).map(crate::sys::fd::borrow).ok_or_else(|| {
                Error::InvalidOptions(format!(
                    "unix socket {}: file {id} in flight was not opened",
                    receiver.ino
                ))
            })?);
        }
        loop {
            let fds_now = if done == 0 { &fds[..] } else { &[][..] };
            let n = sockmsg::send_with_fds(sender, &m[done..], fds_now).map_err(|e| match e {
                Error::Sys { what, errno } => Error::sys(
                    format!(
                        "refill unix socket {} (message {i} of {}): {what}",
                        receiver.ino,
                        messages.len()
                    ),
                    errno,
                ),
                e => e,
            })?;
            done += n;
            if done == m.len() {
                break;
            }
            if !stream || n == 0 {
                return Err(Error::sys(
                    format!(
                        "refill unix socket {}: message {i} of {} bytes sent as {done}",
                        receiver.ino,
                        m.len()
                    ),
                    nix::errno::Errno::EMSGSIZE,
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(id: u32, peer: Option<u32>) -> SeenSocket {
        SeenSocket {
            peer,
            named: false,
            one_way: None,
            outside: None,
            pending_on: None,
            icons: Vec::new(),
            id,
            pid: 42,
            fd: id as i32,
            link: format!("socket:[{id}]"),
        }
    }

    #[test]
    fn peers_must_be_dumped_and_connected_back() {
        let mut d = UnixDump::default();
        d.sockets.insert(10, seen(1, Some(11)));
        d.sockets.insert(11, seen(2, Some(10)));
        d.sockets.insert(12, seen(3, None));
        d.check_peers().unwrap();
        d.sockets.insert(13, seen(4, Some(99)));
        let e = d.check_peers().unwrap_err().to_string();
        assert!(
            e.contains("pid 42") && e.contains("fd 4") && e.contains("socket:[99]"),
            "{e}"
        );
        d.sockets.remove(&13);
        d.sockets.insert(13, seen(4, Some(10)));
        let e = d.check_peers().unwrap_err().to_string();
        assert!(e.contains("one-way"), "{e}");
    }

    fn sk(id: u32, ino: u32, peer: u32, ty: i32) -> pb::UnixSkEntry {
        pb::UnixSkEntry {
            id,
            ino,
            r#type: ty as u32,
            state: if peer != 0 {
                STATE_ESTABLISHED
            } else {
                STATE_CLOSE
            } as u32,
            flags: libc::O_RDWR as u32,
            peer,
            opts: pb::SkOptsEntry {
                so_sndbuf: 100_000,
                so_rcvbuf: 100_000,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// Queues written by the dump come back per socket with their boundaries (the empty
    /// message too), and a restored pair delivers them in order, each whole.
    #[test]
    fn datagram_queues_round_trip_and_refill() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ImageDir::new(tmp.path());
        let msgs: Vec<Vec<u8>> = vec![b"one".to_vec(), Vec::new(), vec![7u8; 5000], b"x".to_vec()];
        let mut d = UnixDump::default();
        for m in &msgs {
            d.queues.push((
                pb::SkPacketEntry {
                    id_for: 1,
                    length: m.len() as u32,
                    scm: Vec::new(),
                },
                m.clone(),
            ));
        }
        d.write_images(&dir).unwrap();
        let queues = QueueImages::load(&dir).unwrap();
        assert_eq!(queues.of(1), &msgs[..]);
        assert!(queues.of(2).is_empty());

        let a = sk(1, 100, 101, libc::SOCK_DGRAM);
        let b = sk(2, 101, 100, libc::SOCK_DGRAM);
        let fds: HashMap<u32, OwnedFd> = open_socket(&a, Some(&b), &queues, &|_| None)
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(
            sockopt::get_int(fds[&2].as_fd(), libc::SO_SNDBUF).unwrap(),
            100_000
        );
        let mut buf = vec![0u8; 10_000];
        for m in &msgs {
            let n = socket::recv(
                fds[&1].as_raw_fd(),
                &mut buf,
                socket::MsgFlags::MSG_DONTWAIT,
            )
            .unwrap();
            assert_eq!(&buf[..n], &m[..]);
        }
        assert_eq!(
            socket::recv(
                fds[&1].as_raw_fd(),
                &mut buf,
                socket::MsgFlags::MSG_DONTWAIT
            ),
            Err(nix::errno::Errno::EAGAIN)
        );
    }

    /// A task may lower SO_SNDBUF after its messages were queued: the refill still fits, and
    /// the saved size is what the socket ends up with.
    #[test]
    fn lowered_sndbuf_still_refills() {
        let msgs: Vec<Vec<u8>> = (0..8).map(|i| vec![i as u8; 40_000]).collect();
        let queues = QueueImages {
            by_socket: HashMap::from([(1, msgs.clone())]),
            rights: HashMap::new(),
        };
        let a = sk(1, 100, 101, libc::SOCK_SEQPACKET);
        let mut b = sk(2, 101, 100, libc::SOCK_SEQPACKET);
        b.opts.so_sndbuf = 8192;
        let fds: HashMap<u32, OwnedFd> = open_socket(&a, Some(&b), &queues, &|_| None)
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(
            sockopt::get_int(fds[&2].as_fd(), libc::SO_SNDBUF).unwrap(),
            8192
        );
        let mut buf = vec![0u8; 50_000];
        for m in &msgs {
            let n = socket::recv(
                fds[&1].as_raw_fd(),
                &mut buf,
                socket::MsgFlags::MSG_DONTWAIT,
            )
            .unwrap();
            assert_eq!(&buf[..n], &m[..]);
        }
    }

    #[test]
    fn connected_named_or_half_pairs_are_not_restored() {
        let queues = QueueImages::default();
        let mut named = sk(1, 100, 101, libc::SOCK_DGRAM);
        let mut peer = sk(2, 101, 100, libc::SOCK_DGRAM);
        named.name = b"/tmp/x".to_vec();
        peer.name = b"/tmp/x".to_vec();
        let e = open_socket(&named, Some(&peer), &queues, &|_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("connected and bound to a name"), "{e}");
        let lonely = sk(1, 100, 101, libc::SOCK_STREAM);
        let e = open_socket(&lonely, None, &queues, &|_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("peer 101"), "{e}");
    }
}
