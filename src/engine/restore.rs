//! `criu restore`: rebuild a process tree from its images.
//!
//! The restorer builds every task's memory in its own address space (at temporary addresses
//! free in all the final layouts) and forks the root with clone3 and the saved pid; each task
//! forks its children the same way, so the tree, its sessions and process groups come back as
//! they were (a session or group whose leader was gone is made by a short-lived `Helper` with the
//! leader's pid), and every task inherits the memory built for it. The tasks then do what they can
//! in ordinary Rust (files, signal handlers, limits, threads) and park. The restorer, as their
//! ptrace tracer, finishes each with syscalls run inside it (see `finalize`) and lets them go.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use libc::pid_t;

use crate::engine::dump::{TASK_DEAD, TASK_STOPPED};
use crate::engine::finalize::finalize;
use crate::engine::restore_task::run_task;
use crate::engine::{Notify, RestoreOutcome};
use crate::error::{Error, Result};
use crate::files::FileImages;
use crate::images::pages::{open_pages, PageFile};
use crate::images::{ImageDir, Kind, IMG_VERSION};
use crate::mem::{self, Layout, LayoutRequest};
use crate::options::Options;
use crate::pb;
use crate::procfs;
use crate::sys::clone::{fork_with_pid, Forked};
use crate::sys::ptrace::{
    Tracee, PTRACE_O_EXITKILL, PTRACE_O_SUSPEND_SECCOMP, PTRACE_O_TRACESYSGOOD,
};
use crate::sys::task as systask;

/// One live process's images.
pub struct TaskImage {
    pub pid: pid_t,
    pub pstree: pb::PstreeEntry,
    pub core: pb::CoreEntry,
    /// Every other thread: tid and core.
    pub threads: Vec<(pid_t, pb::CoreEntry)>,
    pub ids: pb::TaskKobjIdsEntry,
    pub mm: pb::MmEntry,
    /// The pagemap with pages of earlier iterations resolved, and where their data is.
    pub pagemap: Vec<pb::PagemapEntry>,
    pub pages: PageFile,
    pub fs: pb::FsEntry,
    pub fdinfo: Vec<pb::FdinfoEntry>,
}

impl TaskImage {
    fn load(dir: &ImageDir, pstree: pb::PstreeEntry, core: pb::CoreEntry) -> Result<TaskImage> {
        let pid = pstree.pid as pid_t;
        if core.thread_info.is_none() {
            return Err(Error::image(
                dir.file(&Kind::Core.file_name(pid)),
                "no thread info",
            ));
        }
        let mut threads = Vec::new();
        for &tid in pstree.threads.iter().filter(|&&t| t as pid_t != pid) {
            let c: pb::CoreEntry = dir.read_one(Kind::Core, tid)?;
            if c.thread_info.is_none() || c.thread_core.is_none() {
                return Err(Error::image(
                    dir.file(&Kind::Core.file_name(tid)),
                    "no thread info or thread core",
                ));
            }
            threads.push((tid as pid_t, c));
        }
        let ids: pb::TaskKobjIdsEntry = dir.read_one(Kind::Ids, pid)?;
        let mm: pb::MmEntry = dir.read_one(Kind::Mm, pid)?;
        let (pagemap, pages) = open_pages(dir, Kind::Pagemap, pid as u64)?
            .ok_or_else(|| Error::image(dir.file(&Kind::Pagemap.file_name(pid)), "missing"))?;
        let fs: pb::FsEntry = dir.read_one(Kind::Fs, pid)?;
        let fdinfo = dir.read_all_optional(Kind::Fdinfo, ids.files_id)?;
        Ok(TaskImage {
            pid,
            pstree,
            core,
            threads,
            ids,
            mm,
            pagemap,
            pages,
            fs,
            fdinfo,
        })
    }

    pub fn tc(&self) -> &pb::TaskCoreEntry {
        self.core.tc.as_ref().expect("checked on load")
    }

    pub fn thread_core(&self) -> Option<&pb::ThreadCoreEntry> {
        self.core.thread_core.as_ref()
    }

    /// Every thread's tid and core, the leader first.
    pub fn all_threads(&self) -> impl Iterator<Item = (pid_t, &pb::CoreEntry)> {
        std::iter::once((self.pid, &self.core)).chain(self.threads.iter().map(|(t, c)| (*t, c)))
    }
}

/// A process of the tree: alive, or a zombie (only its exit status survives).
pub enum Proc {
    Alive(Box<TaskImage>),
    Zombie {
        pstree: pb::PstreeEntry,
        exit_code: u32,
    },
}

impl Proc {
    pub fn pstree(&self) -> &pb::PstreeEntry {
        match self {
            Proc::Alive(t) => &t.pstree,
            Proc::Zombie { pstree, .. } => pstree,
        }
    }

    pub fn pid(&self) -> pid_t {
        self.pstree().pid as pid_t
    }
}

