//! bdsync's workflow against the real binary: `bsync --server` behind a
//! remote shell (`sh -c` here; `tests/channel.rs` uses a real sshd), patch
//! files made, applied, refused and undone, `--compare`, and `--write-patch`.

mod common;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_bsync");
/// Small blocks, so that a few MiB make several blocks and records.
const BS: &str = "262144";
const LEN: usize = 3 << 20;

/// The remote shell command of bdsync's examples, adapted to loopback:
/// `sh -c` starts the server on this machine.
fn remshcmd() -> String {
    format!("{BIN} --server")
}

/// `bsync [extra] REMSHCMD LOCAL REMOTE > patch`.
fn make_patch(local: &Path, remote: &Path, patch: &Path, extra: &[&str]) -> String {
    let mut cmd = bsync();
    cmd.args(extra)
        .arg(format!("--blocksize={BS}"))
        .arg(remshcmd())
        .arg(local)
        .arg(remote)
        .stdout(File::create(patch).unwrap());
    run_ok(&mut cmd)
}

/// `bsync --patch[=target] extra < patch` (a regular file on stdin).
fn apply(patch: &Path, target: Option<&Path>, extra: &[&str]) -> Command {
    let mut cmd = bsync();
    match target {
        Some(t) => cmd.arg(format!("--patch={}", t.display())),
        None => cmd.arg("--patch"),
    };
    cmd.args(extra).stdin(File::open(patch).unwrap());
    cmd
}

/// The same, with the patch coming through a pipe.
fn apply_piped(patch: &[u8], target: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let mut child = bsync()
        .arg(format!("--patch={}", target.display()))
        .args(extra)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let bytes = patch.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&bytes);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    (out.status.code(), stderr(&out))
}

struct Pair {
    dir: TempDir,
    src: PathBuf,
    dst: PathBuf,
    src_bytes: Vec<u8>,
    dst_bytes: Vec<u8>,
}

fn pair(name: &str) -> Pair {
    let dir = TempDir::new(name);
    let (src_bytes, dst_bytes) = make_pair(LEN, 14);
    let src = dir.join("src.img");
    let dst = dir.join("dst.img");
    write_file(&src, &src_bytes);
    write_file(&dst, &dst_bytes);
    Pair {
        dir,
        src,
        dst,
        src_bytes,
        dst_bytes,
    }
}

#[test]
fn bdsync_examples_on_loopback() {
    // bdsync "bdsync --server" /dev/LOCDEV /dev/REMDEV > DEV.bdsync, then
    // bdsync --patch=/dev/DSTDEV < DEV.bdsync on "the remote".
    let p = pair("bdsync-simple");
    let patch = p.dir.join("DEV.bsync");
    make_patch(&p.src, &p.dst, &patch, &["--verbose"]);
    assert_eq!(
        read_file(&p.dst),
        p.dst_bytes,
        "making a patch wrote REMDEV"
    );
    run_ok(&mut apply(&patch, Some(&p.dst), &[]));
    assert_same(&p.src, &p.dst);

    // ... | gzip > DEV.bdsync.gz, and back through a pipe: gzip -dc | bsync --patch.
    let p = pair("bdsync-gzip");
    let gz = p.dir.join("DEV.bsync.gz");
    let mut sh = Command::new("sh");
    sh.arg("-c").arg(format!(
        "'{BIN}' --blocksize={BS} \"$1\" \"$2\" \"$3\" | gzip > \"$4\" && gzip -dc \"$4\" | '{BIN}' --patch",
    ))
    .arg("sh")
    .arg(remshcmd())
    .arg(&p.src)
    .arg(&p.dst)
    .arg(&gz);
    run_ok(&mut sh);
    assert_same(&p.src, &p.dst);
}

#[test]
fn round_trip_takes_the_target_named_in_the_patch_and_twice_writes_nothing() {
    let p = pair("round-trip");
    let patch = p.dir.join("p.bsync");
    make_patch(&p.src, &p.dst, &patch, &[]);
    let size = fs::metadata(&patch).unwrap().len();
    assert!(size < (LEN / 2) as u64, "patch of {size} bytes");
    run_ok(&mut apply(&patch, None, &[]));
    assert_same(&p.src, &p.dst);
    // Twice in a row: says so, writes nothing, exit 0.
    let before = mtime(&p.dst);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let err = run_ok(&mut apply(&patch, None, &[]));
    assert!(err.contains("already applied"), "{err}");
    assert_eq!(mtime(&p.dst), before);
    // The same from a pipe.
    let (code, err) = apply_piped(&read_file(&patch), &p.dst, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("already applied"), "{err}");
}

#[test]
fn a_wrong_target_is_refused_and_left_untouched() {
    let p = pair("wrong-target");
    let patch = p.dir.join("p.bsync");
    make_patch(&p.src, &p.dst, &patch, &[]);
    let other = p.dir.join("other.img");
    let other_bytes = random_bytes(LEN, 99);
    write_file(&other, &other_bytes);
    let err = run_status(&mut apply(&patch, Some(&other), &[]), 1);
    assert!(
        err.contains("differs from what the patch expects at offset"),
        "{err}"
    );
    assert!(err.contains("nothing was written"), "{err}");
    assert_eq!(read_file(&other), other_bytes);
}

#[test]
fn a_target_changed_after_the_patch_was_made_is_refused() {
    let p = pair("changed-target");
    let patch = p.dir.join("p.bsync");
    make_patch(&p.src, &p.dst, &patch, &[]);
    // Change the target after the patch was made, late in the file, inside
    // a range the patch changes (the stale region of make_pair).
    let mut changed = p.dst_bytes.clone();
    let at = LEN / 3 + LEN / 8 - LEN / 64 - 10;
    changed[at] ^= 0xff;
    write_file(&p.dst, &changed);
    // From a file: nothing written.
    let err = run_status(&mut apply(&patch, Some(&p.dst), &[]), 1);
    assert!(err.contains("at offset"), "{err}");
    assert_eq!(read_file(&p.dst), changed);
    // From a pipe too (issue 18, item 2): the whole target is digested
    // before the first record is written, so nothing goes in.
    let undo = p.dir.join("undo.bsync");
    let (code, err) = apply_piped(
        &read_file(&patch),
        &p.dst,
        &[&format!("--remdata={}", undo.display())],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("the target is untouched"), "{err}");
    assert_eq!(read_file(&p.dst), changed, "the pipe wrote into it");
}

