//! Structured frames, encoded then decoded, come back unchanged.
//!
//! Block frames are written the way the source writes them — with
//! `BlockBuilder`: the changes, the data appended to its buffer, then
//! `finish` — with strictly increasing page numbers, and into a buffer
//! that already holds other bytes, so the offsets the builder keeps are
//! tested too.
use arbitrary::{Result, Unstructured};
use bsync::proto::{
    self, BlockBuilder, Change, ChangeKind, Frame, HEADER_LEN, Hello, ProtoError, Welcome,
};

const MAX: usize = usize::MAX;

/// The target, on one input.
pub fn fuzz(data: &[u8]) {
    let _ = run(&mut Unstructured::new(data));
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    // Bytes already in the buffer (an earlier frame, say) and after it.
    let before: &[u8] = u.arbitrary()?;
    let mut out = before.to_vec();
    match u.int_in_range(0..=7u8)? {
        0 => {
            let block = u.arbitrary()?;
            encode_block(u, &mut out, block)?;
        }
        _ => {
            let frame = frame(u)?;
            proto::encode(&frame, &mut out);
            check(&out[before.len()..], Some(frame));
            // The digest lists' shortcuts write the same bytes, and the
            // reader gives back what went in.
            let (Frame::Digests { index, digests } | Frame::Pages { index, digests }) = frame
            else {
                return Ok(());
            };
            let mut list = Vec::new();
            proto::read_digests(digests, &mut list);
            assert_eq!(list.len(), digests.len() / proto::DIGEST_LEN);
            let mut direct = Vec::new();
            if matches!(frame, Frame::Digests { .. }) {
                proto::encode_digests(&mut direct, index, &list);
            } else {
                proto::encode_pages(&mut direct, index, list.iter());
            }
            assert_eq!(direct, &out[before.len()..]);
        }
    }
    Ok(())
}

fn frame<'a>(u: &mut Unstructured<'a>) -> Result<Frame<'a>> {
    Ok(match u.int_in_range(0..=12u8)? {
        0 => Frame::Hello(Hello {
            session: u.arbitrary()?,
            lane: u.arbitrary()?,
            lanes: u.arbitrary()?,
            download: u.arbitrary()?,
            block_size: u.arbitrary()?,
            skip: u.arbitrary()?,
            source_size: u.arbitrary()?,
            compression: u.arbitrary()?,
            flags: flags(u)?,
            nonce: u.arbitrary()?,
        }),
        1 => Frame::Welcome(Welcome {
            block_size: u.arbitrary()?,
            source_size: u.arbitrary()?,
            skip: u.arbitrary()?,
            salt: u.arbitrary()?,
            lanes: u.arbitrary()?,
        }),
        2 => Frame::Error(u.arbitrary()?),
        3 => Frame::Digests {
            index: u.arbitrary()?,
            digests: whole_digests(u)?,
        },
        9 => Frame::Pages {
            index: u.arbitrary()?,
            digests: whole_digests(u)?,
        },
        10 => Frame::Refine {
            index: u.arbitrary()?,
            ranges: u.arbitrary()?,
        },
        4 => Frame::Ack {
            index: u.arbitrary()?,
        },
        5 => Frame::Complete {
            blocks: u.arbitrary()?,
            verify: u.arbitrary()?,
        },
        6 => Frame::Challenge {
            nonce: u.arbitrary()?,
            flags: flags(u)?,
        },
        7 => Frame::Proof {
            check: u.arbitrary()?,
            tag: u.arbitrary()?,
        },
        8 => {
            let bytes: &[u8] = u.arbitrary()?;
            Frame::Probe(&bytes[..bytes.len().min(proto::HANDSHAKE_MAX)])
        }
        12 => {
            let text: &str = u.arbitrary()?;
            let mut end = text.len().min(proto::NOTICE_MAX);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            Frame::Notice(&text[..end])
        }
        _ => Frame::Bye {
            verify: u.arbitrary()?,
            tally: tally(u)?,
        },
    })
}

/// A dry session's tally, or none.
pub fn tally(u: &mut Unstructured<'_>) -> Result<Option<proto::Tally>> {
    if !u.arbitrary::<bool>()? {
        return Ok(None);
    }
    Ok(Some(proto::Tally {
        changed: u.arbitrary()?,
        zero: u.arbitrary()?,
        data_bytes: u.arbitrary()?,
        zero_bytes: u.arbitrary()?,
    }))
}

