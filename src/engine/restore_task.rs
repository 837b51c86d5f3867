//! The restored task's own side of a restore: everything it can do as an ordinary process
//! before the tracer takes over.

use std::os::fd::{IntoRawFd, RawFd};

use libc::pid_t;

use crate::engine::restore::{
    report, Plan, Proc, TaskImage, REPORT_CREATED, REPORT_ERROR, REPORT_READY,
};
use crate::error::{Error, Result};
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
            // A follower's report fd is the top of its fd table's, which still needs it.
            if !plan.shares_files_with_parent(idx) {
                sysfd::close(report_fd);
            }
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

/// Runs in helper `h` of the plan (see `Helper`), right after its fork (by a task, or by the
/// restorer for the root's session). Never returns.
pub fn run_helper(plan: &Plan, h: usize) -> ! {
    log::set_max_level(log::LevelFilter::Off);
    std::panic::set_hook(Box::new(|_| {}));
    let _ = crate::sys::signal::block_all();
    for &(_, w) in &plan.go {
        sysfd::close(w);
    }
    sysfd::close(plan.report.0);
    let helper = &plan.helpers[h];
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| become_helper(plan, h)));
    let msg = match r {
        Ok(Ok(())) => crate::sys::process::exit_now(0),
        Ok(Err(e)) => format!("helper for a gone session or group leader: {e}"),
        Err(_) => "panic in a helper".to_owned(),
    };
    report(plan.report.1, helper.pid, REPORT_ERROR, msg.as_bytes());
    crate::sys::process::exit_now(1)
}

