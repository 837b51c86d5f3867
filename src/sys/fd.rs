//! Fd-table manipulation for the task being restored.

use std::os::fd::RawFd;

use nix::errno::Errno;

use crate::error::{Error, Result};

/// Closes every fd in [first, last].
pub fn close_range(first: u32, last: u32) -> Result<()> {
    // SAFETY: closing fds; the caller guarantees no live Rust object owns them (the task being
    // restored gives up every fd the restorer had).
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
    if r < 0 {
        return Err(Error::sys(
            format!("close_range({first}, {last})"),
            Errno::last(),
        ));
    }
    Ok(())
}

/// Moves `fd` to the lowest free number >= `min` (close-on-exec) and closes the old number.
pub fn move_above(fd: RawFd, min: RawFd) -> Result<RawFd> {
    // SAFETY: plain fcntl/close on an fd the caller owns.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    if new < 0 {
        return Err(Error::last(format!("fcntl(F_DUPFD, {fd})")));
    }
    unsafe { libc::close(fd) };
    Ok(new)
}

/// Puts `fd` at number `target` (dup2 semantics, target replaced) with FD_CLOEXEC as given.
pub fn install(fd: RawFd, target: RawFd, cloexec: bool) -> Result<()> {
    let flags = if cloexec { libc::O_CLOEXEC } else { 0 };
    if fd != target {
        // SAFETY: dup3 onto a number the restored task's table reserves for this file.
        let r = unsafe { libc::dup3(fd, target, flags) };
        if r < 0 {
            return Err(Error::last(format!("dup3({fd}, {target})")));
        }
    } else {
        // SAFETY: plain fcntl.
        let r = unsafe {
            libc::fcntl(
                fd,
                libc::F_SETFD,
                if cloexec { libc::FD_CLOEXEC } else { 0 },
            )
        };
        if r < 0 {
            return Err(Error::last(format!("fcntl(F_SETFD, {fd})")));
        }
    }
    Ok(())
}

pub fn close(fd: RawFd) {
    // SAFETY: closes an fd the caller owns.
    unsafe { libc::close(fd) };
}

/// Borrows one of the standard fds (0-2), which stay open for the whole restore.
pub fn borrow_std(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    assert!((0..3).contains(&fd));
    // SAFETY: fds 0-2 of the restorer outlive every use (checked range above).
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// Takes back ownership of an fd number that was handed around as a raw number.
pub fn owned(fd: RawFd) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: the caller moved an fd it owned to this number and nothing else owns it.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

/// Whether `fd` is an open descriptor of this process.
pub fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only inspects the descriptor table.
    fd >= 0 && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0
}

/// Borrows an fd number the caller keeps open for the borrow's lifetime.
pub fn borrow<'a>(fd: RawFd) -> std::os::fd::BorrowedFd<'a> {
    assert!(fd >= 0);
    // SAFETY: callers only borrow fds they opened and close later.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// Opens /dev/null on whichever of fds 0-2 is closed. Clients such as pycriu exec `criu swrk`
/// with them closed; the next files we open would take those numbers, and a stray write to
/// "stderr" would land in an image or a log.
pub fn ensure_std_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only inspects the descriptor table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            continue;
        }
        // SAFETY: open takes a NUL-terminated path; the lowest free number is `fd` itself.
        let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        if null >= 0 && null != fd {
            // SAFETY: closing the descriptor we just opened at an unexpected number.
            unsafe { libc::close(null) };
        }
    }
}

/// The populated ranges of a file up to `size`, page-aligned (SEEK_DATA/SEEK_HOLE).
pub fn data_ranges(f: &std::fs::File, size: u64) -> crate::error::Result<Vec<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    const PAGE: u64 = 4096;
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        // SAFETY: lseek only moves the file offset.
        let data = unsafe { libc::lseek(f.as_raw_fd(), pos as i64, libc::SEEK_DATA) };
        if data < 0 {
            let e = nix::errno::Errno::last();
            if e == nix::errno::Errno::ENXIO {
                break;
            }
            return Err(crate::error::Error::sys("lseek(SEEK_DATA)", e));
        }
        let data = (data as u64 / PAGE) * PAGE;
        if data >= size {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(f.as_raw_fd(), data as i64, libc::SEEK_HOLE) };
        let hole = if hole < 0 {
            size
        } else {
            (hole as u64).div_ceil(PAGE) * PAGE
        }
        .min(size);
        out.push((data, hole));
        pos = hole;
    }
    Ok(out)
}

