//! The command line through the real binary: usage errors are one line on
//! stderr naming the flag, exit status 2 and no destination touched; the
//! Go-style flag forms are interchangeable; help and version behave.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::SystemTime;

use common::*;

/// Every flag of the table in SPEC.md, and `-v`.
const ALL_FLAGS: &[&str] = &[
    "-a",
    "-f",
    "-r",
    "-b",
    "-s",
    "-p",
    "-i",
    "-n",
    "-e",
    "-K",
    "-L",
    "-t",
    "-l",
    "-w",
    "-prefetch",
    "-auto",
    "-q",
    "-v",
    "-d",
    "-P",
];

/// A source, an existing destination with known content and an old mtime,
/// and a destination path that does not exist.
struct Scene {
    dir: TempDir,
    dst_bytes: Vec<u8>,
    dst_mtime: SystemTime,
}

impl Scene {
    fn new(name: &str) -> Scene {
        let dir = TempDir::new(name);
        write_file(&dir.join("src"), &random_bytes(50_000, 1));
        let dst_bytes = random_bytes(40_000, 2);
        write_file(&dir.join("dst"), &dst_bytes);
        let dst_mtime = age(&dir.join("dst"));
        Scene {
            dir,
            dst_bytes,
            dst_mtime,
        }
    }

    fn src(&self) -> PathBuf {
        self.dir.join("src")
    }

    fn dst(&self) -> PathBuf {
        self.dir.join("dst")
    }

    fn new_dst(&self) -> PathBuf {
        self.dir.join("new")
    }

    /// Replace the placeholders SRC, DST and NEW with real paths.
    fn args(&self, args: &[&str]) -> Vec<String> {
        args.iter()
            .map(|a| {
                let path = |p: PathBuf| p.display().to_string();
                match *a {
                    "SRC" => path(self.src()),
                    "DST" => path(self.dst()),
                    "NEW" => path(self.new_dst()),
                    other => other.to_string(),
                }
            })
            .collect()
    }

    /// Neither destination may have been touched.
    fn assert_untouched(&self, what: &str) {
        assert!(
            read_file(&self.dst()) == self.dst_bytes,
            "{what}: the destination's content changed"
        );
        assert_eq!(
            mtime(&self.dst()),
            self.dst_mtime,
            "{what}: the destination's mtime changed"
        );
        assert!(
            !self.new_dst().exists(),
            "{what}: a destination that did not exist was created"
        );
    }
}

/// Run `args` and check it is a usage error: status 2, nothing on stdout,
/// exactly one stderr line starting `bsync: `. Returns that line.
fn usage_error(scene: &Scene, args: &[&str]) -> String {
    let args = scene.args(args);
    let out = run(bsync().args(&args));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: stderr: {err}");
    assert!(out.stdout.is_empty(), "{args:?}: wrote to stdout");
    assert_eq!(err.lines().count(), 1, "{args:?}: want one line:\n{err}");
    assert!(err.ends_with('\n'), "{args:?}: {err:?}");
    assert!(err.starts_with("bsync: "), "{args:?}: {err}");
    scene.assert_untouched(&format!("{args:?}"));
    err.trim_end().to_string()
}

