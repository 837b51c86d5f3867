//! Lazy restore (post-copy memory): `criu restore --lazy-pages` leaves the private anonymous
//! memory of the restored tasks empty, registers it with a userfaultfd (MISSING mode) inside each
//! task and hands the descriptor to the `criu lazy-pages` daemon over `lazy-pages.socket` in the
//! work directory. The daemon fills pages when they are touched (with their neighbours), follows
//! fork, mremap, madvise(DONTNEED) and munmap of the running tasks, pushes every other page in the
//! background, and exits once every saved page was delivered.
//!
//! Where the data comes from is a `PageSource`: the images on local disk here, a page server
//! later. Which pages are lazy (the daemon's own pagemap and the ranges the restorer registered)
//! is decided locally either way.
//!
//! A page is never silently replaced by zeros: when the last descriptor of a userfaultfd closes,
//! the kernel forgets the registration and a missing page reads as zeros. So `criu lazy-pages`
//! is two processes sharing one descriptor table (CLONE_FILES): the server, and a guard that
//! waits for it. If the server dies before its work is done, the guard still holds every
//! userfaultfd (faulting tasks keep waiting instead of reading zeros), kills the restored tasks
//! and their descendants, says so in the log, and only then lets the descriptors go.
//!
//! Limits: memory a child shares copy-on-write with its parent (both sides) and locked memory
//! are restored eagerly; pages still undelivered when a task forks are delivered to parent and
//! child separately (no longer shared); if the guard and the server are both SIGKILLed, the
//! kernel is left to treat missing pages as zeros (nothing in user space can prevent that).

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use libc::pid_t;
use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::images::pages::{entry_flags, entry_pages, open_pages, PageFile};
use crate::images::{ImageDir, Kind, PE_PRESENT};
use crate::mem;
use crate::pb;
use crate::sys::mem::PAGE_SIZE;
use crate::sys::uffd::{self, Event};

/// CRIU's name for the daemon's socket, in the work directory.
pub const SOCKET_NAME: &str = "lazy-pages.socket";
/// Served around a fault: the faulting page and the next ones of the same run.
const FAULT_CHUNK: u64 = 64 << 10;
/// One background copy while the tasks take no faults: large enough to amortise the call.
const PUSH_CHUNK: u64 = 1 << 20;
/// One background copy shortly after a fault: a task that faults again soon should not wait
/// behind a long copy (measured on 2 GiB: p50 fault latency 390 us with 1 MiB, 110 us with this).
const PUSH_CHUNK_BUSY: u64 = 64 << 10;
/// How long after a fault the background copies stay small.
const BUSY_FOR: std::time::Duration = std::time::Duration::from_millis(20);

/// Whether a VMA's pages can be left for the daemon: private anonymous memory the restorer
/// builds itself. Locked memory is populated when mapped (a filled-in zero page would make the
/// saved one impossible to place), so it is restored eagerly.
pub fn can_be_lazy(v: &pb::VmaEntry) -> bool {
    v.status & mem::VMA_ANON_PRIVATE != 0
        && mem::is_built(v)
        && v.flags & libc::MAP_LOCKED as u32 == 0
}

// ---------------------------------------------------------------------------------------------
// Restore side

/// The restorer's connection to the daemon.
pub struct Handoff {
    sock: OwnedFd,
    path: PathBuf,
}

impl Handoff {
    /// Connects to the daemon listening in `work_dir`: done before any task exists, so that a
    /// restore without a daemon fails at once and leaves nothing behind.
    pub fn connect(work_dir: &Path) -> Result<Handoff> {
        let path = work_dir.join(SOCKET_NAME);
        let sock = crate::sys::sock::connect_seqpacket(&path).map_err(|e| {
            Error::InvalidOptions(format!(
                "lazy restore: no lazy-pages daemon at {} ({e}); start `criu lazy-pages -D DIR` \
                 first",
                path.display()
            ))
        })?;
        Ok(Handoff { sock, path })
    }

