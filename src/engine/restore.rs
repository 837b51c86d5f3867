//! `criu restore`: rebuild a task from its images.
//!
//! The new task starts as a fork of the restorer (clone3 with the saved pid) and does what it can
//! in ordinary Rust: it builds every VMA at a temporary address and fills it from the pages file,
//! reopens its files, sets its signal handlers and limits, then waits. The restorer, as its
//! ptrace tracer, finishes with syscalls run inside it: unmap the restorer's own memory, move the
//! VMAs and the vdso into place (mremap moves pages without copying), PR_SET_MM_MAP, timers,
//! credentials, seccomp; then it loads the saved registers and lets the task go.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{IntoRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::time::Instant;

use libc::pid_t;

use crate::engine::{Notify, RestoreOutcome};
use crate::error::{Error, Result};
use crate::files::FileImages;
use crate::images::{pages_file_name, ImageDir, Kind, IMG_VERSION};
use crate::mem::{self, Layout};
use crate::options::Options;
use crate::pb;
use crate::procfs;
use crate::regs;
use crate::signals;
use crate::sys::clone::{fork_with_pid, Forked};
use crate::sys::fd as sysfd;
use crate::sys::inject::Injector;
use crate::sys::mem::{write_remote, PAGE_SIZE};
use crate::sys::ptrace::{
    Stop, Tracee, PTRACE_O_EXITKILL, PTRACE_O_SUSPEND_SECCOMP, PTRACE_O_TRACESYSGOOD,
};
use crate::sys::task as systask;

/// One process's images.
struct TaskImage {
    pid: pid_t,
    pstree: pb::PstreeEntry,
    core: pb::CoreEntry,
    mm: pb::MmEntry,
    pagemap: Vec<pb::PagemapEntry>,
    pages_id: u32,
    fs: pb::FsEntry,
    fdinfo: Vec<pb::FdinfoEntry>,
}

impl TaskImage {
    fn load(dir: &ImageDir, pstree: pb::PstreeEntry) -> Result<TaskImage> {
        let pid = pstree.pid as pid_t;
        let core: pb::CoreEntry = dir.read_one(Kind::Core, pid)?;
        if core.mtype != pb::core_entry::March::X8664 as i32 {
            return Err(Error::image(
                dir.file(&Kind::Core.file_name(pid)),
                "not an x86-64 task",
            ));
        }
        if core.thread_info.is_none() || core.tc.is_none() {
            return Err(Error::image(
                dir.file(&Kind::Core.file_name(pid)),
                "no thread info or task core",
            ));
        }
        let ids: pb::TaskKobjIdsEntry = dir.read_one(Kind::Ids, pid)?;
        let mm: pb::MmEntry = dir.read_one(Kind::Mm, pid)?;
        let mut pm = dir.open(Kind::Pagemap, pid)?;
        let head: pb::PagemapHead = pm
            .read_entry()?
            .ok_or_else(|| Error::image(pm.path().to_owned(), "no pagemap head"))?;
        let pagemap = pm.collect_all()?;
        let fs: pb::FsEntry = dir.read_one(Kind::Fs, pid)?;
        let fdinfo = dir.read_all_optional(Kind::Fdinfo, ids.files_id)?;
        Ok(TaskImage {
            pid,
            pstree,
            core,
            mm,
            pagemap,
            pages_id: head.pages_id,
            fs,
            fdinfo,
        })
    }

    fn tc(&self) -> &pb::TaskCoreEntry {
        self.core.tc.as_ref().expect("checked on load")
    }

    fn thread_core(&self) -> Option<&pb::ThreadCoreEntry> {
        self.core.thread_core.as_ref()
    }
}

/// What the new task reports once it has built itself.
struct Ready {
    exe_fd: RawFd,
    pages_restored: u64,
}

