//! The two roles against each other in one process, over Unix socket pairs:
//! no binary, no TCP, milliseconds a case. A relay thread between the roles
//! can cut a lane or flip a byte on its way; a peer can fall silent.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::{NoRejoin, Params, Rejoin, destination, source};
use crate::aead::Key;
use crate::auth::{Direction, Handshake, Secret};
use crate::block::Geometry;
use crate::compress::Level;
use crate::config::{DIGEST_PIECE, Env};
use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::lock::{lock, wait_timeout};
use crate::log::Log;
use crate::net::{Lane, Stream};
use crate::progress::Stats;
use crate::proto;

/// Deadline of every test stream: short, so a silent peer is found fast.
const DEADLINE: Duration = Duration::from_secs(2);
const BLOCK: usize = 256 << 10;

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "bsync-session-{name}-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, data).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fastrand::Rng::with_seed(seed).fill(&mut v);
    v
}

/// Lanes on both ends of `stream`s that are already joined, opened in
/// parallel since each side waits for the other's preamble, and tagged as
/// after a handshake without a key (`KEY`: with one).
fn open_both<S: Stream>(a: S, b: S) -> (Lane, Lane) {
    let (mut near, mut far) = thread::scope(|s| {
        let far = s.spawn(move || Lane::open(b, "destination".into(), DEADLINE));
        let near = Lane::open(a, "source".into(), DEADLINE).unwrap();
        (near, far.join().unwrap().unwrap())
    });
    let secret = KEY
        .with(|k| k.get())
        .map(|k| Secret::new(Key::from_bytes(k), true));
    let hello = proto::Hello {
        session: 1,
        lane: 0,
        lanes: 1,
        download: false,
        block_size: 4096,
        skip: 0,
        source_size: 0,
        compression: 0,
        flags: Secret::flags(secret.as_ref()),
        nonce: fastrand::u128(..).to_le_bytes(),
    };
    let hs = Handshake::new(
        secret.as_ref(),
        &fastrand::u128(..).to_le_bytes(),
        0,
        &hello,
    );
    near.protect(hs.cipher(Direction::Up), hs.cipher(Direction::Down));
    far.protect(hs.cipher(Direction::Down), hs.cipher(Direction::Up));
    (near, far)
}

thread_local! {
    /// The key lanes opened on this thread are sealed under, if any.
    static KEY: std::cell::Cell<Option<[u8; 32]>> = const { std::cell::Cell::new(None) };
}

fn raise_max(lane: &mut Lane) {
    lane.reader.set_max(proto::max_payload(BLOCK));
}

/// A lane's two ends joined directly: (source's, destination's).
fn direct() -> (Lane, Lane) {
    let (a, b) = UnixStream::pair().unwrap();
    let (mut s, mut d) = open_both(a, b);
    raise_max(&mut s);
    raise_max(&mut d);
    (s, d)
}

/// What a relay does to the bytes going one way.
#[derive(Clone, Copy)]
enum Fault {
    /// Close both directions after this many bytes from the source.
    Cut(usize),
    /// Close both directions after this many bytes from the destination
    /// (where the digests travel).
    CutBack(usize),
    /// Invert the byte at this offset from the source.
    Flip(usize),
    /// Hold back the destination's first `Ack` and all that follow; once
    /// the source has sent nothing for a while (its budget in flight spent
    /// on blocks written long ago), close both directions.
    LoseAcks,
    /// Close both directions as the destination's `Complete` comes, before
    /// it passes.
    CutAtComplete,
}

/// Bytes a relay forwarded: (source to destination, destination to source).
#[derive(Debug, Default)]
struct Counted {
    up: AtomicUsize,
    back: AtomicUsize,
}

/// A lane through a relay thread that applies `fault`: (source's end,
/// destination's end).
fn relayed(fault: Fault) -> (Lane, Lane) {
    relay(Some(fault), Arc::default())
}

/// A lane through a relay that only counts what passes.
fn counted(count: &Arc<Counted>) -> (Lane, Lane) {
    relay(None, Arc::clone(count))
}

fn relay(fault: Option<Fault>, count: Arc<Counted>) -> (Lane, Lane) {
    let (src, relay_a) = UnixStream::pair().unwrap();
    let (relay_b, dst) = UnixStream::pair().unwrap();
    let (a2, b2) = (relay_a.try_clone().unwrap(), relay_b.try_clone().unwrap());
    let c2 = Arc::clone(&count);
    match fault {
        Some(Fault::LoseAcks) => {
            thread::spawn(move || buffer_all(relay_a, relay_b, &count.up));
            let quiet = Duration::from_millis(300);
            thread::spawn(move || hold_back(b2, a2, &c2, (6, quiet))); // Ack
        }
        Some(Fault::CutAtComplete) => {
            thread::spawn(move || forward(relay_a, relay_b, None, &count.up));
            thread::spawn(move || hold_back(b2, a2, &c2, (7, Duration::ZERO))); // Complete
        }
        _ => {
            let (up, back) = match fault {
                Some(Fault::CutBack(at)) => (None, Some(Fault::Cut(at))),
                other => (other, None),
            };
            thread::spawn(move || forward(relay_a, relay_b, up, &count.up));
            thread::spawn(move || forward(b2, a2, back, &c2.back));
        }
    }
    let (mut s, mut d) = open_both(src, dst);
    // Blocks up to 1 MiB.
    s.reader.set_max(proto::max_payload(1 << 20));
    d.reader.set_max(proto::max_payload(1 << 20));
    (s, d)
}

/// Copy `from` to `to` until either ends, applying `fault`, counting.
fn forward(mut from: UnixStream, mut to: UnixStream, fault: Option<Fault>, count: &AtomicUsize) {
    let mut buf = [0u8; 8192];
    let mut total = 0usize;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &mut buf[..n];
        match fault {
            Some(Fault::Cut(at)) if total + n >= at => {
                let _ = to.write_all(&chunk[..at - total]);
                break;
            }
            Some(Fault::Flip(at)) if (total..total + n).contains(&at) => {
                chunk[at - total] ^= 0xff;
            }
            _ => {}
        }
        total += n;
        count.fetch_add(n, Ordering::Relaxed);
        if to.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = Stream::shutdown(&from);
    let _ = Stream::shutdown(&to);
}

/// Forward everything from the source, reading it as fast as it comes
/// whatever the destination takes, as a long path's buffers would.
fn buffer_all(from: UnixStream, mut to: UnixStream, count: &AtomicUsize) {
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    thread::scope(|s| {
        s.spawn(move || {
            while let Ok(chunk) = rx.recv() {
                if to.write_all(&chunk).is_err() {
                    break;
                }
            }
            let _ = Stream::shutdown(&to);
        });
        let mut from = from;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            count.fetch_add(n, Ordering::Relaxed);
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
        drop(tx);
        let _ = Stream::shutdown(&from);
    });
}

