/*
 * Workload for checkpoint/restore of "event" fds and special files: epoll, signalfd, timerfd,
 * inotify, fanotify, pidfd, deleted files (open and mapped), O_PATH fds, /proc files, file
 * locks (flock, POSIX, OFD, a read lease) and a packet-mode (O_DIRECT) pipe.
 *
 * It forks a child first (the process its pidfd refers to; it exits with the byte it reads
 * from a pipe), and has another child exit and be reaped (a pidfd of a dead process). Then it
 * sets everything up, writes "ready" (its pid) and "fds" (name and number of each fd) in its
 * directory, and idles until SIGUSR1. Then it checks every object from inside and exits 0, or
 * 100 + the number of the first failed check; "result" lists the failed checks by name.
 * Whoever sends SIGUSR1 sends SIGUSR2 first: the signalfd must find it.
 *
 * Run as: evfds DIR [nolocks]   ("nolocks": take no file locks, for dumps without
 * --file-locks)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/fanotify.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

#define GHOST_HEAD 5000
#define GHOST_TAIL_AT (64 << 10)
#define GHOST_MAP_LEN 8192
#define CHILD_EXIT 7

static volatile sig_atomic_t verify_now;
static void on_usr1(int sig) { (void)sig; verify_now = 1; }

static void die(const char *what)
{
	fprintf(stderr, "evfds setup: %s: %s\n", what, strerror(errno));
	exit(2);
}

static unsigned char pattern(int seed, size_t i) { return (unsigned char)(i * 7 + seed * 31 + (i >> 9)); }

static double now_mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double ts_secs(struct timespec t) { return t.tv_sec + t.tv_nsec / 1e9; }

static int pidfd_open(pid_t pid, unsigned flags) { return syscall(SYS_pidfd_open, pid, flags); }

/* The fds, by name. */
static int child_pipe, pidfd_child, pidfd_dead;
static pid_t child;
static int ep, ep_inner, ep_pipe[2], ep_ev_idle, ep_ev_inner, ep_moved;
static int sfd;
static int t_long, t_periodic, t_abs, t_fired;
static int ino, wd_dir, wd_file;
static int fan;
static int ghost, ghost_mapped_fd;
static unsigned char *ghost_map, *ghost_map_shared;
static int opath_dir, opath_link;
static int proc_status, proc_child_stat;
static int lk_flock, lk_posix, lk_ofd, lk_lease;
static int pkt[2];
static int take_locks = 1;
static double setup_time;

static FILE *fds_file;
static void note(const char *name, int fd) { fprintf(fds_file, "%s %d\n", name, fd); }

