//! What this kernel offers (CRIU calls this "kerndat"), probed once per process and cached.
//!
//! This module only says what the *kernel* has. Whether this build also implements what uses a
//! mechanism is `crate::engine::features()`'s business; `criu check` shows both.

use std::fmt;
use std::ops::Range;

use nix::errno::Errno;
use once_cell::sync::OnceCell;

use crate::sys::probe::{self, Probed, RseqConfig, UffdSource};

/// userfaultfd feature bits (linux/userfaultfd.h, including those newer than Debian's headers).
pub mod uffd_feature {
    pub const PAGEFAULT_FLAG_WP: u64 = 1 << 0;
    pub const EVENT_FORK: u64 = 1 << 1;
    pub const EVENT_REMAP: u64 = 1 << 2;
    pub const EVENT_REMOVE: u64 = 1 << 3;
    pub const MISSING_HUGETLBFS: u64 = 1 << 4;
    pub const MISSING_SHMEM: u64 = 1 << 5;
    pub const EVENT_UNMAP: u64 = 1 << 6;
    pub const SIGBUS: u64 = 1 << 7;
    pub const THREAD_ID: u64 = 1 << 8;
    pub const MINOR_HUGETLBFS: u64 = 1 << 9;
    pub const MINOR_SHMEM: u64 = 1 << 10;
    pub const EXACT_ADDRESS: u64 = 1 << 11;
    pub const WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
    pub const WP_UNPOPULATED: u64 = 1 << 13;
    pub const POISON: u64 = 1 << 14;
    pub const WP_ASYNC: u64 = 1 << 15;
    pub const MOVE: u64 = 1 << 16;

    /// The events a lazy-pages daemon must follow to serve a tree that keeps running.
    pub const NONCOOP: u64 = EVENT_FORK | EVENT_REMAP | EVENT_REMOVE | EVENT_UNMAP;
    /// What dirty-page tracking without soft-dirty needs (see KERNEL-FACTS.md).
    pub const WP_TRACKING: u64 = PAGEFAULT_FLAG_WP | WP_ASYNC | WP_UNPOPULATED;

    pub(crate) const NAMES: &[(u64, &str)] = &[
        (PAGEFAULT_FLAG_WP, "PAGEFAULT_FLAG_WP"),
        (EVENT_FORK, "EVENT_FORK"),
        (EVENT_REMAP, "EVENT_REMAP"),
        (EVENT_REMOVE, "EVENT_REMOVE"),
        (MISSING_HUGETLBFS, "MISSING_HUGETLBFS"),
        (MISSING_SHMEM, "MISSING_SHMEM"),
        (EVENT_UNMAP, "EVENT_UNMAP"),
        (SIGBUS, "SIGBUS"),
        (THREAD_ID, "THREAD_ID"),
        (MINOR_HUGETLBFS, "MINOR_HUGETLBFS"),
        (MINOR_SHMEM, "MINOR_SHMEM"),
        (EXACT_ADDRESS, "EXACT_ADDRESS"),
        (WP_HUGETLBFS_SHMEM, "WP_HUGETLBFS_SHMEM"),
        (WP_UNPOPULATED, "WP_UNPOPULATED"),
        (POISON, "POISON"),
        (WP_ASYNC, "WP_ASYNC"),
        (MOVE, "MOVE"),
    ];
}

/// Capability numbers (linux/capability.h) that matter to checkpoint/restore.
pub mod cap {
    pub const SYS_PTRACE: u32 = 19;
    pub const SYS_ADMIN: u32 = 21;
    pub const SYS_RESOURCE: u32 = 24;
    pub const CHECKPOINT_RESTORE: u32 = 40;
}

/// The effective capability set of this process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    pub effective: u64,
}