#[test]
fn undo_data_written_while_applying_restores_the_original() {
    let p = pair("apply-undo");
    let patch = p.dir.join("p.bsync");
    make_patch(&p.src, &p.dst, &patch, &[]);
    let undo = p.dir.join("undo.bsync");
    let (code, err) = apply_piped(
        &read_file(&patch),
        &p.dst,
        &[&format!("--remdata={}", undo.display())],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_same(&p.src, &p.dst);
    // An existing undo file is never replaced (the new-user trial lost
    // its undo data applying twice): the second apply is refused, exit 2,
    // before anything is opened, and the undo still restores.
    let kept = read_file(&undo);
    for name in [&undo, &p.dst, &patch] {
        let before = read_file(name);
        let (code, err) = apply_piped(
            &read_file(&patch),
            &p.dst,
            &[&format!("--remdata={}", name.display())],
        );
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("exists; an undo patch is written only to a new file"),
            "{err}"
        );
        assert_eq!(read_file(name), before, "{}", name.display());
    }
    assert_eq!(read_file(&undo), kept);
    run_ok(&mut apply(&undo, Some(&p.dst), &[]));
    assert_eq!(read_file(&p.dst), p.dst_bytes);
}

/// Issue 18: an undo patch written while applying with a relative
/// `--patch=` names its target by its absolute path, as a forward patch
/// does, so that applying it from another directory (the target taken
/// from its header) puts back the same file.
#[test]
fn an_undo_patch_names_its_target_absolutely() {
    let p = pair("apply-undo-relative");
    let patch = p.dir.join("p.bsync");
    make_patch(&p.src, &p.dst, &patch, &[]);
    let out = run(bsync()
        .current_dir(p.dir.path())
        .args(["--patch=dst.img", "--remdata=undo.bsync"])
        .stdin(File::open(&patch).unwrap()));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_same(&p.src, &p.dst);
    let undo = read_file(&p.dir.join("undo.bsync"));
    let absolute = p.dst.as_os_str().as_encoded_bytes();
    assert!(
        undo.windows(absolute.len()).any(|w| w == absolute),
        "the undo patch does not name {}",
        p.dst.display()
    );
    let elsewhere = TempDir::new("apply-undo-elsewhere");
    let out = run(apply(&p.dir.join("undo.bsync"), None, &[]).current_dir(elsewhere.path()));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(read_file(&p.dst), p.dst_bytes);
    assert!(!elsewhere.join("dst.img").exists());
}

#[test]
fn client_remdata_makes_an_undo_patch_that_restores_byte_for_byte() {
    let p = pair("client-remdata");
    let patch = p.dir.join("p.bsync");
    let undo = p.dir.join("undo.bsync");
    make_patch(&p.src, &p.dst, &patch, &[]);
    make_patch(&p.src, &p.dst, &undo, &["--remdata"]);
    assert_eq!(read_file(&p.dst), p.dst_bytes);
    run_ok(&mut apply(&patch, None, &[]));
    assert_same(&p.src, &p.dst);
    run_ok(&mut apply(&undo, None, &[]));
    assert_eq!(read_file(&p.dst), p.dst_bytes);
    // The undo patch is no forward patch: applied again it is already in.
    let err = run_ok(&mut apply(&undo, None, &[]));
    assert!(err.contains("already applied"), "{err}");
}

#[test]
fn truncated_and_corrupted_patches_are_named_and_leave_the_target_alone() {
    let p = pair("bad-patch");
    let patch = p.dir.join("p.bsync");
    make_patch(&p.src, &p.dst, &patch, &[]);
    let bytes = read_file(&patch);
    let cut = p.dir.join("cut.bsync");
    write_file(&cut, &bytes[..bytes.len() - 100]);
    let err = run_status(&mut apply(&cut, Some(&p.dst), &[]), 1);
    assert!(err.contains("truncated"), "{err}");
    // In the same line: the target is untouched (new-user trial).
    let one = |err: &str| {
        err.lines()
            .any(|l| l.ends_with("; the target is untouched"))
    };
    assert!(one(&err), "{err}");
    assert_eq!(read_file(&p.dst), p.dst_bytes);
    // Bytes after the trailer.
    let mut longer = bytes.clone();
    longer.push(0);
    write_file(&cut, &longer);
    let err = run_status(&mut apply(&cut, Some(&p.dst), &[]), 1);
    assert!(err.contains("after the trailer") && one(&err), "{err}");
    // A flipped byte in the middle, and one in the last record.
    for at in [bytes.len() / 2, bytes.len() - 80] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x01;
        let f = p.dir.join("bad.bsync");
        write_file(&f, &bad);
        let err = run_status(&mut apply(&f, Some(&p.dst), &[]), 1);
        assert!(
            err.contains("corrupted") && one(&err),
            "flip at {at}: {err}"
        );
        assert_eq!(read_file(&p.dst), p.dst_bytes, "flip at {at}");
    }
    // Not a patch at all.
    let err = run_status(&mut apply(&p.src, Some(&p.dst), &[]), 1);
    assert!(err.contains("not a bsync patch") && one(&err), "{err}");
}

#[test]
fn sizes_follow_diffsize() {
    let dir = TempDir::new("diffsize");
    let src_bytes = random_bytes(LEN, 5);
    let src = dir.join("src.img");
    write_file(&src, &src_bytes);
    let patch = dir.join("p.bsync");
    for (name, len) in [("smaller", LEN - 300_000), ("larger", LEN + 300_000)] {
        let mut stale = random_bytes(len, 6);
        stale[..LEN.min(len) / 2].copy_from_slice(&src_bytes[..LEN.min(len) / 2]);
        let base = dir.join(&format!("{name}.img"));
        write_file(&base, &stale);
        make_patch(&src, &base, &patch, &[]);
        let t = dir.join("t.img");
        // strict: refused, untouched.
        write_file(&t, &stale);
        let err = run_status(&mut apply(&patch, Some(&t), &[]), 1);
        assert!(
            err.contains(&format!("the target is {name}")),
            "{name}: {err}"
        );
        assert_eq!(read_file(&t), stale);
        // Issue 19, item 1: every mode a refusal suggests then works.
        for hint in err.split("--diffsize=").skip(1) {
            let mode: String = hint.chars().take_while(char::is_ascii_lowercase).collect();
            let tried = dir.join("hint.img");
            write_file(&tried, &stale);
            let out = run(&mut apply(
                &patch,
                Some(&tried),
                &[&format!("--diffsize={mode}")],
            ));
            assert_eq!(
                out.status.code(),
                Some(0),
                "{name}: {err}\n{mode}: {}",
                stderr(&out)
            );
        }
        // minsize: a larger target keeps its tail, a smaller one is refused.
        let err = run(&mut apply(&patch, Some(&t), &["--diffsize=minsize"]));
        if len > LEN {
            assert_eq!(err.status.code(), Some(0), "{}", stderr(&err));
            let got = read_file(&t);
            assert_eq!(&got[..LEN], &src_bytes[..]);
            assert_eq!(&got[LEN..], &stale[LEN..]);
        } else {
            assert_eq!(err.status.code(), Some(1));
            let err = stderr(&err);
            assert!(!err.contains("(--diffsize=minsize)"), "{err}");
            assert_eq!(read_file(&t), stale);
        }
        // resize: exactly the source.
        write_file(&t, &stale);
        run_ok(&mut apply(&patch, Some(&t), &["--diffsize=resize"]));
        assert_same(&src, &t);
    }
}

