//! The source role (rsync's sender): read the source in block order,
//! compare each block with the destination's range digests, ask for the
//! page digests of the ranges that differ, and send the pages that differ;
//! count a block done only when the destination acknowledges it.
//!
//! Workers digest each block's pages once, fold them into range digests and
//! compare. A block whose ranges all match is answered at once. Otherwise
//! the worker sends `Refine`, parks the block's differing ranges (their
//! bytes and page digests, not the block's buffer, which goes back to the
//! reader) and takes the next one, so no block waits a round trip with a
//! worker or a buffer held. When the `Pages` answer arrives, the lane's
//! reader files it and a finisher thread builds and sends the `Block`. Lane
//! readers never send anything themselves, so a full socket can never stop
//! a lane from reading the answers that would empty it.
//!
//! What is outstanding is bounded in bytes, not blocks: what is parked
//! (page digests; under `--rescue` the ranges' bytes) and read back, and
//! the block data sent and not acknowledged, each by a flight budget of
//! twice the measured round trip times the measured rate (at most
//! `config::flight_cap`, all of it until measured), each counted in memory
//! held (`ledger.rs`). A worker waits for room before it keeps a block's
//! ranges, holding the read buffer, so a full budget slows the reader
//! instead of adding a copy. The lowest unacknowledged block is never held
//! back by either, nor a finisher that alone reads back, so the budgets
//! cannot stall the session. The decisions themselves are in
//! `exchange.rs`; what the lane readers file is `source/replies.rs`'s, the
//! frames built for a block `source/frames.rs`'s.

use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use super::exchange::{Differing, Keep};
use super::ledger::{Ledger, Parked, Sent, Task};
use super::{Abort, Content, DrySink, Params, Rejoin, Signal, block_hash, lane_of, run_lane};
use crate::block::Extent;
use crate::compress::Compressor;
use crate::config::flight_cap;
use crate::digest::Digest;
use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::lock::lock;
use crate::net::{FrameSender, Lane};
use crate::pool::{Pool, Pooled, sized_len};
use crate::progress::Stats;
use crate::proto::{self, BlockBuilder, Change, Frame};
use crate::reader::read_blocks_keeping;

