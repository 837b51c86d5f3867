//! Iterative migration: pre-dumps while the task runs, then a dump that only copies what changed,
//! then a restore that follows the chain of images. The workload (ctests/workloads/generations.c)
//! knows from its round counter which generation every page must hold and checks all of them
//! after restore.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use criu::images::{ImageDir, Kind};
use criu::pb;

const T: Duration = Duration::from_secs(60);

/// The stats an iteration wrote (stats-dump; a pre-dump also writes stats-pre-dump).
fn stats(dir: &Path) -> pb::DumpStatsEntry {
    let e: pb::StatsEntry = ImageDir::new(dir).read_one(Kind::Stats, "dump").unwrap();
    e.dump.unwrap()
}

/// Starts the generations workload on MIB MiB and waits for its first full round.
fn start_generations(s: &Scratch, mib: u32, permil: u32, mode: &str) -> (std::process::Child, i32) {
    let bin = workload("generations");
    let (m, p) = (mib.to_string(), permil.to_string());
    let mut args = vec![s.dir.to_str().unwrap(), &m, &p];
    if !mode.is_empty() {
        args.push(mode);
    }
    let child = s.spawn(&bin, &args);
    s.wait_file("progress", T);
    let pid = child.id() as i32;
    (child, pid)
}

/// Runs criu with `args` in the scratch dir; panics with its log (LOG, in DIR) on failure.
fn run(s: &Scratch, dir: &str, log: &str, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.extend_from_slice(&["-D", dir, "-o", log, "-v4"]);
    let out = s.criu(&all);
    let log_text = std::fs::read_to_string(s.path(dir).join(log)).unwrap_or_default();
    assert!(
        out.status.success(),
        "criu {args:?} failed: {}\n{log_text}",
        String::from_utf8_lossy(&out.stderr)
    );
    log_text
}

fn pre_dump(s: &Scratch, pid: i32, dir: &str, parent: Option<&str>, extra: &[&str]) {
    std::fs::create_dir_all(s.path(dir)).unwrap();
    let pid = pid.to_string();
    let mut args = vec!["pre-dump", "-t", &pid];
    if let Some(p) = parent {
        args.extend_from_slice(&["--prev-images-dir", p]);
    }
    args.extend_from_slice(extra);
    run(s, dir, "pre-dump.log", &args);
}

fn final_dump(s: &Scratch, pid: i32, dir: &str, parent: Option<&str>, extra: &[&str]) {
    std::fs::create_dir_all(s.path(dir)).unwrap();
    let pid = pid.to_string();
    let mut args = vec!["dump", "-t", &pid, "--track-mem"];
    if let Some(p) = parent {
        args.extend_from_slice(&["--prev-images-dir", p]);
    }
    args.extend_from_slice(extra);
    run(s, dir, "dump.log", &args);
}

/// Restores from DIR, asks the task to check itself, and returns its exit code.
fn restore_and_check(s: &Scratch, dir: &str) -> i32 {
    run(
        s,
        dir,
        "restore.log",
        &["restore", "-d", "--pidfile", "restored.pid"],
    );
    let pid: i32 = std::fs::read_to_string(s.path(dir).join("restored.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(kill(pid, libc::SIGUSR1));
    wait_exit(pid, T)
}

/// Restores from DIR and asserts the task found every page as it must be.
fn assert_restores_exactly(s: &Scratch, dir: &str, round: u32) {
    assert_eq!(
        restore_and_check(s, dir),
        0,
        "round {round}: {}",
        s.read("out")
    );
}

fn has_tracker_fd(pid: i32) -> bool {
    tracker_fds(pid) > 0
}

/// How many userfaultfds task `pid` holds.
fn tracker_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:[userfaultfd]")
        })
        .count()
}

#[test]
fn three_predumps_then_dump_restore_every_page_of_512_mib() {
    become_subreaper();
    let s = Scratch::new("predump512");
    // 1% of the pages a round, a different 1% each round.
    let (mut child, pid) = start_generations(&s, 512, 10, "");
    pre_dump(&s, pid, "1", None, &[]);
    assert!(has_tracker_fd(pid), "no tracker left in the task");
    pre_dump(&s, pid, "2", Some("../1"), &[]);
    pre_dump(&s, pid, "3", Some("../2"), &["--pre-dump-mode", "read"]);
    final_dump(&s, pid, "4", Some("../3"), &[]);
    let _ = child.wait();
    let first = stats(&s.path("1"));
    assert!(first.pages_written >= 131072, "{first:?}");
    assert_eq!(first.pages_skipped_parent, 0);
    for d in ["2", "3", "4"] {
        let st = stats(&s.path(d));
        assert!(
            st.pages_skipped_parent > 0 && st.pages_written < first.pages_written,
            "{d}: {st:?}"
        );
        // Every page is in the images once: written here or recorded as in the parent.
        assert!(
            st.pages_written + st.pages_skipped_parent >= 131072,
            "{d}: {st:?}"
        );
    }
    assert!(s.path("1/stats-pre-dump").exists());
    assert_eq!(
        std::fs::read_link(s.path("4/parent")).unwrap(),
        Path::new("../3")
    );
    assert_eq!(restore_and_check(&s, "4"), 0, "{}", s.read("out"));
}

