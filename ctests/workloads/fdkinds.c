/*
 * Workload for checkpoint/restore of pipes, FIFOs, unix socketpairs and eventfds.
 *
 * It sets up objects with data in them: pipes with unread bytes (one at 1 MiB capacity, one
 * with only its read end left, one with only its write end), a FIFO opened twice, stream,
 * datagram and seqpacket socketpairs with messages queued both ways (datagrams of distinct
 * sizes, an empty one among them), an unconnected socket with an owner (F_SETOWN/F_SETSIG),
 * eventfds (plain, semaphore, a counter above 32 bits), with O_NONBLOCK and FD_CLOEXEC
 * variations. It writes "ready" in its directory (and "fds": name and number of each fd) and
 * idles until SIGUSR1. Then it reads everything back and checks bytes, message boundaries,
 * counters, flags and owners. It exits 0 when all hold, else
 * 100 + the number of the first failed check; "result" lists the failed checks by name.
 * Run as: fdkinds DIR
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
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define PIPE_A_BYTES (40 << 10)
#define PIPE_BIG_SIZE (1 << 20)
#define PIPE_BIG_BYTES (700 << 10)
#define PIPE_RONLY_BYTES 3000
#define PIPE_WONLY_BYTES 1000
#define FIFO_BYTES 5000
#define STREAM_AB 50000
#define STREAM_BA 123
#define BIG_EVENT 0x100000005ULL

static const size_t dgram_ab[] = { 1, 7, 100, 0, 4000, 65000 };
static const size_t dgram_ba[] = { 33, 0, 2 };
static const size_t seqp_ab[] = { 3, 50, 1500, 30000 };
static const size_t seqp_ba[] = { 9, 700 };
#define N(a) (sizeof(a) / sizeof((a)[0]))

static volatile sig_atomic_t verify_now;
static void on_usr1(int sig) { (void)sig; verify_now = 1; }

static unsigned char pattern(int seed, size_t i)
{
	return (unsigned char)(i * 131 + seed * 17 + (i >> 8) + (i >> 16));
}

static void fill(unsigned char *buf, int seed, size_t len)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = pattern(seed, i);
}

static void die(const char *what)
{
	fprintf(stderr, "fdkinds setup: %s: %s\n", what, strerror(errno));
	exit(2);
}

static void write_all(int fd, int seed, size_t len, const char *what)
{
	unsigned char *buf = malloc(len + 1);
	fill(buf, seed, len);
	size_t done = 0;
	while (done < len) {
		ssize_t n = write(fd, buf + done, len - done);
		if (n <= 0) die(what);
		done += n;
	}
	free(buf);
}

static void send_msgs(int fd, const size_t *sizes, size_t n, int seed0, const char *what)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char *buf = malloc(sizes[i] + 1);
		fill(buf, seed0 + (int)i, sizes[i]);
		if (send(fd, buf, sizes[i], 0) != (ssize_t)sizes[i]) die(what);
		free(buf);
	}
}

/* The fds, by name. */
static int pa[2], pa_dup, pbig[2], pronly, pwonly, pempty[2];
static int fifo_rw, fifo_ro;
static int st[2], dg[2], sq[2], unconnected;
static int ev_plain, ev_sem, ev_big, ev_zero;

static struct timeval rcvtimeo;

static FILE *fds_file;
static void note(const char *name, int fd) { fprintf(fds_file, "%s %d\n", name, fd); }

