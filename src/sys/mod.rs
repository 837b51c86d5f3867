//! The only place with `unsafe` and raw system calls: ptrace and syscall injection, remote memory,
//! pagemap scans, userfaultfd, clone3, pidfd_getfd, tee, sock_diag, socket options. Everything
//! above works with the safe wrappers here.

pub mod clone;
pub mod cpu;
pub mod eventfd;
pub mod evfds;
pub mod fd;
pub mod fork;
pub mod inet;
pub mod inject;
pub mod kcmp;
pub mod logfd;
pub mod mem;
pub mod mm;
pub mod pagemap;
pub mod pidfd;
pub mod pipe;
pub mod probe;
pub mod process;
pub mod ptrace;
pub mod sigframe;
pub mod signal;
pub mod sock;
pub mod sockmsg;
pub mod sockopt;
pub mod task;
pub mod tty;
pub mod uffd;
pub mod unix_diag;
