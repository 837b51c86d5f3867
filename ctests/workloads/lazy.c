/*
 * Workload for lazy restore: 256 MiB (or MIB) of checksummed private memory in four regions.
 * On SIGUSR1 (sent right after a lazy restore, while its memory is still arriving) it forks a
 * child that checks every region as it was, then mremaps one region, munmaps another and
 * madvise(DONTNEED)s a third, and checks everything again: the moved region's contents, the
 * emptied one reads zeros, the untouched tail of the big region reads zeros.
 * Exit: 0 all good; 1 big region; 2 moved region; 3 emptied region not zero; 4 the child failed;
 * 5 mremap/munmap/madvise failed. "result" says which, and how much of each region was
 * present when the signal came (mincore).
 * With "bench" as third argument it measures instead, on SIGUSR1: it writes "woke" (the
 * CLOCK_MONOTONIC time it ran, in ns), then times the first touch of 2000 pages spread over the
 * big region, checks every checksum, and writes "latency" (p50 and p99 in ns, and the count).
 * Run as: lazy DIR [MIB [bench]]
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SMALL (8UL << 20)
#define HOLE (1UL << 20)

static volatile sig_atomic_t go;
static void on_usr1(int sig) { (void)sig; go = 1; }

static uint64_t checksum(const uint64_t *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ULL;
	return h;
}

static void fill(uint64_t *p, size_t bytes, uint64_t seed)
{
	uint64_t x = seed;
	for (size_t i = 0; i < bytes / 8; i++) {
		x ^= x << 13; x ^= x >> 7; x ^= x << 17;
		p[i] = x;
	}
}

static int is_zero(const uint64_t *p, size_t bytes)
{
	for (size_t i = 0; i < bytes / 8; i++)
		if (p[i])
			return 0;
	return 1;
}

static size_t resident(void *p, size_t bytes)
{
	size_t n = bytes / 4096, r = 0;
	unsigned char *v = malloc(n);
	if (!v || mincore(p, bytes, v))
		return (size_t)-1;
	for (size_t i = 0; i < n; i++)
		r += v[i] & 1;
	free(v);
	return r;
}

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ULL + t.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static void write_file(const char *name, const char *s)
{
	int fd = open(name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd >= 0) {
		write(fd, s, strlen(s));
		close(fd);
	}
}

/* The bench mode: how soon the task runs, and how long a first touch of a page takes. */
static int bench(uint64_t *main_r, size_t big, uint64_t sum_main)
{
	char buf[128];
	uint64_t woke = now_ns();
	snprintf(buf, sizeof buf, "%llu\n", (unsigned long long)woke);
	write_file("woke", buf);
	enum { N = 2000 };
	static uint64_t lat[N];
	size_t pages = (big - HOLE) / 4096;
	volatile uint64_t sink = 0;
	uint64_t x = 0x2545f4914f6cdd1dULL;
	for (int i = 0; i < N; i++) {
		x ^= x << 13; x ^= x >> 7; x ^= x << 17;
		size_t page = x % pages;
		uint64_t t = now_ns();
		sink += main_r[page * 512];
		lat[i] = now_ns() - t;
	}
	(void)sink;
	qsort(lat, N, sizeof lat[0], cmp_u64);
	if (checksum(main_r, big / 8) != sum_main)
		return 1;
	snprintf(buf, sizeof buf, "%llu %llu %d\n", (unsigned long long)lat[N / 2],
		 (unsigned long long)lat[N * 99 / 100], N);
	write_file("latency", buf);
	return 0;
}

static void result(const char *s)
{
	int fd = open("result", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd >= 0) {
		write(fd, s, strlen(s));
		close(fd);
	}
}

