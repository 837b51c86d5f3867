//! The restored task's own side of a restore: everything it can do as an ordinary process
//! before the tracer takes over.

use std::os::fd::{IntoRawFd, RawFd};

use libc::pid_t;

use crate::engine::restore::{
    report, Plan, Proc, TaskImage, REPORT_CREATED, REPORT_ERROR, REPORT_READY,
};
use crate::error::{Error, Result};
use crate::files::FileImages;
use crate::mem::{self, Layout};
use crate::regs;
use crate::signals;
use crate::sys::clone::{fork_with_pid, Forked};
use crate::sys::fd as sysfd;
use crate::sys::mem::PAGE_SIZE;

/// Runs in process `idx` of the plan, right after its fork: becomes what the images say, forks
/// its children (who do the same), and parks for the tracer. Never returns.
pub fn run_task(plan: &Plan, idx: usize) -> ! {
    // Nothing of ours may print into what will become the task's fds.
    log::set_max_level(log::LevelFilter::Off);
    std::panic::set_hook(Box::new(|_| {}));
    let _ = crate::sys::signal::block_all();
    let pid = plan.procs[idx].pid();
    // Only the restorer may hold "go" write ends, so that its death reads as end of file here.
    // (Read ends of other processes stay until our children, who need theirs, are forked.)
    for &(_, w) in &plan.go {
        sysfd::close(w);
    }
    sysfd::close(plan.report.0);
    let mut report_fd = plan.report.1;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        become_task(plan, idx, &mut report_fd)
    }));
    let msg = match r {
        Ok(Ok(())) => {
            sysfd::close(report_fd);
            match &plan.procs[idx] {
                Proc::Zombie { exit_code, .. } => die_like(*exit_code),
                Proc::Alive(_) => crate::sys::process::park_forever(),
            }
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "panic while restoring".to_owned(),
    };
    report(report_fd, pid, REPORT_ERROR, msg.as_bytes());
    crate::sys::process::exit_now(1)
}

/// Ends this process the way the zombie it stands for ended: exit status or signal.
fn die_like(wait_status: u32) -> ! {
    let sig = (wait_status & 0x7f) as i32;
    if sig != 0 {
        // No core file for a death that already happened.
        let _ = crate::sys::process::set_rlimit(libc::RLIMIT_CORE, 0, 0);
        let _ = crate::sys::signal::die_by(sig);
    }
    crate::sys::process::exit_now(((wait_status >> 8) & 0xff) as i32)
}

fn wait_go(go: RawFd) -> Result<()> {
    let mut b = [0u8; 1];
    match nix::unistd::read(sysfd::borrow(go), &mut b) {
        Ok(1) => Ok(()),
        _ => Err(Error::InvalidOptions("the restorer went away".into())),
    }
}

