//! The patch file format, as pure encoding and decoding over bytes.
//!
//! A patch says what a target must hold before each change and what it
//! holds after, so that applying it to the wrong target, or twice, is
//! caught before anything is written. All integers are little endian.
//!
//! ```text
//! header   magic "BSYNCPAT"  version u16 (1)  kind u8 (0 forward, 1 undo)  0 u8
//!          source size u64  block size u32  digest grain u32  salt u128
//!          target name: length u16, bytes (may be empty)
//!          check u128 = digest(CHECK_SALT, every header byte before it)
//! record   'R'  offset u64  ranges u32
//!          per range: start u32 (from offset)  length u32  kind u8 (0 zeros, 1 data)
//!                     before u128 = digest(salt, what the target holds there now)
//!                     after u128  = digest(salt, what it will hold)
//!          codec u8 (0 raw, 1 zstd)  raw length u32  stored length u32  data
//!          check u128 = digest(CHECK_SALT, every record byte before it)
//! trailer  'E'  records u64  ranges u64  data bytes u64
//!          result u128 (the digest of the whole result, see `result_hash`)
//!          chain u128 (every record's check, hashed in order)
//! ```
//!
//! Records come in offset order and never overlap. The data of a record is
//! the concatenation of its data ranges (zero ranges carry none). A range's
//! digest is the wire protocol's range digest of its bytes
//! (`crate::proto::range_digest_of`: the page digests under the header's
//! salt, folded), the grain being one range of the two-level digests; the
//! result digest sums, over every block of `block size` bytes of the
//! result, a hash of the block number and the range digests of its grains
//! (`result_hash`), so it can be computed in any block order and equals the
//! session's verification digest.

use crate::digest::{self, Digest};

/// First bytes of every patch.
pub const MAGIC: &[u8; 8] = b"BSYNCPAT";
/// Format version this bsync writes and reads.
pub const VERSION: u16 = 1;
/// Salt of the integrity checks (not of the content digests).
pub const CHECK_SALT: u128 = 0x6273_796e_632d_7061_7463_682d_6368_6b31;
/// Largest record: a block of at most 1 GiB.
pub const MAX_RECORD_DATA: usize = 1 << 30;
/// Longest target name.
pub const MAX_NAME: usize = 4096;
/// Most ranges in one record.
pub const MAX_RANGES: usize = 1 << 20;

const TAG_RECORD: u8 = b'R';
const TAG_END: u8 = b'E';
const CODEC_RAW: u8 = 0;
const CODEC_ZSTD: u8 = 1;

/// What the patch does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Makes a target into the source.
    Forward,
    /// Puts back what a forward patch (or an apply) replaced.
    Undo,
}

/// The header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Forward or undo.
    pub kind: Kind,
    /// Size of the result.
    pub source_size: u64,
    /// Block size of the result digest.
    pub block_size: u32,
    /// Size of the pieces digested within a block.
    pub grain: u32,
    /// Salt of every content digest.
    pub salt: u128,
    /// The target it was made against, as named then (may be empty).
    pub name: Vec<u8>,
}

/// One changed range of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// From the record's offset.
    pub start: u32,
    /// Bytes.
    pub len: u32,
    /// Becomes zeros (no data) rather than data.
    pub zero: bool,
    /// Digest of the target's bytes here before.
    pub before: Digest,
    /// Digest of the bytes here after.
    pub after: Digest,
}

/// A record: changed ranges near one another, and their data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Absolute offset the ranges count from.
    pub offset: u64,
    /// In offset order.
    pub ranges: Vec<Range>,
    /// The data ranges' bytes, concatenated, decompressed.
    pub data: Vec<u8>,
}

/// The trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// Records before it.
    pub records: u64,
    /// Ranges in them.
    pub ranges: u64,
    /// Data bytes (decompressed) in them.
    pub data_bytes: u64,
    /// Digest of the whole result.
    pub result: u128,
    /// Every record's check, hashed in order.
    pub chain: u128,
}

/// Why bytes are not a patch.
#[derive(Debug, PartialEq, Eq)]
pub struct FormatError(pub String);

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad(what: impl Into<String>) -> FormatError {
    FormatError(what.into())
}

/// The hash of one block of the result, from its grains' digests.
pub fn block_hash(index: u64, digests: &[Digest]) -> u128 {
    let mut h = digest::fnv1a128(&index.to_le_bytes());
    for d in digests {
        h = digest::fnv1a128_update(h, &d.to_le_bytes());
    }
    h
}

