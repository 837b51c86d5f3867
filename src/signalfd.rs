//! signalfd: the signal mask (fdinfo "sigmask", hex) and the file flags. Restore creates a new
//! signalfd with that mask; it reads the signals of whichever task reads it, so creating it in
//! the restorer is the same as creating it in the task.

use std::os::fd::{AsFd, OwnedFd};

use crate::error::Result;
use crate::files::{self, TaskFd};
use crate::pb;
use crate::sys::evfds;

pub fn dump(fd: &TaskFd, id: u32) -> Result<pb::FileEntry> {
    let sigmask = fd
        .field("sigmask")
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .ok_or_else(|| fd.unsupported(format!("{}: no sigmask in fdinfo", fd.link)))?;
    let copy = fd.copy()?;
    let fown = files::dump_fown(copy.as_fd())?;
    Ok(pb::FileEntry {
        r#type: pb::FdTypes::Signalfd as i32,
        id,
        sgfd: Some(pb::SignalfdEntry {
            id,
            flags: fd.flags,
            fown,
            sigmask,
        }),
        ..Default::default()
    })
}

pub fn open(e: &pb::SignalfdEntry) -> Result<OwnedFd> {
    let fd = evfds::signalfd(e.sigmask, e.flags & libc::O_NONBLOCK as u32 != 0)?;
    files::restore_status_flags(fd.as_fd(), e.flags)?;
    Ok(fd)
}
