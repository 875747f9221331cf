//! Linux I/O through the real binary: block devices (loop devices on files)
//! as source and destination in local, upload and download modes; a too
//! small, a larger, a mounted and a busy destination device; `-a`; and
//! clearing zeros on file systems with and without hole punching.
//!
//! Loop devices, mounts and ramfs need root. Without it (or without
//! `losetup`) each test calls `common::skip`, which says so in one line and
//! passes, except under CI, where it fails.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;

const MIB: usize = 1 << 20;

/// A loop device on a backing file, detached on drop even when the test
/// fails.
struct Loop {
    dev: PathBuf,
}

impl Loop {
    /// Attach `backing`; `None` (after saying why) when this machine cannot.
    fn attach(backing: &Path) -> Option<Loop> {
        Loop::attach_with(backing, &[])
    }

    /// Attach `backing` with more `losetup` options (`-r`: read-only).
    fn attach_with(backing: &Path, options: &[&str]) -> Option<Loop> {
        let out = Command::new("losetup")
            .args(options)
            .args(["-f", "--show"])
            .arg(backing)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Loop {
                dev: PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
            }),
            Ok(o) => {
                common::skip(&format!(
                    "losetup failed (loop devices need root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
                None
            }
            Err(e) => {
                common::skip(&format!("cannot run losetup: {e}"));
                None
            }
        }
    }

