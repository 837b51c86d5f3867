//! A `criu dump` killed with SIGKILL at any moment must leave its target running: the kernel
//! detaches the tracees of a dead tracer, and we keep the target's registers and signal mask
//! as they were whenever we are not in the middle of a syscall we run inside it.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// SigBlk of the main thread.
fn blocked(pid: i32) -> u64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let v = st
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .unwrap()
        .trim();
    u64::from_str_radix(v, 16).unwrap()
}

fn beat(s: &Scratch) -> u64 {
    s.read("beat").trim().parse().unwrap_or(0)
}

#[test]
fn sigkill_during_dump_leaves_target_running() {
    let s = Scratch::new("killdump");
    let bin = workload("heartbeat");
    let mut child = s.spawn(&bin, &[s.dir.to_str().unwrap(), "256"]);
    let pid = child.id() as i32;
    s.wait_file("beat", Duration::from_secs(30));

    // How long a whole dump takes here, to spread the kills over it.
    let t0 = Instant::now();
    s.dump(pid, &["--leave-running"]);
    let full = t0.elapsed();
    assert_running_untraced(pid);

    let mut seed = rand_u32() as u64 | 1;
    for round in 0..12 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_micros(seed % (full.as_micros() as u64 + 1));
        let _ = std::fs::remove_dir_all(s.img());
        std::fs::create_dir_all(s.img()).unwrap();
        let mut dumper = Command::new(CRIU)
            .args([
                "dump",
                "-t",
                &pid.to_string(),
                "-D",
                "img",
                "--leave-running",
                "-o",
                "dump.log",
            ])
            .current_dir(&s.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = dumper.kill();
        let _ = dumper.wait();
        // The kernel detaches us as the tracer exits.
        let t = Instant::now();
        while state_and_tracer(pid)
            .map(|(_, tr)| tr != 0)
            .unwrap_or(false)
            && t.elapsed() < Duration::from_secs(2)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_running_untraced(pid);
        let b0 = beat(&s);
        let t = Instant::now();
        while beat(&s) <= b0 + 3 {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "round {round} (kill after {delay:?}): no heartbeat"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    assert!(kill(pid, libc::SIGUSR1));
    let st = child.wait().unwrap();
    assert_eq!(
        st.code(),
        Some(0),
        "the task's state was damaged by an interrupted dump"
    );
}

/// The dumper dies inside each of the syscalls it runs in the task, one run per syscall: the
/// task must come out as it was every time (the trampoline's rt_sigreturn puts it back).
#[test]
fn death_inside_each_injected_syscall_leaves_task_intact() {
    let s = Scratch::new("killinject");
    let bin = workload("heartbeat");
    let mut child = s.spawn(&bin, &[s.dir.to_str().unwrap(), "16"]);
    let pid = child.id() as i32;
    s.wait_file("beat", Duration::from_secs(30));
    let mut at = 1;
    loop {
        let _ = std::fs::remove_dir_all(s.img());
        std::fs::create_dir_all(s.img()).unwrap();
        let out = Command::new(CRIU)
            .args([
                "dump",
                "-t",
                &pid.to_string(),
                "-D",
                "img",
                "--leave-running",
                "-o",
                "dump.log",
            ])
            .env("CRIU_RS_FAULT_KILL_AT_SYSCALL", at.to_string())
            .current_dir(&s.dir)
            .output()
            .unwrap();
        let t = Instant::now();
        while state_and_tracer(pid)
            .map(|(_, tr)| tr != 0)
            .unwrap_or(false)
            && t.elapsed() < Duration::from_secs(2)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_running_untraced(pid);
        // Once detached, the task runs the way back (rt_sigreturn) on its own: give it a moment.
        let t = Instant::now();
        while blocked(pid) != 0 && t.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            blocked(pid),
            0,
            "killed inside syscall {at}: the signal mask was left changed"
        );
        let b0 = beat(&s);
        let t = Instant::now();
        while beat(&s) <= b0 + 3 {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "killed inside syscall {at}: no heartbeat"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        if out.status.success() {
            // The dump ran fewer syscalls than `at`: every point was tried.
            break;
        }
        at += 1;
        assert!(at < 1000, "runaway");
    }
    assert!(at > 20, "only {at} syscalls were tried");
    assert!(kill(pid, libc::SIGUSR1));
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert_eq!(
                st.code(),
                Some(0),
                "the task's state was damaged by a dumper dying inside a syscall"
            );
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the task never took SIGUSR1: its signals stay blocked"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
