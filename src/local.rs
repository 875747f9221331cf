//! Local mode: `bsync -f SRC -t DST`, both ends on this machine.
//!
//! It runs the same engine as the network modes: one sequential reader per
//! side feeding a bounded prefetch queue, `-w` workers that decide what each
//! block needs, and the single ordered [`Writer`]. Blocks go through in
//! pieces of [`LOCAL_PIECE`], so that what was read is compared while still
//! in the CPU's cache. With both ends at hand
//! there is no need for digests: workers compare the bytes page by page
//! ([`GRAIN`], the same 4 KiB grain as the network's `proto::PAGE`), so a
//! changed sector costs one page write.

use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread;

use crate::block::{Block, ExtentKind, Geometry, is_zero, push_extent};
use crate::config::{Env, LOCAL_PIECE, Transfer};
use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::lock::lock;
use crate::log::Log;
use crate::pool::{Pool, Pooled};
use crate::progress::{Reporter, Stats, Totals};
use crate::reader::read_blocks;
use crate::session::spawn_scoped;
use crate::summary::{Side, report_json, summary};
use crate::sys::simd::equal;
use crate::writer::Writer;

/// Comparison and write granularity: a page. Finer writes would make the
/// kernel read-modify-write; coarser ones rewrite unchanged data.
pub const GRAIN: usize = 4096;

/// Make `dst` identical to `src`; with `rescue` (`--rescue`), past read
/// errors of `src`, keeping that ddrescue map.
pub fn sync(
    t: &Transfer,
    env: &Env,
    src: &Path,
    dst: &Path,
    rescue: Option<&Path>,
    log: &Log,
) -> Result<()> {
    let source = Disk::open_source(src, env, log)?.rescued(rescue, src)?;
    let geo = Geometry {
        size: source.size(),
        block_size: t.block_size,
    };
    crate::session::check_skip(t.skip, geo)?;
    if let Ok(existing) = std::fs::metadata(dst) {
        use std::os::unix::fs::MetadataExt;
        let (dev, ino, rdev) = source.identity()?;
        let same_device = source.is_device() && existing.rdev() == rdev;
        if same_device || (existing.dev() == dev && existing.ino() == ino) {
            return Err(Error::usage(format!(
                "-t: {} is the source itself; nothing to do",
                dst.display()
            )));
        }
    }
    let mut dest = Disk::open_destination(dst, env, log)?;
    dest.fit_to(source.size())?;

    let first = t.skip;
    let stats = Arc::new(Stats::default());
    let totals = Totals::from_block(geo, first);
    if first > 0 {
        let blocks = crate::progress::plural(first, "block");
        log.info(format!("skipping the first {first} {blocks} (-s)"));
    }
    let reporter = Reporter::start(log, &stats, totals, !log.is_quiet(), &[]);
    crate::progress::resumable(geo.block_size, geo.blocks());
    let next = run_pipeline(t, &source, &dest, geo, first, &stats)?;
    if next != geo.blocks() {
        return Err(Error::Failed(format!(
            "{}: the pipeline stopped before block {next} of {}",
            dest.label(),
            geo.blocks()
        )));
    }
    dest.flush()?;
    source.check_unchanged()?;
    let elapsed = reporter.finish();
    // Locally the changed data is what was written: nothing is compressed.
    let written = stats
        .bytes_written
        .load(std::sync::atomic::Ordering::Relaxed);
    Stats::add(&stats.bytes_changed, written);
    // The summary names the destination: a mistyped -t shows here.
    log.info(format!(
        "{}: {}",
        dest.label(),
        summary(&stats, elapsed, Side::Local, first)
    ));
    report_json(log, &stats, elapsed, Side::Local, first, false);
    dest.report_excess(source.size());
    match source.rescue() {
        Some(rescue) => rescue.finish(log, &stats, elapsed),
        None => Ok(()),
    }
}

/// Run readers, workers and writer; return the first block not written.
fn run_pipeline(
    t: &Transfer,
    source: &Disk,
    dest: &Disk,
    geo: Geometry,
    first: u64,
    stats: &Stats,
) -> Result<u64> {
    let workers = t.workers;
    // Pieces that stay in the CPU's cache between read and comparison.
    let piece = geo.buffer_len().min(LOCAL_PIECE);
    let src_pool = Pool::new(t.prefetch + 2 * workers + 2, piece, true, source.hints());
    let dst_pool = Pool::new(t.prefetch + workers + 1, piece, false, dest.hints());
    let (src_tx, src_rx) = sync_channel(t.prefetch);
    let (dst_tx, dst_rx) = sync_channel(t.prefetch);
    let (out_tx, out_rx) = sync_channel(workers * 2);
    // Owned by the workers alone: when the last one quits, the readers'
    // sends fail and they stop instead of waiting forever.
    let inputs = Arc::new(Mutex::new((src_rx, dst_rx)));
    let grain = GRAIN.min(geo.block_size);
    let blocks = first..geo.blocks();

    thread::scope(|s| {
        let range = blocks.clone();
        // A refused thread returns at once: what is dropped with this
        // closure's channels ends the threads already started.
        let src_reader = spawn_scoped(s, move || {
            read_blocks(source, geo, range, &src_pool, &src_tx, stats, &|| true)
        })?;
        let dst_reader = spawn_scoped(s, move || {
            read_blocks(dest, geo, blocks, &dst_pool, &dst_tx, stats, &|| true)
        })?;
        let workers = (0..workers)
            .map(|_| {
                let out = out_tx.clone();
                let inputs = Arc::clone(&inputs);
                spawn_scoped(s, move || compare_blocks(&inputs, &out, grain))
            })
            .collect::<Result<Vec<_>>>()?;
        drop((out_tx, inputs));
        let done = |index| match source.rescue() {
            Some(rescue) => rescue.done(index, geo.offset(index), geo.len(index) as u64),
            None => Ok(()),
        };
        let mut outcome = Writer::new(dest, geo, first, stats).run(out_rx, done);
        let others = [join(src_reader), join(dst_reader)]
            .into_iter()
            .chain(workers.into_iter().map(join));
        for result in others {
            // The writer only sees its input end early; a reader's or a
            // worker's error is the cause, so it wins over a short count.
            if let (Ok(_), Err(e)) = (&outcome, result) {
                outcome = Err(e);
            }
        }
        outcome
    })
}

