/*
 * Workload for interrupted dumps: holds MiB of pseudo-random memory and bumps a heartbeat
 * counter in the file "beat" every millisecond. On SIGUSR1 it checks that its memory, its
 * signal mask and its handler are intact and exits 0 (1: memory, 2: mask, 3: handler).
 * Run as: heartbeat DIR MIB
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

static volatile sig_atomic_t stop_now;
static void on_usr1(int sig) { (void)sig; stop_now = 1; }

static uint64_t checksum(const uint64_t *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ULL;
	return h;
}

int main(int argc, char **argv)
{
	if (argc < 3 || chdir(argv[1])) return 9;
	setsid();
	size_t size = (size_t)atol(argv[2]) << 20;
	uint64_t *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED) return 9;
	uint64_t x = 0x9e3779b97f4a7c15ULL;
	for (size_t i = 0; i < size / 8; i++) {
		x ^= x << 13; x ^= x >> 7; x ^= x << 17;
		mem[i] = x;
	}
	uint64_t sum = checksum(mem, size / 8);
	struct sigaction sa = { 0 };
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	int beat = open("beat", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	char buf[32];
	struct timespec ms = { 0, 1000 * 1000 };
	for (unsigned long n = 1; !stop_now; n++) {
		int len = snprintf(buf, sizeof buf, "%20lu\n", n);
		pwrite(beat, buf, len, 0);
		for (volatile int spin = 0; spin < 20000; spin++)
			;
		nanosleep(&ms, NULL);
	}
	if (checksum(mem, size / 8) != sum) return 1;
	sigset_t cur;
	sigprocmask(SIG_BLOCK, NULL, &cur);
	if (!sigisemptyset(&cur)) return 2;
	struct sigaction now;
	sigaction(SIGUSR1, NULL, &now);
	if (now.sa_handler != on_usr1) return 3;
	return 0;
}
