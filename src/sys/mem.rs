//! Reading and writing another process's memory: process_vm_readv/writev for the bulk (4 MiB
//! chunks, up to IOV_MAX pieces per call) and /proc/PID/mem for pages without PROT_READ.

use std::fs::File;
use std::os::unix::fs::FileExt;

use libc::pid_t;
use nix::errno::Errno;

use crate::error::{Error, Result};

pub const PAGE_SIZE: u64 = 4096;
pub const IOV_MAX: usize = 1024;

/// Reads `buf.len()` bytes at `addr` of `pid`.
pub fn read_remote(pid: pid_t, buf: &mut [u8], addr: u64) -> Result<()> {
    let n = readv_remote(pid, buf, &[(addr, buf.len())])?;
    if n != buf.len() {
        return Err(Error::task(
            pid,
            format!("short read of {} bytes at {addr:#x}: {n}", buf.len()),
        ));
    }
    Ok(())
}

/// Reads remote pieces `(addr, len)` back to back into `buf`; returns the bytes read, which is
/// short when a piece is not mapped or not readable (the caller retries the rest another way).
pub fn readv_remote(pid: pid_t, buf: &mut [u8], pieces: &[(u64, usize)]) -> Result<usize> {
    let mut done = 0usize;
    for chunk in pieces.chunks(IOV_MAX) {
        let want: usize = chunk.iter().map(|p| p.1).sum();
        let remote: Vec<libc::iovec> = chunk
            .iter()
            .map(|&(a, l)| libc::iovec {
                iov_base: a as *mut libc::c_void,
                iov_len: l,
            })
            .collect();
        let local = libc::iovec {
            iov_base: buf[done..].as_mut_ptr().cast(),
            iov_len: want,
        };
        if buf.len() - done < want {
            return Err(Error::task(
                pid,
                "readv_remote: buffer smaller than the pieces",
            ));
        }
        // SAFETY: local points into buf with at least `want` bytes left (checked above); remote
        // addresses are only dereferenced by the kernel in the other process.
        let n = unsafe {
            libc::process_vm_readv(pid, &local, 1, remote.as_ptr(), remote.len() as u64, 0)
        };
        if n < 0 {
            let e = Errno::last();
            if e == Errno::EFAULT && done > 0 {
                return Ok(done);
            }
            return Err(Error::sys(format!("process_vm_readv(pid {pid})"), e));
        }
        done += n as usize;
        if (n as usize) < want {
            return Ok(done);
        }
    }
    Ok(done)
}

/// Writes `buf` at `addr` of `pid` (the target pages must be writable).
pub fn write_remote(pid: pid_t, buf: &[u8], addr: u64) -> Result<()> {
    let local = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: local covers buf exactly; the kernel only reads it.
    let n = unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) };
    if n < 0 {
        return Err(Error::last(format!(
            "process_vm_writev(pid {pid}, {addr:#x})"
        )));
    }
    if n as usize != buf.len() {
        return Err(Error::task(pid, format!("short write at {addr:#x}")));
    }
    Ok(())
}

/// /proc/PID/mem: reads and writes regardless of page protection (FOLL_FORCE).
pub struct ProcMem {
    file: File,
    pid: pid_t,
}

impl ProcMem {
    pub fn open(pid: pid_t, write: bool) -> Result<ProcMem> {
        let path = format!("/proc/{pid}/mem");
        let file = File::options()
            .read(true)
            .write(write)
            .open(&path)
            .map_err(|e| Error::io(format!("open {path}"), e))?;
        Ok(ProcMem { file, pid })
    }

    pub fn read_exact_at(&self, buf: &mut [u8], addr: u64) -> Result<()> {
        self.file
            .read_exact_at(buf, addr)
            .map_err(|e| Error::io(format!("read /proc/{}/mem at {addr:#x}", self.pid), e))
    }

    pub fn write_all_at(&self, buf: &[u8], addr: u64) -> Result<()> {
        self.file
            .write_all_at(buf, addr)
            .map_err(|e| Error::io(format!("write /proc/{}/mem at {addr:#x}", self.pid), e))
    }
}
