//! Network mode through the real binary: a server and a client as two
//! processes over loopback, in both directions, with odd parameters, hostile
//! or mistaken peers, a killed server and a cut connection.
//!
//! Every process runs with a short `BSYNC_IO_TIMEOUT` and under a bounded
//! wait, so a hang fails its test instead of stalling the suite, and every
//! process a test starts is killed when the test ends, whatever happened.

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Network deadline of every bsync process, in seconds (`BSYNC_IO_TIMEOUT`).
const IO_TIMEOUT: u64 = 10;
/// How long a process may take to finish before the test kills it and fails.
const RUN_LIMIT: Duration = Duration::from_secs(20);
/// How long a server may take to print its port.
const PORT_LIMIT: Duration = Duration::from_secs(10);
/// What each side of a connection sends first.
const PREAMBLE: &[u8; 14] = b"BSYNC ver0.02\n";
const MIB: usize = 1 << 20;
/// The change grain (see SPEC: 4 KiB pages, or the block size if smaller).
const PAGE: usize = 4096;

// ------------------------------------------------------------- processes ---

/// A running bsync whose stderr is collected as it comes and whose stdout
/// lines arrive on a channel. Killed when dropped.
struct Proc {
    child: Child,
    /// The command line, for messages.
    what: String,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<thread::JoinHandle<()>>,
    stdout: Receiver<String>,
}

impl Proc {
    /// `bsync ARGS` with the short network deadline and piped output.
    fn start(args: &[&str]) -> Proc {
        Proc::start_env(args, &[])
    }

    /// Like [`Proc::start`] with extra environment variables.
    fn start_env(args: &[&str], env: &[(&str, &str)]) -> Proc {
        Proc::start_with(args, env, None)
    }

    /// Like [`Proc::start_env`], writing `input` to its stdin (else stdin
    /// is empty).
    fn start_with(args: &[&str], env: &[(&str, &str)], input: Option<&str>) -> Proc {
        let mut cmd = bsync();
        cmd.env("BSYNC_IO_TIMEOUT", IO_TIMEOUT.to_string())
            .envs(env.iter().copied())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = format!("bsync {}", args.join(" "));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let mut stdin = child.stdin.take().expect("stdin is piped");
        stdin
            .write_all(input.unwrap_or_default().as_bytes())
            .unwrap_or_else(|e| panic!("{what}: write stdin: {e}"));
        drop(stdin);
        // Both pipes are drained by threads so the child never blocks on a
        // full pipe, whatever the test is waiting for.
        let err = child.stderr.take().expect("stderr is piped");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let stderr_reader = thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        let out = child.stdout.take().expect("stdout is piped");
        let (tx, stdout) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            what,
            stderr,
            stderr_reader: Some(stderr_reader),
            stdout,
        }
    }

    /// stderr so far.
    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Still running?
    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Wait until stderr satisfies `ready`, for up to `limit`; returns stderr.
    /// Fails at once if the process exits without it.
    fn wait_stderr(&mut self, limit: Duration, ready: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let exited = !self.is_running();
            if exited {
                // Let the reader thread catch the last lines.
                thread::sleep(Duration::from_millis(100));
            }
            let err = self.stderr();
            if ready(&err) {
                return err;
            }
            assert!(
                !exited,
                "{} exited while the test waited for its stderr:\n{err}",
                self.what
            );
            assert!(
                start.elapsed() < limit,
                "{}: stderr not as expected after {limit:?}:\n{err}",
                self.what
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for the exit, for up to [`RUN_LIMIT`]; returns the status and all
    /// of stderr. Kills the process and fails on overtime.
    fn wait(mut self) -> (ExitStatus, String) {
        let start = Instant::now();
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if start.elapsed() < RUN_LIMIT => thread::sleep(Duration::from_millis(10)),
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "{} still running after {RUN_LIMIT:?}; killed. stderr:\n{}",
                        self.what,
                        self.stderr()
                    );
                }
                Err(e) => panic!("wait for {}: {e}", self.what),
            }
        };
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        (status, self.stderr())
    }

    /// Wait and insist on exit status `code`; returns stderr.
    fn expect_status(self, code: i32) -> String {
        let what = self.what.clone();
        let (status, err) = self.wait();
        assert_eq!(
            status.code(),
            Some(code),
            "{what}: wrong exit status\nstderr:\n{err}"
        );
        err
    }

    /// Kill now.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A bsync server on a free port.
struct Server {
    proc: Proc,
    host: String,
    port: u16,
}

