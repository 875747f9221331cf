//! The paths named on the command line, checked by `stat` alone before
//! anything is opened: a writing end that can hold the data (not
//! `/dev/zero`, a pipe or a directory), a `-t` that is not the name of a
//! host this machine knows, a `--write-patch` file or a `-rescue` map that
//! is neither end.
//! `validate.rs` calls them while it builds the [`Config`](crate::config::Config).

use std::path::Path;

use super::{RawArgs, Target};
use crate::error::{Error, Result};

impl RawArgs {
    /// A patch file replaces whatever is at its path: never the source, a
    /// local destination, a device or anything but a regular file.
    pub(super) fn check_patch_path(&self, patch: &Path) -> Result<()> {
        let refuse = |what: &str| {
            Err(Error::usage(format!(
                "--write-patch {}: {what}; a patch replaces the file at its path, \
                 so give the name of a new or an old patch file",
                patch.display()
            )))
        };
        if let Some(what) = self.end_named(patch) {
            return refuse(&format!("is {what}"));
        }
        match std::fs::metadata(patch) {
            Ok(meta) if !meta.file_type().is_file() => refuse("not a regular file"),
            _ => Ok(()),
        }
    }

    /// A rescue map is rewritten as the run goes: never at the path of the
    /// source or a local destination (which may not exist yet).
    /// Nor at the path of the `--write-patch` file, which it would
    /// overwrite.
    pub(super) fn check_map_path(&self, map: &Path) -> Result<()> {
        if let Some(patch) = self.write_patch.as_deref().filter(|p| p.as_os_str() != "-") {
            let absolute = |p: &Path| std::path::absolute(p).ok();
            if absolute(map).is_some() && absolute(map) == absolute(patch)
                || crate::disk::same_file(map, patch)
            {
                return Err(Error::usage(format!(
                    "-rescue {}: is the --write-patch file; the map and the patch are \
                     two files, each written during the run: give them different names",
                    map.display()
                )));
            }
        }
        match self.end_named(map) {
            Some(what) => Err(Error::usage(format!(
                "-rescue {}: is {what}; the map is a file of its own, rewritten during the run",
                map.display()
            ))),
            None => Ok(()),
        }
    }

    /// Which end `path` names, if any: the same file or device as the
    /// source or a local destination, or, for a destination not created
    /// yet, the same absolute path.
    fn end_named(&self, path: &Path) -> Option<&'static str> {
        let local_target = match &self.target {
            Some(Target::Local(t)) => Some(t.as_path()),
            _ => None,
        };
        let absolute = std::path::absolute(path).ok();
        [
            (self.file.as_deref(), "the source (-f)"),
            (local_target, "the destination (-t)"),
        ]
        .into_iter()
        .find_map(|(end, what)| {
            let end = end?;
            let same_path = absolute.is_some() && std::path::absolute(end).ok() == absolute;
            (same_path || crate::disk::same_file(end, path)).then_some(what)
        })
    }
}

/// Refuse a writing end that can never hold the data: a character device
/// (the default `/dev/zero`, `/dev/null`), a pipe or a directory. Only a
/// `stat`: nothing is opened.
pub(super) fn check_writing_end(path: &Path, flag: &str, given: bool) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let kind = meta.file_type();
    let what = if kind.is_dir() {
        "a directory"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_fifo() {
        "a pipe"
    } else if kind.is_socket() {
        "a socket"
    } else {
        return Ok(());
    };
    if !given {
        return Err(Error::usage(format!(
            "-f is missing: this end writes the destination, and without -f it would \
             write to {} ({what}); give -f PATH",
            path.display()
        )));
    }
    Err(Error::usage(format!(
        "{flag}: {} is {what}, not a file or block device that can be made identical \
         to the source; nothing was written",
        path.display()
    )))
}

/// A `-t` that names no existing path but a host this machine knows (a
/// `Host` of `~/.ssh/config`, a name in `/etc/hosts`) is refused: `-t
/// barhost` would otherwise make a local file of that name. No DNS: a file
/// name is never looked up.
pub(super) fn check_not_a_host(path: &Path) -> Result<()> {
    let Some(name) = path.to_str() else {
        return Ok(());
    };
    if name.contains('/') || std::fs::symlink_metadata(path).is_ok() {
        return Ok(());
    }
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let ssh_config = std::env::var_os("HOME")
        .map(|home| read(&Path::new(&home).join(".ssh/config")))
        .unwrap_or_default();
    let hosts = read(Path::new("/etc/hosts"));
    let Some(source) = known_host(name, &ssh_config, &hosts) else {
        return Ok(());
    };
    Err(Error::usage(format!(
        "-t: {name:?} does not exist here, and {name} is a host in {source}: \
         for a path on it write -t {name}:/path (e.g. {name}:/dev/vda); \
         for a new local file write -t ./{name}"
    )))
}

/// Where `name` is a host: `~/.ssh/config` (a `Host` line, not a pattern)
/// or `/etc/hosts`.
pub(super) fn known_host(name: &str, ssh_config: &str, hosts: &str) -> Option<&'static str> {
    let in_ssh = ssh_config.lines().any(|line| {
        let line = line.trim();
        let (key, rest) = line
            .split_once(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or((line, ""));
        key.eq_ignore_ascii_case("host")
            && rest
                .trim_start_matches(|c: char| c.is_whitespace() || c == '=')
                .split_whitespace()
                .any(|h| h == name)
    });
    if in_ssh {
        return Some("~/.ssh/config");
    }
    let in_hosts = hosts.lines().any(|line| {
        let line = line.split('#').next().unwrap_or_default();
        line.split_whitespace().skip(1).any(|h| h == name)
    });
    in_hosts.then_some("/etc/hosts")
}
