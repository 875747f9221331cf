//! Shared helpers for the integration tests: run the real `bsync` binary on
//! files in a private temporary directory and check what it did.
//!
//! Each test binary uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// A `Command` for the `bsync` binary under test, with stdin closed so a
/// test can never hang waiting for input.
pub fn bsync() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bsync"));
    cmd.stdin(Stdio::null());
    cmd
}

/// Says why a test cannot run here, in one line on stderr, and lets it pass;
/// under CI (`CI` set), where root, sshd and loop devices are provided, a
/// skip is a failure instead, so that nothing passes there by doing nothing.
/// Call as `return skip("no sshd (set BSYNC_TEST_SSH, see tests/sshd.sh)")`.
pub fn skip(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string();
    if std::env::var_os("CI").is_some() {
        panic!("{test}: would skip under CI: {why}");
    }
    eprintln!("{test}: skipped: {why}");
}

/// A directory removed when dropped. It lives under the target directory,
/// which is on the real disk (sparse files and holes behave as in use), not
/// on a tmpfs.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// A fresh, empty directory; `name` says which test made it.
    pub fn new(name: &str) -> TempDir {
        TempDir::new_in(Path::new(env!("CARGO_TARGET_TMPDIR")), name)
    }

    /// The same under `parent` (another file system, such as a tmpfs).
    pub fn new_in(parent: &Path, name: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = parent.join(format!("bsync-{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    /// `name` inside the directory (not created).
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Write `bytes` to `path`, replacing it.
pub fn write_file(path: &Path, bytes: &[u8]) {
    fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Read all of `path`.
pub fn read_file(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `len` pseudo-random bytes, the same for the same seed.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

/// A source with a zero region and a stale destination differing from it in
/// a few scattered bytes and over part of the zero region.
pub fn make_pair(len: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut src = random_bytes(len, seed);
    let zeros = len / 3..len / 3 + len / 8;
    src[zeros.clone()].fill(0);
    let mut dst = src.clone();
    let stale = zeros.start + len / 64..zeros.end - len / 64;
    dst[stale.clone()].copy_from_slice(&random_bytes(stale.len(), seed + 1));
    let mut rng = fastrand::Rng::with_seed(seed + 2);
    for _ in 0..8 {
        let at = rng.usize(..len);
        dst[at] = dst[at].wrapping_add(rng.u8(1..));
    }
    (src, dst)
}

/// Run `cmd` to completion, capturing stdout and stderr.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Run `cmd` and insist on exit status 0; returns stderr.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{cmd:?} failed\nstderr:\n{err}\nstdout:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    err
}

/// Run `cmd` and insist on exit status `code`; returns stderr.
pub fn run_status(cmd: &mut Command, code: i32) -> String {
    let out = run(cmd);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{cmd:?}: wrong exit status\nstderr:\n{err}"
    );
    err
}

/// stderr of a finished run, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `bsync -f SRC -t DST` plus `extra` flags.
pub fn local(src: &Path, dst: &Path, extra: &[&str]) -> Command {
    let mut cmd = bsync();
    cmd.arg("-f").arg(src).arg("-t").arg(dst).args(extra);
    cmd
}

/// Panic with the first differing offset unless `a` and `b` hold the same bytes.
/// Reads both a MiB at a time, so multi-GiB sparse files cost no memory.
pub fn assert_same(a: &Path, b: &Path) {
    use std::io::Read;
    let open = |p: &Path| fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let (mut fa, mut fb) = (open(a), open(b));
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut base = 0usize;
    loop {
        let fill = |f: &mut fs::File, buf: &mut [u8], p: &Path| {
            let mut n = 0;
            while n < buf.len() {
                match f.read(&mut buf[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) => panic!("read {}: {e}", p.display()),
                }
            }
            n
        };
        let (n, m) = (fill(&mut fa, &mut x, a), fill(&mut fb, &mut y, b));
        let common = n.min(m);
        let first_difference = || x.iter().zip(&y).take(common).position(|(p, q)| p != q);
        if let Some(i) = (x[..common] != y[..common])
            .then(first_difference)
            .flatten()
        {
            let at = base + i;
            panic!(
                "{} and {} differ first at byte {at} (block of 4 KiB #{}): {:#04x} != {:#04x}",
                a.display(),
                b.display(),
                at / 4096,
                x[i],
                y[i]
            );
        }
        if n != m {
            let len = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            panic!(
                "{} ({} bytes) and {} ({} bytes) differ in size (equal up to the shorter)",
                a.display(),
                len(a),
                b.display(),
                len(b)
            );
        }
        if n == 0 {
            return;
        }
        base += n;
    }
}

/// Bytes the file system allocated for `path` (holes cost nothing).
pub fn allocated_bytes(path: &Path) -> u64 {
    let m = fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    m.blocks() * 512
}

/// Size of `path` in bytes.
pub fn file_len(path: &Path) -> u64 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .len()
}

/// Modification time of `path`.
pub fn mtime(path: &Path) -> SystemTime {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
}

/// Set the modification time of `path` to a day ago, so that any write by
/// bsync shows; returns the time set.
pub fn age(path: &Path) -> SystemTime {
    let old = SystemTime::now() - Duration::from_secs(86_400);
    File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(old))
        .unwrap_or_else(|e| panic!("set mtime of {}: {e}", path.display()));
    mtime(path)
}

/// The closing `done: ...` line of a run, taken apart.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub blocks: u64,
    pub same: u64,
    pub changed: u64,
    pub zero: u64,
    /// Bytes, as rounded by the human-readable units (`64.0 KiB`).
    pub read: f64,
    pub written: f64,
    pub cleared: f64,
    /// Blocks on the network: what the source sent, or what the
    /// destination received (0 when the run had none).
    pub wire: f64,
    /// What the destination sent: digests and acknowledgements.
    pub digests: f64,
    /// The whole line, for messages.
    pub line: String,
}

