//! A session over a pair of pipes: this process's stdin and stdout
//! (`bsync --server`), or a remote shell's (`bsync REMSHCMD LOCDEV REMDEV`,
//! and `-t` when the remote's port cannot be reached).
//!
//! [`PipeStream`] is a [`Stream`] whose reading half is one file descriptor
//! and whose writing half another. Pipes have no socket timeouts, so every
//! read and write first waits with `poll` under the session's deadline
//! (`sys::wait_ready`); `shutdown` closes the writing half, so the peer sees
//! the end, and wakes a reader of this side within a fifth of a second.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use crate::config::Role;
use crate::error::{Error, Result};
use crate::lock::lock;
use crate::net::Stream;
use crate::sys;

/// How often a blocked reader looks whether the stream was shut down.
const WAKE: Duration = Duration::from_millis(200);

/// What the clones of one stream share.
#[derive(Debug)]
struct Shared {
    read: File,
    /// Shared with a writer only for the length of one write, so that
    /// `shutdown` never waits behind one.
    write: Mutex<Option<Arc<File>>>,
    closed: AtomicBool,
    /// The deadline of one read or write, in milliseconds.
    deadline_ms: AtomicU64,
    /// Bytes read ahead and given back, served before the descriptor.
    unread: Mutex<Vec<u8>>,
}

/// Reading from one descriptor, writing to another.
#[derive(Debug, Clone)]
pub struct PipeStream(Arc<Shared>);

impl PipeStream {
    /// A stream reading `read` and writing `write`.
    pub fn new(read: OwnedFd, write: OwnedFd) -> PipeStream {
        PipeStream(Arc::new(Shared {
            read: File::from(read),
            write: Mutex::new(Some(Arc::new(File::from(write)))),
            closed: AtomicBool::new(false),
            deadline_ms: AtomicU64::new(u64::MAX),
            unread: Mutex::new(Vec::new()),
        }))
    }

    /// Give `bytes` back: the next reads return them first.
    pub fn unread(&self, bytes: &[u8]) {
        let mut unread = lock(&self.0.unread);
        let rest = std::mem::take(&mut *unread);
        unread.extend_from_slice(bytes);
        unread.extend_from_slice(&rest);
    }

    /// This process's stdin and stdout. Descriptor 1 is then pointed at
    /// stderr, so a stray print cannot corrupt the protocol.
    pub fn stdio() -> io::Result<PipeStream> {
        let read = io::stdin().as_fd().try_clone_to_owned()?;
        let write = io::stdout().as_fd().try_clone_to_owned()?;
        sys::stdout_to_stderr()?;
        Ok(PipeStream::new(read, write))
    }

    fn deadline(&self) -> Duration {
        Duration::from_millis(self.0.deadline_ms.load(Ordering::Relaxed))
    }

    fn closed(&self) -> bool {
        self.0.closed.load(Ordering::Acquire)
    }
}

impl Read for PipeStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        {
            let mut unread = lock(&self.0.unread);
            if !unread.is_empty() {
                let n = buf.len().min(unread.len());
                buf[..n].copy_from_slice(&unread[..n]);
                unread.drain(..n);
                return Ok(n);
            }
        }
        let start = Instant::now();
        let limit = self.deadline();
        loop {
            if self.closed() {
                return Ok(0);
            }
            let left = limit.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            if sys::wait_ready(self.0.read.as_fd(), false, left.min(WAKE))? {
                return (&self.0.read).read(buf);
            }
        }
    }
}

/// The most one write puts into the pipe: a pipe that polls writable has
/// room for this much, so the write cannot block (POSIX's `PIPE_BUF`).
const PIECE: usize = 4096;

impl Write for PipeStream {
    /// Writes at most [`PIECE`] bytes once the pipe has room, waiting for
    /// that under the deadline; a shutdown ends the wait within [`WAKE`].
    /// (`write_all` then writes a frame piece by piece, polling between.)
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let start = Instant::now();
        let limit = self.deadline();
        let Some(file) = lock(&self.0.write).clone() else {
            return Err(io::ErrorKind::BrokenPipe.into());
        };
        loop {
            if self.closed() {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            let left = limit.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            if sys::wait_ready(file.as_fd(), true, left.min(WAKE))? {
                match (&*file).write(&buf[..buf.len().min(PIECE)]) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    done => return done,
                }
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream for PipeStream {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(self.clone())
    }

    fn shutdown(&self) -> io::Result<()> {
        self.0.closed.store(true, Ordering::Release);
        // Closing our end is what tells the peer we are done.
        drop(lock(&self.0.write).take());
        Ok(())
    }

    fn set_deadline(&self, limit: Duration) -> io::Result<()> {
        let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1);
        self.0.deadline_ms.store(ms, Ordering::Relaxed);
        Ok(())
    }
}

/// The first line a bdsync-style client sends to `bsync --server` without
/// `-f`, before the preamble: which device to open, and as which role. A
/// remote shell login already lets the client open what it likes, so the
/// server takes the path as given (bdsync does the same).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenRequest {
    /// The role the server takes.
    pub role: Role,
    /// The block size, for a server that is the source.
    pub block_size: usize,
    /// The device or file to open on the server.
    pub path: PathBuf,
}

const OPEN_MAGIC: &str = "bsync-open 1";
const OPEN_MAX: usize = 8192;

impl OpenRequest {
    /// The request as one line: magic, role, block size, hex path.
    pub fn encode(&self) -> Vec<u8> {
        let role = match self.role {
            Role::Source => "source",
            Role::Destination => "destination",
        };
        let hex: String = self
            .path
            .as_os_str()
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{OPEN_MAGIC} {role} {} {hex}\n", self.block_size).into_bytes()
    }

