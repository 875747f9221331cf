//! Live progress, the counters behind it, and the resume line (the
//! closing summary is `summary.rs`'s).
//!
//! Every line goes to stderr through [`Log`] (stdout is kept for data a
//! script reads, such as the port of `-p 0`). Counters are atomics
//! that the pipeline threads bump; one reporter thread samples them: on a
//! terminal it redraws one line a few times a second, elsewhere it prints a
//! plain line every few seconds, stamped with the time, so logs stay
//! readable.
//!
//! On a terminal the live line is never wider than the terminal (it is
//! shortened, never wrapped), and a log line printed meanwhile goes on its
//! own line above it ([`Log::line`] clears the live line, prints, and draws
//! it again, under `LIVE`).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::block::Geometry;
use crate::log::{LIVE, Log};
pub use crate::units::{human_bytes, plural};

/// The counters of the transfer running now, for the resume line after a
/// failure or an interrupt.
static CURRENT: Mutex<Option<Arc<Stats>>> = Mutex::new(None);

/// What a resume line needs besides the counters: set by [`resumable`]
/// when a transfer that may be resumed starts.
static RESUME: Mutex<Option<Resume>> = Mutex::new(None);

/// The terms a `-s N` resume must keep: what a block number means.
#[derive(Clone, Copy, Debug)]
struct Resume {
    /// The block size N counts in.
    block_size: usize,
    /// Blocks of the source: `-s` at or past it is refused, and a run that
    /// got that far needs a plain re-run, not a resume.
    blocks: u64,
}

/// Make `stats` the transfer the resume line speaks about.
pub fn track(stats: &Arc<Stats>) {
    *crate::lock::lock(&CURRENT) = Some(Arc::clone(stats));
    *crate::lock::lock(&RESUME) = None;
}

/// The transfer tracked now may be resumed with `-s`: it writes blocks of
/// `block_size` bytes, `blocks` of them. Without this call (a dry run, which
/// writes nothing) no resume line is printed.
pub fn resumable(block_size: usize, blocks: u64) {
    *crate::lock::lock(&RESUME) = Some(Resume { block_size, blocks });
}

