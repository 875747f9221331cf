//! The server (no `-r`/`-t`): serves exactly one transfer session.
//!
//! An accept thread hands every connection to a short-lived handshake
//! thread, so a silent port scanner cannot stall anyone. Connections that
//! fail the preamble or send a bad `Hello` are logged in one line and
//! dropped: they never end the server and never touch the destination. A
//! server with a key or token (see [`crate::auth`]) drops, the same way,
//! every connection that cannot prove it holds the same one. The first good
//! `Hello` (lane 0) opens the session; the destination is opened only then
//! (an upload's destination is checked, without opening it, before the
//! server listens). The server exits when that session ends.
//!
//! Lost lanes come back through `Rejoins`. When every lane of the session
//! is lost the server says until when it waits; a new client (another
//! session) that arrives then is held for [`TAKEOVER_GRACE`] and, if the
//! old client has not come back, takes the server over: the old session
//! fails, and `run` serves the new one with the same arrivals channel.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::Duration;

use crate::auth::Secret;
use crate::compress;
use crate::config::{Config, Role, Serve, Stdio};
use crate::disk::{self, Disk};
use crate::error::{Error, Result};
use crate::handshake::{self, Place};
use crate::lock::lock;
use crate::log::Log;
use crate::net::Stream;
use crate::net::{self, Lane};
use crate::progress::human_bytes;
use crate::proto::{self, Frame, Hello};
use crate::session::{self, End, Own, Params};
use crate::stdio::{OpenRequest, PipeStream};
use crate::sys;

pub use crate::handshake::TAKEOVER_GRACE;

mod rejoins;

use rejoins::Rejoins;

/// What a server serves, however it listens (TCP or stdin/stdout).
struct Served<'a> {
    /// What this end is.
    role: Role,
    /// This end's file or device.
    path: &'a Path,
    /// The key or token every client must prove it holds.
    secret: Option<&'a Secret>,
    /// The source, opened up front (a download), or `None` (an upload: the
    /// destination is opened for the session).
    source: Option<&'a Disk>,
    /// Whether to show progress.
    progress: bool,
    /// The session runs on one stream that cannot come back (stdin and
    /// stdout): its end fails the session at once, there is no lane to
    /// wait for.
    one_stream: bool,
}

/// A connection that passed the preamble and sent a `Hello`.
struct Arrival {
    hello: Hello,
    lane: Lane,
}

/// Serve one session as `s` says; `config` gives the transfer settings,
/// the environment and the log.
pub fn run(s: &Serve, config: &Config, log: &Log) -> Result<()> {
    let upload = s.role == Role::Destination;
    // The source of a download is opened up front so a typo fails at once;
    // an upload's destination is opened only for a real client.
    let source = if upload {
        // Not opened yet, but checked: a typo or a read-only file fails now,
        // not once a client has connected. Nothing is created or changed.
        disk::check_destination(&s.path, &config.env, log)?;
        None
    } else {
        Some(
            Disk::open_source(&s.path, &config.env, log)?
                .rescued(config.rescue.as_deref(), &s.path)?,
        )
    };
    let (bind, port) = (s.bind, s.port);
    let addr = SocketAddr::new(bind, port);
    let listener =
        TcpListener::bind(addr).map_err(|e| Error::io(format!("server {addr}"), "listen", e))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io(format!("server {addr}"), "listen", e))?;
    if port == 0 {
        // The first line on stdout, for scripts and the SSH launcher.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", local.port());
        let _ = out.flush();
    }
    log.info(format!(
        "listening on {local}: {} {}",
        if upload { "destination" } else { "source" },
        s.path.display()
    ));
    let (tx, rx) = mpsc::channel();
    let accept_log = log.clone();
    let secret = s.secret.clone().map(Arc::new);
    let deadline = config.env.io_timeout;
    thread::Builder::new()
        .name("accept".into())
        .spawn(move || accept(&listener, &tx, secret.as_deref(), deadline, &accept_log))
        .map_err(|e| Error::io("server", "start the accept thread", e))?;
    let progress = !(log.is_quiet() || config.log.no_server_progress);
    let served = Served {
        role: s.role,
        path: &s.path,
        secret: s.secret.as_ref(),
        source: source.as_ref(),
        progress,
        one_stream: false,
    };
    let mut rx = rx;
    let mut first = None;
    loop {
        let (result, next) = serve(&served, config, rx, first, log);
        let Some((back, arrival, abandoned)) = next else {
            return result;
        };
        log.line(format!(
            "the session from {abandoned} was abandoned (every connection lost); \
             serving the new {}",
            arrival.lane.reader.peer
        ));
        (rx, first) = (back, Some(arrival));
    }
}

