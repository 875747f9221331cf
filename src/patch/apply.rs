//! `bsync --patch[=TARGET]`: apply a patch, refusing the wrong target.
//!
//! Every range of a patch carries the digest of what the target must hold
//! there before (and after), and the header the digest of the whole target
//! the patch was made from. Nothing is written before the whole target is
//! shown to be that image: record checks alone cannot see a wrong target
//! whose bytes agree where the records lie (a change inside a zero area).
//! From a file (a regular file on stdin included) every range is checked
//! first, then the whole target is digested with the ranges already
//! patched counted as they were before, so an interrupted apply can be
//! finished; from a pipe the whole target is digested first and must be
//! the original image (or the result: already applied), then each record
//! is checked just before it is written. A range that already holds its
//! new content is skipped, so a patch applied twice writes nothing more. At
//! the end the digest of the whole result is checked against the patch's
//! trailer. A failure after the first write says so, and how to undo.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use super::format::{self, Decoder, Header, Item, Range, Record, Trailer};
use super::rollback::UndoWriter;
use super::target::{
    check_size, check_whole, digest_as_before, grain_page, open_target, read_range,
    result_digest_masked, target_path,
};
use super::unknown;
use crate::compress::Decompressor;
use crate::config::{Apply, DiffSize, Env};
use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::log::Log;
use crate::progress::human_bytes;

/// Where the patch comes from.
enum Input {
    /// Seekable: checked in full before anything is written.
    File(BufReader<File>, String),
    /// Read once.
    Pipe(BufReader<Box<dyn Read>>, String),
}

fn corrupt(what: &str, e: format::FormatError) -> Error {
    Error::Failed(format!("{what}: {e}"))
}

/// Apply the patch `a` names.
pub fn run(a: &Apply, env: &Env, log: &Log) -> Result<()> {
    let input = open_input(a.patch.as_deref())?;
    let what = match &input {
        Input::File(_, w) | Input::Pipe(_, w) => w.clone(),
    };
    match input {
        Input::File(r, _) => apply_file(a, r, &what, env, log),
        Input::Pipe(r, _) => apply_pipe(a, r, &what, env, log),
    }
}

fn open_input(path: Option<&Path>) -> Result<Input> {
    let (file, what) = match path {
        Some(p) => {
            let what = format!("patch {}", p.display());
            let f = File::open(p).map_err(|e| Error::io(&what, "open", e))?;
            (f, what)
        }
        None => {
            let fd = std::os::fd::AsFd::as_fd(&std::io::stdin())
                .try_clone_to_owned()
                .map_err(|e| Error::io("patch on stdin", "open", e))?;
            (File::from(fd), "patch on stdin".to_string())
        }
    };
    let regular = file.metadata().is_ok_and(|m| m.is_file());
    if regular {
        Ok(Input::File(BufReader::with_capacity(1 << 20, file), what))
    } else {
        let r: Box<dyn Read> = Box::new(file);
        Ok(Input::Pipe(BufReader::with_capacity(1 << 20, r), what))
    }
}

/// `--diffsize` as given to `--patch`, else as recorded in the patch.
fn diffsize(a: &Apply, h: &Header) -> DiffSize {
    a.diffsize.unwrap_or(h.diffsize)
}

/// From a pipe the whole target is checked before any record arrives, so
/// a target that an earlier run patched partway is refused like a wrong
/// one (`refused`). Read the rest of the patch, writing nothing: if the
/// target is the image with some of the records' ranges applied, say that
/// applying from a file finishes it; otherwise the refusal stands as it is.
fn refused_from_a_pipe<R: Read>(
    refused: Error,
    d: &mut Decoder<R>,
    disk: &Disk,
    h: &Header,
    path: &Path,
) -> Error {
    let Some(whole) = h.whole else {
        return refused;
    };
    let (mut dec, mut buf, mut befores) = (Decompressor::default(), Vec::new(), Vec::new());
    d.skip_data = true;
    loop {
        match d.next(&mut dec) {
            Ok(Item::Record(rec, _)) => {
                for r in &rec.ranges {
                    match range_state(disk, h, &rec, r, &mut buf) {
                        Ok(State::After) => {
                            befores.push((rec.offset + u64::from(r.start), r.before))
                        }
                        Ok(State::Before) => {}
                        _ => return refused,
                    }
                }
            }
            Ok(Item::End(_)) => break,
            Err(_) => return refused,
        }
    }
    let got = digest_as_before(disk, h, h.source_size, &befores);
    if befores.is_empty() || !got.is_ok_and(|g| g == whole.original) {
        return refused;
    }
    Error::Failed(format!(
        "{refused}. It is that image with {} of the patch's ranges applied already (an \
         earlier run stopped partway); from a file, which is read twice, the patch \
         finishes it: bsync --patch={} < FILE",
        befores.len(),
        path.display()
    ))
}

