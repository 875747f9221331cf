//! Opening the two ends of a transfer and reading them in block order.
//!
//! A [`Disk`] is a regular file or a block device with its size and a label
//! that names its side (`source a.img`), so every error says which end failed.
//! Opening applies the kernel hints (sequential advice,
//! a 4 MiB read-ahead on devices, put back when the disk is closed); each
//! degrades silently where refused, and `-v` says which were applied, which
//! were skipped and why, once per disk (see [`Disk::detail_once`]).
//! A destination device that is mounted or otherwise in use is refused
//! before anything is written: blocks written under a live file system
//! corrupt it.
//!
//! The fields are private: the pipeline reads, writes, clears and flushes
//! through [`Disk`]'s methods, which name the disk in every error and hold
//! the kernel hints, so nothing above this module calls into `sys` for a
//! disk.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::config::{ALLOW_MOUNTED_ENV, Env, NO_HINTS_ENV};
use crate::error::{Error, Result, os_words};
use crate::log::Log;
use crate::mounts;
use crate::progress::human_bytes;
use crate::rescue::Rescue;
use crate::sys::{self, Advice, Cleared, PinnedBuf};

mod checks;

pub use checks::{DEFAULT_SOURCE_HINT, MISSING_DRY, check_destination, check_source, same_file};
use checks::{open_dry, open_read_only, unsized_source};

/// Read-ahead asked for on block devices.
pub const READ_AHEAD: u64 = 4 << 20;

/// A disk counts as held in the page cache when no more than this share
/// (1 / N) of its bytes is missing: a few pages of a file read in full
/// may be gone again.
const CACHED_SLACK: u64 = 256;

/// One fact `-v` reports about a disk, at most once per run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note {
    /// mlock and MADV_HUGEPAGE of the read buffers.
    Buffers,
    /// Dropping read pages (`POSIX_FADV_DONTNEED`).
    DropBehind,
    /// Steady writeback (`sync_file_range`).
    Writeback,
    /// How zero ranges were cleared, per method.
    Cleared(Cleared),
}

impl Note {
    fn bit(self) -> u32 {
        match self {
            Note::Buffers => 1,
            Note::DropBehind => 2,
            Note::Writeback => 4,
            Note::Cleared(Cleared::PunchedHole) => 8,
            Note::Cleared(Cleared::ZeroRange) => 16,
            Note::Cleared(Cleared::DeviceZeroOut) => 32,
            Note::Cleared(Cleared::WroteZeros) => 64,
        }
    }
}

/// One end of a transfer.
#[derive(Debug)]
pub struct Disk {
    /// The open file or device.
    file: File,
    /// `source a.img` or `destination /dev/vdb`.
    label: String,
    /// Size in bytes (device size, or file length when opened).
    size: u64,
    /// Block device rather than a regular file.
    is_device: bool,
    /// Kernel I/O hints are on.
    hints: bool,
    /// (All but [`CACHED_SLACK`] of) its pages were in the page cache when
    /// it was opened: pages read are left there, not dropped behind the
    /// reader, which would only cost the freeing (and evict what was hot
    /// before the run).
    cached: bool,
    /// Where `-v` lines go.
    log: Log,
    /// The [`Note`]s already reported.
    said: AtomicU32,
    /// The device's read-ahead before we raised it, put back on drop:
    /// BLKRASET outlives the process.
    restore_read_ahead: Option<u64>,
    /// What was said about this disk as a source that the other end's user
    /// should hear too (a device mounted read-write).
    warning: Option<String>,
    /// A regular file's size and modification time when opened, to tell
    /// whether it changed during the run.
    stamp: Option<(u64, i64, i64)>,
    /// Replaces single `pread`/`pwrite` calls: the strict I/O tests' shim.
    io: Option<Arc<dyn DiskIo>>,
    /// A dry run's destination: read-only, and reads past its end see
    /// zeros (what a grown file would hold), so sizes may differ.
    dry: bool,
    /// Writes go here instead of to the disk (bdsync's `--remdata`).
    capture: Option<std::sync::Arc<dyn Capture>>,
    /// `--rescue`: read errors are retried in sectors and recorded here
    /// instead of failing the run.
    rescue: Option<Arc<Rescue>>,
}

