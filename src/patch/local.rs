//! `--compare` and `--write-patch` with both ends on this machine: no
//! network, but the same session as over one, its two roles in this
//! process over a socket pair, so that a local dry run compares, counts
//! and makes patches exactly as a remote one does.

use std::path::Path;

use super::make::run_source_here;
use crate::config::DryRun;
use crate::error::{Error, Result};
use crate::log::Log;
use crate::session::{End, NoRejoin, Params};

/// `--compare` or `--write-patch` with both ends on this machine: the two
/// roles of a session run in this process over a socket pair, the
/// destination opened read-only.
pub fn run(
    config: &crate::config::Config,
    dry: &DryRun,
    source: &Path,
    destination: &Path,
    log: &Log,
) -> Result<()> {
    use crate::config::Role;
    use crate::disk::Disk;
    use crate::net::Lane;
    use crate::session::Own;
    use std::os::unix::net::UnixStream;

    let env = &config.env;
    let t = &config.transfer;
    let src = Disk::open_source(source, env, log)?.rescued(config.rescue.as_deref(), source)?;
    let dst = Disk::open_dry(destination, env, log)?;
    let mut salt = [0u8; 16];
    crate::sys::getrandom(&mut salt).map_err(|e| Error::io("bsync", "get random bytes", e))?;
    // Both ends are here: what a handshake would agree on is known.
    let agreed = crate::proto::Welcome {
        block_size: u32::try_from(t.block_size).unwrap_or(u32::MAX),
        source_size: src.size(),
        skip: 0,
        salt: u128::from_le_bytes(salt),
        lanes: 1,
    };
    let p = Params::agreed(
        &agreed,
        Own {
            compression: t.compression,
            workers: t.workers,
            prefetch: t.prefetch,
            deadline: env.io_timeout,
            encrypted: false,
            bwlimit: None,
        },
    );
    let (a, b) = UnixStream::pair().map_err(|e| Error::io("bsync", "socket pair", e))?;
    let max = crate::proto::max_payload(t.block_size);
    // The destination's end says nothing: the source's summary (and JSON)
    // is the run's.
    let quiet = Log::new(&crate::config::LogOptions {
        quiet: true,
        json: false,
        ..config.log.clone()
    });
    // Absolute: applying from another directory must aim at the same file.
    let absolute = std::path::absolute(destination).unwrap_or_else(|_| destination.into());
    let name = absolute.as_os_str();
    use std::os::unix::ffi::OsStrExt;
    let theirs = std::sync::Arc::new(crate::progress::Stats::default());
    std::thread::scope(|s| {
        let dest = crate::session::spawn_scoped(s, || -> Result<()> {
            let mut lane = Lane::open(b, "source".into(), env.io_timeout)?;
            lane.reader.set_max(max);
            crate::session::run(End {
                role: Role::Destination,
                params: &p,
                disk: &dst,
                lanes: vec![lane],
                rejoin: &NoRejoin,
                log: &quiet,
                progress: false,
                dry: None,
                counters: Some(&theirs),
                to: None,
            })
            .map(drop)
        })?;
        let ours = Lane::open(a, "destination".into(), env.io_timeout).and_then(|mut lane| {
            lane.reader.set_max(max);
            run_source_here(
                dry,
                name.as_bytes(),
                End {
                    role: Role::Source,
                    params: &p,
                    disk: &src,
                    lanes: vec![lane],
                    rejoin: &NoRejoin,
                    log,
                    progress: !log.is_quiet(),
                    dry: None,
                    counters: None,
                    to: None,
                },
                Some(&theirs),
            )
        });
        let theirs = dest
            .join()
            .unwrap_or_else(|_| Err(Error::Failed("the destination thread panicked".into())));
        match (ours, theirs) {
            (Err(e), _) => Err(e),
            (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(())) => Ok(()),
        }
    })
}
