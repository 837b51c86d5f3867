//! Open files: the fd table (fdinfo-N.img) and the file descriptions it points to (files.img).
//! Regular files and directories are reopened by path with their flags and offset; character
//! devices by path; with --shell-job, a terminal inherited from the shell is replaced by the
//! restorer's own terminal.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use libc::pid_t;

use crate::error::{Error, Result};
use crate::pb;
use crate::procfs;
use crate::sys::kcmp;

/// files.img under construction: one entry per open file description, plus the files behind
/// mappings, cwd and root (CRIU gives those their own entries too).
#[derive(Default)]
pub struct FileTable {
    pub entries: Vec<pb::FileEntry>,
    next_id: u32,
    /// Regular files referenced by path only (mappings, cwd, root, exe): path+flags → id.
    by_path: HashMap<(String, u32), u32>,
    /// Open file descriptions already dumped, by inode: (pid, fd, id). Another fd on the same
    /// inode may be the same description (dup, fork, SCM_RIGHTS): kcmp tells.
    by_ino: HashMap<u64, Vec<(pid_t, i32, u32)>>,
}

impl FileTable {
    pub fn new() -> Self {
        FileTable {
            next_id: 1,
            ..Default::default()
        }
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

/// One task's fd table, dumped: fdinfo entries (fd number, FD_CLOEXEC, file id).
/// `service_sk_ino`: the RPC server's socket when an RPC client dumps itself (`rpcsk`).
pub fn dump_fds(
    pid: pid_t,
    files: &mut FileTable,
    shell_job: bool,
    service_sk_ino: Option<u64>,
) -> Result<Vec<pb::FdinfoEntry>> {
    let mut out: Vec<pb::FdinfoEntry> = Vec::new();
    for fd in procfs::fds(pid)? {
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

        let mut shared_id = None;
        for &(other_pid, other_fd, id) in files
            .by_ino
            .get(&info.ino)
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            if kcmp::same_file(pid, fd, other_pid, other_fd)? {
                shared_id = Some(id);
                break;
            }
        }
        if let Some(id) = shared_id {
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

        let meta = std::fs::metadata(&link).map_err(|e| Error::io(format!("stat {link}"), e))?;
        let ft = meta.file_type();
        let unsupported = |what: String| Err(Error::unsupported(pid, format!("fd {fd}: {what}")));
        if !target.starts_with('/') && !ft.is_socket() {
            // pipe:[N], socket:[N], anon_inode:[eventfd]...
            return unsupported(format!("{target} (not supported yet)"));
        }
        if target.ends_with(" (deleted)") {
            return unsupported(format!("deleted file {target} (not supported yet)"));
        }
        let id = files.alloc_id();
        let ty = if is_tty(&meta) {
            if !shell_job {
                return unsupported(format!(
                    "terminal {target}: use --shell-job to restore it on the restorer's terminal"
                ));
            }
            files.entries.push(pb::FileEntry {
                r#type: pb::FdTypes::Tty as i32,
                id,
                tty: Some(pb::TtyFileEntry {
                    id,
                    tty_info_id: tty_info_id(&meta),
                    flags: file_flags,
                    fown: pb::FownEntry::default(),
                    ..Default::default()
                }),
                ..Default::default()
            });
            pb::FdTypes::Tty
        } else if ft.is_file() || ft.is_dir() || ft.is_char_device() {
            files.entries.push(pb::FileEntry {
                r#type: pb::FdTypes::Reg as i32,
                id,
                reg: Some(reg_entry(id, &target, file_flags, info.pos, &meta)),
                ..Default::default()
            });
            pb::FdTypes::Reg
        } else if ft.is_fifo() {
            return unsupported(format!("fifo {target} (not supported yet)"));
        } else if let Some(e) =
            crate::rpcsk::dump_service_socket(pid, fd, &meta, id, file_flags, service_sk_ino)?
        {
            files.entries.push(e);
            pb::FdTypes::Unixsk
        } else if ft.is_socket() {
            return unsupported(format!("socket {target} (not supported yet)"));
        } else {
            return unsupported(format!("{target} of an unsupported file type"));
        };
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

/// The id linking a tty file to its tty-info entry: the device number.
fn tty_info_id(meta: &std::fs::Metadata) -> u32 {
    meta.rdev() as u32
}

// ---------------------------------------------------------------------------------------------
// Restore

use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};

use crate::images::{ImageDir, Kind};
use crate::sys::fd as sysfd;

/// files.img, by id.
pub struct FileImages {
    by_id: HashMap<u32, pb::FileEntry>,
}

impl FileImages {
    pub fn load(dir: &ImageDir) -> Result<FileImages> {
        let entries: Vec<pb::FileEntry> = dir.read_all(Kind::Files, "")?;
        Ok(FileImages {
            by_id: entries.into_iter().map(|e| (e.id, e)).collect(),
        })
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

    /// Opens the regular file `id` by its path (for mappings, the executable, cwd).
    pub fn open_path(&self, id: u32, flags: i32) -> Result<OwnedFd> {
        let reg = self.reg(id)?;
        open_path(&reg.name, flags)
    }
}

fn open_path(path: &str, flags: i32) -> Result<OwnedFd> {
    let fd = nix::fcntl::open(
        path,
        nix::fcntl::OFlag::from_bits_retain(flags | libc::O_CLOEXEC),
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::sys(format!("open {path}"), e))?;
    Ok(fd)
}

/// Opens one saved file description.
fn open_description(
    e: &pb::FileEntry,
    tty: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<OwnedFd> {
    match (pb::FdTypes::try_from(e.r#type), e.reg.as_ref()) {
        (Ok(pb::FdTypes::Reg), Some(reg)) => {
            let flags = reg.flags as i32
                & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_CLOEXEC);
            let fd = open_path(&reg.name, flags | libc::O_NOCTTY)?;
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
                nix::unistd::lseek(&fd, reg.pos as i64, nix::unistd::Whence::SeekSet)
                    .map_err(|err| Error::sys(format!("lseek {} to {}", reg.name, reg.pos), err))?;
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
        (Ok(pb::FdTypes::Unixsk), _) if crate::rpcsk::is_service_socket(e) => {
            crate::rpcsk::open_service_socket(e)
        }
        _ => Err(Error::InvalidOptions(format!(
            "file {} has type {} which this build cannot restore",
            e.id, e.r#type
        ))),
    }
}

/// A terminal among our stdin/stdout/stderr, for --shell-job.
pub fn inherited_terminal() -> Option<RawFd> {
    (0..3).find(|&fd| nix::unistd::isatty(sysfd::borrow_std(fd)).unwrap_or(false))
}

/// In the new task: replaces the whole fd table with the saved one. `keep` are fds of ours
/// still needed after this (moved above the saved table; updated in place).
pub fn restore_fds(
    fdinfo: &[pb::FdinfoEntry],
    files: &FileImages,
    keep: &mut [RawFd],
    shell_job: bool,
) -> Result<()> {
    let max_fd = fdinfo.iter().map(|f| f.fd as RawFd).max().unwrap_or(-1);
    let tty = if shell_job {
        inherited_terminal()
    } else {
        None
    };
    let mut tty_copy = None;
    if let Some(t) = tty {
        tty_copy = Some(sysfd::move_above(
            nix::unistd::dup(sysfd::borrow_std(t))
                .map_err(|e| Error::sys("dup terminal", e))?
                .into_raw_fd(),
            max_fd + 1,
        )?);
    }
    for fd in keep.iter_mut() {
        *fd = sysfd::move_above(*fd, max_fd + 1)?;
    }
    // Everything else goes: the restorer's fds must not leak into the task.
    let mut ours: Vec<RawFd> = keep.to_vec();
    ours.extend(tty_copy);
    ours.sort_unstable();
    let mut next = 0u32;
    for &fd in &ours {
        if (fd as u32) > next {
            sysfd::close_range(next, fd as u32 - 1)?;
        }
        next = fd as u32 + 1;
    }
    sysfd::close_range(next, u32::MAX)?;

    let mut ids: Vec<u32> = fdinfo.iter().map(|f| f.id).collect();
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        let e = files.get(id)?;
        let fd = open_description(e, tty_copy.map(sysfd::borrow))?;
        let raw = fd.into_raw_fd();
        let mut used = false;
        for f in fdinfo.iter().filter(|f| f.id == id) {
            sysfd::install(raw, f.fd as RawFd, f.flags & libc::FD_CLOEXEC as u32 != 0)?;
            used |= f.fd as RawFd == raw;
        }
        if !used {
            sysfd::close(raw);
        }
    }
    if let Some(t) = tty_copy {
        sysfd::close(t);
    }
    Ok(())
}
