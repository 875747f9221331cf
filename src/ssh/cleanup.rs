//! What a stopped run must undo on the remote.
//!
//! The remote script removes a partial copy and a temporary directory (made
//! only where the remote has no usable cache) itself when bsync exits; this
//! is the second line of defence. While a run is in progress, [`PENDING`]
//! holds that temporary directory (once made). After a failure the main
//! thread removes the directory; after a signal, the one signal thread
//! ([`crate::child::watch_interrupts`]) stops the local ssh, removes the
//! directory through the hook [`begin`] gives it, and exits with 128 + the
//! signal number, and the main thread leaves the exit to it.

use std::sync::{Mutex, MutexGuard};
use std::thread;

use super::command::Endpoint;
use crate::child;
use crate::lock::lock;
use crate::log::Log;

/// What cleanup must undo if the run stops: the directory made on the
/// remote.
struct Pending {
    endpoint: Endpoint,
    dir: Option<String>,
}

static PENDING: Mutex<Option<Pending>> = Mutex::new(None);

fn pending() -> MutexGuard<'static, Option<Pending>> {
    lock(&PENDING)
}

/// A run against `endpoint` (`name` as typed) starts: nothing to undo yet.
/// On an interrupt, `remove` removes the remote directory, if one was made.
pub(super) fn begin(endpoint: &Endpoint, name: &str, remove: fn(&Endpoint, &str, &Log)) {
    *pending() = Some(Pending {
        endpoint: endpoint.clone(),
        dir: None,
    });
    let name = name.to_string();
    child::on_interrupt(Some(Box::new(move |log: &Log| {
        let taken = pending().take();
        if let Some(p) = taken
            && let Some(dir) = p.dir
        {
            log.line(format!("interrupted: removing {dir} on {name}"));
            remove(&p.endpoint, &dir, log);
        }
    })));
}

/// The run made `dir` on the remote.
pub(super) fn made_dir(dir: &str) {
    if let Some(p) = pending().as_mut() {
        p.dir = Some(dir.to_string());
    }
}

/// The run is over: stop tracking it and return the remote directory it
/// left, if any. Never returns if a signal came: the signal thread is
/// cleaning up and will end the process.
pub(super) fn end() -> Option<String> {
    let left = pending().take();
    if child::interrupted() {
        loop {
            thread::park();
        }
    }
    child::on_interrupt(None);
    left.and_then(|p| p.dir)
}
