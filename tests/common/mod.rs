//! Shared helpers for tests that checkpoint real processes: build the C workloads, start them
//! in their own directory and session, run our `criu` by path, and wait for restored tasks
//! (the test process is a child subreaper, so tasks restored with -d become its children).
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

pub const CRIU: &str = env!("CARGO_BIN_EXE_criu");

/// Compiles ctests/workloads/NAME.c once per test binary.
pub fn workload(name: &str) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap();
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("workloads");
    std::fs::create_dir_all(&out_dir).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("ctests/workloads")
        .join(format!("{name}.c"));
    let bin = out_dir.join(name);
    let fresh = bin
        .metadata()
        .and_then(|b| Ok(b.modified()? >= src.metadata()?.modified()?))
        .unwrap_or(false);
    if !fresh {
        let st = Command::new("cc")
            .args(["-O2", "-g", "-Wall", "-o"])
            .arg(&bin)
            .arg(&src)
            .status()
            .expect("run cc");
        assert!(st.success(), "compiling {}", src.display());
    }
    bin
}

/// Makes this test process the reaper of orphans below it, so restored tasks come back to us.
pub fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(r, 0);
    });
}

/// A scratch directory for one test: the workload's cwd, images under `img/`.
pub struct Scratch {
    pub dir: PathBuf,
}

/// The directory holding Debian's `pycriu` package (scripts/get-crit.sh), or `PYCRIU_PATH`.
pub fn pycriu_path() -> PathBuf {
    let dir = std::env::var_os("PYCRIU_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/crit/root"));
    assert!(
        dir.join("pycriu/criu.py").exists(),
        "pycriu not found in {}: run scripts/get-crit.sh first (or set PYCRIU_PATH)",
        dir.display()
    );
    dir
}