#[test]
fn second_predump_of_a_task_writing_one_percent_writes_about_one_percent() {
    become_subreaper();
    let s = Scratch::new("predump1pct");
    // 64 MiB: 16384 pages; the same 1% rewritten every round.
    let (mut child, pid) = start_generations(&s, 64, 10, "fixed");
    pre_dump(&s, pid, "1", None, &[]);
    std::thread::sleep(Duration::from_millis(100));
    pre_dump(&s, pid, "2", Some("../1"), &[]);
    let st = stats(&s.path("2"));
    let total = st.pages_written + st.pages_skipped_parent;
    assert!(total >= 16384, "{st:?}");
    // 164 data pages (1%) plus the task's stack, libc data and the like.
    assert!(
        st.pages_written >= 160 && st.pages_written <= 16384 / 50,
        "second pre-dump wrote {} of {total} pages",
        st.pages_written
    );
    final_dump(&s, pid, "3", Some("../2"), &[]);
    let _ = child.wait();
    assert!(stats(&s.path("3")).pages_written <= 16384 / 50);
    assert_eq!(restore_and_check(&s, "3"), 0, "{}", s.read("out"));
}

/// Three pre-dumps and a dump of a task that keeps mapping, moving, protecting
/// (mprotect NONE/READ/RW), dropping and unmapping small regions meanwhile: the restore is
/// exact. Should a region come back wrong, the workload prints what befell it and when.
#[test]
fn predumps_racing_with_munmap_mremap_mprotect_restore_exactly() {
    become_subreaper();
    for round in 0..3 {
        let s = Scratch::new(&format!("predumpchurn{round}"));
        let (mut child, pid) = start_generations(&s, 64, 30, "churn");
        pre_dump(&s, pid, "1", None, &[]);
        pre_dump(&s, pid, "2", Some("../1"), &[]);
        pre_dump(&s, pid, "3", Some("../2"), &[]);
        final_dump(&s, pid, "4", Some("../3"), &[]);
        let _ = child.wait();
        assert_restores_exactly(&s, "4", round);
    }
}

/// Memory a tracked task drops together with its page table (MADV_DONTNEED of whole 2 MiB
/// blocks, a mapping unmapped and mapped again untouched) reads as zero after the chain is
/// restored, though the first pre-dump holds data there (ctests/workloads/dropped.c).
#[test]
fn memory_dropped_with_its_page_tables_between_predumps_restores_as_zero() {
    become_subreaper();
    let s = Scratch::new("predumpdropped");
    let mut child = s.spawn(&workload("dropped"), &[s.dir.to_str().unwrap()]);
    s.wait_file("ready", T);
    let pid = child.id() as i32;
    pre_dump(&s, pid, "1", None, &[]);
    assert!(kill(pid, libc::SIGUSR2));
    s.wait_file("dropped", T);
    pre_dump(&s, pid, "2", Some("../1"), &[]);
    // 8 MiB kept whole, 4 of the 8 MiB block region: no more can be the parent's.
    let st = stats(&s.path("2"));
    assert!(st.pages_skipped_parent < 3 * 1024 + 64, "{st:?}");
    final_dump(&s, pid, "3", Some("../2"), &[]);
    let _ = child.wait();
    assert_eq!(restore_and_check(&s, "3"), 0, "{}", s.read("out"));
}

