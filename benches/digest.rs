//! Throughput of the block digest on every path this CPU runs, one core.
//!
//! `cargo bench --bench digest`. Digests one reused 1 MiB buffer of random
//! data (L2-sized, like a reader buffer that was just filled) as 4 KiB and
//! as 64 KiB pages (a range) with `digest_pages`, on each path forced and on
//! the one picked at run time, ~512 MiB per figure; then single `digest`
//! calls, plain FNV-1a 128, and the zero test and comparison that local mode
//! runs per page. Each figure is the best of many short passes so that a
//! core shared with other work reports the code's speed, not the
//! scheduler's.

use std::hint::black_box;
use std::time::Instant;

use bsync::digest::{digest, digest_on, digest_pages_on, fnv1a128};

/// The larger page measured: a range of the two-level digests, and the
/// grain before it was 4 KiB.
const RANGE: usize = bsync::proto::PAGE * bsync::proto::RANGE_PAGES;
use bsync::sys::simd::{self, Isa};

/// Bytes of random data reused for every pass.
const BUF: usize = 1 << 20;
/// Total bytes processed per figure.
const TOTAL: usize = 512 << 20;
/// Passes of `BUF` bytes; the fastest one is reported. Short passes (well
/// under a scheduler time slice) make it likely that some run undisturbed.
const PASSES: usize = TOTAL / BUF;

/// GB/s of `f` over `buf`, best pass.
fn gb_per_s(buf: &[u8], mut f: impl FnMut(&[u8]) -> u128) -> f64 {
    let mut best = f64::INFINITY;
    let mut acc = 0u128;
    for _ in 0..PASSES {
        let start = Instant::now();
        acc ^= f(black_box(buf));
        best = best.min(start.elapsed().as_secs_f64());
    }
    black_box(acc);
    buf.len() as f64 / best / 1e9
}

fn name(isa: Option<Isa>) -> &'static str {
    isa.map_or("portable", Isa::name)
}

fn main() {
    let mut buf = vec![0u8; BUF];
    fastrand::Rng::with_seed(42).fill(&mut buf);
    let detected = Isa::detected();
    let mut paths = vec![None];
    paths.extend(
        Isa::ALL
            .into_iter()
            .filter(|isa| isa.is_available())
            .map(Some),
    );

    println!("run-time pick: {}", name(detected));
    println!("digest_pages, GB/s      4 KiB   64 KiB");
    let mut out = Vec::with_capacity(BUF / 4096);
    let mut pages = |isa: Option<Isa>, page: usize| {
        gb_per_s(&buf, |b| {
            digest_pages_on(isa, 0, b, page, &mut out);
            out.iter().fold(0, |a, d| a ^ d)
        })
    };
    let rows: Vec<(String, Option<Isa>)> = paths
        .iter()
        .map(|&isa| (format!("{} (forced)", name(isa)), isa))
        .chain([(format!("auto ({})", name(detected)), detected)])
        .collect();
    for (label, isa) in &rows {
        let small = pages(*isa, 4096);
        let large = pages(*isa, RANGE);
        println!("  {label:26} {small:6.2}   {large:6.2}");
    }

    // One call per input pays the serial 264-step fold alone: that is what
    // digest_pages amortises.
    println!("one digest call per input, GB/s 4 KiB   64 KiB");
    let single = |f: &dyn Fn(&[u8]) -> u128| {
        let small = gb_per_s(&buf, |b| b.chunks(4096).fold(0, |a, s| a ^ f(s)));
        let large = gb_per_s(&buf, |b| b.chunks(RANGE).fold(0, |a, s| a ^ f(s)));
        (small, large)
    };
    for &isa in &paths {
        let (small, large) = single(&|s| digest_on(isa, 0, s));
        println!("  {:26} {small:6.2}   {large:6.2}", name(isa));
    }
    let (small, large) = single(&|s| digest(0, s));
    println!("  {:26} {small:6.2}   {large:6.2}", "digest (auto)");
    let (small, large) = single(&fnv1a128);
    println!(
        "  {:26} {small:6.2}   {large:6.2}",
        "fnv1a128, byte at a time"
    );

    println!("per 4 KiB page, GB/s          is_zero   equal");
    let zeros = vec![0u8; BUF];
    let copy = buf.clone();
    for &isa in &paths {
        let z = gb_per_s(&zeros, |b| {
            b.chunks(4096)
                .map(|p| u128::from(simd::is_zero_on(isa, p)))
                .sum()
        });
        let e = gb_per_s(&buf, |b| {
            b.chunks(4096)
                .zip(copy.chunks(4096))
                .map(|(p, q)| u128::from(simd::equal_on(isa, p, q)))
                .sum()
        });
        println!("  {:26} {z:7.2}  {e:6.2}", name(isa));
    }
    let z = gb_per_s(&zeros, |b| {
        b.chunks(4096)
            .map(|p| u128::from(p.iter().all(|&x| x == 0)))
            .sum()
    });
    let e = gb_per_s(&buf, |b| {
        b.chunks(4096)
            .zip(copy.chunks(4096))
            .map(|(p, q)| u128::from(p == q))
            .sum()
    });
    println!("  {:26} {z:7.2}  {e:6.2}", "std (memcmp)");
}
