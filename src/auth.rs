//! Who may talk to a bsync server, and checking (or sealing) every frame
//! once they have shown it.
//!
//! A shared 32-byte secret — the `-K` key, or without encryption the session
//! token of `-token-file` — is never sent. Each connection proves it instead:
//!
//! 1. The server sends a fresh random nonce (`Challenge`), the client a
//!    fresh random nonce of its own in its `Hello`.
//! 2. Both derive the connection key
//!    `HChaCha20(HChaCha20(secret, server nonce), client nonce)`: fresh per
//!    connection as long as either side's randomness is, so no two
//!    connections — parallel lanes, reconnects, other sessions — share one.
//!    Without a secret the secret is 32 zero bytes: the key then proves
//!    nothing about who is talking, but it still catches every bit the
//!    network or a broken middlebox changed.
//! 3. The client sends a `Proof`: two ChaCha20-Poly1305 tags of nothing with
//!    the two handshake frames, as each end sent or received them, as
//!    associated data — `check` under the key without a secret, `tag` under
//!    the connection key. The server checks both before it opens anything:
//!    a bad `check` means the handshake was corrupted in transit, a good
//!    `check` with a bad `tag` means a different secret. Then it answers
//!    with its own proof, which the client checks before it reads anything.
//!
//! Every later frame, the `Welcome` first, carries a 16-byte tag under the
//! connection key: with `-K` the frame is sealed (encrypted and
//! authenticated), otherwise only authenticated (the payload travels in
//! clear; see [`aead::authenticate`]) — all of it but the data of a `Block`
//! frame, which the destination checks page by page against the
//! source's digests in the tagged change records ([`proto::tagged_len`]). The nonce is the direction (client to
//! server, or back) and a counter the receiver keeps too, so a replayed,
//! reordered, dropped or altered frame fails its tag, key or no key. The
//! proofs are counter 0 of each direction; frames start at 1.

use crate::aead::{self, Key, NONCE_LEN, TAG_LEN};
use crate::proto::{self, FLAG_AUTH, FLAG_ENCRYPT, Frame, Hello, SECRET_FLAGS};

/// The shared secret of a session, and whether it encrypts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secret {
    key: Key,
    encrypt: bool,
}

impl Secret {
    /// A secret: a key (`encrypt`, which seals every frame) or a token
    /// (which only proves the handshake).
    pub fn new(key: Key, encrypt: bool) -> Secret {
        Secret { key, encrypt }
    }

    /// Whether frames are sealed (a key), or only the handshake is proven
    /// (a token).
    pub fn encrypts(&self) -> bool {
        self.encrypt
    }

    /// The handshake flags of whoever holds `secret`.
    pub fn flags(secret: Option<&Secret>) -> u8 {
        match secret {
            None => 0,
            Some(s) if s.encrypt => FLAG_AUTH | FLAG_ENCRYPT,
            Some(_) => FLAG_AUTH,
        }
    }
}

/// Why the peer's flags do not match ours, if they don't: the text that
/// follows "authentication failed" on our side. `ours` are our flags.
pub fn mismatch(ours: u8, theirs: u8, peer_role: &str) -> Option<String> {
    let (ours, theirs) = (ours & SECRET_FLAGS, theirs & SECRET_FLAGS);
    if ours == theirs {
        return None;
    }
    let what = |f: u8| match f {
        0 => "neither a key nor a token",
        FLAG_AUTH => "a token (-token-file) but no key",
        _ => "a key (-K)",
    };
    Some(format!(
        "this end has {}, the {peer_role} has {}",
        what(ours),
        what(theirs)
    ))
}

/// Which way a frame travels; part of every nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client to server.
    Up = 1,
    /// Server to client.
    Down = 2,
}

/// One connection's handshake: the derived keys and the transcript.
pub struct Handshake {
    key: Key,
    /// The key without a secret, for the `check` of a proof.
    plain: Key,
    transcript: Vec<u8>,
    encrypt: bool,
    /// A key or token is held: only then can a good `check` with a bad
    /// `tag` mean another secret.
    keyed: bool,
}

/// Why a peer's proof was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The handshake frames differ between the ends: changed in transit.
    Corrupted,
    /// The handshake arrived intact, but the peer holds another secret.
    WrongSecret,
}

