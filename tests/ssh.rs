//! `-t user@host:/path` against a real OpenSSH server.
//!
//! These tests need an sshd on this machine that the current user can log
//! into with a key: `eval "$(tests/sshd.sh start)"` starts one on loopback
//! and exports `BSYNC_TEST_SSH` (`user@127.0.0.1:PORT`) and `BSYNC_SSH` (the
//! ssh command with its key and options). Without `BSYNC_TEST_SSH` each test
//! says "skipped: no sshd" (`common::skip`: fails under CI) and passes. The "remote" is this machine, so the
//! tests look at the remote files and processes directly.
//!
//! Every run goes through a wrapper script given as `-ssh` that logs each
//! argument vector it is called with, then runs the real ssh. From that log
//! the tests count the logins of a run and check that no secret was ever on
//! a command line. The wrapper also points the remote's cache
//! (`XDG_CACHE_HOME`) and `TMPDIR` into the test's own directory, so that
//! the tests can look at what a run leaves there and never touch the real
//! `~/.cache/bsync`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Where the test sshd is, and the ssh command that reaches it.
struct Sshd {
    /// `user@127.0.0.1:PORT`.
    remote: String,
    /// The real ssh program and its options, from `BSYNC_SSH`.
    program: String,
    options: String,
}

fn sshd() -> Option<Sshd> {
    let remote = std::env::var("BSYNC_TEST_SSH")
        .ok()
        .filter(|s| !s.is_empty());
    let Some(remote) = remote else {
        common::skip("no sshd (set BSYNC_TEST_SSH, see tests/sshd.sh)");
        return None;
    };
    let shell = std::env::var("BSYNC_SSH").unwrap_or_else(|_| "ssh".into());
    let mut words = shell.split_whitespace();
    let program = words.next().unwrap_or("ssh").to_string();
    let options = words.collect::<Vec<_>>().join(" ");
    Some(Sshd {
        remote,
        program,
        options,
    })
}

/// One test's scene: a temporary directory, the logging ssh wrapper.
struct Scene {
    sshd: Sshd,
    dir: TempDir,
    log: PathBuf,
    wrapper: PathBuf,
    /// The remote's `$XDG_CACHE_HOME`.
    cache: PathBuf,
    /// The remote's `$TMPDIR`.
    tmp: PathBuf,
    /// The SHA-256 of the bsync under test, which names its cached copy.
    sha256: String,
}

impl Scene {
    fn new(name: &str) -> Option<Scene> {
        let sshd = sshd()?;
        let dir = TempDir::new(&format!("ssh-{name}"));
        let log = dir.join("ssh-calls.log");
        let wrapper = dir.join("logging-ssh");
        let (cache, tmp) = (dir.join("cache"), dir.join("tmp"));
        fs::create_dir(&tmp).unwrap();
        let sha256 = bsync::sha256::hex(&fs::read(env!("CARGO_BIN_EXE_bsync")).unwrap());
        let s = Scene {
            sshd,
            dir,
            log,
            wrapper,
            cache,
            tmp,
            sha256,
        };
        Scene::write_wrapper(&s.wrapper, &s.log, &s.sshd.program, &s.prelude(""));
        Some(s)
    }

    /// Remote shell lines that point the cache and `TMPDIR` into the
    /// scene, then `more`.
    fn prelude(&self, more: &str) -> String {
        format!(
            "XDG_CACHE_HOME=\"{}\"; TMPDIR=\"{}\"; export XDG_CACHE_HOME TMPDIR; {more}",
            self.cache.display(),
            self.tmp.display()
        )
    }

    /// Where the remote keeps its copy of the bsync under test.
    fn cached(&self) -> PathBuf {
        self.cache.join("bsync").join(&self.sha256).join("bsync")
    }

    /// The calls of the log that log in: all but `ssh -G`, which only
    /// prints ssh's configuration.
    fn logins(&self) -> usize {
        self.calls()
            .iter()
            .filter(|c| !c.iter().any(|a| a == "-G"))
            .count()
    }

    /// A wrapper that logs its argv, puts `prelude` in front of the remote
    /// command (the last argument) and runs the real ssh. bsync runs
    /// `ssh -G` while the login runs, and bash's printf writes argument by
    /// argument, so each record is written under a lock to stay whole.
    fn write_wrapper(path: &Path, log: &Path, real: &str, prelude: &str) {
        let script = format!(
            "#!/bin/bash\n\
             exec 9>> '{}'\n\
             flock 9\n\
             printf '%s\\n' '--- call' \"$@\" >&9\n\
             exec 9>&-\n\
             if [ -n '{prelude}' ] && [ $# -gt 0 ]; then\n\
             \x20 set -- \"${{@:1:$#-1}}\" '{prelude}'\"${{@: -1}}\"\n\
             fi\n\
             exec '{real}' \"$@\"\n",
            log.display()
        );
        fs::write(path, script).unwrap();
        Command::new("chmod").arg("755").arg(path).status().unwrap();
    }

