//! `--rescue MAPFILE`: copy a failing source, losing only the sectors that
//! really fail, and keep GNU ddrescue's map of what was read.
//!
//! Without a rescue the first read error of the source ends the run. With
//! one, the reader hands a failed block to [`Rescue::recover`], which reads
//! it again in 64 KiB pieces, each failing piece in 4 KiB pages and each
//! failing page in logical sectors, with
//! `O_DIRECT` into an aligned buffer: through the page cache a read of one
//! sector would be a page or a read-ahead window, and a bad sector would
//! take its neighbours with it. The sectors that still fail are the
//! block's [`unreadable`](crate::block::Block) ranges: zeros in the
//! source's buffer, never written at the destination (it keeps what it had),
//! carried as such on the wire.
//!
//! The map (`map.rs`) is loaded when the file exists and written
//! atomically (a temporary file renamed over it) at least every
//! [`SAVE_EVERY`], whenever a block had bad sectors, and at the end. A
//! block counts as finished (`+`) only once the destination holds it (the
//! writer wrote it, or the network destination acknowledged it): a run
//! that writes a patch instead leaves its blocks `?`. Sectors that failed
//! are `-` from the moment they fail. A later run with the same
//! map skips the blocks that are all finished and reads the others again:
//! blocks holding bad areas go straight to the sector-by-sector retry,
//! forward on odd passes and backward on even ones, like ddrescue's
//! retry passes.

pub mod map;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::block::Geometry;
use crate::error::{Error, Result};
use crate::lock::lock;
use crate::log::Log;
use crate::progress::{Stats, human_bytes, plural};
use crate::sys::PinnedBuf;
use map::{Map, Status};

/// The map is written at least this often while blocks finish.
pub const SAVE_EVERY: Duration = Duration::from_secs(1);
/// A read of the source that takes longer than this is a slow read: counted
/// and reported (a dying disk can take 30 s or more per failed read).
pub const SLOW_READ: Duration = Duration::from_secs(2);
/// The first retry grain: 64 KiB, so that a bad sector in a 10 MiB block
/// costs a few hundred reads rather than thousands.
const RETRY_CHUNK: usize = 64 << 10;
/// The second retry grain, within a chunk that failed: a page.
const RETRY_PAGE: usize = 4096;

/// Unreadable byte ranges of a block, relative to its start, sorted and
/// disjoint: `(start, len)`.
pub type Unreadable = Vec<(usize, usize)>;

/// A rescue in progress: the map, its file and the direct reader.
#[derive(Debug)]
pub struct Rescue {
    path: PathBuf,
    state: Mutex<State>,
    /// The source again with `O_DIRECT`, for the retries; `None` where the
    /// file system refuses it (the retries then go through the page cache).
    direct: Option<File>,
    /// The source's logical sector size (512 for a file).
    sector: usize,
    /// A block device: its first reads are direct too (see
    /// [`Rescue::read_first`]).
    first_direct: bool,
    /// Comment lines at the top of every map written.
    header: Vec<String>,
    /// Reads slower than [`SLOW_READ`].
    pub slow_reads: AtomicU64,
    /// A dry run's session, for [`Rescue::patched`]: its failed reads,
    /// the bytes it could not read, and how long it took.
    ran: Mutex<(u64, u64, Duration)>,
}

/// One block's retry: where it is and what it found.
struct Retry<'a> {
    read: &'a dyn Fn(&mut [u8], u64) -> std::io::Result<usize>,
    scratch: &'a mut PinnedBuf,
    /// The block's offset in the source.
    offset: u64,
    /// Pieces backward (even passes).
    reverse: bool,
    stats: &'a Stats,
    /// The unreadable ranges, relative to the block.
    bad: &'a mut Unreadable,
}

#[derive(Debug)]
struct State {
    map: Map,
    /// Bad ranges (absolute `pos`, `len`) of blocks read but not yet at the
    /// destination, by block.
    pending: BTreeMap<u64, Vec<(u64, u64)>>,
    saved: Instant,
    /// Something changed since the last save.
    dirty: bool,
}

