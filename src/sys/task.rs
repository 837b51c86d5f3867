//! Per-task queries that work from outside the task (no injection needed).

use libc::pid_t;
use nix::errno::Errno;

use crate::error::{Error, Result};

/// The robust futex list head and its length (get_robust_list).
pub fn robust_list(tid: pid_t) -> Result<(u64, u64)> {
    let mut head: u64 = 0;
    let mut len: usize = 0;
    // SAFETY: the kernel writes one pointer and one size_t.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            tid,
            &mut head as *mut u64,
            &mut len as *mut usize,
        )
    };
    if r < 0 {
        return Err(Error::sys(format!("get_robust_list({tid})"), Errno::last()));
    }
    Ok((head, len as u64))
}

/// Scheduling policy, priority and nice value of a thread.
pub fn sched(tid: pid_t) -> Result<(u32, u32, i32)> {
    // SAFETY: plain syscalls; sched_param is written by the kernel.
    unsafe {
        let policy = libc::sched_getscheduler(tid);
        if policy < 0 {
            return Err(Error::last(format!("sched_getscheduler({tid})")));
        }
        let mut p: libc::sched_param = std::mem::zeroed();
        if libc::sched_getparam(tid, &mut p) < 0 {
            return Err(Error::last(format!("sched_getparam({tid})")));
        }
        Errno::clear();
        let nice = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        if nice == -1 && Errno::last_raw() != 0 {
            return Err(Error::last(format!("getpriority({tid})")));
        }
        Ok((
            policy as u32 & !(libc::SCHED_RESET_ON_FORK as u32),
            p.sched_priority as u32,
            nice,
        ))
    }
}

/// Whether a pid (or tid) is in use by any task.
pub fn pid_in_use(pid: pid_t) -> bool {
    // SAFETY: signal 0 only checks existence.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0
        || Errno::last() != Errno::ESRCH
        || std::path::Path::new(&format!("/proc/{pid}")).exists()
}
