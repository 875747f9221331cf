//! The SSH launcher: `-t [user@]host[:port]:/path` in one command.
//!
//! Nothing needs to be installed on the other machine. The launcher
//!
//! 1. asks the remote over `ssh` for `uname -sm` and, only if that matches
//!    this binary, makes a fresh `mktemp -d` directory (mode 0700, random
//!    name) — one round trip;
//! 2. copies this very executable (`/proc/PID/exe`) there with `scp`;
//! 3. starts it over `ssh` as a one-session server (`-p 0`, so the kernel
//!    picks a free port, printed as the first line of stdout) bound to the
//!    address the SSH connection arrived on (`$SSH_CONNECTION`), so it never
//!    listens on more than that one address;
//! 4. connects to it directly over TCP with the ordinary client
//!    ([`crate::client::run`]): the data never goes through ssh's own
//!    encryption and flow control, which is what makes it fast.
//!
//! A fresh 32-byte secret from `getrandom` travels on that ssh session's
//! stdin, never on a command line (a remote `ps` would show it): with `-e`
//! it is the encryption key (`-K -`), otherwise the session token
//! (`-token-file -`). The remote shell reads it with its `read` builtin and
//! hands it to bsync through a pipe from the `printf` builtin.
//!
//! Cleanup. The remote command removes its directory itself when bsync exits
//! (an `EXIT` trap), and kills bsync when the ssh session's stdin reaches
//! end of file, which is how it learns that this side has gone away. As a
//! second line of defence this side runs `ssh host rm -rf DIR` after any
//! failure and after Ctrl-C: SIGINT, SIGTERM and SIGHUP are blocked in every
//! thread and taken by one thread with `sigwait`, which cleans up and exits
//! with 128 + the signal number.
//!
//! The remote shell is `ssh`, or the `-ssh` flag, or `$BSYNC_SSH` (the flag
//! wins), split on whitespace without any shell evaluation: the first word is
//! the program, the rest are ssh options. `scp` runs that program
//! (`scp -S PROGRAM`) with the options it understands translated (`-p PORT`
//! becomes `-P PORT`, `-l USER` becomes `-o User=USER`).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::aead::Key;
use crate::auth::Secret;
use crate::client;
use crate::config::{Config, Connect, Mode, RemoteTarget, Role, Transfer};
use crate::error::{Error, Result};
use crate::progress::Log;
use crate::sys;

/// Lines of the remote's stderr kept to explain a failure.
const TAIL_LINES: usize = 20;
/// How long the explicit `ssh host rm -rf DIR` of a cleanup may take.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a remote that failed is given to say why before it is cut off.
const FAILED_REMOTE_GRACE: Duration = Duration::from_secs(3);
/// ssh's exit status for its own failures (connection, authentication).
const SSH_FAILED: i32 = 255;

/// The remote shell command: a program and the ssh options to give it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shell {
    /// The ssh program (`ssh`, a path, or a wrapper that speaks ssh's options).
    pub program: String,
    /// Options for every ssh call, in order.
    pub options: Vec<String>,
}

impl Shell {
    /// Split `cmd` on whitespace; `None` when it has no words.
    pub fn parse(cmd: &str) -> Option<Shell> {
        let mut words = cmd.split_whitespace().map(str::to_string);
        let program = words.next()?;
        Some(Shell {
            program,
            options: words.collect(),
        })
    }

    /// The options rewritten for `scp`, which shares most of ssh's but not
    /// all: some letters mean something else there (`-p`, `-l`, `-T`), and
    /// options that matter only to an interactive session are dropped.
    pub fn scp_options(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut args = self.options.iter();
        while let Some(arg) = args.next() {
            let Some(cluster) = arg.strip_prefix('-').filter(|c| !c.is_empty()) else {
                // Not an option: ssh would take it as the host. Not scp's.
                continue;
            };
            for (i, c) in cluster.char_indices() {
                if !SSH_VALUE_OPTIONS.contains(c) {
                    if SCP_SHARED_FLAGS.contains(c) {
                        out.push(format!("-{c}"));
                    }
                    continue;
                }
                // getopt: the value is the rest of this word, or the next one.
                let rest = &cluster[i + c.len_utf8()..];
                let value = if rest.is_empty() {
                    match args.next() {
                        Some(v) => v.clone(),
                        None => break,
                    }
                } else {
                    rest.to_string()
                };
                match c {
                    'c' | 'F' | 'i' | 'J' | 'o' => out.extend([format!("-{c}"), value]),
                    'p' => out.extend(["-P".to_string(), value]),
                    'l' => out.extend(["-o".to_string(), format!("User={value}")]),
                    'b' => out.extend(["-o".to_string(), format!("BindAddress={value}")]),
                    'B' => out.extend(["-o".to_string(), format!("BindInterface={value}")]),
                    'm' => out.extend(["-o".to_string(), format!("MACs={value}")]),
                    'S' => out.extend(["-o".to_string(), format!("ControlPath={value}")]),
                    _ => {}
                }
                break;
            }
        }
        out
    }
}