    /// `-t user@host:port:PATH`.
    fn target(&self, path: &Path) -> String {
        format!("{}:{}", self.sshd.remote, path.display())
    }

    /// `bsync -ssh WRAPPER... -f LOCAL -t REMOTE extra...`
    fn bsync(&self, local: &Path, remote: &Path, extra: &[&str]) -> Command {
        let mut cmd = bsync();
        cmd.arg("-ssh")
            .arg(format!("{} {}", self.wrapper.display(), self.sshd.options))
            .arg("-f")
            .arg(local)
            .arg("-t")
            .arg(self.target(remote))
            .args(extra);
        cmd
    }

    fn calls(&self) -> Vec<Vec<String>> {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let mut calls: Vec<Vec<String>> = Vec::new();
        for line in text.lines() {
            if line == "--- call" {
                calls.push(Vec::new());
            } else if let Some(c) = calls.last_mut() {
                c.push(line.to_string());
            }
        }
        calls
    }

    /// Everything a run must leave behind: nothing in the remote's
    /// `TMPDIR`, in the cache nothing but whole copies in private
    /// directories, no secret on any command line.
    fn check_clean(&self) {
        use std::os::unix::fs::PermissionsExt;
        let left: Vec<_> = fs::read_dir(&self.tmp).unwrap().flatten().collect();
        assert!(left.is_empty(), "left in the remote's TMPDIR: {left:?}");
        let root = self.cache.join("bsync");
        if root.exists() {
            let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&root), 0o700, "{}", root.display());
            for build in fs::read_dir(&root).unwrap().flatten() {
                assert_eq!(mode(&build.path()), 0o700, "{}", build.path().display());
                let names: Vec<_> = fs::read_dir(build.path())
                    .unwrap()
                    .flatten()
                    .map(|e| e.file_name())
                    .collect();
                assert_eq!(names, ["bsync"], "in {}", build.path().display());
            }
        }
        for call in self.calls() {
            for arg in &call {
                // The executable's digest is public; nothing else may be
                // 64 hex digits.
                let arg = arg.replace(&self.sha256, "");
                assert!(!has_secret(&arg), "a secret on a command line: {arg:?}");
            }
        }
    }
}

/// True if `s` holds a run of 64 hex digits (a key or token).
fn has_secret(s: &str) -> bool {
    let mut run = 0;
    for c in s.chars() {
        run = if c.is_ascii_hexdigit() { run + 1 } else { 0 };
        if run >= 64 {
            return true;
        }
    }
    false
}

/// `len` bytes: random, with a zero stretch in the middle.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut v = random_bytes(len, seed);
    let (a, b) = (len / 3, len / 2);
    v[a..b].fill(0);
    v
}

fn last_line(stderr: &str) -> &str {
    stderr.lines().last().unwrap_or("")
}

#[test]
fn upload_then_delta_upload() {
    let Some(s) = Scene::new("upload") else {
        return;
    };
    let src = s.dir.join("src.img");
    let dst = s.dir.join("dst.img");
    let mut bytes = data(3 << 20, 1);
    write_file(&src, &bytes);
    run_ok(&mut s.bsync(&src, &dst, &["-b", "64K"]));
    assert_same(&src, &dst);
    bytes[100_000..100_100].fill(7);
    bytes[2_000_000..2_000_010].fill(0);
    write_file(&src, &bytes);
    let err = run_ok(&mut s.bsync(&src, &dst, &["-b", "64K"]));
    assert_same(&src, &dst);
    assert!(err.contains("changed"), "{err}");
    s.check_clean();
    // Each run: one ssh session (and ssh -G, which does not log in).
    assert_eq!(s.logins(), 2, "{:?}", s.calls());
    let run_script = s
        .calls()
        .into_iter()
        .filter(|c| c.last().is_some_and(|l| l.contains("-token-file -")));
    assert_eq!(run_script.count(), 2, "{:?}", s.calls());
}

