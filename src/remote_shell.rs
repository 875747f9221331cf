//! bdsync's client form, `bsync REMSHCMD LOCDEV REMDEV > PATCH`: run the
//! remote shell command with `sh -c` (ssh with any options, sudo, a jump
//! host, netcat to an inetd service...), whose stdin and stdout reach a
//! remote `bsync --server`; ask it to open REMDEV; compare it with LOCDEV
//! without writing to it; write a patch that makes REMDEV into LOCDEV to
//! stdout. The remote shell's stderr passes through to ours.

use crate::child;
use crate::error::{Error, Result};
use crate::log::Log;
use crate::net::Stream;
use crate::stdio::OpenRequest;
use crate::{
    client,
    config::{Config, DryRun, RemoteShell, Role},
};

/// Run bdsync's client (the undo form, `--remdata`, is [`crate::patch::undo::run`]).
pub fn run(r: &RemoteShell, config: &Config, log: &Log) -> Result<()> {
    let (child, mut stream, peer) = child::sh(&r.command)?;
    stream
        .set_deadline(config.env.io_timeout)
        .map_err(|e| Error::io(&peer, "set deadlines", e))?;
    let req = OpenRequest {
        role: Role::Destination,
        block_size: config.transfer.block_size,
        path: r.remote.clone().into(),
    };
    // The handshake is done once the session's parameters are known.
    let started = std::cell::Cell::new(false);
    let session = std::io::Write::write_all(&mut stream, &req.encode())
        .map_err(|e| crate::net::net_error(&peer, "the open request", e))
        .and_then(|()| crate::disk::Disk::open_source(&r.local, &config.env, log))
        .and_then(|disk| disk.rescued(config.rescue.as_deref(), &r.local))
        .and_then(|mut disk| {
            let pipe = client::Pipe {
                peer: &peer,
                role: Role::Source,
                dry: Some((&DryRun::Patch(None), r.remote.as_bytes())),
                on_params: Some(&|_| started.set(true)),
                to: None,
                // Whatever REMSHCMD is (nc too): nothing is claimed of it.
                in_ssh: false,
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
    let _ = stream.shutdown();
    child::reap(child, &peer, session, started.get())
}
