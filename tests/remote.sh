#!/usr/bin/env bash
# `make test-remote REMOTE=user@host[:port] [SSH_OPTS='-i key ...']`:
# the live matrix of -t against a real SSH server, with the ./bsync binary.
#
#   tests/remote.sh user@host[:port]     (IPv6: user@[::1]:port)
#
# SSH_OPTS (environment) are ssh options used for every ssh call, bsync's
# included (through BSYNC_SSH). Uploads and downloads with the default
# level, -L, -n and -e; -w 1 and -w 4; zero-block overwrites; empty-file
# truncation; -s resume; a quoted remote path; concurrent transfers. Uploads
# are checked by sha256 on both ends, downloads with cmp against the local
# original. Afterwards no /tmp/bsync.* directory may be left on the remote,
# and the remote's cache of bsync (~/.cache/bsync) must be private (0700).
# Everything this script makes lives under one mktemp directory in /tmp on
# each side and is removed on exit, also on failure. Every bsync run is
# bounded by `timeout`; the first mismatch stops the script with exit 1.
set -euo pipefail

cd "$(dirname "$0")/.."
remote=${1:-${REMOTE:-}}
[[ -n $remote ]] || { sed -n '2,18s/^# \{0,1\}//p' "$0"; exit 2; }
bin=${BSYNC:-./bsync}
limit=${RUN_TIMEOUT:-180}
mib=${SIZE_MIB:-24}

say() { printf 'test-remote: %s\n' "$*"; }
die() { printf 'test-remote: FAIL: %s\n' "$*" >&2; exit 1; }
[[ -x $bin ]] || die "$bin is missing: run make first"

