//! Sessions and process groups whose leader is gone (ctests/workloads/orphans.c): a daemon left
//! by a double fork in a session and group led by nobody, and a group whose leader exited with
//! its members in the root's session. After restore every process has its session and group
//! again, checked from inside; the helpers that stood in for the leaders left nothing behind
//! (no process with their pid, no zombie, no SIGCHLD to the root).

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

/// ppid, session and process group of a process, from /proc/PID/stat.
fn ids_now(pid: i32) -> (i32, i32, i32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<i32> = after
        .split_whitespace()
        .skip(1)
        .take(3)
        .map(|x| x.parse().unwrap())
        .collect();
    (f[0], f[2], f[1])
}

#[test]
fn session_and_group_whose_leaders_are_gone() {
    become_subreaper();
    let s = Scratch::new("dead-leaders");
    let bin = workload("orphans");
    let mut spawned = s.spawn(&bin, &[s.dir.to_str().unwrap()]);
    let ready = s.wait_file("ready", T);
    let f: Vec<i32> = ready
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let (root, daemon, m, n, gone_sid, gone_pgid) = (f[0], f[1], f[2], f[3], f[4], f[5]);
    let before: Vec<(i32, i32, i32)> = [daemon, m, n].iter().map(|&p| ids_now(p)).collect();
    assert_eq!(before[0], (root, gone_sid, gone_sid), "the daemon's ids");
    assert_eq!(before[1], (root, root, gone_pgid), "M's ids");
    assert_eq!(before[2], (m, root, gone_pgid), "N's ids");
    s.dump(root, &[]);
    let _ = spawned.wait();
    for p in [daemon, m, n] {
        let _ = wait_exit(p, T);
    }
    assert_eq!(s.restore(&[]), root);
    let after: Vec<(i32, i32, i32)> = [daemon, m, n].iter().map(|&p| ids_now(p)).collect();
    assert_eq!(after, before, "parents, sessions and groups after restore");
    for gone in [gone_sid, gone_pgid] {
        assert!(
            !kill(gone, 0),
            "the helper standing in for {gone} is still there"
        );
    }
    assert!(kill(root, libc::SIGUSR1));
    let code = wait_exit(root, T);
    assert_eq!(
        code, 0,
        "check failed (1: a session or group seen from inside, 2: the root got SIGCHLD, 4: a child \
         of the root had exited; see ctests/workloads/orphans.c)"
    );
}

/// The root of the dump is a daemon left by a double fork: its session and group leader is
/// gone, so the restorer forks the helper that makes them, and reaps it.
#[test]
fn daemon_whose_session_leader_is_gone() {
    become_subreaper();
    let s = Scratch::new("dead-leaders-daemon");
    let bin = workload("orphans");
    let mut launcher = s.spawn(&bin, &[s.dir.to_str().unwrap(), "daemon"]);
    assert_eq!(launcher.wait().unwrap().code(), Some(0));
    let f: Vec<i32> = s
        .wait_file("ready", T)
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let (daemon, gone) = (f[0], f[1]);
    assert!(!kill(gone, 0), "the session leader {gone} is gone");
    let before = ids_now(daemon);
    assert_eq!(
        (before.1, before.2),
        (gone, gone),
        "the daemon's session and group"
    );
    s.dump(daemon, &[]);
    let _ = wait_exit(daemon, T);
    assert_eq!(s.restore(&[]), daemon);
    let after = ids_now(daemon);
    assert_eq!(
        (after.1, after.2),
        (gone, gone),
        "session and group after restore"
    );
    assert!(
        !kill(gone, 0),
        "the helper standing in for {gone} is still there"
    );
    assert!(kill(daemon, libc::SIGUSR1));
    assert_eq!(
        wait_exit(daemon, T),
        0,
        "the daemon's own check of its session and group"
    );
}
