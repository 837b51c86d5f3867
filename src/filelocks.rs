//! File locks and leases (`--file-locks`), from the "lock:" lines of /proc/PID/fdinfo/N, into
//! filelocks.img (CRIU's `file_lock_entry`: kind, type, the pid and fd that hold it, range).
//!
//! flock and OFD locks and leases belong to an open file description: they are saved once per
//! description, under the first (pid, fd) that has it. POSIX (fcntl) locks belong to a
//! process: each is saved under its process. Restore takes every lock in the task it was saved
//! under, on that fd number, once the task's fd table is complete (`take`): a POSIX lock must
//! be taken by its owner, and goes away when its process closes any fd of the file, so nothing
//! may be closed after; a description's lock is then shared by every task holding the
//! description, and /proc/locks shows the task's pid as before.
//! Without --file-locks a task holding a lock is refused, as CRIU does. Leases being broken
//! are refused.

use std::collections::HashSet;
use std::os::fd::RawFd;

use libc::pid_t;

use crate::error::{Error, Result};
use crate::images::{ImageDir, Kind};
use crate::pb;
use crate::sys::evfds;

// CRIU's kinds (file_lock_entry.flag).
pub const FL_POSIX: u32 = 1;
pub const FL_FLOCK: u32 = 2;
pub const FL_OFD: u32 = 4;
pub const FL_LEASE: u32 = 8;
/// Added to a lease's type while it is being broken.
const LEASE_BREAKING: u32 = 4;

/// One "lock:" line: "1: POSIX  ADVISORY  WRITE 4027 fe:00:10011322 10 29".
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LockLine {
    kind: u32,
    ltype: u32,
    pid: i32,
    /// "fe:00:10011322": device and inode.
    inode: String,
    start: i64,
    /// 0: to the end of the file.
    len: i64,
}

fn kind_name(kind: u32) -> &'static str {
    match kind {
        FL_POSIX => "POSIX",
        FL_FLOCK => "flock",
        FL_OFD => "OFD",
        _ => "lease",
    }
}

fn parse_lock(v: &str) -> std::result::Result<LockLine, String> {
    let w: Vec<&str> = v.split_whitespace().collect();
    // [id:] kind mode type pid dev:ino start end
    let w: &[&str] = if w.first().is_some_and(|x| x.ends_with(':')) {
        &w[1..]
    } else {
        &w
    };
    if w.len() < 7 {
        return Err(format!("cannot parse lock \"{v}\""));
    }
    let kind = match w[0] {
        "POSIX" => FL_POSIX,
        "FLOCK" => FL_FLOCK,
        "OFDLCK" => FL_OFD,
        "LEASE" => FL_LEASE,
        other => return Err(format!("a lock of kind {other} (not supported)")),
    };
    let mut ltype = match w[2] {
        "READ" => libc::F_RDLCK as u32,
        "WRITE" => libc::F_WRLCK as u32,
        "UNLCK" => libc::F_UNLCK as u32,
        other => return Err(format!("a lock of type {other} (not supported)")),
    };
    if kind == FL_LEASE {
        match w[1] {
            "ACTIVE" => {}
            "BREAKING" | "BREAKER" => ltype |= LEASE_BREAKING,
            other => return Err(format!("a lease in state {other} (not supported)")),
        }
    } else if w[1] != "ADVISORY" {
        return Err(format!("a {} lock (not supported)", w[1]));
    }
    let num = |s: &str| {
        s.parse::<i64>()
            .map_err(|_| format!("cannot parse lock \"{v}\""))
    };
    let start = num(w[5])?;
    let len = if w[6] == "EOF" {
        0
    } else {
        num(w[6])? - start + 1
    };
    Ok(LockLine {
        kind,
        ltype,
        pid: num(w[3])? as i32,
        inode: w[4].to_owned(),
        start,
        len,
    })
}

/// The locks found so far.
#[derive(Default)]
pub struct LockDump {
    entries: Vec<pb::FileLockEntry>,
    /// POSIX locks already saved: a process's lock shows on each of its fds of the file.
    posix_seen: HashSet<(pid_t, LockLine)>,
}