fn become_task(plan: &Plan, idx: usize, report_fd: &mut RawFd) -> Result<()> {
    let p = &plan.procs[idx];
    let e = p.pstree();
    let pid = p.pid();
    let go = plan.go[idx].0;
    // A session is created by its leader before anyone is forked into it.
    if e.sid as pid_t == pid {
        nix::unistd::setsid().map_err(|e| Error::sys("setsid", e))?;
    } else if e.pgid as pid_t == pid {
        nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))
            .map_err(|e| Error::sys("setpgid", e))?;
    }
    // Our pty as controlling terminal (or its foreground group: ours), before our children
    // inherit the session.
    plan.files
        .ttys()
        .take_back(pid, e.sid as pid_t, e.pgid as pid_t)?;
    // Memory we share with our parent, made ours before our children inherit it in turn; and
    // the build areas nobody below us needs, dropped so that forks stay cheap.
    if let Proc::Alive(task) = p {
        patch_inherited(plan, idx, task)?;
    }
    drop_foreign_builds(plan, idx)?;
    for &c in &plan.children[idx] {
        match fork_with_pid(Some(plan.procs[c].pid()), 0)? {
            Forked::Child => run_task(plan, c),
            Forked::Parent(_) => {}
        }
    }
    for (i, &(r, _)) in plan.go.iter().enumerate() {
        if i != idx {
            sysfd::close(r);
        }
    }
    report(*report_fd, pid, REPORT_CREATED, &[]);
    wait_go(go)?;
    // Every process exists now, so every process group does: join ours.
    if e.pgid as pid_t != pid && nix::unistd::getpgrp().as_raw() != e.pgid as pid_t {
        let leader_outside = !plan.procs.iter().any(|q| q.pid() == e.pgid as pid_t);
        if !leader_outside {
            nix::unistd::setpgid(
                nix::unistd::Pid::from_raw(0),
                nix::unistd::Pid::from_raw(e.pgid as pid_t),
            )
            .map_err(|err| Error::sys(format!("join process group {}", e.pgid), err))?;
        }
    }
    // Our zombie children have died by now (they only wait for "go" too): their SIGCHLD was
    // delivered long ago in the original tree, so it must not be pending here.
    let zombies: Vec<pid_t> = plan.children[idx]
        .iter()
        .filter(|&&c| matches!(plan.procs[c], Proc::Zombie { .. }))
        .map(|&c| plan.procs[c].pid())
        .collect();
    if !zombies.is_empty() {
        for z in &zombies {
            crate::sys::process::wait_exited_nowait(*z)?;
        }
        crate::sys::signal::discard_pending(libc::SIGCHLD)?;
    }
    let Proc::Alive(task) = p else { return Ok(()) };
    let layout = plan.layouts[idx]
        .as_ref()
        .expect("live tasks have a layout");
    build_self(task, &plan.files, layout, &plan.pool, go, report_fd)
}

fn patch_inherited(plan: &Plan, idx: usize, task: &TaskImage) -> Result<()> {
    let inherited: Vec<bool> = plan.inherit[idx].iter().map(Option::is_some).collect();
    if !inherited.iter().any(|&x| x) {
        return Ok(());
    }
    let Some(p) = plan.parent[idx] else {
        return Ok(());
    };
    let Proc::Alive(parent) = &plan.procs[p] else {
        return Ok(());
    };
    let layout = plan.layouts[idx].as_ref().expect("alive");
    mem::apply_inherited(
        &task.mm.vmas,
        layout,
        &task.pagemap,
        &parent.mm.vmas,
        &parent.pagemap,
        &task.pages,
        &inherited,
    )?;
    Ok(())
}

/// Unmaps the temporary VMAs of tasks that are neither us nor below us (we inherited all of
/// them from the restorer).
fn drop_foreign_builds(plan: &Plan, idx: usize) -> Result<()> {
    let mut mine: Vec<usize> = vec![idx];
    let mut i = 0;
    while i < mine.len() {
        mine.extend(plan.children[mine[i]].iter().copied());
        i += 1;
    }
    let needed: Vec<(u64, u64)> = mine
        .iter()
        .filter_map(|&t| match (&plan.procs[t], &plan.layouts[t]) {
            (Proc::Alive(task), Some(l)) => Some(l.temps.iter().map(move |&(v, at)| {
                let vma = &task.mm.vmas[v];
                (at, at + (vma.end - vma.start))
            })),
            _ => None,
        })
        .flatten()
        .collect();
    for (t, l) in plan.layouts.iter().enumerate() {
        let (Some(l), Proc::Alive(task)) = (l, &plan.procs[t]) else {
            continue;
        };
        if mine.contains(&t) {
            continue;
        }
        for &(v, at) in &l.temps {
            let vma = &task.mm.vmas[v];
            let r = (at, at + (vma.end - vma.start));
            if !needed.iter().any(|n| n.0 < r.1 && r.0 < n.1) {
                // Replaced by an empty reservation, so that nothing else lands there.
                crate::sys::mm::mmap_fixed(
                    r.0,
                    r.1 - r.0,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    None,
                    0,
                )?;
            }
        }
    }
    Ok(())
}

