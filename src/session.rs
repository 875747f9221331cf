//! The two roles of a network session: the source side and the destination
//! side, whichever of them is the client.
//!
//! The destination reads its device in order and streams sub-block digests;
//! the source reads its own in order, compares, and sends each block as a
//! list of changed sub-blocks (zero markers, or data with the source's
//! digest, compressed). The destination checks every data sub-block against
//! that digest after decompression, writes in block order, and acknowledges.
//! A block counts as done on the source only when acknowledged.
//!
//! Connections are lanes: lane `i` of `n` carries every frame about blocks
//! `index % n == i`. The destination holds a window of permits: a block's
//! digests go out only with a permit, which comes back when the block is
//! written, so digests never run unboundedly ahead and every buffer on both
//! sides is bounded by the pools. When everything is written and flushed the
//! destination sends `Complete` with a verification digest over the final
//! content; the source checks it against its own and says `Bye`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use crate::block::{ExtentKind, Geometry, is_zero, push_extent};
use crate::cli::Level;
use crate::compress::{Compressor, Decompressor};
use crate::digest::{self, Digest, digest_sub_blocks};
use crate::disk::{Disk, read_blocks};
use crate::error::{Error, Result};
use crate::net::{self, FrameReader, FrameSender, Lane};
use crate::pool::{Pool, Pooled};
use crate::progress::Stats;
use crate::proto::{self, Change, ChangeKind, Frame};
use crate::writer::Writer;

/// The agreed parameters of a session.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// Source size and block size.
    pub geo: Geometry,
    /// First block to transfer (`-s`).
    pub first: u64,
    /// Digest salt.
    pub salt: u128,
    /// Compression of block data.
    pub compression: Option<Level>,
    /// CPU workers on this side.
    pub workers: usize,
    /// Read-ahead depth on this side.
    pub prefetch: usize,
}

impl Params {
    fn sub(&self) -> usize {
        digest::sub_block_size(self.geo.block_size)
    }
}

/// How often a waiting thread looks whether the session failed.
const POLL: Duration = Duration::from_millis(100);

/// The first failure of a session; everyone else stops when it is set.
struct Abort {
    first: Mutex<Option<Error>>,
    set: AtomicBool,
    senders: Vec<Arc<FrameSender>>,
}

impl Abort {
    fn new(senders: Vec<Arc<FrameSender>>) -> Abort {
        Abort {
            first: Mutex::new(None),
            set: AtomicBool::new(false),
            senders,
        }
    }

    fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Record `e` if it is the first failure, tell the peer, and close every
    /// lane so threads blocked on the network wake up.
    fn fail(&self, e: Error) {
        let mut first = lock(&self.first);
        if first.is_none() {
            let msg = e.to_string();
            *first = Some(e);
            self.set.store(true, Ordering::Release);
            drop(first);
            for s in &self.senders {
                s.fail(&msg);
            }
        }
    }

    /// Run `f`; a failure aborts the session.
    fn guard(&self, f: impl FnOnce() -> Result<()>) {
        if let Err(e) = f() {
            self.fail(e);
        }
    }

