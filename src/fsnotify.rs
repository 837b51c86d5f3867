//! inotify and fanotify: the watches (marks) of each instance, from fdinfo lines
//! "inotify wd:..." and "fanotify ino:..." / "fanotify mnt_id:...".
//!
//! A watched inode is saved as the kernel shows it, a file handle (fhandle) and its device and
//! inode number, plus a path to it that dump finds by opening the handle
//! (open_by_handle_at, CAP_DAC_READ_SEARCH) on a mount of that device. Restore opens the handle
//! again (the same inode, even if renamed), or the path when the handle no longer works (a
//! tmpfs remounted since), and adds the watch through /proc/self/fd/N of that O_PATH fd.
//!
//! inotify watch descriptors keep their numbers (INOTIFY_IOC_SETNEXTWD before each watch;
//! the program compares the wd of every event with the ones it got). fanotify: inode and mount
//! marks with their masks, ignored masks and mark flags; filesystem marks are refused. Events
//! already queued in an instance are not carried over (CRIU does not either).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use libc::pid_t;

use crate::error::{Error, Result};
use crate::files::{self, TaskFd};
use crate::pb;
use crate::procfs;
use crate::sys::evfds::{self, Handle};

/// "key:value" words of an fdinfo line (after its first key), values as text.
fn words(v: &str) -> Vec<(&str, &str)> {
    v.split_whitespace()
        .filter_map(|w| w.split_once(':'))
        .collect()
}

/// A hex value of `words`, truncated to 32 bits (every field but inode numbers is 32 bits).
fn hex32(w: &[(&str, &str)], k: &str) -> Option<u32> {
    w.iter()
        .find(|x| x.0 == k)
        .and_then(|x| u32::from_str_radix(x.1, 16).ok())
}

fn hex64(w: &[(&str, &str)], k: &str) -> Option<u64> {
    w.iter()
        .find(|x| x.0 == k)
        .and_then(|x| u64::from_str_radix(x.1, 16).ok())
}

/// The handle fields of a mark line: "fhandle-bytes:8 fhandle-type:1 f_handle:e102000000000000".
fn handle_of(w: &[(&str, &str)]) -> Option<Handle> {
    let len = hex32(w, "fhandle-bytes")?;
    let kind = hex32(w, "fhandle-type")? as i32;
    let text = w.iter().find(|x| x.0 == "f_handle")?.1;
    let bytes: Option<Vec<u8>> = (0..text.len() / 2)
        .map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    let bytes = bytes?;
    (bytes.len() == len as usize).then_some(Handle { kind, bytes })
}

/// CRIU's fh_entry: the handle as native-endian u64 words, at least `min_entries` (16) of them.
fn fh_entry(h: &Handle, path: Option<String>) -> pb::FhEntry {
    let mut words: Vec<u64> = h
        .bytes
        .chunks(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            u64::from_ne_bytes(b)
        })
        .collect();
    words.resize(words.len().max(pb::FhEntrySizes::MinEntries as usize), 0);
    pb::FhEntry {
        bytes: h.bytes.len() as u32,
        r#type: h.kind as u32,
        handle: words,
        path,
        mnt_id: None,
    }
}

fn handle_from_entry(fh: &pb::FhEntry) -> Handle {
    let mut bytes: Vec<u8> = fh.handle.iter().flat_map(|w| w.to_ne_bytes()).collect();
    bytes.truncate(fh.bytes as usize);
    Handle {
        kind: fh.r#type as i32,
        bytes,
    }
}

/// Kernel dev_t encoding (major << 20 | minor), as fdinfo and the images have it.
fn kdev_split(s_dev: u32) -> (u32, u32) {
    (s_dev >> 20, s_dev & 0xfffff)
}

