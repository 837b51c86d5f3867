//! Which pages a task wrote since the previous dump iteration, without soft-dirty: a userfaultfd
//! of the task's own mm in async write-protect mode, registered over its private memory. Every
//! write clears a page's protection; a PAGEMAP_SCAN with WP_MATCHING reports exactly the pages
//! written and protects them again, atomically (../shared/KERNEL-FACTS.md, probe p1).
//!
//! The tracker has to outlive the dumper (runc and podman run every iteration as a new `criu`),
//! so it lives in the task: the descriptor is created there by an injected userfaultfd() and
//! parked at a high fd number. Nothing of it reaches an image: the dump skips that fd, and a
//! restored task starts untracked.
//!
//! The write bits only mean something relative to the iteration that last cleared them. A state
//! file per task (`STATE_DIR/PID-STARTTIME`) records the tracker's fd and inode and the token
//! (`inventory.dump_uptime`) of the images written at that reset. An iteration trusts the bits
//! only when its parent images carry that very token; it clears the token before it resets the
//! bits and writes its own once its images are complete. Whatever goes wrong in between (a
//! killed dumper, a task that closed the fd, an exec, another dump run in between) leaves a
//! mismatch, and the next iteration copies everything: a page can be copied needlessly, never
//! missed.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use libc::pid_t;
use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::remote::Remote;
use crate::sys::pidfd::PidFd;
use crate::sys::uffd;

/// Where state files live: a tmpfs that does not survive a reboot, as the trackers do not.
fn state_dir() -> PathBuf {
    let run = PathBuf::from("/run");
    if nix::unistd::access(&run, nix::unistd::AccessFlags::W_OK).is_ok() {
        run.join("criu-rs/track")
    } else {
        std::env::temp_dir().join(format!("criu-rs-track-{}", nix::unistd::geteuid()))
    }
}

fn state_path(pid: pid_t, start_time: u64) -> PathBuf {
    state_dir().join(format!("{pid}-{start_time}"))
}

/// The lowest fd number the tracker is moved to, counted down from the task's fd limit.
const PARK_BELOW_LIMIT: u64 = 16;

/// A task's write tracker, as seen from the dumper.
pub struct Tracker {
    pid: pid_t,
    start_time: u64,
    /// The tracker's number in the task's fd table.
    pub fd_in_task: RawFd,
    /// Our copy of it.
    uffd: OwnedFd,
    ino: u64,
    /// The images the write bits are relative to (their dump_uptime), if known.
    pub token: Option<u64>,
}