impl Handshake {
    /// Derive the connection keys from the secret (if any) and both nonces;
    /// the proofs cover the server's `Challenge` (its nonce and flags) and
    /// the client's `Hello` as encoded on the wire.
    pub fn new(
        secret: Option<&Secret>,
        server_nonce: &[u8; 16],
        flags: u8,
        hello: &Hello,
    ) -> Handshake {
        let derive =
            |k: &Key| aead::derive_subkey(&aead::derive_subkey(k, server_nonce), &hello.nonce);
        let plain = derive(&Key::from_bytes([0; aead::KEY_LEN]));
        let key = secret.map_or_else(|| plain.clone(), |s| derive(&s.key));
        let mut transcript = Vec::new();
        let challenge = Frame::Challenge {
            nonce: *server_nonce,
            flags,
        };
        proto::encode(&challenge, &mut transcript);
        proto::encode(&Frame::Hello(*hello), &mut transcript);
        Handshake {
            key,
            plain,
            transcript,
            encrypt: secret.is_some_and(Secret::encrypts),
            keyed: secret.is_some(),
        }
    }

    /// The proof the sender in `dir` gives: (check, tag).
    pub fn proof(&self, dir: Direction) -> ([u8; TAG_LEN], [u8; TAG_LEN]) {
        (
            aead::seal(&self.plain, &nonce(dir, 0), &self.transcript, &mut []),
            aead::seal(&self.key, &nonce(dir, 0), &self.transcript, &mut []),
        )
    }

    /// Whether `check` and `tag` are the proof of the sender in `dir`
    /// (constant time), and if not, why. Without a secret both are made
    /// under the same key, so a bad `tag` can only be a changed byte.
    pub fn verify(
        &self,
        dir: Direction,
        check: &[u8; TAG_LEN],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), Refusal> {
        let n = nonce(dir, 0);
        aead::open(&self.plain, &n, &self.transcript, &mut [], check)
            .map_err(|_| Refusal::Corrupted)?;
        aead::open(&self.key, &n, &self.transcript, &mut [], tag).map_err(|_| {
            if self.keyed {
                Refusal::WrongSecret
            } else {
                Refusal::Corrupted
            }
        })
    }

    /// The state for frames sent in `dir` (or received from it): sealed
    /// with a key, authenticated only without one.
    pub fn cipher(&self, dir: Direction) -> Cipher {
        Cipher {
            key: self.key.clone(),
            dir,
            counter: 1,
            encrypt: self.encrypt,
        }
    }
}

fn nonce(dir: Direction, counter: u64) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[..4].copy_from_slice(&(dir as u32).to_le_bytes());
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

/// Seals or opens (or, without a key, tags and checks) the frames of one
/// direction of one connection, in order.
pub struct Cipher {
    key: Key,
    dir: Direction,
    counter: u64,
    encrypt: bool,
}

impl Cipher {
    /// Encrypt `payload` in place (only with a key) with `header` as
    /// associated data; returns the tag to send after it.
    pub fn seal(&mut self, header: &[u8], payload: &mut [u8]) -> [u8; TAG_LEN] {
        let n = nonce(self.dir, self.counter);
        let tag = if self.encrypt {
            aead::seal(&self.key, &n, header, payload)
        } else {
            let covered = proto::tagged_len(header.first().copied().unwrap_or(0), payload);
            aead::authenticate(&self.key, &n, header, &payload[..covered])
        };
        self.counter += 1;
        tag
    }

    /// Check the next frame's tag and (with a key) decrypt `payload` in
    /// place. A frame that was altered, forged, replayed, reordered or
    /// follows a dropped one fails.
    pub fn open(
        &mut self,
        header: &[u8],
        payload: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), aead::OpenError> {
        let n = nonce(self.dir, self.counter);
        if self.encrypt {
            aead::open(&self.key, &n, header, payload, tag)?;
        } else {
            let covered = proto::tagged_len(header.first().copied().unwrap_or(0), payload);
            aead::verify(&self.key, &n, header, &payload[..covered], tag)?;
        }
        self.counter += 1;
        Ok(())
    }

