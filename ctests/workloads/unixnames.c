/*
 * Workload for checkpoint/restore of named unix sockets: a stream listener bound to a path
 * (backlog 7), a seqpacket listener on an abstract name, a datagram socket bound to a path, and
 * a datagram socket whose socket file was removed after the bind; and a connection accepted
 * by each listener, with bytes (packets) queued both ways.
 *
 * Writes "ready" (its pid) in DIR and idles until SIGUSR1. Then checks from inside: each socket
 * still has its name (getsockname) and type, the listeners listen, a new client connects to each
 * listener by name and a message goes through the accepted connection, a datagram sent to the
 * bound path arrives, the removed socket file is still absent; the accepted sockets have the
 * listener's name, their clients see it as their peer's, the queued bytes and packets are there
 * and more go through. Exit code 0 when all passed;
 * failed checks are appended to DIR/result by name.
 *
 * A datagram socket is connected to the bound one (one way), and checked to reach it; with
 * "ext", another is connected to DIR/ext.sock (bound by whoever started us) and sends
 * "ext-hello" there during the checks.
 *
 * Run as: unixnames DIR [ext]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static volatile sig_atomic_t verify_now;
static void on_usr1(int sig) { (void)sig; verify_now = 1; }
static int failed;
static char dir[256];

static void die(const char *what)
{
	fprintf(stderr, "unixnames setup: %s: %s\n", what, strerror(errno));
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

/* A path address under DIR, or an abstract one when `name` starts with '@'. */
static socklen_t addr_of(struct sockaddr_un *a, const char *name)
{
	memset(a, 0, sizeof *a);
	a->sun_family = AF_UNIX;
	if (name[0] == '@') {
		size_t n = strlen(name + 1);
		memcpy(a->sun_path + 1, name + 1, n);
		return offsetof(struct sockaddr_un, sun_path) + 1 + n;
	}
	snprintf(a->sun_path, sizeof a->sun_path, "%s/%s", dir, name);
	return offsetof(struct sockaddr_un, sun_path) + strlen(a->sun_path) + 1;
}

static int bound(int type, const char *name)
{
	struct sockaddr_un a;
	socklen_t len = addr_of(&a, name);
	int s = socket(AF_UNIX, type, 0);
	if (s < 0 || bind(s, (struct sockaddr *)&a, len) < 0)
		die(name);
	return s;
}

static void check_name(int s, int type, const char *name, const char *what)
{
	struct sockaddr_un want, got;
	socklen_t wlen = addr_of(&want, name), glen = sizeof got;
	int t;
	socklen_t tl = sizeof t;
	if (getsockname(s, (struct sockaddr *)&got, &glen) < 0 || glen != wlen ||
	    memcmp(&got, &want, wlen))
		fail(what);
	if (getsockopt(s, SOL_SOCKET, SO_TYPE, &t, &tl) < 0 || t != type)
		fail("type");
}

/* A new client connects to `name`, the listener accepts, a message goes through. */
static void check_listener(int l, int type, const char *name, const char *what)
{
	int on = 0;
	socklen_t ol = sizeof on;
	if (getsockopt(l, SOL_SOCKET, SO_ACCEPTCONN, &on, &ol) < 0 || !on) {
		fail(what);
		return;
	}
	struct sockaddr_un a;
	socklen_t len = addr_of(&a, name);
	int c = socket(AF_UNIX, type, 0);
	if (connect(c, (struct sockaddr *)&a, len) < 0) {
		fail(what);
		return;
	}
	int acc = accept(l, NULL, NULL);
	char buf[16] = "";
	if (acc < 0 || send(c, "hello", 5, 0) != 5 || recv(acc, buf, sizeof buf, 0) != 5 ||
	    memcmp(buf, "hello", 5))
		fail(what);
	close(c);
	if (acc >= 0)
		close(acc);
}

static int connected_to(int type, const char *name)
{
	struct sockaddr_un a;
	socklen_t len = addr_of(&a, name);
	int c = socket(AF_UNIX, type, 0);
	if (c < 0 || connect(c, (struct sockaddr *)&a, len) < 0)
		die(name);
	return c;
}

/* The accepted side has the listener's name, the client sees it as its peer's. */
static void check_accepted(int acc, int cli, int type, const char *name, const char *what)
{
	struct sockaddr_un want, got;
	socklen_t wlen = addr_of(&want, name), glen = sizeof got;
	check_name(acc, type, name, what);
	if (getpeername(cli, (struct sockaddr *)&got, &glen) < 0 || glen != wlen ||
	    memcmp(&got, &want, wlen))
		fail(what);
}