impl Tracker {
    /// The tracker an earlier iteration left in the task, if it is still there and still the one
    /// the state file names.
    pub fn find(pid: pid_t, start_time: u64) -> Result<Option<Tracker>> {
        let path = state_path(pid, start_time);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(None);
        };
        let mut words = text.split_whitespace();
        let (Some(fd), Some(ino), Some(token)) = (
            words.next().and_then(|w| w.parse::<RawFd>().ok()),
            words.next().and_then(|w| w.parse::<u64>().ok()),
            words.next(),
        ) else {
            log::warn!("ignoring malformed tracker state {}", path.display());
            let _ = std::fs::remove_file(&path);
            return Ok(None);
        };
        let token = token.parse::<u64>().ok();
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap_or_default();
        if link.as_os_str() != "anon_inode:[userfaultfd]" {
            log::info!("pid {pid}: the memory tracker at fd {fd} is gone: copying all memory");
            let _ = std::fs::remove_file(&path);
            return Ok(None);
        }
        let uffd = PidFd::open(pid)?.get_fd(fd)?;
        let have = std::fs::metadata(format!("/proc/self/fd/{}", uffd.as_raw_fd()))
            .map(|m| m.ino())
            .unwrap_or(0);
        if have != ino {
            log::info!("pid {pid}: fd {fd} is another userfaultfd than our tracker");
            let _ = std::fs::remove_file(&path);
            return Ok(None);
        }
        Ok(Some(Tracker {
            pid,
            start_time,
            fd_in_task: fd,
            uffd,
            ino,
            token,
        }))
    }

    /// Creates a tracker inside the task (which `remote` drives) and parks it at a high fd.
    pub fn create(remote: &Remote, start_time: u64) -> Result<Tracker> {
        let pid = remote.pid();
        // The task's own fd limit (prlimit from outside needs CAP_SYS_RESOURCE for other uids).
        remote.syscall(
            "prlimit64(RLIMIT_NOFILE)",
            libc::SYS_prlimit64,
            [0, libc::RLIMIT_NOFILE as u64, 0, remote.addr(0), 0, 0],
        )?;
        let fd_limit = remote.read_u64(0)?.min(1 << 20);
        let flags = uffd::UFFD_USER_MODE_ONLY | (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
        let fd = match remote.syscall_raw(libc::SYS_userfaultfd, [flags, 0, 0, 0, 0, 0])? {
            fd if fd >= 0 => fd as u64,
            err => {
                // Seccomp profiles often forbid the syscall and leave the device alone.
                log::debug!("pid {pid}: userfaultfd() gave {err}; trying /dev/userfaultfd");
                from_device(remote, flags)?
            }
        };
        let low = fd_limit.saturating_sub(PARK_BELOW_LIMIT).max(fd + 1);
        let parked = remote.syscall_raw(
            libc::SYS_fcntl,
            [fd, libc::F_DUPFD_CLOEXEC as u64, low, 0, 0, 0],
        )?;
        let _ = remote.syscall_raw(libc::SYS_close, [fd, 0, 0, 0, 0, 0]);
        if parked < 0 {
            return Err(Error::sys(
                format!("pid {pid}: park the memory tracker at fd >= {low}"),
                Errno::from_raw(-parked as i32),
            ));
        }
        let fd_in_task = parked as RawFd;
        let uffd = PidFd::open(pid)?.get_fd(fd_in_task)?;
        uffd::api(uffd.as_fd(), uffd::TRACKER_FEATURES)?;
        let ino = std::fs::metadata(format!("/proc/self/fd/{}", uffd.as_raw_fd()))
            .map_err(|e| Error::io("stat the memory tracker", e))?
            .ino();
        let t = Tracker {
            pid,
            start_time,
            fd_in_task,
            uffd,
            ino,
            token: None,
        };
        prune_state();
        t.save(None)?;
        log::info!("pid {pid}: memory tracker created at fd {fd_in_task}");
        Ok(t)
    }

    pub fn uffd(&self) -> BorrowedFd<'_> {
        self.uffd.as_fd()
    }

    /// Starts tracking [start, end). False when the kernel refuses (the range belongs to
    /// another userfaultfd, or cannot be tracked): it then stays untracked, copied in full.
    pub fn register(&self, start: u64, end: u64) -> bool {
        match uffd::register_wp(self.uffd(), start, end) {
            Ok(()) => true,
            Err(e) => {
                log::info!(
                    "pid {}: cannot track {start:#x}-{end:#x} ({e}): copied in full each time",
                    self.pid
                );
                false
            }
        }
    }

    /// Clears the write protection pages of [start, end) may still carry from an earlier
    /// registration (see `mem::Registration::New`), so that every page reads as written. The
    /// task may have changed the range since it was listed: then piece by piece as it is mapped
    /// now; a piece that stays protected is unregistered, which clears it too and makes it new
    /// again at the next iteration.
    pub fn clear_stale(&self, start: u64, end: u64) {
        if uffd::unprotect(self.uffd(), start, end).is_ok() {
            return;
        }
        let Ok(maps) = crate::procfs::maps_quick(self.pid) else {
            return;
        };
        for m in maps.iter().filter(|m| m.start < end && m.end > start) {
            let (s, e) = (m.start.max(start), m.end.min(end));
            if let Err(err) = uffd::unprotect(self.uffd(), s, e) {
                log::debug!(
                    "pid {}: {s:#x}-{e:#x} keeps its protection ({err}): unregistered",
                    self.pid
                );
                let _ = uffd::unregister(self.uffd(), s, e);
            }
        }
    }

    /// Forgets the token: called before the write bits are reset.
    pub fn invalidate(&mut self) -> Result<()> {
        self.token = None;
        self.save(None)
    }

    /// Records that the write bits are now relative to the images with `token`.
    pub fn commit(&mut self, token: u64) -> Result<()> {
        self.token = Some(token);
        self.save(Some(token))
    }

    fn save(&self, token: Option<u64>) -> Result<()> {
        let dir = state_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let path = state_path(self.pid, self.start_time);
        let tmp = path.with_extension("tmp");
        let token = token.map_or("-".to_string(), |t| t.to_string());
        std::fs::write(&tmp, format!("{} {} {token}\n", self.fd_in_task, self.ino))
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| Error::io(format!("write {}", path.display()), e))
    }

    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// Ends tracking: closes the task's descriptor (`remote` drives the task); the kernel drops
    /// the registrations with the last descriptor, which is ours, when this value goes.
    pub fn remove(self, remote: &Remote) -> Result<()> {
        remote.syscall(
            "close(memory tracker)",
            libc::SYS_close,
            [self.fd_in_task as u64, 0, 0, 0, 0, 0],
        )?;
        forget(self.pid, self.start_time);
        log::info!("pid {}: memory tracking stopped", self.pid);
        Ok(())
    }
}