/// Everything the tasks need, computed before the first fork (each task gets a copy with it).
pub struct Plan {
    /// In pstree order: parents before children; [0] is the root.
    pub procs: Vec<Proc>,
    pub children: Vec<Vec<usize>>,
    /// Build area of each live process (None for zombies).
    pub layouts: Vec<Option<Layout>>,
    pub files: FileImages,
    /// Shared anonymous objects: shmid and where the restorer built it.
    pub shared: Vec<(u64, u64)>,
    /// Per process, per VMA: the parent's VMA it inherits (copy-on-write), if any.
    pub inherit: Vec<Vec<Option<usize>>>,
    /// Every file description of the tree, opened by the restorer before the first fork so that
    /// tasks sharing one (a pipe, a socket pair, a file offset) get the same: file id → fd.
    pub pool: crate::files::Pool,
    pub parent: Vec<Option<usize>>,
    /// Stand-ins for session and group leaders that were gone at checkpoint time.
    pub helpers: Vec<Helper>,
    pub shell_job: bool,
    /// Per process, then per helper: the pipe it waits on for "go" (read end, write end).
    pub go: Vec<(RawFd, RawFd)>,
    /// All processes report on this pipe (write end), the restorer reads (read end).
    pub report: (RawFd, RawFd),
    /// The root is the init of a pid namespace of its own (see pidns): it is forked into a
    /// fresh one, and the pids of the images are that namespace's.
    pub new_pidns: bool,
}

/// A process that exists only during the restore, with the pid of a session or process group
/// leader that was gone at checkpoint time (a daemon's parent after a double fork): it creates
/// the session (setsid) or group (setpgid) with the right id, forks the processes that need to
/// be born into its session, waits until every member of its group has joined, and exits; the
/// process that forked it reaps it, so nothing of it remains.
#[derive(Clone, Debug)]
pub struct Helper {
    pub pid: pid_t,
    /// The process that forks it (index into `Plan::procs`); None: the restorer, for the root.
    pub parent: Option<usize>,
    /// It leads a session (setsid); otherwise only a process group (setpgid).
    pub session: bool,
    /// Children of `parent` it forks with CLONE_PARENT, so that they are born in its session.
    pub adopted: Vec<usize>,
}

impl Plan {
    /// Whether process `idx` shares its fd table (CLONE_FILES) with its parent: it is forked
    /// with CLONE_FILES and leaves the table to the process at the top of the sharers.
    pub fn shares_files_with_parent(&self, idx: usize) -> bool {
        let (Some(p), Proc::Alive(t)) = (self.parent[idx], &self.procs[idx]) else {
            return false;
        };
        matches!(&self.procs[p], Proc::Alive(pt) if pt.ids.files_id == t.ids.files_id)
    }

    /// The processes that share the fd table of process `top` and are forked into it (in plan
    /// order), when `top` is the one that builds it.
    pub fn table_followers(&self, top: usize) -> Vec<usize> {
        let Proc::Alive(t) = &self.procs[top] else {
            return Vec::new();
        };
        if self.shares_files_with_parent(top) {
            return Vec::new();
        }
        (0..self.procs.len())
            .filter(|&i| i != top)
            .filter(
                |&i| matches!(&self.procs[i], Proc::Alive(u) if u.ids.files_id == t.ids.files_id),
            )
            .collect()
    }

    /// The helper that forks process `idx` into its session, if any.
    pub fn adopter(&self, idx: usize) -> Option<&Helper> {
        self.helpers.iter().find(|h| h.adopted.contains(&idx))
    }
}

/// What a task reports on the shared pipe. Each message is one write under PIPE_BUF, so reports
/// of several tasks never interleave.
pub const REPORT_CREATED: u32 = 1;
pub const REPORT_READY: u32 = 2;
pub const REPORT_ERROR: u32 = 3;
const REPORT_MAX: usize = 3000;

pub fn report(fd: RawFd, pid: pid_t, kind: u32, body: &[u8]) {
    let body = &body[..body.len().min(REPORT_MAX)];
    let mut m = Vec::with_capacity(12 + body.len());
    m.extend_from_slice(&pid.to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&(body.len() as u32).to_ne_bytes());
    m.extend_from_slice(body);
    let _ = nix::unistd::write(crate::sys::fd::borrow(fd), &m);
}

fn read_report(r: &mut File) -> Result<(pid_t, u32, Vec<u8>)> {
    let mut hdr = [0u8; 12];
    r.read_exact(&mut hdr)
        .map_err(|e| Error::io("read the restored tasks' reports", e))?;
    let pid = i32::from_ne_bytes(hdr[0..4].try_into().unwrap());
    let kind = u32::from_ne_bytes(hdr[4..8].try_into().unwrap());
    let len = (u32::from_ne_bytes(hdr[8..12].try_into().unwrap()) as usize).min(REPORT_MAX);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)
        .map_err(|e| Error::io("read the restored tasks' reports", e))?;
    Ok((pid, kind, body))
}

/// What a task reports when it is ready for the tracer.
pub struct Ready {
    pub exe_fd: RawFd,
}

fn raw_pipe() -> Result<(RawFd, RawFd)> {
    use std::os::fd::IntoRawFd;
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe", e))?;
    Ok((r.into_raw_fd(), w.into_raw_fd()))
}