static void write_file(const char *name, const char *text)
{
	int f = open(name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (f < 0 || write(f, text, strlen(text)) != (ssize_t)strlen(text)) die(name);
	close(f);
}

static void setup(const char *dir)
{
	setsid();
	if (chdir(dir)) die("chdir");
	struct sigaction sa = { 0 };
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	setup_time = now_mono();

	/* A child in the tree, blocked until it reads its exit code; and a child that is gone. */
	int cp[2];
	if (pipe(cp)) die("pipe child");
	child = fork();
	if (child < 0) die("fork");
	if (child == 0) {
		unsigned char code = 1;
		close(cp[1]);
		if (read(cp[0], &code, 1) != 1) _exit(3);
		_exit(code);
	}
	close(cp[0]);
	child_pipe = cp[1];
	pidfd_child = pidfd_open(child, 0);
	pid_t gone = fork();
	if (gone == 0) _exit(0);
	pidfd_dead = pidfd_open(gone, O_NONBLOCK);
	waitpid(gone, NULL, 0);
	if (pidfd_child < 0 || pidfd_dead < 0) die("pidfd_open");

	/* epoll: a pipe with data (ready), an idle eventfd, the write end edge-triggered (ready),
	 * a nested epoll whose eventfd is ready, a watch whose fd was moved to another number,
	 * and the child's pidfd (not ready until it exits). */
	ep = epoll_create1(0);
	ep_inner = epoll_create1(EPOLL_CLOEXEC);
	if (pipe2(ep_pipe, O_NONBLOCK)) die("pipe ep");
	if (write(ep_pipe[1], "x", 1) != 1) die("write ep pipe");
	ep_ev_idle = eventfd(0, EFD_NONBLOCK);
	ep_ev_inner = eventfd(1, EFD_NONBLOCK);
	struct epoll_event ev;
	ev.events = EPOLLIN; ev.data.u64 = 0x1111;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, ep_pipe[0], &ev)) die("ep add pipe");
	ev.events = EPOLLIN; ev.data.u64 = 0x2222;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, ep_ev_idle, &ev)) die("ep add idle");
	ev.events = EPOLLOUT | EPOLLET; ev.data.u64 = 0x3333;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, ep_pipe[1], &ev)) die("ep add pipe w");
	ev.events = EPOLLIN; ev.data.u64 = 0x77;
	if (epoll_ctl(ep_inner, EPOLL_CTL_ADD, ep_ev_inner, &ev)) die("inner add");
	ev.events = EPOLLIN; ev.data.u64 = 0x4444;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, ep_inner, &ev)) die("ep add inner");
	int moved = eventfd(5, EFD_NONBLOCK);
	ev.events = EPOLLIN; ev.data.u64 = 0x5555;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, moved, &ev)) die("ep add moved");
	ep_moved = dup(moved);
	close(moved);
	ev.events = EPOLLIN; ev.data.u64 = 0x6666;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, pidfd_child, &ev)) die("ep add pidfd");

	/* signalfd on two blocked signals. */
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGUSR2);
	sigaddset(&mask, SIGRTMIN + 1);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	if (sfd < 0) die("signalfd");

	/* timerfds: a long one with an interval, a periodic one that fired and was never read,
	 * an absolute one an hour ahead, a one-shot that fired. */
	t_long = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	struct itimerspec its = { { 7, 500000000 }, { 60, 0 } };
	if (timerfd_settime(t_long, 0, &its, NULL)) die("t_long");
	t_periodic = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	struct itimerspec per = { { 0, 50000000 }, { 0, 50000000 } };
	if (timerfd_settime(t_periodic, 0, &per, NULL)) die("t_periodic");
	t_abs = timerfd_create(CLOCK_REALTIME, 0);
	struct itimerspec abs = { { 0, 0 }, { 0, 0 } };
	clock_gettime(CLOCK_REALTIME, &abs.it_value);
	abs.it_value.tv_sec += 3600;
	if (timerfd_settime(t_abs, TFD_TIMER_ABSTIME, &abs, NULL)) die("t_abs");
	t_fired = timerfd_create(CLOCK_BOOTTIME, TFD_NONBLOCK);
	struct itimerspec once = { { 0, 0 }, { 0, 1000000 } };
	if (timerfd_settime(t_fired, 0, &once, NULL)) die("t_fired");
	usleep(120000);

	/* inotify: a directory and a file, with a hole in the watch numbers. */
	mkdir("watched", 0755);
	write_file("wfile", "w");
	write_file("wgap", "g");
	ino = inotify_init1(IN_NONBLOCK);
	wd_dir = inotify_add_watch(ino, "watched", IN_CREATE);
	int gap = inotify_add_watch(ino, "wgap", IN_MODIFY);
	wd_file = inotify_add_watch(ino, "wfile", IN_MODIFY);
	if (wd_dir < 0 || gap < 0 || wd_file < 0) die("inotify_add_watch");
	inotify_rm_watch(ino, gap);
	char buf[4096];
	while (read(ino, buf, sizeof buf) > 0) /* the IN_IGNORED of the removed watch */
		;

	/* fanotify: an inode mark on a file. */
	write_file("fwatched", "f");
	fan = fanotify_init(FAN_CLASS_NOTIF | FAN_NONBLOCK | FAN_CLOEXEC, O_RDONLY);
	if (fan < 0) die("fanotify_init");
	if (fanotify_mark(fan, FAN_MARK_ADD, FAN_MODIFY | FAN_CLOSE_WRITE, AT_FDCWD, "fwatched"))
		die("fanotify_mark");

	/* A deleted file with a hole in it, open read-write, also mapped shared; and a deleted
	 * file only mapped. */
	ghost = open("ghost", O_RDWR | O_CREAT | O_TRUNC, 0640);
	if (ghost < 0) die("ghost");
	unsigned char *data = malloc(GHOST_HEAD);
	for (size_t i = 0; i < GHOST_HEAD; i++) data[i] = pattern(1, i);
	if (write(ghost, data, GHOST_HEAD) != GHOST_HEAD) die("write ghost");
	if (pwrite(ghost, "tail", 4, GHOST_TAIL_AT) != 4) die("write ghost tail");
	free(data);
	lseek(ghost, 100, SEEK_SET);
	ghost_map_shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, ghost, 0);
	if (ghost_map_shared == MAP_FAILED) die("mmap ghost");
	unlink("ghost");
	ghost_mapped_fd = open("ghostmap", O_RDWR | O_CREAT | O_TRUNC, 0600);
	data = malloc(GHOST_MAP_LEN);
	for (size_t i = 0; i < GHOST_MAP_LEN; i++) data[i] = pattern(2, i);
	if (write(ghost_mapped_fd, data, GHOST_MAP_LEN) != GHOST_MAP_LEN) die("write ghostmap");
	free(data);
	ghost_map = mmap(NULL, GHOST_MAP_LEN, PROT_READ, MAP_PRIVATE, ghost_mapped_fd, 0);
	if (ghost_map == MAP_FAILED) die("mmap ghostmap");
	close(ghost_mapped_fd);
	unlink("ghostmap");

	/* O_PATH fds: a directory and a symlink itself. */
	mkdir("opath", 0755);
	write_file("opath/inside", "in");
	unlink("link");
	if (symlink("opath/inside", "link")) die("symlink");
	opath_dir = open("opath", O_PATH | O_DIRECTORY);
	opath_link = open("link", O_PATH | O_NOFOLLOW);
	if (opath_dir < 0 || opath_link < 0) die("O_PATH");

	/* /proc files: our own status, read a little, and the child's stat. */
	proc_status = open("/proc/self/status", O_RDONLY);
	if (proc_status < 0 || read(proc_status, buf, 10) != 10) die("/proc/self/status");
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/stat", child);
	proc_child_stat = open(path, O_RDONLY | O_CLOEXEC);
	if (proc_child_stat < 0) die("child stat");

	/* File locks. */
	write_file("lock_flock", "0123456789");
	write_file("lock_posix", "0123456789012345678901234567890123456789");
	write_file("lock_ofd", "0123456789");
	write_file("lock_lease", "0123456789");
	lk_flock = open("lock_flock", O_RDWR);
	lk_posix = open("lock_posix", O_RDWR);
	lk_ofd = open("lock_ofd", O_RDONLY);
	lk_lease = open("lock_lease", O_RDONLY);
	if (take_locks) {
		if (flock(lk_flock, LOCK_EX | LOCK_NB)) die("flock");
		struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 10, .l_len = 20 };
		if (fcntl(lk_posix, F_SETLK, &fl)) die("F_SETLK");
		struct flock ofd = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0 };
		if (fcntl(lk_ofd, F_OFD_SETLK, &ofd)) die("F_OFD_SETLK");
		if (fcntl(lk_lease, F_SETLEASE, F_RDLCK)) die("F_SETLEASE");
	}

	/* A packet-mode pipe with three packets in it. */
	if (pipe2(pkt, O_DIRECT | O_NONBLOCK)) die("pipe2 O_DIRECT");
	if (write(pkt[1], "abc", 3) != 3 || write(pkt[1], "defgh", 5) != 5) die("write packets");
	char hundred[100];
	memset(hundred, 'z', sizeof hundred);
	if (write(pkt[1], hundred, 100) != 100) die("write packet 3");

	fds_file = fopen("fds.tmp", "w");
	note("ep", ep);
	note("ep_inner", ep_inner);
	note("ep_pipe_r", ep_pipe[0]);
	note("ep_moved", ep_moved);
	note("sfd", sfd);
	note("t_long", t_long);
	note("t_periodic", t_periodic);
	note("t_abs", t_abs);
	note("t_fired", t_fired);
	note("inotify", ino);
	note("wd_dir", wd_dir);
	note("wd_file", wd_file);
	note("fanotify", fan);
	note("pidfd_child", pidfd_child);
	note("pidfd_dead", pidfd_dead);
	note("child", child);
	note("ghost", ghost);
	note("opath_dir", opath_dir);
	note("opath_link", opath_link);
	note("proc_status", proc_status);
	note("lk_flock", lk_flock);
	note("lk_posix", lk_posix);
	note("lk_ofd", lk_ofd);
	note("lk_lease", lk_lease);
	note("pkt_r", pkt[0]);
	note("pkt_w", pkt[1]);
	fclose(fds_file);
	rename("fds.tmp", "fds");

	int r = open("ready.tmp", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	dprintf(r, "%d\n", getpid());
	close(r);
	rename("ready.tmp", "ready");
}

