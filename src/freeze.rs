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
    wait_tid, wait_tid_until, Regs, Stop, Tracee, PTRACE_O_EXITKILL, PTRACE_O_SUSPEND_SECCOMP,
    PTRACE_O_TRACESYSGOOD,
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
    /// Parent in the dumped tree (0 for the root).
    pub ppid: pid_t,
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

/// A dead child nobody has waited for yet: it stays a zombie through dump and restore.
#[derive(Clone, Debug)]
pub struct Zombie {
    pub pid: pid_t,
    pub ppid: pid_t,
    pub stat: procfs::Stat,
}

/// Where each process of the tree stands in CRIU's pstree order (a parent before its children).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Member {
    /// Index into `Frozen::tasks`.
    Alive(usize),
    /// Index into `Frozen::zombies`.
    Zombie(usize),
}

pub struct Frozen {
    pub tasks: Vec<FrozenTask>,
    pub zombies: Vec<Zombie>,
    /// Every process of the tree, parents before children (depth first, as CRIU writes them).
    pub order: Vec<Member>,
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

/// Freezes one process and all its threads; None when it is a zombie or gone.
fn freeze_one(pid: pid_t, ppid: pid_t, deadline: Instant) -> Result<Option<FrozenTask>> {
    match procfs::stat(pid, None) {
        Ok(s) if s.state == 'Z' || s.state == 'X' => {
            if procfs::threads(pid).map(|t| t.len()).unwrap_or(0) > 1 {
                return Err(Error::unsupported(
                    pid,
                    "a dead thread-group leader with live threads",
                ));
            }
            return Ok(None);
        }
        Ok(_) => {}
        Err(_) => return Ok(None),
    }
    let mut task = FrozenTask {
        pid,
        ppid,
        threads: Vec::new(),
        stop_signo: None,
    };
    let mut attached: Vec<Tracee> = Vec::new();
    let give_up = |attached: Vec<Tracee>| {
        // Dropping Tracees does not detach: do it here.
        for t in attached {
            let _ = wait_frozen(&t, deadline.max(Instant::now() + Duration::from_secs(1)));
            let _ = t.detach(0);
        }
    };
    loop {
        let tids = match procfs::threads(pid) {
            Ok(t) => t,
            Err(e) => {
                give_up(attached);
                return Err(e);
            }
        };
        let mut new = 0;
        for tid in tids {
            if attached.iter().any(|t| t.tid == tid) {
                continue;
            }
            match seize_thread(tid) {
                Ok(Some(t)) => {
                    attached.push(t);
                    new += 1;
                }
                Ok(None) => {}
                Err(e) => {
                    give_up(attached);
                    return Err(e);
                }
            }
        }
        if new == 0 {
            break;
        }
        if Instant::now() > deadline {
            give_up(attached);
            return Err(Error::task(
                pid,
                "threads kept appearing: could not freeze in time",
            ));
        }
    }
    if !attached.iter().any(|t| t.tid == pid) {
        // The leader died meanwhile.
        give_up(attached);
        return Ok(None);
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
        match wait_frozen(&t, deadline).and_then(|stop| Ok((stop, t.get_regs()?, t.get_sigmask()?)))
        {
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
    if let Err(e) = result {
        let job_stopped = task.stop_signo.is_some();
        for th in task.threads {
            let _ = release_thread(th, job_stopped);
        }
        return Err(e);
    }
    Ok(Some(task))
}

impl Frozen {
    /// Freezes the tree below `root`: each process with all its threads, then its children.
    /// A process frozen cannot fork, so listing its children after freezing it finds them all;
    /// threads created while we attach are picked up by listing until the set is stable.
    pub fn freeze_tree(root: pid_t, timeout: Duration) -> Result<Frozen> {
        let mut frozen = Frozen {
            tasks: Vec::new(),
            zombies: Vec::new(),
            order: Vec::new(),
            frozen_at: Instant::now(),
            released: false,
        };
        let deadline = Instant::now() + timeout;
        let mut todo = vec![(root, 0)];
        while let Some((pid, ppid)) = todo.pop() {
            // On error `frozen` is dropped, which resumes every task already stopped.
            match freeze_one(pid, ppid, deadline)? {
                Some(task) => {
                    let children = procfs::children(pid)?;
                    frozen.order.push(Member::Alive(frozen.tasks.len()));
                    frozen.tasks.push(task);
                    todo.extend(children.into_iter().rev().map(|c| (c, pid)));
                }
                None => match procfs::stat(pid, None) {
                    Ok(stat) if stat.state == 'Z' && pid != root => {
                        frozen.order.push(Member::Zombie(frozen.zombies.len()));
                        frozen.zombies.push(Zombie { pid, ppid, stat });
                    }
                    Ok(stat) if stat.state == 'Z' => return Err(Error::task(pid, "is a zombie")),
                    _ if pid == root => return Err(Error::task(pid, "no such process")),
                    // Gone before we got to it: it exited with SIGCHLD ignored, nobody waits.
                    _ => {}
                },
            }
        }
        frozen.frozen_at = Instant::now();
        Ok(frozen)
    }

    /// Every task of the tree, in pstree order, with its pstree parent.
    pub fn alive(&self) -> impl Iterator<Item = &FrozenTask> {
        self.tasks.iter()
    }

    /// Lets every task run on as if nothing happened.
    pub fn resume(mut self) -> Result<()> {
        self.released = true;
        let mut first_err = Ok(());
        for task in std::mem::take(&mut self.tasks) {
            let job_stopped = task.stop_signo.is_some();
            for th in task.threads {
                if let Err(e) = release_thread(th, job_stopped) {
                    log::error!("{e}");
                    if first_err.is_ok() {
                        first_err = Err(e);
                    }
                }
            }
        }
        first_err
    }

    /// From now on the tree dies with us (PTRACE_O_EXITKILL), however we end: for a tree whose
    /// state may already run elsewhere (lazy migration), resuming it would run it twice.
    pub fn die_with_tracer(&self) -> Result<()> {
        for th in self.tasks.iter().flat_map(|t| &t.threads) {
            th.tracee.set_options(
                PTRACE_O_TRACESYSGOOD | PTRACE_O_SUSPEND_SECCOMP | PTRACE_O_EXITKILL,
            )?;
        }
        Ok(())
    }

    /// Kills every task (the default end of a dump), while it is still frozen so that it never
    /// runs again after its state was saved.
    pub fn kill(mut self) -> Result<()> {
        self.released = true;
        let tasks = std::mem::take(&mut self.tasks);
        for task in &tasks {
            // SAFETY-free: plain kill; the tracees are stopped, SIGKILL still ends them.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(task.pid),
                nix::sys::signal::SIGKILL,
            );
        }
        // Children's exits first: a pid namespace's init only finishes exiting once its
        // children are reaped, which waits for us, their tracer, to take their exits.
        for task in tasks.into_iter().rev() {
            // Other threads first: the leader is only reported once they are all gone.
            for th in task.threads.into_iter().rev() {
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

/// Lets one thread go as it was at the freeze. A thread stopped inside an interrupted syscall
/// is first brought back to a stop within signal delivery, where the kernel itself finishes
/// the call once the thread runs: restarted, with its restart block (a sleep's time left), or
/// failed with EINTR when a signal handler runs first (a pause() or sigsuspend() woken by a
/// signal sent right after the release must return). Syscalls we ran in the thread leave it at
/// a syscall-exit stop, from which the kernel looks at no restart; only a thread in a
/// job-control stop, which a resume would end, gets the restart applied by hand.
fn release_thread(mut th: FrozenThread, job_stopped: bool) -> Result<()> {
    let tid = th.tracee.tid;
    let in_syscall = (th.regs.orig_rax as i64) >= 0;
    if in_syscall && !job_stopped {
        th.tracee.interrupt()?;
        th.tracee.cont(0)?;
        loop {
            match th.tracee.wait()? {
                Stop::Event(_) => break,
                Stop::Signal(sig) => {
                    th.deferred.push(sig);
                    th.tracee.cont(0)?;
                }
                Stop::Syscall | Stop::OtherEvent(_) => th.tracee.cont(0)?,
                s @ (Stop::Exited(_) | Stop::Killed(_)) => {
                    return Err(Error::task(
                        tid,
                        format!("died while being released: {s:?}"),
                    ))
                }
            }
        }
        th.tracee.set_regs(&th.regs)?;
    } else {
        th.tracee.set_regs(&restart_adjusted(&th.regs))?;
    }
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
            let job_stopped = task.stop_signo.is_some();
            for th in task.threads {
                let tid = th.tracee.tid;
                if let Err(e) = release_thread(th, job_stopped) {
                    log::error!("could not release thread {tid}: {e}");
                }
            }
        }
    }
}
