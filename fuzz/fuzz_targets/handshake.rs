//! See [`bsync_fuzz::handshake`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bsync_fuzz::handshake::fuzz(data));