/// A list of whole digests, as the decoder accepts.
fn whole_digests<'a>(u: &mut Unstructured<'a>) -> Result<&'a [u8]> {
    let d: &[u8] = u.arbitrary()?;
    Ok(&d[..d.len() / proto::DIGEST_LEN * proto::DIGEST_LEN])
}

/// The handshake flags the decoder accepts: none, a token, a key.
fn flags(u: &mut Unstructured<'_>) -> Result<u8> {
    let all = [0, proto::FLAG_AUTH, proto::FLAG_AUTH | proto::FLAG_ENCRYPT];
    Ok(*u.choose(&all)?)
}

/// Write a Block frame with the source's helpers and check it decodes to
/// what went in.
fn encode_block(u: &mut Unstructured<'_>, out: &mut Vec<u8>, index: u64) -> Result<()> {
    let at = out.len();
    let mut changes = Vec::new();
    let mut page: u32 = u.arbitrary()?;
    for _ in 0..u.int_in_range(0..=64u8)? {
        let kind = match u.int_in_range(0..=2u8)? {
            0 => ChangeKind::Data(u.arbitrary()?),
            // A partly unreadable page (--rescue): its mask is never 0.
            1 => ChangeKind::Partial {
                digest: u.arbitrary()?,
                unreadable: u.arbitrary::<u64>()?.max(1),
            },
            _ => ChangeKind::Zero,
        };
        changes.push(Change { page, kind });
        // Mostly neighbours, sometimes far jumps towards u32::MAX.
        let step = if u.arbitrary()? {
            u32::from(u.int_in_range(1..=8u8)?)
        } else {
            u.arbitrary::<u32>()?.max(1)
        };
        match page.checked_add(step) {
            Some(next) => page = next,
            None => break,
        }
    }
    // The decoder refuses data behind a block with no data change.
    let has_data = changes
        .iter()
        .any(|c| matches!(c.kind, ChangeKind::Data(_) | ChangeKind::Partial { .. }));
    let (raw_len, data): (u32, &[u8]) = if has_data {
        (u.arbitrary()?, u.arbitrary()?)
    } else {
        (0, &[])
    };
    let compressed: bool = u.arbitrary()?;

    let mut block = BlockBuilder::begin(out, index, raw_len, &changes);
    block.data().extend_from_slice(data);
    block.finish(compressed);

    let buf = &out[at..];
    check(buf, None);
    let Ok(Some((Frame::Block(b), _))) = proto::decode(buf, MAX) else {
        panic!("a block did not decode: {:?}", proto::decode(buf, MAX));
    };
    assert_eq!(b.index, index);
    assert_eq!(b.compressed, compressed);
    assert_eq!(b.raw_len, raw_len);
    assert_eq!(b.changes.len(), changes.len());
    assert_eq!(b.changes.iter().collect::<Vec<_>>(), changes);
    assert_eq!(b.data, data);
    Ok(())
}

/// `buf` holds exactly one frame: it decodes (to `want`, if given) using all
/// of it, re-encodes to the same bytes, respects `max` at the exact boundary,
/// and any strict prefix asks for more bytes.
fn check(buf: &[u8], want: Option<Frame<'_>>) {
    let (frame, used) = match proto::decode(buf, MAX) {
        Ok(Some(got)) => got,
        other => panic!("{want:?} did not decode: {other:?}"),
    };
    if let Some(want) = want {
        assert_eq!(frame, want);
    }
    assert_eq!(used, buf.len());

    let mut again = Vec::new();
    proto::encode(&frame, &mut again);
    assert_eq!(again, buf);

    // Trailing bytes belong to the next frame.
    let mut longer = buf.to_vec();
    proto::encode(
        &Frame::Bye {
            verify: 1,
            tally: None,
        },
        &mut longer,
    );
    assert_eq!(proto::decode(&longer, MAX), Ok(Some((frame, used))));

    let payload = buf.len() - HEADER_LEN;
    assert_eq!(proto::decode(buf, payload), Ok(Some((frame, used))));
    if payload > 0 {
        assert_eq!(
            proto::decode(buf, payload - 1),
            Err(ProtoError::TooLarge {
                len: payload,
                max: payload - 1
            })
        );
    }
    for cut in [0, HEADER_LEN - 1, HEADER_LEN, buf.len() - 1] {
        if cut < buf.len() {
            assert_eq!(proto::decode(&buf[..cut], MAX), Ok(None), "cut {cut}");
        }
    }
}
