//! Runs system calls inside a stopped tracee: put the number and arguments in its registers,
//! point rip at a `syscall` instruction, step to syscall entry and exit, read rax. The tracee's
//! own registers are put back by the caller (see `restart_adjusted`).

use std::cell::RefCell;

use libc::pid_t;

use super::mem::read_remote;
use super::ptrace::{Regs, Stop, Tracee};
use crate::error::{Error, Result};

const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
const ERESTART_RESTARTBLOCK: i64 = 516;
const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];

/// Registers as the task would see them once it resumes: a thread stopped inside an
/// interrupted syscall gets the kernel's restart step applied (rax = orig_rax, rip back over
/// `syscall`). ERESTART_RESTARTBLOCK (sleeps, polls with timeouts) restarts the original call
/// too: its restart block is kernel state that does not survive a checkpoint, and re-running the
/// call (at worst waiting longer) is what the program can least tell apart.
pub fn restart_adjusted(regs: &Regs) -> Regs {
    let mut r = *regs;
    if (r.orig_rax as i64) >= 0 {
        let err = -(r.rax as i64);
        if matches!(
            err,
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND | ERESTART_RESTARTBLOCK
        ) {
            r.rax = r.orig_rax;
            r.rip -= 2;
        }
        r.orig_rax = u64::MAX;
    }
    r
}

/// Finds a `syscall` instruction the tracee can execute: the one it is stopped after, or one in
/// its vdso. Neither changes the tracee's memory.
pub fn find_syscall_insn(pid: pid_t, regs: &Regs, vdso: Option<(u64, u64)>) -> Result<u64> {
    let mut two = [0u8; 2];
    if regs.rip >= 2 && read_remote(pid, &mut two, regs.rip - 2).is_ok() && two == SYSCALL_INSN {
        return Ok(regs.rip - 2);
    }
    if let Some((start, end)) = vdso {
        let mut code = vec![0u8; (end - start) as usize];
        read_remote(pid, &mut code, start)?;
        if let Some(off) = code.windows(2).position(|w| w == SYSCALL_INSN) {
            return Ok(start + off as u64);
        }
    }
    Err(Error::task(
        pid,
        "no syscall instruction found to run system calls in the task",
    ))
}

/// Syscalls run inside one stopped thread.
pub struct Injector<'a> {
    tracee: &'a Tracee,
    template: Regs,
    syscall_ip: u64,
    /// Signals (only unblockable ones can arrive: callers block the rest) that tried to reach
    /// the tracee while we drove it; the caller re-sends them when it lets the task go.
    deferred: RefCell<Vec<i32>>,
}

impl<'a> Injector<'a> {
    pub fn new(tracee: &'a Tracee, template: Regs, syscall_ip: u64) -> Self {
        Injector {
            tracee,
            template,
            syscall_ip,
            deferred: RefCell::new(Vec::new()),
        }
    }

    pub fn tid(&self) -> pid_t {
        self.tracee.tid
    }

    pub fn tracee(&self) -> &Tracee {
        self.tracee
    }

    pub fn syscall_ip(&self) -> u64 {
        self.syscall_ip
    }

    pub fn set_syscall_ip(&mut self, ip: u64) {
        self.syscall_ip = ip;
    }

    pub fn deferred_signals(&self) -> Vec<i32> {
        self.deferred.borrow().clone()
    }

    /// Resumes to the next syscall stop, holding back signal-delivery stops.
    fn step_to_syscall_stop(&self) -> Result<()> {
        self.tracee.syscall(0)?;
        loop {
            match self.tracee.wait()? {
                Stop::Syscall => return Ok(()),
                Stop::Signal(sig) => {
                    self.deferred.borrow_mut().push(sig);
                    self.tracee.syscall(0)?;
                }
                Stop::Event(_) | Stop::OtherEvent(_) => self.tracee.syscall(0)?,
                s @ (Stop::Exited(_) | Stop::Killed(_)) => {
                    return Err(Error::task(
                        self.tracee.tid,
                        format!("died while running a syscall for us: {s:?}"),
                    ))
                }
            }
        }
    }

    /// Runs syscall `nr` and returns the raw result (negative errno on failure).
    pub fn raw(&self, nr: i64, args: [u64; 6]) -> Result<i64> {
        let mut r = self.template;
        r.rax = nr as u64;
        r.orig_rax = u64::MAX;
        r.rip = self.syscall_ip;
        r.rdi = args[0];
        r.rsi = args[1];
        r.rdx = args[2];
        r.r10 = args[3];
        r.r8 = args[4];
        r.r9 = args[5];
        self.tracee.set_regs(&r)?;
        self.step_to_syscall_stop()?; // entry
        fault::maybe_die();
        self.step_to_syscall_stop()?; // exit
        let out = self.tracee.get_regs()?;
        Ok(out.rax as i64)
    }

    /// Runs a syscall; a negative result becomes an error naming `what`.
    pub fn call(&self, what: &str, nr: i64, args: [u64; 6]) -> Result<u64> {
        let r = self.raw(nr, args)?;
        if (-4095..0).contains(&r) {
            Err(Error::sys(
                format!("{what} in task {}", self.tracee.tid),
                nix::errno::Errno::from_raw(-r as i32),
            ))
        } else {
            Ok(r as u64)
        }
    }
}

/// Fault injection for tests: with CRIU_RS_FAULT_KILL_AT_SYSCALL=N in the environment, we kill
/// ourselves inside the N-th syscall we run in a task (between its entry and exit), to check
/// that the task survives our death at any point.
mod fault {
    use std::sync::atomic::{AtomicU64, Ordering};

    static COUNT: AtomicU64 = AtomicU64::new(0);

    pub fn maybe_die() {
        static AT: once_cell::sync::Lazy<Option<u64>> = once_cell::sync::Lazy::new(|| {
            std::env::var("CRIU_RS_FAULT_KILL_AT_SYSCALL")
                .ok()
                .and_then(|v| v.parse().ok())
        });
        if let Some(at) = *AT {
            if COUNT.fetch_add(1, Ordering::Relaxed) + 1 == at {
                // SAFETY: kill(2) on ourselves.
                unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            }
        }
    }
}
