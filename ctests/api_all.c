/*
 * Every function of criu.h, against the installed library. The library talks to a fake server
 * (criu_set_service_fd with one end of a socketpair): a thread makes the call, the test reads
 * the criu_req the library sent, checks each field, and answers with a hand-made criu_resp.
 * So this checks what each setter stores, the RPC client end to end (notifications, fds,
 * dump iterations), and every return code.
 */
#define _GNU_SOURCE
#include <criu.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include "common.h"

/* ---- Request inspection ------------------------------------------------------------------- */

static int opt_find(const struct req *r, uint32_t num, int nth, struct pb_field *f)
{
	return r->opts && pb_find(r->opts, r->opts_len, num, nth, f);
}

#define CHECK_ABSENT(r, num)                                                                  \
	do {                                                                                  \
		struct pb_field _f;                                                           \
		if (opt_find(r, num, 0, &_f)) {                                               \
			fprintf(stderr, "%s:%d: criu_opts field %d should be absent\n", __FILE__, \
				__LINE__, num);                                               \
			failures++;                                                           \
		}                                                                             \
	} while (0)

/* Field `num` of criu_opts is a varint whose low 32 bits are `want` (int32/uint32/bool/enum). */
#define CHECK_OPT(r, num, want)                                                               \
	do {                                                                                  \
		struct pb_field _f;                                                           \
		if (!opt_find(r, num, 0, &_f) || _f.wire_type != 0) {                         \
			fprintf(stderr, "%s:%d: criu_opts field %d missing\n", __FILE__, __LINE__, num); \
			failures++;                                                           \
		} else {                                                                      \
			CHECK_EQ((uint32_t)_f.varint, (uint32_t)(want));                      \
		}                                                                             \
	} while (0)

static int bytes_eq(const struct pb_field *f, const char *s)
{
	return f->wire_type == 2 && f->len == strlen(s) && memcmp(f->data, s, f->len) == 0;
}

/* Occurrence `nth` of string field `num` of criu_opts is `want`. */
#define CHECK_OPT_STR(r, num, nth, want)                                                      \
	do {                                                                                  \
		struct pb_field _f;                                                           \
		if (!opt_find(r, num, nth, &_f) || !bytes_eq(&_f, want)) {                    \
			fprintf(stderr, "%s:%d: criu_opts field %d[%d] is not \"%s\"\n", __FILE__, \
				__LINE__, num, nth, want);                                    \
			failures++;                                                           \
		}                                                                             \
	} while (0)

/* Field `num` of the submessage `sub` is the string `want`. */
static int sub_str(const struct pb_field *sub, uint32_t num, const char *want)
{
	struct pb_field f;
	return pb_find(sub->data, sub->len, num, 0, &f) && bytes_eq(&f, want);
}

static int sub_varint(const struct pb_field *sub, uint32_t num, uint64_t *v)
{
	struct pb_field f;
	if (!pb_find(sub->data, sub->len, num, 0, &f) || f.wire_type != 0)
		return 0;
	*v = f.varint;
	return 1;
}

/* ---- Calls on a thread -------------------------------------------------------------------- */

static int w_dump(void *a) { (void)a; return criu_dump(); }
static int w_pre_dump(void *a) { (void)a; return criu_pre_dump(); }
static int w_check(void *a) { (void)a; return criu_check(); }
static int w_restore(void *a) { (void)a; return criu_restore(); }
static int w_get_version(void *a) { (void)a; return criu_get_version(); }
static int w_check_version(void *a) { return criu_check_version(*(int *)a); }
static int w_local_dump(void *a) { return criu_local_dump(a); }
static int w_local_pre_dump(void *a) { return criu_local_pre_dump(a); }
static int w_local_restore(void *a) { return criu_local_restore(a); }
static int w_local_check(void *a) { return criu_local_check(a); }
static int w_local_get_version(void *a) { return criu_local_get_version(a); }

static int local_check_version_min;
static int w_local_check_version(void *a) { return criu_local_check_version(a, local_check_version_min); }

struct fc_args {
	criu_opts *opts; /* NULL: the plain API */
	void *features;
	size_t size;
};
static int w_feature_check(void *a)
{
	struct fc_args *f = a;
	if (f->opts)
		return criu_local_feature_check(f->opts, f->features, f->size);
	return criu_feature_check(f->features, f->size);
}

/* Starts `fn` with the plain API's options pointed at a new fake server; returns its socket. */
static int serve_global(struct call *c, int (*fn)(void *), void *arg)
{
	int sv[2];
	fake_pair(sv);
	criu_set_service_fd(sv[0]);
	call_start(c, fn, arg);
	return sv[1];
}

/* Starts `fn(arg)` with `o` pointed at a new fake server; returns its socket. */
static int serve_local_with(criu_opts *o, struct call *c, int (*fn)(void *), void *arg)
{
	int sv[2];
	fake_pair(sv);
	criu_local_set_service_fd(o, sv[0]);
	call_start(c, fn, arg);
	return sv[1];
}

static int serve_local(criu_opts *o, struct call *c, int (*fn)(void *))
{
	return serve_local_with(o, c, fn, o);
}

/* Runs criu_dump() and captures the request, answered with DUMP success. */
static void capture_dump(struct req *r)
{
	struct call c;
	int sk = serve_global(&c, w_dump, NULL);
	CHECK_EQ(recv_req(sk, r), 0);
	send_resp(sk, REQ_DUMP, 1, NULL);
	CHECK_EQ(call_finish(&c), 0);
	close(sk);
}

/* ---- The tests ---------------------------------------------------------------------------- */

static void test_defaults(void)
{
	struct req r;

	CHECK_EQ(criu_get_orphan_pts_master_fd(), -1);
	CHECK_EQ(criu_init_opts(), 0);
	capture_dump(&r);
	CHECK_EQ(r.type, REQ_DUMP);
	CHECK(r.opts != NULL);
	/* A fresh criu_opts is exactly images_dir_fd = -1 (required, so always sent). */
	CHECK_EQ(pb_fields(r.opts, r.opts_len), 1);
	CHECK_OPT(&r, 1, -1);
	CHECK_ABSENT(&r, 2);
	{
		/* The request itself carries only type and opts. */
		CHECK_EQ(pb_fields(r.buf, r.len), 2);
	}

	/* criu_check sends no options at all, as libcriu. */
	{
		struct call c;
		int sk = serve_global(&c, w_check, NULL);
		CHECK_EQ(recv_req(sk, &r), 0);
		CHECK_EQ(r.type, REQ_CHECK);
		CHECK(r.opts == NULL);
		send_resp(sk, REQ_CHECK, 1, NULL);
		CHECK_EQ(call_finish(&c), 0);
		close(sk);
	}
}

