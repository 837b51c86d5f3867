//! Memory: the VMA list (mm-PID.img), which pages hold data (pagemap-PID.img) and the data
//! (pages-N.img). Dump reads present private pages with process_vm_readv (pages without
//! PROT_READ through /proc/PID/mem); restore rebuilds each VMA at a temporary address in the new
//! task, fills it from the pages file, and the tracer moves it into place with mremap.

use std::fs::File;
use std::os::unix::fs::MetadataExt;

use libc::pid_t;

use crate::error::{Error, Result};
use crate::files::FileTable;
use crate::images::pages::PageFile;
use crate::images::PE_PRESENT;
use crate::pb;
use crate::procfs::MapEntry;
use crate::sys::mem::{ProcMem, PAGE_SIZE};
use crate::sys::pagemap::{
    PageRegion, Pagemap, ScanQuery, PAGE_IS_FILE, PAGE_IS_GUARD, PAGE_IS_PFNZERO, PAGE_IS_PRESENT,
    PAGE_IS_SWAPPED,
};

// vma_entry.status bits, as CRIU defines them.
pub const VMA_AREA_REGULAR: u32 = 1 << 0;
pub const VMA_AREA_STACK: u32 = 1 << 1;
pub const VMA_AREA_VSYSCALL: u32 = 1 << 2;
pub const VMA_AREA_VDSO: u32 = 1 << 3;
pub const VMA_AREA_HEAP: u32 = 1 << 5;
pub const VMA_FILE_PRIVATE: u32 = 1 << 6;
pub const VMA_FILE_SHARED: u32 = 1 << 7;
pub const VMA_ANON_SHARED: u32 = 1 << 8;
pub const VMA_ANON_PRIVATE: u32 = 1 << 9;
pub const VMA_AREA_VVAR: u32 = 1 << 12;
pub const VMA_AREA_MEMFD: u32 = 1 << 14;

/// Bytes per process_vm_readv batch: large enough to amortise the call, small enough to stay
/// in cache on its way to the image.
const CHUNK: usize = 4 << 20;

pub fn is_vdso_or_vvar(e: &pb::VmaEntry) -> bool {
    e.status & (VMA_AREA_VDSO | VMA_AREA_VVAR) != 0
}

/// Whether the VMA's private pages are part of the image.
pub fn holds_private_pages(e: &pb::VmaEntry) -> bool {
    e.status & VMA_AREA_REGULAR != 0
        && e.status & (VMA_ANON_PRIVATE | VMA_FILE_PRIVATE) != 0
        && !is_vdso_or_vvar(e)
}

fn prot_of(m: &MapEntry) -> u32 {
    let mut p = 0;
    if m.read {
        p |= libc::PROT_READ;
    }
    if m.write {
        p |= libc::PROT_WRITE;
    }
    if m.exec {
        p |= libc::PROT_EXEC;
    }
    p as u32
}

fn flags_and_madv(m: &MapEntry) -> (u32, u64) {
    let mut flags = if m.shared {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE
    } as u32;
    let mut madv = 0u64;
    for f in &m.vm_flags {
        match f.as_str() {
            "gd" => flags |= libc::MAP_GROWSDOWN as u32,
            "lo" => flags |= libc::MAP_LOCKED as u32,
            "nr" => flags |= libc::MAP_NORESERVE as u32,
            "ht" => flags |= libc::MAP_HUGETLB as u32,
            "sr" => madv |= 1 << libc::MADV_SEQUENTIAL,
            "rr" => madv |= 1 << libc::MADV_RANDOM,
            "dc" => madv |= 1 << libc::MADV_DONTFORK,
            "dd" => madv |= 1 << libc::MADV_DONTDUMP,
            "mg" => madv |= 1 << libc::MADV_MERGEABLE,
            "hg" => madv |= 1 << libc::MADV_HUGEPAGE,
            "nh" => madv |= 1 << libc::MADV_NOHUGEPAGE,
            "wf" => madv |= 1 << libc::MADV_WIPEONFORK,
            _ => {}
        }
    }
    (flags, madv)
}

/// The VMA list of a frozen task, with file mappings registered in `files`.
/// `skip` is our scratch area, which is not part of the task.
pub fn collect_vmas(
    pid: pid_t,
    maps: &[MapEntry],
    skip: (u64, u64),
    start_stack: u64,
    files: &mut FileTable,
    shared: &mut Vec<SharedObject>,
) -> Result<Vec<pb::VmaEntry>> {
    let mut out: Vec<pb::VmaEntry> = Vec::new();
    for m in maps {
        if m.start >= skip.0 && m.end <= skip.1 {
            continue;
        }
        let unsupported = |what: &str| {
            Error::unsupported(
                pid,
                format!("mapping {:#x}-{:#x} {}: {what}", m.start, m.end, m.name),
            )
        };
        let (mut flags, madv) = flags_and_madv(m);
        let mut e = pb::VmaEntry {
            start: m.start,
            end: m.end,
            pgoff: m.offset,
            shmid: 0,
            prot: prot_of(m),
            flags,
            status: VMA_AREA_REGULAR,
            fd: -1,
            madv: (madv != 0).then_some(madv),
            fdflags: None,
        };
        if m.has_flag("ht") {
            return Err(unsupported("hugetlb mappings are not supported yet"));
        }
        if m.has_flag("ss") {
            return Err(unsupported("shadow stacks are not supported yet"));
        }
        match m.name.as_str() {
            "[vsyscall]" => e.status = VMA_AREA_VSYSCALL,
            "[vdso]" => e.status |= VMA_AREA_VDSO,
            "[vvar]" | "[vvar_vclock]" => {
                // CRIU keeps the vvar pages as one VMA.
                if let Some(prev) = out.last_mut() {
                    if prev.status & VMA_AREA_VVAR != 0 && prev.end == m.start {
                        prev.end = m.end;
                        continue;
                    }
                }
                e.status |= VMA_AREA_VVAR;
            }
            "[uprobes]" => return Err(unsupported("uprobes are not supported")),
            // MAP_SHARED|MAP_ANONYMOUS memory: a shmem object, identified by its inode.
            _ if m.shared
                && (m.name == "/dev/zero (deleted)" || m.name.starts_with("[anon_shmem:")) =>
            {
                let map_file = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
                let meta = std::fs::metadata(&map_file)
                    .map_err(|err| Error::io(format!("stat {map_file}"), err))?;
                e.flags |= libc::MAP_ANONYMOUS as u32;
                e.status |= VMA_ANON_SHARED;
                e.shmid = meta.ino();
                shared.push(SharedObject {
                    shmid: meta.ino(),
                    size: meta.size(),
                    source: map_file,
                });
            }
            _ if m.is_file() && !m.name.starts_with('[') => {
                if m.name.starts_with("/SYSV") {
                    return Err(unsupported("SysV shared memory is not supported yet"));
                }
                let map_file = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
                if let Some(name) = crate::memfd::name_of(&m.name) {
                    // A memfd: a file of its own in the images (memfd.rs), mapped by id.
                    let open_flags = if m.shared && m.write {
                        libc::O_RDWR
                    } else {
                        libc::O_RDONLY
                    } as u32;
                    e.shmid = files.add_memfd_mapping(pid, &map_file, name, open_flags)? as u64;
                    e.fdflags = Some(open_flags);
                    e.status |= VMA_AREA_MEMFD
                        | if m.shared {
                            VMA_FILE_SHARED
                        } else {
                            VMA_FILE_PRIVATE
                        };
                    out.push(e);
                    continue;
                }
                let meta = std::fs::metadata(&map_file)
                    .map_err(|err| Error::io(format!("stat {map_file}"), err))?;
                let is_devzero = {
                    use std::os::unix::fs::FileTypeExt;
                    meta.file_type().is_char_device()
                        && libc::major(meta.rdev()) == 1
                        && libc::minor(meta.rdev()) == 5
                };
                if is_devzero {
                    flags |= libc::MAP_ANONYMOUS as u32;
                    e.flags = flags;
                    if m.shared {
                        return Err(unsupported("shared anonymous memory is not supported yet"));
                    }
                    e.status |= VMA_ANON_PRIVATE;
                } else if meta.file_type().is_file() {
                    if meta.ino() != m.inode {
                        return Err(unsupported("file was replaced under the mapping"));
                    }
                    let open_flags = if m.shared && m.write {
                        libc::O_RDWR
                    } else {
                        libc::O_RDONLY
                    } as u32;
                    e.shmid = match m.name.strip_suffix(" (deleted)") {
                        // Its contents go into the images (a ghost file, see ghost.rs).
                        Some(name) => files.add_ghost_mapping(pid, &map_file, name, open_flags)?,
                        None => files.add_path(&m.name, open_flags)?,
                    } as u64;
                    e.fdflags = Some(open_flags);
                    e.status |= if m.shared {
                        VMA_FILE_SHARED
                    } else {
                        VMA_FILE_PRIVATE
                    };
                } else {
                    return Err(unsupported("mapping of a non-regular file"));
                }
            }
            _ => {
                // Anonymous, including "[heap]", "[stack]" and named "[anon:...]" memory.
                if m.shared {
                    return Err(unsupported("shared anonymous memory is not supported yet"));
                }
                e.flags |= libc::MAP_ANONYMOUS as u32;
                e.status |= VMA_ANON_PRIVATE;
                if m.name == "[heap]" {
                    e.status |= VMA_AREA_HEAP;
                }
            }
        }
        if e.status & VMA_ANON_PRIVATE != 0 && e.start <= start_stack && start_stack < e.end {
            e.status |= VMA_AREA_STACK;
        }
        if (m.has_flag("io") || m.has_flag("pf"))
            && e.status & (VMA_AREA_VDSO | VMA_AREA_VVAR | VMA_AREA_VSYSCALL) == 0
        {
            return Err(unsupported(
                "device (VM_IO/VM_PFNMAP) mappings are not supported",
            ));
        }
        out.push(e);
    }
    Ok(out)
}

