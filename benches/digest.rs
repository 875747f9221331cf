//! Throughput of the block digest against plain FNV-1a 128, one core.
//!
//! `cargo bench --bench digest`. Digests 4 KiB pages (the change grain) of one reused
//! buffer of random data, ~512 MiB in total, and prints GB/s for each and
//! the ratio. Each figure is the best of several passes so that a core
//! shared with other work reports the code's speed, not the scheduler's.

use std::hint::black_box;
use std::time::Instant;

use bsync::digest::{digest, fnv1a128};
use bsync::proto::PAGE;

/// Bytes of random data reused for every pass (L2-sized, like a reader
/// buffer that was just filled).
const BUF: usize = 1 << 20;
/// Total bytes digested per function.
const TOTAL: usize = 512 << 20;
/// Passes over `TOTAL / PASSES` bytes; the fastest one is reported. Short
/// passes (1 MiB, well under a scheduler time slice) make it likely that
/// some of them run undisturbed.
const PASSES: usize = TOTAL / BUF;

fn gb_per_s(f: impl Fn(&[u8]) -> u128, buf: &[u8]) -> f64 {
    let reps = TOTAL / PASSES / buf.len();
    let mut best = f64::INFINITY;
    for _ in 0..PASSES {
        let start = Instant::now();
        let mut acc = 0u128;
        for _ in 0..reps {
            for sub in buf.chunks(PAGE) {
                acc ^= f(black_box(sub));
            }
        }
        black_box(acc);
        best = best.min(start.elapsed().as_secs_f64());
    }
    (reps * buf.len()) as f64 / best / 1e9
}

fn main() {
    let mut buf = vec![0u8; BUF];
    fastrand::Rng::with_seed(42).fill(&mut buf);

    let fnv = gb_per_s(fnv1a128, &buf);
    let striped = gb_per_s(|d| digest(black_box(0), d), &buf);
    println!("fnv1a128 (byte at a time)   {fnv:6.3} GB/s");
    println!("digest   (16 lanes, 64 KiB) {striped:6.3} GB/s");
    println!("ratio                       {:6.2}x", striped / fnv);
}