static int notify_cb_noop(char *action, criu_notify_arg_t na)
{
	(void)action;
	(void)na;
	return 0;
}

static void test_every_setter(void)
{
	char *cmd[] = { "/bin/true", "arg1", NULL };
	struct pb_field f;
	struct req r;
	uint64_t v;

	CHECK_EQ(criu_init_opts(), 0);
	/* inherit_fd needs a server that is our child: fine with the default embedded server... */
	CHECK_EQ(criu_add_inherit_fd(9, "pipe:[77]"), 0);
	criu_set_service_fd(-1);
	/* ...but not with a service fd or address. */
	CHECK_EQ(criu_add_inherit_fd(10, "pipe:[78]"), -EINVAL);

	criu_set_images_dir_fd(7);
	criu_set_pid(1234);
	criu_set_leave_running(true);
	criu_set_ext_unix_sk(true);
	CHECK_EQ(criu_add_unix_sk(99), 0);
	criu_set_tcp_established(true);
	criu_set_tcp_skip_in_flight(true);
	criu_set_tcp_close(true);
	criu_set_weak_sysctls(true);
	criu_set_evasive_devices(true);
	criu_set_shell_job(true);
	criu_set_shell_job(false); /* stored as present-and-false */
	criu_set_skip_file_rwx_check(true);
	criu_set_unprivileged(true);
	criu_set_orphan_pts_master(true);
	criu_set_file_locks(true);
	criu_set_track_mem(true);
	criu_set_auto_dedup(true);
	criu_set_force_irmap(true);
	criu_set_link_remap(true);
	criu_set_log_level(CRIU_LOG_DEBUG);
	CHECK_EQ(criu_set_log_file("dump.log"), 0);
	criu_set_cpu_cap(3);
	CHECK_EQ(criu_set_root("/rootfs"), 0);
	criu_set_manage_cgroups(true);
	criu_set_manage_cgroups_mode(CRIU_CG_MODE_STRICT);
	CHECK_EQ(criu_set_freeze_cgroup("/sys/fs/cgroup/x"), 0);
	CHECK_EQ(criu_set_lsm_profile("apparmor:p"), 0);
	CHECK_EQ(criu_set_lsm_mount_context("ctx"), 0);
	criu_set_timeout(30);
	criu_set_auto_ext_mnt(true);
	criu_set_ext_sharing(true);
	criu_set_ext_masters(true);
	CHECK_EQ(criu_set_exec_cmd(2, cmd), 0);
	CHECK_EQ(criu_add_ext_mount("/key", "/val"), 0);
	CHECK_EQ(criu_add_veth_pair("veth0", "br0"), 0);
	CHECK_EQ(criu_add_cg_root("cpu", "/a"), 0);
	CHECK_EQ(criu_add_cg_root(NULL, "/b"), 0);
	CHECK_EQ(criu_add_enable_fs("nfs"), 0);
	CHECK_EQ(criu_add_skip_mnt("/proc/x"), 0);
	criu_set_ghost_limit(0x100001);
	CHECK_EQ(criu_add_irmap_path("/irmap"), 0);
	CHECK_EQ(criu_add_external("net[1]:ext"), 0);
	CHECK_EQ(criu_add_external("mnt[/m]:m"), 0);
	CHECK_EQ(criu_set_page_server_address_port("10.0.0.1", 1234), 0);
	CHECK_EQ(criu_set_pre_dump_mode(CRIU_PRE_DUMP_READ), 0);
	criu_set_pidfd_store_sk(11);
	CHECK_EQ(criu_set_network_lock(CRIU_NETWORK_LOCK_NFTABLES), 0);
	CHECK_EQ(criu_join_ns_add("net", "/proc/1/ns/net", NULL), 0);
	CHECK_EQ(criu_join_ns_add("user", "/proc/1/ns/user", "0,0"), 0);
	criu_set_mntns_compat_mode(true);
	CHECK_EQ(criu_set_config_file("/etc/criu/runc.conf"), 0);
	criu_set_empty_ns(CLONE_NEWNET);
	CHECK_EQ(criu_set_parent_images("../parent"), 0);
	criu_set_work_dir_fd(8);
	criu_set_notify_cb(notify_cb_noop);

	capture_dump(&r);
	CHECK_EQ(r.type, REQ_DUMP);
	CHECK_OPT(&r, 1, 7);
	CHECK_OPT(&r, 2, 1234);
	CHECK_OPT(&r, 3, 1);
	CHECK_OPT(&r, 4, 1);
	CHECK_OPT(&r, 5, 1);
	CHECK_OPT(&r, 6, 1);
	CHECK_OPT(&r, 7, 0);
	CHECK_OPT(&r, 8, 1);
	CHECK_OPT(&r, 9, 4);
	CHECK_OPT_STR(&r, 10, 0, "dump.log");
	CHECK(opt_find(&r, 11, 0, &f) && sub_str(&f, 1, "10.0.0.1") && sub_varint(&f, 2, &v) && v == 1234);
	CHECK_OPT(&r, 12, 1);
	CHECK_OPT_STR(&r, 13, 0, "/rootfs");
	CHECK_OPT_STR(&r, 14, 0, "../parent");
	CHECK_OPT(&r, 15, 1);
	CHECK_OPT(&r, 16, 1);
	CHECK_OPT(&r, 17, 8);
	CHECK_OPT(&r, 18, 1);
	CHECK(opt_find(&r, 19, 0, &f) && sub_str(&f, 1, "veth0") && sub_str(&f, 2, "br0"));
	CHECK_OPT(&r, 20, 3);
	CHECK_OPT(&r, 21, 1);
	CHECK_OPT_STR(&r, 22, 0, "/bin/true");
	CHECK_OPT_STR(&r, 22, 1, "arg1");
	CHECK(opt_find(&r, 23, 0, &f) && sub_str(&f, 1, "/key") && sub_str(&f, 2, "/val"));
	CHECK_OPT(&r, 24, 1);
	CHECK(opt_find(&r, 25, 0, &f) && sub_str(&f, 1, "cpu") && sub_str(&f, 2, "/a"));
	CHECK(opt_find(&r, 25, 1, &f) && pb_count(f.data, f.len, 1) == 0 && sub_str(&f, 2, "/b"));
	CHECK_ABSENT(&r, 26); /* rst_sibling: only criu_restore_child sets it */
	CHECK(opt_find(&r, 27, 0, &f) && sub_str(&f, 1, "pipe:[77]") && sub_varint(&f, 2, &v) && v == 9);
	CHECK_EQ(r.opts ? pb_count(r.opts, r.opts_len, 27) : -1, 1);
	CHECK_OPT(&r, 28, 1);
	CHECK_OPT(&r, 29, 1);
	CHECK_OPT(&r, 30, 1);
	CHECK_OPT_STR(&r, 31, 0, "/proc/x");
	CHECK_OPT_STR(&r, 32, 0, "nfs");
	CHECK(opt_find(&r, 33, 0, &f) && sub_varint(&f, 1, &v) && v == 99);
	CHECK_OPT(&r, 34, CRIU_CG_MODE_STRICT);
	CHECK_OPT(&r, 35, 0x100001);
	CHECK_OPT_STR(&r, 36, 0, "/irmap");
	CHECK_OPT_STR(&r, 37, 0, "net[1]:ext");
	CHECK_OPT_STR(&r, 37, 1, "mnt[/m]:m");
	CHECK_OPT(&r, 38, CLONE_NEWNET);
	CHECK(opt_find(&r, 39, 0, &f) && sub_str(&f, 1, "net") && sub_str(&f, 2, "/proc/1/ns/net") &&
	      pb_count(f.data, f.len, 3) == 0);
	CHECK(opt_find(&r, 39, 1, &f) && sub_str(&f, 1, "user") && sub_str(&f, 3, "0,0"));
	CHECK_ABSENT(&r, 41); /* cgroup props: criu_local_* only */
	CHECK_OPT_STR(&r, 44, 0, "/sys/fs/cgroup/x");
	CHECK_OPT(&r, 45, 30); /* libcriu never sends the timeout; we do */
	CHECK_OPT(&r, 46, 1);
	CHECK_OPT(&r, 47, 1);
	CHECK_OPT(&r, 50, 1);
	CHECK_OPT_STR(&r, 51, 0, "/etc/criu/runc.conf");
	CHECK_OPT(&r, 52, 1);
	CHECK_OPT_STR(&r, 53, 0, "apparmor:p");
	CHECK_OPT(&r, 61, CRIU_PRE_DUMP_READ);
	CHECK_OPT(&r, 62, 11);
	CHECK_OPT_STR(&r, 63, 0, "ctx");
	CHECK_OPT(&r, 64, CRIU_NETWORK_LOCK_NFTABLES);
	CHECK_OPT(&r, 65, 1);
	CHECK_OPT(&r, 66, 1);
	CHECK_OPT(&r, 67, 1);
	/* No setter exists for these. */
	CHECK_ABSENT(&r, 48);
	CHECK_ABSENT(&r, 49);
	CHECK_ABSENT(&r, 58);
	CHECK_ABSENT(&r, 68);
	CHECK_ABSENT(&r, 69);

	/* Replacing and re-adding. */
	CHECK_EQ(criu_set_log_file("other.log"), 0);
	CHECK_EQ(criu_set_exec_cmd(0, NULL), 0);
	criu_set_leave_running(false);
	capture_dump(&r);
	CHECK_OPT_STR(&r, 10, 0, "other.log");
	CHECK_EQ(r.opts ? pb_count(r.opts, r.opts_len, 22) : -1, 0);
	CHECK_OPT(&r, 3, 0);
}

