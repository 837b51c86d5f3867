//! `criu dump`: freeze, collect every resource of the task, write the images, then kill the
//! task or let it run on.

use std::time::{Duration, Instant};

use libc::pid_t;

use crate::creds;
use crate::engine::iteration::{link_parent, remove_created, ParentImages, TaskTracking};
use crate::engine::{DumpOutcome, Notify};
use crate::error::{Error, Result};
use crate::files::{self, FileTable};
use crate::freeze::{Frozen, FrozenTask, Member, Zombie};
use crate::images::{ImageDir, Kind, IMG_VERSION, IMG_VERSION_COW};
use crate::mem::{self, Tracking};
use crate::options::Options;
use crate::pb;
use crate::pidns::PidMap;
use crate::procfs;
use crate::regs;
use crate::remote::{Remote, Resume};
use crate::signals;
use crate::sys::inject::{find_syscall_insn, restart_adjusted, Injector};
use crate::sys::ptrace::Tracee;
use crate::sys::task as systask;
use crate::timers;

pub const TASK_ALIVE: u32 = 1;
pub const TASK_DEAD: u32 = 2;
pub const TASK_STOPPED: u32 = 3;

/// Everything one process contributes to the images, gathered while it is frozen.
struct TaskImages {
    pid: pid_t,
    pstree: pb::PstreeEntry,
    cores: Vec<(pid_t, pb::CoreEntry)>,
    ids: pb::TaskKobjIdsEntry,
    mm: pb::MmEntry,
    pages: mem::PagePlan,
    pages_id: u32,
    fs: pb::FsEntry,
    fdinfo: Vec<pb::FdinfoEntry>,
}

#[derive(Default)]
pub(crate) struct Timing {
    pub freezing: Duration,
    pub frozen: Duration,
    pub memdump: Duration,
    pub memwrite: Duration,
    pub stats: mem::PageStats,
    pub shpages_written: u64,
}

fn prctl_get(remote: &Remote, what: &str, option: i32) -> Result<u64> {
    remote.syscall(what, libc::SYS_prctl, [option as u64, 0, 0, 0, 0, 0])
}

/// prctl(option, &out): the kernel writes the answer into our scratch page.
fn prctl_get_ptr(remote: &Remote, what: &str, option: i32, size: usize) -> Result<u64> {
    remote.write(0, &[0u8; 8])?;
    remote.syscall(
        what,
        libc::SYS_prctl,
        [option as u64, remote.addr(0), 0, 0, 0, 0],
    )?;
    let b = remote.read(0, size)?;
    let mut w = [0u8; 8];
    w[..size].copy_from_slice(&b);
    Ok(u64::from_ne_bytes(w))
}

/// The seccomp filters of one thread, appended to `filters` in CRIU's layout (newest first, each
/// older filter's `prev` naming the one written before it); returns the index the thread points
/// at (its oldest filter).
fn dump_seccomp(t: &Tracee, filters: &mut Vec<pb::SeccompFilter>) -> Result<Option<u32>> {
    let mut chain = Vec::new();
    let mut idx = 0;
    while let Some(insns) = t.seccomp_filter(idx)? {
        let flags = t.seccomp_filter_flags(idx).unwrap_or(0);
        chain.push((insns, flags));
        idx += 1;
    }
    if chain.is_empty() {
        return Ok(None);
    }
    let base = filters.len() as u32;
    for (i, (insns, flags)) in chain.into_iter().enumerate() {
        filters.push(pb::SeccompFilter {
            filter: insns,
            prev: (i > 0).then(|| base + i as u32 - 1),
            flags: (flags != 0).then_some(flags as u32),
        });
    }
    Ok(Some(filters.len() as u32 - 1))
}

/// What only a syscall run inside a thread tells.
struct ThreadQueries {
    pdeath: u32,
    tid_addr: u64,
    sas: pb::ThreadSasEntry,
    secbits: u32,
}

fn query_thread(remote: &Remote) -> Result<ThreadQueries> {
    let pdeath = prctl_get_ptr(remote, "prctl(PR_GET_PDEATHSIG)", libc::PR_GET_PDEATHSIG, 4)?;
    let tid_addr = prctl_get_ptr(
        remote,
        "prctl(PR_GET_TID_ADDRESS)",
        libc::PR_GET_TID_ADDRESS,
        8,
    )?;
    let secbits = prctl_get(remote, "prctl(PR_GET_SECUREBITS)", libc::PR_GET_SECUREBITS)?;
    remote.syscall(
        "sigaltstack(query)",
        libc::SYS_sigaltstack,
        [0, remote.addr(0), 0, 0, 0, 0],
    )?;
    let ss = remote.read(0, 24)?;
    Ok(ThreadQueries {
        pdeath: pdeath as u32,
        tid_addr,
        secbits: secbits as u32,
        sas: pb::ThreadSasEntry {
            ss_sp: u64::from_ne_bytes(ss[0..8].try_into().unwrap()),
            ss_flags: u32::from_ne_bytes(ss[8..12].try_into().unwrap()),
            ss_size: u64::from_ne_bytes(ss[16..24].try_into().unwrap()),
        },
    })
}

/// What only a syscall run inside the process tells (process-wide state).
struct ProcessQueries {
    sigactions: Vec<pb::SaEntry>,
    timers: pb::TaskTimersEntry,
    rlimits: pb::TaskRlimitsEntry,
    dumpable: u64,
    thp_disabled: bool,
    subreaper: bool,
    brk: u64,
}

