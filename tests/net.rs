//! TCP and UDP through dump and restore of a real event-loop server (ctests/workloads/
//! netserver.c: one epoll over TCP listeners and UDP sockets of both families, its accepted
//! connections, a unix socket pair, a timerfd, a signalfd and an eventfd). The clients are this
//! test process, over loopback or from another network namespace joined by a veth pair the test
//! creates and removes. With --tcp-established a client keeps its connection through the dump
//! and the restore: bytes queued in the server's receive queue and in its send queue at dump
//! time arrive, and the server answers with its state intact (request counter, timer ticks
//! carried by the unix pair, eventfd count).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

/// The tests look at the host's firewall tables: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One test at a time; when it ends, a lock its dump left (a test that failed between dump
/// and restore) is taken away: nftables tables and iptables rules that were not there before.
struct Serial {
    _guard: std::sync::MutexGuard<'static, ()>,
    tables: String,
    rules: Vec<String>,
}

fn iptables_drops() -> Vec<String> {
    let mut out = Vec::new();
    for tool in ["iptables", "ip6tables"] {
        if let Ok(o) = Command::new(tool).arg("-S").output() {
            out.extend(
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.ends_with("-j DROP"))
                    .map(|l| format!("{tool} {l}")),
            );
        }
    }
    out
}

fn serial() -> Serial {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    Serial {
        _guard: guard,
        tables: nft_tables(),
        rules: iptables_drops(),
    }
}

impl Drop for Serial {
    fn drop(&mut self) {
        for line in nft_tables().lines() {
            if !self.tables.contains(line) && line.contains("CRIU-") {
                let args: Vec<&str> = line.split_whitespace().collect();
                let _ = Command::new("nft").arg("delete").args(&args).output();
            }
        }
        for rule in iptables_drops() {
            if !self.rules.contains(&rule) {
                let mut words = rule.split_whitespace();
                let tool = words.next().unwrap();
                let args: Vec<&str> = words.map(|w| if w == "-A" { "-D" } else { w }).collect();
                let _ = Command::new(tool).args(&args).output();
            }
        }
    }
}

/// Kills the task when the test ends, also when it fails.
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    /// Reaps the server once the dump has killed it (its pid must be free for the restore).
    fn reap(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.wait();
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Server {
    child: KillOnDrop,
    pid: i32,
    tcp4: u16,
    tcp6: u16,
    udp4: u16,
    udp6: u16,
}

fn start_server(s: &Scratch, args: &[&str], env: &[(&str, &str)]) -> Server {
    become_subreaper();
    let bin = workload("netserver");
    let child = KillOnDrop(Some(s.spawn_env(&bin, args, env)));
    let ready: Vec<i64> = s
        .wait_file("ready", T)
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    Server {
        child,
        pid: ready[0] as i32,
        tcp4: ready[1] as u16,
        tcp6: ready[2] as u16,
        udp4: ready[3] as u16,
        udp6: ready[4] as u16,
    }
}

struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn new(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(T)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    fn connect(addr: SocketAddr) -> Client {
        Client::new(TcpStream::connect_timeout(&addr, T).unwrap())
    }

    fn send(&mut self, line: &str) {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.reader.read_line(&mut l).unwrap();
        assert!(l.ends_with('\n'), "connection ended: got {l:?}");
        l.trim_end().to_owned()
    }

    fn ask(&mut self, line: &str) -> String {
        self.send(line);
        self.line()
    }

    /// Asserts that nothing arrived and the connection is neither closed nor reset.
    fn assert_quiet(&self) {
        self.stream.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        let r = self.stream.peek(&mut b);
        self.stream.set_nonblocking(false).unwrap();
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("the connection should be quiet and open: {other:?}"),
        }
    }
}

/// "R<n>:text" → n.
fn counter(reply: &str, text: &str) -> u64 {
    let (n, t) = reply
        .strip_prefix('R')
        .and_then(|r| r.split_once(':'))
        .unwrap_or_else(|| panic!("bad reply {reply:?}"));
    assert_eq!(t, text, "reply {reply:?}");
    n.parse().unwrap()
}