/// The inode behind a handle, opened O_PATH through a mount of its device (in `mounts`,
/// the mount table of the process the path must make sense to).
fn open_handle(mounts: &[procfs::Mount], s_dev: u32, h: &Handle) -> Option<OwnedFd> {
    let (major, minor) = kdev_split(s_dev);
    for m in mounts
        .iter()
        .filter(|m| m.major == major && m.minor == minor)
    {
        // open_by_handle_at does not take an O_PATH fd for the mount.
        let Ok(mnt) = files::open_path(&m.mount_point, libc::O_RDONLY | libc::O_DIRECTORY) else {
            continue;
        };
        if let Ok(fd) = evfds::open_by_handle(mnt.as_fd(), h) {
            return Some(fd);
        }
    }
    None
}

/// Dump: a path through which the watched inode can be opened again, checked to lead to that
/// very inode.
fn path_of(pid: pid_t, s_dev: u32, ino: u64, h: &Handle) -> Option<String> {
    let mounts = procfs::mountinfo(pid).ok()?;
    let fd = open_handle(&mounts, s_dev, h)?;
    let path = procfs::readlink(&format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()))
        .ok()?
        .to_string_lossy()
        .into_owned();
    let again = evfds::open_o_path(&path, true).ok()?;
    let st = evfds::fstat(again.as_fd()).ok()?;
    (st.st_ino == ino).then_some(path)
}