static void test_bad_arguments(void)
{
	char *null_arg[] = { NULL };
	struct req r;

	CHECK_EQ(criu_init_opts(), 0);
	criu_set_service_fd(-1);

	/* Enum values outside the enum: refused, nothing stored. */
	CHECK_EQ(criu_set_pre_dump_mode((enum criu_pre_dump_mode)7), -EINVAL);
	CHECK_EQ(criu_set_pre_dump_mode((enum criu_pre_dump_mode)0), -EINVAL);
	CHECK_EQ(criu_set_network_lock((enum criu_network_lock_method)0), -EINVAL);
	CHECK_EQ(criu_set_network_lock((enum criu_network_lock_method)4), -EINVAL);
	CHECK_EQ(criu_set_network_lock((enum criu_network_lock_method)-1), -EINVAL);
	/* libcriu stores any cgroup mode (void setter); the server refuses bad ones. */
	criu_set_manage_cgroups_mode((enum criu_cg_mode)99);

	/* NULL strings: libcriu would crash; we refuse. */
	CHECK_EQ(criu_set_log_file(NULL), -EINVAL);
	CHECK_EQ(criu_set_root(NULL), -EINVAL);
	CHECK_EQ(criu_set_parent_images(NULL), -EINVAL);
	CHECK_EQ(criu_set_freeze_cgroup(NULL), -EINVAL);
	CHECK_EQ(criu_set_lsm_profile(NULL), -EINVAL);
	CHECK_EQ(criu_set_lsm_mount_context(NULL), -EINVAL);
	CHECK_EQ(criu_set_config_file(NULL), -EINVAL);
	CHECK_EQ(criu_add_external(NULL), -EINVAL);
	CHECK_EQ(criu_add_ext_mount("/k", NULL), -EINVAL);
	CHECK_EQ(criu_add_ext_mount(NULL, "/v"), -EINVAL);
	CHECK_EQ(criu_add_veth_pair(NULL, "br0"), -EINVAL);
	CHECK_EQ(criu_add_cg_root("cpu", NULL), -EINVAL);
	CHECK_EQ(criu_add_enable_fs(NULL), -EINVAL);
	CHECK_EQ(criu_add_skip_mnt(NULL), -EINVAL);
	CHECK_EQ(criu_add_irmap_path(NULL), -EINVAL);
	CHECK_EQ(criu_join_ns_add(NULL, "/proc/1/ns/net", NULL), -EINVAL);
	CHECK_EQ(criu_join_ns_add("net", NULL, NULL), -EINVAL);
	CHECK_EQ(criu_set_exec_cmd(-1, NULL), -EINVAL);
	CHECK_EQ(criu_set_exec_cmd(1, NULL), -EINVAL);
	CHECK_EQ(criu_set_exec_cmd(1, null_arg), -EINVAL);
	/* Protobuf strings are UTF-8. */
	CHECK_EQ(criu_set_log_file("\xff\xfe"), -EINVAL);

	/* ext_unix_sk explicitly off: adding a socket is refused and the list dropped. */
	CHECK_EQ(criu_add_unix_sk(5), 0);
	criu_set_ext_unix_sk(false);
	CHECK_EQ(criu_add_unix_sk(6), -EINVAL);

	capture_dump(&r);
	CHECK_ABSENT(&r, 10);
	CHECK_ABSENT(&r, 13);
	CHECK_ABSENT(&r, 22);
	CHECK_ABSENT(&r, 23);
	CHECK_ABSENT(&r, 33);
	CHECK_OPT(&r, 4, 0);
	CHECK_OPT(&r, 34, 99);
	CHECK_ABSENT(&r, 61);
	CHECK_ABSENT(&r, 64);

	/* NULL service address / binary mean libcriu's defaults, and succeed. */
	CHECK_EQ(criu_set_service_address(NULL), 0);
	CHECK_EQ(criu_set_service_binary(NULL), 0);

	/* NULL criu_opts for the local API: refused, never a crash. */
	CHECK_EQ(criu_local_init_opts(NULL), -1);
	criu_local_free_opts(NULL);
	criu_local_set_pid(NULL, 1);
	CHECK_EQ(criu_local_set_log_file(NULL, "x"), -EINVAL);
	CHECK_EQ(criu_local_dump(NULL), -EINVAL);
	CHECK_EQ(criu_local_check(NULL), -EINVAL);
	CHECK_EQ(criu_notify_pid(NULL), 0);
}