/// One positioned read or write call, as `pread` and `pwrite` make it:
/// short counts, `EINTR` and `EAGAIN` allowed. [`Disk::with_io`] puts one in
/// place of the system calls so that tests can fail block K, or answer every
/// call short, and check what bsync makes of it.
pub trait DiskIo: Send + Sync + std::fmt::Debug {
    /// One `pread` of `buf.len()` bytes at `offset` of `file`.
    fn read_at(&self, file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// One `pwrite` of `buf` at `offset` of `file`.
    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<usize>;
}

/// Takes a destination's writes instead of the disk: the writer's extents,
/// in offset order, with the data (`None`: zeros).
pub trait Capture: Send + Sync + std::fmt::Debug {
    /// `len` bytes at `offset` would become `data`, or zeros.
    fn write(&self, disk: &Disk, offset: u64, data: Option<&[u8]>, len: u64) -> io::Result<()>;
}

impl Disk {
    /// Open `path` read-only as the source: a regular file or a block
    /// device. Anything else (the default `/dev/zero`, a pipe, a directory)
    /// has no size to copy, and is refused before a destination is touched.
    /// `log` gets the `-v` lines about this disk.
    pub fn open_source(path: &Path, env: &Env, log: &Log) -> Result<Disk> {
        let label = format!("source {}", path.display());
        let (file, regular, is_device) = open_read_only(path, &label)?;
        if !regular && !is_device {
            return Err(unsized_source(path, &label, &file));
        }
        let warning = if is_device {
            let rdev = file.metadata().map_or(0, |m| m.rdev());
            mounts::warn_if_mounted_read_write(&label, rdev, log)
        } else {
            None
        };
        let mut disk = Disk::describe(file, label, env, log)?;
        disk.warning = warning;
        Ok(disk)
    }

    /// Fail when this regular file's size or modification time changed
    /// since it was opened: a source rewritten or grown during a run was
    /// copied partly old and partly new. Devices are not checked (a
    /// mounted one is warned about when opened).
    pub fn check_unchanged(&self) -> Result<()> {
        let Some((size, sec, nsec)) = self.stamp else {
            return Ok(());
        };
        let m = self
            .file
            .metadata()
            .map_err(|e| Error::io(&self.label, "stat", e))?;
        if (m.len(), m.mtime(), m.mtime_nsec()) == (size, sec, nsec) {
            return Ok(());
        }
        let what = if m.len() == size {
            "was modified".to_string()
        } else {
            format!("changed size from {size} to {} bytes", m.len())
        };
        Err(Error::Failed(format!(
            "{}: the source {what} {}; run again when nothing writes to it (or from a \
             snapshot)",
            self.label,
            crate::error::SOURCE_CHANGED
        )))
    }

    /// Open `path` read-only as the destination of a dry run (`--compare`,
    /// `--write-patch`): it is read and digested, never written or resized,
    /// and reads past its end see zeros.
    pub fn open_dry(path: &Path, env: &Env, log: &Log) -> Result<Disk> {
        let label = format!("destination {} (read only)", path.display());
        let (file, regular, is_device) = open_dry(path, &label)?;
        if !regular && !is_device {
            return Err(Error::Failed(format!(
                "{label}: not a regular file or block device"
            )));
        }
        let mut disk = Disk::describe(file, label, env, log)?;
        disk.dry = true;
        Ok(disk)
    }

    /// A dry run's destination ([`Disk::open_dry`]): nothing is written to it.
    pub fn is_dry(&self) -> bool {
        self.dry
    }

    /// Whether writes go to a [`Capture`] (an undo patch) instead.
    pub fn captures(&self) -> bool {
        self.capture.is_some()
    }

    /// Send every write of this (dry) destination to `capture` instead.
    pub fn capture_writes(&mut self, capture: std::sync::Arc<dyn Capture>) {
        self.capture = Some(capture);
    }

