/*
 * Workload for iterative migration: keeps writing generation numbers into a region of MIB MiB.
 * Round 0 writes every page; round g > 0 writes the pages i with (i + 37 g) % 1000 < PERMIL
 * (with "fixed": i % 1000 < PERMIL, the same pages every round; "rot" or nothing: rotating),
 * in ascending order, so which generation each page must hold follows from the current round
 * and position alone. A page holds 512 words, word k = gen << 32 ^ (i * 512 + k).
 *
 * With "churn" it also keeps 32 side regions busy: mapped, filled, moved with mremap,
 * write-protected and unprotected, half dropped with MADV_DONTNEED (then zero), unmapped and
 * mapped again, each holding a pattern of its (slot, version) that is checked too.
 *
 * On SIGUSR2 it forks a child (at the end of a round) that waits for SIGUSR1, then exits 0; its
 * pid goes into "child". On SIGUSR1 it stops at a page boundary and checks every page and live side region against
 * what they must hold; exit 0 when all match (1: a page, 2: a side region, 3: setup).
 * "progress" holds the round number, rewritten after each round.
 * With MIBPS, rounds after the first are paced to write about MIBPS MiB per second.
 * Run as: generations DIR MIB PERMIL [churn|fixed|rot] [MIBPS]
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define WORDS (PAGE / 8)
#define SLOTS 32

static volatile sig_atomic_t stop_now, fork_now;
static void on_usr1(int sig) { (void)sig; stop_now = 1; }
static void on_usr2(int sig) { (void)sig; fork_now = 1; }

static size_t npages;
static unsigned permil, stride = 37;
/* Current round, and the pages below pos_now that it has written. */
static volatile uint64_t round_now, pos_now;

static int written_in(uint64_t i, uint64_t g)
{
	return g == 0 || (i + stride * g) % 1000 < permil;
}

/* The generation page i holds when round `g` has written pages [0, pos). */
static uint64_t expected(uint64_t i, uint64_t g, uint64_t pos)
{
	if (written_in(i, g) && i < pos)
		return g;
	for (uint64_t k = g; k-- > 0;)
		if (written_in(i, k))
			return k;
	return UINT64_MAX; /* unreachable: round 0 writes all */
}

static void fill(uint64_t *p, uint64_t i, uint64_t gen)
{
	for (uint64_t k = 0; k < WORDS; k++)
		p[k] = gen << 32 ^ (i * WORDS + k);
}

/* What churn did to a slot, kept in the task's own memory so a restored task can tell. */
struct op {
	char what; /* m)apped, M)oved, P)rotect cycle begun, p) ended, w)ritten, d)ropped half, u)nmapped */
	uint64_t version, addr, len;
	struct timespec at; /* CLOCK_REALTIME, to set against the dumper's logs */
};
#define HISTORY 12

struct slot {
	uint64_t *addr;
	size_t len;
	/* Bytes from here on were dropped with MADV_DONTNEED: they must read as zero. */
	size_t zero_from;
	uint64_t version;
	int live;
	unsigned ops;
	struct op history[HISTORY];
};
static struct slot slots[SLOTS];

static void fill_slot(struct slot *s, unsigned n)
{
	for (size_t k = 0; k < s->len / 8; k++)
		s->addr[k] = (s->version << 40) ^ ((uint64_t)n << 32) ^ k;
	s->zero_from = s->len;
}

static void note(struct slot *s, char what)
{
	struct op *o = &s->history[s->ops++ % HISTORY];
	o->what = what;
	o->version = s->version;
	o->addr = (uintptr_t)s->addr;
	o->len = s->len;
	clock_gettime(CLOCK_REALTIME, &o->at);
}

/* 1 when the slot holds what it must; otherwise says where it differs and what befell it. */
static int check_slot(struct slot *s, unsigned n)
{
	for (size_t k = 0; k < s->len / 8; k++) {
		uint64_t want = k * 8 >= s->zero_from ? 0 : (s->version << 40) ^ ((uint64_t)n << 32) ^ k;
		if (s->addr[k] == want)
			continue;
		fprintf(stderr, "slot %u at %#lx (%zu pages, zero from byte %zu): word %zu is %#lx "
			"(version %lu), want %#lx\n", n, (unsigned long)(uintptr_t)s->addr, s->len / PAGE,
			s->zero_from, k, (unsigned long)s->addr[k], (unsigned long)(s->addr[k] >> 40),
			(unsigned long)want);
		for (unsigned i = s->ops > HISTORY ? s->ops - HISTORY : 0; i < s->ops; i++) {
			struct op *o = &s->history[i % HISTORY];
			fprintf(stderr, "  %ld.%09ld %c version %lu at %#lx, %lu pages\n",
				(long)o->at.tv_sec, o->at.tv_nsec, o->what, (unsigned long)o->version,
				(unsigned long)o->addr, (unsigned long)(o->len / PAGE));
		}
		return 0;
	}
	return 1;
}

