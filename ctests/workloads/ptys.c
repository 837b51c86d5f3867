/*
 * Workload for checkpoint/restore of ptys inside the tree.
 *
 * The root P opens two pty masters: A, whose slave is the controlling terminal of a session
 * below it, with its own termios (ECHO off, VINTR ^G, VMIN 3) and window size (37x123, 5x9
 * pixels) and an owner and signal (F_SETOWN, F_SETSIG; a regular file has some too); and B,
 * left locked and in packet mode, with no slave. P forks S, which makes a new
 * session, opens A's slave (it becomes its controlling terminal) and forks F, whose process
 * group S makes the terminal's foreground group. When all is set, P writes "ready" (its pid)
 * "index" (A's pty index) and "pids" (S and F) in DIR and idles until SIGUSR1.
 *
 * On SIGUSR1, P checks its masters (same indexes, lock, packet mode, termios and window size
 * as seen from the master), tells S to check; S checks the session, the controlling terminal
 * (/dev/tty is A's slave), the foreground group and the settings, tells F to check its
 * controlling terminal too, then a line goes each way through the pty. Exit code 0 when every
 * check passed in all three; failed checks are appended to DIR/result by name.
 *
 * Run as: ptys DIR [shell]
 *
 * With "shell", it is a shell job instead: it makes nothing, stays in the session and process
 * group it was started in, and on SIGUSR1 checks that its stdin, stdout and stderr are the
 * terminal named in DIR/expect-tty, that it has a controlling terminal, that it can read a
 * line ("abc") from it, and answers "restored-ok" on stdout.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static volatile sig_atomic_t verify_now;
static void on_usr1(int sig) { (void)sig; verify_now = 1; }
static int failed;

static void die(const char *what)
{
	fprintf(stderr, "ptys setup: %s: %s\n", what, strerror(errno));
	exit(2);
}

static void fail(const char *who, const char *what)
{
	FILE *f = fopen("result", "a");
	if (f) {
		fprintf(f, "%s: %s (errno %s)\n", who, what, strerror(errno));
		fclose(f);
	}
	failed = 1;
}

/* Polls rather than sigsuspend(): a dump that resumes us restarts the interrupted call by
 * hand, so a signal that comes right after would find sigsuspend() entered again. */
static void wait_usr1(void)
{
	while (!verify_now)
		usleep(1000);
}

static void check_settings(const char *who, int fd)
{
	struct termios t;
	struct winsize w;
	if (tcgetattr(fd, &t) < 0)
		fail(who, "tcgetattr");
	else {
		if (t.c_lflag & ECHO)
			fail(who, "termios_echo_back_on");
		if (!(t.c_lflag & ICANON))
			fail(who, "termios_icanon_lost");
		if (t.c_cc[VINTR] != 7)
			fail(who, "termios_vintr");
		if (t.c_cc[VMIN] != 3)
			fail(who, "termios_vmin");
	}
	if (ioctl(fd, TIOCGWINSZ, &w) < 0)
		fail(who, "TIOCGWINSZ");
	else if (w.ws_row != 37 || w.ws_col != 123 || w.ws_xpixel != 5 || w.ws_ypixel != 9)
		fail(who, "winsize");
}

/* /dev/tty opens, and the controlling terminal in /proc/self/stat is the terminal of `fd`. */
static void check_ctty(const char *who, int fd)
{
	struct stat b;
	int t = open("/dev/tty", O_RDWR | O_NOCTTY);
	if (t < 0) {
		fail(who, "no_controlling_terminal");
		return;
	}
	close(t);
	char line[1024];
	int tty_nr = -1;
	FILE *f = fopen("/proc/self/stat", "r");
	if (f && fgets(line, sizeof line, f)) {
		char *p = strrchr(line, ')');
		if (p)
			sscanf(p + 2, "%*c %*d %*d %*d %d", &tty_nr);
	}
	if (f)
		fclose(f);
	if (fstat(fd, &b) < 0 || tty_nr != (int)((major(b.st_rdev) << 8) | minor(b.st_rdev)))
		fail(who, "controlling_terminal_is_another");
}