/* ----------------------------------------------------------------------------------------- */
/* Checks */

static char failed_names[4096];
static int first_failed = -1;

static void fail(int num, const char *name)
{
	if (first_failed < 0) first_failed = num;
	size_t l = strlen(failed_names);
	snprintf(failed_names + l, sizeof failed_names - l, "%d:%s (errno %d)\n", num, name, errno);
}

static int is_nonblock(int fd) { return (fcntl(fd, F_GETFL) & O_NONBLOCK) != 0; }
static int is_cloexec(int fd) { return (fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0; }

/* The data of every ready watch, sorted; returns how many. */
static int ready_set(int epfd, uint64_t *out, int max)
{
	struct epoll_event evs[16];
	int n = epoll_wait(epfd, evs, 16, 0);
	if (n < 0) return -1;
	for (int i = 0; i < n && i < max; i++) out[i] = evs[i].data.u64;
	for (int i = 0; i < n; i++)
		for (int j = i + 1; j < n; j++)
			if (out[j] < out[i]) { uint64_t t = out[i]; out[i] = out[j]; out[j] = t; }
	return n;
}

static int fdinfo_has(int fd, const char *line)
{
	char path[64], buf[4096];
	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
	int f = open(path, O_RDONLY);
	ssize_t n = read(f, buf, sizeof buf - 1);
	close(f);
	if (n <= 0) return 0;
	buf[n] = 0;
	return strstr(buf, line) != NULL;
}

static void check_epoll(void)
{
	uint64_t got[16];
	/* 1: exactly the watches that were ready, with their data. */
	int n = ready_set(ep, got, 16);
	if (n != 4 || got[0] != 0x1111 || got[1] != 0x3333 || got[2] != 0x4444 || got[3] != 0x5555)
		fail(1, "epoll_ready_set");
	/* 2: the idle eventfd becomes ready with its data. */
	uint64_t one = 1;
	if (write(ep_ev_idle, &one, 8) != 8) fail(2, "epoll_idle_write");
	n = ready_set(ep, got, 16);
	int seen = 0;
	for (int i = 0; i < n; i++) seen |= got[i] == 0x2222;
	if (!seen) fail(2, "epoll_idle_becomes_ready");
	/* 3: the watches are keyed by their fd numbers as before: MOD and DEL find them. */
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 0x9999 };
	if (epoll_ctl(ep, EPOLL_CTL_MOD, ep_ev_idle, &ev)) fail(3, "epoll_mod");
	if (epoll_ctl(ep, EPOLL_CTL_DEL, ep_pipe[0], NULL)) fail(3, "epoll_del");
	if (epoll_ctl(ep, EPOLL_CTL_ADD, ep_pipe[0], &ev)) fail(3, "epoll_add_again");
	/* 4: flags of the epolls. */
	if (is_cloexec(ep) || !is_cloexec(ep_inner)) fail(4, "epoll_cloexec");
	/* 5: the inner epoll still watches its eventfd. */
	n = ready_set(ep_inner, got, 16);
	if (n != 1 || got[0] != 0x77) fail(5, "epoll_inner");
}

