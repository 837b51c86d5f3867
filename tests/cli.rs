//! The `criu` binary as runtimes and harnesses call it. Always our binary, by path: a Debian
//! `criu` on PATH is a different program.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

const CRIU: &str = env!("CARGO_BIN_EXE_criu");

/// A scratch directory, removed on drop. Doubles as $HOME so no real configuration leaks in.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "criu-rs-cli-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    fn file(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    fn dir(&self, rel: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Our criu with HOME here, no CRIU_CONFIG_FILE, cwd here.
    fn criu(&self, args: &[&str]) -> Output {
        self.criu_env(args, &[])
    }

    fn criu_env(&self, args: &[&str], env: &[(&str, &Path)]) -> Output {
        let mut cmd = Command::new(CRIU);
        cmd.args(args)
            .current_dir(&self.0)
            .env("HOME", &self.0)
            .env_remove("CRIU_CONFIG_FILE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run criu")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn criu(args: &[&str]) -> Output {
    Scratch::new().criu(args)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit code 1 with a message on stderr and no panic.
#[track_caller]
fn assert_fails_with(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout: {}\nstderr: {err}",
        stdout(o)
    );
    assert!(err.contains(needle), "expected '{needle}' in stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn help_goes_to_stdout_and_exits_0() {
    for flag in ["--help", "-h"] {
        let o = criu(&[flag]);
        assert_eq!(o.status.code(), Some(0), "{flag}");
        let out = stdout(&o);
        for word in [
            "Usage:",
            "pre-dump",
            "restore",
            "--images-dir",
            "--tcp-established",
            "uffd-noncoop",
        ] {
            assert!(out.contains(word), "{flag}: '{word}' not in help");
        }
    }
    // --help wins over errors elsewhere on the line, as in CRIU.
    assert_eq!(criu(&["check", "--bogus", "--help"]).status.code(), Some(0));
}

#[test]
fn version_has_criu_shape() {
    for flag in ["--version", "-V"] {
        let o = criu(&[flag]);
        assert_eq!(o.status.code(), Some(0));
        let out = stdout(&o);
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("Version: 4.2"), "{out}");
        assert!(
            lines.next().is_some_and(|l| l.starts_with("GitID: ")),
            "{out}"
        );
    }
}

#[test]
fn check_looks_good_here() {
    let o = criu(&["check"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
    assert!(out.ends_with("Looks good.\n"), "{out}");
    for mechanism in [
        "PTRACE_SEIZE",
        "PTRACE_GET_RSEQ_CONFIGURATION",
        "clone3() with set_tid",
        "PR_SET_MM_MAP",
        "PAGEMAP_SCAN ioctl",
        "soft-dirty bits",
        "/dev/userfaultfd",
        "uffd async write-protect",
        "pidfd_open",
        "vdso layout",
        "CAP_CHECKPOINT_RESTORE",
    ] {
        assert!(
            out.contains(mechanism),
            "'{mechanism}' not reported:\n{out}"
        );
    }
    // This kernel has no soft-dirty: the report must say so rather than claim it.
    assert!(
        out.lines()
            .any(|l| l.contains("soft-dirty bits") && l.contains(" no")),
        "{out}"
    );
}

#[test]
fn check_all_reports_missing_optional_features() {
    let o = criu(&["check", "--all"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("tun "), "{out}");
    assert!(out.contains("Looks good, but"), "{out}");
}

#[test]
fn feature_checks_answer_honestly() {
    // Kernel mechanisms this machine has.
    for name in [
        "uffd",
        "uffd-noncoop",
        "timerfd",
        "epoll",
        "kcmp_epoll",
        "rseq",
        "get_rseq_conf",
        "clone3_set_tid",
        "pagemap_scan",
        "can_map_vdso",
        "mem_dirty_track",
        "lazy_pages",
    ] {
        let o = criu(&["check", "--feature", name]);
        assert_eq!(o.status.code(), Some(0), "{name}: {}", stderr(&o));
        assert_eq!(stdout(&o), format!("{name} is supported\n"));
    }
    // The kernel has what this needs, but this build does not implement it yet.
    {
        let name = "pidfd_store";
        let o = criu(&["check", "--feature", name]);
        assert_fails_with(&o, "not supported by this build yet");
        assert!(stderr(&o).contains("the kernel has it"), "{}", stderr(&o));
        assert!(stdout(&o).is_empty());
    }
    // Things this build does not checkpoint at all.
    for name in ["tun", "autofs", "external_net_ns"] {
        assert_fails_with(&criu(&["check", "--feature", name]), name);
    }
    // The --opt=value form.
    assert_eq!(criu(&["check", "--feature=uffd"]).status.code(), Some(0));
}

#[test]
fn every_known_feature_name_gets_an_answer() {
    let help = stdout(&criu(&["--help"]));
    let list = help
        .split("Features for 'criu check --feature':")
        .nth(1)
        .expect("feature list in --help");
    let names: Vec<&str> = list
        .split([',', '\n', ' '])
        .filter(|s| !s.is_empty())
        .collect();
    assert!(names.len() >= 45, "{names:?}");
    for name in names {
        let o = criu(&["check", "--feature", name]);
        match o.status.code() {
            Some(0) => assert_eq!(stdout(&o), format!("{name} is supported\n")),
            Some(1) => assert!(stderr(&o).contains(name), "{name}: {}", stderr(&o)),
            other => panic!("{name}: exit {other:?}"),
        }
        assert!(!stderr(&o).contains("panicked"), "{name}");
    }
}

#[test]
fn unknown_feature_lists_the_known_ones() {
    let o = criu(&["check", "--feature", "warp_drive"]);
    assert_fails_with(&o, "warp_drive");
    assert!(stderr(&o).contains("mem_dirty_track"));
}

#[test]
fn bad_command_lines_fail_cleanly() {
    for (args, needle) in [
        (&[][..], "command is required"),
        (&["frobnicate"][..], "frobnicate"),
        (&["check", "--bogus"][..], "--bogus"),
        (&["check", "-Z"][..], "-Z"),
        (&["dump"][..], "-t PID"),
        (&["dump", "-t"][..], "--tree"),
        (&["dump", "-t", "0"][..], "positive pid"),
        (&["check", "--feature"][..], "--feature"),
        (&["check", "--port", "0"][..], "port"),
        (&["check", "--network-lock", "ipfw"][..], "ipfw"),
        (&["check", "extra-word"][..], "extra-word"),
        (&["swrk"][..], "swrk FD"),
        (&["cpuinfo"][..], "dump or check"),
        (&["check", "--ms"][..], "--ms"),
        (&["check", "-S"][..], "--restore-detached"),
    ] {
        assert_fails_with(&criu(args), needle);
    }
}

#[test]
fn unsupported_but_parsed_options_are_refused_by_name() {
    let s = Scratch::new();
    let dir = s.dir("imgs");
    let d = dir.to_str().unwrap();
    for (flag, name) in [
        (&["--stream"][..], "option --stream is not supported yet"),
        (
            &["--ext-mount-map", "auto"][..],
            "option --ext-mount-map auto is not supported yet",
        ),
        (
            &["--enable-external-sharing"][..],
            "option --enable-external-sharing is not supported yet",
        ),
        (
            &["--manage-cgroups=full"][..],
            "option --manage-cgroups is not supported yet",
        ),
        (
            &["-L", "/usr/lib/criu"][..],
            "option --libdir is not supported yet",
        ),
    ] {
        let mut args = vec!["dump", "-t", "1", "-D", d];
        args.extend_from_slice(flag);
        assert_fails_with(&s.criu(&args), name);
    }
    // Before anything else: even with an images dir that does not exist.
    assert_fails_with(
        &criu(&[
            "dump",
            "-t",
            "1",
            "-D",
            "/tmp/x-criu-rs-absent",
            "--enable-external-masters",
        ]),
        "option --enable-external-masters is not supported yet",
    );
    // The page server runs (tests/page_server.rs); what it cannot do is refused by name.
    assert_fails_with(
        &criu(&["page-server", "--port", "1", "--auto-dedup"]),
        "auto-dedup",
    );
    assert_fails_with(
        &criu(&["page-server", "--port", "1", "-D", "/tmp/x-criu-rs-absent"]),
        "images dir",
    );
    assert_fails_with(
        &criu(&["lazy-pages", "--page-server"]),
        "needs the source's --address",
    );
}

#[test]
fn service_listens_on_its_address_and_daemonizes() {
    let s = Scratch::new();
    let sock = s.path("criu.sock");
    let pidfile = s.path("service.pid");
    let out = s.criu(&[
        "service",
        "--address",
        sock.to_str().unwrap(),
        "-d",
        "--pidfile",
        pidfile.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(&sock).unwrap().file_type().is_socket());
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}

#[test]
fn missing_images_dir_is_reported() {
    assert_fails_with(
        &criu(&["restore", "-D", "/tmp/x-criu-rs-absent", "-d"]),
        "/tmp/x-criu-rs-absent",
    );
}

#[test]
fn log_file_is_relative_to_the_work_dir() {
    let s = Scratch::new();
    s.dir("imgs");
    s.dir("work");
    // Default work dir: the images dir (relative to our cwd).
    let o = s.criu(&[
        "check",
        "--feature=uffd",
        "--images-dir=imgs",
        "--log-file=c.log",
        "--verbosity=4",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let log = std::fs::read_to_string(s.path("imgs/c.log")).expect("log in the images dir");
    assert!(log.contains("command: check"), "{log}");
    // An explicit work dir.
    let o = s.criu(&[
        "check",
        "--feature",
        "uffd",
        "-D",
        "imgs",
        "-W",
        "work",
        "-o",
        "w.log",
        "-v4",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(s.path("work/w.log").is_file());
    assert!(!s.path("imgs/w.log").exists());
}

#[test]
fn single_dash_verbosity_is_accepted() {
    let s = Scratch::new();
    s.dir("d");
    // -verbosity=0 logs nothing, --verbosity=4 logs the command; both run.
    let o = s.criu(&[
        "check",
        "--feature",
        "uffd",
        "-D",
        "d",
        "-o",
        "quiet.log",
        "-verbosity=0",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(s.path("d/quiet.log")).unwrap(), "");
    let o = s.criu(&[
        "-verbosity=4",
        "check",
        "--feature",
        "uffd",
        "-D",
        "d",
        "-o",
        "loud.log",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(std::fs::read_to_string(s.path("d/loud.log"))
        .unwrap()
        .contains("command: check"));
    let o = s.criu(&["check", "--feature", "uffd", "-vvvv"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn log_file_is_truncated_like_criu() {
    let s = Scratch::new();
    s.dir("d");
    s.file("d/x.log", "old contents\n");
    let o = s.criu(&[
        "check",
        "--feature",
        "uffd",
        "-D",
        "d",
        "-o",
        "x.log",
        "-v0",
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(s.path("d/x.log")).unwrap(), "");
}

#[test]
fn config_files_in_criu_order_and_the_command_line_wins() {
    let s = Scratch::new();
    // ~/.criu/default.conf asks for a feature this build lacks...
    s.file(".criu/default.conf", "# user defaults\nfeature tun\n");
    assert_fails_with(&s.criu(&["check"]), "tun");
    // ...which --no-default-config skips...
    assert_eq!(
        s.criu(&["check", "--no-default-config"]).status.code(),
        Some(0)
    );
    // ...$CRIU_CONFIG_FILE overrides...
    let env_conf = s.file("env.conf", "--feature=uffd\n");
    let o = s.criu_env(&["check"], &[("CRIU_CONFIG_FILE", &env_conf)]);
    assert_eq!(stdout(&o), "uffd is supported\n", "{}", stderr(&o));
    // ...--config overrides both (and skips the default file)...
    s.file("explicit.conf", "feature \"epoll\"   # quoted value\n");
    let o = s.criu_env(
        &["check", "--config", "explicit.conf"],
        &[("CRIU_CONFIG_FILE", &env_conf)],
    );
    assert_eq!(stdout(&o), "epoll is supported\n", "{}", stderr(&o));
    // ...and the command line has the last word.
    let o = s.criu_env(
        &["check", "--config=explicit.conf", "--feature", "timerfd"],
        &[("CRIU_CONFIG_FILE", &env_conf)],
    );
    assert_eq!(stdout(&o), "timerfd is supported\n", "{}", stderr(&o));
}

#[test]
fn config_file_options_act_like_command_line_ones() {
    let s = Scratch::new();
    s.dir("imgs");
    s.file(
        "c.conf",
        "images-dir imgs\nlog-file from-config.log\nverbosity=4\nfeature uffd\n",
    );
    let o = s.criu(&["check", "--config", "c.conf"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(s.path("imgs/from-config.log").is_file());
}

#[test]
fn bad_config_file_names_file_and_line() {
    let s = Scratch::new();
    s.file("bad.conf", "shell-job\n# fine\nwarp-drive on\n");
    assert_fails_with(
        &s.criu(&["check", "--config", "bad.conf"]),
        "bad.conf, line 3",
    );
    assert_fails_with(
        &s.criu(&["check", "--config", "absent.conf"]),
        "absent.conf",
    );
}

#[test]
fn options_before_and_after_the_command() {
    let s = Scratch::new();
    s.dir("d");
    let o = s.criu(&[
        "-D",
        "d",
        "-o",
        "a.log",
        "-v4",
        "check",
        "--feature",
        "uffd",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(s.path("d/a.log").is_file());
}
