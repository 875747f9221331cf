//! The block digest bsync compares blocks with: a hand-written FNV-1a 128 and
//! a striped variant of it that a CPU can compute several times faster.
//!
//! Both ends of a sync digest every block, so this function bounds how fast
//! identical blocks can be confirmed. Plain FNV-1a is one long chain of
//! dependent multiplies (about 4 cycles a byte); striping the input over 16
//! independent lanes lets the CPU overlap the chains, and lets a SIMD
//! implementation put one lane in each vector element.
//!
//! # Definition (part of the wire protocol `ver0.02`; never change it)
//!
//! Every implementation, portable or vectorised, on every machine, must
//! compute exactly this value.
//!
//! * **FNV-1a 128.** Offset basis
//!   `O = 0x6c62272e07bb014262b821756295c58d`, prime
//!   `P = 0x0000000001000000000000000000013B`. For each byte `b`:
//!   `h = (h ^ b) * P  (mod 2^128)`.
//! * **Block digest** of a byte slice `data` under a 128-bit `salt` (0 where
//!   no session salt exists):
//!   * 16 independent lanes. Lane `k` (`k = 0..15`) starts at the FNV-1a 128
//!     state reached from `O` after absorbing the 16 bytes
//!     `salt.to_le_bytes()` followed by the single byte `k`.
//!   * Byte `data[i]` is absorbed (one FNV-1a 128 byte step) by lane
//!     `i % 16`, in increasing `i`: lane `k` sees `data[k]`, `data[k + 16]`,
//!     `data[k + 32]`, ... A tail shorter than 16 bytes simply feeds lanes
//!     `0..r-1`.
//!   * Finalisation: from `O`, absorb with FNV-1a 128 byte steps the 16 lane
//!     states in lane order, each as 16 bytes little-endian, then
//!     `(data.len() as u64).to_le_bytes()`. The resulting state is the
//!     digest, a `u128`; on the wire it travels as 16 bytes little-endian.
//! * **Pages.** Blocks are compared per page: for a block size `B` the page
//!   size is `min(4 KiB, B)` (`crate::proto::PAGE`); a block of length `L`
//!   (the last block of a device may be short) has `ceil(L / page)` pages,
//!   the last possibly short, each digested independently with the block
//!   digest above. The coarser range digests built from page digests are
//!   defined with the protocol, in `crate::proto`.
//!
//! # Implementation notes
//!
//! `P = 2^88 + 0x13B`, so with `h = lo + hi * 2^64` and `x = lo ^ b` one step
//! is `lo' = low64(x * 0x13B)` and
//! `hi' = hi * 0x13B + high64(x * 0x13B) + (x << 24)` (mod 2^64): one widening
//! multiply, one plain multiply, a shift and two adds. The lo chain never
//! depends on hi, and lanes never depend on each other.
//!
//! Three implementations compute this, picked at run time (never at build
//! time: the static binary runs on any x86-64) by
//! [`Isa::detected`](crate::sys::simd::Isa::detected), which asks the CPU
//! once:
//!
//! * **Portable** (this file, safe Rust). Four lanes in flight hide the
//!   multiply latency and fill the x86-64 register file (eight 64-bit
//!   registers), so the 16 lanes run as four groups of four, each walking a
//!   window of the input with stride-16 byte loads; the window stays in L1
//!   while the four groups pass over it.
//! * **AVX2** and **AVX-512** ([`crate::sys::simd`], the only place with
//!   `unsafe`): one lane per 64-bit vector element, so 16 lanes are two
//!   zmm (four ymm) vectors of low words and as many of high words; the
//!   byte for each lane is one zero-extending load (`data[i..i + 8]` feeds
//!   lanes `i % 16 ..`). AVX-512 has a 64-bit multiply for the low words;
//!   `high64(x * 0x13B)` takes two 32×32-bit multiplies, or two IFMA
//!   multiply-adds (`vpmadd52luq/huq`) where the CPU has them.
//!
//! [`digest_pages`](crate::digest::digest_pages) digests its
//! pages together: four at a time through the lane updates, so
//! independent multiply chains fill the pipelines, and sixteen at a time
//! through the final fold. The fold is a
//! serial chain of 264 FNV-1a steps per digest, about as long as the lane
//! updates of a 4 KiB page; run as vector lanes, sixteen folds cost
//! little more than one.
//!
//! Measured with `cargo bench --bench digest` on one core of a shared AMD
//! EPYC (Zen 5, 2 vCPUs), `digest_pages` with 4 KiB / 64 KiB
//! pages (the latter a range's size): AVX-512 with IFMA 9.5 / 11.4 GB/s, AVX-512 without 7.7 /
//! 8.9, AVX2 3.1 / 3.5, portable 1.96 / 2.15; byte-at-a-time FNV-1a 1.0
//! (benches/BENCHMARKS.md). A lone [`digest`](crate::digest::digest) of 4 KiB
//! pays its fold alone: 5.5 GB/s with IFMA. On Zen 4 the portable loop's variants that lost
//! were groups of 2 lanes or 8 (spills), a plain `u128` multiply, and the
//! chunk loop unrolled twice; it is sensitive to code layout, hence
//! `#[inline(never)]` on [`digest`](crate::digest::digest) and the portable
//! loop.