    /// Whether frames are encrypted, not only authenticated.
    pub fn encrypts(&self) -> bool {
        self.encrypt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's `Hello` with `flags` and a nonce of `client` bytes.
    fn hello(flags: u8, client: u8) -> Hello {
        Hello {
            session: 7,
            lane: 0,
            lanes: 1,
            download: false,
            block_size: 4096,
            skip: 0,
            source_size: 1 << 20,
            compression: 0,
            flags,
            nonce: [client; 16],
        }
    }

    fn handshake(secret: [u8; 32], server: u8, client: u8) -> Handshake {
        let hello = hello(FLAG_AUTH | FLAG_ENCRYPT, client);
        Handshake::new(
            Some(&Secret::new(Key::from_bytes(secret), true)),
            &[server; 16],
            hello.flags,
            &hello,
        )
    }

    #[test]
    fn proofs_need_the_secret_and_the_direction() {
        let ours = handshake([1; 32], 2, 3);
        let (check, tag) = ours.proof(Direction::Up);
        assert_eq!(ours.verify(Direction::Up, &check, &tag), Ok(()));
        assert!(
            ours.verify(Direction::Down, &check, &tag).is_err(),
            "a reflected proof"
        );
        assert_eq!(
            handshake([9; 32], 2, 3).verify(Direction::Up, &check, &tag),
            Err(Refusal::WrongSecret),
            "wrong secret"
        );
        assert!(
            handshake([1; 32], 4, 3)
                .verify(Direction::Up, &check, &tag)
                .is_err(),
            "old challenge"
        );
        assert!(
            handshake([1; 32], 2, 4)
                .verify(Direction::Up, &check, &tag)
                .is_err(),
            "other client"
        );
        let mut other = handshake([1; 32], 2, 3);
        other.transcript.push(0);
        assert_eq!(
            other.verify(Direction::Up, &check, &tag),
            Err(Refusal::Corrupted),
            "altered transcript"
        );
    }

    #[test]
    fn a_changed_tag_without_a_secret_is_corruption_not_a_wrong_key() {
        // Issue 18, item 10: neither end holds a key or token.
        let hs = Handshake::new(None, &[2; 16], 0, &hello(0, 3));
        let (check, mut tag) = hs.proof(Direction::Up);
        tag[0] ^= 1;
        assert_eq!(
            hs.verify(Direction::Up, &check, &tag),
            Err(Refusal::Corrupted)
        );
    }

    #[test]
    fn every_connection_and_direction_gets_its_own_keystream() {
        let seal_zeros = |h: &Handshake, dir| {
            let mut buf = [0u8; 64];
            h.cipher(dir).seal(b"h", &mut buf);
            buf
        };
        let a = handshake([1; 32], 2, 3);
        let streams = [
            seal_zeros(&a, Direction::Up),
            seal_zeros(&a, Direction::Down),
            seal_zeros(&handshake([1; 32], 2, 4), Direction::Up),
            seal_zeros(&handshake([1; 32], 5, 3), Direction::Up),
        ];
        for (i, x) in streams.iter().enumerate() {
            for y in &streams[i + 1..] {
                assert_ne!(x, y);
            }
        }
    }

    #[test]
    fn frames_open_only_in_order() {
        let h = handshake([1; 32], 2, 3);
        let mut tx = h.cipher(Direction::Up);
        let mut frames: Vec<(Vec<u8>, [u8; 16])> = (0..3u8)
            .map(|i| {
                let mut data = vec![i; 10];
                let tag = tx.seal(&[i], &mut data);
                (data, tag)
            })
            .collect();
        // Skipping frame 0 (dropped) or repeating it (replayed) fails.
        let mut rx = h.cipher(Direction::Up);
        let (d1, t1) = &mut frames[1];
        assert!(rx.open(&[1], &mut d1.clone(), t1).is_err());
        let (d0, t0) = frames[0].clone();
        assert!(rx.open(&[0], &mut d0.clone(), &t0).is_ok());
        assert!(rx.open(&[0], &mut d0.clone(), &t0).is_err(), "replay");
        // A changed header (the associated data) fails.
        let (d1, t1) = &mut frames[1];
        assert!(rx.open(&[7], &mut d1.clone(), t1).is_err());
        assert!(rx.open(&[1], d1, t1).is_ok());
        assert_eq!(d1, &vec![1u8; 10]);
    }

    #[test]
    fn flag_mismatches_are_explained() {
        let key = FLAG_AUTH | FLAG_ENCRYPT;
        assert_eq!(mismatch(key, key, "server"), None);
        let why = mismatch(FLAG_AUTH, key, "server").unwrap_or_default();
        assert!(why.contains("the server has a key"), "{why}");
        let why = mismatch(0, FLAG_AUTH, "server").unwrap_or_default();
        assert!(why.contains("this end has neither"), "{why}");
    }
}