fn join(h: thread::ScopedJoinHandle<'_, Result<()>>) -> Result<()> {
    h.join().unwrap_or_else(|_| {
        Err(Error::Failed(
            "internal error: a pipeline thread panicked".into(),
        ))
    })
}

/// A worker: take the next (source, destination) pair of blocks (or pieces
/// of them), decide the extents the destination needs, pass the source's to
/// the writer.
fn compare_blocks(
    inputs: &Mutex<(Receiver<Pooled>, Receiver<Pooled>)>,
    out: &SyncSender<Pooled>,
    grain: usize,
) -> Result<()> {
    loop {
        let rx = lock(inputs);
        let Ok(mut src) = rx.0.recv() else {
            return Ok(());
        };
        let Ok(mut dst) = rx.1.recv() else {
            return Ok(());
        };
        debug_assert_eq!((src.index, src.at), (dst.index, dst.at));
        if src.len == dst.len {
            drop(rx);
            plan_extents(&mut src, &dst, grain);
            drop(dst);
            if out.send(src).is_err() {
                return Ok(());
            }
            continue;
        }
        // One side sent a block with nothing to read (a hole, or finished
        // by a rescue's map) whole, the other in pieces: the pieces are
        // paired with it here, under the lock, so that they stay in order.
        if src.len > dst.len {
            loop {
                plan_zeros(&mut src, &dst, grain);
                let end = dst.at + dst.len;
                drop(dst);
                if end == src.len {
                    break;
                }
                let Ok(next) = rx.1.recv() else { return Ok(()) };
                dst = next;
            }
            drop(rx);
            if out.send(src).is_err() {
                return Ok(());
            }
        } else {
            debug_assert!(dst.hole && dst.at == 0);
            loop {
                plan_extents(&mut src, &dst, grain);
                let end = src.at + src.len;
                if out.send(src).is_err() {
                    return Ok(());
                }
                if end == dst.len {
                    break;
                }
                let Ok(next) = rx.0.recv() else { return Ok(()) };
                src = next;
            }
        }
    }
}

/// Fill `src.extents` with what turns `dst` into `src`, two pieces of the
/// same bytes (or whole blocks); `dst` may also be a whole hole. A hole on
/// either side is known to be zeros and is not looked at.
fn plan_extents(src: &mut Block, dst: &Block, grain: usize) {
    if (src.hole && dst.hole) || src.finished {
        return;
    }
    let Block {
        data,
        len,
        extents,
        hole,
        ..
    } = src;
    for start in (0..*len).step_by(grain) {
        let end = (start + grain).min(*len);
        let want = (!*hole).then(|| &data[start..end]);
        let have = (!dst.hole).then(|| &dst.data[start..end]);
        let kind = match (want, have) {
            (Some(want), Some(have)) if equal(want, have) => None,
            (Some(want), _) if !is_zero(want) => Some(ExtentKind::Data),
            (Some(_), Some(_)) => Some(ExtentKind::Zero),
            (Some(_), None) => None,
            (None, Some(have)) => (!is_zero(have)).then_some(ExtentKind::Zero),
            (None, None) => None,
        };
        if let Some(kind) = kind {
            push_extent(extents, start, end - start, kind, start);
        }
    }
}

/// Fill `src.extents`, a whole block with nothing read (a hole, or
/// finished by a rescue's map), with what the piece `dst` of it needs: its
/// pages that are not zeros are cleared (nothing, where finished).
fn plan_zeros(src: &mut Block, dst: &Block, grain: usize) {
    if dst.hole || src.finished {
        return;
    }
    debug_assert!(src.hole && src.at == 0);
    for start in (0..dst.len).step_by(grain) {
        let end = (start + grain).min(dst.len);
        if !is_zero(&dst.data[start..end]) {
            let at = dst.at + start;
            push_extent(&mut src.extents, at, end - start, ExtentKind::Zero, at);
        }
    }
}