/// What a failure after the first write says: the target changed, and
/// how to put it back.
fn after_writing(e: Error, disk: &Disk, a: &Apply, ranges: u64, bytes: u64) -> Error {
    let _ = disk.flush();
    let undo = match &a.undo {
        Some(u) => format!(
            "undo with: bsync --patch={} < {}",
            disk_path(disk),
            u.display()
        ),
        None => "no undo patch was asked for (--remdata=FILE); applying the same patch \
                 again from a file finishes it"
            .to_string(),
    };
    Error::Failed(format!(
        "{e}; the target WAS changed: {ranges} ranges ({}) written in full before the \
         stop; {undo}",
        human_bytes(bytes)
    ))
}

/// The path in a disk's label (`destination PATH`).
fn disk_path(disk: &Disk) -> &str {
    disk.label()
        .strip_prefix("destination ")
        .unwrap_or(disk.label())
}

/// How a range of the target compares with what the patch expects.
#[derive(PartialEq, Eq, Clone, Copy)]
enum State {
    Before,
    After,
    Other,
}

fn range_state(
    disk: &Disk,
    h: &Header,
    rec: &Record,
    r: &Range,
    buf: &mut Vec<u8>,
) -> Result<State> {
    read_range(disk, rec.offset + u64::from(r.start), buf, r.len as usize)?;
    let d = crate::proto::range_digest_of(h.salt, buf, grain_page(h.grain));
    // A range with unknown bytes may be both: writing it would change nothing.
    let applied = unknown::applied(rec, r, buf, h.salt, grain_page(h.grain));
    Ok(if d == r.before && !applied {
        State::Before
    } else if d == r.after || applied {
        State::After
    } else {
        State::Other
    })
}

fn differs(disk: &Disk, rec: &Record, r: &Range, done: &str) -> Error {
    Error::Failed(format!(
        "{}: differs from what the patch expects at offset {} ({} bytes): not the target \
         the patch was made for, or changed since; {done}",
        disk.label(),
        rec.offset + u64::from(r.start),
        r.len
    ))
}

/// Write one record's ranges that are not already applied; returns bytes written.
fn write_record(disk: &Disk, rec: &Record, skip: &[bool]) -> Result<u64> {
    let mut at = 0usize;
    let mut written = 0;
    for (r, &skip) in rec.ranges.iter().zip(skip) {
        let offset = rec.offset + u64::from(r.start);
        let len = r.len as usize;
        let fail = |e| Error::io(disk.label(), format!("write at offset {offset}"), e);
        if !r.zero {
            if !skip {
                unknown::write_known(disk, rec, r, &rec.data[at..at + len], offset)?;
            }
            at += len;
        } else if !skip {
            disk.clear(offset, len as u64).map_err(fail)?;
        }
        if !skip {
            written += len as u64;
        }
    }
    Ok(written)
}

fn check_trailer(what: &str, t: &Trailer, records: u64, ranges: u64, chain: u128) -> Result<()> {
    if t.records != records || t.ranges != ranges || t.chain != chain {
        return Err(Error::Failed(format!(
            "{what}: corrupted: the trailer does not match the records read \
             ({} records, {records} read)",
            t.records
        )));
    }
    Ok(())
}

/// After writing: fit the size, flush, and check the whole result (its
/// `unknown` spans read as zeros).
fn finish(
    disk: &mut Disk,
    h: &Header,
    t: &Trailer,
    (diffsize, unknown): (DiffSize, &[(u64, u64)]),
    what: &str,
    log: &Log,
) -> Result<()> {
    if diffsize == DiffSize::Resize && !disk.is_device() && disk.size() != h.source_size {
        disk.fit_to(h.source_size)?;
    }
    disk.flush()?;
    let size = h.source_size;
    let got = result_digest_masked(disk, h, size, unknown)?;
    if got != t.result {
        return Err(Error::Failed(format!(
            "{}: after applying {what}, the content's digest {got:032x} is not the \
             patch's result {:032x}",
            disk.label(),
            t.result
        )));
    }
    log.info(format!(
        "{}: result digest {got:032x} checked",
        disk.label()
    ));
    Ok(())
}

