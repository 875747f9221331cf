//! `bsync --patch --remdata=FILE`: while a patch is applied, what the
//! target holds where a record is about to be written goes into an undo
//! patch first, so that a stop partway can still be put back.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::format::{self, Header, Kind, Range, Record, Trailer};
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
}

impl UndoWriter {
    pub(super) fn create(
        path: &Path,
        h: &Header,
        disk: &Disk,
        target: &Path,
    ) -> Result<UndoWriter> {
        use std::os::unix::ffi::OsStrExt;
        let what = format!("undo patch {}", path.display());
        // A new file only (the command line checked; this closes the race).
        let f = File::options()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Error::io(&what, "create", e))?;
        let header = Header {
            kind: Kind::Undo,
            source_size: disk.size(),
            // Absolute, as a forward patch's: undoing from another
            // directory must aim at the same file.
            name: std::path::absolute(target)
                .unwrap_or_else(|_| target.into())
                .as_os_str()
                .as_bytes()
                .to_vec(),
            // A stop partway leaves a target that is neither image: the
            // undo relies on its records' checks alone.
            whole: None,
            unknown: false,
            ..h.clone()
        };
        // The result of undoing is the target as it is now.
        let result = result_digest(disk, &header, disk.size())?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, f);
        let mut head = Vec::new();
        format::encode_header(&header, &mut head);
        out.write_all(&head)
            .map_err(|e| Error::io(&what, "write", e))?;
        Ok(UndoWriter {
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
        })
    }

    pub(super) fn record(&mut self, disk: &Disk, rec: &Record, skip: &[bool]) -> Result<()> {
        let mut ranges = Vec::new();
        let mut raw = Vec::new();
        let mut at = 0usize;
        for (r, &skip) in rec.ranges.iter().zip(skip) {
            let data = at;
            if !r.zero {
                at += r.len as usize;
            }
            if skip {
                continue;
            }
            read_range(
                disk,
                rec.offset + u64::from(r.start),
                &mut self.buf,
                r.len as usize,
            )?;
            let zero = is_zero(&self.buf);
            if !zero {
                raw.extend_from_slice(&self.buf);
            }
            // Where the source was unknown the target keeps its bytes: what
            // the range holds once written is known only here.
            let before = if unknown::spans_in(rec, r).is_empty() {
                r.after
            } else {
                let new = unknown::overlay(rec, r, &self.buf, &rec.data[data..at]);
                let page = grain_page(self.header.grain);
                crate::proto::range_digest_of(self.header.salt, &new, page)
            };
            ranges.push(Range {
                zero,
                before,
                after: r.before,
                ..*r
            });
        }
        if ranges.is_empty() {
            return Ok(());
        }
        let mut stored = Vec::new();
        let compressed = self
            .compressor
            .append(std::iter::once(&raw[..]), &mut stored);
        let mut bytes = Vec::new();
        let raw_len = u32::try_from(raw.len()).unwrap_or(u32::MAX);
        let check = format::encode_record(
            rec.offset, &ranges, raw_len, compressed, &stored, &mut bytes,
        );
        self.trailer.records += 1;
        self.trailer.ranges += ranges.len() as u64;
        self.trailer.data_bytes += raw.len() as u64;
        self.trailer.chain = format::chain(self.trailer.chain, check);
        self.out
            .write_all(&bytes)
            .map_err(|e| Error::io(format!("undo patch {}", self.path.display()), "write", e))?;
        // On disk before the target changes: a crash leaves the undo data.
        self.out
            .flush()
            .map_err(|e| Error::io(format!("undo patch {}", self.path.display()), "write", e))
    }

    pub(super) fn finish(mut self) -> Result<()> {
        let _ = &self.header;
        let mut tail = Vec::new();
        format::encode_trailer(&self.trailer, &mut tail);
        let what = format!("undo patch {}", self.path.display());
        self.out
            .write_all(&tail)
            .and_then(|()| self.out.flush())
            .map_err(|e| Error::io(&what, "write", e))?;
        self.out
            .get_ref()
            .sync_data()
            .map_err(|e| Error::io(&what, "flush", e))
    }
}
