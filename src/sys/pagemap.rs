//! PAGEMAP_SCAN (Linux 6.7+) on /proc/PID/pagemap: which pages of a range are present, swapped,
//! file-backed, the zero page, or written since they were last write-protected.

use std::fs::File;
use std::os::fd::AsRawFd;

use libc::pid_t;
use nix::errno::Errno;

use crate::error::{Error, Result};

pub const PAGE_IS_WPALLOWED: u64 = 1 << 0;
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
pub const PAGE_IS_FILE: u64 = 1 << 2;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;
pub const PAGE_IS_HUGE: u64 = 1 << 6;
pub const PAGE_IS_SOFT_DIRTY: u64 = 1 << 7;
pub const PAGE_IS_GUARD: u64 = 1 << 8;

pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// _IOWR('f', 16, struct pm_scan_arg) with sizeof(pm_scan_arg) = 96.
const PAGEMAP_SCAN: libc::c_ulong = 0xc060_6610;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// What to look for: a page matches when all of `mask` (after inverting `inverted`) and at
/// least one of `anyof` (if non-zero) hold. Returned regions carry `ret` of the categories.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScanQuery {
    pub flags: u64,
    pub mask: u64,
    pub inverted: u64,
    pub anyof: u64,
    pub ret: u64,
}

pub struct Pagemap {
    file: File,
    pid: pid_t,
}

impl Pagemap {
    pub fn open(pid: pid_t) -> Result<Pagemap> {
        let path = format!("/proc/{pid}/pagemap");
        let file = File::open(&path).map_err(|e| Error::io(format!("open {path}"), e))?;
        Ok(Pagemap { file, pid })
    }

    /// Scans [start, end) and appends matching regions (adjacent pages with equal returned
    /// categories are merged by the kernel) to `out`.
    pub fn scan(
        &self,
        start: u64,
        end: u64,
        q: ScanQuery,
        out: &mut Vec<PageRegion>,
    ) -> Result<()> {
        self.try_scan(start, end, q, out).map_err(|e| {
            Error::sys(
                format!("PAGEMAP_SCAN of pid {} [{start:#x}, {end:#x})", self.pid),
                e,
            )
        })
    }

    /// `scan`, with the bare errno: EPERM with PM_SCAN_CHECK_WPASYNC means the range is not
    /// (or no longer) tracked.
    pub fn try_scan(
        &self,
        start: u64,
        end: u64,
        q: ScanQuery,
        out: &mut Vec<PageRegion>,
    ) -> std::result::Result<(), Errno> {
        const BATCH: usize = 512;
        let mut vec = vec![PageRegion::default(); BATCH];
        let mut from = start;
        while from < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                flags: q.flags,
                start: from,
                end,
                vec: vec.as_mut_ptr() as u64,
                vec_len: BATCH as u64,
                category_inverted: q.inverted,
                category_mask: q.mask,
                category_anyof_mask: q.anyof,
                return_mask: q.ret,
                ..Default::default()
            };
            // SAFETY: arg is a valid pm_scan_arg; vec has vec_len entries for the kernel to fill.
            let n = unsafe { libc::ioctl(self.file.as_raw_fd(), PAGEMAP_SCAN, &mut arg) };
            if n < 0 {
                return Err(Errno::last());
            }
            out.extend_from_slice(&vec[..n as usize]);
            // Fewer regions than room means the walk reached `end`; a full vector means resume
            // at walk_end (which may stop short of `end` even when nothing is left).
            if (n as usize) < BATCH || arg.walk_end <= from {
                break;
            }
            from = arg.walk_end;
        }
        Ok(())
    }

    /// Whether every mapping in [start, end) is tracked by an asynchronous write-protect
    /// userfaultfd (ours or another's: the kernel does not say whose). Looks at one page.
    pub fn is_write_tracked(&self, start: u64, end: u64) -> bool {
        let mut one = [PageRegion::default(); 1];
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags: PM_SCAN_CHECK_WPASYNC,
            start,
            end,
            vec: one.as_mut_ptr() as u64,
            vec_len: 1,
            max_pages: 1,
            category_anyof_mask: PAGE_IS_WPALLOWED,
            return_mask: PAGE_IS_WPALLOWED,
            ..Default::default()
        };
        // SAFETY: arg is a valid pm_scan_arg whose vec points at `one` (vec_len 1).
        unsafe { libc::ioctl(self.file.as_raw_fd(), PAGEMAP_SCAN, &mut arg) >= 0 }
    }

    /// Write-protect-and-report in one call (userfaultfd async WP tracking): with vec_len 0 the
    /// kernel only re-protects.
    pub fn write_protect(&self, start: u64, end: u64) -> Result<()> {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
            start,
            end,
            category_mask: PAGE_IS_WPALLOWED,
            return_mask: PAGE_IS_WPALLOWED,
            ..Default::default()
        };
        // SAFETY: as in scan(); vec_len 0 means no output vector.
        let n = unsafe { libc::ioctl(self.file.as_raw_fd(), PAGEMAP_SCAN, &mut arg) };
        if n < 0 {
            return Err(Error::sys(
                format!("PAGEMAP_SCAN(write-protect) of pid {}", self.pid),
                Errno::last(),
            ));
        }
        Ok(())
    }
}

/// Raw /proc/PID/pagemap entries (one u64 per page; the frame number needs CAP_SYS_ADMIN).
pub struct PagemapEntries {
    file: File,
    pid: pid_t,
}

impl PagemapEntries {
    pub fn open(pid: pid_t) -> Result<PagemapEntries> {
        let path = format!("/proc/{pid}/pagemap");
        let file = File::open(&path).map_err(|e| Error::io(format!("open {path}"), e))?;
        Ok(PagemapEntries { file, pid })
    }

    /// Entries for the pages of [start, end).
    pub fn read(&self, start: u64, end: u64) -> Result<Vec<u64>> {
        use std::os::unix::fs::FileExt;
        let n = ((end - start) / 4096) as usize;
        let mut raw = vec![0u8; n * 8];
        self.file
            .read_exact_at(&mut raw, start / 4096 * 8)
            .map_err(|e| Error::io(format!("read /proc/{}/pagemap", self.pid), e))?;
        Ok(raw
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
            .collect())
    }
}

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_MMAP_EXCLUSIVE: u64 = 1 << 56;

/// A page only this task maps (or a swapped one): pinning it cannot unshare anything.
pub fn exclusive_or_swapped(e: u64) -> bool {
    e & PM_SWAPPED != 0 || e & PM_MMAP_EXCLUSIVE != 0
}
const PM_PFN_MASK: u64 = (1 << 55) - 1;

/// A swap-type entry of type 31 (SWP_PTE_MARKER, the last of the 5-bit swap types whatever the
/// kernel's configuration) is no page at all: a userfaultfd write-protect marker on an empty
/// pte (or a guard). Only visible with the frame bits, i.e. with CAP_SYS_ADMIN.
pub fn is_pte_marker(e: u64) -> bool {
    e & PM_PRESENT == 0 && e & PM_SWAPPED != 0 && e & 0x1f == 0x1f
}

/// Whether the entry carries frame/swap bits at all (zero without CAP_SYS_ADMIN).
pub fn shows_frames(e: u64) -> bool {
    e & PM_PFN_MASK != 0
}

/// Whether two pagemap entries are the same present physical page.
pub fn same_frame(a: u64, b: u64) -> bool {
    a & PM_PRESENT != 0
        && b & PM_PRESENT != 0
        && a & PM_PFN_MASK != 0
        && a & PM_PFN_MASK == b & PM_PFN_MASK
}
