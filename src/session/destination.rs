//! The destination role (rsync's receiver): digest the destination's
//! pages in block order and send the range digests, answer the source's
//! `Refine` with the page digests it asks for, check every page that
//! arrives against the source's digest, write in block order through the
//! one writer, acknowledge, and say `Complete` once everything is flushed.
//!
//! A lane's reader answers `Refine` itself: the answer is small, and the
//! source's lane readers never stop reading to send, so it cannot stall.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread;

use super::{
    Abort, Content, Params, Rejoin, Signal, block_hash_of_pages, lane_of, run_lane, unexpected,
};
use crate::block::{ExtentKind, push_extent};
use crate::compress::Decompressor;
use crate::config::{DIGEST_PIECE, flight_cap, window_blocks};
use crate::digest::{self, Digest};
use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::lock::lock;
use crate::net::{FrameReader, FrameSender, Lane};
use crate::pool::{Pool, Pooled};
use crate::progress::Stats;
use crate::proto::{self, ChangeKind, Frame};
use crate::reader::read_blocks;
use crate::writer::Writer;

/// Counting permits: how many blocks may be in flight.
type Window = Signal<usize>;

impl Window {
    fn acquire(&self, abort: &Abort) -> bool {
        self.wait_for(abort, |free| (*free > 0).then(|| *free -= 1))
            .is_some()
    }

    fn release(&self) {
        *self.lock() += 1;
        self.notify();
    }
}

#[derive(Clone, Copy)]
struct DestCtx<'a> {
    p: &'a Params,
    /// Our own page digests of blocks whose data has not arrived yet.
    expected: &'a Mutex<HashMap<u64, Vec<Digest>>>,
    senders: &'a [Arc<FrameSender>],
    stats: &'a Stats,
    verify: &'a Mutex<u128>,
    done: &'a AtomicBool,
    /// The source's `Bye` confirmed the verification digest.
    confirmed: &'a AtomicBool,
    /// A lane was rejoined: duplicate blocks are expected now.
    rejoined: &'a AtomicBool,
    /// Digest lists done with, reused so a block costs no allocation.
    spare: &'a Mutex<Vec<Vec<Digest>>>,
    /// Blocks read in pieces and digested in part: their page digests so
    /// far and the bytes still to digest.
    partial: &'a Mutex<HashMap<u64, (Vec<Digest>, usize)>>,
    /// The digest of a whole page of zeros.
    zero: Digest,
    /// A dry session: nothing is written, and the source's `Bye` says
    /// what differs (into `tally`).
    dry: bool,
    tally: &'a Mutex<Option<proto::Tally>>,
    /// Why the source's `Bye` was refused, kept for the end of the run:
    /// every block is written by then, so the lane ends either way.
    refused: &'a Mutex<Option<Error>>,
}

/// Run the destination side over `lanes` into `disk` (already sized);
/// returns the verification digest. (The roles' tests call it; the
/// session calls [`run_told`].)
#[cfg(test)]
pub(super) fn run(
    p: &Params,
    disk: &Disk,
    lanes: Vec<Lane>,
    stats: &Stats,
    rejoin: &dyn Rejoin,
) -> Result<u128> {
    run_told(p, disk, lanes, stats, rejoin).map(|(verify, _)| verify)
}

