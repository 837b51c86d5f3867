//! `criu page-server`: receives one dump's pages and writes pagemap-*.img and pages-*.img.
//! Everything is written under temporary names and renamed only when the stream ends with
//! CLOSE: a truncated or broken stream never leaves an image that looks complete.

use std::fs::File;
use std::io::Write;
use std::net::{TcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};

use super::{
    read_exact, split_dst_id, Conn, Iov, IOV_SIZE, PS_IOV_ADD, PS_IOV_ADD_F, PS_IOV_CLOSE,
    PS_IOV_FORCE_CLOSE, PS_IOV_GET, PS_IOV_HOLE, PS_IOV_OPEN, PS_IOV_OPEN2, PS_IOV_PARENT,
    PS_TYPE_PID, PS_TYPE_SHMEM,
};
use crate::error::{Error, Result};
use crate::images::pages::PARENT_LINK;
use crate::images::{pages_file_name, ImageDir, ImageWriter, Kind, PE_COW, PE_PARENT, PE_PRESENT};
use crate::options::Options;
use crate::pb;

const PAGE_SIZE: u64 = 4096;
/// The receive buffer: the pages file gets writes this large.
const BUF_SIZE: usize = 8 << 20;
/// No single command carries more than this (a whole 47-bit address space, in pages).
const MAX_PAGES: u64 = 1 << 35;

/// A bound page server socket.
pub struct Listener {
    sock: TcpListener,
    pub port: u16,
}

/// Binds `address` (all addresses when None) and `port` (0: any free port).
pub fn listen(address: Option<&str>, port: u16) -> Result<Listener> {
    let host = address.unwrap_or("0.0.0.0");
    let target = super::host_port(host, port);
    let addrs: Vec<_> = target
        .to_socket_addrs()
        .map_err(|e| Error::io(format!("resolve {target}"), e))?
        .collect();
    let sock =
        TcpListener::bind(&addrs[..]).map_err(|e| Error::io(format!("listen on {target}"), e))?;
    let port = sock
        .local_addr()
        .map_err(|e| Error::io("read the page server's address", e))?
        .port();
    Ok(Listener { sock, port })
}

impl Listener {
    /// Accepts one connection (TLS when `opts` says so) and stops listening.
    pub fn accept(self, opts: &Options) -> Result<(Box<dyn Conn>, std::net::SocketAddr)> {
        let (tcp, peer) = self
            .sock
            .accept()
            .map_err(|e| Error::io("accept a page server connection", e))?;
        drop(self.sock);
        super::tune(&tcp);
        let conn: Box<dyn Conn> = if opts.tls.enabled {
            super::tls::server(tcp, &opts.tls)?
        } else {
            Box::new(tcp)
        };
        Ok((conn, peer))
    }

    /// Accepts one connection and receives one dump into `opts.images_dir`.
    pub fn serve_one(self, opts: &Options) -> Result<()> {
        if !opts.tls.enabled {
            log::warn!(
                "the page server runs without --tls: anyone who can reach port {} can write \
                 images into {}",
                self.port,
                opts.images_dir.display()
            );
        }
        let (mut conn, peer) = self.accept(opts)?;
        log::info!("page server: connection from {peer}");
        let dir = ImageDir::new(&opts.images_dir);
        let parent = link_parent(&dir, opts.prev_images_dir.as_deref())?;
        let mut rx = Receiver {
            dir,
            parent,
            next_pages_id: 1,
            cur: None,
            done: Vec::new(),
            buf: vec![0u8; BUF_SIZE],
            committed: false,
            pages: 0,
        };
        let r = rx.run(&mut *conn);
        match &r {
            Ok(()) => log::info!(
                "page server: received {} pages from {peer} into {}",
                rx.pages,
                opts.images_dir.display()
            ),
            Err(e) => log::error!("{e}; nothing received from {peer} was kept"),
        }
        r
    }
}

/// `criu page-server`: listens, goes to the background with `--daemon` once the port is bound
/// (the foreground process exits then), writes `--pidfile` and one byte to `--status-fd`, and
/// receives one dump.
pub fn run(opts: &Options, address: Option<&str>, port: u16) -> Result<()> {
    let listener = listen(address, port)?;
    log::info!(
        "page server listening on {}:{}",
        address.unwrap_or("*"),
        listener.port
    );
    let ready = if opts.restore_detached {
        Some(
            crate::rpc::background()
                .map_err(|e| Error::sys("run the page server in the background", e))?,
        )
    } else {
        None
    };
    if let Some(pidfile) = &opts.pidfile {
        std::fs::write(pidfile, std::process::id().to_string())
            .map_err(|e| Error::io(format!("write the pidfile {}", pidfile.display()), e))?;
    }
    if let Some(fd) = opts.status_fd {
        crate::sys::fd::write_status_byte(fd)?;
    }
    if let Some(ready) = ready {
        let _ = nix::unistd::write(&ready, b"1");
    }
    listener.serve_one(opts)
}