fn query_process(remote: &Remote) -> Result<ProcessQueries> {
    let sigactions = signals::dump_actions(remote)?;
    log::debug!("pid {}: signal actions read", remote.pid());
    Ok(ProcessQueries {
        sigactions,
        timers: timers::dump(remote)?,
        rlimits: creds::dump_rlimits(remote)?,
        dumpable: prctl_get(remote, "prctl(PR_GET_DUMPABLE)", libc::PR_GET_DUMPABLE)?,
        thp_disabled: prctl_get(
            remote,
            "prctl(PR_GET_THP_DISABLE)",
            libc::PR_GET_THP_DISABLE,
        )? != 0,
        subreaper: prctl_get_ptr(
            remote,
            "prctl(PR_GET_CHILD_SUBREAPER)",
            libc::PR_GET_CHILD_SUBREAPER,
            4,
        )? != 0,
        brk: remote.syscall("brk(0)", libc::SYS_brk, [0; 6])?,
    })
}

/// Runs the per-thread queries in every thread, and the process-wide ones in the leader, with
/// one scratch area. Each thread gets its registers and signal mask back as soon as we are done
/// with it; while we run its syscalls, the way back in the scratch area (remote::Resume) would
/// put it back should we die.
fn query_all(
    task: &mut FrozenTask,
    syscall_ip: u64,
    in_process: &mut dyn FnMut(&Remote) -> Result<()>,
) -> Result<(ProcessQueries, Vec<ThreadQueries>)> {
    let pid = task.pid;
    let leader = task.leader();
    let xstate = leader.tracee.get_xstate()?;
    let resume = Resume {
        regs: restart_adjusted(&leader.regs),
        sigmask: leader.sigmask,
        xstate: &xstate,
    };
    let started = Remote::start(
        Injector::new(&leader.tracee, leader.regs, syscall_ip),
        pid,
        &resume,
    );
    let remote = match started {
        Ok(r) => r,
        Err(e) => {
            leader.tracee.set_regs(&resume.regs)?;
            leader.tracee.set_sigmask(leader.sigmask)?;
            return Err(e);
        }
    };
    let scratch = remote.scratch_range().0;
    log::debug!("pid {pid}: scratch area mapped");
    let gathered = query_process(&remote)
        .and_then(|p| Ok((p, query_thread(&remote)?)))
        .and_then(|g| in_process(&remote).map(|_| g));
    // Back as it was now: the scratch frame is about to be rewritten for the other threads.
    leader.tracee.set_regs(&resume.regs)?;
    leader.tracee.set_sigmask(leader.sigmask)?;
    let gathered = gathered.and_then(|(process, first)| {
        let mut threads = vec![first];
        for th in task.threads.iter().skip(1) {
            let xstate = th.tracee.get_xstate()?;
            let resume = Resume {
                regs: restart_adjusted(&th.regs),
                sigmask: th.sigmask,
                xstate: &xstate,
            };
            let q = Remote::borrowed(
                Injector::new(&th.tracee, th.regs, syscall_ip),
                pid,
                scratch,
                &resume,
            )
            .and_then(|r| {
                let q = query_thread(&r)?;
                Ok((q, r.deferred_signals()))
            });
            th.tracee.set_regs(&resume.regs)?;
            th.tracee.set_sigmask(th.sigmask)?;
            let (q, deferred) = q?;
            if !deferred.is_empty() {
                return Err(Error::task(
                    th.tracee.tid,
                    format!("signals {deferred:?} arrived while frozen; retry the dump"),
                ));
            }
            threads.push(q);
        }
        Ok((process, threads))
    });
    log::debug!("pid {pid}: queries done");
    let deferred = remote.finish();
    let leader = task.leader();
    leader.tracee.set_regs(&restart_adjusted(&leader.regs))?;
    leader.tracee.set_sigmask(leader.sigmask)?;
    task.threads[0]
        .deferred
        .extend(deferred.as_deref().unwrap_or(&[]));
    deferred?;
    gathered
}

/// One thread's core image.
#[allow(clippy::too_many_arguments)]
fn thread_core(
    pid: pid_t,
    th: &crate::freeze::FrozenThread,
    q: &ThreadQueries,
    seccomp_filters: &mut Vec<pb::SeccompFilter>,
) -> Result<(pb::ThreadInfoX86, pb::ThreadCoreEntry)> {
    let tid = th.tracee.tid;
    let t = &th.tracee;
    let status = procfs::status(pid, Some(tid))?;
    let mut creds = creds::from_status(&status);
    creds.secbits = q.secbits;
    let rseq = t.rseq_config()?;
    let (policy, prio, nice) = systask::sched(tid)?;
    let (rla, rla_len) = systask::robust_list(tid)?;
    let mut gp = restart_adjusted(&th.regs);
    gp.orig_rax = th.regs.orig_rax;
    let xstate = t.get_xstate()?;
    let comm = procfs::read_trimmed(pid, &format!("task/{tid}/comm"))?;
    let info = pb::ThreadInfoX86 {
        clear_tid_addr: q.tid_addr,
        gpregs: regs::gpregs_to_image(&gp),
        fpregs: regs::fpregs_to_image(&xstate)?,
        tls: regs::tls_to_image(t)?,
    };
    let core = pb::ThreadCoreEntry {
        futex_rla: rla,
        futex_rla_len: rla_len as u32,
        sched_nice: Some(nice),
        sched_policy: Some(policy),
        sched_prio: Some(prio),
        blk_sigset: Some(th.sigmask),
        sas: Some(q.sas),
        pdeath_sig: Some(q.pdeath),
        signals_p: signals::dump_pending(t, false)?,
        creds: Some(creds),
        seccomp_mode: Some(status.seccomp as i32),
        seccomp_filter: dump_seccomp(t, seccomp_filters)?,
        comm: Some(comm),
        rseq_entry: (rseq.ptr != 0).then_some(pb::RseqEntry {
            rseq_abi_pointer: rseq.ptr,
            rseq_abi_size: rseq.size,
            signature: rseq.signature,
            rseq_cs_pointer: None,
        }),
        ..Default::default()
    };
    Ok((info, core))
}

