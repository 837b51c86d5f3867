//! kcmp(2): whether two fds (possibly in different tasks) share one open file description.

use libc::pid_t;
use nix::errno::Errno;

use crate::error::{Error, Result};

const KCMP_FILE: libc::c_long = 0;

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
