#!/usr/bin/env bash
# `make bench`, third part: bsync over the network (127.0.0.1 only).
#
# Server and client run as two processes on this machine and talk over
# loopback TCP, so every number here includes both ends sharing the same
# CPUs. The files are the ones benches/sync.sh uses (cached under
# target/bench/): a 1 GiB ext4 image of real files, and a copy with ~5 % of
# its 4 KiB blocks overwritten by random data at uniformly random places;
# and, when root can loop-mount it, a copy changed through the file system
# (benches/mkimage.sh --realistic: clustered changes, about 7 % of pages).
#
#   1. delta upload (realistic, then 5 % scattered) against rsync's delta
#      transfer
#   2. upload of 2 GiB onto an identical copy (nothing to send), and the
#      digests the destination sent for it
#   3. full copy into a new destination at every -L level and with -n
#   4. delta download (-d), the same 5 % case
#   5. delta upload through a relay adding 10 ms of round trip
#      (benches/delay_relay.py), against the same relay without delay
#   6. delta upload with -w 2 against -w 1
#
# A bsync time runs from the client's start until both client and server
# have exited (the server exits after its one session, once the destination
# is written and fdatasync'ed). Files are hot in the page cache before every
# run: bsync drops what it read (POSIX_FADV_DONTNEED), so they are read
# again before each one. Every destination is compared with its source
# (cmp) after the run.
#
# Next to wall time, the CPU column gives the user + system seconds that
# client and server used together (from the shell's `times`; the relay and
# the rsync daemon are not counted). On a machine shared with other work,
# wall time moves with the load; CPU time hardly does.
#
#   benches/net.sh [RUNS]      RUNS for items 1 and 5; default 3
set -euo pipefail

cd "$(dirname "$0")/.."
runs=${1:-3}
dir=${CARGO_TARGET_DIR:-target}/bench
orig=$dir/ext4-1G.img
changed=$dir/ext4-1G-changed5.img
dst=$dir/net-dst.img
big=$dir/ext4-2G-twice.img
bigdst=$dir/net-2G-dst.img
fresh=$dir/net-new.img
relay_delay_ms=5
target_rsync=0.35
target_realistic=0.5
target_digests_mib=2
target_latency=1.10

bench=net.sh
# shellcheck source=benches/lib.sh
. benches/lib.sh
command -v python3 >/dev/null || die "python3 is needed for the delay relay"

# ---------------------------------------------------------------- images
say "== preparing images (cached under $dir)"
[[ -s $orig ]] || benches/mkimage.sh 1G "$orig"
[[ -s $changed ]] || benches/mkimage.sh --modify "$orig" "$changed" 5
if [[ ! -s $big ]]; then
    say "   $big: $orig twice (sparse)"
    rm -f "$big.tmp"
    dd if="$orig" of="$big.tmp" bs=1M conv=sparse,notrunc status=none
    dd if="$orig" of="$big.tmp" bs=1M seek=1024 conv=sparse,notrunc status=none
    mv "$big.tmp" "$big"
fi
if [[ ! -s $bigdst ]] || ! cmp -s "$big" "$bigdst"; then
    restore "$big" "$bigdst"
fi
size=$(stat -c %s "$orig")
bigsize=$(stat -c %s "$big")
say "   machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at start"
say "   server and client both run here and talk over 127.0.0.1"