static uint64_t rng = 88172645463325252ULL;
static uint64_t next_rand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/* One step of side-region churn: every kind of mapping change a pre-dump can race with. */
static void churn(void)
{
	unsigned n = next_rand() % SLOTS;
	struct slot *s = &slots[n];
	if (!s->live) {
		s->len = (1 + next_rand() % 64) * PAGE;
		s->addr = mmap(NULL, s->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (s->addr == MAP_FAILED)
			exit(3);
		s->version++;
		fill_slot(s, n);
		s->live = 1;
		note(s, 'm');
		return;
	}
	switch (next_rand() % 5) {
	case 0: /* move it */
	{
		void *to = mmap(NULL, s->len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		void *moved = mremap(s->addr, s->len, s->len, MREMAP_MAYMOVE | MREMAP_FIXED, to);
		if (moved == MAP_FAILED)
			exit(3);
		s->addr = moved;
		note(s, 'M');
		break;
	}
	case 1: /* protect and unprotect */
		note(s, 'P');
		mprotect(s->addr, s->len, PROT_NONE);
		mprotect(s->addr, s->len, PROT_READ);
		mprotect(s->addr, s->len, PROT_READ | PROT_WRITE);
		note(s, 'p');
		break;
	case 2: /* rewrite */
		s->version++;
		fill_slot(s, n);
		note(s, 'w');
		break;
	case 3: /* drop the second half's pages: they read as zero from now on */
	{
		size_t half = s->len / 2 / PAGE * PAGE;
		if (half < s->zero_from) {
			madvise((char *)s->addr + half, s->len - half, MADV_DONTNEED);
			s->zero_from = half;
			note(s, 'd');
		}
		break;
	}
	default: /* drop */
		munmap(s->addr, s->len);
		s->live = 0;
		note(s, 'u');
	}
}

int main(int argc, char **argv)
{
	if (argc < 4 || chdir(argv[1]))
		return 3;
	setsid();
	size_t size = (size_t)atol(argv[2]) << 20;
	permil = (unsigned)atoi(argv[3]);
	int with_churn = argc > 4 && !strcmp(argv[4], "churn");
	if (argc > 4 && !strcmp(argv[4], "fixed"))
		stride = 0;
	double mibps = argc > 5 ? atof(argv[5]) : 0;
	npages = size / PAGE;
	uint64_t *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return 3;
	/* Page-sized tracking granularity: no transparent huge pages. */
	madvise(mem, size, MADV_NOHUGEPAGE);
	struct sigaction sa = { 0 };
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_usr2;
	sigaction(SIGUSR2, &sa, NULL);
	int progress = open("progress", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	char buf[32];
	struct timespec breather = { 0, 2 * 1000 * 1000 };
	for (uint64_t g = 0;; g++) {
		struct timespec round_start;
		clock_gettime(CLOCK_MONOTONIC, &round_start);
		pos_now = 0;
		round_now = g;
		for (uint64_t i = 0; i < npages; i++) {
			if (stop_now)
				goto check;
			if (!written_in(i, g))
				continue;
			fill(mem + i * WORDS, i, g);
			pos_now = i + 1;
			if (with_churn && i % 256 == 0)
				churn();
		}
		pos_now = npages;
		if (fork_now) {
			fork_now = 0;
			pid_t kid = fork();
			if (kid == 0) {
				while (!stop_now)
					pause();
				_exit(0);
			}
			int cf = open("child", O_WRONLY | O_CREAT | O_TRUNC, 0644);
			dprintf(cf, "%d\n", kid);
			close(cf);
		}
		int len = snprintf(buf, sizeof buf, "%20lu\n", (unsigned long)g);
		pwrite(progress, buf, len, 0);
		if (mibps > 0 && g > 0) {
			/* This round's share of the rate, from its start. */
			double secs = (double)npages * permil / 1000 * PAGE / (mibps * 1048576);
			struct timespec until = round_start;
			until.tv_sec += (time_t)secs;
			until.tv_nsec += (long)((secs - (time_t)secs) * 1e9);
			if (until.tv_nsec >= 1000000000L) {
				until.tv_sec++;
				until.tv_nsec -= 1000000000L;
			}
			while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) && !stop_now)
				;
		} else {
			nanosleep(&breather, NULL);
		}
	}
check:;
	uint64_t g = round_now, pos = pos_now;
	for (uint64_t i = 0; i < npages; i++) {
		uint64_t want = expected(i, g, pos);
		uint64_t *p = mem + i * WORDS;
		for (uint64_t k = 0; k < WORDS; k++)
			if (p[k] != (want << 32 ^ (i * WORDS + k))) {
				fprintf(stderr, "page %lu word %lu: %#lx, want generation %lu (round %lu pos %lu)\n",
					(unsigned long)i, (unsigned long)k, (unsigned long)p[k],
					(unsigned long)want, (unsigned long)g, (unsigned long)pos);
				return 1;
			}
	}
	for (unsigned n = 0; n < SLOTS; n++)
		if (slots[n].live && !check_slot(&slots[n], n)) {
			fprintf(stderr, "side region %u (version %lu) is wrong\n", n,
				(unsigned long)slots[n].version);
			return 2;
		}
	printf("checked %zu pages at round %lu\n", npages, (unsigned long)g);
	return 0;
}
