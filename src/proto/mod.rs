//! The wire protocol `ver0.02`: everything that travels between two bsyncs,
//! defined once.
//!
//! The version, the preamble, the limits both ends enforce, the frame types,
//! the compression codes and the text that marks an authentication failure
//! live here and nowhere else. The codec (`codec.rs`) is sans-I/O: [`encode`]
//! appends a frame to a `Vec<u8>`, [`decode`] reads one from a slice and says
//! how many bytes it used. That keeps the parser a pure function `fuzz/` can
//! hammer. Nothing read off the wire is trusted: every length is checked
//! against the negotiated maximum before anything is allocated or looped
//! over, and malformed input is an error, never a panic. This module imports
//! nothing of bsync but the digest (whose definition it builds on).
//!
//! # Layout
//!
//! A connection starts with each side sending the 14-byte [`PREAMBLE`]
//! `BSYNC ver0.02\n`, so a peer of another version is named, not misparsed.
//! Then frames follow: a 5-byte header — type (`u8`) and payload length
//! (`u32`, little-endian) — and the payload. All integers are little-endian.
//!
//! | type | frame      | direction           | payload |
//! |------|------------|---------------------|---------|
//! | 9    | `Challenge`| server → client     | nonce `[u8; 16]`, flags `u8` (what the server demands) |
//! | 1    | `Hello`    | client → server     | session `u128`, lane `u16`, lanes `u16`, download `u8`, block size `u32`, skip `u64`, source size `u64`, compression `u8`, flags `u8`, nonce `[u8; 16]` |
//! | 10   | `Proof`    | either              | check `[u8; 16]`, tag `[u8; 16]`: the handshake as received, without and with the secret |
//! | 2    | `Welcome`  | server → client     | block size `u32`, source size `u64`, skip `u64`, salt `u128`, lanes `u16` |
//! | 3    | `Error`    | either              | UTF-8 message |
//! | 4    | `Digests`  | destination → source| block `u64`, then one `u128` range digest per range |
//! | 12   | `Refine`   | source → destination| block `u64`, then a bitmap of the ranges that differ, `ceil(ranges / 8)` bytes |
//! | 13   | `Pages`    | destination → source| block `u64`, then one `u128` page digest per page of the asked ranges |
//! | 5    | `Block`    | source → destination| block `u64`, flags `u8` (bit 0: compressed), raw length `u32`, change count `u32`, changes, data |
//! | 6    | `Ack`      | destination → source| block `u64`: written |
//! | 7    | `Complete` | destination → source| blocks `u64`, verification digest `u128`: blocks `skip..blocks` written and flushed |
//! | 8    | `Bye`      | source → destination| verification digest `u128`: the source's verdict, equal to the destination's; in a dry session then a [`Tally`]: changed blocks `u64`, zero blocks `u64`, data bytes `u64`, zero bytes `u64` |
//! | 11   | `Probe`    | either, before `Hello` | any bytes, at most [`HANDSHAKE_MAX`] |
//! | 14   | `Notice`   | either, after `Welcome` | UTF-8 warning for the other end to show its user, at most [`NOTICE_MAX`] bytes |
//!
//! A connection opens with the server's `Challenge` (sent with its
//! preamble, before the client's arrives, so it costs no round trip), the
//! client's `Hello` and `Proof`,
//! the server's `Proof`, then the `Welcome`. The proofs cover the
//! `Challenge` and the `Hello` as each end saw them, so a bit changed in
//! transit is caught before the server opens, sizes or writes anything.
//! Flags: bit 0 = authenticated ([`FLAG_AUTH`]), bit 1 = encrypted
//! ([`FLAG_ENCRYPT`]).
//!
//! Every frame after the proofs, the `Welcome` first, key or no key, carries
//! a 16-byte tag after its payload; the length in the header counts it and
//! the header is the associated data. With encryption the payload is
//! ciphertext; without, it travels in clear under a tag keyed from both
//! handshake nonces (see `crate::auth`) that covers the header and the
//! whole payload except a `Block`'s data ([`tagged_len`]): the destination
//! checks that data against the source's digests, which the tag covers. A
//! tag that fails — a bit changed, a frame replayed, reordered, dropped or
//! cut — is a protocol error.
//!
//! # The end of a session
//!
//! The destination acknowledges blocks cumulatively (`Ack { n }`: every
//! block up to `n` is written) and only blocks the source sent: an `Ack` or a
//! `Complete` covering a block the source has not sent is a protocol error,
//! never a reason to reconnect. Once every block is written and flushed the
//! destination sends `Complete` with the block count and its verification
//! digest on every lane; the source compares the count and the digest with
//! its own and answers `Bye` carrying its digest on every lane, or an
//! `Error` naming both digests. The destination reports success only after a
//! `Bye` whose digest equals its own: a lane that closes without one fails
//! the run on both ends.
//!
//! In a dry session ([`FLAG_DRY`]: `--compare`, `--write-patch`) the
//! destination writes nothing and acknowledges empty `Block`s, so only the
//! source knows what differs; its `Bye` then carries that count, a
//! [`Tally`], so that the destination's summary can say what a real run
//! would change. A `Bye` without one (16 bytes) is still valid: it is what
//! a source made before the tally existed sends, and its destination says
//! it was not told. A destination made before then refuses the longer
//! `Bye` ("trailing bytes") after the source has its result; a session
//! that writes never carries a tally, so those are unaffected.
//!
//! The one `Notice` with a meaning for its receiver: a dry session's
//! destination whose size differs from the source's says so on lane 0
//! before its first `Digests`, in a sentence that ends `is N bytes, the
//! source M: a sync would truncate it` (or `grow it`; sizes in decimal,
//! `crate::summary::resized` makes it, `parse_resized` reads it). Its
//! blocks may all agree; a `--compare` source counts the other size as a
//! difference (exit 3). No frame changed for it: a source made before
//! this reading shows the sentence as a warning and judges blocks only,
//! as does any source whose destination is older than the sentence (which
//! then says nothing of sizes).
//!
//! `-auto` measures the link on the first connection before it says
//! `Hello`: after the server's `Challenge` the client may send `Probe`
//! frames. The server reads and discards them (at most [`PROBE_LIMIT`]
//! bytes in all per connection); to an empty one it answers at once with an
//! empty `Probe`, so an empty `Probe` is a ping and a burst of full ones
//! followed by an empty one times the link's throughput. Then the `Hello`
//! follows as on any connection. A `Probe` at any other point is an error.
//!
//! A change is a page number (`u32`, within the block) and a kind (`u8`):
//! 0 = zero (no data), 1 = data, followed by the source's digest of that
//! page (`u128`), which the destination checks after decompression; 2 =
//! partly unreadable (`--rescue`), followed by the digest as for data and
//! a mask (`u64`): bit `i` set means bytes `64 i..64 (i + 1)` of the page
//! could not be read at the source. Such a page's data travels as for a
//! data change, zeros where unreadable; the destination writes only the
//! bytes that were read and keeps what it had in the others, and both
//! ends fold the unreadable ranges into the verification digest
//! ([`unreadable_hash`]), so "both ends agree" never covers bytes nobody
//! read. The data of all data and partly unreadable changes, in order, is
//! the (possibly zstd-compressed) tail.
//!
//! # Two-level digests
//!
//! A block is compared per [`PAGE`] (4 KiB, or the block size if smaller):
//! only the pages that differ travel. Sending every page digest would cost
//! 16 bytes per 4 KiB (0.39 % of identical data), so digests go in two
//! levels. A block's pages are grouped in ranges of [`RANGE_PAGES`] pages
//! (64 KiB; the last range of a block may be short). A page digest is the
//! block digest (`crate::digest`) of the page under the session salt; a
//! range digest is plain FNV-1a 128 over the little-endian page digests of
//! its pages ([`range_digests`]), so each side hashes its data once.
//!
//! 1. The destination reads block N and sends `Digests`: its range digests
//!    (16 bytes per 64 KiB: 0.024 % of identical data).
//! 2. The source compares them with its own. When all match it sends
//!    `Block` N with no changes. Otherwise it sends `Refine` N, a bitmap of
//!    the ranges that differ (bit `r % 8` of byte `r / 8` for range `r`),
//!    sets the block aside, and goes on with block N + 1: the refinement
//!    never holds up the blocks behind it.
//! 3. The destination answers `Pages` N: the page digests of the asked
//!    ranges, in page order, with nothing else (the source knows what it
//!    asked).
//! 4. The source sends `Block` N with the pages that differ.
//! 5. The destination checks every data page against the source's digest,
//!    writes, and acknowledges N (`Ack`, cumulative).
//!
//! Both `Digests` and `Pages` travel under the destination's window of
//! blocks in flight, so a changed block costing one more round trip is
//! hidden as long as the window covers it (measured in
//! `benches/BENCHMARKS.md`). After a lost connection the destination sends
//! `Digests` again for every block of the lane that it still waits for;
//! the source answers each as if it were new (a second `Refine`, or the
//! `Block` again).
//!
//! Why 64 KiB ranges: a range digest costs 16 bytes per range whether the
//! range differs or not, and a differing range costs 16 bytes per page. At
//! 64 KiB identical data costs 0.024 %; with 5 % of pages changed uniformly
//! at random 56 % of ranges differ and the digests of both levels come to
//! about 2.6 MB per GiB, against 51 MiB of changed data; 32 KiB ranges would
//! save 0.6 MB per GiB there but double the cost of identical data, and
//! 16 KiB ones would reach the 0.1 % bound.

