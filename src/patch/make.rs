//! The second sink beside the writer: a dry run's source hands every block
//! here instead of sending its changes, and this either writes a patch
//! (`--write-patch`, bdsync's client) or only counts (`--compare`).
//!
//! Workers finish blocks in any order; records are put back in block order
//! with a small map and written as they become ready, so a patch streams to
//! a pipe. The pre-image digest of every changed grain is the destination's
//! own digest, which the session already carries: making a patch moves no
//! destination data.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::format::{self, Kind, Range, Trailer};
use super::session_header;
use crate::block::is_zero;
use crate::compress::{Compressor, Level};
use crate::config::DryRun;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::lock::lock;
use crate::log::Log;
use crate::progress::human_bytes;
use crate::session::{DrySink, End, Params};

/// A block's contribution, waiting for its turn.
struct Ready {
    /// Encoded record and its check; `None` when the block is unchanged.
    record: Option<(Vec<u8>, u128)>,
    /// Changed ranges, for `-v` (absolute offset, length, zeros).
    ranges: Vec<(u64, u64, bool)>,
    data_bytes: u64,
    zero_bytes: u64,
}

struct State {
    next: u64,
    pending: BTreeMap<u64, Ready>,
    out: Option<Records>,
    trailer: Trailer,
    zero_bytes: u64,
    changed_blocks: u64,
    failed: Option<String>,
    /// Some record holds unknown spans (`-rescue`): a version 3 patch.
    unknown: bool,
}

/// Makes a patch, or counts what one would hold.
pub struct Maker<'a> {
    p: Params,
    state: Mutex<State>,
    compressors: Mutex<Vec<Compressor>>,
    level: Option<Level>,
    what: String,
    log: &'a Log,
    /// The header, its whole-target digests filled in at the end.
    header: format::Header,
    /// A local dry run: the destination's counters (see `DrySink::local`).
    local: Option<&'a crate::progress::Stats>,
}

/// Where a patch goes: a file, renamed into place once complete, or stdout.
/// The header holds digests known only when the session ends, so it is
/// written last: into the room left for it at the start of a file, or, for
/// stdout, before the records, which wait in an unnamed temporary file.
pub struct Output {
    /// stdout, for a patch written whole at once (an undo patch); a sink
    /// for a file.
    pub(super) writer: Box<dyn Write + Send>,
    /// (partial, final) names of a file.
    rename: Option<(PathBuf, PathBuf)>,
}

/// The file records are written to, and what becomes of it at the end.
struct Records {
    file: std::io::BufWriter<std::fs::File>,
    /// A spool for stdout; otherwise the patch file itself, with the
    /// header's room at its start.
    spool: bool,
}

impl Output {
    /// `None` is stdout; a path gets `PATH.part` until the trailer is written.
    pub fn open(path: Option<&Path>) -> Result<Output> {
        match path {
            None => Ok(Output {
                writer: Box::new(std::io::BufWriter::with_capacity(
                    1 << 20,
                    std::io::stdout(),
                )),
                rename: None,
            }),
            Some(path) => {
                let mut part = path.as_os_str().to_owned();
                part.push(".part");
                let part = PathBuf::from(part);
                // Only the name is made here; the maker opens it.
                std::fs::File::create(&part)
                    .map_err(|e| Error::io(format!("patch {}", part.display()), "create", e))?;
                super::part::started(&part, path);
                Ok(Output {
                    writer: Box::new(std::io::sink()),
                    rename: Some((part, path.to_path_buf())),
                })
            }
        }
    }

    /// The file the records go to: the `.part` file, or a spool for stdout.
    fn records(&self, what: &str) -> Result<Records> {
        let (file, spool) = match &self.rename {
            Some((part, _)) => (
                std::fs::OpenOptions::new()
                    .write(true)
                    .read(true)
                    .open(part)
                    .map_err(|e| Error::io(what, "open", e))?,
                false,
            ),
            None => (
                spool_file().map_err(|e| Error::io(what, "make a spool file", e))?,
                true,
            ),
        };
        Ok(Records {
            file: std::io::BufWriter::with_capacity(1 << 20, file),
            spool,
        })
    }
}

