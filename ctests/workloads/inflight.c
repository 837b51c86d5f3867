/*
 * Workload for checkpoint/restore of file descriptors in flight (SCM_RIGHTS) in unix socket
 * queues: over a datagram pair, a pipe's read end (the pipe holds "pipe-bytes", its write end
 * is closed) and a regular file at offset 4; over a seqpacket pair, an eventfd holding 7. The
 * workload closes its own copies: the queued messages are their only holders.
 *
 * Writes "ready" (its pid) in DIR and idles until SIGUSR1, then receives each message with its
 * descriptor and checks the descriptor from inside. Exit code 0 when all passed; failed checks
 * are appended to DIR/result by name.
 *
 * Run as: inflight DIR
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

static volatile sig_atomic_t verify_now;
static void on_usr1(int sig) { (void)sig; verify_now = 1; }
static int failed;

static void die(const char *what)
{
	fprintf(stderr, "inflight setup: %s: %s\n", what, strerror(errno));
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

static void send_fd(int s, const char *msg, int fd)
{
	char control[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { .iov_base = (void *)msg, .iov_len = strlen(msg) };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
			    .msg_controllen = sizeof control };
	struct cmsghdr *c = CMSG_FIRSTHDR(&m);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof fd);
	if (sendmsg(s, &m, 0) != (ssize_t)strlen(msg))
		die("sendmsg");
	close(fd);
}

/* Receives `msg` with one descriptor; -1 (and a failed check) otherwise. */
static int recv_fd(int s, const char *msg, const char *what)
{
	char buf[64] = "", control[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { .iov_base = buf, .iov_len = sizeof buf };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
			    .msg_controllen = sizeof control };
	ssize_t n = recvmsg(s, &m, MSG_DONTWAIT);
	struct cmsghdr *c = CMSG_FIRSTHDR(&m);
	int fd = -1;
	if (n != (ssize_t)strlen(msg) || memcmp(buf, msg, n) || !c || c->cmsg_type != SCM_RIGHTS) {
		fail(what);
		return -1;
	}
	memcpy(&fd, CMSG_DATA(c), sizeof fd);
	return fd;
}

int main(int argc, char **argv)
{
	if (argc < 2 || chdir(argv[1]) < 0)
		die("chdir");
	setsid();
	struct sigaction sa = { .sa_handler = on_usr1 };
	sigaction(SIGUSR1, &sa, NULL);

	int d[2], q[2], p[2];
	if (socketpair(AF_UNIX, SOCK_DGRAM, 0, d) || socketpair(AF_UNIX, SOCK_SEQPACKET, 0, q) ||
	    pipe(p))
		die("socketpair");
	if (write(p[1], "pipe-bytes", 10) != 10)
		die("write pipe");
	close(p[1]);
	send_fd(d[0], "with-pipe", p[0]);
	int f = open("inflight.txt", O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (f < 0 || write(f, "0123456789", 10) != 10 || lseek(f, 4, SEEK_SET) != 4)
		die("file");
	send_fd(d[0], "with-file", f);
	int e = eventfd(7, 0);
	if (e < 0)
		die("eventfd");
	send_fd(q[0], "two", e);

	FILE *r = fopen("ready.tmp", "w");
	fprintf(r, "%d\n", getpid());
	fclose(r);
	rename("ready.tmp", "ready");
	/* Polls: a signal right after a dump that resumes us could find sigsuspend() again. */
	while (!verify_now)
		usleep(1000);

	char buf[32] = "";
	int fd = recv_fd(d[1], "with-pipe", "pipe_message");
	if (fd >= 0 && (read(fd, buf, sizeof buf) != 10 || memcmp(buf, "pipe-bytes", 10) ||
			read(fd, buf, sizeof buf) != 0))
		fail("pipe_contents");
	fd = recv_fd(d[1], "with-file", "file_message");
	memset(buf, 0, sizeof buf);
	if (fd >= 0 && (read(fd, buf, sizeof buf) != 6 || memcmp(buf, "456789", 6)))
		fail("file_offset");
	fd = recv_fd(q[1], "two", "eventfd_message");
	uint64_t v = 0;
	if (fd >= 0 && (read(fd, &v, 8) != 8 || v != 7))
		fail("eventfd_value");
	return failed;
}
