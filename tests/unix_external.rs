//! Files connected to something outside the dumped tree (ctests/workloads/extpeer.c answers
//! requests on fds 3 and 4, counting them): a stream socket whose peer the test holds is
//! refused at dump unless `--external unix[INO]` names it; the restore refuses it without
//! `--inherit-fd`, leaving no process behind, and with `--inherit-fd fd[N]:socket:[INO]` the
//! restored task talks through the socket the test gives in its place, still counting. The
//! same for pipes with `pipe:[INO]` keys.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `dup2(from, to)` for each pair in a child before exec, every other fd above 2 closed.
fn with_fds(cmd: &mut Command, fds: &[(i32, i32)]) {
    let fds = fds.to_vec();
    unsafe {
        cmd.pre_exec(move || {
            // Out of the way first, so that a target number does not clobber a source.
            let mut high = Vec::new();
            for &(from, _) in &fds {
                let h = libc::fcntl(from, libc::F_DUPFD, 100);
                if h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                high.push(h);
            }
            for (h, &(_, to)) in high.iter().zip(&fds) {
                if libc::dup2(*h, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            let keep = fds.iter().map(|&(_, to)| to).max().unwrap_or(2);
            libc::syscall(libc::SYS_close_range, keep as u32 + 1, u32::MAX, 0u32);
            for fd in 3..keep {
                if !fds.iter().any(|&(_, to)| to == fd) {
                    libc::close(fd);
                }
            }
            Ok(())
        });
    }
}

fn start(s: &Scratch, fd3: i32, fd4: i32) -> (KillOnDrop, i32) {
    let out = std::fs::File::create(s.path("out")).unwrap();
    let mut cmd = Command::new(workload("extpeer"));
    cmd.current_dir(&s.dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    with_fds(&mut cmd, &[(fd3, 3), (fd4, 4)]);
    // Its own session: a dump does not take the test's.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = KillOnDrop(cmd.spawn().unwrap());
    let pid: i32 = s.wait_file("ready", T).trim().parse().unwrap();
    (child, pid)
}

/// `criu restore -d` with `fds` given to criu at the numbers asked.
fn restore_with(s: &Scratch, fds: &[(i32, i32)], extra: &[&str]) -> Output {
    let mut cmd = Command::new(CRIU);
    cmd.args([
        "restore",
        "-d",
        "-D",
        "img",
        "-o",
        "restore.log",
        "-v4",
        "--pidfile",
        "restored.pid",
    ])
    .args(extra)
    .current_dir(&s.dir)
    .env_remove("CRIU_CONFIG_FILE")
    .stdin(Stdio::null());
    with_fds(&mut cmd, fds);
    cmd.output().unwrap()
}

fn ask(w: &mut impl Write, r: &mut impl Read, req: &str) -> String {
    w.write_all(req.as_bytes()).unwrap();
    let mut buf = [0u8; 200];
    let n = r.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn ino(fd: &impl AsRawFd) -> u64 {
    std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .unwrap()
        .ino()
}

fn pid_exists(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn stream_socket_connected_outside_comes_back_inherited() {
    become_subreaper();
    let s = Scratch::new("unix-external");
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    ours.set_read_timeout(Some(T)).unwrap();
    let ino = ino(&theirs);
    let (mut child, pid) = start(&s, theirs.as_raw_fd(), theirs.as_raw_fd());
    drop(theirs);
    let mut r = ours.try_clone().unwrap();
    assert_eq!(ask(&mut ours, &mut r, "one"), "pong 1 one");

    // Refused without --external, naming the task and what to use; the task goes on.
    let err = s.refused_dump(pid, &[], "refused.log");
    assert!(
        err.contains(&format!("pid {pid}")) && err.contains(&format!("--external unix[{ino}]")),
        "{err}"
    );
    assert_running_untraced(pid);
    assert_eq!(ask(&mut ours, &mut r, "two"), "pong 2 two");

    s.dump(pid, &["--external", &format!("unix[{ino}]")]);
    assert!(!child.0.wait().unwrap().success());

    // Without the socket to put in its place the restore fails clearly, leaving nothing.
    let out = restore_with(&s, &[], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("--inherit-fd fd[N]:socket:[{ino}]")),
        "{err}\n{}",
        s.log("restore.log")
    );
    assert!(!pid_exists(pid) || wait_exit(pid, T) != 0);

    let (mut fresh, given) = UnixStream::pair().unwrap();
    fresh.set_read_timeout(Some(T)).unwrap();
    let out = restore_with(
        &s,
        &[(given.as_raw_fd(), 7)],
        &["--inherit-fd", &format!("fd[7]:socket:[{ino}]")],
    );
    assert!(
        out.status.success(),
        "restore failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log("restore.log")
    );
    drop(given);
    let restored: i32 = s.read("img/restored.pid").trim().parse().unwrap();
    assert_eq!(restored, pid);
    let mut r = fresh.try_clone().unwrap();
    assert_eq!(ask(&mut fresh, &mut r, "three"), "pong 3 three");
    // The old socket is not connected to anything any more.
    drop(fresh);
    drop(r);
    assert_eq!(wait_exit(pid, T), 0, "{}", s.read("out"));
}

#[test]
fn pipes_to_the_outside_come_back_inherited() {
    become_subreaper();
    let s = Scratch::new("pipe-external");
    let (req_r, req_w) = pipe();
    let (rep_r, rep_w) = pipe();
    let (req_ino, rep_ino) = (ino(&req_r), ino(&rep_r));
    let (mut child, pid) = start(&s, req_r.as_raw_fd(), rep_w.as_raw_fd());
    drop((req_r, rep_w));
    let (mut w, mut r) = (std::fs::File::from(req_w), std::fs::File::from(rep_r));
    assert_eq!(ask(&mut w, &mut r, "one"), "pong 1 one");
    // We hold the other ends: refused unless --external names the pipes.
    let err = s.refused_dump(pid, &[], "refused.log");
    assert!(
        err.contains(&format!("pid {pid}")) && err.contains(&format!("--external pipe[{req_ino}]")),
        "{err}"
    );
    assert_running_untraced(pid);
    s.dump(
        pid,
        &[
            "--external",
            &format!("pipe[{req_ino}]"),
            "--external",
            &format!("pipe[{rep_ino}]"),
        ],
    );
    assert!(!child.0.wait().unwrap().success());
    drop((w, r));

    let (req_r, req_w) = pipe();
    let (rep_r, rep_w) = pipe();
    let out = restore_with(
        &s,
        &[(req_r.as_raw_fd(), 7), (rep_w.as_raw_fd(), 8)],
        &[
            "--inherit-fd",
            &format!("fd[7]:pipe:[{req_ino}]"),
            "--inherit-fd",
            &format!("fd[8]:pipe:[{rep_ino}]"),
        ],
    );
    assert!(
        out.status.success(),
        "restore failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log("restore.log")
    );
    drop((req_r, rep_w));
    let (mut w, mut r) = (std::fs::File::from(req_w), std::fs::File::from(rep_r));
    assert_eq!(ask(&mut w, &mut r, "two"), "pong 2 two");
    drop(w);
    assert_eq!(wait_exit(pid, T), 0, "{}", s.read("out"));
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe().unwrap()
}