fn write_msg(fd: RawFd, status: u32, body: &[u8]) {
    let mut m = Vec::with_capacity(8 + body.len());
    m.extend_from_slice(&status.to_ne_bytes());
    m.extend_from_slice(&(body.len() as u32).to_ne_bytes());
    m.extend_from_slice(body);
    let _ = nix::unistd::write(sysfd::borrow(fd), &m);
}

fn read_msg(fd: &mut File) -> Result<(u32, Vec<u8>)> {
    let mut hdr = [0u8; 8];
    fd.read_exact(&mut hdr)
        .map_err(|e| Error::io("read the restored task's report", e))?;
    let status = u32::from_ne_bytes(hdr[0..4].try_into().unwrap());
    let len = u32::from_ne_bytes(hdr[4..8].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len.min(1 << 20)];
    fd.read_exact(&mut body)
        .map_err(|e| Error::io("read the restored task's report", e))?;
    Ok((status, body))
}

fn pipe() -> Result<(File, File)> {
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe", e))?;
    Ok((File::from(r), File::from(w)))
}

pub fn restore(opts: &Options, notify: &mut dyn Notify) -> Result<RestoreOutcome> {
    let t_start = Instant::now();
    let dir = ImageDir::new(&opts.images_dir);
    let inv: pb::InventoryEntry = dir.read_one(Kind::Inventory, "")?;
    if inv.img_version != IMG_VERSION {
        return Err(Error::image(
            dir.file("inventory.img"),
            format!("image version {} (expected {IMG_VERSION})", inv.img_version),
        ));
    }
    let pstree: Vec<pb::PstreeEntry> = dir.read_all(Kind::Pstree, "")?;
    let root = pstree
        .first()
        .cloned()
        .ok_or_else(|| Error::image(dir.file("pstree.img"), "no task"))?;
    if pstree.len() > 1 || root.threads.len() > 1 {
        return Err(Error::InvalidOptions(
            "restoring process trees and threads is not supported yet".into(),
        ));
    }
    let task = TaskImage::load(&dir, root)?;
    let files = FileImages::load(&dir)?;
    let seccomp: Option<pb::SeccompEntry> = if dir.exists(Kind::Seccomp, "") {
        Some(dir.read_one(Kind::Seccomp, "")?)
    } else {
        None
    };
    let pages = File::open(dir.file(&pages_file_name(task.pages_id))).map_err(|e| {
        Error::image(
            dir.file(&pages_file_name(task.pages_id)),
            format!("cannot open: {e}"),
        )
    })?;
    check_pages_size(&task, &pages, &dir)?;

    for &tid in &task.pstree.threads {
        if systask::pid_in_use(tid as pid_t) {
            return Err(Error::PidTaken(tid as pid_t));
        }
    }
    if single_threaded().is_err() {
        return Err(Error::InvalidOptions(
            "restore must run in a single-threaded process".into(),
        ));
    }

    // Layout of the temporary build area, reserved here so that the new task inherits the
    // reservation and nothing of ours can be placed there meanwhile.
    let own = procfs::maps(std::process::id() as pid_t)?;
    let vdso_len: u64 = own
        .iter()
        .filter(|m| matches!(m.name.as_str(), "[vdso]" | "[vvar]" | "[vvar_vclock]"))
        .map(|m| m.len())
        .sum();
    let layout = mem::plan_layout(&task.mm.vmas, &own, vdso_len)?;
    crate::sys::mm::reserve(layout.base, layout.len)?;
    let unreserve = scopeguard(layout.base, layout.len);

    notify.notify("pre-restore", 0, None)?;
    let (go_r, mut go_w) = pipe()?;
    let (mut ready_r, ready_w) = pipe()?;
    let flags = if opts.restore_sibling {
        libc::CLONE_PARENT as u64
    } else {
        0
    };
    let t_fork = Instant::now();
    let child = match fork_with_pid(Some(task.pid), flags)? {
        Forked::Child => {
            drop(go_w);
            drop(ready_r);
            child_main(&task, &files, &layout, pages, opts.shell_job, go_r, ready_w)
        }
        Forked::Parent(child) => child,
    };
    drop(go_r);
    drop(ready_w);
    drop(pages);
    let is_our_child = !opts.restore_sibling;
    let kill_child = |e: Error| -> Error {
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), nix::sys::signal::SIGKILL);
        if is_our_child {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child), None);
        }
        e
    };
    // Attach before the task does anything: if we die, PTRACE_O_EXITKILL takes it with us.
    let tracee = match Tracee::seize(
        child,
        PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL | PTRACE_O_SUSPEND_SECCOMP,
    ) {
        Ok(t) => t,
        Err(e) => return Err(kill_child(e)),
    };
    let _ = go_w.write_all(&[1]);
    drop(go_w);
    let forking_time = t_fork.elapsed();
    let ready = match read_msg(&mut ready_r) {
        Ok((0, body)) if body.len() == 12 => Ready {
            exe_fd: i32::from_ne_bytes(body[0..4].try_into().unwrap()),
            pages_restored: u64::from_ne_bytes(body[4..12].try_into().unwrap()),
        },
        Ok((_, body)) => {
            let msg = String::from_utf8_lossy(&body).into_owned();
            return Err(kill_child(Error::task(
                task.pid,
                format!("restore failed: {msg}"),
            )));
        }
        Err(e) => {
            return Err(kill_child(Error::task(
                task.pid,
                format!("restored task died before it was ready ({e})"),
            )))
        }
    };
    // The task closes its end right after reporting: wait for that, so no fd of ours is left.
    let mut rest = Vec::new();
    let _ = ready_r.read_to_end(&mut rest);
    drop(unreserve);
    let result = finalize(&tracee, &task, seccomp.as_ref(), &layout, &ready, notify);
    if let Err(e) = result {
        return Err(kill_child(e));
    }
    if let Some(sig) = task
        .tc()
        .stop_signo
        .filter(|_| task.tc().task_state == crate::engine::dump::TASK_STOPPED)
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child),
            nix::sys::signal::Signal::try_from(sig as i32).ok(),
        );
    }
    // The task runs: like CRIU, a failing post-resume (or pre-resume) is only reported.
    if let Err(e) = notify.notify("post-resume", child, None) {
        log::error!("post-resume: {e}");
    }
    if let Some(p) = &opts.pidfile {
        let path = if p.is_absolute() {
            p.clone()
        } else {
            opts.work_dir().join(p)
        };
        std::fs::write(&path, format!("{child}"))
            .map_err(|e| Error::io(format!("write pidfile {}", path.display()), e))?;
    }
    write_stats(&dir, forking_time, t_start.elapsed(), ready.pages_restored)?;
    log::info!("restored pid {child}");
    Ok(RestoreOutcome { pid: child })
}

