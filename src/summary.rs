//! The closing summary of a run: one line for the operator (which end,
//! what was the same, changed or zero, what was read, written and sent)
//! and, with `--json`, the same counters as one JSON object for scripts.

use std::fmt::Write as _;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::log::Log;
use crate::progress::{Stats, human_duration, rate};
use crate::units::{human_bytes, plural};

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

/// The closing summary line; `skipped` is `-s`.
pub fn summary(stats: &Stats, elapsed: Duration, side: Side, skipped: u64) -> String {
    let get = |c: &AtomicU64| c.load(Relaxed);
    let done = get(&stats.bytes_done);
    let blocks = get(&stats.blocks_done);
    let mut line = format!(
        "done: {blocks} {} ({}) in {} ({}): {} same, {} changed, {} zero",
        plural(blocks, "block"),
        human_bytes(done),
        human_duration_precise(elapsed),
        rate(done, elapsed),
        get(&stats.same),
        get(&stats.changed),
        get(&stats.zero),
    );
    if skipped > 0 {
        let _ = write!(
            line,
            "; blocks before {skipped} skipped (-s {skipped}), not verified"
        );
    }
    let by_map = get(&stats.skipped_by_map);
    if by_map > 0 {
        let _ = write!(line, "; {}", skipped_by_map(by_map));
    }
    let _ = write!(line, "; read {}", human_bytes(get(&stats.bytes_read)));
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
            "; received {} of blocks and page requests, sent {} of digests and acknowledgements",
            human_bytes(get(&stats.wire_received)),
            human_bytes(get(&stats.wire_sent))
        );
    }
    line
}

/// The closing summary as one JSON object (`--json`, on stdout): every
/// counter in plain numbers, for scripts. `dry`: nothing was written (a
/// compare or a patch); the counts then say what differs.
pub fn summary_json(
    stats: &Stats,
    elapsed: Duration,
    side: Side,
    skipped: u64,
    dry: bool,
) -> String {
    let get = |c: &AtomicU64| c.load(Relaxed);
    let side = match side {
        Side::Local => "local",
        Side::Source => "source",
        Side::Destination => "destination",
    };
    format!(
        "{{\"side\":\"{side}\",\"blocks\":{},\"bytes\":{},\"skipped\":{skipped},\
         \"same\":{},\"changed\":{},\"zero\":{},\"bytes_read\":{},\
         \"bytes_written\":{},\"bytes_cleared\":{},\"bytes_changed\":{},\
         \"wire_sent\":{},\"wire_received\":{},\"bytes_unreadable\":{},\"skipped_by_map\":{},\
         \"seconds\":{:.3},\"dry\":{dry},\"encrypted\":{},\"encryption\":\"{}\"}}",
        get(&stats.blocks_done),
        get(&stats.bytes_done),
        get(&stats.same),
        get(&stats.changed),
        get(&stats.zero),
        get(&stats.bytes_read),
        get(&stats.bytes_written),
        get(&stats.bytes_cleared),
        get(&stats.bytes_changed),
        get(&stats.wire_sent),
        get(&stats.wire_received),
        get(&stats.bytes_unreadable),
        get(&stats.skipped_by_map),
        elapsed.as_secs_f64(),
        stats.encryption.get().is_some(),
        stats.encryption.get().map_or("none", |e| e.name()),
    )
}

/// `destination b.img is 50 bytes, the source 40: a sync would truncate
/// it`: a dry run's word on a destination of another size (`what` names
/// it), whose blocks may all agree. A smaller `device` cannot grow: a sync
/// would refuse it. (A larger device is no difference: a sync leaves its
/// tail alone, see `Disk::report_excess`.)
pub fn resized(what: &str, have: u64, source: u64, device: bool) -> String {
    let change = change(have, source, device);
    format!("{what} is {have} bytes, the source {source}: a sync would {change}")
}

/// What a sync would do to a destination of `have` bytes (a `device` or
/// not) from a source of `source` bytes, in [`resized`]'s words.
fn change(have: u64, source: u64, device: bool) -> &'static str {
    if have > source {
        "truncate it"
    } else if device {
        REFUSE
    } else {
        "grow it"
    }
}

/// What a sync does to a device smaller than the source ([`resized`]).
const REFUSE: &str = "refuse it (a device cannot grow)";

/// The destination's and the source's sizes, and whether it is a device,
/// in a sentence of [`resized`], which a dry run's destination sends its
/// source as a `Notice`: how a `--compare` over the network learns that
/// the sizes differ (see `crate::proto`). `None` for any other text.
pub fn parse_resized(note: &str) -> Option<(u64, u64, bool)> {
    let (head, change) = note.rsplit_once(": a sync would ")?;
    let (head, source) = head.rsplit_once(" bytes, the source ")?;
    let (_, have) = head.rsplit_once(" is ")?;
    // As `resized` writes it: `parse` would also take a sign or zeros.
    let number = |s: &str| s.parse::<u64>().ok().filter(|n| n.to_string() == s);
    let (have, source) = (number(have)?, number(source)?);
    let device = have < source && change == REFUSE;
    (have != source && change == self::change(have, source, device))
        .then_some((have, source, device))
}

