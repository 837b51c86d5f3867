//! `make bench`: dump and restore throughput against this machine's limits, measured in the
//! same run. Not a test: it prints numbers, it does not judge them.
//!
//! The limits: memcpy between warm buffers (the copy itself), filling fresh memory (page
//! allocation: a dump writes into new page-cache pages, a restore into new anonymous pages, and
//! in a VM whose host reclaims freed memory this, not the copy, is usually the ceiling), and
//! writing a tmpfs file. With CRIU_BIN set, the same dump and restore through that binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criu::images::{ImageDir, Kind};
use criu::pb;

const GIB: usize = 1 << 30;

fn gbps(bytes: f64, d: Duration) -> f64 {
    bytes / d.as_secs_f64() / 1e9
}

fn best_of<F: FnMut() -> Duration>(n: usize, mut f: F) -> Duration {
    (0..n).map(|_| f()).min().unwrap()
}

fn memcpy_bandwidth() -> f64 {
    let a = vec![1u8; GIB];
    let mut b = vec![2u8; GIB];
    let d = best_of(3, || {
        let t = Instant::now();
        b.copy_from_slice(&a);
        std::hint::black_box(&b);
        t.elapsed()
    });
    gbps(GIB as f64, d)
}

fn fresh_fill_bandwidth() -> f64 {
    let d = best_of(3, || {
        let t = Instant::now();
        let v = vec![0x5au8; GIB];
        std::hint::black_box(&v);
        let e = t.elapsed();
        drop(v);
        e
    });
    gbps(GIB as f64, d)
}

fn tmpfs_write_bandwidth(dir: &Path) -> f64 {
    use std::io::Write;
    let chunk = vec![7u8; 4 << 20];
    let path = dir.join("bandwidth-probe");
    let d = best_of(3, || {
        let _ = std::fs::remove_file(&path);
        let mut f = std::fs::File::create(&path).unwrap();
        let t = Instant::now();
        // Sized first, as the dump sizes a pages image.
        f.set_len(GIB as u64).unwrap();
        for _ in 0..(GIB / chunk.len()) {
            f.write_all(&chunk).unwrap();
        }
        t.elapsed()
    });
    let _ = std::fs::remove_file(&path);
    gbps(GIB as f64, d)
}

fn workload(repo: &Path, out: &Path, name: &str) -> PathBuf {
    let bin = out.join(name);
    let st = Command::new("cc")
        .args(["-O2", "-pthread", "-o"])
        .arg(&bin)
        .arg(repo.join(format!("ctests/workloads/{name}.c")))
        .status()
        .unwrap();
    assert!(st.success());
    bin
}

/// A workload run as `BIN DIR MIB`, silent, with only fds 0-2: fds our caller leaked would
/// make it undumpable.
fn workload_command(bin: &Path, dir: &Path, mib: usize) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(bin);
    cmd.arg(dir)
        .arg(mib.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    cmd
}

