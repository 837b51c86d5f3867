/*
 * Workload for process trees: 6 processes on 3 levels, two sessions, a process group that
 * spans two branches, and a zombie.
 *
 *   R  session leader (session 1), group R
 *   +- A   group A
 *   |  +- A1  joins group B (the other branch)
 *   |  +- Z   exits with status 7 at once; A never waits for it until checked: a zombie
 *   +- B   group B
 *      +- B1  session leader of session 2
 *
 * Each process writes "ids.NAME" (pid ppid sid pgid); when all are in place R writes "ready"
 * with every pid. On SIGUSR1 each process checks its ids against the saved ones (A also reaps Z
 * and checks its status), waits for its children, and exits 0 if all is well in its subtree,
 * else 1. Run as: tree DIR
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }

struct ids { pid_t pid, ppid, sid, pgid; };

static struct ids now(void)
{
	struct ids i = { getpid(), getppid(), getsid(0), getpgid(0) };
	return i;
}

static void save(const char *name, struct ids i)
{
	char tmp[64], fin[64];
	snprintf(tmp, sizeof tmp, "ids.%s.tmp", name);
	snprintf(fin, sizeof fin, "ids.%s", name);
	FILE *f = fopen(tmp, "w");
	fprintf(f, "%d %d %d %d\n", i.pid, i.ppid, i.sid, i.pgid);
	fclose(f);
	rename(tmp, fin);
}

static void wait_for_file(const char *name)
{
	struct stat st;
	while (stat(name, &st) != 0)
		usleep(1000);
}

/* Waits for SIGUSR1, then checks ids; returns 0 if they match. */
static int idle_and_check(struct ids saved)
{
	struct timespec ms = { 0, 1000 * 1000 };
	while (!go)
		nanosleep(&ms, NULL);
	struct ids n = now();
	return memcmp(&n, &saved, sizeof n) != 0;
}

static int reap(pid_t child)
{
	int st;
	if (waitpid(child, &st, 0) != child) return 1;
	return !WIFEXITED(st) || WEXITSTATUS(st) != 0;
}

int main(int argc, char **argv)
{
	if (argc < 2 || chdir(argv[1])) return 2;
	struct sigaction sa = { 0 };
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	setsid();
	struct ids r = now();
	save("R", r);

	pid_t b = fork();
	if (b == 0) {
		setpgid(0, 0);
		struct ids me = now();
		save("B", me);
		pid_t b1 = fork();
		if (b1 == 0) {
			setsid();
			struct ids x = now();
			save("B1", x);
			_exit(idle_and_check(x));
		}
		int bad = idle_and_check(me);
		bad |= reap(b1);
		_exit(bad);
	}
	wait_for_file("ids.B");

	pid_t a = fork();
	if (a == 0) {
		setpgid(0, 0);
		struct ids me = now();
		save("A", me);
		pid_t z = fork();
		if (z == 0)
			_exit(7);
		pid_t a1 = fork();
		if (a1 == 0) {
			setpgid(0, b);
			struct ids x = now();
			save("A1", x);
			_exit(idle_and_check(x));
		}
		/* Z is a zombie until we check it. */
		siginfo_t si;
		waitid(P_PID, z, &si, WEXITED | WNOWAIT);
		FILE *f = fopen("ids.Z.tmp", "w");
		fprintf(f, "%d %d\n", z, getpid());
		fclose(f);
		rename("ids.Z.tmp", "ids.Z");
		int bad = idle_and_check(me);
		int st;
		bad |= waitpid(z, &st, WNOHANG) != z || !WIFEXITED(st) || WEXITSTATUS(st) != 7;
		bad |= reap(a1);
		_exit(bad);
	}
	const char *all[] = { "ids.A", "ids.A1", "ids.Z", "ids.B1" };
	for (int i = 0; i < 4; i++)
		wait_for_file(all[i]);
	FILE *f = fopen("ready.tmp", "w");
	fprintf(f, "%d %d %d\n", getpid(), a, b);
	fclose(f);
	rename("ready.tmp", "ready");
	int bad = idle_and_check(r);
	bad |= reap(a);
	bad |= reap(b);
	return bad;
}
