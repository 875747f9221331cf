//! Unknown spans of a patch (format version 3, `--write-patch -rescue`):
//! source sectors that could not be read. Applying leaves the target's
//! bytes there alone and digests them as zeros, as the maker did; making a
//! patch marks every grain that holds one, whatever the digests say.

use super::format::{Range, Record};
use super::target::zero_unknown;
use crate::disk::Disk;
use crate::error::{Error, Result};

/// The unknown spans of `rec` inside `r` (absolute offset, length).
pub(super) fn spans_in(rec: &Record, r: &Range) -> Vec<(u64, u64)> {
    let (lo, hi) = (r.start, r.start + r.len);
    rec.unknown
        .iter()
        .filter(|&&(s, n)| s < hi && s + n > lo)
        .map(|&(s, n)| (rec.offset + u64::from(s), u64::from(n)))
        .collect()
}

/// Every unknown span of `rec` (absolute offset, length), appended to `all`.
pub(super) fn collect(rec: &Record, all: &mut Vec<(u64, u64)>) {
    all.extend(
        rec.unknown
            .iter()
            .map(|&(s, n)| (rec.offset + u64::from(s), u64::from(n))),
    );
}

/// Whether `buf`, the target's bytes of range `r` of `rec`, digests to
/// `after` once its unknown spans read as zeros: the range is applied.
pub(super) fn applied(rec: &Record, r: &Range, buf: &mut [u8], salt: u128, page: usize) -> bool {
    let spans = spans_in(rec, r);
    if spans.is_empty() {
        return false;
    }
    zero_unknown(buf, rec.offset + u64::from(r.start), &spans);
    crate::proto::range_digest_of(salt, buf, page) == r.after
}

/// Write `data`, range `r` of `rec`, at `offset` of the target, but for
/// its unknown spans, which keep what the target holds.
pub(super) fn write_known(
    disk: &Disk,
    rec: &Record,
    r: &Range,
    data: &[u8],
    offset: u64,
) -> Result<()> {
    let spans: Vec<(usize, usize)> = spans_in(rec, r)
        .into_iter()
        .map(|(at, n)| (usize_of(at - offset), usize_of(n)))
        .collect();
    for (start, len) in crate::rescue::outside(0, data.len(), &spans) {
        let at = offset + start as u64;
        disk.write_at(&data[start..start + len], at)
            .map_err(|e| Error::io(disk.label(), format!("write at offset {at}"), e))?;
    }
    Ok(())
}

/// The content range `r` of `rec` has once written over `old` (the
/// target's bytes there): `data` but in the unknown spans.
pub(super) fn overlay(rec: &Record, r: &Range, old: &[u8], data: &[u8]) -> Vec<u8> {
    let offset = rec.offset + u64::from(r.start);
    let mut new = data.to_vec();
    for (at, n) in spans_in(rec, r) {
        let lo = usize_of(at - offset);
        let hi = (lo + usize_of(n)).min(new.len());
        new[lo..hi].copy_from_slice(&old[lo..hi]);
    }
    new
}

/// A block's unreadable ranges as a record's unknown spans (the record
/// at the block's offset; a block is at most 1 GiB), cut where its ranges
/// of `grain` bytes meet: a span lies inside one range.
pub(super) fn of_block(unreadable: &[(usize, usize)], grain: usize) -> Vec<(u32, u32)> {
    let u = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
    let mut spans = Vec::with_capacity(unreadable.len());
    for &(s, n) in unreadable {
        let mut at = s;
        while at < s + n {
            let end = (s + n).min((at / grain + 1) * grain);
            spans.push((u(at), u(end - at)));
            at = end;
        }
    }
    spans
}

/// A length within a block (at most 1 GiB).
fn usize_of(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_cut_where_ranges_meet() {
        let bad = [(512, 512), (65024, 1024), (200_000, 100)];
        assert_eq!(
            of_block(&bad, 65536),
            [(512, 512), (65024, 512), (65536, 512), (200_000, 100)]
        );
        let ranges = [(0, 65536), (65536, 65536), (196_608, 65536)];
        assert!(super::super::spans::fit(&of_block(&bad, 65536), &ranges));
    }
}
