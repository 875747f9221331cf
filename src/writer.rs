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

/// Writes blocks to the destination in order.
pub struct Writer<'a> {
    disk: &'a Disk,
    geo: Geometry,
    stats: &'a Stats,
    next: u64,
    /// Blocks that arrived before an earlier one: a map that reuses its
    /// table, where a B-tree would allocate a node each time it fills again.
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
            self.pending.insert(block.index, block);
            while let Some(block) = self.pending.remove(&self.next) {
                self.apply(&block)?;
                drop(block);
                done(self.next)?;
                self.next += 1;
                self.stats
                    .resume_at
                    .store(self.next, std::sync::atomic::Ordering::Relaxed);
            }
        }
        Ok(self.next)
    }

    fn apply(&mut self, block: &Pooled) -> Result<()> {
        let base = self.geo.offset(block.index);
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
        let class = if block.finished {
            &self.stats.skipped_by_map
        } else if block.extents.is_empty() {
            &self.stats.same
        } else if data {
            &self.stats.changed
        } else {
            &self.stats.zero
        };
        Stats::add(class, 1);
        Stats::add(&self.stats.blocks_done, 1);
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
