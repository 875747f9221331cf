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
        if self.auto {
            let chosen = [
                ("-b", self.block_size.is_some()),
                ("-w", self.workers.is_some()),
                ("-prefetch", self.prefetch.is_some()),
                ("-L", self.level.is_some()),
                ("-n", self.no_compress),
            ];
            if let Some((flag, _)) = chosen.iter().find(|(_, given)| *given) {
                return Err(Error::usage(format!(
                    "-auto chooses -b, -w, -prefetch and -L itself; drop {flag} or -auto"
                )));
            }
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
                auto: self.auto,
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