/// Restore: the watched inode, O_PATH: by handle, else by the saved path.
fn open_watched(s_dev: u32, ino: u64, fh: &pb::FhEntry, what: &str) -> Result<OwnedFd> {
    let mounts = procfs::mountinfo(std::process::id() as pid_t)?;
    if let Some(fd) = open_handle(&mounts, s_dev, &handle_from_entry(fh)) {
        return Ok(fd);
    }
    match &fh.path {
        Some(p) => evfds::open_o_path(p, false).map_err(|e| {
            Error::InvalidOptions(format!(
                "{what}: inode {ino:#x} cannot be opened by its handle any more, nor as {p}: {e}"
            ))
        }),
        None => Err(Error::InvalidOptions(format!(
            "{what}: inode {ino:#x} cannot be opened by its handle any more and has no saved path"
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// inotify

pub fn dump_inotify(fd: &TaskFd, id: u32) -> Result<pb::FileEntry> {
    let mut wds = Vec::new();
    for v in fd.fields("inotify wd") {
        let bad = || fd.unsupported(format!("{}: cannot parse \"inotify wd:{v}\"", fd.link));
        let wd = v
            .split_whitespace()
            .next()
            .and_then(|w| u32::from_str_radix(w, 16).ok())
            .ok_or_else(bad)?;
        let w = words(v);
        let ino = hex64(&w, "ino").ok_or_else(bad)?;
        let s_dev = hex32(&w, "sdev").ok_or_else(bad)?;
        let mask = hex32(&w, "mask").ok_or_else(bad)?;
        let ignored_mask = hex32(&w, "ignored_mask").ok_or_else(bad)?;
        let h = handle_of(&w).ok_or_else(bad)?;
        let path = path_of(fd.pid, s_dev, ino, &h).ok_or_else(|| {
            fd.unsupported(format!(
                "inotify watch {wd} on inode {ino:#x} (device {s_dev:#x}): no path leads to it \
                 any more"
            ))
        })?;
        log::debug!(
            "pid {} fd {}: inotify wd {wd} on {path} mask {mask:#x}",
            fd.pid,
            fd.fd
        );
        wds.push(pb::InotifyWdEntry {
            id,
            i_ino: ino,
            mask,
            ignored_mask,
            s_dev,
            wd,
            f_handle: fh_entry(&h, Some(path)),
        });
    }
    let copy = fd.copy()?;
    let fown = files::dump_fown(copy.as_fd())?;
    Ok(pb::FileEntry {
        r#type: pb::FdTypes::Inotify as i32,
        id,
        ify: Some(pb::InotifyFileEntry {
            id,
            flags: fd.flags,
            fown,
            wd: wds,
        }),
        ..Default::default()
    })
}

pub fn open_inotify(e: &pb::InotifyFileEntry) -> Result<OwnedFd> {
    let fd = evfds::inotify_init(e.flags & libc::O_NONBLOCK as u32 != 0)?;
    let mut wds: Vec<&pb::InotifyWdEntry> = e.wd.iter().collect();
    wds.sort_by_key(|w| w.wd);
    for w in wds {
        let what = format!("inotify watch {}", w.wd);
        let target = open_watched(w.s_dev, w.i_ino, &w.f_handle, &what)?;
        let got = evfds::inotify_add_watch(fd.as_fd(), target.as_fd(), w.mask, Some(w.wd as i32))
            .map_err(|err| Error::InvalidOptions(format!("{what}: {err}")))?;
        if got != w.wd as i32 {
            return Err(Error::InvalidOptions(format!(
                "{what} came back as watch {got} (two watches on one inode?)"
            )));
        }
    }
    files::restore_status_flags(fd.as_fd(), e.flags)?;
    Ok(fd)
}

// ---------------------------------------------------------------------------------------------
// fanotify

pub fn dump_fanotify(fd: &TaskFd, id: u32) -> Result<pb::FileEntry> {
    let bad = |line: &str| fd.unsupported(format!("{}: cannot parse \"{line}\"", fd.link));
    let head = fd
        .field("fanotify flags")
        .ok_or_else(|| bad("fanotify flags"))?;
    let faflags = head
        .split_whitespace()
        .next()
        .and_then(|w| u32::from_str_radix(w, 16).ok())
        .ok_or_else(|| bad(head))?;
    let evflags = hex32(&words(head), "event-flags").ok_or_else(|| bad(head))?;
    let mut marks = Vec::new();
    for (k, v) in fd.info.extra.iter() {
        let first = || {
            v.split_whitespace()
                .next()
                .and_then(|w| u64::from_str_radix(w, 16).ok())
        };
        let w = words(v);
        let masks = || -> Option<(u32, u32, u32)> {
            Some((
                hex32(&w, "mflags")?,
                hex32(&w, "mask")?,
                hex32(&w, "ignored_mask")?,
            ))
        };
        match k.as_str() {
            "fanotify ino" => {
                let ino = first().ok_or_else(|| bad(v))?;
                let s_dev = hex32(&w, "sdev").ok_or_else(|| bad(v))?;
                let (mflags, mask, ignored_mask) = masks().ok_or_else(|| bad(v))?;
                let h = handle_of(&w).ok_or_else(|| bad(v))?;
                let path = path_of(fd.pid, s_dev, ino, &h).ok_or_else(|| {
                    fd.unsupported(format!(
                        "fanotify mark on inode {ino:#x} (device {s_dev:#x}): no path leads \
                         to it any more"
                    ))
                })?;
                marks.push(pb::FanotifyMarkEntry {
                    id,
                    r#type: pb::MarkType::Inode as i32,
                    mflags,
                    mask,
                    ignored_mask,
                    s_dev,
                    ie: Some(pb::FanotifyInodeMarkEntry {
                        i_ino: ino,
                        f_handle: fh_entry(&h, Some(path)),
                    }),
                    me: None,
                });
            }
            "fanotify mnt_id" => {
                let mnt_id = first().ok_or_else(|| bad(v))? as u32;
                let (mflags, mask, ignored_mask) = masks().ok_or_else(|| bad(v))?;
                let mounts = procfs::mountinfo(fd.pid)?;
                let m = mounts.iter().find(|m| m.mnt_id == mnt_id).ok_or_else(|| {
                    fd.unsupported(format!("fanotify mark on mount {mnt_id}, which is gone"))
                })?;
                marks.push(pb::FanotifyMarkEntry {
                    id,
                    r#type: pb::MarkType::Mount as i32,
                    mflags,
                    mask,
                    ignored_mask,
                    s_dev: m.major << 20 | m.minor,
                    ie: None,
                    me: Some(pb::FanotifyMountMarkEntry {
                        mnt_id,
                        path: Some(m.mount_point.clone()),
                    }),
                });
            }
            k if k.starts_with("fanotify") && k != "fanotify flags" => {
                return Err(fd.unsupported(format!(
                    "{}: fanotify mark \"{k}:{v}\" (filesystem marks are not supported)",
                    fd.link
                )))
            }
            _ => {}
        }
    }
    let copy = fd.copy()?;
    let fown = files::dump_fown(copy.as_fd())?;
    Ok(pb::FileEntry {
        r#type: pb::FdTypes::Fanotify as i32,
        id,
        ffy: Some(pb::FanotifyFileEntry {
            id,
            flags: fd.flags,
            fown,
            faflags,
            evflags,
            mark: marks,
        }),
        ..Default::default()
    })
}

pub fn open_fanotify(e: &pb::FanotifyFileEntry) -> Result<OwnedFd> {
    let fd = evfds::fanotify_init(e.faflags, e.evflags)?;
    for m in &e.mark {
        let (target, flags, what) = match (pb::MarkType::try_from(m.r#type), &m.ie, &m.me) {
            (Ok(pb::MarkType::Inode), Some(ie), _) => {
                let what = format!("fanotify mark on inode {:#x}", ie.i_ino);
                (
                    open_watched(m.s_dev, ie.i_ino, &ie.f_handle, &what)?,
                    0,
                    what,
                )
            }
            (Ok(pb::MarkType::Mount), _, Some(me)) => {
                let path = me.path.as_deref().ok_or_else(|| {
                    Error::InvalidOptions(format!(
                        "fanotify mark on mount {} has no mount point",
                        me.mnt_id
                    ))
                })?;
                (
                    evfds::open_o_path(path, false)?,
                    libc::FAN_MARK_MOUNT,
                    format!("fanotify mark on mount {path}"),
                )
            }
            _ => {
                return Err(Error::InvalidOptions(format!(
                    "fanotify {}: mark of type {} without its entry",
                    e.id, m.r#type
                )))
            }
        };
        let add = |extra: u32, mask: u32| {
            evfds::fanotify_mark(
                fd.as_fd(),
                flags | m.mflags | extra,
                mask.into(),
                target.as_fd(),
            )
            .map_err(|err| Error::InvalidOptions(format!("{what}: {err}")))
        };
        if m.mask != 0 {
            add(0, m.mask)?;
        }
        if m.ignored_mask != 0 {
            add(libc::FAN_MARK_IGNORED_MASK, m.ignored_mask)?;
        }
    }
    files::restore_status_flags(fd.as_fd(), e.flags)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_round_trip() {
        let w = words("2 ino:2e1 sdev:fe00000 mask:80000002 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:e102000000000000");
        let h = handle_of(&w).unwrap();
        assert_eq!(h.kind, 1);
        assert_eq!(h.bytes, [0xe1, 0x02, 0, 0, 0, 0, 0, 0]);
        let fh = fh_entry(&h, None);
        assert_eq!(fh.handle.len(), 16);
        assert_eq!(fh.handle[0], 0x2e1);
        assert_eq!(handle_from_entry(&fh), h);
        assert_eq!(hex32(&w, "mask"), Some(0x8000_0002));
        assert_eq!(kdev_split(0xfe00000), (0xfe, 0));
    }

    /// A directory's handle taken here leads back to it.
    #[test]
    fn a_path_is_found_for_a_handle() {
        let dir = tempfile::tempdir().unwrap();
        let i = evfds::inotify_init(true).unwrap();
        let t = evfds::open_o_path(dir.path().to_str().unwrap(), false).unwrap();
        let wd = evfds::inotify_add_watch(i.as_fd(), t.as_fd(), libc::IN_CREATE, None).unwrap();
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", i.as_raw_fd())).unwrap();
        let line = info
            .lines()
            .find_map(|l| l.strip_prefix("inotify wd:"))
            .unwrap();
        let w = words(line);
        let h = handle_of(&w).unwrap();
        let st = evfds::fstat(t.as_fd()).unwrap();
        let path = path_of(
            std::process::id() as pid_t,
            hex32(&w, "sdev").unwrap(),
            st.st_ino,
            &h,
        );
        assert_eq!(path.as_deref(), dir.path().to_str(), "wd {wd}");
    }
}