/// ssh's options that take a value (from its getopt string).
const SSH_VALUE_OPTIONS: &str = "bceilmopBDEFIJLOPQRSwW";
/// ssh's flags that mean the same to scp.
const SCP_SHARED_FLAGS: &str = "46ACqv";

/// One remote machine as ssh reaches it.
#[derive(Clone, Debug)]
struct Endpoint {
    shell: Shell,
    user: Option<String>,
    host: String,
    port: Option<u16>,
}

impl Endpoint {
    /// `ssh [options] [-l user] [-p port] host SCRIPT`; stdin closed.
    fn command(&self, script: &str) -> Command {
        let mut cmd = self.ssh();
        cmd.arg(&self.host).arg(script);
        cmd
    }

    fn ssh(&self) -> Command {
        let mut cmd = Command::new(&self.shell.program);
        cmd.args(&self.shell.options);
        if let Some(user) = &self.user {
            cmd.arg("-l").arg(user);
        }
        if let Some(port) = self.port {
            cmd.arg("-p").arg(port.to_string());
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// `scp -S program [options] [-P port] -q SRC [user@]host:DST`.
    fn scp(&self, src: &str, dst: &str, legacy: bool) -> Command {
        let mut cmd = Command::new("scp");
        cmd.arg("-S").arg(&self.shell.program);
        cmd.args(self.shell.scp_options());
        if let Some(port) = self.port {
            cmd.arg("-P").arg(port.to_string());
        }
        if legacy {
            cmd.arg("-O");
        }
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let user = self
            .user
            .as_ref()
            .map_or(String::new(), |u| format!("{u}@"));
        cmd.arg("-q").arg(src).arg(format!("{user}{host}:{dst}"));
        cmd.stdin(Stdio::null());
        cmd
    }

    /// The host name the data connection should use: ssh's configuration
    /// may map the name typed to another (`Host`/`HostName`), so ask
    /// `ssh -G`. Anything that goes wrong leaves the name as typed.
    fn connect_host(&self) -> String {
        let mut cmd = self.ssh();
        cmd.arg("-G").arg(&self.host);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let out = spawn(cmd, "-G", false)
            .ok()
            .and_then(|child| finish(child, Some(Duration::from_secs(10))).ok());
        out.filter(|o| o.status.success())
            .and_then(|o| {
                o.stdout
                    .lines()
                    .find_map(|l| l.strip_prefix("hostname ").map(|h| h.trim().to_string()))
            })
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| self.host.clone())
    }
}

/// What cleanup must undo if the run stops: the directory made on the
/// remote, and the child process running at the moment.
struct Pending {
    endpoint: Endpoint,
    dir: Option<String>,
    child: Option<u32>,
}

static PENDING: Mutex<Option<Pending>> = Mutex::new(None);
/// Set by the signal thread; the main thread then leaves the exit to it.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn pending() -> std::sync::MutexGuard<'static, Option<Pending>> {
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Run the transfer `config` describes (a [`Mode::Ssh`]) over SSH.
pub fn run(config: &Config, log: &Log) -> Result<()> {
    let Mode::Ssh {
        target,
        role,
        path,
        shell,
        encrypt,
    } = &config.mode
    else {
        return Err(Error::Failed("internal error: ssh::run without -t".into()));
    };
    let launch = Launch {
        config,
        role: *role,
        path,
        encrypt: *encrypt,
    };
    for (what, s) in [("host", Some(&target.host)), ("user", target.user.as_ref())] {
        if s.is_some_and(|s| s.starts_with('-')) {
            return Err(Error::usage(format!(
                "-t: the {what} cannot start with '-'"
            )));
        }
    }
    if *role == Role::Source {
        // A typo in -f should fail before anything happens on the remote.
        std::fs::File::open(path)
            .map_err(|e| Error::io(format!("source {}", path.display()), "open", e))?;
    }
    let endpoint = Endpoint {
        // Validation never lets an empty command through.
        shell: Shell::parse(shell).unwrap_or_else(|| Shell {
            program: "ssh".into(),
            options: Vec::new(),
        }),
        user: target.user.clone(),
        host: target.host.clone(),
        port: target.port,
    };
    watch_signals(log, &target.host);
    *pending() = Some(Pending {
        endpoint: endpoint.clone(),
        dir: None,
        child: None,
    });
    let result = launch_and_sync(&launch, target, &endpoint, log);
    let left = pending().take();
    if INTERRUPTED.load(Ordering::SeqCst) {
        // The signal thread is cleaning up and will end the process.
        loop {
            thread::park();
        }
    }
    if result.is_err() {
        if let Some(dir) = left.and_then(|p| p.dir) {
            remove_remote(&endpoint, &dir, log);
        }
    }
    result
}

/// This end of a `-t` run: what the plan says beside the target.
struct Launch<'a> {
    config: &'a Config,
    role: Role,
    path: &'a std::path::Path,
    encrypt: bool,
}

