//! A `criu dump` killed with SIGKILL at any moment must leave its target running: the kernel
//! detaches the tracees of a dead tracer, and we keep the target's registers and signal mask
//! as they were whenever we are not in the middle of a syscall we run inside it.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

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
