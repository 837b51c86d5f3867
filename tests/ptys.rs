//! Terminals through dump and restore of real processes: ptys inside the tree (master and
//! slave, same index, lock, packet mode, termios, window size, controlling terminal and
//! foreground group, checked from inside by ctests/workloads/ptys.c), and the refusal of a pty
//! whose master is outside the tree, with the target left running.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

/// The tests of this file take turns: a restored pty needs its old index, which a pty another
/// test opens meanwhile can take.
static PTYS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    PTYS.lock().unwrap_or_else(|e| e.into_inner())
}

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

#[test]
fn ptys_of_the_tree_come_back_with_their_index_settings_and_session() {
    let _turn = one_at_a_time();
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
    s.verify(pid, "the restored tree");
}

#[test]
fn leave_running_keeps_the_ptys_working() {
    let _turn = one_at_a_time();
    become_subreaper();
    let s = Scratch::new("ptys-leave");
    let (mut child, pid) = start_ptys(&s);
    s.dump(pid, &["--leave-running"]);
    assert_running_untraced(pid);
    s.original_passes(&mut child.0);
}

/// tty-info.img as Debian's crit reads it: A's master and slave with their index, A's window
/// size and termios, B's lock and packet mode; the session and foreground group of A.
fn check_images_with_crit(s: &Scratch, index: u64) {
    let j = crit_decode(&s.img().join("tty-info.img"));
    let entries = entries(&j);
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

// ---------------------------------------------------------------------------------------------
// --shell-job

/// A pty of the test's own: the master stays here, the slave is a shell's terminal.
struct Pty {
    master: std::os::fd::OwnedFd,
    slave: std::os::fd::OwnedFd,
    path: String,
}

fn open_pty() -> Pty {
    use std::os::fd::FromRawFd;
    let (mut m, mut s) = (-1, -1);
    let mut name = [0 as libc::c_char; 64];
    let r = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            name.as_mut_ptr(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty");
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    unsafe {
        libc::fcntl(m, libc::F_SETFD, libc::FD_CLOEXEC);
        libc::fcntl(s, libc::F_SETFD, libc::FD_CLOEXEC);
        libc::fcntl(m, libc::F_SETFL, libc::O_NONBLOCK);
    }
    Pty {
        master: unsafe { std::os::fd::OwnedFd::from_raw_fd(m) },
        slave: unsafe { std::os::fd::OwnedFd::from_raw_fd(s) },
        path,
    }
}

/// `sh -c script args...` as an interactive-less shell leading a new session whose controlling
/// terminal is `pty`, with the terminal as stdin, stdout and stderr.
fn shell_on(s: &Scratch, pty: &Pty, script: &str, args: &[&str]) -> KillOnDrop {
    use std::os::unix::process::CommandExt;
    let tty = || std::process::Stdio::from(pty.slave.try_clone().unwrap());
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .args(args)
        .current_dir(&s.dir)
        .env_remove("CRIU_CONFIG_FILE")
        .stdin(tty())
        .stdout(tty())
        .stderr(tty());
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    KillOnDrop(cmd.spawn().expect("spawn sh"))
}

/// Reads a pty's master until `want` has been seen (what the terminal echoes comes too).
fn read_until(master: std::os::fd::RawFd, want: &str) -> String {
    let t0 = std::time::Instant::now();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(want) {
        assert!(
            t0.elapsed() < T,
            "{want:?} not seen on the terminal: {:?}",
            String::from_utf8_lossy(&seen)
        );
        let mut buf = [0u8; 256];
        let n = unsafe { libc::read(master, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            seen.extend_from_slice(&buf[..n as usize]);
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn shell_job_comes_back_on_the_restorers_terminal() {
    let _turn = one_at_a_time();
    use std::os::fd::AsRawFd;
    become_subreaper();
    let s = Scratch::new("ptys-shell");
    let bin = workload("ptys");
    // The job runs under a shell on one terminal...
    let first = open_pty();
    let mut shell = shell_on(
        &s,
        &first,
        "\"$0\" \"$1\" shell; exit 0",
        &[bin.to_str().unwrap(), s.dir.to_str().unwrap()],
    );
    let pid: i32 = s.wait_file("ready", T).trim().parse().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let sid: i32 = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        sid as u32,
        shell.0.id(),
        "the job is in the shell's session"
    );
    // Without --shell-job its terminal (a pty whose master is the test's) is refused by name,
    // and the job keeps running.
    let err = s.refused_dump(pid, &[], "refused.log");
    assert!(
        err.contains(&format!("pid {pid}")) && err.contains("--shell-job"),
        "{err}"
    );
    assert_running_untraced(pid);
    s.dump(pid, &["--shell-job"]);
    assert_eq!(shell.0.wait().unwrap().code(), Some(0));

    // ... and is restored by a shell on another one.
    let second = open_pty();
    std::fs::write(s.path("expect-tty"), &second.path).unwrap();
    let _restorer_shell = shell_on(
        &s,
        &second,
        "\"$0\" restore -d -D img --shell-job -o restore.log -v4 --pidfile restored.pid; \
         echo $? > restore.rc; exec sleep 60",
        &[CRIU],
    );
    let rc = s.wait_file("restore.rc", T);
    assert_eq!(rc.trim(), "0", "restore failed: {}", s.log("restore.log"));
    let restored: i32 = std::fs::read_to_string(s.img().join("restored.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(restored, pid);
    assert!(kill(pid, libc::SIGUSR1));
    let n = unsafe { libc::write(second.master.as_raw_fd(), b"abc\n".as_ptr().cast(), 4) };
    assert_eq!(n, 4);
    read_until(second.master.as_raw_fd(), "restored-ok");
    let code = wait_exit(pid, T);
    assert_eq!(
        code,
        0,
        "the restored job failed its checks: {}",
        s.read("result")
    );
}

// ---------------------------------------------------------------------------------------------
// --orphan-pts-master through the C API

static ORPHAN_MASTER: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

unsafe extern "C" fn take_orphan_master(
    action: *mut libc::c_char,
    _na: criu::capi::ffi::criu_notify_arg_t,
) -> libc::c_int {
    let action = unsafe { std::ffi::CStr::from_ptr(action) };
    if action.to_bytes() == b"orphan-pts-master" {
        let fd = criu::capi::ops::criu_get_orphan_pts_master_fd();
        ORPHAN_MASTER.store(fd, std::sync::atomic::Ordering::SeqCst);
    }
    0
}

#[test]
fn orphan_pts_master_goes_to_the_library_caller() {
    let _turn = one_at_a_time();
    use criu::capi::ops::*;
    use criu::capi::opts::*;
    use std::os::fd::AsRawFd;
    become_subreaper();
    let s = Scratch::new("ptys-orphan");
    let bin = workload("ptys");
    // A session leader on a pty whose master is ours, as a container's init on its console.
    let console = open_pty();
    let mut init = shell_on(
        &s,
        &console,
        "exec \"$0\" \"$1\" shell",
        &[bin.to_str().unwrap(), s.dir.to_str().unwrap()],
    );
    let pid: i32 = s.wait_file("ready", T).trim().parse().unwrap();
    assert_eq!(pid as u32, init.0.id());
    s.dump(pid, &["--shell-job"]);
    assert!(!init.0.wait().unwrap().success());

    let images = std::fs::File::open(s.img()).unwrap();
    let log = std::ffi::CString::new("restore.log").unwrap();
    let mut o = std::ptr::null_mut();
    let restored = unsafe {
        assert_eq!(criu_local_init_opts(&mut o), 0);
        criu_local_set_images_dir_fd(o, images.as_raw_fd());
        criu_local_set_orphan_pts_master(o, true.into());
        criu_local_set_log_level(o, 4);
        assert_eq!(criu_local_set_log_file(o, log.as_ptr()), 0);
        criu_local_set_notify_cb(o, Some(take_orphan_master));
        let r = criu_local_restore(o);
        criu_local_free_opts(o);
        r
    };
    assert_eq!(restored, pid, "restore failed: {}", s.log("restore.log"));
    let master = ORPHAN_MASTER.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        master >= 0,
        "no orphan-pts-master notification with a descriptor"
    );
    let mut index: libc::c_int = -1;
    assert_eq!(
        unsafe { libc::ioctl(master, libc::TIOCGPTN, &mut index) },
        0
    );
    std::fs::write(s.path("expect-tty"), format!("/dev/pts/{index}")).unwrap();
    unsafe { libc::fcntl(master, libc::F_SETFL, libc::O_NONBLOCK) };
    // The restored init's stdio and controlling terminal are the new pty, driven from here.
    assert!(kill(pid, libc::SIGUSR1));
    assert_eq!(
        unsafe { libc::write(master, b"abc\n".as_ptr().cast(), 4) },
        4
    );
    read_until(master, "restored-ok");
    let code = wait_exit(pid, T);
    unsafe { libc::close(master) };
    assert_eq!(
        code,
        0,
        "the restored init failed its checks: {}",
        s.read("result")
    );
}

#[test]
fn orphan_pts_master_on_the_command_line_is_refused() {
    let _turn = one_at_a_time();
    let s = Scratch::new("ptys-orphan-cli");
    let out = s.criu(&["restore", "-D", "img", "--orphan-pts-master"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--orphan-pts-master") && err.contains("RPC client"),
        "{err}"
    );
}

#[test]
fn unread_terminal_input_is_refused_and_the_task_runs_on() {
    let _turn = one_at_a_time();
    use std::os::fd::AsRawFd;
    become_subreaper();
    let s = Scratch::new("ptys-unread");
    let bin = workload("ptys");
    let console = open_pty();
    let _init = shell_on(
        &s,
        &console,
        "exec \"$0\" \"$1\" shell",
        &[bin.to_str().unwrap(), s.dir.to_str().unwrap()],
    );
    let pid: i32 = s.wait_file("ready", T).trim().parse().unwrap();
    // Typed, not read yet: it would be lost.
    let n = unsafe { libc::write(console.master.as_raw_fd(), b"zzz\n".as_ptr().cast(), 4) };
    assert_eq!(n, 4);
    std::thread::sleep(Duration::from_millis(50));
    let err = s.refused_dump(pid, &["--shell-job"], "refused.log");
    assert!(
        err.contains(&format!("pid {pid}")) && err.contains("4 bytes of input not read yet"),
        "{err}"
    );
    assert_running_untraced(pid);
}
