//! Arbitrary bytes through the patch decoder (`bsync::patch::format`): it
//! must never panic, hang or allocate beyond what it was given and the
//! format's caps; every record it accepts lies within the header's size,
//! its ranges in order and its data as long as they need; every header it
//! accepts (version 2: diffsize, whole-target digests, name; version 3:
//! the same, its records with unknown spans) encodes back to the bytes it
//! was read from.
use bsync::compress::Decompressor;
use bsync::patch::format::{Decoder, Item, encode_header};

/// The target, on one input.
pub fn fuzz(data: &[u8]) {
    let mut d = Decoder::new(data);
    let Ok(h) = d.header() else { return };
    let mut again = Vec::new();
    encode_header(&h, &mut again);
    let read = usize::try_from(d.at).unwrap_or(usize::MAX);
    assert_eq!(&again[..], &data[..read], "the header does not round-trip");
    let mut dec = Decompressor::default();
    while let Ok(item) = d.next(&mut dec) {
        match item {
            Item::Record(r, _) => {
                let mut end = 0u64;
                let mut want = 0usize;
                for range in &r.ranges {
                    assert!(u64::from(range.start) >= end, "ranges out of order");
                    end = u64::from(range.start) + u64::from(range.len);
                    if !range.zero {
                        want += range.len as usize;
                    }
                }
                assert!(r.offset + end <= h.source_size, "record past the size");
                for &(s, n) in &r.unknown {
                    let (s, n) = (u64::from(s), u64::from(n));
                    assert!(
                        r.ranges.iter().any(|g| {
                            let (gs, gl) = (u64::from(g.start), u64::from(g.len));
                            !g.zero && gs <= s && s + n <= gs + gl
                        }),
                        "an unknown span outside the data ranges"
                    );
                }
                assert_eq!(r.data.len(), want, "data and ranges disagree");
            }
            Item::End(_) => return,
        }
    }
}
