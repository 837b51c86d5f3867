/*
 * Workload for checkpoint/restore tests of one process.
 *
 * It builds up state (64 MiB of pseudo-random memory, a heap, file offsets, signal handlers, a
 * pending signal, an interval timer, a lowered rlimit, cwd and umask), writes "ready" in its
 * directory, and idles in nanosleep until SIGUSR1. Then it checks every piece of state from
 * inside and exits 0 when all hold, or 100 + the number of the first failed check; the mask of
 * all failures goes to the file "result". Run as: basic DIR
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MEM_SIZE (64UL << 20)
#define FILE_SIZE 20000
#define FILE_POS 12345

static volatile sig_atomic_t verify_now, usr1_count, usr2_count;
static uint64_t *mem;
static uint64_t mem_sum;
static pid_t orig_pid;
static char orig_dir[4096];
static struct timespec before_dump;

struct node { struct node *next; uint64_t value; };
static struct node *list;
static unsigned char *heap_block;

static uint64_t rng_state = 0x1234567887654321ULL;
static uint64_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static uint64_t checksum(const uint64_t *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ULL;
	return h;
}

static void on_usr1(int sig) { (void)sig; usr1_count++; verify_now = 1; }
static void on_usr2(int sig) { (void)sig; usr2_count++; }

static unsigned char file_byte(size_t i) { return (unsigned char)(i * 31 + 7); }

static int fd_rw, fd_append;

static void setup(const char *dir)
{
	setsid();
	if (chdir(dir)) exit(2);
	if (!getcwd(orig_dir, sizeof orig_dir)) exit(2);
	umask(027);
	struct rlimit rl = { 200, 300 };
	if (setrlimit(RLIMIT_NOFILE, &rl)) exit(3);

	mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED) exit(4);
	for (size_t i = 0; i < MEM_SIZE / 8; i++)
		mem[i] = rng();
	mem_sum = checksum(mem, MEM_SIZE / 8);

	heap_block = malloc(1 << 20);
	for (size_t i = 0; i < (1 << 20); i++)
		heap_block[i] = (unsigned char)(i ^ (i >> 8));
	for (uint64_t i = 0; i < 10000; i++) {
		struct node *n = malloc(sizeof *n);
		n->value = i * i;
		n->next = list;
		list = n;
	}

	fd_rw = open("data.bin", O_RDWR | O_CREAT | O_TRUNC, 0600);
	unsigned char buf[FILE_SIZE];
	for (size_t i = 0; i < FILE_SIZE; i++)
		buf[i] = file_byte(i);
	if (write(fd_rw, buf, FILE_SIZE) != FILE_SIZE) exit(5);
	lseek(fd_rw, FILE_POS, SEEK_SET);
	fd_append = open("data.bin", O_WRONLY | O_APPEND);

	struct sigaction sa = { 0 };
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_usr2;
	sigaction(SIGUSR2, &sa, NULL);
	sigset_t s;
	sigemptyset(&s);
	sigaddset(&s, SIGUSR2);
	sigprocmask(SIG_BLOCK, &s, NULL);
	kill(getpid(), SIGUSR2);

	struct itimerval it = { { 0, 0 }, { 3600, 0 } };
	setitimer(ITIMER_REAL, &it, NULL);
	orig_pid = getpid();
	clock_gettime(CLOCK_MONOTONIC, &before_dump);

	int r = open("ready.tmp", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	dprintf(r, "%d\n", getpid());
	close(r);
	rename("ready.tmp", "ready");
}

static unsigned check(void)
{
	unsigned fail = 0;
	/* 0: memory */
	if (checksum(mem, MEM_SIZE / 8) != mem_sum) fail |= 1 << 0;
	/* 1: heap */
	for (size_t i = 0; i < (1 << 20); i++)
		if (heap_block[i] != (unsigned char)(i ^ (i >> 8))) { fail |= 1 << 1; break; }
	uint64_t expect = 9999;
	for (struct node *n = list; n; n = n->next, expect--)
		if (n->value != expect * expect) { fail |= 1 << 1; break; }
	/* 2: file offset, and the bytes there */
	unsigned char b;
	if (lseek(fd_rw, 0, SEEK_CUR) != FILE_POS || read(fd_rw, &b, 1) != 1 || b != file_byte(FILE_POS))
		fail |= 1 << 2;
	/* 3: O_APPEND fd appends at the end */
	struct stat st1, st2;
	fstat(fd_rw, &st1);
	if (!(fcntl(fd_append, F_GETFL) & O_APPEND) || write(fd_append, "appended", 8) != 8) fail |= 1 << 3;
	fstat(fd_rw, &st2);
	if (st2.st_size != st1.st_size + 8) fail |= 1 << 3;
	/* 4: same pid */
	if (getpid() != orig_pid || syscall(SYS_getpid) != orig_pid) fail |= 1 << 4;
	/* 5: SIGUSR2 still pending, delivered once unblocked */
	sigset_t pend, s;
	sigpending(&pend);
	if (!sigismember(&pend, SIGUSR2)) fail |= 1 << 5;
	sigemptyset(&s);
	sigaddset(&s, SIGUSR2);
	sigprocmask(SIG_UNBLOCK, &s, NULL);
	if (usr2_count != 1) fail |= 1 << 5;
	/* 6: interval timer still running */
	struct itimerval it;
	getitimer(ITIMER_REAL, &it);
	if (it.it_value.tv_sec <= 0 || it.it_value.tv_sec > 3600) fail |= 1 << 6;
	/* 7: lowered rlimit */
	struct rlimit rl;
	getrlimit(RLIMIT_NOFILE, &rl);
	if (rl.rlim_cur != 200 || rl.rlim_max != 300) fail |= 1 << 7;
	/* 8: cwd and umask */
	char cwd[4096];
	if (!getcwd(cwd, sizeof cwd) || strcmp(cwd, orig_dir)) fail |= 1 << 8;
	if (umask(027) != 027) fail |= 1 << 8;
	/* 9: malloc and brk still grow */
	void *top = sbrk(0);
	char *grown = sbrk(1 << 20);
	if (grown == (void *)-1 || grown != top) fail |= 1 << 9;
	else memset(grown, 0x5a, 1 << 20);
	char *big = malloc(32 << 20);
	if (!big) fail |= 1 << 9;
	else memset(big, 0xa5, 32 << 20);
	for (int i = 0; i < 1000; i++)
		if (!malloc(100)) { fail |= 1 << 9; break; }
	/* 10: clock_gettime through the vdso agrees with the syscall */
	struct timespec v, k;
	clock_gettime(CLOCK_MONOTONIC, &v);
	syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &k);
	double dv = v.tv_sec + v.tv_nsec * 1e-9, dk = k.tv_sec + k.tv_nsec * 1e-9;
	double d0 = before_dump.tv_sec + before_dump.tv_nsec * 1e-9;
	if (dk - dv < 0 || dk - dv > 0.05 || dv < d0) fail |= 1 << 10;
	/* 11: the SIGUSR1 handler ran exactly once */
	if (usr1_count != 1) fail |= 1 << 11;
	return fail;
}

int main(int argc, char **argv)
{
	if (argc < 2) return 2;
	setup(argv[1]);
	struct timespec ts = { 0, 2 * 1000 * 1000 };
	while (!verify_now)
		nanosleep(&ts, NULL);
	unsigned fail = check();
	int r = open("result", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	dprintf(r, "%#x\n", fail);
	close(r);
	if (!fail) return 0;
	return 100 + __builtin_ctz(fail);
}
