//! See [`bsync_fuzz::round_trip`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bsync_fuzz::round_trip::fuzz(data));
