//! Signal state: handlers (per process), blocked masks and pending signals with their siginfo
//! (per thread, and the shared queue).

use crate::error::Result;
use crate::pb;
use crate::remote::Remote;
use crate::sys::ptrace::Tracee;

pub const SIGMAX: u32 = 64;
/// struct kernel_sigaction on x86-64: handler, flags, restorer, mask.
const KSIGACTION_SIZE: usize = 32;

/// The signals that have an action slot in the image (all but SIGKILL and SIGSTOP), in order.
pub fn action_signals() -> impl Iterator<Item = u32> {
    (1..=SIGMAX).filter(|&s| s != libc::SIGKILL as u32 && s != libc::SIGSTOP as u32)
}

pub fn dump_actions(remote: &Remote) -> Result<Vec<pb::SaEntry>> {
    let mut out = Vec::new();
    for sig in action_signals() {
        remote.syscall(
            "rt_sigaction(query)",
            libc::SYS_rt_sigaction,
            [sig as u64, 0, remote.addr(0), 8, 0, 0],
        )?;
        let b = remote.read(0, KSIGACTION_SIZE)?;
        let w = |i: usize| u64::from_ne_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
        out.push(pb::SaEntry {
            sigaction: w(0),
            flags: w(1),
            restorer: w(2),
            mask: w(3),
            compat_sigaction: None,
            mask_extended: None,
        });
    }
    Ok(out)
}

/// Pending signals of one thread (`shared`: of the whole process) with their siginfo.
pub fn dump_pending(t: &Tracee, shared: bool) -> Result<Option<pb::SignalQueueEntry>> {
    let infos = t.peek_siginfo(shared)?;
    if infos.is_empty() {
        return Ok(None);
    }
    Ok(Some(pb::SignalQueueEntry {
        signals: infos
            .into_iter()
            .map(|si| pb::SiginfoEntry {
                siginfo: si.to_vec(),
            })
            .collect(),
    }))
}

/// Restored-task side: install the handlers.
pub fn restore_actions(actions: &[pb::SaEntry]) -> Result<()> {
    for (sig, sa) in action_signals().zip(actions) {
        crate::sys::signal::set_action(sig, sa.sigaction, sa.flags, sa.restorer, sa.mask)?;
    }
    Ok(())
}

/// A saved siginfo as the kernel takes it back, or None for signals that cannot be queued
/// (SIGKILL, SIGSTOP, garbage).
pub fn queueable(si: &pb::SiginfoEntry) -> Option<(i32, [u8; 128])> {
    let mut info = [0u8; 128];
    let n = si.siginfo.len().min(128);
    info[..n].copy_from_slice(&si.siginfo[..n]);
    let signo = i32::from_ne_bytes(info[0..4].try_into().unwrap());
    if signo == libc::SIGKILL || signo == libc::SIGSTOP || signo <= 0 || signo > SIGMAX as i32 {
        return None;
    }
    Some((signo, info))
}

/// Restored-task side: queue the saved pending signals to ourselves (all signals are blocked
/// until the final mask is loaded, so nothing is delivered early).
pub fn restore_pending(
    pid: i32,
    tid: i32,
    queue: Option<&pb::SignalQueueEntry>,
    shared: bool,
) -> Result<()> {
    let Some(q) = queue else { return Ok(()) };
    for si in &q.signals {
        let Some((signo, info)) = queueable(si) else {
            continue;
        };
        crate::sys::signal::queue_to_self(
            pid,
            if shared { None } else { Some(tid) },
            signo,
            &info,
        )?;
    }
    Ok(())
}