use std::fmt;
use std::ops::RangeInclusive;

use crate::digest::Digest;

mod codec;

use codec::read_change;

/// Whether a frame of type `kind` is a [`Frame::Notice`], from its header
/// alone.
pub fn is_notice(kind: u8) -> bool {
    kind == NOTICE
}

pub use codec::{
    BlockBuilder, decode, decode_header, encode, encode_digests, encode_pages, read_digests,
    tagged_len,
};

/// The protocol version spoken on the wire.
pub const PROTOCOL_VERSION: &str = "ver0.02";
/// The first bytes each side sends.
pub const PREAMBLE: &[u8; 14] = b"BSYNC ver0.02\n";
/// What every bsync preamble starts with, whatever its version.
pub const PREAMBLE_MAGIC: &[u8] = b"BSYNC ver";
/// Frame header: type and length.
pub const HEADER_LEN: usize = 5;
/// Largest frame payload before the session parameters are agreed.
pub const HANDSHAKE_MAX: usize = 4096;
/// Most `Probe` payload bytes a server takes on one connection.
pub const PROBE_LIMIT: usize = 64 << 20;
/// Largest block size a session may use: every block is held in memory
/// several times on both ends.
pub const MAX_BLOCK_SIZE: usize = 1024 * 1024 * 1024;
/// Most lanes (connections) in one session.
pub const MAX_LANES: u16 = 64;

