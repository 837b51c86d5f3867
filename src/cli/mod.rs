//! The `criu` command line: CRIU's commands and flag spellings, converted into
//! `crate::options::Options` (`parse`), then run (`run`).
//!
//! Exit codes are CRIU's: 0 on success, 1 on any failure. Messages meant for the user go to
//! stdout (help, version, `criu check`), errors to stderr, and the log where -o says.

pub mod check;
pub mod config;
mod error;
pub mod parse;
pub mod scripts;
pub mod spec;
pub mod values;

use std::io::Write;
use std::path::Path;

use nix::errno::Errno;
use nix::sys::wait::WaitStatus;

pub use error::CliError;
pub use parse::{parse, parse_with, Action, CheckRequest, Command, Invocation, ParseEnv};

use crate::engine;

/// Runs the command with `args` (argv without argv[0]) and returns the exit code.
pub fn run(args: Vec<String>) -> i32 {
    crate::sys::fd::ensure_std_fds();
    let inv = match parse(&args) {
        Ok(Command::Help) => {
            print_stdout(&help_text());
            return 0;
        }
        Ok(Command::Version) => {
            print_stdout(&version_text());
            return 0;
        }
        Ok(Command::Run(inv)) => *inv,
        Err(e) => {
            let hint = matches!(e, CliError::Usage(_));
            let text = e.to_string();
            // clap's messages already start with "error:".
            if text.starts_with("error:") {
                eprintln!("{text}");
            } else {
                eprintln!("Error: {text}");
            }
            if hint {
                eprintln!("Try 'criu --help' for more information.");
            }
            return 1;
        }
    };
    let name = inv.action.name();
    let logging_to_file = inv.opts.log_file.is_some();
    match execute(inv) {
        Ok(code) => code,
        Err(e) => {
            // A user running the command sees why it failed even when the log went to a file.
            if logging_to_file {
                log::error!("{e}");
            }
            eprintln!("Error (criu {name}): {e}");
            1
        }
    }
}

fn print_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// `criu --help`.
pub fn help_text() -> String {
    let mut text = spec::command().render_help().to_string();
    text.push_str("\nFeatures for 'criu check --feature':\n  ");
    let mut width = 2;
    for (i, name) in check::feature_names().iter().enumerate() {
        if i > 0 {
            text.push(',');
            if width + 2 + name.len() > 96 {
                text.push_str("\n  ");
                width = 2;
            } else {
                text.push(' ');
                width += 2;
            }
        }
        text.push_str(name);
        width += name.len();
    }
    text.push('\n');
    text
}

/// `criu --version`: CRIU's shape ("Version: X.Y", then "GitID: ...").
pub fn version_text() -> String {
    let mut v = format!("Version: {}.{}", crate::VERSION_MAJOR, crate::VERSION_MINOR);
    if crate::VERSION_SUBLEVEL != 0 {
        v.push_str(&format!(".{}", crate::VERSION_SUBLEVEL));
    }
    let gitid = option_env!("CRIU_RS_GITID")
        .map(str::to_string)
        .unwrap_or_else(|| format!("criu-rs-{}", env!("CARGO_PKG_VERSION")));
    format!("{v}\nGitID: {gitid}\n")
}

/// How `first_unsupported()` names map back to the spelling a user typed.
fn flag_spelling(name: &str) -> &str {
    match name {
        "tcp-skip-in-flight" => "skip-in-flight",
        "auto-ext-mnt" => "ext-mount-map auto",
        "ext-sharing" => "enable-external-sharing",
        "ext-masters" => "enable-external-masters",
        other => other,
    }
}

