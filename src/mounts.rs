//! Which block devices are mounted, from the mount table: a destination
//! device that is mounted is refused (blocks written under a live file
//! system corrupt it), and a source device mounted read-write is copied
//! with a warning (its file system may change during the copy).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;

use crate::config::{ALLOW_MOUNTED_ENV, Env};
use crate::error::{Error, Result};
use crate::log::Log;

/// Refuse a destination device that is mounted (itself or a partition),
/// naming the mount, unless [`ALLOW_MOUNTED_ENV`] says to warn instead.
pub fn refuse_mounted(
    label: &str,
    meta: Option<&std::fs::Metadata>,
    env: &Env,
    log: &Log,
) -> Result<()> {
    let allow = env.allow_mounted;
    let rdev = meta.map_or(0, MetadataExt::rdev);
    if let Some(m) = mount_of(rdev) {
        let what = format!(
            "{label}: {} is mounted on {} ({}{})",
            m.source.display(),
            m.target.display(),
            m.fs_type,
            if m.read_write {
                ", read-write"
            } else {
                ", read-only"
            }
        );
        if !allow {
            return Err(Error::Failed(format!(
                "{what}; writing blocks under a mounted file system corrupts it. \
                         Unmount it first ({ALLOW_MOUNTED_ENV}=1 overrides); nothing was written"
            )));
        }
        log.line(format!(
            "warning: {what}; writing anyway because {ALLOW_MOUNTED_ENV} is set"
        ));
    }
    Ok(())
}

/// Refuse a destination that something live stands on: a regular file
/// behind an attached loop device (mounted or not: the loop device is in
/// use), an active swap file or swap device, and a read-only device. Loop
/// devices and swap files are matched by device and inode, so another name
/// for the same file (a link, a relative path) is caught too.
/// [`ALLOW_MOUNTED_ENV`] turns the first two into a warning; nothing
/// writes a read-only device.
pub fn refuse_live(label: &str, meta: &std::fs::Metadata, env: &Env, log: &Log) -> Result<()> {
    let live = if meta.file_type().is_block_device() {
        swap_of(|s| s.file_type().is_block_device() && s.rdev() == meta.rdev())
            .map(|swap| format!("{label}: the device is in use as swap ({})", swap.display()))
    } else if meta.is_file() {
        let id = (meta.dev(), meta.ino());
        swap_of(|s| s.is_file() && (s.dev(), s.ino()) == id)
            .map(|swap| format!("{label}: the file is in use as swap ({})", swap.display()))
            .or_else(|| {
                loop_backed_by(id).map(|dev| {
                    format!(
                        "{label}: the file backs the loop device {}{}",
                        dev.display(),
                        match mount_of_path(&dev) {
                            Some(m) => format!(", mounted on {}", m.target.display()),
                            None => String::new(),
                        }
                    )
                })
            })
    } else {
        None
    };
    if let Some(what) = live {
        if !env.allow_mounted {
            return Err(Error::Failed(format!(
                "{what}; writing under it corrupts what uses it. Detach it first \
                 (losetup -d, swapoff; {ALLOW_MOUNTED_ENV}=1 overrides); nothing was written"
            )));
        }
        log.line(format!(
            "warning: {what}; writing anyway because {ALLOW_MOUNTED_ENV} is set"
        ));
    }
    Ok(())
}

/// Refuse a read-only block device (`losetup -r`, `blockdev --setro`):
/// every write to it would fail.
pub fn refuse_read_only(label: &str, file: &std::fs::File) -> Result<()> {
    if crate::sys::is_read_only_device(file).unwrap_or(false) {
        return Err(Error::Failed(format!(
            "{label}: the device is read-only (blockdev --setro, losetup -r or a \
             write-protected medium); nothing was written"
        )));
    }
    Ok(())
}

/// The swap area in `/proc/swaps` whose metadata `matches`. Best effort:
/// an unreadable table finds nothing.
fn swap_of(matches: impl Fn(&std::fs::Metadata) -> bool) -> Option<PathBuf> {
    let table = std::fs::read_to_string("/proc/swaps").ok()?;
    table
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next())
        .map(|name| PathBuf::from(unescape(name)))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| matches(&m)))
}

/// The attached loop device whose backing file is `(dev, ino)`, from
/// `/sys/block/loop*/loop` and the device's own `LOOP_GET_STATUS64` (or,
/// where the device node cannot be opened, the backing file's path as the
/// kernel names it).
fn loop_backed_by(id: (u64, u64)) -> Option<PathBuf> {
    let entries = std::fs::read_dir("/sys/block").ok()?;
    entries.flatten().find_map(|e| {
        let name = e.file_name().into_string().ok()?;
        let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
        let dev = PathBuf::from("/dev").join(&name);
        let by_ioctl = std::fs::File::open(&dev)
            .ok()
            .and_then(|f| crate::sys::loop_backing(&f).ok());
        let found = match by_ioctl {
            Some(backing_id) => backing_id == id,
            None => std::fs::metadata(backing.trim_end_matches('\n'))
                .is_ok_and(|m| (m.dev(), m.ino()) == id),
        };
        found.then_some(dev)
    })
}