static void test_return_codes(void)
{
	struct pb_out extra;
	struct call c;
	struct req r;
	int sk;

	CHECK_EQ(criu_init_opts(), 0);
	criu_set_pid(1);

	/* The request failed: -EBADE, errno from cr_errno. */
	sk = serve_global(&c, w_dump, NULL);
	CHECK_EQ(recv_req(sk, &r), 0);
	extra.n = 0;
	pb_varint(&extra, 7, ENOENT);
	pb_str(&extra, 9, "no such images");
	send_resp(sk, REQ_DUMP, 0, &extra);
	CHECK_EQ(call_finish(&c), -EBADE);
	CHECK_EQ(c.err, ENOENT);
	close(sk);

	/* Success clears errno, as libcriu. */
	errno = EPERM;
	sk = serve_global(&c, w_dump, NULL);
	CHECK_EQ(recv_req(sk, &r), 0);
	send_resp(sk, REQ_DUMP, 1, NULL);
	CHECK_EQ(call_finish(&c), 0);
	CHECK_EQ(c.err, 0);
	close(sk);

	/* A self-dump's restored process sees restored=true: criu_dump returns 1. */
	sk = serve_global(&c, w_dump, NULL);
	CHECK_EQ(recv_req(sk, &r), 0);
	{
		struct pb_out dump = { .n = 0 };
		pb_varint(&dump, 1, 1);
		extra.n = 0;
		pb_msg(&extra, 3, &dump);
	}
	send_resp(sk, REQ_DUMP, 1, &extra);
	CHECK_EQ(call_finish(&c), 1);
	close(sk);

	/* An answer of another type: -EBADMSG. */
	sk = serve_global(&c, w_dump, NULL);
	CHECK_EQ(recv_req(sk, &r), 0);
	send_resp(sk, REQ_CHECK, 1, NULL);
	CHECK_EQ(call_finish(&c), -EBADMSG);
	close(sk);

	/* The server refused the request (EMPTY, false): -EINVAL. */
	sk = serve_global(&c, w_dump, NULL);
	CHECK_EQ(recv_req(sk, &r), 0);
	send_resp(sk, REQ_EMPTY, 0, NULL);
	CHECK_EQ(call_finish(&c), -EINVAL);
	close(sk);

	/* No answer, or garbage: -ECOMM. */
	sk = serve_global(&c, w_check, NULL);
	CHECK_EQ(recv_req(sk, &r), 0);
	close(sk);
	CHECK_EQ(call_finish(&c), -ECOMM);

	sk = serve_global(&c, w_check, NULL);
	CHECK_EQ(recv_req(sk, &r), 0);
	CHECK_EQ(send(sk, "\xff\xff\xff", 3, 0), 3);
	CHECK_EQ(call_finish(&c), -ECOMM);
	close(sk);

	/* The library closes the service fd after each operation, as libcriu. */
	{
		int sv[2];
		fake_pair(sv);
		criu_set_service_fd(sv[0]);
		call_start(&c, w_check, NULL);
		CHECK_EQ(recv_req(sv[1], &r), 0);
		send_resp(sv[1], REQ_CHECK, 1, NULL);
		CHECK_EQ(call_finish(&c), 0);
		CHECK(fcntl(sv[0], F_GETFD) == -1 && errno == EBADF);
		close(sv[1]);
	}

	/* Nobody there: -ECONNREFUSED, errno says why. */
	CHECK_EQ(criu_set_service_address("/nonexistent/criu_service.socket"), 0);
	errno = 0;
	CHECK_EQ(criu_check(), -ECONNREFUSED);
	CHECK_EQ(errno, ENOENT);
	criu_set_service_fd(-1);
	CHECK_EQ(criu_check(), -ECONNREFUSED);

	/* Restore returns the pid; pre-dump sends SINGLE_PRE_DUMP. */
	sk = serve_global(&c, w_restore, NULL);
	CHECK_EQ(recv_req(sk, &r), 0);
	CHECK_EQ(r.type, REQ_RESTORE);
	CHECK_ABSENT(&r, 26);
	{
		struct pb_out restore = { .n = 0 };
		pb_varint(&restore, 1, 4321);
		extra.n = 0;
		pb_msg(&extra, 4, &restore);
	}
	send_resp(sk, REQ_RESTORE, 1, &extra);
	CHECK_EQ(call_finish(&c), 4321);
	close(sk);

	sk = serve_global(&c, w_pre_dump, NULL);
	CHECK_EQ(recv_req(sk, &r), 0);
	CHECK_EQ(r.type, REQ_SINGLE_PRE_DUMP);
	send_resp(sk, REQ_SINGLE_PRE_DUMP, 1, NULL);
	CHECK_EQ(call_finish(&c), 0);
	close(sk);
}

/* ---- Notifications ------------------------------------------------------------------------ */

static char seen_actions[8][32];
static int seen_pids[8], seen_fds[8], n_seen, abort_on_network_lock;

static int record_cb(char *action, criu_notify_arg_t na)
{
	if (n_seen < 8) {
		snprintf(seen_actions[n_seen], sizeof(seen_actions[0]), "%s", action);
		seen_pids[n_seen] = criu_notify_pid(na);
		seen_fds[n_seen] = criu_get_orphan_pts_master_fd();
		n_seen++;
	}
	if (abort_on_network_lock && strcmp(action, "network-lock") == 0)
		return 3;
	return 0;
}

/* Sends a NOTIFY (with `fd` attached if >= 0) and returns the ack's notify_success (-1: none). */
static int notify(int sk, const char *script, int pid, int fd)
{
	struct pb_out n = { .n = 0 }, o = { .n = 0 };
	struct pb_field f;
	struct req ack;

	pb_str(&n, 1, script);
	if (pid)
		pb_varint(&n, 2, pid);
	pb_varint(&o, 1, REQ_NOTIFY);
	pb_varint(&o, 2, 1);
	pb_msg(&o, 5, &n);
	if (fd >= 0) {
		char cbuf[CMSG_SPACE(sizeof(int))] = { 0 };
		struct iovec iov = { .iov_base = o.b, .iov_len = o.n };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
				     .msg_controllen = sizeof(cbuf) };
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &fd, sizeof(int));
		if (sendmsg(sk, &mh, 0) != (ssize_t)o.n)
			perror("sendmsg");
	} else {
		send_out(sk, &o);
	}
	if (recv_req(sk, &ack) || ack.type != REQ_NOTIFY)
		return -1;
	return pb_find(ack.buf, ack.len, 3, 0, &f) ? (int)f.varint : -1;
}

