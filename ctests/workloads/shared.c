/*
 * Workload for memory shared between processes: a parent and a child sharing an anonymous
 * MAP_SHARED region and a MAP_SHARED mapping of a /dev/shm file, plus 32 MiB of private memory
 * the child inherited (copy-on-write). On SIGUSR1 the child writes a token into both shared
 * regions and waits for the parent's answer there; the parent waits for the token, answers,
 * checks the patterns, reaps the child and exits 0 (1: child failed, 2: pattern, 3: timeout).
 * Run as: shared DIR
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

#define SHM_SIZE (1 << 20)
#define PRIV_SIZE (32 << 20)

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }

static int wait_word(volatile uint64_t *w, uint64_t v)
{
	for (int i = 0; i < 5000; i++) {
		if (*w == v) return 1;
		usleep(1000);
	}
	return 0;
}

static void idle(void)
{
	struct timespec ms = { 0, 1000 * 1000 };
	while (!go)
		nanosleep(&ms, NULL);
}

int main(int argc, char **argv)
{
	if (argc < 2 || chdir(argv[1])) return 9;
	setsid();
	struct sigaction sa = { 0 };
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	volatile uint64_t *shm = mmap(NULL, SHM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	char path[64];
	snprintf(path, sizeof path, "/dev/shm/criu-rs-shared-%d", getpid());
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || ftruncate(fd, 65536)) return 9;
	volatile uint64_t *file = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	uint64_t *priv = mmap(NULL, PRIV_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (shm == MAP_FAILED || file == MAP_FAILED || priv == MAP_FAILED) return 9;
	for (size_t i = 100; i < SHM_SIZE / 8; i++) shm[i] = i * 3;
	for (size_t i = 100; i < 65536 / 8; i++) file[i] = i * 5;
	for (size_t i = 0; i < PRIV_SIZE / 8; i++) priv[i] = i * 7;

	pid_t child = fork();
	if (child == 0) {
		/* The child changes a little of its private copy: the rest stays shared. */
		for (size_t i = 0; i < 512; i++) priv[i] = ~priv[i];
		FILE *f = fopen("child.ready", "w");
		fclose(f);
		idle();
		shm[1] = 0xC0DE;
		file[1] = 0xC0DE;
		int ok = wait_word(&shm[2], 0xBEEF) && wait_word(&file[2], 0xBEEF);
		for (size_t i = 0; i < PRIV_SIZE / 8; i++)
			if (priv[i] != (i < 512 ? ~(i * 7) : i * 7)) ok = 0;
		_exit(ok ? 0 : 1);
	}
	while (access("child.ready", F_OK)) usleep(1000);
	FILE *f = fopen("ready.tmp", "w");
	fprintf(f, "%d %d %s\n", getpid(), child, path);
	fclose(f);
	rename("ready.tmp", "ready");
	idle();
	if (!wait_word(&shm[1], 0xC0DE) || !wait_word(&file[1], 0xC0DE)) return 3;
	shm[2] = 0xBEEF;
	file[2] = 0xBEEF;
	int st;
	waitpid(child, &st, 0);
	unlink(path);
	if (!WIFEXITED(st) || WEXITSTATUS(st)) return 1;
	for (size_t i = 100; i < SHM_SIZE / 8; i++) if (shm[i] != i * 3) return 2;
	for (size_t i = 100; i < 65536 / 8; i++) if (file[i] != i * 5) return 2;
	for (size_t i = 0; i < PRIV_SIZE / 8; i++) if (priv[i] != i * 7) return 2;
	return 0;
}
