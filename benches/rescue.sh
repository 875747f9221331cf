#!/usr/bin/env bash
# What --rescue costs, and how long a failing disk takes.
#
#   benches/rescue.sh          (BENCH_SIZE=1G BENCH_RUNS=5 BENCH_BAD=100)
#
# 1. A healthy source: `bsync -q -f A -t B` against the same with
#    `-rescue MAP` (a fresh map each time), B an identical copy of A, so
#    the run is all reading and comparing, where an overhead would show.
#    The runs alternate (plain, rescue, plain, ...) so a machine loaded by
#    something else slows both alike; the best of BENCH_RUNS each and their
#    ratio are printed. Target: rescue / plain <= 1.02.
# 2. A failing source (root, /dev/fuse, python3-fusepy, gddrescue): A served
#    through tests/faulty_fuse.py with BENCH_BAD 512-byte sectors scattered
#    at random failing with EIO, under a read-only loop device with direct
#    I/O. Time for `bsync -f LOOP -t C -rescue MAP` to finish (exit 4), and
#    for `ddrescue -d LOOP C2 MAP2` on the same device, with the bytes each
#    lost.
#
# The binary is target/release/bsync (cargo build --release).
set -euo pipefail

cd "$(dirname "$0")/.."
size=${BENCH_SIZE:-1G}
runs=${BENCH_RUNS:-5}
nbad=${BENCH_BAD:-100}
target_dir=${CARGO_TARGET_DIR:-target}
bsync=$target_dir/release/bsync
dir=$target_dir/bench/rescue
tmp=$(mktemp -d "$target_dir/bench-rescue.XXXXXX")
mnt=$tmp/mnt
fuse_pid= loop=

say() { printf 'rescue: %s\n' "$*" >&2; }
die() { printf 'rescue: error: %s\n' "$*" >&2; exit 1; }
cleanup() {
    if [[ -n $loop ]]; then losetup -d "$loop" 2>/dev/null || true; fi
    if [[ -n $fuse_pid ]]; then
        umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
        kill "$fuse_pid" 2>/dev/null || true
        wait "$fuse_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ -x $bsync ]] || die "$bsync not found: cargo build --release"
bytes=$(numfmt --from=iec "$size") || die "bad size: $size"
mkdir -p "$dir"
a=$dir/a-$size.img
b=$tmp/b.img
if [[ ! -f $a ]]; then
    say "making $a ($size of random bytes)"
    head -c "$bytes" /dev/urandom >"$a.tmp" && mv "$a.tmp" "$a"
fi
cp "$a" "$b"
cat "$a" "$b" >/dev/null

now() { date +%s.%N; }
timed() {
    local t0 t1
    t0=$(now)
    "$@" || [[ $? == 4 ]]
    t1=$(now)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
}
best() { printf '%s\n' "$@" | sort -g | sed -n 1p; }

plain=() rescue=()
for ((i = 0; i < runs; i++)); do
    plain+=("$(timed "$bsync" -q -f "$a" -t "$b")")
    rm -f "$tmp/map"
    rescue+=("$(timed "$bsync" -q -f "$a" -t "$b" -rescue "$tmp/map")")
done
p=$(best "${plain[@]}")
r=$(best "${rescue[@]}")
printf '1. healthy %s source, identical destination, best of %s alternating runs\n' "$size" "$runs"
printf '   plain    %s s   (%s)\n' "$p" "${plain[*]}"
printf '   -rescue  %s s   (%s)\n' "$r" "${rescue[*]}"
awk -v p="$p" -v r="$r" 'BEGIN { printf "   rescue / plain = %.3f (target <= 1.02): %s\n", r / p, (r / p <= 1.02 ? "PASS" : "FAIL") }'

if [[ $(id -u) != 0 || ! -e /dev/fuse ]] || ! command -v ddrescue >/dev/null ||
    ! /usr/bin/python3 -c 'import fusepy' 2>/dev/null; then
    say "part 2 skipped: needs root, /dev/fuse, python3-fusepy and gddrescue"
    exit 0
fi
mkdir -p "$mnt"
mapfile -t bad < <(awk -v n="$nbad" -v sectors="$((bytes / 512))" -v seed=22 'BEGIN {
    srand(seed); for (i = 0; i < n; i++) printf "%d:512\n", int(rand() * sectors) * 512 }' | sort -n -t: -k1,1 -u)
/usr/bin/python3 tests/faulty_fuse.py "$a" "$mnt" "${bad[@]}" &
fuse_pid=$!
for ((i = 0; i < 300; i++)); do
    [[ -e $mnt/disk ]] && break
    sleep 0.05
done
loop=$(losetup -r --direct-io=on -f --show "$mnt/disk")
t_bsync=$(timed "$bsync" -q -f "$loop" -t "$tmp/c.img" -rescue "$tmp/c.map")
lost_bsync=$(ddrescuelog -t "$tmp/c.map" | awk '/bad-sector:/ { print $2, $3 }')
t_dd=$(timed ddrescue -q -d "$loop" "$tmp/c2.img" "$tmp/c2.map")
lost_dd=$(ddrescuelog -t "$tmp/c2.map" | awk '/bad-sector:/ { print $2, $3 }')
printf '2. failing %s source, %s bad sectors, loop device over FUSE\n' "$size" "${#bad[@]}"
printf '   bsync -rescue  %s s, lost %s\n' "$t_bsync" "$lost_bsync"
printf '   ddrescue -d    %s s, lost %s\n' "$t_dd" "$lost_dd"