fn start(bin: &Path, dir: &Path, mib: usize) -> Child {
    let _ = std::fs::remove_file(dir.join("beat"));
    let child = workload_command(bin, dir, mib).spawn().unwrap();
    let t = Instant::now();
    while std::fs::metadata(dir.join("beat"))
        .map(|m| m.len())
        .unwrap_or(0)
        == 0
    {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "workload did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn wait_gone(pid: i32) {
    while Path::new(&format!("/proc/{pid}")).exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_exit(pid: i32) -> i32 {
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}

struct Run {
    dump_wall: Duration,
    frozen: Duration,
    memdump: Duration,
    pages: u64,
    restore_wall: Duration,
}

fn run(criu: &Path, bin: &Path, dir: &Path, mib: usize) -> Run {
    let img = dir.join("img");
    let _ = std::fs::remove_dir_all(&img);
    std::fs::create_dir_all(&img).unwrap();
    let mut child = start(bin, dir, mib);
    let pid = child.id() as i32;
    let t = Instant::now();
    let st = Command::new(criu)
        .args(["dump", "-t", &pid.to_string(), "-D"])
        .arg(&img)
        .args(["-o", "dump.log"])
        .status()
        .unwrap();
    let dump_wall = t.elapsed();
    assert!(
        st.success(),
        "dump failed: see {}",
        img.join("dump.log").display()
    );
    let _ = child.wait();
    wait_gone(pid);
    let stats: pb::StatsEntry = ImageDir::new(&img).read_one(Kind::Stats, "dump").unwrap();
    let d = stats.dump.unwrap();
    let t = Instant::now();
    let st = Command::new(criu)
        .args(["restore", "-d", "-D"])
        .arg(&img)
        .args(["-o", "restore.log"])
        .status()
        .unwrap();
    let restore_wall = t.elapsed();
    assert!(
        st.success(),
        "restore failed: see {}",
        img.join("restore.log").display()
    );
    // The restored task checks its memory on SIGUSR1 (we are its subreaper).
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    let code = wait_exit(pid);
    assert_eq!(code, 0, "the restored task failed its self-check");
    Run {
        dump_wall,
        frozen: Duration::from_micros(d.frozen_time as u64),
        memdump: Duration::from_micros(d.memdump_time as u64),
        pages: d.pages_written,
        restore_wall,
    }
}

/// Proportional set size of a process, in KiB.
fn pss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Pss:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Every process in the session of `root`.
fn session(root: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .collect();
        if f[3].parse::<i32>() == Ok(root) {
            out.push(pid);
        }
    }
    out
}

fn threads_of(pids: &[i32]) -> usize {
    pids.iter()
        .map(|p| {
            std::fs::read_dir(format!("/proc/{p}/task"))
                .map(|d| d.count())
                .unwrap_or(0)
        })
        .sum()
}

/// A tree of 50 processes with 100 threads sharing 64 MiB copy-on-write.
fn forest(criu: &Path, repo: &Path, dir: &Path) {
    let bin = workload(repo, dir, "forest");
    let img = dir.join("forest-img");
    let _ = std::fs::remove_dir_all(&img);
    std::fs::create_dir_all(&img).unwrap();
    let _ = std::fs::remove_file(dir.join("ready"));
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(&bin);
    cmd.arg(dir)
        .arg("64")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let root = child.id() as i32;
    while !dir.join("ready").exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let pids = session(root);
    let threads = threads_of(&pids);
    let pss_before: u64 = pids.iter().map(|&p| pss_kib(p)).sum();
    let t = Instant::now();
    let st = Command::new(criu)
        .args(["dump", "-t", &root.to_string(), "-D"])
        .arg(&img)
        .args(["-o", "dump.log"])
        .status()
        .unwrap();
    let dump_wall = t.elapsed();
    assert!(
        st.success(),
        "forest dump failed: see {}",
        img.join("dump.log").display()
    );
    let _ = child.wait();
    for &p in &pids {
        if p != root {
            wait_exit(p);
        }
    }
    let stats: pb::StatsEntry = ImageDir::new(&img).read_one(Kind::Stats, "dump").unwrap();
    let d = stats.dump.unwrap();
    let image_bytes: u64 = std::fs::read_dir(&img)
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum();
    let t = Instant::now();
    let st = Command::new(criu)
        .args(["restore", "-d", "-D"])
        .arg(&img)
        .args(["-o", "restore.log"])
        .status()
        .unwrap();
    let restore_wall = t.elapsed();
    assert!(
        st.success(),
        "forest restore failed: see {}",
        img.join("restore.log").display()
    );
    let after = session(root);
    let pss_after: u64 = after.iter().map(|&p| pss_kib(p)).sum();
    let threads_after = threads_of(&after);
    for &p in &after {
        unsafe { libc::kill(p, libc::SIGUSR1) };
    }
    assert_eq!(
        wait_exit(root),
        0,
        "the restored forest failed its self-check"
    );
    println!(
        "tree: {} processes, {threads} threads, 64 MiB shared copy-on-write:",
        pids.len()
    );
    println!(
        "  dump    {dump_wall:?} (frozen {:?}), images {:.1} MiB",
        Duration::from_micros(d.frozen_time as u64),
        image_bytes as f64 / (1 << 20) as f64
    );
    println!(
        "  restore {restore_wall:?} ({} processes, {threads_after} threads back)",
        after.len()
    );
    println!(
        "  memory (sum of PSS): {:.1} MiB before, {:.1} MiB after restore ({:.2}x)",
        pss_before as f64 / 1024.0,
        pss_after as f64 / 1024.0,
        pss_after as f64 / pss_before.max(1) as f64
    );
}

/// Starts the generations workload: `mib` MiB, every page written once, then 0.1% of the pages
/// (a different 0.1% each round) at about `rate` MiB/s. Returns once the first round is done.
fn start_generations(bin: &Path, dir: &Path, mib: usize, rate: usize) -> Child {
    use std::os::unix::process::CommandExt;
    let progress = dir.join("progress");
    let _ = std::fs::remove_file(&progress);
    let mut cmd = Command::new(bin);
    cmd.arg(dir)
        .args([mib.to_string(), "1".into(), "rot".into(), rate.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    let t = Instant::now();
    // The round counter reads 1 once round 0 (every page) is done and round 1 too.
    while std::fs::read_to_string(&progress)
        .ok()
        .and_then(|p| p.trim().parse::<u64>().ok())
        .unwrap_or(0)
        < 1
    {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "workload did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Runs `criu ACTION -t PID -D img/NAME [--prev-images-dir ../PREV]` and returns its stats.
fn iteration(
    criu: &Path,
    img: &Path,
    action: &str,
    pid: i32,
    name: &str,
    prev: Option<&str>,
) -> pb::DumpStatsEntry {
    let d = img.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let mut cmd = Command::new(criu);
    cmd.args([action, "-t", &pid.to_string(), "-D"])
        .arg(&d)
        .args(["-o", "log", "--track-mem"]);
    if let Some(p) = prev {
        cmd.args(["--prev-images-dir", &format!("../{p}")]);
    }
    let st = cmd.status().unwrap();
    assert!(
        st.success(),
        "{action} failed: see {}",
        d.join("log").display()
    );
    let stats: pb::StatsEntry = ImageDir::new(&d).read_one(Kind::Stats, "dump").unwrap();
    stats.dump.unwrap()
}

fn ms(us: u32) -> f64 {
    us as f64 / 1000.0
}

/// Live migration: a task dirtying memory at a steady rate, dumped after 0, 1 and 3 pre-dumps.
fn migration(criu: &Path, repo: &Path, dir: &Path) {
    let mib: usize = std::env::var("BENCH_MIGRATION_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    let rate = 64;
    let bin = workload(repo, dir, "generations");
    let img = dir.join("migration-img");
    println!(
        "migration: one process with {mib} MiB, dirtying {rate} MiB/s (0.1% of its pages a round):"
    );
    // Frozen windows of a few ms are at the mercy of this VM's first-touch page allocation and
    // of anything else running: the 3-pre-dump chain runs three times, each trial printed.
    for pre_dumps in [0usize, 1, 3, 3, 3] {
        let _ = std::fs::remove_dir_all(&img);
        let mut child = start_generations(&bin, dir, mib, rate);
        let pid = child.id() as i32;
        let mut line = String::new();
        let mut prev: Option<String> = None;
        for n in 1..=pre_dumps {
            let name = format!("pre{n}");
            let st = iteration(criu, &img, "pre-dump", pid, &name, prev.as_deref());
            line += &format!(
                " pre-dump {n}: frozen {:.1} ms, {} pages;",
                ms(st.frozen_time),
                st.pages_written
            );
            prev = Some(name);
        }
        let st = iteration(criu, &img, "dump", pid, "dump", prev.as_deref());
        let _ = child.wait();
        wait_gone(pid);
        // The last chain is restored and checks every page.
        let checked = if pre_dumps == 3 {
            let ok = Command::new(criu)
                .args(["restore", "-d", "-D"])
                .arg(img.join("dump"))
                .args(["-o", "restore.log"])
                .status()
                .unwrap()
                .success();
            assert!(ok, "migration restore failed");
            unsafe { libc::kill(pid, libc::SIGUSR1) };
            assert_eq!(wait_exit(pid), 0, "the restored task failed its self-check");
            " (restored, every page checked)"
        } else {
            ""
        };
        println!(
            "  {pre_dumps} pre-dumps:{line} final dump: frozen {:.1} ms, {} pages written, {} in parent images{checked}",
            ms(st.frozen_time),
            st.pages_written,
            st.pages_skipped_parent
        );
    }
    println!("  (aims: final frozen time under 50 ms after 3 pre-dumps, each pre-dump frozen under 10 ms)");
    let _ = std::fs::remove_dir_all(&img);
}

fn read_trimmed(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Starts the lazy workload on `mib` MiB in `dir` and waits until it has filled its memory.
fn start_lazy_workload(bin: &Path, dir: &Path, mib: usize) -> (std::process::Child, i32) {
    let child = workload_command(bin, dir, mib)
        .arg("bench")
        .spawn()
        .unwrap();
    while read_trimmed(&dir.join("ready")).is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id() as i32;
    (child, pid)
}

/// What the restored lazy workload wrote: when it woke (CLOCK_MONOTONIC ns) and its fault
/// latencies (p50, p99 in ns).
fn task_report(dir: &Path) -> (u64, Vec<u64>) {
    let woke: u64 = read_trimmed(&dir.join("woke")).parse().unwrap();
    let lat: Vec<u64> = read_trimmed(&dir.join("latency"))
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    (woke, lat)
}

/// How long the lazy-pages daemon took to deliver every page, from its log (zero if it does
/// not say).
fn delivery_time(log: &Path) -> Duration {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .split("all pages delivered in ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|x| x.parse::<f64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs_f64)
}

/// One lazy restore of the lazy workload with `mib` MiB: (time from the start of `criu restore`
/// to the task running, fault latency p50 and p99 as the task saw them, `criu restore` wall,
/// time the daemon took to deliver everything). `lazy` false restores eagerly instead.
fn lazy_run(criu: &Path, bin: &Path, dir: &Path, mib: usize, lazy: bool) -> [Duration; 5] {
    let img = dir.join("img");
    if lazy {
        let _ = std::fs::remove_dir_all(&img);
        std::fs::create_dir_all(&img).unwrap();
        for f in ["ready", "woke", "latency"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        let (mut child, pid) = start_lazy_workload(bin, dir, mib);
        let st = Command::new(criu)
            .args(["dump", "-t", &pid.to_string(), "-D"])
            .arg(&img)
            .args(["-o", "dump.log"])
            .status()
            .unwrap();
        assert!(
            st.success(),
            "dump failed: see {}",
            img.join("dump.log").display()
        );
        let _ = child.wait();
        wait_gone(pid);
    }
    let pid: i32 = {
        let s: pb::PstreeEntry = ImageDir::new(&img).read_one(Kind::Pstree, "").unwrap();
        s.pid as i32
    };
    let mut daemon = None;
    if lazy {
        let _ = std::fs::remove_file(img.join("lazy-pages.socket"));
        daemon = Some(
            Command::new(criu)
                .args(["lazy-pages", "-D"])
                .arg(&img)
                .args(["-o", "lazy.log", "-v4"])
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        );
        while !img.join("lazy-pages.socket").exists() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let t0 = monotonic_ns();
    let t = Instant::now();
    let mut cmd = Command::new(criu);
    cmd.args(["restore", "-d", "-D"])
        .arg(&img)
        .args(["-o", "restore.log"]);
    if lazy {
        cmd.arg("--lazy-pages");
    }
    let st = cmd.status().unwrap();
    let restore_wall = t.elapsed();
    assert!(
        st.success(),
        "restore failed: see {}",
        img.join("restore.log").display()
    );
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    let code = wait_exit(pid);
    assert_eq!(code, 0, "the restored task failed its self-check");
    let (woke, lat) = task_report(dir);
    let mut delivered = Duration::ZERO;
    if let Some(mut d) = daemon {
        assert!(
            d.wait().unwrap().success(),
            "lazy-pages failed: see {}",
            img.join("lazy.log").display()
        );
        delivered = delivery_time(&img.join("lazy.log"));
    }
    [
        Duration::from_nanos(woke.saturating_sub(t0)),
        Duration::from_nanos(lat[0]),
        Duration::from_nanos(lat[1]),
        restore_wall,
        delivered,
    ]
}

/// Post-copy: how soon a lazily restored task runs, whatever its size, and what a fault costs it.
fn lazy_section(criu: &Path, repo: &Path, dir: &Path) {
    let bin = workload(repo, dir, "lazy");
    println!(
        "lazy restore (criu lazy-pages from local images; the task touches 2000 random pages):"
    );
    // A first round warms the page cache and the binaries; its numbers are not shown.
    lazy_run(criu, &bin, dir, 64, true);
    for mib in [64usize, 2048] {
        let l = lazy_run(criu, &bin, dir, mib, true);
        let e = lazy_run(criu, &bin, dir, mib, false);
        println!(
            "  {mib:5} MiB  running after {:7.2} ms (eager restore: {:7.2} ms); fault p50 {:6.1} us, \
             p99 {:6.1} us; all pages in after {:.2} s",
            l[0].as_secs_f64() * 1e3,
            e[0].as_secs_f64() * 1e3,
            l[1].as_secs_f64() * 1e6,
            l[2].as_secs_f64() * 1e6,
            l[4].as_secs_f64()
        );
    }
    let _ = std::fs::remove_dir_all(dir.join("img"));
}

/// One lazy migration over loopback of the lazy workload with `mib` MiB: `criu dump
/// --lazy-pages` on the source, the images copied, `criu lazy-pages --page-server` and `criu
/// restore --lazy-pages` in a pid namespace of their own (the frozen source still holds the
/// pid). Returns (total: the dump's start to the source's exit once every page was fetched;
/// the dump's start to the restored task running; fault p50; fault p99; the daemon's time to
/// deliver everything).
fn lazy_migration_run(criu: &Path, bin: &Path, dir: &Path, mib: usize) -> [Duration; 5] {
    let (src, dst) = (dir.join("src"), dir.join("dst"));
    for d in [&src, &dst] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d).unwrap();
    }
    for f in ["ready", "woke", "latency", "go", "restore.t0"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let (mut child, pid) = start_lazy_workload(bin, dir, mib);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let t0 = Instant::now();
    let mut dump = Command::new(criu)
        .args(["dump", "-t", &pid.to_string(), "-D"])
        .arg(&src)
        .args([
            "-o",
            "dump.log",
            "-v4",
            "--lazy-pages",
            "--address",
            "127.0.0.1",
        ])
        .args(["--port", &port])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    while !std::fs::read_to_string(src.join("dump.log"))
        .unwrap_or_default()
        .contains("wait for the destination")
    {
        assert!(
            dump.try_wait().unwrap().is_none(),
            "dump failed: see {}",
            src.join("dump.log").display()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        if e.file_name().to_string_lossy().ends_with(".img") {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
    // `date` reads CLOCK_REALTIME; the workload writes CLOCK_MONOTONIC: converted below.
    let script = format!(
        r#"
cd '{dir}'
'{criu}' lazy-pages --page-server --address 127.0.0.1 --port {port} -D dst -o lazy.log -v4 &
d=$!
while [ ! -S dst/lazy-pages.socket ]; do sleep 0.001; done
date +%s%N > restore.t0
'{criu}' restore -d -D dst -o restore.log --lazy-pages --pidfile restored.pid || exit 1
kill -USR1 $(cat dst/restored.pid)
while [ -z "$(cat latency 2>/dev/null)" ]; do sleep 0.01; done
wait $d
"#,
        dir = dir.display(),
        criu = criu.display(),
    );
    let st = Command::new("unshare")
        .args([
            "-p",
            "-f",
            "--kill-child",
            "--mount-proc",
            "sh",
            "-c",
            &script,
        ])
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(
        st.success(),
        "the destination failed: see {}",
        dst.join("lazy.log").display()
    );
    assert!(
        dump.wait().unwrap().success(),
        "the source failed: see {}",
        src.join("dump.log").display()
    );
    let total = t0.elapsed();
    let _ = child.wait();
    let realtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let offset = realtime - monotonic_ns();
    let restore_t0: u64 = read_trimmed(&dir.join("restore.t0")).parse().unwrap();
    let (woke, lat) = task_report(dir);
    [
        total,
        Duration::from_nanos((woke + offset).saturating_sub(restore_t0)),
        Duration::from_nanos(lat[0]),
        Duration::from_nanos(lat[1]),
        delivery_time(&dst.join("lazy.log")),
    ]
}

/// Post-copy migration over loopback: the whole migration, and what the task sees meanwhile.
fn lazy_migration_section(criu: &Path, repo: &Path, dir: &Path) {
    let bin = workload(repo, dir, "lazy");
    println!(
        "lazy migration (dump --lazy-pages -> lazy-pages --page-server over loopback; the task \
         touches 2000 random pages):"
    );
    lazy_migration_run(criu, &bin, dir, 64);
    for mib in [256usize, 2048] {
        let r = lazy_migration_run(criu, &bin, dir, mib);
        println!(
            "  {mib:5} MiB  total migration {:6.2} s; running {:7.2} ms after `criu restore` \
             started; fault p50 {:6.1} us, p99 {:6.1} us; all pages in after {:.2} s",
            r[0].as_secs_f64(),
            r[1].as_secs_f64() * 1e3,
            r[2].as_secs_f64() * 1e6,
            r[3].as_secs_f64() * 1e6,
            r[4].as_secs_f64()
        );
    }
    let _ = std::fs::remove_dir_all(dir.join("src"));
    let _ = std::fs::remove_dir_all(dir.join("dst"));
}

/// Raw loopback TCP: 2 GiB from one thread to another, 1 MiB writes, reads into 8 MiB; with
/// `into`, the receiver writes what it reads to a new file there (what a page server must do).
fn loopback_tcp_bandwidth(into: Option<&Path>) -> f64 {
    use std::io::{Read, Write};
    let into = into.map(Path::to_path_buf);
    let d = best_of(if into.is_some() { 1 } else { 3 }, || {
        let into = into.clone();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let rx = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut out = into.map(|p| std::fs::File::create(p.join("tcp-probe")).unwrap());
            let mut buf = vec![0u8; 8 << 20];
            let mut got = 0usize;
            while got < 2 * GIB {
                let n = c.read(&mut buf).unwrap();
                assert!(n > 0);
                if let Some(f) = out.as_mut() {
                    f.write_all(&buf[..n]).unwrap();
                }
                got += n;
            }
        });
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let chunk = vec![3u8; 1 << 20];
        let t = Instant::now();
        for _ in 0..(2 * GIB / chunk.len()) {
            c.write_all(&chunk).unwrap();
        }
        rx.join().unwrap();
        t.elapsed()
    });
    gbps(2.0 * GIB as f64, d)
}

/// `mib` MiB dumped through `criu page-server` on loopback, then restored from the
/// destination's directory and self-checked. Returns (pages, memory copy time, dump wall).
fn page_server_run(criu: &Path, bin: &Path, dir: &Path, mib: usize) -> (u64, Duration, Duration) {
    let (src, dst) = (dir.join("ps-src"), dir.join("ps-dst"));
    for d in [&src, &dst] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d).unwrap();
    }
    // The destination is a tmpfs of its own without huge pages: the server receives with
    // write(), and a write into a huge tmpfs page first clears all 2 MiB of it.
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4g", "criu-rs-bench-ps"])
        .arg(&dst)
        .status()
        .is_ok_and(|s| s.success());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let mut child = start(bin, dir, mib);
    let pid = child.id() as i32;
    let st = Command::new(criu)
        .args([
            "page-server",
            "--daemon",
            "--address",
            "127.0.0.1",
            "--port",
            &port,
        ])
        .args(["--pidfile", "ps.pid", "-o", "ps.log", "-D"])
        .arg(&dst)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(
        st.success(),
        "page-server failed: see {}",
        dst.join("ps.log").display()
    );
    let server: i32 = std::fs::read_to_string(dst.join("ps.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let t = Instant::now();
    let st = Command::new(criu)
        .args([
            "dump",
            "-t",
            &pid.to_string(),
            "--page-server",
            "--address",
            "127.0.0.1",
        ])
        .args(["--port", &port, "-o", "dump.log", "-D"])
        .arg(&src)
        .status()
        .unwrap();
    let wall = t.elapsed();
    assert!(
        st.success(),
        "dump failed: see {}",
        src.join("dump.log").display()
    );
    assert_eq!(
        wait_exit(server),
        0,
        "page server failed: see {}",
        dst.join("ps.log").display()
    );
    let _ = child.wait();
    wait_gone(pid);
    let stats: pb::StatsEntry = ImageDir::new(&src).read_one(Kind::Stats, "dump").unwrap();
    let d = stats.dump.unwrap();
    // The destination restores: the source's metadata images join the received pages.
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".img") && !name.starts_with("sent-pagemap-") {
            std::fs::copy(e.path(), dst.join(&name)).unwrap();
        }
    }
    let st = Command::new(criu)
        .args(["restore", "-d", "-o", "restore.log", "-D"])
        .arg(&dst)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "restore failed: see {}",
        dst.join("restore.log").display()
    );
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    assert_eq!(wait_exit(pid), 0, "the restored task failed its self-check");
    if mounted {
        let _ = Command::new("umount").arg(&dst).status();
    }
    for d in [&src, &dst] {
        let _ = std::fs::remove_dir_all(d);
    }
    (
        d.pages_written,
        Duration::from_micros(d.memdump_time as u64),
        wall,
    )
}

fn page_server(criu: &Path, bin: &Path, dir: &Path, mib: usize) {
    let raw = loopback_tcp_bandwidth(None);
    // The same into fresh tmpfs pages (on a VM whose host backs new memory lazily, allocating
    // the destination's page cache, not the network, is the ceiling).
    let probe = dir.join("tcp-probe-dir");
    std::fs::create_dir_all(&probe).unwrap();
    let probe_mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4g", "criu-rs-bench-tcp"])
        .arg(&probe)
        .status()
        .is_ok_and(|s| s.success());
    let to_file = loopback_tcp_bandwidth(Some(&probe));
    if probe_mounted {
        let _ = Command::new("umount").arg(&probe).status();
    }
    let _ = std::fs::remove_dir_all(&probe);
    let (pages, copy, wall) = page_server_run(criu, bin, dir, mib);
    let bytes = (pages * 4096) as f64;
    let rate = gbps(bytes, copy);
    println!("page server on loopback ({mib} MiB received into a tmpfs without huge pages):");
    println!("  raw loopback TCP              {raw:6.2} GB/s");
    println!("  loopback TCP into a new file  {to_file:6.2} GB/s");
    println!(
        "  dump through the page server  {rate:6.2} GB/s  (memory copy {copy:?}; whole `criu dump` {wall:?})"
    );
    println!(
        "  page server / raw TCP         {:5.0}%",
        100.0 * rate / raw
    );
    println!(
        "  page server / TCP into a file {:5.0}%",
        100.0 * rate / to_file
    );
}

fn main() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // CARGO_TARGET_DIR when the build went elsewhere.
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo.join("target"));
    let criu = target.join("release/criu");
    assert!(
        criu.exists(),
        "build target/release/criu first (make bench does)"
    );
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    // Images go to a tmpfs of our own with transparent huge pages for files sized up front
    // (mount -o huge=within_size): on this kind of VM allocating 4 KiB tmpfs pages, not copying
    // into them, caps the write rate of a pages image, which the dump sizes before filling it,
    // while a huge page for each small image (huge=always) costs a final dump tens of ms.
    // BENCH_DIR picks another directory instead.
    let (dir, mounted) = match std::env::var("BENCH_DIR") {
        Ok(d) => (PathBuf::from(d), false),
        Err(_) => {
            let d = PathBuf::from(format!("/tmp/criu-rs-bench-{}", std::process::id()));
            std::fs::create_dir_all(&d).unwrap();
            let st = Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    "huge=within_size,size=16g",
                    "criu-rs-bench",
                ])
                .arg(&d)
                .status()
                .unwrap();
            assert!(st.success(), "mount a tmpfs on {}", d.display());
            (d, true)
        }
    };
    // BENCH_ONLY=lazy: only the lazy-restore sections (lazy-migration: only the migration).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only == "lazy" || only == "lazy-migration" {
        if only == "lazy" {
            lazy_section(&criu, &repo, &dir);
        }
        lazy_migration_section(&criu, &repo, &dir);
        if mounted {
            let _ = Command::new("umount").arg(&dir).status();
            let _ = std::fs::remove_dir(&dir);
        }
        return;
    }
    let bin = workload(&repo, &dir, "heartbeat");
    let mib: usize = std::env::var("BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);

    println!(
        "criu-rs bench: one process with {mib} MiB of touched anonymous memory, images in {}{}",
        dir.display(),
        if mounted {
            " (tmpfs, huge=within_size)"
        } else {
            ""
        }
    );
    let memcpy = memcpy_bandwidth();
    let fresh = fresh_fill_bandwidth();
    let tmpfs = tmpfs_write_bandwidth(&dir);
    println!("machine limits (this run):");
    println!("  memcpy, warm buffers          {memcpy:6.2} GB/s");
    println!("  fill fresh anonymous memory   {fresh:6.2} GB/s");
    println!("  write a new file there        {tmpfs:6.2} GB/s");

    // BENCH_ONLY=page-server or migration: only that section.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only == "page-server" || only == "migration" {
        if only == "page-server" {
            page_server(&criu, &bin, &dir, mib);
        } else {
            migration(&criu, &repo, &dir);
        }
        if mounted {
            let _ = Command::new("umount").arg(&dir).status();
            let _ = std::fs::remove_dir(&dir);
        }
        return;
    }
    let ours = run(&criu, &bin, &dir, mib);
    let bytes = (ours.pages * 4096) as f64;
    let dump_rate = gbps(bytes, ours.memdump);
    let restore_rate = gbps(bytes, ours.restore_wall);
    println!("criu-rs:");
    println!(
        "  pages written                 {} ({:.0} MiB)",
        ours.pages,
        bytes / (1 << 20) as f64
    );
    println!(
        "  dump   {dump_rate:6.2} GB/s  (memory copy {:?}; whole `criu dump` {:?}; frozen {:?})",
        ours.memdump, ours.dump_wall, ours.frozen
    );
    println!(
        "  restore {restore_rate:5.2} GB/s  (whole `criu restore` {:?})",
        ours.restore_wall
    );
    println!(
        "  dump / memcpy                 {:5.0}%",
        100.0 * dump_rate / memcpy
    );
    println!(
        "  dump / tmpfs write            {:5.0}%",
        100.0 * dump_rate / tmpfs
    );
    println!(
        "  restore / fresh-memory fill   {:5.0}%",
        100.0 * restore_rate / fresh
    );
    println!(
        "  restore / dump                {:5.2}x",
        restore_rate / dump_rate
    );

    forest(&criu, &repo, &dir);
    migration(&criu, &repo, &dir);
    page_server(&criu, &bin, &dir, mib);
    lazy_section(&criu, &repo, &dir);
    lazy_migration_section(&criu, &repo, &dir);

    if let Ok(other) = std::env::var("CRIU_BIN") {
        // Pre-dumps need memory tracking; CRIU knows only soft-dirty, which this kernel lacks.
        let mut child = start_generations(&workload(&repo, &dir, "generations"), &dir, 64, 64);
        let pre = dir.join("criu-pre");
        std::fs::create_dir_all(&pre).unwrap();
        let ok = Command::new(&other)
            .args(["pre-dump", "-t", &child.id().to_string(), "-D"])
            .arg(&pre)
            .args(["-o", "log"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        println!(
            "{other} pre-dump: {}",
            if ok {
                "works"
            } else {
                "fails (see criu-pre/log)"
            }
        );
        let _ = child.kill();
        let _ = child.wait();
        let theirs = run(Path::new(&other), &bin, &dir, mib);
        let tb = (theirs.pages * 4096) as f64;
        println!("{other}:");
        println!(
            "  dump   {:6.2} GB/s (wall {:?}, frozen {:?})",
            gbps(tb, theirs.dump_wall),
            theirs.dump_wall,
            theirs.frozen
        );
        println!(
            "  restore {:5.2} GB/s (wall {:?})",
            gbps(tb, theirs.restore_wall),
            theirs.restore_wall
        );
        println!(
            "  criu-rs / it: dump wall {:.2}x faster, restore wall {:.2}x faster",
            theirs.dump_wall.as_secs_f64() / ours.dump_wall.as_secs_f64(),
            theirs.restore_wall.as_secs_f64() / ours.restore_wall.as_secs_f64()
        );
    }
    let _ = std::fs::remove_dir_all(dir.join("img"));
    if mounted {
        let _ = Command::new("umount").arg(&dir).status();
        let _ = std::fs::remove_dir(&dir);
    }
}
