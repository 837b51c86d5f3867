//! The engine's public Rust API: what `criu dump|pre-dump|restore|check` do, whichever front end
//! (command line, RPC, C library) asked for it.

use std::os::fd::BorrowedFd;

use crate::error::{Error, Result};
use crate::options::Options;

pub mod dump;
pub mod finalize;
pub mod iteration;
pub mod predump;
pub mod restore;
pub mod restore_task;

/// Receives CRIU's notifications ("pre-dump", "post-dump", "pre-restore", "post-restore",
/// "network-lock", ... in CRIU's order). Returning an error aborts the operation.
pub trait Notify {
    fn notify(&mut self, action: &str, pid: i32, fd: Option<BorrowedFd<'_>>) -> Result<()>;
}

/// A notifier that accepts everything (the command line without --action-script).
pub struct NoNotify;

impl Notify for NoNotify {
    fn notify(&mut self, _action: &str, _pid: i32, _fd: Option<BorrowedFd<'_>>) -> Result<()> {
        Ok(())
    }
}

/// Optional features a caller can ask about (`criu_feature_check`, `criu check --feature`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    pub mem_track: bool,
    pub lazy_pages: bool,
    pub pidfd_store: bool,
}

/// What a finished dump reports.
#[derive(Clone, Debug, Default)]
pub struct DumpOutcome {
    /// True in a process restored from a self-dump, when the dump call "returns again".
    pub restored: bool,
}

/// What a finished restore reports.
#[derive(Clone, Debug)]
pub struct RestoreOutcome {
    /// Pid of the restored tree's root, as the caller sees it.
    pub pid: i32,
}

fn reject_unsupported(opts: &Options) -> Result<()> {
    match opts.first_unsupported() {
        Some(name) => {
            log::error!("option --{name} is not supported yet");
            Err(Error::OptionNotSupported(name))
        }
        None => Ok(()),
    }
}

/// Checkpoints the tree rooted at `opts.pid` into `opts.images_dir`.
pub fn dump(opts: &Options, notify: &mut dyn Notify) -> Result<DumpOutcome> {
    reject_unsupported(opts)?;
    if opts.lazy_pages && opts.page_server.is_some() {
        return Err(Error::InvalidOptions(
            "dump --lazy-pages serves the lazy pages itself: give --port (and --address), not \
             --page-server"
                .into(),
        ));
    }
    if opts.lazy_pages && opts.lazy_listen.is_none() {
        // RPC and the library give no port for it yet.
        log::error!("dump --lazy-pages needs --port N to serve the pages on");
        return Err(Error::OptionNotSupported("lazy-pages"));
    }
    if opts.lazy_pages && opts.leave_running {
        return Err(Error::InvalidOptions(
            "dump --lazy-pages keeps the tree frozen until its memory was fetched, then kills \
             it: not with --leave-running"
                .into(),
        ));
    }
    dump::dump(opts, notify)
}

/// Writes memory images while the tree keeps running.
pub fn pre_dump(opts: &Options, notify: &mut dyn Notify) -> Result<()> {
    reject_unsupported(opts)?;
    predump::pre_dump(opts, notify)
}

/// `criu dedup`: frees the data of parent images that `opts.images_dir` holds again.
pub fn dedup(opts: &Options) -> Result<u64> {
    let dir = crate::images::ImageDir::new(&opts.images_dir);
    let mut freed = 0;
    for pid in crate::images::pages::pagemap_pids(&dir)? {
        freed += crate::images::pages::dedup(&dir, pid)?;
    }
    log::info!("dedup: {} KiB freed in the parent images", freed >> 10);
    Ok(freed)
}

/// `criu untrack`: ends the memory tracking of every task of the tree at `opts.pid`.
pub fn untrack(opts: &Options) -> Result<()> {
    let pid = opts
        .pid
        .ok_or_else(|| Error::InvalidOptions("no process to untrack: give -t PID".into()))?;
    predump::untrack(pid)
}

/// Rebuilds the tree stored in `opts.images_dir`.
pub fn restore(opts: &Options, notify: &mut dyn Notify) -> Result<RestoreOutcome> {
    reject_unsupported(opts)?;
    if opts.page_server.is_some() {
        // Restoring with pages fetched from a page server is lazy restore (not yet).
        log::error!("option --page-server is not supported by restore yet");
        return Err(Error::OptionNotSupported("page-server"));
    }
    restore::restore(opts, notify)
}

/// Which optional features this kernel and build provide. A feature counts only when the kernel
/// has the mechanism (`kerndat`) AND this build implements the code that uses it: callers skip
/// work on "no", so a "yes" we cannot honour would make them fail later instead.
pub fn features() -> Features {
    // What this build implements. Flip a field in the commit that lands the code using it.
    const IMPLEMENTED: Features = Features {
        mem_track: true,
        lazy_pages: true,
        pidfd_store: false,
    };
    let kernel = crate::kerndat::get();
    Features {
        mem_track: IMPLEMENTED.mem_track && kernel.has_mem_track(),
        lazy_pages: IMPLEMENTED.lazy_pages && kernel.has_lazy_pages(),
        pidfd_store: IMPLEMENTED.pidfd_store && kernel.has_pidfd_store(),
    }
}

/// Processes sharing a kernel object (an fd table, cwd/root/umask: the same `ids[i]`) are
/// restored by forking each with the sharing flag from its parent, so each group must hang
/// together from one of them down: exactly one member's parent (`parent[i]`, an index) is
/// outside it. Returns a member of a group that does not.
pub(crate) fn scattered_sharer(parent: &[Option<usize>], ids: &[u64]) -> Option<usize> {
    let mut tops: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    for (i, id) in ids.iter().enumerate() {
        let top = parent[i].is_none_or(|p| ids[p] != *id);
        *tops.entry(*id).or_default() += usize::from(top);
    }
    (0..ids.len()).find(|&i| tops[&ids[i]] != 1)
}
