#!/usr/bin/env bash
# `make bench`: patch files, bsync's (bdsync's workflow) against rsync's
# batch files, and what carrying -t inside ssh costs.
#
# The files are the ones the other benches use (cached under target/bench/):
# a 1 GiB ext4 image of real files as the old destination, and as the new
# source the realistic copy (changed through a loop mount; made here if
# missing and root) and the copy with ~5 % of its 4 KiB blocks overwritten. Each tool makes a
# patch that turns a fresh, hot copy of the old image into the new one, then
# applies it; the result is compared with cmp. Wall time, make + apply:
#
#   ./bsync "./bsync --server" NEW DST > P; ./bsync --patch < P
#         (bdsync's client form: the "remote shell" is sh -c on this machine)
#   rsync --inplace --no-whole-file --only-write-batch=B NEW DST
#   rsync --inplace --no-whole-file --read-batch=B DST
#
# bsync's apply checks every range before writing, writes, fdatasyncs and
# reads the whole result back to check its digest; rsync's --read-batch does
# none of those three. The flush is also timed after rsync, apart, as
# `sync --data DST`, and a second ratio given against it.
#
# Then, with an sshd (BSYNC_TEST_SSH as tests/sshd.sh exports it, else one
# started here): bsync -t over TCP against -t -over-ssh (the session inside
# ssh), same pair.
#
#   benches/patch.sh [RUNS]      best of RUNS for each; default 3
set -euo pipefail

cd "$(dirname "$0")/.."
runs=${1:-3}
dir=${CARGO_TARGET_DIR:-target}/bench
orig=$dir/ext4-1G.img
changed=$dir/ext4-1G-changed5.img
realistic=$dir/ext4-1G-realistic.img
target_size=1.0
target_time=0.5

bench=patch.sh
# shellcheck source=benches/lib.sh
. benches/lib.sh
command -v rsync >/dev/null || die "rsync is not installed"

[[ -s $orig ]] || benches/mkimage.sh 1G "$orig"
[[ -s $changed ]] || benches/mkimage.sh --modify "$orig" "$changed" 5
if [[ ! -s $realistic ]] && ((EUID == 0)); then
    benches/mkimage.sh --realistic "$orig" "$realistic" || true
fi
dst=$dir/patch-dst.img
patch=$dir/patch.bsync
batch=$dir/patch.rsync-batch
on_exit() { rm -f "$dst" "$patch" "$batch" "$batch.sh"; }
fresh() { cp --sparse=always "$orig" "$dst"; sync; warm "$new" "$dst"; }

say "   machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at start"
say "   bsync: ./bsync \"./bsync --server\" NEW $dst > $patch; ./bsync --patch < $patch"
say "   rsync: rsync --inplace --no-whole-file --only-write-batch=$batch NEW $dst; rsync --inplace --no-whole-file --read-batch=$batch $dst"
say "          (then, timed apart: sync --data $dst, the flush bsync's apply includes)"

