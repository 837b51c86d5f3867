//! kcmp(2): whether two fds (possibly in different tasks) share one open file description.

use libc::pid_t;
use nix::errno::Errno;

use crate::error::{Error, Result};

const KCMP_FILE: libc::c_long = 0;
pub const KCMP_VM: libc::c_long = 1;
pub const KCMP_FILES: libc::c_long = 2;
pub const KCMP_FS: libc::c_long = 3;
pub const KCMP_SIGHAND: libc::c_long = 4;

pub fn same_file(pid1: pid_t, fd1: i32, pid2: pid_t, fd2: i32) -> Result<bool> {
    // SAFETY: kcmp only compares kernel objects; no memory is passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid1,
            pid2,
            KCMP_FILE,
            fd1 as libc::c_long,
            fd2 as libc::c_long,
        )
    };
    if r < 0 {
        return Err(Error::sys(
            format!("kcmp({pid1}:{fd1}, {pid2}:{fd2})"),
            Errno::last(),
        ));
    }
    Ok(r == 0)
}

/// Whether two tasks share one kernel object of `kind` (KCMP_VM, KCMP_FILES, ...).
pub fn same_object(pid1: pid_t, pid2: pid_t, kind: libc::c_long) -> Result<bool> {
    // SAFETY: as above.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid1,
            pid2,
            kind,
            0 as libc::c_long,
            0 as libc::c_long,
        )
    };
    if r < 0 {
        return Err(Error::sys(
            format!("kcmp({pid1}, {pid2}, {kind})"),
            Errno::last(),
        ));
    }
    Ok(r == 0)
}
