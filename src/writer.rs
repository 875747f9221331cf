//! The single destination writer.
//!
//! Workers finish blocks in any order; the writer puts them back in block
//! order with a small map and applies each block's extents in offset order,
//! so a spinning disk sees one forward-moving stream. It starts writeback
//! every few MiB (`sync_file_range`) so dirty pages flow steadily instead of
//! in bursts, and ends with `fdatasync`: a block is only reported done after
//! its bytes were handed to the kernel, and the run only succeeds after they
//! reached the device.

use std::collections::HashMap;
use std::sync::mpsc::Receiver;

use crate::block::{ExtentKind, Geometry};
use crate::disk::{Disk, Note};
use crate::error::{Error, Result};
use crate::pool::Pooled;
use crate::progress::{Stats, human_bytes};

/// Start writeback after this many dirty bytes.
const WRITEBACK_WINDOW: u64 = 16 << 20;

/// What the pieces of a block needed, for counting it once written.
#[derive(Default)]
struct Seen {
    /// Every piece was finished by a rescue's map (`None`: none seen yet).
    finished: Option<bool>,
    /// Some piece had extents.
    extents: bool,
    /// Some extent wrote data.
    data: bool,
}

/// Writes blocks to the destination in order.
pub struct Writer<'a> {
    disk: &'a Disk,
    geo: Geometry,
    stats: &'a Stats,
    next: u64,
    /// Bytes of block `next` written: blocks may come in pieces
    /// ([`Block::at`](crate::block::Block)), in any order like blocks.
    at: usize,
    /// What the pieces of block `next` written so far needed.
    seen: Seen,
    /// Blocks (and pieces) that arrived before an earlier one, by offset:
    /// a map that reuses its table, where a B-tree would allocate a node
    /// each time it fills again.
    pending: HashMap<u64, Pooled>,
    /// Start of the range not yet handed to writeback.
    dirty_from: u64,
    /// The window handed to writeback last, waited for before the next one.
    in_flight: Option<(u64, u64)>,
    /// Kernel hints on (see [`Disk::hints`]).
    hints: bool,
}

