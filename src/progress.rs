//! Log lines, live progress and the closing summary.
//!
//! Every line goes to stderr (stdout is kept for data a script reads, such as
//! the port of `-p 0`) and starts with the `-l` prefix. Counters are atomics
//! that the pipeline threads bump; one reporter thread samples them: on a
//! terminal it redraws one line a few times a second, elsewhere it prints a
//! plain line every few seconds so logs stay readable.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::block::Geometry;
use crate::config::LogOptions;

/// Writes log lines to stderr with the `-l` prefix, unless quiet.
#[derive(Clone, Debug, Default)]
pub struct Log {
    prefix: String,
    quiet: bool,
    verbose: bool,
}

impl Log {
    /// A log that follows `-l`, `-q` and `-v`.
    pub fn new(opts: &LogOptions) -> Log {
        Log {
            prefix: opts.prefix.clone(),
            quiet: opts.quiet,
            verbose: opts.verbose,
        }
    }

    /// True when [`detail`](Self::detail) lines are printed.
    pub fn is_verbose(&self) -> bool {
        self.verbose
    }

    /// A line about how the I/O is done (hints applied or skipped), printed
    /// only with `-v`. Asking for it explicitly wins over `-q`.
    pub fn detail(&self, msg: impl std::fmt::Display) {
        if self.verbose {
            self.line(msg);
        }
    }

    /// True when only errors are printed.
    pub fn is_quiet(&self) -> bool {
        self.quiet
    }

    /// The prefix with a separating space, or nothing.
    pub fn prefix(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{} ", self.prefix)
        }
    }

    /// An informational line (dropped with `-q`).
    pub fn info(&self, msg: impl std::fmt::Display) {
        if !self.quiet {
            self.line(msg);
        }
    }

    /// A line printed even with `-q`.
    pub fn line(&self, msg: impl std::fmt::Display) {
        // A closed stderr is not worth dying for.
        let _ = writeln!(std::io::stderr().lock(), "{}{msg}", self.prefix());
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
    /// Bytes sent on the network: block data and page requests by the
    /// source, digests and acknowledgements by the destination.
    pub wire_sent: AtomicU64,
    /// Bytes received from the network.
    pub wire_received: AtomicU64,
}

impl Stats {
    /// Add to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }
}

/// `1:02:03` or `2:03`.
fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

