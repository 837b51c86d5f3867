//! What successive dump iterations (pre-dumps, then the dump) share: the link to the previous
//! iteration's images and each task's write tracker (track.rs).

use std::path::Path;

use libc::pid_t;

use crate::error::{Error, Result};
use crate::freeze::FrozenTask;
use crate::images::pages::{held_ranges, PARENT_LINK};
use crate::images::{ImageDir, Kind};
use crate::pb;
use crate::procfs::MapEntry;
use crate::remote::{Remote, Resume};
use crate::sys::inject::{find_syscall_insn, restart_adjusted, Injector};
use crate::track::Tracker;

/// The previous iteration's images.
pub struct ParentImages {
    pub dir: ImageDir,
    /// Their inventory's dump_uptime: what a tracker's write bits are relative to.
    pub token: u64,
}

/// Links `dir` to the previous iteration (`prev`, relative to `dir` as in CRIU) and opens it.
/// Images that cannot serve as a parent only cost a full copy: a warning, not an error.
pub fn link_parent(dir: &ImageDir, prev: Option<&Path>) -> Result<Option<ParentImages>> {
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
    let Some(pdir) = dir.parent() else {
        log::warn!(
            "parent images {} not found: dumping all memory",
            prev.display()
        );
        return Ok(None);
    };
    match pdir.read_one::<pb::InventoryEntry>(Kind::Inventory, "") {
        Ok(inv) => match inv.dump_uptime {
            Some(token) => Ok(Some(ParentImages { dir: pdir, token })),
            None => {
                log::warn!("parent images have no dump_uptime: dumping all memory");
                Ok(None)
            }
        },
        Err(e) => {
            log::warn!("parent images unusable ({e}): dumping all memory");
            Ok(None)
        }
    }
}

/// A task's tracker as found at the start of an iteration, and what the write bits it holds
/// can be trusted for.
pub struct TaskTracking {
    pub pid: pid_t,
    pub start_time: u64,
    pub tracker: Option<Tracker>,
    /// Created by this iteration (removed again should it fail).
    pub created: bool,
    /// The pages the parent images hold for the task, when the tracker's write bits are
    /// relative to exactly those images.
    pub held: Option<Vec<(u64, u64)>>,
}

impl TaskTracking {
    /// The tracker of task `pid` (a host pid), and the pages the parent images hold for it
    /// under `image_pid` (its pid in the images: in its own pid namespace, if the tree has one).
    pub fn find(
        pid: pid_t,
        image_pid: pid_t,
        start_time: u64,
        parent: Option<&ParentImages>,
    ) -> Result<Self> {
        let tracker = Tracker::find(pid, start_time)?;
        let held = match (&tracker, parent) {
            (Some(t), Some(p)) if t.token == Some(p.token) => {
                match held_ranges(&p.dir, image_pid) {
                    Ok(h) => h,
                    Err(e) => {
                        log::warn!("pid {pid}: parent images unreadable ({e}): copying all memory");
                        None
                    }
                }
            }
            (Some(_), Some(_)) => {
                log::info!("pid {pid}: write tracking is not relative to the parent images: copying all memory");
                None
            }
            _ => None,
        };
        Ok(TaskTracking {
            pid,
            start_time,
            tracker,
            created: false,
            held,
        })
    }

    /// Makes sure the task has a tracker (`remote` drives it).
    pub fn ensure(&mut self, remote: &Remote) -> Result<()> {
        if self.tracker.is_none() {
            self.tracker = Some(Tracker::create(remote, self.start_time)?);
            self.created = true;
        }
        Ok(())
    }
}

/// Runs `f` with syscalls injected into the task's leader, then puts the leader back as it was.
pub fn in_leader<T>(
    task: &mut FrozenTask,
    maps: &[MapEntry],
    f: impl FnOnce(&Remote) -> Result<T>,
) -> Result<T> {
    let pid = task.pid;
    let leader = task.leader();
    let vdso = maps
        .iter()
        .find(|m| m.name == "[vdso]")
        .map(|m| (m.start, m.end));
    let syscall_ip = find_syscall_insn(pid, &leader.regs, vdso)?;
    let xstate = leader.tracee.get_xstate()?;
    let resume = Resume {
        regs: restart_adjusted(&leader.regs),
        sigmask: leader.sigmask,
        xstate: &xstate,
    };
    let remote = match Remote::start(
        Injector::new(&leader.tracee, leader.regs, syscall_ip),
        pid,
        &resume,
    ) {
        Ok(r) => r,
        Err(e) => {
            leader.tracee.set_regs(&resume.regs)?;
            leader.tracee.set_sigmask(leader.sigmask)?;
            return Err(e);
        }
    };
    let out = f(&remote);
    leader.tracee.set_regs(&resume.regs)?;
    leader.tracee.set_sigmask(leader.sigmask)?;
    let deferred = remote.finish();
    leader.tracee.set_regs(&resume.regs)?;
    leader.tracee.set_sigmask(leader.sigmask)?;
    // Signals that came meanwhile go to the task when it is released.
    task.threads[0]
        .deferred
        .extend(deferred.as_deref().unwrap_or(&[]));
    deferred?;
    out
}

/// After a failed iteration: takes the trackers it created out of the tasks again.
pub fn remove_created(tasks: &mut [FrozenTask], tracking: &mut [TaskTracking]) {
    for tt in tracking.iter_mut().filter(|t| t.created) {
        let (Some(task), Some(tracker)) = (
            tasks.iter_mut().find(|t| t.pid == tt.pid),
            tt.tracker.take(),
        ) else {
            continue;
        };
        let Ok(maps) = crate::procfs::maps_quick(tt.pid) else {
            continue;
        };
        if let Err(e) = in_leader(task, &maps, |r| tracker.remove(r)) {
            log::warn!("pid {}: could not remove the memory tracker: {e}", tt.pid);
        }
    }
}
