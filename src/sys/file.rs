//! Files and block devices: the ioctls that size and tune a device,
//! positioned reads and writes, page-cache advice and writeback, and the
//! chain that makes a range read as zeros (punch hole → zero range →
//! BLKZEROOUT → writing zeros).
//!
//! Each wrapper takes a `&File`, converts its `u64` offsets with checked
//! conversions, turns a failed call into an `io::Error` and never panics.
//! Where a call has a slower equivalent the wrapper holds the whole fallback
//! chain, so callers ask for an effect, not a syscall.
//!
//! The block-device ioctl numbers come from `<linux/fs.h>`; the `libc` crate
//! only carries `BLKSSZGET`, so they are encoded here.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};

use super::{check, to_c};

/// `_IOC` direction bits and shift: most architectures use the asm-generic
/// layout, these few their own.
#[cfg(any(
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "mips32r6",
    target_arch = "mips64r6",
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "sparc",
    target_arch = "sparc64"
))]
mod ioc {
    pub const NONE: u32 = 1;
    pub const READ: u32 = 2;
    pub const DIRSHIFT: u32 = 29;
}
#[cfg(not(any(
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "mips32r6",
    target_arch = "mips64r6",
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "sparc",
    target_arch = "sparc64"
)))]
mod ioc {
    pub const NONE: u32 = 0;
    pub const READ: u32 = 2;
    pub const DIRSHIFT: u32 = 30;
}

/// The kernel's `_IOC(dir, type, nr, size)` macro.
#[allow(clippy::cast_possible_truncation)]
const fn ioc(dir: u32, ty: u32, nr: u32, size: usize) -> u32 {
    // Argument sizes are a few bytes: the cast cannot truncate.
    (dir << ioc::DIRSHIFT) | ((size as u32) << 16) | (ty << 8) | nr
}

const BLKROGET: u32 = ioc(ioc::NONE, 0x12, 94, 0);
const BLKRASET: u32 = ioc(ioc::NONE, 0x12, 98, 0);
const BLKRAGET: u32 = ioc(ioc::NONE, 0x12, 99, 0);
const BLKSSZGET: u32 = ioc(ioc::NONE, 0x12, 104, 0);
// The kernel header says `size_t` but the value is a u64: the number encodes
// sizeof(size_t), which is what has to match.
const BLKGETSIZE64: u32 = ioc(ioc::READ, 0x12, 114, std::mem::size_of::<usize>());
const BLKZEROOUT: u32 = ioc(ioc::NONE, 0x12, 127, 0);

/// The request argument of `ioctl` is `unsigned long` in glibc and `int` in
/// musl; the kernel reads it as an unsigned 32-bit number either way, so a
/// wrapping cast is the intended conversion.
#[allow(clippy::cast_lossless, clippy::cast_possible_wrap)]
fn req(n: u32) -> libc::Ioctl {
    n as libc::Ioctl
}

/// The largest piece `clear_range` writes at once when it has to write zeros.
const ZERO_CHUNK: usize = 1 << 20;
/// Shared source of zeros for writes: in `.bss`, so it costs no binary size
/// and no allocation per call.
static ZEROS: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];

/// Bytes in the sector unit of `BLKRAGET`/`BLKRASET` (always 512, whatever
/// the device's own sector size).
const RA_SECTOR: u64 = 512;

/// Size in bytes of a block device (ioctl BLKGETSIZE64); lseek is not enough
/// for all devices.
pub fn block_device_size(f: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points
    // to a live local of that type; the fd is borrowed from an open File.
    check(unsafe { libc::ioctl(f.as_raw_fd(), req(BLKGETSIZE64), &mut size as *mut u64) })?;
    Ok(size)
}

/// Whether a block device is read-only (ioctl BLKROGET: `losetup -r`,
/// `blockdev --setro`, a write-protected medium).
pub fn is_read_only_device(f: &File) -> io::Result<bool> {
    let mut ro: libc::c_int = 0;
    // SAFETY: BLKROGET writes one int through the pointer, which points to a
    // live local c_int; the fd is borrowed from an open File.
    check(unsafe { libc::ioctl(f.as_raw_fd(), req(BLKROGET), &mut ro as *mut libc::c_int) })?;
    Ok(ro != 0)
}

/// `LOOP_GET_STATUS64` from `<linux/loop.h>` (a plain number, not `_IOC`).
const LOOP_GET_STATUS64: u32 = 0x4C05;
/// `struct loop_info64` is 232 bytes, all of it in 8-byte-aligned fields
/// first: `lo_device` then `lo_inode` (each a u64).
const LOOP_INFO64_WORDS: usize = 29;

