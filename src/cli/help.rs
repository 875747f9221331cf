//! The text of `-h` and `--version`.
//!
//! Kept apart from the parser so the help reads as one page; a test in
//! `cli` checks that it names every flag the parser knows.

use crate::proto::PROTOCOL_VERSION;

/// The `--version` text.
pub fn version_text() -> String {
    format!(
        "bsync {} (protocol {PROTOCOL_VERSION})\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// The `-h` text, grouped by task.
pub const HELP: &str = "\
bsync - keep a block device or disk image identical to another, block by block

Only blocks that differ are written; zero blocks become holes or cleared
ranges. Every flag works with one dash or two, and as -flag=value.

COPY ON THIS MACHINE
  bsync -f SRC -t DST              make DST (file or device) identical to SRC
  bsync -f DST -t SRC -d           the same, reading from the -t path

OVER THE NETWORK (two machines)
  bsync -f DST [-p PORT] [-i ADDR]  run a server; in upload mode it writes DST
  bsync -f SRC -r HOST:PORT        connect and upload SRC
  bsync -f SRC -p PORT -d          run a server that is the source (download)
  bsync -f DST -r HOST:PORT -d     connect and download into DST
  bsync -f SRC -t user@host:/dev/vda   start the remote end over SSH

WHAT AND HOW
  -f PATH       file or device to read (source) or write (destination) [/dev/zero]
  -t TARGET     /path, user@host:/path or user@host:port:/path (IPv6: user@[::1]:/path)
  -r HOST:PORT  connect to a bsync server (IPv6: [::1]:8080)
  -d            download: the server (or -t path) is the source
  -b N          block size in bytes, or with K/M/G (binary) [10M]; at most 1G
  -s N          skip the first N blocks (resume; they are neither read nor checked) [0]

SERVER
  -p PORT       port to listen on; 0 picks a free one and prints it [8080]
  -i ADDR       address to listen on [0.0.0.0]
  -P            print no progress on the server (-t sets it)

SPEED
  -w N          workers: parallel connections and CPU threads [1] (HDD: 1, SSD: 4-8)
  -prefetch N   blocks read ahead; 0 means workers x 4 [0]
  -n            no compression
  -L LEVEL      zstd level: fast, default, better, best [default]
  -auto         measure round trip, throughput and zstd speed (a few hundred
                ms), then pick -b, -w, -prefetch and -L and say why in one
                line (client -r upload only)

SECURITY
  -e            encrypt with ChaCha20-Poly1305; with -t a fresh key is made and
                handed over SSH, in direct mode it needs -K
  -K HEX        shared 32-byte key as 64 hex digits (same on both ends); -K -
                reads it from stdin, off the command line where ps shows it
  -token-file FILE  without encryption, accept only clients that know the
                64-hex-digit token in FILE (- for stdin); give it to both ends
  -ssh CMD      remote shell for -t, e.g. \"ssh -i key -J jump\" [$BSYNC_SSH or ssh]

OUTPUT
  -q            quiet: errors only
  -v            verbose: say which kernel I/O hints were applied or skipped, and
                why (read-ahead, fadvise, mlock, huge pages, how zeros were
                cleared); BSYNC_VERBOSE=1 does the same
  -l PREFIX     put PREFIX in front of every log and progress line
  -a            list block devices
  -h, --help    this text
  --version     version and protocol version

EXIT STATUS
  0 success, 1 transfer or I/O failure, 2 usage error (nothing was opened)

EXAMPLES
  bsync -f /dev/vda -t root@newhost:/dev/vda       migrate a disk over SSH
  bsync -e -L fast -w 4 -f /dev/sda -t backup@nas:/srv/sda.img
  bsync -f disk.img -t /mnt/backup/disk.img        local, only changes written
";