static void test_notify(void)
{
	struct call c;
	struct req r;
	int sk, pipefd[2];

	CHECK_EQ(criu_init_opts(), 0);
	criu_set_pid(1);
	criu_set_notify_cb(record_cb);
	CHECK_EQ(pipe(pipefd), 0);

	n_seen = 0;
	abort_on_network_lock = 0;
	sk = serve_global(&c, w_dump, NULL);
	CHECK_EQ(recv_req(sk, &r), 0);
	CHECK_OPT(&r, 12, 1); /* notify_scripts */
	CHECK_EQ(notify(sk, "pre-dump", 0, -1), 1);
	CHECK_EQ(notify(sk, "orphan-pts-master", 0, pipefd[0]), 1);
	CHECK_EQ(notify(sk, "post-dump", 77, -1), 1);
	send_resp(sk, REQ_DUMP, 1, NULL);
	CHECK_EQ(call_finish(&c), 0);
	close(sk);

	CHECK_EQ(n_seen, 3);
	CHECK(strcmp(seen_actions[0], "pre-dump") == 0);
	CHECK(strcmp(seen_actions[1], "orphan-pts-master") == 0);
	CHECK(strcmp(seen_actions[2], "post-dump") == 0);
	CHECK_EQ(seen_pids[0], 0);
	CHECK_EQ(seen_pids[2], 77);
	/* The fd arrived with the notification and is ours: the same pipe. */
	CHECK(seen_fds[1] >= 0 && seen_fds[1] != pipefd[0]);
	CHECK_EQ(criu_get_orphan_pts_master_fd(), seen_fds[1]);
	{
		struct stat a, b;
		CHECK(fstat(seen_fds[1], &a) == 0 && fstat(pipefd[0], &b) == 0 && a.st_ino == b.st_ino);
		close(seen_fds[1]);
	}

	/* A callback returning non-zero aborts: the ack says false, the call returns its value. */
	n_seen = 0;
	abort_on_network_lock = 1;
	sk = serve_global(&c, w_dump, NULL);
	CHECK_EQ(recv_req(sk, &r), 0);
	CHECK_EQ(notify(sk, "pre-dump", 0, -1), 1);
	CHECK_EQ(notify(sk, "network-lock", 0, -1), 0);
	CHECK_EQ(call_finish(&c), 3);
	close(sk);
	CHECK_EQ(n_seen, 2);

	/* No callback: notifications are acknowledged as successful. */
	criu_set_notify_cb(NULL);
	sk = serve_global(&c, w_dump, NULL);
	CHECK_EQ(recv_req(sk, &r), 0);
	CHECK_OPT(&r, 12, 1); /* libcriu asks for notifications even then */
	CHECK_EQ(notify(sk, "pre-dump", 0, -1), 1);
	send_resp(sk, REQ_DUMP, 1, NULL);
	CHECK_EQ(call_finish(&c), 0);
	close(sk);
	close(pipefd[0]);
	close(pipefd[1]);
}

/* ---- Iterative dumps ---------------------------------------------------------------------- */

static int more_calls, more_answers[4];

static int more(criu_predump_info pi)
{
	CHECK(pi == NULL);
	return more_answers[more_calls++];
}

static int w_dump_iters(void *a) { (void)a; return criu_dump_iters(more); }
static int w_dump_iters_null(void *a) { (void)a; return criu_dump_iters(NULL); }

static void test_dump_iters(void)
{
	struct pb_out extra;
	struct call c;
	struct req r;
	int sk;

	/* Needs a pid and a callback. */
	CHECK_EQ(criu_init_opts(), 0);
	criu_set_service_fd(-1);
	CHECK_EQ(criu_dump_iters(more), -EINVAL);
	criu_set_pid(1);
	call_start(&c, w_dump_iters_null, NULL);
	CHECK_EQ(call_finish(&c), -EINVAL);

	/* PRE_DUMP, PRE_DUMP, DUMP on one connection. */
	more_calls = 0;
	more_answers[0] = 1;
	more_answers[1] = 0;
	sk = serve_global(&c, w_dump_iters, NULL);
	CHECK_EQ(recv_req(sk, &r), 0);
	CHECK_EQ(r.type, REQ_PRE_DUMP);
	CHECK_OPT(&r, 2, 1);
	send_resp(sk, REQ_PRE_DUMP, 1, NULL);
	CHECK_EQ(recv_req(sk, &r), 0);
	CHECK_EQ(r.type, REQ_PRE_DUMP);
	send_resp(sk, REQ_PRE_DUMP, 1, NULL);
	CHECK_EQ(recv_req(sk, &r), 0);
	CHECK_EQ(r.type, REQ_DUMP);
	send_resp(sk, REQ_DUMP, 1, NULL);
	CHECK_EQ(call_finish(&c), 0);
	CHECK_EQ(more_calls, 2);
	close(sk);

	/* more() < 0 aborts with its value. */
	more_calls = 0;
	more_answers[0] = -5;
	sk = serve_global(&c, w_dump_iters, NULL);
	CHECK_EQ(recv_req(sk, &r), 0);
	send_resp(sk, REQ_PRE_DUMP, 1, NULL);
	CHECK_EQ(call_finish(&c), -5);
	close(sk);

	/* A failed pre-dump: -EBADE. */
	more_calls = 0;
	sk = serve_global(&c, w_dump_iters, NULL);
	CHECK_EQ(recv_req(sk, &r), 0);
	extra.n = 0;
	pb_varint(&extra, 7, EPERM);
	send_resp(sk, REQ_PRE_DUMP, 0, &extra);
	CHECK_EQ(call_finish(&c), -EBADE);
	CHECK_EQ(c.err, EPERM);
	CHECK_EQ(more_calls, 0);
	close(sk);
}

/* ---- Version and features ----------------------------------------------------------------- */

static void answer_version(int sk, int major, int minor, int sublevel, const char *gitid)
{
	struct pb_out v = { .n = 0 }, extra = { .n = 0 };
	struct req r;

	CHECK_EQ(recv_req(sk, &r), 0);
	CHECK_EQ(r.type, REQ_VERSION);
	pb_varint(&v, 1, major);
	pb_varint(&v, 2, minor);
	if (gitid)
		pb_str(&v, 3, gitid);
	if (sublevel >= 0)
		pb_varint(&v, 4, sublevel);
	pb_msg(&extra, 10, &v);
	send_resp(sk, REQ_VERSION, 1, &extra);
}

