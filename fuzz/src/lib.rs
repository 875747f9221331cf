//! The fuzz targets, one module per target (`fuzz_targets/` only
//! hands libFuzzer's inputs to them), so that `tests/corpus.rs` replays
//! every file of `corpus/<target>/` through the same function as a plain test.

pub mod decode;
pub mod decompress;
pub mod handshake;
pub mod open;
pub mod patch;
pub mod round_trip;
