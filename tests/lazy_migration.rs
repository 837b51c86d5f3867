//! Lazy migration (post-copy through the network): `criu dump --lazy-pages --port N` writes
//! every image but the private anonymous pages and serves those from the frozen tree; on the
//! destination `criu lazy-pages --page-server --address A --port N` fetches them as the
//! restored task (`criu restore --lazy-pages`) touches them, and pushes the rest.
//!
//! Source and destination run on this one machine, so the destination lives in its own pid
//! namespace (`unshare -p -f --mount-proc`): the frozen source task still holds the pid the
//! restored one gets. The workload is ctests/workloads/lazy.c (256 MiB checksummed; on SIGUSR1
//! it forks, mremaps, munmaps and madvises while its pages still arrive, and checks all).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const T: Duration = Duration::from_secs(120);

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the workload and `criu dump --lazy-pages` on it (in the background: the dump serves
/// the pages until the destination is done). Returns (workload, dump, workload pid) once the
/// images are written.
fn start_source(s: &Scratch, mib: u32, addr: &str, port: u16) -> (KillOnDrop, KillOnDrop, i32) {
    start_source_with(s, mib, addr, port, &[])
}

fn start_source_with(
    s: &Scratch,
    mib: u32,
    addr: &str,
    port: u16,
    extra: &[String],
) -> (KillOnDrop, KillOnDrop, i32) {
    let bin = workload("lazy");
    let mib = mib.to_string();
    let child = KillOnDrop(s.spawn(&bin, &[s.dir.to_str().unwrap(), &mib]));
    let pid: i32 = s.wait_file("ready", T).trim().parse().unwrap();
    std::fs::remove_file(s.path("ready")).unwrap();
    let port = port.to_string();
    let pid_s = pid.to_string();
    let dump = Command::new(CRIU)
        .args([
            "dump",
            "-t",
            &pid_s,
            "-D",
            "img",
            "-o",
            "dump.log",
            "-v4",
            "--lazy-pages",
            "--address",
            addr,
            "--port",
            &port,
        ])
        .args(extra)
        .current_dir(&s.dir)
        .env_remove("CRIU_CONFIG_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run criu dump");
    let mut dump = KillOnDrop(dump);
    let t0 = Instant::now();
    while !s.log("dump.log").contains("wait for the destination") {
        if let Some(st) = dump.0.try_wait().unwrap() {
            panic!("dump ended ({st}): {}", s.log("dump.log"));
        }
        assert!(
            t0.elapsed() < T,
            "the dump never served: {}",
            s.log("dump.log")
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    (child, dump, pid)
}

/// The images go to the destination's directory, as `scp` would copy them.
fn copy_images(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".img") {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

/// The destination, in a fresh pid namespace (under `prefix`, e.g. `ip netns exec NS`): the
/// daemon, the lazy restore, then (once the test creates `go`) SIGUSR1 to the restored task;
/// it waits for the task's result or death and records the daemon's exit status.
fn start_destination(s: &Scratch, prefix: &[&str], addr: &str, port: u16) -> KillOnDrop {
    start_destination_with(s, prefix, addr, port, &[])
}

fn start_destination_with(
    s: &Scratch,
    prefix: &[&str],
    addr: &str,
    port: u16,
    extra: &[String],
) -> KillOnDrop {
    let script = format!(
        r#"
cd '{dir}'
'{criu}' lazy-pages --page-server --address {addr} --port {port} -D dst -o lazy.log -v4 {extra} &
d=$!
while [ ! -S dst/lazy-pages.socket ]; do
    kill -0 $d 2>/dev/null || {{ echo "daemon failed" > dst/failed; exit 1; }}
    sleep 0.01
done
'{criu}' restore -d -D dst -o restore.log -v4 --lazy-pages --pidfile restored.pid || {{
    echo "restore failed" > dst/failed; exit 1; }}
p=$(cat dst/restored.pid)
while [ ! -e go ]; do sleep 0.005; done
kill -USR1 $p
while [ -z "$(cat result 2>/dev/null)" ]; do
    st=$(cut -d' ' -f3 /proc/$p/stat 2>/dev/null)
    [ "$st" = Z ] || [ -z "$st" ] && break
    sleep 0.01
done
wait $d
echo $? > dst/daemon.status
"#,
        dir = s.dir.display(),
        criu = CRIU,
        extra = extra.join(" "),
    );
    let mut cmd: Vec<&str> = prefix.to_vec();
    cmd.extend_from_slice(&[
        "unshare",
        "-p",
        "-f",
        "--kill-child",
        "--mount-proc",
        "sh",
        "-c",
        &script,
    ]);
    KillOnDrop(
        Command::new(cmd[0])
            .args(&cmd[1..])
            .env_remove("CRIU_CONFIG_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run the destination"),
    )
}

fn wait_child(c: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            return st;
        }
        assert!(t0.elapsed() < limit, "{what} did not end");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn wait_for(s: &Scratch, rel: &str) {
    let t0 = Instant::now();
    while !s.path(rel).exists() {
        assert!(
            !s.path("dst/failed").exists(),
            "{}: {}\n{}\n{}",
            s.read("dst/failed"),
            s.read("dst/lazy.log"),
            s.read("dst/restore.log"),
            s.log("dump.log")
        );
        assert!(t0.elapsed() < T, "no {rel}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A whole migration: source and destination (both sides given as `prefix` and addresses),
/// checked from inside the restored task. Returns the seconds from the dump's start to the
/// end of the transfer.
fn migrate(s: &Scratch, mib: u32, prefix: &[&str], listen: &str, connect: &str) -> f64 {
    migrate_with(s, mib, prefix, listen, connect, &[], &[])
}

fn migrate_with(
    s: &Scratch,
    mib: u32,
    prefix: &[&str],
    listen: &str,
    connect: &str,
    src_extra: &[String],
    dst_extra: &[String],
) -> f64 {
    let port = free_port();
    let t0 = Instant::now();
    let (mut child, mut dump, _pid) = start_source_with(s, mib, listen, port, src_extra);
    let images = s.img();
    // Nothing of the private memory was written on the source.
    let pages: u64 = std::fs::read_dir(&images)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(
        pages < 1 << 20,
        "{pages} bytes of pages written on the source"
    );
    copy_images(&images, &s.path("dst"));
    let mut dst = start_destination_with(s, prefix, connect, port, dst_extra);
    wait_for(s, "dst/restored.pid");
    std::fs::write(s.path("go"), "").unwrap();
    let st = wait_child(&mut dst.0, T, "the destination");
    let total = t0.elapsed().as_secs_f64();
    let lazy_log = s.read("dst/lazy.log");
    assert!(st.success(), "{lazy_log}");
    assert!(
        s.read("result").starts_with("ok "),
        "the restored task failed its checks: {}\n{lazy_log}",
        s.read("result")
    );
    assert_eq!(s.read("dst/daemon.status").trim(), "0", "{lazy_log}");
    assert!(lazy_log.contains("all pages delivered"), "{lazy_log}");
    // The source ends once the destination is done, and kills its frozen tree.
    assert!(
        wait_child(&mut dump.0, T, "the dump").success(),
        "{}",
        s.log("dump.log")
    );
    assert_eq!(
        child.0.wait().unwrap().code(),
        None,
        "the source task is killed"
    );
    let dump_log = s.log("dump.log");
    assert!(dump_log.contains("the tree was killed"), "{dump_log}");
    // stats-dump (written once the source is done) counts the lazy pages apart.
    let e: criu::pb::StatsEntry = criu::images::ImageDir::new(&images)
        .read_one(criu::images::Kind::Stats, "dump")
        .unwrap();
    let st = e.dump.unwrap();
    assert!(
        st.pages_lazy >= (mib as u64 - 1) * 256 && st.pages_written < 256,
        "{st:?}"
    );
    assert_eq!(
        dump_log.contains("without --tls"),
        !src_extra.iter().any(|a| a == "--tls"),
        "{dump_log}"
    );
    eprintln!(
        "{}",
        dump_log
            .lines()
            .chain(lazy_log.lines())
            .filter(|l| l.contains("lazy"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    total
}

#[test]
fn lazy_migration_over_loopback() {
    become_subreaper();
    let s = Scratch::new("lazymig");
    let total = migrate(&s, 256, &[], "127.0.0.1", "127.0.0.1");
    eprintln!("lazy migration of 256 MiB over loopback: {total:.3} s");
}

/// The destination in another network namespace: the pages cross a veth pair.
#[test]
fn lazy_migration_across_a_veth_pair() {
    become_subreaper();
    let s = Scratch::new("lazymig-veth");
    let net = NetnsPair::new("crlz", 214);
    let (host, peer) = (net.host_ip.clone(), net.peer_ip.clone());
    let total = migrate(&s, 256, &net.exec(), &host, &host);
    let dump_log = s.log("dump.log");
    assert!(
        dump_log.contains(&format!("connected from {peer}:")),
        "{dump_log}"
    );
    eprintln!("lazy migration of 256 MiB across a veth pair: {total:.3} s");
    drop(net);
}

/// The source dies while pages are still on their way: its frozen tree dies with it, and the
/// destination's daemon says so and kills the restored task (which never finishes its checks:
/// no page became zeros under it).
#[test]
fn source_killed_mid_transfer_kills_the_restored_task() {
    become_subreaper();
    let s = Scratch::new("lazymig-srckill");
    let port = free_port();
    let (mut child, mut dump, _pid) = start_source(&s, 256, "127.0.0.1", port);
    copy_images(&s.img(), &s.path("dst"));
    let mut dst = start_destination(&s, &[], "127.0.0.1", port);
    wait_for(&s, "dst/restored.pid");
    dump.0.kill().unwrap();
    dump.0.wait().unwrap();
    // The frozen source tree dies with its dumper: it never runs again next to its copy.
    let st = wait_child(&mut child.0, T, "the source task");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGKILL),
        "{st}"
    );
    std::fs::write(s.path("go"), "").unwrap();
    wait_child(&mut dst.0, T, "the destination");
    let lazy_log = s.read("dst/lazy.log");
    assert!(
        s.read("result").is_empty(),
        "the restored task finished its checks: {}\n{lazy_log}",
        s.read("result")
    );
    assert_ne!(s.read("dst/daemon.status").trim(), "0", "{lazy_log}");
    assert!(
        lazy_log.contains("the source's page server at 127.0.0.1") && lazy_log.contains("is gone"),
        "{lazy_log}"
    );
    assert!(
        lazy_log.contains("killed the lazily restored tasks"),
        "{lazy_log}"
    );
    assert!(!lazy_log.contains("all pages delivered"), "{lazy_log}");
    for l in lazy_log
        .lines()
        .filter(|l| l.contains("Error") || l.contains("killed"))
    {
        eprintln!("destination: {l}");
    }
}

/// The destination dies mid-transfer: the source says so, kills its frozen tree and fails.
#[test]
fn destination_gone_mid_transfer_ends_the_source() {
    become_subreaper();
    let s = Scratch::new("lazymig-dstkill");
    let port = free_port();
    let (mut child, mut dump, _pid) = start_source(&s, 256, "127.0.0.1", port);
    copy_images(&s.img(), &s.path("dst"));
    let mut dst = start_destination(&s, &[], "127.0.0.1", port);
    wait_for(&s, "dst/restored.pid");
    // The destination's pid namespace dies with its init.
    dst.0.kill().unwrap();
    dst.0.wait().unwrap();
    let st = wait_child(&mut dump.0, T, "the dump");
    let dump_log = s.log("dump.log");
    assert!(!st.success(), "{dump_log}");
    assert!(
        dump_log.contains("the destination 127.0.0.1") && dump_log.contains("went away"),
        "{dump_log}"
    );
    assert!(
        dump_log.contains("the dumped tree was killed"),
        "{dump_log}"
    );
    for l in dump_log.lines().filter(|l| l.contains("killed")) {
        eprintln!("source: {l}");
    }
    assert_eq!(
        child.0.wait().unwrap().code(),
        None,
        "the source task is killed"
    );
}

/// Images of a lazy dump hold no private memory: restoring them without the source is refused
/// before any task exists (a restored task would read zeros), and so is serving them from disk.
#[test]
fn lazy_images_are_refused_without_the_source() {
    become_subreaper();
    let s = Scratch::new("lazymig-refuse");
    let port = free_port();
    let (_child, _dump, _pid) = start_source(&s, 64, "127.0.0.1", port);
    copy_images(&s.img(), &s.path("dst"));
    // In a pid namespace of its own: the source task still holds the pid.
    let dir = s.dir.to_str().unwrap();
    let out = Command::new("unshare")
        .args(["-p", "-f", "--kill-child", "--mount-proc", CRIU])
        .args(["restore", "-d", "-D", "dst", "-o", "plain.log", "-v4"])
        .current_dir(dir)
        .env_remove("CRIU_CONFIG_FILE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let log = s.read("dst/plain.log");
    assert!(
        log.contains("leave pages on the source of a lazy migration"),
        "{log}"
    );
    assert!(!log.contains("Restore finished"), "{log}");
    let out = s.criu(&["lazy-pages", "-D", "dst", "-o", "local.log", "-v4"]);
    assert!(!out.status.success());
    let log = s.read("dst/local.log");
    assert!(log.contains("lazy-pages --page-server"), "{log}");
    assert!(!s.path("dst/lazy-pages.socket").exists());
    // Options that cannot go with a lazy dump.
    for (args, why) in [
        (&["--page-server"][..], "not --page-server"),
        (&["--leave-running"][..], "not with --leave-running"),
    ] {
        let mut all = vec![
            "dump",
            "-t",
            "1",
            "-D",
            "dst",
            "--lazy-pages",
            "--port",
            "1",
        ];
        all.extend_from_slice(args);
        let out = s.criu(&all);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{args:?}: {err}");
    }
}

/// A tree whose root is init of a pid namespace of its own (ctests/workloads/pidns.c: five
/// processes, a thread, a zombie, two sessions) migrates lazily: the copy gets a fresh pid
/// namespace, so it can live next to the frozen source on this machine, and the daemon serves
/// tasks whose pids in the images are not ours. Each process checks its ids and memory.
#[test]
fn lazy_migration_of_a_pid_namespace_root() {
    become_subreaper();
    let s = Scratch::new("lazymig-pidns");
    let bin = workload("pidns");
    let mut launcher = KillOnDrop(s.spawn(&bin, &[s.dir.to_str().unwrap()]));
    let root: i32 = s.wait_file("ready", T).trim().parse().unwrap();
    let port = free_port();
    let port_s = port.to_string();
    let root_s = root.to_string();
    let mut dump = KillOnDrop(
        Command::new(CRIU)
            .args(["dump", "-t", &root_s, "-D", "img", "-o", "dump.log", "-v4"])
            .args(["--lazy-pages", "--address", "127.0.0.1", "--port", &port_s])
            .current_dir(&s.dir)
            .env_remove("CRIU_CONFIG_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while !s.log("dump.log").contains("wait for the destination") {
        assert!(
            dump.0.try_wait().unwrap().is_none(),
            "{}",
            s.log("dump.log")
        );
        assert!(t0.elapsed() < T, "{}", s.log("dump.log"));
        std::thread::sleep(Duration::from_millis(5));
    }
    copy_images(&s.img(), &s.path("dst"));
    let mut daemon = KillOnDrop(
        Command::new(CRIU)
            .args(["lazy-pages", "--page-server", "--address", "127.0.0.1"])
            .args(["--port", &port_s, "-D", "dst", "-o", "lazy.log", "-v4"])
            .current_dir(&s.dir)
            .env_remove("CRIU_CONFIG_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    while !s.path("dst/lazy-pages.socket").exists() {
        assert!(
            daemon.0.try_wait().unwrap().is_none(),
            "{}",
            s.read("dst/lazy.log")
        );
        assert!(t0.elapsed() < T);
        std::thread::sleep(Duration::from_millis(2));
    }
    let out = s.criu(&[
        "restore",
        "-d",
        "-D",
        "dst",
        "-o",
        "restore.log",
        "-v4",
        "--lazy-pages",
        "--pidfile",
        "restored.pid",
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.read("dst/restore.log")
    );
    let restored: i32 = s.read("dst/restored.pid").trim().parse().unwrap();
    assert_ne!(restored, root, "a fresh namespace, a new host pid");
    assert!(kill(restored, libc::SIGUSR1));
    let lazy_log = s.read("dst/lazy.log");
    assert_eq!(
        wait_exit(restored, T),
        0,
        "restored tree's checks: {lazy_log}"
    );
    let st = wait_child(&mut daemon.0, T, "lazy-pages");
    let lazy_log = s.read("dst/lazy.log");
    assert!(st.success(), "{lazy_log}");
    assert!(lazy_log.contains("all pages delivered"), "{lazy_log}");
    let served: u64 = lazy_log
        .split("serving ")
        .skip(1)
        .filter_map(|r| r.split(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        served >= 4096,
        "the 4 MiB of each process came lazily: {lazy_log}"
    );
    assert!(
        wait_child(&mut dump.0, T, "the dump").success(),
        "{}",
        s.log("dump.log")
    );
    let _ = launcher.0.wait();
    eprintln!("pid namespace tree: {served} KiB served lazily");
}

/// The pages cross TLS: the source's certificate names its address, the destination shows one
/// of the same test CA. A plain source warns that anyone may read the memory; this one does not.
#[test]
fn lazy_migration_over_tls() {
    become_subreaper();
    let s = Scratch::new("lazymig-tls");
    let pki = s.path("pki");
    make_ca(
        &pki,
        "ca",
        &[("source", "IP:127.0.0.1"), ("dest", "DNS:dest.test")],
    );
    let src = tls_args(&pki, "ca", "source");
    let dst = tls_args(&pki, "ca", "dest");
    migrate_with(&s, 64, &[], "127.0.0.1", "127.0.0.1", &src, &dst);
    let dump_log = s.log("dump.log");
    assert!(!dump_log.contains("without --tls"), "{dump_log}");
}
