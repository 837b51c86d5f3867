//! Terminals: tty-info.img (one entry per terminal end) and the tty file entries of files.img.
//!
//! A Unix98 pty is a master (an open of /dev/ptmx) and a slave /dev/pts/N, tied by the index
//! N. A pty whose master is in the dump is made again: the master is opened with the same
//! index (indexes are handed out lowest free first, see `sys::tty::open_master_at`), then its
//! slaves are opened by path; termios, window size and packet mode go on the master (through it,
//! on the pair). The session it controls gets it back as its controlling terminal (TIOCSCTTY in
//! the session leader, before it forks anyone) and the foreground process group with it
//! (TIOCSPGRP in that group's leader).
//!
//! Any other terminal — a pty slave whose master is outside the dump, a console, /dev/tty — is
//! the shell's: with --shell-job the restored task gets the restorer's terminal in its place.
//!
//! Bytes waiting in a pty's queues are not carried: a dump that would lose some is refused.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use libc::pid_t;

use crate::error::{Error, Result};
use crate::files::TaskFd;
use crate::images::{ImageDir, Kind};
use crate::pb;
use crate::procfs;
use crate::sys::tty as systty;

/// Majors of Unix98 pty slaves (/dev/pts/N): 256 indexes each.
const PTS_MAJORS: std::ops::RangeInclusive<u32> = 136..=143;
/// /dev/ptmx (and /dev/pts/ptmx).
const PTMX: (u32, u32) = (5, 2);
/// Marks the tty-info id of a pty master (the slave's id is its device number).
const MASTER_ID_BIT: u32 = 1 << 31;

fn major_minor(rdev: u64) -> (u32, u32) {
    (libc::major(rdev), libc::minor(rdev))
}

/// The index of the pty slave with this device number, if it is one.
fn pts_index(rdev: u64) -> Option<u32> {
    let (major, minor) = major_minor(rdev);
    PTS_MAJORS
        .contains(&major)
        .then(|| (major - PTS_MAJORS.start()) * 256 + minor)
}

fn pts_rdev(index: u32) -> u32 {
    libc::makedev(PTS_MAJORS.start() + index / 256, index % 256) as u32
}

/// tty_nr of /proc/PID/stat (the kernel's new_encode_dev) as major and minor.
fn decode_tty_nr(nr: i32) -> (u32, u32) {
    let nr = nr as u32;
    ((nr >> 8) & 0xfff, (nr & 0xff) | ((nr >> 12) & 0xfff00))
}

/// The terminals of a dump, gathered fd by fd.
#[derive(Default)]
pub struct TtyDump {
    infos: Vec<pb::TtyInfoEntry>,
    /// Indexes of the ptys whose master is in the dump.
    masters: BTreeSet<u32>,
    /// Pty slaves by index → the first (pid, fd) holding one, for the refusal when their
    /// master is not in the dump.
    slaves: BTreeMap<u32, (pid_t, i32)>,
    /// Controlling terminal (major, minor) → its session and foreground group, from the tasks.
    sessions: HashMap<(u32, u32), (pid_t, pid_t)>,
    /// --shell-job (the same for every task of a dump).
    shell_job: bool,
}

impl TtyDump {
    /// Notes the controlling terminal of task `pid`, its session and foreground group.
    pub fn note_task(&mut self, pid: pid_t) -> Result<()> {
        let st = procfs::stat(pid, None)?;
        if st.tty_nr != 0 {
            self.sessions
                .insert(decode_tty_nr(st.tty_nr), (st.sid, st.tpgid.max(0)));
        }
        Ok(())
    }

    /// Rewrites the sessions and foreground groups noted with `to` (our pids to the tree's,
    /// for a tree in a pid namespace of its own).
    pub fn map_pids(&mut self, to: &dyn Fn(pid_t) -> Result<pid_t>) -> Result<()> {
        for (sid, pgrp) in self.sessions.values_mut() {
            (*sid, *pgrp) = (to(*sid)?, to(*pgrp)?);
        }
        Ok(())
    }

