//! Event fds and special files through dump and restore of a real process tree
//! (ctests/workloads/evfds.c, which checks each one from inside): epoll, signalfd, timerfd,
//! inotify, fanotify, pidfds, deleted files open and mapped, O_PATH and /proc files, flock,
//! POSIX and OFD locks and a lease, a packet-mode pipe. Also: the images as Debian's crit reads them, locks
//! refused without --file-locks, --ghost-limit, and every unsupported fd of a task reported in
//! one error while the task runs on.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value as Json;

const T: Duration = Duration::from_secs(30);

/// Kills the task when the test ends, also when it fails.
fn start_evfds(s: &Scratch, extra: &[&str]) -> (KillOnDrop, i32) {
    let bin = workload("evfds");
    let mut args = vec![s.dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let child = KillOnDrop(s.spawn(&bin, &args));
    let pid: i32 = s.wait_file("ready", T).trim().parse().unwrap();
    assert_eq!(pid as u32, child.0.id());
    (child, pid)
}

/// The workload's "fds" file: name → number.
fn names(s: &Scratch) -> HashMap<String, i64> {
    s.read("fds")
        .lines()
        .map(|l| {
            let (name, fd) = l.split_once(' ').unwrap();
            (name.to_owned(), fd.parse().unwrap())
        })
        .collect()
}

/// The locks /proc/locks shows for `pid` (POSIX and flock locks carry the holder's pid; OFD
/// locks show -1).
fn locks_of(pid: i32) -> Vec<String> {
    std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .filter(|l| l.split_whitespace().nth(4) == Some(&pid.to_string()))
        .map(|l| l.split_whitespace().nth(1).unwrap().to_owned())
        .collect()
}

#[test]
fn dump_kill_restore_checks_every_kind() {
    become_subreaper();
    let s = Scratch::new("evfds");
    let (mut child, pid) = start_evfds(&s, &[]);
    let fds = names(&s);
    let tree_child = fds["child"] as i32;
    s.dump(pid, &["--file-locks"]);
    assert!(
        !child.0.wait().unwrap().success(),
        "the dump kills the tree"
    );
    // Its child was killed too and came to us (subreaper): reaped, its pid is free.
    wait_exit(tree_child, T);
    check_images_with_crit(&s, pid);

    assert_eq!(s.restore(&[]), pid);
    // The locks are held again, by the restored task, as another process sees them.
    let mut held = locks_of(pid);
    held.sort();
    assert_eq!(held, ["FLOCK", "LEASE", "POSIX"], "locks held by pid {pid}");
    // Its signalfd must find SIGUSR2.
    assert!(kill(pid, libc::SIGUSR2));
    s.verify(pid, "the restored task");
}

#[test]
fn leave_running_then_restore() {
    become_subreaper();
    let s = Scratch::new("evfds-leave");
    let (mut child, pid) = start_evfds(&s, &[]);
    s.dump(pid, &["--leave-running", "--file-locks"]);
    assert_running_untraced(pid);
    // The dump changed nothing: the original passes every check (and its child exits).
    assert!(kill(pid, libc::SIGUSR2));
    s.original_passes(&mut child.0);
    let _ = std::fs::remove_file(s.path("result"));
    // The files the original created meanwhile are in the way of nothing; its ghost files are
    // gone with it, so only the images hold them now.
    assert_eq!(s.restore(&[]), pid);
    // Its signalfd must find SIGUSR2.
    assert!(kill(pid, libc::SIGUSR2));
    s.verify(pid, "the restored task");
}

// ---------------------------------------------------------------------------------------------
// Refusals

/// Runs a dump that must fail; returns its error output, after checking that no
/// complete-looking image was left.
fn refused_dump(s: &Scratch, pid: i32, extra: &[&str]) -> String {
    let pid_s = pid.to_string();
    let mut args = vec!["dump", "-t", &pid_s, "-D", "img", "-o", "dump.log"];
    args.extend_from_slice(extra);
    let out = s.criu(&args);
    assert!(!out.status.success(), "the dump must fail");
    assert!(!s.img().join("inventory.img").exists());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Without --file-locks, a task holding locks is refused, each lock named with its fd; the
/// task carries on untouched (it then passes its own checks, locks included).
#[test]
fn locks_need_file_locks() {
    become_subreaper();
    let s = Scratch::new("evfds-nolocks");
    let (mut child, pid) = start_evfds(&s, &[]);
    let fds = names(&s);
    let err = refused_dump(&s, pid, &[]);
    for (name, kind) in [
        ("lk_flock", "flock"),
        ("lk_posix", "POSIX"),
        ("lk_ofd", "OFD"),
        ("lk_lease", "lease"),
    ] {
        let want = format!("fd {}: ", fds[name]);
        let line = err
            .lines()
            .find(|l| l.contains(&want))
            .unwrap_or_else(|| panic!("{name} (fd {}) is named: {err}", fds[name]));
        assert!(
            line.contains(&format!("holds a {kind} lock")) && line.contains("--file-locks"),
            "{line}"
        );
    }
    assert!(err.contains(&format!("pid {pid}")), "{err}");
    assert_running_untraced(pid);
    assert!(kill(pid, libc::SIGUSR2));
    assert!(kill(pid, libc::SIGUSR1));
    assert_eq!(
        child.0.wait().unwrap().code(),
        Some(0),
        "the task failed its checks after the refused dump: {}",
        s.read("result")
    );
}

/// A deleted file allocating more than --ghost-limit is refused with its name, size and the
/// option to raise; the task is left as it was.
#[test]
fn ghost_limit_is_enforced() {
    become_subreaper();
    let s = Scratch::new("evfds-ghostlimit");
    let (mut child, pid) = start_evfds(&s, &["nolocks"]);
    let fds = names(&s);
    let allocated = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/{pid}/fd/{}", fds["ghost"]))
            .unwrap()
            .blocks()
            * 512
    };
    assert!(
        allocated > 10 << 10,
        "the workload's ghost is bigger than the limit we set"
    );
    let err = refused_dump(&s, pid, &["--ghost-limit", "10K"]);
    let want = format!(
        "fd {}: deleted file {}/ghost holds {allocated} bytes, more than the ghost limit of {} \
         bytes (raise it with --ghost-limit)",
        fds["ghost"],
        s.dir.display(),
        10 << 10
    );
    assert!(err.contains(&want), "wanted {want:?} in: {err}");
    // The only-mapped deleted file (8 KiB) is within the limit: not named.
    assert!(!err.contains("ghostmap"), "{err}");
    assert_running_untraced(pid);
    assert!(kill(pid, libc::SIGUSR2));
    assert!(kill(pid, libc::SIGUSR1));
    assert_eq!(
        child.0.wait().unwrap().code(),
        Some(0),
        "{}",
        s.read("result")
    );
}

fn python() -> &'static str {
    ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("python3")
}

