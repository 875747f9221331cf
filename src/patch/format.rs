//! The patch file format, as pure encoding and decoding over bytes.
//!
//! A patch says what a target must hold before each change and what it
//! holds after, so that applying it to the wrong target, or twice, is
//! caught before anything is written. All integers are little endian.
//!
//! ```text
//! header   magic "BSYNCPAT"  version u16 (2, or 3 with unknown ranges)
//!          kind u8 (0 forward, 1 undo)
//!          diffsize u8 (0 strict, 1 resize, 2 minsize: bdsync's client form)
//!          source size u64  block size u32  digest grain u32  salt u128
//!          whole u8 (1: the two digests below are known, 0: both are 0)
//!          original u128 (the digest of the whole target the patch was
//!                         made from, as `result_hash` defines it)
//!          result u128 (the same of the whole result, as in the trailer;
//!                       in an undo patch written while applying, whose
//!                       whole flag is 0, the digest of the whole target
//!                       before that apply, or 0 where unknown)
//!          target name: length u16, bytes (an absolute path; may be empty)
//!          check u128 = digest(CHECK_SALT, every header byte before it)
//! record   'R'  offset u64  ranges u32
//!          per range: start u32 (from offset)  length u32
//!                     kind u8 (0 zeros, 1 data, 2 partly unknown: version 3)
//!                     before u128 = digest(salt, what the target holds there now)
//!                     after u128  = digest(salt, what it will hold)
//!          only if a range is of kind 2: unknown spans u32, then per span
//!                     start u32 (from offset)  length u32
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
//!
//! The whole-target digests let an applier establish, before its first
//! write, that the whole target is the image the patch was made from:
//! record checks alone cannot see a wrong target whose bytes agree where
//! the records lie. Version 1 lacked them and is refused.
//!
//! Version 3 adds unknown spans (`--write-patch -rescue`: source sectors
//! that could not be read). A range of kind 2 carries its data with zeros
//! in its unknown spans, which the applier never writes: the target keeps
//! its bytes there. Its `after` digest, and the result digest, are of the
//! content with every unknown span read as zeros, so they are known to the
//! maker, which never saw the target's bytes there; `before` is of the
//! target as it is. A patch without unknown spans is written as version 2,
//! byte for byte as before, and version 2 patches apply as they did.
//!
//! An undo patch written while applying (`--patch --remdata=FILE`) puts
//! the digest of the whole target before that apply in the header's
//! result slot, its whole flag staying 0 (older versions ignore the
//! slot then, and read these undo patches as before): it is what undoing
//! gives, so that an undo patch cut short, its apply killed, can still be
//! applied up to its last whole record and its result checked.

use crate::digest::{self, Digest};

/// First bytes of every patch.
pub const MAGIC: &[u8; 8] = b"BSYNCPAT";
/// Format version this bsync writes and reads.
pub const VERSION: u16 = 2;
/// The version of a patch with unknown spans (kind 2 ranges).
pub const VERSION_UNKNOWN: u16 = 3;
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
const KIND_ZERO: u8 = 0;
const KIND_DATA: u8 = 1;
const KIND_PARTIAL: u8 = 2;

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
    /// The target it was made against: an absolute path where it was
    /// known (may be empty).
    pub name: Vec<u8>,
    /// `--diffsize` as given to bdsync's client form: how the patch is
    /// applied unless `--patch` is given another.
    pub diffsize: DiffSize,
    /// The digests of the whole original target and of the whole result
    /// (`None` for undo patches, whose target may be partly patched).
    pub whole: Option<Whole>,
    /// Records may hold unknown spans (version 3).
    pub unknown: bool,
    /// An undo patch written while applying: the digest of the whole
    /// target before that apply, what undoing gives (in the result slot of
    /// the whole digests, which it has not).
    pub undo_result: Option<u128>,
}

/// The digests of a whole target before and after a patch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Whole {
    /// What the target the patch was made from digests to.
    pub original: u128,
    /// What the result digests to.
    pub result: u128,
}