/// `-b`'s value for `bytes`, the way the flag reads it: `1M`, `64K`, `512`.
pub fn block_flag(bytes: usize) -> String {
    for (shift, suffix) in [(30, "G"), (20, "M"), (10, "K")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// `resume with -s N -b B`, where every block before N is written and
/// acknowledged, for the transfer running now, with every flag that gives
/// N its meaning (`-b`). None when no resume is safe or useful: before a
/// transfer started, in a dry run, at block 0 or past the last block (a
/// plain re-run does as well). On a server, which takes no `-s`, it is the
/// client's to give.
pub fn resume_hint() -> Option<String> {
    let stats = crate::lock::lock(&CURRENT).clone()?;
    let terms = (*crate::lock::lock(&RESUME))?;
    let at = stats.resume_at.load(Relaxed);
    if at == 0 || at >= terms.blocks {
        return None;
    }
    let b = block_flag(terms.block_size);
    // Whose `-b` set the block size: a downloading client's comes from
    // its server, an upload server's from its client.
    let line = match (SERVER.load(Relaxed), BLOCK_SIZE_FROM_PEER.load(Relaxed)) {
        (false, false) => format!("resume with -s {at} -b {b}"),
        (false, true) => format!("resume with -s {at} (and the server again with -b {b})"),
        (true, true) => format!("the client may resume with -s {at} -b {b}"),
        (true, false) => {
            format!("the client may resume with -s {at} (and this server again with -b {b})")
        }
    };
    Some(format!(
        "{line}: every block before {at} is written at the destination"
    ))
}

/// [`resume_hint`] after the run failed with `e`: none when the source
/// changed during the run (blocks written before the change may be stale:
/// only a whole re-run makes the destination right).
pub fn resume_hint_after(e: &crate::error::Error) -> Option<String> {
    // A source that changed needs a plain re-run; a rescue that finished
    // resumes from its map, not from -s.
    if e.to_string().contains(crate::error::SOURCE_CHANGED)
        || matches!(e, crate::error::Error::Unreadable(_))
    {
        return None;
    }
    resume_hint()
}

/// This process is a server: the resume line speaks of the client.
static SERVER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The block size is the other end's `-b` (a downloading `-r` client, an
/// upload server).
static BLOCK_SIZE_FROM_PEER: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Say that this process is a server (for [`resume_hint`]).
pub fn set_server() {
    SERVER.store(true, Relaxed);
}

/// Say that the other end's `-b` sets the block size (for [`resume_hint`]).
pub fn set_block_size_from_peer() {
    BLOCK_SIZE_FROM_PEER.store(true, Relaxed);
}

/// The live line is gone for good: the run is ending on a signal, and what
/// follows (the resume line, then the shell's prompt) goes on lines of its
/// own, with nothing drawn after them.
static ENDED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Clear the live progress line and draw it no more.
pub fn end_live_line() {
    let mut live = crate::lock::lock(&LIVE);
    ENDED.store(true, Relaxed);
    if live.take().is_some() {
        let _ = write!(std::io::stderr().lock(), "\r\x1b[K");
    }
}

/// The terminal's width for the live line: what the terminal says, else
/// `COLUMNS` (a terminal that reports 0 columns, as some serial consoles
/// and fresh ptys do), else 80.
fn terminal_width() -> usize {
    crate::sys::stderr_columns()
        .map(usize::from)
        .or_else(|| columns_env(std::env::var("COLUMNS").ok().as_deref()))
        .unwrap_or(80)
}

/// `COLUMNS`, when it is a positive number.
fn columns_env(value: Option<&str>) -> Option<usize> {
    value?.trim().parse().ok().filter(|&n| n > 0)
}

/// A wait that says, once it has lasted a second, what it waits for and
/// until when; it ends (silently) when dropped.
pub struct WaitNote {
    done: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How long a wait goes unmentioned.
const WAIT_SAID_AFTER: Duration = Duration::from_secs(1);

impl WaitNote {
    /// Start waiting for `what`, for `limit` at most.
    pub fn start(log: &Log, what: String, limit: Duration) -> WaitNote {
        let until = std::time::SystemTime::now() + limit;
        let (done, ended) = mpsc::channel::<()>();
        let log = log.clone();
        let thread = std::thread::Builder::new()
            .spawn(move || {
                if let Err(RecvTimeoutError::Timeout) = ended.recv_timeout(WAIT_SAID_AFTER) {
                    log.info(format!(
                        "waiting for {what}, until {} at the latest",
                        clock(until)
                    ));
                }
            })
            .ok();
        WaitNote {
            done: Some(done),
            thread,
        }
    }
}

impl Drop for WaitNote {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Counters the pipeline threads update while a transfer runs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Blocks finished (written and acknowledged, or found the same).
    pub blocks_done: AtomicU64,
    /// Source bytes those blocks cover.
    pub bytes_done: AtomicU64,
    /// Blocks that needed nothing.
    pub same: AtomicU64,
    /// `--rescue`: blocks the map says are finished (at the destination):
    /// neither read nor verified, as `-s` skips.
    pub skipped_by_map: AtomicU64,
    /// Blocks with data written.
    pub changed: AtomicU64,
    /// Blocks that only needed clearing to zeros.
    pub zero: AtomicU64,
    /// Bytes read from disk, both sides.
    pub bytes_read: AtomicU64,
    /// Data bytes written to the destination.
    pub bytes_written: AtomicU64,
    /// Destination bytes made zero by hole punching, zero-out or zero writes.
    pub bytes_cleared: AtomicU64,
    /// Changed data the source sent, before compression.
    pub bytes_changed: AtomicU64,
    /// Bytes of the session's frames sent on the network (header and
    /// payload, not the handshake nor encryption tags): blocks and page
    /// requests by the source, digests and acknowledgements by the
    /// destination.
    pub wire_sent: AtomicU64,
    /// Bytes of the session's frames received, counted as the peer counts
    /// what it sends.
    pub wire_received: AtomicU64,
    /// Every block before this one is written at the destination (and,
    /// on the source, acknowledged): where a resume may start (`-s`).
    pub resume_at: AtomicU64,
    /// `--rescue`: source bytes that could not be read.
    pub bytes_unreadable: AtomicU64,
    /// `--rescue`: reads of the source that failed, in every grain.
    pub read_errors: AtomicU64,
    /// A dry run: bytes of the ranges that differ where the source holds
    /// zeros (those with data are `bytes_changed`).
    pub dry_zero_bytes: AtomicU64,
    /// A dry run's source: the destination's size and whether it is a
    /// device, where the destination said in a `Notice` that a sync would
    /// resize or refuse it (`summary::resized`).
    pub destination_size: std::sync::OnceLock<(u64, bool)>,
    /// What encrypted the session's data on the way, if anything: said in
    /// `--json`, which even a quiet run prints.
    pub encryption: std::sync::OnceLock<Encryption>,
}

/// What encrypted a session's data on the way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encryption {
    /// bsync sealed every frame (`-e`, `-K`): ChaCha20-Poly1305.
    Sealed,
    /// The session ran inside ssh (`-t`), whose cipher carried it.
    Ssh,
}

impl Encryption {
    /// Its name in `--json`.
    pub fn name(self) -> &'static str {
        match self {
            Encryption::Sealed => "chacha20-poly1305",
            Encryption::Ssh => "ssh",
        }
    }
}

impl Stats {
    /// Add to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }
}

/// The local time of day of `t`, `14:03:59`.
pub fn clock(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (_, _, _, h, m, s) = crate::sys::local_time(secs);
    format!("{h:02}:{m:02}:{s:02}")
}

/// The local date and time of `t`, `2026-11-30 14:03:59`.
pub fn timestamp(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, mo, d, h, m, s) = crate::sys::local_time(secs);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}:{s:02}")
}

