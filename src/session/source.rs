//! The source role (rsync's sender): read the source in block order,
//! compare each block with the destination's range digests, ask for the
//! page digests of the ranges that differ, and send the pages that differ;
//! count a block done only when the destination acknowledges it.
//!
//! Workers digest each block's pages once, fold them into range digests and
//! compare. A block whose ranges all match is answered at once. Otherwise
//! the worker sends `Refine`, parks the block (its pooled buffer and page
//! digests) and takes the next one, so no block waits a round trip with a
//! worker held. When the `Pages` answer arrives, the lane's reader files it
//! and a finisher thread builds and sends the `Block`. Lane readers never
//! send anything themselves, so a full socket can never stop a lane from
//! reading the answers that would empty it.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread;

use super::{
    Abort, Content, DrySink, Params, Rejoin, Signal, block_hash, lane_of, run_lane, unexpected,
};
use crate::block::{Extent, ExtentKind, push_extent};
use crate::compress::Compressor;
use crate::digest::Digest;
use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::lock::lock;
use crate::net::{FrameReader, FrameSender, Lane};
use crate::pool::{Pool, Pooled};
use crate::progress::Stats;
use crate::proto::{self, BlockBuilder, Change, ChangeKind, Frame};
use crate::reader::read_blocks;

/// How many times a block may be sent before the session gives up.
const MAX_ATTEMPTS: u8 = 3;

/// A block sent (or refined) and not yet acknowledged.
struct Sent {
    /// Its length, for progress.
    bytes: u64,
    attempts: u8,
    /// Set aside while its `Refine` is answered.
    waiting: Option<Parked>,
    /// Its `Block` went out at least once: only now may an acknowledgement
    /// cover it.
    sent: bool,
}

/// A block's bytes and page digests while it waits for `Pages`: the pooled
/// buffer it was read into, or (when sent again after a lost connection) a
/// copy read back.
enum Held {
    Pooled(Pooled),
    Owned { data: Vec<u8>, pages: Vec<Digest> },
}

impl Held {
    fn content(&self) -> Content<'_> {
        match self {
            Held::Pooled(b) => Content::of(b),
            Held::Owned { data, .. } => Content::Bytes(data),
        }
    }

    fn pages(&self) -> &[Digest] {
        match self {
            Held::Pooled(b) => &b.digests,
            Held::Owned { pages, .. } => pages,
        }
    }
}

/// A block set aside until the destination's page digests arrive.
struct Parked {
    held: Held,
    /// The `Refine` bitmap: the ranges asked about.
    ranges: Vec<u8>,
    /// The destination's page digests of those ranges, once arrived.
    theirs: Option<Vec<Digest>>,
    /// The first time this block is sent: it counts in the summary.
    first: bool,
}

/// Work for the finishers, filed by lane readers (which never send).
enum Task {
    /// The `Pages` of a parked block arrived: send its `Block`.
    Finish(u64),
    /// Asked again for a parked block: send its `Refine` again.
    Refine(u64),
    /// Asked again for a block already sent: read it back and start over
    /// with these range digests.
    Resend(u64, Vec<Digest>),
}

#[derive(Default)]
struct SourceState {
    /// Destination range digests not yet used, by block.
    remote: HashMap<u64, Vec<Digest>>,
    /// Blocks sent or refined and not yet acknowledged. A map that reuses
    /// its table: a B-tree would allocate a node every few blocks once the
    /// window outgrows a leaf.
    unacked: HashMap<u64, Sent>,
    /// Work for the finishers.
    tasks: VecDeque<Task>,
    /// Every block before this one is written at the destination.
    acked_to: u64,
    complete: Option<u128>,
    /// `Bye` went out: lanes closing now is expected.
    finished: bool,
    /// A lane was rejoined: repeated answers are expected now.
    rejoined: bool,
    /// Digest lists done with, reused so a block costs no allocation.
    spare: Vec<Vec<Digest>>,
    /// `Refine` bitmaps done with, reused likewise.
    spare_maps: Vec<Vec<u8>>,
}

