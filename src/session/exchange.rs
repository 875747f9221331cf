//! The source role's decisions, without threads, frames or I/O: which
//! ranges of a block differ, what of a block is kept while the
//! destination's page digests travel, which pages change, and how much
//! may be outstanding on the link.
//!
//! A block whose ranges differ is kept as a [`Differing`]: only its
//! differing ranges' page digests, not the block's buffer, and their
//! bytes only where they cannot be read again ([`Keep`]): otherwise the
//! finisher reads the ranges back from the source when the destination's
//! page digests arrive, so what the source holds across a round trip is
//! 16 bytes per page that differs, and a long round trip does not stall
//! the comparison for want of memory. What it holds is counted as memory,
//! its buffers' capacity, and the buffers done with are kept for reuse
//! ([`Spares`]) only within the memory the flight budget leaves unused.

use std::time::{Duration, Instant};

use super::Content;
use crate::block::{Extent, ExtentKind, push_extent};
use crate::digest::Digest;
use crate::proto::{self, Change, ChangeKind};

/// Mark in `map` (a `Refine` bitmap, cleared first) every range whose
/// digest in `ours` differs from the one in `theirs` (as many of each), and
/// (`--rescue`) every range of `range` bytes that holds bytes of
/// `unreadable`, which only the page level can say; returns whether any
/// range is marked.
pub fn differing_ranges(
    ours: &[Digest],
    theirs: &[Digest],
    unreadable: &[(usize, usize)],
    range: usize,
    map: &mut Vec<u8>,
) -> bool {
    map.clear();
    map.resize(proto::bitmap_len(theirs.len()), 0);
    let mut differ = false;
    for (r, (mine, other)) in ours.iter().zip(theirs).enumerate() {
        let lost = proto::unreadable_mask(unreadable, r * range, (r + 1) * range) != 0;
        if mine != other || lost {
            map[r / 8] |= 1 << (r % 8);
            differ = true;
        }
    }
    differ
}

/// What a parked block keeps of its differing ranges besides their page
/// digests.
#[derive(Clone, Copy, Debug)]
pub enum Keep<'a> {
    /// Their bytes: a block that must not be read twice (`--rescue`, whose
    /// second read of a failing disk may not give what the first did).
    Bytes,
    /// Nothing: they are read back from the source once the destination's
    /// page digests arrive. These are the block's range digests as
    /// compared, which the verification digest took: should the source
    /// have changed in between, it is corrected ([`Differing::ranges_now`]).
    ReadBack(&'a [Digest]),
}

/// The differing ranges of a block, kept while their page digests are
/// asked for: the `Refine` bitmap, our page digests of the marked ranges
/// and (with [`Keep::Bytes`]) their bytes, packed in range order.
#[derive(Debug, Default)]
pub struct Differing {
    /// The `Refine` bitmap: the ranges asked about.
    pub ranges: Vec<u8>,
    /// Our page digests of the marked ranges, in order.
    pages: Vec<Digest>,
    /// The bytes of the marked ranges, packed; empty for a hole, whose
    /// bytes are all zeros, and for a block read back.
    data: Vec<u8>,
    /// [`Keep::ReadBack`]: the bytes are read back, and these are the
    /// block's range digests as compared, all of them.
    read_back: bool,
    compared: Vec<Digest>,
    /// Pages in the whole block.
    block_pages: usize,
    /// The block's length.
    len: usize,
    hole: bool,
    /// `--rescue`: the block's unreadable byte ranges, as the reader found
    /// them.
    unreadable: Vec<(usize, usize)>,
}

