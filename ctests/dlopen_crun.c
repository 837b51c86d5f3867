/*
 * What crun does: dlopen("libcriu.so.2") and resolve the symbols it needs, failing on any that
 * is missing. Then the version and feature checks crun makes before a checkpoint, through the
 * default embedded server.
 */
#define _GNU_SOURCE
#include <criu.h>

#include "common.h"

/* Every symbol crun's libcriu wrapper loads. */
static const char *const crun_symbols[] = {
	"criu_add_ext_mount", "criu_add_external", "criu_add_inherit_fd", "criu_check_version",
	"criu_dump", "criu_get_orphan_pts_master_fd", "criu_init_opts", "criu_join_ns_add",
	"criu_feature_check", "criu_pre_dump", "criu_restore_child", "criu_set_freeze_cgroup",
	"criu_set_file_locks", "criu_set_ext_unix_sk", "criu_set_log_file", "criu_set_log_level",
	"criu_set_leave_running", "criu_set_manage_cgroups", "criu_set_manage_cgroups_mode",
	"criu_set_network_lock", "criu_set_notify_cb", "criu_set_orphan_pts_master",
	"criu_set_images_dir_fd", "criu_set_parent_images", "criu_set_pid", "criu_set_root",
	"criu_add_cg_root", "criu_set_shell_job", "criu_set_tcp_established", "criu_set_tcp_close",
	"criu_set_track_mem", "criu_set_work_dir_fd", "criu_set_lsm_profile",
	"criu_set_lsm_mount_context", "criu_set_config_file",
};

int main(void)
{
	int (*init_opts)(void), (*check_version)(int), (*get_version)(void);
	int (*feature_check)(struct criu_feature_check *, size_t);
	int (*set_config_file)(const char *);
	struct criu_feature_check fc = { .mem_track = true };
	void *lib;
	size_t i;

	lib = dlopen("libcriu.so.2", RTLD_NOW);
	if (!lib) {
		fprintf(stderr, "dlopen: %s\n", dlerror());
		return 1;
	}
	check_our_library(dlsym(lib, "criu_init_opts"));

	for (i = 0; i < sizeof(crun_symbols) / sizeof(crun_symbols[0]); i++) {
		if (!dlsym(lib, crun_symbols[i])) {
			fprintf(stderr, "missing symbol %s\n", crun_symbols[i]);
			failures++;
		}
	}
	CHECK_EQ(i, 35);

	*(void **)&init_opts = dlsym(lib, "criu_init_opts");
	*(void **)&check_version = dlsym(lib, "criu_check_version");
	*(void **)&get_version = dlsym(lib, "criu_get_version");
	*(void **)&feature_check = dlsym(lib, "criu_feature_check");
	*(void **)&set_config_file = dlsym(lib, "criu_set_config_file");
	CHECK(init_opts && check_version && get_version && feature_check && set_config_file);
	if (failures)
		return finish("dlopen_crun");

	/* crun's sequence before a checkpoint. */
	CHECK_EQ(init_opts(), 0);
	CHECK_EQ(check_version(31500), 1);
	CHECK_EQ(get_version(), 40200);
	CHECK_EQ(feature_check(&fc, sizeof(fc)), 0);
	CHECK(fc.mem_track == false || fc.mem_track == true);
	/* crun names /etc/criu/runc.conf even when it does not exist. */
	CHECK_EQ(set_config_file("/etc/criu/runc.conf"), 0);

	dlclose(lib);
	return finish("dlopen_crun");
}
