//! Whether a path may be an end of a transfer, checked before it is opened
//! for good: a source must be a regular file or a block device (something
//! with a size to copy), a destination writable, not mounted and not in use.
//! `-t` and a server run these before they log in or wait for a client, so
//! a wrong path is refused before anything starts; [`Disk`](super::Disk)'s
//! opening runs the same checks.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use crate::config::Env;
use crate::error::{Error, Result};
use crate::log::Log;
use crate::mounts;
use crate::sys;

/// Whether `a` and `b` name the same file or device by any names: one
/// block device (the same `rdev`), or one file (device and inode). False
/// where either cannot be found.
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) if a.file_type().is_block_device() => {
            b.file_type().is_block_device() && a.rdev() == b.rdev()
        }
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Open `path` for reading; returns it with whether it is a regular file
/// and whether a block device. `label` names it in errors.
pub(super) fn open_read_only(path: &Path, label: &str) -> Result<(File, bool, bool)> {
    let file = File::open(path).map_err(|e| Error::io(label, "open", e))?;
    open_checked(file, label)
}

/// A dry run's destination that does not exist, after its name.
pub const MISSING_DRY: &str = "does not exist: --compare and --write-patch read an existing \
                               file or device (a sync would create it)";

/// [`open_read_only`] for a dry run's destination: a missing one is said
/// plainly ([`MISSING_DRY`]), not as a failed `open`.
pub(super) fn open_dry(path: &Path, label: &str) -> Result<(File, bool, bool)> {
    let file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::Failed(format!("{label} {MISSING_DRY}")),
        _ => Error::io(label, "open", e),
    })?;
    open_checked(file, label)
}

/// Whether the opened `file` is a regular file, and whether a device.
fn open_checked(file: File, label: &str) -> Result<(File, bool, bool)> {
    let regular = file
        .metadata()
        .map_err(|e| Error::io(label, "stat", e))?
        .is_file();
    let is_device = sys::is_block_device(&file).map_err(|e| Error::io(label, "stat", e))?;
    Ok((file, regular, is_device))
}

/// The hint for a `/dev/zero` source, which is what a missing `-f` reads.
pub const DEFAULT_SOURCE_HINT: &str = "-f defaults to /dev/zero: is -f missing?";

/// Why `file` (at `path`), neither a regular file nor a block device,
/// cannot be a source.
pub(super) fn unsized_source(path: &Path, label: &str, file: &File) -> Error {
    let kind = file.metadata().map(|m| m.file_type()).ok();
    let hint = if path == Path::new("/dev/zero") {
        DEFAULT_SOURCE_HINT
    } else if kind.is_some_and(|k| k.is_dir()) {
        "a directory: give the file or device inside it"
    } else {
        "a pipe, terminal or stream has no size to copy: save it to a file first"
    };
    Error::usage(format!(
        "{label}: not a regular file or block device ({hint})"
    ))
}

/// Check that `path` can be a source, as [`Disk::open_source`] would, and
/// close it again: a `-t` run checks its own end before it logs in.
pub fn check_source(path: &Path) -> Result<()> {
    let label = format!("source {}", path.display());
    let (file, regular, is_device) = open_read_only(path, &label)?;
    if regular || is_device {
        Ok(())
    } else {
        Err(unsized_source(path, &label, &file))
    }
}

/// Check, before a server waits for its client, that `path` can be opened
/// for writing as the destination, without creating, truncating or opening
/// anything: an existing file or device must be writable (and a device not
/// mounted), a missing file must have a writable directory to be made in.
pub fn check_destination(path: &Path, env: &Env, log: &Log) -> Result<()> {
    let label = format!("destination {}", path.display());
    match std::fs::metadata(path) {
        Ok(meta) => {
            if meta.file_type().is_block_device() {
                mounts::refuse_mounted(&label, Some(&meta), env, log)?;
                if let Ok(file) = File::open(path) {
                    mounts::refuse_read_only(&label, &file)?;
                }
            }
            mounts::refuse_live(&label, &meta, env, log)?;
            sys::may_write(path).map_err(|e| match e.raw_os_error() {
                Some(libc::EROFS) => Error::Failed(format!(
                    "{label}: read-only (it lies on a file system mounted read-only); \
                     nothing was written"
                )),
                _ => Error::io(&label, "open for writing", e),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            let why = match std::fs::metadata(parent) {
                Ok(m) if m.is_dir() => sys::may_write(parent).err(),
                Ok(_) => Some(io::Error::from_raw_os_error(libc::ENOTDIR)),
                Err(e) => Some(e),
            };
            match why {
                None => Ok(()),
                Some(e) => Err(Error::io(
                    &label,
                    format!("create in {}", parent.display()),
                    e,
                )),
            }
        }
        Err(e) => Err(Error::io(&label, "stat", e)),
    }
}
