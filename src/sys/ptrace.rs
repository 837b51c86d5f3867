//! ptrace requests on one tracee. Every request must come from the thread that attached, so a
//! `Tracee` is used from one thread only (it is deliberately not Send).

use std::marker::PhantomData;
use std::mem::{size_of, MaybeUninit};

use libc::{c_long, c_void, pid_t, user_regs_struct};
use nix::errno::Errno;

use crate::error::{Error, Result};

pub type Regs = user_regs_struct;

const NT_PRSTATUS: c_long = 1;
const NT_X86_XSTATE: c_long = 0x202;
const PTRACE_GET_THREAD_AREA: libc::c_uint = 25;
const PTRACE_SET_THREAD_AREA: libc::c_uint = 26;
const PTRACE_GETREGSET: libc::c_uint = 0x4204;
const PTRACE_SETREGSET: libc::c_uint = 0x4205;
const PTRACE_SEIZE: libc::c_uint = 0x4206;
const PTRACE_INTERRUPT: libc::c_uint = 0x4207;
const PTRACE_PEEKSIGINFO: libc::c_uint = 0x4209;
const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;
const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
const PTRACE_SECCOMP_GET_METADATA: libc::c_uint = 0x420d;
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;

pub const PTRACE_O_TRACESYSGOOD: u32 = 1;
pub const PTRACE_O_EXITKILL: u32 = 1 << 20;
pub const PTRACE_O_SUSPEND_SECCOMP: u32 = 1 << 21;
pub const PTRACE_EVENT_STOP: i32 = 128;

/// Upper bound of an XSAVE area (11008 bytes here with AMX); the kernel reports the real size.
const XSTATE_MAX: usize = 64 << 10;

/// How a tracee stopped, from waitpid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// PTRACE_INTERRUPT or group-stop (PTRACE_EVENT_STOP); carries the stop signal.
    Event(i32),
    /// Syscall entry or exit (SIGTRAP | 0x80 with TRACESYSGOOD).
    Syscall,
    /// A signal is about to be delivered; the tracer decides whether to pass it on.
    Signal(i32),
    /// Another ptrace event (fork, exec...).
    OtherEvent(i32),
    Exited(i32),
    Killed(i32),
}

/// The rseq registration of a thread (PTRACE_GET_RSEQ_CONFIGURATION).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RseqConfig {
    pub ptr: u64,
    pub size: u32,
    pub signature: u32,
    pub flags: u32,
}

/// A thread we attached to with PTRACE_SEIZE.
pub struct Tracee {
    pub tid: pid_t,
    // ptrace requests are only valid from the attaching thread.
    _not_send: PhantomData<*const ()>,
}

fn ptrace_raw(
    req: libc::c_uint,
    tid: pid_t,
    addr: *mut c_void,
    data: *mut c_void,
) -> nix::Result<c_long> {
    Errno::clear();
    // SAFETY: ptrace only reads/writes through addr/data as the request defines; every caller
    // passes buffers sized for its request.
    let r = unsafe { libc::ptrace(req, tid, addr, data) };
    if r == -1 && Errno::last_raw() != 0 {
        Err(Errno::last())
    } else {
        Ok(r)
    }
}

impl Tracee {
    /// PTRACE_SEIZE: attaches without stopping the thread.
    pub fn seize(tid: pid_t, options: u32) -> Result<Tracee> {
        ptrace_raw(
            PTRACE_SEIZE,
            tid,
            std::ptr::null_mut(),
            options as usize as *mut c_void,
        )
        .map_err(|e| Error::sys(format!("ptrace(SEIZE, {tid})"), e))?;
        Ok(Tracee {
            tid,
            _not_send: PhantomData,
        })
    }

    /// Wraps a thread already attached by this thread (e.g. handed over from a seize loop).
    pub fn attached(tid: pid_t) -> Tracee {
        Tracee {
            tid,
            _not_send: PhantomData,
        }
    }

