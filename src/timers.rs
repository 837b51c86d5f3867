//! Interval timers (setitimer) and POSIX timers (timer_create), with their remaining time.

use crate::error::Result;
use crate::pb;
use crate::procfs;
use crate::remote::Remote;

fn words(b: &[u8]) -> [u64; 4] {
    let w = |i: usize| u64::from_ne_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
    [w(0), w(1), w(2), w(3)]
}

fn itimer(remote: &Remote, which: i32) -> Result<pb::ItimerEntry> {
    remote.syscall(
        "getitimer",
        libc::SYS_getitimer,
        [which as u64, remote.addr(0), 0, 0, 0, 0],
    )?;
    let [isec, iusec, vsec, vusec] = words(&remote.read(0, 32)?);
    Ok(pb::ItimerEntry {
        isec,
        iusec,
        vsec,
        vusec,
    })
}

pub fn dump(remote: &Remote) -> Result<pb::TaskTimersEntry> {
    let mut posix = Vec::new();
    for t in procfs::posix_timers(remote.pid())? {
        remote.syscall(
            "timer_gettime",
            libc::SYS_timer_gettime,
            [t.id as u64, remote.addr(0), 0, 0, 0, 0],
        )?;
        let [isec, insec, vsec, vnsec] = words(&remote.read(0, 32)?);
        let overrun = remote.syscall(
            "timer_getoverrun",
            libc::SYS_timer_getoverrun,
            [t.id as u64, 0, 0, 0, 0, 0],
        )?;
        let notify = match t.notify.as_str() {
            "none" => libc::SIGEV_NONE,
            "thread" => libc::SIGEV_THREAD_ID,
            _ => libc::SIGEV_SIGNAL,
        };
        posix.push(pb::PosixTimerEntry {
            it_id: t.id as u32,
            clock_id: t.clock_id as u32,
            si_signo: t.signo as u32,
            it_sigev_notify: notify as u32,
            sival_ptr: t.sigval,
            overrun: overrun as u32,
            isec,
            insec,
            vsec,
            vnsec,
            notify_thread_id: (notify == libc::SIGEV_THREAD_ID).then_some(t.notify_tid),
        });
    }
    Ok(pb::TaskTimersEntry {
        real: itimer(remote, libc::ITIMER_REAL)?,
        virt: itimer(remote, libc::ITIMER_VIRTUAL)?,
        prof: itimer(remote, libc::ITIMER_PROF)?,
        posix,
    })
}