impl Server {
    /// `bsync -p 0 -i 127.0.0.1 ARGS`, once it has printed its port.
    fn start(args: &[&str]) -> Server {
        Server::try_start("127.0.0.1", args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `bsync -p 0 -i BIND ARGS`; `Err` (with its stderr) if it exits
    /// without printing a port, for instance because `BIND` is unavailable.
    fn try_start(bind: &str, args: &[&str]) -> Result<Server, String> {
        Server::try_start_with(bind, args, None)
    }

    /// [`Server::start`] with `input` on its stdin.
    fn start_with(args: &[&str], input: &str) -> Server {
        Server::try_start_with("127.0.0.1", args, Some(input)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start_with(bind: &str, args: &[&str], input: Option<&str>) -> Result<Server, String> {
        let mut all = vec!["-p", "0", "-i", bind];
        all.extend_from_slice(args);
        let proc = Proc::start_with(&all, &[], input);
        match proc.stdout.recv_timeout(PORT_LIMIT) {
            Ok(line) => {
                let port = line.trim().parse().unwrap_or_else(|_| {
                    panic!(
                        "{}: first stdout line {line:?} is not a port; stderr:\n{}",
                        proc.what,
                        proc.stderr()
                    )
                });
                Ok(Server {
                    proc,
                    host: bind.to_string(),
                    port,
                })
            }
            Err(RecvTimeoutError::Disconnected) => {
                let what = proc.what.clone();
                let (status, err) = proc.wait();
                Err(format!("{what} printed no port ({status}); stderr:\n{err}"))
            }
            Err(RecvTimeoutError::Timeout) => panic!(
                "{} printed no port within {PORT_LIMIT:?}; stderr:\n{}",
                proc.what,
                proc.stderr()
            ),
        }
    }

    /// `HOST:PORT` for `-r`.
    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The address for a test's own socket.
    fn socket_addr(&self) -> SocketAddr {
        self.addr().parse().expect("a socket address")
    }
}

/// Path as a command-line argument (test paths are UTF-8).
fn arg(p: &Path) -> &str {
    p.to_str().expect("UTF-8 test path")
}

/// Lines of `stderr` containing every one of `words`.
fn lines_with<'a>(stderr: &'a str, words: &[&str]) -> Vec<&'a str> {
    stderr
        .lines()
        .filter(|l| words.iter().all(|w| l.contains(w)))
        .collect()
}

/// The single error line (`bsync: ...`) of a failed run.
fn error_line(stderr: &str) -> &str {
    let errors = lines_with(stderr, &["bsync: "]);
    assert_eq!(
        errors.len(),
        1,
        "want exactly one error line, stderr:\n{stderr}"
    );
    errors[0]
}

/// The verification digest a run printed (`none` for an empty source,
/// where nothing was verified and no agreement is claimed).
fn verify_digest(stderr: &str) -> &str {
    if lines_with(stderr, &["verification: no blocks to compare"]).len() == 1 {
        assert!(!stderr.contains("both ends agree"), "{stderr}");
        return "none";
    }
    let line = lines_with(stderr, &["verification digest ", "both ends agree"]);
    assert_eq!(line.len(), 1, "want one verification line:\n{stderr}");
    line[0]
        .split("verification digest ")
        .nth(1)
        .and_then(|s| s.split([':', ' ']).next())
        .expect("a digest")
}

// ------------------------------------------------------------- transfers ---

/// Which end is the source.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Dir {
    /// The client is the source (default).
    Up,
    /// The server is the source (`-d`).
    Down,
}

/// What both ends said about a successful transfer.
struct Ends {
    source: String,
    dest: String,
    client: String,
    server: String,
}

/// Run one session `src` → `dst` over loopback: `bs` is the block size given
/// to the source (authoritative either way), `client` extra client flags.
/// Both must exit 0 and agree on the verification digest.
fn transfer(dir: Dir, src: &Path, dst: &Path, bs: Option<&str>, client: &[&str]) -> Ends {
    transfer_on("127.0.0.1", dir, src, dst, bs, client).unwrap_or_else(|e| panic!("{e}"))
}

/// [`transfer`] with the server bound to `bind`; `Err` if it cannot bind.
fn transfer_on(
    bind: &str,
    dir: Dir,
    src: &Path,
    dst: &Path,
    bs: Option<&str>,
    client: &[&str],
) -> Result<Ends, String> {
    let bs_args: Vec<&str> = bs.map(|b| vec!["-b", b]).unwrap_or_default();
    let mut server_args = Vec::new();
    let mut client_args = Vec::new();
    match dir {
        Dir::Up => {
            server_args.extend(["-f", arg(dst)]);
            client_args.extend(["-f", arg(src)]);
            client_args.extend(&bs_args);
        }
        Dir::Down => {
            server_args.extend(["-d", "-f", arg(src)]);
            server_args.extend(&bs_args);
            client_args.extend(["-d", "-f", arg(dst)]);
        }
    }
    let server = Server::try_start(bind, &server_args)?;
    let addr = server.addr();
    client_args.extend(["-r", &addr]);
    client_args.extend(client);
    let client = Proc::start(&client_args).expect_status(0);
    let server = server.proc.expect_status(0);
    assert_eq!(
        verify_digest(&client),
        verify_digest(&server),
        "the ends disagree\nclient:\n{client}\nserver:\n{server}"
    );
    let (source, dest) = match dir {
        Dir::Up => (client.clone(), server.clone()),
        Dir::Down => (server.clone(), client.clone()),
    };
    Ok(Ends {
        source,
        dest,
        client,
        server,
    })
}

/// What the destination's summary must say, worked out from the two files
/// as they were before the run: per block, per 4 KiB page.
fn expect(src: &[u8], dst: &[u8], bs: usize, skip: usize) -> Expect {
    expect_summary(src, dst, bs, skip, PAGE)
}

/// The destination's summary must match `want`; the source must count the
/// same blocks the same way.
fn check_summaries(ends: &Ends, want: &Expect) {
    let d = summary(&ends.dest);
    want.check(&d);
    let s = summary(&ends.source);
    assert_eq!(
        s.counts(),
        d.counts(),
        "source: {}\ndest: {}",
        s.line,
        d.line
    );
    assert!(!s.line.contains("written"), "the source wrote: {}", s.line);
}

/// Write `src` and `dst` (None: no destination file), transfer with block
/// size `bs` and extra client flags, check the result and both summaries.
fn sync_and_check(
    name: &str,
    dir: Dir,
    src: &[u8],
    dst: Option<&[u8]>,
    bs: usize,
    client: &[&str],
) -> Ends {
    let tmp = TempDir::new(name);
    let (s, d) = (tmp.join("src"), tmp.join("dst"));
    write_file(&s, src);
    if let Some(dst) = dst {
        write_file(&d, dst);
    }
    let ends = transfer(dir, &s, &d, Some(&bs.to_string()), client);
    assert_same(&s, &d);
    check_summaries(&ends, &expect(src, dst.unwrap_or_default(), bs, 0));
    ends
}

// ------------------------------------------------- both directions alike ---

fn identical(name: &str, dir: Dir) {
    let tmp = TempDir::new(name);
    let (s, d) = (tmp.join("src"), tmp.join("dst"));
    let mut data = random_bytes(3 * MIB + 5, 1);
    data[MIB..2 * MIB].fill(0);
    write_file(&s, &data);
    write_file(&d, &data);
    let before = age(&d);
    let ends = transfer(dir, &s, &d, Some("256K"), &[]);
    assert_same(&s, &d);
    check_summaries(&ends, &expect(&data, &data, 256 << 10, 0));
    let sum = summary(&ends.dest);
    assert!(!sum.line.contains("cleared"), "{}", sum.line);
    assert_eq!(mtime(&d), before, "identical: the destination was modified");
    // Identical data costs at most 0.1 % of its size in digests.
    assert!(
        sum.digests <= data.len() as f64 * 0.001,
        "{} bytes of digests for {} identical bytes: {}",
        sum.digests,
        data.len(),
        sum.line
    );
}

#[test]
fn upload_identical_writes_nothing() {
    identical("up-identical", Dir::Up);
}

#[test]
fn download_identical_writes_nothing() {
    identical("down-identical", Dir::Down);
}

fn scattered(name: &str, dir: Dir) {
    let (src, dst) = make_pair(4 * MIB, 20);
    let ends = sync_and_check(name, dir, &src, Some(&dst), MIB, &[]);
    let sum = summary(&ends.client);
    // Only changed pages travel: far less than the file.
    assert!(
        sum.wire < (src.len() / 2) as f64,
        "too much on the wire: {}",
        sum.line
    );
}

#[test]
fn upload_scattered_changes() {
    scattered("up-scattered", Dir::Up);
}

#[test]
fn download_scattered_changes() {
    scattered("down-scattered", Dir::Down);
}

fn sparse_into_new(name: &str, dir: Dir) {
    let tmp = TempDir::new(name);
    let (s, d) = (tmp.join("src"), tmp.join("dst"));
    let size = 16 * MIB as u64;
    let f = File::create(&s).expect("create source");
    f.set_len(size).expect("size source");
    drop(f);
    let f = File::options().write(true).open(&s).expect("open source");
    for (at, seed) in [(MIB as u64, 31), (9 * MIB as u64 + 12345, 32)] {
        f.write_all_at(&random_bytes(100_000, seed), at)
            .expect("write source");
    }
    drop(f);
    let ends = transfer(dir, &s, &d, Some("1M"), &[]);
    assert_same(&s, &d);
    let data = read_file(&s);
    check_summaries(&ends, &expect(&data, &[], MIB, 0));
    assert_eq!(file_len(&d), size);
    let alloc = allocated_bytes(&d);
    assert!(
        alloc < size / 8,
        "the new destination is not sparse: {alloc} bytes allocated of {size}"
    );
}

/// A sparse source's holes are not read, and clear the destination's data.
fn holes_over_data(name: &str, dir: Dir) {
    let tmp = TempDir::new(name);
    let (s, d) = (tmp.join("src"), tmp.join("dst"));
    let size = 64 * MIB as u64;
    let f = File::create(&s).expect("create source");
    f.set_len(size).expect("size source");
    f.write_all_at(&random_bytes(100_000, 41), 20 * MIB as u64)
        .expect("write source");
    drop(f);
    write_file(&d, &random_bytes(size as usize, 42));
    let ends = transfer(dir, &s, &d, Some("1M"), &[]);
    assert_same(&s, &d);
    let read = summary(&ends.source).read;
    assert!(read <= (2 * MIB) as f64, "holes were read: {read} bytes");
}

#[test]
fn upload_holes_are_not_read_and_clear_data() {
    holes_over_data("up-holes", Dir::Up);
}

#[test]
fn download_holes_are_not_read_and_clear_data() {
    holes_over_data("down-holes", Dir::Down);
}

#[test]
fn upload_sparse_source_into_new_destination() {
    sparse_into_new("up-sparse", Dir::Up);
}

#[test]
fn download_sparse_source_into_new_destination() {
    sparse_into_new("down-sparse", Dir::Down);
}

fn empty_source(name: &str, dir: Dir) {
    let tmp = TempDir::new(name);
    let (s, d) = (tmp.join("src"), tmp.join("dst"));
    write_file(&s, &[]);
    write_file(&d, &random_bytes(300_000, 4));
    let ends = transfer(dir, &s, &d, Some("64K"), &[]);
    assert_eq!(file_len(&d), 0, "the destination was not truncated");
    check_summaries(&ends, &Expect::default());
}

#[test]
fn upload_empty_source_truncates() {
    empty_source("up-empty", Dir::Up);
}

#[test]
fn download_empty_source_truncates() {
    empty_source("down-empty", Dir::Down);
}

fn grow(name: &str, dir: Dir) {
    let (src, dst) = make_pair(2 * MIB + 1000, 5);
    sync_and_check(name, dir, &src, Some(&dst[..700_000]), 64 << 10, &[]);
}

fn shrink(name: &str, dir: Dir) {
    let (src, mut dst) = make_pair(MIB + 1000, 6);
    dst.extend_from_slice(&random_bytes(MIB + 3, 7));
    let tmp = TempDir::new(name);
    let (s, d) = (tmp.join("src"), tmp.join("dst"));
    write_file(&s, &src);
    write_file(&d, &dst);
    let ends = transfer(dir, &s, &d, Some("64K"), &[]);
    assert_same(&s, &d);
    check_summaries(&ends, &expect(&src, &dst[..src.len()], 64 << 10, 0));
}

#[test]
fn upload_grows_destination() {
    grow("up-grow", Dir::Up);
}

#[test]
fn download_grows_destination() {
    grow("down-grow", Dir::Down);
}

#[test]
fn upload_shrinks_destination() {
    shrink("up-shrink", Dir::Up);
}

#[test]
fn download_shrinks_destination() {
    shrink("down-shrink", Dir::Down);
}

// ------------------------------------------------ the 4 KiB change grain ---

/// `dst` is `src` with these 4 KiB pages replaced by other data.
fn with_pages_changed(src: &[u8], pages: impl IntoIterator<Item = usize>, seed: u64) -> Vec<u8> {
    let mut dst = src.to_vec();
    let mut rng = fastrand::Rng::with_seed(seed);
    for p in pages {
        let end = ((p + 1) * PAGE).min(dst.len());
        rng.fill(&mut dst[p * PAGE..end]);
    }
    dst
}

/// 5 % of the pages of 4 MiB changed uniformly at random, some of them to
/// zeros at the source, a short last block; only those pages travel, both
/// ways, with `-w` lanes.
fn scattered_pages(name: &str, dir: Dir, w: &str) {
    let len = 4 * MIB + 5000;
    let mut src = random_bytes(len, 40);
    let mut rng = fastrand::Rng::with_seed(41);
    let pages = len.div_ceil(PAGE);
    let picked: Vec<usize> = (0..pages).filter(|_| rng.u8(..100) < 5).collect();
    // Every fourth picked page became zeros at the source.
    for &p in picked.iter().step_by(4) {
        let end = ((p + 1) * PAGE).min(len);
        src[p * PAGE..end].fill(0);
    }
    let dst = with_pages_changed(&src, picked.iter().copied(), 42);
    let ends = sync_and_check(name, dir, &src, Some(&dst), MIB, &["-n", "-w", w]);
    let sent = summary(&ends.source).wire;
    let data_pages = picked.len() - picked.len().div_ceil(4);
    let floor = (data_pages * PAGE) as f64;
    assert!(
        sent >= floor && sent < floor * 1.03 + 4096.0,
        "{} data pages changed, {sent} bytes of block data sent: {}",
        data_pages,
        summary(&ends.source).line
    );
}

#[test]
fn upload_scattered_pages_send_only_those_pages() {
    scattered_pages("up-pages", Dir::Up, "1");
}

#[test]
fn download_scattered_pages_send_only_those_pages() {
    scattered_pages("down-pages", Dir::Down, "1");
}

#[test]
fn upload_scattered_pages_four_lanes() {
    scattered_pages("up-pages-w4", Dir::Up, "4");
}

#[test]
fn download_scattered_pages_four_lanes() {
    scattered_pages("down-pages-w4", Dir::Down, "4");
}

/// Changes in runs, as a file system makes them: a few long runs of pages
/// and a zeroed stretch, with the default block size.
fn clustered(name: &str, dir: Dir) {
    let len = 24 * MIB + 12345;
    let src = random_bytes(len, 43);
    let runs = [(3, 40), (700, 3), (2600, 300), (5000, 1)];
    let mut dst = with_pages_changed(&src, runs.iter().flat_map(|&(p, n)| p..p + n), 44);
    let mut src = src;
    src[4000 * PAGE..4100 * PAGE].fill(0);
    dst[4000 * PAGE..4100 * PAGE].fill(1);
    sync_and_check(name, dir, &src, Some(&dst), 10 * MIB, &[]);
}

#[test]
fn upload_clustered_changes() {
    clustered("up-clustered", Dir::Up);
}

#[test]
fn download_clustered_changes() {
    clustered("down-clustered", Dir::Down);
}

/// A 10 MiB block with one changed sector sends about 4 KiB, not the
/// 64 KiB it did when the grain was 64 KiB (SPEC: "Behaviour the user
/// relies on").
fn one_sector(name: &str, dir: Dir) {
    let src = random_bytes(20 * MIB, 45);
    let mut dst = src.clone();
    let at = 10 * MIB + 3 * MIB + 512 * 7;
    dst[at..at + 512].copy_from_slice(&random_bytes(512, 46));
    let ends = sync_and_check(name, dir, &src, Some(&dst), 10 * MIB, &[]);
    let s = summary(&ends.source);
    assert!(
        s.wire <= 5000.0,
        "one changed sector: {} bytes of block data, want about 4 KiB: {}",
        s.wire,
        s.line
    );
    let d = summary(&ends.dest);
    assert!(about(d.written, PAGE as u64), "{}", d.line);
    // Range digests of 20 MiB, and one range's page digests.
    assert!(
        d.digests <= src.len() as f64 * 0.001,
        "{} bytes of digests for {} bytes: {}",
        d.digests,
        src.len(),
        d.line
    );
}

#[test]
fn upload_one_changed_sector_sends_about_4_kib() {
    one_sector("up-sector", Dir::Up);
}

#[test]
fn download_one_changed_sector_sends_about_4_kib() {
    one_sector("down-sector", Dir::Down);
}

fn unaligned(name: &str, dir: Dir) {
    // The last block is partial, and it differs.
    let (src, mut dst) = make_pair(777_777, 8);
    let n = dst.len();
    dst[n - 3] ^= 0x55;
    sync_and_check(name, dir, &src, Some(&dst), 64 << 10, &[]);
}

#[test]
fn upload_size_not_a_multiple_of_the_block_size() {
    unaligned("up-unaligned", Dir::Up);
}

#[test]
fn download_size_not_a_multiple_of_the_block_size() {
    unaligned("down-unaligned", Dir::Down);
}

fn lanes(name: &str, dir: Dir, w: &str) {
    let (src, dst) = make_pair(3 * MIB + 77, 9);
    let ends = sync_and_check(name, dir, &src, Some(&dst), 64 << 10, &["-w", w]);
    // Issue 15, item 7: singular and plural right.
    let lanes = if w == "1" {
        "1 lane".to_string()
    } else {
        format!("{w} lanes")
    };
    assert_eq!(
        lines_with(&ends.client, &[&lanes]).len(),
        1,
        "{}",
        ends.client
    );
    assert_eq!(
        lines_with(&ends.server, &[&lanes]).len(),
        1,
        "{}",
        ends.server
    );
}

#[test]
fn upload_one_lane() {
    lanes("up-w1", Dir::Up, "1");
}

#[test]
fn upload_four_lanes() {
    lanes("up-w4", Dir::Up, "4");
}

#[test]
fn download_one_lane() {
    lanes("down-w1", Dir::Down, "1");
}

#[test]
fn download_four_lanes() {
    lanes("down-w4", Dir::Down, "4");
}

fn skip_blocks(name: &str, dir: Dir) {
    let tmp = TempDir::new(name);
    let (s, d) = (tmp.join("src"), tmp.join("dst"));
    let bs = 64 << 10;
    let src = random_bytes(MIB + 500, 10);
    let old = random_bytes(MIB + 500, 11);
    write_file(&s, &src);
    write_file(&d, &old);
    let ends = transfer(dir, &s, &d, Some("64K"), &["-s", "5"]);
    let now = read_file(&d);
    assert_eq!(now.len(), src.len());
    assert!(
        now[..5 * bs] == old[..5 * bs],
        "-s 5: the skipped blocks were touched"
    );
    assert!(now[5 * bs..] == src[5 * bs..], "-s 5: the rest differs");
    check_summaries(&ends, &expect(&src, &old, bs, 5));
    // Issue 15, item 7, and issue 18, item 1: both summaries say what -s
    // left out, and that it was not verified; the verification line names
    // the blocks it covers.
    for end in [&ends.client, &ends.server] {
        assert!(
            summary(end)
                .line
                .contains("; blocks before 5 skipped (-s 5), not verified"),
            "{end}"
        );
        let v = lines_with(end, &["verification digest"]).join("\n");
        assert!(
            v.contains("over blocks 5 to 16 (blocks before 5 skipped by -s, not verified)"),
            "{end}"
        );
    }
}

#[test]
fn upload_skip_leaves_first_blocks_alone() {
    skip_blocks("up-skip", Dir::Up);
}

#[test]
fn download_skip_leaves_first_blocks_alone() {
    skip_blocks("down-skip", Dir::Down);
}

/// Sizes and block sizes that do not line up with anything.
fn odd_block(name: &str, dir: Dir, len: usize, bs: usize) {
    let (src, dst) = make_pair(len, 12);
    sync_and_check(name, dir, &src, Some(&dst), bs, &[]);
}

#[test]
fn upload_block_size_one() {
    odd_block("up-b1", Dir::Up, 2000, 1);
}

#[test]
fn download_block_size_one() {
    odd_block("down-b1", Dir::Down, 2000, 1);
}

#[test]
fn upload_block_size_4095() {
    odd_block("up-b4095", Dir::Up, 300_001, 4095);
}

#[test]
fn download_block_size_4095() {
    odd_block("down-b4095", Dir::Down, 300_001, 4095);
}

#[test]
fn upload_block_size_100k() {
    odd_block("up-b100k", Dir::Up, MIB + 7, 100 << 10);
}

#[test]
fn download_block_size_100k() {
    odd_block("down-b100k", Dir::Down, MIB + 7, 100 << 10);
}

#[test]
fn upload_block_larger_than_file() {
    odd_block("up-bbig", Dir::Up, 300 << 10, MIB);
}

#[test]
fn download_block_larger_than_file() {
    odd_block("down-bbig", Dir::Down, 300 << 10, MIB);
}

#[test]
fn download_source_block_size_wins() {
    let tmp = TempDir::new("down-bs-wins");
    let (s, d) = (tmp.join("src"), tmp.join("dst"));
    let (src, dst) = make_pair(MIB, 13);
    write_file(&s, &src);
    write_file(&d, &dst);
    // A client's -b would have no effect: it is refused (issue 15, item 8).
    let out = run(bsync().args(["-d", "-f", arg(&d), "-r", "127.0.0.1:9", "-b", "1M"]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let ends = transfer(Dir::Down, &s, &d, Some("64K"), &[]);
    assert_same(&s, &d);
    assert_eq!(
        lines_with(&ends.client, &["connected to", "in blocks of 64.0 KiB"]).len(),
        1,
        "the client did not adopt the server's block size:\n{}",
        ends.client
    );
    check_summaries(&ends, &expect(&src, &dst, 64 << 10, 0));
}

// ----------------------------------------------------------- compression ---

/// Text-like data: numbered lines of words from a small vocabulary.
fn text(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "block",
        "device",
        "sync",
        "digest",
        "zero",
        "sparse",
        "lane",
        "server",
        "client",
        "source",
        "target",
        "write",
        "read",
        "frame",
        "window",
        "acknowledge",
    ];
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = Vec::with_capacity(len + 128);
    let mut n = 0u64;
    while out.len() < len {
        n += 1;
        out.extend_from_slice(format!("{n:08} ").as_bytes());
        for _ in 0..rng.usize(4..12) {
            out.extend_from_slice(WORDS[rng.usize(..WORDS.len())].as_bytes());
            out.push(b' ');
        }
        out.push(b'\n');
    }
    out.truncate(len);
    out
}

/// A full copy of compressible data with `flags`; returns the client's wire
/// bytes over the file size.
fn wire_ratio(name: &str, dir: Dir, flags: &[&str]) -> f64 {
    let data = text(4 * MIB, 14);
    let ends = sync_and_check(name, dir, &data, None, MIB, flags);
    let sum = summary(&ends.client);
    assert!(sum.wire > 0.0, "no wire bytes in {}", sum.line);
    sum.wire / data.len() as f64
}

fn compressed(name: &str, dir: Dir, level: &str) {
    let ratio = wire_ratio(name, dir, &["-L", level]);
    assert!(
        ratio < 0.5,
        "-L {level}: {ratio:.3} of the file went over the wire"
    );
}

#[test]
fn upload_level_fast_compresses() {
    compressed("up-fast", Dir::Up, "fast");
}

#[test]
fn upload_level_default_compresses() {
    compressed("up-default", Dir::Up, "default");
}

#[test]
fn upload_level_better_compresses() {
    compressed("up-better", Dir::Up, "better");
}

#[test]
fn upload_level_best_compresses() {
    compressed("up-best", Dir::Up, "best");
}

#[test]
fn download_level_default_compresses() {
    compressed("down-default", Dir::Down, "default");
}

#[test]
fn upload_no_compression_sends_everything() {
    let ratio = wire_ratio("up-n", Dir::Up, &["-n"]);
    assert!(
        (1.0..1.02).contains(&ratio),
        "-n: {ratio:.3} of the file went over the wire"
    );
}

#[test]
fn download_no_compression_sends_everything() {
    let ratio = wire_ratio("down-n", Dir::Down, &["-n"]);
    assert!(
        (1.0..1.02).contains(&ratio),
        "-n: {ratio:.3} of the file went over the wire"
    );
}

// ------------------------------------------------------------------ IPv6 ---

fn ipv6(name: &str, dir: Dir) {
    let tmp = TempDir::new(name);
    let (s, d) = (tmp.join("src"), tmp.join("dst"));
    let (src, dst) = make_pair(MIB + 99, 15);
    write_file(&s, &src);
    write_file(&d, &dst);
    match transfer_on("::1", dir, &s, &d, Some("64K"), &[]) {
        Ok(ends) => {
            assert_same(&s, &d);
            check_summaries(&ends, &expect(&src, &dst, 64 << 10, 0));
            assert!(ends.client.contains("[::1]:"), "{}", ends.client);
        }
        // Only a failure to listen means the host has no IPv6 loopback.
        Err(e) if e.contains("listen") => common::skip(&format!("cannot serve on ::1 here: {e}")),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn upload_ipv6() {
    ipv6("up-ipv6", Dir::Up);
}

#[test]
fn download_ipv6() {
    ipv6("down-ipv6", Dir::Down);
}

// ------------------------------------------------- wrong or hostile peers ---

/// A test's own connection to `addr`, with deadlines.
fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(IO_TIMEOUT)))
        .expect("read timeout");
    s.set_write_timeout(Some(Duration::from_secs(IO_TIMEOUT)))
        .expect("write timeout");
    s
}

/// Everything the peer sends until it closes (errors end it too).
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                assert_ne!(
                    e.kind(),
                    ErrorKind::WouldBlock,
                    "the server kept a bad connection open for {IO_TIMEOUT} s"
                );
                return got;
            }
        }
    }
}