use crate::sys::simd::{self, CHAINS, Isa};

/// A block digest; on the wire it is 16 bytes little-endian.
pub type Digest = u128;

/// FNV-1a 128 offset basis.
const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
/// FNV-1a 128 prime, `2^88 + 0x13B`.
const PRIME: u128 = 0x0000000001000000000000000000013B;
/// The low word of [`PRIME`]; its high word is `1 << 24`.
const PRIME_LO: u64 = 0x13B;

/// Lanes of the block digest; fixed by the definition.
const LANES: usize = 16;
/// Lanes processed together in the hot loop (see the module notes).
const GROUP: usize = 4;
/// Bytes each group walks before the next group takes over; a multiple of
/// [`LANES`] that keeps the window resident in L1 across the four passes.
const WINDOW: usize = 8 * 1024;

/// One FNV-1a 128 byte step.
#[inline(always)]
fn step(h: u128, b: u8) -> u128 {
    (h ^ u128::from(b)).wrapping_mul(PRIME)
}

/// Plain byte-at-a-time FNV-1a 128 (the published algorithm).
pub fn fnv1a128(data: &[u8]) -> u128 {
    fnv1a128_update(OFFSET, data)
}

/// Continue an FNV-1a 128 state over more bytes.
pub fn fnv1a128_update(state: u128, data: &[u8]) -> u128 {
    data.iter().fold(state, |h, &b| step(h, b))
}

/// The block digest of `data` under `salt`, as defined in the module docs,
/// on the fastest path this CPU runs.
//
// Never inlined, so the hot loop has the same machine code (and alignment)
// in every caller and the benchmark measures what the pipeline runs.
#[inline(never)]
pub fn digest(salt: u128, data: &[u8]) -> Digest {
    digest_on(Isa::detected(), salt, data)
}

/// [`digest`] on a chosen path: `None` is the portable code, and so is an
/// instruction set this CPU lacks. For tests and benchmarks; every path
/// computes the same value.
pub fn digest_on(isa: Option<Isa>, salt: u128, data: &[u8]) -> Digest {
    let mut lanes = lane_seeds(salt);
    let (body, tail) = data.split_at(data.len() - data.len() % LANES);
    absorb(isa, &mut lanes, body);
    absorb_tail(&mut lanes, tail);
    finish(&lanes, data.len())
}

/// Clears `out` and pushes the digest of every page of `block` (no
/// allocation when `out` has capacity), on the fastest path this CPU runs.
///
/// An empty block has no pages. A `page` of 0 (only a zero block size
/// yields it, which validation rejects upstream) is read as "do not split":
/// the whole block gets one digest, rather than a panic.
pub fn digest_pages(salt: u128, block: &[u8], page: usize, out: &mut Vec<Digest>) {
    digest_pages_on(Isa::detected(), salt, block, page, out);
}

