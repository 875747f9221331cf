//! The SSH launcher: `-t [user@]host[:port]:/path` in one command.
//!
//! Nothing needs to be installed on the other machine, and the launcher
//! logs in once: one `ssh` session runs one remote shell script
//! ([`session_script`]) that
//!
//! 1. prints `uname -sm` and stops, with nothing written, unless that
//!    matches this binary; in an upload, says whether the remote path
//!    exists (a new one is said here, as a local run says it);
//! 2. looks in the remote user's cache
//!    (`${XDG_CACHE_HOME:-$HOME/.cache}/bsync/SHA256/bsync`, mode 0700) for
//!    this exact executable, checked with `sha256sum`; only if it is missing
//!    or wrong does it ask, and this side sends the executable
//!    (`/proc/PID/exe`) down the same session's stdin;
//! 3. starts it as a one-session server (`-p 0`, so the kernel picks a free
//!    port, printed on stdout) bound to the address the SSH connection
//!    arrived on (`$SSH_CONNECTION`), so it never listens on more than that
//!    one address;
//!
//! and this side then connects to it directly over TCP with the ordinary
//! client ([`client::connect_tcp`](super::client::connect_tcp)): the data never goes through ssh's own
//! encryption and flow control, which is what makes it fast. One login
//! means a password or passphrase is asked for once.
//!
//! A fresh 32-byte secret from `getrandom` is the first line on that ssh
//! session's stdin, never on a command line (a remote `ps` would show it):
//! with `-e` it is the encryption key (`-K -`), otherwise the session token
//! (`-token-file -`). The remote shell reads it with its `read` builtin and
//! hands it to bsync through a pipe from the `printf` builtin.
//!
//! Cleanup. The cached copy stays (that is its point); nothing else is left.
//! A partial copy is removed by the remote script's `EXIT` trap, and a
//! complete one only ever appears under its final name by `mv`. Where there
//! is no usable cache directory the copy goes into a `mktemp -d` directory,
//! which the same trap removes when bsync exits. The remote kills bsync
//! when the ssh session's stdin reaches end of file, which is how it learns
//! that this side has gone away. As a second line of defence for such a
//! directory, this side runs `ssh host rm -rf DIR` after any failure and
//! after Ctrl-C: SIGINT, SIGTERM and SIGHUP are blocked in every thread and
//! taken by the one signal thread ([`crate::child`]), which stops the local
//! ssh, cleans up and exits with 128 + the signal number.
//!
//! The parts, each in its own file:
//!
//! - `command`: the ssh command lines;
//! - `script`: the shell script run on the remote, and quoting;
//! - `process`: supervising the local ssh (its stderr kept, a bounded wait,
//!   a kill), on top of [`crate::child`];
//! - `cleanup`: what to undo on the remote when the run stops.
//!
//! This file puts them in order: [`run`].

mod channel;
mod cleanup;
mod command;
mod process;
mod script;

pub use command::{Shell, split_words};
pub use script::{Binary, quote, session_script};

use std::path::Path;
use std::time::Duration;

use crate::aead::Key;
use crate::auth::Secret;
use crate::config::{Config, Connect, DryRun, RemoteTarget, Role, Ssh};
use crate::error::{EXIT_USAGE, Error, Result};
use crate::log::Log;
use crate::sys;
use command::Endpoint;
use process::{FAILED_REMOTE_GRACE, Remote, RemoteExit, SSH_FAILED};
use script::{DIR, HAVE, NEW, SEND, is_safe_dir};

/// This end of a `-t` run, as the plan says it.
struct Launch<'a> {
    config: &'a Config,
    target: &'a RemoteTarget,
    role: Role,
    path: &'a Path,
    encrypt: bool,
    over_ssh: bool,
    /// `--compare` or `--write-patch`.
    dry: Option<&'a DryRun>,
}

/// Run the transfer `s` describes over SSH, moving data as `config` says.
pub fn run(s: &Ssh, config: &Config, log: &Log) -> Result<()> {
    let Ssh {
        target,
        role,
        path,
        shell,
        encrypt,
        over_ssh,
        dry,
    } = s;
    let launch = Launch {
        config,
        target,
        role: *role,
        path,
        encrypt: *encrypt,
        over_ssh: *over_ssh,
        dry: dry.as_ref(),
    };
    for (what, s) in [("host", Some(&target.host)), ("user", target.user.as_ref())] {
        if s.is_some_and(|s| s.starts_with('-')) {
            return Err(Error::usage(format!(
                "-t: the {what} cannot start with '-'"
            )));
        }
    }
    // This end is checked before anything happens on the remote: a typo
    // in -f, a missing -f, a destination that is mounted or read-only.
    match role {
        Role::Source => crate::disk::check_source(path)?,
        Role::Destination if dry.is_none() => {
            crate::disk::check_destination(path, &config.env, log)?;
        }
        Role::Destination => {}
    }
    let endpoint = Endpoint::new(shell, target);
    cleanup::begin(&endpoint, &target.host, remove_remote);
    let result = launch_and_sync(&launch, &endpoint, log);
    let left = cleanup::end();
    if result.is_err()
        && let Some(dir) = left
    {
        remove_remote(&endpoint, &dir, log);
    }
    result
}

