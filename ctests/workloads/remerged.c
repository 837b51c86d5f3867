/*
 * Workload for a mapping that loses its write tracking to an mremap merge: when a tracked
 * mapping is moved back next to the tracked mapping it was split from, the kernel merges the
 * two and drops the userfaultfd of the whole merged mapping, but the pages that were not
 * moved keep their write protection; a write while it is untracked goes through and leaves the
 * protection on, and an mprotect cycle makes such a page writable with the protection on.
 *
 * Three pages, one mapping, each page filled with a pattern of (page, version). "ready"
 * appears when they are. Each SIGUSR2 takes the next step and writes its number to "step":
 *   1: page 2 is moved away (mremap) to a free place further up;
 *   2: it is moved back (the kernel merges it again), page 0 goes through mprotect
 *      NONE/READ/RW, pages 0 and 2 are rewritten (version 2);
 *   3: pages 0 and 1 are rewritten (page 0 to version 3, page 1 to version 2).
 * On SIGUSR1 it checks the three pages: exit 0 when all match, 1 when one is wrong, 3 on a
 * setup error. Run as: remerged DIR
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
#define WORDS (PAGE / 8)

static volatile sig_atomic_t stop_now, steps_asked;
static void on_usr1(int sig) { (void)sig; stop_now = 1; }
static void on_usr2(int sig) { (void)sig; steps_asked++; }

static uint64_t *pages;
static uint64_t version[3] = { 1, 1, 1 };

static void fill(unsigned p)
{
	for (size_t k = 0; k < WORDS; k++)
		pages[p * WORDS + k] = version[p] << 40 ^ (uint64_t)p << 32 ^ k;
}

static void say(const char *name, int n)
{
	char buf[16];
	int len = snprintf(buf, sizeof buf, "%d\n", n);
	int fd = open(name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, buf, len) != len)
		exit(3);
	close(fd);
}

int main(int argc, char **argv)
{
	if (argc < 2 || chdir(argv[1]))
		return 3;
	setsid();
	/* A reservation keeps other mappings away from the pages and from where page 2 goes. */
	char *area = mmap(NULL, 64 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (area == MAP_FAILED)
		return 3;
	munmap(area + 16 * PAGE, 3 * PAGE);
	munmap(area + 40 * PAGE, PAGE);
	pages = mmap(area + 16 * PAGE, 3 * PAGE, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (pages != (uint64_t *)(area + 16 * PAGE))
		return 3;
	for (unsigned p = 0; p < 3; p++)
		fill(p);
	struct sigaction sa = { 0 };
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_usr2;
	sigaction(SIGUSR2, &sa, NULL);
	say("ready", 1);
	int step = 0;
	char *page2 = (char *)pages + 2 * PAGE, *away = area + 40 * PAGE;
	while (!stop_now) {
		if (step < steps_asked) {
			step++;
			if (step == 1) {
				if (mremap(page2, PAGE, PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, away) != away)
					return 3;
			} else if (step == 2) {
				if (mremap(away, PAGE, PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, page2) != page2)
					return 3;
				mprotect(pages, PAGE, PROT_NONE);
				mprotect(pages, PAGE, PROT_READ);
				mprotect(pages, PAGE, PROT_READ | PROT_WRITE);
				version[0] = version[2] = 2;
				fill(0);
				fill(2);
			} else if (step == 3) {
				version[0] = 3;
				version[1] = 2;
				fill(0);
				fill(1);
			}
			say("step", step);
		}
		usleep(1000);
	}
	for (unsigned p = 0; p < 3; p++)
		for (size_t k = 0; k < WORDS; k++) {
			uint64_t want = version[p] << 40 ^ (uint64_t)p << 32 ^ k;
			if (pages[p * WORDS + k] != want) {
				fprintf(stderr, "page %u word %zu: %#lx, want %#lx (version %lu)\n", p, k,
					(unsigned long)pages[p * WORDS + k], (unsigned long)want,
					(unsigned long)version[p]);
				return 1;
			}
		}
	printf("checked 3 pages\n");
	return 0;
}
