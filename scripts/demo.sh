#!/bin/sh
# The main job, end to end: start a program, checkpoint it to disk (which ends it), restore it
# from the images, and watch it carry on from where it was, with the same pid.
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
criu=${CRIU:-$repo/target/release/criu}
python=/usr/bin/python3
[ -x "$python" ] || python=$(command -v python3)
dir=$(mktemp -d /tmp/criu-rs-demo.XXXXXX)
mkdir "$dir/img"

echo "== starting a python3 program that counts into $dir/count.txt"
cd "$dir"
"$python" -c '
import os, time
os.setsid()
os.closerange(3, 65536)  # whatever fds our caller leaked, the program should not hold
n = 0
with open("count.txt", "a", buffering=1) as f:
    while True:
        f.write(f"{n} pid={os.getpid()}\n"); n += 1; time.sleep(0.05)
' >"$dir/out" 2>&1 </dev/null &
pid=$!
sleep 1
echo "   running as pid $pid; last line: $(tail -n1 count.txt)"

echo "== criu dump -t $pid -D img"
"$criu" dump -t "$pid" -D img -o dump.log --display-stats | sed 's/^/   /'
wait "$pid" 2>/dev/null || true
last=$(tail -n1 count.txt)
echo "   the program is gone; last line: $last"
echo "   images: $(ls img | tr '\n' ' ')"

# The pid must be free again before it can be restored.
while [ -e "/proc/$pid" ]; do sleep 0.1; done
echo "== criu restore -D img -d"
"$criu" restore -D img -d -o restore.log --pidfile restored.pid
echo "   restored as pid $(cat img/restored.pid)"
sleep 1
echo "   it carries on: $(grep -A3 -x "$last" count.txt | tr '\n' '|')"
kill "$(cat img/restored.pid)"
n=$(wc -l < count.txt)
if awk '{ split($1, a, " "); if ($1 != NR - 1) bad = 1 } END { exit bad }' count.txt; then
    echo "== OK: $n lines, every number once and in order, across the checkpoint"
else
    echo "== FAILED: the count has a gap or a repeat"; exit 1
fi
cd / && rm -rf "$dir"