#[test]
fn compare_says_whether_they_differ() {
    let p = pair("compare");
    let same = p.dir.join("same.img");
    write_file(&same, &p.src_bytes);
    run_ok(&mut local(&p.src, &same, &["--compare", "-b", BS]));
    let out = run(local(&p.src, &p.dst, &["--compare", "-v", "-b", BS]).stderr(Stdio::piped()));
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(err.contains("differs: "), "{err}");
    assert!(err.contains("blocks differ"), "{err}");
    assert_eq!(read_file(&p.dst), p.dst_bytes);
    // Another size differs, even where every block agrees (the new-user
    // trial was told "identical" about a longer copy): exit 3, and why.
    let longer = p.dir.join("longer.img");
    write_file(&longer, &[&p.src_bytes[..], &[7u8; 5000]].concat());
    let out = run(local(&p.src, &longer, &["--compare", "-b", BS]).stderr(Stdio::piped()));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("a sync would truncate it"), "{err}");
    assert!(!err.contains("identical"), "{err}");
}

/// The new-user trial: `-q` left `warning from destination: … a sync would
/// truncate it` on a quiet `--compare` and `--write-patch` of a longer
/// destination. The size is the verdict's, not a warning: a quiet compare
/// says only that the sides differ (exit 3), a quiet patch nothing; without
/// `-q` one line says it, not two.
#[test]
fn a_quiet_dry_run_does_not_warn_about_the_destinations_size() {
    let p = pair("quiet-size");
    let longer = p.dir.join("longer.img");
    write_file(&longer, &[&p.src_bytes[..], &[7u8; 5000]].concat());
    let err = run_status(&mut local(&p.src, &longer, &["--compare", "-q"]), 3);
    assert_eq!(err.trim(), "bsync: compare: the two sides differ");
    let patch = p.dir.join("q.bsync");
    let args = ["--write-patch", patch.to_str().expect("UTF-8")];
    let err = run_ok(&mut local(&p.src, &longer, &[&args[..], &["-q"]].concat()));
    assert_eq!(err, "");
    let err = run_status(&mut local(&p.src, &longer, &["--compare"]), 3);
    assert_eq!(err.matches("a sync would truncate it").count(), 1, "{err}");
    assert!(!err.contains("warning"), "{err}");
    let err = run_ok(&mut local(&p.src, &longer, &args));
    assert_eq!(err.matches("a sync would truncate it").count(), 1, "{err}");
}