/// The file behind an attached loop device, as `(st_dev, st_ino)` (ioctl
/// `LOOP_GET_STATUS64`); fails with ENXIO when nothing is attached.
pub fn loop_backing(f: &File) -> io::Result<(u64, u64)> {
    let mut info = [0u64; LOOP_INFO64_WORDS];
    // SAFETY: LOOP_GET_STATUS64 writes one struct loop_info64 (232 bytes)
    // through the pointer, which points to a live local array of that size;
    // the fd is borrowed from an open File.
    check(unsafe { libc::ioctl(f.as_raw_fd(), req(LOOP_GET_STATUS64), info.as_mut_ptr()) })?;
    Ok((info[0], info[1]))
}

/// Logical sector size (ioctl BLKSSZGET).
pub fn logical_sector_size(f: &File) -> io::Result<u32> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points to
    // a live local c_int; the fd is borrowed from an open File.
    check(unsafe { libc::ioctl(f.as_raw_fd(), req(BLKSSZGET), &mut size as *mut libc::c_int) })?;
    u32::try_from(size).map_err(|_| io::Error::other(format!("negative sector size {size}")))
}

/// Current read-ahead in bytes (ioctl BLKRAGET returns 512-byte sectors).
pub fn read_ahead(f: &File) -> io::Result<u64> {
    let mut sectors: libc::c_long = 0;
    // SAFETY: BLKRAGET writes one long through the pointer, which points to
    // a live local c_long; the fd is borrowed from an open File.
    check(unsafe {
        libc::ioctl(
            f.as_raw_fd(),
            req(BLKRAGET),
            &mut sectors as *mut libc::c_long,
        )
    })?;
    let sectors = u64::try_from(sectors)
        .map_err(|_| io::Error::other(format!("negative read-ahead {sectors}")))?;
    sectors
        .checked_mul(RA_SECTOR)
        .ok_or_else(|| io::Error::other("read-ahead overflows u64"))
}

/// Set read-ahead in bytes (ioctl BLKRASET takes 512-byte sectors; needs
/// CAP_SYS_ADMIN). `bytes` is rounded down to whole sectors.
pub fn set_read_ahead(f: &File, bytes: u64) -> io::Result<()> {
    let sectors: libc::c_ulong = to_c(bytes / RA_SECTOR)?;
    // SAFETY: BLKRASET takes its argument by value, no memory is touched;
    // the fd is borrowed from an open File.
    check(unsafe { libc::ioctl(f.as_raw_fd(), req(BLKRASET), sectors) })?;
    Ok(())
}

/// Zero a range of a block device without writing data (ioctl BLKZEROOUT,
/// range [offset, len]). The kernel wants both aligned to the logical sector
/// size and the range inside the device; otherwise this fails with EINVAL.
pub fn blk_zero_out(f: &File, offset: u64, len: u64) -> io::Result<()> {
    let range: [u64; 2] = [offset, len];
    // SAFETY: BLKZEROOUT reads two u64 (start, length) through the pointer,
    // which points to a live local array of exactly that; the fd is borrowed
    // from an open File.
    check(unsafe { libc::ioctl(f.as_raw_fd(), req(BLKZEROOUT), range.as_ptr()) })?;
    Ok(())
}

fn fallocate(f: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let (offset, len) = (to_c(offset)?, to_c(len)?);
    // SAFETY: fallocate touches no memory of ours; the fd is borrowed from
    // an open File.
    check(unsafe { libc::fallocate(f.as_raw_fd(), mode, offset, len) })?;
    Ok(())
}

/// fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE).
pub fn punch_hole(f: &File, offset: u64, len: u64) -> io::Result<()> {
    fallocate(
        f,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        offset,
        len,
    )
}

/// fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE).
pub fn zero_range(f: &File, offset: u64, len: u64) -> io::Result<()> {
    fallocate(
        f,
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        offset,
        len,
    )
}

/// Access-pattern advice for [`fadvise`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Advice {
    /// `POSIX_FADV_SEQUENTIAL`: read ahead aggressively.
    Sequential,
    /// `POSIX_FADV_DONTNEED`: drop these (clean) pages from the page cache.
    DontNeed,
    /// `POSIX_FADV_WILLNEED`: start reading these pages now.
    WillNeed,
}

