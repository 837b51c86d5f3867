/*
 * criu_local_* from several threads at once, each with its own criu_opts: four threads each
 * dump a different process (basic workload) at the same moment with criu_local_dump(), then
 * four threads restore them at once with criu_local_restore_child(). Every restored task checks
 * its own state (memory, files, signals, timers...) and must exit 0: a dump that mixed up
 * another thread's options, images or process would fail that.
 *
 * Usage: parallel WORKLOAD_BINARY
 */
#define _GNU_SOURCE
#include <criu.h>
#include <time.h>

#include "common.h"
#include "workload.h"

#define N 4

static char top[] = "/tmp/criu-rs-parallel-XXXXXX";
static pthread_barrier_t start_line;

struct job {
	int index;
	char dir[256];
	pid_t pid;
	int img_fd;
	int ret;
	double start, end;
};

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static criu_opts *opts_for(struct job *j, const char *log)
{
	criu_opts *o = NULL;
	if (criu_local_init_opts(&o))
		return NULL;
	criu_local_set_images_dir_fd(o, j->img_fd);
	criu_local_set_log_level(o, 4);
	criu_local_set_log_file(o, log);
	return o;
}

static void *dump_one(void *arg)
{
	struct job *j = arg;
	criu_opts *o = opts_for(j, "dump.log");

	j->ret = -1000;
	if (!o)
		return NULL;
	criu_local_set_pid(o, j->pid);
	pthread_barrier_wait(&start_line);
	j->start = now();
	j->ret = criu_local_dump(o);
	j->end = now();
	criu_local_free_opts(o);
	return NULL;
}

static void *restore_one(void *arg)
{
	struct job *j = arg;
	criu_opts *o = opts_for(j, "restore.log");

	j->ret = -1000;
	if (!o)
		return NULL;
	pthread_barrier_wait(&start_line);
	j->ret = criu_local_restore_child(o);
	criu_local_free_opts(o);
	return NULL;
}

static void run_all(struct job *jobs, void *(*fn)(void *))
{
	pthread_t t[N];
	for (int i = 0; i < N; i++)
		CHECK_EQ(pthread_create(&t[i], NULL, fn, &jobs[i]), 0);
	for (int i = 0; i < N; i++)
		pthread_join(t[i], NULL);
}

int main(int argc, char **argv)
{
	struct job jobs[N];
	int status;

	if (argc != 2) {
		fprintf(stderr, "usage: %s WORKLOAD\n", argv[0]);
		return 2;
	}
	check_our_library((void *)criu_local_dump);
	if (!mkdtemp(top)) {
		perror("mkdtemp");
		return 2;
	}
	pthread_barrier_init(&start_line, NULL, N);
	for (int i = 0; i < N; i++) {
		char img[PATH_MAX];
		jobs[i].index = i;
		snprintf(jobs[i].dir, sizeof jobs[i].dir, "%s/%d", top, i);
		mkdir(jobs[i].dir, 0755);
		snprintf(img, sizeof img, "%s/img", jobs[i].dir);
		mkdir(img, 0755);
		jobs[i].img_fd = open(img, O_DIRECTORY);
		CHECK(jobs[i].img_fd >= 0);
		jobs[i].pid = start_workload(argv[1], jobs[i].dir);
	}

	run_all(jobs, dump_one);
	double last_start = 0, first_end = 1e300;
	for (int i = 0; i < N; i++) {
		CHECK_EQ(jobs[i].ret, 0);
		CHECK_EQ(waitpid(jobs[i].pid, &status, 0), jobs[i].pid);
		CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
		last_start = jobs[i].start > last_start ? jobs[i].start : last_start;
		first_end = jobs[i].end < first_end ? jobs[i].end : first_end;
	}
	printf("parallel: the four dumps %s\n",
	       last_start < first_end ? "overlapped in time" : "did not all overlap");

	run_all(jobs, restore_one);
	for (int i = 0; i < N; i++) {
		CHECK_EQ(jobs[i].ret, jobs[i].pid);
		if (jobs[i].ret > 0) {
			kill(jobs[i].pid, SIGUSR1);
			CHECK_EQ(wait_code(jobs[i].pid), 0);
		}
	}
	for (int i = 0; i < N; i++)
		close(jobs[i].img_fd);
	if (!failures) {
		char cmd[PATH_MAX + 16];
		snprintf(cmd, sizeof cmd, "rm -rf %s", top);
		if (system(cmd)) {}
	} else {
		fprintf(stderr, "images and logs left in %s\n", top);
	}
	return finish("parallel");
}
