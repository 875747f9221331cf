//! Where a record's unknown spans may lie (format version 3), as pure
//! checks over offsets: `format.rs` encodes and decodes by them.

/// Whether any of `spans` (start, length) meets `len` bytes at `start`.
pub(super) fn touch(spans: &[(u32, u32)], start: u32, len: u32) -> bool {
    let (lo, hi) = (u64::from(start), u64::from(start) + u64::from(len));
    spans
        .iter()
        .any(|&(s, n)| u64::from(s) < hi && u64::from(s) + u64::from(n) > lo)
}

/// Whether `spans` are in order, disjoint and not empty, each inside one
/// of the `partial` ranges (start, length), and each of those holds one.
pub(super) fn fit(spans: &[(u32, u32)], partial: &[(u32, u32)]) -> bool {
    let mut end = 0u64;
    let mut held = vec![false; partial.len()];
    for &(s, n) in spans {
        let (lo, hi) = (u64::from(s), u64::from(s) + u64::from(n));
        let inside = partial
            .iter()
            .position(|&(ps, pn)| u64::from(ps) <= lo && hi <= u64::from(ps) + u64::from(pn));
        match inside {
            Some(k) if n > 0 && lo >= end => held[k] = true,
            _ => return false,
        }
        end = hi;
    }
    !held.contains(&false)
}
