//! The run plan: what the command line and the environment ask for, said in
//! the roles' terms.
//!
//! `cli` turns flags into a [`Config`]; everything below it reads this and
//! never the flags. Where the command line says "`-f` plus a direction",
//! the plan says which path is the source and which the destination, and
//! which end serves: that is worked out once, in `cli`, and never again.
//! The environment variables bsync honours are read once too, into [`Env`]
//! and [`LogOptions`], when the plan is made.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::Secret;
use crate::compress::Level;
pub use crate::patch::format::DiffSize;

/// Which end of a transfer this process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Reads the data and sends what differs.
    Source,
    /// Writes the data: the disk that is made identical.
    Destination,
}

/// `[user@]host[:port]:/path` of `-t`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteTarget {
    /// Login name; `None` leaves it to the ssh configuration.
    pub user: Option<String>,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// SSH port; `None` leaves it to the ssh configuration.
    pub port: Option<u16>,
    /// Path on the remote machine.
    pub path: String,
}

/// What this run does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `-a`: list block devices from the sysfs tree at `sysfs`.
    ListDrives {
        /// `/sys`, or `BSYNC_SYSFS` for a fake tree.
        sysfs: PathBuf,
    },
    /// Both ends on this machine.
    Local {
        /// The path read.
        source: PathBuf,
        /// The path made identical to it.
        destination: PathBuf,
        /// `--compare` or `--write-patch`: nothing is written to it.
        dry: Option<DryRun>,
    },
    /// Serve one session (no `-r`/`-t`).
    Serve(Serve),
    /// Connect to a running server (`-r`).
    Connect(Connect),
    /// `--server`: one session on stdin/stdout, for a remote shell command.
    Stdio(Stdio),
    /// `bsync REMSHCMD LOCDEV REMDEV` (bdsync's client): compare through a
    /// remote shell command and write a patch to stdout.
    RemoteShell(RemoteShell),
    /// `--patch[=DST]`: apply a patch read from stdin.
    Apply(Apply),
    /// Start the other end over SSH, then connect to it.
    Ssh(Ssh),
}

impl Mode {
    /// The dry run asked for (`--compare`, `--write-patch`), in the modes
    /// that take one.
    pub fn dry(&self) -> Option<&DryRun> {
        match self {
            Mode::Local { dry, .. }
            | Mode::Connect(Connect { dry, .. })
            | Mode::Ssh(Ssh { dry, .. }) => dry.as_ref(),
            _ => None,
        }
    }
}

/// `-t user@host:/path`: start the other end over SSH, then connect to it
/// as `role`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ssh {
    /// Where the other end runs.
    pub target: RemoteTarget,
    /// What this end is.
    pub role: Role,
    /// This end's file or device.
    pub path: PathBuf,
    /// The remote shell command (`-ssh`, else `BSYNC_SSH`, else `ssh`).
    pub shell: String,
    /// Seal every frame with a fresh key (`-e`), not only authenticate.
    pub encrypt: bool,
    /// `-over-ssh`: carry the session inside the ssh session even when the
    /// remote's port could be reached.
    pub over_ssh: bool,
    /// `--compare` or `--write-patch`: nothing is written to the remote
    /// destination.
    pub dry: Option<DryRun>,
}

/// A server: where it listens and what it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Serve {
    /// `-i`.
    pub bind: IpAddr,
    /// `-p`; 0 picks a free port and prints it on stdout.
    pub port: u16,
    /// What this end is.
    pub role: Role,
    /// This end's file or device.
    pub path: PathBuf,
    /// The key or token every client must prove it holds.
    pub secret: Option<Secret>,
}

/// `--server`: a session on stdin and stdout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stdio {
    /// What this end is (`-d`: the source).
    pub role: Role,
    /// `-f`; `None`: the client names it (bdsync's `--server`).
    pub path: Option<PathBuf>,
    /// The key or token the client must prove it holds.
    pub secret: Option<Secret>,
}

/// bdsync's client form: `REMSHCMD LOCDEV REMDEV`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteShell {
    /// Run with `sh -c`; its stdin and stdout reach `bsync --server`.
    pub command: String,
    /// This machine's device: what the patch makes the remote one into.
    pub local: PathBuf,
    /// The remote device, as the remote end opens it.
    pub remote: String,
    /// `--remdata`: an undo patch (the remote's data) instead.
    pub undo: bool,
    /// `--diffsize`: which size differences the patch may carry.
    pub diffsize: DiffSize,
}

