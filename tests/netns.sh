#!/usr/bin/env bash
# Real network faults between two network namespaces joined by a veth pair
# (part of `make test-fault`). The addresses (10.213.7.1 and .2) exist only
# inside the two namespaces this script makes and removes; nothing outside
# them is touched. The link is slowed with tc (tbf) so that the faults land
# mid-transfer.
#
#   1. reset: an nft (or iptables) rule answers the client's packets with
#      TCP resets for half a second; the client reconnects and completes.
#   2. silent drop: a rule drops everything for good; keep-alive and the
#      deadlines (BSYNC_IO_TIMEOUT=4) must end both ends, non-zero, within
#      a bound; a re-run after the rule is gone repairs.
#
# Skips, saying why, without root, ip, tc, or nft/iptables.
#
#   tests/netns.sh [BSYNC]     default ./bsync
set -euo pipefail

bin=$(realpath "${1:-./bsync}")
skip() {
    echo "netns: skipped: $*"
    exit 0
}
[[ $(id -u) == 0 ]] || skip "needs root"
command -v ip >/dev/null || skip "ip (iproute2) is not installed"
command -v tc >/dev/null || skip "tc (iproute2) is not installed"
if command -v nft >/dev/null; then
    fw=nft
elif command -v iptables >/dev/null; then
    fw=iptables
else
    skip "neither nft nor iptables is installed"
fi
[[ -x $bin ]] || { echo "netns: $bin is not executable" >&2; exit 1; }

a=bsync-fault-a-$$
b=bsync-fault-b-$$
va=bfa$$
vb=bfb$$
dir=$(mktemp -d)
cleanup() {
    ip netns del "$a" 2>/dev/null || true
    ip netns del "$b" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
ip netns add "$a" 2>/dev/null || skip "cannot create network namespaces here"
ip netns add "$b"
ip link add "$va" type veth peer name "$vb" || skip "cannot create a veth pair here"
ip link set "$va" netns "$a"
ip link set "$vb" netns "$b"
ip -n "$a" addr add 10.213.7.1/24 dev "$va"
ip -n "$b" addr add 10.213.7.2/24 dev "$vb"
for ns in "$a" "$b"; do ip -n "$ns" link set lo up; done
ip -n "$a" link set "$va" up
ip -n "$b" link set "$vb" up
# About 12 MB/s each way: a 48 MiB upload takes a few seconds.
for pair in "$a $va" "$b $vb"; do
    set -- $pair
    ip netns exec "$1" tc qdisc add dev "$2" root tbf rate 100mbit burst 64kb latency 200ms
done

block() { # block ACTION: reject (tcp reset) or drop, in namespace b
    if [[ $fw == nft ]]; then
        ip netns exec "$b" nft add table inet bsyncfault
        ip netns exec "$b" nft add chain inet bsyncfault input '{ type filter hook input priority 0; }'
        if [[ $1 == reject ]]; then
            ip netns exec "$b" nft add rule inet bsyncfault input tcp dport 9000 reject with tcp reset
        else
            ip netns exec "$b" nft add rule inet bsyncfault input tcp dport 9000 drop
        fi
    elif [[ $1 == reject ]]; then
        ip netns exec "$b" iptables -A INPUT -p tcp --dport 9000 -j REJECT --reject-with tcp-reset
    else
        ip netns exec "$b" iptables -A INPUT -p tcp --dport 9000 -j DROP
    fi
}
unblock() {
    if [[ $fw == nft ]]; then
        ip netns exec "$b" nft delete table inet bsyncfault
    else
        ip netns exec "$b" iptables -F INPUT
    fi
}

head -c $((48 << 20)) /dev/urandom >"$dir/src"
fail() {
    echo "netns: FAILED: $*" >&2
    for f in "$dir"/*.err; do echo "--- $f"; cat "$f"; done >&2
    exit 1
}

# run NAME: a server in b, a client in a; sets $client_rc $server_rc $took
start() {
    export BSYNC_IO_TIMEOUT=4
    ip netns exec "$b" "$bin" -f "$dir/dst" -p 9000 -i 10.213.7.2 -q 2>"$dir/$1-server.err" &
    server=$!
    sleep 0.3
    started=$SECONDS
    ip netns exec "$a" "$bin" -f "$dir/src" -r 10.213.7.2:9000 -n -b 1M 2>"$dir/$1-client.err" &
    client=$!
}
finish() {
    client_rc=0
    wait "$client" || client_rc=$?
    server_rc=0
    wait "$server" || server_rc=$?
    took=$((SECONDS - started))
}

echo "netns: namespaces $a and $b, veth $va/$vb, firewall: $fw"

# 1. A reset mid-transfer: the client reconnects and completes.
rm -f "$dir/dst"
start reset
sleep 1.5
block reject
sleep 0.5
unblock
finish
[[ $client_rc == 0 && $server_rc == 0 ]] || fail "reset: client $client_rc, server $server_rc"
cmp -s "$dir/src" "$dir/dst" || fail "reset: the destination differs after a run that succeeded"
grep -q "reconnecting" "$dir/reset-client.err" || fail "reset: the client never reconnected"
echo "netns: reset mid-transfer: reconnected and completed in ${took}s, identical"

# 2. A silent drop for good: both ends give up within the bound.
rm -f "$dir/dst"
start drop
sleep 1.5
block drop
finish
unblock
bound=60
[[ $client_rc != 0 && $server_rc != 0 ]] || fail "drop: client $client_rc, server $server_rc (both must fail)"
((took <= bound)) || fail "drop: took ${took}s, bound ${bound}s"
for end in client server; do
    line=$(grep '^bsync' "$dir/drop-$end.err" | tail -n1 || true)
    [[ -n $line ]] || fail "drop: the $end printed no error line"
    echo "netns: silent drop: $end: $line"
done
echo "netns: silent drop: both ends failed within ${took}s (bound ${bound}s)"
start rerun
finish
[[ $client_rc == 0 && $server_rc == 0 ]] || fail "re-run: client $client_rc, server $server_rc"
cmp -s "$dir/src" "$dir/dst" || fail "re-run: the destination differs"
echo "netns: re-run after the drop: identical"