static void check_signalfd(void)
{
	/* 6: the mask, as the kernel shows it, and the flags. */
	unsigned long long want = (1ULL << (SIGUSR2 - 1)) | (1ULL << (SIGRTMIN + 1 - 1));
	char line[64];
	snprintf(line, sizeof line, "sigmask:\t%016llx", want);
	if (!fdinfo_has(sfd, line) || !is_nonblock(sfd) || !is_cloexec(sfd)) fail(6, "signalfd_mask");
	/* 7: the SIGUSR2 sent to us after the restore, then a real-time one of the mask; then
	 * nothing. */
	struct signalfd_siginfo si;
	if (read(sfd, &si, sizeof si) != sizeof si || si.ssi_signo != SIGUSR2) fail(7, "signalfd_usr2");
	union sigval v = { .sival_int = 42 };
	sigqueue(getpid(), SIGRTMIN + 1, v);
	if (read(sfd, &si, sizeof si) != sizeof si || si.ssi_signo != (uint32_t)(SIGRTMIN + 1) ||
	    si.ssi_int != 42)
		fail(7, "signalfd_rt");
	if (read(sfd, &si, sizeof si) >= 0 || errno != EAGAIN) fail(7, "signalfd_empty");
}

static void check_timerfd(void)
{
	double elapsed = now_mono() - setup_time;
	struct itimerspec cur;
	/* 8: time left and interval: never more than at setup, and no less than what was left
	 * then minus the time spent since (the restore does not lose time, it may gain some). */
	timerfd_gettime(t_long, &cur);
	double left = ts_secs(cur.it_value);
	if (cur.it_interval.tv_sec != 7 || cur.it_interval.tv_nsec != 500000000 || left > 60.0 ||
	    left < 60.0 - elapsed - 0.5)
		fail(8, "timerfd_time_left");
	uint64_t ticks = 0;
	if (read(t_long, &ticks, 8) >= 0 || errno != EAGAIN) fail(8, "timerfd_long_not_expired");
	/* 9: the periodic timer: the expirations never read, and it keeps ticking. */
	if (read(t_periodic, &ticks, 8) != 8 || ticks < 1) fail(9, "timerfd_periodic_ticks");
	struct pollfd p = { .fd = t_periodic, .events = POLLIN };
	if (poll(&p, 1, 2000) != 1 || read(t_periodic, &ticks, 8) != 8 || ticks < 1)
		fail(9, "timerfd_periodic_keeps_ticking");
	timerfd_gettime(t_periodic, &cur);
	if (cur.it_interval.tv_nsec != 50000000) fail(9, "timerfd_periodic_interval");
	/* 10: the absolute timer, an hour ahead of setup, on the realtime clock. */
	timerfd_gettime(t_abs, &cur);
	left = ts_secs(cur.it_value);
	if (left > 3600.0 || left < 3600.0 - elapsed - 2.0 || is_nonblock(t_abs))
		fail(10, "timerfd_absolute");
	if (!fdinfo_has(t_abs, "clockid: 0") || !fdinfo_has(t_abs, "settime flags: 01"))
		fail(10, "timerfd_absolute_flags");
	/* 11: the one-shot that fired: its one expiration, then disarmed. */
	if (read(t_fired, &ticks, 8) != 8 || ticks != 1) fail(11, "timerfd_fired_tick");
	timerfd_gettime(t_fired, &cur);
	if (cur.it_value.tv_sec || cur.it_value.tv_nsec || !fdinfo_has(t_fired, "clockid: 7"))
		fail(11, "timerfd_fired_disarmed");
}