#[test]
fn bad_values_name_their_flag() {
    let scene = Scene::new("bad-values");
    let key63 = "0123456789abcdef".repeat(4)[..63].to_string();
    let key_g = format!("{}g", &"0123456789abcdef".repeat(4)[..63]);
    // (arguments, the line starts with `bsync: FLAG:`)
    let cases: &[(&[&str], &str)] = &[
        (&["-f", "SRC", "-t", "DST", "-b"], "-b"),
        (&["-f", "SRC", "-t", "NEW", "-b"], "-b"),
        (&["-b", "0", "-f", "SRC", "-t", "DST"], "-b"),
        (&["-b", "x", "-f", "SRC", "-t", "DST"], "-b"),
        (&["-b", "2G", "-f", "SRC", "-t", "NEW"], "-b"),
        (&["-s", "-1", "-f", "SRC", "-t", "DST"], "-s"),
        (&["-w", "0", "-f", "SRC", "-t", "DST"], "-w"),
        (&["-w", "65", "-f", "SRC", "-t", "NEW"], "-w"),
        (&["-prefetch", "-1", "-f", "SRC", "-t", "DST"], "-prefetch"),
        (&["-p", "65536", "-f", "SRC", "-t", "DST"], "-p"),
        (&["-p", "x", "-f", "SRC", "-t", "DST"], "-p"),
        (&["-K", &key63, "-f", "SRC", "-t", "DST"], "-K"),
        (&["-K", &key_g, "-f", "SRC", "-t", "DST"], "-K"),
        (&["-L", "ultra", "-f", "SRC", "-t", "DST"], "-L"),
        (&["-i", "not-an-ip", "-f", "SRC", "-t", "DST"], "-i"),
        (&["-r", "nohostport", "-f", "SRC", "-t", "DST"], "-r"),
        (&["-r", "nohostport", "-f", "SRC"], "-r"),
    ];
    for (args, flag) in cases {
        let line = usage_error(&scene, args);
        assert!(
            line.starts_with(&format!("bsync: {flag}:")),
            "{args:?}: want `bsync: {flag}:`, got {line:?}"
        );
    }
    // A key is a secret: a wrong one must not be echoed.
    for key in [&key63, &key_g] {
        let line = usage_error(&scene, &["-K", key, "-f", "SRC", "-t", "DST"]);
        assert!(!line.contains(&key[..16]), "the key was echoed: {line}");
    }
}

#[test]
fn unknown_flags_and_contradictions_are_refused() {
    let scene = Scene::new("contradictions");
    // (arguments, words the line must contain)
    let cases: &[(&[&str], &[&str])] = &[
        (&["-x", "-f", "SRC", "-t", "DST"], &["-x"]),
        (&["--bogus", "-f", "SRC", "-t", "DST"], &["-bogus"]),
        (&["-f", "SRC", "-t", "NEW", "--bogus=1"], &["-bogus"]),
        (&["-e", "-f", "SRC"], &["-e"]),
        (&["-e", "-f", "SRC", "-t", "DST"], &["-e"]),
        (&["-e", "-f", "SRC", "-t", "NEW"], &["-e"]),
        (
            &["-r", "127.0.0.1:9", "-f", "SRC", "-t", "DST"],
            &["-r", "-t"],
        ),
        (&["-auto", "-f", "SRC", "-t", "DST"], &["-auto"]),
        (&["-auto", "-f", "SRC"], &["-auto"]),
        (
            &["-auto", "-d", "-r", "127.0.0.1:9", "-f", "DST"],
            &["-auto", "-d"],
        ),
        (&["-auto", "-d", "-f", "DST", "-t", "SRC"], &["-auto"]),
        (
            &["-n", "-L", "fast", "-f", "SRC", "-t", "DST"],
            &["-n", "-L"],
        ),
        (&["-f", "SRC", "-t", "DST", "stray"], &["stray"]),
        (&["-f", "SRC", "stray", "-t", "NEW"], &["stray"]),
    ];
    for (args, words) in cases {
        let line = usage_error(&scene, args);
        for w in *words {
            assert!(line.contains(w), "{args:?}: should name {w}: {line}");
        }
    }
}

#[test]
fn go_style_forms_are_the_same() {
    let dir = TempDir::new("go-style");
    let src = dir.join("src");
    let dst = dir.join("dst");
    let data = random_bytes(20_000, 3);
    write_file(&src, &data);
    let forms: &[&[&str]] = &[
        &["-b", "4096"],
        &["--b", "4096"],
        &["-b=4096"],
        &["--b=4096"],
        &["-b", "4K"],
        &["-b", "4096", "-prefetch", "3"],
        &["-b", "4096", "--prefetch", "3"],
        &["-b", "4096", "-prefetch=3"],
        &["-b", "4096", "--prefetch=3"],
        &["-b", "4096", "--w=2", "--q=false"],
    ];
    for form in forms {
        let _ = std::fs::remove_file(&dst);
        let err = run_ok(&mut local(&src, &dst, form));
        assert_same(&src, &dst);
        // 20 000 bytes in 4096-byte blocks: five blocks, the last short.
        assert_eq!(summary(&err).blocks, 5, "{form:?}: {err}");
    }
    // Paths in the -flag=value forms too.
    let _ = std::fs::remove_file(&dst);
    let f = format!("-f={}", src.display());
    let t = format!("--t={}", dst.display());
    run_ok(bsync().args([&f, &t, "--q"]));
    assert_same(&src, &dst);
}

