//! Lazy restore from images on disk (`criu lazy-pages` + `criu restore --lazy-pages`), with a
//! real workload (ctests/workloads/lazy.c) that checks its memory from inside: 256 MiB
//! checksummed, and while its pages still arrive it forks, mremaps a region, munmaps another
//! and empties a third with MADV_DONTNEED. Also: restore without a daemon fails cleanly, and a
//! daemon killed mid-transfer takes the restored task with it (never zeros in its place).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const T: Duration = Duration::from_secs(120);

/// Kills a process when the test ends, also when it fails.
/// Starts the workload with `mib` MiB and dumps it (which ends it); returns its pid.
fn dump_workload(s: &Scratch, mib: u32) -> i32 {
    let bin = workload("lazy");
    let mib = mib.to_string();
    let mut child = s.spawn(&bin, &[s.dir.to_str().unwrap(), &mib]);
    let pid: i32 = s.wait_file("ready", T).trim().parse().unwrap();
    assert_eq!(pid as u32, child.id());
    s.dump(pid, &[]);
    assert_eq!(child.wait().unwrap().code(), None, "the dump ends the task");
    std::fs::remove_file(s.path("ready")).unwrap();
    pid
}

/// `criu lazy-pages -D img`, once its socket is there.
fn start_daemon(s: &Scratch) -> KillOnDrop {
    start_daemon_in(s, "img")
}

fn start_daemon_in(s: &Scratch, dir: &str) -> KillOnDrop {
    let child = Command::new(CRIU)
        .args(["lazy-pages", "-D", dir, "-o", "lazy.log", "-v4"])
        .current_dir(&s.dir)
        .env_remove("CRIU_CONFIG_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run criu lazy-pages");
    let sock = s.path(dir).join("lazy-pages.socket");
    let t0 = Instant::now();
    while !sock.exists() {
        assert!(t0.elapsed() < T, "no socket in {dir}");
        std::thread::sleep(Duration::from_millis(2));
    }
    KillOnDrop(child)
}

