/*
 * Every return code of criu.h's table, provoked on purpose against real servers (the embedded
 * engine, our criu binary) or, for answers our servers never give, against this program run
 * as a misbehaving `swrk` server:
 *
 *   -EBADE         the server ran the request and it failed; errno is cr_errno: ESRCH (no such
 *                  process), EEXIST (the pid to restore is taken), EBADRQC (bad options),
 *                  EOPNOTSUPP (an option our criu does not implement yet)
 *   -ECONNREFUSED  no server: a service address nobody listens on, a bad service fd
 *   -ECOMM         the server went away without answering (a "criu" that is /bin/true)
 *   -EINVAL        refused before or by the server: an option the embedded engine does not
 *                  implement (errno EOPNOTSUPP), a missing callback, an EMPTY answer
 *   -EBADMSG       an answer of another type than the request
 *
 * Usage: errors WORKLOAD_BINARY /absolute/path/to/criu
 */
#define _GNU_SOURCE
#include <criu.h>

#include "common.h"
#include "workload.h"

static char top[] = "/tmp/criu-rs-errors-XXXXXX";

/* Above pid_max: never a process. */
#define NO_SUCH_PID 99999999

/* ---- This program as a broken server: `errors swrk FD` ----------------------------------- */

/* Reads one request and answers it as FAKE_ANSWER says: "wrong-type" or "refuse". */
static int fake_swrk(int sk)
{
	const char *how = getenv("FAKE_ANSWER");
	struct req r;

	if (recv_req(sk, &r))
		return 1;
	if (how && !strcmp(how, "refuse"))
		send_resp(sk, REQ_EMPTY, 0, NULL);
	else
		send_resp(sk, r.type == REQ_VERSION ? REQ_CHECK : REQ_VERSION, 1, NULL);
	return 0;
}

/* ---- The cases ---------------------------------------------------------------------------- */

static int images;

static void fresh_opts(const char *binary)
{
	CHECK_EQ(criu_init_opts(), 0);
	if (binary)
		CHECK_EQ(criu_set_service_binary(binary), 0);
	criu_set_images_dir_fd(images);
	criu_set_log_level(4);
	criu_set_log_file("errors.log");
}

#define EXPECT(call, code, err)                                                             \
	do {                                                                                \
		errno = 12345;                                                              \
		int _r = (call);                                                            \
		int _e = errno;                                                             \
		CHECK_EQ(_r, code);                                                         \
		if ((err) >= 0)                                                             \
			CHECK_EQ(_e, err);                                                  \
	} while (0)

/* -EBADE with the errno CRIU puts in cr_errno, from the embedded engine or `binary`. */
static void failed_requests(const char *binary, const char *workload)
{
	char dir[256];

	fresh_opts(binary);
	criu_set_pid(NO_SUCH_PID);
	EXPECT(criu_dump(), -EBADE, ESRCH);

	/* A log file outside the work dir: CRIU's "bad options". */
	fresh_opts(binary);
	criu_set_pid(getpid());
	criu_set_log_file("sub/dump.log");
	EXPECT(criu_dump(), -EBADE, EBADRQC);

	/* The pid to restore is taken: dump a task that keeps running, restore while it runs. */
	snprintf(dir, sizeof dir, "%s/%s", top, binary ? "swrk" : "embedded");
	mkdir(dir, 0755);
	pid_t pid = start_workload(workload, dir);
	int dir_fd = open(dir, O_DIRECTORY);
	fresh_opts(binary);
	criu_set_images_dir_fd(dir_fd);
	criu_set_pid(pid);
	criu_set_leave_running(true);
	EXPECT(criu_dump(), 0, 0);
	CHECK(running_untraced(pid));
	EXPECT(criu_restore_child(), -EBADE, EEXIST);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	close(dir_fd);
}

int main(int argc, char **argv)
{
	char self[PATH_MAX];
	ssize_t n;

	if (argc == 3 && !strcmp(argv[1], "swrk"))
		return fake_swrk(atoi(argv[2]));
	if (argc != 3 || argv[2][0] != '/') {
		fprintf(stderr, "usage: %s WORKLOAD /absolute/path/to/criu\n", argv[0]);
		return 2;
	}
	check_our_library((void *)criu_dump);
	n = readlink("/proc/self/exe", self, sizeof self - 1);
	if (n <= 0 || !mkdtemp(top))
		return 2;
	self[n] = '\0';
	images = open(top, O_DIRECTORY);

	/* -EBADE */
	failed_requests(NULL, argv[1]);
	failed_requests(argv[2], argv[1]);
	/* Our criu decides about options itself: not implemented yet is -EBADE, EOPNOTSUPP. */
	fresh_opts(argv[2]);
	criu_set_pid(getpid());
	CHECK_EQ(criu_set_freeze_cgroup("/sys/fs/cgroup/criu-rs-test"), 0);
	EXPECT(criu_dump(), -EBADE, EOPNOTSUPP);

	/* -ECONNREFUSED: errno says why. */
	fresh_opts(NULL);
	CHECK_EQ(criu_set_service_address("/nonexistent/criu_service.socket"), 0);
	EXPECT(criu_check(), -ECONNREFUSED, ENOENT);
	EXPECT(criu_get_version(), -ECONNREFUSED, ENOENT);
	criu_set_service_fd(-1);
	EXPECT(criu_check(), -ECONNREFUSED, -1);

	/* -ECOMM: the "server" exits without a word. */
	fresh_opts("/bin/true");
	EXPECT(criu_check(), -ECOMM, -1);
	criu_set_pid(NO_SUCH_PID);
	EXPECT(criu_dump(), -ECOMM, -1);

	/* -EINVAL: the embedded engine refuses what it does not implement before it forks. */
	fresh_opts(NULL);
	criu_set_pid(getpid());
	CHECK_EQ(criu_set_freeze_cgroup("/sys/fs/cgroup/criu-rs-test"), 0);
	EXPECT(criu_dump(), -EINVAL, EOPNOTSUPP);
	EXPECT(criu_dump_iters(NULL), -EINVAL, -1);
	EXPECT(criu_feature_check(NULL, 0), -EINVAL, -1);
	/* ... and a server that answers EMPTY, success false, refused the request. */
	setenv("FAKE_ANSWER", "refuse", 1);
	fresh_opts(self);
	EXPECT(criu_check(), -EINVAL, -1);

	/* -EBADMSG: an answer of the wrong type. */
	setenv("FAKE_ANSWER", "wrong-type", 1);
	fresh_opts(self);
	EXPECT(criu_check(), -EBADMSG, -1);
	EXPECT(criu_get_version(), -EBADMSG, -1);
	criu_set_pid(NO_SUCH_PID);
	EXPECT(criu_dump(), -EBADMSG, -1);
	unsetenv("FAKE_ANSWER");

	/* None of the servers forked for us is left behind. */
	CHECK(waitpid(-1, NULL, WNOHANG) == -1 && errno == ECHILD);

	close(images);
	if (!failures) {
		char cmd[PATH_MAX + 16];
		snprintf(cmd, sizeof cmd, "rm -rf %s", top);
		if (system(cmd)) {}
	} else {
		fprintf(stderr, "logs left in %s\n", top);
	}
	return finish("errors");
}