impl Rescue {
    /// Load the map at `path` (or start a new one) for a source of `size`
    /// bytes at `source`, whose open file is `file`. An interrupted run
    /// writes it as it stands ([`save_on_interrupt`]).
    pub fn open(path: &Path, source: &Path, file: &File, size: u64) -> Result<Arc<Rescue>> {
        let what = format!("rescue map {}", path.display());
        let mut map = match std::fs::read_to_string(path) {
            Ok(text) => {
                let mut map = Map::parse(&text)
                    .map_err(|e| Error::Failed(format!("{what}: not a ddrescue mapfile: {e}")))?;
                // Its finished areas are neither read nor verified again:
                // a map of another source would leave them wrong.
                if map.size() != size {
                    return Err(Error::usage(format!(
                        "{what} covers {} bytes, but {} has {size}: it is the map of \
                         another source (give a new map file)",
                        map.size(),
                        source.display()
                    )));
                }
                map.pass += 1;
                map
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(size),
            Err(e) => return Err(Error::io(what, "read", e)),
        };
        map.fit(size);
        let direct = File::options()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(source)
            .ok();
        let sector = crate::sys::logical_sector_size(file)
            .ok()
            .and_then(|s| usize::try_from(s).ok())
            .filter(|s| s.is_power_of_two() && *s <= RETRY_PAGE)
            .unwrap_or(512);
        let first_direct = direct.is_some()
            && file
                .metadata()
                .is_ok_and(|m| m.file_type().is_block_device());
        let header = vec![
            format!(
                "Mapfile. Created by bsync version {}",
                env!("CARGO_PKG_VERSION")
            ),
            format!("Source: {}", source.display()),
        ];
        let rescue = Rescue {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                map,
                pending: BTreeMap::new(),
                saved: Instant::now(),
                dirty: true,
            }),
            direct,
            sector,
            first_direct,
            header,
            slow_reads: AtomicU64::new(0),
            ran: Mutex::new((0, 0, Duration::ZERO)),
        };
        rescue.save(false)?;
        let rescue = Arc::new(rescue);
        *lock(&RUNNING) = Some(Arc::downgrade(&rescue));
        Ok(rescue)
    }

    /// Where the map is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the map says the `len` bytes at `pos` are finished: a
    /// block the reader need not read.
    pub fn finished(&self, pos: u64, len: u64) -> bool {
        lock(&self.state).map.finished(pos, len)
    }

    /// Whether the `len` bytes at `pos` hold areas an earlier run found
    /// bad (or had not finished trimming): the block goes straight to the
    /// sector-by-sector retry.
    pub fn known_bad(&self, pos: u64, len: u64) -> bool {
        let st = lock(&self.state);
        let end = pos + len;
        st.map.areas().iter().any(|a| {
            a.end() > pos
                && a.pos < end
                && matches!(
                    a.status,
                    Status::Bad | Status::NonTrimmed | Status::NonScraped
                )
        })
    }

    /// The first read of a block, `buf.len()` bytes at `offset`: direct
    /// from a block device, as `ddrescue -d` reads. Through the page cache
    /// a failed read-ahead window is read again page by page, each page a
    /// request to the failing disk, before the read fails (profiled on a
    /// loop device over FUSE: 17 s of 25 s went there, against 2.4 s for
    /// every retry). Elsewhere, and where a direct read cannot be made,
    /// through `read`.
    pub fn read_first(
        &self,
        read: &dyn Fn(&mut [u8], u64) -> std::io::Result<usize>,
        buf: &mut [u8],
        offset: u64,
    ) -> std::io::Result<usize> {
        let aligned =
            buf.as_ptr().align_offset(RETRY_PAGE) == 0 && buf.len().is_multiple_of(self.sector);
        let direct = self
            .direct
            .as_ref()
            .filter(|_| self.first_direct && aligned);
        let Some(f) = direct else {
            return read(buf, offset);
        };
        let mut got = 0;
        while got < buf.len() {
            match read_direct(f, &mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if got == 0 && e.raw_os_error() == Some(libc::EINVAL) => {
                    return read(buf, offset);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }

    /// Count a read that took `took`.
    pub fn timed(&self, took: Duration) {
        if took > SLOW_READ {
            self.slow_reads.fetch_add(1, Relaxed);
        }
    }

    /// Read block `index` (or a piece of it), `buf.len()` bytes at
    /// `offset`, again in pages and sectors after a failed read: what fails is zeroed in `buf` and
    /// returned, and marked bad in the map.
    pub fn recover(
        &self,
        read: &dyn Fn(&mut [u8], u64) -> std::io::Result<usize>,
        index: u64,
        offset: u64,
        buf: &mut [u8],
        stats: &Stats,
    ) -> Result<Unreadable> {
        let reverse = lock(&self.state).map.reverse();
        let mut scratch = PinnedBuf::new(RETRY_CHUNK, false, false).map_err(|e| {
            Error::io(
                self.path.display().to_string(),
                "allocate a retry buffer",
                e,
            )
        })?;
        let mut bad: Unreadable = Vec::new();
        let mut grains = vec![RETRY_CHUNK, RETRY_PAGE, self.sector];
        grains.dedup();
        let mut pass = Retry {
            read,
            scratch: &mut scratch,
            offset,
            reverse,
            stats,
            bad: &mut bad,
        };
        self.retry(&mut pass, buf, (0, buf.len()), &grains);
        bad.sort_unstable();
        let bad = merge(bad);
        let lost: u64 = bad.iter().map(|&(_, n)| n as u64).sum();
        Stats::add(&stats.bytes_unreadable, lost);
        let mut st = lock(&self.state);
        let absolute: Vec<(u64, u64)> = bad
            .iter()
            .map(|&(s, n)| (offset + s as u64, n as u64))
            .collect();
        for &(pos, len) in &absolute {
            st.map.set(pos, len, Status::Bad);
        }
        // A block read in pieces gathers each piece's; a range read again
        // (a block sent again after a rejoin) replaces what it found before.
        let end = offset + buf.len() as u64;
        let pending = st.pending.entry(index).or_default();
        pending.retain(|&(pos, _)| pos < offset || pos >= end);
        pending.extend(absolute);
        st.dirty = true;
        drop(st);
        if !bad.is_empty() {
            self.save(false)?;
        }
        Ok(bad)
    }

    /// Read `buf[start..end]` again in pieces of the first of `grains`,
    /// and each piece that fails in the next grain; a piece of the last
    /// grain that fails is unreadable: zeroed and recorded.
    fn retry(&self, pass: &mut Retry<'_>, buf: &mut [u8], span: (usize, usize), grains: &[usize]) {
        let Some((&grain, finer)) = grains.split_first() else {
            return;
        };
        for (p0, p1) in pieces(pass.offset, span.0, span.1, grain, pass.reverse) {
            let at = pass.offset + p0 as u64;
            if self.read_piece(pass.read, pass.scratch, at, p1 - p0) {
                buf[p0..p1].copy_from_slice(&pass.scratch[..p1 - p0]);
                continue;
            }
            Stats::add(&pass.stats.read_errors, 1);
            if finer.is_empty() {
                buf[p0..p1].fill(0);
                pass.bad.push((p0, p1 - p0));
            } else {
                self.retry(pass, buf, (p0, p1), finer);
            }
        }
    }

    /// One retry read of `n` bytes at `p0` into `scratch`: direct when it
    /// can be.
    fn read_piece(
        &self,
        read: &dyn Fn(&mut [u8], u64) -> std::io::Result<usize>,
        scratch: &mut PinnedBuf,
        p0: u64,
        n: usize,
    ) -> bool {
        let started = Instant::now();
        let ok = match &self.direct {
            // Direct reads want whole sectors: a short tail reads a whole
            // sector and keeps what exists.
            Some(f) => {
                let whole = n.div_ceil(self.sector) * self.sector;
                match read_direct(f, &mut scratch[..whole], p0) {
                    Ok(got) => got >= n,
                    // The file system takes no direct reads of this shape.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        matches!(read(&mut scratch[..n], p0), Ok(got) if got == n)
                    }
                    Err(_) => false,
                }
            }
            None => matches!(read(&mut scratch[..n], p0), Ok(got) if got == n),
        };
        self.timed(started.elapsed());
        ok
    }

    /// The destination holds block `index` (`len` bytes at `pos`): its
    /// sectors that were read become finished, its bad ones stay bad.
    pub fn done(&self, index: u64, pos: u64, len: u64) -> Result<()> {
        let save = {
            let mut st = lock(&self.state);
            st.map.set(pos, len, Status::Finished);
            if let Some(bad) = st.pending.remove(&index) {
                for (p, n) in bad {
                    st.map.set(p, n, Status::Bad);
                }
            }
            st.map.current = pos + len;
            st.dirty = true;
            st.saved.elapsed() >= SAVE_EVERY
        };
        if save {
            self.save(false)?;
        }
        Ok(())
    }

    /// Write the map (atomically: a temporary file beside it, renamed over
    /// it) if anything changed; `finished` says the run is over.
    pub fn save(&self, finished: bool) -> Result<()> {
        let mut st = lock(&self.state);
        if !st.dirty && !finished {
            return Ok(());
        }
        let text = st.map.format(&self.header, finished);
        let tmp = temp_path(&self.path);
        let what = format!("rescue map {}", self.path.display());
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_data()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(what, "write", e)
        })?;
        st.saved = Instant::now();
        st.dirty = false;
        Ok(())
    }

    /// Bytes (finished, bad, not yet tried) in the map.
    pub fn totals(&self) -> (u64, u64, u64) {
        lock(&self.state).map.totals()
    }

    /// Finish the run: the last map, the rescue's summary line, and the
    /// error that gives the run its exit status (4) when some sectors stayed
    /// unreadable.
    pub fn finish(&self, log: &Log, stats: &Stats, elapsed: Duration) -> Result<()> {
        self.finish_as(log, stats, elapsed, false)
    }

    /// [`Rescue::finish`]; `patch`: of a run that wrote a patch, not the
    /// destination.
    fn finish_as(&self, log: &Log, stats: &Stats, elapsed: Duration, patch: bool) -> Result<()> {
        self.save(true)?;
        log.info(self.summary(stats, elapsed, patch));
        let (_, bad, _) = self.totals();
        if bad == 0 {
            return Ok(());
        }
        Err(Error::Unreadable(format!(
            "{} ({bad} bytes) of the source could not be read and {}; \
             they are marked - in the map {}: run again with the same -rescue to retry them",
            human_bytes(bad),
            if patch {
                "are unknown spans of the patch (applying it leaves the target's own bytes there)"
            } else {
                "were not written"
            },
            self.path.display()
        )))
    }

    /// `--write-patch`: the session that read the source ended after
    /// `elapsed`; [`Rescue::patched`] finishes the rescue once the patch is
    /// written.
    pub fn ran(&self, stats: &Stats, elapsed: Duration) {
        *lock(&self.ran) = (
            stats.read_errors.load(Relaxed),
            stats.bytes_unreadable.load(Relaxed),
            elapsed,
        );
    }

    /// `--write-patch`: the patch is written. Its blocks are not at the
    /// destination (a dry run writes nothing there), so the map never says
    /// they are: they stay `?` (or as they were), and a later run with this
    /// map reads them again, whether the patch was applied or not. Only
    /// what the reads found is kept: sectors that failed are `-`, and those
    /// an earlier run found bad that read this time are `?` again. Then as
    /// [`Rescue::finish`].
    pub fn patched(&self, geo: Geometry, log: &Log) -> Result<()> {
        {
            let mut st = lock(&self.state);
            for (index, bad) in std::mem::take(&mut st.pending) {
                let len = geo.len(index) as u64;
                st.map
                    .replace(geo.offset(index), len, Status::Bad, Status::NonTried);
                for (p, n) in bad {
                    st.map.set(p, n, Status::Bad);
                }
            }
            st.dirty = true;
        }
        let (errors, lost, elapsed) = *lock(&self.ran);
        let stats = Stats::default();
        Stats::add(&stats.read_errors, errors);
        Stats::add(&stats.bytes_unreadable, lost);
        self.finish_as(log, &stats, elapsed, true)
    }

    /// `rescue: 1.0 GiB rescued, 51.0 KiB unreadable in 100 areas, ...`;
    /// `patch`: of a run that wrote a patch, whose blocks stay `?`.
    pub fn summary(&self, stats: &Stats, elapsed: Duration, patch: bool) -> String {
        let st = lock(&self.state);
        let (rescued, bad, untried) = st.map.totals();
        let areas = st
            .map
            .areas()
            .iter()
            .filter(|a| a.status == Status::Bad)
            .count();
        drop(st);
        let errors = stats.read_errors.load(Relaxed);
        let head = if patch {
            let before = if rescued > 0 {
                format!(", {} finished (+) by earlier runs", human_bytes(rescued))
            } else {
                String::new()
            };
            format!(
                "{} read into the patch stay ? in the map (not at the destination: a \
                 later run with this map reads them again){before}",
                human_bytes(untried)
            )
        } else {
            format!("{} rescued", human_bytes(rescued))
        };
        let mut line = format!(
            "rescue: {head}, {} unreadable in {areas} {} ({} new this run); \
             {errors} failed {}, {}",
            human_bytes(bad),
            plural(areas as u64, "area"),
            human_bytes(stats.bytes_unreadable.load(Relaxed)),
            plural(errors, "read"),
            error_rate(errors, elapsed),
        );
        let slow = self.slow_reads.load(Relaxed);
        if slow > 0 {
            let _ = write!(
                line,
                "; {slow} {} slower than {} s",
                plural(slow, "read"),
                SLOW_READ.as_secs()
            );
        }
        if untried > 0 && !patch {
            let _ = write!(line, "; {} not tried", human_bytes(untried));
        }
        let _ = write!(line, "; map {}", self.path.display());
        line
    }
}