/// A shmem object (one shmem inode: shared anonymous memory, a memfd) whose contents go into
/// the images.
#[derive(Clone, Debug)]
pub struct SharedObject {
    pub shmid: u64,
    pub size: u64,
    /// A /proc link through which its contents can be read (a task's map_files or fd entry).
    pub source: String,
}

/// Saves the contents of each distinct shared object once: pagemap-shmem-SHMID.img (offsets in
/// the object as vaddr, as CRIU does) and a pages file. Holes stay holes (SEEK_DATA/SEEK_HOLE on
/// the object itself, which also finds pages no task has mapped right now).
pub fn dump_shared(
    objects: &[SharedObject],
    sink: &mut dyn PageSink,
    first_pages_id: u32,
) -> Result<u64> {
    let mut done: Vec<u64> = Vec::new();
    let mut pages_id = first_pages_id;
    let mut written = 0;
    for o in objects {
        if done.contains(&o.shmid) {
            continue;
        }
        done.push(o.shmid);
        let path = &o.source;
        let obj = File::open(path).map_err(|e| Error::io(format!("open {path}"), e))?;
        let size = o.size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let ranges = crate::sys::fd::data_ranges(&obj, size)?;
        sink.write_shared(o.shmid, &obj, o.size, &ranges, pages_id)?;
        written += ranges.iter().map(|r| (r.1 - r.0) / PAGE_SIZE).sum::<u64>();
        pages_id += 1;
    }
    Ok(written)
}

/// Page counts for stats-dump.
#[derive(Clone, Copy, Debug, Default)]
pub struct PageStats {
    pub scanned: u64,
    pub written: u64,
    pub skipped_parent: u64,
    /// Pages recorded as the parent task's (PE_COW), not written again.
    pub cow: u64,
    /// Pages left on the source of a lazy migration (PE_LAZY), not written.
    pub lazy: u64,
}

/// A run of pages to save: (vma index, start, end, PAGEMAP_SCAN categories). Pages the scan
/// cannot vouch for as unwritten carry PAGE_IS_WRITTEN.
type Run = (usize, u64, u64, u64);

/// Write tracking during a scan: `reset` clears the write bits as they are read (the tracker is
/// then relative to this iteration) and, in a frozen task, starts tracking VMAs not tracked yet.
/// A running task's mappings may have changed since they were listed, and registering a listed
/// range that is now part of a larger mapping would split it: its registration is done while
/// it was frozen (`register_listed`), and what is untracked when scanned is copied in full.
pub struct Tracking<'a> {
    pub tracker: &'a crate::track::Tracker,
    pub reset: bool,
    pub live: bool,
    /// How each VMA stands with the tracker, from `register_listed` (None: as found).
    pub registration: Option<&'a [Registration]>,
}

/// How a listed VMA stands with the tracker once `register_listed` is done with it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Registration {
    /// Tracked since an earlier iteration: its write bits are relative to that one.
    Kept,
    /// Tracked from now on. Its pages may still be write-protected from an earlier
    /// registration, which says nothing now: when mremap merges a moved, tracked mapping into
    /// a tracked neighbour, the kernel drops the userfaultfd of the merged mapping but leaves
    /// the protection on its pages, and a write (or mprotect) while it is untracked makes such
    /// a page writable with the protection still on. `scan_pages` clears it first.
    New,
    /// Not tracked: no private pages, or the kernel refused (another userfaultfd has it).
    Untracked,
}

/// Starts tracking the listed VMAs that hold private pages (those tracked already are left as
/// they are). For a frozen task, whose listing is current: each range is one whole mapping.
pub fn register_listed(
    pid: pid_t,
    tracker: &crate::track::Tracker,
    vmas: &[pb::VmaEntry],
) -> Result<Vec<Registration>> {
    let pagemap = Pagemap::open(pid)?;
    Ok(vmas
        .iter()
        .map(|v| {
            if !holds_private_pages(v) {
                return Registration::Untracked;
            }
            let before = pagemap.is_write_tracked(v.start, v.end);
            match (before, tracker.register(v.start, v.end)) {
                (_, false) => Registration::Untracked,
                (true, true) => Registration::Kept,
                (false, true) => Registration::New,
            }
        })
        .collect())
}

/// The pages of a task that hold data, as one PAGEMAP_SCAN per VMA sees them.
pub struct Scan {
    runs: Vec<Run>,
    scanned: u64,
}