/// posix_fadvise (note: returns the error number directly, not via errno).
/// len 0 = to end of file.
pub fn fadvise(f: &File, offset: u64, len: u64, advice: Advice) -> io::Result<()> {
    let advice = match advice {
        Advice::Sequential => libc::POSIX_FADV_SEQUENTIAL,
        Advice::DontNeed => libc::POSIX_FADV_DONTNEED,
        Advice::WillNeed => libc::POSIX_FADV_WILLNEED,
    };
    let (offset, len) = (to_c(offset)?, to_c(len)?);
    // SAFETY: posix_fadvise touches no memory of ours; the fd is borrowed
    // from an open File.
    let err = unsafe { libc::posix_fadvise(f.as_raw_fd(), offset, len, advice) };
    if err == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(err))
    }
}

/// `cachestat`'s number on every Linux architecture (the system calls
/// numbered from 424 on are one table); `libc` names it for few targets.
const SYS_CACHESTAT: libc::c_long = 451;

/// How many of the first `len` bytes of `f` are in the page cache, in
/// whole pages (`cachestat`, Linux 6.5), without touching them. An error
/// where the kernel cannot say (older kernels: `ENOSYS`).
pub fn cached_bytes(f: &File, len: u64) -> io::Result<u64> {
    /// `struct cachestat_range`.
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    /// `struct cachestat`: pages cached, dirty, under writeback, evicted,
    /// recently evicted.
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    if len == 0 {
        return Ok(0);
    }
    let range = Range { off: 0, len };
    let mut stat = Stat::default();
    // SAFETY: cachestat reads one `struct cachestat_range` and writes one
    // `struct cachestat`, both live locals of those layouts; the fd is
    // borrowed from an open File; flags must be 0.
    let ret = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            f.as_raw_fd(),
            &raw const range,
            &raw mut stat,
            0 as libc::c_uint,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sysconf only reads a constant of the running system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = u64::try_from(page).ok().filter(|&p| p > 0).unwrap_or(4096);
    Ok(stat.nr_cache.saturating_mul(page).min(len))
}

fn sync_file_range(f: &File, offset: u64, len: u64, flags: libc::c_uint) -> io::Result<()> {
    let (offset, len) = (to_c(offset)?, to_c(len)?);
    // SAFETY: sync_file_range touches no memory of ours; the fd is borrowed
    // from an open File.
    check(unsafe { libc::sync_file_range(f.as_raw_fd(), offset, len, flags) })?;
    Ok(())
}

/// Whether a `sync_file_range` error only means the call does not apply to
/// this file (a pipe, a file system without it): writeback then happens in
/// bursts, which is fine. Anything else is the kernel reporting a write that
/// failed, and it says so only once per open file.
pub fn writeback_unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ESPIPE) || not_supported(e)
}

/// sync_file_range(SYNC_FILE_RANGE_WRITE): start writeback of dirty pages
/// without waiting. len 0 = to end of file.
pub fn start_writeback(f: &File, offset: u64, len: u64) -> io::Result<()> {
    sync_file_range(f, offset, len, libc::SYNC_FILE_RANGE_WRITE)
}

/// sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER) on a range: wait for it
/// to reach the disk queue. This is not a durability barrier (no metadata,
/// no cache flush): `File::sync_data` still ends a run. len 0 = to end of
/// file.
pub fn wait_writeback(f: &File, offset: u64, len: u64) -> io::Result<()> {
    sync_file_range(
        f,
        offset,
        len,
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER,
    )
}

/// Whether this process may write `path` (`access(W_OK)`), asked without
/// opening, creating or changing anything.
pub fn may_write(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call, which
    // only reads it.
    check(unsafe { libc::access(c.as_ptr(), libc::W_OK) }).map(drop)
}

/// True if the file is a block device (fstat S_ISBLK).
pub fn is_block_device(f: &File) -> io::Result<bool> {
    Ok(f.metadata()?.file_type().is_block_device())
}

/// Writes all of `buf` at `offset`, retrying short writes, EINTR and
/// (briefly) EAGAIN.
pub fn pwrite_all(f: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    write_all_with(buf, offset, |b, at| f.write_at(b, at))
}

/// Reads at `offset` until `buf` is full or end of file, retrying EINTR and
/// (briefly) EAGAIN; returns the number of bytes read (less than
/// `buf.len()` only at EOF).
pub fn pread_full(f: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    read_full_with(buf, offset, |b, at| f.read_at(b, at))
}

/// How many EAGAINs in a row a read or write loop waits out (1 ms each)
/// before it gives up: a blocking file never says it, a device that says it
/// forever must not hang the run.
const EAGAIN_RETRIES: u32 = 1000;

