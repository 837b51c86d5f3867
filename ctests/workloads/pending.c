/*
 * Workload for unix connections not accepted yet: a stream listener bound to CWD/srv.sock and
 * three clients of the same process connected to it, none accepted. With argument "data" the
 * second client also sends "early bird" before the dump.
 *
 * Writes "ready" (its pid) and idles until SIGUSR1; then accepts the three connections, reads
 * what each sent (the second: "early bird" when asked to send it), answers "reply N" on each,
 * and checks that every client reads its reply. Exit code 0 when all passed; failed checks are
 * appended to "result" by name.
 *
 * Run as: pending [data]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define CLIENTS 3

static volatile sig_atomic_t verify_now;
static void on_usr1(int sig) { (void)sig; verify_now = 1; }
static int failed;

static void die(const char *what)
{
	fprintf(stderr, "pending setup: %s: %s\n", what, strerror(errno));
	exit(2);
}

static void fail(const char *what)
{
	FILE *f = fopen("result", "a");
	if (f) {
		fprintf(f, "%s (errno %s)\n", what, strerror(errno));
		fclose(f);
	}
	failed = 1;
}

int main(int argc, char **argv)
{
	int data = argc > 1 && !strcmp(argv[1], "data");
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int srv, cl[CLIENTS], i;

	setsid();
	signal(SIGUSR1, on_usr1);
	/* An absolute name: relative ones are not supported. */
	if (!getcwd(a.sun_path, sizeof a.sun_path - 10))
		die("getcwd");
	strcat(a.sun_path, "/srv.sock");
	unlink(a.sun_path);
	srv = socket(AF_UNIX, SOCK_STREAM, 0);
	if (srv < 0 || bind(srv, (void *)&a, sizeof a) || listen(srv, 8))
		die("listen");
	for (i = 0; i < CLIENTS; i++) {
		cl[i] = socket(AF_UNIX, SOCK_STREAM, 0);
		if (cl[i] < 0 || connect(cl[i], (void *)&a, sizeof a))
			die("connect");
	}
	if (data && write(cl[1], "early bird", 10) != 10)
		die("write");

	FILE *f = fopen("ready.tmp", "w");
	if (!f)
		die("ready");
	fprintf(f, "%d\n", getpid());
	fclose(f);
	rename("ready.tmp", "ready");
	while (!verify_now)
		pause();

	/* The clients say who they are, so that the accept order does not matter. */
	for (i = 0; i < CLIENTS; i++) {
		char id = '0' + i;
		if (write(cl[i], &id, 1) != 1)
			fail("client write");
	}
	for (i = 0; i < CLIENTS; i++) {
		char buf[64] = { 0 }, want[64], reply[16];
		int c = accept(srv, NULL, NULL);
		ssize_t n;

		if (c < 0) {
			fail("accept");
			continue;
		}
		n = read(c, buf, sizeof buf - 1);
		if (n < 1) {
			fail("server read");
			continue;
		}
		int who = buf[n - 1] - '0';
		if (who < 0 || who >= CLIENTS) {
			fail("unknown client");
			continue;
		}
		snprintf(want, sizeof want, "%s%d", data && who == 1 ? "early bird" : "", who);
		if (strcmp(buf, want))
			fail(who == 1 ? "second client's early data" : "client data");
		snprintf(reply, sizeof reply, "reply %d", who);
		if (write(c, reply, strlen(reply)) != (ssize_t)strlen(reply))
			fail("server write");
		close(c);
	}
	for (i = 0; i < CLIENTS; i++) {
		char buf[16] = { 0 }, want[16];
		snprintf(want, sizeof want, "reply %d", i);
		if (read(cl[i], buf, sizeof buf - 1) < 0 || strcmp(buf, want))
			fail("client reply");
	}
	return failed;
}
