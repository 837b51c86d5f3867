//! `criu_opts` (what an RPC client asks for) to `Options` (what the engine reads), with CRIU's
//! rules: descriptors are the client's, the log file lives in the work dir, restores are
//! detached, and swrk-only options are refused from a standalone service.

use std::os::fd::IntoRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::options::{NetworkLock, Options, PageServerAddr, PreDumpMode};
use crate::pb::{CriuCgMode, CriuNetworkLockMethod, CriuOpts, CriuPreDumpMode};

/// CRIU's log file name when an RPC client names none.
pub const DEFAULT_LOG_FILE: &str = "criu.log";

/// What the request is for: decides which options are required.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Dump,
    PreDump,
    Restore,
    Check,
    /// PAGE_SERVER, PAGE_SERVER_CHLD: receive a dump's pages into the images dir.
    PageServer,
}

/// How the server reaches the descriptors named in the request (images_dir_fd, work_dir_fd,
/// status_fd), which are numbers in the client's descriptor table.
#[derive(Clone, Copy, Debug)]
pub enum ClientFds {
    /// Through /proc/<pid>/fd of the client, `pid` from SO_PEERCRED (what CRIU does; works for
    /// swrk children, embedded helpers and service connections alike).
    Peer(i32),
    /// Do not touch them: only validate the rest (the library's check before it starts a helper).
    Unresolved,
}

/// Where a request came from.
#[derive(Clone, Copy, Debug)]
pub struct Client {
    pub fds: ClientFds,
    /// The server is a child of the client (`criu swrk`, the library's embedded helper): only
    /// then can it restore the tree as the client's child (rst_sibling) or hand it the client's
    /// inherited descriptors (inherit_fd).
    pub is_parent: bool,
}