/// `3 blocks finished in the rescue map skipped, not verified`.
pub fn skipped_by_map(blocks: u64) -> String {
    format!(
        "{blocks} {} finished in the rescue map skipped, not verified",
        plural(blocks, "block")
    )
}

/// With `--json`, print the closing summary as a JSON object on stdout
/// (on stderr when stdout carries a patch, see [`json_to_stderr`]); the
/// line itself the caller prints, naming the destination. `dry`: a dry run.
pub fn report_json(
    log: &Log,
    stats: &Stats,
    elapsed: Duration,
    side: Side,
    skipped: u64,
    dry: bool,
) {
    if !log.json() {
        return;
    }
    let json = summary_json(stats, elapsed, side, skipped, dry);
    if JSON_TO_STDERR.load(Relaxed) {
        let _ = writeln!(std::io::stderr().lock(), "{json}");
    } else {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{json}");
        let _ = out.flush();
    }
}

/// stdout carries a patch: the `--json` summary goes to stderr instead.
static JSON_TO_STDERR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Say that stdout carries a patch (for [`report_json`]).
pub fn json_to_stderr() {
    JSON_TO_STDERR.store(true, Relaxed);
}

/// The summary of the destination end of a dry run (`--compare`,
/// `--write-patch`): what it read for the other end, what the source found
/// different (its `tally`; `None` from a source that does not send one),
/// and that it changed nothing.
pub fn dry_destination_summary(
    stats: &Stats,
    elapsed: Duration,
    tally: Option<crate::proto::Tally>,
) -> String {
    let get = |c: &AtomicU64| c.load(Relaxed);
    let blocks = get(&stats.blocks_done);
    let differ = match tally {
        None => "the client did not say what differs (a bsync older than this one)".to_string(),
        Some(t) if t.blocks() == 0 => "no block differs".to_string(),
        Some(t) => format!(
            "a sync would change {} {} ({}: {} of data, {} of zeros)",
            t.blocks(),
            plural(t.blocks(), "block"),
            human_bytes(t.bytes()),
            human_bytes(t.data_bytes),
            human_bytes(t.zero_bytes),
        ),
    };
    format!(
        "done: compared for the client (--compare or --write-patch): {blocks} {} ({}) \
         read and digested in {}; {differ}; nothing was changed here",
        plural(blocks, "block"),
        human_bytes(get(&stats.bytes_done)),
        human_duration_precise(elapsed),
    )
}

fn human_duration_precise(d: Duration) -> String {
    if d.as_secs() < 60 {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        human_duration(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resized_sentence_gives_back_its_sizes_and_nothing_else_does() {
        for (what, have, source) in [
            ("destination b.img (read only)", 50, 40),
            ("the destination", 0, 4096),
            (
                "destination /x is 9 bytes, the source 8: a sync would grow it",
                7,
                8,
            ),
            ("", u64::MAX, 0),
        ] {
            let note = resized(what, have, source, false);
            assert_eq!(parse_resized(&note), Some((have, source, false)), "{note}");
        }
        // A smaller device: a sync refuses it; a larger one it truncates not.
        let note = resized("destination /dev/loop0 (read only)", 3, 5, true);
        assert!(note.ends_with("a sync would refuse it (a device cannot grow)"));
        assert_eq!(parse_resized(&note), Some((3, 5, true)), "{note}");
        for note in [
            "source /dev/vda is mounted read-write",
            "d is 50 bytes, the source 40: a sync would grow it",
            "d is 40 bytes, the source 40: a sync would grow it",
            "d is +50 bytes, the source 40: a sync would truncate it",
            "d is 050 bytes, the source 40: a sync would truncate it",
            "d is 50 bytes, the source 40: a sync would truncate it!",
            "d is 50 bytes, the source 40: a sync would refuse it (a device cannot grow)",
            "d is  bytes, the source 40: a sync would grow it",
            "d is 99999999999999999999 bytes, the source 4: a sync would truncate it",
        ] {
            assert_eq!(parse_resized(note), None, "{note}");
        }
    }

    #[test]
    fn summary_names_every_class() {
        let stats = Stats::default();
        Stats::add(&stats.blocks_done, 3);
        Stats::add(&stats.same, 1);
        Stats::add(&stats.changed, 1);
        Stats::add(&stats.zero, 1);
        let s = summary(&stats, Duration::from_secs(1), Side::Local, 2);
        assert!(
            s.contains("1 same, 1 changed, 1 zero; blocks before 2 skipped (-s 2), not verified"),
            "{s}"
        );
        assert!(s.contains("written 0 B"), "{s}");
        let one = Stats::default();
        Stats::add(&one.blocks_done, 1);
        let s = summary(&one, Duration::from_secs(1), Side::Source, 0);
        assert!(s.starts_with("done: 1 block ("), "{s}");
    }
}