# case_pair NAME NEW: make and apply both tools' patches from $orig to NEW.
case_pair() {
    local name=$1 i t0 t1 t2 t3 psize bsize
    new=$2
    local -a bm ba rmk rap rfl
    say ""
    say "== patch files: $name, 1 GiB ext4 image (best of $runs)"
    for ((i = 0; i < runs; i++)); do
        fresh
        t0=$(now)
        ./bsync "./bsync --server" "$new" "$dst" >"$patch"
        t1=$(now)
        ./bsync --patch <"$patch"
        t2=$(now)
        check_same "$new" "$dst" "bsync patch"
        bm+=("$(elapsed "$t0" "$t1")")
        ba+=("$(elapsed "$t1" "$t2")")
        psize=$(stat -c %s "$patch")

        fresh
        t0=$(now)
        rsync --inplace --no-whole-file --only-write-batch="$batch" "$new" "$dst"
        t1=$(now)
        rsync --inplace --no-whole-file --read-batch="$batch" "$dst"
        t2=$(now)
        sync --data "$dst"
        t3=$(now)
        check_same "$new" "$dst" "rsync batch"
        rmk+=("$(elapsed "$t0" "$t1")")
        rap+=("$(elapsed "$t1" "$t2")")
        rfl+=("$(elapsed "$t2" "$t3")")
        bsize=$(stat -c %s "$batch")
        say "   run $((i + 1)): bsync make ${bm[$i]} s + apply ${ba[$i]} s ($psize bytes); rsync make ${rmk[$i]} s + apply ${rap[$i]} s (+ flush ${rfl[$i]} s) ($bsize bytes)"
    done
    local sb=() sr=() sf=() k
    for k in "${!bm[@]}"; do
        sb+=("$(calc 'x + y' "x=${bm[$k]}" "y=${ba[$k]}")")
        sr+=("$(calc 'x + y' "x=${rmk[$k]}" "y=${rap[$k]}")")
        sf+=("$(calc 'x + y + z' "x=${rmk[$k]}" "y=${rap[$k]}" "z=${rfl[$k]}")")
    done
    local b r f sratio tratio fratio
    b=$(min "${sb[@]}")
    r=$(min "${sr[@]}")
    f=$(min "${sf[@]}")
    sratio=$(calc 'sprintf("%.2f", p / q)' "p=$psize" "q=$bsize")
    tratio=$(calc 'sprintf("%.2f", b / r)' "b=$b" "r=$r")
    fratio=$(calc 'sprintf("%.2f", b / f)' "b=$b" "f=$f")
    say "   patch size: bsync $psize bytes, rsync batch $bsize bytes: $sratio (target <= $target_size: $(verdict "$sratio" "$target_size"))"
    say "   make + apply: bsync $b s, rsync $r s: bsync/rsync = $tratio (target <= $target_time: $(verdict "$tratio" "$target_time")); against rsync + flush ($f s): $fratio"
}

if [[ -s $realistic ]]; then
    case_pair "realistic pair (changed through a loop mount)" "$realistic"
else
    say "   realistic pair: skipped (making it needs root for a loop mount)"
fi
case_pair "~5 % of 4 KiB blocks changed at random" "$changed"

# ---------------------------------------------------- -t inside ssh
started=''
if [[ -z ${BSYNC_TEST_SSH:-} ]]; then
    if [[ ! -x /usr/sbin/sshd ]]; then
        say "   -over-ssh: skipped: no sshd (apt-get install openssh-server)"
        exit 0
    fi
    eval "$(tests/sshd.sh start)"
    started=1
fi
stop_sshd() { [[ -z $started ]] || tests/sshd.sh stop; }
trap 'stop_sshd; cleanup' EXIT
export BSYNC_SSH="ssh ${SSH_OPTS:-}"
adst=$(cd "$dir" && pwd)/$(basename "$dst")
say ""
say "== -t over TCP against -t -over-ssh (inside ssh: ssh's cipher, one stream), same pair (best of $runs)"
new=$changed
say "   ./bsync -q -f $changed -t $BSYNC_TEST_SSH:$adst [-over-ssh]"
declare -a tt to
for ((i = 0; i < runs; i++)); do
    fresh
    t0=$(now)
    ./bsync -q -f "$changed" -t "$BSYNC_TEST_SSH:$adst"
    t1=$(now)
    check_same "$changed" "$dst" "bsync -t"
    tt+=("$(elapsed "$t0" "$t1")")
    fresh
    t0=$(now)
    ./bsync -q -f "$changed" -t "$BSYNC_TEST_SSH:$adst" -over-ssh 2>/dev/null
    t1=$(now)
    check_same "$changed" "$dst" "bsync -t -over-ssh"
    to+=("$(elapsed "$t0" "$t1")")
    say "   run $((i + 1)): TCP ${tt[$i]} s, inside ssh ${to[$i]} s"
done
a=$(min "${tt[@]}")
o=$(min "${to[@]}")
say "   best: TCP $a s, inside ssh $o s: $(calc 'sprintf("%.2f", o / a)' "o=$o" "a=$a")x"
