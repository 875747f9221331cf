//! The client (`-r HOST:PORT`, and `-t` once the remote end runs): opens
//! `-w` lanes to a server and runs the source role (upload) or the
//! destination role (download, `-d`) over them.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::auth::Secret;
use crate::block::Geometry;
use crate::compress;
use crate::config::{Connect, DryRun, Env, Role, Transfer};
use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::handshake;
use crate::log::Log;
use crate::net::{self, Lane, Stream};
use crate::patch;
use crate::proto::{self, FLAG_DRY, Frame, Hello, Welcome};
use crate::session::{self, End, NoRejoin, Own, Params};
use crate::sys;

/// Connect over TCP and run a client session as `c` says, moving data as
/// `t` says (or as `-auto` chooses, when `c.auto`); with `c.dry` a dry run
/// that writes nothing to the server's destination (`--compare`,
/// `--write-patch`), whose patch names `target`.
pub fn connect_tcp(c: &Connect, t: &Transfer, env: &Env, log: &Log, target: &[u8]) -> Result<()> {
    connect_tcp_within(c, t, env, log, target, None)
}

/// What the first lane's failed connect says when it had a deadline of its
/// own ([`connect_tcp_within`]): nothing of the session has started.
pub const FIRST_CONNECT: &str = "connect (first lane, short deadline)";

/// [`connect_tcp`], the first lane's TCP connect limited to `first_connect`;
/// failing that, the error's operation is [`FIRST_CONNECT`].
pub fn connect_tcp_within(
    c: &Connect,
    t: &Transfer,
    env: &Env,
    log: &Log,
    target: &[u8],
    first_connect: Option<Duration>,
) -> Result<()> {
    let dry = c.dry.as_ref();
    let (host, port) = (c.host.as_str(), c.port);
    let upload = c.role == Role::Source;
    let source = if upload {
        Some(Disk::open_source(&c.path, env, log)?.rescued(c.rescue.as_deref(), &c.path)?)
    } else {
        None
    };
    if let Some(disk) = &source {
        let geo = Geometry {
            size: disk.size(),
            block_size: t.block_size,
        };
        session::check_skip(t.skip, geo)?;
    }
    let secret = c.secret.as_ref();
    let peer = if host.contains(':') {
        format!("server [{host}]:{port}")
    } else {
        format!("server {host}:{port}")
    };
    let dial = Dial {
        host,
        port,
        peer: &peer,
        secret,
        deadline: env.io_timeout,
    };
    // -auto measures on the first connection, before its Hello says the
    // block size and the lanes.
    let mut opened = None;
    let mut tuned = *t;
    if let (true, Some(disk)) = (c.auto, source.as_ref()) {
        let started = std::time::Instant::now();
        let mut o = dial.open()?;
        let choice = crate::auto::tune(&mut o.lane, &peer, o.connected, disk, t)?;
        log.info(format!(
            "{} ({:.0} ms)",
            choice.why,
            started.elapsed().as_secs_f64() * 1e3
        ));
        tuned = choice.transfer;
        opened = Some(o);
    }
    let t = &tuned;
    let lanes_n = u16::try_from(t.workers).unwrap_or(u16::MAX);
    let source_size = source.as_ref().map_or(0, Disk::size);
    let hello0 = hello(c.role, t, source_size, lanes_n, secret, dry.is_some())?;
    let hello = |lane: u16| {
        let mut h = hello0;
        h.lane = lane;
        h
    };

    let (first, welcome) = match (opened, first_connect) {
        (Some(o), _) => dial.greet(o, &hello(0), None)?,
        (None, Some(limit)) => {
            let stream = dial.tcp_within(limit).map_err(|e| match e {
                Error::Io { what, source, .. } => Error::Io {
                    what,
                    op: FIRST_CONNECT.into(),
                    source,
                },
                other => other,
            })?;
            net::configure_tcp(&stream);
            let opened = dial.open_on(stream, Duration::ZERO)?;
            dial.greet(opened, &hello(0), None)?
        }
        (None, None) => connect_retrying(&dial, &hello(0), None, log)?,
    };
    let params = Params::agreed(&welcome, own(t, env, secret));
    let (geo, block_size) = (params.geo, params.geo.block_size);
    let max = proto::max_payload(block_size);
    let mut lanes = vec![first];
    for lane in 1..lanes_n {
        let (l, _) = connect_retrying(&dial, &hello(lane), Some(welcome), log)?;
        lanes.push(l);
    }
    for lane in &mut lanes {
        lane.reader.set_max(max);
    }
    refuse_skip(t.skip, geo, &lanes)?;
    log.info(format!(
        "connected to {peer}: {} {} in blocks of {}, {} {}",
        activity(dry.is_some(), upload),
        crate::progress::human_bytes(geo.size),
        crate::progress::human_bytes(block_size as u64),
        lanes.len(),
        crate::progress::plural(lanes.len() as u64, "lane")
    ));
    let redial = Redial {
        dial: &dial,
        hello: hello0,
        welcome,
        max,
        log,
    };
    let disk = match source {
        Some(source) => source,
        None => {
            let mut d = Disk::open_destination(&c.path, env, log)?;
            d.fit_to(geo.size)?;
            d
        }
    };
    let end = End {
        role: c.role,
        params: &params,
        disk: &disk,
        lanes,
        rejoin: &redial,
        log,
        progress: !log.is_quiet(),
        dry: None,
        counters: None,
        // Over -t, the path the user gave.
        to: (upload && !target.is_empty()).then(|| {
            let path = String::from_utf8_lossy(target);
            match host.contains(':') {
                true => format!("[{host}]:{path}"),
                false => format!("{host}:{path}"),
            }
        }),
    };
    match dry {
        Some(dry) => patch::make::run_source(dry, target, end),
        None => session::run(end).map(drop),
    }
}