fn apply_file(a: &Apply, mut r: BufReader<File>, what: &str, env: &Env, log: &Log) -> Result<()> {
    // Pass 1: the whole patch is read and checked, and every range of the
    // target compared, before anything is written.
    let mut dec = Decompressor::default();
    let mut d = Decoder::new(&mut r);
    // The records' checks cover their stored bytes: no need to decompress.
    d.skip_data = true;
    let h = d.header().map_err(|e| corrupt(what, e))?;
    let path = target_path(a, &h, log)?;
    let diffsize = diffsize(a, &h);
    let mut disk = open_target(&path, env, log)?;
    check_size(&disk, &h, diffsize, log)?;
    let mut buf = Vec::new();
    let (mut records, mut ranges, mut chain) = (0u64, 0u64, 0u128);
    let (mut pending, mut applied) = (0u64, 0u64);
    let mut first_other: Option<Error> = None;
    // Which ranges hold their new content already, for the second pass.
    let mut done: Vec<bool> = Vec::new();
    // Those ranges' offsets and digests before, for the whole-target check.
    let mut befores: Vec<(u64, u128)> = Vec::new();
    let mut spans = Vec::new();
    let trailer = loop {
        match d.next(&mut dec).map_err(|e| corrupt(what, e))? {
            Item::Record(rec, check) => {
                records += 1;
                unknown::collect(&rec, &mut spans);
                chain = format::chain(chain, check);
                for r in &rec.ranges {
                    ranges += 1;
                    let state = range_state(&disk, &h, &rec, r, &mut buf)?;
                    done.push(state == State::After);
                    if state == State::After {
                        befores.push((rec.offset + u64::from(r.start), r.before));
                    }
                    match state {
                        State::Before => pending += 1,
                        State::After => applied += 1,
                        State::Other => {
                            if first_other.is_none() {
                                first_other = Some(differs(&disk, &rec, r, "nothing was written"));
                            }
                        }
                    }
                }
            }
            Item::End(t) => break t,
        }
    };
    check_trailer(what, &trailer, records, ranges, chain)?;
    let mut extra = [0u8; 1];
    if d_read_more(&mut r, &mut extra) {
        return Err(Error::Failed(format!(
            "{what}: corrupted: bytes after the trailer"
        )));
    }
    if let Some(e) = first_other {
        return Err(e);
    }
    check_whole(&disk, &h, &befores, what, false)?;
    drop(befores);
    let undo = a
        .undo
        .as_deref()
        .map(|p| UndoWriter::create(p, &h, &disk, &path))
        .transpose()?;
    if pending == 0 && (disk.size() == h.source_size || diffsize != DiffSize::Resize) {
        let got = result_digest_masked(&disk, &h, h.source_size, &spans)?;
        if got == trailer.result {
            log.line(format!(
                "{}: this patch is already applied ({applied} ranges); nothing was written",
                disk.label()
            ));
            if let Some(u) = undo {
                u.finish()?;
            }
            return Ok(());
        }
    }
    // Pass 2: write.
    r.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(what, "seek", e))?;
    let mut d = Decoder::new(&mut r);
    d.header().map_err(|e| corrupt(what, e))?;
    let mut undo = undo;
    let (mut written, mut wrote) = (0u64, 0u64);
    // The target was opened exclusively where it is a device; a file that
    // someone else writes meanwhile is caught by the result digest.
    let mut states = done.into_iter();
    let mut pass = || -> Result<()> {
        if diffsize == DiffSize::Resize && !disk.is_device() && disk.size() < h.source_size {
            disk.fit_to(h.source_size)?;
        }
        while let Item::Record(rec, _) = d.next(&mut dec).map_err(|e| corrupt(what, e))? {
            let skip: Vec<bool> = states.by_ref().take(rec.ranges.len()).collect();
            if skip.len() != rec.ranges.len() {
                return Err(Error::Failed(format!(
                    "{what}: changed while it was applied"
                )));
            }
            if let Some(u) = &mut undo {
                u.record(&disk, &rec, &skip)?;
            }
            written += write_record(&disk, &rec, &skip)?;
            wrote += skip.iter().filter(|s| !**s).count() as u64;
        }
        if let Some(u) = undo.take() {
            u.finish()?;
        }
        finish(&mut disk, &h, &trailer, (diffsize, &spans), what, log)
    };
    let passed = pass();
    if let Err(e) = passed {
        return Err(after_writing(e, &disk, a, wrote, written));
    }
    log.info(format!(
        "{}: applied {what}: {} written in {pending} ranges{}",
        disk.label(),
        human_bytes(written),
        if applied > 0 {
            format!(", {applied} ranges were already applied")
        } else {
            String::new()
        }
    ));
    Ok(())
}

fn d_read_more(r: &mut impl Read, b: &mut [u8; 1]) -> bool {
    matches!(r.read(b), Ok(n) if n > 0)
}