    /// Registers `ranges` of task `pid` (its userfaultfd is `uffd`) and gives the descriptor to
    /// the daemon. `image_pid` names the task in the images (its pid in its own pid namespace,
    /// which a restored pid namespace root's tree does not share with us).
    pub fn hand_over(
        &self,
        image_pid: pid_t,
        pid: pid_t,
        uffd: BorrowedFd<'_>,
        ranges: &[(u64, u64)],
    ) -> Result<()> {
        uffd::api(uffd, uffd::LAZY_FEATURES)?;
        for &(s, e) in ranges {
            uffd::register_missing(uffd, s, e).map_err(|err| {
                Error::sys(
                    format!("pid {pid}: register {s:#x}-{e:#x} for lazy pages"),
                    err,
                )
            })?;
        }
        let mut msg = Vec::with_capacity(8 + 16 * ranges.len());
        msg.extend_from_slice(&image_pid.to_ne_bytes());
        msg.extend_from_slice(&pid.to_ne_bytes());
        for &(s, e) in ranges {
            msg.extend_from_slice(&s.to_ne_bytes());
            msg.extend_from_slice(&e.to_ne_bytes());
        }
        crate::sys::sock::send_packet(self.sock.as_fd(), &msg, Some(uffd)).map_err(|e| {
            Error::sys(
                format!("pid {pid}: hand the userfaultfd to {}", self.path.display()),
                e,
            )
        })?;
        log::info!(
            "pid {pid}: {} lazy ranges handed to the lazy-pages daemon",
            ranges.len()
        );
        Ok(())
    }
}

/// A hand-over message: pid in the images, pid here, lazy ranges.
type HandedOver = (pid_t, pid_t, Vec<(u64, u64)>);

fn parse_handoff(data: &[u8]) -> Option<HandedOver> {
    if data.len() < 8 || (data.len() - 8) % 16 != 0 {
        return None;
    }
    let image_pid = pid_t::from_ne_bytes(data[..4].try_into().ok()?);
    let pid = pid_t::from_ne_bytes(data[4..8].try_into().ok()?);
    let ranges = data[8..]
        .chunks_exact(16)
        .map(|c| {
            (
                u64::from_ne_bytes(c[..8].try_into().expect("8")),
                u64::from_ne_bytes(c[8..].try_into().expect("8")),
            )
        })
        .filter(|(s, e)| s < e && s % PAGE_SIZE == 0 && e % PAGE_SIZE == 0)
        .collect();
    Some((image_pid, pid, ranges))
}

// ---------------------------------------------------------------------------------------------
// Page sources

/// Where the saved pages come from. `id` names a pagemap (a task's pid in the images).
pub trait PageSource {
    /// The address ranges pagemap `id` holds data for, sorted.
    fn held(&mut self, id: pid_t) -> Result<Vec<(u64, u64)>>;
    /// Reads the saved contents of [addr, addr + buf.len()), which `held` covers in one range.
    fn read(&mut self, id: pid_t, addr: u64, buf: &mut [u8]) -> Result<()>;
    /// Every page was delivered.
    fn done(&mut self) -> Result<()> {
        Ok(())
    }
}

/// One pagemap's runs with data, (start, end, offset in the flat data), and the data.
struct Saved {
    runs: Vec<(u64, u64, u64)>,
    pages: PageFile,
}

/// Pages from an images directory (and its parent chain).
pub struct LocalImages {
    dir: ImageDir,
    tasks: HashMap<pid_t, Saved>,
}

impl LocalImages {
    pub fn new(dir: &Path) -> LocalImages {
        LocalImages {
            dir: ImageDir::new(dir),
            tasks: HashMap::new(),
        }
    }

    fn task(&mut self, id: pid_t) -> Result<&Saved> {
        if !self.tasks.contains_key(&id) {
            let (entries, pages) =
                open_pages(&self.dir, Kind::Pagemap, id as u64)?.ok_or_else(|| {
                    Error::image(self.dir.file(&Kind::Pagemap.file_name(id)), "missing")
                })?;
            let mut runs = Vec::new();
            let mut off = 0;
            for pe in &entries {
                if entry_flags(pe) & PE_PRESENT == 0 {
                    continue;
                }
                let len = entry_pages(pe) * PAGE_SIZE;
                runs.push((pe.vaddr, pe.vaddr + len, off));
                off += len;
            }
            runs.sort_unstable();
            self.tasks.insert(id, Saved { runs, pages });
        }
        Ok(&self.tasks[&id])
    }
}

