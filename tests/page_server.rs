//! Dumps whose pages go straight to `criu page-server` over TCP: across a veth pair into
//! another network namespace, through pre-dump iterations, with TLS, and against garbage,
//! truncated streams and peers that vanish. Every restore happens from the destination's
//! directory (the page server's images plus the source's small metadata images, copied as a
//! user would) and is verified from inside the restored task.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use criu::images::{ImageDir, Kind};
use criu::pb;

const T: Duration = Duration::from_secs(60);

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs criu with `args` (plus a log in DIR) in the scratch dir; panics with the log on failure.
fn run(s: &Scratch, dir: &str, log: &str, args: &[&str]) {
    std::fs::create_dir_all(s.path(dir)).unwrap();
    let mut all = args.to_vec();
    all.extend_from_slice(&["-D", dir, "-o", log, "-v4"]);
    let out = s.criu(&all);
    assert!(
        out.status.success(),
        "criu {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(s.path(dir).join(log)).unwrap_or_default()
    );
}

/// Starts `criu page-server` in the background (`--daemon`: it returns once it listens) under
/// `prefix` (e.g. `ip netns exec NS`); returns the server's pid.
fn start_server(
    s: &Scratch,
    prefix: &[&str],
    dir: &str,
    addr: &str,
    port: u16,
    extra: &[&str],
) -> i32 {
    std::fs::create_dir_all(s.path(dir)).unwrap();
    let port = port.to_string();
    let dir_abs = s.path(dir);
    let pidfile = dir_abs.join("ps.pid");
    let mut cmd: Vec<&str> = prefix.to_vec();
    let dir_s = dir_abs.to_str().unwrap();
    let pid_s = pidfile.to_str().unwrap();
    cmd.extend_from_slice(&[
        CRIU,
        "page-server",
        "-D",
        dir_s,
        "--address",
        addr,
        "--port",
        &port,
        "--daemon",
        "--pidfile",
        pid_s,
        "-o",
        "ps.log",
        "-v4",
    ]);
    cmd.extend_from_slice(extra);
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .current_dir(&s.dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "page-server failed to start: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(dir_abs.join("ps.log")).unwrap_or_default()
    );
    std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Copies the source's metadata images (everything but our sent-pagemap records and logs)
/// into the destination's directory, as `scp` would.
fn copy_metadata(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ft = e.file_type().unwrap();
        if !ft.is_file() || !name.ends_with(".img") || name.starts_with("sent-pagemap-") {
            continue;
        }
        assert!(
            !name.starts_with("pages-") && !name.starts_with("pagemap-"),
            "the source wrote {name}"
        );
        std::fs::copy(e.path(), to.join(&name)).unwrap();
    }
}

