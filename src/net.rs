//! TCP plumbing: socket options, deadlines, the preamble and framed I/O.
//!
//! Every socket gets TCP keep-alive (30 s), large buffers, and a deadline on
//! every blocking read and write (5 minutes; the hidden `BSYNC_IO_TIMEOUT`
//! environment variable, in seconds, shortens it for tests). A [`Lane`] is one
//! connection split in two: a [`FrameReader`] owned by the thread that reads
//! it, and a [`FrameSender`] that any thread may send whole frames through.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

use crate::aead::TAG_LEN;
use crate::auth::Cipher;
use crate::error::{Error, Result};
use crate::proto::{self, Frame, HEADER_LEN, PREAMBLE, PREAMBLE_MAGIC};
use crate::sys;

/// Keep-alive idle time and interval.
pub const KEEPALIVE: Duration = Duration::from_secs(30);
/// Socket buffer size asked for.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// The deadline of every blocking network operation.
pub fn io_timeout() -> Duration {
    std::env::var("BSYNC_IO_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|&s| s > 0)
        .map_or(Duration::from_secs(300), Duration::from_secs)
}

/// Apply keep-alive, buffers and deadlines; each is best effort except the
/// deadlines, without which a dead peer could hang us.
pub fn configure(stream: &TcpStream, peer: &str) -> Result<()> {
    let _ = stream.set_nodelay(true);
    let _ = sys::set_keepalive(stream, KEEPALIVE);
    let _ = sys::set_socket_buffers(stream, SOCKET_BUFFER);
    let t = Some(io_timeout());
    stream
        .set_read_timeout(t)
        .and_then(|()| stream.set_write_timeout(t))
        .map_err(|e| Error::io(peer, "set deadlines", e))
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

/// Send our preamble and check the peer's: same protocol version or a clear
/// error naming both versions.
pub fn exchange_preamble(stream: &mut TcpStream, peer: &str) -> Result<()> {
    stream
        .write_all(PREAMBLE)
        .map_err(|e| net_error(peer, "handshake", e))?;
    let mut theirs = [0u8; PREAMBLE.len()];
    stream
        .read_exact(&mut theirs)
        .map_err(|e| net_error(peer, "handshake", e))?;
    if &theirs == PREAMBLE {
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
                crate::cli::PROTOCOL_VERSION
            ),
        ));
    }
    Err(Error::protocol(peer, "not a bsync peer (bad preamble)"))
}

/// Reads frames from one connection into a reused buffer, opening sealed
/// frames once the connection is encrypted.
pub struct FrameReader {
    stream: TcpStream,
    buf: Vec<u8>,
    max: usize,
    cipher: Option<Cipher>,
    /// Who is on the other end, for messages.
    pub peer: String,
}

impl FrameReader {
    /// A reader accepting payloads up to `max` bytes.
    pub fn new(stream: TcpStream, peer: String, max: usize) -> FrameReader {
        FrameReader {
            stream,
            buf: Vec::new(),
            max,
            cipher: None,
            peer,
        }
    }

    /// Raise the payload limit once the session parameters are agreed.
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// Read the next frame. `phase` names what we wait for, for errors.
    pub fn read(&mut self, phase: &str) -> Result<Frame<'_>> {
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
            let (head, rest) = self.buf.split_at_mut(HEADER_LEN);
            let Some((payload, tag)) = rest.split_last_chunk_mut::<TAG_LEN>() else {
                return Err(Error::protocol(
                    &self.peer,
                    "sealed frame shorter than its tag",
                ));
            };
            let plain = payload.len();
            cipher.open(head, payload, tag).map_err(|_| {
                Error::protocol(
                    &self.peer,
                    "a sealed frame failed authentication \
                     (altered, replayed, reordered or after a dropped one)",
                )
            })?;
            head[1..].copy_from_slice(&(plain as u32).to_le_bytes());
            self.buf.truncate(HEADER_LEN + plain);
        }
        match proto::decode(&self.buf, self.max) {
            Ok(Some((frame, _))) => Ok(frame),
            Ok(None) => Err(Error::protocol(&self.peer, "incomplete frame")),
            Err(e) => Err(Error::protocol(&self.peer, e.to_string())),
        }
    }
}

