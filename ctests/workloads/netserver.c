/* An event-loop server: one epoll over TCP listeners (IPv4, IPv6), UDP sockets (IPv4, IPv6),
 * its accepted connections, a unix socket pair, a timerfd, a signalfd and an eventfd.
 *
 * usage: netserver ADDR4 [ADDR6]   (ports are chosen by the kernel)
 * NETSERVER_EXTRA=others: also holds a packet, a netlink and a raw socket.
 * NETSERVER_EXTRA=selfconn: also connects to its own listener and pings itself every tick;
 *   "SELF" -> "SELF <answers so far>", "PING" -> "PONG".
 * Writes "ready": "pid tcp4 tcp6 udp4 udp6" (0 for a family not asked for).
 *
 * TCP protocol, one command per line:
 *   ECHO text   -> "R<n>:text"   (n counts every request the server answered, over all clients)
 *   HOLD        -> "HELD", then the connection is not read until SIGUSR1 reaches the signalfd
 *   BIG n       -> n bytes, byte i = (i * 7 + 3) & 0xff, sent as the client makes room
 *   STAT        -> "S ok" or "S bad ..." (timer ticks went through the unix pair, the eventfd
 *                  counted every ECHO)
 *   NOACCEPT    -> "NOACCEPT", then new connections wait in the listeners' accept queues
 *   COUNT       -> "C <n>" (n as ECHO would count it, not counting this)
 *   BYE         -> "BYE", then the server shuts its side down (requests still count)
 *   QUIT        -> the server exits 0 when its checks pass, 3 otherwise
 * UDP: "ping" -> "pong <n>".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#define MAXC 64

struct conn {
	int fd;
	int held;
	int wshut; /* BYE: our side is shut down, replies are dropped */
	char in[8192];
	size_t inlen;
	unsigned char *out;
	size_t outlen, outoff;
};

enum { T_L4 = 1, T_L6, T_U4, T_U6, T_TIMER, T_UNIX, T_SIG, T_EV, T_SELF, T_CONN = 100 };

static struct conn conns[MAXC];
static long requests, echoes;
static unsigned long long ticks, unix_bytes, ev_total;
static int ep, upair[2], evfd, listeners[2] = { -1, -1 };
/* NETSERVER_EXTRA=selfconn: a connection from the server to its own listener, pinged on every
 * timer tick; self_pongs counts the answers. */
static int selfc = -1, self_waiting;
static unsigned long long self_pongs;

static void die(const char *what)
{
	perror(what);
	exit(2);
}

static void add(int fd, uint32_t tag, uint32_t events)
{
	struct epoll_event e = { .events = events, .data.u32 = tag };
	if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e))
		die("epoll_ctl add");
}

static void mod(struct conn *c, int idx)
{
	struct epoll_event e = { .data.u32 = T_CONN + idx };
	if (!c->held)
		e.events = EPOLLIN | (c->outlen > c->outoff ? EPOLLOUT : 0);
	if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e))
		die("epoll_ctl mod");
}

static int port_of(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &len))
		die("getsockname");
	if (ss.ss_family == AF_INET)
		return ntohs(((struct sockaddr_in *)&ss)->sin_port);
	return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

static int make(int family, int type, const char *addr)
{
	int fd = socket(family, type | SOCK_NONBLOCK, 0), one = 1;
	if (fd < 0)
		die("socket");
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (family == AF_INET) {
		struct sockaddr_in a = { .sin_family = AF_INET };
		if (inet_pton(AF_INET, addr, &a.sin_addr) != 1)
			die("inet_pton");
		if (bind(fd, (struct sockaddr *)&a, sizeof(a)))
			die("bind");
	} else {
		struct sockaddr_in6 a = { .sin6_family = AF_INET6 };
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
		if (inet_pton(AF_INET6, addr, &a.sin6_addr) != 1)
			die("inet_pton6");
		if (bind(fd, (struct sockaddr *)&a, sizeof(a)))
			die("bind6");
	}
	if (type == SOCK_STREAM && listen(fd, 16))
		die("listen");
	return fd;
}

static const char *check(void)
{
	static char why[256];
	uint64_t v;
	char buf[256];
	ssize_t r;
	/* Events not handled yet count too. */
	if (read(evfd, &v, 8) == 8)
		ev_total += v;
	while ((r = read(upair[1], buf, sizeof(buf))) > 0)
		unix_bytes += r;
	if (ticks == 0)
		return "no timer ticks";
	if (unix_bytes > ticks || ticks - unix_bytes > 64) {
		snprintf(why, sizeof(why), "unix pair carried %llu of %llu ticks", unix_bytes, ticks);
		return why;
	}
	if (ev_total != (unsigned long long)echoes) {
		snprintf(why, sizeof(why), "eventfd counted %llu of %ld echoes", ev_total, echoes);
		return why;
	}
	return NULL;
}

