//! criu-rs: checkpoint/restore of Linux process trees with CRIU's images, command line, RPC and
//! `libcriu.so.2` C API.
//!
//! Layers, bottom up:
//! - `sys`: every raw syscall and `unsafe` block (ptrace, syscall injection, pagemap, uffd).
//! - `procfs`: typed readers of /proc.
//! - `images` + `pb`: CRIU's image files and protobuf messages.
//! - resource modules (`mem`, `files`, `signals`, ...): each dumps and restores one kind of state.
//! - `engine`: dump, pre-dump, restore, check, orchestrating the resources.
//! - front ends: `cli` (the `criu` command), `rpc` (swrk/service), `capi` (the C library).

pub mod error;
pub mod images;
pub mod options;
pub mod pb;
pub mod procfs;

pub mod capi;
pub mod cli;
pub mod creds;
pub mod engine;
pub mod eventfd;
pub mod eventpoll;
pub mod filelocks;
pub mod files;
pub mod freeze;
pub mod fsnotify;
pub mod ghost;
pub mod inet;
pub mod kerndat;
pub mod lazy;
pub mod logging;
pub mod mem;
pub mod memfd;
pub mod netlock;
pub mod pageserver;
pub mod pidfd;
pub mod pidns;
pub mod pipes;
pub mod regs;
pub mod remote;
pub mod rpc;
pub mod rpcsk;
pub mod signalfd;
pub mod signals;
pub mod sys;
pub mod timerfd;
pub mod timers;
pub mod track;
pub mod tty;
pub mod unix;

pub use error::{Error, Result};
pub use options::Options;

/// The CRIU release whose interfaces this build implements.
pub const VERSION_MAJOR: u32 = 4;
pub const VERSION_MINOR: u32 = 2;
pub const VERSION_SUBLEVEL: u32 = 0;