fn files_starting(dir: &Path, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

fn stats(dir: &Path) -> pb::DumpStatsEntry {
    let e: pb::StatsEntry = ImageDir::new(dir).read_one(Kind::Stats, "dump").unwrap();
    e.dump.unwrap()
}

/// Restores from `dir` (run with `prefix`), sends SIGUSR1 and returns the task's exit code.
fn restore_and_check(s: &Scratch, prefix: &[&str], dir: &str) -> i32 {
    let d = s.path(dir);
    let mut cmd: Vec<&str> = prefix.to_vec();
    cmd.extend_from_slice(&[
        CRIU,
        "restore",
        "-d",
        "-D",
        d.to_str().unwrap(),
        "-o",
        "restore.log",
        "-v4",
        "--pidfile",
        "restored.pid",
    ]);
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .current_dir(&s.dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restore failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(d.join("restore.log")).unwrap_or_default()
    );
    let pid: i32 = std::fs::read_to_string(d.join("restored.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(kill(pid, libc::SIGUSR1));
    wait_exit(pid, T)
}

/// Waits for the page server (a daemon, adopted by us as subreaper) and returns its status.
fn server_exit(pid: i32) -> i32 {
    wait_exit(pid, T)
}

fn start_basic(s: &Scratch) -> (std::process::Child, i32) {
    let child = s.spawn(&workload("basic"), &[s.dir.to_str().unwrap()]);
    s.wait_file("ready", T);
    let pid = child.id() as i32;
    (child, pid)
}

#[test]
fn dump_across_a_veth_pair_restores_on_the_destination() {
    become_subreaper();
    let s = Scratch::new("psveth");
    let net = NetnsPair::new("crps", 213);
    let port = 27000 + (rand_u32() % 2000) as u16;
    let (mut child, pid) = start_basic(&s);
    let server = start_server(&s, &net.exec(), "dst", &net.peer_ip, port, &[]);
    let port_s = port.to_string();
    run(
        &s,
        "src",
        "dump.log",
        &[
            "dump",
            "-t",
            &pid.to_string(),
            "--page-server",
            "--address",
            &net.peer_ip,
            "--port",
            &port_s,
        ],
    );
    let _ = child.wait();
    assert_eq!(server_exit(server), 0, "{}", s.read("dst/ps.log"));
    let ps_log = s.read("dst/ps.log");
    assert!(
        ps_log.contains("without --tls"),
        "no warning about plain TCP: {ps_log}"
    );
    assert!(ps_log.contains(&net.host_ip), "{ps_log}");
    // The source holds no page data; the destination does, and as much as the dump says.
    assert!(files_starting(&s.path("src"), "pages-").is_empty());
    let written = stats(&s.path("src")).pages_written;
    assert!(written >= 16384, "64 MiB should be written: {written}");
    let bytes: u64 = files_starting(&s.path("dst"), "pages-")
        .iter()
        .map(|n| std::fs::metadata(s.path("dst").join(n)).unwrap().len())
        .sum();
    assert_eq!(bytes, written * 4096);
    assert!(files_starting(&s.path("dst"), "")
        .iter()
        .all(|n| !n.ends_with(".part")));
    copy_metadata(&s.path("src"), &s.path("dst"));
    assert_eq!(
        restore_and_check(&s, &net.exec(), "dst"),
        0,
        "{}",
        s.read("out")
    );
    drop(net);
}

#[test]
fn predump_chain_through_page_servers_restores_every_page() {
    become_subreaper();
    let s = Scratch::new("pschain");
    let bin = workload("generations");
    let child = s.spawn(&bin, &[s.dir.to_str().unwrap(), "64", "10"]);
    let mut child = child;
    s.wait_file("progress", T);
    let pid = child.id() as i32;
    let pid_s = pid.to_string();
    let iters: [(&str, Option<&str>, &str); 3] = [
        ("1", None, "pre-dump"),
        ("2", Some("../1"), "pre-dump"),
        ("3", Some("../2"), "dump"),
    ];
    for (dir, parent, action) in iters {
        let port = free_port();
        let port_s = port.to_string();
        let dst = format!("dst/{dir}");
        let src = format!("src/{dir}");
        std::fs::create_dir_all(s.path(&dst)).unwrap();
        let mut extra = vec![];
        if let Some(p) = parent {
            extra.extend_from_slice(&["--prev-images-dir", p]);
        }
        let server = start_server(&s, &[], &dst, "127.0.0.1", port, &extra);
        let mut args = vec![
            action,
            "-t",
            &pid_s,
            "--track-mem",
            "--page-server",
            "--address",
            "127.0.0.1",
            "--port",
            &port_s,
        ];
        args.extend_from_slice(&extra);
        run(&s, &src, &format!("{action}.log"), &args);
        assert_eq!(
            server_exit(server),
            0,
            "{}",
            s.read(&format!("{dst}/ps.log"))
        );
        assert!(files_starting(&s.path(&src), "pages-").is_empty());
        assert!(!files_starting(&s.path(&src), "sent-pagemap-").is_empty());
        copy_metadata(&s.path(&src), &s.path(&dst));
    }
    let _ = child.wait();
    let first = stats(&s.path("src/1"));
    assert!(first.pages_written >= 16384, "{first:?}");
    for d in ["src/2", "src/3"] {
        let st = stats(&s.path(d));
        assert!(
            st.pages_skipped_parent > 0 && st.pages_written < first.pages_written / 2,
            "{d}: {st:?}"
        );
    }
    assert_eq!(
        std::fs::read_link(s.path("dst/3/parent")).unwrap(),
        Path::new("../2")
    );
    // The destination's later iterations hold holes for what the parents hold.
    let pm: Vec<pb::PagemapEntry> = {
        let mut r = ImageDir::new(s.path("dst/3"))
            .open(Kind::Pagemap, pid)
            .unwrap();
        let _: Option<pb::PagemapHead> = r.read_entry().unwrap();
        r.collect_all().unwrap()
    };
    assert!(pm.iter().any(|e| e.flags == Some(criu::images::PE_PARENT)));
    assert_eq!(restore_and_check(&s, &[], "dst/3"), 0, "{}", s.read("out"));
}

/// Sends raw bytes to a fresh page server; returns its exit code, its log and the directory.
fn feed_server(s: &Scratch, dir: &str, bytes: &[u8]) -> (i32, String, PathBuf) {
    let port = free_port();
    let server = start_server(s, &[], dir, "127.0.0.1", port, &[]);
    {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _ = c.write_all(bytes);
        let _ = c.shutdown(std::net::Shutdown::Write);
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
    }
    let code = server_exit(server);
    (code, s.read(&format!("{dir}/ps.log")), s.path(dir))
}

fn iov(cmd: u32, nr: u64, vaddr: u64, dst: u64) -> Vec<u8> {
    let mut b = vec![0u8; 32];
    b[0..4].copy_from_slice(&cmd.to_ne_bytes());
    b[8..16].copy_from_slice(&nr.to_ne_bytes());
    b[16..24].copy_from_slice(&vaddr.to_ne_bytes());
    b[24..32].copy_from_slice(&dst.to_ne_bytes());
    b
}

#[test]
fn garbage_and_truncated_streams_leave_no_image_that_looks_complete() {
    let s = Scratch::new("psgarbage");
    let none_left = |d: &Path| {
        let names = files_starting(d, "");
        assert!(
            names
                .iter()
                .all(|n| !n.ends_with(".img") && !n.ends_with(".part")),
            "left behind: {names:?}"
        );
    };
    // Random bytes.
    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let (code, log, d) = feed_server(&s, "g1", &junk);
    assert_ne!(code, 0);
    assert!(log.contains("bad stream"), "{log}");
    none_left(&d);
    // A valid start, pages announced, a third of them sent, then the end of the stream.
    let dst = 4242u64 << 8 | 1;
    let mut b = iov(4, 0, 0, dst); // OPEN2
    b.extend(iov(6 | 4 << 16, 30, 0x7f00_0000_0000, dst)); // ADD_F PE_PRESENT, 30 pages
    b.extend(vec![0xa5u8; 10 * 4096]);
    let (code, log, d) = feed_server(&s, "g2", &b);
    assert_ne!(code, 0);
    assert!(log.contains("closed the connection"), "{log}");
    none_left(&d);
    // Pages out of order, and a request for lazy pages.
    let mut b = iov(4, 0, 0, dst);
    b.extend(iov(6 | 1 << 16, 2, 0x20000, dst));
    b.extend(iov(6 | 1 << 16, 2, 0x10000, dst));
    let (code, log, d) = feed_server(&s, "g3", &b);
    assert_ne!(code, 0);
    assert!(log.contains("out of order"), "{log}");
    none_left(&d);
    let mut b = iov(4, 0, 0, dst);
    b.extend(iov(7, 1, 0x10000, 4242));
    let (code, log, d) = feed_server(&s, "g4", &b);
    assert_ne!(code, 0);
    assert!(log.contains("lazy"), "{log}");
    none_left(&d);
    // A complete stream is kept.
    let mut b = iov(4, 0, 0, dst);
    b.extend(iov(6 | 4 << 16, 1, 0x10000, dst));
    b.extend(vec![7u8; 4096]);
    b.extend(iov(0x1023, 0, 0, 0));
    let (code, log, d) = feed_server(&s, "g5", &b);
    assert_eq!(code, 0, "{log}");
    assert_eq!(
        files_starting(&d, "pagemap-"),
        ["pagemap-4242.img".to_string()]
    );
    assert_eq!(
        std::fs::read(d.join("pages-1.img")).unwrap(),
        vec![7u8; 4096]
    );
}

#[test]
fn a_page_server_that_vanishes_mid_dump_fails_the_dump_and_the_task_runs_on() {
    become_subreaper();
    let s = Scratch::new("psvanish");
    let (mut child, pid) = start_basic(&s);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // A server that answers OPEN2, takes 1 MiB of the stream and goes away.
    let fake = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut hdr = [0u8; 32];
        c.read_exact(&mut hdr).unwrap();
        assert_eq!(u32::from_ne_bytes(hdr[0..4].try_into().unwrap()), 4);
        c.write_all(&[0]).unwrap();
        let mut sink = vec![0u8; 1 << 20];
        c.read_exact(&mut sink).unwrap();
    });
    let port_s = port.to_string();
    std::fs::create_dir_all(s.path("src")).unwrap();
    let out = s.criu(&[
        "dump",
        "-t",
        &pid.to_string(),
        "-D",
        "src",
        "-o",
        "dump.log",
        "-v4",
        "--page-server",
        "--address",
        "127.0.0.1",
        "--port",
        &port_s,
    ]);
    fake.join().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("page server"), "{err}");
    assert!(!s.path("src/inventory.img").exists());
    assert_running_untraced(pid);
    // A page server nobody runs: refused before the freeze.
    let out = s.criu(&[
        "dump",
        "-t",
        &pid.to_string(),
        "-D",
        "src",
        "-o",
        "dump2.log",
        "--page-server",
        "--address",
        "127.0.0.1",
        "--port",
        &free_port().to_string(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("connect to the page server"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_running_untraced(pid);
    // The task is whole.
    assert!(kill(pid, libc::SIGUSR1));
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(0), "{}", s.read("out"));
}

/// `criu swrk 3` on one end of a socketpair: one request, one answer.
fn swrk_call(s: &Scratch, req: &criu::pb::CriuReq) -> criu::pb::CriuResp {
    use criu::rpc::wire;
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::process::CommandExt;
    let (client, server) = criu::sys::sock::seqpacket_pair().unwrap();
    let server_fd = server.as_raw_fd();
    let mut cmd = Command::new(CRIU);
    cmd.args(["swrk", "3"])
        .current_dir(&s.dir)
        .stdin(Stdio::null());
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(server_fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(server);
    wire::send(client.as_fd(), req, None).unwrap();
    let resp = wire::recv::<criu::pb::CriuResp>(client.as_fd(), "criu_resp")
        .unwrap()
        .expect("an answer")
        .msg;
    drop(client);
    let _ = child.wait();
    resp
}

#[test]
fn rpc_page_server_request_reports_pid_and_port_and_an_rpc_dump_feeds_it() {
    use criu::pb::{CriuOpts, CriuPageServerInfo, CriuReq, CriuReqType};
    become_subreaper();
    let s = Scratch::new("psrpc");
    let (mut child, pid) = start_basic(&s);
    std::fs::create_dir_all(s.path("dst")).unwrap();
    std::fs::create_dir_all(s.path("src")).unwrap();
    let opts = |dir: &str| CriuOpts {
        images_dir_fd: -1,
        images_dir: Some(s.path(dir).to_str().unwrap().to_owned()),
        log_file: Some("rpc.log".into()),
        log_level: Some(4),
        ..Default::default()
    };
    let mut ps_opts = opts("dst");
    ps_opts.ps = Some(CriuPageServerInfo {
        address: Some("127.0.0.1".into()),
        port: Some(0),
        pid: None,
        fd: None,
    });
    let resp = swrk_call(
        &s,
        &CriuReq {
            r#type: CriuReqType::PageServer as i32,
            opts: Some(ps_opts),
            ..Default::default()
        },
    );
    assert!(resp.success, "{resp:?}\n{}", s.read("dst/rpc.log"));
    let ps = resp.ps.expect("page server info");
    let (server, port) = (ps.pid.unwrap(), ps.port.unwrap());
    assert!(server > 0 && port > 0, "{ps:?}");
    let mut dump_opts = opts("src");
    dump_opts.pid = Some(pid);
    dump_opts.ps = Some(CriuPageServerInfo {
        address: Some("127.0.0.1".into()),
        port: Some(port),
        pid: None,
        fd: None,
    });
    let resp = swrk_call(
        &s,
        &CriuReq {
            r#type: CriuReqType::Dump as i32,
            opts: Some(dump_opts),
            ..Default::default()
        },
    );
    assert!(resp.success, "{resp:?}\n{}", s.read("src/rpc.log"));
    let _ = child.wait();
    assert_eq!(server_exit(server), 0, "{}", s.read("dst/rpc.log"));
    assert!(files_starting(&s.path("src"), "pages-").is_empty());
    copy_metadata(&s.path("src"), &s.path("dst"));
    assert_eq!(restore_and_check(&s, &[], "dst"), 0, "{}", s.read("out"));
}

/// A dump to a TLS page server at 127.0.0.1 with the client's TLS arguments; Ok when both ends
/// succeeded, Err(dump's stderr, server's log) when either failed.
fn tls_dump(
    s: &Scratch,
    pid: i32,
    tag: &str,
    server_tls: &[String],
    client_tls: &[String],
) -> Result<(), (String, String)> {
    let port = free_port();
    let dst = format!("dst{tag}");
    let src = format!("src{tag}");
    std::fs::create_dir_all(s.path(&src)).unwrap();
    let st: Vec<&str> = server_tls.iter().map(String::as_str).collect();
    let server = start_server(s, &[], &dst, "127.0.0.1", port, &st);
    let port_s = port.to_string();
    let pid_s = pid.to_string();
    let mut args = vec![
        "dump",
        "-t",
        &pid_s,
        "-D",
        &src,
        "-o",
        "dump.log",
        "-v4",
        "--leave-running",
        "--page-server",
        "--address",
        "127.0.0.1",
        "--port",
        &port_s,
    ];
    args.extend(client_tls.iter().map(String::as_str));
    let out = s.criu(&args);
    let code = server_exit(server);
    let log = s.read(&format!("{dst}/ps.log"));
    if out.status.success() && code == 0 {
        Ok(())
    } else {
        Err((String::from_utf8_lossy(&out.stderr).into_owned(), log))
    }
}

#[test]
fn tls_with_a_test_ca_both_sides_and_strangers_are_refused() {
    become_subreaper();
    let s = Scratch::new("pstls");
    let pki = s.path("pki");
    make_ca(
        &pki,
        "ca",
        &[
            ("server", "IP:127.0.0.1"),
            ("client", "DNS:client.test"),
            ("misnamed", "DNS:elsewhere.test"),
        ],
    );
    make_ca(&pki, "otherca", &[("stranger", "IP:127.0.0.1")]);
    let (mut child, pid) = start_basic(&s);
    let server = tls_args(&pki, "ca", "server");
    let client = tls_args(&pki, "ca", "client");
    // Both sides with certificates of the test CA.
    tls_dump(&s, pid, "ok", &server, &client).unwrap_or_else(|(e, l)| panic!("{e}\n{l}"));
    assert!(!s.read("dstok/ps.log").contains("without --tls"));
    // A client whose certificate another CA signed is turned away by the server.
    let stranger = tls_args(&pki, "otherca", "stranger");
    let (err, log) = tls_dump(&s, pid, "stranger", &server, &stranger).unwrap_err();
    assert!(err.contains("TLS"), "{err}");
    assert!(log.contains("TLS"), "{log}");
    assert!(files_starting(&s.path("dststranger"), "pages-").is_empty());
    // A plain client cannot talk to a TLS server.
    let (err, _) = tls_dump(&s, pid, "plain", &server, &[]).unwrap_err();
    assert!(err.contains("page server"), "{err}");
    // A server certificate that does not name the address: refused unless --tls-no-cn-verify.
    let misnamed = tls_args(&pki, "ca", "misnamed");
    let (err, _) = tls_dump(&s, pid, "name", &misnamed, &client).unwrap_err();
    assert!(err.contains("TLS"), "{err}");
    let mut lax = client.clone();
    lax.push("--tls-no-cn-verify".into());
    tls_dump(&s, pid, "lax", &misnamed, &lax).unwrap_or_else(|(e, l)| panic!("{e}\n{l}"));
    assert_running_untraced(pid);
    // The images that came over TLS restore (the original is stopped first: same pid).
    assert!(kill(pid, libc::SIGKILL));
    let _ = child.wait();
    copy_metadata(&s.path("srcok"), &s.path("dstok"));
    assert_eq!(restore_and_check(&s, &[], "dstok"), 0, "{}", s.read("out"));
}

#[test]
fn a_tree_with_shared_memory_and_inherited_pages_goes_through_the_page_server() {
    become_subreaper();
    let s = Scratch::new("psshared");
    let mut child = s.spawn(&workload("shared"), &[s.dir.to_str().unwrap()]);
    let ready = s.wait_file("ready", T);
    let f: Vec<&str> = ready.split_whitespace().collect();
    let (root, kid): (i32, i32) = (f[0].parse().unwrap(), f[1].parse().unwrap());
    let port = free_port();
    let server = start_server(&s, &[], "dst", "127.0.0.1", port, &[]);
    let port_s = port.to_string();
    run(
        &s,
        "src",
        "dump.log",
        &[
            "dump",
            "-t",
            &root.to_string(),
            "--page-server",
            "--address",
            "127.0.0.1",
            "--port",
            &port_s,
        ],
    );
    let _ = child.wait();
    let _ = wait_exit(kid, T);
    assert_eq!(server_exit(server), 0, "{}", s.read("dst/ps.log"));
    // Both tasks' pagemaps and the shared object's came over the wire.
    let got = files_starting(&s.path("dst"), "pagemap-");
    assert!(
        got.contains(&format!("pagemap-{root}.img"))
            && got.contains(&format!("pagemap-{kid}.img"))
            && got.iter().any(|n| n.starts_with("pagemap-shmem-")),
        "{got:?}"
    );
    copy_metadata(&s.path("src"), &s.path("dst"));
    let d = s.path("dst");
    let out = s.criu(&[
        "restore",
        "-d",
        "-D",
        d.to_str().unwrap(),
        "-o",
        "restore.log",
        "-v4",
    ]);
    assert!(
        out.status.success(),
        "{}",
        std::fs::read_to_string(d.join("restore.log")).unwrap_or_default()
    );
    assert!(kill(kid, libc::SIGUSR1));
    assert!(kill(root, libc::SIGUSR1));
    assert_eq!(wait_exit(root, T), 0, "shared memory check failed");
}

#[test]
fn status_fd_says_ready_once_the_port_listens() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    let s = Scratch::new("psstatus");
    std::fs::create_dir_all(s.path("dst")).unwrap();
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let wfd = w.as_raw_fd();
    let port = free_port().to_string();
    let mut cmd = Command::new(CRIU);
    cmd.args([
        "page-server",
        "-D",
        "dst",
        "--address",
        "127.0.0.1",
        "--port",
        &port,
    ])
    .args(["--status-fd", "5", "-o", "ps.log"])
    .current_dir(&s.dir)
    .stdin(Stdio::null());
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(wfd, 5) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut server = cmd.spawn().unwrap();
    drop(w);
    let mut f = std::fs::File::from(r);
    let mut byte = [9u8; 1];
    f.read_exact(&mut byte).unwrap();
    assert_eq!(byte, [0]);
    // Ready means listening: a client connects at once; a stream that ends before CLOSE makes
    // the server exit non-zero.
    let c = TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).unwrap();
    drop(c);
    let st = server.wait().unwrap();
    assert_eq!(st.code(), Some(1), "{}", s.read("dst/ps.log"));
}