/// The inodes of every tracker we know of (children inherit their parent's across fork).
pub fn known_inodes() -> Vec<u64> {
    let Ok(rd) = std::fs::read_dir(state_dir()) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| t.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

/// The fds of task `pid` that are trackers with one of these inodes.
pub fn fds_in_task(pid: pid_t, inodes: &[u64]) -> Vec<RawFd> {
    if inodes.is_empty() {
        return Vec::new();
    }
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:[userfaultfd]")
                && std::fs::metadata(e.path()).is_ok_and(|m| inodes.contains(&m.ino()))
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Inodes of trackers of ours in task `pid` that no state file knows (lost: the state
/// directory was wiped, or a dumper died between creating a tracker and saving it). Known by
/// what we make: an asynchronous write-protect userfaultfd parked just below the task's fd
/// limit. Such a tracker is useless (its bits are relative to nothing we know) and harmful
/// (it holds the registrations, and a dump would find a descriptor it cannot save).
pub fn orphans_in_task(pid: pid_t, known: &[u64]) -> Vec<u64> {
    let Some(limit) = fd_soft_limit(pid) else {
        return Vec::new();
    };
    let low = limit.min(1 << 20).saturating_sub(PARK_BELOW_LIMIT);
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|fd| fd >= low)
                && std::fs::read_link(e.path())
                    .is_ok_and(|l| l.as_os_str() == "anon_inode:[userfaultfd]")
                && uffd_features(pid, &e.file_name().to_string_lossy())
                    .is_some_and(|f| f & uffd::TRACKER_FEATURES == uffd::TRACKER_FEATURES)
        })
        .filter_map(|e| std::fs::metadata(e.path()).ok().map(|m| m.ino()))
        .filter(|ino| !known.contains(ino))
        .collect()
}

/// The soft RLIMIT_NOFILE of task `pid`, from /proc/PID/limits.
fn fd_soft_limit(pid: pid_t) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The features a userfaultfd of task `pid` was set up with ("API:\taa:FEATURES:IOCTLS" in
/// its fdinfo).
fn uffd_features(pid: pid_t, fd: &str) -> Option<u64> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let api = info.lines().find_map(|l| l.strip_prefix("API:"))?;
    u64::from_str_radix(api.trim().split(':').nth(1)?, 16).ok()
}

/// Closes every copy of a tracker in the task `remote` drives (its own and inherited ones):
/// a copy left anywhere would keep the registrations, and their cost, alive.
pub fn close_all_in_task(remote: &Remote, inodes: &[u64]) -> Result<usize> {
    let fds = fds_in_task(remote.pid(), inodes);
    for &fd in &fds {
        remote.syscall(
            "close(memory tracker)",
            libc::SYS_close,
            [fd as u64, 0, 0, 0, 0, 0],
        )?;
    }
    Ok(fds.len())
}

/// Drops the state files of tasks that are gone (the trackers went with them).
fn prune_state() {
    let Ok(rd) = std::fs::read_dir(state_dir()) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some((pid, start)) = name.to_str().and_then(|n| n.split_once('-')) else {
            continue;
        };
        let (Ok(pid), Ok(start)) = (pid.parse::<pid_t>(), start.parse::<u64>()) else {
            continue;
        };
        if !crate::procfs::stat(pid, None).is_ok_and(|st| st.start_time == start) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Drops the state of a task that is gone or no longer tracked.
pub fn forget(pid: pid_t, start_time: u64) {
    let _ = std::fs::remove_file(state_path(pid, start_time));
}

/// `open("/dev/userfaultfd")` + USERFAULTFD_IOC_NEW inside the task.
fn from_device(remote: &Remote, flags: u64) -> Result<u64> {
    const PATH: &[u8] = b"/dev/userfaultfd\0";
    remote.write(0, PATH)?;
    let dev = remote.syscall(
        "open(/dev/userfaultfd)",
        libc::SYS_openat,
        [
            libc::AT_FDCWD as u64,
            remote.addr(0),
            (libc::O_RDWR | libc::O_CLOEXEC) as u64,
            0,
            0,
            0,
        ],
    )?;
    let fd = remote.syscall_raw(
        libc::SYS_ioctl,
        [dev, uffd::USERFAULTFD_IOC_NEW, flags, 0, 0, 0],
    );
    let _ = remote.syscall_raw(libc::SYS_close, [dev, 0, 0, 0, 0, 0]);
    match fd? {
        fd if fd >= 0 => Ok(fd as u64),
        err => Err(Error::sys(
            format!("pid {}: no userfaultfd for memory tracking", remote.pid()),
            Errno::from_raw(-err as i32),
        )),
    }
}
