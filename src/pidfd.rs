//! pidfds: the process a pidfd refers to (fdinfo "NSpid", the pid in the innermost namespace;
//! -1 once the process is gone and reaped) and its flags (PIDFD_NONBLOCK, PIDFD_THREAD).
//!
//! A pidfd of a live process must refer to a process of the dumped tree (after the restore it
//! is the same process, with the same pid); any other is refused, as CRIU does: the restored
//! task would hold a pidfd of whatever process then has that pid. Zombies of the tree count.
//!
//! Restore: a pidfd of a tree member can only be opened once that process exists, which is
//! after the restorer opened every other file (it does that before the first fork). So these
//! are opened by each task itself while it installs its fd table (`open_live`): by then every
//! process of the tree exists. Two tasks sharing one such pidfd get a pidfd each. A pidfd of a
//! dead process is a pidfd of a short-lived child that the restorer reaps at once (`open_dead`,
//! one child for all pidfds that shared a dead process).

use std::os::fd::{AsFd, OwnedFd};

use libc::pid_t;

use crate::error::{Error, Result};
use crate::files::{self, TaskFd};
use crate::pb;
use crate::sys::evfds;

/// PIDFD_THREAD: the pidfd refers to one thread.
const PIDFD_THREAD: u32 = libc::O_EXCL as u32;

/// The flags pidfd_open takes, out of a pidfd's file flags.
fn open_flags(flags: u32) -> u32 {
    flags & (libc::O_NONBLOCK as u32 | PIDFD_THREAD)
}

/// The entry, and the pid it refers to (None: a dead process).
pub fn dump(fd: &TaskFd, id: u32) -> Result<(pb::FileEntry, Option<pid_t>)> {
    // NSpid goes from our namespace (our /proc's) to the process's own: the image keeps the
    // pid its holder sees (the innermost), /proc and the tree check need ours (the first).
    let pids: Vec<i32> = fd
        .field("NSpid")
        .or_else(|| fd.field("Pid"))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let (Some(&host), Some(&nspid)) = (pids.first(), pids.last()) else {
        return Err(fd.unsupported(format!("{}: no Pid in fdinfo", fd.link)));
    };
    let flags = fd.flags & !(libc::O_RDWR as u32);
    if flags & PIDFD_THREAD != 0 && host > 0 && !is_leader(host) {
        return Err(fd.unsupported(format!(
            "pidfd of thread {nspid} (PIDFD_THREAD of a thread other than its leader is not \
             supported yet)"
        )));
    }
    let copy = fd.copy()?;
    let fown = files::dump_fown(copy.as_fd())?;
    let e = pb::FileEntry {
        r#type: pb::FdTypes::Pidfd as i32,
        id,
        pidfd: Some(pb::PidfdEntry {
            id,
            ino: fd.info.ino as u32,
            flags,
            nspid,
            fown,
        }),
        ..Default::default()
    };
    Ok((e, (host > 0).then_some(host)))
}

fn is_leader(tid: pid_t) -> bool {
    std::path::Path::new(&format!("/proc/{tid}")).exists()
        && crate::procfs::status(tid, None).is_ok_and(|s| s.tgid == tid)
}

/// Whether the pidfd is opened by the task itself at install time (the process it refers to
/// does not exist yet when the restorer opens the other files).
pub fn is_live(e: &pb::PidfdEntry) -> bool {
    e.nspid > 0
}

/// In a restored task, once every process of the tree exists.
pub fn open_live(e: &pb::PidfdEntry) -> Result<OwnedFd> {
    let fd = evfds::pidfd_open(e.nspid, open_flags(e.flags)).map_err(|err| {
        Error::InvalidOptions(format!(
            "pidfd {} of process {}: {err} (the process should have been restored)",
            e.id, e.nspid
        ))
    })?;
    files::restore_status_flags(fd.as_fd(), e.flags)?;
    Ok(fd)
}

/// Pidfds of one dead process (entries sharing an inode): one short-lived child for all.
pub fn open_dead(entries: &[&pb::PidfdEntry]) -> Result<Vec<(u32, OwnedFd)>> {
    let fds = evfds::dead_pidfds(
        &entries
            .iter()
            .map(|e| open_flags(e.flags))
            .collect::<Vec<_>>(),
    )?;
    let mut out = Vec::new();
    for (e, fd) in entries.iter().zip(fds) {
        files::restore_status_flags(fd.as_fd(), e.flags)?;
        out.push((e.id, fd));
    }
    Ok(out)
}
