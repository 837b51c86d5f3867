//! Lazy migration, the source's side: `criu dump --lazy-pages --port N` writes every image but
//! the private anonymous pages (PE_LAZY in the pagemaps), keeps the tree frozen and answers the
//! destination's requests for them (PS_IOV_GET) from the frozen tasks' memory, as CRIU does:
//! each GET `(dst_id, vaddr, nr_pages)` is answered with an ADD_F header for the pages sent and
//! their data. It ends when the destination says it is done (CLOSE) after every page was sent.
//!
//! The tree is killed at the end whatever happened: once the destination's tasks run, resuming
//! the source would run the same tree twice. A destination that goes away early is logged as
//! such (its tasks are killed by its own lazy-pages daemon).

use libc::pid_t;

use super::{
    read_exact, split_dst_id, Conn, Iov, IOV_SIZE, PS_IOV_ADD_F, PS_IOV_CLOSE, PS_IOV_FORCE_CLOSE,
    PS_IOV_GET, PS_TYPE_PID,
};
use crate::error::{Error, Result};
use crate::images::PE_PRESENT;
use crate::options::Options;
use crate::sys::mem::{ProcMem, PAGE_SIZE};

/// No single answer carries more than this; a larger request is answered in part (the
/// destination asks again for the rest).
const MAX_ANSWER: u64 = 4 << 20;

/// A frozen task whose lazy pages are served.
pub struct LazyTask {
    /// Its pid here.
    pub pid: pid_t,
    /// Its pid in the images: how the destination names it.
    pub image_pid: pid_t,
    /// The ranges recorded as PE_LAZY, sorted.
    pub ranges: Vec<(u64, u64)>,
}

/// What was served, for the log and the bench.
#[derive(Default, Debug)]
pub struct Served {
    pub requests: u64,
    pub bytes: u64,
    /// Lazy bytes never asked for.
    pub unsent: u64,
}

/// Per task, the ranges not sent yet (to tell "done" from "gone early").
struct Remaining(Vec<(u64, u64)>);

impl Remaining {
    fn remove(&mut self, s: u64, e: u64) {
        let mut out = Vec::with_capacity(self.0.len() + 1);
        for &(a, b) in &self.0 {
            if b <= s || a >= e {
                out.push((a, b));
                continue;
            }
            if a < s {
                out.push((a, s));
            }
            if b > e {
                out.push((e, b));
            }
        }
        self.0 = out;
    }

    fn bytes(&self) -> u64 {
        self.0.iter().map(|r| r.1 - r.0).sum()
    }
}