    /// With `map` (`--rescue`), this source is rescued: its map is read,
    /// kept and written by a [`Rescue`], which opens `path` again for its
    /// direct reads.
    pub fn rescued(mut self, map: Option<&Path>, path: &Path) -> Result<Disk> {
        if let Some(map) = map {
            self.rescue = Some(Rescue::open(map, path, &self.file, self.size)?);
        }
        Ok(self)
    }

    /// The rescue of this source, if any.
    pub fn rescue(&self) -> Option<&Rescue> {
        self.rescue.as_deref()
    }

    /// Read `buf.len()` bytes of block `index` at `offset` again after a
    /// failed read, in pages and sectors: the ranges still unreadable.
    pub fn recover(
        &self,
        rescue: &Rescue,
        index: u64,
        buf: &mut [u8],
        offset: u64,
        stats: &crate::progress::Stats,
    ) -> Result<Vec<(usize, usize)>> {
        rescue.recover(&|b, at| self.read_at(b, at), index, offset, buf, stats)
    }

    /// Open `path` for reading and writing as the destination, creating a
    /// regular file when missing (and saying so). Nothing is written yet.
    ///
    /// A block device is refused when it (or one of its partitions) is
    /// mounted, naming the mount point, and is opened exclusively (`O_EXCL`),
    /// which the kernel refuses while anything else holds it (swap, LVM,
    /// RAID, device mapper) and which keeps it from being mounted during the
    /// run. [`ALLOW_MOUNTED_ENV`] skips both, with a warning.
    pub fn open_destination(path: &Path, env: &Env, log: &Log) -> Result<Disk> {
        let label = format!("destination {}", path.display());
        let meta = std::fs::metadata(path).ok();
        let exists = meta.is_some();
        let device = meta
            .as_ref()
            .is_some_and(|m| m.file_type().is_block_device());
        let allow = env.allow_mounted;
        if device {
            mounts::refuse_mounted(&label, meta.as_ref(), env, log)?;
        }
        if let Some(meta) = &meta {
            mounts::refuse_live(&label, meta, env, log)?;
        }
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(!exists).mode(0o644);
        if device && !allow {
            options.custom_flags(libc::O_EXCL);
        }
        let file = options.open(path).map_err(|e| {
            if device && e.raw_os_error() == Some(libc::EBUSY) {
                Error::Failed(format!(
                    "{label}: the device is in use (mounted, swap, LVM, RAID or device \
                     mapper hold it: see lsblk); refusing to write under it \
                     ({ALLOW_MOUNTED_ENV}=1 overrides); nothing was written"
                ))
            } else {
                Error::io(&label, "open for writing", e)
            }
        })?;
        if device {
            mounts::refuse_read_only(&label, &file)?;
        }
        let disk = Disk::describe(file, label, env, log)?;
        // A typo makes a new file too (under /dev, in devtmpfs): said.
        if !exists {
            log.info(format!("{}: a new file (it did not exist)", disk.label));
        }
        Ok(disk)
    }

    /// Size the disk and apply the read hints, telling `-v` what happened.
    fn describe(file: File, label: String, env: &Env, log: &Log) -> Result<Disk> {
        let is_device = sys::is_block_device(&file).map_err(|e| Error::io(&label, "stat", e))?;
        let size = if is_device {
            sys::block_device_size(&file).map_err(|e| Error::io(&label, "read device size", e))?
        } else {
            file.metadata()
                .map_err(|e| Error::io(&label, "stat", e))?
                .len()
        };
        let mut disk = Disk {
            file,
            label,
            size,
            is_device,
            hints: env.hints,
            cached: false,
            log: log.clone(),
            said: AtomicU32::new(0),
            restore_read_ahead: None,
            warning: None,
            stamp: None,
            io: None,
            dry: false,
            capture: None,
            rescue: None,
        };
        if !is_device {
            let m = disk
                .file
                .metadata()
                .map_err(|e| Error::io(&disk.label, "stat", e))?;
            disk.stamp = Some((m.len(), m.mtime(), m.mtime_nsec()));
        }
        if !disk.hints {
            disk.detail(format!(
                "kernel hints off ({NO_HINTS_ENV}): no fadvise, read-ahead, mlock, huge pages or sync_file_range"
            ));
            return Ok(disk);
        }
        // Asked before anything is read: pages this run reads go, pages
        // that were (all but a few) there already stay.
        disk.cached = sys::cached_bytes(&disk.file, size)
            .is_ok_and(|cached| size > 0 && cached >= size - size / CACHED_SLACK);
        if disk.cached {
            disk.said
                .fetch_or(Note::DropBehind.bit(), Ordering::Relaxed);
            disk.detail("in the page cache: pages read are left there (no fadvise DONTNEED)");
        }
        match sys::fadvise(&disk.file, 0, 0, Advice::Sequential) {
            Ok(()) => disk.detail("fadvise SEQUENTIAL applied"),
            Err(e) => disk.detail(format!("fadvise SEQUENTIAL refused: {}", os_words(&e))),
        }
        if is_device {
            let note = disk.raise_read_ahead();
            disk.detail(note);
        } else {
            disk.detail("read-ahead left to the kernel (not a block device)");
        }
        Ok(disk)
    }