/// One ssh session: check the machine, send bsync if the remote's cache
/// lacks it, start it; then sync with it.
fn launch_and_sync(launch: &Launch, endpoint: &Endpoint, log: &Log) -> Result<()> {
    let (config, target) = (launch.config, launch.target);
    let name = &target.host;
    let exe_path = format!("/proc/{}/exe", std::process::id());
    let exe = std::fs::read(&exe_path)
        .map_err(|e| Error::io(format!("this executable {exe_path}"), "read", e))?;
    let binary = Binary {
        sha256: crate::sha256::hex(&exe),
        len: exe.len(),
    };

    let mut secret = [0u8; 32];
    sys::getrandom(&mut secret).map_err(|e| Error::io("ssh", "get random bytes", e))?;
    let script = session_script(
        &binary,
        &target.path,
        launch.role,
        &config.transfer,
        config.log.verbose,
        launch.encrypt,
    );
    log.info(format!("{name}: logging in, checking the architecture"));
    // ssh -G only reads ssh's configuration; it runs while ssh logs in.
    let connect_host = {
        let endpoint = endpoint.clone();
        std::thread::Builder::new()
            .spawn(move || endpoint.connect_host())
            .map_err(crate::session::thread_refused)?
    };
    let mut remote = Remote::start(endpoint.command(&script), log)?;
    remote.send_secret(&secret);
    // A dry run's destination that does not exist: said plainly once the
    // remote has its copy, its server stopped (or refusing) at once.
    let mut missing = false;
    let copy = match provide(&mut remote, &exe, launch, log, &mut missing) {
        Ok(copy) => copy,
        Err(what) => {
            let exit = remote.finish(Some(FAILED_REMOTE_GRACE));
            // A remote that ended well after one line did not match.
            return Err(match what {
                Provide::Mismatch(uname) if exit.success() => Error::Failed(format!(
                    "{name} is {uname:?}, but this bsync is built for Linux {}: \
                 architecture mismatch, nothing was copied",
                    std::env::consts::ARCH
                )),
                Provide::Mismatch(line) => {
                    // A login shell such as nologin says why on stdout.
                    let mut exit = exit;
                    exit.tail.push(line);
                    explain(None, &exit, endpoint, "the remote shell failed")
                }
                Provide::Failed(what) => explain(None, &exit, endpoint, &what),
            });
        }
    };
    if missing {
        let _ = remote.port();
        let _ = remote.finish(Some(Duration::ZERO));
        return Err(Error::Failed(format!(
            "destination {}:{} {}",
            endpoint.typed(),
            target.path,
            crate::disk::MISSING_DRY
        )));
    }
    let Some(port) = remote.port() else {
        let exit = remote.finish(Some(FAILED_REMOTE_GRACE));
        return Err(explain(
            None,
            &exit,
            endpoint,
            "the remote bsync did not start",
        ));
    };
    let host = connect_host
        .join()
        .unwrap_or_else(|_| endpoint.host.clone());
    log.info(format!(
        "{name}: bsync is listening on port {port}; connecting to {host}"
    ));
    // This side's half of the session: a client of the remote server,
    // proving itself with the secret (a key with -e, else a token).
    let connect = Connect {
        host,
        port,
        role: launch.role,
        path: launch.path.to_path_buf(),
        secret: Some(Secret::new(Key::from_bytes(secret), launch.encrypt)),
        auto: false,
        rescue: config.rescue.clone(),
        dry: launch.dry.cloned(),
    };
    let synced = channel::sync(
        endpoint,
        &copy,
        &target.path,
        &connect,
        launch.over_ssh,
        config,
        log,
    )
    .map_err(|e| of_remote(e, name, launch.role, &connect));
    match synced {
        // The one-session server was not used: stop it (which removes the
        // directory; the binary inside ssh already runs).
        Ok(channel::Carried::Channel) => {
            let _ = remote.finish(Some(Duration::ZERO));
            Ok(())
        }
        synced => conclude(synced.map(|_| ()), remote, config, endpoint, log),
    }
}