/// [`run`], and what the source of a dry session said differs, if it did.
pub(super) fn run_told(
    p: &Params,
    disk: &Disk,
    lanes: Vec<Lane>,
    stats: &Stats,
    rejoin: &dyn Rejoin,
) -> Result<(u128, Option<proto::Tally>)> {
    let n = lanes.len();
    let senders: Vec<_> = lanes.iter().map(|l| Arc::clone(&l.sender)).collect();
    let expected = Mutex::new(HashMap::new());
    let verify = Mutex::new(0u128);
    let done = AtomicBool::new(false);
    let confirmed = AtomicBool::new(false);
    let rejoined = AtomicBool::new(false);
    let spare = Mutex::new(Vec::new());
    let partial = Mutex::new(HashMap::new());
    let tally = Mutex::new(None);
    let refused = Mutex::new(None);
    // The window counts the blocks between their read here and their
    // write; what each holds meanwhile is its page digests (and, from
    // arrival to write, the data received), so its size is a budget of
    // digests, not of buffers: far ahead of the source over a long round
    // trip, and no block buffer held while the digests travel.
    let in_flight = window_blocks(p.geo.block_size, p.workers, p.prefetch);
    let window = Window::new(in_flight);
    let abort = Abort::new(senders.clone(), vec![&window], rejoin);
    // Read buffers only live while their digests are computed, so blocks
    // are read in pieces (`config::DIGEST_PIECE`): a few of those are
    // mapped and faulted in, not a block per worker. Received data is
    // held in buffers of its own size until written, and what the source
    // sends unacknowledged is bounded by its flight budget.
    let piece = p.geo.buffer_len().min(DIGEST_PIECE);
    let read_pool = Pool::new(2 * (p.workers + 1), piece, true, disk.hints());
    // What is received and not yet written is bounded by the source's
    // budget in flight, which counts these buffers' bytes (within its
    // `config::flight_cap`); spares are kept only while the pool holds no
    // more than the budgets in it, without the block beyond them, so that
    // the steady state allocates nothing and a spare is not the peak.
    let budgets = flight_cap(p.geo.block_size, p.workers).saturating_sub(p.geo.block_size as u64);
    let limit = usize::try_from(budgets).unwrap_or(usize::MAX);
    let recv_pool = Pool::sized(limit, disk.hints());
    let (read_tx, read_rx) = sync_channel(p.workers);
    let read_rx = Arc::new(Mutex::new(read_rx));
    // The writer takes blocks off this queue into its own reordering map
    // whenever it is not writing, so a short queue cannot stall a lane.
    let (write_tx, write_rx) = sync_channel::<Pooled>(n + 1);
    let ctx = DestCtx {
        p,
        expected: &expected,
        senders: &senders,
        stats,
        verify: &verify,
        done: &done,
        confirmed: &confirmed,
        rejoined: &rejoined,
        spare: &spare,
        partial: &partial,
        zero: p.zero_digest(p.page()),
        dry: disk.is_dry() && !disk.captures(),
        tally: &tally,
        refused: &refused,
    };

    let abort = &abort;
    let (window, read_pool) = (&window, &read_pool);
    thread::scope(|s| {
        super::spawn_or_fail(s, abort, move || {
            let blocks = p.first..p.geo.blocks();
            abort.guard(|| {
                read_blocks(disk, p.geo, blocks, read_pool, &read_tx, stats, &|| {
                    window.acquire(abort)
                })
            });
        });
        for _ in 0..p.workers {
            let rx = Arc::clone(&read_rx);
            super::spawn_or_fail(s, abort, move || abort.guard(|| ctx.digest_worker(&rx)));
        }
        drop(read_rx);
        for (i, lane) in lanes.into_iter().enumerate() {
            let mut reader = lane.reader;
            let tx = write_tx.clone();
            let pool = &recv_pool;
            super::spawn_or_fail(s, abort, move || {
                let mut decompressor = Decompressor::default();
                let mut answer = Vec::new();
                run_lane(
                    i,
                    &mut reader,
                    abort,
                    |r| ctx.lane_loop(r, pool, &tx, &mut decompressor, &mut answer),
                    || ctx.resume(i),
                    &|| ctx.done.load(Ordering::Acquire),
                    // Its Complete must reach the source, done or not.
                    &|| false,
                );
            });
        }
        drop(write_tx);
        abort.guard(|| {
            let writer = Writer::new(disk, p.geo, p.first, stats);
            let mut ack = Vec::new();
            let next = writer.run(write_rx, |index| {
                ack.clear();
                proto::encode(&Frame::Ack { index }, &mut ack);
                window.release();
                // Acks are cumulative: a lost one is covered by the next,
                // and by Complete at the end.
                let _ = senders[lane_of(index, n)].send(&mut ack);
                Ok(())
            })?;
            if next != p.geo.blocks() {
                // A lane or reader failed and has said why.
                return Ok(());
            }
            disk.flush()?;
            done.store(true, Ordering::Release);
            let v = *lock(&verify);
            for s in &senders {
                // A lane that is down sends it again once rejoined.
                let _ = s.send_frame(&Frame::Complete {
                    blocks: p.geo.blocks(),
                    verify: v,
                });
            }
            Ok(())
        });
    });
    abort.outcome()?;
    if !done.load(Ordering::Acquire) {
        return Err(Error::Failed(format!(
            "{}: the session ended before every block was written",
            disk.label()
        )));
    }
    if let Some(e) = lock(&refused).take() {
        return Err(e);
    }
    if !confirmed.load(Ordering::Acquire) {
        return Err(Error::Failed(format!(
            "{}: every block was written and flushed, but the source never confirmed \
             the verification digest (its Bye did not arrive): the run may not be complete",
            disk.label()
        )));
    }
    let v = *lock(&verify);
    let told = *lock(&tally);
    Ok((v, told))
}

