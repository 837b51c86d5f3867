//! Typed readers of /proc/PID/*. Parsing only: nothing here changes a task.

use std::fs;
use std::path::PathBuf;

use libc::pid_t;

use crate::error::{Error, Result};

fn read_string(path: &str) -> Result<String> {
    fs::read_to_string(path).map_err(|e| Error::io(format!("read {path}"), e))
}

fn parse_err(path: &str, what: &str) -> Error {
    Error::io(
        format!("parse {path}: {what}"),
        std::io::Error::from(std::io::ErrorKind::InvalidData),
    )
}

/// One line of /proc/PID/smaps with its VmFlags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    /// Path, "[heap]", "[stack]", "[vdso]"..., or empty for anonymous memory.
    pub name: String,
    /// Two-letter VmFlags from smaps ("gd", "dc", "nh"...).
    pub vm_flags: Vec<String>,
}

impl MapEntry {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    pub fn has_flag(&self, f: &str) -> bool {
        self.vm_flags.iter().any(|x| x == f)
    }

    pub fn is_file(&self) -> bool {
        self.inode != 0 || self.name.starts_with('/')
    }
}

/// The address space of `pid`, from /proc/PID/smaps (for the VmFlags).
pub fn maps(pid: pid_t) -> Result<Vec<MapEntry>> {
    let path = format!("/proc/{pid}/smaps");
    let text = read_string(&path)?;
    let mut out: Vec<MapEntry> = Vec::new();
    for line in text.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(last) = out.last_mut() {
                last.vm_flags = flags.split_whitespace().map(str::to_owned).collect();
            }
            continue;
        }
        let Some(first) = line.split_whitespace().next() else {
            continue;
        };
        // Header lines start with "start-end"; attribute lines with "Name:".
        if first.ends_with(':') || !first.contains('-') {
            continue;
        }
        out.push(parse_map_line(line).ok_or_else(|| parse_err(&path, line))?);
    }
    Ok(out)
}

/// The address space of `pid` from /proc/PID/maps: no VmFlags, but no page-table walk either
/// (smaps costs ~70 ms per populated GiB).
pub fn maps_quick(pid: pid_t) -> Result<Vec<MapEntry>> {
    let path = format!("/proc/{pid}/maps");
    let text = read_string(&path)?;
    text.lines()
        .map(|line| parse_map_line(line).ok_or_else(|| parse_err(&path, line)))
        .collect()
}

/// The address space of `pid` with VmFlags taken from `hint` (an smaps read earlier, while the
/// task ran) where a mapping is unchanged since; if any is not, smaps is read again.
pub fn maps_hinted(pid: pid_t, hint: &[MapEntry]) -> Result<Vec<MapEntry>> {
    let mut now = maps_quick(pid)?;
    for m in now.iter_mut() {
        let i = hint.partition_point(|h| h.start < m.start);
        match hint.get(i) {
            Some(h)
                if MapEntry {
                    vm_flags: Vec::new(),
                    ..h.clone()
                } == *m =>
            {
                m.vm_flags = h.vm_flags.clone()
            }
            _ => {
                log::debug!(
                    "pid {pid}: mapping {:#x}-{:#x} changed since smaps was read",
                    m.start,
                    m.end
                );
                return maps(pid);
            }
        }
    }
    Ok(now)
}

fn parse_map_line(line: &str) -> Option<MapEntry> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?.as_bytes();
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let dev = it.next()?;
    let inode = it.next()?.parse().ok()?;
    let name = it.next().unwrap_or("").trim_start().to_owned();
    let (s, e) = range.split_once('-')?;
    let (maj, min) = dev.split_once(':')?;
    if perms.len() < 4 {
        return None;
    }
    Some(MapEntry {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        shared: perms[3] == b's',
        offset,
        dev_major: u32::from_str_radix(maj, 16).ok()?,
        dev_minor: u32::from_str_radix(min, 16).ok()?,
        inode,
        name,
        vm_flags: Vec::new(),
    })
}

/// The fields of /proc/PID/stat we use (numbering as in proc(5)).
#[derive(Clone, Debug, Default)]
pub struct Stat {
    pub comm: String,
    pub state: char,
    pub ppid: pid_t,
    pub pgid: pid_t,
    pub sid: pid_t,
    pub tty_nr: i32,
    /// Foreground process group of the controlling terminal (-1: none).
    pub tpgid: pid_t,
    pub flags: u32,
    pub nice: i64,
    pub num_threads: i64,
    pub start_time: u64,
    pub start_code: u64,
    pub end_code: u64,
    pub start_stack: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    pub exit_code: i32,
}