/// What the tasks of a tree add to images that are written once for all of them.
#[derive(Default)]
struct TreeImages {
    /// The previous iteration's images (--prev-images-dir).
    parent: Option<ParentImages>,
    /// smaps of each task read before the freeze (see procfs::maps_hinted).
    smaps_hints: std::collections::HashMap<pid_t, Vec<procfs::MapEntry>>,
    tracking: Vec<TaskTracking>,
    /// Inodes of every memory tracker we know of (track::known_inodes).
    trackers: Vec<u64>,
    files: FileTable,
    seccomp: Vec<pb::SeccompFilter>,
    shared: Vec<mem::SharedObject>,
    timing: Timing,
    /// VMAs of the tasks dumped so far: a child's memory is compared with its parent's.
    vmas_by_pid: std::collections::HashMap<pid_t, Vec<pb::VmaEntry>>,
    /// `--lazy-pages`: the pages left on the source, served after the dump.
    lazy: Vec<crate::pageserver::lazy::LazyTask>,
}

fn dump_task(
    task: &mut FrozenTask,
    image_pid: pid_t,
    opts: &Options,
    dir: &ImageDir,
    tree: &mut TreeImages,
    pages_id: u32,
    sink: &mut dyn mem::PageSink,
) -> Result<TaskImages> {
    let TreeImages {
        parent: parent_images,
        smaps_hints,
        tracking,
        trackers,
        files,
        seccomp: seccomp_filters,
        shared,
        timing,
        vmas_by_pid,
        lazy: _,
    } = tree;
    let pid = task.pid;
    let stat = procfs::stat(pid, None)?;
    // Read before our scratch page exists, so that it can never merge into the task's VMAs.
    let maps = match smaps_hints.get(&pid) {
        Some(hint) => procfs::maps_hinted(pid, hint)?,
        None => procfs::maps(pid)?,
    };
    let vdso = maps
        .iter()
        .find(|m| m.name == "[vdso]")
        .map(|m| (m.start, m.end));
    let syscall_ip = find_syscall_insn(pid, &task.leader().regs, vdso)?;
    // Tracking goes on after this dump only for a task left running with --track-mem; a task
    // left running without it gets its tracker taken out.
    let keep_tracking = opts.track_mem && opts.leave_running;
    tracking.push(TaskTracking::find(
        pid,
        image_pid,
        stat.start_time,
        parent_images.as_ref(),
    )?);
    let tt = tracking.last_mut().expect("just pushed");
    // Lost trackers of ours are skipped like known ones (and closed if the task lives on).
    let lost = crate::track::orphans_in_task(pid, trackers);
    if !lost.is_empty() {
        log::info!("pid {pid}: {} lost memory tracker(s) left out", lost.len());
        trackers.extend(lost);
    }
    if tt.held.is_some() && !sink.has_parent(image_pid)? {
        log::info!("pid {pid}: the destination holds no earlier pages: copying all memory");
        tt.held = None;
    }
    let (process, threads) = query_all(task, syscall_ip, &mut |remote| {
        if keep_tracking {
            tt.ensure(remote)
        } else if opts.leave_running {
            // Our copy of the task's own tracker keeps its bits readable for this dump.
            crate::track::close_all_in_task(remote, trackers).map(|_| ())
        } else {
            Ok(())
        }
    })?;
    log::debug!("pid {pid}: queried");
    if let Some(t) = tt.tracker.as_ref().filter(|_| tt.created) {
        trackers.push(t.ino());
    }

    // Files first: they are the usual reason to refuse a task, before any page is copied.
    let fdinfo = files::dump_fds(
        pid,
        files,
        opts.shell_job,
        opts.rpc_server_socket_ino,
        trackers,
    )?;

    log::debug!("pid {pid}: files dumped");
    let vmas = mem::collect_vmas(pid, &maps, (0, 0), stat.start_stack, files, shared)?;
    let exe = procfs::readlink(&format!("/proc/{pid}/exe"))?
        .to_string_lossy()
        .into_owned();
    if exe.ends_with(" (deleted)") {
        return Err(Error::unsupported(
            pid,
            format!("executable {exe} was deleted"),
        ));
    }
    let exe_file_id = files.add_path(&exe, libc::O_RDONLY as u32)?;
    // The pages are only planned here; they are copied once every task is planned (see
    // mem::PagePlan).
    let parent = vmas_by_pid
        .get(&task.ppid)
        .map(|v| (task.ppid, v.as_slice()));
    if keep_tracking {
        if let Some(t) = tt.tracker.as_mut() {
            t.invalidate()?;
        }
    }
    let scan = mem::scan_pages(
        pid,
        &vmas,
        tt.tracker
            .as_ref()
            .map(|tracker| Tracking {
                tracker,
                reset: keep_tracking,
                live: false,
                registration: None,
            })
            .as_ref(),
        tt.held.as_deref(),
    )?;
    log::debug!("pid {pid}: memory scanned");
    let page_plan = mem::plan_pages(pid, &vmas, scan, parent, tt.held.as_deref(), false)?;
    log::debug!("pid {pid}: memory planned");
    timing.stats.scanned += page_plan.stats.scanned;
    timing.stats.written += page_plan.stats.written;
    timing.stats.cow += page_plan.stats.cow;
    timing.stats.skipped_parent += page_plan.stats.skipped_parent;
    let _ = dir;

    let mm = pb::MmEntry {
        mm_start_code: stat.start_code,
        mm_end_code: stat.end_code,
        mm_start_data: stat.start_data,
        mm_end_data: stat.end_data,
        mm_start_stack: stat.start_stack,
        mm_start_brk: stat.start_brk,
        mm_brk: process.brk,
        mm_arg_start: stat.arg_start,
        mm_arg_end: stat.arg_end,
        mm_env_start: stat.env_start,
        mm_env_end: stat.env_end,
        exe_file_id,
        mm_saved_auxv: procfs::auxv(pid)?,
        vmas,
        dumpable: Some(process.dumpable as i32),
        aios: Vec::new(),
        thp_disabled: Some(process.thp_disabled),
    };

    let status = procfs::status(pid, None)?;
    let cwd = procfs::readlink(&format!("/proc/{pid}/cwd"))?
        .to_string_lossy()
        .into_owned();
    let root = procfs::readlink(&format!("/proc/{pid}/root"))?
        .to_string_lossy()
        .into_owned();
    let fs = pb::FsEntry {
        cwd_id: files.add_path(&cwd, (libc::O_RDONLY | libc::O_DIRECTORY) as u32)?,
        root_id: files.add_path(&root, (libc::O_RDONLY | libc::O_DIRECTORY) as u32)?,
        umask: Some(status.umask),
    };

    let mut cores = Vec::with_capacity(task.threads.len());
    for (th, q) in task.threads.iter().zip(&threads) {
        let (info, core) = thread_core(pid, th, q, seccomp_filters)?;
        cores.push((th.tracee.tid, info, core));
    }
    let leader = task.leader();
    let loginuid = procfs::read_trimmed(pid, "loginuid")
        .ok()
        .and_then(|s| s.parse::<u32>().ok());
    let oom_score_adj = procfs::read_trimmed(pid, "oom_score_adj")
        .ok()
        .and_then(|s| s.parse::<i32>().ok());
    let tc = pb::TaskCoreEntry {
        task_state: if task.stop_signo.is_some() {
            TASK_STOPPED
        } else {
            TASK_ALIVE
        },
        exit_code: 0,
        personality: procfs::personality(pid)?,
        flags: stat.flags,
        blk_sigset: leader.sigmask,
        comm: stat.comm.clone(),
        timers: Some(process.timers),
        rlimits: Some(process.rlimits),
        signals_s: signals::dump_pending(&leader.tracee, true)?,
        loginuid,
        oom_score_adj,
        sigactions: process.sigactions,
        child_subreaper: Some(process.subreaper),
        stop_signo: task.stop_signo.map(|s| s as u32),
        ..Default::default()
    };
    let mut tc = Some(tc);
    let cores = cores
        .into_iter()
        .map(|(tid, info, core)| {
            (
                tid,
                pb::CoreEntry {
                    mtype: pb::core_entry::March::X8664 as i32,
                    thread_info: Some(info),
                    tc: tc.take(),
                    ids: None,
                    thread_core: Some(core),
                },
            )
        })
        .collect();
    Ok(TaskImages {
        pid,
        pstree: pb::PstreeEntry {
            pid: pid as u32,
            ppid: 0,
            pgid: stat.pgid as u32,
            sid: stat.sid as u32,
            threads: task.threads.iter().map(|t| t.tracee.tid as u32).collect(),
        },
        cores,
        ids: pb::TaskKobjIdsEntry {
            vm_id: 1,
            files_id: 1,
            fs_id: 1,
            sighand_id: 1,
            ..Default::default()
        },
        mm,
        pages: page_plan,
        pages_id,
        fs,
        fdinfo,
    })
}