    /// Raise the device's read-ahead to [`READ_AHEAD`]; says what happened.
    fn raise_read_ahead(&mut self) -> String {
        let ra = match sys::read_ahead(&self.file) {
            Ok(ra) => ra,
            Err(e) => return format!("read-ahead left alone: BLKRAGET failed: {}", os_words(&e)),
        };
        if ra >= READ_AHEAD {
            return format!(
                "read-ahead left at {} (already at least {})",
                human_bytes(ra),
                human_bytes(READ_AHEAD)
            );
        }
        match sys::set_read_ahead(&self.file, READ_AHEAD) {
            Ok(()) => {
                self.restore_read_ahead = Some(ra);
                format!(
                    "read-ahead raised from {} to {} (put back at the end)",
                    human_bytes(ra),
                    human_bytes(READ_AHEAD)
                )
            }
            Err(e) => format!(
                "read-ahead left at {}: BLKRASET refused: {}",
                human_bytes(ra),
                os_words(&e)
            ),
        }
    }

    /// A `-v` line about this disk.
    pub fn detail(&self, msg: impl std::fmt::Display) {
        self.log.detail(format_args!("{}: {msg}", self.label));
    }

    /// A `-v` line about `note`, only the first time it is reported for
    /// this disk. Costs one atomic operation when verbose, nothing otherwise,
    /// so the per-block paths may call it.
    pub fn detail_once(&self, note: Note, msg: impl FnOnce() -> String) {
        if !self.log.is_verbose() {
            return;
        }
        let bit = note.bit();
        if self.said.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            self.detail(msg());
        }
    }

    /// Report how zeros were cleared (once per method).
    fn note_cleared(&self, how: Cleared) {
        let device = self.is_device;
        self.detail_once(Note::Cleared(how), || {
            match how {
                Cleared::PunchedHole => "zero ranges cleared by punching holes (fallocate PUNCH_HOLE)",
                Cleared::ZeroRange => {
                    "zero ranges cleared with fallocate ZERO_RANGE (hole punching unsupported here)"
                }
                Cleared::DeviceZeroOut => "zero ranges cleared with BLKZEROOUT",
                Cleared::WroteZeros if device => {
                    "zero ranges cleared by writing zeros (BLKZEROOUT unsupported, or the range is not sector aligned)"
                }
                Cleared::WroteZeros => {
                    "zero ranges cleared by writing zeros (hole punching and ZERO_RANGE unsupported here)"
                }
            }
            .to_string()
        });
    }

