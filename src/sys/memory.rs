//! Memory that bsync reads blocks into: [`PinnedBuf`], an anonymous
//! mapping that asks for huge pages and mlock and gives everything back in
//! `Drop`, and the `RLIMIT_MEMLOCK` that explains a refused mlock.

use std::fmt;
use std::io;
use std::ptr::NonNull;

use super::check;

/// Transparent huge pages are 2 MiB on x86_64; smaller buffers cannot use
/// them, so they are not advised.
const HUGE_PAGE: usize = 2 << 20;

/// A page-aligned anonymous memory buffer (mmap MAP_PRIVATE|MAP_ANONYMOUS),
/// zero-initialised, of a fixed length, that bsync reads blocks into.
///
/// On creation it asks for madvise(MADV_HUGEPAGE) when len >= 2 MiB and
/// mlock(); both are best effort and [`is_huge`](Self::is_huge) and
/// [`is_locked`](Self::is_locked) tell whether they succeeded. munlock and
/// munmap happen in Drop. A zero length maps nothing.
pub struct PinnedBuf {
    ptr: NonNull<u8>,
    len: usize,
    locked: bool,
    huge: bool,
    /// errno of a refused mlock or madvise, for `-v`.
    lock_errno: Option<i32>,
    huge_errno: Option<i32>,
}

// SAFETY: PinnedBuf exclusively owns its mapping, like a Box<[u8]>: no other
// handle to the memory exists, so moving it to another thread is sound.
unsafe impl Send for PinnedBuf {}
// SAFETY: shared access only hands out `&[u8]`; mutation needs `&mut self`,
// so the usual borrow rules keep threads from racing, as for Box<[u8]>.
unsafe impl Sync for PinnedBuf {}

impl PinnedBuf {
    /// Maps `len` zeroed bytes. With `hints`, advises huge pages (len >=
    /// 2 MiB) and, with `lock` too, tries to mlock them; `lock` is false for
    /// buffers that should not count against RLIMIT_MEMLOCK.
    pub fn new(len: usize, lock: bool, hints: bool) -> io::Result<PinnedBuf> {
        if len == 0 {
            return Ok(PinnedBuf {
                ptr: NonNull::dangling(),
                len: 0,
                locked: false,
                huge: false,
                lock_errno: None,
                huge_errno: None,
            });
        }
        // SAFETY: an anonymous private mapping at an address of the kernel's
        // choosing aliases no existing memory; every argument is valid for
        // MAP_ANONYMOUS (fd -1, offset 0) and the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        // From here on Drop unmaps, also if a later step fails.
        let mut buf = PinnedBuf {
            ptr,
            len,
            locked: false,
            huge: false,
            lock_errno: None,
            huge_errno: None,
        };
        if !hints {
            return Ok(buf);
        }
        if len >= HUGE_PAGE {
            // Before mlock, so that locking faults the pages in as huge ones.
            // SAFETY: the range is exactly the mapping made above; the advice
            // only changes how the kernel backs it.
            buf.huge = unsafe { libc::madvise(p, len, libc::MADV_HUGEPAGE) } == 0;
            if !buf.huge {
                buf.huge_errno = io::Error::last_os_error().raw_os_error();
            }
        }
        if lock {
            // SAFETY: the range is exactly the mapping made above; locking
            // only pins its pages.
            buf.locked = unsafe { libc::mlock(p, len) } == 0;
            if !buf.locked {
                buf.lock_errno = io::Error::last_os_error().raw_os_error();
            }
        }
        Ok(buf)
    }

