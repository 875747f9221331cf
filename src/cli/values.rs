//! Each flag's value read from its text, so that a bad one names its flag:
//! whole numbers, sizes with binary suffixes (`-b`, `-bwlimit`), ports and
//! addresses (`-p`, `-i`, `-r`), secrets and where they come from (`-K`,
//! `-token-file`), `-ssh`, `-L` and `-t`'s targets. Pure functions of the
//! text; reading the flags is `mod.rs`'s, combining them `validate.rs`'s.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::aead::Key;
use crate::compress::Level;
use crate::config::RemoteTarget;
use crate::error::{Error, Result};
use crate::proto::MAX_BLOCK_SIZE;

/// Where `-t` points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A path on this machine.
    Local(PathBuf),
    /// A path on another machine, reached over SSH.
    Remote(RemoteTarget),
}

pub(super) fn parse_number(s: &str, flag: &str) -> Result<u64> {
    s.parse::<u64>().map_err(|_| {
        Error::usage(format!(
            "-{flag}: {s:?} is not a whole number (0 to {})",
            u64::MAX
        ))
    })
}

/// A decimal number of bytes with an optional binary suffix: `K`, `M` or
/// `G` (any case), optionally followed by `B` or `iB`. `None` when it is
/// not one or overflows.
pub(super) fn binary_size(t: &str) -> Option<u64> {
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 10),
        Some((i, 'm' | 'M')) => (&t[..i], 20),
        Some((i, 'g' | 'G')) => (&t[..i], 30),
        _ => (t, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// `-b`: decimal bytes with an optional binary suffix, `K`, `M` or `G`
/// (also `KiB`, `k`...).
pub fn parse_block_size(s: &str) -> Result<usize> {
    let bad = || {
        Error::usage(format!(
            "-b: {s:?} is not a block size (bytes, or a number with K, M or G, e.g. 4M)"
        ))
    };
    let bytes = binary_size(s.trim()).ok_or_else(bad)?;
    if bytes == 0 {
        return Err(Error::usage("-b: the block size must be at least 1 byte"));
    }
    match usize::try_from(bytes) {
        Ok(b) if b <= MAX_BLOCK_SIZE => Ok(b),
        _ => Err(Error::usage(format!(
            "-b: {s} is larger than the largest block size, 1G"
        ))),
    }
}

/// `--bwlimit`: bytes per second, with binary `K`, `M` or `G` suffixes
/// (`10M` is 10 MiB/s); a trailing `/s` is allowed.
pub fn parse_rate(s: &str) -> Result<u64> {
    let t = s.trim().trim_end_matches("/s");
    let bad = || {
        Error::usage(format!(
            "-bwlimit: {s:?} is not a rate (bytes per second, or with K, M or G, e.g. 20M)"
        ))
    };
    let rate = binary_size(t).ok_or_else(bad)?;
    if rate < 1024 {
        return Err(Error::usage(format!(
            "-bwlimit: {s} is below the lowest rate, 1K (1024 bytes per second)"
        )));
    }
    Ok(rate)
}

pub(super) fn parse_port(s: &str, flag: &str, zero_ok: bool) -> Result<u16> {
    let lowest = if zero_ok { 0 } else { 1 };
    match s.parse::<u16>() {
        Ok(n) if n >= lowest => Ok(n),
        _ => Err(Error::usage(format!(
            "-{flag}: {s:?} is not a port ({lowest} to 65535)"
        ))),
    }
}

pub(super) fn parse_ip(s: &str) -> Result<IpAddr> {
    let inner = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    inner.parse().map_err(|_| {
        Error::usage(format!(
            "-i: {s:?} is not an IP address (e.g. 0.0.0.0, 192.168.1.50, ::)"
        ))
    })
}

/// `HOST:PORT`, with IPv6 literals as `[::1]:8080`.
pub(super) fn parse_host_port(s: &str, flag: &str) -> Result<(String, u16)> {
    let bad = || {
        Error::usage(format!(
            "-{flag}: {s:?} is not HOST:PORT (IPv6 as [::1]:8080)"
        ))
    };
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, port) = rest.split_once("]:").ok_or_else(bad)?;
        (host, port)
    } else {
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        if host.contains(':') {
            return Err(bad());
        }
        (host, port)
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_string(), parse_port(port, flag, false)?))
}

/// Where a secret comes from. Only `-K HEX` puts one on the command line,
/// where `ps` shows it; `-K -` and `-token-file` keep it off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Secret {
    Hex(Key),
    Stdin,
    File(PathBuf),
}

