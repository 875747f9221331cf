//! Supervision of the local `ssh` processes: start one with its output
//! piped, keep the last lines of its stderr, and end it one way only.
//!
//! Every child, a short command or the long-running remote server, ends
//! through [`Supervised::end`]: wait up to a limit, close its stdin (the
//! remote stops bsync on that), wait a grace period, kill the local `ssh`,
//! reap it, and collect what its stderr said. A child is reaped only through
//! [`child::try_reap`], under the lock the signal thread reads process
//! numbers from.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::child;
use crate::error::{Error, Result};
use crate::lock::lock;
use crate::log::Log;

/// Lines of the remote's stderr kept to explain a failure.
const TAIL_LINES: usize = 20;
/// How long a remote that failed is given to say why before it is cut off.
pub(super) const FAILED_REMOTE_GRACE: Duration = Duration::from_secs(3);
/// ssh's exit status for its own failures (connection, authentication).
pub(super) const SSH_FAILED: i32 = 255;
/// How often a wait looks at the child. Reaping must happen under the
/// lock of [`child::try_reap`], so this polls `try_wait`
/// rather than blocking in `wait` on another thread.
const POLL: Duration = Duration::from_millis(20);

/// How the remote command ended, and what it said last.
pub(super) struct RemoteExit {
    /// `None`: it did not end in time and was killed.
    pub(super) status: Option<ExitStatus>,
    /// Whether it ended by itself, rather than because this side closed its
    /// stdin or killed ssh.
    pub(super) own: bool,
    /// The last [`TAIL_LINES`] lines of its stderr.
    pub(super) tail: Vec<String>,
}

impl RemoteExit {
    pub(super) fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    pub(super) fn last_line(&self) -> Option<&str> {
        self.meaningful().next_back()
    }

    /// The lines worth showing: not empty, not ssh's host-key chatter.
    fn meaningful(&self) -> impl DoubleEndedIterator<Item = &str> {
        self.tail
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty() && !l.starts_with("Warning: Permanently added"))
    }

    /// The last `n` meaningful lines, oldest first, joined with ` / `: when
    /// ssh or the login fails, the line that explains it is often not the
    /// last one ("Could not chdir to home directory" before "This account
    /// is currently not available").
    pub(super) fn last_lines(&self, n: usize) -> Option<String> {
        let mut lines: Vec<&str> = self.meaningful().rev().take(n).collect();
        lines.reverse();
        (!lines.is_empty()).then(|| lines.join(" / "))
    }

    /// Whether the remote bsync was killed by a signal (the remote shell's
    /// status 128 + N).
    pub(super) fn killed(&self) -> bool {
        self.status
            .and_then(|s| s.code())
            .is_some_and(|c| c > 128 && c < SSH_FAILED)
    }

    /// `exited with status 1: LINE`, `was killed by signal 9`, ...
    pub(super) fn describe(&self) -> String {
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
        // An ordinary failure (not a signal): the lines before the last may
        // be the ones that explain it.
        let failed = self
            .status
            .and_then(|s| s.code())
            .is_some_and(|c| c > 0 && c < 128);
        let said = if self.own && failed {
            self.last_lines(3)
        } else {
            self.last_line().map(str::to_string)
        };
        match said {
            Some(line) => format!("{how}: {}", line.trim_start_matches("bsync: ")),
            None => how,
        }
    }
}

/// A running child whose stderr a thread of its own collects.
struct Supervised {
    child: Child,
    stdin: Option<ChildStdin>,
    tail: Arc<Mutex<VecDeque<String>>>,
    stderr: Option<thread::JoinHandle<()>>,
}

impl Supervised {
    /// Start `cmd` with stdout and stderr piped (stdin as the caller set
    /// it); returns the child and its stdout. `record`: note the child for
    /// the signal thread. `echo`: also show each stderr line as it comes.
    fn spawn(
        mut cmd: Command,
        what: &str,
        record: bool,
        echo: Option<&Log>,
    ) -> Result<(Supervised, ChildStdout)> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("remote shell {program}"), what, e))?;
        if record {
            child::record(child.id());
        }
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(Error::Failed(
                "ssh: pipes to the remote were not set up".into(),
            ));
        };
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let collector = {
            let tail = Arc::clone(&tail);
            let echo = echo.cloned();
            thread::Builder::new()
                .spawn(move || collect_lines(stderr, &tail, echo.as_ref()))
                .map_err(crate::session::thread_refused)?
        };
        let stdin = child.stdin.take();
        Ok((
            Supervised {
                child,
                stdin,
                tail,
                stderr: Some(collector),
            },
            stdout,
        ))
    }

    /// The one way a child ends. Wait up to `limit` (forever with `None`)
    /// for it to end by itself; then close its stdin and give it `grace`
    /// longer; then kill it. Either way it is reaped and its stderr read to
    /// the end.
    fn end(mut self, limit: Option<Duration>, grace: Duration) -> RemoteExit {
        let mut status = wait(&mut self.child, limit);
        let own = status.is_some();
        self.stdin = None;
        if status.is_none() {
            status = wait(&mut self.child, Some(grace));
        }
        if status.is_none() {
            let _ = self.child.kill();
            let _ = wait(&mut self.child, None);
        }
        if let Some(h) = self.stderr.take() {
            let _ = h.join();
        }
        let tail = lock(&self.tail).drain(..).collect();
        RemoteExit { status, own, tail }
    }
}