#[test]
fn help_lists_every_flag() {
    for flag in ["-h", "--help", "-help"] {
        let out = run(bsync().arg(flag));
        assert_eq!(out.status.code(), Some(0), "{flag}");
        let text = String::from_utf8_lossy(&out.stdout);
        for f in ALL_FLAGS {
            assert!(
                text.contains(&format!("{f} ")),
                "{flag}: help does not mention {f}"
            );
        }
        assert!(out.stderr.is_empty(), "{flag}: {}", stderr(&out));
    }
}

#[test]
fn version_names_the_protocol() {
    for flag in ["--version", "-version"] {
        let out = run(bsync().arg(flag));
        assert_eq!(out.status.code(), Some(0), "{flag}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("ver0.02"), "{flag}: {text}");
        assert_eq!(text.lines().count(), 1, "{flag}: {text}");
    }
}

#[test]
fn help_into_a_closed_pipe_exits_0() {
    // `bsync -h | head -1`: read one line, then hang up.
    let mut child = bsync()
        .arg("-h")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bsync");
    let mut first = String::new();
    let stdout = child.stdout.take().expect("piped stdout");
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("read a line");
    assert!(first.starts_with("bsync"), "{first:?}");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // Make sure the write really meets a closed pipe: the reader (`true`) is
    // gone before bsync starts writing.
    let bin = env!("CARGO_BIN_EXE_bsync");
    let out = run(std::process::Command::new("sh").args([
        "-c",
        r#"{ sleep 0.3; "$0" -h; echo "status=$?" >&2; } | true"#,
        bin,
    ]));
    let err = stderr(&out);
    assert!(err.contains("status=0"), "{err}");
    assert!(!err.contains("panic"), "{err}");
}

/// A usage error in a run that also fails to open anything reports the usage
/// error: flags are checked before any file is opened.
#[test]
fn usage_is_checked_before_files() {
    let scene = Scene::new("order");
    let missing = Path::new("/nonexistent/src");
    let args = ["-b", "0", "-f", &missing.display().to_string(), "-t", "NEW"];
    let line = usage_error(&scene, &args);
    assert!(line.starts_with("bsync: -b:"), "{line}");
}

/// Issue 15, items 2 and 3: a writing end that can never hold the data
/// (`/dev/zero` because -f was forgotten, `/dev/null`, a directory), a `-t`
/// that looks like `user@host` without `:/path`, and `-t -` are refused
/// before anything starts: exit 2, no file created.
#[test]
fn runs_that_cannot_succeed_are_refused() {
    let scene = Scene::new("cannot-succeed");
    let dir = scene.dir.path().display().to_string();
    let cases: &[(&[&str], &[&str])] = &[
        (&["-p", "0"], &["-f is missing", "/dev/zero"]),
        (&["-d", "-r", "127.0.0.1:9"], &["-f is missing"]),
        (&["-d", "-t", "SRC"], &["-f is missing"]),
        (
            &["-f", "SRC", "-t", "/dev/null"],
            &["-t: /dev/null", "character device"],
        ),
        (
            &["-f", "/dev/null", "-p", "0"],
            &["-f: /dev/null", "character device"],
        ),
        (&["-f", &dir, "-p", "0"], &["is a directory"]),
        (
            &["-f", "SRC", "-t", "root@newhost"],
            &["root@newhost", "no :/path"],
        ),
        (&["-f", "SRC", "-t", "-"], &["-t: - is not a target"]),
    ];
    for (args, words) in cases {
        let line = usage_error(&scene, args);
        for w in *words {
            assert!(line.contains(w), "{args:?}: should say {w}: {line}");
        }
    }
    assert!(!Path::new("root@newhost").exists() && !Path::new("-").exists());
}

/// Issue 15, item 8: a flag given where it has no effect is refused,
/// naming it, and -token-file naming a missing file is a usage error.
#[test]
fn flags_without_effect_are_refused() {
    let scene = Scene::new("no-effect");
    let key = "ab".repeat(32);
    let token = scene.dir.join("token");
    write_file(&token, format!("{key}\n").as_bytes());
    let token = token.display().to_string();
    let cases: &[(&[&str], &str)] = &[
        (
            &["-p", "2222", "-f", "SRC", "-t", "root@h:/p"],
            "-p is the port",
        ),
        (
            &["-p", "2222", "-f", "SRC", "-r", "127.0.0.1:9"],
            "-p applies only",
        ),
        (
            &["-i", "::", "-f", "SRC", "-r", "127.0.0.1:9"],
            "-i applies only",
        ),
        (&["-P", "-f", "SRC", "-r", "127.0.0.1:9"], "-P applies only"),
        (
            &["-b", "1M", "-d", "-f", "DST", "-r", "127.0.0.1:9"],
            "-b has no effect",
        ),
        (
            &["-n", "-f", "DST", "-p", "0"],
            "-n has no effect on a server",
        ),
        (
            &["-L", "best", "-d", "-f", "SRC"],
            "-L has no effect on a server",
        ),
        (
            &[
                "-K",
                &key,
                "-token-file",
                &token,
                "-f",
                "SRC",
                "-r",
                "127.0.0.1:9",
            ],
            "-token-file",
        ),
        (
            &[
                "-token-file",
                "/nonexistent/token",
                "-f",
                "SRC",
                "-r",
                "127.0.0.1:9",
            ],
            "-token-file",
        ),
    ];
    for (args, want) in cases {
        let line = usage_error(&scene, args);
        assert!(line.contains(want), "{args:?}: should say {want}: {line}");
    }
}

/// Issue 15, item 10: `-f DIR` and `-f /dev/stdin` as a source get a hint
/// that fits, not "is -f missing?".
#[test]
fn unreadable_sources_get_a_hint_that_fits() {
    let scene = Scene::new("source-hint");
    let dir = scene.dir.path().display().to_string();
    for (src, want) in [
        (dir.as_str(), "directory"),
        ("/dev/stdin", "save it to a file"),
    ] {
        let line = usage_error(&scene, &["-f", src, "-t", "NEW"]);
        assert!(line.contains(want), "{src}: {line}");
        assert!(!line.contains("is -f missing"), "{src}: {line}");
    }
}

/// The new-user trial: a download `--compare` over `-r` was refused with
/// a hint only `-t` fits (`swap -f and the -t path`), and the `-d` server
/// started for it was left waiting, unsaid. Now the hint fits `-r` and says
/// that server still waits; the refusal comes before connecting.
#[test]
fn a_dry_download_over_r_gets_a_hint_that_fits_r() {
    let scene = Scene::new("dry-download");
    for (flag, want) in [
        (&["--compare"][..], "serve the other end without -d"),
        (
            &["--write-patch", "p.bsync"],
            "run --write-patch on the server's machine",
        ),
    ] {
        let args = [&["-d", "-f", "DST", "-r", "127.0.0.1:9"][..], flag].concat();
        let line = usage_error(&scene, &args);
        assert!(line.contains(want), "{flag:?}: {line}");
        assert!(line.contains("still waits for a client"), "{line}");
        assert!(!line.contains("-t path"), "{line}");
    }
    let line = usage_error(&scene, &["-d", "-f", "SRC", "-t", "DST", "--compare"]);
    assert!(line.contains("swap -f and the -t path"), "{line}");
}

/// The new-user trial: `-over-ssh` with a local `-t` was refused for a
/// sync but accepted for `--compare` and `--write-patch`: refused alike.
#[test]
fn over_ssh_without_a_remote_is_refused_for_dry_runs_too() {
    let scene = Scene::new("over-ssh-local");
    for dry in [&[][..], &["--compare"], &["--write-patch", "p.bsync"]] {
        let args = [&["-over-ssh", "-f", "SRC", "-t", "DST"][..], dry].concat();
        let line = usage_error(&scene, &args);
        assert!(
            line.contains("-over-ssh applies only to -t user@host:"),
            "{line}"
        );
    }
}

/// Issue 15, item 12: buffers that would take more than half the memory are
/// refused with the figure and the formula.
#[test]
fn buffers_beyond_half_the_memory_are_refused() {
    let scene = Scene::new("memory");
    let line = usage_error(
        &scene,
        &[
            "-b",
            "1G",
            "-w",
            "64",
            "-prefetch",
            "1024",
            "-f",
            "SRC",
            "-r",
            "127.0.0.1:9",
        ],
    );
    assert!(
        line.contains("(2 × workers 64 + 1) blocks of 1.0 GiB"),
        "{line}"
    );
    assert!(line.contains("more than half"), "{line}");
}

/// Issue 15, item 11: -h says what -auto does (issue 12 made it work), and
/// no help line is wider than 80 columns.
#[test]
fn help_is_truthful_and_narrow() {
    let out = run(bsync().arg("-h"));
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        assert!(line.chars().count() <= 80, "too wide: {line}");
    }
    let auto = text
        .lines()
        .find(|l| l.trim_start().starts_with("-auto"))
        .unwrap_or_default();
    assert!(auto.contains("measure round trip"), "{auto}");
}

