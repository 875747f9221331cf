//! Vector kernels for the hot byte loops: the block digest's lane updates
//! ([`crate::digest`] owns the definition and the portable code), the zero
//! test and the byte comparison.
//!
//! The shipped binary runs on any x86-64, so nothing here is chosen at build
//! time: [`Isa::detected`] asks the CPU once (`is_x86_feature_detected!`,
//! which works on the static musl build too: it executes `cpuid`/`xgetbv`
//! itself) and caches the answer. Every public function is safe: a kernel
//! asked for an instruction set the CPU lacks does nothing and says so
//! (`false`), or falls back to the portable code. The `#[target_feature]`
//! functions themselves are private; the only `unsafe` is calling them after
//! that check, and loading vectors from slices whose bounds were checked.
//!
//! Digest step, with the FNV-1a 128 prime `P = 2^88 + C`, `C = 0x13B`, and a
//! lane state `h = lo + 2^64 hi`, `x = lo ^ byte`:
//! `lo' = low64(x C)`, `hi' = hi C + high64(x C) + (x << 24)`. Vectors hold
//! one lane's `lo` (or `hi`) per 64-bit element; `high64(x C)` is the only
//! awkward part: a 64×9-bit product's top bits, which AVX-512 IFMA gets in
//! two multiply-adds and plain AVX-512/AVX2 in two 32×32-bit multiplies.

use std::sync::OnceLock;
#[cfg(target_arch = "x86_64")]
use x86::*;

/// A vector instruction set with kernels here, slowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// AVX2 (Intel Haswell, AMD Zen 1 and later).
    Avx2,
    /// AVX-512 F, BW, DQ and VL (Intel Skylake-SP, AMD Zen 4 and later).
    Avx512,
    /// [`Isa::Avx512`] plus IFMA (`vpmadd52luq`/`vpmadd52huq`), which
    /// computes the digest's carry word in four instructions instead of six.
    Avx512Ifma,
}

impl Isa {
    /// Every instruction set, slowest first.
    pub const ALL: [Isa; 3] = [Isa::Avx2, Isa::Avx512, Isa::Avx512Ifma];

    /// The fastest instruction set this CPU runs; `None` means the portable
    /// code.
    pub fn detected() -> Option<Isa> {
        Isa::ALL.into_iter().rev().find(|isa| isa.is_available())
    }

    /// True if this CPU runs `self`. The CPU is asked once per process.
    pub fn is_available(self) -> bool {
        // Each set is probed on its own rather than inferred from a faster
        // one: a hypervisor may hide any feature.
        static AVAILABLE: OnceLock<[bool; 3]> = OnceLock::new();
        AVAILABLE.get_or_init(|| Isa::ALL.map(Isa::probe))[self as usize]
    }