/// `--patch[=DST]`: what to apply, to what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Apply {
    /// The patch; `None` reads stdin.
    pub patch: Option<PathBuf>,
    /// The target; `None` takes the name stored in the patch.
    pub target: Option<PathBuf>,
    /// `--diffsize`; `None` takes the mode stored in the patch.
    pub diffsize: Option<DiffSize>,
    /// `--remdata=FILE`: before each range is written, its current data
    /// goes into an undo patch here.
    pub undo: Option<PathBuf>,
}

/// A run that reads both sides and writes nothing to the destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DryRun {
    /// `--compare`: say what would be sent; exit 3 when they differ.
    Compare,
    /// `--write-patch FILE`: leave a patch behind; `None` is stdout (`-`).
    Patch(Option<PathBuf>),
}

/// A client: where it connects and what it brings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Server port.
    pub port: u16,
    /// What this end is.
    pub role: Role,
    /// This end's file or device.
    pub path: PathBuf,
    /// The key or token to prove, and to seal frames with if a key.
    pub secret: Option<Secret>,
    /// `-auto`: measure the link and the source first, then choose the
    /// block size, workers, prefetch and level (an upload only).
    pub auto: bool,
    /// `--rescue MAPFILE` of an uploading client (see [`Config::rescue`]).
    pub rescue: Option<PathBuf>,
    /// `--compare` or `--write-patch`: nothing is written to the server's
    /// destination.
    pub dry: Option<DryRun>,
}

/// How the transfer moves data; the same on every mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// `-b`, in bytes, at least 1 (the source's wins in a download).
    pub block_size: usize,
    /// `-s`: blocks to skip.
    pub skip: u64,
    /// `None` with `-n`.
    pub compression: Option<Level>,
    /// `-w`, at least 1.
    pub workers: usize,
    /// Prefetch queue depth, resolved (never 0).
    pub prefetch: usize,
    /// `--bwlimit`: the most block data the sending end puts on the wire,
    /// in bytes per second.
    pub bwlimit: Option<u64>,
}

/// Where log and progress lines go and how they look.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// `-l`: put in front of every line.
    pub prefix: String,
    /// `-q`: errors only.
    pub quiet: bool,
    /// `-v` or [`VERBOSE_ENV`]: also say which kernel hints were applied or
    /// skipped, and why.
    pub verbose: bool,
    /// `-P`: no progress on a server.
    pub no_server_progress: bool,
    /// `--json`: a machine-readable closing summary on stdout.
    pub json: bool,
}

/// Environment variable that turns on `-v` (any value but empty or `0`).
pub const VERBOSE_ENV: &str = "BSYNC_VERBOSE";
/// Environment variable that turns the kernel I/O hints off (any value but
/// empty or `0`): no fadvise, read-ahead, mlock, huge pages or
/// `sync_file_range`. For comparing against plain I/O.
pub const NO_HINTS_ENV: &str = "BSYNC_NO_HINTS";
/// Environment variable that lets bsync write to a mounted or busy device
/// (any value but empty or `0`). For the rare expert case (a file system
/// mounted read-only that is about to be thrown away); never the default.
pub const ALLOW_MOUNTED_ENV: &str = "BSYNC_ALLOW_MOUNTED";
/// Environment variable, in whole seconds, that shortens the network
/// deadline (hidden: for tests).
pub const IO_TIMEOUT_ENV: &str = "BSYNC_IO_TIMEOUT";
/// Environment variable naming the remote shell of `-t` when `-ssh` is not
/// given.
pub const SSH_ENV: &str = "BSYNC_SSH";
/// Environment variable naming another sysfs tree for `-a` (tests).
pub const SYSFS_ENV: &str = "BSYNC_SYSFS";

/// The deadline of every blocking network operation, unless shortened.
pub const IO_TIMEOUT: Duration = Duration::from_secs(300);

