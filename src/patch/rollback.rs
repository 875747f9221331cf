//! `bsync --patch --remdata=FILE`: while a patch is applied, what the
//! target holds where a record is about to be written goes into an undo
//! patch first, on disk (`fdatasync`) before the target changes, so that a
//! stop partway, even `kill -9` or a crash, can still be put back: an undo
//! patch cut short applies up to its last whole record (`apply.rs`).
//!
//! The undo patch restores the target's size too. Its header holds the
//! size before the apply; where `--diffsize=resize` cuts a file, the tail
//! it cuts goes into the undo patch before the cut, and where it grows one,
//! nothing past the old end is saved: undoing cuts it back.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::format::{self, DiffSize, Header, Kind, Range, Record, Trailer};
use super::target::{grain_page, read_range, result_digest};
use super::unknown;
use crate::block::is_zero;
use crate::compress::{Compressor, Level};
use crate::disk::Disk;
use crate::error::{Error, Result};

/// `--remdata=FILE` while applying: before a record is written, what the
/// target holds there goes into an undo patch, which puts it back.
pub(super) struct UndoWriter {
    out: std::io::BufWriter<File>,
    header: Header,
    compressor: Compressor,
    trailer: Trailer,
    path: PathBuf,
    buf: Vec<u8>,
    /// Where the apply cuts the target (`--diffsize=resize`, a larger
    /// file): its tail from here is saved before the cut.
    cut: Option<u64>,
}

