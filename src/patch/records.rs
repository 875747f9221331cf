//! What applying a patch does with its records, from a file (`apply.rs`)
//! and from a pipe (`pipe.rs`) alike: how a range of the target compares
//! with what the patch expects, writing a record, the trailer's check, the
//! end of an undo patch cut short, the result check after writing, and
//! what a stop after the first write says: that the target was changed,
//! and how to put it back.

use std::io::Read;

use super::format::{self, Decoder, Header, Range, Record, Trailer};
use super::rollback::UndoWriter;
use super::stop::Stop;
use super::target::{grain_page, read_range, result_digest_masked};
use super::unknown;
use crate::config::{Apply, DiffSize};
use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::log::Log;
use crate::progress::human_bytes;

/// `--diffsize` as given to `--patch`, else as recorded in the patch.
pub(super) fn diffsize(a: &Apply, h: &Header) -> DiffSize {
    a.diffsize.unwrap_or(h.diffsize)
}

pub(super) fn corrupt(what: &str, e: format::FormatError) -> Error {
    Error::Failed(format!("{what}: {e}"))
}

/// How a range of the target compares with what the patch expects.
#[derive(PartialEq, Eq, Clone, Copy)]
pub(super) enum State {
    Before,
    After,
    Other,
}

pub(super) fn range_state(
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

pub(super) fn differs(disk: &Disk, rec: &Record, r: &Range, done: &str) -> Error {
    Error::Failed(format!(
        "{}: differs from what the patch expects at offset {} ({} bytes): not the target \
         the patch was made for, or changed since; {done}",
        disk.label(),
        rec.offset + u64::from(r.start),
        r.len
    ))
}

/// Write one record's ranges that are not already applied; returns bytes written.
pub(super) fn write_record(disk: &Disk, rec: &Record, skip: &[bool]) -> Result<u64> {
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

pub(super) fn check_trailer(
    what: &str,
    t: &Trailer,
    records: u64,
    ranges: u64,
    chain: u128,
) -> Result<()> {
    if t.records != records || t.ranges != ranges || t.chain != chain {
        return Err(Error::Failed(format!(
            "{what}: corrupted: the trailer does not match the records read \
             ({} records, {records} read)",
            t.records
        )));
    }
    Ok(())
}

/// The records read so far: how many, their ranges, the chain of checks.
#[derive(Default, Clone, Copy)]
pub(super) struct Counted {
    pub records: u64,
    pub ranges: u64,
    pub chain: u128,
}

/// `d` failed to read an item of patch `h`: an undo patch written while
/// applying that ends early (the apply was killed after saving a record,
/// or while saving one) ends at its last whole record, `read` so far; its
/// result is the digest the target had before that apply, in its header.
/// Anything else is the error it is.
pub(super) fn cut_short<R: Read>(
    d: &Decoder<R>,
    h: &Header,
    read: Counted,
    e: format::FormatError,
    what: &str,
    log: &Log,
) -> Result<Trailer> {
    let Some(result) = h.undo_result.filter(|_| d.cut) else {
        return Err(corrupt(what, e));
    };
    log.line(format!(
        "{what}: cut short after {} whole records (the apply that wrote it was stopped): \
         they are applied, and the whole result checked against the digest the target had \
         before that apply",
        read.records
    ));
    Ok(Trailer {
        records: read.records,
        ranges: read.ranges,
        data_bytes: 0,
        result,
        chain: read.chain,
    })
}

/// After writing: fit the size, flush, and check the whole result (its
/// `unknown` spans read as zeros).
pub(super) fn finish(
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
            "{}: after applying {what}, the content's digest {got:032x} is not {} {:032x}",
            disk.label(),
            if h.kind == format::Kind::Undo {
                "the digest the target had before that apply"
            } else {
                "the patch's result"
            },
            t.result
        )));
    }
    log.info(format!(
        "{}: result digest {got:032x} checked",
        disk.label()
    ));
    Ok(())
}

/// What a failure after the first write says: the target changed, and
/// how to put it back.
pub(super) fn after_writing(e: Error, disk: &Disk, a: &Apply, ranges: u64, bytes: u64) -> Error {
    let _ = disk.flush();
    Error::Failed(changed(
        &e,
        disk,
        a,
        Wrote {
            ranges,
            bytes,
            touched: true,
        },
        true,
    ))
}