/// How a patch treats a target whose size differs from the source's
/// (bdsync's `--diffsize`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DiffSize {
    /// Sizes must be equal.
    #[default]
    Strict,
    /// A regular-file target is grown or truncated to the source's size.
    Resize,
    /// The target may be larger; it is left alone past the source's end.
    MinSize,
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
    /// Unknown spans (start from `offset`, length), in order, each inside a
    /// data range: the source's bytes there are not known (zeros in
    /// `data`), and the target keeps its own.
    pub unknown: Vec<(u32, u32)>,
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
    let version = if h.unknown { VERSION_UNKNOWN } else { VERSION };
    out.extend_from_slice(&version.to_le_bytes());
    out.push(match h.kind {
        Kind::Forward => 0,
        Kind::Undo => 1,
    });
    out.push(match h.diffsize {
        DiffSize::Strict => 0,
        DiffSize::Resize => 1,
        DiffSize::MinSize => 2,
    });
    out.extend_from_slice(&h.source_size.to_le_bytes());
    out.extend_from_slice(&h.block_size.to_le_bytes());
    out.extend_from_slice(&h.grain.to_le_bytes());
    out.extend_from_slice(&h.salt.to_le_bytes());
    let whole = h.whole.unwrap_or(Whole {
        original: 0,
        result: h.undo_result.unwrap_or(0),
    });
    out.push(u8::from(h.whole.is_some()));
    out.extend_from_slice(&whole.original.to_le_bytes());
    out.extend_from_slice(&whole.result.to_le_bytes());
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
    let data = Stored {
        raw_len,
        compressed,
        bytes: stored,
    };
    encode_record_unknown(offset, ranges, &[], &data, out)
}

/// A record's data as stored: its length before compression, and whether
/// it is compressed.
pub struct Stored<'a> {
    /// Bytes before compression.
    pub raw_len: u32,
    /// zstd, or raw.
    pub compressed: bool,
    /// What is stored.
    pub bytes: &'a [u8],
}