/// `--server`: one session, one lane, on stdin and stdout. Without `-f`
/// the client names the device first ([`OpenRequest`]). Logs go to
/// stderr; there is no progress (a remote shell would mix it into the
/// client's terminal).
pub fn run_stdio(s: &Stdio, config: &Config, log: &Log) -> Result<()> {
    let peer = "client on stdin".to_string();
    let mut stream =
        PipeStream::stdio().map_err(|e| Error::io("server", "take stdin/stdout", e))?;
    stream
        .set_deadline(config.env.io_timeout)
        .map_err(|e| Error::io(&peer, "set deadlines", e))?;
    let mut config = config.clone();
    let (role, path) = match &s.path {
        Some(path) => (
            locked_role(s, path, &mut stream, &peer, &mut config)?,
            path.clone(),
        ),
        None => {
            let req = OpenRequest::read(&mut stream, &peer)?;
            if proto::block_size(req.block_size as u64).is_none() {
                return Err(Error::protocol(&peer, "block size out of range"));
            }
            config.transfer.block_size = req.block_size;
            (req.role, req.path)
        }
    };
    let source = if role == Role::Source {
        Some(Disk::open_source(&path, &config.env, log)?)
    } else {
        None
    };
    let served = Served {
        role,
        path: &path,
        secret: s.secret.as_ref(),
        source: source.as_ref(),
        progress: false,
        one_stream: true,
    };
    let arrival = handshake(stream, &peer, s.secret.as_ref(), config.env.io_timeout)?;
    if let Err(why) = handshake::admit_stdio(&arrival.hello) {
        arrival.lane.sender.fail(why);
        return Err(Error::protocol(&peer, why));
    }
    // No other connection can arrive: the channel is closed at once.
    let (tx, rx) = mpsc::channel();
    drop(tx);
    let (result, _) = serve(&served, &config, rx, Some(arrival), log);
    result
}

/// `--server -f PATH`, locked to PATH: a client that names the device
/// first (bdsync's client form, `REMSHCMD LOCDEV REMDEV`) is served when it
/// names PATH, as the role it asks for, except that a server started as a
/// source (`-d`) is never made a destination; any other device is refused,
/// and the client is told why. A client that starts with the preamble
/// (`-t` inside ssh) is served as the command line says.
fn locked_role(
    s: &Stdio,
    path: &std::path::Path,
    stream: &mut PipeStream,
    peer: &str,
    config: &mut Config,
) -> Result<Role> {
    let Some(req) = OpenRequest::read_if_sent(stream, peer)? else {
        return Ok(s.role);
    };
    let refusal = if !req.names(path) {
        Some(format!(
            "this server is locked to {} (--server -f); the client asked for {}",
            path.display(),
            req.path.display()
        ))
    } else if req.role == Role::Destination && s.role == Role::Source {
        Some(format!(
            "this server serves {} only as a source (--server -d -f)",
            path.display()
        ))
    } else if proto::block_size(req.block_size as u64).is_none() {
        Some("block size out of range".to_string())
    } else {
        None
    };
    if let Some(why) = refusal {
        // Past the preamble, the client reads the reason as its error.
        if let Ok(lane) = Lane::open(stream.clone(), peer.to_string(), config.env.io_timeout) {
            lane.sender.fail(&format!("server: {why}"));
        }
        return Err(Error::Failed(format!("{peer}: {why}")));
    }
    config.transfer.block_size = req.block_size;
    Ok(req.role)
}