impl Differing {
    /// Keep the ranges of `content` marked in `ranges`, whose block has
    /// page digests `pages` (all of them) in pages of `page` bytes and the
    /// byte ranges `unreadable` that could not be read; their bytes as
    /// `how` says. `reuse` lends its buffers.
    pub fn keep(
        content: Content<'_>,
        pages: &[Digest],
        unreadable: &[(usize, usize)],
        ranges: Vec<u8>,
        page: usize,
        reuse: Differing,
        how: Keep<'_>,
    ) -> Differing {
        let Differing {
            pages: mut kept,
            mut data,
            mut compared,
            unreadable: mut lost,
            ..
        } = reuse;
        kept.clear();
        data.clear();
        compared.clear();
        lost.clear();
        lost.extend_from_slice(unreadable);
        let len = content.len();
        let bytes = match (content, how) {
            (Content::Bytes(bytes), Keep::Bytes) => Some(bytes),
            _ => None,
        };
        // What is held is about what `need` said: reserved once and
        // exactly, and a reused buffer much larger is shrunk, or a small
        // block would be charged a large one's memory and the budget
        // would park a few blocks per round trip.
        fit(
            &mut data,
            Differing::data_len(content, pages.len(), &ranges, page, how),
        );
        fit(&mut kept, Differing::pages_len(pages.len(), &ranges));
        let read_back = matches!((content, how), (Content::Bytes(_), Keep::ReadBack(_)));
        match how {
            Keep::ReadBack(all) if read_back => {
                fit(&mut compared, all.len());
                compared.extend_from_slice(all);
            }
            _ => fit(&mut compared, 0),
        }
        for r in marked(&ranges, pages.len()) {
            let span = proto::range_pages(r, pages.len());
            kept.extend_from_slice(&pages[span.clone()]);
            if let Some(bytes) = bytes {
                let end = (span.end * page).min(len);
                data.extend_from_slice(&bytes[span.start * page..end]);
            }
        }
        Differing {
            ranges,
            pages: kept,
            data,
            read_back,
            compared,
            block_pages: pages.len(),
            len,
            hole: matches!(content, Content::Hole(_)),
            unreadable: lost,
        }
    }

    /// The memory this holds, its buffers' capacity: what a parked block
    /// costs.
    pub fn bytes(&self) -> usize {
        self.data.capacity()
            + (self.pages.capacity() + self.compared.capacity()) * proto::DIGEST_LEN
    }

    /// The memory [`Differing::keep`] needs for the ranges marked in
    /// `ranges` of `content`, a block of `pages` pages of `page` bytes,
    /// kept as `how` says.
    pub fn need(
        content: Content<'_>,
        pages: usize,
        ranges: &[u8],
        page: usize,
        how: Keep<'_>,
    ) -> usize {
        let all = match (content, how) {
            (Content::Bytes(_), Keep::ReadBack(all)) => all.len(),
            _ => 0,
        };
        Differing::data_len(content, pages, ranges, page, how)
            + (Differing::pages_len(pages, ranges) + all) * proto::DIGEST_LEN
    }

    /// A block read back: the byte spans of its pages that differ from
    /// `theirs` (as [`Differing::changes`] finds them), runs of pages
    /// joined, into `spans`; returns their bytes. Read end to end into
    /// one buffer, they are the `data` that `changes` takes. None when the
    /// bytes are kept (or the block is a hole, all zeros).
    pub fn to_read(
        &self,
        theirs: &[Digest],
        page: usize,
        spans: &mut Vec<std::ops::Range<usize>>,
    ) -> usize {
        spans.clear();
        if !self.read_back {
            return 0;
        }
        let mut ours = self.pages.iter().zip(theirs);
        let mut total = 0;
        for r in marked(&self.ranges, self.block_pages) {
            for j in proto::range_pages(r, self.block_pages) {
                let Some((mine, other)) = ours.next() else {
                    return total;
                };
                let start = j * page;
                let span = start..(start + page).min(self.len);
                if mine == other && !self.lost(&span) {
                    continue;
                }
                total += span.len();
                match spans.last_mut() {
                    Some(last) if last.end == span.start => last.end = span.end,
                    _ => spans.push(span),
                }
            }
        }
        total
    }

    /// Whether any byte of `span` of the block could not be read.
    fn lost(&self, span: &std::ops::Range<usize>) -> bool {
        proto::unreadable_mask(&self.unreadable, span.start, span.end) != 0
    }

    /// The bytes of the marked ranges of `content` kept as `how` says
    /// (none for a hole, or a block read back).
    fn data_len(
        content: Content<'_>,
        pages: usize,
        ranges: &[u8],
        page: usize,
        how: Keep<'_>,
    ) -> usize {
        let (Content::Bytes(bytes), Keep::Bytes) = (content, how) else {
            return 0;
        };
        marked(ranges, pages)
            .map(|r| {
                let span = proto::range_pages(r, pages);
                (span.end * page).min(bytes.len()) - span.start * page
            })
            .sum()
    }

