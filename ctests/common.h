/*
 * Shared by the C tests: checks, "are we running against the installed criu-rs library", a
 * tiny protobuf reader and writer (no protobuf-c), and a fake CRIU server on a socketpair.
 */
#ifndef CTESTS_COMMON_H
#define CTESTS_COMMON_H

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <signal.h>
#include <unistd.h>

#ifndef EXPECTED_LIBDIR
#error "build with -DEXPECTED_LIBDIR=\"<prefix>/lib\" (make ctests does)"
/* ---- Our real servers, started by the tests ------------------------------------------------- */

/* Starts `criu service --address sock_path` and waits until it accepts connections. */
static inline pid_t start_service(const char *criu, const char *sock_path)
{
	pid_t pid = fork();
	if (pid == 0) {
		close_range(3, ~0U, 0);
		execl(criu, criu, "service", "--address", sock_path, (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 10000; i++) {
		int sk = socket(AF_UNIX, SOCK_SEQPACKET, 0);
		struct sockaddr_un addr = { .sun_family = AF_UNIX };
		strncpy(addr.sun_path, sock_path, sizeof addr.sun_path - 1);
		int ok = connect(sk, (struct sockaddr *)&addr, sizeof addr) == 0;
		close(sk);
		if (ok)
			return pid;
		usleep(1000);
	}
	fprintf(stderr, "criu service did not start\n");
	kill(pid, SIGKILL);
	exit(1);
}

#endif

static int failures;

#define CHECK(cond)                                                                        \
	do {                                                                               \
		if (!(cond)) {                                                             \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
			failures++;                                                        \
		}                                                                          \
	} while (0)

#define CHECK_EQ(a, b)                                                                     \
	do {                                                                               \
		long long _a = (long long)(a), _b = (long long)(b);                        \
		if (_a != _b) {                                                            \
			fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%lld != %lld)\n", __FILE__, \
				__LINE__, #a, #b, _a, _b);                                  \
			failures++;                                                        \
		}                                                                          \
	} while (0)

static inline int finish(const char *name)
{
	if (failures) {
		fprintf(stderr, "%s: %d check(s) FAILED\n", name, failures);
		return 1;
	}
	printf("%s: all checks passed\n", name);
	return 0;
}

/* ---- Which libcriu is this? ------------------------------------------------------------ */

/*
 * The library that defines `symbol` must be the one installed under EXPECTED_LIBDIR, and no
 * other libcriu may be mapped (Debian's criu package installs an old libcriu.so.2 in the
 * system library path).
 */
static inline void check_our_library(const void *symbol)
{
	char want[PATH_MAX], got[PATH_MAX], line[PATH_MAX + 256];
	Dl_info info;
	FILE *maps;

	if (!realpath(EXPECTED_LIBDIR, want)) {
		fprintf(stderr, "cannot resolve %s\n", EXPECTED_LIBDIR);
		exit(2);
	}
	if (!dladdr(symbol, &info) || !info.dli_fname || !realpath(info.dli_fname, got)) {
		fprintf(stderr, "cannot tell which library defines the symbol\n");
		exit(2);
	}
	if (strncmp(got, want, strlen(want)) != 0 || got[strlen(want)] != '/') {
		fprintf(stderr, "running against %s, not the library under %s\n", got, want);
		exit(2);
	}
	maps = fopen("/proc/self/maps", "r");
	if (!maps)
		exit(2);
	while (fgets(line, sizeof(line), maps)) {
		char *path = strchr(line, '/');
		/* The file's name, not its directories: a checkout may live under ".../libcriu/". */
		if (path && strstr(strrchr(path, '/'), "libcriu") && strncmp(path, want, strlen(want)) != 0) {
			fprintf(stderr, "another libcriu is mapped: %s", path);
			exit(2);
		}
	}
	fclose(maps);
	printf("using %s\n", got);
}

/* ---- Protobuf, by hand ------------------------------------------------------------------- */

struct pb_field {
	uint32_t num;
	int wire_type; /* 0 varint, 2 length-delimited */
	uint64_t varint;
	const uint8_t *data;
	size_t len;
};

static inline int pb_read_varint(const uint8_t **cur, const uint8_t *end, uint64_t *v)
{
	int shift = 0;
	*v = 0;
	while (*cur < end && shift < 64) {
		uint8_t b = *(*cur)++;
		*v |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80))
			return 0;
		shift += 7;
	}
	return -1;
}

/* 1: a field, 0: end of message, -1: malformed. */
static inline int pb_next(const uint8_t **cur, const uint8_t *end, struct pb_field *f)
{
	uint64_t key;

	if (*cur == end)
		return 0;
	if (pb_read_varint(cur, end, &key))
		return -1;
	f->num = key >> 3;
	f->wire_type = key & 7;
	switch (f->wire_type) {
	case 0:
		return pb_read_varint(cur, end, &f->varint) ? -1 : 1;
	case 2:
		if (pb_read_varint(cur, end, &f->varint) || f->varint > (uint64_t)(end - *cur))
			return -1;
		f->data = *cur;
		f->len = f->varint;
		*cur += f->len;
		return 1;
	default:
		return -1;
	}
}

/* The nth (0-based) occurrence of field `num`; 1 if found. */
static inline int pb_find(const uint8_t *buf, size_t len, uint32_t num, int nth, struct pb_field *out)
{
	const uint8_t *cur = buf, *end = buf + len;
	struct pb_field f;
	int r;

	while ((r = pb_next(&cur, end, &f)) == 1) {
		if (f.num == num && nth-- == 0) {
			*out = f;
			return 1;
		}
	}
	return 0;
}

static inline int pb_count(const uint8_t *buf, size_t len, uint32_t num)
{
	struct pb_field f;
	int n = 0;
	while (pb_find(buf, len, num, n, &f))
		n++;
	return n;
}

/* Number of fields in a message; -1 if malformed. */
static inline int pb_fields(const uint8_t *buf, size_t len)
{
	const uint8_t *cur = buf, *end = buf + len;
	struct pb_field f;
	int n = 0, r;
	while ((r = pb_next(&cur, end, &f)) == 1)
		n++;
	return r < 0 ? -1 : n;
}

struct pb_out {
	uint8_t b[4096];
	size_t n;
};

static inline void pb_put_varint(struct pb_out *o, uint64_t v)
{
	do {
		uint8_t byte = v & 0x7f;
		v >>= 7;
		o->b[o->n++] = byte | (v ? 0x80 : 0);
	} while (v);
}

static inline void pb_varint(struct pb_out *o, uint32_t num, int64_t v)
{
	pb_put_varint(o, (uint64_t)num << 3);
	pb_put_varint(o, (uint64_t)v);
}

static inline void pb_bytes(struct pb_out *o, uint32_t num, const void *data, size_t len)
{
	pb_put_varint(o, (uint64_t)num << 3 | 2);
	pb_put_varint(o, len);
	memcpy(o->b + o->n, data, len);
	o->n += len;
}

static inline void pb_str(struct pb_out *o, uint32_t num, const char *s)
{
	pb_bytes(o, num, s, strlen(s));
}

static inline void pb_msg(struct pb_out *o, uint32_t num, const struct pb_out *sub)
{
	pb_bytes(o, num, sub->b, sub->n);
}

/* ---- criu_req / criu_resp numbers (CRIU's rpc.proto) ------------------------------------ */

enum {
	REQ_EMPTY = 0, REQ_DUMP = 1, REQ_RESTORE = 2, REQ_CHECK = 3, REQ_PRE_DUMP = 4,
	REQ_NOTIFY = 6, REQ_FEATURE_CHECK = 9, REQ_VERSION = 10, REQ_SINGLE_PRE_DUMP = 13,
};

/* ---- A fake server on a socketpair -------------------------------------------------------- */

/* A received request. */
struct req {
	uint8_t buf[65536];
	size_t len;
	int type;
	const uint8_t *opts; /* field 2, or NULL */
	size_t opts_len;
};

/* Receives one request from `sk`; returns 0, or -1 on EOF/error. */
static inline int recv_req(int sk, struct req *r)
{
	struct pb_field f;
	ssize_t n = recv(sk, r->buf, sizeof(r->buf), 0);

	if (n <= 0)
		return -1;
	r->len = n;
	r->type = pb_find(r->buf, r->len, 1, 0, &f) ? (int)f.varint : -1;
	r->opts = NULL;
	r->opts_len = 0;
	if (pb_find(r->buf, r->len, 2, 0, &f)) {
		r->opts = f.data;
		r->opts_len = f.len;
	}
	return 0;
}

static inline void send_out(int sk, const struct pb_out *o)
{
	if (send(sk, o->b, o->n, MSG_NOSIGNAL) != (ssize_t)o->n)
		perror("fake server send");
}

/* Sends a criu_resp of `type` with `success`, plus `extra` fields already encoded. */
static inline void send_resp(int sk, int type, int success, const struct pb_out *extra)
{
	struct pb_out o = { .n = 0 };
	pb_varint(&o, 1, type);
	pb_varint(&o, 2, success);
	if (extra) {
		memcpy(o.b + o.n, extra->b, extra->n);
		o.n += extra->n;
	}
	send_out(sk, &o);
}

/* A socketpair: [0] goes to the library (criu_set_service_fd), [1] is the fake server's. */
static inline void fake_pair(int sv[2])
{
	if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv)) {
		perror("socketpair");
		exit(2);
	}
}

