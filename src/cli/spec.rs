//! The `criu` command as clap sees it: every CRIU option with its spellings, in one flat
//! command. CRIU parses with getopt_long, so any option may come before or after the command
//! word, and the same options come from configuration files (which have no command): a flat
//! option set plus positional `COMMAND [ARGS...]` models that exactly.
//!
//! Arg ids are the long option names; `parse` reads values back by those ids.

use clap::builder::ValueParser;
use clap::{Arg, ArgAction, Command};

use super::values;

const USAGE: &str = "\
criu dump|pre-dump -t PID [<options>]
       criu restore [<options>]
       criu check [--feature FEAT]
       criu page-server
       criu service [<options>]
       criu lazy-pages -D DIR [<options>]
       criu swrk FD
       criu cpuinfo dump|check
       criu dedup -D DIR
       criu untrack -t PID";

const COMMANDS: &str = "\
Commands:
  dump           checkpoint the process tree rooted at PID
  pre-dump       copy memory of a running tree, to shorten a later dump's freeze
  restore        rebuild a process tree from images
  check          report which kernel mechanisms and features this machine and build offer
  page-server    receive the pages of one dump over TCP (-D DIR --port N)
  lazy-pages     serve memory of a lazily restored tree from the images, or with
                 --page-server --address A --port N from the source's `dump --lazy-pages`
  service        serve RPC requests on a socket
  swrk FD        serve RPC requests on an inherited socket (used by libcriu)
  cpuinfo dump   write CPU information into an image (not supported yet)
  cpuinfo check  compare the CPU with an image (not supported yet)
  dedup          free pages of parent images that the images in DIR hold again
  untrack        stop the memory tracking pre-dumps set up in the tree rooted at PID
                 (criu-rs: for a migration that will not finish)";

const AFTER_HELP: &str = "\
Boolean options also have a negated form: --no-OPTION (e.g. --no-display-stats).
Long options may be abbreviated to any unambiguous prefix and take their value as
'--opt value' or '--opt=value'.

Configuration files: /etc/criu/default.conf, then ~/.criu/default.conf (both skipped with
--no-default-config or --config), then $CRIU_CONFIG_FILE, then --config FILE; the command
line wins. One option per line without the leading dashes, e.g. 'tcp-established' or
'work-dir \"/some dir\"'; '#' starts a comment.

Options marked (not supported yet) are accepted for compatibility and refused when a
dump, pre-dump or restore would need them.";

/// A boolean option and its `--no-` twin; whichever comes last wins.
fn negatable(
    cmd: Command,
    id: &'static str,
    no_id: &'static str,
    short: Option<char>,
    help: &'static str,
) -> Command {
    let mut yes = Arg::new(id)
        .long(id)
        .action(ArgAction::SetTrue)
        .overrides_with(no_id)
        .help(help);
    if let Some(c) = short {
        yes = yes.short(c);
    }
    let no = Arg::new(no_id)
        .long(no_id)
        .action(ArgAction::SetTrue)
        .overrides_with(id)
        .hide(true);
    cmd.arg(yes).arg(no)
}

fn flag(id: &'static str, help: &'static str) -> Arg {
    Arg::new(id).long(id).action(ArgAction::SetTrue).help(help)
}

/// An option with one required value; repeated, the last one wins. Like getopt, the next
/// word is the value even when it starts with '-'.
fn value(id: &'static str, value_name: &'static str, help: &'static str) -> Arg {
    Arg::new(id)
        .long(id)
        .value_name(value_name)
        .num_args(1)
        .allow_hyphen_values(true)
        .action(ArgAction::Set)
        .help(help)
}

/// An option that may be repeated, each occurrence adding to a list.
fn list(id: &'static str, value_name: &'static str, help: &'static str) -> Arg {
    value(id, value_name, help).action(ArgAction::Append)
}

/// An option whose value is optional and, as with getopt, must be attached: `--opt=VALUE`
/// (`-xVALUE` for a short one). A missing value reads as "".
fn optional(id: &'static str, value_name: &'static str, help: &'static str) -> Arg {
    Arg::new(id)
        .long(id)
        .value_name(value_name)
        .num_args(0..=1)
        .require_equals(true)
        .default_missing_value("")
        .action(ArgAction::Append)
        .help(help)
}