int main(int argc, char **argv)
{
	if (argc < 2 || chdir(argv[1])) return 9;
	setsid();
	size_t total = (size_t)(argc > 2 ? atol(argv[2]) : 256) << 20;
	size_t big = total - 3 * SMALL;
	int prot = PROT_READ | PROT_WRITE, fl = MAP_PRIVATE | MAP_ANONYMOUS;
	/* The small regions first: mmap goes downwards, so they sit above the big one, whose
	 * pages the daemon pushes first; they are still on their way when the signal comes. */
	uint64_t *moved = mmap(NULL, SMALL, prot, fl, -1, 0);
	uint64_t *unmapped = mmap(NULL, SMALL, prot, fl, -1, 0);
	uint64_t *emptied = mmap(NULL, SMALL, prot, fl, -1, 0);
	uint64_t *main_r = mmap(NULL, big, prot, fl, -1, 0);
	/* Where the moved region goes: reserved now, so nothing else takes it. */
	void *dest = mmap(NULL, SMALL, PROT_NONE, fl, -1, 0);
	if (moved == MAP_FAILED || unmapped == MAP_FAILED || emptied == MAP_FAILED ||
	    main_r == MAP_FAILED || dest == MAP_FAILED)
		return 9;
	fill(main_r, big - HOLE, 1);
	fill(moved, SMALL, 2);
	fill(unmapped, SMALL, 3);
	fill(emptied, SMALL, 4);
	uint64_t sum_main = checksum(main_r, big / 8);
	uint64_t sum_moved = checksum(moved, SMALL / 8);
	uint64_t sum_unmapped = checksum(unmapped, SMALL / 8);
	uint64_t sum_emptied = checksum(emptied, SMALL / 8);

	struct sigaction sa = { 0 };
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	sigset_t usr1, old;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	sigprocmask(SIG_BLOCK, &usr1, &old);
	char buf[512];
	int fd = open("ready.tmp", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	snprintf(buf, sizeof buf, "%d\n", getpid());
	write(fd, buf, strlen(buf));
	close(fd);
	rename("ready.tmp", "ready");
	while (!go)
		sigsuspend(&old);

	if (argc > 3 && !strcmp(argv[3], "bench"))
		return bench(main_r, big, sum_main);
	size_t r_main = resident(main_r, big), r_moved = resident(moved, SMALL);
	size_t r_unmapped = resident(unmapped, SMALL), r_emptied = resident(emptied, SMALL);

	pid_t child = fork();
	if (child == 0) {
		if (checksum(main_r, big / 8) != sum_main) _exit(1);
		if (checksum(moved, SMALL / 8) != sum_moved) _exit(2);
		if (checksum(unmapped, SMALL / 8) != sum_unmapped) _exit(3);
		if (checksum(emptied, SMALL / 8) != sum_emptied) _exit(4);
		_exit(0);
	}
	int code = 0;
	const char *what = "ok";
	uint64_t *now = mremap(moved, SMALL, SMALL, MREMAP_MAYMOVE | MREMAP_FIXED, dest);
	if (now == MAP_FAILED || munmap(unmapped, SMALL) || madvise(emptied, SMALL, MADV_DONTNEED)) {
		code = 5; what = "mremap/munmap/madvise failed";
	} else if (checksum(now, SMALL / 8) != sum_moved) {
		code = 2; what = "moved region differs";
	} else if (!is_zero(emptied, SMALL)) {
		code = 3; what = "emptied region is not zero";
	} else if (checksum(main_r, big / 8) != sum_main) {
		code = 1; what = "big region differs";
	} else if (!is_zero(main_r + (big - HOLE) / 8, HOLE)) {
		code = 1; what = "never written tail is not zero";
	}
	int st = 0;
	if (child < 0 || waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st)) {
		if (!code) {
			code = 4;
			what = "child failed";
		}
	}
	snprintf(buf, sizeof buf,
		 "%s child=%d resident_pages main=%zu/%zu moved=%zu unmapped=%zu emptied=%zu of %zu\n",
		 what, WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), r_main, big / 4096,
		 r_moved, r_unmapped, r_emptied, SMALL / 4096);
	result(buf);
	return code;
}
