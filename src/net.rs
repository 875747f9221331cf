//! Framed I/O over any byte stream: deadlines, the preamble, lanes.
//!
//! A session runs over anything that implements [`Stream`]: a TCP socket, a
//! `UnixStream::pair()` in the roles' tests. TCP sockets also get keep-alive
//! (30 s) and large buffers ([`configure_tcp`]); every stream gets a deadline
//! on every blocking read and write ([`crate::config::Env::io_timeout`]). A
//! [`Lane`] is one connection split in two: a [`FrameReader`] owned by the
//! thread that reads it, and a [`FrameSender`] that any thread may send
//! whole frames through.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::aead::TAG_LEN;
use crate::auth::Cipher;
use crate::error::{Error, Result};
use crate::handshake::{self, Machine};
use crate::lock::lock;
use crate::log::Log;
use crate::progress::Stats;
use crate::proto::{self, Frame, HEADER_LEN, PREAMBLE};
use crate::sys;

/// A byte stream a session can run over.
pub trait Stream: Read + Write + Send + Sized + 'static {
    /// A second handle on the same stream, for the sending half.
    fn try_clone(&self) -> io::Result<Self>;
    /// Close both directions, waking a thread blocked reading it.
    fn shutdown(&self) -> io::Result<()>;
    /// Fail every blocking read and write that waits longer than `limit`.
    fn set_deadline(&self, limit: Duration) -> io::Result<()>;
}

impl Stream for TcpStream {
    fn try_clone(&self) -> io::Result<Self> {
        TcpStream::try_clone(self)
    }
    fn shutdown(&self) -> io::Result<()> {
        TcpStream::shutdown(self, Shutdown::Both)
    }
    fn set_deadline(&self, limit: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(limit))?;
        self.set_write_timeout(Some(limit))
    }
}

impl Stream for UnixStream {
    fn try_clone(&self) -> io::Result<Self> {
        UnixStream::try_clone(self)
    }
    fn shutdown(&self) -> io::Result<()> {
        UnixStream::shutdown(self, Shutdown::Both)
    }
    fn set_deadline(&self, limit: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(limit))?;
        self.set_write_timeout(Some(limit))
    }
}

/// The sending half of a stream, as the lanes hold it.
trait Sink: Write + Send {
    fn close(&self);
}

impl<S: Stream> Sink for S {
    fn close(&self) {
        let _ = self.shutdown();
    }
}

/// Keep-alive idle time and interval.
pub const KEEPALIVE: Duration = Duration::from_secs(30);
/// Socket buffer size asked for.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// Apply no-delay, keep-alive and large buffers to a TCP socket; each is
/// best effort.
pub fn configure_tcp(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = sys::set_keepalive(stream, KEEPALIVE);
    let _ = sys::set_socket_buffers(stream, SOCKET_BUFFER);
}

/// The lanes of the session this process serves: told, should a signal
/// stop it, that it was stopped.
static TOLD_ON_INTERRUPT: Mutex<Vec<std::sync::Weak<FrameSender>>> = Mutex::new(Vec::new());

/// Should a signal stop this process, tell the peer on `sender` so (its
/// user then reads why, not "connection closed").
pub fn tell_on_interrupt(sender: &Arc<FrameSender>) {
    lock(&TOLD_ON_INTERRUPT).push(Arc::downgrade(sender));
}

/// Send `msg` as an error to every peer [`tell_on_interrupt`] named, for
/// `limit` at most (a peer that stopped reading cannot hold the exit).
pub fn tell_peers(msg: &str, limit: Duration) {
    let senders: Vec<Arc<FrameSender>> = lock(&TOLD_ON_INTERRUPT)
        .iter()
        .filter_map(std::sync::Weak::upgrade)
        .collect();
    if senders.is_empty() {
        return;
    }
    let (done, told) = std::sync::mpsc::channel();
    let msg = msg.to_string();
    let spawned = std::thread::Builder::new().spawn(move || {
        // Not `fail`: closing the sockets would end the session here
        // first, and with it the process, before the signal's exit status.
        for sender in senders {
            let _ = sender.send_frame(&Frame::Error(&msg));
        }
        let _ = done.send(());
    });
    if spawned.is_ok() {
        let _ = told.recv_timeout(limit);
    }
}

