//! A network session: the two roles, the source (`source.rs`, rsync's
//! sender) and the destination (`destination.rs`, rsync's receiver), and
//! what they share, whichever of them is the client.
//!
//! The destination reads its device in order and streams range digests
//! (one per 64 KiB); the source reads its own in order and compares. A
//! block whose ranges all match is answered at once; for one that differs
//! the source asks for the page digests (one per 4 KiB) of the differing
//! ranges, and goes on with the next block while the answer travels. Then
//! it sends the block as a list of changed pages (zero markers, or data
//! with the source's digest, compressed). The destination checks every data
//! page against that digest after decompression, writes in block order, and
//! acknowledges. A block counts as done on the source only when
//! acknowledged. `crate::proto` describes the exchange frame by frame.
//!
//! Connections are lanes: lane `i` of `n` carries every frame about blocks
//! `index % n == i`. The destination holds a window of permits: a block's
//! digests go out only with a permit, which comes back when the block is
//! written. The window is measured in bytes of page digests
//! (`config::window_blocks`), not in block buffers, so over a long round
//! trip the destination runs far ahead; the source parks page digests and
//! reads back the pages that differ, and bounds what it has sent
//! unacknowledged by a flight budget in bytes (`exchange.rs`, `ledger.rs`),
//! so a long link costs a few round trips in all, and memory follows what
//! differs, not `-b`. Once every block went out the source says its
//! verdict (`Bye`, its verification digest); when everything is written
//! and flushed the destination sends `Complete` with its own, compares
//! them and ends; the source checks `Complete` against its own digest and
//! answers `Bye` again.
//!
//! [`run`] is the one entry point: it runs either role over lanes that the
//! client or the server opened, with progress, the summary and the
//! verification line, so neither of them repeats that.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::block::{Block, Geometry};
use crate::compress::Level;
use crate::config::Role;
use crate::digest::{self, Digest};
use crate::disk::Disk;
use crate::error::{Error, Result};
pub use crate::handshake::unexpected;
use crate::lock::{lock, wait};
use crate::log::Log;
use crate::net::{self, FrameReader, FrameSender, Lane};
use crate::progress::{Reporter, Stats, Totals, human_bytes};
use crate::proto::{Frame, Welcome};
use crate::summary::{Side, report_json};

mod destination;
mod dry;
pub use dry::DrySink;
mod exchange;
mod ledger;
mod source;
#[cfg(test)]
mod tests;

/// The agreed parameters of a session.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// Source size and block size.
    pub geo: Geometry,
    /// First block to transfer (`-s`).
    pub first: u64,
    /// Digest salt.
    pub salt: u128,
    /// Compression of block data.
    pub compression: Option<Level>,
    /// CPU workers on this side.
    pub workers: usize,
    /// Read-ahead depth on this side.
    pub prefetch: usize,
    /// The network deadline of every blocking read and write.
    pub deadline: Duration,
    /// Frames are sealed (`-K`, `-e`): progress says "encrypted".
    pub encrypted: bool,
    /// `--bwlimit` of a sending end, in bytes per second.
    pub bwlimit: Option<u64>,
}

/// What one end brings to a session besides what the handshake agreed.
pub struct Own {
    /// Compression of block data, as the `Hello` said.
    pub compression: Option<Level>,
    /// CPU workers on this side.
    pub workers: usize,
    /// Read-ahead depth on this side.
    pub prefetch: usize,
    /// The network deadline of every blocking read and write.
    pub deadline: Duration,
    /// Frames are sealed (`-K`, `-e`).
    pub encrypted: bool,
    /// `--bwlimit` of a sending end, in bytes per second.
    pub bwlimit: Option<u64>,
}

impl Params {
    /// The parameters of the session the handshake agreed in `w`, with
    /// this end's `own` settings: the one place they are made.
    pub fn agreed(w: &Welcome, own: Own) -> Params {
        let geo = Geometry {
            size: w.source_size,
            block_size: usize::try_from(w.block_size).unwrap_or(usize::MAX),
        };
        Params {
            geo,
            first: w.skip.min(geo.blocks()),
            salt: w.salt,
            compression: own.compression,
            workers: own.workers,
            prefetch: own.prefetch,
            deadline: own.deadline,
            encrypted: own.encrypted,
            bwlimit: own.bwlimit,
        }
    }