/// What a failed result check (`finish`) says after writing: the target
/// changed, and how to put it back, but not to apply the patch again:
/// the target holds something else outside the patch's ranges, which the
/// whole-target check of another apply refuses as well.
pub(super) fn after_result(e: Error, disk: &Disk, a: &Apply, wrote: Wrote) -> Error {
    let _ = disk.flush();
    let wrote = Wrote {
        touched: true,
        ..wrote
    };
    Error::Failed(changed(&e, disk, a, wrote, false))
}

/// `E; the target WAS changed: ...; undo with ...`; `again`: applying the
/// same patch again would finish it (a stop, not a wrong result).
fn changed(e: &Error, disk: &Disk, a: &Apply, wrote: Wrote, again: bool) -> String {
    format!(
        "{e}; the target WAS changed: {} ranges ({}) written in full before the stop; {}",
        wrote.ranges,
        human_bytes(wrote.bytes),
        how_to_undo(disk, a, again)
    )
}

fn how_to_undo(disk: &Disk, a: &Apply, again: bool) -> String {
    match &a.undo {
        Some(u) => format!(
            "undo with: bsync --patch={} < {}",
            disk_path(disk),
            u.display()
        ),
        None if again => "no undo patch was asked for (--remdata=FILE); applying the same \
                          patch again from a file finishes it"
            .to_string(),
        None => "no undo patch was asked for (--remdata=FILE); applying the same patch \
                 again would not help: the target holds something else than the patch \
                 expects outside its ranges (changed meanwhile?)"
            .to_string(),
    }
}

/// The path in a disk's label (`destination PATH`).
fn disk_path(disk: &Disk) -> &str {
    disk.label()
        .strip_prefix("destination ")
        .unwrap_or(disk.label())
}

/// Ranges and bytes written so far, and whether the target changed at all
/// (`--diffsize=resize` grows it before the first record).
#[derive(Default, Clone, Copy)]
pub(super) struct Wrote {
    pub ranges: u64,
    pub bytes: u64,
    pub touched: bool,
}

/// About to write: what a signal says should the apply not reach the
/// end of a record in time.
pub(super) fn writing(stop: &Stop, disk: &Disk, a: &Apply) {
    stop.writing(format!(
        "{}: stopped while writing: the target WAS changed; {} (every range it \
         overwrote went into it first; cut short, it applies up to its last whole record)",
        disk.label(),
        how_to_undo(disk, a, true)
    ));
}

/// Between two records: if a signal asked, finish the undo patch (or
/// remove it, nothing written), say what was changed and end.
pub(super) fn stop_if_asked(
    stop: &Stop,
    disk: &Disk,
    a: &Apply,
    undo: &mut Option<UndoWriter>,
    wrote: Wrote,
) {
    if !stop.asked() {
        return;
    }
    if !wrote.touched {
        if let Some(u) = undo.take() {
            u.discard();
        }
        stop.now(format!(
            "{}: stopped before anything was written; the target is untouched",
            disk.label()
        ));
    }
    let finished = undo.take().map(|u| u.finish(disk));
    let e = match finished {
        Some(Err(e)) => Error::Failed(format!("{}: stopped; {e}", disk.label())),
        _ => Error::Failed(format!("{}: stopped", disk.label())),
    };
    let _ = disk.flush();
    stop.now(changed(&e, disk, a, wrote, true))
}

/// Every record written: what a signal says from now on.
pub(super) fn written(stop: &Stop, disk: &Disk, a: &Apply, wrote: Wrote) {
    let e = Error::Failed(format!(
        "{}: stopped after the last record, before the result was checked",
        disk.label()
    ));
    stop.written(changed(&e, disk, a, wrote, true));
}

/// What an "already applied" line adds when `--remdata` was given.
pub(super) fn no_undo(a: &Apply) -> String {
    a.undo
        .as_ref()
        .map(|u| {
            format!(
                ", and no undo patch was made ({} was not created: nothing to undo)",
                u.display()
            )
        })
        .unwrap_or_default()
}
