//! The handshake proofs over arbitrary inputs: a Hello decoded from
//! arbitrary bytes, an arbitrary secret (or none), nonces and flags. The
//! proof one end makes always verifies at the other over the same
//! transcript; over a transcript that differs in any byte of the Hello it
//! is refused as corrupted, and under another secret as a wrong secret.
//! Arbitrary proofs never panic and (practically) never verify.
use arbitrary::{Result, Unstructured};
use bsync::aead::Key;
use bsync::auth::{Direction, Handshake, Refusal, Secret};
use bsync::proto::{self, Frame, HANDSHAKE_MAX, HEADER_LEN, Hello};

/// The target, on one input.
pub fn fuzz(data: &[u8]) {
    let _ = run(&mut Unstructured::new(data));
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    // A Hello frame as proto encodes it, its payload from the input.
    let hello_bytes: [u8; 64] = u.arbitrary()?;
    let mut framed = Vec::new();
    let any = Hello {
        session: 0,
        lane: 0,
        lanes: 0,
        download: false,
        block_size: 0,
        skip: 0,
        source_size: 0,
        compression: 0,
        flags: 0,
        nonce: [0; proto::NONCE_LEN],
    };
    proto::encode(&Frame::Hello(any), &mut framed);
    let len = framed.len() - HEADER_LEN;
    framed[HEADER_LEN..].copy_from_slice(&hello_bytes[..len]);
    let Ok(Some((Frame::Hello(hello), _))) = proto::decode(&framed, HANDSHAKE_MAX) else {
        return Ok(());
    };
    let secret = match u.int_in_range(0..=2u8)? {
        0 => None,
        n => Some(Secret::new(Key::from_bytes(u.arbitrary()?), n == 2)),
    };
    let nonce: [u8; 16] = u.arbitrary()?;
    let flags = hello.flags;
    let ours = Handshake::new(secret.as_ref(), &nonce, flags, &hello);
    let (check, tag) = ours.proof(Direction::Up);
    assert_eq!(ours.verify(Direction::Up, &check, &tag), Ok(()));
    assert!(ours.verify(Direction::Down, &check, &tag).is_err());

    // One byte of the Hello changed in transit.
    let at = u.int_in_range(0..=len - 1)?;
    let mask: u8 = u.int_in_range(1..=255u8)?;
    let mut changed = framed.clone();
    changed[HEADER_LEN + at] ^= mask;
    if let Ok(Some((Frame::Hello(other), _))) = proto::decode(&changed, HANDSHAKE_MAX) {
        let theirs = Handshake::new(secret.as_ref(), &nonce, flags, &other);
        assert_eq!(
            theirs.verify(Direction::Up, &check, &tag),
            Err(Refusal::Corrupted)
        );
    }
    // Another secret over the same transcript.
    if let Some(s) = &secret {
        let other_key: [u8; 32] = u.arbitrary()?;
        let other = Secret::new(Key::from_bytes(other_key), s.encrypts());
        if other != *s {
            let theirs = Handshake::new(Some(&other), &nonce, flags, &hello);
            assert_eq!(
                theirs.verify(Direction::Up, &check, &tag),
                Err(Refusal::WrongSecret)
            );
        }
    }
    // Arbitrary proofs.
    let (c2, t2): ([u8; 16], [u8; 16]) = (u.arbitrary()?, u.arbitrary()?);
    if (c2, t2) != (check, tag) {
        let _ = ours.verify(Direction::Up, &c2, &t2);
    }
    Ok(())
}
