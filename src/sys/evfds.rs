//! The system calls behind the "event" fds and file locks: signalfd, timerfd, epoll, inotify,
//! fanotify, pidfd_open, file handles (name_to_handle_at / open_by_handle_at), flock, POSIX and
//! OFD locks, leases.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

use crate::error::{Error, Result};

fn new_fd(r: libc::c_long, what: impl FnOnce() -> String) -> Result<OwnedFd> {
    if r < 0 {
        return Err(Error::last(what()));
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

fn check(r: libc::c_long, what: impl FnOnce() -> String) -> Result<libc::c_long> {
    if r < 0 {
        return Err(Error::last(what()));
    }
    Ok(r)
}

fn cpath(path: &str) -> Result<CString> {
    CString::new(path).map_err(|_| Error::InvalidOptions(format!("path {path:?} holds a NUL")))
}

// ---------------------------------------------------------------------------------------------
// signalfd

/// A new signalfd for the signals in `mask` (bit N-1 for signal N), close-on-exec.
pub fn signalfd(mask: u64, nonblock: bool) -> Result<OwnedFd> {
    let flags = libc::SFD_CLOEXEC | if nonblock { libc::SFD_NONBLOCK } else { 0 };
    // The kernel reads a sigset of 8 bytes (the size we pass): the u64 is that sigset.
    // SAFETY: signalfd4 reads `size` bytes from the pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_signalfd4,
            -1,
            &mask as *const u64,
            std::mem::size_of::<u64>(),
            flags,
        )
    };
    new_fd(r, || format!("signalfd({mask:#x})"))
}

// ---------------------------------------------------------------------------------------------
// timerfd

pub const TFD_TIMER_ABSTIME: u32 = 1;
/// TFD_IOC_SET_TICKS = _IOW('T', 0, u64): sets the number of expirations not yet read.
const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;

/// A new timerfd on `clockid`, close-on-exec and non-blocking (the caller sets the saved
/// status flags afterwards).
pub fn timerfd_create(clockid: i32) -> Result<OwnedFd> {
    // SAFETY: timerfd_create takes two integers.
    let r = unsafe {
        libc::timerfd_create(clockid, libc::TFD_CLOEXEC | libc::TFD_NONBLOCK) as libc::c_long
    };
    new_fd(r, || format!("timerfd_create(clock {clockid})"))
}

pub fn timerfd_settime(
    fd: BorrowedFd<'_>,
    flags: u32,
    value: (i64, i64),
    interval: (i64, i64),
) -> Result<()> {
    let its = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: interval.0,
            tv_nsec: interval.1,
        },
        it_value: libc::timespec {
            tv_sec: value.0,
            tv_nsec: value.1,
        },
    };
    // SAFETY: reads one itimerspec; no old value is asked for.
    let r =
        unsafe { libc::timerfd_settime(fd.as_raw_fd(), flags as i32, &its, std::ptr::null_mut()) };
    check(r as libc::c_long, || {
        format!("timerfd_settime(flags {flags:#x}, value {value:?}, interval {interval:?})")
    })?;
    Ok(())
}

/// TFD_IOC_SET_TICKS: expirations that a read will report (CONFIG_CHECKPOINT_RESTORE).
pub fn timerfd_set_ticks(fd: BorrowedFd<'_>, ticks: u64) -> Result<()> {
    // SAFETY: the ioctl reads one u64.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), TFD_IOC_SET_TICKS, &ticks as *const u64) };
    check(r as libc::c_long, || format!("TFD_IOC_SET_TICKS({ticks})"))?;
    Ok(())
}

/// clock_gettime(clockid) as (seconds, nanoseconds).
pub fn clock_now(clockid: i32) -> Result<(i64, i64)> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec.
    let r = unsafe { libc::clock_gettime(clockid, &mut ts) };
    check(r as libc::c_long, || format!("clock_gettime({clockid})"))?;
    Ok((ts.tv_sec, ts.tv_nsec))
}

// ---------------------------------------------------------------------------------------------
// epoll

pub fn epoll_create() -> Result<OwnedFd> {
    // SAFETY: epoll_create1 takes flags only.
    let r = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    new_fd(r as libc::c_long, || "epoll_create1".to_owned())
}

/// EPOLL_CTL_ADD of our fd `target` (its number is part of the kernel's key for the watch).
pub fn epoll_add(epfd: RawFd, target: RawFd, events: u32, data: u64) -> Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: reads one epoll_event.
    let r = unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, target, &mut ev) };
    check(r as libc::c_long, || {
        format!("epoll_ctl(ADD, fd {target}, events {events:#x}, data {data:#x})")
    })?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// kcmp on epoll targets

