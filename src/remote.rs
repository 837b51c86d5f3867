//! System calls run inside a frozen task on our behalf, with a scratch page of its memory for
//! their in/out arguments. The page is ours: it is mapped when the session starts, left out of
//! the dump, and unmapped before the task is released.

use libc::pid_t;

use crate::error::{Error, Result};
use crate::sys::inject::Injector;
use crate::sys::mem::{read_remote, write_remote, PAGE_SIZE};

pub const SCRATCH_SIZE: u64 = 4 * PAGE_SIZE;

pub struct Remote<'a> {
    inj: Injector<'a>,
    scratch: u64,
    pid: pid_t,
}

impl<'a> Remote<'a> {
    /// Maps the scratch area in the task.
    pub fn start(inj: Injector<'a>, pid: pid_t) -> Result<Remote<'a>> {
        let scratch = inj.call(
            "mmap(scratch)",
            libc::SYS_mmap,
            [
                0,
                SCRATCH_SIZE,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )?;
        Ok(Remote { inj, scratch, pid })
    }

    /// Another thread of the same process, using the scratch area `start` mapped.
    pub fn borrowed(inj: Injector<'a>, pid: pid_t, scratch: u64) -> Remote<'a> {
        Remote { inj, scratch, pid }
    }

    pub fn pid(&self) -> pid_t {
        self.pid
    }

    /// The scratch area, which the memory dump must skip.
    pub fn scratch_range(&self) -> (u64, u64) {
        (self.scratch, self.scratch + SCRATCH_SIZE)
    }

    pub fn addr(&self, off: u64) -> u64 {
        assert!(off < SCRATCH_SIZE);
        self.scratch + off
    }

    pub fn syscall(&self, what: &str, nr: i64, args: [u64; 6]) -> Result<u64> {
        self.inj.call(what, nr, args)
    }

    /// The raw result: negative errno values are returned, not turned into errors.
    pub fn syscall_raw(&self, nr: i64, args: [u64; 6]) -> Result<i64> {
        self.inj.raw(nr, args)
    }

    pub fn read(&self, off: u64, len: usize) -> Result<Vec<u8>> {
        if off + len as u64 > SCRATCH_SIZE {
            return Err(Error::task(self.pid, "scratch read out of bounds"));
        }
        let mut buf = vec![0u8; len];
        read_remote(self.pid, &mut buf, self.scratch + off)?;
        Ok(buf)
    }

    pub fn write(&self, off: u64, bytes: &[u8]) -> Result<()> {
        if off + bytes.len() as u64 > SCRATCH_SIZE {
            return Err(Error::task(self.pid, "scratch write out of bounds"));
        }
        write_remote(self.pid, bytes, self.scratch + off)
    }

    pub fn read_u64(&self, off: u64) -> Result<u64> {
        let b = self.read(off, 8)?;
        Ok(u64::from_ne_bytes(b.try_into().unwrap()))
    }

    /// Signals that arrived while we drove the task, to re-send when it is released.
    pub fn deferred_signals(&self) -> Vec<i32> {
        self.inj.deferred_signals()
    }

    /// Unmaps the scratch area.
    pub fn finish(self) -> Result<Vec<i32>> {
        self.inj.call(
            "munmap(scratch)",
            libc::SYS_munmap,
            [self.scratch, SCRATCH_SIZE, 0, 0, 0, 0],
        )?;
        Ok(self.inj.deferred_signals())
    }
}
