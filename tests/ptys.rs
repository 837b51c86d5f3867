//! Terminals through dump and restore of real processes: ptys inside the tree (master and
//! slave, same index, lock, packet mode, termios, window size, controlling terminal and
//! foreground group, checked from inside by ctests/workloads/ptys.c), and the refusal of a pty
//! whose master is outside the tree, with the target left running.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

fn start_ptys(s: &Scratch) -> (KillOnDrop, i32) {
    let bin = workload("ptys");
    let child = KillOnDrop(s.spawn(&bin, &[s.dir.to_str().unwrap()]));
    let pid: i32 = s.wait_file("ready", T).trim().parse().unwrap();
    assert_eq!(pid as u32, child.0.id());
    (child, pid)
}

/// The workload's children come back to us (the subreaper) when a dump kills the tree: their
/// pids stay taken until they are reaped.
fn reap_descendants(s: &Scratch) {
    for pid in s.read("pids").split_whitespace() {
        wait_exit(pid.parse().unwrap(), T);
    }
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
fn ptys_of_the_tree_come_back_with_their_index_settings_and_session() {
    become_subreaper();
    let s = Scratch::new("ptys");
    let (mut child, pid) = start_ptys(&s);
    let index = s.read("index").trim().to_owned();
    s.dump(pid, &[]);
    let st = child.0.wait().unwrap();
    assert!(!st.success(), "the dumped task should have been killed");
    reap_descendants(&s);
    check_images_with_crit(&s, index.parse().unwrap());
    // The pty is gone with the tree: its index is free for the restore to take again.
    let restored = s.restore(&[]);
    assert_eq!(restored, pid);
    assert!(
        std::path::Path::new(&format!("/dev/pts/{index}")).exists(),
        "/dev/pts/{index} is not back"
    );
    verify(&s, pid, "the restored tree");
}

#[test]
fn leave_running_keeps_the_ptys_working() {
    become_subreaper();
    let s = Scratch::new("ptys-leave");
    let (mut child, pid) = start_ptys(&s);
    s.dump(pid, &["--leave-running"]);
    assert_running_untraced(pid);
    assert!(kill(pid, libc::SIGUSR1));
    let st = child.0.wait().unwrap();
    assert_eq!(
        st.code(),
        Some(0),
        "the original failed its checks after the dump: {}",
        s.read("result")
    );
}

/// tty-info.img as Debian's crit reads it: A's master and slave with their index, A's window
/// size and termios, B's lock and packet mode; the session and foreground group of A.
fn check_images_with_crit(s: &Scratch, index: u64) {
    let crit = std::env::var_os("CRIT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/crit/crit")
        });
    assert!(
        crit.is_file(),
        "crit not found at {}: run scripts/get-crit.sh first (or set CRIT)",
        crit.display()
    );
    let out = std::process::Command::new(crit)
        .args(["decode", "-i"])
        .arg(s.img().join("tty-info.img"))
        .output()
        .expect("run crit");
    assert!(
        out.status.success(),
        "crit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = j["entries"].as_array().unwrap();
    let of_a: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e["pty"]["index"].as_u64() == Some(index))
        .collect();
    assert_eq!(
        of_a.len(),
        2,
        "master and slave of pty {index}: {entries:?}"
    );
    for e in &of_a {
        assert_eq!(e["type"], "PTY");
        assert_eq!(e["winsize"]["ws_row"], 37);
        assert_eq!(e["winsize"]["ws_col"], 123);
        assert_eq!(e["termios"]["c_cc"][0], 7, "VINTR");
        assert_eq!(e["locked"], false);
    }
    let pids: Vec<u64> = s
        .read("pids")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(of_a
        .iter()
        .all(|e| e["sid"] == pids[0] && e["pgrp"] == pids[1]));
    assert!(
        entries
            .iter()
            .any(|e| e["locked"] == true && e["packet_mode"] == true),
        "B locked, in packet mode: {entries:?}"
    );
}

/// Kills the task when the test ends, also when it fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