/// `n` as a block size, if a session may use it: 1 byte to
/// [`MAX_BLOCK_SIZE`]. The one check of the block size's range, for `-b`,
/// a `Hello`, a `Welcome` and an open request alike.
pub fn block_size(n: u64) -> Option<usize> {
    usize::try_from(n)
        .ok()
        .filter(|b| (1..=MAX_BLOCK_SIZE).contains(b))
}

/// How an `Error` frame about authentication starts, so that the other end
/// reports it as such.
pub const AUTH_FAILED: &str = "authentication failed: ";

const HELLO: u8 = 1;
const WELCOME: u8 = 2;
const ERROR: u8 = 3;
const DIGESTS: u8 = 4;
const BLOCK: u8 = 5;
const ACK: u8 = 6;
const COMPLETE: u8 = 7;
const BYE: u8 = 8;
const CHALLENGE: u8 = 9;
const PROOF: u8 = 10;
const PROBE: u8 = 11;
const REFINE: u8 = 12;
const PAGES: u8 = 13;
const NOTICE: u8 = 14;
/// Every frame type; anything else is refused at the header.
pub const FRAME_TYPES: RangeInclusive<u8> = HELLO..=NOTICE;
/// Longest `Notice` text.
pub const NOTICE_MAX: usize = 1024;

