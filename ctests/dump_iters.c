/*
 * Iterative migration through the C API: criu_pre_dump() once, then criu_dump_iters() pre-dumps
 * a running task three times (its callback moving the images directory and the parent link on
 * to the next iteration, as p.haul and OpenJ9 do) and then dumps it; criu_restore_child() brings
 * it back. The task (the generations workload: 512 MiB, the same 0.5% of its pages rewritten
 * every round) then checks that every page holds the generation it had at the final freeze.
 *
 * Also: each pre-dump after the first writes far fewer pages than the first (stats-dump), and
 * a callback returning < 0 aborts with that value and leaves the task running.
 *
 * Once embedded, once through `criu swrk`.
 * Usage: dump_iters GENERATIONS_BINARY /absolute/path/to/criu
 */
#define _GNU_SOURCE
#include <criu.h>
#include <stdint.h>
#include <sys/prctl.h>

#include "common.h"
#include "workload.h"

static char top[] = "/tmp/criu-rs-ctest-XXXXXX";
static char base[256];
static int iteration;
static int img_fds[8] = { -1, -1, -1, -1, -1, -1, -1, -1 };

static pid_t start_generations(const char *bin, const char *dir)
{
	char path[PATH_MAX];
	pid_t pid = fork();
	if (pid == 0) {
		int null = open("/dev/null", O_RDWR);
		dup2(null, 0);
		snprintf(path, sizeof path, "%s/out", dir);
		int o = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		dup2(o, 1);
		dup2(o, 2);
		close_range(3, ~0U, 0);
		execl(bin, bin, dir, "512", "5", "fixed", (char *)NULL);
		_exit(127);
	}
	/* Ready once the first round (every page) is written. */
	snprintf(path, sizeof path, "%s/progress", dir);
	for (int i = 0; i < 30000; i++) {
		struct stat st;
		if (stat(path, &st) == 0 && st.st_size > 0)
			return pid;
		usleep(1000);
	}
	fprintf(stderr, "generations in %s did not start\n", dir);
	kill(pid, SIGKILL);
	exit(1);
}

static int open_iteration(int n)
{
	char p[PATH_MAX];
	snprintf(p, sizeof p, "%s/%d", base, n);
	mkdir(p, 0755);
	img_fds[n] = open(p, O_DIRECTORY);
	return img_fds[n];
}

/* After each pre-dump: the next iteration goes into the next directory, parented on this one. */
static int more(criu_predump_info pi)
{
	(void)pi;
	char parent[32];
	snprintf(parent, sizeof parent, "../%d", iteration);
	iteration++;
	criu_set_images_dir_fd(open_iteration(iteration));
	CHECK_EQ(criu_set_parent_images(parent), 0);
	return iteration <= 3 ? 1 : 0;
}

static int give_up(criu_predump_info pi)
{
	(void)pi;
	return -42;
}

static long varint(const unsigned char *b, ssize_t n, ssize_t *at)
{
	long v = 0;
	for (int shift = 0; *at < n && shift < 63; shift += 7) {
		unsigned char c = b[(*at)++];
		v |= (long)(c & 0x7f) << shift;
		if (!(c & 0x80))
			return v;
	}
	return -1;
}

/* pages_written (field 7 of dump_stats_entry) from DIR/stats-dump. */
static long pages_written(const char *dir)
{
	char p[PATH_MAX];
	unsigned char b[512];
	snprintf(p, sizeof p, "%s/stats-dump", dir);
	int fd = open(p, O_RDONLY);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, b, sizeof b);
	close(fd);
	/* Two magics, the entry's length, then stats_entry{1: dump_stats_entry}. */
	ssize_t at = 12;
	if (n < 14 || b[at++] != 0x0a)
		return -1;
	long len = varint(b, n, &at);
	ssize_t end = at + len;
	if (len < 0 || end > n)
		return -1;
	while (at < end) {
		long tag = varint(b, n, &at);
		if (tag < 0 || (tag & 7) != 0)
			return -1;
		long v = varint(b, n, &at);
		if (tag >> 3 == 7)
			return v;
	}
	return -1;
}

static void run(const char *gen, const char *criu, int use_swrk)
{
	int before = failures;
	long written[5] = { 0 };
	char d[PATH_MAX];
	snprintf(base, sizeof base, "%s/%s", top, use_swrk ? "swrk" : "embedded");
	mkdir(base, 0755);
	pid_t pid = start_generations(gen, base);

	CHECK_EQ(criu_init_opts(), 0);
	if (use_swrk)
		CHECK_EQ(criu_set_service_binary(criu), 0);
	criu_set_pid(pid);
	criu_set_log_level(4);
	CHECK_EQ(criu_set_log_file("dump.log"), 0);
	criu_set_track_mem(true);

	/* One pre-dump on its own (SINGLE_PRE_DUMP): every page. */
	criu_set_images_dir_fd(open_iteration(0));
	CHECK_EQ(criu_pre_dump(), 0);
	snprintf(d, sizeof d, "%s/0", base);
	written[0] = pages_written(d);
	CHECK(written[0] >= 131072);
	/* A callback that gives up: its value comes back, the task runs on. */
	CHECK_EQ(criu_dump_iters(give_up), -42);
	CHECK_EQ(kill(pid, 0), 0);
	CHECK_EQ(waitpid(pid, NULL, WNOHANG), 0);

	/* Three pre-dumps and the dump, each on top of the previous iteration. */
	iteration = 1;
	criu_set_images_dir_fd(open_iteration(1));
	CHECK_EQ(criu_set_parent_images("../0"), 0);
	int ret = criu_dump_iters(more);
	CHECK_EQ(ret, 0);
	if (ret != 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		goto out;
	}
	int status;
	CHECK_EQ(waitpid(pid, &status, 0), pid);

	for (int i = 1; i <= 4; i++) {
		snprintf(d, sizeof d, "%s/%d", base, i);
		written[i] = pages_written(d);
	}
	/* 512 MiB is 131072 pages; later iterations copy what changed (the same 0.5% each round). */
	for (int i = 1; i <= 4; i++)
		CHECK(written[i] >= 0 && written[i] < written[0] / 4);

	CHECK_EQ(criu_set_log_file("restore.log"), 0);
	criu_set_images_dir_fd(img_fds[4]);
	pid_t restored = criu_restore_child();
	CHECK_EQ(restored, pid);
	if (restored > 0) {
		kill(restored, SIGUSR1);
		CHECK_EQ(wait_code(restored), 0);
	}
out:
	criu_free_opts();
	for (int i = 0; i <= 4; i++)
		close(img_fds[i]);
	printf("%s: pages written %ld %ld %ld %ld %ld: %s\n", use_swrk ? "criu swrk" : "embedded",
	       written[0], written[1], written[2], written[3], written[4],
	       failures == before ? "ok" : "FAILED");
}

int main(int argc, char **argv)
{
	if (argc != 3 || argv[2][0] != '/') {
		fprintf(stderr, "usage: %s GENERATIONS_BINARY /absolute/path/to/criu\n", argv[0]);
		return 2;
	}
	check_our_library((void *)criu_dump_iters);
	prctl(PR_SET_CHILD_SUBREAPER, 1);
	if (!mkdtemp(top))
		return 2;
	run(argv[1], argv[2], 0);
	run(argv[1], argv[2], 1);
	if (!failures) {
		char cmd[PATH_MAX + 16];
		snprintf(cmd, sizeof cmd, "rm -rf %s", top);
		if (system(cmd)) {}
	} else {
		fprintf(stderr, "images and logs left in %s\n", top);
	}
	return finish("dump_iters");
}