static void flush_out(struct conn *c)
{
	while (c->outoff < c->outlen) {
		ssize_t n = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);
		if (n <= 0)
			break;
		c->outoff += n;
	}
	if (c->outoff == c->outlen) {
		free(c->out);
		c->out = NULL;
		c->outlen = c->outoff = 0;
	}
}

static void queue_out(struct conn *c, const void *data, size_t len)
{
	if (c->wshut)
		return;
	c->out = realloc(c->out, c->outlen + len);
	if (!c->out)
		die("realloc");
	memcpy(c->out + c->outlen, data, len);
	c->outlen += len;
}

static void reply(struct conn *c, const char *fmt, ...)
{
	char buf[9000];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	queue_out(c, buf, n);
}

static void close_conn(int idx)
{
	struct conn *c = &conns[idx];
	close(c->fd);
	free(c->out);
	memset(c, 0, sizeof(*c));
	c->fd = -1;
}

/* Handles the complete lines of c; returns -1 when the connection is gone. */
static int serve(int idx)
{
	struct conn *c = &conns[idx];
	char *nl;
	while (!c->held && (nl = memchr(c->in, '\n', c->inlen))) {
		*nl = 0;
		char *line = c->in;
		if (!strncmp(line, "ECHO ", 5)) {
			uint64_t one = 1;
			requests++;
			echoes++;
			if (write(evfd, &one, 8) != 8)
				die("eventfd write");
			reply(c, "R%ld:%s\n", requests, line + 5);
		} else if (!strcmp(line, "HOLD")) {
			reply(c, "HELD\n");
			c->held = 1;
		} else if (!strncmp(line, "BIG ", 4)) {
			size_t n = strtoul(line + 4, NULL, 10);
			unsigned char *b = malloc(n);
			requests++;
			for (size_t i = 0; i < n; i++)
				b[i] = (i * 7 + 3) & 0xff;
			queue_out(c, b, n);
			free(b);
		} else if (!strcmp(line, "NOACCEPT")) {
			epoll_ctl(ep, EPOLL_CTL_DEL, listeners[0], NULL);
			if (listeners[1] >= 0)
				epoll_ctl(ep, EPOLL_CTL_DEL, listeners[1], NULL);
			reply(c, "NOACCEPT\n");
		} else if (!strcmp(line, "BYE")) {
			reply(c, "BYE\n");
			flush_out(c);
			shutdown(c->fd, SHUT_WR);
			c->wshut = 1;
		} else if (!strcmp(line, "COUNT")) {
			reply(c, "C %ld\n", requests);
		} else if (!strcmp(line, "PING")) {
			reply(c, "PONG\n");
		} else if (!strcmp(line, "SELF")) {
			reply(c, "SELF %llu\n", self_pongs);
		} else if (!strcmp(line, "STAT")) {
			const char *why = check();
			reply(c, why ? "S bad %s\n" : "S ok\n", why);
		} else if (!strcmp(line, "QUIT")) {
			const char *why = check();
			if (why)
				fprintf(stderr, "check failed: %s\n", why);
			exit(why ? 3 : 0);
		} else {
			reply(c, "E unknown\n");
		}
		size_t used = nl + 1 - c->in;
		memmove(c->in, nl + 1, c->inlen - used);
		c->inlen -= used;
	}
	flush_out(c);
	mod(c, idx);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: netserver ADDR4 [ADDR6]\n");
		return 2;
	}
	/* Its own session and group: the dump takes the server alone. */
	setsid();
	for (int i = 0; i < MAXC; i++)
		conns[i].fd = -1;
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigprocmask(SIG_BLOCK, &set, NULL);
	int sfd = signalfd(-1, &set, SFD_NONBLOCK);
	int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	evfd = eventfd(0, EFD_NONBLOCK);
	ep = epoll_create1(0);
	if (sfd < 0 || tfd < 0 || evfd < 0 || ep < 0)
		die("fds");
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, upair))
		die("socketpair");
	struct itimerspec its = { .it_interval = { 0, 20000000 }, .it_value = { 0, 20000000 } };
	if (timerfd_settime(tfd, 0, &its, NULL))
		die("timerfd_settime");

	int l4 = make(AF_INET, SOCK_STREAM, argv[1]);
	int u4 = make(AF_INET, SOCK_DGRAM, argv[1]);
	int l6 = -1, u6 = -1;
	listeners[0] = l4;
	add(l4, T_L4, EPOLLIN);
	add(u4, T_U4, EPOLLIN);
	if (argc > 2) {
		l6 = make(AF_INET6, SOCK_STREAM, argv[2]);
		u6 = make(AF_INET6, SOCK_DGRAM, argv[2]);
		listeners[1] = l6;
		add(l6, T_L6, EPOLLIN);
		add(u6, T_U6, EPOLLIN);
	}
	add(tfd, T_TIMER, EPOLLIN);
	add(upair[1], T_UNIX, EPOLLIN);
	add(sfd, T_SIG, EPOLLIN);
	add(evfd, T_EV, EPOLLIN);

	/* NETSERVER_EXTRA=others: also hold sockets of kinds the dump refuses. */
	const char *extra = getenv("NETSERVER_EXTRA");
	if (extra && !strcmp(extra, "others")) {
		if (socket(AF_PACKET, SOCK_DGRAM, 0) < 0)
			die("packet socket");
		if (socket(AF_NETLINK, SOCK_RAW, 0) < 0)
			die("netlink socket");
		if (socket(AF_INET, SOCK_RAW, IPPROTO_ICMP) < 0)
			die("raw socket");
	}

	if (extra && !strcmp(extra, "selfconn")) {
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		getsockname(l4, (struct sockaddr *)&ss, &len);
		selfc = socket(AF_INET, SOCK_STREAM, 0);
		if (selfc < 0 || connect(selfc, (struct sockaddr *)&ss, len))
			die("self connect");
		add(selfc, T_SELF, EPOLLIN);
	}

	FILE *f = fopen("ready.tmp", "w");
	fprintf(f, "%d %d %d %d %d\n", getpid(), port_of(l4), l6 < 0 ? 0 : port_of(l6), port_of(u4),
		u6 < 0 ? 0 : port_of(u6));
	fclose(f);
	rename("ready.tmp", "ready");

	for (;;) {
		struct epoll_event evs[16];
		int n = epoll_wait(ep, evs, 16, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("epoll_wait");
		}
		for (int i = 0; i < n; i++) {
			uint32_t tag = evs[i].data.u32;
			uint64_t v;
			char buf[2048];
			switch (tag) {
			case T_TIMER:
				if (read(tfd, &v, 8) == 8) {
					ticks += v;
					if (write(upair[0], "t", 1) != 1)
						die("unix write");
					if (selfc >= 0 && !self_waiting && write(selfc, "PING\n", 5) == 5)
						self_waiting = 1;
				}
				break;
			case T_UNIX: {
				ssize_t r = read(upair[1], buf, sizeof(buf));
				if (r > 0)
					unix_bytes += r;
				break;
			}
			case T_SELF: {
				ssize_t r = read(selfc, buf, sizeof(buf));
				if (r <= 0 && errno != EAGAIN)
					die("self connection");
				if (r == 5 && !memcmp(buf, "PONG\n", 5)) {
					self_pongs++;
					self_waiting = 0;
				}
				break;
			}
			case T_EV:
				if (read(evfd, &v, 8) == 8)
					ev_total += v;
				break;
			case T_SIG: {
				struct signalfd_siginfo si;
				while (read(sfd, &si, sizeof(si)) == sizeof(si)) {
					for (int k = 0; k < MAXC; k++) {
						if (conns[k].fd >= 0 && conns[k].held) {
							conns[k].held = 0;
							serve(k);
						}
					}
				}
				break;
			}
			case T_L4:
			case T_L6: {
				int c = accept4(tag == T_L4 ? l4 : l6, NULL, NULL, SOCK_NONBLOCK);
				if (c < 0)
					break;
				int k = 0;
				while (k < MAXC && conns[k].fd >= 0)
					k++;
				if (k == MAXC) {
					close(c);
					break;
				}
				conns[k].fd = c;
				add(c, T_CONN + k, EPOLLIN);
				break;
			}
			case T_U4:
			case T_U6: {
				struct sockaddr_storage from;
				socklen_t fl = sizeof(from);
				int u = tag == T_U4 ? u4 : u6;
				ssize_t r = recvfrom(u, buf, sizeof(buf) - 1, 0, (struct sockaddr *)&from, &fl);
				if (r == 4 && !memcmp(buf, "ping", 4)) {
					int m = snprintf(buf, sizeof(buf), "pong %ld", ++requests);
					sendto(u, buf, m, 0, (struct sockaddr *)&from, fl);
				}
				break;
			}
			default: {
				int k = tag - T_CONN;
				struct conn *c = &conns[k];
				if (c->fd < 0)
					break;
				if (evs[i].events & EPOLLOUT)
					flush_out(c);
				if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
					ssize_t r = read(c->fd, c->in + c->inlen, sizeof(c->in) - c->inlen);
					if (r == 0 || (r < 0 && errno != EAGAIN)) {
						close_conn(k);
						break;
					}
					if (r > 0)
						c->inlen += r;
				}
				serve(k);
			}
			}
		}
	}
}
