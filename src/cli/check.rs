//! `criu check`: what this kernel offers for the mechanisms we use, and feature answers that
//! callers act on (`criu check --feature NAME` exits 0 only when the feature can be used).
//!
//! Three kinds of feature names, because a "yes" must be true of kernel AND build:
//! - kernel mechanisms the engine uses directly (uffd, timerfd, rseq config, ...): the answer is
//!   the kernel's;
//! - capabilities of this build that need kernel support (mem_dirty_track, lazy_pages,
//!   pidfd_store): `crate::engine::features()` gates them on what the engine implements;
//! - names CRIU knows for things this build does not checkpoint/restore (tun, autofs, ...): no,
//!   whatever the kernel has.

use std::fmt::Write as _;

use nix::errno::Errno;

use super::parse::CheckRequest;
use super::CliError;
use crate::engine::{self, Features};
use crate::kerndat::{self, uffd_feature, KernDat};

/// Present (with what was seen), or missing (with why).
type Verdict = Result<String, String>;

enum Kind {
    Kernel(fn(&KernDat) -> Verdict),
    Build {
        kernel: fn(&KernDat) -> Verdict,
        built: fn(&Features) -> bool,
    },
    /// Not implemented by this build; the kernel side is shown when we probe it.
    NotImplemented(Option<fn(&KernDat) -> Verdict>),
}

struct Feature {
    name: &'static str,
    kind: Kind,
}

const fn kernel(name: &'static str, f: fn(&KernDat) -> Verdict) -> Feature {
    Feature {
        name,
        kind: Kind::Kernel(f),
    }
}

const fn not_built(name: &'static str) -> Feature {
    Feature {
        name,
        kind: Kind::NotImplemented(None),
    }
}

/// CRIU's feature names (cr-check.c) in CRIU's order, then the ones callers of ours use.
const FEATURES: &[Feature] = &[
    kernel("mnt_id", |k| {
        yes_if(k.fdinfo_mnt_id, "no mnt_id in /proc/PID/fdinfo")
    }),
    Feature {
        name: "mem_dirty_track",
        kind: Kind::Build {
            kernel: mem_track,
            built: |f| f.mem_track,
        },
    },
    not_built("aio_remap"),
    kernel("timerfd", timerfd),
    not_built("tun"),
    not_built("tun_ns"),
    not_built("userns"),
    kernel("fdinfo_lock", |_| fdinfo_lock()),
    kernel("seccomp_suspend", |k| {
        errno_verdict(&k.ptrace_suspend_seccomp)
    }),
    kernel("seccomp_filters", |k| {
        errno_verdict(&k.ptrace_seccomp_filters)
    }),
    not_built("loginuid"),
    not_built("cgroupns"),
    not_built("autofs"),
    kernel("tcp_half_closed", |_| tcp_repair()),
    not_built("compat_cr"),
    kernel("uffd", uffd),
    kernel("uffd-noncoop", uffd_noncoop),
    kernel("can_map_vdso", can_map_vdso),
    not_built("sk_ns"),
    not_built("sk_unix_file"),
    not_built("net_diag_raw"),
    not_built("nsid"),
    not_built("link_nsid"),
    kernel("kcmp_epoll", epoll),
    Feature {
        name: "timens",
        kind: Kind::NotImplemented(Some(|k| yes_if(k.timens, "no /proc/self/timens_offsets"))),
    },
    not_built("external_net_ns"),
    kernel("clone3_set_tid", clone3_set_tid),
    not_built("newifindex"),
    kernel("nftables", |_| nft_works()),
    not_built("has_ipt_legacy"),
    Feature {
        name: "pidfd_store",
        kind: Kind::Build {
            kernel: pidfd,
            built: |f| f.pidfd_store,
        },
    },
    Feature {
        name: "ns_pid",
        kind: Kind::NotImplemented(Some(|k| yes_if(k.ns_pid, "no NSpid in /proc/PID/status"))),
    },
    not_built("apparmor_stacking"),
    kernel("network_lock_nftables", |_| nft_works()),
    not_built("sockopt_buf_lock"),
    Feature {
        name: "memfd_hugetlb",
        kind: Kind::NotImplemented(Some(|k| errno_verdict(&k.memfd_hugetlb))),
    },
    not_built("move_mount_set_group"),
    kernel("openat2", |k| errno_verdict(&k.openat2)),
    kernel("get_rseq_conf", rseq_config),
    not_built("ipv6_freebind"),
    kernel("pagemap_scan", |k| errno_verdict(&k.pagemap_scan)),
    not_built("timer_cr_ids"),
    not_built("overlayfs_maps"),
    not_built("breakpoints"),
    kernel("pagemap_scan_guard_pages", |k| {
        errno_verdict(&k.pagemap_scan_guard)
    }),
    // Names used by callers of this build.
    Feature {
        name: "lazy_pages",
        kind: Kind::Build {
            kernel: uffd_noncoop,
            built: |f| f.lazy_pages,
        },
    },
    kernel("rseq", rseq_config),
    kernel("epoll", epoll),
];

