//! Open files: the fd table (fdinfo-N.img) and the file descriptions it points to (files.img).
//! Regular files and directories are reopened by path with their flags and offset (O_PATH fds
//! too, also of symlinks, FIFOs and sockets); character devices by path; deleted files from the
//! contents saved with them (ghost.rs); with --shell-job, a terminal inherited from the shell
//! is replaced by the restorer's own terminal (ptys of the tree are made again: tty.rs). Pipes and FIFOs (pipes.rs), unix sockets
//! (unix.rs), eventfds (eventfd.rs), epolls (eventpoll.rs), signalfds (signalfd.rs),
//! timerfds (timerfd.rs), inotify and fanotify (fsnotify.rs), pidfds (pidfd.rs) and memfds
//! (memfd.rs) are created anew with their state; file locks come with --file-locks (filelocks.rs).
//!
//! Dump goes through every fd of every task even after something is refused: everything that
//! cannot be dumped is reported in one error by `check_complete`.
//!
//! Restore has two phases so that the tasks of a tree can share kernel objects: `open_all`
//! creates every file description once (one pipe() for both ends, one socketpair() for both
//! sockets), and `install_from_pool` puts one task's fd numbers in place from what was created.
//! Three things wait for the second phase, which each task runs itself once every process of
//! the tree exists: pidfds of tree members and files under /proc/PID (their process does not
//! exist before the forks), epoll watches (added with the fd numbers of the task's complete
//! table, as the kernel keys them by number) and file locks (a POSIX lock is owned by the
//! process).

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use libc::pid_t;

use crate::error::{Error, Result};
use crate::eventfd;
use crate::eventpoll;
use crate::filelocks;
use crate::fsnotify;
use crate::ghost;
use crate::images::{ImageDir, Kind};
use crate::pb;
use crate::pidfd;
use crate::pipes;
use crate::procfs;
use crate::signalfd;
use crate::sys::fd as sysfd;
use crate::sys::kcmp;
use crate::sys::pidfd::PidFd;
use crate::timerfd;
use crate::unix;

/// files.img under construction: one entry per open file description, plus the files behind
/// mappings, cwd and root (CRIU gives those their own entries too); and the images that go with
/// some of them (pipe buffers, socket queues).
#[derive(Default)]
pub struct FileTable {
    pub entries: Vec<pb::FileEntry>,
    next_id: u32,
    /// Regular files referenced by path only (mappings, cwd, root, exe): path+flags → id.
    by_path: HashMap<(String, u32), u32>,
    /// Open file descriptions already dumped, by inode: (pid, fd, id). Another fd on the same
    /// inode may be the same description (dup, fork, SCM_RIGHTS): kcmp tells.
    by_ino: HashMap<u64, Vec<(pid_t, i32, u32)>>,
    pipes: pipes::PipeDump,
    unix: unix::UnixDump,
    /// IPv4/IPv6 sockets; the dump engine finishes their connections (repair mode, lock).
    pub inet: crate::inet::InetDump,
    /// Pipes and sockets by their /proc link ("pipe:[N]", "socket:[N]") → the first (pid, fd)
    /// seen holding them: a holder outside the dump would make the restore wrong.
    shared: BTreeMap<String, (pid_t, i32)>,
    /// `--external pipe[INO]` / `unix[INO]`: those links may be held outside the dump too
    /// (the restore gets them back with --inherit-fd).
    external_links: HashSet<String>,
    /// What could not be dumped so far, as (pid, "fd N: why"): the dump goes on looking at
    /// every fd and `check_complete` fails once with the whole list.
    refused: Vec<(pid_t, String)>,
    /// --ghost-limit: the largest deleted file carried in the images.
    ghost_limit: u64,
    /// --file-locks.
    file_locks: bool,
    ghosts: ghost::GhostDump,
    /// Regular-file entries of ghosts mapped by tasks: (ghost id, flags) → file id.
    ghost_entries: HashMap<(u32, u32), u32>,
    locks: filelocks::LockDump,
    memfds: crate::memfd::MemfdDump,
    /// Memfd entries of mappings: (inode id, flags) → file id.
    memfd_entries: HashMap<(u32, u32), u32>,
    /// Pidfds of live processes as (process, holder pid, holder fd): the process must be one of
    /// the dump.
    pidfd_targets: Vec<(pid_t, pid_t, i32)>,
    ttys: crate::tty::TtyDump,
    /// Our copies of descriptors in flight in socket queues, open until the dump ends (files
    /// met later are compared with them by kcmp).
    in_flight: Vec<OwnedFd>,
}

