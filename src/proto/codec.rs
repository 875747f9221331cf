//! Frames to bytes and back: a pure function over slices, so `fuzz/` can
//! hammer it. Every length read is checked against the negotiated maximum
//! before anything is allocated or looped over.

use super::*;

/// Read a frame header: type and payload length, checked against `max`.
pub fn decode_header(header: &[u8; HEADER_LEN], max: usize) -> Result<(u8, usize), ProtoError> {
    let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > max {
        return Err(ProtoError::TooLarge { len, max });
    }
    if !FRAME_TYPES.contains(&header[0]) {
        return Err(ProtoError::UnknownType(header[0]));
    }
    Ok((header[0], len))
}

/// Decode one frame from the front of `buf`.
///
/// `Ok(None)` means more bytes are needed; `Ok(Some((frame, used)))` gives the
/// frame and the bytes it took. A payload longer than `max` is an error even
/// before it has arrived.
pub fn decode(buf: &[u8], max: usize) -> Result<Option<(Frame<'_>, usize)>, ProtoError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let (kind, len) = decode_header(header, max)?;
    let Some(payload) = buf[HEADER_LEN..].get(..len) else {
        return Ok(None);
    };
    let frame = decode_payload(kind, payload)?;
    Ok(Some((frame, HEADER_LEN + len)))
}

/// A cursor that reads little-endian fields and fails on a short payload.
struct Reader<'a> {
    buf: &'a [u8],
    frame: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if self.buf.len() < n {
            return Err(self.malformed("truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtoError> {
        let bytes = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, ProtoError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, ProtoError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, ProtoError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn u128(&mut self) -> Result<u128, ProtoError> {
        Ok(u128::from_le_bytes(self.array()?))
    }

    fn bool(&mut self) -> Result<bool, ProtoError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.malformed("a flag is neither 0 nor 1")),
        }
    }

    /// Handshake flags; encryption without authentication is meaningless.
    /// [`FLAG_DRY`] may come with any of them.
    fn flags(&mut self) -> Result<u8, ProtoError> {
        let f = self.u8()?;
        match f & !FLAG_DRY {
            0 | FLAG_AUTH => Ok(f),
            s if s == FLAG_AUTH | FLAG_ENCRYPT => Ok(f),
            _ => Err(self.malformed("unknown flags")),
        }
    }

    /// The payload must be used up exactly.
    fn end(self) -> Result<(), ProtoError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.malformed("trailing bytes"))
        }
    }

    fn malformed(&self, what: &'static str) -> ProtoError {
        ProtoError::Malformed {
            frame: self.frame,
            what,
        }
    }
}

pub(super) fn read_change(buf: &[u8]) -> Option<(Change, usize)> {
    let page = u32::from_le_bytes(buf.get(..4)?.try_into().ok()?);
    match *buf.get(4)? {
        CHANGE_ZERO => Some((
            Change {
                page,
                kind: ChangeKind::Zero,
            },
            CHANGE_LEN,
        )),
        CHANGE_DATA => {
            let d = buf.get(CHANGE_LEN..CHANGE_LEN + DIGEST_LEN)?;
            let digest = u128::from_le_bytes(d.try_into().ok()?);
            Some((
                Change {
                    page,
                    kind: ChangeKind::Data(digest),
                },
                CHANGE_LEN + DIGEST_LEN,
            ))
        }
        CHANGE_PARTIAL => {
            let d = buf.get(CHANGE_LEN..CHANGE_LEN + DIGEST_LEN)?;
            let digest = u128::from_le_bytes(d.try_into().ok()?);
            let at = CHANGE_LEN + DIGEST_LEN;
            let m = buf.get(at..at + UNREADABLE_MASK_LEN)?;
            let unreadable = u64::from_le_bytes(m.try_into().ok()?);
            // A page with nothing unreadable is a data change.
            (unreadable != 0).then_some((
                Change {
                    page,
                    kind: ChangeKind::Partial { digest, unreadable },
                },
                PARTIAL_CHANGE_LEN,
            ))
        }
        _ => None,
    }
}

