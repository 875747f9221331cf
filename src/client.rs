//! The client (`-r HOST:PORT`, and `-t` once the remote end runs): opens
//! `-w` lanes to a server and runs the source role (upload) or the
//! destination role (download, `-d`) over them.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::auth::{self, Handshake, Secret};
use crate::block::Geometry;
use crate::compress;
use crate::config::{Connect, DryRun, Env, Role, Transfer};
use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::net::{self, Lane, Stream};
use crate::patch;
use crate::progress::Log;
use crate::proto::{self, AUTH_FAILED, FLAG_DRY, Frame, Hello, MAX_BLOCK_SIZE, Welcome};
use crate::session::{self, Params};
use crate::sys;

/// Run a client session as `c` says, moving data as `t` says (or as
/// `-auto` chooses, when `c.auto`).
pub fn run(c: &Connect, t: &Transfer, env: &Env, log: &Log) -> Result<()> {
    run_dry(c, t, env, log, None, b"")
}

/// [`run`], or with `dry` a dry run that writes nothing to the server's
/// destination (`--compare`, `--write-patch`); a patch names `target`.
pub fn run_dry(
    c: &Connect,
    t: &Transfer,
    env: &Env,
    log: &Log,
    dry: Option<&DryRun>,
    target: &[u8],
) -> Result<()> {
    run_dry_within(c, t, env, log, dry, target, None)
}

/// What the first lane's failed connect says when it had a deadline of its
/// own ([`run_dry_within`]): nothing of the session has started.
pub const FIRST_CONNECT: &str = "connect (first lane, short deadline)";

/// [`run_dry`], the first lane's TCP connect limited to `first_connect`;
/// failing that, the error's operation is [`FIRST_CONNECT`].
pub fn run_dry_within(
    c: &Connect,
    t: &Transfer,
    env: &Env,
    log: &Log,
    dry: Option<&DryRun>,
    target: &[u8],
    first_connect: Option<Duration>,
) -> Result<()> {
    let (host, port) = (c.host.as_str(), c.port);
    let upload = c.role == Role::Source;
    let source = if upload {
        Some(Disk::open_source(&c.path, env, log)?.rescued(c.rescue.as_deref(), &c.path)?)
    } else {
        None
    };
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
    let mut id = [0u8; 16];
    sys::getrandom(&mut id).map_err(|e| Error::io("client", "get random bytes", e))?;
    let lanes_n = u16::try_from(t.workers).unwrap_or(u16::MAX);
    // Validation caps -b at MAX_BLOCK_SIZE, 1 GiB.
    let block_size = u32::try_from(t.block_size)
        .map_err(|_| Error::usage(format!("-b: {} is too large", t.block_size)))?;
    let hello = |lane: u16| Hello {
        session: u128::from_le_bytes(id),
        lane,
        lanes: lanes_n,
        download: !upload,
        block_size,
        skip: t.skip,
        source_size: source.as_ref().map_or(0, Disk::size),
        compression: compress::code(t.compression),
        flags: Secret::flags(secret) | if dry.is_some() { FLAG_DRY } else { 0 },
        // Filled in afresh for every connection.
        nonce: [0; proto::NONCE_LEN],
    };

    let (first, welcome) = match (opened, first_connect) {
        (Some(o), _) => dial.greet(o, &hello(0))?,
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
            dial.greet(opened, &hello(0))?
        }
        (None, None) => connect_retrying(&dial, &hello(0), log)?,
    };
    if let Some(why) = welcome_mismatch(&hello(0), &welcome, upload) {
        return Err(Error::protocol(
            &peer,
            format!("the server's Welcome does not match this end's Hello: {why}"),
        ));
    }
    let block_size = usize::try_from(welcome.block_size).unwrap_or(usize::MAX);
    if block_size == 0 || block_size > MAX_BLOCK_SIZE {
        return Err(Error::protocol(
            &peer,
            format!("block size {block_size} out of range"),
        ));
    }
    let max = proto::max_payload(block_size);
    let mut lanes = vec![first];
    for lane in 1..lanes_n {
        let (l, w) = connect_retrying(&dial, &hello(lane), log)?;
        if w != welcome {
            return Err(Error::protocol(
                &peer,
                "lanes of one session got different parameters",
            ));
        }
        lanes.push(l);
    }
    for lane in &mut lanes {
        lane.reader.set_max(max);
    }
    let geo = Geometry {
        size: welcome.source_size,
        block_size,
    };
    let first_block = welcome.skip.min(geo.blocks());
    let params = Params {
        geo,
        first: first_block,
        salt: welcome.salt,
        compression: t.compression,
        workers: t.workers,
        prefetch: t.prefetch,
        deadline: env.io_timeout,
        encrypted: secret.is_some_and(Secret::encrypts),
        bwlimit: t.bwlimit,
    };
    log.info(format!(
        "connected to {peer}: {} {} in blocks of {}, {} {}",
        if upload { "uploading" } else { "downloading" },
        crate::progress::human_bytes(geo.size),
        crate::progress::human_bytes(block_size as u64),
        lanes.len(),
        crate::progress::plural(lanes.len() as u64, "lane")
    ));
    let redial = Redial {
        dial: &dial,
        hello: hello(0),
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
    let progress = !log.is_quiet();
    match dry {
        Some(dry) => {
            patch::make::run_source(dry, target, &params, &disk, lanes, &redial, log, progress)
        }
        None => session::run(c.role, &params, &disk, lanes, &redial, log, progress),
    }
}

