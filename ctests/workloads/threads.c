/*
 * Workload for multi-threaded checkpoint/restore: 8 threads in different states.
 *   0-3: spin on their own counters
 *   4:   sleeps in nanosleep() in a loop of long sleeps
 *   5:   waits on a futex until the main thread wakes it
 *   6:   blocks SIGUSR2, has one pending (tgkill), and takes it when told to unblock
 *   7:   blocked in read() on a pipe until the main thread writes to it (with PIPE=1 in env;
 *        otherwise it spins like 0-3)
 * It writes "ready" (with every tid) once all are in place; on SIGUSR1 the main thread checks
 * that every thread still has its tid, counters move, the sleeper and the futex waiter wake
 * up, the pending signal arrives in thread 6, the pipe reader gets its byte; exits 0, or 100+N
 * for the first failed check N. Run as: threads DIR
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define N 8
static pid_t tids[N];
static _Atomic unsigned long counters[N];
static _Atomic int awake[N];
static _Atomic int futex_word;
static _Atomic int unblock_now;
static _Atomic int usr2_in_thread6;
static volatile sig_atomic_t verify_now;
static int pipefd[2] = { -1, -1 };
static _Atomic int ready_count;

static pid_t gettid_(void) { return (pid_t)syscall(SYS_gettid); }
static void on_usr1(int s) { (void)s; verify_now = 1; }
static void on_usr2(int s) { (void)s; if (gettid_() == tids[6]) usr2_in_thread6 = 1; }

static void *worker(void *arg)
{
	long i = (long)arg;
	tids[i] = gettid_();
	if (i == 6) {
		sigset_t s;
		sigemptyset(&s);
		sigaddset(&s, SIGUSR2);
		pthread_sigmask(SIG_BLOCK, &s, NULL);
		syscall(SYS_tgkill, getpid(), tids[i], SIGUSR2);
	}
	ready_count++;
	if (i == 4) {
		struct timespec ts = { 3600, 0 };
		for (;;) {
			nanosleep(&ts, NULL);
			awake[i] = 1;
		}
	}
	if (i == 5) {
		while (futex_word == 0)
			syscall(SYS_futex, &futex_word, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
		awake[i] = 1;
		for (;;) pause();
	}
	if (i == 7 && pipefd[0] >= 0) {
		char c;
		if (read(pipefd[0], &c, 1) == 1 && c == 'x')
			awake[i] = 1;
		for (;;) pause();
	}
	for (;;) {
		counters[i]++;
		if (i == 6 && unblock_now) {
			sigset_t s;
			sigemptyset(&s);
			sigaddset(&s, SIGUSR2);
			pthread_sigmask(SIG_UNBLOCK, &s, NULL);
			unblock_now = 0;
			awake[i] = 1;
		}
	}
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc < 2 || chdir(argv[1])) return 2;
	setsid();
	if (getenv("PIPE") && pipe(pipefd)) return 2;
	struct sigaction sa = { 0 };
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_usr2;
	sigaction(SIGUSR2, &sa, NULL);
	/* Only thread 6 may take SIGUSR1's sibling signals; keep SIGUSR1 for main. */
	sigset_t block1;
	sigemptyset(&block1);
	sigaddset(&block1, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &block1, NULL);
	pthread_t th[N];
	for (long i = 0; i < N; i++)
		pthread_create(&th[i], NULL, worker, (void *)i);
	pthread_sigmask(SIG_UNBLOCK, &block1, NULL);
	while (ready_count < N)
		usleep(1000);
	usleep(20000); /* let the sleeper and the futex waiter get into their syscalls */
	pid_t saved[N];
	memcpy(saved, tids, sizeof saved);
	FILE *f = fopen("ready.tmp", "w");
	fprintf(f, "%d", getpid());
	for (int i = 0; i < N; i++) fprintf(f, " %d", tids[i]);
	fprintf(f, "\n");
	fclose(f);
	rename("ready.tmp", "ready");

	struct timespec ms = { 0, 1000 * 1000 };
	while (!verify_now)
		nanosleep(&ms, NULL);

	/* 1: every thread kept its tid (each reports its own again) */
	for (int i = 0; i < N; i++)
		if (tids[i] != saved[i]) return 101;
	/* 2: the spinning threads still run */
	unsigned long before[N];
	for (int i = 0; i < 4; i++) before[i] = counters[i];
	/* Each must move within 5 s: on a loaded machine a thread can wait long for a core. */
	for (int i = 0; i < 4; i++) {
		int waited = 0;
		while (counters[i] == before[i] && waited++ < 5000)
			usleep(1000);
		if (counters[i] == before[i]) return 102;
	}
	/* 3: the sleeper wakes up when signalled (SIGUSR2 would be blocked only in 6) */
	sa.sa_handler = SIG_IGN;
	sigaction(SIGURG, &sa, NULL);
	sa.sa_handler = on_usr2; /* keep */
	syscall(SYS_tgkill, getpid(), tids[4], SIGCONT);
	/* nanosleep restarts after SIGCONT; use a handled signal instead */
	struct sigaction wake = { 0 };
	wake.sa_handler = on_usr1;
	sigaction(SIGWINCH, &wake, NULL);
	syscall(SYS_tgkill, getpid(), tids[4], SIGWINCH);
	for (int i = 0; i < 1000 && !awake[4]; i++) usleep(1000);
	if (!awake[4]) return 103;
	/* 4: the futex waiter wakes */
	futex_word = 1;
	syscall(SYS_futex, &futex_word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
	for (int i = 0; i < 1000 && !awake[5]; i++) usleep(1000);
	if (!awake[5]) return 104;
	/* 5: thread 6 still blocks SIGUSR2 with it pending, and takes it when it unblocks */
	if (usr2_in_thread6) return 105;
	unblock_now = 1;
	for (int i = 0; i < 1000 && !awake[6]; i++) usleep(1000);
	if (!awake[6] || !usr2_in_thread6) return 105;
	/* 6: the pipe reader gets its byte */
	if (pipefd[1] >= 0) {
		if (write(pipefd[1], "x", 1) != 1) return 106;
		for (int i = 0; i < 1000 && !awake[7]; i++) usleep(1000);
		if (!awake[7]) return 106;
	}
	return 0;
}
