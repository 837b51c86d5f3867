//! What the engine is asked to do. The command line (`cli`), the RPC server (`rpc`) and the C
//! library (`capi`, through RPC) all fill this one struct; the engine reads nothing else.

use std::path::PathBuf;

/// How pre-dump copies memory (`--pre-dump-mode`, `criu_set_pre_dump_mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PreDumpMode {
    #[default]
    Splice,
    Read,
}

/// How the network is kept quiet while a tree with TCP connections is frozen (`--network-lock`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NetworkLock {
    #[default]
    Iptables,
    Nftables,
    Skip,
}

/// Where the page server listens or where a dump sends pages (`--address`, `--port`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageServerAddr {
    pub address: Option<String>,
    pub port: u16,
}

/// `--manage-cgroups[=MODE]`: how much of the tree's cgroups a dump records and a restore
/// rebuilds. CRIU's default (no option) is `Soft`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupMode {
    Ignore,
    None,
    Props,
    Soft,
    Full,
    Strict,
}

/// `--file-validation`: how restore checks that a file mapped by the dumped tree is still the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileValidation {
    FileSize,
    BuildId,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tls {
    pub enabled: bool,
    pub cacert: Option<PathBuf>,
    pub cacrl: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub no_cn_verify: bool,
}

/// One operation's options. Field names follow CRIU's long option names.
#[derive(Clone, Debug)]
pub struct Options {
    /// `-t/--tree`: root of the tree to dump. None in RPC means "the requesting process".
    pub pid: Option<i32>,
    /// `-D/--images-dir`.
    pub images_dir: PathBuf,
    /// `-W/--work-dir`: logs, pidfiles and sockets go here; defaults to the images dir.
    pub work_dir: Option<PathBuf>,
    /// `-o/--log-file`, relative to the work dir. None: log to stderr.
    pub log_file: Option<PathBuf>,
    /// `-v`: 0 messages, 1 errors, 2 warnings (default), 3 info, 4 debug.
    pub log_level: i32,
    pub log_pid: bool,
    pub log_to_stderr: bool,

    pub leave_running: bool,
    pub leave_stopped: bool,
    pub restore_detached: bool,
    pub restore_sibling: bool,
    pub shell_job: bool,
    pub display_stats: bool,
    pub pidfile: Option<PathBuf>,
    /// Seconds to wait for the tree to freeze (CRIU's default is 10).
    pub timeout: Option<u32>,

    pub ext_unix_sk: bool,
    pub tcp_established: bool,
    pub tcp_close: bool,
    pub tcp_skip_in_flight: bool,
    pub file_locks: bool,
    pub link_remap: bool,
    pub evasive_devices: bool,
    pub ghost_limit: Option<u64>,
    pub orphan_pts_master: bool,
    pub skip_file_rwx_check: bool,
    pub network_lock: NetworkLock,
    pub external: Vec<String>,
    /// `--inherit-fd fd[N]:KEY`.
    pub inherit_fd: Vec<(i32, String)>,

    pub prev_images_dir: Option<PathBuf>,
    pub track_mem: bool,
    pub auto_dedup: bool,
    pub pre_dump_mode: PreDumpMode,
    /// Dump: send pages to a page server instead of writing pages-*.img.
    pub page_server: Option<PageServerAddr>,
    pub lazy_pages: bool,
    /// `dump --lazy-pages --port N [--address A]`: where the dump serves its lazy pages.
    pub lazy_listen: Option<PageServerAddr>,
    pub tls: Tls,
    pub status_fd: Option<i32>,

    // Parsed for compatibility; the engine rejects them until they are implemented.
    pub root: Option<PathBuf>,
    pub freeze_cgroup: Option<String>,
    pub manage_cgroups: bool,
    pub cgroup_roots: Vec<(Option<String>, String)>,
    pub ext_mounts: Vec<(String, String)>,
    pub skip_mnt: Vec<String>,
    pub enable_fs: Vec<String>,
    pub auto_ext_mnt: bool,
    pub ext_sharing: bool,
    pub ext_masters: bool,
    pub veth_pairs: Vec<(String, String)>,
    pub irmap_scan_paths: Vec<String>,
    pub force_irmap: bool,
    pub exec_cmd: Vec<String>,
    pub empty_ns: u32,
    pub join_ns: Vec<(String, String, Option<String>)>,
    pub lsm_profile: Option<String>,
    pub lsm_mount_context: Option<String>,
    pub weak_sysctls: bool,
    pub unprivileged: bool,
    pub cpu_cap: Option<u32>,

