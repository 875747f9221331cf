#!/usr/bin/env bash
# `make bench`, second part: how close does a local bsync run come to the
# cost of just reading both sides, and is the shipped static binary as fast
# as a glibc build?
#
# Pairs, each a source and a destination to make identical to it:
#   scatter    a 1 GiB ext4 image of real files and a copy with 5 % of its
#              4 KiB blocks overwritten at uniformly random places
#   realistic  the same image and a copy changed through a loop mount
#              (files deleted, rewritten, appended to, added: about 7 % of
#              its pages, clustered); needs root, else skipped
#   identical  a 2 GiB image of real files and an identical copy
# The floor is `cat SRC DST > /dev/null`: bsync has to read both files, so
# it cannot beat that. Targets: changed pairs at most 1.2x the floor,
# identical at most 1.1x; the static ./bsync within 5 % of a glibc build
# (cargo build --release) of the same source. Last, a 100 GiB sparse file
# (truncate -s 100G) into a new one: under 10 s.
#
# Files are measured hot (in the page cache): dropping caches needs root
# and is not reliable on a shared machine, so both are read before every
# timed run.
#
#   benches/sync.sh [RUNS]     default 3; each figure is the minimum
set -euo pipefail

cd "$(dirname "$0")/.."
runs=${1:-3}
dir=${CARGO_TARGET_DIR:-target}/bench
orig=$dir/ext4-1G.img
scatter=$dir/ext4-1G-changed5.img
realistic=$dir/ext4-1G-realistic.img
big=$dir/ext4-2G.img
dst=$dir/sync-dst.img
glibc=${CARGO_TARGET_DIR:-target}/release/bsync

bench=sync.sh
# shellcheck source=benches/lib.sh
. benches/lib.sh

say "== preparing images (cached under $dir)"
[[ -s $orig ]] || benches/mkimage.sh 1G "$orig"
[[ -s $scatter ]] || benches/mkimage.sh --modify "$orig" "$scatter" 5
if [[ ! -s $realistic ]] && ((EUID == 0)); then
    benches/mkimage.sh --realistic "$orig" "$realistic"
fi
[[ -s $big ]] || benches/mkimage.sh 2G "$big"
say "   glibc build for comparison: cargo build --release --locked"
cargo build --release --locked --quiet
say "   machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at start"

# time_min VAR CMD...: the minimum of $runs runs of CMD, each after
# `prepare` (set by the caller), in VAR.
time_min() {
    local var=$1 i t0 t1 best=
    shift
    for ((i = 1; i <= runs; i++)); do
        prepare
        t0=$(now)
        "$@"
        t1=$(now)
        check
        best=$(min ${best:+"$best"} "$(elapsed "$t0" "$t1")")
    done
    printf -v "$var" '%s' "$best"
}

# case NAME SRC ORIG TARGET: the floor, the static bsync and the glibc
# bsync syncing SRC onto a fresh copy of ORIG.
case_local() {
    local name=$1 src=$2 base=$3 target=$4 floor static glib r rg
    prepare() {
        restore "$base" "$dst"
        warm "$src" "$dst"
    }
    check() { :; }
    time_min floor warm "$src" "$dst"
    check() { check_same "$src" "$dst" "$name"; }
    time_min static ./bsync -q -f "$src" -t "$dst"
    time_min glib "$glibc" -q -f "$src" -t "$dst"
    r=$(calc 'sprintf("%.2f", s / f)' "s=$static" "f=$floor")
    rg=$(calc 'sprintf("%.2f", s / g)' "s=$static" "g=$glib")
    say "   $name: floor $floor s, ./bsync $static s, glibc build $glib s"
    say "      ./bsync / floor = $r   (target <= $target: $(verdict "$r" "$target"))"
    say "      ./bsync / glibc build = $rg   (target <= 1.05: $(verdict "$rg" 1.05))"
}

say ""
say "== local sync, hot cache, min of $runs runs: cat SRC DST > /dev/null;"
say "   ./bsync -q -f SRC -t DST; $glibc -q -f SRC -t DST"
say "   (before each run: cp --reflink=auto --sparse=always ORIG DST; sync; cat SRC DST > /dev/null)"
case_local "scatter (5 % of pages, uniform)" "$scatter" "$orig" 1.2
if [[ -s $realistic ]]; then
    case_local "realistic (loop-mount changes)" "$realistic" "$orig" 1.2
else
    say "   realistic: skipped (making it needs root for a loop mount)"
fi
case_local "identical 2 GiB" "$big" "$big" 1.1

say ""
say "== 100 GiB sparse source into a new file: truncate -s 100G SRC; ./bsync -q -f SRC -t NEW"
truncate -s 100G "$tmp/sparse"
prepare() { rm -f "$tmp/new"; }
check() { [[ $(stat -c %s "$tmp/new") == $(stat -c %s "$tmp/sparse") ]] || die "sparse: wrong size"; }
time_min sparse ./bsync -q -f "$tmp/sparse" -t "$tmp/new"
say "   $sparse s (target < 10 s: $(verdict "$sparse" 10))"

# Cold cache: what a real disk sync looks like. Needs root to drop caches;
# skipped otherwise. bsync reads its two sides with two threads, cat one
# after the other, so here bsync can beat the floor.
if [[ -w /proc/sys/vm/drop_caches ]]; then
    say ""
    say "== cold cache, scatter pair (sync; echo 3 > /proc/sys/vm/drop_caches before each run)"
    drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
    prepare() { restore "$orig" "$dst"; drop; }
    check() { :; }
    time_min cold_floor warm "$scatter" "$dst"
    check() { check_same "$scatter" "$dst" "cold"; }
    time_min cold_sync ./bsync -q -f "$scatter" -t "$dst"
    r=$(calc 'sprintf("%.2f", s / f)' "s=$cold_sync" "f=$cold_floor")
    say "   floor $cold_floor s, ./bsync $cold_sync s, ./bsync / floor = $r (target <= 1.2: $(verdict "$r" 1.2))"
fi