/// Forward the destination's frames to the source until the first of
/// type `kind`, then hold back that one and all that follow (frames are
/// tagged in sequence: one dropped fails the rest); once the source has
/// sent nothing for `quiet`, close both ends.
fn hold_back(
    mut from: UnixStream,
    mut to: UnixStream,
    count: &Counted,
    (kind, quiet): (u8, Duration),
) {
    from.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut pending = Vec::new();
    let mut buf = [0u8; 8192];
    // The preamble, then frames: type u8, length u32, payload.
    let mut preamble = proto::PREAMBLE.len();
    let mut held = false;
    let (mut up, mut quiet_since) = (0, Instant::now());
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
        let now_up = count.up.load(Ordering::Relaxed);
        if now_up != up {
            (up, quiet_since) = (now_up, Instant::now());
        } else if held && quiet_since.elapsed() >= quiet {
            break;
        }
        let mut ready = preamble.min(pending.len());
        preamble -= ready;
        while preamble == 0 && !held && pending.len() >= ready + 5 {
            let header = &pending[ready..ready + 5];
            let len = u32::from_le_bytes(header[1..5].try_into().unwrap()) as usize;
            held = header[0] == kind;
            if held || pending.len() < ready + 5 + len {
                break;
            }
            ready += 5 + len;
        }
        if held && quiet.is_zero() {
            let _ = to.write_all(&pending[..ready]);
            break;
        }
        if to.write_all(&pending[..ready]).is_err() {
            break;
        }
        pending.drain(..ready);
    }
    let _ = Stream::shutdown(&from);
    let _ = Stream::shutdown(&to);
}

/// The one-way trips on the critical path of what crossed a delay line:
/// a chunk read from one end goes one trip beyond the last chunk that end
/// was handed, so the highest count is the longest chain of messages each
/// sent in answer to the one before. Unlike a time, slow threads add
/// nothing unless they make an answer wait for the next message.
#[derive(Default)]
struct Trips {
    /// Highest trip handed to the destination and to the source.
    to_dst: AtomicU64,
    to_src: AtomicU64,
}

impl Trips {
    fn most(&self) -> u64 {
        self.to_dst
            .load(Ordering::SeqCst)
            .max(self.to_src.load(Ordering::SeqCst))
    }
}

/// A lane through a relay that delays every byte by `delay` each way
/// without limiting throughput, like a long link, counting `trips`:
/// (source's end, destination's end).
fn delayed(delay: Duration, trips: &Arc<Trips>) -> (Lane, Lane) {
    let (src, relay_a) = UnixStream::pair().unwrap();
    let (relay_b, dst) = UnixStream::pair().unwrap();
    let (a2, b2) = (relay_a.try_clone().unwrap(), relay_b.try_clone().unwrap());
    let (t1, t2) = (Arc::clone(trips), Arc::clone(trips));
    thread::spawn(move || delay_line(relay_a, relay_b, delay, &t1.to_src, &t1.to_dst));
    thread::spawn(move || delay_line(b2, a2, delay, &t2.to_dst, &t2.to_src));
    let (mut s, mut d) = open_both(src, dst);
    // Blocks up to 1 MiB.
    s.reader.set_max(proto::max_payload(1 << 20));
    d.reader.set_max(proto::max_payload(1 << 20));
    (s, d)
}

/// Copy `from` to `to`, each chunk `delay` after it arrived: a reader
/// stamps chunks, a writer sends them when due, so any amount of data can
/// be in flight. A chunk counts one trip more than `from`'s end was
/// handed (`seen`); `to`'s end is handed the highest count (`handed`).
fn delay_line(
    mut from: UnixStream,
    mut to: UnixStream,
    delay: Duration,
    seen: &AtomicU64,
    handed: &AtomicU64,
) {
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, u64, Vec<u8>)>();
    thread::scope(|s| {
        s.spawn(move || {
            for (due, trip, chunk) in rx {
                thread::sleep(due.saturating_duration_since(Instant::now()));
                if to.write_all(&chunk).is_err() {
                    break;
                }
                handed.fetch_max(trip, Ordering::SeqCst);
            }
            let _ = Stream::shutdown(&to);
        });
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let trip = seen.load(Ordering::SeqCst) + 1;
            if tx
                .send((Instant::now() + delay, trip, buf[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
        drop(tx);
    });
    let _ = Stream::shutdown(&from);
}

/// Rejoins lost lanes with fresh direct pairs: the dialing end makes the
/// pair and leaves the other half where the waiting end picks it up, as a
/// client and a server do over TCP.
#[derive(Default)]
struct Pairs {
    slots: Mutex<HashMap<usize, Lane>>,
    arrived: Condvar,
    /// Lanes dialed again.
    dialed: AtomicUsize,
    /// Waits for a lane that ran out of time, not stopped.
    timed_out: AtomicUsize,
}

struct Dialer<'a>(&'a Pairs);
struct Waiter<'a>(&'a Pairs);

impl Rejoin for Dialer<'_> {
    fn rejoin(&self, lane: usize, _stop: &dyn Fn() -> bool) -> Result<Lane> {
        let (ours, theirs) = direct();
        self.0.dialed.fetch_add(1, Ordering::Relaxed);
        lock(&self.0.slots).insert(lane, theirs);
        self.0.arrived.notify_all();
        Ok(ours)
    }
}

impl Rejoin for Waiter<'_> {
    fn rejoin(&self, lane: usize, stop: &dyn Fn() -> bool) -> Result<Lane> {
        let deadline = Instant::now() + DEADLINE;
        let mut slots = lock(&self.0.slots);
        loop {
            if let Some(l) = slots.remove(&lane) {
                return Ok(l);
            }
            let (now, stopped) = (Instant::now(), stop());
            if stopped || now >= deadline {
                if !stopped {
                    self.0.timed_out.fetch_add(1, Ordering::Relaxed);
                }
                return Err(Error::Failed(format!("lane {lane} did not come back")));
            }
            slots = wait_timeout(&self.0.arrived, slots, deadline - now);
        }
    }

    fn wake(&self) {
        drop(lock(&self.0.slots));
        self.0.arrived.notify_all();
    }
}

fn params(size: u64, workers: usize, compression: Option<Level>) -> Params {
    params_bs(size, BLOCK, workers, compression)
}

fn params_bs(size: u64, block_size: usize, workers: usize, compression: Option<Level>) -> Params {
    Params {
        geo: Geometry { size, block_size },
        first: 0,
        salt: 0x5eed,
        compression,
        workers,
        prefetch: workers * 4,
        deadline: DEADLINE,
        encrypted: false,
        bwlimit: None,
    }
}

/// Both roles over `lanes`; (source's outcome, destination's outcome).
fn sync(
    src: &Path,
    dst: &Path,
    p: &Params,
    lanes: Vec<(Lane, Lane)>,
    rejoin: (&dyn Rejoin, &dyn Rejoin),
) -> (Result<u128>, Result<u128>) {
    let (s, d, _) = sync_stats(src, dst, p, lanes, rejoin);
    (s, d)
}

/// [`sync`], also returning both ends' counters: (source's, destination's).
fn sync_stats(
    src: &Path,
    dst: &Path,
    p: &Params,
    lanes: Vec<(Lane, Lane)>,
    rejoin: (&dyn Rejoin, &dyn Rejoin),
) -> (Result<u128>, Result<u128>, (Stats, Stats)) {
    let (env, log) = (Env::default(), Log::default());
    let source_disk = Disk::open_source(src, &env, &log).unwrap();
    let mut dest_disk = Disk::open_destination(dst, &env, &log).unwrap();
    dest_disk.fit_to(p.geo.size).unwrap();
    sync_disks(&source_disk, &dest_disk, p, lanes, rejoin)
}

