/*
 * Workload for descriptors in flight (SCM_RIGHTS) in a unix stream socket's queue: over a
 * stream socketpair, "before", then "fd-msg" with a pipe's read end (the pipe holds
 * "pipe-bytes", its write end is closed), then "after". The workload closes its own copy of
 * the read end: the queue is its only holder.
 *
 * Writes "ready" (its pid) and idles until SIGUSR1, then reads the stream whole with its
 * descriptors and checks the bytes, that exactly one descriptor came, with the bytes after
 * which it was sent, and what the pipe holds. Exit code 0 when all passed; failed checks are
 * appended to "result" by name.
 *
 * Run as: streamfds
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static volatile sig_atomic_t verify_now;
static void on_usr1(int sig) { (void)sig; verify_now = 1; }
static int failed;

static void die(const char *what)
{
	fprintf(stderr, "streamfds setup: %s: %s\n", what, strerror(errno));
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

int main(void)
{
	const char *want = "beforefd-msgafter";
	int sp[2], p[2];
	char control[CMSG_SPACE(sizeof(int))];

	setsid();
	signal(SIGUSR1, on_usr1);
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp) || pipe(p))
		die("socketpair/pipe");
	if (write(p[1], "pipe-bytes", 10) != 10)
		die("pipe write");
	close(p[1]);
	if (write(sp[0], "before", 6) != 6)
		die("write before");
	struct iovec iov = { .iov_base = "fd-msg", .iov_len = 6 };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
			    .msg_controllen = sizeof control };
	struct cmsghdr *c = CMSG_FIRSTHDR(&m);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &p[0], sizeof(int));
	if (sendmsg(sp[0], &m, 0) != 6)
		die("sendmsg");
	close(p[0]);
	if (write(sp[0], "after", 5) != 5)
		die("write after");

	FILE *f = fopen("ready.tmp", "w");
	if (!f)
		die("ready");
	fprintf(f, "%d\n", getpid());
	fclose(f);
	rename("ready.tmp", "ready");
	while (!verify_now)
		pause();

	char got[64] = { 0 };
	size_t total = 0, fd_at = 0;
	int fds = 0, passed = -1;
	while (total < strlen(want)) {
		char cbuf[CMSG_SPACE(4 * sizeof(int))];
		struct iovec v = { .iov_base = got + total, .iov_len = sizeof got - 1 - total };
		struct msghdr r = { .msg_iov = &v, .msg_iovlen = 1, .msg_control = cbuf,
				    .msg_controllen = sizeof cbuf };
		ssize_t n = recvmsg(sp[1], &r, MSG_DONTWAIT);
		if (n <= 0) {
			fail("recvmsg");
			break;
		}
		total += n;
		for (struct cmsghdr *h = CMSG_FIRSTHDR(&r); h; h = CMSG_NXTHDR(&r, h)) {
			if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_RIGHTS) {
				fds += (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
				memcpy(&passed, CMSG_DATA(h), sizeof(int));
				fd_at = total;
			}
		}
	}
	if (strcmp(got, want))
		fail("stream bytes");
	if (fds != 1)
		fail("one descriptor in flight");
	if (fd_at != 12)
		fail("descriptor with the bytes it was sent with");
	if (passed >= 0) {
		char buf[16] = { 0 };
		if (read(passed, buf, sizeof buf - 1) != 10 || strcmp(buf, "pipe-bytes"))
			fail("pipe contents");
	}
	return failed;
}