static void check_inotify(void)
{
	char buf[4096] __attribute__((aligned(8)));
	/* 12: a file created in the watched directory: an event with the directory's wd. */
	unlink("watched/new"); /* a restore after a run of the original finds it there */
	write_file("watched/new", "n");
	ssize_t n = read(ino, buf, sizeof buf);
	struct inotify_event *e = (struct inotify_event *)buf;
	if (n < (ssize_t)sizeof *e || e->wd != wd_dir || !(e->mask & IN_CREATE) || strcmp(e->name, "new"))
		fail(12, "inotify_dir_event");
	/* 13: the watched file modified: its own wd. */
	int f = open("wfile", O_WRONLY | O_APPEND);
	if (write(f, "x", 1) != 1) fail(13, "inotify_write");
	close(f);
	n = read(ino, buf, sizeof buf);
	if (n < (ssize_t)sizeof *e || e->wd != wd_file || !(e->mask & IN_MODIFY))
		fail(13, "inotify_file_event");
	/* 14: a new watch gets a fresh number, not one in use. */
	int wd = inotify_add_watch(ino, "opath", IN_CREATE);
	if (wd <= 0 || wd == wd_dir || wd == wd_file || !is_nonblock(ino)) fail(14, "inotify_new_watch");
}

static void check_fanotify(void)
{
	/* 15: a write to the marked file: an event whose fd is that file. */
	char buf[4096] __attribute__((aligned(8)));
	struct stat want, got;
	stat("fwatched", &want);
	int f = open("fwatched", O_WRONLY | O_APPEND);
	if (write(f, "y", 1) != 1) fail(15, "fanotify_write");
	close(f);
	ssize_t n = read(fan, buf, sizeof buf);
	struct fanotify_event_metadata *m = (struct fanotify_event_metadata *)buf;
	if (n < (ssize_t)sizeof *m || !(m->mask & (FAN_MODIFY | FAN_CLOSE_WRITE)) || m->fd < 0 ||
	    fstat(m->fd, &got) || got.st_ino != want.st_ino)
		fail(15, "fanotify_event");
	for (; n >= (ssize_t)sizeof *m && FAN_EVENT_OK(m, n); m = FAN_EVENT_NEXT(m, n))
		if (m->fd >= 0) close(m->fd);
}

