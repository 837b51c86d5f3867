//! Signal syscalls on ourselves, for the task being restored.

use nix::errno::Errno;

use crate::error::{Error, Result};

#[repr(C)]
struct KSigaction {
    handler: u64,
    flags: u64,
    restorer: u64,
    mask: u64,
}

pub fn set_action(sig: u32, handler: u64, flags: u64, restorer: u64, mask: u64) -> Result<()> {
    let act = KSigaction {
        handler,
        flags,
        restorer,
        mask,
    };
    // SAFETY: kernel-format sigaction read by the kernel; the handler address is only stored.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig as libc::c_long,
            &act as *const KSigaction,
            0usize,
            8usize,
        )
    };
    if r < 0 {
        return Err(Error::sys(format!("rt_sigaction({sig})"), Errno::last()));
    }
    Ok(())
}

/// Blocks every signal in the calling thread; returns the previous mask.
pub fn block_all() -> Result<u64> {
    let all: u64 = !0;
    let mut old: u64 = 0;
    // SAFETY: kernel sigset_t of 8 bytes in and out.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all as *const u64,
            &mut old as *mut u64,
            8usize,
        )
    };
    if r < 0 {
        return Err(Error::last("rt_sigprocmask"));
    }
    Ok(old)
}

/// Queues a signal with a full siginfo to ourselves: the process (`tid` None) or one thread.
pub fn queue_to_self(pid: i32, tid: Option<i32>, sig: i32, info: &[u8; 128]) -> Result<()> {
    // SAFETY: info is a 128-byte siginfo the kernel copies in.
    let r = unsafe {
        match tid {
            None => libc::syscall(libc::SYS_rt_sigqueueinfo, pid, sig, info.as_ptr()),
            Some(t) => libc::syscall(libc::SYS_rt_tgsigqueueinfo, pid, t, sig, info.as_ptr()),
        }
    };
    if r < 0 {
        return Err(Error::sys(
            format!("queue signal {sig} to {pid}/{tid:?}"),
            Errno::last(),
        ));
    }
    Ok(())
}

/// Dies of `sig` with its default action (a zombie being recreated).
pub fn die_by(sig: i32) -> Result<()> {
    // SAFETY: resetting a handler to SIG_DFL and sending ourselves a signal.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::syscall(libc::SYS_kill, libc::getpid(), sig);
    }
    Err(Error::sys(
        format!("signal {sig} did not end us"),
        Errno::last(),
    ))
}

/// Takes every pending instance of (blocked) `sig` off the queue without handling it.
pub fn discard_pending(sig: i32) -> Result<()> {
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: sigtimedwait with a local set and no siginfo output.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        while libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) == sig {}
    }
    Ok(())
}