impl FileTable {
    /// The id of the open file description `pid`'s `fd` (on inode `ino`) shares with an fd
    /// dumped before, if it does.
    fn description_of(&self, pid: pid_t, fd: i32, ino: u64) -> Result<Option<u32>> {
        for &(other_pid, other_fd, id) in self.by_ino.get(&ino).map(Vec::as_slice).unwrap_or(&[]) {
            if kcmp::same_file(pid, fd, other_pid, other_fd)? {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    pub fn new() -> Self {
        FileTable {
            next_id: 1,
            ghost_limit: ghost::DEFAULT_LIMIT,
            ..Default::default()
        }
    }

    /// A table for a dump with `opts` (--ghost-limit, --file-locks).
    pub fn for_dump(opts: &crate::options::Options) -> Self {
        let mut t = FileTable {
            ghost_limit: opts.ghost_limit.unwrap_or(ghost::DEFAULT_LIMIT),
            file_locks: opts.file_locks,
            inet: crate::inet::InetDump::new(opts),
            ..FileTable::new()
        };
        t.unix.ext_unix_sk = opts.ext_unix_sk;
        t.unix.external = unix::external_inos(&opts.external);
        t.unix.leave_running = opts.leave_running;
        t.external_links = opts
            .external
            .iter()
            .filter_map(|e| {
                let (kind, rest) = e.split_once('[')?;
                let ino: u64 = rest.strip_suffix(']')?.parse().ok()?;
                let link = match kind {
                    "pipe" => "pipe",
                    "unix" => "socket",
                    _ => return None,
                };
                Some(format!("{link}:[{ino}]"))
            })
            .collect();
        t
    }

    fn alloc_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// An entry for a file we only need to find again by path (not an fd: offset 0).
    pub fn add_path(&mut self, path: &str, flags: u32) -> Result<u32> {
        if let Some(&id) = self.by_path.get(&(path.to_owned(), flags)) {
            return Ok(id);
        }
        let meta = std::fs::metadata(path).map_err(|e| Error::io(format!("stat {path}"), e))?;
        let id = self.alloc_id();
        self.entries.push(pb::FileEntry {
            r#type: pb::FdTypes::Reg as i32,
            id,
            reg: Some(reg_entry(id, path, flags, 0, &meta)),
            ..Default::default()
        });
        self.by_path.insert((path.to_owned(), flags), id);
        Ok(id)
    }

    pub fn get(&self, id: u32) -> Option<&pb::FileEntry> {
        self.entries.iter().find(|e| e.id == id)
    }

    /// An entry for a deleted file mapped through `map_file` (/proc/PID/map_files/A-B), once
    /// named `name`: its contents go into the images as a ghost file (see ghost.rs), within
    /// --ghost-limit. For mem.rs; the id is what a file mapping's `shmid` holds.
    ///
    /// A file that cannot be carried is refused like an fd: the refusal is kept for
    /// `check_complete`, which fails the dump with every other refusal, and 0 (no file's id)
    /// is returned meanwhile.
    pub fn add_ghost_mapping(
        &mut self,
        pid: pid_t,
        map_file: &str,
        name: &str,
        flags: u32,
    ) -> Result<u32> {
        let ghost = match self.ghosts.add(pid, map_file, name, self.ghost_limit)? {
            Ok(g) => g,
            Err(why) => {
                let range = map_file.rsplit('/').next().unwrap_or(map_file);
                self.refused.push((pid, format!("mapping {range}: {why}")));
                return Ok(0);
            }
        };
        if let Some(&id) = self.ghost_entries.get(&(ghost, flags)) {
            return Ok(id);
        }
        let meta =
            std::fs::metadata(map_file).map_err(|e| Error::io(format!("stat {map_file}"), e))?;
        let id = self.alloc_id();
        self.entries.push(pb::FileEntry {
            r#type: pb::FdTypes::Reg as i32,
            id,
            reg: Some(reg_entry(id, name, flags, 0, &meta)),
            ..Default::default()
        });
        self.ghosts.remap(id, ghost);
        self.ghost_entries.insert((ghost, flags), id);
        Ok(id)
    }

    /// An entry for a memfd mapped through `map_file` (/proc/PID/map_files/A-B), named `name`,
    /// opened with `flags`. For mem.rs; the id is what the mapping's `shmid` holds. A memfd that
    /// cannot be dumped is refused like an fd (see `add_ghost_mapping`).
    pub fn add_memfd_mapping(
        &mut self,
        pid: pid_t,
        map_file: &str,
        name: &str,
        flags: u32,
    ) -> Result<u32> {
        let inode_id = match self.memfds.inode(map_file, name)? {
            Ok(i) => i,
            Err(why) => {
                let range = map_file.rsplit('/').next().unwrap_or(map_file);
                self.refused.push((pid, format!("mapping {range}: {why}")));
                return Ok(0);
            }
        };
        if let Some(&id) = self.memfd_entries.get(&(inode_id, flags)) {
            return Ok(id);
        }
        let id = self.alloc_id();
        self.entries.push(crate::memfd::file_entry(
            id,
            flags,
            0,
            pb::FownEntry::default(),
            inode_id,
        ));
        self.memfd_entries.insert((inode_id, flags), id);
        Ok(id)
    }

    /// The memfds whose contents go into the images, with the shared anonymous memory.
    pub fn memfd_contents(&self) -> &[crate::mem::SharedObject] {
        self.memfds.contents()
    }

    /// Once the dump is complete and the tree is about to be killed: the data clients sent on
    /// unix connections not accepted yet (unix.rs), which only an accept can read.
    pub fn take_unaccepted_data(&mut self, dir: &ImageDir) -> Result<()> {
        if !self.unix.has_unaccepted_data() {
            return Ok(());
        }
        self.unix.take_unaccepted_data(dir)
    }

    /// After every task's fds are dumped: nothing was refused, each connected socket's peer
    /// was dumped too, each pidfd refers to a process of the dump, and no process outside
    /// `dumped` (the tree's processes and zombies) nor ourselves holds a pipe or socket of the
    /// dump (which would leave the restored tasks connected to nothing). Everything found
    /// wrong is reported in one error.
    pub fn check_complete(&self, dumped: &[pid_t]) -> Result<()> {
        let mut refused: Vec<Error> = self
            .refused
            .iter()
            .map(|(pid, what)| Error::unsupported(*pid, what.clone()))
            .collect();
        for &(target, holder, fd) in &self.pidfd_targets {
            if !dumped.contains(&target) {
                refused.push(Error::unsupported(
                    holder,
                    format!(
                        "fd {fd}: pidfd of process {target}, which is not being dumped (after a \
                         restore it would refer to whatever process has that pid)"
                    ),
                ));
            }
        }
        refused.extend(self.ttys.check());
        match self.unix.check_peers() {
            Ok(()) => {}
            Err(e @ Error::Unsupported { .. }) => refused.push(e),
            Err(e) => return Err(e),
        }
        if !self.shared.is_empty() {
            let me = std::process::id() as pid_t;
            let mut reported: HashSet<&str> = HashSet::new();
            // Our connection guard (inet.rs) holds copies of the tree's connections too.
            let ours = [dumped, &[me], self.inet.helper_pids()].concat();
            for (other, fd, link) in procfs::fd_links_of_others(&ours)? {
                if let Some((key, &(pid, our_fd))) = self.shared.get_key_value(&link) {
                    if self.external_links.contains(key) {
                        continue;
                    }
                    if reported.insert(key.as_str()) {
                        let hint = match bracketed_ino(&link, "pipe")
                            .map(|i| ("pipe", "pipe", i))
                            .or_else(|| {
                                bracketed_ino(&link, "socket").map(|i| ("unix", "socket", i))
                            }) {
                            Some((ext, key, ino)) => format!(
                                " (use --external {ext}[{ino}] to dump it anyway, and \
                                 --inherit-fd fd[N]:{key}:[{ino}] at restore to give it back)"
                            ),
                            None => String::new(),
                        };
                        refused.push(Error::unsupported(
                            pid,
                            format!(
                                "fd {our_fd}: {link} is also open in pid {other} (fd {fd}), \
                                 which is not being dumped: the restored task would lose that \
                                 connection{hint}"
                            ),
                        ));
                    }
                }
            }
        }
        if refused.is_empty() {
            Ok(())
        } else {
            Err(Error::unsupported_all(refused))
        }
    }

    /// files.img and the images of file contents: pipes-data.img, fifo-data.img,
    /// sk-queues.img, remap-fpath.img with ghost-file-N.img, filelocks.img (each only when
    /// it has entries).
    /// Terminals' sessions and foreground groups in the pids of the tree (see pidns).
    pub fn map_tty_pids(&mut self, to: &dyn Fn(pid_t) -> Result<pid_t>) -> Result<()> {
        self.ttys.map_pids(to)
    }

    pub fn write_images(&self, dir: &ImageDir) -> Result<()> {
        // Named sockets outside the dump that sockets of it are connected to (--ext-unix-sk).
        let external = self.unix.external_peers(self.next_id);
        dir.write_all(Kind::Files, "", self.entries.iter().chain(&external))?;
        self.pipes.write_images(dir)?;
        self.ghosts.write_images(dir)?;
        self.locks.write_images(dir)?;
        self.memfds.write_images(dir)?;
        self.ttys.write_images(dir)?;
        self.inet.write_images(dir)?;
        self.unix.write_images(dir)
    }
}

/// One fd of a frozen task, as the dumpers of each kind of file see it.
pub struct TaskFd<'a> {
    pub pid: pid_t,
    pub fd: i32,
    /// The /proc/PID/fd/N link: "pipe:[N]", "socket:[N]", a path...
    pub link: &'a str,
    pub info: &'a procfs::FdInfo,
    /// File status flags and access mode (fdinfo's flags without O_CLOEXEC).
    pub flags: u32,
    pidfd: &'a OnceCell<PidFd>,
    /// The RPC server's socket when an RPC client dumps itself.
    pub service_sk_ino: Option<u64>,
}

impl TaskFd<'_> {
    /// Our own copy of the fd: the same open file description, to look into the object.
    pub fn copy(&self) -> Result<OwnedFd> {
        let pidfd = match self.pidfd.get() {
            Some(p) => p,
            None => {
                let p = PidFd::open(self.pid)?;
                self.pidfd.get_or_init(|| p)
            }
        };
        pidfd.get_fd(self.fd)
    }

    /// "pid P: cannot dump fd N: `what`".
    pub fn unsupported(&self, what: impl std::fmt::Display) -> Error {
        Error::unsupported(self.pid, format!("fd {}: {what}", self.fd))
    }

    /// The value of fdinfo line `name` ("name: value"), trimmed.
    pub fn field<'b>(&'b self, name: &'b str) -> Option<&'b str> {
        self.fields(name).next()
    }

    /// The values of every fdinfo line `name`, in order (epoll "tfd", inotify "inotify wd").
    pub fn fields<'b>(&'b self, name: &'b str) -> impl Iterator<Item = &'b str> + 'b {
        self.info
            .extra
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.trim())
    }
}

