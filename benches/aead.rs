//! Seal and open throughput on 1 MiB buffers, the order of a bsync block.
//!
//! `cargo bench --bench aead`; add `RUSTFLAGS="--cfg chacha20_avx512"` to let
//! the chacha20 crate pick its AVX-512 backend where the CPU has one.

use std::hint::black_box;
use std::time::Instant;

use bsync::aead::{Key, open, seal};

const BUF: usize = 1 << 20;
const TOTAL: usize = 256 << 20;

fn main() {
    let key = Key::from_bytes([7; 32]);
    let aad = [0u8; 24];
    let mut buf = vec![0x5au8; BUF];
    let rounds = TOTAL / BUF;

    // Warm up: page in the buffer, let CPU feature detection settle.
    for i in 0..8u64 {
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&i.to_le_bytes());
        black_box(seal(&key, &nonce, &aad, &mut buf));
    }

    let mut tags = Vec::with_capacity(rounds);
    let t = Instant::now();
    for i in 0..rounds as u64 {
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&i.to_le_bytes());
        tags.push(seal(&key, &nonce, black_box(&aad), black_box(&mut buf)));
    }
    let seal_s = t.elapsed().as_secs_f64();

    // Open in reverse so each call sees the ciphertext its tag was made for.
    let t = Instant::now();
    for (i, tag) in tags.iter().enumerate().rev() {
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&(i as u64).to_le_bytes());
        if open(&key, &nonce, &aad, black_box(&mut buf), tag).is_err() {
            eprintln!("open failed at round {i}");
            std::process::exit(1);
        }
    }
    let open_s = t.elapsed().as_secs_f64();
    assert!(buf.iter().all(|&b| b == 0x5a), "round trip lost data");

    let gb = TOTAL as f64 / 1e9;
    println!(
        "aead seal: {:.2} GB/s, open: {:.2} GB/s ({} x {} KiB)",
        gb / seal_s,
        gb / open_s,
        rounds,
        BUF >> 10
    );
}
