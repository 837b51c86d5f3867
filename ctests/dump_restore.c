/*
 * Checkpoint and restore through the C API, by each way the library reaches an engine:
 *
 * - embedded (the default, no criu binary): criu_dump() after criu_set_pid(), then
 *   criu_restore_child(), which makes the task our child again;
 * - criu_set_service_binary(our criu): the same through `criu swrk`;
 * - criu_set_service_address(): a `criu service --address` we start; criu_restore() restores
 *   the task detached (a child of the service's worker, reparented to us, a subreaper);
 * - criu_set_service_fd(): a socket to a `criu swrk` we start ourselves, one per operation (the
 *   library closes it after each); criu_restore() again.
 *
 * Each time a child running the basic workload (ctests/workloads/basic.c) is dumped (which
 * kills it) and restored under its pid; the restored task checks its own state on SIGUSR1 and
 * exits 0 when everything holds.
 *
 * Usage: dump_restore WORKLOAD_BINARY /absolute/path/to/criu
 */
#define _GNU_SOURCE
#include <criu.h>
#include <sys/prctl.h>

#include "common.h"
#include "workload.h"

static char top[] = "/tmp/criu-rs-ctest-XXXXXX";

enum way { EMBEDDED, BINARY, SERVICE, FD };
static const char *way_name[] = { "embedded", "criu swrk", "criu service", "service fd" };

/* Starts `criu swrk` on one end of a new socket pair; returns the other end. */
static int start_swrk(const char *criu, pid_t *pid)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv))
		return -1;
	*pid = fork();
	if (*pid == 0) {
		char fd[16];
		snprintf(fd, sizeof fd, "%d", sv[1]);
		close(sv[0]);
		execl(criu, criu, "swrk", fd, (char *)NULL);
		_exit(127);
	}
	close(sv[1]);
	return sv[0];
}

static void round_trip(enum way way, const char *workload, const char *criu)
{
	char dir[256], img[PATH_MAX], sock_path[PATH_MAX];
	pid_t service = -1, swrk = -1;
	int before = failures, status;

	snprintf(dir, sizeof dir, "%s/%d", top, way);
	snprintf(img, sizeof img, "%s/img", dir);
	mkdir(dir, 0755);
	mkdir(img, 0755);

	pid_t pid = start_workload(workload, dir);
	int img_fd = open(img, O_DIRECTORY);
	CHECK(img_fd >= 0);
	CHECK_EQ(criu_init_opts(), 0);
	switch (way) {
	case EMBEDDED:
		break;
	case BINARY:
		CHECK_EQ(criu_set_service_binary(criu), 0);
		break;
	case SERVICE:
		snprintf(sock_path, sizeof sock_path, "%s/criu.sock", dir);
		service = start_service(criu, sock_path);
		CHECK_EQ(criu_set_service_address(sock_path), 0);
		break;
	case FD:
		criu_set_service_fd(start_swrk(criu, &swrk));
		break;
	}
	criu_set_pid(pid);
	criu_set_images_dir_fd(img_fd);
	criu_set_log_level(4);
	CHECK_EQ(criu_set_log_file("dump.log"), 0);
	int ret = criu_dump();
	CHECK_EQ(ret, 0);
	if (ret != 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		goto out;
	}
	/* The dump killed the task; reap it so its pid is free again. */
	CHECK_EQ(waitpid(pid, &status, 0), pid);
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

	if (way == FD) {
		/* That swrk served its one request and is gone; the restore gets a new one. */
		CHECK_EQ(waitpid(swrk, &status, 0), swrk);
		CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
		criu_set_service_fd(start_swrk(criu, &swrk));
	}
	CHECK_EQ(criu_set_log_file("restore.log"), 0);
	bool detached = way == SERVICE || way == FD;
	pid_t restored = detached ? criu_restore() : criu_restore_child();
	CHECK_EQ(restored, pid);
	if (way == FD)
		CHECK_EQ(waitpid(swrk, &status, 0), swrk);
	if (restored > 0) {
		if (!detached) {
			/* A child of ours at once: waitpid works on it. */
			CHECK_EQ(waitpid(restored, &status, WNOHANG), 0);
		}
		kill(restored, SIGUSR1);
		CHECK_EQ(wait_code(restored), 0);
	}
out:
	criu_free_opts();
	close(img_fd);
	if (service > 0) {
		kill(service, SIGTERM);
		waitpid(service, NULL, 0);
	}
	printf("%s: %s\n", way_name[way], failures == before ? "ok" : "FAILED");
	if (failures != before)
		fprintf(stderr, "%s: images and logs left in %s\n", way_name[way], img);
}

int main(int argc, char **argv)
{
	if (argc != 3 || argv[2][0] != '/') {
		fprintf(stderr, "usage: %s WORKLOAD /absolute/path/to/criu\n", argv[0]);
		return 2;
	}
	check_our_library((void *)criu_dump);
	/* Tasks restored detached by the service end up with us. */
	if (prctl(PR_SET_CHILD_SUBREAPER, 1)) {
		perror("PR_SET_CHILD_SUBREAPER");
		return 2;
	}
	if (!mkdtemp(top)) {
		perror("mkdtemp");
		return 2;
	}
	round_trip(EMBEDDED, argv[1], argv[2]);
	round_trip(BINARY, argv[1], argv[2]);
	round_trip(SERVICE, argv[1], argv[2]);
	round_trip(FD, argv[1], argv[2]);
	if (!failures) {
		char cmd[PATH_MAX + 16];
		snprintf(cmd, sizeof cmd, "rm -rf %s", top);
		if (system(cmd)) {}
	}
	return finish("dump_restore");
}
