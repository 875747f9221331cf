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

/// ChaCha20-Poly1305 AEAD (RFC 8439) and HChaCha20 subkeys.
pub mod aead;
pub mod error;

pub use error::{Error, Result};