impl Caps {
    /// Reads `CapEff` from /proc/self/status (cheap: no probing).
    pub fn of_self() -> std::io::Result<Caps> {
        let status = std::fs::read_to_string("/proc/self/status")?;
        let hex = status_field(&status, "CapEff:").unwrap_or("0");
        let effective = u64::from_str_radix(hex.trim(), 16).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "unparsable CapEff")
        })?;
        Ok(Caps { effective })
    }

    pub fn has(&self, cap: u32) -> bool {
        self.effective & (1u64 << cap) != 0
    }

    /// What CRIU requires of any operation: CAP_CHECKPOINT_RESTORE, or CAP_SYS_ADMIN which
    /// implies it.
    pub fn can_checkpoint_restore(&self) -> bool {
        self.has(cap::CHECKPOINT_RESTORE) || self.has(cap::SYS_ADMIN)
    }
}

/// Why this process may not dump or restore, as CRIU's check_caps says it: it needs
/// CAP_CHECKPOINT_RESTORE (or CAP_SYS_ADMIN), and to be root unless `unprivileged` was asked.
pub fn privilege_problem(unprivileged: bool) -> Option<String> {
    let caps = match Caps::of_self() {
        Ok(c) => c,
        Err(e) => return Some(format!("cannot read /proc/self/status: {e}")),
    };
    if !caps.can_checkpoint_restore() {
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "criu".into());
        return Some(format!(
            "criu needs the CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN capability; e.g. \
             setcap cap_checkpoint_restore+eip {exe}"
        ));
    }
    if !nix::unistd::geteuid().is_root() && !unprivileged {
        return Some("running as non-root requires --unprivileged".into());
    }
    None
}

fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|l| l.strip_prefix(key))
}

/// Where the kernel put the vdso and its data pages in our own address space. Restore must
/// move them together, keeping these relative offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VdsoLayout {
    pub vdso: Range<u64>,
    pub vvar: Option<Range<u64>>,
    pub vvar_vclock: Option<Range<u64>>,
}

impl VdsoLayout {
    /// Reads `[vdso]`, `[vvar]` and `[vvar_vclock]` from a /proc/PID/maps text.
    pub fn from_maps(maps: &str) -> Option<VdsoLayout> {
        let find = |name: &str| {
            maps.lines().find_map(|line| {
                let mut fields = line.split_whitespace();
                let range = fields.next()?;
                if fields.nth(4)? != name {
                    return None;
                }
                let (s, e) = range.split_once('-')?;
                Some(u64::from_str_radix(s, 16).ok()?..u64::from_str_radix(e, 16).ok()?)
            })
        };
        Some(VdsoLayout {
            vdso: find("[vdso]")?,
            vvar: find("[vvar]"),
            vvar_vclock: find("[vvar_vclock]"),
        })
    }

    fn lowest(&self) -> u64 {
        [
            Some(&self.vdso),
            self.vvar.as_ref(),
            self.vvar_vclock.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|r| r.start)
        .min()
        .unwrap_or(self.vdso.start)
    }
}

impl fmt::Display for VdsoLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let base = self.lowest();
        let mut first = true;
        for (name, range) in [
            ("[vvar]", self.vvar.as_ref()),
            ("[vvar_vclock]", self.vvar_vclock.as_ref()),
            ("[vdso]", Some(&self.vdso)),
        ] {
            if let Some(r) = range {
                if !first {
                    write!(f, ", ")?;
                }
                first = false;
                write!(
                    f,
                    "{name} +{:#x} {} pages",
                    r.start - base,
                    (r.end - r.start) / 4096
                )?;
            }
        }
        Ok(())
    }
}

