/*
 * Workload for files connected to something outside the dumped tree (--external unix[INO] at
 * dump, --inherit-fd at restore): it reads requests from fd 3 and answers each on fd 4 with
 * "pong N REQUEST", N counting the requests it has answered (kept in memory, so a restored
 * task goes on counting). The caller holds the other ends: fds 3 and 4 are one stream socket,
 * or a pipe's read end and another pipe's write end.
 *
 * Writes "ready" (its pid) in its cwd; exits 0 when fd 3 reaches its end, 2 on an error.
 *
 * Run as: extpeer
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void)
{
	char req[128], reply[200];
	unsigned long answered = 0;
	FILE *f = fopen("ready.tmp", "w");

	if (!f)
		return 2;
	fprintf(f, "%d\n", getpid());
	fclose(f);
	rename("ready.tmp", "ready");
	for (;;) {
		ssize_t n = read(3, req, sizeof req - 1);

		if (n == 0)
			return 0;
		if (n < 0)
			return 2;
		req[n] = 0;
		answered++;
		int len = snprintf(reply, sizeof reply, "pong %lu %s", answered, req);
		if (write(4, reply, len) != len)
			return 2;
	}
}
