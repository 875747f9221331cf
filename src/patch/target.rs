//! Reading a patch's target: a range of it, and the digest of its whole
//! content, for applying a patch and for the undo patch saved beside it.

use super::format::{self, Header};
use crate::disk::Disk;
use crate::error::{Error, Result};

/// Read `len` bytes at `offset`, zeros past the end.
pub(super) fn read_range(disk: &Disk, offset: u64, buf: &mut Vec<u8>, len: usize) -> Result<()> {
    buf.clear();
    buf.resize(len, 0);
    disk.read_at(buf, offset)
        .map_err(|e| Error::io(disk.label(), format!("read at offset {offset}"), e))?;
    Ok(())
}

/// The page size behind a patch's grain: a grain is a range of the
/// two-level digests, [`RANGE_PAGES`](crate::proto::RANGE_PAGES) pages.
pub(super) fn grain_page(grain: u32) -> usize {
    (grain as usize / crate::proto::RANGE_PAGES).max(1)
}

/// The digest of the whole content of `disk` up to `size`, zeros past its
/// end, as the patch's trailer defines it. Blocks are summed in any order,
/// so a thread per core (up to 4) takes a share of them.
pub(super) fn result_digest(disk: &Disk, h: &Header, size: u64) -> Result<u128> {
    digest_as_before(disk, h, size, &[])
}

/// The hint a size refusal gives, ` (MODES)`: only when the target holds
/// the image the patch was made from (or its result) over the patch's
/// size, where another `--diffsize` then applies it. Otherwise no mode
/// would, and it says so instead. An undo patch has no image to check: its
/// records decide.
pub(super) fn size_hint(disk: &Disk, h: &Header, modes: &str) -> Result<String> {
    let Some(whole) = h.whole else {
        return Ok(format!(" ({modes})"));
    };
    let got = result_digest(disk, h, h.source_size)?;
    if got == whole.original || got == whole.result {
        return Ok(format!(" ({modes})"));
    }
    Ok(format!(
        ", and its first {} bytes are not the image the patch was made from either \
         (their digest differs), so no --diffsize applies it here",
        h.source_size
    ))
}

/// [`result_digest`], the grains at the offsets of `befores` (in offset
/// order) counted as their digest there instead of what they hold.
pub(super) fn digest_as_before(
    disk: &Disk,
    h: &Header,
    size: u64,
    befores: &[(u64, u128)],
) -> Result<u128> {
    let bs = u64::from(h.block_size);
    let grain = u64::from(h.grain);
    let blocks = size.div_ceil(bs);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4)) as u64;
    let share = blocks.div_ceil(threads.max(1)).max(1);
    let part = |first: u64, end: u64| -> Result<u128> {
        let mut buf = Vec::new();
        let mut digests = Vec::new();
        let mut sum = 0u128;
        for index in first..end {
            let offset = index * bs;
            let len = usize::try_from((size - offset).min(bs)).unwrap_or(0);
            read_range(disk, offset, &mut buf, len)?;
            crate::proto::digest_ranges(h.salt, &buf, grain_page(h.grain), &mut digests);
            let from = befores.partition_point(|&(at, _)| at < offset);
            for &(at, before) in befores[from..]
                .iter()
                .take_while(|&&(at, _)| at < offset + bs)
            {
                let within = at - offset;
                let slot = usize::try_from(within / grain).unwrap_or(usize::MAX);
                match digests.get_mut(slot) {
                    Some(d) if within % grain == 0 => *d = before,
                    _ => {
                        return Err(Error::Failed(format!(
                            "patch: corrupted: a range at offset {at} is not on a grain of {grain} bytes"
                        )));
                    }
                }
            }
            sum = sum.wrapping_add(format::block_hash(index, &digests));
        }
        Ok(sum)
    };
    std::thread::scope(|s| {
        let parts = (0..blocks)
            .step_by(usize::try_from(share).unwrap_or(usize::MAX))
            .map(|first| {
                let part = &part;
                crate::session::spawn_scoped(s, move || part(first, (first + share).min(blocks)))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut sum = 0u128;
        for p in parts {
            let got = p
                .join()
                .unwrap_or_else(|_| Err(Error::Failed("a digest thread panicked".into())))?;
            sum = sum.wrapping_add(got);
        }
        Ok(sum)
    })
}
