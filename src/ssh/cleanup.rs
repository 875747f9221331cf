//! What a stopped run must undo on the remote, and the thread that undoes
//! it when SIGINT, SIGTERM or SIGHUP arrives.
//!
//! The remote script removes a partial copy and a temporary directory (made
//! only where the remote has no usable cache) itself when bsync exits; this
//! is the second line of defence. While a run is in progress, [`PENDING`]
//! holds that temporary directory (once made) and the local `ssh` running
//! at the moment. After a failure the main thread removes the directory; after
//! a signal, the signal thread kills the child, removes the directory and
//! exits with 128 + the signal number, and the main thread leaves the exit
//! to it.

use std::io;
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;

use super::command::Endpoint;
use crate::lock::lock;
use crate::progress::Log;
use crate::sys;

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

fn pending() -> MutexGuard<'static, Option<Pending>> {
    lock(&PENDING)
}

/// A run against `endpoint` starts: nothing to undo yet.
pub(super) fn begin(endpoint: &Endpoint) {
    *pending() = Some(Pending {
        endpoint: endpoint.clone(),
        dir: None,
        child: None,
    });
}

/// The run made `dir` on the remote.
pub(super) fn made_dir(dir: &str) {
    if let Some(p) = pending().as_mut() {
        p.dir = Some(dir.to_string());
    }
}

/// The run started child process `pid`.
pub(super) fn record_child(pid: u32) {
    if let Some(p) = pending().as_mut() {
        p.child = Some(pid);
    }
}

/// `try_wait` on `child`, forgetting its number once it is reaped. Both
/// happen under the [`PENDING`] lock, so the signal thread never signals a
/// process number that has been reused.
pub(super) fn try_reap(child: &mut Child) -> io::Result<Option<ExitStatus>> {
    let mut p = pending();
    let status = child.try_wait()?;
    if status.is_some()
        && let Some(p) = p.as_mut().filter(|p| p.child == Some(child.id()))
    {
        p.child = None;
    }
    Ok(status)
}

/// The run is over: stop tracking it and return the remote directory it
/// left, if any. Never returns if a signal came: the signal thread is
/// cleaning up and will end the process.
pub(super) fn end() -> Option<String> {
    let left = pending().take();
    if INTERRUPTED.load(Ordering::SeqCst) {
        loop {
            thread::park();
        }
    }
    left.and_then(|p| p.dir)
}

/// Take SIGINT/SIGTERM/SIGHUP in a thread of our own: kill the child, call
/// `remove` for the remote directory if one was made, then exit.
pub(super) fn watch_signals(log: &Log, name: &str, remove: fn(&Endpoint, &str, &Log)) {
    if let Err(e) = sys::block_termination_signals() {
        log.detail(format!(
            "signals: cannot block ({e}); Ctrl-C may leave a remote copy"
        ));
        return;
    }
    let log = log.clone();
    let name = name.to_string();
    let watcher = thread::Builder::new().spawn(move || {
        let Ok(sig) = sys::wait_termination_signal() else {
            return;
        };
        INTERRUPTED.store(true, Ordering::SeqCst);
        let taken = {
            let mut pending = pending();
            // Under the lock: the child cannot be reaped (and its number
            // reused) between reading the number and signalling it.
            if let Some(pid) = pending.as_ref().and_then(|p| p.child) {
                let _ = sys::kill(pid, libc::SIGTERM);
            }
            pending.take()
        };
        if let Some(p) = taken
            && let Some(dir) = p.dir
        {
            log.line(format!("interrupted: removing {dir} on {name}"));
            remove(&p.endpoint, &dir, &log);
        }
        log.line("interrupted");
        if let Some(hint) = crate::progress::resume_hint() {
            log.line(hint);
        }
        std::process::exit(128 + sig);
    });
    if watcher.is_err() {
        // Nothing would take them: the signals end the process as usual.
        let _ = sys::unblock_termination_signals();
    }
}
