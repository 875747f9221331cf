#!/usr/bin/env bash
# Real-looking disk images for the demo and the benchmarks.
#
#   benches/mkimage.sh SIZE OUT
#       An ext4 filesystem of SIZE (64M, 1G, ...) filled to about 70 % with
#       real files from /usr/share, /usr/lib and /usr/bin, written to OUT.
#       Real files give realistic compression ratios, and the unused rest of
#       the filesystem gives realistic zero runs. The image is cached as
#       target/bench/ext4-SIZE.img, so a second call only copies it.
#
#   benches/mkimage.sh --modify IN OUT [PERCENT]
#       Copy IN to OUT with PERCENT % (default 5) of its 4 KiB blocks
#       overwritten by random data at random block offsets. The offsets come
#       from a fixed seed, so every run changes the same blocks.
#
#   benches/mkimage.sh --realistic IN OUT
#       Copy IN to OUT and change the copy the way a day of use changes a
#       disk: through a loop mount, some files are deleted, some rewritten
#       in place, some appended to, and new ones added, with a fixed seed.
#       The changes cluster as on a real file system (whole files, their
#       metadata and journal), unlike --modify's uniform scatter. Needs root
#       and loop devices; says so and fails where there are none.
#
# Without --realistic it needs no root: mkfs.ext4 -d builds the filesystem
# from a directory.
set -euo pipefail

cd "$(dirname "$0")/.."
target_dir=${CARGO_TARGET_DIR:-target}
cache_dir=$target_dir/bench
fill_percent=70

say() { printf 'mkimage: %s\n' "$*" >&2; }
die() { printf 'mkimage: error: %s\n' "$*" >&2; exit 1; }

# Copy without writing zeros where the input has holes or zero runs, and
# share extents where the filesystem can.
copy() { cp --reflink=auto --sparse=always "$1" "$2"; }

# Stage about BUDGET bytes of real files under DIR, cycling through the
# source trees (into fresh subdirectories) when one pass is not enough.
stage_files() {
    local dir=$1 budget=$2 used=0 pass=0 size path listed
    local -a sources=(/usr/share /usr/lib /usr/bin)
    # Stop within 64 KiB of the budget: the last few KiB may fit no file.
    while ((used + 65536 < budget)); do
        pass=$((pass + 1))
        listed=0
        mkdir -p "$dir/copy$pass"
        # Sizes are rounded up to whole 4 KiB blocks: that is what they cost
        # in the filesystem.
        while IFS= read -r -d '' size && IFS= read -r -d '' path; do
            size=$(((size + 4095) / 4096 * 4096))
            ((used + size > budget)) && continue
            used=$((used + size))
            listed=$((listed + 1))
            printf '%s\0' "${path#/}"
            ((budget - used < 4096)) && break
        done < <(find "${sources[@]}" -xdev -type f -readable \
            -printf '%s\0%p\0' 2>/dev/null) |
            { tar -C / --null --files-from=- --ignore-failed-read \
                -cf - 2>/dev/null || (($? == 1)); } |
            tar -C "$dir/copy$pass" -xf -
        # The loop above ran in a subshell: measure what actually arrived.
        used=$(du -s -B1 "$dir" | cut -f1)
        listed=$(find "$dir/copy$pass" -type f | wc -l)
        if ((listed == 0)); then
            ((pass > 1)) || die "found no readable files under ${sources[*]}"
            break
        fi
        say "staged pass $pass: $((used >> 20)) MiB so far"
        ((pass < 64)) || break
    done
}

make_image() {
    local size=$1 out=$2 bytes budget stage img inodes
    bytes=$(numfmt --from=iec "$size") || die "bad size: $size"
    ((bytes >= 8 << 20)) || die "size too small for ext4 with data: $size"
    mkdir -p "$cache_dir"
    img=$cache_dir/ext4-$size.img
    if [[ ! -s $img ]]; then
        command -v mkfs.ext4 >/dev/null ||
            die "mkfs.ext4 not found (Debian: apt-get install e2fsprogs)"
        budget=$((bytes * fill_percent / 100))
        stage=$cache_dir/stage-$size
        rm -rf "$stage"
        mkdir -p "$stage"
        say "copying ~$((budget >> 20)) MiB of real files from /usr into $stage"
        stage_files "$stage" "$budget"
        # The default inode ratio is too low for a tree of small files in a
        # small filesystem: size the inode table to what was staged.
        inodes=$(find "$stage" | wc -l)
        inodes=$((inodes + inodes / 4 + 1024))
        say "mkfs.ext4 -q -F -N $inodes -d $stage $img $size"
        rm -f "$img.tmp"
        mkfs.ext4 -q -F -N "$inodes" -d "$stage" "$img.tmp" "$size" >/dev/null
        mv "$img.tmp" "$img"
        rm -rf "$stage"
    else
        say "using cached $img"
    fi
    if [[ $out != "$img" ]]; then
        copy "$img" "$out"
    fi
    say "$out: $size ext4 image, $(du -B1M "$out" | cut -f1) MiB allocated"
}