fn decode_payload(kind: u8, payload: &[u8]) -> Result<Frame<'_>, ProtoError> {
    let name = match kind {
        HELLO => "Hello",
        WELCOME => "Welcome",
        ERROR => "Error",
        DIGESTS => "Digests",
        REFINE => "Refine",
        PAGES => "Pages",
        BLOCK => "Block",
        ACK => "Ack",
        COMPLETE => "Complete",
        BYE => "Bye",
        CHALLENGE => "Challenge",
        PROOF => "Proof",
        PROBE => "Probe",
        NOTICE => "Notice",
        other => return Err(ProtoError::UnknownType(other)),
    };
    let mut r = Reader {
        buf: payload,
        frame: name,
    };
    let frame = match kind {
        HELLO => Frame::Hello(Hello {
            session: r.u128()?,
            lane: r.u16()?,
            lanes: r.u16()?,
            download: r.bool()?,
            block_size: r.u32()?,
            skip: r.u64()?,
            source_size: r.u64()?,
            compression: r.u8()?,
            flags: r.flags()?,
            nonce: r.array()?,
        }),
        WELCOME => Frame::Welcome(Welcome {
            block_size: r.u32()?,
            source_size: r.u64()?,
            skip: r.u64()?,
            salt: r.u128()?,
            lanes: r.u16()?,
        }),
        ERROR => {
            let text = std::str::from_utf8(r.take(payload.len())?)
                .map_err(|_| r.malformed("message is not UTF-8"))?;
            Frame::Error(text)
        }
        NOTICE => {
            if payload.len() > NOTICE_MAX {
                return Err(r.malformed("notice too long"));
            }
            let text = std::str::from_utf8(r.take(payload.len())?)
                .map_err(|_| r.malformed("notice is not UTF-8"))?;
            Frame::Notice(text)
        }
        DIGESTS | PAGES => {
            let index = r.u64()?;
            let digests = r.take(r.buf.len())?;
            if digests.len() % DIGEST_LEN != 0 {
                return Err(r.malformed("digest list is not a whole number of digests"));
            }
            if kind == DIGESTS {
                Frame::Digests { index, digests }
            } else {
                Frame::Pages { index, digests }
            }
        }
        REFINE => Frame::Refine {
            index: r.u64()?,
            ranges: r.take(r.buf.len())?,
        },
        BLOCK => {
            let index = r.u64()?;
            let flags = r.u8()?;
            if flags & !1 != 0 {
                return Err(r.malformed("unknown flags"));
            }
            let raw_len = r.u32()?;
            let count = r.u32()? as usize;
            // Each change takes at least CHANGE_LEN bytes: bound the loop by
            // what is actually there before walking it.
            if count > r.buf.len() / CHANGE_LEN {
                return Err(r.malformed("more changes than bytes"));
            }
            let start = r.buf;
            let mut last_page = None;
            let mut data_changes = 0usize;
            for _ in 0..count {
                let (change, used) =
                    read_change(r.buf).ok_or_else(|| r.malformed("bad change record"))?;
                if last_page.is_some_and(|s| change.page <= s) {
                    return Err(r.malformed("pages out of order"));
                }
                last_page = Some(change.page);
                data_changes += usize::from(matches!(
                    change.kind,
                    ChangeKind::Data(_) | ChangeKind::Partial { .. }
                ));
                r.take(used)?;
            }
            let changes = Changes {
                count,
                bytes: &start[..start.len() - r.buf.len()],
            };
            let data = r.take(r.buf.len())?;
            if data_changes == 0 && (raw_len != 0 || !data.is_empty()) {
                return Err(r.malformed("data without data changes"));
            }
            Frame::Block(BlockFrame {
                index,
                compressed: flags & BLOCK_COMPRESSED != 0,
                raw_len,
                changes,
                data,
            })
        }
        ACK => Frame::Ack { index: r.u64()? },
        COMPLETE => Frame::Complete {
            blocks: r.u64()?,
            verify: r.u128()?,
        },
        CHALLENGE => Frame::Challenge {
            nonce: r.array()?,
            flags: r.flags()?,
        },
        PROOF => Frame::Proof {
            check: r.array()?,
            tag: r.array()?,
        },
        PROBE => Frame::Probe(r.take(payload.len())?),
        _ => Frame::Bye {
            verify: r.u128()?,
            tally: if r.buf.is_empty() {
                None
            } else {
                Some(Tally {
                    changed: r.u64()?,
                    zero: r.u64()?,
                    data_bytes: r.u64()?,
                    zero_bytes: r.u64()?,
                })
            },
        },
    };
    r.end()?;
    Ok(frame)
}