const KCMP_EPOLL_TFD: libc::c_long = 7;

#[repr(C)]
struct KcmpEpollSlot {
    efd: u32,
    tfd: u32,
    toff: u32,
}

/// Whether fd `fd` of `pid` is the file that `pid`'s epoll `efd` watches as its `toff`-th
/// watch registered under fd number `tfd`.
pub fn is_epoll_target(
    pid: libc::pid_t,
    fd: RawFd,
    efd: RawFd,
    tfd: u32,
    toff: u32,
) -> Result<bool> {
    let slot = KcmpEpollSlot {
        efd: efd as u32,
        tfd,
        toff,
    };
    // SAFETY: kcmp reads one kcmp_epoll_slot.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid,
            pid,
            KCMP_EPOLL_TFD,
            fd as libc::c_long,
            &slot as *const KcmpEpollSlot,
        )
    };
    if r < 0 {
        let e = Errno::last();
        // EBADF: `fd` is not open; ENOENT: no such watch.
        if matches!(e, Errno::EBADF | Errno::ENOENT) {
            return Ok(false);
        }
        return Err(Error::sys(
            format!("kcmp(KCMP_EPOLL_TFD, pid {pid}, fd {fd}, epoll {efd}, tfd {tfd})"),
            e,
        ));
    }
    Ok(r == 0)
}

// ---------------------------------------------------------------------------------------------
// inotify and fanotify

/// INOTIFY_IOC_SETNEXTWD = _IOW('I', 0, __s32): the watch descriptor the next watch gets.
const INOTIFY_IOC_SETNEXTWD: libc::c_ulong = 0x4004_4900;

pub fn inotify_init(nonblock: bool) -> Result<OwnedFd> {
    let flags = libc::IN_CLOEXEC | if nonblock { libc::IN_NONBLOCK } else { 0 };
    // SAFETY: flags only.
    let r = unsafe { libc::inotify_init1(flags) };
    new_fd(r as libc::c_long, || "inotify_init1".to_owned())
}

/// Adds a watch on whatever `target` (an O_PATH fd of ours) is, and returns its wd. With
/// `want_wd`, the kernel is first told to hand out that number.
pub fn inotify_add_watch(
    ifd: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    mask: u32,
    want_wd: Option<i32>,
) -> Result<i32> {
    if let Some(wd) = want_wd {
        // SAFETY: the ioctl takes an integer argument.
        let r = unsafe { libc::ioctl(ifd.as_raw_fd(), INOTIFY_IOC_SETNEXTWD, wd as libc::c_ulong) };
        check(r as libc::c_long, || format!("INOTIFY_IOC_SETNEXTWD({wd})"))?;
    }
    let path = cpath(&format!("/proc/self/fd/{}", target.as_raw_fd()))?;
    // SAFETY: a NUL-terminated path.
    let r = unsafe { libc::inotify_add_watch(ifd.as_raw_fd(), path.as_ptr(), mask) };
    check(r as libc::c_long, || {
        format!("inotify_add_watch(mask {mask:#x})")
    })?;
    Ok(r)
}

pub fn fanotify_init(flags: u32, event_flags: u32) -> Result<OwnedFd> {
    // SAFETY: two integers.
    let r = unsafe { libc::fanotify_init(flags | libc::FAN_CLOEXEC, event_flags) };
    new_fd(r as libc::c_long, || {
        format!("fanotify_init(flags {flags:#x}, event flags {event_flags:#x})")
    })
}

/// fanotify_mark(FAN_MARK_ADD | flags) on whatever `target` (an O_PATH fd of ours) is.
pub fn fanotify_mark(
    ffd: BorrowedFd<'_>,
    flags: u32,
    mask: u64,
    target: BorrowedFd<'_>,
) -> Result<()> {
    let path = cpath(&format!("/proc/self/fd/{}", target.as_raw_fd()))?;
    // SAFETY: a NUL-terminated path.
    let r = unsafe {
        libc::fanotify_mark(
            ffd.as_raw_fd(),
            libc::FAN_MARK_ADD | flags,
            mask,
            libc::AT_FDCWD,
            path.as_ptr(),
        )
    };
    check(r as libc::c_long, || {
        format!("fanotify_mark(flags {flags:#x}, mask {mask:#x})")
    })?;
    Ok(())
}

/// A file handle as name_to_handle_at gives it: type and opaque bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handle {
    pub kind: i32,
    pub bytes: Vec<u8>,
}