fn launch_and_sync(
    launch: &Launch,
    target: &RemoteTarget,
    endpoint: &Endpoint,
    log: &Log,
) -> Result<()> {
    let name = &target.host;
    log.info(format!("{name}: checking the architecture"));
    let dir = make_remote_dir(endpoint, name)?;
    if let Some(p) = pending().as_mut() {
        p.dir = Some(dir.clone());
    }
    log.info(format!("{name}: copying bsync to {dir}"));
    deploy(endpoint, &dir, name)?;

    let mut secret = [0u8; 32];
    sys::getrandom(&mut secret).map_err(|e| Error::io("ssh", "get random bytes", e))?;
    let config = launch.config;
    let script = server_script(
        &dir,
        &target.path,
        launch.role,
        &config.transfer,
        config.log.verbose,
        launch.encrypt,
    );
    let mut cmd = endpoint.command(&script);
    cmd.stdin(Stdio::piped());
    let mut remote = Remote::start(cmd, log)?;
    remote.send_secret(&secret);
    let port = match remote.port() {
        Some(port) => port,
        None => {
            let exit = remote.finish(Some(FAILED_REMOTE_GRACE));
            return Err(explain(None, &exit, name, "the remote bsync did not start"));
        }
    };
    let host = endpoint.connect_host();
    log.info(format!(
        "{name}: bsync is listening on port {port}; connecting to {host}"
    ));
    let connect = Connect {
        host: host.clone(),
        port,
        role: launch.role,
        path: launch.path.to_path_buf(),
        secret: Some(Secret::new(Key::from_bytes(secret), launch.encrypt)),
    };
    match client::run(&connect, &config.transfer, &config.env, log) {
        Ok(()) => {
            // The server exits once the destination is flushed; it gets as
            // long as any other network step.
            let exit = remote.finish(Some(config.env.io_timeout));
            if exit.success() {
                // Warnings of a quiet remote; -v showed them as they came.
                if !log.is_verbose() {
                    for line in &exit.tail {
                        log.line(format!("{name}: {line}"));
                    }
                }
                Ok(())
            } else {
                Err(explain(
                    None,
                    &exit,
                    name,
                    "the remote bsync failed after the transfer",
                ))
            }
        }
        Err(e) => {
            let exit = remote.finish(Some(FAILED_REMOTE_GRACE));
            Err(explain(Some(e), &exit, name, "the remote bsync failed"))
        }
    }
}

/// How the remote command ended, and what it said last.
struct RemoteExit {
    status: Option<ExitStatus>,
    /// Whether it ended by itself, rather than because this side closed its
    /// stdin or killed ssh.
    own: bool,
    tail: Vec<String>,
}

impl RemoteExit {
    fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    fn last_line(&self) -> Option<&str> {
        self.tail
            .iter()
            .rev()
            .map(String::as_str)
            .find(|l| !l.is_empty() && !l.starts_with("Warning: Permanently added"))
    }