fn rate(bytes: u64, elapsed: Duration) -> String {
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

impl Reporter {
    /// Start reporting, unless `enabled` is false (quiet, or a `-P` server).
    pub fn start(log: &Log, stats: &Arc<Stats>, totals: Totals, enabled: bool) -> Reporter {
        let started = Instant::now();
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
        let tty = std::io::stderr().is_terminal();
        let every = if tty {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(5)
        };
        let thread = std::thread::spawn(move || {
            let mut last = (Instant::now(), 0u64);
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                let now = Instant::now();
                let done = stats.bytes_done.load(Relaxed);
                let recent = rate(done - last.1, now - last.0);
                last = (now, done);
                let line = progress_line(&stats, totals, now - started, &recent);
                if tty {
                    let _ = write!(std::io::stderr().lock(), "\r{}{line}\x1b[K", log.prefix());
                } else {
                    log.line(line);
                }
            }
            if tty {
                let _ = write!(std::io::stderr().lock(), "\r\x1b[K");
            }
        });
        Reporter {
            stop: Some(stop),
            thread: Some(thread),
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

fn progress_line(stats: &Stats, totals: Totals, elapsed: Duration, recent: &str) -> String {
    let blocks = stats.blocks_done.load(Relaxed);
    let bytes = stats.bytes_done.load(Relaxed);
    let percent = if totals.bytes == 0 {
        100.0
    } else {
        bytes as f64 * 100.0 / totals.bytes as f64
    };
    let mut line = format!(
        "{blocks}/{} blocks {percent:5.1}%  {} of {}  {recent}",
        totals.blocks,
        human_bytes(bytes),
        human_bytes(totals.bytes),
    );
    let secs = elapsed.as_secs_f64();
    if bytes > 0 && secs > 0.0 {
        let left = (totals.bytes.saturating_sub(bytes)) as f64 / (bytes as f64 / secs);
        let _ = write!(
            line,
            "  ETA {}",
            human_duration(Duration::from_secs_f64(left))
        );
    }
    line
}

/// Which end a summary describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Both ends on this machine.
    Local,
    /// The network end that reads and sends.
    Source,
    /// The network end that receives and writes.
    Destination,
}

/// The closing summary line.
pub fn summary(stats: &Stats, elapsed: Duration, side: Side) -> String {
    let get = |c: &AtomicU64| c.load(Relaxed);
    let done = get(&stats.bytes_done);
    let mut line = format!(
        "done: {} blocks ({}) in {} ({}): {} same, {} changed, {} zero; read {}",
        get(&stats.blocks_done),
        human_bytes(done),
        human_duration_precise(elapsed),
        rate(done, elapsed),
        get(&stats.same),
        get(&stats.changed),
        get(&stats.zero),
        human_bytes(get(&stats.bytes_read)),
    );
    if side == Side::Source {
        let sent = get(&stats.wire_sent);
        let changed = get(&stats.bytes_changed);
        let _ = write!(line, "; sent {} on the wire", human_bytes(sent));
        if changed > 0 && sent > 0 {
            let _ = write!(
                line,
                " for {} of changed data ({:.2}:1)",
                human_bytes(changed),
                changed as f64 / sent as f64
            );
        }
        return line;
    }
    let _ = write!(line, ", written {}", human_bytes(get(&stats.bytes_written)));
    let cleared = get(&stats.bytes_cleared);
    if cleared > 0 {
        let _ = write!(line, ", cleared {}", human_bytes(cleared));
    }
    if side == Side::Destination {
        let _ = write!(
            line,
            "; received {} of block data, sent {} of digests and acknowledgements",
            human_bytes(get(&stats.wire_received)),
            human_bytes(get(&stats.wire_sent))
        );
    }
    line
}

fn human_duration_precise(d: Duration) -> String {
    if d.as_secs() < 60 {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        human_duration(d)
    }
}

/// Human size with binary units and one decimal, e.g. `931.5 GiB`,
/// `4.0 MiB`; plain bytes below 1 KiB (`512 B`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut unit = 0;
    while unit + 1 < UNITS.len() && n >> (10 * (unit + 1)) > 0 {
        unit += 1;
    }
    if unit == 0 {
        return format!("{n} B");
    }
    // Integer tenths, rounded half up; u128 so that u64::MAX * 10 fits.
    let div = 1u128 << (10 * unit);
    let mut tenths = (u128::from(n) * 10 + div / 2) / div;
    // 1048575 B would otherwise print as "1024.0 KiB".
    if tenths >= 10240 && unit + 1 < UNITS.len() {
        unit += 1;
        tenths = (u128::from(n) * 10 + (div << 9)) / (div << 10);
    }
    format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_examples() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(4 << 20), "4.0 MiB");
        assert_eq!(human_bytes(10 << 30), "10.0 GiB");
        assert_eq!(human_bytes(1_953_525_168 * 512), "931.5 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
        // Rounding never shows 1024.0 of a unit.
        assert_eq!(human_bytes((1 << 20) - 1), "1.0 MiB");
        assert_eq!(human_bytes((1 << 20) - 52), "1023.9 KiB");
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_duration(Duration::from_secs(62)), "1:02");
        assert_eq!(human_duration(Duration::from_secs(3723)), "1:02:03");
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
        let line = progress_line(&stats, totals, Duration::from_secs(5), "1.0 MiB/s");
        assert!(line.starts_with("5/10 blocks  50.0%"), "{line}");
        assert!(line.contains("ETA 0:05"), "{line}");
    }

    #[test]
    fn summary_names_every_class() {
        let stats = Stats::default();
        Stats::add(&stats.blocks_done, 3);
        Stats::add(&stats.same, 1);
        Stats::add(&stats.changed, 1);
        Stats::add(&stats.zero, 1);
        let s = summary(&stats, Duration::from_secs(1), Side::Local);
        assert!(s.contains("1 same, 1 changed, 1 zero"), "{s}");
        assert!(s.contains("written 0 B"), "{s}");
    }
}