impl PageSource for LocalImages {
    /// Only the pages of the last images themselves: those of parent images (pre-dumps) were
    /// restored before the tasks ran.
    fn held(&mut self, id: pid_t) -> Result<Vec<(u64, u64)>> {
        self.task(id)?;
        if !crate::images::pages::lazy_ranges(&self.dir, id)?.is_empty() {
            return Err(Error::InvalidOptions(format!(
                "pagemap {id} leaves pages on the source of a lazy migration: run `criu \
                 lazy-pages --page-server --address A --port N`"
            )));
        }
        Ok(crate::images::pages::own_ranges(&self.dir, id)?.unwrap_or_default())
    }

    fn read(&mut self, id: pid_t, addr: u64, buf: &mut [u8]) -> Result<()> {
        let Saved { runs, pages } = self.task(id)?;
        let end = addr + buf.len() as u64;
        let i = runs.partition_point(|r| r.1 <= addr);
        match runs.get(i) {
            Some(&(s, e, off)) if s <= addr && end <= e => {
                pages.read_exact_at(buf, off + (addr - s))
            }
            _ => Err(Error::InvalidOptions(format!(
                "pagemap {id} holds no pages at {addr:#x}-{end:#x}"
            ))),
        }
    }
}

/// Pages left on the source by `dump --lazy-pages` (PE_LAZY in the images here), fetched from
/// its page server.
pub struct RemotePages {
    dir: ImageDir,
    client: crate::pageserver::lazy::LazyClient,
}

impl RemotePages {
    pub fn new(dir: &Path, client: crate::pageserver::lazy::LazyClient) -> RemotePages {
        RemotePages {
            dir: ImageDir::new(dir),
            client,
        }
    }
}

impl PageSource for RemotePages {
    fn held(&mut self, id: pid_t) -> Result<Vec<(u64, u64)>> {
        crate::images::pages::lazy_ranges(&self.dir, id)
    }

    fn read(&mut self, id: pid_t, addr: u64, buf: &mut [u8]) -> Result<()> {
        self.client.get(id, addr, buf)
    }

    fn done(&mut self) -> Result<()> {
        self.client.close()
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon

/// Pages not yet delivered to one address space: start -> (end, saved address of start).
#[derive(Clone, Default)]
struct Left(BTreeMap<u64, (u64, u64)>);

impl Left {
    /// Removes [start, end) and returns the pieces that were there: (start, end, saved address).
    fn take(&mut self, start: u64, end: u64) -> Vec<(u64, u64, u64)> {
        let first = self
            .0
            .range(..start)
            .next_back()
            .filter(|(_, &(e, _))| e > start)
            .map(|(&s, _)| s)
            .unwrap_or(start);
        let keys: Vec<u64> = self.0.range(first..end).map(|(&s, _)| s).collect();
        let mut out = Vec::new();
        for s in keys {
            let (e, src) = self.0.remove(&s).expect("listed");
            if s < start {
                self.0.insert(s, (start, src));
            }
            if e > end {
                self.0.insert(end, (e, src + (end - s)));
            }
            let (a, b) = (s.max(start), e.min(end));
            out.push((a, b, src + (a - s)));
        }
        out
    }

    fn put(&mut self, start: u64, end: u64, src: u64) {
        if start < end {
            self.0.insert(start, (end, src));
        }
    }

    fn find(&self, addr: u64) -> Option<(u64, u64, u64)> {
        self.0
            .range(..=addr)
            .next_back()
            .filter(|(_, &(e, _))| e > addr)
            .map(|(&s, &(e, src))| (s, e, src))
    }

    fn bytes(&self) -> u64 {
        self.0.iter().map(|(s, (e, _))| e - s).sum()
    }
}

/// One address space being served.
struct Space {
    uffd: OwnedFd,
    /// Whose saved pages fill it.
    image: pid_t,
    /// The live process, once known (the restored task; a forked child at its first fault).
    pid: Option<pid_t>,
    /// The tasks live in a pid namespace of their own: the thread ids faults report are theirs,
    /// not ours, so a forked child is not named from them (it is killed, when it must be, as a
    /// descendant of the task it forked from).
    foreign_tids: bool,
    left: Left,
    gone: bool,
}

/// How a fill went.
enum Fill {
    Done,
    /// The address space is changing (an event is pending): read events, then retry.
    Again,
    /// The process is gone.
    Gone,
}

struct Server<'a> {
    source: &'a mut dyn PageSource,
    spaces: Vec<Space>,
    buf: Vec<u8>,
    /// Pids of the tasks served, for the guard (written as they become known).
    pid_pipe: BorrowedFd<'a>,
    faults: u64,
    pushed: u64,
    last_fault: Option<Instant>,
}

impl Server<'_> {
    fn tell_guard(&self, pid: pid_t) {
        let _ = nix::unistd::write(self.pid_pipe, &pid.to_ne_bytes());
    }