/// The change grain: blocks are compared, and changes travel, per page of
/// this size (or of the block size, if smaller).
pub const PAGE: usize = 4096;
/// Pages per range: the destination's first-level digests cover this many
/// pages each.
pub const RANGE_PAGES: usize = 16;

/// `Hello`/`Challenge` flag: the session proves knowledge of a shared secret.
pub const FLAG_AUTH: u8 = 1;
/// `Hello`/`Challenge` flag: frames after the handshake are sealed.
pub const FLAG_ENCRYPT: u8 = 2;
/// `Hello` flag: a dry run (`--compare`, `--write-patch`): the destination
/// is opened read-only, never resized, and the source sends no data.
pub const FLAG_DRY: u8 = 4;
/// The flags that say what secret a peer holds.
pub const SECRET_FLAGS: u8 = FLAG_AUTH | FLAG_ENCRYPT;
/// Length of the handshake nonces and proofs.
pub const NONCE_LEN: usize = 16;

/// Bytes per change without a digest.
const CHANGE_LEN: usize = 5;
/// Bytes of a digest on the wire.
pub const DIGEST_LEN: usize = 16;
/// Change kinds on the wire.
const CHANGE_ZERO: u8 = 0;
const CHANGE_DATA: u8 = 1;
const CHANGE_PARTIAL: u8 = 2;
/// Bytes of a partly unreadable page's mask on the wire.
const UNREADABLE_MASK_LEN: usize = 8;
/// Bytes of a partly unreadable page's change record.
const PARTIAL_CHANGE_LEN: usize = CHANGE_LEN + DIGEST_LEN + UNREADABLE_MASK_LEN;
/// The unit of [`ChangeKind::Partial`]'s mask: bit `i` covers bytes
/// `i * UNREADABLE_UNIT..(i + 1) * UNREADABLE_UNIT` of the page.
pub const UNREADABLE_UNIT: usize = PAGE / 64;
/// `Block` flags bit: the data is zstd-compressed.
const BLOCK_COMPRESSED: u8 = 1;

/// Compression codes of [`Hello::compression`]: none, or the `-L` levels.
pub mod compression {
    /// No compression (`-n`).
    pub const NONE: u8 = 0;
    /// `-L fast`.
    pub const FAST: u8 = 1;
    /// `-L default`.
    pub const DEFAULT: u8 = 2;
    /// `-L better`.
    pub const BETTER: u8 = 3;
    /// `-L best`.
    pub const BEST: u8 = 4;
}

/// The client's opening: who it is and what it wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Random per client run; joins parallel and re-established connections.
    pub session: u128,
    /// This connection's lane: it carries blocks `index % lanes == lane`.
    pub lane: u16,
    /// Number of lanes (connections) in the session.
    pub lanes: u16,
    /// The server is the source.
    pub download: bool,
    /// Block size the client asks for (the source's wins).
    pub block_size: u32,
    /// Blocks to skip.
    pub skip: u64,
    /// Source size when the client is the source, else 0.
    pub source_size: u64,
    /// 0 = none, 1..=4 = `-L` fast, default, better, best.
    pub compression: u8,
    /// [`FLAG_AUTH`] and [`FLAG_ENCRYPT`]: what the client holds.
    pub flags: u8,
    /// Fresh random per connection; with the server's challenge it derives
    /// the connection's keys.
    pub nonce: [u8; NONCE_LEN],
}

/// The server's answer: the agreed session parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// Agreed block size.
    pub block_size: u32,
    /// Source size.
    pub source_size: u64,
    /// Blocks to skip.
    pub skip: u64,
    /// Per-session digest salt.
    pub salt: u128,
    /// Number of lanes.
    pub lanes: u16,
}