    /// The pages of the marked ranges.
    fn pages_len(pages: usize, ranges: &[u8]) -> usize {
        marked(ranges, pages)
            .map(|r| proto::range_pages(r, pages).len())
            .sum()
    }

    /// How many page digests the destination must answer with.
    pub fn asked(&self) -> usize {
        self.pages.len()
    }

    /// The kept bytes, packed: what [`Differing::changes`]' data extents
    /// point into (empty for a block read back, whose pages that differ
    /// are read into a buffer of the finisher's, [`Differing::to_read`]).
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The changes of this block, given `theirs`, the destination's page
    /// digests of the marked ranges ([`Differing::asked`] of them), and
    /// `data`, the marked ranges' bytes packed ([`Differing::data`]) or,
    /// for a block read back, its pages that differ packed
    /// ([`Differing::to_read`]): every page whose digest differs, as zeros or as data,
    /// and every page with unreadable bytes, as partly unreadable data.
    /// `extents` gets the writes, their `data` offsets into `data`.
    /// With `recheck` (a block read back), each changed page is digested
    /// as read now, and one that differs from the digest compared (the
    /// source changed in between) goes with the new digest, noted in
    /// `recheck`. Returns the bytes of data to send.
    pub fn changes(
        &self,
        data: &[u8],
        theirs: &[Digest],
        page: usize,
        changes: &mut Vec<Change>,
        extents: &mut Vec<Extent>,
        mut recheck: Option<&mut Recheck<'_>>,
    ) -> usize {
        changes.clear();
        extents.clear();
        let mut raw = 0usize;
        let mut ours = self.pages.iter().zip(theirs).enumerate();
        let mut at = 0usize;
        for r in marked(&self.ranges, self.block_pages) {
            for j in proto::range_pages(r, self.block_pages) {
                let start = j * page;
                let n = (start + page).min(self.len) - start;
                let here = at;
                at += n;
                let Some((k, (mine, other))) = ours.next() else {
                    return raw;
                };
                let lost = proto::unreadable_mask(&self.unreadable, start, start + n);
                if mine == other && lost == 0 {
                    if self.read_back {
                        at = here; // Not read back: nothing of it in `data`.
                    }
                    continue;
                }
                let bytes = data.get(here..here + n).unwrap_or_default();
                let zero = self.hole || crate::block::is_zero(bytes);
                let mut mine = *mine;
                if let Some(recheck) = recheck.as_deref_mut() {
                    let now = (recheck.digest)(bytes);
                    if now != mine {
                        recheck.changed.push((k, now));
                        mine = now;
                    }
                }
                let (kind, ext) = if lost != 0 {
                    raw += n;
                    let (digest, unreadable) = (mine, lost);
                    (ChangeKind::Partial { digest, unreadable }, ExtentKind::Data)
                } else if zero {
                    (ChangeKind::Zero, ExtentKind::Zero)
                } else {
                    raw += n;
                    (ChangeKind::Data(mine), ExtentKind::Data)
                };
                changes.push(Change {
                    // A block has at most MAX_BLOCK_SIZE / PAGE pages.
                    page: u32::try_from(j).unwrap_or(u32::MAX),
                    kind,
                });
                push_extent(extents, start, n, ext, here);
            }
        }
        raw
    }

    /// A block read back: its range digests as they are now, given the
    /// pages [`Differing::changes`] found changed since the comparison
    /// (by their place among the kept pages, with their digest now).
    /// What the verification digest took at the comparison is
    /// `block_hash` of the range digests kept; this is what it must take
    /// instead.
    pub fn ranges_now(&self, changed: &[(usize, Digest)]) -> Vec<Digest> {
        let mut ranges = self.compared.clone();
        let mut changed = changed.iter().peekable();
        let mut at = 0usize;
        for r in marked(&self.ranges, self.block_pages) {
            let span = proto::range_pages(r, self.block_pages);
            let kept = at..at + span.len();
            at = kept.end;
            if changed.peek().is_none_or(|(k, _)| !kept.contains(k)) {
                continue;
            }
            let mut pages = self.pages.get(kept.clone()).unwrap_or_default().to_vec();
            while let Some((k, now)) = changed.next_if(|(k, _)| kept.contains(k)) {
                pages[k - kept.start] = *now;
            }
            if let Some(range) = ranges.get_mut(r) {
                *range = proto::range_digest(&pages);
            }
        }
        ranges
    }

