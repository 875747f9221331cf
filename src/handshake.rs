//! The handshake of one connection, without I/O: two state machines, one
//! per end, that are fed the frames the peer sent and say what to send
//! back and what was decided. `net::Lane::handshake` moves their bytes;
//! everything that is decided lives here and is unit-tested below.
//!
//! ```text
//!  client                                   server
//!  (preambles: check_preamble, both ends)
//!                          Challenge  <---  Server::new
//!  Client: Challenge
//!    flags differ: refuse
//!    else --->  Hello, Proof
//!                                           Server: [Probe]*, Hello
//!                                             flags differ: refuse
//!                                           Server: Proof
//!                                             corrupted / wrong secret: refuse
//!                                             else done(Hello)  ---> Proof
//!  Client: Proof                              (frames tagged from here)
//!    corrupted / wrong secret: refuse
//!    else frames tagged from here
//!                                           admit(role, Hello): refuse, or
//!                                           place() a later lane: again,
//!                                           next, newcomer (takeover), busy
//!                          Welcome  <---    welcome(Hello, ...)
//!  Client: Welcome
//!    contradicts the Hello, or lane 0's Welcome: refuse
//!    else done(Welcome)
//! ```
//!
//! A refusal says what to tell the peer (an `Error` frame), if anything,
//! and the error for this end. The ends' random nonces come in from
//! outside, so every path runs here without randomness or sockets.

use std::time::Duration;

use crate::auth::{self, Cipher, Direction, Handshake, Secret};
use crate::compress;
use crate::config::Role;
use crate::error::{Error, Result};
use crate::proto::{
    self, AUTH_FAILED, FLAG_DRY, Frame, Hello, MAX_LANES, PREAMBLE, PREAMBLE_MAGIC,
    PROTOCOL_VERSION, Welcome,
};

/// After every lane of a session is lost, how long a new client waits
/// before it may take the server over (if the old client has not come
/// back by then).
pub const TAKEOVER_GRACE: Duration = Duration::from_secs(5);

/// Check the peer's preamble against ours: the same protocol version, or
/// an error naming both versions.
pub fn check_preamble(peer: &str, theirs: &[u8; PREAMBLE.len()]) -> Result<()> {
    if theirs == PREAMBLE {
        return Ok(());
    }
    if theirs.starts_with(PREAMBLE_MAGIC) {
        let version = String::from_utf8_lossy(&theirs[PREAMBLE_MAGIC.len() - 3..])
            .trim()
            .to_string();
        return Err(Error::protocol(
            peer,
            format!(
                "peer speaks protocol {version}, this bsync speaks {}: \
                 use the same bsync version on both ends",
                PROTOCOL_VERSION
            ),
        ));
    }
    Err(Error::protocol(peer, "not a bsync peer (bad preamble)"))
}

/// What one frame fed to a machine asks of the lane, in this order.
pub struct Step<D> {
    /// Frames to send now, encoded (untagged: the handshake's own).
    pub send: Vec<u8>,
    /// From now on, frames are tagged (sealed under a key) with these:
    /// (sending, receiving).
    pub protect: Option<(Cipher, Cipher)>,
    /// What the handshake agreed, once it has: it is over.
    pub done: Option<D>,
}

