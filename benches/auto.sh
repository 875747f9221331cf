#!/usr/bin/env bash
# `make bench`: -auto against the defaults, on loopback and on a link
# throttled to 100 Mbit/s.
#
# The files are the ones benches/sync.sh, net.sh and ssh.sh use (cached
# under target/bench/): a 1 GiB ext4 image of real files as the old
# destination, and a copy with ~5 % of its 4 KiB blocks overwritten as the
# new source. Each run updates a fresh, hot copy of the old image over -r to
# a server started (untimed) just before; defaults and -auto alternate, and
# the best of RUNS counts for each:
#
#   bsync -f NEW -r ADDR:PORT          against   bsync -auto -f NEW -r ADDR:PORT
#
# The 100 Mbit/s link: two network namespaces made here (root, ip and tc
# needed; skipped with a message otherwise), joined by a veth pair with
# 192.168.231.1 and .2, the client's side shaped with
# `tc qdisc add dev X root tbf rate 100mbit burst 32kbit latency 50ms`.
# They are removed on exit.
#
#   benches/auto.sh [RUNS]      default 3
set -euo pipefail

cd "$(dirname "$0")/.."
runs=${1:-3}
dir=${CARGO_TARGET_DIR:-target}/bench
orig=$dir/ext4-1G.img
changed=$dir/ext4-1G-changed5.img

bench=auto.sh
# shellcheck source=benches/lib.sh
. benches/lib.sh
[[ -s $orig ]] || benches/mkimage.sh 1G "$orig"
[[ -s $changed ]] || benches/mkimage.sh --modify "$orig" "$changed" 5
dst=$tmp/dst.img

ns_c=bsync-bench-$$-c
ns_s=bsync-bench-$$-s
made_ns=''
on_exit() {
    if [[ -n $made_ns ]]; then
        ip netns del "$ns_c" 2>/dev/null || true
        ip netns del "$ns_s" 2>/dev/null || true
    fi
}

# pair WRAP_SERVER WRAP_CLIENT ADDR [CLIENT FLAGS...]: one timed update of
# a fresh copy; sets $took and leaves the client's log in $tmp/client.log.
pair() {
    local ws=$1 wc=$2 addr=$3 port server_pid t0 t1 rc=0
    shift 3
    restore "$orig" "$dst"
    warm "$changed" "$dst"
    : >"$tmp/server.out"
    # shellcheck disable=SC2086 # the wrapper is a word list or nothing
    $ws ./bsync -q -f "$dst" -p 0 -i "$addr" </dev/null >"$tmp/server.out" 2>"$tmp/server.log" &
    server_pid=$!
    pids+=("$server_pid")
    port=$(wait_port "$tmp/server.out" "$server_pid" "the bsync server")
    t0=$(now)
    # shellcheck disable=SC2086
    $wc ./bsync "$@" -f "$changed" -r "$addr:$port" </dev/null 2>"$tmp/client.log" || rc=$?
    wait "$server_pid" || rc=$((rc ? rc : $?))
    forget "$server_pid"
    t1=$(now)
    if ((rc != 0)); then
        sed 's/^/   client: /' "$tmp/client.log" >&2
        sed 's/^/   server: /' "$tmp/server.log" >&2
        die "bsync failed (exit $rc)"
    fi
    cmp "$changed" "$dst" || die "destination differs"
    took=$(elapsed "$t0" "$t1")
}

# compare NAME WRAP_SERVER WRAP_CLIENT ADDR LIMIT: -auto/defaults must be
# at most LIMIT (loopback) or below it (the slow link: LIMIT 0.99).
compare() {
    local name=$1 ws=$2 wc=$3 addr=$4 limit=$5 i d a ratio
    local -a td ta
    say "== -auto against the defaults, $name: 1 GiB ext4 image, ~5 % of 4 KiB blocks changed"
    for ((i = 0; i < runs; i++)); do
        pair "$ws" "$wc" "$addr"
        td+=("$took")
        pair "$ws" "$wc" "$addr" -auto
        ta+=("$took")
        say "   run $((i + 1)): defaults ${td[$i]} s, -auto ${ta[$i]} s"
        say "      $(grep -o 'auto: .*' "$tmp/client.log")"
    done
    d=$(min "${td[@]}")
    a=$(min "${ta[@]}")
    ratio=$(calc 'sprintf("%.2f", a / d)' "a=$a" "d=$d")
    say "   best of $runs: defaults $d s, -auto $a s: -auto/defaults = $ratio (target <= $limit: $(verdict "$ratio" "$limit"))"
}

compare "loopback" "" "" 127.0.0.1 1.10

if [[ $(id -u) != 0 ]] || ! command -v ip >/dev/null || ! command -v tc >/dev/null; then
    say "== 100 Mbit/s veth: skipped (needs root, ip and tc: apt-get install iproute2)"
    exit 0
fi
made_ns=1
ip netns add "$ns_c"
ip netns add "$ns_s"
ip link add bsc netns "$ns_c" type veth peer name bss netns "$ns_s"
ip -n "$ns_c" addr add 192.168.231.1/24 dev bsc
ip -n "$ns_s" addr add 192.168.231.2/24 dev bss
for ns in "$ns_c" "$ns_s"; do
    ip -n "$ns" link set lo up
done
ip -n "$ns_c" link set bsc up
ip -n "$ns_s" link set bss up
ip netns exec "$ns_c" tc qdisc add dev bsc root tbf rate 100mbit burst 32kbit latency 50ms
compare "100 Mbit/s veth (tbf)" "ip netns exec $ns_s" "ip netns exec $ns_c" 192.168.231.2 0.99