/// Everything probed. `Err(errno)` fields carry why a mechanism is missing.
#[derive(Clone, Debug)]
pub struct KernDat {
    pub caps: Caps,
    /// PTRACE_SEIZE + PTRACE_INTERRUPT on a child; the other ptrace findings need it.
    pub ptrace_seize: Probed,
    pub ptrace_getsigmask: Probed,
    pub ptrace_peeksiginfo: Probed,
    pub ptrace_rseq_config: Probed<RseqConfig>,
    pub ptrace_syscall_info: Probed,
    pub ptrace_suspend_seccomp: Probed,
    pub ptrace_seccomp_filters: Probed,
    pub rseq: Probed,
    pub clone3_set_tid: Probed<bool>,
    pub ns_last_pid: bool,
    /// `sizeof(struct prctl_mm_map)` accepted by PR_SET_MM_MAP.
    pub prctl_mm_map_size: Probed<u32>,
    pub process_vm_readv: Probed,
    pub pagemap: bool,
    pub pagemap_scan: Probed,
    pub pagemap_scan_guard: Probed,
    pub soft_dirty: Probed<bool>,
    /// PAGEMAP_SCAN reports a tracked range without a page table as written (see the probe).
    pub scan_holes_written: Probed<bool>,
    /// UFFDIO_API features of a userfaultfd from the syscall.
    pub uffd_syscall: Probed<u64>,
    /// UFFDIO_API features of a userfaultfd from /dev/userfaultfd.
    pub uffd_dev: Probed<u64>,
    pub pidfd_open: Probed,
    pub pidfd_getfd: Probed,
    pub timerfd: Probed,
    pub timerfd_set_ticks: Probed,
    pub epoll: Probed,
    pub kcmp_epoll_tfd: Probed,
    pub memfd: Probed,
    pub memfd_hugetlb: Probed,
    pub openat2: Probed,
    pub timens: bool,
    pub map_files: bool,
    pub fdinfo_mnt_id: bool,
    pub ns_pid: bool,
    pub vdso: Option<VdsoLayout>,
    pub arch_map_vdso: Probed<bool>,
}

static KERNDAT: OnceCell<KernDat> = OnceCell::new();

/// The probed kernel, probed on first use.
pub fn get() -> &'static KernDat {
    KERNDAT.get_or_init(KernDat::probe)
}

impl KernDat {
    /// Runs every probe now (`get()` caches one run per process).
    pub fn probe() -> KernDat {
        let ptrace = probe::ptrace();
        let seize = ptrace.as_ref().map(drop).map_err(|e| *e);
        let from_ptrace = |pick: fn(&probe::PtraceFindings) -> Probed| match &ptrace {
            Ok(f) => pick(f),
            Err(e) => Err(*e),
        };
        let (pidfd_open, pidfd_getfd) = probe::pidfd();
        let (timerfd, timerfd_set_ticks) = probe::timerfd();
        let (epoll, kcmp_epoll_tfd) = probe::epoll();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let vdso = VdsoLayout::from_maps(&maps);
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        KernDat {
            caps: Caps::of_self().unwrap_or_default(),
            ptrace_getsigmask: from_ptrace(|f| f.getsigmask),
            ptrace_peeksiginfo: from_ptrace(|f| f.peeksiginfo),
            ptrace_rseq_config: match &ptrace {
                Ok(f) => f.rseq_config,
                Err(e) => Err(*e),
            },
            ptrace_syscall_info: from_ptrace(|f| f.syscall_info),
            ptrace_suspend_seccomp: from_ptrace(|f| f.suspend_seccomp),
            ptrace_seccomp_filters: from_ptrace(|f| f.seccomp_get_filter),
            ptrace_seize: seize,
            rseq: probe::rseq_syscall(),
            clone3_set_tid: probe::clone3_set_tid(),
            ns_last_pid: std::path::Path::new("/proc/sys/kernel/ns_last_pid").exists(),
            prctl_mm_map_size: probe::prctl_mm_map_size(),
            process_vm_readv: probe::process_vm_readv(),
            pagemap: std::fs::File::open("/proc/self/pagemap").is_ok(),
            pagemap_scan: probe::pagemap_scan(false),
            pagemap_scan_guard: probe::pagemap_scan(true),
            soft_dirty: probe::soft_dirty(),
            scan_holes_written: probe::pagemap_scan_holes_written(),
            uffd_syscall: probe::uffd_features(UffdSource::Syscall),
            uffd_dev: probe::uffd_features(UffdSource::Device),
            pidfd_open,
            pidfd_getfd,
            timerfd,
            timerfd_set_ticks,
            epoll,
            kcmp_epoll_tfd,
            memfd: probe::memfd(false),
            memfd_hugetlb: probe::memfd(true),
            openat2: probe::openat2(),
            timens: std::path::Path::new("/proc/self/timens_offsets").exists(),
            map_files: map_files_readable(&maps),
            fdinfo_mnt_id: fdinfo_has_mnt_id(),
            ns_pid: status_field(&status, "NSpid:").is_some(),
            arch_map_vdso: if vdso.is_some() {
                probe::arch_map_vdso()
            } else {
                // Without a vdso the request would map one into us: do not ask.
                Err(Errno::ENOENT)
            },
            vdso,
        }
    }

