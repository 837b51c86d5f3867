//! Parsers for option values with a syntax of their own (`--join-ns NS:FILE[,OPTS]`,
//! `--cpu-cap ^fpu,ins`, `--ghost-limit 1M`, ...). Each takes the raw text and returns the typed
//! value or a message that clap shows after "invalid value 'X' for '--opt'".

use crate::options::{CgroupMode, FileValidation, NetworkLock, PreDumpMode};

/// A `-v` occurrence: bare `-v` (or each v of `-vvv`) raises the level, `-vN`/`--verbosity=N`
/// sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verbosity {
    Increase,
    Set(i32),
}

pub fn verbosity(s: &str) -> Result<Verbosity, String> {
    if s.is_empty() {
        return Ok(Verbosity::Increase);
    }
    s.parse::<i32>()
        .map(Verbosity::Set)
        .map_err(|_| "expected a number 0-4".to_string())
}

/// `-t PID`: a positive pid.
pub fn pid(s: &str) -> Result<i32, String> {
    match s.parse::<i32>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err("expected a positive pid".into()),
    }
}

/// `--port N`: a non-zero TCP port.
pub fn port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err("expected a port number 1-65535".into()),
    }
}

/// A file descriptor number (`--status-fd`, `--ps-socket`, `--close`).
pub fn fd(s: &str) -> Result<i32, String> {
    match s.parse::<i32>() {
        Ok(fd) if fd >= 0 => Ok(fd),
        _ => Err("expected a file descriptor number".into()),
    }
}

/// `--ghost-limit SIZE`: bytes, with an optional K, M or G suffix (powers of 1024).
pub fn size(s: &str) -> Result<u64, String> {
    let (digits, mult) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| "expected a size such as 1048576, 512K, 1M or 1G".into())
}

pub fn pre_dump_mode(s: &str) -> Result<PreDumpMode, String> {
    match s {
        "splice" => Ok(PreDumpMode::Splice),
        "read" => Ok(PreDumpMode::Read),
        _ => Err("expected 'splice' or 'read'".into()),
    }
}

pub fn network_lock(s: &str) -> Result<NetworkLock, String> {
    match s {
        "iptables" => Ok(NetworkLock::Iptables),
        "nftables" => Ok(NetworkLock::Nftables),
        "skip" | "none" => Ok(NetworkLock::Skip),
        _ => Err("expected 'iptables', 'nftables' or 'skip'".into()),
    }
}

pub fn file_validation(s: &str) -> Result<FileValidation, String> {
    match s {
        "filesize" => Ok(FileValidation::FileSize),
        "buildid" => Ok(FileValidation::BuildId),
        _ => Err("expected 'filesize' or 'buildid'".into()),
    }
}

/// `--manage-cgroups[=MODE]`; no value means `soft`.
pub fn cgroup_mode(s: &str) -> Result<CgroupMode, String> {
    match s {
        "" | "soft" => Ok(CgroupMode::Soft),
        "none" => Ok(CgroupMode::None),
        "props" => Ok(CgroupMode::Props),
        "full" => Ok(CgroupMode::Full),
        "strict" => Ok(CgroupMode::Strict),
        "ignore" => Ok(CgroupMode::Ignore),
        _ => Err("expected one of none, props, soft, full, strict, ignore".into()),
    }
}

/// `--empty-ns net`: the namespaces to create empty, as CLONE_NEW* flags.
pub fn empty_ns(s: &str) -> Result<u32, String> {
    match s {
        "net" => Ok(libc::CLONE_NEWNET as u32),
        _ => Err("only 'net' can be created empty".into()),
    }
}

/// `--join-ns NS:PID|FILE[,EXTRA]` → (ns, target, extra).
pub fn join_ns(s: &str) -> Result<(String, String, Option<String>), String> {
    let (ns, rest) = s
        .split_once(':')
        .filter(|(ns, rest)| !ns.is_empty() && !rest.is_empty())
        .ok_or("expected NS:PID or NS:FILE, optionally followed by ,OPTIONS")?;
    let (target, extra) = match rest.split_once(',') {
        Some((t, e)) => (t, Some(e.to_string())),
        None => (rest, None),
    };
    Ok((ns.to_string(), target.to_string(), extra))
}