# ---------------------------------------------------------- 1. vs rsync
# vs_rsync LABEL CHANGED TARGET: delta upload of CHANGED onto a fresh copy
# of $orig, bsync against rsync's delta transfer; leaves up1_min, up1_cpu,
# rs1_min, rs_local, rs_local_cpu and r1.
vs_rsync() {
    local label=$1 changed=$2 target=$3 i t0 t1 cpu0
    say ""
    say "== 1. delta upload, 1 GiB, $label ($runs runs, min)"
    say "   before each run: cp --reflink=auto --sparse=always $orig $dst; sync; cat $changed $dst > /dev/null"
    say "   bsync: ./bsync -q -f $dst -p 0 -i 127.0.0.1 &   ./bsync -f $changed -r 127.0.0.1:PORT"
    up1=()
    for ((i = 1; i <= runs; i++)); do
        restore "$orig" "$dst"
        warm "$changed" "$dst"
        bsync_run up "$dst" "$changed" ""
        up1+=("$took $took_cpu")
        check_same "$changed" "$dst" "bsync upload run $i"
        say "   run $i: $took s, CPU $took_cpu s (client + server)   (cmp: identical)"
    done
    say "   $(summary_line)"

    # rsync over a loopback daemon: its sender and receiver are then two
    # processes talking TCP, like bsync's client and server.
    rport=$(free_port)
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
    rsync --daemon --no-detach --address=127.0.0.1 --port="$rport" --config="$tmp/rsyncd.conf" &
    rsyncd_pid=$!
    pids+=("$rsyncd_pid")
    for ((i = 0; i < 500; i++)); do
        rsync --list-only "rsync://127.0.0.1:$rport/bench/" >/dev/null 2>&1 && break
        kill -0 "$rsyncd_pid" 2>/dev/null || die "the rsync daemon exited: $(cat "$tmp/rsyncd.log")"
        sleep 0.02
    done
    rsync_cmd=(rsync --inplace --no-whole-file "$changed" "rsync://127.0.0.1:$rport/bench/$(basename "$dst")")
    say ""
    say "   rsync over a loopback rsync daemon (sender and receiver: two processes over TCP):"
    say "   rsync --daemon --no-detach --address=127.0.0.1 --port=$rport --config=rsyncd.conf   ([bench] path = $dir)"
    say "   ${rsync_cmd[*]}"
    say "   (rsync does not fsync the destination; bsync fdatasyncs it before exiting)"
    rs1=()
    for ((i = 1; i <= runs; i++)); do
        restore "$orig" "$dst"
        warm "$changed" "$dst"
        t0=$(now)
        "${rsync_cmd[@]}"
        t1=$(now)
        rs1+=("$(elapsed "$t0" "$t1")")
        check_same "$changed" "$dst" "rsync daemon run $i"
        say "   run $i: ${rs1[-1]} s   (cmp: identical)"
    done
    kill "$rsyncd_pid" 2>/dev/null || true
    wait "$rsyncd_pid" 2>/dev/null || true
    forget "$rsyncd_pid"

    say ""
    say "   rsync on one machine, no daemon (sender and receiver: two processes over a pipe), 1 run:"
    say "   rsync --inplace --no-whole-file $changed $dst"
    restore "$orig" "$dst"
    warm "$changed" "$dst"
    cpu_now
    cpu0=$cpu
    t0=$(now)
    rsync --inplace --no-whole-file "$changed" "$dst"
    t1=$(now)
    cpu_now
    rs_local=$(elapsed "$t0" "$t1")
    rs_local_cpu=$(calc 'sprintf("%.2f", b - a)' "a=$cpu0" "b=$cpu")
    check_same "$changed" "$dst" "local rsync"
    say "   run 1: $rs_local s, CPU $rs_local_cpu s (sender + receiver)   (cmp: identical)"

    read -r up1_min up1_cpu < <(fastest "${up1[@]}")
    rs1_min=$(min "${rs1[@]}")
    r1=$(calc 'sprintf("%.2f", a / b)' "a=$up1_min" "b=$rs1_min")
    say "   bsync / rsync (daemon) = $r1   (target <= $target: $(verdict "$r1" "$target"))"
}

realistic=$dir/ext4-1G-realistic.img
real=()
if [[ ! -s $realistic ]] && ((EUID == 0)); then
    benches/mkimage.sh --realistic "$orig" "$realistic"
fi
if [[ -s $realistic ]]; then
    vs_rsync "changed through a loop mount (realistic, clustered)" "$realistic" "$target_realistic"
    real=("$up1_min" "$up1_cpu" "$rs1_min" "$rs_local" "$rs_local_cpu" "$r1")
else
    say ""
    say "== 1. realistic pair: skipped (making it needs root for a loop mount)"
fi
vs_rsync "~5 % of 4 KiB blocks changed at random" "$changed" "$target_rsync"

