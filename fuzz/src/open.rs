//! The tagged and sealed frame opener: arbitrary bytes under a connection
//! key (with or without encryption) never panic and (practically) never
//! open; frames sealed by the sender open to exactly what was sent, in
//! order, and a changed byte anywhere in them is refused.
use arbitrary::{Result, Unstructured};
use bsync::aead::Key;
use bsync::auth::{Direction, Handshake, Secret};
use bsync::net::{open_frame, seal_frames};
use bsync::proto::{self, Frame, Hello};

/// The target, on one input.
pub fn fuzz(data: &[u8]) {
    let _ = run(&mut Unstructured::new(data));
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let secret = match u.int_in_range(0..=2u8)? {
        0 => None,
        n => Some(Secret::new(Key::from_bytes(u.arbitrary()?), n == 2)),
    };
    let hello = Hello {
        session: u.arbitrary()?,
        lane: 0,
        lanes: 1,
        download: false,
        block_size: 4096,
        skip: 0,
        source_size: 0,
        compression: 0,
        flags: Secret::flags(secret.as_ref()),
        nonce: u.arbitrary()?,
    };
    let hs = Handshake::new(secret.as_ref(), &u.arbitrary()?, hello.flags, &hello);

    // Arbitrary bytes as a received frame.
    let mut junk: Vec<u8> = u.arbitrary()?;
    let mut rx = hs.cipher(Direction::Up);
    if open_frame(&mut rx, &mut junk).is_ok() {
        let _ = proto::decode(&junk, usize::MAX);
    }

    // Real frames: sealed, then opened one by one.
    let index: u64 = u.arbitrary()?;
    let text: String = u.arbitrary()?;
    let frames = [
        Frame::Ack { index },
        Frame::Error(&text),
        Frame::Bye {
            verify: u.arbitrary()?,
            tally: crate::round_trip::tally(u)?,
        },
    ];
    let mut plain = Vec::new();
    for f in &frames {
        proto::encode(f, &mut plain);
    }
    let mut tx = hs.cipher(Direction::Up);
    let mut work = plain.clone();
    let wire = seal_frames(&mut tx, &mut work).expect("seal");
    let flip = u.int_in_range(0..=wire.len())?;
    let mut rx = hs.cipher(Direction::Up);
    let mut at = 0;
    let mut bad = wire.clone();
    if flip < bad.len() {
        bad[flip] ^= 1;
    }
    for (i, f) in frames.iter().enumerate() {
        let len = 5 + u32::from_le_bytes([wire[at + 1], wire[at + 2], wire[at + 3], wire[at + 4]])
            as usize;
        let mut one = wire[at..at + len].to_vec();
        let mut tampered = bad[at..at + len].to_vec();
        let changed = tampered != one;
        // The first frame, changed, under a fresh opener at counter 1.
        if changed && i == 0 {
            let mut fresh = hs.cipher(Direction::Up);
            assert!(
                open_frame(&mut fresh, &mut tampered).is_err(),
                "a changed byte opened"
            );
        }
        open_frame(&mut rx, &mut one).expect("a sealed frame opens");
        let (got, _) = proto::decode(&one, usize::MAX)
            .expect("decodes")
            .expect("whole");
        assert_eq!(&got, f);
        at += len;
    }
    Ok(())
}
