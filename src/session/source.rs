//! The source role (rsync's sender): read the source in block order,
//! compare each block with the destination's digests, and send what
//! differs; count a block done only when the destination acknowledges it.

use std::collections::{BTreeMap, HashMap};
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

/// A block sent and not yet acknowledged.
struct Sent {
    /// Its length, for progress.
    bytes: u64,
    attempts: u8,
}

#[derive(Default)]
struct SourceState {
    /// Destination digests not yet used, by block.
    remote: HashMap<u64, Vec<Digest>>,
    /// Blocks sent and not yet acknowledged.
    unacked: BTreeMap<u64, Sent>,
    /// Every block before this one is written at the destination.
    acked_to: u64,
    /// Blocks sent at least once: an acknowledgement or a completion may
    /// only cover these.
    sent: u64,
    complete: Option<u128>,
    /// `Bye` went out: lanes closing now is expected.
    finished: bool,
    /// Digest lists done with, reused so a block costs no allocation.
    spare: Vec<Vec<Digest>>,
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
    let pool = Pool::new(
        p.prefetch + 2 * p.workers + 2,
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
        zero: p.zero_digest(p.sub()),
    };
    let abort = &abort;
    let pool = &pool;
    thread::scope(|s| {
        s.spawn(move || {
            let blocks = p.first..p.geo.blocks();
            abort.guard(|| read_blocks(disk, p.geo, blocks, pool, &tx, stats, &|| !abort.is_set()));
        });
        for (i, lane) in lanes.into_iter().enumerate() {
            let mut reader = lane.reader;
            s.spawn(move || {
                let mut compressor = Compressor::new(p.compression);
                run_lane(
                    i,
                    &mut reader,
                    abort,
                    |r| ctx.lane_loop(r, &mut compressor),
                    || Ok(()),
                    &|| ctx.state.lock().finished,
                );
            });
        }
        for _ in 0..p.workers {
            let rx = Arc::clone(&rx);
            s.spawn(move || abort.guard(|| ctx.worker(&rx)));
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
    /// The digest of a whole zero sub-block.
    zero: Digest,
}

/// Reused buffers of a thread that builds `Block` frames.
#[derive(Default)]
struct FrameScratch {
    ours: Vec<Digest>,
    changes: Vec<Change>,
    frame: Vec<u8>,
}

impl SourceCtx<'_> {
    /// Everything before block `upto` (exclusive) is written.
    fn acknowledge(&self, upto: u64) {
        let mut st = self.state.lock();
        while let Some(entry) = st.unacked.first_entry() {
            if *entry.key() >= upto {
                break;
            }
            let sent = entry.remove();
            Stats::add(&self.stats.blocks_done, 1);
            Stats::add(&self.stats.bytes_done, sent.bytes);
        }
        st.acked_to = st.acked_to.max(upto);
        // Acknowledgements are cumulative: every block before acked_to is
        // written, whatever -w.
        self.stats
            .resume_at
            .store(st.acked_to, std::sync::atomic::Ordering::Relaxed);
        drop(st);
        self.state.notify();
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
        let unsent = if upto > end {
            Some(end)
        } else {
            // Blocks from acked_to on are acknowledged only once sent, so
            // every one of them below `upto` must be waiting in `unacked`.
            let waiting = st.unacked.range(st.acked_to..upto).count() as u64;
            (waiting != upto - st.acked_to).then(|| {
                (st.acked_to..upto)
                    .find(|b| !st.unacked.contains_key(b))
                    .unwrap_or(st.acked_to)
            })
        };
        match unsent {
            None => Ok(()),
            Some(block) => Err(Error::protocol(
                peer,
                format!("{what} covers block {block}, which was never sent"),
            )),
        }
    }

    /// Read digests, acknowledgements and the end of the session off a lane.
    fn lane_loop(&self, reader: &mut FrameReader, compressor: &mut Compressor) -> Result<()> {
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
                        // Asked again after a reconnect: the block was lost.
                        if sent.attempts >= MAX_ATTEMPTS {
                            return Err(Error::Failed(format!(
                                "block {index}: not acknowledged after {MAX_ATTEMPTS} attempts"
                            )));
                        }
                        sent.attempts += 1;
                        drop(st);
                        self.resend(index, &list, compressor)?;
                        continue;
                    }
                    st.remote.insert(index, list);
                    drop(st);
                    self.state.notify();
                }
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

    /// Send block `index` again: read it back from the source and compare
    /// it with the digests the destination sent again.
    fn resend(&self, index: u64, theirs: &[Digest], compressor: &mut Compressor) -> Result<()> {
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
        let mut scratch = FrameScratch::default();
        if self.dry.is_some() {
            // Already given to the sink: the destination only acknowledges.
            empty_block(index, &mut scratch.frame);
            let _ = self.senders[lane_of(index, self.senders.len())].send(&mut scratch.frame);
            return Ok(());
        }
        let mut extents = Vec::new();
        let data = Content::Bytes(&data);
        self.build_frame(index, data, theirs, compressor, &mut scratch, &mut extents)?;
        if let Some(t) = self.throttle {
            t.take(scratch.frame.len());
        }
        // A lost lane will be rejoined and ask again.
        let _ = self.senders[lane_of(index, self.senders.len())].send(&mut scratch.frame);
        Ok(())
    }

    /// Compare `data` with the destination's digests, fill `extents`, and
    /// build the `Block` frame in `scratch.frame`. Returns the bytes of
    /// data the frame carries, before compression.
    fn build_frame(
        &self,
        index: u64,
        data: Content<'_>,
        theirs: &[Digest],
        compressor: &mut Compressor,
        scratch: &mut FrameScratch,
        extents: &mut Vec<Extent>,
    ) -> Result<usize> {
        let sub = self.p.sub();
        data.digests(self.p, self.zero, &mut scratch.ours);
        if theirs.len() != scratch.ours.len() {
            let lane = lane_of(index, self.senders.len());
            return Err(Error::protocol(
                &self.senders[lane].peer,
                format!(
                    "block {index}: {} digests, expected {}",
                    theirs.len(),
                    scratch.ours.len()
                ),
            ));
        }
        scratch.changes.clear();
        extents.clear();
        let mut raw_len = 0usize;
        for (j, (mine, other)) in scratch.ours.iter().zip(theirs).enumerate() {
            if mine == other {
                continue;
            }
            let start = j * sub;
            let end = (start + sub).min(data.len());
            let (kind, ext) = if data.is_zero(start, end) {
                (ChangeKind::Zero, ExtentKind::Zero)
            } else {
                raw_len += end - start;
                (ChangeKind::Data(*mine), ExtentKind::Data)
            };
            scratch.changes.push(Change {
                // Sub-blocks of a block of at most MAX_BLOCK_SIZE bytes.
                sub: u32::try_from(j)
                    .map_err(|_| Error::Failed(format!("block {index}: too many sub-blocks")))?,
                kind,
            });
            push_extent(extents, start, end - start, ext, start);
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
        let pieces = extents
            .iter()
            .filter(|e| e.kind == ExtentKind::Data)
            .map(|e| &bytes[e.start..e.start + e.len]);
        let compressed = compressor.append(pieces, block.data());
        block.finish(compressed);
        Stats::add(&self.stats.wire_sent, frame.len() as u64);
        Stats::add(&self.stats.bytes_changed, raw_len as u64);
        Ok(raw_len)
    }

    /// A dry run's block: the sink gets it with both sides' digests, the
    /// destination an empty `Block` to acknowledge, and the verification
    /// digest is over the destination's unchanged content.
    fn dry_block(
        &self,
        dry: &dyn DrySink,
        index: u64,
        data: &[u8],
        theirs: &[Digest],
        scratch: &mut FrameScratch,
    ) -> Result<()> {
        Content::Bytes(data).digests(self.p, self.zero, &mut scratch.ours);
        if theirs.len() != scratch.ours.len() {
            let lane = lane_of(index, self.senders.len());
            return Err(Error::protocol(
                &self.senders[lane].peer,
                format!(
                    "block {index}: {} digests, expected {}",
                    theirs.len(),
                    scratch.ours.len()
                ),
            ));
        }
        let (changed, data_bytes) = dry.block(index, data, theirs, &scratch.ours)?;
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

    /// Compare blocks with the destination's digests and send what differs.
    fn worker(&self, rx: &Mutex<Receiver<Pooled>>) -> Result<()> {
        let mut compressor = Compressor::new(self.p.compression);
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
            let b = &mut *block;
            if let Some(dry) = self.dry {
                if b.hole {
                    // Never read: the sink wants the zeros it stands for.
                    b.data[..b.len].fill(0);
                }
                self.dry_block(dry, index, &b.data[..b.len], &theirs, &mut scratch)?;
                let mut st = self.state.lock();
                st.unacked.insert(
                    index,
                    Sent {
                        bytes: b.len as u64,
                        attempts: 1,
                    },
                );
                st.spare.push(theirs);
                drop(st);
                drop(block);
                let _ = self.senders[lane_of(index, self.senders.len())].send(&mut scratch.frame);
                continue;
            }
            let content = if b.hole {
                Content::Hole(b.len)
            } else {
                Content::Bytes(&b.data[..b.len])
            };
            let raw_len = self.build_frame(
                index,
                content,
                &theirs,
                &mut compressor,
                &mut scratch,
                &mut b.extents,
            )?;
            let class = if scratch.changes.is_empty() {
                &self.stats.same
            } else if raw_len > 0 {
                &self.stats.changed
            } else {
                &self.stats.zero
            };
            Stats::add(class, 1);
            {
                let mut v = lock(self.verify);
                *v = v.wrapping_add(block_hash(index, &scratch.ours));
            }
            // Registered before sending: the acknowledgement may beat us back.
            let mut st = self.state.lock();
            st.unacked.insert(
                index,
                Sent {
                    bytes: b.len as u64,
                    attempts: 1,
                },
            );
            st.sent += 1;
            st.spare.push(theirs);
            drop(st);
            drop(block);
            if let Some(t) = self.throttle {
                t.take(scratch.frame.len());
            }
            // A lost lane is rejoined by its reader, and the destination
            // asks again for what it did not get.
            let _ = self.senders[lane_of(index, self.senders.len())].send(&mut scratch.frame);
        }
    }
}

/// A `Block` frame with no changes: "nothing to write here".
fn empty_block(index: u64, frame: &mut Vec<u8>) {
    frame.clear();
    BlockBuilder::begin(frame, index, 0, &[]).finish(false);
}
