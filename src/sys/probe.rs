//! One-shot questions to the kernel for `kerndat`: each probe makes a throwaway object (an fd, a
//! traced child, a scratch page), asks one thing, and releases everything before returning.
//! Probes answer `Ok` with what they saw, or the errno that says why the mechanism is missing.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// What a probe returns: the finding, or the errno that shows the mechanism is absent.
pub type Probed<T = ()> = Result<T, Errno>;

const PAGE_SIZE: usize = 4096;

fn check(ret: libc::c_long) -> Probed<libc::c_long> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

/// Takes ownership of a new fd returned by a raw syscall.
fn new_fd(ret: libc::c_long) -> Probed<OwnedFd> {
    let fd = check(ret)? as RawFd;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

// ---------------------------------------------------------------------------------------------
// ptrace

const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
const PTRACE_EVENT_STOP: libc::c_int = 128;

/// `struct ptrace_rseq_configuration` (linux/ptrace.h).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RseqConfig {
    pub rseq_abi_pointer: u64,
    pub rseq_abi_size: u32,
    pub signature: u32,
    pub flags: u32,
    pad: u32,
}

/// `struct ptrace_peeksiginfo_args`.
#[repr(C)]
struct PeekSiginfoArgs {
    off: u64,
    flags: u32,
    nr: i32,
}

/// What the ptrace requests the engine needs did on a seized, interrupted child.
#[derive(Clone, Debug)]
pub struct PtraceFindings {
    pub getsigmask: Probed,
    pub peeksiginfo: Probed,
    /// The child's rseq registration as the kernel reports it (size 0 when libc registered none).
    pub rseq_config: Probed<RseqConfig>,
    pub syscall_info: Probed,
    pub suspend_seccomp: Probed,
    pub seccomp_get_filter: Probed,
}

fn ptrace_raw(
    req: libc::c_uint,
    pid: libc::pid_t,
    addr: usize,
    data: usize,
) -> Probed<libc::c_long> {
    // SAFETY: every caller passes either 0 or a pointer to a live buffer of the size the
    // request writes.
    check(unsafe { libc::ptrace(req, pid, addr, data) })
}

/// Forks a child that installs an allow-all seccomp filter and sleeps, seizes and interrupts it,
/// runs each ptrace request the engine relies on, then kills and reaps it.
/// `Err` means PTRACE_SEIZE/PTRACE_INTERRUPT themselves failed.
pub fn ptrace() -> Probed<PtraceFindings> {
    // The filter program must exist before fork: the child may only make raw syscalls.
    let filter = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: libc::SECCOMP_RET_ALLOW,
    }];
    let prog = libc::sock_fprog {
        len: 1,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // The child says "ready" on this pipe once its filter is in place.
    let (ready_rd, ready_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let ready_wr_raw = ready_wr.as_raw_fd();
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the child only makes async-signal-safe raw syscalls and never returns.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(Errno::last());
    }
    if child == 0 {
        // SAFETY: plain syscalls on this process; `prog` and the pipe outlive them (the child
        // never returns from this block).
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != parent {
                libc::_exit(0);
            }
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            );
            libc::write(ready_wr_raw, b"r".as_ptr().cast(), 1);
            loop {
                libc::pause();
            }
        }
    }
    drop(ready_wr);
    let mut byte = [0u8; 1];
    let findings = match nix::unistd::read(&ready_rd, &mut byte) {
        Ok(1) => trace_child(child),
        Ok(_) => Err(Errno::ECHILD),
        Err(e) => Err(e),
    };
    // SAFETY: `child` is our own child, not yet reaped.
    unsafe {
        libc::kill(child, libc::SIGKILL);
    }
    reap(child);
    findings
}

fn reap(pid: libc::pid_t) {
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child; `status` is a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if r == pid || (r < 0 && Errno::last() != Errno::EINTR) {
            return;
        }
    }
}