    /// The change grain: a page, or the block if smaller.
    fn page(&self) -> usize {
        crate::proto::page_size(self.geo.block_size)
    }

    /// The size of the grains a dry run's sink gets digests of: a range
    /// (the destination's first level; a dry run asks no page digests).
    pub fn range_size(&self) -> usize {
        crate::proto::RANGE_PAGES * self.page()
    }

    /// The digest of `n` zero bytes (at most a page) under this
    /// session's salt.
    fn zero_digest(&self, n: usize) -> Digest {
        digest::digest(self.salt, &ZEROS[..n.min(ZEROS.len())])
    }
}

/// Zeros to digest an unread or cleared page against.
static ZEROS: [u8; crate::proto::PAGE] = [0; crate::proto::PAGE];

/// What a block holds, as the digests see it.
#[derive(Clone, Copy)]
enum Content<'a> {
    /// The bytes read.
    Bytes(&'a [u8]),
    /// A hole of this many zero bytes, never read.
    Hole(usize),
}

impl<'a> Content<'a> {
    fn of(block: &'a Block) -> Content<'a> {
        if block.hole {
            Content::Hole(block.len)
        } else {
            Content::Bytes(&block.data[..block.len])
        }
    }

    fn len(&self) -> usize {
        match self {
            Content::Bytes(b) => b.len(),
            Content::Hole(n) => *n,
        }
    }

    /// Fill `out` with the digest of every page. Zero pages, and every page
    /// of a hole, take `zero`, the digest of one whole zero page computed
    /// once per session: zeros are never hashed.
    fn digests(&self, p: &Params, zero: Digest, out: &mut Vec<Digest>) {
        match *self {
            Content::Bytes(data) => {
                digest::digest_pages_known_zero(p.salt, data, p.page(), zero, out);
            }
            Content::Hole(len) => {
                out.clear();
                let page = p.page();
                out.extend((0..len / page).map(|_| zero));
                if len % page != 0 {
                    out.push(p.zero_digest(len % page));
                }
            }
        }
    }
}

/// One end of a session, ready to run: what [`run`] needs.
pub struct End<'a> {
    /// Which role this end plays.
    pub role: Role,
    /// What the handshake agreed, with this end's own settings.
    pub params: &'a Params,
    /// This end's disk (a destination already sized).
    pub disk: &'a Disk,
    /// The connected lanes.
    pub lanes: Vec<Lane>,
    /// How a lost lane is rejoined.
    pub rejoin: &'a dyn Rejoin,
    /// Where the lines go.
    pub log: &'a Log,
    /// Show live progress and the summary line.
    pub progress: bool,
    /// A dry run's source (`--compare`, `--write-patch`): every block goes
    /// here instead of its changes to the destination, which writes nothing.
    pub dry: Option<&'a dyn DrySink>,
    /// Where this end counts: a local dry run's destination counts where
    /// its source can add it to one local summary; `None`, counters of its
    /// own.
    pub counters: Option<&'a Arc<Stats>>,
    /// A source's destination as its user named it (`host:/path` of `-t`),
    /// for the summary, which names the destination; `None`: the peer.
    pub to: Option<String>,
}

