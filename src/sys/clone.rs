//! clone3 with set_tid: a new process with the pid it had at checkpoint time.

use libc::pid_t;
use nix::errno::Errno;

use crate::error::{Error, Result};

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

pub enum Forked {
    Parent(pid_t),
    Child,
}

/// Forks (no shared VM, returns twice like fork) with pid `pid`, or any pid when None.
/// `flags` may add CLONE_PARENT (the new task becomes our sibling). The child must not call
/// into pthread-level glibc (raise, pthread_self-based locks): glibc's cached tid is the
/// parent's after a raw clone.
pub fn fork_with_pid(pid: Option<pid_t>, flags: u64) -> Result<Forked> {
    let tids = [pid.unwrap_or(0)];
    let args = CloneArgs {
        flags,
        // With CLONE_PARENT the kernel takes the exit signal from us (our parent's choice) and
        // refuses any other.
        exit_signal: if flags & libc::CLONE_PARENT as u64 != 0 {
            0
        } else {
            libc::SIGCHLD as u64
        },
        set_tid: if pid.is_some() {
            tids.as_ptr() as u64
        } else {
            0
        },
        set_tid_size: u64::from(pid.is_some()),
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM behaves like fork: the child continues on a copy of our
    // stack. args and tids outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match r {
        0 => Ok(Forked::Child),
        r if r > 0 => Ok(Forked::Parent(r as pid_t)),
        _ => {
            let e = Errno::last();
            match (e, pid) {
                (Errno::EEXIST, Some(p)) => Err(Error::PidTaken(p)),
                _ => Err(Error::sys(format!("clone3(set_tid={pid:?})"), e)),
            }
        }
    }
}

/// Starts a thread of ours with tid `tid` that does nothing but wait in pause() on the stack
/// [stack, stack + stack_size), with all signals blocked (inherited from the caller). The
/// tracer later replaces its registers; it never runs Rust code (it shares our TLS).
pub fn spawn_parked_thread(tid: pid_t, stack: u64, stack_size: u64) -> Result<pid_t> {
    let tids = [tid];
    let flags = libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM;
    let args = CloneArgs {
        flags: flags as u64,
        stack,
        stack_size,
        set_tid: tids.as_ptr() as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    let ret: i64;
    // SAFETY: in the new thread rax is 0 and it loops on pause() forever without touching
    // memory; in this thread clone3 returns the tid or an error. args and tids outlive the call.
    unsafe {
        core::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 3f",
            "2:",
            "mov eax, {pause}",
            "syscall",
            "jmp 2b",
            "3:",
            pause = const libc::SYS_pause,
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") &args as *const CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if ret < 0 {
        let e = Errno::from_raw(-ret as i32);
        return Err(match e {
            Errno::EEXIST => Error::PidTaken(tid),
            e => Error::sys(format!("clone3(thread, set_tid={tid})"), e),
        });
    }
    Ok(ret as pid_t)
}