/// What `serve` hands back when a new client took the server over: the
/// arrivals, the new client's first lane, and who the old session was from.
type Takeover = (Receiver<Arrival>, Arrival, String);

fn accept(
    listener: &TcpListener,
    tx: &Sender<Arrival>,
    secret: Option<&Secret>,
    deadline: Duration,
    log: &Log,
) {
    let mut pause = ACCEPT_PAUSE_MIN;
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(stream) => stream,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                // Out of file descriptors: the pending connection stays in
                // the backlog and accept would fail again at once. Back off
                // instead of spinning, and say so the first time.
                if pause == ACCEPT_PAUSE_MIN {
                    log.line(format!(
                        "accept: {}; pausing new connections until descriptors are free",
                        crate::error::os_words(&e)
                    ));
                }
                thread::sleep(pause);
                pause = (pause * 2).min(ACCEPT_PAUSE_MAX);
                continue;
            }
            Err(_) => continue,
        };
        pause = ACCEPT_PAUSE_MIN;
        let tx = tx.clone();
        let log = log.clone();
        let secret = secret.cloned();
        let log2 = log.clone();
        let spawned = thread::Builder::new()
            .name("handshake".into())
            .spawn(move || {
                let peer = stream
                    .peer_addr()
                    .map_or_else(|_| "client ?".to_string(), |a| format!("client {a}"));
                net::configure_tcp(&stream);
                match handshake(stream, &peer, secret.as_ref(), deadline) {
                    Ok(arrival) => {
                        let _ = tx.send(arrival);
                    }
                    Err(e) => log.line(format!("dropped {peer}: {e}")),
                }
            });
        if let Err(e) = spawned {
            // The closure, and the connection with it, is dropped.
            log2.line(format!(
                "dropped a connection: cannot start a thread for it: {}",
                crate::error::os_words(&e)
            ));
        }
    }
}

/// Pauses of the accept loop when out of file descriptors.
const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(50);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);

/// Challenge a new connection, read its hello and check the client's
/// proof, and give our own (see [`handshake::Server`]). Nothing of the
/// session is touched before that.
fn handshake<S: Stream>(
    stream: S,
    peer: &str,
    secret: Option<&Secret>,
    deadline: Duration,
) -> Result<Arrival> {
    let mut nonce = [0u8; proto::NONCE_LEN];
    sys::getrandom(&mut nonce).map_err(|e| Error::io("server", "get random bytes", e))?;
    let (mut server, challenge) = handshake::Server::new(peer, secret, nonce);
    // The challenge goes with the preamble: the client waits for neither.
    let mut lane = Lane::open_sending(stream, peer.to_string(), deadline, &challenge)?;
    let hello = lane.handshake(&mut server, None)?;
    Ok(Arrival { hello, lane })
}

/// Serve one session: the one `first` opens, or the first good arrival.
/// Returns its outcome, and a [`Takeover`] when a new client replaced a
/// session whose client was gone.
fn serve(
    s: &Served,
    config: &Config,
    rx: Receiver<Arrival>,
    first: Option<Arrival>,
    log: &Log,
) -> (Result<()>, Option<Takeover>) {
    let rejoins = Arc::new(Rejoins {
        deadline: config.env.io_timeout,
        log: log.clone(),
        one_stream: s.one_stream,
        ..Rejoins::default()
    });
    let mut handoff = None;
    let result = serve_session(s, config, rx, first, log, &rejoins, &mut handoff);
    // Only a takeover ends the dispatcher; otherwise it is left waiting
    // and ends with the process.
    let Some((arrival, abandoned)) = lock(&rejoins.newcomer).take() else {
        return (result, None);
    };
    match handoff.map(thread::JoinHandle::join) {
        Some(Ok(rx)) => (result, Some((rx, arrival, abandoned))),
        _ => (result, None),
    }
}