/// How much of a frame's payload the tag of a connection without a key
/// covers: everything, except the data of a `Block` frame. That data is
/// checked already, and more cheaply, where it matters: the destination
/// digests every data page after decompression and compares it with
/// the source's digest, carried in the tagged change records. Skipping it
/// keeps an unkeyed upload's tag at a few bytes a block (see
/// benches/BENCHMARKS.md, "Tagging every frame"). The change records are
/// read leniently: a corrupted count or kind moves the end of the covered
/// part, and with it the tag, which then fails.
pub fn tagged_len(kind: u8, payload: &[u8]) -> usize {
    if kind != BLOCK {
        return payload.len();
    }
    let Some(count) = payload.get(13..17) else {
        return payload.len();
    };
    let count = u32::from_le_bytes([count[0], count[1], count[2], count[3]]) as usize;
    let mut at = 17usize;
    for _ in 0..count.min(payload.len() / CHANGE_LEN) {
        match payload.get(at + 4) {
            Some(&CHANGE_DATA) => at += CHANGE_LEN + DIGEST_LEN,
            Some(&CHANGE_PARTIAL) => at += PARTIAL_CHANGE_LEN,
            Some(_) => at += CHANGE_LEN,
            None => return payload.len(),
        }
    }
    at.min(payload.len())
}

/// Append a frame header with a placeholder length; returns where the
/// payload starts, for [`finish_frame`].
fn begin_frame(out: &mut Vec<u8>, kind: u8) -> usize {
    out.push(kind);
    out.extend_from_slice(&[0; 4]);
    out.len()
}

/// Write the payload length of a frame begun at `start`.
fn finish_frame(out: &mut [u8], start: usize) {
    // Payloads are bounded by max_payload, far below 4 GiB; a longer one
    // would be refused by the peer, never silently cut.
    let len = u32::try_from(out.len() - start).unwrap_or(u32::MAX);
    out[start - 4..start].copy_from_slice(&len.to_le_bytes());
}

/// Where the flags byte of a `Block` payload is: after the block number.
const BLOCK_FLAGS_AT: usize = 8;

/// A `Block` frame being built in place: the fixed part and the changes
/// first, then the data appended straight into the outgoing buffer (a
/// compressor writes there without a copy), then [`BlockBuilder::finish`].
pub struct BlockBuilder<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> BlockBuilder<'a> {
    /// Append the header, block number, raw data length and changes to `out`.
    pub fn begin(
        out: &'a mut Vec<u8>,
        index: u64,
        raw_len: u32,
        changes: &[Change],
    ) -> BlockBuilder<'a> {
        let start = begin_frame(out, BLOCK);
        out.extend_from_slice(&index.to_le_bytes());
        out.push(0);
        out.extend_from_slice(&raw_len.to_le_bytes());
        let count = u32::try_from(changes.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_le_bytes());
        for c in changes {
            out.extend_from_slice(&c.page.to_le_bytes());
            match c.kind {
                ChangeKind::Zero => out.push(CHANGE_ZERO),
                ChangeKind::Data(d) => {
                    out.push(CHANGE_DATA);
                    out.extend_from_slice(&d.to_le_bytes());
                }
                ChangeKind::Partial { digest, unreadable } => {
                    out.push(CHANGE_PARTIAL);
                    out.extend_from_slice(&digest.to_le_bytes());
                    out.extend_from_slice(&unreadable.to_le_bytes());
                }
            }
        }
        BlockBuilder { out, start }
    }

    /// The buffer to append the block's data to.
    pub fn data(&mut self) -> &mut Vec<u8> {
        self.out
    }

    /// Close the frame; `compressed` says whether the data is zstd.
    pub fn finish(self, compressed: bool) {
        if compressed {
            self.out[self.start + BLOCK_FLAGS_AT] |= BLOCK_COMPRESSED;
        }
        finish_frame(self.out, self.start);
    }
}