/// What the environment says about I/O, read once when the plan is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Env {
    /// The deadline of every blocking network operation.
    pub io_timeout: Duration,
    /// Kernel I/O hints are on (see [`NO_HINTS_ENV`]).
    pub hints: bool,
    /// Mounted or busy destination devices are written anyway (see
    /// [`ALLOW_MOUNTED_ENV`]).
    pub allow_mounted: bool,
}

impl Default for Env {
    fn default() -> Env {
        Env {
            io_timeout: IO_TIMEOUT,
            hints: true,
            allow_mounted: false,
        }
    }
}

impl Env {
    /// Read the variables of this process.
    pub fn from_process() -> Env {
        let io_timeout = std::env::var(IO_TIMEOUT_ENV)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|&s| s > 0)
            .map_or(IO_TIMEOUT, Duration::from_secs);
        Env {
            io_timeout,
            hints: !env_flag(NO_HINTS_ENV),
            allow_mounted: env_flag(ALLOW_MOUNTED_ENV),
        }
    }
}

/// The sysfs root: `$BSYNC_SYSFS` if set and non-empty, else `/sys`.
pub fn sysfs_root() -> PathBuf {
    match std::env::var_os(SYSFS_ENV) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from("/sys"),
    }
}

/// Whether a boolean environment variable is set (anything but empty or `0`).
pub fn env_flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0")
}

/// What local mode reads at a time: a block goes through its pipeline in
/// pieces of this size (or whole, if smaller), so that what was read is
/// compared while it is still in the CPU's cache and the buffers are few
/// pages, not blocks of `-b`. A block stays the unit of progress, resume
/// and a rescue's map. 512 KiB ran the least CPU of 128 KiB to 1 MiB
/// (benches/BENCHMARKS.md).
pub const LOCAL_PIECE: usize = 512 << 10;

/// What a network destination reads at a time: it keeps only page
/// digests, so a block is read and digested in pieces of this size (or
/// whole, if smaller), and its read buffers are a few of these, not
/// blocks of `-b`. Larger than [`LOCAL_PIECE`]: the digest is slower
/// than a comparison, and each piece costs a hand-over between the reader
/// and a worker; 2 MiB ran less CPU than 512 KiB or whole 10 MiB blocks
/// (benches/BENCHMARKS.md).
pub const DIGEST_PIECE: usize = 2 << 20;

/// Block buffers one end holds at most, the bound the pools set: on the
/// network `2 × workers + 1` (the source's read pool, one block per
/// worker and one being read, and a frame of up to a block per worker or
/// lane; the destination reads in pieces of [`DIGEST_PIECE`]), and locally both
/// sides at once, `2 × prefetch + 3 × workers + 3` pieces of [`LOCAL_PIECE`].
/// On the network a read is fast next to a round trip, and the
/// destination's digests wait in its window, so more read-ahead would
/// only hold buffers.
pub fn buffers_needed(workers: usize, prefetch: usize, local: bool) -> usize {
    if local {
        2 * prefetch + 3 * workers + 3
    } else {
        2 * workers + 1
    }
}

/// The page digests a network destination keeps for the blocks between
/// its read and its write: the window measured in bytes (see
/// `session::destination`), 4 MiB, at most [`MAX_WINDOW`] blocks ahead.
pub const DIGEST_WINDOW: u64 = 4 << 20;

/// The most blocks in a destination's window, whatever their size: each
/// costs a digest list on both ends, allocated once and reused, so the
/// steady state allocates nothing per block (tests/alloc.rs, whose short
/// run has as many blocks). A permit comes back only once its block is
/// written: for a changed block two round trips after its digests left
/// (digests, `Refine`, `Pages`, `Block`), and more where the source
/// queues. 64 blocks of the default 10 MiB keep 640 MiB ahead: a 100 ms
/// round trip at 1.6 GB/s with the queues as long again.
pub const MAX_WINDOW: usize = 64;

/// How many blocks of `block_size` a network destination may have
/// between read and write: as many as [`DIGEST_WINDOW`] bytes of their
/// page digests, at least the read-ahead twice over (`prefetch` and
/// `workers`) and at most [`MAX_WINDOW`].
pub fn window_blocks(block_size: usize, workers: usize, prefetch: usize) -> usize {
    let pages = crate::proto::pages(block_size, crate::proto::page_size(block_size));
    let digests = usize::try_from(DIGEST_WINDOW).unwrap_or(usize::MAX);
    (digests / (pages * crate::proto::DIGEST_LEN).max(1))
        .min(MAX_WINDOW)
        .max(2 * (prefetch + workers))
}

