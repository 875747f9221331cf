#!/usr/bin/env bash
# Helpers shared by the benches (sync.sh, net.sh, seal.sh, ssh.sh): timing,
# CPU accounting, a bsync server and client pair over 127.0.0.1, and
# cleanup of every background process. Source it after setting `bench` (the
# script's name, for messages) and `dir` (the cache of images).
#
# It checks ./bsync and makes $tmp; on exit it ends the recorded background
# processes, calls the script's own `on_exit` if it defines one, and
# removes $tmp.

say() { printf '%s\n' "$*"; }
die() { printf '%s: error: %s\n' "$bench" "$*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
min() { printf '%s\n' "$@" | sort -g | sed -n 1p; }
# The "WALL CPU" pair with the smallest WALL, as two words.
fastest() { printf '%s\n' "$@" | sort -g -k1,1 | sed -n 1p; }
# calc 'EXPR' a=1 b=2: one awk expression, printed as is.
calc() {
    local expr=$1 args=()
    shift
    for v in "$@"; do args+=(-v "$v"); done
    awk "${args[@]}" "BEGIN { print $expr }"
}
gbps() { calc 'sprintf("%.2f", b / t / 1e9)' "b=$1" "t=$2"; }
verdict() { calc '(r <= t ? "PASS" : "FAIL")' "r=$1" "t=$2"; }

# Every background process is recorded here and ended on exit, by pid.
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${pids[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    if declare -F on_exit >/dev/null; then on_exit; fi
    if [[ -n ${tmp:-} ]]; then rm -rf "$tmp"; fi
}
# Drop PID from the list once it has been waited for: its number may be reused.
forget() {
    local p keep=()
    for p in "${pids[@]}"; do
        [[ $p == "$1" ]] || keep+=("$p")
    done
    pids=("${keep[@]}")
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Wait until FILE has a first line (a port) or PID is gone.
wait_port() {
    local file=$1 pid=$2 what=$3 i
    for ((i = 0; i < 1000; i++)); do
        if [[ -s $file ]] && read -r port <"$file" && [[ -n $port ]]; then
            printf '%s\n' "$port"
            return
        fi
        kill -0 "$pid" 2>/dev/null || die "$what exited before printing its port"
        sleep 0.01
    done
    die "$what printed no port within 10 s"
}

free_port() {
    command -v python3 >/dev/null || die "python3 is needed to find a free port"
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

warm() { cat "$@" >/dev/null; }

# CPU seconds (user + system) used so far by this shell's waited-for
# children, in $cpu. `times` must run in this shell, not a subshell: a
# subshell would report its own children, none.
cpu_now() {
    times >"$tmp/times"
    cpu=$(awk 'NR == 2 {
        for (i = 1; i <= 2; i++) { split($i, p, "m"); sub("s", "", p[2]); t += p[1] * 60 + p[2] }
        printf "%.2f", t
    }' "$tmp/times")
}

# Copy ORIG over DST and flush it, so that the run's closing fdatasync does
# not pay for pages the copy dirtied.
restore() {
    cp --reflink=auto --sparse=always "$1" "$2"
    sync "$2"
}

# bsync_run DIR SERVER_FILE CLIENT_FILE DELAY_MS [FLAGS...]
#   DIR is "up" or "down"; DELAY_MS is "" (no relay) or a one-way delay.
#   FLAGS go to both ends, but -n and -L (the client picks the compression)
#   only to the client. Both ends read stdin from $bsync_stdin (default
#   /dev/null).
#   Sets $took (seconds), $took_cpu (CPU seconds of client and server,
#   relay excluded) and leaves the client's log in $tmp/client.log.
bsync_run() {
    local way=$1 sfile=$2 cfile=$3 delay=$4 port relay_pid server_pid t0 t1 rc cpu0
    shift 4
    cpu_now
    cpu0=$cpu
    local flags=("$@") sflags=() i
    [[ $way == down ]] && flags=(-d "${flags[@]}")
    # The client picks the compression; a server refuses -n and -L.
    for ((i = 0; i < ${#flags[@]}; i++)); do
        case ${flags[i]} in
        -n) ;;
        -L) i=$((i + 1)) ;;
        *) sflags+=("${flags[i]}") ;;
        esac
    done
    : >"$tmp/server.out"
    # With $server_summary set the server prints its summary too.
    local quiet=(-q)
    [[ -n ${server_summary:-} ]] && quiet=()
    "${bsync_bin:-./bsync}" "${quiet[@]}" "${sflags[@]}" -f "$sfile" -p 0 -i 127.0.0.1 \
        <"${bsync_stdin:-/dev/null}" >"$tmp/server.out" 2>"$tmp/server.log" &
    server_pid=$!
    pids+=("$server_pid")
    port=$(wait_port "$tmp/server.out" "$server_pid" "the bsync server")
    relay_pid=
    if [[ -n $delay ]]; then
        : >"$tmp/relay.out"
        python3 benches/delay_relay.py "$port" "$delay" >"$tmp/relay.out" &
        relay_pid=$!
        pids+=("$relay_pid")
        port=$(wait_port "$tmp/relay.out" "$relay_pid" "the delay relay")
    fi
    t0=$(now)
    rc=0
    "${bsync_bin:-./bsync}" "${flags[@]}" -f "$cfile" -r "127.0.0.1:$port" \
        <"${bsync_stdin:-/dev/null}" 2>"$tmp/client.log" || rc=$?
    wait "$server_pid" || rc=$((rc ? rc : $?))
    forget "$server_pid"
    t1=$(now)
    cpu_now
    took_cpu=$(calc 'sprintf("%.2f", b - a)' "a=$cpu0" "b=$cpu")
    if [[ -n $relay_pid ]]; then
        kill "$relay_pid" 2>/dev/null || true
        wait "$relay_pid" 2>/dev/null || true
        forget "$relay_pid"
    fi
    if ((rc != 0)); then
        sed 's/^/   client: /' "$tmp/client.log" >&2
        sed 's/^/   server: /' "$tmp/server.log" >&2
        die "bsync failed (exit $rc)"
    fi
    took=$(elapsed "$t0" "$t1")
}

# The client's closing summary line, and its wire numbers.
summary_line() { grep -o 'done: .*' "$tmp/client.log" | tail -n 1; }
wire_sent() { summary_line | sed -n 's/.*; sent \(.*\) on the wire.*/\1/p'; }
wire_ratio() { summary_line | sed -n 's/.*(\([0-9.]*\):1).*/\1/p'; }
# What the destination sent (digests and acknowledgements), from its
# summary: the client's in a download, the server's (with $server_summary
# set) in an upload.
digests_sent() {
    grep -ho 'done: .*' "$tmp/client.log" "$tmp/server.log" 2>/dev/null |
        sed -n 's/.*page requests, sent \(.*\) of digests.*/\1/p' | tail -n 1
}

check_same() { cmp "$1" "$2" || die "$3: destination differs from source"; }

[[ -x ${bsync_bin:-./bsync} ]] || die "${bsync_bin:-./bsync} is missing: run make first"
mkdir -p "$dir"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/bsync-$bench.XXXXXX")
