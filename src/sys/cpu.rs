//! CPU facts from CPUID: where each XSAVE component lives in the standard-format area.

/// (offset, size) of XSAVE component `feature` in the standard (non-compacted) format, or None
/// when this CPU does not support it.
pub fn xsave_component(feature: u32) -> Option<(usize, usize)> {
    // SAFETY-free: cpuid is always available on x86_64.
    let r = core::arch::x86_64::__cpuid_count(0xd, feature);
    if r.eax == 0 {
        return None;
    }
    Some((r.ebx as usize, r.eax as usize))
}

/// The XSAVE features the kernel enables for user space (XCR0).
pub fn xfeatures_supported() -> u64 {
    let r = core::arch::x86_64::__cpuid_count(0xd, 0);
    (r.eax as u64) | ((r.edx as u64) << 32)
}

const ARCH_REQ_XCOMP_PERM: i32 = 0x1023;

/// Asks for AMX tile data permission and uses AMX once, so that the kernel enlarges this
/// thread's FPU state and a saved XSAVE area with tiles in use can be loaded into it.
pub fn enable_amx() -> crate::error::Result<()> {
    // SAFETY: arch_prctl with an integer argument.
    let r = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            super::super::regs::XFEATURE_XTILEDATA as libc::c_long,
        )
    };
    if r < 0 {
        return Err(crate::error::Error::last(
            "arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)",
        ));
    }
    // palette 1, tmm0 16 rows x 64 bytes: the smallest valid configuration.
    #[repr(C, align(64))]
    struct TileCfg([u8; 64]);
    let mut cfg = TileCfg([0; 64]);
    cfg.0[0] = 1;
    cfg.0[16] = 64;
    cfg.0[48] = 16;
    // SAFETY: ldtilecfg reads the 64-byte config; tilezero/tilerelease touch only tile state,
    // which this thread now has permission for.
    unsafe {
        core::arch::asm!(
            ".byte 0xc4, 0xe2, 0x78, 0x49, 0x00", // ldtilecfg [rax]
            ".byte 0xc4, 0xe2, 0x7b, 0x49, 0xc0", // tilezero tmm0
            ".byte 0xc4, 0xe2, 0x78, 0x49, 0xc0", // tilerelease
            in("rax") cfg.0.as_ptr(),
            options(nostack),
        );
    }
    Ok(())
}