/// [`sync_stats`] between disks already open (the destination's sized).
fn sync_disks(
    source_disk: &Disk,
    dest_disk: &Disk,
    p: &Params,
    lanes: Vec<(Lane, Lane)>,
    rejoin: (&dyn Rejoin, &dyn Rejoin),
) -> (Result<u128>, Result<u128>, (Stats, Stats)) {
    let (ours, theirs): (Vec<_>, Vec<_>) = lanes.into_iter().unzip();
    let (stats_s, stats_d) = (Stats::default(), Stats::default());
    let (s, d) = thread::scope(|s| {
        let d = s.spawn(|| destination::run(p, dest_disk, theirs, &stats_d, rejoin.1));
        let r = source::run(p, source_disk, ours, &stats_s, rejoin.0);
        (r, d.join().unwrap())
    });
    (s, d, (stats_s, stats_d))
}

/// A source of `len` random bytes with a zero run, and a destination that
/// differs from it in every block.
fn pair(dir: &TempDir, len: usize) -> (PathBuf, PathBuf, Vec<u8>) {
    let mut data = random(len, 7);
    data[BLOCK..BLOCK + 100_000].fill(0);
    let src = dir.file("src", &data);
    let dst = dir.file("dst", &random(len / 2, 8));
    (src, dst, data)
}

#[test]
fn upload_over_two_lanes_makes_the_destination_identical() {
    let dir = TempDir::new("upload");
    let (src, dst, data) = pair(&dir, 5 * BLOCK + 123);
    let p = params(data.len() as u64, 2, Some(Level::Fast));
    let (s, d) = sync(
        &src,
        &dst,
        &p,
        vec![direct(), direct()],
        (&NoRejoin, &NoRejoin),
    );
    let (s, d) = (s.unwrap(), d.unwrap());
    assert_eq!(s, d, "both ends compute the same verification digest");
    assert_eq!(std::fs::read(&dst).unwrap(), data);
}

#[test]
fn identical_ends_send_no_data() {
    let dir = TempDir::new("same");
    let data = random(3 * BLOCK, 9);
    let src = dir.file("src", &data);
    let dst = dir.file("dst", &data);
    let p = params(data.len() as u64, 1, None);
    let (env, log) = (Env::default(), Log::default());
    let source_disk = Disk::open_source(&src, &env, &log).unwrap();
    let dest_disk = Disk::open_destination(&dst, &env, &log).unwrap();
    let (ours, theirs) = direct();
    let stats = Stats::default();
    let sent = thread::scope(|s| {
        let d = s.spawn(|| destination::run(&p, &dest_disk, vec![theirs], &stats, &NoRejoin));
        let source_stats = Stats::default();
        source::run(&p, &source_disk, vec![ours], &source_stats, &NoRejoin).unwrap();
        d.join().unwrap().unwrap();
        source_stats.bytes_changed.load(Ordering::Relaxed)
    });
    assert_eq!(sent, 0);
    assert_eq!(stats.bytes_written.load(Ordering::Relaxed), 0);
}

#[test]
fn upload_rejoins_a_cut_lane() {
    // The source dials again, as the client does in an upload.
    let dir = TempDir::new("cut-up");
    let (src, dst, data) = pair(&dir, 6 * BLOCK);
    let p = params(data.len() as u64, 2, None);
    let pairs = Pairs::default();
    let lanes = vec![direct(), relayed(Fault::Cut(3 * BLOCK / 2))];
    let rejoin = (
        &Dialer(&pairs) as &dyn Rejoin,
        &Waiter(&pairs) as &dyn Rejoin,
    );
    let (s, d, (ss, ds)) = sync_stats(&src, &dst, &p, lanes, rejoin);
    assert_eq!(s.unwrap(), d.unwrap());
    assert_eq!(
        pairs.dialed.load(Ordering::Relaxed),
        1,
        "the cut lane came back"
    );
    assert_eq!(std::fs::read(&dst).unwrap(), data);
    // A block sent again counts once on both ends.
    let changed = |s: &Stats| s.bytes_changed.load(Ordering::Relaxed);
    assert_eq!(changed(&ss), changed(&ds));
}

#[test]
fn download_rejoins_a_cut_lane() {
    // The destination dials again, as the client does in a download.
    let dir = TempDir::new("cut-down");
    let (src, dst, data) = pair(&dir, 6 * BLOCK);
    let p = params(data.len() as u64, 2, Some(Level::Default));
    let pairs = Pairs::default();
    let lanes = vec![relayed(Fault::Cut(BLOCK)), direct()];
    let (s, d) = sync(&src, &dst, &p, lanes, (&Waiter(&pairs), &Dialer(&pairs)));
    assert_eq!(s.unwrap(), d.unwrap());
    assert_eq!(
        pairs.dialed.load(Ordering::Relaxed),
        1,
        "the cut lane came back"
    );
    assert_eq!(std::fs::read(&dst).unwrap(), data);
}

/// A destination's writes, the first held until the source has sent
/// nothing through the relay for 200 ms: it has spent its budget in flight.
#[derive(Debug)]
struct HoldFirstWrite(Arc<Counted>, std::sync::atomic::AtomicBool);