    fn outcome(&self) -> Result<()> {
        match lock(&self.first).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Wait on `cond` until `ready` gives a value, or the session fails.
fn wait_for<T, R>(
    m: &Mutex<T>,
    cond: &Condvar,
    abort: &Abort,
    mut ready: impl FnMut(&mut T) -> Option<R>,
) -> Option<R> {
    let mut guard = lock(m);
    loop {
        if let Some(r) = ready(&mut guard) {
            return Some(r);
        }
        if abort.is_set() {
            return None;
        }
        guard = cond
            .wait_timeout(guard, POLL)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// Hash of one block's final sub-block digests; the verification digest is
/// their sum, so lanes may finish blocks in any order.
fn block_hash(index: u64, digests: &[Digest]) -> u128 {
    let mut h = digest::fnv1a128(&index.to_le_bytes());
    for d in digests {
        h = digest::fnv1a128_update(h, &d.to_le_bytes());
    }
    h
}

/// Blocks `index` belongs to lane `index % lanes`.
fn lane_of(index: u64, lanes: usize) -> usize {
    (index % lanes as u64) as usize
}

/// How a lane whose connection was lost gets a new one: the client dials
/// again, the server waits for the client to come back.
pub trait Rejoin: Sync {
    /// A fresh, handshaken connection for `lane`; gives up when `stop` says so.
    fn rejoin(&self, lane: usize, stop: &dyn Fn() -> bool) -> Result<Lane>;
}

/// Read a lane until it ends; when its connection is lost, rejoin and call
/// `resumed`, then read on. Errors that are not a lost connection, or a
/// failed rejoin, abort the session unless `finished` says we are done.
fn run_lane(
    lane: usize,
    reader: &mut FrameReader,
    abort: &Abort,
    rejoin: &dyn Rejoin,
    mut read: impl FnMut(&mut FrameReader) -> Result<()>,
    mut resumed: impl FnMut() -> Result<()>,
    finished: &dyn Fn() -> bool,
) {
    loop {
        let Err(e) = read(reader) else { return };
        if finished() || abort.is_set() {
            return;
        }
        if !net::is_connection_loss(&e) {
            abort.fail(e);
            return;
        }
        match rejoin.rejoin(lane, &|| abort.is_set()) {
            Ok(fresh) => fresh.take_over(reader, &abort.senders[lane]),
            Err(again) => {
                abort.fail(Error::Failed(format!("{e}; reconnecting failed: {again}")));
                return;
            }
        }
        if let Err(e) = resumed() {
            abort.fail(e);
            return;
        }
    }
}

// ---------------------------------------------------------------- source ---

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
    complete: Option<u128>,
    /// `Bye` went out: lanes closing now is expected.
    finished: bool,
    /// Digest lists done with, reused so a block costs no allocation.
    spare: Vec<Vec<Digest>>,
}

/// Run the source side over `lanes`; returns the verification digest.
pub fn run_source(
    p: &Params,
    disk: &Disk,
    lanes: Vec<Lane>,
    stats: &Stats,
    rejoin: &dyn Rejoin,
) -> Result<u128> {
    let senders: Vec<_> = lanes.iter().map(|l| Arc::clone(&l.sender)).collect();
    let abort = Abort::new(senders.clone());
    let state = Mutex::new(SourceState {
        acked_to: p.first,
        ..SourceState::default()
    });
    let cond = Condvar::new();
    let verify = Mutex::new(0u128);
    let end = p.geo.blocks();
    let pool = Pool::new(p.prefetch + 2 * p.workers + 2, p.geo.buffer_len(), true);
    let (tx, rx) = sync_channel(p.prefetch);
    let rx = Arc::new(Mutex::new(rx));
    let ctx = SourceCtx {
        p,
        disk,
        abort: &abort,
        state: &state,
        cond: &cond,
        senders: &senders,
        stats,
        verify: &verify,
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
                    rejoin,
                    |r| ctx.lane_loop(r, &mut compressor),
                    || Ok(()),
                    &|| lock(ctx.state).finished,
                );
            });
        }
        for _ in 0..p.workers {
            let rx = Arc::clone(&rx);
            s.spawn(move || abort.guard(|| ctx.worker(&rx)));
        }
        drop(rx);
        let theirs = wait_for(&state, &cond, abort, |st| {
            (st.acked_to == end).then_some(st.complete).flatten()
        });
        if let Some(theirs) = theirs {
            let ours = *lock(&verify);
            if theirs != ours {
                abort.fail(Error::Failed(format!(
                    "verification failed: the destination's digest {theirs:032x} \
                     differs from the source's {ours:032x}"
                )));
            } else {
                lock(&state).finished = true;
                for s in &senders {
                    let _ = s.send_frame(&Frame::Bye);
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
    disk: &'a Disk,
    abort: &'a Abort,
    state: &'a Mutex<SourceState>,
    cond: &'a Condvar,
    senders: &'a [Arc<FrameSender>],
    stats: &'a Stats,
    verify: &'a Mutex<u128>,
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
        let mut st = lock(self.state);
        while let Some(entry) = st.unacked.first_entry() {
            if *entry.key() >= upto {
                break;
            }
            let sent = entry.remove();
            Stats::add(&self.stats.blocks_done, 1);
            Stats::add(&self.stats.bytes_done, sent.bytes);
        }
        st.acked_to = st.acked_to.max(upto);
        drop(st);
        self.cond.notify_all();
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
                    let mut list = lock(self.state).spare.pop().unwrap_or_default();
                    proto::read_digests(digests, &mut list);
                    let mut st = lock(self.state);
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
                    self.cond.notify_all();
                }
                Frame::Ack { index } if index < end => self.acknowledge(index + 1),
                Frame::Complete { verify } => {
                    lock(self.state).complete = Some(verify);
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
        let n = crate::sys::pread_full(&self.disk.file, &mut data, self.p.geo.offset(index))
            .map_err(|e| Error::io(&self.disk.label, format!("read at block {index}"), e))?;
        if n < len {
            return Err(Error::Failed(format!(
                "{}: read at block {index}: the source shrank during the run",
                self.disk.label
            )));
        }
        let mut scratch = FrameScratch::default();
        let mut extents = Vec::new();
        self.build_frame(index, &data, theirs, compressor, &mut scratch, &mut extents)?;
        // A lost lane will be rejoined and ask again.
        let _ = self.senders[lane_of(index, self.senders.len())].send(&mut scratch.frame);
        Ok(())
    }

    /// Compare `data` with the destination's digests, fill `extents`, and
    /// build the `Block` frame in `scratch.frame`. Returns the stats class.
    fn build_frame(
        &self,
        index: u64,
        data: &[u8],
        theirs: &[Digest],
        compressor: &mut Compressor,
        scratch: &mut FrameScratch,
        extents: &mut Vec<crate::block::Extent>,
    ) -> Result<usize> {
        let sub = self.p.sub();
        digest_sub_blocks(self.p.salt, data, sub, &mut scratch.ours);
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
            let (kind, ext) = if is_zero(&data[start..end]) {
                (ChangeKind::Zero, ExtentKind::Zero)
            } else {
                raw_len += end - start;
                (ChangeKind::Data(*mine), ExtentKind::Data)
            };
            scratch.changes.push(Change {
                sub: j as u32,
                kind,
            });
            push_extent(extents, start, end - start, ext, start);
        }
        let frame = &mut scratch.frame;
        frame.clear();
        let start = proto::begin_block(frame, index, false, raw_len as u32, &scratch.changes);
        let pieces = extents
            .iter()
            .filter(|e| e.kind == ExtentKind::Data)
            .map(|e| &data[e.start..e.start + e.len]);
        if compressor.append(pieces, frame) {
            proto::mark_compressed(frame, start);
        }
        proto::finish_frame(frame, start);
        Stats::add(&self.stats.wire_sent, frame.len() as u64);
        Stats::add(&self.stats.bytes_changed, raw_len as u64);
        Ok(raw_len)
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
            let Some(theirs) = wait_for(self.state, self.cond, self.abort, |st| {
                st.remote.remove(&index)
            }) else {
                return Ok(());
            };
            let b = &mut *block;
            let raw_len = self.build_frame(
                index,
                &b.data[..b.len],
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
            let mut st = lock(self.state);
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
            // A lost lane is rejoined by its reader, and the destination
            // asks again for what it did not get.
            let _ = self.senders[lane_of(index, self.senders.len())].send(&mut scratch.frame);
        }
    }
}

/// The error for a frame that has no place here: the peer's own `Error`
/// frame, or a protocol violation.
pub(crate) fn unexpected(peer: &str, frame: &Frame<'_>) -> Error {
    match frame {
        Frame::Error(msg) => match msg.strip_prefix(AUTH_FAILED) {
            Some(why) => Error::Auth {
                peer: peer.to_string(),
                why: why.to_string(),
            },
            None => Error::Remote {
                peer: peer.to_string(),
                msg: msg.to_string(),
            },
        },
        other => Error::protocol(peer, format!("unexpected {} frame", other.name())),
    }
}

/// How an `Error` frame about authentication starts, so that the other end
/// reports it as such.
pub(crate) const AUTH_FAILED: &str = "authentication failed: ";

// ----------------------------------------------------------- destination ---

/// Counting permits: how many blocks may be in flight.
struct Window {
    free: Mutex<usize>,
    cond: Condvar,
}

impl Window {
    fn acquire(&self, abort: &Abort) -> bool {
        wait_for(&self.free, &self.cond, abort, |free| {
            (*free > 0).then(|| *free -= 1)
        })
        .is_some()
    }

