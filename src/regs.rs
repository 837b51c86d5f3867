//! x86-64 thread registers between ptrace's form (user_regs_struct, the XSAVE area) and the
//! image's (`thread_info_x86`).
//!
//! The image keeps CRIU's per-component fields, so CRIU and crit read it, and also the whole
//! XSAVE area (criu-rs field `xsave_area`) because CRIU's fields cannot hold AMX tile state.
//! Restore prefers the whole area; images without it (written by CRIU) are rebuilt from the
//! components.

use crate::error::{Error, Result};
use crate::pb;
use crate::sys::cpu::{xfeatures_supported, xsave_component};
use crate::sys::ptrace::Regs;

const FXSAVE_SIZE: usize = 512;
const XSAVE_HDR_OFFSET: usize = 512;
const XSAVE_HDR_SIZE: usize = 64;

const XFEATURE_YMM: u32 = 2;
const XFEATURE_BNDREGS: u32 = 3;
const XFEATURE_BNDCSR: u32 = 4;
const XFEATURE_OPMASK: u32 = 5;
const XFEATURE_ZMM_HI256: u32 = 6;
const XFEATURE_HI16_ZMM: u32 = 7;
const XFEATURE_PKRU: u32 = 9;
pub const XFEATURE_XTILEDATA: u32 = 18;

fn u16_at(b: &[u8], off: usize) -> u32 {
    u16::from_ne_bytes([b[off], b[off + 1]]) as u32
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().unwrap())
}
fn u32s(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_ne_bytes(c.try_into().unwrap()))
        .collect()
}
fn u64s(b: &[u8]) -> Vec<u64> {
    b.chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
        .collect()
}
fn put_u32s(dst: &mut [u8], v: &[u32]) {
    for (c, x) in dst.chunks_exact_mut(4).zip(v) {
        c.copy_from_slice(&x.to_ne_bytes());
    }
}
fn put_u64s(dst: &mut [u8], v: &[u64]) {
    for (c, x) in dst.chunks_exact_mut(8).zip(v) {
        c.copy_from_slice(&x.to_ne_bytes());
    }
}

pub fn gpregs_to_image(r: &Regs) -> pb::UserX86RegsEntry {
    pb::UserX86RegsEntry {
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        bp: r.rbp,
        bx: r.rbx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        ax: r.rax,
        cx: r.rcx,
        dx: r.rdx,
        si: r.rsi,
        di: r.rdi,
        orig_ax: r.orig_rax,
        ip: r.rip,
        cs: r.cs,
        flags: r.eflags,
        sp: r.rsp,
        ss: r.ss,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ds: r.ds,
        es: r.es,
        fs: r.fs,
        gs: r.gs,
        mode: Some(pb::UserX86RegsMode::Native as i32),
    }
}

pub fn gpregs_from_image(e: &pb::UserX86RegsEntry) -> Result<Regs> {
    if e.mode.unwrap_or(pb::UserX86RegsMode::Native as i32) != pb::UserX86RegsMode::Native as i32 {
        return Err(Error::InvalidOptions(
            "32-bit (compat) tasks are not supported".into(),
        ));
    }
    let mut r: Regs = crate::sys::ptrace::zeroed_regs();
    r.r15 = e.r15;
    r.r14 = e.r14;
    r.r13 = e.r13;
    r.r12 = e.r12;
    r.rbp = e.bp;
    r.rbx = e.bx;
    r.r11 = e.r11;
    r.r10 = e.r10;
    r.r9 = e.r9;
    r.r8 = e.r8;
    r.rax = e.ax;
    r.rcx = e.cx;
    r.rdx = e.dx;
    r.rsi = e.si;
    r.rdi = e.di;
    r.orig_rax = e.orig_ax;
    r.rip = e.ip;
    r.cs = e.cs;
    r.eflags = e.flags;
    r.rsp = e.sp;
    r.ss = e.ss;
    r.fs_base = e.fs_base;
    r.gs_base = e.gs_base;
    r.ds = e.ds;
    r.es = e.es;
    r.fs = e.fs;
    r.gs = e.gs;
    Ok(r)
}

/// The component of `xstate` for `feature`, when the CPU has it and the area holds it.
fn component(xstate: &[u8], feature: u32) -> Option<&[u8]> {
    let (off, size) = xsave_component(feature)?;
    xstate.get(off..off + size)
}

pub fn fpregs_to_image(x: &[u8]) -> Result<pb::UserX86FpregsEntry> {
    if x.len() < FXSAVE_SIZE + XSAVE_HDR_SIZE {
        return Err(Error::InvalidOptions(format!(
            "XSAVE area of {} bytes is too small",
            x.len()
        )));
    }
    let supported = xfeatures_supported();
    let has = |f: u32| supported & (1 << f) != 0;
    let comp_u32 = |f: u32| {
        if has(f) {
            component(x, f).map(u32s).unwrap_or_default()
        } else {
            Vec::new()
        }
    };
    let comp_u64 = |f: u32| {
        if has(f) {
            component(x, f).map(u64s).unwrap_or_default()
        } else {
            Vec::new()
        }
    };
    let xsave = pb::UserX86XsaveEntry {
        xstate_bv: u64_at(x, XSAVE_HDR_OFFSET),
        ymmh_space: comp_u32(XFEATURE_YMM),
        bndreg_state: comp_u64(XFEATURE_BNDREGS),
        bndcsr_state: comp_u64(XFEATURE_BNDCSR),
        opmask_reg: comp_u64(XFEATURE_OPMASK),
        zmm_upper: comp_u64(XFEATURE_ZMM_HI256),
        hi16_zmm: comp_u64(XFEATURE_HI16_ZMM),
        pkru: comp_u32(XFEATURE_PKRU),
        cet: None,
    };
    Ok(pb::UserX86FpregsEntry {
        cwd: u16_at(x, 0),
        swd: u16_at(x, 2),
        twd: u16_at(x, 4),
        fop: u16_at(x, 6),
        rip: u64_at(x, 8),
        rdp: u64_at(x, 16),
        mxcsr: u32_at(x, 24),
        mxcsr_mask: u32_at(x, 28),
        st_space: u32s(&x[32..160]),
        xmm_space: u32s(&x[160..416]),
        padding: Vec::new(),
        xsave: Some(xsave),
        xsave_area: Some(x.to_vec()),
    })
}