pub fn stat(pid: pid_t, tid: Option<pid_t>) -> Result<Stat> {
    let path = match tid {
        Some(t) => format!("/proc/{pid}/task/{t}/stat"),
        None => format!("/proc/{pid}/stat"),
    };
    let text = read_string(&path)?;
    parse_stat(&text).ok_or_else(|| parse_err(&path, "malformed"))
}

fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_owned();
    // fields[0] is field 3 (state).
    let f: Vec<&str> = text[close + 2..].split_whitespace().collect();
    let n = |i: usize| -> Option<u64> { f.get(i - 3)?.parse::<u64>().ok() };
    let s = |i: usize| -> Option<i64> { f.get(i - 3)?.parse::<i64>().ok() };
    Some(Stat {
        comm,
        state: f.first()?.chars().next()?,
        ppid: s(4)? as pid_t,
        pgid: s(5)? as pid_t,
        sid: s(6)? as pid_t,
        tty_nr: s(7)? as i32,
        tpgid: s(8)? as pid_t,
        flags: n(9)? as u32,
        nice: s(19)?,
        num_threads: s(20)?,
        start_time: n(22)?,
        start_code: n(26)?,
        end_code: n(27)?,
        start_stack: n(28)?,
        start_data: n(45).unwrap_or(0),
        end_data: n(46).unwrap_or(0),
        start_brk: n(47).unwrap_or(0),
        arg_start: n(48).unwrap_or(0),
        arg_end: n(49).unwrap_or(0),
        env_start: n(50).unwrap_or(0),
        env_end: n(51).unwrap_or(0),
        exit_code: s(52).unwrap_or(0) as i32,
    })
}

/// The fields of /proc/PID/status we use.
#[derive(Clone, Debug, Default)]
pub struct Status {
    pub state: char,
    pub tgid: pid_t,
    pub ppid: pid_t,
    pub tracer_pid: pid_t,
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    pub umask: u32,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
    pub seccomp: u32,
    pub sig_pnd: u64,
    pub shd_pnd: u64,
    pub sig_blk: u64,
    pub sig_ign: u64,
    pub sig_cgt: u64,
    /// NSpid: the pid in each pid namespace, outermost first.
    pub ns_pids: Vec<pid_t>,
}

pub fn status(pid: pid_t, tid: Option<pid_t>) -> Result<Status> {
    let path = match tid {
        Some(t) => format!("/proc/{pid}/task/{t}/status"),
        None => format!("/proc/{pid}/status"),
    };
    let text = read_string(&path)?;
    let mut st = Status::default();
    for line in text.lines() {
        let Some((key, val)) = line.split_once(':') else {
            continue;
        };
        let val = val.trim();
        let hex = || u64::from_str_radix(val, 16).unwrap_or(0);
        let ids = || -> [u32; 4] {
            let mut a = [0u32; 4];
            for (i, v) in val.split_whitespace().take(4).enumerate() {
                a[i] = v.parse().unwrap_or(0);
            }
            a
        };
        match key {
            "State" => st.state = val.chars().next().unwrap_or('?'),
            "Tgid" => st.tgid = val.parse().unwrap_or(0),
            "PPid" => st.ppid = val.parse().unwrap_or(0),
            "TracerPid" => st.tracer_pid = val.parse().unwrap_or(0),
            "Uid" => st.uids = ids(),
            "Gid" => st.gids = ids(),
            "Groups" => {
                st.groups = val
                    .split_whitespace()
                    .filter_map(|g| g.parse().ok())
                    .collect()
            }
            "Umask" => st.umask = u32::from_str_radix(val, 8).unwrap_or(0o22),
            "CapInh" => st.cap_inh = hex(),
            "CapPrm" => st.cap_prm = hex(),
            "CapEff" => st.cap_eff = hex(),
            "CapBnd" => st.cap_bnd = hex(),
            "CapAmb" => st.cap_amb = hex(),
            "NoNewPrivs" => st.no_new_privs = val == "1",
            "Seccomp" => st.seccomp = val.parse().unwrap_or(0),
            "SigPnd" => st.sig_pnd = hex(),
            "ShdPnd" => st.shd_pnd = hex(),
            "SigBlk" => st.sig_blk = hex(),
            "SigIgn" => st.sig_ign = hex(),
            "SigCgt" => st.sig_cgt = hex(),
            "NSpid" => {
                st.ns_pids = val
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            }
            _ => {}
        }
    }
    Ok(st)
}

