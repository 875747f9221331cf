#!/usr/bin/env bash
# `make bench`, the long-link part: bsync on the realistic 1 GiB pair
# through a delay line (benches/delay_relay.py: latency without a
# throughput limit; tc netem is not needed) at 0, 10 and 50 ms each way,
# against an rsync daemon through the same delay line, and the peak RSS
# of both bsync ends at -w 1 and -w 4 at 0 and 50 ms.
#
#   benches/delay.sh [RUNS]        RUNS per row, alternated; default 3
#   BSYNC_BASE=path/to/bsync benches/delay.sh
#                                  also time another build (the 0 ms rows
#                                  of "today") alternately with ./bsync
#   KINDS="upload" DELAYS="0 50" benches/delay.sh
#                                  only these rows (default: upload
#                                  download identical, at 0 10 50);
#                                  without 0 the "its 0 ms" ratio is "-"
#   KINDS= benches/delay.sh        only the peak RSS rows
#
# The pair is benches/mkimage.sh's 1 GiB ext4 image and its --realistic
# copy (changed through a loop mount, so it needs root the first time;
# both are cached under target/bench/). Rows:
#   upload     client holds the changed image, server the original
#   download   -d: the server holds the changed image
#   identical  upload of the changed image onto a copy of itself
# rsync runs as `rsync --inplace --no-whole-file -I` (-I: no skip on
# size and time, so identical data is compared too) against a daemon
# reached through the same delay line. Runs of bsync and rsync alternate,
# so a load that comes and goes hits both alike; the medians and their
# ratios are printed. Peak RSS comes from /usr/bin/time -v around each
# end. Every destination is compared with its source (cmp).
set -euo pipefail

cd "$(dirname "$0")/.."
runs=${1:-3}
dir=${CARGO_TARGET_DIR:-target}/bench
orig=$dir/ext4-1G.img
realistic=$dir/ext4-1G-realistic.img
dst=$dir/delay-dst.img
read -r -a delays <<<"${DELAYS:-0 10 50}"
read -r -a kinds <<<"${KINDS-upload download identical}"

bench=delay.sh
# shellcheck source=benches/lib.sh
. benches/lib.sh
command -v python3 >/dev/null || die "python3 is needed for the delay relay"
command -v rsync >/dev/null || die "rsync is needed"
[[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) is needed for peak RSS"

[[ -s $orig ]] || benches/mkimage.sh 1G "$orig"
if [[ ! -s $realistic ]]; then
    ((EUID == 0)) || { say "delay.sh: skipped (making the realistic pair needs root)"; exit 0; }
    benches/mkimage.sh --realistic "$orig" "$realistic"
fi
say "== bsync and rsync through a delay line, realistic 1 GiB pair ($runs runs each, alternated, median)"
say "   machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at start"

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
ratio() { calc 'sprintf("%.2f", a / b)' "a=$1" "b=$2"; }

# The rsync daemon's configuration, serving $dir; a daemon is started for
# each rsync run, so that one lost to the load cannot fail the rest.
cat >"$tmp/rsyncd.conf" <<EOF
pid file = $tmp/rsyncd.pid
lock file = $tmp/rsyncd.lock
log file = $tmp/rsyncd.log
use chroot = no
[bench]
    path = $(cd "$dir" && pwd)
    read only = false
    $(if ((EUID == 0)); then echo "uid = 0"; fi)
    $(if ((EUID == 0)); then echo "gid = 0"; fi)
EOF

# prepare KIND: the destination of a KIND run, hot in the page cache with
# its source. Sets src (the source file).
prepare() {
    src=$realistic
    case $1 in
    identical) restore "$realistic" "$dst" ;;
    *) restore "$orig" "$dst" ;;
    esac
    warm "$src" "$dst"
}

# bsync_kind KIND DELAY [FLAGS...]: one bsync run; sets took.
bsync_kind() {
    local kind=$1 delay=$2
    shift 2
    prepare "$kind"
    if [[ $kind == download ]]; then
        bsync_run down "$src" "$dst" "$delay" "$@"
    else
        bsync_run up "$dst" "$src" "$delay" "$@"
    fi
    check_same "$src" "$dst" "bsync $kind, $delay ms"
}