static void test_version(void)
{
	struct call c;
	int sk, min;

	CHECK_EQ(criu_init_opts(), 0);

	sk = serve_global(&c, w_get_version, NULL);
	answer_version(sk, 4, 2, 1, NULL);
	CHECK_EQ(call_finish(&c), 40201);
	close(sk);

	sk = serve_global(&c, w_get_version, NULL);
	answer_version(sk, 3, 19, -1, NULL);
	CHECK_EQ(call_finish(&c), 31900);
	close(sk);

	/* A git build counts as the next minor. */
	sk = serve_global(&c, w_get_version, NULL);
	answer_version(sk, 4, 2, 5, "v4.2-12-gabcdef");
	CHECK_EQ(call_finish(&c), 40300);
	close(sk);

	min = 40201;
	sk = serve_global(&c, w_check_version, &min);
	answer_version(sk, 4, 2, 1, NULL);
	CHECK_EQ(call_finish(&c), 1);
	close(sk);

	min = 40202;
	sk = serve_global(&c, w_check_version, &min);
	answer_version(sk, 4, 2, 1, NULL);
	CHECK_EQ(call_finish(&c), 0);
	close(sk);

	/* Errors come through check_version. */
	sk = serve_global(&c, w_check_version, &min);
	{
		struct req r;
		CHECK_EQ(recv_req(sk, &r), 0);
		send_resp(sk, REQ_VERSION, 0, NULL);
	}
	CHECK_EQ(call_finish(&c), -EBADE);
	close(sk);
}

static void test_feature_check(void)
{
	struct pb_out feats = { .n = 0 }, extra = { .n = 0 };
	struct criu_feature_check fc;
	unsigned char raw[8];
	struct fc_args args;
	struct pb_field f, g;
	struct call c;
	struct req r;
	int sk;

	CHECK_EQ(criu_init_opts(), 0);
	pb_varint(&feats, 1, 1);
	pb_varint(&feats, 2, 0);
	pb_varint(&feats, 3, 1);
	pb_msg(&extra, 8, &feats);

	/* Asked: mem_track and pidfd_store. */
	memset(&fc, 0, sizeof(fc));
	fc.mem_track = true;
	fc.pidfd_store = true;
	args = (struct fc_args){ NULL, &fc, sizeof(fc) };
	sk = serve_global(&c, w_feature_check, &args);
	CHECK_EQ(recv_req(sk, &r), 0);
	CHECK_EQ(r.type, REQ_FEATURE_CHECK);
	CHECK(pb_find(r.buf, r.len, 5, 0, &f));
	CHECK(pb_find(f.data, f.len, 1, 0, &g) && g.varint == 1);
	CHECK_EQ(pb_count(f.data, f.len, 2), 0); /* not asked: not sent */
	CHECK(pb_find(f.data, f.len, 3, 0, &g) && g.varint == 1);
	send_resp(sk, REQ_FEATURE_CHECK, 1, &extra);
	CHECK_EQ(call_finish(&c), 0);
	CHECK(fc.mem_track == true && fc.lazy_pages == false && fc.pidfd_store == true);
	close(sk);

	/* An older, smaller struct: only `size` bytes are read and written. */
	memset(raw, 0xaa, sizeof(raw));
	raw[0] = 1;
	args = (struct fc_args){ NULL, raw, 1 };
	sk = serve_global(&c, w_feature_check, &args);
	CHECK_EQ(recv_req(sk, &r), 0);
	CHECK(pb_find(r.buf, r.len, 5, 0, &f));
	CHECK_EQ(pb_fields(f.data, f.len), 1);
	send_resp(sk, REQ_FEATURE_CHECK, 1, &extra);
	CHECK_EQ(call_finish(&c), 0);
	CHECK_EQ(raw[0], 1);
	CHECK_EQ(raw[1], 0xaa);
	close(sk);

	/* A larger struct than ours, or NULL: refused without talking to anyone. */
	CHECK_EQ(criu_feature_check((struct criu_feature_check *)raw, sizeof(fc) + 1), -EINVAL);
	CHECK_EQ(criu_feature_check(NULL, sizeof(fc)), -EINVAL);

	/* The server failed it. */
	args = (struct fc_args){ NULL, &fc, sizeof(fc) };
	sk = serve_global(&c, w_feature_check, &args);
	CHECK_EQ(recv_req(sk, &r), 0);
	send_resp(sk, REQ_FEATURE_CHECK, 0, NULL);
	CHECK_EQ(call_finish(&c), -EBADE);
	close(sk);
}

/* ---- criu_local_* ------------------------------------------------------------------------- */

static void capture_local(criu_opts *o, struct req *r)
{
	struct call c;
	int sk = serve_local(o, &c, w_local_dump);
	CHECK_EQ(recv_req(sk, r), 0);
	send_resp(sk, REQ_DUMP, 1, NULL);
	CHECK_EQ(call_finish(&c), 0);
	close(sk);
}

static int local_notified;
static int local_cb(char *action, criu_notify_arg_t na)
{
	(void)na;
	local_notified = strcmp(action, "post-dump") == 0;
	return 0;
}

