//! Multi-threaded processes: every thread comes back with its tid, registers, signal mask and
//! pending signals, and threads stopped in syscalls (nanosleep, futex wait, read) resume them.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

fn compile_threads() -> std::path::PathBuf {
    // The workload needs -pthread, which `workload()` does not pass; glibc 2.34+ has pthreads
    // in libc, so the plain build links.
    workload("threads")
}

fn start(s: &Scratch, pipe: bool) -> (std::process::Child, i32, Vec<i32>) {
    let bin = compile_threads();
    let env: &[(&str, &str)] = if pipe { &[("PIPE", "1")] } else { &[] };
    let child = s.spawn_env(&bin, &[s.dir.to_str().unwrap()], env);
    let ready = s.wait_file("ready", T);
    let ids: Vec<i32> = ready
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    (child, ids[0], ids[1..].to_vec())
}

fn tids_of(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn eight_threads_in_different_states() {
    become_subreaper();
    let s = Scratch::new("threads");
    // Thread 7 waits in read() on a pipe the main thread writes to after the restore.
    let (mut child, pid, tids) = start(&s, true);
    let mut before = tids_of(pid);
    s.dump(pid, &[]);
    let _ = child.wait();
    let restored = s.restore(&[]);
    assert_eq!(restored, pid);
    let after = tids_of(pid);
    before.sort();
    assert_eq!(after, before, "thread ids");
    assert!(tids.iter().all(|t| after.contains(t)));
    assert!(kill(pid, libc::SIGUSR1));
    let code = wait_exit(pid, T);
    assert_eq!(
        code,
        0,
        "restored threads failed check {}; out: {}",
        code.saturating_sub(100),
        s.read("out")
    );
}

#[test]
fn threads_leave_running() {
    become_subreaper();
    let s = Scratch::new("threads-lr");
    let (mut child, pid, _) = start(&s, false);
    s.dump(pid, &["--leave-running"]);
    assert_running_untraced(pid);
    for t in tids_of(pid) {
        let (state, tracer) = state_and_tracer(t).unwrap();
        assert!(state != 't' && state != 'T', "thread {t} left stopped");
        assert_eq!(tracer, 0, "thread {t} left traced");
    }
    assert!(kill(pid, libc::SIGUSR1));
    let st = child.wait().unwrap();
    assert_eq!(
        st.code(),
        Some(0),
        "the original failed its checks after the dump"
    );
    let restored = s.restore(&[]);
    assert_eq!(restored, pid);
    assert!(kill(pid, libc::SIGUSR1));
    assert_eq!(wait_exit(pid, T), 0);
}