/// Every feature name `--feature` accepts.
pub fn feature_names() -> Vec<&'static str> {
    FEATURES.iter().map(|f| f.name).collect()
}

pub fn is_known_feature(name: &str) -> bool {
    FEATURES.iter().any(|f| f.name == name)
}

fn yes_if(present: bool, why_not: &str) -> Verdict {
    if present {
        Ok(String::new())
    } else {
        Err(why_not.to_string())
    }
}

fn errno_verdict<T>(r: &Result<T, Errno>) -> Verdict {
    match r {
        Ok(_) => Ok(String::new()),
        Err(e) => Err(e.to_string()),
    }
}

fn uffd(k: &KernDat) -> Verdict {
    match (&k.uffd_syscall, &k.uffd_dev) {
        (Err(sys), Err(dev)) => Err(format!("userfaultfd(): {sys}; /dev/userfaultfd: {dev}")),
        _ => Ok(String::new()),
    }
}

fn missing_uffd_bits(k: &KernDat, wanted: u64) -> Verdict {
    uffd(k)?;
    let missing = wanted & !k.uffd_features();
    if missing == 0 {
        Ok(kerndat::uffd_feature_names(wanted).join(" "))
    } else {
        Err(format!(
            "userfaultfd lacks {}",
            kerndat::uffd_feature_names(missing).join(" ")
        ))
    }
}

fn uffd_noncoop(k: &KernDat) -> Verdict {
    missing_uffd_bits(k, uffd_feature::NONCOOP)
}

fn mem_track(k: &KernDat) -> Verdict {
    missing_uffd_bits(k, uffd_feature::WP_TRACKING)?;
    k.pagemap_scan
        .map(|_| "uffd async write-protect + PAGEMAP_SCAN".to_string())
        .map_err(|e| format!("PAGEMAP_SCAN: {e}"))
}

fn timerfd(k: &KernDat) -> Verdict {
    k.timerfd.map_err(|e| format!("timerfd_create: {e}"))?;
    k.timerfd_set_ticks
        .map(|_| String::new())
        .map_err(|e| format!("TFD_IOC_SET_TICKS: {e}"))
}

/// TCP_REPAIR, which --tcp-established uses for every connection state it carries (half-closed
/// ones too): a fresh TCP socket must accept it.
fn tcp_repair() -> Verdict {
    use crate::sys::inet as sk;
    let s = sk::socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_TCP)
        .map_err(|e| e.to_string())?;
    sk::set_int(
        std::os::fd::AsFd::as_fd(&s),
        libc::IPPROTO_TCP,
        sk::TCP_REPAIR,
        1,
        "TCP_REPAIR",
    )
    .map_err(|e| e.to_string())?;
    Ok(String::new())
}

