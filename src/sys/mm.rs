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

/// A file mapped MAP_SHARED for writing: the dump copies a task's pages straight into the pages
/// image through it (one copy instead of a copy into a buffer and another into the file).
/// Threads may fill disjoint ranges at once.
pub struct SharedFileMap {
    addr: u64,
    len: u64,
}

impl SharedFileMap {
    /// Maps the first `len` bytes of `file` (which must be at least that long).
    pub fn new(file: &std::fs::File, len: u64) -> Result<SharedFileMap> {
        if len == 0 {
            return Ok(SharedFileMap { addr: 0, len: 0 });
        }
        // SAFETY: a new shared mapping of our own file; nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::last("mmap the pages image"));
        }
        Ok(SharedFileMap {
            addr: p as u64,
            len,
        })
    }

    fn check(&self, off: u64, len: u64) -> Result<()> {
        if off.checked_add(len).is_none_or(|e| e > self.len) {
            return Err(Error::sys(
                format!("write past the pages image ({off:#x}+{len:#x})"),
                Errno::EINVAL,
            ));
        }
        Ok(())
    }

    /// Reads remote pieces of `pid` back to back into [off, off + total); returns bytes read.
    pub fn read_remote_at(
        &self,
        pid: libc::pid_t,
        off: u64,
        pieces: &[(u64, usize)],
    ) -> Result<usize> {
        let total: usize = pieces.iter().map(|p| p.1).sum();
        self.check(off, total as u64)?;
        // SAFETY: [off, off+total) lies inside our mapping (checked) and callers give each
        // thread disjoint ranges.
        let dst = unsafe { std::slice::from_raw_parts_mut((self.addr + off) as *mut u8, total) };
        super::mem::readv_remote(pid, dst, pieces)
    }

    /// Reads `len` bytes of `src` at `src_off` into [off, off + len).
    pub fn pread_at(
        &self,
        src: &super::mem::ProcMem,
        src_off: u64,
        off: u64,
        len: u64,
    ) -> Result<()> {
        self.check(off, len)?;
        // SAFETY: as in read_remote_at.
        let dst =
            unsafe { std::slice::from_raw_parts_mut((self.addr + off) as *mut u8, len as usize) };
        src.read_exact_at(dst, src_off)
    }
}

impl SharedFileMap {
    /// Moves `len` bytes from `src` to `dst` within the mapping (the ranges may overlap).
    pub fn copy_within(&self, src: u64, dst: u64, len: u64) -> Result<()> {
        self.check(src, len)?;
        self.check(dst, len)?;
        // SAFETY: both ranges lie inside our mapping (checked); ptr::copy allows overlap. Only
        // one thread uses the mapping at this point.
        unsafe {
            std::ptr::copy(
                (self.addr + src) as *const u8,
                (self.addr + dst) as *mut u8,
                len as usize,
            )
        };
        Ok(())
    }
}

impl Drop for SharedFileMap {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmapping our own mapping; no slice into it outlives the calls above.
            unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len as usize) };
        }
    }
}