    /// Read the request off `r` one byte at a time, so nothing after it is
    /// taken from the stream.
    pub fn read(r: &mut impl Read, peer: &str) -> Result<OpenRequest> {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        loop {
            let n = r
                .read(&mut b)
                .map_err(|e| crate::net::net_error(peer, "the open request", e))?;
            if n == 0 {
                return Err(Error::Closed {
                    peer: peer.into(),
                    phase: "the open request".into(),
                });
            }
            if b[0] == b'\n' {
                break;
            }
            line.push(b[0]);
            if line.len() > OPEN_MAX {
                return Err(Error::protocol(peer, "open request too long"));
            }
        }
        Self::parse(&line).ok_or_else(|| {
            Error::protocol(
                peer,
                "not a bsync open request (bsync --server without -f expects a \
                 client that names the device, such as bsync REMSHCMD LOCDEV REMDEV)",
            )
        })
    }

    /// The request, if the client sent one (bdsync's client form does;
    /// `-t` inside ssh starts with the preamble instead, which is given
    /// back to the stream untouched).
    pub fn read_if_sent(stream: &mut PipeStream, peer: &str) -> Result<Option<OpenRequest>> {
        let mut first = [0u8; 1];
        let n = stream
            .read(&mut first)
            .map_err(|e| crate::net::net_error(peer, "the open request", e))?;
        stream.unread(&first[..n]);
        if n == 0 || first[0] != OPEN_MAGIC.as_bytes()[0] {
            return Ok(None);
        }
        Self::read(stream, peer).map(Some)
    }

    /// Whether the request names `path`: the same name, or the same file
    /// or device by another name.
    pub fn names(&self, path: &std::path::Path) -> bool {
        self.path == path || crate::disk::same_file(&self.path, path)
    }

    fn parse(line: &[u8]) -> Option<OpenRequest> {
        let line = std::str::from_utf8(line).ok()?;
        let rest = line.strip_prefix(OPEN_MAGIC)?.strip_prefix(' ')?;
        let mut words = rest.split(' ');
        let role = match words.next()? {
            "source" => Role::Source,
            "destination" => Role::Destination,
            _ => return None,
        };
        let block_size = words.next()?.parse().ok()?;
        let hex = words.next()?;
        if words.next().is_some() || hex.is_empty() || hex.len() % 2 != 0 {
            return None;
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        Some(OpenRequest {
            role,
            block_size,
            path: PathBuf::from(std::ffi::OsString::from_vec(bytes)),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn open_request_round_trips_any_path() {
        let req = OpenRequest {
            role: Role::Destination,
            block_size: 4096,
            path: PathBuf::from("/dev/my disk\n'$x"),
        };
        let mut bytes = req.encode();
        bytes.extend_from_slice(b"BSYNC");
        let mut r = &bytes[..];
        assert_eq!(OpenRequest::read(&mut r, "t").unwrap(), req);
        assert_eq!(r, b"BSYNC");
        let mut bad = &b"GET / HTTP/1.0\n"[..];
        assert!(OpenRequest::read(&mut bad, "t").is_err());
    }

    use super::*;
    use std::os::unix::net::UnixStream;

    fn pair() -> (PipeStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        let r = OwnedFd::from(a.try_clone().unwrap());
        let w = OwnedFd::from(a);
        (PipeStream::new(r, w), b)
    }

    #[test]
    fn reads_and_writes_through_the_two_descriptors() {
        let (mut s, mut peer) = pair();
        s.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        peer.write_all(b"pong").unwrap();
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pong");
    }

    #[test]
    fn a_silent_peer_times_out() {
        let (mut s, _peer) = pair();
        s.set_deadline(Duration::from_millis(50)).unwrap();
        let mut b = [0u8; 1];
        let e = s.read(&mut b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    /// A peer that stops reading: `write_all` gives up at the deadline,
    /// and `shutdown` does not wait for it. The writer runs on a thread
    /// the test waits for only so long, so a hang fails the test.
    #[test]
    fn a_stuck_write_ends_at_the_deadline_and_never_holds_up_shutdown() {
        let (s, _peer) = pair();
        s.set_deadline(Duration::from_millis(300)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut w = s.clone();
        std::thread::spawn(move || {
            let _ = tx.send(w.write_all(&vec![7u8; 8 << 20]).map_err(|e| e.kind()));
        });
        let got = rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(got, Ok(Err(io::ErrorKind::TimedOut)));

        s.set_deadline(Duration::from_secs(60)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut w = s.clone();
        std::thread::spawn(move || {
            let _ = tx.send(w.write_all(&vec![7u8; 8 << 20]).map_err(|e| e.kind()));
        });
        std::thread::sleep(Duration::from_millis(100));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let s2 = s.clone();
        std::thread::spawn(move || {
            let _ = done_tx.send(s2.shutdown().is_ok());
        });
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(5)), Ok(true));
        let got = rx.recv_timeout(Duration::from_secs(5));
        assert_eq!(got, Ok(Err(io::ErrorKind::BrokenPipe)));
    }

    #[test]
    fn shutdown_wakes_a_reader_and_ends_writes() {
        let (s, _peer) = pair();
        let mut r = s.clone();
        let t = std::thread::spawn(move || {
            let mut b = [0u8; 1];
            r.read(&mut b).unwrap()
        });
        std::thread::sleep(Duration::from_millis(50));
        s.shutdown().unwrap();
        assert_eq!(t.join().unwrap(), 0);
        let mut w = s.clone();
        assert!(w.write(b"x").is_err());
    }
}