static void check_pidfd(void)
{
	/* 16: the dead process's pidfd: readable, nothing to signal. */
	struct pollfd p = { .fd = pidfd_dead, .events = POLLIN };
	if (poll(&p, 1, 0) != 1 || !is_nonblock(pidfd_dead) ||
	    syscall(SYS_pidfd_send_signal, pidfd_dead, 0, NULL, 0) == 0 || errno != ESRCH)
		fail(16, "pidfd_dead");
	/* 17: the child's pidfd: not readable while it runs, readable (also through the epoll)
	 * once it exits, and waitid on it gives its exit status. */
	p.fd = pidfd_child;
	if (poll(&p, 1, 0) != 0 || syscall(SYS_pidfd_send_signal, pidfd_child, 0, NULL, 0) != 0)
		fail(17, "pidfd_child_running");
	unsigned char code = CHILD_EXIT;
	if (write(child_pipe, &code, 1) != 1) fail(17, "pidfd_child_release");
	if (poll(&p, 1, 5000) != 1) fail(17, "pidfd_child_exit");
	uint64_t got[16];
	int n = ready_set(ep, got, 16), seen = 0;
	for (int i = 0; i < n; i++) seen |= got[i] == 0x6666;
	if (!seen) fail(17, "pidfd_in_epoll");
	siginfo_t si = { 0 };
	if (waitid(P_PIDFD, pidfd_child, &si, WEXITED) || si.si_pid != child || si.si_status != CHILD_EXIT)
		fail(17, "pidfd_waitid");
}