/// `--network-lock nftables` runs the `nft` command: it must be there and reach the kernel.
fn nft_works() -> Verdict {
    let o = std::process::Command::new("nft")
        .args(["list", "tables"])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if o.status.success() {
        Ok(String::new())
    } else {
        Err(format!(
            "nft list tables: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

fn epoll(k: &KernDat) -> Verdict {
    k.epoll.map_err(|e| format!("epoll_create1: {e}"))?;
    k.kcmp_epoll_tfd
        .map(|_| String::new())
        .map_err(|e| format!("kcmp(KCMP_EPOLL_TFD): {e}"))
}

/// Whether /proc/PID/fdinfo shows a file's locks ("lock:" lines), which --file-locks reads:
/// flock a scratch file and look.
fn fdinfo_lock() -> Verdict {
    use std::os::fd::{AsFd, AsRawFd};
    let path = std::env::temp_dir().join(format!("criu-check-lock-{}", std::process::id()));
    let f = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let _ = std::fs::remove_file(&path);
    crate::sys::evfds::flock(f.as_fd(), true).map_err(|e| e.to_string())?;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", f.as_raw_fd()))
        .map_err(|e| format!("/proc/self/fdinfo: {e}"))?;
    yes_if(
        info.lines().any(|l| l.starts_with("lock:")),
        "no lock lines in /proc/PID/fdinfo",
    )
}

fn pidfd(k: &KernDat) -> Verdict {
    k.pidfd_open.map_err(|e| format!("pidfd_open: {e}"))?;
    k.pidfd_getfd
        .map(|_| String::new())
        .map_err(|e| format!("pidfd_getfd: {e}"))
}

fn clone3_set_tid(k: &KernDat) -> Verdict {
    match k.clone3_set_tid {
        Ok(true) => Ok(String::new()),
        Ok(false) => Err("clone3() has no set_tid".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn can_map_vdso(k: &KernDat) -> Verdict {
    match k.arch_map_vdso {
        Ok(true) => Ok(String::new()),
        Ok(false) => Err("arch_prctl(ARCH_MAP_VDSO_64) is unknown".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn rseq_config(k: &KernDat) -> Verdict {
    match &k.ptrace_rseq_config {
        Ok(c) if c.rseq_abi_size > 0 => Ok(format!(
            "libc registers {} bytes, signature {:#x}",
            c.rseq_abi_size, c.signature
        )),
        Ok(_) => Ok("no rseq area registered by libc".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The answer for one feature: Ok(detail) when it can be used, Err(why not) otherwise.
fn evaluate(f: &Feature, k: &KernDat, built: &Features) -> Result<String, String> {
    match &f.kind {
        Kind::Kernel(probe) => probe(k).map_err(|why| format!("the kernel lacks it: {why}")),
        Kind::Build {
            kernel,
            built: is_built,
        } => {
            let detail = kernel(k).map_err(|why| format!("the kernel lacks it: {why}"))?;
            if is_built(built) {
                Ok(detail)
            } else {
                Err(with_detail(
                    "not supported by this build yet (the kernel has it",
                    &detail,
                ) + ")")
            }
        }
        Kind::NotImplemented(probe) => Err(match probe.map(|p| p(k)) {
            Some(Ok(_)) => "not supported by this build yet (the kernel has it)".into(),
            Some(Err(why)) => format!("not supported by this build yet (nor by the kernel: {why})"),
            None => "not supported by this build yet".into(),
        }),
    }
}

fn with_detail(head: &str, detail: &str) -> String {
    if detail.is_empty() {
        head.to_string()
    } else {
        format!("{head}: {detail}")
    }
}

/// `criu check --feature NAME`: Ok(the line to print) when present.
pub fn check_feature(name: &str) -> Result<String, CliError> {
    let f = FEATURES
        .iter()
        .find(|f| f.name == name)
        .ok_or_else(|| CliError::UnknownFeature {
            name: name.to_string(),
            known: feature_names().join(", "),
        })?;
    match evaluate(f, kerndat::get(), &engine::features()) {
        Ok(_) => Ok(format!("{name} is supported")),
        Err(why) => Err(CliError::CheckFailed(format!("{name}: {why}"))),
    }
}

/// One line of the report.
struct Line {
    label: &'static str,
    verdict: Verdict,
}

fn mechanisms(k: &KernDat) -> Vec<Line> {
    let caps = &k.caps;
    let cap_list = [
        ("CAP_CHECKPOINT_RESTORE", kerndat::cap::CHECKPOINT_RESTORE),
        ("CAP_SYS_ADMIN", kerndat::cap::SYS_ADMIN),
        ("CAP_SYS_PTRACE", kerndat::cap::SYS_PTRACE),
        ("CAP_SYS_RESOURCE", kerndat::cap::SYS_RESOURCE),
    ]
    .iter()
    .map(|(n, c)| format!("{n} {}", if caps.has(*c) { "yes" } else { "no" }))
    .collect::<Vec<_>>()
    .join(", ");
    let line = |label, verdict| Line { label, verdict };
    let soft_dirty = match k.soft_dirty {
        Ok(true) => Ok("present, but memory tracking uses userfaultfd".to_string()),
        Ok(false) => Err("kernel built without CONFIG_MEM_SOFT_DIRTY (not needed)".to_string()),
        Err(e) => Err(e.to_string()),
    };
    let uffd_source = |r: &Result<u64, Errno>| match r {
        Ok(f) => Ok(format!(
            "features {}",
            kerndat::uffd_feature_names(*f).join(" ")
        )),
        Err(e) => Err(e.to_string()),
    };
    vec![
        line(
            "capabilities",
            if caps.can_checkpoint_restore() {
                Ok(cap_list)
            } else {
                Err(cap_list)
            },
        ),
        line(
            "ptrace PTRACE_SEIZE + PTRACE_INTERRUPT",
            errno_verdict(&k.ptrace_seize),
        ),
        line(
            "ptrace PTRACE_GETSIGMASK",
            errno_verdict(&k.ptrace_getsigmask),
        ),
        line(
            "ptrace PTRACE_PEEKSIGINFO",
            errno_verdict(&k.ptrace_peeksiginfo),
        ),
        line("ptrace PTRACE_GET_RSEQ_CONFIGURATION", rseq_config(k)),
        line(
            "ptrace PTRACE_GET_SYSCALL_INFO",
            errno_verdict(&k.ptrace_syscall_info),
        ),
        line(
            "ptrace PTRACE_O_SUSPEND_SECCOMP",
            errno_verdict(&k.ptrace_suspend_seccomp),
        ),
        line(
            "ptrace PTRACE_SECCOMP_GET_FILTER",
            errno_verdict(&k.ptrace_seccomp_filters),
        ),
        line("rseq()", errno_verdict(&k.rseq)),
        line("clone3() with set_tid", clone3_set_tid(k)),
        line(
            "/proc/sys/kernel/ns_last_pid",
            yes_if(k.ns_last_pid, "missing"),
        ),
        line(
            "prctl PR_SET_MM_MAP",
            k.prctl_mm_map_size
                .map(|n| format!("struct prctl_mm_map is {n} bytes"))
                .map_err(|e| e.to_string()),
        ),
        line("process_vm_readv()", errno_verdict(&k.process_vm_readv)),
        line("/proc/PID/pagemap", yes_if(k.pagemap, "not readable")),
        line("/proc/PID/map_files", yes_if(k.map_files, "not readable")),
        line("PAGEMAP_SCAN ioctl", errno_verdict(&k.pagemap_scan)),
        line(
            "PAGEMAP_SCAN guard pages",
            errno_verdict(&k.pagemap_scan_guard),
        ),
        line("soft-dirty bits", soft_dirty),
        line(
            "PAGEMAP_SCAN of dropped page tables",
            match k.scan_holes_written {
                Ok(true) => Ok("read as written".to_string()),
                Ok(false) => Err(
                    "read as unwritten: pre-dumps look at every anonymous page (slower)"
                        .to_string(),
                ),
                Err(e) => Err(e.to_string()),
            },
        ),
        line("userfaultfd()", uffd_source(&k.uffd_syscall)),
        line("/dev/userfaultfd", uffd_source(&k.uffd_dev)),
        line("uffd non-cooperative events", uffd_noncoop(k)),
        line(
            "uffd async write-protect",
            missing_uffd_bits(k, uffd_feature::WP_TRACKING),
        ),
        line("pidfd_open() + pidfd_getfd()", pidfd(k)),
        line("timerfd + TFD_IOC_SET_TICKS", timerfd(k)),
        line("epoll + kcmp(KCMP_EPOLL_TFD)", epoll(k)),
        line("memfd_create()", errno_verdict(&k.memfd)),
        line("memfd_create(MFD_HUGETLB)", errno_verdict(&k.memfd_hugetlb)),
        line("openat2()", errno_verdict(&k.openat2)),
        line(
            "time namespaces",
            yes_if(k.timens, "no /proc/self/timens_offsets"),
        ),
        line(
            "mnt_id in /proc/PID/fdinfo",
            yes_if(k.fdinfo_mnt_id, "missing"),
        ),
        line(
            "vdso layout",
            k.vdso
                .as_ref()
                .map(|v| v.to_string())
                .ok_or_else(|| "no [vdso] in /proc/self/maps".to_string()),
        ),
        line("arch_prctl ARCH_MAP_VDSO_64", can_map_vdso(k)),
    ]
}

fn render(out: &mut String, label: &str, verdict: &Verdict) {
    let (word, detail) = match verdict {
        Ok(d) => ("yes", d),
        Err(d) => ("no", d),
    };
    let _ = if detail.is_empty() {
        writeln!(out, "  {label:<40} {word}")
    } else {
        writeln!(out, "  {label:<40} {word}: {detail}")
    };
}

/// `criu check` without --feature: the report (for stdout), and Err when dump or restore
/// cannot work here (or, with --extra/--all, when an optional feature is missing).
pub fn report(req: &CheckRequest) -> (String, Result<(), CliError>) {
    let k = kerndat::get();
    let built = engine::features();
    let mut out = String::new();
    let uname = nix::sys::utsname::uname().ok();
    let _ = writeln!(
        out,
        "criu {}.{} (criu-rs {}) on Linux {} {}",
        crate::VERSION_MAJOR,
        crate::VERSION_MINOR,
        env!("CARGO_PKG_VERSION"),
        uname
            .as_ref()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        uname
            .as_ref()
            .map(|u| u.machine().to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    let _ = writeln!(out, "Kernel mechanisms:");
    for l in mechanisms(k) {
        render(&mut out, l.label, &l.verdict);
    }

    let _ = writeln!(out, "Features (criu check --feature NAME):");
    let mut optional_missing = false;
    for f in FEATURES {
        let shown = req.extra || req.experimental || matches!(f.kind, Kind::Build { .. });
        if !shown {
            continue;
        }
        let verdict = evaluate(f, k, &built);
        optional_missing |= verdict.is_err();
        render(&mut out, f.name, &verdict);
    }

    let mut missing: Vec<String> = Vec::new();
    for (what, list) in [
        ("dump", k.missing_for_dump()),
        ("restore", k.missing_for_restore()),
    ] {
        if !list.is_empty() {
            missing.push(format!("{what} needs {}", list.join(", ")));
        }
    }
    if !missing.is_empty() {
        let _ = writeln!(out, "Does not look good.");
        return (out, Err(CliError::CheckFailed(missing.join("; "))));
    }
    if (req.extra || req.experimental) && optional_missing {
        let _ = writeln!(
            out,
            "Looks good, but some features above are missing: trees that need them cannot be\n\
             dumped or restored."
        );
        return (
            out,
            Err(CliError::CheckFailed(
                "some optional features are missing".into(),
            )),
        );
    }
    let _ = writeln!(out, "Looks good.");
    (out, Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_include_criu_and_ours() {
        let names = feature_names();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
        for n in [
            "mem_dirty_track",
            "uffd",
            "uffd-noncoop",
            "lazy_pages",
            "pidfd_store",
            "rseq",
            "get_rseq_conf",
            "timerfd",
            "epoll",
            "kcmp_epoll",
            "fdinfo_lock",
            "pagemap_scan_guard_pages",
            "external_net_ns",
        ] {
            assert!(is_known_feature(n), "{n}");
        }
        assert!(!is_known_feature("warp_drive"));
    }

    #[test]
    fn build_gate_is_distinct_from_kernel_absence() {
        let k = kerndat::get();
        let f = FEATURES
            .iter()
            .find(|f| f.name == "mem_dirty_track")
            .unwrap();
        let none = Features::default();
        let all = Features {
            mem_track: true,
            lazy_pages: true,
            pidfd_store: true,
        };
        match (k.has_mem_track(), evaluate(f, k, &none)) {
            (true, Err(why)) => assert!(why.starts_with("not supported by this build"), "{why}"),
            (false, Err(why)) => assert!(why.starts_with("the kernel lacks it"), "{why}"),
            (_, Ok(d)) => panic!("reported present without the build: {d}"),
        }
        assert_eq!(evaluate(f, k, &all).is_ok(), k.has_mem_track());
    }

    #[test]
    fn unimplemented_names_are_never_present() {
        let k = kerndat::get();
        let all = Features {
            mem_track: true,
            lazy_pages: true,
            pidfd_store: true,
        };
        for name in ["tun", "autofs", "timens", "ns_pid", "external_net_ns"] {
            let f = FEATURES.iter().find(|f| f.name == name).unwrap();
            assert!(evaluate(f, k, &all).is_err(), "{name}");
        }
    }
}