impl Summary {
    /// The counts alone, which must not depend on workers or timing.
    pub fn counts(&self) -> (u64, u64, u64, u64) {
        (self.blocks, self.same, self.changed, self.zero)
    }
}

/// Find and parse the summary line in `stderr`.
pub fn summary(stderr: &str) -> Summary {
    let line = stderr
        .lines()
        .find(|l| l.contains("done: "))
        .unwrap_or_else(|| panic!("no summary line in stderr:\n{stderr}"));
    let count_before = |word: &str| -> u64 {
        let end = line
            .find(word)
            .unwrap_or_else(|| panic!("summary lacks {word:?}: {line}"));
        let digits = line[..end]
            .rsplit(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap_or_default();
        digits
            .parse()
            .unwrap_or_else(|_| panic!("no count before {word:?}: {line}"))
    };
    let bytes_after = |word: &str| -> Option<f64> {
        let start = line.find(word)? + word.len();
        let mut parts = line[start..].split_whitespace();
        let value: f64 = parts.next()?.parse().ok()?;
        let unit = parts.next()?.trim_end_matches([',', ';']);
        let scale = match unit {
            "B" => 1.0,
            "KiB" => 1024.0,
            "MiB" => 1024.0 * 1024.0,
            "GiB" => 1024.0 * 1024.0 * 1024.0,
            _ => panic!("unknown unit {unit:?} after {word:?}: {line}"),
        };
        Some(value * scale)
    };
    let need =
        |word: &str| bytes_after(word).unwrap_or_else(|| panic!("summary lacks {word:?}: {line}"));
    Summary {
        blocks: count_before(" block"),
        same: count_before(" same"),
        changed: count_before(" changed"),
        zero: count_before(" zero"),
        read: need("read "),
        // A network source writes nothing and says so by leaving it out.
        written: bytes_after("written ").unwrap_or(0.0),
        cleared: bytes_after("cleared ").unwrap_or(0.0),
        // The source says "sent X on the wire", the destination "received
        // X of blocks and page requests, sent Y of digests and
        // acknowledgements".
        wire: bytes_after("received ")
            .or_else(|| bytes_after("sent "))
            .unwrap_or(0.0),
        digests: bytes_after("page requests, sent ").unwrap_or(0.0),
        line: line.to_string(),
    }
}

/// True when `actual` (rounded to one decimal of its unit) may be `exact`.
pub fn about(actual: f64, exact: u64) -> bool {
    let exact = exact as f64;
    (actual - exact).abs() <= exact * 0.05 + 1.0
}

/// What the writing end's summary must say, worked out independently from
/// the two files.
#[derive(Debug, Default, PartialEq)]
pub struct Expect {
    pub blocks: u64,
    pub same: u64,
    pub changed: u64,
    pub zero: u64,
    pub written: u64,
    pub cleared: u64,
}

impl Expect {
    /// Assert that the writing end's summary `s` says what is expected:
    /// the block counts exactly, bytes written and cleared about right.
    pub fn check(&self, s: &Summary) {
        assert_eq!(
            s.counts(),
            (self.blocks, self.same, self.changed, self.zero),
            "blocks/same/changed/zero; want {self:?}\n{}",
            s.line
        );
        if self.written == 0 {
            assert!(s.line.contains("written 0 B"), "want {self:?}\n{}", s.line);
        }
        assert!(
            about(s.written, self.written),
            "written: want {} bytes\n{}",
            self.written,
            s.line
        );
        assert!(
            about(s.cleared, self.cleared),
            "cleared: want {} bytes\n{}",
            self.cleared,
            s.line
        );
    }
}

/// The summary of a run over `src` onto `dst` (as it was before the run)
/// with block size `bs`, skipping `skip` blocks, when the destination
/// compares and writes in units of `grain` bytes (or the block size if
/// smaller): per block, a unit that differs is written, or cleared when
/// the source has only zeros there.
pub fn expect_summary(src: &[u8], dst: &[u8], bs: usize, skip: usize, grain: usize) -> Expect {
    let mut dst = dst.to_vec();
    dst.resize(src.len(), 0);
    let unit = bs.min(grain);
    let mut e = Expect::default();
    for (s, d) in src.chunks(bs).zip(dst.chunks(bs)).skip(skip) {
        e.blocks += 1;
        let (mut data, mut zero) = (false, false);
        for (a, b) in s.chunks(unit).zip(d.chunks(unit)) {
            if a == b {
                continue;
            }
            if a.iter().all(|&x| x == 0) {
                zero = true;
                e.cleared += a.len() as u64;
            } else {
                data = true;
                e.written += a.len() as u64;
            }
        }
        match (data, zero) {
            (true, _) => e.changed += 1,
            (false, true) => e.zero += 1,
            (false, false) => e.same += 1,
        }
    }
    e
}

// ---------------------------------------------------------------- --json ---

/// Block size of the `--json` scene.
pub const JSON_BS: usize = 64 << 10;

/// The `--json` scene: 8 blocks of 64 KiB, of which three differ. Block 1
/// in 100 bytes of one page, block 3 in one whole page (a sync writes two
/// pages, 8 KiB), block 5 holds zeros at the source and data at the
/// destination (cleared, 64 KiB). A dry run compares whole 64 KiB ranges,
/// so it counts 128 KiB of data that differs and 64 KiB of zeros.
pub fn json_scene() -> (Vec<u8>, Vec<u8>) {
    let mut src = random_bytes(8 * JSON_BS, 190);
    src[5 * JSON_BS..6 * JSON_BS].fill(0);
    let mut dst = src.clone();
    dst[JSON_BS + 10..JSON_BS + 110].copy_from_slice(&random_bytes(100, 191));
    dst[3 * JSON_BS..3 * JSON_BS + 4096].copy_from_slice(&random_bytes(4096, 192));
    dst[5 * JSON_BS..6 * JSON_BS].copy_from_slice(&random_bytes(JSON_BS, 193));
    (src, dst)
}

/// What one end's `--json` line must say about the scene.
pub struct JsonWant {
    pub side: &'static str,
    pub dry: bool,
    /// How many ends read their 512 KiB here: one, or two locally.
    pub reads: u64,
    /// This end writes (a destination, or a local run that is not dry).
    pub writes: bool,
    /// The run has a network: wire bytes are counted, else they are 0.
    pub wire: bool,
    /// What encrypted the data on the way: `none`, `ssh` (a `-t` session
    /// inside ssh) or `chacha20-poly1305` (`-e`, `-K`).
    pub encryption: &'static str,
}

/// The `--json` line among `text`'s lines, taken apart, checked field by
/// field against `want` (`what` names the run in messages).
pub fn check_json(
    what: &str,
    text: &str,
    want: &JsonWant,
) -> std::collections::BTreeMap<String, u64> {
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(lines.len(), 1, "{what}: want one JSON line in:\n{text}");
    let line = lines[0];
    let body = line
        .strip_prefix('{')
        .and_then(|l| l.strip_suffix('}'))
        .unwrap_or_else(|| panic!("{what}: not one object: {line}"));
    let mut fields = std::collections::BTreeMap::new();
    let mut texts = std::collections::BTreeMap::new();
    for field in body.split(',') {
        let (key, value) = field
            .split_once(':')
            .unwrap_or_else(|| panic!("{what}: field {field:?} in {line}"));
        let key = key.trim_matches('"').to_string();
        texts.insert(key.clone(), value.trim_matches('"').to_string());
        if let Ok(n) = value.parse::<u64>() {
            fields.insert(key, n);
        }
    }
    let keys: Vec<&str> = texts.keys().map(String::as_str).collect();
    let mut expected = [
        "side",
        "blocks",
        "bytes",
        "skipped",
        "same",
        "changed",
        "zero",
        "bytes_read",
        "bytes_written",
        "bytes_cleared",
        "bytes_changed",
        "wire_sent",
        "wire_received",
        "bytes_unreadable",
        "skipped_by_map",
        "seconds",
        "dry",
        "encrypted",
        "encryption",
    ];
    expected.sort_unstable();
    assert_eq!(keys, expected, "{what}: the fields of {line}");
    assert_eq!(texts["side"], want.side, "{what}: {line}");
    assert_eq!(texts["dry"], want.dry.to_string(), "{what}: {line}");
    assert_eq!(texts["encryption"], want.encryption, "{what}: {line}");
    let encrypted = want.encryption != "none";
    assert_eq!(texts["encrypted"], encrypted.to_string(), "{what}: {line}");
    assert!(
        texts["seconds"].parse::<f64>().is_ok_and(|s| s >= 0.0),
        "{what}: {line}"
    );
    let size = 8 * JSON_BS as u64;
    let (written, cleared) = match (want.writes, want.dry) {
        (true, false) => (2 * 4096, JSON_BS as u64),
        _ => (0, 0),
    };
    let changed_bytes = if want.dry {
        2 * JSON_BS as u64
    } else {
        2 * 4096
    };
    for (field, value) in [
        ("blocks", 8),
        ("bytes", size),
        ("skipped", 0),
        ("same", 5),
        ("changed", 2),
        ("zero", 1),
        ("bytes_read", want.reads * size),
        ("bytes_written", written),
        ("bytes_cleared", cleared),
        ("bytes_changed", changed_bytes),
        ("bytes_unreadable", 0),
    ] {
        assert_eq!(fields[field], value, "{what}: {field} in {line}");
    }
    for field in ["wire_sent", "wire_received"] {
        assert_eq!(fields[field] > 0, want.wire, "{what}: {field} in {line}");
    }
    fields
}

/// For a source whose last 8 KiB are zeros, destinations of the source's
/// data with another length where every block still agrees (past its end
/// a destination reads as zeros): (destination bytes, the line a
/// `--compare` of the two must print).
pub fn other_sizes(src: &[u8]) -> [(Vec<u8>, String); 2] {
    [
        ([src, &[9u8; 5000][..]].concat(), "truncate"),
        (src[..src.len() - 8192].to_vec(), "grow"),
    ]
    .map(|(dst, change)| {
        let said = format!(
            "compare: the destination is {} bytes, the source {}: a sync would {change} it",
            dst.len(),
            src.len()
        );
        (dst, said)
    })
}