/// `--cgroup-root [CONTROLLER:]/PATH` → (controller, path).
pub fn cgroup_root(s: &str) -> Result<(Option<String>, String), String> {
    match s.split_once(':') {
        Some((ctl, path)) if !path.is_empty() => Ok((Some(ctl.to_string()), path.to_string())),
        Some(_) => Err("expected [CONTROLLER:]PATH".into()),
        None if !s.is_empty() => Ok((None, s.to_string())),
        None => Err("expected [CONTROLLER:]PATH".into()),
    }
}

/// `-M/--ext-mount-map KEY:VALUE`, or `auto` to detect external mounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtMount {
    Auto,
    Map(String, String),
}

pub fn ext_mount(s: &str) -> Result<ExtMount, String> {
    if s == "auto" {
        return Ok(ExtMount::Auto);
    }
    s.split_once(':')
        .map(|(k, v)| ExtMount::Map(k.to_string(), v.to_string()))
        .ok_or_else(|| "expected KEY:VALUE or 'auto'".into())
}

/// `--veth-pair IN=OUT`.
pub fn veth_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(i, o)| !i.is_empty() && !o.is_empty())
        .map(|(i, o)| (i.to_string(), o.to_string()))
        .ok_or_else(|| "expected IN=OUT".into())
}

/// `--inherit-fd fd[N]:RESOURCE` → (N, RESOURCE).
pub fn inherit_fd(s: &str) -> Result<(i32, String), String> {
    const SYNTAX: &str = "expected fd[N]:RESOURCE";
    let rest = s.strip_prefix("fd[").ok_or(SYNTAX)?;
    let (num, rest) = rest.split_once(']').ok_or(SYNTAX)?;
    let key = rest
        .strip_prefix(':')
        .filter(|k| !k.is_empty())
        .ok_or(SYNTAX)?;
    let fd = num.parse::<i32>().ok().filter(|n| *n >= 0).ok_or(SYNTAX)?;
    Ok((fd, key.to_string()))
}

/// `-x/--ext-unix-sk[=INO,INO...]`: the optional list of socket inodes (CRIU's older form).
pub fn unix_sk_inodes(s: &str) -> Result<Vec<u64>, String> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| match p.parse::<u64>() {
            Ok(ino) if ino > 0 => Ok(ino),
            _ => Err("expected comma-separated socket inode numbers".to_string()),
        })
        .collect()
}

/// CPU capability bits of `--cpu-cap` (CRIU's CPU_CAP_*).
pub mod cpu_cap {
    pub const NONE: u32 = 0;
    pub const FPU: u32 = 1 << 0;
    pub const CPU: u32 = 1 << 1;
    pub const INS: u32 = 1 << 2;
    pub const IMAGE: u32 = 1 << 3;
    pub const ALL: u32 = FPU | CPU | INS;
    /// The value before any --cpu-cap.
    pub const DEFAULT: u32 = FPU | INS;
}

/// Applies one `--cpu-cap[=LIST]` to the current capability set. LIST is comma-separated words
/// among fpu, cpu, ins, all, none; `^` before a word removes it. No value means all.
pub fn apply_cpu_cap(current: u32, arg: &str) -> Result<u32, String> {
    use cpu_cap::*;
    if arg.is_empty() {
        return Ok(current | ALL | IMAGE);
    }
    let mut caps = current;
    for word in arg.split(',').filter(|w| !w.is_empty()) {
        let (inverse, name) = match word.strip_prefix('^') {
            Some(n) => (true, n),
            None => (false, word),
        };
        let bits = match name {
            "fpu" => FPU,
            "cpu" => CPU,
            "ins" => INS,
            "all" => ALL,
            "none" => {
                caps = if inverse { ALL } else { NONE };
                continue;
            }
            _ => return Err(format!("unknown CPU capability '{name}'")),
        };
        if inverse {
            caps &= !bits;
        } else {
            caps |= bits;
        }
    }
    if caps != NONE {
        caps |= IMAGE;
    }
    Ok(caps)
}

