/*
 * Workload for tree benchmarks: 1 + K + K*M processes (default 50: 7 children with 6 children
 * each), every process with one extra thread (100 threads), all sharing SHARED_MIB of memory the
 * root wrote before forking (copy-on-write), each changing 256 KiB of it. The root writes
 * "ready" with all pids once everyone is in place; on SIGUSR1 (sent to every process) each
 * checks its memory, waits for its children and exits 0 if its subtree is intact.
 * Run as: forest DIR [SHARED_MIB]
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define K 7
#define M 6
#define OWN (256 << 10)

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }
static uint64_t *mem;
static size_t words;
static int rank;

static void *sleeper(void *a)
{
	(void)a;
	for (;;) sleep(3600);
	return NULL;
}

static uint64_t expect(size_t i, int r)
{
	size_t own = OWN / 8;
	if (r >= 0 && i >= (size_t)r * own && i < (size_t)(r + 1) * own) return i ^ (0xabcdull * (r + 1));
	return i * 0x9e3779b97f4a7c15ull;
}

static int live(int r, pid_t *kids, int nkids, int readyfd)
{
	rank = r;
	size_t own = OWN / 8;
	for (size_t i = (size_t)r * own; i < (size_t)(r + 1) * own && i < words; i++) mem[i] = expect(i, r);
	pthread_t t;
	pthread_create(&t, NULL, sleeper, NULL);
	char c = 1;
	if (readyfd >= 0 && write(readyfd, &c, 1) != 1) return 1;
	if (readyfd >= 0) close(readyfd);
	struct timespec ms = { 0, 2 * 1000 * 1000 };
	while (!go) nanosleep(&ms, NULL);
	int bad = 0;
	for (size_t i = 0; i < words; i++)
		if (mem[i] != expect(i, r)) { bad = 1; break; }
	for (int i = 0; i < nkids; i++) {
		int st;
		if (waitpid(kids[i], &st, 0) != kids[i] || !WIFEXITED(st) || WEXITSTATUS(st)) bad = 1;
	}
	return bad;
}

int main(int argc, char **argv)
{
	if (argc < 2 || chdir(argv[1])) return 9;
	size_t mib = argc > 2 ? (size_t)atol(argv[2]) : 64;
	setsid();
	struct sigaction sa = { 0 };
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	words = (mib << 20) / 8;
	mem = mmap(NULL, mib << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	for (size_t i = 0; i < words; i++) mem[i] = expect(i, -1);
	int p[2];
	if (pipe(p)) return 9;
	pid_t all[1 + K + K * M];
	int n = 0, r = 1;
	all[n++] = getpid();
	pid_t kids[K];
	for (int k = 0; k < K; k++) {
		int myrank = r++;
		pid_t grand[M];
		int grank[M];
		for (int m = 0; m < M; m++) grank[m] = r++;
		pid_t c = fork();
		if (c == 0) {
			close(p[0]);
			for (int m = 0; m < M; m++) {
				grand[m] = fork();
				if (grand[m] == 0) _exit(live(grank[m], NULL, 0, p[1]));
			}
			_exit(live(myrank, grand, M, p[1]));
		}
		kids[k] = c;
		all[n++] = c;
	}
	close(p[1]);
	/* Everyone but us reports once (1 byte); the grandchildren's pids come from /proc. */
	char c;
	for (int i = 0; i < K + K * M; i++)
		if (read(p[0], &c, 1) != 1) return 9;
	close(p[0]);
	FILE *f = fopen("ready.tmp", "w");
	for (int i = 0; i < n; i++) fprintf(f, "%d ", all[i]);
	fprintf(f, "\n");
	fclose(f);
	rename("ready.tmp", "ready");
	return live(0, kids, K, -1);
}
