//! Every file of `corpus/<target>/` through its target, as a plain
//! test (`make test` runs it): the seed corpus stays valid input, and a
//! crash the fuzzer once found, kept in the corpus, stays fixed.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no corpus", dir.display());
    for file in files {
        let data = std::fs::read(&file).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(
            outcome.is_ok(),
            "{target}: {} fails its check",
            file.display()
        );
    }
}

#[test]
fn decode() {
    replay("decode", bsync_fuzz::decode::fuzz);
}

#[test]
fn decompress() {
    replay("decompress", bsync_fuzz::decompress::fuzz);
}

#[test]
fn handshake() {
    replay("handshake", bsync_fuzz::handshake::fuzz);
}

#[test]
fn open() {
    replay("open", bsync_fuzz::open::fuzz);
}

#[test]
fn patch() {
    replay("patch", bsync_fuzz::patch::fuzz);
}

#[test]
fn round_trip() {
    replay("round_trip", bsync_fuzz::round_trip::fuzz);
}