fn trace_child(pid: libc::pid_t) -> Probed<PtraceFindings> {
    ptrace_raw(libc::PTRACE_SEIZE, pid, 0, 0)?;
    ptrace_raw(libc::PTRACE_INTERRUPT, pid, 0, 0)?;
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out pointer.
    if unsafe { libc::waitpid(pid, &mut status, libc::__WALL) } != pid {
        return Err(Errno::last());
    }
    if !libc::WIFSTOPPED(status) || (status >> 16) != PTRACE_EVENT_STOP {
        // Seized but the interrupt did not produce the PTRACE_EVENT_STOP the engine waits for.
        return Err(Errno::EINVAL);
    }

    let mut mask: u64 = 0;
    let getsigmask = ptrace_raw(
        libc::PTRACE_GETSIGMASK,
        pid,
        std::mem::size_of::<u64>(),
        &mut mask as *mut u64 as usize,
    )
    .map(drop);

    let args = PeekSiginfoArgs {
        off: 0,
        flags: 0,
        nr: 1,
    };
    // SAFETY: siginfo_t is plain data; all-zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let peeksiginfo = ptrace_raw(
        libc::PTRACE_PEEKSIGINFO,
        pid,
        &args as *const PeekSiginfoArgs as usize,
        &mut info as *mut libc::siginfo_t as usize,
    )
    .map(drop);

    let mut rseq = RseqConfig::default();
    let rseq_config = ptrace_raw(
        libc::PTRACE_GET_RSEQ_CONFIGURATION,
        pid,
        std::mem::size_of::<RseqConfig>(),
        &mut rseq as *mut RseqConfig as usize,
    )
    .and_then(|len| {
        // A different length means a layout we do not know: treat it as absent.
        if len as usize == std::mem::size_of::<RseqConfig>() {
            Ok(rseq)
        } else {
            Err(Errno::EINVAL)
        }
    });

    let mut sc_info = [0u8; 128];
    let syscall_info = ptrace_raw(
        libc::PTRACE_GET_SYSCALL_INFO,
        pid,
        sc_info.len(),
        sc_info.as_mut_ptr() as usize,
    )
    .map(drop);

    let suspend_seccomp = ptrace_raw(
        libc::PTRACE_SETOPTIONS,
        pid,
        0,
        libc::PTRACE_O_SUSPEND_SECCOMP as usize,
    )
    .map(drop);

    // With a null buffer the request returns the filter's instruction count (1 here).
    let seccomp_get_filter = ptrace_raw(PTRACE_SECCOMP_GET_FILTER, pid, 0, 0).map(drop);

    Ok(PtraceFindings {
        getsigmask,
        peeksiginfo,
        rseq_config,
        syscall_info,
        suspend_seccomp,
        seccomp_get_filter,
    })
}

// ---------------------------------------------------------------------------------------------
// processes and memory

/// `struct clone_args` as of Linux 5.7 (88 bytes, with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Whether clone3() knows `set_tid`, without creating a task: a set_tid pointer with a zero
/// size is refused with EINVAL only by kernels that know the field (E2BIG before, ENOSYS without
/// clone3).
pub fn clone3_set_tid() -> Probed<bool> {
    let args = CloneArgs {
        set_tid: u64::MAX,
        ..Default::default()
    };
    // SAFETY: `args` is a valid clone_args of the size passed; the kernel rejects it before
    // creating anything.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        // Never expected; if a kernel ever accepted it, the copy must not run our code twice.
        // SAFETY: _exit has no preconditions.
        0 => unsafe { libc::_exit(0) },
        r if r > 0 => {
            reap(r as libc::pid_t);
            Err(Errno::EEXIST)
        }
        _ => match Errno::last() {
            Errno::EINVAL => Ok(true),
            Errno::ENOSYS | Errno::E2BIG => Ok(false),
            e => Err(e),
        },
    }
}

/// Whether the rseq syscall exists: an unregistration with no area fails with EINVAL (or
/// EPERM), never ENOSYS, on kernels that have it.
pub fn rseq_syscall() -> Probed {
    // SAFETY: a null rseq area with flags 0 registers nothing; the kernel only validates.
    let ret = unsafe { libc::syscall(libc::SYS_rseq, 0usize, 0u32, 0, 0u32) };
    match ret {
        r if r >= 0 => Ok(()),
        _ if Errno::last() == Errno::ENOSYS => Err(Errno::ENOSYS),
        _ => Ok(()),
    }
}

/// `prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE)`: the size of `struct prctl_mm_map` this kernel takes
/// with PR_SET_MM_MAP (104 on current kernels).
pub fn prctl_mm_map_size() -> Probed<u32> {
    let mut size: libc::c_uint = 0;
    // SAFETY: PR_SET_MM_MAP_SIZE writes one unsigned int to the pointer.
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_MM,
            libc::PR_SET_MM_MAP_SIZE,
            &mut size as *mut libc::c_uint,
            0,
            0,
        )
    };
    check(ret as libc::c_long)?;
    Ok(size)
}