/// `1:02:03` or `2:03`.
pub(crate) fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

pub(crate) fn rate(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return "-".into();
    }
    // A float-to-integer `as` saturates, which is right for a rate.
    #[allow(clippy::cast_possible_truncation)]
    let rate = (bytes as f64 / secs) as u64;
    format!("{}/s", human_bytes(rate))
}

/// What the run covers, for percentages and the ETA.
#[derive(Clone, Copy, Debug)]
pub struct Totals {
    /// Blocks this run will handle (after `-s`).
    pub blocks: u64,
    /// Source bytes those blocks hold.
    pub bytes: u64,
}

impl Totals {
    /// What is left of `geo` from block `first` on (`-s`).
    pub fn from_block(geo: Geometry, first: u64) -> Totals {
        Totals {
            blocks: geo.blocks().saturating_sub(first),
            bytes: geo.size - geo.offset(first).min(geo.size),
        }
    }
}

/// The live progress display; drop or [`Reporter::finish`] it to stop.
pub struct Reporter {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    started: Instant,
}

/// How often the live line is redrawn on a terminal, and how often a plain
/// line is printed elsewhere.
const TTY_EVERY: Duration = Duration::from_millis(500);
const PLAIN_EVERY: Duration = Duration::from_secs(5);
/// Nothing done for this long: the line says `stalled` instead of an ETA
/// that would only grow (a lost connection, a peer that went away).
const STALLED_AFTER: Duration = Duration::from_secs(5);

