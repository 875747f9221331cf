//! The second step of the command line: flags as typed become a [`Config`]
//! in the roles' terms.
//!
//! Every rule about which flags go together lives here, and so does the one
//! place that reads a secret (`-K -`, `-token-file`) and the environment.
//! What comes out says which path is the source and which end serves; the
//! engine never sees `-f` or `-d`.

use std::net::IpAddr;
use std::path::PathBuf;

use super::{DEFAULT_BLOCK_SIZE, RawArgs, Secret as SecretArg, Target};
use crate::auth::Secret;
use crate::compress::Level;
use crate::config::{
    Config, Connect, Env, LogOptions, Mode, Role, SSH_ENV, Serve, Transfer, VERBOSE_ENV, env_flag,
    sysfs_root,
};
use crate::error::{Error, Result};

/// `-ssh` and `BSYNC_SSH` unset: the system's ssh.
const DEFAULT_SHELL: &str = "ssh";

impl RawArgs {
    /// Check the flags against each other, resolve defaults, read secrets
    /// and the environment, and say it all in the roles' terms.
    pub fn validate(self) -> Result<Config> {
        let workers = self.workers.unwrap_or(1);
        let prefetch = match self.prefetch {
            None | Some(0) => workers * 4,
            Some(n) => n,
        };
        if self.remote.is_some() && self.target.is_some() {
            return Err(Error::usage(
                "-r and -t cannot be combined: -r connects to a running server, -t starts one",
            ));
        }
        if self.no_compress && self.level.is_some() {
            return Err(Error::usage(
                "-L and -n cannot be combined: -n turns compression off",
            ));
        }
        if self.auto && self.remote.is_none() {
            return Err(Error::usage("-auto works only for a client (-r HOST:PORT)"));
        }
        if self.auto && self.download {
            return Err(Error::usage(
                "-auto tunes uploads only; it cannot be combined with -d",
            ));
        }
        let ssh_target = matches!(self.target, Some(Target::Remote(_)));
        if self.encrypt && self.key.is_none() && !ssh_target {
            return Err(Error::usage(
                "-e needs -t user@host:/path (bsync makes and hands over the key) \
                 or -K KEY (the same 64-hex-digit key on both ends)",
            ));
        }
        if self.target.is_some() && (self.key.is_some() || self.token.is_some()) {
            return Err(Error::usage(
                "-K and -token-file are for -r/-p network mode; with -t bsync makes \
                 its own token (and key, with -e)",
            ));
        }
        if self.ssh.is_some() && !ssh_target {
            return Err(Error::usage("-ssh applies only to -t user@host:/path"));
        }
        if self.key == Some(SecretArg::Stdin) && self.token == Some(SecretArg::Stdin) {
            return Err(Error::usage(
                "-K - and -token-file - cannot both read stdin; a key also serves as the token",
            ));
        }
        if !self.list_drives && self.remote.is_none() && self.target.is_none() && self.skip > 0 {
            return Err(Error::usage(
                "-s belongs to the client (-r or -t); the server learns it in the handshake",
            ));
        }
        if self.auto && !self.list_drives {
            return Err(Error::usage(
                "-auto: auto-tuning is not available yet in this build",
            ));
        }

        if !self.list_drives {
            check_buffer_memory(
                self.block_size.unwrap_or(DEFAULT_BLOCK_SIZE),
                workers,
                prefetch,
                available_memory(),
            )?;
        }

        let path = self.file.unwrap_or_else(|| PathBuf::from("/dev/zero"));
        // Which end this process is, as the client or the local `-f`; a
        // server is the other one.
        let role = if self.download {
            Role::Destination
        } else {
            Role::Source
        };
        let mode = if self.list_drives {
            Mode::ListDrives {
                sysfs: sysfs_root(),
            }
        } else if let Some((host, port)) = self.remote {
            Mode::Connect(Connect {
                host,
                port,
                role,
                path,
                secret: secret(self.key, self.token)?,
            })
        } else if let Some(Target::Local(other)) = self.target {
            let (source, destination) = match role {
                Role::Source => (path, other),
                Role::Destination => (other, path),
            };
            Mode::Local {
                source,
                destination,
            }
        } else if let Some(Target::Remote(target)) = self.target {
            Mode::Ssh {
                target,
                role,
                path,
                shell: self
                    .ssh
                    .or_else(|| std::env::var(SSH_ENV).ok())
                    .filter(|s| !s.trim().is_empty())
                    .unwrap_or_else(|| DEFAULT_SHELL.to_string()),
                encrypt: self.encrypt,
            }
        } else {
            Mode::Serve(Serve {
                bind: self.bind.unwrap_or(IpAddr::from([0, 0, 0, 0])),
                port: self.port.unwrap_or(8080),
                role: match role {
                    Role::Source => Role::Destination,
                    Role::Destination => Role::Source,
                },
                path,
                secret: secret(self.key, self.token)?,
            })
        };
        Ok(Config {
            mode,
            transfer: Transfer {
                block_size: self.block_size.unwrap_or(DEFAULT_BLOCK_SIZE),
                skip: self.skip,
                compression: if self.no_compress {
                    None
                } else {
                    Some(self.level.unwrap_or(Level::Default))
                },
                workers,
                prefetch,
            },
            log: LogOptions {
                prefix: self.prefix,
                quiet: self.quiet,
                verbose: self.verbose || env_flag(VERBOSE_ENV),
                no_server_progress: self.no_server_progress,
            },
            env: Env::from_process(),
        })
    }
}