/// A `Hello` frame, encoded by hand from the layout in `src/proto.rs`.
#[allow(clippy::too_many_arguments)]
/// Send `hello` (an encoded Hello frame) as a client would, with the proof
/// a client without a secret gives, and return the text of the Error frame
/// the server answers with (checking its tag, as a client does).
fn refused_by(addr: std::net::SocketAddr, hello: &[u8]) -> String {
    use bsync::auth::{Direction, Handshake};
    use bsync::net::Lane;
    use bsync::proto::{self, Frame};
    let stream = connect(addr);
    let mut lane = Lane::open(stream, "server".into(), Duration::from_secs(IO_TIMEOUT)).unwrap();
    let (nonce, flags) = match lane.reader.read("challenge").unwrap() {
        Frame::Challenge { nonce, flags } => (nonce, flags),
        other => panic!("want a Challenge first, got {other:?}"),
    };
    let Ok(Some((Frame::Hello(h), _))) = proto::decode(hello, 4096) else {
        panic!("not a Hello")
    };
    let mut out = hello.to_vec();
    let hs = Handshake::new(None, &nonce, flags, &h);
    if h.flags == flags {
        let (check, tag) = hs.proof(Direction::Up);
        proto::encode(&Frame::Proof { check, tag }, &mut out);
    }
    lane.sender.send(&mut out).unwrap();
    if h.flags == flags {
        match lane.reader.read("proof").unwrap() {
            Frame::Proof { check, tag } => hs.verify(Direction::Down, &check, &tag).unwrap(),
            other => panic!("want a Proof, got {other:?}"),
        }
        lane.protect(hs.cipher(Direction::Up), hs.cipher(Direction::Down));
    }
    match lane.reader.read("refusal") {
        Ok(Frame::Error(why)) => why.to_string(),
        other => panic!("want an Error frame, got {other:?}"),
    }
}

fn hello_frame(
    lane: u16,
    lanes: u16,
    download: bool,
    block_size: u32,
    source_size: u64,
    compression: u8,
    flags: u8,
) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&0x1234_5678_9abc_def0_u128.to_le_bytes());
    p.extend_from_slice(&lane.to_le_bytes());
    p.extend_from_slice(&lanes.to_le_bytes());
    p.push(u8::from(download));
    p.extend_from_slice(&block_size.to_le_bytes());
    p.extend_from_slice(&0u64.to_le_bytes());
    p.extend_from_slice(&source_size.to_le_bytes());
    p.push(compression);
    p.push(flags);
    p.extend_from_slice(&[0x5a; 16]);
    let mut f = vec![1u8];
    f.extend_from_slice(&(p.len() as u32).to_le_bytes());
    f.extend_from_slice(&p);
    f
}

/// A real upload client against `server`; must succeed.
fn real_upload(server: Server, src: &Path, dst: &Path) {
    let client = Proc::start(&["-f", arg(src), "-r", &server.addr(), "-b", "64K"]).expect_status(0);
    let srv = server.proc.expect_status(0);
    assert_eq!(verify_digest(&client), verify_digest(&srv));
    assert_same(src, dst);
}

