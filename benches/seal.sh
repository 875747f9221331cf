#!/usr/bin/env bash
# `make bench`, fourth part: what encryption (-K) costs.
#
# A full copy of the 1 GiB ext4 image (benches/mkimage.sh, cached under
# target/bench/) into a new destination over 127.0.0.1, with and without a
# key, at the default zstd level and with -n (where sealing is the larger
# share of the work). Runs alternate plain and keyed so that both see the
# same machine load; the minimum of RUNS each is compared.
#
#   benches/seal.sh [RUNS]     default 3
set -euo pipefail

cd "$(dirname "$0")/.."
runs=${1:-3}
dir=${CARGO_TARGET_DIR:-target}/bench
orig=$dir/ext4-1G.img
fresh=$dir/seal-new.img
target=1.3

bench=seal.sh
# shellcheck source=benches/lib.sh
. benches/lib.sh

[[ -s $orig ]] || benches/mkimage.sh 1G "$orig"
# Both ends read the key from stdin (-K -), as they should outside a bench.
(umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$tmp/key")
bsync_stdin=$tmp/key
size=$(stat -c %s "$orig")
say "== encryption cost: full copy of the 1 GiB image into a new destination ($runs runs each, min)"
say "   machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at start"
say "   before each run: rm -f $fresh; cat $orig > /dev/null"
say "   ./bsync -q [-K -] -f $fresh -p 0 -i 127.0.0.1 <key &   ./bsync [-K -] [-n] -f $orig -r 127.0.0.1:PORT <key"
rows=()
for level in "" "-n"; do
    plain=()
    keyed=()
    for ((i = 1; i <= runs; i++)); do
        for mode in plain keyed; do
            flags=()
            [[ -n $level ]] && flags+=("$level")
            [[ $mode == keyed ]] && flags+=(-K -)
            rm -f "$fresh"
            warm "$orig"
            bsync_run up "$fresh" "$orig" "" "${flags[@]}"
            check_same "$orig" "$fresh" "$mode $level run $i"
            if [[ $mode == plain ]]; then plain+=("$took $took_cpu"); else keyed+=("$took $took_cpu"); fi
            say "   ${level:-default level} $mode run $i: $took s, CPU $took_cpu s   (cmp: identical)"
        done
    done
    read -r p_t p_cpu < <(fastest "${plain[@]}")
    read -r k_t k_cpu < <(fastest "${keyed[@]}")
    r=$(calc 'sprintf("%.2f", a / b)' "a=$k_t" "b=$p_t")
    rc=$(calc 'sprintf("%.2f", a / b)' "a=$k_cpu" "b=$p_cpu")
    rows+=("${level:-default}|$p_t|$p_cpu|$k_t|$k_cpu|$r|$rc")
done
rm -f "$fresh"

say ""
say "== summary (GB = 10^9 bytes; CPU = user + system seconds of client and server)"
{
    printf '%-10s %9s %7s %9s %7s  %s\n' "level" "plain s" "CPU s" "-K s" "CPU s" "-K / plain (wall, CPU)"
    for row in "${rows[@]}"; do
        IFS='|' read -r l pt pc kt kc r rc <<<"$row"
        printf '%-10s %9s %7s %9s %7s  %s x wall (%s), %s x CPU  (target <= %s: %s)\n' \
            "$l" "$pt" "$pc" "$kt" "$kc" "$r" "$(gbps "$size" "$kt") GB/s keyed" "$rc" \
            "$target" "$(verdict "$r" "$target")"
    done
} | sed 's/^/   /'
