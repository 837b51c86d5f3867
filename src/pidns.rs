//! Pid namespaces: a tree whose root is pid 1 of its own pid namespace (a container's init, or
//! a tree started under `unshare --pid --fork`).
//!
//! The images hold the pids as the tree sees them (its namespace's "virtual" pids, as CRIU
//! writes them); /proc and ptrace, in the engine, need the pids of our own namespace (the host
//! pids). `PidMap` is the one translation between the two, built from NSpid of
//! /proc/PID/status at dump and from what the restored tasks report at restore.

use std::collections::HashMap;

use libc::pid_t;

use crate::error::{Error, Result};
use crate::freeze::Frozen;
use crate::procfs;

/// `pid_ns_id` of the dumper's own pid namespace in the ids images (inventory `root_ids`).
pub const HOST_PID_NS_ID: u32 = 1;
/// `pid_ns_id` of the tree's own pid namespace, when its root is that namespace's init.
pub const TREE_PID_NS_ID: u32 = 2;

/// Host pid <-> namespace pid of every task and thread of the tree. Without a namespace of the
/// tree's own, both are the same and the map is empty.
#[derive(Clone, Debug, Default)]
pub struct PidMap {
    /// The root is init of a pid namespace of its own.
    pub own_ns: bool,
    to_ns: HashMap<pid_t, pid_t>,
    to_host: HashMap<pid_t, pid_t>,
}

/// How deep the pid namespace of the task is (1: the initial namespace), and its pid in the
/// innermost one, from NSpid (pids as seen from our /proc mount downwards).
fn ns_pids(pid: pid_t, tid: Option<pid_t>) -> Result<Vec<pid_t>> {
    let st = procfs::status(pid, tid)?;
    if st.ns_pids.is_empty() {
        return Err(Error::task(pid, "no NSpid in /proc/PID/status"));
    }
    Ok(st.ns_pids)
}

impl PidMap {
    /// The map of a frozen tree; refuses (by pid) a tree that is partly in another pid
    /// namespace, one with a nested pid namespace below its root, or a root inside a pid
    /// namespace that is not that namespace's init.
    pub fn for_dump(frozen: &Frozen) -> Result<PidMap> {
        let own_depth = ns_pids(std::process::id() as pid_t, None)?.len();
        let root = frozen.tasks[0].pid;
        let root_ns = ns_pids(root, None)?;
        let depth = root_ns.len();
        let mut map = PidMap {
            own_ns: depth > own_depth,
            ..Default::default()
        };
        if depth > own_depth + 1 {
            return Err(Error::unsupported(
                root,
                "a pid namespace nested in another one below ours",
            ));
        }
        if map.own_ns && root_ns[depth - 1] != 1 {
            return Err(Error::unsupported(
                root,
                format!(
                    "its pid namespace, where it is pid {} and not the init (pid 1)",
                    root_ns[depth - 1]
                ),
            ));
        }
        let ns_inode = |pid: pid_t| {
            std::fs::metadata(format!("/proc/{pid}/ns/pid"))
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                .ok()
        };
        let root_inode = ns_inode(root);
        let add = |pid: pid_t, tid: Option<pid_t>, map: &mut PidMap| -> Result<()> {
            let host = tid.unwrap_or(pid);
            let nspids = ns_pids(pid, tid)?;
            let other = nspids.len() != depth
                || (tid.is_none() && ns_inode(pid).is_some_and(|i| Some(i) != root_inode));
            if other {
                return Err(Error::unsupported(
                    host,
                    format!(
                        "a pid namespace other than its tree root's ({root}): a tree partly \
                         in another pid namespace is not supported"
                    ),
                ));
            }
            if map.own_ns {
                map.insert(host, nspids[depth - 1]);
            }
            Ok(())
        };
        for t in &frozen.tasks {
            add(t.pid, None, &mut map)?;
            for th in t.threads.iter().skip(1) {
                add(t.pid, Some(th.tracee.tid), &mut map)?;
            }
        }
        for z in &frozen.zombies {
            add(z.pid, None, &mut map)?;
        }
        Ok(map)
    }

    /// An empty map, for a restore (filled as the tasks report); `own_ns`: into a fresh pid
    /// namespace.
    pub fn new(own_ns: bool) -> PidMap {
        PidMap {
            own_ns,
            ..Default::default()
        }
    }

    pub fn insert(&mut self, host: pid_t, ns: pid_t) {
        self.to_ns.insert(host, ns);
        self.to_host.insert(ns, host);
    }

    /// The pid the tree sees for host pid `host`. A pid of no task of the tree (a session or
    /// group leader that is gone) has no name inside the namespace: an error naming `who`.
    pub fn ns(&self, who: pid_t, host: pid_t) -> Result<pid_t> {
        if !self.own_ns || host == 0 {
            return Ok(host);
        }
        self.to_ns.get(&host).copied().ok_or_else(|| {
            Error::unsupported(
                who,
                format!(
                    "a reference to pid {host}, which is no task of its pid namespace's tree \
                     (a session or group leader gone, or outside the namespace)"
                ),
            )
        })
    }

    /// The host pid of namespace pid `ns` (itself without a namespace of the tree's own).
    /// The pid the images name task `host` by: its pid in its own pid namespace when the tree
    /// has one, its host pid otherwise.
    pub fn image_pid(&self, host: pid_t) -> Result<pid_t> {
        if self.own_ns {
            self.ns(host, host)
        } else {
            Ok(host)
        }
    }

    pub fn host(&self, ns: pid_t) -> pid_t {
        self.to_host.get(&ns).copied().unwrap_or(ns)
    }

    /// Learns the threads of restored process `host` (their namespace tids from NSpid).
    pub fn add_threads(&mut self, host: pid_t) -> Result<()> {
        if !self.own_ns {
            return Ok(());
        }
        for tid in procfs::threads(host)? {
            let nspids = ns_pids(host, Some(tid))?;
            self.insert(tid, *nspids.last().expect("checked non-empty"));
        }
        Ok(())
    }
}

/// The host pid of the calling process, even inside a pid namespace of its own: /proc is our
/// namespace's mount, and its "self" link names us as that namespace sees us.
pub fn own_host_pid() -> Option<pid_t> {
    std::fs::read_link("/proc/self")
        .ok()?
        .to_str()?
        .parse()
        .ok()
}

/// Our thread `tid` (a pid of our namespace) as /proc names it: our /proc is the restorer's
/// namespace's, where the thread has another number.
pub fn own_thread_in_proc(tid: pid_t) -> pid_t {
    let Some(host) = own_host_pid() else {
        return tid;
    };
    procfs::threads(host)
        .unwrap_or_default()
        .into_iter()
        .find(|&t| ns_pids(host, Some(t)).is_ok_and(|p| p.last() == Some(&tid)))
        .unwrap_or(tid)
}