    fn add(
        &mut self,
        uffd: OwnedFd,
        image: pid_t,
        pid: pid_t,
        ranges: &[(u64, u64)],
    ) -> Result<()> {
        crate::sys::fd::set_status_flags(uffd.as_fd(), libc::O_NONBLOCK as u32)?;
        let held = self.source.held(image)?;
        let mut left = Left::default();
        for &(s, e) in ranges {
            for &(hs, he) in &held {
                let (a, b) = (s.max(hs), e.min(he));
                left.put(a, b, a);
            }
        }
        log::info!(
            "pid {pid}: serving {} KiB of lazy memory",
            left.bytes() >> 10
        );
        self.tell_guard(pid);
        self.spaces.push(Space {
            uffd,
            image,
            pid: Some(pid),
            foreign_tids: image != pid,
            left,
            gone: false,
        });
        Ok(())
    }

    /// Copies [start, end) of space `i` (saved at `src`) in. What cannot be placed yet is put
    /// back into its bookkeeping.
    fn fill(&mut self, i: usize, start: u64, end: u64, src: u64) -> Result<Fill> {
        let len = (end - start) as usize;
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        let image = self.spaces[i].image;
        self.source.read(image, src, &mut self.buf[..len])?;
        let mut at = 0u64;
        while at < len as u64 {
            let sp = &self.spaces[i];
            let r = uffd::copy(sp.uffd.as_fd(), start + at, &self.buf[at as usize..len]);
            at += r.done;
            match r.error {
                None => {}
                // Already there (the kernel filled it by another way): not ours to overwrite.
                Some(Errno::EEXIST) => {
                    let _ = uffd::wake(sp.uffd.as_fd(), start + at, PAGE_SIZE);
                    at += PAGE_SIZE;
                }
                Some(Errno::EAGAIN) => {
                    self.spaces[i].left.put(start + at, end, src + at);
                    return Ok(Fill::Again);
                }
                // No registered mapping at this page any more (its unmap is being reported):
                // nothing to place here, but the next pages may still be mapped.
                Some(Errno::ENOENT) => at += PAGE_SIZE,
                Some(Errno::ESRCH) => return Ok(Fill::Gone),
                Some(e) => {
                    return Err(Error::sys(
                        format!(
                            "UFFDIO_COPY at {:#x} for pid {}",
                            start + at,
                            sp.pid.unwrap_or(0)
                        ),
                        e,
                    ))
                }
            }
        }
        Ok(Fill::Done)
    }

    /// The process of space `i` is gone: what it did not receive is nobody's any more.
    fn set_gone(&mut self, i: usize) {
        let sp = &mut self.spaces[i];
        if !sp.gone {
            log::info!(
                "pid {:?} is gone with {} KiB not delivered",
                sp.pid,
                sp.left.bytes() >> 10
            );
            sp.gone = true;
        }
    }

    /// Fills pieces taken out of space `i`'s bookkeeping; when it has to stop early, what was
    /// not placed goes back (never dropped: it would read as zeros later).
    fn fill_pieces(&mut self, i: usize, pieces: Vec<(u64, u64, u64)>) -> Result<Fill> {
        let mut pieces = pieces.into_iter();
        while let Some((s, e, src)) = pieces.next() {
            match self.fill(i, s, e, src)? {
                Fill::Done => {}
                other => {
                    for (s, e, src) in pieces {
                        self.spaces[i].left.put(s, e, src);
                    }
                    return Ok(other);
                }
            }
        }
        Ok(Fill::Done)
    }