/// An error of the session said of the host as it was typed, not of the
/// address this side connected to: the remote's own words as `HOST failed:
/// ...`; a lost, silent or garbled connection as `HOST (the remote source)`
/// or `HOST (the remote destination)`, the side that failed. `role` is
/// this end's; `c` the connection the client made.
fn of_remote(e: Error, name: &str, role: Role, c: &Connect) -> Error {
    let side = match role {
        Role::Source => "destination",
        Role::Destination => "source",
    };
    let tcp = if c.host.contains(':') {
        format!("server [{}]:{}", c.host, c.port)
    } else {
        format!("server {}:{}", c.host, c.port)
    };
    let inside = format!("{name} (inside ssh)");
    let rename = |s: String| {
        s.replace(&tcp, &format!("{name} (the remote {side})"))
            .replace(&inside, &format!("{name} (the remote {side}, inside ssh)"))
    };
    match e {
        Error::Remote { msg, .. } => Error::Remote {
            peer: name.to_string(),
            msg: msg.strip_prefix("server: ").unwrap_or(&msg).to_string(),
        },
        Error::Timeout { peer, phase } => Error::Timeout {
            peer: rename(peer),
            phase,
        },
        Error::Closed { peer, phase } => Error::Closed {
            peer: rename(peer),
            phase,
        },
        Error::Protocol { peer, what } => Error::Protocol {
            peer: rename(peer),
            what,
        },
        Error::Auth { peer, why } => Error::Auth {
            peer: rename(peer),
            why,
        },
        Error::Io { what, op, source } => Error::Io {
            what: rename(what),
            op,
            source,
        },
        Error::Failed(msg) => Error::Failed(rename(msg)),
        other => other,
    }
}

/// Why the remote script stopped before its server started.
enum Provide {
    /// It said `uname -sm` and nothing more: another machine, if it ended
    /// well.
    Mismatch(String),
    /// Anything else, for [`explain`] to put with how the remote ended.
    Failed(String),
}

/// Read what the remote script says before its server starts (`uname -sm`,
/// maybe `new` and `dir`, then `have`, or `send`) and send `exe` if it
/// asks. Returns where the remote's copy is.
fn provide(
    remote: &mut Remote,
    exe: &[u8],
    launch: &Launch,
    log: &Log,
    missing: &mut bool,
) -> std::result::Result<String, Provide> {
    use Provide::Failed;
    let name = &launch.target.host;
    let Some(uname) = remote.line().filter(|l| !l.trim().is_empty()) else {
        return Err(Failed(
            "`uname -sm` printed nothing; is the remote shell a POSIX shell?".into(),
        ));
    };
    loop {
        let Some(line) = remote.line() else {
            return Err(Provide::Mismatch(uname.trim().to_string()));
        };
        if line == NEW {
            // As a local run says it, of the path as typed: a typo (say
            // /dev/vdzz9) would otherwise become a file without a word.
            // A dry run opens nothing new: it fails on the missing path,
            // as a local one does.
            if launch.dry.is_some() {
                *missing = true;
                continue;
            }
            log.info(format!(
                "destination {}:{}: a new file (it did not exist)",
                bracketed(name),
                launch.target.path
            ));
        } else if let Some(dir) = line.strip_prefix(DIR) {
            if !is_safe_dir(dir) {
                return Err(Failed(format!(
                    "mktemp gave an unexpected directory {dir:?}"
                )));
            }
            cleanup::made_dir(dir);
        } else if let Some(path) = line.strip_prefix(HAVE) {
            log.info(format!("{name}: using the copy of bsync in {path}"));
            return Ok(path.to_string());
        } else if let Some(path) = line.strip_prefix(SEND) {
            log.info(format!(
                "{name}: copying bsync ({} bytes) to {path}",
                exe.len()
            ));
            // A remote that stopped reading says why on stderr.
            return remote.send(exe).map(|()| path.to_string()).map_err(|e| {
                Failed(format!(
                    "sending bsync failed: {}",
                    crate::error::os_words(&e)
                ))
            });
        } else {
            return Err(Failed(format!(
                "unexpected line from the remote shell: {line:?}"
            )));
        }
    }
}