/// What a read or write loop does after an error: retry, or give up.
fn retry(e: &io::Error, eagain: &mut u32) -> bool {
    match e.kind() {
        io::ErrorKind::Interrupted => true,
        io::ErrorKind::WouldBlock if *eagain < EAGAIN_RETRIES => {
            *eagain += 1;
            std::thread::sleep(std::time::Duration::from_millis(1));
            true
        }
        _ => false,
    }
}

fn at(offset: u64, done: usize) -> io::Result<u64> {
    offset
        .checked_add(done as u64)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset overflows"))
}

/// [`pread_full`] over any positioned read (`read(buf, offset)`, one call
/// of `pread`): the strict vector I/O tests drive it through a shim that
/// returns short counts, EINTR and EAGAIN at every position.
pub fn read_full_with(
    buf: &mut [u8],
    offset: u64,
    mut read: impl FnMut(&mut [u8], u64) -> io::Result<usize>,
) -> io::Result<usize> {
    let mut done = 0;
    let mut eagain = 0;
    while done < buf.len() {
        match read(&mut buf[done..], at(offset, done)?) {
            Ok(0) => break,
            Ok(n) => {
                done += n.min(buf.len() - done);
                eagain = 0;
            }
            Err(e) if retry(&e, &mut eagain) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// [`pwrite_all`] over any positioned write (one call of `pwrite`).
pub fn write_all_with(
    buf: &[u8],
    offset: u64,
    mut write: impl FnMut(&[u8], u64) -> io::Result<usize>,
) -> io::Result<()> {
    let mut done = 0;
    let mut eagain = 0;
    while done < buf.len() {
        match write(&buf[done..], at(offset, done)?) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                done += n.min(buf.len() - done);
                eagain = 0;
            }
            Err(e) if retry(&e, &mut eagain) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Where the next data at or after `offset` starts (`lseek` `SEEK_DATA`):
/// everything between is a hole and reads as zeros. `None` when only a
/// hole follows up to the end of the file. A file system that cannot say
/// reports data at `offset`, so callers read it as before.
pub fn next_data(f: &File, offset: u64) -> io::Result<Option<u64>> {
    let at: libc::off_t = to_c(offset)?;
    // SAFETY: lseek only moves this descriptor's file offset, which bsync
    // never relies on (every read and write is positioned); it touches no
    // memory of ours.
    let ret = unsafe { libc::lseek(f.as_raw_fd(), at, libc::SEEK_DATA) };
    if ret >= 0 {
        return Ok(u64::try_from(ret).ok());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // No data past `offset`.
        Some(libc::ENXIO) => Ok(None),
        // SEEK_DATA unsupported here: no holes are known.
        Some(libc::EINVAL | libc::EOPNOTSUPP) => Ok(Some(offset)),
        _ => Err(e),
    }
}

/// How a zero range was cleared (so a verbose mode can report it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cleared {
    /// `fallocate(PUNCH_HOLE)`: the range is now unallocated.
    PunchedHole,
    /// `fallocate(ZERO_RANGE)`: allocated, but marked as reading zeros.
    ZeroRange,
    /// `ioctl(BLKZEROOUT)` on the sector-aligned middle (any unaligned
    /// edges were written).
    DeviceZeroOut,
    /// Zeros were written with pwrite (also the answer for an empty range).
    WroteZeros,
}

/// True for the errors that mean "this method is not available here", after
/// which the next, slower method is worth trying. Anything else (EIO,
/// ENOSPC, EBADF...) is a real failure that another method would only hide.
pub fn not_supported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOTTY | libc::ENOSYS)
    ) || e.raw_os_error() == Some(libc::ENOTSUP)
}

/// Make [offset, offset+len) of `f` read as zeros, trying in order:
/// block device: BLKZEROOUT, then writing zeros; regular file: punch hole,
/// then FALLOC_FL_ZERO_RANGE, then writing zeros (pwrite from a static zero
/// buffer, at most 1 MiB a call). Falls through to the next method only on
/// "not supported" style errors (EOPNOTSUPP, ENOTSUP, EINVAL, ENOTTY,
/// ENOSYS); any other error (EIO, ENOSPC...) is returned.
///
/// BLKZEROOUT is used for the middle of the range aligned to the device's
/// logical sector size (512 if that cannot be read); unaligned edges are
/// written. The fallocate methods keep the file size; writing zeros past
/// the end of a regular file extends it.
pub fn clear_range(f: &File, offset: u64, len: u64, is_block_device: bool) -> io::Result<Cleared> {
    let end = offset
        .checked_add(len)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "range end overflows"))?;
    if len == 0 {
        return Ok(Cleared::WroteZeros);
    }
    if is_block_device {
        clear_device(f, offset, end)
    } else {
        clear_file(f, offset, len, Cleared::PunchedHole)
    }
}