/// Unmaps our copy of the build-area reservation when the restore no longer needs it.
struct Unreserve(u64, u64);
fn scopeguard(base: u64, len: u64) -> Unreserve {
    Unreserve(base, len)
}
impl Drop for Unreserve {
    fn drop(&mut self) {
        let _ = crate::sys::mm::munmap(self.0, self.1);
    }
}

fn single_threaded() -> Result<()> {
    let n = procfs::threads(std::process::id() as pid_t)?.len();
    if n == 1 {
        Ok(())
    } else {
        Err(Error::InvalidOptions(format!("{n} threads")))
    }
}

fn check_pages_size(task: &TaskImage, pages: &File, dir: &ImageDir) -> Result<()> {
    let want: u64 = task
        .pagemap
        .iter()
        .filter(|p| p.flags.unwrap_or(crate::images::PE_PRESENT) & crate::images::PE_PRESENT != 0)
        .map(|p| p.nr_pages.unwrap_or(p.compat_nr_pages as u64) * PAGE_SIZE)
        .sum();
    let have = pages
        .metadata()
        .map_err(|e| Error::io("stat pages image", e))?
        .len();
    if have < want {
        return Err(Error::image(
            dir.file(&pages_file_name(task.pages_id)),
            format!("truncated: {have} bytes, the pagemap needs {want}"),
        ));
    }
    Ok(())
}