/// Wait for the remote after the client's part ended with `synced`, and
/// say in one line what went wrong on either side.
fn conclude(
    synced: Result<()>,
    remote: Remote,
    config: &Config,
    at: &Endpoint,
    log: &Log,
) -> Result<()> {
    let name = &at.host;
    if let Err(e) = synced {
        let exit = remote.finish(Some(FAILED_REMOTE_GRACE));
        return Err(explain(Some(e), &exit, at, "the remote bsync failed"));
    }
    // The server exits once the destination is flushed; it gets as long as
    // any other network step.
    let exit = remote.finish(Some(config.env.io_timeout));
    if !exit.success() {
        return Err(explain(
            None,
            &exit,
            at,
            "the remote bsync failed after the transfer",
        ));
    }
    // Warnings of a quiet remote; -v showed them as they came.
    if !log.is_verbose() {
        for line in &exit.tail {
            log.line(format!("{name}: {line}"));
        }
    }
    Ok(())
}

/// How long the explicit `ssh host rm -rf DIR` of a cleanup may take.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

/// `rm -rf DIR` on the remote, bounded in time; says so when it fails.
fn remove_remote(endpoint: &Endpoint, dir: &str, log: &Log) {
    let cmd = endpoint.command(&format!("rm -rf {}", quote(dir)));
    let done = process::bounded(cmd, "start", CLEANUP_TIMEOUT).is_ok_and(|f| f.status.success());
    if !done {
        log.line(format!(
            "{}: could not remove {dir}; remove it by hand",
            endpoint.host
        ));
    }
}

/// One line out of the local error (if any) and how the remote ended, at
/// the machine `at`.
fn explain(local: Option<Error>, exit: &RemoteExit, at: &Endpoint, what: &str) -> Error {
    let name = &at.host;
    if exit.status.and_then(|s| s.code()) == Some(SSH_FAILED) {
        return Error::Failed(format!(
            "ssh to {name} failed: {}",
            exit.last_lines(3)
                .as_deref()
                .unwrap_or("(ssh said nothing)")
        ));
    }
    match local {
        // The server told the client why; that is the clearest line.
        Some(e @ Error::Remote { .. }) => e,
        // Stopped by this side after the failure: its status says nothing.
        Some(e) if exit.success() || !exit.own => e,
        // This side failed first (its disk, its checks): the remote only
        // saw its client go (unless it was killed: that is the news).
        Some(e) if !crate::net::is_connection_loss(&e) && !exit.killed() => e,
        Some(e) => Error::Failed(format!(
            "{e}; the remote bsync on {name} {}",
            exit.describe()
        )),
        // The remote bsync refused its command line (exit 2): a usage
        // error of this run, such as a directory as the remote path.
        None if exit.own && exit.status.and_then(|s| s.code()) == Some(EXIT_USAGE) => {
            Error::usage(as_typed(exit, at, what))
        }
        None => Error::Failed(format!("{name}: {what}: {}", exit.describe())),
    }
}

/// A host as it goes before `:/path`: an IPv6 literal in brackets.
fn bracketed(host: &str) -> String {
    match host.contains(':') {
        true => format!("[{host}]"),
        false => host.to_string(),
    }
}

/// The remote bsync's usage error in the words of this run: the remote's
/// `-f` is the path the user gave in `-t`, so `-f: /srv/d is a directory`
/// reads `-t user@host:2222:/srv/d is a directory` (the `-t` as typed),
/// and a remote `/dev/zero` is no missing `-f`.
fn as_typed(exit: &RemoteExit, at: &Endpoint, what: &str) -> String {
    let name = &at.host;
    let said = exit.last_line().map(|l| l.trim_start_matches("bsync: "));
    if let Some(rest) = said.and_then(|l| l.strip_prefix("-f: ")) {
        return format!("-t {}:{rest}", at.typed());
    }
    let hint = crate::disk::DEFAULT_SOURCE_HINT;
    format!("{name}: {what}: {}", exit.describe()).replace(hint, "a character device")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::ExitStatus;

    #[test]
    fn ssh_failure_names_the_host_and_ssh_line() {
        use std::os::unix::process::ExitStatusExt;
        let exit = RemoteExit {
            status: Some(ExitStatus::from_raw(255 << 8)),
            own: true,
            tail: vec!["ssh: connect to host h port 1: Connection refused".into()],
        };
        let target = crate::config::RemoteTarget {
            user: Some("u".into()),
            host: "h".into(),
            port: Some(2222),
            path: "/d".into(),
        };
        let at = Endpoint::new("ssh", &target);
        assert_eq!(at.typed(), "u@h:2222");
        let e = explain(None, &exit, &at, "failed");
        assert_eq!(
            e.to_string(),
            "ssh to h failed: ssh: connect to host h port 1: Connection refused"
        );
        let killed = RemoteExit {
            status: Some(ExitStatus::from_raw(137 << 8)),
            own: true,
            tail: vec![],
        };
        assert_eq!(killed.describe(), "was killed by signal 9");
    }
}
