//! The tracer's side of a restore: once a task has built itself and parked, run syscalls in it
//! to swap its memory into place, restore the kernel state that belongs to the final layout or
//! to each thread, load the saved registers, and let it go.

use std::os::unix::fs::MetadataExt;

use libc::pid_t;

use crate::engine::restore::{Ready, TaskImage};
use crate::error::{Error, Result};
use crate::mem::{self, Layout};
use crate::pb;
use crate::pidns::PidMap;
use crate::procfs;
use crate::regs;
use crate::signals;
use crate::sys::inject::Injector;
use crate::sys::mem::{write_remote, PAGE_SIZE};
use crate::sys::ptrace::{
    Stop, Tracee, PTRACE_O_EXITKILL, PTRACE_O_SUSPEND_SECCOMP, PTRACE_O_TRACESYSGOOD,
};

/// Offsets in the control data area.
const D_MM_MAP: u64 = 0;
const D_AUXV: u64 = 256;
const D_ARGS: u64 = 8 << 10;
const D_BIG: u64 = 16 << 10;

struct Ctl<'a> {
    inj: Injector<'a>,
    /// The task's pid for us (ptrace, /proc); `ns_pid` is its own (syscalls run inside it).
    pid: pid_t,
    ns_pid: pid_t,
    data: u64,
}

impl Ctl<'_> {
    fn sys(&self, what: &str, nr: i64, args: [u64; 6]) -> Result<u64> {
        self.inj.call(what, nr, args)
    }
    fn put(&self, off: u64, bytes: &[u8]) -> Result<u64> {
        if off + bytes.len() as u64 > mem::CTRL_DATA_SIZE {
            return Err(Error::task(self.pid, "control data area too small"));
        }
        write_remote(self.pid, bytes, self.data + off)?;
        Ok(self.data + off)
    }
}

