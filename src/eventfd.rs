//! eventfd: the counter (fdinfo "eventfd-count", hex), EFD_SEMAPHORE ("eventfd-semaphore") and
//! the file flags. Restore creates a new eventfd and adds the counter to it.

use std::os::fd::{AsFd, OwnedFd};

use crate::error::Result;
use crate::files::{self, TaskFd};
use crate::pb;
use crate::sys::eventfd as sysefd;

pub fn dump(fd: &TaskFd, id: u32) -> Result<pb::FileEntry> {
    let field = |name: &str| {
        fd.info
            .extra
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_owned())
    };
    let counter = field("eventfd-count")
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .ok_or_else(|| fd.unsupported(format!("{}: no eventfd-count in fdinfo", fd.link)))?;
    // Older kernels do not show it; such an eventfd is saved as a plain counter, as CRIU saves
    // every eventfd.
    let semaphore = match field("eventfd-semaphore").as_deref() {
        Some("1") => true,
        Some(_) => false,
        None => {
            log::warn!(
                "pid {} fd {}: fdinfo does not say whether the eventfd is a semaphore",
                fd.pid,
                fd.fd
            );
            false
        }
    };
    let copy = fd.copy()?;
    let fown = files::dump_fown(copy.as_fd())?;
    Ok(pb::FileEntry {
        r#type: pb::FdTypes::Eventfd as i32,
        id,
        efd: Some(pb::EventfdFileEntry {
            id,
            flags: fd.flags,
            fown,
            counter,
            semaphore: semaphore.then_some(true),
        }),
        ..Default::default()
    })
}

pub fn open(e: &pb::EventfdFileEntry) -> Result<OwnedFd> {
    let fd = sysefd::create(e.semaphore == Some(true))?;
    if e.counter != 0 {
        sysefd::add(fd.as_fd(), e.counter)?;
    }
    files::restore_status_flags(fd.as_fd(), e.flags)?;
    Ok(fd)
}
