"""Debian's pycriu (CRIU 3.17's Python RPC client) driving our criu binary through `criu swrk`.

Usage: client.py CRIU IMAGES_DIR dump PID | restore | self-dump
Prints one line with the outcome; raises (exit 1) on any failure.
"""
import os
import sys

import pycriu

criu_bin, images, action = sys.argv[1], sys.argv[2], sys.argv[3]

c = pycriu.criu()
c.use_binary(criu_bin)
images_fd = os.open(images, os.O_DIRECTORY)
c.opts.images_dir_fd = images_fd
c.opts.log_level = 4

if action == "dump":
    c.opts.pid = int(sys.argv[4])
    c.opts.log_file = "dump.log"
    resp = c.dump()
    print("dumped, restored=%s" % resp.restored)
elif action == "restore":
    c.opts.log_file = "restore.log"
    resp = c.restore()
    print("restored pid %d" % resp.pid)
elif action == "self-dump":
    # pycriu forks a detached `criu swrk` for a dump without a pid, like libcriu. The dump
    # kills us; the restored process returns from this same call with restored=True.
    os.setsid()
    c.opts.log_file = "dump.log"
    resp = c.dump()
    with open(os.path.join(images, "self-dump.result"), "a") as f:
        f.write("restored=%s pid=%d\n" % (resp.restored, os.getpid()))
    sys.exit(11 if resp.restored else 10)
else:
    sys.exit("unknown action " + action)