    /// Make an unlocked buffer `len` bytes long (`mremap`, which may move
    /// it): the first bytes are kept, pages added read as zeros, pages
    /// cut go back to the system. Its pages already touched are not
    /// touched again, as a new mapping's would be (each costs a fault
    /// and zeroing). Neither length may be 0.
    pub fn resize(&mut self, len: usize) -> io::Result<()> {
        if self.locked || self.len == 0 || len == 0 {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        // SAFETY: the range is exactly the mapping this value owns, borrowed
        // mutably, so no slice of it is alive; on success the old range is
        // gone and the result, checked, is the whole new mapping.
        let p = unsafe {
            libc::mremap(
                self.ptr.as_ptr().cast(),
                self.len,
                len,
                libc::MREMAP_MAYMOVE,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        self.ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::other("mremap returned a null mapping"))?;
        self.len = len;
        Ok(())
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length buffer.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True if mlock succeeded: the pages cannot be swapped out.
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// True if madvise(MADV_HUGEPAGE) succeeded (a request, not a promise
    /// that the kernel found huge pages).
    pub fn is_huge(&self) -> bool {
        self.huge
    }

    /// Why mlock was refused, if it was asked for and refused.
    pub fn lock_error(&self) -> Option<io::Error> {
        self.lock_errno.map(io::Error::from_raw_os_error)
    }

    /// Why madvise(MADV_HUGEPAGE) was refused, if it was asked for (len >=
    /// 2 MiB) and refused (a kernel without transparent huge pages).
    pub fn huge_error(&self) -> Option<io::Error> {
        self.huge_errno.map(io::Error::from_raw_os_error)
    }
}

/// Buffers smaller than this are not advised `MADV_HUGEPAGE`.
pub const HUGE_PAGE_SIZE: usize = HUGE_PAGE;

/// The soft `RLIMIT_MEMLOCK` in bytes (`None` for unlimited), to explain a
/// refused mlock.
pub fn memlock_limit() -> io::Result<Option<u64>> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one struct rlimit through the pointer, which
    // points to a live local of that type.
    check(unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) })?;
    // rlim_t is 32 bits on some 32-bit targets.
    #[allow(clippy::useless_conversion)]
    Ok((lim.rlim_cur != libc::RLIM_INFINITY).then(|| u64::from(lim.rlim_cur)))
}

/// The memory this process may still take under its control groups'
/// limits: for its group and each ancestor, the limit (`memory.max` on
/// cgroup v2, `memory.limit_in_bytes` on v1) less what the group holds
/// that cannot be reclaimed (its usage less its page cache); the tightest
/// of them. `None` when no limit is found or nothing can be read.
pub fn cgroup_memory_room() -> Option<u64> {
    let groups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    cgroup_room(&groups, &mounts, &|p| std::fs::read_to_string(p).ok())
}

/// [`cgroup_memory_room`] from the text of `/proc/self/cgroup` and
/// `/proc/self/mountinfo`, reading the groups' files with `read`.
fn cgroup_room(
    groups: &str,
    mountinfo: &str,
    read: &dyn Fn(&std::path::Path) -> Option<String>,
) -> Option<u64> {
    use std::path::Path;
    let mut room: Option<u64> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(root), Some(point)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let v2 = match (fields.get(dash + 1), fields.get(dash + 3)) {
            (Some(&"cgroup2"), _) => true,
            (Some(&"cgroup"), Some(opts)) if opts.split(',').any(|o| o == "memory") => false,
            _ => continue,
        };
        // This process's group in that hierarchy: `0::/path` on v2,
        // `N:...memory...:/path` on v1.
        let Some(path) = groups.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let ours = if v2 {
                controllers.is_empty()
            } else {
                controllers.split(',').any(|c| c == "memory")
            };
            ours.then_some(path)
        }) else {
            continue;
        };
        let inside = path
            .strip_prefix(root)
            .unwrap_or(path)
            .trim_start_matches('/');
        let top = Path::new(point);
        let (limit, usage, cache) = if v2 {
            ("memory.max", "memory.current", "file ")
        } else {
            (
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
                "total_cache ",
            )
        };
        let number =
            |dir: &Path, file: &str| -> Option<u64> { read(&dir.join(file))?.trim().parse().ok() };
        let mut dir = top.join(inside);
        loop {
            if let Some(max) = number(&dir, limit) {
                let held = number(&dir, usage).unwrap_or(0);
                let reclaimable = read(&dir.join("memory.stat"))
                    .and_then(|stat| {
                        stat.lines()
                            .find_map(|l| l.strip_prefix(cache))
                            .and_then(|v| v.trim().parse::<u64>().ok())
                    })
                    .unwrap_or(0);
                let left = max.saturating_sub(held.saturating_sub(reclaimable));
                room = Some(room.map_or(left, |r| r.min(left)));
            }
            if dir == top || !dir.pop() || !dir.starts_with(top) {
                break;
            }
        }
    }
    room
}

impl Drop for PinnedBuf {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        let p = self.ptr.as_ptr().cast::<libc::c_void>();
        // munmap drops the lock as well; the explicit munlock only keeps the
        // accounting obvious. Failures cannot be reported from Drop and
        // would mean the mapping is already gone.
        if self.locked {
            // SAFETY: the range is the mapping this value owns, still mapped.
            unsafe { libc::munlock(p, self.len) };
        }
        // SAFETY: the range is the mapping this value owns; nothing can use
        // it after Drop, so unmapping it leaves no dangling borrow.
        unsafe { libc::munmap(p, self.len) };
    }
}