/// Bytes of block buffers a run holds at most: the pool of
/// `prefetch + 2·workers + 2` blocks each end keeps, plus a frame per worker
/// being built or decompressed, as SPEC.md and issue 13 count them.
pub fn buffer_memory(block_size: usize, workers: usize, prefetch: usize) -> u64 {
    let blocks = prefetch
        .saturating_add(workers.saturating_mul(4))
        .saturating_add(2);
    (blocks as u64).saturating_mul(block_size as u64)
}

/// The hard limit on buffer memory, checked before anything is opened:
/// more than the memory available (`MemAvailable`, when it can be read)
/// would end in the out-of-memory killer, with no message. Read buffers are
/// locked where permitted, so they cannot be swapped out either. A usage
/// error naming the flags that set the figure. (`RLIMIT_MEMLOCK` is not a
/// limit here: locking is best effort and a lower limit only leaves the
/// buffers unlocked.)
pub fn check_buffer_memory(
    block_size: usize,
    workers: usize,
    prefetch: usize,
    available: Option<u64>,
) -> Result<()> {
    let need = buffer_memory(block_size, workers, prefetch);
    match available {
        Some(avail) if need > avail => Err(Error::usage(format!(
            "-b {}, -w {workers} and -prefetch {prefetch} need about {} of buffers \
             ((prefetch + 4 x workers + 2) x block size), more than the {} of memory available; \
             use a smaller -b, -w or -prefetch",
            crate::progress::human_bytes(block_size as u64),
            crate::progress::human_bytes(need),
            crate::progress::human_bytes(avail),
        ))),
        _ => Ok(()),
    }
}

/// `MemAvailable` from `/proc/meminfo`, in bytes; None when unknown.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The session secret of `-K` (which encrypts) or else `-token-file` (which
/// only authenticates), read from where it was given.
fn secret(key: Option<SecretArg>, token: Option<SecretArg>) -> Result<Option<Secret>> {
    let key = key.map(|k| k.read("-K")).transpose()?;
    let token = token.map(|t| t.read("-token-file")).transpose()?;
    Ok(match (key, token) {
        (Some(key), _) => Some(Secret::new(key, true)),
        (None, Some(token)) => Some(Secret::new(token, false)),
        (None, None) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_beyond_available_memory_are_refused_naming_the_flags() {
        let gib = 1usize << 30;
        let e = check_buffer_memory(gib, 1, 4, Some(4 << 30)).unwrap_err();
        assert_eq!(e.exit_status(), 2);
        let msg = e.to_string();
        for flag in ["-b", "-w", "-prefetch"] {
            assert!(msg.contains(flag), "{msg}");
        }
        assert!(check_buffer_memory(10 << 20, 1, 4, Some(4 << 30)).is_ok());
        assert!(
            check_buffer_memory(gib, 64, 256, None).is_ok(),
            "unknown: no refusal"
        );
    }
}
