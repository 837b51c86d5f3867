/*
 * Self-dump: a process calls criu_dump() without a pid and is dumped, inside that call.
 *
 * A child of ours (its own session, stdio on files, a child of its own) fills a buffer with a
 * pattern and calls criu_dump(). With leave_running the call returns 0 and the child exits
 * 10. Without it the dump kills the child and its child. Then we restore the images with
 * criu_restore_child(): the restored process is back inside the same criu_dump() call, which
 * now returns 1 (its socket to the dumper was rebuilt holding a "restored" answer); it checks
 * its pattern, its pid, its images-dir fd and its own child (restored with it) and exits 11
 * when all hold. With the embedded engine, with the criu binary given on the command line
 * (criu_set_service_binary: the dumper is an exec'd `criu swrk` detached from the child), and
 * with a `criu service` we start (criu_set_service_address; the restore is then
 * criu_restore(), detached, and the restored process comes to us, a subreaper).
 *
 * Usage: self_dump /absolute/path/to/criu
 */
#define _GNU_SOURCE
#include <criu.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "common.h"
#include "workload.h"

#define PATTERN_WORDS (1 << 20)

static char dir[] = "/tmp/criu-rs-selfdump-XXXXXX";

/* How the library reaches a server: nothing set (embedded), a binary, or a service address. */
struct way {
	const char *name;
	const char *binary;
	const char *address;
};

static void use(const struct way *way)
{
	if (way->binary)
		criu_set_service_binary(way->binary);
	if (way->address)
		criu_set_service_address(way->address);
}

/* The dumped process. Exit codes: 10 first return (0), 11 restored return (1) with intact
 * state, 12 restored with broken state, 20 + n: criu_dump returned -n. */
static void self_dumper(const char *img, const struct way *way, bool leave_running)
{
	uint64_t *pattern = malloc(PATTERN_WORDS * sizeof(uint64_t));
	pid_t me;
	int fd, ret, i;

	setsid();
	fd = open("/dev/null", O_RDWR);
	dup2(fd, 0);
	char out[PATH_MAX];
	snprintf(out, sizeof out, "%s/out", img);
	fd = open(out, O_WRONLY | O_CREAT | O_APPEND, 0644);
	dup2(fd, 1);
	dup2(fd, 2);
	close_range(3, ~0U, 0);
	int images = open(img, O_DIRECTORY);
	if (!pattern || images < 0)
		_exit(2);
	for (i = 0; i < PATTERN_WORDS; i++)
		pattern[i] = (uint64_t)i * 0x9e3779b97f4a7c15ULL;
	me = getpid();
	/* A child: a self-dump takes the caller's whole tree. The parent test waits for it when
	 * the dump kills us both, so it writes down its pid. */
	pid_t kid = fork();
	if (kid == 0) {
		for (;;)
			pause();
	}
	char kid_file[PATH_MAX + 8];
	snprintf(kid_file, sizeof kid_file, "%s/kid", img);
	FILE *kf = fopen(kid_file, "w");
	if (!kf || fprintf(kf, "%d\n", kid) < 0 || fclose(kf))
		_exit(4);
	/* Should the restored process never get its answer, it dies instead of hanging the test
	 * (the timer is part of what is dumped and restored). */
	alarm(60);

	if (criu_init_opts())
		_exit(3);
	criu_set_images_dir_fd(images);
	criu_set_log_level(4);
	criu_set_log_file("dump.log");
	criu_set_leave_running(leave_running);
	use(way);

	ret = criu_dump();

	/* Our child is there (restored with us), alive; then it goes. */
	int alive = waitpid(kid, NULL, WNOHANG) == 0;
	kill(kid, SIGKILL);
	int reaped = waitpid(kid, NULL, 0) == kid;
	if (ret == 0)
		_exit(alive && reaped ? 10 : 13);
	if (ret != 1)
		_exit(20 + (-ret & 0x3f));
	if (!alive || !reaped)
		_exit(13);
	/* Restored: same pid, same memory, and the images fd still names the images dir. */
	for (i = 0; i < PATTERN_WORDS; i++)
		if (pattern[i] != (uint64_t)i * 0x9e3779b97f4a7c15ULL)
			_exit(12);
	struct stat a, b;
	if (getpid() != me || fstat(images, &a) || stat(img, &b) || a.st_ino != b.st_ino)
		_exit(12);
	_exit(11);
}