    /// Features of whichever userfaultfd source works (0 when neither does).
    pub fn uffd_features(&self) -> u64 {
        match (&self.uffd_syscall, &self.uffd_dev) {
            (Ok(a), Ok(b)) => a | b,
            (Ok(f), _) | (_, Ok(f)) => *f,
            _ => 0,
        }
    }

    pub fn has_uffd(&self) -> bool {
        self.uffd_syscall.is_ok() || self.uffd_dev.is_ok()
    }

    /// Non-cooperative userfaultfd: fork/remap/remove/unmap events.
    pub fn has_uffd_noncoop(&self) -> bool {
        self.has_uffd() && self.uffd_features() & uffd_feature::NONCOOP == uffd_feature::NONCOOP
    }

    /// Asynchronous uffd write-protect that also marks unpopulated pages.
    pub fn has_uffd_wp_async(&self) -> bool {
        self.has_uffd()
            && self.uffd_features() & uffd_feature::WP_TRACKING == uffd_feature::WP_TRACKING
    }

    /// The kernel side of memory-change tracking as we do it: uffd-wp async + PAGEMAP_SCAN.
    /// (Soft-dirty is CRIU's mechanism; we do not use it.)
    pub fn has_mem_track(&self) -> bool {
        self.has_uffd_wp_async() && self.pagemap_scan.is_ok()
    }

    /// The kernel side of lazy restore: userfaultfd with the non-cooperative events.
    pub fn has_lazy_pages(&self) -> bool {
        self.has_uffd_noncoop()
    }

    /// The kernel side of the RPC pidfd store: pidfd_open + pidfd_getfd.
    pub fn has_pidfd_store(&self) -> bool {
        self.pidfd_open.is_ok() && self.pidfd_getfd.is_ok()
    }

    /// Whether the kernel can take a pid chosen by restore (clone3 set_tid or ns_last_pid).
    pub fn can_choose_pid(&self) -> bool {
        matches!(self.clone3_set_tid, Ok(true)) || self.ns_last_pid
    }

    /// Mechanisms that dump needs and this kernel (or our privileges) lacks.
    pub fn missing_for_dump(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if !self.caps.can_checkpoint_restore() {
            missing.push("CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN");
        }
        if self.ptrace_seize.is_err() {
            missing.push("PTRACE_SEIZE/PTRACE_INTERRUPT");
        }
        if self.ptrace_getsigmask.is_err() {
            missing.push("PTRACE_GETSIGMASK");
        }
        if self.ptrace_peeksiginfo.is_err() {
            missing.push("PTRACE_PEEKSIGINFO");
        }
        // Tasks register rseq (glibc >= 2.35 does): the dump must read the registration.
        if self.rseq.is_ok() && self.ptrace_rseq_config.is_err() {
            missing.push("PTRACE_GET_RSEQ_CONFIGURATION");
        }
        if self.process_vm_readv.is_err() {
            missing.push("process_vm_readv");
        }
        if !self.pagemap {
            missing.push("/proc/PID/pagemap");
        }
        if !self.map_files {
            missing.push("/proc/PID/map_files");
        }
        missing
    }