impl SourceState {
    fn recycle(&mut self, parked: Parked) {
        if let Some(theirs) = parked.theirs {
            self.spare.push(theirs);
        }
        self.spare_maps.push(parked.ranges);
    }
}

/// Run the source side over `lanes`; returns the verification digest.
/// (The roles' tests call it; the session calls [`run_with`].)
#[cfg(test)]
pub(super) fn run(
    p: &Params,
    disk: &Disk,
    lanes: Vec<Lane>,
    stats: &Stats,
    rejoin: &dyn Rejoin,
) -> Result<u128> {
    run_with(p, disk, lanes, stats, rejoin, None)
}

/// [`run`]; with `dry`, every block goes to it instead of its changes to
/// the destination, which writes nothing.
pub(super) fn run_with(
    p: &Params,
    disk: &Disk,
    lanes: Vec<Lane>,
    stats: &Stats,
    rejoin: &dyn Rejoin,
    dry: Option<&dyn DrySink>,
) -> Result<u128> {
    let senders: Vec<_> = lanes.iter().map(|l| Arc::clone(&l.sender)).collect();
    let state = Signal::new(SourceState {
        acked_to: p.first,
        ..SourceState::default()
    });
    let abort = Abort::new(senders.clone(), vec![&state], rejoin);
    let verify = Mutex::new(0u128);
    let end = p.geo.blocks();
    // Beyond the read-ahead and the workers' blocks, room for as many
    // parked blocks again: a block waiting for its page digests holds its
    // buffer for a round trip, and without that room the reader, always
    // ahead, would leave the parked blocks two buffers and the link idle.
    // The pool allocates on demand, so the room costs nothing until a long
    // round trip uses it.
    let pool = Pool::new(
        2 * p.prefetch + 3 * p.workers + 2,
        p.geo.buffer_len(),
        true,
        disk.hints(),
    );
    let (tx, rx) = sync_channel(p.prefetch);
    let rx = Arc::new(Mutex::new(rx));
    let throttle = p.bwlimit.map(super::Throttle::new);
    let ctx = SourceCtx {
        p,
        throttle: throttle.as_ref(),
        disk,
        abort: &abort,
        state: &state,
        senders: &senders,
        stats,
        verify: &verify,
        dry,
        zero: p.zero_digest(p.page()),
    };
    let abort = &abort;
    let pool = &pool;
    thread::scope(|s| {
        super::spawn_or_fail(s, abort, move || {
            let blocks = p.first..p.geo.blocks();
            abort.guard(|| read_blocks(disk, p.geo, blocks, pool, &tx, stats, &|| !abort.is_set()));
        });
        for (i, lane) in lanes.into_iter().enumerate() {
            let mut reader = lane.reader;
            super::spawn_or_fail(s, abort, move || {
                run_lane(
                    i,
                    &mut reader,
                    abort,
                    |r| ctx.lane_loop(r),
                    || {
                        ctx.state.lock().rejoined = true;
                        Ok(())
                    },
                    &|| ctx.state.lock().finished,
                );
            });
        }
        for _ in 0..p.workers {
            let rx = Arc::clone(&rx);
            super::spawn_or_fail(s, abort, move || abort.guard(|| ctx.worker(&rx)));
            super::spawn_or_fail(s, abort, move || abort.guard(|| ctx.finisher()));
        }
        drop(rx);
        let theirs = state.wait_for(abort, |st| {
            (st.acked_to == end).then_some(st.complete).flatten()
        });
        if let Some(theirs) = theirs {
            let ours = *lock(&verify);
            if let Err(e) = disk.check_unchanged() {
                abort.fail(e);
            } else if theirs != ours {
                abort.fail(Error::Failed(format!(
                    "verification failed: the destination's digest {theirs:032x} \
                     differs from the source's {ours:032x}"
                )));
            } else {
                state.lock().finished = true;
                state.notify();
                for s in &senders {
                    let _ = s.send_frame(&Frame::Bye { verify: ours });
                    s.shutdown();
                }
            }
        }
    });
    abort.outcome()?;
    let v = *lock(&verify);
    Ok(v)
}