/// Issue 15, item 13: the manual page and the completions come out of the
/// binary, from the same table as -h.
#[test]
fn manual_and_completions_are_generated() {
    let out = run(bsync().arg("--help-man"));
    assert_eq!(out.status.code(), Some(0));
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(man.starts_with(".TH BSYNC 1"), "{man}");
    for f in ALL_FLAGS {
        assert!(man.contains(&format!("\\fB\\{f}")), "the manual lacks {f}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let out = run(bsync().args(["--completions", shell]));
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("bwlimit"), "{shell}: {text}");
        // The shell itself must accept it, where it is installed.
        let dir = TempDir::new(&format!("completion-{shell}"));
        let file = dir.join("completion");
        write_file(&file, &out.stdout);
        match std::process::Command::new(shell)
            .arg("-n")
            .arg(&file)
            .output()
        {
            Ok(check) => assert!(check.status.success(), "{shell} -n: {}", stderr(&check)),
            Err(_) => eprintln!("{shell} not installed: syntax not checked"),
        }
    }
    let out = run(bsync().args(["--completions", "tcsh"]));
    assert_eq!(out.status.code(), Some(2));
}

/// Issue 19, item 9: an I/O error speaks the system's words, without the
/// ` (os error N)` Rust adds.
#[test]
fn io_errors_speak_the_systems_words() {
    let scene = Scene::new("os-words");
    let missing = scene.dir.join("missing");
    let out = run(bsync().arg("-f").arg(&missing).arg("-t").arg(scene.dst()));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(": No such file or directory\n"), "{err}");
    assert!(!err.contains("os error"), "{err}");
}