fn clear_device(f: &File, offset: u64, end: u64) -> io::Result<Cleared> {
    let sector = logical_sector_size(f)
        .ok()
        .map(u64::from)
        .filter(|s| s.is_power_of_two() && *s >= 512)
        .unwrap_or(512);
    // Round inward. Rounding up can overflow only within the last sector of
    // the u64 range, where there is no aligned middle anyway.
    let mid_start = offset
        .checked_add(sector - 1)
        .map_or(u64::MAX, |v| v & !(sector - 1));
    let mid_end = end & !(sector - 1);
    if mid_end > mid_start {
        match blk_zero_out(f, mid_start, mid_end - mid_start) {
            Ok(()) => {
                write_zeros(f, offset, mid_start - offset)?;
                write_zeros(f, mid_end, end - mid_end)?;
                return Ok(Cleared::DeviceZeroOut);
            }
            Err(e) if not_supported(&e) => {}
            Err(e) => return Err(e),
        }
    }
    write_zeros(f, offset, end - offset)?;
    Ok(Cleared::WroteZeros)
}

/// The regular-file chain, entered at `first` so tests can exercise the
/// later steps on file systems that support the earlier ones.
fn clear_file(f: &File, offset: u64, len: u64, first: Cleared) -> io::Result<Cleared> {
    if first == Cleared::PunchedHole {
        match punch_hole(f, offset, len) {
            Ok(()) => return Ok(Cleared::PunchedHole),
            Err(e) if not_supported(&e) => {}
            Err(e) => return Err(e),
        }
    }
    if matches!(first, Cleared::PunchedHole | Cleared::ZeroRange) {
        match zero_range(f, offset, len) {
            Ok(()) => return Ok(Cleared::ZeroRange),
            Err(e) if not_supported(&e) => {}
            Err(e) => return Err(e),
        }
    }
    write_zeros(f, offset, len)?;
    Ok(Cleared::WroteZeros)
}