    /// [`Keep::ReadBack`]: the block's range digests as compared.
    pub fn ranges_compared(&self) -> &[Digest] {
        &self.compared
    }
}

/// What [`Differing::changes`] digests a block read back with, and the
/// pages it found changed since the comparison.
pub struct Recheck<'a> {
    /// The digest of a page's bytes (the session's salt).
    pub digest: &'a dyn Fn(&[u8]) -> Digest,
    /// Pages whose digest now differs: their place among the kept pages,
    /// and the digest now.
    pub changed: Vec<(usize, Digest)>,
}

/// Make the empty `list` hold `need` items, with no more than a quarter
/// more room.
fn fit<T>(list: &mut Vec<T>, need: usize) {
    if list.capacity() > need + need / 4 {
        list.shrink_to(need);
    }
    list.reserve_exact(need);
}

/// Buffers that hold memory: what [`Spares`] keeps.
pub trait Held: Default {
    /// The memory held, the buffers' capacity.
    fn held(&self) -> usize;
}

impl Held for Differing {
    fn held(&self) -> usize {
        self.bytes()
    }
}

/// A finisher's buffer for a block's pages read back.
impl Held for Vec<u8> {
    fn held(&self) -> usize {
        self.capacity()
    }
}

/// Buffers done with ([`Differing`]s, read-back buffers), kept for reuse
/// so that parking or finishing a block costs no allocation, but only
/// within the memory left: their bytes never exceed the room given.
pub struct Spares<T> {
    list: Vec<T>,
    /// Bytes of the spares' buffers.
    bytes: usize,
}

impl<T> Default for Spares<T> {
    fn default() -> Spares<T> {
        Spares {
            list: Vec::new(),
            bytes: 0,
        }
    }
}

impl<T: Held> Spares<T> {
    /// A spare for `need` bytes: the smallest big enough, else the
    /// largest (which grows), else a new one; spares over `room` bytes
    /// (after this one is taken) go first.
    pub fn take(&mut self, need: usize, room: usize) -> T {
        let fits = (0..self.list.len())
            .filter(|&i| self.list[i].held() >= need)
            .min_by_key(|&i| self.list[i].held());
        let largest = (0..self.list.len()).max_by_key(|&i| self.list[i].held());
        let Some(i) = fits.or(largest) else {
            return T::default();
        };
        let spare = self.list.swap_remove(i);
        self.bytes -= spare.held();
        self.trim(room);
        spare
    }

    /// Keep `done` for reuse, and no more spares than `room` bytes.
    pub fn give(&mut self, done: T, room: usize) {
        self.bytes += done.held();
        self.list.push(done);
        self.trim(room);
    }

    /// Bytes of the spares' buffers.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Let the largest spares go until they hold at most `room` bytes.
    fn trim(&mut self, room: usize) {
        while self.bytes > room {
            let largest = (0..self.list.len()).max_by_key(|&i| self.list[i].held());
            let Some(i) = largest else { break };
            self.bytes -= self.list.swap_remove(i).held();
        }
    }
}

/// The ranges marked in `map` over a block of `pages` pages.
fn marked(map: &[u8], pages: usize) -> impl Iterator<Item = usize> + '_ {
    (0..proto::ranges(pages)).filter(move |&r| proto::marked(map, r))
}

/// The least a source keeps outstanding, in bytes, once the round trip
/// and the rate are measured.
pub const FLIGHT_FLOOR: u64 = 4 << 20;

/// How many bytes of outstanding work (changed data parked, or sent and
/// not acknowledged) keep a link busy: twice the bandwidth-delay product
/// of `rate` bytes per second over a round trip of `rtt`, as TCP sizes
/// its window, within `FLIGHT_FLOOR..=cap`. Until both are measured, all
/// of `cap`: the memory allows it, and a budget that started small and
/// grew with the rate it let through (TCP's slow start) would pay a
/// round trip per doubling on a long link, where it matters most.
pub fn flight_budget(rtt: Option<Duration>, rate: f64, cap: u64) -> u64 {
    let Some(rtt) = rtt.filter(|_| rate > 0.0) else {
        return cap;
    };
    let bdp = 2.0 * rate * rtt.as_secs_f64();
    // Non-negative and at most `cap`: the cast cannot truncate.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let bdp = bdp.clamp(0.0, cap as f64) as u64;
    bdp.clamp(FLIGHT_FLOOR.min(cap), cap)
}