    /// `exited with status 1: LINE`, `was killed by signal 9`, ...
    fn describe(&self) -> String {
        use std::os::unix::process::ExitStatusExt;
        let how = match self.status {
            None => "did not end in time and was stopped".to_string(),
            Some(s) => match (s.code(), s.signal()) {
                (Some(c), _) if c > 128 && c < SSH_FAILED => {
                    format!("was killed by signal {}", c - 128)
                }
                (Some(c), _) => format!("exited with status {c}"),
                (None, Some(sig)) => format!("ended: local ssh killed by signal {sig}"),
                (None, None) => "ended".to_string(),
            },
        };
        match self.last_line() {
            Some(line) => format!("{how}: {}", line.trim_start_matches("bsync: ")),
            None => how,
        }
    }
}

/// One line out of the local error (if any) and how the remote ended.
fn explain(local: Option<Error>, exit: &RemoteExit, name: &str, what: &str) -> Error {
    if exit.status.and_then(|s| s.code()) == Some(SSH_FAILED) {
        return Error::Failed(format!(
            "ssh to {name} failed: {}",
            exit.last_line().unwrap_or("(ssh said nothing)")
        ));
    }
    match local {
        // The server told the client why; that is the clearest line.
        Some(e @ Error::Remote { .. }) => e,
        // Stopped by this side after the failure: its status says nothing.
        Some(e) if exit.success() || !exit.own => e,
        Some(e) => Error::Failed(format!(
            "{e}; the remote bsync on {name} {}",
            exit.describe()
        )),
        None => Error::Failed(format!("{name}: {what}: {}", exit.describe())),
    }
}

/// The remote command that runs bsync as a one-session server.
struct Remote {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<std::process::ChildStdout>,
    tail: Arc<Mutex<VecDeque<String>>>,
    stderr: Option<thread::JoinHandle<()>>,
}

impl Remote {
    fn start(mut cmd: Command, log: &Log) -> Result<Remote> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = spawn(cmd, "start", true)?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(Error::Failed(
                "ssh: pipes to the remote were not set up".into(),
            ));
        };
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let stderr = {
            let tail = Arc::clone(&tail);
            let log = log.clone();
            thread::spawn(move || collect_lines(stderr, &tail, log.is_verbose().then_some(&log)))
        };
        Ok(Remote {
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout),
            tail,
            stderr: Some(stderr),
        })
    }

    /// The secret as one line of hex; stdin stays open, since its end is
    /// what tells the remote that this side is gone.
    fn send_secret(&mut self, secret: &[u8; 32]) {
        let mut line: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        line.push('\n');
        if let Some(s) = self.stdin.as_mut() {
            // A remote that is already gone is explained better by its exit
            // status and stderr, which the caller collects next.
            let _ = s.write_all(line.as_bytes()).and_then(|()| s.flush());
        }
    }

    /// The port from the first line of stdout; `None` if the remote ended
    /// (or printed something else) first.
    fn port(&mut self) -> Option<u16> {
        let mut line = String::new();
        self.stdout.read_line(&mut line).ok()?;
        line.trim().parse::<u16>().ok().filter(|&p| p != 0)
    }

    /// Wait up to `limit` for the remote to end, then close its stdin (the
    /// remote stops bsync on that) and give it a little longer; kill the
    /// local ssh if it still has not ended.
    fn finish(mut self, limit: Option<Duration>) -> RemoteExit {
        let mut status = wait_child(&mut self.child, limit);
        let own = status.is_some();
        self.stdin = None;
        if status.is_none() {
            status = wait_child(&mut self.child, Some(FAILED_REMOTE_GRACE));
        }
        if status.is_none() {
            let _ = self.child.kill();
            let _ = wait_child(&mut self.child, None);
        }
        if let Some(h) = self.stderr.take() {
            let _ = h.join();
        }
        let tail = self
            .tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        RemoteExit { status, own, tail }
    }
}

/// Keep the last [`TAIL_LINES`] lines of `from`; echo each to `echo` too.
fn collect_lines(from: impl Read, tail: &Mutex<VecDeque<String>>, echo: Option<&Log>) {
    for line in BufReader::new(from).lines() {
        let Ok(line) = line else { break };
        if let Some(log) = echo {
            log.line(format!("remote: {line}"));
        }
        let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
        if t.len() == TAIL_LINES {
            t.pop_front();
        }
        t.push_back(line);
    }
}

