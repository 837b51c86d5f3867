/*
 * Workload for pre-dumps of memory whose page tables the kernel frees: a tracked anonymous
 * mapping loses a whole 2 MiB-aligned block to MADV_DONTNEED (the kernel then frees the block's
 * page table too), and another mapping is unmapped and mapped again, untouched, at the same
 * address. Both must read as zero after a restore, however much the earlier images hold there.
 *
 * Three 8 MiB regions, 2 MiB-aligned, are filled with a pattern of (region, page). "ready"
 * appears when they are. On SIGUSR2: region 1 drops [2 MiB, 6 MiB) with MADV_DONTNEED, region
 * 2 is unmapped and mapped again at its address, and "dropped" appears. On SIGUSR1 it checks
 * every page: exit 0 when all match, 1 when a page is wrong, 3 on a setup error.
 * Run as: dropped DIR
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096UL
#define BLOCK (2UL << 20)
#define REGION (8UL << 20)
#define REGIONS 3

static volatile sig_atomic_t stop_now, drop_now;
static void on_usr1(int sig) { (void)sig; stop_now = 1; }
static void on_usr2(int sig) { (void)sig; drop_now = 1; }

static uint64_t *regions[REGIONS];
static int dropped;

static uint64_t word(unsigned r, size_t page, size_t k)
{
	return (uint64_t)(r + 1) << 48 ^ (uint64_t)page << 16 ^ k;
}

static uint64_t expected(unsigned r, size_t page, size_t k)
{
	size_t off = page * PAGE;
	if (dropped && r == 1 && off >= BLOCK && off < 3 * BLOCK)
		return 0;
	if (dropped && r == 2)
		return 0;
	return word(r, page, k);
}

static void touch(const char *name)
{
	int fd = open(name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, "1\n", 2) != 2)
		exit(3);
	close(fd);
}

int main(int argc, char **argv)
{
	if (argc < 2 || chdir(argv[1]))
		return 3;
	setsid();
	/* One reservation, so the regions are aligned and no other mapping shares their blocks. */
	char *all = mmap(NULL, (REGIONS * 2 + 1) * REGION, PROT_NONE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (all == MAP_FAILED)
		return 3;
	char *base = (char *)(((uintptr_t)all + REGION - 1) & ~(REGION - 1));
	for (unsigned r = 0; r < REGIONS; r++) {
		/* A PROT_NONE gap between regions keeps their VMAs apart. */
		void *p = mmap(base + 2 * r * REGION, REGION, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
		if (p == MAP_FAILED || madvise(p, REGION, MADV_NOHUGEPAGE))
			return 3;
		regions[r] = p;
		for (size_t page = 0; page < REGION / PAGE; page++)
			for (size_t k = 0; k < PAGE / 8; k++)
				regions[r][page * PAGE / 8 + k] = word(r, page, k);
	}
	struct sigaction sa = { 0 };
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_usr2;
	sigaction(SIGUSR2, &sa, NULL);
	touch("ready");
	while (!stop_now) {
		if (drop_now && !dropped) {
			if (madvise((char *)regions[1] + BLOCK, 2 * BLOCK, MADV_DONTNEED))
				return 3;
			if (munmap(regions[2], REGION))
				return 3;
			if (mmap(regions[2], REGION, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0) != regions[2])
				return 3;
			madvise(regions[2], REGION, MADV_NOHUGEPAGE);
			dropped = 1;
			touch("dropped");
		}
		usleep(1000);
	}
	for (unsigned r = 0; r < REGIONS; r++)
		for (size_t page = 0; page < REGION / PAGE; page++)
			for (size_t k = 0; k < PAGE / 8; k++)
				if (regions[r][page * PAGE / 8 + k] != expected(r, page, k)) {
					fprintf(stderr, "region %u page %zu word %zu: %#lx, want %#lx\n", r,
						page, k, (unsigned long)regions[r][page * PAGE / 8 + k],
						(unsigned long)expected(r, page, k));
					return 1;
				}
	printf("checked %d regions\n", REGIONS);
	return 0;
}
