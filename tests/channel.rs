//! Sessions carried by a real OpenSSH server (`tests/sshd.sh`): bdsync's
//! client with `ssh ... bsync --server` as its remote shell command, and
//! `-t` inside the ssh session, asked for (`-over-ssh`) or because the
//! remote's port cannot be reached. Without `BSYNC_TEST_SSH` each test says
//! "skipped: no sshd" (`common::skip`: fails under CI) and passes. One test needs no sshd: a stand-in for
//! ssh records the remote command lines and runs them here.

mod common;

use std::fs::{self, File};
use std::path::Path;
use std::process::Command;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_bsync");

/// (`user@host:port`, the ssh command with its options).
fn sshd() -> Option<(String, String)> {
    let remote = std::env::var("BSYNC_TEST_SSH")
        .ok()
        .filter(|s| !s.is_empty());
    let Some(remote) = remote else {
        common::skip("no sshd (set BSYNC_TEST_SSH, see tests/sshd.sh)");
        return None;
    };
    let shell = std::env::var("BSYNC_SSH").unwrap_or_else(|_| "ssh".into());
    Some((remote, shell))
}

/// `ssh OPTIONS -p PORT user@host` for a remote shell command.
fn ssh_login(remote: &str, shell: &str) -> String {
    let (login, port) = remote.rsplit_once(':').unwrap();
    format!("{shell} -p {port} {login}")
}

#[test]
fn bdsync_client_through_a_real_sshd() {
    let Some((remote, shell)) = sshd() else {
        return;
    };
    let dir = TempDir::new("channel-bdsync");
    let (src, dst) = make_pair(3 << 20, 21);
    let (a, b) = (dir.join("a.img"), dir.join("b.img"));
    write_file(&a, &src);
    write_file(&b, &dst);
    let patch = dir.join("p.bsync");
    let remsh = format!("{} {BIN} --server", ssh_login(&remote, &shell));
    run_ok(
        bsync()
            .args(["--blocksize=262144", &remsh])
            .arg(&a)
            .arg(&b)
            .stdout(File::create(&patch).unwrap()),
    );
    assert_eq!(read_file(&b), dst);
    run_ok(bsync().arg("--patch").stdin(File::open(&patch).unwrap()));
    assert_same(&a, &b);
}

/// A wrapper for `-ssh` that runs the one-session server of `-t` in a
/// network namespace of its own, so its port cannot be reached from here
/// (as behind a firewall); everything else goes to ssh unchanged.
fn walled_ssh(dir: &Path, shell: &str) -> Option<String> {
    let probe = Command::new("unshare").args(["-rn", "true"]).status();
    if !probe.is_ok_and(|s| s.success()) {
        return None;
    }
    let mut words = shell.split_whitespace();
    let real = words.next().unwrap();
    let opts: Vec<&str> = words.collect();
    let path = dir.join("walled-ssh");
    let script = format!(
        r#"#!/bin/sh
n=$#; i=0; for a in "$@"; do i=$((i+1)); [ $i -eq $n ] && last=$a; done
case $last in
*"-p 0"*)
  q=$(printf '%s' "$last" | sed "s/'/'\\\\''/g")
  i=0; for a in "$@"; do i=$((i+1)); [ $i -lt $n ] && set -- "$@" "$a"; done
  shift $n
  exec {real} "$@" "exec unshare -rn sh -c 'ip link set lo up 2>/dev/null; eval \"\$1\"' sh '$q'" ;;
*) exec {real} "$@" ;;
esac
"#
    );
    fs::write(&path, script).unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&path)
        .status()
        .unwrap();
    Some(format!("{} {}", path.display(), opts.join(" ")))
}

#[test]
fn t_falls_back_into_ssh_when_the_port_is_walled_off() {
    let Some((remote, shell)) = sshd() else {
        return;
    };
    let dir = TempDir::new("channel-walled");
    let Some(walled) = walled_ssh(dir.path(), &shell) else {
        return common::skip("unshare -rn is not permitted here");
    };
    let (src, dst) = make_pair(3 << 20, 22);
    let (a, b) = (dir.join("a.img"), dir.join("b.img"));
    write_file(&a, &src);
    write_file(&b, &dst);
    let err = run_ok(
        bsync()
            .args(["-b", "262144", "-ssh", &walled, "-f"])
            .arg(&a)
            .arg("-t")
            .arg(format!("{remote}:{}", b.display())),
    );
    assert!(err.contains("cannot be reached"), "{err}");
    assert!(err.contains("inside ssh"), "{err}");
    assert_same(&a, &b);
}