    /// Report the mlock and huge-page outcome of the first read buffer.
    pub fn note_buffer(&self, buf: &PinnedBuf) {
        self.detail_once(Note::Buffers, || {
            let size = human_bytes(buf.len() as u64);
            if !self.hints {
                return format!("read buffers of {size}, neither locked nor huge (hints off)");
            }
            let lock = if buf.is_locked() {
                "mlock ok".to_string()
            } else if let Some(e) = buf.lock_error() {
                let limit = match sys::memlock_limit() {
                    Ok(Some(l)) => format!("; RLIMIT_MEMLOCK is {}", human_bytes(l)),
                    _ => String::new(),
                };
                format!(
                    "mlock refused ({}{limit}), pages may be swapped",
                    os_words(&e)
                )
            } else {
                "not locked (not asked for on this side)".to_string()
            };
            let huge = if buf.is_huge() {
                "MADV_HUGEPAGE accepted".to_string()
            } else if let Some(e) = buf.huge_error() {
                format!("MADV_HUGEPAGE refused ({})", os_words(&e))
            } else {
                format!(
                    "no MADV_HUGEPAGE (buffers under {})",
                    human_bytes(sys::HUGE_PAGE_SIZE as u64)
                )
            };
            format!("read buffers of {size}: {lock}, {huge}")
        });
    }

    /// After a run into a device larger than the source: say what was left
    /// alone (a dry run's: what a sync leaves alone, no difference). Nothing
    /// for files (they are cut to size) or equal sizes.
    pub fn report_excess(&self, source_size: u64) {
        if self.is_device && self.size > source_size {
            let left = if self.dry {
                "a sync leaves the bytes past the source's end alone"
            } else {
                "bytes past the source's end were left alone"
            };
            self.log.info(format!(
                "{} is larger than the source by {}; {left}",
                self.label,
                human_bytes(self.size - source_size)
            ));
        }
    }

    /// `source a.img` or `destination /dev/vdb`, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// What the other end's user should hear about this source, if anything.
    pub fn warning(&self) -> Option<&str> {
        self.warning.as_deref()
    }

    /// Whether this is a block device rather than a regular file.
    pub fn is_device(&self) -> bool {
        self.is_device
    }

    /// Whether kernel I/O hints are on for this disk.
    pub fn hints(&self) -> bool {
        self.hints
    }

    /// Read `buf.len()` bytes at `offset`, or fewer only at the end of the
    /// disk; returns how many were read.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let n = match &self.io {
            None => sys::pread_full(&self.file, buf, offset)?,
            Some(io) => sys::read_full_with(buf, offset, |b, at| io.read_at(&self.file, b, at))?,
        };
        if self.dry && n < buf.len() {
            buf[n..].fill(0);
            return Ok(buf.len());
        }
        Ok(n)
    }

    /// Where the next data at or after `offset` starts: the range between is
    /// a hole and reads as zeros. `None` when only holes follow. Files whose
    /// file system cannot say report data at `offset`.
    fn next_data(&self, offset: u64) -> Option<u64> {
        sys::next_data(&self.file, offset).unwrap_or(Some(offset))
    }

    /// Whether the `len` bytes at `offset` are a hole of a regular file, all
    /// zeros without reading them. `next` caches where the next data
    /// starts (0 to start with); it stays valid while it is past `offset`.
    /// A range past the file's current end is never a hole: a file that
    /// shrank must fail its read, not read as zeros.
    pub fn is_hole(&self, offset: u64, len: usize, next: &mut u64) -> bool {
        if self.is_device || len == 0 {
            return false;
        }
        if *next <= offset {
            *next = self.next_data(offset).unwrap_or(u64::MAX);
        }
        let end = offset.saturating_add(len as u64);
        *next >= end && self.file.metadata().is_ok_and(|m| m.len() >= end)
    }

    /// Write all of `buf` at `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if let Some(c) = &self.capture {
            return c.write(self, offset, Some(buf), buf.len() as u64);
        }
        if self.dry {
            return Err(dry_write());
        }
        match &self.io {
            None => sys::pwrite_all(&self.file, buf, offset),
            Some(io) => sys::write_all_with(buf, offset, |b, at| io.write_at(&self.file, b, at)),
        }
    }

    /// Make every read and write of this disk go through `io` (tests).
    pub fn with_io(mut self, io: Arc<dyn DiskIo>) -> Disk {
        self.io = Some(io);
        self
    }

    /// Make `len` bytes at `offset` read as zeros, by the cheapest means the
    /// disk allows (`-v` says which, once).
    pub fn clear(&self, offset: u64, len: u64) -> io::Result<()> {
        if let Some(c) = &self.capture {
            return c.write(self, offset, None, len);
        }
        if self.dry {
            return Err(dry_write());
        }
        let how = sys::clear_range(&self.file, offset, len, self.is_device)?;
        self.note_cleared(how);
        Ok(())
    }

    /// Drop the read pages of `len` bytes at `offset` from the page cache;
    /// nothing when every page was cached before the run.
    pub fn drop_behind(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.cached {
            return Ok(());
        }
        sys::fadvise(&self.file, offset, len, Advice::DontNeed)
    }

    /// Start writeback of `len` bytes at `offset` without waiting. `Ok(false)`
    /// when this disk does not support it (dirty pages then flush in
    /// bursts); an error is the kernel reporting a failed write.
    pub fn start_writeback(&self, offset: u64, len: u64) -> io::Result<bool> {
        if self.dry || self.capture.is_some() {
            return Ok(false);
        }
        supported(sys::start_writeback(&self.file, offset, len))
    }

    /// Wait for the writeback of `len` bytes at `offset`. `Ok(false)` when
    /// not supported; an error is a write the kernel could not complete, and
    /// it reports that only once per open file (the final `fdatasync` would
    /// not see it again), so it must never be ignored.
    pub fn wait_writeback(&self, offset: u64, len: u64) -> io::Result<bool> {
        if self.dry || self.capture.is_some() {
            return Ok(false);
        }
        supported(sys::wait_writeback(&self.file, offset, len))
    }

    /// Flush everything written to the device (`fdatasync`).
    pub fn flush(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::io(&self.label, "flush (fdatasync)", e))
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
        if self.dry {
            // Read-only: reads past the end see zeros instead.
            return Ok(());
        }
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