    fn req(
        &self,
        req: libc::c_uint,
        addr: *mut c_void,
        data: *mut c_void,
        what: &str,
    ) -> Result<c_long> {
        ptrace_raw(req, self.tid, addr, data)
            .map_err(|e| Error::sys(format!("ptrace({what}, {})", self.tid), e))
    }

    pub fn interrupt(&self) -> Result<()> {
        self.req(
            PTRACE_INTERRUPT,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            "INTERRUPT",
        )
        .map(drop)
    }

    pub fn set_options(&self, options: u32) -> Result<()> {
        self.req(
            libc::PTRACE_SETOPTIONS,
            std::ptr::null_mut(),
            options as usize as *mut c_void,
            "SETOPTIONS",
        )
        .map(drop)
    }

    /// Waits for the next state change of this thread.
    pub fn wait(&self) -> Result<Stop> {
        wait_tid(self.tid)
    }

    /// Waits until the thread is in a ptrace-stop, passing on signals that arrive meanwhile
    /// (they are re-queued by the kernel when we resume with them later). Returns the stop.
    pub fn wait_stopped(&self) -> Result<Stop> {
        match self.wait()? {
            s @ (Stop::Exited(_) | Stop::Killed(_)) => Err(Error::task(
                self.tid,
                format!("exited while being traced: {s:?}"),
            )),
            s => Ok(s),
        }
    }

    /// Resumes; `sig` is delivered (0: none).
    pub fn cont(&self, sig: i32) -> Result<()> {
        self.req(
            libc::PTRACE_CONT,
            std::ptr::null_mut(),
            sig as usize as *mut c_void,
            "CONT",
        )
        .map(drop)
    }

    /// Resumes until the next syscall entry or exit.
    pub fn syscall(&self, sig: i32) -> Result<()> {
        self.req(
            libc::PTRACE_SYSCALL,
            std::ptr::null_mut(),
            sig as usize as *mut c_void,
            "SYSCALL",
        )
        .map(drop)
    }

    /// Detaches; the thread runs on (or stays in group-stop) with `sig` delivered.
    pub fn detach(self, sig: i32) -> Result<()> {
        self.req(
            libc::PTRACE_DETACH,
            std::ptr::null_mut(),
            sig as usize as *mut c_void,
            "DETACH",
        )
        .map(drop)
    }

    pub fn get_regs(&self) -> Result<Regs> {
        let mut regs = MaybeUninit::<Regs>::zeroed();
        let mut iov = libc::iovec {
            iov_base: regs.as_mut_ptr().cast(),
            iov_len: size_of::<Regs>(),
        };
        self.req(
            PTRACE_GETREGSET,
            NT_PRSTATUS as *mut c_void,
            (&mut iov as *mut libc::iovec).cast(),
            "GETREGSET NT_PRSTATUS",
        )?;
        if iov.iov_len != size_of::<Regs>() {
            return Err(Error::task(
                self.tid,
                format!("NT_PRSTATUS of {} bytes: not a 64-bit task", iov.iov_len),
            ));
        }
        // SAFETY: the kernel filled all size_of::<Regs>() bytes (checked above); zeroed anyway.
        Ok(unsafe { regs.assume_init() })
    }

    pub fn set_regs(&self, regs: &Regs) -> Result<()> {
        let mut copy = *regs;
        let mut iov = libc::iovec {
            iov_base: (&mut copy as *mut Regs).cast(),
            iov_len: size_of::<Regs>(),
        };
        self.req(
            PTRACE_SETREGSET,
            NT_PRSTATUS as *mut c_void,
            (&mut iov as *mut libc::iovec).cast(),
            "SETREGSET NT_PRSTATUS",
        )
        .map(drop)
    }

