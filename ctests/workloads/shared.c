/*
 * Workload for memory shared between processes: a parent and a child sharing an anonymous
 * MAP_SHARED region, a MAP_SHARED mapping of a /dev/shm file, a sealed memfd (fd at MEMFD_FD
 * with its offset, plus a MAP_SHARED mapping of it), a memfd only mapped (its fd closed; shared,
 * and privately with one word changed), a write-sealed memfd (fd and read-only mapping),
 * plus 32 MiB of private memory the child inherited (copy-on-write). On SIGUSR1 the child
 * writes a token into every shared region and waits for the parent's answer there; the parent
 * waits for the token (in the memfd also through its fd), answers, checks the patterns and the
 * memfd's name, size, seals (also F_SEAL_FUTURE_WRITE, added after the mapping) and offset,
 * reaps the child and exits 0 (1: child failed, 2: pattern, 3: timeout, 4: memfd state).
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
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SHM_SIZE (1 << 20)
#define PRIV_SIZE (32 << 20)
#define MEMFD_SIZE (65536 + 100)
#define MEMFD_FD 42
#define MEMFD_POS 1234
#define MEMFD_SEALS (F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_FUTURE_WRITE)
#define SEALED_FD 43

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
	/* A sealed memfd, kept open at MEMFD_FD and mapped; a second one only mapped. */
	int mfd = memfd_create("criu-rs memfd", MFD_ALLOW_SEALING);
	if (mfd < 0 || dup2(mfd, MEMFD_FD) != MEMFD_FD || ftruncate(MEMFD_FD, MEMFD_SIZE)) return 9;
	close(mfd);
	volatile uint64_t *mem = mmap(NULL, MEMFD_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, MEMFD_FD, 0);
	if (mem == MAP_FAILED) return 9;
	for (size_t i = 100; i < MEMFD_SIZE / 8; i++) mem[i] = i * 11;
	if (fcntl(MEMFD_FD, F_ADD_SEALS, MEMFD_SEALS) || lseek(MEMFD_FD, MEMFD_POS, SEEK_SET) != MEMFD_POS) return 9;
	int mfd2 = memfd_create("criu-rs mapped", 0);
	if (mfd2 < 0 || ftruncate(mfd2, 8192)) return 9;
	volatile uint64_t *mem2 = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, mfd2, 0);
	/* A private (copy-on-write) mapping of the same memfd, changed in one word. */
	volatile uint64_t *cow = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE, mfd2, 0);
	close(mfd2);
	if (mem2 == MAP_FAILED || cow == MAP_FAILED) return 9;
	for (size_t i = 100; i < 8192 / 8; i++) mem2[i] = i * 13;
	cow[5] = 77;
	/* A write-sealed memfd at SEALED_FD (read-write fd), mapped read-only. */
	int mfd3 = memfd_create("criu-rs sealed", MFD_ALLOW_SEALING);
	if (mfd3 < 0 || dup2(mfd3, SEALED_FD) != SEALED_FD || ftruncate(SEALED_FD, 4096)) return 9;
	close(mfd3);
	if (pwrite(SEALED_FD, "sealed!", 8, 100) != 8) return 9;
	if (fcntl(SEALED_FD, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SEAL)) return 9;
	volatile char *ro = mmap(NULL, 4096, PROT_READ, MAP_SHARED, SEALED_FD, 0);
	if (ro == MAP_FAILED) return 9;
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
		mem[1] = 0xC0DE;
		mem2[1] = 0xC0DE;
		int ok = wait_word(&shm[2], 0xBEEF) && wait_word(&file[2], 0xBEEF) &&
			 wait_word(&mem[2], 0xBEEF) && wait_word(&mem2[2], 0xBEEF);
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
	if (!wait_word(&shm[1], 0xC0DE) || !wait_word(&file[1], 0xC0DE) ||
	    !wait_word(&mem[1], 0xC0DE) || !wait_word(&mem2[1], 0xC0DE)) return 3;
	/* The child's write is in the file the fd reads too. */
	uint64_t word = 0;
	if (pread(MEMFD_FD, &word, 8, 8) != 8 || word != 0xC0DE) return 4;
	shm[2] = 0xBEEF;
	file[2] = 0xBEEF;
	mem[2] = 0xBEEF;
	mem2[2] = 0xBEEF;
	/* The memfd: name, size, seals (growing it must fail), offset, contents past the last page. */
	char link[256] = { 0 };
	struct stat sb;
	if (readlink("/proc/self/fd/" "42", link, sizeof link - 1) < 0 ||
	    strcmp(link, "/memfd:criu-rs memfd (deleted)")) return 4;
	if (fstat(MEMFD_FD, &sb) || sb.st_size != MEMFD_SIZE) return 4;
	if (fcntl(MEMFD_FD, F_GET_SEALS) != MEMFD_SEALS) return 4;
	if (ftruncate(MEMFD_FD, 2 * MEMFD_SIZE) == 0) return 4;
	/* F_SEAL_FUTURE_WRITE: no new writes through the fd, while the older mapping writes on. */
	if (pwrite(MEMFD_FD, "x", 1, 0) != -1) return 4;
	if (lseek(MEMFD_FD, 0, SEEK_CUR) != MEMFD_POS) return 4;
	for (size_t i = 100; i < MEMFD_SIZE / 8; i++) if (mem[i] != i * 11) return 2;
	for (size_t i = 100; i < 8192 / 8; i++) if (mem2[i] != i * 13) return 2;
	/* The private mapping kept its own word and sees the shared one's contents elsewhere. */
	if (cow[5] != 77 || mem2[5] != 0 || cow[100] != 100 * 13) return 4;
	/* The write-sealed memfd: sealed, unwritable, its contents there. */
	if (fcntl(SEALED_FD, F_GET_SEALS) != (F_SEAL_WRITE | F_SEAL_SEAL)) return 4;
	if (write(SEALED_FD, "x", 1) != -1 || (fcntl(SEALED_FD, F_GETFL) & O_ACCMODE) != O_RDWR) return 4;
	if (memcmp((const char *)ro + 100, "sealed!", 8)) return 4;
	int st;
	waitpid(child, &st, 0);
	unlink(path);
	if (!WIFEXITED(st) || WEXITSTATUS(st)) return 1;
	for (size_t i = 100; i < SHM_SIZE / 8; i++) if (shm[i] != i * 3) return 2;
	for (size_t i = 100; i < 65536 / 8; i++) if (file[i] != i * 5) return 2;
	for (size_t i = 0; i < PRIV_SIZE / 8; i++) if (priv[i] != i * 7) return 2;
	return 0;
}