/// Issue 19, items 1, 5 and 15: bdsync's options are understood outside
/// its form, rsync's --dry-run points to --compare, conflicting flags name
/// both, and bdsync's --digest is accepted on its client form.
#[test]
fn bdsync_options_and_conflicts() {
    let scene = Scene::new("bdsync-options");
    for (args, want) in [
        (
            &["--verbose", "-q", "-f", "SRC", "-t", "DST"][..],
            "-q and -v",
        ),
        (&["-q", "-v", "-f", "SRC", "-t", "DST"], "-q and -v"),
        (
            &["-t", "DST", "-f", "SRC", "-t", "NEW"],
            "-t is given twice",
        ),
        (
            &["-b", "4K", "--blocksize=8K", "-f", "SRC", "-t", "DST"],
            "-b is given twice",
        ),
        (&["--dry-run", "-f", "SRC", "-t", "DST"], "--compare"),
        (&["--diffsize=resize", "-f", "SRC", "-t", "DST"], "--patch"),
        (&["--digest=md5", "-f", "SRC", "-t", "DST"], "client"),
        (
            &["--digest=nosuch", "true", "SRC", "DST"],
            "not one of bdsync's digests",
        ),
    ] {
        let line = usage_error(&scene, args);
        assert!(line.contains(want), "{args:?}: {line}");
        assert!(!line.contains("unknown flag -verbose"), "{line}");
    }
    // --verbose, --blocksize and --progress work where -v and -b do; a
    // size given twice in two spellings of one value is no conflict
    // (new-user trial: -b 1M -b 1048576 was refused).
    let out = run(bsync().args(scene.args(&[
        "--verbose",
        "--blocksize=4K",
        "-b",
        "4096",
        "--progress",
        "-f",
        "SRC",
        "-t",
        "NEW",
    ])));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(read_file(&scene.new_dst()), read_file(&scene.src()));
    assert!(stderr(&out).contains("done: 13 blocks"), "{}", stderr(&out));
}

