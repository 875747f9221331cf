//! The `PATH.part` file of a patch being written (`--write-patch PATH`),
//! renamed to PATH once complete. A read error removes it (`make.rs`); so
//! does Ctrl-C, SIGTERM or SIGHUP: the signal thread calls
//! [`remove_on_interrupt`] before it says `interrupted`, and an older
//! PATH stays as it was.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::lock::lock;
use crate::log::Log;

/// The (partial, final) names of the patch file being written, if any.
static PART: Mutex<Option<(PathBuf, PathBuf)>> = Mutex::new(None);

/// `part` is being written, to become `path`.
pub(super) fn started(part: &Path, path: &Path) {
    *lock(&PART) = Some((part.to_path_buf(), path.to_path_buf()));
}

/// Rename `part` to `path`: the patch is complete. Under the lock, so that
/// a signal meanwhile finds either the `.part` file or the patch.
pub(super) fn complete(part: &Path, path: &Path) -> std::io::Result<()> {
    let mut g = lock(&PART);
    std::fs::rename(part, path)?;
    *g = None;
    Ok(())
}

/// Remove `part`: the patch will not be complete.
pub(super) fn remove(part: &Path) {
    let mut g = lock(&PART);
    let _ = std::fs::remove_file(part);
    *g = None;
}

/// A signal ends the process: remove the `.part` file of a patch being
/// written, and say so. The lock is kept to the end, so that the maker
/// cannot rename it meanwhile.
pub fn remove_on_interrupt(log: &Log) {
    let g = lock(&PART);
    if let Some((part, path)) = g.as_ref() {
        let _ = std::fs::remove_file(part);
        let kept = if std::fs::symlink_metadata(path).is_ok() {
            format!(" (the older {} is kept as it was)", path.display())
        } else {
            String::new()
        };
        log.line(format!(
            "patch {}: stopped before it was complete: {} removed{kept}",
            path.display(),
            part.display()
        ));
    }
    std::mem::forget(g);
}