impl crate::disk::DiskIo for HoldFirstWrite {
    fn read_at(&self, file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(file, buf, offset)
    }
    fn write_at(&self, file: &std::fs::File, buf: &[u8], offset: u64) -> std::io::Result<usize> {
        if !self.1.swap(true, Ordering::Relaxed) {
            let (mut seen, mut since) = (0, Instant::now());
            let give_up = Instant::now() + Duration::from_secs(5);
            while since.elapsed() < Duration::from_millis(200) && Instant::now() < give_up {
                let now = self.0.up.load(Ordering::Relaxed);
                if now != seen {
                    (seen, since) = (now, Instant::now());
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
        std::os::unix::fs::FileExt::write_at(file, buf, offset)
    }
}

#[test]
fn acknowledgements_lost_with_a_connection_are_repeated() {
    // The source lets only the lowest unacknowledged block out over its
    // budget in flight: once the acknowledgements of blocks already
    // written are lost with the connection, nothing else frees it, and
    // the destination repeats its last one on the new connection.
    // Blocks of 4 MiB: a few are the budget.
    let block = 4 << 20;
    let dir = TempDir::new("lost-acks");
    let (src, dst, data) = pair(&dir, 12 * block);
    let p = params_bs(data.len() as u64, block, 1, None);
    let (env, log) = (Env::default(), Log::default());
    let count = Arc::new(Counted::default());
    let (mut ours, mut theirs) = relay(Some(Fault::LoseAcks), Arc::clone(&count));
    ours.reader.set_max(proto::max_payload(block));
    theirs.reader.set_max(proto::max_payload(block));
    let source_disk = Disk::open_source(&src, &env, &log).unwrap();
    let hold = HoldFirstWrite(count, false.into());
    let mut dest_disk = Disk::open_destination(&dst, &env, &log)
        .unwrap()
        .with_io(Arc::new(hold));
    dest_disk.fit_to(p.geo.size).unwrap();
    let pairs = Pairs::default();
    let lanes = vec![(ours, theirs)];
    let rejoin = (
        &Waiter(&pairs) as &dyn Rejoin,
        &Dialer(&pairs) as &dyn Rejoin,
    );
    let (s, d, _) = sync_disks(&source_disk, &dest_disk, &p, lanes, rejoin);
    assert_eq!(s.unwrap(), d.unwrap());
    assert_eq!(pairs.dialed.load(Ordering::Relaxed), 1, "no cut");
    assert!(std::fs::read(&dst).unwrap() == data);
}

/// Dials like [`Dialer`], but the first connection it makes is closed at
/// the far end at once: what is sent on it right after a rejoin fails.
struct DeadFirst<'a>(&'a Pairs);

impl Rejoin for DeadFirst<'_> {
    fn rejoin(&self, lane: usize, stop: &dyn Fn() -> bool) -> Result<Lane> {
        if self.0.dialed.fetch_add(1, Ordering::Relaxed) == 0 {
            let (ours, theirs) = direct();
            drop(theirs);
            return Ok(ours);
        }
        self.0.dialed.fetch_sub(1, Ordering::Relaxed);
        Dialer(self.0).rejoin(lane, stop)
    }
}

#[test]
fn a_connection_lost_again_while_resuming_is_rejoined_again() {
    // The destination dials again, and its first new connection is dead:
    // the digests it asks again with cannot go. That used to fail the
    // session; the lane's reader finds the loss and dials once more.
    let dir = TempDir::new("cut-twice");
    let (src, dst, data) = pair(&dir, 6 * BLOCK);
    let p = params(data.len() as u64, 1, None);
    let pairs = Pairs::default();
    let lanes = vec![relayed(Fault::Cut(BLOCK))];
    let (s, d) = sync(&src, &dst, &p, lanes, (&Waiter(&pairs), &DeadFirst(&pairs)));
    assert_eq!(s.unwrap(), d.unwrap());
    assert_eq!(pairs.dialed.load(Ordering::Relaxed), 2, "dialed twice");
    assert!(std::fs::read(&dst).unwrap() == data);
}

#[test]
fn a_lane_lost_at_the_end_is_not_waited_for_once_the_verdict_is_given() {
    // A download over two lanes: lane 1 is cut as the destination's
    // Complete comes, and the destination, done, does not dial again;
    // lane 0 is slow, so its Complete arrives after the source saw lane 1
    // go. The source gives its verdict on lane 0's; its lane 1, waiting
    // for the client to come back, must stop then, not fail the session
    // when the wait runs out.
    let dir = TempDir::new("end-cut");
    let (src, dst, data) = pair(&dir, 6 * BLOCK);
    let p = params(data.len() as u64, 2, None);
    let pairs = Pairs::default();
    let trips = Arc::new(Trips::default());
    let lanes = vec![
        delayed(Duration::from_millis(100), &trips),
        relayed(Fault::CutAtComplete),
    ];
    let (s, d) = sync(&src, &dst, &p, lanes, (&Waiter(&pairs), &Dialer(&pairs)));
    assert_eq!(s.unwrap(), d.unwrap());
    let timed_out = pairs.timed_out.load(Ordering::Relaxed);
    assert_eq!(timed_out, 0, "the source waited out the deadline");
    assert!(std::fs::read(&dst).unwrap() == data);
}

#[test]
fn a_corrupted_block_fails_both_ends_and_a_rerun_repairs() {
    let dir = TempDir::new("flip");
    let (src, dst, data) = pair(&dir, 4 * BLOCK);
    let p = params(data.len() as u64, 1, None);
    // Deep inside the first block's raw data (no compression).
    let lanes = vec![relayed(Fault::Flip(100_000))];
    let (s, d) = sync(&src, &dst, &p, lanes, (&NoRejoin, &NoRejoin));
    let d = d.unwrap_err().to_string();
    assert!(d.contains("does not match the source's digest"), "{d}");
    assert!(s.is_err(), "the source must not report success");
    assert_ne!(std::fs::read(&dst).unwrap(), data);

    let (s, d) = sync(&src, &dst, &p, vec![direct()], (&NoRejoin, &NoRejoin));
    assert_eq!(s.unwrap(), d.unwrap());
    assert_eq!(std::fs::read(&dst).unwrap(), data);
}

#[test]
fn a_silent_destination_times_out_the_source() {
    let dir = TempDir::new("silent");
    let (src, _, data) = pair(&dir, 2 * BLOCK);
    let p = params(data.len() as u64, 1, None);
    let (env, log) = (Env::default(), Log::default());
    let source_disk = Disk::open_source(&src, &env, &log).unwrap();
    // The destination's end stays open and says nothing.
    let (ours, _silent) = direct();
    let started = Instant::now();
    let e = source::run(&p, &source_disk, vec![ours], &Stats::default(), &NoRejoin).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("timed out"), "{msg}");
    assert!(started.elapsed() < DEADLINE * 5, "{:?}", started.elapsed());
}

// ------------------------------------------------- two-level digests ---

const PAGE: usize = proto::PAGE;

/// Data bytes and zero bytes the exchange must move from block `first`
/// on: the pages that differ, worked out from the two files.
fn page_diff(src: &[u8], dst: &[u8], block: usize, first: usize) -> (u64, u64) {
    let mut dst = dst.to_vec();
    dst.resize(src.len(), 0);
    let (mut data, mut zero) = (0, 0);
    for (a, b) in src.chunks(block).zip(dst.chunks(block)).skip(first) {
        for (a, b) in a.chunks(PAGE).zip(b.chunks(PAGE)) {
            if a == b {
                continue;
            }
            if a.iter().all(|&x| x == 0) {
                zero += a.len() as u64;
            } else {
                data += a.len() as u64;
            }
        }
    }
    (data, zero)
}

/// `data` with these pages overwritten by other random bytes.
fn change_pages(data: &[u8], pages: impl IntoIterator<Item = usize>, seed: u64) -> Vec<u8> {
    let mut out = data.to_vec();
    let mut rng = fastrand::Rng::with_seed(seed);
    for p in pages {
        let end = ((p + 1) * PAGE).min(out.len());
        rng.fill(&mut out[p * PAGE..end]);
    }
    out
}

/// Source and destination contents the two-level exchange must handle.
fn scenes() -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
    let len = 6 * BLOCK + 777;
    let pages = len.div_ceil(PAGE);
    let base = random(len, 20);
    let mut rng = fastrand::Rng::with_seed(21);
    let scattered: Vec<usize> = (0..pages).filter(|_| rng.u8(..100) < 5).collect();
    let clustered = (3..40).chain(130..131).chain(200..260);
    let mut zeros = base.clone();
    zeros[BLOCK..2 * BLOCK].fill(0);
    for p in (200..260).step_by(3) {
        zeros[p * PAGE..(p + 1) * PAGE].fill(0);
    }
    let mut short = base.clone();
    short[len - 3] ^= 1;
    vec![
        ("identical", base.clone(), base.clone()),
        (
            "scattered",
            base.clone(),
            change_pages(&base, scattered, 22),
        ),
        (
            "clustered",
            base.clone(),
            change_pages(&base, clustered, 23),
        ),
        ("zero pages", zeros, base.clone()),
        ("short last block", short, base.clone()),
        (
            "shorter destination",
            base.clone(),
            base[..len / 3].to_vec(),
        ),
    ]
}