/// The owner (F_SETOWN) and signal (F_SETSIG) of a file we hold a copy of.
pub fn dump_fown(fd: BorrowedFd<'_>) -> Result<pb::FownEntry> {
    let o = sysfd::get_owner(fd)?;
    Ok(pb::FownEntry {
        uid: o.uid,
        euid: o.euid,
        signum: o.signal,
        pid_type: o.kind,
        pid: o.pid as u32,
    })
}

/// File status flags (F_SETFL) of a file description being restored.
pub fn restore_status_flags(fd: BorrowedFd<'_>, flags: u32) -> Result<()> {
    sysfd::set_status_flags(fd, flags)
}

/// The owner (F_SETOWN_EX, F_SETSIG) of a file description being restored. Set when the fd
/// is installed in a task: by then every task of the tree exists, and the owner may be any.
pub fn restore_owner(fd: BorrowedFd<'_>, fown: &pb::FownEntry) -> Result<()> {
    if fown.pid == 0 && fown.signum == 0 {
        return Ok(());
    }
    sysfd::set_owner(
        fd,
        sysfd::Owner {
            kind: fown.pid_type,
            pid: fown.pid as i32,
            signal: fown.signum,
            uid: fown.uid,
            euid: fown.euid,
        },
    )
}

/// A new open file description of the object behind `fd` (a pipe or FIFO), through
/// /proc/self/fd, with `flags`; close-on-exec.
pub fn reopen(fd: BorrowedFd<'_>, flags: i32) -> Result<OwnedFd> {
    open_path(&format!("/proc/self/fd/{}", fd.as_raw_fd()), flags)
}

