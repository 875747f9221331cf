//! The frames the source's workers and finishers build for a block:
//! comparing its range digests with the destination's (an empty `Block`
//! when all match, else a `Refine` naming the ranges that differ), a parked
//! block's `Block` of the pages that differ once their digests arrived, and
//! a dry run's block handed to its sink. The threads that send them, and
//! what the ledger records, are `source.rs`'s.

use super::{Compared, FrameScratch, SourceCtx, empty_block};
use crate::block::ExtentKind;
use crate::compress::Compressor;
use crate::digest::{self, Digest};
use crate::error::{Error, Result};
use crate::lock::lock;
use crate::progress::Stats;
use crate::proto::{self, BlockBuilder, Frame};
use crate::session::exchange::{Recheck, differing_ranges};
use crate::session::ledger::Parked;
use crate::session::{Content, DrySink, block_hash};

impl SourceCtx<'_> {
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
        self.digest_block(data, pages, scratch);
        self.check_count(index, theirs, scratch)
    }

    /// Digest `data`'s pages into `pages` and its ranges into
    /// `scratch.ranges`: what [`SourceCtx::compare`] compares.
    pub(super) fn digest_block(
        &self,
        data: Content<'_>,
        pages: &mut Vec<Digest>,
        scratch: &mut FrameScratch,
    ) {
        data.digests(self.p, self.zero, pages);
        proto::range_digests(pages, &mut scratch.ranges);
    }

    /// The destination must have sent as many range digests (`theirs`) as
    /// the block has ranges (`scratch.ranges`).
    fn check_count(&self, index: u64, theirs: &[Digest], scratch: &FrameScratch) -> Result<()> {
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

    /// Compare block `index`'s range digests, `scratch.ranges` from
    /// [`SourceCtx::digest_block`], with the destination's, and build the
    /// answer in `scratch.frame`: an empty `Block`, or a `Refine`.
    pub(super) fn compare(
        &self,
        index: u64,
        theirs: &[Digest],
        scratch: &mut FrameScratch,
        map: Vec<u8>,
    ) -> Result<Compared> {
        self.check_count(index, theirs, scratch)?;
        let mut map = map;
        scratch.frame.clear();
        let range = self.p.page() * proto::RANGE_PAGES;
        if differing_ranges(
            &scratch.ranges,
            theirs,
            &scratch.unreadable,
            range,
            &mut map,
        ) {
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
    /// the asked ranges whose digests differ, their bytes from `back` (its
    /// pages that differ, read back) or else kept. A page read back that
    /// changed since the comparison goes as it is now, and the
    /// verification digest takes the block as it is now. Returns the raw
    /// data length.
    pub(super) fn build_block(
        &self,
        index: u64,
        parked: &Parked,
        back: Option<&[u8]>,
        compressor: &mut Compressor,
        scratch: &mut FrameScratch,
    ) -> Result<usize> {
        let kept = &parked.kept;
        // The count was checked when the digests arrived.
        let theirs = parked.theirs.as_deref().unwrap_or_default();
        let data = back.unwrap_or(kept.data());
        let salt = self.p.salt;
        let digest = |bytes: &[u8]| digest::digest(salt, bytes);
        let mut recheck = Recheck {
            digest: &digest,
            changed: std::mem::take(&mut scratch.changed),
        };
        let raw_len = kept.changes(
            data,
            theirs,
            self.p.page(),
            &mut scratch.changes,
            &mut scratch.extents,
            back.map(|_| &mut recheck),
        );
        if !recheck.changed.is_empty() {
            let now = kept.ranges_now(&recheck.changed);
            let mut v = lock(self.verify);
            *v = v
                .wrapping_sub(block_hash(index, kept.ranges_compared()))
                .wrapping_add(block_hash(index, &now));
        }
        recheck.changed.clear();
        scratch.changed = recheck.changed;
        let frame = &mut scratch.frame;
        frame.clear();
        // A block is at most MAX_BLOCK_SIZE, 1 GiB.
        let raw = u32::try_from(raw_len)
            .map_err(|_| Error::Failed(format!("block {index}: {raw_len} bytes of data")))?;
        let mut block = BlockBuilder::begin(frame, index, raw, &scratch.changes);
        let pieces = scratch
            .extents
            .iter()
            .filter(|e| e.kind == ExtentKind::Data)
            .map(|e| &data[e.data..e.data + e.len]);
        let compressed = compressor.append(pieces, block.data());
        block.finish(compressed);
        Ok(raw_len)
    }

    /// A dry run's block: the sink gets it with both sides' range digests,
    /// the destination an empty `Block` to acknowledge, and the
    /// verification digest is over the destination's unchanged content.
    pub(super) fn dry_block(
        &self,
        dry: &dyn DrySink,
        index: u64,
        data: &[u8],
        theirs: &[Digest],
        pages: &mut Vec<Digest>,
        scratch: &mut FrameScratch,
    ) -> Result<()> {
        self.digest_ranges(index, Content::Bytes(data), pages, theirs, scratch)?;
        let (changed, data_bytes) =
            dry.block(index, data, theirs, &scratch.ranges, &scratch.unreadable)?;
        let class = if !changed {
            &self.stats.same
        } else if data_bytes > 0 {
            &self.stats.changed
        } else {
            &self.stats.zero
        };
        Stats::add(class, 1);
        Stats::add(&self.stats.bytes_changed, data_bytes);
        let differ = super::super::dry::differing_bytes(
            &scratch.ranges,
            theirs,
            self.p.range_size(),
            data.len(),
        );
        Stats::add(
            &self.stats.dry_zero_bytes,
            differ.saturating_sub(data_bytes),
        );
        {
            let mut v = lock(self.verify);
            *v = v.wrapping_add(block_hash(index, theirs));
        }
        empty_block(index, &mut scratch.frame);
        Ok(())
    }
}
