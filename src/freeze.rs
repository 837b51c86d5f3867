//! Freezing a process tree with PTRACE_SEIZE + PTRACE_INTERRUPT, and letting it go again.
//!
//! `Frozen` owns the ptrace attachments. Dropping it without `resume`/`kill` (an error, a panic)
//! resumes every task exactly as it was: a failed dump never leaves its target stopped or traced.

use std::time::{Duration, Instant};

use libc::pid_t;
use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::procfs;
use crate::sys::inject::restart_adjusted;
use crate::sys::ptrace::{
    wait_tid, wait_tid_until, Regs, Stop, Tracee, PTRACE_O_SUSPEND_SECCOMP, PTRACE_O_TRACESYSGOOD,
};

pub struct FrozenThread {
    pub tracee: Tracee,
    /// Registers at the freeze, as the kernel reported them.
    pub regs: Regs,
    /// The blocked-signal mask at the freeze.
    pub sigmask: u64,
    /// Signals we held back while driving the thread, re-sent on release.
    pub deferred: Vec<i32>,
}

pub struct FrozenTask {
    pub pid: pid_t,
    /// Leader first.
    pub threads: Vec<FrozenThread>,
    /// The job-control stop the task was in before we came, if any (restored stopped).
    pub stop_signo: Option<i32>,
}

impl FrozenTask {
    pub fn leader(&self) -> &FrozenThread {
        &self.threads[0]
    }
}

pub struct Frozen {
    pub tasks: Vec<FrozenTask>,
    pub frozen_at: Instant,
    released: bool,
}

fn seize_thread(tid: pid_t) -> Result<Option<Tracee>> {
    let opts = PTRACE_O_TRACESYSGOOD | PTRACE_O_SUSPEND_SECCOMP;
    let t = match Tracee::seize(tid, opts) {
        Ok(t) => t,
        // Only a thread that vanished meanwhile is acceptable.
        Err(Error::Sys {
            errno: Errno::ESRCH,
            ..
        }) => return Ok(None),
        Err(Error::Sys {
            errno: Errno::EPERM,
            ..
        }) => {
            let state = procfs::stat(tid, None).map(|s| s.state).unwrap_or('?');
            if state == 'Z' || state == 'X' {
                return Ok(None);
            }
            let tracer = procfs::status(tid, None).map(|s| s.tracer_pid).unwrap_or(0);
            let why = if tracer != 0 {
                format!(" (already traced by pid {tracer})")
            } else {
                String::new()
            };
            return Err(Error::task(
                tid,
                format!("cannot attach with ptrace: permission denied{why}"),
            ));
        }
        Err(e) => return Err(e),
    };
    t.interrupt()?;
    Ok(Some(t))
}

/// Waits for the interrupt stop of a freshly seized thread, re-delivering signals that arrive
/// first. Returns the group-stop signal when the thread was in a job-control stop. Past
/// `deadline` (the --timeout, criu_set_timeout) it fails with ETIMEDOUT; the thread then stays
/// attached until we exit (ptrace cannot detach a thread that is not stopped).
fn wait_frozen(t: &Tracee, deadline: Instant) -> Result<Option<i32>> {
    loop {
        let stop = wait_tid_until(t.tid, deadline)?.ok_or_else(|| {
            Error::sys(
                format!("pid {} did not stop before the freeze timeout", t.tid),
                Errno::ETIMEDOUT,
            )
        })?;
        match stop {
            Stop::Event(sig) => {
                return Ok(match sig {
                    libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU => Some(sig),
                    _ => None,
                })
            }
            Stop::Signal(sig) => t.cont(sig)?,
            Stop::Syscall | Stop::OtherEvent(_) => t.cont(0)?,
            s @ (Stop::Exited(_) | Stop::Killed(_)) => {
                return Err(Error::task(
                    t.tid,
                    format!("exited while being frozen: {s:?}"),
                ))
            }
        }
    }
}