/// Clap value parser for `--cpu-cap`: checks the syntax, keeps the text (it is applied in order).
pub fn cpu_cap_syntax(s: &str) -> Result<String, String> {
    apply_cpu_cap(cpu_cap::DEFAULT, s).map(|_| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size("4096"), Ok(4096));
        assert_eq!(size("2K"), Ok(2048));
        assert_eq!(size("1M"), Ok(1 << 20));
        assert_eq!(size("3G"), Ok(3 << 30));
        assert!(size("M").is_err());
        assert!(size("1T").is_err());
        assert!(size("-1").is_err());
    }

    #[test]
    fn pids_and_ports() {
        assert_eq!(pid("42"), Ok(42));
        assert!(pid("0").is_err());
        assert!(pid("-1").is_err());
        assert!(pid("12abc").is_err());
        assert_eq!(port("27"), Ok(27));
        assert!(port("0").is_err());
        assert!(port("some-port").is_err());
    }

    #[test]
    fn verbosity_values() {
        assert_eq!(verbosity(""), Ok(Verbosity::Increase));
        assert_eq!(verbosity("4"), Ok(Verbosity::Set(4)));
        assert!(verbosity("loud").is_err());
    }

    #[test]
    fn join_ns_forms() {
        assert_eq!(
            join_ns("net:/proc/1/ns/net"),
            Ok(("net".into(), "/proc/1/ns/net".into(), None))
        );
        assert_eq!(
            join_ns("user:123,0,0"),
            Ok(("user".into(), "123".into(), Some("0,0".into())))
        );
        assert!(join_ns("invalidjoin-invalid").is_err());
        assert!(join_ns("net:").is_err());
    }

    #[test]
    fn mounts_veths_roots() {
        assert_eq!(ext_mount("auto"), Ok(ExtMount::Auto));
        assert_eq!(ext_mount("1:2"), Ok(ExtMount::Map("1".into(), "2".into())));
        assert!(ext_mount("nocolon").is_err());
        assert_eq!(veth_pair("eth0=veth1"), Ok(("eth0".into(), "veth1".into())));
        assert!(veth_pair("eth0").is_err());
        assert_eq!(cgroup_root("/new"), Ok((None, "/new".into())));
        assert_eq!(
            cgroup_root("cpu:/new"),
            Ok((Some("cpu".into()), "/new".into()))
        );
    }

    #[test]
    fn inherit_fd_forms() {
        assert_eq!(
            inherit_fd("fd[3]:pipe:[1234]"),
            Ok((3, "pipe:[1234]".into()))
        );
        assert_eq!(inherit_fd("fd[0]:tty[88:3]"), Ok((0, "tty[88:3]".into())));
        assert!(inherit_fd("fd[x]:a").is_err());
        assert!(inherit_fd("fd[3]:").is_err());
        assert!(inherit_fd("3:a").is_err());
    }

    #[test]
    fn cpu_caps() {
        use cpu_cap::*;
        assert_eq!(apply_cpu_cap(DEFAULT, ""), Ok(ALL | IMAGE));
        assert_eq!(apply_cpu_cap(DEFAULT, "none"), Ok(NONE));
        assert_eq!(apply_cpu_cap(DEFAULT, "^fpu"), Ok(INS | IMAGE));
        assert_eq!(apply_cpu_cap(NONE, "cpu,ins"), Ok(CPU | INS | IMAGE));
        assert_eq!(apply_cpu_cap(DEFAULT, "^none"), Ok(ALL | IMAGE));
        assert!(apply_cpu_cap(DEFAULT, "gpu").is_err());
    }

    #[test]
    fn enums() {
        assert_eq!(network_lock("none"), Ok(NetworkLock::Skip));
        assert!(network_lock("ipfw").is_err());
        assert_eq!(pre_dump_mode("read"), Ok(PreDumpMode::Read));
        assert!(pre_dump_mode("invalid").is_err());
        assert_eq!(cgroup_mode(""), Ok(CgroupMode::Soft));
        assert!(cgroup_mode("hard").is_err());
        assert_eq!(unix_sk_inodes("12,34"), Ok(vec![12, 34]));
        assert!(unix_sk_inodes("0").is_err());
        assert!(file_validation("filesizefilesize").is_err());
        assert_eq!(empty_ns("net"), Ok(libc::CLONE_NEWNET as u32));
        assert!(empty_ns("pid").is_err());
    }
}
