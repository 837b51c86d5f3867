//! userfaultfd ioctls for write tracking (async write-protect). The `userfaultfd` crate builds
//! its own descriptors and knows neither WP_ASYNC nor WP_UNPOPULATED, while the tracker works on
//! a descriptor created inside another process and taken with pidfd_getfd.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

use crate::error::{Error, Result};

pub const UFFD_API: u64 = 0xaa;
pub const UFFD_USER_MODE_ONLY: u64 = 1;
pub const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
/// What a write tracker asks for: faults resolved by the kernel itself, and unpopulated pages
/// protected too (PAGEMAP_SCAN refuses anonymous VMAs without it).
pub const TRACKER_FEATURES: u64 =
    UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED | UFFD_FEATURE_WP_HUGETLBFS_SHMEM;

const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
/// `_IO(0xAA, 0x00)` on /dev/userfaultfd.
pub const USERFAULTFD_IOC_NEW: u64 = 0xaa << 8;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

const fn iowr(nr: u64, size: usize) -> libc::c_ulong {
    ((3u64 << 30) | ((size as u64) << 16) | (0xaa << 8) | nr) as libc::c_ulong
}
const fn ior(nr: u64, size: usize) -> libc::c_ulong {
    ((2u64 << 30) | ((size as u64) << 16) | (0xaa << 8) | nr) as libc::c_ulong
}
const UFFDIO_API: libc::c_ulong = iowr(0x3f, std::mem::size_of::<UffdioApi>());
const UFFDIO_REGISTER: libc::c_ulong = iowr(0x00, std::mem::size_of::<UffdioRegister>());
const UFFDIO_UNREGISTER: libc::c_ulong = ior(0x01, std::mem::size_of::<UffdioRange>());

/// One ioctl on a userfaultfd whose argument is one `T`, which the kernel reads and may write.
///
/// # Safety
/// `request` must be an ioctl that takes a pointer to exactly one `T`.
unsafe fn ioctl_on<T>(
    uffd: BorrowedFd<'_>,
    request: libc::c_ulong,
    arg: &mut T,
) -> std::result::Result<(), Errno> {
    // SAFETY: the caller vouches that `request` takes one T; `arg` is valid for the call.
    if unsafe { libc::ioctl(uffd.as_raw_fd(), request, arg as *mut T) } < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// The UFFDIO_API handshake, once per descriptor.
pub fn api(uffd: BorrowedFd<'_>, features: u64) -> Result<()> {
    let mut a = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes one uffdio_api.
    let r = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_API, &mut a as *mut UffdioApi) };
    if r < 0 {
        return Err(Error::sys(
            format!("UFFDIO_API(features {features:#x})"),
            Errno::last(),
        ));
    }
    Ok(())
}

/// Registers [start, end) of the descriptor's process for write-protect tracking.
pub fn register_wp(uffd: BorrowedFd<'_>, start: u64, end: u64) -> std::result::Result<(), Errno> {
    register(uffd, start, end, UFFDIO_REGISTER_MODE_WP)
}

fn register(
    uffd: BorrowedFd<'_>,
    start: u64,
    end: u64,
    mode: u64,
) -> std::result::Result<(), Errno> {
    let mut r = UffdioRegister {
        range: UffdioRange {
            start,
            len: end - start,
        },
        mode,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER takes one uffdio_register.
    unsafe { ioctl_on(uffd, UFFDIO_REGISTER, &mut r) }
}

#[repr(C)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}
const UFFDIO_WRITEPROTECT: libc::c_ulong = iowr(0x06, std::mem::size_of::<UffdioWriteprotect>());

/// Clears the write protection of every page in [start, end) (all must be registered): each
/// page then reads as written until the next PAGEMAP_SCAN with PM_SCAN_WP_MATCHING.
pub fn unprotect(uffd: BorrowedFd<'_>, start: u64, end: u64) -> std::result::Result<(), Errno> {
    let mut w = UffdioWriteprotect {
        range: UffdioRange {
            start,
            len: end - start,
        },
        mode: 0,
    };
    // SAFETY: UFFDIO_WRITEPROTECT takes one uffdio_writeprotect.
    unsafe { ioctl_on(uffd, UFFDIO_WRITEPROTECT, &mut w) }
}

/// Ends tracking of [start, end) (the kernel clears the write-protect bits).
pub fn unregister(uffd: BorrowedFd<'_>, start: u64, end: u64) -> std::result::Result<(), Errno> {
    let mut r = UffdioRange {
        start,
        len: end - start,
    };
    // SAFETY: UFFDIO_UNREGISTER takes one uffdio_range.
    unsafe { ioctl_on(uffd, UFFDIO_UNREGISTER, &mut r) }
}

// ---------------------------------------------------------------------------------------------
// Lazy restore: MISSING-mode registration, filling pages, and the events of a tree that runs.

pub const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
pub const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
pub const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
pub const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;
/// What a lazy-pages daemon asks for: every change of the address space it serves is reported,
/// and a fault says which thread took it.
pub const LAZY_FEATURES: u64 = UFFD_FEATURE_EVENT_FORK
    | UFFD_FEATURE_EVENT_REMAP
    | UFFD_FEATURE_EVENT_REMOVE
    | UFFD_FEATURE_EVENT_UNMAP
    | UFFD_FEATURE_THREAD_ID;

const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

const UFFDIO_WAKE: libc::c_ulong = ior(0x02, std::mem::size_of::<UffdioRange>());
const UFFDIO_COPY: libc::c_ulong = iowr(0x03, std::mem::size_of::<UffdioCopy>());
const UFFDIO_ZEROPAGE: libc::c_ulong = iowr(0x04, std::mem::size_of::<UffdioZeropage>());

/// Registers [start, end) of the descriptor's process so that touching a page that is not
/// there waits for whoever reads the descriptor.
pub fn register_missing(
    uffd: BorrowedFd<'_>,
    start: u64,
    end: u64,
) -> std::result::Result<(), Errno> {
    register(uffd, start, end, UFFDIO_REGISTER_MODE_MISSING)
}

/// What a UFFDIO_COPY or UFFDIO_ZEROPAGE did: bytes placed from the start of the range, and
/// the error that stopped it early, if any.
#[derive(Debug, Clone, Copy)]
pub struct Filled {
    pub done: u64,
    pub error: Option<Errno>,
}

fn filled(ret: libc::c_int, reported: i64, len: u64) -> Filled {
    if ret == 0 {
        return Filled {
            done: len,
            error: None,
        };
    }
    let err = Errno::last();
    Filled {
        done: reported.max(0) as u64,
        error: Some(if reported < 0 {
            Errno::from_raw(-reported as i32)
        } else {
            err
        }),
    }
}

/// Places `data` at `dst` in the descriptor's process (atomically per page) and wakes the
/// threads waiting there.
pub fn copy(uffd: BorrowedFd<'_>, dst: u64, data: &[u8]) -> Filled {
    let mut c = UffdioCopy {
        dst,
        src: data.as_ptr() as u64,
        len: data.len() as u64,
        mode: 0,
        copy: 0,
    };
    // SAFETY: UFFDIO_COPY reads `len` bytes at `src` (our buffer, alive for the call) and
    // writes the count back into the struct.
    let ret = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_COPY, &mut c as *mut UffdioCopy) };
    filled(ret, c.copy, data.len() as u64)
}

