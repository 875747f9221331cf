//! Patch files, as bdsync makes them, in a format of bsync's own: made by a
//! dry run's source (`make.rs`, beside the destination's writer), applied
//! later by `bsync --patch` (`apply.rs`), which refuses a target that is not
//! the one the patch was made against. `format.rs` defines the bytes.

pub mod apply;
pub mod format;
pub mod make;
mod rollback;
pub mod undo;
