//! zstd compression of block data, one reusable context per worker.
//!
//! The `-L` names map to zstd levels chosen by measurement (BENCHMARKS.md).
//! Data that does not shrink travels raw. Decompression writes into a slice
//! of exactly the announced length, so a hostile frame can never make it
//! write past one block.

use zstd_safe::zstd_sys::ZSTD_EndDirective;
use zstd_safe::{CCtx, CParameter, DCtx, InBuffer, OutBuffer, ResetDirective};

use crate::proto::compression as code;

/// zstd compression level names of `-L`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Fastest, larger output.
    Fast,
    /// Balanced.
    Default,
    /// Smaller output, slower.
    Better,
    /// Smallest output, slowest.
    Best,
}

/// The zstd level behind a `-L` name. Measured on a real ext4 image
/// (benches/BENCHMARKS.md): past level 3 the ratio barely moves while the
/// speed falls off a cliff at 5; level 15 ran at ~8 MB/s in the pipeline.
pub fn zstd_level(level: Level) -> i32 {
    match level {
        Level::Fast => 1,
        Level::Default => 3,
        Level::Better => 6,
        Level::Best => 9,
    }
}

/// Wire code of a compression setting ([`crate::proto::compression`]).
pub fn code(level: Option<Level>) -> u8 {
    match level {
        None => code::NONE,
        Some(Level::Fast) => code::FAST,
        Some(Level::Default) => code::DEFAULT,
        Some(Level::Better) => code::BETTER,
        Some(Level::Best) => code::BEST,
    }
}

/// The compression setting of a wire code, if valid.
pub fn from_code(c: u8) -> Option<Option<Level>> {
    Some(match c {
        code::NONE => None,
        code::FAST => Some(Level::Fast),
        code::DEFAULT => Some(Level::Default),
        code::BETTER => Some(Level::Better),
        code::BEST => Some(Level::Best),
        _ => return None,
    })
}

/// A compression context, reused for every block a worker handles.
pub struct Compressor {
    cctx: Option<CCtx<'static>>,
}

impl Compressor {
    /// A compressor for `level`; `None` never compresses.
    pub fn new(level: Option<Level>) -> Compressor {
        let cctx = level.map(|l| {
            let mut c = CCtx::create();
            // Only fails for out-of-range levels, and ours are fixed.
            let _ = c.set_parameter(CParameter::CompressionLevel(zstd_level(l)));
            c
        });
        Compressor { cctx }
    }

    /// Append `pieces` to `out`, compressed if that makes them smaller.
    /// Returns whether they were compressed.
    pub fn append<'a>(
        &mut self,
        pieces: impl Iterator<Item = &'a [u8]> + Clone,
        out: &mut Vec<u8>,
    ) -> bool {
        let start = out.len();
        let raw: usize = pieces.clone().map(<[u8]>::len).sum();
        if let Some(cctx) = &mut self.cctx {
            let mut ok = true;
            for piece in pieces.clone() {
                // Into spare capacity, not a zero-filled bound: only the
                // bytes written become resident, so a frame buffer costs
                // what compressed data it held, not a block per worker.
                let at = out.len();
                out.reserve(zstd_safe::compress_bound(piece.len()));
                let mut output = OutBuffer::around_pos(out, at);
                let mut input = InBuffer::around(piece);
                // With room for the bound, one call ends the frame (0 left).
                match cctx.compress_stream2(&mut output, &mut input, ZSTD_EndDirective::ZSTD_e_end)
                {
                    Ok(0) => {}
                    _ => {
                        // A frame left unfinished must not begin the next.
                        let _ = cctx.reset(ResetDirective::SessionOnly);
                        ok = false;
                        break;
                    }
                }
            }
            if ok && out.len() - start < raw {
                return true;
            }
            out.truncate(start);
        }
        for piece in pieces {
            out.extend_from_slice(piece);
        }
        false
    }
}

/// A decompression context, reused for every block a lane receives.
pub struct Decompressor {
    dctx: DCtx<'static>,
}

impl Default for Decompressor {
    fn default() -> Self {
        Decompressor {
            dctx: DCtx::create(),
        }
    }
}

impl Decompressor {
    /// Decompress `src` (one or more zstd frames) into exactly `dst`.
    pub fn decompress(&mut self, src: &[u8], dst: &mut [u8]) -> Result<(), String> {
        match self.dctx.decompress(dst, src) {
            Ok(n) if n == dst.len() => Ok(()),
            Ok(n) => Err(format!(
                "decompressed to {n} bytes, announced {}",
                dst.len()
            )),
            Err(code) => Err(format!(
                "cannot decompress: {}",
                zstd_safe::get_error_name(code)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_raw_fallback() {
        let text = b"hello hello hello hello hello hello hello hello ".repeat(100);
        let mut c = Compressor::new(Some(Level::Default));
        let mut out = Vec::new();
        let pieces = [&text[..1000], &text[1000..]];
        assert!(c.append(pieces.iter().copied(), &mut out));
        assert!(out.len() < text.len());
        let mut back = vec![0; text.len()];
        Decompressor::default().decompress(&out, &mut back).unwrap();
        assert_eq!(back, text);

        let mut noise = vec![0u8; 4096];
        fastrand::Rng::with_seed(1).fill(&mut noise);
        let mut out = vec![9];
        assert!(!c.append([&noise[..]].into_iter(), &mut out));
        assert_eq!(&out[1..], &noise[..]);
        assert!(!Compressor::new(None).append([&text[..]].into_iter(), &mut Vec::new()));
    }

    #[test]
    fn compressed_data_follows_the_frame_header_and_the_context_is_reused() {
        let text = b"a frame of text, a frame of text, a frame of text. ".repeat(200);
        let mut c = Compressor::new(Some(Level::Default));
        for round in 0..3u8 {
            // A header already in the frame stays as it was.
            let mut out = vec![round; 5];
            assert!(c.append([&text[..]].into_iter(), &mut out));
            assert_eq!(&out[..5], &[round; 5]);
            let mut back = vec![0; text.len()];
            Decompressor::default()
                .decompress(&out[5..], &mut back)
                .unwrap();
            assert_eq!(back, text, "round {round}");
        }
    }

    #[test]
    fn decompression_never_exceeds_the_announced_length() {
        let data = vec![7u8; 10_000];
        let mut out = Vec::new();
        Compressor::new(Some(Level::Fast)).append([&data[..]].into_iter(), &mut out);
        let mut small = vec![0; 100];
        assert!(
            Decompressor::default()
                .decompress(&out, &mut small)
                .is_err()
        );
        let mut big = vec![0; 20_000];
        assert!(Decompressor::default().decompress(&out, &mut big).is_err());
        assert!(
            Decompressor::default()
                .decompress(b"garbage", &mut big)
                .is_err()
        );
    }

    #[test]
    fn codes_round_trip() {
        for l in [
            None,
            Some(Level::Fast),
            Some(Level::Default),
            Some(Level::Better),
            Some(Level::Best),
        ] {
            assert_eq!(from_code(code(l)), Some(l));
        }
        assert_eq!(from_code(5), None);
    }
}
