//! argv and configuration files → what to run, as a value. Reading configuration files is the
//! only I/O; everything the environment contributes (cwd, $HOME, $CRIU_CONFIG_FILE) comes in
//! through `ParseEnv`, so tests can drive it.
//!
//! Precedence is CRIU's: /etc/criu/default.conf, ~/.criu/default.conf, $CRIU_CONFIG_FILE,
//! --config FILE, then the command line. Each source is parsed on its own and applied in that
//! order: a later single-valued option replaces an earlier one, list options accumulate, and
//! `-v` raises whatever level the earlier sources left.

use std::path::{Component, Path, PathBuf};

use clap::parser::ValueSource;
use clap::ArgMatches;

use super::values::{self, ExtMount, Verbosity};
use super::{check, config, spec, CliError};
use crate::options::{
    CgroupMode, FileValidation, NetworkLock, Options, PageServerAddr, PreDumpMode,
};

/// CRIU's system-wide configuration file.
pub const GLOBAL_CONFIG: &str = "/etc/criu/default.conf";
/// The per-user configuration file, under $HOME.
pub const USER_CONFIG: &str = ".criu/default.conf";

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    /// `-h/--help` anywhere.
    Help,
    /// `-V/--version`.
    Version,
    Run(Box<Invocation>),
}

/// A command to run with its options.
#[derive(Debug)]
pub struct Invocation {
    pub action: Action,
    /// Paths are absolute: the images and work dirs against the caller's cwd, the log file,
    /// pidfile and action scripts against the work dir.
    pub opts: Options,
    /// `--address`/`--port` for the server commands (`service`, `page-server`).
    pub address: Option<String>,
    pub port: Option<u16>,
    /// `--close FD`: fds to close before anything else.
    pub close_fds: Vec<i32>,
    /// Configuration files that were read, in order.
    pub config_files: Vec<PathBuf>,
    /// Things worth a warning in the log once it is open.
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Dump,
    PreDump,
    Restore,
    Check(CheckRequest),
    PageServer,
    LazyPages,
    Service,
    Swrk(i32),
    CpuinfoDump,
    CpuinfoCheck,
    Dedup,
    Untrack,
}

impl Action {
    /// The command as the user typed it.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Dump => "dump",
            Action::PreDump => "pre-dump",
            Action::Restore => "restore",
            Action::Check(_) => "check",
            Action::PageServer => "page-server",
            Action::LazyPages => "lazy-pages",
            Action::Service => "service",
            Action::Swrk(_) => "swrk",
            Action::CpuinfoDump => "cpuinfo dump",
            Action::CpuinfoCheck => "cpuinfo check",
            Action::Dedup => "dedup",
            Action::Untrack => "untrack",
        }
    }
}

/// `criu check [--feature NAME] [--extra] [--experimental] [--all]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckRequest {
    pub feature: Option<String>,
    pub extra: bool,
    pub experimental: bool,
}

/// What the parser takes from the process environment.
#[derive(Clone, Debug)]
pub struct ParseEnv {
    /// Relative images/work dirs and configuration files are relative to this.
    pub cwd: PathBuf,
    /// $HOME: where ~/.criu/default.conf lives.
    pub home: Option<PathBuf>,
    /// $CRIU_CONFIG_FILE.
    pub config_env: Option<PathBuf>,
    /// /etc/criu/default.conf (a parameter so tests can point elsewhere).
    pub global_config: PathBuf,
}

impl ParseEnv {
    pub fn from_process() -> Result<ParseEnv, CliError> {
        Ok(ParseEnv {
            cwd: std::env::current_dir()
                .map_err(|e| CliError::io("cannot read the current directory", e))?,
            home: std::env::var_os("HOME").map(PathBuf::from),
            config_env: std::env::var_os("CRIU_CONFIG_FILE").map(PathBuf::from),
            global_config: PathBuf::from(GLOBAL_CONFIG),
        })
    }

    fn user_config(&self) -> Option<PathBuf> {
        self.home.as_ref().map(|h| h.join(USER_CONFIG))
    }
}

/// Parses `args` (argv without argv[0]) in the current process environment.
pub fn parse(args: &[String]) -> Result<Command, CliError> {
    parse_with(args, &ParseEnv::from_process()?)
}

