//! See [`bsync_fuzz::patch`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bsync_fuzz::patch::fuzz(data));