/// The digests that window holds on either end: on the destination the
/// page digests of every block in it; on the source their range digests
/// and, for the blocks it parked, the destination's page digests of the
/// ranges that differ (its own count in flight, [`flight_cap`]).
pub fn window_digests(block_size: usize, workers: usize, prefetch: usize) -> u64 {
    let pages = crate::proto::pages(block_size, crate::proto::page_size(block_size));
    let each = (pages + crate::proto::ranges(pages)) * crate::proto::DIGEST_LEN;
    (window_blocks(block_size, workers, prefetch) as u64).saturating_mul(each as u64)
}

/// How much outstanding work a network end lets out on a long link, per
/// worker and one more: on the source the changed ranges parked while
/// their page digests travel (and the spares kept to park more), on the
/// destination the data received and not yet written, which the source's
/// budget of block data sent and not acknowledged bounds. Each is counted
/// in memory really held.
const FLIGHT_PER_WORKER: u64 = 5 << 20;

/// The most memory the outstanding work of a network end holds: what the
/// flight budgets may let out, [`FLIGHT_PER_WORKER`] per worker and one
/// and at least two blocks (so that large blocks still overlap), and one
/// block more, which the lowest unacknowledged block may always add (its
/// data in received-data units of 64 KiB, and its page digests).
pub fn flight_cap(block_size: usize, workers: usize) -> u64 {
    let block = block_size as u64;
    let budgets = (FLIGHT_PER_WORKER * (workers as u64 + 1)).max(2 * block);
    budgets + block + block / 256 + (64 << 10)
}

/// The memory one end may take for blocks, in bytes: its block buffers,
/// and on the network its outstanding work and the digest window.
pub fn memory_needed(t: &Transfer, local: bool) -> u64 {
    let buffers = buffers_needed(t.workers, t.prefetch, local) as u64;
    if local {
        return buffers.saturating_mul(t.block_size.min(LOCAL_PIECE) as u64);
    }
    buffers
        .saturating_mul(t.block_size as u64)
        .saturating_add(flight_cap(t.block_size, t.workers))
        .saturating_add(window_digests(t.block_size, t.workers, t.prefetch))
}

/// The memory this process may use: `MemAvailable` from `/proc/meminfo`,
/// lowered to the room its memory cgroups leave (their limits less what
/// they hold, [`crate::sys::cgroup_memory_room`]) when that is smaller.
/// `None` when neither can be read.
pub fn memory_available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let available = meminfo.as_deref().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib.saturating_mul(1024))
    });
    let cgroup = crate::sys::cgroup_memory_room();
    match (available, cgroup) {
        (Some(a), Some(c)) => Some(a.min(c)),
        (a, c) => a.or(c),
    }
}

/// Why `t` needs too much memory: more than half of `available`. The
/// message gives the figure and the formula, so the user knows which of
/// `-b`, `-w` and `-prefetch` to lower.
pub fn memory_refusal(t: &Transfer, local: bool, available: u64) -> Option<String> {
    let need = memory_needed(t, local);
    if need <= available / 2 {
        return None;
    }
    let formula = if local {
        format!(
            "(2 × prefetch {} + 3 × workers {} + 3) pieces of {}",
            t.prefetch,
            t.workers,
            crate::units::human_bytes(t.block_size.min(LOCAL_PIECE) as u64)
        )
    } else {
        let human = crate::units::human_bytes;
        format!(
            "(2 × workers {} + 1) blocks of {} + {} in flight + {} of digests",
            t.workers,
            human(t.block_size as u64),
            human(flight_cap(t.block_size, t.workers)),
            human(window_digests(t.block_size, t.workers, t.prefetch))
        )
    };
    Some(format!(
        "-b/-w/-prefetch: the block buffers would need {} = {formula}, more than half \
         of the {} of memory available; lower -b, -w or -prefetch",
        crate::units::human_bytes(need),
        crate::units::human_bytes(available)
    ))
}

