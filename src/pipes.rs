//! Pipes and FIFOs with the bytes in their buffers.
//!
//! Dump: each end is a file entry (`file_entry.pipe`, both ends share `pipe_id`, the pipe's
//! inode); a FIFO is a `file_entry.fifo` plus a regular-file entry for its path. The buffered
//! bytes of each pipe (FIFO) go once into pipes-data.img (fifo-data.img) as a `pipe_data_entry`
//! followed by the raw bytes. They are copied with tee(2) from our own copy of the task's fd,
//! which leaves the buffer untouched.
//!
//! Restore: one pipe() per pipe_id serves every end that names it; its capacity is set and its
//! buffer refilled before anyone can read. A FIFO is reopened by path, its buffer refilled once.
//!
//! A pipe in packet mode (pipe2 O_DIRECT: each write is a packet, each read returns at most
//! one) keeps its packets: the copy of its buffer is read back one packet per read, their sizes
//! go into the images (a criu-rs field, `pipe_data_entry.packets`), and restore writes them one
//! by one through a write end in packet mode. FIFOs in packet mode are still refused.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use crate::error::{Error, Result};
use crate::files::{self, TaskFd};
use crate::images::{ImageDir, Kind};
use crate::pb;
use crate::sys::pipe as syspipe;

/// Buffered bytes of one pipe or FIFO.
#[derive(Clone, Debug, Default)]
pub struct PipeBuffer {
    /// The capacity (F_GETPIPE_SZ); None in images that did not record it.
    pub capacity: Option<u32>,
    pub bytes: Vec<u8>,
    /// Sizes of the packets `bytes` is made of, in a pipe in packet mode; empty otherwise.
    pub packets: Vec<u32>,
}

/// What the dump gathered beyond files.img: each pipe's and FIFO's buffer, once.
#[derive(Default)]
pub struct PipeDump {
    pipes: Vec<(u32, PipeBuffer)>,
    fifos: Vec<(u32, PipeBuffer)>,
    /// pipe_id of a FIFO → the (device, inode) it stands for: two FIFOs on different
    /// filesystems must not share a key.
    fifo_keys: HashMap<u32, (u64, u64)>,
}

impl PipeDump {
    pub fn write_images(&self, dir: &ImageDir) -> Result<()> {
        for (kind, list) in [
            (Kind::PipesData, &self.pipes),
            (Kind::FifoData, &self.fifos),
        ] {
            if list.is_empty() {
                continue;
            }
            let mut w = dir.create(kind, "")?;
            for (pipe_id, buf) in list {
                w.write(&pb::PipeDataEntry {
                    pipe_id: *pipe_id,
                    bytes: buf.bytes.len() as u32,
                    size: buf.capacity,
                    packets: buf.packets.clone(),
                })?;
                w.write_raw(&buf.bytes)?;
            }
            w.finish()?;
        }
        Ok(())
    }
}

/// One end of the pipe `pipe:[ino]`.
pub fn dump_pipe(fd: &TaskFd, ino: u64, id: u32, dump: &mut PipeDump) -> Result<pb::FileEntry> {
    let pipe_id = u32::try_from(ino)
        .map_err(|_| fd.unsupported(format!("{}: inode above 32 bits", fd.link)))?;
    let copy = fd.copy()?;
    let fown = files::dump_fown(copy.as_fd())?;
    if !dump.pipes.iter().any(|(p, _)| *p == pipe_id) {
        let buf = read_buffer(fd, &copy)?;
        log::debug!(
            "pid {} fd {}: {} holds {} bytes (capacity {:?})",
            fd.pid,
            fd.fd,
            fd.link,
            buf.bytes.len(),
            buf.capacity
        );
        dump.pipes.push((pipe_id, buf));
    }
    Ok(pb::FileEntry {
        r#type: pb::FdTypes::Pipe as i32,
        id,
        pipe: Some(pb::PipeEntry {
            id,
            pipe_id,
            flags: fd.flags,
            fown,
        }),
        ..Default::default()
    })
}