impl<'a> Writer<'a> {
    /// A writer whose first block is `first`.
    pub fn new(disk: &'a Disk, geo: Geometry, first: u64, stats: &'a Stats) -> Writer<'a> {
        stats
            .resume_at
            .store(first, std::sync::atomic::Ordering::Relaxed);
        Writer {
            disk,
            geo,
            stats,
            next: first,
            at: 0,
            seen: Seen::default(),
            pending: HashMap::new(),
            dirty_from: geo.offset(first),
            in_flight: None,
            hints: disk.hints(),
        }
    }

    /// Take blocks from `rx` until the last block is written or `rx` closes,
    /// calling `done(index)` after each block is written, in block order.
    /// Returns the next block number it would have needed.
    pub fn run(
        mut self,
        rx: Receiver<Pooled>,
        mut done: impl FnMut(u64) -> Result<()>,
    ) -> Result<u64> {
        let end = self.geo.blocks();
        while self.next < end {
            let Ok(block) = rx.recv() else { break };
            let at = self.geo.offset(block.index) + block.at as u64;
            self.pending.insert(at, block);
            while let Some(block) = self.pending.remove(&self.position()) {
                self.apply(&block)?;
                self.at += block.len;
                drop(block);
                if self.at < self.geo.len(self.next) {
                    continue;
                }
                self.count_block();
                // Before `done`, which acknowledges it: a lane rejoined from
                // then on repeats that acknowledgement, should it be lost
                // with the connection (`session::destination`).
                self.stats
                    .resume_at
                    .store(self.next + 1, std::sync::atomic::Ordering::Release);
                done(self.next)?;
                self.next += 1;
                self.at = 0;
            }
        }
        Ok(self.next)
    }

    /// The offset of the next bytes to write.
    fn position(&self) -> u64 {
        self.geo.offset(self.next) + self.at as u64
    }

    /// Block `next` is written: count it by what its pieces needed.
    fn count_block(&mut self) {
        let seen = std::mem::take(&mut self.seen);
        let class = if seen.finished == Some(true) {
            &self.stats.skipped_by_map
        } else if !seen.extents {
            &self.stats.same
        } else if seen.data {
            &self.stats.changed
        } else {
            &self.stats.zero
        };
        Stats::add(class, 1);
        Stats::add(&self.stats.blocks_done, 1);
    }

    fn apply(&mut self, block: &Pooled) -> Result<()> {
        let base = self.geo.offset(block.index) + block.at as u64;
        let mut data = false;
        for ext in &block.extents {
            let offset = base + ext.start as u64;
            let fail = |e| {
                Error::io(
                    self.disk.label(),
                    format!("write at block {}", block.index),
                    e,
                )
            };
            // Unreadable sectors of a rescue keep what the destination had;
            // without any, no list is made (the writer allocates nothing per
            // block).
            let whole = [(ext.start, ext.len)];
            let cut;
            let pieces: &[(usize, usize)] = if block.unreadable.is_empty() {
                &whole
            } else {
                cut = crate::rescue::outside(ext.start, ext.len, &block.unreadable);
                &cut
            };
            for &(start, len) in pieces {
                let offset = offset + (start - ext.start) as u64;
                match ext.kind {
                    ExtentKind::Data => {
                        let at = ext.data + (start - ext.start);
                        let bytes = &block.data[at..at + len];
                        self.disk.write_at(bytes, offset).map_err(fail)?;
                        Stats::add(&self.stats.bytes_written, len as u64);
                        data = true;
                    }
                    ExtentKind::Zero => {
                        self.disk.clear(offset, len as u64).map_err(fail)?;
                        Stats::add(&self.stats.bytes_cleared, len as u64);
                    }
                }
            }
        }
        let seen = &mut self.seen;
        seen.finished = Some(seen.finished.unwrap_or(true) && block.finished);
        seen.extents |= !block.extents.is_empty();
        seen.data |= data;
        Stats::add(&self.stats.bytes_done, block.len as u64);
        if !block.extents.is_empty() {
            self.steady_writeback(base + block.len as u64, block.index)?;
        }
        Ok(())
    }

    /// Hand the last window of dirty pages to writeback and wait for the one
    /// before it, so at most two windows are dirty at a time. Not supported
    /// is fine (pages flush in bursts); a write error the kernel reports here
    /// fails the run naming the blocks: it is reported once per open file,
    /// so the final `fdatasync` would not see it again.
    fn steady_writeback(&mut self, written_to: u64, index: u64) -> Result<()> {
        if written_to < self.dirty_from + WRITEBACK_WINDOW || !self.hints {
            return Ok(());
        }
        let window = (self.dirty_from, written_to - self.dirty_from);
        let started = self.disk.start_writeback(window.0, window.1);
        self.disk.detail_once(Note::Writeback, || match &started {
            Ok(true) => format!(
                "writeback started every {} of writes (sync_file_range)",
                human_bytes(WRITEBACK_WINDOW)
            ),
            Ok(false) => "sync_file_range not supported: dirty pages flush in bursts".into(),
            Err(e) => format!("sync_file_range failed: {e}"),
        });
        if let Err(e) = started {
            return Err(self.writeback_error(window, index, e));
        }
        if let Some((from, len)) = self.in_flight.replace(window)
            && let Err(e) = self.disk.wait_writeback(from, len)
        {
            return Err(self.writeback_error((from, len), index, e));
        }
        self.dirty_from = written_to;
        Ok(())
    }

    /// A failed writeback of the bytes `window` (offset, length), found
    /// while writing block `index`, naming the blocks it covers.
    fn writeback_error(&self, window: (u64, u64), index: u64, e: std::io::Error) -> Error {
        let bs = self.geo.block_size.max(1) as u64;
        let first = window.0 / bs;
        let last = (window.0 + window.1).saturating_sub(1) / bs;
        Error::io(
            self.disk.label(),
            format!(
                "writeback of blocks {first} to {last} (sync_file_range, while writing block {index})"
            ),
            e,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::push_extent;
    use crate::config::Env;
    use crate::log::Log;
    use crate::pool::Pool;
    use std::sync::atomic::AtomicU64;
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::mpsc::sync_channel;

    /// Blocks that come in pieces, in any order, are written in order and
    /// counted once each, by what all their pieces needed.
    #[test]
    fn pieces_in_any_order_make_whole_blocks_counted_once() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        let path = dir.join(format!("bsync-writer-{}", std::process::id()));
        let size = 3 * 8192 + 100;
        std::fs::write(&path, vec![9u8; size]).unwrap();
        let disk = Disk::open_destination(&path, &Env::default(), &Log::default());
        let geo = Geometry {
            size: size as u64,
            block_size: 8192,
        };
        let pool = Pool::new(16, 4096, false, false);
        // (block, at, len, what the piece needs): block 0 changes in its
        // second piece only, block 1 is the same, block 2 is cleared in
        // its first piece, block 3 (short) is written whole.
        let pieces = [
            (2, 4096, 4096, None),
            (0, 4096, 4096, Some(ExtentKind::Data)),
            (3, 0, 100, Some(ExtentKind::Data)),
            (1, 4096, 4096, None),
            (0, 0, 4096, None),
            (2, 0, 4096, Some(ExtentKind::Zero)),
            (1, 0, 4096, None),
        ];
        let (tx, rx) = sync_channel(16);
        for (index, at, len, kind) in pieces {
            let mut b = pool.get().unwrap();
            (b.index, b.at, b.len) = (index, at, len);
            b.data[..len].fill(index as u8 + 1);
            if let Some(kind) = kind {
                push_extent(&mut b.extents, 0, len, kind, 0);
            }
            tx.send(b).unwrap();
        }
        drop(tx);
        let stats = Stats::default();
        let disk = disk.unwrap();
        let mut done = Vec::new();
        let next = Writer::new(&disk, geo, 0, &stats)
            .run(rx, |i| {
                done.push(i);
                Ok(())
            })
            .unwrap();
        let got = std::fs::read(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!((next, done), (4, vec![0, 1, 2, 3]));
        let mut want = vec![9u8; size];
        want[4096..8192].fill(1);
        want[16384..20480].fill(0);
        want[24576..].fill(4);
        assert!(got.unwrap() == want, "the file holds what the pieces said");
        let count = |c: &AtomicU64| c.load(Relaxed);
        assert_eq!(count(&stats.blocks_done), 4);
        assert_eq!(count(&stats.resume_at), 4);
        assert_eq!(
            [&stats.changed, &stats.same, &stats.zero].map(count),
            [2, 1, 1]
        );
        assert_eq!(count(&stats.bytes_done), size as u64);
    }
}
