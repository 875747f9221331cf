//! `bsync --patch` with the patch from a pipe, read once: the whole
//! target is digested first and must be the original image (or the
//! result: already applied), then each record is checked just before it is
//! written. A refusal reads the rest of the patch, writing nothing, to tell
//! a target an earlier run patched partway (which a file finishes) from a
//! wrong one.

use std::io::{BufReader, Read};
use std::path::Path;

use super::format::{self, Decoder, Header, Item};
use super::records::{
    Counted, State, Wrote, after_result, after_writing, check_trailer, corrupt, cut_short, differs,
    diffsize, finish, no_undo, range_state, stop_if_asked, write_record, writing, written,
};
use super::rollback::UndoWriter;
use super::stop::Stop;
use super::target::{
    check_size, check_whole, digest_as_before, open_target, result_digest_masked, target_path,
};
use super::unknown;
use crate::compress::Decompressor;
use crate::config::{Apply, DiffSize, Env};
use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::log::Log;
use crate::progress::human_bytes;

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

/// Apply the patch `r` (`what`) from a pipe, as `a` asks.
pub(super) fn apply(
    a: &Apply,
    mut r: BufReader<Box<dyn Read>>,
    what: &str,
    (env, log, stop): (&Env, &Log, &Stop),
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
            "{}: this patch is already applied; nothing was written{}",
            disk.label(),
            no_undo(a)
        ));
        return Ok(());
    }
    let mut undo = a
        .undo
        .as_deref()
        .map(|p| UndoWriter::create(p, &h, &disk, &path, diffsize))
        .transpose()?;
    writing(stop, &disk, a);
    let mut buf = Vec::new();
    let mut read = Counted::default();
    let mut wrote = Wrote::default();
    let mut skipped = 0u64;
    let mut spans = Vec::new();
    // An undo patch cut short right after this record (see below).
    let mut ended = false;
    let stopped = |disk: &Disk, e: Error, wrote: Wrote| -> Error {
        if !wrote.touched {
            return Error::Failed(format!("{e}; nothing was written"));
        }
        after_writing(e, disk, a, wrote.ranges, wrote.bytes)
    };
    let trailer = 'records: loop {
        let item = match d.next(&mut dec) {
            Ok(item) => item,
            Err(e) => {
                break cut_short(&d, &h, read, e, what, log).map_err(|e| stopped(&disk, e, wrote));
            }
        };
        match item {
            Item::Record(rec, check) => {
                read.records += 1;
                read.chain = format::chain(read.chain, check);
                unknown::collect(&rec, &mut spans);
                let mut skip = Vec::with_capacity(rec.ranges.len());
                for r in &rec.ranges {
                    read.ranges += 1;
                    match range_state(&disk, &h, &rec, r, &mut buf)? {
                        State::Before => skip.push(false),
                        State::After => {
                            skipped += 1;
                            skip.push(true);
                        }
                        State::Other => {
                            // The last record of an undo patch cut short:
                            // its apply was killed while writing these
                            // ranges, which are put back whatever they hold.
                            if !ended && h.undo_result.is_some() {
                                ended = d.next(&mut dec).is_err() && d.cut;
                            }
                            if !ended {
                                let e = differs(&disk, &rec, r, "this range was not written");
                                break 'records Err(stopped(&disk, e, wrote));
                            }
                            skip.push(false);
                        }
                    }
                }
                if skip.iter().all(|s| *s) {
                    continue;
                }
                stop_if_asked(stop, &disk, a, &mut undo, wrote);
                if diffsize == DiffSize::Resize && !disk.is_device() && disk.size() < h.source_size
                {
                    wrote.touched = true;
                    if let Err(e) = disk.fit_to(h.source_size) {
                        break 'records Err(stopped(&disk, e, wrote));
                    }
                }
                if let Some(Err(e)) = undo.as_mut().map(|u| u.record(&disk, &rec, &skip)) {
                    break 'records Err(stopped(&disk, e, wrote));
                }
                wrote.touched = true;
                match write_record(&disk, &rec, &skip) {
                    Ok(n) => wrote.bytes += n,
                    Err(e) => break 'records Err(stopped(&disk, e, wrote)),
                }
                wrote.ranges += skip.iter().filter(|s| !**s).count() as u64;
            }
            Item::End(t) => break Ok(t),
        }
    };
    let trailer = match trailer {
        Ok(t) => t,
        Err(e) => {
            // What was replaced so far can be put back.
            if let Some(u) = undo {
                u.finish(&disk)?;
            }
            return Err(e);
        }
    };
    written(stop, &disk, a, wrote);
    let trailer_ok = check_trailer(what, &trailer, read.records, read.ranges, read.chain);
    if let Some(u) = undo {
        u.finish(&disk)?;
    }
    if let Err(e) = trailer_ok {
        return Err(stopped(&disk, e, wrote));
    }
    if wrote.ranges == 0 && (disk.size() == h.source_size || diffsize != DiffSize::Resize) {
        let got = result_digest_masked(&disk, &h, h.source_size, &spans)?;
        if got == trailer.result && !wrote.touched {
            // Nothing to undo: no undo patch, so its name stays free.
            if let Some(u) = &a.undo {
                let _ = std::fs::remove_file(u);
            }
            log.line(format!(
                "{}: this patch is already applied ({skipped} ranges); nothing was written{}",
                disk.label(),
                no_undo(a)
            ));
            return Ok(());
        }
    }
    if let Err(e) = finish(&mut disk, &h, &trailer, (diffsize, &spans), what, log) {
        if !wrote.touched {
            return Err(Error::Failed(format!("{e}; nothing was written")));
        }
        return Err(after_result(e, &disk, a, wrote));
    }
    log.info(format!(
        "{}: applied {what}: {} written in {} ranges",
        disk.label(),
        human_bytes(wrote.bytes),
        wrote.ranges
    ));
    Ok(())
}
