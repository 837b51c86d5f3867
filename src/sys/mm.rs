//! Memory-management calls on our own address space, used by the restored task while it builds
//! its memory at temporary addresses.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

use crate::error::{Error, Result};

fn check(r: libc::c_long, what: impl FnOnce() -> String) -> Result<libc::c_long> {
    if r < 0 {
        Err(Error::sys(what(), Errno::last()))
    } else {
        Ok(r)
    }
}

/// mmap at exactly `addr` (MAP_FIXED: replaces whatever was there — callers own the range).
pub fn mmap_fixed(
    addr: u64,
    len: u64,
    prot: i32,
    flags: i32,
    fd: Option<BorrowedFd<'_>>,
    off: u64,
) -> Result<()> {
    let raw_fd = fd.map(|f| f.as_raw_fd()).unwrap_or(-1);
    // SAFETY: MAP_FIXED into a range the caller reserved for this purpose; no Rust object lives
    // there.
    let r = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len as usize,
            prot,
            flags | libc::MAP_FIXED,
            raw_fd,
            off as libc::off_t,
        )
    };
    if r == libc::MAP_FAILED {
        return Err(Error::last(format!(
            "mmap({addr:#x}, {len:#x}, prot {prot:#x}, flags {flags:#x})"
        )));
    }
    Ok(())
}

/// Reserves `len` bytes of address space (PROT_NONE) at `addr` without replacing anything.
pub fn reserve(addr: u64, len: u64) -> Result<()> {
    // SAFETY: MAP_FIXED_NOREPLACE never touches existing mappings.
    let r = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len as usize,
            libc::PROT_NONE,
            libc::MAP_PRIVATE
                | libc::MAP_ANONYMOUS
                | libc::MAP_NORESERVE
                | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if r == libc::MAP_FAILED {
        return Err(Error::last(format!("reserve {addr:#x}+{len:#x}")));
    }
    if r as u64 != addr {
        return Err(Error::sys(
            format!("reserve {addr:#x}: kernel chose {r:p}"),
            Errno::EEXIST,
        ));
    }
    Ok(())
}

pub fn mprotect(addr: u64, len: u64, prot: i32) -> Result<()> {
    // SAFETY: changes protection of a range the caller owns.
    let r = unsafe { libc::mprotect(addr as *mut libc::c_void, len as usize, prot) };
    check(r as libc::c_long, || {
        format!("mprotect({addr:#x}, {len:#x}, {prot:#x})")
    })
    .map(drop)
}

pub fn madvise(addr: u64, len: u64, advice: i32) -> Result<()> {
    // SAFETY: advice on a range the caller owns.
    let r = unsafe { libc::madvise(addr as *mut libc::c_void, len as usize, advice) };
    check(r as libc::c_long, || {
        format!("madvise({addr:#x}, {len:#x}, {advice})")
    })
    .map(drop)
}

pub fn munmap(addr: u64, len: u64) -> Result<()> {
    // SAFETY: unmaps a range the caller owns.
    let r = unsafe { libc::munmap(addr as *mut libc::c_void, len as usize) };
    check(r as libc::c_long, || format!("munmap({addr:#x}, {len:#x})")).map(drop)
}

/// Reads `len` bytes at file offset `off` straight into memory at `addr` (mapped writable).
pub fn pread_to(fd: BorrowedFd<'_>, addr: u64, len: u64, off: u64) -> Result<()> {
    let mut done = 0u64;
    while done < len {
        // SAFETY: [addr, addr+len) is a writable mapping the caller owns and no Rust reference
        // points into it.
        let r = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                (addr + done) as *mut libc::c_void,
                (len - done) as usize,
                (off + done) as libc::off_t,
            )
        };
        if r < 0 {
            let e = Errno::last();
            if e == Errno::EINTR {
                continue;
            }
            return Err(Error::sys(format!("read pages into {:#x}", addr + done), e));
        }
        if r == 0 {
            return Err(Error::sys(
                format!("pages file ends before offset {}", off + done),
                Errno::ENODATA,
            ));
        }
        done += r as u64;
    }
    Ok(())
}

/// Copies bytes into memory at `addr` (mapped writable, owned by the caller).
pub fn write_to(addr: u64, bytes: &[u8]) {
    // SAFETY: as in pread_to: a writable mapping the caller owns, no aliasing references.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len()) }
}

/// Whether the page at `addr` (readable, owned by the caller) holds exactly `bytes`.
pub fn equals(addr: u64, bytes: &[u8]) -> bool {
    // SAFETY: the caller owns a readable mapping of at least bytes.len() at addr.
    let mem = unsafe { std::slice::from_raw_parts(addr as *const u8, bytes.len()) };
    mem == bytes
}
