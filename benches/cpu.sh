#!/usr/bin/env bash
# `make bench`, issue 21's CPU part: what bsync spends beyond reading both
# sides, on the realistic 1 GiB pair (benches/mkimage.sh --realistic; root
# the first time) and on 2 GiB of identical data, hot page cache.
#
#   1. realistic upload over 127.0.0.1, no delay: CPU seconds (user +
#      system) of client and server together, against the CPU of
#      `cat SRC DST > /dev/null` (target: at most 3.5 x)
#   2. realistic pair, local (`-f SRC -t DST`): wall time against the read
#      floor, `cat SRC DST > /dev/null` (target: at most 1.1 x)
#   3. upload of 2 GiB onto an identical copy over 127.0.0.1: GB/s (target:
#      at least 4)
#
#   benches/cpu.sh [RUNS]                    default 5 runs per row, medians
#   BSYNC_BASE=path/to/bsync benches/cpu.sh  the same rows for another build,
#                                            run alternately with ./bsync
#
# Every run alternates ./bsync, the base (if any) and the floor, so a load
# that comes and goes hits them alike; only ratios taken in one run of this
# script mean anything on a shared machine. Every destination is compared
# with its source (cmp).
set -euo pipefail

cd "$(dirname "$0")/.."
runs=${1:-5}
dir=${CARGO_TARGET_DIR:-target}/bench
orig=$dir/ext4-1G.img
realistic=$dir/ext4-1G-realistic.img
dst=$dir/cpu-dst.img
big=$dir/ext4-2G-twice.img
bigdst=$dir/cpu-2G-dst.img

bench=cpu.sh
# shellcheck source=benches/lib.sh
. benches/lib.sh

[[ -s $orig ]] || benches/mkimage.sh 1G "$orig"
if [[ ! -s $realistic ]]; then
    ((EUID == 0)) || { say "cpu.sh: skipped (making the realistic pair needs root)"; exit 0; }
    benches/mkimage.sh --realistic "$orig" "$realistic"
fi
if [[ ! -s $big ]]; then
    say "   $big: $orig twice (sparse)"
    rm -f "$big.tmp"
    dd if="$orig" of="$big.tmp" bs=1M conv=sparse,notrunc status=none
    dd if="$orig" of="$big.tmp" bs=1M seek=1024 conv=sparse,notrunc status=none
    mv "$big.tmp" "$big"
fi
restore "$big" "$bigdst"
bigsize=$(stat -c %s "$big")
builds=(./bsync)
[[ -n ${BSYNC_BASE:-} ]] && builds+=("$BSYNC_BASE")

say "== bsync's CPU beyond reading, hot cache ($runs runs per row, alternated, median)"
say "   machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at start"
say "   1. ./bsync -q -f DST -p 0 -i 127.0.0.1 &  ./bsync -q -f $realistic -r 127.0.0.1:PORT"
say "      (DST a fresh copy of $orig); floor: cat $realistic DST > /dev/null"
say "   2. ./bsync -q -f $realistic -t DST; floor: the same cat"
say "   3. ./bsync -q -f $bigdst -p 0 -i 127.0.0.1 &  ./bsync -q -f $big -r 127.0.0.1:PORT"
say "   before each run: cp --reflink=auto --sparse=always ORIG DST; sync; cat SRC DST > /dev/null"

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
ratio() { calc 'sprintf("%.2f", a / b)' "a=$1" "b=$2"; }
fresh() {
    restore "$orig" "$dst"
    warm "$realistic" "$dst"
}

declare -A up_cpu up_wall local_wall same_gbps
floor_cpu=() floor_wall=()
for ((i = 1; i <= runs; i++)); do
    fresh
    cpu_now
    c0=$cpu
    t0=$(now)
    cat "$realistic" "$dst" >/dev/null
    t1=$(now)
    cpu_now
    floor_cpu+=("$(calc 'sprintf("%.2f", b - a)' "a=$c0" "b=$cpu")")
    floor_wall+=("$(elapsed "$t0" "$t1")")
    for b in "${builds[@]}"; do
        fresh
        bsync_bin=$b bsync_run up "$dst" "$realistic" ""
        check_same "$realistic" "$dst" "$b upload"
        up_cpu[$b]+=" $took_cpu"
        up_wall[$b]+=" $took"
        fresh
        t0=$(now)
        "$b" -q -f "$realistic" -t "$dst"
        t1=$(now)
        check_same "$realistic" "$dst" "$b local"
        local_wall[$b]+=" $(elapsed "$t0" "$t1")"
        warm "$big" "$bigdst"
        bsync_bin=$b bsync_run up "$bigdst" "$big" ""
        same_gbps[$b]+=" $(gbps "$bigsize" "$took")"
    done
done
check_same "$big" "$bigdst" "identical upload"

fc=$(median "${floor_cpu[@]}")
fw=$(median "${floor_wall[@]}")
say "   floor (cat both files): CPU ${floor_cpu[*]} s, wall ${floor_wall[*]} s"
for b in "${builds[@]}"; do
    # Word splitting of the run lists is meant.
    # shellcheck disable=SC2086
    {
        say "   $b: upload CPU${up_cpu[$b]} s, wall${up_wall[$b]} s; local${local_wall[$b]} s; identical${same_gbps[$b]} GB/s"
        uc=$(median ${up_cpu[$b]})
        uw=$(median ${up_wall[$b]})
        lw=$(median ${local_wall[$b]})
        sg=$(median ${same_gbps[$b]})
    }
    say ""
    say "   | $b | median | against the floor | target |"
    say "   |---|---|---|---|"
    say "   | 1. realistic upload, 0 ms, CPU of both ends | $uc s (wall $uw s) | $(ratio "$uc" "$fc") x cat's $fc s | <= 3.5: $(verdict "$(ratio "$uc" "$fc")" 3.5) |"
    say "   | 2. realistic pair, local, wall | $lw s | $(ratio "$lw" "$fw") x cat's $fw s | <= 1.1: $(verdict "$(ratio "$lw" "$fw")" 1.1) |"
    say "   | 3. identical 2 GiB upload | $sg GB/s | | >= 4: $(calc '(a >= 4 ? "PASS" : "FAIL")' "a=$sg") |"
done
if [[ -n ${BSYNC_BASE:-} ]]; then
    # shellcheck disable=SC2086
    say "   ./bsync / base: upload CPU $(ratio "$(median ${up_cpu[./bsync]})" "$(median ${up_cpu[$BSYNC_BASE]})"), upload wall $(ratio "$(median ${up_wall[./bsync]})" "$(median ${up_wall[$BSYNC_BASE]})"), local wall $(ratio "$(median ${local_wall[./bsync]})" "$(median ${local_wall[$BSYNC_BASE]})"), identical GB/s $(ratio "$(median ${same_gbps[./bsync]})" "$(median ${same_gbps[$BSYNC_BASE]})")"
fi
rm -f "$dst" "$bigdst"