/// What a dry session's source found different, for the destination,
/// which wrote nothing and would otherwise not know: the counts of the
/// source's own summary (`--compare`, `--write-patch`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Blocks that differ and hold data at the source.
    pub changed: u64,
    /// Blocks that differ only where the source holds zeros.
    pub zero: u64,
    /// Bytes of data in the ranges that differ.
    pub data_bytes: u64,
    /// Bytes of the ranges that differ where the source holds zeros.
    pub zero_bytes: u64,
}

impl Tally {
    /// Blocks that differ.
    pub fn blocks(&self) -> u64 {
        self.changed.saturating_add(self.zero)
    }

    /// Bytes that differ, data and zeros.
    pub fn bytes(&self) -> u64 {
        self.data_bytes.saturating_add(self.zero_bytes)
    }
}

/// Kind of a page change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// The page is all zeros at the source.
    Zero,
    /// The page's data follows; the digest is the source's.
    Data(Digest),
    /// `--rescue`: parts of the page could not be read at the source. Its
    /// data follows, zeros where unreadable, and the digest covers it as
    /// sent; the destination writes only the parts that were read.
    Partial {
        /// The source's digest of the page as sent.
        digest: Digest,
        /// Bit `i` set: bytes `i * UNREADABLE_UNIT..(i + 1) *
        /// UNREADABLE_UNIT` of the page were not read (never 0).
        unreadable: u64,
    },
}

/// One changed page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// Page number within the block.
    pub page: u32,
    /// What it became.
    pub kind: ChangeKind,
}

/// The changes of a [`BlockFrame`], validated, read lazily.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Changes<'a> {
    count: usize,
    bytes: &'a [u8],
}

impl<'a> Changes<'a> {
    /// Number of changes.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when the block is unchanged.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The changes in order.
    pub fn iter(&self) -> impl Iterator<Item = Change> + 'a {
        let mut rest = self.bytes;
        (0..self.count).map(move |_| {
            // Validated by decode: every change is complete.
            let (change, used) = read_change(rest).unwrap_or((
                Change {
                    page: 0,
                    kind: ChangeKind::Zero,
                },
                rest.len(),
            ));
            rest = &rest[used..];
            change
        })
    }
}

/// A block as the source sends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockFrame<'a> {
    /// Block number.
    pub index: u64,
    /// The data is zstd-compressed.
    pub compressed: bool,
    /// Length of the data once decompressed.
    pub raw_len: u32,
    /// Changed pages; empty means the block is the same.
    pub changes: Changes<'a>,
    /// The data of the data changes, concatenated (maybe compressed).
    pub data: &'a [u8],
}