/// Wait for `child` for at most `limit` (forever with `None`).
fn wait(child: &mut Child, limit: Option<Duration>) -> Option<ExitStatus> {
    let deadline = limit.map(|l| Instant::now() + l);
    loop {
        match child::try_reap(child) {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => return None,
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        thread::sleep(POLL);
    }
}

/// Keep the last [`TAIL_LINES`] lines of `from`; echo each to `echo` too.
fn collect_lines(from: impl Read, tail: &Mutex<VecDeque<String>>, echo: Option<&Log>) {
    for line in BufReader::new(from).lines() {
        let Ok(line) = line else { break };
        if let Some(log) = echo {
            log.line(format!("remote: {line}"));
        }
        let mut t = lock(tail);
        if t.len() == TAIL_LINES {
            t.pop_front();
        }
        t.push_back(line);
    }
}

/// A finished short command: status, stdout, and stderr's last lines.
pub(super) struct Finished {
    pub(super) status: ExitStatus,
    pub(super) stdout: String,
}

/// Run a side query or a cleanup command with its output captured, killed
/// if it has not ended after `limit`. The signal thread does not know
/// about it.
pub(super) fn bounded(cmd: Command, what: &str, limit: Duration) -> Result<Finished> {
    let (child, mut out) = Supervised::spawn(cmd, what, false, None)?;
    // Read on a thread of its own so that `limit` holds even while the
    // child keeps its stdout open.
    let reader = thread::Builder::new()
        .spawn(move || {
            let mut stdout = String::new();
            let _ = out.read_to_string(&mut stdout);
            stdout
        })
        .map_err(crate::session::thread_refused)?;
    let tail = child.end(Some(limit), Duration::ZERO);
    let stdout = reader.join().unwrap_or_default();
    let status = tail
        .status
        .ok_or_else(|| Error::Failed("ssh did not end in time".into()))?;
    Ok(Finished { status, stdout })
}

/// The remote command that runs bsync as a one-session server.
pub(super) struct Remote {
    child: Supervised,
    stdout: BufReader<ChildStdout>,
}

impl Remote {
    /// Start `cmd` with a pipe to its stdin; with `-v`, its stderr is shown
    /// as it comes.
    pub(super) fn start(mut cmd: Command, log: &Log) -> Result<Remote> {
        cmd.stdin(Stdio::piped());
        let echo = log.is_verbose().then_some(log);
        let (child, stdout) = Supervised::spawn(cmd, "start", true, echo)?;
        Ok(Remote {
            child,
            stdout: BufReader::new(stdout),
        })
    }

    /// The secret as one line of hex; stdin stays open, since its end is
    /// what tells the remote that this side is gone.
    pub(super) fn send_secret(&mut self, secret: &[u8; 32]) {
        let mut line: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        line.push('\n');
        if let Some(s) = self.child.stdin.as_mut() {
            // A remote that is already gone is explained better by its exit
            // status and stderr, which the caller collects next.
            let _ = s.write_all(line.as_bytes()).and_then(|()| s.flush());
        }
    }

    /// `bytes` on the remote's stdin, as they are (this executable, when
    /// the remote asks for it).
    pub(super) fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self.child.stdin.as_mut() {
            Some(s) => s.write_all(bytes).and_then(|()| s.flush()),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        }
    }

    /// The next line of stdout without its line end; `None` once the
    /// remote has ended it (or it is not text).
    pub(super) fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end_matches(['\n', '\r']).to_string()),
        }
    }

    /// The port from the next line of stdout; `None` if the remote ended
    /// (or printed something else) first.
    pub(super) fn port(&mut self) -> Option<u16> {
        self.line()?.trim().parse::<u16>().ok().filter(|&p| p != 0)
    }

    /// The remote's stdin and stdout as one stream, for a session carried
    /// inside ssh; its stderr stays collected here. Shutting the stream
    /// down closes the remote's stdin. `None` when already taken.
    pub(super) fn stream(&mut self) -> Option<crate::stdio::PipeStream> {
        use std::os::fd::AsFd;
        let input = self.child.stdin.take()?;
        let output = self.stdout.get_ref().as_fd().try_clone_to_owned().ok()?;
        Some(crate::stdio::PipeStream::new(output, input.into()))
    }

    /// Wait up to `limit` for the remote to end, then close its stdin (the
    /// remote stops bsync on that) and give it [`FAILED_REMOTE_GRACE`]
    /// longer; kill the local ssh if it still has not ended.
    pub(super) fn finish(self, limit: Option<Duration>) -> RemoteExit {
        self.child.end(limit, FAILED_REMOTE_GRACE)
    }
}
