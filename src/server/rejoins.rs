//! The running session's connections, for the server: lanes that come
//! back after a lost connection go to the reader waiting for them; once
//! every lane is lost, a new client may take the server over after
//! [`TAKEOVER_GRACE`].

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{Arrival, TAKEOVER_GRACE};
use crate::error::{Error, Result};
use crate::handshake::{Place, Takeover, place, takeover};
use crate::lock::{lock, wait_timeout};
use crate::log::Log;
use crate::net::Lane;
use crate::progress::clock;
use crate::proto::{Frame, Welcome};
use crate::session;

/// Lanes of the running session: the connections that came back after a
/// lost lane, waiting for that lane's reader to pick them up, and how many
/// lanes are lost right now.
#[derive(Default)]
pub(super) struct Slots {
    fresh: HashMap<usize, Lane>,
    /// Lanes of the session.
    pub(super) lanes: usize,
    /// Lanes whose reader is waiting for its client to come back.
    lost: usize,
    /// Since when every lane has been lost.
    all_lost: Option<Instant>,
    /// A new client took over: every waiting reader gives up.
    superseded: bool,
}

/// The running session's connections: lanes that come back, and a new
/// client that may take over once every lane is lost.
#[derive(Default)]
pub(super) struct Rejoins {
    pub(super) slots: Mutex<Slots>,
    pub(super) arrived: Condvar,
    /// How long a lost lane may take to come back.
    pub(super) deadline: Duration,
    /// The client that took over, and who the abandoned session was from.
    pub(super) newcomer: Mutex<Option<(Arrival, String)>>,
    /// Where the server's lines go.
    pub(super) log: Log,
    /// The session runs on one stream that cannot come back (stdin and
    /// stdout): a lost lane fails the session at once.
    pub(super) one_stream: bool,
}

impl Rejoins {
    /// Route every later arrival: a lane of our session goes to its slot;
    /// a new client waits out [`TAKEOVER_GRACE`] once every lane of ours is
    /// lost and then takes over (this returns the arrivals, for the next
    /// session); anyone else is told the server is busy.
    pub(super) fn dispatch(
        &self,
        rx: Receiver<Arrival>,
        session: u128,
        welcome: &Welcome,
        owner: &str,
        log: &Log,
    ) -> Receiver<Arrival> {
        let mut pending: Option<Arrival> = None;
        let all_lost = || lock(&self.slots).all_lost.map(|since| since.elapsed());
        loop {
            let wait = match (&pending, takeover(all_lost())) {
                (Some(_), Takeover::Wait(left)) => left,
                (Some(_), _) => Duration::ZERO,
                (None, _) => Duration::from_secs(3600),
            };
            match rx.recv_timeout(wait) {
                Ok(a) => {
                    let lanes = lock(&self.slots).lanes;
                    match place(session, lanes, lanes, &a.hello) {
                        Place::Again(lane) => {
                            if a.lane.sender.send_frame(&Frame::Welcome(*welcome)).is_ok() {
                                log.info(format!("lane {lane}: {} rejoined", a.lane.reader.peer));
                                lock(&self.slots).fresh.insert(lane, a.lane);
                                self.arrived.notify_all();
                            }
                        }
                        Place::Newcomer => {
                            if let Some(old) = pending.replace(a) {
                                busy(old, log);
                            }
                        }
                        Place::Next | Place::Busy => busy(a, log),
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return rx,
            }
            let Some(a) = pending.take() else { continue };
            let mut slots = lock(&self.slots);
            match takeover(slots.all_lost.map(|since| since.elapsed())) {
                // Our client is (partly) there: the newcomer must wait.
                Takeover::Busy => {
                    drop(slots);
                    busy(a, log);
                }
                Takeover::Now => {
                    slots.superseded = true;
                    drop(slots);
                    *lock(&self.newcomer) = Some((a, owner.to_string()));
                    self.arrived.notify_all();
                    return rx;
                }
                Takeover::Wait(_) => pending = Some(a),
            }
        }
    }
}

/// Tell a connection this server is busy with another session.
fn busy(a: Arrival, log: &Log) {
    log.line(format!(
        "refused {}: busy with another session",
        a.lane.reader.peer
    ));
    a.lane.sender.fail("server is busy with another session");
}

impl session::Rejoin for Rejoins {
    fn rejoin(&self, lane: usize, stop: &dyn Fn() -> bool) -> Result<Lane> {
        if self.one_stream {
            return Err(Error::Failed(
                "a session on stdin/stdout cannot reconnect: the client's end has gone".into(),
            ));
        }
        let deadline = Instant::now() + self.deadline;
        let mut slots = lock(&self.slots);
        slots.lost += 1;
        if slots.lost == slots.lanes && slots.all_lost.is_none() {
            let now = std::time::SystemTime::now();
            slots.all_lost = Some(Instant::now());
            self.announce(now);
        }
        let outcome = loop {
            if let Some(fresh) = slots.fresh.remove(&lane) {
                break Ok(fresh);
            }
            let now = Instant::now();
            if slots.superseded {
                break Err(Error::Failed(
                    "a new client took the server over after every connection was lost".into(),
                ));
            }
            if stop() || now >= deadline {
                break Err(Error::Timeout {
                    peer: "the client".into(),
                    phase: format!("lane {lane} to reconnect"),
                });
            }
            slots = wait_timeout(&self.arrived, slots, deadline - now);
        };
        slots.lost -= 1;
        slots.all_lost = None;
        outcome
    }

    fn wake(&self) {
        // Under the lock: a waiter is either before its stop() check or
        // already waiting.
        drop(lock(&self.slots));
        self.arrived.notify_all();
    }
}

impl Rejoins {
    /// Say, once, that every connection is lost: what the server waits
    /// for, and until when.
    fn announce(&self, now: std::time::SystemTime) {
        let until = clock(now + self.deadline);
        let takeover = clock(now + TAKEOVER_GRACE);
        self.log.line(format!(
            "every connection of the session is lost: waiting until {until} for its client \
             to come back (a new client is admitted from {takeover})"
        ));
    }
}
