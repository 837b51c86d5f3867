//! Checkpoint and restore of one running process through the `criu` command: the restored task
//! checks its own state (ctests/workloads/basic.c) and reports by exit code.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

fn start_basic(s: &Scratch) -> (std::process::Child, i32) {
    let bin = workload("basic");
    let child = s.spawn(&bin, &[s.dir.to_str().unwrap()]);
    let pid: i32 = s.wait_file("ready", T).trim().parse().unwrap();
    assert_eq!(pid as u32, child.id());
    (child, pid)
}

#[test]
fn dump_kill_restore_twice() {
    become_subreaper();
    let s = Scratch::new("basic");
    let (mut child, pid) = start_basic(&s);
    s.dump(pid, &[]);
    // The dump killed it; reap it so its pid is free.
    let st = child.wait().unwrap();
    assert!(!st.success(), "the dumped task should have been killed");
    for round in 0..2 {
        let _ = std::fs::remove_file(s.path("result"));
        let restored = s.restore(&[]);
        assert_eq!(restored, pid, "round {round}: restored under another pid");
        s.verify(pid, "the restored task");
    }
}

#[test]
fn leave_running_keeps_the_original() {
    become_subreaper();
    let s = Scratch::new("leave");
    let (mut child, pid) = start_basic(&s);
    s.dump(pid, &["--leave-running"]);
    assert_running_untraced(pid);
    // The original is unharmed: it passes its own checks.
    assert!(kill(pid, libc::SIGUSR1));
    let st = child.wait().unwrap();
    assert_eq!(
        st.code(),
        Some(0),
        "original failed its checks after the dump: {}",
        s.read("result")
    );
    let restored = s.restore(&[]);
    assert_eq!(restored, pid);
    s.verify(pid, "the restored task");
}

#[test]
fn stats_match_the_pages_file() {
    become_subreaper();
    let s = Scratch::new("stats");
    let (mut child, pid) = start_basic(&s);
    let out = s.criu(&[
        "dump",
        "-t",
        &pid.to_string(),
        "-D",
        "img",
        "--display-stats",
        "--leave-running",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let written: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Memory pages written: "))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no page count in --display-stats output: {text}"));
    let pages_len = std::fs::metadata(s.img().join("pages-1.img"))
        .unwrap()
        .len();
    assert_eq!(written * 4096, pages_len);
    // 64 MiB of random data must be in there.
    assert!(written >= 16384, "only {written} pages written");
    assert!(kill(pid, libc::SIGKILL));
    let _ = child.wait();
}

#[test]
fn python_program_continues_where_it_stopped() {
    become_subreaper();
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("python3");
    let s = Scratch::new("python");
    let script = "import os, time\n\
                  os.setsid()\n\
                  n = 0\n\
                  with open('count.txt', 'a', buffering=1) as f:\n\
                  \x20   while True:\n\
                  \x20       f.write(f'{n}\\n'); n += 1; time.sleep(0.005)\n";
    let mut child = s.spawn(std::path::Path::new(python), &["-c", script]);
    let pid = child.id() as i32;
    while s.read("count.txt").lines().count() < 20 {
        std::thread::sleep(Duration::from_millis(10));
    }
    s.dump(pid, &[]);
    let _ = child.wait();
    let before = s.read("count.txt").lines().count();
    let restored = s.restore(&[]);
    assert_eq!(restored, pid);
    let t0 = std::time::Instant::now();
    while s.read("count.txt").lines().count() < before + 30 {
        assert!(
            t0.elapsed() < T,
            "restored python made no progress: {} lines",
            s.read("count.txt").lines().count()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(kill(pid, libc::SIGKILL));
    wait_exit(pid, T);
    // Every number exactly once and in order: the restored loop went on from the saved state.
    for (i, line) in s.read("count.txt").lines().enumerate() {
        assert_eq!(line, i.to_string(), "line {i} of count.txt");
    }
}

/// A raw IP socket is still beyond us: the dump fails naming pid, fd and what the socket
/// is, writes no complete-looking image, and the task runs on untouched.
#[test]
fn unsupported_socket_fails_and_leaves_task_running() {
    become_subreaper();
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("python3");
    let s = Scratch::new("sock");
    let script = "import os, socket, time\n\
                  os.setsid()\n\
                  l = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\n\
                  open('fd', 'w').write(str(l.fileno()))\n\
                  n = 0\n\
                  while True:\n\
                  \x20   n += 1; open('beat', 'w').write(str(n)); time.sleep(0.005)\n";
    let mut child = s.spawn(std::path::Path::new(python), &["-c", script]);
    let pid = child.id() as i32;
    let fd = s.wait_file("fd", T);
    s.wait_file("beat", T);
    let out = s.criu(&[
        "dump",
        "-t",
        &pid.to_string(),
        "-D",
        "img",
        "-o",
        "dump.log",
    ]);
    assert!(!out.status.success(), "dumping a raw socket must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("pid {pid}")),
        "error names the pid: {err}"
    );
    assert!(
        err.contains(&format!("fd {fd}")),
        "error names the fd: {err}"
    );
    assert!(
        err.contains("raw/IPv4 socket"),
        "error says what the socket is: {err}"
    );
    assert!(
        !s.img().join("inventory.img").exists(),
        "no complete-looking image"
    );
    assert_running_untraced(pid);
    // The file is rewritten all the time: a read may catch it empty.
    let beat = || s.read("beat").trim().parse::<u64>().ok();
    let t0 = std::time::Instant::now();
    let first = loop {
        if let Some(b) = beat() {
            break b;
        }
        assert!(t0.elapsed() < T, "no heartbeat");
        std::thread::sleep(Duration::from_millis(5));
    };
    while beat().is_none_or(|b| b <= first) {
        assert!(t0.elapsed() < T, "the task stopped making progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(kill(pid, libc::SIGKILL));
    let _ = child.wait();
}

/// A signal sent while the task is frozen (here by a post-dump action script) reaches it once
/// the dump lets it go, and its pause() or sigsuspend() returns EINTR after the handler ran, as
/// without the dump: the kernel, not the dumper, finishes the interrupted call.
#[test]
fn signal_during_leave_running_dump_ends_pause_with_eintr() {
    become_subreaper();
    let bin = workload("pause");
    for how in ["pause", "suspend"] {
        let s = Scratch::new(&format!("pause-{how}"));
        let mut child = s.spawn(&bin, &[s.dir.to_str().unwrap(), how]);
        let pid: i32 = s.wait_file("ready", T).trim().parse().unwrap();
        // Inside the call (state S), not on its way there.
        let t0 = std::time::Instant::now();
        while !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap()
            .contains(") S ")
        {
            assert!(t0.elapsed() < T, "the workload never went to sleep");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        let script = s.path("signal.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n[ \"$CRTOOLS_SCRIPT_ACTION\" = post-dump ] && kill -USR1 {pid}\nexit 0\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        s.dump(
            pid,
            &[
                "--leave-running",
                "--action-script",
                script.to_str().unwrap(),
            ],
        );
        let woke = s.wait_file("woke", Duration::from_secs(10));
        assert_eq!(
            woke.trim(),
            format!("woke -1 {} 1", libc::EINTR),
            "{how}: the call did not end as the signal says"
        );
        assert!(child.wait().unwrap().success());
    }
}