    /// `--manage-cgroups[=MODE]` as given; `manage_cgroups` says only whether it was given.
    /// `Ignore` and `None` ask for nothing and are honoured (we never touch cgroups).
    pub manage_cgroups_mode: Option<CgroupMode>,
    pub cgroup_props: Option<String>,
    pub cgroup_props_file: Option<PathBuf>,
    pub cgroup_dump_controllers: Vec<String>,
    pub cgroup_yard: Option<PathBuf>,
    /// `-L/--libdir`: CRIU plugins. We load no plugins, so a plugin dir is refused rather than
    /// silently ignored.
    pub libdir: Option<PathBuf>,
    /// `--ps-socket FD`: an already connected page-server socket.
    pub ps_socket: Option<i32>,
    /// `--stream`: images go through criu-image-streamer.
    pub stream: bool,
    pub file_validation: Option<FileValidation>,
    /// `--allow-uprobes`: the caller accepts dumping a tree with a `[uprobes]` mapping.
    pub allow_uprobes: bool,
    /// `--action-script FILE`, in the order CRIU runs them. The front end runs them from its
    /// `Notify` (the engine only calls `notify`).
    pub action_scripts: Vec<PathBuf>,
    /// Set by the RPC server: the inode of its end of the client connection. On a self-dump the
    /// client's socket is part of the dumped tree; a unix socket whose peer is this inode is that
    /// socket, and is dumped as CRIU's USK_SERVICE (closed, no peer) so that the restore rebuilds
    /// it as a socket holding a queued `criu_resp{DUMP, success, dump{restored=true}}`.
    pub rpc_server_socket_ino: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            pid: None,
            images_dir: PathBuf::from("."),
            work_dir: None,
            log_file: None,
            log_level: 2,
            log_pid: false,
            log_to_stderr: false,
            leave_running: false,
            leave_stopped: false,
            restore_detached: false,
            restore_sibling: false,
            shell_job: false,
            display_stats: false,
            pidfile: None,
            timeout: None,
            ext_unix_sk: false,
            tcp_established: false,
            tcp_close: false,
            tcp_skip_in_flight: false,
            file_locks: false,
            link_remap: false,
            evasive_devices: false,
            ghost_limit: None,
            orphan_pts_master: false,
            skip_file_rwx_check: false,
            network_lock: NetworkLock::default(),
            external: Vec::new(),
            inherit_fd: Vec::new(),
            prev_images_dir: None,
            track_mem: false,
            auto_dedup: false,
            pre_dump_mode: PreDumpMode::default(),
            page_server: None,
            lazy_pages: false,
            lazy_listen: None,
            tls: Tls::default(),
            status_fd: None,
            root: None,
            freeze_cgroup: None,
            manage_cgroups: false,
            cgroup_roots: Vec::new(),
            ext_mounts: Vec::new(),
            skip_mnt: Vec::new(),
            enable_fs: Vec::new(),
            auto_ext_mnt: false,
            ext_sharing: false,
            ext_masters: false,
            veth_pairs: Vec::new(),
            irmap_scan_paths: Vec::new(),
            force_irmap: false,
            exec_cmd: Vec::new(),
            empty_ns: 0,
            join_ns: Vec::new(),
            lsm_profile: None,
            lsm_mount_context: None,
            weak_sysctls: false,
            unprivileged: false,
            cpu_cap: None,
            manage_cgroups_mode: None,
            cgroup_props: None,
            cgroup_props_file: None,
            cgroup_dump_controllers: Vec::new(),
            cgroup_yard: None,
            libdir: None,
            ps_socket: None,
            stream: false,
            file_validation: None,
            allow_uprobes: false,
            action_scripts: Vec::new(),
            rpc_server_socket_ino: None,
        }
    }
}

impl Options {
    /// The work dir, which defaults to the images dir.
    pub fn work_dir(&self) -> &std::path::Path {
        self.work_dir.as_deref().unwrap_or(&self.images_dir)
    }

    /// The first option set here that this build parses but cannot honour yet. The engine calls
    /// this before touching any task, so an unimplemented option never gets silently ignored.
    pub fn first_unsupported(&self) -> Option<&'static str> {
        let checks: &[(bool, &'static str)] = &[
            (self.root.is_some(), "root"),
            (self.freeze_cgroup.is_some(), "freeze-cgroup"),
            (!self.cgroup_roots.is_empty(), "cgroup-root"),
            (!self.ext_mounts.is_empty(), "ext-mount-map"),
            (!self.skip_mnt.is_empty(), "skip-mnt"),
            (!self.enable_fs.is_empty(), "enable-fs"),
            (self.auto_ext_mnt, "auto-ext-mnt"),
            (self.ext_sharing, "ext-sharing"),
            (self.ext_masters, "ext-masters"),
            (!self.veth_pairs.is_empty(), "veth-pair"),
            (!self.irmap_scan_paths.is_empty(), "irmap-scan-path"),
            (self.force_irmap, "force-irmap"),
            (!self.exec_cmd.is_empty(), "exec-cmd"),
            (self.empty_ns != 0, "empty-ns"),
            (!self.join_ns.is_empty(), "join-ns"),
            (self.lsm_profile.is_some(), "lsm-profile"),
            (self.lsm_mount_context.is_some(), "lsm-mount-context"),
            (self.unprivileged, "unprivileged"),
            (self.link_remap, "link-remap"),
            // Only unix[INO] (unix.rs) and pipe[INO] (files.rs) are implemented.
            (
                !self
                    .external
                    .iter()
                    .all(|e| e.starts_with("unix[") || e.starts_with("pipe[")),
                "external",
            ),
            (
                !matches!(
                    self.manage_cgroups_mode,
                    None | Some(CgroupMode::Ignore) | Some(CgroupMode::None)
                ),
                "manage-cgroups",
            ),
            (self.cgroup_props.is_some(), "cgroup-props"),
            (self.cgroup_props_file.is_some(), "cgroup-props-file"),
            (
                !self.cgroup_dump_controllers.is_empty(),
                "cgroup-dump-controller",
            ),
            (self.cgroup_yard.is_some(), "cgroup-yard"),
            (self.libdir.is_some(), "libdir"),
            (self.ps_socket.is_some(), "ps-socket"),
            (self.stream, "stream"),
            (self.file_validation.is_some(), "file-validation"),
        ];
        checks.iter().find(|(set, _)| *set).map(|(_, name)| *name)
    }
}