impl Frozen {
    /// Freezes `pid` and all its threads. Threads created while we attach are picked up by
    /// listing until the set is stable (a stopped thread cannot clone).
    pub fn freeze_process(pid: pid_t, timeout: Duration) -> Result<Frozen> {
        let mut frozen = Frozen {
            tasks: Vec::new(),
            frozen_at: Instant::now(),
            released: false,
        };
        let deadline = Instant::now() + timeout;
        // A missing task is CRIU's ESRCH (pycriu: "No process with such pid").
        let state = match procfs::stat(pid, None) {
            Err(e) if e.errno() == libc::ENOENT => return Err(Error::task(pid, "no such process")),
            r => r?.state,
        };
        if state == 'Z' {
            return Err(Error::task(pid, "is a zombie"));
        }
        let mut task = FrozenTask {
            pid,
            threads: Vec::new(),
            stop_signo: None,
        };
        let mut attached: Vec<Tracee> = Vec::new();
        loop {
            let tids = procfs::threads(pid)?;
            let mut new = 0;
            for tid in tids {
                if attached.iter().any(|t| t.tid == tid) {
                    continue;
                }
                if let Some(t) = seize_thread(tid)? {
                    attached.push(t);
                    new += 1;
                }
            }
            if new == 0 {
                break;
            }
            if Instant::now() > deadline {
                // Detach what we have; dropping Tracees does not detach, so do it here.
                for t in attached {
                    let _ = wait_frozen(&t, Instant::now() + Duration::from_secs(1));
                    let _ = t.detach(0);
                }
                return Err(Error::task(
                    pid,
                    "threads kept appearing: could not freeze in time",
                ));
            }
        }
        if !attached.iter().any(|t| t.tid == pid) {
            return Err(Error::task(pid, "no such process"));
        }
        // Leader first.
        attached.sort_by_key(|t| (t.tid != pid, t.tid));
        let mut result = Ok(());
        for t in attached {
            if result.is_err() {
                // Already failing: still wait for the stop so that detaching works.
                let _ = wait_frozen(&t, deadline.max(Instant::now() + Duration::from_secs(1)));
                let _ = t.detach(0);
                continue;
            }
            match wait_frozen(&t, deadline).and_then(|stop| {
                let regs = t.get_regs()?;
                let sigmask = t.get_sigmask()?;
                Ok((stop, regs, sigmask))
            }) {
                Ok((stop, regs, sigmask)) => {
                    if t.tid == pid {
                        task.stop_signo = stop;
                    }
                    task.threads.push(FrozenThread {
                        tracee: t,
                        regs,
                        sigmask,
                        deferred: Vec::new(),
                    });
                }
                Err(e) => {
                    let _ = t.detach(0);
                    result = Err(e);
                }
            }
        }
        frozen.tasks.push(task);
        frozen.frozen_at = Instant::now();
        if let Err(e) = result {
            drop(frozen); // resumes the threads already stopped
            return Err(e);
        }
        Ok(frozen)
    }

    /// Lets every task run on as if nothing happened.
    pub fn resume(mut self) -> Result<()> {
        self.released = true;
        let mut first_err = Ok(());
        for task in std::mem::take(&mut self.tasks) {
            for th in task.threads {
                if let Err(e) = release_thread(th) {
                    log::error!("{e}");
                    if first_err.is_ok() {
                        first_err = Err(e);
                    }
                }
            }
        }
        first_err
    }

    /// Kills every task (the default end of a dump), while it is still frozen so that it never
    /// runs again after its state was saved.
    pub fn kill(mut self) -> Result<()> {
        self.released = true;
        for task in std::mem::take(&mut self.tasks) {
            // SAFETY-free: plain kill; the tracees are stopped, SIGKILL still ends them.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(task.pid),
                nix::sys::signal::SIGKILL,
            );
            for th in task.threads {
                // The exit is reported to us as tracer; the real parent still reaps.
                loop {
                    match wait_tid(th.tracee.tid) {
                        Ok(Stop::Exited(_)) | Ok(Stop::Killed(_)) | Err(_) => break,
                        Ok(_) => {
                            let _ = th.tracee.cont(0);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn release_thread(th: FrozenThread) -> Result<()> {
    let tid = th.tracee.tid;
    th.tracee.set_regs(&restart_adjusted(&th.regs))?;
    th.tracee.set_sigmask(th.sigmask)?;
    th.tracee.detach(0)?;
    for sig in th.deferred {
        // SAFETY-free: tgkill through libc; re-sends what the task would have received.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(tid),
            nix::sys::signal::Signal::try_from(sig).ok(),
        );
    }
    Ok(())
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        for task in std::mem::take(&mut self.tasks) {
            for th in task.threads {
                let tid = th.tracee.tid;
                if let Err(e) = release_thread(th) {
                    log::error!("could not release thread {tid}: {e}");
                }
            }
        }
    }
}
