//! timerfd: clock, settime flags, time left and interval, and expirations not yet read (fdinfo
//! "clockid", "settime flags", "it_value", "it_interval", "ticks").
//!
//! Restore arms a new timer with the time that was left (an absolute timer: now plus what was
//! left, on its own clock) and puts the unread expirations back with TFD_IOC_SET_TICKS. A
//! periodic timer that expired and was not read shows no time left (the kernel re-arms it only
//! at the next read): it is armed one interval ahead, so that it keeps ticking.

use std::os::fd::{AsFd, OwnedFd};

use crate::error::Result;
use crate::files::{self, TaskFd};
use crate::pb;
use crate::sys::evfds;

const NSEC: i64 = 1_000_000_000;

/// "(98, 993563992)" → (98, 993563992).
fn pair(v: &str) -> Option<(u64, u64)> {
    let (a, b) = v
        .trim()
        .strip_prefix('(')?
        .strip_suffix(')')?
        .split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

pub fn dump(fd: &TaskFd, id: u32) -> Result<pb::FileEntry> {
    let missing = |what: &str| fd.unsupported(format!("{}: no {what} in fdinfo", fd.link));
    let clockid = fd
        .field("clockid")
        .and_then(|v| v.parse::<u32>().ok())
        .ok_or_else(|| missing("clockid"))?;
    let ticks = fd
        .field("ticks")
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| missing("ticks"))?;
    let settime_flags = fd
        .field("settime flags")
        .and_then(|v| u32::from_str_radix(v, 8).ok())
        .ok_or_else(|| missing("settime flags"))?;
    let value = fd
        .field("it_value")
        .and_then(pair)
        .ok_or_else(|| missing("it_value"))?;
    let interval = fd
        .field("it_interval")
        .and_then(pair)
        .ok_or_else(|| missing("it_interval"))?;
    let copy = fd.copy()?;
    let fown = files::dump_fown(copy.as_fd())?;
    log::debug!(
        "pid {} fd {}: timerfd clock {clockid} left {value:?} interval {interval:?} ticks {ticks}",
        fd.pid,
        fd.fd
    );
    Ok(pb::FileEntry {
        r#type: pb::FdTypes::Timerfd as i32,
        id,
        tfd: Some(pb::TimerfdEntry {
            id,
            flags: fd.flags,
            fown,
            clockid,
            ticks,
            settime_flags,
            vsec: value.0,
            vnsec: value.1,
            isec: interval.0,
            insec: interval.1,
        }),
        ..Default::default()
    })
}

/// The value to arm a restored timer with: what was left, or one interval for a periodic
/// timer waiting to be read; an absolute timer's is moved onto its clock's present.
fn arm_value(e: &pb::TimerfdEntry) -> Result<(i64, i64)> {
    let mut v = (e.vsec as i64, e.vnsec as i64);
    if v == (0, 0) && (e.isec, e.insec) != (0, 0) {
        v = (e.isec as i64, e.insec as i64);
    }
    if v != (0, 0) && e.settime_flags & evfds::TFD_TIMER_ABSTIME != 0 {
        let now = evfds::clock_now(e.clockid as i32)?;
        v = (v.0 + now.0, v.1 + now.1);
        if v.1 >= NSEC {
            v = (v.0 + 1, v.1 - NSEC);
        }
    }
    Ok(v)
}

pub fn open(e: &pb::TimerfdEntry) -> Result<OwnedFd> {
    let fd = evfds::timerfd_create(e.clockid as i32)?;
    let value = arm_value(e)?;
    evfds::timerfd_settime(
        fd.as_fd(),
        e.settime_flags,
        value,
        (e.isec as i64, e.insec as i64),
    )?;
    if e.ticks != 0 {
        evfds::timerfd_set_ticks(fd.as_fd(), e.ticks)?;
    }
    files::restore_status_flags(fd.as_fd(), e.flags)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(v: (u64, u64), i: (u64, u64), flags: u32) -> pb::TimerfdEntry {
        pb::TimerfdEntry {
            id: 1,
            flags: 0,
            fown: pb::FownEntry::default(),
            clockid: libc::CLOCK_MONOTONIC as u32,
            ticks: 0,
            settime_flags: flags,
            vsec: v.0,
            vnsec: v.1,
            isec: i.0,
            insec: i.1,
        }
    }

    #[test]
    fn parses_fdinfo_pairs() {
        assert_eq!(pair(" (98, 993563992)"), Some((98, 993563992)));
        assert_eq!(pair("(0, 0)"), Some((0, 0)));
        assert_eq!(pair("98, 1"), None);
    }

    #[test]
    fn arm_values() {
        assert_eq!(arm_value(&entry((5, 7), (1, 0), 0)).unwrap(), (5, 7));
        // Expired, periodic, unread: one interval ahead.
        assert_eq!(arm_value(&entry((0, 0), (2, 5), 0)).unwrap(), (2, 5));
        // Disarmed stays disarmed.
        assert_eq!(arm_value(&entry((0, 0), (0, 0), 0)).unwrap(), (0, 0));
        // Absolute: on the clock's present.
        let now = evfds::clock_now(libc::CLOCK_MONOTONIC).unwrap();
        let v = arm_value(&entry((10, 999_999_999), (0, 0), evfds::TFD_TIMER_ABSTIME)).unwrap();
        assert!(v.0 >= now.0 + 10 && v.1 < NSEC);
    }
}
