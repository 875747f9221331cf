//! `-auto`: measure the link and this machine, then choose `-b`, `-w`,
//! `-prefetch` and `-L` for an upload to a running server (`-r`).
//!
//! The probe takes a few hundred milliseconds at most and happens on the
//! session's first connection, after the server's `Challenge` and before
//! the client's `Hello` (which carries the block size and the lane count,
//! so the choice must come first):
//!
//! - round-trip time: the TCP connect, and three empty `Probe` frames,
//!   each answered at once (the least of them);
//! - throughput: a burst of full `Probe` frames (256 KiB, then one sized to
//!   take about 150 ms at the first estimate, 1 to 16 MiB), timed until the
//!   answer to an empty `Probe` behind it comes back, less one round trip;
//! - compression: 32 pieces of 64 KiB spread over the source (all-zero
//!   pieces left out: bsync sends those as markers), compressed at
//!   `-L default`, and at the other levels only if the link turns out to
//!   be the bottleneck.
//!
//! [`choose`] turns that into settings, and is a pure function so that its
//! rules are tested on their own. The model: moving one byte of changed
//! source data costs `ratio / throughput` seconds on the wire and
//! `1 / (speed × workers)` of compression; the slower of the two sets the
//! pace. Unless the link is clearly the bottleneck (twice as slow as one
//! worker compressing at the default level), the defaults stay: that is
//! where they were tuned (loopback, `benches/BENCHMARKS.md`). Otherwise the
//! level and worker count with the lowest cost win (a higher level or more
//! workers only if that saves at least 3 %), blocks shrink so that one
//! takes about 100 ms on the wire (1 MiB to the default), and the prefetch
//! queue covers twice the bandwidth-delay product.

use std::time::{Duration, Instant};

use crate::compress::{Compressor, Level};
use crate::config::Transfer;
use crate::disk::Disk;
use crate::error::Result;
use crate::net::Lane;
use crate::proto::{self, Frame};
use crate::session;

/// One compression level as measured on samples of the source.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// The level.
    pub level: Level,
    /// Source bytes per second on one core.
    pub speed: f64,
    /// Compressed size over raw size (at most 1: bsync sends raw data when
    /// compression does not help).
    pub ratio: f64,
}

/// What the probe measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    /// Round-trip time.
    pub rtt: Duration,
    /// Bytes per second from here to the server.
    pub throughput: f64,
    /// CPUs this process may use.
    pub cores: usize,
    /// The levels measured; `-L default` first. Empty when the sample was
    /// all zeros (or the source empty).
    pub levels: Vec<Sample>,
}

/// What [`choose`] picked, and the one line that says why.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    /// The settings to run with.
    pub transfer: Transfer,
    /// `auto: ...`, for the log.
    pub why: String,
}

/// Most workers `-auto` picks: more lanes than that have not paid off on
/// any link measured here.
const MAX_WORKERS: usize = 4;
/// Smallest block `-auto` picks.
const MIN_BLOCK: usize = 1 << 20;
/// How long one block should take on the wire, at most.
const BLOCK_TIME: f64 = 0.1;
/// A more expensive setting must save this share of the time to be taken.
const WORTH: f64 = 0.97;
/// The defaults stay unless the link takes this many times longer than one
/// core compressing at the default level: the probe's small frames
/// understate a fast link, and near the crossing the defaults lose little.
const MARGIN: f64 = 2.0;
/// Largest prefetch queue `-auto` picks.
const MAX_PREFETCH: usize = 256;