/// An unnamed temporary file in `$TMPDIR` (or `/tmp`): made, then unlinked.
fn spool_file() -> std::io::Result<std::fs::File> {
    let dir = std::env::temp_dir();
    let mut last = None;
    for attempt in 0..16u32 {
        let name = dir.join(format!(
            ".bsync-patch-{}-{attempt}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&name)
        {
            Ok(f) => {
                let _ = std::fs::remove_file(&name);
                return Ok(f);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no spool file")))
}

/// `--diffsize` of bdsync's client form, for the header of the patch it
/// makes (the form's patch is made deep below, by the dry session's sink).
static DIFFSIZE: Mutex<crate::config::DiffSize> = Mutex::new(crate::config::DiffSize::Strict);

/// Record `--diffsize` of bdsync's client form in the patches this process
/// makes.
pub fn record_diffsize(d: crate::config::DiffSize) {
    *lock(&DIFFSIZE) = d;
}

impl<'a> Maker<'a> {
    /// A maker for a session with parameters `p`; with `out`, a patch of
    /// `kind` naming `target` is written there, header first.
    pub fn new(
        p: &Params,
        output: Option<&Output>,
        target: &[u8],
        what: &str,
        log: &'a Log,
    ) -> Result<Maker<'a>> {
        let out = output.map(|o| o.records(what)).transpose()?;
        let mut state = State {
            next: p.first,
            pending: BTreeMap::new(),
            out,
            trailer: Trailer {
                records: 0,
                ranges: 0,
                data_bytes: 0,
                result: 0,
                chain: 0,
            },
            zero_bytes: 0,
            changed_blocks: 0,
            failed: None,
            unknown: false,
        };
        let mut header = session_header(Kind::Forward, p, target.to_vec());
        header.diffsize = *lock(&DIFFSIZE);
        header.whole = Some(format::Whole {
            original: 0,
            result: 0,
        });
        if let Some(out) = state.out.as_mut().filter(|o| !o.spool) {
            // Room for the header, written when its digests are known.
            let mut head = Vec::new();
            format::encode_header(&header, &mut head);
            out.file
                .write_all(&head)
                .map_err(|e| Error::io(what, "write the header", e))?;
        }
        Ok(Maker {
            p: *p,
            state: Mutex::new(state),
            compressors: Mutex::new(Vec::new()),
            level: p.compression,
            what: what.to_string(),
            log,
            header,
            local: None,
        })
    }

    fn encode(
        &self,
        index: u64,
        data: &[u8],
        ranges: &[Range],
        unknown: &[(u32, u32)],
    ) -> (Vec<u8>, u128) {
        let mut raw = Vec::new();
        for r in ranges.iter().filter(|r| !r.zero) {
            raw.extend_from_slice(&data[r.start as usize..(r.start + r.len) as usize]);
        }
        let mut c = lock(&self.compressors)
            .pop()
            .unwrap_or_else(|| Compressor::new(self.level));
        let mut stored = Vec::new();
        let compressed = c.append(std::iter::once(&raw[..]), &mut stored);
        lock(&self.compressors).push(c);
        let mut rec = Vec::with_capacity(stored.len() + 64 + ranges.len() * 41);
        // A block is at most 1 GiB.
        let raw_len = u32::try_from(raw.len()).unwrap_or(u32::MAX);
        let stored = format::Stored {
            raw_len,
            compressed,
            bytes: &stored,
        };
        let offset = self.p.geo.offset(index);
        let check = format::encode_record_unknown(offset, ranges, unknown, &stored, &mut rec);
        (rec, check)
    }

    /// Write every block whose turn it is.
    fn drain(&self, st: &mut State) -> Result<()> {
        while let Some(ready) = st.pending.remove(&st.next) {
            st.next += 1;
            st.zero_bytes += ready.zero_bytes;
            if ready.ranges.is_empty() {
                continue;
            }
            st.changed_blocks += 1;
            st.trailer.ranges += ready.ranges.len() as u64;
            st.trailer.data_bytes += ready.data_bytes;
            if self.log.is_verbose() {
                for (offset, len, zero) in &ready.ranges {
                    self.log.line(format!(
                        "differs: {len} bytes at offset {offset}{}",
                        if *zero { " (zeros)" } else { "" }
                    ));
                }
            }
            if let (Some((rec, check)), Some(out)) = (ready.record, st.out.as_mut()) {
                st.trailer.records += 1;
                st.trailer.chain = format::chain(st.trailer.chain, check);
                out.file
                    .write_all(&rec)
                    .map_err(|e| Error::io(&self.what, "write", e))?;
            }
        }
        Ok(())
    }

    /// After the session, whose verification digest `original` is the
    /// digest of the whole target as it is: write the header and the
    /// trailer and say what the patch holds (or, comparing, what would be
    /// sent). Returns whether anything differs.
    pub fn finish(&self, output: Option<Output>, original: u128) -> Result<bool> {
        let mut st = lock(&self.state);
        if let Some(why) = st.failed.take() {
            return Err(Error::Failed(why));
        }
        if st.next != self.p.geo.blocks() || !st.pending.is_empty() {
            return Err(Error::Failed(format!(
                "{}: the session ended at block {} of {}",
                self.what,
                st.next,
                self.p.geo.blocks()
            )));
        }
        let t = st.trailer;
        if let Some(out) = st.out.take() {
            let mut header = self.header.clone();
            header.whole = Some(format::Whole {
                original,
                result: t.result,
            });
            header.unknown = st.unknown;
            let mut head = Vec::new();
            format::encode_header(&header, &mut head);
            let mut tail = Vec::new();
            format::encode_trailer(&t, &mut tail);
            let written = write_out(out, &head, &tail, output);
            written.map_err(|e| Error::io(&self.what, "write", e))?;
        }
        let differ = st.changed_blocks > 0;
        let what = format!(
            "{} of {} blocks differ: {} of data and {} of zeros in {} ranges",
            st.changed_blocks,
            self.p.geo.blocks() - self.p.first,
            human_bytes(t.data_bytes),
            human_bytes(st.zero_bytes),
            t.ranges,
        );
        self.log.info(format!("{}: {what}", self.what));
        Ok(differ)
    }
}

/// Put the header and trailer around the records in `out`: in place in a
/// patch file (then renamed into place), or on stdout around the spool.
fn write_out(
    out: Records,
    head: &[u8],
    tail: &[u8],
    output: Option<Output>,
) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::FileExt;
    let mut file = out.file.into_inner().map_err(|e| e.into_error())?;
    if out.spool {
        file.seek(SeekFrom::Start(0))?;
        let mut stdout = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
        stdout.write_all(head)?;
        std::io::copy(&mut file, &mut stdout)?;
        stdout.write_all(tail)?;
        return stdout.flush();
    }
    file.write_all_at(head, 0)?;
    file.seek(SeekFrom::End(0))?;
    file.write_all(tail)?;
    file.flush()?;
    drop(file);
    if let Some(Output {
        rename: Some((part, path)),
        ..
    }) = output
    {
        super::part::complete(&part, &path)?;
    }
    Ok(())
}

impl DrySink for Maker<'_> {
    fn block(
        &self,
        index: u64,
        data: &[u8],
        theirs: &[Digest],
        ours: &[Digest],
        unreadable: &[(usize, usize)],
    ) -> Result<(bool, u64)> {
        let sub = self.p.range_size();
        let mut ranges = Vec::new();
        let mut listed = Vec::new();
        let (mut data_bytes, mut zero_bytes) = (0u64, 0u64);
        for (j, (mine, other)) in ours.iter().zip(theirs).enumerate() {
            let start = j * sub;
            let end = (start + sub).min(data.len());
            // A grain with unknown bytes is recorded whatever the digests:
            // the patch says where the source is unknown.
            let lost = crate::proto::unreadable_mask(unreadable, start, end) != 0;
            if mine == other && !lost {
                continue;
            }
            let zero = !lost && is_zero(&data[start..end]);
            let len = (end - start) as u64;
            if zero {
                zero_bytes += len;
            } else {
                data_bytes += len;
            }
            listed.push((self.p.geo.offset(index) + start as u64, len, zero));
            ranges.push(Range {
                // Within a block of at most 1 GiB.
                start: u32::try_from(start).unwrap_or(u32::MAX),
                len: u32::try_from(end - start).unwrap_or(u32::MAX),
                zero,
                before: *other,
                after: *mine,
            });
        }
        let writes = lock(&self.state).out.is_some();
        let unknown = super::unknown::of_block(unreadable, sub);
        let record =
            (writes && !ranges.is_empty()).then(|| self.encode(index, data, &ranges, &unknown));
        let hash = format::block_hash(index, ours);
        let mut st = lock(&self.state);
        st.unknown |= !unknown.is_empty();
        st.trailer.result = st.trailer.result.wrapping_add(hash);
        st.pending.insert(
            index,
            Ready {
                record,
                ranges: listed,
                data_bytes,
                zero_bytes,
            },
        );
        if let Err(e) = self.drain(&mut st) {
            st.failed.get_or_insert_with(|| e.to_string());
            return Err(e);
        }
        Ok((!ranges.is_empty(), data_bytes))
    }

    fn local(&self) -> Option<&crate::progress::Stats> {
        self.local
    }
}

/// Run the source of a dry session as `dry` asks: the session, then the
/// patch's trailer or the comparison's verdict (`Error::Differ`, exit 3).
/// `target` is the destination's name, stored in a patch; `end` is the
/// source's end of the session, which gets the sink.
pub fn run_source(dry: &DryRun, target: &[u8], end: End<'_>) -> Result<()> {
    run_source_here(dry, target, end, None)
}

/// [`run_source`]; with `local`, the destination's end runs in this
/// process and counts into it.
pub(super) fn run_source_here(
    dry: &DryRun,
    target: &[u8],
    end: End<'_>,
    local: Option<&crate::progress::Stats>,
) -> Result<()> {
    let (p, log, disk) = (end.params, end.log, end.disk);
    // Where the session notes the destination's size, if it says that
    // differs (a compare counts that as a difference).
    let own = std::sync::Arc::default();
    let stats = end.counters.unwrap_or(&own);
    let (output, what) = match dry {
        DryRun::Compare => (None, "compare".to_string()),
        DryRun::Patch(path) => (
            Some(Output::open(path.as_deref())?),
            match path {
                Some(p) => format!("patch {}", p.display()),
                None => "patch on stdout".to_string(),
            },
        ),
    };
    let mut maker = Maker::new(p, output.as_ref(), target, &what, log)?;
    maker.local = local;
    let ran = crate::session::run(End {
        dry: Some(&maker),
        counters: Some(stats),
        ..end
    });
    let original = match ran {
        Ok(verify) => verify,
        Err(e) => {
            if let Some(Output {
                rename: Some((part, _)),
                ..
            }) = output
            {
                super::part::remove(&part);
            }
            return Err(e);
        }
    };
    let differ = maker.finish(output, original)?;
    if let Some(rescue) = disk.rescue() {
        rescue.patched(p.geo, log)?;
    }
    // A destination of another size differs even where its blocks agree:
    // a sync would truncate or grow it (refuse a smaller device). It said
    // so in a `Notice`, here and over the network alike.
    let resized = stats
        .destination_size
        .get()
        .filter(|&&(n, _)| n != p.geo.size);
    if let Some(&(n, device)) = resized {
        let note = crate::summary::resized("the destination", n, p.geo.size, device);
        log.info(format!("{what}: {note}"));
    }
    if *dry == DryRun::Compare {
        if differ || resized.is_some() {
            return Err(Error::Differ("compare: the two sides differ".into()));
        }
        log.info("compare: the two sides are identical");
    }
    Ok(())
}