static void check_ghosts(void)
{
	/* 18: the deleted file: no name, its size, contents, hole and offset; its link. */
	struct stat st;
	if (fstat(ghost, &st) || st.st_nlink != 0 || st.st_size != GHOST_TAIL_AT + 4 ||
	    (st.st_mode & 07777) != 0640)
		fail(18, "ghost_stat");
	unsigned char buf[GHOST_HEAD];
	if (pread(ghost, buf, GHOST_HEAD, 0) != GHOST_HEAD) fail(18, "ghost_read");
	for (size_t i = 0; i < GHOST_HEAD; i++)
		if (buf[i] != pattern(1, i)) { fail(18, "ghost_contents"); break; }
	char tail[4];
	if (pread(ghost, tail, 4, GHOST_TAIL_AT) != 4 || memcmp(tail, "tail", 4) ||
	    pread(ghost, tail, 4, GHOST_TAIL_AT - 8) != 4 || memcmp(tail, "\0\0\0\0", 4))
		fail(18, "ghost_tail_and_hole");
	if (lseek(ghost, 0, SEEK_CUR) != 100) fail(18, "ghost_offset");
	char path[64], link[4096];
	snprintf(path, sizeof path, "/proc/self/fd/%d", ghost);
	ssize_t n = readlink(path, link, sizeof link - 1);
	link[n > 0 ? n : 0] = 0;
	if (n <= 0 || !strstr(link, "/ghost (deleted)")) fail(18, "ghost_link");
	/* 19: the shared mapping is the same file as the fd: a write through one shows in the
	 * other. */
	if (memcmp(ghost_map_shared, buf, 4096)) fail(19, "ghost_map_shared_contents");
	if (pwrite(ghost, "NEW", 3, 0) != 3 || memcmp(ghost_map_shared, "NEW", 3)) fail(19, "ghost_map_is_the_file");
	/* 20: the file that was only mapped. */
	for (size_t i = 0; i < GHOST_MAP_LEN; i++)
		if (ghost_map[i] != pattern(2, i)) { fail(20, "ghost_mapped_only"); break; }
	/* 21: no ghost left a name behind. */
	if (access("ghost", F_OK) == 0 || access("ghostmap", F_OK) == 0) fail(21, "ghost_names_gone");
}

static void check_opath_proc(void)
{
	/* 22: O_PATH fds: still O_PATH; the directory's inode, usable with openat; the symlink
	 * itself. */
	struct stat a, b;
	if (!(fcntl(opath_dir, F_GETFL) & O_PATH) || fstat(opath_dir, &a) || stat("opath", &b) ||
	    a.st_ino != b.st_ino)
		fail(22, "opath_dir");
	int in = openat(opath_dir, "inside", O_RDONLY);
	char buf[8192];
	if (in < 0 || read(in, buf, 2) != 2 || memcmp(buf, "in", 2)) fail(22, "opath_openat");
	if (in >= 0) close(in);
	ssize_t n = readlinkat(opath_link, "", buf, sizeof buf);
	if (!(fcntl(opath_link, F_GETFL) & O_PATH) || n != 12 || memcmp(buf, "opath/inside", 12))
		fail(22, "opath_symlink");
	/* 23: /proc/self/status is ours, with its offset. */
	if (lseek(proc_status, 0, SEEK_CUR) != 10) fail(23, "proc_offset");
	n = pread(proc_status, buf, sizeof buf - 1, 0);
	buf[n > 0 ? n : 0] = 0;
	char want[64];
	snprintf(want, sizeof want, "\nPid:\t%d\n", getpid());
	if (n <= 0 || !strstr(buf, want)) fail(23, "proc_self_status");
	/* 24: the child's stat, opened by pid. */
	n = pread(proc_child_stat, buf, sizeof buf - 1, 0);
	buf[n > 0 ? n : 0] = 0;
	snprintf(want, sizeof want, "%d (", child);
	if (n <= 0 || strncmp(buf, want, strlen(want)) || !is_cloexec(proc_child_stat))
		fail(24, "proc_child_stat");
}