    /// A short name for benchmarks and logs.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Ifma => "avx512ifma",
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn probe(self) -> bool {
        let avx512 = || {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx512vl")
        };
        match self {
            Isa::Avx2 => is_x86_feature_detected!("avx2"),
            Isa::Avx512 => avx512(),
            Isa::Avx512Ifma => avx512() && is_x86_feature_detected!("avx512ifma"),
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn probe(self) -> bool {
        false
    }
}

/// The low word of a lane state: dropping the high word is the point.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::cast_possible_truncation)]
fn low64(h: u128) -> u64 {
    h as u64
}

/// Lanes of the block digest (fixed by its definition).
const LANES: usize = 16;
/// Low word of the FNV-1a 128 prime; its high word is `1 << 24`.
#[cfg(target_arch = "x86_64")]
const PRIME_LO: i64 = 0x13B;

/// Runs lane `k` of `lanes` over bytes `k, k + 16, k + 32, ...` of `data`
/// (one FNV-1a 128 step per byte), using `isa`. `data.len()` must be a
/// multiple of 16. Returns false, with `lanes` untouched, when this CPU
/// does not run `isa`.
pub fn absorb(isa: Isa, lanes: &mut [u128; LANES], data: &[u8]) -> bool {
    assert_eq!(data.len() % LANES, 0, "absorb: a tail reached the kernel");
    if !isa.is_available() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let mut state = [split(lanes)];
        // SAFETY: `is_available` checked that the CPU has every feature the
        // kernel enables; the kernel reads only within `data`.
        unsafe {
            match isa {
                Isa::Avx2 => absorb_avx2(&mut state[0], data),
                Isa::Avx512 => absorb_avx512(&mut state, [data]),
                Isa::Avx512Ifma => absorb_ifma(&mut state, [data]),
            }
        }
        *lanes = join(&state[0]);
    }
    true
}

/// [`absorb`] for four digests at once (`parts[j]` into `lanes[j]`), so
/// that their multiply chains overlap. The parts must have one length, a
/// multiple of 16.
pub fn absorb4(isa: Isa, lanes: &mut [[u128; LANES]; 4], parts: [&[u8]; 4]) -> bool {
    let len = parts[0].len();
    assert!(
        len.is_multiple_of(LANES) && parts.iter().all(|p| p.len() == len),
        "absorb4: parts of unequal or ragged length"
    );
    if !isa.is_available() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if isa == Isa::Avx2 {
            // Sixteen ymm registers hold one digest's lanes and little
            // more, and one digest already has four independent chains.
            for (lanes, part) in lanes.iter_mut().zip(parts) {
                absorb(isa, lanes, part);
            }
            return true;
        }
        let mut states = lanes.each_ref().map(split);
        // SAFETY: `is_available` checked that the CPU has every feature the
        // kernel enables; the kernel reads only within `parts`.
        unsafe {
            match isa {
                Isa::Avx512 => absorb_avx512(&mut states, parts),
                _ => absorb_ifma(&mut states, parts),
            }
        }
        for (lanes, state) in lanes.iter_mut().zip(&states) {
            *lanes = join(state);
        }
    }
    true
}

/// Chains [`fnv1a128_words`] runs at once.
pub const CHAINS: usize = 16;

/// Runs [`CHAINS`] independent FNV-1a 128 chains, all starting at `start`:
/// chain `j` absorbs the bytes of `words[0][j]`, `words[1][j]`, ... (each
/// word little-endian) and ends in `out[j]`. Each chain is serial; sixteen
/// in step keep the multipliers busy. Returns false, with `out` untouched,
/// when this CPU does not run `isa`.
pub fn fnv1a128_words(
    isa: Isa,
    start: u128,
    words: &[[u64; CHAINS]],
    out: &mut [u128; CHAINS],
) -> bool {
    if !isa.is_available() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let mut lo = [low64(start); CHAINS];
        let mut hi = [(start >> 64) as u64; CHAINS];
        // SAFETY: `is_available` checked that the CPU has every feature the
        // kernel enables; the kernels touch only their arguments.
        unsafe {
            match isa {
                Isa::Avx2 => words_avx2(&mut lo, &mut hi, words),
                Isa::Avx512 => words_avx512(&mut lo, &mut hi, words),
                Isa::Avx512Ifma => words_ifma(&mut lo, &mut hi, words),
            }
        }
        for (o, (&l, &h)) in out.iter_mut().zip(lo.iter().zip(&hi)) {
            *o = u128::from(l) | (u128::from(h) << 64);
        }
    }
    true
}

/// True if every byte of `buf` is zero, on the fastest path this CPU runs.
///
/// musl's `memcmp` (what a slice comparison or a zero check calls in the
/// static build) goes a byte at a time; these go a vector at a time.
pub fn is_zero(buf: &[u8]) -> bool {
    is_zero_on(Isa::detected(), buf)
}