/// Builds the engine's options for `purpose` from a request's `criu_opts`.
pub fn options_from_req(req: &CriuOpts, purpose: Purpose, client: Client) -> Result<Options> {
    if let Some(name) = unsupported_rpc_option(req) {
        return Err(Error::OptionNotSupported(name));
    }
    let mut o = Options::default();

    if matches!(purpose, Purpose::Dump | Purpose::PreDump) {
        // No pid (or 0) means "dump me": the requesting process.
        o.pid = match (req.pid, client.fds) {
            (Some(pid), _) if pid != 0 => Some(pid),
            (_, ClientFds::Peer(peer)) => Some(peer),
            (_, ClientFds::Unresolved) => None,
        };
    }

    o.images_dir = images_dir(req, purpose, client.fds)?;
    if let Some(fd) = req.work_dir_fd {
        o.work_dir = Some(client_dir(client.fds, fd, "work_dir_fd")?);
    }

    o.log_level = req.log_level();
    o.log_to_stderr = req.log_to_stderr();
    o.log_file = match &req.log_file {
        Some(name) if name.contains('/') => {
            return Err(Error::InvalidOptions(format!(
                "log_file {name:?}: only a file name is allowed (it is created in the work dir)"
            )))
        }
        Some(name) => Some(PathBuf::from(name)),
        None if o.log_to_stderr || purpose == Purpose::Check => None,
        None => Some(PathBuf::from(DEFAULT_LOG_FILE)),
    };

    o.leave_running = req.leave_running();
    o.leave_stopped = req.leave_stopped();
    // CRIU's service always restores detached: the tree must outlive the request.
    o.restore_detached = purpose == Purpose::Restore;
    if req.rst_sibling() && !client.is_parent {
        return Err(Error::InvalidOptions(
            "rst_sibling is only allowed for swrk (the tree would not be the client's child)"
                .into(),
        ));
    }
    o.restore_sibling = req.rst_sibling();
    o.shell_job = req.shell_job();
    o.display_stats = req.display_stats();
    o.timeout = req.timeout;

    o.ext_unix_sk = req.ext_unix_sk();
    if req.ext_unix_sk.is_some() {
        // CRIU's deprecated per-inode list is what `--external unix[INO]` says today.
        o.external
            .extend(req.unix_sk_ino.iter().map(|u| format!("unix[{}]", u.inode)));
    }
    o.tcp_established = req.tcp_established();
    o.tcp_close = req.tcp_close();
    o.tcp_skip_in_flight = req.tcp_skip_in_flight();
    o.file_locks = req.file_locks();
    o.link_remap = req.link_remap();
    o.evasive_devices = req.evasive_devices();
    o.ghost_limit = req.ghost_limit.map(u64::from);
    o.orphan_pts_master = req.orphan_pts_master();
    o.skip_file_rwx_check = req.skip_file_rwx_check();
    o.network_lock = match req.network_lock {
        None => NetworkLock::default(),
        Some(v) => match CriuNetworkLockMethod::try_from(v) {
            Ok(CriuNetworkLockMethod::Iptables) => NetworkLock::Iptables,
            Ok(CriuNetworkLockMethod::Nftables) => NetworkLock::Nftables,
            Ok(CriuNetworkLockMethod::Skip) => NetworkLock::Skip,
            Err(_) => return Err(Error::InvalidOptions(format!("unknown network_lock {v}"))),
        },
    };
    o.external.extend(req.external.iter().cloned());
    if !req.inherit_fd.is_empty() && !client.is_parent {
        return Err(Error::InvalidOptions(
            "inherit_fd is only allowed for swrk (a service does not have the client's fds)".into(),
        ));
    }
    o.inherit_fd = req
        .inherit_fd
        .iter()
        .map(|f| (f.fd, f.key.clone()))
        .collect();

    o.prev_images_dir = req.parent_img.as_ref().map(PathBuf::from);
    o.track_mem = req.track_mem();
    o.auto_dedup = req.auto_dedup();
    o.pre_dump_mode = match req.pre_dump_mode {
        None => PreDumpMode::default(),
        Some(v) => match CriuPreDumpMode::try_from(v) {
            Ok(CriuPreDumpMode::Splice) => PreDumpMode::Splice,
            Ok(CriuPreDumpMode::VmRead) => PreDumpMode::Read,
            Err(_) => return Err(Error::InvalidOptions(format!("unknown pre_dump_mode {v}"))),
        },
    };
    o.lazy_pages = req.lazy_pages();
    if let Some(ps) = &req.ps {
        // With lazy pages only the port matters (CRIU ignores the address then).
        o.page_server = Some(PageServerAddr {
            address: if o.lazy_pages {
                None
            } else {
                ps.address.clone()
            },
            port: ps.port() as u16,
        });
    }
    o.tls.enabled = req.tls();
    o.tls.no_cn_verify = req.tls_no_cn_verify();
    o.tls.cacert = req.tls_cacert.as_ref().map(PathBuf::from);
    o.tls.cacrl = req.tls_cacrl.as_ref().map(PathBuf::from);
    o.tls.cert = req.tls_cert.as_ref().map(PathBuf::from);
    o.tls.key = req.tls_key.as_ref().map(PathBuf::from);
    if let Some(fd) = req.status_fd {
        o.status_fd = Some(match client.fds {
            ClientFds::Peer(pid) => open_status_fd(pid, fd)?,
            ClientFds::Unresolved => fd,
        });
    }

    o.root = req.root.as_ref().map(PathBuf::from);
    o.freeze_cgroup = req.freeze_cgroup.clone();
    o.manage_cgroups = req.manage_cgroups();
    if let Some(v) = req.manage_cgroups_mode {
        // Options keeps only "manage or not"; the engine has no cgroup modes yet.
        o.manage_cgroups = match CriuCgMode::try_from(v) {
            Ok(CriuCgMode::Ignore) => false,
            Ok(_) => true,
            Err(_) => {
                return Err(Error::InvalidOptions(format!(
                    "unknown manage_cgroups_mode {v}"
                )))
            }
        };
    }
    o.cgroup_roots = req
        .cg_root
        .iter()
        .map(|r| (r.ctrl.clone(), r.path.clone()))
        .collect();
    o.ext_mounts = req
        .ext_mnt
        .iter()
        .map(|m| (m.key.clone(), m.val.clone()))
        .collect();
    o.skip_mnt = req.skip_mnt.clone();
    o.enable_fs = req.enable_fs.clone();
    o.auto_ext_mnt = req.auto_ext_mnt();
    o.ext_sharing = req.ext_sharing();
    o.ext_masters = req.ext_masters();
    o.veth_pairs = req
        .veths
        .iter()
        .map(|v| (v.if_in.clone(), v.if_out.clone()))
        .collect();
    o.irmap_scan_paths = req.irmap_scan_paths.clone();
    o.force_irmap = req.force_irmap();
    o.exec_cmd = req.exec_cmd.clone();
    if let Some(ns) = req.empty_ns {
        if ns & !(libc::CLONE_NEWNET as u32) != 0 {
            return Err(Error::InvalidOptions(format!(
                "empty_ns {ns:#x}: only CLONE_NEWNET can be restored empty"
            )));
        }
        o.empty_ns = ns;
    }
    o.join_ns = req
        .join_ns
        .iter()
        .map(|j| (j.ns.clone(), j.ns_file.clone(), j.extra_opt.clone()))
        .collect();
    o.lsm_profile = req.lsm_profile.clone();
    o.lsm_mount_context = req.lsm_mount_context.clone();
    o.weak_sysctls = req.weak_sysctls();
    o.unprivileged = req.unprivileged();
    o.cpu_cap = req.cpu_cap;
    Ok(o)
}