/// Append a whole frame.
pub fn encode(frame: &Frame<'_>, out: &mut Vec<u8>) {
    let start;
    match frame {
        Frame::Hello(h) => {
            start = begin_frame(out, HELLO);
            out.extend_from_slice(&h.session.to_le_bytes());
            out.extend_from_slice(&h.lane.to_le_bytes());
            out.extend_from_slice(&h.lanes.to_le_bytes());
            out.push(u8::from(h.download));
            out.extend_from_slice(&h.block_size.to_le_bytes());
            out.extend_from_slice(&h.skip.to_le_bytes());
            out.extend_from_slice(&h.source_size.to_le_bytes());
            out.push(h.compression);
            out.push(h.flags);
            out.extend_from_slice(&h.nonce);
        }
        Frame::Welcome(w) => {
            start = begin_frame(out, WELCOME);
            out.extend_from_slice(&w.block_size.to_le_bytes());
            out.extend_from_slice(&w.source_size.to_le_bytes());
            out.extend_from_slice(&w.skip.to_le_bytes());
            out.extend_from_slice(&w.salt.to_le_bytes());
            out.extend_from_slice(&w.lanes.to_le_bytes());
        }
        Frame::Error(msg) => {
            start = begin_frame(out, ERROR);
            out.extend_from_slice(msg.as_bytes());
        }
        Frame::Notice(msg) => {
            start = begin_frame(out, NOTICE);
            out.extend_from_slice(msg.as_bytes());
        }
        Frame::Digests { index, digests } => {
            start = begin_frame(out, DIGESTS);
            out.extend_from_slice(&index.to_le_bytes());
            out.extend_from_slice(digests);
        }
        Frame::Refine { index, ranges } => {
            start = begin_frame(out, REFINE);
            out.extend_from_slice(&index.to_le_bytes());
            out.extend_from_slice(ranges);
        }
        Frame::Pages { index, digests } => {
            start = begin_frame(out, PAGES);
            out.extend_from_slice(&index.to_le_bytes());
            out.extend_from_slice(digests);
        }
        Frame::Block(b) => {
            let changes: Vec<Change> = b.changes.iter().collect();
            let mut block = BlockBuilder::begin(out, b.index, b.raw_len, &changes);
            block.data().extend_from_slice(b.data);
            block.finish(b.compressed);
            return;
        }
        Frame::Ack { index } => {
            start = begin_frame(out, ACK);
            out.extend_from_slice(&index.to_le_bytes());
        }
        Frame::Complete { blocks, verify } => {
            start = begin_frame(out, COMPLETE);
            out.extend_from_slice(&blocks.to_le_bytes());
            out.extend_from_slice(&verify.to_le_bytes());
        }
        Frame::Bye { verify, tally } => {
            start = begin_frame(out, BYE);
            out.extend_from_slice(&verify.to_le_bytes());
            if let Some(t) = tally {
                for n in [t.changed, t.zero, t.data_bytes, t.zero_bytes] {
                    out.extend_from_slice(&n.to_le_bytes());
                }
            }
        }
        Frame::Challenge { nonce, flags } => {
            start = begin_frame(out, CHALLENGE);
            out.extend_from_slice(nonce);
            out.push(*flags);
        }
        Frame::Proof { check, tag } => {
            start = begin_frame(out, PROOF);
            out.extend_from_slice(check);
            out.extend_from_slice(tag);
        }
        Frame::Probe(bytes) => {
            start = begin_frame(out, PROBE);
            out.extend_from_slice(bytes);
        }
    }
    finish_frame(out, start);
}

/// Append a `Digests` frame straight from a list of range digests.
pub fn encode_digests(out: &mut Vec<u8>, index: u64, digests: &[Digest]) {
    encode_list(out, DIGESTS, index, digests.iter());
}

/// Append a `Pages` frame straight from page digests.
pub fn encode_pages<'d>(out: &mut Vec<u8>, index: u64, digests: impl Iterator<Item = &'d Digest>) {
    encode_list(out, PAGES, index, digests);
}

fn encode_list<'d>(
    out: &mut Vec<u8>,
    kind: u8,
    index: u64,
    digests: impl Iterator<Item = &'d Digest>,
) {
    let start = begin_frame(out, kind);
    out.extend_from_slice(&index.to_le_bytes());
    for d in digests {
        out.extend_from_slice(&d.to_le_bytes());
    }
    finish_frame(out, start);
}