/// A lane that is lost stays lost: a session over one stream (a remote
/// shell's pipes) cannot dial again.
pub struct NoRejoin;

impl session::Rejoin for NoRejoin {
    fn rejoin(&self, lane: usize, _stop: &dyn Fn() -> bool) -> Result<Lane> {
        Err(Error::Failed(format!(
            "lane {lane}: the remote shell's stream is gone and cannot be reopened"
        )))
    }
}

/// Run `role` on `disk` (a source, or a dry destination) in a one-lane
/// session over `stream`, the pipes of a remote shell running
/// `bsync --server`; `dry` as in [`run_dry`]. Returns the verification
/// digest.
#[allow(clippy::too_many_arguments)]
pub fn run_over<S: Stream>(
    stream: S,
    peer: &str,
    role: Role,
    disk: &mut Disk,
    t: &Transfer,
    env: &Env,
    log: &Log,
    dry: Option<&DryRun>,
    target: &[u8],
    on_params: Option<&dyn Fn(&Params)>,
) -> Result<u128> {
    let upload = role == Role::Source;
    let mut id = [0u8; 16];
    sys::getrandom(&mut id).map_err(|e| Error::io("client", "get random bytes", e))?;
    let block_size = u32::try_from(t.block_size)
        .map_err(|_| Error::usage(format!("-b: {} is too large", t.block_size)))?;
    let hello = Hello {
        session: u128::from_le_bytes(id),
        lane: 0,
        lanes: 1,
        download: !upload,
        block_size,
        skip: t.skip,
        source_size: if upload { disk.size() } else { 0 },
        compression: compress::code(t.compression),
        flags: if dry.is_some() { FLAG_DRY } else { 0 },
        nonce: [0; proto::NONCE_LEN],
    };
    let (mut lane, welcome) = handshake(stream, peer, &hello, None, env.io_timeout)?;
    if welcome.block_size != block_size || welcome.skip != t.skip || welcome.lanes != 1 {
        return Err(Error::protocol(
            peer,
            "the server changed the session's parameters",
        ));
    }
    let max = proto::max_payload(t.block_size);
    lane.reader.set_max(max);
    let geo = Geometry {
        size: welcome.source_size,
        block_size: t.block_size,
    };
    let params = Params {
        geo,
        first: welcome.skip.min(geo.blocks()),
        salt: welcome.salt,
        compression: t.compression,
        workers: t.workers,
        prefetch: t.prefetch,
        // A remote shell's pipes: whatever protects them (ssh) seals.
        encrypted: false,
        bwlimit: t.bwlimit,
        deadline: env.io_timeout,
    };
    if let Some(f) = on_params {
        f(&params);
    }
    if !upload {
        disk.fit_to(geo.size)?;
    }
    let disk = &*disk;
    log.info(format!(
        "connected to {peer}: {} {} in blocks of {}",
        match (dry.is_some(), upload) {
            (true, _) => "comparing",
            (false, true) => "uploading",
            (false, false) => "downloading",
        },
        crate::progress::human_bytes(geo.size),
        crate::progress::human_bytes(t.block_size as u64),
    ));
    let progress = !log.is_quiet();
    match dry {
        Some(dry) => patch::make::run_source(
            dry,
            target,
            &params,
            disk,
            vec![lane],
            &NoRejoin,
            log,
            progress,
        )
        .map(|()| 0),
        None => session::run_dry(
            role,
            &params,
            disk,
            vec![lane],
            &NoRejoin,
            log,
            progress,
            None,
        ),
    }
}

