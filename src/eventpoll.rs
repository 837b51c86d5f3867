//! epoll: every watch (fdinfo "tfd:" lines: the fd number it was added with, events, data, and
//! the watched file's inode and position) and the file flags.
//!
//! The kernel keys a watch by (file, fd number), so a watch is only right when it is added
//! with the fd number it had. Dump checks with kcmp(KCMP_EPOLL_TFD) that the task's fd with
//! that number still is the watched file; when the task closed it but still has the file at
//! another number (dup, dup2, then close), the watch is saved under that other number, as
//! CRIU does. A watched file the task has at no number at all (it lives on in another process
//! or only in a mapping) is refused.
//!
//! Restore creates the epoll with the other files (`open`), empty; its watches are added in
//! the task that owns it, once its fd table is complete, with the fd numbers of that table
//! (`add_watches`): the watched files may be of any kind, another epoll or a pidfd included.

use std::os::fd::{AsFd, OwnedFd, RawFd};

use crate::error::Result;
use crate::files::{self, TaskFd};
use crate::pb;
use crate::procfs;
use crate::sys::evfds;

/// One "tfd:" line.
#[derive(Debug, PartialEq, Eq)]
struct TfdLine {
    tfd: u32,
    events: u32,
    data: u64,
    pos: Option<u64>,
    ino: Option<u64>,
    sdev: Option<u32>,
}

/// "       3 events: 80000019 data: 1122334455667788  pos:0 ino:51589 sdev:f" (the part after
/// "tfd:").
fn parse_tfd(v: &str) -> Option<TfdLine> {
    let mut words = v.split_whitespace();
    let tfd = words.next()?.parse().ok()?;
    // "key:value" or "key: value".
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut pending: Option<String> = None;
    for w in words {
        if let Some(k) = pending.take() {
            fields.push((k, w.to_owned()));
        } else if let Some(k) = w.strip_suffix(':') {
            pending = Some(k.to_owned());
        } else if let Some((k, val)) = w.split_once(':') {
            fields.push((k.to_owned(), val.to_owned()));
        }
    }
    let get = |k: &str| fields.iter().find(|f| f.0 == k).map(|f| f.1.as_str());
    Some(TfdLine {
        tfd,
        events: u32::from_str_radix(get("events")?, 16).ok()?,
        data: u64::from_str_radix(get("data")?, 16).ok()?,
        pos: get("pos").and_then(|p| p.parse().ok()),
        ino: get("ino").and_then(|p| u64::from_str_radix(p, 16).ok()),
        sdev: get("sdev").and_then(|p| u32::from_str_radix(p, 16).ok()),
    })
}

pub fn dump(fd: &TaskFd, id: u32) -> Result<pb::FileEntry> {
    let mut tfds = Vec::new();
    let mut task_fds: Option<Vec<i32>> = None;
    for (i, v) in fd.fields("tfd").enumerate() {
        let line = parse_tfd(v)
            .ok_or_else(|| fd.unsupported(format!("{}: cannot parse \"tfd: {v}\"", fd.link)))?;
        // The how-many-th watch registered under this fd number (several files can be watched
        // under one number, when the number was reused).
        let toff = fd
            .fields("tfd")
            .take(i)
            .filter_map(parse_tfd)
            .filter(|l| l.tfd == line.tfd)
            .count() as u32;
        let mut tfd = line.tfd;
        if !evfds::is_epoll_target(fd.pid, tfd as i32, fd.fd, line.tfd, toff)? {
            let all = match &task_fds {
                Some(v) => v,
                None => task_fds.insert(procfs::fds(fd.pid)?),
            };
            let mut found = None;
            for &other in all {
                if evfds::is_epoll_target(fd.pid, other, fd.fd, line.tfd, toff)? {
                    found = Some(other);
                    break;
                }
            }
            match found {
                Some(other) => {
                    log::info!(
                        "pid {} epoll fd {}: the file watched as fd {} is now fd {other}",
                        fd.pid,
                        fd.fd,
                        line.tfd
                    );
                    tfd = other as u32;
                }
                None => {
                    return Err(fd.unsupported(format!(
                        "epoll watches a file added as fd {} that the task no longer has \
                         open at any number (it lives on elsewhere, e.g. in another process \
                         or a mapping)",
                        line.tfd
                    )))
                }
            }
        }
        tfds.push(pb::EventpollTfdEntry {
            id,
            tfd,
            events: line.events,
            data: line.data,
            dev: line.sdev,
            inode: line.ino,
            pos: line.pos,
        });
    }
    let copy = fd.copy()?;
    let fown = files::dump_fown(copy.as_fd())?;
    Ok(pb::FileEntry {
        r#type: pb::FdTypes::Eventpoll as i32,
        id,
        epfd: Some(pb::EventpollFileEntry {
            id,
            flags: fd.flags,
            fown,
            tfd: tfds,
        }),
        ..Default::default()
    })
}

/// A new, empty epoll with the saved flags.
pub fn open(e: &pb::EventpollFileEntry) -> Result<OwnedFd> {
    let fd = evfds::epoll_create()?;
    files::restore_status_flags(fd.as_fd(), e.flags)?;
    Ok(fd)
}

/// In the task owning the epoll at fd `epfd`, once its whole fd table is in place: adds every
/// watch with its fd number in that table.
pub fn add_watches(epfd: RawFd, e: &pb::EventpollFileEntry) -> Result<()> {
    for t in &e.tfd {
        evfds::epoll_add(epfd, t.tfd as RawFd, t.events, t.data).map_err(|err| {
            crate::error::Error::InvalidOptions(format!(
                "epoll fd {epfd}: cannot watch fd {} again: {err}",
                t.tfd
            ))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tfd_lines() {
        assert_eq!(
            parse_tfd("       3 events: 80000019 data: 1122334455667788  pos:0 ino:51589 sdev:f"),
            Some(TfdLine {
                tfd: 3,
                events: 0x8000_0019,
                data: 0x1122_3344_5566_7788,
                pos: Some(0),
                ino: Some(0x51589),
                sdev: Some(0xf),
            })
        );
        let l =
            parse_tfd("5 events:       19 data:                7  pos:0 ino:40e sdev:10").unwrap();
        assert_eq!((l.tfd, l.events, l.data, l.sdev), (5, 0x19, 7, Some(0x10)));
        assert_eq!(parse_tfd("x events: 1 data: 2"), None);
    }
}
