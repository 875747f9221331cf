//! See [`bsync_fuzz::open`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bsync_fuzz::open::fuzz(data));