static void expect(int s, const char *msg, const char *what)
{
	char buf[32] = "";
	size_t n = strlen(msg);
	if (recv(s, buf, sizeof buf, MSG_DONTWAIT) != (ssize_t)n || memcmp(buf, msg, n))
		fail(what);
}

int main(int argc, char **argv)
{
	if (argc < 2 || chdir(argv[1]) < 0)
		die("chdir");
	snprintf(dir, sizeof dir, "%s", argv[1]);
	setsid();
	struct sigaction sa = { .sa_handler = on_usr1 };
	sigaction(SIGUSR1, &sa, NULL);

	char abstract[64];
	snprintf(abstract, sizeof abstract, "@criu-rs-unixnames-%d", getpid());
	int ls = bound(SOCK_STREAM, "listen.sock");
	if (listen(ls, 7) < 0)
		die("listen");
	int lq = bound(SOCK_SEQPACKET, abstract);
	if (listen(lq, 3) < 0)
		die("listen seqpacket");
	int dg = bound(SOCK_DGRAM, "dgram.sock");
	int gone = bound(SOCK_DGRAM, "gone.sock");
	if (unlink("gone.sock") < 0)
		die("unlink");
	/* A datagram socket connected to dgram.sock (which is not connected back). */
	int oneway = connected_to(SOCK_DGRAM, "dgram.sock");
	/* With "ext": one connected to DIR/ext.sock, a socket of the test (outside the tree). */
	int ext = argc > 2 && !strcmp(argv[2], "ext") ? connected_to(SOCK_DGRAM, "ext.sock") : -1;
	/* Accepted connections, with bytes queued both ways. */
	int cs = connected_to(SOCK_STREAM, "listen.sock"), as = accept(ls, NULL, NULL);
	int cq = connected_to(SOCK_SEQPACKET, abstract), aq = accept(lq, NULL, NULL);
	if (as < 0 || aq < 0)
		die("accept");
	if (send(cs, "to-server", 9, 0) != 9 || send(as, "to-client", 9, 0) != 9 ||
	    send(cq, "pkt-1", 5, 0) != 5 || send(cq, "pkt-22", 6, 0) != 6)
		die("send");

	FILE *f = fopen("ready.tmp", "w");
	fprintf(f, "%d\n", getpid());
	fclose(f);
	rename("ready.tmp", "ready");
	/* Polls: a signal right after a dump that resumes us could find sigsuspend() again. */
	while (!verify_now)
		usleep(1000);

	check_name(ls, SOCK_STREAM, "listen.sock", "stream_listener_name");
	check_name(lq, SOCK_SEQPACKET, abstract, "seqpacket_listener_abstract_name");
	check_name(dg, SOCK_DGRAM, "dgram.sock", "dgram_name");
	check_name(gone, SOCK_DGRAM, "gone.sock", "removed_file_name");
	check_listener(ls, SOCK_STREAM, "listen.sock", "stream_listener_accepts");
	check_listener(lq, SOCK_SEQPACKET, abstract, "seqpacket_listener_accepts");

	check_accepted(as, cs, SOCK_STREAM, "listen.sock", "accepted_stream_names");
	check_accepted(aq, cq, SOCK_SEQPACKET, abstract, "accepted_seqpacket_names");
	expect(as, "to-server", "stream_queue_to_server");
	expect(cs, "to-client", "stream_queue_to_client");
	expect(aq, "pkt-1", "seqpacket_first_packet");
	expect(aq, "pkt-22", "seqpacket_second_packet");
	if (send(cs, "again", 5, 0) != 5)
		fail("stream_send_after");
	expect(as, "again", "stream_traffic_after");

	struct sockaddr_un a;
	socklen_t len = addr_of(&a, "dgram.sock");
	int c = socket(AF_UNIX, SOCK_DGRAM, 0);
	char buf[16] = "";
	if (sendto(c, "dgram", 5, 0, (struct sockaddr *)&a, len) != 5 ||
	    recv(dg, buf, sizeof buf, MSG_DONTWAIT) != 5 || memcmp(buf, "dgram", 5))
		fail("dgram_by_path");
	if (send(oneway, "one-way", 7, 0) != 7)
		fail("one_way_send");
	expect(dg, "one-way", "one_way_arrives");
	if (ext >= 0 && send(ext, "ext-hello", 9, 0) != 9)
		fail("ext_send");
	struct stat st;
	if (stat("gone.sock", &st) == 0)
		fail("removed_file_is_back");
	if (stat("dgram.sock", &st) < 0 || !S_ISSOCK(st.st_mode))
		fail("dgram_file_missing");
	return failed;
}