fn write_images(dir: &ImageDir, t: &TaskImages, fdinfo_written: &mut Vec<u32>) -> Result<()> {
    for (tid, core) in &t.cores {
        dir.write_one(Kind::Core, tid, core)?;
    }
    dir.write_one(Kind::Ids, t.pid, &t.ids)?;
    dir.write_one(Kind::Mm, t.pid, &t.mm)?;
    dir.write_one(Kind::Fs, t.pid, &t.fs)?;
    // Tasks sharing a file table (CLONE_FILES) share one fdinfo image.
    if !fdinfo_written.contains(&t.ids.files_id) {
        dir.write_all(Kind::Fdinfo, t.ids.files_id, &t.fdinfo)?;
        fdinfo_written.push(t.ids.files_id);
    }
    Ok(())
}

/// The images of one task as its pid namespace sees it (see pidns): every pid in them is the
/// namespace's, and so are the names of its image files.
fn to_ns_pids(t: &mut TaskImages, pids: &PidMap) -> Result<()> {
    let host = t.pid;
    t.ids.pid_ns_id = Some(if pids.own_ns {
        crate::pidns::TREE_PID_NS_ID
    } else {
        crate::pidns::HOST_PID_NS_ID
    });
    if !pids.own_ns {
        return Ok(());
    }
    t.pid = pids.ns(host, host)?;
    let e = &mut t.pstree;
    e.pid = t.pid as u32;
    e.ppid = pids.ns(host, e.ppid as pid_t)? as u32;
    e.pgid = pids.ns(host, e.pgid as pid_t)? as u32;
    e.sid = pids.ns(host, e.sid as pid_t)? as u32;
    for tid in e.threads.iter_mut() {
        *tid = pids.ns(host, *tid as pid_t)? as u32;
    }
    for (tid, core) in t.cores.iter_mut() {
        *tid = pids.ns(host, *tid)?;
        // /proc/PID/timers names the thread a timer signals with our namespace's tid.
        let timers = core.tc.as_mut().and_then(|tc| tc.timers.as_mut());
        for timer in timers.into_iter().flat_map(|t| t.posix.iter_mut()) {
            if let Some(tid) = timer.notify_thread_id.as_mut() {
                *tid = pids.ns(host, *tid as pid_t)? as _;
            }
        }
    }
    Ok(())
}