/// [`digest_pages`] on a chosen path (see [`digest_on`]).
///
/// Pages are independent, so they are digested together: four at a
/// time through the lane updates, sixteen at a time through the fold of
/// lane states into a digest, which is one long serial chain per digest
/// (264 FNV-1a steps) and would cost a 4 KiB page about as much again
/// as its lane updates if each ran alone.
pub fn digest_pages_on(
    isa: Option<Isa>,
    salt: u128,
    block: &[u8],
    page: usize,
    out: &mut Vec<Digest>,
) {
    out.clear();
    append_pages(isa, salt, block, page, out);
}

/// [`digest_pages`], except that every whole page of zeros takes
/// `zero` without being hashed: the caller computes the digest of one
/// zero page once (`digest(salt, &[0; page])`), and free space inside
/// an image then costs a vector zero test per page, not a digest.
/// Gives exactly what [`digest_pages`] gives.
pub fn digest_pages_known_zero(
    salt: u128,
    block: &[u8],
    page: usize,
    zero: Digest,
    out: &mut Vec<Digest>,
) {
    let isa = Isa::detected();
    out.clear();
    if page == 0 {
        append_pages(isa, salt, block, page, out);
        return;
    }
    // Runs of pages with data go through the batched path together.
    let mut run = 0;
    for (j, part) in block.chunks(page).enumerate() {
        if part.len() == page && simd::is_zero(part) {
            append_pages(isa, salt, &block[run..j * page], page, out);
            out.push(zero);
            run = (j + 1) * page;
        }
    }
    append_pages(isa, salt, &block[run..], page, out);
}

/// Pushes the digest of every page of `block` onto `out`.
fn append_pages(isa: Option<Isa>, salt: u128, block: &[u8], page: usize, out: &mut Vec<Digest>) {
    let page = if page == 0 { block.len().max(1) } else { page };
    let seeds = lane_seeds(salt);
    let mut lanes = [[0u128; LANES]; BATCH];
    let mut lens = [0usize; BATCH];
    for batch in block.chunks(page.saturating_mul(BATCH)) {
        let n = batch.len().div_ceil(page);
        let part = |j: usize| &batch[j * page..batch.len().min((j + 1) * page)];
        let body = |j: usize| {
            let p = part(j);
            &p[..p.len() - p.len() % LANES]
        };
        for first in (0..n).step_by(4) {
            let four: &mut [[u128; LANES]; 4] = match lanes[first..].first_chunk_mut() {
                Some(four) if first + 4 <= n && part(first + 3).len() == page => four,
                _ => {
                    for (lanes, j) in lanes[first..n].iter_mut().zip(first..) {
                        *lanes = seeds;
                        absorb(isa, lanes, body(j));
                    }
                    break;
                }
            };
            *four = [seeds; 4];
            let bodies = [
                body(first),
                body(first + 1),
                body(first + 2),
                body(first + 3),
            ];
            if !isa.is_some_and(|isa| simd::absorb4(isa, four, bodies)) {
                for (lanes, body) in four.iter_mut().zip(bodies) {
                    absorb_portable(lanes, body);
                }
            }
        }
        for j in 0..n {
            let p = part(j);
            absorb_tail(&mut lanes[j], &p[p.len() - p.len() % LANES..]);
            lens[j] = p.len();
        }
        finish_many(isa, &lanes[..n], &lens[..n], out);
    }
}

/// Pages digested together by [`digest_pages_on`]: as many as
/// fold chains [`simd::fnv1a128_words`] runs at once.
const BATCH: usize = CHAINS;

/// Runs the 16-byte-multiple `body` through the lanes.
fn absorb(isa: Option<Isa>, lanes: &mut [u128; LANES], body: &[u8]) {
    if !isa.is_some_and(|isa| simd::absorb(isa, lanes, body)) {
        absorb_portable(lanes, body);
    }
}

/// The portable lane updates (see the module notes).
//
// Never inlined, for the same reason as `digest`.
#[inline(never)]
fn absorb_portable(lanes: &mut [u128; LANES], body: &[u8]) {
    for window in body.chunks(WINDOW) {
        for first in (0..LANES).step_by(GROUP) {
            absorb_group(lanes, first, window);
        }
    }
}