impl UndoWriter {
    /// A new undo patch at `path` for applying `h` to `disk` (at `target`)
    /// with `diffsize`.
    pub(super) fn create(
        path: &Path,
        h: &Header,
        disk: &Disk,
        target: &Path,
        diffsize: DiffSize,
    ) -> Result<UndoWriter> {
        use std::os::unix::ffi::OsStrExt;
        let what = format!("undo patch {}", path.display());
        let size = disk.size();
        let resizes = diffsize == DiffSize::Resize && !disk.is_device() && size != h.source_size;
        let mut header = Header {
            kind: Kind::Undo,
            // The size before the apply, which undoing restores.
            source_size: size,
            diffsize: if resizes {
                DiffSize::Resize
            } else {
                DiffSize::Strict
            },
            // Absolute, as a forward patch's: undoing from another
            // directory must aim at the same file.
            name: std::path::absolute(target)
                .unwrap_or_else(|_| target.into())
                .as_os_str()
                .as_bytes()
                .to_vec(),
            // A stop partway leaves a target that is neither image: the
            // undo relies on its records' checks, and on the digest of the
            // whole target now, what undoing gives.
            whole: None,
            unknown: false,
            undo_result: None,
            ..h.clone()
        };
        let result = result_digest(disk, &header, size)?;
        header.undo_result = Some(result);
        // A new file only (the command line checked; this closes the race).
        let f = File::options()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Error::io(&what, "create", e))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, f);
        let mut head = Vec::new();
        format::encode_header(&header, &mut head);
        out.write_all(&head)
            .map_err(|e| Error::io(&what, "write", e))?;
        let mut undo = UndoWriter {
            out,
            header,
            compressor: Compressor::new(Some(Level::Fast)),
            trailer: Trailer {
                records: 0,
                ranges: 0,
                data_bytes: 0,
                result,
                chain: 0,
            },
            path: path.to_path_buf(),
            buf: Vec::new(),
            cut: (resizes && size > h.source_size).then_some(h.source_size),
        };
        undo.sync()?;
        Ok(undo)
    }

    /// Save what the target holds where `rec` writes (but for the `skip`
    /// ranges), on disk before it returns.
    pub(super) fn record(&mut self, disk: &Disk, rec: &Record, skip: &[bool]) -> Result<()> {
        let end = self.header.source_size;
        let page = grain_page(self.header.grain);
        let salt = self.header.salt;
        let mut ranges = Vec::new();
        let mut raw = Vec::new();
        let mut at = 0usize;
        for (r, &skip) in rec.ranges.iter().zip(skip) {
            let data = at;
            if !r.zero {
                at += r.len as usize;
            }
            let offset = rec.offset + u64::from(r.start);
            // Past the old end of a grown target: cutting it back undoes.
            if skip || offset >= end {
                continue;
            }
            let len = usize::try_from((end - offset).min(u64::from(r.len))).unwrap_or(0);
            read_range(disk, offset, &mut self.buf, r.len as usize)?;
            let old = &self.buf[..len];
            let zero = is_zero(old);
            if !zero {
                raw.extend_from_slice(old);
            }
            // What the range holds once written: where the source was
            // unknown the target keeps its bytes, known only here.
            let whole = len == r.len as usize;
            let before = if whole && unknown::spans_in(rec, r).is_empty() {
                r.after
            } else if r.zero {
                crate::proto::range_digest_of(salt, &vec![0u8; len], page)
            } else {
                let new = unknown::overlay(rec, r, &self.buf, &rec.data[data..at]);
                crate::proto::range_digest_of(salt, &new[..len], page)
            };
            ranges.push(Range {
                len: u32::try_from(len).unwrap_or(r.len),
                zero,
                before,
                after: crate::proto::range_digest_of(salt, old, page),
                ..*r
            });
        }
        if ranges.is_empty() {
            return Ok(());
        }
        self.append(rec.offset, &ranges, &raw)?;
        // On disk before the target changes: a crash leaves the undo data.
        self.sync()
    }

    /// One record of `ranges` at `offset`, their data `raw`.
    fn append(&mut self, offset: u64, ranges: &[Range], raw: &[u8]) -> Result<()> {
        let mut stored = Vec::new();
        let compressed = self.compressor.append(std::iter::once(raw), &mut stored);
        let mut bytes = Vec::new();
        let raw_len = u32::try_from(raw.len()).unwrap_or(u32::MAX);
        let check = format::encode_record(offset, ranges, raw_len, compressed, &stored, &mut bytes);
        self.trailer.records += 1;
        self.trailer.ranges += ranges.len() as u64;
        self.trailer.data_bytes += raw.len() as u64;
        self.trailer.chain = format::chain(self.trailer.chain, check);
        self.out
            .write_all(&bytes)
            .map_err(|e| Error::io(format!("undo patch {}", self.path.display()), "write", e))
    }

    /// Everything written so far on disk.
    fn sync(&mut self) -> Result<()> {
        let what = format!("undo patch {}", self.path.display());
        self.out.flush().map_err(|e| Error::io(&what, "write", e))?;
        self.out
            .get_ref()
            .sync_data()
            .map_err(|e| Error::io(&what, "flush", e))
    }

    /// The tail of the target from `from` to its old end, which the apply
    /// is about to cut: a record per block, a range per grain that is not
    /// all zeros (grown back, the target reads zeros there). Each range
    /// expects those zeros, so on a target that was never cut it is
    /// already applied.
    fn tail(&mut self, disk: &Disk, from: u64) -> Result<()> {
        let (salt, page) = (self.header.salt, grain_page(self.header.grain));
        let (block, grain) = (
            u64::from(self.header.block_size),
            u64::from(self.header.grain),
        );
        let end = self.header.source_size;
        let mut chunk = Vec::new();
        let mut pos = from;
        while pos < end {
            let next = ((pos / block + 1) * block).min(end);
            read_range(
                disk,
                pos,
                &mut chunk,
                usize::try_from(next - pos).unwrap_or(0),
            )?;
            let (mut ranges, mut raw) = (Vec::new(), Vec::new());
            let mut at = pos;
            while at < next {
                let stop = ((at / grain + 1) * grain).min(next);
                let bytes = &chunk[usize::try_from(at - pos).unwrap_or(0)..]
                    [..usize::try_from(stop - at).unwrap_or(0)];
                if !is_zero(bytes) {
                    ranges.push(Range {
                        start: u32::try_from(at - pos).unwrap_or(u32::MAX),
                        len: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
                        zero: false,
                        before: crate::proto::range_digest_of(salt, &vec![0u8; bytes.len()], page),
                        after: crate::proto::range_digest_of(salt, bytes, page),
                    });
                    raw.extend_from_slice(bytes);
                }
                at = stop;
            }
            if !ranges.is_empty() {
                self.append(pos, &ranges, &raw)?;
            }
            pos = next;
        }
        Ok(())
    }

    /// The tail the apply cuts, if any, then the trailer; on disk.
    pub(super) fn finish(mut self, disk: &Disk) -> Result<()> {
        if let Some(from) = self.cut.take() {
            self.tail(disk, from)?;
        }
        let mut tail = Vec::new();
        format::encode_trailer(&self.trailer, &mut tail);
        self.out
            .write_all(&tail)
            .map_err(|e| Error::io(format!("undo patch {}", self.path.display()), "write", e))?;
        self.sync()
    }

    /// Stopped before the first write: the undo patch holds nothing, and
    /// is removed (its name is free for the next apply).
    pub(super) fn discard(self) {
        let path = self.path.clone();
        drop(self);
        let _ = std::fs::remove_file(path);
    }
}