/// Accepts the destination's lazy-pages daemon on `listener` and serves `tasks` until it
/// closes. Errs when the connection breaks or carries nonsense.
pub fn serve(
    listener: super::server::Listener,
    opts: &Options,
    tasks: &[LazyTask],
) -> Result<Served> {
    let total: u64 = tasks
        .iter()
        .flat_map(|t| &t.ranges)
        .map(|r| r.1 - r.0)
        .sum();
    log::info!(
        "lazy pages: {} KiB of {} tasks wait for the destination on port {}",
        total >> 10,
        tasks.len(),
        listener.port
    );
    if !opts.tls.enabled {
        log::warn!(
            "lazy pages are served without --tls: anyone who can reach port {} can read the \
             tree's memory",
            listener.port
        );
    }
    let (mut conn, peer) = listener.accept(opts)?;
    log::info!("lazy pages: the destination connected from {peer}");
    let mut remaining: Vec<Remaining> = tasks.iter().map(|t| Remaining(t.ranges.clone())).collect();
    let mems: Vec<ProcMem> = tasks
        .iter()
        .map(|t| ProcMem::open(t.pid, false))
        .collect::<Result<_>>()?;
    let mut served = Served::default();
    let mut buf = Vec::new();
    let mut hdr = [0u8; IOV_SIZE];
    loop {
        if let Err(e) = read_exact(&mut *conn, &mut hdr, "a request") {
            let left: u64 = remaining.iter().map(Remaining::bytes).sum();
            return Err(Error::PageServer(format!(
                "lazy pages: the destination {peer} went away with {} KiB never asked for ({e})",
                left >> 10
            )));
        }
        let iov = Iov::from_bytes(&hdr);
        match iov.op() {
            PS_IOV_GET => {
                let (kind, id) = split_dst_id(iov.dst_id);
                let i = tasks
                    .iter()
                    .position(|t| kind == PS_TYPE_PID && t.image_pid as u64 == id)
                    .ok_or_else(|| {
                        Error::PageServer(format!(
                            "lazy pages: request for unknown pagemap {:#x}",
                            iov.dst_id
                        ))
                    })?;
                let t = &tasks[i];
                let start = iov.vaddr;
                // The answer stays inside one lazy range: nothing else was left on the source.
                let range = t
                    .ranges
                    .iter()
                    .find(|r| r.0 <= start && start < r.1)
                    .filter(|_| start % PAGE_SIZE == 0 && iov.nr_pages > 0)
                    .ok_or_else(|| {
                        Error::PageServer(format!(
                            "lazy pages: pid {} has no lazy page at {start:#x}",
                            t.image_pid
                        ))
                    })?;
                let want = iov.nr_pages.saturating_mul(PAGE_SIZE).min(MAX_ANSWER);
                let end = range.1.min(start + want);
                let len = (end - start) as usize;
                if buf.len() < len {
                    buf.resize(len, 0);
                }
                mems[i].read_exact_at(&mut buf[..len], start)?;
                let answer = Iov::new(
                    PS_IOV_ADD_F,
                    PE_PRESENT,
                    len as u64 / PAGE_SIZE,
                    start,
                    iov.dst_id,
                );
                conn.write_all(&answer.to_bytes())
                    .and_then(|()| conn.write_all(&buf[..len]))
                    .and_then(|()| conn.flush())
                    .map_err(|e| {
                        let left: u64 = remaining.iter().map(Remaining::bytes).sum();
                        Error::PageServer(format!(
                            "lazy pages: the destination {peer} went away with {} KiB not sent \
                             (sending an answer: {e})",
                            left >> 10
                        ))
                    })?;
                remaining[i].remove(start, end);
                served.requests += 1;
                served.bytes += len as u64;
            }
            PS_IOV_CLOSE | PS_IOV_FORCE_CLOSE => {
                let _ = conn
                    .write_all(&0i32.to_ne_bytes())
                    .and_then(|()| conn.flush());
                served.unsent = remaining.iter().map(Remaining::bytes).sum();
                if iov.op() == PS_IOV_FORCE_CLOSE {
                    return Err(Error::PageServer(format!(
                        "lazy pages: the destination {peer} gave up (FORCE_CLOSE)"
                    )));
                }
                return Ok(served);
            }
            _ => {
                return Err(Error::PageServer(format!(
                    "lazy pages: unexpected command {:#x} from {peer}",
                    iov.cmd
                )))
            }
        }
    }
}

/// The destination's side: pages fetched from the source's `dump --lazy-pages`.
pub struct LazyClient {
    conn: Box<dyn Conn>,
    peer: String,
    closed: bool,
}

impl LazyClient {
    pub fn connect(opts: &Options) -> Result<LazyClient> {
        let ps = opts
            .page_server
            .as_ref()
            .ok_or_else(|| Error::InvalidOptions("no page server given".into()))?;
        let address = ps.address.as_deref().ok_or_else(|| {
            Error::InvalidOptions("lazy-pages --page-server needs the source's --address".into())
        })?;
        let port = if ps.port == 0 {
            super::DEFAULT_PORT
        } else {
            ps.port
        };
        let tcp = super::connect_tcp(address, port)?;
        let peer = super::host_port(address, port);
        let conn: Box<dyn Conn> = if opts.tls.enabled {
            super::tls::client(tcp, address, &opts.tls)?
        } else {
            Box::new(tcp)
        };
        log::info!("lazy-pages: connected to the source's page server at {peer}");
        Ok(LazyClient {
            conn,
            peer,
            closed: false,
        })
    }

    fn lost(&self, e: impl std::fmt::Display) -> Error {
        Error::PageServer(format!(
            "the source's page server at {} is gone: {e}",
            self.peer
        ))
    }

    /// Fetches the pages of `buf` at `addr` of task `image_pid`.
    pub fn get(&mut self, image_pid: pid_t, addr: u64, buf: &mut [u8]) -> Result<()> {
        let dst = super::dst_id(PS_TYPE_PID, image_pid as u64);
        let mut at = 0usize;
        while at < buf.len() {
            let nr = (buf.len() - at) as u64 / PAGE_SIZE;
            let req = Iov::new(PS_IOV_GET, 0, nr, addr + at as u64, dst);
            self.conn
                .write_all(&req.to_bytes())
                .and_then(|()| self.conn.flush())
                .map_err(|e| self.lost(e))?;
            let mut hdr = [0u8; IOV_SIZE];
            read_exact(&mut *self.conn, &mut hdr, "the answer to GET").map_err(|e| self.lost(e))?;
            let ans = Iov::from_bytes(&hdr);
            let len = ans.nr_pages.saturating_mul(PAGE_SIZE);
            if ans.op() != PS_IOV_ADD_F
                || ans.dst_id != dst
                || ans.vaddr != addr + at as u64
                || ans.nr_pages == 0
                || len > (buf.len() - at) as u64
            {
                return Err(Error::PageServer(format!(
                    "the source at {} answered {ans:?} to a request for {nr} pages at {:#x} \
                     of pid {image_pid}",
                    self.peer,
                    addr + at as u64
                )));
            }
            let len = len as usize;
            read_exact(&mut *self.conn, &mut buf[at..at + len], "page data")
                .map_err(|e| self.lost(e))?;
            at += len;
        }
        Ok(())
    }