# --------------------------------------------------- 2. identical 2 GiB
say ""
say "== 2. upload of 2 GiB onto an identical copy (1 run)"
say "   $big = $orig twice; destination $bigdst already identical"
say "   ./bsync -q -f $bigdst -p 0 -i 127.0.0.1 &   ./bsync -f $big -r 127.0.0.1:PORT"
warm "$big" "$bigdst"
server_summary=1 bsync_run up "$bigdst" "$big" ""
same_digests=$(digests_sent)
same_t=$took
same_cpu=$took_cpu
check_same "$big" "$bigdst" "identical upload"
same_gbps=$(gbps "$bigsize" "$same_t")
say "   run 1: $same_t s = $same_gbps GB/s, CPU $same_cpu s   (cmp: identical)"
say "   $(summary_line)"
say "   server: $(grep -o 'done: .*' "$tmp/server.log" | tail -n 1)"
same_digests_mib=$(awk '{ s = 1; if ($2 == "KiB") s = 2^10; if ($2 == "MiB") s = 2^20; if ($2 == "GiB") s = 2^30
    printf "%.2f", $1 * s / 2^20 }' <<<"$same_digests")
say "   digests and acknowledgements the destination sent: $same_digests = $same_digests_mib MiB (target <= $target_digests_mib MiB: $(verdict "$same_digests_mib" "$target_digests_mib"))"

# ------------------------------------------------ 3. full copy per level
say ""
say "== 3. full copy of the 1 GiB image into a new (absent) destination (1 run each)"
say "   before each run: rm -f $fresh; cat $orig > /dev/null"
say "   ./bsync -q -f $fresh -p 0 -i 127.0.0.1 &   ./bsync LEVEL -f $orig -r 127.0.0.1:PORT"
levels=("-L fast" "-L default" "-L better" "-L best" "-n")
full_t=()
full_cpu=()
full_wire=()
full_ratio=()
for level in "${levels[@]}"; do
    rm -f "$fresh"
    warm "$orig"
    # shellcheck disable=SC2086 # "-L fast" is two words on purpose
    bsync_run up "$fresh" "$orig" "" $level
    check_same "$orig" "$fresh" "full copy $level"
    full_t+=("$took")
    full_cpu+=("$took_cpu")
    full_wire+=("$(wire_sent)")
    full_ratio+=("$(wire_ratio)")
    ratio=${full_ratio[-1]:-1.00}
    say "   $(printf '%-11s' "$level") $took s = $(gbps "$size" "$took") GB/s, CPU $took_cpu s, sent ${full_wire[-1]} on the wire, ratio $ratio:1"
done
rm -f "$fresh"

# ------------------------------------------------- 4. delta download
say ""
say "== 4. delta download, the 5 % case (1 run)"
say "   ./bsync -q -d -f $changed -p 0 -i 127.0.0.1 &   ./bsync -d -f $dst -r 127.0.0.1:PORT"
restore "$orig" "$dst"
warm "$changed" "$dst"
bsync_run down "$changed" "$dst" ""
down_t=$took
down_cpu=$took_cpu
check_same "$changed" "$dst" "delta download"
r4=$(calc 'sprintf("%.2f", a / b)' "a=$down_t" "b=$rs1_min")
say "   run 1: $down_t s, CPU $down_cpu s   (cmp: identical; / rsync daemon upload = $r4)"
say "   $(summary_line)"

# ---------------------------------------------------------- 5. latency
say ""
say "== 5. delta upload through a TCP relay, ${relay_delay_ms} ms each way (10 ms round trip) vs 0 ms ($runs runs each, min)"
say "   python3 benches/delay_relay.py SERVER_PORT DELAY_MS   (prints its own port; the client connects to it)"
lat0=()
lat10=()
for ((i = 1; i <= runs; i++)); do
    for delay in 0 "$relay_delay_ms"; do
        restore "$orig" "$dst"
        warm "$changed" "$dst"
        bsync_run up "$dst" "$changed" "$delay"
        check_same "$changed" "$dst" "relay $delay ms run $i"
        if [[ $delay == 0 ]]; then lat0+=("$took $took_cpu"); else lat10+=("$took $took_cpu"); fi
        say "   run $i, relay $delay ms each way: $took s, CPU $took_cpu s   (cmp: identical)"
    done
