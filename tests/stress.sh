#!/usr/bin/env bash
# `make test-stress`, first part: many transfers at once, and kill -9.
#
#   1. A bounded matrix of local and loopback transfers, six at a time:
#      sizes x workers (-w) x block sizes (-b) x levels (-n, -L ...), each
#      into a destination that partly matches; every one must end identical.
#   2. kill -9 of the client or the server of an upload or a download at a
#      seeded random moment: the survivor never reports success unless the
#      destination is identical, and a plain re-run repairs.
#
#   tests/stress.sh [BSYNC] [SEED] [KILLS]     defaults: ./bsync 13 12
set -euo pipefail

bin=$(realpath "${1:-./bsync}")
seed=${2:-13}
kills=${3:-12}
RANDOM=$seed
dir=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
export BSYNC_IO_TIMEOUT=5
fails=0

fail() {
    echo "stress: FAILED: $*" >&2
    fails=$((fails + 1))
}

# make_pair NAME SIZE: a source with a zero run and a destination that
# matches its first half.
make_pair() {
    head -c "$2" /dev/urandom >"$dir/$1.src"
    dd if=/dev/zero of="$dir/$1.src" bs=64K seek=3 count=5 conv=notrunc status=none
    head -c $(($2 / 2)) "$dir/$1.src" >"$dir/$1.dst"
    head -c $(($2 / 3)) /dev/urandom >>"$dir/$1.dst"
}

# server NAME ARGS...: start a server, set $port and $server_pid.
server() {
    local name=$1
    shift
    rm -f "$dir/$name.port"
    "$bin" -q -p 0 -i 127.0.0.1 "$@" >"$dir/$name.port" 2>"$dir/$name.server.err" &
    server_pid=$!
    for _ in $(seq 200); do
        [[ -s $dir/$name.port ]] && break
        sleep 0.02
    done
    port=$(head -n1 "$dir/$name.port")
}

# one NAME MODE SIZE W BS LEVEL: one transfer, checked.
one() {
    local name=$1 mode=$2 size=$3 w=$4 bs=$5 level=$6 rc=0 src_rc=0
    make_pair "$name" "$size"
    local s=$dir/$name.src d=$dir/$name.dst
    case $mode in
    local) "$bin" -q -w "$w" -b "$bs" $level -f "$s" -t "$d" 2>"$dir/$name.err" || rc=$? ;;
    upload)
        server "$name" -f "$d"
        "$bin" -q -w "$w" -b "$bs" $level -f "$s" -r "127.0.0.1:$port" 2>"$dir/$name.err" || rc=$?
        wait "$server_pid" || src_rc=$?
        ;;
    download)
        server "$name" -d -f "$s" -b "$bs"
        "$bin" -q -d -w "$w" $level -f "$d" -r "127.0.0.1:$port" 2>"$dir/$name.err" || rc=$?
        wait "$server_pid" || src_rc=$?
        ;;
    esac
    if [[ $rc != 0 || $src_rc != 0 ]]; then
        fail "$name ($mode, $size bytes, -w $w, -b $bs, $level): exit $rc/$src_rc: $(tail -n1 "$dir/$name.err")"
    elif ! cmp -s "$s" "$d"; then
        fail "$name ($mode, $size bytes, -w $w, -b $bs, $level): the destination differs"
    fi
    rm -f "$s" "$d"
}

# ---------------------------------------------------------------- matrix
sizes=(1048699 9437184 25165843)
workers=(1 4)
blocks=(64K 1M 4M)
levels=("-n" "-L fast" "-L default" "-L best")
modes=(local upload download)
n=0
started=$SECONDS
for size in "${sizes[@]}"; do
    for w in "${workers[@]}"; do
        for bs in "${blocks[@]}"; do
            level=${levels[$((n % ${#levels[@]}))]}
            mode=${modes[$((n % ${#modes[@]}))]}
            one "m$n" "$mode" "$size" "$w" "$bs" "$level" &
            n=$((n + 1))
            if ((n % 6 == 0)); then wait; fi
        done
    done
done
wait
echo "stress: matrix: $n transfers, six at a time, in $((SECONDS - started))s"

# ---------------------------------------------------------------- kill -9
for ((i = 0; i < kills; i++)); do
    name=k$i
    make_pair "$name" $((96 << 20))
    s=$dir/$name.src
    d=$dir/$name.dst
    mode=$([[ $((RANDOM % 2)) == 0 ]] && echo upload || echo download)
    victim=$([[ $((RANDOM % 2)) == 0 ]] && echo client || echo server)
    delay_ms=$((10 + RANDOM % 250))
    if [[ $mode == upload ]]; then
        server "$name" -f "$d"
        "$bin" -q -b 1M -w 2 -f "$s" -r "127.0.0.1:$port" 2>"$dir/$name.err" &
    else
        server "$name" -d -b 1M -f "$s"
        "$bin" -q -d -w 2 -f "$d" -r "127.0.0.1:$port" 2>"$dir/$name.err" &
    fi
    client_pid=$!
    sleep "$(printf '0.%03d' "$delay_ms")"
    if [[ $victim == client ]]; then
        kill -9 "$client_pid" 2>/dev/null || true
        survivor=$server_pid
    else
        kill -9 "$server_pid" 2>/dev/null || true
        survivor=$client_pid
    fi
    rc=0
    wait "$survivor" || rc=$?
    wait 2>/dev/null || true
    if [[ $rc == 0 ]] && ! cmp -s "$s" "$d"; then
        fail "$name: $mode, $victim killed after ${delay_ms}ms: the survivor exited 0 but the destination differs"
    fi
    outcome=$([[ $rc == 0 ]] && echo "survivor exited 0, identical" || echo "survivor exited $rc")
    # A plain re-run repairs.
    if [[ $mode == upload ]]; then
        server "$name" -f "$d"
        "$bin" -q -b 1M -w 2 -f "$s" -r "127.0.0.1:$port" 2>"$dir/$name.err" || fail "$name: re-run: $(tail -n1 "$dir/$name.err")"
    else
        server "$name" -d -b 1M -f "$s"
        "$bin" -q -d -w 2 -f "$d" -r "127.0.0.1:$port" 2>"$dir/$name.err" || fail "$name: re-run: $(tail -n1 "$dir/$name.err")"
    fi
    wait "$server_pid" || fail "$name: re-run server: $(tail -n1 "$dir/$name.server.err")"
    cmp -s "$s" "$d" || fail "$name: the re-run left the destination different"
    echo "stress: kill -9 $i: $mode, $victim killed after ${delay_ms}ms: $outcome; re-run repaired"
    rm -f "$s" "$d"
done

if ((fails > 0)); then
    echo "stress: $fails failure(s) (seed $seed)" >&2
    exit 1
fi
echo "stress: passed (seed $seed, $kills kills)"