/// What the session does, for the "connected" line: a dry run writes
/// nothing, so it compares.
fn activity(dry: bool, upload: bool) -> &'static str {
    match (dry, upload) {
        (true, _) => "comparing",
        (false, true) => "uploading",
        (false, false) => "downloading",
    }
}

/// A download learns the source's size only from the `Welcome`: `-s` at or
/// past its end is refused there, before the destination is opened, and
/// the server is told why so it ends instead of waiting for a rejoin.
fn refuse_skip(skip: u64, geo: Geometry, lanes: &[Lane]) -> Result<()> {
    session::check_skip(skip, geo).inspect_err(|e| {
        for lane in lanes {
            lane.sender.fail(&format!("the client refused: {e}"));
        }
    })
}

/// A one-lane session over the pipes of a remote shell running
/// `bsync --server`, for [`connect_pipe`].
pub struct Pipe<'a> {
    /// Who is on the other end, for messages.
    pub peer: &'a str,
    /// This end's role.
    pub role: Role,
    /// A dry run, as in [`connect_tcp`], and the target its patch names.
    pub dry: Option<(&'a DryRun, &'a [u8])>,
    /// Told the session's parameters before it runs.
    pub on_params: Option<&'a dyn Fn(&Params)>,
    /// A source's destination as its user named it, for the summary
    /// (`None`: `peer`).
    pub to: Option<&'a str>,
    /// The pipes are ssh's (`-t` inside ssh), whose cipher encrypts the
    /// session: `--json` says so.
    pub in_ssh: bool,
}

/// Run `pipe.role` on `disk` (a source, or a dry destination) in a
/// one-lane session over `stream`, moving data as `t` says. Returns the
/// verification digest.
pub fn connect_pipe<S: Stream>(
    stream: S,
    pipe: &Pipe<'_>,
    disk: &mut Disk,
    t: &Transfer,
    env: &Env,
    log: &Log,
) -> Result<u128> {
    let Pipe {
        peer,
        role,
        dry,
        on_params,
        to,
        in_ssh,
    } = *pipe;
    let upload = role == Role::Source;
    let source_size = if upload { disk.size() } else { 0 };
    let hello = hello(role, t, source_size, 1, None, dry.is_some())?;
    let (mut lane, welcome) = handshake(stream, peer, &hello, None, env.io_timeout)?;
    // A remote shell's pipes: whatever protects them (ssh) seals.
    let params = Params::agreed(&welcome, own(t, env, None));
    let geo = params.geo;
    lane.reader.set_max(proto::max_payload(geo.block_size));
    if let Some(f) = on_params {
        f(&params);
    }
    if !upload {
        disk.fit_to(geo.size)?;
    }
    let disk = &*disk;
    log.info(format!(
        "connected to {peer}: {} {} in blocks of {}",
        activity(dry.is_some(), upload),
        crate::progress::human_bytes(geo.size),
        crate::progress::human_bytes(geo.block_size as u64),
    ));
    let stats = std::sync::Arc::new(crate::progress::Stats::default());
    if in_ssh {
        let _ = stats.encryption.set(crate::progress::Encryption::Ssh);
    }
    let end = End {
        role,
        params: &params,
        disk,
        lanes: vec![lane],
        rejoin: &NoRejoin,
        log,
        progress: !log.is_quiet(),
        dry: None,
        counters: Some(&stats),
        to: to.map(str::to_string),
    };
    match dry {
        Some((dry, target)) => patch::make::run_source(dry, target, end).map(|()| 0),
        None => session::run(end),
    }
}