/// Parses `args` with the given environment.
pub fn parse_with(args: &[String], env: &ParseEnv) -> Result<Command, CliError> {
    // As in CRIU, --help is honoured even when something else on the line is wrong.
    if args
        .iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "--help" || a == "-h")
    {
        return Ok(Command::Help);
    }
    let cmd = spec::command();
    let argv = normalize_argv(args);
    let m = cmd
        .clone()
        .try_get_matches_from(&argv)
        .map_err(|e| CliError::Usage(clap_message(&e)))?;
    if m.get_flag("help") {
        return Ok(Command::Help);
    }
    if m.get_flag("version") {
        return Ok(Command::Version);
    }

    let mut acc = Accum::default();
    let explicit_config = one::<PathBuf>(&m, "config").map(|p| absolute(&env.cwd, &p));
    // --config replaces the default files, as in CRIU.
    if !m.get_flag("no-default-config") && explicit_config.is_none() {
        let defaults = [Some(env.global_config.clone()), env.user_config()];
        for path in defaults.into_iter().flatten() {
            if path.is_file() {
                apply_config_file(&mut acc, &cmd, &path)?;
            }
        }
    }
    if let Some(path) = &env.config_env {
        let path = absolute(&env.cwd, path);
        if path.is_file() {
            apply_config_file(&mut acc, &cmd, &path)?;
        } else {
            acc.warnings.push(format!(
                "CRIU_CONFIG_FILE={} does not exist: ignored",
                path.display()
            ));
        }
    }
    if let Some(path) = &explicit_config {
        apply_config_file(&mut acc, &cmd, path)?;
    }
    apply(&mut acc, &m);

    let words: Vec<String> = m
        .get_many::<String>("command")
        .map(|v| v.cloned().collect())
        .unwrap_or_default();
    finish(acc, &words, env).map(|inv| Command::Run(Box::new(inv)))
}

/// Rewrites the spellings clap cannot express: attached values of short options whose value is
/// optional (`-vN`, `-xINO,INO`: clap wants '=' there) and the single-dash `-verbosity[=N]` some
/// tools send.
fn normalize_argv(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut options_ended = false;
    for arg in args {
        if options_ended || arg == "--" {
            options_ended = true;
            out.push(arg.clone());
            continue;
        }
        let rewritten = if let Some(rest) = arg.strip_prefix("-verbosity") {
            (rest.is_empty() || rest.starts_with('=')).then(|| format!("--verbosity{rest}"))
        } else if let Some(n) = arg
            .strip_prefix("-v")
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        {
            Some(format!("--verbosity={n}"))
        } else {
            arg.strip_prefix("-x")
                .filter(|n| n.starts_with(|c: char| c.is_ascii_digit()))
                .map(|n| format!("--ext-unix-sk={n}"))
        };
        out.push(rewritten.unwrap_or_else(|| arg.clone()));
    }
    out
}

fn apply_config_file(acc: &mut Accum, cmd: &clap::Command, path: &Path) -> Result<(), CliError> {
    let options = config::read(path)
        .map_err(|e| {
            CliError::io(
                format!("cannot read configuration file {}", path.display()),
                e,
            )
        })?
        .map_err(|e| CliError::Config {
            path: path.to_path_buf(),
            line: e.line,
            msg: e.msg,
        })?;
    for opt in options {
        // Which files are read is decided by the command line alone (CRIU ignores these too).
        if matches!(opt.name.as_str(), "config" | "no-default-config") {
            continue;
        }
        let m = cmd
            .clone()
            .try_get_matches_from([opt.to_arg()])
            .map_err(|e| CliError::Config {
                path: path.to_path_buf(),
                line: opt.line,
                msg: first_line(&e.render().to_string()),
            })?;
        apply(acc, &m);
    }
    acc.config_files.push(path.to_path_buf());
    Ok(())
}

/// clap's message without its usage block and its "to pass 'X' as a value" tip (wrong for
/// us: positional words are commands). Tips such as "a similar argument exists" stay.
fn clap_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let kept: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:"))
        .filter(|l| !l.contains("as a value, use '--"))
        .collect();
    kept.join("\n").trim_end().to_string()
}

