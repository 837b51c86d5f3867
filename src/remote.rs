//! System calls run inside a frozen task on our behalf, with a scratch area of its memory for
//! their in/out arguments. The area is ours: it is mapped when the session starts, left out of
//! the dump, and unmapped before the task is released. It also holds the way back should we
//! die meanwhile (`sys::sigframe`): every syscall but the first two and the last runs from a
//! trampoline that would put the task back as it was.

use libc::pid_t;

use crate::error::{Error, Result};
use crate::sys::inject::Injector;
use crate::sys::mem::{read_remote, write_remote};
use crate::sys::ptrace::Regs;
use crate::sys::sigframe::{self, AltStack};

pub const SCRATCH_SIZE: u64 = sigframe::SCRATCH_NEEDED;

/// What a thread must be put back to if we die while it runs our syscalls.
pub struct Resume<'b> {
    /// Its registers as it would resume (restart step applied).
    pub regs: Regs,
    pub sigmask: u64,
    /// Its XSAVE area.
    pub xstate: &'b [u8],
}

pub struct Remote<'a> {
    inj: Injector<'a>,
    scratch: u64,
    pid: pid_t,
    /// The task's own `syscall` instruction, for the calls made without the trampoline.
    plain_ip: u64,
    /// The driven thread's own signal mask.
    sigmask: u64,
}

impl<'a> Remote<'a> {
    /// Maps the scratch area in the task and arms the way back for this thread. The thread's
    /// signal mask must still be its own: the calls made before the way back is armed may see
    /// signals (the injector holds them back and we re-send them), but must not leave the
    /// thread with every signal blocked should we die.
    pub fn start(inj: Injector<'a>, pid: pid_t, resume: &Resume) -> Result<Remote<'a>> {
        let scratch = inj.call(
            "mmap(scratch)",
            libc::SYS_mmap,
            [
                0,
                SCRATCH_SIZE,
                (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )?;
        let plain_ip = inj.syscall_ip();
        let mut r = Remote {
            inj,
            scratch,
            pid,
            plain_ip,
            sigmask: resume.sigmask,
        };
        r.protect(resume)?;
        Ok(r)
    }

    /// Another thread of the same process, using the scratch area `start` mapped; the way back
    /// is rewritten for this thread (the previous one must be put back already).
    pub fn borrowed(
        inj: Injector<'a>,
        pid: pid_t,
        scratch: u64,
        resume: &Resume,
    ) -> Result<Remote<'a>> {
        let plain_ip = inj.syscall_ip();
        let mut r = Remote {
            inj,
            scratch,
            pid,
            plain_ip,
            sigmask: resume.sigmask,
        };
        r.protect(resume)?;
        Ok(r)
    }

    /// Writes the trampoline and this thread's signal frame, then runs every later syscall
    /// from the trampoline.
    fn protect(&mut self, resume: &Resume) -> Result<()> {
        self.inj.set_syscall_ip(self.plain_ip);
        // rt_sigreturn also restores the alternate signal stack: the frame must carry it.
        self.syscall(
            "sigaltstack(query)",
            libc::SYS_sigaltstack,
            [0, self.addr(0), 0, 0, 0, 0],
        )?;
        let ss = self.read(0, 24)?;
        let sas = AltStack {
            sp: u64::from_ne_bytes(ss[0..8].try_into().unwrap()),
            flags: u32::from_ne_bytes(ss[8..12].try_into().unwrap()),
            size: u64::from_ne_bytes(ss[16..24].try_into().unwrap()),
        };
        let fpstate_addr = self.scratch + sigframe::FPSTATE_OFF;
        let frame_addr = self.scratch + sigframe::FRAME_OFF;
        let fp = sigframe::fpstate(resume.xstate);
        if sigframe::FPSTATE_OFF + fp.len() as u64 > SCRATCH_SIZE {
            return Err(Error::task(
                self.pid,
                format!(
                    "XSAVE area of {} bytes does not fit the scratch area",
                    fp.len()
                ),
            ));
        }
        write_remote(self.pid, &fp, fpstate_addr)?;
        write_remote(
            self.pid,
            &sigframe::rt_sigframe(&resume.regs, resume.sigmask, sas, fpstate_addr),
            frame_addr,
        )?;
        write_remote(
            self.pid,
            &sigframe::trampoline(frame_addr),
            self.scratch + sigframe::CODE_OFF,
        )?;
        self.inj.set_syscall_ip(self.scratch + sigframe::CODE_OFF);
        // From here on no signal may reach the thread while we drive it; the frame's mask
        // (its own) comes back with rt_sigreturn or when we let it go.
        self.inj.tracee().set_sigmask(!0)?;
        Ok(())
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

    /// Unmaps the scratch area (from the task's own syscall instruction: the trampoline goes
    /// with it).
    pub fn finish(mut self) -> Result<Vec<i32>> {
        self.inj.set_syscall_ip(self.plain_ip);
        self.inj.tracee().set_sigmask(self.sigmask)?;
        self.inj.call(
            "munmap(scratch)",
            libc::SYS_munmap,
            [self.scratch, SCRATCH_SIZE, 0, 0, 0, 0],
        )?;
        Ok(self.inj.deferred_signals())
    }
}
