//! bsync keeps a destination block device or file identical to a source,
//! block by block, moving only what differs.
//!
//! The binary (`src/main.rs`) parses the command line with [`cli`] into a
//! [`config::Config`], a plan in the roles' terms, and hands it to [`run`].
//! Only `main.rs`, this file and `cli/` know the command line; everything
//! else reads the plan. ARCHITECTURE.md draws the layers and follows one
//! block from `-f` to the destination.
//!
//! The engine, shared by every mode: one sequential reader per side
//! ([`reader::read_blocks`]) fills pooled buffers ([`pool`]) into a bounded
//! prefetch queue; `-w` workers decide per 4 KiB page what the destination
//! needs ([`block::Extent`]); one [`writer::Writer`] applies it in offset order.
#![deny(unsafe_code)]
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]
// Every narrowing conversion says what happens when it does not fit; test
// code builds byte patterns with `as u8` on purpose.
#![warn(clippy::cast_possible_truncation)]
#![cfg_attr(test, allow(clippy::cast_possible_truncation))]

pub mod aead;
pub mod auth;
pub mod auto;
pub mod block;
pub mod child;
pub mod cli;
pub mod client;
pub mod compress;
pub mod config;
/// The block digest (FNV-1a 128 in 16 interleaved lanes).
pub mod digest;
pub mod disk;
pub mod drives;
pub mod error;
pub mod handshake;
pub mod local;
pub mod lock;
pub mod log;
pub mod mounts;
pub mod net;
pub mod patch;
pub mod pool;
pub mod progress;
pub mod proto;
pub mod reader;
pub mod remote_shell;
pub mod rescue;
pub mod server;
pub mod session;
pub mod sha256;
pub mod ssh;
pub mod stdio;
pub mod summary;
/// Every raw OS call bsync makes; the only module with `unsafe`.
#[allow(unsafe_code)]
pub mod sys;
pub mod units;
pub mod writer;

pub use error::{Error, Result};

use config::{Config, Mode};
use log::Log;

/// Do what `config` asks. Errors carry their exit status.
pub fn run(config: &Config) -> Result<()> {
    let log = Log::new(&config.log);
    if matches!(
        config.mode,
        Mode::Local { .. } | Mode::Connect(_) | Mode::Serve(_) | Mode::Ssh(_) | Mode::Apply(_)
    ) {
        // The one signal thread: -t also stops its ssh and removes the
        // remote copy; --patch stops between two records.
        child::watch_interrupts(&log);
    }
    if matches!(config.mode, Mode::Serve(_)) {
        progress::set_server();
    }
    if let Mode::RemoteShell(r) = &config.mode {
        patch::make::record_diffsize(r.diffsize);
    }
    if patch_on_stdout(config) {
        summary::json_to_stderr();
    }
    if block_size_from_peer(&config.mode) {
        progress::set_block_size_from_peer();
    }
    match &config.mode {
        Mode::Local {
            source,
            destination,
            dry,
        } => match dry {
            Some(dry) => patch::local::run(config, dry, source, destination, &log),
            None => local::sync(
                &config.transfer,
                &config.env,
                source,
                destination,
                config.rescue.as_deref(),
                &log,
            ),
        },
        Mode::Ssh(s) => ssh::run(s, config, &log),
        Mode::Connect(c) => client::connect_tcp(c, &config.transfer, &config.env, &log, b""),
        Mode::Serve(s) => server::run(s, config, &log),
        Mode::Stdio(s) => server::run_stdio(s, config, &log),
        Mode::Apply(a) => patch::apply::run(a, &config.env, &log),
        Mode::RemoteShell(r) if r.undo => patch::undo::run(r, config, &log),
        Mode::RemoteShell(r) => remote_shell::run(r, config, &log),
        Mode::ListDrives { sysfs } => list_drives(sysfs),
    }
}

/// Whether stdout carries a patch (`--write-patch -`, bdsync's client), so
/// that nothing else may go there.
fn patch_on_stdout(config: &Config) -> bool {
    matches!(config.mode.dry(), Some(config::DryRun::Patch(None)))
        || matches!(config.mode, Mode::RemoteShell(_))
}

/// Whether the other end's `-b` sets this run's block size: a downloading
/// `-r` client takes its server's, an upload server its client's.
fn block_size_from_peer(mode: &Mode) -> bool {
    match mode {
        Mode::Connect(c) => c.role == config::Role::Destination,
        Mode::Serve(s) => s.role == config::Role::Destination,
        _ => false,
    }
}

/// `-a`: the block devices sysfs knows, then where to learn more.
fn list_drives(root: &std::path::Path) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let shown = drives::scan(root).and_then(|list| drives::print(&list, &mut out));
    match shown {
        Ok(()) => Ok(()),
        // A closed stdout (`bsync -a | head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => {
            let _ = writeln!(out, "{}", drives::LSBLK_HINT);
            Err(Error::io(
                format!("-a: {}", root.join("block").display()),
                "list block devices",
                e,
            ))
        }
    }
}