    /// Serves a fault at `addr` of space `i`.
    fn fault(&mut self, i: usize, addr: u64) -> Result<Fill> {
        let page = addr & !(PAGE_SIZE - 1);
        let Some((_, e, _)) = self.spaces[i].left.find(page) else {
            // Never saved (or emptied since): a zero page, as it was.
            let sp = &self.spaces[i];
            let r = uffd::zeropage(sp.uffd.as_fd(), page, PAGE_SIZE);
            return Ok(match r.error {
                None | Some(Errno::ENOENT) => Fill::Done,
                Some(Errno::EEXIST) => {
                    let _ = uffd::wake(sp.uffd.as_fd(), page, PAGE_SIZE);
                    Fill::Done
                }
                Some(Errno::EAGAIN) => Fill::Again,
                Some(Errno::ESRCH) => Fill::Gone,
                Some(err) => return Err(Error::sys(format!("UFFDIO_ZEROPAGE at {page:#x}"), err)),
            });
        };
        let end = e.min(page + FAULT_CHUNK);
        self.faults += 1;
        self.last_fault = Some(Instant::now());
        let pieces = self.spaces[i].left.take(page, end);
        self.fill_pieces(i, pieces)
    }

    /// Reads every message queued on space `i`: events are applied at once, faults queued.
    fn drain(&mut self, i: usize, faults: &mut Vec<(usize, u64)>) -> Result<()> {
        loop {
            let ev = match uffd::read_event(self.spaces[i].uffd.as_fd()) {
                Ok(Some(ev)) => ev,
                Ok(None) => return Ok(()),
                Err(e) => {
                    return Err(Error::sys(
                        format!("read the userfaultfd of pid {:?}", self.spaces[i].pid),
                        e,
                    ))
                }
            };
            match ev {
                Event::PageFault { addr, tid } => {
                    if self.spaces[i].pid.is_none() && !self.spaces[i].foreign_tids && tid != 0 {
                        let pid = crate::procfs::status(tid as pid_t, None)
                            .map(|s| s.tgid)
                            .unwrap_or(tid as pid_t);
                        self.spaces[i].pid = Some(pid);
                        self.tell_guard(pid);
                    }
                    faults.push((i, addr));
                }
                Event::Fork(fd) => {
                    crate::sys::fd::set_status_flags(fd.as_fd(), libc::O_NONBLOCK as u32)?;
                    let left = self.spaces[i].left.clone();
                    log::debug!(
                        "pid {:?} forked: its child gets {} KiB still to come",
                        self.spaces[i].pid,
                        left.bytes() >> 10
                    );
                    self.spaces.push(Space {
                        uffd: fd,
                        image: self.spaces[i].image,
                        pid: None,
                        foreign_tids: self.spaces[i].foreign_tids,
                        left,
                        gone: false,
                    });
                }
                Event::Remap { from, to, len } => {
                    let left = &mut self.spaces[i].left;
                    for (s, e, src) in left.take(from, from + len) {
                        left.put(s - from + to, e - from + to, src);
                    }
                }
                Event::Remove { start, end } | Event::Unmap { start, end } => {
                    self.spaces[i].left.take(start, end);
                }
                Event::Other(k) => log::warn!("unknown userfaultfd event {k:#x}"),
            }
        }
    }

    /// One background copy, from the space with the most left. False when nothing is left.
    fn push(&mut self) -> Result<bool> {
        let Some(i) = (0..self.spaces.len())
            .filter(|&i| !self.spaces[i].gone && !self.spaces[i].left.0.is_empty())
            .max_by_key(|&i| self.spaces[i].left.0.len())
        else {
            return Ok(false);
        };
        let (&s, &(e, _)) = self.spaces[i].left.0.iter().next().expect("not empty");
        let busy = self.last_fault.is_some_and(|t| t.elapsed() < BUSY_FOR);
        let end = e.min(s + if busy { PUSH_CHUNK_BUSY } else { PUSH_CHUNK });
        let pieces = self.spaces[i].left.take(s, end);
        self.pushed += pieces.iter().map(|p| p.1 - p.0).sum::<u64>();
        if let Fill::Gone = self.fill_pieces(i, pieces)? {
            self.set_gone(i);
        }
        Ok(true)
    }
}

