//! `-t` through the ssh session itself: when the remote's port cannot be
//! reached from here (a firewall, NAT, a jump host), or with `-over-ssh`,
//! the session runs over the stdin and stdout of a second ssh command that
//! starts the copied binary as `bsync --server`. ssh then encrypts and
//! carries everything, in one stream (one lane, ssh's cipher).

use std::time::Duration;

use super::command::Endpoint;
use super::process::Remote;
use super::script::{Listen, quote, server_args};
use crate::auth::Secret;
use crate::child;
use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::log::Log;
use crate::net::Stream;
use crate::{
    client,
    config::{Config, Connect, Role},
};

/// How long the remote's port may take to accept before the session goes
/// inside ssh instead.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(3);

/// How the session was carried.
pub(super) enum Carried {
    /// Directly over TCP, to the one-session server.
    Tcp,
    /// Inside ssh; the one-session server was never used.
    Channel,
}

/// The client's half of a `-t` run: over TCP to `connect` when that port
/// answers and `-over-ssh` (`over_ssh`) is off, else inside ssh with `BINARY --server`
/// (the remote's copy of bsync, as the launch named it).
pub(super) fn sync(
    endpoint: &Endpoint,
    binary: &str,
    remote: &str,
    connect: &Connect,
    over_ssh: bool,
    config: &Config,
    log: &Log,
) -> Result<Carried> {
    let name = &endpoint.host;
    if over_ssh {
        log.info(format!(
            "{name}: carrying the session inside ssh (-over-ssh)"
        ));
    } else {
        let direct = client::connect_tcp_within(
            connect,
            &config.transfer,
            &config.env,
            log,
            remote.as_bytes(),
            Some(PROBE_DEADLINE),
        );
        match direct {
            Err(Error::Io { op, source, .. }) if op == client::FIRST_CONNECT => {
                log.info(format!(
                    "{name}: port {} on {} cannot be reached ({source}): carrying the session inside ssh",
                    connect.port, connect.host
                ));
            }
            other => return other.map(|()| Carried::Tcp),
        }
    }
    // -e seals frames with a key this end made; inside ssh, ssh's cipher
    // protects them instead (one layer is enough), and `--json` says
    // `"encryption":"ssh"`.
    if connect.secret.as_ref().is_some_and(Secret::encrypts) {
        log.info(format!(
            "{name}: -e: the session inside ssh is encrypted by ssh, not by bsync's own cipher"
        ));
    }
    let args = server_args(
        Listen::Stdio,
        remote,
        connect.role,
        &config.transfer,
        config.log.verbose,
    );
    let script = format!("exec {} {}", quote(binary), args.join(" "));
    // Its stderr is collected, not mixed into ours: what the remote said
    // is shown with its host's name when it explains a failure (`-v`
    // shows it as it comes).
    let mut server = Remote::start(endpoint.command(&script), log)?;
    let Some(stream) = server.stream() else {
        return Err(Error::Failed("ssh: no pipes".into()));
    };
    let peer = format!("{name} (inside ssh)");
    let to = format!("{name}:{remote}");
    let session = open_local(connect, config, log).and_then(|mut disk| {
        let pipe = client::Pipe {
            peer: &peer,
            role: connect.role,
            dry: connect.dry.as_ref().map(|d| (d, remote.as_bytes())),
            on_params: None,
            to: Some(&to),
            in_ssh: true,
        };
        client::connect_pipe(
            stream.clone(),
            &pipe,
            &mut disk,
            &config.transfer,
            &config.env,
            log,
        )
        .map(|_| ())
    });
    // Ends the remote's stdin: its server ends at once (a stream that
    // cannot come back), and ssh is waited for only within a deadline.
    let _ = stream.shutdown();
    if session.is_err() {
        return super::conclude(session, server, config, endpoint, log).map(|()| Carried::Channel);
    }
    // Both ends agreed, and an upload's destination said it was flushed
    // before that: ssh gets a moment to end and is stopped if it lingers.
    let exit = server.finish(Some(child::REAP_LIMIT));
    if exit.own && !exit.success() {
        return Err(super::explain(
            None,
            &exit,
            endpoint,
            "the remote bsync failed after the transfer",
        ));
    }
    Ok(Carried::Channel)
}

fn open_local(c: &Connect, config: &Config, log: &Log) -> Result<Disk> {
    match c.role {
        Role::Source => Disk::open_source(&c.path, &config.env, log)
            .and_then(|disk| disk.rescued(c.rescue.as_deref(), &c.path)),
        Role::Destination => Disk::open_destination(&c.path, &config.env, log),
    }
}
