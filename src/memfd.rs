//! memfd_create() files, as fds and as mappings. Each open file description is a MEMFD entry
//! of files.img (flags, offset, owner) naming its inode; each inode is one entry of memfd.img
//! (name, size, seals, owner, mode) whose contents are dumped like shared anonymous memory:
//! pagemap-shmem-SHMID.img with a pages file, SHMID being the inode number (memfds and shared
//! anonymous memory live on the same internal tmpfs, so the numbers never collide).
//!
//! Restore makes each inode once, in the restorer before the first fork: memfd_create with the
//! saved name, size and contents, then the seals (after the contents, which they may forbid to
//! write). Every file description and every mapping of it is a new open of that one file
//! through /proc/self/fd, so tasks writing through any of them see each other's writes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};

use crate::error::{Error, Result};
use crate::files::TaskFd;
use crate::images::pages::open_pages;
use crate::images::{ImageDir, Kind, PE_PRESENT};
use crate::mem::SharedObject;
use crate::pb;
use crate::sys::fd as sysfd;
use crate::sys::mem::PAGE_SIZE;

const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// "/memfd:NAME (deleted)" (a /proc link or a maps name) → NAME.
pub fn name_of(link: &str) -> Option<&str> {
    link.strip_prefix("/memfd:")?.strip_suffix(" (deleted)")
}

/// The memfd inodes met during a dump.
#[derive(Default)]
pub struct MemfdDump {
    /// Kernel inode number → index in `inodes`.
    by_ino: HashMap<u64, usize>,
    inodes: Vec<pb::MemfdInodeEntry>,
    /// Where each inode's contents are read from.
    contents: Vec<SharedObject>,
}

impl MemfdDump {
    /// Registers the memfd reached through `proc_link` (named `name`) and returns its inode id,
    /// or why it cannot be dumped.
    pub fn inode(
        &mut self,
        proc_link: &str,
        name: &str,
    ) -> Result<std::result::Result<u32, String>> {
        let file = File::open(proc_link).map_err(|e| Error::io(format!("open {proc_link}"), e))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io(format!("stat {proc_link}"), e))?;
        if let Some(&i) = self.by_ino.get(&meta.ino()) {
            return Ok(Ok(self.inodes[i].inode_id as u32));
        }
        if sysfd::fs_type(file.as_fd())? == HUGETLBFS_MAGIC {
            return Ok(Err(format!(
                "memfd:{name} is a hugetlb memfd (MFD_HUGETLB): not supported"
            )));
        }
        let Ok(id) = u32::try_from(meta.ino()) else {
            return Ok(Err(format!(
                "memfd:{name} has inode number {}, beyond what memfd.img can name",
                meta.ino()
            )));
        };
        let seals = sysfd::get_seals(file.as_fd())?;
        self.by_ino.insert(meta.ino(), self.inodes.len());
        self.inodes.push(pb::MemfdInodeEntry {
            name: name.to_owned(),
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.size(),
            shmid: id,
            seals,
            inode_id: id as u64,
            hugetlb_flag: None,
            mode: Some(meta.mode()),
        });
        self.contents.push(SharedObject {
            shmid: id as u64,
            size: meta.size(),
            source: proc_link.to_owned(),
        });
        Ok(Ok(id))
    }

    /// The inodes whose contents go into the images (with the shared anonymous memory).
    pub fn contents(&self) -> &[SharedObject] {
        &self.contents
    }

    /// memfd.img, when there is a memfd.
    pub fn write_images(&self, dir: &ImageDir) -> Result<()> {
        if self.inodes.is_empty() {
            return Ok(());
        }
        dir.write_all(Kind::MemfdInode, "", &self.inodes)
    }
}

/// The files.img entry of a memfd fd.
pub fn dump_fd(fd: &TaskFd, name: &str, id: u32, memfds: &mut MemfdDump) -> Result<pb::FileEntry> {
    let link = format!("/proc/{}/fd/{}", fd.pid, fd.fd);
    let inode_id = match memfds.inode(&link, name)? {
        Ok(i) => i,
        Err(why) => return Err(fd.unsupported(why)),
    };
    let own = fd.copy()?;
    Ok(file_entry(
        id,
        fd.flags,
        fd.info.pos,
        crate::files::dump_fown(own.as_fd())?,
        inode_id,
    ))
}

