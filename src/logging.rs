//! The log: CRIU's levels (0 msg, 1 error, 2 warn, 3 info, 4 debug) onto the `log` crate, written
//! to the log file or stderr. Each line carries the time since start and, with --log-pid, the pid.
//! Lines are written without taking any lock (`sys::logfd`): libcriu's helper processes are
//! forked from programs with other threads, which may have been logging at the time.

use std::fs::File;
use std::path::Path;
use std::time::Instant;

use log::{Level, LevelFilter, Log, Metadata, Record};
use once_cell::sync::OnceCell;

struct Logger {
    start: Instant,
    with_pid: bool,
}

static LOGGER: OnceCell<Logger> = OnceCell::new();

fn level_filter(criu_level: i32) -> LevelFilter {
    match criu_level {
        i32::MIN..=0 => LevelFilter::Off,
        1 => LevelFilter::Error,
        2 => LevelFilter::Warn,
        3 => LevelFilter::Info,
        _ => LevelFilter::Debug,
    }
}

/// Sends the log to `file` (None: stderr) at CRIU verbosity `level`. Later calls only change the
/// destination and level: the `log` crate takes one logger per process.
pub fn init(file: Option<&Path>, level: i32, with_pid: bool) -> std::io::Result<()> {
    let out = match file {
        Some(p) => Some(File::options().create(true).append(true).open(p)?.into()),
        None => None,
    };
    let logger = LOGGER.get_or_init(|| Logger {
        start: Instant::now(),
        with_pid,
    });
    crate::sys::logfd::redirect(out).map_err(std::io::Error::from)?;
    let _ = log::set_logger(logger);
    log::set_max_level(level_filter(level));
    Ok(())
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let t = self.start.elapsed();
        let tag = match r.level() {
            Level::Error => "Error: ",
            Level::Warn => "Warn: ",
            _ => "",
        };
        let line = if self.with_pid {
            format!(
                "({:3}.{:06}) {:5}: {tag}{}\n",
                t.as_secs(),
                t.subsec_micros(),
                std::process::id(),
                r.args()
            )
        } else {
            format!(
                "({:3}.{:06}) {tag}{}\n",
                t.as_secs(),
                t.subsec_micros(),
                r.args()
            )
        };
        crate::sys::logfd::write_line(line.as_bytes());
    }

    fn flush(&self) {}
}
