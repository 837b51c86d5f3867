//! `criu dump`: freeze, collect every resource of the task, write the images, then kill the
//! task or let it run on.

use std::fs::File;
use std::time::{Duration, Instant};

use libc::pid_t;

use crate::creds;
use crate::engine::{DumpOutcome, Notify};
use crate::error::{Error, Result};
use crate::files::{self, FileTable};
use crate::freeze::{Frozen, FrozenTask};
use crate::images::{pages_file_name, ImageDir, Kind, IMG_VERSION};
use crate::mem;
use crate::options::Options;
use crate::pb;
use crate::procfs;
use crate::regs;
use crate::remote::Remote;
use crate::signals;
use crate::sys::inject::{find_syscall_insn, restart_adjusted, Injector};
use crate::sys::task as systask;
use crate::timers;

pub const TASK_ALIVE: u32 = 1;
pub const TASK_STOPPED: u32 = 3;

/// Everything one process contributes to the images, gathered while it is frozen.
struct TaskImages {
    pid: pid_t,
    pstree: pb::PstreeEntry,
    cores: Vec<(pid_t, pb::CoreEntry)>,
    ids: pb::TaskKobjIdsEntry,
    mm: pb::MmEntry,
    pagemap: Vec<pb::PagemapEntry>,
    pages_id: u32,
    fs: pb::FsEntry,
    fdinfo: Vec<pb::FdinfoEntry>,
    ttys: Vec<pb::TtyInfoEntry>,
}