#[test]
fn server_rejects_other_protocol_version_and_stays_up() {
    let tmp = TempDir::new("fake-client-version");
    let (s, d) = (tmp.join("src"), tmp.join("dst"));
    write_file(&s, &random_bytes(300_000, 16));
    write_file(&d, &random_bytes(200_000, 17));
    let mut server = Server::start(&["-f", arg(&d)]);
    let mut fake = connect(server.socket_addr());
    fake.write_all(b"BSYNC ver0.01\n").expect("send preamble");
    let mut theirs = [0u8; 14];
    fake.read_exact(&mut theirs)
        .expect("read the server's preamble");
    assert_eq!(&theirs, PREAMBLE, "{:?}", String::from_utf8_lossy(&theirs));
    // The server's Challenge went with its preamble, before the client's
    // arrived (it costs no wait); nothing after it.
    let rest = read_to_close(&mut fake);
    assert!(
        rest.len() == 5 + 17 && rest[0] == 9,
        "the server sent more than its Challenge: {rest:?}"
    );
    let err = server
        .proc
        .wait_stderr(Duration::from_secs(10), |e| e.contains("ver0.01"));
    assert_eq!(
        lines_with(&err, &["ver0.01", "ver0.02"]).len(),
        1,
        "want one line naming both versions:\n{err}"
    );
    assert!(server.proc.is_running(), "the server gave up:\n{err}");
    real_upload(server, &s, &d);
}

/// A test listener that plays a server: it answers each connection with
/// `reply` (after reading the client's preamble) and holds it open until the
/// client closes. Returns the port and the preambles the clients sent.
fn fake_server(reply: &'static [u8]) -> (u16, Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(IO_TIMEOUT * 2)));
        if !reply.is_empty() {
            let _ = s.write_all(reply);
        }
        let mut theirs = [0u8; 14];
        let _ = s.read_exact(&mut theirs);
        let _ = tx.send(theirs.to_vec());
        let _ = read_to_close(&mut s);
    });
    (port, rx)
}

#[test]
fn client_rejects_other_protocol_version() {
    let tmp = TempDir::new("fake-server-version");
    let s = tmp.join("src");
    write_file(&s, &random_bytes(100_000, 18));
    let (port, theirs) = fake_server(b"BSYNC ver0.01\n");
    let addr = format!("127.0.0.1:{port}");
    let err = Proc::start(&["-f", arg(&s), "-r", &addr]).expect_status(1);
    let line = error_line(&err);
    assert!(
        line.contains("ver0.01") && line.contains("ver0.02"),
        "want both versions named: {line}"
    );
    assert!(!err.contains("done:"), "{err}");
    let sent = theirs
        .recv_timeout(Duration::from_secs(5))
        .expect("the client sent no preamble");
    assert_eq!(sent, PREAMBLE);
}

#[test]
fn client_rejects_a_non_bsync_server() {
    let tmp = TempDir::new("fake-server-http");
    let d = tmp.join("dst");
    let (port, _) = fake_server(b"HTTP/1.1 400 Bad Request\r\n\r\n");
    let addr = format!("127.0.0.1:{port}");
    let err = Proc::start(&["-d", "-f", arg(&d), "-r", &addr]).expect_status(1);
    let line = error_line(&err);
    assert!(line.contains("not a bsync peer"), "{line}");
    assert!(!d.exists(), "the destination was created");
}

#[test]
fn client_times_out_on_a_silent_server() {
    let (port, _) = fake_server(b"");
    let tmp = TempDir::new("fake-server-silent");
    let s = tmp.join("src");
    write_file(&s, &random_bytes(10_000, 19));
    let addr = format!("127.0.0.1:{port}");
    let start = Instant::now();
    let client = Proc::start_env(&["-f", arg(&s), "-r", &addr], &[("BSYNC_IO_TIMEOUT", "2")]);
    let err = client.expect_status(1);
    let took = start.elapsed();
    let line = error_line(&err);
    assert!(line.contains("127.0.0.1"), "the line names no peer: {line}");
    assert!(
        took < Duration::from_secs(8),
        "a 2 s deadline took {took:?}: {line}"
    );
}

#[test]
fn client_connection_refused() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let tmp = TempDir::new("refused");
    let s = tmp.join("src");
    write_file(&s, &random_bytes(10_000, 21));
    let addr = format!("127.0.0.1:{port}");
    let err = Proc::start(&["-f", arg(&s), "-r", &addr]).expect_status(1);
    let line = error_line(&err);
    assert!(line.contains(&addr), "the line names no peer: {line}");
}

#[test]
fn server_survives_garbage_and_serves_the_next_client() {
    let tmp = TempDir::new("garbage");
    let (s, d) = (tmp.join("src"), tmp.join("dst"));
    write_file(&s, &random_bytes(500_000, 22));
    let old = random_bytes(400_000, 23);
    write_file(&d, &old);
    let before = age(&d);
    let mut server = Server::start(&["-f", arg(&d)]);
    let addr = server.socket_addr();

    // Random bytes instead of a preamble.
    let mut c = connect(addr);
    let _ = c.write_all(&random_bytes(4096, 24));
    let _ = read_to_close(&mut c);
    // Nothing at all.
    drop(connect(addr));
    // A preamble, then random frames.
    let mut c = connect(addr);
    let _ = c.write_all(PREAMBLE);
    let _ = c.write_all(&random_bytes(4096, 25));
    let _ = read_to_close(&mut c);
    // A frame header announcing 4 GiB.
    let mut c = connect(addr);
    let _ = c.write_all(PREAMBLE);
    let _ = c.write_all(&[1, 0xff, 0xff, 0xff, 0xff]);
    let _ = read_to_close(&mut c);
    // A truncated Hello, then close.
    let mut c = connect(addr);
    let _ = c.write_all(PREAMBLE);
    let _ = c.write_all(&[1, 10, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    let _ = read_to_close(&mut c);
    let dropped = 5;
    // Well-formed Hellos the server must refuse, each with an Error frame
    // after its Challenge: a lane of no session, zero lanes, a zero block
    // size, an unknown compression, a token this server does not have.
    let refusals = [
        hello_frame(3, 4, false, 65536, 500_000, 2, 0),
        hello_frame(0, 0, false, 65536, 500_000, 2, 0),
        hello_frame(0, 1, false, 0, 500_000, 2, 0),
        hello_frame(0, 1, false, 65536, 500_000, 9, 0),
        hello_frame(0, 1, false, 65536, 500_000, 2, 1),
    ];
    for hello in &refusals {
        let why = refused_by(addr, hello);
        assert!(!why.is_empty(), "want a reason in the Error frame");
    }
    let want = dropped + refusals.len();
    let err = server.proc.wait_stderr(Duration::from_secs(10), |e| {
        lines_with(e, &["dropped"]).len() + lines_with(e, &["refused"]).len() >= want
    });
    assert_eq!(
        lines_with(&err, &["dropped"]).len() + lines_with(&err, &["refused"]).len(),
        want,
        "want one line per bad connection:\n{err}"
    );
    assert!(server.proc.is_running(), "the server gave up:\n{err}");
    assert_eq!(read_file(&d), old, "garbage changed the destination");
    assert_eq!(mtime(&d), before, "garbage touched the destination");
    // A silent connection stays open and must not stall the real client.
    let silent = connect(addr);
    real_upload(server, &s, &d);
    drop(silent);
}

#[test]
fn upload_server_refuses_download_client() {
    let tmp = TempDir::new("wrong-mode-up");
    let (s, d) = (tmp.join("src"), tmp.join("dst"));
    write_file(&s, &random_bytes(300_000, 26));
    let old = random_bytes(300_000, 27);
    write_file(&d, &old);
    let before = age(&d);
    let mut server = Server::start(&["-f", arg(&d)]);
    let other = tmp.join("other");
    let err = Proc::start(&["-d", "-f", arg(&other), "-r", &server.addr()]).expect_status(1);
    let line = error_line(&err);
    assert!(
        line.contains("-d") && line.contains("upload"),
        "not a clear line: {line}"
    );
    assert!(!other.exists(), "the wrong client created its file");
    assert!(server.proc.is_running(), "{}", server.proc.stderr());
    assert_eq!(read_file(&d), old);
    assert_eq!(
        mtime(&d),
        before,
        "a refused client touched the destination"
    );
    real_upload(server, &s, &d);
}

#[test]
fn download_server_refuses_upload_client() {
    let tmp = TempDir::new("wrong-mode-down");
    let (s, d) = (tmp.join("src"), tmp.join("dst"));
    write_file(&s, &random_bytes(300_000, 28));
    let mine = random_bytes(200_000, 29);
    write_file(&d, &mine);
    let mut server = Server::start(&["-d", "-f", arg(&s)]);
    // The mistaken client means to download into d but forgot -d.
    let err = Proc::start(&["-f", arg(&d), "-r", &server.addr()]).expect_status(1);
    let line = error_line(&err);
    assert!(line.contains("-d"), "not a clear line: {line}");
    assert!(server.proc.is_running(), "{}", server.proc.stderr());
    assert_eq!(read_file(&d), mine);
    let client = Proc::start(&["-d", "-f", arg(&d), "-r", &server.addr()]).expect_status(0);
    let srv = server.proc.expect_status(0);
    assert_eq!(verify_digest(&client), verify_digest(&srv));
    assert_same(&s, &d);
}

// ------------------------------------------------------ failures mid-run ---

/// Start a slow transfer (level `best` on incompressible data), kill the
/// server once the client is connected, and check how the client ends.
fn server_killed(name: &str, dir: Dir) {
    let tmp = TempDir::new(name);
    let (s, d) = (tmp.join("src"), tmp.join("dst"));
    write_file(&s, &random_bytes(64 * MIB, 30));
    let (mut server, client_args) = match dir {
        Dir::Up => (Server::start(&["-f", arg(&d)]), vec!["-f", arg(&s)]),
        Dir::Down => (
            Server::start(&["-d", "-f", arg(&s), "-b", "1M"]),
            vec!["-d", "-f", arg(&d)],
        ),
    };
    let addr = server.addr();
    let mut args = client_args;
    args.extend(["-r", &addr, "-L", "best"]);
    if matches!(dir, Dir::Up) {
        // A downloading client takes the server's block size.
        args.extend(["-b", "1M"]);
    }
    let mut client = Proc::start(&args);
    client.wait_stderr(Duration::from_secs(10), |e| e.contains("connected to"));
    server.proc.kill();
    let killed = Instant::now();
    let err = client.expect_status(1);
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(IO_TIMEOUT + 5),
        "the client took {took:?} to notice"
    );
    assert!(!err.contains("done:"), "a summary after failure:\n{err}");
    assert!(!err.contains("both ends agree"), "{err}");
    let line = error_line(&err);
    assert!(line.contains("127.0.0.1"), "the line names no peer: {line}");
}

#[test]
fn upload_server_killed_mid_run() {
    server_killed("up-killed", Dir::Up);
}

#[test]
fn download_server_killed_mid_run() {
    server_killed("down-killed", Dir::Down);
}

#[test]
fn upload_client_killed_mid_run() {
    let tmp = TempDir::new("client-killed");
    let (s, d) = (tmp.join("src"), tmp.join("dst"));
    write_file(&s, &random_bytes(64 * MIB, 31));
    let mut server = Server::start(&["-f", arg(&d)]);
    let addr = server.addr();
    let mut client = Proc::start(&["-f", arg(&s), "-r", &addr, "-b", "1M", "-L", "best"]);
    server
        .proc
        .wait_stderr(Duration::from_secs(10), |e| e.contains("session from"));
    client.kill();
    let killed = Instant::now();
    let err = server.proc.expect_status(1);
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(IO_TIMEOUT + 5),
        "the server took {took:?} to notice"
    );
    assert!(!err.contains("done:"), "a summary after failure:\n{err}");
    error_line(&err);
}