impl Secret {
    /// Resolve to the 32 bytes, reading one line from stdin or the file.
    pub(super) fn read(self, flag: &str) -> Result<Key> {
        let (line, from) = match self {
            Secret::Hex(key) => return Ok(key),
            Secret::Stdin => {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .map_err(|e| Error::io("stdin", format!("{flag}: read"), e))?;
                (line, "stdin".to_string())
            }
            Secret::File(path) => {
                // A missing or unreadable file is a mistake on the command
                // line: exit 2, like any other bad value.
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| Error::usage(format!("{flag}: {}: {e}", path.display())))?;
                (text, path.display().to_string())
            }
        };
        Key::from_hex(line.trim()).map_err(|_| {
            Error::usage(format!(
                "{flag}: {from} must hold exactly 64 hexadecimal digits"
            ))
        })
    }
}

pub(super) fn parse_key_arg(s: &str) -> Result<Secret> {
    if s == "-" {
        return Ok(Secret::Stdin);
    }
    // Never echo the value: it is a secret.
    Key::from_hex(s)
        .map(Secret::Hex)
        .map_err(|_| Error::usage("-K: the key must be exactly 64 hexadecimal digits or -"))
}

pub(super) fn secret_path(path: PathBuf) -> Secret {
    if path.as_os_str() == "-" {
        Secret::Stdin
    } else {
        Secret::File(path)
    }
}

pub(super) fn parse_ssh(s: &str) -> Result<String> {
    match crate::ssh::split_words(s) {
        Ok(words) if words.is_empty() => Err(Error::usage("-ssh: empty command")),
        Ok(_) => Ok(s.to_string()),
        Err(why) => Err(Error::usage(format!("-ssh: {why}"))),
    }
}

pub(super) fn parse_level(s: &str) -> Result<Level> {
    match s {
        "fast" => Ok(Level::Fast),
        "default" => Ok(Level::Default),
        "better" => Ok(Level::Better),
        "best" => Ok(Level::Best),
        _ => Err(Error::usage(format!(
            "-L: {s:?} is not a level (fast, default, better, best)"
        ))),
    }
}

/// `-t`: a local path, or `[user@]host[:port]:/path` with IPv6 hosts in brackets.
///
/// A value is local when it has no `:`, or starts with `/` or `.` (so
/// `./a:b.img` stays local), as with scp.
pub fn parse_target(value: &std::path::Path) -> Result<Target> {
    let Some(s) = value.to_str() else {
        return Ok(Target::Local(value.to_path_buf()));
    };
    if s == "-" {
        return Err(Error::usage(
            "-t: - is not a target: bsync needs a file or device it can seek in, \
             not stdin or stdout (write ./- for a file named -)",
        ));
    }
    let local = s.starts_with('/') || s.starts_with('.');
    if !local && !s.contains(':') && s.contains('@') {
        return Err(Error::usage(format!(
            "-t: {s:?} looks like user@host but has no :/path (e.g. {s}:/dev/vda); \
             for a local file of that name write ./{s}"
        )));
    }
    if !s.contains(':') || local {
        return Ok(Target::Local(value.to_path_buf()));
    }
    let bad = |why: &str| {
        Error::usage(format!(
            "-t: {s:?} {why} (expected /path, user@host:/path or user@host:port:/path)"
        ))
    };
    let (user, rest) = match s.split_once('@') {
        Some((u, r)) if !u.is_empty() && !u.contains(':') => (Some(u.to_string()), r),
        Some(_) => return Err(bad("has an empty or malformed user")),
        None => (None, s),
    };
    let (host, rest) = if let Some(r) = rest.strip_prefix('[') {
        let (h, r) = r.split_once(']').ok_or_else(|| bad("has an unclosed ["))?;
        let r = r.strip_prefix(':').ok_or_else(|| bad("needs : after ]"))?;
        (h, r)
    } else {
        rest.split_once(':')
            .ok_or_else(|| bad("needs a : before the path"))?
    };
    if host.is_empty() {
        return Err(bad("has an empty host"));
    }
    // A port is all digits followed by ':'; anything else is the path.
    let (port, path) = match rest.split_once(':') {
        Some((p, path)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            (Some(parse_port(p, "t", false)?), path)
        }
        _ => (None, rest),
    };
    if path.is_empty() {
        return Err(bad("has an empty path"));
    }
    // `host:2222`: a port whose `:/path` was forgotten, not a file named
    // 2222 in the remote's home (write ./2222 for that).
    if port.is_none() && path.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::usage(format!(
            "-t: {s:?} names the file {path} in the remote's home directory; for a port \
             write {host}:{path}:/path, for a file of that name {host}:./{path}"
        )));
    }
    Ok(Target::Remote(RemoteTarget {
        user,
        host: host.to_string(),
        port,
        path: path.to_string(),
    }))
}
