//! Child processes with pipes, one way for every mode that starts one (the
//! ssh of `-t`, the remote shell of bdsync's client forms): start one with
//! its stdin and stdout as a stream to us ([`spawn_with_pipes`], or
//! `sh -c` a remote shell command: [`sh`]), reap it
//! after the session ([`reap`]), reap it under the lock the signal thread
//! reads process numbers from ([`try_reap`]); and the one signal thread
//! ([`watch_interrupts`]).
//!
//! SIGINT, SIGTERM and SIGHUP are blocked in every thread and taken by
//! that one thread with `sigwait`: it forwards SIGTERM to the child
//! [`record`]ed at the moment, runs what the running mode asked to be done
//! on an interrupt ([`on_interrupt`]: `-t` removes its remote directory,
//! `--patch` stops between two records), writes a `-rescue` map as it
//! stands, says where to resume, and exits with 128 + the signal number.
//!
//! `ssh/process.rs` supervises the long-running ssh of `-t` (its stderr
//! kept, a bounded wait, a kill) on top of [`try_reap`].

use std::io;
use std::os::fd::OwnedFd;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::lock::lock;
use crate::log::Log;
use crate::progress::resume_hint;
use crate::stdio::PipeStream;
use crate::sys;

/// Start `cmd` with its stdin and stdout as a stream to us; its stderr
/// passes through to ours. `what` names it in errors.
pub fn spawn_with_pipes(mut cmd: Command, what: &str) -> Result<(Child, PipeStream)> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::io(what, "start", e))?;
    let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(Error::Failed(format!("{what}: no pipes")));
    };
    Ok((
        child,
        PipeStream::new(OwnedFd::from(output), OwnedFd::from(input)),
    ))
}

/// Start `sh -c command` with its stdin and stdout as a stream to us;
/// also what it is called in errors.
pub fn sh(command: &str) -> Result<(Child, PipeStream, String)> {
    let what = format!("remote shell `{command}`");
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(command);
    let (child, stream) = spawn_with_pipes(cmd, &what)?;
    Ok((child, stream, what))
}

/// How long a child may take to end after the session has ended (and its
/// stdin was closed), before it is killed: the session's outcome is known,
/// whatever ssh or the remote shell still does.
pub const REAP_LIMIT: Duration = Duration::from_secs(5);

/// Wait for `child` (`what`) after the session, at most [`REAP_LIMIT`];
/// its failure is only reported when the session itself went well, or
/// when it ended before the session `started` (its handshake done): then
/// the pipe it broke is no news, its end is.
pub fn reap(mut child: Child, what: &str, session: Result<()>, started: bool) -> Result<()> {
    let status = wait_within(&mut child, REAP_LIMIT);
    if let Err(e) = session {
        return Err(match status {
            Ok(Some(s)) if !started && crate::net::is_connection_loss(&e) => {
                Error::Failed(format!("{what} {} before the session started", ended(s)))
            }
            _ => e,
        });
    }
    match status {
        Ok(Some(s)) if s.success() => Ok(()),
        // The session was complete and checked: only the child lingered.
        Ok(None) => Ok(()),
        Ok(Some(s)) => Err(Error::Failed(format!(
            "{what} {} after the session",
            ended(s)
        ))),
        Err(e) => Err(Error::io(what, "wait", e)),
    }
}

/// How a child ended: `exited with status 1`, `was killed by signal 9`.
fn ended(s: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "ended".to_string(),
    }
}

/// Wait up to `limit` for `child`; kill and reap it if it has not ended
/// by then (`Ok(None)`).
fn wait_within(c: &mut Child, limit: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = try_reap(c)? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            // Under the lock, as in `try_reap`.
            let mut recorded = child();
            let _ = c.kill();
            c.wait()?;
            if *recorded == Some(c.id()) {
                *recorded = None;
            }
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The child process the signal thread stops, if one runs.
static CHILD: Mutex<Option<u32>> = Mutex::new(None);
/// What the running mode asked to be done on an interrupt.
type Hook = Box<dyn FnOnce(&Log) + Send>;
static ON_INTERRUPT: Mutex<Option<Hook>> = Mutex::new(None);
/// Set by the signal thread; the main thread then leaves the exit to it.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn child() -> MutexGuard<'static, Option<u32>> {
    lock(&CHILD)
}

/// Child process `pid` runs: the signal thread stops it.
pub fn record(pid: u32) {
    *child() = Some(pid);
}

/// `try_wait` on `child`, forgetting its number once it is reaped. Both
/// happen under one lock, so the signal thread never signals a process
/// number that has been reused.
pub fn try_reap(c: &mut Child) -> io::Result<Option<ExitStatus>> {
    let mut recorded = child();
    let status = c.try_wait()?;
    if status.is_some() && *recorded == Some(c.id()) {
        *recorded = None;
    }
    Ok(status)
}

/// On an interrupt, run `hook` (replacing any before it); `None`: nothing.
pub fn on_interrupt(hook: Option<Hook>) {
    *lock(&ON_INTERRUPT) = hook;
}

/// Whether the signal thread took a signal and is ending the process.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Take Ctrl-C, SIGTERM and SIGHUP in a thread of our own, so an
/// interrupted run stops its child, cleans up, still says where to resume
/// (then exits 128 + the signal). Called before any other thread starts,
/// so all inherit the mask; once per process, however often `run` is
/// called (tests call it in-process).
pub fn watch_interrupts(log: &Log) {
    static WATCHING: AtomicBool = AtomicBool::new(false);
    if WATCHING.swap(true, Ordering::Relaxed) {
        return;
    }
    if let Err(e) = sys::block_termination_signals() {
        log.detail(format!(
            "signals: cannot block ({e}); Ctrl-C may leave a remote copy"
        ));
        return;
    }
    let log = log.clone();
    // Without the thread, the signals keep their default action.
    let watcher = thread::Builder::new().spawn(move || {
        let Ok(sig) = sys::wait_termination_signal() else {
            return;
        };
        INTERRUPTED.store(true, Ordering::SeqCst);
        {
            // Under the lock: the child cannot be reaped (and its number
            // reused) between reading the number and signalling it.
            let recorded = child();
            if let Some(pid) = *recorded {
                let _ = sys::kill(pid, libc::SIGTERM);
            }
        }
        let hook = lock(&ON_INTERRUPT).take();
        if let Some(hook) = hook {
            hook(&log);
        }
        crate::rescue::save_on_interrupt();
        crate::patch::part::remove_on_interrupt(&log);
        crate::progress::end_live_line();
        log.line("interrupted");
        if let Some(hint) = resume_hint() {
            log.line(hint);
        }
        crate::net::tell_peers(
            &format!("it was stopped by {}", signal_name(sig)),
            std::time::Duration::from_secs(1),
        );
        std::process::exit(128 + sig);
    });
    if watcher.is_err() {
        // Nothing would take them: the signals end the process as usual.
        let _ = sys::unblock_termination_signals();
    }
}

/// `SIGINT (Ctrl-C)`, `SIGTERM`, `SIGHUP`.
fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGINT => "SIGINT (Ctrl-C)".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGHUP => "SIGHUP".into(),
        n => format!("signal {n}"),
    }
}