/// The sending half of a connection: its socket and, once encrypted, the
/// sealing state, locked together so that counters follow wire order.
struct SendHalf {
    stream: TcpStream,
    cipher: Option<Cipher>,
}

/// Sends whole frames on one connection; safe to share between threads.
pub struct FrameSender {
    half: Mutex<SendHalf>,
    /// Who is on the other end, for messages.
    pub peer: String,
}

impl FrameSender {
    /// A sender on `stream`.
    pub fn new(stream: TcpStream, peer: String) -> FrameSender {
        FrameSender {
            half: Mutex::new(SendHalf {
                stream,
                cipher: None,
            }),
            peer,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SendHalf> {
        self.half.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Send bytes holding one or more complete frames. On an encrypted
    /// connection they are sealed in place, so `frames` holds ciphertext
    /// afterwards.
    pub fn send(&self, frames: &mut [u8]) -> Result<()> {
        let mut half = self.lock();
        let SendHalf { stream, cipher } = &mut *half;
        let sent = match cipher {
            None => stream.write_all(frames),
            Some(cipher) => seal_and_write(stream, cipher, frames),
        };
        sent.map_err(|e| net_error(&self.peer, "send", e))
    }

    /// Encode and send one frame.
    pub fn send_frame(&self, frame: &Frame<'_>) -> Result<()> {
        let mut buf = Vec::new();
        proto::encode(frame, &mut buf);
        self.send(&mut buf)
    }

    /// Tell the peer why we give up (best effort) and close.
    pub fn fail(&self, msg: &str) {
        let _ = self.send_frame(&Frame::Error(msg));
        self.shutdown();
    }

    /// Send on a new connection (and its keys) from now on, after a reconnect.
    pub fn replace(&self, other: FrameSender) {
        *self.lock() = other.half.into_inner().unwrap_or_else(|e| e.into_inner());
    }

    /// Close both directions, waking a thread blocked reading it.
    pub fn shutdown(&self) {
        let _ = self.lock().stream.shutdown(Shutdown::Both);
    }
}

/// Seal each frame of `frames` and write it as header (with the sealed
/// length), ciphertext and tag, without copying the payload.
fn seal_and_write(
    stream: &mut TcpStream,
    cipher: &mut Cipher,
    frames: &mut [u8],
) -> io::Result<()> {
    let mut rest = frames;
    while !rest.is_empty() {
        let Some(header) = rest.first_chunk::<HEADER_LEN>() else {
            return Err(io::Error::other("internal error: a partial frame to seal"));
        };
        let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
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
fn write_all_vectored(stream: &mut TcpStream, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
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
    pub sender: std::sync::Arc<FrameSender>,
}

impl Lane {
    /// Hand this lane's halves over to an existing lane's reader and sender.
    pub fn take_over(self, reader: &mut FrameReader, sender: &FrameSender) {
        let max = reader.max;
        *reader = self.reader;
        reader.max = max;
        match std::sync::Arc::try_unwrap(self.sender) {
            Ok(s) => sender.replace(s),
            // Never shared before it is handed over; keep the old sender.
            Err(_) => sender.shutdown(),
        }
    }

    /// Seal every frame sent and open every frame read from now on.
    pub fn encrypt(&mut self, send: Cipher, receive: Cipher) {
        self.reader.cipher = Some(receive);
        self.sender.lock().cipher = Some(send);
    }

    /// Split a configured, handshaken stream.
    pub fn new(stream: TcpStream, peer: String, max: usize) -> Result<Lane> {
        let write_half = stream
            .try_clone()
            .map_err(|e| Error::io(&peer, "clone socket", e))?;
        Ok(Lane {
            reader: FrameReader::new(stream, peer.clone(), max),
            sender: std::sync::Arc::new(FrameSender::new(write_half, peer)),
        })
    }
}
