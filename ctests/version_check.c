/*
 * criu_get_version, criu_check_version, criu_check and criu_feature_check against real
 * servers: the default embedded one (no criu binary involved), and `BINARY swrk FD` with the
 * binary given by absolute path on the command line. Also a self-dump request through each, so
 * that the detached-server path runs, and no child process may be left behind.
 */
#define _GNU_SOURCE
#include <criu.h>
#include <fcntl.h>
#include <sys/wait.h>

#include "common.h"

static void check_server(const char *what)
{
	struct criu_feature_check fc = { .mem_track = true, .lazy_pages = true, .pidfd_store = true };
	unsigned char *raw = (unsigned char *)&fc;
	size_t i;

	printf("%s: version %d\n", what, criu_get_version());
	CHECK_EQ(criu_get_version(), CRIU_VERSION_MAJOR * 10000 + CRIU_VERSION_MINOR * 100 + CRIU_VERSION_SUBLEVEL);
	CHECK_EQ(criu_check_version(40200), 1);
	CHECK_EQ(criu_check_version(40300), 0);
	CHECK_EQ(criu_check(), 0);
	CHECK_EQ(criu_feature_check(&fc, sizeof(fc)), 0);
	for (i = 0; i < sizeof(fc); i++)
		CHECK(raw[i] == 0 || raw[i] == 1);
	printf("%s: mem_track %d lazy_pages %d pidfd_store %d\n", what, fc.mem_track, fc.lazy_pages,
	       fc.pidfd_store);
}

/* A dump of ourselves, left running: the server detaches from our tree first. This test is
 * usually no session leader and may write to a pipe, which the engine refuses (-EBADE); what
 * matters here is the round trip through a detached server. ctests/self_dump.c does whole
 * self-dumps and restores them. */
static void self_dump(const char *what, int images)
{
	int ret;

	criu_set_images_dir_fd(images);
	criu_set_leave_running(true);
	criu_set_log_file("self-dump.log");
	errno = 0;
	ret = criu_dump();
	printf("%s: self-dump returned %d (errno %d)\n", what, ret, errno);
	CHECK(ret == 0 || ret == -EBADE);
}

/* Threads forking embedded servers at the same time, each with its own options: the helpers
 * are forked from a multi-threaded process, which must not deadlock them. */
static void *versions_in_parallel(void *arg)
{
	criu_opts *o = NULL;
	long bad = 0;
	int i;

	(void)arg;
	if (criu_local_init_opts(&o))
		return (void *)1L;
	for (i = 0; i < 20; i++)
		bad += criu_local_get_version(o) != 40200;
	criu_local_free_opts(o);
	return (void *)bad;
}

static void parallel_embedded(void)
{
	pthread_t t[4];
	void *bad;
	int i;

	for (i = 0; i < 4; i++)
		CHECK_EQ(pthread_create(&t[i], NULL, versions_in_parallel, NULL), 0);
	for (i = 0; i < 4; i++) {
		pthread_join(t[i], &bad);
		CHECK_EQ((long)bad, 0);
	}
}

static void no_children_left(void)
{
	int status;
	CHECK(waitpid(-1, &status, WNOHANG) == -1 && errno == ECHILD);
}

int main(int argc, char **argv)
{
	char tmp[] = "/tmp/criu-vcheck-XXXXXX";
	int images;

	check_our_library((void *)criu_get_version);
	if (argc != 2 || argv[1][0] != '/') {
		fprintf(stderr, "usage: %s /absolute/path/to/criu-binary (its `swrk` is used)\n", argv[0]);
		return 2;
	}
	if (!mkdtemp(tmp))
		return 2;
	images = open(tmp, O_RDONLY | O_DIRECTORY);

	/* The default: nothing set, the embedded server. */
	CHECK_EQ(criu_init_opts(), 0);
	check_server("embedded");
	self_dump("embedded", images);
	parallel_embedded();
	no_children_left();

	/* The swrk binary, by absolute path (never `criu` from PATH). */
	CHECK_EQ(criu_init_opts(), 0);
	CHECK_EQ(criu_set_service_binary(argv[1]), 0);
	check_server(argv[1]);
	self_dump(argv[1], images);
	no_children_left();

	close(images);
	unlink(strcat(tmp, "/self-dump.log"));
	*strrchr(tmp, '/') = '\0';
	rmdir(tmp);
	return finish("version_check");
}