/// `sync_file_range`'s outcome: done, not supported here, or a real error.
fn supported(r: io::Result<()>) -> io::Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if sys::writeback_unsupported(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A dry run's destination refused a write (a bug if it ever shows).
fn dry_write() -> io::Error {
    io::Error::other("a dry run never writes to its destination")
}

impl Drop for Disk {
    fn drop(&mut self) {
        if let Some(ra) = self.restore_read_ahead {
            // Best effort, like raising it: nobody is left to tell.
            let _ = sys::set_read_ahead(&self.file, ra);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Removes the file on drop, also when an assertion fails.
    struct Scratch(std::path::PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn read_pages_are_dropped_only_where_the_run_brought_them_in() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        let file = Scratch(dir.join(format!("bsync-cached-{}", std::process::id())));
        let len = 1 << 20;
        std::fs::write(&file.0, vec![7u8; len]).unwrap();
        let f = File::open(&file.0).unwrap();
        f.sync_all().unwrap();
        sys::fadvise(&f, 0, 0, Advice::DontNeed).unwrap();
        let cached = || sys::cached_bytes(&f, len as u64).unwrap();
        if !matches!(sys::cached_bytes(&f, len as u64), Ok(0)) {
            eprintln!("skipped: the kernel cannot say what is cached (no cachestat)");
            return;
        }
        let (env, log) = (Env::default(), Log::default());
        let mut buf = vec![0u8; len];
        // Read from the disk: dropped behind the reader, as ever.
        let cold = Disk::open_source(&file.0, &env, &log).unwrap();
        assert_eq!(cold.read_at(&mut buf, 0).unwrap(), len);
        assert_eq!(cached(), len as u64);
        cold.drop_behind(0, len as u64).unwrap();
        assert_eq!(cached(), 0);
        // All in the page cache before the run: left there.
        assert_eq!(std::fs::read(&file.0).unwrap().len(), len);
        let hot = Disk::open_source(&file.0, &env, &log).unwrap();
        assert_eq!(hot.read_at(&mut buf, 0).unwrap(), len);
        hot.drop_behind(0, len as u64).unwrap();
        assert_eq!(cached(), len as u64);
        // Without the kernel hints nothing is asked, nor dropped.
        let off = Env {
            hints: false,
            ..Env::default()
        };
        assert!(!Disk::open_source(&file.0, &off, &log).unwrap().cached);
    }
}
