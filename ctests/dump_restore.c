/*
 * Checkpoint and restore through the C API with the default (embedded) engine: a child running
 * the basic workload (ctests/workloads/basic.c) is dumped with criu_dump() after
 * criu_set_pid(), then brought back with criu_restore_child(), which makes it our child again.
 * The restored task checks its own state on SIGUSR1 and exits 0 when everything holds.
 *
 * Usage: dump_restore WORKLOAD_BINARY
 */
#define _GNU_SOURCE
#include <criu.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include "common.h"

static char dir[] = "/tmp/criu-rs-ctest-XXXXXX";

static pid_t start_workload(const char *bin)
{
	pid_t pid = fork();
	if (pid == 0) {
		int null = open("/dev/null", O_RDWR);
		dup2(null, 0);
		char out[PATH_MAX];
		snprintf(out, sizeof out, "%s/out", dir);
		int o = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		dup2(o, 1);
		dup2(o, 2);
		close_range(3, ~0U, 0);
		execl(bin, bin, dir, (char *)NULL);
		_exit(127);
	}
	char ready[PATH_MAX];
	snprintf(ready, sizeof ready, "%s/ready", dir);
	for (int i = 0; i < 10000; i++) {
		struct stat st;
		if (stat(ready, &st) == 0 && st.st_size > 0)
			return pid;
		usleep(1000);
	}
	fprintf(stderr, "workload did not get ready\n");
	kill(pid, SIGKILL);
	exit(1);
}

static int wait_code(pid_t pid)
{
	int status;
	for (int i = 0; i < 30000; i++) {
		pid_t r = waitpid(pid, &status, WNOHANG);
		if (r == pid)
			return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
		usleep(1000);
	}
	kill(pid, SIGKILL);
	return -1;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s WORKLOAD\n", argv[0]);
		return 2;
	}
	check_our_library((void *)criu_dump);
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 2;
	}
	char img[PATH_MAX];
	snprintf(img, sizeof img, "%s/img", dir);
	mkdir(img, 0755);

	pid_t pid = start_workload(argv[1]);
	int img_fd = open(img, O_DIRECTORY);
	CHECK(img_fd >= 0);
	CHECK_EQ(criu_init_opts(), 0);
	criu_set_pid(pid);
	criu_set_images_dir_fd(img_fd);
	criu_set_log_level(4);
	CHECK_EQ(criu_set_log_file("dump.log"), 0);
	int ret = criu_dump();
	CHECK_EQ(ret, 0);
	if (ret != 0) {
		kill(pid, SIGKILL);
		return finish("dump_restore");
	}
	/* The dump killed the task; reap it so its pid is free again. */
	int status;
	CHECK_EQ(waitpid(pid, &status, 0), pid);
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

	CHECK_EQ(criu_set_log_file("restore.log"), 0);
	pid_t restored = criu_restore_child();
	CHECK_EQ(restored, pid);
	if (restored > 0) {
		/* A child of ours: waitpid works on it. */
		CHECK_EQ(waitpid(restored, &status, WNOHANG), 0);
		kill(restored, SIGUSR1);
		CHECK_EQ(wait_code(restored), 0);
	}
	criu_free_opts();
	close(img_fd);
	if (!failures) {
		char cmd[PATH_MAX + 16];
		snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
		if (system(cmd)) {}
	} else {
		fprintf(stderr, "images and logs left in %s\n", img);
	}
	return finish("dump_restore");
}