impl Reporter {
    /// Start reporting, unless `enabled` is false (quiet, or a `-P` server).
    /// `notes` are shown after the figures (`encrypted`, `limit 2.0 MiB/s`).
    pub fn start(
        log: &Log,
        stats: &Arc<Stats>,
        totals: Totals,
        enabled: bool,
        notes: &[String],
    ) -> Reporter {
        let started = Instant::now();
        track(stats);
        if !enabled {
            return Reporter {
                stop: None,
                thread: None,
                started,
            };
        }
        let (stop, stopped) = mpsc::channel::<()>();
        let log = log.clone();
        let stats = Arc::clone(stats);
        let notes = notes.to_vec();
        let tty = std::io::stderr().is_terminal();
        let every = if tty { TTY_EVERY } else { PLAIN_EVERY };
        // Progress is optional: a thread the system refuses shows none.
        let thread = std::thread::Builder::new().spawn(move || {
            let mut last = (Instant::now(), 0u64);
            let mut moved = Instant::now();
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                let now = Instant::now();
                let done = stats.bytes_done.load(Relaxed);
                let recent = rate(done - last.1, now - last.0);
                if done != last.1 {
                    moved = now;
                }
                last = (now, done);
                let stalled = now - moved >= STALLED_AFTER;
                let parts = progress_parts(&stats, totals, now - started, &recent, stalled, &notes);
                if tty {
                    let line = fit(&log.prefix(), &parts, terminal_width());
                    let mut live = crate::lock::lock(&LIVE);
                    if ENDED.load(Relaxed) {
                        break;
                    }
                    let _ = write!(std::io::stderr().lock(), "\r{line}\x1b[K");
                    *live = Some(line);
                } else {
                    let stamp = timestamp(std::time::SystemTime::now());
                    log.line(format!("{stamp} {}", parts.join("  ")));
                }
            }
            if tty {
                let mut live = crate::lock::lock(&LIVE);
                if live.take().is_some() {
                    let _ = write!(std::io::stderr().lock(), "\r\x1b[K");
                }
            }
        });
        Reporter {
            stop: Some(stop),
            thread: thread.ok(),
            started,
        }
    }

    /// Stop the display and return the time since the start.
    pub fn finish(mut self) -> Duration {
        self.stop_thread();
        self.started.elapsed()
    }

    fn stop_thread(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// The pieces of a progress line: counts, percent, bytes, rate, the ETA
/// (or `stalled`), then the notes. [`fit`] relies on that order.
fn progress_parts(
    stats: &Stats,
    totals: Totals,
    elapsed: Duration,
    recent: &str,
    stalled: bool,
    notes: &[String],
) -> Vec<String> {
    let blocks = stats.blocks_done.load(Relaxed);
    let bytes = stats.bytes_done.load(Relaxed);
    let percent = if totals.bytes == 0 {
        100.0
    } else {
        bytes as f64 * 100.0 / totals.bytes as f64
    };
    let mut parts = vec![
        format!(
            "{blocks}/{} {}",
            totals.blocks,
            plural(totals.blocks, "block")
        ),
        format!("{percent:5.1}%"),
        format!("{} of {}", human_bytes(bytes), human_bytes(totals.bytes)),
        recent.to_string(),
    ];
    let secs = elapsed.as_secs_f64();
    if stalled && bytes < totals.bytes {
        parts.push("stalled".to_string());
    } else if bytes > 0 && secs > 0.0 {
        let left = (totals.bytes.saturating_sub(bytes)) as f64 / (bytes as f64 / secs);
        parts.push(format!(
            "ETA {}",
            human_duration(Duration::from_secs_f64(left))
        ));
    } else {
        parts.push("ETA -".to_string());
    }
    let unreadable = stats.bytes_unreadable.load(Relaxed);
    let errors = stats.read_errors.load(Relaxed);
    if unreadable > 0 || errors > 0 {
        let per_minute = errors as f64 * 60.0 / secs.max(1.0);
        parts.push(format!(
            "{} unreadable, {errors} read errors ({per_minute:.1}/min)",
            human_bytes(unreadable)
        ));
    }
    parts.extend(notes.iter().cloned());
    parts
}

/// One terminal line of at most `width - 1` columns (the last column would
/// make some terminals wrap): the prefix and as many parts as fit, dropping
/// the least useful first (notes, then the byte counts, then the block
/// counts), and cut short as a last resort. Never wraps.
fn fit(prefix: &str, parts: &[String], width: usize) -> String {
    let max = width.saturating_sub(1).max(1);
    let join = |keep: &[usize]| {
        let body: Vec<&str> = keep.iter().map(|&i| parts[i].as_str()).collect();
        format!("{prefix}{}", body.join("  "))
    };
    // Indexes into `parts`, in the order they are given up.
    let mut keep: Vec<usize> = (0..parts.len()).collect();
    let give_up: Vec<usize> = (5..parts.len()).rev().chain([2, 0]).collect();
    let mut line = join(&keep);
    for drop in give_up {
        if line.chars().count() <= max {
            return line;
        }
        keep.retain(|&i| i != drop);
        line = join(&keep);
    }
    line.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        assert_eq!(human_duration(Duration::from_secs(62)), "1:02");
        assert_eq!(human_duration(Duration::from_secs(3723)), "1:02:03");
    }

    #[test]
    fn progress_line_shows_what_a_rescue_could_not_read() {
        let stats = Stats::default();
        let totals = Totals {
            blocks: 10,
            bytes: 10 << 20,
        };
        let quiet = progress_parts(&stats, totals, Duration::from_secs(60), "", false, &[]);
        assert!(!quiet.join(" ").contains("unreadable"));
        Stats::add(&stats.bytes_unreadable, 1024);
        Stats::add(&stats.read_errors, 6);
        let parts = progress_parts(&stats, totals, Duration::from_secs(120), "", false, &[]);
        assert!(
            parts.contains(&"1.0 KiB unreadable, 6 read errors (3.0/min)".to_string()),
            "{parts:?}"
        );
    }

    #[test]
    fn progress_line_has_counts_percent_and_eta() {
        let stats = Stats::default();
        Stats::add(&stats.blocks_done, 5);
        Stats::add(&stats.bytes_done, 5 << 20);
        let totals = Totals {
            blocks: 10,
            bytes: 10 << 20,
        };
        let parts = progress_parts(
            &stats,
            totals,
            Duration::from_secs(5),
            "1.0 MiB/s",
            false,
            &[],
        );
        let line = parts.join("  ");
        assert!(line.starts_with("5/10 blocks   50.0%"), "{line}");
        assert!(line.contains("ETA 0:05"), "{line}");
        // Issue 15, item 1: a server whose client is gone does not show a
        // growing ETA.
        let parts = progress_parts(&stats, totals, Duration::from_secs(60), "0 B/s", true, &[]);
        assert_eq!(parts[4], "stalled");
    }

    #[test]
    fn progress_never_wider_than_the_terminal() {
        let stats = Stats::default();
        Stats::add(&stats.blocks_done, 123_456);
        Stats::add(&stats.bytes_done, 1 << 40);
        let totals = Totals {
            blocks: 209_716,
            bytes: 2 << 40,
        };
        let notes = ["encrypted".to_string(), "limit 20.0 MiB/s".to_string()];
        let parts = progress_parts(
            &stats,
            totals,
            Duration::from_secs(99),
            "97.3 MiB/s",
            false,
            &notes,
        );
        for (prefix, width) in [
            ("", 60),
            ("db01-migration: ", 80),
            ("", 20),
            ("x".repeat(90).as_str(), 80),
        ] {
            let line = fit(prefix, &parts, width);
            assert!(line.chars().count() < width, "{width}: {line}");
        }
        let wide = fit("", &parts, 200);
        assert!(
            wide.contains("encrypted") && wide.contains("limit"),
            "{wide}"
        );
        let narrow = fit("db01-migration: ", &parts, 60);
        assert!(narrow.contains('%') && narrow.contains("ETA"), "{narrow}");
    }

    #[test]
    fn columns_come_from_the_environment_when_positive() {
        assert_eq!(columns_env(Some("40")), Some(40));
        assert_eq!(columns_env(Some("0")), None);
        assert_eq!(columns_env(Some("wide")), None);
        assert_eq!(columns_env(None), None);
    }

    #[test]
    fn block_flags_read_back_as_given() {
        assert_eq!(block_flag(1 << 20), "1M");
        assert_eq!(block_flag(10 << 20), "10M");
        assert_eq!(block_flag(64 << 10), "64K");
        assert_eq!(block_flag(1 << 30), "1G");
        assert_eq!(block_flag(1536), "1536");
        assert_eq!(block_flag(512), "512");
    }
}