/// What a relay does to its first connection, at this many bytes in this
/// direction.
#[derive(Clone, Copy)]
enum Cut {
    /// Forward everything.
    Never,
    /// Cut after `n` bytes from the client.
    ClientBytes(u64),
    /// Cut after `n` bytes from the server.
    ServerBytes(u64),
    /// Flip the bits of byte `n` from the client (counting from 0).
    FlipClientByte(u64),
    /// Flip the bits of byte `n` from the server.
    FlipServerByte(u64),
}

/// What a relay saw: connections, and every byte it forwarded either way.
#[derive(Default)]
struct Wire {
    connections: usize,
    bytes: Vec<u8>,
}

/// A TCP relay on 127.0.0.1 to `target` that treats its first connection as
/// `cut` says and forwards later ones whole. Returns the relay's port and
/// what it saw.
fn relay(target: SocketAddr, cut: Cut) -> (u16, Arc<Mutex<Wire>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
    let port = listener.local_addr().expect("relay address").port();
    let seen = Arc::new(Mutex::new(Wire::default()));
    let wire = Arc::clone(&seen);
    // The thread outlives the test's use of it, blocked in accept; the test
    // binary's exit ends it.
    thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(client) = conn else { continue };
            wire.lock().unwrap_or_else(|e| e.into_inner()).connections += 1;
            let Ok(server) = TcpStream::connect(target) else {
                continue;
            };
            let whole = Tamper::default();
            let (up, down) = match (n, cut) {
                (0, Cut::ClientBytes(b)) => (Tamper::cut(b), whole),
                (0, Cut::ServerBytes(b)) => (whole, Tamper::cut(b)),
                (0, Cut::FlipClientByte(b)) => (Tamper::flip(b), whole),
                (0, Cut::FlipServerByte(b)) => (whole, Tamper::flip(b)),
                _ => (whole, whole),
            };
            let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                (Ok(c), Ok(s)) => (c, s),
                _ => continue,
            };
            let (w1, w2) = (Arc::clone(&wire), Arc::clone(&wire));
            thread::spawn(move || pipe(client, server, up, &w1));
            thread::spawn(move || pipe(s2, c2, down, &w2));
        }
    });
    (port, seen)
}

/// What a pipe does to one direction of a connection.
#[derive(Clone, Copy, Default)]
struct Tamper {
    /// Cut both sockets after this many bytes.
    limit: Option<u64>,
    /// Flip the bits of the byte at this offset.
    flip: Option<u64>,
}

impl Tamper {
    fn cut(n: u64) -> Tamper {
        Tamper {
            limit: Some(n),
            flip: None,
        }
    }

    fn flip(n: u64) -> Tamper {
        Tamper {
            limit: None,
            flip: Some(n),
        }
    }
}

