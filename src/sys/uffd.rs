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
    let mut r = UffdioRegister {
        range: UffdioRange {
            start,
            len: end - start,
        },
        mode: UFFDIO_REGISTER_MODE_WP,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER reads and writes one uffdio_register.
    let ret = unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            UFFDIO_REGISTER,
            &mut r as *mut UffdioRegister,
        )
    };
    if ret < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Ends tracking of [start, end) (the kernel clears the write-protect bits).
pub fn unregister(uffd: BorrowedFd<'_>, start: u64, end: u64) -> std::result::Result<(), Errno> {
    let r = UffdioRange {
        start,
        len: end - start,
    };
    // SAFETY: UFFDIO_UNREGISTER reads one uffdio_range.
    let ret = unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            UFFDIO_UNREGISTER,
            &r as *const UffdioRange,
        )
    };
    if ret < 0 {
        return Err(Errno::last());
    }
    Ok(())
}