impl DestCtx<'_> {
    /// Digest destination blocks (or pieces of them) and send their range
    /// digests to the source, keeping the page digests for `Refine` and
    /// the check.
    fn digest_worker(&self, rx: &Mutex<Receiver<Pooled>>) -> Result<()> {
        let mut frame = Vec::new();
        let mut ranges = Vec::new();
        let mut part = Vec::new();
        loop {
            let Ok(mut block) = lock(rx).recv() else {
                return Ok(());
            };
            let index = block.index;
            let digests = if block.at == 0 && block.len == self.p.geo.len(index) {
                let b = &mut *block;
                let mut digests = std::mem::take(&mut b.digests);
                Content::of(b).digests(self.p, self.zero, &mut digests);
                b.digests = lock(self.spare).pop().unwrap_or_default();
                digests
            } else {
                Content::of(&block).digests(self.p, self.zero, &mut part);
                let Some(digests) = self.gather(&block, &part) else {
                    continue;
                };
                digests
            };
            drop(block);
            proto::range_digests(&digests, &mut ranges);
            frame.clear();
            proto::encode_digests(&mut frame, index, &ranges);
            lock(self.expected).insert(index, digests);
            // A lost lane sends every digest still awaiting data once rejoined.
            let _ = self.senders[lane_of(index, self.senders.len())].send(&mut frame);
        }
    }

    /// File `part`, the page digests of the piece `block` of its block
    /// (pieces are digested by any worker, in any order); the block's page
    /// digests once this was its last piece.
    fn gather(&self, block: &Pooled, part: &[Digest]) -> Option<Vec<Digest>> {
        let (index, len) = (block.index, self.p.geo.len(block.index));
        let mut partial = lock(self.partial);
        let (digests, left) = partial.entry(index).or_insert_with(|| {
            let mut list = lock(self.spare).pop().unwrap_or_default();
            list.clear();
            list.resize(len.div_ceil(self.p.page()), 0);
            (list, len)
        });
        // Pieces start on a page: they are a multiple of it long.
        let first = block.at / self.p.page();
        digests[first..first + part.len()].copy_from_slice(part);
        *left -= block.len;
        if *left > 0 {
            return None;
        }
        partial.remove(&index).map(|(digests, _)| digests)
    }

    /// After lane `lane` was rejoined: repeat the last acknowledgement,
    /// ask again for every block of that lane whose data has not arrived,
    /// and repeat `Complete` if we are done. Should the new connection be
    /// lost before these go, the lane is rejoined again and they go then.
    fn resume(&self, lane: usize) {
        self.rejoined.store(true, Ordering::Release);
        let n = self.senders.len();
        let sender = &self.senders[lane];
        let mut frames = Vec::new();
        // The acknowledgements sent while the connection was going down
        // may be lost, and the source lets the lowest unacknowledged
        // block out over its budget in flight: without this, a source
        // whose budget is spent waits for an acknowledgement of a block
        // already written, which is never asked for again. (The writer
        // counts a block written before it acknowledges it.)
        let written = self.stats.resume_at.load(Ordering::Acquire);
        if written > self.p.first {
            let index = written - 1;
            proto::encode(&Frame::Ack { index }, &mut frames);
        }
        {
            let expected = lock(self.expected);
            let mut waiting: Vec<_> = expected
                .iter()
                .filter(|(index, _)| lane_of(**index, n) == lane)
                .collect();
            waiting.sort_unstable_by_key(|(index, _)| **index);
            let mut ranges = Vec::new();
            for (index, pages) in waiting {
                proto::range_digests(pages, &mut ranges);
                proto::encode_digests(&mut frames, *index, &ranges);
            }
        }
        if self.done.load(Ordering::Acquire) {
            let v = *lock(self.verify);
            let blocks = self.p.geo.blocks();
            proto::encode(&Frame::Complete { blocks, verify: v }, &mut frames);
        }
        let _ = sender.send(&mut frames);
    }

    /// Receive blocks from a lane, check them and pass them to the writer.
    fn lane_loop(
        &self,
        reader: &mut FrameReader,
        pool: &Pool,
        tx: &SyncSender<Pooled>,
        decompressor: &mut Decompressor,
        answer: &mut Vec<u8>,
    ) -> Result<()> {
        // Once per call, not per frame: run_lane calls again after a rejoin.
        let peer = reader.peer.clone();
        loop {
            let peer = peer.as_str();
            match reader.read("blocks")? {
                Frame::Refine { index, ranges } => self.refine(peer, index, ranges, answer)?,
                Frame::Block(b) => {
                    let Some(block) = self.receive(peer, &b, pool, decompressor)? else {
                        continue;
                    };
                    if tx.send(block).is_err() {
                        return Ok(());
                    }
                }
                Frame::Bye { verify, tally } => return self.bye(peer, verify, tally),
                other => return Err(unexpected(peer, &other)),
            }
        }
    }

    /// Answer a `Refine`: the page digests of the ranges asked for.
    fn refine(&self, peer: &str, index: u64, ranges: &[u8], answer: &mut Vec<u8>) -> Result<()> {
        let bad = |what: String| Error::protocol(peer, format!("block {index}: {what}"));
        answer.clear();
        {
            let expected = lock(self.expected);
            let Some(pages) = expected.get(&index) else {
                let in_range = (self.p.first..self.p.geo.blocks()).contains(&index);
                if in_range && self.rejoined.load(Ordering::Acquire) {
                    // Asked twice around a reconnect, and answered since.
                    return Ok(());
                }
                return Err(bad("page digests asked for a block not in flight".into()));
            };
            let n = proto::ranges(pages.len());
            let past_end = (n..ranges.len() * 8).any(|r| proto::marked(ranges, r));
            if ranges.len() != proto::bitmap_len(n) || past_end {
                return Err(bad(format!(
                    "a Refine bitmap of {} bytes for {n} ranges",
                    ranges.len()
                )));
            }
            let asked = (0..n)
                .filter(|&r| proto::marked(ranges, r))
                .flat_map(|r| &pages[proto::range_pages(r, pages.len())]);
            proto::encode_pages(answer, index, asked);
        }
        // A lost lane is rejoined, and the source asks again.
        let _ = self.senders[lane_of(index, self.senders.len())].send(answer);
        Ok(())
    }

    /// The source's verdict: it saw our `Complete` and its digest equals
    /// ours. Success is reported only after this.
    fn bye(&self, peer: &str, theirs: u128, tally: Option<proto::Tally>) -> Result<()> {
        if !self.done.load(Ordering::Acquire) {
            return Err(Error::protocol(
                peer,
                "the source ended the session before every block was written",
            ));
        }
        let ours = *lock(self.verify);
        let verdict = if theirs != ours {
            Err(Error::Failed(format!(
                "verification failed: the source's digest {theirs:032x} \
                 differs from the destination's {ours:032x}"
            )))
        } else {
            tally.map_or(Ok(()), |t| self.tallied(peer, t))
        };
        match verdict {
            Ok(()) => self.confirmed.store(true, Ordering::Release),
            Err(e) => {
                lock(self.refused).get_or_insert(e);
            }
        }
        Ok(())
    }

    /// A dry session's `Bye` said what differs (on every lane: the
    /// first copy counts). A session that writes has nothing to tally.
    fn tallied(&self, peer: &str, t: proto::Tally) -> Result<()> {
        if !self.dry {
            return Err(Error::protocol(
                peer,
                "a dry run's tally in a session that writes",
            ));
        }
        super::dry::check(peer, self.p, t)?;
        lock(self.tally).get_or_insert(t);
        Ok(())
    }

    fn receive(
        &self,
        peer: &str,
        frame: &proto::BlockFrame<'_>,
        pool: &Pool,
        decompressor: &mut Decompressor,
    ) -> Result<Option<Pooled>> {
        let index = frame.index;
        let bad = |what: String| Error::protocol(peer, format!("block {index}: {what}"));
        let Some(mut digests) = lock(self.expected).remove(&index) else {
            let in_range = (self.p.first..self.p.geo.blocks()).contains(&index);
            if in_range && self.rejoined.load(Ordering::Acquire) {
                // Sent twice around a reconnect; the first copy counted.
                return Ok(None);
            }
            return Err(bad("not asked for, or sent twice".into()));
        };
        let geo = self.p.geo;
        let len = geo.len(index);
        let raw_len = frame.raw_len as usize;
        if raw_len > len {
            return Err(bad(format!("{raw_len} bytes of data in a block of {len}")));
        }
        let mut block = pool
            .get_len(raw_len)
            .map_err(|e| Error::io("destination", "allocate a buffer for received data", e))?;
        block.index = index;
        block.len = len;
        let data = &mut block.data[..raw_len];
        if frame.compressed {
            decompressor.decompress(frame.data, data).map_err(&bad)?;
        } else if frame.data.len() == raw_len {
            data.copy_from_slice(frame.data);
        } else {
            return Err(bad(format!(
                "{} bytes of data, announced {raw_len}",
                frame.data.len()
            )));
        }
        Stats::add(&self.stats.bytes_changed, raw_len as u64);
        let page = self.p.page();
        let salt = self.p.salt;
        let mut at = 0usize;
        let b = &mut *block;
        // A block has at most an extent per page: reserved at once, a new
        // buffer's list costs one allocation, not one per doubling.
        b.extents.reserve(digests.len());
        for change in frame.changes.iter() {
            let j = change.page as usize;
            let Some(d) = digests.get_mut(j) else {
                return Err(bad(format!("page {j} is past the end of the block")));
            };
            let start = j * page;
            let n = (start + page).min(len) - start;
            match change.kind {
                ChangeKind::Zero => {
                    *d = if n == page {
                        self.zero
                    } else {
                        self.p.zero_digest(n)
                    };
                    push_extent(&mut b.extents, start, n, ExtentKind::Zero, 0);
                }
                ChangeKind::Data(theirs) | ChangeKind::Partial { digest: theirs, .. } => {
                    if let ChangeKind::Partial { unreadable, .. } = change.kind {
                        proto::unmask(unreadable, start, n, &mut b.unreadable);
                    }
                    let Some(bytes) = b.data.get(at..at + n).filter(|_| at + n <= raw_len) else {
                        return Err(bad("less data than its changes need".into()));
                    };
                    if digest::digest(salt, bytes) != theirs {
                        return Err(bad(format!(
                            "page {j} does not match the source's digest after decompression \
                             (corrupted in transit)"
                        )));
                    }
                    *d = theirs;
                    push_extent(&mut b.extents, start, n, ExtentKind::Data, at);
                    at += n;
                }
            }
        }
        if at != raw_len {
            return Err(bad(format!("{raw_len} bytes of data, changes use {at}")));
        }
        let lost: usize = b.unreadable.iter().map(|&(_, n)| n).sum();
        Stats::add(&self.stats.bytes_unreadable, lost as u64);
        let h = block_hash_of_pages(index, &digests)
            .wrapping_add(proto::unreadable_hash(index, &b.unreadable));
        {
            let mut v = lock(self.verify);
            *v = v.wrapping_add(h);
        }
        lock(self.spare).push(digests);
        Ok(Some(block))
    }
}
