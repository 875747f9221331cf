//! bdsync's client form, `bsync REMSHCMD LOCDEV REMDEV > PATCH`: run the
//! remote shell command with `sh -c` (ssh with any options, sudo, a jump
//! host, netcat to an inetd service...), whose stdin and stdout reach a
//! remote `bsync --server`; ask it to open REMDEV; compare it with LOCDEV
//! without writing to it; write a patch that makes REMDEV into LOCDEV to
//! stdout. The remote shell's stderr passes through to ours.

use std::os::fd::OwnedFd;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::net::Stream;
use crate::progress::Log;
use crate::stdio::{OpenRequest, PipeStream};
use crate::{
    client,
    config::{Config, DryRun, RemoteShell, Role},
};

/// Start `sh -c command` with its stdin and stdout as a stream to us.
pub fn spawn(command: &str) -> Result<(Child, PipeStream)> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::io(format!("remote shell `{command}`"), "start", e))?;
    let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(Error::Failed("remote shell: no pipes".into()));
    };
    Ok((
        child,
        PipeStream::new(OwnedFd::from(output), OwnedFd::from(input)),
    ))
}

/// How long the remote shell may take to end after the session has ended
/// (and its stdin was closed), before it is killed: the session's outcome
/// is known, whatever ssh still does.
pub const REAP_LIMIT: Duration = Duration::from_secs(5);

/// Wait for the remote shell after the session, at most [`REAP_LIMIT`];
/// its failure is only reported when the session itself went well.
pub fn reap(mut child: Child, command: &str, session: Result<()>) -> Result<()> {
    let status = wait_within(&mut child, REAP_LIMIT);
    session?;
    match status {
        Ok(Some(s)) if s.success() => Ok(()),
        // The session was complete and checked: only the shell lingered.
        Ok(None) => Ok(()),
        Ok(Some(s)) => Err(Error::Failed(format!(
            "remote shell `{command}` exited with {s} after the session"
        ))),
        Err(e) => Err(Error::io(format!("remote shell `{command}`"), "wait", e)),
    }
}

/// Wait up to `limit` for `child`; kill and reap it if it has not ended
/// by then (`Ok(None)`).
fn wait_within(child: &mut Child, limit: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            child.wait()?;
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run bdsync's client.
pub fn run(r: &RemoteShell, config: &Config, log: &Log) -> Result<()> {
    if r.undo {
        return crate::patch::undo::run(r, config, log);
    }
    let (child, mut stream) = spawn(&r.command)?;
    let peer = format!("remote shell `{}`", r.command);
    stream
        .set_deadline(config.env.io_timeout)
        .map_err(|e| Error::io(&peer, "set deadlines", e))?;
    let req = OpenRequest {
        role: Role::Destination,
        block_size: config.transfer.block_size,
        path: r.remote.clone().into(),
    };
    let session = std::io::Write::write_all(&mut stream, &req.encode())
        .map_err(|e| crate::net::net_error(&peer, "the open request", e))
        .and_then(|()| crate::disk::Disk::open_source(&r.local, &config.env, log))
        .and_then(|mut disk| {
            client::run_over(
                stream.clone(),
                &peer,
                Role::Source,
                &mut disk,
                &config.transfer,
                &config.env,
                log,
                Some(&DryRun::Patch(None)),
                r.remote.as_bytes(),
                None,
            )
            .map(|_| ())
        });
    let _ = stream.shutdown();
    reap(child, &r.command, session)
}