/// Scans the task's private memory. With `tracking`, the same scan reads (and with `reset`,
/// clears) the write bits of tracked VMAs; other VMAs count as written throughout. `held` (the
/// pages the parent images hold, when the write bits are relative to them) lets anonymous VMAs
/// be scanned in two cheap passes instead of one that looks at every page (see below).
pub fn scan_pages(
    pid: pid_t,
    vmas: &[pb::VmaEntry],
    tracking: Option<&Tracking>,
    held: Option<&[(u64, u64)]>,
) -> Result<Scan> {
    use crate::sys::pagemap::{PAGE_IS_WRITTEN, PM_SCAN_CHECK_WPASYNC, PM_SCAN_WP_MATCHING};
    use nix::errno::Errno;
    let pagemap = Pagemap::open(pid)?;
    let mut runs: Vec<Run> = Vec::new();
    let mut scanned = 0;
    // PAGE_IS_FILE costs a look at every page's struct page: only asked where it can be set.
    let plain = |anon: bool| ScanQuery {
        anyof: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        ret: PAGE_IS_PRESENT
            | PAGE_IS_SWAPPED
            | PAGE_IS_PFNZERO
            | PAGE_IS_GUARD
            | if anon { 0 } else { PAGE_IS_FILE },
        ..Default::default()
    };
    let wp = |reset: bool| PM_SCAN_CHECK_WPASYNC | if reset { PM_SCAN_WP_MATCHING } else { 0 };
    let tracked = |anon: bool, reset: bool| ScanQuery {
        flags: wp(reset),
        ret: plain(anon).ret | PAGE_IS_WRITTEN,
        ..plain(anon)
    };
    // The kernel's fast path: only the written pages, found and re-protected.
    let written_only = |reset: bool| ScanQuery {
        flags: wp(reset),
        mask: PAGE_IS_WRITTEN,
        ret: PAGE_IS_WRITTEN,
        ..Default::default()
    };
    let scan_err = |v: &pb::VmaEntry, e: Errno| {
        Error::sys(
            format!("PAGEMAP_SCAN of pid {pid} [{:#x}, {:#x})", v.start, v.end),
            e,
        )
    };
    let holes_read_written = crate::kerndat::get().scan_holes_written == Ok(true);
    let mut regions: Vec<PageRegion> = Vec::new();
    for (i, v) in vmas.iter().enumerate() {
        if !holds_private_pages(v) {
            continue;
        }
        scanned += (v.end - v.start) / PAGE_SIZE;
        let anon = v.status & VMA_ANON_PRIVATE != 0;
        regions.clear();
        let registration = tracking
            .and_then(|t| t.registration)
            .map_or(Registration::Kept, |r| r[i]);
        if registration == Registration::New {
            tracking
                .expect("registered by it")
                .tracker
                .clear_stale(v.start, v.end);
        }
        // Write bits of a mapping another userfaultfd tracks are not ours to read or reset.
        let tracking = tracking.filter(|_| registration != Registration::Untracked);
        // Whether the categories' write bits mean anything.
        let mut writes_known = false;
        // Unwritten pages the parent images hold, known present without looking at them.
        let mut unchanged: Vec<(u64, u64)> = Vec::new();
        let first = match (tracking, held) {
            // An anonymous VMA drops a zapped page outright (no write-protect marker stays),
            // and the kernel reports the empty entry, or the missing page table, as written;
            // so a page that was present at the last scan and is not reported written since is
            // still there, in memory or in swap, unchanged. Only the written pages and those
            // the parent images lack need a closer look. Kernels that skip missing page
            // tables get the full scan below, which looks at every page.
            (Some(t), Some(held)) if anon && holes_read_written => {
                // All written pages, present or not, re-protected (the kernel's fast path)...
                let mut written = Vec::new();
                match pagemap.try_scan(v.start, v.end, written_only(t.reset), &mut written) {
                    Ok(()) => {
                        let written: Vec<(u64, u64)> =
                            written.iter().map(|r| (r.start, r.end)).collect();
                        // ...then which of them are still there (a written page missing here
                        // was zapped: it reads as zero), and which of the unwritten pages the
                        // parent images lack (new since) are: usually few ranges, so these
                        // per-page looks cost what was written, not what is mapped.
                        let lacking = subtract((v.start, v.end), held);
                        let mut look = written.clone();
                        look.extend(lacking.iter().copied());
                        let look = merge(look);
                        unchanged = subtract((v.start, v.end), &look);
                        for (s, e) in look {
                            pagemap.scan(s, e, plain(true), &mut regions)?;
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            (Some(t), _) => {
                let r = pagemap.try_scan(v.start, v.end, tracked(anon, t.reset), &mut regions);
                writes_known = r.is_ok();
                r
            }
            (None, _) => {
                pagemap.scan(v.start, v.end, plain(anon), &mut regions)?;
                Ok(())
            }
        };
        match first {
            Ok(()) => {}
            Err(Errno::EPERM) if tracking.is_some() => {
                // Not tracked (new since the last iteration, moved, or never registered).
                let t = tracking.expect("checked");
                regions.clear();
                if t.reset && !t.live && t.tracker.register(v.start, v.end) {
                    // Every present page reads as written (once protection left from an
                    // earlier registration is cleared) and gets protected.
                    t.tracker.clear_stale(v.start, v.end);
                    pagemap
                        .try_scan(v.start, v.end, tracked(anon, true), &mut regions)
                        .map_err(|e| scan_err(v, e))?;
                } else {
                    pagemap.scan(v.start, v.end, plain(anon), &mut regions)?;
                }
            }
            Err(e) => return Err(scan_err(v, e)),
        }
        let mut mine: Vec<Run> = unchanged
            .into_iter()
            .map(|(s, e)| (i, s, e, PAGE_IS_PRESENT))
            .collect();
        for r in &regions {
            if r.categories & PAGE_IS_GUARD != 0 {
                return Err(Error::unsupported(
                    pid,
                    format!(
                        "guard pages at {:#x}-{:#x} are not supported yet",
                        r.start, r.end
                    ),
                ));
            }
            let keep = r.categories & PAGE_IS_SWAPPED != 0
                || (r.categories & PAGE_IS_PRESENT != 0
                    && r.categories & PAGE_IS_PFNZERO == 0
                    && (anon || r.categories & PAGE_IS_FILE == 0));
            if !keep {
                continue;
            }
            let mut cats = r.categories & (PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_WRITTEN);
            if !writes_known {
                cats |= PAGE_IS_WRITTEN;
            }
            mine.push((i, r.start, r.end, cats));
        }
        mine.sort_unstable_by_key(|r| r.1);
        for r in mine {
            match runs.last_mut() {
                Some(last) if last.0 == i && last.2 == r.1 && last.3 == r.3 => last.2 = r.2,
                _ => runs.push(r),
            }
        }
    }
    Ok(Scan { runs, scanned })
}

/// Threads that copy a frozen task's memory into the image: a copy into new page-cache pages
/// costs more in page allocation than in the copy, and two cores allocate twice as fast.
const COPY_THREADS: usize = 2;

/// A piece of memory to copy: source address, length, offset in the pages file, and whether to
/// read it through /proc/PID/mem (pages without PROT_READ, and pages shared copy-on-write:
/// process_vm_readv pins pages, and pinning a shared anonymous page unshares it, which would
/// copy the task's memory under it).
type Piece = (u64, u64, u64, bool);

/// How a page is saved.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Save {
    /// The parent task's page: recorded, not written (PE_COW).
    Cow,
    /// Unchanged since the previous iteration, whose images hold it (PE_PARENT).
    Parent,
    /// Written, read with process_vm_readv.
    Pinned,
    /// Written, read through /proc/PID/mem.
    Unpinned,
}

/// What a task's memory dump will write, decided while every task of the tree is frozen and
/// before any page of any task is read (reading can unshare pages and so hide sharing).
pub struct PagePlan {
    pid: pid_t,
    pub entries: Vec<pb::PagemapEntry>,
    pieces: Vec<Piece>,
    bytes: u64,
    pub stats: PageStats,
}

/// Raw pagemap entries read ahead: many small runs close together cost one read, not one each
/// (a read costs about as much as 32 entries).
#[derive(Default)]
struct RawWindow {
    start: u64,
    entries: Vec<u64>,
}

impl RawWindow {
    const AHEAD: u64 = 32 * PAGE_SIZE;

    fn get(
        &mut self,
        from: &crate::sys::pagemap::PagemapEntries,
        start: u64,
        end: u64,
    ) -> Result<&[u64]> {
        let have_end = self.start + self.entries.len() as u64 * PAGE_SIZE;
        if start < self.start || end > have_end {
            let want_end = end.max(start.saturating_add(Self::AHEAD));
            // Past the end of the address space the read would fail: no read-ahead there.
            self.entries = from
                .read(start, want_end)
                .or_else(|_| from.read(start, end))?;
            self.start = start;
        }
        let i = ((start - self.start) / PAGE_SIZE) as usize;
        let n = ((end - start) / PAGE_SIZE) as usize;
        Ok(&self.entries[i..i + n])
    }
}

/// Splits [start, end) by the sorted, disjoint `cover`: (start, end, covered).
fn split_by_cover(start: u64, end: u64, cover: &[(u64, u64)]) -> Vec<(u64, u64, bool)> {
    let mut out = Vec::new();
    let mut at = start;
    let first = cover.partition_point(|c| c.1 <= start);
    for &(cs, ce) in cover[first..].iter().take_while(|c| c.0 < end) {
        if cs > at {
            out.push((at, cs, false));
        }
        let (s, e) = (cs.max(at), ce.min(end));
        out.push((s, e, true));
        at = e;
    }
    if at < end {
        out.push((at, end, false));
    }
    out
}

/// Plans a task's memory dump from its scan. With `parent` (its parent task and that one's
/// VMAs), pages still shared with the parent are recorded as the parent's. With `held` (the
/// pages the previous iteration's images hold, given only when the write bits are relative to
/// those images), unwritten pages are recorded as being there.
pub fn plan_pages(
    pid: pid_t,
    vmas: &[pb::VmaEntry],
    scan: Scan,
    parent: Option<(pid_t, &[pb::VmaEntry])>,
    held: Option<&[(u64, u64)]>,
    defer_pinning: bool,
) -> Result<PagePlan> {
    use crate::sys::pagemap::{
        exclusive_or_swapped, is_pte_marker, same_frame, shows_frames, PagemapEntries,
        PAGE_IS_WRITTEN,
    };
    let inherited = match parent {
        Some((_, pv)) => inherited_from(vmas, pv),
        None => vec![None; vmas.len()],
    };
    let mine = PagemapEntries::open(pid)?;
    let theirs = match parent {
        Some((ppid, _)) => Some(PagemapEntries::open(ppid)?),
        None => None,
    };
    let mut own_window = RawWindow::default();
    // Runs of pages saved the same way: (vma, start, end, how).
    let mut parts: Vec<(usize, u64, u64, Save)> = Vec::with_capacity(scan.runs.len());
    let mut add = |i: usize, start: u64, end: u64, how: Save| match parts.last_mut() {
        Some(last) if last.0 == i && last.2 == start && last.3 == how => last.2 = end,
        _ => parts.push((i, start, end, how)),
    };
    for (i, run_start, run_end, cats) in scan.runs {
        let clean = cats & PAGE_IS_WRITTEN == 0;
        let pieces = match held {
            Some(h) if clean => split_by_cover(run_start, run_end, h),
            _ => vec![(run_start, run_end, false)],
        };
        for (start, end, in_parent) in pieces {
            if in_parent && cats & PAGE_IS_SWAPPED == 0 {
                add(i, start, end, Save::Parent);
                continue;
            }
            let readable = vmas[i].prot & libc::PROT_READ as u32 != 0;
            if defer_pinning && cats & PAGE_IS_SWAPPED == 0 && inherited[i].is_none() {
                // Present pages, no sharing with a parent task to find: which can be pinned is
                // decided after the freeze (refine_pinning).
                add(
                    i,
                    start,
                    end,
                    if readable {
                        Save::Pinned
                    } else {
                        Save::Unpinned
                    },
                );
                continue;
            }
            let own = own_window.get(&mine, start, end)?;
            let parents = match (&theirs, inherited[i]) {
                (Some(t), Some(_)) => Some(t.read(start, end)?),
                _ => None,
            };
            for (k, e) in own.iter().enumerate() {
                let addr = start + k as u64 * PAGE_SIZE;
                if is_pte_marker(*e) {
                    // A write-protect marker on an empty pte: no data, the page reads as zero.
                    continue;
                }
                let how = if in_parent && shows_frames(*e) {
                    // Really swapped out (not a marker), and unchanged.
                    Save::Parent
                } else if parents.as_ref().is_some_and(|p| same_frame(*e, p[k])) {
                    Save::Cow
                } else if readable && exclusive_or_swapped(*e) {
                    Save::Pinned
                } else {
                    Save::Unpinned
                };
                add(i, addr, addr + PAGE_SIZE, how);
            }
        }
    }
    let mut plan = PagePlan {
        pid,
        entries: Vec::with_capacity(parts.len()),
        pieces: Vec::with_capacity(parts.len()),
        bytes: 0,
        stats: PageStats {
            scanned: scan.scanned,
            ..Default::default()
        },
    };
    for (_, start, end, how) in parts {
        let nr = (end - start) / PAGE_SIZE;
        let flags = match how {
            Save::Cow => crate::images::PE_COW,
            Save::Parent => crate::images::PE_PARENT,
            Save::Pinned | Save::Unpinned => PE_PRESENT,
        };
        match plan.entries.last_mut() {
            // Adjacent pages saved the same way share one entry.
            Some(last)
                if flags != crate::images::PE_COW
                    && last.flags == Some(flags)
                    && last.vaddr + last.nr_pages.unwrap_or(0) * PAGE_SIZE == start =>
            {
                let n = last.nr_pages.unwrap_or(0) + nr;
                last.nr_pages = Some(n);
                last.compat_nr_pages = u32::try_from(n).unwrap_or(0);
            }
            _ => plan.entries.push(pb::PagemapEntry {
                vaddr: start,
                // CRIU 4.2 reads nr_pages; older readers (crit 3.17) only this one.
                compat_nr_pages: u32::try_from(nr).unwrap_or(0),
                in_parent: None,
                flags: Some(flags),
                nr_pages: Some(nr),
            }),
        }
        match how {
            Save::Cow => plan.stats.cow += nr,
            Save::Parent => plan.stats.skipped_parent += nr,
            Save::Pinned | Save::Unpinned => {
                plan.stats.written += nr;
                plan.pieces
                    .push((start, end - start, plan.bytes, how == Save::Unpinned));
                plan.bytes += end - start;
            }
        }
    }
    Ok(plan)
}

/// Copies the planned pages into `out` (the task's pages-N.img). A frozen task must give every
/// page. A running one (`live`: a pre-dump) may unmap or protect memory meanwhile: pages it no
/// longer lets us read are left out of the plan, and the next iteration finds them missing from
/// these images and copies them then. Returns how many pages were left out.
pub fn copy_pages(plan: &mut PagePlan, out: &File, live: bool) -> Result<u64> {
    let pid = plan.pid;
    out.set_len(plan.bytes)
        .map_err(|e| Error::io("size the pages image", e))?;
    let map = crate::sys::mm::SharedFileMap::new(out, plan.bytes)?;
    log::debug!(
        "pid {pid}: copying {} pieces ({} through /proc/PID/mem), {} bytes",
        plan.pieces.len(),
        plan.pieces.iter().filter(|p| p.3).count(),
        plan.bytes
    );
    let parts = split_by_bytes(&plan.pieces, plan.bytes, COPY_THREADS);
    let mut lost: Vec<(u64, u64)> = std::thread::scope(|scope| {
        let map = &map;
        let workers: Vec<_> = parts
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| scope.spawn(move || copy_pieces(pid, p, map, live)))
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(Error::task(pid, "memory copy thread panicked")))
            })
            .collect::<Result<Vec<Vec<(u64, u64)>>>>()
    })?
    .into_iter()
    .flatten()
    .collect();
    if lost.is_empty() {
        return Ok(0);
    }
    lost.sort_unstable();
    let n = lost.len() as u64;
    log::info!("pid {pid}: {n} pages went away while being copied; the next iteration takes them");
    plan.drop_pages(&lost, &map)?;
    drop(map);
    out.set_len(plan.bytes)
        .map_err(|e| Error::io("size the pages image", e))?;
    Ok(n)
}

