//! A block in flight, block geometry and the per-block write plan.
//!
//! A transfer cuts the source into `block_size` blocks (the last one may be
//! short); a block is the unit of reading, progress, resume (`-s`) and
//! acknowledgement. Inside a block, comparison happens per 4 KiB page
//! ([`crate::proto::PAGE`], or the block size if smaller), so a 10 MiB
//! block with one changed sector writes one page. What a block needs at
//! the destination is a list of [`Extent`]s, written in offset order.

use crate::digest::Digest;
use crate::sys::PinnedBuf;

/// One block in flight: its place in the file, its bytes and what was
/// decided about it.
pub struct Block {
    /// Block number.
    pub index: u64,
    /// Where in the block these bytes start: 0 where `data` holds the whole
    /// block. Local mode reads a block in pieces that stay in the CPU's
    /// cache (the reader reads pieces of its pool's buffer size), each its
    /// own `Block` of `len` bytes from `at`.
    pub at: usize,
    /// Valid bytes in `data`.
    pub len: usize,
    /// The buffer, `block_size` long (or a piece's size).
    pub data: PinnedBuf,
    /// What the destination must do (filled by a worker).
    pub extents: Vec<Extent>,
    /// Page digests (network modes).
    pub digests: Vec<Digest>,
    /// The block lies in a hole of its file: it is all zeros and was not
    /// read, so `data` holds nothing of it.
    pub hole: bool,
    /// `--rescue`: byte ranges `(start, len)` of the block that could not
    /// be read, sorted: zeros in `data`, never written at the destination.
    pub unreadable: Vec<(usize, usize)>,
    /// `--rescue`: a map says the whole block is at the destination
    /// already; it was not read and needs nothing.
    pub finished: bool,
}

impl Block {
    /// The valid bytes; not the block's content when it is a [`hole`](Self::hole).
    pub fn bytes(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

/// How a source of `size` bytes is cut into blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Source size in bytes.
    pub size: u64,
    /// Block size in bytes, at least 1.
    pub block_size: usize,
}

impl Geometry {
    /// Number of blocks, counting a short last one.
    pub fn blocks(&self) -> u64 {
        self.size.div_ceil(self.block_size as u64)
    }

    /// Byte offset of block `index`.
    pub fn offset(&self, index: u64) -> u64 {
        index * self.block_size as u64
    }

    /// Buffer length that holds any block: a small file does not get
    /// block-sized (and maybe mlocked) buffers.
    pub fn buffer_len(&self) -> usize {
        self.len(0)
    }

    /// Length of block `index` (short for the last block, 0 past the end).
    pub fn len(&self, index: u64) -> usize {
        let rest = self.size.saturating_sub(self.offset(index));
        // Never more than block_size, which is a usize.
        usize::try_from(rest.min(self.block_size as u64)).unwrap_or(self.block_size)
    }
}

/// What a range inside a block needs at the destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtentKind {
    /// Write the source bytes.
    Data,
    /// Make the range read as zeros (punch a hole, zero out, or write zeros).
    Zero,
}

/// A range of a block, relative to the block's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Start within the block.
    pub start: usize,
    /// Length in bytes.
    pub len: usize,
    /// What to do with it.
    pub kind: ExtentKind,
    /// Where a data extent's bytes start in the block buffer: the same as
    /// `start` locally; received blocks hold only changed data, packed.
    pub data: usize,
}

/// Append an extent, merging it into the last one when they touch and agree
/// (in the file and in the buffer), so a run of changed pages becomes
/// one write.
pub fn push_extent(
    extents: &mut Vec<Extent>,
    start: usize,
    len: usize,
    kind: ExtentKind,
    data: usize,
) {
    if let Some(last) = extents.last_mut()
        && last.kind == kind
        && last.start + last.len == start
        && last.data + last.len == data
    {
        last.len += len;
        return;
    }
    extents.push(Extent {
        start,
        len,
        kind,
        data,
    });
}

/// True if every byte is zero.
pub fn is_zero(buf: &[u8]) -> bool {
    crate::sys::simd::is_zero(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_counts_a_short_last_block() {
        let g = Geometry {
            size: 10,
            block_size: 4,
        };
        assert_eq!(g.blocks(), 3);
        assert_eq!((g.len(0), g.len(1), g.len(2), g.len(3)), (4, 4, 2, 0));
        assert_eq!(g.offset(2), 8);
        let empty = Geometry {
            size: 0,
            block_size: 4,
        };
        assert_eq!(empty.blocks(), 0);
        let one = Geometry {
            size: 5,
            block_size: 1,
        };
        assert_eq!(one.blocks(), 5);
    }

    #[test]
    fn extents_merge_only_when_touching_and_alike() {
        let mut v = Vec::new();
        push_extent(&mut v, 0, 4, ExtentKind::Data, 0);
        push_extent(&mut v, 4, 4, ExtentKind::Data, 4);
        push_extent(&mut v, 8, 4, ExtentKind::Zero, 8);
        push_extent(&mut v, 16, 4, ExtentKind::Zero, 16);
        // Adjacent in the file but not in the buffer: two writes.
        push_extent(&mut v, 20, 4, ExtentKind::Data, 8);
        push_extent(&mut v, 24, 4, ExtentKind::Data, 20);
        let e = |start, len, kind, data| Extent {
            start,
            len,
            kind,
            data,
        };
        assert_eq!(
            v,
            vec![
                e(0, 8, ExtentKind::Data, 0),
                e(8, 4, ExtentKind::Zero, 8),
                e(16, 4, ExtentKind::Zero, 16),
                e(20, 4, ExtentKind::Data, 8),
                e(24, 4, ExtentKind::Data, 20),
            ]
        );
    }

    #[test]
    fn zero_detection_sees_every_byte() {
        for len in [0usize, 1, 63, 64, 65, 200] {
            let mut buf = vec![0u8; len];
            assert!(is_zero(&buf));
            for i in 0..len {
                buf[i] = 1;
                assert!(!is_zero(&buf), "len {len} byte {i}");
                buf[i] = 0;
            }
        }
    }
}