    /// The file entry of a terminal fd; its tty-info entry the first time the terminal is
    /// seen. Refuses what would lose data or cannot be made again.
    pub fn dump(
        &mut self,
        fd: &TaskFd,
        id: u32,
        meta: &std::fs::Metadata,
        shell_job: bool,
    ) -> Result<pb::FileEntry> {
        self.shell_job = shell_job;
        let rdev = meta.rdev();
        let copy = fd.copy()?;
        let (info_id, index, is_master) = if major_minor(rdev) == PTMX {
            let index = systty::pty_index(copy.as_fd())?;
            (pts_rdev(index) | MASTER_ID_BIT, Some(index), true)
        } else if let Some(index) = pts_index(rdev) {
            (rdev as u32, Some(index), false)
        } else {
            if !self.shell_job {
                return Err(fd.unsupported(format!(
                    "terminal {}: use --shell-job to restore it on the restorer's terminal",
                    fd.link
                )));
            }
            (rdev as u32, None, false)
        };
        if let Some(index) = index {
            let queued = systty::queued(copy.as_fd())?;
            if queued != 0 {
                let side = if is_master {
                    "output of the pty's slave not read by its master"
                } else {
                    "input not read yet"
                };
                return Err(fd.unsupported(format!(
                    "{} (pty {index}): {queued} bytes of {side} (terminal buffers are not \
                     supported yet)",
                    fd.link
                )));
            }
            if is_master {
                self.masters.insert(index);
            } else {
                self.slaves.entry(index).or_insert((fd.pid, fd.fd));
            }
        }
        if !self.infos.iter().any(|i| i.id == info_id) {
            self.infos.push(info_entry(
                copy.as_fd(),
                info_id,
                rdev as u32,
                index,
                is_master,
            )?);
        }
        Ok(pb::FileEntry {
            r#type: pb::FdTypes::Tty as i32,
            id,
            tty: Some(pb::TtyFileEntry {
                id,
                tty_info_id: info_id,
                flags: fd.flags,
                fown: crate::files::dump_fown(copy.as_fd())?,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// Pty slaves whose master is not in the dump, unless --shell-job puts the restorer's
    /// terminal in their place.
    pub fn check(&self) -> Vec<Error> {
        if self.shell_job {
            return Vec::new();
        }
        self.slaves
            .iter()
            .filter(|(index, _)| !self.masters.contains(index))
            .map(|(index, &(pid, fd))| {
                Error::unsupported(
                    pid,
                    format!(
                        "fd {fd}: /dev/pts/{index}, a pty whose master is outside the dumped \
                         tree: use --shell-job to restore it on the restorer's terminal"
                    ),
                )
            })
            .collect()
    }

    /// tty-info.img, with the session and foreground group of each controlling terminal.
    pub fn write_images(&self, dir: &ImageDir) -> Result<()> {
        if self.infos.is_empty() {
            return Ok(());
        }
        let mut infos = self.infos.clone();
        for info in &mut infos {
            let dev = match &info.pty {
                Some(p) => major_minor(pts_rdev(p.index) as u64),
                None => major_minor(info.rdev as u64),
            };
            if let Some(&(sid, pgrp)) = self.sessions.get(&dev) {
                info.sid = sid as u32;
                info.pgrp = pgrp as u32;
            }
        }
        dir.write_all(Kind::TtyInfo, "", &infos)
    }
}

fn info_entry(
    fd: std::os::fd::BorrowedFd<'_>,
    id: u32,
    rdev: u32,
    index: Option<u32>,
    is_master: bool,
) -> Result<pb::TtyInfoEntry> {
    let mut e = pb::TtyInfoEntry {
        id,
        r#type: if index.is_some() {
            pb::TtyType::Pty
        } else {
            pb::TtyType::Console
        } as i32,
        rdev,
        pty: index.map(|index| pb::TtyPtyEntry { index }),
        ..Default::default()
    };
    if index.is_none() {
        return Ok(e);
    }
    // Through the master, termios and window size are the slave's: the pair's.
    let t = systty::termios(fd)?;
    e.termios = Some(pb::TermiosEntry {
        c_iflag: t.iflag,
        c_oflag: t.oflag,
        c_cflag: t.cflag,
        c_lflag: t.lflag,
        c_line: t.line,
        c_ispeed: t.ispeed,
        c_ospeed: t.ospeed,
        c_cc: t.cc,
    });
    let w = systty::winsize(fd)?;
    e.winsize = Some(pb::WinsizeEntry {
        ws_row: w[0].into(),
        ws_col: w[1].into(),
        ws_xpixel: w[2].into(),
        ws_ypixel: w[3].into(),
    });
    if is_master {
        e.locked = systty::pty_locked(fd)?;
        e.packet_mode = systty::packet_mode(fd)?;
    } else {
        e.exclusive = systty::exclusive(fd)?;
    }
    Ok(e)
}

// ---------------------------------------------------------------------------------------------
// Restore

/// What a tty file entry stands for at restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The master of pty N, made again with index N.
    Master(u32),
    /// A slave of pty N, whose master is made again too.
    Slave(u32),
    /// The shell's terminal (--shell-job): the restorer's goes in its place.
    Outside,
}

/// tty-info.img, by id.
#[derive(Default)]
pub struct TtyImages {
    infos: HashMap<u32, pb::TtyInfoEntry>,
    /// Indexes of the ptys whose master is in the images.
    masters: BTreeSet<u32>,
    /// --orphan-pts-master: pty index at dump → index of the new pty standing in for it.
    orphans: BTreeMap<u32, u32>,
}

impl TtyImages {
    pub fn load(dir: &ImageDir) -> Result<TtyImages> {
        let entries: Vec<pb::TtyInfoEntry> = dir.read_all_optional(Kind::TtyInfo, "")?;
        let masters = entries
            .iter()
            .filter(|e| e.id & MASTER_ID_BIT != 0)
            .filter_map(|e| e.pty.as_ref().map(|p| p.index))
            .collect();
        Ok(TtyImages {
            infos: entries.into_iter().map(|e| (e.id, e)).collect(),
            masters,
            orphans: BTreeMap::new(),
        })
    }

    /// --orphan-pts-master: a new pty (any index) for each pty whose slaves the tree had
    /// without its master, with the slave's termios and window size. Its slaves are opened in
    /// place of the old ones, the session it controlled gets it as controlling terminal, and
    /// the masters returned go to the caller (the "orphan-pts-master" notification). Keep them
    /// open until the slaves are.
    pub fn replace_orphans(&mut self) -> Result<Vec<OwnedFd>> {
        let mut masters = Vec::new();
        let orphaned: BTreeMap<u32, &pb::TtyInfoEntry> = self
            .infos
            .values()
            .filter(|i| i.id & MASTER_ID_BIT == 0)
            .filter_map(|i| i.pty.as_ref().map(|p| (p.index, i)))
            .filter(|(index, _)| !self.masters.contains(index))
            .collect();
        for (old, info) in orphaned {
            let master = crate::files::open_path("/dev/ptmx", libc::O_RDWR | libc::O_NOCTTY)?;
            let new = systty::pty_index(master.as_fd())?;
            restore_master(
                master.as_fd(),
                &pb::TtyInfoEntry {
                    locked: false,
                    ..info.clone()
                },
            )?;
            log::info!("pty {new} stands in for pty {old}, whose master was outside the tree");
            self.orphans.insert(old, new);
            masters.push(master);
        }
        Ok(masters)
    }

    fn info(&self, id: u32) -> Result<&pb::TtyInfoEntry> {
        self.infos
            .get(&id)
            .ok_or_else(|| Error::InvalidOptions(format!("tty-info.img has no terminal {id}")))
    }

    pub fn role(&self, file: &pb::TtyFileEntry) -> Result<Role> {
        let info = self.info(file.tty_info_id)?;
        Ok(match &info.pty {
            Some(p) if info.id & MASTER_ID_BIT != 0 => Role::Master(p.index),
            Some(p) if self.masters.contains(&p.index) => Role::Slave(p.index),
            Some(p) if self.orphans.contains_key(&p.index) => Role::Slave(self.orphans[&p.index]),
            _ => Role::Outside,
        })
    }

    /// Opens a pty end of the tree. Masters before their slaves: a master comes unlocked with
    /// its settings, so its slaves can be opened.
    pub fn open(&self, file: &pb::TtyFileEntry) -> Result<OwnedFd> {
        let flags = (file.flags as i32) & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC);
        match self.role(file)? {
            Role::Master(index) => {
                let info = self.info(file.tty_info_id)?;
                let fd = systty::open_master_at(index, flags)?;
                restore_master(fd.as_fd(), info)?;
                Ok(fd)
            }
            Role::Slave(index) => {
                let path = format!("/dev/pts/{index}");
                let fd = crate::files::open_path(&path, flags | libc::O_NOCTTY)?;
                // Exclusive mode keeps others out, not us (root): the tree's other slaves of
                // it still open.
                if self.info(file.tty_info_id)?.exclusive {
                    systty::set_exclusive(fd.as_fd())?;
                }
                Ok(fd)
            }
            Role::Outside => Err(Error::InvalidOptions(format!(
                "file {}: not a pty of the tree",
                file.id
            ))),
        }
    }

    /// The pty of the tree that session `sid` has as its controlling terminal, and the
    /// foreground process group it had.
    fn of_session(&self, sid: pid_t) -> Option<(u32, pid_t)> {
        self.infos.values().find_map(|i| match &i.pty {
            Some(p) if i.sid as pid_t == sid && sid != 0 => {
                let index = if self.masters.contains(&p.index) {
                    p.index
                } else {
                    *self.orphans.get(&p.index)?
                };
                Some((index, i.pgrp as pid_t))
            }
            _ => None,
        })
    }

    /// In a restored task, right after it made its session or process group and before it
    /// forks anyone: a session leader takes its pty back as controlling terminal (its
    /// children inherit it), and the leader of the foreground group of a pty makes its group
    /// the foreground again.
    pub fn take_back(&self, pid: pid_t, sid: pid_t, pgid: pid_t) -> Result<()> {
        let Some((index, fg)) = self.of_session(sid) else {
            return Ok(());
        };
        if pid != sid && !(fg == pid && pgid == pid) {
            return Ok(());
        }
        let path = format!("/dev/pts/{index}");
        let fd = crate::files::open_path(&path, libc::O_RDWR | libc::O_NOCTTY)?;
        if pid == sid {
            systty::make_controlling(fd.as_fd()).map_err(|e| {
                Error::InvalidOptions(format!("{path} as controlling terminal: {e}"))
            })?;
        }
        if fg == pid && pgid == pid {
            systty::set_foreground(fd.as_fd(), pid).map_err(|e| {
                Error::InvalidOptions(format!("{path}: foreground group {pid}: {e}"))
            })?;
        }
        Ok(())
    }
}

fn restore_master(fd: std::os::fd::BorrowedFd<'_>, info: &pb::TtyInfoEntry) -> Result<()> {
    // Unlocked so that the slaves can be opened; a master still locked at dump time had no
    // slave open (a slave cannot be opened while locked), so it is locked again at once.
    systty::set_pty_locked(fd, info.locked)?;
    if let Some(t) = &info.termios {
        systty::set_termios(
            fd,
            &systty::Termios {
                iflag: t.c_iflag,
                oflag: t.c_oflag,
                cflag: t.c_cflag,
                lflag: t.c_lflag,
                line: t.c_line,
                ispeed: t.c_ispeed,
                ospeed: t.c_ospeed,
                cc: t.c_cc.clone(),
            },
        )?;
    }
    if let Some(w) = &info.winsize {
        systty::set_winsize(
            fd,
            [
                w.ws_row as u16,
                w.ws_col as u16,
                w.ws_xpixel as u16,
                w.ws_ypixel as u16,
            ],
        )?;
    }
    if info.packet_mode {
        systty::set_packet_mode(fd, true)?;
    }
    Ok(())
}