# user@host[:port], the host possibly an [IPv6] literal.
user='' port=''
rest=$remote
if [[ $rest == *@* ]]; then
    user=${rest%%@*}
    rest=${rest#*@}
fi
if [[ $rest == \[*\]* ]]; then
    host=${rest#\[}
    host=${host%%\]*}
    rest=${rest#*\]}
    hostspec="[$host]"
    [[ -z $rest || $rest == :* ]] || die "bad REMOTE: $remote"
    port=${rest#:}
elif [[ $rest == *:* ]]; then
    host=${rest%%:*}
    port=${rest#*:}
    hostspec=$host
else
    host=$rest
    hostspec=$host
fi
[[ -z $port || $port =~ ^[0-9]+$ ]] || die "bad port in REMOTE: $remote"
[[ -n $host ]] || die "no host in REMOTE: $remote"

# shellcheck disable=SC2206 # SSH_OPTS is split on whitespace, as bsync does.
opts=(${SSH_OPTS:-})
export BSYNC_SSH="ssh ${SSH_OPTS:-}"
rsh=(ssh "${opts[@]}" ${port:+-p "$port"} ${user:+-l "$user"} "$host")
prefix="${user:+$user@}$hostspec${port:+:$port}:"

# One word for the remote POSIX shell.
q() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
r() { "${rsh[@]}" "$@" </dev/null; }

say "remote $remote; ssh options: ${SSH_OPTS:-none}"
r true || die "cannot ssh to $remote"
ldir=$(mktemp -d /tmp/bsync-remote-test.XXXXXXXX)
rdir=$(r 'mktemp -d /tmp/bsync-remote-test.XXXXXXXX')
[[ $rdir == /tmp/bsync-remote-test.* ]] || die "remote mktemp gave '$rdir'"
cleanup() {
    rm -rf "$ldir"
    r "rm -rf $(q "$rdir")" || say "could not remove $rdir on $remote"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
leftovers() { r 'ls -d /tmp/bsync.* 2>/dev/null | sort' || true; }
before=$(leftovers)
runs=0
start=$SECONDS

# bsync ARGS...: one bounded run; its output is shown only on failure.
bs() {
    runs=$((runs + 1))
    if ! timeout "$limit" "$bin" -q "$@" >"$ldir/out" 2>&1; then
        cat "$ldir/out" >&2
        die "bsync $* failed"
    fi
}

checks=0
ok() { checks=$((checks + 1)); say "ok  $*"; }
lsum() { sha256sum <"$1" | cut -d' ' -f1; }
rsum() { r "sha256sum <$(q "$1")" | cut -d' ' -f1; }
rsize() { r "stat -c %s $(q "$1")"; }
put() { "${rsh[@]}" "cat >$(q "$2")" <"$1"; }
same_up() { # LOCAL REMOTE WHAT
    [[ $(lsum "$1") == "$(rsum "$2")" ]] || die "$3: $2 on the remote differs from $1"
    ok "$3"
}
same_down() { # LOCAL-ORIGINAL LOCAL-COPY WHAT
    cmp "$1" "$2" || die "$3: $2 differs from $1"
    ok "$3"
}

# Random data with a zero stretch in the middle.
make_data() {
    head -c $((mib << 20)) /dev/urandom >"$1"
    dd if=/dev/zero of="$1" bs=1M seek=$((mib / 3)) count=$((mib / 6)) conv=notrunc status=none
}
# Overwrite a few scattered 4 KiB pieces with random data.
scribble() {
    local i
    for i in 1 2 3 4 5; do
        dd if=/dev/urandom of="$1" bs=4096 seek=$((RANDOM % (mib * 256))) count=1 \
            conv=notrunc status=none
    done
}
zero_out() { # FILE FIRST-MIB COUNT-MIB
    dd if=/dev/zero of="$1" bs=1M seek="$2" count="$3" conv=notrunc status=none
}

A=$ldir/a.img
RA=$rdir/a.img
make_data "$A"

say "uploads"
bs -f "$A" -t "$prefix$RA"
same_up "$A" "$RA" "upload into a new file"
scribble "$A"
bs -f "$A" -t "$prefix$RA" -L fast
same_up "$A" "$RA" "delta upload -L fast"
scribble "$A"
bs -f "$A" -t "$prefix$RA" -L best
same_up "$A" "$RA" "delta upload -L best"
scribble "$A"
bs -f "$A" -t "$prefix$RA" -n
same_up "$A" "$RA" "delta upload -n"
scribble "$A"
bs -f "$A" -t "$prefix$RA" -e
same_up "$A" "$RA" "delta upload -e"
scribble "$A"
bs -f "$A" -t "$prefix$RA" -w 4 -b 1M
same_up "$A" "$RA" "delta upload -w 4 -b 1M"
scribble "$A"
bs -f "$A" -t "$prefix$RA" -w 1 -b 256K
same_up "$A" "$RA" "delta upload -w 1 -b 256K"
zero_out "$A" 1 3
bs -f "$A" -t "$prefix$RA" -b 1M
same_up "$A" "$RA" "zero blocks overwrite data"
# -s: the first half is already there; only the second half changes.
B=$ldir/b.img
cp "$A" "$B"
dd if=/dev/urandom of="$B" bs=1M seek=$((mib / 2)) count=2 conv=notrunc status=none
bs -f "$B" -t "$prefix$RA" -b 1M -s $((mib / 2))
same_up "$B" "$RA" "-s resume"
: >"$ldir/empty"
bs -f "$ldir/empty" -t "$prefix$RA"
[[ $(rsize "$RA") == 0 ]] || die "empty source: $RA is not empty"
ok "empty source truncates"
odd="$rdir/sp ace 'q' \"dq\" \$HOME \`x\` \\b; *&|"
r "mkdir $(q "$odd")"
cp "$A" "$ldir/odd.img"
bs -f "$A" -t "$prefix$odd/f \$x'.img"
same_up "$A" "$odd/f \$x'.img" "quoted remote path"

say "downloads"
put "$A" "$RA"
D=$ldir/d.img
bs -f "$D" -t "$prefix$RA" -d
same_down "$A" "$D" "download into a new file"
scribble "$D"
bs -f "$D" -t "$prefix$RA" -d -L better
same_down "$A" "$D" "delta download -L better"
scribble "$D"
bs -f "$D" -t "$prefix$RA" -d -n
same_down "$A" "$D" "delta download -n"
scribble "$D"
bs -f "$D" -t "$prefix$RA" -d -e
same_down "$A" "$D" "delta download -e"
scribble "$D"
bs -f "$D" -t "$prefix$RA" -d -w 4 -b 1M
same_down "$A" "$D" "delta download -w 4 -b 1M"
scribble "$D"
bs -f "$D" -t "$prefix$RA" -d -w 1 -b 256K
same_down "$A" "$D" "delta download -w 1 -b 256K"
zero_out "$A" 5 2
put "$A" "$RA"
bs -f "$D" -t "$prefix$RA" -d -b 1M
same_down "$A" "$D" "download clears zero blocks"
cp "$A" "$B"
dd if=/dev/urandom of="$B" bs=1M seek=$((mib / 2)) count=2 conv=notrunc status=none
put "$B" "$RA"
bs -f "$D" -t "$prefix$RA" -d -b 1M -s $((mib / 2))
same_down "$B" "$D" "download -s resume"
r ": >$(q "$RA")"
bs -f "$D" -t "$prefix$RA" -d
[[ ! -s $D ]] || die "empty remote source: $D is not empty"
ok "empty remote source truncates"
bs -f "$D" -t "$prefix$odd/f \$x'.img" -d
same_down "$ldir/odd.img" "$D" "download from a quoted remote path"

say "concurrent transfers"
pids=()
for i in 1 2 3; do
    make_data "$ldir/c$i.img"
    timeout "$limit" "$bin" -q -f "$ldir/c$i.img" -t "$prefix$rdir/c$i.img" \
        >"$ldir/c$i.out" 2>&1 &
    pids+=($!)
done
timeout "$limit" "$bin" -q -d -f "$ldir/cd.img" -t "$prefix$odd/f \$x'.img" \
    >"$ldir/cd.out" 2>&1 &
pids+=($!)
for i in "${!pids[@]}"; do
    runs=$((runs + 1))
    wait "${pids[$i]}" || { cat "$ldir"/c*.out >&2; die "concurrent run $((i + 1)) failed"; }
done
for i in 1 2 3; do
    same_up "$ldir/c$i.img" "$rdir/c$i.img" "concurrent upload $i"
done
same_down "$ldir/odd.img" "$ldir/cd.img" "concurrent download"

# Only new ones that stay count: on a shared machine other users' runs make
# and remove their own meanwhile.
for ((i = 0; i < 20; i++)); do
    after=$(leftovers)
    left=$(comm -13 <(printf '%s\n' "$before") <(printf '%s\n' "$after") | tr '\n' ' ')
    [[ -n ${left// /} ]] || break
    sleep 0.5
done
[[ -z ${left// /} ]] || die "bsync left directories on the remote: $left"
ok "no temporary copy of bsync left behind"
cache=$(r 'c=${XDG_CACHE_HOME:-}; case $c in /*) ;; *) c=$HOME/.cache;; esac; echo "$c/bsync"')
[[ $(r "stat -c %a $(q "$cache")") == 700 ]] || die "$cache on the remote is not mode 0700"
ok "the remote's cache $cache is private"
say "$runs bsync runs in $((SECONDS - start)) s"
echo "test-remote: $checks passed, 0 failed"
