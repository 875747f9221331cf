//! bsync keeps a destination block device or file identical to a source,
//! block by block, moving only what differs.
//!
//! The binary (`src/main.rs`) parses the command line with [`cli`] and hands
//! the validated [`cli::Config`] to [`run`]. Everything else lives here so
//! that tests, benchmarks and fuzz targets can reach it.
#![deny(unsafe_code)]
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

/// Block digest: FNV-1a 128 and the striped 16-lane block digest.
pub mod digest;
pub mod error;

pub use error::{Error, Result};
