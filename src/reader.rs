//! The one sequential reader both ends use: blocks in order, read straight
//! into pooled buffers and handed down a bounded queue.
//!
//! A block that lies in a hole of a regular file (`SEEK_DATA`) is not read
//! at all: it goes down the queue marked [`Block::hole`](crate::block::Block),
//! and nobody digests or compares its zeros. A 100 GiB sparse file costs a
//! seek per block, not 100 GiB of reading and hashing.
//!
//! Reading in block order keeps a spinning disk streaming; the queue's bound
//! (the pool's size) is the prefetch depth. Pages already read are dropped
//! from the page cache behind the reader so a long run does not evict
//! everything else.

use std::ops::Range;
use std::sync::mpsc::SyncSender;

use crate::block::Geometry;
use crate::disk::{Disk, Note};
use crate::error::{Error, Result};
use crate::pool::{Pool, Pooled};
use crate::progress::{Stats, human_bytes};
use crate::rescue::Rescue;

/// How much the reader reads before it drops the pages behind it.
const DROP_BEHIND: u64 = 8 << 20;

/// Read `blocks` of `disk` in order into pooled buffers and send them on.
///
/// `gate` is asked before each block and may wait (the destination's window);
/// `false` stops the reader. Stops quietly when the receiver hangs up too:
/// whoever stopped it reports why.
/// Pages already read are dropped from the page cache behind the reader so a
/// long run does not evict everything else.
pub fn read_blocks(
    disk: &Disk,
    geo: Geometry,
    blocks: Range<u64>,
    pool: &Pool,
    tx: &SyncSender<Pooled>,
    stats: &Stats,
    gate: &dyn Fn() -> bool,
) -> Result<()> {
    let mut dropped_to = geo.offset(blocks.start);
    let mut next_data = 0u64;
    let hints = disk.hints();
    for index in blocks {
        if !gate() {
            break;
        }
        let mut block = pool
            .get()
            .map_err(|e| Error::io(disk.label(), "allocate a block buffer", e))?;
        let len = geo.len(index);
        let offset = geo.offset(index);
        block.index = index;
        block.len = len;
        if let Some(rescue) = disk.rescue() {
            block.finished = rescue.finished(offset, len as u64);
        }
        block.hole = !block.finished && disk.is_hole(offset, len, &mut next_data);
        if block.hole || block.finished {
            if tx.send(block).is_err() {
                break;
            }
            continue;
        }
        let n = match disk.rescue() {
            None => disk
                .read_at(&mut block.data[..len], offset)
                .map_err(|e| Error::io(disk.label(), format!("read at block {index}"), e))?,
            Some(rescue) => {
                let buf = &mut block.data[..len];
                let (n, bad) = read_rescued(disk, rescue, (index, offset), buf, stats)?;
                block.unreadable = bad;
                n
            }
        };
        if n < len {
            return Err(Error::Failed(format!(
                "{}: read at block {index}: unexpected end of file at byte {} \
                 (did it shrink during the run?)",
                disk.label(),
                offset + n as u64
            )));
        }
        disk.note_buffer(&block.data);
        Stats::add(&stats.bytes_read, len as u64);
        let end = offset + len as u64;
        if hints && end - dropped_to >= DROP_BEHIND {
            let outcome = disk.drop_behind(dropped_to, end - dropped_to);
            disk.detail_once(Note::DropBehind, || match outcome {
                Ok(()) => format!(
                    "read pages dropped from the page cache every {} (fadvise DONTNEED)",
                    human_bytes(DROP_BEHIND)
                ),
                Err(e) => format!("fadvise DONTNEED refused ({e}): read pages stay cached"),
            });
            dropped_to = end;
        }
        if tx.send(block).is_err() {
            break;
        }
    }
    Ok(())
}

/// Read block `index` of `geo` into `buf` once more (a block sent again
/// after a lost connection), as the reader did: through the rescue, if
/// any. Returns the bytes read and the unreadable ranges.
pub fn read_again(
    disk: &Disk,
    geo: Geometry,
    index: u64,
    buf: &mut [u8],
    stats: &Stats,
) -> Result<(usize, Vec<(usize, usize)>)> {
    match disk.rescue() {
        Some(rescue) => read_rescued(disk, rescue, (index, geo.offset(index)), buf, stats),
        None => disk
            .read_at(buf, geo.offset(index))
            .map(|n| (n, Vec::new()))
            .map_err(|e| Error::io(disk.label(), format!("read at block {index}"), e)),
    }
}

/// `--rescue`: read block `index`, at `offset`, into `buf` (the whole
/// block); a failed
/// read, or a block whose map holds bad areas, is read again in pages and
/// sectors, and what still fails becomes the block's `unreadable` ranges.
/// Returns the bytes read, as `read_at` does, and those ranges.
fn read_rescued(
    disk: &Disk,
    rescue: &Rescue,
    (index, offset): (u64, u64),
    buf: &mut [u8],
    stats: &Stats,
) -> Result<(usize, Vec<(usize, usize)>)> {
    let len = buf.len();
    if !rescue.known_bad(offset, len as u64) {
        let started = std::time::Instant::now();
        let read = rescue.read_first(&|b, at| disk.read_at(b, at), buf, offset);
        rescue.timed(started.elapsed());
        match read {
            Ok(n) => return Ok((n, Vec::new())),
            Err(e) => {
                Stats::add(&stats.read_errors, 1);
                disk.detail(format!(
                    "read at block {index}: {e}: reading it again in pages and sectors"
                ));
            }
        }
    }
    let bad = disk.recover(rescue, index, buf, offset, stats)?;
    Ok((len, bad))
}
