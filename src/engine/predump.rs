//! `criu pre-dump`: memory only, while the tree keeps running. The tree is frozen just long
//! enough to list each task's mappings (and to give it a write tracker on the first
//! iteration); its write bits are read and reset by one PAGEMAP_SCAN per VMA, and the pages
//! copied with process_vm_readv, after the tree runs again.
//!
//! CRIU's two modes, splice (default) and read, are one here: CRIU's splice mode exists to
//! vmsplice pages into pipes while the task is frozen, because soft-dirty bits say nothing about
//! writes during the copy. The tracker does (a page written after the reset is reported by the
//! next iteration), so both modes copy after unfreezing, through the same 4 MiB chunks.

use std::time::Instant;

use libc::pid_t;

use crate::engine::dump::{write_stats, Timing};
use crate::engine::iteration::{in_leader, link_parent, remove_created, TaskTracking};
use crate::engine::Notify;
use crate::error::{Error, Result};
use crate::files::FileTable;
use crate::freeze::Frozen;
use crate::images::{ImageDir, Kind, IMG_VERSION};
use crate::mem::{self, Tracking};
use crate::options::{Options, PreDumpMode};
use crate::pb;
use crate::procfs;

/// One task's share of a pre-dump: its mappings, listed while the tree was frozen.
struct TaskVmas {
    pid: pid_t,
    /// Its pid in the images (see PidMap::image_pid).
    image_pid: pid_t,
    pages_id: u32,
    vmas: Vec<pb::VmaEntry>,
    registration: Vec<mem::Registration>,
}

pub fn pre_dump(opts: &Options, notify: &mut dyn Notify) -> Result<()> {
    let pid = opts
        .pid
        .ok_or_else(|| Error::InvalidOptions("no process to pre-dump: give -t PID".into()))?;
    if pid == std::process::id() as pid_t {
        return Err(Error::InvalidOptions(format!(
            "pid {pid} is the dumper itself"
        )));
    }
    let dir = ImageDir::new(&opts.images_dir);
    if !dir.path().is_dir() {
        return Err(Error::InvalidOptions(format!(
            "images directory {} does not exist",
            dir.path().display()
        )));
    }
    let _ = std::fs::remove_file(dir.file(&Kind::Inventory.file_name("")));
    let token = procfs::uptime_us()?;
    let parent = link_parent(&dir, opts.prev_images_dir.as_deref())?;
    notify.notify("pre-dump", pid, None)?;
    let mut sink = crate::engine::dump::page_sink(opts, &dir)?;

    let mut timing = Timing::default();
    let t0 = Instant::now();
    let timeout = std::time::Duration::from_secs(opts.timeout.unwrap_or(10) as u64);
    let mut frozen = Frozen::freeze_tree(pid, timeout)?;
    timing.freezing = t0.elapsed();
    if frozen
        .tasks
        .iter()
        .any(|t| t.pid == std::process::id() as pid_t)
    {
        return Err(Error::InvalidOptions(
            "the dumper is inside the tree it dumps".into(),
        ));
    }
    // Images name tasks as the dump will: by their pids in the tree's own pid namespace.
    let pids = crate::pidns::PidMap::for_dump(&frozen)?;
    let mut tracking: Vec<TaskTracking> = Vec::new();
    let listed = list_frozen(
        &mut frozen,
        &pids,
        parent.as_ref(),
        &mut tracking,
        &mut *sink,
    );
    let tasks = match listed {
        Ok(p) => p,
        Err(e) => {
            remove_created(&mut frozen.tasks, &mut tracking);
            return Err(e);
        }
    };
    let frozen_at = frozen.frozen_at;
    frozen.resume()?;
    timing.frozen = frozen_at.elapsed();
    log::info!("pre-dump of pid {pid}: tree frozen for {:?}", timing.frozen);

    // The tree runs again: scan (reading and resetting the write bits), then copy. A page
    // written after its bit was reset is the next iteration's; one written before is copied
    // after, so the copy holds its new content. Mappings changed since the listing are the
    // next iteration's too: a new one is not tracked yet, a moved one loses its tracking.
    let t0 = Instant::now();
    for t in tasks {
        let tt = tracking
            .iter()
            .find(|tt| tt.pid == t.pid)
            .expect("every listed task has its tracking");
        let tracker = tt.tracker.as_ref().expect("ensured");
        let scan = mem::scan_pages(
            t.pid,
            &t.vmas,
            Some(&Tracking {
                tracker,
                reset: true,
                live: true,
                registration: Some(&t.registration),
            }),
            tt.held.as_deref(),
        )?;
        log::debug!("pid {}: scanned", t.pid);
        let mut plan = mem::plan_pages(t.pid, &t.vmas, scan, None, tt.held.as_deref(), true)?;
        log::debug!("pid {}: planned", t.pid);
        plan.refine_pinning()?;
        sink.write_task(&mut plan, t.image_pid, t.pages_id, true)?;
        timing.stats.scanned += plan.stats.scanned;
        timing.stats.written += plan.stats.written;
        timing.stats.skipped_parent += plan.stats.skipped_parent;
        if opts.auto_dedup && parent.is_some() {
            crate::images::pages::dedup(&dir, t.image_pid)?;
        }
    }
    sink.finish()?;
    timing.memdump = t0.elapsed();
    timing.memwrite = timing.memdump;
    dir.write_one(
        Kind::Inventory,
        "",
        &pb::InventoryEntry {
            img_version: IMG_VERSION,
            fdinfo_per_id: Some(true),
            ns_per_id: Some(true),
            lsmtype: Some(pb::Lsmtype::NoLsm as i32),
            dump_uptime: Some(token),
            pre_dump_mode: Some(match opts.pre_dump_mode {
                PreDumpMode::Splice => 1,
                PreDumpMode::Read => 2,
            }),
            ..Default::default()
        },
    )?;
    // CRIU (and p.haul, which reads it) calls a pre-dump's stats "dump" too.
    write_stats(&dir, "dump", &timing, opts.display_stats)?;
    write_stats(&dir, "pre-dump", &timing, false)?;
    for tt in tracking.iter_mut() {
        if let Some(t) = tt.tracker.as_mut() {
            t.commit(token)?;
        }
    }
    notify.notify("post-dump", pid, None)?;
    log::info!(
        "pre-dump of pid {pid} finished: {} pages written, {} in the parent images",
        timing.stats.written,
        timing.stats.skipped_parent
    );
    Ok(())
}

