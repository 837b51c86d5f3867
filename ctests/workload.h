/*
 * Running the programs the tests checkpoint (ctests/workloads/): start one in its own
 * directory, wait for it, and look at it from outside.
 */
#ifndef CTESTS_WORKLOAD_H
#define CTESTS_WORKLOAD_H

#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/*
 * Starts `bin dir` with stdin from /dev/null, stdout and stderr into dir/out and no other
 * descriptor, and waits until it has written dir/ready. Exits the test if it never does.
 */
static inline pid_t start_workload(const char *bin, const char *dir)
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
		execl(bin, bin, dir, (char *)NULL);
		_exit(127);
	}
	snprintf(path, sizeof path, "%s/ready", dir);
	for (int i = 0; i < 10000; i++) {
		struct stat st;
		if (stat(path, &st) == 0 && st.st_size > 0)
			return pid;
		usleep(1000);
	}
	fprintf(stderr, "workload in %s did not get ready\n", dir);
	kill(pid, SIGKILL);
	exit(1);
}

/* Waits up to 30 s for our child `pid`: its exit code, 128 + signal, or -1 (then killed). */
static inline int wait_code(pid_t pid)
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

/* The task's state letter and tracer from /proc; false if it is gone. */
static inline bool task_state(pid_t pid, char *state, int *tracer)
{
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/%d/status", pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return false;
	*state = '?';
	*tracer = -1;
	while (fgets(line, sizeof line, f)) {
		if (!strncmp(line, "State:", 6))
			sscanf(line + 6, " %c", state);
		else if (!strncmp(line, "TracerPid:", 10))
			*tracer = atoi(line + 10);
	}
	fclose(f);
	return true;
}

/*
 * True once `pid` runs freely (sleeping or running, not traced), within 5 s: a server that was
 * told to stop releases the task right after the library call returned.
 */
static inline bool running_untraced(pid_t pid)
{
	char state;
	int tracer;
	for (int i = 0; i < 5000; i++) {
		if (!task_state(pid, &state, &tracer))
			return false;
		if ((state == 'S' || state == 'R') && tracer == 0)
			return true;
		usleep(1000);
	}
	fprintf(stderr, "pid %d: state %c, tracer %d\n", pid, state, tracer);
	return false;
}

#endif
