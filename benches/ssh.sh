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

declare -a tb tr
for ((i = 0; i < runs; i++)); do
    timed bsync "${bsync_cmd[@]}"
    tb+=("$took")
    timed rsync "${rsync_cmd[@]}"
    tr+=("$took")
    say "   run $((i + 1)): bsync ${tb[$i]} s, rsync ${tr[$i]} s"
done
b=$(min "${tb[@]}")
r=$(min "${tr[@]}")
ratio=$(calc 'sprintf("%.2f", b / r)' "b=$b" "r=$r")
say "   best of $runs: bsync $b s, rsync $r s: bsync/rsync = $ratio (target <= $target_ratio: $(verdict "$ratio" "$target_ratio"))"