/// Takes the memory trackers out of every task of the tree at `pid`.
pub fn untrack(pid: pid_t) -> Result<()> {
    let mut frozen = Frozen::freeze_tree(pid, std::time::Duration::from_secs(10))?;
    let inodes = crate::track::known_inodes();
    let mut closed = 0;
    for task in frozen.tasks.iter_mut() {
        let stat = procfs::stat(task.pid, None)?;
        crate::track::forget(task.pid, stat.start_time);
        if crate::track::fds_in_task(task.pid, &inodes).is_empty() {
            continue;
        }
        let maps = procfs::maps_quick(task.pid)?;
        closed += in_leader(task, &maps, |remote| {
            crate::track::close_all_in_task(remote, &inodes)
        })?;
    }
    frozen.resume()?;
    log::info!("untrack: {closed} tracker descriptors closed below pid {pid}");
    Ok(())
}

/// While the tree is frozen: each task's mappings and tracker (created, with a few injected
/// syscalls, where the task has none).
fn list_frozen(
    frozen: &mut Frozen,
    pids: &crate::pidns::PidMap,
    parent: Option<&crate::engine::iteration::ParentImages>,
    tracking: &mut Vec<TaskTracking>,
    sink: &mut dyn mem::PageSink,
) -> Result<Vec<TaskVmas>> {
    let mut tasks = Vec::new();
    for task in frozen.tasks.iter_mut() {
        let pid = task.pid;
        let stat = procfs::stat(pid, None)?;
        // Only the ranges and kinds of the mappings matter here: no smaps walk.
        let maps = procfs::maps_quick(pid)?;
        log::debug!("pid {pid}: maps read");
        let image_pid = pids.image_pid(pid)?;
        let mut tt = TaskTracking::find(pid, image_pid, stat.start_time, parent)?;
        if tt.held.is_some() && !sink.has_parent(image_pid)? {
            log::info!("pid {pid}: the destination holds no earlier pages: copying all memory");
            tt.held = None;
        }
        log::debug!("pid {pid}: tracker found");
        if tt.tracker.is_none() {
            // A lost tracker of ours goes first: it holds the registrations.
            let lost = crate::track::orphans_in_task(pid, &crate::track::known_inodes());
            in_leader(task, &maps, |remote| {
                if !lost.is_empty() {
                    let n = crate::track::close_all_in_task(remote, &lost)?;
                    log::info!("pid {pid}: {n} lost memory tracker(s) closed");
                }
                tt.ensure(remote)
            })?;
        }
        tracking.push(tt);
        let tt = tracking.last_mut().expect("just pushed");
        // Cleared before the bits are reset: a dumper killed from here on leaves a tracker
        // no later iteration trusts.
        tt.tracker.as_mut().expect("ensured").invalidate()?;
        log::debug!("pid {pid}: tracker ready");
        let mut shared = Vec::new();
        let vmas = mem::collect_vmas(
            pid,
            &maps,
            (0, 0),
            stat.start_stack,
            &mut FileTable::new(),
            &mut shared,
        )?;
        let registration = mem::register_listed(pid, tt.tracker.as_ref().expect("ensured"), &vmas)?;
        tasks.push(TaskVmas {
            pid,
            image_pid,
            pages_id: tasks.len() as u32 + 1,
            vmas,
            registration,
        });
    }
    Ok(tasks)
}