/// One ssh login per run: the first run sends bsync into the remote's
/// cache, the second finds it there and sends nothing; a damaged copy is
/// noticed and replaced.
#[test]
fn one_login_per_run_and_the_cache_is_reused() {
    use std::os::unix::fs::MetadataExt;
    let Some(s) = Scene::new("logins") else {
        return;
    };
    let src = s.dir.join("src.img");
    let dst = s.dir.join("dst.img");
    write_file(&src, &data(1 << 20, 11));
    let err = run_ok(&mut s.bsync(&src, &dst, &["-v"]));
    assert_same(&src, &dst);
    assert_eq!(s.logins(), 1, "{:?}", s.calls());
    assert!(err.contains("copying bsync"), "{err}");
    let first = fs::metadata(s.cached()).unwrap();

    let err = run_ok(&mut s.bsync(&src, &dst, &["-v"]));
    assert_eq!(s.logins(), 2, "{:?}", s.calls());
    assert!(!err.contains("copying bsync"), "{err}");
    assert!(err.contains("using the copy of bsync"), "{err}");
    let second = fs::metadata(s.cached()).unwrap();
    assert_eq!(
        (first.ino(), first.mtime_nsec()),
        (second.ino(), second.mtime_nsec()),
        "the cached copy was not rewritten"
    );

    // A copy that does not match its digest is never run: it is sent anew.
    let mut bytes = fs::read(s.cached()).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(s.cached(), &bytes).unwrap();
    let err = run_ok(&mut s.bsync(&src, &dst, &["-v", "-d"]));
    assert!(err.contains("copying bsync"), "{err}");
    assert_eq!(s.logins(), 3, "{:?}", s.calls());
    assert_eq!(bsync::sha256::hex(&fs::read(s.cached()).unwrap()), s.sha256);
    s.check_clean();
}

/// Without a cache directory (no `$HOME`), the copy goes into a `mktemp -d`
/// directory in the remote's `TMPDIR`, which is gone after the run.
#[test]
fn no_cache_directory_uses_a_temporary_one() {
    let Some(s) = Scene::new("nocache") else {
        return;
    };
    let nocache = s.dir.join("nocache-ssh");
    Scene::write_wrapper(
        &nocache,
        &s.log,
        &s.sshd.program,
        &s.prelude("unset XDG_CACHE_HOME; HOME=; "),
    );
    let src = s.dir.join("src.img");
    let dst = s.dir.join("dst.img");
    write_file(&src, &data(1 << 20, 12));
    let mut cmd = bsync();
    cmd.arg("-ssh")
        .arg(format!("{} {}", nocache.display(), s.sshd.options))
        .args(["-v", "-f"])
        .arg(&src)
        .arg("-t")
        .arg(s.target(&dst));
    let err = run_ok(&mut cmd);
    assert_same(&src, &dst);
    let tmp = s.tmp.display().to_string();
    assert!(err.contains("copying bsync"), "{err}");
    assert!(err.contains(&format!("{tmp}/bsync.")), "{err}");
    assert!(!s.cache.exists());
    assert_eq!(s.logins(), 1, "{:?}", s.calls());
    s.check_clean();
}

#[test]
fn download_into_existing_and_new_files() {
    let Some(s) = Scene::new("download") else {
        return;
    };
    let remote = s.dir.join("remote.img");
    let local = s.dir.join("local.img");
    write_file(&remote, &data(2 << 20, 2));
    run_ok(&mut s.bsync(&local, &remote, &["-d", "-b", "128K"]));
    assert_same(&remote, &local);
    // An existing destination with junk, longer than the source.
    write_file(&local, &random_bytes(3 << 20, 3));
    run_ok(&mut s.bsync(&local, &remote, &["-d", "-b", "128K", "-L", "fast"]));
    assert_same(&remote, &local);
    s.check_clean();
}

#[test]
fn encrypted_both_ways() {
    let Some(s) = Scene::new("encrypted") else {
        return;
    };
    let src = s.dir.join("src.img");
    let dst = s.dir.join("dst.img");
    let back = s.dir.join("back.img");
    write_file(&src, &data(1 << 20, 4));
    run_ok(&mut s.bsync(&src, &dst, &["-e", "-b", "64K"]));
    assert_same(&src, &dst);
    run_ok(&mut s.bsync(&back, &dst, &["-e", "-d", "-n"]));
    assert_same(&src, &back);
    s.check_clean();
    let keyed = s
        .calls()
        .into_iter()
        .filter(|c| c.last().is_some_and(|l| l.contains("-K -")))
        .count();
    assert_eq!(
        keyed,
        2,
        "the key goes to the remote on stdin: {:?}",
        s.calls()
    );
}