impl LockDump {
    /// The "lock:" lines of fd `fd` of `pid`. `first_of_description`: the fd is the first seen
    /// of its open file description (description locks are saved from that one). Without
    /// `allowed` (--file-locks), any lock is a refusal: `Ok(Err(why))`.
    pub fn note(
        &mut self,
        pid: pid_t,
        fd: i32,
        lines: impl Iterator<Item = impl AsRef<str>>,
        first_of_description: bool,
        allowed: bool,
    ) -> std::result::Result<(), String> {
        for v in lines {
            let l = parse_lock(v.as_ref())?;
            if l.kind == FL_POSIX {
                if !self.posix_seen.insert((pid, l.clone())) {
                    continue;
                }
            } else if !first_of_description {
                continue;
            }
            if !allowed {
                return Err(format!(
                    "holds a {} lock (use --file-locks to dump it)",
                    kind_name(l.kind)
                ));
            }
            if l.kind == FL_LEASE && l.ltype & LEASE_BREAKING != 0 {
                return Err("holds a lease that is being broken (not supported)".into());
            }
            log::debug!("pid {pid} fd {fd}: {} lock {l:?}", kind_name(l.kind));
            self.entries.push(pb::FileLockEntry {
                flag: l.kind,
                r#type: l.ltype,
                pid,
                fd,
                start: l.start,
                len: l.len,
            });
        }
        Ok(())
    }

    pub fn write_images(&self, dir: &ImageDir) -> Result<()> {
        if self.entries.is_empty() {
            return Ok(());
        }
        dir.write_all(Kind::FileLocks, "", &self.entries)
    }
}

// ---------------------------------------------------------------------------------------------
// Restore

/// filelocks.img.
#[derive(Default)]
pub struct LockImages {
    entries: Vec<pb::FileLockEntry>,
}

impl LockImages {
    pub fn load(dir: &ImageDir) -> Result<LockImages> {
        Ok(LockImages {
            entries: dir.read_all_optional(Kind::FileLocks, "")?,
        })
    }

    /// The locks task `pid` takes.
    pub fn of(&self, pid: pid_t) -> impl Iterator<Item = &pb::FileLockEntry> {
        self.entries.iter().filter(move |e| e.pid == pid)
    }
}

/// In the restored task, with its fd table complete: lock `e` on its fd `e.fd`.
pub fn take(e: &pb::FileLockEntry) -> Result<()> {
    let fd = e.fd as RawFd;
    let r = match e.flag {
        FL_POSIX => evfds::set_range_lock(fd, false, e.r#type as i16, e.start, e.len),
        FL_OFD => evfds::set_range_lock(fd, true, e.r#type as i16, e.start, e.len),
        FL_FLOCK => evfds::flock(crate::sys::fd::borrow(fd), e.r#type == libc::F_WRLCK as u32),
        FL_LEASE => evfds::set_lease(crate::sys::fd::borrow(fd), e.r#type as i32),
        other => {
            return Err(Error::InvalidOptions(format!(
                "filelocks.img: lock of unknown kind {other} on fd {fd}"
            )))
        }
    };
    r.map_err(|err| {
        Error::InvalidOptions(format!(
            "cannot take the {} lock of pid {} on fd {fd} again: {err}",
            kind_name(e.flag),
            e.pid
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lock_lines() {
        let l = parse_lock("1: POSIX  ADVISORY  WRITE 4027 fe:00:10011322 10 29").unwrap();
        assert_eq!(
            (l.kind, l.ltype, l.pid, l.start, l.len),
            (FL_POSIX, 1, 4027, 10, 20)
        );
        let l = parse_lock("1: OFDLCK ADVISORY  READ -1 fe:00:10011446 0 EOF").unwrap();
        assert_eq!((l.kind, l.ltype, l.pid, l.len), (FL_OFD, 0, -1, 0));
        let l = parse_lock("2: FLOCK  ADVISORY  WRITE 1229 fe:00:10102345 0 EOF").unwrap();
        assert_eq!(l.kind, FL_FLOCK);
        let l = parse_lock("3: LEASE  BREAKING  READ 7 fe:00:1 0 EOF").unwrap();
        assert_eq!(l.ltype, LEASE_BREAKING);
        assert!(parse_lock("4: DELEG  ACTIVE  READ 7 fe:00:1 0 EOF").is_err());
    }

    #[test]
    fn posix_locks_once_per_process_and_description_locks_once() {
        let posix = ["1: POSIX  ADVISORY  WRITE 10 fe:00:1 0 EOF"];
        let flock = ["1: FLOCK  ADVISORY  READ 10 fe:00:2 0 EOF"];
        assert!(LockDump::default()
            .note(10, 3, posix.iter(), true, false)
            .is_err());
        let mut d = LockDump::default();
        d.note(10, 3, posix.iter(), true, true).unwrap();
        d.note(10, 4, posix.iter(), false, true).unwrap(); // a dup of fd 3
        d.note(10, 5, flock.iter(), true, true).unwrap();
        d.note(11, 5, flock.iter(), false, true).unwrap(); // inherited by a child
        assert_eq!(d.entries.len(), 2);
        assert_eq!((d.entries[0].fd, d.entries[1].fd), (3, 5));
    }
}
