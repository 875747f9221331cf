//! The pipeline allocates nothing per block in the steady state: blocks are
//! read into pooled buffers that travel through it and come back.
//!
//! A counting global allocator wraps the system one; the library's local
//! sync runs in-process on a short and a long file, both with every block
//! changed (data and zeros, so both the write and the clearing path run).
//! Whatever the run costs once (threads, pools, labels) is the same for
//! both; the difference is what the extra blocks cost, and must stay near
//! zero. (Block buffers are mmap'ed, not heap: the pool's own bound is
//! tested in `pool.rs`.)
//!
//! The same holds for network sessions, upload and download, sealed (`-K`)
//! or not, both ends in this process over loopback.
//!
//! This binary holds one test only: the counter is process-wide, and a
//! second test running alongside would add its own allocations.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bsync::cli::{self, Command};
use bsync::config::Config;
use common::*;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator, which
// upholds GlobalAlloc's contract; counting touches only an atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// The key of the sealed runs.
const KEY: &str = "-K=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

#[global_allocator]
static GLOBAL: Counting = Counting;

const BLOCK: usize = 64 * 1024;

/// Source and destination of `blocks` blocks where every block differs:
/// even blocks are new data, odd blocks became zeros.
fn scene(dir: &TempDir, blocks: usize) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut src = random_bytes(blocks * BLOCK, 7);
    for odd in src.chunks_mut(BLOCK).skip(1).step_by(2) {
        odd.fill(0);
    }
    let dst = random_bytes(blocks * BLOCK, 8);
    let (s, d) = (dir.join("src"), dir.join("dst"));
    write_file(&s, &src);
    write_file(&d, &dst);
    (s, d)
}

fn config(args: &[&OsStr]) -> Config {
    match cli::parse(args.iter().map(OsString::from)) {
        Ok(Command::Run(config)) => *config,
        other => panic!("{args:?}: {other:?}"),
    }
}

/// Allocations made by one in-process `bsync -q -b 64K -f SRC -t DST`.
fn allocations_of_sync(src: &Path, dst: &Path, extra: &[&str]) -> u64 {
    let mut args: Vec<&OsStr> = ["-q", "-b", "64K", "-f"].map(OsStr::new).to_vec();
    args.extend([src.as_os_str(), "-t".as_ref(), dst.as_os_str()]);
    args.extend(extra.iter().map(OsStr::new));
    let config = config(&args);
    let before = ALLOCATIONS.load(Relaxed);
    bsync::run(&config).expect("local sync");
    let used = ALLOCATIONS.load(Relaxed) - before;
    assert_same(src, dst);
    used
}

/// Allocations made by an in-process network sync of `src` into `dst`
/// (server in a thread, client here; both ends counted) with `-w workers`;
/// `download` makes the server the source, `compress` turns zstd on, `key`
/// seals every frame.
fn allocations_of_network(
    src: &Path,
    dst: &Path,
    workers: &str,
    download: bool,
    compress: bool,
    key: bool,
) -> u64 {
    let (server_file, client_file) = if download { (src, dst) } else { (dst, src) };
    let d = if download { "-d=true" } else { "-d=false" };
    let n = if compress { "-n=false" } else { "-n=true" };
    // A free port: taken from the kernel, released, and handed to the server.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
        .to_string();
    let mut server = vec![
        "-q".as_ref(),
        "-P".as_ref(),
        "-i".as_ref(),
        "127.0.0.1".as_ref(),
        "-p".as_ref(),
        port.as_ref(),
        d.as_ref(),
        // A download's source sets the block size.
        "-b".as_ref(),
        "64K".as_ref(),
        "-f".as_ref(),
        server_file.as_os_str(),
    ];
    let remote = format!("127.0.0.1:{port}");
    // A downloading client takes the server's block size (and refuses -b).
    let client_bs: &[&OsStr] = if download {
        &[]
    } else {
        &["-b".as_ref(), "64K".as_ref()]
    };
    let mut client = vec!["-q".as_ref(), n.as_ref(), d.as_ref()];
    client.extend_from_slice(client_bs);
    client.extend_from_slice(&[
        "-w".as_ref(),
        workers.as_ref(),
        "-r".as_ref(),
        remote.as_ref(),
        "-f".as_ref(),
        client_file.as_os_str(),
    ]);
    if key {
        server.push(KEY.as_ref());
        client.push(KEY.as_ref());
    }
    let (server, client) = (config(&server), config(&client));
    std::thread::scope(|s| {
        let served = s.spawn(|| bsync::run(&server));
        let mut tries = 0;
        let used = loop {
            let before = ALLOCATIONS.load(Relaxed);
            match bsync::run(&client) {
                Ok(()) => break ALLOCATIONS.load(Relaxed) - before,
                // Not listening yet.
                Err(e) if tries < 100 && e.to_string().contains("connect") => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("network sync failed: {e}"),
            }
        };
        served.join().expect("server thread").expect("server");
        used
    })
}

/// The short and the long run, in blocks: 512 blocks apart, so that an
/// allocation per block adds 512.
const SHORT: usize = 128;
const LONG: usize = 640;

/// Fails if the extra 512 blocks of the long run cost 300 allocations or
/// more. What may legitimately differ is warm-up: the pools create buffers
/// lazily, and a busier run may touch more of them, each growing its
/// extent list a few times (at most about 60 with `-w 3`); and on the
/// network, the lists of the blocks in flight (digests, a parked block's,
/// a received block's: about seven a block) are allocated once for each
/// block of the deepest the pipeline ever got, up to a destination's
/// window (`config::MAX_WINDOW`, 64 blocks), which timing decides.
fn check(what: &str, short: u64, long: u64) {
    eprintln!("{what}: {SHORT} blocks: {short} allocations, {LONG} blocks: {long}");
    assert!(
        long.saturating_sub(short) < 300,
        "{what}: {short} allocations for {SHORT} blocks but {long} for {LONG}: \
         something allocates per block"
    );
}

#[test]
fn the_pipeline_allocates_nothing_per_block() {
    let dir = TempDir::new("alloc");
    for workers in ["1", "3"] {
        let mut counts = [0u64; 2];
        for (count, blocks) in counts.iter_mut().zip([SHORT, LONG]) {
            let (s, d) = scene(&dir, blocks);
            *count = allocations_of_sync(&s, &d, &["-w", workers]);
        }
        check(&format!("local -w {workers}"), counts[0], counts[1]);
    }
    for (workers, download, compress, key) in [
        ("1", false, false, false),
        ("2", false, true, false),
        ("1", true, false, false),
        ("2", true, true, false),
        ("1", false, false, true),
        ("2", true, true, true),
    ] {
        let mut counts = [0u64; 2];
        for (count, blocks) in counts.iter_mut().zip([SHORT, LONG]) {
            // The fewest of two runs: the server thread starts while the
            // client counts, and how much of its start falls inside the
            // count is timing; a cost per block is in every run.
            *count = (0..2)
                .map(|_| {
                    let (s, d) = scene(&dir, blocks);
                    let n = allocations_of_network(&s, &d, workers, download, compress, key);
                    assert_same(&s, &d);
                    n
                })
                .min()
                .unwrap_or_default();
        }
        let what = format!(
            "{} -w {workers}{}",
            if download { "download" } else { "upload" },
            if compress { " zstd" } else { "" },
        );
        let what = if key { format!("{what} -K") } else { what };
        check(&what, counts[0], counts[1]);
    }
}
