//! Runs inside a control group that limits what the process may have: a
//! pids cgroup that refuses threads mid-session, a memory cgroup smaller
//! than what the buffers need. bsync must end with one line naming the
//! limit, never abort (SIGABRT) or be OOM-killed.
//!
//! Needs root and a cgroup file system (v2 at /sys/fs/cgroup with the
//! controller, or v1 under /sys/fs/cgroup/CONTROLLER); otherwise each test
//! skips.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_bsync");
const MIB: usize = 1 << 20;

/// A child control group of this test's own, removed on drop.
struct Cgroup {
    dir: PathBuf,
    v2: bool,
}

impl Cgroup {
    /// A new group with `controller` (`pids`, `memory`), on cgroup v2 where
    /// it has that controller, else on v1; `Err` says why not.
    fn new(controller: &str, name: &str) -> Result<Cgroup, String> {
        let root = Path::new("/sys/fs/cgroup");
        let controllers = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let (base, v2) = if controllers.split_whitespace().any(|c| c == controller) {
            // Children of the root get the controller once it is enabled.
            let _ = fs::write(
                root.join("cgroup.subtree_control"),
                format!("+{controller}"),
            );
            (root.to_path_buf(), true)
        } else if root.join(controller).join("cgroup.procs").exists() {
            (root.join(controller), false)
        } else {
            return Err(format!("no {controller} cgroup controller here"));
        };
        let dir = base.join(format!("bsync-test-{name}-{}", std::process::id()));
        fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(Cgroup { dir, v2 })
    }

    /// Write `value` into the group's `v2` file (or `v1` file on v1).
    fn set(&self, v2: &str, v1: &str, value: &str) -> Result<(), String> {
        let file = self.dir.join(if self.v2 { v2 } else { v1 });
        fs::write(&file, value).map_err(|e| format!("cannot write {}: {e}", file.display()))
    }

    /// `bsync ARGS` started inside the group.
    fn bsync(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                "echo $$ > '{}/cgroup.procs' && exec \"$0\" \"$@\"",
                self.dir.display()
            ))
            .arg(BIN)
            .args(args)
            .stdin(Stdio::null());
        cmd
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // The processes in it may take a moment to be gone.
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// Issue 18, item 8: a thread refused mid-session (pids.max reached, `-w
/// 8`) ends the run with one line naming the limit, locally and on a
/// server, never with an abort.
#[test]
fn a_refused_thread_ends_the_run_with_a_line() {
    let group = match Cgroup::new("pids", "pids") {
        Ok(g) => g,
        Err(why) => return skip(&why),
    };
    if let Err(why) = group.set("pids.max", "pids.max", "5") {
        return skip(&why);
    }
    let dir = TempDir::new("limits-pids");
    let (a, b) = (dir.join("a.img"), dir.join("b.img"));
    write_file(&a, &random_bytes(8 * MIB, 180));
    let local = [
        "-w",
        "8",
        "-b",
        "1M",
        "-f",
        a.to_str().unwrap(),
        "-t",
        b.to_str().unwrap(),
    ];
    let err = run_status(&mut group.bsync(&local), 1);
    assert!(err.contains("cannot start another thread"), "{err}");
    assert!(err.contains("pids.max"), "{err}");
    // A server in the group, a client outside.
    let mut server = group
        .bsync(&[
            "-w",
            "8",
            "-b",
            "1M",
            "-q",
            "-p",
            "0",
            "-i",
            "127.0.0.1",
            "-f",
        ])
        .arg(&b)
        .env("BSYNC_IO_TIMEOUT", "20")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the server");
    let mut port = String::new();
    BufReader::new(server.stdout.take().expect("stdout"))
        .read_line(&mut port)
        .expect("the server's port");
    let err = run_status(
        bsync()
            .args([
                "-b",
                "1M",
                "-r",
                &format!("127.0.0.1:{}", port.trim()),
                "-f",
            ])
            .arg(&a)
            .env("BSYNC_IO_TIMEOUT", "20"),
        1,
    );
    assert!(err.contains("cannot start another thread"), "{err}");
    let out = server.wait_with_output().expect("the server");
    let served = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{served}");
    assert!(served.contains("pids.max"), "{served}");
}

/// Issue 18, item 9: buffers larger than a memory cgroup leaves room for
/// are refused with one line (exit 2), not OOM-killed (137), even where
/// the machine has plenty of memory.
#[test]
fn buffers_beyond_the_memory_cgroup_are_refused() {
    let group = match Cgroup::new("memory", "memory") {
        Ok(g) => g,
        Err(why) => return skip(&why),
    };
    if let Err(why) = group.set("memory.max", "memory.limit_in_bytes", "1G") {
        return skip(&why);
    }
    let dir = TempDir::new("limits-memory");
    let (a, b) = (dir.join("a.img"), dir.join("b.img"));
    write_file(&a, &random_bytes(8 * MIB, 181));
    // An upload: a block of -b per worker and one, and frames, on each end.
    let out =
        run(&mut group.bsync(&["-b", "256M", "-f", a.to_str().unwrap(), "-r", "127.0.0.1:9"]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("of memory available"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // Locally blocks are read in pieces of 512 KiB: the same -b fits.
    let out = run(&mut group.bsync(&[
        "-q",
        "-b",
        "256M",
        "-f",
        a.to_str().unwrap(),
        "-t",
        b.to_str().unwrap(),
    ]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(read_file(&b), read_file(&a));
}
