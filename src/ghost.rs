//! Ghost files: regular files that were deleted (no name left, link count 0) while a task still
//! had them open or mapped. Their contents go into the images (CRIU's format: remap-fpath.img
//! names, for a file entry, the ghost it is remapped to; ghost-file-ID.img, ID in hex, holds a
//! `ghost_file_entry` and the contents, raw or in `ghost_chunk_entry` chunks that skip holes).
//! Files allocating more than --ghost-limit bytes (default 1 MiB, as CRIU) are refused.
//!
//! Restore creates each ghost once, at its old path when that is free (so that
//! /proc/PID/fd/N reads as before) or else next to it as `PATH.cr.ID.ghost` (CRIU's name),
//! with its contents, owner, mode and times; every fd and mapping of it is opened there; once
//! every file of the tree is open (`files::open_all`) the name is unlinked again.
//! A file that still has another name (link count above 0) would need --link-remap: refused.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileExt, MetadataExt};

use crate::error::{Error, Result};
use crate::images::{Hex, ImageDir, Kind};
use crate::pb;
use crate::sys::evfds;

/// CRIU keeps files of at least this size in chunks (holes skipped).
const CHUNKS_FROM: u64 = 3 * 4096;

pub const DEFAULT_LIMIT: u64 = 1 << 20;

struct Ghost {
    id: u32,
    entry: pb::GhostFileEntry,
    /// Our own read-only open of the file: it keeps the inode alive until its contents are
    /// written into the images.
    contents: File,
}

/// What the dump gathered: each ghost once (by device and inode), and which file entries are
/// remapped to which ghost.
#[derive(Default)]
pub struct GhostDump {
    by_inode: HashMap<(u64, u64), u32>,
    ghosts: Vec<Ghost>,
    remaps: Vec<pb::RemapFilePathEntry>,
}

impl GhostDump {
    /// The deleted file behind `proc_link` (/proc/PID/fd/N or /proc/PID/map_files/A-B of
    /// task `pid`), once named `path`: its ghost id, made on first sight. `Ok(Err(why))` is a
    /// refusal.
    pub fn add(
        &mut self,
        pid: libc::pid_t,
        proc_link: &str,
        path: &str,
        limit: u64,
    ) -> Result<std::result::Result<u32, String>> {
        let meta =
            std::fs::metadata(proc_link).map_err(|e| Error::io(format!("stat {proc_link}"), e))?;
        if !meta.is_file() {
            return Ok(Err(format!(
                "deleted {path} is not a regular file (mode {:#o}): not supported",
                meta.mode()
            )));
        }
        if meta.nlink() != 0 {
            return Ok(Err(format!(
                "{path} was deleted but the file still has {} other name(s): that needs \
                 --link-remap, which is not supported yet",
                meta.nlink()
            )));
        }
        if let Some(&id) = self.by_inode.get(&(meta.dev(), meta.ino())) {
            return Ok(Ok(id));
        }
        let contents = File::open(proc_link)
            .map_err(|e| Error::io(format!("open {proc_link} to read it"), e))?;
        // memfds, SysV shared memory and AIO rings look like deleted files too, but live on
        // kernel-internal mounts, in no mount table: there is no directory to make them again in.
        let mnt_id =
            crate::procfs::fdinfo(std::process::id() as libc::pid_t, contents.as_raw_fd())?.mnt_id;
        if !crate::procfs::mountinfo(pid)?
            .iter()
            .any(|m| m.mnt_id as i32 == mnt_id)
        {
            return Ok(Err(format!(
                "{path} (deleted) is on a kernel-internal mount (memfd, shared memory, AIO...): \
                 not supported yet"
            )));
        }
        let allocated = meta.blocks() * 512;
        if allocated > limit {
            return Ok(Err(format!(
                "deleted file {path} holds {allocated} bytes, more than the ghost limit of \
                 {limit} bytes (raise it with --ghost-limit)"
            )));
        }
        let id = self.ghosts.len() as u32 + 1;
        let size = meta.size();
        let dev = libc::major(meta.dev()) << 20 | libc::minor(meta.dev());
        let entry = pb::GhostFileEntry {
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode(),
            dev: Some(dev),
            ino: Some(meta.ino()),
            rdev: None,
            atim: Some(pb::Timeval {
                tv_sec: meta.atime() as u64,
                tv_usec: (meta.atime_nsec() / 1000) as u64,
            }),
            mtim: Some(pb::Timeval {
                tv_sec: meta.mtime() as u64,
                tv_usec: (meta.mtime_nsec() / 1000) as u64,
            }),
            chunks: (size >= CHUNKS_FROM).then_some(true),
            size: (size >= CHUNKS_FROM).then_some(size),
            symlnk_target: None,
        };
        log::info!("ghost file {id}: {path}, {size} bytes ({allocated} allocated)");
        self.by_inode.insert((meta.dev(), meta.ino()), id);
        self.ghosts.push(Ghost {
            id,
            entry,
            contents,
        });
        Ok(Ok(id))
    }