/// One frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`Welcome`].
    Welcome(Welcome),
    /// The peer gives up, and says why.
    Error(&'a str),
    /// The destination's range digests of one block.
    Digests {
        /// Block number.
        index: u64,
        /// `u128` little-endian digests, 16 bytes each.
        digests: &'a [u8],
    },
    /// The source asks for the page digests of the ranges that differ.
    Refine {
        /// Block number.
        index: u64,
        /// Bit `r % 8` of byte `r / 8` set: range `r` differs.
        ranges: &'a [u8],
    },
    /// The destination's page digests of the ranges asked for, in order.
    Pages {
        /// Block number.
        index: u64,
        /// `u128` little-endian digests, 16 bytes each.
        digests: &'a [u8],
    },
    /// See [`BlockFrame`].
    Block(BlockFrame<'a>),
    /// The destination wrote the block.
    Ack {
        /// Block number.
        index: u64,
    },
    /// The destination wrote and flushed everything.
    Complete {
        /// The session's block count (skipped blocks included): the
        /// blocks this completion covers are `skip..blocks`.
        blocks: u64,
        /// Digest over the final content, for both ends to print.
        verify: u128,
    },
    /// The session is over: the source checked the destination's
    /// verification digest and found it equal to its own.
    Bye {
        /// The source's verification digest.
        verify: u128,
        /// A dry session's count of what differs; `None` in a session
        /// that writes (and from a source older than the tally).
        tally: Option<Tally>,
    },
    /// The server's first frame on every connection.
    Challenge {
        /// Fresh random per connection.
        nonce: [u8; NONCE_LEN],
        /// [`FLAG_AUTH`] and [`FLAG_ENCRYPT`]: what the server demands.
        flags: u8,
    },
    /// Proof of the handshake as received, and of the shared secret.
    Proof {
        /// The tag under the key without a secret: the handshake arrived
        /// intact.
        check: [u8; NONCE_LEN],
        /// The tag under the connection key: the sender holds the secret.
        tag: [u8; NONCE_LEN],
    },
    /// Link measurement before the `Hello` (`-auto`): discarded; an empty
    /// one asks for an empty one back.
    Probe(&'a [u8]),
    /// A warning about this end for the other end's user (a source device
    /// mounted read-write, say); the session goes on.
    Notice(&'a str),
}

impl Frame<'_> {
    /// The frame's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "Hello",
            Frame::Welcome(_) => "Welcome",
            Frame::Error(_) => "Error",
            Frame::Digests { .. } => "Digests",
            Frame::Refine { .. } => "Refine",
            Frame::Pages { .. } => "Pages",
            Frame::Block(_) => "Block",
            Frame::Ack { .. } => "Ack",
            Frame::Complete { .. } => "Complete",
            Frame::Bye { .. } => "Bye",
            Frame::Challenge { .. } => "Challenge",
            Frame::Proof { .. } => "Proof",
            Frame::Probe(_) => "Probe",
            Frame::Notice(_) => "Notice",
        }
    }
}

/// Why bytes are not a valid frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtoError {
    /// The length field exceeds the negotiated maximum.
    TooLarge {
        /// Announced length.
        len: usize,
        /// Maximum allowed.
        max: usize,
    },
    /// Unknown frame type.
    UnknownType(u8),
    /// The payload does not match its type's layout.
    Malformed {
        /// Which frame.
        frame: &'static str,
        /// What is wrong.
        what: &'static str,
    },
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the maximum of {max}")
            }
            ProtoError::UnknownType(t) => write!(f, "unknown frame type {t}"),
            ProtoError::Malformed { frame, what } => write!(f, "malformed {frame} frame: {what}"),
        }
    }
}

impl std::error::Error for ProtoError {}

/// Largest frame payload for a session with this block size: a block of
/// raw data plus every page's change record, with room to spare (the
/// digest frames are smaller).
pub fn max_payload(block_size: usize) -> usize {
    block_size + pages(block_size, page_size(block_size)) * PARTIAL_CHANGE_LEN + 64
}

/// The mask of [`ChangeKind::Partial`] for the page `start..end` of a
/// block whose unreadable ranges (`(start, len)`, sorted) are `unreadable`:
/// every unit that holds an unreadable byte. 0 when the page was read whole.
pub fn unreadable_mask(unreadable: &[(usize, usize)], start: usize, end: usize) -> u64 {
    let mut mask = 0u64;
    for &(s, n) in unreadable {
        let (lo, hi) = (s.max(start), (s + n).min(end));
        if lo >= hi {
            continue;
        }
        for unit in (lo - start) / UNREADABLE_UNIT..(hi - start).div_ceil(UNREADABLE_UNIT) {
            mask |= 1u64 << unit.min(63);
        }
    }
    mask
}

/// The unreadable ranges (`(start, len)` within the block) a mask says of
/// the page at `start`, `len` bytes long, appended to `out`, joined with
/// the last one when they touch.
pub fn unmask(mask: u64, start: usize, len: usize, out: &mut Vec<(usize, usize)>) {
    for unit in (0..64).filter(|u| mask & (1u64 << u) != 0) {
        let lo = unit * UNREADABLE_UNIT;
        if lo >= len {
            break;
        }
        let n = UNREADABLE_UNIT.min(len - lo);
        match out.last_mut() {
            Some(last) if last.0 + last.1 == start + lo => last.1 += n,
            _ => out.push((start + lo, n)),
        }
    }
}

