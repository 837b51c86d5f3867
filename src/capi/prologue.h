/*
 * The types, enums and constants of CRIU's criu.h (libcriu 2.0), with the same names and values.
 * cbindgen adds the function declarations below this part.
 */

/* The CRIU release whose interfaces this library implements (CRIU's version.h). */
#define CRIU_VERSION "4.2"
#define CRIU_VERSION_MAJOR 4
#define CRIU_VERSION_MINOR 2
#define CRIU_VERSION_SUBLEVEL 0

#define CRIU_LOG_UNSET (-1)
#define CRIU_LOG_MSG   (0) /* Print message regardless of log level */
#define CRIU_LOG_ERROR (1) /* Errors only */
#define CRIU_LOG_WARN  (2) /* Warnings */
#define CRIU_LOG_INFO  (3) /* Informative */
#define CRIU_LOG_DEBUG (4) /* Debug only */

/* How the library reaches CRIU. Informational: the service is chosen with the setters. */
enum criu_service_comm { CRIU_COMM_SK, CRIU_COMM_FD, CRIU_COMM_BIN };

enum criu_cg_mode {
	CRIU_CG_MODE_IGNORE,
	CRIU_CG_MODE_NONE,
	CRIU_CG_MODE_PROPS,
	CRIU_CG_MODE_SOFT,
	CRIU_CG_MODE_FULL,
	CRIU_CG_MODE_STRICT,
	CRIU_CG_MODE_DEFAULT,
};

enum criu_network_lock_method {
	CRIU_NETWORK_LOCK_IPTABLES = 1,
	CRIU_NETWORK_LOCK_NFTABLES = 2,
	CRIU_NETWORK_LOCK_SKIP = 3,
};

enum criu_pre_dump_mode { CRIU_PRE_DUMP_SPLICE = 1, CRIU_PRE_DUMP_READ = 2 };

/* Options of one caller (criu_local_*); the plain API keeps one set of its own. */
typedef struct criu_opts criu_opts;

/*
 * The notification a notify callback receives: pass it to criu_notify_pid(). CRIU's header
 * takes the type from protobuf-c's rpc.pb-c.h; here it is opaque (and compatible with a program
 * that also includes rpc.pb-c.h).
 */
#ifndef PROTOBUF_C_rpc_2eproto__INCLUDED
typedef struct CriuNotify CriuNotify;
#endif
typedef CriuNotify *criu_notify_arg_t;

/* Reserved for pre-dump statistics; criu_dump_iters() passes NULL. */
typedef void *criu_predump_info;

/*
 * Optional features for criu_feature_check(): set the members to test to true; on success each
 * tells whether the feature is available.
 */
struct criu_feature_check {
	bool mem_track;
	bool lazy_pages;
	bool pidfd_store;
};

/*
 * Return values of the operations (criu_check, criu_dump, criu_pre_dump, criu_restore,
 * criu_restore_child, criu_dump_iters, criu_get_version, criu_feature_check):
 *
 * Return value  errno                Description
 * ----------------------------------------------------------------------------
 * 0             undefined            Success.
 * >0            undefined            Success (criu_restore*: the pid; criu_dump: 1 when
 *                                    returning in the restored process).
 * -EBADE        rpc err              The request ran and failed; errno says why.
 * -ECONNREFUSED errno                Unable to connect to or start CRIU.
 * -ECOMM        errno                Unable to send/recv msg to/from CRIU.
 * -EINVAL       undefined            Invalid arguments, a request CRIU refused, or (embedded
 *                                    server) an option this build does not support yet.
 * -EBADMSG      undefined            Unexpected response from CRIU.
 *
 * The plain API (no criu_local_ prefix) works on process-wide options and is not thread-safe;
 * threads working in parallel use criu_local_* with options of their own.
 */
