//! Process-level calls on ourselves for the task being restored.

use nix::errno::Errno;

use crate::error::{Error, Result};

/// Ends the process without running destructors or atexit handlers (which belong to the
/// restorer whose copy we are).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// Blocks until the tracer takes over (it interrupts us and replaces our registers).
pub fn park_forever() -> ! {
    loop {
        // SAFETY: pause has no arguments.
        unsafe { libc::pause() };
    }
}

pub fn set_rlimit(resource: u32, cur: u64, max: u64) -> Result<()> {
    let new = libc::rlimit64 {
        rlim_cur: cur,
        rlim_max: max,
    };
    // SAFETY: prlimit64 reads one struct.
    let r = unsafe {
        libc::prlimit64(
            0,
            resource as libc::__rlimit_resource_t,
            &new,
            std::ptr::null_mut(),
        )
    };
    if r < 0 {
        let e = Errno::last();
        let hint = if e == Errno::EPERM {
            " (raising a hard limit needs CAP_SYS_RESOURCE)"
        } else {
            ""
        };
        return Err(Error::sys(
            format!("setrlimit({resource}, {cur:#x}, {max:#x}){hint}"),
            e,
        ));
    }
    Ok(())
}

pub fn prctl(option: i32, arg: u64) -> Result<()> {
    // SAFETY: prctl options used here take integer arguments only.
    let r = unsafe { libc::prctl(option, arg, 0u64, 0u64, 0u64) };
    if r < 0 {
        return Err(Error::last(format!("prctl({option}, {arg})")));
    }
    Ok(())
}

/// PR_SET_NAME: the thread's comm (truncated to 15 bytes by the kernel).
pub fn set_name(name: &str) -> Result<()> {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: PR_SET_NAME reads up to 16 bytes from buf.
    let r = unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr() as u64, 0u64, 0u64, 0u64) };
    if r < 0 {
        return Err(Error::last("prctl(PR_SET_NAME)"));
    }
    Ok(())
}

/// Waits until child `pid` has exited, leaving it a zombie (WNOWAIT).
pub fn wait_exited_nowait(pid: libc::pid_t) -> Result<()> {
    loop {
        // SAFETY: waitid writes one siginfo_t.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = Errno::last();
        if e != Errno::EINTR {
            return Err(Error::sys(format!("wait for child {pid}"), e));
        }
    }
}