#[test]
fn two_level_exchange_moves_exactly_the_pages_that_differ() {
    let dir = TempDir::new("two-level");
    for (name, src_data, dst_data) in scenes() {
        for (workers, lanes) in [(1, 1), (4, 4)] {
            for first in [0u64, 2] {
                let case = format!("{name}, -w {workers}, {lanes} lanes, -s {first}");
                let src = dir.file("src", &src_data);
                let dst = dir.file("dst", &dst_data);
                let mut p = params(src_data.len() as u64, workers, Some(Level::Fast));
                p.first = first;
                let lanes = (0..lanes).map(|_| direct()).collect();
                let (s, d, (ss, ds)) = sync_stats(&src, &dst, &p, lanes, (&NoRejoin, &NoRejoin));
                assert_eq!(s.unwrap(), d.unwrap(), "{case}: verification");
                let now = std::fs::read(&dst).unwrap();
                let from = first as usize * BLOCK;
                assert_eq!(now.len(), src_data.len(), "{case}: size");
                assert!(now[from..] == src_data[from..], "{case}: content");
                let kept = from.min(dst_data.len());
                assert!(now[..kept] == dst_data[..kept], "{case}: -s touched");
                let (data, zero) = page_diff(&src_data, &dst_data, BLOCK, first as usize);
                let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
                assert_eq!(get(&ss.bytes_changed), data, "{case}: data sent");
                assert_eq!(get(&ds.bytes_written), data, "{case}: data written");
                assert_eq!(get(&ds.bytes_cleared), zero, "{case}: zeros cleared");
            }
        }
    }
}

/// Blocks larger than a read piece (`config::DIGEST_PIECE`) reach the
/// destination's workers in pieces, digested by any worker in any order;
/// a destination grown to the source's size is a hole, read as such.
#[test]
fn a_destination_digests_blocks_that_come_in_pieces() {
    let dir = TempDir::new("pieces");
    let bs = 2 * DIGEST_PIECE + DIGEST_PIECE / 2;
    let len = 3 * bs + 5000;
    let base = random(len, 30);
    let scattered = change_pages(&base, (0..len.div_ceil(PAGE)).step_by(97), 31);
    let scenes = [
        ("scattered", scattered, base.clone()),
        ("shorter destination", base.clone(), base[..bs / 3].to_vec()),
    ];
    for (name, src_data, dst_data) in scenes {
        for workers in [1, 4] {
            let case = format!("{name}, -w {workers}");
            let src = dir.file("src", &src_data);
            let dst = dir.file("dst", &dst_data);
            let p = params_bs(len as u64, bs, workers, Some(Level::Fast));
            let lanes = (0..workers)
                .map(|_| {
                    let (mut ours, mut theirs) = direct();
                    ours.reader.set_max(proto::max_payload(bs));
                    theirs.reader.set_max(proto::max_payload(bs));
                    (ours, theirs)
                })
                .collect();
            let (s, d, (ss, _)) = sync_stats(&src, &dst, &p, lanes, (&NoRejoin, &NoRejoin));
            assert_eq!(s.unwrap(), d.unwrap(), "{case}: verification");
            assert!(std::fs::read(&dst).unwrap() == src_data, "{case}: content");
            let (data, _) = page_diff(&src_data, &dst_data, bs, 0);
            assert_eq!(ss.bytes_changed.load(Ordering::Relaxed), data, "{case}");
        }
    }
}

#[test]
fn identical_data_costs_at_most_a_thousandth_in_digests() {
    let dir = TempDir::new("digest-cost");
    let data = random(16 * BLOCK, 24);
    let src = dir.file("src", &data);
    let dst = dir.file("dst", &data);
    let p = params(data.len() as u64, 1, None);
    let count = Arc::new(Counted::default());
    let (s, d) = sync(
        &src,
        &dst,
        &p,
        vec![counted(&count)],
        (&NoRejoin, &NoRejoin),
    );
    assert_eq!(s.unwrap(), d.unwrap());
    let back = count.back.load(Ordering::Relaxed);
    let up = count.up.load(Ordering::Relaxed);
    assert!(back * 1000 <= data.len(), "{back} bytes of digests");
    assert!(up * 1000 <= data.len(), "{up} bytes from the source");
}

#[test]
fn one_changed_sector_in_a_10_mib_block_moves_one_page() {
    let dir = TempDir::new("sector");
    let bs = 10 << 20;
    let data = random(bs, 25);
    let mut old = data.clone();
    old[5 * PAGE + 512..5 * PAGE + 1024].fill(7);
    let src = dir.file("src", &data);
    let dst = dir.file("dst", &old);
    let p = params_bs(data.len() as u64, bs, 1, None);
    let count = Arc::new(Counted::default());
    let lane = counted(&count);
    let (env, log) = (Env::default(), Log::default());
    let source_disk = Disk::open_source(&src, &env, &log).unwrap();
    let dest_disk = Disk::open_destination(&dst, &env, &log).unwrap();
    let (mut ours, mut theirs) = lane;
    ours.reader.set_max(proto::max_payload(bs));
    theirs.reader.set_max(proto::max_payload(bs));
    let stats = Stats::default();
    thread::scope(|s| {
        let d = s.spawn(|| destination::run(&p, &dest_disk, vec![theirs], &stats, &NoRejoin));
        let source_stats = Stats::default();
        source::run(&p, &source_disk, vec![ours], &source_stats, &NoRejoin).unwrap();
        d.join().unwrap().unwrap();
    });
    assert_eq!(std::fs::read(&dst).unwrap(), data);
    let up = count.up.load(Ordering::Relaxed);
    let back = count.back.load(Ordering::Relaxed);
    // One page of data with its change record and the frame headers.
    assert!(
        (PAGE..PAGE + 200).contains(&up),
        "{up} bytes from the source"
    );
    // 160 range digests, then the 16 page digests of one range.
    let digests = (160 + proto::RANGE_PAGES) * 16;
    assert!(
        (digests..digests + 200).contains(&back),
        "{back} bytes of digests"
    );
}