/// A files.img entry of type MEMFD.
pub fn file_entry(
    id: u32,
    flags: u32,
    pos: u64,
    fown: pb::FownEntry,
    inode_id: u32,
) -> pb::FileEntry {
    pb::FileEntry {
        r#type: pb::FdTypes::Memfd as i32,
        id,
        memfd: Some(pb::MemfdFileEntry {
            id,
            flags,
            pos,
            fown,
            inode_id,
        }),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Restore

/// memfd.img, and the inodes made from it so far.
pub struct MemfdImages {
    dir: ImageDir,
    inodes: HashMap<u32, pb::MemfdInodeEntry>,
    made: RefCell<HashMap<u32, OwnedFd>>,
    /// Seals added once every fd and mapping is made (`seal_late`): F_SEAL_FUTURE_WRITE, which
    /// the task's writable shared mappings predate, and F_SEAL_SEAL after it.
    late_seals: RefCell<Vec<(u32, u32)>>,
}

impl MemfdImages {
    pub fn load(dir: &ImageDir) -> Result<MemfdImages> {
        let entries: Vec<pb::MemfdInodeEntry> = dir.read_all_optional(Kind::MemfdInode, "")?;
        Ok(MemfdImages {
            dir: dir.clone(),
            inodes: entries
                .into_iter()
                .map(|e| (e.inode_id as u32, e))
                .collect(),
            made: RefCell::new(HashMap::new()),
            late_seals: RefCell::new(Vec::new()),
        })
    }

    /// A new open file description (`flags`: access mode and status flags) of memfd inode
    /// `inode_id`, made first if it is not yet.
    pub fn open(&self, inode_id: u32, flags: i32) -> Result<OwnedFd> {
        let mut made = self.made.borrow_mut();
        let fd = match made.entry(inode_id) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(self.make(inode_id)?),
        };
        let flags = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_CLOEXEC);
        crate::files::reopen(fd.as_fd(), flags)
    }

    /// The file description of a saved MEMFD entry: flags and offset.
    pub fn open_file(&self, f: &pb::MemfdFileEntry) -> Result<OwnedFd> {
        let fd = self.open(f.inode_id, f.flags as i32)?;
        nix::unistd::lseek(&fd, f.pos as i64, nix::unistd::Whence::SeekSet)
            .map_err(|e| Error::sys(format!("lseek memfd to {}", f.pos), e))?;
        Ok(fd)
    }

    fn make(&self, inode_id: u32) -> Result<OwnedFd> {
        let e = self.inodes.get(&inode_id).ok_or_else(|| {
            Error::image(
                self.dir.file("memfd.img"),
                format!("no memfd inode {inode_id}"),
            )
        })?;
        if e.hugetlb_flag.unwrap_or(0) != 0 {
            return Err(Error::InvalidOptions(format!(
                "memfd:{} is a hugetlb memfd: not supported",
                e.name
            )));
        }
        // Without MFD_ALLOW_SEALING a memfd has F_SEAL_SEAL and nothing else.
        let sealable = e.seals != libc::F_SEAL_SEAL as u32;
        let fd = sysfd::memfd_create(&e.name, if sealable { libc::MFD_ALLOW_SEALING } else { 0 })?;
        let file = File::from(fd);
        file.set_len(e.size)
            .map_err(|err| Error::io(format!("ftruncate memfd:{}", e.name), err))?;
        self.fill(&file, e)?;
        if let Some(mode) = e.mode {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
                .map_err(|err| Error::io(format!("chmod memfd:{}", e.name), err))?;
        }
        let meta = file
            .metadata()
            .map_err(|err| Error::io(format!("stat memfd:{}", e.name), err))?;
        if (meta.uid(), meta.gid()) != (e.uid, e.gid) {
            std::os::unix::fs::fchown(&file, Some(e.uid), Some(e.gid))
                .map_err(|err| Error::io(format!("chown memfd:{}", e.name), err))?;
        }
        let future_write = libc::F_SEAL_FUTURE_WRITE as u32;
        let late = if e.seals & future_write != 0 {
            e.seals & (future_write | libc::F_SEAL_SEAL as u32)
        } else {
            0
        };
        if sealable && e.seals & !late != 0 {
            sysfd::add_seals(file.as_fd(), e.seals & !late)?;
        }
        if late != 0 {
            self.late_seals.borrow_mut().push((inode_id, late));
        }
        Ok(OwnedFd::from(file))
    }

    /// Adds the seals that wait for every fd and mapping to exist (see `late_seals`).
    pub fn seal_late(&self) -> Result<()> {
        let made = self.made.borrow();
        for (inode_id, seals) in self.late_seals.borrow_mut().drain(..) {
            if let Some(fd) = made.get(&inode_id) {
                sysfd::add_seals(fd.as_fd(), seals)?;
            }
        }
        Ok(())
    }

    /// Writes the saved contents (pagemap-shmem-SHMID.img) into the new memfd.
    fn fill(&self, file: &File, e: &pb::MemfdInodeEntry) -> Result<()> {
        let Some((entries, pages)) = open_pages(&self.dir, Kind::ShmemPagemap, e.shmid as u64)?
        else {
            return Err(Error::image(
                self.dir.file(&Kind::ShmemPagemap.file_name(e.shmid)),
                "missing",
            ));
        };
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0u64;
        for pe in &entries {
            let nr = pe.nr_pages.unwrap_or(pe.compat_nr_pages as u64);
            if pe.flags.unwrap_or(PE_PRESENT) & PE_PRESENT == 0 {
                continue;
            }
            let len = nr * PAGE_SIZE;
            if pe.vaddr + len > e.size.div_ceil(PAGE_SIZE) * PAGE_SIZE {
                return Err(Error::image(
                    self.dir.file(&Kind::ShmemPagemap.file_name(e.shmid)),
                    format!(
                        "pages at {:#x} beyond the memfd's size {}",
                        pe.vaddr, e.size
                    ),
                ));
            }
            let mut done = 0u64;
            while done < len {
                let n = ((len - done) as usize).min(buf.len());
                pages.read_exact_at(&mut buf[..n], off + done)?;
                // The last page may reach past the end of the file: only its size is written.
                let at = pe.vaddr + done;
                let keep = (e.size.saturating_sub(at) as usize).min(n);
                file.write_all_at(&buf[..keep], at)
                    .map_err(|err| Error::io(format!("fill memfd:{}", e.name), err))?;
                done += n as u64;
            }
            off += len;
        }
        Ok(())
    }
}