fn load_plan(dir: &ImageDir, opts: &Options) -> Result<Plan> {
    let inv: pb::InventoryEntry = dir.read_one(Kind::Inventory, "")?;
    if inv.img_version != IMG_VERSION && inv.img_version != crate::images::IMG_VERSION_COW {
        return Err(Error::image(
            dir.file("inventory.img"),
            format!("image version {} (expected {IMG_VERSION})", inv.img_version),
        ));
    }
    let pstree: Vec<pb::PstreeEntry> = dir.read_all(Kind::Pstree, "")?;
    if pstree.is_empty() {
        return Err(Error::image(dir.file("pstree.img"), "no task"));
    }
    let mut procs = Vec::with_capacity(pstree.len());
    for e in pstree {
        let pid = e.pid as pid_t;
        let core: pb::CoreEntry = dir.read_one(Kind::Core, pid)?;
        if core.mtype != pb::core_entry::March::X8664 as i32 {
            return Err(Error::image(
                dir.file(&Kind::Core.file_name(pid)),
                "not an x86-64 task",
            ));
        }
        let tc = core
            .tc
            .as_ref()
            .ok_or_else(|| Error::image(dir.file(&Kind::Core.file_name(pid)), "no task core"))?;
        if tc.task_state == TASK_DEAD {
            let exit_code = tc.exit_code;
            procs.push(Proc::Zombie {
                pstree: e,
                exit_code,
            });
        } else {
            procs.push(Proc::Alive(Box::new(TaskImage::load(dir, e, core)?)));
        }
    }
    if !matches!(procs[0], Proc::Alive(_)) {
        return Err(Error::image(
            dir.file("pstree.img"),
            "the root task is dead",
        ));
    }
    // Parents come before their children in pstree.img.
    let mut children = vec![Vec::new(); procs.len()];
    for i in 1..procs.len() {
        let ppid = procs[i].pstree().ppid as pid_t;
        let parent = procs[..i]
            .iter()
            .position(|p| p.pid() == ppid)
            .ok_or_else(|| {
                Error::image(
                    dir.file("pstree.img"),
                    format!("parent {ppid} of {} is not before it", procs[i].pid()),
                )
            })?;
        if matches!(procs[parent], Proc::Zombie { .. }) {
            return Err(Error::image(
                dir.file("pstree.img"),
                format!("zombie {ppid} has children"),
            ));
        }
        children[parent].push(i);
    }
    let mut parent = vec![None; procs.len()];
    for (i, kids) in children.iter().enumerate() {
        for &k in kids {
            parent[k] = Some(i);
        }
    }
    let helpers = plan_helpers(&procs, &parent, opts.shell_job, opts.restore_sibling)?;
    // A root in another pid namespace than the dumper's was the init of its own.
    let new_pidns = match (&procs[0], inv.root_ids.and_then(|r| r.pid_ns_id)) {
        (Proc::Alive(t), Some(ours)) => t.ids.pid_ns_id.is_some_and(|id| id != ours),
        _ => false,
    };
    if new_pidns && (procs[0].pid() != 1 || helpers.iter().any(|h| h.parent.is_none())) {
        return Err(Error::image(
            dir.file("pstree.img"),
            "the root of a pid namespace of its own must be its pid 1, in a session it leads \
             or inherits",
        ));
    }
    check_shared_ids(&procs, &parent).map_err(|why| Error::image(dir.file("pstree.img"), why))?;
    // Private memory still shared with the parent at checkpoint time is inherited again.
    let inherit = (0..procs.len())
        .map(|i| match (&procs[i], parent[i].map(|p| &procs[p])) {
            (Proc::Alive(t), Some(Proc::Alive(p))) => mem::inherited_from(&t.mm.vmas, &p.mm.vmas),
            (Proc::Alive(t), _) => vec![None; t.mm.vmas.len()],
            _ => Vec::new(),
        })
        .collect();
    Ok(Plan {
        procs,
        children,
        layouts: Vec::new(),
        files: FileImages::load(dir)?
            .with_tcp_close(opts.tcp_close)
            .with_inherited_fds(&opts.inherit_fd)?,
        shared: Vec::new(),
        inherit,
        pool: Default::default(),
        parent,
        helpers,
        shell_job: opts.shell_job,
        go: Vec::new(),
        report: (-1, -1),
        new_pidns,
    })
}

