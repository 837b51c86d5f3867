//! Process trees: pids, parents, sessions, process groups and zombies come back as they were,
//! checked by every restored process from inside (ctests/workloads/tree.c).

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

/// pid ppid sid pgid as the workload saved them.
fn ids(s: &Scratch, name: &str) -> Vec<i32> {
    s.read(&format!("ids.{name}"))
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect()
}

fn ids_now(pid: i32) -> Vec<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // fields 4 (ppid), 5 (pgrp), 6 (session)
    vec![
        pid,
        f[1].parse().unwrap(),
        f[3].parse().unwrap(),
        f[2].parse().unwrap(),
    ]
}

fn state(pid: i32) -> char {
    state_and_tracer(pid).map(|s| s.0).unwrap_or('?')
}

#[test]
fn tree_with_sessions_groups_and_a_zombie() {
    become_subreaper();
    let s = Scratch::new("tree");
    let bin = workload("tree");
    let mut child = s.spawn(&bin, &[s.dir.to_str().unwrap()]);
    let ready: Vec<i32> = s
        .wait_file("ready", T)
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let root = ready[0];
    let names = ["R", "A", "B", "A1", "B1"];
    let before: Vec<Vec<i32>> = names.iter().map(|n| ids(&s, n)).collect();
    let zombie: Vec<i32> = s
        .read("ids.Z")
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(state(zombie[0]), 'Z');
    // Sanity: the shape we want to test.
    assert_ne!(before[0][2], before[4][2], "two sessions");
    assert_eq!(before[3][3], before[2][0], "A1 is in B's group");

    s.dump(root, &[]);
    let _ = child.wait();
    // The others were killed too and came to us (subreaper): reap them so their pids are free.
    for p in before.iter().map(|i| i[0]).chain([zombie[0]]) {
        if p != root {
            let _ = wait_exit(p, T);
        }
    }
    let restored = s.restore(&[]);
    assert_eq!(restored, root);
    for (n, b) in names.iter().zip(&before) {
        let mut expect = b.clone();
        if *n == "R" {
            // The restored root is a child of the restorer (gone: -d), so of us now.
            expect[1] = std::process::id() as i32;
        }
        assert_eq!(ids_now(b[0]), expect, "ids of {n} (pid ppid sid pgid)");
    }
    assert_eq!(state(zombie[0]), 'Z', "the zombie is a zombie again");
    assert_eq!(ids_now(zombie[0])[1], zombie[1], "the zombie's parent");
    for b in &before {
        assert!(kill(b[0], libc::SIGUSR1));
    }
    let code = wait_exit(root, T);
    assert_eq!(
        code, 0,
        "a restored process found its ids, zombie or children wrong"
    );
}

/// A program nobody wrote for us: python3 with four threads and a child process.
#[test]
fn python_with_threads_and_a_subprocess() {
    become_subreaper();
    let s = Scratch::new("pytree");
    let script = r#"
import os, threading, time, subprocess
os.setsid()
child = subprocess.Popen(["/bin/sleep", "1000"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
counts = [0] * 4
def work(i):
    while True:
        counts[i] += 1
        time.sleep(0.001)
for i in range(4):
    threading.Thread(target=work, args=(i,), daemon=True).start()
with open("log.txt", "a", buffering=1) as f:
    n = 0
    while True:
        f.write(f"{n} {sum(counts)} {child.pid} {child.poll()}\n")
        n += 1
        time.sleep(0.005)
"#;
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap();
    let mut child = s.spawn(std::path::Path::new(python), &["-c", script]);
    let pid = child.id() as i32;
    while s.read("log.txt").lines().count() < 20 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count();
    assert!(threads >= 5, "python runs {threads} threads");
    let sub: i32 = s
        .read("log.txt")
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    s.dump(pid, &[]);
    let _ = child.wait();
    let _ = wait_exit(sub, T);
    let before = s.read("log.txt").lines().count();
    assert_eq!(s.restore(&[]), pid);
    assert_eq!(
        ids_now(sub)[1],
        pid,
        "the subprocess is the restored python's child again"
    );
    let t0 = std::time::Instant::now();
    while s.read("log.txt").lines().count() < before + 30 {
        assert!(t0.elapsed() < T, "restored python made no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The threads count on, and python still sees its child alive (poll() is None)...
    let lines: Vec<Vec<String>> = s
        .read("log.txt")
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(
            l[0],
            i.to_string(),
            "the main loop went on from where it was"
        );
    }
    let sums: Vec<u64> = lines.iter().map(|l| l[1].parse().unwrap()).collect();
    assert!(
        sums[sums.len() - 1] > sums[before - 1],
        "the threads kept counting"
    );
    assert!(lines.iter().all(|l| l[3] == "None"));
    // ...and notices when it dies: the restored parent/child link is real.
    assert!(kill(sub, libc::SIGKILL));
    let t0 = std::time::Instant::now();
    while !s
        .read("log.txt")
        .lines()
        .last()
        .unwrap_or("")
        .ends_with(" -9")
    {
        assert!(t0.elapsed() < T, "python did not see its child die");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(kill(pid, libc::SIGKILL));
    wait_exit(pid, T);
}
