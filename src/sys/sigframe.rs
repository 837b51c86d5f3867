//! A way back for a task we run syscalls in, should we die in the middle.
//!
//! Each injected syscall runs from a trampoline in the task's scratch page: `syscall`, then
//! `rt_sigreturn` from a signal frame holding the task's own registers, signal mask and FPU
//! state. While we live we stop the task right after its syscall and never let it reach the
//! rest; if we die, the kernel detaches the task, it runs on into rt_sigreturn and resumes
//! exactly where it was frozen, with its signal mask back.

use super::ptrace::Regs;

/// Offsets of the trampoline pieces in the scratch area.
pub const CODE_OFF: u64 = 16 << 10;
pub const FRAME_OFF: u64 = CODE_OFF + 64;
pub const FPSTATE_OFF: u64 = 20 << 10;
/// Scratch size the trampoline needs (with an XSAVE area of up to 12 KiB).
pub const SCRATCH_NEEDED: u64 = FPSTATE_OFF + (12 << 10);

const UC_FP_XSTATE: u64 = 1;
const UC_SIGCONTEXT_SS: u64 = 2;
const UC_STRICT_RESTORE_SS: u64 = 4;
const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
const XFEATURE_XTILEDATA: u64 = 1 << 18;

/// `syscall; mov $frame+8, %rsp; mov $SYS_rt_sigreturn, %eax; syscall; int3`.
pub fn trampoline(frame_addr: u64) -> Vec<u8> {
    let mut c = vec![0x0f, 0x05, 0x48, 0xbc];
    // rt_sigreturn finds its frame 8 bytes below the stack pointer (where a handler's return
    // address was popped from).
    c.extend_from_slice(&(frame_addr + 8).to_ne_bytes());
    c.extend_from_slice(&[
        0xb8,
        libc::SYS_rt_sigreturn as u8,
        0,
        0,
        0,
        0x0f,
        0x05,
        0xcc,
    ]);
    c
}

/// The task's alternate signal stack, which rt_sigreturn installs again.
#[derive(Clone, Copy, Debug, Default)]
pub struct AltStack {
    pub sp: u64,
    pub flags: u32,
    pub size: u64,
}

/// An rt_sigframe (return address slot, ucontext, siginfo) for registers `r` (as the task
/// would see them resume), signal mask `mask`, FPU state at `fpstate_addr`.
pub fn rt_sigframe(r: &Regs, mask: u64, sas: AltStack, fpstate_addr: u64) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + 304 + 128);
    let mut put = |v: u64| f.extend_from_slice(&v.to_ne_bytes());
    put(0); // pretcode
    put(UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS);
    put(0); // uc_link
    put(sas.sp);
    put(sas.flags as u64);
    put(sas.size);
    for v in [
        r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.rdi, r.rsi, r.rbp, r.rbx, r.rdx,
        r.rax, r.rcx, r.rsp, r.rip, r.eflags,
    ] {
        put(v);
    }
    // cs, gs, fs, ss (16 bits each)
    put((r.cs & 0xffff) | (r.gs & 0xffff) << 16 | (r.fs & 0xffff) << 32 | (r.ss & 0xffff) << 48);
    put(0); // err
    put(0); // trapno
    put(mask); // oldmask
    put(0); // cr2
    put(fpstate_addr);
    for _ in 0..8 {
        put(0); // reserved
    }
    put(mask); // uc_sigmask
    f.resize(8 + 304 + 128, 0); // siginfo, unused
    f
}

/// The XSAVE area as a signal frame carries it: software-reserved bytes telling the kernel its
/// size and features, and the trailing magic. `xstate` is the NT_X86_XSTATE area (standard
/// format). Unless the thread uses AMX tile data, the frame stops before it: a thread without
/// AMX permission has a smaller signal-frame area and would reject a larger one.
pub fn fpstate(xstate: &[u8]) -> Vec<u8> {
    const TILEDATA_OFF: usize = 2816;
    let bv = xstate
        .get(512..520)
        .map(|b| u64::from_ne_bytes(b.try_into().unwrap()))
        .unwrap_or(0);
    let xcr0 = xstate
        .get(472..480)
        .map(|b| u64::from_ne_bytes(b.try_into().unwrap()))
        .unwrap_or(3);
    let (size, features) = if bv & XFEATURE_XTILEDATA != 0 || xstate.len() <= TILEDATA_OFF {
        (xstate.len(), xcr0)
    } else {
        (TILEDATA_OFF, xcr0 & !XFEATURE_XTILEDATA)
    };
    let mut out = xstate[..size].to_vec();
    // struct _fpx_sw_bytes at 464.
    out[464..468].copy_from_slice(&FP_XSTATE_MAGIC1.to_ne_bytes());
    out[468..472].copy_from_slice(&((size + 4) as u32).to_ne_bytes());
    out[472..480].copy_from_slice(&features.to_ne_bytes());
    out[480..484].copy_from_slice(&(size as u32).to_ne_bytes());
    out[484..512].fill(0);
    // Only components the frame carries may be marked present.
    let kept = bv & features;
    out[512..520].copy_from_slice(&kept.to_ne_bytes());
    out.extend_from_slice(&FP_XSTATE_MAGIC2.to_ne_bytes());
    out
}