/// Issue 19, item 15: bdsync's client line with --digest runs, saying once
/// that bsync checks with its own digest.
#[test]
fn bdsync_digest_is_accepted_on_the_client_form() {
    let scene = Scene::new("bdsync-digest");
    let server = format!("{} --server", env!("CARGO_BIN_EXE_bsync"));
    let out = run(bsync().args(scene.args(&["--digest=sha256", &server, "SRC", "DST"])));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!out.stdout.is_empty(), "no patch on stdout");
    assert_eq!(err.matches("its own 128-bit digest").count(), 1, "{err}");
}

/// Issue 19, item 12: `bsync -f X` alone serves nothing; it says how bsync
/// runs and exits 2.
#[test]
fn a_bare_file_gets_the_three_ways() {
    let scene = Scene::new("bare-file");
    for args in [&["-f", "SRC"][..], &[], &["-w", "2", "-f", "DST"]] {
        let out = run(bsync().args(scene.args(args)));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        for way in ["-t DST", "-p PORT", "-r HOST:PORT"] {
            assert!(err.contains(way), "{args:?}: {err}");
        }
        scene.assert_untouched(&format!("{args:?}"));
    }
}

/// Issue 19, item 6: `-t barhost`, a host of ~/.ssh/config and no file
/// here, is refused asking for host:/path or ./name; a new local file is
/// said to be new, and the summary names the destination.
#[test]
fn a_host_name_as_target_is_refused() {
    let scene = Scene::new("bare-host");
    let home = scene.dir.join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    write_file(
        &home.join(".ssh/config"),
        b"Host barhost\n  HostName 192.0.2.1\n",
    );
    let out = run(bsync()
        .current_dir(scene.dir.path())
        .env("HOME", &home)
        .args(scene.args(&["-f", "SRC", "-t", "barhost"])));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("barhost:/path") && err.contains("./barhost"),
        "{err}"
    );
    assert!(!scene.dir.join("barhost").exists());
    let out = run(bsync()
        .current_dir(scene.dir.path())
        .env("HOME", &home)
        .args(scene.args(&["-f", "SRC", "-t", "./barhost"])));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("destination ./barhost: a new file"), "{err}");
    assert!(err.contains("destination ./barhost: done:"), "{err}");
}

/// Issue 19, item 7: every README section the messages cite exists.
#[test]
fn cited_readme_sections_exist() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let out = run(bsync().args(["--twopass", "c", "a", "b"]));
    let err = stderr(&out);
    let cited = err
        .split("README, \"")
        .nth(1)
        .and_then(|s| s.split('"').next());
    let cited = cited.unwrap_or_else(|| panic!("no README section cited: {err}"));
    assert!(
        readme
            .lines()
            .any(|l| l.starts_with("## ") && l.contains(cited)),
        "README has no section {cited:?}"
    );
    // Issue 19, item 13: one description of -t, the one that is true.
    let ssh = readme
        .split("\n## ")
        .find(|s| s.starts_with("One command over SSH"))
        .expect("README: One command over SSH");
    let steps = ssh.lines().filter(|l| l.starts_with("1. ")).count();
    assert_eq!(steps, 1, "README describes -t {steps} times");
    assert!(
        !ssh.contains("`scp` copies"),
        "README still says -t uses scp"
    );
}

