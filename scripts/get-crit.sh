#!/bin/sh
# Fetches only `crit` (and its pycriu module) from Debian's criu package, to check that our images
# are CRIU images. Never `apt-get install criu`: that would put an old /usr/sbin/criu and
# libcriu.so.2 where tests could pick them up instead of ours.
# Result: an executable wrapper $CRIT_DIR/crit (default: <repo>/target/crit/crit).
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
dir=${CRIT_DIR:-$repo/target/crit}
wrapper=$dir/crit
py=/usr/bin/python3 # not the pyenv python3 on PATH: Debian's python3-protobuf is for this one

works() {
    [ -x "$wrapper" ] && [ -s "$dir/crit-descriptors.pb" ] && "$wrapper" --help >/dev/null 2>&1
}

works && exit 0

# crit's only dependency besides Python itself.
if ! "$py" -c 'import google.protobuf' >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq python3-protobuf >/dev/null 2>&1 || {
        apt-get update -qq >/dev/null
        apt-get install -y -qq python3-protobuf >/dev/null
    }
fi

mkdir -p "$dir"
tmp=$(mktemp -d "$dir/dl.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# Stderr is kept aside: as root apt always warns that its sandbox user cannot write here.
download() { (cd "$tmp" && apt-get download -qq criu >/dev/null 2>"$tmp/apt.err"); }
download || {
    apt-get update -qq >/dev/null
    download || { cat "$tmp/apt.err" >&2; exit 1; }
}
rm -rf "$dir/root"
dpkg -x "$tmp"/criu_*.deb "$tmp/root"
# Keep only what crit needs; drop criu, libcriu and the rest of the package.
mkdir -p "$dir/root"
mv "$tmp/root/usr/lib/python3/dist-packages/pycriu" "$dir/root/pycriu"
mkdir -p "$dir/root/bin"
mv "$tmp/root/usr/bin/crit" "$dir/root/bin/crit"

cat >"$wrapper" <<WRAP
#!/bin/sh
# crit from Debian's criu package, run with the Python its protobuf module belongs to.
PYTHONPATH="$dir/root\${PYTHONPATH:+:\$PYTHONPATH}" exec $py "$dir/root/bin/crit" "\$@"
WRAP
chmod +x "$wrapper"

# crit's own schemas, as a FileDescriptorSet: tests compare ours with them field by field.
PYTHONPATH="$dir/root" "$py" - "$dir/crit-descriptors.pb" <<'PY'
import importlib, pkgutil, sys
from google.protobuf import descriptor_pb2
import pycriu.images as images
fds = descriptor_pb2.FileDescriptorSet()
for m in sorted(m.name for m in pkgutil.iter_modules(images.__path__)):
    if m.endswith("_pb2"):
        importlib.import_module("pycriu.images." + m).DESCRIPTOR.CopyToProto(fds.file.add())
with open(sys.argv[1], "wb") as f:
    f.write(fds.SerializeToString())
PY

works || { echo "get-crit.sh: $wrapper does not run" >&2; exit 1; }