/// Sessions and process groups we can rebuild: a session is created by its leader and inherited
/// by the processes it forks; a process group is created by its leader and joined by the others
/// once every process exists. A leader that is not in the tree (it was gone) is stood in for by
/// a helper: for a session, it is forked by the parent of the processes born into the session
/// (all must have the same parent) and forks them; for a group, it is forked by the group's
/// first live member.
///
/// The root may be born into a session whose leader is gone too: its helper is forked by the
/// restorer (not with --restore-sibling: the helper would be the caller's child, left for it to
/// reap).
fn plan_helpers(
    procs: &[Proc],
    parent: &[Option<usize>],
    shell_job: bool,
    restore_sibling: bool,
) -> Result<Vec<Helper>> {
    let root = procs[0].pstree();
    let in_tree = |pid: u32| procs.iter().any(|q| q.pid() as u32 == pid);
    let mut helpers: Vec<Helper> = Vec::new();
    for (i, p) in procs.iter().enumerate() {
        let e = p.pstree();
        let parent_sid = parent[i].map(|q| procs[q].pstree().sid);
        if e.sid == e.pid || parent_sid == Some(e.sid) || (i == 0 && shell_job) {
            continue;
        }
        if in_tree(e.sid) || (i == 0 && restore_sibling) {
            return Err(Error::InvalidOptions(format!(
                "pid {}: session {} can only be restored by its leader or a parent in it",
                e.pid, e.sid
            )));
        }
        // The root's parent is the restorer.
        let q = parent[i];
        if let (Proc::Alive(t), Some(Proc::Alive(pt))) = (p, q.map(|q| &procs[q])) {
            if t.ids.files_id == pt.ids.files_id {
                return Err(Error::InvalidOptions(format!(
                    "pid {}: born into session {} (its leader is gone) and sharing its parent's \
                     fd table: not supported",
                    e.pid, e.sid
                )));
            }
        }
        match helpers.iter_mut().find(|h| h.pid as u32 == e.sid) {
            Some(h) if h.parent == q => h.adopted.push(i),
            Some(h) => {
                return Err(Error::InvalidOptions(format!(
                    "pid {}: session {} (its leader is gone) has members born under {} and \
                     under {}: not supported",
                    e.pid,
                    e.sid,
                    h.parent.map_or(0, |p| procs[p].pid()),
                    q.map_or(0, |p| procs[p].pid())
                )))
            }
            None => helpers.push(Helper {
                pid: e.sid as pid_t,
                parent: q,
                session: true,
                adopted: vec![i],
            }),
        }
    }
    for p in procs {
        let e = p.pstree();
        if in_tree(e.pgid)
            || helpers.iter().any(|h| h.pid as u32 == e.pgid)
            || (shell_job && e.pgid == root.pgid)
        {
            continue;
        }
        let member = procs
            .iter()
            .position(|q| matches!(q, Proc::Alive(_)) && q.pstree().pgid == e.pgid)
            .ok_or_else(|| {
                Error::InvalidOptions(format!(
                    "process group {} has neither its leader nor a live member in the images",
                    e.pgid
                ))
            })?;
        helpers.push(Helper {
            pid: e.pgid as pid_t,
            parent: Some(member),
            session: false,
            adopted: Vec::new(),
        });
    }
    Ok(helpers)
}

/// What processes share that we can rebuild: an fd table (CLONE_FILES) and cwd/root/umask
/// (CLONE_FS) when the sharers hang together from one of them down (each is forked with the flag
/// from its parent); not an address space or signal handlers.
fn check_shared_ids(procs: &[Proc], parent: &[Option<usize>]) -> std::result::Result<(), String> {
    let alive: Vec<(usize, &TaskImage)> = procs
        .iter()
        .enumerate()
        .filter_map(|(i, p)| match p {
            Proc::Alive(t) => Some((i, &**t)),
            Proc::Zombie { .. } => None,
        })
        .collect();
    let mut vms = std::collections::HashMap::new();
    let mut sighands = std::collections::HashMap::new();
    for &(_, t) in &alive {
        for (seen, id, what) in [
            (&mut vms, t.ids.vm_id, "an address space (CLONE_VM)"),
            (
                &mut sighands,
                t.ids.sighand_id,
                "signal handlers (CLONE_SIGHAND)",
            ),
        ] {
            if let Some(u) = seen.insert(id, t.pid) {
                return Err(format!(
                    "processes {u} and {} share {what}: not supported",
                    t.pid
                ));
            }
        }
    }
    type IdOf = fn(&pb::TaskKobjIdsEntry) -> u32;
    let kinds: [(IdOf, &str); 2] = [
        (|ids| ids.files_id, "an fd table"),
        (|ids| ids.fs_id, "cwd/root/umask"),
    ];
    for (id_of, what) in kinds {
        // Zombies share nothing: each gets an id no task has.
        let ids: Vec<u64> = procs
            .iter()
            .enumerate()
            .map(|(i, p)| match p {
                Proc::Alive(t) => id_of(&t.ids) as u64,
                Proc::Zombie { .. } => (1 << 32) + i as u64,
            })
            .collect();
        if let Some(i) = crate::engine::scattered_sharer(parent, &ids) {
            return Err(format!(
                "process {} shares {what} with a process that is neither its parent nor a \
                 child: not supported",
                procs[i].pid()
            ));
        }
    }
    Ok(())
}

/// Every pid and tid the tree needs must be free.
fn check_pids(plan: &Plan) -> Result<()> {
    // A fresh pid namespace has every pid free.
    if plan.new_pidns {
        return Ok(());
    }
    for p in &plan.procs {
        for &tid in &p.pstree().threads {
            if systask::pid_in_use(tid as pid_t) {
                return Err(Error::PidTaken(tid as pid_t));
            }
        }
        if systask::pid_in_use(p.pid()) {
            return Err(Error::PidTaken(p.pid()));
        }
    }
    for h in &plan.helpers {
        if systask::pid_in_use(h.pid) {
            return Err(Error::PidTaken(h.pid));
        }
    }
    Ok(())
}

/// Unmaps the restorer's copy of the build region once every task has its own.
struct Unreserve(u64, u64);
impl Drop for Unreserve {
    fn drop(&mut self) {
        let _ = crate::sys::mm::munmap(self.0, self.1);
    }
}

/// The control pipes, closed on drop except the ends we `keep`.
struct Channels(Vec<RawFd>);
impl Channels {
    fn keep(&mut self, fd: RawFd) -> OwnedFd {
        self.0.retain(|&f| f != fd);
        crate::sys::fd::owned(fd)
    }
}
impl Drop for Channels {
    fn drop(&mut self) {
        for &fd in &self.0 {
            crate::sys::fd::close(fd);
        }
    }
}