/// Points `dir/parent` at `prev` (relative to `dir`, as pre-dump does).
fn link_parent(dir: &ImageDir, prev: Option<&Path>) -> Result<Option<ImageDir>> {
    let Some(prev) = prev else {
        return Ok(None);
    };
    let link = dir.file(PARENT_LINK);
    if std::fs::symlink_metadata(&link).is_ok() {
        std::fs::remove_file(&link)
            .map_err(|e| Error::io(format!("remove {}", link.display()), e))?;
    }
    std::os::unix::fs::symlink(prev, &link)
        .map_err(|e| Error::io(format!("link {} to {}", link.display(), prev.display()), e))?;
    let parent = dir.parent();
    if parent.is_none() {
        log::warn!(
            "page server: parent images {} not found: the dump must send all pages",
            prev.display()
        );
    }
    Ok(parent)
}

/// The pagemap being received.
struct Xfer {
    dst: u64,
    pm: ImageWriter,
    pages: File,
    last_end: u64,
}

struct Receiver {
    dir: ImageDir,
    parent: Option<ImageDir>,
    next_pages_id: u32,
    cur: Option<Xfer>,
    /// (temporary, final) names of everything received so far.
    done: Vec<(PathBuf, PathBuf)>,
    buf: Vec<u8>,
    committed: bool,
    pages: u64,
}

fn garbage(msg: impl Into<String>) -> Error {
    Error::PageServer(format!("bad stream: {}", msg.into()))
}

fn kind_of(dst: u64) -> Result<(Kind, u64)> {
    match split_dst_id(dst) {
        (PS_TYPE_PID, id) => Ok((Kind::Pagemap, id)),
        (PS_TYPE_SHMEM, id) => Ok((Kind::ShmemPagemap, id)),
        (t, _) => Err(garbage(format!("unknown pagemap type {t} in id {dst:#x}"))),
    }
}

fn temporary(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".part");
    PathBuf::from(p)
}

impl Receiver {
    fn run(&mut self, conn: &mut dyn Conn) -> Result<()> {
        let mut hdr = [0u8; IOV_SIZE];
        loop {
            read_exact(conn, &mut hdr, "a command")?;
            let iov = Iov::from_bytes(&hdr);
            match iov.op() {
                PS_IOV_OPEN => self.open(iov.dst_id)?,
                PS_IOV_OPEN2 => {
                    self.open(iov.dst_id)?;
                    let has = self.has_parent(iov.dst_id)?;
                    reply(conn, &[has as u8])?;
                }
                PS_IOV_PARENT => {
                    let has = self.has_parent(iov.dst_id)? as i32;
                    reply(conn, &has.to_ne_bytes())?;
                }
                PS_IOV_ADD => self.add(conn, &iov, PE_PRESENT)?,
                PS_IOV_HOLE => self.add(conn, &iov, PE_PARENT)?,
                PS_IOV_ADD_F => self.add(conn, &iov, iov.flags())?,
                PS_IOV_GET => {
                    return Err(Error::PageServer(
                        "lazy page requests (GET) are not served by this page server".into(),
                    ))
                }
                PS_IOV_CLOSE => {
                    let status: i32 = match self.commit() {
                        Ok(()) => 0,
                        Err(e) => {
                            log::error!("page server: {e}");
                            -1
                        }
                    };
                    reply(conn, &status.to_ne_bytes())?;
                    return if status == 0 {
                        Ok(())
                    } else {
                        Err(Error::PageServer("could not save the images".into()))
                    };
                }
                PS_IOV_FORCE_CLOSE => {
                    reply(conn, &0i32.to_ne_bytes())?;
                    return Err(Error::PageServer(
                        "the dump failed on the source (FORCE_CLOSE)".into(),
                    ));
                }
                _ => return Err(garbage(format!("unknown command {:#x}", iov.cmd))),
            }
        }
    }

    fn has_parent(&self, dst: u64) -> Result<bool> {
        let (kind, id) = kind_of(dst)?;
        Ok(self.parent.as_ref().is_some_and(|p| p.exists(kind, id)))
    }