fn first_line(clap_message: &str) -> String {
    let line = clap_message.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// Options gathered from all sources, before the command is known.
#[derive(Default)]
struct Accum {
    opts: Options,
    check: CheckRequest,
    close_fds: Vec<i32>,
    exec_cmd: bool,
    mntns_compat_mode: bool,
    page_server: bool,
    address: Option<String>,
    port: Option<u16>,
    network_lock_given: bool,
    removed_ms: bool,
    config_files: Vec<PathBuf>,
    warnings: Vec<String>,
}

/// Whether `id` appeared in this source (not a clap default).
fn given(m: &ArgMatches, id: &str) -> bool {
    m.value_source(id) == Some(ValueSource::CommandLine)
}

fn one<T: Clone + Send + Sync + 'static>(m: &ArgMatches, id: &str) -> Option<T> {
    if given(m, id) {
        m.get_one::<T>(id).cloned()
    } else {
        None
    }
}

fn many<T: Clone + Send + Sync + 'static>(m: &ArgMatches, id: &str) -> Vec<T> {
    if given(m, id) {
        m.get_many::<T>(id)
            .map(|v| v.cloned().collect())
            .unwrap_or_default()
    } else {
        Vec::new()
    }
}

/// Applies a `--X`/`--no-X` pair to `field` if either appeared.
fn set_bool(m: &ArgMatches, yes: &str, no: &str, field: &mut bool) {
    if given(m, yes) {
        *field = true;
    } else if given(m, no) {
        *field = false;
    }
}

fn set<T: Clone + Send + Sync + 'static>(m: &ArgMatches, id: &str, field: &mut T) {
    if let Some(v) = one::<T>(m, id) {
        *field = v;
    }
}

fn set_opt<T: Clone + Send + Sync + 'static>(m: &ArgMatches, id: &str, field: &mut Option<T>) {
    if let Some(v) = one::<T>(m, id) {
        *field = Some(v);
    }
}