/// A round-trip estimate: the smallest sample seen lately, so queueing
/// behind a busy peer does not inflate it for good.
#[derive(Clone, Copy, Debug, Default)]
pub struct RoundTrip {
    best: Option<Duration>,
    samples: u32,
}

impl RoundTrip {
    /// Forget the best sample after this many, so a link that got slower
    /// is measured again.
    const EPOCH: u32 = 64;

    /// Record one round trip.
    pub fn sample(&mut self, took: Duration) {
        self.samples += 1;
        if self.samples >= Self::EPOCH {
            self.samples = 0;
            self.best = Some(took);
        } else {
            self.best = Some(self.best.map_or(took, |b| b.min(took)));
        }
    }

    /// The estimate, once there is a sample.
    pub fn get(&self) -> Option<Duration> {
        self.best
    }
}

/// The highest rate seen over any span of about a round trip: how fast a
/// kind of work is taken on when the budget lets it. Measured as the peak,
/// not the mean, so that a budget that held the rate back doubles the next
/// round trip (twice the rate times the round trip), as TCP's slow start.
#[derive(Clone, Copy, Debug, Default)]
pub struct Meter {
    since: Option<Instant>,
    bytes: u64,
    peak: f64,
}

impl Meter {
    /// The shortest span a rate is measured over.
    const SPAN: Duration = Duration::from_millis(20);

    /// `bytes` more at `now`, the round trip being `rtt`.
    pub fn add(&mut self, bytes: u64, now: Instant, rtt: Option<Duration>) {
        let since = *self.since.get_or_insert(now);
        self.bytes += bytes;
        let took = now.saturating_duration_since(since);
        if took >= rtt.unwrap_or_default().max(Self::SPAN) {
            self.peak = self.peak.max(self.bytes as f64 / took.as_secs_f64());
            self.since = Some(now);
            self.bytes = 0;
        }
    }