/// Maps the zero page over [start, start + len) and wakes the threads waiting there.
pub fn zeropage(uffd: BorrowedFd<'_>, start: u64, len: u64) -> Filled {
    let mut z = UffdioZeropage {
        range: UffdioRange { start, len },
        mode: 0,
        zeropage: 0,
    };
    // SAFETY: UFFDIO_ZEROPAGE reads and writes one uffdio_zeropage.
    let ret = unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            UFFDIO_ZEROPAGE,
            &mut z as *mut UffdioZeropage,
        )
    };
    filled(ret, z.zeropage, len)
}

/// Wakes the threads waiting on [start, start + len) (whose page arrived by another way).
pub fn wake(uffd: BorrowedFd<'_>, start: u64, len: u64) -> std::result::Result<(), Errno> {
    let mut r = UffdioRange { start, len };
    // SAFETY: UFFDIO_WAKE takes one uffdio_range.
    unsafe { ioctl_on(uffd, UFFDIO_WAKE, &mut r) }
}

/// One message read from a userfaultfd.
#[derive(Debug)]
pub enum Event {
    /// A thread (`tid`, when the feature was asked for) touched the missing page at `addr`.
    PageFault { addr: u64, tid: u32 },
    /// The process forked: the child's memory is served through this new descriptor.
    Fork(std::os::fd::OwnedFd),
    /// mremap moved [from, from + len) to `to`.
    Remap { from: u64, to: u64, len: u64 },
    /// madvise(MADV_DONTNEED/REMOVE) emptied [start, end): those pages read as zeros now.
    Remove { start: u64, end: u64 },
    /// munmap (or mremap shrinking, or a mapping on top) removed [start, end).
    Unmap { start: u64, end: u64 },
    /// An event this code does not know.
    Other(u8),
}

const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_EVENT_FORK: u8 = 0x13;
const UFFD_EVENT_REMAP: u8 = 0x14;
const UFFD_EVENT_REMOVE: u8 = 0x15;
const UFFD_EVENT_UNMAP: u8 = 0x16;

/// Reads the next message of a non-blocking descriptor; None when there is none.
pub fn read_event(uffd: BorrowedFd<'_>) -> std::result::Result<Option<Event>, Errno> {
    let mut m = [0u8; 32];
    let n = loop {
        // SAFETY: read writes at most 32 bytes into `m`.
        let n = unsafe { libc::read(uffd.as_raw_fd(), m.as_mut_ptr().cast(), m.len()) };
        if n >= 0 {
            break n as usize;
        }
        match Errno::last() {
            Errno::EINTR => continue,
            Errno::EAGAIN => return Ok(None),
            e => return Err(e),
        }
    };
    if n != m.len() {
        return Err(Errno::EIO);
    }
    let u64_at = |o: usize| u64::from_ne_bytes(m[o..o + 8].try_into().expect("8 bytes"));
    let u32_at = |o: usize| u32::from_ne_bytes(m[o..o + 4].try_into().expect("4 bytes"));
    // The union of arguments starts at byte 8.
    Ok(Some(match m[0] {
        UFFD_EVENT_PAGEFAULT => Event::PageFault {
            addr: u64_at(16),
            tid: u32_at(24),
        },
        UFFD_EVENT_FORK => {
            let fd = u32_at(8) as i32;
            // SAFETY: the kernel installed this descriptor in our table for this message.
            Event::Fork(unsafe {
                <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
            })
        }
        UFFD_EVENT_REMAP => Event::Remap {
            from: u64_at(8),
            to: u64_at(16),
            len: u64_at(24),
        },
        UFFD_EVENT_REMOVE => Event::Remove {
            start: u64_at(8),
            end: u64_at(16),
        },
        UFFD_EVENT_UNMAP => Event::Unmap {
            start: u64_at(8),
            end: u64_at(16),
        },
        other => Event::Other(other),
    }))
}