/// Turn an I/O error on a socket into a bsync error naming the peer.
pub fn net_error(peer: &str, phase: &str, e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout {
            peer: peer.to_string(),
            phase: phase.to_string(),
        },
        io::ErrorKind::UnexpectedEof => Error::Closed {
            peer: peer.to_string(),
            phase: phase.to_string(),
        },
        _ => Error::io(peer, phase, e),
    }
}

/// Send our preamble, and `then` (whole frames) with it, and check the
/// peer's: same protocol version or a clear error naming both versions.
fn exchange_preamble(stream: &mut impl Stream, peer: &str, then: &[u8]) -> Result<()> {
    let mut ours = PREAMBLE.to_vec();
    ours.extend_from_slice(then);
    stream
        .write_all(&ours)
        .map_err(|e| net_error(peer, "handshake", e))?;
    let mut theirs = [0u8; PREAMBLE.len()];
    stream
        .read_exact(&mut theirs)
        .map_err(|e| net_error(peer, "handshake", e))?;
    handshake::check_preamble(peer, &theirs)
}

/// Reads frames from one connection into a reused buffer, checking each
/// frame's tag (and decrypting it under a key) once the handshake is done.
pub struct FrameReader {
    stream: Box<dyn Read + Send>,
    buf: Vec<u8>,
    max: usize,
    cipher: Option<Cipher>,
    /// Where the peer's `Notice`s are shown; until set, they are frames
    /// like any other.
    notices: Option<Log>,
    /// Where the bytes of every frame read are counted (`wire_received`),
    /// and a shown `Notice` of a dry destination's size is noted
    /// (`destination_size`), once a session has begun.
    counted: Option<Arc<Stats>>,
    /// Who is on the other end, for messages.
    pub peer: String,
}

impl FrameReader {
    /// From now on, show every `Notice` the peer sends on `log`, as a
    /// warning line naming the peer, and read on.
    pub fn show_notices(&mut self, log: &Log) {
        self.notices = Some(log.clone());
    }

    /// From now on, count the bytes of every frame read (as the sender
    /// counts them: header and payload, without the tag) in
    /// `stats.wire_received`; a shown `Notice` that a dry destination is of
    /// another size sets `stats.destination_size`.
    pub fn count_received(&mut self, stats: &Arc<Stats>) {
        self.counted = Some(Arc::clone(stats));
    }

    /// A reader accepting payloads up to `max` bytes.
    fn new(stream: Box<dyn Read + Send>, peer: String, max: usize) -> FrameReader {
        FrameReader {
            stream,
            buf: Vec::new(),
            max,
            cipher: None,
            notices: None,
            counted: None,
            peer,
        }
    }

    /// Raise the payload limit once the session parameters are agreed.
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// Read the next frame. `phase` names what we wait for, for errors.
    pub fn read(&mut self, phase: &str) -> Result<Frame<'_>> {
        loop {
            self.read_raw(phase)?;
            let Some(log) = self
                .notices
                .as_ref()
                .filter(|_| proto::is_notice(self.buf[0]))
            else {
                break;
            };
            match proto::decode(&self.buf, self.max) {
                Ok(Some((Frame::Notice(msg), _))) => {
                    // A dry destination of another size: no warning but a
                    // dry run's verdict, which its source says.
                    match (&self.counted, crate::summary::parse_resized(msg)) {
                        (Some(stats), Some((size, _, device))) => {
                            let _ = stats.destination_size.set((size, device));
                        }
                        _ => log.line(format!("warning from {}: {msg}", self.peer)),
                    }
                }
                _ => break, // Malformed: decoded again below, and refused.
            }
        }
        match proto::decode(&self.buf, self.max) {
            Ok(Some((frame, _))) => Ok(frame),
            Ok(None) => Err(Error::protocol(&self.peer, "incomplete frame")),
            Err(e) => Err(Error::protocol(&self.peer, e.to_string())),
        }
    }

    /// Read the next frame's bytes into `buf`, its tag checked.
    fn read_raw(&mut self, phase: &str) -> Result<()> {
        let mut header = [0u8; HEADER_LEN];
        self.stream
            .read_exact(&mut header)
            .map_err(|e| net_error(&self.peer, phase, e))?;
        let overhead = if self.cipher.is_some() { TAG_LEN } else { 0 };
        let (_, len) = proto::decode_header(&header, self.max + overhead)
            .map_err(|e| Error::protocol(&self.peer, e.to_string()))?;
        self.buf.clear();
        self.buf.extend_from_slice(&header);
        self.buf.resize(HEADER_LEN + len, 0);
        self.stream
            .read_exact(&mut self.buf[HEADER_LEN..])
            .map_err(|e| net_error(&self.peer, phase, e))?;
        if let Some(cipher) = &mut self.cipher {
            open_frame(cipher, &mut self.buf).map_err(|e| Error::protocol(&self.peer, e))?;
        }
        if let Some(stats) = &self.counted {
            Stats::add(&stats.wire_received, self.buf.len() as u64);
        }
        Ok(())
    }
}

