//! Unix connections not accepted yet through dump and restore of a real process
//! (ctests/workloads/pending.c): a listener with three clients of the tree in its queue; the
//! restored server accepts all three, reads what the one that sent data early sent, and each
//! client gets its reply.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(s: &Scratch, args: &[&str]) -> (KillOnDrop, i32) {
    let child = KillOnDrop(s.spawn(&workload("pending"), args));
    let pid: i32 = s.wait_file("ready", T).trim().parse().unwrap();
    (child, pid)
}

fn verify(s: &Scratch, pid: i32, who: &str) {
    assert!(kill(pid, libc::SIGUSR1));
    let code = wait_exit(pid, T);
    assert_eq!(
        code,
        0,
        "{who} failed its checks (exit {code}): {}; out: {}",
        s.read("result"),
        s.read("out")
    );
}

#[test]
fn connections_not_accepted_yet_are_accepted_after_restore() {
    become_subreaper();
    let s = Scratch::new("unix-pending");
    let (mut child, pid) = start(&s, &[]);
    s.dump(pid, &[]);
    assert!(!child.0.wait().unwrap().success());
    check_files_with_crit(&s);
    assert_eq!(s.restore(&[]), pid);
    verify(&s, pid, "the restored task");
}

/// files.img as Debian's crit reads it: each of the three clients is established with the
/// listener as its peer, as CRIU writes a connection waiting in a listener's queue.
fn check_files_with_crit(s: &Scratch) {
    let j = crit_decode(&s.img().join("files.img"));
    let usks: Vec<&serde_json::Value> = entries(&j).iter().filter_map(|e| e.get("usk")).collect();
    let listener = usks
        .iter()
        .find(|u| u["state"] == 10)
        .unwrap_or_else(|| panic!("no listener: {j}"));
    let clients = usks
        .iter()
        .filter(|u| u["state"] == 1 && u["peer"] == listener["ino"])
        .count();
    assert_eq!(clients, 3, "{j}");
}

#[test]
fn leave_running_keeps_the_pending_connections() {
    become_subreaper();
    let s = Scratch::new("unix-pending-leave");
    let (mut child, pid) = start(&s, &[]);
    s.dump(pid, &["--leave-running"]);
    assert_running_untraced(pid);
    assert!(kill(pid, libc::SIGUSR1));
    assert_eq!(
        child.0.wait().unwrap().code(),
        Some(0),
        "{}",
        s.read("result")
    );
}

/// A client that sent data before being accepted: the bytes sit in the kernel's server-side
/// socket, which only an accept reads. With --leave-running that is refused (the tree would
/// lose its connections), the task untouched; a plain dump takes them at its very end and the
/// restored server reads them.
#[test]
fn data_sent_before_the_accept_comes_back() {
    become_subreaper();
    let s = Scratch::new("unix-pending-data");
    let (mut child, pid) = start(&s, &["data"]);
    let err = s.refused_dump(pid, &["--leave-running"], "refused.log");
    assert!(
        err.contains(&format!("pid {pid}")) && err.contains("--leave-running"),
        "{err}"
    );
    assert_running_untraced(pid);

    s.dump(pid, &[]);
    assert!(!child.0.wait().unwrap().success());
    assert_eq!(s.restore(&[]), pid);
    verify(&s, pid, "the restored task");
}
