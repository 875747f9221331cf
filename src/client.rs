//! The client (`-r HOST:PORT`): opens `-w` lanes to a server and runs the
//! source side (upload) or the destination side (download, `-d`).

use std::net::{TcpStream, ToSocketAddrs};

use crate::auth::{self, Handshake, Secret};
use crate::block::Geometry;
use crate::cli::{Config, Direction};
use crate::compress;
use crate::digest::sub_block_size;
use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::net::{self, Lane};
use crate::progress::{Log, Reporter, Side, Stats, Totals, summary};
use crate::proto::{self, Frame, Hello, Welcome};
use crate::session::{self, Params};
use crate::sys;

/// Run a client session against `host:port`.
pub fn run(config: &Config, host: &str, port: u16, log: &Log) -> Result<()> {
    let upload = config.direction == Direction::Upload;
    let source = if upload {
        Some(Disk::open_source(&config.path, log)?)
    } else {
        None
    };
    let secret = Secret::from_config(config);
    let peer = if host.contains(':') {
        format!("server [{host}]:{port}")
    } else {
        format!("server {host}:{port}")
    };
    let mut id = [0u8; 16];
    sys::getrandom(&mut id).map_err(|e| Error::io("client", "get random bytes", e))?;
    let lanes_n = u16::try_from(config.workers).unwrap_or(u16::MAX);
    let hello = |lane: u16| Hello {
        session: u128::from_le_bytes(id),
        lane,
        lanes: lanes_n,
        download: !upload,
        block_size: config.block_size as u32,
        skip: config.skip,
        source_size: source.as_ref().map_or(0, |s| s.size),
        compression: compress::code(config.compression),
        flags: Secret::flags(secret.as_ref()),
        // Filled in afresh for every connection.
        nonce: [0; proto::NONCE_LEN],
    };
    let dial = Dial {
        host,
        port,
        peer: &peer,
        secret: secret.as_ref(),
    };

    let (first, welcome) = dial.connect(&hello(0))?;
    if upload && (welcome.block_size != config.block_size as u32 || welcome.skip != config.skip) {
        return Err(Error::protocol(
            &peer,
            "the server changed the block size or skip of an upload",
        ));
    }
    let block_size = welcome.block_size as usize;
    if block_size == 0 || block_size > crate::cli::MAX_BLOCK_SIZE {
        return Err(Error::protocol(
            &peer,
            format!("block size {block_size} out of range"),
        ));
    }
    let max = proto::max_payload(block_size, sub_block_size(block_size));
    let mut lanes = vec![first];
    for lane in 1..lanes_n {
        let (l, w) = dial.connect(&hello(lane))?;
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
        compression: config.compression,
        workers: config.workers,
        prefetch: config.prefetch,
    };
    log.info(format!(
        "connected to {peer}: {} {} in blocks of {}, {} lane(s)",
        if upload { "uploading" } else { "downloading" },
        crate::progress::human_bytes(geo.size),
        crate::progress::human_bytes(block_size as u64),
        lanes.len()
    ));
    let stats = std::sync::Arc::new(Stats::default());
    let totals = Totals::from_block(geo, first_block);
    let reporter = Reporter::start(log, &stats, totals, !log.is_quiet());
    let redial = Redial {
        dial: &dial,
        hello: hello(0),
        welcome,
        max,
        log,
    };
    // A download into a larger device says so after the summary.
    let mut dest = None;
    let verify = match source {
        Some(source) => session::run_source(&params, &source, lanes, &stats, &redial)?,
        None => {
            let d = dest.insert(Disk::open_destination(&config.path, log)?);
            d.fit_to(geo.size)?;
            session::run_destination(&params, d, lanes, &stats, &redial)?
        }
    };
    let elapsed = reporter.finish();
    let side = if upload {
        Side::Source
    } else {
        Side::Destination
    };
    log.info(summary(&stats, elapsed, side));
    log.info(format!(
        "verification digest {verify:032x}: both ends agree"
    ));
    if let Some(d) = &dest {
        d.report_excess(geo.size);
    }
    Ok(())
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
}

impl Dial<'_> {
    /// Open one lane: connect, exchange preambles, answer the challenge with
    /// a hello (and a proof), check the server's proof, get the welcome.
    fn connect(&self, hello: &Hello) -> Result<(Lane, Welcome)> {
        let peer = self.peer;
        let mut stream = self.tcp()?;
        net::configure(&stream, peer)?;
        net::exchange_preamble(&mut stream, peer)?;
        let mut lane = Lane::new(stream, peer.to_string(), proto::HANDSHAKE_MAX)?;
        let (server_nonce, flags) = match lane.reader.read("the server's challenge")? {
            Frame::Challenge { nonce, flags } => (nonce, flags),
            other => return Err(session::unexpected(peer, &other)),
        };
        // Nothing is sent to a server that cannot prove what we hold.
        if let Some(why) = auth::mismatch(hello.flags, flags, "server") {
            let theirs = auth::mismatch(flags, hello.flags, "client").unwrap_or_default();
            lane.sender
                .fail(&format!("{}{theirs}", session::AUTH_FAILED));
            return Err(Error::Auth {
                peer: peer.to_string(),
                why,
            });
        }
        let mut hello = *hello;
        sys::getrandom(&mut hello.nonce).map_err(|e| Error::io("client", "get random bytes", e))?;
        lane.sender.send_frame(&Frame::Hello(hello))?;
        if let Some(secret) = self.secret {
            let hs = Handshake::new(secret, &server_nonce, flags, &hello);
            lane.sender.send_frame(&Frame::Proof {
                tag: hs.proof(auth::Direction::Up),
            })?;
            match lane.reader.read("the server's proof")? {
                Frame::Proof { tag } if hs.verify(auth::Direction::Down, &tag) => {}
                Frame::Proof { .. } => {
                    return Err(Error::Auth {
                        peer: peer.to_string(),
                        why: "the server holds a different key or token".into(),
                    });
                }
                other => return Err(session::unexpected(peer, &other)),
            }
            if secret.encrypts() {
                lane.encrypt(
                    hs.cipher(auth::Direction::Up),
                    hs.cipher(auth::Direction::Down),
                );
            }
        }
        let welcome = match lane.reader.read("the server's welcome")? {
            Frame::Welcome(w) => w,
            other => return Err(session::unexpected(peer, &other)),
        };
        Ok((lane, welcome))
    }

    /// A TCP connection to the first address of the host that answers.
    fn tcp(&self) -> Result<TcpStream> {
        let addrs = (self.host, self.port)
            .to_socket_addrs()
            .map_err(|e| Error::io(self.peer, "resolve", e))?;
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, net::io_timeout()) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        let e = last.unwrap_or_else(|| std::io::Error::other("no address"));
        Err(Error::io(self.peer, "connect", e))
    }
}
