//! Terminal ioctls for the dump and restore of ptys: the pty index and lock, packet mode,
//! termios, window size, the controlling terminal and its foreground process group.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::error::{Error, Result};

/// The number of control characters the kernel's termios carries (its NCCS; glibc's is 32).
pub const KERNEL_NCCS: usize = 19;

/// The terminal settings the images carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Termios {
    pub iflag: u32,
    pub oflag: u32,
    pub cflag: u32,
    pub lflag: u32,
    pub line: u32,
    pub ispeed: u32,
    pub ospeed: u32,
    pub cc: Vec<u32>,
}

fn ioctl_int_out(fd: BorrowedFd<'_>, req: libc::c_ulong, what: &str) -> Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    // SAFETY: the ioctl writes one int to the pointer we pass.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, &mut v as *mut libc::c_int) };
    if r < 0 {
        return Err(Error::last(what));
    }
    Ok(v)
}

fn ioctl_int_in(fd: BorrowedFd<'_>, req: libc::c_ulong, v: libc::c_int, what: &str) -> Result<()> {
    // SAFETY: the ioctl reads one int from the pointer we pass.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, &v as *const libc::c_int) };
    if r < 0 {
        return Err(Error::last(what));
    }
    Ok(())
}

/// TIOCGPTN: the N of /dev/pts/N behind a pty master.
pub fn pty_index(fd: BorrowedFd<'_>) -> Result<u32> {
    ioctl_int_out(fd, libc::TIOCGPTN as _, "ioctl(TIOCGPTN)").map(|n| n as u32)
}

/// TIOCGPTLCK: whether the slave of a pty master is locked (cannot be opened).
pub fn pty_locked(fd: BorrowedFd<'_>) -> Result<bool> {
    ioctl_int_out(fd, libc::TIOCGPTLCK as _, "ioctl(TIOCGPTLCK)").map(|v| v != 0)
}

/// TIOCSPTLCK on a pty master.
pub fn set_pty_locked(fd: BorrowedFd<'_>, locked: bool) -> Result<()> {
    ioctl_int_in(
        fd,
        libc::TIOCSPTLCK as _,
        locked as libc::c_int,
        "ioctl(TIOCSPTLCK)",
    )
}

/// TIOCGPKT: whether a pty master is in packet mode.
pub fn packet_mode(fd: BorrowedFd<'_>) -> Result<bool> {
    ioctl_int_out(fd, libc::TIOCGPKT as _, "ioctl(TIOCGPKT)").map(|v| v != 0)
}

/// TIOCPKT on a pty master.
pub fn set_packet_mode(fd: BorrowedFd<'_>, on: bool) -> Result<()> {
    ioctl_int_in(fd, libc::TIOCPKT as _, on as libc::c_int, "ioctl(TIOCPKT)")
}

/// TIOCGEXCL: whether the terminal is in exclusive mode (no further opens).
pub fn exclusive(fd: BorrowedFd<'_>) -> Result<bool> {
    ioctl_int_out(fd, libc::TIOCGEXCL as _, "ioctl(TIOCGEXCL)").map(|v| v != 0)
}

/// TIOCEXCL.
pub fn set_exclusive(fd: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: TIOCEXCL takes no argument.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCEXCL as _) };
    if r < 0 {
        return Err(Error::last("ioctl(TIOCEXCL)"));
    }
    Ok(())
}

/// FIONREAD: bytes waiting to be read on this side of the terminal.
pub fn queued(fd: BorrowedFd<'_>) -> Result<u32> {
    ioctl_int_out(fd, libc::FIONREAD as _, "ioctl(FIONREAD)").map(|n| n as u32)
}