/// Tell the other end's user `text` (cut to what a `Notice` holds).
fn send_notice(lane: &Lane, text: &str) -> Result<()> {
    let mut end = text.len().min(crate::proto::NOTICE_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    lane.sender.send_frame(&Frame::Notice(&text[..end]))
}

/// Run one end of a session, `end.role` on `end.disk` over `end.lanes`,
/// rejoining lost lanes through `end.rejoin`. Shows progress when
/// `end.progress` says so, then the summary and the verification digest
/// both ends agreed on, which it returns. With `end.dry`, on the source, a
/// dry run: the destination is read and acknowledges, nothing is written to
/// it, and every block goes to the sink instead.
pub fn run(end: End<'_>) -> Result<u128> {
    let End {
        role,
        params: p,
        disk,
        mut lanes,
        rejoin,
        log,
        progress,
        dry,
        counters,
        to,
    } = end;
    let own;
    let stats = match counters {
        Some(stats) => stats,
        None => {
            own = Arc::default();
            &own
        }
    };
    for lane in &mut lanes {
        lane.reader.show_notices(log);
        lane.reader.count_received(stats);
        lane.sender.count_sent(stats);
    }
    // What this end warned its own user about (a source mounted
    // read-write), the other end's user hears too.
    if let (Role::Source, Some(warning), Some(lane)) = (role, disk.warning(), lanes.first()) {
        send_notice(lane, warning)?;
    }
    // A dry run's destination of another size: its blocks may all agree,
    // but a sync would truncate or grow it (refuse a smaller device), which
    // the source cannot see. A larger device a sync leaves alone past the
    // source's end: no difference (`report_excess` says so). The source's
    // compare reads its verdict in this `Notice`, which must not be cut: a
    // name too long for one goes unnamed.
    let device = disk.is_device();
    let resized = (role == Role::Destination && disk.is_dry() && !disk.captures())
        .then(|| disk.size())
        .filter(|&n| n < p.geo.size || (n > p.geo.size && !device));
    if let (Some(n), Some(lane)) = (resized, lanes.first()) {
        let mut note = crate::summary::resized(disk.label(), n, p.geo.size, device);
        log.info(&note);
        if note.len() > crate::proto::NOTICE_MAX {
            note = crate::summary::resized("the destination", n, p.geo.size, device);
        }
        send_notice(lane, &note)?;
    }
    stats.resume_at.store(p.first, Ordering::Relaxed);
    let totals = Totals::from_block(p.geo, p.first);
    let mut notes = Vec::new();
    if p.encrypted {
        let _ = stats.encryption.set(crate::progress::Encryption::Sealed);
        notes.push("encrypted".to_string());
        // Where no live line shows the note, one line says it.
        if !(progress && std::io::IsTerminal::is_terminal(&std::io::stderr())) {
            log.info("the session is encrypted (ChaCha20-Poly1305)");
        }
    }
    if let (Some(rate), Role::Source) = (p.bwlimit, role) {
        notes.push(format!("limit {}/s", human_bytes(rate)));
    }
    let reporter = Reporter::start(log, stats, totals, progress, &notes);
    if dry.is_none() && !disk.is_dry() {
        crate::progress::resumable(p.geo.block_size, p.geo.blocks());
    }
    let peer = lanes
        .first()
        .map_or_else(|| "the peer".to_string(), |l| l.reader.peer.clone());
    // Every summary names the destination: this end's disk, or the peer's.
    let destination = match role {
        Role::Destination => disk.label().to_string(),
        Role::Source => format!("destination {}", to.as_deref().unwrap_or(&peer)),
    };
    let _watch = Watchdog::start(stats, peer, p.deadline, SILENT_AFTER, log);
    let (verify, side, tally) = match role {
        Role::Source => (
            source::run_with(p, disk, lanes, stats, rejoin, dry)?,
            Side::Source,
            None,
        ),
        Role::Destination => {
            let (verify, tally) = destination::run_told(p, disk, lanes, stats, rejoin)?;
            (verify, Side::Destination, tally)
        }
    };
    let side = dry::settle(stats, tally, dry).unwrap_or(side);
    let elapsed = reporter.finish();
    if dry.is_some() {
        // The sink says what differs; the JSON carries the same counts.
        report_json(log, stats, elapsed, side, p.first, true);
    } else if disk.is_dry() && !disk.captures() {
        if progress {
            let summary = crate::summary::dry_destination_summary(stats, elapsed, tally);
            log.info(format!("{destination}: {summary}"));
        }
        report_json(log, stats, elapsed, side, p.first, true);
    } else {
        if progress {
            let summary = crate::summary::summary(stats, elapsed, side, p.first);
            log.info(format!("{destination}: {summary}"));
        }
        report_json(log, stats, elapsed, side, p.first, false);
        let by_map = stats.skipped_by_map.load(Ordering::Relaxed);
        log.info(verification_line(verify, p.first, p.geo.blocks(), by_map));
    }
    if role == Role::Destination {
        disk.report_excess(p.geo.size);
    }
    if let Some(rescue) = disk.rescue() {
        match dry {
            None => rescue.finish(log, stats, elapsed)?,
            // Finished when the patch is (`Rescue::patched`).
            Some(_) => rescue.ran(stats, elapsed),
        }
    }
    let lost = stats.bytes_unreadable.load(Ordering::Relaxed);
    if role == Role::Destination && lost > 0 {
        return Err(crate::error::Error::Unreadable(format!(
            "{} ({lost} bytes) the source could not read were not written here \
             (the source's -rescue map says where)",
            human_bytes(lost)
        )));
    }
    Ok(verify)
}

/// The closing verification line: the digest and the blocks it covers,
/// `first..blocks`. Blocks before `first` (`-s`) were neither read nor
/// compared, nor were the `by_map` blocks a rescue's map says are
/// finished, and no agreement is claimed about blocks nobody verified.
pub fn verification_line(verify: u128, first: u64, blocks: u64, by_map: u64) -> String {
    if first >= blocks {
        return "verification: no blocks to compare (the source is empty)".into();
    }
    let covered = if first == 0 {
        format!("all {blocks} {}", crate::progress::plural(blocks, "block"))
    } else {
        format!(
            "blocks {first} to {} (blocks before {first} skipped by -s, not verified)",
            blocks - 1
        )
    };
    let unverified = if by_map > 0 {
        format!(" ({})", crate::summary::skipped_by_map(by_map))
    } else {
        String::new()
    };
    format!("verification digest {verify:032x} over {covered}{unverified}: both ends agree")
}

/// Refuse `-s first` at or past the end of a source of `geo`: there is
/// nothing left to resume, and silently doing nothing would look like a
/// verified copy. An empty source and `-s 0` are fine.
pub fn check_skip(first: u64, geo: Geometry) -> Result<()> {
    let blocks = geo.blocks();
    if first == 0 || first < blocks {
        return Ok(());
    }
    if blocks == 0 {
        return Err(Error::usage(format!(
            "-s {first}: the source is empty (0 bytes), so there is no block to skip: \
             run without -s"
        )));
    }
    Err(Error::usage(format!(
        "-s {first}: the source has only {blocks} {} of {} ({}), so -s must be below \
         {blocks}; to check a finished copy run again without -s",
        crate::progress::plural(blocks, "block"),
        human_bytes(geo.block_size as u64),
        human_bytes(geo.size)
    )))
}

/// How long without progress before the operator is told who went silent.
pub const SILENT_AFTER: Duration = Duration::from_secs(30);

/// Says, once per silent spell, that the transfer has not moved for a
/// while, which peer it waits for and when the network deadline ends the
/// wait: a stalled peer otherwise shows only a falling speed for minutes.
pub struct Watchdog {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Watch `stats` (bytes done and bytes received) from now on.
    pub fn start(
        stats: &Arc<Stats>,
        peer: String,
        deadline: Duration,
        after: Duration,
        log: &Log,
    ) -> Watchdog {
        let (stop, stopped) = mpsc::channel::<()>();
        let stats = Arc::clone(stats);
        let log = log.clone();
        let tick = (after / 10).max(Duration::from_millis(10));
        let thread = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || {
                let moved = || {
                    stats.bytes_done.load(Ordering::Relaxed)
                        + stats.wire_received.load(Ordering::Relaxed)
                };
                let (mut last, mut since, mut said) = (moved(), Instant::now(), false);
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    let now = moved();
                    if now != last {
                        (last, since, said) = (now, Instant::now(), false);
                        continue;
                    }
                    let quiet = since.elapsed();
                    if quiet >= after && !said {
                        said = true;
                        log.line(silent_line(&peer, quiet, deadline));
                    }
                }
            })
            .ok();
        Watchdog {
            stop: Some(stop),
            thread,
        }
    }
}

