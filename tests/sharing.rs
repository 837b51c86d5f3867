//! What a parent and a child share without being threads (ctests/workloads/sharing.c checks
//! from inside): cwd, root and umask (CLONE_FS) come back shared — a chdir or umask by one is
//! seen by the other after restore; an fd table (CLONE_FILES) is refused at dump time, and the
//! two processes go on sharing it untouched.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

fn start(s: &Scratch, mode: &str) -> (std::process::Child, i32, i32) {
    let bin = workload("sharing");
    let child = s.spawn(&bin, &[s.dir.to_str().unwrap(), mode]);
    let ready = s.wait_file("ready", T);
    let f: Vec<i32> = ready
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    (child, f[0], f[1])
}

#[test]
fn clone_fs_child_shares_cwd_and_umask_after_restore() {
    become_subreaper();
    let s = Scratch::new("sharing-fs");
    let (mut spawned, root, kid) = start(&s, "fs");
    s.dump(root, &[]);
    let _ = spawned.wait();
    let _ = wait_exit(kid, T);
    assert_eq!(s.restore(&[]), root);
    assert!(kill(kid, libc::SIGUSR1));
    assert!(kill(root, libc::SIGUSR1));
    let code = wait_exit(root, T);
    assert_eq!(
        code, 0,
        "CLONE_FS check failed (1: the child did not see the parent's chdir/umask, 2: the parent \
         did not see the child's, 3: timeout)"
    );
}

#[test]
fn clone_files_is_refused_and_the_tasks_keep_sharing() {
    become_subreaper();
    let s = Scratch::new("sharing-files");
    let (mut spawned, root, kid) = start(&s, "files");
    let pid_s = root.to_string();
    let out = s.criu(&["dump", "-t", &pid_s, "-D", "img", "-o", "dump.log"]);
    assert!(!out.status.success(), "the dump must fail");
    assert!(!s.img().join("inventory.img").exists());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("pid {kid}")) && err.contains("CLONE_FILES"),
        "the refusal names the child and CLONE_FILES: {err}"
    );
    assert_running_untraced(root);
    assert_running_untraced(kid);
    assert!(kill(kid, libc::SIGUSR1));
    assert!(kill(root, libc::SIGUSR1));
    assert_eq!(
        spawned.wait().unwrap().code(),
        Some(0),
        "after the refused dump the two still share their fd table"
    );
}
