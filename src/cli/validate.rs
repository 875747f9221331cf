//! The second step of the command line: flags as typed become a [`Config`]
//! in the roles' terms.
//!
//! Every rule about which flags go together lives here, and so does the one
//! place that reads a secret (`-K -`, `-token-file`) and the environment.
//! What comes out says which path is the source and which end serves; the
//! engine never sees `-f` or `-d`.

use std::net::IpAddr;
use std::path::PathBuf;

use super::paths::{check_not_a_host, check_writing_end};
use super::{DEFAULT_BLOCK_SIZE, RawArgs, Secret as SecretArg, Target};
use crate::auth::Secret;
use crate::compress::Level;
use crate::config::{
    Config, Connect, DryRun, Env, LogOptions, Mode, Role, SSH_ENV, Serve, Ssh, Stdio, Transfer,
    VERBOSE_ENV, env_flag, memory_available, memory_refusal, sysfs_root,
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
        self.check_conflicts()?;
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
        if self.key.is_some() && self.token.is_some() {
            return Err(Error::usage(
                "-K and -token-file cannot be combined: the key also serves as the token, \
                 so the token would be ignored; give one of them (the same on both ends)",
            ));
        }
        self.check_flags_apply()?;
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

        let dry = self.dry_run()?;
        if self.server {
            return self.stdio_server(workers, prefetch);
        }
        self.check_says_what_to_do()?;
        if let Some(Target::Local(path)) = &self.target {
            check_not_a_host(path)?;
        }
        let given_file = self.file.is_some();
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
                rescue: self.rescue.clone(),
                dry,
            })
        } else if let Some(Target::Local(other)) = self.target {
            let (source, destination) = match role {
                Role::Source => (path, other),
                Role::Destination => (other, path),
            };
            Mode::Local {
                source,
                destination,
                dry,
            }
        } else if let Some(Target::Remote(target)) = self.target {
            Mode::Ssh(Ssh {
                target,
                role,
                path,
                shell: self
                    .ssh
                    .or_else(|| std::env::var(SSH_ENV).ok())
                    .filter(|s| !s.trim().is_empty())
                    .unwrap_or_else(|| DEFAULT_SHELL.to_string()),
                encrypt: self.encrypt,
                over_ssh: self.over_ssh,
                dry,
            })
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
        match &mode {
            Mode::Local { destination, .. } => {
                if self.download {
                    check_writing_end(destination, "-f", given_file)?;
                } else {
                    check_writing_end(destination, "-t", true)?;
                }
            }
            Mode::Serve(Serve {
                role: Role::Destination,
                path,
                ..
            })
            | Mode::Connect(Connect {
                role: Role::Destination,
                path,
                ..
            })
            | Mode::Ssh(Ssh {
                role: Role::Destination,
                path,
                ..
            }) => check_writing_end(path, "-f", given_file)?,
            _ => {}
        }
        let transfer = Transfer {
            block_size: self.block_size.unwrap_or(DEFAULT_BLOCK_SIZE),
            skip: self.skip,
            compression: if self.no_compress {
                None
            } else {
                Some(self.level.unwrap_or(Level::Default))
            },
            workers,
            prefetch,
            bwlimit: self.bwlimit,
        };
        if !matches!(mode, Mode::ListDrives { .. }) {
            let local = matches!(mode, Mode::Local { .. });
            if let Some(why) = memory_available().and_then(|a| memory_refusal(&transfer, local, a))
            {
                return Err(Error::usage(why));
            }
        }
        Ok(Config {
            mode,
            transfer,
            log: LogOptions {
                prefix: self.prefix,
                quiet: self.quiet,
                verbose: self.verbose || env_flag(VERBOSE_ENV),
                no_server_progress: self.no_server_progress,
                json: self.json,
            },
            env: Env::from_process(),
            rescue: self.rescue,
        })
    }

    /// `--compare` and `--write-patch`: a source that reads a destination
    /// and writes nothing to it.
    fn dry_run(&self) -> Result<Option<DryRun>> {
        if self.over_ssh && !matches!(self.target, Some(Target::Remote(_))) {
            return Err(Error::usage("-over-ssh applies only to -t user@host:/path"));
        }
        let dry = match (&self.write_patch, self.compare) {
            (Some(_), true) => {
                return Err(Error::usage(
                    "--compare and --write-patch cannot be combined: a patch already says what differs",
                ));
            }
            (Some(p), false) if p.as_os_str() == "-" => DryRun::Patch(None),
            (Some(p), false) => {
                self.check_patch_path(p)?;
                DryRun::Patch(Some(p.clone()))
            }
            (None, true) => DryRun::Compare,
            (None, false) => return Ok(None),
        };
        let flag = if self.compare {
            "--compare"
        } else {
            "--write-patch"
        };
        if self.remote.is_none() && self.target.is_none() {
            return Err(Error::usage(format!(
                "{flag} needs a destination to read: -t PATH, -t user@host:/path or -r HOST:PORT"
            )));
        }
        if self.download && self.remote.is_some() {
            // Refused before connecting: a -d server started for this one
            // still waits for its client, which the user must hear.
            let instead = if self.compare {
                "drop -d here and serve the other end without -d (the same blocks differ \
                 either way round)"
            } else {
                "to patch this end's -f, serve it here (no -d) and run --write-patch on the \
                 server's machine with -r naming this one"
            };
            return Err(Error::usage(format!(
                "{flag} over -r reads this end as the source, never a -d server's: {instead}; \
                 a -d server started for this still waits for a client (stop it)"
            )));
        }
        if self.download {
            return Err(Error::usage(format!(
                "{flag} reads this end as the source: drop -d (swap -f and the -t path instead)"
            )));
        }
        if self.skip > 0 {
            return Err(Error::usage(format!(
                "{flag} covers the whole device: -s cannot be combined with it"
            )));
        }
        if self.auto {
            return Err(Error::usage(format!(
                "{flag} cannot be combined with -auto"
            )));
        }
        Ok(Some(dry))
    }

    /// `--server`: one session on stdin/stdout.
    fn stdio_server(self, workers: usize, prefetch: usize) -> Result<Config> {
        if self.remote.is_some()
            || self.target.is_some()
            || self.port.is_some()
            || self.bind.is_some()
        {
            return Err(Error::usage(
                "--server speaks on stdin/stdout: -r, -t, -p and -i do not apply",
            ));
        }
        if self.key == Some(SecretArg::Stdin) || self.token == Some(SecretArg::Stdin) {
            return Err(Error::usage(
                "--server: stdin carries the session, so -K - and -token-file - cannot read it; \
                 give a file (-token-file FILE)",
            ));
        }
        if self.write_patch.is_some() || self.compare {
            return Err(Error::usage(
                "--server serves; --compare and --write-patch belong to the client",
            ));
        }
        if self.json {
            return Err(Error::usage(
                "--server: stdout carries the session, so -json cannot print there",
            ));
        }
        let role = if self.download {
            Role::Source
        } else {
            Role::Destination
        };
        Ok(Config {
            mode: Mode::Stdio(Stdio {
                role,
                path: self.file,
                secret: secret(self.key, self.token)?,
            }),
            transfer: Transfer {
                block_size: self.block_size.unwrap_or(DEFAULT_BLOCK_SIZE),
                skip: 0,
                compression: if self.no_compress {
                    None
                } else {
                    Some(self.level.unwrap_or(Level::Default))
                },
                workers,
                prefetch,
                bwlimit: self.bwlimit,
            },
            log: LogOptions {
                prefix: self.prefix,
                // Its stderr is the remote shell's, mixed into the client's
                // terminal: errors only, unless -v.
                quiet: self.quiet || !(self.verbose || env_flag(VERBOSE_ENV)),
                verbose: self.verbose || env_flag(VERBOSE_ENV),
                no_server_progress: true,
                json: false,
            },
            env: Env::from_process(),
            rescue: None,
        })
    }

    /// Flags that ask for opposite things are refused, naming both.
    fn check_conflicts(&self) -> Result<()> {
        if self.quiet && self.verbose {
            return Err(Error::usage(
                "-q and -v cannot be combined: -q prints errors only, -v adds detail lines; \
                 give one of them",
            ));
        }
        if self.quiet && self.progress {
            return Err(Error::usage(
                "-q and --progress cannot be combined: -q prints errors only, --progress \
                 asks for the progress line (bsync shows it anyway without -q)",
            ));
        }
        Ok(())
    }

    /// A run that names no way of running (`bsync -f X` alone) would
    /// serve, on every address, a destination the user most likely meant
    /// as a source: it is refused with the three ways instead. A server
    /// says so with `-p` (or `-i`, or `-d`).
    fn check_says_what_to_do(&self) -> Result<()> {
        if self.list_drives
            || self.remote.is_some()
            || self.target.is_some()
            || self.port.is_some()
            || self.bind.is_some()
            || self.download
        {
            return Ok(());
        }
        Err(Error::usage(
            "say where the data goes; bsync runs in one of three ways:\n  \
             bsync -f SRC -t DST          copy (DST: a path, or user@host:/path over SSH)\n  \
             bsync -f DST -p PORT         serve: wait for a client to upload into DST\n  \
             bsync -f SRC -r HOST:PORT    upload SRC to that server\n\
             (-d reverses the direction; bsync -h says more)",
        ))
    }

    /// Every flag given where it has no effect is refused, naming it: a
    /// flag silently ignored is a run that does not do what was asked.
    fn check_flags_apply(&self) -> Result<()> {
        let given = |flag: &str| self.given.iter().any(|g| g == flag);
        let ssh_target = matches!(self.target, Some(Target::Remote(_)));
        let client = self.remote.is_some() || self.target.is_some();
        if self.list_drives {
            return Ok(());
        }
        if client {
            if given("p") && ssh_target {
                return Err(Error::usage(
                    "-p is the port a server listens on; with -t the ssh port goes in the \
                     target: -t user@host:PORT:/path",
                ));
            }
            for flag in ["p", "i", "P"] {
                if given(flag) {
                    return Err(Error::usage(format!(
                        "-{flag} applies only to a server (no -r or -t); this run is a client, \
                         where it has no effect"
                    )));
                }
            }
        }
        if !client && (self.no_compress || self.level.is_some()) {
            let flag = if self.no_compress { "-n" } else { "-L" };
            return Err(Error::usage(format!(
                "{flag} has no effect on a server: the client picks the compression of \
                 the session, in both directions; give {flag} to the client"
            )));
        }
        if given("b") && self.download && self.remote.is_some() {
            return Err(Error::usage(
                "-b has no effect on a downloading client: the server is the source and its \
                 block size wins; give -b to the server",
            ));
        }
        self.check_rescue(client)?;
        if self.bwlimit.is_some() {
            let sends = match (&self.remote, &self.target) {
                (Some(_), _) => !self.download,
                // With -d the remote end sends, and gets the limit.
                (None, Some(Target::Remote(_))) => true,
                (None, Some(Target::Local(_))) => false,
                (None, None) => self.download,
            };
            if !sends {
                return Err(Error::usage(
                    "-bwlimit limits the end that sends (an uploading client, a download \
                     server); this end sends no block data, so it would have no effect",
                ));
            }
        }
        Ok(())
    }
}

impl RawArgs {
    /// `--rescue` reads the source: only an end that does, in a run that
    /// writes.
    fn check_rescue(&self, client: bool) -> Result<()> {
        let Some(map) = &self.rescue else {
            return Ok(());
        };
        self.check_map_path(map)?;
        if self.compare {
            return Err(Error::usage(
                "-rescue copies a failing source; it does not go with -compare, which \
                 writes nothing to keep a map of (-write-patch does: unreadable sectors \
                 are marked unknown in the patch)",
            ));
        }
        let remote_source = matches!(self.target, Some(Target::Remote(_))) && self.download;
        let reads_source = if client {
            !(remote_source || self.remote.is_some() && self.download)
        } else {
            self.download
        };
        if self.block_size.is_some_and(|b| b % 4096 != 0) {
            return Err(Error::usage(
                "-rescue needs -b a multiple of 4K, so that blocks start on the \
                 sector boundaries it retries at",
            ));
        }
        if self.server || !reads_source {
            return Err(Error::usage(
                "-rescue applies to the end that reads the source (a local copy, an \
                 uploading client, a download server); this end does not read it",
            ));
        }
        Ok(())
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
