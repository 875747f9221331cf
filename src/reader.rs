//! The one sequential reader both ends use: blocks in order, read straight
//! into pooled buffers and handed down a bounded queue. A pool whose
//! buffers are smaller than a block gets each block in pieces of the
//! buffers' size, in order (local mode: pieces that stay in the CPU's
//! cache), except a block with nothing to read (a hole, or finished by a
//! rescue's map), which goes whole.
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

/// Read `blocks` of `disk` in order into pooled buffers and send them on:
/// each block whole, or in pieces where the pool's buffers are smaller.
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
    read_in_order(disk, geo, blocks, (pool, tx), stats, gate, false)
}

/// [`read_blocks`], but the pages read stay in the page cache for the
/// caller to drop ([`drop_read`]): a network source reads back the pages
/// that differ a round trip later.
pub fn read_blocks_keeping(
    disk: &Disk,
    geo: Geometry,
    blocks: Range<u64>,
    pool: &Pool,
    tx: &SyncSender<Pooled>,
    stats: &Stats,
    gate: &dyn Fn() -> bool,
) -> Result<()> {
    read_in_order(disk, geo, blocks, (pool, tx), stats, gate, true)
}

/// [`read_blocks`]; with `keep`, [`read_blocks_keeping`].
fn read_in_order(
    disk: &Disk,
    geo: Geometry,
    blocks: Range<u64>,
    (pool, tx): (&Pool, &SyncSender<Pooled>),
    stats: &Stats,
    gate: &dyn Fn() -> bool,
    keep: bool,
) -> Result<()> {
    let mut dropped_to = geo.offset(blocks.start);
    let mut next_data = 0u64;
    let hints = disk.hints() && !keep;
    for index in blocks {
        if !gate() {
            break;
        }
        let len = geo.len(index);
        let mut at = 0;
        while at < len {
            let mut block = pool
                .get()
                .map_err(|e| Error::io(disk.label(), "allocate a block buffer", e))?;
            // The whole block, or the next piece of it that fits the buffer;
            // a block with nothing to read (a hole, or finished by a
            // rescue's map) goes whole, however small the buffer.
            let offset = geo.offset(index) + at as u64;
            let n = match block.data.len() {
                0 => len - at,
                room => room.min(len - at),
            };
            let whole = if at > 0 || n == len {
                None
            } else if disk
                .rescue()
                .is_some_and(|r| r.finished(offset, len as u64))
            {
                Some((true, false))
            } else if disk.is_hole(offset, len, &mut next_data) {
                Some((false, true))
            } else {
                None
            };
            let n = if whole.is_some() { len } else { n };
            block.index = index;
            block.at = at;
            block.len = n;
            at += n;
            (block.finished, block.hole) = match whole {
                Some(flags) => flags,
                None => {
                    let finished = disk.rescue().is_some_and(|r| r.finished(offset, n as u64));
                    (
                        finished,
                        !finished && disk.is_hole(offset, n, &mut next_data),
                    )
                }
            };
            if block.hole || block.finished {
                if tx.send(block).is_err() {
                    return Ok(());
                }
                continue;
            }
            let got = match disk.rescue() {
                None => disk
                    .read_at(&mut block.data[..n], offset)
                    .map_err(|e| Error::io(disk.label(), format!("read at block {index}"), e))?,
                Some(rescue) => {
                    let buf = &mut block.data[..n];
                    let (got, bad) = read_rescued(disk, rescue, (index, offset), buf, stats)?;
                    block.unreadable = bad;
                    got
                }
            };
            if got < n {
                return Err(Error::Failed(format!(
                    "{}: read at block {index}: unexpected end of file at byte {} \
                     (did it shrink during the run?)",
                    disk.label(),
                    offset + got as u64
                )));
            }
            disk.note_buffer(&block.data);
            Stats::add(&stats.bytes_read, n as u64);
            let end = offset + n as u64;
            if hints && end - dropped_to >= DROP_BEHIND {
                drop_read(disk, dropped_to, end);
                dropped_to = end;
            }
            if tx.send(block).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Whether pages read from `from` on should be dropped from the page
/// cache up to `to`: every [`DROP_BEHIND`] bytes, and at `end`.
pub fn drop_due(from: u64, to: u64, end: u64) -> bool {
    to > from && (to - from >= DROP_BEHIND || to == end)
}

/// Drop the pages read from `from` to `to` from the page cache (kernel
/// hints on), saying once how that went.
pub fn drop_read(disk: &Disk, from: u64, to: u64) {
    if !disk.hints() {
        return;
    }
    let outcome = disk.drop_behind(from, to - from);
    disk.detail_once(Note::DropBehind, || match outcome {
        Ok(()) => format!(
            "read pages dropped from the page cache every {} (fadvise DONTNEED)",
            human_bytes(DROP_BEHIND)
        ),
        Err(e) => format!("fadvise DONTNEED refused ({e}): read pages stay cached"),
    });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Env;
    use crate::log::Log;
    use std::sync::mpsc::sync_channel;

    #[test]
    fn smaller_buffers_get_each_block_in_pieces_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        let path = dir.join(format!("bsync-pieces-{}", std::process::id()));
        // Three blocks of 10 KiB, the last one short; 4 KiB buffers.
        let data: Vec<u8> = (0..27_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let disk = Disk::open_source(&path, &Env::default(), &Log::default());
        std::fs::remove_file(&path).unwrap();
        let disk = disk.unwrap();
        let geo = Geometry {
            size: data.len() as u64,
            block_size: 10_000,
        };
        let pool = Pool::new(16, 4096, false, false);
        let (tx, rx) = sync_channel(16);
        let stats = Stats::default();
        read_blocks(&disk, geo, 0..geo.blocks(), &pool, &tx, &stats, &|| true).unwrap();
        drop(tx);
        let got: Vec<(u64, usize, usize)> = rx
            .iter()
            .map(|b| {
                let at = geo.offset(b.index) as usize + b.at;
                assert_eq!(
                    b.bytes(),
                    &data[at..at + b.len],
                    "block {} at {}",
                    b.index,
                    b.at
                );
                (b.index, b.at, b.len)
            })
            .collect();
        let want = [
            (0, 0, 4096),
            (0, 4096, 4096),
            (0, 8192, 1808),
            (1, 0, 4096),
            (1, 4096, 4096),
            (1, 8192, 1808),
            (2, 0, 4096),
            (2, 4096, 2904),
        ];
        assert_eq!(got, want);
        assert_eq!(stats.bytes_read.into_inner(), data.len() as u64);
    }

    #[test]
    fn a_block_with_nothing_to_read_goes_whole_whatever_the_buffer() {
        use std::os::unix::fs::FileExt;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        let path = dir.join(format!("bsync-holes-{}", std::process::id()));
        // Blocks of 1 MiB: block 0 a hole, block 1 data in its second half
        // only, block 2 a hole up to the end of the file.
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(3 << 20).unwrap();
        f.write_all_at(&[5u8; 1 << 19], (1 << 20) + (1 << 19))
            .unwrap();
        let disk = Disk::open_source(&path, &Env::default(), &Log::default());
        std::fs::remove_file(&path).unwrap();
        let disk = disk.unwrap();
        let geo = Geometry {
            size: 3 << 20,
            block_size: 1 << 20,
        };
        let pool = Pool::new(16, 256 << 10, false, false);
        let (tx, rx) = sync_channel(16);
        let stats = Stats::default();
        read_blocks(&disk, geo, 0..3, &pool, &tx, &stats, &|| true).unwrap();
        drop(tx);
        let got: Vec<_> = rx
            .iter()
            .map(|b| (b.index, b.at >> 10, b.len >> 10, b.hole))
            .collect();
        if !got[0].3 {
            eprintln!("skipped: this file system does not say where holes are");
            return;
        }
        let want = [
            (0, 0, 1024, true),
            (1, 0, 256, true),
            (1, 256, 256, true),
            (1, 512, 256, false),
            (1, 768, 256, false),
            (2, 0, 1024, true),
        ];
        assert_eq!(got, want);
        assert_eq!(stats.bytes_read.into_inner(), 1 << 19);
    }
}
