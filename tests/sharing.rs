//! What a parent and a child share without being threads (ctests/workloads/sharing.c checks
//! from inside): cwd, root and umask (CLONE_FS) and the fd table (CLONE_FILES) come back shared
//! — a chdir or umask by one is seen by the other after restore, and so is an fd one opens or
//! closes, and a POSIX lock taken through the shared table is held again.

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

/// Whether someone holds a write lock on bytes 0-9 of the workload's "lockfile".
fn locked(s: &Scratch) -> bool {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(s.path("lockfile"))
        .unwrap();
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_len = 10;
    assert_eq!(
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) },
        0
    );
    fl.l_type != libc::F_UNLCK as i16
}

/// The fd numbers open in a process.
fn fds_of(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect();
    v.sort_unstable();
    v
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
fn clone_files_child_shares_the_fd_table_after_restore() {
    become_subreaper();
    let s = Scratch::new("sharing-files");
    let (mut spawned, root, kid) = start(&s, "files");
    let fds_before = fds_of(root);
    assert!(locked(&s), "the child's lock before the dump");
    s.dump(root, &["--file-locks"]);
    let _ = spawned.wait();
    let _ = wait_exit(kid, T);
    assert!(!locked(&s), "nobody holds the lock once the tree is gone");
    assert_eq!(s.restore(&["--file-locks"]), root);
    // The child's POSIX lock belongs to the shared table: it is back.
    assert!(locked(&s), "the lock after restore");
    // Nothing of the restore is left in the table (control pipes, executables).
    assert_eq!(
        fds_of(root),
        fds_before,
        "the shared fd table after restore"
    );
    assert_eq!(fds_of(kid), fds_before, "the child's view of the table");
    assert!(kill(kid, libc::SIGUSR1));
    assert!(kill(root, libc::SIGUSR1));
    let code = wait_exit(root, T);
    assert_eq!(
        code, 0,
        "CLONE_FILES check failed (1: the child still saw the fd the parent closed, 2: the parent \
         did not see the fd the child opened, 3: timeout)"
    );
}

/// Two siblings sharing an fd table their parent no longer shares cannot be forked into it:
/// the dump is refused, naming the sharing, and the three go on untouched (the siblings still
/// see each other's fds).
#[test]
fn fd_table_shared_by_siblings_only_is_refused() {
    become_subreaper();
    let s = Scratch::new("sharing-siblings");
    let bin = workload("sharing");
    let mut spawned = s.spawn(&bin, &[s.dir.to_str().unwrap(), "siblings"]);
    let f: Vec<i32> = s
        .wait_file("ready", T)
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let (root, first, second) = (f[0], f[1], f[2]);
    let pid_s = root.to_string();
    let out = s.criu(&["dump", "-t", &pid_s, "-D", "img", "-o", "dump.log"]);
    assert!(!out.status.success(), "the dump must fail");
    assert!(!s.img().join("inventory.img").exists());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CLONE_FILES") && err.contains("neither its parent nor a child"),
        "the refusal names the sharing: {err}"
    );
    for p in [root, first, second] {
        assert_running_untraced(p);
    }
    for p in [first, second, root] {
        assert!(kill(p, libc::SIGUSR1));
    }
    assert_eq!(
        spawned.wait().unwrap().code(),
        Some(0),
        "after the refused dump the siblings still share their fd table"
    );
}