/// Where the block device at `path` (or a partition of it) is mounted.
fn mount_of_path(path: &std::path::Path) -> Option<Mount> {
    mount_of(std::fs::metadata(path).ok()?.rdev())
}

/// Warn when the source device (or a partition of it) is mounted
/// read-write: its file system may change while it is copied, so the copy
/// can be inconsistent. One line, with what to do instead; returns it
/// (without the `warning: `) so the other end can show it too.
pub fn warn_if_mounted_read_write(label: &str, rdev: u64, log: &Log) -> Option<String> {
    let m = mount_of(rdev).filter(|m| m.read_write)?;
    let what = format!(
        "{label}: {} is mounted read-write on {}; files written during the copy \
         can leave it inconsistent. Copy a snapshot (LVM, btrfs, a stopped VM), or \
         remount it read-only first (mount -o remount,ro {})",
        m.source.display(),
        m.target.display(),
        m.target.display()
    );
    log.line(format!("warning: {what}"));
    Some(what)
}

/// A mounted file system, from `/proc/self/mounts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The device as the mount table names it.
    pub source: PathBuf,
    /// Where it is mounted.
    pub target: PathBuf,
    /// `ext4`, `xfs`...
    pub fs_type: String,
    /// Mounted read-write (`rw` among the options).
    pub read_write: bool,
}

/// Where the block device `rdev`, or one of its partitions, is mounted.
/// Best effort: an unreadable mount table finds nothing (the exclusive open
/// still catches a mounted device).
pub fn mount_of(rdev: u64) -> Option<Mount> {
    let mut devices = vec![rdev];
    devices.extend(partitions_of(rdev));
    let table = std::fs::read_to_string("/proc/self/mounts").ok()?;
    parse_mounts(&table).into_iter().find(|m| {
        m.source.is_absolute()
            && std::fs::metadata(&m.source).is_ok_and(|meta| {
                meta.file_type().is_block_device() && devices.contains(&meta.rdev())
            })
    })
}

/// Device numbers of the partitions of the whole device `rdev`, from
/// `/sys/dev/block/MAJ:MIN/*/dev`.
fn partitions_of(rdev: u64) -> Vec<u64> {
    let dir = format!("/sys/dev/block/{}:{}", libc::major(rdev), libc::minor(rdev));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.path().join("partition").exists())
        .filter_map(|e| std::fs::read_to_string(e.path().join("dev")).ok())
        .filter_map(|dev| {
            let (major, minor) = dev.trim().split_once(':')?;
            Some(libc::makedev(major.parse().ok()?, minor.parse().ok()?))
        })
        .collect()
}

/// The lines of a mount table (`fstab` format, with `\040`-style octal
/// escapes for spaces and such in paths).
fn parse_mounts(table: &str) -> Vec<Mount> {
    table
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let source = unescape(fields.next()?);
            let target = unescape(fields.next()?);
            let fs_type = fields.next()?.to_string();
            let read_write = fields.next()?.split(',').any(|o| o == "rw");
            Some(Mount {
                source: PathBuf::from(source),
                target: PathBuf::from(target),
                fs_type,
                read_write,
            })
        })
        .collect()
}

/// Undo the kernel's `\ooo` octal escapes of a mount table field.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|_| bytes[i] == b'\\');
        match octal.and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()) {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn mount_table_lines_are_parsed_and_unescaped() {
        let table = "/dev/vda / ext4 rw,relatime 0 0\n\
                     proc /proc proc rw 0 0\n\
                     /dev/loop3 /mnt/my\\040disk xfs ro,noatime 0 0\n\
                     garbage\n";
        let m = parse_mounts(table);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].source, PathBuf::from("/dev/vda"));
        assert!(m[0].read_write);
        assert_eq!(m[2].target, PathBuf::from("/mnt/my disk"));
        assert_eq!(m[2].fs_type, "xfs");
        assert!(!m[2].read_write);
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("end\\04"), "end\\04");
        assert_eq!(unescape("\\999x"), "\\999x");
    }

    #[test]
    fn the_root_file_system_device_counts_as_mounted() {
        // Whatever backs `/` (when it is a block device) must be found.
        let table = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let root = parse_mounts(&table)
            .into_iter()
            .find(|m| m.target == Path::new("/") && m.source.is_absolute());
        let Some(root) = root else {
            eprintln!("skipped: / is not mounted from a device path");
            return;
        };
        let Ok(meta) = std::fs::metadata(&root.source) else {
            eprintln!("skipped: {} cannot be stat'ed", root.source.display());
            return;
        };
        if !meta.file_type().is_block_device() {
            eprintln!("skipped: {} is not a block device", root.source.display());
            return;
        }
        let found = mount_of(meta.rdev()).expect("the root device is mounted");
        assert_eq!(found.source, root.source);
        assert_eq!(mount_of(u64::MAX), None);
    }
}
