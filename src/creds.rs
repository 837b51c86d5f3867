//! Credentials: uids, gids, groups, capability sets, securebits, no_new_privs; and rlimits.

use crate::error::Result;
use crate::pb;
use crate::procfs::Status;
use crate::remote::Remote;

pub const RLIM_NLIMITS: u32 = 16;

fn cap_words(v: u64) -> Vec<u32> {
    vec![v as u32, (v >> 32) as u32]
}

/// The credentials /proc shows; securebits (which it does not) are filled in by the caller.
pub fn from_status(st: &Status) -> pb::CredsEntry {
    pb::CredsEntry {
        uid: st.uids[0],
        euid: st.uids[1],
        suid: st.uids[2],
        fsuid: st.uids[3],
        gid: st.gids[0],
        egid: st.gids[1],
        sgid: st.gids[2],
        fsgid: st.gids[3],
        cap_inh: cap_words(st.cap_inh),
        cap_prm: cap_words(st.cap_prm),
        cap_eff: cap_words(st.cap_eff),
        cap_bnd: cap_words(st.cap_bnd),
        cap_amb: cap_words(st.cap_amb),
        secbits: 0,
        groups: st.groups.clone(),
        no_new_privs: Some(u32::from(st.no_new_privs)),
        ..Default::default()
    }
}

pub fn dump_rlimits(remote: &Remote) -> Result<pb::TaskRlimitsEntry> {
    let mut rlimits = Vec::new();
    for res in 0..RLIM_NLIMITS {
        remote.syscall(
            "prlimit64(get)",
            libc::SYS_prlimit64,
            [0, res as u64, 0, remote.addr(0), 0, 0],
        )?;
        let b = remote.read(0, 16)?;
        rlimits.push(pb::RlimitEntry {
            cur: u64::from_ne_bytes(b[0..8].try_into().unwrap()),
            max: u64::from_ne_bytes(b[8..16].try_into().unwrap()),
        });
    }
    Ok(pb::TaskRlimitsEntry { rlimits })
}