fn ping(udp: &UdpSocket, to: SocketAddr) -> u64 {
    udp.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    // Datagrams may be lost: ask a few times.
    for _ in 0..10 {
        udp.send_to(b"ping", to).unwrap();
        let mut b = [0u8; 64];
        if let Ok((n, _)) = udp.recv_from(&mut b) {
            let s = std::str::from_utf8(&b[..n]).unwrap();
            return s.strip_prefix("pong ").unwrap().parse().unwrap();
        }
    }
    panic!("no pong from {to}");
}

fn big_pattern_ok(data: &[u8]) -> bool {
    data.iter()
        .enumerate()
        .all(|(i, &b)| b == ((i * 7 + 3) & 0xff) as u8)
}

const BIG: usize = 3 << 20;

/// A connection whose client does not read: its reply stays in the server's send queue.
fn slow_reader(addr: SocketAddr) -> Client {
    let sock = socket2_like_small_rcvbuf(addr);
    let mut c = Client::new(sock);
    c.send(&format!("BIG {BIG}"));
    c
}

/// A TCP connection to `addr` with a small receive buffer, so that the server cannot push much.
fn socket2_like_small_rcvbuf(addr: SocketAddr) -> TcpStream {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    unsafe {
        let fd = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let size: libc::c_int = 4096;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            4,
        );
        // Connect through std: wrap, then connect by hand.
        let (ss, len) = sockaddr(addr);
        let r = libc::connect(fd, (&ss as *const libc::sockaddr_storage).cast(), len);
        assert_eq!(r, 0, "connect {addr}: {}", std::io::Error::last_os_error());
        TcpStream::from_raw_fd(std::os::fd::OwnedFd::from_raw_fd(fd).into_raw_fd())
    }
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            (ss, std::mem::size_of::<libc::sockaddr_in>() as u32)
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            (ss, std::mem::size_of::<libc::sockaddr_in6>() as u32)
        }
    }
}