/// A tail shorter than 16 bytes feeds lanes `0..tail.len()`.
fn absorb_tail(lanes: &mut [u128; LANES], tail: &[u8]) {
    for (lane, &b) in lanes.iter_mut().zip(tail) {
        *lane = step(*lane, b);
    }
}

/// Pushes onto `out` the digests of the lane states `lanes` of inputs of
/// lengths `lens`: [`finish`] for up to [`CHAINS`] digests in step.
fn finish_many(isa: Option<Isa>, lanes: &[[u128; LANES]], lens: &[usize], out: &mut Vec<Digest>) {
    for (lanes, lens) in lanes.chunks(CHAINS).zip(lens.chunks(CHAINS)) {
        // Chain j absorbs word column j: lane 0 low, lane 0 high, ...,
        // lane 15 high, the length.
        let mut words = [[0u64; CHAINS]; 2 * LANES + 1];
        for (j, (lanes, &len)) in lanes.iter().zip(lens).enumerate() {
            for (k, &h) in lanes.iter().enumerate() {
                words[2 * k][j] = low64(h);
                words[2 * k + 1][j] = (h >> 64) as u64;
            }
            words[2 * LANES][j] = len as u64;
        }
        let mut digests = [0u128; CHAINS];
        if !isa.is_some_and(|isa| simd::fnv1a128_words(isa, OFFSET, &words, &mut digests)) {
            fnv1a128_words(OFFSET, &words, &mut digests);
        }
        out.extend_from_slice(&digests[..lanes.len()]);
    }
}

/// [`CHAINS`] FNV-1a 128 chains from `start`, chain `j` over the
/// little-endian bytes of `words[0][j]`, `words[1][j]`, ...; four in step at
/// a time, so their multiplies overlap.
fn fnv1a128_words(start: u128, words: &[[u64; CHAINS]], out: &mut [u128; CHAINS]) {
    for first in (0..CHAINS).step_by(GROUP) {
        let mut lo = [low64(start); GROUP];
        let mut hi = [(start >> 64) as u64; GROUP];
        for row in words {
            for byte in 0..8 {
                for j in 0..GROUP {
                    let b = row[first + j].to_le_bytes()[byte];
                    (lo[j], hi[j]) = split_step(lo[j], hi[j], b);
                }
            }
        }
        for j in 0..GROUP {
            out[first + j] = u128::from(lo[j]) | (u128::from(hi[j]) << 64);
        }
    }
}

/// Lane start states: the salt is absorbed once, then each lane its index.
fn lane_seeds(salt: u128) -> [u128; LANES] {
    let salted = fnv1a128_update(OFFSET, &salt.to_le_bytes());
    let mut lanes = [0u128; LANES];
    for (k, lane) in (0u8..).zip(lanes.iter_mut()) {
        *lane = step(salted, k);
    }
    lanes
}

/// Folds the lane states and the input length into the digest.
fn finish(lanes: &[u128; LANES], len: usize) -> Digest {
    let mut h = OFFSET;
    for lane in lanes {
        h = fnv1a128_update(h, &lane.to_le_bytes());
    }
    // usize is at most 64 bits on every target bsync builds for.
    fnv1a128_update(h, &(len as u64).to_le_bytes())
}

/// The low word of a state or product: dropping the high word is the point.
#[allow(clippy::cast_possible_truncation)]
#[inline(always)]
fn low64(h: u128) -> u64 {
    h as u64
}

/// [`step`] on a state held as its two 64-bit halves (see the module
/// notes): one widening multiply and one plain one instead of a full
/// 128-bit product.
#[inline(always)]
fn split_step(lo: u64, hi: u64, b: u8) -> (u64, u64) {
    let x = lo ^ u64::from(b);
    let wide = u128::from(x) * u128::from(PRIME_LO);
    let hi = hi
        .wrapping_mul(PRIME_LO)
        .wrapping_add((wide >> 64) as u64)
        .wrapping_add(x << 24);
    (low64(wide), hi)
}

