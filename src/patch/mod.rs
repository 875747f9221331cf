//! Patch files, as bdsync makes them, in a format of bsync's own: made by a
//! dry run's source (`make.rs`, beside the destination's writer), applied
//! later by `bsync --patch` (`apply.rs`; from a pipe `pipe.rs`; what both
//! do with a record `records.rs`; a signal meanwhile `stop.rs`), which
//! refuses a target that is not the one the patch was made against, and
//! saves an undo patch first if asked (`rollback.rs`). `format.rs` defines
//! the bytes; `target.rs` reads the target for applying and for the undo;
//! `local.rs` runs a dry run's two ends on this machine.

use crate::session::Params;
use format::{Header, Kind};

pub mod apply;
pub mod format;
pub mod local;
pub mod make;
pub mod part;
mod pipe;
mod records;
mod rollback;
mod spans;
mod stop;
mod target;
pub mod undo;
mod unknown;

/// The header of a patch made from session `p`: its sizes, grain and salt,
/// and the name of the target it applies to; strict sizes and no
/// whole-target digests until the maker knows them.
fn session_header(kind: Kind, p: &Params, name: Vec<u8>) -> Header {
    Header {
        diffsize: format::DiffSize::Strict,
        whole: None,
        kind,
        source_size: p.geo.size,
        // Both are validated far below 4 GiB (MAX_BLOCK_SIZE).
        block_size: u32::try_from(p.geo.block_size).unwrap_or(u32::MAX),
        grain: u32::try_from(p.range_size()).unwrap_or(u32::MAX),
        salt: p.salt,
        name,
        unknown: false,
        undo_result: None,
    }
}