/// Start a child and note it for the signal thread.
fn spawn(mut cmd: Command, what: &str, record: bool) -> Result<Child> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("remote shell {program}"), what, e))?;
    if record {
        if let Some(p) = pending().as_mut() {
            p.child = Some(child.id());
        }
    }
    Ok(child)
}

/// Wait for `child` for at most `limit` (forever with `None`). The child is
/// reaped under the [`PENDING`] lock, so the signal thread never signals a
/// process number that has been reused.
fn wait_child(child: &mut Child, limit: Option<Duration>) -> Option<ExitStatus> {
    let deadline = limit.map(|l| Instant::now() + l);
    loop {
        {
            let mut p = pending();
            match child.try_wait() {
                Ok(Some(status)) => {
                    if let Some(p) = p.as_mut().filter(|p| p.child == Some(child.id())) {
                        p.child = None;
                    }
                    return Some(status);
                }
                Ok(None) => {}
                Err(_) => return None,
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A finished short command: status, stdout, and stderr's last lines.
struct Finished {
    status: ExitStatus,
    stdout: String,
    tail: RemoteExit,
}

/// Run a short command to the end with captured output.
fn finish(mut child: Child, limit: Option<Duration>) -> Result<Finished> {
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let stderr = child.stderr.take().map(|e| {
        let tail = Arc::clone(&tail);
        thread::spawn(move || collect_lines(e, &tail, None))
    });
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut stdout);
    }
    let status = wait_child(&mut child, limit);
    if status.is_none() {
        let _ = child.kill();
        let _ = wait_child(&mut child, None);
    }
    if let Some(h) = stderr {
        let _ = h.join();
    }
    let lines: Vec<String> = tail
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain(..)
        .collect();
    let status = status.ok_or_else(|| Error::Failed("ssh did not end in time".into()))?;
    Ok(Finished {
        status,
        stdout,
        tail: RemoteExit {
            status: Some(status),
            own: true,
            tail: lines,
        },
    })
}

fn captured(mut cmd: Command, what: &str) -> Result<Finished> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    finish(spawn(cmd, what, true)?, None)
}

/// Step 1: check `uname -sm` and make the directory, in one round trip.
fn make_remote_dir(endpoint: &Endpoint, name: &str) -> Result<String> {
    let out = captured(endpoint.command(&prepare_script()), "start")?;
    if !out.status.success() {
        return Err(explain(
            None,
            &out.tail,
            name,
            "cannot make a directory for bsync",
        ));
    }
    let mut lines = out.stdout.lines();
    let uname = lines.next().unwrap_or("").trim().to_string();
    let dir = lines.next().unwrap_or("").trim().to_string();
    if uname.is_empty() {
        return Err(Error::Failed(format!(
            "{name}: `uname -sm` printed nothing; is the remote shell a POSIX shell?"
        )));
    }
    if dir.is_empty() {
        return Err(Error::Failed(format!(
            "{name} is {uname:?}, but this bsync is built for Linux {}: \
             architecture mismatch, nothing was copied",
            std::env::consts::ARCH
        )));
    }
    if !is_safe_dir(&dir) {
        return Err(Error::Failed(format!(
            "{name}: mktemp gave an unexpected directory {dir:?}"
        )));
    }
    Ok(dir)
}

/// Step 2: copy this executable into `dir`. scp's default protocol (SFTP)
/// needs the sftp subsystem; without it, the old scp protocol is tried.
fn deploy(endpoint: &Endpoint, dir: &str, name: &str) -> Result<()> {
    let exe = format!("/proc/{}/exe", std::process::id());
    let dst = format!("{dir}/bsync");
    let mut out = captured(endpoint.scp(&exe, &dst, false), "start scp")?;
    let no_sftp = |f: &Finished| f.tail.tail.iter().any(|l| l.contains("subsystem"));
    if !out.status.success() && no_sftp(&out) {
        out = captured(endpoint.scp(&exe, &dst, true), "start scp")?;
    }
    if out.status.success() {
        return Ok(());
    }
    Err(Error::Failed(format!(
        "scp to {name} failed: {}",
        out.tail.last_line().unwrap_or("(scp said nothing)")
    )))
}

/// `rm -rf DIR` on the remote, bounded in time; says so when it fails.
fn remove_remote(endpoint: &Endpoint, dir: &str, log: &Log) {
    let mut cmd = endpoint.command(&format!("rm -rf {}", quote(dir)));
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let done = spawn(cmd, "start", false)
        .and_then(|c| finish(c, Some(CLEANUP_TIMEOUT)))
        .is_ok_and(|f| f.status.success());
    if !done {
        log.line(format!(
            "{}: could not remove {dir}; remove it by hand",
            endpoint.host
        ));
    }
}

/// Take SIGINT/SIGTERM/SIGHUP in a thread of our own: clean up, then exit.
fn watch_signals(log: &Log, name: &str) {
    if let Err(e) = sys::block_termination_signals() {
        log.detail(format!(
            "signals: cannot block ({e}); Ctrl-C may leave a remote copy"
        ));
        return;
    }
    let log = log.clone();
    let name = name.to_string();
    thread::spawn(move || {
        let Ok(sig) = sys::wait_termination_signal() else {
            return;
        };
        INTERRUPTED.store(true, Ordering::SeqCst);
        let taken = pending().take();
        if let Some(p) = taken {
            if let Some(pid) = p.child {
                let _ = sys::kill(pid, libc::SIGTERM);
            }
            if let Some(dir) = p.dir {
                log.line(format!("interrupted: removing {dir} on {name}"));
                remove_remote(&p.endpoint, &dir, &log);
            }
        }
        log.line("interrupted");
        std::process::exit(128 + sig);
    });
}

/// The `uname -sm` check and `mktemp -d`, as one remote shell line. The
/// directory is made only if the machine matches, so a mismatch leaves
/// nothing behind. `$TMPDIR` is used only if it is a plain absolute path.
fn prepare_script() -> String {
    let patterns: Vec<String> = machine_patterns(std::env::consts::ARCH)
        .iter()
        .map(|m| format!("Linux\\ {m}"))
        .collect();
    format!(
        "s=$(uname -sm) || exit 1; echo \"$s\"; case $s in {}) ;; *) exit 0;; esac; \
         t=${{TMPDIR:-/tmp}}; case $t in /*[!A-Za-z0-9._/-]*|[!/]*) t=/tmp;; esac; \
         mktemp -d \"$t/bsync.XXXXXXXXXX\"",
        patterns.join("|")
    )
}

/// `uname -m` values (shell patterns) that run a binary built for `arch`
/// (a `std::env::consts::ARCH` name).
fn machine_patterns(arch: &str) -> Vec<&str> {
    match arch {
        "x86" => vec!["i[3-6]86", "x86_64"],
        "aarch64" => vec!["aarch64", "arm64"],
        "arm" => vec!["arm*"],
        "powerpc64" if cfg!(target_endian = "little") => vec!["ppc64le"],
        "powerpc64" => vec!["ppc64"],
        "powerpc" => vec!["ppc"],
        "loongarch64" => vec!["loongarch64"],
        other => vec![other],
    }
}

/// mktemp output we are willing to put in later commands unquoted by scp.
fn is_safe_dir(dir: &str) -> bool {
    dir.starts_with('/')
        && dir.contains("/bsync.")
        && dir
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
}

/// The remote command that serves one session and then removes `dir`.
///
/// - The secret is read with the shell's `read` builtin and piped into
///   bsync with the `printf` builtin: it is never in any argv.
/// - The server binds the address the SSH connection came in on (the third
///   field of `$SSH_CONNECTION`), falling back to all IPv4 addresses.
/// - A watchdog reads the ssh session's stdin to its end, which comes when
///   this side goes away, and then stops bsync.
/// - The `EXIT` trap removes the directory however the shell ends.
///
/// `role` is this (the local) end's; `t` the transfer settings.
pub fn server_script(
    dir: &str,
    path: &str,
    role: Role,
    t: &Transfer,
    verbose: bool,
    encrypt: bool,
) -> String {
    let mut args = vec![
        "-p 0".to_string(),
        "-i \"$a\"".to_string(),
        "-P".to_string(),
    ];
    args.push(if verbose { "-v" } else { "-q" }.to_string());
    args.push(format!("-f {}", remote_path(path)));
    if role == Role::Destination {
        // The source's block size is the one that counts: the server's.
        args.push("-d".to_string());
        args.push(format!("-b {}", t.block_size));
    }
    args.push(if encrypt { "-K -" } else { "-token-file -" }.to_string());
    format!(
        "d={}; trap 'rm -rf \"$d\"' EXIT; \
         IFS= read -r k || exit 1; \
         a=${{SSH_CONNECTION:-}}; a=${{a#* * }}; a=${{a%% *}}; \
         case $a in ''|*[!0-9A-Fa-f.:]*) a=0.0.0.0;; esac; \
         exec 3<&0; \
         printf '%s\\n' \"$k\" | \"$d/bsync\" {} & p=$!; k=; \
         trap 'kill $p 2>/dev/null; exit 143' TERM; \
         trap 'kill $p 2>/dev/null; exit 129' HUP; \
         {{ while IFS= read -r x <&3; do :; done; kill $p 2>/dev/null; }} & w=$!; \
         wait $p; s=$?; kill $w 2>/dev/null; exit $s",
        quote(dir),
        args.join(" ")
    )
}

/// A remote path for the remote shell: quoted, except that a leading `~/`
/// still means the login's home directory, as it does for scp.
fn remote_path(path: &str) -> String {
    match path.strip_prefix("~/") {
        Some(rest) if !rest.is_empty() => format!("~/{}", quote(rest)),
        _ if path == "~" || path == "~/" => "~".to_string(),
        _ => quote(path),
    }
}

/// `s` as one word for a POSIX shell: single quotes, with each `'` written
/// as `'\''`.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(cmd: &str) -> Shell {
        Shell::parse(cmd).unwrap()
    }

    #[test]
    fn shell_splits_on_whitespace() {
        let s = shell("  ssh -i key\t-o  StrictHostKeyChecking=yes ");
        assert_eq!(s.program, "ssh");
        assert_eq!(s.options, ["-i", "key", "-o", "StrictHostKeyChecking=yes"]);
        assert_eq!(Shell::parse("  "), None);
    }

    #[test]
    fn scp_gets_translated_options() {
        let s = shell("ssh -p 2222 -l bob -i k -ofoo=bar -J jump -4Cv -T -x -A -L 1:h:2 -p22");
        assert_eq!(
            s.scp_options(),
            [
                "-P", "2222", "-o", "User=bob", "-i", "k", "-o", "foo=bar", "-J", "jump", "-4",
                "-C", "-v", "-A", "-P", "22"
            ]
        );
        // A value glued to its flag inside a cluster, and a dangling flag.
        assert_eq!(shell("ssh -qikey -o").scp_options(), ["-q", "-i", "key"]);
    }

    #[test]
    fn quote_survives_metacharacters() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote("$x\\y\"z"), "'$x\\y\"z'");
        assert_eq!(remote_path("~/disk img"), "~/'disk img'");
        assert_eq!(remote_path("/~/x"), "'/~/x'");
    }

    /// The quoting is only right if a real shell turns it back into the
    /// original string.
    #[test]
    fn quote_round_trips_through_sh() {
        let nasty = "a b'c\"d$e`f\\g*h;i|j&k(l)m\nn\t~o!p";
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", quote(nasty)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), nasty);
    }

    #[test]
    fn machines_match_the_build() {
        assert_eq!(machine_patterns("x86_64"), ["x86_64"]);
        assert_eq!(machine_patterns("x86"), ["i[3-6]86", "x86_64"]);
        assert!(prepare_script().contains(&format!("Linux\\ {}", std::env::consts::ARCH)));
    }

    #[test]
    fn mktemp_output_is_checked() {
        assert!(is_safe_dir("/tmp/bsync.AbC123xyz_"));
        assert!(!is_safe_dir("tmp/bsync.x"));
        assert!(!is_safe_dir("/tmp/bsync.x y"));
        assert!(!is_safe_dir("/tmp/other"));
    }

    #[test]
    fn ssh_failure_names_the_host_and_ssh_line() {
        use std::os::unix::process::ExitStatusExt;
        let exit = RemoteExit {
            status: Some(ExitStatus::from_raw(255 << 8)),
            own: true,
            tail: vec!["ssh: connect to host h port 1: Connection refused".into()],
        };
        let e = explain(None, &exit, "h", "failed");
        assert_eq!(
            e.to_string(),
            "ssh to h failed: ssh: connect to host h port 1: Connection refused"
        );
        let killed = RemoteExit {
            status: Some(ExitStatus::from_raw(137 << 8)),
            own: true,
            tail: vec![],
        };
        assert_eq!(killed.describe(), "was killed by signal 9");
    }
}