/// Runs lanes `first..first + GROUP` over `window` (a multiple of 16 bytes),
/// holding their states in registers as split 64-bit halves.
#[inline(always)]
fn absorb_group(lanes: &mut [u128; LANES], first: usize, window: &[u8]) {
    let mut lo = [0u64; GROUP];
    let mut hi = [0u64; GROUP];
    for j in 0..GROUP {
        let h = lanes[first + j];
        lo[j] = low64(h);
        hi[j] = (h >> 64) as u64;
    }
    for chunk in window.chunks_exact(LANES) {
        let bytes = &chunk[first..first + GROUP];
        for j in 0..GROUP {
            (lo[j], hi[j]) = split_step(lo[j], hi[j], bytes[j]);
        }
    }
    for j in 0..GROUP {
        lanes[first + j] = u128::from(lo[j]) | (u128::from(hi[j]) << 64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, written the obvious way: byte by byte, lane `i % 16`.
    fn reference(salt: u128, data: &[u8]) -> Digest {
        let mut lanes = [0u128; LANES];
        for (k, lane) in lanes.iter_mut().enumerate() {
            let mut seed = salt.to_le_bytes().to_vec();
            seed.push(k as u8);
            *lane = fnv1a128(&seed);
        }
        for (i, &b) in data.iter().enumerate() {
            lanes[i % LANES] = (lanes[i % LANES] ^ u128::from(b)).wrapping_mul(PRIME);
        }
        let mut fin = Vec::new();
        for lane in lanes {
            fin.extend_from_slice(&lane.to_le_bytes());
        }
        fin.extend_from_slice(&(data.len() as u64).to_le_bytes());
        fnv1a128(&fin)
    }

    const SALTS: [u128; 4] = [0, 1, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210, u128::MAX];

    fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        fastrand::Rng::with_seed(seed).fill(&mut buf);
        buf
    }

    /// 1 MiB of a fixed pattern for the pinned values.
    fn pattern_mib() -> Vec<u8> {
        (0..1usize << 20).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn fnv1a128_published_vectors() {
        // From the FNV-1a test-vector table (Philippe Paquet's
        // test_vectors.py, which agrees with the Zig std and other suites on
        // "", "a" and "foobar").
        let vectors: [(&[u8], u128); 8] = [
            (b"", 0x6c62272e07bb014262b821756295c58d),
            (b"a", 0xd228cb696f1a8caf78912b704e4a8964),
            (b"b", 0xd228cb69721a8caf78912b704e4a8d15),
            (b"fo", 0x08809542c0ab1be95aa0733055b5ae22),
            (b"foo", 0xa68d5ed15f8b5822836dbc79768d78bf),
            (b"foob", 0x696a39196d757277b806e974e013b7ef),
            (b"fooba", 0x2a9456013d83d94f708142cfb842dbba),
            (b"foobar", 0x343e1662793c64bf6f0d3597ba446f18),
        ];
        for (input, want) in vectors {
            assert_eq!(fnv1a128(input), want, "input {input:?}");
        }
    }

    #[test]
    fn fnv1a128_update_continues_a_state() {
        let whole = fnv1a128(b"foobar");
        assert_eq!(fnv1a128_update(fnv1a128(b"foo"), b"bar"), whole);
        assert_eq!(fnv1a128_update(OFFSET, b""), OFFSET);
    }

    #[test]
    fn split_step_matches_u128_multiply() {
        // The hot loop's hand-split arithmetic against u128 arithmetic on
        // states that exercise every carry path.
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..10_000 {
            let h = rng.u128(..);
            let b = rng.u8(..);
            let mut lanes = [0u128; LANES];
            lanes[0] = h;
            let mut chunk = [0u8; LANES];
            chunk[0] = b;
            absorb_group(&mut lanes, 0, &chunk);
            assert_eq!(lanes[0], step(h, b));
        }
    }

    #[test]
    fn digest_matches_reference_for_every_short_length() {
        let data = random_bytes(300, 1);
        for &salt in &SALTS {
            for len in 0..=300 {
                let d = &data[..len];
                assert_eq!(digest(salt, d), reference(salt, d), "len {len}");
            }
        }
    }

    /// A long input that crosses several windows.
    const RANGE: usize = 64 * 1024;

    #[test]
    fn digest_matches_reference_around_range_and_window_sizes() {
        let data = random_bytes(RANGE + 1 + 3 * WINDOW, 2);
        let lens = [
            WINDOW - 1,
            WINDOW,
            WINDOW + 1,
            WINDOW + 17,
            RANGE - 1,
            RANGE,
            RANGE + 1,
            RANGE + 3 * WINDOW + 1,
        ];
        for &salt in &SALTS {
            for len in lens {
                let d = &data[..len];
                assert_eq!(digest(salt, d), reference(salt, d), "len {len}");
            }
        }
    }

    #[test]
    fn digest_depends_on_salt_position_and_length() {
        let data = random_bytes(4096, 3);
        let base = digest(0, &data);
        assert_ne!(digest(1, &data), base);
        let mut swapped = data.clone();
        swapped.swap(0, 16); // same lane, different order
        assert_ne!(digest(0, &swapped), base);
        // Zero-padding is not free: the length term separates these.
        assert_ne!(digest(0, &[0u8; 16]), digest(0, &[0u8; 32]));
    }

    #[test]
    fn digest_pinned_values() {
        // Regression constants, computed by `reference` and cross-checked
        // with an independent big-integer script: if one of these changes,
        // the wire protocol changed.
        let mib = pattern_mib();
        let salt = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;
        let cases: [(u128, &[u8], u128); 6] = [
            (0, b"", 0x7356dcb1ceda6c1025a7c8d6920125f8),
            (0, b"a", 0xd99fbd421a676f1e2367a56a11b8219d),
            (0, &mib, 0x70fc8fdfead15ca301b021db0facbcd8),
            (salt, b"", 0xab1d7b1b0c8c8698254d8d4cca8190e3),
            (salt, b"a", 0xb266bc2ec9ba8df56021982202ab9a36),
            (salt, &mib, 0xd10c80242b751792bd4845d9b70160d1),
        ];
        for (salt, input, want) in cases {
            assert_eq!(
                reference(salt, input),
                want,
                "reference, len {}",
                input.len()
            );
            assert_eq!(digest(salt, input), want, "digest, len {}", input.len());
        }
    }

    /// The portable path and every vector path this CPU runs.
    fn paths() -> Vec<Option<Isa>> {
        let mut paths = vec![None];
        paths.extend(
            Isa::ALL
                .into_iter()
                .filter(|isa| isa.is_available())
                .map(Some),
        );
        paths
    }

    #[test]
    fn every_path_matches_reference_for_every_length_to_8k() {
        let data = random_bytes(8192, 21);
        for salt in [0, SALTS[2]] {
            for len in 0..=8192 {
                let d = &data[..len];
                let want = reference(salt, d);
                for isa in paths() {
                    assert_eq!(digest_on(isa, salt, d), want, "{isa:?} len {len}");
                }
            }
        }
    }

    #[test]
    fn every_path_matches_portable_on_misaligned_starts() {
        let data = random_bytes(64 + 9000, 22);
        for offset in 1..64 {
            for len in (0..300).chain([4095, 4096, 4097, 8191, 9000]) {
                let d = &data[offset..offset + len];
                let want = digest_on(None, SALTS[3], d);
                for isa in paths() {
                    assert_eq!(
                        digest_on(isa, SALTS[3], d),
                        want,
                        "{isa:?} @{offset} len {len}"
                    );
                }
            }
        }
        // A sample against the definition itself.
        for offset in [1, 7, 33, 63] {
            let d = &data[offset..offset + 4100];
            assert_eq!(digest_on(None, 1, d), reference(1, d));
        }
    }

    #[test]
    fn every_path_digests_whole_blocks_like_one_digest_per_page() {
        let block = random_bytes(10 << 20, 23);
        let mut got = Vec::new();
        for (salt, page) in [(0, 4096), (SALTS[2], 4096), (1, RANGE), (SALTS[3], RANGE)] {
            let want: Vec<Digest> = block
                .chunks(page)
                .map(|p| digest_on(None, salt, p))
                .collect();
            for isa in paths() {
                digest_pages_on(isa, salt, &block, page, &mut got);
                assert_eq!(got, want, "{isa:?} page {page}");
            }
            assert_eq!(want[3], reference(salt, &block[3 * page..4 * page]));
        }
    }

    #[test]
    fn every_path_handles_ragged_page_counts() {
        // Batches of 16 and groups of 4 that come out short, pages
        // that are not a multiple of 16 bytes, a short last page, one
        // misaligned block start.
        let data = random_bytes(40 * 4096 + 100, 24);
        let mut got = Vec::new();
        for page in [1, 15, 16, 17, 1000, 4096] {
            for n in [0, 1, 3, 4, 5, 15, 16, 17, 19, 33, 40] {
                for extra in [0, 1, 999] {
                    let len = (n * page + extra).min(data.len() - 1);
                    let block = &data[1..1 + len];
                    let want: Vec<Digest> = block.chunks(page).map(|p| reference(7, p)).collect();
                    for isa in paths() {
                        digest_pages_on(isa, 7, block, page, &mut got);
                        assert_eq!(got, want, "{isa:?} page {page} len {len}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_path_folds_words_like_fnv1a128() {
        let mut rng = fastrand::Rng::with_seed(25);
        for rows in [0, 1, 2, 33] {
            let words: Vec<[u64; CHAINS]> = (0..rows)
                .map(|_| std::array::from_fn(|_| rng.u64(..)))
                .collect();
            let start = rng.u128(..);
            let want: [u128; CHAINS] = std::array::from_fn(|j| {
                let bytes: Vec<u8> = words.iter().flat_map(|r| r[j].to_le_bytes()).collect();
                fnv1a128_update(start, &bytes)
            });
            let mut got = [0u128; CHAINS];
            fnv1a128_words(start, &words, &mut got);
            assert_eq!(got, want, "portable, {rows} rows");
            for isa in Isa::ALL.into_iter().filter(|isa| isa.is_available()) {
                got = [0; CHAINS];
                assert!(simd::fnv1a128_words(isa, start, &words, &mut got));
                assert_eq!(got, want, "{isa:?}, {rows} rows");
            }
        }
    }

    #[test]
    fn pages_cover_the_block_with_a_short_last_one() {
        let block = random_bytes(3 * 1000 + 1, 4);
        let mut out = Vec::with_capacity(8);
        let cap = out.capacity();
        digest_pages(5, &block, 1000, &mut out);
        let want: Vec<Digest> = block.chunks(1000).map(|p| digest(5, p)).collect();
        assert_eq!(out.len(), 4);
        assert_eq!(out, want);
        assert_eq!(out.capacity(), cap);

        // Exact multiple: no empty trailing page.
        digest_pages(5, &block[..2000], 1000, &mut out);
        assert_eq!(out, want[..2]);

        // A block shorter than the page size is one page.
        digest_pages(5, &block[..10], 1000, &mut out);
        assert_eq!(out, [digest(5, &block[..10])]);

        digest_pages(5, &[], 1000, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn known_zero_pages_give_the_same_digests() {
        let page = 4096;
        let mut block = random_bytes(40 * page + 100, 12);
        // Zero pages at the start, in runs, alone, and a zero short
        // tail (which is hashed: `zero` covers only whole pages).
        for j in [0, 1, 5, 6, 7, 20, 39] {
            block[j * page..(j + 1) * page].fill(0);
        }
        let len = block.len();
        block[40 * page..len].fill(0);
        for salt in SALTS {
            let zero = digest(salt, &vec![0u8; page]);
            for len in [0, 10, page, 2 * page, 8 * page + 1, block.len()] {
                let data = &block[..len];
                let mut want = Vec::new();
                digest_pages(salt, data, page, &mut want);
                let mut got = vec![1, 2, 3];
                digest_pages_known_zero(salt, data, page, zero, &mut got);
                assert_eq!(got, want, "salt {salt:x} len {len}");
            }
        }
        let mut got = Vec::new();
        digest_pages_known_zero(0, b"abc", 0, 0, &mut got);
        assert_eq!(got, [digest(0, b"abc")]);
    }

    #[test]
    fn pages_of_zero_size_do_not_panic() {
        let mut out = vec![1, 2, 3];
        digest_pages(0, b"abc", 0, &mut out);
        assert_eq!(out, [digest(0, b"abc")]);
        digest_pages(0, b"", 0, &mut out);
        assert!(out.is_empty());
    }
}