/// The terminal's settings (through a pty master: its slave's).
pub fn termios(fd: BorrowedFd<'_>) -> Result<Termios> {
    // SAFETY: termios is plain data; tcgetattr fills it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr writes one termios to the pointer we pass.
    if unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) } < 0 {
        return Err(Error::last("tcgetattr"));
    }
    Ok(Termios {
        iflag: t.c_iflag,
        oflag: t.c_oflag,
        cflag: t.c_cflag,
        lflag: t.c_lflag,
        line: t.c_line as u32,
        ispeed: t.c_ispeed,
        ospeed: t.c_ospeed,
        cc: t.c_cc[..KERNEL_NCCS].iter().map(|&c| c as u32).collect(),
    })
}

/// Sets the terminal's settings at once (TCSANOW).
pub fn set_termios(fd: BorrowedFd<'_>, v: &Termios) -> Result<()> {
    // SAFETY: termios is plain data.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    t.c_iflag = v.iflag;
    t.c_oflag = v.oflag;
    t.c_cflag = v.cflag;
    t.c_lflag = v.lflag;
    t.c_line = v.line as libc::cc_t;
    t.c_ispeed = v.ispeed;
    t.c_ospeed = v.ospeed;
    for (dst, &src) in t.c_cc.iter_mut().zip(&v.cc) {
        *dst = src as libc::cc_t;
    }
    // SAFETY: tcsetattr reads one termios from the pointer we pass.
    if unsafe { libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &t) } < 0 {
        return Err(Error::last("tcsetattr"));
    }
    Ok(())
}

/// TIOCGWINSZ: (rows, cols, xpixel, ypixel).
pub fn winsize(fd: BorrowedFd<'_>) -> Result<[u16; 4]> {
    let mut w = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: the ioctl writes one winsize to the pointer we pass.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut w) } < 0 {
        return Err(Error::last("ioctl(TIOCGWINSZ)"));
    }
    Ok([w.ws_row, w.ws_col, w.ws_xpixel, w.ws_ypixel])
}

/// TIOCSWINSZ.
pub fn set_winsize(fd: BorrowedFd<'_>, v: [u16; 4]) -> Result<()> {
    let w = libc::winsize {
        ws_row: v[0],
        ws_col: v[1],
        ws_xpixel: v[2],
        ws_ypixel: v[3],
    };
    // SAFETY: the ioctl reads one winsize from the pointer we pass.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &w) } < 0 {
        return Err(Error::last("ioctl(TIOCSWINSZ)"));
    }
    Ok(())
}

/// TIOCSCTTY: makes the terminal the controlling terminal of our session (we lead it).
pub fn make_controlling(fd: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal from another session).
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0 as libc::c_int) } < 0 {
        return Err(Error::last("ioctl(TIOCSCTTY)"));
    }
    Ok(())
}

/// TIOCSPGRP: the terminal's foreground process group (a group of our session).
pub fn set_foreground(fd: BorrowedFd<'_>, pgrp: libc::pid_t) -> Result<()> {
    ioctl_int_in(fd, libc::TIOCSPGRP as _, pgrp, "ioctl(TIOCSPGRP)")
}

/// Opens /dev/ptmx and gives back the master of pty `index`. Indexes are handed out lowest
/// free first, so the masters that come below it are held until it comes, then closed.
/// Fails when `index` is taken (or a lower one was freed meanwhile, leaving a gap we do
/// not chase for ever).
pub fn open_master_at(index: u32, flags: i32) -> Result<OwnedFd> {
    let mut below: Vec<OwnedFd> = Vec::new();
    loop {
        // SAFETY: a NUL-terminated path; open returns a new fd or -1.
        let raw = unsafe {
            libc::open(
                c"/dev/ptmx".as_ptr(),
                flags | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(Error::last("open /dev/ptmx"));
        }
        // SAFETY: a new fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let got = pty_index(std::os::fd::AsFd::as_fd(&fd))?;
        if got == index {
            return Ok(fd);
        }
        if got > index || below.len() > 4096 {
            return Err(Error::InvalidOptions(format!(
                "pty {index} (/dev/pts/{index}) is in use: the restored pty needs that index"
            )));
        }
        below.push(fd);
    }
}