#[test]
fn four_workers_both_ways() {
    let Some(s) = Scene::new("workers") else {
        return;
    };
    let src = s.dir.join("src.img");
    let dst = s.dir.join("dst.img");
    let back = s.dir.join("back.img");
    write_file(&src, &data(4 << 20, 5));
    run_ok(&mut s.bsync(&src, &dst, &["-w", "4", "-b", "256K"]));
    assert_same(&src, &dst);
    run_ok(&mut s.bsync(&back, &dst, &["-w", "4", "-d", "-b", "256K"]));
    assert_same(&src, &back);
    s.check_clean();
}

/// Remote paths are quoted for the remote shell, whatever they hold.
#[test]
fn remote_path_with_shell_metacharacters() {
    let Some(s) = Scene::new("quoting") else {
        return;
    };
    let odd = s.dir.join("sp ace 'q' \"dq\" $HOME `x` \\b; *&|");
    fs::create_dir(&odd).unwrap();
    let src = s.dir.join("src.img");
    let dst = odd.join("d $x'.img");
    let back = s.dir.join("back.img");
    write_file(&src, &data(1 << 20, 6));
    run_ok(&mut s.bsync(&src, &dst, &[]));
    assert_same(&src, &dst);
    run_ok(&mut s.bsync(&back, &dst, &["-d"]));
    assert_same(&src, &back);
    s.check_clean();
}

#[test]
fn missing_remote_path_is_one_clear_line() {
    let Some(s) = Scene::new("missing") else {
        return;
    };
    let src = s.dir.join("src.img");
    write_file(&src, &data(64 << 10, 7));
    let nowhere = s.dir.join("no/such/dir/x.img");
    let err = run_status(&mut s.bsync(&src, &nowhere, &[]), 1);
    let line = last_line(&err);
    assert!(line.starts_with("bsync: "), "{err}");
    assert!(line.contains("No such file or directory"), "{err}");
    assert!(line.contains("no/such/dir/x.img"), "{err}");
    assert_eq!(err.matches("bsync:").count(), 1, "one error line: {err}");

    let local = s.dir.join("local.img");
    let err = run_status(&mut s.bsync(&local, &nowhere, &["-d"]), 1);
    let line = last_line(&err);
    assert!(line.contains("No such file or directory"), "{err}");
    assert!(line.contains("no/such/dir/x.img"), "{err}");
    assert!(!local.exists(), "nothing is created locally");
    s.check_clean();
}

/// A remote that says it is another machine gets nothing copied. The wrapper
/// makes the remote shell's `uname` lie; everything else is real.
#[test]
fn architecture_mismatch_copies_nothing() {
    let Some(s) = Scene::new("arch") else { return };
    let liar = s.dir.join("lying-ssh");
    Scene::write_wrapper(
        &liar,
        &s.log,
        &s.sshd.program,
        &s.prelude("uname() { echo Linux armv7l; }; "),
    );
    let src = s.dir.join("src.img");
    write_file(&src, b"data");
    let mut cmd = bsync();
    cmd.arg("-ssh")
        .arg(format!("{} {}", liar.display(), s.sshd.options))
        .arg("-f")
        .arg(&src)
        .arg("-t")
        .arg(s.target(&s.dir.join("dst.img")));
    let err = run_status(&mut cmd, 1);
    let line = last_line(&err);
    assert!(line.contains("architecture mismatch"), "{err}");
    assert!(line.contains("armv7l"), "{err}");
    assert_eq!(s.logins(), 1, "{:?}", s.calls());
    assert!(!s.dir.join("dst.img").exists());
    assert!(!s.cache.exists(), "nothing is copied or made");
    s.check_clean();
}

/// ssh's own failure (exit 255) names the host and says what ssh said.
/// Needs no sshd: nothing listens on the port.
#[test]
fn ssh_failure_names_host_and_reason() {
    if Command::new("ssh").arg("-V").output().is_err() {
        return common::skip("no ssh client");
    }
    let dir = TempDir::new("ssh-refused");
    let src = dir.join("src.img");
    write_file(&src, b"data");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cmd = bsync();
    cmd.env("BSYNC_SSH", "ssh -o BatchMode=yes -o ConnectTimeout=5")
        .arg("-f")
        .arg(&src)
        .arg("-t")
        .arg(format!("nobody@127.0.0.1:{port}:/tmp/x"));
    let err = run_status(&mut cmd, 1);
    let line = last_line(&err);
    assert!(
        line.starts_with("bsync: ssh to 127.0.0.1 failed: "),
        "{err}"
    );
    assert!(line.contains("refused"), "{err}");

    // A remote shell that does not exist.
    let mut cmd = bsync();
    cmd.args(["-ssh", "/nonexistent/ssh -v", "-f"])
        .arg(&src)
        .args(["-t", "h:/x"]);
    let err = run_status(&mut cmd, 1);
    assert!(last_line(&err).contains("/nonexistent/ssh"), "{err}");
}