mod back;
mod frames;
mod replies;

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
    let cap = flight_cap(p.geo.block_size, p.workers);
    let state = Signal::new(Ledger::new(p.first, cap, p.geo.block_size));
    let abort = Abort::new(senders.clone(), vec![&state], rejoin);
    let verify = Mutex::new(0u128);
    let end = p.geo.blocks();
    // A buffer per worker and one being read (`config::buffers_needed`
    // counts them, and a frame per worker): a parked block keeps only the
    // page digests of its differing ranges (`source/back.rs`), so no buffer
    // waits a round trip, and the buffers go round at the reader's pace.
    let pool = Pool::new(p.workers + 1, p.geo.buffer_len(), true, disk.hints());
    let (tx, rx) = sync_channel(1);
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
            // Pages stay cached until their block is acknowledged: those
            // that differ are read back once their page digests arrive.
            abort.guard(|| {
                read_blocks_keeping(disk, p.geo, blocks, pool, &tx, stats, &|| !abort.is_set())
            });
        });
        let finished = || ctx.state.lock().finished;
        for (i, lane) in lanes.into_iter().enumerate() {
            let mut reader = lane.reader;
            super::spawn_or_fail(s, abort, move || {
                run_lane(
                    i,
                    &mut reader,
                    abort,
                    |r| ctx.lane_loop(r),
                    || ctx.state.lock().rejoined = true,
                    // The verdict went out: nothing more to say, or wait for.
                    &finished,
                    &finished,
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
                // A lane waiting for its client to come back stops.
                abort.rejoin.wake();
                for s in &senders {
                    let tally = dry.map(|_| super::dry::tally(stats));
                    let _ = s.send_frame(&Frame::Bye {
                        verify: ours,
                        tally,
                    });
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
    state: &'a Signal<Ledger>,
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
    /// `--rescue`: the unreadable ranges of the block being compared.
    unreadable: Vec<(usize, usize)>,
    /// The spans of a parked block to read back.
    spans: Vec<std::ops::Range<usize>>,
    /// Pages read back that changed since the comparison.
    changed: Vec<(usize, Digest)>,
}

/// What comparing a block's range digests decided.
enum Compared {
    /// Every range matches: `scratch.frame` holds the empty `Block`.
    Same,
    /// `scratch.frame` holds the `Refine`; park the block with this bitmap.
    Refine(Vec<u8>),
}

impl SourceCtx<'_> {
    fn peer(&self, index: u64) -> &str {
        &self.senders[lane_of(index, self.senders.len())].peer
    }

    /// Send a frame on block `index`'s lane. A lost lane is rejoined by its
    /// reader, and the destination asks again for what it did not get.
    fn send(&self, index: u64, frame: &mut [u8]) {
        if let Some(t) = self.throttle {
            t.take(frame.len());
        }
        let _ = self.senders[lane_of(index, self.senders.len())].send(frame);
    }

    /// `--rescue`: a block the map says the destination holds already was
    /// not read; it gets an empty `Block`, and the verification digest
    /// takes the destination's word for it, as a dry run's does.
    fn finished_block(
        &self,
        index: u64,
        bytes: u64,
        theirs: Vec<Digest>,
        scratch: &mut FrameScratch,
    ) {
        {
            let mut v = lock(self.verify);
            *v = v.wrapping_add(block_hash(index, &theirs));
        }
        Stats::add(&self.stats.skipped_by_map, 1);
        let mut st = self.state.lock();
        st.spare.push(theirs);
        st.unacked.insert(
            index,
            Sent {
                bytes,
                attempts: 1,
                waiting: None,
                sent: true,
                held: 0,
            },
        );
        drop(st);
        empty_block(index, &mut scratch.frame);
        self.send(index, &mut scratch.frame);
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
            // Our digests first: the destination's may still be on the way.
            let b = &mut *block;
            let digested = !b.finished && self.dry.is_none();
            if digested {
                let mut pages = std::mem::take(&mut b.digests);
                self.digest_block(Content::of(b), &mut pages, &mut scratch);
                b.digests = pages;
            }
            let Some(theirs) = self
                .state
                .wait_for(self.abort, |st| st.remote.remove(&index))
            else {
                return Ok(());
            };
            let map = self.state.lock().spare_maps.pop().unwrap_or_default();
            let b = &mut *block;
            if b.finished {
                if let Some(dry) = self.dry {
                    // Not read: the patch takes the destination's word.
                    dry.block(index, &[], &theirs, &theirs, &[])?;
                }
                self.finished_block(index, b.len as u64, theirs, &mut scratch);
                continue;
            }
            scratch.unreadable.clone_from(&b.unreadable);
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
                        held: 0,
                    },
                );
                st.spare.push(theirs);
                drop(st);
                drop(block);
                self.send(index, &mut scratch.frame);
                continue;
            }
            let compared = self.compare(index, &theirs, &mut scratch, map)?;
            {
                let mut v = lock(self.verify);
                *v = v
                    .wrapping_add(block_hash(index, &scratch.ranges))
                    .wrapping_add(proto::unreadable_hash(index, &b.unreadable));
            }
            let bytes = b.len as u64;
            // Registered before sending: the answer may beat us back.
            match compared {
                Compared::Same => {
                    drop(block);
                    Stats::add(&self.stats.same, 1);
                    let mut st = self.state.lock();
                    st.spare.push(theirs);
                    let sent = Sent {
                        bytes,
                        attempts: 1,
                        waiting: None,
                        sent: true,
                        held: 0,
                    };
                    st.unacked.insert(index, sent);
                }
                Compared::Refine(ranges) => {
                    let content = Content::of(&block);
                    let how = self.keep(&scratch.ranges);
                    let need =
                        Differing::need(content, block.digests.len(), &ranges, self.p.page(), how);
                    // Room first, then the copy: what is being kept counts
                    // as parked, and a worker waits with the read buffer,
                    // which the pool counts, not with a copy beside it.
                    let Some(reuse) = self
                        .state
                        .wait_for(self.abort, |st| st.make_room(index, need))
                    else {
                        return Ok(());
                    };
                    let kept = Differing::keep(
                        content,
                        &block.digests,
                        &block.unreadable,
                        ranges,
                        self.p.page(),
                        reuse,
                        how,
                    );
                    drop(block);
                    let parked = Parked {
                        kept,
                        theirs: None,
                        first: true,
                        asked: Instant::now(),
                    };
                    let mut st = self.state.lock();
                    st.park(index, bytes, parked, need);
                    st.spare.push(theirs);
                }
            }
            self.send(index, &mut scratch.frame);
        }
    }

    /// Carry out the lane readers' tasks until every block is acknowledged.
    fn finisher(&self) -> Result<()> {
        let end = self.p.geo.blocks();
        let mut compressor = Compressor::new(self.p.compression);
        let mut scratch = FrameScratch::default();
        loop {
            let Some(task) = self.state.wait_for(self.abort, |st| match st.next_task() {
                Some(task) => Some(Some(task)),
                None => (st.acked_to == end || st.finished).then_some(None),
            }) else {
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
                            ranges: &parked.kept.ranges,
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
        let back = match self.read_back(index, &parked, scratch) {
            Ok(back) => back,
            Err(e) => {
                self.state.lock().recycle(parked);
                return Err(e);
            }
        };
        let raw_len = self.build_block(index, &parked, back.as_deref(), compressor, scratch);
        let first = parked.first;
        {
            let mut st = self.state.lock();
            st.recycle(parked);
            if let Some(buf) = back {
                st.give_back(buf);
            }
            if let Ok(raw) = raw_len
                && let Some(sent) = st.unacked.get_mut(&index)
            {
                // What the destination will hold of it until written.
                let held = sized_len(raw) as u64;
                sent.held += held;
                st.in_flight += held;
                let rtt = st.rtt.get();
                st.sending.add(held, Instant::now(), rtt);
            }
        }
        self.state.notify();
        let raw_len = raw_len?;
        // A block sent again after a reconnect counts once.
        if first {
            Stats::add(&self.stats.bytes_changed, raw_len as u64);
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
        let (offset, len) = (self.p.geo.offset(index), self.p.geo.len(index));
        let finished = self
            .disk
            .rescue()
            .is_some_and(|r| r.finished(offset, len as u64));
        if self.dry.is_some() || finished {
            // Already given to the sink, or trusted by the rescue's map
            // (never read): the destination only acknowledges.
            empty_block(index, &mut scratch.frame);
            self.send(index, &mut scratch.frame);
            return Ok(());
        }
        let mut data = vec![0u8; len];
        let (n, unreadable) = self.read_again(index, &mut data)?;
        if n < len {
            return Err(Error::Failed(format!(
                "{}: read at block {index}: the source shrank during the run",
                self.disk.label()
            )));
        }
        let mut pages = Vec::new();
        let content = Content::Bytes(&data);
        scratch.unreadable = unreadable;
        self.digest_block(content, &mut pages, scratch);
        let compared = self.compare(index, theirs, scratch, Vec::new())?;
        let mut guard = self.state.lock();
        let st = &mut *guard;
        let Some(sent) = st.unacked.get_mut(&index) else {
            return Ok(()); // Acknowledged meanwhile.
        };
        match compared {
            // Asked again twice before the first was done (two reconnects):
            // that one's Refine went, and its block is parked for the answer.
            Compared::Refine(_) if sent.waiting.is_some() => return Ok(()),
            Compared::Refine(ranges) => {
                let page = self.p.page();
                let lost = &scratch.unreadable;
                let kept = Differing::keep(
                    content,
                    &pages,
                    lost,
                    ranges,
                    page,
                    Differing::default(),
                    Keep::Bytes,
                );
                st.parked += kept.bytes() as u64;
                sent.waiting = Some(Parked {
                    kept,
                    theirs: None,
                    first: false,
                    asked: Instant::now(),
                });
            }
            Compared::Same => sent.sent = true,
        }
        drop(guard);
        self.send(index, &mut scratch.frame);
        Ok(())
    }
}

impl SourceCtx<'_> {
    /// Read block `index` again for [`SourceCtx::resend`], through the
    /// rescue if any; its failed reads count, its unreadable bytes did
    /// the first time.
    fn read_again(&self, index: u64, data: &mut [u8]) -> Result<(usize, Vec<(usize, usize)>)> {
        let again = Stats::default();
        let read = crate::reader::read_again(self.disk, self.p.geo, index, data, &again);
        Stats::add(&self.stats.read_errors, again.read_errors.into_inner());
        read
    }
}

/// A `Block` frame with no changes: "nothing to write here".
fn empty_block(index: u64, frame: &mut Vec<u8>) {
    frame.clear();
    BlockBuilder::begin(frame, index, 0, &[]).finish(false);
}