/// A validated run plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// What to do, and which end is which.
    pub mode: Mode,
    /// How data moves.
    pub transfer: Transfer,
    /// `-l`, `-q`, `-v`, `-P`.
    pub log: LogOptions,
    /// What the environment says about I/O.
    pub env: Env,
    /// `--rescue MAPFILE`: this end reads the source, and a read error
    /// is retried in sectors and recorded in this ddrescue map instead of
    /// failing the run.
    pub rescue: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_root_defaults_to_sys() {
        // Only the default is checked: setting the variable would race with
        // other tests in this process.
        if std::env::var_os(SYSFS_ENV).is_none() {
            assert_eq!(sysfs_root(), PathBuf::from("/sys"));
        }
    }

    #[test]
    fn the_cap_is_the_budgets_and_the_one_block_beyond_them() {
        let block = (10 << 20) + (40 << 10) + (64 << 10);
        assert_eq!(flight_cap(10 << 20, 1), (20 << 20) + block, "two blocks");
        assert_eq!(flight_cap(10 << 20, 4), (25 << 20) + block);
    }

    #[test]
    fn the_defaults_need_at_most_64_and_128_mib() {
        // Issue 21's targets for 10 MiB blocks at -w 1 and -w 4.
        for (workers, most) in [(1, 64 << 20), (4, 128 << 20)] {
            let t = Transfer {
                block_size: 10 << 20,
                skip: 0,
                compression: None,
                workers,
                prefetch: 4 * workers,
                bwlimit: None,
            };
            let need = memory_needed(&t, false);
            assert!(need <= most, "-w {workers}: {need}");
        }
    }

    #[test]
    fn the_window_is_its_digests_within_its_bounds() {
        // 10 MiB blocks: 2560 page and 160 range digests each, 102 blocks'
        // worth in 4 MiB, held to 64.
        assert_eq!(window_blocks(10 << 20, 1, 4), MAX_WINDOW);
        assert_eq!(window_digests(10 << 20, 1, 4), 64 * 2720 * 16);
        // 100 MiB blocks: 10 blocks' worth, or the read-ahead twice over.
        assert_eq!(window_blocks(100 << 20, 1, 4), 10);
        assert_eq!(window_blocks(100 << 20, 4, 16), 40);
    }

    #[test]
    fn the_readme_example_needs_about_six_gigabytes() {
        // The original README's `-b 524288000 -w 4`: prefetch 16.
        let t = Transfer {
            block_size: 524_288_000,
            skip: 0,
            compression: None,
            workers: 4,
            prefetch: 16,
            bwlimit: None,
        };
        // Nine buffers, two blocks in flight and the one beyond them, and
        // the digest window: the read-ahead twice over, 40 blocks of
        // 128000 page and 8000 range digests.
        let beyond = 524_288_000 / 256 + (64 << 10);
        assert_eq!(
            memory_needed(&t, false),
            12 * 524_288_000 + beyond + 40 * 136_000 * 16
        );
        let msg = memory_refusal(&t, false, 8 << 30).unwrap_or_default();
        assert!(
            msg.contains(
                "5.9 GiB = (2 × workers 4 + 1) blocks of 500.0 MiB \
                 + 1.5 GiB in flight + 83.0 MiB of digests"
            ),
            "{msg}"
        );
        assert!(memory_refusal(&t, false, 12 << 30).is_none());
    }

    #[test]
    fn local_buffers_are_pieces_whatever_the_block_size() {
        let t = Transfer {
            block_size: 1 << 30,
            skip: 0,
            compression: None,
            workers: 4,
            prefetch: 16,
            bwlimit: None,
        };
        // 47 buffers of 512 KiB, not of 1 GiB.
        assert_eq!(memory_needed(&t, true), 47 * (512 << 10));
        assert!(memory_refusal(&t, true, 1 << 30).is_none());
        let small = Transfer {
            block_size: 64 << 10,
            prefetch: 1 << 20,
            ..t
        };
        let msg = memory_refusal(&small, true, 8 << 30).unwrap_or_default();
        assert!(
            msg.contains("(2 × prefetch 1048576 + 3 × workers 4 + 3) pieces of 64.0 KiB"),
            "{msg}"
        );
    }
}