#[derive(Default)]
struct Timing {
    freezing: Duration,
    frozen: Duration,
    memdump: Duration,
    memwrite: Duration,
    stats: mem::PageStats,
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

fn dump_seccomp(task: &FrozenTask, filters: &mut Vec<pb::SeccompFilter>) -> Result<Option<u32>> {
    let t = &task.leader().tracee;
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
    // CRIU's layout: newest first; each older filter's `prev` names the one written before it,
    // and the thread points at the oldest.
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

fn tty_info(
    pid: pid_t,
    fdinfo: &[pb::FdinfoEntry],
    files: &FileTable,
    stat: &procfs::Stat,
) -> Result<Vec<pb::TtyInfoEntry>> {
    let mut out: Vec<pb::TtyInfoEntry> = Vec::new();
    for fe in fdinfo {
        let Some(tty) = files.get(fe.id).and_then(|e| e.tty.as_ref()) else {
            continue;
        };
        if out.iter().any(|t| t.id == tty.tty_info_id) {
            continue;
        }
        let link = format!("/proc/{pid}/fd/{}", fe.fd);
        let path = procfs::readlink(&link)?;
        let index = path
            .to_str()
            .and_then(|p| p.strip_prefix("/dev/pts/"))
            .and_then(|n| n.parse().ok());
        out.push(pb::TtyInfoEntry {
            id: tty.tty_info_id,
            r#type: if index.is_some() {
                pb::TtyType::Pty
            } else {
                pb::TtyType::Console
            } as i32,
            locked: false,
            exclusive: false,
            packet_mode: false,
            sid: stat.sid as u32,
            pgrp: stat.pgid as u32,
            rdev: tty.tty_info_id,
            pty: index.map(|index| pb::TtyPtyEntry { index }),
            ..Default::default()
        });
    }
    Ok(out)
}

fn dump_task(
    task: &mut FrozenTask,
    opts: &Options,
    dir: &ImageDir,
    files: &mut FileTable,
    seccomp_filters: &mut Vec<pb::SeccompFilter>,
    pages_id: u32,
    timing: &mut Timing,
) -> Result<TaskImages> {
    let pid = task.pid;
    let stat = procfs::stat(pid, None)?;
    let status = procfs::status(pid, None)?;
    // Read before our scratch page exists, so that it can never merge into the task's VMAs.
    let maps = procfs::maps(pid)?;
    let vdso = maps
        .iter()
        .find(|m| m.name == "[vdso]")
        .map(|m| (m.start, m.end));
    let leader_regs = task.leader().regs;
    let syscall_ip = find_syscall_insn(pid, &leader_regs, vdso)?;

    // No signal may be delivered while we run syscalls in the task; the freeze-time mask is
    // put back when the task is released.
    task.leader().tracee.set_sigmask(!0)?;
    let inj = Injector::new(&task.leader().tracee, leader_regs, syscall_ip);
    let remote = Remote::start(inj, pid)?;
    let gathered = (|| -> Result<_> {
        let sigactions = signals::dump_actions(&remote)?;
        let timers = timers::dump(&remote)?;
        let creds = creds::dump(&remote, &status)?;
        let rlimits = creds::dump_rlimits(&remote)?;
        let dumpable = prctl_get(&remote, "prctl(PR_GET_DUMPABLE)", libc::PR_GET_DUMPABLE)?;
        let thp_disabled = prctl_get(
            &remote,
            "prctl(PR_GET_THP_DISABLE)",
            libc::PR_GET_THP_DISABLE,
        )?;
        let subreaper = prctl_get_ptr(
            &remote,
            "prctl(PR_GET_CHILD_SUBREAPER)",
            libc::PR_GET_CHILD_SUBREAPER,
            4,
        )?;
        let pdeath = prctl_get_ptr(
            &remote,
            "prctl(PR_GET_PDEATHSIG)",
            libc::PR_GET_PDEATHSIG,
            4,
        )?;
        let tid_addr = prctl_get_ptr(
            &remote,
            "prctl(PR_GET_TID_ADDRESS)",
            libc::PR_GET_TID_ADDRESS,
            8,
        )?;
        remote.syscall(
            "sigaltstack(query)",
            libc::SYS_sigaltstack,
            [0, remote.addr(0), 0, 0, 0, 0],
        )?;
        let ss = remote.read(0, 24)?;
        let sas = pb::ThreadSasEntry {
            ss_sp: u64::from_ne_bytes(ss[0..8].try_into().unwrap()),
            ss_flags: u32::from_ne_bytes(ss[8..12].try_into().unwrap()),
            ss_size: u64::from_ne_bytes(ss[16..24].try_into().unwrap()),
        };
        Ok((
            sigactions,
            timers,
            creds,
            rlimits,
            dumpable,
            thp_disabled,
            subreaper,
            pdeath,
            tid_addr,
            sas,
        ))
    })();
    let deferred = remote.finish();
    task.threads[0]
        .deferred
        .extend(deferred.as_deref().unwrap_or(&[]));
    // Put the task back as it was right away, not only at release: should we die during the
    // long memory copy, the kernel detaches it and it must resume intact.
    let leader = task.leader();
    leader.tracee.set_regs(&restart_adjusted(&leader.regs))?;
    leader.tracee.set_sigmask(leader.sigmask)?;
    let (
        sigactions,
        timers,
        creds,
        rlimits,
        dumpable,
        thp_disabled,
        subreaper,
        pdeath,
        tid_addr,
        sas,
    ) = gathered?;
    deferred?;

    // Files first: they are the usual reason to refuse a task, before any page is copied.
    let fdinfo = files::dump_fds(pid, files, opts.shell_job, opts.rpc_server_socket_ino)?;

    // Memory, now that our scratch page is gone again.
    let vmas = mem::collect_vmas(pid, &maps, (0, 0), stat.start_stack, files)?;
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
    let t0 = Instant::now();
    let pages_path = dir.file(&pages_file_name(pages_id));
    let mut pages_out = File::create(&pages_path)
        .map_err(|e| Error::io(format!("create {}", pages_path.display()), e))?;
    let (pagemap, stats) = mem::dump_pages(pid, &vmas, &mut pages_out)?;
    timing.memdump += t0.elapsed();
    timing.memwrite += t0.elapsed();
    timing.stats.scanned += stats.scanned;
    timing.stats.written += stats.written;

    let mm = pb::MmEntry {
        mm_start_code: stat.start_code,
        mm_end_code: stat.end_code,
        mm_start_data: stat.start_data,
        mm_end_data: stat.end_data,
        mm_start_stack: stat.start_stack,
        mm_start_brk: stat.start_brk,
        mm_brk: brk_of(&maps, &stat),
        mm_arg_start: stat.arg_start,
        mm_arg_end: stat.arg_end,
        mm_env_start: stat.env_start,
        mm_env_end: stat.env_end,
        exe_file_id,
        mm_saved_auxv: procfs::auxv(pid)?,
        vmas,
        dumpable: Some(dumpable as i32),
        aios: Vec::new(),
        thp_disabled: Some(thp_disabled != 0),
    };

    // Files, cwd, root.
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
    let ttys = tty_info(pid, &fdinfo, files, &stat)?;
    let seccomp_filter = dump_seccomp(task, seccomp_filters)?;

    // Registers and per-thread state (one thread until threads are supported).
    let leader = task.leader();
    let t = &leader.tracee;
    let rseq = t.rseq_config()?;
    let (policy, prio, nice) = systask::sched(pid)?;
    let (rla, rla_len) = systask::robust_list(pid)?;
    let mut gp = restart_adjusted(&leader.regs);
    gp.orig_rax = leader.regs.orig_rax;
    let xstate = t.get_xstate()?;
    let comm = stat.comm.clone();
    let loginuid = procfs::read_trimmed(pid, "loginuid")
        .ok()
        .and_then(|s| s.parse::<u32>().ok());
    let oom_score_adj = procfs::read_trimmed(pid, "oom_score_adj")
        .ok()
        .and_then(|s| s.parse::<i32>().ok());
    let core = pb::CoreEntry {
        mtype: pb::core_entry::March::X8664 as i32,
        thread_info: Some(pb::ThreadInfoX86 {
            clear_tid_addr: tid_addr,
            gpregs: regs::gpregs_to_image(&gp),
            fpregs: regs::fpregs_to_image(&xstate)?,
            tls: regs::tls_to_image(t)?,
        }),
        tc: Some(pb::TaskCoreEntry {
            task_state: if task.stop_signo.is_some() {
                TASK_STOPPED
            } else {
                TASK_ALIVE
            },
            exit_code: 0,
            personality: procfs::personality(pid)?,
            flags: stat.flags,
            blk_sigset: leader.sigmask,
            comm: comm.clone(),
            timers: Some(timers),
            rlimits: Some(rlimits),
            signals_s: signals::dump_pending(t, true)?,
            loginuid,
            oom_score_adj,
            sigactions,
            child_subreaper: Some(subreaper != 0),
            stop_signo: task.stop_signo.map(|s| s as u32),
            ..Default::default()
        }),
        ids: None,
        thread_core: Some(pb::ThreadCoreEntry {
            futex_rla: rla,
            futex_rla_len: rla_len as u32,
            sched_nice: Some(nice),
            sched_policy: Some(policy),
            sched_prio: Some(prio),
            blk_sigset: Some(leader.sigmask),
            sas: Some(sas),
            pdeath_sig: Some(pdeath as u32),
            signals_p: signals::dump_pending(t, false)?,
            creds: Some(creds),
            seccomp_mode: Some(status.seccomp as i32),
            seccomp_filter,
            comm: Some(comm),
            rseq_entry: (rseq.ptr != 0).then_some(pb::RseqEntry {
                rseq_abi_pointer: rseq.ptr,
                rseq_abi_size: rseq.size,
                signature: rseq.signature,
                rseq_cs_pointer: None,
            }),
            ..Default::default()
        }),
    };
    Ok(TaskImages {
        pid,
        pstree: pb::PstreeEntry {
            pid: pid as u32,
            ppid: 0,
            pgid: stat.pgid as u32,
            sid: stat.sid as u32,
            threads: task.threads.iter().map(|t| t.tracee.tid as u32).collect(),
        },
        cores: vec![(pid, core)],
        ids: pb::TaskKobjIdsEntry {
            vm_id: 1,
            files_id: 1,
            fs_id: 1,
            sighand_id: 1,
            ..Default::default()
        },
        mm,
        pagemap,
        pages_id,
        fs,
        fdinfo,
        ttys,
    })
}

/// The program break: /proc/PID/stat has start_brk but not brk; the heap VMA ends at the
/// page-aligned break, which is what brk() needs to continue.
fn brk_of(maps: &[procfs::MapEntry], stat: &procfs::Stat) -> u64 {
    maps.iter()
        .find(|m| m.name == "[heap]")
        .map(|m| m.end)
        .unwrap_or(stat.start_brk)
}

fn write_images(dir: &ImageDir, t: &TaskImages) -> Result<()> {
    for (tid, core) in &t.cores {
        dir.write_one(Kind::Core, tid, core)?;
    }
    dir.write_one(Kind::Ids, t.pid, &t.ids)?;
    dir.write_one(Kind::Mm, t.pid, &t.mm)?;
    let mut pm = dir.create(Kind::Pagemap, t.pid)?;
    pm.write(&pb::PagemapHead {
        pages_id: t.pages_id,
    })?;
    for e in &t.pagemap {
        pm.write(e)?;
    }
    pm.finish()?;
    dir.write_one(Kind::Fs, t.pid, &t.fs)?;
    dir.write_all(Kind::Fdinfo, t.ids.files_id, &t.fdinfo)?;
    Ok(())
}

/// Checks that the tree is one we can restore: a single process (trees and threads come later),
/// in its own session or a shell job.
fn check_tree(pid: pid_t, frozen: &Frozen, opts: &Options) -> Result<()> {
    let task = &frozen.tasks[0];
    if task.threads.len() > 1 {
        return Err(Error::unsupported(
            pid,
            format!(
                "{} threads (multi-threaded tasks are not supported yet)",
                task.threads.len()
            ),
        ));
    }
    let children = procfs::children(pid)?;
    if !children.is_empty() {
        return Err(Error::unsupported(
            pid,
            format!("child processes {children:?} (process trees are not supported yet)"),
        ));
    }
    let stat = procfs::stat(pid, None)?;
    if !opts.shell_job && (stat.sid != pid || stat.pgid != pid) {
        return Err(Error::unsupported(
            pid,
            format!(
                "session {} / process group {} lead by a process outside the dumped tree (use --shell-job for a shell job)",
                stat.sid, stat.pgid
            ),
        ));
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
    notify.notify("pre-dump", pid, None)?;

    let mut timing = Timing::default();
    let t0 = Instant::now();
    let timeout = Duration::from_secs(opts.timeout.unwrap_or(10) as u64);
    let mut frozen = Frozen::freeze_process(pid, timeout)?;
    timing.freezing = t0.elapsed();
    log::info!("froze pid {pid} in {:?}", timing.freezing);
    check_tree(pid, &frozen, opts)?;
    // CRIU asks an RPC client for external resources once the tree is frozen.
    notify.notify("query-ext-files", pid, None)?;

    let mut files = FileTable::new();
    let mut seccomp = Vec::new();
    let mut images = Vec::new();
    for task in frozen.tasks.iter_mut() {
        images.push(dump_task(
            task,
            opts,
            &dir,
            &mut files,
            &mut seccomp,
            images.len() as u32 + 1,
            &mut timing,
        )?);
    }
    for t in &images {
        write_images(&dir, t)?;
    }
    dir.write_all(Kind::Files, "", &files.entries)?;
    dir.write_all(Kind::Pstree, "", images.iter().map(|t| &t.pstree))?;
    if !seccomp.is_empty() {
        dir.write_one(
            Kind::Seccomp,
            "",
            &pb::SeccompEntry {
                seccomp_filters: seccomp,
            },
        )?;
    }
    let ttys: Vec<&pb::TtyInfoEntry> = images.iter().flat_map(|t| t.ttys.iter()).collect();
    if !ttys.is_empty() {
        dir.write_all(Kind::TtyInfo, "", ttys)?;
    }
    write_timens(&dir)?;
    dir.write_one(
        Kind::Inventory,
        "",
        &pb::InventoryEntry {
            img_version: IMG_VERSION,
            fdinfo_per_id: Some(true),
            root_ids: Some(images[0].ids),
            ns_per_id: Some(true),
            lsmtype: Some(pb::Lsmtype::NoLsm as i32),
            dump_uptime: Some(procfs::uptime_us()?),
            pre_dump_mode: None,
            tcp_close: Some(opts.tcp_close),
            network_lock_method: Some(opts.network_lock as u32 + 1),
            ..Default::default()
        },
    )?;
    notify.notify("post-dump", pid, None)?;

    let frozen_at = frozen.frozen_at;
    if opts.leave_running {
        frozen.resume()?;
    } else {
        frozen.kill()?;
    }
    timing.frozen = frozen_at.elapsed();
    write_stats(&dir, &timing, opts.display_stats)?;
    log::info!(
        "dump of pid {pid} finished: {} pages written",
        timing.stats.written
    );
    Ok(DumpOutcome { restored: false })
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

fn write_stats(dir: &ImageDir, t: &Timing, display: bool) -> Result<()> {
    let us = |d: Duration| d.as_micros().min(u32::MAX as u128) as u32;
    let d = pb::DumpStatsEntry {
        freezing_time: us(t.freezing),
        frozen_time: us(t.frozen),
        memdump_time: us(t.memdump),
        memwrite_time: us(t.memwrite),
        pages_scanned: t.stats.scanned,
        pages_skipped_parent: t.stats.skipped_parent,
        pages_written: t.stats.written,
        pages_lazy: 0,
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
        "dump",
        &pb::StatsEntry {
            dump: Some(d),
            restore: None,
        },
    )
}