/// Thread ids of `pid`, sorted, the leader first.
pub fn threads(pid: pid_t) -> Result<Vec<pid_t>> {
    let path = format!("/proc/{pid}/task");
    let mut v: Vec<pid_t> = fs::read_dir(&path)
        .map_err(|e| Error::io(format!("read {path}"), e))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    if let Some(i) = v.iter().position(|&t| t == pid) {
        v.remove(i);
        v.insert(0, pid);
    }
    Ok(v)
}

/// Children of every thread of `pid`.
pub fn children(pid: pid_t) -> Result<Vec<pid_t>> {
    let mut out = Vec::new();
    for tid in threads(pid)? {
        let path = format!("/proc/{pid}/task/{tid}/children");
        match fs::read_to_string(&path) {
            Ok(t) => out.extend(t.split_whitespace().filter_map(|p| p.parse::<pid_t>().ok())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("read {path}"), e)),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

pub fn readlink(path: &str) -> Result<PathBuf> {
    fs::read_link(path).map_err(|e| Error::io(format!("readlink {path}"), e))
}

pub fn auxv(pid: pid_t) -> Result<Vec<u64>> {
    let path = format!("/proc/{pid}/auxv");
    let bytes = fs::read(&path).map_err(|e| Error::io(format!("read {path}"), e))?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
        .collect())
}

pub fn personality(pid: pid_t) -> Result<u32> {
    let path = format!("/proc/{pid}/personality");
    let t = read_string(&path)?;
    u32::from_str_radix(t.trim(), 16).map_err(|_| parse_err(&path, "not hex"))
}

/// An open fd of a task and what /proc says about it.
#[derive(Clone, Debug, Default)]
pub struct FdInfo {
    pub fd: i32,
    pub pos: u64,
    /// open flags in octal in fdinfo, including O_CLOEXEC as set on the fd.
    pub flags: u32,
    pub mnt_id: i32,
    pub ino: u64,
    /// The rest of fdinfo (eventfd-count, tfd, inotify lines...).
    pub extra: Vec<(String, String)>,
}

pub fn fds(pid: pid_t) -> Result<Vec<i32>> {
    let path = format!("/proc/{pid}/fd");
    let mut v: Vec<i32> = fs::read_dir(&path)
        .map_err(|e| Error::io(format!("read {path}"), e))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// Every (pid, fd, link target) of every process but those in `except`: who else holds a pipe
/// or socket. Processes and fds that vanish (or cannot be read) while we look are skipped.
pub fn fd_links_of_others(except: &[pid_t]) -> Result<Vec<(pid_t, i32, String)>> {
    let mut out = Vec::new();
    let procs = fs::read_dir("/proc").map_err(|e| Error::io("read /proc", e))?;
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<pid_t>().ok()) else {
            continue;
        };
        if except.contains(&pid) {
            continue;
        }
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for f in fds.flatten() {
            let Some(fd) = f.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if let Ok(target) = fs::read_link(f.path()) {
                out.push((pid, fd, target.to_string_lossy().into_owned()));
            }
        }
    }
    Ok(out)
}

pub fn fdinfo(pid: pid_t, fd: i32) -> Result<FdInfo> {
    let path = format!("/proc/{pid}/fdinfo/{fd}");
    let text = read_string(&path)?;
    let mut info = FdInfo {
        fd,
        ..Default::default()
    };
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "pos" => info.pos = v.parse().unwrap_or(0),
            "flags" => info.flags = u32::from_str_radix(v, 8).unwrap_or(0),
            "mnt_id" => info.mnt_id = v.parse().unwrap_or(0),
            "ino" => info.ino = v.parse().unwrap_or(0),
            _ => info.extra.push((k.to_owned(), v.to_owned())),
        }
    }
    Ok(info)
}

/// A POSIX timer from /proc/PID/timers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PosixTimer {
    pub id: i32,
    pub signo: i32,
    pub sigval: u64,
    /// "signal", "thread", "none" (+ the thread for SIGEV_THREAD_ID).
    pub notify: String,
    pub notify_tid: pid_t,
    pub clock_id: i32,
}

pub fn posix_timers(pid: pid_t) -> Result<Vec<PosixTimer>> {
    let path = format!("/proc/{pid}/timers");
    let text = read_string(&path)?;
    let mut out: Vec<PosixTimer> = Vec::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "ID" => out.push(PosixTimer {
                id: v.parse().map_err(|_| parse_err(&path, line))?,
                ..Default::default()
            }),
            "signal" => {
                let t = out.last_mut().ok_or_else(|| parse_err(&path, line))?;
                let (sig, val) = v.split_once('/').ok_or_else(|| parse_err(&path, line))?;
                t.signo = sig.parse().map_err(|_| parse_err(&path, line))?;
                t.sigval = u64::from_str_radix(val, 16).map_err(|_| parse_err(&path, line))?;
            }
            "notify" => {
                let t = out.last_mut().ok_or_else(|| parse_err(&path, line))?;
                let (how, who) = v.split_once('/').unwrap_or((v, ""));
                t.notify = how.to_owned();
                t.notify_tid = who
                    .rsplit('.')
                    .next()
                    .and_then(|x| x.parse().ok())
                    .unwrap_or(0);
            }
            "ClockID" => {
                let t = out.last_mut().ok_or_else(|| parse_err(&path, line))?;
                t.clock_id = v.parse().map_err(|_| parse_err(&path, line))?;
            }
            _ => {}
        }
    }
    Ok(out)
}