fn write_zeros(f: &File, mut offset: u64, mut len: u64) -> io::Result<()> {
    while len > 0 {
        let n = usize::try_from(len).map_or(ZERO_CHUNK, |l| l.min(ZERO_CHUNK));
        pwrite_all(f, &ZEROS[..n], offset)?;
        offset += n as u64;
        len -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory under `parent`, removed with its contents on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new_in(parent: &Path) -> TempDir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = parent.join(format!("bsync-sys-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Directories on the file systems the tests should see: the worktree's
    /// `target/` (the real disk), the system temp dir, and tmpfs if present.
    fn test_parents() -> Vec<PathBuf> {
        let mut v = vec![
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
            std::env::temp_dir(),
        ];
        if Path::new("/dev/shm").is_dir() {
            v.push(PathBuf::from("/dev/shm"));
        }
        v
    }

    fn rw(path: &Path) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap()
    }

    /// A file of `len` bytes of a non-zero pattern, flushed so its blocks
    /// are allocated and counted in st_blocks.
    fn patterned_file(path: &Path, len: usize) -> (File, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
        let f = rw(path);
        pwrite_all(&f, &data, 0).unwrap();
        f.sync_all().unwrap();
        (f, data)
    }

    fn read_all(f: &File, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        assert_eq!(pread_full(f, &mut buf, 0).unwrap(), len);
        buf
    }

    /// Asserts [off, off+len) reads as zeros and everything else as `orig`.
    fn assert_cleared(got: &[u8], orig: &[u8], off: usize, len: usize) {
        assert_eq!(got.len(), orig.len());
        assert!(
            got[off..off + len].iter().all(|&b| b == 0),
            "range not zero"
        );
        assert_eq!(&got[..off], &orig[..off], "bytes before the range changed");
        assert_eq!(
            &got[off + len..],
            &orig[off + len..],
            "bytes after the range changed"
        );
    }

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn ioctl_numbers_match_linux_headers() {
        assert_eq!(BLKRASET, 0x1262);
        assert_eq!(BLKRAGET, 0x1263);
        assert_eq!(BLKSSZGET, 0x1268);
        assert_eq!(BLKGETSIZE64, 0x8008_1272);
        assert_eq!(BLKZEROOUT, 0x127f);
    }

    #[test]
    fn ioctl_encoding_agrees_with_libc() {
        assert_eq!(req(BLKSSZGET), libc::BLKSSZGET);
    }

    #[test]
    fn clear_range_regular_file_on_each_fs() {
        const LEN: usize = (1 << 20) + 123;
        // Unaligned both ends, covering many whole 4 KiB blocks.
        let (off, len) = (3 * 4096 + 100, 50 * 4096 + 333);
        for parent in test_parents() {
            let dir = TempDir::new_in(&parent);
            let path = dir.0.join("data");
            let (f, orig) = patterned_file(&path, LEN);
            let blocks_before = f.metadata().unwrap().blocks();
            let how = clear_range(&f, off as u64, len as u64, false).unwrap();
            let meta = f.metadata().unwrap();
            eprintln!(
                "{}: {how:?}, st_blocks {blocks_before} -> {}",
                parent.display(),
                meta.blocks()
            );
            assert_eq!(meta.len(), LEN as u64, "size changed");
            assert_cleared(&read_all(&f, LEN), &orig, off, len);
            if how == Cleared::PunchedHole {
                assert!(meta.blocks() < blocks_before, "hole punch freed nothing");
            }
        }
    }

    #[test]
    fn clear_file_later_steps_of_the_chain() {
        const LEN: usize = 300_000;
        let (off, len) = (4097, 200_001);
        for parent in test_parents() {
            for first in [Cleared::ZeroRange, Cleared::WroteZeros] {
                let dir = TempDir::new_in(&parent);
                let path = dir.0.join("data");
                let (f, orig) = patterned_file(&path, LEN);
                let how = clear_file(&f, off as u64, len as u64, first).unwrap();
                eprintln!("{}: from {first:?}: {how:?}", parent.display());
                if first == Cleared::WroteZeros {
                    assert_eq!(how, Cleared::WroteZeros);
                } else {
                    // tmpfs has no ZERO_RANGE and must fall through.
                    assert!(matches!(how, Cleared::ZeroRange | Cleared::WroteZeros));
                }
                assert_eq!(f.metadata().unwrap().len(), LEN as u64);
                assert_cleared(&read_all(&f, LEN), &orig, off, len);
            }
        }
    }

    #[test]
    fn write_zeros_spans_several_chunks() {
        let dir = TempDir::new_in(&test_parents()[0]);
        let len = 2 * ZERO_CHUNK + 5000;
        let (f, orig) = patterned_file(&dir.0.join("data"), len + 10);
        write_zeros(&f, 3, len as u64 - 3).unwrap();
        assert_cleared(&read_all(&f, len + 10), &orig, 3, len - 3);
    }

    #[test]
    fn clear_range_edge_cases() {
        let dir = TempDir::new_in(&test_parents()[0]);
        let (f, orig) = patterned_file(&dir.0.join("data"), 1000);
        assert_eq!(clear_range(&f, 10, 0, false).unwrap(), Cleared::WroteZeros);
        let e = clear_range(&f, u64::MAX, 2, false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = clear_range(&f, 1 << 63, 2, false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(read_all(&f, 1000), orig);
    }

    #[test]
    fn clear_range_returns_real_errors() {
        let dir = TempDir::new_in(&test_parents()[0]);
        let path = dir.0.join("data");
        let (_, orig) = patterned_file(&path, 10_000);
        let ro = File::open(&path).unwrap();
        // EBADF is not "unsupported": it must come back, not be papered over.
        let e = clear_range(&ro, 0, 5000, false).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
        assert_eq!(read_all(&ro, 10_000), orig);
    }

    #[test]
    fn not_supported_classification() {
        for errno in [
            libc::EOPNOTSUPP,
            libc::ENOTSUP,
            libc::EINVAL,
            libc::ENOTTY,
            libc::ENOSYS,
        ] {
            assert!(not_supported(&io::Error::from_raw_os_error(errno)));
        }
        for errno in [libc::EIO, libc::ENOSPC, libc::EBADF, libc::EPERM] {
            assert!(!not_supported(&io::Error::from_raw_os_error(errno)));
        }
        assert!(!not_supported(&io::Error::other("x")));
    }

    #[test]
    fn advice_and_writeback_on_regular_file() {
        let dir = TempDir::new_in(&test_parents()[0]);
        let (f, _) = patterned_file(&dir.0.join("data"), 100_000);
        pwrite_all(&f, &[9u8; 5000], 4096).unwrap();
        for advice in [Advice::Sequential, Advice::WillNeed, Advice::DontNeed] {
            fadvise(&f, 0, 0, advice).unwrap();
            fadvise(&f, 4096, 8192, advice).unwrap();
        }
        start_writeback(&f, 0, 0).unwrap();
        start_writeback(&f, 4096, 5000).unwrap();
        wait_writeback(&f, 4096, 5000).unwrap();
        wait_writeback(&f, 0, 0).unwrap();
        let e = fadvise(&f, u64::MAX, 0, Advice::DontNeed).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = start_writeback(&f, 0, u64::MAX).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn block_ioctls_on_regular_file_fail_cleanly() {
        let dir = TempDir::new_in(&test_parents()[0]);
        let (f, _) = patterned_file(&dir.0.join("data"), 4096);
        let enotty = Some(libc::ENOTTY);
        assert_eq!(block_device_size(&f).unwrap_err().raw_os_error(), enotty);
        assert_eq!(logical_sector_size(&f).unwrap_err().raw_os_error(), enotty);
        assert_eq!(read_ahead(&f).unwrap_err().raw_os_error(), enotty);
        assert_eq!(
            set_read_ahead(&f, 4 << 20).unwrap_err().raw_os_error(),
            enotty
        );
        assert_eq!(blk_zero_out(&f, 0, 512).unwrap_err().raw_os_error(), enotty);
        assert!(!is_block_device(&f).unwrap());
    }

    #[test]
    fn pread_full_stops_at_eof() {
        let dir = TempDir::new_in(&test_parents()[0]);
        let (f, orig) = patterned_file(&dir.0.join("data"), 3000);
        let mut buf = [0u8; 4096];
        assert_eq!(pread_full(&f, &mut buf, 1000).unwrap(), 2000);
        assert_eq!(&buf[..2000], &orig[1000..]);
        assert_eq!(pread_full(&f, &mut buf, 5000).unwrap(), 0);
    }

    /// A loop device, detached on drop even when the test fails.
    struct Loop(String);

    impl Loop {
        fn attach(file: &Path, sector: u32) -> Option<Loop> {
            let out = Command::new("losetup")
                .args(["-f", "--show", "--sector-size", &sector.to_string()])
                .arg(file)
                .output()
                .ok()?;
            if !out.status.success() {
                eprintln!(
                    "skipping loop-device test: losetup failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                return None;
            }
            Some(Loop(
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
            ))
        }
    }

    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = Command::new("losetup").args(["-d", &self.0]).status();
        }
    }

    fn loop_device_case(sector: u32) {
        const SIZE: usize = 4 << 20;
        let dir = TempDir::new_in(&test_parents()[0]);
        let backing = dir.0.join("disk");
        let (_, orig) = patterned_file(&backing, SIZE);
        let Some(dev) = Loop::attach(&backing, sector) else {
            return;
        };
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dev.0)
            .unwrap();
        eprintln!("loop device {} with {sector}-byte sectors", dev.0);
        assert!(is_block_device(&f).unwrap());
        assert_eq!(block_device_size(&f).unwrap(), SIZE as u64);
        assert_eq!(logical_sector_size(&f).unwrap(), sector);
        let ra = read_ahead(&f).unwrap();
        set_read_ahead(&f, 4 << 20).unwrap();
        assert_eq!(read_ahead(&f).unwrap(), 4 << 20);
        set_read_ahead(&f, ra).unwrap();
        assert_eq!(read_ahead(&f).unwrap(), ra);

        // Unaligned edges around a sector-aligned middle.
        let (off, len) = (1000, 100_000);
        assert_eq!(
            clear_range(&f, off as u64, len as u64, true).unwrap(),
            Cleared::DeviceZeroOut
        );
        assert_cleared(&read_all(&f, SIZE), &orig, off, len);
        let mut expect = orig.clone();
        expect[off..off + len].fill(0);

        // Inside one sector there is no aligned middle: plain writes.
        let (off2, len2) = (200_010, 20);
        assert_eq!(
            clear_range(&f, off2 as u64, len2 as u64, true).unwrap(),
            Cleared::WroteZeros
        );
        expect[off2..off2 + len2].fill(0);
        assert_eq!(read_all(&f, SIZE), expect);

        // Up to the very end of the device.
        let off3 = SIZE - 70_000 - 3;
        assert_eq!(
            clear_range(&f, off3 as u64, (SIZE - off3) as u64, true).unwrap(),
            Cleared::DeviceZeroOut
        );
        expect[off3..].fill(0);
        assert_eq!(read_all(&f, SIZE), expect);

        // Past the end: BLKZEROOUT refuses, the write fallback fails too.
        assert!(clear_range(&f, SIZE as u64 - 512, 4096, true).is_err());

        // Everything reached the backing file as well.
        f.sync_all().unwrap();
        drop(f);
        drop(dev);
        assert_eq!(std::fs::read(&backing).unwrap(), expect);
    }

    #[test]
    fn loop_device_512_byte_sectors() {
        loop_device_case(512);
    }

    /// A 4 KiB-sector device rejects 512-aligned BLKZEROOUT ranges, so the
    /// aligned middle must follow the logical sector size.
    #[test]
    fn loop_device_4k_sectors() {
        loop_device_case(4096);
    }

    /// A shim over a byte vector that answers each call with a short count,
    /// EINTR or EAGAIN as `script` says for that call, then behaves.
    fn scripted(
        script: &[Option<i32>],
        short: usize,
    ) -> impl FnMut(usize) -> io::Result<usize> + '_ {
        let mut call = 0;
        move |want: usize| {
            let step = script.get(call).copied().flatten();
            call += 1;
            match step {
                Some(errno) => Err(io::Error::from_raw_os_error(errno)),
                None => Ok(want.min(short)),
            }
        }
    }

    #[test]
    fn strict_vector_io_survives_short_counts_eintr_and_eagain_at_every_position() {
        let data: Vec<u8> = (0..100u8).collect();
        for errno in [libc::EINTR, libc::EAGAIN] {
            for pos in 0..12 {
                for short in [1, 7, 100] {
                    let mut script = vec![None; pos];
                    script.push(Some(errno));
                    // Reads.
                    let mut answer = scripted(&script, short);
                    let mut out = vec![0u8; 100];
                    let n = read_full_with(&mut out, 5, |b, at| {
                        let k = answer(b.len())?;
                        let at = at as usize - 5;
                        b[..k].copy_from_slice(&data[at..at + k]);
                        Ok(k)
                    })
                    .unwrap();
                    assert_eq!(
                        (n, &out),
                        (100, &data),
                        "read: errno {errno} at call {pos}, short {short}"
                    );
                    // Writes.
                    let mut answer = scripted(&script, short);
                    let mut sink = vec![0u8; 100];
                    write_all_with(&data, 0, |b, at| {
                        let k = answer(b.len())?;
                        sink[at as usize..at as usize + k].copy_from_slice(&b[..k]);
                        Ok(k)
                    })
                    .unwrap();
                    assert_eq!(
                        sink, data,
                        "write: errno {errno} at call {pos}, short {short}"
                    );
                }
            }
        }
    }

    #[test]
    fn strict_vector_io_reports_enospc_and_eio() {
        for errno in [libc::ENOSPC, libc::EIO] {
            let e = write_all_with(&[1u8; 10], 0, |_, _| {
                Err(io::Error::from_raw_os_error(errno))
            })
            .unwrap_err();
            assert_eq!(e.raw_os_error(), Some(errno));
            let e = read_full_with(&mut [0u8; 10], 0, |_, _| {
                Err(io::Error::from_raw_os_error(errno))
            })
            .unwrap_err();
            assert_eq!(e.raw_os_error(), Some(errno));
        }
        // A device that says EAGAIN forever ends in an error, not a hang.
        let e = write_all_with(&[1u8; 10], 0, |_, _| {
            Err(io::Error::from_raw_os_error(libc::EAGAIN))
        })
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        // A write of zero bytes is an error, not an endless loop.
        assert!(write_all_with(&[1u8; 10], 0, |_, _| Ok(0)).is_err());
    }

    #[test]
    fn cached_bytes_tells_a_read_file_from_an_evicted_one() {
        let dir = TempDir::new_in(&Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
        let path = dir.0.join("f");
        std::fs::write(&path, vec![1u8; 3 << 16]).unwrap();
        let f = File::open(&path).unwrap();
        f.sync_all().unwrap();
        let len = f.metadata().unwrap().len();
        match cached_bytes(&f, len) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => return,
            Err(e) => panic!("cachestat: {e}"),
        }
        assert_eq!(cached_bytes(&f, 0).unwrap(), 0);
        fadvise(&f, 0, 0, Advice::DontNeed).unwrap();
        assert_eq!(cached_bytes(&f, len).unwrap(), 0);
        let mut buf = vec![0u8; 1 << 16];
        pread_full(&f, &mut buf, 1 << 16).unwrap();
        assert_eq!(cached_bytes(&f, len).unwrap(), 1 << 16);
        let mut buf = vec![0u8; 3 << 16];
        pread_full(&f, &mut buf, 0).unwrap();
        assert_eq!(cached_bytes(&f, len).unwrap(), len);
        // Asked past the end: no more than the file holds.
        assert_eq!(cached_bytes(&f, len + 8192).unwrap(), len);
    }
}