    /// Ends the pagemap being received (its files stay temporary until CLOSE).
    fn close_current(&mut self) -> Result<()> {
        if let Some(x) = self.cur.take() {
            x.pm.finish()?;
        }
        Ok(())
    }

    fn open(&mut self, dst: u64) -> Result<()> {
        self.close_current()?;
        let (kind, id) = kind_of(dst)?;
        let pm_path = self.dir.file(&kind.file_name(id));
        if self.done.iter().any(|d| d.1 == pm_path) {
            return Err(garbage(format!("pagemap {id:#x} opened twice")));
        }
        let pages_id = self.next_pages_id;
        self.next_pages_id += 1;
        let pages_path = self.dir.file(&pages_file_name(pages_id));
        let (pm_tmp, pages_tmp) = (temporary(&pm_path), temporary(&pages_path));
        // Registered first: removed again whatever happens next.
        self.done.push((pages_tmp.clone(), pages_path));
        self.done.push((pm_tmp.clone(), pm_path));
        let pages = File::create(&pages_tmp)
            .map_err(|e| Error::io(format!("create {}", pages_tmp.display()), e))?;
        let mut pm = ImageWriter::create(pm_tmp, kind)?;
        pm.write(&pb::PagemapHead { pages_id })?;
        self.cur = Some(Xfer {
            dst,
            pm,
            pages,
            last_end: 0,
        });
        Ok(())
    }

    fn add(&mut self, conn: &mut dyn Conn, iov: &Iov, flags: u32) -> Result<()> {
        let Some(x) = self.cur.as_mut() else {
            return Err(garbage("pages sent before any OPEN"));
        };
        if iov.dst_id != x.dst {
            return Err(garbage(format!(
                "pages for {:#x} while {:#x} is open",
                iov.dst_id, x.dst
            )));
        }
        if flags & crate::images::PE_LAZY != 0 {
            return Err(Error::PageServer(
                "lazy pages are not supported by this page server".into(),
            ));
        }
        if flags & !(PE_PARENT | PE_PRESENT | PE_COW) != 0 || flags == 0 {
            return Err(garbage(format!("unknown page flags {flags:#x}")));
        }
        let nr = iov.nr_pages;
        if nr == 0 || nr > MAX_PAGES || iov.vaddr % PAGE_SIZE != 0 {
            return Err(garbage(format!(
                "{nr} pages at {:#x} cannot be a pagemap entry",
                iov.vaddr
            )));
        }
        let end = iov
            .vaddr
            .checked_add(nr * PAGE_SIZE)
            .ok_or_else(|| garbage(format!("{nr} pages at {:#x} overflow", iov.vaddr)))?;
        if iov.vaddr < x.last_end {
            return Err(garbage(format!(
                "pages at {:#x} are out of order (after {:#x})",
                iov.vaddr, x.last_end
            )));
        }
        x.last_end = end;
        x.pm.write(&pb::PagemapEntry {
            vaddr: iov.vaddr,
            compat_nr_pages: u32::try_from(nr).unwrap_or(0),
            in_parent: None,
            flags: Some(flags),
            nr_pages: Some(nr),
        })?;
        if flags & PE_PRESENT == 0 {
            return Ok(());
        }
        // The data: read in big blocks, written in big blocks.
        let mut left = nr * PAGE_SIZE;
        while left > 0 {
            let n = (left as usize).min(self.buf.len());
            read_exact(conn, &mut self.buf[..n], "page data")?;
            x.pages
                .write_all(&self.buf[..n])
                .map_err(|e| Error::io("write a pages image", e))?;
            left -= n as u64;
        }
        self.pages += nr;
        Ok(())
    }

    /// The stream ended well: every file gets its real name.
    fn commit(&mut self) -> Result<()> {
        self.close_current()?;
        for (tmp, path) in &self.done {
            std::fs::rename(tmp, path).map_err(|e| {
                Error::io(format!("rename {} to {}", tmp.display(), path.display()), e)
            })?;
        }
        self.committed = true;
        Ok(())
    }
}

fn reply(conn: &mut dyn Conn, bytes: &[u8]) -> Result<()> {
    conn.write_all(bytes)
        .and_then(|()| conn.flush())
        .map_err(|e| Error::io("answer the page server's client", e))
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if !self.committed {
            self.cur = None;
            for (tmp, _) in &self.done {
                let _ = std::fs::remove_file(tmp);
            }
        }
    }
}
