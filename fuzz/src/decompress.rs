//! The decompression bound: arbitrary bytes decompressed into a buffer of
//! an arbitrary announced size never panic, never write past it, and
//! succeed only when they fill it exactly; real zstd data of n bytes never
//! fits a buffer of fewer (the "frame that decompresses beyond a block").
use arbitrary::{Result, Unstructured};
use bsync::compress::{Compressor, Decompressor, Level};

/// The target, on one input.
pub fn fuzz(data: &[u8]) {
    let _ = run(&mut Unstructured::new(data));
}

thread_local! {
    // Contexts are reused, as the lanes reuse theirs: creating one per input
    // would cost more than the decompression.
    static CONTEXTS: std::cell::RefCell<(Decompressor, Compressor)> =
        std::cell::RefCell::new((Decompressor::default(), Compressor::new(Some(Level::Fast))));
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    CONTEXTS.with(|c| {
        let (d, c) = &mut *c.borrow_mut();
        check(u, d, c)
    })
}

fn check(u: &mut Unstructured<'_>, d: &mut Decompressor, c: &mut Compressor) -> Result<()> {
    let size = u.int_in_range(0..=(64usize << 10))?;
    let src: &[u8] = u.arbitrary()?;
    let mut dst = vec![0xa5u8; size + 64];
    let _ = d.decompress(src, &mut dst[..size]);
    assert!(
        dst[size..].iter().all(|&b| b == 0xa5),
        "wrote past the buffer"
    );

    // Compressible data: into a buffer one byte short it must fail.
    let raw: Vec<u8> = src
        .iter()
        .cycle()
        .take(size.min(4 << 10))
        .copied()
        .collect();
    if raw.is_empty() {
        return Ok(());
    }
    let mut z = Vec::new();
    if c.append(std::iter::once(&raw[..]), &mut z) {
        let mut short = vec![0u8; raw.len() - 1];
        assert!(
            d.decompress(&z, &mut short).is_err(),
            "fitted a smaller buffer"
        );
        let mut exact = vec![0u8; raw.len()];
        assert!(d.decompress(&z, &mut exact).is_ok());
        assert_eq!(exact, raw);
    }
    Ok(())
}