    /// File entry `file_id` is the ghost `ghost_id`.
    pub fn remap(&mut self, file_id: u32, ghost_id: u32) {
        self.remaps.push(pb::RemapFilePathEntry {
            orig_id: file_id,
            remap_id: ghost_id,
            remap_type: Some(pb::RemapType::Ghost as i32),
        });
    }

    pub fn write_images(&self, dir: &ImageDir) -> Result<()> {
        if self.remaps.is_empty() {
            return Ok(());
        }
        dir.write_all(Kind::RemapFpath, "", &self.remaps)?;
        for g in &self.ghosts {
            let mut w = dir.create(Kind::GhostFile, Hex(g.id))?;
            w.write(&g.entry)?;
            let size = g.contents.metadata().map(|m| m.len()).unwrap_or(0);
            let read = |off: u64, len: u64| -> Result<Vec<u8>> {
                let mut buf = vec![0u8; len as usize];
                g.contents
                    .read_exact_at(&mut buf, off)
                    .map_err(|e| Error::io(format!("read ghost file {}", g.id), e))?;
                Ok(buf)
            };
            if g.entry.chunks == Some(true) {
                let size = g.entry.size.unwrap_or(size);
                for (start, end) in crate::sys::fd::data_ranges(&g.contents, size)? {
                    w.write(&pb::GhostChunkEntry {
                        len: end - start,
                        off: start,
                    })?;
                    w.write_raw(&read(start, end - start)?)?;
                }
            } else {
                w.write_raw(&read(0, size)?)?;
            }
            w.finish()?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Restore

/// A ghost created again: where, and whether its name is gone again.
struct Made {
    path: String,
    unlinked: bool,
}

/// remap-fpath.img, and the ghosts made so far. Dropping it unlinks the names of any ghost
/// still there (a restore that failed half-way).
pub struct GhostImages {
    dir: ImageDir,
    /// file id → ghost id
    remaps: HashMap<u32, u32>,
    made: RefCell<HashMap<u32, Made>>,
}

impl GhostImages {
    pub fn load(dir: &ImageDir) -> Result<GhostImages> {
        let entries: Vec<pb::RemapFilePathEntry> = dir.read_all_optional(Kind::RemapFpath, "")?;
        let mut remaps = HashMap::new();
        for e in entries {
            match e.remap_type.map(pb::RemapType::try_from) {
                Some(Ok(pb::RemapType::Ghost)) => {
                    remaps.insert(e.orig_id, e.remap_id);
                }
                other => {
                    return Err(Error::image(
                        dir.file(&Kind::RemapFpath.file_name("")),
                        format!(
                            "file {} is remapped as {other:?}: only ghost files are supported",
                            e.orig_id
                        ),
                    ))
                }
            }
        }
        Ok(GhostImages {
            dir: dir.clone(),
            remaps,
            made: RefCell::new(HashMap::new()),
        })
    }

    /// Where to open file `file_id` (named `name` in files.img): its ghost, created on first
    /// use; None for a file that is not a ghost.
    pub fn path_for(&self, file_id: u32, name: &str) -> Result<Option<String>> {
        let Some(&ghost) = self.remaps.get(&file_id) else {
            return Ok(None);
        };
        if let Some(m) = self.made.borrow().get(&ghost) {
            if m.unlinked {
                return Err(Error::InvalidOptions(format!(
                    "ghost file {ghost} ({name}) is needed after its name was removed"
                )));
            }
            return Ok(Some(m.path.clone()));
        }
        let path = self.create(ghost, name)?;
        self.made.borrow_mut().insert(
            ghost,
            Made {
                path: path.clone(),
                unlinked: false,
            },
        );
        Ok(Some(path))
    }

    fn create(&self, ghost: u32, name: &str) -> Result<String> {
        let mut r = self.dir.open(Kind::GhostFile, Hex(ghost))?;
        let e: pb::GhostFileEntry = r
            .read_entry()?
            .ok_or_else(|| Error::image(r.path().to_owned(), "no ghost_file_entry"))?;
        if e.mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Error::image(
                r.path().to_owned(),
                format!(
                    "ghost {name} of mode {:#o}: only regular files are supported",
                    e.mode
                ),
            ));
        }
        let (path, file) = create_file(name, ghost)?;
        if e.chunks == Some(true) {
            while let Some(c) = r.read_entry::<pb::GhostChunkEntry>()? {
                let bytes = r.read_raw(c.len as usize)?;
                file.write_all_at(&bytes, c.off)
                    .map_err(|err| Error::io(format!("write ghost {path}"), err))?;
            }
            if let Some(size) = e.size {
                file.set_len(size)
                    .map_err(|err| Error::io(format!("truncate ghost {path}"), err))?;
            }
        } else {
            let mut off = 0u64;
            loop {
                let bytes = r.read_raw_upto(1 << 20)?;
                if bytes.is_empty() {
                    break;
                }
                file.write_all_at(&bytes, off)
                    .map_err(|err| Error::io(format!("write ghost {path}"), err))?;
                off += bytes.len() as u64;
            }
        }
        let tv = |t: &Option<pb::Timeval>| {
            t.as_ref()
                .map(|t| (t.tv_sec as i64, (t.tv_usec * 1000) as i64))
                .unwrap_or((0, libc::UTIME_OMIT))
        };
        evfds::set_attrs(
            file.as_fd(),
            e.uid,
            e.gid,
            e.mode,
            Some([tv(&e.atim), tv(&e.mtim)]),
        )?;
        log::info!("ghost file {ghost} ({name}) made again as {path}");
        Ok(path)
    }

    /// Removes the names of every ghost made: each stays alive through what has it open.
    pub fn unlink_all(&self) {
        for (id, m) in self.made.borrow_mut().iter_mut() {
            if !m.unlinked {
                if let Err(e) = std::fs::remove_file(&m.path) {
                    log::warn!("ghost file {id}: cannot unlink {}: {e}", m.path);
                }
                m.unlinked = true;
            }
        }
    }
}

impl Drop for GhostImages {
    fn drop(&mut self) {
        self.unlink_all();
    }
}

/// A new file for ghost `ghost`: at `name` if nothing is there, else at CRIU's
/// `name.cr.ID.ghost` (replacing a leftover of an earlier restore).
fn create_file(name: &str, ghost: u32) -> Result<(String, File)> {
    let create = |p: &str| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(p)
    };
    if let Ok(f) = create(name) {
        return Ok((name.to_owned(), f));
    }
    let alt = format!("{name}.cr.{ghost:x}.ghost");
    let _ = std::fs::remove_file(&alt);
    let f = create(&alt).map_err(|e| {
        Error::io(
            format!("create the deleted file {name} again (as {alt})"),
            e,
        )
    })?;
    Ok((alt, f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::OwnedFd;

    /// A deleted file with a hole goes into the images in chunks and comes back with the same
    /// bytes, size, mode and owner; its name is removed again.
    #[test]
    fn ghost_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let imgs = tmp.path().join("img");
        std::fs::create_dir(&imgs).unwrap();
        let dir = ImageDir::new(&imgs);
        let path = tmp.path().join("victim");
        let mut f = File::create(&path).unwrap();
        f.write_all(b"head").unwrap();
        f.write_all_at(b"tail", 64 << 10).unwrap();
        std::fs::remove_file(&path).unwrap();
        let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f));

