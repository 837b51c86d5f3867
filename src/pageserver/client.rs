//! The dump's side: a `PageSink` that sends pages to a page server as they are read.

use std::fs::File;

use libc::pid_t;

use super::{
    dst_id, read_exact, Conn, Iov, PS_IOV_ADD_F, PS_IOV_CLOSE, PS_IOV_FORCE_CLOSE, PS_IOV_OPEN2,
    PS_IOV_PARENT, PS_TYPE_PID, PS_TYPE_SHMEM,
};
use crate::error::{Error, Result};
use crate::images::{ImageDir, Kind, PE_PRESENT};
use crate::mem::{push_entry, Outgoing, PagePlan, PageSink};
use crate::options::Options;
use crate::pb;

const PAGE_SIZE: u64 = 4096;
/// Bytes read from the task per command: few large writes (and few wakeups of the server).
const BUF_SIZE: usize = 4 << 20;

/// A connection to a page server for one dump or pre-dump.
pub struct RemotePages {
    conn: Box<dyn Conn>,
    /// The source's images directory: it gets the sent-pagemap records.
    dir: ImageDir,
    buf: Vec<u8>,
    peer: String,
    closed: bool,
}

impl RemotePages {
    /// Connects to the page server of `opts` (before the tree is frozen).
    pub fn connect(opts: &Options, dir: &ImageDir) -> Result<RemotePages> {
        let ps = opts
            .page_server
            .as_ref()
            .ok_or_else(|| Error::InvalidOptions("no page server given".into()))?;
        let address = ps.address.as_deref().ok_or_else(|| {
            Error::InvalidOptions("--page-server needs the server's --address".into())
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
        log::info!("connected to the page server at {peer}");
        Ok(RemotePages {
            conn,
            dir: dir.clone(),
            buf: vec![0u8; BUF_SIZE],
            peer,
            closed: false,
        })
    }

    fn send(&mut self, iov: Iov) -> Result<()> {
        send_iov(&mut *self.conn, iov, &self.peer)
    }

    fn lost_peer(&self, e: std::io::Error) -> Error {
        Error::io(format!("send to the page server at {}", self.peer), e)
    }

    /// Opens the destination's pagemap `dst`; answers whether it has a parent there.
    fn open(&mut self, dst: u64) -> Result<bool> {
        self.send(Iov::new(PS_IOV_OPEN2, 0, 0, 0, dst))?;
        self.conn.flush().map_err(|e| self.lost_peer(e))?;
        let mut b = [0u8; 1];
        read_exact(&mut *self.conn, &mut b, "the answer to OPEN2")?;
        Ok(b[0] != 0)
    }
}

fn send_iov(conn: &mut dyn Conn, iov: Iov, peer: &str) -> Result<()> {
    conn.write_all(&iov.to_bytes())
        .map_err(|e| Error::io(format!("send to the page server at {peer}"), e))
}

impl PageSink for RemotePages {
    fn has_parent(&mut self, pid: pid_t) -> Result<bool> {
        self.send(Iov::new(
            PS_IOV_PARENT,
            0,
            0,
            0,
            dst_id(PS_TYPE_PID, pid as u64),
        ))?;
        self.conn.flush().map_err(|e| self.lost_peer(e))?;
        let mut b = [0u8; 4];
        read_exact(&mut *self.conn, &mut b, "the answer to PARENT")?;
        Ok(i32::from_ne_bytes(b) > 0)
    }

    fn write_task(
        &mut self,
        plan: &mut PagePlan,
        image_pid: pid_t,
        _pages_id: u32,
        live: bool,
    ) -> Result<u64> {
        let pid = image_pid;
        let dst = dst_id(PS_TYPE_PID, pid as u64);
        let has_parent = self.open(dst)?;
        let parents = plan
            .entries
            .iter()
            .any(|e| e.flags == Some(crate::images::PE_PARENT));
        if parents && !has_parent {
            return Err(Error::PageServer(format!(
                "pid {pid}: the page server at {} holds no earlier iteration of this task \
                 (start it with --prev-images-dir)",
                self.peer
            )));
        }
        let mut buf = std::mem::take(&mut self.buf);
        let peer = self.peer.clone();
        let conn = &mut *self.conn;
        let lost = plan.stream(live, &mut buf, &mut |o| match o {
            Outgoing::Entry(e) => send_iov(
                conn,
                Iov::new(
                    PS_IOV_ADD_F,
                    e.flags.unwrap_or(PE_PRESENT),
                    e.nr_pages.unwrap_or(e.compat_nr_pages as u64),
                    e.vaddr,
                    dst,
                ),
                &peer,
            ),
            Outgoing::Data { vaddr, data } => {
                let iov = Iov::new(
                    PS_IOV_ADD_F,
                    PE_PRESENT,
                    data.len() as u64 / PAGE_SIZE,
                    vaddr,
                    dst,
                );
                send_iov(conn, iov, &peer)?;
                conn.write_all(data)
                    .map_err(|e| Error::io(format!("send pages to the page server at {peer}"), e))
            }
        });
        self.buf = buf;
        let lost = lost?;
        // What the destination now holds, for the next iteration's PE_PARENT entries.
        let mut w = self.dir.create(Kind::SentPagemap, pid)?;
        w.write(&pb::PagemapHead { pages_id: 0 })?;
        for e in &plan.entries {
            w.write(e)?;
        }
        w.finish()?;
        Ok(lost)
    }

    fn write_shared(
        &mut self,
        shmid: u64,
        obj: &File,
        size: u64,
        ranges: &[(u64, u64)],
        _pages_id: u32,
    ) -> Result<()> {
        let dst = dst_id(PS_TYPE_SHMEM, shmid);
        self.open(dst)?;
        let mut buf = std::mem::take(&mut self.buf);
        let mut sent = Vec::new();
        let r = (|| {
            for &(start, end) in ranges {
                let mut at = start;
                while at < end {
                    let n = ((end - at) as usize).min(buf.len());
                    crate::mem::read_shared(obj, &mut buf[..n], at, size)?;
                    self.send(Iov::new(
                        PS_IOV_ADD_F,
                        PE_PRESENT,
                        n as u64 / PAGE_SIZE,
                        at,
                        dst,
                    ))?;
                    self.conn
                        .write_all(&buf[..n])
                        .map_err(|e| self.lost_peer(e))?;
                    push_entry(&mut sent, at, n as u64 / PAGE_SIZE, PE_PRESENT);
                    at += n as u64;
                }
            }
            Ok(())
        })();
        self.buf = buf;
        r
    }

    fn finish(&mut self) -> Result<()> {
        self.closed = true;
        self.send(Iov::new(PS_IOV_CLOSE, 0, 0, 0, 0))?;
        self.conn.flush().map_err(|e| self.lost_peer(e))?;
        let mut b = [0u8; 4];
        read_exact(&mut *self.conn, &mut b, "the answer to CLOSE")?;
        match i32::from_ne_bytes(b) {
            0 => Ok(()),
            s => Err(Error::PageServer(format!(
                "the page server at {} failed to save the pages (status {s})",
                self.peer
            ))),
        }
    }
}

impl Drop for RemotePages {
    /// A dump that failed tells the server to drop what it received (FORCE_CLOSE), best
    /// effort: the server also drops it when the connection just ends.
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        if send_iov(
            &mut *self.conn,
            Iov::new(PS_IOV_FORCE_CLOSE, 0, 0, 0, 0),
            &self.peer,
        )
        .is_ok()
            && self.conn.flush().is_ok()
        {
            let mut b = [0u8; 4];
            let _ = read_exact(&mut *self.conn, &mut b, "the answer to FORCE_CLOSE");
        }
    }
}