static void setup(const char *dir)
{
	setsid();
	if (chdir(dir)) die("chdir");
	signal(SIGPIPE, SIG_IGN);
	struct sigaction sa = { 0 };
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);

	/* Pipe A: 40 KiB unread in the default capacity; read end non-blocking and dup'ed (the
	 * dup shares the flags), write end close-on-exec. */
	if (pipe2(pa, O_CLOEXEC)) die("pipe a");
	write_all(pa[1], 1, PIPE_A_BYTES, "pipe a");
	fcntl(pa[0], F_SETFD, 0);
	fcntl(pa[0], F_SETFL, O_NONBLOCK);
	pa_dup = dup(pa[0]);

	/* A 1 MiB pipe with 700 KiB in it. */
	if (pipe(pbig)) die("pipe big");
	if (fcntl(pbig[1], F_SETPIPE_SZ, PIPE_BIG_SIZE) < 0) die("F_SETPIPE_SZ");
	write_all(pbig[1], 2, PIPE_BIG_BYTES, "pipe big");

	/* Only the read end left: data, then end of file. */
	int p[2];
	if (pipe(p)) die("pipe ronly");
	write_all(p[1], 3, PIPE_RONLY_BYTES, "pipe ronly");
	close(p[1]);
	pronly = p[0];

	/* Only the write end left: data nobody can read but through /proc. */
	if (pipe(p)) die("pipe wonly");
	write_all(p[1], 4, PIPE_WONLY_BYTES, "pipe wonly");
	close(p[0]);
	pwonly = p[1];

	if (pipe2(pempty, O_NONBLOCK)) die("pipe empty");

	/* A FIFO opened read-write with data, and again read-only non-blocking. */
	unlink("fifo");
	if (mkfifo("fifo", 0600)) die("mkfifo");
	fifo_rw = open("fifo", O_RDWR);
	if (fifo_rw < 0) die("open fifo rw");
	write_all(fifo_rw, 5, FIFO_BYTES, "fifo");
	fifo_ro = open("fifo", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (fifo_ro < 0) die("open fifo ro");

	/* Socketpairs with messages queued both ways. */
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, st)) die("socketpair stream");
	write_all(st[0], 6, 10000, "stream a->b 1");
	{
		/* The rest of the 50000 bytes in two more writes, continuing the pattern. */
		unsigned char *buf = malloc(STREAM_AB);
		fill(buf, 6, STREAM_AB);
		if (write(st[0], buf + 10000, 30000) != 30000) die("stream a->b 2");
		if (write(st[0], buf + 40000, 10000) != 10000) die("stream a->b 3");
		free(buf);
	}
	write_all(st[1], 7, STREAM_BA, "stream b->a");
	fcntl(st[0], F_SETFL, O_NONBLOCK);
	fcntl(st[1], F_SETFD, FD_CLOEXEC);
	struct timeval tv = { 5, 250000 };
	if (setsockopt(st[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv)) die("SO_RCVTIMEO");
	/* The kernel keeps it in jiffies: compare with what it reports, not with what we set. */
	socklen_t tl = sizeof rcvtimeo;
	getsockopt(st[1], SOL_SOCKET, SO_RCVTIMEO, &rcvtimeo, &tl);

	if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, dg)) die("socketpair dgram");
	int sndbuf = 100000;
	if (setsockopt(dg[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf)) die("SO_SNDBUF");
	send_msgs(dg[0], dgram_ab, N(dgram_ab), 10, "dgram a->b");
	send_msgs(dg[1], dgram_ba, N(dgram_ba), 20, "dgram b->a");

	if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sq)) die("socketpair seqpacket");
	send_msgs(sq[0], seqp_ab, N(seqp_ab), 30, "seqpacket a->b");
	send_msgs(sq[1], seqp_ba, N(seqp_ba), 40, "seqpacket b->a");
	fcntl(sq[1], F_SETFL, O_NONBLOCK);

	unconnected = socket(AF_UNIX, SOCK_DGRAM, 0);
	int one = 1;
	if (setsockopt(unconnected, SOL_SOCKET, SO_PASSCRED, &one, sizeof one)) die("SO_PASSCRED");
	/* An owner and a signal (no O_ASYNC: nothing is ever sent). */
	if (fcntl(unconnected, F_SETOWN, getpid()) || fcntl(unconnected, F_SETSIG, SIGUSR2))
		die("F_SETOWN");

	/* eventfds. */
	ev_plain = eventfd(42, 0);
	ev_sem = eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK);
	ev_big = eventfd(0, EFD_CLOEXEC);
	uint64_t big = BIG_EVENT;
	if (write(ev_big, &big, 8) != 8) die("eventfd big");
	ev_zero = eventfd(0, EFD_NONBLOCK);
	if (ev_plain < 0 || ev_sem < 0 || ev_big < 0 || ev_zero < 0) die("eventfd");

	fds_file = fopen("fds.tmp", "w");
	note("pipe_a_r", pa[0]);
	note("pipe_a_w", pa[1]);
	note("pipe_a_dup", pa_dup);
	note("pipe_big_r", pbig[0]);
	note("pipe_big_w", pbig[1]);
	note("pipe_ronly", pronly);
	note("pipe_wonly", pwonly);
	note("fifo_rw", fifo_rw);
	note("fifo_ro", fifo_ro);
	note("stream_a", st[0]);
	note("stream_b", st[1]);
	note("dgram_a", dg[0]);
	note("dgram_b", dg[1]);
	note("seqpacket_a", sq[0]);
	note("seqpacket_b", sq[1]);
	note("unconnected", unconnected);
	note("ev_plain", ev_plain);
	note("ev_sem", ev_sem);
	note("ev_big", ev_big);
	fclose(fds_file);
	rename("fds.tmp", "fds");

	int r = open("ready.tmp", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	dprintf(r, "%d\n", getpid());
	close(r);
	rename("ready.tmp", "ready");
}