#[test]
fn compare_and_write_patch_against_a_server_write_nothing() {
    let p = pair("compare-r");
    for (extra, code) in [(&["--compare"][..], 3), (&["--write-patch", "-"][..], 0)] {
        let mut server = bsync()
            .args(["-q", "-p", "0", "-i", "127.0.0.1", "-f"])
            .arg(&p.dst)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(server.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        let port = line.trim();
        let patch = p.dir.join("r.bsync");
        let out = run(bsync()
            .args(["-q", "-b", BS, "-f"])
            .arg(&p.src)
            .args(["-r", &format!("127.0.0.1:{port}")])
            .args(extra)
            .stdout(File::create(&patch).unwrap()));
        assert_eq!(out.status.code(), Some(code), "{extra:?}: {}", stderr(&out));
        assert!(server.wait().unwrap().success());
        assert_eq!(
            read_file(&p.dst),
            p.dst_bytes,
            "{extra:?} wrote the destination"
        );
        if code == 0 {
            run_ok(&mut apply(&patch, Some(&p.dst), &[]));
            assert_same(&p.src, &p.dst);
            write_file(&p.dst, &p.dst_bytes);
        }
    }
}

#[test]
fn write_patch_locally_to_a_file() {
    let p = pair("write-patch");
    let patch = p.dir.join("local.bsync");
    run_ok(&mut local(
        &p.src,
        &p.dst,
        &["--write-patch", patch.to_str().unwrap(), "-b", BS, "-n"],
    ));
    assert_eq!(read_file(&p.dst), p.dst_bytes);
    assert!(!p.dir.join("local.bsync.part").exists());
    run_ok(&mut apply(&patch, None, &[]));
    assert_same(&p.src, &p.dst);
}

/// A block smaller than a digest grain (64 KiB): the patch applies (once
/// it was made, exit 0, and every apply refused its header: "grain out of
/// range").
#[test]
fn a_patch_made_with_blocks_below_64k_applies() {
    for bs in ["4K", "16K"] {
        let p = pair("small-blocks");
        let patch = p.dir.join("small.bsync");
        run_ok(&mut local(
            &p.src,
            &p.dst,
            &["--write-patch", patch.to_str().unwrap(), "-b", bs],
        ));
        run_ok(&mut apply(&patch, None, &[]));
        assert_same(&p.src, &p.dst);
    }
}

/// A patch replaces the file at its path: `--write-patch` naming the
/// source, the destination or a device is refused before anything is
/// opened (once, each of these became the patch, exit 0).
#[test]
fn write_patch_never_replaces_the_source_the_destination_or_a_device() {
    let p = pair("write-patch-clobber");
    for target in [&p.src, &p.dst, Path::new("/dev/null")] {
        let out = run_status(
            &mut local(
                &p.src,
                &p.dst,
                &["--write-patch", target.to_str().unwrap(), "-b", BS],
            ),
            2,
        );
        assert!(out.contains("--write-patch"), "{out}");
        assert_eq!(read_file(&p.src), p.src_bytes);
        assert_eq!(read_file(&p.dst), p.dst_bytes);
    }
    assert!(
        Path::new("/dev/null")
            .metadata()
            .is_ok_and(|m| !m.is_file())
    );
}

#[test]
fn bdsync_options_bsync_lacks_are_refused() {
    for args in [
        &["--digest=nosuch", "sh", "a", "b"][..],
        &["--twopass", "sh", "a", "b"],
        &["--patch", "x"],
        &["--diffsize=big", "--patch"],
        &["--compare"],
        &["--compare", "--write-patch", "-", "-f", "a", "-t", "b"],
        &["--server", "-p", "1"],
    ] {
        let err = run_status(bsync().args(args), 2);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
}

#[test]
fn server_without_a_bsync_client_fails_cleanly() {
    // Not an open request on stdin: one line, exit 1, nothing opened.
    let out = run(bsync()
        .arg("--server")
        .stdin(File::open("/dev/null").unwrap()));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
}

/// Issue 19, item 14: a server whose stderr is its protocol stream (inetd,
/// `2>&1`) writes no log line there: they go to syslog, and the session
/// works, with --verbose too.
#[test]
fn a_server_whose_stderr_is_its_stdout_logs_to_syslog() {
    let p = pair("server-2to1");
    let patch = p.dir.join("p.bsync");
    let mut cmd = bsync();
    cmd.arg(format!("--blocksize={BS}"))
        .arg(format!("{BIN} --server --verbose 2>&1"))
        .arg(&p.src)
        .arg(&p.dst)
        .stdout(File::create(&patch).unwrap());
    run_ok(&mut cmd);
    run_ok(&mut apply(&patch, Some(&p.dst), &[]));
    assert_same(&p.src, &p.dst);
}

/// A number field of a `--json` summary line.
fn json_u64(json: &str, field: &str) -> u64 {
    let key = format!("\"{field}\":");
    json.split(&key)
        .nth(1)
        .and_then(|r| r.split([',', '}']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {json}"))
}

/// The one `--json` line among `text`'s lines.
fn json_line(text: &str) -> &str {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("{\"side\""))
        .collect();
    assert_eq!(lines.len(), 1, "want one JSON line:\n{text}");
    lines[0]
}

/// A one-session server on a free port of loopback; returns it and the
/// `HOST:PORT` to give `-r`.
fn server(args: &[&str], dst: &Path) -> (std::process::Child, String) {
    let mut server = bsync()
        .args(["-p", "0", "-i", "127.0.0.1"])
        .args(args)
        .arg("-f")
        .arg(dst)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", line.trim());
    (server, addr)
}

/// Issue 18, item 5: a dry run says "comparing", both ends say what it did
/// (the client what differs, the server that it changed nothing, never
/// "both ends agree"), it exits 3 when they differ, and no end offers a
/// resume.
#[test]
fn dry_runs_say_what_they_do_on_both_ends() {
    let p = pair("dry-words");
    for (extra, code) in [(&["--compare"][..], 3), (&["--write-patch", "-"][..], 0)] {
        let (server, addr) = server(&[], &p.dst);
        let out = run(bsync()
            .args(["-b", BS, "-f"])
            .arg(&p.src)
            .args(["-r", &addr])
            .args(extra)
            .stdout(File::create(p.dir.join("r.bsync")).unwrap()));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{extra:?}: {err}");
        assert!(err.contains("comparing"), "{extra:?}: {err}");
        assert!(!err.contains("uploading"), "{extra:?}: {err}");
        assert!(err.contains("blocks differ"), "{extra:?}: {err}");
        assert!(!err.contains("resume with"), "{extra:?}: {err}");
        let out = server.wait_with_output().unwrap();
        let server_err = stderr(&out);
        assert!(out.status.success(), "{extra:?}: {server_err}");
        assert!(
            server_err.contains("nothing was changed"),
            "{extra:?}: {server_err}"
        );
        for claim in ["both ends agree", " same, 0 changed", "resume"] {
            assert!(!server_err.contains(claim), "{extra:?}: {server_err}");
        }
        // The server learns what differs from the client's Bye: the same
        // blocks and bytes the client counted (issue 18, item 5).
        let differ = err
            .lines()
            .find_map(|l| {
                l.split_once(" blocks differ: ")
                    .map(|(a, b)| (a, b.to_string()))
            })
            .unwrap_or_else(|| panic!("{extra:?}: no count of what differs: {err}"));
        let blocks = differ.0.rsplit(": ").next().unwrap_or_default();
        let blocks = blocks.split(" of ").next().unwrap_or_default();
        let (data, zeros) = differ
            .1
            .split_once(" of data and ")
            .map(|(d, z)| {
                (
                    d.to_string(),
                    z.split(" of zeros").next().unwrap_or_default().to_string(),
                )
            })
            .unwrap_or_else(|| panic!("{extra:?}: {err}"));
        let said = format!("a sync would change {blocks} blocks (");
        let bytes = format!(": {data} of data, {zeros} of zeros); nothing was changed here");
        assert!(
            blocks.parse::<u64>().is_ok_and(|n| n > 0)
                && server_err.contains(&said)
                && server_err.contains(&bytes),
            "{extra:?}: want {said:?} and {bytes:?}\nclient: {err}\nserver: {server_err}"
        );
        assert_eq!(read_file(&p.dst), p.dst_bytes);
    }
}

/// Issue 18, item 5: `--compare -json` reports the blocks and bytes that
/// differ, locally and over `-r` (where it printed no JSON at all).
#[test]
fn compare_json_reports_what_differs_locally_and_over_r() {
    let p = pair("compare-json");
    let out = run(&mut local(
        &p.src,
        &p.dst,
        &["--compare", "-json", "-b", BS],
    ));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let local_json = json_line(&stdout).to_string();
    let differ = json_u64(&local_json, "changed") + json_u64(&local_json, "zero");
    assert!(differ > 0, "{local_json}");
    assert!(json_u64(&local_json, "bytes_changed") > 0, "{local_json}");
    assert!(local_json.contains("\"dry\":true"), "{local_json}");
    let said = format!("{differ} of 12 blocks differ");
    assert!(stderr(&out).contains(&said), "{said}: {}", stderr(&out));

    let (server, addr) = server(&["-q"], &p.dst);
    let out = run(bsync()
        .args(["-q", "-json", "-b", BS, "-f"])
        .arg(&p.src)
        .args(["-r", &addr, "--compare"]));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let json = json_line(&stdout);
    for field in ["changed", "zero", "same", "bytes_changed"] {
        assert_eq!(
            json_u64(json, field),
            json_u64(&local_json, field),
            "{field}: {json} vs {local_json}"
        );
    }
    assert!(server.wait_with_output().unwrap().status.success());
}

/// Issue 18, item 5: with a patch on stdout, `-json` goes to stderr, and
/// the patch applies.
#[test]
fn json_with_a_patch_on_stdout_goes_to_stderr() {
    let p = pair("json-patch");
    let patch = p.dir.join("out.bsync");
    let out = run(
        local(&p.src, &p.dst, &["--write-patch", "-", "-json", "-b", BS])
            .stdout(File::create(&patch).unwrap()),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    json_line(&stderr(&out));
    run_ok(&mut apply(&patch, Some(&p.dst), &[]));
    assert_same(&p.src, &p.dst);
}

/// A 1 MiB image with a zero area in its second quarter, a source that
/// differs from it only inside that area, and a wrong target that agrees
/// with the image there (zeros) but differs elsewhere: every record check
/// passes on the wrong target.
fn zero_area_scene(name: &str) -> (TempDir, PathBuf, PathBuf, PathBuf, Vec<u8>) {
    let dir = TempDir::new(name);
    let mut image = random_bytes(1 << 20, 41);
    image[256 << 10..512 << 10].fill(0);
    let mut src = image.clone();
    src[300 << 10..301 << 10].copy_from_slice(&random_bytes(1 << 10, 42));
    let mut wrong = image.clone();
    wrong[700 << 10..701 << 10].copy_from_slice(&random_bytes(1 << 10, 43));
    let (s, right, w) = (dir.join("src"), dir.join("right"), dir.join("wrong"));
    write_file(&s, &src);
    write_file(&right, &image);
    write_file(&w, &wrong);
    (dir, s, right, w, wrong)
}

/// Issue 18, item 2: a patch never writes into a target that is not the
/// whole image it was made from, even where every record's check passes
/// (a change inside a zero area), from a file and from a pipe; the other
/// path given to `--patch=` is named in a warning.
#[test]
fn a_wrong_target_agreeing_where_the_records_lie_is_refused_untouched() {
    let (dir, s, right, w, wrong) = zero_area_scene("whole-target");
    let patch = dir.join("p.bsync");
    run_ok(&mut local(
        &s,
        &right,
        &["--write-patch", patch.to_str().unwrap(), "-b", "64K"],
    ));
    let err = run_status(&mut apply(&patch, Some(&w), &[]), 1);
    assert!(err.contains("the target is untouched"), "{err}");
    assert!(
        err.contains("warning") && err.contains(&right.display().to_string()),
        "{err}"
    );
    assert_eq!(read_file(&w), wrong, "the file apply wrote into it");
    let (code, err) = apply_piped(&read_file(&patch), &w, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("the target is untouched"), "{err}");
    assert_eq!(read_file(&w), wrong, "the pipe apply wrote into it");
    // The right target takes it, from a pipe too.
    let (code, err) = apply_piped(&read_file(&patch), &right, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert_same(&s, &right);
}

/// Issue 18, item 2: the patch names its target by absolute path, so
/// `--patch` from another directory aims at the same file.
#[test]
fn the_target_is_named_by_absolute_path() {
    let (dir, s, right, _, _) = zero_area_scene("absolute");
    let patch = dir.join("p.bsync");
    run_ok(
        bsync()
            .current_dir(dir.path())
            .args(["-f", "src", "-t", "right", "-b", "64K", "--write-patch"])
            .arg(&patch),
    );
    let elsewhere = TempDir::new("absolute-elsewhere");
    write_file(&elsewhere.join("right"), b"not this one");
    run_ok(
        bsync()
            .current_dir(elsewhere.path())
            .arg("--patch")
            .stdin(File::open(&patch).unwrap()),
    );
    assert_same(&s, &right);
    assert_eq!(read_file(&elsewhere.join("right")), b"not this one");
}

/// Issue 18, item 2: a patch that fails after writing says the target was
/// changed and how to undo it; the undo patch it names puts it back.
#[test]
fn a_failure_after_writing_says_so_and_how_to_undo() {
    let p = pair("after-writing");
    let patch = p.dir.join("p.bsync");
    make_patch(&p.src, &p.dst, &patch, &[]);
    let bytes = read_file(&patch);
    // Cut in the last record: the ones before it are written from a pipe.
    let cut = &bytes[..bytes.len() - 100];
    let undo = p.dir.join("undo.bsync");
    let (code, err) = apply_piped(cut, &p.dst, &[&format!("--remdata={}", undo.display())]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("the target WAS changed"), "{err}");
    let how = format!("bsync --patch={} < {}", p.dst.display(), undo.display());
    assert!(err.contains(&how), "{err}");
    assert_ne!(read_file(&p.dst), p.dst_bytes);
    run_ok(&mut apply(&undo, Some(&p.dst), &[]));
    assert_eq!(read_file(&p.dst), p.dst_bytes);
}

/// Issue 18, item 2: `--diffsize` given to bdsync's client form is recorded
/// in the patch and honoured when it is applied; a strict refusal suggests
/// only a mode that then works.
#[test]
fn diffsize_of_the_client_form_is_honoured_and_suggestions_work() {
    let dir = TempDir::new("diffsize-header");
    let src_bytes = random_bytes(LEN, 51);
    let src = dir.join("src.img");
    write_file(&src, &src_bytes);
    let small = random_bytes(LEN - 300_000, 52);
    let t = dir.join("t.img");
    write_file(&t, &small);
    let patch = dir.join("p.bsync");
    make_patch(&src, &t, &patch, &["--diffsize=resize"]);
    run_ok(&mut apply(&patch, None, &[]));
    assert_same(&src, &t);

    for (name, len) in [("smaller", LEN - 300_000), ("larger", LEN + 300_000)] {
        let stale = random_bytes(len, 53);
        write_file(&t, &stale);
        make_patch(&src, &t, &patch, &[]);
        let err = run_status(&mut apply(&patch, None, &[]), 1);
        let flag = err
            .split("(--diffsize=")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap_or_else(|| panic!("{name}: no suggestion: {err}"));
        assert_eq!(read_file(&t), stale);
        run_ok(&mut apply(&patch, None, &[&format!("--diffsize={flag}")]));
        assert_eq!(&read_file(&t)[..LEN], &src_bytes[..], "{name}");
    }
}

/// Issue 18: every hint a patch refusal gives names something that then
/// works. For targets of every kind (wrong ones of another size or of the
/// same, the right one with a tail, one patched halfway), from a file and
/// from a pipe: each `--diffsize=MODE` a refusal names applies the patch,
/// and so does a file where a refusal from a pipe says the target is
/// patched partway and a file finishes it (said only then, never while
/// applying from a file); a wrong target of another size gets no
/// `--diffsize` at all.
#[test]
fn every_patch_refusal_hint_then_works_or_is_not_given() {
    let p = pair("hints");
    let patch = p.dir.join("p.bsync");
    make_patch(&p.src, &p.dst, &patch, &[]);
    let mut tail = p.dst_bytes.clone();
    tail.extend_from_slice(&random_bytes(300_000, 61));
    let mut half = p.dst_bytes.clone();
    half[..LEN / 2].copy_from_slice(&p.src_bytes[..LEN / 2]);
    let targets: [(&str, Vec<u8>, bool); 5] = [
        ("wrong, larger", random_bytes(LEN + 300_000, 62), false),
        ("wrong, smaller", random_bytes(LEN - 300_000, 63), false),
        ("wrong, same size", random_bytes(LEN, 64), false),
        ("right, with a tail", tail, true),
        ("patched halfway", half, true),
    ];
    let t = p.dir.join("t.img");
    for (name, bytes, right) in &targets {
        for piped in [false, true] {
            write_file(&t, bytes);
            let (code, err) = if piped {
                apply_piped(&read_file(&patch), &t, &[])
            } else {
                let out = run(&mut apply(&patch, Some(&t), &[]));
                (out.status.code(), stderr(&out))
            };
            let what = format!("{name}, {}", if piped { "piped" } else { "file" });
            if code == Some(0) {
                // Nothing to hint at: it applied.
                assert!(*right, "{what}: a wrong target took the patch: {err}");
                continue;
            }
            assert_eq!(code, Some(1), "{what}: {err}");
            assert_eq!(&read_file(&t), bytes, "{what}: refused, yet written");
            let from_file = err.contains("from a file, which is read twice");
            assert!(piped || !from_file, "{what}: {err}");
            assert!(!err.contains("finished only from a file"), "{what}: {err}");
            assert_eq!(from_file, *name == "patched halfway", "{what}: {err}");
            if !right && bytes.len() != LEN {
                assert!(!err.contains("--diffsize="), "{what}: {err}");
            }
            let mut hints: Vec<Vec<String>> = err
                .split("--diffsize=")
                .skip(1)
                .map(|h| {
                    let mode: String = h.chars().take_while(char::is_ascii_lowercase).collect();
                    vec![format!("--diffsize={mode}")]
                })
                .collect();
            if from_file {
                hints.push(Vec::new());
            }
            assert!(!*right || !hints.is_empty(), "{what}: no way on: {err}");
            for hint in hints {
                write_file(&t, bytes);
                let extra: Vec<&str> = hint.iter().map(String::as_str).collect();
                let out = run(&mut apply(&patch, Some(&t), &extra));
                assert_eq!(
                    out.status.code(),
                    Some(0),
                    "{what}: the hint {hint:?} of\n{err}\nfailed: {}",
                    stderr(&out)
                );
                assert_eq!(read_file(&t)[..LEN], p.src_bytes[..], "{what}: {hint:?}");
            }
        }
    }
}

/// Issue 18: a patch cut off in a pipe after writing, with no undo patch
/// asked for, says that applying it again from a file finishes it; it does.
#[test]
fn after_a_cut_pipe_the_file_finishes_as_said() {
    let p = pair("after-writing-no-undo");
    let patch = p.dir.join("p.bsync");
    make_patch(&p.src, &p.dst, &patch, &[]);
    let bytes = read_file(&patch);
    let (code, err) = apply_piped(&bytes[..bytes.len() - 100], &p.dst, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("the target WAS changed"), "{err}");
    assert!(
        err.contains("applying the same patch again from a file finishes it"),
        "{err}"
    );
    run_ok(&mut apply(&patch, Some(&p.dst), &[]));
    assert_same(&p.src, &p.dst);
}

/// A flag of the patch form given twice with different values is refused
/// (exit 2, one line naming it), before anything is opened: once
/// `--patch=A --patch=B` applied to B, and `--remdata` twice wrote one of
/// the two undo files, silently.
#[test]
fn a_patch_flag_given_twice_is_refused_naming_it() {
    let p = pair("given-twice");
    let patch = p.dir.join("p.bsync");
    make_patch(&p.src, &p.dst, &patch, &[]);
    let other = p.dir.join("other.img");
    write_file(&other, &p.dst_bytes);
    let (u1, u2) = (p.dir.join("u1.bsync"), p.dir.join("u2.bsync"));
    let cases: [(Vec<String>, &str); 3] = [
        (
            vec![
                format!("--patch={}", p.dst.display()),
                format!("--patch={}", other.display()),
            ],
            "--patch",
        ),
        (
            vec![
                "--patch".into(),
                "--diffsize=resize".into(),
                "--diffsize=minsize".into(),
            ],
            "--diffsize",
        ),
        (
            vec![
                "--patch".into(),
                format!("--remdata={}", u1.display()),
                format!("--remdata={}", u2.display()),
            ],
            "--remdata",
        ),
    ];
    for (args, flag) in cases {
        let mut cmd = bsync();
        cmd.args(&args).stdin(File::open(&patch).unwrap());
        let err = run_status(&mut cmd, 2);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains(&format!("{flag} is given twice")),
            "{args:?}: {err}"
        );
        assert_eq!(read_file(&p.dst), p.dst_bytes, "{args:?}");
        assert_eq!(read_file(&other), p.dst_bytes, "{args:?}");
        assert!(!u1.exists() && !u2.exists(), "{args:?}");
    }
}

/// The undo patch written while applying with `--diffsize=resize` puts
/// back the target's size and bytes, from a file and from a pipe: the tail
/// a smaller source cuts is saved in it, and a grown target is cut back
/// (once the tail was lost, and the undo of a grown target was refused as
/// corrupt: "reaches past the source's size").
#[test]
fn the_undo_of_a_resizing_apply_restores_size_and_bytes() {
    let dir = TempDir::new("undo-resize");
    let src_bytes = random_bytes(LEN, 71);
    let src = dir.join("src.img");
    write_file(&src, &src_bytes);
    for (name, len) in [("larger", LEN + 300_000), ("smaller", LEN - 300_000)] {
        // Half the source, the rest its own; a zero run in the tail too.
        let mut stale = random_bytes(len, 72);
        stale[..LEN / 2].copy_from_slice(&src_bytes[..LEN / 2]);
        stale[len - 150_000..len - 20_000].fill(0);
        let base = dir.join("base.img");
        write_file(&base, &stale);
        let patch = dir.join("p.bsync");
        make_patch(&src, &base, &patch, &["--diffsize=resize"]);
        for piped in [false, true] {
            let what = format!("{name}, {}", if piped { "piped" } else { "file" });
            let t = dir.join("t.img");
            write_file(&t, &stale);
            let undo = dir.join("undo.bsync");
            let _ = fs::remove_file(&undo);
            let remdata = format!("--remdata={}", undo.display());
            if piped {
                let (code, err) = apply_piped(&read_file(&patch), &t, &[&remdata]);
                assert_eq!(code, Some(0), "{what}: {err}");
            } else {
                run_ok(&mut apply(&patch, Some(&t), &[&remdata]));
            }
            assert_same(&src, &t);
            if piped {
                let (code, err) = apply_piped(&read_file(&undo), &t, &[]);
                assert_eq!(code, Some(0), "{what}: {err}");
            } else {
                run_ok(&mut apply(&undo, Some(&t), &[]));
            }
            let got = read_file(&t);
            assert_eq!(got.len(), len, "{what}: size");
            assert!(got == stale, "{what}: the undo did not restore the bytes");
        }
    }
}

/// A large patch and a target that differs in every block, for stopping
/// an apply partway: (dir, src, dst, the target's bytes, the patch).
fn big_scene(name: &str) -> (TempDir, PathBuf, PathBuf, Vec<u8>, PathBuf) {
    let dir = TempDir::new(name);
    let (src, dst) = (dir.join("src.img"), dir.join("dst.img"));
    write_file(&src, &random_bytes(32 << 20, 81));
    let original = random_bytes(32 << 20, 82);
    write_file(&dst, &original);
    let patch = dir.join("p.bsync");
    run_ok(&mut local(
        &src,
        &dst,
        &[
            "-q",
            "-b",
            "256K",
            "-n",
            "--write-patch",
            patch.to_str().unwrap(),
        ],
    ));
    (dir, src, dst, original, patch)
}

/// How `start_apply` gives the patch.
#[derive(Clone, Copy, Debug)]
enum Feed {
    File,
    Pipe,
    /// Through a pipe, 256 KiB every 5 ms: the apply cannot end before
    /// about 0.6 s.
    Slow,
    /// Through a pipe that brings the first 8 MiB, then nothing for 30 s.
    Stall,
}

/// Start `bsync --patch=DST ARGS` with the patch as `feed` says (a pipe
/// fed by a thread); `shell` runs it under `sh -c` first (`trap "" INT`
/// there: a background job of a script, whose SIGINT is ignored).
fn start_apply(
    patch: &Path,
    dst: &Path,
    args: &[String],
    feed: Feed,
    shell: &str,
) -> std::process::Child {
    let mut cmd = if shell.is_empty() {
        bsync()
    } else {
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg(format!("{shell}; exec \"$0\" \"$@\""))
            .arg(BIN);
        sh
    };
    cmd.arg(format!("--patch={}", dst.display()))
        .args(args)
        .stderr(Stdio::piped());
    if let Feed::File = feed {
        return cmd.stdin(File::open(patch).unwrap()).spawn().unwrap();
    }
    let mut child = cmd.stdin(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let bytes = read_file(patch);
    std::thread::spawn(move || {
        let chunk = match feed {
            Feed::Slow => 256 << 10,
            Feed::Stall => {
                let _ = stdin.write_all(&bytes[..8 << 20]);
                std::thread::sleep(std::time::Duration::from_secs(30));
                return;
            }
            _ => bytes.len().max(1),
        };
        for piece in bytes.chunks(chunk) {
            if stdin.write_all(piece).is_err() {
                return;
            }
            if let Feed::Slow = feed {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    });
    child
}

/// Wait until `undo` holds `bytes` (the apply is writing), or fail if the
/// apply ended first.
fn wait_for_undo(child: &mut std::process::Child, undo: &Path, bytes: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while fs::metadata(undo).map_or(0, |m| m.len()) < bytes {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the apply ended before its undo patch held {bytes} bytes"
        );
        assert!(std::time::Instant::now() < deadline, "no undo data");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Ctrl-C, SIGTERM (and Ctrl-C where a script's background job ignores
/// it) stop an apply between two records: exit 128 + the signal, one line
/// saying the target was changed and the undo command, which restores it
/// (once Ctrl-C was ignored, the apply finishing with exit 0, and SIGTERM
/// killed it without a word and left an undo patch that did not apply).
#[test]
fn a_signal_stops_an_apply_between_records_and_its_undo_restores() {
    let (dir, src, dst, original, patch) = big_scene("apply-signal");
    let undo = dir.join("undo.bsync");
    for (sig, code, shell, feed) in [
        ("INT", 130, "", Feed::File),
        ("INT", 130, "trap '' INT", Feed::Pipe),
        ("TERM", 143, "", Feed::Pipe),
        ("HUP", 129, "", Feed::File),
    ] {
        let what = format!("SIG{sig} {shell} {feed:?}");
        write_file(&dst, &original);
        let _ = fs::remove_file(&undo);
        let args = [format!("--remdata={}", undo.display())];
        let mut child = start_apply(&patch, &dst, &args, feed, shell);
        wait_for_undo(&mut child, &undo, 2 << 20);
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status();
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{what}: {err}");
        let how = format!(
            "undo with: bsync --patch={} < {}",
            dst.display(),
            undo.display()
        );
        assert!(
            err.contains("the target WAS changed") && err.contains(&how),
            "{what}: {err}"
        );
        let changed = read_file(&dst);
        assert!(changed != original, "{what}: nothing was written");
        assert!(changed != read_file(&src), "{what}: it was not stopped");
        // The undo patch is whole (not cut short) and puts it back.
        let err = run_ok(&mut apply(&undo, None, &[]));
        assert!(!err.contains("cut short"), "{what}: {err}");
        assert!(read_file(&dst) == original, "{what}: not restored");
    }
    // Without an undo patch (from a slow pipe, so that the apply is still
    // writing when the signal comes): applying the same patch from a file
    // finishes it.
    write_file(&dst, &original);
    let mut child = start_apply(&patch, &dst, &[], Feed::Slow, "");
    let first = |path: &Path| {
        let mut head = [0u8; 4096];
        std::io::Read::read_exact(&mut File::open(path).unwrap(), &mut head).unwrap();
        head
    };
    while first(&dst)[..] == original[..4096] {
        assert!(child.try_wait().unwrap().is_none(), "the apply ended");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(
        err.contains("applying the same patch again from a file finishes it"),
        "{err}"
    );
    run_ok(&mut apply(&patch, None, &[]));
    assert_same(&src, &dst);
}

/// `kill -9` partway: every record of the undo patch is on disk before
/// the target is written there, so the undo patch, cut short, puts back
/// everything that was overwritten, whether the kill fell between two
/// writes or in one (once it was truncated and refused: "truncated").
#[test]
fn after_kill_9_the_undo_cut_short_restores_what_was_overwritten() {
    let (dir, _, dst, original, patch) = big_scene("apply-kill");
    let undo = dir.join("undo.bsync");
    for (at, feed, undo_piped) in [
        (1 << 20, Feed::File, false),
        (6 << 20, Feed::Pipe, false),
        (13 << 20, Feed::File, true),
        (21 << 20, Feed::Pipe, true),
    ] {
        let what = format!("killed at {at}, {feed:?}, undo piped {undo_piped}");
        write_file(&dst, &original);
        let _ = fs::remove_file(&undo);
        let args = [format!("--remdata={}", undo.display())];
        let mut child = start_apply(&patch, &dst, &args, feed, "");
        wait_for_undo(&mut child, &undo, at);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(read_file(&dst) != original, "{what}: nothing was written");
        let err = if undo_piped {
            let (code, err) = apply_piped(&read_file(&undo), &dst, &[]);
            assert_eq!(code, Some(0), "{what}: {err}");
            err
        } else {
            run_ok(&mut apply(&undo, None, &["--verbose"]))
        };
        assert!(err.contains("cut short"), "{what}: {err}");
        assert!(read_file(&dst) == original, "{what}: not restored");
    }
}

/// A signal while the apply waits for a pipe that brings nothing: it
/// cannot reach the end of a record, so after `stop::GRACE` (10 s) the
/// signal ends it anyway, saying so; the undo patch, cut short, restores.
#[test]
fn a_signal_while_a_pipe_stalls_ends_the_apply_and_its_undo_restores() {
    let (dir, _, dst, original, patch) = big_scene("apply-stall");
    let undo = dir.join("undo.bsync");
    let args = [format!("--remdata={}", undo.display())];
    let mut child = start_apply(&patch, &dst, &args, Feed::Stall, "");
    wait_for_undo(&mut child, &undo, 6 << 20);
    // Every record of the 8 MiB is written before the apply waits.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(143), "{err}");
    assert!(
        err.contains("stopped while writing: the target WAS changed")
            && err.contains("applies up to its last whole record"),
        "{err}"
    );
    let err = run_ok(&mut apply(&undo, None, &[]));
    assert!(err.contains("cut short"), "{err}");
    assert!(read_file(&dst) == original, "not restored");
}

/// An offset of `p`'s images far (64 KiB) from any byte where they differ.
fn far_from_differences(p: &Pair) -> usize {
    let near = 64 << 10;
    (near..LEN - near)
        .step_by(4096)
        .find(|&at| p.src_bytes[at - near..at + near] == p.dst_bytes[at - near..at + near])
        .unwrap()
}

/// New-user trial: an undo patch applied to a target changed since the
/// apply (a byte elsewhere) wrote its ranges, then failed the final check
/// and advised applying it again, which failed as well. From a file it is
/// now refused before writing, naming its check; from a pipe (which cannot
/// be checked first) the failure after writing suggests nothing untrue.
#[test]
fn an_undo_of_a_target_changed_since_the_apply_is_refused_untouched() {
    let p = pair("undo-changed-since");
    let patch = p.dir.join("p.bsync");
    let undo = p.dir.join("undo.bsync");
    run_ok(&mut local(
        &p.src,
        &p.dst,
        &[
            "-q",
            "-b",
            BS,
            "-n",
            "--write-patch",
            patch.to_str().unwrap(),
        ],
    ));
    run_ok(&mut apply(
        &patch,
        None,
        &[&format!("--remdata={}", undo.display())],
    ));
    assert_same(&p.src, &p.dst);
    let at = far_from_differences(&p);
    let mut changed = p.src_bytes.clone();
    changed[at] ^= 0x5a;
    write_file(&p.dst, &changed);
    let out = run(&mut apply(&undo, None, &[]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("the digest the target had before that apply"),
        "{err}"
    );
    assert!(err.contains("the target is untouched"), "{err}");
    assert!(read_file(&p.dst) == changed, "the target was written");
    // From a pipe: written, then the result check fails, naming it so.
    let (code, err) = apply_piped(&read_file(&undo), &p.dst, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("is not the digest the target had before that apply"),
        "{err}"
    );
    assert!(err.contains("the target WAS changed"), "{err}");
    assert!(!err.contains("finishes it"), "{err}");
}

/// The same for an undo patch cut short (its apply killed): the target
/// changed since, outside what was written, is refused before writing.
#[test]
fn an_undo_cut_short_of_a_target_changed_since_is_refused_untouched() {
    let (dir, _, dst, _, patch) = big_scene("undo-cut-changed");
    let undo = dir.join("undo.bsync");
    let args = [format!("--remdata={}", undo.display())];
    let mut child = start_apply(&patch, &dst, &args, Feed::File, "");
    wait_for_undo(&mut child, &undo, 1 << 20);
    child.kill().unwrap();
    child.wait().unwrap();
    let mut changed = read_file(&dst);
    let at = changed.len() - 4096;
    changed[at] ^= 0x5a;
    write_file(&dst, &changed);
    let out = run(&mut apply(&undo, None, &[]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cut short"), "{err}");
    assert!(err.contains("the target is untouched"), "{err}");
    assert!(read_file(&dst) == changed, "the target was written");
}

/// New-user trial: `--remdata=-` wrote the undo into a file named `-`,
/// `--remdata=` failed at create (exit 1) and `--patch=` was taken as
/// `--patch`. All three are usage errors (exit 2), nothing written.
#[test]
fn an_undo_to_stdout_and_empty_patch_values_are_usage_errors() {
    let p = pair("undo-dash");
    let patch = p.dir.join("p.bsync");
    make_patch(&p.src, &p.dst, &patch, &[]);
    for (args, says) in [
        (&["--patch", "--remdata=-"][..], "must be a file"),
        (&["--patch", "--remdata="], "--remdata=: an empty file name"),
        (&["--patch="], "--patch=: an empty target"),
        (&["--patch=", "--remdata=u"], "--patch=: an empty target"),
    ] {
        let mut cmd = bsync();
        cmd.current_dir(p.dir.path())
            .args(args)
            .stdin(File::open(&patch).unwrap());
        let out = run(&mut cmd);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!p.dir.join("-").exists() && !p.dir.join("u").exists());
        assert_eq!(read_file(&p.dst), p.dst_bytes, "{args:?}");
    }
}

/// New-user trial: Ctrl-C or SIGTERM while `--write-patch FILE` ran left
/// `FILE.part` behind (a read error removed it). A signal removes it too,
/// says so, and an older FILE is kept as it was.
#[test]
fn a_signal_while_writing_a_patch_removes_its_part_file() {
    let dir = TempDir::new("write-patch-signal");
    let (src, dst) = (dir.join("src.img"), dir.join("dst.img"));
    write_file(&src, &random_bytes(64 << 20, 91));
    write_file(&dst, &random_bytes(64 << 20, 92));
    let patch = dir.join("p.bsync");
    let part = dir.join("p.bsync.part");
    for (signal, code) in [("-TERM", 143), ("-INT", 130)] {
        write_file(&patch, b"older patch");
        let child = local(&src, &dst, &["-b", "256K", "--write-patch"])
            .arg(&patch)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !part.exists() {
            assert!(std::time::Instant::now() < deadline, "no .part file");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{signal}: {err}");
        assert!(!part.exists(), "{signal}: {err}");
        assert_eq!(read_file(&patch), b"older patch", "{signal}");
        assert!(err.contains("p.bsync.part removed"), "{signal}: {err}");
        assert!(err.contains("is kept as it was"), "{signal}: {err}");
    }
}

/// New-user trial: an "already applied" run with `--remdata=a1` left an
/// empty undo patch `a1`, whose name was then refused as existing. Nothing
/// written, no undo patch is made, and the line says so.
#[test]
fn an_apply_that_writes_nothing_leaves_no_undo_patch() {
    let p = pair("undo-nothing");
    let patch = p.dir.join("p.bsync");
    make_patch(&p.src, &p.dst, &patch, &[]);
    run_ok(&mut apply(&patch, None, &[]));
    let undo = p.dir.join("a1");
    let remdata = format!("--remdata={}", undo.display());
    let err = run_ok(&mut apply(&patch, None, &[&remdata]));
    assert!(err.contains("already applied"), "{err}");
    assert!(err.contains("no undo patch was made"), "{err}");
    assert!(!undo.exists(), "{err}");
    let (code, err) = apply_piped(&read_file(&patch), &p.dst, &[&remdata]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("no undo patch was made"), "{err}");
    assert!(!undo.exists(), "{err}");
    assert_same(&p.src, &p.dst);
}
