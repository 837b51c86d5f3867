//! A third-party RPC client against our `criu swrk`: Debian's pycriu (CRIU 3.17's Python
//! library, fetched with crit by `scripts/get-crit.sh`), running tests/pycriu/client.py with
//! Debian's /usr/bin/python3. It dumps a running workload and restores it (the restored task
//! checks itself), and dumps itself, coming back restored from its own `dump()` call.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

fn client_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pycriu/client.py")
}

/// Runs client.py with our criu; panics with its output and the criu log on failure.
fn client(s: &Scratch, args: &[&str], log: &str) -> String {
    let out: Output = Command::new("/usr/bin/python3")
        .arg(client_script())
        .arg(CRIU)
        .arg(s.img())
        .args(args)
        .env("PYTHONPATH", pycriu_path())
        .current_dir(&s.dir)
        .stdin(Stdio::null())
        .output()
        .expect("run /usr/bin/python3");
    assert!(
        out.status.success(),
        "pycriu {args:?} failed: {}{}\ncriu log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.log(log)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn pycriu_dumps_and_restores_through_criu_swrk() {
    become_subreaper();
    let s = Scratch::new("pycriu");
    let bin = workload("basic");
    let mut child = s.spawn(&bin, &[s.dir.to_str().unwrap()]);
    let pid: i32 = s.wait_file("ready", T).trim().parse().unwrap();

    let said = client(&s, &["dump", &pid.to_string()], "dump.log");
    assert_eq!(said, "dumped, restored=False");
    let st = child.wait().unwrap();
    assert!(!st.success(), "the dump should have killed the task");

    // criu swrk restores detached: the task outlives the swrk process and comes to us, the
    // subreaper.
    let said = client(&s, &["restore"], "restore.log");
    assert_eq!(said, format!("restored pid {pid}"));
    assert!(kill(pid, libc::SIGUSR1));
    let code = wait_exit(pid, T);
    assert_eq!(
        code,
        0,
        "restored task failed its checks: result {}; out: {}",
        s.read("result"),
        s.read("out")
    );
}

#[test]
fn pycriu_self_dump_returns_restored() {
    become_subreaper();
    let s = Scratch::new("pycriu-self");
    let out = std::fs::File::create(s.path("out")).unwrap();
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(client_script())
        .arg(CRIU)
        .arg(s.img())
        .arg("self-dump")
        .env("PYTHONPATH", pycriu_path())
        .current_dir(&s.dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    // Whatever the test harness holds open (pipes) must not reach the process being dumped.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let mut python = cmd.spawn().expect("run /usr/bin/python3");
    let pid = python.id() as i32;
    // The dump ends the original process.
    let st = python.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGKILL),
        "the self-dump should have killed python ({st}); out: {}\ncriu log:\n{}",
        s.read("out"),
        s.log("dump.log")
    );

    let said = client(&s, &["restore"], "restore.log");
    assert_eq!(said, format!("restored pid {pid}"));
    // Back inside its dump() call, which now says restored=True: exit 11.
    let code = wait_exit(pid, T);
    assert_eq!(
        code,
        11,
        "restored python: {}; out: {}",
        std::fs::read_to_string(s.img().join("self-dump.result")).unwrap_or_default(),
        s.read("out")
    );
    let result = std::fs::read_to_string(s.img().join("self-dump.result")).unwrap();
    assert_eq!(result, format!("restored=True pid={pid}\n"));
}
