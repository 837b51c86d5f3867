//! Real servers nobody wrote for these tests, from Debian's packages (`.ci/run` installs them):
//! redis-server holding data and nginx (a master and two workers) serving a file, each dumped
//! with --tcp-established while clients keep them busy over loopback, restored, and then
//! answering with the same data on the connections the clients already had.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;

const T: Duration = Duration::from_secs(30);

/// One server at a time: each puts load on the machine and locks connections.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn need(program: &str) -> std::path::PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(program);
        if p.exists() {
            return p;
        }
    }
    panic!("{program} is not installed (.ci/run installs it)");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The children of `pid` (all its threads'), from /proc.
fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let s = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(s.split_whitespace().map(|w| w.parse::<i32>().unwrap()));
    }
    out
}

/// Waits for `pid` to be gone (reaps it when it is ours).
fn reap(pid: i32) {
    let t0 = Instant::now();
    loop {
        let mut st = 0;
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if r == pid || (r < 0 && !kill(pid, 0)) {
            return;
        }
        assert!(t0.elapsed() < T, "pid {pid} did not go away");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills the tree when the test ends, also when it fails.
struct KillTree(Vec<i32>);

impl Drop for KillTree {
    fn drop(&mut self) {
        for &p in &self.0 {
            kill(p, libc::SIGKILL);
        }
        for &p in &self.0 {
            let mut st = 0;
            unsafe { libc::waitpid(p, &mut st, libc::WNOHANG) };
        }
    }
}

/// Clients hammering the server from threads until stopped: each counts its answers and keeps
/// the first error.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    threads: Vec<JoinHandle<Result<(), String>>>,
}

impl Load {
    fn start(
        n: usize,
        work: impl Fn(usize, &AtomicBool, &AtomicU64) -> Result<(), String> + Send + Sync + 'static,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let work = Arc::new(work);
        let threads = (0..n)
            .map(|i| {
                let (stop, done, work) = (stop.clone(), done.clone(), work.clone());
                std::thread::spawn(move || work(i, &stop, &done))
            })
            .collect();
        Load {
            stop,
            done,
            threads,
        }
    }

    fn count(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }

    /// Waits until `more` answers came after now.
    fn wait_progress(&self, more: u64) {
        let start = self.count();
        let t0 = Instant::now();
        while self.count() < start + more {
            assert!(
                t0.elapsed() < T,
                "the load made no progress ({} answers)",
                self.count() - start
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap().unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// redis

/// A RESP connection.
struct Redis {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Redis {
    fn connect(port: u16) -> Redis {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        Redis {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    fn try_connect(port: u16) -> Option<Redis> {
        let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(T)).unwrap();
        Some(Redis {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        })
    }

    fn cmd(&mut self, args: &[&str]) -> Result<String, String> {
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req += &format!("${}\r\n{a}\r\n", a.len());
        }
        self.w
            .write_all(req.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.r.read_line(&mut line).map_err(|e| e.to_string())?;
        if !line.ends_with("\r\n") {
            return Err(format!("connection ended: {line:?}"));
        }
        let line = line.trim_end().to_owned();
        if let Some(len) = line.strip_prefix('$') {
            let len: i64 = len.parse().map_err(|_| line.clone())?;
            if len < 0 {
                return Ok("(nil)".into());
            }
            let mut b = vec![0u8; len as usize + 2];
            self.r.read_exact(&mut b).map_err(|e| e.to_string())?;
            return Ok(String::from_utf8_lossy(&b[..len as usize]).into_owned());
        }
        if line.starts_with('-') {
            return Err(line);
        }
        Ok(line[1..].to_owned())
    }
}

#[test]
fn redis_keeps_its_data_and_clients() {
    let _serial = serial();
    become_subreaper();
    let server = need("redis-server");
    let bench = need("redis-benchmark");
    let s = Scratch::new("redis");
    let port = free_port();
    let p = port.to_string();
    let dir = s.dir.to_str().unwrap().to_owned();
    let mut child = s.spawn(
        Path::new("/usr/bin/setsid"),
        &[
            server.to_str().unwrap(),
            "--port",
            &p,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir,
        ],
    );
    let pid = child.id() as i32;
    let _guard = KillTree(vec![pid]);
    let t0 = Instant::now();
    let mut c = loop {
        if let Some(mut c) = Redis::try_connect(port) {
            if c.cmd(&["PING"]).as_deref() == Ok("PONG") {
                break c;
            }
        }
        assert!(t0.elapsed() < T, "redis did not start: {}", s.read("out"));
        std::thread::sleep(Duration::from_millis(20));
    };
    for i in 0..2000 {
        assert_eq!(
            c.cmd(&["SET", &format!("key:{i}"), &format!("value-{i}-{}", i * 31)]),
            Ok("OK".into())
        );
    }
    assert_eq!(c.cmd(&["INCR", "ctr"]), Ok("1".into()));

    // Load: our clients INCR their own counters and check every answer; redis-benchmark too.
    let load = Load::start(3, move |i, stop, done| {
        let mut r = Redis::connect(port);
        let key = format!("load:{i}");
        let mut expect = 1u64;
        while !stop.load(Ordering::SeqCst) {
            let got = r.cmd(&["INCR", &key])?;
            if got != expect.to_string() {
                return Err(format!("{key}: INCR gave {got}, {expect} expected"));
            }
            expect += 1;
            done.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    });
    // One test only: between tests the benchmark closes and reopens its connections, and a
    // connection half-closed or not accepted yet at dump time is refused.
    let mut benchmark = std::process::Command::new(&bench)
        .args(["-p", &p, "-n", "150000", "-c", "4", "-q", "-t", "set"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    load.wait_progress(200);
    // Every client is connected: ours, the loaders and the benchmark's four.
    let t0 = Instant::now();
    loop {
        let info = c.cmd(&["INFO", "clients"]).unwrap();
        let n: u32 = info
            .lines()
            .find_map(|l| l.strip_prefix("connected_clients:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if n >= 8 {
            break;
        }
        assert!(t0.elapsed() < T, "only {n} clients connected");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        benchmark.try_wait().unwrap().is_none(),
        "the benchmark ended before the dump"
    );

    s.dump(pid, &["--tcp-established", "--network-lock", "nftables"]);
    let _ = child.wait();
    let restored = s.restore(&[]);
    assert_eq!(restored, pid);

    // The connection we had goes on, with the data and the counter where they were.
    assert_eq!(c.cmd(&["INCR", "ctr"]), Ok("2".into()));
    for i in (0..2000).step_by(7) {
        assert_eq!(
            c.cmd(&["GET", &format!("key:{i}")]),
            Ok(format!("value-{i}-{}", i * 31))
        );
    }
    assert_eq!(
        c.cmd(&["DBSIZE"])
            .map(|n| n.parse::<u64>().unwrap() >= 2001),
        Ok(true)
    );
    load.wait_progress(200);
    load.finish();
    let out = benchmark.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "redis-benchmark: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = c.cmd(&["SHUTDOWN", "NOSAVE"]);
    assert_eq!(wait_exit(restored, T), 0);
}

// ---------------------------------------------------------------------------------------------
// nginx

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 13 + 5) & 0xff) as u8).collect()
}

/// One keep-alive HTTP/1.1 connection.
struct Http {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Http {
    fn connect(port: u16) -> Result<Http, String> {
        let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(T)).unwrap();
        Ok(Http {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        })
    }

    fn get(&mut self, path: &str) -> Result<Vec<u8>, String> {
        write!(
            self.w,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut status = String::new();
        self.r.read_line(&mut status).map_err(|e| e.to_string())?;
        if !status.starts_with("HTTP/1.1 200") {
            return Err(format!("status {status:?}"));
        }
        let mut len = None;
        loop {
            let mut h = String::new();
            self.r.read_line(&mut h).map_err(|e| e.to_string())?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h
                .to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
            {
                len = v.parse::<usize>().ok();
            }
        }
        let mut body = vec![0u8; len.ok_or("no content-length")?];
        self.r.read_exact(&mut body).map_err(|e| e.to_string())?;
        Ok(body)
    }
}

#[test]
fn nginx_serves_the_same_file_to_the_same_clients() {
    let _serial = serial();
    become_subreaper();
    let nginx = need("nginx");
    let s = Scratch::new("nginx");
    let port = free_port();
    let data = pattern(300_000);
    std::fs::create_dir_all(s.path("www")).unwrap();
    std::fs::create_dir_all(s.path("logs")).unwrap();
    std::fs::write(s.path("www/data.bin"), &data).unwrap();
    let dir = s.dir.to_str().unwrap();
    std::fs::write(
        s.path("nginx.conf"),
        format!(
            "daemon off;\nmaster_process on;\nworker_processes 2;\npid {dir}/nginx.pid;\n\
             error_log {dir}/logs/error.log;\nevents {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {dir}/tmp;\n\
               server {{\n    listen 127.0.0.1:{port};\n    listen [::1]:{port};\n\
                 root {dir}/www;\n    keepalive_timeout 300s;\n\
                 keepalive_requests 1000000;\n  }}\n}}\n"
        ),
    )
    .unwrap();
    let conf = s.path("nginx.conf");
    let mut child = s.spawn(
        Path::new("/usr/bin/setsid"),
        &[
            nginx.to_str().unwrap(),
            "-c",
            conf.to_str().unwrap(),
            "-p",
            dir,
        ],
    );
    let master = child.id() as i32;
    let mut guard = KillTree(vec![master]);
    let t0 = Instant::now();
    let mut c = loop {
        if let Ok(mut c) = Http::connect(port) {
            if c.get("/data.bin").as_deref() == Ok(&data[..]) {
                break c;
            }
        }
        assert!(
            t0.elapsed() < T,
            "nginx did not start: {}{}",
            s.read("out"),
            s.read("logs/error.log")
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let workers = children_of(master);
    assert_eq!(workers.len(), 2, "nginx workers: {workers:?}");
    guard.0.extend(&workers);

    let expected = Arc::new(data.clone());
    let load = Load::start(3, move |_, stop, done| {
        let mut h = Http::connect(port)?;
        while !stop.load(Ordering::SeqCst) {
            if h.get("/data.bin")? != *expected {
                return Err("a response with other bytes".into());
            }
            done.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    });
    load.wait_progress(50);

    s.dump(master, &["--tcp-established"]);
    let _ = child.wait();
    for &w in &workers {
        reap(w);
    }
    let restored = s.restore(&[]);
    assert_eq!(restored, master);
    let mut after = children_of(master);
    after.sort_unstable();
    let mut before = workers.clone();
    before.sort_unstable();
    assert_eq!(after, before, "the same workers come back");

    assert_eq!(c.get("/data.bin").as_deref(), Ok(&data[..]));
    load.wait_progress(50);
    load.finish();
    // New clients are served too, over IPv6 as well.
    let mut fresh = Http::connect(port).unwrap();
    assert_eq!(fresh.get("/data.bin").as_deref(), Ok(&data[..]));
    let s6 = TcpStream::connect(("::1", port)).unwrap();
    s6.set_read_timeout(Some(T)).unwrap();
    let mut h6 = Http {
        r: BufReader::new(s6.try_clone().unwrap()),
        w: s6,
    };
    assert_eq!(h6.get("/data.bin").as_deref(), Ok(&data[..]));
    // A clean stop: the master waits for its workers.
    assert!(kill(master, libc::SIGQUIT));
    assert_eq!(wait_exit(master, T), 0, "{}", s.read("logs/error.log"));
}