fn u64s_bytes(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

/// Interrupts a tracee and waits until it is in a ptrace-stop.
fn stop(t: &Tracee) -> Result<()> {
    t.interrupt()?;
    loop {
        match t.wait()? {
            Stop::Event(_) => return Ok(()),
            Stop::Signal(_) | Stop::Syscall | Stop::OtherEvent(_) => t.cont(0)?,
            s => {
                return Err(Error::task(
                    t.tid,
                    format!("restored task ended early: {s:?}"),
                ))
            }
        }
    }
}

/// Swaps a parked task into its final shape and loads its registers; it stays stopped until
/// `release`. Returns the tracees of its other threads.
#[allow(clippy::too_many_arguments)]
pub fn finalize(
    tracee: &Tracee,
    task: &TaskImage,
    seccomp: Option<&pb::SeccompEntry>,
    layout: &Layout,
    shared: &[(u64, u64)],
    ready: &Ready,
    pids: &PidMap,
    lazy: Option<(&crate::lazy::Handoff, &[bool])>,
) -> Result<Vec<Tracee>> {
    let pid = pids.host(task.pid);
    stop(tracee)?;
    // The other threads are parked in pause(): attach to them now.
    let mut others = Vec::with_capacity(task.threads.len());
    for (tid, _) in &task.threads {
        let t = Tracee::seize(
            pids.host(*tid),
            PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL | PTRACE_O_SUSPEND_SECCOMP,
        )?;
        stop(&t)?;
        others.push(t);
    }
    let own_rseq = tracee.rseq_config()?;
    let child_maps = procfs::maps(pid)?;
    let ctl = Ctl {
        inj: Injector::new(tracee, tracee.get_regs()?, layout.ctrl),
        pid,
        ns_pid: task.pid,
        data: layout.ctrl_data(),
    };

    // 1. The restorer's rseq area is about to go away with the rest of its memory.
    if own_rseq.ptr != 0 {
        ctl.sys(
            "rseq(unregister)",
            libc::SYS_rseq,
            [
                own_rseq.ptr,
                own_rseq.size as u64,
                1,
                own_rseq.signature as u64,
                0,
                0,
            ],
        )?;
    }
    // 2. Unmap everything of the restorer but the build area and the vdso.
    let vdso: Vec<&procfs::MapEntry> = child_maps
        .iter()
        .filter(|m| matches!(m.name.as_str(), "[vvar]" | "[vvar_vclock]" | "[vdso]"))
        .collect();
    let mut keep: Vec<(u64, u64)> = vec![(layout.base, layout.base + layout.len)];
    keep.extend(vdso.iter().map(|m| (m.start, m.end)));
    keep.sort_unstable();
    let mut from = PAGE_SIZE;
    const TOP: u64 = 0x7fff_ffff_f000;
    for &(s, e) in &keep {
        if s > from {
            ctl.sys(
                "munmap(restorer memory)",
                libc::SYS_munmap,
                [from, s - from, 0, 0, 0, 0],
            )?;
        }
        from = from.max(e);
    }
    if from < TOP {
        ctl.sys(
            "munmap(restorer memory)",
            libc::SYS_munmap,
            [from, TOP - from, 0, 0, 0, 0],
        )?;
    }
    // 3. vdso and vvar to their saved place, keeping their relative layout.
    move_vdso(&ctl, &vdso, &task.mm.vmas, layout)?;
    // 4. Every VMA from its build address to its place.
    for &(i, temp) in &layout.temps {
        let v = &task.mm.vmas[i];
        let len = v.end - v.start;
        ctl.sys(
            "mremap(VMA into place)",
            libc::SYS_mremap,
            [
                temp,
                len,
                len,
                (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64,
                v.start,
                0,
            ],
        )?;
    }
    // madvise bits, again: some could not be set before the fork (MADV_DONTFORK), and memory
    // inherited from the parent carries the parent's.
    for v in task.mm.vmas.iter().filter(|v| mem::is_built(v)) {
        let Some(m) = v.madv else { continue };
        for advice in mem::madvise_list(m) {
            ctl.sys(
                "madvise",
                libc::SYS_madvise,
                [v.start, v.end - v.start, advice as u64, 0, 0, 0],
            )?;
        }
    }
    // Lazy memory is in place and still empty: register it before anything can touch it (and
    // before credentials change, which could forbid a userfaultfd).
    if let Some((handoff, lazy)) = lazy {
        hand_over_lazy(&ctl, handoff, task.pid, &task.mm.vmas, lazy)?;
    }
    // Shared anonymous memory: a new mapping of the object built by the restorer (mremap with
    // old size 0 maps the same pages again).
    for v in task
        .mm
        .vmas
        .iter()
        .filter(|v| v.status & mem::VMA_ANON_SHARED != 0)
    {
        let obj = shared
            .iter()
            .find(|s| s.0 == v.shmid)
            .map(|s| s.1)
            .ok_or_else(|| {
                Error::task(
                    pid,
                    format!("shared memory object {} was not built", v.shmid),
                )
            })?;
        let len = v.end - v.start;
        ctl.sys(
            "mremap(shared memory into place)",
            libc::SYS_mremap,
            [
                obj + v.pgoff,
                0,
                len,
                (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64,
                v.start,
                0,
            ],
        )?;
        ctl.sys(
            "mprotect(shared memory)",
            libc::SYS_mprotect,
            [v.start, len, v.prot as u64, 0, 0, 0],
        )?;
        if let Some(m) = v.madv {
            for advice in mem::madvise_list(m) {
                ctl.sys(
                    "madvise(shared memory)",
                    libc::SYS_madvise,
                    [v.start, len, advice as u64, 0, 0, 0],
                )?;
            }
        }
    }
    // 5. mm fields and the executable.
    let mm = &task.mm;
    let auxv = ctl.put(D_AUXV, &u64s_bytes(&mm.mm_saved_auxv))?;
    let mut map = Vec::with_capacity(104);
    for v in [
        mm.mm_start_code,
        mm.mm_end_code,
        mm.mm_start_data,
        mm.mm_end_data,
        mm.mm_start_brk,
        mm.mm_brk,
        mm.mm_start_stack,
        mm.mm_arg_start,
        mm.mm_arg_end,
        mm.mm_env_start,
        mm.mm_env_end,
        auxv,
    ] {
        map.extend_from_slice(&v.to_ne_bytes());
    }
    map.extend_from_slice(&((mm.mm_saved_auxv.len() * 8) as u32).to_ne_bytes());
    // A program restoring itself through libcriu's embedded engine already has the task's
    // executable as its own; the kernel refuses to replace an exe that is mapped (EBUSY), and
    // keeping it (exe_fd -1) is what the task needs anyway.
    let same_exe = |a: &str, b: &str| match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    };
    let exe_fd = if same_exe(
        &format!("/proc/{pid}/exe"),
        &format!("/proc/{pid}/fd/{}", ready.exe_fd),
    ) {
        u32::MAX
    } else {
        ready.exe_fd as u32
    };
    map.extend_from_slice(&exe_fd.to_ne_bytes());
    let map_addr = ctl.put(D_MM_MAP, &map)?;
    ctl.sys(
        "prctl(PR_SET_MM_MAP)",
        libc::SYS_prctl,
        [
            libc::PR_SET_MM as u64,
            libc::PR_SET_MM_MAP as u64,
            map_addr,
            map.len() as u64,
            0,
            0,
        ],
    )?;
    ctl.sys(
        "close(exe fd)",
        libc::SYS_close,
        [ready.exe_fd as u64, 0, 0, 0, 0, 0],
    )?;
    let tc = task.tc();
    ctl.sys(
        "personality",
        libc::SYS_personality,
        [tc.personality as u64, 0, 0, 0, 0, 0],
    )?;
    if let Some(t) = &tc.timers {
        restore_timers(&ctl, t)?;
    }

    // 6. Per-thread kernel state, run in each thread.
    let tracees: Vec<&Tracee> = std::iter::once(tracee).chain(others.iter()).collect();
    for (t, (tid, core)) in tracees.iter().zip(task.all_threads()) {
        let tctl = Ctl {
            inj: Injector::new(t, t.get_regs()?, layout.ctrl),
            pid,
            ns_pid: task.pid,
            data: layout.ctrl_data(),
        };
        restore_thread_state(&tctl, core, tid, tid != task.pid)?;
    }
    // 7. Credentials (per thread), then what depends on them.
    for (t, (_, core)) in tracees.iter().zip(task.all_threads()) {
        let tctl = Ctl {
            inj: Injector::new(t, t.get_regs()?, layout.ctrl),
            pid,
            ns_pid: task.pid,
            data: layout.ctrl_data(),
        };
        if let Some(creds) = core.thread_core.as_ref().and_then(|t| t.creds.as_ref()) {
            restore_creds(&tctl, creds)?;
        }
    }
    if let Some(d) = mm.dumpable {
        ctl.sys(
            "prctl(PR_SET_DUMPABLE)",
            libc::SYS_prctl,
            [libc::PR_SET_DUMPABLE as u64, d as u64, 0, 0, 0, 0],
        )?;
    }
    for (t, (_, core)) in tracees.iter().zip(task.all_threads()) {
        let tctl = Ctl {
            inj: Injector::new(t, t.get_regs()?, layout.ctrl),
            pid,
            ns_pid: task.pid,
            data: layout.ctrl_data(),
        };
        let th = core.thread_core.as_ref();
        if th
            .and_then(|t| t.creds.as_ref())
            .and_then(|c| c.no_new_privs)
            == Some(1)
        {
            tctl.sys(
                "prctl(PR_SET_NO_NEW_PRIVS)",
                libc::SYS_prctl,
                [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0, 0],
            )?;
        }
        if let (Some(first), Some(sc)) = (th.and_then(|t| t.seccomp_filter), seccomp) {
            restore_seccomp(&tctl, sc, first)?;
        }
    }
    // 8. Our control block goes last: after this only ptrace requests remain.
    ctl.sys(
        "munmap(build area)",
        libc::SYS_munmap,
        [layout.base, layout.len, 0, 0, 0, 0],
    )?;

    // 9. Registers, blocked signals, and go.
    let xsize = tracee.get_xstate()?.len();
    for (t, (_, core)) in tracees.iter().zip(task.all_threads()) {
        let ti = core.thread_info.as_ref().expect("checked on load");
        t.set_xstate(&regs::fpregs_from_image(&ti.fpregs, xsize)?)?;
        for d in ti.tls.iter().filter(|d| !d.seg_not_present) {
            t.set_thread_area(regs::tls_from_image(d))?;
        }
        let mut r = regs::gpregs_from_image(&ti.gpregs)?;
        r.orig_rax = u64::MAX;
        t.set_regs(&r)?;
        let blocked = core
            .thread_core
            .as_ref()
            .and_then(|t| t.blk_sigset)
            .unwrap_or(tc.blk_sigset);
        t.set_sigmask(blocked)?;
    }
    Ok(others)
}

/// Creates the task's userfaultfd (inside it: a userfaultfd serves the mm of its creator),
/// takes a copy, closes the task's own, and hands the lazy VMAs over to the daemon.
fn hand_over_lazy(
    ctl: &Ctl,
    handoff: &crate::lazy::Handoff,
    image_pid: pid_t,
    vmas: &[pb::VmaEntry],
    lazy: &[bool],
) -> Result<()> {
    let ranges: Vec<(u64, u64)> = vmas
        .iter()
        .zip(lazy)
        .filter(|(_, &l)| l)
        .map(|(v, _)| (v.start, v.end))
        .collect();
    if ranges.is_empty() {
        return Ok(());
    }
    let fd = ctl.sys(
        "userfaultfd",
        libc::SYS_userfaultfd,
        [(libc::O_CLOEXEC | libc::O_NONBLOCK) as u64, 0, 0, 0, 0, 0],
    )?;
    let uffd = crate::sys::pidfd::PidFd::open(ctl.pid)?.get_fd(fd as i32);
    ctl.sys("close(userfaultfd)", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
    handoff.hand_over(
        image_pid,
        ctl.pid,
        std::os::fd::AsFd::as_fd(&uffd?),
        &ranges,
    )
}

/// Lets a finalized task run: its threads, then its leader.
pub fn release(leader: Tracee, threads: Vec<Tracee>) -> Result<()> {
    for t in threads {
        t.set_options(PTRACE_O_TRACESYSGOOD)?; // drop EXITKILL: the task is complete
        t.detach(0)?;
    }
    leader.set_options(PTRACE_O_TRACESYSGOOD)?;
    leader.detach(0)
}

/// Per-thread state that points into the task's memory or belongs to the thread itself.
/// `queue_pending`: the thread's own pending signals still have to be queued (by itself).
fn restore_thread_state(
    ctl: &Ctl,
    core: &pb::CoreEntry,
    tid: pid_t,
    queue_pending: bool,
) -> Result<()> {
    let ti = core.thread_info.as_ref().expect("checked on load");
    ctl.sys(
        "set_tid_address",
        libc::SYS_set_tid_address,
        [ti.clear_tid_addr, 0, 0, 0, 0, 0],
    )?;
    let Some(th) = core.thread_core.as_ref() else {
        return Ok(());
    };
    if let Some(sas) = &th.sas {
        if sas.ss_flags & libc::SS_DISABLE as u32 == 0 {
            let mut b = Vec::new();
            b.extend_from_slice(&sas.ss_sp.to_ne_bytes());
            b.extend_from_slice(&(sas.ss_flags as i32).to_ne_bytes());
            b.extend_from_slice(&[0u8; 4]);
            b.extend_from_slice(&sas.ss_size.to_ne_bytes());
            let a = ctl.put(D_ARGS, &b)?;
            ctl.sys("sigaltstack", libc::SYS_sigaltstack, [a, 0, 0, 0, 0, 0])?;
        }
    }
    if let Some(r) = &th.rseq_entry {
        if r.rseq_abi_pointer != 0 {
            ctl.sys(
                "rseq(register)",
                libc::SYS_rseq,
                [
                    r.rseq_abi_pointer,
                    r.rseq_abi_size as u64,
                    0,
                    r.signature as u64,
                    0,
                    0,
                ],
            )?;
        }
    }
    if th.futex_rla != 0 {
        ctl.sys(
            "set_robust_list",
            libc::SYS_set_robust_list,
            [th.futex_rla, th.futex_rla_len as u64, 0, 0, 0, 0],
        )?;
    }
    if let Some(sig) = th.pdeath_sig.filter(|&s| s != 0) {
        ctl.sys(
            "prctl(PR_SET_PDEATHSIG)",
            libc::SYS_prctl,
            [libc::PR_SET_PDEATHSIG as u64, sig as u64, 0, 0, 0, 0],
        )?;
    }
    if let (true, Some(q)) = (queue_pending, &th.signals_p) {
        for si in &q.signals {
            let Some((signo, info)) = signals::queueable(si) else {
                continue;
            };
            let a = ctl.put(D_ARGS, &info)?;
            ctl.sys(
                "rt_tgsigqueueinfo(pending signal)",
                libc::SYS_rt_tgsigqueueinfo,
                [ctl.ns_pid as u64, tid as u64, signo as u64, a, 0, 0],
            )?;
        }
    }
    Ok(())
}

fn move_vdso(
    ctl: &Ctl,
    own: &[&procfs::MapEntry],
    vmas: &[pb::VmaEntry],
    layout: &Layout,
) -> Result<()> {
    let target_vvar = vmas.iter().find(|v| v.status & mem::VMA_AREA_VVAR != 0);
    let target_vdso = vmas.iter().find(|v| v.status & mem::VMA_AREA_VDSO != 0);
    let Some(tvdso) = target_vdso else {
        for m in own {
            ctl.sys(
                "munmap(vdso)",
                libc::SYS_munmap,
                [m.start, m.len(), 0, 0, 0, 0],
            )?;
        }
        return Ok(());
    };
    let own_vdso = own
        .iter()
        .find(|m| m.name == "[vdso]")
        .ok_or_else(|| Error::task(ctl.pid, "this kernel gave the restorer no vdso"))?;
    let own_base = own.iter().map(|m| m.start).min().unwrap_or(own_vdso.start);
    let own_vvar_len: u64 = own
        .iter()
        .filter(|m| m.name != "[vdso]")
        .map(|m| m.len())
        .sum();
    let new_base = target_vvar.map(|v| v.start).unwrap_or(tvdso.start);
    let fits = own_vdso.len() == tvdso.end - tvdso.start
        && target_vvar.map(|v| v.end - v.start).unwrap_or(0) == own_vvar_len
        && tvdso.start - new_base == own_vdso.start - own_base;
    if !fits {
        return Err(Error::InvalidOptions(format!(
            "the saved vdso/vvar layout ({:#x}-{:#x}) differs from this kernel's: restore on the kernel it was dumped on",
            new_base, tvdso.end
        )));
    }
    if new_base == own_base {
        return Ok(());
    }
    let own_end = own.iter().map(|m| m.end).max().unwrap_or(own_vdso.end);
    let overlaps = new_base < own_end && own_base < tvdso.end;
    let mut moves: Vec<(u64, u64, u64)> = Vec::new(); // (from, len, to)
    if overlaps {
        for m in own {
            moves.push((m.start, m.len(), layout.bounce + (m.start - own_base)));
        }
        for m in own {
            moves.push((
                layout.bounce + (m.start - own_base),
                m.len(),
                new_base + (m.start - own_base),
            ));
        }
    } else {
        for m in own {
            moves.push((m.start, m.len(), new_base + (m.start - own_base)));
        }
    }
    for (from, len, to) in moves {
        ctl.sys(
            "mremap(vdso)",
            libc::SYS_mremap,
            [
                from,
                len,
                len,
                (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64,
                to,
                0,
            ],
        )?;
    }
    Ok(())
}

const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;

fn restore_timers(ctl: &Ctl, t: &pb::TaskTimersEntry) -> Result<()> {
    for (which, it) in [
        (libc::ITIMER_REAL, &t.real),
        (libc::ITIMER_VIRTUAL, &t.virt),
        (libc::ITIMER_PROF, &t.prof),
    ] {
        if it.isec == 0 && it.iusec == 0 && it.vsec == 0 && it.vusec == 0 {
            continue;
        }
        let a = ctl.put(D_ARGS, &u64s_bytes(&[it.isec, it.iusec, it.vsec, it.vusec]))?;
        ctl.sys(
            "setitimer",
            libc::SYS_setitimer,
            [which as u64, a, 0, 0, 0, 0],
        )?;
    }
    if t.posix.is_empty() {
        return Ok(());
    }
    ctl.sys(
        "prctl(PR_TIMER_CREATE_RESTORE_IDS, on)",
        libc::SYS_prctl,
        [PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0, 0],
    )?;
    for p in &t.posix {
        let mut sev = vec![0u8; 64];
        sev[0..8].copy_from_slice(&p.sival_ptr.to_ne_bytes());
        sev[8..12].copy_from_slice(&(p.si_signo as i32).to_ne_bytes());
        sev[12..16].copy_from_slice(&(p.it_sigev_notify as i32).to_ne_bytes());
        sev[16..20].copy_from_slice(&p.notify_thread_id.unwrap_or(0).to_ne_bytes());
        let sev_addr = ctl.put(D_ARGS, &sev)?;
        let id_addr = ctl.put(D_ARGS + 64, &(p.it_id as i32).to_ne_bytes())?;
        ctl.sys(
            "timer_create",
            libc::SYS_timer_create,
            [p.clock_id as u64, sev_addr, id_addr, 0, 0, 0],
        )?;
        let its = ctl.put(
            D_ARGS + 128,
            &u64s_bytes(&[p.isec, p.insec, p.vsec, p.vnsec]),
        )?;
        ctl.sys(
            "timer_settime",
            libc::SYS_timer_settime,
            [p.it_id as u64, 0, its, 0, 0, 0],
        )?;
    }
    ctl.sys(
        "prctl(PR_TIMER_CREATE_RESTORE_IDS, off)",
        libc::SYS_prctl,
        [PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0, 0],
    )?;
    Ok(())
}

fn restore_creds(ctl: &Ctl, c: &pb::CredsEntry) -> Result<()> {
    let me = procfs::status(std::process::id() as pid_t, None)?;
    let words = |v: &[u32]| -> u64 {
        v.first().copied().unwrap_or(0) as u64 | (v.get(1).copied().unwrap_or(0) as u64) << 32
    };
    let same_ids = me.uids == [c.uid, c.euid, c.suid, c.fsuid]
        && me.gids == [c.gid, c.egid, c.sgid, c.fsgid]
        && me.groups == c.groups;
    let same_caps = me.cap_inh == words(&c.cap_inh)
        && me.cap_prm == words(&c.cap_prm)
        && me.cap_eff == words(&c.cap_eff)
        && me.cap_bnd == words(&c.cap_bnd)
        && me.cap_amb == words(&c.cap_amb);
    if same_ids && same_caps && c.secbits == 0 {
        return Ok(());
    }
    let prctl =
        |what: &str, a: u64, b: u64, c2: u64| ctl.sys(what, libc::SYS_prctl, [a, b, c2, 0, 0, 0]);
    // Bounding set first, while we still hold CAP_SETPCAP.
    let bnd = words(&c.cap_bnd);
    for cap in 0..64u64 {
        if bnd & (1 << cap) == 0 && me.cap_bnd & (1 << cap) != 0 {
            prctl(
                "prctl(PR_CAPBSET_DROP)",
                libc::PR_CAPBSET_DROP as u64,
                cap,
                0,
            )?;
        }
    }
    // Keep every capability, effective ones too, across the uid change (KEEP_CAPS and
    // NO_SETUID_FIXUP): the saved securebits and capabilities are set after it, and setting
    // securebits needs CAP_SETPCAP in the effective set.
    const SECBIT_NO_SETUID_FIXUP: u64 = 1 << 2;
    const SECBIT_KEEP_CAPS: u64 = 1 << 4;
    prctl(
        "prctl(PR_SET_SECUREBITS)",
        libc::PR_SET_SECUREBITS as u64,
        SECBIT_KEEP_CAPS | SECBIT_NO_SETUID_FIXUP,
        0,
    )?;
    let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_ne_bytes()).collect();
    let ga = ctl.put(D_BIG, &groups)?;
    ctl.sys(
        "setgroups",
        libc::SYS_setgroups,
        [c.groups.len() as u64, ga, 0, 0, 0, 0],
    )?;
    ctl.sys(
        "setresgid",
        libc::SYS_setresgid,
        [c.gid as u64, c.egid as u64, c.sgid as u64, 0, 0, 0],
    )?;
    ctl.sys(
        "setfsgid",
        libc::SYS_setfsgid,
        [c.fsgid as u64, 0, 0, 0, 0, 0],
    )?;
    ctl.sys(
        "setresuid",
        libc::SYS_setresuid,
        [c.uid as u64, c.euid as u64, c.suid as u64, 0, 0, 0],
    )?;
    ctl.sys(
        "setfsuid",
        libc::SYS_setfsuid,
        [c.fsuid as u64, 0, 0, 0, 0, 0],
    )?;
    prctl(
        "prctl(PR_SET_SECUREBITS)",
        libc::PR_SET_SECUREBITS as u64,
        c.secbits as u64,
        0,
    )?;
    // capset v3: header {version, pid} then two {effective, permitted, inheritable}.
    let (eff, prm, inh) = (words(&c.cap_eff), words(&c.cap_prm), words(&c.cap_inh));
    let mut b = Vec::new();
    b.extend_from_slice(&0x2008_0522u32.to_ne_bytes());
    b.extend_from_slice(&0i32.to_ne_bytes());
    for half in [0, 32] {
        for v in [eff, prm, inh] {
            b.extend_from_slice(&((v >> half) as u32).to_ne_bytes());
        }
    }
    let hdr = ctl.put(D_ARGS, &b)?;
    ctl.sys("capset", libc::SYS_capset, [hdr, hdr + 8, 0, 0, 0, 0])?;
    let amb = words(&c.cap_amb);
    for cap in 0..64u64 {
        if amb & (1 << cap) != 0 {
            prctl(
                "prctl(PR_CAP_AMBIENT_RAISE)",
                libc::PR_CAP_AMBIENT as u64,
                libc::PR_CAP_AMBIENT_RAISE as u64,
                cap,
            )?;
        }
    }
    Ok(())
}

fn restore_seccomp(ctl: &Ctl, sc: &pb::SeccompEntry, oldest: u32) -> Result<()> {
    // The thread names its oldest filter; `prev` links lead to newer ones. Install oldest first.
    let mut idx = Some(oldest);
    let mut steps = 0;
    while let Some(i) = idx {
        let f = sc.seccomp_filters.get(i as usize).ok_or_else(|| {
            Error::InvalidOptions(format!("seccomp filter {i} missing from seccomp.img"))
        })?;
        steps += 1;
        if steps > sc.seccomp_filters.len() {
            return Err(Error::InvalidOptions("seccomp.img has a cycle".into()));
        }
        let prog_addr = ctl.put(D_BIG + 16, &f.filter)?;
        let mut fprog = Vec::new();
        fprog.extend_from_slice(&((f.filter.len() / 8) as u16).to_ne_bytes());
        fprog.extend_from_slice(&[0u8; 6]);
        fprog.extend_from_slice(&prog_addr.to_ne_bytes());
        let a = ctl.put(D_BIG, &fprog)?;
        ctl.sys(
            "seccomp(SET_MODE_FILTER)",
            libc::SYS_seccomp,
            [1, f.flags.unwrap_or(0) as u64, a, 0, 0, 0],
        )?;
        idx = f.prev;
    }
    Ok(())
}