/// The tasks created so far; killed if the restore fails, so that none is left behind.
struct Created {
    tracees: Vec<(pid_t, Tracee)>,
    pids: Vec<pid_t>,
    root: Option<pid_t>,
    root_is_ours: bool,
    /// The helper we forked for the root's session, reaped by us.
    helper: Option<pid_t>,
    done: bool,
}

impl Drop for Created {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        crate::inet::abandon_restore();
        for &pid in self.pids.iter().chain(self.root.iter()) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        }
        // Our tracees' deaths are reported to us first: until we take them, the init of a
        // pid namespace of the tree's own would wait for them forever.
        for &pid in &self.pids {
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(pid),
                Some(nix::sys::wait::WaitPidFlag::__WALL),
            );
        }
        if let (Some(root), true) = (self.root, self.root_is_ours) {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(root), None);
        }
        if let Some(h) = self.helper {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(h), nix::sys::signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(h), None);
        }
    }
}

pub fn restore(opts: &Options, notify: &mut dyn Notify) -> Result<RestoreOutcome> {
    let t_start = Instant::now();
    let dir = ImageDir::new(&opts.images_dir);
    let mut plan = load_plan(&dir, opts)?;
    let seccomp: Option<pb::SeccompEntry> = if dir.exists(Kind::Seccomp, "") {
        Some(dir.read_one(Kind::Seccomp, "")?)
    } else {
        None
    };
    check_pids(&plan)?;
    // Lazy restore: the daemon must be there before anything is built.
    let handoff = if opts.lazy_pages {
        Some(crate::lazy::Handoff::connect(opts.work_dir())?)
    } else {
        None
    };
    let lazy = lazy_vmas(&plan, opts.lazy_pages);
    let left_out = lazy_pages(&dir, &plan, &lazy)?;
    if procfs::threads(std::process::id() as pid_t)?.len() != 1 {
        return Err(Error::InvalidOptions(
            "restore must run in a single-threaded process".into(),
        ));
    }

    // The build region, reserved here so that nothing of ours is placed there meanwhile; every
    // task inherits it.
    let own = procfs::maps(std::process::id() as pid_t)?;
    let vdso_len: u64 = own
        .iter()
        .filter(|m| matches!(m.name.as_str(), "[vdso]" | "[vvar]" | "[vvar_vclock]"))
        .map(|m| m.len())
        .sum();
    let inherited: Vec<Vec<bool>> = plan
        .inherit
        .iter()
        .map(|v| v.iter().map(Option::is_some).collect())
        .collect();
    let requests: Vec<LayoutRequest> = plan
        .procs
        .iter()
        .zip(&inherited)
        .filter_map(|(p, inh)| match p {
            Proc::Alive(t) => Some(LayoutRequest {
                vmas: &t.mm.vmas,
                threads: t.threads.len(),
                inherited: inh,
            }),
            Proc::Zombie { .. } => None,
        })
        .collect();
    // Shared anonymous objects: each built once, at the size its largest mapping needs.
    let mut shared: Vec<(u64, u64)> = Vec::new(); // (shmid, size)
    for p in &plan.procs {
        let Proc::Alive(t) = p else { continue };
        for v in
            t.mm.vmas
                .iter()
                .filter(|v| v.status & mem::VMA_ANON_SHARED != 0)
        {
            let size = v.pgoff + (v.end - v.start);
            match shared.iter_mut().find(|s| s.0 == v.shmid) {
                Some(s) => s.1 = s.1.max(size),
                None => shared.push((v.shmid, size)),
            }
        }
    }
    let sizes: Vec<u64> = shared.iter().map(|s| s.1).collect();
    let (layouts, shared_at) = mem::plan_layouts(&requests, &sizes, &own, vdso_len)?;
    plan.shared = shared
        .iter()
        .zip(&shared_at)
        .map(|(&(shmid, _), &at)| (shmid, at))
        .collect();
    let mut layouts = layouts.into_iter();
    plan.layouts = plan
        .procs
        .iter()
        .map(|p| matches!(p, Proc::Alive(_)).then(|| layouts.next().unwrap()))
        .collect();
    // An inherited VMA is built where its parent's is (parents come first, so theirs is set).
    for i in 0..plan.procs.len() {
        for (v, from) in plan.inherit[i].clone().into_iter().enumerate() {
            let (Some(pv), Some(p)) = (from, plan.parent[i]) else {
                continue;
            };
            let temp = plan.layouts[p]
                .as_ref()
                .and_then(|l| l.temps.iter().find(|t| t.0 == pv))
                .map(|t| t.1)
                .expect("parent planned");
            plan.layouts[i]
                .as_mut()
                .expect("alive")
                .temps
                .push((v, temp));
        }
    }
    let region = plan.layouts[0].as_ref().map(|l| (l.base, l.len)).unwrap();
    crate::sys::mm::reserve(region.0, region.1)?;
    let unreserve = Unreserve(region.0, region.1);

    notify.notify("pre-restore", 0, None)?;
    // Every task's memory, built here and inherited through the forks.
    let mut pages_restored = 0;
    for (((p, layout), inh), lz) in plan
        .procs
        .iter()
        .zip(&plan.layouts)
        .zip(&inherited)
        .zip(&left_out)
    {
        let (Proc::Alive(t), Some(layout)) = (p, layout) else {
            continue;
        };
        pages_restored += mem::premap(
            &t.mm.vmas,
            layout,
            &t.pagemap,
            &t.pages,
            &|id, flags| plan.files.open_path(id, flags),
            inh,
            lz,
        )?;
    }
    for (&(shmid, size), &at) in shared.iter().zip(&shared_at) {
        let (entries, pages) = open_pages(&dir, Kind::ShmemPagemap, shmid)?.ok_or_else(|| {
            Error::image(dir.file(&Kind::ShmemPagemap.file_name(shmid)), "missing")
        })?;
        pages_restored += mem::premap_shared(at, size, &entries, &pages)?;
    }

    // Every file description, once, above every fd number the tasks use.
    let tables: Vec<(pid_t, &[pb::FdinfoEntry])> = plan
        .procs
        .iter()
        .filter_map(|p| match p {
            Proc::Alive(t) => Some((t.pid, t.fdinfo.as_slice())),
            Proc::Zombie { .. } => None,
        })
        .collect();
    let lowest = plan
        .procs
        .iter()
        .filter_map(|p| match p {
            Proc::Alive(t) => t.fdinfo.iter().map(|f| f.fd as RawFd).max(),
            Proc::Zombie { .. } => None,
        })
        .max()
        .unwrap_or(-1)
        + 1;
    let terminal = if opts.shell_job {
        crate::files::inherited_terminal()
    } else {
        None
    };
    // --orphan-pts-master: new ptys for those whose master was outside the tree.
    let orphan_masters = if opts.orphan_pts_master {
        plan.files.ttys_mut().replace_orphans()?
    } else {
        Vec::new()
    };
    let pool = crate::files::open_all(
        &tables,
        &plan.files,
        lowest.max(3),
        terminal.map(crate::sys::fd::borrow_std),
    )?;
    plan.pool = pool.numbers();
    for master in &orphan_masters {
        notify.notify(
            "orphan-pts-master",
            0,
            Some(std::os::fd::AsFd::as_fd(master)),
        )?;
    }
    drop(orphan_masters);

    // Control channels: one "go" pipe per process, one shared report pipe.
    plan.report = raw_pipe()?;
    for _ in 0..plan.procs.len() + plan.helpers.len() {
        let p = raw_pipe()?;
        plan.go.push(p);
    }
    let mut ours: Vec<RawFd> = vec![plan.report.0, plan.report.1];
    ours.extend(plan.go.iter().flat_map(|&(r, w)| [r, w]));
    let mut channels = Channels(ours);

    let flags = if opts.restore_sibling {
        libc::CLONE_PARENT as u64
    } else {
        0
    };
    let t_fork = Instant::now();
    let root_pid = plan.procs[0].pid();
    // The tasks' pids as we see them (ptrace, /proc), from what each reports.
    let mut pids = crate::pidns::PidMap::new(plan.new_pidns);
    let mut created = Created {
        tracees: Vec::new(),
        pids: Vec::new(),
        root: None,
        root_is_ours: !opts.restore_sibling,
        helper: None,
        done: false,
    };
    // The root is forked by the helper of its session when that session's leader is gone: then
    // it is still our child (CLONE_PARENT), and the helper too, whom we reap.
    let root_helper = plan.helpers.iter().position(|h| h.parent.is_none());
    match root_helper {
        Some(h) => match fork_with_pid(Some(plan.helpers[h].pid), flags)? {
            Forked::Child => crate::engine::restore_task::run_helper(&plan, h),
            Forked::Parent(pid) => {
                created.helper = Some(pid);
                created.root = Some(root_pid);
            }
        },
        // The init of a fresh pid namespace is pid 1 there whatever we ask.
        None if plan.new_pidns => match fork_with_pid(None, flags | libc::CLONE_NEWPID as u64)? {
            Forked::Child => run_task(&plan, 0),
            Forked::Parent(pid) => {
                created.root = Some(pid);
                pids.insert(pid, root_pid);
            }
        },
        None => match fork_with_pid(Some(root_pid), flags)? {
            Forked::Child => run_task(&plan, 0),
            Forked::Parent(pid) => created.root = Some(pid),
        },
    }
    drop(pool);
    // Our ends: report read end and go write ends only.
    let mut report_r = File::from(channels.keep(plan.report.0));
    let go_w: Vec<OwnedFd> = plan.go.iter().map(|&(_, w)| channels.keep(w)).collect();
    drop(channels);

    let alive: Vec<usize> = (0..plan.procs.len())
        .filter(|&i| matches!(plan.procs[i], Proc::Alive(_)))
        .collect();
    // 1. Every process reports once it exists (and has forked its children); we attach to the
    //    live ones at once, so that if we die they die with us (PTRACE_O_EXITKILL).
    let mut pending = plan.procs.len() + plan.helpers.len();
    while pending > 0 {
        let (pid, kind, body) = read_report(&mut report_r)?;
        match kind {
            REPORT_CREATED => {
                pending -= 1;
                // Each reports its pid in our namespace too.
                let host = match body.get(..4) {
                    Some(b) if plan.new_pidns => i32::from_ne_bytes(b.try_into().unwrap()),
                    _ => pid,
                };
                pids.insert(host, pid);
                created.pids.push(host);
                if alive.iter().any(|&i| plan.procs[i].pid() == pid) {
                    let t = Tracee::seize(
                        host,
                        PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL | PTRACE_O_SUSPEND_SECCOMP,
                    )?;
                    created.tracees.push((pid, t));
                }
            }
            REPORT_ERROR => {
                return Err(Error::task(
                    pid,
                    format!("restore failed: {}", String::from_utf8_lossy(&body)),
                ));
            }
            k => {
                return Err(Error::task(
                    pid,
                    format!("unexpected report {k} while creating the tree"),
                ))
            }
        }
    }
    let forking_time = t_fork.elapsed();
    // 2. All processes and process groups exist: let everybody finish building itself. The top
    //    of an fd table shared with others (CLONE_FILES) goes once they are ready: it replaces
    //    the table they work in.
    let wake = |i: usize| {
        nix::unistd::write(&go_w[i], &[1]).map_err(|e| Error::sys("wake a restored task", e))
    };
    let followers: Vec<Vec<usize>> = (0..plan.procs.len())
        .map(|i| plan.table_followers(i))
        .collect();
    for i in 0..go_w.len() {
        if followers.get(i).is_none_or(Vec::is_empty) {
            wake(i)?;
        }
    }
    let mut ready: Vec<(pid_t, Ready)> = Vec::new();
    while ready.len() < alive.len() {
        let (pid, kind, body) = read_report(&mut report_r)?;
        match kind {
            REPORT_READY if !body.is_empty() && body.len() % 4 == 0 => {
                let fds: Vec<RawFd> = body
                    .chunks(4)
                    .map(|c| i32::from_ne_bytes(c.try_into().unwrap()))
                    .collect();
                ready.push((pid, Ready { exe_fd: fds[0] }));
                let Some(i) = plan.procs.iter().position(|p| p.pid() == pid) else {
                    continue;
                };
                // The top reports its followers' executables after its own.
                for (&f, &fd) in followers[i].iter().zip(&fds[1..]) {
                    let fpid = plan.procs[f].pid();
                    if let Some(r) = ready.iter_mut().find(|(p, _)| *p == fpid) {
                        r.1.exe_fd = fd;
                    }
                }
                // A top whose followers are all ready may go.
                for (top, fs) in followers.iter().enumerate() {
                    if fs.contains(&i)
                        && fs.iter().all(|&f| {
                            let fpid = plan.procs[f].pid();
                            ready.iter().any(|(p, _)| *p == fpid)
                        })
                    {
                        wake(top)?;
                    }
                }
            }
            REPORT_ERROR => {
                return Err(Error::task(
                    pid,
                    format!("restore failed: {}", String::from_utf8_lossy(&body)),
                ));
            }
            k => return Err(Error::task(pid, format!("unexpected report {k}"))),
        }
    }
    // The root's session helper exits once every process is in its group.
    if let Some(h) = created.helper.take() {
        nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(h), None)
            .map_err(|e| Error::sys(format!("reap helper {h}"), e))?;
    }
    // Each task closes its report end right after reporting; zombies are gone. EOF means no
    // fd of ours is left in any task.
    drop(go_w);
    let mut rest = Vec::new();
    let _ = wait_eof(&mut report_r, &mut rest, Duration::from_secs(10));
    drop(unreserve);

    // 3. Swap each task into its final shape.
    let mut threads: Vec<Vec<Tracee>> = Vec::new();
    for &i in &alive {
        let Proc::Alive(task) = &plan.procs[i] else {
            unreachable!()
        };
        let (_, tracee) = created
            .tracees
            .iter()
            .find(|(p, _)| *p == task.pid)
            .ok_or_else(|| Error::task(task.pid, "not attached"))?;
        let r = &ready
            .iter()
            .find(|(p, _)| *p == task.pid)
            .ok_or_else(|| Error::task(task.pid, "never reported ready"))?
            .1;
        pids.add_threads(pids.host(task.pid))?;
        threads.push(finalize(
            tracee,
            task,
            seccomp.as_ref(),
            plan.layouts[i].as_ref().unwrap(),
            &plan.shared,
            r,
            &pids,
            handoff.as_ref().map(|h| (h, lazy[i].as_slice())),
        )?);
    }
    // From here on, the root's pid as the caller sees it.
    let root_pid = pids.host(root_pid);
    notify.notify("post-restore", root_pid, None)?;
    // Like CRIU: the network is unlocked, then the connections leave repair mode.
    crate::inet::finish_restore(&dir)?;
    // The tasks are complete: like CRIU, failing pre-resume/post-resume are only reported.
    if let Err(e) = notify.notify("pre-resume", root_pid, None) {
        log::error!("pre-resume: {e}");
    }
    // 4. Go, children before their parents: a released parent may at once signal, wait for or
    // kill a child (a self-dumped program that returns 1 does), which must be released by then.
    for ((_, leader), others) in created.tracees.drain(..).zip(threads).rev() {
        crate::engine::finalize::release(leader, others)?;
    }
    created.done = true;
    for &i in &alive {
        let Proc::Alive(task) = &plan.procs[i] else {
            unreachable!()
        };
        if task.tc().task_state == TASK_STOPPED {
            if let Some(sig) = task.tc().stop_signo {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pids.host(task.pid)),
                    nix::sys::signal::Signal::try_from(sig as i32).ok(),
                );
            }
        }
    }
    if let Err(e) = notify.notify("post-resume", root_pid, None) {
        log::error!("post-resume: {e}");
    }
    if let Some(p) = &opts.pidfile {
        let path = if p.is_absolute() {
            p.clone()
        } else {
            opts.work_dir().join(p)
        };
        std::fs::write(&path, format!("{root_pid}"))
            .map_err(|e| Error::io(format!("write pidfile {}", path.display()), e))?;
    }
    write_stats(&dir, forking_time, t_start.elapsed(), pages_restored)?;
    log::info!(
        "restored {} processes, root pid {root_pid}",
        plan.procs.len()
    );
    Ok(RestoreOutcome { pid: root_pid })
}

