"""Debian's pycriu driving our `criu swrk` with the network options of the RPC protocol.

Usage: net_client.py CRIU IMAGES_DIR dump PID | restore
The dump asks for tcp_established and the nftables network lock; the restore for
tcp_established. Prints one line with the outcome; raises (exit 1) on any failure.
"""
import os
import sys

import pycriu

criu_bin, images, action = sys.argv[1], sys.argv[2], sys.argv[3]

c = pycriu.criu()
c.use_binary(criu_bin)
c.opts.images_dir_fd = os.open(images, os.O_DIRECTORY)
c.opts.log_level = 4
c.opts.tcp_established = True

if action == "dump":
    c.opts.pid = int(sys.argv[4])
    c.opts.log_file = "dump.log"
    c.opts.network_lock = pycriu.rpc.NFTABLES
    resp = c.dump()
    print("dumped, restored=%s" % resp.restored)
elif action == "restore":
    c.opts.log_file = "restore.log"
    resp = c.restore()
    print("restored pid %d" % resp.pid)
else:
    sys.exit("unknown action " + action)
