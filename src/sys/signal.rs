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
