#!/usr/bin/env bash
# `make bench`: one command over SSH against rsync over SSH, on loopback.
#
# The files are the ones benches/sync.sh and net.sh use (cached under
# target/bench/): a 1 GiB ext4 image of real files as the old destination,
# and a copy with ~5 % of its 4 KiB blocks overwritten as the new source.
# Each tool updates its own copy of the old image to the new one through the
# same sshd on 127.0.0.1, wall time from start to exit, ssh start-up included:
#
#   bsync -q -f NEW -t user@127.0.0.1:PORT:DST        (deploys itself, TCP data)
#   rsync -I --inplace --no-whole-file -e "ssh OPTS -p PORT" NEW user@127.0.0.1:DST
#
# rsync gets -I so it never skips the file on size and time. Files are hot
# in the page cache before each run; every result is compared with cmp.
#
# Then what -t costs over -r: the same update with -r to a bsync server
# started (untimed) beforehand on 127.0.0.1, and, to see the fixed cost
# without the transfer's noise, a 64 MiB random file with one 1 MiB change
# both ways. -t runs with bsync already in the remote's cache (the usual
# case after the first run); one run with this build's cache entry removed
# shows the first-run cost, when bsync sends itself (target: -t <= -r +
# 0.35 s with the cache). `ssh host true` is timed beside them: the one
# login -t cannot avoid.
# The sshd: the one named by BSYNC_TEST_SSH/SSH_OPTS if set (tests/sshd.sh
# prints them), else one started here with tests/sshd.sh and stopped at the
# end; without openssh-server the benchmark says so and is skipped.
#
#   benches/ssh.sh [RUNS]      best of RUNS for each tool; default 1
set -euo pipefail

cd "$(dirname "$0")/.."
runs=${1:-1}
dir=${CARGO_TARGET_DIR:-target}/bench
orig=$dir/ext4-1G.img
changed=$dir/ext4-1G-changed5.img
target_ratio=0.5

bench=ssh.sh
# shellcheck source=benches/lib.sh
. benches/lib.sh
command -v rsync >/dev/null || die "rsync is not installed"
started=''
if [[ -z ${BSYNC_TEST_SSH:-} ]]; then
    if [[ ! -x /usr/sbin/sshd ]]; then
        say "ssh.sh: skipped: no sshd (apt-get install openssh-server)"
        exit 0
    fi
    env_lines=$(tests/sshd.sh start)
    eval "$env_lines"
    started=1
fi
[[ -s $orig ]] || benches/mkimage.sh 1G "$orig"
[[ -s $changed ]] || benches/mkimage.sh --modify "$orig" "$changed" 5
dst=$dir/ssh-dst.img
on_exit() {
    rm -f "$dst"
    [[ -z $started ]] || tests/sshd.sh stop
}

