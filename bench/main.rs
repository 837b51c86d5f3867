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

fn start(bin: &Path, dir: &Path, mib: usize) -> Child {
    use std::os::unix::process::CommandExt;
    let _ = std::fs::remove_file(dir.join("beat"));
    let mut cmd = Command::new(bin);
    cmd.arg(dir)
        .arg(mib.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Only 0-2: fds our caller leaked would make the workload undumpable.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
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
        let mut child = Command::new(bin);
        child
            .arg(dir)
            .arg(mib.to_string())
            .arg("bench")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        use std::os::unix::process::CommandExt;
        unsafe {
            child.pre_exec(|| {
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                Ok(())
            });
        }
        let mut child = child.spawn().unwrap();
        while read_trimmed(&dir.join("ready")).is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let pid = child.id() as i32;
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
    let woke: u64 = read_trimmed(&dir.join("woke")).parse().unwrap();
    let lat: Vec<u64> = read_trimmed(&dir.join("latency"))
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let mut delivered = Duration::ZERO;
    if let Some(mut d) = daemon {
        assert!(
            d.wait().unwrap().success(),
            "lazy-pages failed: see {}",
            img.join("lazy.log").display()
        );
        let log = std::fs::read_to_string(img.join("lazy.log")).unwrap_or_default();
        if let Some(secs) = log
            .split("all pages delivered in ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|x| x.parse::<f64>().ok())
        {
            delivered = Duration::from_secs_f64(secs);
        }
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
    // Images go to a tmpfs of our own with transparent huge pages (mount -o huge=always): on
    // this kind of VM allocating 4 KiB tmpfs pages, not copying into them, caps the write rate.
    // BENCH_DIR picks another directory instead.
    let (dir, mounted) = match std::env::var("BENCH_DIR") {
        Ok(d) => (PathBuf::from(d), false),
        Err(_) => {
            let d = PathBuf::from(format!("/tmp/criu-rs-bench-{}", std::process::id()));
            std::fs::create_dir_all(&d).unwrap();
            let st = Command::new("mount")
                .args(["-t", "tmpfs", "-o", "huge=always,size=16g", "criu-rs-bench"])
                .arg(&d)
                .status()
                .unwrap();
            assert!(st.success(), "mount a tmpfs on {}", d.display());
            (d, true)
        }
    };
    // BENCH_ONLY=lazy: only the lazy-restore section.
    if std::env::var("BENCH_ONLY").as_deref() == Ok("lazy") {
        lazy_section(&criu, &repo, &dir);
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
        if mounted { " (tmpfs, huge=always)" } else { "" }
    );
    let memcpy = memcpy_bandwidth();
    let fresh = fresh_fill_bandwidth();
    let tmpfs = tmpfs_write_bandwidth(&dir);
    println!("machine limits (this run):");
    println!("  memcpy, warm buffers          {memcpy:6.2} GB/s");
    println!("  fill fresh anonymous memory   {fresh:6.2} GB/s");
    println!("  write a new file there        {tmpfs:6.2} GB/s");

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
    lazy_section(&criu, &repo, &dir);

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