/// `criu lazy-pages -D DIR [-W WORKDIR]`: serves the memory of one lazily restored tree from the
/// images in `images_dir`. Returns when every page was delivered (or every task is gone).
pub fn run_daemon(
    images_dir: &Path,
    work_dir: &Path,
    opts: &crate::options::Options,
) -> Result<()> {
    // The source first: a daemon that cannot reach it must not accept a restore.
    let mut remote = if opts.page_server.is_some() {
        Some(crate::pageserver::lazy::LazyClient::connect(opts)?)
    } else {
        // Pages a lazy migration left on its source are not here: refused before any restore
        // can hand us a task.
        let dir = ImageDir::new(images_dir);
        for pid in crate::images::pages::pagemap_pids(&dir)? {
            if !crate::images::pages::lazy_ranges(&dir, pid)?.is_empty() {
                return Err(Error::InvalidOptions(format!(
                    "the images in {} leave pages of pid {pid} on the source of a lazy \
                     migration: run `criu lazy-pages --page-server --address A --port N`",
                    images_dir.display()
                )));
            }
        }
        None
    };
    let path = work_dir.join(SOCKET_NAME);
    // Bound and listening under another name first, so that the socket's name appears only
    // when a restore can connect (one that sees it earlier would be refused).
    let tmp = work_dir.join(format!(".{SOCKET_NAME}.{}", std::process::id()));
    let listener = crate::sys::sock::listen_seqpacket(&tmp)
        .map_err(|e| Error::sys(format!("listen at {}", tmp.display()), e))?;
    // Whoever hands us a userfaultfd gets the images' pages copied into its process: only our
    // own user may connect.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(format!("chmod {}", tmp.display()), e))?;
    }
    std::fs::rename(&tmp, &path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(format!("rename {} to {}", tmp.display(), path.display()), e)
    })?;
    let (pid_r, pid_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe", e))?;
    log::info!("lazy-pages: listening at {}", path.display());
    match crate::sys::clone::fork_with_pid(None, libc::CLONE_FILES as u64)? {
        crate::sys::clone::Forked::Child => {
            let mut local;
            let mut fetched;
            let source: &mut dyn PageSource = match remote.take() {
                Some(client) => {
                    fetched = RemotePages::new(images_dir, client);
                    &mut fetched
                }
                None => {
                    local = LocalImages::new(images_dir);
                    &mut local
                }
            };
            let code = match serve(&listener, source, pid_w.as_fd()) {
                Ok(()) => 0,
                Err(e) => {
                    log::error!("lazy-pages: {e}");
                    1
                }
            };
            let _ = std::fs::remove_file(&path);
            crate::sys::process::exit_now(code)
        }
        crate::sys::clone::Forked::Parent(server) => {
            // Ctrl-C, a hangup or a plain kill reach the server too (same process group, or
            // sent to it): the guard outlives it to kill the tasks, not their memory.
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
                crate::sys::signal::set_action(sig as u32, libc::SIG_IGN as u64, 0, 0, 0)?;
            }
            guard(server, &pid_r, &path)
        }
    }
}