remote=$BSYNC_TEST_SSH
port=${remote##*:}
login=${remote%:*}
dst=$(cd "$(dirname "$dst")" && pwd)/$(basename "$dst")
# shellcheck disable=SC2206 # options split on whitespace, as bsync does
opts=(${SSH_OPTS:-})
export BSYNC_SSH="ssh ${SSH_OPTS:-}"

fresh() { cp --sparse=always "$orig" "$dst"; }

bsync_cmd=(./bsync -q -f "$changed" -t "$remote:$dst")
rsync_cmd=(rsync -I --inplace --no-whole-file -e "ssh ${opts[*]} -p $port" "$changed" "$login:$dst")
say "== bsync -t vs rsync -e ssh: 1 GiB ext4 image, ~5 % of 4 KiB blocks changed"
say "   sshd on $remote; ssh options: ${SSH_OPTS:-none}"
say "   ${bsync_cmd[*]}"
say "   ${rsync_cmd[*]}"

# timed NAME CMD...: update a fresh, hot copy of the old image with CMD,
# check it, and set $took.
timed() {
    local name=$1 t0 t1
    shift
    fresh
    warm "$changed" "$dst"
    t0=$(now)
    "$@" 2>"$tmp/$name.err" || { cat "$tmp/$name.err" >&2; die "$name failed"; }
    t1=$(now)
    cmp "$changed" "$dst" || die "$name: destination differs"
    took=$(elapsed "$t0" "$t1")
}

# The cache entry of this build on the remote (the sshd is this machine).
sha=$(sha256sum <./bsync | cut -d' ' -f1)
cache_entry=$(ssh "${opts[@]}" -p "$port" "$login" \
    'c=${XDG_CACHE_HOME:-}; case $c in /*) ;; *) c=$HOME/.cache;; esac; echo "$c/bsync"')/$sha
[[ $cache_entry == /*/bsync/$sha ]] || die "cannot find the remote's cache"

small=$tmp/small.img
small_old=$tmp/small-old.img
head -c 64M /dev/urandom >"$small"
cp "$small" "$small_old"
dd if=/dev/urandom of="$small" bs=1M seek=20 count=1 conv=notrunc status=none
small_dst=$(cd "$tmp" && pwd)/small-dst.img
small_t=(./bsync -q -f "$small" -t "$remote:$small_dst")
# One untimed run puts this build into the remote's cache.
"${small_t[@]}" 2>"$tmp/small.err" || { cat "$tmp/small.err" >&2; die "bsync -t failed"; }

declare -a tb tr tdirect
for ((i = 0; i < runs; i++)); do
    timed bsync "${bsync_cmd[@]}"
    tb+=("$took")
    fresh
    warm "$changed" "$dst"
    bsync_run up "$dst" "$changed" ""
    cmp "$changed" "$dst" || die "bsync -r: destination differs"
    tdirect+=("$took")
    timed rsync "${rsync_cmd[@]}"
    tr+=("$took")
    say "   run $((i + 1)): bsync -t ${tb[$i]} s, rsync ${tr[$i]} s, bsync -r ${tdirect[$i]} s"
done
b=$(min "${tb[@]}")
r=$(min "${tr[@]}")
d=$(min "${tdirect[@]}")
ratio=$(calc 'sprintf("%.2f", b / r)' "b=$b" "r=$r")
say "   best of $runs: bsync $b s, rsync $r s: bsync/rsync = $ratio (target <= $target_ratio: $(verdict "$ratio" "$target_ratio"))"
say "   same update with -r to a running server: $d s; -t costs $(calc 'sprintf("%.2f", b - d)' "b=$b" "d=$d") s more"

say "== -t against -r on a small update: 64 MiB random file, 1 MiB changed"
declare -a ts tsr tl
for ((i = 0; i < runs; i++)); do
    t0=$(now)
    ssh "${opts[@]}" -p "$port" "$login" true </dev/null || die "ssh $login true failed"
    t1=$(now)
    tl+=("$(elapsed "$t0" "$t1")")
    cp "$small_old" "$small_dst"
    warm "$small" "$small_dst"
    t0=$(now)
    "${small_t[@]}" 2>"$tmp/small.err" || { cat "$tmp/small.err" >&2; die "bsync -t failed"; }
    t1=$(now)
    cmp "$small" "$small_dst" || die "bsync -t: small destination differs"
    ts+=("$(elapsed "$t0" "$t1")")
    cp "$small_old" "$small_dst"
    warm "$small" "$small_dst"
    bsync_run up "$small_dst" "$small" ""
    cmp "$small" "$small_dst" || die "bsync -r: small destination differs"
    tsr+=("$took")
    say "   run $((i + 1)): -t ${ts[$i]} s, -r ${tsr[$i]} s, ssh true ${tl[$i]} s"
done
rm -rf "$cache_entry"
cp "$small_old" "$small_dst"
t0=$(now)
"${small_t[@]}" 2>"$tmp/small.err" || { cat "$tmp/small.err" >&2; die "bsync -t failed"; }
t1=$(now)
cmp "$small" "$small_dst" || die "bsync -t: small destination differs"
cold=$(elapsed "$t0" "$t1")
s_t=$(min "${ts[@]}")
s_r=$(min "${tsr[@]}")
extra=$(calc 'sprintf("%.2f", t - r)' "t=$s_t" "r=$s_r")
login=$(min "${tl[@]}")
say "   best of $runs: -t $s_t s (bsync cached on the remote), -r $s_r s: -t costs $extra s more (target <= 0.35: $(verdict "$extra" 0.35)); one ssh login (ssh true) costs $login s"
say "   first run, bsync sent to the remote: -t $cold s ($(calc 'sprintf("%.2f", t - r)' "t=$cold" "r=$s_r") s more than -r)"
