#!/usr/bin/env bash
# `make demo`: bring a 64 MiB ext4 image up to date with a modified copy of
# itself, the way a nightly VM-image sync would, and prove the result equal.
set -euo pipefail

cd "$(dirname "$0")/.."
dir=${CARGO_TARGET_DIR:-target}/demo
src=$dir/src.img
dst=$dir/dst.img

step() { printf '\n==> %s\n' "$*"; }
run() { printf '    $ %s\n' "$*"; "$@"; }

[[ -x ./bsync ]] || { echo "demo: ./bsync is missing: run make first" >&2; exit 1; }
mkdir -p "$dir"
rm -f "$src" "$dst"

step "Building a 64 MiB ext4 image from real files in /usr/share (the destination)"
run benches/mkimage.sh 64M "$dst"

step "Making the source: the same image with scattered changes"
run cp --sparse=always "$dst" "$src"
echo "    overwriting 8 scattered 4 KiB blocks with random data:"
for block in 300 1777 2500 4100 6000 9001 12345 15000; do
    run dd if=/dev/urandom of="$src" bs=4096 seek="$block" count=1 \
        conv=notrunc status=none
done
echo "    zeroing 1 MiB at 20 MiB:"
run dd if=/dev/zero of="$src" bs=1M seek=20 count=1 conv=notrunc status=none
if cmp -s "$src" "$dst"; then
    echo "demo: the source did not change" >&2
    exit 1
fi
echo "    source and destination now differ"

step "Syncing: bsync reads both, sends only the differing blocks"
run ./bsync -b 1M -f "$src" -t "$dst"

step "Checking that the destination is now byte-identical to the source"
run cmp "$src" "$dst"

step "Over the network (loopback): a server writes a new copy, a client uploads"
net=$dir/net.img
rm -f "$net"
portfile=$dir/port
printf '    $ ./bsync -f %s -p 0 -i 127.0.0.1 &     (prints its port first)\n' "$net"
./bsync -f "$net" -p 0 -i 127.0.0.1 >"$portfile" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do [[ -s $portfile ]] && break; sleep 0.1; done
port=$(sed -n 1p "$portfile")
[[ -n $port ]] || { echo "demo: the server did not report its port" >&2; exit 1; }
run ./bsync -w 2 -b 1M -f "$src" -r "127.0.0.1:$port"
wait "$server"
trap - EXIT
run cmp "$src" "$net"

printf '\ndemo: success: %s and %s are identical to %s\n' "$dst" "$net" "$src"