/// A mapping that mremap merges back into its tracked neighbour loses its tracking with its
/// pages still write-protected; writes while it is untracked, and after it is tracked again,
/// must all reach the images (ctests/workloads/remerged.c says how).
#[test]
fn writes_to_a_mapping_that_lost_its_tracking_to_an_mremap_merge_are_not_missed() {
    become_subreaper();
    // Found tracked again by a pre-dump's listing, and by a dump left running.
    for (round, leave_running) in [(0, false), (1, true)] {
        let s = Scratch::new(&format!("predumpremerged{round}"));
        let mut child = s.spawn(&workload("remerged"), &[s.dir.to_str().unwrap()]);
        s.wait_file("ready", T);
        let pid = child.id() as i32;
        let step = |n: u32| {
            assert!(kill(pid, libc::SIGUSR2));
            let t0 = std::time::Instant::now();
            while s.read("step").trim() != n.to_string() {
                assert!(t0.elapsed() < T, "step {n} not taken: {}", s.read("out"));
                std::thread::sleep(Duration::from_millis(2));
            }
        };
        pre_dump(&s, pid, "1", None, &[]);
        step(1);
        pre_dump(&s, pid, "2", Some("../1"), &[]);
        step(2);
        if leave_running {
            final_dump(&s, pid, "3", Some("../2"), &["--leave-running"]);
        } else {
            pre_dump(&s, pid, "3", Some("../2"), &[]);
        }
        step(3);
        final_dump(&s, pid, "4", Some("../3"), &[]);
        let _ = child.wait();
        assert_restores_exactly(&s, "4", round);
    }
}

/// A tracker whose state file is gone (the state directory wiped) is recognised in the task:
/// the next pre-dump replaces it and copies everything, and the dump leaves it out of the
/// images instead of refusing an unknown userfaultfd.
#[test]
fn a_tracker_whose_state_was_lost_is_replaced_and_left_out_of_the_images() {
    become_subreaper();
    let s = Scratch::new("predumplosttracker");
    let (mut child, pid) = start_generations(&s, 32, 10, "");
    pre_dump(&s, pid, "1", None, &[]);
    let lose_state = || {
        for e in std::fs::read_dir("/run/criu-rs/track").unwrap().flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{pid}-"))
            {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
    };
    assert_eq!(tracker_fds(pid), 1);
    lose_state();
    pre_dump(&s, pid, "2", Some("../1"), &[]);
    assert_eq!(
        tracker_fds(pid),
        1,
        "the lost tracker was closed, a new one made"
    );
    let st = stats(&s.path("2"));
    assert_eq!(st.pages_skipped_parent, 0, "nothing trusted: {st:?}");
    pre_dump(&s, pid, "3", Some("../2"), &[]);
    assert!(stats(&s.path("3")).pages_skipped_parent > 0);
    // Lost again just before the dump: left out of the images.
    lose_state();
    final_dump(&s, pid, "4", Some("../3"), &[]);
    let _ = child.wait();
    assert_eq!(restore_and_check(&s, "4"), 0, "{}", s.read("out"));
}

#[test]
fn lost_or_stale_tracking_copies_everything_again() {
    become_subreaper();
    let s = Scratch::new("predumplost");
    let (mut child, pid) = start_generations(&s, 64, 10, "");
    pre_dump(&s, pid, "1", None, &[]);
    pre_dump(&s, pid, "2", Some("../1"), &[]);
    assert!(stats(&s.path("2")).pages_skipped_parent > 0);
    // The tracker was reset by iteration 2: its bits say nothing about changes since 1.
    pre_dump(&s, pid, "3", Some("../1"), &[]);
    let st = stats(&s.path("3"));
    assert_eq!(st.pages_skipped_parent, 0, "stale parent used: {st:?}");
    // Tracking stopped from outside (an abandoned migration): the task is as before.
    run(&s, "3", "untrack.log", &["untrack", "-t", &pid.to_string()]);
    assert!(!has_tracker_fd(pid));
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    assert!(
        !smaps
            .lines()
            .any(|l| l.starts_with("VmFlags:") && l.contains(" uw")),
        "a VMA is still registered"
    );
    // Lost tracker: the next iteration copies everything, and the chain still restores.
    final_dump(&s, pid, "4", Some("../3"), &[]);
    let _ = child.wait();
    let st = stats(&s.path("4"));
    assert_eq!(st.pages_skipped_parent, 0, "{st:?}");
    assert_eq!(restore_and_check(&s, "4"), 0, "{}", s.read("out"));
}

#[test]
fn dump_left_running_keeps_or_ends_tracking_and_images_hold_no_tracker() {
    become_subreaper();
    let s = Scratch::new("predumpleave");
    let (mut child, pid) = start_generations(&s, 32, 10, "");
    pre_dump(&s, pid, "1", None, &[]);
    // Dump, left running, tracking on: the tracker stays, but not in the images.
    final_dump(&s, pid, "2", Some("../1"), &["--leave-running"]);
    assert!(has_tracker_fd(pid));
    let fds: Vec<pb::FdinfoEntry> = ImageDir::new(s.path("2"))
        .read_all(Kind::Fdinfo, 1)
        .unwrap();
    assert!(fds.iter().all(|f| f.fd < 100), "{fds:?}");
    // Dump left running without --track-mem: tracking ends.
    std::fs::create_dir_all(s.path("3")).unwrap();
    let p = pid.to_string();
    run(
        &s,
        "3",
        "dump.log",
        &[
            "dump",
            "-t",
            &p,
            "--prev-images-dir",
            "../2",
            "--leave-running",
        ],
    );
    assert!(stats(&s.path("3")).pages_skipped_parent > 0);
    assert!(!has_tracker_fd(pid));
    // And a plain restore of that chain is exact.
    assert!(kill(pid, libc::SIGKILL));
    let _ = child.wait();
    assert_eq!(restore_and_check(&s, "3"), 0, "{}", s.read("out"));
}

#[test]
fn auto_dedup_and_dedup_free_parent_pages_that_were_rewritten() {
    become_subreaper();
    let s = Scratch::new("predumpdedup");
    let (mut child, pid) = start_generations(&s, 64, 50, "");
    pre_dump(&s, pid, "1", None, &[]);
    let blocks = |p: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(s.path(p)).unwrap().blocks()
    };
    let before = blocks("1/pages-1.img");
    pre_dump(&s, pid, "2", Some("../1"), &["--auto-dedup"]);
    let after = blocks("1/pages-1.img");
    let rewritten = stats(&s.path("2")).pages_written;
    assert!(
        after * 512 + rewritten * 4096 / 2 <= before * 512,
        "pages file of 1 went from {before} to {after} blocks, {rewritten} pages rewritten"
    );
    // `criu dedup` does the same after the fact.
    pre_dump(&s, pid, "3", Some("../2"), &[]);
    let before = blocks("2/pages-1.img");
    run(&s, "3", "dedup.log", &["dedup"]);
    assert!(blocks("2/pages-1.img") < before);
    final_dump(&s, pid, "4", Some("../3"), &["--auto-dedup"]);
    let _ = child.wait();
    assert_eq!(restore_and_check(&s, "4"), 0, "{}", s.read("out"));
}