static int run_foreground(void)
{
	wait_usr1();
	int fd = open("/dev/tty", O_RDWR | O_NOCTTY);
	if (fd < 0)
		fail("F", "no_controlling_terminal");
	else if (tcgetpgrp(fd) != getpid())
		fail("F", "not_foreground");
	return failed;
}

static int run_session(int slave_fd_out_pipe, int index)
{
	char path[32];
	if (setsid() < 0)
		die("setsid");
	/* We take the foreground back from the background at the end. */
	signal(SIGTTOU, SIG_IGN);
	snprintf(path, sizeof path, "/dev/pts/%d", index);
	int slave = open(path, O_RDWR); /* no O_NOCTTY: our controlling terminal */
	if (slave < 0)
		die("open slave");
	pid_t f = fork();
	if (f < 0)
		die("fork");
	if (f == 0) {
		setpgid(0, 0);
		close(slave);
		exit(run_foreground());
	}
	setpgid(f, f);
	if (tcsetpgrp(slave, f) < 0)
		die("tcsetpgrp");
	if (write(slave_fd_out_pipe, &f, sizeof f) != sizeof f)
		die("report");
	close(slave_fd_out_pipe);

	wait_usr1();
	if (getsid(0) != getpid())
		fail("S", "not_session_leader");
	if (tcgetsid(slave) != getpid())
		fail("S", "terminal_of_another_session");
	if (tcgetpgrp(slave) != f)
		fail("S", "foreground_group");
	check_ctty("S", slave);
	check_settings("S", slave);
	kill(f, SIGUSR1);
	int st;
	if (waitpid(f, &st, 0) != f || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		fail("S", "foreground_child_failed");
	/* A background group of an orphaned session cannot read its terminal. */
	if (tcsetpgrp(slave, getpgrp()) < 0)
		fail("S", "tcsetpgrp_back");
	/* A line each way: P writes "ping\n" first. */
	char buf[64];
	ssize_t n = read(slave, buf, sizeof buf);
	if (n != 5 || memcmp(buf, "ping\n", 5))
		fail("S", "read_ping");
	if (write(slave, "pong\n", 5) != 5)
		fail("S", "write_pong");
	return failed;
}

static int open_master(void)
{
	int m = posix_openpt(O_RDWR | O_NOCTTY);
	if (m < 0)
		die("posix_openpt");
	return m;
}

static int run_shell_job(void)
{
	FILE *f = fopen("ready.tmp", "w");
	fprintf(f, "%d\n", getpid());
	fclose(f);
	rename("ready.tmp", "ready");
	wait_usr1();
	char want[64] = "", *got;
	f = fopen("expect-tty", "r");
	if (!f || !fgets(want, sizeof want, f))
		fail("J", "no_expect_tty");
	if (f)
		fclose(f);
	want[strcspn(want, "\n")] = 0;
	for (int fd = 0; fd < 3; fd++)
		if (!(got = ttyname(fd)) || strcmp(got, want))
			fail("J", "stdio_not_the_restorers_terminal");
	check_ctty("J", 0);
	char buf[64];
	ssize_t n = read(0, buf, sizeof buf);
	if (n != 4 || memcmp(buf, "abc\n", 4))
		fail("J", "read_line");
	if (write(1, "restored-ok\n", 12) != 12)
		fail("J", "write");
	return failed;
}

int main(int argc, char **argv)
{
	if (argc < 2 || chdir(argv[1]) < 0)
		die("chdir");
	if (argc > 2 && !strcmp(argv[2], "shell")) {
		struct sigaction sa = { .sa_handler = on_usr1 };
		sigaction(SIGUSR1, &sa, NULL);
		return run_shell_job();
	}
	setsid();
	struct sigaction sa = { .sa_handler = on_usr1 };
	sigaction(SIGUSR1, &sa, NULL);

	int a = open_master(), b = open_master(), ia, ib;
	if (unlockpt(a) < 0 || ioctl(a, TIOCGPTN, &ia) < 0 || ioctl(b, TIOCGPTN, &ib) < 0)
		die("pty index");
	int on = 1;
	if (ioctl(b, TIOCPKT, &on) < 0)
		die("TIOCPKT");
	struct termios t;
	if (tcgetattr(a, &t) < 0)
		die("tcgetattr");
	t.c_lflag &= ~ECHO;
	t.c_cc[VINTR] = 7;
	t.c_cc[VMIN] = 3;
	if (tcsetattr(a, TCSANOW, &t) < 0)
		die("tcsetattr");
	struct winsize w = { .ws_row = 37, .ws_col = 123, .ws_xpixel = 5, .ws_ypixel = 9 };
	if (ioctl(a, TIOCSWINSZ, &w) < 0)
		die("TIOCSWINSZ");

	/* Owners and signals: the master's and a regular file's. */
	if (fcntl(a, F_SETOWN, getpid()) < 0 || fcntl(a, F_SETSIG, SIGUSR2) < 0)
		die("F_SETOWN master");
	int reg = open("owned", O_RDWR | O_CREAT, 0600);
	if (reg < 0 || fcntl(reg, F_SETOWN, -getpid()) < 0 || fcntl(reg, F_SETSIG, SIGRTMIN + 2) < 0)
		die("F_SETOWN file");

	int p[2];
	if (pipe(p) < 0)
		die("pipe");
	pid_t s = fork();
	if (s < 0)
		die("fork");
	if (s == 0) {
		close(p[0]);
		close(a);
		close(b);
		exit(run_session(p[1], ia));
	}
	close(p[1]);
	pid_t fg;
	if (read(p[0], &fg, sizeof fg) != sizeof fg)
		die("session setup");
	close(p[0]);
	FILE *f = fopen("pids", "w");
	fprintf(f, "%d %d\n", s, fg);
	fclose(f);

	f = fopen("index", "w");
	fprintf(f, "%d\n", ia);
	fclose(f);
	f = fopen("ready.tmp", "w");
	fprintf(f, "%d\n", getpid());
	fclose(f);
	rename("ready.tmp", "ready");

	wait_usr1();
	int got, lck;
	if (ioctl(a, TIOCGPTN, &got) < 0 || got != ia)
		fail("P", "index_a");
	if (ioctl(b, TIOCGPTN, &got) < 0 || got != ib)
		fail("P", "index_b");
	if (ioctl(a, TIOCGPTLCK, &lck) < 0 || lck != 0)
		fail("P", "a_locked");
	if (ioctl(b, TIOCGPTLCK, &lck) < 0 || lck != 1)
		fail("P", "b_unlocked");
	if (ioctl(b, TIOCGPKT, &on) < 0 || on != 1)
		fail("P", "b_packet_mode");
	if (ioctl(a, TIOCGPKT, &on) < 0 || on != 0)
		fail("P", "a_packet_mode");
	check_settings("P", a);
	if (fcntl(a, F_GETOWN) != getpid() || fcntl(a, F_GETSIG) != SIGUSR2)
		fail("P", "master_owner");
	/* A process group owner reads back negative. */
	if (fcntl(reg, F_GETOWN) != -getpid() || fcntl(reg, F_GETSIG) != SIGRTMIN + 2)
		fail("P", "file_owner");
	kill(s, SIGUSR1);
	if (write(a, "ping\n", 5) != 5)
		fail("P", "write_ping");
	char buf[64];
	size_t got_n = 0;
	/* "pong\n" comes back as "pong\r\n" (ONLCR). */
	while (got_n < 6) {
		ssize_t n = read(a, buf + got_n, sizeof buf - got_n);
		if (n <= 0)
			break;
		got_n += n;
	}
	if (got_n != 6 || memcmp(buf, "pong\r\n", 6))
		fail("P", "read_pong");
	int st;
	if (waitpid(s, &st, 0) != s || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		fail("P", "session_failed");
	return failed;
}