/* A library call running on its own thread while the test plays the server. */
struct call {
	pthread_t thread;
	int (*fn)(void *arg);
	void *arg;
	int ret;
	int err;
};

static void *call_main(void *p)
{
	struct call *c = p;
	c->ret = c->fn(c->arg);
	c->err = errno;
	return NULL;
}

static inline void call_start(struct call *c, int (*fn)(void *), void *arg)
{
	c->fn = fn;
	c->arg = arg;
	if (pthread_create(&c->thread, NULL, call_main, c)) {
		perror("pthread_create");
		exit(2);
	}
}

static inline int call_finish(struct call *c)
{
	pthread_join(c->thread, NULL);
	return c->ret;
}

/* ---- Our real servers, started by the tests ------------------------------------------------- */

/* Starts `criu service --address sock_path` and waits until it accepts connections. */
static inline pid_t start_service(const char *criu, const char *sock_path)
{
	pid_t pid = fork();
	if (pid == 0) {
		close_range(3, ~0U, 0);
		execl(criu, criu, "service", "--address", sock_path, (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 10000; i++) {
		int sk = socket(AF_UNIX, SOCK_SEQPACKET, 0);
		struct sockaddr_un addr = { .sun_family = AF_UNIX };
		strncpy(addr.sun_path, sock_path, sizeof addr.sun_path - 1);
		int ok = connect(sk, (struct sockaddr *)&addr, sizeof addr) == 0;
		close(sk);
		if (ok)
			return pid;
		usleep(1000);
	}
	fprintf(stderr, "criu service did not start\n");
	kill(pid, SIGKILL);
	exit(1);
}

#endif
