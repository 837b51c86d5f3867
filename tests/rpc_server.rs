//! The RPC server as `criu swrk FD` runs it: each test gives `rpc::swrk` one end of a
//! socketpair on a thread and plays the client on the other end, with raw packets where the test
//! is about bad input.

use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd};
use std::thread::JoinHandle;

use criu::pb::{CriuFeatures, CriuOpts, CriuReq, CriuReqType, CriuResp};
use criu::rpc::wire;
use criu::sys::sock;
use prost::Message;

/// A swrk server on a thread, and our end of its socket.
struct Swrk {
    sk: OwnedFd,
    server: JoinHandle<i32>,
}

impl Swrk {
    fn start() -> Swrk {
        let (client, server) = sock::seqpacket_pair().unwrap();
        let fd = server.into_raw_fd();
        Swrk {
            sk: client,
            server: std::thread::spawn(move || criu::rpc::swrk(fd)),
        }
    }

    fn send(&self, req: &CriuReq) {
        wire::send(self.sk.as_fd(), req, None).unwrap();
    }

    fn send_raw(&self, bytes: &[u8]) {
        sock::send_packet(self.sk.as_fd(), bytes, None).unwrap();
    }

    fn recv(&self) -> CriuResp {
        wire::recv::<CriuResp>(self.sk.as_fd(), "criu_resp")
            .unwrap()
            .expect("an answer before the server closed the connection")
            .msg
    }

    fn call(&self, req: &CriuReq) -> CriuResp {
        self.send(req);
        self.recv()
    }

    /// Closes our end and returns the server's exit code.
    fn finish(self) -> i32 {
        drop(self.sk);
        self.server.join().expect("the server does not panic")
    }
}

