//! The only place with `unsafe` and raw system calls: ptrace and syscall injection, remote memory,
//! pagemap scans, userfaultfd, clone3. Everything above works with the safe wrappers here.

pub mod fork;
pub mod logfd;
pub mod sock;
