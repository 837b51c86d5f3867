//! criu_opts to Options: what the RPC server hands the engine.

use std::os::fd::AsRawFd;
use std::path::PathBuf;

use criu::options::{NetworkLock, PreDumpMode};
use criu::pb::{
    CgroupRoot, CriuCgMode, CriuNetworkLockMethod, CriuOpts, CriuPageServerInfo, CriuPreDumpMode,
    InheritFd, JoinNamespace, UnixSk,
};
use criu::rpc::convert::{options_from_req, unsupported_option, Client, ClientFds, Purpose};
use criu::Error;

fn me() -> Client {
    Client {
        fds: ClientFds::Peer(std::process::id() as i32),
        is_parent: true,
    }
}

fn service_client() -> Client {
    Client {
        fds: ClientFds::Peer(std::process::id() as i32),
        is_parent: false,
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("criu-opts-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.canonicalize().unwrap()
}

fn with_dir(dir: &str) -> CriuOpts {
    CriuOpts {
        images_dir: Some(dir.into()),
        ..Default::default()
    }
}

#[test]
fn defaults_are_criu_defaults() {
    let o = options_from_req(&with_dir("/tmp"), Purpose::Dump, me()).unwrap();
    assert_eq!(o.images_dir, PathBuf::from("/tmp"));
    assert_eq!(
        o.pid,
        Some(std::process::id() as i32),
        "no pid: the client itself"
    );
    assert_eq!(o.log_level, 2);
    assert_eq!(o.log_file, Some(PathBuf::from("criu.log")));
    assert_eq!(o.work_dir, None);
    assert_eq!(o.network_lock, NetworkLock::Iptables);
    assert_eq!(o.pre_dump_mode, PreDumpMode::Splice);
    assert!(!o.restore_detached && !o.restore_sibling && !o.leave_running);
    assert_eq!(o.ghost_limit, None);
    assert_eq!(o.cpu_cap, None);
    assert_eq!(o.first_unsupported(), None);
}

#[test]
fn pid_zero_means_the_client() {
    let mut req = with_dir("/tmp");
    req.pid = Some(0);
    let o = options_from_req(&req, Purpose::Dump, me()).unwrap();
    assert_eq!(o.pid, Some(std::process::id() as i32));
    req.pid = Some(1234);
    let o = options_from_req(&req, Purpose::PreDump, me()).unwrap();
    assert_eq!(o.pid, Some(1234));
    let o = options_from_req(&req, Purpose::Restore, me()).unwrap();
    assert_eq!(o.pid, None, "a restore has no pid to dump");
    assert!(o.restore_detached, "RPC restores are detached, as in CRIU");
}

#[test]
fn directories_come_from_the_clients_descriptors() {
    let images = temp_dir("images");
    let work = temp_dir("work");
    let images_fd = std::fs::File::open(&images).unwrap();
    let work_fd = std::fs::File::open(&work).unwrap();
    let req = CriuOpts {
        images_dir_fd: images_fd.as_raw_fd(),
        images_dir: Some("/ignored/when/fd/is/set".into()),
        work_dir_fd: Some(work_fd.as_raw_fd()),
        log_file: Some("dump.log".into()),
        ..Default::default()
    };
    let o = options_from_req(&req, Purpose::Dump, me()).unwrap();
    assert_eq!(o.images_dir, images);
    assert_eq!(o.work_dir.as_deref(), Some(work.as_path()));
    assert_eq!(o.log_file, Some(PathBuf::from("dump.log")));
    assert_eq!(o.work_dir(), work.as_path());
    let _ = std::fs::remove_dir_all(&images);
    let _ = std::fs::remove_dir_all(&work);
}

/// The descriptor numbers belong to the client, not to us: read through /proc/CLIENT/fd.
#[test]
fn descriptors_of_another_process() {
    let dir = temp_dir("other");
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 7<'{}'; echo ready; exec sleep 10",
            dir.display()
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let client = Client {
        fds: ClientFds::Peer(child.id() as i32),
        is_parent: false,
    };
    let req = CriuOpts {
        images_dir_fd: 7,
        ..Default::default()
    };
    let o = options_from_req(&req, Purpose::Restore, client);
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(o.unwrap().images_dir, dir);

    // A number the client does not have open.
    let req = CriuOpts {
        images_dir_fd: 999,
        ..Default::default()
    };
    let err = options_from_req(&req, Purpose::Dump, me()).unwrap_err();
    assert!(err.to_string().contains("images_dir_fd 999"), "{err}");
}

#[test]
fn a_descriptor_that_is_not_a_directory_is_refused() {
    let file = std::fs::File::open("/proc/self/status").unwrap();
    let req = CriuOpts {
        images_dir_fd: file.as_raw_fd(),
        ..Default::default()
    };
    let err = options_from_req(&req, Purpose::Dump, me()).unwrap_err();
    assert!(matches!(err, Error::InvalidOptions(_)));
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[test]
fn images_dir_is_required_except_for_check() {
    let err = options_from_req(&CriuOpts::default(), Purpose::Dump, me()).unwrap_err();
    assert!(err.to_string().contains("images_dir"), "{err}");
    let o = options_from_req(&CriuOpts::default(), Purpose::Check, me()).unwrap();
    assert_eq!(o.log_file, None, "CHECK logs to stderr unless asked");
}

#[test]
fn relative_images_dir_is_relative_to_the_client() {
    let o = options_from_req(&with_dir("imgs"), Purpose::Dump, me()).unwrap();
    assert_eq!(o.images_dir, std::env::current_dir().unwrap().join("imgs"));
}

#[test]
fn log_settings() {
    let mut req = with_dir("/tmp");
    req.log_to_stderr = Some(true);
    let o = options_from_req(&req, Purpose::Dump, me()).unwrap();
    assert_eq!(o.log_file, None);
    assert!(o.log_to_stderr);
    req.log_file = Some("sub/dir.log".into());
    assert!(matches!(
        options_from_req(&req, Purpose::Dump, me()),
        Err(Error::InvalidOptions(_))
    ));
    req.log_file = Some("x.log".into());
    req.log_level = Some(4);
    let o = options_from_req(&req, Purpose::Dump, me()).unwrap();
    assert_eq!((o.log_file, o.log_level), (Some(PathBuf::from("x.log")), 4));
}

#[test]
fn enums_are_mapped_and_validated() {
    let mut req = with_dir("/tmp");
    req.network_lock = Some(CriuNetworkLockMethod::Nftables as i32);
    req.pre_dump_mode = Some(CriuPreDumpMode::VmRead as i32);
    let o = options_from_req(&req, Purpose::PreDump, me()).unwrap();
    assert_eq!(o.network_lock, NetworkLock::Nftables);
    assert_eq!(o.pre_dump_mode, PreDumpMode::Read);
    req.network_lock = Some(CriuNetworkLockMethod::Skip as i32);
    assert_eq!(
        options_from_req(&req, Purpose::Dump, me())
            .unwrap()
            .network_lock,
        NetworkLock::Skip
    );

    for bad in [
        CriuOpts {
            network_lock: Some(0),
            ..with_dir("/tmp")
        },
        CriuOpts {
            pre_dump_mode: Some(3),
            ..with_dir("/tmp")
        },
        CriuOpts {
            manage_cgroups_mode: Some(7),
            ..with_dir("/tmp")
        },
        CriuOpts {
            empty_ns: Some(libc::CLONE_NEWPID as u32),
            ..with_dir("/tmp")
        },
    ] {
        let err = options_from_req(&bad, Purpose::Dump, me()).unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL, "{err}");
    }
}

#[test]
fn cgroup_management() {
    let mut req = with_dir("/tmp");
    req.manage_cgroups = Some(true);
    assert!(
        options_from_req(&req, Purpose::Dump, me())
            .unwrap()
            .manage_cgroups
    );
    // The mode overrides the old boolean, as in CRIU.
    req.manage_cgroups_mode = Some(CriuCgMode::Ignore as i32);
    assert!(
        !options_from_req(&req, Purpose::Dump, me())
            .unwrap()
            .manage_cgroups
    );
    req.manage_cgroups = None;
    req.manage_cgroups_mode = Some(CriuCgMode::Soft as i32);
    assert!(
        options_from_req(&req, Purpose::Dump, me())
            .unwrap()
            .manage_cgroups
    );
}

#[test]
fn swrk_only_options_are_refused_from_a_service() {
    let mut req = with_dir("/tmp");
    req.rst_sibling = Some(true);
    let o = options_from_req(&req, Purpose::Restore, me()).unwrap();
    assert!(o.restore_sibling);
    assert!(options_from_req(&req, Purpose::Restore, service_client()).is_err());

    let mut req = with_dir("/tmp");
    req.inherit_fd = vec![InheritFd {
        key: "pipe:[123]".into(),
        fd: 5,
    }];
    let o = options_from_req(&req, Purpose::Restore, me()).unwrap();
    assert_eq!(o.inherit_fd, vec![(5, "pipe:[123]".to_string())]);
    assert!(options_from_req(&req, Purpose::Restore, service_client()).is_err());
}

#[test]
fn lists_and_values_are_carried_over() {
    let req = CriuOpts {
        images_dir: Some("/tmp".into()),
        leave_running: Some(true),
        shell_job: Some(true),
        tcp_established: Some(true),
        file_locks: Some(true),
        ext_unix_sk: Some(true),
        unix_sk_ino: vec![UnixSk { inode: 77 }],
        external: vec!["mnt[/x]:y".into()],
        ghost_limit: Some(4096),
        cpu_cap: Some(3),
        timeout: Some(30),
        parent_img: Some("../prev".into()),
        track_mem: Some(true),
        root: Some("/root/fs".into()),
        cg_root: vec![CgroupRoot {
            ctrl: None,
            path: "/a".into(),
        }],
        join_ns: vec![JoinNamespace {
            ns: "net".into(),
            ns_file: "/proc/1/ns/net".into(),
            extra_opt: None,
        }],
        exec_cmd: vec!["true".into()],
        ps: Some(CriuPageServerInfo {
            address: Some("10.0.0.1".into()),
            port: Some(1234),
            ..Default::default()
        }),
        empty_ns: Some(libc::CLONE_NEWNET as u32),
        ..Default::default()
    };
    let o = options_from_req(&req, Purpose::Dump, me()).unwrap();
    assert!(o.leave_running && o.shell_job && o.tcp_established && o.file_locks && o.ext_unix_sk);
    assert_eq!(
        o.external,
        vec!["unix[77]".to_string(), "mnt[/x]:y".to_string()]
    );
    assert_eq!(o.ghost_limit, Some(4096));
    assert_eq!(o.cpu_cap, Some(3));
    assert_eq!(o.timeout, Some(30));
    assert_eq!(o.prev_images_dir, Some(PathBuf::from("../prev")));
    assert!(o.track_mem);
    assert_eq!(o.root, Some(PathBuf::from("/root/fs")));
    assert_eq!(o.cgroup_roots, vec![(None, "/a".to_string())]);
    assert_eq!(o.join_ns.len(), 1);
    assert_eq!(o.exec_cmd, vec!["true".to_string()]);
    let ps = o.page_server.as_ref().unwrap();
    assert_eq!((ps.address.as_deref(), ps.port), (Some("10.0.0.1"), 1234));
    assert_eq!(o.empty_ns, libc::CLONE_NEWNET as u32);
}

#[test]
fn status_fd_is_reopened_from_the_client() {
    let (r, w) = nix::unistd::pipe().unwrap();
    let mut req = with_dir("/tmp");
    req.status_fd = Some(w.as_raw_fd());
    let o = options_from_req(&req, Purpose::Restore, me()).unwrap();
    let ours = o.status_fd.unwrap();
    assert_ne!(ours, w.as_raw_fd(), "a descriptor of our own");
    // It is the same pipe.
    nix::unistd::write(unsafe { std::os::fd::BorrowedFd::borrow_raw(ours) }, b"x").unwrap();
    let mut buf = [0u8; 1];
    nix::unistd::read(&r, &mut buf).unwrap();
    assert_eq!(&buf, b"x");
    nix::unistd::close(ours).unwrap();
}

/// The library's check before it starts an embedded server.
#[test]
fn unsupported_options_are_named() {
    let base = with_dir("/tmp");
    assert_eq!(unsupported_option(&base, Purpose::Dump), None);
    let root = CriuOpts {
        root: Some("/x".into()),
        ..base.clone()
    };
    assert_eq!(unsupported_option(&root, Purpose::Dump), Some("root"));
    let yard = CriuOpts {
        cgroup_yard: Some("/y".into()),
        ..base.clone()
    };
    assert_eq!(
        unsupported_option(&yard, Purpose::Restore),
        Some("cgroup-yard")
    );
    // crun always names /etc/criu/runc.conf; CRIU skips a missing file.
    let missing = CriuOpts {
        config_file: Some("/nonexistent/runc.conf".into()),
        ..base.clone()
    };
    assert_eq!(unsupported_option(&missing, Purpose::Dump), None);
    let existing = CriuOpts {
        config_file: Some("/proc/self/status".into()),
        ..base.clone()
    };
    assert_eq!(
        unsupported_option(&existing, Purpose::Dump),
        Some("config-file")
    );
    // Descriptors are not resolved by this check.
    let fds = CriuOpts {
        images_dir_fd: 12345,
        work_dir_fd: Some(12346),
        status_fd: Some(12347),
        ..Default::default()
    };
    assert_eq!(unsupported_option(&fds, Purpose::Dump), None);
}