/// A FIFO opened by path: the fifo entry (whose `regf_id` names the regular-file entry the
/// caller writes for the path) and the file's owner; once per FIFO, its buffer.
pub fn dump_fifo(
    fd: &TaskFd,
    meta: &std::fs::Metadata,
    id: u32,
    regf_id: u32,
    dump: &mut PipeDump,
) -> Result<(pb::FifoEntry, pb::FownEntry)> {
    if fd.flags & libc::O_DIRECT as u32 != 0 {
        return Err(fd.unsupported(format!(
            "FIFO {} in packet mode (O_DIRECT) (not supported yet)",
            fd.link
        )));
    }
    let key = (meta.dev(), meta.ino());
    let pipe_id = u32::try_from(meta.ino())
        .map_err(|_| fd.unsupported(format!("FIFO {}: inode above 32 bits", fd.link)))?;
    let copy = fd.copy()?;
    let fown = files::dump_fown(copy.as_fd())?;
    match dump.fifo_keys.get(&pipe_id) {
        Some(&k) if k != key => {
            return Err(fd.unsupported(format!(
                "FIFO {}: its inode number collides with another FIFO's on another filesystem",
                fd.link
            )))
        }
        Some(_) => {}
        None => {
            let buf = read_buffer(fd, &copy)?;
            dump.fifo_keys.insert(pipe_id, key);
            dump.fifos.push((pipe_id, buf));
        }
    }
    let fifo = pb::FifoEntry {
        id,
        pipe_id,
        regf_id: Some(regf_id),
    };
    Ok((fifo, fown))
}

