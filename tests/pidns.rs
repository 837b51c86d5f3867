//! Pid namespaces: a tree whose root is pid 1 of a namespace of its own is dumped with the
//! namespace's pids and restored into a fresh namespace while the original still runs (its pids
//! stay taken, as on the source of a lazy migration); each restored process checks its pids,
//! session, group and memory from inside (ctests/workloads/pidns.c). A tree only partly in a pid
//! namespace, or a root that is not the namespace's init, is refused and keeps running.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

/// pid ppid sid pgid (in the namespace) and the host pid, as the workload saved them.
fn ids(s: &Scratch, name: &str) -> Vec<i32> {
    s.read(&format!("ids.{name}"))
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect()
}

/// The pids of `pid` in each pid namespace, ours first (NSpid).
fn ns_pids(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|v| v.split_whitespace().map(|p| p.parse().unwrap()).collect())
        .unwrap_or_default()
}

/// crit decodes `file` of the images; its JSON.
fn crit_decode_image(s: &Scratch, file: &str) -> serde_json::Value {
    crit_decode(&s.img().join(file))
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

#[test]
fn init_of_a_pid_namespace_is_restored_into_a_fresh_one_while_the_original_runs() {
    become_subreaper();
    let s = Scratch::new("pidns");
    let bin = workload("pidns");
    let mut launcher = s.spawn(&bin, &[s.dir.to_str().unwrap()]);
    let root: i32 = s.wait_file("ready", T).trim().parse().unwrap();
    let names = ["R", "T", "S", "S1"];
    let before: Vec<Vec<i32>> = names.iter().map(|n| ids(&s, n)).collect();
    assert_eq!(
        before[0][..4],
        [1, 0, 1, 1],
        "the root is init of its namespace"
    );
    assert_eq!(before[0][4], root);

    s.dump(root, &["--leave-running"]);
    assert_running_untraced(root);

    // CRIU's view of the images: the namespace's pids, and the namespace in the ids.
    let pstree = crit_decode_image(&s, "pstree.img");
    let entries = pstree["entries"].as_array().unwrap();
    let t_tid: i64 = s.read("tid.T").trim().parse().unwrap();
    for (n, b) in names.iter().zip(&before) {
        let e = entries
            .iter()
            .find(|e| e["pid"] == b[0])
            .unwrap_or_else(|| panic!("{n} (pid {}) in pstree.img: {pstree}", b[0]));
        assert_eq!(
            [&e["ppid"], &e["sid"], &e["pgid"]],
            [b[1], b[2], b[3]].map(serde_json::Value::from).each_ref(),
            "{n}: {e}"
        );
        if *n == "T" {
            assert_eq!(e["threads"], serde_json::json!([b[0], t_tid]), "{e}");
        }
    }
    assert_eq!(entries.len(), 5, "four processes and the zombie: {pstree}");
    let ids = crit_decode_image(&s, "ids-1.img");
    let inventory = crit_decode_image(&s, "inventory.img");
    assert_ne!(
        ids["entries"][0]["pid_ns_id"], inventory["entries"][0]["root_ids"]["pid_ns_id"],
        "the root's pid namespace is not the dumper's"
    );

    // The original keeps pids 1.. of its namespace and its host pids: the copy gets a new one.
    let restored = s.restore(&[]);
    assert_ne!(restored, root);
    let nspids = ns_pids(restored);
    assert_eq!(nspids.len(), 2, "restored root in a namespace of its own");
    assert_eq!(nspids[1], 1, "restored root is pid 1 there");
    assert_ne!(
        std::fs::read_link(format!("/proc/{restored}/ns/pid")).unwrap(),
        std::fs::read_link(format!("/proc/{root}/ns/pid")).unwrap(),
        "a fresh namespace, not the original's"
    );
    // Its children: T, the zombie and S, with their namespace pids.
    let mut kids: Vec<i32> = children(restored)
        .into_iter()
        .map(|c| ns_pids(c)[1])
        .collect();
    kids.sort_unstable();
    let zombie = children(restored)
        .into_iter()
        .find(|&c| state_and_tracer(c).is_some_and(|st| st.0 == 'Z'))
        .expect("the zombie is back");
    let mut expect = vec![before[1][0], before[2][0], ns_pids(zombie)[1]];
    expect.sort_unstable();
    assert_eq!(kids, expect);

    // Each restored process checks its pid, ppid, sid, pgid and memory from inside.
    assert!(kill(restored, libc::SIGUSR1));
    assert_eq!(wait_exit(restored, T), 0, "restored tree's checks");
    // Restored again, through RPC (Debian's pycriu driving `criu swrk`): the answer's pid is
    // the root's in our namespace.
    let pycriu = pycriu_path();
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pycriu/client.py"))
        .arg(CRIU)
        .arg(s.img())
        .arg("restore")
        .env("PYTHONPATH", pycriu)
        .current_dir(&s.dir)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run /usr/bin/python3");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pycriu restore: {said}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log("restore.log")
    );
    let again: i32 = said
        .trim()
        .strip_prefix("restored pid ")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        ns_pids(again)[1..],
        [1],
        "RPC restore: pid {again} is init of a namespace"
    );
    assert!(kill(again, libc::SIGUSR1));
    assert_eq!(wait_exit(again, T), 0, "tree restored through RPC: checks");

    // The original ran on untouched and passes the same checks.
    assert_running_untraced(root);
    assert!(kill(root, libc::SIGUSR1));
    let st = launcher.wait().unwrap();
    assert_eq!(st.code(), Some(0), "original tree's checks");
}

