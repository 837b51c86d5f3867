//! Pipes, FIFOs, unix socketpairs and eventfds through dump and restore of a real process
//! (ctests/workloads/fdkinds.c, which checks every byte, message boundary, counter and flag
//! from inside); the images as Debian's crit reads them; and the objects we still refuse,
//! refused cleanly.

mod common;

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value as Json;

const T: Duration = Duration::from_secs(30);

fn start_fdkinds(s: &Scratch) -> (KillOnDrop, i32) {
    let bin = workload("fdkinds");
    let child = KillOnDrop(s.spawn(&bin, &[s.dir.to_str().unwrap()]));
    let pid: i32 = s.wait_file("ready", T).trim().parse().unwrap();
    assert_eq!(pid as u32, child.0.id());
    (child, pid)
}

/// The workload's "fds" file: name → fd number.
fn fd_names(s: &Scratch) -> HashMap<String, u64> {
    s.read("fds")
        .lines()
        .map(|l| {
            let (name, fd) = l.split_once(' ').unwrap();
            (name.to_owned(), fd.parse().unwrap())
        })
        .collect()
}

#[test]
fn dump_kill_restore_with_contents() {
    become_subreaper();
    let s = Scratch::new("fdkinds");
    let (mut child, pid) = start_fdkinds(&s);
    s.dump(pid, &[]);
    let st = child.0.wait().unwrap();
    assert!(!st.success(), "the dumped task should have been killed");
    check_images_with_crit(&s);
    let restored = s.restore(&[]);
    assert_eq!(restored, pid);
    s.verify(pid, "the restored task");
}

#[test]
fn leave_running_then_restore() {
    become_subreaper();
    let s = Scratch::new("fdkinds-leave");
    let (mut child, pid) = start_fdkinds(&s);
    s.dump(pid, &["--leave-running"]);
    assert_running_untraced(pid);
    // The dump consumed nothing: the original still finds every byte and message.
    s.original_passes(&mut child.0);
    let _ = std::fs::remove_file(s.path("result"));
    // Its FIFO is free again (no one holds it open), so the restore refills it.
    let restored = s.restore(&[]);
    assert_eq!(restored, pid);
    s.verify(pid, "the restored task");
}

// ---------------------------------------------------------------------------------------------
// The images, as crit reads them

/// The workload's byte pattern (fdkinds.c `pattern`).
fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i * 131 + seed * 17 + (i >> 8) + (i >> 16)) as u8)
        .collect()
}