#[test]
fn a_lane_cut_anywhere_in_the_exchange_is_rejoined() {
    // Cuts while range digests, Refine, Pages and Block frames are in
    // flight, in both directions, with either end dialing again.
    let dir = TempDir::new("cut-two-level");
    let (_, src_data, dst_data) = scenes().swap_remove(1);
    let src = dir.file("src", &src_data);
    let p = params(src_data.len() as u64, 2, None);
    let cuts = [
        Fault::CutBack(20),
        Fault::CutBack(150),
        Fault::CutBack(500),
        Fault::CutBack(1000),
        Fault::Cut(30),
        Fault::Cut(2000),
        Fault::Cut(15000),
    ];
    for (i, cut) in cuts.into_iter().enumerate() {
        for source_dials in [true, false] {
            let case = format!("cut {i}, source dials: {source_dials}");
            let dst = dir.file("dst", &dst_data);
            let pairs = Pairs::default();
            let (dialer, waiter) = (Dialer(&pairs), Waiter(&pairs));
            let rejoin: (&dyn Rejoin, &dyn Rejoin) = if source_dials {
                (&dialer, &waiter)
            } else {
                (&waiter, &dialer)
            };
            let lanes = vec![relayed(cut), direct()];
            let (s, d) = sync(&src, &dst, &p, lanes, rejoin);
            assert_eq!(s.unwrap(), d.unwrap(), "{case}");
            assert_eq!(pairs.dialed.load(Ordering::Relaxed), 1, "{case}: no cut");
            assert!(std::fs::read(&dst).unwrap() == src_data, "{case}: content");
        }
    }
}

#[test]
fn measured_6_an_ack_for_a_block_never_sent_is_a_protocol_error() {
    // It used to be taken as written; the destination's requests for that
    // block were then dropped as stale, and the client reconnected forever.
    let dir = TempDir::new("ack-unsent");
    let (src, _, data) = pair(&dir, 4 * BLOCK);
    let p = params(data.len() as u64, 1, None);
    let (env, log) = (Env::default(), Log::default());
    let source_disk = Disk::open_source(&src, &env, &log).unwrap();
    let (ours, mut theirs) = direct();
    theirs
        .sender
        .send_frame(&proto::Frame::Ack { index: 2 })
        .unwrap();
    let e = source::run(&p, &source_disk, vec![ours], &Stats::default(), &NoRejoin).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("block 0, which was never sent"), "{msg}");
    let _ = theirs.reader.read("anything");
}

#[test]
fn a_completion_of_blocks_never_sent_is_a_protocol_error() {
    let dir = TempDir::new("complete-unsent");
    let (src, _, data) = pair(&dir, 4 * BLOCK);
    let p = params(data.len() as u64, 1, None);
    let (env, log) = (Env::default(), Log::default());
    let source_disk = Disk::open_source(&src, &env, &log).unwrap();
    let (ours, theirs) = direct();
    theirs
        .sender
        .send_frame(&proto::Frame::Complete {
            blocks: 4,
            verify: 0,
        })
        .unwrap();
    let e = source::run(&p, &source_disk, vec![ours], &Stats::default(), &NoRejoin).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("never sent"), "{msg}");
}

/// Dials again like [`Dialer`], rewriting the source first: the source
/// changes in the middle of the run.
struct Rewrite<'a>(&'a Pairs, PathBuf);

impl Rejoin for Rewrite<'_> {
    fn rejoin(&self, lane: usize, stop: &dyn Fn() -> bool) -> Result<Lane> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.1)
            .unwrap();
        f.write_all_at(b"rewritten", 0).unwrap();
        Dialer(self.0).rejoin(lane, stop)
    }
}

#[test]
fn measured_9_a_source_rewritten_during_the_run_fails_it() {
    let dir = TempDir::new("rewritten");
    let (src, dst, data) = pair(&dir, 6 * BLOCK);
    let p = params(data.len() as u64, 2, None);
    let pairs = Pairs::default();
    let lanes = vec![direct(), relayed(Fault::Cut(3 * BLOCK / 2))];
    let (s, d) = sync(
        &src,
        &dst,
        &p,
        lanes,
        (&Rewrite(&pairs, src.clone()), &Waiter(&pairs)),
    );
    let msg = s.unwrap_err().to_string();
    assert!(msg.contains("was modified during the run"), "{msg}");
    assert!(d.is_err(), "the destination must not report success");
}

#[test]
fn every_frame_is_tagged_with_or_without_a_key() {
    // A flipped bit in block data is caught, key or no key: by the tag
    // under a key, by the digest check of the tagged change records
    // without one.
    for key in [None, Some([9u8; 32])] {
        KEY.with(|k| k.set(key));
        let dir = TempDir::new("tagged");
        let (src, dst, data) = pair(&dir, 4 * BLOCK);
        let p = params(data.len() as u64, 1, Some(Level::Fast));
        let lanes = vec![relayed(Fault::Flip(BLOCK / 3))];
        let (s, d) = sync(&src, &dst, &p, lanes, (&NoRejoin, &NoRejoin));
        let d = d.unwrap_err().to_string();
        let want = match key {
            Some(_) => "failed its integrity check",
            None => "does not match the source's digest",
        };
        assert!(d.contains(want), "{key:?}: {d}");
        assert!(s.is_err());
        let (s, d) = sync(&src, &dst, &p, vec![direct()], (&NoRejoin, &NoRejoin));
        assert_eq!(s.unwrap(), d.unwrap());
        assert_eq!(std::fs::read(&dst).unwrap(), data);
    }
    KEY.with(|k| k.set(None));
}

/// Answers every call short (at most 4097 bytes), with EINTR and EAGAIN in
/// between, and fails with `errno` from block `fail_at` on (writes only,
/// or reads only, as `errno_on_write` says).
#[derive(Debug)]
struct Shim {
    calls: AtomicUsize,
    fail_at: u64,
    errno: i32,
    errno_on_write: bool,
}

impl Shim {
    fn step(&self, offset: u64, len: usize, write: bool) -> std::io::Result<usize> {
        if write == self.errno_on_write && offset >= self.fail_at * BLOCK as u64 {
            return Err(std::io::Error::from_raw_os_error(self.errno));
        }
        match self.calls.fetch_add(1, Ordering::Relaxed) % 3 {
            0 => Err(std::io::Error::from_raw_os_error(libc::EINTR)),
            1 => Err(std::io::Error::from_raw_os_error(libc::EAGAIN)),
            _ => Ok(len.min(4097)),
        }
    }
}

impl crate::disk::DiskIo for Shim {
    fn read_at(&self, file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.step(offset, buf.len(), false)?;
        file.read_at(&mut buf[..n], offset)
    }
    fn write_at(&self, file: &std::fs::File, buf: &[u8], offset: u64) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.step(offset, buf.len(), true)?;
        file.write_at(&buf[..n], offset)
    }
}

