//! Memory shared between tasks: anonymous MAP_SHARED regions, /dev/shm file mappings and
//! memfds (fd and mappings) come back as one object that both tasks write to
//! (ctests/workloads/shared.c checks from inside).

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

#[test]
fn parent_and_child_write_to_each_other_after_restore() {
    become_subreaper();
    let s = Scratch::new("shared");
    let bin = workload("shared");
    let mut child = s.spawn(&bin, &[s.dir.to_str().unwrap()]);
    let ready = s.wait_file("ready", T);
    let f: Vec<&str> = ready.split_whitespace().collect();
    let (root, kid): (i32, i32) = (f[0].parse().unwrap(), f[1].parse().unwrap());
    let pss_before = pss_kib(root) + pss_kib(kid);
    s.dump(root, &[]);
    // The 32 MiB the child still shared with its parent were stored once, in the parent's
    // pages (the child's changed page and its own small memory are all it adds).
    let child_pages = std::fs::metadata(s.img().join("pages-2.img"))
        .unwrap()
        .len();
    assert!(
        child_pages < 4 << 20,
        "the child's image holds {child_pages} bytes of pages"
    );
    let _ = child.wait();
    let _ = wait_exit(kid, T);
    assert_eq!(s.restore(&[]), root);
    // The 32 MiB the child inherited are shared again, not copied: the proportional set size
    // of the pair stays about the same (a copy would add 32 MiB).
    let pss_after = pss_kib(root) + pss_kib(kid);
    assert!(
        pss_after < pss_before + 8 * 1024,
        "memory doubled: PSS {pss_before} KiB before, {pss_after} KiB after restore"
    );
    assert!(kill(kid, libc::SIGUSR1));
    assert!(kill(root, libc::SIGUSR1));
    let code = wait_exit(root, T);
    assert_eq!(
        code, 0,
        "shared memory check failed (1: child, 2: pattern, 3: no token, 4: memfd state)"
    );
}

/// Proportional set size of a process, in KiB.
fn pss_kib(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Kernel objects two processes share: a pipe with 40 KiB nobody read, a datagram pair with
/// queued messages, an eventfd, a file offset (ctests/workloads/sharedfds.c checks them).
#[test]
fn pipe_socketpair_eventfd_and_file_offset_shared_by_two_tasks() {
    become_subreaper();
    let s = Scratch::new("sharedfds");
    let bin = workload("sharedfds");
    let mut child = s.spawn(&bin, &[s.dir.to_str().unwrap()]);
    let ready = s.wait_file("ready", T);
    let f: Vec<i32> = ready
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let (root, kid) = (f[0], f[1]);
    s.dump(root, &[]);
    let _ = child.wait();
    let _ = wait_exit(kid, T);
    assert_eq!(s.restore(&[]), root);
    assert!(kill(kid, libc::SIGUSR1));
    assert!(kill(root, libc::SIGUSR1));
    let code = wait_exit(root, T);
    assert_eq!(
        code, 0,
        "shared kernel objects check {code} failed (see ctests/workloads/sharedfds.c)"
    );
}