/// The owner (F_SETOWN) of a file, whatever its kind: a pid of ours at dump.
fn fown_mut(e: &mut pb::FileEntry) -> Option<&mut pb::FownEntry> {
    if let Some(x) = e.reg.as_mut() {
        return Some(&mut x.fown);
    }
    if let Some(x) = e.pipe.as_mut() {
        return Some(&mut x.fown);
    }
    if let Some(x) = e.usk.as_mut() {
        return Some(&mut x.fown);
    }
    if let Some(x) = e.efd.as_mut() {
        return Some(&mut x.fown);
    }
    if let Some(x) = e.tty.as_mut() {
        return Some(&mut x.fown);
    }
    if let Some(x) = e.epfd.as_mut() {
        return Some(&mut x.fown);
    }
    if let Some(x) = e.sgfd.as_mut() {
        return Some(&mut x.fown);
    }
    if let Some(x) = e.tfd.as_mut() {
        return Some(&mut x.fown);
    }
    if let Some(x) = e.ify.as_mut() {
        return Some(&mut x.fown);
    }
    if let Some(x) = e.ffy.as_mut() {
        return Some(&mut x.fown);
    }
    if let Some(x) = e.pidfd.as_mut() {
        return Some(&mut x.fown);
    }
    e.memfd.as_mut().map(|x| &mut x.fown)
}