    /// Every page arrived: the source may end.
    pub fn close(&mut self) -> Result<()> {
        self.closed = true;
        self.conn
            .write_all(&Iov::new(PS_IOV_CLOSE, 0, 0, 0, 0).to_bytes())
            .and_then(|()| self.conn.flush())
            .map_err(|e| self.lost(e))?;
        let mut b = [0u8; 4];
        read_exact(&mut *self.conn, &mut b, "the answer to CLOSE").map_err(|e| self.lost(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::PageServerAddr;

    /// 64 saved pages of this very process (its memory plays the frozen task's), their
    /// address, and options for both sides on `port`.
    fn setup(data: &mut Vec<u8>) -> (u64, Options, super::super::server::Listener) {
        *data = (0..65 * PAGE_SIZE as usize)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let base = data.as_ptr() as u64;
        let start = (base + PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
        let listener = super::super::server::listen(Some("127.0.0.1"), 0).unwrap();
        let opts = Options {
            page_server: Some(PageServerAddr {
                address: Some("127.0.0.1".into()),
                port: listener.port,
            }),
            ..Default::default()
        };
        (start, opts, listener)
    }

    fn task(start: u64) -> Vec<LazyTask> {
        vec![LazyTask {
            pid: std::process::id() as pid_t,
            image_pid: 42,
            ranges: vec![(start, start + 64 * PAGE_SIZE)],
        }]
    }

    #[test]
    fn get_answers_with_the_task_memory_and_close_ends_the_server() {
        let mut data = Vec::new();
        let (start, opts, listener) = setup(&mut data);
        let off = (start - data.as_ptr() as u64) as usize;
        let want = data[off + 4096..off + 9 * 4096].to_vec();
        let tasks = task(start);
        let server_opts = opts.clone();
        let server = std::thread::spawn(move || {
            serve(listener, &server_opts, &tasks).map_err(|e| e.to_string())
        });
        let mut client = LazyClient::connect(&opts).unwrap();
        let mut buf = vec![0u8; 8 * 4096];
        client.get(42, start + 4096, &mut buf).unwrap();
        assert!(buf == want, "the pages differ");
        client.close().unwrap();
        let served = server.join().unwrap().unwrap();
        assert_eq!(served.requests, 1);
        assert_eq!(served.bytes, 8 * PAGE_SIZE);
        assert_eq!(served.unsent, 56 * PAGE_SIZE);
        drop(data);
    }

    #[test]
    fn get_outside_the_lazy_ranges_fails_both_sides() {
        let mut data = Vec::new();
        let (start, opts, listener) = setup(&mut data);
        let tasks = task(start);
        let server_opts = opts.clone();
        let server = std::thread::spawn(move || {
            serve(listener, &server_opts, &tasks).map_err(|e| e.to_string())
        });
        let mut client = LazyClient::connect(&opts).unwrap();
        let mut buf = vec![0u8; 4096];
        // Past the range: never a zero page in its place.
        let e = client
            .get(42, start + 64 * PAGE_SIZE, &mut buf)
            .unwrap_err();
        assert!(e.to_string().contains("is gone"), "{e}");
        let e = server.join().unwrap().unwrap_err();
        assert!(e.contains("no lazy page"), "{e}");
        drop(data);
    }

    #[test]
    fn get_for_an_unknown_task_fails() {
        let mut data = Vec::new();
        let (start, opts, listener) = setup(&mut data);
        let tasks = task(start);
        let server_opts = opts.clone();
        let server = std::thread::spawn(move || {
            serve(listener, &server_opts, &tasks).map_err(|e| e.to_string())
        });
        let mut client = LazyClient::connect(&opts).unwrap();
        let mut buf = vec![0u8; 4096];
        assert!(client.get(7, start, &mut buf).is_err());
        let e = server.join().unwrap().unwrap_err();
        assert!(e.contains("unknown pagemap"), "{e}");
        drop(data);
    }
}