    fn release(&self) {
        *lock(&self.free) += 1;
        self.cond.notify_one();
    }
}

#[derive(Clone, Copy)]
struct DestCtx<'a> {
    p: &'a Params,
    /// Our own digests of blocks whose data has not arrived yet.
    expected: &'a Mutex<HashMap<u64, Vec<Digest>>>,
    senders: &'a [Arc<FrameSender>],
    stats: &'a Stats,
    verify: &'a Mutex<u128>,
    done: &'a AtomicBool,
    /// A lane was rejoined: duplicate blocks are expected now.
    rejoined: &'a AtomicBool,
    /// Digest lists done with, reused so a block costs no allocation.
    spare: &'a Mutex<Vec<Vec<Digest>>>,
}

/// Run the destination side over `lanes` into `disk` (already sized);
/// returns the verification digest.
pub fn run_destination(
    p: &Params,
    disk: &Disk,
    lanes: Vec<Lane>,
    stats: &Stats,
    rejoin: &dyn Rejoin,
) -> Result<u128> {
    let n = lanes.len();
    let senders: Vec<_> = lanes.iter().map(|l| Arc::clone(&l.sender)).collect();
    let abort = Abort::new(senders.clone());
    let expected = Mutex::new(HashMap::new());
    let verify = Mutex::new(0u128);
    let done = AtomicBool::new(false);
    let rejoined = AtomicBool::new(false);
    let spare = Mutex::new(Vec::new());
    let in_flight = p.prefetch + p.workers;
    let window = Window {
        free: Mutex::new(in_flight),
        cond: Condvar::new(),
    };
    // Read buffers only live while their digests are computed; received
    // blocks hold a permit each, so neither pool can run dry for good.
    let read_pool = Pool::new(p.workers + 1, p.geo.buffer_len(), true);
    let recv_pool = Pool::new(in_flight + 1, p.geo.buffer_len(), false);
    let (read_tx, read_rx) = sync_channel(p.workers);
    let read_rx = Arc::new(Mutex::new(read_rx));
    let (write_tx, write_rx) = sync_channel::<Pooled>(in_flight);
    let ctx = DestCtx {
        p,
        expected: &expected,
        senders: &senders,
        stats,
        verify: &verify,
        done: &done,
        rejoined: &rejoined,
        spare: &spare,
    };

    let abort = &abort;
    let (window, read_pool) = (&window, &read_pool);
    thread::scope(|s| {
        s.spawn(move || {
            let blocks = p.first..p.geo.blocks();
            abort.guard(|| {
                read_blocks(disk, p.geo, blocks, read_pool, &read_tx, stats, &|| {
                    window.acquire(abort)
                })
            });
        });
        for _ in 0..p.workers {
            let rx = Arc::clone(&read_rx);
            s.spawn(move || abort.guard(|| ctx.digest_worker(&rx)));
        }
        drop(read_rx);
        for (i, lane) in lanes.into_iter().enumerate() {
            let mut reader = lane.reader;
            let tx = write_tx.clone();
            let pool = &recv_pool;
            s.spawn(move || {
                let mut decompressor = Decompressor::default();
                run_lane(
                    i,
                    &mut reader,
                    abort,
                    rejoin,
                    |r| ctx.lane_loop(r, pool, &tx, &mut decompressor),
                    || ctx.resume(i),
                    &|| ctx.done.load(Ordering::Acquire),
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
            Writer::flush(disk)?;
            done.store(true, Ordering::Release);
            let v = *lock(&verify);
            for s in &senders {
                // A lane that is down sends it again once rejoined.
                let _ = s.send_frame(&Frame::Complete { verify: v });
            }
            Ok(())
        });
    });
    abort.outcome()?;
    if !done.load(Ordering::Acquire) {
        return Err(Error::Failed(format!(
            "{}: the session ended before every block was written",
            disk.label
        )));
    }
    let v = *lock(&verify);
    Ok(v)
}

impl DestCtx<'_> {
    /// Digest destination blocks and send the digests to the source.
    fn digest_worker(&self, rx: &Mutex<Receiver<Pooled>>) -> Result<()> {
        let mut frame = Vec::new();
        loop {
            let Ok(mut block) = lock(rx).recv() else {
                return Ok(());
            };
            let index = block.index;
            let b = &mut *block;
            digest_sub_blocks(self.p.salt, &b.data[..b.len], self.p.sub(), &mut b.digests);
            frame.clear();
            proto::encode_digests(&mut frame, index, &b.digests);
            let fresh = lock(self.spare).pop().unwrap_or_default();
            lock(self.expected).insert(index, std::mem::replace(&mut b.digests, fresh));
            drop(block);
            // A lost lane sends every digest still awaiting data once rejoined.
            let _ = self.senders[lane_of(index, self.senders.len())].send(&mut frame);
        }
    }

    /// After lane `lane` was rejoined: ask again for every block of that lane
    /// whose data has not arrived, and repeat `Complete` if we are done.
    fn resume(&self, lane: usize) -> Result<()> {
        self.rejoined.store(true, Ordering::Release);
        let n = self.senders.len();
        let sender = &self.senders[lane];
        let mut frames = Vec::new();
        {
            let expected = lock(self.expected);
            let mut waiting: Vec<_> = expected
                .iter()
                .filter(|(index, _)| lane_of(**index, n) == lane)
                .collect();
            waiting.sort_unstable_by_key(|(index, _)| **index);
            for (index, digests) in waiting {
                proto::encode_digests(&mut frames, *index, digests);
            }
        }
        if self.done.load(Ordering::Acquire) {
            let v = *lock(self.verify);
            proto::encode(&Frame::Complete { verify: v }, &mut frames);
        }
        sender.send(&mut frames)
    }

    /// Receive blocks from a lane, check them and pass them to the writer.
    fn lane_loop(
        &self,
        reader: &mut FrameReader,
        pool: &Pool,
        tx: &SyncSender<Pooled>,
        decompressor: &mut Decompressor,
    ) -> Result<()> {
        // Once per call, not per frame: run_lane calls again after a rejoin.
        let peer = reader.peer.clone();
        loop {
            let peer = peer.as_str();
            match reader.read("blocks")? {
                Frame::Block(b) => {
                    let Some(block) = self.receive(peer, &b, pool, decompressor)? else {
                        continue;
                    };
                    if tx.send(block).is_err() {
                        return Ok(());
                    }
                }
                Frame::Bye => return Ok(()),
                other => return Err(unexpected(peer, &other)),
            }
        }
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
            .get()
            .map_err(|e| Error::io("destination", "allocate a block buffer", e))?;
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
        Stats::add(&self.stats.wire_received, frame.data.len() as u64);
        let sub = self.p.sub();
        let salt = self.p.salt;
        let mut at = 0usize;
        let b = &mut *block;
        for change in frame.changes.iter() {
            let j = change.sub as usize;
            let Some(d) = digests.get_mut(j) else {
                return Err(bad(format!("sub-block {j} is past the end of the block")));
            };
            let start = j * sub;
            let n = (start + sub).min(len) - start;
            match change.kind {
                ChangeKind::Zero => {
                    *d = digest::digest(salt, &ZEROS[..n]);
                    push_extent(&mut b.extents, start, n, ExtentKind::Zero, 0);
                }
                ChangeKind::Data(theirs) => {
                    let Some(bytes) = b.data.get(at..at + n).filter(|_| at + n <= raw_len) else {
                        return Err(bad("less data than its changes need".into()));
                    };
                    if digest::digest(salt, bytes) != theirs {
                        return Err(bad(format!(
                            "sub-block {j} does not match the source's digest after decompression \
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
        let h = block_hash(index, &digests);
        {
            let mut v = lock(self.verify);
            *v = v.wrapping_add(h);
        }
        lock(self.spare).push(digests);
        Ok(Some(block))
    }
}

/// Zeros to digest a cleared sub-block against.
static ZEROS: [u8; digest::SUB_BLOCK] = [0; digest::SUB_BLOCK];