/* ----------------------------------------------------------------------------------------- */
/* Checks */

static char failed_names[4096];
static int first_failed = -1;

static void fail(int num, const char *name)
{
	if (first_failed < 0) first_failed = num;
	size_t l = strlen(failed_names);
	snprintf(failed_names + l, sizeof failed_names - l, "%d:%s\n", num, name);
}

/* Reads exactly len bytes (no more are there: the next read must give EAGAIN or EOF) and
 * compares them with the pattern. */
static int read_exact_pattern(int fd, int seed, size_t len)
{
	unsigned char *buf = malloc(len + 4096);
	size_t got = 0;
	while (got < len) {
		ssize_t n = read(fd, buf + got, len + 4096 - got);
		if (n <= 0) break;
		got += n;
	}
	int ok = got == len;
	for (size_t i = 0; ok && i < len; i++)
		if (buf[i] != pattern(seed, i)) ok = 0;
	free(buf);
	return ok;
}

static int is_nonblock(int fd) { return (fcntl(fd, F_GETFL) & O_NONBLOCK) != 0; }
static int is_cloexec(int fd) { return (fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0; }
static int would_block(int fd)
{
	char c;
	return read(fd, &c, 1) < 0 && errno == EAGAIN;
}

/* Receives the messages one by one: each must have exactly its size (no truncation, no
 * merging) and its pattern; then the queue must be empty. */
static int recv_msgs(int fd, const size_t *sizes, size_t n, int seed0)
{
	static unsigned char buf[200000];
	for (size_t i = 0; i < n; i++) {
		ssize_t got = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
		if (got != (ssize_t)sizes[i]) return 0;
		for (size_t j = 0; j < sizes[i]; j++)
			if (buf[j] != pattern(seed0 + (int)i, j)) return 0;
	}
	return recv(fd, buf, sizeof buf, MSG_DONTWAIT) < 0 && errno == EAGAIN;
}

/* The pair still works both ways after the queues are drained. */
static int still_connected(int a, int b)
{
	char buf[16];
	if (send(a, "ping", 4, 0) != 4 || recv(b, buf, sizeof buf, 0) != 4 || memcmp(buf, "ping", 4))
		return 0;
	if (send(b, "pong", 4, 0) != 4 || recv(a, buf, sizeof buf, 0) != 4 || memcmp(buf, "pong", 4))
		return 0;
	return 1;
}

static int sock_type(int fd)
{
	int t = -1;
	socklen_t l = sizeof t;
	getsockopt(fd, SOL_SOCKET, SO_TYPE, &t, &l);
	return t;
}

static uint64_t ev_read(int fd, int *ok)
{
	uint64_t v = 0;
	*ok = read(fd, &v, 8) == 8;
	return v;
}

static void check(void)
{
	int ok;
	/* 1-4: pipe A: flags shared with the dup, close-on-exec per fd, the 40 KiB. */
	if (!is_nonblock(pa[0]) || !is_nonblock(pa_dup) || is_nonblock(pa[1])) fail(1, "pipe_a_flags");
	if (is_cloexec(pa[0]) || is_cloexec(pa_dup) || !is_cloexec(pa[1])) fail(2, "pipe_a_cloexec");
	fcntl(pa_dup, F_SETFL, 0);
	if (is_nonblock(pa[0])) fail(3, "pipe_a_dup_shares_description");
	fcntl(pa_dup, F_SETFL, O_NONBLOCK);
	if (!read_exact_pattern(pa[0], 1, PIPE_A_BYTES) || !would_block(pa[0])) fail(4, "pipe_a_data");
	/* 5-6: the big pipe: capacity and 700 KiB. */
	if (fcntl(pbig[0], F_GETPIPE_SZ) != PIPE_BIG_SIZE) fail(5, "pipe_big_capacity");
	fcntl(pbig[0], F_SETFL, O_NONBLOCK);
	if (!read_exact_pattern(pbig[0], 2, PIPE_BIG_BYTES) || !would_block(pbig[0]))
		fail(6, "pipe_big_data");
	/* 7: read end only: the data, then end of file (no writer came back). */
	{
		char c;
		if (!read_exact_pattern(pronly, 3, PIPE_RONLY_BYTES) || read(pronly, &c, 1) != 0)
			fail(7, "pipe_read_end_only");
	}
	/* 8: write end only: no reader (EPIPE), and the data is there for a reader through /proc. */
	{
		char path[64];
		int epipe = write(pwonly, "x", 1) < 0 && errno == EPIPE;
		snprintf(path, sizeof path, "/proc/self/fd/%d", pwonly);
		int r = open(path, O_RDONLY | O_NONBLOCK);
		if (!epipe || r < 0 || !read_exact_pattern(r, 4, PIPE_WONLY_BYTES) || !would_block(r))
			fail(8, "pipe_write_end_only");
		if (r >= 0) close(r);
	}
	/* 9: the empty pipe works. */
	{
		char buf[4];
		if (!would_block(pempty[0]) || write(pempty[1], "hi", 2) != 2 ||
		    read(pempty[0], buf, 4) != 2 || memcmp(buf, "hi", 2))
			fail(9, "pipe_empty");
	}
	/* 10-11: the FIFO: flags of both opens, and its 5000 bytes once. */
	if (is_nonblock(fifo_rw) || !is_nonblock(fifo_ro) || is_cloexec(fifo_rw) || !is_cloexec(fifo_ro))
		fail(10, "fifo_flags");
	if (!read_exact_pattern(fifo_ro, 5, FIFO_BYTES) || !would_block(fifo_ro)) fail(11, "fifo_data");
	/* 12-14: stream pair. */
	if (sock_type(st[0]) != SOCK_STREAM || !is_nonblock(st[0]) || is_nonblock(st[1]) ||
	    is_cloexec(st[0]) || !is_cloexec(st[1]))
		fail(12, "stream_flags");
	{
		struct timeval tv;
		socklen_t l = sizeof tv;
		getsockopt(st[1], SOL_SOCKET, SO_RCVTIMEO, &tv, &l);
		if (tv.tv_sec != rcvtimeo.tv_sec || tv.tv_usec != rcvtimeo.tv_usec || tv.tv_sec != 5)
			fail(12, "stream_rcvtimeo");
	}
	fcntl(st[1], F_SETFL, O_NONBLOCK);
	if (!read_exact_pattern(st[1], 6, STREAM_AB) || !would_block(st[1]) ||
	    !read_exact_pattern(st[0], 7, STREAM_BA) || !would_block(st[0]))
		fail(13, "stream_data");
	fcntl(st[0], F_SETFL, 0);
	fcntl(st[1], F_SETFL, 0);
	if (!still_connected(st[0], st[1])) fail(14, "stream_connected");
	/* 15-17: datagram pair: boundaries (an empty datagram among them), buffer size. */
	{
		int v = 0;
		socklen_t l = sizeof v;
		getsockopt(dg[0], SOL_SOCKET, SO_SNDBUF, &v, &l);
		if (sock_type(dg[0]) != SOCK_DGRAM || !is_cloexec(dg[0]) || !is_cloexec(dg[1]) || v != 200000)
			fail(15, "dgram_flags_sndbuf");
	}
	if (!recv_msgs(dg[1], dgram_ab, N(dgram_ab), 10) || !recv_msgs(dg[0], dgram_ba, N(dgram_ba), 20))
		fail(16, "dgram_messages");
	if (!still_connected(dg[0], dg[1])) fail(17, "dgram_connected");
	/* 18-20: seqpacket pair. */
	if (sock_type(sq[0]) != SOCK_SEQPACKET || is_nonblock(sq[0]) || !is_nonblock(sq[1]))
		fail(18, "seqpacket_flags");
	if (!recv_msgs(sq[1], seqp_ab, N(seqp_ab), 30) || !recv_msgs(sq[0], seqp_ba, N(seqp_ba), 40))
		fail(19, "seqpacket_messages");
	fcntl(sq[1], F_SETFL, 0);
	if (!still_connected(sq[0], sq[1])) fail(20, "seqpacket_connected");
	/* 21: the unconnected socket. */
	{
		int v = 0;
		socklen_t l = sizeof v;
		struct sockaddr_storage ss;
		socklen_t sl = sizeof ss;
		getsockopt(unconnected, SOL_SOCKET, SO_PASSCRED, &v, &l);
		if (sock_type(unconnected) != SOCK_DGRAM || v != 1 ||
		    getpeername(unconnected, (struct sockaddr *)&ss, &sl) == 0 || errno != ENOTCONN)
			fail(21, "unconnected_socket");
		if (fcntl(unconnected, F_GETOWN) != getpid() || fcntl(unconnected, F_GETSIG) != SIGUSR2)
			fail(21, "unconnected_socket_owner");
	}
	/* 22-25: eventfds. */
	if (is_nonblock(ev_plain) || ev_read(ev_plain, &ok) != 42 || !ok) fail(22, "eventfd_plain");
	{
		int sem_ok = is_nonblock(ev_sem);
		for (int i = 0; i < 3; i++)
			if (ev_read(ev_sem, &ok) != 1 || !ok) sem_ok = 0;
		ev_read(ev_sem, &ok);
		if (ok || errno != EAGAIN) sem_ok = 0;
		if (!sem_ok) fail(23, "eventfd_semaphore");
	}
	if (!is_cloexec(ev_big) || is_cloexec(ev_plain) || ev_read(ev_big, &ok) != BIG_EVENT || !ok)
		fail(24, "eventfd_big_counter");
	ev_read(ev_zero, &ok);
	if (ok || errno != EAGAIN) fail(25, "eventfd_zero");
}

int main(int argc, char **argv)
{
	if (argc < 2) return 2;
	setup(argv[1]);
	struct timespec ts = { 0, 2 * 1000 * 1000 };
	while (!verify_now)
		nanosleep(&ts, NULL);
	check();
	int r = open("result", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	dprintf(r, "%s", first_failed < 0 ? "ok\n" : failed_names);
	close(r);
	return first_failed < 0 ? 0 : 100 + first_failed;
}