/// process_vm_readv() of a buffer of our own: the call the dumper reads memory with.
pub fn process_vm_readv() -> Probed {
    use nix::sys::uio::RemoteIoVec;
    use std::io::IoSliceMut;

    let src: [u8; 64] = std::array::from_fn(|i| i as u8 ^ 0x5a);
    let mut dst = [0u8; 64];
    let remote = [RemoteIoVec {
        base: src.as_ptr() as usize,
        len: src.len(),
    }];
    let n = nix::sys::uio::process_vm_readv(
        nix::unistd::getpid(),
        &mut [IoSliceMut::new(&mut dst)],
        &remote,
    )?;
    if n == src.len() && dst == src {
        Ok(())
    } else {
        Err(Errno::EIO)
    }
}

/// `struct page_region` (linux/fs.h).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// `struct pm_scan_arg` (linux/fs.h).
#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: libc::c_ulong = (3 << 30)
    | ((std::mem::size_of::<PmScanArg>() as libc::c_ulong) << 16)
    | ((b'f' as libc::c_ulong) << 8)
    | 16;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_GUARD: u64 = 1 << 8;

/// Runs one PAGEMAP_SCAN ioctl over one page of our own stack. With `guard`, also asks for the
/// PAGE_IS_GUARD category (6.14+), which older kernels refuse with EINVAL.
pub fn pagemap_scan(guard: bool) -> Probed {
    let pagemap = File::open("/proc/self/pagemap").map_err(io_errno)?;
    let marker = 0u8;
    let start = (&marker as *const u8 as u64) & !(PAGE_SIZE as u64 - 1);
    let mut regions = [PageRegion::default(); 1];
    let mask = if guard {
        PAGE_IS_PRESENT | PAGE_IS_GUARD
    } else {
        PAGE_IS_PRESENT
    };
    let mut arg = PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        start,
        end: start + PAGE_SIZE as u64,
        vec: regions.as_mut_ptr() as u64,
        vec_len: regions.len() as u64,
        category_anyof_mask: mask,
        return_mask: mask,
        ..Default::default()
    };
    // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points at `regions` (vec_len entries).
    let ret = unsafe {
        libc::ioctl(
            pagemap.as_raw_fd(),
            PAGEMAP_SCAN,
            &mut arg as *mut PmScanArg,
        )
    };
    check(ret as libc::c_long).map(drop)
}

/// Soft-dirty tracking, tested as the kernel defines it: after writing "4" to clear_refs, a
/// page we then write must carry bit 55 in /proc/self/pagemap.
pub fn soft_dirty() -> Probed<bool> {
    // SAFETY: a private anonymous mapping of one page, unmapped below.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if page == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    let result = (|| {
        match File::options()
            .write(true)
            .open("/proc/self/clear_refs")
            .and_then(|mut f| f.write_all(b"4"))
        {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(false),
            Err(e) => return Err(io_errno(e)),
        }
        // SAFETY: `page` is a writable page we own.
        unsafe { std::ptr::write_volatile(page as *mut u8, 1) };
        let mut pagemap = File::open("/proc/self/pagemap").map_err(io_errno)?;
        let mut entry = [0u8; 8];
        pagemap
            .seek(SeekFrom::Start((page as u64 / PAGE_SIZE as u64) * 8))
            .and_then(|_| pagemap.read_exact(&mut entry))
            .map_err(io_errno)?;
        Ok(u64::from_ne_bytes(entry) & (1 << 55) != 0)
    })();
    // SAFETY: unmaps the page mapped above; nothing refers to it any more.
    unsafe { libc::munmap(page, PAGE_SIZE) };
    result
}

// ---------------------------------------------------------------------------------------------
// userfaultfd

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

const UFFD_API: u64 = 0xaa;
/// `_IOWR(0xAA, 0x3F, struct uffdio_api)`.
const UFFDIO_API: libc::c_ulong =
    (3 << 30) | ((std::mem::size_of::<UffdioApi>() as libc::c_ulong) << 16) | (0xaa << 8) | 0x3f;
/// `_IO(0xAA, 0x00)` on /dev/userfaultfd.
const USERFAULTFD_IOC_NEW: libc::c_ulong = 0xaa << 8;

/// Where a userfaultfd comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UffdSource {
    /// The userfaultfd() syscall.
    Syscall,
    /// `open("/dev/userfaultfd")` + USERFAULTFD_IOC_NEW.
    Device,
}

