/*
 * A caller that is not root gets CRIU's answer, through the embedded engine and our criu: it
 * may ask for the version and features, but criu_check() fails (the kernel check says what is
 * missing) and dumps and restores are refused as CRIU's check_caps refuses them: -EBADE with
 * errno EBADRQC, the reason in the log. The target is left alone.
 *
 * Runs as root and drops to nobody (65534) in a child.
 *
 * Usage: unprivileged /absolute/path/to/criu
 */
#define _GNU_SOURCE
#include <criu.h>
#include <grp.h>
#include <sys/prctl.h>

#include "common.h"
#include "workload.h"

static char top[] = "/tmp/criu-rs-unpriv-XXXXXX";

static bool log_says(const char *name, const char *text)
{
	char path[PATH_MAX], buf[16384];
	snprintf(path, sizeof path, "%s/%s", top, name);
	FILE *f = fopen(path, "r");
	if (!f)
		return false;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	return strstr(buf, text) != NULL;
}

static void as_nobody(const char *binary, int images)
{
	const char *name = binary ? "criu swrk" : "embedded";
	char log[64];

	CHECK_EQ(criu_init_opts(), 0);
	if (binary)
		CHECK_EQ(criu_set_service_binary(binary), 0);
	CHECK_EQ(criu_get_version(), 40200);
	CHECK_EQ(criu_check(), -EBADE);
	CHECK_EQ(errno, ENOSYS);

	/* A child of ours, same uid: ptrace would allow it, CRIU's rules do not. */
	pid_t pid = fork();
	if (pid == 0) {
		setsid();
		for (;;)
			pause();
	}
	snprintf(log, sizeof log, "%s.log", binary ? "swrk" : "embedded");
	criu_set_images_dir_fd(images);
	criu_set_log_file(log);
	criu_set_pid(pid);
	errno = 0;
	CHECK_EQ(criu_dump(), -EBADE);
	CHECK_EQ(errno, EBADRQC);
	CHECK(log_says(log, "CAP_CHECKPOINT_RESTORE"));
	CHECK(running_untraced(pid));
	errno = 0;
	CHECK_EQ(criu_restore_child(), -EBADE);
	CHECK_EQ(errno, EBADRQC);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	printf("%s as nobody: %s\n", name, failures ? "FAILED" : "refused as expected");
}

int main(int argc, char **argv)
{
	int status;

	if (argc != 2 || argv[1][0] != '/') {
		fprintf(stderr, "usage: %s /absolute/path/to/criu\n", argv[0]);
		return 2;
	}
	check_our_library((void *)criu_dump);
	if (!mkdtemp(top) || chmod(top, 0777))
		return 2;
	int images = open(top, O_DIRECTORY);
	/* nobody may not be able to reach the binary where it was built (a checkout in a 0700
	 * directory): it runs a copy of it from here. */
	char criu[PATH_MAX + 8], cmd[3 * PATH_MAX];
	snprintf(criu, sizeof criu, "%s/criu", top);
	snprintf(cmd, sizeof cmd, "cp '%s' '%s' && chmod 755 '%s'", argv[1], criu, criu);
	if (system(cmd))
		return 2;

	pid_t child = fork();
	if (child == 0) {
		/* Dumpable again after the uid change, like any process started as nobody: its
		 * /proc/PID/fd (where servers find images_dir_fd) belongs to it then. */
		if (setgroups(0, NULL) || setgid(65534) || setuid(65534) ||
		    prctl(PR_SET_DUMPABLE, 1)) {
			perror("dropping to nobody");
			_exit(2);
		}
		as_nobody(NULL, images);
		as_nobody(criu, images);
		fflush(stdout);
		_exit(failures ? 1 : 0);
	}
	CHECK_EQ(waitpid(child, &status, 0), child);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);

	close(images);
	if (!failures) {
		snprintf(cmd, sizeof cmd, "rm -rf %s", top);
		if (system(cmd)) {}
	} else {
		fprintf(stderr, "logs left in %s\n", top);
	}
	return finish("unprivileged");
}