# rsync_kind KIND DELAY: one rsync run through the delay line; sets took.
rsync_kind() {
    local kind=$1 delay=$2 relay port t0 t1 name rport daemon i
    prepare "$kind"
    rport=$(free_port)
    rm -f "$tmp/rsyncd.pid"
    rsync --daemon --no-detach --address=127.0.0.1 --port="$rport" --config="$tmp/rsyncd.conf" &
    daemon=$!
    pids+=("$daemon")
    for ((i = 0; i < 500; i++)); do
        rsync --list-only "rsync://127.0.0.1:$rport/bench/" >/dev/null 2>&1 && break
        kill -0 "$daemon" 2>/dev/null || die "the rsync daemon exited: $(cat "$tmp/rsyncd.log")"
        sleep 0.02
    done
    # Emptied first: the last run's port must not be read before the
    # relay's own output replaces it.
    : >"$tmp/rrelay.out"
    python3 benches/delay_relay.py "$rport" "$delay" >"$tmp/rrelay.out" &
    relay=$!
    pids+=("$relay")
    port=$(wait_port "$tmp/rrelay.out" "$relay" "the delay relay")
    name=$(basename "$dst")
    t0=$(now)
    if [[ $kind == download ]]; then
        # The daemon sends the changed image, named by its path under $dir.
        rsync --inplace --no-whole-file -I "rsync://127.0.0.1:$port/bench/$(basename "$src")" "$dst"
    else
        rsync --inplace --no-whole-file -I "$src" "rsync://127.0.0.1:$port/bench/$name"
    fi
    t1=$(now)
    kill "$relay" "$daemon" 2>/dev/null || true
    wait "$relay" "$daemon" 2>/dev/null || true
    forget "$relay"
    forget "$daemon"
    took=$(elapsed "$t0" "$t1")
    check_same "$src" "$dst" "rsync $kind, $delay ms"
}

# ------------------------------------------------------------ peak RSS
# A wrapper that runs ./bsync under /usr/bin/time -v, the server's report
# apart from the client's.
cat >"$tmp/timed" <<EOF
#!/usr/bin/env bash
out=$tmp/rss.client
for a in "\$@"; do [[ \$a == -p ]] && out=$tmp/rss.server; done
exec /usr/bin/time -v -o "\$out" "$(pwd)/bsync" "\$@"
EOF
chmod +x "$tmp/timed"
rss() { awk -F': ' '/Maximum resident/ { printf "%.0f", $2 / 1024 }' "$1"; }
say ""
say "   peak RSS (MiB, /usr/bin/time -v), realistic upload, max of $runs runs: source (client) / destination (server)"
say "   | -w | one-way delay | source | destination |"
say "   |---|---|---|---|"
for w in 1 4; do
    for delay in 0 50; do
        s=0 d=0
        for ((i = 1; i <= runs; i++)); do
            bsync_bin=$tmp/timed bsync_kind upload "$delay" -w "$w"
            s=$(calc '(a > b ? a : b)' "a=$s" "b=$(rss "$tmp/rss.client")")
            d=$(calc '(a > b ? a : b)' "a=$d" "b=$(rss "$tmp/rss.server")")
        done
        say "   | $w | $delay ms | $s | $d |"
    done
done
say ""
say "   bsync: ./bsync -q -f DST -p 0 -i 127.0.0.1 &   python3 benches/delay_relay.py PORT DELAY &"
say "          ./bsync -f SRC -r 127.0.0.1:RELAY_PORT          (download: both ends -d)"
say "   rsync: rsync --inplace --no-whole-file -I SRC rsync://127.0.0.1:RELAY_PORT/bench/DST"
say "          (daemon: rsync --daemon --no-detach --address=127.0.0.1 --port=PORT, [bench] path = $dir)"
[[ -n ${BSYNC_BASE:-} ]] && say "   base:  $BSYNC_BASE, the same commands"
if ((${#kinds[@]} == 0)); then
    rm -f "$dst"
    exit 0
fi
declare -A med
for kind in "${kinds[@]}"; do
    for delay in "${delays[@]}"; do
        b=() r=() o=()
        for ((i = 1; i <= runs; i++)); do
            bsync_kind "$kind" "$delay"
            b+=("$took")
            rsync_kind "$kind" "$delay"
            r+=("$took")
            if [[ -n ${BSYNC_BASE:-} && $delay == 0 ]]; then
                bsync_bin=$BSYNC_BASE bsync_kind "$kind" "$delay"
                o+=("$took")
            fi
        done
        med[$kind.$delay]=$(median "${b[@]}")
        med[rsync.$kind.$delay]=$(median "${r[@]}")
        line="   $kind, $delay ms each way: bsync ${b[*]} s, rsync ${r[*]} s"
        if ((${#o[@]})); then
            med[base.$kind]=$(median "${o[@]}")
            line+=", base ${o[*]} s"
        fi
        say "$line"
    done
done

say ""
say "   | data | one-way delay | bsync (median) | rsync daemon | bsync / rsync | bsync / its 0 ms |"
say "   |---|---|---|---|---|---|"
for kind in "${kinds[@]}"; do
    for delay in "${delays[@]}"; do
        t=${med[$kind.$delay]}
        rs=${med[rsync.$kind.$delay]}
        zero=-
        [[ -n ${med[$kind.0]:-} ]] && zero=$(ratio "$t" "${med[$kind.0]}")
        say "   | $kind | $delay ms | $t s | $rs s | $(ratio "$t" "$rs") | $zero |"
    done
done
if [[ -n ${BSYNC_BASE:-} && -n ${med[${kinds[0]:-}.0]:-} ]]; then
    for kind in "${kinds[@]}"; do
        say "   $kind, 0 ms: ./bsync / base = $(ratio "${med[$kind.0]}" "${med[base.$kind]}")"
    done
fi

rm -f "$dst"