/// Copies the pipe's buffer without consuming it.
fn read_buffer(fd: &TaskFd, copy: &OwnedFd) -> Result<PipeBuffer> {
    // tee needs an end open for reading; for a write-only end we open a reader of our own on
    // the same pipe (it does not block: there is a writer).
    let reader = if fd.flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32 {
        files::reopen(copy.as_fd(), libc::O_RDONLY | libc::O_NONBLOCK)?
    } else {
        copy.try_clone()
            .map_err(|e| Error::io(format!("dup our copy of {}", fd.link), e))?
    };
    let capacity = syspipe::capacity(reader.as_fd())?;
    let queued = syspipe::queued_bytes(reader.as_fd())? as usize;
    // The copy must hold as many buffers as the original: the same capacity. Setting it fails
    // when the capacity is beyond what we may set (fs.pipe-max-size without
    // CAP_SYS_RESOURCE), and then a restore could not set it either: better to say so now, even
    // for an empty pipe.
    let (steal_r, steal_w) = syspipe::pipe_nonblocking()?;
    syspipe::set_capacity(steal_w.as_fd(), capacity).map_err(|e| {
        fd.unsupported(format!(
            "{} has a capacity of {capacity} bytes, which could not be restored: {e}",
            fd.link
        ))
    })?;
    if queued == 0 {
        return Ok(PipeBuffer {
            capacity: Some(capacity),
            bytes: Vec::new(),
            packets: Vec::new(),
        });
    }
    let copied = syspipe::tee(reader.as_fd(), steal_w.as_fd(), capacity as usize)?;
    if copied != queued {
        return Err(Error::task(
            fd.pid,
            format!(
                "fd {}: tee copied {copied} of the {queued} bytes in {}",
                fd.fd, fd.link
            ),
        ));
    }
    // One read takes all there is, unless the buffer holds packets (tee keeps them): then each
    // read returns one packet.
    let mut bytes = vec![0u8; copied];
    let mut got = 0;
    let mut reads: Vec<u32> = Vec::new();
    while got < copied {
        match nix::unistd::read(&steal_r, &mut bytes[got..]) {
            Ok(0) => break,
            Ok(n) => {
                got += n;
                reads.push(n as u32);
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(Error::sys("read the copy of a pipe buffer", e)),
        }
    }
    if got != copied {
        return Err(Error::task(
            fd.pid,
            format!(
                "fd {}: read {got} of {copied} bytes copied from {}",
                fd.fd, fd.link
            ),
        ));
    }
    let packets = if reads.len() > 1 { reads } else { Vec::new() };
    if !packets.is_empty() {
        log::debug!("{}: {} packets", fd.link, packets.len());
    }
    Ok(PipeBuffer {
        capacity: Some(capacity),
        bytes,
        packets,
    })
}

// ---------------------------------------------------------------------------------------------
// Restore

/// pipes-data.img and fifo-data.img, by pipe_id.
#[derive(Default)]
pub struct PipeImages {
    pipes: HashMap<u32, PipeBuffer>,
    fifos: HashMap<u32, PipeBuffer>,
}

impl PipeImages {
    pub fn load(dir: &ImageDir) -> Result<PipeImages> {
        Ok(PipeImages {
            pipes: load_buffers(dir, Kind::PipesData)?,
            fifos: load_buffers(dir, Kind::FifoData)?,
        })
    }

    pub fn pipe(&self, pipe_id: u32) -> Option<&PipeBuffer> {
        self.pipes.get(&pipe_id)
    }

    pub fn fifo(&self, pipe_id: u32) -> Option<&PipeBuffer> {
        self.fifos.get(&pipe_id)
    }
}

fn load_buffers(dir: &ImageDir, kind: Kind) -> Result<HashMap<u32, PipeBuffer>> {
    let mut out = HashMap::new();
    let Some(mut r) = dir.open_optional(kind, "")? else {
        return Ok(out);
    };
    while let Some(e) = r.read_entry::<pb::PipeDataEntry>()? {
        let bytes = r.read_raw(e.bytes as usize)?;
        if !e.packets.is_empty()
            && e.packets.iter().map(|&p| p as usize).sum::<usize>() != bytes.len()
        {
            return Err(Error::image(
                r.path().to_owned(),
                format!(
                    "pipe {}: packet sizes do not add up to its bytes",
                    e.pipe_id
                ),
            ));
        }
        let buf = PipeBuffer {
            capacity: e.size,
            bytes,
            packets: e.packets,
        };
        if out.insert(e.pipe_id, buf).is_some() {
            return Err(Error::image(
                r.path().to_owned(),
                format!("two buffers for pipe {}", e.pipe_id),
            ));
        }
    }
    Ok(out)
}

/// Creates the pipe `ends` belong to (all with one pipe_id), refills its buffer, and opens one
/// file description per end. The first read-only and the first write-only end are the pipe's
/// own two files; any other end (read-write, or a second description of one side, as opening
/// /proc/PID/fd/N makes) is opened anew on the same pipe.
pub fn open_pipe(
    ends: &[&pb::PipeEntry],
    buffer: Option<&PipeBuffer>,
) -> Result<Vec<(u32, OwnedFd)>> {
    let pipe_id = ends.first().map_or(0, |e| e.pipe_id);
    let (r, w) = syspipe::pipe_nonblocking()?;
    if let Some(buf) = buffer {
        refill(w.as_fd(), buf).map_err(|e| match e {
            Error::Sys { what, errno } => Error::sys(format!("pipe {pipe_id}: {what}"), errno),
            e => e,
        })?;
    }
    let mut out = Vec::with_capacity(ends.len());
    let (mut read_used, mut write_used) = (false, false);
    for e in ends {
        let mode = e.flags as i32 & libc::O_ACCMODE;
        let fd = match mode {
            libc::O_RDONLY if !read_used => {
                read_used = true;
                r.try_clone()
            }
            libc::O_WRONLY if !write_used => {
                write_used = true;
                w.try_clone()
            }
            _ => {
                let side = if mode == libc::O_WRONLY { &w } else { &r };
                out.push((e.id, files::reopen(side.as_fd(), mode)?));
                continue;
            }
        }
        .map_err(|err| Error::io(format!("dup an end of pipe {pipe_id}"), err))?;
        out.push((e.id, fd));
    }
    for (e, (_, fd)) in ends.iter().zip(&out) {
        files::restore_status_flags(fd.as_fd(), e.flags)?;
    }
    Ok(out)
}

/// Opens a FIFO by path with its saved flags. `buffer`: refill it (the first file of this FIFO
/// to be opened does, once).
pub fn open_fifo(reg: &pb::RegFileEntry, buffer: Option<&PipeBuffer>) -> Result<OwnedFd> {
    let path = &reg.name;
    // A read-write open never blocks and keeps the FIFO's pipe alive while we work: the real
    // open then finds a reader and a writer, whatever its mode.
    let keeper = files::open_path(path, libc::O_RDWR | libc::O_NONBLOCK)?;
    let meta = std::fs::metadata(format!("/proc/self/fd/{}", keeper.as_raw_fd()))
        .map_err(|e| Error::io(format!("stat {path}"), e))?;
    if !std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type()) {
        return Err(Error::InvalidOptions(format!(
            "{path} was a FIFO at checkpoint time and is not one now"
        )));
    }
    let flags = reg.flags as i32 & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC);
    let fd = files::open_path(path, flags)?;
    if let Some(buf) = buffer {
        let already = syspipe::queued_bytes(keeper.as_fd())?;
        if already != 0 && !buf.bytes.is_empty() {
            return Err(Error::InvalidOptions(format!(
                "FIFO {path} already holds {already} bytes: another process has it open, and \
                 refilling it with the saved {} bytes would mix them",
                buf.bytes.len()
            )));
        }
        refill(keeper.as_fd(), buf).map_err(|e| match e {
            Error::Sys { what, errno } => Error::sys(format!("FIFO {path}: {what}"), errno),
            e => e,
        })?;
    }
    files::restore_status_flags(fd.as_fd(), reg.flags)?;
    Ok(fd)
}