/// "pipe:[123]" → 123 for `kind` "pipe".
fn bracketed_ino(link: &str, kind: &str) -> Option<u64> {
    link.strip_prefix(kind)?
        .strip_prefix(":[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn reg_entry(
    id: u32,
    path: &str,
    flags: u32,
    pos: u64,
    meta: &std::fs::Metadata,
) -> pb::RegFileEntry {
    pb::RegFileEntry {
        id,
        flags,
        pos,
        fown: pb::FownEntry::default(),
        name: path.to_owned(),
        mnt_id: None,
        size: meta.file_type().is_file().then(|| meta.size()),
        mode: Some(meta.mode()),
        ..Default::default()
    }
}

const TTY_MAJORS: &[u64] = &[4, 5, 136, 137, 138, 139, 140, 141, 142, 143];

fn is_tty(meta: &std::fs::Metadata) -> bool {
    meta.file_type().is_char_device() && TTY_MAJORS.contains(&libc::major(meta.rdev()).into())
}

/// One task's fd table, dumped: fdinfo entries (fd number, FD_CLOEXEC, file id). The files go
/// into `files`; call `files.check_complete` once every task is dumped.
/// `service_sk_ino`: the RPC server's socket when an RPC client dumps itself (`rpcsk`).
pub fn dump_fds(
    pid: pid_t,
    files: &mut FileTable,
    shell_job: bool,
    service_sk_ino: Option<u64>,
    memory_trackers: &[u64],
) -> Result<Vec<pb::FdinfoEntry>> {
    let mut out: Vec<pb::FdinfoEntry> = Vec::new();
    let pidfd = OnceCell::new();
    // Memory trackers (track.rs) are ours, not the task's: its own, or one a child inherited.
    let ours = crate::track::fds_in_task(pid, memory_trackers);
    files.ttys.note_task(pid)?;
    for fd in procfs::fds(pid)?
        .into_iter()
        .filter(|fd| !ours.contains(fd))
    {
        let link = format!("/proc/{pid}/fd/{fd}");
        let target = match procfs::readlink(&link) {
            Ok(t) => t.to_string_lossy().into_owned(),
            Err(_) => continue, // closed meanwhile (cannot happen while frozen, except our own)
        };
        let info = procfs::fdinfo(pid, fd)?;
        let fd_flags = if info.flags & libc::O_CLOEXEC as u32 != 0 {
            libc::FD_CLOEXEC as u32
        } else {
            0
        };
        let file_flags = info.flags & !(libc::O_CLOEXEC as u32);

        let shared_id = files.description_of(pid, fd, info.ino)?;
        let lock_lines = info
            .extra
            .iter()
            .filter(|(k, _)| k == "lock")
            .map(|(_, v)| v.as_str());
        if let Some(id) = shared_id {
            // A description seen before: only its owner's POSIX locks are new here.
            if let Err(why) = files
                .locks
                .note(pid, fd, lock_lines, false, files.file_locks)
            {
                files
                    .refused
                    .push((pid, format!("fd {fd}: {target}: {why}")));
            }
            let ty = files
                .get(id)
                .map(|e| e.r#type)
                .unwrap_or(pb::FdTypes::Reg as i32);
            out.push(pb::FdinfoEntry {
                id,
                flags: fd_flags,
                r#type: ty,
                fd: fd as u32,
                ..Default::default()
            });
            continue;
        }

        let task_fd = TaskFd {
            pid,
            fd,
            link: &target,
            info: &info,
            flags: file_flags,
            pidfd: &pidfd,
            service_sk_ino,
        };
        let id = files.alloc_id();
        let ty = match dump_description(&task_fd, id, files, shell_job) {
            Ok(ty) => ty,
            Err(Error::Unsupported { pid, resource }) => {
                files.refused.push((pid, resource));
                continue;
            }
            Err(e) => return Err(e),
        };
        if let Err(why) = files
            .locks
            .note(pid, fd, lock_lines, true, files.file_locks)
        {
            files
                .refused
                .push((pid, format!("fd {fd}: {target}: {why}")));
        }
        files
            .by_ino
            .entry(info.ino)
            .or_default()
            .push((pid, fd, id));
        out.push(pb::FdinfoEntry {
            id,
            flags: fd_flags,
            r#type: ty as i32,
            fd: fd as u32,
            ..Default::default()
        });
    }
    Ok(out)
}

/// Classifies one open file description by its /proc link and adds its entry (entries) to
/// `files` under `id`.
fn dump_description(
    fd: &TaskFd,
    id: u32,
    files: &mut FileTable,
    shell_job: bool,
) -> Result<pb::FdTypes> {
    let target = fd.link;
    if let Some(ino) = bracketed_ino(target, "pipe") {
        files
            .shared
            .entry(target.to_owned())
            .or_insert((fd.pid, fd.fd));
        let e = pipes::dump_pipe(fd, ino, id, &mut files.pipes)?;
        files.entries.push(e);
        return Ok(pb::FdTypes::Pipe);
    }
    if let Some(ino) = bracketed_ino(target, "socket") {
        // A self-dump over RPC: the caller's socket to our server (rpcsk).
        if fd.service_sk_ino.is_some() {
            let link = format!("/proc/{}/fd/{}", fd.pid, fd.fd);
            let meta =
                std::fs::metadata(&link).map_err(|e| Error::io(format!("stat {link}"), e))?;
            if let Some(e) = crate::rpcsk::dump_service_socket(
                fd.pid,
                fd.fd,
                &meta,
                id,
                fd.flags,
                fd.service_sk_ino,
            )? {
                files.entries.push(e);
                return Ok(pb::FdTypes::Unixsk);
            }
        }
        files
            .shared
            .entry(target.to_owned())
            .or_insert((fd.pid, fd.fd));
        let family = crate::sys::sockopt::get_int(fd.copy()?.as_fd(), libc::SO_DOMAIN)?;
        if crate::inet::is_inet(family) {
            let e = crate::inet::dump_socket(fd, ino, id, &mut files.inet)?;
            files.entries.push(e);
            return Ok(pb::FdTypes::Inetsk);
        }
        let e = unix::dump_socket(fd, ino, id, &mut files.unix)?;
        files.entries.push(e);
        dump_in_flight(files)?;
        return Ok(pb::FdTypes::Unixsk);
    }
    let (entry, ty) = match target {
        "anon_inode:[eventfd]" => (eventfd::dump(fd, id)?, pb::FdTypes::Eventfd),
        "anon_inode:[eventpoll]" => (eventpoll::dump(fd, id)?, pb::FdTypes::Eventpoll),
        "anon_inode:[signalfd]" => (signalfd::dump(fd, id)?, pb::FdTypes::Signalfd),
        "anon_inode:[timerfd]" => (timerfd::dump(fd, id)?, pb::FdTypes::Timerfd),
        "anon_inode:inotify" => (fsnotify::dump_inotify(fd, id)?, pb::FdTypes::Inotify),
        "anon_inode:[fanotify]" => (fsnotify::dump_fanotify(fd, id)?, pb::FdTypes::Fanotify),
        "anon_inode:[pidfd]" => {
            let (e, process) = pidfd::dump(fd, id)?;
            if let Some(p) = process {
                files.pidfd_targets.push((p, fd.pid, fd.fd));
            }
            (e, pb::FdTypes::Pidfd)
        }
        _ if crate::memfd::name_of(target).is_some() => {
            let name = crate::memfd::name_of(target).unwrap_or_default();
            (
                crate::memfd::dump_fd(fd, name, id, &mut files.memfds)?,
                pb::FdTypes::Memfd,
            )
        }
        _ if !target.starts_with('/') => {
            // anon_inode:[io_uring], anon_inode:[userfaultfd]...
            return Err(fd.unsupported(format!("{target} (not supported yet)")));
        }
        _ => return dump_path(fd, id, files, shell_job),
    };
    files.entries.push(entry);
    Ok(ty)
}

/// The files in flight in the queue of the socket just dumped: each dumped like an fd (one of
/// ours: the peek gave us copies), or found to be a description some task holds too, and
/// named by id in its message's entry. Unix sockets in flight are refused.
fn dump_in_flight(files: &mut FileTable) -> Result<()> {
    let me = std::process::id() as pid_t;
    for batch in files.unix.take_in_flight() {
        let (pid, holder_fd) = batch.holder;
        let mut ids = Vec::new();
        for copy in batch.fds {
            let raw = copy.as_raw_fd();
            let link = procfs::readlink(&format!("/proc/self/fd/{raw}"))?
                .to_string_lossy()
                .into_owned();
            let refuse = |why: String| {
                (
                    pid,
                    format!("fd {holder_fd}: a queued message carries {link} in flight: {why}"),
                )
            };
            if link.starts_with("socket:") {
                files
                    .refused
                    .push(refuse("a socket in flight (not supported yet)".into()));
                continue;
            }
            let info = procfs::fdinfo(me, raw)?;
            let shared = files.description_of(me, raw, info.ino)?;
            let id = match shared {
                Some(id) => id,
                None => {
                    let pidfd = OnceCell::new();
                    let task_fd = TaskFd {
                        pid: me,
                        fd: raw,
                        link: &link,
                        info: &info,
                        flags: info.flags & !(libc::O_CLOEXEC as u32),
                        pidfd: &pidfd,
                        service_sk_ino: None,
                    };
                    let id = files.alloc_id();
                    match dump_description(&task_fd, id, files, false) {
                        Ok(_) => {}
                        Err(Error::Unsupported { resource, .. }) => {
                            files.refused.push(refuse(resource));
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                    files
                        .by_ino
                        .entry(info.ino)
                        .or_default()
                        .push((me, raw, id));
                    id
                }
            };
            ids.push(id);
            files.in_flight.push(copy);
        }
        files.unix.set_rights(batch.message, ids);
    }
    Ok(())
}

/// A file the fd reaches by a path: a regular file, directory, device, FIFO, or an O_PATH fd
/// of anything; a deleted regular file becomes a ghost file.
fn dump_path(fd: &TaskFd, id: u32, files: &mut FileTable, shell_job: bool) -> Result<pb::FdTypes> {
    let target = fd.link;
    let link = format!("/proc/{}/fd/{}", fd.pid, fd.fd);
    if let Some(path) = target.strip_suffix(" (deleted)") {
        if path.starts_with("/proc/") {
            return Err(fd.unsupported(format!(
                "{target}: a file of a process that is gone (not supported)"
            )));
        }
        let ghost = match files.ghosts.add(fd.pid, &link, path, files.ghost_limit)? {
            Ok(g) => g,
            Err(why) => return Err(fd.unsupported(why)),
        };
        let meta = std::fs::metadata(&link).map_err(|e| Error::io(format!("stat {link}"), e))?;
        files.entries.push(pb::FileEntry {
            r#type: pb::FdTypes::Reg as i32,
            id,
            reg: Some(reg_entry(id, path, fd.flags, fd.info.pos, &meta)),
            ..Default::default()
        });
        files.ghosts.remap(id, ghost);
        return Ok(pb::FdTypes::Reg);
    }
    // For an O_PATH fd of a symlink this is the symlink itself: /proc's link leads to what the
    // fd refers to and is not followed further.
    let meta = std::fs::metadata(&link).map_err(|e| Error::io(format!("stat {link}"), e))?;
    let ft = meta.file_type();
    if fd.flags & libc::O_PATH as u32 != 0 {
        // Only a path: whatever is there, it is reopened with O_PATH.
        files.entries.push(pb::FileEntry {
            r#type: pb::FdTypes::Reg as i32,
            id,
            reg: Some(reg_entry(id, target, fd.flags, 0, &meta)),
            ..Default::default()
        });
        return Ok(pb::FdTypes::Reg);
    }
    if is_tty(&meta) {
        let e = files.ttys.dump(fd, id, &meta, shell_job)?;
        files.entries.push(e);
        Ok(pb::FdTypes::Tty)
    } else if ft.is_file() || ft.is_dir() || ft.is_char_device() {
        let mut reg = reg_entry(id, target, fd.flags, fd.info.pos, &meta);
        // Owner and signal (F_SETOWN, F_SETSIG) of the description.
        reg.fown = dump_fown(fd.copy()?.as_fd())?;
        files.entries.push(pb::FileEntry {
            r#type: pb::FdTypes::Reg as i32,
            id,
            reg: Some(reg),
            ..Default::default()
        });
        Ok(pb::FdTypes::Reg)
    } else if ft.is_fifo() {
        // CRIU's layout: the path lives in a regular-file entry of its own that the fifo entry
        // names; the buffer is keyed by the FIFO's inode.
        let regf_id = files.alloc_id();
        let (fifo, fown) = pipes::dump_fifo(fd, &meta, id, regf_id, &mut files.pipes)?;
        let mut reg = reg_entry(regf_id, target, fd.flags, 0, &meta);
        reg.fown = fown;
        files.entries.push(pb::FileEntry {
            r#type: pb::FdTypes::Reg as i32,
            id: regf_id,
            reg: Some(reg),
            ..Default::default()
        });
        files.entries.push(pb::FileEntry {
            r#type: pb::FdTypes::Fifo as i32,
            id,
            fifo: Some(fifo),
            ..Default::default()
        });
        Ok(pb::FdTypes::Fifo)
    } else if ft.is_socket() {
        Err(fd.unsupported(format!("socket {target} (not supported yet)")))
    } else {
        Err(fd.unsupported(format!("{target} of an unsupported file type")))
    }
}

// ---------------------------------------------------------------------------------------------
// Restore

/// files.img by id, and the contents that go with its files (pipe buffers, socket queues,
/// ghost files, locks).
pub struct FileImages {
    by_id: HashMap<u32, pb::FileEntry>,
    /// Unix sockets: inode → file id, to find a socket's peer.
    unix_by_ino: HashMap<u32, u32>,
    pipes: pipes::PipeImages,
    queues: unix::QueueImages,
    streams: crate::inet::StreamImages,
    /// --tcp-close at restore: established connections come back closed.
    tcp_close: bool,
    /// --inherit-fd: the caller's descriptor that takes the place of a file, by its key
    /// (`socket:[INO]`, `pipe:[INO]`).
    inherited: HashMap<String, RawFd>,
    ghosts: ghost::GhostImages,
    locks: filelocks::LockImages,
    memfds: crate::memfd::MemfdImages,
    ttys: crate::tty::TtyImages,
}

impl FileImages {
    /// The saved owner of a file description, whatever its kind.
    pub fn fown_of(&self, id: u32) -> Option<&pb::FownEntry> {
        let e = self.by_id.get(&id)?;
        e.reg
            .as_ref()
            .map(|x| &x.fown)
            .or(e.pipe.as_ref().map(|x| &x.fown))
            .or(e.usk.as_ref().map(|x| &x.fown))
            .or(e.isk.as_ref().map(|x| &x.fown))
            .or(e.efd.as_ref().map(|x| &x.fown))
            .or(e.tty.as_ref().map(|x| &x.fown))
            .or(e.epfd.as_ref().map(|x| &x.fown))
            .or(e.sgfd.as_ref().map(|x| &x.fown))
            .or(e.tfd.as_ref().map(|x| &x.fown))
            .or(e.ify.as_ref().map(|x| &x.fown))
            .or(e.ffy.as_ref().map(|x| &x.fown))
            .or(e.pidfd.as_ref().map(|x| &x.fown))
            .or(e.memfd.as_ref().map(|x| &x.fown))
    }

    pub fn load(dir: &ImageDir) -> Result<FileImages> {
        let entries: Vec<pb::FileEntry> = dir.read_all(Kind::Files, "")?;
        let unix_by_ino = entries
            .iter()
            .filter_map(|e| e.usk.as_ref().map(|u| (u.ino, e.id)))
            .collect();
        let streams = crate::inet::StreamImages::load(dir, entries.iter())?;
        Ok(FileImages {
            streams,
            tcp_close: false,
            inherited: HashMap::new(),
            by_id: entries.into_iter().map(|e| (e.id, e)).collect(),
            unix_by_ino,
            pipes: pipes::PipeImages::load(dir)?,
            queues: unix::QueueImages::load(dir)?,
            ghosts: ghost::GhostImages::load(dir)?,
            locks: filelocks::LockImages::load(dir)?,
            memfds: crate::memfd::MemfdImages::load(dir)?,
            ttys: crate::tty::TtyImages::load(dir)?,
        })
    }

    /// The entry of the unix socket `sk` is connected to, if the images have it.
    fn unix_peer(&self, sk: &pb::UnixSkEntry) -> Option<&pb::UnixSkEntry> {
        let id = self.unix_by_ino.get(&sk.peer).filter(|_| sk.peer != 0)?;
        self.by_id.get(id)?.usk.as_ref()
    }

    /// The terminals of the images (tty-info.img).
    pub fn ttys(&self) -> &crate::tty::TtyImages {
        &self.ttys
    }

    pub fn ttys_mut(&mut self) -> &mut crate::tty::TtyImages {
        &mut self.ttys
    }

    /// --tcp-close at restore time.
    pub fn with_tcp_close(mut self, tcp_close: bool) -> Self {
        self.tcp_close = tcp_close;
        self
    }

    /// --inherit-fd fd[N]:KEY at restore time: each fd N must be open in this process.
    pub fn with_inherited_fds(mut self, inherit: &[(i32, String)]) -> Result<Self> {
        for (fd, key) in inherit {
            if !sysfd::is_open(*fd) {
                return Err(Error::InvalidOptions(format!(
                    "--inherit-fd fd[{fd}]:{key}: fd {fd} is not open"
                )));
            }
            if !self
                .by_id
                .values()
                .any(|e| inherit_key(e).as_deref() == Some(key))
            {
                log::warn!("--inherit-fd fd[{fd}]:{key}: no file of the images has that key");
            }
            self.inherited.insert(key.clone(), *fd);
        }
        Ok(self)
    }

    /// The caller's descriptor given with --inherit-fd for file `id`, if any.
    fn inherited_fd(&self, id: u32) -> Option<RawFd> {
        let key = inherit_key(self.by_id.get(&id)?)?;
        self.inherited.get(&key).copied()
    }

    pub fn get(&self, id: u32) -> Result<&pb::FileEntry> {
        self.by_id
            .get(&id)
            .ok_or_else(|| Error::InvalidOptions(format!("files.img has no file with id {id}")))
    }

    pub fn reg(&self, id: u32) -> Result<&pb::RegFileEntry> {
        self.get(id)?.reg.as_ref().ok_or_else(|| {
            Error::InvalidOptions(format!("file {id} in files.img is not a regular file"))
        })
    }

    /// Opens the regular file `id` by its path (for mappings, the executable, cwd). A deleted
    /// file is made again first (its name goes away once `open_all` is done).
    /// A memfd is opened anew (made first if it is not yet).
    pub fn open_path(&self, id: u32, flags: i32) -> Result<OwnedFd> {
        if let Some(m) = self.get(id)?.memfd.as_ref() {
            return self.memfds.open(m.inode_id, flags);
        }
        let reg = self.reg(id)?;
        open_path(&self.path_of(id, reg)?, flags)
    }

    /// Where regular file `id` is opened: its path, or where its ghost was made.
    fn path_of(&self, id: u32, reg: &pb::RegFileEntry) -> Result<String> {
        Ok(self
            .ghosts
            .path_for(id, &reg.name)?
            .unwrap_or_else(|| reg.name.clone()))
    }

    /// Whether file `id` can only be opened by a task of the tree once every process exists:
    /// a pidfd of a tree member, a file under /proc/PID.
    fn is_late(&self, id: u32) -> bool {
        let Some(e) = self.by_id.get(&id) else {
            return false;
        };
        if let Some(p) = &e.pidfd {
            return pidfd::is_live(p);
        }
        e.reg.as_ref().is_some_and(|r| is_proc_pid_path(&r.name))
    }

    /// Opens a file `is_late` says waits for the tasks (in the task installing it).
    fn open_late(&self, id: u32) -> Result<OwnedFd> {
        let e = self.get(id)?;
        match &e.pidfd {
            Some(p) => pidfd::open_live(p),
            None => self.open_description(e, None),
        }
    }

    /// The member of entry `id` that matches its type, or an error naming what is missing.
    fn member<'a, T>(
        &'a self,
        id: u32,
        what: &str,
        get: impl FnOnce(&'a pb::FileEntry) -> Option<&'a T>,
    ) -> Result<&'a T> {
        let e = self.get(id)?;
        get(e).ok_or_else(|| {
            Error::InvalidOptions(format!(
                "file {id} in files.img has type {what} but no {what} entry"
            ))
        })
    }
}

/// The name --inherit-fd gives a file by, as CRIU spells it: `socket:[INO]` for a unix
/// socket, `pipe:[INO]` for a pipe end.
fn inherit_key(e: &pb::FileEntry) -> Option<String> {
    if let Some(u) = &e.usk {
        return Some(format!("socket:[{}]", u.ino));
    }
    e.pipe.as_ref().map(|p| format!("pipe:[{}]", p.pipe_id))
}

pub(crate) fn open_path(path: &str, flags: i32) -> Result<OwnedFd> {
    let fd = nix::fcntl::open(
        path,
        nix::fcntl::OFlag::from_bits_retain(flags | libc::O_CLOEXEC),
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::sys(format!("open {path}"), e))?;
    Ok(fd)
}

/// "/proc/123/status": a file of a process (which, in the tree, only exists after the forks).
fn is_proc_pid_path(path: &str) -> bool {
    path.strip_prefix("/proc/")
        .and_then(|rest| rest.split('/').next())
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

impl FileImages {
    /// Opens one saved file description of a kind that needs nothing but its own entry: a regular
    /// file, directory or device by path (a ghost file where it was made again), or the
    /// restorer's terminal.
    fn open_description(
        &self,
        e: &pb::FileEntry,
        tty: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<OwnedFd> {
        match (pb::FdTypes::try_from(e.r#type), e.reg.as_ref()) {
            (Ok(pb::FdTypes::Reg), Some(reg)) if reg.flags & libc::O_PATH as u32 != 0 => {
                // Only a path; of a symlink, the symlink itself.
                let is_link = reg.mode.is_some_and(|m| m & libc::S_IFMT == libc::S_IFLNK);
                let flags = libc::O_PATH
                    | (reg.flags as i32 & (libc::O_DIRECTORY | libc::O_NOFOLLOW))
                    | if is_link { libc::O_NOFOLLOW } else { 0 };
                open_path(&self.path_of(e.id, reg)?, flags)
            }
            (Ok(pb::FdTypes::Reg), Some(reg)) => {
                let flags = reg.flags as i32
                    & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_CLOEXEC);
                let fd = open_path(&self.path_of(e.id, reg)?, flags | libc::O_NOCTTY)?;
                let meta = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                    .map_err(|err| Error::io(format!("stat {}", reg.name), err))?;
                if let Some(size) = reg.size {
                    if meta.is_file()
                        && flags & libc::O_ACCMODE == libc::O_RDONLY
                        && meta.size() != size
                    {
                        return Err(Error::InvalidOptions(format!(
                            "file {} has size {} but {size} at checkpoint time: it changed",
                            reg.name,
                            meta.size()
                        )));
                    }
                }
                if meta.is_file() || meta.is_dir() {
                    nix::unistd::lseek(&fd, reg.pos as i64, nix::unistd::Whence::SeekSet).map_err(
                        |err| Error::sys(format!("lseek {} to {}", reg.name, reg.pos), err),
                    )?;
                }
                Ok(fd)
            }
            (Ok(pb::FdTypes::Tty), _) => {
                let t = tty.ok_or_else(|| {
                    Error::InvalidOptions(
                        "the task had a terminal: restore with --shell-job from a terminal".into(),
                    )
                })?;
                let fd = nix::unistd::dup(t).map_err(|err| Error::sys("dup terminal", err))?;
                Ok(fd)
            }
            _ => Err(Error::InvalidOptions(format!(
                "file {} has type {} which this build cannot restore",
                e.id, e.r#type
            ))),
        }
    }
}

/// A terminal among our stdin/stdout/stderr, for --shell-job.
pub fn inherited_terminal() -> Option<RawFd> {
    (0..3).find(|&fd| nix::unistd::isatty(sysfd::borrow_std(fd)).unwrap_or(false))
}

/// File descriptions made by `open_all`, by file id. Every fd is at a number >= the
/// `lowest_fd` it was given and close-on-exec; dropping the set closes them.
pub struct OpenFiles {
    by_id: HashMap<u32, OwnedFd>,
    epoll_owner: HashMap<u32, pid_t>,
}

impl OpenFiles {
    pub fn get(&self, id: u32) -> Option<BorrowedFd<'_>> {
        self.by_id.get(&id).map(|f| f.as_fd())
    }

    /// What processes forked after `open_all` need to install their tables: the fd numbers
    /// (they inherit the same numbers) and who finishes which file.
    pub fn numbers(&self) -> Pool {
        Pool {
            fds: self
                .by_id
                .iter()
                .map(|(&id, fd)| (id, fd.as_raw_fd()))
                .collect(),
            epoll_owner: self.epoll_owner.clone(),
        }
    }
}

/// The restorer's open files as the tasks of the tree inherit them, for `install_from_pool`.
#[derive(Clone, Debug, Default)]
pub struct Pool {
    /// File id → fd number.
    fds: HashMap<u32, RawFd>,
    /// Epoll file id → the task that adds its watches (the first in pstree order holding it:
    /// the one whose fd numbers the dump saved the watches under).
    epoll_owner: HashMap<u32, pid_t>,
}

/// Phase 1 of the restore of fd tables: creates every file description of `tables` (each
/// process's pid and fd table, in pstree order), each kernel object once — both ends of a pipe
/// from one pipe(), both sockets of a pair from one socketpair() — with buffers and queues
/// refilled, file flags set. Epolls are created empty. Every fd lands at `lowest_fd` or above, out of the way of
/// the fd numbers the tasks' tables will use. `terminal` stands in for a saved terminal
/// (--shell-job). Deleted files are made again for this (and for mappings, opened before) and
/// their names removed at the end.
///
/// Left for `install_from_pool`, which each task runs once every process exists: pidfds of
/// tree members and files under /proc/PID, epoll watches, file locks.
///
/// Nothing here depends on which task runs it: for a tree, one task can call it with the
/// tables of all tasks, and tasks forked after it inherit the set. It raises the caller's soft
/// RLIMIT_NOFILE to the hard limit (the task's saved limits are set after it).
pub fn open_all(
    tables: &[(pid_t, &[pb::FdinfoEntry])],
    files: &FileImages,
    lowest_fd: RawFd,
    terminal: Option<BorrowedFd<'_>>,
) -> Result<OpenFiles> {
    crate::sys::process::raise_nofile_limit()?;
    let wanted: BTreeSet<u32> = tables
        .iter()
        .flat_map(|(_, t)| t.iter().map(|f| f.id))
        .chain(files.queues.files_in_flight())
        .filter(|&id| !files.is_late(id))
        .collect();
    // Pipe ends by pipe, in id order, for the one pipe() that serves them all; pidfds of a
    // dead process by that process, for the one short-lived child that serves them all.
    let mut pipe_ends: BTreeMap<u32, Vec<&pb::PipeEntry>> = BTreeMap::new();
    let mut dead_pidfds: BTreeMap<u32, Vec<&pb::PidfdEntry>> = BTreeMap::new();
    for &id in &wanted {
        let e = files.get(id)?;
        if let Some(p) = e.pipe.as_ref() {
            pipe_ends.entry(p.pipe_id).or_default().push(p);
        }
        if let Some(p) = e.pidfd.as_ref() {
            dead_pidfds.entry(p.ino).or_default().push(p);
        }
    }
    let mut fifos_filled: HashSet<u32> = HashSet::new();
    let mut out = OpenFiles {
        by_id: HashMap::new(),
        epoll_owner: HashMap::new(),
    };
    // fanotify groups last: one with permission marks would make our own opens of the files
    // it marks wait for an answer no one gives.
    // Pty masters first: their slaves can only be opened once they exist.
    let is_fanotify = |id: &u32| files.by_id.get(id).is_some_and(|e| e.ffy.is_some());
    let is_pty_master = |id: &u32| {
        files
            .by_id
            .get(id)
            .and_then(|e| e.tty.as_ref())
            .is_some_and(|t| matches!(files.ttys.role(t), Ok(crate::tty::Role::Master(_))))
    };
    // Unix listeners after the connections they accepted: those are made again through a
    // stand-in listener bound to the same name for a moment (unix::open_socket).
    let is_listener = |id: &u32| {
        files
            .by_id
            .get(id)
            .and_then(|e| e.usk.as_ref())
            .is_some_and(|u| {
                unix::opens_late(u, files.unix_peer(u))
                    || files.queues.carries_files(u.id)
                    || files
                        .unix_peer(u)
                        .is_some_and(|p| files.queues.carries_files(p.id))
            })
    };
    // Clients whose connections were not accepted yet: after every listener listens.
    let waits_for_listener = |id: &u32| {
        files
            .by_id
            .get(id)
            .and_then(|e| e.usk.as_ref())
            .is_some_and(|u| unix::waits_for_listener(u, files.unix_peer(u)))
    };
    let order = wanted
        .iter()
        .filter(|id| is_pty_master(id))
        .chain(
            wanted
                .iter()
                .filter(|id| !is_fanotify(id) && !is_pty_master(id) && !is_listener(id)),
        )
        .chain(
            wanted
                .iter()
                .filter(|id| is_listener(id) && !waits_for_listener(id)),
        )
        .chain(wanted.iter().filter(|id| waits_for_listener(id)))
        .chain(wanted.iter().filter(|id| is_fanotify(id)));
    // Files the caller gives (--inherit-fd) first: the pair of an in-tree peer made below
    // leaves them alone.
    for &id in &wanted {
        if let Some(fd) = files.inherited_fd(id) {
            log::info!("file {id} is the inherited fd {fd}");
            out.by_id
                .insert(id, sysfd::dup_above(sysfd::borrow(fd), lowest_fd)?);
        }
    }
    for &id in order {
        if out.by_id.contains_key(&id) {
            continue;
        }
        let e = files.get(id)?;
        let made: Vec<(u32, OwnedFd)> = match pb::FdTypes::try_from(e.r#type) {
            Ok(pb::FdTypes::Pipe) => {
                let p = files.member(id, "PIPE", |e| e.pipe.as_ref())?;
                pipes::open_pipe(&pipe_ends[&p.pipe_id], files.pipes.pipe(p.pipe_id))?
            }
            Ok(pb::FdTypes::Fifo) => {
                let f = files.member(id, "FIFO", |e| e.fifo.as_ref())?;
                let reg = files.reg(f.regf_id.unwrap_or(f.id))?;
                // The first file of a FIFO refills it; the others find the data there.
                let buffer = fifos_filled
                    .insert(f.pipe_id)
                    .then(|| files.pipes.fifo(f.pipe_id))
                    .flatten();
                vec![(id, pipes::open_fifo(reg, buffer)?)]
            }
            Ok(pb::FdTypes::Unixsk) if crate::rpcsk::is_service_socket(e) => {
                vec![(id, crate::rpcsk::open_service_socket(e)?)]
            }
            Ok(pb::FdTypes::Unixsk) => {
                let sk = files.member(id, "UNIXSK", |e| e.usk.as_ref())?;
                // A peer no task holds is only of use when it is connected to by name.
                let peer = files.unix_peer(sk).filter(|p| {
                    files
                        .unix_by_ino
                        .get(&p.ino)
                        .is_some_and(|id| wanted.contains(id))
                        || !p.name.is_empty()
                });
                let opened = |id: u32| out.by_id.get(&id).map(|f| f.as_raw_fd());
                unix::open_socket(sk, peer, &files.queues, &opened)?
            }
            Ok(pb::FdTypes::Inetsk) => {
                let isk = files.member(id, "INETSK", |e| e.isk.as_ref())?;
                vec![(
                    id,
                    crate::inet::open_socket(isk, &files.streams, files.tcp_close)?,
                )]
            }
            Ok(pb::FdTypes::Eventfd) => {
                let efd = files.member(id, "EVENTFD", |e| e.efd.as_ref())?;
                vec![(id, eventfd::open(efd)?)]
            }
            Ok(pb::FdTypes::Eventpoll) => {
                let ep = files.member(id, "EVENTPOLL", |e| e.epfd.as_ref())?;
                vec![(id, eventpoll::open(ep)?)]
            }
            Ok(pb::FdTypes::Signalfd) => {
                let sg = files.member(id, "SIGNALFD", |e| e.sgfd.as_ref())?;
                vec![(id, signalfd::open(sg)?)]
            }
            Ok(pb::FdTypes::Timerfd) => {
                let t = files.member(id, "TIMERFD", |e| e.tfd.as_ref())?;
                vec![(id, timerfd::open(t)?)]
            }
            Ok(pb::FdTypes::Inotify) => {
                let i = files.member(id, "INOTIFY", |e| e.ify.as_ref())?;
                vec![(id, fsnotify::open_inotify(i)?)]
            }
            Ok(pb::FdTypes::Fanotify) => {
                let f = files.member(id, "FANOTIFY", |e| e.ffy.as_ref())?;
                vec![(id, fsnotify::open_fanotify(f)?)]
            }
            Ok(pb::FdTypes::Pidfd) => {
                let p = files.member(id, "PIDFD", |e| e.pidfd.as_ref())?;
                pidfd::open_dead(&dead_pidfds[&p.ino])?
            }
            Ok(pb::FdTypes::Memfd) => {
                let m = files.member(id, "MEMFD", |e| e.memfd.as_ref())?;
                vec![(id, files.memfds.open_file(m)?)]
            }
            Ok(pb::FdTypes::Tty)
                if e.tty.as_ref().is_some_and(|t| {
                    !matches!(files.ttys.role(t), Ok(crate::tty::Role::Outside))
                }) =>
            {
                let t = files.member(id, "TTY", |e| e.tty.as_ref())?;
                vec![(id, files.ttys.open(t)?)]
            }
            _ => vec![(id, files.open_description(e, terminal)?)],
        };
        for (made_id, fd) in made {
            if out.by_id.contains_key(&made_id) {
                continue;
            }
            let moved = sysfd::dup_above(fd.as_fd(), lowest_fd)?;
            drop(fd);
            out.by_id.insert(made_id, moved);
        }
    }
    // Every deleted file made again is open now (mappings were opened before us).
    files.ghosts.unlink_all();
    // Every memfd mapping and fd exists now.
    files.memfds.seal_late()?;
    for &(pid, table) in tables {
        for f in table {
            if files.get(f.id)?.epfd.is_some() {
                out.epoll_owner.entry(f.id).or_insert(pid);
            }
        }
    }
    Ok(out)
}

/// In a task of a tree: replaces its fd table with the saved one, from the file descriptions
/// the restorer opened for the whole tree before forking it (`pool`). `keep` are fds of ours
/// still needed (moved above the pool; updated in place).
///
/// Every process of the tree exists by now, so this is where the files that wait for them are
/// opened (pidfds of tree members, /proc/PID files: each task opens its own). Once the table
/// is complete, the task adds the watches of the epolls it owns, and then takes the file locks
/// saved under it: nothing of the table is closed after that (a close drops the process's
/// POSIX locks on that file). `sharers` are the other processes of a table shared with
/// CLONE_FILES, which this task installs for all: POSIX locks belong to the table, so theirs
/// are taken here too.
pub fn install_from_pool(
    fdinfo: &[pb::FdinfoEntry],
    pool: &Pool,
    files: &FileImages,
    keep: &mut [RawFd],
    sharers: &[pid_t],
) -> Result<()> {
    let top = pool
        .fds
        .values()
        .copied()
        .max()
        .unwrap_or(-1)
        .max(fdinfo.iter().map(|f| f.fd as RawFd).max().unwrap_or(-1));
    for fd in keep.iter_mut() {
        *fd = sysfd::move_above(*fd, top + 1)?;
    }
    let mut ours: Vec<RawFd> = keep
        .iter()
        .copied()
        .chain(pool.fds.values().copied())
        .collect();
    ours.sort_unstable();
    let mut next = 0u32;
    for &fd in &ours {
        if (fd as u32) > next {
            sysfd::close_range(next, fd as u32 - 1)?;
        }
        next = fd as u32 + 1;
    }
    sysfd::close_range(next, u32::MAX)?;
    let mut late: HashMap<u32, OwnedFd> = HashMap::new();
    for f in fdinfo {
        if pool.fds.contains_key(&f.id) || late.contains_key(&f.id) || !files.is_late(f.id) {
            continue;
        }
        let fd = files
            .open_late(f.id)
            .map_err(|e| Error::InvalidOptions(format!("fd {}: {e}", f.fd)))?;
        late.insert(f.id, sysfd::dup_above(fd.as_fd(), top + 1)?);
    }
    for f in fdinfo {
        let fd = match (pool.fds.get(&f.id), late.get(&f.id)) {
            (Some(&fd), _) => fd,
            (None, Some(fd)) => fd.as_raw_fd(),
            (None, None) => {
                return Err(Error::InvalidOptions(format!(
                    "fd {}: file {} was not opened",
                    f.fd, f.id
                )))
            }
        };
        sysfd::install(fd, f.fd as RawFd, f.flags & libc::FD_CLOEXEC as u32 != 0)?;
        if let Some(fown) = files.fown_of(f.id) {
            restore_owner(sysfd::borrow(fd), fown)?;
        }
    }
    for &fd in pool.fds.values() {
        if !fdinfo.iter().any(|f| f.fd as RawFd == fd) {
            sysfd::close(fd);
        }
    }
    drop(late);
    let me = std::process::id() as pid_t;
    let mut done: HashSet<u32> = HashSet::new();
    for f in fdinfo {
        if pool.epoll_owner.get(&f.id) != Some(&me) || !done.insert(f.id) {
            continue;
        }
        let ep = files.member(f.id, "EVENTPOLL", |e| e.epfd.as_ref())?;
        eventpoll::add_watches(f.fd as RawFd, ep)?;
    }
    for &holder in std::iter::once(&me).chain(sharers) {
        for lock in files.locks.of(holder) {
            filelocks::take(lock)?;
        }
    }
    Ok(())
}