/// F_SETFL: the file status flags a file description had (O_NONBLOCK, O_APPEND, O_ASYNC...;
/// the kernel ignores the access mode and creation flags in there).
pub fn set_status_flags(fd: std::os::fd::BorrowedFd<'_>, flags: u32) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl with an integer argument.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags as libc::c_int) };
    if r < 0 {
        return Err(Error::last(format!("fcntl(F_SETFL, {flags:#o})")));
    }
    Ok(())
}

// fcntl commands and struct f_owner_ex (asm-generic/fcntl.h), which libc does not export.
const F_SETSIG: libc::c_int = 10;
const F_GETSIG: libc::c_int = 11;
const F_SETOWN_EX: libc::c_int = 15;
const F_GETOWN_EX: libc::c_int = 16;
const F_GETOWNER_UIDS: libc::c_int = 17;

#[repr(C)]
struct FOwnerEx {
    kind: libc::c_int,
    pid: libc::pid_t,
}

/// Who receives SIGIO/SIGURG for a file (F_GETOWN_EX) and with which signal (F_GETSIG).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    /// F_OWNER_TID (0), F_OWNER_PID (1) or F_OWNER_PGRP (2).
    pub kind: u32,
    /// 0: no owner.
    pub pid: i32,
    /// 0: SIGIO.
    pub signal: u32,
    /// Real and effective uid of whoever set the owner: the kernel checks them when it sends
    /// the signal.
    pub uid: u32,
    pub euid: u32,
}

pub fn get_owner(fd: std::os::fd::BorrowedFd<'_>) -> Result<Owner> {
    use std::os::fd::AsRawFd;
    let mut ex = FOwnerEx { kind: 0, pid: 0 };
    // SAFETY: F_GETOWN_EX writes one f_owner_ex.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), F_GETOWN_EX, &mut ex) };
    if r < 0 {
        return Err(Error::last("fcntl(F_GETOWN_EX)"));
    }
    // SAFETY: fcntl without a pointer argument.
    let sig = unsafe { libc::fcntl(fd.as_raw_fd(), F_GETSIG) };
    if sig < 0 {
        return Err(Error::last("fcntl(F_GETSIG)"));
    }
    let mut uids = [0u32; 2];
    if ex.pid != 0 {
        // SAFETY: F_GETOWNER_UIDS writes two uids.
        let r = unsafe { libc::fcntl(fd.as_raw_fd(), F_GETOWNER_UIDS, uids.as_mut_ptr()) };
        if r < 0 {
            return Err(Error::last("fcntl(F_GETOWNER_UIDS)"));
        }
    }
    Ok(Owner {
        kind: ex.kind as u32,
        pid: ex.pid,
        signal: sig as u32,
        uid: uids[0],
        euid: uids[1],
    })
}

