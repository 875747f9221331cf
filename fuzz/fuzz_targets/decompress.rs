//! See [`bsync_fuzz::decompress`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bsync_fuzz::decompress::fuzz(data));