/// Runs a parsed command; Ok(exit code).
pub fn execute(inv: Invocation) -> Result<i32, CliError> {
    let Invocation {
        action,
        opts,
        address,
        port,
        close_fds,
        config_files,
        warnings,
        ..
    } = inv;

    // CRIU closes these while it parses, before anything can use them.
    let mut close_errors = Vec::new();
    for fd in close_fds {
        if let Err(e) = crate::sys::probe::close_inherited_fd(fd) {
            close_errors.push(format!("--close {fd}: {e}"));
        }
    }

    if let Action::Swrk(fd) = action {
        return Ok(crate::rpc::swrk(fd));
    }

    // Refuse what we cannot do before touching anything, with a message naming it.
    match action {
        Action::Dump | Action::PreDump | Action::Restore | Action::Dedup | Action::Untrack => {
            if let Some(name) = opts.first_unsupported() {
                return Err(CliError::NotSupported(flag_spelling(name).to_string()));
            }
        }
        Action::Check(_) => {}
        Action::Service => {
            // CRIU's default service socket.
            let addr = address.unwrap_or_else(|| "/var/run/criu_service.socket".to_owned());
            return Ok(crate::rpc::service(
                Path::new(&addr),
                opts.restore_detached,
                opts.pidfile.as_deref(),
            ));
        }
        Action::PageServer => {
            if let Some(name) = opts.first_unsupported() {
                return Err(CliError::NotSupported(flag_spelling(name).to_string()));
            }
            if opts.auto_dedup {
                // The server would have to punch holes in the parent's pages as they come.
                return Err(CliError::NotSupported("auto-dedup".into()));
            }
        }
        Action::LazyPages => {
            if opts
                .page_server
                .as_ref()
                .is_some_and(|p| p.address.is_none())
            {
                return Err(CliError::Invalid(
                    "lazy-pages --page-server needs the source's --address (and --port)".into(),
                ));
            }
        }
        Action::CpuinfoDump => return Err(CliError::CommandNotSupported("cpuinfo dump")),
        Action::CpuinfoCheck => return Err(CliError::CommandNotSupported("cpuinfo check")),
        Action::Swrk(_) => unreachable!("handled above"),
    }

    check_privileges(&opts)?;

    if !opts.images_dir.is_dir() {
        let err = std::fs::metadata(&opts.images_dir)
            .err()
            .unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::ENOTDIR));
        return Err(CliError::io(
            format!("cannot open the images dir {}", opts.images_dir.display()),
            err,
        ));
    }
    let work_dir = opts.work_dir().to_path_buf();
    std::env::set_current_dir(&work_dir).map_err(|e| {
        CliError::io(
            format!("cannot change directory to {}", work_dir.display()),
            e,
        )
    })?;
    init_logging(opts.log_file.as_deref(), opts.log_level, opts.log_pid)?;

    // The wall clock once, so the relative times of the log can be set against other logs.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    log::info!(
        "criu-rs {} (CRIU {}.{} interfaces), command: {}, started at {}.{:09} (wall clock)",
        env!("CARGO_PKG_VERSION"),
        crate::VERSION_MAJOR,
        crate::VERSION_MINOR,
        action.name(),
        now.as_secs(),
        now.subsec_nanos()
    );
    for f in &config_files {
        log::info!("Read options from {}", f.display());
    }
    for w in warnings.iter().chain(&close_errors) {
        log::warn!("{w}");
    }

    let mut notify =
        scripts::ActionScripts::new(opts.action_scripts.clone(), opts.images_dir.clone());
    match action {
        Action::Check(req) => run_check(&req),
        Action::Dump => {
            engine::dump(&opts, &mut notify)?;
            log::info!("Dumping finished successfully");
            Ok(0)
        }
        Action::PreDump => {
            engine::pre_dump(&opts, &mut notify)?;
            log::info!("Pre-dumping finished successfully");
            Ok(0)
        }
        Action::Dedup => {
            engine::dedup(&opts)?;
            Ok(0)
        }
        Action::Untrack => {
            engine::untrack(&opts)?;
            Ok(0)
        }
        Action::Restore => {
            if opts.orphan_pts_master {
                // The new pty's master would be closed at once: the task's terminal hung up.
                return Err(CliError::from(crate::error::Error::InvalidOptions(
                    "--orphan-pts-master: the new pty's master goes to an RPC client \
                     (criu_set_orphan_pts_master); the command line has nobody to give it to"
                        .into(),
                )));
            }
            let outcome = engine::restore(&opts, &mut notify)?;
            log::info!(
                "Restore finished successfully; the tree's root is pid {}",
                outcome.pid
            );
            if !opts.restore_detached {
                wait_for_restored_tree(outcome.pid);
            }
            Ok(0)
        }
        Action::LazyPages => {
            crate::lazy::run_daemon(&opts.images_dir, opts.work_dir(), &opts)?;
            log::info!("lazy-pages: every page was delivered");
            Ok(0)
        }
        Action::PageServer => {
            let port = port.unwrap_or(crate::pageserver::DEFAULT_PORT);
            crate::pageserver::server::run(&opts, address.as_deref(), port)?;
            Ok(0)
        }
        _ => unreachable!("refused above"),
    }
}