/// A new userfaultfd from `source`, before its UFFDIO_API handshake.
fn new_uffd(source: UffdSource) -> Probed<OwnedFd> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    match source {
        // SAFETY: userfaultfd takes only flags.
        UffdSource::Syscall => new_fd(unsafe { libc::syscall(libc::SYS_userfaultfd, flags) }),
        UffdSource::Device => {
            let dev = File::options()
                .read(true)
                .write(true)
                .open("/dev/userfaultfd")
                .map_err(io_errno)?;
            // SAFETY: USERFAULTFD_IOC_NEW takes the new fd's flags as its argument.
            new_fd(
                unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW, flags) } as libc::c_long,
            )
        }
    }
}

/// Opens a userfaultfd and returns the feature mask UFFDIO_API reports (all features this
/// kernel offers: the handshake asks for none).
pub fn uffd_features(source: UffdSource) -> Probed<u64> {
    let uffd = new_uffd(source)?;
    let mut api = UffdioApi {
        api: UFFD_API,
        ..Default::default()
    };
    // SAFETY: UFFDIO_API reads and writes one uffdio_api.
    let ret = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_API, &mut api as *mut UffdioApi) };
    check(ret as libc::c_long)?;
    Ok(api.features)
}

/// Whether PAGEMAP_SCAN reports a range of a write-tracked anonymous mapping that has no page
/// table at all as written, as it reports an empty page table entry. Kernels before the fix
/// "fs/proc/task_mmu: fix PAGEMAP_SCAN written state for PMD holes" (2026) skip such holes, so
/// memory that MADV_DONTNEED dropped with its page table (a whole THP, or 2 MiB under
/// page-table reclaim) reads as unwritten and unchanged. Asked on 2 MiB of a fresh mapping,
/// aligned so no other mapping shares its page table: it has none yet.
pub fn pagemap_scan_holes_written() -> Probed<bool> {
    use crate::sys::pagemap::{Pagemap, ScanQuery, PAGE_IS_WRITTEN, PM_SCAN_CHECK_WPASYNC};
    const TWO_MB: usize = 2 << 20;
    let uffd = new_uffd(UffdSource::Syscall).or_else(|_| new_uffd(UffdSource::Device))?;
    crate::sys::uffd::api(
        std::os::fd::AsFd::as_fd(&uffd),
        crate::sys::uffd::TRACKER_FEATURES,
    )
    .map_err(|_| Errno::EOPNOTSUPP)?;
    // SAFETY: a fresh private anonymous mapping nothing else refers to, unmapped below.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            2 * TWO_MB,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    let start = map as u64;
    let hole = (start + TWO_MB as u64 - 1) & !(TWO_MB as u64 - 1);
    let asked = crate::sys::uffd::register_wp(
        std::os::fd::AsFd::as_fd(&uffd),
        start,
        start + 2 * TWO_MB as u64,
    )
    .and_then(|()| {
        let mut written = Vec::new();
        Pagemap::open(std::process::id() as libc::pid_t)
            .map_err(|_| Errno::ENOENT)?
            .try_scan(
                hole,
                hole + TWO_MB as u64,
                ScanQuery {
                    flags: PM_SCAN_CHECK_WPASYNC,
                    mask: PAGE_IS_WRITTEN,
                    ret: PAGE_IS_WRITTEN,
                    ..Default::default()
                },
                &mut written,
            )?;
        Ok(!written.is_empty())
    });
    // SAFETY: the mapping made above; unmapping also ends its registration.
    unsafe { libc::munmap(map, 2 * TWO_MB) };
    asked
}

// ---------------------------------------------------------------------------------------------
// file descriptors

/// Availability of pidfd_open() and pidfd_getfd(), tried on ourselves.
pub fn pidfd() -> (Probed, Probed) {
    // SAFETY: pidfd_open takes a pid and flags.
    let pidfd = match new_fd(unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) }) {
        Ok(fd) => fd,
        Err(e) => return (Err(e), Err(e)),
    };
    // SAFETY: pidfd_getfd duplicates an fd of the process `pidfd` refers to (us).
    let copy = new_fd(unsafe {
        libc::syscall(
            libc::SYS_pidfd_getfd,
            pidfd.as_raw_fd(),
            pidfd.as_raw_fd(),
            0,
        )
    });
    (Ok(()), copy.map(drop))
}

/// `_IOW('T', 0, u64)`: sets a timerfd's expiration count on restore (CONFIG_CHECKPOINT_RESTORE).
const TFD_IOC_SET_TICKS: libc::c_ulong = (1 << 30) | (8 << 16) | ((b'T' as libc::c_ulong) << 8);

