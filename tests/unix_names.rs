//! Named unix sockets through dump and restore of a real process
//! (ctests/workloads/unixnames.c checks names, listening and traffic from inside): listeners on
//! a path and on an abstract name, a datagram socket bound to a path, one whose socket file was
//! removed, accepted connections, datagram sockets connected by name (outside the tree with
//! --ext-unix-sk), files in flight (ctests/workloads/inflight.c); and a listener with a
//! connection not accepted yet, refused with the task running.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

/// Kills the task when the test ends, also when it fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(s: &Scratch) -> (KillOnDrop, i32) {
    let child = KillOnDrop(s.spawn(&workload("unixnames"), &[s.dir.to_str().unwrap()]));
    let pid: i32 = s.wait_file("ready", T).trim().parse().unwrap();
    (child, pid)
}

#[test]
fn named_sockets_and_listeners_come_back_bound() {
    become_subreaper();
    let s = Scratch::new("unixnames");
    let (mut child, pid) = start(&s);
    s.dump(pid, &[]);
    assert!(!child.0.wait().unwrap().success());
    // The dead listener's socket file is still there: the restore takes its place.
    assert!(s.path("listen.sock").exists());
    assert_eq!(s.restore(&[]), pid);
    s.verify(pid, "the restored task");
}

#[test]
fn leave_running_keeps_the_names() {
    become_subreaper();
    let s = Scratch::new("unixnames-leave");
    let (mut child, pid) = start(&s);
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

#[test]
fn listener_with_a_pending_connection_is_refused() {
    become_subreaper();
    let s = Scratch::new("unixnames-pending");
    let (_child, pid) = start(&s);
    // A connection the task has not accepted yet (ours: outside the tree).
    let _client = std::os::unix::net::UnixStream::connect(s.path("listen.sock")).unwrap();
    let err = s.refused_dump(pid, &[], "dump.log");
    assert!(
        err.contains(&format!("pid {pid}")) && err.contains("not accepted yet"),
        "{err}"
    );
    assert_running_untraced(pid);
}

#[test]
fn datagram_socket_connected_outside_needs_ext_unix_sk() {
    become_subreaper();
    let s = Scratch::new("unixnames-ext");
    // The named socket outside the tree, ours.
    let outside = std::os::unix::net::UnixDatagram::bind(s.path("ext.sock")).unwrap();
    let child = KillOnDrop(s.spawn(&workload("unixnames"), &[s.dir.to_str().unwrap(), "ext"]));
    let pid: i32 = s.wait_file("ready", T).trim().parse().unwrap();
    let mut child = child;
    let err = s.refused_dump(pid, &[], "refused.log");
    assert!(
        err.contains(&format!("pid {pid}"))
            && err.contains("--ext-unix-sk")
            && err.contains("ext.sock"),
        "{err}"
    );
    assert_running_untraced(pid);
    s.dump(pid, &["--ext-unix-sk"]);
    assert!(!child.0.wait().unwrap().success());
    check_files_with_crit(&s);
    assert_eq!(s.restore(&[]), pid);
    s.verify(pid, "the restored task");
    // Its socket was connected to ours again: what it sent is here.
    outside
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 32];
    let n = outside.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ext-hello");
}

/// files.img as Debian's crit reads it: the listeners with their backlog, the names, the
/// removed socket file marked deleted, and the outside socket as an external entry.
fn check_files_with_crit(s: &Scratch) {
    let j = crit_decode(&s.img().join("files.img"));
    let usks: Vec<&serde_json::Value> = entries(&j).iter().filter_map(|e| e.get("usk")).collect();
    let with = |f: &dyn Fn(&serde_json::Value) -> bool| usks.iter().filter(|u| f(u)).count();
    // crit shows names as text and the listen state as 10.
    let name = |u: &serde_json::Value, n: &str| u["name"].as_str().is_some_and(|x| x.contains(n));
    assert_eq!(
        with(&|u| u["state"] == 10 && u["backlog"] == 7 && name(u, "listen.sock")),
        1,
        "{j}"
    );
    assert_eq!(with(&|u| u["state"] == 10 && u["backlog"] == 3), 1, "{j}");
    assert_eq!(
        with(&|u| name(u, "gone.sock") && u["deleted"] == true),
        1,
        "{j}"
    );
    assert_eq!(with(&|u| name(u, "ext.sock") && u["uflags"] == 1), 1, "{j}");
}

#[test]
fn files_in_flight_travel_with_their_messages() {
    become_subreaper();
    let s = Scratch::new("unix-inflight");
    let mut child = KillOnDrop(s.spawn(&workload("inflight"), &[s.dir.to_str().unwrap()]));
    let pid: i32 = s.wait_file("ready", T).trim().parse().unwrap();
    s.dump(pid, &[]);
    assert!(!child.0.wait().unwrap().success());
    // sk-queues.img as crit reads it: three messages, each naming one file.
    let j = crit_decode(&s.img().join("sk-queues.img"));
    let with_rights = entries(&j)
        .iter()
        .filter(|e| {
            e["scm"][0]["rights"]
                .as_array()
                .is_some_and(|r| r.len() == 1)
        })
        .count();
    assert_eq!(with_rights, 3, "{j}");
    assert_eq!(s.restore(&[]), pid);
    s.verify(pid, "the restored task");
}

#[test]
fn files_in_flight_stay_queued_after_leave_running() {
    become_subreaper();
    let s = Scratch::new("unix-inflight-leave");
    let mut child = KillOnDrop(s.spawn(&workload("inflight"), &[s.dir.to_str().unwrap()]));
    let pid: i32 = s.wait_file("ready", T).trim().parse().unwrap();
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
