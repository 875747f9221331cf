//! Seal and open throughput on 1 MiB buffers, the order of a bsync block,
//! next to the two primitives alone so a slow number can be placed.
//!
//! `cargo bench --bench aead`; add `RUSTFLAGS="--cfg chacha20_avx512"` to let
//! the chacha20 crate pick its AVX-512 backend where the CPU has one.
//!
//! Build machines are shared, so besides wall-clock GB/s this prints GB/s per
//! second of this thread's CPU time (from /proc, 10 ms ticks), which holds
//! still when other processes steal the core.

use std::hint::black_box;
use std::time::Instant;

use bsync::aead::{Key, open, seal};
use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher};
use poly1305::Poly1305;
use poly1305::universal_hash::{KeyInit, UniversalHash};

const BUF: usize = 1 << 20;
const TOTAL: usize = 256 << 20;
const ROUNDS: usize = TOTAL / BUF;

/// utime + stime of the calling thread in seconds; USER_HZ is 100 on Linux.
fn thread_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall, i.e. the 12th and 13th after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut f = rest.split(' ').skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

fn measure(name: &str, mut run: impl FnMut()) {
    let cpu0 = thread_cpu_secs();
    let t = Instant::now();
    run();
    let wall = t.elapsed().as_secs_f64();
    let gb = TOTAL as f64 / 1e9;
    let cpu = match (cpu0, thread_cpu_secs()) {
        (Some(a), Some(b)) if b > a => format!(", {:.2} GB/s per CPU-second", gb / (b - a)),
        _ => String::new(),
    };
    println!("{name:<14} {:.2} GB/s wall{cpu}", gb / wall);
}

fn nonce(i: usize) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&(i as u64).to_le_bytes());
    n
}

fn main() {
    let key = Key::from_bytes([7; 32]);
    let aad = [0u8; 24];
    let mut buf = vec![0x5au8; BUF];

    // Warm up: page in the buffer, let CPU feature detection settle.
    for i in 0..8 {
        black_box(seal(&key, &nonce(i), &aad, &mut buf));
    }
    buf.fill(0x5a);

    let mut tags = Vec::with_capacity(ROUNDS);
    measure("aead seal", || {
        for i in 0..ROUNDS {
            tags.push(seal(&key, &nonce(i), black_box(&aad), black_box(&mut buf)));
        }
    });
    // Open in reverse so each call sees the ciphertext its tag was made for.
    measure("aead open", || {
        for (i, tag) in tags.iter().enumerate().rev() {
            if open(&key, &nonce(i), &aad, black_box(&mut buf), tag).is_err() {
                eprintln!("open failed at round {i}");
                std::process::exit(1);
            }
        }
    });
    assert!(buf.iter().all(|&b| b == 0x5a), "round trip lost data");

    measure("chacha20 only", || {
        for i in 0..ROUNDS {
            let mut c = ChaCha20::new(key.as_bytes().into(), (&nonce(i)).into());
            c.apply_keystream(black_box(&mut buf));
        }
    });
    measure("poly1305 only", || {
        for _ in 0..ROUNDS {
            let mut mac = Poly1305::new(key.as_bytes().into());
            mac.update_padded(black_box(&buf));
            black_box(mac.finalize());
        }
    });
    println!("({ROUNDS} x {} KiB per line)", BUF >> 10);
}