/// timerfd_create(), and whether TFD_IOC_SET_TICKS works on the new timer.
pub fn timerfd() -> (Probed, Probed) {
    // SAFETY: timerfd_create takes a clock id and flags.
    let tfd = match new_fd(unsafe {
        libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC) as libc::c_long
    }) {
        Ok(fd) => fd,
        Err(e) => return (Err(e), Err(e)),
    };
    let ticks: u64 = 1;
    // SAFETY: TFD_IOC_SET_TICKS reads one u64.
    let ret = unsafe { libc::ioctl(tfd.as_raw_fd(), TFD_IOC_SET_TICKS, &ticks as *const u64) };
    (Ok(()), check(ret as libc::c_long).map(drop))
}

const KCMP_EPOLL_TFD: libc::c_int = 7;

/// `struct kcmp_epoll_slot`.
#[repr(C)]
struct KcmpEpollSlot {
    efd: u32,
    tfd: u32,
    toff: u32,
}

/// epoll_create1(), and whether kcmp(KCMP_EPOLL_TFD) finds a registered target file (how a
/// dumper identifies epoll targets).
pub fn epoll() -> (Probed, Probed) {
    // SAFETY: epoll_create1 takes flags.
    let epfd = match new_fd(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) } as libc::c_long) {
        Ok(fd) => fd,
        Err(e) => return (Err(e), Err(e)),
    };
    let (rd, _wr) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => return (Ok(()), Err(e)),
    };
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: 0,
    };
    // SAFETY: both fds are open; `ev` is a valid epoll_event.
    let added = unsafe {
        libc::epoll_ctl(
            epfd.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            rd.as_raw_fd(),
            &mut ev,
        )
    };
    if added < 0 {
        return (Ok(()), Err(Errno::last()));
    }
    let slot = KcmpEpollSlot {
        efd: epfd.as_raw_fd() as u32,
        tfd: rd.as_raw_fd() as u32,
        toff: 0,
    };
    // SAFETY: kcmp reads one kcmp_epoll_slot from our memory.
    let ret = unsafe {
        let pid = libc::getpid();
        libc::syscall(
            libc::SYS_kcmp,
            pid,
            pid,
            KCMP_EPOLL_TFD,
            rd.as_raw_fd(),
            &slot as *const KcmpEpollSlot,
        )
    };
    // kcmp answers 0 when both sides are the same file.
    let kcmp = match check(ret) {
        Ok(0) => Ok(()),
        Ok(_) => Err(Errno::EINVAL),
        Err(e) => Err(e),
    };
    (Ok(()), kcmp)
}

/// memfd_create(), optionally with MFD_HUGETLB.
pub fn memfd(hugetlb: bool) -> Probed {
    let flags = libc::MFD_CLOEXEC | if hugetlb { libc::MFD_HUGETLB } else { 0 };
    // SAFETY: the name is a NUL-terminated string.
    new_fd(unsafe { libc::memfd_create(c"criu-probe".as_ptr(), flags) } as libc::c_long).map(drop)
}

/// `struct open_how`.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// openat2() of "/".
pub fn openat2() -> Probed {
    let how = OpenHow {
        flags: (libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: 0,
    };
    // SAFETY: the path is NUL-terminated and `how` is an open_how of the size passed.
    new_fd(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c"/".as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    })
    .map(drop)
}

// ---------------------------------------------------------------------------------------------
// vdso

const ARCH_MAP_VDSO_64: libc::c_int = 0x2003;

/// Whether `arch_prctl(ARCH_MAP_VDSO_64)` exists. Call it only when the process has a vdso: the
/// kernel then refuses with EEXIST before mapping anything, which proves the request is known.
pub fn arch_map_vdso() -> Probed<bool> {
    // SAFETY: with a vdso already mapped the kernel returns EEXIST and changes nothing.
    let ret = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_MAP_VDSO_64, 0usize) };
    match ret {
        r if r >= 0 => Ok(true),
        _ => match Errno::last() {
            Errno::EEXIST => Ok(true),
            Errno::EINVAL => Ok(false),
            e => Err(e),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// command line helpers

/// `--close FD`: closes an fd the caller left open in us, as CRIU does while parsing options.
pub fn close_inherited_fd(fd: RawFd) -> Probed {
    // SAFETY: the user asked for this descriptor to be closed before we use any; at this point
    // the process owns no fd objects besides stdio, which std tolerates being closed.
    check(unsafe { libc::close(fd) } as libc::c_long).map(drop)
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}
