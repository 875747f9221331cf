//! `--rescue MAPFILE` against a real kernel `EIO`: an image served through
//! FUSE (`tests/faulty_fuse.py`) that fails to read chosen ranges, and a
//! read-only loop device with direct I/O on top, so the source is a block
//! device returning `EIO` for exactly those sectors. Every map is read by
//! GNU `ddrescuelog` and its bad areas compared with the map `ddrescue -d`
//! writes for the same device. Needs root, `/dev/fuse`, python3-fusepy and
//! gddrescue (`.ci/run` installs them); says "skipped" without.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bsync::rescue::map::{Map, Status};
use common::*;

const MIB: u64 = 1 << 20;
const SIZE: usize = 8 << 20;
/// A bad sector in block 1 (of 1 MiB), which also differs at the destination.
const IN_CHANGED: u64 = MIB + 0x8_0200;
/// A bad sector in block 5, which the destination holds already.
const IN_SAME: u64 = 5 * MIB + 0xe00;
/// What the destination held in the first bad sector: it must stay.
const YESTERDAY: u8 = 0x5a;

const PYTHON: &str = "/usr/bin/python3";
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/faulty_fuse.py");

/// What this machine lacks for these tests, if anything.
fn missing() -> Option<String> {
    let ok = |cmd: &mut Command| {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse".into());
    }
    if !ok(Command::new("losetup").arg("-V")) {
        return Some("no losetup".into());
    }
    let fusepy = "try:\n import fusepy\nexcept ImportError:\n import fuse";
    if !ok(Command::new(PYTHON).args(["-c", fusepy])) {
        return Some(format!(
            "{PYTHON} lacks fusepy (apt install python3-fusepy)"
        ));
    }
    if !ok(Command::new("ddrescuelog").arg("-V")) || !ok(Command::new("ddrescue").arg("-V")) {
        return Some("no ddrescue/ddrescuelog (apt install gddrescue)".into());
    }
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    });
    if !root {
        return Some("FUSE mounts and loop devices need root".into());
    }
    None
}

/// A bad range: `len` bytes at `at`, failing forever or the first `tries`
/// reads.
struct Bad {
    at: u64,
    len: u64,
    tries: Option<u32>,
}

fn bad(at: u64) -> Bad {
    Bad {
        at,
        len: 512,
        tries: None,
    }
}

/// The image mounted through FUSE and a loop device on it; all undone on
/// drop, failure or not.
struct Faulty {
    child: Child,
    mnt: PathBuf,
    dev: Option<String>,
}