/// The `Hello` of lane 0 of a new session in `role`, moving data as `t`
/// says: the one place a `Hello` is made (the nonce is filled in afresh
/// for every connection).
fn hello(
    role: Role,
    t: &Transfer,
    source_size: u64,
    lanes: u16,
    secret: Option<&Secret>,
    dry: bool,
) -> Result<Hello> {
    let mut id = [0u8; 16];
    sys::getrandom(&mut id).map_err(|e| Error::io("client", "get random bytes", e))?;
    // Validation caps -b at MAX_BLOCK_SIZE, 1 GiB.
    let block_size = u32::try_from(t.block_size)
        .map_err(|_| Error::usage(format!("-b: {} is too large", t.block_size)))?;
    Ok(Hello {
        session: u128::from_le_bytes(id),
        lane: 0,
        lanes,
        download: role == Role::Destination,
        block_size,
        skip: t.skip,
        source_size,
        compression: compress::code(t.compression),
        flags: Secret::flags(secret) | if dry { FLAG_DRY } else { 0 },
        nonce: [0; proto::NONCE_LEN],
    })
}

/// What the client brings to a session's parameters.
fn own(t: &Transfer, env: &Env, secret: Option<&Secret>) -> Own {
    Own {
        compression: t.compression,
        workers: t.workers,
        prefetch: t.prefetch,
        deadline: env.io_timeout,
        encrypted: secret.is_some_and(Secret::encrypts),
        bwlimit: t.bwlimit,
    }
}

/// Open a lane for the first time, retrying a connection lost during the
/// handshake as a rejoined lane is retried; a refused or unreachable server
/// is not retried (it is not there, and saying so at once is kinder).
fn connect_retrying(
    dial: &Dial<'_>,
    hello: &Hello,
    expect: Option<Welcome>,
    log: &Log,
) -> Result<(Lane, Welcome)> {
    let mut attempt = 1;
    loop {
        // A server still holding a lost session admits a new client only
        // after its grace: a wait the user hears about.
        let note = crate::progress::WaitNote::start(
            log,
            format!(
                "{} to admit this session (a server still holding a lost session \
                 admits a new client after {} s)",
                dial.peer,
                crate::server::TAKEOVER_GRACE.as_secs()
            ),
            dial.deadline,
        );
        let connected = dial.connect(hello, expect);
        drop(note);
        match connected {
            Ok(ok) => return Ok(ok),
            Err(e)
                if net::is_connection_loss(&e) && !unreachable(&e) && attempt < REDIAL_ATTEMPTS =>
            {
                log.info(format!(
                    "{e}; connecting again ({}/{REDIAL_ATTEMPTS})",
                    attempt + 1
                ));
                std::thread::sleep(REDIAL_PAUSE);
            }
            Err(e) => return Err(e),
        }
        attempt += 1;
    }
}

/// Whether `e` says the server could not be reached at all (resolving or
/// connecting failed), rather than that a connection was lost. A
/// connection reset or closed as it was made reached the server: the
/// server sends its preamble and challenge at once, so the connection may
/// be lost before connecting returns.
fn unreachable(e: &Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    matches!(e, Error::Io { op, source, .. }
        if (op == "connect" || op == "resolve")
            && !matches!(source.kind(), BrokenPipe | ConnectionAborted | ConnectionReset))
}

/// Connection attempts when a lane is rejoined, and the pause between them.
const REDIAL_ATTEMPTS: u32 = 3;
const REDIAL_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// Rejoins a lost lane by dialing the server again with the same session.
struct Redial<'a> {
    dial: &'a Dial<'a>,
    hello: Hello,
    welcome: Welcome,
    max: usize,
    log: &'a Log,
}