/* In a child: a conflicting lock attempt on each locked file; exits with a bit per lock not
 * seen held. */
static int locks_seen_from_outside(pid_t owner)
{
	pid_t c = fork();
	if (c == 0) {
		int bad = 0;
		int f = open("lock_flock", O_RDWR);
		if (flock(f, LOCK_EX | LOCK_NB) == 0 || errno != EWOULDBLOCK) bad |= 1;
		f = open("lock_posix", O_RDWR);
		struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0 };
		if (fcntl(f, F_GETLK, &fl) || fl.l_type != F_WRLCK || fl.l_pid != owner || fl.l_start != 10 ||
		    fl.l_len != 20)
			bad |= 2;
		struct flock free_range = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 30, .l_len = 5 };
		if (fcntl(f, F_GETLK, &free_range) || free_range.l_type != F_UNLCK) bad |= 2;
		f = open("lock_ofd", O_RDWR);
		struct flock o = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0 };
		if (fcntl(f, F_OFD_GETLK, &o) || o.l_type != F_RDLCK || o.l_pid != -1) bad |= 4;
		_exit(bad);
	}
	int st = 0;
	waitpid(c, &st, 0);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 255;
}

static void check_locks(void)
{
	if (!take_locks) return;
	/* 25: each lock is held, as another process sees it. */
	int bad = locks_seen_from_outside(getpid());
	if (bad & 1) fail(25, "lock_flock_held");
	if (bad & 2) fail(25, "lock_posix_held");
	if (bad & 4) fail(25, "lock_ofd_held");
	/* 26: and they are ours: the POSIX lock can be changed by us, the flock downgraded. */
	struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 10, .l_len = 20 };
	if (fcntl(lk_posix, F_SETLK, &fl)) fail(26, "lock_posix_ours");
	if (flock(lk_flock, LOCK_SH | LOCK_NB)) fail(26, "lock_flock_ours");
	/* 28: the read lease is there (only a read-only description can hold one). */
	if (fcntl(lk_lease, F_GETLEASE) != F_RDLCK) fail(28, "lease_read");
}

static void check_packets(void)
{
	/* 27: the packets come back one per read, with their sizes; the write end is still in
	 * packet mode. */
	char buf[4096];
	if (read(pkt[0], buf, sizeof buf) != 3 || memcmp(buf, "abc", 3) ||
	    read(pkt[0], buf, sizeof buf) != 5 || memcmp(buf, "defgh", 5) ||
	    read(pkt[0], buf, sizeof buf) != 100 || buf[99] != 'z' ||
	    read(pkt[0], buf, sizeof buf) >= 0 || errno != EAGAIN)
		fail(27, "packet_pipe_data");
	if (!(fcntl(pkt[1], F_GETFL) & O_DIRECT) || !is_nonblock(pkt[0])) fail(27, "packet_pipe_flags");
	if (write(pkt[1], "1", 1) != 1 || write(pkt[1], "22", 2) != 2 ||
	    read(pkt[0], buf, sizeof buf) != 1)
		fail(27, "packet_pipe_still_packets");
}

int main(int argc, char **argv)
{
	if (argc < 2) return 2;
	if (argc > 2 && !strcmp(argv[2], "nolocks")) take_locks = 0;
	setup(argv[1]);
	struct timespec ts = { 0, 2 * 1000 * 1000 };
	while (!verify_now)
		nanosleep(&ts, NULL);
	check_epoll();
	check_signalfd();
	check_timerfd();
	check_inotify();
	check_fanotify();
	check_opath_proc(); /* before the child exits: it reads the child's /proc/PID/stat */
	check_pidfd();
	check_ghosts();
	check_locks();
	check_packets();
	int r = open("result", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	dprintf(r, "%s", first_failed < 0 ? "ok\n" : failed_names);
	close(r);
	return first_failed < 0 ? 0 : 100 + first_failed;
}