impl Faulty {
    fn new(dir: &TempDir, name: &str, image: &Path, bad: &[Bad], delay: f64) -> Faulty {
        let mnt = dir.join(name);
        std::fs::create_dir_all(&mnt).expect("mount point");
        let mut cmd = Command::new(PYTHON);
        cmd.arg(SCRIPT);
        if delay > 0.0 {
            cmd.args(["--delay", &delay.to_string()]);
        }
        cmd.arg(image).arg(&mnt);
        for b in bad {
            match b.tries {
                Some(t) => cmd.arg(format!("{}:{}:{t}", b.at, b.len)),
                None => cmd.arg(format!("{}:{}", b.at, b.len)),
            };
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the FUSE helper");
        let mut faulty = Faulty {
            child,
            mnt,
            dev: None,
        };
        let file = faulty.mnt.join("disk");
        let size = std::fs::metadata(image).expect("image").len();
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::fs::metadata(&file).map(|m| m.len()).ok() != Some(size) {
            assert!(Instant::now() < deadline, "the FUSE mount did not appear");
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = Command::new("losetup")
            .args(["-r", "--direct-io=on", "-f", "--show"])
            .arg(&file)
            .output()
            .expect("losetup");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        faulty.dev = Some(String::from_utf8_lossy(&out.stdout).trim().to_string());
        faulty
    }

    fn dev(&self) -> &str {
        self.dev.as_deref().expect("a loop device")
    }
}

impl Drop for Faulty {
    fn drop(&mut self) {
        if let Some(dev) = &self.dev {
            let _ = Command::new("losetup").arg("-d").arg(dev).status();
        }
        let unmounted = Command::new("umount")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The source image and a destination that differs in block 1 (and holds
/// yesterday's bytes in the sector that will not read).
fn images(dir: &TempDir) -> (PathBuf, PathBuf, Vec<u8>) {
    let src = random_bytes(SIZE, 22);
    let mut dst = src.clone();
    dst[MIB as usize..MIB as usize + 300].fill(1);
    dst[IN_CHANGED as usize..IN_CHANGED as usize + 512].fill(YESTERDAY);
    let (s, d) = (dir.join("src.img"), dir.join("dst.img"));
    write_file(&s, &src);
    write_file(&d, &dst);
    (s, d, src)
}

/// The destination equals the source except in the bad sectors, where it
/// holds what it held before.
fn check_destination(dst: &Path, src: &[u8], kept: &[(u64, u8)]) {
    let got = read_file(dst);
    assert_eq!(got.len(), src.len());
    let mut want = src.to_vec();
    for &(at, byte) in kept {
        want[at as usize..at as usize + 512].fill(byte);
    }
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!("destination differs at byte {i:#x}");
    }
}

/// The map, read by bsync and by `ddrescuelog`.
fn read_map(path: &Path) -> Map {
    let text = std::fs::read_to_string(path).expect("the map");
    let out = Command::new("ddrescuelog")
        .arg("-t")
        .arg(path)
        .output()
        .expect("ddrescuelog");
    assert!(
        out.status.success(),
        "ddrescuelog refuses the map:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Map::parse(&text).unwrap_or_else(|e| panic!("{e}:\n{text}"))
}

fn bad_areas(map: &Map) -> Vec<(u64, u64)> {
    map.areas()
        .iter()
        .filter(|a| a.status != Status::Finished)
        .map(|a| (a.pos, a.size))
        .collect()
}

/// The `-` areas of a map.
fn bad_sectors(map: &Map) -> Vec<(u64, u64)> {
    map.areas()
        .iter()
        .filter(|a| a.status == Status::Bad)
        .map(|a| (a.pos, a.size))
        .collect()
}

/// The map `ddrescue -d` writes for `dev`.
fn ddrescue_map(dir: &TempDir, dev: &str) -> Map {
    let (out, map) = (dir.join("ddrescue.out"), dir.join("ddrescue.map"));
    let _ = std::fs::remove_file(&map);
    let status = Command::new("ddrescue")
        .args(["-d", "-q", dev])
        .arg(&out)
        .arg(&map)
        .status()
        .expect("ddrescue");
    assert!(status.success(), "ddrescue failed");
    read_map(&map)
}

/// bsync loses no more than `ddrescue -d`: each of its bad areas lies in
/// one of ddrescue's, and they add up to no more.
fn no_worse_than_ddrescue(ours: &Map, theirs: &Map) {
    let (a, b) = (bad_areas(ours), bad_areas(theirs));
    for &(pos, size) in &a {
        assert!(
            b.iter().any(|&(p, s)| p <= pos && pos + size <= p + s),
            "bsync's bad area {pos:#x}+{size:#x} is not bad for ddrescue: {b:x?}"
        );
    }
    let total = |v: &[(u64, u64)]| v.iter().map(|x| x.1).sum::<u64>();
    assert!(total(&a) <= total(&b), "{a:x?} against ddrescue's {b:x?}");
}

fn one_finished_line(map: &Map, size: u64) {
    let want = [bsync::rescue::map::Area {
        pos: 0,
        size,
        status: Status::Finished,
    }];
    assert_eq!(map.areas(), want);
}

#[test]
fn local_rescue_loses_only_the_bad_sectors_with_one_and_four_workers() {
    if let Some(why) = missing() {
        return skip(&why);
    }
    let dir = TempDir::new("rescue-local");
    let (src, _, data) = images(&dir);
    let faulty = Faulty::new(&dir, "mnt", &src, &[bad(IN_CHANGED), bad(IN_SAME)], 0.0);
    let theirs = ddrescue_map(&dir, faulty.dev());
    for workers in ["1", "4"] {
        let (_, dst, _) = images(&dir);
        let map = dir.join(&format!("w{workers}.map"));
        let mut cmd = bsync();
        cmd.arg("-f").arg(faulty.dev()).arg("-t").arg(&dst);
        cmd.args(["-b", "1M", "-w", workers, "-rescue"]).arg(&map);
        let err = run_status(&mut cmd, 4);
        assert!(
            err.contains("1.0 KiB (1024 bytes) of the source could not be read"),
            "{err}"
        );
        assert!(err.contains(&map.display().to_string()), "{err}");
        assert!(!err.contains("resume with -s"), "{err}");
        check_destination(&dst, &data, &[(IN_CHANGED, YESTERDAY)]);
        let ours = read_map(&map);
        assert_eq!(bad_areas(&ours), [(IN_CHANGED, 512), (IN_SAME, 512)]);
        no_worse_than_ddrescue(&ours, &theirs);
    }
    // Without -rescue the first read error still ends the run.
    let (_, dst, _) = images(&dir);
    let err = run_status(
        bsync()
            .arg("-f")
            .arg(faulty.dev())
            .arg("-t")
            .arg(&dst)
            .args(["-b", "1M"]),
        1,
    );
    assert!(err.contains("read at block 1: Input/output error"), "{err}");
}

/// Local mode reads a block in pieces (`config::LOCAL_PIECE`): a block
/// with a bad sector in two of its pieces keeps both bad in the map once
/// the block is written, not only the last piece's.
#[test]
fn local_rescue_keeps_the_bad_sectors_of_every_piece_of_a_block() {
    if let Some(why) = missing() {
        return skip(&why);
    }
    let dir = TempDir::new("rescue-pieces");
    let (src, dst, data) = images(&dir);
    let first_piece = MIB + 0x200;
    assert!(IN_CHANGED - MIB >= bsync::config::LOCAL_PIECE as u64);
    let faulty = Faulty::new(&dir, "mnt", &src, &[bad(first_piece), bad(IN_CHANGED)], 0.0);
    let map = dir.join("pieces.map");
    let mut cmd = bsync();
    cmd.arg("-f").arg(faulty.dev()).arg("-t").arg(&dst);
    cmd.args(["-b", "2M", "-rescue"]).arg(&map);
    let err = run_status(&mut cmd, 4);
    assert!(
        err.contains("(1024 bytes) of the source could not be read"),
        "{err}"
    );
    // The destination held the source's bytes in the first bad sector.
    check_destination(&dst, &data, &[(IN_CHANGED, YESTERDAY)]);
    let ours = read_map(&map);
    assert_eq!(bad_areas(&ours), [(first_piece, 512), (IN_CHANGED, 512)]);
}

/// A server on a free loopback port: the child and its `HOST:PORT`.
fn server(args: &[&std::ffi::OsStr]) -> (Child, String) {
    let mut child = bsync()
        .args(["-p", "0", "-i", "127.0.0.1"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the server");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the server's port");
    (child, format!("127.0.0.1:{}", line.trim()))
}

fn finish(child: Child) -> (Option<i32>, String) {
    let out = child.wait_with_output().expect("wait for the server");
    (out.status.code(), stderr(&out))
}

#[test]
fn upload_and_download_rescue_write_nothing_where_the_source_failed() {
    if let Some(why) = missing() {
        return skip(&why);
    }
    let dir = TempDir::new("rescue-net");
    let (src, _, data) = images(&dir);
    let faulty = Faulty::new(&dir, "mnt", &src, &[bad(IN_CHANGED), bad(IN_SAME)], 0.0);
    let theirs = ddrescue_map(&dir, faulty.dev());
    let dev = std::ffi::OsStr::new(faulty.dev());

    // Upload: the client reads the failing device.
    let (_, dst, _) = images(&dir);
    let map = dir.join("up.map");
    let (srv, addr) = server(&["-f".as_ref(), dst.as_os_str()]);
    let mut cmd = bsync();
    cmd.arg("-f")
        .arg(dev)
        .args(["-r", &addr, "-b", "1M", "-w", "4", "-rescue"]);
    let err = run_status(cmd.arg(&map), 4);
    assert!(err.contains("both ends agree"), "{err}");
    let (code, srv_err) = finish(srv);
    assert_eq!(code, Some(4), "{srv_err}");
    assert!(
        srv_err.contains("1.0 KiB (1024 bytes) the source could not read"),
        "{srv_err}"
    );
    check_destination(&dst, &data, &[(IN_CHANGED, YESTERDAY)]);
    no_worse_than_ddrescue(&read_map(&map), &theirs);

    // Download: the server reads it.
    let (_, dst, _) = images(&dir);
    let map = dir.join("down.map");
    let (srv, addr) = server(&[
        "-d".as_ref(),
        "-b".as_ref(),
        "1M".as_ref(),
        "-f".as_ref(),
        dev,
        "-rescue".as_ref(),
        map.as_os_str(),
    ]);
    let err = run_status(bsync().arg("-f").arg(&dst).args(["-d", "-r", &addr]), 4);
    assert!(
        err.contains("the source could not read were not written"),
        "{err}"
    );
    let (code, srv_err) = finish(srv);
    assert_eq!(code, Some(4), "{srv_err}");
    check_destination(&dst, &data, &[(IN_CHANGED, YESTERDAY)]);
    let ours = read_map(&map);
    assert_eq!(bad_areas(&ours), [(IN_CHANGED, 512), (IN_SAME, 512)]);
    no_worse_than_ddrescue(&ours, &theirs);
}

#[test]
fn a_sector_that_fails_once_reads_on_the_retry() {
    if let Some(why) = missing() {
        return skip(&why);
    }
    let dir = TempDir::new("rescue-retry");
    let (src, dst, data) = images(&dir);
    let once = Bad {
        tries: Some(1),
        ..bad(IN_CHANGED)
    };
    let faulty = Faulty::new(&dir, "mnt", &src, &[once], 0.0);
    let map = dir.join("map");
    let mut cmd = bsync();
    cmd.arg("-f").arg(faulty.dev()).arg("-t").arg(&dst);
    run_ok(cmd.args(["-b", "1M", "-rescue"]).arg(&map));
    check_destination(&dst, &data, &[]);
    one_finished_line(&read_map(&map), SIZE as u64);
}

#[test]
fn a_healthy_source_gives_a_map_of_one_finished_area() {
    if let Some(why) = missing() {
        return skip(&why);
    }
    let dir = TempDir::new("rescue-healthy");
    let (src, dst, _) = images(&dir);
    let map = dir.join("map");
    let err = run_ok(&mut local(
        &src,
        &dst,
        &["-rescue", map.to_str().expect("UTF-8")],
    ));
    assert!(
        err.contains("rescue: 8.0 MiB rescued, 0 B unreadable"),
        "{err}"
    );
    assert_same(&src, &dst);
    one_finished_line(&read_map(&map), SIZE as u64);
}

/// A map's finished areas are neither read nor verified again, so the map
/// of another source (another size) is refused before anything is written
/// (once it was taken, its "finished" blocks skipped, exit 0 with holes).
#[test]
fn the_map_of_another_source_is_refused() {
    let dir = TempDir::new("rescue-other-map");
    let (src, dst, _) = images(&dir);
    let small = dir.join("small.img");
    write_file(&small, &random_bytes(SIZE / 2, 23));
    let map = dir.join("map");
    let copy = dir.join("copy.img");
    run_ok(&mut local(
        &small,
        &copy,
        &["-rescue", map.to_str().expect("UTF-8")],
    ));
    let before = read_file(&dst);
    let err = run_status(
        &mut local(&src, &dst, &["-rescue", map.to_str().expect("UTF-8")]),
        2,
    );
    assert!(err.contains("map of another source"), "{err}");
    assert_eq!(read_file(&dst), before);
}

#[test]
fn an_interrupted_rescue_resumes_from_its_map_and_the_map_shrinks() {
    if let Some(why) = missing() {
        return skip(&why);
    }
    let dir = TempDir::new("rescue-resume");
    let (src, dst, data) = images(&dir);
    let map = dir.join("map");
    {
        // A slow disk: interrupted once part of it is in the map.
        let slow = Faulty::new(&dir, "slow", &src, &[bad(IN_CHANGED), bad(IN_SAME)], 0.05);
        let mut child = bsync()
            .arg("-f")
            .arg(slow.dev())
            .arg("-t")
            .arg(&dst)
            .args(["-b", "1M", "-rescue"])
            .arg(&map)
            .stderr(Stdio::null())
            .spawn()
            .expect("start bsync");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let partial = std::fs::read_to_string(&map)
                .ok()
                .and_then(|t| Map::parse(&t).ok())
                .is_some_and(|m| m.totals().0 >= 2 * MIB);
            if partial {
                break;
            }
            assert!(Instant::now() < deadline, "no progress in the map");
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let status = child.wait().expect("wait for bsync");
        assert_ne!(status.code(), Some(0));
    }
    let interrupted = read_map(&map);
    let (done, _, untried) = interrupted.totals();
    assert!(done >= 2 * MIB && untried > 0, "{interrupted:?}");
    // Resumed: the finished blocks are not read again.
    {
        let faulty = Faulty::new(&dir, "again", &src, &[bad(IN_CHANGED), bad(IN_SAME)], 0.0);
        let mut cmd = bsync();
        cmd.arg("-f").arg(faulty.dev()).arg("-t").arg(&dst);
        let err = run_status(cmd.args(["-b", "1M", "-rescue"]).arg(&map), 4);
        // The destination is read whole, the source but for its blocks
        // the map says are finished.
        let finished = (0..8)
            .filter(|b| interrupted.finished(b * MIB, MIB))
            .count();
        assert!(finished >= 1, "{interrupted:?}");
        let read = summary(&err).read;
        assert!(read <= ((16 - finished as u64) * MIB) as f64, "{err}");
        let resumed = read_map(&map);
        assert_eq!(bad_areas(&resumed), [(IN_CHANGED, 512), (IN_SAME, 512)]);
        assert_eq!(resumed.pass, interrupted.pass + 1);
    }
    check_destination(&dst, &data, &[(IN_CHANGED, YESTERDAY)]);
    // One sector comes back: the map shrinks, the destination gets it.
    let faulty = Faulty::new(&dir, "healed", &src, &[bad(IN_SAME)], 0.0);
    let mut cmd = bsync();
    cmd.arg("-f").arg(faulty.dev()).arg("-t").arg(&dst);
    let err = run_status(cmd.args(["-b", "1M", "-rescue"]).arg(&map), 4);
    assert!(
        err.contains("512 B (512 bytes) of the source could not be read"),
        "{err}"
    );
    assert_eq!(bad_areas(&read_map(&map)), [(IN_SAME, 512)]);
    check_destination(&dst, &data, &[]);
}

/// `bsync --patch[=DST]` with the patch on stdin (a file, or a pipe).
fn apply(patch: &Path, dst: &Path, pipe: bool, extra: &[&str], code: i32) -> String {
    let mut cmd = bsync();
    cmd.arg(format!("--patch={}", dst.display())).args(extra);
    if !pipe {
        cmd.stdin(std::fs::File::open(patch).expect("the patch"));
        return run_status(&mut cmd, code);
    }
    let child = cmd
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bsync --patch");
    let mut stdin = child.stdin.as_ref().expect("stdin");
    // A refused target may stop reading early: a broken pipe is fine.
    let _ = std::io::Write::write_all(&mut stdin, &read_file(patch));
    let out = {
        let mut child = child;
        drop(child.stdin.take());
        child.wait_with_output().expect("wait for bsync --patch")
    };
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    err
}

/// A patch made from a failing source marks the sectors that did not read
/// as unknown (format version 3): applying it (from a file or a pipe)
/// writes everything else, leaves the target's bytes there, and checks
/// the result; a wrong target is refused before any write; the undo patch
/// saved while applying puts the target back; bdsync's client form makes
/// the same patch. The runs that read the source exit 4.
#[test]
fn a_patch_from_a_failing_source_marks_unread_sectors_unknown() {
    if let Some(why) = missing() {
        return skip(&why);
    }
    let dir = TempDir::new("rescue-patch");
    let (src, dst, data) = images(&dir);
    let original = read_file(&dst);
    // Two sectors across the line between two 64 KiB grains, too.
    let across = Bad {
        len: 1024,
        ..bad(2 * MIB + 0x1_fe00)
    };
    let faulty = Faulty::new(
        &dir,
        "mnt",
        &src,
        &[bad(IN_CHANGED), across, bad(IN_SAME)],
        0.0,
    );
    let lost = [
        (IN_CHANGED, 512),
        (2 * MIB + 0x1_fe00, 1024),
        (IN_SAME, 512),
    ];
    let (patch, map) = (dir.join("p.bsync"), dir.join("p.map"));
    let mut cmd = bsync();
    cmd.arg("-f").arg(faulty.dev()).arg("-t").arg(&dst);
    cmd.args(["-b", "1M", "-rescue"]).arg(&map);
    let err = run_status(cmd.arg("--write-patch").arg(&patch), 4);
    assert!(
        err.contains("2.0 KiB (2048 bytes) of the source could not be read"),
        "{err}"
    );
    // New-user trial: it said they "were not written", as of a copy.
    assert!(err.contains("are unknown spans of the patch"), "{err}");
    assert!(!err.contains("were not written"), "{err}");
    assert_eq!(read_file(&dst), original, "a dry run wrote the destination");
    let bytes = read_file(&patch);
    assert_eq!(&bytes[8..10], &3u16.to_le_bytes(), "not a version 3 patch");
    // The bad sectors are `-`; what was read is in the patch, not at the
    // destination, so it stays `?` (read again by a later run).
    let made = read_map(&map);
    assert_eq!(bad_sectors(&made), lost);
    assert_eq!(made.totals(), (0, 2048, SIZE as u64 - 2048));

    // Another image: refused before anything is written, from a file and a pipe.
    let wrong = dir.join("wrong.img");
    let mut other = original.clone();
    other[7 * MIB as usize] ^= 1;
    write_file(&wrong, &other);
    for pipe in [false, true] {
        let err = apply(&patch, &wrong, pipe, &[], 1);
        assert!(err.contains("the target is untouched"), "{err}");
        assert_eq!(read_file(&wrong), other);
    }

    // The right one, from a file with an undo patch, and from a pipe.
    let undo = dir.join("undo.bsync");
    let undo_arg = format!("--remdata={}", undo.display());
    apply(&patch, &dst, false, &[&undo_arg], 0);
    check_destination(&dst, &data, &[(IN_CHANGED, YESTERDAY)]);
    let err = apply(&patch, &dst, false, &[], 0);
    assert!(err.contains("already applied"), "{err}");
    apply(&undo, &dst, false, &[], 0);
    assert_eq!(read_file(&dst), original, "the undo patch");
    apply(&patch, &dst, true, &[], 0);
    check_destination(&dst, &data, &[(IN_CHANGED, YESTERDAY)]);

    // bdsync's client form, over a remote shell.
    write_file(&dst, &original);
    let map = dir.join("bdsync.map");
    let out = run(bsync()
        .arg(format!("{} --server", env!("CARGO_BIN_EXE_bsync")))
        .arg(faulty.dev())
        .arg(&dst)
        .args(["--blocksize=1M", "--rescue"])
        .arg(&map));
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    write_file(&patch, &out.stdout);
    apply(&patch, &dst, false, &[], 0);
    check_destination(&dst, &data, &[(IN_CHANGED, YESTERDAY)]);
    assert_eq!(bad_sectors(&read_map(&map)), lost);
    assert_eq!(read_map(&map).totals().0, 0);
    // A sync with that map afterwards reads every block again and retries
    // the bad sectors: only then is the rest `+`.
    let mut cmd = bsync();
    cmd.arg("-f").arg(faulty.dev()).arg("-t").arg(&dst);
    run_status(cmd.args(["-b", "1M", "-rescue"]).arg(&map), 4);
    check_destination(&dst, &data, &[(IN_CHANGED, YESTERDAY)]);
    let synced = read_map(&map);
    assert_eq!(bad_areas(&synced), lost);
    assert_eq!(synced.totals(), (SIZE as u64 - 2048, 2048, 0));
}

/// A TCP relay to `to` whose first connection is cut once the client has
/// sent `after` bytes; later connections (the client rejoining) pass whole.
fn cutting_relay(to: String, after: usize) -> String {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
    let addr = listener.local_addr().expect("the relay's address");
    std::thread::spawn(move || {
        // Ends with the test's process; a few connections at most.
        for (i, client) in listener.incoming().take(16).enumerate() {
            let (Ok(mut up_in), Ok(mut down_out)) = (client, TcpStream::connect(&to)) else {
                return;
            };
            let (Ok(mut down_in), Ok(mut up_out)) = (down_out.try_clone(), up_in.try_clone())
            else {
                return;
            };
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut down_in, &mut up_out);
                let _ = up_out.shutdown(Shutdown::Both);
            });
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut sent = 0;
                while let Ok(n) = up_in.read(&mut buf) {
                    let cut = i == 0 && sent + n >= after;
                    let n = if cut { after - sent } else { n };
                    if n == 0 && !cut || down_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    sent += n;
                    if cut {
                        break;
                    }
                }
                let _ = down_out.shutdown(Shutdown::Both);
                let _ = up_in.shutdown(Shutdown::Both);
            });
        }
    });
    addr.to_string()
}

/// A block sent again after a lost connection is read again through the
/// rescue: its bad sector is skipped again, not a read error that ends the
/// run (once it was read plainly and failed the run).
#[test]
fn a_block_sent_again_after_a_rejoin_is_read_through_the_rescue() {
    if let Some(why) = missing() {
        return skip(&why);
    }
    let dir = TempDir::new("rescue-rejoin");
    let (src, dst, data) = images(&dir);
    let faulty = Faulty::new(&dir, "mnt", &src, &[bad(IN_CHANGED), bad(IN_SAME)], 0.0);
    let map = dir.join("map");
    let (srv, addr) = server(&["-f".as_ref(), dst.as_os_str()]);
    // Cut inside block 1's data (two changed pages, 8 KiB), which follows
    // the handshake and a few short frames.
    let relay = cutting_relay(addr, 3000);
    let mut cmd = bsync();
    cmd.arg("-f")
        .arg(faulty.dev())
        .args(["-r", &relay, "-b", "1M", "-rescue"])
        .arg(&map);
    let err = run_status(&mut cmd, 4);
    assert!(err.contains("reconnecting"), "{err}");
    assert!(err.contains("both ends agree"), "{err}");
    let (code, srv_err) = finish(srv);
    assert_eq!(code, Some(4), "{srv_err}");
    check_destination(&dst, &data, &[(IN_CHANGED, YESTERDAY)]);
    assert_eq!(
        bad_areas(&read_map(&map)),
        [(IN_CHANGED, 512), (IN_SAME, 512)]
    );

    // Again with the map, a block it marks finished changed meanwhile: sent
    // again after a cut (wherever it falls among the short frames of the
    // finished blocks), it is still taken on the map's word, as the first
    // time (read and sent instead, the verification failed).
    let mut changed = read_file(&dst);
    changed[3 * MIB as usize] ^= 1;
    write_file(&dst, &changed);
    for after in (300..1500).step_by(100) {
        let (srv, addr) = server(&["-f".as_ref(), dst.as_os_str()]);
        let relay = cutting_relay(addr, after);
        let mut cmd = bsync();
        cmd.arg("-f")
            .arg(faulty.dev())
            .args(["-r", &relay, "-b", "1M", "-rescue"])
            .arg(&map);
        let err = run_status(&mut cmd, 4);
        assert!(err.contains("reconnecting"), "cut at {after}: {err}");
        let (code, srv_err) = finish(srv);
        assert_eq!(code, Some(4), "cut at {after}: {srv_err}");
        assert_eq!(read_file(&dst), changed, "cut at {after}");
    }
}

/// A map's finished blocks are trusted, neither read nor verified: the
/// summary, `-json` and the verification line count them as skipped, not
/// as "same" (once they were counted same, and called verified).
#[test]
fn blocks_a_map_marks_finished_are_reported_skipped_not_verified() {
    let dir = TempDir::new("rescue-skipped");
    let (src, dst, _) = images(&dir);
    let map = dir.join("map");
    let m = map.to_str().expect("UTF-8");
    run_ok(&mut local(&src, &dst, &["-b", "1M", "-rescue", m]));
    // A change made since is not seen: the map vouches for every block.
    let mut changed = read_file(&dst);
    changed[3 * MIB as usize] ^= 1;
    write_file(&dst, &changed);
    let out = run(&mut local(&src, &dst, &["-b", "1M", "-rescue", m, "-json"]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(
            "0 same, 0 changed, 0 zero; 8 blocks finished in the rescue map skipped, not verified"
        ),
        "{err}"
    );
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(json.contains("\"same\":0,"), "{json}");
    assert!(json.contains("\"skipped_by_map\":8,"), "{json}");
    assert_eq!(read_file(&dst), changed);

    // Over the network the source's verification line says so too.
    let (srv, addr) = server(&["-f".as_ref(), dst.as_os_str()]);
    let err = run_ok(
        bsync()
            .arg("-f")
            .arg(&src)
            .args(["-r", &addr, "-b", "1M", "-rescue", m]),
    );
    assert!(
        err.contains(
            "(8 blocks finished in the rescue map skipped, not verified): both ends agree"
        ),
        "{err}"
    );
    assert!(err.contains("0 same"), "{err}");
    let (code, srv_err) = finish(srv);
    assert_eq!(code, Some(0), "{srv_err}");
}

/// A patch run writes nothing at the destination, so its map never says
/// the destination holds what it read: those blocks stay `?` (once they
/// turned `+`, and a plain sync with the same map skipped them and exited
/// 0 with a destination unlike the source). A later run reads them again.
#[test]
fn a_patch_run_leaves_the_blocks_it_read_to_be_read_again() {
    let dir = TempDir::new("rescue-patch-map");
    let (src, dst, _) = images(&dir);
    let original = read_file(&dst);
    let (map, patch) = (dir.join("map"), dir.join("p.bsync"));
    let m = map.to_str().expect("UTF-8");
    let p = patch.to_str().expect("UTF-8");
    let err = run_ok(&mut local(
        &src,
        &dst,
        &["-b", "1M", "-rescue", m, "--write-patch", p],
    ));
    assert!(err.contains("read into the patch"), "{err}");
    assert_eq!(read_file(&dst), original, "a dry run wrote the destination");
    let text = std::fs::read_to_string(&map).expect("the map");
    let made = Map::parse(&text).unwrap_or_else(|e| panic!("{e}:\n{text}"));
    assert_eq!(made.totals(), (0, 0, SIZE as u64), "{text}");
    // The patch not applied: a plain sync with the same map reads and
    // writes every block.
    let err = run_ok(&mut local(&src, &dst, &["-b", "1M", "-rescue", m]));
    assert!(!err.contains("skipped"), "{err}");
    assert_same(&src, &dst);
    let text = std::fs::read_to_string(&map).expect("the map");
    one_finished_line(&Map::parse(&text).expect("a map"), SIZE as u64);
}

/// Ctrl-C writes the map as it stands: every block the destination has
/// acknowledged is `+` in it (it lagged up to a second of blocks behind,
/// which a resumed run read again). A slow upload (`-bwlimit`), stopped
/// 0.6 s after a save of the map.
#[test]
fn an_interrupted_run_leaves_a_map_of_every_acknowledged_block() {
    const BLOCK: usize = 128 << 10;
    let dir = TempDir::new("rescue-interrupt-map");
    let (src, dst, map) = (dir.join("src.img"), dir.join("dst.img"), dir.join("map"));
    let data = random_bytes(SIZE, 24);
    write_file(&src, &data);
    write_file(&dst, &random_bytes(SIZE, 25));
    let (mut srv, addr) = server(&["-f".as_ref(), dst.as_os_str()]);
    let mut client = bsync()
        .arg("-f")
        .arg(&src)
        .args(["-r", &addr, "-b", "128K", "-bwlimit", "2M", "-rescue"])
        .arg(&map)
        .stderr(Stdio::null())
        .spawn()
        .expect("start bsync");
    let finished = || {
        std::fs::read_to_string(&map)
            .ok()
            .and_then(|t| Map::parse(&t).ok())
            .map_or(0, |m| m.totals().0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while finished() == 0 {
        assert!(Instant::now() < deadline, "no block finished in the map");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(600));
    let _ = Command::new("kill")
        .args(["-INT", &client.id().to_string()])
        .status();
    let status = client.wait().expect("wait for bsync");
    assert_eq!(status.code(), Some(130));
    // The server waits for its client to come back: its job is done.
    let _ = srv.kill();
    let _ = srv.wait();
    let text = std::fs::read_to_string(&map).expect("the map");
    let m = Map::parse(&text).expect("a map");
    let got = read_file(&dst);
    let blocks = SIZE / BLOCK;
    let at = |b: usize| b * BLOCK..(b + 1) * BLOCK;
    let written = (0..blocks).filter(|&b| got[at(b)] == data[at(b)]).count();
    let marked: Vec<usize> = (0..blocks)
        .filter(|&b| m.finished((b * BLOCK) as u64, BLOCK as u64))
        .collect();
    assert!(
        marked.iter().all(|&b| got[at(b)] == data[at(b)]),
        "a block marked + is not at the destination:\n{text}"
    );
    assert!(
        written < blocks && written <= marked.len() + 4,
        "{written} blocks written, {} marked +:\n{text}",
        marked.len()
    );
}

/// New-user trial: `--write-patch F -rescue F` exited 0, the map
/// overwriting the patch. The same file for both is a usage error (exit
/// 2), locally and over -t, by name or through another path to it.
#[test]
fn the_map_and_the_patch_are_never_the_same_file() {
    let dir = TempDir::new("rescue-map-is-patch");
    let (src, dst, _) = images(&dir);
    let patch = dir.join("p.bsync");
    write_file(&patch, b"old patch");
    let other = dir.join("sub/../p.bsync");
    std::fs::create_dir(dir.join("sub")).unwrap();
    let link = dir.join("link.bsync");
    std::os::unix::fs::symlink(&patch, &link).unwrap();
    let new = dir.join("new.bsync");
    for (patch, map) in [
        (&patch, &patch),
        (&patch, &other),
        (&patch, &link),
        (&new, &new),
    ] {
        for remote in [false, true] {
            let mut cmd = bsync();
            cmd.arg("-f").arg(&src).arg("-t");
            if remote {
                cmd.arg(format!("nobody@127.0.0.1:{}", dst.display()));
            } else {
                cmd.arg(&dst);
            }
            cmd.args(["-b", "1M", "--write-patch"])
                .arg(patch)
                .arg("-rescue")
                .arg(map);
            let out = run(&mut cmd);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{map:?} {remote}: {err}");
            assert!(err.contains("is the --write-patch file"), "{err}");
            assert!(
                err.contains("the patch are two files"),
                "one line, one space: {err}"
            );
        }
    }
    assert_eq!(read_file(&patch), b"old patch");
    assert!(!new.exists());
}