fn become_helper(plan: &Plan, h: usize) -> Result<()> {
    let helper = &plan.helpers[h];
    let go = plan.go[plan.procs.len() + h].0;
    if helper.session {
        nix::unistd::setsid().map_err(|e| Error::sys("setsid", e))?;
    } else {
        nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))
            .map_err(|e| Error::sys("setpgid", e))?;
    }
    for &c in &helper.adopted {
        // Our parent's child, born in our session.
        let mut flags = libc::CLONE_PARENT as u64;
        if shares_fs_with_parent(plan, c) {
            flags |= libc::CLONE_FS as u64;
        }
        match fork_with_pid(Some(plan.procs[c].pid()), flags)? {
            Forked::Child => run_task(plan, c),
            Forked::Parent(_) => {}
        }
    }
    for &(r, _) in &plan.go {
        if r != go {
            sysfd::close(r);
        }
    }
    report(plan.report.1, helper.pid, REPORT_CREATED, &host_pid(plan));
    wait_go(go)?;
    // Every process exists now; the members of our group join it right after "go". Once they
    // all have, the group lives on without us. (A member that is gone means the restore failed.)
    let members: Vec<pid_t> = plan
        .procs
        .iter()
        .filter(|p| p.pstree().pgid as pid_t == helper.pid)
        .map(|p| p.pid())
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while members.iter().any(|&m| {
        nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(m)))
            .is_ok_and(|g| g.as_raw() != helper.pid)
    }) {
        if std::time::Instant::now() > deadline {
            return Err(Error::InvalidOptions(format!(
                "the members of process group {} did not join it",
                helper.pid
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    Ok(())
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

/// Our pid in the restorer's namespace, for its ptrace and /proc accesses: sent with
/// REPORT_CREATED when the tree has a pid namespace of its own (see pidns).
fn host_pid(plan: &Plan) -> Vec<u8> {
    match crate::pidns::own_host_pid().filter(|_| plan.new_pidns) {
        Some(p) => p.to_ne_bytes().to_vec(),
        None => Vec::new(),
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
    // Children born into a session whose leader is gone are forked by its helper.
    for &c in plan.children[idx]
        .iter()
        .filter(|&&c| plan.adopter(c).is_none())
    {
        let mut flags = 0;
        if shares_fs_with_parent(plan, c) {
            flags |= libc::CLONE_FS as u64;
        }
        if plan.shares_files_with_parent(c) {
            flags |= libc::CLONE_FILES as u64;
        }
        match fork_with_pid(Some(plan.procs[c].pid()), flags)? {
            Forked::Child => run_task(plan, c),
            Forked::Parent(_) => {}
        }
    }
    for (h, helper) in plan.helpers.iter().enumerate() {
        if helper.parent != Some(idx) {
            continue;
        }
        // The helper's adopted children get our cwd/root/umask through it when they share them.
        let flags = if helper
            .adopted
            .iter()
            .any(|&c| shares_fs_with_parent(plan, c))
        {
            libc::CLONE_FS as u64
        } else {
            0
        };
        match fork_with_pid(Some(helper.pid), flags)? {
            Forked::Child => run_helper(plan, h),
            Forked::Parent(_) => {}
        }
    }
    // In an fd table shared with other processes, the others' "go" ends stay until the top of
    // the sharers replaces the table (one of us closing them could take them from a process
    // not forked yet).
    if !in_shared_table(plan, idx) {
        for (i, &(r, _)) in plan.go.iter().enumerate() {
            if i != idx {
                sysfd::close(r);
            }
        }
    }
    report(*report_fd, pid, REPORT_CREATED, &host_pid(plan));
    wait_go(go)?;
    // Every process exists now, so every process group does: join ours.
    if e.pgid as pid_t != pid && nix::unistd::getpgrp().as_raw() != e.pgid as pid_t {
        let leader_outside = !plan.procs.iter().any(|q| q.pid() == e.pgid as pid_t)
            && !plan.helpers.iter().any(|h| h.pid == e.pgid as pid_t);
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
    for z in &zombies {
        crate::sys::process::wait_exited_nowait(*z)?;
    }
    // Our helpers exit once their groups are complete; nothing of them may remain.
    let helpers: Vec<pid_t> = plan
        .helpers
        .iter()
        .filter(|h| h.parent == Some(idx))
        .map(|h| h.pid)
        .collect();
    for &h in &helpers {
        nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(h), None)
            .map_err(|err| Error::sys(format!("reap helper {h}"), err))?;
    }
    if !zombies.is_empty() || !helpers.is_empty() {
        crate::sys::signal::discard_pending(libc::SIGCHLD)?;
    }
    let Proc::Alive(task) = p else { return Ok(()) };
    let layout = plan.layouts[idx]
        .as_ref()
        .expect("live tasks have a layout");
    build_self(plan, idx, task, layout, go, report_fd)
}

/// The part process `idx` takes in building its fd table.
fn table_role(plan: &Plan, idx: usize) -> Table {
    if plan.shares_files_with_parent(idx) {
        return Table::Follower;
    }
    Table::Top(
        plan.table_followers(idx)
            .iter()
            .filter_map(|&f| match &plan.procs[f] {
                Proc::Alive(t) => Some(t.mm.exe_file_id),
                Proc::Zombie { .. } => None,
            })
            .collect(),
    )
}

/// Whether process `idx` shares its fd table with other processes of the tree.
fn in_shared_table(plan: &Plan, idx: usize) -> bool {
    plan.shares_files_with_parent(idx) || !plan.table_followers(idx).is_empty()
}

/// The part a process takes in building its fd table.
enum Table {
    /// The table is its own, or it is the top of the processes sharing it (CLONE_FILES): it
    /// installs the table, and opens the executable for each of the others (the exe file ids
    /// here, in `Plan::table_followers` order), whose fds it reports with its own.
    Top(Vec<u32>),
    /// It shares its parent's table: it leaves the table alone and reports ready before the top
    /// of the sharers starts (the restorer holds the top's "go" until then).
    Follower,
}

/// Whether process `idx` shares cwd, root and umask with its parent (CLONE_FS): it is forked
/// with CLONE_FS and leaves them to the parent.
fn shares_fs_with_parent(plan: &Plan, idx: usize) -> bool {
    let (Some(p), Proc::Alive(t)) = (plan.parent[idx], &plan.procs[idx]) else {
        return false;
    };
    matches!(&plan.procs[p], Proc::Alive(pt) if pt.ids.fs_id == t.ids.fs_id)
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

/// Process `idx` (`task`) builds itself: control block, fd table, cwd, limits, signals, threads;
/// then reports ready.
fn build_self(
    plan: &Plan,
    idx: usize,
    task: &TaskImage,
    layout: &Layout,
    go: RawFd,
    report_fd: &mut RawFd,
) -> Result<()> {
    let files = &plan.files;
    let pool = &plan.pool;
    let fs_from_parent = shares_fs_with_parent(plan, idx);
    let table = table_role(plan, idx);
    build_ctrl(layout)?;
    // The executable of every process of the table (ours first), for the tracer.
    let mut exe_fds: Vec<RawFd> = Vec::new();
    if let Table::Top(followers) = &table {
        let mut keep = vec![*report_fd, go];
        for &id in std::iter::once(&task.mm.exe_file_id).chain(followers) {
            keep.push(files.open_path(id, libc::O_RDONLY)?.into_raw_fd());
        }
        let sharers: Vec<pid_t> = plan
            .table_followers(idx)
            .iter()
            .map(|&f| plan.procs[f].pid())
            .collect();
        let r = crate::files::install_from_pool(&task.fdinfo, pool, files, &mut keep, &sharers);
        *report_fd = keep[0];
        r?;
        sysfd::close(keep[1]);
        exe_fds.extend_from_slice(&keep[2..]);
    }

    // With CLONE_FS they are the parent's, which sets them.
    if !fs_from_parent {
        let cwd = files.reg(task.fs.cwd_id)?.name.clone();
        let root = files.reg(task.fs.root_id)?.name.clone();
        if root != "/" {
            nix::unistd::chroot(root.as_str())
                .map_err(|e| Error::sys(format!("chroot {root}"), e))?;
        }
        nix::unistd::chdir(cwd.as_str()).map_err(|e| Error::sys(format!("chdir {cwd}"), e))?;
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(
            task.fs.umask.unwrap_or(0o22),
        ));
    }

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
            let proc_tid = match plan.new_pidns {
                true => crate::pidns::own_thread_in_proc(*tid),
                false => *tid,
            };
            std::fs::write(format!("/proc/self/task/{proc_tid}/comm"), comm)
                .map_err(|e| Error::io(format!("set the name of thread {tid}"), e))?;
        }
    }

    // A follower's executable is opened by the top of its table, which reports it.
    let body: Vec<u8> = if exe_fds.is_empty() {
        (-1 as RawFd).to_ne_bytes().to_vec()
    } else {
        exe_fds.iter().flat_map(|fd| fd.to_ne_bytes()).collect()
    };
    report(*report_fd, task.pid, REPORT_READY, &body);
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