pub fn read_trimmed(pid: pid_t, file: &str) -> Result<String> {
    Ok(read_string(&format!("/proc/{pid}/{file}"))?
        .trim()
        .to_owned())
}

/// Seconds the system has been up, in CRIU's unit for inventory.dump_uptime (microseconds).
pub fn uptime_us() -> Result<u64> {
    // /proc/uptime's clock, to the microsecond: two iterations a few ms apart must differ.
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map_err(|e| Error::sys("clock_gettime(CLOCK_BOOTTIME)", e))?;
    Ok(ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1000)
}

/// One line of /proc/PID/mountinfo: mount id, device (major, minor), root within the
/// filesystem, mount point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub mnt_id: u32,
    pub major: u32,
    pub minor: u32,
    pub root: String,
    pub mount_point: String,
}

/// Undoes mountinfo's octal escapes ("\040" for a space).
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_mount_line(line: &str) -> Option<Mount> {
    let mut w = line.split_whitespace();
    let mnt_id = w.next()?.parse().ok()?;
    let _parent = w.next()?;
    let (major, minor) = w.next()?.split_once(':')?;
    let root = unescape_octal(w.next()?);
    let mount_point = unescape_octal(w.next()?);
    Some(Mount {
        mnt_id,
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        root,
        mount_point,
    })
}

pub fn mountinfo(pid: pid_t) -> Result<Vec<Mount>> {
    let path = format!("/proc/{pid}/mountinfo");
    let text = read_string(&path)?;
    text.lines()
        .map(|l| parse_mount_line(l).ok_or_else(|| parse_err(&path, l)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_line() {
        let m = parse_mount_line("27 1 254:0 / /a\\040b rw,relatime shared:1 - ext4 /dev/vda rw")
            .unwrap();
        assert_eq!(
            m,
            Mount {
                mnt_id: 27,
                major: 254,
                minor: 0,
                root: "/".into(),
                mount_point: "/a b".into(),
            }
        );
        assert!(mountinfo(std::process::id() as pid_t)
            .unwrap()
            .iter()
            .any(|m| m.mount_point == "/"));
    }

    #[test]
    fn map_line() {
        let m = parse_map_line(
            "559d65f12000-559d65f14000 r-xp 00002000 fe:00 247030                     /usr/bin/cat",
        )
        .unwrap();
        assert_eq!(
            (m.start, m.end, m.offset, m.inode),
            (0x559d65f12000, 0x559d65f14000, 0x2000, 247030)
        );
        assert!(m.read && !m.write && m.exec && !m.shared);
        assert_eq!((m.dev_major, m.dev_minor), (0xfe, 0));
        assert_eq!(m.name, "/usr/bin/cat");
        let a = parse_map_line(
            "7f0000000000-7f0000001000 rw-s 00000000 00:01 1234 /dev/zero (deleted)",
        )
        .unwrap();
        assert!(a.shared);
        assert_eq!(a.name, "/dev/zero (deleted)");
    }

    #[test]
    fn own_maps_and_stat() {
        let me = std::process::id() as pid_t;
        let maps = maps(me).unwrap();
        assert!(maps.iter().any(|m| m.name == "[stack]" && m.has_flag("gd")));
        let st = stat(me, None).unwrap();
        assert!(st.start_code > 0 && st.start_brk > 0 && st.arg_start < st.arg_end);
        let status = status(me, None).unwrap();
        assert_eq!(status.tgid, me);
    }

    #[test]
    fn stat_with_parens_in_comm() {
        let s = parse_stat("42 (a) b)) S 1 42 42 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 100 0 0 0 10 20 30 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 1 2 3 4 5 6 7 8 0").unwrap();
        assert_eq!(s.comm, "a) b)");
        assert_eq!(
            (s.ppid, s.start_code, s.end_code, s.start_stack),
            (1, 10, 20, 30)
        );
        assert_eq!((s.start_data, s.env_end, s.exit_code), (1, 7, 8));
    }
}