/// A run of a task's pages as it leaves the dumper, in address order: an entry without data
/// (PE_PARENT, PE_COW) or pages read from the task.
pub enum Outgoing<'a> {
    Entry(&'a pb::PagemapEntry),
    Data { vaddr: u64, data: &'a [u8] },
}

/// Where a dump's page data goes: local image files, or a page server.
pub trait PageSink {
    /// Whether the destination holds an earlier iteration's pages of task `pid`, so that
    /// PE_PARENT entries can refer to them.
    fn has_parent(&mut self, pid: pid_t) -> Result<bool>;
    /// Saves a task's pages as planned; a running task (`live`) may lose pages meanwhile: they
    /// leave the plan. Returns how many were lost.
    /// `image_pid` names the task in the images (its pid in its own pid namespace).
    fn write_task(
        &mut self,
        plan: &mut PagePlan,
        image_pid: pid_t,
        pages_id: u32,
        live: bool,
    ) -> Result<u64>;
    /// Saves the data ranges `ranges` (offsets) of shared memory object `shmid`, read from `obj`.
    /// `obj` holds `size` bytes; its last page may reach past them (a memfd's), as zeros.
    fn write_shared(
        &mut self,
        shmid: u64,
        obj: &File,
        size: u64,
        ranges: &[(u64, u64)],
        pages_id: u32,
    ) -> Result<()>;
    /// Everything was given: only now may the destination's images look complete.
    fn finish(&mut self) -> Result<()>;
}

/// Today's images: pagemap-N.img and pages-N.img in the images directory.
pub struct LocalPages {
    pub dir: crate::images::ImageDir,
}

impl PageSink for LocalPages {
    fn has_parent(&mut self, _pid: pid_t) -> Result<bool> {
        // The parent images are right there: held_ranges reads them.
        Ok(true)
    }

    fn write_task(
        &mut self,
        plan: &mut PagePlan,
        image_pid: pid_t,
        pages_id: u32,
        live: bool,
    ) -> Result<u64> {
        let path = self.dir.file(&crate::images::pages_file_name(pages_id));
        let out = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
        let lost = copy_pages(plan, &out, live)?;
        let mut pm = self.dir.create(crate::images::Kind::Pagemap, image_pid)?;
        pm.write(&pb::PagemapHead { pages_id })?;
        for e in &plan.entries {
            pm.write(e)?;
        }
        pm.finish()?;
        Ok(lost)
    }

    fn write_shared(
        &mut self,
        shmid: u64,
        obj: &File,
        size: u64,
        ranges: &[(u64, u64)],
        pages_id: u32,
    ) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let mut pm = self.dir.create(crate::images::Kind::ShmemPagemap, shmid)?;
        pm.write(&pb::PagemapHead { pages_id })?;
        let pages_path = self.dir.file(&crate::images::pages_file_name(pages_id));
        let out = File::create(&pages_path)
            .map_err(|e| Error::io(format!("create {}", pages_path.display()), e))?;
        let mut out_off = 0u64;
        let mut buf = vec![0u8; CHUNK];
        for &(start, end) in ranges {
            pm.write(&present_entry(start, (end - start) / PAGE_SIZE))?;
            let mut at = start;
            while at < end {
                let n = ((end - at) as usize).min(CHUNK);
                read_shared(obj, &mut buf[..n], at, size)?;
                out.write_all_at(&buf[..n], out_off)
                    .map_err(|e| Error::io("write pages image", e))?;
                out_off += n as u64;
                at += n as u64;
            }
        }
        pm.finish()
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Reads `buf.len()` bytes of a shared memory object of `size` bytes at `at`; what lies past
/// its end (the rest of a memfd's last page) reads as zeros.
pub fn read_shared(obj: &File, buf: &mut [u8], at: u64, size: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let in_file = (size.saturating_sub(at) as usize).min(buf.len());
    obj.read_exact_at(&mut buf[..in_file], at)
        .map_err(|e| Error::io("read a shared memory object", e))?;
    buf[in_file..].fill(0);
    Ok(())
}

/// A PE_PRESENT entry of `nr` pages at `vaddr`.
pub fn present_entry(vaddr: u64, nr: u64) -> pb::PagemapEntry {
    pb::PagemapEntry {
        vaddr,
        // CRIU 4.2 reads nr_pages; older readers (crit 3.17) only this one.
        compat_nr_pages: u32::try_from(nr).unwrap_or(0),
        in_parent: None,
        flags: Some(PE_PRESENT),
        nr_pages: Some(nr),
    }
}

/// Appends `nr` pages at `vaddr` with `flags` to `entries`, extending the last entry when
/// they continue it.
pub fn push_entry(entries: &mut Vec<pb::PagemapEntry>, vaddr: u64, nr: u64, flags: u32) {
    match entries.last_mut() {
        Some(l)
            if flags != crate::images::PE_COW
                && l.flags == Some(flags)
                && l.vaddr + l.nr_pages.unwrap_or(0) * PAGE_SIZE == vaddr =>
        {
            let n = l.nr_pages.unwrap_or(0) + nr;
            l.nr_pages = Some(n);
            l.compat_nr_pages = u32::try_from(n).unwrap_or(0);
        }
        _ => entries.push(pb::PagemapEntry {
            flags: Some(flags),
            ..present_entry(vaddr, nr)
        }),
    }
}

impl PagePlan {
    pub fn pid(&self) -> pid_t {
        self.pid
    }

    /// Reads the planned pages in address order into `buf` (at most its size at a time) and
    /// hands each run read, and each entry without data, to `out`, which sends them on. A
    /// frozen task must give every page; a running one (`live`) may have lost some: they are
    /// skipped and leave the plan, whose entries become what `out` was given. Returns how many
    /// pages were lost.
    pub fn stream(
        &mut self,
        live: bool,
        buf: &mut [u8],
        out: &mut dyn FnMut(Outgoing) -> Result<()>,
    ) -> Result<u64> {
        let pid = self.pid;
        let cap = (buf.len() as u64 / PAGE_SIZE * PAGE_SIZE).max(PAGE_SIZE) as usize;
        let mut proc_mem: Option<ProcMem> = None;
        let mut sent: Vec<pb::PagemapEntry> = Vec::with_capacity(self.entries.len());
        let mut lost = 0u64;
        let mut pi = 0usize;
        // (addr, len, via_mem) still to read of the current piece.
        let pieces = std::mem::take(&mut self.pieces);
        let entries = std::mem::take(&mut self.entries);
        for e in &entries {
            let nr = e.nr_pages.unwrap_or(e.compat_nr_pages as u64);
            if e.flags != Some(PE_PRESENT) {
                out(Outgoing::Entry(e))?;
                push_entry(&mut sent, e.vaddr, nr, e.flags.unwrap_or(PE_PRESENT));
                continue;
            }
            let end = e.vaddr + nr * PAGE_SIZE;
            // Batches of address-contiguous pieces of one kind, up to `cap` bytes.
            let mut batch: Vec<(u64, usize)> = Vec::new();
            let mut batch_mem = false;
            let mut pending: Option<(u64, u64, bool)> = None;
            loop {
                let next = match pending.take() {
                    Some(p) => Some(p),
                    None if pi < pieces.len() && pieces[pi].0 < end => {
                        let p = pieces[pi];
                        pi += 1;
                        Some((p.0, p.1, p.3))
                    }
                    None => None,
                };
                let batch_len: usize = batch.iter().map(|b| b.1).sum();
                let fits = |a: u64, via: bool| {
                    batch.is_empty()
                        || (via == batch_mem
                            && batch_len < cap
                            && batch.last().is_some_and(|l| l.0 + l.1 as u64 == a))
                };
                match next {
                    Some((a, l, via)) if fits(a, via) => {
                        if batch.is_empty() {
                            batch_mem = via;
                        }
                        let room = (cap - batch_len) as u64;
                        let take = l.min(room);
                        batch.push((a, take as usize));
                        if take < l {
                            pending = Some((a + take, l - take, via));
                        }
                    }
                    other => {
                        if !batch.is_empty() {
                            let pm = if batch_mem {
                                match &proc_mem {
                                    Some(p) => Some(p),
                                    None => Some(&*proc_mem.insert(ProcMem::open(pid, false)?)),
                                }
                            } else {
                                None
                            };
                            lost += send_batch(pid, &batch, pm, live, buf, &mut sent, out)?;
                            batch.clear();
                        }
                        match other {
                            Some(p) => pending = Some(p),
                            None => break,
                        }
                    }
                }
            }
        }
        self.stats.written -= lost;
        self.entries = sent;
        self.bytes = 0;
        if lost > 0 {
            log::info!(
                "pid {pid}: {lost} pages went away while being copied; the next iteration takes them"
            );
        }
        Ok(lost)
    }

    /// Lazy migration: the planned pages inside `lazy` (sorted, disjoint ranges) are not saved
    /// but recorded as PE_LAZY, for the source's page server to send on request. Returns the
    /// ranges so recorded. Called before any page is copied.
    pub fn leave_lazy(&mut self, lazy: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let mut entries = Vec::with_capacity(self.entries.len());
        let mut left = Vec::new();
        for e in std::mem::take(&mut self.entries) {
            let nr = e.nr_pages.unwrap_or(e.compat_nr_pages as u64);
            if e.flags != Some(PE_PRESENT) {
                entries.push(e);
                continue;
            }
            for (s, end, is_lazy) in split_by_cover(e.vaddr, e.vaddr + nr * PAGE_SIZE, lazy) {
                let n = (end - s) / PAGE_SIZE;
                if is_lazy {
                    push_entry(&mut entries, s, n, crate::images::PE_LAZY);
                    match left.last_mut() {
                        Some((_, le)) if *le == s => *le = end,
                        _ => left.push((s, end)),
                    }
                    self.stats.written -= n;
                } else {
                    push_entry(&mut entries, s, n, PE_PRESENT);
                }
            }
        }
        // The data that stays: the same pieces without the lazy parts, packed again.
        let mut pieces = Vec::with_capacity(self.pieces.len());
        let mut bytes = 0;
        for (a, len, _, via_mem) in std::mem::take(&mut self.pieces) {
            for (s, end, is_lazy) in split_by_cover(a, a + len, lazy) {
                if !is_lazy {
                    pieces.push((s, end - s, bytes, via_mem));
                    bytes += end - s;
                }
            }
        }
        self.entries = entries;
        self.pieces = pieces;
        self.bytes = bytes;
        left
    }

    /// Removes pages (sorted (addr, addr + PAGE_SIZE)) from the plan and their slots from the
    /// data, which `map` holds.
    fn drop_pages(
        &mut self,
        lost: &[(u64, u64)],
        map: &crate::sys::mm::SharedFileMap,
    ) -> Result<()> {
        let gone = |a: u64| lost.binary_search_by(|l| l.0.cmp(&a)).is_ok();
        let mut entries = Vec::with_capacity(self.entries.len());
        let mut pieces = Vec::with_capacity(self.pieces.len());
        let (mut src, mut dst) = (0u64, 0u64);
        for e in self.entries.drain(..) {
            let nr = e.nr_pages.unwrap_or(e.compat_nr_pages as u64);
            if e.flags != Some(PE_PRESENT) {
                entries.push(e);
                continue;
            }
            for k in 0..nr {
                let addr = e.vaddr + k * PAGE_SIZE;
                if gone(addr) {
                    src += PAGE_SIZE;
                    self.stats.written -= 1;
                    continue;
                }
                if src != dst {
                    map.copy_within(src, dst, PAGE_SIZE)?;
                }
                match entries.last_mut() {
                    Some(l)
                        if l.flags == Some(PE_PRESENT)
                            && l.vaddr + l.nr_pages.unwrap_or(0) * PAGE_SIZE == addr =>
                    {
                        let n = l.nr_pages.unwrap_or(0) + 1;
                        l.nr_pages = Some(n);
                        l.compat_nr_pages = u32::try_from(n).unwrap_or(0);
                    }
                    _ => entries.push(pb::PagemapEntry {
                        vaddr: addr,
                        compat_nr_pages: 1,
                        in_parent: None,
                        flags: Some(PE_PRESENT),
                        nr_pages: Some(1),
                    }),
                }
                pieces.push((addr, PAGE_SIZE, dst, false));
                src += PAGE_SIZE;
                dst += PAGE_SIZE;
            }
        }
        self.entries = entries;
        self.pieces = pieces;
        self.bytes = dst;
        Ok(())
    }

    /// Sends the pinned pieces' pages that are not exclusively the task's (shared copy-on-write
    /// with another process) through /proc/PID/mem instead: pinning them would unshare them.
    /// For a plan made with `defer_pinning`, once the task runs again.
    pub fn refine_pinning(&mut self) -> Result<()> {
        use crate::sys::pagemap::{exclusive_or_swapped, PagemapEntries};
        let entries = PagemapEntries::open(self.pid)?;
        let mut pieces = Vec::with_capacity(self.pieces.len());
        for &(start, len, off, via_mem) in &self.pieces {
            if via_mem {
                pieces.push((start, len, off, via_mem));
                continue;
            }
            let raw = match entries.read(start, start + len) {
                Ok(r) => r,
                // Gone meanwhile: the copy finds out page by page.
                Err(_) => {
                    pieces.push((start, len, off, via_mem));
                    continue;
                }
            };
            for (k, e) in raw.iter().enumerate() {
                let unpinned = !exclusive_or_swapped(*e) && *e & (1 << 63) != 0;
                let (a, o) = (start + k as u64 * PAGE_SIZE, off + k as u64 * PAGE_SIZE);
                match pieces.last_mut() {
                    Some(l) if l.0 + l.1 == a && l.2 + l.1 == o && l.3 == unpinned => {
                        l.1 += PAGE_SIZE
                    }
                    _ => pieces.push((a, PAGE_SIZE, o, unpinned)),
                }
            }
        }
        self.pieces = pieces;
        Ok(())
    }

    /// The pages the plan writes into the image: (start, end), in order.
    pub fn written_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.entries
            .iter()
            .filter(|e| e.flags == Some(PE_PRESENT))
            .map(|e| (e.vaddr, e.vaddr + e.nr_pages.unwrap_or(0) * PAGE_SIZE))
    }
}

/// Reads one batch of address-contiguous pieces (through `proc_mem` when given) and hands
/// what could be read to `out`. Returns the pages lost (only when `live`).
fn send_batch(
    pid: pid_t,
    batch: &[(u64, usize)],
    proc_mem: Option<&ProcMem>,
    live: bool,
    buf: &mut [u8],
    sent: &mut Vec<pb::PagemapEntry>,
    out: &mut dyn FnMut(Outgoing) -> Result<()>,
) -> Result<u64> {
    let total: usize = batch.iter().map(|b| b.1).sum();
    let start = batch[0].0;
    let whole = match proc_mem {
        None => crate::sys::mem::readv_remote(pid, &mut buf[..total], batch),
        Some(pm) => pm.read_exact_at(&mut buf[..total], start).map(|()| total),
    };
    match whole {
        Ok(n) if n == total => {
            out(Outgoing::Data {
                vaddr: start,
                data: &buf[..total],
            })?;
            push_entry(sent, start, total as u64 / PAGE_SIZE, PE_PRESENT);
            return Ok(0);
        }
        Ok(n) if !live => {
            return Err(Error::task(
                pid,
                format!("memory changed while frozen: read {n} of {total} bytes"),
            ))
        }
        Err(e) if !live => return Err(e),
        _ => {}
    }
    // Page by page, to keep what can still be read; runs of readable pages go out together.
    let page = PAGE_SIZE as usize;
    let mut lost = 0;
    let mut run: Option<(u64, usize)> = None;
    let mut flush = |run: &mut Option<(u64, usize)>, buf: &[u8]| -> Result<()> {
        if let Some((addr, off)) = run.take() {
            out(Outgoing::Data {
                vaddr: addr,
                data: &buf[(addr - start) as usize..off],
            })?;
            push_entry(
                sent,
                addr,
                (off - (addr - start) as usize) as u64 / PAGE_SIZE,
                PE_PRESENT,
            );
        }
        Ok(())
    };
    for k in (0..total).step_by(page) {
        let addr = start + k as u64;
        let ok = match proc_mem {
            None => {
                crate::sys::mem::readv_remote(pid, &mut buf[k..k + page], &[(addr, page)]).ok()
                    == Some(page)
            }
            Some(pm) => pm.read_exact_at(&mut buf[k..k + page], addr).is_ok(),
        };
        if ok {
            run = Some(match run {
                Some((a, _)) => (a, k + page),
                None => (addr, k + page),
            });
        } else {
            lost += 1;
            flush(&mut run, buf)?;
        }
    }
    flush(&mut run, buf)?;
    Ok(lost)
}

/// Splits pieces into `n` parts of about equal bytes, cutting pieces at page boundaries.
fn split_by_bytes(pieces: &[Piece], total: u64, n: usize) -> Vec<Vec<Piece>> {
    let share = (total / n as u64).div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let mut parts: Vec<Vec<Piece>> = vec![Vec::new(); n];
    let (mut part, mut used) = (0usize, 0u64);
    for &(addr, len, off, via_mem) in pieces {
        let (mut a, mut l, mut o) = (addr, len, off);
        while l > 0 {
            let room = if part + 1 == n {
                l
            } else {
                share.saturating_sub(used).min(l)
            };
            if room == 0 {
                part += 1;
                used = 0;
                continue;
            }
            parts[part].push((a, room, o, via_mem));
            (a, l, o) = (a + room, l - room, o + room);
            used += room;
        }
    }
    parts
}

/// Copies pieces from the task into the pages file at their offsets, CHUNK bytes per
/// process_vm_readv (pages without PROT_READ through /proc/PID/mem). With `live`, a piece that
/// fails is retried page by page and the pages that cannot be read are returned.
fn copy_pieces(
    pid: pid_t,
    pieces: &[Piece],
    out: &crate::sys::mm::SharedFileMap,
    live: bool,
) -> Result<Vec<(u64, u64)>> {
    let mut proc_mem: Option<ProcMem> = None;
    let mut lost = Vec::new();
    // Consecutive pinned pieces are batched into one process_vm_readv, up to CHUNK bytes.
    let mut batch: Vec<(u64, usize)> = Vec::new();
    let (mut batch_len, mut batch_off) = (0usize, 0u64);
    let flush = |batch: &mut Vec<(u64, usize)>,
                 batch_len: &mut usize,
                 batch_off: u64,
                 lost: &mut Vec<(u64, u64)>|
     -> Result<()> {
        if *batch_len == 0 {
            return Ok(());
        }
        let n = match out.read_remote_at(pid, batch_off, batch) {
            Ok(n) => n,
            Err(_) if live => 0,
            Err(e) => return Err(e),
        };
        if n != *batch_len {
            if !live {
                return Err(Error::task(
                    pid,
                    format!("memory changed while frozen: read {n} of {batch_len} bytes"),
                ));
            }
            // Page by page, to keep what can still be read.
            let mut at = batch_off;
            for &(addr, len) in batch.iter() {
                for p in (0..len as u64).step_by(PAGE_SIZE as usize) {
                    let page = [(addr + p, PAGE_SIZE as usize)];
                    if out.read_remote_at(pid, at + p, &page).ok() != Some(PAGE_SIZE as usize) {
                        lost.push((addr + p, addr + p + PAGE_SIZE));
                    }
                }
                at += len as u64;
            }
        }
        batch.clear();
        *batch_len = 0;
        Ok(())
    };
    for &(start, len, off, via_mem) in pieces {
        let mut done = 0u64;
        while done < len {
            let n = ((len - done) as usize).min(CHUNK);
            let (addr, at) = (start + done, off + done);
            if !via_mem {
                // A batch must be contiguous in the file.
                if batch_len + n > CHUNK || (batch_len > 0 && batch_off + batch_len as u64 != at) {
                    flush(&mut batch, &mut batch_len, batch_off, &mut lost)?;
                }
                if batch_len == 0 {
                    batch_off = at;
                }
                batch.push((addr, n));
                batch_len += n;
            } else {
                flush(&mut batch, &mut batch_len, batch_off, &mut lost)?;
                let pm = match &proc_mem {
                    Some(p) => p,
                    None => proc_mem.insert(ProcMem::open(pid, false)?),
                };
                match out.pread_at(pm, addr, at, n as u64) {
                    Ok(()) => {}
                    Err(_) if live => {
                        for p in (0..n as u64).step_by(PAGE_SIZE as usize) {
                            if out.pread_at(pm, addr + p, at + p, PAGE_SIZE).is_err() {
                                lost.push((addr + p, addr + p + PAGE_SIZE));
                            }
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            done += n as u64;
        }
    }
    flush(&mut batch, &mut batch_len, batch_off, &mut lost)?;
    Ok(lost)
}

// ---------------------------------------------------------------------------------------------
// Restore

/// Data area of the control block: arguments of the syscalls the tracer runs in the restored
/// task (PR_SET_MM_MAP and auxv, timers, groups, seccomp programs).
pub const CTRL_DATA_SIZE: u64 = 256 << 10;
const TWO_MB: u64 = 2 << 20;
/// Lowest address we ever use (vm.mmap_min_addr is 64 KiB by default).
const LOW_LIMIT: u64 = 1 << 20;
/// Top of the 47-bit user address space, minus a guard.
const HIGH_LIMIT: u64 = 0x7fff_ff00_0000;

/// Where the restored task builds its memory before the tracer moves it into place: a region
/// that is free both in the restorer (whose address space the new task starts with) and in the
/// final layout of the task.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The whole reserved region (shared by every task of the tree).
    pub base: u64,
    pub len: u64,
    /// `syscall; int3` page the tracer runs syscalls from, followed by CTRL_DATA_SIZE of data.
    pub ctrl: u64,
    /// A free stretch for moving the vdso when its old and new places overlap.
    pub bounce: u64,
    /// Stacks of the threads the new task starts before the tracer takes over
    /// (THREAD_STACK bytes each).
    pub stacks: u64,
    /// Temporary address of each VMA that is built and moved (index into the VMA list).
    pub temps: Vec<(usize, u64)>,
}

impl Layout {
    pub fn ctrl_data(&self) -> u64 {
        self.ctrl + PAGE_SIZE
    }
}

/// VMAs built at their own temporary address (everything but vdso, vvar, vsyscall, and shared
/// anonymous memory, which is built once per object and mapped into each VMA).
pub fn is_built(e: &pb::VmaEntry) -> bool {
    e.status & VMA_AREA_REGULAR != 0 && !is_vdso_or_vvar(e) && e.status & VMA_ANON_SHARED == 0
}

fn merge(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// A parked thread only sits in pause(): it never touches its stack.
pub const THREAD_STACK: u64 = PAGE_SIZE;

/// One task to lay out: its VMAs and how many threads it has besides the leader.
pub struct LayoutRequest<'a> {
    pub vmas: &'a [pb::VmaEntry],
    pub threads: usize,
    /// VMAs the task inherits from its parent: they use the parent's build address.
    pub inherited: &'a [bool],
}

/// Plans the build areas of every task of a tree inside one reserved region, free in the
/// restorer (whose address space each task starts with) and in every task's final layout (each
/// task carries the others' build areas until it drops the whole region at the end).
/// Also places the shared objects (`shared`: sizes), returning their temporary addresses.
pub fn plan_layouts(
    tasks: &[LayoutRequest],
    shared: &[u64],
    own: &[MapEntry],
    vdso_len: u64,
) -> Result<(Vec<Layout>, Vec<u64>)> {
    // Size: each VMA at an address congruent to its final one modulo 2 MiB (so transparent
    // huge pages stay huge and mremap can move whole page tables), plus a guard page between.
    let mut need: u64 = shared
        .iter()
        .map(|s| s.div_ceil(PAGE_SIZE) * PAGE_SIZE + PAGE_SIZE)
        .sum();
    for t in tasks {
        need += PAGE_SIZE + CTRL_DATA_SIZE + PAGE_SIZE + vdso_len + PAGE_SIZE;
        need += t.threads as u64 * THREAD_STACK + PAGE_SIZE;
        for (_, e) in t
            .vmas
            .iter()
            .enumerate()
            .filter(|(i, e)| is_built(e) && !t.inherited[*i])
        {
            need += (e.end - e.start) + TWO_MB + PAGE_SIZE;
        }
    }
    need = need.div_ceil(TWO_MB) * TWO_MB;
    let mut busy: Vec<(u64, u64)> = own.iter().map(|m| (m.start, m.end)).collect();
    for t in tasks {
        busy.extend(t.vmas.iter().map(|e| (e.start, e.end)));
    }
    busy.push((0, LOW_LIMIT));
    busy.push((HIGH_LIMIT, u64::MAX));
    let busy = merge(busy);
    // The highest free gap that fits, leaving a 1 GiB cushion from neighbours (heaps grow).
    let cushion = 1 << 30;
    let mut base = None;
    for w in busy.windows(2).rev() {
        let (gap_start, gap_end) = (w[0].1, w[1].0);
        if gap_end > gap_start && gap_end - gap_start >= need + 2 * cushion {
            base = Some(((gap_end - cushion - need) / TWO_MB) * TWO_MB);
            break;
        }
    }
    let base = base.ok_or_else(|| {
        Error::InvalidOptions(format!(
            "no free address range of {need:#x} bytes to build the tasks in"
        ))
    })?;
    let mut at = base;
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        let ctrl = at;
        at += PAGE_SIZE + CTRL_DATA_SIZE + PAGE_SIZE;
        let bounce = at;
        at += vdso_len + PAGE_SIZE;
        let stacks = at;
        at += t.threads as u64 * THREAD_STACK + PAGE_SIZE;
        let mut temps = Vec::new();
        for (i, e) in t
            .vmas
            .iter()
            .enumerate()
            .filter(|(i, e)| is_built(e) && !t.inherited[*i])
        {
            // Next address >= at with the same offset in a 2 MiB frame as e.start.
            let want = e.start % TWO_MB;
            let mut tmp = (at / TWO_MB) * TWO_MB + want;
            if tmp < at {
                tmp += TWO_MB;
            }
            temps.push((i, tmp));
            at = tmp + (e.end - e.start) + PAGE_SIZE;
        }
        out.push(Layout {
            base,
            len: need,
            ctrl,
            bounce,
            stacks,
            temps,
        });
    }
    let mut shared_at = Vec::with_capacity(shared.len());
    for s in shared {
        shared_at.push(at);
        at += s.div_ceil(PAGE_SIZE) * PAGE_SIZE + PAGE_SIZE;
    }
    debug_assert!(at <= base + need);
    Ok((out, shared_at))
}

/// Builds a shared anonymous object at `addr` (`size` bytes) and fills it from its pages.
pub fn premap_shared(
    addr: u64,
    size: u64,
    pagemap: &[pb::PagemapEntry],
    pages: &PageFile,
) -> Result<u64> {
    use crate::sys::mm;
    let len = size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    mm::mmap_fixed(
        addr,
        len,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED | libc::MAP_ANONYMOUS,
        None,
        0,
    )?;
    let mut segments = Vec::new();
    let mut off = 0;
    for pe in pagemap {
        let nr = pe.nr_pages.unwrap_or(pe.compat_nr_pages as u64);
        if pe.flags.unwrap_or(PE_PRESENT) & PE_PRESENT == 0 {
            continue;
        }
        if pe.vaddr + nr * PAGE_SIZE > len {
            return Err(Error::InvalidOptions(format!(
                "shared memory pages at {:#x} beyond its size {len:#x}",
                pe.vaddr
            )));
        }
        segments.push((addr + pe.vaddr, nr * PAGE_SIZE, off));
        off += nr * PAGE_SIZE;
    }
    fill_parallel(&segments, pages)?;
    Ok(off / PAGE_SIZE)
}

/// The madvise() calls a saved madv bitmap stands for.
pub fn madvise_list(madv: u64) -> impl Iterator<Item = i32> {
    [
        libc::MADV_SEQUENTIAL,
        libc::MADV_RANDOM,
        libc::MADV_DONTFORK,
        libc::MADV_DONTDUMP,
        libc::MADV_MERGEABLE,
        libc::MADV_HUGEPAGE,
        libc::MADV_NOHUGEPAGE,
        libc::MADV_WIPEONFORK,
    ]
    .into_iter()
    .filter(move |a| madv & (1 << a) != 0)
}

fn madvise_bits(addr: u64, len: u64, madv: u64) -> Result<()> {
    for advice in [
        libc::MADV_SEQUENTIAL,
        libc::MADV_RANDOM,
        libc::MADV_DONTFORK,
        libc::MADV_DONTDUMP,
        libc::MADV_MERGEABLE,
        libc::MADV_HUGEPAGE,
        libc::MADV_NOHUGEPAGE,
        libc::MADV_WIPEONFORK,
    ] {
        if madv & (1 << advice) != 0 {
            crate::sys::mm::madvise(addr, len, advice)?;
        }
    }
    Ok(())
}

/// The saved pages of a task in pagemap order: (VMA index, address, length, offset in the pages
/// file). Runs are cut at VMA boundaries.
pub fn page_segments(
    vmas: &[pb::VmaEntry],
    pagemap: &[pb::PagemapEntry],
) -> Result<Vec<(usize, u64, u64, u64)>> {
    let mut out = Vec::new();
    let mut off = 0u64;
    for pe in pagemap {
        let nr = pe.nr_pages.unwrap_or(pe.compat_nr_pages as u64);
        let flags = pe.flags.unwrap_or(PE_PRESENT);
        if flags & PE_PRESENT == 0 {
            // PE_PARENT entries were resolved when the images were opened (images::pages).
            continue;
        }
        let mut addr = pe.vaddr;
        let end = pe.vaddr + nr * PAGE_SIZE;
        while addr < end {
            let i = vmas
                .iter()
                .position(|v| v.start <= addr && addr < v.end)
                .ok_or_else(|| {
                    Error::InvalidOptions(format!(
                        "page {addr:#x} of the pagemap is outside every VMA"
                    ))
                })?;
            let n = end.min(vmas[i].end) - addr;
            out.push((i, addr, n, off));
            off += n;
            addr += n;
        }
    }
    Ok(out)
}

/// Ranges the pagemap marks as the parent task's pages (PE_COW).
pub fn cow_ranges(pagemap: &[pb::PagemapEntry]) -> Vec<(u64, u64)> {
    pagemap
        .iter()
        .filter(|pe| pe.flags.unwrap_or(PE_PRESENT) & crate::images::PE_COW != 0)
        .map(|pe| {
            (
                pe.vaddr,
                pe.vaddr + pe.nr_pages.unwrap_or(pe.compat_nr_pages as u64) * PAGE_SIZE,
            )
        })
        .collect()
}

/// madvise bits that must not be set before the fork that hands the memory to the task
/// (MADV_DONTFORK would keep it from the task, MADV_WIPEONFORK would empty it): the tracer sets
/// them in the task itself.
pub const MADV_AFTER_FORK: u64 = (1 << libc::MADV_DONTFORK) | (1 << libc::MADV_WIPEONFORK);

/// Maps every VMA at its temporary address and fills the saved pages. The restorer does this in
/// its own address space before it forks the tasks, which inherit the result: the filling can
/// use several threads (fresh pages cost more than the copy into them). VMAs a task inherits
/// from its parent (`inherited[i]`) are not built here: the task gets its parent's copy and
/// patches it itself (`apply_inherited`), so pages still shared stay shared.
/// `open_file` opens the file behind a file mapping (by files.img id) with the given flags.
pub fn premap(
    vmas: &[pb::VmaEntry],
    layout: &Layout,
    pagemap: &[pb::PagemapEntry],
    pages: &PageFile,
    open_file: &dyn Fn(u32, i32) -> Result<std::os::fd::OwnedFd>,
    inherited: &[bool],
    left_out: &[(u64, u64)],
) -> Result<u64> {
    use crate::sys::mm;
    use std::os::fd::AsFd;

    let temp_of = |i: usize| layout.temps.iter().find(|t| t.0 == i).map(|t| t.1);
    // Pages `left_out` (sorted, disjoint) stay empty: the lazy-pages daemon delivers them.
    let mut segments = Vec::new();
    for (i, addr, len, off) in page_segments(vmas, pagemap)? {
        for (s, e, lazy) in split_by_cover(addr, addr + len, left_out) {
            if !lazy {
                segments.push((i, s, e - s, off + (s - addr)));
            }
        }
    }
    for (s, e) in cow_ranges(pagemap) {
        let inside = vmas
            .iter()
            .enumerate()
            .any(|(i, v)| inherited[i] && v.start <= s && e <= v.end);
        if !inside {
            return Err(Error::InvalidOptions(format!(
                "pages {s:#x}-{e:#x} are recorded as the parent's, but the parent has no such memory"
            )));
        }
    }
    // VMAs that receive pages need PROT_WRITE while we fill them.
    let mut filled = vec![false; vmas.len()];
    for s in &segments {
        filled[s.0] = true;
    }
    for &(i, temp) in layout.temps.iter().filter(|t| !inherited[t.0]) {
        let v = &vmas[i];
        let len = v.end - v.start;
        let prot = v.prot as i32;
        let fill_prot = if filled[i] {
            prot | libc::PROT_READ | libc::PROT_WRITE
        } else {
            prot
        };
        let extra = v.flags as i32 & (libc::MAP_GROWSDOWN | libc::MAP_NORESERVE);
        if v.status & VMA_ANON_PRIVATE != 0 {
            mm::mmap_fixed(
                temp,
                len,
                fill_prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra,
                None,
                0,
            )?;
        } else if v.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED) != 0 {
            let shared = v.status & VMA_FILE_SHARED != 0;
            let oflags = if shared && prot & libc::PROT_WRITE != 0 {
                libc::O_RDWR
            } else {
                libc::O_RDONLY
            };
            let fd = open_file(v.shmid as u32, oflags)?;
            let mflags = if shared {
                libc::MAP_SHARED
            } else {
                libc::MAP_PRIVATE
            } | extra;
            mm::mmap_fixed(
                temp,
                len,
                if shared { prot } else { fill_prot },
                mflags,
                Some(fd.as_fd()),
                v.pgoff,
            )?;
        } else {
            return Err(Error::InvalidOptions(format!(
                "VMA {:#x}-{:#x} has status {:#x}, which this build cannot restore",
                v.start, v.end, v.status
            )));
        }
    }
    let mut fill = Vec::with_capacity(segments.len());
    let mut restored = 0;
    for &(i, addr, len, off) in segments.iter().filter(|s| !inherited[s.0]) {
        let temp = temp_of(i).ok_or_else(|| {
            Error::InvalidOptions(format!("page {addr:#x} lies in a VMA that holds no pages"))
        })?;
        fill.push((temp + (addr - vmas[i].start), len, off));
        restored += len / PAGE_SIZE;
    }
    fill_parallel(&fill, pages)?;
    for &(i, temp) in layout.temps.iter().filter(|t| !inherited[t.0]) {
        let v = &vmas[i];
        let len = v.end - v.start;
        if filled[i] && v.status & VMA_FILE_SHARED == 0 {
            mm::mprotect(temp, len, v.prot as i32)?;
        }
        if let Some(m) = v.madv {
            madvise_bits(temp, len, m & !MADV_AFTER_FORK)?;
        }
    }
    Ok(restored)
}

/// Counts for stats-restore.
#[derive(Clone, Copy, Debug, Default)]
pub struct CowStats {
    pub compared: u64,
    pub shared: u64,
    pub restored: u64,
}

/// In a task, after its fork: turns the copies of its parent's VMAs it inherited into its own
/// (`inherited[i]`): pages whose saved content equals what was inherited stay shared with the
/// parent (copy-on-write, as before the checkpoint), others are written, and pages the parent
/// has but the task had not are dropped.
pub fn apply_inherited(
    vmas: &[pb::VmaEntry],
    layout: &Layout,
    pagemap: &[pb::PagemapEntry],
    parent_vmas: &[pb::VmaEntry],
    parent_pagemap: &[pb::PagemapEntry],
    pages: &PageFile,
    inherited: &[bool],
) -> Result<CowStats> {
    use crate::sys::mm;
    let mut stats = CowStats::default();
    if !inherited.iter().any(|&x| x) {
        return Ok(stats);
    }
    let temp_of = |i: usize| {
        layout
            .temps
            .iter()
            .find(|t| t.0 == i)
            .map(|t| t.1)
            .expect("planned")
    };
    let mine = page_segments(vmas, pagemap)?;
    let theirs = page_segments(parent_vmas, parent_pagemap)?;
    let mut buf = vec![0u8; 1 << 20];
    for (i, v) in vmas.iter().enumerate().filter(|(i, _)| inherited[*i]) {
        let temp = temp_of(i);
        let len = v.end - v.start;
        let writable = v.prot & libc::PROT_WRITE as u32 != 0;
        if !writable {
            mm::mprotect(
                temp,
                len,
                v.prot as i32 | libc::PROT_READ | libc::PROT_WRITE,
            )?;
        }
        let mut have: Vec<(u64, u64)> = Vec::new();
        for &(_, addr, n, off) in mine.iter().filter(|s| s.0 == i) {
            have.push((addr, addr + n));
            let mut done = 0;
            while done < n {
                let chunk = (n - done).min(buf.len() as u64) as usize;
                pages.read_exact_at(&mut buf[..chunk], off + done)?;
                for page in buf[..chunk].chunks_exact(PAGE_SIZE as usize).enumerate() {
                    let at = temp + (addr - v.start) + done + page.0 as u64 * PAGE_SIZE;
                    stats.compared += 1;
                    if mm::equals(at, page.1) {
                        stats.shared += 1;
                    } else {
                        mm::write_to(at, page.1);
                        stats.restored += 1;
                    }
                }
                done += chunk as u64;
            }
        }
        // Pages that stay the parent's, as they were at checkpoint time.
        let within = |r: &(u64, u64)| v.start <= r.0 && r.1 <= v.end;
        have.extend(cow_ranges(pagemap).into_iter().filter(within));
        have.sort_unstable();
        // Pages the parent had here and we did not: ours were empty.
        let mut had: Vec<(u64, u64)> = theirs
            .iter()
            .filter(|s| parent_vmas[s.0].start == v.start)
            .map(|&(_, a, n, _)| (a, a + n))
            .collect();
        had.extend(cow_ranges(parent_pagemap).into_iter().filter(within));
        for r in had {
            for (s, e) in subtract(r, &have) {
                mm::madvise(temp + (s - v.start), e - s, libc::MADV_DONTNEED)?;
            }
        }
        if !writable {
            mm::mprotect(temp, len, v.prot as i32)?;
        }
    }
    Ok(stats)
}

/// Parts of range `r` not covered by the sorted, disjoint `cover`.
fn subtract(r: (u64, u64), cover: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = r.0;
    for &(s, e) in cover {
        if e <= at || s >= r.1 {
            continue;
        }
        if s > at {
            out.push((at, s));
        }
        at = at.max(e);
    }
    if at < r.1 {
        out.push((at, r.1));
    }
    out
}

/// Which of a task's VMAs it inherits from its parent's: same place, same size, both private
/// anonymous memory with the same flags.
pub fn inherited_from(vmas: &[pb::VmaEntry], parent: &[pb::VmaEntry]) -> Vec<Option<usize>> {
    vmas.iter()
        .map(|v| {
            if v.status & VMA_ANON_PRIVATE == 0 || !is_built(v) {
                return None;
            }
            parent.iter().position(|p| {
                p.start == v.start
                    && p.end == v.end
                    && p.flags == v.flags
                    && p.status & VMA_ANON_PRIVATE != 0
                    && is_built(p)
            })
        })
        .collect()
}

const MADV_POPULATE_WRITE: i32 = 23;

/// Threads that fill memory from the pages file: each takes a share of the bytes.
const FILL_THREADS: usize = 2;

/// Reads each (address, length, file offset) segment of the pages file into memory.
fn fill_parallel(segments: &[(u64, u64, u64)], pages: &PageFile) -> Result<()> {
    let pieces: Vec<Piece> = segments.iter().map(|&(a, l, o)| (a, l, o, true)).collect();
    let total: u64 = segments.iter().map(|s| s.1).sum();
    let parts = split_by_bytes(&pieces, total, FILL_THREADS);
    std::thread::scope(|scope| {
        let workers: Vec<_> = parts
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| {
                scope.spawn(move || -> Result<()> {
                    for &(addr, len, off, _) in p {
                        // Allocating the pages in one go, then copying, beats taking a fault
                        // per page inside the read (in VMs especially).
                        let mut done = 0;
                        while done < len {
                            let n = (len - done).min(CHUNK as u64);
                            let _ = crate::sys::mm::madvise(addr + done, n, MADV_POPULATE_WRITE);
                            let mut at = addr + done;
                            for (fd, foff, flen) in pages.file_pieces(off + done, n)? {
                                crate::sys::mm::pread_to(fd, at, flen, foff)?;
                                at += flen;
                            }
                            done += n;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| {
                    Err(Error::InvalidOptions("memory fill thread panicked".into()))
                })
            })
            .collect::<Result<Vec<()>>>()
    })?;
    Ok(())
}