/// Settings for the link and machine `m` describes, starting from the
/// defaults `t` (whose skip and block size are the starting point).
pub fn choose(m: &Measured, t: &Transfer) -> Choice {
    // -bwlimit is the link's ceiling: the rest is chosen for that rate.
    let limit = t.bwlimit.map(|b| b as f64).filter(|&b| b < m.throughput);
    let link = format!(
        "round trip {:.2} ms, link {}{}",
        m.rtt.as_secs_f64() * 1e3,
        rate(m.throughput),
        limit.map_or(String::new(), |b| format!(
            " held to {} by -bwlimit",
            rate(b)
        ))
    );
    let keep = |why: String| Choice {
        transfer: *t,
        why: format!("auto: {link}, {why}: keeping the defaults {}", settings(t)),
    };
    let Some(default) = m.levels.iter().find(|s| s.level == Level::Default) else {
        return keep("nothing to compress in the sample".into());
    };
    let throughput = limit.unwrap_or(m.throughput).max(1.0);
    let wire = |s: &Sample| s.ratio / throughput;
    let cpu = |s: &Sample, w: usize| 1.0 / (s.speed.max(1.0) * w as f64);
    if wire(default) < cpu(default, 1) * MARGIN {
        let zstd = format!(
            "zstd {:.0} MB/s per core ({})",
            default.speed / 1e6,
            ratio(default.ratio)
        );
        // Name the slower of the two, as it is.
        return keep(if wire(default) <= cpu(default, 1) {
            format!("{zstd} is the bottleneck")
        } else {
            format!("the link is the bottleneck, by less than {MARGIN:.0}x against {zstd}")
        });
    }
    let cost = |s: &Sample, w: usize| wire(s).max(cpu(s, w));
    let max_workers = m.cores.clamp(1, MAX_WORKERS);
    // Cheapest first: lower levels, then fewer workers; a later candidate
    // must beat the best so far by WORTH.
    let mut levels: Vec<&Sample> = m.levels.iter().collect();
    levels.sort_by_key(|s| crate::compress::zstd_level(s.level));
    let mut best = (default, 1, cost(default, 1));
    for s in levels {
        for w in 1..=max_workers {
            let c = cost(s, w);
            if c < best.2 * WORTH {
                best = (s, w, c);
            }
        }
    }
    let (sample, workers, _) = best;
    let block = block_for(throughput, t.block_size);
    let bdp = throughput * m.rtt.as_secs_f64();
    let prefetch = whole((2.0 * bdp / block as f64).ceil())
        .max(workers * 4)
        .min(MAX_PREFETCH);
    let transfer = Transfer {
        block_size: block,
        compression: Some(sample.level),
        workers,
        prefetch,
        ..*t
    };
    let levels: Vec<String> = m
        .levels
        .iter()
        .map(|s| {
            format!(
                "{} {:.0} MB/s ({})",
                level_name(s.level),
                s.speed / 1e6,
                ratio(s.ratio)
            )
        })
        .collect();
    Choice {
        transfer,
        why: format!(
            "auto: {link}, zstd per core {}: the link is the bottleneck, so {}",
            levels.join(", "),
            settings(&transfer)
        ),
    }
}

/// A power of two that takes about [`BLOCK_TIME`] on the wire, between
/// [`MIN_BLOCK`] and `default`.
fn block_for(throughput: f64, default: usize) -> usize {
    let want = whole(throughput * BLOCK_TIME);
    let mut b = MIN_BLOCK;
    while b * 2 <= want && b * 2 <= default {
        b *= 2;
    }
    b.min(default.max(MIN_BLOCK))
}

/// A measured quantity as a count. Float-to-integer `as` saturates (and
/// takes NaN to 0), which is what a rate far off the scale should do.
#[allow(clippy::cast_possible_truncation)]
fn whole(x: f64) -> usize {
    x as usize
}

fn settings(t: &Transfer) -> String {
    format!(
        "-b {} -w {} -prefetch {} -L {}",
        crate::progress::human_bytes(t.block_size as u64).replace(' ', ""),
        t.workers,
        t.prefetch,
        t.compression.map_or("none", level_name)
    )
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::Fast => "fast",
        Level::Default => "default",
        Level::Better => "better",
        Level::Best => "best",
    }
}

/// A compressed-over-raw ratio as the summary writes it: raw over sent,
/// `2.13:1` (`1.00:1` for data that does not compress).
fn ratio(compressed_over_raw: f64) -> String {
    format!("{:.2}:1", 1.0 / compressed_over_raw.max(1e-3))
}

/// Bytes per second as `12.3 MB/s (98 Mbit/s)`.
fn rate(bytes_per_s: f64) -> String {
    format!(
        "{:.1} MB/s ({:.0} Mbit/s)",
        bytes_per_s / 1e6,
        bytes_per_s * 8.0 / 1e6
    )
}

/// Measure and choose: the link on `lane` (the session's first connection,
/// after the `Challenge`; `connected` is how long its TCP connect took),
/// compression on samples of `source`. `t` are the defaults.
pub fn tune(
    lane: &mut Lane,
    peer: &str,
    connected: Duration,
    source: &Disk,
    t: &Transfer,
) -> Result<Choice> {
    let (rtt, throughput) = probe_link(lane, peer, connected)?;
    let pieces = sample(source);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let mut m = Measured {
        rtt,
        throughput,
        cores,
        levels: Vec::new(),
    };
    if !pieces.is_empty() {
        m.levels.push(measure(&pieces, Level::Default));
        let d = m.levels[0];
        // The other levels matter only when the link is the bottleneck.
        if d.ratio / throughput.max(1.0) >= MARGIN / d.speed.max(1.0) {
            for level in [Level::Fast, Level::Better, Level::Best] {
                m.levels.push(measure(&pieces, level));
            }
        }
    }
    Ok(choose(&m, t))
}