/// [`is_zero`] on `isa`; `None`, or an instruction set this CPU lacks, runs
/// the portable word-at-a-time code.
pub fn is_zero_on(isa: Option<Isa>, buf: &[u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if let Some(isa) = isa.filter(|isa| isa.is_available()) {
        // SAFETY: `is_available` checked that the CPU has every feature the
        // kernels enable; they read only within `buf`.
        return unsafe {
            match isa {
                Isa::Avx2 => is_zero_avx2(buf),
                Isa::Avx512 | Isa::Avx512Ifma => is_zero_avx512(buf),
            }
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa;
    is_zero_portable(buf)
}

/// True if `a` and `b` hold the same bytes, on the fastest path this CPU
/// runs (see [`is_zero`] for why not `==`).
pub fn equal(a: &[u8], b: &[u8]) -> bool {
    equal_on(Isa::detected(), a, b)
}

/// [`equal`] on `isa`; `None`, or an instruction set this CPU lacks, runs
/// the portable word-at-a-time code.
pub fn equal_on(isa: Option<Isa>, a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(isa) = isa.filter(|isa| isa.is_available()) {
        // SAFETY: `is_available` checked that the CPU has every feature the
        // kernels enable; they read only within `a` and `b`, which have one
        // length.
        return unsafe {
            match isa {
                Isa::Avx2 => equal_avx2(a, b),
                Isa::Avx512 | Isa::Avx512Ifma => equal_avx512(a, b),
            }
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa;
    equal_portable(a, b)
}

/// The first 8 bytes of `b` as a word (one load once compiled).
fn word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_ne_bytes(w)
}

/// OR of the differences of `a` and `b` (or of `a` alone when `b` is
/// `None`), 32 bytes at a time, stopping at the first non-zero chunk: zero
/// means equal (or all zero).
fn diff_portable(a: &[u8], b: Option<&[u8]>) -> u64 {
    let b = b.unwrap_or(a);
    let pick = |x: u64, y: u64| if std::ptr::eq(a, b) { x } else { x ^ y };
    let mut ca = a.chunks_exact(32);
    let mut cb = b.chunks_exact(32);
    for (x, y) in (&mut ca).zip(&mut cb) {
        let mut acc = 0;
        for i in (0..32).step_by(8) {
            acc |= pick(word(&x[i..]), word(&y[i..]));
        }
        if acc != 0 {
            return acc;
        }
    }
    let (ra, rb) = (ca.remainder(), cb.remainder());
    let mut acc = 0;
    let mut wa = ra.chunks_exact(8);
    let mut wb = rb.chunks_exact(8);
    for (x, y) in (&mut wa).zip(&mut wb) {
        acc |= pick(word(x), word(y));
    }
    for (&x, &y) in wa.remainder().iter().zip(wb.remainder()) {
        acc |= pick(u64::from(x), u64::from(y));
    }
    acc
}

fn is_zero_portable(buf: &[u8]) -> bool {
    diff_portable(buf, None) == 0
}

fn equal_portable(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && diff_portable(a, Some(b)) == 0
}

/// The x86-64 kernels. Everything here runs only after [`Isa::is_available`]
/// said yes.
//
// The AVX-512 intrinsics and `target_feature` names are stable since Rust
// 1.89: Cargo.toml's `rust-version` (1.85) has to follow.
#[cfg(target_arch = "x86_64")]
#[clippy::msrv = "1.89"]
mod x86 {
    pub(super) use std::arch::x86_64::*;

    use super::{CHAINS, LANES, PRIME_LO, equal_portable, is_zero_portable, low64};

    /// One digest's lane states, split: `[low words, high words]`.
    pub(super) type Split = [[u64; LANES]; 2];

    pub(super) fn split(lanes: &[u128; LANES]) -> Split {
        let mut s = [[0u64; LANES]; 2];
        for (k, &h) in lanes.iter().enumerate() {
            s[0][k] = low64(h);
            s[1][k] = (h >> 64) as u64;
        }
        s
    }

    pub(super) fn join(s: &Split) -> [u128; LANES] {
        std::array::from_fn(|k| u128::from(s[0][k]) | (u128::from(s[1][k]) << 64))
    }

    /// One digest step on eight lanes: plain AVX-512 (`vpmullq` for the low
    /// words, two `vpmuludq` for the carry).
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
    #[inline]
    pub(super) fn step512(lo: __m512i, hi: __m512i, byte: __m512i) -> (__m512i, __m512i) {
        let c = _mm512_set1_epi64(PRIME_LO);
        let x = _mm512_xor_si512(lo, byte);
        let p0 = _mm512_mul_epu32(x, c);
        let p1 = _mm512_mul_epu32(_mm512_srli_epi64::<32>(x), c);
        let carry = _mm512_srli_epi64::<32>(_mm512_add_epi64(p1, _mm512_srli_epi64::<32>(p0)));
        step512_tail(x, hi, carry)
    }

    /// [`step512`] with IFMA: with `x = xh 2^52 + xl`,
    /// `high64(x C) = (xh C + high52(xl C)) >> 12`, two multiply-adds.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512ifma")]
    #[inline]
    pub(super) fn step512_ifma(lo: __m512i, hi: __m512i, byte: __m512i) -> (__m512i, __m512i) {
        let c = _mm512_set1_epi64(PRIME_LO);
        let x = _mm512_xor_si512(lo, byte);
        let xh_c = _mm512_madd52lo_epu64(_mm512_setzero_si512(), _mm512_srli_epi64::<52>(x), c);
        let carry = _mm512_srli_epi64::<12>(_mm512_madd52hi_epu64(xh_c, x, c));
        step512_tail(x, hi, carry)
    }

    /// The rest of a step once `x` and the carry word are known.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
    #[inline]
    pub(super) fn step512_tail(x: __m512i, hi: __m512i, carry: __m512i) -> (__m512i, __m512i) {
        let c = _mm512_set1_epi64(PRIME_LO);
        let lo = _mm512_mullo_epi64(x, c);
        // Adding the terms that do not depend on `hi` first keeps the hi chain
        // one multiply and one add long.
        let rest = _mm512_add_epi64(carry, _mm512_slli_epi64::<24>(x));
        (lo, _mm512_add_epi64(_mm512_mullo_epi64(hi, c), rest))
    }

    /// Stamps out the AVX-512 kernels, with and without IFMA.
    macro_rules! avx512_kernels {
        ($absorb:ident, $words:ident, $step:ident, $features:literal) => {
            /// Absorbs `parts[j]` into digest `j`'s lanes, `K` digests
            /// interleaved.
            ///
            /// # Safety
            /// The CPU must have the enabled features; parts have one length, a
            /// multiple of 16.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $absorb<const K: usize>(
                states: &mut [Split; K],
                parts: [&[u8]; K],
            ) {
                let len = parts[0].len();
                let mut v = [[[_mm512_setzero_si512(); 2]; 2]; K];
                for (v, s) in v.iter_mut().zip(states.iter()) {
                    for (v, words) in v.iter_mut().zip(s) {
                        for (half, v) in v.iter_mut().enumerate() {
                            // SAFETY: `words` holds 16 u64, two vectors' worth.
                            *v = unsafe { _mm512_loadu_si512(words.as_ptr().add(8 * half).cast()) };
                        }
                    }
                }
                let mut i = 0;
                while i < len {
                    for j in 0..K {
                        for half in 0..2 {
                            // SAFETY: `i + 16 <= len` and every part is `len`
                            // long, so the 8 bytes at `i + 8 half` are inside it.
                            let bytes = unsafe {
                                _mm_loadl_epi64(parts[j].as_ptr().add(i + 8 * half).cast())
                            };
                            let b = _mm512_cvtepu8_epi64(bytes);
                            let [lo, hi] = &mut v[j];
                            (lo[half], hi[half]) = $step(lo[half], hi[half], b);
                        }
                    }
                    i += LANES;
                }
                for (v, s) in v.iter().zip(states.iter_mut()) {
                    for (v, words) in v.iter().zip(s) {
                        for (half, v) in v.iter().enumerate() {
                            // SAFETY: as for the loads.
                            unsafe {
                                _mm512_storeu_si512(words.as_mut_ptr().add(8 * half).cast(), *v)
                            };
                        }
                    }
                }
            }

            /// [`CHAINS`] FNV-1a 128 chains over little-endian word
            /// columns, two vectors of eight.
            ///
            /// # Safety
            /// The CPU must have the enabled features.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $words(
                lo: &mut [u64; CHAINS],
                hi: &mut [u64; CHAINS],
                words: &[[u64; CHAINS]],
            ) {
                let mut l = [_mm512_setzero_si512(); 2];
                let mut h = [_mm512_setzero_si512(); 2];
                for q in 0..2 {
                    // SAFETY: each array holds 16 u64, two vectors' worth.
                    unsafe {
                        l[q] = _mm512_loadu_si512(lo.as_ptr().add(8 * q).cast());
                        h[q] = _mm512_loadu_si512(hi.as_ptr().add(8 * q).cast());
                    }
                }
                let mask = _mm512_set1_epi64(0xff);
                for row in words {
                    // SAFETY: `row` holds 16 u64, two vectors' worth.
                    let mut w = unsafe {
                        [
                            _mm512_loadu_si512(row.as_ptr().cast()),
                            _mm512_loadu_si512(row.as_ptr().add(8).cast()),
                        ]
                    };
                    for _ in 0..8 {
                        for q in 0..2 {
                            (l[q], h[q]) = $step(l[q], h[q], _mm512_and_si512(w[q], mask));
                            w[q] = _mm512_srli_epi64::<8>(w[q]);
                        }
                    }
                }
                for q in 0..2 {
                    // SAFETY: as for the loads.
                    unsafe {
                        _mm512_storeu_si512(lo.as_mut_ptr().add(8 * q).cast(), l[q]);
                        _mm512_storeu_si512(hi.as_mut_ptr().add(8 * q).cast(), h[q]);
                    }
                }
            }
        };
    }

    avx512_kernels!(
        absorb_avx512,
        words_avx512,
        step512,
        "avx512f,avx512bw,avx512dq,avx512vl"
    );
    avx512_kernels!(
        absorb_ifma,
        words_ifma,
        step512_ifma,
        "avx512f,avx512bw,avx512dq,avx512vl,avx512ifma"
    );

    /// One digest step on four lanes with AVX2: no 64-bit multiply, so
    /// `x C` is built from two 32×32-bit products, and `hi C` as
    /// `(5 hi) 64 - 5 hi` (`C = 315 = 5 × 63`), shifts and adds being cheaper
    /// than two more multiplies.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(super) fn step256(lo: __m256i, hi: __m256i, byte: __m256i) -> (__m256i, __m256i) {
        let c = _mm256_set1_epi64x(PRIME_LO);
        let x = _mm256_xor_si256(lo, byte);
        let p0 = _mm256_mul_epu32(x, c);
        let p1 = _mm256_mul_epu32(_mm256_srli_epi64::<32>(x), c);
        let lo = _mm256_add_epi64(p0, _mm256_slli_epi64::<32>(p1));
        let carry = _mm256_srli_epi64::<32>(_mm256_add_epi64(p1, _mm256_srli_epi64::<32>(p0)));
        let rest = _mm256_add_epi64(carry, _mm256_slli_epi64::<24>(x));
        let hi5 = _mm256_add_epi64(hi, _mm256_slli_epi64::<2>(hi));
        let hi_c = _mm256_sub_epi64(_mm256_slli_epi64::<6>(hi5), hi5);
        (lo, _mm256_add_epi64(hi_c, rest))
    }

    /// Absorbs `data` into one digest's sixteen lanes, four ymm vectors of each
    /// half.
    ///
    /// # Safety
    /// The CPU must have AVX2; `data.len()` is a multiple of 16.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn absorb_avx2(state: &mut Split, data: &[u8]) {
        let [lo, hi] = state;
        let mut l = [_mm256_setzero_si256(); 4];
        let mut h = [_mm256_setzero_si256(); 4];
        for q in 0..4 {
            // SAFETY: each array holds 16 u64, four vectors' worth.
            unsafe {
                l[q] = _mm256_loadu_si256(lo.as_ptr().add(4 * q).cast());
                h[q] = _mm256_loadu_si256(hi.as_ptr().add(4 * q).cast());
            }
        }
        for chunk in data.chunks_exact(LANES) {
            for q in 0..4 {
                let four: [u8; 4] = [
                    chunk[4 * q],
                    chunk[4 * q + 1],
                    chunk[4 * q + 2],
                    chunk[4 * q + 3],
                ];
                let b = _mm256_cvtepu8_epi64(_mm_cvtsi32_si128(i32::from_le_bytes(four)));
                (l[q], h[q]) = step256(l[q], h[q], b);
            }
        }
        for q in 0..4 {
            // SAFETY: as for the loads.
            unsafe {
                _mm256_storeu_si256(lo.as_mut_ptr().add(4 * q).cast(), l[q]);
                _mm256_storeu_si256(hi.as_mut_ptr().add(4 * q).cast(), h[q]);
            }
        }
    }

    /// [`CHAINS`] FNV-1a 128 chains over little-endian word columns, four
    /// ymm vectors of four.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn words_avx2(
        lo: &mut [u64; CHAINS],
        hi: &mut [u64; CHAINS],
        words: &[[u64; CHAINS]],
    ) {
        let mut l = [_mm256_setzero_si256(); 4];
        let mut h = [_mm256_setzero_si256(); 4];
        for q in 0..4 {
            // SAFETY: each array holds 16 u64, four vectors' worth.
            unsafe {
                l[q] = _mm256_loadu_si256(lo.as_ptr().add(4 * q).cast());
                h[q] = _mm256_loadu_si256(hi.as_ptr().add(4 * q).cast());
            }
        }
        let mask = _mm256_set1_epi64x(0xff);
        for row in words {
            for q in 0..4 {
                // SAFETY: `row` holds 16 u64, four vectors' worth.
                let mut w = unsafe { _mm256_loadu_si256(row.as_ptr().add(4 * q).cast()) };
                for _ in 0..8 {
                    (l[q], h[q]) = step256(l[q], h[q], _mm256_and_si256(w, mask));
                    w = _mm256_srli_epi64::<8>(w);
                }
            }
        }
        for q in 0..4 {
            // SAFETY: as for the loads.
            unsafe {
                _mm256_storeu_si256(lo.as_mut_ptr().add(4 * q).cast(), l[q]);
                _mm256_storeu_si256(hi.as_mut_ptr().add(4 * q).cast(), h[q]);
            }
        }
    }

    /// A byte mask selecting the first `n` (at most 64) bytes of a vector.
    pub(super) fn first_bytes(n: usize) -> u64 {
        if n >= 64 { !0 } else { (1u64 << n) - 1 }
    }

    /// Loads up to 64 bytes of `c` into a vector, zeros beyond its end.
    ///
    /// # Safety
    /// The CPU must have AVX-512 BW.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
    pub(super) unsafe fn load_upto_64(c: &[u8]) -> __m512i {
        // SAFETY: masked-off bytes are neither read nor faulted on, and the mask
        // selects only the bytes of `c`.
        unsafe { _mm512_maskz_loadu_epi8(first_bytes(c.len()), c.as_ptr().cast()) }
    }

    /// # Safety
    /// The CPU must have the enabled features.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
    pub(super) unsafe fn is_zero_avx512(buf: &[u8]) -> bool {
        let mut chunks = buf.chunks_exact(256);
        for c in &mut chunks {
            let p = c.as_ptr();
            // SAFETY: `c` is 256 bytes long, four vectors.
            let acc = unsafe {
                let v = |i: usize| _mm512_loadu_si512(p.add(64 * i).cast());
                _mm512_or_si512(_mm512_or_si512(v(0), v(1)), _mm512_or_si512(v(2), v(3)))
            };
            if _mm512_test_epi64_mask(acc, acc) != 0 {
                return false;
            }
        }
        for c in chunks.remainder().chunks(64) {
            // SAFETY: the CPU has the features `load_upto_64` enables.
            let v = unsafe { load_upto_64(c) };
            if _mm512_test_epi64_mask(v, v) != 0 {
                return false;
            }
        }
        true
    }

    /// # Safety
    /// The CPU must have the enabled features; `a` and `b` have one length.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
    pub(super) unsafe fn equal_avx512(a: &[u8], b: &[u8]) -> bool {
        let mut ca = a.chunks_exact(256);
        let mut cb = b.chunks_exact(256);
        for (x, y) in (&mut ca).zip(&mut cb) {
            let (p, q) = (x.as_ptr(), y.as_ptr());
            // SAFETY: `x` and `y` are 256 bytes long, four vectors each.
            let acc = unsafe {
                let v = |i: usize| {
                    _mm512_xor_si512(
                        _mm512_loadu_si512(p.add(64 * i).cast()),
                        _mm512_loadu_si512(q.add(64 * i).cast()),
                    )
                };
                _mm512_or_si512(_mm512_or_si512(v(0), v(1)), _mm512_or_si512(v(2), v(3)))
            };
            if _mm512_test_epi64_mask(acc, acc) != 0 {
                return false;
            }
        }
        for (x, y) in ca.remainder().chunks(64).zip(cb.remainder().chunks(64)) {
            // SAFETY: the CPU has the features `load_upto_64` enables.
            let d = unsafe { _mm512_xor_si512(load_upto_64(x), load_upto_64(y)) };
            if _mm512_test_epi64_mask(d, d) != 0 {
                return false;
            }
        }
        true
    }

    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn is_zero_avx2(buf: &[u8]) -> bool {
        let mut chunks = buf.chunks_exact(128);
        for c in &mut chunks {
            let p = c.as_ptr();
            // SAFETY: `c` is 128 bytes long, four vectors.
            let acc = unsafe {
                let v = |i: usize| _mm256_loadu_si256(p.add(32 * i).cast());
                _mm256_or_si256(_mm256_or_si256(v(0), v(1)), _mm256_or_si256(v(2), v(3)))
            };
            if _mm256_testz_si256(acc, acc) == 0 {
                return false;
            }
        }
        let rest = chunks.remainder();
        let mut vectors = rest.chunks_exact(32);
        for c in &mut vectors {
            // SAFETY: `c` is 32 bytes long.
            let v = unsafe { _mm256_loadu_si256(c.as_ptr().cast()) };
            if _mm256_testz_si256(v, v) == 0 {
                return false;
            }
        }
        if buf.len() >= 32 {
            // The last 32 bytes, overlapping what was already checked.
            // SAFETY: `buf` is at least 32 bytes long.
            let v = unsafe { _mm256_loadu_si256(buf.as_ptr().add(buf.len() - 32).cast()) };
            _mm256_testz_si256(v, v) != 0
        } else {
            is_zero_portable(vectors.remainder())
        }
    }

    /// # Safety
    /// The CPU must have AVX2; `a` and `b` have one length.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn equal_avx2(a: &[u8], b: &[u8]) -> bool {
        let mut ca = a.chunks_exact(128);
        let mut cb = b.chunks_exact(128);
        for (x, y) in (&mut ca).zip(&mut cb) {
            let (p, q) = (x.as_ptr(), y.as_ptr());
            // SAFETY: `x` and `y` are 128 bytes long, four vectors each.
            let acc = unsafe {
                let v = |i: usize| {
                    _mm256_xor_si256(
                        _mm256_loadu_si256(p.add(32 * i).cast()),
                        _mm256_loadu_si256(q.add(32 * i).cast()),
                    )
                };
                _mm256_or_si256(_mm256_or_si256(v(0), v(1)), _mm256_or_si256(v(2), v(3)))
            };
            if _mm256_testz_si256(acc, acc) == 0 {
                return false;
            }
        }
        let (ra, rb) = (ca.remainder(), cb.remainder());
        let mut va = ra.chunks_exact(32);
        let mut vb = rb.chunks_exact(32);
        for (x, y) in (&mut va).zip(&mut vb) {
            // SAFETY: `x` and `y` are 32 bytes long.
            let d = unsafe {
                _mm256_xor_si256(
                    _mm256_loadu_si256(x.as_ptr().cast()),
                    _mm256_loadu_si256(y.as_ptr().cast()),
                )
            };
            if _mm256_testz_si256(d, d) == 0 {
                return false;
            }
        }
        if a.len() >= 32 {
            let at = a.len() - 32;
            // The last 32 bytes, overlapping what was already compared.
            // SAFETY: both slices are at least 32 bytes long.
            let d = unsafe {
                _mm256_xor_si256(
                    _mm256_loadu_si256(a.as_ptr().add(at).cast()),
                    _mm256_loadu_si256(b.as_ptr().add(at).cast()),
                )
            };
            _mm256_testz_si256(d, d) != 0
        } else {
            equal_portable(va.remainder(), vb.remainder())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn detection_is_ordered_and_stable() {
        assert_eq!(Isa::detected(), Isa::detected());
        for isa in Isa::ALL {
            assert_eq!(isa.is_available(), isa.probe(), "{isa:?}");
        }
        assert!(Isa::Avx2 < Isa::Avx512 && Isa::Avx512 < Isa::Avx512Ifma);
    }

    #[test]
    fn zero_test_and_comparison_see_every_byte() {
        let base = vec![0u8; 300 + 64];
        for isa in paths() {
            for offset in [0, 1, 3, 31, 63] {
                for len in 0..=300 {
                    let a = &base[offset..offset + len];
                    assert!(is_zero_on(isa, a), "{isa:?} @{offset} len {len}");
                    assert!(equal_on(isa, a, a), "{isa:?} @{offset} len {len}");
                    let mut b = a.to_vec();
                    for i in 0..len {
                        b[i] = 0x80 >> (i % 8);
                        assert!(!is_zero_on(isa, &b), "{isa:?} len {len} byte {i}");
                        assert!(!equal_on(isa, a, &b), "{isa:?} len {len} byte {i}");
                        assert!(!equal_on(isa, &b, a), "{isa:?} len {len} byte {i}");
                        b[i] = 0;
                    }
                }
            }
        }
    }

    #[test]
    fn zero_test_and_comparison_on_large_buffers() {
        let len = (1 << 20) + 77;
        let mut a = vec![0u8; len + 1];
        fastrand::Rng::with_seed(31).fill(&mut a);
        let b = a.clone();
        let zeros = vec![0u8; len + 1];
        for isa in paths() {
            for (a, b, z) in [
                (&a[..len], &b[..len], &zeros[..len]),
                (&a[1..], &b[1..], &zeros[1..]),
            ] {
                assert!(equal_on(isa, a, b), "{isa:?}");
                assert!(is_zero_on(isa, z), "{isa:?}");
                assert!(!is_zero_on(isa, a), "{isa:?}");
                assert!(
                    !equal_on(isa, a, &b[..b.len() - 1]),
                    "{isa:?} lengths differ"
                );
                for at in [0, 1, 255, 256, 4096, len / 2, len - 65, len - 33, len - 2] {
                    let mut c = b.to_vec();
                    c[at] ^= 1;
                    assert!(!equal_on(isa, a, &c), "{isa:?} byte {at}");
                    let mut y = z.to_vec();
                    y[at] = 1;
                    assert!(!is_zero_on(isa, &y), "{isa:?} byte {at}");
                }
            }
        }
    }

    #[test]
    fn digest_kernels_refuse_nothing_they_can_run() {
        let data = [7u8; 64];
        for isa in Isa::ALL {
            let mut lanes = [0u128; LANES];
            assert_eq!(absorb(isa, &mut lanes, &data), isa.is_available());
            let mut four = [[0u128; LANES]; 4];
            assert_eq!(absorb4(isa, &mut four, [&data; 4]), isa.is_available());
            if isa.is_available() {
                assert!(four.iter().all(|l| *l == lanes), "{isa:?}");
            }
        }
    }
}
