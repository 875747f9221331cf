//! Ctrl-C, SIGTERM or SIGHUP while a patch is applied. The one signal
//! thread (`child::watch_interrupts`) runs the hook set here, then says
//! `interrupted` and ends the process with 128 + the signal.
//!
//! Before the first write the hook only says that the target is untouched.
//! Once the target may change it asks the applying thread to stop and
//! waits (at most [`GRACE`]) until that thread is between two records: the
//! ranges written are whole, the undo patch is finished and on disk, and
//! the line it hands back says what was changed and how to put it back.
//! Should the apply not get there in time (a write that hangs, a pipe that
//! brings nothing), the hook says the same with what it knows: every
//! record of the undo patch is on disk before its write, and an undo patch
//! cut short applies up to its last whole record.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::lock::lock;
use crate::log::Log;

/// How long the hook waits for the apply to reach the end of a record.
pub const GRACE: Duration = Duration::from_secs(10);

/// The applying thread's end of the hook.
pub(super) struct Stop(Arc<Shared>);

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    said: Condvar,
}

#[derive(Default)]
struct State {
    phase: Phase,
    /// A signal came while writing: stop at the end of this record.
    asked: bool,
    /// What the applying thread says once stopped.
    line: Option<String>,
}

#[derive(Default)]
enum Phase {
    /// Nothing written yet.
    #[default]
    Checking,
    /// The target may change; what to say if the apply does not stop in
    /// time.
    Writing(String),
    /// Every record is written: what to say at once.
    Written(String),
}

impl Stop {
    /// Take the signals for an apply (`what`, in the line said when
    /// nothing was written yet).
    pub(super) fn watch(what: String) -> Stop {
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        crate::child::on_interrupt(Some(Box::new(move |log: &Log| {
            let mut st = lock(&s.state);
            let late = match &st.phase {
                Phase::Checking => {
                    return log.line(format!(
                        "{what}: stopped before anything was written; the target is untouched"
                    ));
                }
                Phase::Written(line) => return log.line(line),
                Phase::Writing(late) => late.clone(),
            };
            st.asked = true;
            let deadline = Instant::now() + GRACE;
            while st.line.is_none() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                st = s
                    .said
                    .wait_timeout(st, left)
                    .map_or_else(|e| e.into_inner().0, |(g, _)| g);
            }
            log.line(st.line.take().unwrap_or(late));
        })));
        Stop(shared)
    }

    /// From now on the target may change; `late` is what the hook says
    /// if the apply does not stop within [`GRACE`].
    pub(super) fn writing(&self, late: String) {
        lock(&self.0.state).phase = Phase::Writing(late);
    }

    /// Every record is written: a signal now says `line` at once.
    pub(super) fn written(&self, line: String) {
        lock(&self.0.state).phase = Phase::Written(line);
    }

    /// Whether a signal asked the apply to stop.
    pub(super) fn asked(&self) -> bool {
        lock(&self.0.state).asked
    }

    /// Stopped between two records: hand `line` to the hook, which says
    /// it and ends the process. Never returns.
    pub(super) fn now(&self, line: String) -> ! {
        lock(&self.0.state).line = Some(line);
        self.0.said.notify_all();
        loop {
            std::thread::park();
        }
    }
}

impl Drop for Stop {
    fn drop(&mut self) {
        crate::child::on_interrupt(None);
    }
}