/// Pre-dumped as the dump sees it (images named by the namespace's pids), then dumped on top of
/// the pre-dump: the restored tree checks itself, and the dump took pages from the pre-dump.
#[test]
fn init_of_a_pid_namespace_is_pre_dumped_then_dumped_and_restored_from_the_chain() {
    become_subreaper();
    let s = Scratch::new("pidns-predump");
    let bin = workload("pidns");
    let mut launcher = s.spawn(&bin, &[s.dir.to_str().unwrap()]);
    let root: i32 = s.wait_file("ready", T).trim().parse().unwrap();
    let root_s = root.to_string();
    std::fs::create_dir_all(s.path("pre")).unwrap();
    let out = s.criu(&[
        "pre-dump",
        "-t",
        &root_s,
        "-D",
        "pre",
        "-o",
        "pre-dump.log",
        "-v4",
    ]);
    assert!(
        out.status.success(),
        "pre-dump: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(s.path("pre/pre-dump.log")).unwrap_or_default()
    );
    assert_running_untraced(root);
    assert!(
        s.path("pre/pagemap-1.img").exists(),
        "the root's pages are named by its pid in the namespace"
    );
    s.dump(
        root,
        &[
            "--prev-images-dir",
            "../pre",
            "--track-mem",
            "--leave-running",
        ],
    );
    let stats = crit_decode_image(&s, "stats-dump");
    let dump = &stats["entries"][0]["dump"];
    assert!(
        dump["pages_skipped_parent"].as_u64().unwrap_or(0) > 0,
        "the dump used the pre-dump's pages: {dump}"
    );
    let restored = s.restore(&[]);
    assert_eq!(ns_pids(restored)[1..], [1]);
    assert!(kill(restored, libc::SIGUSR1));
    assert_eq!(wait_exit(restored, T), 0, "restored tree's checks");
    assert!(kill(root, libc::SIGUSR1));
    let st = launcher.wait().unwrap();
    assert_eq!(st.code(), Some(0), "original tree's checks");
}

#[test]
fn tree_partly_in_a_pid_namespace_or_rooted_below_its_init_is_refused() {
    become_subreaper();
    let s = Scratch::new("pidns-refused");
    let bin = workload("pidns");
    let mut launcher = s.spawn(&bin, &[s.dir.to_str().unwrap()]);
    let root: i32 = s.wait_file("ready", T).trim().parse().unwrap();
    let t_host = ids(&s, "T")[4];

    // The launcher lives in our namespace, its child is init of another one.
    let err = s.refused_dump(launcher.id() as i32, &["-v4"], "dump.log");
    assert!(
        err.contains(&format!("pid {root}")) && err.contains("pid namespace"),
        "{err}"
    );
    assert_running_untraced(launcher.id() as i32);
    assert_running_untraced(root);

    // T is pid 2 of the namespace, not its init.
    let err = s.refused_dump(t_host, &["-v4"], "dump2.log");
    assert!(
        err.contains(&format!("pid {t_host}")) && err.contains("not the init"),
        "{err}"
    );
    assert_running_untraced(t_host);

    assert!(kill(root, libc::SIGUSR1));
    let st = launcher.wait().unwrap();
    assert_eq!(st.code(), Some(0), "the tree ran on untouched");
}