fn serve_session(
    s: &Served,
    config: &Config,
    rx: Receiver<Arrival>,
    first: Option<Arrival>,
    log: &Log,
    rejoins: &Arc<Rejoins>,
    handoff: &mut Option<thread::JoinHandle<Receiver<Arrival>>>,
) -> Result<()> {
    let env = &config.env;
    let t = &config.transfer;
    let mut first = first;
    let (hello, first) = loop {
        let a = match first.take() {
            Some(a) => a,
            None => rx
                .recv()
                .map_err(|_| Error::Failed("server: the listener stopped".into()))?,
        };
        match handshake::admit(s.role, &a.hello) {
            Err(why) => {
                log.line(format!("refused {}: {why}", a.lane.reader.peer));
                a.lane.sender.fail(&why);
            }
            Ok(()) => break (a.hello, a.lane),
        }
    };
    let peer = first.reader.peer.clone();
    let held;
    let disk = match s.source {
        Some(src) => src,
        None => {
            // A dry run reads and digests only, whatever the sizes.
            let opened = if handshake::is_dry(&hello) {
                Disk::open_dry(s.path, env, log)
            } else {
                Disk::open_destination(s.path, env, log).and_then(|mut d| {
                    d.fit_to(hello.source_size)?;
                    Ok(d)
                })
            };
            held = opened.inspect_err(|e| first.sender.fail(&format!("server: {e}")))?;
            &held
        }
    };
    let mut salt = [0u8; 16];
    sys::getrandom(&mut salt).map_err(|e| Error::io("server", "get random bytes", e))?;
    let served = s.source.map(|src| (src.size(), t.block_size));
    let welcome = handshake::welcome(&hello, served, u128::from_le_bytes(salt));
    let lanes_n = usize::from(hello.lanes);
    let mut lanes = vec![first];
    lanes[0].sender.send_frame(&Frame::Welcome(welcome))?;
    while lanes.len() < lanes_n {
        let a = rx
            .recv_timeout(env.io_timeout)
            .map_err(|_| Error::Timeout {
                peer: peer.clone(),
                phase: format!("lane {} of {lanes_n}", lanes.len()),
            })?;
        match handshake::place(hello.session, lanes_n, lanes.len(), &a.hello) {
            Place::Again(lane) => {
                // A lane of this session dialed again: its first connection
                // was lost during the handshake, and the client retried it.
                log.info(format!("lane {lane}: {} dialed again", a.lane.reader.peer));
                a.lane.sender.send_frame(&Frame::Welcome(welcome))?;
                lanes[lane] = a.lane;
            }
            Place::Next => {
                a.lane.sender.send_frame(&Frame::Welcome(welcome))?;
                lanes.push(a.lane);
            }
            Place::Newcomer | Place::Busy => {
                log.line(format!(
                    "refused {}: busy with another session",
                    a.lane.reader.peer
                ));
                a.lane.sender.fail("server is busy with another session");
            }
        }
    }
    let params = Params::agreed(
        &welcome,
        Own {
            compression: compress::from_code(hello.compression).flatten(),
            workers: lanes_n.max(t.workers),
            prefetch: t.prefetch.max(lanes_n * 4),
            deadline: env.io_timeout,
            encrypted: s.secret.is_some_and(Secret::encrypts),
            bwlimit: t.bwlimit,
        },
    );
    let geo = params.geo;
    let max = proto::max_payload(geo.block_size);
    for lane in &mut lanes {
        lane.reader.set_max(max);
        net::tell_on_interrupt(&lane.sender);
    }
    log.info(format!(
        "session from {peer}: {} in blocks of {}, {lanes_n} {}",
        human_bytes(geo.size),
        human_bytes(geo.block_size as u64),
        crate::progress::plural(lanes_n as u64, "lane")
    ));
    lock(&rejoins.slots).lanes = lanes_n;
    {
        let rejoins = Arc::clone(rejoins);
        let log = log.clone();
        let session = hello.session;
        let peer = peer.clone();
        *handoff = Some(
            thread::Builder::new()
                .name("rejoins".into())
                .spawn(move || rejoins.dispatch(rx, session, &welcome, &peer, &log))
                .map_err(|e| Error::io("server", "start the rejoin thread", e))?,
        );
    }
    session::run(End {
        role: s.role,
        params: &params,
        disk,
        lanes,
        rejoin: &**rejoins,
        log,
        progress: s.progress,
        dry: None,
        counters: None,
        to: None,
    })
    .map(drop)
}