impl<D> Step<D> {
    fn send(frames: &[Frame<'_>]) -> Step<D> {
        let mut send = Vec::new();
        for f in frames {
            proto::encode(f, &mut send);
        }
        Step {
            send,
            protect: None,
            done: None,
        }
    }

    fn nothing() -> Step<D> {
        Step::send(&[])
    }
}

/// Why a handshake ends without a session: what to tell the peer, if
/// anything, and this end's error.
#[derive(Debug)]
pub struct Refused {
    /// The text of the `Error` frame to send before closing.
    pub tell: Option<String>,
    /// The error this end reports.
    pub error: Error,
}

impl Refused {
    fn quietly(error: Error) -> Refused {
        Refused { tell: None, error }
    }
}

/// The error for a frame that has no place here: the peer's own `Error`
/// frame, or a protocol violation.
pub fn unexpected(peer: &str, frame: &Frame<'_>) -> Error {
    match frame {
        Frame::Error(msg) => match msg.strip_prefix(AUTH_FAILED) {
            Some(why) => Error::Auth {
                peer: peer.to_string(),
                why: why.to_string(),
            },
            None => Error::Remote {
                peer: peer.to_string(),
                msg: msg.to_string(),
            },
        },
        other => Error::protocol(peer, format!("unexpected {} frame", other.name())),
    }
}

/// One end of a handshake, fed one frame at a time.
pub trait Machine {
    /// What the handshake agrees on.
    type Done;
    /// The frame awaited next, for messages ("the server's proof").
    fn waiting_for(&self) -> &'static str;
    /// Take the next frame from the peer.
    fn feed(&mut self, frame: Frame<'_>) -> std::result::Result<Step<Self::Done>, Refused>;
}

/// Refuse because the two ends hold different kinds of secret.
fn secret_mismatch(peer: &str, ours: u8, theirs: u8, peer_role: &str) -> Option<Refused> {
    let why = auth::mismatch(ours, theirs, peer_role)?;
    let our_role = if peer_role == "server" {
        "client"
    } else {
        "server"
    };
    let theirs_why = auth::mismatch(theirs, ours, our_role).unwrap_or_default();
    Some(Refused {
        tell: Some(format!("{AUTH_FAILED}{theirs_why}")),
        error: Error::Auth {
            peer: peer.to_string(),
            why,
        },
    })
}

/// The client's end: answers the `Challenge` with its `Hello` and proof,
/// checks the server's proof, and takes the `Welcome`.
pub struct Client {
    peer: String,
    secret: Option<Secret>,
    hello: Hello,
    /// Lane 0's `Welcome`, which a later or rejoining lane must get too.
    expect: Option<Welcome>,
    state: ClientState,
}

enum ClientState {
    Challenge,
    Proof(Handshake),
    Welcome,
    Done,
}

impl Client {
    /// A client saying `hello` (its nonce already fresh) to `peer`, with
    /// `secret`; `expect` is the session's `Welcome` for any lane after
    /// the first.
    pub fn new(
        peer: &str,
        secret: Option<&Secret>,
        hello: Hello,
        expect: Option<Welcome>,
    ) -> Client {
        Client {
            peer: peer.to_string(),
            secret: secret.cloned(),
            hello,
            expect,
            state: ClientState::Challenge,
        }
    }

    /// What in `w` contradicts this end's `Hello` or the session's first
    /// `Welcome`.
    fn check_welcome(&self, w: &Welcome) -> Result<()> {
        if self.expect.is_some_and(|first| first != *w) {
            return Err(Error::protocol(
                &self.peer,
                "the session changed: this lane's Welcome differs from the first lane's",
            ));
        }
        if let Some(why) = welcome_mismatch(&self.hello, w) {
            return Err(Error::protocol(
                &self.peer,
                format!("the server's Welcome does not match this end's Hello: {why}"),
            ));
        }
        if proto::block_size(u64::from(w.block_size)).is_none() {
            return Err(Error::protocol(
                &self.peer,
                format!("block size {} out of range", w.block_size),
            ));
        }
        Ok(())
    }
}

impl Machine for Client {
    type Done = Welcome;

    fn waiting_for(&self) -> &'static str {
        match self.state {
            ClientState::Challenge => "the server's challenge",
            ClientState::Proof(_) => "the server's proof",
            ClientState::Welcome | ClientState::Done => "the server's welcome",
        }
    }