        let mut d = GhostDump::default();
        let name = path.to_str().unwrap();
        let me = std::process::id() as libc::pid_t;
        assert!(
            d.add(me, &link, name, 4096).unwrap().is_err(),
            "over the limit"
        );
        let id = d.add(me, &link, name, DEFAULT_LIMIT).unwrap().unwrap();
        assert_eq!(d.add(me, &link, name, DEFAULT_LIMIT).unwrap().unwrap(), id);
        d.remap(7, id);
        d.write_images(&dir).unwrap();

        let g = GhostImages::load(&dir).unwrap();
        assert_eq!(g.path_for(8, name).unwrap(), None);
        let at = g.path_for(7, name).unwrap().unwrap();
        assert_eq!(at, name, "made at its old path, which is free");
        let back = File::open(&at).unwrap();
        let mut buf = [0u8; 4];
        back.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"head");
        back.read_exact_at(&mut buf, 64 << 10).unwrap();
        assert_eq!(&buf, b"tail");
        assert_eq!(back.metadata().unwrap().len(), (64 << 10) + 4);
        g.unlink_all();
        assert!(!path.exists());
        let st = evfds::fstat(OwnedFd::from(back).as_fd()).unwrap();
        assert_eq!(st.st_nlink, 0, "still open, without a name");
    }
}