/// The line a silent spell of `quiet` earns, waiting for `peer` under a
/// network deadline of `deadline`.
fn silent_line(peer: &str, quiet: Duration, deadline: Duration) -> String {
    format!(
        "no progress for {} s: waiting for {peer}, which has gone silent; unless it \
         answers, the network deadline ({} s, BSYNC_IO_TIMEOUT) ends the wait in about {} s",
        quiet.as_secs(),
        deadline.as_secs(),
        deadline.saturating_sub(quiet).as_secs()
    )
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `--bwlimit`: a token bucket shared by every thread that sends block
/// data. A frame larger than the bucket runs it into debt, which the next
/// sender waits off, so the mean rate holds whatever the frame sizes.
pub struct Throttle {
    rate: f64,
    state: Mutex<(std::time::Instant, f64)>,
}

impl Throttle {
    /// A bucket of `rate` bytes per second, holding at most a tenth of a
    /// second's worth.
    pub fn new(rate: u64) -> Throttle {
        Throttle {
            rate: rate as f64,
            state: Mutex::new((std::time::Instant::now(), rate as f64 / 10.0)),
        }
    }

    /// Take `bytes` out of the bucket, sleeping while it is in debt.
    pub fn take(&self, bytes: usize) {
        let wait = {
            let mut st = lock(&self.state);
            let now = std::time::Instant::now();
            let (last, tokens) = *st;
            let filled =
                (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.rate / 10.0);
            let left = filled - bytes as f64;
            *st = (now, left);
            if left < 0.0 { -left / self.rate } else { 0.0 }
        };
        if wait > 0.0 {
            std::thread::sleep(std::time::Duration::from_secs_f64(wait));
        }
    }
}

/// How a lane whose connection was lost gets a new one: the client dials
/// again, the server waits for the client to come back.
pub trait Rejoin: Sync {
    /// A fresh, handshaken connection for `lane`; gives up when `stop` says so.
    fn rejoin(&self, lane: usize, stop: &dyn Fn() -> bool) -> Result<Lane>;

    /// The session failed, or its source gave its verdict: a thread
    /// waiting in [`Rejoin::rejoin`] should look at `stop` again now.
    fn wake(&self) {}
}

/// A lane that is lost stays lost: a session over one stream (a remote
/// shell's pipes) cannot dial again.
pub struct NoRejoin;

impl Rejoin for NoRejoin {
    fn rejoin(&self, lane: usize, _stop: &dyn Fn() -> bool) -> Result<Lane> {
        Err(Error::Failed(format!(
            "lane {lane}: the remote shell's stream is gone and cannot be reopened"
        )))
    }
}

/// Something threads wait on, woken when the session fails.
trait Wake: Sync {
    fn wake(&self);
}

/// State that threads wait on, with the condition variable that says it
/// changed.
struct Signal<T> {
    state: Mutex<T>,
    changed: Condvar,
}

impl<T> Signal<T> {
    fn new(state: T) -> Signal<T> {
        Signal {
            state: Mutex::new(state),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, T> {
        lock(&self.state)
    }

    /// Wake every waiter; call after changing the state.
    fn notify(&self) {
        self.changed.notify_all();
    }

    /// Wait until `ready` gives a value, or the session fails.
    fn wait_for<R>(&self, abort: &Abort, mut ready: impl FnMut(&mut T) -> Option<R>) -> Option<R> {
        let mut guard = self.lock();
        loop {
            if let Some(r) = ready(&mut guard) {
                return Some(r);
            }
            if abort.is_set() {
                return None;
            }
            guard = wait(&self.changed, guard);
        }
    }
}

impl<T: Send> Wake for Signal<T> {
    fn wake(&self) {
        // Taking the lock orders this after a waiter's check of the abort
        // flag: it is either past the check or already waiting.
        drop(self.lock());
        self.notify();
    }
}

/// The first failure of a session; everyone else stops when it is set.
struct Abort<'a> {
    first: Mutex<Option<Error>>,
    set: AtomicBool,
    senders: Vec<Arc<FrameSender>>,
    /// Waiters to wake on failure.
    wakers: Vec<&'a dyn Wake>,
    rejoin: &'a dyn Rejoin,
}

impl<'a> Abort<'a> {
    fn new(
        senders: Vec<Arc<FrameSender>>,
        wakers: Vec<&'a dyn Wake>,
        rejoin: &'a dyn Rejoin,
    ) -> Abort<'a> {
        Abort {
            first: Mutex::new(None),
            set: AtomicBool::new(false),
            senders,
            wakers,
            rejoin,
        }
    }

    fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Record `e` if it is the first failure, tell the peer, close every
    /// lane so threads blocked on the network wake up, and wake every
    /// thread waiting on the session's state.
    fn fail(&self, e: Error) {
        let mut first = lock(&self.first);
        if first.is_none() {
            let msg = e.to_string();
            *first = Some(e);
            self.set.store(true, Ordering::Release);
            drop(first);
            for s in &self.senders {
                s.fail(&msg);
            }
            for w in &self.wakers {
                w.wake();
            }
            self.rejoin.wake();
        }
    }

    /// Run `f`; a failure aborts the session.
    fn guard(&self, f: impl FnOnce() -> Result<()>) {
        if let Err(e) = f() {
            self.fail(e);
        }
    }

    fn outcome(&self) -> Result<()> {
        match lock(&self.first).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Start `f` on a thread of the scope `s`. A thread the system refuses
/// (a pids cgroup's `pids.max`, `ulimit -u`, `kernel.threads-max`, or no
/// memory for its stack) is an error naming the limit, never a panic.
pub fn spawn_scoped<'scope, 'env, T: Send + 'scope>(
    s: &'scope std::thread::Scope<'scope, 'env>,
    f: impl FnOnce() -> T + Send + 'scope,
) -> Result<std::thread::ScopedJoinHandle<'scope, T>> {
    std::thread::Builder::new()
        .spawn_scoped(s, f)
        .map_err(thread_refused)
}

/// The error for a thread the system refused to start.
pub fn thread_refused(e: std::io::Error) -> Error {
    Error::Failed(format!(
        "cannot start another thread: {e}; the limit on processes and threads is \
         reached (a pids cgroup's pids.max, ulimit -u or kernel.threads-max): \
         lower -w or raise the limit"
    ))
}

/// [`spawn_scoped`] for a thread of a session: a refusal fails the session
/// (the peer is told, the other threads stop) instead of ending the process.
fn spawn_or_fail<'scope, 'env>(
    s: &'scope std::thread::Scope<'scope, 'env>,
    abort: &Abort<'_>,
    f: impl FnOnce() + Send + 'scope,
) {
    if let Err(e) = spawn_scoped(s, f) {
        abort.fail(e);
    }
}

/// Hash of one block's final range digests; the verification digest is
/// their sum, so lanes may finish blocks in any order. Range digests, not
/// page digests, so that a dry run's source, which only ever sees the
/// destination's ranges, computes the same sum.
fn block_hash(index: u64, ranges: &[Digest]) -> u128 {
    block_hash_of(index, ranges.iter().copied())
}

/// [`block_hash`] from a block's page digests, folded into ranges on the
/// way (no allocation).
fn block_hash_of_pages(index: u64, pages: &[Digest]) -> u128 {
    block_hash_of(
        index,
        pages
            .chunks(crate::proto::RANGE_PAGES)
            .map(crate::proto::range_digest),
    )
}

fn block_hash_of(index: u64, ranges: impl Iterator<Item = Digest>) -> u128 {
    let mut h = digest::fnv1a128(&index.to_le_bytes());
    for d in ranges {
        h = digest::fnv1a128_update(h, &d.to_le_bytes());
    }
    h
}

/// Blocks `index` belongs to lane `index % lanes`.
fn lane_of(index: u64, lanes: usize) -> usize {
    // The remainder is below `lanes`, a usize.
    usize::try_from(index % lanes as u64).unwrap_or(0)
}

/// Read a lane until it ends; when its connection is lost, rejoin and call
/// `resumed`, then read on. Errors that are not a lost connection, or a
/// failed rejoin, abort the session unless `finished` says we are done.
/// A rejoin is given up when the session fails, or when `given_up` says
/// the lane has nothing more to say (the source's verdict went out: a
/// server must not wait for a client that has it). What `resumed` sends
/// is not checked: should the new connection be lost too, the next read
/// says so, and the lane is rejoined again.
fn run_lane(
    lane: usize,
    reader: &mut FrameReader,
    abort: &Abort,
    mut read: impl FnMut(&mut FrameReader) -> Result<()>,
    mut resumed: impl FnMut(),
    finished: &dyn Fn() -> bool,
    given_up: &dyn Fn() -> bool,
) {
    loop {
        let Err(e) = read(reader) else { return };
        if finished() || abort.is_set() {
            return;
        }
        if !net::is_connection_loss(&e) {
            abort.fail(e);
            return;
        }
        match abort.rejoin.rejoin(lane, &|| abort.is_set() || given_up()) {
            Ok(fresh) => fresh.take_over(reader, &abort.senders[lane]),
            Err(_) if finished() => return,
            Err(again) => {
                abort.fail(Error::Failed(format!("{e}; reconnecting failed: {again}")));
                return;
            }
        }
        resumed();
    }
}