    fn path(&self) -> &Path {
        &self.dev
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A file system mounted on a directory, unmounted on drop.
struct Mounted {
    dir: PathBuf,
}

impl Mounted {
    /// `mount ARGS... DIR`; `None` (after saying why) when it fails.
    fn new(args: &[&str], dir: &Path) -> Option<Mounted> {
        fs::create_dir_all(dir).expect("mount point");
        let out = Command::new("mount").args(args).arg(dir).output();
        match out {
            Ok(o) if o.status.success() => Some(Mounted {
                dir: dir.to_path_buf(),
            }),
            Ok(o) => {
                common::skip(&format!(
                    "mount {args:?} failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
                None
            }
            Err(e) => {
                common::skip(&format!("cannot run mount: {e}"));
                None
            }
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// A backing file with `bytes`, and a loop device on it.
fn device(dir: &TempDir, name: &str, bytes: &[u8]) -> Option<Loop> {
    let backing = dir.join(name);
    write_file(&backing, bytes);
    Loop::attach(&backing)
}

/// Every byte of a device (or file), read through the device node.
fn read_all(path: &Path) -> Vec<u8> {
    read_file(path)
}

/// Like `assert_eq!` on the bytes, without printing megabytes.
fn assert_bytes(path: &Path, want: &[u8]) {
    let got = read_all(path);
    assert_eq!(got.len(), want.len(), "{}: size", path.display());
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{} differs from what it should hold first at byte {at}",
            path.display()
        );
    }
}

/// Random data with some all-zero runs, so zero clearing is exercised.
fn with_zeros(len: usize, seed: u64) -> Vec<u8> {
    let mut v = random_bytes(len, seed);
    for (i, chunk) in v.chunks_mut(256 * 1024).enumerate() {
        if i % 3 == 1 {
            chunk.fill(0);
        }
    }
    v
}

#[test]
fn device_to_device_file_to_device_device_to_file() {
    let dir = TempDir::new("dev-local");
    let src = with_zeros(4 * MIB, 1);
    let Some(a) = device(&dir, "a", &src) else {
        return;
    };
    let Some(b) = device(&dir, "b", &random_bytes(4 * MIB, 2)) else {
        return;
    };
    // Device to device, verbose: the hints are reported, per disk, once.
    let err = run_ok(&mut local(a.path(), b.path(), &["-b", "256K", "-v"]));
    assert_bytes(b.path(), &src);
    let dst_label = format!("destination {}", b.path().display());
    assert!(
        err.lines()
            .any(|l| l.starts_with(&dst_label) && l.contains("read-ahead")),
        "no read-ahead line for the destination device:\n{err}"
    );
    let clear_lines = err.lines().filter(|l| l.contains("zero ranges")).count();
    assert_eq!(clear_lines, 1, "clearing reported once:\n{err}");
    let s = summary(&err);
    assert_eq!(s.blocks, 16, "{}", s.line);

    // Again: nothing left to do.
    let err = run_ok(&mut local(a.path(), b.path(), &["-b", "256K"]));
    assert_eq!(summary(&err).same, 16, "{err}");

    // File to device.
    let file = dir.join("file");
    let other = with_zeros(4 * MIB, 3);
    write_file(&file, &other);
    run_ok(&mut local(&file, b.path(), &["-b", "1M", "-w", "2"]));
    assert_bytes(b.path(), &other);

    // Device to a new file, then to a stale one.
    let copy = dir.join("copy");
    run_ok(&mut local(a.path(), &copy, &["-b", "1M"]));
    assert_bytes(&copy, &src);
    write_file(&copy, &random_bytes(5 * MIB, 4));
    run_ok(&mut local(a.path(), &copy, &["-b", "1M"]));
    assert_bytes(&copy, &src);
}

#[test]
fn zeros_are_cleared_on_a_device() {
    let dir = TempDir::new("dev-zero");
    let mut src = random_bytes(4 * MIB, 5);
    src[MIB..3 * MIB].fill(0);
    let file = dir.join("src");
    write_file(&file, &src);
    // Stale, non-zero bytes where the source is zero.
    let Some(dst) = device(&dir, "dst", &random_bytes(4 * MIB, 6)) else {
        return;
    };
    let err = run_ok(&mut local(&file, dst.path(), &["-b", "1M", "-v"]));
    assert_bytes(dst.path(), &src);
    let s = summary(&err);
    assert_eq!(s.zero, 2, "{}", s.line);
    assert!(about(s.cleared, 2 * MIB as u64), "{}", s.line);
    assert!(
        err.contains("zero ranges cleared with BLKZEROOUT")
            || err.contains("zero ranges cleared by writing zeros"),
        "{err}"
    );
    // The backing file agrees once the device is gone.
    let backing = dir.join("dst");
    drop(dst);
    assert!(read_file(&backing) == src, "the backing file differs");
}

#[test]
fn a_smaller_device_is_refused_untouched() {
    let dir = TempDir::new("dev-small");
    let file = dir.join("src");
    write_file(&file, &random_bytes(4 * MIB, 7));
    let before = random_bytes(2 * MIB, 8);
    let Some(dst) = device(&dir, "dst", &before) else {
        return;
    };
    let err = run_status(&mut local(&file, dst.path(), &["-b", "1M"]), 1);
    assert!(
        err.contains(&(2 * MIB).to_string()) && err.contains(&(4 * MIB).to_string()),
        "both sizes: {err}"
    );
    assert!(err.contains("smaller than the source"), "{err}");
    assert_bytes(dst.path(), &before);
}

#[test]
fn a_larger_device_keeps_its_tail_and_says_so() {
    let dir = TempDir::new("dev-large");
    let src = random_bytes(2 * MIB, 9);
    let file = dir.join("src");
    write_file(&file, &src);
    let before = random_bytes(3 * MIB, 10);
    let Some(dst) = device(&dir, "dst", &before) else {
        return;
    };
    let err = run_ok(&mut local(&file, dst.path(), &["-b", "1M"]));
    let mut want = src.clone();
    want.extend_from_slice(&before[2 * MIB..]);
    assert_bytes(dst.path(), &want);
    assert!(
        err.contains("is larger than the source by 1.0 MiB")
            && err.contains("bytes past the source's end were left alone"),
        "{err}"
    );
}

/// Mounted read-write (a live file system writes its own metadata, so the
/// device is checked for the source's bytes instead), then read-only (where
/// not a byte may change).
#[test]
fn a_mounted_device_is_refused() {
    let dir = TempDir::new("dev-mounted");
    let file = dir.join("src");
    let src = random_bytes(8 * MIB, 11);
    write_file(&file, &src);
    let Some(dst) = device(&dir, "dst", &vec![0u8; 8 * MIB]) else {
        return;
    };
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(dst.path())
        .output();
    if !mkfs.as_ref().is_ok_and(|o| o.status.success()) {
        return common::skip("mkfs.ext4 is not available or failed");
    }
    let dev = dst.path().to_str().expect("utf-8");
    let mnt = dir.join("mnt");
    for (options, how) in [("rw", "read-write"), ("ro", "read-only")] {
        let Some(mounted) = Mounted::new(&["-o", options, dev], &mnt) else {
            return;
        };
        let before = read_all(dst.path());
        let err = run_status(&mut local(&file, dst.path(), &["-b", "1M"]), 1);
        let mnt_name = mnt.to_str().expect("utf-8");
        assert!(
            err.contains(&format!("is mounted on {mnt_name} (ext4, {how})")),
            "{err}"
        );
        assert!(err.contains("nothing was written"), "{err}");
        let after = read_all(dst.path());
        let copied = after.chunks(MIB).zip(src.chunks(MIB)).any(|(a, b)| a == b);
        assert!(!copied, "{how}: a block of the source reached the device");
        if options == "ro" {
            assert!(after == before, "{how}: the device changed");
        }
        drop(mounted);
    }
}

#[test]
fn a_device_held_exclusively_is_refused() {
    let dir = TempDir::new("dev-busy");
    let file = dir.join("src");
    write_file(&file, &random_bytes(2 * MIB, 12));
    let before = random_bytes(2 * MIB, 13);
    let Some(dst) = device(&dir, "dst", &before) else {
        return;
    };
    // What a mounted file system, LVM or RAID does to the device.
    let held: File = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(dst.path())
        .expect("exclusive open");
    let err = run_status(&mut local(&file, dst.path(), &["-b", "1M"]), 1);
    assert!(err.contains("the device is in use"), "{err}");
    drop(held);
    assert_bytes(dst.path(), &before);
}

#[test]
fn list_shows_loop_devices() {
    let dir = TempDir::new("dev-list");
    let Some(dev) = device(&dir, "d", &random_bytes(MIB, 14)) else {
        return;
    };
    let out = run(bsync().arg("-a"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let name = dev.path().display().to_string();
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().next() == Some(&name) && l.contains("1.0 MiB")),
        "{name} of 1.0 MiB not listed:\n{text}"
    );
}

/// A bsync server process, killed on drop if still running.
struct Server(Child);

impl Server {
    /// Start `bsync -p 0 -i 127.0.0.1 ARGS`, return it and its port.
    fn start(args: &[&str]) -> (Server, String) {
        let mut child = bsync()
            .args(["-q", "-p", "0", "-i", "127.0.0.1"])
            .args(args)
            .env("BSYNC_IO_TIMEOUT", "10")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the server");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the server's port");
        let port = line.trim().to_string();
        assert!(port.parse::<u16>().is_ok(), "not a port: {line:?}");
        (Server(child), port)
    }

    /// Wait for the server to end; insist it succeeded.
    /// Wait for the server to exit 0; returns what it said on stderr.
    fn finish(mut self) -> String {
        let status = self.0.wait().expect("wait for the server");
        let mut err = String::new();
        if let Some(mut e) = self.0.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        assert!(status.success(), "server failed: {err}");
        err
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn client(port: &str, args: &[&str], file: &Path) -> Command {
    let mut cmd = bsync();
    cmd.args(["-r", &format!("127.0.0.1:{port}")])
        .args(args)
        .arg("-f")
        .arg(file)
        .env("BSYNC_IO_TIMEOUT", "10");
    cmd
}

#[test]
fn upload_into_a_device_and_download_from_one() {
    let dir = TempDir::new("dev-net");
    let src = with_zeros(4 * MIB, 15);
    let Some(dev) = device(&dir, "dev", &random_bytes(4 * MIB, 16)) else {
        return;
    };
    let dev_path = dev.path().to_str().expect("utf-8");

    // Upload: file -> server's device.
    let file = dir.join("src");
    write_file(&file, &src);
    let (server, port) = Server::start(&["-f", dev_path]);
    run_ok(&mut client(&port, &["-b", "256K", "-w", "2"], &file));
    server.finish();
    assert_bytes(dev.path(), &src);

    // Download: server's device -> a stale file.
    let copy = dir.join("copy");
    write_file(&copy, &random_bytes(3 * MIB, 17));
    let (server, port) = Server::start(&["-d", "-b", "256K", "-f", dev_path]);
    run_ok(&mut client(&port, &["-d"], &copy));
    server.finish();
    assert_bytes(&copy, &src);

    // Download into a device: the client's destination is a device too.
    let Some(dst) = device(&dir, "dst", &random_bytes(4 * MIB, 18)) else {
        return;
    };
    let (server, port) = Server::start(&["-d", "-b", "256K", "-f", dev_path]);
    run_ok(&mut client(&port, &["-d", "-w", "2"], dst.path()));
    server.finish();
    assert_bytes(dst.path(), &src);

    // An upload into a device that is too small fails on the server before
    // anything is written, and the client hears why.
    let big = dir.join("big");
    write_file(&big, &random_bytes(5 * MIB, 19));
    let before = read_all(dev.path());
    let (server, port) = Server::start(&["-f", dev_path]);
    let err = run_status(&mut client(&port, &["-b", "256K"], &big), 1);
    drop(server);
    assert!(err.contains("smaller than the source"), "{err}");
    assert_bytes(dev.path(), &before);
}

/// Sync a file with zero runs onto a stale file in `dir`, verbose; returns
/// stderr after checking the result is byte-identical.
fn sync_onto(dir: &Path, scratch: &TempDir) -> String {
    let mut src = random_bytes(4 * MIB, 20);
    src[512 * 1024..3 * MIB].fill(0);
    let file = scratch.join("src");
    write_file(&file, &src);
    let dst = dir.join("dst");
    write_file(&dst, &random_bytes(4 * MIB, 21));
    let err = run_ok(&mut local(&file, &dst, &["-b", "1M", "-v"]));
    assert_same(&file, &dst);
    let s = summary(&err);
    assert!(
        about(s.cleared, (3 * MIB - 512 * 1024) as u64),
        "{}",
        s.line
    );
    let _ = fs::remove_file(&dst);
    err
}

#[test]
fn zeros_are_cleared_with_and_without_hole_punching() {
    let scratch = TempDir::new("fs-zero");
    // The real disk (ext4 and friends): holes are punched.
    let err = sync_onto(scratch.path(), &scratch);
    eprintln!("disk: {}", clearing(&err));

    // tmpfs: punches holes too, but has no ZERO_RANGE. Our own small one if
    // we may mount, else /dev/shm.
    let own = Mounted::new(
        &["-t", "tmpfs", "-o", "size=16m", "tmpfs"],
        &scratch.join("tmpfs"),
    );
    let tmpfs = match &own {
        Some(m) => Some(m.dir.clone()),
        None => Some(PathBuf::from("/dev/shm")).filter(|p| p.is_dir()),
    };
    if let Some(tmpfs) = tmpfs {
        let sub = TempDir::new_in(&tmpfs, "fs-zero");
        let err = sync_onto(sub.path(), &scratch);
        eprintln!("tmpfs: {}", clearing(&err));
        assert!(err.contains("punching holes"), "{err}");
    }
    drop(own);

    // ramfs supports no fallocate mode at all: zeros must be written.
    let Some(ramfs) = Mounted::new(&["-t", "ramfs", "ramfs"], &scratch.join("ramfs")) else {
        return;
    };
    let err = sync_onto(&ramfs.dir, &scratch);
    eprintln!("ramfs: {}", clearing(&err));
    assert!(
        err.contains(
            "zero ranges cleared by writing zeros (hole punching and ZERO_RANGE unsupported here)"
        ),
        "{err}"
    );
}

/// The `-v` line that says how zeros were cleared.
fn clearing(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.contains("zero ranges"))
        .unwrap_or("(no clearing line)")
}

/// Issue 13, measured defect 3: a loop device whose backing store runs out
/// fails only in writeback, and Linux reports that once per open file. A
/// run that ignored the `sync_file_range` wait exited 0 with 32 MiB lost.
#[test]
fn measured_3_a_writeback_error_on_a_loop_device_fails_the_run() {
    let dir = TempDir::new("dev-enospc");
    let small = dir.join("small");
    let Some(_tmpfs) = Mounted::new(&["-t", "tmpfs", "-o", "size=8m", "tmpfs"], &small) else {
        return;
    };
    let src = dir.join("src");
    write_file(&src, &random_bytes(48 * MIB, 31));
    for mode in ["local", "upload", "download"] {
        // A sparse 64 MiB backing file on an 8 MiB tmpfs.
        let backing = small.join(format!("backing-{mode}"));
        File::create(&backing)
            .and_then(|f| f.set_len(64 * MIB as u64))
            .expect("backing file");
        let Some(dev) = Loop::attach(&backing) else {
            return;
        };
        let dev_name = dev.path().display().to_string();
        let out = match mode {
            "local" => run(&mut local(&src, dev.path(), &["-q"])),
            "upload" => {
                let (server, port) = Server::start(&["-f", &dev_name]);
                let out = run(client(&port, &["-q"], &src).env("BSYNC_IO_TIMEOUT", "10"));
                let mut server = server;
                let status = server.0.wait().expect("wait for the server");
                let mut err = String::new();
                if let Some(mut e) = server.0.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                assert!(!status.success(), "upload: the server exited 0: {err}");
                assert!(err.contains(&dev_name), "upload: {err}");
                out
            }
            _ => {
                let (_server, port) = Server::start(&["-d", "-f", src.to_str().unwrap()]);
                run(&mut client(&port, &["-q", "-d"], dev.path()))
            }
        };
        let err = stderr(&out);
        eprintln!("{mode}: {}", err.trim());
        assert_eq!(out.status.code(), Some(1), "{mode}: {err}");
        if mode != "upload" {
            assert!(
                err.contains(&dev_name),
                "{mode}: the error names the device: {err}"
            );
        }
        drop(dev);
        let _ = fs::remove_file(&backing);
    }
}

/// Issue 15, item 1: a downloading client that refuses a device too small
/// for the source no longer holds the server for five minutes: once its
/// connections are gone, the retry is admitted after the grace.
#[test]
fn a_download_server_takes_the_retry_after_a_refused_small_device() {
    let dir = TempDir::new("dev-small-retry");
    let src = dir.join("src");
    let bytes = random_bytes(4 * MIB, 40);
    write_file(&src, &bytes);
    let Some(small) = device(&dir, "small", &vec![0u8; 2 * MIB]) else {
        return;
    };
    let (server, port) = Server::start(&["-d", "-b", "256K", "-f", src.to_str().expect("utf-8")]);
    let err = run_status(&mut client(&port, &["-d"], small.path()), 1);
    assert!(err.contains("smaller than the source"), "{err}");
    let copy = dir.join("copy");
    let started = std::time::Instant::now();
    run_ok(&mut client(&port, &["-d"], &copy));
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(15),
        "the retry took {took:?}"
    );
    server.finish();
    assert_bytes(&copy, &bytes);
}

/// Issue 15, item 6: a source device mounted read-write is copied, with a
/// warning and what to do instead, locally and by an uploading client.
#[test]
fn a_source_mounted_read_write_gets_a_warning() {
    let dir = TempDir::new("dev-src-mounted");
    let Some(dev) = device(&dir, "dev", &vec![0u8; 8 * MIB]) else {
        return;
    };
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(dev.path())
        .output();
    if !mkfs.as_ref().is_ok_and(|o| o.status.success()) {
        return common::skip("mkfs.ext4 is not available or failed");
    }
    let dev_path = dev.path().to_str().expect("utf-8");
    let Some(mounted) = Mounted::new(&["-o", "rw", dev_path], &dir.join("mnt")) else {
        return;
    };
    let check = |err: &str| {
        let line = err
            .lines()
            .find(|l| l.contains("warning:"))
            .unwrap_or_else(|| panic!("no warning:\n{err}"));
        assert!(line.contains("mounted read-write"), "{line}");
        assert!(
            line.contains("snapshot") && line.contains("remount"),
            "{line}"
        );
    };
    check(&run_ok(&mut local(
        dev.path(),
        &dir.join("copy"),
        &["-b", "1M"],
    )));
    let (server, port) = Server::start(&["-f", dir.join("copy2").to_str().expect("utf-8")]);
    check(&run_ok(&mut client(&port, &["-b", "1M"], dev.path())));
    // The destination's user hears it too, from the client.
    let served = server.finish();
    assert!(
        served.contains("warning from client") && served.contains("mounted read-write"),
        "{served}"
    );
    // A download server whose source is mounted says so too.
    let mut served = bsync()
        .args(["-q", "-d", "-p", "0", "-i", "127.0.0.1", "-f", dev_path])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the server");
    let mut line = String::new();
    let stdout = served.stdout.take().expect("stdout");
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the port");
    let downloaded = run_ok(&mut client(line.trim(), &["-d"], &dir.join("copy3")));
    let out = served.wait_with_output().expect("the server");
    check(&String::from_utf8_lossy(&out.stderr));
    // ... and the downloading client's user hears it from the server.
    assert!(
        downloaded.contains("warning from server") && downloaded.contains("mounted read-write"),
        "{downloaded}"
    );
    // Not a warning when mounted read-only.
    drop(mounted);
    let Some(_ro) = Mounted::new(&["-o", "ro", dev_path], &dir.join("mnt")) else {
        return;
    };
    let err = run_ok(&mut local(dev.path(), &dir.join("copy"), &["-b", "1M"]));
    assert!(!err.contains("warning:"), "{err}");
}

/// Issue 18, item 3: the regular file behind an attached loop device is
/// refused like the device itself, by any name (a hard link too), locally
/// and by a server before it listens; nothing is written.
#[test]
fn the_file_behind_a_loop_device_is_refused() {
    let dir = TempDir::new("dev-backing");
    let file = dir.join("src");
    write_file(&file, &random_bytes(2 * MIB, 15));
    let before = random_bytes(2 * MIB, 16);
    let Some(dev) = device(&dir, "back.img", &before) else {
        return;
    };
    let backing = dir.join("back.img");
    let link = dir.join("other-name.img");
    fs::hard_link(&backing, &link).expect("hard link");
    let dev_name = dev.path().display().to_string();
    for name in [&backing, &link] {
        let err = run_status(&mut local(&file, name, &["-b", "1M"]), 1);
        assert!(
            err.contains(&format!("backs the loop device {dev_name}")),
            "{err}"
        );
        assert!(err.contains("nothing was written"), "{err}");
        let out = run(bsync()
            .args(["-q", "-p", "0", "-i", "127.0.0.1", "-f"])
            .arg(name));
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(out.stdout.is_empty(), "the server listened");
        assert!(
            stderr(&out).contains("backs the loop device"),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(read_file(&backing), before);
}

/// Issue 18, item 3: an active swap file is refused; nothing is written.
#[test]
fn an_active_swap_file_is_refused() {
    let dir = TempDir::new("dev-swap");
    let file = dir.join("src");
    write_file(&file, &random_bytes(4 * MIB, 17));
    let swap = dir.join("swap.img");
    write_file(&swap, &vec![0u8; 4 * MIB]);
    fs::set_permissions(&swap, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let made = Command::new("mkswap").arg(&swap).output();
    if !made.is_ok_and(|o| o.status.success()) {
        return skip("mkswap is not available or failed");
    }
    let on = Command::new("swapon").arg(&swap).output();
    if !on.as_ref().is_ok_and(|o| o.status.success()) {
        return skip(
            "swapon is not permitted here (needs root, and a file system that takes swap)",
        );
    }
    struct Off<'a>(&'a Path);
    impl Drop for Off<'_> {
        fn drop(&mut self) {
            let _ = Command::new("swapoff").arg(self.0).status();
        }
    }
    let _off = Off(&swap);
    let before = read_file(&swap);
    let err = run_status(&mut local(&file, &swap, &["-b", "1M"]), 1);
    assert!(err.contains("in use as swap"), "{err}");
    assert_eq!(read_file(&swap), before);
}

/// Issue 18, item 6: a read-only device is refused by a server before it
/// listens, and locally before anything is written, with "read-only".
#[test]
fn a_read_only_device_is_refused_before_the_server_listens() {
    let dir = TempDir::new("dev-ro");
    let file = dir.join("src");
    write_file(&file, &random_bytes(2 * MIB, 18));
    let before = random_bytes(2 * MIB, 19);
    let backing = dir.join("ro.img");
    write_file(&backing, &before);
    let Some(dev) = Loop::attach_with(&backing, &["-r"]) else {
        return;
    };
    let out = run(bsync()
        .args(["-q", "-p", "0", "-i", "127.0.0.1", "-f"])
        .arg(dev.path()));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(out.stdout.is_empty(), "the server listened: {err}");
    assert!(err.contains("read-only"), "{err}");
    let err = run_status(&mut local(&file, dev.path(), &["-b", "1M"]), 1);
    assert!(err.contains("read-only"), "{err}");
    assert_bytes(dev.path(), &before);
}

/// `--patch --diffsize=resize` onto a larger device applies the patch and
/// leaves the device's tail alone, and says that a device keeps its size
/// (once it said nothing: exit 0, the device as large as before).
#[test]
fn a_resize_patch_onto_a_larger_device_says_the_device_keeps_its_size() {
    let dir = TempDir::new("dev-patch-resize");
    let src = random_bytes(2 * MIB, 31);
    let mut image = src.clone();
    image[MIB..MIB + 4096].fill(7);
    image.extend_from_slice(&random_bytes(MIB, 32));
    let (file, copy) = (dir.join("src"), dir.join("copy"));
    write_file(&file, &src);
    write_file(&copy, &image);
    let patch = dir.join("p.bsync");
    run_ok(&mut local(
        &file,
        &copy,
        &["-b", "1M", "--write-patch", patch.to_str().expect("UTF-8")],
    ));
    let Some(dst) = device(&dir, "dst", &image) else {
        return;
    };
    let err = run_ok(
        bsync()
            .arg(format!("--patch={}", dst.path().display()))
            .arg("--diffsize=resize")
            .stdin(File::open(&patch).expect("the patch")),
    );
    let mut want = src.clone();
    want.extend_from_slice(&image[2 * MIB..]);
    assert_bytes(dst.path(), &want);
    assert!(
        err.contains("a block device cannot be resized")
            && err.contains("it keeps its 3145728 bytes"),
        "{err}"
    );
}

/// The new-user trial: `--compare` after a good sync into a larger device
/// exited 3 (`a sync would truncate it`), locally and over `-r`, though a
/// sync leaves the device's tail alone; `--write-patch` warned the same.
/// Now a larger device is no difference (one line says its tail would be
/// left alone), and a smaller one, which a sync refuses, differs and says
/// so.
#[test]
fn a_compare_judges_a_device_of_another_size_as_a_sync_would() {
    let dir = TempDir::new("dev-compare-size");
    let src = random_bytes(2 * MIB, 33);
    let file = dir.join("src");
    write_file(&file, &src);
    let Some(big) = device(&dir, "big", &random_bytes(3 * MIB, 34)) else {
        return;
    };
    run_ok(&mut local(&file, big.path(), &["-b", "1M"]));
    let tail = "is larger than the source by 1.0 MiB; a sync leaves the bytes past the \
                source's end alone";
    let err = run_ok(&mut local(&file, big.path(), &["-b", "1M", "--compare"]));
    assert!(err.contains("the two sides are identical"), "{err}");
    assert!(err.contains(tail), "{err}");
    assert!(!err.contains("a sync would"), "{err}");
    let patch = dir.join("p.bsync");
    let args = ["--write-patch", patch.to_str().expect("UTF-8")];
    let err = run_ok(&mut local(&file, big.path(), &args));
    assert!(!err.contains("a sync would"), "{err}");
    let path = big.path().to_str().expect("UTF-8");
    let (server, port) = Server::start(&["-f", path]);
    let err = run_ok(&mut client(&port, &["--compare"], &file));
    assert!(err.contains("the two sides are identical"), "{err}");
    server.finish();

    let Some(small) = device(&dir, "small", &src[..MIB]) else {
        return;
    };
    let said = format!(
        "compare: the destination is {MIB} bytes, the source {}: a sync would refuse it (a \
         device cannot grow)",
        2 * MIB
    );
    let err = run_status(&mut local(&file, small.path(), &["--compare"]), 3);
    assert!(err.lines().any(|l| l == said), "{err}");
    let path = small.path().to_str().expect("UTF-8");
    let (server, port) = Server::start(&["-f", path]);
    let err = run_status(&mut client(&port, &["--compare"], &file), 3);
    assert!(err.lines().any(|l| l == said), "{err}");
    server.finish();
}