impl std::ops::Deref for PinnedBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len readable, initialised (zero-filled by
        // mmap) bytes for as long as self lives, or dangling with len 0,
        // which from_raw_parts allows; the borrow is tied to &self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for PinnedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and &mut self guarantees this is the only
        // live borrow of the memory.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl fmt::Debug for PinnedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedBuf")
            .field("len", &self.len)
            .field("locked", &self.locked)
            .field("huge", &self.huge)
            .field("lock_errno", &self.lock_errno)
            .field("huge_errno", &self.huge_errno)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_buf_sizes_read_write_drop() {
        for len in [0usize, 4096, 3 << 20] {
            for locked in [true, false] {
                let mut b = if locked {
                    PinnedBuf::new(len, true, true).unwrap()
                } else {
                    PinnedBuf::new(len, false, true).unwrap()
                };
                assert_eq!(b.len(), len);
                assert_eq!(b.is_empty(), len == 0);
                assert!(b.iter().all(|&x| x == 0), "not zero-initialised");
                for (i, x) in b.iter_mut().enumerate() {
                    *x = (i % 253) as u8;
                }
                assert!(b.iter().enumerate().all(|(i, &x)| x == (i % 253) as u8));
                if !locked || len == 0 {
                    assert!(!b.is_locked());
                }
                if len < HUGE_PAGE {
                    assert!(!b.is_huge());
                }
                eprintln!("{b:?}");
            }
        }
    }

    #[test]
    fn cgroup_room_is_the_tightest_limit_less_what_is_held() {
        use std::collections::HashMap;
        use std::path::{Path, PathBuf};
        let files: HashMap<PathBuf, &str> = [
            // v2: the group allows 1 GiB and holds 300 MiB, 100 MiB of it
            // page cache; its parent allows 4 GiB; the root has no limit.
            ("/cg2/a/b/memory.max", "1073741824\n"),
            ("/cg2/a/b/memory.current", "314572800\n"),
            ("/cg2/a/b/memory.stat", "anon 1\nfile 104857600\n"),
            ("/cg2/a/memory.max", "4294967296\n"),
            ("/cg2/memory.max", "max\n"),
            // v1, tighter: 512 MiB, 12 MiB held.
            ("/cg1/x/memory.limit_in_bytes", "536870912\n"),
            ("/cg1/x/memory.usage_in_bytes", "12582912\n"),
        ]
        .into_iter()
        .map(|(p, v)| (PathBuf::from(p), v))
        .collect();
        let read = |p: &Path| files.get(p).map(|s| (*s).to_string());
        let mounts = "30 23 0:26 / /cg2 rw,nosuid - cgroup2 cgroup2 rw\n\
                      35 31 0:32 / /cg1 rw,relatime - cgroup cgroup rw,memory\n\
                      36 31 0:33 / /pids rw,relatime - cgroup cgroup rw,pids\n";
        let v2_only = "0::/a/b\n";
        assert_eq!(
            cgroup_room(v2_only, mounts, &read),
            Some(1073741824 - 209715200)
        );
        let both = "4:memory:/x\n0::/a/b\n";
        assert_eq!(cgroup_room(both, mounts, &read), Some(536870912 - 12582912));
        assert_eq!(cgroup_room("0::/\n", mounts, &read), None);
        assert_eq!(cgroup_room(v2_only, "", &read), None);
    }

    #[test]
    fn a_resized_buffer_keeps_its_bytes_and_reads_zeros_beyond() {
        let mut b = PinnedBuf::new(3 << 16, false, true).unwrap();
        b[..3 << 16].fill(7);
        b.resize(5 << 20).unwrap();
        assert_eq!(b.len(), 5 << 20);
        assert!(b[..3 << 16].iter().all(|&x| x == 7));
        assert!(b[3 << 16..].iter().all(|&x| x == 0));
        b[(5 << 20) - 1] = 9;
        b.resize(4096).unwrap();
        assert_eq!(b.len(), 4096);
        assert!(b.iter().all(|&x| x == 7));
        let mut locked = PinnedBuf::new(4096, true, true).unwrap();
        if locked.is_locked() {
            assert!(
                locked.resize(8192).is_err(),
                "a locked buffer stays as it is"
            );
        }
        assert!(
            PinnedBuf::new(0, false, true)
                .unwrap()
                .resize(4096)
                .is_err()
        );
    }

    #[test]
    fn pinned_buf_is_send_and_sync() {
        fn both<T: Send + Sync>(_: &T) {}
        let mut b = PinnedBuf::new(8192, true, true).unwrap();
        both(&b);
        std::thread::scope(|s| {
            s.spawn(|| b[8191] = 7);
        });
        assert_eq!(b[8191], 7);
    }
}