# One process for all the writes: thousands of dd calls would take longer
# than the benchmark. perl is part of every Debian base system.
modify_image() {
    local in=$1 out=$2 percent=${3:-5}
    [[ -f $in ]] || die "no such image: $in"
    copy "$in" "$out"
    perl -e '
        use strict;
        my ($path, $percent) = @ARGV;
        my $blocks = int((-s $path) / 4096);
        my $n = int($blocks * $percent / 100);
        srand(42);
        my %picked;
        $picked{int(rand($blocks))} = 1 while keys %picked < $n;
        open(my $rnd, "<:raw", "/dev/urandom") or die "/dev/urandom: $!";
        open(my $img, "+<:raw", $path) or die "$path: $!";
        for my $b (sort { $a <=> $b } keys %picked) {
            sysread($rnd, my $buf, 4096) == 4096 or die "/dev/urandom: $!";
            sysseek($img, $b * 4096, 0) or die "$path: seek: $!";
            syswrite($img, $buf) == 4096 or die "$path: write: $!";
        }
        close($img) or die "$path: $!";
        printf STDERR "mkimage: %s: %d of %d 4 KiB blocks overwritten (%s %%)\n",
            $path, $n, $blocks, $percent;
    ' "$out" "$percent"
}

# Change a copy of an image through a loop mount (see --realistic).
realistic_image() {
    local in=$1 out=$2 mnt
    [[ -f $in ]] || die "no such image: $in"
    (($(id -u) == 0)) || die "--realistic mounts the image: run as root"
    command -v losetup >/dev/null || die "losetup not found (util-linux)"
    copy "$in" "$out"
    mnt=$(mktemp -d)
    mount -o loop "$out" "$mnt" || { rmdir "$mnt"; die "cannot loop-mount $out"; }
    # One perl for every change, seeded: the same files change every run.
    perl -e '
        use strict;
        use File::Find;
        my ($root) = @ARGV;
        srand(7);
        my @files;
        find({ no_chdir => 1, wanted => sub { push @files, $_ if -f $_ } }, $root);
        @files = sort @files;
        open(my $rnd, "<:raw", "/dev/urandom") or die "/dev/urandom: $!";
        my ($deleted, $rewritten, $appended, $added, $bytes) = (0, 0, 0, 0, 0);
        for my $f (@files) {
            my $r = rand();
            if ($r < 0.03) {
                unlink($f) or die "$f: $!";
                $deleted++;
            } elsif ($r < 0.06) {
                # Rewrite a run of the file in place, as an editor or a
                # database page update does.
                my $size = -s $f or next;
                my $len = int(rand($size < 65536 ? $size : 65536)) + 1;
                my $at = int(rand($size - $len + 1));
                sysread($rnd, my $buf, $len) == $len or die "urandom: $!";
                open(my $h, "+<:raw", $f) or die "$f: $!";
                sysseek($h, $at, 0) or die "$f: seek: $!";
                syswrite($h, $buf) == $len or die "$f: write: $!";
                close($h) or die "$f: $!";
                $rewritten++;
                $bytes += $len;
            } elsif ($r < 0.08) {
                my $len = int(rand(32768)) + 1;
                sysread($rnd, my $buf, $len) == $len or die "urandom: $!";
                open(my $h, ">>:raw", $f) or die "$f: $!";
                print $h $buf or die "$f: $!";
                close($h) or die "$f: $!";
                $appended++;
                $bytes += $len;
            }
        }
        # New files: copies of existing ones with a changed head, so they
        # compress like real data.
        my @kept = grep { -f $_ } @files;
        mkdir("$root/new") or die "$root/new: $!";
        for my $i (1 .. int(@kept * 0.02)) {
            my $from = $kept[int(rand(@kept))];
            open(my $in, "<:raw", $from) or die "$from: $!";
            local $/;
            my $data = <$in> // "";
            close($in);
            substr($data, 0, 16) = sprintf("%016d", $i) if length($data) >= 16;
            open(my $o, ">:raw", "$root/new/f$i") or die "new/f$i: $!";
            print $o $data;
            close($o) or die "new/f$i: $!";
            $added++;
            $bytes += length($data);
        }
        printf STDERR "mkimage: %d files: %d deleted, %d rewritten in place, %d appended to, %d added (%d MiB written)\n",
            scalar(@files), $deleted, $rewritten, $appended, $added, $bytes >> 20;
    ' "$mnt" || { umount "$mnt"; rmdir "$mnt"; die "changing $out failed"; }
    umount "$mnt"
    rmdir "$mnt"
}

case ${1:-} in
--realistic)
    (($# == 3)) || die "usage: $0 --realistic IN OUT"
    realistic_image "$2" "$3"
    ;;
--modify)
    (($# == 3 || $# == 4)) || die "usage: $0 --modify IN OUT [PERCENT]"
    modify_image "$2" "$3" "${4:-5}"
    ;;
-h | --help | "")
    sed -n '2,27s/^# \{0,1\}//p' "$0"
    ;;
*)
    (($# == 2)) || die "usage: $0 SIZE OUT"
    make_image "$1" "$2"
    ;;
esac