/// Copy `from` to `to` as `tamper` says, recording what passes in `wire`.
fn pipe(mut from: TcpStream, mut to: TcpStream, tamper: Tamper, wire: &Mutex<Wire>) {
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    let limit = tamper.limit;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
        };
        let take = limit.map_or(n, |l| n.min((l - total) as usize));
        if let Some(at) = tamper
            .flip
            .filter(|&at| (total..total + take as u64).contains(&at))
        {
            buf[(at - total) as usize] ^= 0xff;
        }
        wire.lock()
            .unwrap_or_else(|e| e.into_inner())
            .bytes
            .extend_from_slice(&buf[..take]);
        if to.write_all(&buf[..take]).is_err() {
            let _ = from.shutdown(Shutdown::Both);
            return;
        }
        total += take as u64;
        if limit == Some(total) {
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// An 8 MiB transfer into a new destination through a relay cutting as
/// `cut` says; returns how many connections the relay saw.
fn through_relay(name: &str, dir: Dir, cut: Cut, client: &[&str]) -> usize {
    let tmp = TempDir::new(name);
    let (s, d) = (tmp.join("src"), tmp.join("dst"));
    write_file(&s, &random_bytes(8 * MIB, 32));
    let (server, mut args) = match dir {
        Dir::Up => (
            Server::start(&["-f", arg(&d)]),
            vec!["-f", arg(&s), "-b", "256K"],
        ),
        Dir::Down => (
            Server::start(&["-d", "-f", arg(&s), "-b", "256K"]),
            vec!["-d", "-f", arg(&d)],
        ),
    };
    let (port, seen) = relay(server.socket_addr(), cut);
    let addr = format!("127.0.0.1:{port}");
    args.extend(["-r", &addr, "-n"]);
    args.extend(client);
    let client = Proc::start(&args).expect_status(0);
    let srv = server.proc.expect_status(0);
    assert_eq!(verify_digest(&client), verify_digest(&srv));
    assert_same(&s, &d);
    seen.lock().unwrap_or_else(|e| e.into_inner()).connections
}

#[test]
fn relay_forwards_whole_sessions() {
    // The relay itself must be sound for the cut tests below to mean much.
    assert_eq!(through_relay("relay-up", Dir::Up, Cut::Never, &[]), 1);
    assert_eq!(
        through_relay("relay-down", Dir::Down, Cut::Never, &["-w", "3"]),
        3
    );
}

#[test]
fn upload_survives_a_cut_connection() {
    let n = through_relay("relay-cut-up", Dir::Up, Cut::ClientBytes(MIB as u64), &[]);
    assert!(n >= 2, "the client did not reconnect ({n} connection)");
}

#[test]
fn download_survives_a_cut_connection() {
    let n = through_relay(
        "relay-cut-down",
        Dir::Down,
        Cut::ServerBytes(MIB as u64),
        &[],
    );
    assert!(n >= 2, "the client did not reconnect ({n} connection)");
}

#[test]
fn upload_with_four_lanes_survives_a_cut_connection() {
    let n = through_relay(
        "relay-cut-w4",
        Dir::Up,
        Cut::ClientBytes(MIB as u64 / 2),
        &["-w", "4"],
    );
    assert!(n >= 5, "the client did not reconnect ({n} connections)");
}

/// Issue 15, item 4: an upload server checks its destination before it
/// listens (it used to fail only once a client had connected), without
/// creating anything.
#[test]
fn an_upload_server_checks_its_destination_at_start() {
    let tmp = TempDir::new("bad-dest");
    let d = tmp.join("no-such-dir").join("dst");
    let err = match Server::try_start("127.0.0.1", &["-f", arg(&d)]) {
        Ok(_) => panic!("the server listened with an impossible destination"),
        Err(e) => e,
    };
    assert!(err.contains("exit status: 1"), "{err}");
    assert!(err.contains("no-such-dir: No such file"), "{err}");
    assert!(!tmp.join("no-such-dir").exists());
}

/// Regression guard: once a session has all its lanes the server stopped
/// answering new connections, so a second client hung until the session
/// ended and then saw a misleading "connection closed".
#[test]
fn second_client_during_a_session_is_refused() {
    let tmp = TempDir::new("busy");
    let (s, d) = (tmp.join("src"), tmp.join("dst"));
    write_file(&s, &random_bytes(64 * MIB, 34));
    let mut server = Server::start(&["-f", arg(&d)]);
    let addr = server.addr();
    let first = Proc::start(&["-f", arg(&s), "-r", &addr, "-b", "1M", "-L", "best"]);
    server
        .proc
        .wait_stderr(Duration::from_secs(10), |e| e.contains("session from"));
    let start = Instant::now();
    let err = Proc::start(&["-f", arg(&s), "-r", &addr]).expect_status(1);
    let took = start.elapsed();
    let line = error_line(&err);
    assert!(line.contains("busy"), "not a clear line: {line}");
    assert!(took < Duration::from_secs(5), "refused only after {took:?}");
    first.expect_status(0);
    server.proc.expect_status(0);
    assert_same(&s, &d);
}

// ---------------------------------------------- keys, tokens, sealed wire ---

/// The shared key of these tests, and a different one.
const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const OTHER_KEY: &str = "f0e0d0c0b0a090807060504030201000f0e0d0c0b0a090807060504030201000";

/// A session with `-K` (the server reads it from stdin, as over SSH) in
/// `dir` with `w` lanes through a relay doing `cut`; both ends must succeed.
/// Returns what the relay saw.
fn keyed(dir: Dir, src: &Path, dst: &Path, cut: Cut, client: &[&str]) -> Wire {
    let (server_args, mut args) = keyed_args(dir, src, dst, "-");
    let server = Server::start_with(&server_args, &format!("{KEY}\n"));
    let (port, wire) = relay(server.socket_addr(), cut);
    let addr = format!("127.0.0.1:{port}");
    args.extend(["-r", &addr]);
    args.extend(client);
    let client = Proc::start(&args).expect_status(0);
    let srv = server.proc.expect_status(0);
    assert_eq!(verify_digest(&client), verify_digest(&srv));
    assert_same(src, dst);
    std::mem::take(&mut *wire.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Server and client arguments of a keyed session in `dir` with 256 KiB
/// blocks; the server's key is `server_key` (`-` reads it from stdin), the
/// client's [`KEY`].
fn keyed_args<'a>(
    dir: Dir,
    src: &'a Path,
    dst: &'a Path,
    server_key: &'a str,
) -> (Vec<&'a str>, Vec<&'a str>) {
    let mut server = vec!["-K", server_key];
    let mut client = vec!["-K", KEY];
    match dir {
        Dir::Up => {
            server.extend(["-f", arg(dst)]);
            client.extend(["-f", arg(src), "-b", "256K"]);
        }
        Dir::Down => {
            server.extend(["-d", "-f", arg(src), "-b", "256K"]);
            client.extend(["-d", "-f", arg(dst)]);
        }
    }
    (server, client)
}

/// Source data that is easy to find on the wire: a marker between random
/// runs, so that compression (off here anyway) cannot hide it.
fn marked(len: usize) -> Vec<u8> {
    let mut data = random_bytes(len, 40);
    for chunk in data.chunks_mut(64 << 10) {
        let n = MARKER.len().min(chunk.len());
        chunk[..n].copy_from_slice(&MARKER[..n]);
    }
    data
}

const MARKER: &[u8] = b"--bsync-plaintext-marker--";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn encrypted_sessions_both_ways_one_and_four_lanes() {
    for (dir, w) in [
        (Dir::Up, "1"),
        (Dir::Up, "4"),
        (Dir::Down, "1"),
        (Dir::Down, "4"),
    ] {
        let tmp = TempDir::new(&format!("keyed-{dir:?}-{w}"));
        let (s, d) = (tmp.join("src"), tmp.join("dst"));
        let (src, dst) = make_pair(3 * MIB + 1234, 41);
        write_file(&s, &src);
        write_file(&d, &dst);
        keyed(dir, &s, &d, Cut::Never, &["-w", w]);
    }
}

#[test]
fn encrypted_sessions_survive_a_cut_connection() {
    // The lane comes back with fresh nonces and a fresh connection key.
    for (dir, cut) in [
        (Dir::Up, Cut::ClientBytes(MIB as u64)),
        (Dir::Down, Cut::ServerBytes(MIB as u64)),
    ] {
        let tmp = TempDir::new(&format!("keyed-cut-{dir:?}"));
        let (s, d) = (tmp.join("src"), tmp.join("dst"));
        write_file(&s, &random_bytes(4 * MIB, 46));
        let wire = keyed(dir, &s, &d, cut, &["-n", "-w", "2"]);
        assert!(wire.connections >= 3, "{dir:?}: no reconnect");
    }
}

#[test]
fn the_sealed_wire_never_shows_the_data() {
    for dir in [Dir::Up, Dir::Down] {
        let tmp = TempDir::new(&format!("sealed-{dir:?}"));
        let (s, d) = (tmp.join("src"), tmp.join("dst"));
        write_file(&s, &marked(2 * MIB));
        let wire = keyed(dir, &s, &d, Cut::Never, &["-n"]).bytes;
        assert!(
            wire.len() > 2 * MIB,
            "the relay saw only {} bytes",
            wire.len()
        );
        assert!(!contains(&wire, MARKER), "{dir:?}: plaintext on the wire");
        // The same session without a key shows it: the check can fail.
        std::fs::remove_file(&d).expect("remove destination");
        let (server, mut args) = match dir {
            Dir::Up => (Server::start(&["-f", arg(&d)]), vec!["-f", arg(&s)]),
            Dir::Down => (
                Server::start(&["-d", "-f", arg(&s)]),
                vec!["-d", "-f", arg(&d)],
            ),
        };
        let (port, wire) = relay(server.socket_addr(), Cut::Never);
        let addr = format!("127.0.0.1:{port}");
        args.extend(["-r", &addr, "-n"]);
        Proc::start(&args).expect_status(0);
        server.proc.expect_status(0);
        let wire = wire.lock().unwrap_or_else(|e| e.into_inner());
        assert!(contains(&wire.bytes, MARKER), "{dir:?}: control run");
    }
}

#[test]
fn a_flipped_byte_fails_the_session_and_a_rerun_repairs() {
    for (dir, cut) in [
        (Dir::Up, Cut::FlipClientByte(MIB as u64)),
        (Dir::Down, Cut::FlipServerByte(MIB as u64)),
    ] {
        let tmp = TempDir::new(&format!("flip-{dir:?}"));
        let (s, d) = (tmp.join("src"), tmp.join("dst"));
        write_file(&s, &random_bytes(4 * MIB, 42));
        let (server_args, mut args) = keyed_args(dir, &s, &d, KEY);
        args.push("-n");
        let server = Server::start(&server_args);
        let (port, _) = relay(server.socket_addr(), cut);
        let addr = format!("127.0.0.1:{port}");
        let mut tampered = args.clone();
        tampered.extend(["-r", &addr]);
        let client = Proc::start(&tampered).expect_status(1);
        let srv = server.proc.expect_status(1);
        let (victim, other) = match dir {
            Dir::Up => (&srv, &client),
            Dir::Down => (&client, &srv),
        };
        let line = error_line(victim);
        assert!(
            line.contains("failed its integrity check"),
            "{dir:?}: {line}"
        );
        error_line(other);
        // A re-run on a clean link repairs whatever was written.
        let server = Server::start(&server_args);
        let addr = server.addr();
        args.extend(["-r", &addr]);
        Proc::start(&args).expect_status(0);
        server.proc.expect_status(0);
        assert_same(&s, &d);
    }
}

#[test]
fn without_the_secret_nothing_is_touched_and_the_server_carries_on() {
    let tmp = TempDir::new("wrong-key");
    let (s, d) = (tmp.join("src"), tmp.join("dst"));
    let (src, dst) = make_pair(MIB, 43);
    write_file(&s, &src);
    write_file(&d, &dst);
    let before = mtime(&d);
    let token = tmp.join("token");
    write_file(&token, format!("{KEY}\n").as_bytes());
    let mut server = Server::start(&["-K", KEY, "-f", arg(&d)]);
    let addr = server.addr();
    let attempts: [(&[&str], &str); 3] = [
        (&["-K", OTHER_KEY], "holds a different key"),
        (&[], "the server has a key"),
        (&["-token-file", arg(&token)], "the server has a key"),
    ];
    for (extra, why) in attempts {
        let mut args = vec!["-f", arg(&s), "-r", &addr];
        args.extend(extra);
        let err = Proc::start(&args).expect_status(1);
        let line = error_line(&err);
        assert!(line.contains("authentication failed"), "{extra:?}: {line}");
        assert!(line.contains(why), "{extra:?}: {line}");
        assert!(
            !err.contains(KEY) && !err.contains(OTHER_KEY),
            "a key in:\n{err}"
        );
    }
    let log = server.proc.wait_stderr(Duration::from_secs(10), |e| {
        lines_with(e, &["dropped", "authentication failed"]).len() >= 3
    });
    assert_eq!(
        lines_with(&log, &["authentication failed"]).len(),
        3,
        "{log}"
    );
    assert!(
        !log.contains(KEY) && !log.contains(OTHER_KEY),
        "a key in:\n{log}"
    );
    assert_eq!(read_file(&d), dst, "the destination changed");
    assert_eq!(mtime(&d), before, "the destination was written");
    let err = Proc::start(&["-f", arg(&s), "-r", &addr, "-K", KEY]).expect_status(0);
    // Issue 19, item 8: off a terminal, a line says the session is encrypted.
    assert!(err.contains("the session is encrypted"), "{err}");
    let log = server.proc.expect_status(0);
    assert!(log.contains("the session is encrypted"), "{log}");
    assert_same(&s, &d);
}

/// Issue 19, item 8: a quiet encrypted run prints no line, but its
/// `--json` says that the session was encrypted, on both ends.
#[test]
fn a_quiet_encrypted_run_says_so_in_its_json() {
    let tmp = TempDir::new("quiet-key");
    let (s, d) = (tmp.join("src"), tmp.join("dst"));
    write_file(&s, &random_bytes(MIB, 45));
    let server = Server::start(&["-q", "-json", "-K", KEY, "-f", arg(&d)]);
    let args = [
        "-q",
        "-json",
        "-f",
        arg(&s),
        "-r",
        &server.addr(),
        "-K",
        KEY,
    ];
    let client = Proc::start(&args);
    let client_out = client.stdout.recv_timeout(RUN_LIMIT).unwrap_or_default();
    let client_err = client.expect_status(0);
    let server_out = server
        .proc
        .stdout
        .recv_timeout(RUN_LIMIT)
        .unwrap_or_default();
    server.proc.expect_status(0);
    assert!(client_err.is_empty(), "-q printed: {client_err}");
    for out in [&client_out, &server_out] {
        assert!(out.contains("\"encrypted\":true"), "{out}");
    }
    assert_same(&s, &d);
}

/// Issue 19, item 6: every summary names the destination: the server's
/// its file, the uploading client's the server it sent to.
#[test]
fn network_summaries_name_the_destination() {
    let tmp = TempDir::new("names");
    let (s, d) = (tmp.join("src"), tmp.join("dst"));
    write_file(&s, &random_bytes(MIB, 46));
    let server = Server::start(&["-f", arg(&d)]);
    let addr = server.addr();
    let client_err = Proc::start(&["-f", arg(&s), "-r", &addr]).expect_status(0);
    let server_err = server.proc.expect_status(0);
    let done = |text: &str| -> String {
        let line = text.lines().find(|l| l.contains("done: "));
        line.unwrap_or_else(|| panic!("no summary in:\n{text}"))
            .to_string()
    };
    let want = format!("destination server {addr}: done: ");
    assert!(done(&client_err).starts_with(&want), "{client_err}");
    let want = format!("destination {}: done: ", d.display());
    assert!(done(&server_err).starts_with(&want), "{server_err}");
    assert_same(&s, &d);
}

#[test]
fn a_token_admits_only_clients_that_know_it() {
    let tmp = TempDir::new("token");
    let (s, d) = (tmp.join("src"), tmp.join("dst"));
    write_file(&s, &random_bytes(MIB, 44));
    let (token, other) = (tmp.join("token"), tmp.join("other"));
    write_file(&token, format!("{KEY}\n").as_bytes());
    write_file(&other, format!("{OTHER_KEY}\n").as_bytes());
    let server = Server::start_with(&["-d", "-f", arg(&s), "-token-file", "-"], KEY);
    let addr = server.addr();
    for (extra, why) in [
        (
            vec!["-token-file", arg(&other)],
            "holds a different key or token",
        ),
        (vec![], "the server has a token"),
        (vec!["-K", KEY], "the server has a token"),
    ] {
        let mut args = vec!["-d", "-f", arg(&d), "-r", &addr];
        args.extend(&extra);
        let err = Proc::start(&args).expect_status(1);
        let line = error_line(&err);
        assert!(line.contains(why), "{extra:?}: {line}");
        assert!(!d.exists(), "{extra:?}: the destination was created");
    }
    Proc::start(&["-d", "-f", arg(&d), "-r", &addr, "-token-file", arg(&token)]).expect_status(0);
    server.proc.expect_status(0);
    assert_same(&s, &d);
}

#[test]
fn a_keyed_client_will_not_talk_to_an_open_server() {
    let tmp = TempDir::new("open-server");
    let (s, d) = (tmp.join("src"), tmp.join("dst"));
    write_file(&s, &random_bytes(100_000, 45));
    let mut server = Server::start(&["-f", arg(&d)]);
    let err = Proc::start(&["-f", arg(&s), "-r", &server.addr(), "-K", KEY]).expect_status(1);
    let line = error_line(&err);
    assert!(line.contains("the server has neither"), "{line}");
    let log = server
        .proc
        .wait_stderr(Duration::from_secs(10), |e| e.contains("dropped"));
    assert!(log.contains("authentication failed"), "{log}");
    assert!(!d.exists(), "the destination was created");
    server.proc.kill();
}

/// `-auto`'s `Probe` frames before a `Hello`: an empty one is answered with
/// an empty one, full ones are discarded, and more than `PROBE_LIMIT` bytes
/// of them drop the connection without ending the server.
#[test]
fn probes_before_hello_are_answered_and_bounded() {
    use bsync::proto::{self, Frame, HANDSHAKE_MAX, PROBE_LIMIT};
    let tmp = TempDir::new("probe");
    let (s, d) = (tmp.join("src"), tmp.join("dst"));
    write_file(&s, &random_bytes(300_000, 31));
    let mut server = Server::start(&["-f", arg(&d)]);
    let mut c = connect(server.socket_addr());
    c.write_all(PREAMBLE).unwrap();
    let mut head = [0u8; 14 + 5 + 17];
    c.read_exact(&mut head).expect("preamble and challenge");
    let mut frames = Vec::new();
    proto::encode(&Frame::Probe(&[7; HANDSHAKE_MAX]), &mut frames);
    proto::encode(&Frame::Probe(&[]), &mut frames);
    c.write_all(&frames).unwrap();
    let mut answer = [0u8; 5];
    c.read_exact(&mut answer)
        .expect("an answer to the empty probe");
    assert_eq!(answer, [11, 0, 0, 0, 0]);
    // Past the limit the server drops the connection.
    let mut full = Vec::new();
    proto::encode(&Frame::Probe(&[1; HANDSHAKE_MAX]), &mut full);
    for _ in 0..=PROBE_LIMIT / HANDSHAKE_MAX {
        if c.write_all(&full).is_err() {
            break;
        }
    }
    let _ = read_to_close(&mut c);
    let err = server.proc.wait_stderr(Duration::from_secs(20), |e| {
        e.contains("too many Probe bytes")
    });
    assert!(err.contains("too many Probe bytes"), "{err}");
    real_upload(server, &s, &d);
}

// ------------------------------------------------------------ issue 15 ---

/// The resume point out of a `resume with -s N` line, if `stderr` has one.
fn resume_point(stderr: &str) -> Option<u64> {
    stderr.lines().find_map(|l| {
        l.split("resume with -s ")
            .nth(1)?
            .split([':', ' '])
            .next()?
            .parse()
            .ok()
    })
}

/// Issue 15, item 1: a killed client no longer holds the server for five
/// minutes. Once every connection of its session is gone the server says
/// what it waits for and until when, and a new client is admitted after
/// the grace: the retry succeeds against the same server.
#[test]
fn a_new_client_takes_over_after_the_old_one_was_killed() {
    let dir = TempDir::new("takeover");
    let (src, dst) = (dir.join("src"), dir.join("dst"));
    write_file(&src, &random_bytes(4 * MIB, 151));
    let server = Server::start(&["-f", arg(&dst)]);
    let addr = server.addr();
    let mut server_proc = server.proc;
    // Slow enough to be killed in the middle.
    let mut first = Proc::start(&[
        "-f",
        arg(&src),
        "-r",
        &addr,
        "-b",
        "64K",
        "-bwlimit",
        "256K",
    ]);
    server_proc.wait_stderr(RUN_LIMIT, |e| e.contains("session from"));
    thread::sleep(Duration::from_millis(500));
    first.kill();
    let err = server_proc.wait_stderr(RUN_LIMIT, |e| e.contains("waiting until"));
    let line = lines_with(&err, &["waiting until"]).join("\n");
    assert!(line.contains("a new client is admitted from"), "{line}");
    let started = Instant::now();
    let retry = Proc::start(&["-f", arg(&src), "-r", &addr, "-b", "64K"]).expect_status(0);
    assert!(started.elapsed() < Duration::from_secs(15), "{retry}");
    // Issue 19, item 4: the held client says what it waits for and until when.
    let held = lines_with(&retry, &["waiting for server", "to admit this session"]).join("\n");
    assert!(
        held.contains("until ") && held.contains("at the latest"),
        "{retry}"
    );
    let err = server_proc.expect_status(0);
    assert!(err.contains("was abandoned"), "{err}");
    // Issue 19, item 8: said once.
    assert!(err.contains("serving the new client 127.0.0.1:"), "{err}");
    assert_same(&src, &dst);
}

/// Issue 15, item 5: a failed network run ends with the block a resume may
/// start at, the lowest unacknowledged one with -w 4; resuming there with
/// -s makes the destination whole.
#[test]
fn a_failed_upload_says_where_to_resume() {
    let dir = TempDir::new("resume-line");
    let (src, dst) = (dir.join("src"), dir.join("dst"));
    let data = random_bytes(4 * MIB, 152);
    write_file(&src, &data);
    let server = Server::start(&["-f", arg(&dst)]);
    let addr = server.addr();
    let mut server_proc = server.proc;
    let client = Proc::start(&[
        "-f",
        arg(&src),
        "-r",
        &addr,
        "-b",
        "64K",
        "-w",
        "4",
        "-bwlimit",
        "512K",
    ]);
    server_proc.wait_stderr(RUN_LIMIT, |e| e.contains("session from"));
    thread::sleep(Duration::from_millis(1500));
    server_proc.kill();
    let err = client.expect_status(1);
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("resume with -s "), "not last: {err}");
    let n = resume_point(last).unwrap_or_else(|| panic!("{err}"));
    assert!(n > 0 && n < 64, "resume at {n}: {err}");
    // Every block before n is there already.
    let have = read_file(&dst);
    let upto = usize::try_from(n).expect("small") * 64 * 1024;
    assert!(
        have[..upto] == data[..upto],
        "a block before {n} is missing"
    );
    let server = Server::start(&["-f", arg(&dst)]);
    let skip = n.to_string();
    Proc::start(&[
        "-f",
        arg(&src),
        "-r",
        &server.addr(),
        "-b",
        "64K",
        "-s",
        &skip,
    ])
    .expect_status(0);
    server.proc.expect_status(0);
    assert_same(&src, &dst);
}

/// Issue 15, item 5: Ctrl-C says where to resume too.
#[test]
fn an_interrupted_upload_says_where_to_resume() {
    let dir = TempDir::new("resume-int");
    let (src, dst) = (dir.join("src"), dir.join("dst"));
    write_file(&src, &random_bytes(2 * MIB, 153));
    let server = Server::start(&["-f", arg(&dst)]);
    let mut client = Proc::start(&[
        "-f",
        arg(&src),
        "-r",
        &server.addr(),
        "-b",
        "64K",
        "-bwlimit",
        "256K",
    ]);
    client.wait_stderr(RUN_LIMIT, |e| e.contains("connected to"));
    thread::sleep(Duration::from_millis(1200));
    let sent = std::process::Command::new("kill")
        .args(["-INT", &client.child.id().to_string()])
        .status();
    assert!(sent.is_ok_and(|s| s.success()), "kill -INT failed");
    let err = client.expect_status(130);
    assert!(err.contains("interrupted"), "{err}");
    let n = resume_point(err.lines().last().unwrap_or_default());
    assert!(n.is_some_and(|n| n > 0 && n < 32), "{err}");
}

/// Issue 15, item 13: --bwlimit holds the sending rate and --json prints
/// the closing summary as JSON on stdout.
#[test]
fn bwlimit_holds_the_rate_and_json_summarises() {
    let dir = TempDir::new("bwlimit");
    let (src, dst) = (dir.join("src"), dir.join("dst"));
    write_file(&src, &random_bytes(3 * MIB / 2, 154));
    let server = Server::start(&["-f", arg(&dst)]);
    let started = Instant::now();
    let client = Proc::start(&[
        "-f",
        arg(&src),
        "-r",
        &server.addr(),
        "-b",
        "64K",
        "-n",
        "-bwlimit",
        "1M",
        "-json",
    ]);
    let stdout = client.stdout.recv_timeout(RUN_LIMIT).unwrap_or_default();
    client.expect_status(0);
    let took = started.elapsed();
    server.proc.expect_status(0);
    assert_same(&src, &dst);
    // 1.5 MiB at 1 MiB/s, less the bucket's first tenth of a second.
    assert!(took >= Duration::from_millis(1300), "took {took:?}");
    assert!(
        stdout.starts_with("{\"side\":\"source\",\"blocks\":24,"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\"wire_sent\":") && stdout.ends_with('}'),
        "{stdout}"
    );
}

/// Issue 15, item 7, on a terminal (a pty from `script`, 60 columns, a
/// long -l prefix): the live line never gets wider than the terminal, and a
/// log line printed meanwhile starts on a line of its own. Off a terminal,
/// each plain line carries a timestamp, the "encrypted" marker and the
/// bandwidth limit.
#[test]
fn progress_fits_the_terminal_and_keeps_log_lines_apart() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        return common::skip("no script(1) for a pty");
    }
    let tmp = TempDir::new("tty");
    let (s, d, out) = (tmp.join("src"), tmp.join("dst"), tmp.join("pty.out"));
    write_file(&s, &random_bytes(2 * MIB, 155));
    let key = "5a".repeat(32);
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let inner = format!(
        "stty cols 60 rows 20; exec {} -p {port} -i 127.0.0.1 -f {} -K {key} -l db01-migration:",
        env!("CARGO_BIN_EXE_bsync"),
        arg(&d)
    );
    let mut server = std::process::Command::new("script")
        .args(["-qfec", &inner])
        .arg(&out)
        .env("BSYNC_IO_TIMEOUT", IO_TIMEOUT.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("script");
    let pty = || String::from_utf8_lossy(&std::fs::read(&out).unwrap_or_default()).to_string();
    let start = Instant::now();
    while !pty().contains("listening on") {
        assert!(
            start.elapsed() < PORT_LIMIT,
            "the server did not start:\n{}",
            pty()
        );
        thread::sleep(Duration::from_millis(50));
    }
    let addr = format!("127.0.0.1:{port}");
    let client = Proc::start(&[
        "-f",
        arg(&s),
        "-r",
        &addr,
        "-b",
        "64K",
        "-K",
        &key,
        "-bwlimit",
        "256K",
    ]);
    thread::sleep(Duration::from_millis(1500));
    // A second client is refused: the server logs a line mid-progress.
    let busy = Proc::start(&["-f", arg(&s), "-r", &addr, "-K", &key]).expect_status(1);
    assert!(busy.contains("busy"), "{busy}");
    let err = client.expect_status(0);
    let status = server.wait().expect("wait for script");
    let raw = pty();
    assert!(status.success(), "server:\n{raw}");
    assert_same(&s, &d);

    assert!(
        raw.contains("\r\x1b[Kdb01-migration: refused"),
        "glued:\n{raw:?}"
    );
    let mut drawn = 0;
    for piece in raw.split(['\r', '\n']) {
        let visible = piece.replace("\x1b[K", "");
        if visible.contains('%') {
            drawn += 1;
            assert!(
                visible.chars().count() < 60,
                "{} columns: {visible:?}",
                visible.len()
            );
        }
    }
    assert!(drawn > 2, "no live progress seen:\n{raw:?}");

    let plain = err
        .lines()
        .find(|l| l.contains(" blocks ") && l.contains("ETA"))
        .unwrap_or_else(|| panic!("no plain progress line:\n{err}"));
    let stamp = plain.split(' ').take(2).collect::<Vec<_>>().join(" ");
    assert!(
        stamp.len() == 19 && stamp.as_bytes()[4] == b'-' && stamp.as_bytes()[13] == b':',
        "no timestamp: {plain}"
    );
    assert!(
        plain.contains("encrypted") && plain.contains("limit 256.0 KiB/s"),
        "{plain}"
    );
}

