//! See [`bsync_fuzz::decode`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bsync_fuzz::decode::fuzz(data));