fn apply_pipe(
    a: &Apply,
    mut r: BufReader<Box<dyn Read>>,
    what: &str,
    env: &Env,
    log: &Log,
) -> Result<()> {
    let mut dec = Decompressor::default();
    let mut d = Decoder::new(&mut r);
    let h = d.header().map_err(|e| corrupt(what, e))?;
    let path = target_path(a, &h, log)?;
    let diffsize = diffsize(a, &h);
    let mut disk = open_target(&path, env, log)?;
    check_size(&disk, &h, diffsize, log)?;
    // The whole target first: the records come only once, as they are
    // written.
    let whole = check_whole(&disk, &h, &[], what, true);
    let whole = whole.map_err(|e| refused_from_a_pipe(e, &mut d, &disk, &h, &path));
    if whole? {
        d.skip_data = true;
        let (mut records, mut ranges, mut chain) = (0u64, 0u64, 0u128);
        let trailer = loop {
            match d.next(&mut dec).map_err(|e| corrupt(what, e))? {
                Item::Record(rec, check) => {
                    records += 1;
                    ranges += rec.ranges.len() as u64;
                    chain = format::chain(chain, check);
                }
                Item::End(t) => break t,
            }
        };
        check_trailer(what, &trailer, records, ranges, chain)?;
        log.line(format!(
            "{}: this patch is already applied; nothing was written",
            disk.label()
        ));
        return Ok(());
    }
    let mut undo = a
        .undo
        .as_deref()
        .map(|p| UndoWriter::create(p, &h, &disk, &path))
        .transpose()?;
    let mut buf = Vec::new();
    let (mut records, mut ranges, mut chain) = (0u64, 0u64, 0u128);
    let (mut written, mut applied, mut skipped) = (0u64, 0u64, 0u64);
    let mut resized = false;
    let mut spans = Vec::new();
    // `touched`: something may have been written (a write failed partway).
    let stopped = |disk: &Disk, e: Error, written: u64, applied: u64, touched: bool| -> Error {
        if applied == 0 && !touched {
            return Error::Failed(format!("{e}; nothing was written"));
        }
        after_writing(e, disk, a, applied, written)
    };
    let trailer = 'records: loop {
        let item = match d.next(&mut dec) {
            Ok(item) => item,
            Err(e) => break Err(stopped(&disk, corrupt(what, e), written, applied, false)),
        };
        match item {
            Item::Record(rec, check) => {
                records += 1;
                chain = format::chain(chain, check);
                unknown::collect(&rec, &mut spans);
                let mut skip = Vec::with_capacity(rec.ranges.len());
                for r in &rec.ranges {
                    ranges += 1;
                    match range_state(&disk, &h, &rec, r, &mut buf)? {
                        State::Before => skip.push(false),
                        State::After => {
                            skipped += 1;
                            skip.push(true);
                        }
                        State::Other => {
                            let e = differs(&disk, &rec, r, "this range was not written");
                            break 'records Err(stopped(&disk, e, written, applied, false));
                        }
                    }
                }
                if skip.iter().all(|s| *s) {
                    continue;
                }
                let mut write = || -> Result<u64> {
                    if !resized
                        && diffsize == DiffSize::Resize
                        && !disk.is_device()
                        && disk.size() < h.source_size
                    {
                        disk.fit_to(h.source_size)?;
                        resized = true;
                    }
                    if let Some(u) = &mut undo {
                        u.record(&disk, &rec, &skip)?;
                    }
                    write_record(&disk, &rec, &skip)
                };
                match write() {
                    Ok(n) => written += n,
                    Err(e) => break 'records Err(stopped(&disk, e, written, applied, true)),
                }
                applied += skip.iter().filter(|s| !**s).count() as u64;
            }
            Item::End(t) => break Ok(t),
        }
    };
    let trailer = match trailer {
        Ok(t) => t,
        Err(e) => {
            // What was replaced so far can be put back.
            if let Some(u) = undo {
                u.finish()?;
            }
            return Err(e);
        }
    };
    let trailer_ok = check_trailer(what, &trailer, records, ranges, chain);
    if let Some(u) = undo {
        u.finish()?;
    }
    if let Err(e) = trailer_ok {
        return Err(stopped(&disk, e, written, applied, false));
    }
    if applied == 0 && (disk.size() == h.source_size || diffsize != DiffSize::Resize) {
        let got = result_digest_masked(&disk, &h, h.source_size, &spans)?;
        if got == trailer.result {
            log.line(format!(
                "{}: this patch is already applied ({skipped} ranges); nothing was written",
                disk.label()
            ));
            return Ok(());
        }
    }
    if let Err(e) = finish(&mut disk, &h, &trailer, (diffsize, &spans), what, log) {
        return Err(stopped(&disk, e, written, applied, false));
    }
    log.info(format!(
        "{}: applied {what}: {} written in {applied} ranges",
        disk.label(),
        human_bytes(written)
    ));
    Ok(())
}
