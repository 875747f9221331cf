//! Dry sessions (`--compare`, `--write-patch`): the sink a dry source hands
//! every block to ([`DrySink`]), and what the destination learns about
//! what differs. It writes nothing and acknowledges empty blocks, so only
//! the source knows; the source's `Bye` carries its counts
//! (`proto::Tally`), and the destination checks them against the session
//! and counts them as its own, so that its summary and `--json` say what a
//! real run would change.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use super::Params;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::progress::Stats;
use crate::proto::Tally;
use crate::summary::Side;

/// What a dry run's source does with each block instead of sending its
/// changes (`--compare`, `--write-patch`). Called by the workers in any
/// block order, for every block, unchanged ones included.
pub trait DrySink: Sync {
    /// Block `index` of the source holds `data`, whose grains digest to
    /// `ours`; the destination's digest to `theirs`; `unreadable` are the
    /// byte ranges a rescue could not read (zeros in `data`). Returns
    /// whether the block differs and how many bytes of data (not zeros) it
    /// would send.
    fn block(
        &self,
        index: u64,
        data: &[u8],
        theirs: &[Digest],
        ours: &[Digest],
        unreadable: &[(usize, usize)],
    ) -> Result<(bool, u64)>;

    /// Both ends run in this process (a local `--compare` or
    /// `--write-patch`): the counters of the destination's end, so that the
    /// summary is of one local run, both ends' reads and no network.
    fn local(&self) -> Option<&Stats> {
        None
    }
}

/// Bytes of a block of `len` bytes in the ranges (`range` bytes each, the
/// last one short) whose digests differ between `ours` and `theirs`.
pub(super) fn differing_bytes(ours: &[Digest], theirs: &[Digest], range: usize, len: usize) -> u64 {
    ours.iter()
        .zip(theirs)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(j, _)| len.min((j + 1) * range).saturating_sub(j * range) as u64)
        .sum()
}

/// The source's tally, from the counters its dry blocks filled.
pub(super) fn tally(stats: &Stats) -> Tally {
    let get = |c: &AtomicU64| c.load(Relaxed);
    Tally {
        changed: get(&stats.changed),
        zero: get(&stats.zero),
        data_bytes: get(&stats.bytes_changed),
        zero_bytes: get(&stats.dry_zero_bytes),
    }
}

/// Check a tally the source of session `p` sent: it can name no more
/// blocks, nor bytes, than the session covered.
pub(super) fn check(peer: &str, p: &Params, t: Tally) -> Result<()> {
    let blocks = p.geo.blocks().saturating_sub(p.first);
    let bytes = p.geo.size.saturating_sub(p.geo.offset(p.first));
    if t.blocks() > blocks || t.bytes() > bytes {
        return Err(Error::protocol(
            peer,
            format!(
                "the dry run's tally names {} blocks and {} bytes in a session of {blocks} \
                 blocks and {bytes} bytes",
                t.blocks(),
                t.bytes()
            ),
        ));
    }
    Ok(())
}

/// Count the source's tally on the destination, whose own counters saw
/// every block acknowledged as the same.
pub(super) fn count(stats: &Stats, t: Tally) {
    let same = stats.same.load(Relaxed);
    stats.same.store(same.saturating_sub(t.blocks()), Relaxed);
    Stats::add(&stats.changed, t.changed);
    Stats::add(&stats.zero, t.zero);
    Stats::add(&stats.bytes_changed, t.data_bytes);
    Stats::add(&stats.dry_zero_bytes, t.zero_bytes);
}

/// After a session: count a dry session's `tally` on its destination,
/// and make a local dry run's counters (the sink says it is one) those of
/// one local run, with the destination's reads added and no network (the
/// socket pair between the two ends is none). Returns the side the
/// summary then describes, if not this end's role.
pub(super) fn settle(
    stats: &Stats,
    tally: Option<Tally>,
    sink: Option<&dyn DrySink>,
) -> Option<Side> {
    if let Some(t) = tally {
        count(stats, t);
    }
    let theirs = sink?.local()?;
    Stats::add(&stats.bytes_read, theirs.bytes_read.load(Relaxed));
    stats.wire_sent.store(0, Relaxed);
    stats.wire_received.store(0, Relaxed);
    Some(Side::Local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::Geometry;
    use std::time::Duration;

    #[test]
    fn differing_bytes_count_whole_ranges_and_a_short_last_one() {
        // Three ranges of 10 bytes over 25 bytes: the last one has 5.
        assert_eq!(differing_bytes(&[1, 2, 3], &[1, 2, 3], 10, 25), 0);
        assert_eq!(differing_bytes(&[1, 2, 3], &[9, 2, 9], 10, 25), 15);
        assert_eq!(differing_bytes(&[1], &[2], 10, 4), 4);
    }

    #[test]
    fn a_tally_moves_blocks_from_same_and_is_checked_against_the_session() {
        let stats = Stats::default();
        stats.same.store(8, Relaxed);
        let t = Tally {
            changed: 2,
            zero: 1,
            data_bytes: 100,
            zero_bytes: 50,
        };
        count(&stats, t);
        assert_eq!(tally(&stats), t);
        assert_eq!(stats.same.load(Relaxed), 5);

        let p = Params {
            geo: Geometry {
                size: 8 * 64,
                block_size: 64,
            },
            first: 2,
            salt: 0,
            compression: None,
            workers: 1,
            prefetch: 1,
            deadline: Duration::from_secs(1),
            encrypted: false,
            bwlimit: None,
        };
        assert!(check("peer", &p, t).is_ok());
        let too_many = Tally { changed: 7, ..t };
        assert!(check("peer", &p, too_many).is_err());
        let too_big = Tally {
            data_bytes: 6 * 64,
            ..t
        };
        assert!(check("peer", &p, too_big).is_err());
    }
}