fn write_stats(
    dir: &ImageDir,
    forking: std::time::Duration,
    total: std::time::Duration,
    pages: u64,
) -> Result<()> {
    let us = |d: std::time::Duration| d.as_micros().min(u32::MAX as u128) as u32;
    dir.write_one(
        Kind::Stats,
        "restore",
        &pb::StatsEntry {
            dump: None,
            restore: Some(pb::RestoreStatsEntry {
                pages_compared: 0,
                pages_skipped_cow: 0,
                forking_time: us(forking),
                restore_time: us(total),
                pages_restored: Some(pages),
            }),
        },
    )
}

// ---------------------------------------------------------------------------------------------
// The new task's side

fn child_main(
    task: &TaskImage,
    files: &FileImages,
    layout: &Layout,
    pages: File,
    shell_job: bool,
    mut go_r: File,
    ready_w: File,
) -> ! {
    // Nothing of ours may print into what will become the task's fds.
    log::set_max_level(log::LevelFilter::Off);
    std::panic::set_hook(Box::new(|_| {}));
    let _ = crate::sys::signal::block_all();
    let mut ready = ready_w.into_raw_fd();
    let mut go = [0u8; 1];
    if go_r.read_exact(&mut go).is_err() {
        crate::sys::process::exit_now(1);
    }
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        build_self(task, files, layout, pages, shell_job, go_r, &mut ready)
    }));
    let msg = match r {
        Ok(Ok(())) => {
            sysfd::close(ready);
            crate::sys::process::park_forever()
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "panic while restoring".to_owned(),
    };
    write_msg(ready, 1, msg.as_bytes());
    crate::sys::process::exit_now(1)
}

fn build_self(
    task: &TaskImage,
    files: &FileImages,
    layout: &Layout,
    pages: File,
    shell_job: bool,
    go_r: File,
    ready: &mut RawFd,
) -> Result<()> {
    let ps = &task.pstree;
    if ps.sid as pid_t == task.pid {
        nix::unistd::setsid().map_err(|e| Error::sys("setsid", e))?;
    } else if !shell_job {
        return Err(Error::InvalidOptions(format!(
            "session {} is outside the restored tree",
            ps.sid
        )));
    }
    if ps.pgid as pid_t == task.pid && ps.sid as pid_t != task.pid {
        nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))
            .map_err(|e| Error::sys("setpgid", e))?;
    }

    let pages_restored = mem::premap(
        &task.mm.vmas,
        layout,
        &task.pagemap,
        &pages,
        &|id, flags| files.open_path(id, flags),
    )?;
    drop(pages);
    let exe = files.open_path(task.mm.exe_file_id, libc::O_RDONLY)?;
    build_ctrl(layout)?;

    let mut keep = [*ready, exe.into_raw_fd(), go_r.into_raw_fd()];
    let r = crate::files::restore_fds(&task.fdinfo, files, &mut keep, shell_job);
    *ready = keep[0];
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
        if let Some(sig) = th.pdeath_sig.filter(|&s| s != 0) {
            crate::sys::process::prctl(libc::PR_SET_PDEATHSIG, sig as u64)?;
        }
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

    let mut body = Vec::with_capacity(12);
    body.extend_from_slice(&exe_fd.to_ne_bytes());
    body.extend_from_slice(&pages_restored.to_ne_bytes());
    write_msg(*ready, 0, &body);
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

// ---------------------------------------------------------------------------------------------
// The tracer's side

/// Offsets in the control data area.
const D_MM_MAP: u64 = 0;
const D_AUXV: u64 = 256;
const D_ARGS: u64 = 8 << 10;
const D_BIG: u64 = 16 << 10;

struct Ctl<'a> {
    inj: Injector<'a>,
    pid: pid_t,
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