#[test]
fn strict_io_short_counts_and_retries_end_identical_and_errors_name_block_k() {
    let dir = TempDir::new("shim");
    let (src, dst, data) = pair(&dir, 5 * BLOCK);
    let p = params(data.len() as u64, 2, Some(Level::Fast));
    let (env, log) = (Env::default(), Log::default());
    let shim = |fail_at, errno| {
        std::sync::Arc::new(Shim {
            calls: AtomicUsize::new(0),
            fail_at,
            errno,
            errno_on_write: errno == libc::ENOSPC,
        })
    };
    let run = |source: Disk, dest: Disk| {
        let (ours, theirs) = direct();
        thread::scope(|s| {
            let d =
                s.spawn(|| destination::run(&p, &dest, vec![theirs], &Stats::default(), &NoRejoin));
            let r = source::run(&p, &source, vec![ours], &Stats::default(), &NoRejoin);
            (r, d.join().unwrap())
        })
    };
    let open_dest = || {
        let mut d = Disk::open_destination(&dst, &env, &log).unwrap();
        d.fit_to(data.len() as u64).unwrap();
        d
    };
    // ENOSPC writing block 3: exit 1 naming block 3 and the path.
    let source = Disk::open_source(&src, &env, &log).unwrap();
    let (s, d) = run(source, open_dest().with_io(shim(3, libc::ENOSPC)));
    let d = d.unwrap_err().to_string();
    assert!(d.contains("write at block 3"), "{d}");
    assert!(d.contains(&dst.display().to_string()), "{d}");
    assert!(d.contains("No space left"), "{d}");
    assert!(s.is_err());
    // EIO reading block 2 of the source.
    let source = Disk::open_source(&src, &env, &log)
        .unwrap()
        .with_io(shim(2, libc::EIO));
    let (s, d) = run(source, open_dest());
    let s = s.unwrap_err().to_string();
    assert!(s.contains("read at block 2"), "{s}");
    assert!(s.contains(&src.display().to_string()), "{s}");
    assert!(d.is_err());
    // Short counts, EINTR and EAGAIN on every call of both ends: identical.
    let source = Disk::open_source(&src, &env, &log)
        .unwrap()
        .with_io(shim(u64::MAX / BLOCK as u64, 0));
    let (s, d) = run(
        source,
        open_dest().with_io(shim(u64::MAX / BLOCK as u64, 0)),
    );
    assert_eq!(s.unwrap(), d.unwrap());
    assert_eq!(std::fs::read(&dst).unwrap(), data);
}

/// A source that changed after the reader read it: a read shorter than a
/// block (the pages that differ, read back) sees every byte inverted.
#[derive(Debug)]
struct ChangedSince;

impl crate::disk::DiskIo for ChangedSince {
    fn read_at(&self, file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = file.read_at(buf, offset)?;
        if buf.len() < BLOCK {
            buf[..n].iter_mut().for_each(|b| *b = !*b);
        }
        Ok(n)
    }
    fn write_at(&self, file: &std::fs::File, buf: &[u8], offset: u64) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        file.write_at(buf, offset)
    }
}

#[test]
fn pages_read_back_as_they_are_now_are_sent_and_verified_as_they_are_now() {
    // Issue 21: the source reads back the pages that differ once their
    // digests arrive. A live source (a mounted disk) may have changed
    // them since it compared: they go as read now, with their digest
    // now, and the verification digest takes the block as it is now, so
    // both ends agree and the destination holds what was sent.
    let dir = TempDir::new("changed");
    let len = 4 * BLOCK;
    let data = random(len, 40);
    let pages = len.div_ceil(PAGE);
    let mut rng = fastrand::Rng::with_seed(41);
    let changed: Vec<usize> = (0..pages).filter(|_| rng.u8(..100) < 10).collect();
    let old = change_pages(&data, changed.iter().copied(), 42);
    let src = dir.file("src", &data);
    let dst = dir.file("dst", &old);
    let mut want = data.clone();
    for &p in &changed {
        let end = ((p + 1) * PAGE).min(len);
        want[p * PAGE..end].iter_mut().for_each(|b| *b = !*b);
    }
    let p = params(len as u64, 2, Some(Level::Fast));
    let (env, log) = (Env::default(), Log::default());
    let source = Disk::open_source(&src, &env, &log)
        .unwrap()
        .with_io(Arc::new(ChangedSince));
    let mut dest = Disk::open_destination(&dst, &env, &log).unwrap();
    dest.fit_to(len as u64).unwrap();
    let (ours, theirs) = direct();
    let (s, d) = thread::scope(|sc| {
        let d =
            sc.spawn(|| destination::run(&p, &dest, vec![theirs], &Stats::default(), &NoRejoin));
        let r = source::run(&p, &source, vec![ours], &Stats::default(), &NoRejoin);
        (r, d.join().unwrap())
    });
    assert_eq!(s.unwrap(), d.unwrap(), "both ends agree");
    assert!(
        std::fs::read(&dst).unwrap() == want,
        "the pages as read back"
    );
}