static void test_local(void)
{
	char *cmd[] = { "/bin/echo", NULL };
	criu_opts *a = NULL, *b = NULL;
	struct pb_out extra;
	struct call c;
	struct req r;
	int sk;

	CHECK_EQ(criu_init_opts(), 0);
	criu_set_pid(3);
	CHECK_EQ(criu_local_init_opts(&a), 0);
	CHECK_EQ(criu_local_init_opts(&b), 0);
	CHECK(a && b && a != b);

	/* Every local setter, on `a` only. */
	CHECK_EQ(criu_local_add_inherit_fd(a, 5, "file[1:2]"), 0);
	criu_local_set_pid(a, 1);
	criu_local_set_images_dir_fd(a, 4);
	CHECK_EQ(criu_local_set_parent_images(a, "../p"), 0);
	criu_local_set_work_dir_fd(a, 6);
	criu_local_set_leave_running(a, true);
	criu_local_set_ext_unix_sk(a, true);
	CHECK_EQ(criu_local_add_unix_sk(a, 12), 0);
	criu_local_set_tcp_established(a, true);
	criu_local_set_tcp_skip_in_flight(a, true);
	criu_local_set_tcp_close(a, true);
	criu_local_set_weak_sysctls(a, true);
	criu_local_set_evasive_devices(a, true);
	criu_local_set_shell_job(a, true);
	criu_local_set_skip_file_rwx_check(a, true);
	criu_local_set_unprivileged(a, true);
	criu_local_set_orphan_pts_master(a, true);
	criu_local_set_file_locks(a, true);
	criu_local_set_track_mem(a, true);
	criu_local_set_auto_dedup(a, true);
	criu_local_set_force_irmap(a, true);
	criu_local_set_link_remap(a, true);
	criu_local_set_log_level(a, CRIU_LOG_INFO);
	CHECK_EQ(criu_local_set_log_file(a, "a.log"), 0);
	criu_local_set_cpu_cap(a, 7);
	CHECK_EQ(criu_local_set_root(a, "/ra"), 0);
	criu_local_set_manage_cgroups(a, true);
	criu_local_set_manage_cgroups_mode(a, CRIU_CG_MODE_SOFT);
	CHECK_EQ(criu_local_set_freeze_cgroup(a, "/fz"), 0);
	CHECK_EQ(criu_local_set_lsm_profile(a, "lp"), 0);
	CHECK_EQ(criu_local_set_lsm_mount_context(a, "lmc"), 0);
	criu_local_set_timeout(a, 9);
	criu_local_set_auto_ext_mnt(a, true);
	criu_local_set_ext_sharing(a, true);
	criu_local_set_ext_masters(a, true);
	CHECK_EQ(criu_local_set_exec_cmd(a, 1, cmd), 0);
	CHECK_EQ(criu_local_add_ext_mount(a, "/lk", "/lv"), 0);
	CHECK_EQ(criu_local_add_veth_pair(a, "v1", "v2"), 0);
	CHECK_EQ(criu_local_add_cg_root(a, NULL, "/cg"), 0);
	CHECK_EQ(criu_local_add_enable_fs(a, "fs"), 0);
	CHECK_EQ(criu_local_add_skip_mnt(a, "/sk"), 0);
	criu_local_set_ghost_limit(a, 5);
	CHECK_EQ(criu_local_add_irmap_path(a, "/ir"), 0);
	CHECK_EQ(criu_local_add_cg_props(a, "props: 1"), 0);
	CHECK_EQ(criu_local_add_cg_props_file(a, "/props.yaml"), 0);
	CHECK_EQ(criu_local_add_cg_dump_controller(a, "memory"), 0);
	CHECK_EQ(criu_local_add_cg_yard(a, "/yard"), 0);
	CHECK_EQ(criu_local_add_external(a, "ext"), 0);
	CHECK_EQ(criu_local_set_page_server_address_port(a, "h", 1), 0);
	CHECK_EQ(criu_local_set_pre_dump_mode(a, CRIU_PRE_DUMP_SPLICE), 0);
	CHECK_EQ(criu_local_set_pre_dump_mode(a, (enum criu_pre_dump_mode)3), -EINVAL);
	criu_local_set_pidfd_store_sk(a, 13);
	CHECK_EQ(criu_local_set_network_lock(a, CRIU_NETWORK_LOCK_SKIP), 0);
	CHECK_EQ(criu_local_set_network_lock(a, (enum criu_network_lock_method)9), -EINVAL);
	CHECK_EQ(criu_local_join_ns_add(a, "uts", "/proc/1/ns/uts", NULL), 0);
	criu_local_set_mntns_compat_mode(a, true);
	CHECK_EQ(criu_local_set_config_file(a, "/c.conf"), 0);
	criu_local_set_empty_ns(a, CLONE_NEWNET);
	criu_local_set_notify_cb(a, local_cb);

	/* `b` keeps a different pid and nothing else. */
	criu_local_set_pid(b, 2);

	capture_local(a, &r);
	CHECK_OPT(&r, 1, 4);
	CHECK_OPT(&r, 2, 1);
	CHECK_OPT(&r, 3, 1);
	CHECK_OPT(&r, 4, 1);
	CHECK_OPT(&r, 5, 1);
	CHECK_OPT(&r, 6, 1);
	CHECK_OPT(&r, 7, 1);
	CHECK_OPT(&r, 8, 1);
	CHECK_OPT(&r, 9, CRIU_LOG_INFO);
	CHECK_OPT_STR(&r, 10, 0, "a.log");
	CHECK_OPT(&r, 12, 1);
	CHECK_OPT_STR(&r, 13, 0, "/ra");
	CHECK_OPT_STR(&r, 14, 0, "../p");
	CHECK_OPT(&r, 15, 1);
	CHECK_OPT(&r, 16, 1);
	CHECK_OPT(&r, 17, 6);
	CHECK_OPT(&r, 18, 1);
	CHECK_EQ(pb_count(r.opts, r.opts_len, 19), 1);
	CHECK_OPT(&r, 20, 7);
	CHECK_OPT(&r, 21, 1);
	CHECK_OPT_STR(&r, 22, 0, "/bin/echo");
	CHECK_EQ(pb_count(r.opts, r.opts_len, 23), 1);
	CHECK_OPT(&r, 24, 1);
	CHECK_EQ(pb_count(r.opts, r.opts_len, 25), 1);
	CHECK_EQ(pb_count(r.opts, r.opts_len, 27), 1);
	CHECK_OPT(&r, 28, 1);
	CHECK_OPT(&r, 29, 1);
	CHECK_OPT(&r, 30, 1);
	CHECK_OPT_STR(&r, 31, 0, "/sk");
	CHECK_OPT_STR(&r, 32, 0, "fs");
	CHECK_EQ(pb_count(r.opts, r.opts_len, 33), 1);
	CHECK_OPT(&r, 34, CRIU_CG_MODE_SOFT);
	CHECK_OPT(&r, 35, 5);
	CHECK_OPT_STR(&r, 36, 0, "/ir");
	CHECK_OPT_STR(&r, 37, 0, "ext");
	CHECK_OPT(&r, 38, CLONE_NEWNET);
	CHECK_EQ(pb_count(r.opts, r.opts_len, 39), 1);
	CHECK_OPT_STR(&r, 41, 0, "props: 1");
	CHECK_OPT_STR(&r, 42, 0, "/props.yaml");
	CHECK_OPT_STR(&r, 43, 0, "memory");
	CHECK_OPT_STR(&r, 44, 0, "/fz");
	CHECK_OPT(&r, 45, 9);
	CHECK_OPT(&r, 46, 1);
	CHECK_OPT(&r, 47, 1);
	CHECK_OPT(&r, 50, 1);
	CHECK_OPT_STR(&r, 51, 0, "/c.conf");
	CHECK_OPT(&r, 52, 1);
	CHECK_OPT_STR(&r, 53, 0, "lp");
	CHECK_OPT_STR(&r, 60, 0, "/yard");
	CHECK_OPT(&r, 61, CRIU_PRE_DUMP_SPLICE);
	CHECK_OPT(&r, 62, 13);
	CHECK_OPT_STR(&r, 63, 0, "lmc");
	CHECK_OPT(&r, 64, CRIU_NETWORK_LOCK_SKIP);
	CHECK_OPT(&r, 65, 1);
	CHECK_OPT(&r, 66, 1);
	CHECK_OPT(&r, 67, 1);
	{
		struct pb_field f;
		uint64_t v;
		CHECK(opt_find(&r, 11, 0, &f) && sub_str(&f, 1, "h") && sub_varint(&f, 2, &v) && v == 1);
	}

	capture_local(b, &r);
	CHECK_EQ(pb_fields(r.opts, r.opts_len), 2);
	CHECK_OPT(&r, 1, -1);
	CHECK_OPT(&r, 2, 2);

	/* The plain API's options were not touched. */
	capture_dump(&r);
	CHECK_EQ(pb_fields(r.opts, r.opts_len), 2);
	CHECK_OPT(&r, 2, 3);

	/* The local notify callback, and the other local operations. */
	local_notified = 0;
	sk = serve_local(a, &c, w_local_dump);
	CHECK_EQ(recv_req(sk, &r), 0);
	CHECK_EQ(notify(sk, "post-dump", 0, -1), 1);
	send_resp(sk, REQ_DUMP, 1, NULL);
	CHECK_EQ(call_finish(&c), 0);
	CHECK(local_notified);
	close(sk);

	sk = serve_local(b, &c, w_local_pre_dump);
	CHECK_EQ(recv_req(sk, &r), 0);
	CHECK_EQ(r.type, REQ_SINGLE_PRE_DUMP);
	send_resp(sk, REQ_SINGLE_PRE_DUMP, 1, NULL);
	CHECK_EQ(call_finish(&c), 0);
	close(sk);

	sk = serve_local(b, &c, w_local_restore);
	CHECK_EQ(recv_req(sk, &r), 0);
	CHECK_EQ(r.type, REQ_RESTORE);
	{
		struct pb_out restore = { .n = 0 };
		pb_varint(&restore, 1, 99);
		extra.n = 0;
		pb_msg(&extra, 4, &restore);
	}
	send_resp(sk, REQ_RESTORE, 1, &extra);
	CHECK_EQ(call_finish(&c), 99);
	close(sk);

	sk = serve_local(b, &c, w_local_check);
	CHECK_EQ(recv_req(sk, &r), 0);
	CHECK_EQ(r.type, REQ_CHECK);
	send_resp(sk, REQ_CHECK, 1, NULL);
	CHECK_EQ(call_finish(&c), 0);
	close(sk);

	sk = serve_local(b, &c, w_local_get_version);
	answer_version(sk, 4, 1, 0, NULL);
	CHECK_EQ(call_finish(&c), 40100);
	close(sk);

	local_check_version_min = 40000;
	sk = serve_local(b, &c, w_local_check_version);
	answer_version(sk, 4, 1, 0, NULL);
	CHECK_EQ(call_finish(&c), 1);
	close(sk);

	{
		struct criu_feature_check fc = { .lazy_pages = true };
		struct fc_args args = { b, &fc, sizeof(fc) };
		struct pb_out feats = { .n = 0 };
		pb_varint(&feats, 2, 1);
		extra.n = 0;
		pb_msg(&extra, 8, &feats);
		sk = serve_local_with(b, &c, w_feature_check, &args);
		CHECK_EQ(recv_req(sk, &r), 0);
		send_resp(sk, REQ_FEATURE_CHECK, 1, &extra);
		CHECK_EQ(call_finish(&c), 0);
		CHECK(fc.lazy_pages == true && fc.mem_track == false);
		close(sk);
	}

	/* Re-initialising frees and resets. */
	CHECK_EQ(criu_local_init_opts(&a), 0);
	capture_local(a, &r);
	CHECK_EQ(pb_fields(r.opts, r.opts_len), 1);

	criu_local_free_opts(a);
	criu_local_free_opts(b);

	/* The plain API without criu_init_opts (after criu_free_opts) starts from defaults. */
	criu_free_opts();
	criu_set_pid(5);
	capture_dump(&r);
	CHECK_EQ(pb_fields(r.opts, r.opts_len), 2);
	CHECK_OPT(&r, 2, 5);
}

