//! Descriptors in flight (SCM_RIGHTS) in a unix stream socket's queue through dump and restore
//! of a real process (ctests/workloads/streamfds.c checks the bytes, where the descriptor
//! comes and what it refers to, from inside); and with --leave-running the queue stays as it
//! was.

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

#[test]
fn files_in_flight_in_a_stream_come_back_with_their_bytes() {
    become_subreaper();
    let s = Scratch::new("unix-stream-fds");
    let mut child = KillOnDrop(s.spawn(&workload("streamfds"), &[]));
    let pid: i32 = s.wait_file("ready", T).trim().parse().unwrap();
    s.dump(pid, &[]);
    assert!(!child.0.wait().unwrap().success());
    assert_eq!(s.restore(&[]), pid);
    assert!(kill(pid, libc::SIGUSR1));
    let code = wait_exit(pid, T);
    assert_eq!(
        code,
        0,
        "exit {code}: {}; out: {}",
        s.read("result"),
        s.read("out")
    );
}

#[test]
fn leave_running_keeps_the_stream_queue() {
    become_subreaper();
    let s = Scratch::new("unix-stream-fds-leave");
    let mut child = KillOnDrop(s.spawn(&workload("streamfds"), &[]));
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
