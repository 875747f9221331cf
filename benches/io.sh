#!/usr/bin/env bash
# What bsync's Linux I/O costs and what its kernel hints are worth.
#
#   benches/io.sh            (BENCH_SIZE=2G BENCH_RUNS=3 by default)
#
# 1. Read throughput. `bsync -q -f A -t B` with B an identical copy of A is a
#    pure read-and-compare run: both files are read in full, nothing is
#    written. Its baseline is two `dd bs=4M of=/dev/null` reading A and B at
#    the same time (bsync reads both sides in parallel too). The ratio is
#    dd time / bsync time (1.0 = as fast as dd; the target is >= 0.9).
#    Measured with a hot page cache (both files read just before) and a
#    cold one (both evicted just before, per file: dd iflag=nocache), with
#    the hints on and off (BSYNC_NO_HINTS=1: no fadvise, read-ahead, mlock,
#    huge pages or sync_file_range). The best of BENCH_RUNS runs is shown.
# 2. Page-cache footprint: how much of A and B is still cached after a
#    cold run (fincore), with the hints (POSIX_FADV_DONTNEED behind the
#    reader) and without.
#
# The image is benches/mkimage.sh's ext4 image of real files when that
# script exists, made fully allocated (holes would be read from memory);
# otherwise a mix of random bytes and /usr/lib files. Runs as any user;
# nothing here needs root.
set -euo pipefail

cd "$(dirname "$0")/.."
size=${BENCH_SIZE:-2G}
runs=${BENCH_RUNS:-3}
target_dir=${CARGO_TARGET_DIR:-target}
dir=$target_dir/bench/io
bsync=$target_dir/release/bsync
a=$dir/a-$size.img
b=$dir/b-$size.img

say() { printf 'io: %s\n' "$*" >&2; }
die() { printf 'io: error: %s\n' "$*" >&2; exit 1; }

for tool in dd fincore numfmt; do
    command -v "$tool" >/dev/null || die "$tool not found (util-linux, coreutils)"
done
bytes=$(numfmt --from=iec "$size") || die "bad size: $size"
mkdir -p "$dir"
if [[ ! -x $bsync ]]; then
    say "building the release binary"
    cargo build --release -q
fi

# A file of about `bytes` bytes of real-ish data, without holes.
make_fallback() {
    local out=$1 chunk=$dir/chunk
    say "making $out from random bytes and /usr/lib files"
    {
        head -c 32M /dev/urandom
        find /usr/lib -xdev -type f -readable -size -4M -print0 2>/dev/null |
            xargs -0 cat 2>/dev/null | head -c 32M || true # head closes the pipe
    } >"$chunk"
    : >"$out.tmp"
    while (($(stat -c %s "$out.tmp") < bytes)); do
        cat "$chunk" >>"$out.tmp"
    done
    truncate -s "$bytes" "$out.tmp"
    rm -f "$chunk"
    mv "$out.tmp" "$out"
}

if [[ ! -s $a ]]; then
    rm -f "$b"
    if [[ -x benches/mkimage.sh ]]; then
        benches/mkimage.sh "$size" "$a.sparse"
        cp --sparse=never "$a.sparse" "$a"
        rm -f "$a.sparse"
    else
        make_fallback "$a"
    fi
fi
if [[ ! -s $b ]]; then
    cp --sparse=never "$a" "$b"
fi
sync "$a" "$b"

# Seconds since the epoch, with nanoseconds.
now() { date +%s.%N; }

warm() { cat "$a" "$b" >/dev/null; }
evict() {
    dd if="$a" iflag=nocache count=0 status=none
    dd if="$b" iflag=nocache count=0 status=none
}

dd_both() {
    dd if="$a" of=/dev/null bs=4M status=none &
    dd if="$b" of=/dev/null bs=4M status=none
    wait
}

bsync_on() { "$bsync" -q -f "$a" -t "$b"; }
bsync_off() { BSYNC_NO_HINTS=1 "$bsync" -q -f "$a" -t "$b"; }

# best CACHE CMD: the shortest of `runs` timed runs of CMD, each after
# warm or evict.
best() {
    local cache=$1 cmd=$2 i t0 t1 t best=""
    for ((i = 0; i < runs; i++)); do
        "$cache"
        t0=$(now)
        "$cmd"
        t1=$(now)
        t=$(echo "$t1 - $t0" | bc -l)
        if [[ -z $best ]] || (($(echo "$t < $best" | bc -l))); then
            best=$t
        fi
    done
    echo "$best"
}

rate() { echo "scale=0; 2 * $bytes / $1 / 1048576" | bc -l; }
ratio() { printf '%.2f' "$(echo "scale=4; $1 / $2" | bc -l)"; }

cached() {
    fincore --bytes --noheadings --output RES "$a" "$b" |
        awk '{ s += $1 } END { printf "%d", s / 1048576 }'
}

printf 'bsync %s, %s, kernel %s, %s CPUs, %s runs, 2 x %s read per run\n' \
    "$(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
    "$(stat -f -c %T "$dir")" "$(uname -r)" "$(nproc)" "$runs" "$size"
printf '%-6s %-22s %9s %10s %14s\n' cache run seconds MiB/s "dd/bsync"
for cache in warm evict; do
    label=$([[ $cache == warm ]] && echo hot || echo cold)
    t_dd=$(best "$cache" dd_both)
    printf '%-6s %-22s %9.2f %10s %14s\n' "$label" "dd bs=4M, both files" "$t_dd" "$(rate "$t_dd")" "-"
    for hints in on off; do
        t=$(best "$cache" "bsync_$hints")
        printf '%-6s %-22s %9.2f %10s %14s\n' "$label" "bsync, hints $hints" "$t" "$(rate "$t")" "$(ratio "$t_dd" "$t")"
    done
done

total=$((2 * bytes / 1048576))
echo
printf 'page cache holding A and B (%s MiB) after a cold run:\n' "$total"
for hints in on off; do
    evict
    "bsync_$hints"
    printf '  hints %-3s (DONTNEED %s): %6s MiB\n' "$hints" \
        "$([[ $hints == on ]] && echo on || echo off)" "$(cached)"
done
evict