    /// The whole XSAVE area in the kernel's standard (non-compacted) format.
    pub fn get_xstate(&self) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; XSTATE_MAX];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        self.req(
            PTRACE_GETREGSET,
            NT_X86_XSTATE as *mut c_void,
            (&mut iov as *mut libc::iovec).cast(),
            "GETREGSET NT_X86_XSTATE",
        )?;
        buf.truncate(iov.iov_len);
        Ok(buf)
    }

    pub fn set_xstate(&self, xstate: &[u8]) -> Result<()> {
        let mut copy = xstate.to_vec();
        let mut iov = libc::iovec {
            iov_base: copy.as_mut_ptr().cast(),
            iov_len: copy.len(),
        };
        self.req(
            PTRACE_SETREGSET,
            NT_X86_XSTATE as *mut c_void,
            (&mut iov as *mut libc::iovec).cast(),
            "SETREGSET NT_X86_XSTATE",
        )
        .map(drop)
    }

    pub fn get_sigmask(&self) -> Result<u64> {
        let mut mask: u64 = 0;
        self.req(
            PTRACE_GETSIGMASK,
            size_of::<u64>() as *mut c_void,
            (&mut mask as *mut u64).cast(),
            "GETSIGMASK",
        )?;
        Ok(mask)
    }

    pub fn set_sigmask(&self, mask: u64) -> Result<()> {
        let mut m = mask;
        self.req(
            PTRACE_SETSIGMASK,
            size_of::<u64>() as *mut c_void,
            (&mut m as *mut u64).cast(),
            "SETSIGMASK",
        )
        .map(drop)
    }

    /// Pending signals with their siginfo (128 bytes each): the thread's own queue, or the
    /// process-wide one with `shared`.
    pub fn peek_siginfo(&self, shared: bool) -> Result<Vec<[u8; 128]>> {
        #[repr(C)]
        struct Args {
            off: u64,
            flags: u32,
            nr: i32,
        }
        let mut out = Vec::new();
        loop {
            let mut batch = [[0u8; 128]; 32];
            let mut args = Args {
                off: out.len() as u64,
                flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 },
                nr: batch.len() as i32,
            };
            let n = self.req(
                PTRACE_PEEKSIGINFO,
                (&mut args as *mut Args).cast(),
                batch.as_mut_ptr().cast(),
                "PEEKSIGINFO",
            )?;
            let n = n as usize;
            out.extend_from_slice(&batch[..n]);
            if n < batch.len() {
                return Ok(out);
            }
        }
    }

    pub fn rseq_config(&self) -> Result<RseqConfig> {
        #[repr(C)]
        #[derive(Default)]
        struct Conf {
            ptr: u64,
            size: u32,
            sig: u32,
            flags: u32,
            pad: u32,
        }
        let mut c = Conf::default();
        self.req(
            PTRACE_GET_RSEQ_CONFIGURATION,
            size_of::<Conf>() as *mut c_void,
            (&mut c as *mut Conf).cast(),
            "GET_RSEQ_CONFIGURATION",
        )?;
        Ok(RseqConfig {
            ptr: c.ptr,
            size: c.size,
            signature: c.sig,
            flags: c.flags,
        })
    }

    /// The `idx`-th seccomp filter of the thread (0 = most recent) as BPF instructions of 8
    /// bytes, or None past the last one.
    pub fn seccomp_filter(&self, idx: u64) -> Result<Option<Vec<u8>>> {
        let n = match ptrace_raw(
            PTRACE_SECCOMP_GET_FILTER,
            self.tid,
            idx as *mut c_void,
            std::ptr::null_mut(),
        ) {
            Ok(n) => n as usize,
            Err(Errno::ENOENT) => return Ok(None),
            // EINVAL: the thread has no filter at all (mode is not SECCOMP_MODE_FILTER).
            Err(Errno::EINVAL) if idx == 0 => return Ok(None),
            Err(e) => {
                return Err(Error::sys(
                    format!("ptrace(SECCOMP_GET_FILTER, {})", self.tid),
                    e,
                ))
            }
        };
        let mut insns = vec![0u8; n * 8];
        self.req(
            PTRACE_SECCOMP_GET_FILTER,
            idx as *mut c_void,
            insns.as_mut_ptr().cast(),
            "SECCOMP_GET_FILTER",
        )?;
        Ok(Some(insns))
    }

    /// The flags (SECCOMP_FILTER_FLAG_*) the `idx`-th filter was installed with.
    pub fn seccomp_filter_flags(&self, idx: u64) -> Result<u64> {
        let mut md = [idx, 0u64];
        self.req(
            PTRACE_SECCOMP_GET_METADATA,
            16usize as *mut c_void,
            md.as_mut_ptr().cast(),
            "SECCOMP_GET_METADATA",
        )?;
        Ok(md[1])
    }
}