/// [`encode_record`] with `unknown` spans (start from `offset`, length,
/// in order, each inside a data range; a patch of version 3).
pub fn encode_record_unknown(
    offset: u64,
    ranges: &[Range],
    unknown: &[(u32, u32)],
    data: &Stored<'_>,
    out: &mut Vec<u8>,
) -> u128 {
    let (raw_len, compressed, stored) = (data.raw_len, data.compressed, data.bytes);
    let within = |r: &Range| super::spans::touch(unknown, r.start, r.len);
    let start = out.len();
    out.push(TAG_RECORD);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&u32_le(ranges.len()));
    for r in ranges {
        out.extend_from_slice(&r.start.to_le_bytes());
        out.extend_from_slice(&r.len.to_le_bytes());
        out.push(match (r.zero, within(r)) {
            (true, _) => KIND_ZERO,
            (false, false) => KIND_DATA,
            (false, true) => KIND_PARTIAL,
        });
        out.extend_from_slice(&r.before.to_le_bytes());
        out.extend_from_slice(&r.after.to_le_bytes());
    }
    if !unknown.is_empty() {
        out.extend_from_slice(&u32_le(unknown.len()));
        for &(s, n) in unknown {
            out.extend_from_slice(&s.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
    out.push(if compressed { CODEC_ZSTD } else { CODEC_RAW });
    out.extend_from_slice(&raw_len.to_le_bytes());
    out.extend_from_slice(&u32_le(stored.len()));
    out.extend_from_slice(stored);
    let check = digest::digest(CHECK_SALT, &out[start..]);
    out.extend_from_slice(&check.to_le_bytes());
    check
}

/// A count as a little-endian u32 (every count of a patch is bounded far
/// below it: ranges, spans and the stored bytes of a block).
fn u32_le(n: usize) -> [u8; 4] {
    u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes()
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
    /// From the header: records may hold unknown spans (version 3).
    unknown: bool,
    /// Bytes consumed, for messages.
    pub at: u64,
    /// The bytes ended early: the last error was a truncation.
    pub cut: bool,
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
            unknown: false,
            at: 0,
            cut: false,
            scratch: Vec::new(),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<(), FormatError> {
        let start = self.scratch.len();
        self.scratch.resize(start + n, 0);
        let got = self.r.read_exact(&mut self.scratch[start..]);
        self.cut = matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof);
        match got {
            Ok(()) => {
                self.at += n as u64;
                Ok(())
            }
            Err(_) if self.cut => Err(bad(format!(
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
        if version == 1 {
            return Err(bad(
                "patch format version 1, made by an older bsync: it cannot prove that the \
                 whole target is the image it was made from, so this bsync (version 2) \
                 refuses it; make the patch again",
            ));
        }
        if version != VERSION && version != VERSION_UNKNOWN {
            return Err(bad(format!(
                "patch format version {version}; this bsync reads versions {VERSION} and \
                 {VERSION_UNKNOWN}"
            )));
        }
        let kind = match self.u8("the header")? {
            0 => Kind::Forward,
            1 => Kind::Undo,
            k => return Err(bad(format!("corrupted header: unknown kind {k}"))),
        };
        let diffsize = match self.u8("the header")? {
            0 => DiffSize::Strict,
            1 => DiffSize::Resize,
            2 => DiffSize::MinSize,
            d => return Err(bad(format!("corrupted header: unknown diffsize {d}"))),
        };
        let source_size = self.u64("the header")?;
        let block_size = self.u32("the header")?;
        let grain = self.u32("the header")?;
        let salt = self.u128("the header")?;
        let known = self.u8("the header")?;
        let original = self.u128("the header")?;
        let result = self.u128("the header")?;
        let whole = match known {
            0 => None,
            1 => Some(Whole { original, result }),
            w => return Err(bad(format!("corrupted header: unknown whole flag {w}"))),
        };
        let name_len = usize::from(self.u16("the header")?);
        if name_len > MAX_NAME {
            return Err(bad("corrupted header: target name too long"));
        }
        self.take(name_len, "the header")?;
        let name = self.scratch[self.scratch.len() - name_len..].to_vec();
        self.check("the header")?;
        // A grain may exceed a small block: the block is then one grain.
        if block_size == 0 || grain == 0 {
            return Err(bad("corrupted header: block size or grain out of range"));
        }
        self.size = source_size;
        self.block = block_size;
        self.unknown = version == VERSION_UNKNOWN;
        let undo_result = (kind == Kind::Undo && whole.is_none() && result != 0).then_some(result);
        Ok(Header {
            undo_result,
            unknown: self.unknown,
            kind,
            source_size,
            block_size,
            grain,
            salt,
            name,
            diffsize,
            whole,
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
        let mut partial = Vec::new();
        let mut want = 0usize;
        for i in 0..n {
            let r_start = self.u32("a record")?;
            let len = self.u32("a record")?;
            let zero = match self.u8("a record")? {
                KIND_ZERO => true,
                KIND_DATA => false,
                KIND_PARTIAL if self.unknown => {
                    partial.push(i);
                    false
                }
                k => {
                    return Err(bad(format!(
                        "corrupted: record at byte {start}: range kind {k}"
                    )));
                }
            };
            let r = Range {
                start: r_start,
                len,
                zero,
                before: self.u128("a record")?,
                after: self.u128("a record")?,
            };
            if !r.zero {
                want = want.saturating_add(r.len as usize);
            }
            ranges.push(r);
        }
        let unknown = if partial.is_empty() {
            Vec::new()
        } else {
            self.spans(start, &ranges, &partial)?
        };
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
                unknown,
            },
            check,
        ))
    }

    /// A record's unknown spans, after its ranges (record at byte
    /// `start`): in order, disjoint, each inside one of the kind 2 ranges
    /// (indexes `partial`), and each of those holding one at least.
    fn spans(
        &mut self,
        start: u64,
        ranges: &[Range],
        partial: &[usize],
    ) -> Result<Vec<(u32, u32)>, FormatError> {
        let wrong = || bad(format!("corrupted: record at byte {start}: unknown spans"));
        let n = self.u32("a record")? as usize;
        if n == 0 || n > MAX_RANGES {
            return Err(wrong());
        }
        let mut spans = Vec::with_capacity(n.min(4096));
        for _ in 0..n {
            spans.push((self.u32("a record")?, self.u32("a record")?));
        }
        let partial: Vec<(u32, u32)> = partial
            .iter()
            .map(|&i| (ranges[i].start, ranges[i].len))
            .collect();
        if !super::spans::fit(&spans, &partial) {
            return Err(wrong());
        }
        Ok(spans)
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
            diffsize: DiffSize::MinSize,
            whole: Some(Whole {
                original: 5,
                result: 6,
            }),
            unknown: false,
            undo_result: None,
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

    /// A version 3 patch: one data range with two unknown spans.
    fn with_unknown(spans: &[(u32, u32)], version: u16) -> Vec<u8> {
        let (mut h, _) = sample();
        h.unknown = true;
        let mut out = Vec::new();
        encode_header(&h, &mut out);
        out[8..10].copy_from_slice(&version.to_le_bytes());
        let check = digest::digest(CHECK_SALT, &out[..out.len() - 16]);
        let at = out.len() - 16;
        out[at..].copy_from_slice(&check.to_le_bytes());
        let range = Range {
            start: 4096,
            len: 4096,
            zero: false,
            before: 1,
            after: 2,
        };
        let data = vec![7u8; 4096];
        let stored = Stored {
            raw_len: 4096,
            compressed: false,
            bytes: &data,
        };
        encode_record_unknown(0, &[range], spans, &stored, &mut out);
        out
    }

    #[test]
    fn unknown_spans_round_trip_in_version_3_only() {
        let bytes = with_unknown(&[(4096, 512), (5120, 1024)], VERSION_UNKNOWN);
        let mut d = Decoder::new(&bytes[..]);
        assert!(d.header().unwrap().unknown);
        let Item::Record(r, _) = d.next(&mut Decompressor::default()).unwrap() else {
            panic!("no record")
        };
        assert_eq!(r.unknown, [(4096, 512), (5120, 1024)]);
        assert_eq!(r.data.len(), 4096);
        // Without spans a record is version 2's, byte for byte.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let range = [Range {
            start: 0,
            len: 4,
            zero: false,
            before: 1,
            after: 2,
        }];
        encode_record(0, &range, 4, false, b"abcd", &mut a);
        let stored = Stored {
            raw_len: 4,
            compressed: false,
            bytes: b"abcd",
        };
        encode_record_unknown(0, &range, &[], &stored, &mut b);
        assert_eq!(a, b);
        assert_eq!(a[1 + 8 + 4 + 8], KIND_DATA);
    }

    #[test]
    fn unknown_spans_out_of_place_are_corrupt() {
        let next = |bytes: &[u8]| {
            let mut d = Decoder::new(bytes);
            d.header()?;
            d.next(&mut Decompressor::default()).map(|_| ())
        };
        // A kind 2 range in a version 2 patch.
        let e = next(&with_unknown(&[(4096, 512)], VERSION)).unwrap_err();
        assert!(e.0.contains("range kind 2"), "{e}");
        // Outside the range, overlapping, empty, out of order.
        for spans in [
            &[(3584u32, 1024u32)][..],
            &[(8000, 512)],
            &[(4096, 512), (4096, 512)],
            &[(5000, 0)],
            &[(6000, 512), (4096, 512)],
        ] {
            let e = next(&with_unknown(spans, VERSION_UNKNOWN)).unwrap_err();
            assert!(e.0.contains("unknown spans"), "{spans:?}: {e}");
        }
    }

    #[test]
    fn an_undo_header_carries_its_result_where_older_versions_skip_it() {
        let (mut h, _) = sample();
        h.kind = Kind::Undo;
        h.whole = None;
        let mut plain = Vec::new();
        encode_header(&h, &mut plain);
        h.undo_result = Some(0x1234);
        let mut with = Vec::new();
        encode_header(&h, &mut with);
        // The same layout, version and whole flag (0): the result slot and
        // the header's check differ, nothing else.
        assert_eq!(plain.len(), with.len());
        let differ: Vec<usize> = (0..plain.len()).filter(|&i| plain[i] != with[i]).collect();
        let slot = 8 + 2 + 1 + 1 + 8 + 4 + 4 + 16 + 1 + 16;
        assert!(
            differ
                .iter()
                .all(|&i| (slot..slot + 16).contains(&i) || i >= with.len() - 16),
            "{differ:?}"
        );
        assert_eq!(Decoder::new(&with[..]).header().unwrap(), h);
        assert_eq!(Decoder::new(&plain[..]).header().unwrap().undo_result, None);
    }

    #[test]
    fn a_patch_that_ends_early_is_told_from_a_corrupted_one() {
        let (_, bytes) = sample();
        let last = |b: &[u8]| {
            let mut d = Decoder::new(b);
            let mut dec = Decompressor::default();
            let failed = d.header().err().or_else(|| {
                loop {
                    match d.next(&mut dec) {
                        Ok(Item::End(_)) => break None,
                        Ok(Item::Record(..)) => {}
                        Err(e) => break Some(e),
                    }
                }
            });
            (failed.is_some(), d.cut)
        };
        assert_eq!(last(&bytes), (false, false));
        for cut in [20, bytes.len() - 60, bytes.len() - 1] {
            assert_eq!(last(&bytes[..cut]), (true, true), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[bytes.len() - 70] ^= 1;
        assert_eq!(last(&flipped), (true, false));
    }

    #[test]
    fn version_1_is_refused_with_a_reason() {
        let (_, mut bytes) = sample();
        bytes[8..10].copy_from_slice(&1u16.to_le_bytes());
        let e = Decoder::new(&bytes[..]).header().unwrap_err();
        assert!(e.0.contains("version 1") && e.0.contains("again"), "{e}");
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