    /// Mechanisms that restore needs and this kernel (or our privileges) lacks.
    pub fn missing_for_restore(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if !self.caps.can_checkpoint_restore() {
            missing.push("CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN");
        }
        if self.ptrace_seize.is_err() {
            missing.push("PTRACE_SEIZE/PTRACE_INTERRUPT");
        }
        if !self.can_choose_pid() {
            missing.push("clone3 set_tid or /proc/sys/kernel/ns_last_pid");
        }
        if self.prctl_mm_map_size.is_err() {
            missing.push("prctl PR_SET_MM_MAP");
        }
        if self.vdso.is_none() {
            missing.push("[vdso] in /proc/self/maps");
        }
        missing
    }
}

fn map_files_readable(maps: &str) -> bool {
    // The first file-backed mapping (our own executable).
    maps.lines()
        .find(|l| {
            l.split_whitespace()
                .nth(5)
                .is_some_and(|p| p.starts_with('/'))
        })
        .and_then(|l| l.split_whitespace().next())
        .is_some_and(|range| std::fs::read_link(format!("/proc/self/map_files/{range}")).is_ok())
}

fn fdinfo_has_mnt_id() -> bool {
    use std::os::fd::AsRawFd;
    let Ok(f) = std::fs::File::open("/proc/self/status") else {
        return false;
    };
    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", f.as_raw_fd()))
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("mnt_id:")))
}

/// Names of the uffd feature bits in `mask`, for reports.
pub fn uffd_feature_names(mask: u64) -> Vec<&'static str> {
    uffd_feature::NAMES
        .iter()
        .filter(|(bit, _)| mask & bit != 0)
        .map(|(_, name)| *name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a02000 r--p 00000000 08:01 1234 /usr/bin/cat
7ffd1c9d0000-7ffd1c9f1000 rw-p 00000000 00:00 0 [stack]
7ffd1c9f8000-7ffd1c9fc000 r--p 00000000 00:00 0 [vvar]
7ffd1c9fc000-7ffd1c9fe000 r--p 00000000 00:00 0 [vvar_vclock]
7ffd1c9fe000-7ffd1ca00000 r-xp 00000000 00:00 0 [vdso]
";

    #[test]
    fn vdso_layout_keeps_relative_offsets() {
        let v = VdsoLayout::from_maps(MAPS).unwrap();
        assert_eq!(v.vdso, 0x7ffd1c9fe000..0x7ffd1ca00000);
        assert_eq!(v.vvar, Some(0x7ffd1c9f8000..0x7ffd1c9fc000));
        assert_eq!(
            v.to_string(),
            "[vvar] +0x0 4 pages, [vvar_vclock] +0x4000 2 pages, [vdso] +0x6000 2 pages"
        );
    }

    #[test]
    fn no_vdso_no_layout() {
        assert_eq!(
            VdsoLayout::from_maps("00400000-00401000 r-xp 0 0:0 0 /x\n"),
            None
        );
    }

    #[test]
    fn caps_bits() {
        let c = Caps {
            effective: 1 << cap::CHECKPOINT_RESTORE,
        };
        assert!(c.can_checkpoint_restore());
        assert!(!c.has(cap::SYS_RESOURCE));
        assert!(!Caps::default().can_checkpoint_restore());
    }

    #[test]
    fn uffd_names() {
        assert_eq!(
            uffd_feature_names(uffd_feature::EVENT_FORK | uffd_feature::WP_ASYNC),
            ["EVENT_FORK", "WP_ASYNC"]
        );
    }

    /// The live probes must run without leaking children or panicking, whatever the kernel.
    #[test]
    fn probing_is_repeatable() {
        let a = KernDat::probe();
        let b = KernDat::probe();
        assert_eq!(a.ptrace_seize.is_ok(), b.ptrace_seize.is_ok());
        assert_eq!(a.uffd_features(), b.uffd_features());
        assert!(a.process_vm_readv.is_ok(), "{:?}", a.process_vm_readv);
    }
}