/// Issue 19, item 4: a server stopped by a signal tells its client so; the
/// client's error says it, not just "connection closed".
#[test]
fn a_stopped_server_says_it_was_stopped() {
    let dir = TempDir::new("stopped-server");
    let (src, dst) = (dir.join("src"), dir.join("dst"));
    write_file(&src, &random_bytes(4 * MIB, 153));
    let server = Server::start(&["-f", arg(&dst)]);
    let addr = server.addr();
    let mut server_proc = server.proc;
    let client = Proc::start(&[
        "-f",
        arg(&src),
        "-r",
        &addr,
        "-b",
        "64K",
        "-bwlimit",
        "256K",
    ]);
    server_proc.wait_stderr(RUN_LIMIT, |e| e.contains("session from"));
    let pid = server_proc.child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let err = client.expect_status(1);
    assert!(err.contains("it was stopped by SIGTERM"), "{err}");
    server_proc.expect_status(143);
}

// ------------------------------------------------------------ issue 18 ---

/// The flags of a `resume with ...` line, as words to paste onto the
/// command line: `-s N -b B`.
fn resume_flags(stderr: &str) -> Vec<String> {
    let line = lines_with(stderr, &["resume with -s "]);
    assert_eq!(line.len(), 1, "want one resume line:\n{stderr}");
    let flags = line[0]
        .split("resume with ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .unwrap_or_default();
    flags.split_whitespace().map(str::to_string).collect()
}

/// Send `signal` (`-INT`, `-TERM`) to `proc`.
fn signal(proc: &Proc, signal: &str) {
    let sent = std::process::Command::new("kill")
        .args([signal, &proc.child.id().to_string()])
        .status();
    assert!(sent.is_ok_and(|s| s.success()), "kill {signal} failed");
}

/// Issue 18, item 1: the resume hint of an interrupted `-b 1M` upload
/// carries `-b 1M`; pasted as printed (the original `-b` dropped), it
/// makes the destination whole.
#[test]
fn the_resume_hint_carries_the_block_size_and_resumes_the_same_run() {
    let dir = TempDir::new("resume-b");
    let (src, dst) = (dir.join("src"), dir.join("dst"));
    write_file(&src, &random_bytes(12 * MIB, 181));
    write_file(&dst, &random_bytes(12 * MIB, 182));
    let server = Server::start(&["-f", arg(&dst)]);
    let addr = server.addr();
    let mut server_proc = server.proc;
    let mut client = Proc::start(&[
        "-f",
        arg(&src),
        "-r",
        &addr,
        "-b",
        "1M",
        "-n",
        "-bwlimit",
        "1M",
    ]);
    client.wait_stderr(RUN_LIMIT, |e| e.contains("connected to"));
    thread::sleep(Duration::from_millis(3500));
    signal(&client, "-INT");
    let err = client.expect_status(130);
    let flags = resume_flags(&err);
    assert!(flags.windows(2).any(|w| w == ["-b", "1M"]), "{err}");
    let server_err = server_proc.wait_stderr(RUN_LIMIT, |e| e.contains("may resume"));
    let hint = lines_with(&server_err, &["may resume"]).join("\n");
    assert!(hint.contains(" -b 1M: "), "{hint}\nclient:\n{err}");
    server_proc.kill();

    let server = Server::start(&["-f", arg(&dst)]);
    let addr = server.addr();
    let mut args = vec!["-f", arg(&src), "-r", &addr];
    args.extend(flags.iter().map(String::as_str));
    Proc::start(&args).expect_status(0);
    server.proc.expect_status(0);
    assert_same(&src, &dst);
}

/// Issue 18, item 1: after "the source was modified during the run" no end
/// offers a `-s` resume (blocks before it may be stale); the advice is a
/// plain re-run.
#[test]
fn a_source_modified_during_the_run_gets_no_resume_hint() {
    let dir = TempDir::new("resume-modified");
    let (src, dst) = (dir.join("src"), dir.join("dst"));
    write_file(&src, &random_bytes(2 * MIB, 183));
    let server = Server::start(&["-f", arg(&dst)]);
    let mut client = Proc::start(&[
        "-f",
        arg(&src),
        "-r",
        &server.addr(),
        "-b",
        "64K",
        "-n",
        "-bwlimit",
        "1M",
    ]);
    client.wait_stderr(RUN_LIMIT, |e| e.contains("connected to"));
    thread::sleep(Duration::from_millis(500));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&src)
        .expect("open the source");
    f.write_all_at(b"changed", 0).expect("change the source");
    drop(f);
    let err = client.expect_status(1);
    assert!(err.contains("during the run"), "{err}");
    assert!(!err.contains("resume with"), "{err}");
    let server_err = server.proc.expect_status(1);
    assert!(!server_err.contains("resume with"), "{server_err}");
}