#[test]
fn a_silent_peer_is_named_with_the_deadline() {
    let line = super::silent_line(
        "server 10.0.0.1:8080",
        Duration::from_secs(30),
        Duration::from_secs(300),
    );
    assert!(line.contains("no progress for 30 s"), "{line}");
    assert!(line.contains("waiting for server 10.0.0.1:8080"), "{line}");
    assert!(line.contains("ends the wait in about 270 s"), "{line}");
    // The watchdog itself stops at once when the session ends.
    let stats = std::sync::Arc::new(Stats::default());
    let started = Instant::now();
    drop(super::Watchdog::start(
        &stats,
        "x".into(),
        DEADLINE,
        Duration::from_secs(30),
        &Log::default(),
    ));
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// A destination facing a hostile source on one lane: the destination's
/// lane and a raw handle on the source's end of the stream (no tags).
fn hostile_destination(
    dst: &Path,
    p: &Params,
    attack: impl FnOnce(&mut Lane, &mut UnixStream) + Send,
) -> String {
    let (a, b) = UnixStream::pair().unwrap();
    let mut raw = a.try_clone().unwrap();
    let (mut src_lane, dst_lane) = open_both(a, b);
    raise_max(&mut src_lane);
    let mut dst_lane = dst_lane;
    raise_max(&mut dst_lane);
    let (env, log) = (Env::default(), Log::default());
    let mut disk = Disk::open_destination(dst, &env, &log).unwrap();
    disk.fit_to(p.geo.size).unwrap();
    let before = std::fs::read(dst).unwrap();
    let e = thread::scope(|s| {
        let d =
            s.spawn(|| destination::run(p, &disk, vec![dst_lane], &Stats::default(), &NoRejoin));
        attack(&mut src_lane, &mut raw);
        d.join().unwrap().unwrap_err().to_string()
    });
    assert_eq!(
        std::fs::read(dst).unwrap(),
        before,
        "a hostile peer changed the destination"
    );
    e
}

#[test]
fn hostile_a_block_that_decompresses_beyond_its_length_is_refused() {
    let dir = TempDir::new("bomb");
    let dst = dir.file("dst", &random(2 * BLOCK, 3));
    let p = params(2 * BLOCK as u64, 1, Some(Level::Fast));
    let e = hostile_destination(&dst, &p, |lane, _| {
        // Wait for the destination's digests of block 0, then answer with
        // one data page whose compressed data expands to a megabyte.
        let _ = lane.reader.read("digests");
        let mut c = crate::compress::Compressor::new(Some(Level::Fast));
        let zeros = vec![7u8; 1 << 20];
        let mut frame = Vec::new();
        let changes = [proto::Change {
            page: 0,
            kind: proto::ChangeKind::Data(0),
        }];
        let page = u32::try_from(proto::PAGE).unwrap();
        let mut b = proto::BlockBuilder::begin(&mut frame, 0, page, &changes);
        assert!(c.append(std::iter::once(&zeros[..]), b.data()));
        b.finish(true);
        let _ = lane.sender.send(&mut frame);
        let _ = lane.reader.read("the end");
    });
    assert!(e.contains("block 0") && e.contains("decompress"), "{e}");
}

#[test]
fn hostile_frames_after_the_handshake_are_refused() {
    let dir = TempDir::new("hostile");
    let p = params(2 * BLOCK as u64, 1, None);
    let cases: [(&str, &[u8]); 3] = [
        ("exceeds the maximum", &[5, 0xff, 0xff, 0xff, 0x7f]),
        ("unknown frame type", &[200, 20, 0, 0, 0]),
        (
            "failed its integrity check",
            &[
                6, 24, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19,
                20, 21, 22, 23, 24,
            ],
        ),
    ];
    for (want, bytes) in cases {
        let dst = dir.file("dst", &random(2 * BLOCK, 4));
        let e = hostile_destination(&dst, &p, |_, raw| {
            raw.write_all(bytes).unwrap();
            let _ = raw.read(&mut [0u8; 64]);
        });
        assert!(e.contains(want), "{want}: {e}");
    }
}

/// One-way trips along the longest chain of a session of `blocks`
/// blocks of `bs` bytes whose destination differs from the source in
/// `changed` pages, through a delay line of `delay` milliseconds each
/// way, with `workers` workers on each end. Counted, not timed; but a
/// chunk sent while the sender works counts one trip more than the last
/// thing it was handed, so a delay short next to the work overcounts.
fn one_way_trips(
    (blocks, bs): (usize, usize),
    workers: usize,
    delay: u64,
    changed: impl IntoIterator<Item = usize>,
) -> u64 {
    let delay = Duration::from_millis(delay);
    let dir = TempDir::new("delay");
    let data = random(blocks * bs, 30);
    let old = change_pages(&data, changed, 31);
    let src = dir.file("src", &data);
    let dst = dir.file("dst", &old);
    let p = params_bs(data.len() as u64, bs, workers, Some(Level::Fast));
    let trips = Arc::new(Trips::default());
    let lanes = vec![delayed(delay, &trips)];
    // The preambles crossed already.
    let opened = trips.most();
    let (s, d) = sync(&src, &dst, &p, lanes, (&NoRejoin, &NoRejoin));
    assert_eq!(s.unwrap(), d.unwrap());
    assert_eq!(std::fs::read(&dst).unwrap(), data);
    trips.most() - opened
}

#[test]
fn a_long_round_trip_is_paid_a_few_times_not_once_per_window() {
    // Issue 21: 24 blocks, each with one changed page, through 20 ms each
    // way. With every block in flight at once the session is a chain of
    // about six one-way trips (digests, Refine, Pages, Block, Complete,
    // Bye); a window of a few blocks pays four more per window's worth of
    // blocks. Trips are counted along the chain, not timed.
    let (blocks, bs) = (24, 64 << 10);
    let pages = bs / PAGE;
    let changed = (0..blocks).map(|b| b * pages + b % pages);
    let one_way = one_way_trips((blocks, bs), 1, 20, changed);
    assert!(
        one_way <= 8,
        "{one_way} one-way trips ({} round trips) for {blocks} changed blocks",
        one_way / 2
    );
}

#[test]
fn a_long_round_trip_never_waits_for_memory_to_park_what_differs() {
    // Issue 21: 24 blocks of 1 MiB with a changed page in every range, so
    // that every range of every block differs (24 MiB of them) while
    // little data changes: what the realistic image's changed blocks look
    // like. A source that kept the differing ranges' bytes while their
    // page digests travel could park a few such blocks per round trip
    // within its memory; one that reads back the pages that differ parks
    // their page digests only, and the chain stays as short as for
    // blocks that differ in one page.
    let (blocks, bs) = (24, 1 << 20);
    let changed = (0..blocks * bs / PAGE).step_by(proto::RANGE_PAGES);
    let one_way = one_way_trips((blocks, bs), 1, 50, changed);
    assert!(
        one_way <= 8,
        "{one_way} one-way trips ({} round trips) for {blocks} widely changed blocks",
        one_way / 2
    );
}

#[test]
fn a_long_round_trip_is_not_paid_again_to_learn_how_much_may_be_in_flight() {
    // Issue 21: 24 blocks of 1 MiB, every page changed: 24 MiB of
    // incompressible data, within what the destination may hold at -w 4
    // (30 MiB). A budget of data in flight that started small (4 MiB)
    // and grew with the rate it let through, round trip by round trip as
    // TCP's slow start, paid a round trip per doubling; one that starts at
    // what the memory allows pays none.
    let (blocks, bs) = (24, 1 << 20);
    let one_way = one_way_trips((blocks, bs), 4, 50, 0..blocks * bs / PAGE);
    assert!(
        one_way <= 8,
        "{one_way} one-way trips ({} round trips) for {blocks} wholly changed blocks",
        one_way / 2
    );
}

/// Issue 18, item 5: a dry session's destination takes the source's count
/// of what differs from its `Bye`; a destination that writes refuses such a
/// count, and a dry one refuses a count larger than the session.
#[test]
fn a_tally_is_taken_only_by_a_dry_destination_and_only_within_the_session() {
    let dir = TempDir::new("tally");
    let p = params(2 * BLOCK as u64, 1, None);
    let (env, log) = (Env::default(), Log::default());
    let tally = |changed| proto::Tally {
        changed,
        zero: 0,
        data_bytes: 10,
        zero_bytes: 0,
    };
    let cases = [
        (
            false,
            tally(1),
            "a dry run's tally in a session that writes",
        ),
        (true, tally(3), "names 3 blocks"),
        (true, tally(1), ""),
    ];
    for (dry, sent, refusal) in cases {
        let dst = dir.file("dst", &random(2 * BLOCK, 5));
        let mut disk = if dry {
            Disk::open_dry(&dst, &env, &log).unwrap()
        } else {
            Disk::open_destination(&dst, &env, &log).unwrap()
        };
        if !dry {
            disk.fit_to(p.geo.size).unwrap();
        }
        let (mut ours, theirs) = direct();
        let (pr, dr) = (&p, &disk);
        let got = thread::scope(|s| {
            let d = s.spawn(move || {
                destination::run_told(pr, dr, vec![theirs], &Stats::default(), &NoRejoin)
            });
            // The source: every block the same, then the Bye with the tally.
            while let Ok(frame) = ours.reader.read("the destination") {
                match frame {
                    proto::Frame::Digests { index, .. } => {
                        let mut f = Vec::new();
                        proto::BlockBuilder::begin(&mut f, index, 0, &[]).finish(false);
                        ours.sender.send(&mut f).unwrap();
                    }
                    proto::Frame::Complete { verify, .. } => {
                        let bye = proto::Frame::Bye {
                            verify,
                            tally: Some(sent),
                        };
                        let _ = ours.sender.send_frame(&bye);
                        break;
                    }
                    _ => {}
                }
            }
            d.join().unwrap()
        });
        match got {
            Ok((_, told)) => {
                assert!(refusal.is_empty(), "dry {dry}, {sent:?}: taken");
                assert_eq!(told, Some(sent));
            }
            Err(e) => assert!(
                !refusal.is_empty() && e.to_string().contains(refusal),
                "dry {dry}, {sent:?}: {e}"
            ),
        }
    }
}
