//! bdsync's `--remdata`: an undo patch made by the client, holding the
//! remote device's current data for every range where it differs from the
//! local one, so that after the forward patch is applied this one puts the
//! remote back.
//!
//! It runs a download session through the remote shell: the remote device
//! is the source, the local device a destination opened read-only whose
//! writes are captured (`disk::Capture`) instead of made. The writer hands
//! over the remote's data in offset order; the capture reads what the local
//! device holds there (the content the forward patch leaves behind), and
//! records both digests and the remote's bytes.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use super::format::{self, Kind, Range, Trailer};
use super::make::Output;
use super::session_header;
use crate::block::is_zero;
use crate::config::{Config, RemoteShell, Role};
use crate::disk::{Capture, Disk};
use crate::error::{Error, Result};
use crate::lock::lock;
use crate::log::Log;
use crate::net::Stream;
use crate::progress::human_bytes;
use crate::session::Params;
use crate::stdio::{OpenRequest, PipeStream};
use crate::{client, compress::Compressor};

/// Takes the captured writes and writes undo records.
struct UndoCapture {
    inner: Mutex<Inner>,
    /// The session's parameters, once agreed.
    params: OnceLock<Params>,
}

struct Inner {
    /// Encoded records, written once the header can be (the salt is known
    /// only after the handshake, so the capture is made then).
    out: Box<dyn Write + Send>,
    compressor: Compressor,
    trailer: Trailer,
    buf: Vec<u8>,
}

impl std::fmt::Debug for UndoCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UndoCapture")
    }
}

impl Capture for UndoCapture {
    fn write(
        &self,
        disk: &Disk,
        offset: u64,
        data: Option<&[u8]>,
        len: u64,
    ) -> std::io::Result<()> {
        let salt = self.params.get().map_or(0, |p| p.salt);
        let page = self.params.get().map_or(crate::proto::PAGE, |p| {
            p.range_size() / crate::proto::RANGE_PAGES
        });
        let mut g = lock(&self.inner);
        let inner = &mut *g;
        let n = usize::try_from(len).map_err(std::io::Error::other)?;
        inner.buf.clear();
        inner.buf.resize(n, 0);
        disk.read_at(&mut inner.buf, offset)?;
        let zeros;
        let new: &[u8] = match data {
            Some(d) => d,
            None => {
                zeros = vec![0u8; n];
                &zeros
            }
        };
        let zero = data.is_none() || is_zero(new);
        let range = Range {
            start: 0,
            len: u32::try_from(n).map_err(std::io::Error::other)?,
            zero,
            before: crate::proto::range_digest_of(salt, &inner.buf, page),
            after: crate::proto::range_digest_of(salt, new, page),
        };
        let raw: &[u8] = if zero { &[] } else { new };
        let mut stored = Vec::new();
        let compressed = inner.compressor.append(std::iter::once(raw), &mut stored);
        let mut rec = Vec::new();
        let raw_len = u32::try_from(raw.len()).map_err(std::io::Error::other)?;
        let check = format::encode_record(offset, &[range], raw_len, compressed, &stored, &mut rec);
        inner.trailer.records += 1;
        inner.trailer.ranges += 1;
        inner.trailer.data_bytes += raw.len() as u64;
        inner.trailer.chain = format::chain(inner.trailer.chain, check);
        inner.out.write_all(&rec)
    }
}

/// `bsync --remdata REMSHCMD LOCDEV REMDEV > UNDO`.
pub fn run(r: &RemoteShell, config: &Config, log: &Log) -> Result<()> {
    let (child, mut stream, peer) = crate::child::sh(&r.command)?;
    let started = std::cell::Cell::new(false);
    let session = undo_session(r, config, log, &peer, &mut stream, &started);
    let _ = stream.shutdown();
    crate::child::reap(child, &peer, session, started.get())
}

/// The undo session over `stream`; `started` is set once its handshake
/// is done.
fn undo_session(
    r: &RemoteShell,
    config: &Config,
    log: &Log,
    peer: &str,
    stream: &mut PipeStream,
    started: &std::cell::Cell<bool>,
) -> Result<()> {
    stream
        .set_deadline(config.env.io_timeout)
        .map_err(|e| Error::io(peer, "set deadlines", e))?;
    let req = OpenRequest {
        role: Role::Source,
        block_size: config.transfer.block_size,
        path: r.remote.clone().into(),
    };
    stream
        .write_all(&req.encode())
        .map_err(|e| crate::net::net_error(peer, "the open request", e))?;
    let mut disk = Disk::open_dry(&r.local, &config.env, log)?;
    // Records wait in memory until the session's salt and the remote's size,
    // which the header holds, are known: an undo patch holds only what
    // differs.
    let records: Arc<Mutex<Vec<u8>>> = Arc::default();
    let capture = Arc::new(UndoCapture {
        inner: Mutex::new(Inner {
            out: Box::new(SharedVec(Arc::clone(&records))),
            compressor: Compressor::new(config.transfer.compression),
            trailer: Trailer {
                records: 0,
                ranges: 0,
                data_bytes: 0,
                result: 0,
                chain: 0,
            },
            buf: Vec::new(),
        }),
        params: OnceLock::new(),
    });
    disk.capture_writes(Arc::clone(&capture) as Arc<dyn Capture>);
    let on_params = |p: &Params| {
        started.set(true);
        let _ = capture.params.set(*p);
    };
    // The session's verification digest is the remote's content digest
    // under the session's salt and grain: the undo patch's result.
    let pipe = client::Pipe {
        peer,
        role: Role::Destination,
        dry: None,
        on_params: Some(&on_params),
        to: None,
        in_ssh: false,
    };
    let result = client::connect_pipe(
        stream.clone(),
        &pipe,
        &mut disk,
        &config.transfer,
        &config.env,
        log,
    )?;
    let p = *capture
        .params
        .get()
        .ok_or_else(|| Error::Failed("undo patch: the session never started".into()))?;
    let inner = lock(&capture.inner);
    let mut head = Vec::new();
    format::encode_header(
        &session_header(Kind::Undo, &p, r.remote.as_bytes().to_vec()),
        &mut head,
    );
    let mut trailer = inner.trailer;
    trailer.result = result;
    let body = lock(&records);
    let mut tail = Vec::new();
    format::encode_trailer(&trailer, &mut tail);
    let Output { mut writer, .. } = Output::open(None)?;
    writer
        .write_all(&head)
        .and_then(|()| writer.write_all(&body))
        .and_then(|()| writer.write_all(&tail))
        .and_then(|()| writer.flush())
        .map_err(|e| Error::io("undo patch on stdout", "write", e))?;
    log.info(format!(
        "undo patch on stdout: {} ranges, {} of the remote's data",
        trailer.ranges,
        human_bytes(trailer.data_bytes)
    ));
    Ok(())
}

/// A `Write` into a shared buffer.
struct SharedVec(Arc<Mutex<Vec<u8>>>);

impl Write for SharedVec {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
