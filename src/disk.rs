//! Opening the two ends of a transfer and reading them in block order.
//!
//! A [`Disk`] is a regular file or a block device with its size and a label
//! that names its side (`source a.img`), so every error says which end failed.
//! Opening applies the kernel hints SPEC.md promises (sequential advice,
//! a 4 MiB read-ahead on devices); each degrades silently where refused.
//! [`read_blocks`] is the one sequential reader both sides use.

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc::SyncSender;

use crate::block::Geometry;
use crate::error::{Error, Result};
use crate::pool::{Pool, Pooled};
use crate::progress::{Stats, human_bytes};
use crate::sys::{self, Advice};

/// Read-ahead asked for on block devices.
pub const READ_AHEAD: u64 = 4 << 20;

/// How much the reader reads before it drops the pages behind it.
const DROP_BEHIND: u64 = 8 << 20;

/// One end of a transfer.
#[derive(Debug)]
pub struct Disk {
    /// The open file or device.
    pub file: File,
    /// `source a.img` or `destination /dev/vdb`.
    pub label: String,
    /// Size in bytes (device size, or file length when opened).
    pub size: u64,
    /// Block device rather than a regular file.
    pub is_device: bool,
}

impl Disk {
    /// Open `path` read-only as the source: a regular file or a block
    /// device. Anything else (the default `/dev/zero`, a pipe, a directory)
    /// has no size to copy, and is refused before a destination is touched.
    pub fn open_source(path: &Path) -> Result<Disk> {
        let label = format!("source {}", path.display());
        let file = File::open(path).map_err(|e| Error::io(&label, "open", e))?;
        let disk = Disk::describe(file, label)?;
        let regular = disk
            .file
            .metadata()
            .map_err(|e| Error::io(&disk.label, "stat", e))?
            .is_file();
        if !regular && !disk.is_device {
            return Err(Error::usage(format!(
                "{}: not a regular file or block device (-f defaults to /dev/zero: is -f missing?)",
                disk.label
            )));
        }
        Ok(disk)
    }

    /// Open `path` for reading and writing as the destination, creating a
    /// regular file when missing. Nothing is written yet.
    pub fn open_destination(path: &Path) -> Result<Disk> {
        let label = format!("destination {}", path.display());
        let exists = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(!exists)
            .mode(0o644)
            .open(path)
            .map_err(|e| Error::io(&label, "open for writing", e))?;
        Disk::describe(file, label)
    }

    fn describe(file: File, label: String) -> Result<Disk> {
        let is_device = sys::is_block_device(&file).map_err(|e| Error::io(&label, "stat", e))?;
        let size = if is_device {
            sys::block_device_size(&file).map_err(|e| Error::io(&label, "read device size", e))?
        } else {
            file.metadata()
                .map_err(|e| Error::io(&label, "stat", e))?
                .len()
        };
        let _ = sys::fadvise(&file, 0, 0, Advice::Sequential);
        if is_device && sys::read_ahead(&file).is_ok_and(|ra| ra < READ_AHEAD) {
            let _ = sys::set_read_ahead(&file, READ_AHEAD);
        }
        Ok(Disk {
            file,
            label,
            size,
            is_device,
        })
    }

    /// (device, inode) to tell whether two paths are the same file.
    pub fn identity(&self) -> Result<(u64, u64, u64)> {
        let m = self
            .file
            .metadata()
            .map_err(|e| Error::io(&self.label, "stat", e))?;
        Ok((m.dev(), m.ino(), m.rdev()))
    }

    /// Make the destination able to hold `size` bytes: a regular file is
    /// grown (sparsely) or truncated to exactly `size`; a device must be at
    /// least that large and is refused otherwise, before anything is written.
    pub fn fit_to(&mut self, size: u64) -> Result<()> {
        if self.is_device {
            if self.size < size {
                return Err(Error::Failed(format!(
                    "{}: device is smaller than the source ({} bytes = {} < {} bytes = {}); \
                     nothing was written",
                    self.label,
                    self.size,
                    human_bytes(self.size),
                    size,
                    human_bytes(size)
                )));
            }
            return Ok(());
        }
        let regular = self
            .file
            .metadata()
            .map_err(|e| Error::io(&self.label, "stat", e))?
            .is_file();
        if regular && self.size != size {
            self.file
                .set_len(size)
                .map_err(|e| Error::io(&self.label, format!("resize to {size} bytes"), e))?;
            self.size = size;
        }
        Ok(())
    }
}

/// Read `blocks` of `disk` in order into pooled buffers and send them on.
///
/// `gate` is asked before each block and may wait (the destination's window);
/// `false` stops the reader. Stops quietly when the receiver hangs up too:
/// whoever stopped it reports why.
/// Pages already read are dropped from the page cache behind the reader so a
/// long run does not evict everything else.
pub fn read_blocks(
    disk: &Disk,
    geo: Geometry,
    blocks: Range<u64>,
    pool: &Pool,
    tx: &SyncSender<Pooled>,
    stats: &Stats,
    gate: &dyn Fn() -> bool,
) -> Result<()> {
    let mut dropped_to = geo.offset(blocks.start);
    for index in blocks {
        if !gate() {
            break;
        }
        let mut block = pool
            .get()
            .map_err(|e| Error::io(&disk.label, "allocate a block buffer", e))?;
        let len = geo.len(index);
        let offset = geo.offset(index);
        let n = sys::pread_full(&disk.file, &mut block.data[..len], offset)
            .map_err(|e| Error::io(&disk.label, format!("read at block {index}"), e))?;
        if n < len {
            return Err(Error::Failed(format!(
                "{}: read at block {index}: unexpected end of file at byte {} \
                 (did it shrink during the run?)",
                disk.label,
                offset + n as u64
            )));
        }
        block.index = index;
        block.len = len;
        Stats::add(&stats.bytes_read, len as u64);
        let end = offset + len as u64;
        if end - dropped_to >= DROP_BEHIND {
            let _ = sys::fadvise(&disk.file, dropped_to, end - dropped_to, Advice::DontNeed);
            dropped_to = end;
        }
        if tx.send(block).is_err() {
            break;
        }
    }
    Ok(())
}