/// What in a `Welcome` contradicts the `Hello` it answers: the skip and
/// the lanes always, and in an upload the block size and the source size
/// too (the source's are authoritative).
fn welcome_mismatch(hello: &Hello, welcome: &Welcome, upload: bool) -> Option<String> {
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

/// Open a lane for the first time, retrying a connection lost during the
/// handshake as a rejoined lane is retried; a refused or unreachable server
/// is not retried (it is not there, and saying so at once is kinder).
fn connect_retrying(dial: &Dial<'_>, hello: &Hello, log: &Log) -> Result<(Lane, Welcome)> {
    let mut attempt = 1;
    loop {
        match dial.connect(hello) {
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
/// connecting failed), rather than that a connection was lost.
fn unreachable(e: &Error) -> bool {
    matches!(e, Error::Io { op, .. } if op == "connect" || op == "resolve")
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
            match self.dial.connect(&hello) {
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
    /// a hello (and a proof), check the server's proof, get the welcome.
    fn connect(&self, hello: &Hello) -> Result<(Lane, Welcome)> {
        let opened = self.open()?;
        self.greet(opened, hello)
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
    /// the server's proof, get the welcome.
    fn greet(&self, opened: Opened, hello: &Hello) -> Result<(Lane, Welcome)> {
        let peer = self.peer;
        let Opened {
            mut lane,
            server_nonce,
            flags,
            ..
        } = opened;
        // Nothing is sent to a server that cannot prove what we hold.
        if let Some(why) = auth::mismatch(hello.flags, flags, "server") {
            let theirs = auth::mismatch(flags, hello.flags, "client").unwrap_or_default();
            lane.sender.fail(&format!("{AUTH_FAILED}{theirs}"));
            return Err(Error::Auth {
                peer: peer.to_string(),
                why,
            });
        }
        let mut hello = *hello;
        sys::getrandom(&mut hello.nonce).map_err(|e| Error::io("client", "get random bytes", e))?;
        // Proven with or without a secret: the proofs also show that the
        // challenge and the hello arrived as they were sent.
        let hs = Handshake::new(self.secret, &server_nonce, flags, &hello);
        let (check, tag) = hs.proof(auth::Direction::Up);
        let mut out = Vec::new();
        proto::encode(&Frame::Hello(hello), &mut out);
        proto::encode(&Frame::Proof { check, tag }, &mut out);
        lane.sender.send(&mut out)?;
        match lane.reader.read("the server's proof")? {
            Frame::Proof { check, tag } => match hs.verify(auth::Direction::Down, &check, &tag) {
                Ok(()) => {}
                Err(auth::Refusal::Corrupted) => {
                    return Err(Error::protocol(
                        peer,
                        "the handshake was changed in transit (the server's proof \
                         covers other bytes than this end sent and received)",
                    ));
                }
                Err(auth::Refusal::WrongSecret) => {
                    return Err(Error::Auth {
                        peer: peer.to_string(),
                        why: "the server holds a different key or token".into(),
                    });
                }
            },
            other => return Err(session::unexpected(peer, &other)),
        }
        lane.protect(
            hs.cipher(auth::Direction::Up),
            hs.cipher(auth::Direction::Down),
        );
        let welcome = match lane.reader.read("the server's welcome")? {
            Frame::Welcome(w) => w,
            other => return Err(session::unexpected(peer, &other)),
        };
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
    dial.greet(opened, hello)
}
