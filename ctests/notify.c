/*
 * criu_set_notify_cb against real servers (the embedded engine, then `criu swrk`): the
 * actions arrive in CRIU's order with CRIU's pids, and a callback returning non-zero stops the
 * operation with the callback's value as the return code.
 *
 * One basic workload (ctests/workloads/basic.c) per server:
 * - dumps aborted at pre-dump, query-ext-files and post-dump each return the callback's value
 *   and leave the workload running, untraced;
 * - a full dump records pre-dump, query-ext-files, post-dump (CRIU 4.2 sends query-ext-files
 *   to every RPC client that asked for notifications; no network-lock/unlock without a network
 *   namespace);
 * - restores aborted at pre-restore (no task made) and post-restore (the task is killed);
 * - a full restore records pre-restore, post-restore (with the pid), pre-resume, post-resume,
 *   and the restored task passes its own checks;
 * - a restore whose pre-resume callback fails returns the callback's value but, as with CRIU,
 *   the task is already complete and runs on: it passes its checks too.
 *
 * Usage: notify WORKLOAD_BINARY /absolute/path/to/criu
 */
#define _GNU_SOURCE
#include <criu.h>

#include "common.h"
#include "workload.h"

#define ABORTED (-77)

static char top[] = "/tmp/criu-rs-notify-XXXXXX";

static char seen[16][32];
static int seen_pid[16], n_seen;
static const char *abort_at;

static int record(char *action, criu_notify_arg_t na)
{
	if (n_seen < 16) {
		snprintf(seen[n_seen], sizeof seen[n_seen], "%s", action);
		seen_pid[n_seen] = criu_notify_pid(na);
		n_seen++;
	}
	return abort_at && !strcmp(action, abort_at) ? ABORTED : 0;
}

static void reset(const char *abort_action)
{
	n_seen = 0;
	abort_at = abort_action;
}

/* The recorded actions, comma-separated. */
static const char *actions(void)
{
	static char buf[512];
	buf[0] = '\0';
	for (int i = 0; i < n_seen; i++) {
		if (i)
			strcat(buf, ",");
		strcat(buf, seen[i]);
	}
	return buf;
}

#define CHECK_ACTIONS(want)                                                                 \
	do {                                                                                \
		if (strcmp(actions(), want)) {                                              \
			fprintf(stderr, "%s:%d: actions %s, expected %s\n", __FILE__, __LINE__, \
				actions(), want);                                           \
			failures++;                                                         \
		}                                                                           \
	} while (0)

static void setup(const char *criu, int img_fd, const char *log)
{
	CHECK_EQ(criu_init_opts(), 0);
	if (criu)
		CHECK_EQ(criu_set_service_binary(criu), 0);
	criu_set_images_dir_fd(img_fd);
	criu_set_log_level(4);
	criu_set_log_file(log);
	criu_set_notify_cb(record);
}

static void run(const char *workload, const char *criu)
{
	const char *name = criu ? "criu swrk" : "embedded";
	char dir[256], img[PATH_MAX];
	int before = failures, status;

	snprintf(dir, sizeof dir, "%s/%s", top, criu ? "swrk" : "embedded");
	snprintf(img, sizeof img, "%s/img", dir);
	mkdir(dir, 0755);
	mkdir(img, 0755);
	int img_fd = open(img, O_DIRECTORY);
	pid_t pid = start_workload(workload, dir);

	/* Aborted dumps: the callback's value comes back and the task runs on untouched. */
	static const char *dump_stages[] = { "pre-dump", "query-ext-files", "post-dump" };
	static const char *dump_seen[] = { "pre-dump", "pre-dump,query-ext-files",
					   "pre-dump,query-ext-files,post-dump" };
	for (int i = 0; i < 3; i++) {
		setup(criu, img_fd, "dump.log");
		criu_set_pid(pid);
		reset(dump_stages[i]);
		CHECK_EQ(criu_dump(), ABORTED);
		CHECK_ACTIONS(dump_seen[i]);
		CHECK(running_untraced(pid));
	}

	/* The whole dump. */
	setup(criu, img_fd, "dump.log");
	criu_set_pid(pid);
	reset(NULL);
	CHECK_EQ(criu_dump(), 0);
	CHECK_ACTIONS("pre-dump,query-ext-files,post-dump");
	for (int i = 0; i < n_seen; i++)
		CHECK_EQ(seen_pid[i], 0); /* CRIU sends no pid with these */
	CHECK_EQ(waitpid(pid, &status, 0), pid);
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

	/* Aborted before the task exists: nothing is left. */
	setup(criu, img_fd, "restore.log");
	reset("pre-restore");
	CHECK_EQ(criu_restore_child(), ABORTED);
	CHECK_ACTIONS("pre-restore");
	CHECK(kill(pid, 0) == -1 && errno == ESRCH);

	/* Aborted once the task exists: it is killed (it is our child: we reap it). */
	reset("post-restore");
	CHECK_EQ(criu_restore_child(), ABORTED);
	CHECK_ACTIONS("pre-restore,post-restore");
	CHECK_EQ(seen_pid[1], pid);
	CHECK_EQ(waitpid(pid, &status, 0), pid);
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

	/* The whole restore, then the task checks itself. */
	reset(NULL);
	CHECK_EQ(criu_restore_child(), pid);
	CHECK_ACTIONS("pre-restore,post-restore,pre-resume,post-resume");
	CHECK_EQ(seen_pid[0], 0);
	CHECK_EQ(seen_pid[1], pid); /* post-restore carries the pid */
	CHECK_EQ(seen_pid[2], 0);
	CHECK_EQ(seen_pid[3], 0);
	kill(pid, SIGUSR1);
	CHECK_EQ(wait_code(pid), 0);

	/* A failing pre-resume: CRIU only reports it; the complete task runs on. */
	reset("pre-resume");
	CHECK_EQ(criu_restore_child(), ABORTED);
	CHECK_ACTIONS("pre-restore,post-restore,pre-resume");
	CHECK(running_untraced(pid));
	kill(pid, SIGUSR1);
	CHECK_EQ(wait_code(pid), 0);

	criu_free_opts();
	close(img_fd);
	printf("%s: %s\n", name, failures == before ? "ok" : "FAILED");
	if (failures != before)
		fprintf(stderr, "%s: images and logs left in %s\n", name, img);
}

int main(int argc, char **argv)
{
	if (argc != 3 || argv[2][0] != '/') {
		fprintf(stderr, "usage: %s WORKLOAD /absolute/path/to/criu\n", argv[0]);
		return 2;
	}
	check_our_library((void *)criu_set_notify_cb);
	if (!mkdtemp(top)) {
		perror("mkdtemp");
		return 2;
	}
	run(argv[1], NULL);
	run(argv[1], argv[2]);
	if (!failures) {
		char cmd[PATH_MAX + 16];
		snprintf(cmd, sizeof cmd, "rm -rf %s", top);
		if (system(cmd)) {}
	}
	return finish("notify");
}
