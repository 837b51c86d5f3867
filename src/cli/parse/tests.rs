use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;

/// A scratch directory for configuration files, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "criu-rs-parse-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    /// An environment with no default configuration files.
    fn env(&self) -> ParseEnv {
        ParseEnv {
            cwd: PathBuf::from("/caller/cwd"),
            home: Some(self.0.join("home")),
            config_env: None,
            global_config: self.0.join("etc-criu-default.conf"),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn parse_in(env: &ParseEnv, a: &[&str]) -> Result<Command, CliError> {
    parse_with(&args(a), env)
}

fn inv_in(env: &ParseEnv, a: &[&str]) -> Invocation {
    match parse_in(env, a) {
        Ok(Command::Run(inv)) => *inv,
        other => panic!("{a:?}: expected a command, got {other:?}"),
    }
}

fn inv(a: &[&str]) -> Invocation {
    inv_in(&Scratch::new().env(), a)
}

fn err(a: &[&str]) -> String {
    match parse_in(&Scratch::new().env(), a) {
        Err(e) => e.to_string(),
        Ok(c) => panic!("{a:?}: expected an error, got {c:?}"),
    }
}

#[test]
fn typical_runtime_dump_line() {
    let i = inv(&[
        "dump",
        "--no-default-config",
        "--log-file",
        "dump.log",
        "--images-dir",
        "imgs/1",
        "--verbosity=4",
        "--tree",
        "1234",
        "--pidfile",
        "pid",
        "--timeout",
        "10",
        "--pre-dump-mode",
        "read",
        "--shell-job",
        "--leave-running",
        "--track-mem",
        "--prev-images-dir",
        "../0",
    ]);
    assert_eq!(i.action, Action::Dump);
    let o = &i.opts;
    assert_eq!(o.pid, Some(1234));
    assert_eq!(o.images_dir, Path::new("/caller/cwd/imgs/1"));
    assert_eq!(o.work_dir(), Path::new("/caller/cwd/imgs/1"));
    // The log file and the pidfile are relative to the work dir, like in CRIU.
    assert_eq!(
        o.log_file.as_deref(),
        Some(Path::new("/caller/cwd/imgs/1/dump.log"))
    );
    assert_eq!(
        o.pidfile.as_deref(),
        Some(Path::new("/caller/cwd/imgs/1/pid"))
    );
    // ...and the parent link stays relative to the images dir.
    assert_eq!(o.prev_images_dir.as_deref(), Some(Path::new("../0")));
    assert_eq!(o.log_level, 4);
    assert_eq!(o.timeout, Some(10));
    assert_eq!(o.pre_dump_mode, PreDumpMode::Read);
    assert!(o.shell_job && o.leave_running && o.track_mem);
    assert!(!o.leave_stopped);
}

#[test]
fn typical_restore_line_with_short_options() {
    let i = inv(&[
        "-D", "/imgs", "-W", "work", "-o", "r.log", "-v4", "restore", "-d", "-j", "-S",
    ]);
    assert_eq!(i.action, Action::Restore);
    let o = &i.opts;
    assert_eq!(o.images_dir, Path::new("/imgs"));
    assert_eq!(o.work_dir(), Path::new("/caller/cwd/work"));
    assert_eq!(
        o.log_file.as_deref(),
        Some(Path::new("/caller/cwd/work/r.log"))
    );
    assert!(o.restore_detached && o.shell_job && o.restore_sibling);
    assert_eq!(o.log_level, 4);
}

#[test]
fn equals_and_space_forms_agree() {
    let a = inv(&[
        "dump",
        "--tree=7",
        "--images-dir=/x",
        "--log-file=l",
        "--ghost-limit=2M",
    ]);
    let b = inv(&[
        "dump",
        "--tree",
        "7",
        "--images-dir",
        "/x",
        "--log-file",
        "l",
        "--ghost-limit",
        "2M",
    ]);
    let c = inv(&["dump", "-t7", "-D/x", "-ol", "--ghost-limit", "2048K"]);
    for i in [&a, &b, &c] {
        assert_eq!(i.opts.pid, Some(7));
        assert_eq!(i.opts.images_dir, Path::new("/x"));
        assert_eq!(i.opts.log_file.as_deref(), Some(Path::new("/x/l")));
        assert_eq!(i.opts.ghost_limit, Some(2 << 20));
    }
}

#[test]
fn verbosity_spellings() {
    let level = |a: &[&str]| inv(a).opts.log_level;
    assert_eq!(level(&["check"]), 2);
    assert_eq!(level(&["check", "-v"]), 3);
    assert_eq!(level(&["check", "-vv"]), 4);
    assert_eq!(level(&["check", "-vvvv"]), 6);
    assert_eq!(level(&["check", "-v0"]), 0);
    assert_eq!(level(&["check", "-v4"]), 4);
    assert_eq!(level(&["check", "--verbosity=1"]), 1);
    assert_eq!(level(&["check", "--verbosity"]), 3);
    assert_eq!(level(&["check", "-verbosity=0"]), 0);
    assert_eq!(level(&["-verbosity=3", "check"]), 3);
    assert_eq!(level(&["check", "-v1", "-v"]), 2);
    // An abbreviated long option, as getopt_long allows.
    assert_eq!(level(&["check", "--verb=1"]), 1);
}

#[test]
fn options_may_come_before_or_after_the_command() {
    let a = inv(&["--shell-job", "-t", "5", "dump"]);
    let b = inv(&["dump", "--shell-job", "-t", "5"]);
    assert_eq!(a.opts.pid, b.opts.pid);
    assert_eq!(a.opts.shell_job, b.opts.shell_job);
}

#[test]
fn last_of_a_boolean_pair_wins() {
    assert!(
        !inv(&["check", "--tcp-established", "--no-tcp-established"])
            .opts
            .tcp_established
    );
    assert!(
        inv(&["check", "--no-tcp-established", "--tcp-established"])
            .opts
            .tcp_established
    );
    let o = inv(&["dump", "-t", "1", "-s", "-R"]).opts;
    assert!(o.leave_running && !o.leave_stopped);
    let o = inv(&["dump", "-t", "1", "-R", "-s"]).opts;
    assert!(!o.leave_running && o.leave_stopped);
    assert!(inv(&["restore", "--daemon"]).opts.restore_detached);
    assert!(!inv(&["restore", "-d", "--no-daemon"]).opts.restore_detached);
}

#[test]
fn lists_accumulate() {
    let o = inv(&[
        "restore",
        "--external",
        "mnt[a]:b",
        "--external=dev[c]:/dev/d",
        "--inherit-fd",
        "fd[3]:pipe:[42]",
        "-J",
        "net:/proc/1/ns/net",
        "--veth-pair",
        "eth0=veth9",
        "-M",
        "/a:/b",
        "-M",
        "auto",
        "--enable-fs",
        "nfs,fuse",
        "--enable-fs",
        "9p",
        "--cgroup-root",
        "cpu:/x",
        "--empty-ns",
        "net",
    ])
    .opts;
    assert_eq!(o.external, ["mnt[a]:b", "dev[c]:/dev/d"]);
    assert_eq!(o.inherit_fd, [(3, "pipe:[42]".to_string())]);
    assert_eq!(o.join_ns, [("net".into(), "/proc/1/ns/net".into(), None)]);
    assert_eq!(o.veth_pairs, [("eth0".to_string(), "veth9".to_string())]);
    assert_eq!(o.ext_mounts, [("/a".to_string(), "/b".to_string())]);
    assert!(o.auto_ext_mnt);
    assert_eq!(o.enable_fs, ["nfs", "fuse", "9p"]);
    assert_eq!(
        o.cgroup_roots,
        [(Some("cpu".to_string()), "/x".to_string())]
    );
    assert_eq!(o.empty_ns, libc::CLONE_NEWNET as u32);
}

#[test]
fn everything_criu_knows_is_accepted() {
    let i = inv(&[
        "dump",
        "-t",
        "1",
        "--ext-unix-sk",
        "-x",
        "--tcp-established",
        "--skip-in-flight",
        "--tcp-close",
        "--evasive-devices",
        "--link-remap",
        "--ghost-fiemap",
        "--no-ghost-fiemap",
        "-l",
        "-L",
        "/plugins",
        "--force-irmap",
        "--irmap-scan-path",
        "/usr",
        "--manage-cgroups=full",
        "--cgroup-props",
        "x",
        "--cgroup-props-file",
        "f",
        "--cgroup-dump-controller",
        "cpu",
        "--cgroup-yard",
        "/y",
        "--freeze-cgroup",
        "/sys/fs/cgroup/x",
        "--lsm-profile",
        "apparmor:p",
        "--lsm-mount-context",
        "ctx",
        "--skip-mnt",
        "/m",
        "--enable-external-sharing",
        "--enable-external-masters",
        "--file-validation",
        "filesize",
        "--skip-file-rwx-check",
        "--root",
        "/r",
        "--action-script",
        "/bin/true",
        "--weak-sysctls",
        "--cpu-cap=^fpu",
        "--lazy-pages",
        "--display-stats",
        "--log-pid",
        "--auto-dedup",
        "--page-server",
        "--address",
        "10.0.0.1",
        "--port",
        "1234",
        "--tls",
        "--tls-cacert",
        "ca",
        "--tls-cacrl",
        "crl",
        "--tls-cert",
        "c",
        "--tls-key",
        "k",
        "--tls-no-cn-verify",
        "--status-fd",
        "9",
        "--ps-socket",
        "8",
        "--network-lock",
        "nftables",
        "--deprecated",
        "--unprivileged",
        "--allow-uprobes",
        "--stream",
        "--extra",
        "--experimental",
        "--all",
        "--orphan-pts-master",
        "--no-default-config",
    ]);
    let o = &i.opts;
    assert!(o.ext_unix_sk && o.tcp_established && o.tcp_skip_in_flight && o.tcp_close);
    assert!(o.evasive_devices && o.link_remap && o.file_locks && o.force_irmap);
    assert_eq!(o.libdir.as_deref(), Some(Path::new("/plugins")));
    assert_eq!(o.manage_cgroups_mode, Some(CgroupMode::Full));
    assert!(o.manage_cgroups);
    assert_eq!(o.file_validation, Some(FileValidation::FileSize));
    assert_eq!(
        o.cpu_cap,
        Some(values::cpu_cap::INS | values::cpu_cap::IMAGE)
    );
    assert_eq!(
        o.page_server,
        Some(PageServerAddr {
            address: Some("10.0.0.1".into()),
            port: 1234
        })
    );
    assert!(o.tls.enabled && o.tls.no_cn_verify);
    assert_eq!(o.tls.key.as_deref(), Some(Path::new("k")));
    assert_eq!(o.status_fd, Some(9));
    assert_eq!(o.ps_socket, Some(8));
    assert_eq!(o.network_lock, NetworkLock::Nftables);
    assert_eq!(o.action_scripts, [PathBuf::from("/bin/true")]);
    assert!(o.stream && o.unprivileged && o.allow_uprobes && o.lazy_pages && o.orphan_pts_master);
    assert!(o.ext_sharing && o.ext_masters);
    assert!(o.first_unsupported().is_some());
}

#[test]
fn brief_spellings_are_aliases() {
    let o = inv(&[
        "dump",
        "-t",
        "1",
        "--ext-sharing",
        "--ext-masters",
        "--auto-ext-mnt",
    ])
    .opts;
    assert!(o.ext_sharing && o.ext_masters && o.auto_ext_mnt);
}

#[test]
fn unsupported_options_are_parsed_then_named() {
    let o = inv(&[
        "dump",
        "-t",
        "1",
        "-D",
        "/tmp/x",
        "--enable-external-masters",
    ])
    .opts;
    assert_eq!(o.first_unsupported(), Some("ext-masters"));
    let o = inv(&["dump", "-t", "1", "--stream"]).opts;
    assert_eq!(o.first_unsupported(), Some("stream"));
    // Modes that ask us to leave cgroups alone are honoured.
    let o = inv(&["dump", "-t", "1", "--manage-cgroups=ignore"]).opts;
    assert_eq!(o.first_unsupported(), None);
    let o = inv(&["dump", "-t", "1", "--manage-cgroups"]).opts;
    assert_eq!(o.first_unsupported(), Some("manage-cgroups"));
    // Harmless ones change nothing.
    let o = inv(&[
        "dump",
        "-t",
        "1",
        "--log-pid",
        "--cpu-cap",
        "--weak-sysctls",
        "--deprecated",
        "--no-default-config",
    ])
    .opts;
    assert_eq!(o.first_unsupported(), None);
}

#[test]
fn commands_and_their_arguments() {
    assert_eq!(inv(&["swrk", "5"]).action, Action::Swrk(5));
    assert_eq!(inv(&["cpuinfo", "dump"]).action, Action::CpuinfoDump);
    assert_eq!(inv(&["cpuinfo", "check"]).action, Action::CpuinfoCheck);
    assert_eq!(
        inv(&["service", "--address", "/run/criu.sock"])
            .address
            .as_deref(),
        Some("/run/criu.sock")
    );
    assert_eq!(inv(&["page-server", "--port", "27"]).port, Some(27));
    assert_eq!(inv(&["lazy-pages", "-D", "/d"]).action, Action::LazyPages);
    assert_eq!(
        inv(&["check", "--feature", "uffd"]).action,
        Action::Check(CheckRequest {
            feature: Some("uffd".into()),
            ..Default::default()
        })
    );
    assert_eq!(
        inv(&["check", "--all"]).action,
        Action::Check(CheckRequest {
            feature: None,
            extra: true,
            experimental: true
        })
    );
    let i = inv(&["restore", "--exec-cmd", "--", "/bin/sh", "-c", "true"]);
    assert_eq!(i.opts.exec_cmd, ["/bin/sh", "-c", "true"]);
    assert!(matches!(
        parse_in(&Scratch::new().env(), &["check", "--bogus", "--help"]),
        Ok(Command::Help)
    ));
    assert!(matches!(
        parse_in(&Scratch::new().env(), &["-h"]),
        Ok(Command::Help)
    ));
    assert!(matches!(
        parse_in(&Scratch::new().env(), &["-V"]),
        Ok(Command::Version)
    ));
    assert!(matches!(
        parse_in(&Scratch::new().env(), &["--version"]),
        Ok(Command::Version)
    ));
}

#[test]
fn bad_command_lines_say_why() {
    assert!(err(&[]).contains("command is required"));
    assert!(err(&["frobnicate"]).contains("unknown command 'frobnicate'"));
    assert!(err(&["check", "--bogus"]).contains("--bogus"));
    assert!(err(&["check", "-Z"]).contains("-Z"));
    assert!(err(&["check", "17"]).contains("unexpected argument for command check: 17"));
    assert!(err(&["dump"]).contains("-t PID"));
    assert!(err(&["dump", "-t", "0"]).contains("positive pid"));
    assert!(err(&["dump", "-t", "abc"]).contains("abc"));
    assert!(err(&["check", "--port", "some-port"]).contains("some-port"));
    assert!(err(&["check", "--pre-dump-mode", "invalid"]).contains("invalid"));
    assert!(err(&["check", "--network-lock", "ipfw"]).contains("ipfw"));
    assert!(err(&["check", "--file-validation", "filesizefilesize"]).contains("filesize"));
    assert!(err(&["check", "-J", "invalidjoin-invalid"]).contains("NS:"));
    assert!(err(&["check", "-r"]).contains("-r"));
    assert!(err(&["swrk"]).contains("criu swrk FD"));
    assert!(err(&["swrk", "x"]).contains("'x'"));
    assert!(err(&["cpuinfo"]).contains("dump or check"));
    assert!(err(&["cpuinfo", "frob"]).contains("frob"));
    assert!(err(&["show"]).contains("crit"));
    assert!(err(&["check", "--ms"]).contains("--ms"));
    assert!(err(&["check", "-S"]).contains("--restore-detached"));
    assert!(err(&["dump", "-t", "1", "--inherit-fd", "fd[1]:x"]).contains("restore only"));
    assert!(err(&["dump", "-t", "1", "--mntns-compat-mode"]).contains("restore only"));
    assert!(err(&["pre-dump", "-t", "1", "--lazy-pages"]).contains("lazy-pages"));
    assert!(err(&["check", "--stream"]).contains("--stream"));
    assert!(err(&["restore", "--exec-cmd"]).contains("command to run"));
    assert!(err(&["dump", "-t", "1", "--exec-cmd", "--", "x"]).contains("restore command only"));
    assert!(err(&["restore", "-d", "--exec-cmd", "--", "x"]).contains("cannot be used together"));
    let unknown = err(&["check", "--feature", "warp_drive"]);
    assert!(
        unknown.contains("warp_drive") && unknown.contains("mem_dirty_track"),
        "{unknown}"
    );
}

#[test]
fn restore_warnings() {
    let i = inv(&["restore", "-t", "5", "--network-lock", "skip"]);
    assert_eq!(i.warnings.len(), 2, "{:?}", i.warnings);
}

#[test]
fn config_file_precedence() {
    let s = Scratch::new();
    let mut env = s.env();
    s.file(
        "etc-criu-default.conf",
        "# global\nlog-file global.log\ntcp-established\nverbosity=1\nexternal mnt[g]:g\n",
    );
    s.file(
        "home/.criu/default.conf",
        "log-file user.log\nshell-job\nexternal mnt[u]:u\n",
    );
    let envfile = s.file("env.conf", "log-file env.log\n");
    let explicit = s.file("explicit.conf", "images-dir /from-config\n");

    // Both default files, in order; the command line wins and lists accumulate.
    let i = inv_in(&env, &["check", "--external", "mnt[c]:c", "-v"]);
    let o = &i.opts;
    assert_eq!(
        o.log_file.as_deref(),
        Some(Path::new("/caller/cwd/user.log"))
    );
    assert!(o.tcp_established && o.shell_job);
    assert_eq!(o.external, ["mnt[g]:g", "mnt[u]:u", "mnt[c]:c"]);
    // -v raises the level the configuration files left (1), as CRIU's getopt loop does.
    assert_eq!(o.log_level, 2);
    assert_eq!(i.config_files.len(), 2);

    // A boolean set in a file can be undone on the command line.
    assert!(
        !inv_in(&env, &["check", "--no-tcp-established"])
            .opts
            .tcp_established
    );

    // $CRIU_CONFIG_FILE comes after the default files.
    env.config_env = Some(envfile.clone());
    let o = inv_in(&env, &["check"]).opts;
    assert_eq!(
        o.log_file.as_deref(),
        Some(Path::new("/caller/cwd/env.log"))
    );

    // --no-default-config skips the default files but not $CRIU_CONFIG_FILE.
    let o = inv_in(&env, &["check", "--no-default-config"]).opts;
    assert!(!o.tcp_established);
    assert_eq!(
        o.log_file.as_deref(),
        Some(Path::new("/caller/cwd/env.log"))
    );

    // --config FILE also skips the defaults, comes after $CRIU_CONFIG_FILE and before argv.
    let arg = format!("--config={}", explicit.display());
    let i = inv_in(&env, &["check", &arg]);
    assert!(!i.opts.tcp_established);
    assert_eq!(i.opts.images_dir, Path::new("/from-config"));
    assert_eq!(
        i.opts.log_file.as_deref(),
        Some(Path::new("/from-config/env.log"))
    );
    let i = inv_in(
        &env,
        &[
            "check",
            "--config",
            explicit.to_str().unwrap(),
            "-D",
            "/argv",
        ],
    );
    assert_eq!(i.opts.images_dir, Path::new("/argv"));
    assert_eq!(i.config_files, [envfile, explicit]);
}

#[test]
fn config_file_errors_name_file_and_line() {
    let s = Scratch::new();
    let bad_option = s.file("bad.conf", "shell-job\n\nwarp-drive on\n");
    let e = parse_in(
        &s.env(),
        &["check", "--config", bad_option.to_str().unwrap()],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("bad.conf, line 3") && e.contains("warp-drive"),
        "{e}"
    );

    let bad_value = s.file("badval.conf", "tree abc\n");
    let e = parse_in(
        &s.env(),
        &["check", "--config", bad_value.to_str().unwrap()],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("line 1") && e.contains("abc"), "{e}");

    let flag_with_value = s.file("flag.conf", "shell-job yes\n");
    let e = parse_in(
        &s.env(),
        &["check", "--config", flag_with_value.to_str().unwrap()],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("line 1"), "{e}");

    let e = parse_in(&s.env(), &["check", "--config", "/nonexistent/criu.conf"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/criu.conf"), "{e}");
}

#[test]
fn config_file_relative_to_cwd_and_quoted_values() {
    let s = Scratch::new();
    s.file(
        "conf/c.conf",
        "work-dir \"/w/my \\\"work\\\" dir\"\n--tcp-close\nlog-file x.log # comment\n",
    );
    let mut env = s.env();
    env.cwd = s.0.clone();
    let o = inv_in(&env, &["check", "--config", "conf/c.conf"]).opts;
    assert_eq!(o.work_dir(), Path::new("/w/my \"work\" dir"));
    assert!(o.tcp_close);
    assert_eq!(
        o.log_file.as_deref(),
        Some(Path::new("/w/my \"work\" dir/x.log"))
    );
}

#[test]
fn action_scripts_run_last_added_first() {
    let o = inv(&[
        "dump",
        "-t",
        "1",
        "--action-script",
        "a",
        "--action-script",
        "/b",
    ])
    .opts;
    assert_eq!(
        o.action_scripts,
        [PathBuf::from("/b"), PathBuf::from("/caller/cwd/a")]
    );
}

#[test]
fn normalize_only_touches_verbosity_before_double_dash() {
    let out = normalize_argv(&args(&[
        "-v4",
        "-verbosity",
        "-vv",
        "-x12,34",
        "-x",
        "--",
        "-v4",
    ]));
    assert_eq!(
        out,
        [
            "--verbosity=4",
            "--verbosity",
            "-vv",
            "--ext-unix-sk=12,34",
            "-x",
            "--",
            "-v4"
        ]
    );
    assert!(inv(&["dump", "-t", "1", "-x12"]).opts.ext_unix_sk);
}