fn req(kind: CriuReqType) -> CriuReq {
    CriuReq {
        r#type: kind as i32,
        ..Default::default()
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("criu-rpc-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn version() {
    let s = Swrk::start();
    let resp = s.call(&req(CriuReqType::Version));
    assert_eq!(resp.r#type, CriuReqType::Version as i32);
    assert!(resp.success);
    let v = resp.version.expect("version field");
    assert_eq!(
        (v.major_number, v.minor_number, v.sublevel),
        (4, 2, Some(0))
    );
    assert_eq!(v.gitid, None, "a gitid would make libcriu report 4.3");
    assert_eq!(s.finish(), 0);
}

#[test]
fn keep_open_serves_several_requests() {
    let s = Swrk::start();
    let mut r = req(CriuReqType::Version);
    r.keep_open = Some(true);
    assert!(s.call(&r).success);
    let mut r = req(CriuReqType::FeatureCheck);
    r.keep_open = Some(true);
    r.features = Some(CriuFeatures::default());
    assert!(s.call(&r).success);
    assert!(s.call(&req(CriuReqType::Version)).success);
    // Without keep_open the server ends after that one.
    assert_eq!(s.finish(), 0);
}

#[test]
fn keep_open_is_refused_for_dump() {
    let s = Swrk::start();
    let mut r = req(CriuReqType::Dump);
    r.keep_open = Some(true);
    let resp = s.call(&r);
    assert_eq!(resp.r#type, CriuReqType::Empty as i32);
    assert!(!resp.success);
    assert!(resp.cr_errmsg.unwrap().contains("keep_open"));
    assert_eq!(s.finish(), 1);
}

#[test]
fn feature_check_answers_what_was_asked() {
    let have = criu::engine::features();
    let s = Swrk::start();
    let mut r = req(CriuReqType::FeatureCheck);
    r.features = Some(CriuFeatures {
        mem_track: Some(true),
        lazy_pages: None,
        pidfd_store: Some(true),
    });
    let resp = s.call(&r);
    assert_eq!(resp.r#type, CriuReqType::FeatureCheck as i32);
    assert!(resp.success);
    let f = resp.features.unwrap();
    // All three present, as CRIU sends them; unasked ones false.
    assert_eq!(f.mem_track, Some(have.mem_track));
    assert_eq!(f.lazy_pages, Some(false));
    assert_eq!(f.pidfd_store, Some(have.pidfd_store));
    assert_eq!(s.finish(), 0);
}

#[test]
fn feature_check_without_features_fails() {
    let s = Swrk::start();
    let resp = s.call(&req(CriuReqType::FeatureCheck));
    assert_eq!(resp.r#type, CriuReqType::FeatureCheck as i32);
    assert!(!resp.success);
    assert_eq!(s.finish(), 1);
}

#[test]
fn check_succeeds_without_options() {
    let s = Swrk::start();
    let resp = s.call(&req(CriuReqType::Check));
    assert_eq!(resp.r#type, CriuReqType::Check as i32);
    assert!(resp.success, "{:?}", resp.cr_errmsg);
    assert_eq!(s.finish(), 0);
}

#[test]
fn garbage_is_answered_not_panicked_on() {
    let s = Swrk::start();
    s.send_raw(&[0xff, 0xff, 0xff, 0xff, 0xff]);
    let resp = s.recv();
    assert_eq!(resp.r#type, CriuReqType::Empty as i32);
    assert!(!resp.success);
    assert_eq!(resp.cr_errno, Some(libc::EBADMSG));
    assert!(resp.cr_errmsg.unwrap().contains("malformed criu_req"));
    assert_eq!(s.finish(), 1);
}

#[test]
fn truncated_request_is_malformed() {
    let mut r = req(CriuReqType::Dump);
    r.opts = Some(CriuOpts {
        images_dir: Some("/some/where/far/away".into()),
        ..Default::default()
    });
    let bytes = r.encode_to_vec();
    let s = Swrk::start();
    // Cut inside the length-delimited opts field.
    s.send_raw(&bytes[..bytes.len() - 5]);
    let resp = s.recv();
    assert_eq!(resp.r#type, CriuReqType::Empty as i32);
    assert!(!resp.success);
    assert!(resp.cr_errmsg.unwrap().contains("malformed"));
    assert_eq!(s.finish(), 1);
}

#[test]
fn request_without_type_is_refused() {
    // A packet that decodes but carries no type (proto2 `required` is not enforced on decode):
    // only keep_open = false.
    let s = Swrk::start();
    s.send_raw(&[0x20, 0x00]);
    let resp = s.recv();
    assert_eq!(resp.r#type, CriuReqType::Empty as i32);
    assert!(!resp.success);
    assert_eq!(s.finish(), 1);
}

#[test]
fn unknown_request_type_is_refused() {
    let s = Swrk::start();
    let resp = s.call(&CriuReq {
        r#type: 99,
        ..Default::default()
    });
    assert_eq!(resp.r#type, CriuReqType::Empty as i32);
    assert!(!resp.success);
    assert!(resp.cr_errmsg.unwrap().contains("99"));
    assert_eq!(s.finish(), 1);
}

#[test]
fn notify_answer_outside_a_notification_is_refused() {
    let s = Swrk::start();
    let mut r = req(CriuReqType::Notify);
    r.notify_success = Some(true);
    let resp = s.call(&r);
    assert_eq!(resp.r#type, CriuReqType::Empty as i32);
    assert!(!resp.success);
    assert_eq!(s.finish(), 1);
}

#[test]
fn cpuinfo_is_not_supported_yet() {
    for kind in [CriuReqType::CpuinfoDump, CriuReqType::CpuinfoCheck] {
        let s = Swrk::start();
        let resp = s.call(&req(kind));
        assert_eq!(resp.r#type, kind as i32);
        assert!(!resp.success);
        assert_eq!(resp.cr_errno, Some(libc::EOPNOTSUPP));
        assert!(resp.cr_errmsg.unwrap().contains("not supported yet"));
        assert_eq!(s.finish(), 1);
    }
}

#[test]
fn client_leaving_without_a_request() {
    assert_eq!(Swrk::start().finish(), 1);
}

#[test]
fn swrk_refuses_a_descriptor_that_is_not_a_socket() {
    let file = std::fs::File::open("/proc/self/status").unwrap();
    assert_eq!(criu::rpc::swrk(file.into_raw_fd()), 1);
    assert_eq!(criu::rpc::swrk(-1), 1);
}

/// A dump that fails (here: no such process) must come back as a DUMP answer with the engine's
/// errno and message, after the log was opened in the images dir.
#[test]
fn dump_failure_is_reported_with_errno_and_message() {
    let dir = temp_dir("dump");
    let images = std::fs::File::open(&dir).unwrap();
    let s = Swrk::start();
    let mut r = req(CriuReqType::Dump);
    r.opts = Some(CriuOpts {
        images_dir_fd: images.as_raw_fd(),
        // Above pid_max: never a process.
        pid: Some(99_999_999),
        log_file: Some("dump.log".into()),
        log_level: Some(4),
        ..Default::default()
    });
    let resp = s.call(&r);
    assert_eq!(resp.r#type, CriuReqType::Dump as i32);
    assert!(!resp.success);
    assert_eq!(
        resp.cr_errno,
        Some(libc::ESRCH),
        "CRIU's errno for a missing task"
    );
    assert!(resp.cr_errmsg.unwrap().contains("99999999"));
    assert_eq!(resp.dump.unwrap().restored, Some(false));
    assert_eq!(s.finish(), 1);
    assert!(dir.join("dump.log").exists(), "log file in the images dir");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_options_fail_the_request_not_the_server() {
    let s = Swrk::start();
    let mut r = req(CriuReqType::Restore);
    r.opts = Some(CriuOpts {
        images_dir: Some("/tmp".into()),
        log_file: Some("../escape.log".into()),
        ..Default::default()
    });
    let resp = s.call(&r);
    assert_eq!(resp.r#type, CriuReqType::Restore as i32);
    assert!(!resp.success);
    assert_eq!(
        resp.cr_errno,
        Some(libc::EBADRQC),
        "CRIU's errno for bad options"
    );
    assert!(resp.cr_errmsg.unwrap().contains("log_file"));
    assert_eq!(resp.restore.unwrap().pid, -1);
    assert_eq!(s.finish(), 1);
}

#[test]
fn single_pre_dump_answers_its_own_type() {
    let s = Swrk::start();
    let mut r = req(CriuReqType::SinglePreDump);
    r.opts = Some(CriuOpts {
        images_dir: Some("/tmp".into()),
        pid: Some(1),
        log_to_stderr: Some(true),
        ..Default::default()
    });
    let resp = s.call(&r);
    assert_eq!(resp.r#type, CriuReqType::SinglePreDump as i32);
    assert!(!resp.success);
    assert_eq!(s.finish(), 1);
}

#[test]
fn wait_pid_reports_the_wait_status() {
    let child = std::process::Command::new("sh")
        .args(["-c", "exit 7"])
        .spawn()
        .unwrap();
    let s = Swrk::start();
    let mut r = req(CriuReqType::WaitPid);
    r.pid = Some(child.id());
    let resp = s.call(&r);
    assert_eq!(resp.r#type, CriuReqType::WaitPid as i32);
    assert!(resp.success, "{:?}", resp.cr_errmsg);
    let status = resp.status.unwrap();
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7);
    assert_eq!(s.finish(), 0);

    let s = Swrk::start();
    let mut r = req(CriuReqType::WaitPid);
    r.pid = Some(child.id()); // reaped already
    let resp = s.call(&r);
    assert!(!resp.success);
    assert_eq!(resp.cr_errno, Some(libc::ECHILD));
    assert_eq!(s.finish(), 1);
    // The server reaped it: our own wait finds nothing.
    let mut child = child;
    assert!(child.wait().is_err());
}

/// A notification goes out with its action, pid and descriptor; the client's answer decides.
#[test]
fn notify_round_trip() {
    use criu::engine::Notify;
    let (server, client) = sock::seqpacket_pair().unwrap();
    let worker = std::thread::spawn(move || {
        let mut n = criu::rpc::RpcNotify::new(server.as_fd());
        let pts = std::fs::File::open("/dev/null").unwrap();
        let first = n.notify("orphan-pts-master", 0, Some(pts.as_fd()));
        let second = n.notify("post-restore", 42, None);
        (first.is_ok(), second.map_err(|e| e.to_string()))
    });

    let got = wire::recv::<CriuResp>(client.as_fd(), "notify")
        .unwrap()
        .unwrap();
    assert_eq!(got.msg.r#type, CriuReqType::Notify as i32);
    let n = got.msg.notify.unwrap();
    assert_eq!(n.script.as_deref(), Some("orphan-pts-master"));
    assert_eq!(n.pid, None, "no pid for actions without one");
    assert!(got.fd.is_some(), "the pty master fd rides along");
    let mut ack = req(CriuReqType::Notify);
    ack.notify_success = Some(true);
    wire::send(client.as_fd(), &ack, None).unwrap();

    let got = wire::recv::<CriuResp>(client.as_fd(), "notify")
        .unwrap()
        .unwrap();
    let n = got.msg.notify.unwrap();
    assert_eq!(n.script.as_deref(), Some("post-restore"));
    assert_eq!(n.pid, Some(42));
    assert!(got.fd.is_none());
    ack.notify_success = Some(false);
    wire::send(client.as_fd(), &ack, None).unwrap();

    let (first, second) = worker.join().unwrap();
    assert!(first);
    let err = second.unwrap_err();
    assert!(err.contains("post-restore"), "{err}");
}

/// CRIU sends a pid only with post-restore and setup-namespaces; an answer to query-ext-files
/// naming external resources is refused (the engine has none to offer yet).
#[test]
fn notify_pids_and_external_files() {
    use criu::engine::Notify;
    let (server, client) = sock::seqpacket_pair().unwrap();
    let worker = std::thread::spawn(move || {
        let mut n = criu::rpc::RpcNotify::new(server.as_fd());
        let pre = n.notify("pre-dump", 42, None).map_err(|e| e.to_string());
        let query = n
            .notify("query-ext-files", 42, None)
            .map_err(|e| e.to_string());
        (pre, query)
    });
    let got = wire::recv::<CriuResp>(client.as_fd(), "notify")
        .unwrap()
        .unwrap();
    let n = got.msg.notify.unwrap();
    assert_eq!(n.script.as_deref(), Some("pre-dump"));
    assert_eq!(n.pid, None, "CRIU sends no pid with pre-dump");
    let mut ack = req(CriuReqType::Notify);
    ack.notify_success = Some(true);
    wire::send(client.as_fd(), &ack, None).unwrap();

    let got = wire::recv::<CriuResp>(client.as_fd(), "notify")
        .unwrap()
        .unwrap();
    assert_eq!(
        got.msg.notify.unwrap().script.as_deref(),
        Some("query-ext-files")
    );
    ack.opts = Some(CriuOpts {
        external: vec!["file[1:2]".into()],
        ..Default::default()
    });
    wire::send(client.as_fd(), &ack, None).unwrap();

    let (pre, query) = worker.join().unwrap();
    assert!(pre.is_ok(), "{pre:?}");
    let err = query.unwrap_err();
    assert!(err.contains("external"), "{err}");
}