#[test]
fn over_ssh_uploads_downloads_compares_and_writes_patches() {
    let Some((remote, shell)) = sshd() else {
        return;
    };
    let dir = TempDir::new("channel-over");
    let (src, dst) = make_pair(3 << 20, 23);
    let (a, b) = (dir.join("a.img"), dir.join("b.img"));
    let target = |p: &Path| format!("{remote}:{}", p.display());
    let t = |extra: &[&str]| {
        let mut c = bsync();
        c.args(["-b", "262144", "-ssh", &shell, "-f"])
            .arg(&a)
            .arg("-t")
            .arg(target(&b))
            .args(extra);
        c
    };
    write_file(&a, &src);
    write_file(&b, &dst);
    // Compare and write a patch, over TCP and inside ssh: b is untouched.
    for over in [&[][..], &["-over-ssh"][..]] {
        run_status(
            t(&[&["--compare"], over].concat()).stdin(File::open("/dev/null").unwrap()),
            3,
        );
        let patch = dir.join("p.bsync");
        run_ok(&mut t(
            &[&["--write-patch", patch.to_str().unwrap()], over].concat()
        ));
        assert_eq!(read_file(&b), dst, "{over:?}");
        assert!(fs::metadata(&patch).unwrap().len() > 0);
    }
    // Upload inside ssh, then download the other way.
    let err = run_ok(&mut t(&["-over-ssh"]));
    assert!(err.contains("inside ssh"), "{err}");
    assert_same(&a, &b);
    write_file(&a, &dst);
    run_ok(&mut t(&["-over-ssh", "-d"]));
    assert_same(&a, &b);
    run_ok(&mut t(&["--compare", "-over-ssh"]));
}

/// A stand-in for ssh, for `-ssh`: it records the remote command of every
/// call in `log` and runs it here with `sh`, as sshd would there (`-G`
/// names the host as loopback; the cache lives in `dir`).
fn recording_ssh(dir: &Path, log: &Path) -> String {
    let path = dir.join("recording-ssh");
    let script = format!(
        r#"#!/bin/sh
if [ "$1" = -G ]; then echo "hostname 127.0.0.1"; exit 0; fi
for a in "$@"; do last=$a; done
printf '%s\n' "$last" >> '{log}'
export HOME='{home}' XDG_CACHE_HOME='{home}/cache' SSH_CONNECTION='127.0.0.1 1 127.0.0.1 22'
exec sh -c "$last"
"#,
        log = log.display(),
        home = dir.display(),
    );
    fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_string()
}

/// The remote bsync inside ssh gets the same limit and verbosity as the
/// one-session server of `-t`: a download inside ssh (`-over-ssh`) is sent
/// at the `-bwlimit` asked for, and its server logs with `-v`.
#[test]
fn over_ssh_passes_bwlimit_and_verbosity_to_the_remote_server() {
    let dir = TempDir::new("channel-args");
    let log = dir.join("ssh.log");
    let ssh = recording_ssh(dir.path(), &log);
    let (src, dst) = make_pair(1 << 20, 29);
    let (a, b) = (dir.join("a.img"), dir.join("b.img"));
    write_file(&a, &dst);
    write_file(&b, &src);
    let err = run_ok(
        bsync()
            .args(["-b", "65536", "-ssh", &ssh, "-over-ssh", "-d", "-v"])
            .args(["-bwlimit", "64M", "-f"])
            .arg(&a)
            .arg("-t")
            .arg(format!("localhost:{}", b.display())),
    );
    assert!(err.contains("inside ssh"), "{err}");
    assert_same(&a, &b);
    let calls = fs::read_to_string(&log).unwrap();
    let server = calls
        .lines()
        .find(|l| l.contains("--server"))
        .unwrap_or_else(|| panic!("no --server call in {calls}"));
    assert!(server.contains(" -bwlimit 67108864"), "{server}");
    assert!(server.contains(" -v "), "{server}");
    assert!(server.contains(" -d "), "{server}");
}