/// Add a record's check to the chain.
pub fn chain(chain: u128, check: u128) -> u128 {
    digest::fnv1a128_update(chain, &check.to_le_bytes())
}

/// Append the header.
pub fn encode_header(h: &Header, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.push(match h.kind {
        Kind::Forward => 0,
        Kind::Undo => 1,
    });
    out.push(0);
    out.extend_from_slice(&h.source_size.to_le_bytes());
    out.extend_from_slice(&h.block_size.to_le_bytes());
    out.extend_from_slice(&h.grain.to_le_bytes());
    out.extend_from_slice(&h.salt.to_le_bytes());
    let name = &h.name[..h.name.len().min(MAX_NAME)];
    // At most MAX_NAME, which fits.
    out.extend_from_slice(&u16::try_from(name.len()).unwrap_or(0).to_le_bytes());
    out.extend_from_slice(name);
    let check = digest::digest(CHECK_SALT, &out[start..]);
    out.extend_from_slice(&check.to_le_bytes());
}

/// Append a record whose data is already encoded (`codec`, `stored`);
/// returns its check.
pub fn encode_record(
    offset: u64,
    ranges: &[Range],
    raw_len: u32,
    compressed: bool,
    stored: &[u8],
    out: &mut Vec<u8>,
) -> u128 {
    let start = out.len();
    out.push(TAG_RECORD);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(
        &u32::try_from(ranges.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    for r in ranges {
        out.extend_from_slice(&r.start.to_le_bytes());
        out.extend_from_slice(&r.len.to_le_bytes());
        out.push(u8::from(!r.zero));
        out.extend_from_slice(&r.before.to_le_bytes());
        out.extend_from_slice(&r.after.to_le_bytes());
    }
    out.push(if compressed { CODEC_ZSTD } else { CODEC_RAW });
    out.extend_from_slice(&raw_len.to_le_bytes());
    out.extend_from_slice(
        &u32::try_from(stored.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(stored);
    let check = digest::digest(CHECK_SALT, &out[start..]);
    out.extend_from_slice(&check.to_le_bytes());
    check
}

/// Append the trailer.
pub fn encode_trailer(t: &Trailer, out: &mut Vec<u8>) {
    out.push(TAG_END);
    out.extend_from_slice(&t.records.to_le_bytes());
    out.extend_from_slice(&t.ranges.to_le_bytes());
    out.extend_from_slice(&t.data_bytes.to_le_bytes());
    out.extend_from_slice(&t.result.to_le_bytes());
    out.extend_from_slice(&t.chain.to_le_bytes());
}

/// Reads a patch from any byte source, checking as it goes; never trusts
/// a length before it is bounded.
pub struct Decoder<R> {
    r: R,
    /// Check records without decompressing their data (`Record::data` is
    /// then empty): a first pass that only compares digests.
    pub skip_data: bool,
    /// From the header: every range lies below `size`, none is longer
    /// than `block`.
    size: u64,
    block: u32,
    /// Bytes consumed, for messages.
    pub at: u64,
    scratch: Vec<u8>,
}

/// What [`Decoder::next`] found.
#[derive(Debug)]
pub enum Item {
    /// A record, its data decompressed, with its check.
    Record(Record, u128),
    /// The trailer: the end.
    End(Trailer),
}

impl<R: std::io::Read> Decoder<R> {
    /// A decoder at the start of a patch.
    pub fn new(r: R) -> Decoder<R> {
        Decoder {
            r,
            skip_data: false,
            size: 0,
            block: 0,
            at: 0,
            scratch: Vec::new(),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<(), FormatError> {
        let start = self.scratch.len();
        self.scratch.resize(start + n, 0);
        match self.r.read_exact(&mut self.scratch[start..]) {
            Ok(()) => {
                self.at += n as u64;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(bad(format!(
                "truncated: the patch ends inside {what} (after byte {})",
                self.at
            ))),
            Err(e) => Err(bad(format!("read {what}: {}", crate::error::os_words(&e)))),
        }
    }

    fn tail<const N: usize>(&self) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.scratch[self.scratch.len() - N..]);
        a
    }

    fn u8(&mut self, what: &str) -> Result<u8, FormatError> {
        self.take(1, what)?;
        Ok(self.tail::<1>()[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, FormatError> {
        self.take(2, what)?;
        Ok(u16::from_le_bytes(self.tail()))
    }
    fn u32(&mut self, what: &str) -> Result<u32, FormatError> {
        self.take(4, what)?;
        Ok(u32::from_le_bytes(self.tail()))
    }
    fn u64(&mut self, what: &str) -> Result<u64, FormatError> {
        self.take(8, what)?;
        Ok(u64::from_le_bytes(self.tail()))
    }
    fn u128(&mut self, what: &str) -> Result<u128, FormatError> {
        self.take(16, what)?;
        Ok(u128::from_le_bytes(self.tail()))
    }

    /// Check the digest of everything read since the last check.
    fn check(&mut self, what: &str) -> Result<u128, FormatError> {
        let ours = digest::digest(CHECK_SALT, &self.scratch);
        let at = self.at;
        let theirs = self.u128(what)?;
        self.scratch.clear();
        if ours != theirs {
            return Err(bad(format!(
                "corrupted: {what} ending at byte {} fails its check",
                at + 16
            )));
        }
        Ok(ours)
    }

    /// Read and check the header.
    pub fn header(&mut self) -> Result<Header, FormatError> {
        self.scratch.clear();
        self.take(8, "the header")?;
        if &self.scratch[..8] != MAGIC {
            return Err(bad("not a bsync patch (bad magic)"));
        }
        let version = self.u16("the header")?;
        if version != VERSION {
            return Err(bad(format!(
                "patch format version {version}; this bsync reads version {VERSION}"
            )));
        }
        let kind = match self.u8("the header")? {
            0 => Kind::Forward,
            1 => Kind::Undo,
            k => return Err(bad(format!("corrupted header: unknown kind {k}"))),
        };
        self.u8("the header")?;
        let source_size = self.u64("the header")?;
        let block_size = self.u32("the header")?;
        let grain = self.u32("the header")?;
        let salt = self.u128("the header")?;
        let name_len = usize::from(self.u16("the header")?);
        if name_len > MAX_NAME {
            return Err(bad("corrupted header: target name too long"));
        }
        self.take(name_len, "the header")?;
        let name = self.scratch[self.scratch.len() - name_len..].to_vec();
        self.check("the header")?;
        if block_size == 0 || grain == 0 || grain > block_size {
            return Err(bad("corrupted header: block size or grain out of range"));
        }
        self.size = source_size;
        self.block = block_size;
        Ok(Header {
            kind,
            source_size,
            block_size,
            grain,
            salt,
            name,
        })
    }

    /// The next record or the trailer; `dec` decompresses record data.
    pub fn next(&mut self, dec: &mut crate::compress::Decompressor) -> Result<Item, FormatError> {
        self.scratch.clear();
        let start = self.at;
        match self.u8("a record")? {
            TAG_RECORD => {}
            TAG_END => {
                let t = Trailer {
                    records: self.u64("the trailer")?,
                    ranges: self.u64("the trailer")?,
                    data_bytes: self.u64("the trailer")?,
                    result: self.u128("the trailer")?,
                    chain: self.u128("the trailer")?,
                };
                return Ok(Item::End(t));
            }
            t => {
                return Err(bad(format!(
                    "corrupted: unknown record type {t} at byte {start}"
                )));
            }
        }
        let offset = self.u64("a record")?;
        let n = self.u32("a record")? as usize;
        if n == 0 || n > MAX_RANGES {
            return Err(bad(format!(
                "corrupted: record at byte {start} has {n} ranges"
            )));
        }
        let mut ranges = Vec::with_capacity(n.min(4096));
        let mut want = 0usize;
        for _ in 0..n {
            let r = Range {
                start: self.u32("a record")?,
                len: self.u32("a record")?,
                zero: match self.u8("a record")? {
                    0 => true,
                    1 => false,
                    k => {
                        return Err(bad(format!(
                            "corrupted: record at byte {start}: range kind {k}"
                        )));
                    }
                },
                before: self.u128("a record")?,
                after: self.u128("a record")?,
            };
            if !r.zero {
                want = want.saturating_add(r.len as usize);
            }
            ranges.push(r);
        }
        let codec = self.u8("a record")?;
        let raw_len = self.u32("a record")? as usize;
        let stored_len = self.u32("a record")? as usize;
        if raw_len != want || raw_len > MAX_RECORD_DATA {
            return Err(bad(format!(
                "corrupted: record at byte {start}: {raw_len} data bytes, ranges need {want}"
            )));
        }
        if stored_len > zstd_safe::compress_bound(raw_len) + 64 {
            return Err(bad(format!(
                "corrupted: record at byte {start}: {stored_len} stored bytes for {raw_len}"
            )));
        }
        let data_at = self.scratch.len();
        self.take(stored_len, "a record's data")?;
        let mut data = vec![0u8; if self.skip_data { 0 } else { raw_len }];
        match codec {
            CODEC_RAW | CODEC_ZSTD if self.skip_data => {}
            CODEC_RAW if stored_len == raw_len => data.copy_from_slice(&self.scratch[data_at..]),
            CODEC_ZSTD => {
                let stored = &self.scratch[data_at..];
                if let Err(e) = dec.decompress(stored, &mut data) {
                    // The check tells corruption from a bug; report it first.
                    let at = self.at;
                    let ours = digest::digest(CHECK_SALT, &self.scratch);
                    let theirs = self.u128("a record")?;
                    return Err(bad(if ours == theirs {
                        format!("record at byte {start}: {e}")
                    } else {
                        format!(
                            "corrupted: the record ending at byte {} fails its check",
                            at + 16
                        )
                    }));
                }
            }
            _ => {
                return Err(bad(format!(
                    "corrupted: record at byte {start}: codec {codec}"
                )));
            }
        }
        let check = self.check("the record")?;
        // Ranges in order, inside the record, none longer than a block,
        // all below the source's size (so no offset can overflow).
        let mut end = 0u64;
        for r in &ranges {
            if u64::from(r.start) < end || r.len == 0 || r.len > self.block {
                return Err(bad(format!(
                    "corrupted: record at byte {start}: ranges overlap, are empty or too long"
                )));
            }
            end = u64::from(r.start) + u64::from(r.len);
        }
        if offset.checked_add(end).is_none_or(|e| e > self.size) {
            return Err(bad(format!(
                "corrupted: record at byte {start} reaches past the source's size"
            )));
        }
        Ok(Item::Record(
            Record {
                offset,
                ranges,
                data,
            },
            check,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::Decompressor;

    fn sample() -> (Header, Vec<u8>) {
        let h = Header {
            kind: Kind::Forward,
            source_size: 1 << 20,
            block_size: 65536,
            grain: 4096,
            salt: 7,
            name: b"/dev/vdb".to_vec(),
        };
        let mut out = Vec::new();
        encode_header(&h, &mut out);
        let ranges = [
            Range {
                start: 0,
                len: 4,
                zero: false,
                before: 1,
                after: 2,
            },
            Range {
                start: 4096,
                len: 4096,
                zero: true,
                before: 3,
                after: 4,
            },
        ];
        let c = encode_record(8192, &ranges, 4, false, b"abcd", &mut out);
        encode_trailer(
            &Trailer {
                records: 1,
                ranges: 2,
                data_bytes: 4,
                result: 9,
                chain: chain(0, c),
            },
            &mut out,
        );
        (h, out)
    }

    #[test]
    fn round_trip() {
        let (h, bytes) = sample();
        let mut d = Decoder::new(&bytes[..]);
        assert_eq!(d.header().unwrap(), h);
        let mut dec = Decompressor::default();
        let Item::Record(r, _) = d.next(&mut dec).unwrap() else {
            panic!("no record")
        };
        assert_eq!(r.offset, 8192);
        assert_eq!(r.data, b"abcd");
        assert!(matches!(d.next(&mut dec).unwrap(), Item::End(t) if t.records == 1));
    }

    #[test]
    fn every_truncation_and_flipped_byte_is_an_error_not_a_panic() {
        let (_, bytes) = sample();
        let mut dec = Decompressor::default();
        let run = |b: &[u8], dec: &mut Decompressor| -> Result<(), FormatError> {
            let mut d = Decoder::new(b);
            d.header()?;
            loop {
                if let Item::End(t) = d.next(dec)? {
                    if t.records != 1 || t.data_bytes != 4 {
                        return Err(bad("trailer"));
                    }
                    return Ok(());
                }
            }
        };
        for cut in 0..bytes.len() - 1 {
            assert!(run(&bytes[..cut], &mut dec).is_err(), "cut at {cut}");
        }
        // Flipping any byte of the header or record is caught by a check
        // (the trailer is checked against what was read, by the applier).
        let record_end = bytes.len() - 57;
        for i in 0..record_end {
            let mut b = bytes.clone();
            b[i] ^= 0x20;
            assert!(run(&b, &mut dec).is_err(), "flip at {i}");
        }
    }
}