    fn feed(&mut self, frame: Frame<'_>) -> std::result::Result<Step<Welcome>, Refused> {
        let peer = self.peer.as_str();
        match (&self.state, frame) {
            (ClientState::Challenge, Frame::Challenge { nonce, flags }) => {
                // Nothing is sent to a server that cannot prove what we hold.
                if let Some(r) = secret_mismatch(peer, self.hello.flags, flags, "server") {
                    return Err(r);
                }
                // Proven with or without a secret: the proofs also show that
                // the challenge and the hello arrived as they were sent.
                let hs = Handshake::new(self.secret.as_ref(), &nonce, flags, &self.hello);
                let (check, tag) = hs.proof(Direction::Up);
                self.state = ClientState::Proof(hs);
                Ok(Step::send(&[
                    Frame::Hello(self.hello),
                    Frame::Proof { check, tag },
                ]))
            }
            (ClientState::Proof(hs), Frame::Proof { check, tag }) => {
                match hs.verify(Direction::Down, &check, &tag) {
                    Ok(()) => {}
                    Err(auth::Refusal::Corrupted) => {
                        return Err(Refused::quietly(Error::protocol(
                            peer,
                            "the handshake was changed in transit (the server's proof \
                             covers other bytes than this end sent and received)",
                        )));
                    }
                    Err(auth::Refusal::WrongSecret) => {
                        return Err(Refused::quietly(Error::Auth {
                            peer: peer.to_string(),
                            why: "the server holds a different key or token".into(),
                        }));
                    }
                }
                let protect = (hs.cipher(Direction::Up), hs.cipher(Direction::Down));
                self.state = ClientState::Welcome;
                Ok(Step {
                    protect: Some(protect),
                    ..Step::nothing()
                })
            }
            (ClientState::Welcome, Frame::Welcome(w)) => {
                self.check_welcome(&w).map_err(Refused::quietly)?;
                self.state = ClientState::Done;
                Ok(Step {
                    done: Some(w),
                    ..Step::nothing()
                })
            }
            (_, other) => Err(Refused::quietly(unexpected(peer, &other))),
        }
    }
}

/// What in a `Welcome` contradicts the `Hello` it answers: the skip and
/// the lanes always, and in an upload the block size and the source size
/// too (the source's are authoritative).
fn welcome_mismatch(hello: &Hello, welcome: &Welcome) -> Option<String> {
    let upload = !hello.download;
    if welcome.skip != hello.skip {
        return Some(format!("skip {} instead of {}", welcome.skip, hello.skip));
    }
    if welcome.lanes != hello.lanes {
        return Some(format!(
            "{} lanes instead of {}",
            welcome.lanes, hello.lanes
        ));
    }
    if upload && welcome.block_size != hello.block_size {
        return Some(format!(
            "block size {} instead of {}",
            welcome.block_size, hello.block_size
        ));
    }
    if upload && welcome.source_size != hello.source_size {
        return Some(format!(
            "source size {} instead of {}",
            welcome.source_size, hello.source_size
        ));
    }
    None
}

/// The server's end of one connection: after its `Challenge`, lets the
/// client measure the link (`Probe`), takes the `Hello` and the client's
/// proof, and gives its own proof.
pub struct Server {
    peer: String,
    secret: Option<Secret>,
    nonce: [u8; proto::NONCE_LEN],
    probed: usize,
    state: ServerState,
}

enum ServerState {
    Hello,
    Proof(Hello, Handshake),
    Done,
}

impl Server {
    /// A server with `secret` challenging `peer` with `nonce` (fresh);
    /// also the `Challenge` to send first.
    pub fn new(
        peer: &str,
        secret: Option<&Secret>,
        nonce: [u8; proto::NONCE_LEN],
    ) -> (Server, Vec<u8>) {
        let mut challenge = Vec::new();
        let flags = Secret::flags(secret);
        proto::encode(&Frame::Challenge { nonce, flags }, &mut challenge);
        let server = Server {
            peer: peer.to_string(),
            secret: secret.cloned(),
            nonce,
            probed: 0,
            state: ServerState::Hello,
        };
        (server, challenge)
    }

    fn flags(&self) -> u8 {
        Secret::flags(self.secret.as_ref())
    }
}

impl Machine for Server {
    type Done = Hello;

    fn waiting_for(&self) -> &'static str {
        match self.state {
            ServerState::Hello => "the client's hello",
            ServerState::Proof(..) | ServerState::Done => "the client's proof",
        }
    }

    fn feed(&mut self, frame: Frame<'_>) -> std::result::Result<Step<Hello>, Refused> {
        let peer = self.peer.as_str();
        let protocol = |why: &str| Err(Refused::quietly(Error::protocol(peer, why)));
        match (&self.state, frame) {
            (_, Frame::Error(why)) => Err(Refused::quietly(unexpected(peer, &Frame::Error(why)))),
            // `-auto` may measure the link first: see `proto`, "Probe".
            (ServerState::Hello, Frame::Probe(bytes)) => {
                if self.probed + bytes.len() > proto::PROBE_LIMIT {
                    return protocol("too many Probe bytes");
                }
                self.probed += bytes.len();
                if bytes.is_empty() {
                    return Ok(Step::send(&[Frame::Probe(&[])]));
                }
                Ok(Step::nothing())
            }
            (ServerState::Hello, Frame::Hello(hello)) => {
                if let Some(r) = secret_mismatch(peer, self.flags(), hello.flags, "client") {
                    return Err(r);
                }
                // Proven with or without a secret: the proofs also show that
                // the challenge and the hello arrived as they were sent,
                // before anything of the session is touched.
                let hs = Handshake::new(self.secret.as_ref(), &self.nonce, self.flags(), &hello);
                self.state = ServerState::Proof(hello, hs);
                Ok(Step::nothing())
            }
            (ServerState::Hello, _) => protocol("expected a Hello frame"),
            (ServerState::Proof(hello, hs), Frame::Proof { check, tag }) => {
                match hs.verify(Direction::Up, &check, &tag) {
                    Ok(()) => {}
                    Err(auth::Refusal::Corrupted) => {
                        let why = "the handshake was changed in transit (the client's proof \
                                   covers other bytes than the server sent and received)";
                        return Err(Refused {
                            tell: Some(why.into()),
                            error: Error::protocol(peer, why),
                        });
                    }
                    Err(auth::Refusal::WrongSecret) => {
                        return Err(Refused {
                            tell: Some(format!(
                                "{AUTH_FAILED}the server holds a different key or token"
                            )),
                            error: Error::Auth {
                                peer: peer.to_string(),
                                why: "the client holds a different key or token".into(),
                            },
                        });
                    }
                }
                let (check, tag) = hs.proof(Direction::Down);
                let step = Step {
                    protect: Some((hs.cipher(Direction::Down), hs.cipher(Direction::Up))),
                    done: Some(*hello),
                    ..Step::send(&[Frame::Proof { check, tag }])
                };
                self.state = ServerState::Done;
                Ok(step)
            }
            (_, _) => protocol("expected a Proof frame"),
        }
    }
}