/// Sets the capacity, then writes the saved bytes into a non-blocking write end (the packets of
/// a packet-mode pipe one write each, with the end in packet mode; the caller sets its saved
/// flags afterwards).
fn refill(w: BorrowedFd<'_>, buf: &PipeBuffer) -> Result<()> {
    if let Some(cap) = buf.capacity {
        if cap != syspipe::capacity(w)? {
            syspipe::set_capacity(w, cap)?;
        }
    }
    if !buf.packets.is_empty() {
        files::restore_status_flags(w, (libc::O_DIRECT | libc::O_NONBLOCK) as u32)?;
        let mut off = 0;
        for &len in &buf.packets {
            let packet = &buf.bytes[off..off + len as usize];
            let n = loop {
                match nix::unistd::write(w, packet) {
                    Err(nix::errno::Errno::EINTR) => {}
                    r => {
                        break r.map_err(|e| {
                            Error::sys(format!("refill a packet of {len} bytes"), e)
                        })?
                    }
                }
            };
            if n != packet.len() {
                return Err(Error::InvalidOptions(format!(
                    "refill: a packet of {len} bytes went in as {n}"
                )));
            }
            off += len as usize;
        }
        return Ok(());
    }
    let mut done = 0;
    while done < buf.bytes.len() {
        match nix::unistd::write(w, &buf.bytes[done..]) {
            Ok(n) => done += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                return Err(Error::sys(
                    format!(
                        "refill: wrote {done} of {} bytes (capacity {})",
                        buf.bytes.len(),
                        syspipe::capacity(w).unwrap_or(0)
                    ),
                    e,
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(id: u32, flags: i32) -> pb::PipeEntry {
        pb::PipeEntry {
            id,
            pipe_id: 77,
            flags: flags as u32,
            fown: pb::FownEntry::default(),
        }
    }

    fn flags_of(fd: &OwnedFd) -> i32 {
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).unwrap()
    }

    #[test]
    fn buffers_round_trip_through_the_images() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ImageDir::new(tmp.path());
        let mut dump = PipeDump::default();
        let big: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        dump.pipes.push((
            5,
            PipeBuffer {
                capacity: Some(1 << 20),
                bytes: big.clone(),
                packets: Vec::new(),
            },
        ));
        dump.pipes.push((
            6,
            PipeBuffer {
                capacity: Some(4096),
                bytes: Vec::new(),
                packets: Vec::new(),
            },
        ));
        dump.fifos.push((
            5,
            PipeBuffer {
                capacity: None,
                bytes: b"fifo".to_vec(),
                packets: vec![1, 3],
            },
        ));
        dump.write_images(&dir).unwrap();
        let back = PipeImages::load(&dir).unwrap();
        assert_eq!(back.pipe(5).unwrap().bytes, big);
        assert_eq!(back.pipe(5).unwrap().capacity, Some(1 << 20));
        assert!(back.pipe(6).unwrap().bytes.is_empty());
        assert_eq!(back.fifo(5).unwrap().bytes, b"fifo");
        assert_eq!(back.fifo(5).unwrap().packets, [1, 3]);
        assert!(back.pipe(7).is_none());
    }

    /// One pipe for all ends: the first read and write ends are the pipe's own files, another
    /// read end is a description of its own; the buffer is in, at the saved capacity.
    #[test]
    fn one_pipe_serves_every_end() {
        let ends = [
            end(1, libc::O_RDONLY | libc::O_NONBLOCK),
            end(2, libc::O_WRONLY),
            end(3, libc::O_RDONLY),
        ];
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let buf = PipeBuffer {
            capacity: Some(256 << 10),
            bytes: data.clone(),
            packets: Vec::new(),
        };
        let refs: Vec<&pb::PipeEntry> = ends.iter().collect();
        let fds: HashMap<u32, OwnedFd> =
            open_pipe(&refs, Some(&buf)).unwrap().into_iter().collect();
        assert_eq!(fds.len(), 3);
        assert_ne!(flags_of(&fds[&1]) & libc::O_NONBLOCK, 0);
        assert_eq!(
            flags_of(&fds[&3]) & libc::O_NONBLOCK,
            0,
            "a description of its own"
        );
        assert_eq!(flags_of(&fds[&2]) & libc::O_NONBLOCK, 0);
        assert_eq!(syspipe::capacity(fds[&1].as_fd()).unwrap(), 256 << 10);
        let mut got = vec![0u8; data.len() + 1];
        let mut n = 0;
        while let Ok(k) = nix::unistd::read(&fds[&1], &mut got[n..]) {
            if k == 0 {
                break;
            }
            n += k;
        }
        assert_eq!(&got[..n], &data[..], "every byte, in order, then EAGAIN");
        // Both read ends are on the same pipe as the write end.
        nix::unistd::write(&fds[&2], b"z").unwrap();
        let mut one = [0u8; 1];
        assert_eq!(nix::unistd::read(&fds[&3], &mut one).unwrap(), 1);
        assert_eq!(&one, b"z");
    }

    /// A packet-mode pipe gets its packets back one per read, and its write end stays in
    /// packet mode.
    #[test]
    fn packets_stay_packets() {
        let ends = [
            end(1, libc::O_RDONLY | libc::O_NONBLOCK),
            end(2, libc::O_WRONLY | libc::O_DIRECT),
        ];
        let buf = PipeBuffer {
            capacity: None,
            bytes: b"abcdefgh".to_vec(),
            packets: vec![3, 5],
        };
        let refs: Vec<&pb::PipeEntry> = ends.iter().collect();
        let fds: HashMap<u32, OwnedFd> =
            open_pipe(&refs, Some(&buf)).unwrap().into_iter().collect();
        let mut got = [0u8; 4096];
        assert_eq!(nix::unistd::read(&fds[&1], &mut got).unwrap(), 3);
        assert_eq!(&got[..3], b"abc");
        assert_eq!(nix::unistd::read(&fds[&1], &mut got).unwrap(), 5);
        assert_ne!(flags_of(&fds[&2]) & libc::O_DIRECT, 0);
        assert_eq!(flags_of(&fds[&2]) & libc::O_NONBLOCK, 0);
    }
}