fn wait_child(c: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            return st;
        }
        assert!(t0.elapsed() < limit, "criu lazy-pages did not end");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn pid_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn lazy_restore_follows_fork_mremap_munmap_and_dontneed() {
    become_subreaper();
    let s = Scratch::new("lazy");
    dump_workload(&s, 256);
    let mut daemon = start_daemon(&s);
    let pid = s.restore(&["--lazy-pages"]);
    // At once: the task's memory is still on its way.
    assert!(kill(pid, libc::SIGUSR1));
    let code = wait_exit(pid, T);
    assert_eq!(
        code,
        0,
        "restored task failed its checks (exit {code}): {}\nlazy log: {}",
        s.read("result"),
        s.log("lazy.log")
    );
    let st = wait_child(&mut daemon.0, T);
    let log = s.log("lazy.log");
    assert!(st.success(), "lazy-pages failed ({st}): {log}");
    assert!(log.contains("all pages delivered"), "{log}");
    eprintln!("result: {}", s.read("result"));
    eprintln!(
        "{}",
        log.lines()
            .filter(|l| l.contains("lazy"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Restore itself filled none of the 256 MiB.
    let restore_log = s.log("restore.log");
    assert!(restore_log.contains("lazy ranges handed"), "{restore_log}");
}

#[test]
fn lazy_restore_without_daemon_fails_and_leaves_nothing() {
    become_subreaper();
    let s = Scratch::new("lazy-nodaemon");
    let pid = dump_workload(&s, 64);
    let out = s.criu(&[
        "restore",
        "-d",
        "-D",
        "img",
        "-o",
        "restore.log",
        "--lazy-pages",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string() + &s.log("restore.log");
    assert!(err.contains("no lazy-pages daemon"), "{err}");
    assert!(!pid_exists(pid), "a restored task was left behind");
    // The same images restore lazily once a daemon is there.
    let mut daemon = start_daemon(&s);
    let pid = s.restore(&["--lazy-pages"]);
    assert!(kill(pid, libc::SIGUSR1));
    assert_eq!(wait_exit(pid, T), 0, "{}", s.read("result"));
    assert!(wait_child(&mut daemon.0, T).success());
}

#[test]
fn daemon_killed_mid_transfer_kills_the_restored_task() {
    become_subreaper();
    let s = Scratch::new("lazy-kill");
    dump_workload(&s, 256);
    let mut daemon = start_daemon(&s);
    let guard = daemon.0.id() as i32;
    let pid = s.restore(&["--lazy-pages"]);
    // The server is the guard's only child.
    let server: i32 = std::fs::read_to_string(format!("/proc/{guard}/task/{guard}/children"))
        .unwrap()
        .split_whitespace()
        .next()
        .expect("the lazy-pages server runs")
        .parse()
        .unwrap();
    assert!(kill(server, libc::SIGKILL));
    // The task is killed, whatever it was doing: it never finishes its checks.
    assert!(kill(pid, libc::SIGUSR1));
    let code = wait_exit(pid, T);
    assert_eq!(code, 128 + libc::SIGKILL, "{}", s.read("result"));
    assert!(s.read("result").is_empty(), "{}", s.read("result"));
    let st = wait_child(&mut daemon.0, T);
    assert!(!st.success());
    let log = s.log("lazy.log");
    assert!(
        log.contains(&format!(
            "page server (pid {server}) was killed by signal 9"
        )) && log.contains(&format!("{pid}")),
        "{log}"
    );
}

/// A tree of six processes (two sessions, a zombie; ctests/workloads/tree.c) restored with
/// --lazy-pages: memory a child inherited from its parent is restored eagerly on both sides (here
/// that is all of it), and the daemon, given nothing, ends with the restore.
#[test]
fn lazy_restore_of_a_process_tree() {
    become_subreaper();
    let s = Scratch::new("lazy-tree");
    let bin = workload("tree");
    let mut child = s.spawn(&bin, &[s.dir.to_str().unwrap()]);
    let ready: Vec<i32> = s
        .wait_file("ready", T)
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let root = ready[0];
    let pids: Vec<i32> = ["R", "A", "B", "A1", "B1", "Z"]
        .iter()
        .map(|n| {
            s.read(&format!("ids.{n}"))
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    s.dump(root, &[]);
    let _ = child.wait();
    for &p in &pids[1..] {
        let _ = wait_exit(p, T);
    }
    let mut daemon = start_daemon(&s);
    assert_eq!(s.restore(&["--lazy-pages"]), root);
    for &p in &pids[..5] {
        assert!(kill(p, libc::SIGUSR1));
    }
    assert_eq!(
        wait_exit(root, T),
        0,
        "a lazily restored process failed its checks"
    );
    let st = wait_child(&mut daemon.0, T);
    let log = s.log("lazy.log");
    assert!(st.success(), "{log}");
}

/// Pre-copy, then post-copy: a pre-dump while the task runs, a dump that holds only what changed
/// since, and a lazy restore from it. The pages of the pre-dump are restored before the task runs;
/// only those of the last dump (a few: the task sat idle) come through the daemon.
#[test]
fn lazy_restore_after_a_pre_dump_serves_only_the_last_changes() {
    become_subreaper();
    let s = Scratch::new("lazy-predump");
    let bin = workload("lazy");
    let mut child = s.spawn(&bin, &[s.dir.to_str().unwrap(), "64"]);
    let pid: i32 = s.wait_file("ready", T).trim().parse().unwrap();
    let pid_s = pid.to_string();
    let criu_in = |dir: &str, args: &[&str]| {
        std::fs::create_dir_all(s.path(dir)).unwrap();
        let mut all = args.to_vec();
        all.extend_from_slice(&["-D", dir, "-o", "log", "-v4"]);
        let out = s.criu(&all);
        assert!(
            out.status.success(),
            "criu {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            s.read(&format!("{dir}/log"))
        );
    };
    criu_in("1", &["pre-dump", "-t", &pid_s]);
    criu_in(
        "2",
        &[
            "dump",
            "-t",
            &pid_s,
            "--track-mem",
            "--prev-images-dir",
            "../1",
        ],
    );
    assert_eq!(child.wait().unwrap().code(), None, "the dump ends the task");
    let mut daemon = start_daemon_in(&s, "2");
    criu_in(
        "2",
        &["restore", "-d", "--pidfile", "restored.pid", "--lazy-pages"],
    );
    let restored: i32 = s.read("2/restored.pid").trim().parse().unwrap();
    assert_eq!(restored, pid);
    assert!(kill(pid, libc::SIGUSR1));
    assert_eq!(wait_exit(pid, T), 0, "{}", s.read("result"));
    assert!(wait_child(&mut daemon.0, T).success());
    let log = s.read("2/lazy.log");
    let kib: u64 = log
        .split("serving ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| panic!("no lazy memory served: {log}"));
    eprintln!("lazy after a pre-dump: {kib} KiB");
    assert!(
        kib > 0 && kib < 4096,
        "{kib} KiB were lazy; the pre-dump held almost all of the 64 MiB: {log}"
    );
}

/// The same through libcriu's C API (its default embedded server): `lazy_pages` is a feature it
/// reports, and `criu_local_set_lazy_pages` makes `criu_local_restore` a lazy one.
#[test]
fn lazy_restore_through_the_library() {
    use criu::capi::ffi::{CBool, FeatureCheck};
    use criu::capi::ops::*;
    use criu::capi::opts::*;
    become_subreaper();
    let s = Scratch::new("lazy-lib");
    let pid = dump_workload(&s, 64);
    let mut daemon = start_daemon(&s);
    let mut o = std::ptr::null_mut();
    unsafe {
        assert_eq!(criu_local_init_opts(&mut o), 0);
        let mut f = FeatureCheck {
            mem_track: 0,
            lazy_pages: 1,
            pidfd_store: 0,
        };
        assert_eq!(criu_local_feature_check(o, &mut f, 3), 0);
        assert_eq!(f.lazy_pages, 1, "lazy_pages is reported");
        (*o).rpc.images_dir = Some(s.img().to_str().unwrap().into());
        criu_local_set_lazy_pages(o, CBool::from(true));
        let restored = criu_local_restore(o);
        criu_local_free_opts(o);
        assert_eq!(restored, pid, "criu_local_restore: {}", s.log("lazy.log"));
    }
    assert!(kill(pid, libc::SIGUSR1));
    assert_eq!(wait_exit(pid, T), 0, "{}", s.read("result"));
    let st = wait_child(&mut daemon.0, T);
    let log = s.log("lazy.log");
    assert!(st.success() && log.contains("all pages delivered"), "{log}");
    let kib: u64 = log
        .split("serving ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|k| k.parse().ok())
        .unwrap_or(0);
    assert!(kib > 60 << 10, "the 64 MiB came through the daemon: {log}");
}