/// Applies one source's options on top of what earlier sources set.
fn apply(acc: &mut Accum, m: &ArgMatches) {
    let o = &mut acc.opts;

    set_opt(m, "tree", &mut o.pid);
    if given(m, "leave-stopped") {
        o.leave_stopped = true;
        o.leave_running = false;
    }
    if given(m, "leave-running") {
        o.leave_running = true;
        o.leave_stopped = false;
    }
    set_bool(
        m,
        "restore-detached",
        "no-restore-detached",
        &mut o.restore_detached,
    );
    set_bool(
        m,
        "restore-sibling",
        "no-restore-sibling",
        &mut o.restore_sibling,
    );
    set::<PathBuf>(m, "images-dir", &mut o.images_dir);
    set_opt(m, "work-dir", &mut o.work_dir);
    set_opt(m, "pidfile", &mut o.pidfile);
    for caps in many::<String>(m, "cpu-cap") {
        let current = o.cpu_cap.unwrap_or(values::cpu_cap::DEFAULT);
        // The syntax was checked by the value parser.
        o.cpu_cap = values::apply_cpu_cap(current, &caps).ok();
    }
    if given(m, "exec-cmd") {
        acc.exec_cmd = true;
    }
    set_opt(m, "freeze-cgroup", &mut o.freeze_cgroup);
    set_bool(m, "weak-sysctls", "no-weak-sysctls", &mut o.weak_sysctls);
    if given(m, "lazy-pages") {
        o.lazy_pages = true;
    }
    set_bool(m, "stream", "no-stream", &mut o.stream);
    set_bool(
        m,
        "mntns-compat-mode",
        "no-mntns-compat-mode",
        &mut acc.mntns_compat_mode,
    );
    if let Some(lock) = one::<NetworkLock>(m, "network-lock") {
        o.network_lock = lock;
        acc.network_lock_given = true;
    }
    set_bool(m, "unprivileged", "no-unprivileged", &mut o.unprivileged);
    set_bool(m, "allow-uprobes", "no-allow-uprobes", &mut o.allow_uprobes);

    o.external.extend(many::<String>(m, "external"));

    set_bool(
        m,
        "tcp-established",
        "no-tcp-established",
        &mut o.tcp_established,
    );
    set_bool(
        m,
        "skip-in-flight",
        "no-skip-in-flight",
        &mut o.tcp_skip_in_flight,
    );
    set_bool(m, "tcp-close", "no-tcp-close", &mut o.tcp_close);
    if given(m, "ext-unix-sk") {
        o.ext_unix_sk = true;
    }
    set_opt(m, "root", &mut o.root);
    set_bool(
        m,
        "evasive-devices",
        "no-evasive-devices",
        &mut o.evasive_devices,
    );
    set_bool(m, "link-remap", "no-link-remap", &mut o.link_remap);
    set_opt(m, "ghost-limit", &mut o.ghost_limit);
    // CRIU runs the last added script first.
    for script in many::<PathBuf>(m, "action-script") {
        o.action_scripts.insert(0, script);
    }
    set_bool(m, "shell-job", "no-shell-job", &mut o.shell_job);
    set_bool(m, "file-locks", "no-file-locks", &mut o.file_locks);
    set_opt(m, "libdir", &mut o.libdir);
    set_opt(m, "timeout", &mut o.timeout);
    set_bool(m, "force-irmap", "no-force-irmap", &mut o.force_irmap);
    o.irmap_scan_paths
        .extend(many::<String>(m, "irmap-scan-path"));
    if let Some(mode) = many::<CgroupMode>(m, "manage-cgroups").pop() {
        o.manage_cgroups = true;
        o.manage_cgroups_mode = Some(mode);
    }
    o.cgroup_roots
        .extend(many::<(Option<String>, String)>(m, "cgroup-root"));
    set_opt(m, "cgroup-props", &mut o.cgroup_props);
    set_opt(m, "cgroup-props-file", &mut o.cgroup_props_file);
    o.cgroup_dump_controllers
        .extend(many::<String>(m, "cgroup-dump-controller"));
    set_opt(m, "cgroup-yard", &mut o.cgroup_yard);
    set_opt(m, "lsm-profile", &mut o.lsm_profile);
    set_opt(m, "lsm-mount-context", &mut o.lsm_mount_context);
    o.skip_mnt.extend(many::<String>(m, "skip-mnt"));
    for list in many::<String>(m, "enable-fs") {
        o.enable_fs.extend(
            list.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        );
    }
    o.inherit_fd.extend(many::<(i32, String)>(m, "inherit-fd"));
    for ns in many::<u32>(m, "empty-ns") {
        o.empty_ns |= ns;
    }
    o.join_ns
        .extend(many::<(String, String, Option<String>)>(m, "join-ns"));
    for mount in many::<ExtMount>(m, "ext-mount-map") {
        match mount {
            ExtMount::Auto => o.auto_ext_mnt = true,
            ExtMount::Map(k, v) => o.ext_mounts.push((k, v)),
        }
    }
    if given(m, "enable-external-sharing") {
        o.ext_sharing = true;
    }
    if given(m, "enable-external-masters") {
        o.ext_masters = true;
    }
    if given(m, "auto-ext-mnt") {
        o.auto_ext_mnt = true;
    }
    o.veth_pairs
        .extend(many::<(String, String)>(m, "veth-pair"));
    set_opt::<FileValidation>(m, "file-validation", &mut o.file_validation);
    set_bool(
        m,
        "skip-file-rwx-check",
        "no-skip-file-rwx-check",
        &mut o.skip_file_rwx_check,
    );
    set_bool(
        m,
        "orphan-pts-master",
        "no-orphan-pts-master",
        &mut o.orphan_pts_master,
    );

    set_bool(m, "extra", "no-extra", &mut acc.check.extra);
    set_bool(
        m,
        "experimental",
        "no-experimental",
        &mut acc.check.experimental,
    );
    if given(m, "all") {
        acc.check.extra = true;
        acc.check.experimental = true;
    }
    set_opt(m, "feature", &mut acc.check.feature);

    set_opt(m, "log-file", &mut o.log_file);
    set_bool(m, "log-pid", "no-log-pid", &mut o.log_pid);
    for v in many::<Verbosity>(m, "verbosity") {
        o.log_level = match v {
            Verbosity::Increase => o.log_level.saturating_add(1),
            Verbosity::Set(n) => n,
        };
    }
    set_bool(m, "display-stats", "no-display-stats", &mut o.display_stats);

    set_bool(m, "track-mem", "no-track-mem", &mut o.track_mem);
    set_opt(m, "prev-images-dir", &mut o.prev_images_dir);
    set_bool(m, "page-server", "no-page-server", &mut acc.page_server);
    set_bool(m, "auto-dedup", "no-auto-dedup", &mut o.auto_dedup);
    set::<PreDumpMode>(m, "pre-dump-mode", &mut o.pre_dump_mode);

    set_opt(m, "address", &mut acc.address);
    set_opt(m, "port", &mut acc.port);
    set_opt(m, "ps-socket", &mut o.ps_socket);
    set_opt(m, "status-fd", &mut o.status_fd);
    set_opt(m, "tls-cacert", &mut o.tls.cacert);
    set_opt(m, "tls-cacrl", &mut o.tls.cacrl);
    set_opt(m, "tls-cert", &mut o.tls.cert);
    set_opt(m, "tls-key", &mut o.tls.key);
    set_bool(m, "tls", "no-tls", &mut o.tls.enabled);
    if given(m, "tls-no-cn-verify") {
        o.tls.no_cn_verify = true;
    }

    acc.close_fds.extend(many::<i32>(m, "close"));
    if given(m, "ms") {
        acc.removed_ms = true;
    }
    // --deprecated and --ghost-fiemap change nothing here: we have no deprecated
    // functionality, and how a sparse deleted file is read does not change its image.
}