/// The XSAVE area to load, of `size` bytes (what the kernel takes for this CPU).
pub fn fpregs_from_image(e: &pb::UserX86FpregsEntry, size: usize) -> Result<Vec<u8>> {
    if let Some(area) = &e.xsave_area {
        if area.len() != size {
            return Err(Error::InvalidOptions(format!(
                "saved XSAVE area has {} bytes, this CPU uses {size}: restore on a CPU of the same kind",
                area.len()
            )));
        }
        return Ok(area.clone());
    }
    let mut x = vec![0u8; size];
    x[0..2].copy_from_slice(&(e.cwd as u16).to_ne_bytes());
    x[2..4].copy_from_slice(&(e.swd as u16).to_ne_bytes());
    x[4..6].copy_from_slice(&(e.twd as u16).to_ne_bytes());
    x[6..8].copy_from_slice(&(e.fop as u16).to_ne_bytes());
    x[8..16].copy_from_slice(&e.rip.to_ne_bytes());
    x[16..24].copy_from_slice(&e.rdp.to_ne_bytes());
    x[24..28].copy_from_slice(&e.mxcsr.to_ne_bytes());
    x[28..32].copy_from_slice(&e.mxcsr_mask.to_ne_bytes());
    put_u32s(&mut x[32..160], &e.st_space);
    put_u32s(&mut x[160..416], &e.xmm_space);
    let Some(xs) = &e.xsave else {
        // Legacy state only: mark x87 and SSE as present.
        x[XSAVE_HDR_OFFSET..XSAVE_HDR_OFFSET + 8].copy_from_slice(&3u64.to_ne_bytes());
        return Ok(x);
    };
    let supported = xfeatures_supported();
    let mut bv = xs.xstate_bv & supported;
    let mut put = |f: u32, bytes: Vec<u8>, bv: &mut u64| {
        if bytes.is_empty() {
            *bv &= !(1 << f);
            return;
        }
        if let Some((off, size)) = xsave_component(f) {
            if off + size <= x.len() {
                let n = bytes.len().min(size);
                x[off..off + n].copy_from_slice(&bytes[..n]);
            }
        }
    };
    let b32 = |v: &[u32]| {
        let mut b = vec![0u8; v.len() * 4];
        put_u32s(&mut b, v);
        b
    };
    let b64 = |v: &[u64]| {
        let mut b = vec![0u8; v.len() * 8];
        put_u64s(&mut b, v);
        b
    };
    put(XFEATURE_YMM, b32(&xs.ymmh_space), &mut bv);
    put(XFEATURE_BNDREGS, b64(&xs.bndreg_state), &mut bv);
    put(XFEATURE_BNDCSR, b64(&xs.bndcsr_state), &mut bv);
    put(XFEATURE_OPMASK, b64(&xs.opmask_reg), &mut bv);
    put(XFEATURE_ZMM_HI256, b64(&xs.zmm_upper), &mut bv);
    put(XFEATURE_HI16_ZMM, b64(&xs.hi16_zmm), &mut bv);
    put(XFEATURE_PKRU, b32(&xs.pkru), &mut bv);
    x[XSAVE_HDR_OFFSET..XSAVE_HDR_OFFSET + 8].copy_from_slice(&bv.to_ne_bytes());
    Ok(x)
}

/// Whether a saved XSAVE area has AMX tile data in use (the restored thread must then ask the
/// kernel for AMX permission and touch AMX once before the area can be loaded).
pub fn uses_amx(xstate: &[u8]) -> bool {
    xstate.len() >= XSAVE_HDR_OFFSET + 8
        && u64_at(xstate, XSAVE_HDR_OFFSET) & (1 << XFEATURE_XTILEDATA) != 0
}

/// GDT TLS slots 12-14 (set_thread_area); CRIU always stores all three.
pub fn tls_to_image(t: &crate::sys::ptrace::Tracee) -> Result<Vec<pb::UserDescT>> {
    let mut out = Vec::new();
    for entry in 12..15u32 {
        let d = t.get_thread_area(entry)?;
        out.push(pb::UserDescT {
            entry_number: entry,
            base_addr: d.base_addr,
            limit: d.limit,
            seg_32bit: d.flags & 1 != 0,
            contents_h: d.flags & 4 != 0,
            contents_l: d.flags & 2 != 0,
            read_exec_only: d.flags & 8 != 0,
            limit_in_pages: d.flags & 16 != 0,
            seg_not_present: d.flags & 32 != 0,
            usable: d.flags & 64 != 0,
        });
    }
    Ok(out)
}

pub fn tls_from_image(d: &pb::UserDescT) -> crate::sys::ptrace::UserDesc {
    let bit = |b: bool, n: u32| if b { 1 << n } else { 0 };
    crate::sys::ptrace::UserDesc {
        entry_number: d.entry_number,
        base_addr: d.base_addr,
        limit: d.limit,
        flags: bit(d.seg_32bit, 0)
            | bit(d.contents_l, 1)
            | bit(d.contents_h, 2)
            | bit(d.read_exec_only, 3)
            | bit(d.limit_in_pages, 4)
            | bit(d.seg_not_present, 5)
            | bit(d.usable, 6),
    }
}