/// Round-trip time and throughput to the server, with `Probe` frames.
fn probe_link(lane: &mut Lane, peer: &str, connected: Duration) -> Result<(Duration, f64)> {
    let mut rtt = connected;
    for _ in 0..3 {
        let t0 = Instant::now();
        ping(lane, peer)?;
        rtt = rtt.min(t0.elapsed());
    }
    let mut size = 256 << 10;
    let mut throughput = 0.0;
    for _ in 0..2 {
        let t0 = Instant::now();
        burst(lane, size)?;
        ping(lane, peer)?;
        let secs = t0.elapsed().saturating_sub(rtt).as_secs_f64().max(1e-6);
        throughput = size as f64 / secs;
        size = whole(throughput * 0.15).clamp(1 << 20, 16 << 20);
    }
    Ok((rtt, throughput))
}

/// An empty `Probe`, and its answer.
fn ping(lane: &mut Lane, peer: &str) -> Result<()> {
    lane.sender.send_frame(&Frame::Probe(&[]))?;
    match lane.reader.read("the server's answer to a probe")? {
        Frame::Probe([]) => Ok(()),
        other => Err(session::unexpected(peer, &other)),
    }
}

/// `size` bytes of random data in full `Probe` frames, written at once.
fn burst(lane: &mut Lane, size: usize) -> Result<()> {
    let mut payload = vec![0u8; proto::HANDSHAKE_MAX];
    fastrand::fill(&mut payload);
    let mut frames = Vec::with_capacity(size + size / proto::HANDSHAKE_MAX * proto::HEADER_LEN);
    let mut sent = 0;
    while sent < size {
        proto::encode(&Frame::Probe(&payload), &mut frames);
        sent += payload.len();
    }
    lane.sender.send(&mut frames)
}

/// Pieces of 64 KiB spread over the source, all-zero ones left out.
fn sample(source: &Disk) -> Vec<Vec<u8>> {
    const PIECE: u64 = 64 << 10;
    const PIECES: u64 = 32;
    let size = source.size();
    let mut out = Vec::new();
    for i in 0..PIECES {
        let at = (size / PIECES * i) & !4095;
        if at >= size {
            break;
        }
        let len = usize::try_from(PIECE.min(size - at)).unwrap_or(0);
        let mut buf = vec![0u8; len];
        let Ok(n) = source.read_at(&mut buf, at) else {
            continue;
        };
        buf.truncate(n);
        if buf.iter().any(|&b| b != 0) {
            out.push(buf);
        }
    }
    out
}