#[derive(Clone, Copy)]
struct SourceCtx<'a> {
    p: &'a Params,
    /// `--bwlimit`.
    throttle: Option<&'a super::Throttle>,
    disk: &'a Disk,
    abort: &'a Abort<'a>,
    state: &'a Signal<SourceState>,
    senders: &'a [Arc<FrameSender>],
    stats: &'a Stats,
    verify: &'a Mutex<u128>,
    dry: Option<&'a dyn DrySink>,
    /// The digest of a whole zero page.
    zero: Digest,
}

/// Reused buffers of a thread that builds frames.
#[derive(Default)]
struct FrameScratch {
    /// Our range digests.
    ranges: Vec<Digest>,
    changes: Vec<Change>,
    extents: Vec<Extent>,
    frame: Vec<u8>,
}

/// What comparing a block's range digests decided.
enum Compared {
    /// Every range matches: `scratch.frame` holds the empty `Block`.
    Same,
    /// `scratch.frame` holds the `Refine`; park the block with this bitmap.
    Refine(Vec<u8>),
}

impl SourceCtx<'_> {
    /// Everything before block `upto` (exclusive) is written.
    fn acknowledge(&self, upto: u64) {
        let mut st = self.state.lock();
        let state = &mut *st;
        let (unacked, spare, spare_maps) =
            (&mut state.unacked, &mut state.spare, &mut state.spare_maps);
        unacked.retain(|&index, sent| {
            if index >= upto {
                return true;
            }
            if let Some(parked) = sent.waiting.take() {
                if let Some(theirs) = parked.theirs {
                    spare.push(theirs);
                }
                spare_maps.push(parked.ranges);
            }
            Stats::add(&self.stats.blocks_done, 1);
            Stats::add(&self.stats.bytes_done, sent.bytes);
            false
        });
        st.acked_to = st.acked_to.max(upto);
        // Acknowledgements are cumulative: every block before acked_to is
        // written, whatever -w.
        self.stats
            .resume_at
            .store(st.acked_to, std::sync::atomic::Ordering::Relaxed);
        drop(st);
        self.state.notify();
    }

    fn peer(&self, index: u64) -> &str {
        &self.senders[lane_of(index, self.senders.len())].peer
    }

    /// Send a frame on block `index`'s lane. A lost lane is rejoined by its
    /// reader, and the destination asks again for what it did not get.
    fn send(&self, index: u64, frame: &mut [u8]) {
        Stats::add(&self.stats.wire_sent, frame.len() as u64);
        if let Some(t) = self.throttle {
            t.take(frame.len());
        }
        let _ = self.senders[lane_of(index, self.senders.len())].send(frame);
    }

    /// Whether an acknowledgement (or completion) of every block before
    /// `upto` covers only blocks that were sent: one that covers a block
    /// never sent is a protocol error, never a reason to reconnect.
    fn check_covered(&self, peer: &str, what: &str, upto: u64) -> Result<()> {
        let end = self.p.geo.blocks();
        let st = self.state.lock();
        if upto <= st.acked_to {
            return Ok(()); // Cumulative: already covered by an earlier one.
        }
        // Blocks from acked_to on are acknowledged only once their `Block`
        // went out: each below `upto` must wait in `unacked`, sent at least
        // once. No more than `unacked.len()` of them can, so looking that
        // far finds the first gap whatever `upto` says.
        let room = u64::try_from(st.unacked.len()).unwrap_or(u64::MAX);
        let limit = upto.min(end).min(st.acked_to.saturating_add(room));
        let sent = |b: &u64| st.unacked.get(b).is_some_and(|s| s.sent);
        let unsent = (st.acked_to..limit)
            .find(|b| !sent(b))
            .or((upto > limit).then_some(limit));
        match unsent {
            None => Ok(()),
            Some(block) => Err(Error::protocol(
                peer,
                format!("{what} covers block {block}, which was never sent"),
            )),
        }
    }

    /// Read range digests, page digests, acknowledgements and the end of
    /// the session off a lane. Anything that needs sending is left to the
    /// finishers.
    fn lane_loop(&self, reader: &mut FrameReader) -> Result<()> {
        let end = self.p.geo.blocks();
        // Once per call, not per frame: run_lane calls again after a rejoin.
        let peer = reader.peer.clone();
        loop {
            let peer = peer.as_str();
            match reader.read("digests or acknowledgements")? {
                Frame::Digests { index, digests } => {
                    if index < self.p.first || index >= end {
                        return Err(Error::protocol(
                            peer,
                            format!("digests for block {index} out of range"),
                        ));
                    }
                    let mut list = self.state.lock().spare.pop().unwrap_or_default();
                    proto::read_digests(digests, &mut list);
                    let mut st = self.state.lock();
                    if index < st.acked_to {
                        continue; // Stale: already written.
                    }
                    if let Some(sent) = st.unacked.get_mut(&index) {
                        // Asked again after a reconnect: what we sent was lost.
                        if sent.attempts >= MAX_ATTEMPTS {
                            return Err(Error::Failed(format!(
                                "block {index}: not acknowledged after {MAX_ATTEMPTS} attempts"
                            )));
                        }
                        sent.attempts += 1;
                        let task = match &sent.waiting {
                            Some(parked) if parked.theirs.is_some() => {
                                // Its Block goes out soon, on the new connection.
                                st.spare.push(list);
                                continue;
                            }
                            Some(_) => {
                                st.spare.push(list);
                                Task::Refine(index)
                            }
                            None => Task::Resend(index, list),
                        };
                        st.tasks.push_back(task);
                        drop(st);
                        self.state.notify();
                        continue;
                    }
                    st.remote.insert(index, list);
                    drop(st);
                    self.state.notify();
                }
                Frame::Pages { index, digests } => self.pages(peer, index, digests)?,
                Frame::Ack { index } => {
                    self.check_covered(peer, "an acknowledgement", index.saturating_add(1))?;
                    self.acknowledge(index + 1);
                }
                Frame::Complete { blocks, verify } => {
                    if blocks != end {
                        return Err(Error::protocol(
                            peer,
                            format!(
                                "the destination completed {blocks} blocks, the session has {end}"
                            ),
                        ));
                    }
                    self.check_covered(peer, "the completion", end)?;
                    self.state.lock().complete = Some(verify);
                    self.acknowledge(end);
                }
                other => return Err(unexpected(peer, &other)),
            }
        }
    }

    /// File the destination's page digests for a parked block and hand it
    /// to a finisher.
    fn pages(&self, peer: &str, index: u64, digests: &[u8]) -> Result<()> {
        let bad = |what: String| Error::protocol(peer, format!("block {index}: {what}"));
        let mut st = self.state.lock();
        let rejoined = st.rejoined;
        let st = &mut *st;
        let parked = st
            .unacked
            .get_mut(&index)
            .and_then(|s| s.waiting.as_mut())
            .filter(|w| w.theirs.is_none());
        let Some(parked) = parked else {
            let in_range = (self.p.first..self.p.geo.blocks()).contains(&index);
            if in_range && (rejoined || index < st.acked_to) {
                // Answered twice around a reconnect; the first answer counted.
                return Ok(());
            }
            return Err(bad("page digests that were not asked for".into()));
        };
        let npages = parked.held.pages().len();
        let want: usize = (0..proto::ranges(npages))
            .filter(|&r| proto::marked(&parked.ranges, r))
            .map(|r| proto::range_pages(r, npages).len())
            .sum();
        if digests.len() != want * 16 {
            return Err(bad(format!(
                "{} page digests, asked for {want}",
                digests.len() / 16
            )));
        }
        let mut list = st.spare.pop().unwrap_or_default();
        proto::read_digests(digests, &mut list);
        parked.theirs = Some(list);
        st.tasks.push_back(Task::Finish(index));
        self.state.notify();
        Ok(())
    }

    /// Digest `data`'s pages into `pages` and its ranges into
    /// `scratch.ranges`; the destination must have sent as many range
    /// digests (`theirs`) as the block has ranges.
    fn digest_ranges(
        &self,
        index: u64,
        data: Content<'_>,
        pages: &mut Vec<Digest>,
        theirs: &[Digest],
        scratch: &mut FrameScratch,
    ) -> Result<()> {
        data.digests(self.p, self.zero, pages);
        proto::range_digests(pages, &mut scratch.ranges);
        if theirs.len() != scratch.ranges.len() {
            return Err(Error::protocol(
                self.peer(index),
                format!(
                    "block {index}: {} range digests, expected {}",
                    theirs.len(),
                    scratch.ranges.len()
                ),
            ));
        }
        Ok(())
    }

    /// Digest `data`'s pages into `pages` and its ranges into
    /// `scratch.ranges`, compare those with the destination's, and build
    /// the answer in `scratch.frame`: an empty `Block`, or a `Refine`.
    fn compare(
        &self,
        index: u64,
        data: Content<'_>,
        pages: &mut Vec<Digest>,
        theirs: &[Digest],
        scratch: &mut FrameScratch,
        map: Vec<u8>,
    ) -> Result<Compared> {
        self.digest_ranges(index, data, pages, theirs, scratch)?;
        let mut map = map;
        map.clear();
        map.resize(proto::bitmap_len(theirs.len()), 0);
        let mut differ = false;
        for (r, (mine, other)) in scratch.ranges.iter().zip(theirs).enumerate() {
            if mine != other {
                map[r / 8] |= 1 << (r % 8);
                differ = true;
            }
        }
        scratch.frame.clear();
        if differ {
            proto::encode(
                &Frame::Refine {
                    index,
                    ranges: &map,
                },
                &mut scratch.frame,
            );
            Ok(Compared::Refine(map))
        } else {
            self.state.lock().spare_maps.push(map);
            BlockBuilder::begin(&mut scratch.frame, index, 0, &[]).finish(false);
            Ok(Compared::Same)
        }
    }

    /// Build the `Block` of a parked block in `scratch.frame`: the pages of
    /// the asked ranges whose digests differ. Returns the raw data length.
    fn build_block(
        &self,
        index: u64,
        parked: &Parked,
        compressor: &mut Compressor,
        scratch: &mut FrameScratch,
    ) -> Result<usize> {
        let page = self.p.page();
        let data = parked.held.content();
        let ours = parked.held.pages();
        let theirs = parked.theirs.as_deref().unwrap_or_default();
        let mut theirs = theirs.iter();
        scratch.changes.clear();
        scratch.extents.clear();
        let mut raw_len = 0usize;
        for r in (0..proto::ranges(ours.len())).filter(|&r| proto::marked(&parked.ranges, r)) {
            for j in proto::range_pages(r, ours.len()) {
                // The count was checked when the digests arrived.
                if theirs.next() == Some(&ours[j]) {
                    continue;
                }
                let start = j * page;
                let end = (start + page).min(data.len());
                let (kind, ext) = if data.is_zero(start, end) {
                    (ChangeKind::Zero, ExtentKind::Zero)
                } else {
                    raw_len += end - start;
                    (ChangeKind::Data(ours[j]), ExtentKind::Data)
                };
                scratch.changes.push(Change {
                    // Pages of a block of at most MAX_BLOCK_SIZE bytes.
                    page: u32::try_from(j)
                        .map_err(|_| Error::Failed(format!("block {index}: too many pages")))?,
                    kind,
                });
                push_extent(&mut scratch.extents, start, end - start, ext, start);
            }
        }
        let frame = &mut scratch.frame;
        frame.clear();
        // A block is at most MAX_BLOCK_SIZE, 1 GiB.
        let raw = u32::try_from(raw_len)
            .map_err(|_| Error::Failed(format!("block {index}: {raw_len} bytes of data")))?;
        let mut block = BlockBuilder::begin(frame, index, raw, &scratch.changes);
        // Only bytes that were read have data extents.
        let bytes = match data {
            Content::Bytes(b) => b,
            Content::Hole(_) => &[],
        };
        let pieces = scratch
            .extents
            .iter()
            .filter(|e| e.kind == ExtentKind::Data)
            .map(|e| &bytes[e.start..e.start + e.len]);
        let compressed = compressor.append(pieces, block.data());
        block.finish(compressed);
        Stats::add(&self.stats.bytes_changed, raw_len as u64);
        Ok(raw_len)
    }

    /// A dry run's block: the sink gets it with both sides' range digests,
    /// the destination an empty `Block` to acknowledge, and the
    /// verification digest is over the destination's unchanged content.
    fn dry_block(
        &self,
        dry: &dyn DrySink,
        index: u64,
        data: &[u8],
        theirs: &[Digest],
        pages: &mut Vec<Digest>,
        scratch: &mut FrameScratch,
    ) -> Result<()> {
        self.digest_ranges(index, Content::Bytes(data), pages, theirs, scratch)?;
        let (changed, data_bytes) = dry.block(index, data, theirs, &scratch.ranges)?;
        let class = if !changed {
            &self.stats.same
        } else if data_bytes > 0 {
            &self.stats.changed
        } else {
            &self.stats.zero
        };
        Stats::add(class, 1);
        Stats::add(&self.stats.bytes_changed, data_bytes);
        {
            let mut v = lock(self.verify);
            *v = v.wrapping_add(block_hash(index, theirs));
        }
        empty_block(index, &mut scratch.frame);
        Ok(())
    }

    /// Compare blocks with the destination's range digests; send the blocks
    /// that match, park the others and ask for their page digests.
    fn worker(&self, rx: &Mutex<Receiver<Pooled>>) -> Result<()> {
        let mut scratch = FrameScratch::default();
        loop {
            let Ok(mut block) = lock(rx).recv() else {
                return Ok(());
            };
            let index = block.index;
            let Some(theirs) = self
                .state
                .wait_for(self.abort, |st| st.remote.remove(&index))
            else {
                return Ok(());
            };
            let map = self.state.lock().spare_maps.pop().unwrap_or_default();
            let b = &mut *block;
            if let Some(dry) = self.dry {
                if b.hole {
                    // Never read: the sink wants the zeros it stands for.
                    b.data[..b.len].fill(0);
                }
                let mut pages = std::mem::take(&mut b.digests);
                let done = self.dry_block(
                    dry,
                    index,
                    &b.data[..b.len],
                    &theirs,
                    &mut pages,
                    &mut scratch,
                );
                b.digests = pages;
                done?;
                let mut st = self.state.lock();
                st.unacked.insert(
                    index,
                    Sent {
                        bytes: b.len as u64,
                        attempts: 1,
                        waiting: None,
                        sent: true,
                    },
                );
                st.spare.push(theirs);
                drop(st);
                drop(block);
                self.send(index, &mut scratch.frame);
                continue;
            }
            let mut pages = std::mem::take(&mut b.digests);
            let compared = self.compare(
                index,
                Content::of(b),
                &mut pages,
                &theirs,
                &mut scratch,
                map,
            );
            b.digests = pages;
            let compared = compared?;
            {
                let mut v = lock(self.verify);
                *v = v.wrapping_add(block_hash(index, &scratch.ranges));
            }
            let bytes = b.len as u64;
            // Registered before sending: the answer may beat us back.
            let mut st = self.state.lock();
            st.spare.push(theirs);
            let waiting = match compared {
                Compared::Same => {
                    Stats::add(&self.stats.same, 1);
                    drop(block);
                    None
                }
                Compared::Refine(ranges) => Some(Parked {
                    held: Held::Pooled(block),
                    ranges,
                    theirs: None,
                    first: true,
                }),
            };
            st.unacked.insert(
                index,
                Sent {
                    bytes,
                    attempts: 1,
                    sent: waiting.is_none(),
                    waiting,
                },
            );
            drop(st);
            self.send(index, &mut scratch.frame);
        }
    }

    /// Carry out the lane readers' tasks until every block is acknowledged.
    fn finisher(&self) -> Result<()> {
        let end = self.p.geo.blocks();
        let mut compressor = Compressor::new(self.p.compression);
        let mut scratch = FrameScratch::default();
        loop {
            let Some(task) = self
                .state
                .wait_for(self.abort, |st| match st.tasks.pop_front() {
                    Some(task) => Some(Some(task)),
                    None => (st.acked_to == end || st.finished).then_some(None),
                })
            else {
                return Ok(());
            };
            match task {
                None => return Ok(()),
                Some(Task::Finish(index)) => self.finish(index, &mut compressor, &mut scratch)?,
                Some(Task::Refine(index)) => {
                    let st = self.state.lock();
                    let Some(parked) = st.unacked.get(&index).and_then(|s| s.waiting.as_ref())
                    else {
                        continue;
                    };
                    scratch.frame.clear();
                    proto::encode(
                        &Frame::Refine {
                            index,
                            ranges: &parked.ranges,
                        },
                        &mut scratch.frame,
                    );
                    drop(st);
                    self.send(index, &mut scratch.frame);
                }
                Some(Task::Resend(index, theirs)) => {
                    let outcome = self.resend(index, &theirs, &mut scratch);
                    self.state.lock().spare.push(theirs);
                    outcome?;
                }
            }
        }
    }

    /// Send the `Block` of a parked block whose page digests arrived.
    fn finish(
        &self,
        index: u64,
        compressor: &mut Compressor,
        scratch: &mut FrameScratch,
    ) -> Result<()> {
        let Some(parked) = self.state.lock().unacked.get_mut(&index).and_then(|s| {
            // Marked before it goes: the acknowledgement may beat us back.
            s.sent = true;
            s.waiting.take()
        }) else {
            return Ok(()); // Acknowledged meanwhile.
        };
        let raw_len = self.build_block(index, &parked, compressor, scratch);
        let first = parked.first;
        self.state.lock().recycle(parked);
        let raw_len = raw_len?;
        if first {
            let class = if scratch.changes.is_empty() {
                &self.stats.same
            } else if raw_len > 0 {
                &self.stats.changed
            } else {
                &self.stats.zero
            };
            Stats::add(class, 1);
        }
        self.send(index, &mut scratch.frame);
        Ok(())
    }

    /// Start block `index` over: read it back from the source and compare
    /// it with the range digests the destination sent again.
    fn resend(&self, index: u64, theirs: &[Digest], scratch: &mut FrameScratch) -> Result<()> {
        if self.dry.is_some() {
            // Already given to the sink: the destination only acknowledges.
            empty_block(index, &mut scratch.frame);
            self.send(index, &mut scratch.frame);
            return Ok(());
        }
        let len = self.p.geo.len(index);
        let mut data = vec![0u8; len];
        let n = self
            .disk
            .read_at(&mut data, self.p.geo.offset(index))
            .map_err(|e| Error::io(self.disk.label(), format!("read at block {index}"), e))?;
        if n < len {
            return Err(Error::Failed(format!(
                "{}: read at block {index}: the source shrank during the run",
                self.disk.label()
            )));
        }
        let mut pages = Vec::new();
        let content = Content::Bytes(&data);
        let compared = self.compare(index, content, &mut pages, theirs, scratch, Vec::new())?;
        let mut st = self.state.lock();
        let Some(sent) = st.unacked.get_mut(&index) else {
            return Ok(()); // Acknowledged meanwhile.
        };
        match compared {
            Compared::Refine(ranges) => {
                sent.waiting = Some(Parked {
                    held: Held::Owned { data, pages },
                    ranges,
                    theirs: None,
                    first: false,
                });
            }
            Compared::Same => sent.sent = true,
        }
        drop(st);
        self.send(index, &mut scratch.frame);
        Ok(())
    }
}

/// A `Block` frame with no changes: "nothing to write here".
fn empty_block(index: u64, frame: &mut Vec<u8>) {
    frame.clear();
    BlockBuilder::begin(frame, index, 0, &[]).finish(false);
}