/// The first option of `req` that this build cannot honour for `purpose`, by its command-line
/// name: either one `Options` has no field for, or one the engine rejects
/// (`Options::first_unsupported`). The library asks this before it starts an embedded helper.
pub fn unsupported_option(req: &CriuOpts, purpose: Purpose) -> Option<&'static str> {
    let client = Client {
        fds: ClientFds::Unresolved,
        is_parent: true,
    };
    match options_from_req(req, purpose, client) {
        Ok(o) => o.first_unsupported(),
        Err(Error::OptionNotSupported(name)) => Some(name),
        // Other mistakes are reported by the server, as CRIU would.
        Err(_) => None,
    }
}

/// Options of the RPC protocol that have no `Options` field because nothing implements them yet.
fn unsupported_rpc_option(req: &CriuOpts) -> Option<&'static str> {
    let config_file_exists = req
        .config_file
        .as_ref()
        .is_some_and(|f| Path::new(f).exists());
    let checks: &[(bool, &'static str)] = &[
        // CRIU silently skips a configuration file that does not exist (crun always names
        // /etc/criu/runc.conf); an existing one would override options we cannot parse yet.
        (config_file_exists, "config-file"),
        (req.cgroup_props.is_some(), "cgroup-props"),
        (req.cgroup_props_file.is_some(), "cgroup-props-file"),
        (
            !req.cgroup_dump_controller.is_empty(),
            "cgroup-dump-controller",
        ),
        (req.cgroup_yard.is_some(), "cgroup-yard"),
        (req.pidfd_store_sk.is_some(), "pidfd-store"),
        (req.mntns_compat_mode(), "mntns-compat-mode"),
        (
            req.ps.as_ref().is_some_and(|ps| ps.fd.is_some()),
            "ps-socket",
        ),
    ];
    checks.iter().find(|(set, _)| *set).map(|(_, name)| *name)
}

fn images_dir(req: &CriuOpts, purpose: Purpose, fds: ClientFds) -> Result<PathBuf> {
    if req.images_dir_fd != -1 {
        return client_dir(fds, req.images_dir_fd, "images_dir_fd");
    }
    match &req.images_dir {
        Some(dir) => Ok(client_relative(fds, Path::new(dir))),
        // CHECK needs no images.
        None if purpose == Purpose::Check => Ok(PathBuf::from(".")),
        None => Err(Error::InvalidOptions(
            "neither images_dir_fd nor images_dir was given".into(),
        )),
    }
}

/// A path relative to the client's working directory, which the server may not share (a
/// service, or a self-dump helper that moved to /).
fn client_relative(fds: ClientFds, dir: &Path) -> PathBuf {
    match fds {
        ClientFds::Peer(pid) if dir.is_relative() => {
            match std::fs::read_link(format!("/proc/{pid}/cwd")) {
                Ok(cwd) => cwd.join(dir),
                Err(_) => dir.to_path_buf(),
            }
        }
        _ => dir.to_path_buf(),
    }
}

/// The directory open as `fd` in the client. Its real path when that path leads to the same
/// directory from here (clean logs, stays valid after the client closes the fd); otherwise the
/// /proc/PID/fd link itself, which the kernel resolves to the directory whatever its name.
fn client_dir(fds: ClientFds, fd: i32, what: &str) -> Result<PathBuf> {
    let pid = match fds {
        ClientFds::Peer(pid) => pid,
        ClientFds::Unresolved => return Ok(PathBuf::from(format!("/proc/self/fd/{fd}"))),
    };
    let link = PathBuf::from(format!("/proc/{pid}/fd/{fd}"));
    let meta = std::fs::metadata(&link).map_err(|e| {
        Error::InvalidOptions(format!(
            "{what} {fd}: not an open descriptor of pid {pid}: {e}"
        ))
    })?;
    if !meta.is_dir() {
        return Err(Error::InvalidOptions(format!(
            "{what} {fd} of pid {pid} is not a directory"
        )));
    }
    if let Ok(target) = std::fs::read_link(&link) {
        let same = std::fs::metadata(&target)
            .is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino());
        if target.is_absolute() && same {
            return Ok(target);
        }
    }
    Ok(link)
}

/// CRIU reopens the client's (obsolete) status fd for writing; it stays open for the request.
fn open_status_fd(pid: i32, fd: i32) -> Result<i32> {
    let path = format!("/proc/{pid}/fd/{fd}");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(format!("reopening status_fd {path}"), e))?;
    log::warn!("status_fd is obsolete; use the status-ready notification instead");
    Ok(file.into_raw_fd())
}