impl session::Rejoin for Redial<'_> {
    fn rejoin(&self, lane: usize, stop: &dyn Fn() -> bool) -> Result<Lane> {
        let hello = Hello {
            lane: u16::try_from(lane).unwrap_or(u16::MAX),
            ..self.hello
        };
        let mut attempt = 1;
        loop {
            self.log.info(format!(
                "lane {lane}: connection lost, reconnecting ({attempt}/{REDIAL_ATTEMPTS})"
            ));
            // A changed session fails at once; a lost or garbled
            // connection is dialed again.
            match self.dial.connect(&hello, None) {
                Ok((mut fresh, welcome)) if welcome == self.welcome => {
                    fresh.reader.set_max(self.max);
                    return Ok(fresh);
                }
                Ok(_) => {
                    return Err(Error::protocol(
                        self.dial.peer,
                        "the session changed on reconnect",
                    ));
                }
                Err(e @ Error::Auth { .. }) => return Err(e),
                Err(e) if attempt >= REDIAL_ATTEMPTS || stop() => return Err(e),
                Err(_) => std::thread::sleep(REDIAL_PAUSE),
            }
            attempt += 1;
        }
    }
}

/// Where and how to open a lane.
struct Dial<'a> {
    host: &'a str,
    port: u16,
    peer: &'a str,
    secret: Option<&'a Secret>,
    /// The deadline of connecting and of every read and write.
    deadline: Duration,
}

/// A connection that has the server's challenge and has not said hello.
struct Opened {
    lane: Lane,
    server_nonce: [u8; proto::NONCE_LEN],
    flags: u8,
    /// How long the TCP connect took: about one round trip.
    connected: Duration,
}

impl Dial<'_> {
    /// Open one lane: connect, exchange preambles, answer the challenge with
    /// a hello (and a proof), check the server's proof, get the welcome
    /// (which must be `expect`, when given).
    fn connect(&self, hello: &Hello, expect: Option<Welcome>) -> Result<(Lane, Welcome)> {
        let opened = self.open()?;
        self.greet(opened, hello, expect)
    }

    /// Connect, exchange preambles, read the challenge.
    fn open(&self) -> Result<Opened> {
        let started = std::time::Instant::now();
        let stream = self.tcp()?;
        let connected = started.elapsed();
        net::configure_tcp(&stream);
        self.open_on(stream, connected)
    }

    /// Exchange preambles on `stream` and read the challenge; `connected`
    /// is how long connecting took.
    fn open_on<S: Stream>(&self, stream: S, connected: Duration) -> Result<Opened> {
        let peer = self.peer;
        let mut lane = Lane::open(stream, peer.to_string(), self.deadline)?;
        let (server_nonce, flags) = match lane.reader.read("the server's challenge")? {
            Frame::Challenge { nonce, flags } => (nonce, flags),
            other => return Err(session::unexpected(peer, &other)),
        };
        Ok(Opened {
            lane,
            server_nonce,
            flags,
            connected,
        })
    }

    /// Answer the challenge of `opened` with `hello` (and a proof), check
    /// the server's proof, get the welcome (see [`handshake::Client`]).
    fn greet(
        &self,
        opened: Opened,
        hello: &Hello,
        expect: Option<Welcome>,
    ) -> Result<(Lane, Welcome)> {
        let Opened {
            mut lane,
            server_nonce,
            flags,
            ..
        } = opened;
        let mut hello = *hello;
        sys::getrandom(&mut hello.nonce).map_err(|e| Error::io("client", "get random bytes", e))?;
        let mut client = handshake::Client::new(self.peer, self.secret, hello, expect);
        let challenge = Frame::Challenge {
            nonce: server_nonce,
            flags,
        };
        let welcome = lane.handshake(&mut client, Some(challenge))?;
        Ok((lane, welcome))
    }

    /// A TCP connection to the first address of the host that answers.
    fn tcp(&self) -> Result<TcpStream> {
        self.tcp_within(self.deadline)
    }

    /// [`Dial::tcp`], each address given `limit` to answer.
    fn tcp_within(&self, limit: Duration) -> Result<TcpStream> {
        let addrs = (self.host, self.port)
            .to_socket_addrs()
            .map_err(|e| Error::io(self.peer, "resolve", e))?;
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, limit) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        let e = last.unwrap_or_else(|| std::io::Error::other("no address"));
        Err(Error::io(self.peer, "connect", e))
    }
}

/// Open one lane on `stream` (a remote shell's pipes): exchange preambles,
/// answer the challenge with a hello (and a proof), check the server's
/// proof, get the welcome.
fn handshake<S: Stream>(
    stream: S,
    peer: &str,
    hello: &Hello,
    secret: Option<&Secret>,
    deadline: Duration,
) -> Result<(Lane, Welcome)> {
    let dial = Dial {
        host: "",
        port: 0,
        peer,
        secret,
        deadline,
    };
    let opened = dial.open_on(stream, Duration::ZERO)?;
    dial.greet(opened, hello, None)
}