/// IPv6 literal targets, where the test sshd also listens on ::1.
#[test]
fn ipv6_literal_target() {
    let Some(s) = Scene::new("ipv6") else { return };
    let Some((user, port)) = s.sshd.remote.rsplit_once(':') else {
        return;
    };
    let user = user.split_once('@').map_or("", |(u, _)| u);
    if std::net::TcpStream::connect(("::1", port.parse::<u16>().unwrap())).is_err() {
        return common::skip("the sshd does not listen on ::1");
    }
    let src = s.dir.join("src.img");
    let dst = s.dir.join("dst.img");
    write_file(&src, &data(256 << 10, 8));
    let mut cmd = bsync();
    cmd.arg("-ssh")
        .arg(format!("{} {}", s.wrapper.display(), s.sshd.options))
        .arg("-f")
        .arg(&src)
        .arg("-t")
        .arg(format!("{user}@[::1]:{port}:{}", dst.display()));
    run_ok(&mut cmd);
    assert_same(&src, &dst);
    s.check_clean();
}

/// A large transfer that level `best` makes slow: 16-letter text.
fn slow_source(path: &Path, len: usize) {
    let mut v = random_bytes(len, 9);
    for b in &mut v {
        *b = b'a' + (*b & 15);
    }
    write_file(path, &v);
}