/// crit decodes every image the new kinds wrote, and their key fields say what the workload
/// set up: both ends of a pipe share a pipe_id and the buffer of each pipe is there once with
/// its capacity; peers name each other; datagrams keep their sizes and order; counters.
fn check_images_with_crit(s: &Scratch) {
    let img = s.img();
    let names = fd_names(s);
    let fdinfo = crit_decode(&img.join("fdinfo-1.img"));
    let id_of_fd: HashMap<u64, u64> = entries(&fdinfo)
        .iter()
        .map(|e| (e["fd"].as_u64().unwrap(), e["id"].as_u64().unwrap()))
        .collect();
    let files = crit_decode(&img.join("files.img"));
    let by_id: HashMap<u64, &Json> = entries(&files)
        .iter()
        .map(|e| (e["id"].as_u64().unwrap(), e))
        .collect();
    let file = |name: &str| -> &Json {
        let fd = names[name];
        by_id[&id_of_fd[&fd]]
    };

    // Pipes.
    let (a_r, a_w) = (file("pipe_a_r"), file("pipe_a_w"));
    assert_eq!(a_r["type"], "PIPE");
    assert_eq!(a_r["pipe"]["pipe_id"], a_w["pipe"]["pipe_id"]);
    assert_eq!(
        id_of_fd[&names["pipe_a_r"]], id_of_fd[&names["pipe_a_dup"]],
        "a dup shares the file entry"
    );
    assert_eq!(a_r["pipe"]["flags"], libc::O_NONBLOCK);
    assert_eq!(a_w["pipe"]["flags"], libc::O_WRONLY);
    let pipes = crit_decode(&img.join("pipes-data.img"));
    assert_eq!(pipes["magic"], "PIPES_DATA");
    let buffer = |pipe_id: &Json| -> &Json {
        let found: Vec<&Json> = entries(&pipes)
            .iter()
            .filter(|e| &e["pipe_id"] == pipe_id)
            .collect();
        assert_eq!(found.len(), 1, "one buffer entry for pipe {pipe_id}");
        found[0]
    };
    let a = buffer(&a_r["pipe"]["pipe_id"]);
    assert_eq!(a["bytes"], 40 << 10);
    assert_eq!(a["size"], 64 << 10);
    assert_eq!(
        unbase64(a["extra"].as_str().unwrap()),
        pattern(1, 40 << 10),
        "the pipe's bytes in pipes-data.img"
    );
    let big = buffer(&file("pipe_big_r")["pipe"]["pipe_id"]);
    assert_eq!(big["bytes"], 700 << 10);
    assert_eq!(big["size"], 1 << 20);
    assert_eq!(
        buffer(&file("pipe_wonly")["pipe"]["pipe_id"])["bytes"],
        1000
    );

    // The FIFO: two opens, one buffer, the path in a regular-file entry.
    let (rw, ro) = (file("fifo_rw"), file("fifo_ro"));
    assert_eq!(rw["type"], "FIFO");
    assert_eq!(rw["fifo"]["pipe_id"], ro["fifo"]["pipe_id"]);
    let regf = by_id[&rw["fifo"]["regf_id"].as_u64().unwrap()];
    assert_eq!(regf["type"], "REG");
    assert!(regf["reg"]["name"].as_str().unwrap().ends_with("/fifo"));
    let fifos = crit_decode(&img.join("fifo-data.img"));
    assert_eq!(entries(&fifos).len(), 1);
    assert_eq!(entries(&fifos)[0]["bytes"], 5000);
    assert_eq!(entries(&fifos)[0]["pipe_id"], rw["fifo"]["pipe_id"]);

    // Socket pairs: each names the other as its peer.
    for (a, b, ty) in [
        ("stream_a", "stream_b", libc::SOCK_STREAM),
        ("dgram_a", "dgram_b", libc::SOCK_DGRAM),
        ("seqpacket_a", "seqpacket_b", libc::SOCK_SEQPACKET),
    ] {
        let (a, b) = (&file(a)["usk"], &file(b)["usk"]);
        assert_eq!(a["type"], ty);
        assert_eq!(a["state"], 1, "established");
        assert_eq!(a["peer"], b["ino"]);
        assert_eq!(b["peer"], a["ino"]);
    }
    let lone = &file("unconnected")["usk"];
    assert_eq!(lone["state"], 7, "unconnected (TCP_CLOSE)");
    assert_eq!(lone["peer"], 0);
    assert_eq!(
        lone["fown"]["pid"],
        s.read("ready").trim().parse::<u64>().unwrap()
    );
    assert_eq!(lone["fown"]["signum"], libc::SIGUSR2);
    // Queues: one entry per message, in order, for the receiving socket.
    let queues = crit_decode(&img.join("sk-queues.img"));
    assert_eq!(queues["magic"], "SK_QUEUES");
    let queue_of = |name: &str| -> Vec<&Json> {
        let id = file(name)["id"].clone();
        entries(&queues)
            .iter()
            .filter(|e| e["id_for"] == id)
            .collect()
    };
    let lengths = |name: &str| -> Vec<u64> {
        queue_of(name)
            .iter()
            .map(|e| e["length"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(lengths("dgram_b"), [1, 7, 100, 0, 4000, 65000]);
    assert_eq!(lengths("dgram_a"), [33, 0, 2]);
    assert_eq!(lengths("seqpacket_b"), [3, 50, 1500, 30000]);
    assert_eq!(lengths("seqpacket_a"), [9, 700]);
    assert_eq!(lengths("stream_b").iter().sum::<u64>(), 50000);
    assert_eq!(lengths("stream_a").iter().sum::<u64>(), 123);
    assert_eq!(
        unbase64(queue_of("dgram_b")[4]["extra"].as_str().unwrap()),
        pattern(14, 4000),
        "the fifth datagram's bytes in sk-queues.img"
    );

    // eventfds.
    assert_eq!(file("ev_plain")["efd"]["counter"], 42);
    assert_eq!(file("ev_big")["efd"]["counter"], 0x1_0000_0005u64);
    let sem = &file("ev_sem")["efd"];
    assert_eq!(sem["counter"], 3);
    assert_eq!(
        sem["flags"].as_u64().unwrap() & libc::O_NONBLOCK as u64,
        libc::O_NONBLOCK as u64
    );
}

// ---------------------------------------------------------------------------------------------
// What is still refused

fn python() -> &'static str {
    ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("python3")
}

/// Runs a dump that must fail; checks that the error names the pid, the fd and each of
/// `says`, that no complete-looking image was left, and that the task runs on (its heartbeat
/// file keeps changing).
fn assert_refused(s: &Scratch, pid: i32, fd: &str, says: &[&str]) {
    let out = s.criu(&[
        "dump",
        "-t",
        &pid.to_string(),
        "-D",
        "img",
        "-o",
        "dump.log",
    ]);
    assert!(!out.status.success(), "the dump must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("pid {pid}")), "names the pid: {err}");
    assert!(err.contains(&format!("fd {fd}:")), "names fd {fd}: {err}");
    for want in says {
        assert!(err.contains(want), "says {want:?}: {err}");
    }
    assert!(!s.img().join("inventory.img").exists());
    assert_running_untraced(pid);
    // The file is rewritten all the time: a read may catch it empty; a busy machine may not
    // run the task for a while.
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
}

/// Kills the task when the test ends, also when it fails.
/// A Python loop that first runs `setup` (which writes the fd to name into the file "fd"),
/// then bumps "beat".
fn python_with(setup: &str) -> String {
    format!(
        "import os, socket, time\nos.setsid()\n{setup}\nn = 0\nwhile True:\n    \
         n += 1; open('beat', 'w').write(str(n)); time.sleep(0.005)\n"
    )
}

#[test]
fn fd_in_flight_is_refused() {
    become_subreaper();
    let s = Scratch::new("fdkinds-scm");
    let script = python_with(
        "a, b = socket.socketpair()\n\
         c, d = socket.socketpair()\n\
         socket.send_fds(a, [b'x'], [c.fileno()])\n\
         c.close(); d.close()\n\
         open('fd', 'w').write(str(b.fileno()))",
    );
    let child = KillOnDrop(s.spawn(Path::new(python()), &["-c", &script]));
    let pid = child.0.id() as i32;
    let fd = s.wait_file("fd", T);
    // Files in flight in a stream's queue are dumped (tests/unix_stream_fds.rs); a socket in
    // flight is not.
    assert_refused(&s, pid, &fd, &["socket:[", "a socket in flight"]);
}

#[test]
fn socket_connected_outside_is_refused() {
    become_subreaper();
    let s = Scratch::new("fdkinds-peer");
    // A server outside the dumped task: the workload's socket is connected to it.
    let path = s.path("server.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let script = python_with(&format!(
        "c = socket.socket(socket.AF_UNIX)\n\
         c.connect({:?})\n\
         open('fd', 'w').write(str(c.fileno()))",
        path.to_str().unwrap()
    ));
    let child = KillOnDrop(s.spawn(Path::new(python()), &["-c", &script]));
    let pid = child.0.id() as i32;
    let fd = s.wait_file("fd", T);
    let (_server_end, _) = listener.accept().unwrap();
    assert_refused(&s, pid, &fd, &["which no dumped task holds"]);
}

#[test]
fn pipe_shared_with_outside_process_is_refused() {
    become_subreaper();
    let s = Scratch::new("fdkinds-shared");
    // Our end of its stdin stays open here: the restored task would read from a pipe no one
    // writes to.
    let out = std::fs::File::create(s.path("out")).unwrap();
    let mut cmd = Command::new(python());
    cmd.args(["-c", &python_with("open('fd', 'w').write('0')")])
        .current_dir(&s.dir)
        .stdin(Stdio::piped())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    // SAFETY: close_range only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let child = KillOnDrop(cmd.spawn().unwrap());
    let pid = child.0.id() as i32;
    s.wait_file("beat", T);
    assert_refused(
        &s,
        pid,
        "0",
        &[
            "pipe:[",
            &format!("also open in pid {}", std::process::id()),
        ],
    );
}