/// A zombie's core: its state, exit status and name; nothing else survives death.
fn zombie_core(z: &Zombie) -> pb::CoreEntry {
    pb::CoreEntry {
        mtype: pb::core_entry::March::X8664 as i32,
        tc: Some(pb::TaskCoreEntry {
            task_state: TASK_DEAD,
            exit_code: z.stat.exit_code as u32,
            comm: z.stat.comm.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Checks that the tree is one we can restore: sessions and process groups must have their
/// leaders inside the tree or gone (or, with --shell-job, be the shell's).
fn check_tree(frozen: &Frozen, opts: &Options) -> Result<()> {
    let mut members: Vec<(pid_t, pid_t, pid_t)> = Vec::new(); // pid, pgid, sid
    let mut ppids: Vec<pid_t> = Vec::new();
    for t in &frozen.tasks {
        let st = procfs::stat(t.pid, None)?;
        members.push((t.pid, st.pgid, st.sid));
        ppids.push(t.ppid);
    }
    for z in &frozen.zombies {
        members.push((z.pid, z.stat.pgid, z.stat.sid));
        ppids.push(z.ppid);
    }
    let inside = |p: pid_t| members.iter().any(|m| m.0 == p);
    // A leader that is gone (its pid free) is stood in for at restore by a helper process with
    // its pid (see restore.rs); one that lives outside the tree cannot be.
    let gone = |p: pid_t| !crate::sys::task::pid_in_use(p);
    let (_, root_pgid, root_sid) = members[0];
    for &(pid, pgid, sid) in &members {
        let outside_ok = opts.shell_job && sid == root_sid && (pgid == root_pgid || inside(pgid));
        if !inside(sid) && !outside_ok && !gone(sid) {
            return Err(Error::unsupported(
                pid,
                format!("session {sid} led by a process outside the dumped tree (use --shell-job for a shell job)"),
            ));
        }
        if !inside(pgid) && !outside_ok && !gone(pgid) {
            return Err(Error::unsupported(
                pid,
                format!("process group {pgid} whose leader is outside the dumped tree"),
            ));
        }
    }
    // The helper of a session whose leader is gone forks the processes born into it (those whose
    // parent is in another session) as its parent's children: they must have one parent.
    let mut born_under: std::collections::HashMap<pid_t, pid_t> = Default::default();
    for (&(pid, _, sid), &ppid) in members.iter().zip(&ppids) {
        let parent_sid = members.iter().find(|m| m.0 == ppid).map(|m| m.2);
        if sid == pid
            || inside(sid)
            || parent_sid == Some(sid)
            || (opts.shell_job && sid == root_sid)
        {
            continue;
        }
        if let Some(&other) = born_under.get(&sid).filter(|&&p| p != ppid) {
            return Err(Error::unsupported(
                pid,
                format!(
                    "session {sid}, whose leader is gone, has members born under {other} and \
                     under {ppid}: not supported"
                ),
            ));
        }
        born_under.insert(sid, ppid);
    }
    Ok(())
}

/// The kcmp-based ids of shared kernel objects: tasks with the same object get the same id.
fn assign_ids(frozen: &Frozen, images: &mut [TaskImages]) -> Result<()> {
    use crate::sys::kcmp::{same_object, KCMP_FILES, KCMP_FS, KCMP_SIGHAND, KCMP_VM};
    let mut next = [1u32; 4];
    for i in 0..images.len() {
        let pid = frozen.tasks[i].pid;
        let mut ids = [0u32; 4];
        for (k, kind) in [KCMP_VM, KCMP_FILES, KCMP_FS, KCMP_SIGHAND]
            .into_iter()
            .enumerate()
        {
            let mut found = None;
            for (earlier, img) in frozen.tasks.iter().zip(images.iter()).take(i) {
                if same_object(pid, earlier.pid, kind)? {
                    found = Some(match k {
                        0 => img.ids.vm_id,
                        1 => img.ids.files_id,
                        2 => img.ids.fs_id,
                        _ => img.ids.sighand_id,
                    });
                    break;
                }
            }
            ids[k] = match found {
                Some(id) => id,
                None => {
                    next[k] += 1;
                    next[k] - 1
                }
            };
        }
        if images[..i].iter().any(|t| t.ids.vm_id == ids[0]) {
            return Err(Error::unsupported(
                pid,
                "shares its address space with another process (vfork or CLONE_VM)",
            ));
        }
        if images[..i].iter().any(|t| t.ids.sighand_id == ids[3]) {
            return Err(Error::unsupported(
                pid,
                "shares signal handlers with another process (CLONE_SIGHAND)",
            ));
        }
        let e = &mut images[i].ids;
        (e.vm_id, e.files_id, e.fs_id, e.sighand_id) = (ids[0], ids[1], ids[2], ids[3]);
    }
    // An fd table (CLONE_FILES) or cwd/root/umask (CLONE_FS) shared comes back by forking each
    // sharer with that flag from its parent: the processes sharing one must hang together from
    // one of them down.
    let index: std::collections::HashMap<pid_t, usize> = frozen
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.pid, i))
        .collect();
    let parent: Vec<Option<usize>> = frozen
        .tasks
        .iter()
        .map(|t| index.get(&t.ppid).copied())
        .collect();
    type IdOf = fn(&pb::TaskKobjIdsEntry) -> u32;
    let kinds: [(IdOf, &str); 2] = [
        (|ids| ids.files_id, "its fd table (CLONE_FILES)"),
        (|ids| ids.fs_id, "cwd/root/umask (CLONE_FS)"),
    ];
    for (id_of, what) in kinds {
        let ids: Vec<u64> = images.iter().map(|t| id_of(&t.ids) as u64).collect();
        if let Some(i) = crate::engine::scattered_sharer(&parent, &ids) {
            return Err(Error::unsupported(
                frozen.tasks[i].pid,
                format!(
                    "shares {what} with a process that is neither its parent nor a child: \
                     not supported"
                ),
            ));
        }
    }
    Ok(())
}

pub fn dump(opts: &Options, notify: &mut dyn Notify) -> Result<DumpOutcome> {
    let pid = opts
        .pid
        .ok_or_else(|| Error::InvalidOptions("no process to dump: give -t PID".into()))?;
    if pid == std::process::id() as pid_t {
        return Err(Error::InvalidOptions(format!(
            "pid {pid} is the dumper itself"
        )));
    }
    let dir = ImageDir::new(&opts.images_dir);
    if !dir.path().is_dir() {
        return Err(Error::InvalidOptions(format!(
            "images directory {} does not exist",
            dir.path().display()
        )));
    }
    // An inventory from an earlier run would make a half-written dump look complete.
    let _ = std::fs::remove_file(dir.file(&Kind::Inventory.file_name("")));
    let token = procfs::uptime_us()?;
    let parent = link_parent(&dir, opts.prev_images_dir.as_deref())?;
    // The final dump of a migration should not stay frozen through smaps' page-table walks.
    let smaps_hints = if parent.is_some() {
        smaps_of_tree(pid)
    } else {
        Default::default()
    };
    notify.notify("pre-dump", pid, None)?;
    // Connected before the freeze: a page server that cannot be reached costs no frozen time.
    let mut sink = page_sink(opts, &dir)?;
    // Listening before the freeze too: the port is taken (or refused) before anything stops.
    let lazy_listener = match &opts.lazy_listen {
        Some(l) if opts.lazy_pages => {
            let listener = crate::pageserver::server::listen(l.address.as_deref(), l.port)?;
            log::info!(
                "lazy pages will be served on {}:{}",
                l.address.as_deref().unwrap_or("*"),
                listener.port
            );
            Some(listener)
        }
        _ => None,
    };

    let mut timing = Timing::default();
    let t0 = Instant::now();
    let timeout = Duration::from_secs(opts.timeout.unwrap_or(10) as u64);
    let mut frozen = Frozen::freeze_tree(pid, timeout)?;
    timing.freezing = t0.elapsed();
    log::info!(
        "froze {} processes ({} threads, {} zombies) below pid {pid} in {:?}",
        frozen.tasks.len(),
        frozen.tasks.iter().map(|t| t.threads.len()).sum::<usize>(),
        frozen.zombies.len(),
        timing.freezing
    );
    if frozen
        .tasks
        .iter()
        .any(|t| t.pid == std::process::id() as pid_t)
    {
        return Err(Error::InvalidOptions(
            "the dumper is inside the tree it dumps".into(),
        ));
    }
    let pids = crate::pidns::PidMap::for_dump(&frozen)?;
    check_tree(&frozen, opts)?;
    // CRIU asks an RPC client for external resources once the tree is frozen.
    notify.notify("query-ext-files", pid, None)?;

    let mut tree = TreeImages {
        parent,
        smaps_hints,
        trackers: crate::track::known_inodes(),
        files: FileTable::for_dump(opts),
        timing,
        ..Default::default()
    };
    let written = write_tree(opts, &dir, &mut frozen, &mut tree, &pids, token, &mut *sink);
    let mut tracking = std::mem::take(&mut tree.tracking);
    let mut timing = match written {
        Ok(()) => tree.timing,
        Err(e) => {
            remove_created(&mut frozen.tasks, &mut tracking);
            return Err(e);
        }
    };
    // Takes the tree's unix connections not accepted yet (to read what their clients sent):
    // only once everything else is written, and before post-dump scripts see the images.
    if !opts.leave_running {
        if let Err(e) = tree.files.take_unaccepted_data(&dir) {
            let _ = std::fs::remove_file(dir.file(&Kind::Inventory.file_name("")));
            return Err(e);
        }
    }
    notify.notify("post-dump", pid, None)?;

    let frozen_at = frozen.frozen_at;
    if let Some(listener) = lazy_listener {
        // The tree stays frozen while the destination fetches its memory, and is killed after
        // (it runs there now); a destination that breaks off leaves nothing to resume either.
        timing.frozen = frozen_at.elapsed();
        let t0 = Instant::now();
        // Killed, interrupted or crashed while serving: the tree goes with us.
        frozen.die_with_tracer()?;
        let served = crate::pageserver::lazy::serve(listener, opts, &tree.lazy);
        frozen.kill()?;
        tree.files.inet.tree_killed();
        for tt in tracking.iter_mut() {
            crate::track::forget(tt.pid, tt.start_time);
        }
        write_stats(&dir, "dump", &timing, opts.display_stats)?;
        let served = served.inspect_err(|e| {
            log::error!("{e}; the dumped tree was killed");
        })?;
        log::info!(
            "lazy dump of pid {pid} finished: {} KiB sent in {} requests in {:.3} s after the \
             dump, {} KiB never asked for; the tree was killed",
            served.bytes >> 10,
            served.requests,
            t0.elapsed().as_secs_f64(),
            served.unsent >> 10
        );
        return Ok(DumpOutcome { restored: false });
    }
    if opts.leave_running {
        // Connections leave repair mode and the lock goes before the tree runs again.
        tree.files.inet.release()?;
        frozen.resume()?;
        timing.frozen = frozen_at.elapsed();
    } else {
        // Frozen until killed (waiting for the exit, which frees the memory, is not frozen).
        timing.frozen = frozen_at.elapsed();
        frozen.kill()?;
        // The connections died in repair mode, without a packet; the lock stays for the restore.
        tree.files.inet.tree_killed();
    }
    for tt in tracking.iter_mut() {
        match tt.tracker.as_mut() {
            Some(t) if opts.track_mem && opts.leave_running => t.commit(token)?,
            _ => crate::track::forget(tt.pid, tt.start_time),
        }
    }
    write_stats(&dir, "dump", &timing, opts.display_stats)?;
    log::info!(
        "dump of pid {pid} finished: {} pages written, {} in the parent images",
        timing.stats.written,
        timing.stats.skipped_parent
    );
    Ok(DumpOutcome { restored: false })
}

/// Lazy migration: the private anonymous memory of every task stays out of the images (PE_LAZY)
/// and is listed for the source's page server. Which memory is lazy is decided as the lazy
/// restore decides it (`lazy::can_be_lazy`, nothing a child shares copy-on-write with its
/// parent), so that every PE_LAZY page lands where the destination's daemon serves it.
fn leave_lazy(
    images: &mut [TaskImages],
    pids: &PidMap,
) -> Result<Vec<crate::pageserver::lazy::LazyTask>> {
    let inherit: Vec<Vec<Option<usize>>> = images
        .iter()
        .map(|t| {
            match images
                .iter()
                .find(|p| p.pid as u32 == t.pstree.ppid && p.pid != t.pid)
            {
                Some(p) => mem::inherited_from(&t.mm.vmas, &p.mm.vmas),
                None => vec![None; t.mm.vmas.len()],
            }
        })
        .collect();
    let mut lazy: Vec<Vec<bool>> = images
        .iter()
        .zip(&inherit)
        .map(|(t, inh)| {
            t.mm.vmas
                .iter()
                .zip(inh)
                .map(|(v, from)| from.is_none() && crate::lazy::can_be_lazy(v))
                .collect()
        })
        .collect();
    for (i, inh) in inherit.iter().enumerate() {
        let ppid = images[i].pstree.ppid;
        let Some(p) = images.iter().position(|p| p.pid as u32 == ppid) else {
            continue;
        };
        for pv in inh.iter().flatten() {
            if let Some(x) = lazy[p].get_mut(*pv) {
                *x = false;
            }
        }
    }
    let mut out = Vec::new();
    for (t, lz) in images.iter_mut().zip(&lazy) {
        let ranges: Vec<(u64, u64)> =
            t.mm.vmas
                .iter()
                .zip(lz)
                .filter(|(_, &l)| l)
                .map(|(v, _)| (v.start, v.end))
                .collect();
        let ranges = t.pages.leave_lazy(&ranges);
        let image_pid = pids.image_pid(t.pid)?;
        out.push(crate::pageserver::lazy::LazyTask {
            pid: t.pid,
            image_pid,
            ranges,
        });
    }
    Ok(out)
}

/// Where the pages go: a page server (`--page-server`) or the images directory.
pub(crate) fn page_sink(opts: &Options, dir: &ImageDir) -> Result<Box<dyn mem::PageSink>> {
    Ok(if opts.page_server.is_some() {
        Box::new(crate::pageserver::client::RemotePages::connect(opts, dir)?)
    } else {
        Box::new(mem::LocalPages { dir: dir.clone() })
    })
}

/// smaps of every task of the tree below `root`, read while it runs (best effort: a task
/// without one gets its smaps read while frozen).
fn smaps_of_tree(root: pid_t) -> std::collections::HashMap<pid_t, Vec<procfs::MapEntry>> {
    let mut out = std::collections::HashMap::new();
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        if let Ok(m) = procfs::maps(pid) {
            out.insert(pid, m);
        }
        todo.extend(procfs::children(pid).unwrap_or_default());
    }
    out
}

/// Everything between the freeze and the release: every task's images, the tree's images, the
/// inventory last.
fn write_tree(
    opts: &Options,
    dir: &ImageDir,
    frozen: &mut Frozen,
    tree: &mut TreeImages,
    pids: &PidMap,
    token: u64,
    sink: &mut dyn mem::PageSink,
) -> Result<()> {
    let dir = dir.clone();
    let mut images = Vec::new();
    for task in frozen.tasks.iter_mut() {
        let pages_id = images.len() as u32 + 1;
        let image_pid = pids.image_pid(task.pid)?;
        let mut t = dump_task(task, image_pid, opts, &dir, tree, pages_id, sink)?;
        t.pstree.ppid = task.ppid as u32;
        tree.vmas_by_pid.insert(t.pid, t.mm.vmas.clone());
        images.push(t);
    }
    let TreeImages { files, .. } = tree;
    // Pipes and sockets are whole only when every holder was dumped.
    let holders: Vec<pid_t> = images
        .iter()
        .map(|t| t.pid)
        .chain(frozen.zombies.iter().map(|z| z.pid))
        .collect();
    files.check_complete(&holders)?;
    if opts.lazy_pages {
        tree.lazy = leave_lazy(&mut images, pids)?;
        let lazy: u64 = tree
            .lazy
            .iter()
            .flat_map(|t| &t.ranges)
            .map(|r| (r.1 - r.0) / crate::sys::mem::PAGE_SIZE)
            .sum();
        tree.timing.stats.written -= lazy;
        tree.timing.stats.lazy += lazy;
    }
    let TreeImages {
        files,
        seccomp,
        shared,
        timing,
        parent,
        ..
    } = tree;
    // Every task is planned: now copy the pages.
    let t0 = Instant::now();
    for t in images.iter_mut() {
        sink.write_task(&mut t.pages, pids.image_pid(t.pid)?, t.pages_id, false)?;
    }
    timing.memdump += t0.elapsed();
    timing.memwrite += t0.elapsed();
    log::debug!("pages copied");
    let t0 = Instant::now();
    // Memfds' contents are dumped like shared anonymous memory.
    shared.extend_from_slice(files.memfd_contents());
    timing.shpages_written = mem::dump_shared(shared, sink, images.len() as u32 + 1)?;
    timing.memdump += t0.elapsed();
    assign_ids(frozen, &mut images)?;
    for t in images.iter_mut() {
        to_ns_pids(t, pids)?;
    }
    let mut fdinfo_written = Vec::new();
    for t in &images {
        write_images(&dir, t, &mut fdinfo_written)?;
        if opts.auto_dedup && parent.is_some() {
            crate::images::pages::dedup(&dir, t.pid)?;
        }
    }
    let mut pstree = Vec::new();
    for m in &frozen.order {
        match *m {
            Member::Alive(i) => pstree.push(images[i].pstree.clone()),
            Member::Zombie(i) => {
                let z = &frozen.zombies[i];
                let pid = pids.ns(z.pid, z.pid)?;
                dir.write_one(Kind::Core, pid, &zombie_core(z))?;
                pstree.push(pb::PstreeEntry {
                    pid: pid as u32,
                    ppid: pids.ns(z.pid, z.ppid)? as u32,
                    pgid: pids.ns(z.pid, z.stat.pgid)? as u32,
                    sid: pids.ns(z.pid, z.stat.sid)? as u32,
                    threads: vec![pid as u32],
                });
            }
        }
    }
    if pids.own_ns {
        let root = frozen.tasks[0].pid;
        for e in files.entries.iter_mut() {
            if let Some(fown) = fown_mut(e).filter(|f| f.pid != 0) {
                fown.pid = pids.ns(root, fown.pid as pid_t)? as u32;
            }
        }
        files.map_tty_pids(&|p| pids.ns(root, p))?;
    }
    files.write_images(&dir)?;
    dir.write_all(Kind::Pstree, "", &pstree)?;
    if !seccomp.is_empty() {
        dir.write_one(
            Kind::Seccomp,
            "",
            &pb::SeccompEntry {
                seccomp_filters: std::mem::take(seccomp),
            },
        )?;
    }
    log::debug!("images written");
    write_timens(&dir)?;
    // The destination's images are whole before ours say so.
    sink.finish()?;
    dir.write_one(
        Kind::Inventory,
        "",
        &pb::InventoryEntry {
            img_version: if timing.stats.cow > 0 {
                IMG_VERSION_COW
            } else {
                IMG_VERSION
            },
            fdinfo_per_id: Some(true),
            // The dumper's own pid namespace: a root in another one is the init of its own.
            root_ids: Some(pb::TaskKobjIdsEntry {
                pid_ns_id: Some(crate::pidns::HOST_PID_NS_ID),
                ..images[0].ids
            }),
            ns_per_id: Some(true),
            lsmtype: Some(pb::Lsmtype::NoLsm as i32),
            dump_uptime: Some(token),
            pre_dump_mode: None,
            tcp_close: Some(opts.tcp_close),
            network_lock_method: Some(opts.network_lock as u32 + 1),
            dump_criu_run_id: Some(tree.files.inet.run_id().to_owned()),
            ..Default::default()
        },
    )?;
    Ok(())
}

fn write_timens(dir: &ImageDir) -> Result<()> {
    let now = |clock| -> pb::Timespec {
        let ts = nix::time::clock_gettime(clock).unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
        pb::Timespec {
            tv_sec: ts.tv_sec() as u64,
            tv_nsec: ts.tv_nsec() as u64,
        }
    };
    dir.write_one(
        Kind::Timens,
        0,
        &pb::TimensEntry {
            monotonic: now(nix::time::ClockId::CLOCK_MONOTONIC),
            boottime: now(nix::time::ClockId::CLOCK_BOOTTIME),
        },
    )
}

/// stats-NAME: "dump" after a dump (and a pre-dump, as CRIU does), "pre-dump" after a pre-dump.
pub(crate) fn write_stats(dir: &ImageDir, name: &str, t: &Timing, display: bool) -> Result<()> {
    let us = |d: Duration| d.as_micros().min(u32::MAX as u128) as u32;
    let d = pb::DumpStatsEntry {
        freezing_time: us(t.freezing),
        frozen_time: us(t.frozen),
        memdump_time: us(t.memdump),
        memwrite_time: us(t.memwrite),
        pages_scanned: t.stats.scanned,
        pages_skipped_parent: t.stats.skipped_parent,
        pages_written: t.stats.written,
        pages_lazy: t.stats.lazy,
        shpages_written: Some(t.shpages_written),
        ..Default::default()
    };
    if display {
        println!("Displaying dump stats:");
        println!("Freezing time: {} us", d.freezing_time);
        println!("Frozen time: {} us", d.frozen_time);
        println!("Memory dump time: {} us", d.memdump_time);
        println!("Memory write time: {} us", d.memwrite_time);
        println!(
            "Memory pages scanned: {} (0x{:x})",
            d.pages_scanned, d.pages_scanned
        );
        println!(
            "Memory pages skipped from parent: {} (0x{:x})",
            d.pages_skipped_parent, d.pages_skipped_parent
        );
        println!(
            "Memory pages written: {} (0x{:x})",
            d.pages_written, d.pages_written
        );
        println!("Lazy memory pages: {} (0x{:x})", d.pages_lazy, d.pages_lazy);
    }
    dir.write_one(
        Kind::Stats,
        name,
        &pb::StatsEntry {
            dump: Some(d),
            restore: None,
        },
    )
}