/// Processes whose command line contains `needle`, with that command line.
fn processes_with(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(raw) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// Start a slow upload and wait until the remote server has written some of
/// the destination. Returns the local process and the remote server's pid.
fn start_slow_upload(s: &Scene, src: &Path, dst: &Path) -> (Child, u32) {
    slow_source(src, 256 << 20);
    let mut child = s
        .bsync(src, dst, &["-L", "best", "-b", "1M", "-q"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the transfer ended before it could be interrupted"
        );
        let written = dst.exists() && allocated_bytes(dst) > 0;
        let servers: Vec<(u32, String)> = processes_with(&s.cached().display().to_string())
            .into_iter()
            .filter(|(_, c)| c.contains("-p 0"))
            .collect();
        if written && !servers.is_empty() {
            // The remote's `ps` while a transfer runs: no secret in the
            // command line of anything of this run (the local bsync and
            // ssh, the remote shell, the remote bsync).
            for (_, cmdline) in processes_with(&s.dir.path().display().to_string()) {
                let cmdline = cmdline.replace(&s.sha256, "");
                assert!(!has_secret(&cmdline), "secret in a command line: {cmdline}");
            }
            return (child, servers[0].0);
        }
        assert!(Instant::now() < deadline, "the transfer did not start");
        thread::sleep(Duration::from_millis(20));
    }
}

fn wait_bounded(child: &mut Child, limit: Duration) -> (Option<i32>, String) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            return (status.code(), err);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bsync did not end within {limit:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Wait (bounded) until no process runs the remote copy any more.
fn assert_remote_gone(s: &Scene) {
    let copy = s.cached().display().to_string();
    assert!(s.cached().exists(), "no remote copy was made");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !processes_with(&copy).is_empty() {
        assert!(Instant::now() < deadline, "remote bsync {copy} still runs");
        thread::sleep(Duration::from_millis(50));
    }
    s.check_clean();
}

/// Ctrl-C on this side stops the remote server and removes its directory.
#[test]
fn interrupt_cleans_up_the_remote() {
    let Some(s) = Scene::new("sigint") else {
        return;
    };
    let src = s.dir.join("src.img");
    let dst = s.dir.join("dst.img");
    let (mut child, _) = start_slow_upload(&s, &src, &dst);
    bsync::sys::kill(child.id(), libc::SIGINT).unwrap();
    let (code, err) = wait_bounded(&mut child, Duration::from_secs(60));
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert_remote_gone(&s);
}

/// SIGKILL on this side leaves nothing to clean up: the remote notices the
/// end of the session's stdin and stops its server; nothing is left in its
/// TMPDIR.
#[test]
fn sigkill_of_this_side_stops_the_remote() {
    let Some(s) = Scene::new("sigkill") else {
        return;
    };
    let src = s.dir.join("src.img");
    let dst = s.dir.join("dst.img");
    let (mut child, _) = start_slow_upload(&s, &src, &dst);
    child.kill().unwrap();
    let _ = child.wait();
    assert_remote_gone(&s);
}

/// A remote server that dies mid-run fails the run with one clear line.
#[test]
fn remote_dying_mid_run_fails_clearly() {
    let Some(s) = Scene::new("remote-dies") else {
        return;
    };
    let src = s.dir.join("src.img");
    let dst = s.dir.join("dst.img");
    let (mut child, server) = start_slow_upload(&s, &src, &dst);
    Command::new("kill")
        .args(["-KILL", &server.to_string()])
        .status()
        .unwrap();
    let (code, err) = wait_bounded(&mut child, Duration::from_secs(90));
    assert_eq!(code, Some(1), "{err}");
    // The error, then where to resume (issue 15, item 5).
    assert!(last_line(&err).starts_with("resume with -s "), "{err}");
    let line = err.lines().rev().nth(1).unwrap_or_default();
    assert!(line.starts_with("bsync: "), "{err}");
    assert!(line.contains("killed by signal 9"), "{err}");
    assert_remote_gone(&s);
}

// ------------------------------------------------------------ issue 15 ---
// These need no sshd: a stand-in ssh says what a real one would.

/// A stand-in for ssh in `dir` that logs its arguments one per line to
/// `args.log`, prints `stdout` and `stderr`, and exits with `status`.
fn fake_ssh(dir: &TempDir, stdout: &str, stderr: &str, status: i32) -> PathBuf {
    let path = dir.join("fake ssh");
    let script = format!(
        "#!/bin/sh\nprintf '%s\\n' \"$@\" >> '{}'\nprintf '{stdout}'\nprintf '{stderr}' >&2\nexit {status}\n",
        dir.join("args.log").display()
    );
    fs::write(&path, script).unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&path)
        .status()
        .unwrap();
    path
}

/// Issue 15, item 9: when the login fails, the error shows what ssh and
/// the login said, the line that explains it included (nologin prints
/// "This account is currently not available." after sshd's chdir warning).
#[test]
fn a_failed_login_shows_the_lines_that_explain_it() {
    let dir = TempDir::new("ssh-nologin");
    let src = dir.join("src");
    write_file(&src, &random_bytes(10_000, 160));
    let fake = fake_ssh(
        &dir,
        "This account is currently not available.\\n",
        "Could not chdir to home directory /nonexistent: No such file or directory\\n",
        1,
    );
    let shell = format!("'{}'", fake.display());
    let err = run_status(
        bsync().args(["-ssh", &shell, "-f", arg(&src), "-t", "nobody@somehost:/x"]),
        1,
    );
    let line = last_line(&err);
    assert!(line.contains("somehost"), "{line}");
    assert!(
        line.contains("This account is currently not available"),
        "{line}"
    );
    assert!(line.contains("Could not chdir"), "{line}");
}

/// Issue 15, item 9: `-ssh` and `BSYNC_SSH` are split as a shell would,
/// quotes and backslashes included; an open quote is a usage error.
#[test]
fn the_remote_shell_command_understands_quotes() {
    let dir = TempDir::new("ssh-quotes");
    let src = dir.join("src");
    write_file(&src, &random_bytes(10_000, 161));
    let fake = fake_ssh(
        &dir,
        "",
        "ssh: connect to host h port 22: Connection refused\\n",
        255,
    );
    let quoted = format!(
        "'{}' -o \"StrictHostKeyChecking no\" -i my\\ key",
        fake.display()
    );
    let err = run_status(
        bsync().args(["-ssh", &quoted, "-f", arg(&src), "-t", "u@h:/x"]),
        1,
    );
    assert!(
        last_line(&err).contains("ssh to h failed: ssh: connect to host"),
        "{err}"
    );
    let args = fs::read_to_string(dir.join("args.log")).unwrap_or_default();
    let args: Vec<&str> = args.lines().collect();
    assert!(args.contains(&"StrictHostKeyChecking no"), "{args:?}");
    assert!(args.contains(&"my key"), "{args:?}");
    // The same through the environment.
    fs::remove_file(dir.join("args.log")).unwrap();
    let mut cmd = bsync();
    cmd.env("BSYNC_SSH", &quoted)
        .args(["-f", arg(&src), "-t", "u@h:/x"]);
    run_status(&mut cmd, 1);
    let args = fs::read_to_string(dir.join("args.log")).unwrap_or_default();
    assert!(
        args.lines().any(|l| l == "StrictHostKeyChecking no"),
        "{args}"
    );
    let err = run_status(
        bsync().args(["-ssh", "ssh -o 'open", "-f", arg(&src), "-t", "u@h:/x"]),
        2,
    );
    assert!(err.contains("-ssh: a single quote"), "{err}");
}

fn arg(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Issue 15, item 9: a remote failure over -t names the host as typed, not
/// the address and port the data connection used.
#[test]
fn a_remote_failure_names_the_host_as_typed() {
    let Some(s) = Scene::new("remote-name") else {
        return;
    };
    // A 256 KiB tmpfs on the "remote" fills up mid-transfer.
    let mnt = s.dir.join("small");
    fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|st| st.success());
    if !mounted {
        return common::skip("cannot mount a small tmpfs (needs root)");
    }
    let src = s.dir.join("src");
    write_file(&src, &random_bytes(1 << 20, 162));
    let out = run(&mut s.bsync(&src, &mnt.join("dst"), &["-b", "64K"]));
    let _ = Command::new("umount").arg(&mnt).status();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("bsync: "))
        .unwrap_or_else(|| panic!("{err}"));
    let host = s
        .sshd
        .remote
        .split('@')
        .nth(1)
        .and_then(|h| h.split(':').next());
    let host = host.unwrap_or_default();
    assert!(
        line.starts_with(&format!("bsync: {host} failed: destination")),
        "{line}"
    );
    assert!(!line.contains("server: "), "{line}");
    s.check_clean();
}

