//! The one error type of the engine. Every failure names what it was working on (pid, fd, file,
//! option) so that the message alone tells the user what went wrong.

use std::path::PathBuf;

use nix::errno::Errno;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed; `what` says which and on what.
    #[error("{what}: {errno}")]
    Sys { what: String, errno: Errno },

    /// A file or stream could not be read or written.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// The task holds something we cannot checkpoint (yet). The dump is abandoned and the task
    /// left running as it was.
    #[error("pid {pid}: cannot dump {resource}")]
    Unsupported { pid: i32, resource: String },

    /// Everything of the tree that cannot be checkpointed, found in one pass (each one an
    /// `Unsupported`), so that the user sees the whole list at once. The task is left running.
    #[error("{}", unsupported_list(.0))]
    UnsupportedAll(Vec<Error>),

    /// An option was given that this build parses but does not implement.
    #[error("option {0} is not supported yet")]
    OptionNotSupported(&'static str),

    /// Bad or inconsistent options.
    #[error("invalid options: {0}")]
    InvalidOptions(String),

    /// An image file is missing, corrupt, truncated or inconsistent with the others.
    #[error("image {}: {msg}", file.display())]
    Image { file: PathBuf, msg: String },

    /// A pid the restore needs is used by another process.
    #[error("pid {0} is already in use: cannot restore the task with that pid")]
    PidTaken(i32),

    /// A task vanished or changed state under us.
    #[error("pid {pid}: {msg}")]
    Task { pid: i32, msg: String },

    /// Malformed or unexpected RPC traffic.
    #[error("rpc: {0}")]
    Rpc(String),

    /// Page server traffic that breaks the protocol, or a peer that went away.
    #[error("page server: {0}")]
    PageServer(String),

    /// An RPC request whose options cannot be used (CRIU answers those with EBADRQC, which
    /// pycriu reports as "Bad options").
    #[error("bad request options: {0}")]
    BadRequest(String),

    /// The caller (a notify callback, a `more` callback) asked us to stop.
    #[error("aborted: {0}")]
    Aborted(String),
}

impl Error {
    pub fn sys(what: impl Into<String>, errno: Errno) -> Self {
        Error::Sys {
            what: what.into(),
            errno,
        }
    }

    /// `Error::sys` with the calling thread's current errno.
    pub fn last(what: impl Into<String>) -> Self {
        Error::sys(what, Errno::last())
    }

    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    pub fn image(file: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Image {
            file: file.into(),
            msg: msg.into(),
        }
    }

    pub fn task(pid: i32, msg: impl Into<String>) -> Self {
        Error::Task {
            pid,
            msg: msg.into(),
        }
    }

    pub fn unsupported(pid: i32, resource: impl Into<String>) -> Self {
        Error::Unsupported {
            pid,
            resource: resource.into(),
        }
    }

    /// The errno reported to RPC clients in `criu_resp.cr_errno` (libcriu hands it to the caller
    /// as errno when an operation returns -EBADE).
    pub fn errno(&self) -> i32 {
        match self {
            Error::Sys { errno, .. } => *errno as i32,
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::Unsupported { .. } | Error::UnsupportedAll(_) | Error::OptionNotSupported(_) => {
                libc::EOPNOTSUPP
            }
            Error::InvalidOptions(_) => libc::EINVAL,
            Error::Image { .. } => libc::EBADMSG,
            Error::PidTaken(_) => libc::EEXIST,
            Error::Task { .. } => libc::ESRCH,
            Error::Rpc(_) => libc::EBADMSG,
            Error::PageServer(_) => libc::ECOMM,
            Error::BadRequest(_) => libc::EBADRQC,
            Error::Aborted(_) => libc::ECANCELED,
        }
    }
}

fn unsupported_list(list: &[Error]) -> String {
    let mut out = format!("cannot dump {} resources of the tree:", list.len());
    for e in list {
        out.push_str("\n  ");
        out.push_str(&e.to_string());
    }
    out
}

impl Error {
    /// One error for a list of refusals: the refusal itself when there is only one.
    pub fn unsupported_all(mut list: Vec<Error>) -> Error {
        if list.len() == 1 {
            list.pop().expect("one")
        } else {
            Error::UnsupportedAll(list)
        }
    }
}

/// Adds "what were we doing" to `std::io::Result`s.
pub trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(what(), e))
    }
}

/// Adds "what were we doing" to `nix::Result`s.
pub trait SysContext<T> {
    fn sys(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> SysContext<T> for nix::Result<T> {
    fn sys(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::sys(what(), e))
    }
}