fn finalize(
    tracee: &Tracee,
    task: &TaskImage,
    seccomp: Option<&pb::SeccompEntry>,
    layout: &Layout,
    ready: &Ready,
    notify: &mut dyn Notify,
) -> Result<()> {
    let pid = task.pid;
    tracee.interrupt()?;
    loop {
        match tracee.wait()? {
            Stop::Event(_) => break,
            Stop::Signal(_) | Stop::Syscall | Stop::OtherEvent(_) => tracee.cont(0)?,
            s => {
                return Err(Error::task(
                    pid,
                    format!("restored task ended early: {s:?}"),
                ))
            }
        }
    }
    let stopped_regs = tracee.get_regs()?;
    let own_rseq = tracee.rseq_config()?;
    let child_maps = procfs::maps(pid)?;
    let ctl = Ctl {
        inj: Injector::new(tracee, stopped_regs, layout.ctrl),
        pid,
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

    // 6. Per-thread kernel state that points into the task's memory.
    let ti = task.core.thread_info.as_ref().expect("checked on load");
    ctl.sys(
        "set_tid_address",
        libc::SYS_set_tid_address,
        [ti.clear_tid_addr, 0, 0, 0, 0, 0],
    )?;
    if let Some(th) = task.thread_core() {
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
    }
    let tc = task.tc();
    ctl.sys(
        "personality",
        libc::SYS_personality,
        [tc.personality as u64, 0, 0, 0, 0, 0],
    )?;
    if let Some(t) = &tc.timers {
        restore_timers(&ctl, t)?;
    }
    notify.notify("post-restore", pid, None)?;
    // 7. Credentials, then what depends on them.
    if let Some(creds) = task.thread_core().and_then(|t| t.creds.as_ref()) {
        restore_creds(&ctl, creds)?;
    }
    if let Some(d) = mm.dumpable {
        ctl.sys(
            "prctl(PR_SET_DUMPABLE)",
            libc::SYS_prctl,
            [libc::PR_SET_DUMPABLE as u64, d as u64, 0, 0, 0, 0],
        )?;
    }
    if let Some(creds) = task.thread_core().and_then(|t| t.creds.as_ref()) {
        if creds.no_new_privs == Some(1) {
            ctl.sys(
                "prctl(PR_SET_NO_NEW_PRIVS)",
                libc::SYS_prctl,
                [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0, 0],
            )?;
        }
    }
    if let (Some(th), Some(sc)) = (task.thread_core(), seccomp) {
        if let Some(first) = th.seccomp_filter {
            restore_seccomp(&ctl, sc, first)?;
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
    let xstate = regs::fpregs_from_image(&ti.fpregs, xsize)?;
    tracee.set_xstate(&xstate)?;
    for d in ti.tls.iter().filter(|d| !d.seg_not_present) {
        tracee.set_thread_area(regs::tls_from_image(d))?;
    }
    let mut r = regs::gpregs_from_image(&ti.gpregs)?;
    r.orig_rax = u64::MAX;
    tracee.set_regs(&r)?;
    let blocked = task
        .thread_core()
        .and_then(|t| t.blk_sigset)
        .unwrap_or(tc.blk_sigset);
    tracee.set_sigmask(blocked)?;
    if let Err(e) = notify.notify("pre-resume", pid, None) {
        log::error!("pre-resume: {e}");
    }
    tracee.set_options(PTRACE_O_TRACESYSGOOD)?; // drop EXITKILL: the task is complete
    Tracee::attached(pid).detach(0)?;
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
    // Keep capabilities across the uid change; securebits are set after.
    prctl("prctl(PR_SET_KEEPCAPS)", libc::PR_SET_KEEPCAPS as u64, 1, 0)?;
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
    prctl(
        "prctl(PR_SET_SECUREBITS)",
        libc::PR_SET_SECUREBITS as u64,
        c.secbits as u64,
        0,
    )?;
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