fn nft_tables() -> String {
    let o = Command::new("nft").args(["list", "tables"]).output();
    o.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `f` on a thread that has joined network namespace `ns` (sockets keep the namespace
/// they were made in).
fn in_netns<R: Send + 'static>(ns: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        use std::os::fd::AsRawFd;
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

/// A network namespace joined to ours by a veth pair: 10.X.Y.1 here, 10.X.Y.2 there. Removed
/// (with the pair) when dropped.
struct Netns {
    name: String,
    host_if: String,
    here: String,
    there: String,
}

impl Netns {
    fn new() -> Netns {
        let r = rand_u32();
        let name = format!("criurs-net-{:x}", r);
        let host_if = format!("crh{:x}", r & 0xffffff);
        let peer_if = format!("crp{:x}", r & 0xffffff);
        let (x, y) = (100 + (r % 100), (r >> 8) % 250);
        let here = format!("10.{x}.{y}.1");
        let there = format!("10.{x}.{y}.2");
        let ip = |args: &[&str]| {
            let o = Command::new("ip").args(args).output().unwrap();
            assert!(
                o.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        let ns = Netns {
            name: name.clone(),
            host_if: host_if.clone(),
            here: here.clone(),
            there: there.clone(),
        };
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if, "netns", &name,
        ]);
        ip(&["addr", "add", &format!("{here}/24"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{there}/24"),
            "dev",
            &peer_if,
        ]);
        ip(&["-n", &name, "link", "set", &peer_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Debian's crit (scripts/get-crit.sh) reads our inet sockets and TCP streams: the listeners
/// and UDP sockets of both families, the held request in one receive queue, the unread reply in
/// one send queue.
fn check_images_with_crit(s: &Scratch) {
    let crit = std::env::var_os("CRIT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/crit/crit")
        });
    assert!(
        crit.is_file(),
        "crit not found at {}: run scripts/get-crit.sh first",
        crit.display()
    );
    let decode = |name: &str| -> serde_json::Value {
        let o = Command::new(&crit)
            .args(["decode", "--pretty", "-i"])
            .arg(s.img().join(name))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "crit decode {name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let files = decode("files.img");
    let isk: Vec<&serde_json::Value> = files["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "INETSK")
        .map(|e| &e["isk"])
        .collect();
    let count = |family: &str, ty: &str, state: &str| {
        isk.iter()
            .filter(|e| e["family"] == family && e["type"] == ty && e["state"] == state)
            .count()
    };
    assert_eq!(count("INET", "STREAM", "LISTEN"), 1, "{isk:?}");
    assert_eq!(count("INET6", "STREAM", "LISTEN"), 1, "{isk:?}");
    assert_eq!(count("INET", "DGRAM", "CLOSE"), 1, "{isk:?}");
    assert_eq!(count("INET6", "DGRAM", "CLOSE"), 1, "{isk:?}");
    assert_eq!(count("INET", "STREAM", "ESTABLISHED"), 2, "{isk:?}");
    assert_eq!(count("INET", "STREAM", "CLOSE_WAIT"), 1, "{isk:?}");
    assert_eq!(count("INET6", "STREAM", "ESTABLISHED"), 1, "{isk:?}");
    let mut held = 0;
    let mut unread = 0;
    for e in isk.iter().filter(|e| e["state"] == "ESTABLISHED") {
        let ino = e["ino"].as_u64().unwrap();
        let st = decode(&format!("tcp-stream-{ino:x}.img"));
        let t = &st["entries"][0];
        if t["inq_len"] == 12 {
            held += 1;
        }
        if t["outq_len"].as_u64().unwrap() > 1 << 20 {
            unread += 1;
        }
    }
    assert_eq!((held, unread), (1, 1), "queues as crit reads them");
}

/// The whole scenario: connections in every state the server can be in, dumped with
/// --tcp-established and `lock`, restored, then each checked.
fn server_keeps_its_clients(
    s: &Scratch,
    addr4: &str,
    with_v6: bool,
    lock: &str,
    connect: &dyn Fn(SocketAddr) -> Client,
    udp: &UdpSocket,
) {
    let mut args = vec![addr4];
    if with_v6 {
        args.push("::1");
    }
    let tables = nft_tables();
    let mut srv = start_server(s, &args, &[]);
    let a4: SocketAddr = format!("{addr4}:{}", srv.tcp4).parse().unwrap();
    let u4: SocketAddr = format!("{addr4}:{}", srv.udp4).parse().unwrap();

    let mut c1 = connect(a4);
    let mut c2 = if with_v6 {
        connect(format!("[::1]:{}", srv.tcp6).parse().unwrap())
    } else {
        connect(a4)
    };
    let n1 = counter(&c1.ask("ECHO one"), "one");
    let n2 = counter(&c2.ask("ECHO two"), "two");
    assert_eq!(n2, n1 + 1);
    let p1 = ping(udp, u4);
    assert_eq!(p1, n2 + 1);
    if with_v6 {
        let udp6 = UdpSocket::bind("[::1]:0").unwrap();
        assert_eq!(
            ping(&udp6, format!("[::1]:{}", srv.udp6).parse().unwrap()),
            p1 + 1
        );
    }
    let before = p1 + with_v6 as u64;
    // c1: the server stops reading it; a request waits in the server's receive queue.
    assert_eq!(c1.ask("HOLD"), "HELD");
    c1.send("ECHO queued");
    // c3: 3 MiB the client does not read yet: most of it waits in the server's send queue.
    let mut c3 = slow_reader(a4);
    // c5: held, then the client sends a last request and closes its side: the server's socket
    // is in CLOSE_WAIT with the request queued.
    let mut c5 = connect(a4);
    assert_eq!(c5.ask("HOLD"), "HELD");
    c5.send("ECHO last");
    c5.stream.shutdown(std::net::Shutdown::Write).unwrap();
    std::thread::sleep(Duration::from_millis(300));

    s.dump(srv.pid, &["--tcp-established", "--network-lock", lock]);
    srv.child.reap();
    assert!(!kill(srv.pid, 0), "the dump left the server alive");
    let log = s.log("dump.log");
    assert!(log.contains("connection"), "{log}");
    // The server is gone, and the clients saw nothing: no FIN, no reset.
    c1.assert_quiet();
    c2.assert_quiet();
    if lock == "nftables" {
        assert_ne!(nft_tables(), tables, "no lock table during the dump");
    }
    let inv = std::fs::read(s.img().join("inventory.img")).unwrap();
    assert!(!inv.is_empty());
    let streams: Vec<_> = std::fs::read_dir(s.img())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("tcp-stream-"))
        .collect();
    assert_eq!(streams.len(), 4, "tcp-stream images: one per connection");
    if with_v6 {
        check_images_with_crit(s);
    }

    let pid = s.restore(&[]);
    assert_eq!(pid, srv.pid);
    if lock == "nftables" {
        assert_eq!(nft_tables(), tables, "the restore left the lock");
    }
    // The queued request is answered once the held connection is released (signalfd).
    assert!(kill(pid, libc::SIGUSR1));
    assert_eq!(counter(&c1.line(), "queued"), before + 2);
    // The half-closed client gets its answer, then the server's close: the server read the
    // request, then the end of the stream.
    assert_eq!(counter(&c5.line(), "last"), before + 3);
    let mut rest = String::new();
    assert_eq!(c5.reader.read_line(&mut rest).unwrap(), 0, "{rest:?}");
    let before = before + 1;
    // c2 goes on where it was, and c1 too.
    assert_eq!(counter(&c2.ask("ECHO three"), "three"), before + 3);
    assert_eq!(counter(&c1.ask("ECHO four"), "four"), before + 4);
    // The whole 3 MiB arrive, in order.
    let mut big = vec![0u8; BIG];
    c3.reader.read_exact(&mut big).unwrap();
    assert!(big_pattern_ok(&big), "the BIG reply is corrupt");
    // The restored listeners and UDP sockets serve again, on the same ports.
    let mut c4 = connect(a4);
    assert_eq!(counter(&c4.ask("ECHO five"), "five"), before + 5);
    assert_eq!(ping(udp, u4), before + 6);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(c4.ask("STAT"), "S ok");
    c2.send("QUIT");
    assert_eq!(wait_exit(pid, T), 0, "out: {}", s.read("out"));
}

#[test]
fn event_loop_server_keeps_its_clients_over_loopback() {
    let _serial = serial();
    let s = Scratch::new("net-lo");
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    server_keeps_its_clients(&s, "127.0.0.1", true, "nftables", &Client::connect, &udp);
}

#[test]
fn event_loop_server_keeps_clients_of_another_netns() {
    let _serial = serial();
    let s = Scratch::new("net-ns");
    let ns = Netns::new();
    let lock = if have("iptables") {
        "iptables"
    } else {
        "nftables"
    };
    let name = ns.name.clone();
    let there = ns.there.clone();
    let udp = in_netns(&name, move || {
        UdpSocket::bind(format!("{there}:0")).unwrap()
    });
    let name2 = ns.name.clone();
    let connect = move |a: SocketAddr| {
        let name = name2.clone();
        Client::new(in_netns(&name, move || {
            TcpStream::connect_timeout(&a, T).unwrap()
        }))
    };
    // The server listens on the host's end of the pair; every client is in the namespace.
    server_keeps_its_clients(&s, &ns.here.clone(), false, lock, &connect, &udp);
    drop(ns);
}

#[test]
fn skip_lock_and_tcp_close() {
    let _serial = serial();
    // --network-lock skip: nothing is installed; a quiet peer keeps its connection.
    let s = Scratch::new("net-skip");
    let mut srv = start_server(&s, &["127.0.0.1"], &[]);
    let a4: SocketAddr = format!("127.0.0.1:{}", srv.tcp4).parse().unwrap();
    let mut c = Client::connect(a4);
    let n = counter(&c.ask("ECHO a"), "a");
    let tables = nft_tables();
    s.dump(srv.pid, &["--tcp-established", "--network-lock", "skip"]);
    srv.child.reap();
    assert_eq!(nft_tables(), tables, "skip installed a lock");
    c.assert_quiet();
    let pid = s.restore(&[]);
    assert_eq!(counter(&c.ask("ECHO b"), "b"), n + 1);
    c.send("QUIT");
    assert_eq!(wait_exit(pid, T), 0, "out: {}", s.read("out"));

    // --tcp-close: the connection is not carried; the restored server sees it hung up and
    // closes it, and serves new clients.
    let s = Scratch::new("net-close");
    let mut srv = start_server(&s, &["127.0.0.1"], &[]);
    let a4: SocketAddr = format!("127.0.0.1:{}", srv.tcp4).parse().unwrap();
    let mut c = Client::connect(a4);
    let n = counter(&c.ask("ECHO a"), "a");
    s.dump(srv.pid, &["--tcp-close"]);
    srv.child.reap();
    assert!(!std::fs::read_dir(s.img())
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("tcp-stream-")));
    // The old connection ended with the dumped server.
    let mut rest = Vec::new();
    let _ = c.reader.read_to_end(&mut rest);
    let pid = s.restore(&["--tcp-close"]);
    let mut c2 = Client::connect(a4);
    assert_eq!(counter(&c2.ask("ECHO b"), "b"), n + 1);
    c2.send("QUIT");
    assert_eq!(wait_exit(pid, T), 0, "out: {}", s.read("out"));

    // Dumped with --tcp-established, restored with --tcp-close: the connection is not brought
    // back, and its lock goes away all the same (the peer then learns it is gone).
    let s = Scratch::new("net-close2");
    let mut srv = start_server(&s, &["127.0.0.1"], &[]);
    let a4: SocketAddr = format!("127.0.0.1:{}", srv.tcp4).parse().unwrap();
    let mut c = Client::connect(a4);
    let n = counter(&c.ask("ECHO a"), "a");
    let tables = nft_tables();
    s.dump(
        srv.pid,
        &["--tcp-established", "--network-lock", "nftables"],
    );
    srv.child.reap();
    assert_ne!(nft_tables(), tables);
    let pid = s.restore(&["--tcp-close"]);
    assert_eq!(nft_tables(), tables, "--tcp-close left the lock");
    c.send("ECHO lost");
    let mut rest = String::new();
    assert!(
        matches!(c.reader.read_line(&mut rest), Ok(0) | Err(_)),
        "a closed connection answered: {rest:?}"
    );
    let mut c2 = Client::connect(a4);
    assert_eq!(counter(&c2.ask("ECHO b"), "b"), n + 1);
    c2.send("QUIT");
    assert_eq!(wait_exit(pid, T), 0, "out: {}", s.read("out"));
}

#[test]
fn established_connections_need_an_option_and_failed_dumps_release_them() {
    let _serial = serial();
    let s = Scratch::new("net-refuse");
    let srv = start_server(&s, &["127.0.0.1"], &[("NETSERVER_EXTRA", "others")]);
    let a4: SocketAddr = format!("127.0.0.1:{}", srv.tcp4).parse().unwrap();
    let mut c = Client::connect(a4);
    let n = counter(&c.ask("ECHO a"), "a");
    // A connection the server has not accepted.
    assert_eq!(c.ask("NOACCEPT"), "NOACCEPT");
    let _waiting = TcpStream::connect(a4).unwrap();
    std::thread::sleep(Duration::from_millis(50));

    // Without --tcp-established: refused, with every unsupported socket in one list, by type.
    let pid = srv.pid.to_string();
    let o = s.criu(&["dump", "-t", &pid, "-D", "img", "-o", "d1.log"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    for what in [
        "cannot dump 5 resources",
        "TCP/IPv4 socket connected",
        "use --tcp-established or --tcp-close",
        "listening on 127.0.0.1",
        "1 connection(s) not accepted yet (use --skip-in-flight",
        "packet",
        "netlink",
        "raw/IPv4 socket",
    ] {
        assert!(err.contains(what), "{what:?} missing: {err}");
    }
    assert_running_untraced(srv.pid);
    assert_eq!(counter(&c.ask("ECHO b"), "b"), n + 1);

    // With it, the connection goes into repair mode and is locked before the packet socket
    // fails the dump: both are undone, and the connection works on.
    let tables = nft_tables();
    let o = s.criu(&[
        "dump",
        "-t",
        &srv.pid.to_string(),
        "-D",
        "img",
        "-o",
        "d2.log",
        "--tcp-established",
        "--skip-in-flight",
        "--network-lock",
        "nftables",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot dump 3 resources")
            && err.contains("packet")
            && !err.contains("tcp-established")
            && !err.contains("accepted"),
        "{err}"
    );
    assert_running_untraced(srv.pid);
    assert_eq!(nft_tables(), tables, "the failed dump left its lock");
    assert_eq!(counter(&c.ask("ECHO c"), "c"), n + 2);

    // --leave-running: the same, on success.
    let s2 = Scratch::new("net-leave");
    let srv2 = start_server(&s2, &["127.0.0.1"], &[]);
    let mut c2 = Client::connect(format!("127.0.0.1:{}", srv2.tcp4).parse().unwrap());
    let m = counter(&c2.ask("ECHO a"), "a");
    s2.dump(
        srv2.pid,
        &[
            "--tcp-established",
            "--leave-running",
            "--network-lock",
            "nftables",
        ],
    );
    assert_running_untraced(srv2.pid);
    assert_eq!(nft_tables(), tables, "--leave-running left its lock");
    assert_eq!(counter(&c2.ask("ECHO b"), "b"), m + 1);
    c2.send("QUIT");
    drop(srv2);
    drop(srv);
}

#[test]
fn a_killed_dumper_leaves_the_connections_working() {
    let _serial = serial();
    let s = Scratch::new("net-killed");
    let srv = start_server(&s, &["127.0.0.1"], &[]);
    let a4: SocketAddr = format!("127.0.0.1:{}", srv.tcp4).parse().unwrap();
    let mut c = Client::connect(a4);
    let n = counter(&c.ask("ECHO a"), "a");
    // At post-dump every connection is locked and in repair mode: the dumper dies right there.
    let script = s.path("die.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n[ \"$CRTOOLS_SCRIPT_ACTION\" = post-dump ] && kill -9 $PPID\nexit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let tables = nft_tables();
    let o = s.criu(&[
        "dump",
        "-t",
        &srv.pid.to_string(),
        "-D",
        "img",
        "-o",
        "dump.log",
        "-v4",
        "--tcp-established",
        "--network-lock",
        "nftables",
        "--action-script",
        script.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), None, "the dumper was to be killed: {o:?}");
    // The guard switches repair mode off and takes the lock away; the task runs on.
    let t0 = std::time::Instant::now();
    while nft_tables() != tables {
        assert!(t0.elapsed() < T, "the lock stayed: {}", nft_tables());
        std::thread::sleep(Duration::from_millis(10));
    }
    let t0 = std::time::Instant::now();
    while state_and_tracer(srv.pid).is_some_and(|(_, tracer)| tracer != 0) {
        assert!(t0.elapsed() < T, "still traced");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_running_untraced(srv.pid);
    assert_eq!(counter(&c.ask("ECHO b"), "b"), n + 1);
    assert_eq!(c.ask("STAT"), "S ok");
    drop(srv);
}

/// The same through the RPC protocol, from Debian's pycriu (tests/pycriu/net_client.py):
/// tcp_established and network_lock NFTABLES in criu_opts.
#[test]
fn rpc_client_asks_for_established_connections_and_nftables() {
    let _serial = serial();
    let pycriu = pycriu_path();
    let s = Scratch::new("net-rpc");
    let mut srv = start_server(&s, &["127.0.0.1"], &[]);
    let a4: SocketAddr = format!("127.0.0.1:{}", srv.tcp4).parse().unwrap();
    let mut c = Client::connect(a4);
    let n = counter(&c.ask("ECHO a"), "a");
    let client = |args: &[&str], log: &str| -> String {
        let out = Command::new("/usr/bin/python3")
            .arg(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pycriu/net_client.py"),
            )
            .arg(CRIU)
            .arg(s.img())
            .args(args)
            .env("PYTHONPATH", &pycriu)
            .current_dir(&s.dir)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pycriu {args:?}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            s.log(log)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let tables = nft_tables();
    assert_eq!(
        client(&["dump", &srv.pid.to_string()], "dump.log"),
        "dumped, restored=False"
    );
    srv.child.reap();
    assert_ne!(nft_tables(), tables, "no nftables lock");
    c.assert_quiet();
    assert_eq!(
        client(&["restore"], "restore.log"),
        format!("restored pid {}", srv.pid)
    );
    assert_eq!(nft_tables(), tables, "the lock stayed");
    assert_eq!(counter(&c.ask("ECHO b"), "b"), n + 1);
    c.send("QUIT");
    assert_eq!(wait_exit(srv.pid, T), 0, "out: {}", s.read("out"));
}

/// Both ends of a connection inside the dumped tree: the server talks to itself over its own
/// listener, and goes on doing so after the restore (both ends restored in repair mode).
#[test]
fn a_connection_with_both_ends_in_the_tree() {
    let _serial = serial();
    let s = Scratch::new("net-self");
    let mut srv = start_server(&s, &["127.0.0.1"], &[("NETSERVER_EXTRA", "selfconn")]);
    let a4: SocketAddr = format!("127.0.0.1:{}", srv.tcp4).parse().unwrap();
    let mut c = Client::connect(a4);
    let pongs = |c: &mut Client| -> u64 {
        c.ask("SELF")
            .strip_prefix("SELF ")
            .unwrap()
            .parse()
            .unwrap()
    };
    std::thread::sleep(Duration::from_millis(200));
    let before = pongs(&mut c);
    assert!(before > 0, "the server does not talk to itself");
    let tables = nft_tables();
    s.dump(
        srv.pid,
        &["--tcp-established", "--network-lock", "nftables"],
    );
    srv.child.reap();
    let streams = std::fs::read_dir(s.img())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("tcp-stream-"))
        .count();
    assert_eq!(streams, 3, "ours and both ends of the inner connection");
    let pid = s.restore(&[]);
    assert_eq!(nft_tables(), tables);
    let t0 = std::time::Instant::now();
    while pongs(&mut c) <= before + 5 {
        assert!(t0.elapsed() < T, "the inner connection is stuck");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(c.ask("STAT"), "S ok");
    c.send("QUIT");
    assert_eq!(wait_exit(pid, T), 0, "out: {}", s.read("out"));
}

/// A connection the server shut down its side of (FIN_WAIT2): the client has read the end of
/// the stream and keeps sending; after the restore the server still reads what it sends.
#[test]
fn a_connection_the_server_half_closed() {
    let _serial = serial();
    let s = Scratch::new("net-bye");
    let mut srv = start_server(&s, &["127.0.0.1"], &[]);
    let a4: SocketAddr = format!("127.0.0.1:{}", srv.tcp4).parse().unwrap();
    let mut c = Client::connect(a4);
    let mut half = Client::connect(a4);
    let n = counter(&c.ask("ECHO a"), "a");
    assert_eq!(half.ask("BYE"), "BYE");
    let mut rest = String::new();
    assert_eq!(half.reader.read_line(&mut rest).unwrap(), 0, "{rest:?}");
    s.dump(
        srv.pid,
        &["--tcp-established", "--network-lock", "nftables"],
    );
    srv.child.reap();
    let log = s.log("dump.log");
    // fin-wait1 until the client's ACK of the FIN arrives, then fin-wait2.
    assert!(log.contains(" fin-wait"), "{log}");
    let pid = s.restore(&[]);
    // The half-closed connection still carries requests to the server (answers are dropped).
    half.send("ECHO late");
    let t0 = std::time::Instant::now();
    while c.ask("COUNT") != format!("C {}", n + 1) {
        assert!(
            t0.elapsed() < T,
            "the server never read the half-closed connection"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(counter(&c.ask("ECHO b"), "b"), n + 2);
    c.send("QUIT");
    assert_eq!(wait_exit(pid, T), 0, "out: {}", s.read("out"));
}
