//! `criu service --address PATH`: a forked service process, reached by a plain client and by the
//! library's criu_set_service_address transport.

use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criu::pb::{CriuOpts, CriuReq, CriuReqType, CriuResp};
use criu::rpc::wire;
use criu::sys::fork::{self, Forked};
use criu::sys::sock;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

/// A service process, killed when dropped.
struct Service {
    pid: Pid,
    path: PathBuf,
}

impl Service {
    fn start(name: &str) -> Service {
        let dir = std::env::temp_dir().join(format!("criu-svc-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("criu_service.socket");
        match fork::fork().unwrap() {
            Forked::Child => fork::exit_now(criu::rpc::service(&path, false, None)),
            Forked::Parent(pid) => {
                let deadline = Instant::now() + Duration::from_secs(10);
                while !path.exists() {
                    assert!(
                        Instant::now() < deadline,
                        "the service never bound its socket"
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
                // Bound is not yet listening: wait until a connection works.
                while sock::connect_seqpacket(&path).is_err() {
                    assert!(Instant::now() < deadline, "the service never listened");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Service { pid, path }
            }
        }
    }

    fn call(&self, req: &CriuReq) -> CriuResp {
        let sk = sock::connect_seqpacket(&self.path).unwrap();
        wire::send(sk.as_fd(), req, None).unwrap();
        wire::recv::<CriuResp>(sk.as_fd(), "criu_resp")
            .unwrap()
            .unwrap()
            .msg
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = kill(self.pid, Signal::SIGKILL);
        let _ = waitpid(self.pid, None);
        let _ = std::fs::remove_dir_all(self.path.parent().unwrap());
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn service_serves_each_connection() {
    let svc = Service::start("serve");
    assert_eq!(mode(&svc.path), 0o666, "anyone may connect, as with CRIU");
    for _ in 0..3 {
        let resp = svc.call(&CriuReq {
            r#type: CriuReqType::Version as i32,
            ..Default::default()
        });
        assert!(resp.success);
        assert_eq!(resp.version.unwrap().major_number, 4);
    }
}

#[test]
fn service_refuses_swrk_only_options() {
    let svc = Service::start("sibling");
    let resp = svc.call(&CriuReq {
        r#type: CriuReqType::Restore as i32,
        opts: Some(CriuOpts {
            images_dir: Some("/tmp".into()),
            rst_sibling: Some(true),
            log_to_stderr: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    });
    assert_eq!(resp.r#type, CriuReqType::Restore as i32);
    assert!(!resp.success);
    assert!(resp.cr_errmsg.unwrap().contains("rst_sibling"));
}

#[test]
fn library_reaches_the_service_by_address() {
    use criu::capi::ops::{criu_local_check, criu_local_get_version};
    use criu::capi::opts::{
        criu_local_free_opts, criu_local_init_opts, criu_local_set_service_address,
    };
    let svc = Service::start("lib");
    let path = std::ffi::CString::new(svc.path.as_os_str().as_encoded_bytes()).unwrap();
    let mut opts = std::ptr::null_mut();
    unsafe {
        assert_eq!(criu_local_init_opts(&mut opts), 0);
        assert_eq!(criu_local_set_service_address(opts, path.as_ptr()), 0);
        assert_eq!(criu_local_get_version(opts), 40200);
        assert_eq!(criu_local_check(opts), 0);
        criu_local_free_opts(opts);
    }
}