/// `sh -c CMD` on a pseudo-terminal (stdin, stdout and stderr), through
/// util-linux's `script`, stopped after 30 s at most: its exit status and
/// everything it printed. `None` when `script` is not installed.
fn in_pty(cmd: &str) -> Option<(Option<i32>, String)> {
    let out = std::process::Command::new("timeout")
        .args(["30", "script", "-qec", cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.code() == Some(127) {
        return None;
    }
    Some((out.status.code(), text))
}

/// Issue 19, item 2: a patch is neither read from nor written to a
/// terminal: one line, exit 2, as gzip and zstd refuse.
#[test]
fn patches_and_terminals() {
    let scene = Scene::new("pty-patch");
    let bin = env!("CARGO_BIN_EXE_bsync");
    let (src, dst) = (
        scene.src().display().to_string(),
        scene.dst().display().to_string(),
    );
    for (cmd, want) in [
        (format!("{bin} --patch={dst}"), "stdin, which is a terminal"),
        (
            format!("{bin} '{bin} --server' {src} {dst}"),
            "stdout is a terminal",
        ),
        (
            format!("{bin} -f {src} -t {dst} --write-patch -"),
            "stdout is a terminal",
        ),
    ] {
        let Some((status, text)) = in_pty(&cmd) else {
            return skip("no script(1) to make a terminal (util-linux)");
        };
        assert_eq!(status, Some(2), "{cmd}: {text}");
        assert!(text.contains(want), "{cmd}: {text}");
        assert_eq!(text.trim_end().lines().count(), 1, "{cmd}: {text}");
    }
    scene.assert_untouched("a terminal");
}

/// Issue 19, item 8: on a terminal that reports 0 columns the live line
/// follows COLUMNS; after a signal the resume line is the last thing
/// printed, on a line of its own, with no progress redrawn after it.
#[test]
fn progress_on_a_terminal_without_columns_and_after_a_signal() {
    let dir = TempDir::new("pty-progress");
    let (src, dst, port) = (dir.join("src"), dir.join("dst"), dir.join("port"));
    write_file(&src, &random_bytes(4 << 20, 191));
    let bin = env!("CARGO_BIN_EXE_bsync");
    let cmd = format!(
        "stty cols 0 rows 0; \
         {bin} -q -f {dst} -p 0 -i 127.0.0.1 > {port} 2>/dev/null & s=$!; \
         n=0; while [ ! -s {port} ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done; \
         COLUMNS=40 {bin} -f {src} -r 127.0.0.1:$(cat {port}) -b 64K -bwlimit 64K & c=$!; \
         sleep 3; kill -TERM $c; wait $c; echo \"status=$?\"; kill $s",
        dst = dst.display(),
        src = src.display(),
        port = port.display(),
    );
    let Some((_, text)) = in_pty(&cmd) else {
        return skip("no script(1) to make a terminal (util-linux)");
    };
    assert!(text.contains("status=143"), "{text:?}");
    // Every drawing of the live line fits in 40 columns.
    let drawn: Vec<&str> = text
        .split(['\r', '\n'])
        .map(|s| s.trim_start_matches("\x1b[K").trim_end_matches("\x1b[K"))
        .filter(|s| s.contains('%'))
        .collect();
    assert!(!drawn.is_empty(), "no progress drawn: {text:?}");
    for line in drawn {
        assert!(line.chars().count() < 40, "wider than COLUMNS=40: {line:?}");
    }
    // The resume line ends its line, and the shell's next output follows.
    let resume = text
        .find("resume with -s ")
        .unwrap_or_else(|| panic!("{text:?}"));
    let rest = &text[resume..];
    let end = rest.find("\r\n").unwrap_or_else(|| panic!("{rest:?}"));
    assert!(
        rest[end..].starts_with("\r\nstatus=143"),
        "redrawn after: {rest:?}"
    );
}