/// Read the digests of a `Digests` frame into `out`.
pub fn read_digests(bytes: &[u8], out: &mut Vec<Digest>) {
    out.clear();
    out.extend(bytes.chunks_exact(DIGEST_LEN).map(|c| {
        let mut d = [0u8; DIGEST_LEN];
        d.copy_from_slice(c);
        u128::from_le_bytes(d)
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn round_trip(frame: Frame<'_>) {
        let mut buf = Vec::new();
        encode(&frame, &mut buf);
        let (back, used) = decode(&buf, MAX).unwrap().unwrap();
        assert_eq!(back, frame);
        assert_eq!(used, buf.len());
        // Every strict prefix asks for more bytes, never errors or panics.
        for cut in 0..buf.len() {
            assert_eq!(decode(&buf[..cut], MAX), Ok(None), "cut at {cut}");
        }
    }

    fn sample_changes() -> Vec<u8> {
        let mut out = Vec::new();
        let changes = [
            Change {
                page: 0,
                kind: ChangeKind::Zero,
            },
            Change {
                page: 3,
                kind: ChangeKind::Data(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
            },
        ];
        let mut block = BlockBuilder::begin(&mut out, 42, 5, &changes);
        block.data().extend_from_slice(b"hello");
        block.finish(true);
        out
    }

    #[test]
    fn every_frame_round_trips() {
        round_trip(Frame::Hello(Hello {
            session: u128::MAX - 5,
            lane: 3,
            lanes: 4,
            download: true,
            block_size: 10 << 20,
            skip: 7,
            source_size: 1 << 40,
            compression: 2,
            flags: FLAG_AUTH | FLAG_ENCRYPT,
            nonce: [7; NONCE_LEN],
        }));
        round_trip(Frame::Challenge {
            nonce: [0xa5; NONCE_LEN],
            flags: FLAG_AUTH,
        });
        round_trip(Frame::Probe(&[]));
        round_trip(Frame::Probe(&[0x5a; HANDSHAKE_MAX]));
        round_trip(Frame::Proof {
            check: *b"fedcba9876543210",
            tag: *b"0123456789abcdef",
        });
        round_trip(Frame::Welcome(Welcome {
            block_size: 4096,
            source_size: 12345,
            skip: 0,
            salt: 99,
            lanes: 1,
        }));
        round_trip(Frame::Error("destination full"));
        round_trip(Frame::Notice("source /dev/vda: mounted read-write"));
        let mut long = Vec::new();
        encode(&Frame::Notice(&"x".repeat(NOTICE_MAX + 1)), &mut long);
        assert!(matches!(
            decode(&long, MAX),
            Err(ProtoError::Malformed { .. })
        ));
        let digests: Vec<u8> = (0..48).collect();
        round_trip(Frame::Digests {
            index: 9,
            digests: &digests,
        });
        round_trip(Frame::Pages {
            index: 10,
            digests: &digests[..32],
        });
        round_trip(Frame::Refine {
            index: 11,
            ranges: &[0b101, 0x80],
        });
        round_trip(Frame::Ack { index: u64::MAX });
        round_trip(Frame::Complete {
            blocks: 12,
            verify: 1 << 100,
        });
        round_trip(Frame::Bye {
            verify: 3 << 90,
            tally: None,
        });
        round_trip(Frame::Bye {
            verify: 3 << 90,
            tally: Some(Tally {
                changed: 1,
                zero: 2,
                data_bytes: 3 << 40,
                zero_bytes: u64::MAX,
            }),
        });
        let block = sample_changes();
        let (frame, _) = decode(&block, MAX).unwrap().unwrap();
        round_trip(frame);
        let Frame::Block(b) = frame else {
            panic!("not a block")
        };
        assert_eq!(b.changes.len(), 2);
        assert_eq!(b.data, b"hello");
        assert!(b.compressed);
    }

    #[test]
    fn partly_unreadable_pages_round_trip_and_are_tagged() {
        let partial = ChangeKind::Partial {
            digest: 0x0f0e_0d0c_0b0a_0908_0706_0504_0302_0100,
            unreadable: 0x8000_0000_0000_0001,
        };
        let changes = [Change {
            page: 4,
            kind: partial,
        }];
        let mut out = Vec::new();
        let mut block = BlockBuilder::begin(&mut out, 9, 3, &changes);
        block.data().extend_from_slice(b"abc");
        block.finish(false);
        let (frame, used) = decode(&out, MAX).unwrap().unwrap();
        assert_eq!(used, out.len());
        round_trip(frame);
        let Frame::Block(b) = frame else {
            panic!("not a block")
        };
        assert_eq!(b.changes.iter().next().map(|c| c.kind), Some(partial));
        // The tag covers the whole record, mask included, but not the data.
        let payload = &out[HEADER_LEN..];
        assert_eq!(tagged_len(BLOCK, payload), payload.len() - 3);
        // A mask of 0 is not a partly unreadable page.
        let mask_at = out.len() - 3 - 8;
        out[mask_at..mask_at + 8].fill(0);
        assert!(decode(&out, MAX).is_err());
    }

    #[test]
    fn unknown_handshake_flags_are_errors() {
        // A dry run's flag may come with the others, never encryption alone.
        for flags in [FLAG_ENCRYPT, FLAG_ENCRYPT | FLAG_DRY, 8, 0x80] {
            let mut buf = Vec::new();
            encode(
                &Frame::Challenge {
                    nonce: [0; NONCE_LEN],
                    flags,
                },
                &mut buf,
            );
            assert!(
                matches!(decode(&buf, MAX), Err(ProtoError::Malformed { .. })),
                "flags {flags}"
            );
        }
    }

    #[test]
    fn lengths_above_the_maximum_are_refused_before_reading_them() {
        let mut buf = Vec::new();
        encode(&Frame::Error("x"), &mut buf);
        buf[1..5].copy_from_slice(&(MAX as u32 + 1).to_le_bytes());
        assert!(matches!(
            decode(&buf, MAX),
            Err(ProtoError::TooLarge { .. })
        ));
        // A huge length with no payload behind it is still refused at once.
        assert!(decode(&[ERROR, 0xff, 0xff, 0xff, 0xff], MAX).is_err());
    }

    #[test]
    fn unknown_types_and_trailing_bytes_are_errors() {
        assert_eq!(
            decode(&[0, 0, 0, 0, 0], MAX),
            Err(ProtoError::UnknownType(0))
        );
        assert_eq!(
            decode(&[99, 0, 0, 0, 0], MAX),
            Err(ProtoError::UnknownType(99))
        );
        let mut buf = Vec::new();
        encode(&Frame::Ack { index: 1 }, &mut buf);
        buf.push(0);
        buf[1] += 1;
        assert!(matches!(
            decode(&buf, MAX),
            Err(ProtoError::Malformed {
                what: "trailing bytes",
                ..
            })
        ));
    }

    /// A dry session's `Bye` carries the tally whole or not at all: the
    /// 16-byte `Bye` of a source older than the tally still decodes, and a
    /// cut tally is malformed.
    #[test]
    fn a_bye_tally_is_whole_or_absent() {
        let mut old = vec![BYE, 16, 0, 0, 0];
        old.extend_from_slice(&7u128.to_le_bytes());
        assert_eq!(
            decode(&old, MAX),
            Ok(Some((
                Frame::Bye {
                    verify: 7,
                    tally: None
                },
                old.len()
            )))
        );
        for extra in [1, 8, 31, 33] {
            let mut bad = old.clone();
            bad.extend(std::iter::repeat_n(0, extra));
            bad[1] = 16 + extra as u8;
            assert!(
                matches!(decode(&bad, MAX), Err(ProtoError::Malformed { .. })),
                "{extra} bytes after the digest"
            );
        }
    }

    #[test]
    fn malformed_blocks_are_errors() {
        let good = sample_changes();
        // Change count larger than the payload could hold.
        let mut bad = good.clone();
        bad[HEADER_LEN + 13..HEADER_LEN + 17].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&bad, MAX).is_err());
        // Pages out of order.
        let mut bad = Vec::new();
        let twice = [
            Change {
                page: 2,
                kind: ChangeKind::Zero,
            },
            Change {
                page: 2,
                kind: ChangeKind::Zero,
            },
        ];
        BlockBuilder::begin(&mut bad, 0, 0, &twice).finish(false);
        assert!(decode(&bad, MAX).is_err());
        // Data behind a block with no data change.
        let mut bad = Vec::new();
        let mut block = BlockBuilder::begin(&mut bad, 0, 3, &[]);
        block.data().extend_from_slice(b"abc");
        block.finish(false);
        assert!(decode(&bad, MAX).is_err());
        // An unknown change kind.
        let mut bad = good.clone();
        bad[HEADER_LEN + 17 + 4] = 7;
        assert!(decode(&bad, MAX).is_err());
    }

    #[test]
    fn digests_must_be_whole() {
        let mut buf = Vec::new();
        encode(
            &Frame::Digests {
                index: 1,
                digests: &[0; 17],
            },
            &mut buf,
        );
        assert!(decode(&buf, MAX).is_err());
        let mut out = Vec::new();
        read_digests(&7u128.to_le_bytes(), &mut out);
        assert_eq!(out, vec![7]);
    }

    #[test]
    fn page_digests_must_be_whole_and_refine_takes_any_bitmap() {
        let mut buf = Vec::new();
        encode(
            &Frame::Pages {
                index: 1,
                digests: &[0; 33],
            },
            &mut buf,
        );
        assert!(decode(&buf, MAX).is_err());
        // The bitmap's length depends on the block: the session checks it.
        for ranges in [&[][..], &[1], &[0xff; 300]] {
            round_trip(Frame::Refine { index: 3, ranges });
        }
        let mut direct = Vec::new();
        encode_pages(&mut direct, 8, [1u128, 2].iter());
        let (frame, _) = decode(&direct, MAX).unwrap().unwrap();
        let Frame::Pages { index: 8, digests } = frame else {
            panic!("not a Pages frame: {frame:?}")
        };
        let mut out = Vec::new();
        read_digests(digests, &mut out);
        assert_eq!(out, vec![1, 2]);
    }

    #[test]
    fn pages_and_ranges_cover_a_block_with_short_ends() {
        assert_eq!(page_size(10 << 20), PAGE);
        assert_eq!(page_size(4095), 4095);
        assert_eq!(page_size(1), 1);
        let page = page_size(100_000);
        let n = pages(100_000, page);
        assert_eq!(n, 25);
        assert_eq!(ranges(n), 2);
        assert_eq!(range_pages(0, n), 0..16);
        assert_eq!(range_pages(1, n), 16..25);
        assert_eq!(bitmap_len(ranges(n)), 1);
        assert_eq!(bitmap_len(8), 1);
        assert_eq!(bitmap_len(9), 2);
        let map = [0b0000_0101, 0b1000_0000];
        let set: Vec<usize> = (0..16).filter(|&r| marked(&map, r)).collect();
        assert_eq!(set, vec![0, 2, 15]);
        assert!(!marked(&map, 16), "past the bitmap");
        // The largest block's frames fit the negotiated maximum.
        let max = max_payload(MAX_BLOCK_SIZE);
        assert!(max > MAX_BLOCK_SIZE && max < u32::MAX as usize);
    }

    #[test]
    fn range_digests_fold_the_page_digests_of_each_range() {
        let pages: Vec<Digest> = (0..20u128).map(|i| i * 0x1234_5678).collect();
        let mut out = Vec::new();
        range_digests(&pages, &mut out);
        assert_eq!(out.len(), 2);
        let fold = |ds: &[Digest]| {
            let bytes: Vec<u8> = ds.iter().flat_map(|d| d.to_le_bytes()).collect();
            crate::digest::fnv1a128(&bytes)
        };
        assert_eq!(out[0], fold(&pages[..RANGE_PAGES]));
        assert_eq!(out[1], fold(&pages[RANGE_PAGES..]));
        // Order matters: swapping two pages changes the range digest.
        let mut swapped = pages.clone();
        swapped.swap(0, 1);
        let mut again = Vec::new();
        range_digests(&swapped, &mut again);
        assert_ne!(again[0], out[0]);
        assert_eq!(again[1], out[1]);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut buf = vec![0u8; 256];
        for _ in 0..20_000 {
            let len = rng.usize(..buf.len());
            rng.fill(&mut buf[..len]);
            if len > 0 {
                buf[0] = rng.u8(*FRAME_TYPES.start()..=*FRAME_TYPES.end());
            }
            let _ = decode(&buf[..len], 200);
        }
    }

    #[test]
    fn an_unkeyed_tag_covers_all_but_block_data() {
        let mut buf = Vec::new();
        let changes = [
            Change {
                page: 0,
                kind: ChangeKind::Zero,
            },
            Change {
                page: 1,
                kind: ChangeKind::Data(5),
            },
        ];
        let mut b = BlockBuilder::begin(&mut buf, 3, 4, &changes);
        b.data().extend_from_slice(b"data");
        b.finish(false);
        let payload = &buf[HEADER_LEN..];
        assert_eq!(tagged_len(BLOCK, payload), payload.len() - 4);
        assert_eq!(tagged_len(ACK, &[1; 8]), 8);
        // Truncated or lying change records never point past the payload.
        assert_eq!(tagged_len(BLOCK, &payload[..20]), 20);
        let mut lying = payload.to_vec();
        lying[13] = 0xff;
        assert!(tagged_len(BLOCK, &lying) <= lying.len());
    }
}