/// The guard's side: waits for the server; if it did not finish its work, kills the tasks it
/// served before the userfaultfds (which this process still holds) go away.
fn guard(server: pid_t, pid_r: &OwnedFd, path: &Path) -> Result<()> {
    let status = crate::sys::fork::wait_status(server)
        .map_err(|e| Error::sys(format!("wait for the lazy-pages server {server}"), e))?;
    let how = if libc::WIFEXITED(status) {
        if libc::WEXITSTATUS(status) == 0 {
            return Ok(());
        }
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else {
        format!("was killed by signal {}", libc::WTERMSIG(status))
    };
    let _ = std::fs::remove_file(path);
    crate::sys::fd::set_status_flags(pid_r.as_fd(), libc::O_NONBLOCK as u32)?;
    let mut pids: Vec<pid_t> = Vec::new();
    let mut b = [0u8; 4096];
    while let Ok(n) = nix::unistd::read(pid_r, &mut b) {
        if n == 0 {
            break;
        }
        pids.extend(
            b[..n - n % 4]
                .chunks_exact(4)
                .map(|c| pid_t::from_ne_bytes(c.try_into().expect("4"))),
        );
    }
    let killed = kill_trees(&pids);
    log::error!(
        "lazy-pages: the page server (pid {server}) {how} before every page was delivered: \
         killed the lazily restored tasks {killed:?} so that none reads a missing page as zeros"
    );
    Err(Error::InvalidOptions(format!(
        "lazy-pages server {server} {how}; restored tasks {killed:?} were killed"
    )))
}

/// SIGKILLs `roots` and every descendant. They are stopped first, so that none forks or
/// leaves its parent while the tree is walked.
fn kill_trees(roots: &[pid_t]) -> Vec<pid_t> {
    use nix::sys::signal::{kill, Signal};
    let tree = |roots: &[pid_t]| {
        let mut all: Vec<pid_t> = roots.iter().copied().filter(|&p| p > 0).collect();
        let mut i = 0;
        while i < all.len() {
            for c in crate::procfs::children(all[i]).unwrap_or_default() {
                if !all.contains(&c) {
                    all.push(c);
                }
            }
            i += 1;
        }
        all
    };
    let mut all = tree(roots);
    for _ in 0..16 {
        for &p in &all {
            let _ = kill(nix::unistd::Pid::from_raw(p), Signal::SIGSTOP);
        }
        let again = tree(roots);
        if again.len() == all.len() {
            break;
        }
        all = again;
    }
    for &p in &all {
        let _ = kill(nix::unistd::Pid::from_raw(p), Signal::SIGKILL);
    }
    all
}

/// The server loop.
fn serve(listener: &OwnedFd, source: &mut dyn PageSource, pid_pipe: BorrowedFd<'_>) -> Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let conn = crate::sys::sock::accept(listener.as_fd())
        .map_err(|e| Error::sys("accept a restore", e))?;
    let peer = nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| Error::sys("SO_PEERCRED", e))?;
    let me = nix::unistd::geteuid().as_raw();
    if peer.uid() != me && peer.uid() != 0 {
        return Err(Error::InvalidOptions(format!(
            "pid {} of uid {} connected, not a restore of ours",
            peer.pid(),
            peer.uid()
        )));
    }
    let t0 = Instant::now();
    let mut server = Server {
        source: &mut *source,
        spaces: Vec::new(),
        buf: Vec::new(),
        pid_pipe,
        faults: 0,
        pushed: 0,
        last_fault: None,
    };
    let mut restoring = true;
    let mut faults: Vec<(usize, u64)> = Vec::new();
    loop {
        let work_left = !faults.is_empty()
            || server
                .spaces
                .iter()
                .any(|s| !s.gone && !s.left.0.is_empty());
        if !restoring && !work_left {
            break;
        }
        let (ready, conn_ready) = {
            // Spaces whose process is gone stay out: their descriptor may poll as ready forever.
            let polled: Vec<usize> = (0..server.spaces.len())
                .filter(|&i| !server.spaces[i].gone)
                .collect();
            let mut fds: Vec<PollFd> = polled
                .iter()
                .map(|&i| PollFd::new(server.spaces[i].uffd.as_fd(), PollFlags::POLLIN))
                .collect();
            if restoring {
                fds.push(PollFd::new(conn.as_fd(), PollFlags::POLLIN));
            }
            let timeout = if work_left {
                PollTimeout::ZERO
            } else {
                PollTimeout::from(1000u16)
            };
            match poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(Error::sys("poll", e)),
            }
            let ev: Vec<bool> = fds
                .iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            let conn_ready = restoring && ev[ev.len() - 1];
            let ready: Vec<usize> = polled
                .iter()
                .zip(&ev)
                .filter(|(_, &r)| r)
                .map(|(&i, _)| i)
                .collect();
            (ready, conn_ready)
        };
        if conn_ready {
            match crate::sys::sock::recv_packet(conn.as_fd()) {
                Ok(Some(p)) => {
                    let (Some((image, pid, ranges)), Some(fd)) = (parse_handoff(&p.data), p.fd)
                    else {
                        return Err(Error::InvalidOptions(
                            "malformed message from the restorer".into(),
                        ));
                    };
                    server.add(fd, image, pid, &ranges)?;
                }
                Ok(None) => restoring = false,
                Err(e) => return Err(Error::sys("receive from the restorer", e)),
            }
        }
        for i in ready {
            server.drain(i, &mut faults)?;
        }
        let mut again = Vec::new();
        for (i, addr) in std::mem::take(&mut faults) {
            if server.spaces[i].gone {
                continue;
            }
            match server.fault(i, addr)? {
                Fill::Done => {}
                Fill::Again => again.push((i, addr)),
                Fill::Gone => server.set_gone(i),
            }
        }
        faults = again;
        if faults.is_empty() {
            server.push()?;
        }
        // Spaces whose process is gone are dropped (their descriptors closed).
        for s in server.spaces.iter_mut().filter(|s| s.gone) {
            s.left.0.clear();
        }
    }
    log::info!(
        "lazy-pages: all pages delivered in {:.3} s ({} faults served, {} MiB pushed, {} address \
         spaces)",
        t0.elapsed().as_secs_f64(),
        server.faults,
        server.pushed >> 20,
        server.spaces.len()
    );
    // Closing the descriptors ends the registrations: from now on the kernel itself handles
    // faults in what is left registered, which never held saved pages (zeros, as at dump time).
    drop(server);
    source.done()?;
    let _ = conn.as_raw_fd();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn left(ranges: &[(u64, u64)]) -> Left {
        let mut l = Left::default();
        for &(s, e) in ranges {
            l.put(s, e, s);
        }
        l
    }

    fn all(l: &Left) -> Vec<(u64, u64, u64)> {
        l.0.iter().map(|(&s, &(e, src))| (s, e, src)).collect()
    }

    #[test]
    fn take_cuts_runs_and_keeps_their_saved_addresses() {
        let mut l = left(&[(0x1000, 0x5000), (0x8000, 0xa000)]);
        assert_eq!(
            l.take(0x3000, 0x9000),
            vec![(0x3000, 0x5000, 0x3000), (0x8000, 0x9000, 0x8000)]
        );
        assert_eq!(
            all(&l),
            vec![(0x1000, 0x3000, 0x1000), (0x9000, 0xa000, 0x9000)]
        );
        assert!(l.take(0x5000, 0x8000).is_empty());
        assert_eq!(l.bytes(), 0x3000);
    }

    #[test]
    fn remap_moves_what_is_left_and_the_saved_address_follows() {
        let mut l = left(&[(0x10000, 0x14000)]);
        // The first page was delivered; then the task moved the region.
        l.take(0x10000, 0x11000);
        for (s, e, src) in l.take(0x10000, 0x14000) {
            l.put(s - 0x10000 + 0x50000, e - 0x10000 + 0x50000, src);
        }
        assert_eq!(all(&l), vec![(0x51000, 0x54000, 0x11000)]);
        assert_eq!(l.find(0x52fff), Some((0x51000, 0x54000, 0x11000)));
        assert_eq!(l.find(0x50000), None);
        assert_eq!(l.find(0x11000), None);
    }

    #[test]
    fn handoff_messages_parse_or_are_refused() {
        let mut m = 1i32.to_ne_bytes().to_vec();
        m.extend_from_slice(&42i32.to_ne_bytes());
        for v in [0x1000u64, 0x3000, 0x5000, 0x4000, 0x7001, 0x9000] {
            m.extend_from_slice(&v.to_ne_bytes());
        }
        // Empty and unaligned ranges are dropped.
        assert_eq!(parse_handoff(&m), Some((1, 42, vec![(0x1000, 0x3000)])));
        assert_eq!(parse_handoff(&m[..9]), None);
        assert_eq!(parse_handoff(&m[..4]), None);
        assert_eq!(parse_handoff(&[]), None);
    }
}