/// Waits for a state change of one thread (never `-1`: tests run in threads of one process
/// and must not reap each other's children).
pub fn wait_tid(tid: pid_t) -> Result<Stop> {
    loop {
        let mut status = 0;
        // SAFETY: plain syscall writing one int.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        if r < 0 {
            let e = Errno::last();
            if e == Errno::EINTR {
                continue;
            }
            return Err(Error::sys(format!("waitpid({tid})"), e));
        }
        return Ok(decode_status(status));
    }
}

/// `wait_tid` that gives up at `deadline` (None): a task in an uninterruptible sleep (a vfork
/// parent, a stuck NFS read) does not stop until it wakes, and the freeze has a timeout.
pub fn wait_tid_until(tid: pid_t, deadline: std::time::Instant) -> Result<Option<Stop>> {
    let mut pause = std::time::Duration::from_micros(20);
    loop {
        let mut status = 0;
        // SAFETY: plain syscall writing one int.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
        if r < 0 {
            let e = Errno::last();
            if e == Errno::EINTR {
                continue;
            }
            return Err(Error::sys(format!("waitpid({tid})"), e));
        }
        if r == tid {
            return Ok(Some(decode_status(status)));
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(std::time::Duration::from_millis(10));
    }
}

fn decode_status(status: i32) -> Stop {
    if libc::WIFEXITED(status) {
        Stop::Exited(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Stop::Killed(libc::WTERMSIG(status))
    } else {
        let sig = libc::WSTOPSIG(status);
        let event = status >> 16;
        if event == PTRACE_EVENT_STOP {
            Stop::Event(sig)
        } else if event != 0 {
            Stop::OtherEvent(event)
        } else if sig == libc::SIGTRAP | 0x80 {
            Stop::Syscall
        } else {
            Stop::Signal(sig)
        }
    }
}

/// All-zero registers, to fill field by field.
pub fn zeroed_regs() -> Regs {
    // SAFETY: user_regs_struct is plain integers; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// A GDT TLS descriptor (struct user_desc) as PTRACE_GET_THREAD_AREA returns it; `flags`
/// packs the bitfields (seg_32bit, contents (2 bits), read_exec_only, limit_in_pages,
/// seg_not_present, useable, lm) in kernel order.
#[derive(Clone, Copy, Debug, Default)]
pub struct UserDesc {
    pub entry_number: u32,
    pub base_addr: u32,
    pub limit: u32,
    pub flags: u32,
}

impl Tracee {
    pub fn get_thread_area(&self, entry: u32) -> Result<UserDesc> {
        let mut d = [0u32; 4];
        self.req(
            PTRACE_GET_THREAD_AREA,
            entry as usize as *mut c_void,
            d.as_mut_ptr().cast(),
            "GET_THREAD_AREA",
        )?;
        Ok(UserDesc {
            entry_number: d[0],
            base_addr: d[1],
            limit: d[2],
            flags: d[3],
        })
    }

    pub fn set_thread_area(&self, d: UserDesc) -> Result<()> {
        let mut w = [d.entry_number, d.base_addr, d.limit, d.flags];
        self.req(
            PTRACE_SET_THREAD_AREA,
            d.entry_number as usize as *mut c_void,
            w.as_mut_ptr().cast(),
            "SET_THREAD_AREA",
        )
        .map(drop)
    }
}