const MAX_HANDLE_SZ: usize = 128;

#[repr(C)]
struct FileHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_HANDLE_SZ],
}

/// open_by_handle_at(mount_fd, handle, O_PATH): needs CAP_DAC_READ_SEARCH.
pub fn open_by_handle(mount_fd: BorrowedFd<'_>, h: &Handle) -> Result<OwnedFd> {
    if h.bytes.len() > MAX_HANDLE_SZ {
        return Err(Error::InvalidOptions(format!(
            "a file handle of {} bytes",
            h.bytes.len()
        )));
    }
    let mut fh = FileHandle {
        handle_bytes: h.bytes.len() as u32,
        handle_type: h.kind,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    fh.f_handle[..h.bytes.len()].copy_from_slice(&h.bytes);
    // SAFETY: reads one file_handle of handle_bytes bytes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd.as_raw_fd(),
            &mut fh as *mut FileHandle,
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    new_fd(r, || format!("open_by_handle_at(type {})", h.kind))
}

/// open(path, O_PATH), close-on-exec; `nofollow` for the symlink itself.
pub fn open_o_path(path: &str, nofollow: bool) -> Result<OwnedFd> {
    let c = cpath(path)?;
    let flags = libc::O_PATH | libc::O_CLOEXEC | if nofollow { libc::O_NOFOLLOW } else { 0 };
    // SAFETY: a NUL-terminated path.
    let r = unsafe { libc::open(c.as_ptr(), flags) };
    new_fd(r as libc::c_long, || format!("open {path} (O_PATH)"))
}

// ---------------------------------------------------------------------------------------------
// pidfd

/// pidfd_open(pid, flags) (flags: PIDFD_NONBLOCK = O_NONBLOCK, PIDFD_THREAD = O_EXCL).
pub fn pidfd_open(pid: libc::pid_t, flags: u32) -> Result<OwnedFd> {
    // SAFETY: two integers.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) };
    new_fd(r, || format!("pidfd_open({pid}, {flags:#o})"))
}

/// Pidfds (one per entry of `flags`) of a process that has already exited and been reaped:
/// what a pidfd of a dead process is (its pid means nothing any more). Forks a child that
/// waits, opens them, then kills and reaps it.
pub fn dead_pidfds(flags: &[u32]) -> Result<Vec<OwnedFd>> {
    use crate::sys::fork::{fork, wait_status, Forked};
    match fork().map_err(|e| Error::sys("fork a short-lived process", e))? {
        Forked::Child => loop {
            // SAFETY: pause has no arguments; the parent kills us.
            unsafe { libc::pause() };
        },
        Forked::Parent(pid) => {
            let fds: Result<Vec<OwnedFd>> =
                flags.iter().map(|&f| pidfd_open(pid.as_raw(), f)).collect();
            // SAFETY: kill takes two integers; the pid is our own child.
            unsafe { libc::kill(pid.as_raw(), libc::SIGKILL) };
            let _ = wait_status(pid.as_raw());
            fds
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Locks and leases

/// flock(fd, LOCK_SH or LOCK_EX | LOCK_NB).
pub fn flock(fd: BorrowedFd<'_>, exclusive: bool) -> Result<()> {
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    } | libc::LOCK_NB;
    // SAFETY: two integers.
    let r = unsafe { libc::flock(fd.as_raw_fd(), op) };
    check(r as libc::c_long, || {
        format!("flock({})", if exclusive { "LOCK_EX" } else { "LOCK_SH" })
    })?;
    Ok(())
}

/// A byte-range lock: F_SETLK (POSIX, owned by the calling process) or F_OFD_SETLK (owned by
/// the open file description). `len` 0: to the end of the file.
pub fn set_range_lock(fd: RawFd, ofd: bool, ltype: i16, start: i64, len: i64) -> Result<()> {
    let fl = libc::flock {
        l_type: ltype,
        l_whence: libc::SEEK_SET as i16,
        l_start: start,
        l_len: len,
        l_pid: 0,
    };
    let cmd = if ofd {
        libc::F_OFD_SETLK
    } else {
        libc::F_SETLK
    };
    // SAFETY: reads one struct flock.
    let r = unsafe { libc::fcntl(fd, cmd, &fl) };
    check(r as libc::c_long, || {
        format!(
            "fcntl({}, type {ltype}, start {start}, len {len})",
            if ofd { "F_OFD_SETLK" } else { "F_SETLK" }
        )
    })?;
    Ok(())
}

/// Who holds a lock conflicting with a `ltype` lock on [start, start+len): F_GETLK (POSIX) or
/// F_OFD_GETLK. None when nothing conflicts; Some(pid) otherwise (-1 for an OFD lock).
pub fn get_range_lock(
    fd: RawFd,
    ofd: bool,
    ltype: i16,
    start: i64,
    len: i64,
) -> Result<Option<(i16, i32)>> {
    let mut fl = libc::flock {
        l_type: ltype,
        l_whence: libc::SEEK_SET as i16,
        l_start: start,
        l_len: len,
        l_pid: 0,
    };
    let cmd = if ofd {
        libc::F_OFD_GETLK
    } else {
        libc::F_GETLK
    };
    // SAFETY: reads and writes one struct flock.
    let r = unsafe { libc::fcntl(fd, cmd, &mut fl) };
    check(r as libc::c_long, || "fcntl(F_GETLK)".to_owned())?;
    Ok((fl.l_type != libc::F_UNLCK as i16).then_some((fl.l_type, fl.l_pid)))
}

/// F_SETLEASE (F_RDLCK or F_WRLCK).
pub fn set_lease(fd: BorrowedFd<'_>, ltype: i32) -> Result<()> {
    // SAFETY: an integer argument.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETLEASE, ltype) };
    check(r as libc::c_long, || format!("fcntl(F_SETLEASE, {ltype})"))?;
    Ok(())
}

/// F_GETLEASE: the lease this description holds (F_UNLCK: none).
pub fn get_lease(fd: BorrowedFd<'_>) -> Result<i32> {
    // SAFETY: no argument.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETLEASE) };
    Ok(check(r as libc::c_long, || "fcntl(F_GETLEASE)".to_owned())? as i32)
}

// ---------------------------------------------------------------------------------------------
// Files

/// fstat of an fd (also O_PATH ones).
pub fn fstat(fd: BorrowedFd<'_>) -> Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: writes one struct stat.
    let r = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
    check(r as libc::c_long, || "fstat".to_owned())?;
    Ok(st)
}

/// fchown, futimens (atime, mtime as (sec, nsec)) and fchmod of a file we created.
pub fn set_attrs(
    fd: BorrowedFd<'_>,
    uid: u32,
    gid: u32,
    mode: u32,
    times: Option<[(i64, i64); 2]>,
) -> Result<()> {
    // SAFETY: integers only.
    let r = unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) };
    check(r as libc::c_long, || format!("fchown({uid}, {gid})"))?;
    // After fchown: it may clear set-id bits.
    // SAFETY: integers only.
    let r = unsafe { libc::fchmod(fd.as_raw_fd(), mode & 0o7777) };
    check(r as libc::c_long, || {
        format!("fchmod({:#o})", mode & 0o7777)
    })?;
    if let Some(t) = times {
        let ts = t.map(|(s, ns)| libc::timespec {
            tv_sec: s,
            tv_nsec: ns,
        });
        // SAFETY: reads two timespecs.
        let r = unsafe { libc::futimens(fd.as_raw_fd(), ts.as_ptr()) };
        check(r as libc::c_long, || "futimens".to_owned())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn ioctl_numbers_match_the_uapi_encoding() {
        // _IOW(type, nr, size) = 1 << 30 | size << 16 | type << 8 | nr
        let iow =
            |t: u8, nr: u8, size: u64| (1u64 << 30) | (size << 16) | ((t as u64) << 8) | nr as u64;
        assert_eq!(TFD_IOC_SET_TICKS, iow(b'T', 0, 8));
        assert_eq!(INOTIFY_IOC_SETNEXTWD, iow(b'I', 0, 4));
    }

    #[test]
    fn timerfd_ticks_are_read_back() {
        let t = timerfd_create(libc::CLOCK_MONOTONIC).unwrap();
        timerfd_settime(t.as_fd(), 0, (100, 0), (0, 0)).unwrap();
        timerfd_set_ticks(t.as_fd(), 5).unwrap();
        let mut b = [0u8; 8];
        assert_eq!(nix::unistd::read(&t, &mut b).unwrap(), 8);
        assert_eq!(u64::from_ne_bytes(b), 5);
    }

    #[test]
    fn inotify_watch_gets_the_wd_asked_for() {
        let i = inotify_init(true).unwrap();
        let dir = open_o_path("/tmp", false).unwrap();
        assert_eq!(
            inotify_add_watch(i.as_fd(), dir.as_fd(), libc::IN_CREATE, Some(41)).unwrap(),
            41
        );
    }
}