/// Per process, per VMA: whether its pages are left to the lazy-pages daemon. Memory a child
/// inherits from its parent is restored eagerly on both sides: the child compares its saved
/// pages with what it inherits, and keeps the parent's where it recorded them as shared.
fn lazy_vmas(plan: &Plan, lazy_pages: bool) -> Vec<Vec<bool>> {
    let mut lazy: Vec<Vec<bool>> = plan
        .procs
        .iter()
        .zip(&plan.inherit)
        .map(|(p, inh)| match p {
            Proc::Alive(t) if lazy_pages => {
                t.mm.vmas
                    .iter()
                    .zip(inh)
                    .map(|(v, from)| from.is_none() && crate::lazy::can_be_lazy(v))
                    .collect()
            }
            Proc::Alive(t) => vec![false; t.mm.vmas.len()],
            Proc::Zombie { .. } => Vec::new(),
        })
        .collect();
    for (i, inh) in plan.inherit.iter().enumerate() {
        let Some(p) = plan.parent[i] else { continue };
        for pv in inh.iter().flatten() {
            if let Some(x) = lazy[p].get_mut(*pv) {
                *x = false;
            }
        }
    }
    lazy
}

/// Per process: the pages left to the lazy-pages daemon, sorted. Those of its lazy VMAs whose
/// data is in the last images' own pages file: after pre-dumps, only what was written since the
/// last one; pages the pre-dumps hold are restored before the task runs.
fn lazy_pages(dir: &ImageDir, plan: &Plan, lazy: &[Vec<bool>]) -> Result<Vec<Vec<(u64, u64)>>> {
    let mut out = Vec::with_capacity(plan.procs.len());
    for (p, lz) in plan.procs.iter().zip(lazy) {
        let Proc::Alive(t) = p else {
            out.push(Vec::new());
            continue;
        };
        // Pages a lazy migration left on the source (PE_LAZY) exist nowhere here: only the
        // daemon can fetch them, and only into memory it serves.
        let remote = crate::images::pages::lazy_ranges(dir, t.pid)?;
        let mut covered: Vec<(u64, u64)> = remote
            .iter()
            .flat_map(|&(s, e)| {
                t.mm.vmas
                    .iter()
                    .zip(lz)
                    .filter(move |(v, &l)| l && v.start < e && s < v.end)
                    .map(move |(v, _)| (s.max(v.start), e.min(v.end)))
            })
            .collect();
        covered.sort_unstable();
        let covered_bytes: u64 = covered.iter().map(|r| r.1 - r.0).sum();
        if covered_bytes != remote.iter().map(|r| r.1 - r.0).sum::<u64>() {
            return Err(Error::InvalidOptions(format!(
                "pid {}: the images leave pages on the source of a lazy migration (PE_LAZY); \
                 restore them with --lazy-pages and `criu lazy-pages --page-server`",
                t.pid
            )));
        }
        if !lz.iter().any(|&l| l) {
            out.push(Vec::new());
            continue;
        }
        let mut own = crate::images::pages::own_ranges(dir, t.pid)?.unwrap_or_default();
        own.extend(remote);
        own.sort_unstable();
        let mut left = Vec::new();
        for (v, _) in t.mm.vmas.iter().zip(lz).filter(|(_, &l)| l) {
            let first = own.partition_point(|r| r.1 <= v.start);
            for r in own[first..].iter().take_while(|r| r.0 < v.end) {
                left.push((r.0.max(v.start), r.1.min(v.end)));
            }
        }
        left.sort_unstable();
        out.push(left);
    }
    Ok(out)
}

/// Reads until every writer is gone (EOF), with a time limit.
fn wait_eof(r: &mut File, rest: &mut Vec<u8>, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    let fd = r.as_raw_fd();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::InvalidOptions(
                "restored tasks kept the report pipe open".into(),
            ));
        }
        let mut pfd = [nix::poll::PollFd::new(
            crate::sys::fd::borrow(fd),
            nix::poll::PollFlags::POLLIN,
        )];
        let _ = nix::poll::poll(
            &mut pfd,
            nix::poll::PollTimeout::try_from(left.as_millis() as u32)
                .unwrap_or(nix::poll::PollTimeout::MAX),
        );
        let mut buf = [0u8; 4096];
        match r.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => rest.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read the report pipe", e)),
        }
    }
}

fn write_stats(dir: &ImageDir, forking: Duration, total: Duration, pages: u64) -> Result<()> {
    let us = |d: Duration| d.as_micros().min(u32::MAX as u128) as u32;
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
