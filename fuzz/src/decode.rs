//! Arbitrary bytes through `proto::decode`: it must never panic or hang,
//! and every frame it accepts must re-encode to exactly the bytes it was
//! read from. The codec is canonical (fixed-width integers, flags that are
//! 0 or 1, changes kept as their wire bytes), so byte equality is the right
//! check, stronger than `decode(encode(f)) == f`.
//!
//! A `Notice` read as a dry destination's size (`summary::parse_resized`)
//! must be the sentence `summary::resized` makes of those sizes.
//!
//! The first two input bytes pick the negotiated maximum (0..=65535) so the
//! length check is exercised on both sides.
use bsync::proto::{self, Frame, HEADER_LEN, ProtoError};

/// The target, on one input.
pub fn fuzz(data: &[u8]) {
    let Some((max, buf)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max = usize::from(u16::from_le_bytes(*max));
    match proto::decode(buf, max) {
        Ok(Some((frame, used))) => {
            assert!((HEADER_LEN..=buf.len()).contains(&used), "used {used}");
            assert!(used - HEADER_LEN <= max, "payload above max");

            let mut again = Vec::new();
            proto::encode(&frame, &mut again);
            assert_eq!(again, &buf[..used], "not canonical: {frame:?}");

            // What follows the frame does not change it, and without its
            // last byte it is incomplete rather than wrong.
            assert_eq!(proto::decode(&buf[..used], max), Ok(Some((frame, used))));
            assert_eq!(proto::decode(&buf[..used - 1], max), Ok(None));

            match frame {
                Frame::Block(b) => {
                    let mut last = None;
                    let mut n = 0;
                    for c in b.changes.iter() {
                        assert!(last.is_none_or(|l| c.page > l), "pages not increasing");
                        last = Some(c.page);
                        n += 1;
                    }
                    assert_eq!(n, b.changes.len());
                }
                Frame::Digests { digests, .. } | Frame::Pages { digests, .. } => {
                    assert_eq!(digests.len() % proto::DIGEST_LEN, 0, "a partial digest");
                }
                // A dry destination's size, as a compare reads it: only
                // from a sentence that says it, never a size equal to the
                // source's.
                Frame::Notice(text) => {
                    if let Some((have, source, device)) = bsync::summary::parse_resized(text) {
                        assert_ne!(have, source, "{text:?}");
                        let again = bsync::summary::resized("d", have, source, device);
                        assert!(text.ends_with(&again[1..]), "{text:?} is not {again:?}");
                    }
                }
                _ => {}
            }
        }
        Ok(None) => {
            // Only a short header or a short (but allowed) payload may ask
            // for more bytes.
            if let Some(h) = buf.first_chunk::<HEADER_LEN>() {
                let len = u32::from_le_bytes([h[1], h[2], h[3], h[4]]) as usize;
                assert!(len <= max, "oversized length not refused");
                assert!(HEADER_LEN + len > buf.len(), "whole frame not decoded");
                assert!(
                    proto::FRAME_TYPES.contains(&h[0]),
                    "unknown type not refused"
                );
            }
        }
        Err(ProtoError::TooLarge { len, max: m }) => {
            assert_eq!(m, max);
            assert!(len > max);
        }
        Err(_) => {}
    }
}