/// Why a `Hello` cannot open a session with a server in `role`.
pub fn admit(role: Role, h: &Hello) -> std::result::Result<(), String> {
    let upload = role == Role::Destination;
    if h.download && upload {
        return Err("this server is a destination (upload mode); drop -d on the client or add -d on the server".into());
    }
    if !h.download && !upload {
        return Err("this server is a source (download mode, -d); add -d on the client".into());
    }
    if h.lane != 0 {
        return Err(format!("lane {} of an unknown session", h.lane));
    }
    if h.lanes == 0 || h.lanes > MAX_LANES {
        return Err(format!(
            "{} lanes is out of range (1 to {MAX_LANES})",
            h.lanes
        ));
    }
    if proto::block_size(u64::from(h.block_size)).is_none() {
        return Err(format!("block size {} is out of range", h.block_size));
    }
    if compress::from_code(h.compression).is_none() {
        return Err(format!("unknown compression {}", h.compression));
    }
    Ok(())
}

/// Why a session on stdin/stdout (`--server`) cannot take `h`.
pub fn admit_stdio(h: &Hello) -> std::result::Result<(), &'static str> {
    if h.lanes != 1 {
        return Err("a session on stdin/stdout has one lane (-w 1)");
    }
    Ok(())
}

/// Whether `h` asks for a dry run: nothing written, nothing resized.
pub fn is_dry(h: &Hello) -> bool {
    h.flags & FLAG_DRY != 0
}

/// The server's answer to an admitted `Hello` under `salt`: a server that
/// is the source says its size and block size (`source`), otherwise the
/// client's are taken.
pub fn welcome(h: &Hello, source: Option<(u64, usize)>, salt: u128) -> Welcome {
    let (source_size, block_size) = match source {
        // At most MAX_BLOCK_SIZE: validated -b.
        Some((size, block_size)) => (size, u32::try_from(block_size).unwrap_or(u32::MAX)),
        None => (h.source_size, h.block_size),
    };
    Welcome {
        block_size,
        source_size,
        skip: h.skip,
        salt,
        lanes: h.lanes,
    }
}

/// Where a connection that arrives while a session runs belongs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// A lane of this session that has connected before: dialed again
    /// while the session opened, or rejoining after a lost connection.
    Again(usize),
    /// The session's next lane, while it opens.
    Next,
    /// Lane 0 of another session: a new client, which may take the
    /// server over once every lane of this session is lost.
    Newcomer,
    /// Anything else: the server is busy.
    Busy,
}

/// Where `h` belongs, for a server running `session` of `lanes` lanes of
/// which `joined` have connected.
pub fn place(session: u128, lanes: usize, joined: usize, h: &Hello) -> Place {
    let lane = usize::from(h.lane);
    if h.session == session {
        if lane < joined {
            return Place::Again(lane);
        }
        if lane == joined && joined < lanes {
            return Place::Next;
        }
        return Place::Busy;
    }
    if h.lane == 0 {
        return Place::Newcomer;
    }
    Place::Busy
}

/// What to do with a new client, when every lane of the running session
/// has been lost for `all_lost` (`None`: its client is there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Takeover {
    /// The running session's client is there: the newcomer is busy.
    Busy,
    /// Wait this long for the old client to come back.
    Wait(Duration),
    /// The old client has had its grace: the newcomer takes over.
    Now,
}

/// See [`Takeover`].
pub fn takeover(all_lost: Option<Duration>) -> Takeover {
    match all_lost {
        None => Takeover::Busy,
        Some(d) if d >= TAKEOVER_GRACE => Takeover::Now,
        Some(d) => Takeover::Wait(TAKEOVER_GRACE - d),
    }
}

#[cfg(test)]
mod tests;