/// The whole `criu` command line (argv without argv[0]).
pub fn command() -> Command {
    let mut c = Command::new("criu")
        .no_binary_name(true)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .args_override_self(true)
        .infer_long_args(true)
        .override_usage(USAGE)
        .before_help(COMMANDS)
        .after_help(AFTER_HELP)
        .help_template("{usage-heading} {usage}\n\n{before-help}\n\n{all-args}\n\n{after-help}");

    c = c.next_help_heading("Dump/Restore options");
    c = c
        .arg(
            value("tree", "PID", "checkpoint the process tree rooted at PID")
                .short('t')
                .value_parser(values::pid),
        )
        .arg(
            flag("leave-stopped", "leave the tasks stopped after a dump")
                .short('s')
                .overrides_with("leave-running"),
        )
        .arg(
            flag("leave-running", "leave the tasks running after a dump")
                .short('R')
                .overrides_with("leave-stopped"),
        );
    c = negatable(
        c,
        "restore-detached",
        "no-restore-detached",
        Some('d'),
        "detach from the restored tree: exit once it runs (also -d/--daemon for servers)",
    );
    c = c.mut_arg("restore-detached", |a| a.visible_alias("daemon"));
    c = c.mut_arg("no-restore-detached", |a| a.alias("no-daemon"));
    c = negatable(
        c,
        "restore-sibling",
        "no-restore-sibling",
        Some('S'),
        "make the restored root a sibling of criu (needs -d)",
    );
    c = c
        .arg(
            value("images-dir", "DIR", "directory of the image files (default: .)")
                .short('D')
                .value_parser(ValueParser::path_buf()),
        )
        .arg(
            value(
                "work-dir",
                "DIR",
                "directory for logs, pidfiles and stats (default: the images dir)",
            )
            .short('W')
            .value_parser(ValueParser::path_buf()),
        )
        .arg(
            value(
                "pidfile",
                "FILE",
                "write the restored root's (or the server's) pid to FILE",
            )
            .value_parser(ValueParser::path_buf()),
        )
        .arg(optional(
            "cpu-cap",
            "CAPS",
            "CPU capabilities to record/check: fpu,cpu,ins,all,none, ^ negates (accepted, no effect)",
        )
        .value_parser(values::cpu_cap_syntax))
        .arg(flag(
            "exec-cmd",
            "on restore, exec the command given after -- and make it the tree's parent (not supported yet)",
        ))
        .arg(value("freeze-cgroup", "PATH", "freeze the tree with this cgroup freezer (not supported yet)"));
    c = negatable(
        c,
        "weak-sysctls",
        "no-weak-sysctls",
        None,
        "skip sysctls this kernel lacks on restore",
    );
    c = c.arg(flag(
        "lazy-pages",
        "restore: memory on demand from 'criu lazy-pages'; dump: keep private memory on the \
         source and serve it on --port (--address) until fetched, then kill the tree",
    ));
    c = negatable(
        c,
        "stream",
        "no-stream",
        None,
        "move images through criu-image-streamer (not supported yet)",
    );
    c = negatable(
        c,
        "mntns-compat-mode",
        "no-mntns-compat-mode",
        None,
        "restore mounts with CRIU's older mount engine (accepted, no effect)",
    );
    c = c.arg(
        value(
            "network-lock",
            "METHOD",
            "how to keep the network quiet while frozen: iptables (default), nftables, skip",
        )
        .value_parser(values::network_lock),
    );
    c = negatable(
        c,
        "unprivileged",
        "no-unprivileged",
        None,
        "accept the limits of running without root (not supported yet)",
    );
    c = negatable(
        c,
        "allow-uprobes",
        "no-allow-uprobes",
        None,
        "allow dumping a tree with a [uprobes] mapping",
    );

    c = c.next_help_heading("External resources");
    c = c.arg(list(
        "external",
        "RES",
        "treat RES as external: unix[INO] (a socket of the tree connected outside it), pipe[INO] (a pipe also held outside); others (tty, file, dev, mnt, veth...) are not supported yet",
    ));

    c = c.next_help_heading("Special resources");
    c = negatable(
        c,
        "tcp-established",
        "no-tcp-established",
        None,
        "checkpoint/restore established TCP connections (TCP_REPAIR; see --network-lock)",
    );
    c = negatable(
        c,
        "skip-in-flight",
        "no-skip-in-flight",
        None,
        "leave behind TCP connections a listener has not accepted yet",
    );
    c = negatable(
        c,
        "tcp-close",
        "no-tcp-close",
        None,
        "dump or restore established TCP connections as closed sockets",
    );
    c = c
        .arg(
            optional(
                "ext-unix-sk",
                "INO,...",
                "allow datagram unix sockets connected to a named socket outside the tree (an INO list: not supported yet)",
            )
            .short('x')
            .value_parser(values::unix_sk_inodes),
        )
        .arg(
            value(
                "root",
                "PATH",
                "root directory of the restored tree (not supported yet)",
            )
            .short('r')
            .value_parser(ValueParser::path_buf()),
        );
    c = negatable(
        c,
        "evasive-devices",
        "no-evasive-devices",
        None,
        "use any path to a device file if the original is inaccessible",
    );
    c = negatable(
        c,
        "link-remap",
        "no-link-remap",
        None,
        "link unlinked files back into place when possible (not supported yet)",
    );
    c = c.arg(
        value(
            "ghost-limit",
            "SIZE",
            "largest deleted file to carry in the images (default 1M)",
        )
        .value_parser(values::size),
    );
    c = negatable(
        c,
        "ghost-fiemap",
        "no-ghost-fiemap",
        None,
        "use fiemap to dump sparse deleted files (accepted, no effect)",
    );
    c = c.arg(
        list(
            "action-script",
            "FILE",
            "run FILE at each stage, with CRTOOLS_SCRIPT_ACTION set",
        )
        .value_parser(ValueParser::path_buf()),
    );
    c = negatable(
        c,
        "shell-job",
        "no-shell-job",
        Some('j'),
        "the tree is a shell job: take over its controlling terminal",
    );
    c = negatable(
        c,
        "file-locks",
        "no-file-locks",
        Some('l'),
        "checkpoint/restore file locks (flock, POSIX, OFD, leases)",
    );
    c = c
        .arg(
            value(
                "libdir",
                "DIR",
                "plugin directory (not supported yet: no plugins)",
            )
            .short('L')
            .value_parser(ValueParser::path_buf()),
        )
        .arg(
            value(
                "timeout",
                "SECONDS",
                "how long to wait for the tree to freeze (default 10)",
            )
            .value_parser(clap::value_parser!(u32)),
        );
    c = negatable(
        c,
        "force-irmap",
        "no-force-irmap",
        None,
        "resolve paths of inotify/fanotify watches (not supported yet)",
    );
    c = c
        .arg(list(
            "irmap-scan-path",
            "PATH",
            "where to look for watched inodes (not supported yet)",
        ))
        .arg(
            optional(
                "manage-cgroups",
                "MODE",
                "dump/restore cgroups: none, props, soft (default), full, strict, ignore (only none/ignore supported)",
            )
            .value_parser(values::cgroup_mode),
        )
        .arg(
            list(
                "cgroup-root",
                "[CTL:]PATH",
                "change the cgroup root of a controller (not supported yet)",
            )
            .value_parser(values::cgroup_root),
        )
        .arg(value(
            "cgroup-props",
            "STRING",
            "cgroup properties to dump (not supported yet)",
        ))
        .arg(
            value(
                "cgroup-props-file",
                "FILE",
                "cgroup properties to dump, from FILE (not supported yet)",
            )
            .value_parser(ValueParser::path_buf()),
        )
        .arg(list(
            "cgroup-dump-controller",
            "NAME",
            "dump only this cgroup controller (not supported yet)",
        ))
        .arg(
            value(
                "cgroup-yard",
                "PATH",
                "use this prepared cgroup yard (not supported yet)",
            )
            .value_parser(ValueParser::path_buf()),
        )
        .arg(value(
            "lsm-profile",
            "TYPE:NAME",
            "LSM profile for the restored tree (not supported yet)",
        ))
        .arg(value(
            "lsm-mount-context",
            "CTX",
            "LSM mount context on restore (not supported yet)",
        ))
        .arg(list(
            "skip-mnt",
            "PATH",
            "ignore this mount point (not supported yet)",
        ))
        .arg(list(
            "enable-fs",
            "FSNAMES",
            "dump these filesystems' mounts even if unknown (not supported yet)",
        ))
        .arg(
            list(
                "inherit-fd",
                "fd[N]:RES",
                "on restore, use our fd N in place of RES: socket:[INO] (a unix socket), pipe:[INO]",
            )
            .value_parser(values::inherit_fd),
        )
        .arg(
            list(
                "empty-ns",
                "net",
                "create the namespace empty, for action scripts to fill (not supported yet)",
            )
            .value_parser(values::empty_ns),
        )
        .arg(
            list(
                "join-ns",
                "NS:PID|FILE[,OPTS]",
                "restore into an existing namespace (not supported yet)",
            )
            .short('J')
            .value_parser(values::join_ns),
        )
        .arg(
            list(
                "ext-mount-map",
                "KEY:VAL|auto",
                "map external mounts (not supported yet)",
            )
            .short('M')
            .value_parser(values::ext_mount),
        )
        .arg(
            flag(
                "enable-external-sharing",
                "allow external shared mounts (not supported yet)",
            )
            .visible_alias("ext-sharing"),
        )
        .arg(
            flag(
                "enable-external-masters",
                "allow external slave mounts (not supported yet)",
            )
            .visible_alias("ext-masters"),
        )
        .arg(flag("auto-ext-mnt", "same as --ext-mount-map auto (not supported yet)"))
        .arg(list(
            "veth-pair",
            "IN=OUT",
            "name of the outer end of a veth pair (not supported yet)",
        )
        .value_parser(values::veth_pair))
        .arg(
            value(
                "file-validation",
                "METHOD",
                "how restore checks mapped files: filesize or buildid (not supported yet)",
            )
            .value_parser(values::file_validation),
        );
    c = negatable(
        c,
        "skip-file-rwx-check",
        "no-skip-file-rwx-check",
        None,
        "do not compare file permission bits on restore",
    );
    c = negatable(
        c,
        "orphan-pts-master",
        "no-orphan-pts-master",
        None,
        "restore: a new pty for each one whose master was outside the tree; its master goes to the RPC client",
    );

    c = c.next_help_heading("Check options");
    c = negatable(
        c,
        "extra",
        "no-extra",
        None,
        "also check features needed only by some trees",
    );
    c = negatable(
        c,
        "experimental",
        "no-experimental",
        None,
        "also check experimental features",
    );
    c = c
        .arg(flag("all", "same as --extra --experimental"))
        .arg(value(
            "feature",
            "FEAT",
            "check only this feature (criu check --help lists them)",
        ));

    c = c.next_help_heading("Logging");
    c = c.arg(
        value(
            "log-file",
            "FILE",
            "log file, relative to the work dir ('-': stdout)",
        )
        .short('o')
        .value_parser(ValueParser::path_buf()),
    );
    c = negatable(
        c,
        "log-pid",
        "no-log-pid",
        None,
        "put the pid on each log line",
    );
    c = c.arg(
        optional(
            "verbosity",
            "N",
            "-v raises the level by one (-vvv by three); -vN or --verbosity=N sets it: 0 none, 1 errors, 2 warnings (default), 3 info, 4 debug",
        )
        .short('v')
        .value_parser(values::verbosity),
    );
    c = negatable(
        c,
        "display-stats",
        "no-display-stats",
        None,
        "print dump/restore statistics",
    );

    c = c.next_help_heading("Memory dumping options");
    c = negatable(
        c,
        "track-mem",
        "no-track-mem",
        None,
        "keep tracking memory writes for the next (pre-)dump (a userfaultfd left in the task; `criu untrack` ends it)",
    );
    c = c.arg(
        value(
            "prev-images-dir",
            "DIR",
            "images of the previous (pre-)dump, relative to -D: unchanged pages are recorded as there",
        )
        .value_parser(ValueParser::path_buf()),
    );
    c = negatable(
        c,
        "page-server",
        "no-page-server",
        None,
        "send pages to a page server at --address/--port (dump, pre-dump)",
    );
    c = negatable(
        c,
        "auto-dedup",
        "no-auto-dedup",
        None,
        "drop pages of older images as newer ones replace them",
    );
    c = c.arg(
        value(
            "pre-dump-mode",
            "MODE",
            "splice (default) or read (process_vm_readv)",
        )
        .value_parser(values::pre_dump_mode),
    );

    c = c.next_help_heading("Page/Service server options");
    c = c
        .arg(value(
            "address",
            "ADDR",
            "address of the page server or service",
        ))
        .arg(value("port", "PORT", "port of the page server").value_parser(values::port))
        .arg(
            value(
                "ps-socket",
                "FD",
                "use FD as the page server socket (not supported yet)",
            )
            .value_parser(values::fd),
        )
        .arg(
            value(
                "status-fd",
                "FD",
                "write \\0 to FD and close it once ready for requests",
            )
            .value_parser(values::fd),
        )
        .arg(
            value(
                "tls-cacert",
                "FILE",
                "trust only certificates signed by this CA",
            )
            .value_parser(ValueParser::path_buf()),
        )
        .arg(
            value("tls-cacrl", "FILE", "CA certificate revocation list")
                .value_parser(ValueParser::path_buf()),
        )
        .arg(value("tls-cert", "FILE", "TLS certificate").value_parser(ValueParser::path_buf()))
        .arg(value("tls-key", "FILE", "TLS private key").value_parser(ValueParser::path_buf()));
    c = negatable(
        c,
        "tls",
        "no-tls",
        None,
        "secure the page server connection with TLS (both sides)",
    );
    c = c.arg(flag(
        "tls-no-cn-verify",
        "do not verify the common name of the server certificate",
    ));

    c = c.next_help_heading("Configuration file options");
    c = c
        .arg(
            value(
                "config",
                "FILE",
                "read options from FILE (disables the default configuration files)",
            )
            .value_parser(ValueParser::path_buf()),
        )
        .arg(flag(
            "no-default-config",
            "do not read /etc/criu/default.conf or ~/.criu/default.conf",
        ));

    c = c.next_help_heading("Other options");
    c = negatable(
        c,
        "deprecated",
        "no-deprecated",
        None,
        "allow deprecated functionality (accepted, no effect: there is none)",
    );
    c = c
        .arg(
            list("close", "FD", "close FD before doing anything")
                .value_parser(values::fd)
                .hide(true),
        )
        .arg(flag("ms", "removed in CRIU 3.x").hide(true))
        .arg(
            Arg::new("help")
                .short('h')
                .long("help")
                .action(ArgAction::SetTrue)
                .help("show this text"),
        )
        .arg(
            Arg::new("version")
                .short('V')
                .long("version")
                .action(ArgAction::SetTrue)
                .help("show the version"),
        )
        .arg(
            Arg::new("command")
                .value_name("COMMAND")
                .num_args(0..)
                .action(ArgAction::Append)
                .value_parser(ValueParser::string())
                .hide(true)
                .help("dump, pre-dump, restore, check, page-server, lazy-pages, service, swrk FD, cpuinfo dump|check, dedup, untrack"),
        );
    c
}

/// Names of the commands, for "unknown command" messages.
pub const COMMAND_NAMES: &[&str] = &[
    "dump",
    "pre-dump",
    "restore",
    "lazy-pages",
    "check",
    "page-server",
    "service",
    "swrk",
    "dedup",
    "untrack",
    "cpuinfo",
];

#[cfg(test)]
mod tests {
    #[test]
    fn command_is_consistent() {
        super::command().debug_assert();
    }
}