/// Sets signal and owner. The kernel records the caller's uids as the owner's: we take the saved
/// ones for the call (keeping our saved uid, to come back), as the original owner had them.
pub fn set_owner(fd: std::os::fd::BorrowedFd<'_>, owner: Owner) -> Result<()> {
    use std::os::fd::AsRawFd;
    if owner.signal != 0 {
        // SAFETY: fcntl with an integer argument.
        let r = unsafe { libc::fcntl(fd.as_raw_fd(), F_SETSIG, owner.signal as i32) };
        if r < 0 {
            return Err(Error::last(format!("fcntl(F_SETSIG, {})", owner.signal)));
        }
    }
    if owner.pid != 0 {
        let ex = FOwnerEx {
            kind: owner.kind as libc::c_int,
            pid: owner.pid,
        };
        let (mut ruid, mut euid, mut suid) = (0, 0, 0);
        // SAFETY: getresuid writes three uids.
        unsafe { libc::getresuid(&mut ruid, &mut euid, &mut suid) };
        let switch = (ruid, euid) != (owner.uid, owner.euid);
        // SAFETY: setresuid takes three integers.
        if switch && unsafe { libc::setresuid(owner.uid, owner.euid, suid) } < 0 {
            return Err(Error::last(format!(
                "setresuid({}, {}) to set a file owner",
                owner.uid, owner.euid
            )));
        }
        // SAFETY: F_SETOWN_EX reads one f_owner_ex.
        let r = unsafe { libc::fcntl(fd.as_raw_fd(), F_SETOWN_EX, &ex) };
        let err = (r < 0).then(Errno::last);
        // SAFETY: as above; our saved uid lets us return.
        if switch && unsafe { libc::setresuid(ruid, euid, suid) } < 0 {
            return Err(Error::last("setresuid back after setting a file owner"));
        }
        if switch {
            // A uid change cleared the dumpable flag, which our tracer's /proc reads need; the
            // task's own flag is set at the end of the restore.
            // SAFETY: prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
        }
        if let Some(errno) = err {
            return Err(Error::sys(
                format!("fcntl(F_SETOWN_EX, type {} pid {})", owner.kind, owner.pid),
                errno,
            ));
        }
    }
    Ok(())
}

/// A close-on-exec duplicate of `fd` at the lowest free number >= `min` (F_DUPFD_CLOEXEC).
pub fn dup_above(fd: std::os::fd::BorrowedFd<'_>, min: RawFd) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: fcntl with an integer argument.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    if new < 0 {
        return Err(Error::last(format!(
            "fcntl(F_DUPFD_CLOEXEC, {}, {min})",
            fd.as_raw_fd()
        )));
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(new) })
}

/// memfd_create(name, flags), close-on-exec.
pub fn memfd_create(name: &str, flags: u32) -> Result<std::os::fd::OwnedFd> {
    let cname = std::ffi::CString::new(name)
        .map_err(|_| Error::InvalidOptions(format!("memfd name {name:?} holds a NUL byte")))?;
    // SAFETY: memfd_create with a NUL-terminated name; the fd returned is ours.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), flags | libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::last(format!("memfd_create({name:?}, {flags:#x})")));
    }
    Ok(owned(fd))
}

/// F_GET_SEALS: the seals (F_SEAL_*) of a memfd or shmem file.
pub fn get_seals(fd: std::os::fd::BorrowedFd<'_>) -> Result<u32> {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl without argument.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if r < 0 {
        return Err(Error::last("fcntl(F_GET_SEALS)"));
    }
    Ok(r as u32)
}

/// F_ADD_SEALS.
pub fn add_seals(fd: std::os::fd::BorrowedFd<'_>, seals: u32) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl with an integer argument.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals as libc::c_int) };
    if r < 0 {
        return Err(Error::last(format!("fcntl(F_ADD_SEALS, {seals:#x})")));
    }
    Ok(())
}

/// fstatfs' f_type: which filesystem a file is on.
pub fn fs_type(fd: std::os::fd::BorrowedFd<'_>) -> Result<i64> {
    use std::os::fd::AsRawFd;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: fstatfs fills the struct we pass.
    let r = unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) };
    if r < 0 {
        return Err(Error::last("fstatfs"));
    }
    // SAFETY: filled by a successful fstatfs.
    Ok(unsafe { st.assume_init() }.f_type)
}

/// `--status-fd`: one zero byte says "ready" (as CRIU writes it), then the fd is closed.
pub fn write_status_byte(fd: i32) -> crate::error::Result<()> {
    // SAFETY: the fd number was handed to us to own (CRIU closes it after writing too).
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    nix::unistd::write(&owned, &[0u8])
        .map(|_| ())
        .map_err(|e| crate::error::Error::sys(format!("write to --status-fd {fd}"), e))
}