    /// Bytes per second, the highest seen.
    pub fn peak(&self) -> f64 {
        self.peak
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 4;

    /// Page digests of hand-built bytes: each page's digest is its first
    /// byte plus one (zero pages digest to 1).
    fn digests(data: &[u8]) -> Vec<Digest> {
        data.chunks(PAGE).map(|p| u128::from(p[0]) + 1).collect()
    }

    #[test]
    fn only_the_ranges_that_differ_are_marked() {
        let ours = [1, 2, 3, 4, 5, 6, 7, 8, 9];
        let theirs = [1, 0, 3, 4, 5, 6, 7, 8, 0];
        let mut map = vec![0xff; 7];
        assert!(differing_ranges(&ours, &theirs, &[], 16 * 4096, &mut map));
        assert_eq!(map, [0b0000_0010, 0b0000_0001]);
        assert!(!differing_ranges(&ours, &ours, &[], 16 * 4096, &mut map));
        assert_eq!(map, [0, 0]);
    }

    /// A block of 40 pages of 4 bytes: ranges of 16, 16 and 8 pages.
    fn block() -> Vec<u8> {
        (0..40u8).flat_map(|p| [p + 10, 0, 0, 0]).collect()
    }

    #[test]
    fn a_differing_block_keeps_only_its_marked_ranges() {
        let data = block();
        let pages = digests(&data);
        // Ranges 0 and 2 differ; range 1 matched and is not kept.
        let kept = Differing::keep(
            Content::Bytes(&data),
            &pages,
            &[],
            vec![0b101],
            PAGE,
            Differing::default(),
            Keep::Bytes,
        );
        assert_eq!(kept.asked(), 16 + 8);
        assert_eq!(kept.data().len(), (16 + 8) * PAGE);
        assert_eq!(&kept.data()[..PAGE * 16], &data[..PAGE * 16]);
        assert_eq!(&kept.data()[PAGE * 16..], &data[PAGE * 32..]);
        assert_eq!(kept.bytes(), 24 * PAGE + 24 * 16);
    }

    #[test]
    fn a_kept_block_holds_what_need_said_and_its_reuse_no_more() {
        let data = block();
        let pages = digests(&data);
        let content = Content::Bytes(&data);
        let need = Differing::need(content, pages.len(), &[0b101], PAGE, Keep::Bytes);
        assert_eq!(need, 24 * PAGE + 24 * 16);
        let kept = Differing::keep(
            content,
            &pages,
            &[],
            vec![0b101],
            PAGE,
            Differing::default(),
            Keep::Bytes,
        );
        assert_eq!(kept.bytes(), need);
        // A spare about big enough is reused as it is, a much larger one
        // shrunk to what is kept; a hole keeps no bytes.
        let again = Differing::keep(content, &pages, &[], vec![0b101], PAGE, kept, Keep::Bytes);
        assert_eq!(again.bytes(), need);
        let small = Differing::keep(content, &pages, &[], vec![0b100], PAGE, again, Keep::Bytes);
        assert_eq!(small.bytes(), 8 * PAGE + 8 * 16);
        let hole = Content::Hole(data.len());
        assert_eq!(
            Differing::need(hole, pages.len(), &[0b101], PAGE, Keep::Bytes),
            24 * 16
        );
    }

    /// A spare that holds `bytes` bytes of data.
    fn spare(bytes: usize) -> Differing {
        let data = vec![1u8; bytes];
        let pages = digests(&data);
        let ranges = vec![0xff; proto::bitmap_len(proto::ranges(pages.len()))];
        let mut kept = Differing::keep(
            Content::Bytes(&data),
            &pages,
            &[],
            ranges,
            PAGE,
            Differing::default(),
            Keep::Bytes,
        );
        kept.pages = Vec::new();
        kept
    }

    #[test]
    fn spares_are_the_best_fit_and_never_more_than_the_room() {
        let mut spares = Spares::default();
        spares.give(spare(400), 1000);
        spares.give(spare(100), 1000);
        spares.give(spare(200), 1000);
        assert_eq!(spares.bytes(), 700);
        // The smallest that fits, and the rest trimmed to the room left.
        assert_eq!(spares.take(150, 1000).bytes(), 200);
        assert_eq!(spares.bytes(), 500);
        // None fits: the largest, to grow.
        assert_eq!(spares.take(999, 1000).bytes(), 400);
        // Over the room, the largest go first.
        spares.give(spare(400), 1000);
        spares.give(spare(300), 450);
        assert_eq!(spares.bytes(), 400, "100 and 300 kept, 400 let go");
        assert_eq!(spares.take(1, 0).bytes(), 100);
        assert_eq!(spares.bytes(), 0, "no room: the rest goes");
        assert_eq!(spares.take(1, 0).bytes(), 0, "none left: a new one");
    }

    #[test]
    fn changes_are_the_pages_whose_digests_differ_as_data_or_zeros() {
        let mut data = block();
        data[33 * PAGE] = 0; // page 33 becomes a zero page
        let pages = digests(&data);
        let kept = Differing::keep(
            Content::Bytes(&data),
            &pages,
            &[],
            vec![0b101],
            PAGE,
            Differing::default(),
            Keep::Bytes,
        );
        // The destination's digests of ranges 0 and 2: pages 3 and 4 and
        // 33 differ.
        let mut theirs: Vec<Digest> = pages[..16].iter().chain(&pages[32..]).copied().collect();
        theirs[3] = 0;
        theirs[4] = 0;
        theirs[16 + 1] = 0;
        let (mut changes, mut extents) = (Vec::new(), Vec::new());
        let raw = kept.changes(kept.data(), &theirs, PAGE, &mut changes, &mut extents, None);
        assert_eq!(raw, 2 * PAGE, "two pages of data, one of zeros");
        let found: Vec<_> = changes.iter().map(|c| (c.page, c.kind)).collect();
        assert_eq!(
            found,
            [
                (3, ChangeKind::Data(pages[3])),
                (4, ChangeKind::Data(pages[4])),
                (33, ChangeKind::Zero),
            ]
        );
        // Pages 3 and 4 are one write, from the packed bytes.
        assert_eq!(extents[0].start, 3 * PAGE);
        assert_eq!(extents[0].len, 2 * PAGE);
        assert_eq!(extents[0].kind, ExtentKind::Data);
        let d = extents[0].data;
        assert_eq!(&kept.data()[d..d + 2 * PAGE], &data[3 * PAGE..5 * PAGE]);
        assert_eq!(
            (extents[1].start, extents[1].kind),
            (33 * PAGE, ExtentKind::Zero)
        );
    }

    #[test]
    fn a_block_read_back_keeps_digests_only_and_reads_the_pages_that_differ() {
        let mut data = block();
        data[33 * PAGE] = 0; // page 33 is a zero page
        let pages = digests(&data);
        let mut ranges = Vec::new();
        proto::range_digests(&pages, &mut ranges);
        let content = Content::Bytes(&data);
        let how = Keep::ReadBack(&ranges);
        // Ranges 0 and 2: their 24 page digests and the 3 range digests.
        let need = Differing::need(content, pages.len(), &[0b101], PAGE, how);
        assert_eq!(need, (24 + 3) * 16);
        let kept = Differing::keep(
            content,
            &pages,
            &[],
            vec![0b101],
            PAGE,
            Differing::default(),
            how,
        );
        assert!(kept.data().is_empty());
        assert_eq!(kept.bytes(), need);
        // The destination's pages 3, 4 and 33 differ: those are read back,
        // pages 3 and 4 in one read.
        let mut theirs: Vec<Digest> = pages[..16].iter().chain(&pages[32..]).copied().collect();
        theirs[3] = 0;
        theirs[4] = 0;
        theirs[16 + 1] = 0;
        let mut spans = Vec::new();
        assert_eq!(kept.to_read(&theirs, PAGE, &mut spans), 3 * PAGE);
        assert_eq!(spans, [3 * PAGE..5 * PAGE, 33 * PAGE..34 * PAGE]);
        let read = |data: &[u8]| -> Vec<u8> {
            spans
                .iter()
                .flat_map(|s| data[s.clone()].to_vec())
                .collect()
        };
        let digest = |bytes: &[u8]| digests(bytes)[0];
        let mut recheck = Recheck {
            digest: &digest,
            changed: Vec::new(),
        };
        let (mut changes, mut extents) = (Vec::new(), Vec::new());
        let back = read(&data);
        let raw = kept.changes(
            &back,
            &theirs,
            PAGE,
            &mut changes,
            &mut extents,
            Some(&mut recheck),
        );
        assert_eq!(raw, 2 * PAGE);
        let found: Vec<_> = changes.iter().map(|c| (c.page, c.kind)).collect();
        assert_eq!(
            found,
            [
                (3, ChangeKind::Data(pages[3])),
                (4, ChangeKind::Data(pages[4])),
                (33, ChangeKind::Zero),
            ]
        );
        // Offsets into what was read back, not into the ranges.
        assert_eq!((extents[0].start, extents[0].data), (3 * PAGE, 0));
        assert_eq!((extents[1].start, extents[1].data), (33 * PAGE, 2 * PAGE));
        assert!(recheck.changed.is_empty(), "unchanged since compared");
        // Page 4 changed since: it goes as it is now, and the block's
        // range digests are what they are now.
        let mut now = data.clone();
        now[4 * PAGE] = 99;
        let back = read(&now);
        kept.changes(
            &back,
            &theirs,
            PAGE,
            &mut changes,
            &mut extents,
            Some(&mut recheck),
        );
        assert_eq!(changes[1].kind, ChangeKind::Data(100));
        assert_eq!(recheck.changed, [(4, 100)]);
        let mut want = Vec::new();
        proto::range_digests(&digests(&now), &mut want);
        assert_eq!(kept.ranges_now(&recheck.changed), want);
        assert_eq!(kept.ranges_compared(), &ranges[..]);
    }

    #[test]
    fn a_hole_keeps_no_bytes_and_changes_only_to_zeros() {
        let zero = digests(&[0; PAGE])[0];
        let pages = vec![zero; 20];
        let kept = Differing::keep(
            Content::Hole(20 * PAGE),
            &pages,
            &[],
            vec![0b11],
            PAGE,
            Differing::default(),
            Keep::Bytes,
        );
        assert!(kept.data().is_empty());
        let mut theirs = pages.clone();
        theirs[17] = 9;
        let (mut changes, mut extents) = (Vec::new(), Vec::new());
        assert_eq!(
            kept.changes(kept.data(), &theirs, PAGE, &mut changes, &mut extents, None),
            0
        );
        assert_eq!(
            changes,
            [Change {
                page: 17,
                kind: ChangeKind::Zero
            }]
        );
    }

    #[test]
    fn a_short_last_page_is_kept_and_changed_at_its_length() {
        let data: Vec<u8> = (1..=10).collect(); // pages of 4, 4, 2
        let pages = digests(&data);
        let kept = Differing::keep(
            Content::Bytes(&data),
            &pages,
            &[],
            vec![1],
            PAGE,
            Differing::default(),
            Keep::Bytes,
        );
        assert_eq!(kept.data(), &data[..]);
        let theirs = [pages[0], pages[1], 0];
        let (mut changes, mut extents) = (Vec::new(), Vec::new());
        assert_eq!(
            kept.changes(kept.data(), &theirs, PAGE, &mut changes, &mut extents, None),
            2
        );
        assert_eq!(
            (extents[0].start, extents[0].len, extents[0].data),
            (8, 2, 8)
        );
    }

    #[test]
    fn unreadable_bytes_mark_their_range_and_page_even_where_digests_agree() {
        let data = block();
        let pages = digests(&data);
        let mut ranges = Vec::new();
        proto::range_digests(&pages, &mut ranges);
        // Two bytes of page 20 (range 1) could not be read.
        let lost = [(20 * PAGE + 1, 2)];
        let mut map = Vec::new();
        assert!(!differing_ranges(
            &ranges,
            &ranges,
            &[],
            16 * PAGE,
            &mut map
        ));
        assert!(differing_ranges(
            &ranges,
            &ranges,
            &lost,
            16 * PAGE,
            &mut map
        ));
        assert_eq!(map, [0b010]);
        let kept = Differing::keep(
            Content::Bytes(&data),
            &pages,
            &lost,
            map,
            PAGE,
            Differing::default(),
            Keep::Bytes,
        );
        let (mut changes, mut extents) = (Vec::new(), Vec::new());
        let raw = kept.changes(
            kept.data(),
            &pages[16..32],
            PAGE,
            &mut changes,
            &mut extents,
            None,
        );
        assert_eq!(raw, PAGE);
        assert_eq!(
            changes,
            [Change {
                page: 20,
                kind: ChangeKind::Partial {
                    digest: pages[20],
                    unreadable: proto::unreadable_mask(&lost, 20 * PAGE, 21 * PAGE)
                }
            }]
        );
    }

    #[test]
    fn the_budget_is_twice_the_bandwidth_delay_product_within_bounds() {
        let cap = 64 << 20;
        // Not measured yet: all the memory allows.
        assert_eq!(flight_budget(None, 1e9, cap), cap);
        // 100 MB/s over 100 ms: 10 MB in flight, twice that budgeted.
        let rtt = Some(Duration::from_millis(100));
        assert_eq!(flight_budget(rtt, 0.0, cap), cap);
        assert_eq!(flight_budget(rtt, 100e6, cap), 20_000_000);
        assert_eq!(flight_budget(rtt, 1e12, cap), cap);
        assert_eq!(flight_budget(rtt, 1.0, cap), FLIGHT_FLOOR);
        assert_eq!(flight_budget(rtt, 1e12, 1 << 20), 1 << 20);
    }

    #[test]
    fn the_rate_is_the_peak_over_a_round_trip() {
        let mut m = Meter::default();
        let t = Instant::now();
        let rtt = Some(Duration::from_millis(100));
        m.add(1000, t, rtt);
        m.add(1000, t + Duration::from_millis(50), rtt);
        assert_eq!(m.peak(), 0.0, "not a round trip yet");
        m.add(8000, t + Duration::from_millis(100), rtt);
        assert_eq!(m.peak(), 100_000.0);
        // A slower span leaves the peak.
        m.add(10, t + Duration::from_millis(300), rtt);
        assert_eq!(m.peak(), 100_000.0);
        m.add(100_000, t + Duration::from_millis(400), rtt);
        assert_eq!(m.peak(), 1_000_000.0);
    }

    #[test]
    fn the_round_trip_is_the_smallest_recent_sample() {
        let mut rt = RoundTrip::default();
        assert_eq!(rt.get(), None);
        for ms in [30, 10, 50] {
            rt.sample(Duration::from_millis(ms));
        }
        assert_eq!(rt.get(), Some(Duration::from_millis(10)));
        for _ in 0..RoundTrip::EPOCH {
            rt.sample(Duration::from_millis(80));
        }
        assert_eq!(
            rt.get(),
            Some(Duration::from_millis(80)),
            "a slower link is seen"
        );
    }
}