/// Check the tag of one tagged (or sealed) frame in `buf` — header, payload,
/// 16-byte tag, as read off the wire — and turn it in place into the plain
/// frame (decrypted under a key, the tag removed, the header's length
/// without it). Sans-I/O, so that `fuzz/` can hammer it; what comes back is
/// a message for a protocol error.
pub fn open_frame(cipher: &mut Cipher, buf: &mut Vec<u8>) -> std::result::Result<(), String> {
    if buf.len() < HEADER_LEN {
        return Err("frame shorter than its header".into());
    }
    let (head, rest) = buf.split_at_mut(HEADER_LEN);
    let Some((payload, tag)) = rest.split_last_chunk_mut::<TAG_LEN>() else {
        return Err("tagged frame shorter than its tag".into());
    };
    let plain = payload.len();
    let sealed = cipher.encrypts();
    cipher.open(head, payload, tag).map_err(|_| {
        format!(
            "a {} frame failed its integrity check: changed in transit \
             (or replayed, reordered, or after a dropped one)",
            if sealed { "sealed" } else { "tagged" }
        )
    })?;
    // The sealed length fitted the header, so the plain one does.
    let plain_len = u32::try_from(plain).unwrap_or(u32::MAX);
    head[1..].copy_from_slice(&plain_len.to_le_bytes());
    buf.truncate(HEADER_LEN + plain);
    Ok(())
}