/// Compress `pieces` one by one at `level`, as blocks are.
fn measure(pieces: &[Vec<u8>], level: Level) -> Sample {
    let mut c = Compressor::new(Some(level));
    let mut out = Vec::new();
    let (mut raw, mut packed) = (0usize, 0usize);
    let t0 = Instant::now();
    for p in pieces {
        out.clear();
        c.append(std::iter::once(p.as_slice()), &mut out);
        raw += p.len();
        packed += out.len();
    }
    let secs = t0.elapsed().as_secs_f64().max(1e-6);
    Sample {
        level,
        speed: raw as f64 / secs,
        ratio: packed as f64 / raw.max(1) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Transfer {
        Transfer {
            block_size: 10 << 20,
            skip: 3,
            compression: Some(Level::Default),
            workers: 1,
            prefetch: 4,
            bwlimit: None,
        }
    }

    /// zstd on ext4-like data, roughly as measured on this machine's cores.
    fn levels() -> Vec<Sample> {
        vec![
            Sample {
                level: Level::Default,
                speed: 400e6,
                ratio: 0.40,
            },
            Sample {
                level: Level::Fast,
                speed: 600e6,
                ratio: 0.45,
            },
            Sample {
                level: Level::Better,
                speed: 120e6,
                ratio: 0.36,
            },
            Sample {
                level: Level::Best,
                speed: 60e6,
                ratio: 0.34,
            },
        ]
    }

    fn measured(rtt_ms: f64, mbit: f64) -> Measured {
        Measured {
            rtt: Duration::from_secs_f64(rtt_ms / 1e3),
            throughput: mbit * 1e6 / 8.0,
            cores: 2,
            levels: levels(),
        }
    }

    #[test]
    fn loopback_keeps_the_defaults() {
        let c = choose(&measured(0.03, 20_000.0), &defaults());
        assert_eq!(c.transfer, defaults());
        assert!(c.why.contains("keeping the defaults"), "{}", c.why);
        assert!(c.why.contains("bottleneck"), "{}", c.why);
    }

    #[test]
    fn slow_link_compresses_harder_with_smaller_blocks() {
        let c = choose(&measured(0.1, 100.0), &defaults());
        let t = c.transfer;
        assert_eq!(t.compression, Some(Level::Best), "{}", c.why);
        assert_eq!(t.block_size, 1 << 20);
        assert_eq!(t.workers, 1, "one core keeps up with 100 Mbit/s at best");
        assert_eq!(t.skip, 3, "-s is the user's");
        assert!(c.why.contains("-L best"), "{}", c.why);
        assert!(c.why.contains("100 Mbit/s"), "{}", c.why);
    }

    /// Where one core at the best level cannot keep up with the link, a
    /// second worker is worth it.
    #[test]
    fn a_link_faster_than_one_core_gets_workers() {
        // 75 MB/s: faster than one core at the higher levels.
        let mut m = measured(0.1, 600.0);
        m.cores = 4;
        let c = choose(&m, &defaults());
        let t = c.transfer;
        assert!(
            matches!(t.compression, Some(Level::Better | Level::Best)),
            "{}",
            c.why
        );
        assert!(t.workers >= 2, "{}", c.why);
        assert_eq!(t.block_size, 4 << 20, "{}", c.why);
        // With one core, the higher levels cannot keep up: default stays.
        m.cores = 1;
        let c = choose(&m, &defaults());
        assert_eq!(c.transfer.workers, 1);
    }

    #[test]
    fn long_fat_links_get_a_deeper_queue() {
        let c = choose(&measured(200.0, 100.0), &defaults());
        // 2 × 12.5 MB/s × 0.2 s = 5 MB in flight: five 1 MiB blocks at least.
        assert!(c.transfer.prefetch >= 5, "{}", c.why);
        assert!(c.transfer.prefetch <= MAX_PREFETCH);
    }

    /// Near the crossing (the probe's small frames understate fast links)
    /// the defaults stay.
    #[test]
    fn a_link_barely_slower_than_zstd_keeps_the_defaults() {
        // Default level: 0.40 / 150 MB/s on the wire, 1 / 400 MB/s of CPU.
        let c = choose(&measured(0.05, 1200.0), &defaults());
        assert_eq!(c.transfer, defaults(), "{}", c.why);
        // Issue 19, item 3: and the line says the link is the slower.
        assert!(
            c.why
                .contains("the link is the bottleneck, by less than 2x"),
            "{}",
            c.why
        );
        assert!(!c.why.contains("is the bottleneck: keeping"), "{}", c.why);
    }

    /// Issue 19, item 3: -bwlimit is the link's ceiling, and the ratio is
    /// written as the summary writes it.
    #[test]
    fn bwlimit_is_the_links_ceiling() {
        let mut t = defaults();
        t.bwlimit = Some(5 << 20);
        let c = choose(&measured(0.03, 20_000.0), &t);
        assert!(
            c.why.contains("held to 5.2 MB/s (42 Mbit/s) by -bwlimit"),
            "{}",
            c.why
        );
        assert!(
            c.why.contains("the link is the bottleneck, so"),
            "{}",
            c.why
        );
        assert_eq!(c.transfer.compression, Some(Level::Best), "{}", c.why);
        assert_eq!(c.transfer.bwlimit, Some(5 << 20));
        assert!(c.why.contains("best 60 MB/s (2.94:1)"), "{}", c.why);
        let c = choose(&measured(0.03, 20_000.0), &defaults());
        assert!(c.why.contains("(2.50:1) is the bottleneck"), "{}", c.why);
        assert!(!c.why.contains("ratio"), "{}", c.why);
    }

    #[test]
    fn all_zero_sample_keeps_the_defaults() {
        let mut m = measured(0.1, 100.0);
        m.levels.clear();
        let c = choose(&m, &defaults());
        assert_eq!(c.transfer, defaults());
        assert!(c.why.contains("nothing to compress"), "{}", c.why);
    }

    #[test]
    fn block_sizes_are_powers_of_two_within_bounds() {
        assert_eq!(block_for(1.0, 10 << 20), 1 << 20);
        assert_eq!(block_for(12.5e6, 10 << 20), 1 << 20);
        assert_eq!(block_for(50e6, 10 << 20), 4 << 20);
        assert_eq!(block_for(1e12, 10 << 20), 8 << 20);
        assert_eq!(block_for(1e12, 512 << 10), 1 << 20);
    }

    #[test]
    fn compression_is_measured_on_real_bytes() {
        let text: Vec<u8> = (0..64 << 10).map(|i| b"abcdefgh"[i % 8]).collect();
        let s = measure(&[text], Level::Default);
        assert!(s.ratio < 0.1, "{s:?}");
        assert!(s.speed > 0.0);
    }
}
