/*
 * Workload for pid namespaces: a launcher forks R with clone(CLONE_NEWPID), so R is pid 1 of a
 * namespace of its own, with a small tree below it:
 *
 *   launcher (our namespace; not part of the dumped tree unless the test says so)
 *   +- R  pid 1 of the new namespace, session leader
 *      +- T   pid 2, its own process group, with a second thread (which checks its own tid)
 *      +- Z   pid 3, exits with status 7 at once: a zombie until R checks it
 *      +- S   pid 4, leader of a session of its own
 *         +- S1  pid 5, in S's session and group
 *
 * Each process writes "ids.NAME": pid ppid sid pgid (as its namespace sees them), then its host
 * pid (/proc/self is our namespace's /proc). R writes "ready" (its host pid) once all are in
 * place. On SIGUSR1, R passes the signal to everybody in the namespace (kill -1); each process
 * checks its ids and a checksum of 4 MiB of its memory, T also its thread's tid, R the zombie's
 * status; each exits 0 if all is well in its subtree, else 1. The launcher exits with R's
 * status. Run as: pidns DIR
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }

struct ids { pid_t pid, ppid, sid, pgid; };

#define MEM_WORDS (4 << 20) / 8
static uint64_t *mem;
static uint64_t mem_sum;

static uint64_t checksum(void)
{
	uint64_t s = 0;
	for (size_t i = 0; i < MEM_WORDS; i++)
		s = s * 31 + mem[i];
	return s;
}

static void fill_memory(uint64_t seed)
{
	mem = malloc(MEM_WORDS * 8);
	for (size_t i = 0; i < MEM_WORDS; i++) {
		seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17;
		mem[i] = seed;
	}
	mem_sum = checksum();
}

static struct ids now(void)
{
	struct ids i = { getpid(), getppid(), getsid(0), getpgid(0) };
	return i;
}

static int host_pid(void)
{
	char buf[32] = { 0 };
	if (readlink("/proc/self", buf, sizeof buf - 1) < 0)
		return -1;
	return atoi(buf);
}

static void put(const char *name, const char *text)
{
	char tmp[80];
	snprintf(tmp, sizeof tmp, "%s.tmp", name);
	FILE *f = fopen(tmp, "w");
	fputs(text, f);
	fclose(f);
	rename(tmp, name);
}

static struct ids save(const char *name)
{
	struct ids i = now();
	char path[64], text[128];
	snprintf(path, sizeof path, "ids.%s", name);
	snprintf(text, sizeof text, "%d %d %d %d %d\n", i.pid, i.ppid, i.sid, i.pgid, host_pid());
	put(path, text);
	return i;
}

static void wait_for_file(const char *name)
{
	struct stat st;
	while (stat(name, &st) != 0)
		usleep(1000);
}

/* Waits for SIGUSR1, then checks ids and memory; returns 0 if they match. */
static int idle_and_check(struct ids saved)
{
	struct timespec ms = { 0, 1000 * 1000 };
	while (!go)
		nanosleep(&ms, NULL);
	struct ids n = now();
	int bad = memcmp(&n, &saved, sizeof n) != 0;
	if (bad)
		fprintf(stderr, "pid %d: ids %d %d %d %d, saved %d %d %d %d\n", getpid(), n.pid, n.ppid,
			n.sid, n.pgid, saved.pid, saved.ppid, saved.sid, saved.pgid);
	if (checksum() != mem_sum) {
		fprintf(stderr, "pid %d: memory checksum differs\n", getpid());
		bad = 1;
	}
	return bad;
}

static int reap(pid_t child)
{
	int st;
	if (waitpid(child, &st, 0) != child) return 1;
	return !WIFEXITED(st) || WEXITSTATUS(st) != 0;
}

static pid_t thread_tid;
static int thread_bad = 1;

static void *thread_main(void *arg)
{
	(void)arg;
	thread_tid = syscall(SYS_gettid);
	struct timespec ms = { 0, 1000 * 1000 };
	while (!go)
		nanosleep(&ms, NULL);
	thread_bad = syscall(SYS_gettid) != thread_tid;
	return NULL;
}

static int root_main(void)
{
	setsid();
	fill_memory(1);
	struct ids r = save("R");

	pid_t t = fork();
	if (t == 0) {
		setpgid(0, 0);
		fill_memory(2);
		pthread_t th;
		pthread_create(&th, NULL, thread_main, NULL);
		while (!__atomic_load_n(&thread_tid, __ATOMIC_SEQ_CST))
			usleep(1000);
		char text[32];
		snprintf(text, sizeof text, "%d\n", thread_tid);
		put("tid.T", text);
		struct ids me = save("T");
		int bad = idle_and_check(me);
		pthread_join(th, NULL);
		_exit(bad | thread_bad);
	}
	wait_for_file("ids.T");
	pid_t z = fork();
	if (z == 0)
		_exit(7);
	siginfo_t si;
	waitid(P_PID, z, &si, WEXITED | WNOWAIT);
	pid_t s = fork();
	if (s == 0) {
		setsid();
		fill_memory(3);
		struct ids me = save("S");
		pid_t s1 = fork();
		if (s1 == 0) {
			fill_memory(4);
			_exit(idle_and_check(save("S1")));
		}
		wait_for_file("ids.S1");
		int bad = idle_and_check(me);
		bad |= reap(s1);
		_exit(bad);
	}
	wait_for_file("ids.S1");
	wait_for_file("tid.T");
	char text[32];
	snprintf(text, sizeof text, "%d\n", host_pid());
	put("ready", text);
	int bad = idle_and_check(r);
	kill(-1, SIGUSR1);
	int st;
	bad |= waitpid(z, &st, WNOHANG) != z || !WIFEXITED(st) || WEXITSTATUS(st) != 7;
	bad |= reap(t);
	bad |= reap(s);
	if (bad)
		fprintf(stderr, "pidns root: a check failed\n");
	return bad;
}

static char stack[1 << 18];

static int root_entry(void *arg)
{
	(void)arg;
	return root_main();
}

int main(int argc, char **argv)
{
	if (argc < 2 || chdir(argv[1])) return 2;
	struct sigaction sa = { 0 };
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	pid_t r = clone(root_entry, stack + sizeof stack, CLONE_NEWPID | SIGCHLD, NULL);
	if (r < 0) {
		perror("clone(CLONE_NEWPID)");
		return 3;
	}
	int st;
	if (waitpid(r, &st, 0) != r) return 4;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
