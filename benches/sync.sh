#!/usr/bin/env bash
# `make bench`, second half: how close does a local bsync run come to the
# cost of just reading both sides?
#
# The destination is a 1 GiB ext4 image of real files; the source is a copy
# with ~5 % of its 4 KiB blocks changed. The floor is `cat SRC DST`: bsync
# has to read both files in full, so it cannot beat that. Target: bsync
# takes at most 1.2x the floor.
#
# Both files are measured hot (in the page cache): dropping caches needs
# root and is not reliable on a shared machine, so the files are read once
# before timing and every timed run starts from the same warm state.
#
#   benches/sync.sh [SIZE [PERCENT [RUNS]]]     defaults: 1G 5 3
set -euo pipefail

cd "$(dirname "$0")/.."
size=${1:-1G}
percent=${2:-5}
runs=${3:-3}
dir=${CARGO_TARGET_DIR:-target}/bench
orig=$dir/ext4-$size.img
src=$dir/ext4-$size-changed$percent.img
dst=$dir/sync-dst.img
target_ratio=1.2

bench=sync.sh
# shellcheck source=benches/lib.sh
. benches/lib.sh

say "== preparing images (cached under $dir)"
[[ -s $orig ]] || benches/mkimage.sh "$size" "$orig"
[[ -s $src ]] || benches/mkimage.sh --modify "$orig" "$src" "$percent"

restore_dst() {
    cp --reflink=auto --sparse=always "$orig" "$dst"
    # Flush the copy now, so that bsync's closing fdatasync does not pay
    # for writing out pages the copy dirtied.
    sync "$dst"
}

say "== warming the page cache: cat $src $dst > /dev/null"
restore_dst
cat "$src" "$dst" >/dev/null
cat "$src" "$dst" >/dev/null

say ""
say "== read floor, hot cache: cat $src $dst > /dev/null   ($runs runs)"
floor=()
for ((i = 1; i <= runs; i++)); do
    t0=$(now)
    cat "$src" "$dst" >/dev/null
    t1=$(now)
    floor+=("$(elapsed "$t0" "$t1")")
    say "   run $i: ${floor[-1]} s"
done

say ""
say "== bsync, hot cache: ./bsync -q -f $src -t $dst   ($runs runs)"
say "   (before each run: cp --reflink=auto --sparse=always $orig $dst; sync)"
sync_times=()
for ((i = 1; i <= runs; i++)); do
    restore_dst
    # bsync drops what it read from the page cache (POSIX_FADV_DONTNEED):
    # warm both sides again so every run starts where the floor did.
    cat "$src" "$dst" >/dev/null
    t0=$(now)
    ./bsync -q -f "$src" -t "$dst"
    t1=$(now)
    sync_times+=("$(elapsed "$t0" "$t1")")
    cmp "$src" "$dst" || die "run $i: destination differs from source after bsync"
    say "   run $i: ${sync_times[-1]} s   (cmp: identical)"
done

floor_min=$(min "${floor[@]}")
sync_min=$(min "${sync_times[@]}")
bytes=$(($(stat -c %s "$src") + $(stat -c %s "$dst")))
read -r ratio verdict < <(awk -v s="$sync_min" -v f="$floor_min" -v t="$target_ratio" \
    'BEGIN { r = s / f; printf "%.2f %s\n", r, (r <= t ? "PASS" : "FAIL") }')

say ""
say "== summary ($size image, ~$percent % of 4 KiB blocks changed, min of $runs runs, hot cache)"
awk -v f="$floor_min" -v s="$sync_min" -v b="$bytes" 'BEGIN {
    printf "   read floor   %8.3f s  %8.0f MiB/s\n", f, b / f / 1048576
    printf "   bsync        %8.3f s  %8.0f MiB/s\n", s, b / s / 1048576
}'
say "   bsync / floor = ${ratio}x   (target <= ${target_ratio}x: $verdict)"

# Cold cache: what a real disk sync looks like. Needs root to drop caches;
# skipped otherwise. bsync reads its two sides with two threads, cat one
# after the other, so here bsync can beat the floor.
if [[ -w /proc/sys/vm/drop_caches ]]; then
    drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
    say ""
    say "== cold cache (echo 3 > /proc/sys/vm/drop_caches before each run, $runs runs)"
    cold_floor=()
    cold_sync=()
    for ((i = 1; i <= runs; i++)); do
        drop
        t0=$(now)
        cat "$src" "$dst" >/dev/null
        t1=$(now)
        cold_floor+=("$(elapsed "$t0" "$t1")")
        restore_dst
        drop
        t0=$(now)
        ./bsync -q -f "$src" -t "$dst"
        t1=$(now)
        cold_sync+=("$(elapsed "$t0" "$t1")")
        cmp "$src" "$dst" || die "cold run $i: destination differs from source"
        say "   run $i: cat ${cold_floor[-1]} s, bsync ${cold_sync[-1]} s (cmp: identical)"
    done
    cf=$(min "${cold_floor[@]}")
    cs=$(min "${cold_sync[@]}")
    awk -v f="$cf" -v s="$cs" -v t="$target_ratio" 'BEGIN {
        r = s / f
        printf "   cold: floor %.3f s, bsync %.3f s, bsync / floor = %.2fx (target <= %sx: %s)\n",
            f, s, r, t, (r <= t ? "PASS" : "FAIL")
    }'
fi