/// Several things no dump can take, in one task: all of them are reported in one error, each
/// with its fd and what it is, and the task runs on (its heartbeat file keeps changing).
#[test]
fn every_unsupported_fd_is_listed_at_once() {
    become_subreaper();
    let s = Scratch::new("evfds-list");
    let script = "import os, ctypes, time\n\
         os.setsid()\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         uffd = libc.syscall(323, 0)\n\
         mfd = os.memfd_create('scratch', os.MFD_HUGETLB)\n\
         pfd = os.pidfd_open(os.getppid())\n\
         big = open('big', 'wb+')\n\
         big.write(os.urandom(64 << 10)); big.flush(); os.unlink('big')\n\
         open('fds', 'w').write(f'{uffd} {mfd} {pfd} {big.fileno()}')\n\
         n = 0\n\
         while True:\n    \
         n += 1; open('beat', 'w').write(str(n)); time.sleep(0.005)\n";
    let child = KillOnDrop(s.spawn(Path::new(python()), &["-c", script]));
    let pid = child.0.id() as i32;
    let fds: Vec<i32> = s
        .wait_file("fds", T)
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert!(
        fds.iter().all(|&f| f > 0),
        "the workload made its fds: {fds:?}"
    );
    let err = refused_dump(&s, pid, &["--ghost-limit", "16K"]);
    assert!(err.contains("cannot dump 4 resources"), "{err}");
    let me = std::process::id();
    for (fd, says) in [
        (
            fds[0],
            "anon_inode:[userfaultfd] (not supported yet)".to_owned(),
        ),
        (
            fds[1],
            "memfd:scratch is a hugetlb memfd (MFD_HUGETLB): not supported".to_owned(),
        ),
        (
            fds[2],
            format!("pidfd of process {me}, which is not being dumped"),
        ),
        (fds[3], "more than the ghost limit".to_owned()),
    ] {
        let want = format!("pid {pid}: cannot dump fd {fd}: ");
        let line = err
            .lines()
            .find(|l| l.contains(&want))
            .unwrap_or_else(|| panic!("fd {fd} is listed: {err}"));
        assert!(line.contains(&says), "fd {fd} says {says:?}: {line}");
    }
    assert_running_untraced(pid);
    let beat = || s.read("beat").trim().parse::<u64>().ok();
    let t0 = std::time::Instant::now();
    let first = loop {
        if let Some(b) = beat() {
            break b;
        }
        assert!(t0.elapsed() < T, "no heartbeat");
        std::thread::sleep(Duration::from_millis(5));
    };
    while beat().is_none_or(|b| b <= first) {
        assert!(t0.elapsed() < T, "the task stopped making progress");
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------------
// The images, as crit reads them

/// crit decodes every image of the new kinds, and their fields say what the workload set up.
/// (crit 3.17 predates pidfds: it decodes their entries without the pidfd member.)
fn check_images_with_crit(s: &Scratch, pid: i32) {
    let img = s.img();
    let fds = names(s);
    let ids = crit_decode(&img.join(format!("ids-{pid}.img")));
    let files_id = entries(&ids)[0]["files_id"].as_u64().unwrap();
    let fdinfo = crit_decode(&img.join(format!("fdinfo-{files_id}.img")));
    let id_of_fd: HashMap<i64, u64> = entries(&fdinfo)
        .iter()
        .map(|e| (e["fd"].as_i64().unwrap(), e["id"].as_u64().unwrap()))
        .collect();
    let type_of_fd: HashMap<i64, String> = entries(&fdinfo)
        .iter()
        .map(|e| (e["fd"].as_i64().unwrap(), e["type"].to_string()))
        .collect();
    let files = crit_decode(&img.join("files.img"));
    let by_id: HashMap<u64, &Json> = entries(&files)
        .iter()
        .map(|e| (e["id"].as_u64().unwrap(), e))
        .collect();
    let file = |name: &str| -> &Json { by_id[&id_of_fd[&fds[name]]] };

    // epoll: every watch with its data; the moved one under the number it lives at now.
    let ep = &file("ep")["epfd"];
    assert_eq!(file("ep")["type"], "EVENTPOLL");
    let watches: HashMap<u64, i64> = ep["tfd"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["data"].as_u64().unwrap(), t["tfd"].as_i64().unwrap()))
        .collect();
    let mut datas: Vec<u64> = watches.keys().copied().collect();
    datas.sort();
    assert_eq!(
        datas,
        [0x1111, 0x2222, 0x3333, 0x4444, 0x5555, 0x6666],
        "{ep}"
    );
    assert_eq!(watches[&0x1111], fds["ep_pipe_r"]);
    assert_eq!(watches[&0x4444], fds["ep_inner"]);
    assert_eq!(watches[&0x5555], fds["ep_moved"], "the moved watch");
    assert_eq!(watches[&0x6666], fds["pidfd_child"]);

    // signalfd: SIGUSR2 and SIGRTMIN+1 (glibc's SIGRTMIN is 34).
    let sg = &file("sfd")["sgfd"];
    assert_eq!(sg["sigmask"], (1u64 << 11) | (1u64 << 34));

    // timerfds.
    let t = &file("t_long")["tfd"];
    assert_eq!(
        (&t["clockid"], &t["isec"], &t["insec"]),
        (&Json::from(1), &Json::from(7), &Json::from(500_000_000))
    );
    assert!(t["vsec"].as_u64().unwrap() <= 59);
    assert!(file("t_periodic")["tfd"]["ticks"].as_u64().unwrap() >= 1);
    let abs = &file("t_abs")["tfd"];
    assert_eq!(
        (&abs["clockid"], &abs["settime_flags"]),
        (&Json::from(0), &Json::from(1))
    );
    assert!(abs["vsec"].as_u64().unwrap() > 3500);
    let fired = &file("t_fired")["tfd"];
    assert_eq!(
        (&fired["clockid"], &fired["ticks"]),
        (&Json::from(7), &Json::from(1))
    );

    // inotify: the watch numbers and paths to the watched inodes.
    let wds: HashMap<i64, String> = file("inotify")["ify"]["wd"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["wd"].as_i64().unwrap(),
                w["f_handle"]["path"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(wds.len(), 2, "{wds:?}");
    assert_eq!(wds[&fds["wd_dir"]], format!("{}/watched", s.dir.display()));
    assert_eq!(wds[&fds["wd_file"]], format!("{}/wfile", s.dir.display()));

    // fanotify: one inode mark with its mask.
    let marks = file("fanotify")["ffy"]["mark"].as_array().unwrap();
    assert_eq!(marks.len(), 1);
    assert_eq!(marks[0]["type"], "INODE");
    assert_eq!(marks[0]["mask"], 0x2 | 0x8, "FAN_MODIFY | FAN_CLOSE_WRITE");
    assert_eq!(
        marks[0]["ie"]["f_handle"]["path"],
        format!("{}/fwatched", s.dir.display())
    );

    // pidfds: crit 3.17 does not know their type (20), but decodes their entries.
    assert!(type_of_fd.contains_key(&fds["pidfd_child"]));

    // The deleted file: a regular-file entry under its old name, remapped to a ghost file kept
    // in chunks (the hole skipped).
    let ghost = file("ghost");
    assert_eq!(ghost["reg"]["name"], format!("{}/ghost", s.dir.display()));
    let remaps = crit_decode(&img.join("remap-fpath.img"));
    let remap = entries(&remaps)
        .iter()
        .find(|r| r["orig_id"] == ghost["id"])
        .expect("the ghost's remap");
    assert_eq!(remap["remap_type"], "GHOST");
    let g = crit_decode(&img.join(format!(
        "ghost-file-{:x}.img",
        remap["remap_id"].as_u64().unwrap()
    )));
    let ge = entries(&g);
    assert_eq!(ge[0]["mode"], 0o100640);
    assert_eq!(ge[0]["size"], (64 << 10) + 4);
    assert_eq!(ge[0]["chunks"], true);
    let chunks: Vec<(u64, u64)> = ge[1..]
        .iter()
        .map(|c| (c["off"].as_u64().unwrap(), c["len"].as_u64().unwrap()))
        .collect();
    assert_eq!(chunks, [(0, 8192), (64 << 10, 4)], "data, a hole, the tail");
    let head = unbase64(ge[1]["extra"].as_str().unwrap());
    assert_eq!(head[0], 31, "pattern(1, 0) of the workload");
    assert_eq!(&unbase64(ge[2]["extra"].as_str().unwrap())[..4], b"tail");

    // O_PATH fds and /proc.
    assert_eq!(
        file("opath_link")["reg"]["flags"].as_u64().unwrap() & libc::O_PATH as u64,
        libc::O_PATH as u64
    );
    assert_eq!(file("opath_link")["reg"]["mode"], 0o120777);
    assert_eq!(
        file("proc_status")["reg"]["name"],
        format!("/proc/{pid}/status")
    );

    // File locks, under the fds that hold them.
    let locks = crit_decode(&img.join("filelocks.img"));
    let mut got: Vec<(i64, u64, u64, i64, i64)> = entries(&locks)
        .iter()
        .map(|l| {
            (
                l["fd"].as_i64().unwrap(),
                l["flag"].as_u64().unwrap(),
                l["type"].as_u64().unwrap(),
                l["start"].as_i64().unwrap(),
                l["len"].as_i64().unwrap(),
            )
        })
        .collect();
    got.sort();
    let mut want = vec![
        (fds["lk_flock"], 2, 1, 0, 0),
        (fds["lk_posix"], 1, 1, 10, 20),
        (fds["lk_ofd"], 4, 0, 0, 0),
        (fds["lk_lease"], 8, 0, 0, 0),
    ];
    want.sort();
    assert_eq!(got, want, "(fd, FL_*, F_*LCK, start, len)");
    assert!(entries(&locks).iter().all(|l| l["pid"] == pid));

    // The packet-mode pipe: its 108 bytes (the packet sizes are a field crit does not know).
    let pkt = file("pkt_r");
    let pipes = crit_decode(&img.join("pipes-data.img"));
    let data = entries(&pipes)
        .iter()
        .find(|p| p["pipe_id"] == pkt["pipe"]["pipe_id"])
        .expect("the packet pipe's data");
    assert_eq!(data["bytes"], 108);
    assert_eq!(
        file("pkt_w")["pipe"]["flags"].as_u64().unwrap() & libc::O_DIRECT as u64,
        libc::O_DIRECT as u64
    );
}
