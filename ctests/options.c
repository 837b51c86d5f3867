/*
 * Options whose effect CRIU's libcriu users rely on, against the embedded engine and our criu:
 *
 * - criu_set_log_file: a file name created in the work dir, which defaults to the images dir;
 *   without one the log is "criu.log" there; criu_set_log_level decides what goes in;
 * - criu_set_work_dir_fd / criu_set_images_dir_fd: directories given by descriptor;
 * - criu_set_timeout: the freeze gives up after that many seconds on a task that cannot stop
 *   (a vfork parent waiting for its child), -EBADE with ETIMEDOUT, and the task runs on;
 * - criu_set_freeze_cgroup: refused until cgroups are supported (the embedded engine: -EINVAL with
 *   EOPNOTSUPP).
 *
 * Usage: options /absolute/path/to/criu
 */
#define _GNU_SOURCE
#include <criu.h>
#include <sys/syscall.h>
#include <time.h>

#include "common.h"
#include "workload.h"

static char top[] = "/tmp/criu-rs-options-XXXXXX";

#define NO_SUCH_PID 99999999

static bool file_has(const char *dir, const char *name, const char *text)
{
	char path[PATH_MAX], buf[65536];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	FILE *f = fopen(path, "r");
	if (!f)
		return false;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	return !text || strstr(buf, text);
}

static bool exists(const char *dir, const char *name)
{
	return file_has(dir, name, NULL);
}

static void opts_for(const char *binary, int images)
{
	CHECK_EQ(criu_init_opts(), 0);
	if (binary)
		CHECK_EQ(criu_set_service_binary(binary), 0);
	criu_set_images_dir_fd(images);
}

static void logs(const char *binary)
{
	char img[PATH_MAX], work[PATH_MAX];
	snprintf(img, sizeof img, "%s/%s-img", top, binary ? "swrk" : "embedded");
	snprintf(work, sizeof work, "%s/%s-work", top, binary ? "swrk" : "embedded");
	mkdir(img, 0755);
	mkdir(work, 0755);
	int img_fd = open(img, O_DIRECTORY), work_fd = open(work, O_DIRECTORY);

	/* In the images dir by default, at the level asked for. */
	opts_for(binary, img_fd);
	criu_set_pid(NO_SUCH_PID);
	criu_set_log_file("debug.log");
	criu_set_log_level(4);
	CHECK_EQ(criu_dump(), -EBADE);
	CHECK(file_has(img, "debug.log", "no such process"));
	CHECK(file_has(img, "debug.log", "Dump requested")); /* an info line */

	criu_set_log_file("errors.log");
	criu_set_log_level(1);
	CHECK_EQ(criu_dump(), -EBADE);
	CHECK(file_has(img, "errors.log", "no such process"));
	CHECK(!file_has(img, "errors.log", "Dump requested"));

	/* No name: criu.log. */
	opts_for(binary, img_fd);
	criu_set_pid(NO_SUCH_PID);
	criu_set_log_level(4);
	CHECK_EQ(criu_dump(), -EBADE);
	CHECK(file_has(img, "criu.log", "no such process"));

	/* A work dir takes the log. */
	opts_for(binary, img_fd);
	criu_set_work_dir_fd(work_fd);
	criu_set_pid(NO_SUCH_PID);
	criu_set_log_level(4);
	criu_set_log_file("work.log");
	CHECK_EQ(criu_dump(), -EBADE);
	CHECK(file_has(work, "work.log", "no such process"));
	CHECK(!exists(img, "work.log"));

	close(img_fd);
	close(work_fd);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* A process that cannot be frozen for `seconds`: it is in vfork(), waiting for its child.
 * Exits 42 once the child is done. */
static pid_t unfreezable(int seconds)
{
	pid_t pid = fork();
	if (pid == 0) {
		setsid();
		if (vfork() == 0) {
			struct timespec ts = { seconds, 0 };
			syscall(SYS_nanosleep, &ts, NULL);
			_exit(0);
		}
		_exit(42);
	}
	/* Until the vfork child exists, the parent is still freezable. */
	char path[64], buf[64];
	snprintf(path, sizeof path, "/proc/%d/task/%d/children", pid, pid);
	for (int i = 0; i < 5000; i++) {
		FILE *f = fopen(path, "r");
		size_t n = f ? fread(buf, 1, sizeof buf, f) : 0;
		if (f)
			fclose(f);
		if (n > 0)
			break;
		usleep(1000);
	}
	return pid;
}

static void timeout(const char *binary)
{
	char img[PATH_MAX];
	snprintf(img, sizeof img, "%s/%s-timeout", top, binary ? "swrk" : "embedded");
	mkdir(img, 0755);
	int img_fd = open(img, O_DIRECTORY);

	pid_t pid = unfreezable(4);
	opts_for(binary, img_fd);
	criu_set_pid(pid);
	criu_set_log_level(4);
	criu_set_log_file("dump.log");
	criu_set_timeout(1);
	double t0 = now();
	errno = 0;
	CHECK_EQ(criu_dump(), -EBADE);
	CHECK_EQ(errno, ETIMEDOUT);
	double took = now() - t0;
	printf("%s: a dump with timeout 1 gave up after %.2f s\n", binary ? "swrk" : "embedded", took);
	CHECK(took >= 0.9 && took < 3.5);
	/* The task was left alone: it finishes its vfork and exits normally. */
	CHECK_EQ(wait_code(pid), 42);
	close(img_fd);
}

int main(int argc, char **argv)
{
	if (argc != 2 || argv[1][0] != '/') {
		fprintf(stderr, "usage: %s /absolute/path/to/criu\n", argv[0]);
		return 2;
	}
	check_our_library((void *)criu_set_timeout);
	if (!mkdtemp(top))
		return 2;

	logs(NULL);
	logs(argv[1]);
	timeout(NULL);
	timeout(argv[1]);

	/* Freezing through a cgroup is not implemented yet: refused, not ignored. */
	int img_fd = open(top, O_DIRECTORY);
	opts_for(NULL, img_fd);
	criu_set_pid(NO_SUCH_PID);
	CHECK_EQ(criu_set_freeze_cgroup("/sys/fs/cgroup/criu-rs-test"), 0);
	errno = 0;
	CHECK_EQ(criu_dump(), -EINVAL);
	CHECK_EQ(errno, EOPNOTSUPP);
	close(img_fd);

	if (!failures) {
		char cmd[PATH_MAX + 16];
		snprintf(cmd, sizeof cmd, "rm -rf %s", top);
		if (system(cmd)) {}
	} else {
		fprintf(stderr, "logs left in %s\n", top);
	}
	return finish("options");
}