static int never_called(char *action, criu_notify_arg_t na)
{
	(void)na;
	fprintf(stderr, "notification %s reached a self-dumping caller\n", action);
	failures++;
	return 0;
}

static int exit_code(int status)
{
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void show_logs(const char *img)
{
	char cmd[PATH_MAX + 64];
	snprintf(cmd, sizeof cmd, "tail -n 30 %s/dump.log %s/restore.log %s/out", img, img, img);
	if (system(cmd)) {}
}

static void run(const struct way *way, bool leave_running)
{
	char img[PATH_MAX];
	int status, before = failures;

	snprintf(img, sizeof img, "%s/%s-%s", dir, way->name,
		 leave_running ? "leave-running" : "killed");
	mkdir(img, 0755);
	printf("%s\n", img);

	pid_t pid = fork();
	if (pid == 0)
		self_dumper(img, way, leave_running);
	CHECK_EQ(waitpid(pid, &status, 0), pid);
	if (leave_running) {
		CHECK_EQ(exit_code(status), 10); /* criu_dump() returned 0 and it went on */
	} else {
		CHECK_EQ(exit_code(status), 128 + SIGKILL); /* the dump ended it */
		/* and its child, which comes to us, the subreaper: its pid must be free again. */
		char kid_file[PATH_MAX + 8];
		int kid = 0;
		snprintf(kid_file, sizeof kid_file, "%s/kid", img);
		FILE *kf = fopen(kid_file, "r");
		CHECK(kf && fscanf(kf, "%d", &kid) == 1);
		if (kf)
			fclose(kf);
		if (kid > 0)
			CHECK_EQ(wait_code(kid), 128 + SIGKILL);
	}

	int images = open(img, O_DIRECTORY);
	CHECK(images >= 0);
	CHECK_EQ(criu_init_opts(), 0);
	criu_set_images_dir_fd(images);
	criu_set_log_level(4);
	criu_set_log_file("restore.log");
	use(way);
	/* A service cannot make the task our child: it restores detached, and we reap it as
	 * the subreaper once its worker is gone. */
	pid_t restored = way->address ? criu_restore() : criu_restore_child();
	CHECK_EQ(restored, pid);
	if (restored > 0) {
		/* 11: inside the restored process criu_dump() returned 1 and its state held. */
		CHECK_EQ(wait_code(restored), 11);
	}
	close(images);
	if (failures != before) {
		fprintf(stderr, "%s, %s failed; images and logs in %s\n", way->name,
			leave_running ? "leave running" : "killed", img);
		show_logs(img);
	}
}

int main(int argc, char **argv)
{
	check_our_library((void *)criu_dump);
	if (argc != 2 || argv[1][0] != '/') {
		fprintf(stderr, "usage: %s /absolute/path/to/criu\n", argv[0]);
		return 2;
	}
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 2;
	}
	/* Notifications cannot reach a caller frozen by its own dump (CRIU would wait for its
	 * answer to post-dump forever): refused before anything is touched. */
	int images = open(dir, O_DIRECTORY);
	CHECK_EQ(criu_init_opts(), 0);
	criu_set_images_dir_fd(images);
	criu_set_log_file("notify.log");
	criu_set_notify_cb(never_called);
	errno = 0;
	CHECK_EQ(criu_dump(), -EBADE);
	CHECK_EQ(errno, EBADRQC);
	close(images);

	if (prctl(PR_SET_CHILD_SUBREAPER, 1)) {
		perror("PR_SET_CHILD_SUBREAPER");
		return 2;
	}
	char sock_path[PATH_MAX];
	snprintf(sock_path, sizeof sock_path, "%s/criu.sock", dir);
	pid_t service = start_service(argv[1], sock_path);
	const struct way ways[] = {
		{ "embedded", NULL, NULL },
		{ "swrk", argv[1], NULL },
		{ "service", NULL, sock_path },
	};
	for (size_t i = 0; i < sizeof ways / sizeof ways[0]; i++) {
		run(&ways[i], true);
		run(&ways[i], false);
	}
	kill(service, SIGTERM);
	waitpid(service, NULL, 0);
	if (!failures) {
		char cmd[PATH_MAX + 16];
		snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
		if (system(cmd)) {}
	}
	return finish("self_dump");
}