#[test]
fn a_child_forked_while_tracked_is_dumped_without_the_inherited_tracker() {
    become_subreaper();
    let s = Scratch::new("predumpfork");
    let (mut child, pid) = start_generations(&s, 32, 10, "");
    pre_dump(&s, pid, "1", None, &[]);
    // The child gets a copy of its parent's tracker with the rest of the fd table.
    assert!(kill(pid, libc::SIGUSR2));
    let kid: i32 = s.wait_file("child", T).trim().parse().unwrap();
    assert!(has_tracker_fd(kid));
    pre_dump(&s, pid, "2", Some("../1"), &[]);
    final_dump(&s, pid, "3", Some("../2"), &[]);
    let _ = child.wait();
    let _ = wait_exit(kid, T);
    run(
        &s,
        "3",
        "restore.log",
        &["restore", "-d", "--pidfile", "restored.pid"],
    );
    assert!(!has_tracker_fd(pid) && !has_tracker_fd(kid));
    // The child exits on SIGUSR1 (its parent does not reap it: a zombie until the parent goes).
    assert!(kill(kid, libc::SIGUSR1));
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string(format!("/proc/{kid}/stat")).is_ok_and(|st| {
        st.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    }) {
        assert!(t0.elapsed() < T, "the restored child did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(kill(pid, libc::SIGUSR1));
    assert_eq!(wait_exit(pid, T), 0, "{}", s.read("out"));
    assert_eq!(wait_exit(kid, T), 0);
}

#[test]
fn corrupt_parent_images_cost_a_full_copy_not_a_wrong_restore() {
    become_subreaper();
    let s = Scratch::new("predumpcorrupt");
    let (mut child, pid) = start_generations(&s, 16, 10, "");
    pre_dump(&s, pid, "1", None, &[]);
    let pm = s.path(&format!("1/pagemap-{pid}.img"));
    let bytes = std::fs::read(&pm).unwrap();
    std::fs::write(&pm, &bytes[..bytes.len().min(13)]).unwrap();
    final_dump(&s, pid, "2", Some("../1"), &[]);
    let _ = child.wait();
    assert_eq!(stats(&s.path("2")).pages_skipped_parent, 0);
    assert_eq!(restore_and_check(&s, "2"), 0, "{}", s.read("out"));
}
