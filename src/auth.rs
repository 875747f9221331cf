//! Who may talk to a bsync server, and sealing frames once they have shown it.
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
//! 3. The client sends a `Proof`: the ChaCha20-Poly1305 tag, under the
//!    connection key, of nothing, with the two handshake frames as associated
//!    data. The server checks it before it opens anything; then it answers
//!    with its own proof, which the client checks before it reads anything.
//!
//! With encryption, every later frame is sealed under the connection key.
//! The nonce is the direction (client to server, or back) and a counter the
//! receiver keeps too, so a replayed, reordered or dropped frame fails its
//! tag. The proofs are counter 0 of each direction; frames start at 1.

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

/// One connection's handshake: the derived key and the transcript.
pub struct Handshake {
    key: Key,
    transcript: Vec<u8>,
}

impl Handshake {
    /// Derive the connection key from the secret and both nonces; the
    /// proofs cover the server's `Challenge` (its nonce and flags) and the
    /// client's `Hello` as encoded on the wire.
    pub fn new(secret: &Secret, server_nonce: &[u8; 16], flags: u8, hello: &Hello) -> Handshake {
        let key = aead::derive_subkey(
            &aead::derive_subkey(&secret.key, server_nonce),
            &hello.nonce,
        );
        let mut transcript = Vec::new();
        let challenge = Frame::Challenge {
            nonce: *server_nonce,
            flags,
        };
        proto::encode(&challenge, &mut transcript);
        proto::encode(&Frame::Hello(*hello), &mut transcript);
        Handshake { key, transcript }
    }

    /// The proof the sender in `dir` gives.
    pub fn proof(&self, dir: Direction) -> [u8; TAG_LEN] {
        aead::seal(&self.key, &nonce(dir, 0), &self.transcript, &mut [])
    }

    /// Whether `tag` is the proof of the sender in `dir` (constant time).
    pub fn verify(&self, dir: Direction, tag: &[u8; TAG_LEN]) -> bool {
        aead::open(&self.key, &nonce(dir, 0), &self.transcript, &mut [], tag).is_ok()
    }

    /// The sealing state for frames sent in `dir` (or received from it).
    pub fn cipher(&self, dir: Direction) -> Cipher {
        Cipher {
            key: self.key.clone(),
            dir,
            counter: 1,
        }
    }
}

fn nonce(dir: Direction, counter: u64) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[..4].copy_from_slice(&(dir as u32).to_le_bytes());
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

/// Seals or opens the frames of one direction of one connection, in order.
pub struct Cipher {
    key: Key,
    dir: Direction,
    counter: u64,
}

impl Cipher {
    /// Encrypt `payload` in place with `header` as associated data; returns
    /// the tag to send after it.
    pub fn seal(&mut self, header: &[u8], payload: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = aead::seal(&self.key, &nonce(self.dir, self.counter), header, payload);
        self.counter += 1;
        tag
    }

    /// Check the next frame's tag and decrypt `payload` in place. A frame
    /// that was forged, replayed, reordered or follows a dropped one fails.
    pub fn open(
        &mut self,
        header: &[u8],
        payload: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), aead::OpenError> {
        aead::open(
            &self.key,
            &nonce(self.dir, self.counter),
            header,
            payload,
            tag,
        )?;
        self.counter += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake(secret: [u8; 32], server: u8, client: u8) -> Handshake {
        let hello = Hello {
            session: 7,
            lane: 0,
            lanes: 1,
            download: false,
            block_size: 4096,
            skip: 0,
            source_size: 1 << 20,
            compression: 0,
            flags: FLAG_AUTH | FLAG_ENCRYPT,
            nonce: [client; 16],
        };
        Handshake::new(
            &Secret::new(Key::from_bytes(secret), true),
            &[server; 16],
            hello.flags,
            &hello,
        )
    }

    #[test]
    fn proofs_need_the_secret_and_the_direction() {
        let ours = handshake([1; 32], 2, 3);
        let up = ours.proof(Direction::Up);
        assert!(ours.verify(Direction::Up, &up));
        assert!(!ours.verify(Direction::Down, &up), "a reflected proof");
        assert!(
            !handshake([9; 32], 2, 3).verify(Direction::Up, &up),
            "wrong secret"
        );
        assert!(
            !handshake([1; 32], 4, 3).verify(Direction::Up, &up),
            "old challenge"
        );
        assert!(
            !handshake([1; 32], 2, 4).verify(Direction::Up, &up),
            "other client"
        );
        let mut other = handshake([1; 32], 2, 3);
        other.transcript.push(0);
        assert!(!other.verify(Direction::Up, &up), "altered transcript");
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