/// A workload child that is killed and reaped when the test ends, however it ends.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Scratch {
    /// After a dump with --leave-running: SIGUSR1 makes the original (our child) check its own
    /// state and exit, which must be with 0.
    pub fn original_passes(&self, child: &mut Child) {
        assert!(kill(child.id() as i32, libc::SIGUSR1));
        let st = child.wait().unwrap();
        assert_eq!(
            st.code(),
            Some(0),
            "the original failed its checks after the dump: {}",
            self.read("result")
        );
    }

    /// Sends SIGUSR1, on which the workloads check their own state and exit, and asserts that
    /// `who` (the task `pid`, our child) passed: exit 0, else its "result" and "out" files.
    pub fn verify(&self, pid: i32, who: &str) {
        assert!(kill(pid, libc::SIGUSR1));
        let code = wait_exit(pid, Duration::from_secs(30));
        assert_eq!(
            code,
            0,
            "{who} failed its checks (exit {code}): {}; out: {}",
            self.read("result"),
            self.read("out")
        );
    }

    pub fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "criu-rs-{tag}-{}-{}",
            std::process::id(),
            rand_u32()
        ));
        std::fs::create_dir_all(dir.join("img")).unwrap();
        Scratch { dir }
    }

    pub fn img(&self) -> PathBuf {
        self.dir.join("img")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Starts `program args` in this directory with stdin from /dev/null, stdout/stderr into
    /// `out`, and no fd beyond 0-2 (whatever the test harness inherited stays out).
    pub fn spawn(&self, program: &Path, args: &[&str]) -> Child {
        self.spawn_env(program, args, &[])
    }

    /// `spawn` with extra environment variables.
    pub fn spawn_env(&self, program: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
        let out = std::fs::File::create(self.path("out")).unwrap();
        let mut cmd = Command::new(program);
        cmd.envs(env.iter().copied());
        cmd.args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        unsafe {
            cmd.pre_exec(|| {
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                Ok(())
            });
        }
        cmd.spawn().expect("spawn workload")
    }

    /// Runs our criu in this directory.
    pub fn criu(&self, args: &[&str]) -> Output {
        Command::new(CRIU)
            .args(args)
            .current_dir(&self.dir)
            .env_remove("CRIU_CONFIG_FILE")
            .stdin(Stdio::null())
            .output()
            .expect("run criu")
    }

    /// `criu dump -t PID -D img` plus `extra`; panics with criu's log on failure.
    pub fn dump(&self, pid: i32, extra: &[&str]) {
        let pid_s = pid.to_string();
        let mut args = vec!["dump", "-t", &pid_s, "-D", "img", "-o", "dump.log", "-v4"];
        args.extend_from_slice(extra);
        let out = self.criu(&args);
        assert!(
            out.status.success(),
            "dump failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log("dump.log")
        );
    }

    /// `criu dump -t PID -D img -o LOG EXTRA...`, which must fail and leave the task running
    /// untraced; returns what criu said on stderr, for the caller to check the reason.
    pub fn refused_dump(&self, pid: i32, extra: &[&str], log: &str) -> String {
        let pid_s = pid.to_string();
        let mut args = vec!["dump", "-t", &pid_s, "-D", "img", "-o", log];
        args.extend_from_slice(extra);
        let out = self.criu(&args);
        assert!(!out.status.success(), "dump of {pid} was not refused");
        assert_running_untraced(pid);
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `criu restore -d -D img --pidfile`; returns the restored pid.
    pub fn restore(&self, extra: &[&str]) -> i32 {
        let mut args = vec![
            "restore",
            "-d",
            "-D",
            "img",
            "-o",
            "restore.log",
            "-v4",
            "--pidfile",
            "restored.pid",
        ];
        args.extend_from_slice(extra);
        let out = self.criu(&args);
        assert!(
            out.status.success(),
            "restore failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log("restore.log")
        );
        std::fs::read_to_string(self.img().join("restored.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.img().join(name)).unwrap_or_default()
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_default()
    }

    /// Waits for a file the workload writes when its state is set up.
    pub fn wait_file(&self, rel: &str, timeout: Duration) -> String {
        let t0 = Instant::now();
        loop {
            if let Ok(s) = std::fs::read_to_string(self.path(rel)) {
                if !s.is_empty() {
                    return s;
                }
            }
            assert!(
                t0.elapsed() < timeout,
                "{rel} did not appear within {timeout:?}; out: {}",
                self.read("out")
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Whatever still runs in this directory (a workload a failed test left behind, or one
        // it restored) goes too, so that failures do not pile up processes.
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if pid as u32 == std::process::id() {
                continue;
            }
            if std::fs::read_link(format!("/proc/{pid}/cwd"))
                .is_ok_and(|c| c.starts_with(&self.dir))
            {
                kill(pid, libc::SIGKILL);
            }
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    (t.subsec_nanos() ^ (t.as_secs() as u32).rotate_left(7)).wrapping_mul(2654435761)
}

/// Waits for `pid` (our child, or an orphan reparented to us) to exit; returns its exit code,
/// or 128 + signal.
pub fn wait_exit(pid: i32, timeout: Duration) -> i32 {
    let t0 = Instant::now();
    loop {
        let mut status = 0;
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            if libc::WIFEXITED(status) {
                return libc::WEXITSTATUS(status);
            }
            if libc::WIFSIGNALED(status) {
                return 128 + libc::WTERMSIG(status);
            }
        }
        if t0.elapsed() > timeout {
            let _ = kill(pid, libc::SIGKILL);
            panic!("pid {pid} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub fn kill(pid: i32, sig: i32) -> bool {
    unsafe { libc::kill(pid, sig) == 0 }
}

/// The pid's one-letter state and its tracer, from /proc.
pub fn state_and_tracer(pid: i32) -> Option<(char, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_owned())
    };
    let state = field("State:")?.chars().next()?;
    let tracer = field("TracerPid:")?.parse().ok()?;
    Some((state, tracer))
}

/// Asserts that the task is running freely: not stopped, not traced, not dead.
pub fn assert_running_untraced(pid: i32) {
    let (state, tracer) = state_and_tracer(pid).unwrap_or_else(|| panic!("pid {pid} is gone"));
    assert!(
        matches!(state, 'R' | 'S' | 'D'),
        "pid {pid} is in state {state}"
    );
    assert_eq!(tracer, 0, "pid {pid} is still traced");
}

/// Debian's crit (scripts/get-crit.sh), or `CRIT`.
pub fn crit_path() -> PathBuf {
    let p = std::env::var_os("CRIT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/crit/crit"));
    assert!(
        p.is_file(),
        "crit not found at {}: run scripts/get-crit.sh first (or set CRIT)",
        p.display()
    );
    p
}

pub fn crit_decode(path: &Path) -> serde_json::Value {
    let out = std::process::Command::new(crit_path())
        .args(["decode", "-i"])
        .arg(path)
        .output()
        .expect("run crit");
    assert!(
        out.status.success(),
        "crit decode {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("crit prints JSON")
}

pub fn entries(j: &serde_json::Value) -> &Vec<serde_json::Value> {
    j["entries"].as_array().expect("entries")
}

/// crit prints raw payloads as Python's base64.encodebytes.
pub fn unbase64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let Some(v) = val(c) else { continue };
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// A test CA and certificates signed by it (openssl): `NAME.pem` and `NAME.key` in `dir` for
/// each (name, subjectAltName).
pub fn make_ca(dir: &Path, ca: &str, certs: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut script = format!(
        "set -e; cd {d}; \
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
           -keyout {ca}.key -out {ca}.pem -days 2 -subj /CN={ca} 2>/dev/null; ",
        d = dir.display()
    );
    for (name, san) in certs {
        script.push_str(&format!(
            "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
               -keyout {name}.key -out {name}.csr -subj /CN={name} 2>/dev/null; \
             printf 'subjectAltName={san}\\nbasicConstraints=CA:FALSE\\n\
keyUsage=digitalSignature\\nextendedKeyUsage=serverAuth,clientAuth\\n' > {name}.ext; \
             openssl x509 -req -in {name}.csr -CA {ca}.pem -CAkey {ca}.key -CAcreateserial \
               -out {name}.pem -days 2 -extfile {name}.ext 2>/dev/null; "
        ));
    }
    let st = Command::new("sh").args(["-c", &script]).status().unwrap();
    assert!(st.success(), "openssl failed");
}

pub fn tls_args(dir: &Path, ca: &str, me: &str) -> Vec<String> {
    let f = |n: &str| dir.join(n).to_str().unwrap().to_owned();
    vec![
        "--tls".into(),
        "--tls-cacert".into(),
        f(&format!("{ca}.pem")),
        "--tls-cert".into(),
        f(&format!("{me}.pem")),
        "--tls-key".into(),
        f(&format!("{me}.key")),
    ]
}

/// A network namespace joined to ours by a veth pair with a /30 in 10.OCTET.0.0/16 nobody else
/// here uses (names start with TAG), removed on drop.
pub struct NetnsPair {
    pub ns: String,
    pub host_if: String,
    pub host_ip: String,
    pub peer_ip: String,
}

impl NetnsPair {
    pub fn new(tag: &str, octet: u8) -> NetnsPair {
        let r = rand_u32();
        let ns = format!("{tag}{}", r % 100000);
        let host_if = format!("{tag}h{}", r % 100000);
        let peer_if = format!("{tag}p{}", r % 100000);
        let net = (r / 7) % 16000;
        let (a, b) = (net / 64, (net % 64) * 4);
        let host_ip = format!("10.{octet}.{a}.{}", b + 1);
        let peer_ip = format!("10.{octet}.{a}.{}", b + 2);
        let sh = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().unwrap();
            assert!(st.success(), "ip {args:?}");
        };
        let pair = NetnsPair {
            ns: ns.clone(),
            host_if: host_if.clone(),
            host_ip: host_ip.clone(),
            peer_ip: peer_ip.clone(),
        };
        sh(&["netns", "add", &ns]);
        sh(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
        ]);
        sh(&["link", "set", &peer_if, "netns", &ns]);
        sh(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        sh(&["link", "set", &host_if, "up"]);
        sh(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{peer_ip}/30"),
            "dev",
            &peer_if,
        ]);
        sh(&["-n", &ns, "link", "set", &peer_if, "up"]);
        sh(&["-n", &ns, "link", "set", "lo", "up"]);
        pair
    }

    /// The command prefix that runs a program inside the namespace.
    pub fn exec(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.ns]
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}