/* Two threads with their own options, in flight at the same time. */
static void test_parallel_local(void)
{
	criu_opts *o[2] = { NULL, NULL };
	struct call c[2];
	struct req r;
	int sk[2], i;

	for (i = 0; i < 2; i++) {
		CHECK_EQ(criu_local_init_opts(&o[i]), 0);
		criu_local_set_pid(o[i], 100 + i);
	}
	for (i = 0; i < 2; i++)
		sk[i] = serve_local(o[i], &c[i], w_local_dump);
	/* Both are waiting now; answer in reverse order. */
	for (i = 1; i >= 0; i--) {
		CHECK_EQ(recv_req(sk[i], &r), 0);
		CHECK_OPT(&r, 2, 100 + i);
		send_resp(sk[i], REQ_DUMP, 1, NULL);
	}
	for (i = 0; i < 2; i++) {
		CHECK_EQ(call_finish(&c[i]), 0);
		close(sk[i]);
		criu_local_free_opts(o[i]);
	}
}

/* criu_restore_child always uses a server that is our child (the embedded one here). */
static void test_restore_child(void)
{
	char tmp[] = "/tmp/criu-ctest-XXXXXX", log[64];
	int dir;

	CHECK(mkdtemp(tmp) != NULL);
	dir = open(tmp, O_RDONLY | O_DIRECTORY);

	CHECK_EQ(criu_init_opts(), 0);
	criu_set_service_fd(-1);
	criu_set_images_dir_fd(dir);
	criu_set_log_level(0);
	/* An empty images dir: the request runs and fails on the missing inventory. */
	errno = 0;
	CHECK_EQ(criu_restore_child(), -EBADE);
	CHECK_EQ(errno, EBADMSG);
	/* With an option the engine does not implement, it fails before starting anything. */
	CHECK_EQ(criu_set_root("/rootfs"), 0);
	CHECK_EQ(criu_restore_child(), -EINVAL);
	CHECK_EQ(errno, EOPNOTSUPP);
	close(dir);
	/* The server logged into the images dir. */
	snprintf(log, sizeof(log), "%s/criu.log", tmp);
	CHECK(access(log, F_OK) == 0);
	unlink(log);
	rmdir(tmp);
}

int main(void)
{
	check_our_library((void *)criu_init_opts);
	test_defaults();
	test_every_setter();
	test_bad_arguments();
	test_return_codes();
	test_notify();
	test_dump_iters();
	test_version();
	test_feature_check();
	test_local();
	test_parallel_local();
	test_restore_child();
	return finish("api_all");
}