/// CRIU's rule for every command but swrk: CAP_CHECKPOINT_RESTORE (or CAP_SYS_ADMIN), and root
/// unless --unprivileged.
fn check_privileges(opts: &crate::Options) -> Result<(), CliError> {
    match crate::kerndat::privilege_problem(opts.unprivileged) {
        Some(why) => Err(CliError::Invalid(why)),
        None => Ok(()),
    }
}

/// CRIU truncates the log file it is given; "-" means stdout.
fn init_logging(file: Option<&Path>, level: i32, with_pid: bool) -> Result<(), CliError> {
    let target = match file {
        None => None,
        Some(p) if p == Path::new("-") => Some(Path::new("/dev/stdout")),
        Some(p) => {
            std::fs::File::create(p)
                .map_err(|e| CliError::io(format!("cannot create log file {}", p.display()), e))?;
            Some(p)
        }
    };
    crate::logging::init(target, level, with_pid).map_err(|e| {
        CliError::io(
            format!(
                "cannot open log file {}",
                target.unwrap_or(Path::new("stderr")).display()
            ),
            e,
        )
    })
}

fn run_check(req: &CheckRequest) -> Result<i32, CliError> {
    if let Some(name) = &req.feature {
        let line = check::check_feature(name)?;
        print_stdout(&format!("{line}\n"));
        return Ok(0);
    }
    let (report, verdict) = check::report(req);
    print_stdout(&report);
    verdict.map(|_| 0)
}

/// Without -d, CRIU stays the parent of the restored tree: it waits until it has no children
/// left (the root task and anything else it forked), then exits 0 whatever their exit status.
fn wait_for_restored_tree(root: i32) {
    loop {
        match nix::sys::wait::wait() {
            Ok(WaitStatus::Exited(pid, code)) => {
                log::info!("Task {pid} exited with status {code}");
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                log::info!("Task {pid} was killed by {sig}");
            }
            Ok(_) => {}
            Err(Errno::EINTR) => {}
            Err(Errno::ECHILD) => break,
            Err(e) => {
                log::error!("Error while waiting for the restored tree (root {root}): {e}");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_has_criu_shape() {
        let v = version_text();
        let mut lines = v.lines();
        assert_eq!(lines.next(), Some("Version: 4.2"));
        assert!(lines.next().unwrap().starts_with("GitID: "));
        assert_eq!(lines.next(), None);
    }

    #[test]
    fn help_lists_commands_and_features() {
        let h = help_text();
        for word in [
            "dump",
            "pre-dump",
            "restore",
            "--images-dir",
            "--tcp-established",
            "--verbosity",
            "mem_dirty_track",
            "uffd-noncoop",
        ] {
            assert!(h.contains(word), "{word} missing from help");
        }
    }

    #[test]
    fn unsupported_names_map_to_flags_that_exist() {
        let cmd = spec::command();
        for name in [
            "tcp-skip-in-flight",
            "ext-sharing",
            "ext-masters",
            "tcp-close",
            "page-server",
        ] {
            let flag = flag_spelling(name).split(' ').next().unwrap();
            assert!(
                cmd.get_arguments().any(|a| a.get_long() == Some(flag)),
                "{name} -> {flag}"
            );
        }
    }
}