/// What block `index`'s unreadable ranges add to the verification digest
/// on both ends: 0 for none.
pub fn unreadable_hash(index: u64, unreadable: &[(usize, usize)]) -> u128 {
    if unreadable.is_empty() {
        return 0;
    }
    let mut h = crate::digest::fnv1a128(&index.to_le_bytes());
    for &(s, n) in unreadable {
        h = crate::digest::fnv1a128_update(h, &(s as u64).to_le_bytes());
        h = crate::digest::fnv1a128_update(h, &(n as u64).to_le_bytes());
    }
    h
}

/// The page size of a session: [`PAGE`], or the block size if smaller.
pub fn page_size(block_size: usize) -> usize {
    PAGE.min(block_size).max(1)
}

/// Pages in a block of `len` bytes (the last one may be short).
pub fn pages(len: usize, page: usize) -> usize {
    len.div_ceil(page.max(1))
}

/// Ranges over `pages` pages (the last one may be short).
pub fn ranges(pages: usize) -> usize {
    pages.div_ceil(RANGE_PAGES)
}

/// Bytes of a `Refine` bitmap over `ranges` ranges.
pub fn bitmap_len(ranges: usize) -> usize {
    ranges.div_ceil(8)
}

/// Whether range `r` is marked in a `Refine` bitmap.
pub fn marked(bitmap: &[u8], r: usize) -> bool {
    bitmap.get(r / 8).is_some_and(|b| b & (1 << (r % 8)) != 0)
}

/// Pages `start..end` of range `r` in a block of `pages` pages.
pub fn range_pages(r: usize, pages: usize) -> std::ops::Range<usize> {
    let start = r * RANGE_PAGES;
    start.min(pages)..(start + RANGE_PAGES).min(pages)
}

/// Clears `out` and pushes the range digest of every range, from the page
/// digests of a block: FNV-1a 128 over each range's page digests, 16 bytes
/// little-endian each (see the module docs).
pub fn range_digests(pages: &[Digest], out: &mut Vec<Digest>) {
    out.clear();
    out.extend(pages.chunks(RANGE_PAGES).map(range_digest));
}

/// The range digest of one range's page digests.
pub fn range_digest(pages: &[Digest]) -> Digest {
    pages.iter().fold(crate::digest::fnv1a128(&[]), |h, d| {
        crate::digest::fnv1a128_update(h, &d.to_le_bytes())
    })
}

/// The range digest of `data` (at most one range) cut in pages of `page`
/// bytes under `salt`: what `Digests` says of those bytes. For code that
/// holds the bytes of a range rather than its page digests (patch files).
pub fn range_digest_of(salt: u128, data: &[u8], page: usize) -> Digest {
    let mut pages = Vec::new();
    crate::digest::digest_pages(salt, data, page, &mut pages);
    range_digest(&pages)
}

/// The range digests of a block's `data` cut in pages of `page` bytes.
pub fn digest_ranges(salt: u128, data: &[u8], page: usize, out: &mut Vec<Digest>) {
    let mut pages = Vec::new();
    crate::digest::digest_pages(salt, data, page, &mut pages);
    range_digests(&pages, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_masks_cover_whole_units_and_come_back() {
        // Sectors 1 and 7 of page 1 (4096..8192) of a block.
        let bad = [(4096 + 512, 512), (4096 + 3584, 512)];
        assert_eq!(unreadable_mask(&bad, 0, 4096), 0);
        let mask = unreadable_mask(&bad, 4096, 8192);
        assert_eq!(mask, 0xff00_0000_0000_ff00);
        let mut back = Vec::new();
        unmask(mask, 4096, 4096, &mut back);
        assert_eq!(back, bad);
        // A short last page: units past its end are not there.
        let mut short = Vec::new();
        unmask(u64::MAX, 0, 100, &mut short);
        assert_eq!(short, [(0, 100)]);
        assert_eq!(unreadable_hash(3, &[]), 0);
        assert_ne!(unreadable_hash(3, &bad), unreadable_hash(4, &bad));
    }
}