fn build_self(
    task: &TaskImage,
    files: &FileImages,
    layout: &Layout,
    pool: &crate::files::Pool,
    go: RawFd,
    report_fd: &mut RawFd,
) -> Result<()> {
    let exe = files.open_path(task.mm.exe_file_id, libc::O_RDONLY)?;
    build_ctrl(layout)?;

    let mut keep = [*report_fd, exe.into_raw_fd(), go];
    let r = crate::files::install_from_pool(&task.fdinfo, pool, files, &mut keep);
    *report_fd = keep[0];
    r?;
    let exe_fd = keep[1];
    sysfd::close(keep[2]);

    let cwd = files.reg(task.fs.cwd_id)?.name.clone();
    let root = files.reg(task.fs.root_id)?.name.clone();
    if root != "/" {
        nix::unistd::chroot(root.as_str()).map_err(|e| Error::sys(format!("chroot {root}"), e))?;
    }
    nix::unistd::chdir(cwd.as_str()).map_err(|e| Error::sys(format!("chdir {cwd}"), e))?;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(
        task.fs.umask.unwrap_or(0o22),
    ));

    let tc = task.tc();
    if let Some(rl) = &tc.rlimits {
        for (res, l) in rl.rlimits.iter().enumerate() {
            crate::sys::process::set_rlimit(res as u32, l.cur, l.max)?;
        }
    }
    signals::restore_actions(&tc.sigactions)?;
    signals::restore_pending(task.pid, task.pid, tc.signals_s.as_ref(), true)?;
    if let Some(th) = task.thread_core() {
        signals::restore_pending(task.pid, task.pid, th.signals_p.as_ref(), false)?;
    }
    if tc.child_subreaper == Some(true) {
        crate::sys::process::prctl(libc::PR_SET_CHILD_SUBREAPER, 1)?;
    }
    if task.mm.thp_disabled == Some(true) {
        crate::sys::process::prctl(libc::PR_SET_THP_DISABLE, 1)?;
    }
    let comm = task
        .thread_core()
        .and_then(|t| t.comm.clone())
        .unwrap_or_else(|| tc.comm.clone());
    crate::sys::process::set_name(&comm)?;
    let xsave = &task.core.thread_info.as_ref().expect("checked").fpregs;
    if xsave.xsave_area.as_deref().is_some_and(regs::uses_amx) {
        crate::sys::cpu::enable_amx()?;
    }

    // The other threads, parked until the tracer gives them their registers.
    for (i, (tid, core)) in task.threads.iter().enumerate() {
        let ti = core.thread_info.as_ref().expect("checked on load");
        if ti.fpregs.xsave_area.as_deref().is_some_and(regs::uses_amx) {
            return Err(Error::InvalidOptions(format!(
                "thread {tid} has AMX state in use: not supported yet"
            )));
        }
        let stack = layout.stacks + i as u64 * mem::THREAD_STACK;
        crate::sys::mm::mmap_fixed(
            stack,
            mem::THREAD_STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            None,
            0,
        )?;
        crate::sys::clone::spawn_parked_thread(*tid, stack, mem::THREAD_STACK)?;
        // Its pending signals are queued by the tracer from inside it: only a thread may queue
        // a signal with a kernel or tkill si_code to itself.
        let th = core.thread_core.as_ref().expect("checked on load");
        if let Some(comm) = &th.comm {
            std::fs::write(format!("/proc/self/task/{tid}/comm"), comm)
                .map_err(|e| Error::io(format!("set the name of thread {tid}"), e))?;
        }
    }

    report(*report_fd, task.pid, REPORT_READY, &exe_fd.to_ne_bytes());
    Ok(())
}

/// Maps the control block: a page with `syscall; int3` for the tracer, and its data area.
fn build_ctrl(layout: &Layout) -> Result<()> {
    use crate::sys::mm;
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let anon = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    mm::mmap_fixed(layout.ctrl, PAGE_SIZE, rw, anon, None, 0)?;
    mm::write_to(
        layout.ctrl,
        &[0x0f, 0x05, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc],
    );
    mm::mprotect(layout.ctrl, PAGE_SIZE, libc::PROT_READ | libc::PROT_EXEC)?;
    mm::mmap_fixed(layout.ctrl_data(), mem::CTRL_DATA_SIZE, rw, anon, None, 0)?;
    Ok(())
}