done
read -r lat0_min lat0_cpu < <(fastest "${lat0[@]}")
read -r lat10_min lat10_cpu < <(fastest "${lat10[@]}")
r5=$(calc 'sprintf("%.2f", a / b)' "a=$lat10_min" "b=$lat0_min")
say "   10 ms RTT / 0 ms relay = $r5   (target <= $target_latency: $(verdict "$r5" "$target_latency"))"

# ---------------------------------------------------------- 6. -w 2
say ""
say "== 6. delta upload with -w 2 (1 run; -w 1 is item 1)"
say "   ./bsync -q -f $dst -p 0 -i 127.0.0.1 &   ./bsync -w 2 -f $changed -r 127.0.0.1:PORT"
restore "$orig" "$dst"
warm "$changed" "$dst"
bsync_run up "$dst" "$changed" "" -w 2
w2_t=$took
w2_cpu=$took_cpu
check_same "$changed" "$dst" "-w 2 upload"
r6=$(calc 'sprintf("%.2f", a / b)' "a=$w2_t" "b=$up1_min")
say "   run 1: $w2_t s, CPU $w2_cpu s   (cmp: identical; -w 2 / -w 1 = $r6)"
rm -f "$dst"

# ------------------------------------------------------------ summary
say ""
say "== summary (1 GiB ext4 image, both ends on this $(nproc)-core machine over 127.0.0.1;"
say "   load average $(cut -d' ' -f1-3 /proc/loadavg) at the end; GB = 10^9 bytes;"
say "   CPU = user + system seconds of bsync client and server together)"
{
    row() { printf '%-42s %8s %7s  %s\n' "$@"; }
    row "test" "wall s" "CPU s" "result"
    row "1. delta upload 5 %, bsync (min of $runs)" "$up1_min" "$up1_cpu" \
        "$r1 x rsync daemon (target <= $target_rsync: $(verdict "$r1" "$target_rsync"))"
    row "   rsync, loopback daemon (min of $runs)" "$rs1_min" "-" "1.00"
    row "   rsync, local pipe (1 run)" "$rs_local" "$rs_local_cpu" \
        "$(calc 'sprintf("%.2f", a / b)' "a=$rs_local" "b=$rs1_min") x rsync daemon"
    if ((${#real[@]})); then
        row "1. delta upload realistic, bsync" "${real[0]}" "${real[1]}" \
            "${real[5]} x rsync daemon (target <= $target_realistic: $(verdict "${real[5]}" "$target_realistic"))"
        row "   rsync, loopback daemon" "${real[2]}" "-" "1.00"
        row "   rsync, local pipe (1 run)" "${real[3]}" "${real[4]}" \
            "CPU: bsync / rsync = $(calc 'sprintf("%.2f", a / b)' "a=${real[1]}" "b=${real[4]}")"
    fi
    row "2. identical 2 GiB upload" "$same_t" "$same_cpu" \
        "$same_gbps GB/s, $same_digests_mib MiB of digests (target <= $target_digests_mib: $(verdict "$same_digests_mib" "$target_digests_mib"))"
    for i in "${!levels[@]}"; do
        row "3. full copy ${levels[i]}" "${full_t[i]}" "${full_cpu[i]}" \
            "$(gbps "$size" "${full_t[i]}") GB/s, ${full_ratio[i]:-1.00}:1 (sent ${full_wire[i]})"
    done
    row "4. delta download 5 %" "$down_t" "$down_cpu" "$r4 x rsync daemon upload"
    row "5. delta upload, relay 0 ms (min of $runs)" "$lat0_min" "$lat0_cpu" "1.00"
    row "   relay 10 ms RTT (min of $runs)" "$lat10_min" "$lat10_cpu" \
        "$r5 x (target <= $target_latency: $(verdict "$r5" "$target_latency"))"
    row "6. delta upload -w 2" "$w2_t" "$w2_cpu" "$r6 x -w 1"
} | sed 's/^/   /'
