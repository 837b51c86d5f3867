/*
 * Workload for what a parent and a child share without being threads: the parent clones one
 * child with CLONE_FS (mode "fs") or with CLONE_FILES (mode "files"), writes "PARENT CHILD" to
 * "ready", and waits for SIGUSR1 (sent to both). The two talk through an anonymous MAP_SHARED
 * page.
 *   fs: the child chdirs into "a" and sets umask 027; the parent must see both, then chdirs
 *       into "b" and sets umask 077, which the child must see.
 *   files: the child first takes a POSIX write lock on bytes 0-9 of "lockfile" (it belongs to
 *       the shared table); after SIGUSR1 it opens a file, the parent must find it open at the
 *       same fd number, closes it, and the child must find it closed.
 * The parent exits 0 when both sides saw the other's change (1: the child failed, 2: the parent
 * did not see the child's change, 3: timeout).
 *   siblings: the parent clones two children with CLONE_FILES, then unshares its own table, so
 *       only the two siblings share one; "ready" has "PARENT CHILD1 CHILD2". On SIGUSR1 the
 *       first child opens a file, the second must find it open at that number; exits like
 *       "files".
 * Run as: sharing DIR fs|files|siblings
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
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

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }

/* [0]: the child's change is done (its fd number + 1 in "files"); [1]: the parent's is done;
 * [3]: the child is set up. */
static volatile int64_t *flag;
static int files_mode, siblings_mode;

static int wait_flag(int i)
{
	for (int n = 0; n < 5000; n++) {
		if (flag[i]) return 1;
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

static int ends_with(const char *s, const char *tail)
{
	size_t a = strlen(s), b = strlen(tail);
	return a >= b && !strcmp(s + a - b, tail);
}

static mode_t current_umask(void)
{
	mode_t m = umask(0);
	umask(m);
	return m;
}

/* The second sibling: finds the fd the first one opened, and closes it. */
static int sibling_main(void *arg)
{
	(void)arg;
	idle();
	if (!wait_flag(0)) return 3;
	int fd = (int)flag[0] - 1;
	if (fcntl(fd, F_GETFD) == -1) return 2;
	close(fd);
	flag[1] = 1;
	return 0;
}

static int child_main(void *arg)
{
	(void)arg;
	if (files_mode && !siblings_mode) {
		int lk = open("lockfile", O_RDWR | O_CREAT, 0600);
		struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10 };
		if (lk < 0 || fcntl(lk, F_SETLK, &fl)) return 9;
	}
	flag[3] = 1;
	idle();
	if (files_mode) {
		int fd = open("/dev/null", O_RDONLY);
		flag[0] = fd + 1;
		if (!wait_flag(1)) return 3;
		return fcntl(fd, F_GETFD) == -1 ? 0 : 1;
	}
	if (chdir("a")) return 1;
	umask(027);
	flag[0] = 1;
	if (!wait_flag(1)) return 3;
	char cwd[4096];
	if (!getcwd(cwd, sizeof cwd) || !ends_with(cwd, "/b")) return 1;
	return current_umask() == 077 ? 0 : 1;
}

int main(int argc, char **argv)
{
	if (argc < 3 || chdir(argv[1])) return 9;
	siblings_mode = !strcmp(argv[2], "siblings");
	files_mode = siblings_mode || !strcmp(argv[2], "files");
	setsid();
	mkdir("a", 0755);
	mkdir("b", 0755);
	struct sigaction sa = { 0 };
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	flag = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (flag == MAP_FAILED) return 9;
	size_t stack_size = 1 << 20;
	char *stack = mmap(NULL, stack_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (stack == MAP_FAILED) return 9;
	int share = files_mode ? CLONE_FILES : CLONE_FS;
	pid_t child = clone(child_main, stack + stack_size, share | SIGCHLD, NULL);
	if (child < 0) return 9;
	if (siblings_mode) {
		char *stack2 = mmap(NULL, stack_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (stack2 == MAP_FAILED) return 9;
		pid_t second = clone(sibling_main, stack2 + stack_size, CLONE_FILES | SIGCHLD, NULL);
		if (second < 0 || unshare(CLONE_FILES)) return 9;
		FILE *f = fopen("ready.tmp", "w");
		fprintf(f, "%d %d %d\n", getpid(), child, second);
		fclose(f);
		rename("ready.tmp", "ready");
		idle();
		int st1, st2;
		if (waitpid(child, &st1, 0) != child || waitpid(second, &st2, 0) != second) return 9;
		if (!WIFEXITED(st2) || WEXITSTATUS(st2)) return WIFEXITED(st2) ? WEXITSTATUS(st2) : 9;
		return WIFEXITED(st1) && !WEXITSTATUS(st1) ? 0 : 1;
	}
	if (!wait_flag(3)) return 9;
	FILE *f = fopen("ready.tmp", "w");
	fprintf(f, "%d %d\n", getpid(), child);
	fclose(f);
	rename("ready.tmp", "ready");
	idle();
	if (!wait_flag(0)) return 3;
	if (files_mode) {
		int fd = (int)flag[0] - 1;
		if (fcntl(fd, F_GETFD) == -1) return 2;
		close(fd);
	} else {
		char cwd[4096];
		if (!getcwd(cwd, sizeof cwd) || !ends_with(cwd, "/a")) return 2;
		if (current_umask() != 027) return 2;
		if (chdir("../b")) return 2;
		umask(077);
	}
	flag[1] = 1;
	int st;
	if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st)) return 1;
	return 0;
}