/// Issue 18, item 1: `-s` at or past the end of the source is refused with
/// exit 2 in an upload (before connecting) and in a download (where the
/// client learns the size from the server: before its destination is
/// opened, and the server is told and ends).
#[test]
fn skip_past_the_end_is_refused_in_both_directions() {
    let dir = TempDir::new("skip-end-net");
    let (src, dst) = (dir.join("src"), dir.join("dst"));
    write_file(&src, &random_bytes(7 * 64 * 1024, 184));
    let server = Server::start(&["-f", arg(&dst)]);
    let err = Proc::start(&[
        "-f",
        arg(&src),
        "-r",
        &server.addr(),
        "-b",
        "64K",
        "-s",
        "7",
    ])
    .expect_status(2);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("-s 7") && err.contains("7 blocks"), "{err}");
    drop(server);
    assert!(!dst.exists(), "the upload created the destination");

    let server = Server::start(&["-d", "-f", arg(&src), "-b", "64K"]);
    let err =
        Proc::start(&["-d", "-f", arg(&dst), "-r", &server.addr(), "-s", "1000"]).expect_status(2);
    assert!(error_line(&err).contains("-s 1000"), "{err}");
    assert!(!err.contains("resume with"), "{err}");
    assert!(!dst.exists(), "the download created the destination");
    let server_err = server.proc.expect_status(1);
    assert!(server_err.contains("-s 1000"), "{server_err}");
}

// ---------------------------------------------------------------- --json ---

/// Issue 18, item 5: `--json` is right in every mode: locally, over `-r`
/// in both directions and dry or not, on the client and on the server.
/// Every field is checked against what the scene holds; each end's wire
/// bytes sent are the other end's received, and a run without a network
/// has none.
#[test]
fn json_is_right_in_every_mode_on_both_ends() {
    let dir = TempDir::new("json-modes");
    let (src_bytes, dst_bytes) = json_scene();
    let (src, dst) = (dir.join("src"), dir.join("dst"));
    write_file(&src, &src_bytes);
    let patch = dir.join("out.bsync");
    let bs = JSON_BS.to_string();
    let want = |side, dry, reads, writes, wire| JsonWant {
        side,
        dry,
        reads,
        writes,
        wire,
        encryption: "none",
    };

    // Locally: a sync, a compare, a patch.
    for (extra, code, dry) in [
        (&[][..], 0, false),
        (&["--compare"][..], 3, true),
        (&["--write-patch", arg(&patch)][..], 0, true),
    ] {
        write_file(&dst, &dst_bytes);
        let out = run(&mut local(
            &src,
            &dst,
            &[&["-q", "-json", "-b", &bs], extra].concat(),
        ));
        assert_eq!(out.status.code(), Some(code), "{extra:?}: {}", stderr(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let what = format!("local {extra:?}");
        check_json(&what, &stdout, &want("local", dry, 2, !dry, false));
    }

    // Over -r: the client's line and the server's (after its port).
    let cases: [(Dir, &[&str], i32, bool); 4] = [
        (Dir::Up, &[], 0, false),
        (Dir::Down, &[], 0, false),
        (Dir::Up, &["--compare"], 3, true),
        (Dir::Up, &["--write-patch", arg(&patch)], 0, true),
    ];
    for (way, extra, code, dry) in cases {
        write_file(&dst, &dst_bytes);
        let server = match way {
            Dir::Up => Server::start(&["-q", "-json", "-f", arg(&dst)]),
            Dir::Down => Server::start(&["-q", "-json", "-d", "-b", &bs, "-f", arg(&src)]),
        };
        let addr = server.addr();
        let mut args = vec!["-q", "-json", "-r", &addr];
        args.extend(match way {
            Dir::Up => ["-b", &bs, "-f", arg(&src)].to_vec(),
            Dir::Down => ["-d", "-f", arg(&dst)].to_vec(),
        });
        args.extend(extra);
        let client = Proc::start(&args);
        let client_out = client.stdout.recv_timeout(RUN_LIMIT).unwrap_or_default();
        let client_err = client.expect_status(code);
        let server_out = server
            .proc
            .stdout
            .recv_timeout(RUN_LIMIT)
            .unwrap_or_default();
        let server_err = server.proc.expect_status(0);
        let what = format!("{way:?} {extra:?}");
        let (client_side, server_side) = match way {
            Dir::Up => ("source", "destination"),
            Dir::Down => ("destination", "source"),
        };
        let c = check_json(
            &format!("{what} client: {client_err}"),
            &client_out,
            &want(client_side, dry, 1, way == Dir::Down, true),
        );
        let s = check_json(
            &format!("{what} server: {server_err}"),
            &server_out,
            &want(server_side, dry, 1, way == Dir::Up, true),
        );
        assert_eq!(c["wire_sent"], s["wire_received"], "{what}");
        assert_eq!(c["wire_received"], s["wire_sent"], "{what}");
        if !dry {
            assert_same(&src, &dst);
        } else {
            assert_eq!(read_file(&dst), dst_bytes, "{what}: a dry run wrote");
        }
    }
}

// ------------------------------------------------ the new-user trial, again ---

/// The new-user trial: `--compare` against a server whose destination was
/// of another size said `every block is identical` and exited 0, where a
/// local compare exits 3 and says a sync would truncate or grow it. Over
/// `-r` now the same: exit 3 and the local sentence; the same size is
/// `the two sides are identical`, exit 0.
#[test]
fn compare_over_r_counts_another_size_as_a_difference() {
    let dir = TempDir::new("compare-size");
    let src_bytes = [random_bytes(1 << 20, 31), vec![0u8; 8192]].concat();
    let (src, dst) = (dir.join("src"), dir.join("dst"));
    write_file(&src, &src_bytes);
    for (dst_bytes, said) in other_sizes(&src_bytes) {
        write_file(&dst, &dst_bytes);
        let here = run_status(&mut local(&src, &dst, &["--compare", "-b", "64K"]), 3);
        assert!(here.lines().any(|l| l == said), "locally: {here}");
        let server = Server::start(&["-q", "-f", arg(&dst)]);
        let client = Proc::start(&[
            "--compare",
            "-b",
            "64K",
            "-f",
            arg(&src),
            "-r",
            &server.addr(),
        ]);
        let err = client.expect_status(3);
        assert!(err.lines().any(|l| l == said), "over -r, {said}: {err}");
        assert!(!err.contains("identical"), "{err}");
        server.proc.expect_status(0);
        assert_eq!(read_file(&dst), dst_bytes, "a compare wrote");
    }
    write_file(&dst, &src_bytes);
    let server = Server::start(&["-q", "-f", arg(&dst)]);
    let client = Proc::start(&["--compare", "-f", arg(&src), "-r", &server.addr()]);
    let err = client.expect_status(0);
    assert!(
        err.contains("compare: the two sides are identical"),
        "{err}"
    );
    server.proc.expect_status(0);
}

/// The end that creates a destination says so, as a local run does: a
/// server given a new `-f`, and a downloading client.
#[test]
fn the_end_that_creates_the_destination_says_so() {
    let dir = TempDir::new("new-dest");
    let src = dir.join("src");
    write_file(&src, &random_bytes(256 << 10, 32));
    let up = dir.join("up.img");
    let server = Server::start(&["-f", arg(&up)]);
    Proc::start(&["-q", "-f", arg(&src), "-r", &server.addr()]).expect_status(0);
    let err = server.proc.expect_status(0);
    let want = format!(
        "destination {}: a new file (it did not exist)",
        up.display()
    );
    assert!(err.lines().any(|l| l == want), "{err}");
    assert_same(&src, &up);
    let down = dir.join("down.img");
    let server = Server::start(&["-q", "-d", "-f", arg(&src)]);
    let err = Proc::start(&["-d", "-f", arg(&down), "-r", &server.addr()]).expect_status(0);
    let want = format!(
        "destination {}: a new file (it did not exist)",
        down.display()
    );
    assert!(err.lines().any(|l| l == want), "{err}");
    server.proc.expect_status(0);
    assert_same(&src, &down);
}