/// Tag (or seal) the frames of `frames` in place and return the bytes to
/// send: the sans-I/O twin of what [`FrameSender::send`] writes, for the
/// tests and `fuzz/`.
pub fn seal_frames(cipher: &mut Cipher, frames: &mut [u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    seal_and_write(&mut out, cipher, frames)?;
    Ok(out)
}

/// The sending half of a connection: its socket and, once encrypted, the
/// sealing state, locked together so that counters follow wire order.
struct SendHalf {
    stream: Box<dyn Sink>,
    cipher: Option<Cipher>,
    /// Where the bytes of every frame sent are counted (`wire_sent`), once
    /// a session has begun.
    counted: Option<Arc<Stats>>,
}

/// Sends whole frames on one connection; safe to share between threads.
pub struct FrameSender {
    half: Mutex<SendHalf>,
    /// Another handle on the same connection, only to close it: a writer
    /// stuck on a connection that takes nothing holds `half` until its
    /// deadline, and closing must not wait for that.
    closer: Mutex<Box<dyn Sink>>,
    /// Who is on the other end, for messages.
    pub peer: String,
}

/// How long [`FrameSender::fail`] waits for a writer in progress before it
/// closes the connection without saying why.
const FAIL_WAIT: Duration = Duration::from_secs(1);

impl FrameSender {
    /// A sender on `stream`, closed through `closer` (the same connection).
    fn new(stream: Box<dyn Sink>, closer: Box<dyn Sink>, peer: String) -> FrameSender {
        FrameSender {
            half: Mutex::new(SendHalf {
                stream,
                cipher: None,
                counted: None,
            }),
            closer: Mutex::new(closer),
            peer,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SendHalf> {
        lock(&self.half)
    }

    /// Send bytes holding one or more complete frames. On an encrypted
    /// connection they are sealed in place, so `frames` holds ciphertext
    /// afterwards.
    pub fn send(&self, frames: &mut [u8]) -> Result<()> {
        self.send_on(&mut self.lock(), frames)
    }

    /// From now on, count the bytes of every frame sent (header and
    /// payload, without the tag) in `stats.wire_sent`.
    pub fn count_sent(&self, stats: &Arc<Stats>) {
        self.lock().counted = Some(Arc::clone(stats));
    }

    fn send_on(&self, half: &mut SendHalf, frames: &mut [u8]) -> Result<()> {
        let SendHalf {
            stream,
            cipher,
            counted,
        } = half;
        if let Some(stats) = counted {
            Stats::add(&stats.wire_sent, frames.len() as u64);
        }
        let sent = match cipher {
            None => stream.write_all(frames),
            Some(cipher) => seal_and_write(&mut **stream, cipher, frames),
        };
        sent.map_err(|e| net_error(&self.peer, "send", e))
    }

    /// Encode and send one frame.
    pub fn send_frame(&self, frame: &Frame<'_>) -> Result<()> {
        let mut buf = Vec::new();
        proto::encode(frame, &mut buf);
        self.send(&mut buf)
    }

    /// Tell the peer why we give up (best effort) and close. A writer that
    /// holds the connection longer than [`FAIL_WAIT`] (stuck on a peer
    /// that reads nothing) is not waited for: the connection is closed
    /// under it, which ends its write.
    pub fn fail(&self, msg: &str) {
        let until = std::time::Instant::now() + FAIL_WAIT;
        let mut buf = Vec::new();
        proto::encode(&Frame::Error(msg), &mut buf);
        loop {
            match self.half.try_lock() {
                Ok(mut half) => {
                    let _ = self.send_on(&mut half, &mut buf);
                    break;
                }
                Err(std::sync::TryLockError::Poisoned(p)) => {
                    let _ = self.send_on(&mut p.into_inner(), &mut buf);
                    break;
                }
                Err(std::sync::TryLockError::WouldBlock) if std::time::Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(std::sync::TryLockError::WouldBlock) => break,
            }
        }
        self.shutdown();
    }

    /// Send on a new connection (and its keys) from now on, after a reconnect.
    pub fn replace(&self, other: FrameSender) {
        let mut half = self.lock();
        *lock(&self.closer) = crate::lock::into_inner(other.closer);
        let counted = half.counted.take();
        *half = crate::lock::into_inner(other.half);
        half.counted = counted;
    }

    /// Close both directions, waking a thread blocked reading or writing
    /// it; never waits for a writer.
    pub fn shutdown(&self) {
        lock(&self.closer).close();
    }
}

/// Seal each frame of `frames` and write it as header (with the sealed
/// length), ciphertext and tag, without copying the payload.
fn seal_and_write(
    stream: &mut dyn Write,
    cipher: &mut Cipher,
    frames: &mut [u8],
) -> io::Result<()> {
    let mut rest = frames;
    while !rest.is_empty() {
        let Some(header) = rest.first_chunk::<HEADER_LEN>() else {
            return Err(io::Error::other("internal error: a partial frame to seal"));
        };
        let len = usize::try_from(u32::from_le_bytes([
            header[1], header[2], header[3], header[4],
        ]))
        .map_err(|_| io::Error::other("internal error: frame too large to seal"))?;
        let sealed_len = u32::try_from(len + TAG_LEN)
            .map_err(|_| io::Error::other("internal error: frame too large to seal"))?;
        let mut sealed_header = [header[0], 0, 0, 0, 0];
        sealed_header[1..].copy_from_slice(&sealed_len.to_le_bytes());
        let (frame, tail) = std::mem::take(&mut rest)
            .split_at_mut_checked(HEADER_LEN + len)
            .ok_or_else(|| io::Error::other("internal error: a partial frame to seal"))?;
        rest = tail;
        let payload = &mut frame[HEADER_LEN..];
        let tag = cipher.seal(&sealed_header, payload);
        write_all_vectored(
            stream,
            &mut [
                IoSlice::new(&sealed_header),
                IoSlice::new(payload),
                IoSlice::new(&tag),
            ],
        )?;
    }
    Ok(())
}

/// `Write::write_all_vectored`, which is not stable yet.
fn write_all_vectored(stream: &mut dyn Write, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !bufs.is_empty() {
        match stream.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether an error means the connection is gone (and a new one may carry
/// on), rather than the peer or the data being wrong.
pub fn is_connection_loss(e: &Error) -> bool {
    matches!(
        e,
        Error::Io { .. } | Error::Timeout { .. } | Error::Closed { .. }
    )
}

/// One connection of a session, split for its reader thread and its senders.
pub struct Lane {
    /// The reading half.
    pub reader: FrameReader,
    /// The writing half.
    pub sender: Arc<FrameSender>,
}

impl Lane {
    /// Open a lane on `stream`: set its deadline, exchange preambles with
    /// `peer` (a version mismatch is named on both ends) and split it.
    /// Frames up to the handshake's limit are accepted until
    /// [`FrameReader::set_max`] raises it.
    pub fn open<S: Stream>(stream: S, peer: String, deadline: Duration) -> Result<Lane> {
        Lane::open_sending(stream, peer, deadline, &[])
    }

    /// [`Lane::open`], sending `first` (whole frames) with the preamble,
    /// before the peer's arrives: a server's `Challenge`, which so costs
    /// no wait for the client's preamble, half a round trip.
    pub fn open_sending<S: Stream>(
        mut stream: S,
        peer: String,
        deadline: Duration,
        first: &[u8],
    ) -> Result<Lane> {
        stream
            .set_deadline(deadline)
            .map_err(|e| Error::io(&peer, "set deadlines", e))?;
        exchange_preamble(&mut stream, &peer, first)?;
        let write_half = stream
            .try_clone()
            .map_err(|e| Error::io(&peer, "clone socket", e))?;
        let closer = stream
            .try_clone()
            .map_err(|e| Error::io(&peer, "clone socket", e))?;
        Ok(Lane {
            reader: FrameReader::new(Box::new(stream), peer.clone(), proto::HANDSHAKE_MAX),
            sender: Arc::new(FrameSender::new(
                Box::new(write_half),
                Box::new(closer),
                peer,
            )),
        })
    }

    /// Hand this lane's halves over to an existing lane's reader and sender.
    pub fn take_over(self, reader: &mut FrameReader, sender: &FrameSender) {
        let (max, notices, counted) = (reader.max, reader.notices.take(), reader.counted.take());
        *reader = self.reader;
        reader.max = max;
        reader.notices = notices;
        reader.counted = counted;
        match Arc::try_unwrap(self.sender) {
            Ok(s) => sender.replace(s),
            // Never shared before it is handed over; keep the old sender.
            Err(_) => sender.shutdown(),
        }
    }

    /// Tag (or seal) every frame sent and check (or open) every frame read
    /// from now on.
    pub fn protect(&mut self, send: Cipher, receive: Cipher) {
        self.reader.cipher = Some(receive);
        self.sender.lock().cipher = Some(send);
    }

    /// Run the handshake `m` on this lane: feed it `first` (a frame read
    /// already) and then every frame read, send what it says to send, and
    /// tag frames once it says so, until it is done or refuses (after
    /// telling the peer why, if it says to).
    pub fn handshake<M: Machine>(
        &mut self,
        m: &mut M,
        first: Option<Frame<'_>>,
    ) -> Result<M::Done> {
        if let Some(frame) = first {
            let fed = m.feed(frame);
            if let Some(done) = self.step(fed)? {
                return Ok(done);
            }
        }
        loop {
            let fed = m.feed(self.reader.read(m.waiting_for())?);
            if let Some(done) = self.step(fed)? {
                return Ok(done);
            }
        }
    }

    /// Do what one step of a handshake says.
    fn step<D>(
        &mut self,
        step: std::result::Result<handshake::Step<D>, handshake::Refused>,
    ) -> Result<Option<D>> {
        let mut step = match step {
            Ok(step) => step,
            Err(refused) => {
                if let Some(why) = &refused.tell {
                    self.sender.fail(why);
                }
                return Err(refused.error);
            }
        };
        if !step.send.is_empty() {
            self.sender.send(&mut step.send)?;
        }
        if let Some((send, receive)) = step.protect {
            self.protect(send, receive);
        }
        Ok(step.done)
    }
}