/// Issue 18, item 5: `--json` over `-t`, through the remote's port and
/// inside ssh (`-over-ssh`), up and down, dry or not: every field of the
/// client's line is what the scene holds, with wire bytes both ways.
#[test]
fn json_is_right_over_t() {
    let Some(s) = Scene::new("json") else {
        return;
    };
    let (src_bytes, dst_bytes) = json_scene();
    let (here, there) = (s.dir.join("here.img"), s.dir.join("there.img"));
    let bs = JSON_BS.to_string();
    let patch = s.dir.join("out.bsync");
    let patch = patch.to_str().expect("UTF-8 test path");
    let cases: [(&[&str], i32, &str, bool); 6] = [
        (&[], 0, "source", false),
        (&["-over-ssh"], 0, "source", false),
        (&["-d"], 0, "destination", false),
        (&["-d", "-over-ssh"], 0, "destination", false),
        (&["--compare"], 3, "source", true),
        (&["--write-patch", patch, "-over-ssh"], 0, "source", true),
    ];
    for (extra, code, side, dry) in cases {
        let download = extra.contains(&"-d");
        let (src, dst) = if download {
            (&there, &here)
        } else {
            (&here, &there)
        };
        write_file(src, &src_bytes);
        write_file(dst, &dst_bytes);
        let args = [&["-q", "-json", "-b", &bs][..], extra].concat();
        let out = run(&mut s.bsync(&here, &there, &args));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{extra:?}: {err}");
        let want = JsonWant {
            side,
            dry,
            reads: 1,
            writes: download,
            wire: true,
            // Inside ssh, ssh's cipher carried the data.
            encryption: if extra.contains(&"-over-ssh") {
                "ssh"
            } else {
                "none"
            },
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        check_json(&format!("-t {extra:?}: {err}"), &stdout, &want);
        if dry {
            assert_eq!(read_file(dst), dst_bytes, "{extra:?}: a dry run wrote");
        } else {
            assert_same(src, dst);
        }
    }
    s.check_clean();
}

/// Issue 19, item 6: an upload's summary names the destination as the user
/// gave it, through the remote's port and inside ssh.
#[test]
fn an_upload_summary_names_the_destination() {
    let Some(s) = Scene::new("names") else {
        return;
    };
    let (src, dst) = (s.dir.join("src.img"), s.dir.join("dst.img"));
    write_file(&src, &data(1 << 20, 5));
    for extra in [&[][..], &["-over-ssh"]] {
        let err = run_ok(&mut s.bsync(&src, &dst, extra));
        let want = format!("destination 127.0.0.1:{}: done: ", dst.display());
        assert!(
            err.lines().any(|l| l.starts_with(&want)),
            "{extra:?}: no line starting {want:?} in:\n{err}"
        );
        assert_same(&src, &dst);
    }
    s.check_clean();
}

/// The new-user trial: a `--compare` over `-t` against a remote destination
/// of another size said `every block is identical` and exited 0. Through
/// the remote's port and inside ssh it now says what a local compare says,
/// and exits 3.
#[test]
fn compare_over_t_counts_another_size_as_a_difference() {
    let Some(s) = Scene::new("compare-size") else {
        return;
    };
    let src_bytes = [data(1 << 20, 31), vec![0u8; 8192]].concat();
    let (here, there) = (s.dir.join("here.img"), s.dir.join("there.img"));
    write_file(&here, &src_bytes);
    for (dst_bytes, said) in other_sizes(&src_bytes) {
        write_file(&there, &dst_bytes);
        for over in [&[][..], &["-over-ssh"]] {
            let args = [&["--compare", "-b", "64K"][..], over].concat();
            let err = run_status(&mut s.bsync(&here, &there, &args), 3);
            assert!(err.lines().any(|l| l == said), "{over:?}, {said}: {err}");
            assert!(!err.contains("identical"), "{err}");
            assert_eq!(read_file(&there), dst_bytes, "a compare wrote");
        }
    }
    s.check_clean();
}

/// The new-user trial: over `-t host:/path` nothing said that the remote
/// path did not exist, so a typo (`/dev/vdzz9`) silently became a regular
/// file on the remote. Now one line says so, as a local run does, naming
/// the destination as typed; an existing one gets no such line.
#[test]
fn a_new_remote_destination_is_said() {
    let Some(s) = Scene::new("new-remote") else {
        return;
    };
    let src = s.dir.join("src.img");
    write_file(&src, &data(256 << 10, 7));
    for over in [&[][..], &["-over-ssh"]] {
        let dst = s.dir.join("typo.img");
        let _ = fs::remove_file(&dst);
        let err = run_ok(&mut s.bsync(&src, &dst, over));
        let want = format!(
            "destination 127.0.0.1:{}: a new file (it did not exist)",
            dst.display()
        );
        assert_eq!(
            err.lines().filter(|l| *l == want).count(),
            1,
            "{over:?}: {err}"
        );
        assert_same(&src, &dst);
        let err = run_ok(&mut s.bsync(&src, &dst, over));
        assert!(!err.contains("a new file"), "{over:?}: {err}");
    }
    s.check_clean();
}

/// The new-user trial: `-e` with `-over-ssh` was dropped without a word
/// (`--json` said `"encrypted":false` though ssh encrypted the session),
/// and `-q` still printed the "inside ssh" line. Now one line says that
/// ssh's cipher is used instead, `--json` says who encrypted, and `-q`
/// prints nothing.
#[test]
fn e_inside_ssh_is_said_and_quiet_is_quiet() {
    let Some(s) = Scene::new("e-over-ssh") else {
        return;
    };
    let (src, dst) = (s.dir.join("src.img"), s.dir.join("dst.img"));
    write_file(&src, &data(256 << 10, 9));
    for (extra, encryption) in [
        (&["-e", "-over-ssh"][..], "ssh"),
        (&["-over-ssh"], "ssh"),
        (&["-e"], "chacha20-poly1305"),
        (&[], "none"),
    ] {
        let _ = fs::remove_file(&dst);
        let out = run(&mut s.bsync(&src, &dst, &[&["-json"][..], extra].concat()));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{extra:?}: {err}");
        let line = String::from_utf8_lossy(&out.stdout);
        let want = format!(
            "\"encrypted\":{},\"encryption\":\"{encryption}\"",
            encryption != "none"
        );
        assert!(line.contains(&want), "{extra:?}: {line}");
        let said = err.contains("-e: the session inside ssh is encrypted by ssh");
        assert_eq!(said, extra == ["-e", "-over-ssh"], "{extra:?}: {err}");
        assert_same(&src, &dst);
        // Quiet: errors only.
        let _ = fs::remove_file(&dst);
        let out = run(&mut s.bsync(&src, &dst, &[&["-q"][..], extra].concat()));
        assert_eq!(out.status.code(), Some(0), "{extra:?}");
        assert_eq!(stderr(&out), "", "{extra:?} -q");
        assert_same(&src, &dst);
    }
    s.check_clean();
}

/// The new-user trial: `tests/sshd.sh start` with the sshd already running
/// exported `BSYNC_SSH` with a relative key path (`-i target/sshd/...`),
/// which works only from the repository's root. Now it is absolute.
#[test]
fn sshd_sh_exports_an_absolute_key_path_when_already_running() {
    if sshd().is_none() {
        return;
    }
    let out = run(Command::new("tests/sshd.sh")
        .arg("start")
        .stderr(Stdio::piped())
        .stdout(Stdio::piped()));
    assert!(out.status.success(), "{}", stderr(&out));
    let env = String::from_utf8_lossy(&out.stdout).to_string();
    let line = env
        .lines()
        .find(|l| l.starts_with("export BSYNC_SSH="))
        .unwrap_or_else(|| panic!("no BSYNC_SSH: {env}"));
    let key = line
        .split("-i\\ ")
        .nth(1)
        .unwrap_or_else(|| panic!("no -i: {line}"));
    assert!(key.starts_with('/'), "a relative key path: {line}");
}