/// The rescue of this run, for [`save_on_interrupt`].
static RUNNING: Mutex<Option<Weak<Rescue>>> = Mutex::new(None);

/// Ctrl-C, SIGTERM, SIGHUP (the signal thread, before the process ends):
/// write the map as it stands, with every block the destination has
/// acknowledged, rather than leave the one of up to [`SAVE_EVERY`] ago,
/// whose blocks a resumed run would read again.
pub fn save_on_interrupt() {
    let running = lock(&RUNNING).as_ref().and_then(Weak::upgrade);
    if let Some(rescue) = running {
        let _ = rescue.save(false);
    }
}

/// Read errors per minute over `elapsed`: `0.0 errors/min`.
pub fn error_rate(errors: u64, elapsed: Duration) -> String {
    let minutes = elapsed.as_secs_f64().max(1.0) / 60.0;
    format!("{:.1} errors/min", errors as f64 / minutes)
}

/// `path` with `.tmp` appended, in the same directory (so the rename is
/// atomic).
fn temp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// One direct read of `buf` (aligned, whole sectors) at `offset`.
fn read_direct(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    loop {
        match f.read_at(buf, offset) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// `start..end` of a block at `base`, cut where `base + x` is a multiple
/// of `grain`, forward or backward.
fn pieces(base: u64, start: usize, end: usize, grain: usize, reverse: bool) -> Vec<(usize, usize)> {
    let misalign = usize::try_from(base % grain as u64).unwrap_or(0);
    let mut v = Vec::new();
    let mut at = start;
    while at < end {
        let next = (((at + misalign) / grain + 1) * grain - misalign).min(end);
        v.push((at, next));
        at = next;
    }
    if reverse {
        v.reverse();
    }
    v
}

/// Sorted ranges with touching ones joined.
fn merge(sorted: Unreadable) -> Unreadable {
    let mut out: Unreadable = Vec::with_capacity(sorted.len());
    for (s, n) in sorted {
        match out.last_mut() {
            Some(last) if last.0 + last.1 == s => last.1 += n,
            _ => out.push((s, n)),
        }
    }
    out
}

/// Remove the `unreadable` ranges from `start..start + len`: the pieces
/// that remain, in order.
pub fn outside(start: usize, len: usize, unreadable: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = start;
    let end = start + len;
    for &(s, n) in unreadable {
        if s + n <= at || s >= end {
            continue;
        }
        if s > at {
            out.push((at, s - at));
        }
        at = at.max(s + n);
    }
    if at < end {
        out.push((at, end - at));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cut_at_absolute_boundaries() {
        assert_eq!(
            pieces(0, 1000, 9000, 4096, false),
            [(1000, 4096), (4096, 8192), (8192, 9000)]
        );
        // A block at 1000: its pages end where the disk's do.
        assert_eq!(
            pieces(1000, 0, 8000, 4096, false),
            [(0, 3096), (3096, 7192), (7192, 8000)]
        );
        assert_eq!(pieces(0, 0, 1024, 512, true), [(512, 1024), (0, 512)]);
        assert!(pieces(0, 5, 5, 512, false).is_empty());
    }

    #[test]
    fn merge_joins_touching_ranges() {
        assert_eq!(
            merge(vec![(0, 512), (512, 512), (2048, 512)]),
            [(0, 1024), (2048, 512)]
        );
    }

    #[test]
    fn outside_leaves_what_can_be_written() {
        let bad = [(512, 512), (4096, 1024)];
        assert_eq!(outside(0, 4096, &bad), [(0, 512), (1024, 3072)]);
        assert_eq!(outside(4096, 4096, &bad), [(5120, 3072)]);
        assert_eq!(outside(8192, 100, &bad), [(8192, 100)]);
        assert!(outside(4096, 1024, &bad).is_empty());
    }
}