/// Picks the command, checks what CRIU checks before running it, and resolves paths.
fn finish(mut acc: Accum, words: &[String], env: &ParseEnv) -> Result<Invocation, CliError> {
    let Some(word) = words.first() else {
        return Err(CliError::Usage("a command is required".into()));
    };
    let mut rest = &words[1..];
    let action = match word.as_str() {
        "dump" => Action::Dump,
        "pre-dump" => Action::PreDump,
        "restore" => Action::Restore,
        "check" => Action::Check(acc.check.clone()),
        "page-server" => Action::PageServer,
        "lazy-pages" => Action::LazyPages,
        "service" => Action::Service,
        "dedup" => Action::Dedup,
        "untrack" => Action::Untrack,
        "swrk" => {
            let [fd] = rest else {
                return Err(CliError::Usage("usage: criu swrk FD".into()));
            };
            let fd = values::fd(fd)
                .map_err(|_| CliError::Usage(format!("criu swrk: '{fd}' is not an fd number")))?;
            // swrk is started by libcriu: the RPC request carries the options, not argv.
            return Ok(Invocation {
                action: Action::Swrk(fd),
                opts: acc.opts,
                address: None,
                port: None,
                close_fds: acc.close_fds,
                config_files: acc.config_files,
                warnings: acc.warnings,
            });
        }
        "cpuinfo" => {
            let action = match rest.first().map(String::as_str) {
                Some("dump") => Action::CpuinfoDump,
                Some("check") => Action::CpuinfoCheck,
                Some(other) => {
                    return Err(CliError::Usage(format!(
                        "unknown cpuinfo action '{other}': expected dump or check"
                    )))
                }
                None => {
                    return Err(CliError::Usage(
                        "cpuinfo needs an action: dump or check".into(),
                    ))
                }
            };
            rest = &rest[1..];
            action
        }
        "exec" => {
            return Err(CliError::Invalid(
                "the 'exec' command was removed from CRIU (it became the compel library)".into(),
            ))
        }
        "show" => {
            return Err(CliError::Invalid(
                "the 'show' command was removed from CRIU: use 'crit decode -i FILE --pretty'"
                    .into(),
            ))
        }
        other => {
            return Err(CliError::Usage(format!(
                "unknown command '{other}'; commands: {}",
                spec::COMMAND_NAMES.join(", ")
            )))
        }
    };

    let o = &mut acc.opts;
    if acc.exec_cmd {
        if rest.is_empty() {
            return Err(CliError::Usage(
                "--exec-cmd needs the command to run after the options".into(),
            ));
        }
        if action != Action::Restore {
            return Err(CliError::Usage(
                "--exec-cmd is available for the restore command only".into(),
            ));
        }
        if o.restore_detached {
            return Err(CliError::Usage(
                "--restore-detached and --exec-cmd cannot be used together".into(),
            ));
        }
        o.exec_cmd = rest.to_vec();
    } else if !rest.is_empty() {
        return Err(CliError::Usage(format!(
            "unexpected argument{} for command {}: {}",
            if rest.len() > 1 { "s" } else { "" },
            action.name(),
            rest.join(" ")
        )));
    }

    if acc.removed_ms {
        return Err(CliError::Invalid(
            "--ms was removed from CRIU; see 'criu check --help' for --feature, --extra and --all"
                .into(),
        ));
    }
    if o.stream
        && !matches!(
            action,
            Action::Dump | Action::PreDump | Action::Restore | Action::CpuinfoDump
        )
    {
        return Err(CliError::Invalid(format!(
            "--stream cannot be used with the {} command",
            action.name()
        )));
    }
    if o.restore_sibling && !o.restore_detached {
        return Err(CliError::Invalid(
            "--restore-sibling only makes sense with --restore-detached".into(),
        ));
    }
    if !o.inherit_fd.is_empty() && action != Action::Restore {
        return Err(CliError::Invalid(
            "--inherit-fd is an option of restore only".into(),
        ));
    }
    if acc.mntns_compat_mode && action != Action::Restore {
        return Err(CliError::Invalid(
            "--mntns-compat-mode is an option of restore only".into(),
        ));
    }
    if let Some(name) = &acc.check.feature {
        if !check::is_known_feature(name) {
            return Err(CliError::UnknownFeature {
                name: name.clone(),
                known: check::feature_names().join(", "),
            });
        }
    }
    match action {
        Action::Dump | Action::PreDump if o.pid.is_none() => {
            return Err(CliError::Invalid(format!(
                "{} needs the pid of the tree's root: -t PID",
                action.name()
            )));
        }
        Action::PreDump if o.lazy_pages => {
            return Err(CliError::Invalid(
                "cannot pre-dump with --lazy-pages".into(),
            ));
        }
        Action::Restore => {
            if o.pid.is_some() {
                acc.warnings.push(
                    "-t is ignored by restore: the tree to restore is the one in the images".into(),
                );
            }
            if acc.network_lock_given {
                acc.warnings.push(
                    "--network-lock is ignored by restore: the method recorded by dump is used"
                        .into(),
                );
            }
        }
        _ => {}
    }
    if o.shell_job && o.leave_stopped && o.restore_detached && action == Action::Restore {
        acc.warnings
            .push("a stopped and detached shell job gets SIGHUP when its group is orphaned".into());
    }

    // CRIU opens the images dir and chdir()s into the work dir before opening the log file or
    // the pidfile: the log file and the pidfile are relative to the work dir.
    o.images_dir = absolute(&env.cwd, &o.images_dir);
    let work_dir = match &o.work_dir {
        Some(w) => absolute(&env.cwd, w),
        None => o.images_dir.clone(),
    };
    o.log_file = o.log_file.take().map(|f| {
        if f == Path::new("-") {
            f
        } else {
            absolute(&work_dir, &f)
        }
    });
    o.pidfile = o.pidfile.take().map(|f| absolute(&work_dir, &f));
    o.action_scripts = o
        .action_scripts
        .iter()
        .map(|s| absolute(&work_dir, s))
        .collect();
    o.work_dir = Some(work_dir);
    if o.lazy_pages && action == Action::Dump {
        o.lazy_listen = Some(PageServerAddr {
            address: acc.address.clone(),
            port: acc.port.unwrap_or(crate::pageserver::DEFAULT_PORT),
        });
    }
    if acc.page_server {
        o.page_server = Some(PageServerAddr {
            address: acc.address.clone(),
            port: acc.port.unwrap_or(0),
        });
    }

    Ok(Invocation {
        action,
        opts: acc.opts,
        address: acc.address,
        port: acc.port,
        close_fds: acc.close_fds,
        config_files: acc.config_files,
        warnings: acc.warnings,
    })
}

/// `p` against `base` (unless absolute), without "." components. ".." is kept: with symlinks,
/// only the kernel knows what it means.
fn absolute(base: &Path, p: &Path) -> PathBuf {
    base.join(p)
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect()
}

#[cfg(test)]
mod tests;
