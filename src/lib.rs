//! bsync keeps a destination block device or file identical to a source,
//! block by block, moving only what differs.
//!
//! The binary (`src/main.rs`) parses the command line with [`cli`] and hands
//! the validated [`cli::Config`] to [`run`]. Everything else lives here so
//! that tests, benchmarks and fuzz targets can reach it.
//!
//! The engine, shared by every mode: one sequential reader per side
//! ([`disk::read_blocks`]) fills pooled buffers ([`pool`]) into a bounded
//! prefetch queue; `-w` workers decide per sub-block what the destination
//! needs ([`block::Extent`]); one [`writer::Writer`] applies it in offset order.
#![deny(unsafe_code)]
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod aead;
pub mod auth;
pub mod block;
pub mod cli;
pub mod client;
pub mod compress;
/// The block digest (FNV-1a 128 in 16 interleaved lanes).
pub mod digest;
pub mod disk;
pub mod drives;
pub mod error;
pub mod local;
pub mod net;
pub mod pool;
pub mod progress;
pub mod proto;
pub mod server;
pub mod session;
pub mod ssh;
/// Every raw OS call bsync makes; the only module with `unsafe`.
#[allow(unsafe_code)]
pub mod sys;
pub mod writer;

pub use error::{Error, Result};

use cli::{Config, Direction, Mode, Target};
use progress::Log;

/// Do what `config` asks. Errors carry their exit status.
pub fn run(config: &Config) -> Result<()> {
    let log = Log::new(&config.log);
    match &config.mode {
        Mode::Target(Target::Local(other)) => {
            let (src, dst) = match config.direction {
                Direction::Upload => (config.path.as_path(), other.as_path()),
                Direction::Download => (other.as_path(), config.path.as_path()),
            };
            local::sync(config, src, dst, &log)
        }
        Mode::Target(Target::Remote(t)) => ssh::run(config, t, &log),
        Mode::Client { .. } if config.auto => Err(Error::usage(
            "-auto: auto-tuning is not available yet in this build",
        )),
        Mode::Client { host, port } => client::run(config, host, *port, &log),
        Mode::Server { bind, port } => server::run(config, *bind, *port, &log),
        Mode::ListDrives => list_drives(),
    }
}

/// `-a`: the block devices sysfs knows, then where to learn more.
fn list_drives() -> Result<()> {
    use std::io::Write;
    let root = drives::sysfs_root();
    let mut out = std::io::stdout().lock();
    let shown = drives::scan(&root).and_then(|list| drives::print(&list, &mut out));
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
