#!/usr/bin/env bash
# What tagging every frame costs without a key (issue 13): a full upload of
# the 1 GiB ext4 image (benches/mkimage.sh, cached under target/bench/) into
# a new destination over 127.0.0.1, at the default level and with -n (where
# the tag is the larger share of the work), with this tree's ./bsync against
# BASE, a build of the commit before frames were tagged. Runs alternate so
# that both see the same machine load; the minimum of RUNS each is compared.
#
#   benches/tag.sh BASE [RUNS]     BASE: the other binary; RUNS default 3
set -euo pipefail

cd "$(dirname "$0")/.."
base=$(realpath "${1:?usage: benches/tag.sh BASE [RUNS]}")
runs=${2:-3}
new=${NEW:-./bsync}
dir=${CARGO_TARGET_DIR:-target}/bench
orig=$dir/ext4-1G.img
fresh=$dir/tag-new.img
target=1.03

bench=tag.sh
bsync_bin=$new
# shellcheck source=benches/lib.sh
. benches/lib.sh

[[ -s $orig ]] || benches/mkimage.sh 1G "$orig"
say "== tag cost: full upload of the 1 GiB image into a new destination ($runs runs each, min)"
say "   machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at start"
say "   base: $base"
say "   tagged: $new"
rows=()
for level in "" "-n"; do
    plain=()
    tagged=()
    for ((i = 1; i <= runs; i++)); do
        for mode in base tagged; do
            flags=()
            [[ -n $level ]] && flags+=("$level")
            bsync_bin=$new
            [[ $mode == base ]] && bsync_bin=$base
            rm -f "$fresh"
            warm "$orig"
            bsync_run up "$fresh" "$orig" "" "${flags[@]}"
            check_same "$orig" "$fresh" "$mode $level run $i"
            if [[ $mode == base ]]; then plain+=("$took $took_cpu"); else tagged+=("$took $took_cpu"); fi
            say "   ${level:-default level} $mode run $i: $took s, CPU $took_cpu s"
        done
    done
    read -r p_t p_cpu < <(fastest "${plain[@]}")
    read -r k_t k_cpu < <(fastest "${tagged[@]}")
    r=$(calc 'sprintf("%.3f", a / b)' "a=$k_t" "b=$p_t")
    rc=$(calc 'sprintf("%.3f", a / b)' "a=$k_cpu" "b=$p_cpu")
    rows+=("${level:-default}|$p_t|$p_cpu|$k_t|$k_cpu|$r|$rc")
done
rm -f "$fresh"

say ""
say "== summary (CPU = user + system seconds of client and server)"
{
    printf '%-10s %9s %7s %9s %7s  %s\n' "level" "base s" "CPU s" "tagged s" "CPU s" "tagged / base (wall, CPU)"
    for row in "${rows[@]}"; do
        IFS='|' read -r l pt pc kt kc r rc <<<"$row"
        printf '%-10s %9s %7s %9s %7s  %s x wall, %s x CPU  (target <= %s: %s)\n' \
            "$l" "$pt" "$pc" "$kt" "$kc" "$r" "$rc" "$target" "$(verdict "$r" "$target")"
    done
} | sed 's/^/   /'
