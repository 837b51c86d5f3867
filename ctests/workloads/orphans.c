/*
 * Workload for sessions and process groups whose leader is gone. The root (a subreaper, leading
 * its own session) forks:
 *   - a daemon by double fork: P calls setsid(), forks D and exits, so D lives on in session P
 *     and process group P, both led by nobody;
 *   - a group orphan: L calls setpgid(0, 0), forks M and exits, so M lives on in the root's
 *     session in process group L, led by nobody; M forks N, which stays in group L.
 * The root reaps P and L (their pids are free), writes "ROOT D M N P L" to "ready" and waits for
 * SIGUSR1. Then it checks that it got no SIGCHLD so far and that none of its children has
 * exited (a helper left behind would show here), and passes SIGUSR1 on to D, M and N, which
 * check their own session and group and exit 0 (1 when wrong); the root reaps D and M (M reaps
 * N) and exits 0 (1: a check of D, M or N failed, 2: the root got SIGCHLD, 4: a child of the
 * root had exited, 5: an unexpected child, 3: setup).
 * Run as: orphans DIR
 *
 * With "orphans DIR daemon" it is only a daemon by double fork: P calls setsid(), forks D and
 * exits, and so does the launcher; D writes "D P" to "ready" and on SIGUSR1 exits 0 when it is
 * still in session and group P (1 otherwise).
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t go, chld;
static void on_usr1(int s) { (void)s; go = 1; }
static void on_chld(int s) { (void)s; chld++; }

static void idle(void)
{
	struct timespec ms = { 0, 1000 * 1000 };
	while (!go)
		nanosleep(&ms, NULL);
}

/* Writes our pid into fd, then idles; on SIGUSR1 reaps `child` (when not 0) and exits 0 when in
 * session sid and group pgid and the child exited 0. */
static void member(int fd, pid_t sid, pid_t pgid, pid_t child)
{
	pid_t me = getpid();
	if (write(fd, &me, sizeof me) != sizeof me) _exit(3);
	for (int i = 3; i < 64; i++) close(i);
	idle();
	int ok = getsid(0) == sid && getpgrp() == pgid;
	if (child) {
		int st;
		ok = ok && waitpid(child, &st, 0) == child && WIFEXITED(st) && !WEXITSTATUS(st);
	}
	_exit(ok ? 0 : 1);
}

static int daemon_only(void)
{
	pid_t p = fork();
	if (p == 0) {
		pid_t sid = setsid();
		if (fork() == 0) {
			for (int i = 3; i < 64; i++) close(i);
			FILE *f = fopen("ready.tmp", "w");
			fprintf(f, "%d %d\n", getpid(), sid);
			fclose(f);
			rename("ready.tmp", "ready");
			idle();
			_exit(getsid(0) == sid && getpgrp() == sid ? 0 : 1);
		}
		_exit(0);
	}
	int st;
	return waitpid(p, &st, 0) == p ? 0 : 3;
}

int main(int argc, char **argv)
{
	if (argc < 2 || chdir(argv[1])) return 3;
	struct sigaction usr1 = { 0 };
	usr1.sa_handler = on_usr1;
	sigaction(SIGUSR1, &usr1, NULL);
	if (argc > 2 && !strcmp(argv[2], "daemon")) return daemon_only();
	setsid();
	prctl(PR_SET_CHILD_SUBREAPER, 1);
	struct sigaction sa = { 0 };
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	int p1[2], p2[2], p3[2];
	if (pipe(p1) || pipe(p2) || pipe(p3)) return 3;

	pid_t p = fork();
	if (p == 0) {
		pid_t sid = setsid();
		if (fork() == 0) member(p1[1], sid, sid, 0);
		_exit(0);
	}
	pid_t l = fork();
	if (l == 0) {
		setpgid(0, 0);
		pid_t sid = getsid(0);
		l = getpid();
		if (fork() == 0) {
			pid_t n = fork();
			if (n == 0) member(p3[1], sid, l, 0);
			/* N's pid first (once N is set up), then ours. */
			if (read(p3[0], &n, sizeof n) != sizeof n) _exit(3);
			if (write(p2[1], &n, sizeof n) != sizeof n) _exit(3);
			member(p2[1], sid, l, n);
		}
		_exit(0);
	}
	int st;
	if (waitpid(p, &st, 0) != p || waitpid(l, &st, 0) != l) return 3;
	pid_t d, m, n;
	if (read(p1[0], &d, sizeof d) != sizeof d) return 3;
	if (read(p2[0], &n, sizeof n) != sizeof n || read(p2[0], &m, sizeof m) != sizeof m) return 3;
	close(p1[0]);
	close(p1[1]);
	close(p2[0]);
	close(p2[1]);
	close(p3[0]);
	close(p3[1]);
	sa.sa_handler = on_chld;
	sigaction(SIGCHLD, &sa, NULL);
	FILE *f = fopen("ready.tmp", "w");
	fprintf(f, "%d %d %d %d %d %d\n", getpid(), d, m, n, p, l);
	fclose(f);
	rename("ready.tmp", "ready");
	idle();
	if (chld) return 2;
	/* Only D and M are our children, both still running (M reaps N). */
	if (waitpid(-1, &st, WNOHANG) != 0) return 4;
	kill(d, SIGUSR1);
	kill(m, SIGUSR1);
	kill(n, SIGUSR1);
	int bad = 0;
	for (int i = 0; i < 2; i++) {
		pid_t w = wait(&st);
		if (w != d && w != m) return 5;
		if (!WIFEXITED(st) || WEXITSTATUS(st)) bad = 1;
	}
	return bad ? 1 : 0;
}
