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
//! finished (an undo patch, which has no such digest: with all its ranges
//! counted as what they put back, the target must be the image before the
//! apply that wrote it, `check_undo`); from a pipe the whole target is digested first and must be
//! the original image (or the result: already applied), then each record
//! is checked just before it is written. A range that already holds its
//! new content is skipped, so a patch applied twice writes nothing more. At
//! the end the digest of the whole result is checked against the patch's
//! trailer. A failure after the first write says so, and how to undo; so
//! does Ctrl-C, SIGTERM or SIGHUP, which stops an apply between two
//! records (`stop.rs`). The pass from a pipe is `pipe.rs`; what both do
//! with a record, `records.rs`.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use super::format::{self, Decoder, Item};
use super::records::{
    Counted, State, Wrote, after_result, after_writing, check_trailer, corrupt, cut_short, differs,
    diffsize, finish, no_undo, range_state, stop_if_asked, write_record, writing, written,
};
use super::rollback::UndoWriter;
use super::stop::Stop;
use super::target::{
    check_size, check_undo, check_whole, open_target, result_digest_masked, target_path,
};
use super::unknown;
use crate::compress::Decompressor;
use crate::config::{Apply, DiffSize, Env};
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

/// Apply the patch `a` names.
pub fn run(a: &Apply, env: &Env, log: &Log) -> Result<()> {
    let input = open_input(a.patch.as_deref())?;
    let what = match &input {
        Input::File(_, w) | Input::Pipe(_, w) => w.clone(),
    };
    // Ctrl-C, SIGTERM, SIGHUP: untouched before the first write, else
    // stopped between two records, saying how to undo (`stop.rs`).
    let stop = Stop::watch("--patch".to_string());
    match input {
        Input::File(r, _) => apply_file(a, r, &what, (env, log, &stop)),
        Input::Pipe(r, _) => super::pipe::apply(a, r, &what, (env, log, &stop)),
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

fn apply_file(
    a: &Apply,
    mut r: BufReader<File>,
    what: &str,
    (env, log, stop): (&Env, &Log, &Stop),
) -> Result<()> {
    // Pass 1: the whole patch is read and checked, and every range of the
    // target compared, before anything is written.
    let mut dec = Decompressor::default();
    let mut d = Decoder::new(&mut r);
    // The records' checks cover their stored bytes: no need to decompress.
    d.skip_data = true;
    // A patch that breaks in this pass has written nothing: said so.
    let untouched = |e: Error| Error::Failed(format!("{e}; the target is untouched"));
    let h = d.header().map_err(|e| untouched(corrupt(what, e)))?;
    let path = target_path(a, &h, log)?;
    let diffsize = diffsize(a, &h);
    let mut disk = open_target(&path, env, log)?;
    check_size(&disk, &h, diffsize, log)?;
    let mut buf = Vec::new();
    let mut read = Counted::default();
    let (mut pending, mut applied) = (0u64, 0u64);
    // The first range that is neither as before nor as after, and the
    // record it is in.
    let mut first_other: Option<(u64, Error)> = None;
    // Which ranges hold their new content already, for the second pass.
    let mut done: Vec<bool> = Vec::new();
    // Those ranges' offsets and digests before, for the whole-target check.
    let mut befores: Vec<(u64, u128)> = Vec::new();
    let mut spans = Vec::new();
    // An undo patch's ranges (offset, length, digest of what each puts
    // back), for its whole-target check.
    let mut puts: Vec<(u64, u32, u128)> = Vec::new();
    let trailer = loop {
        let item = match d.next(&mut dec) {
            Ok(item) => item,
            Err(e) => break cut_short(&d, &h, read, e, what, log).map_err(untouched)?,
        };
        match item {
            Item::Record(rec, check) => {
                read.records += 1;
                unknown::collect(&rec, &mut spans);
                read.chain = format::chain(read.chain, check);
                for r in &rec.ranges {
                    read.ranges += 1;
                    if h.kind == format::Kind::Undo {
                        puts.push((rec.offset + u64::from(r.start), r.len, r.after));
                    }
                    let state = range_state(&disk, &h, &rec, r, &mut buf)?;
                    done.push(state == State::After);
                    if state == State::After {
                        befores.push((rec.offset + u64::from(r.start), r.before));
                    }
                    match state {
                        State::Before => pending += 1,
                        State::After => applied += 1,
                        State::Other => {
                            pending += 1;
                            if first_other.is_none() {
                                let e = differs(&disk, &rec, r, "nothing was written");
                                first_other = Some((read.records, e));
                            }
                        }
                    }
                }
            }
            Item::End(t) => break t,
        }
    };
    check_trailer(what, &trailer, read.records, read.ranges, read.chain).map_err(untouched)?;
    // An undo patch cut short: its last record's ranges may be partly
    // written (the apply was killed while writing them), and are written.
    let cut = d.cut;
    let mut extra = [0u8; 1];
    if d_read_more(&mut r, &mut extra) {
        return Err(Error::Failed(format!(
            "{what}: corrupted: bytes after the trailer; the target is untouched"
        )));
    }
    match first_other {
        Some((at, _)) if cut && at == read.records => {}
        Some((_, e)) => return Err(e),
        None => {}
    }
    check_whole(&disk, &h, &befores, what, false)?;
    drop(befores);
    if h.kind == format::Kind::Undo {
        check_undo(&disk, &h, &puts, trailer.result, what)?;
    }
    drop(puts);
    let undo = a
        .undo
        .as_deref()
        .map(|p| UndoWriter::create(p, &h, &disk, &path, diffsize))
        .transpose()?;
    if pending == 0 && (disk.size() == h.source_size || diffsize != DiffSize::Resize) {
        let got = result_digest_masked(&disk, &h, h.source_size, &spans)?;
        if got == trailer.result {
            log.line(format!(
                "{}: this patch is already applied ({applied} ranges); nothing was written{}",
                disk.label(),
                no_undo(a)
            ));
            // Nothing to undo: no undo patch, so its name stays free.
            if let Some(u) = undo {
                u.discard();
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
    let mut wrote = Wrote::default();
    writing(stop, &disk, a);
    // The target was opened exclusively where it is a device; a file that
    // someone else writes meanwhile is caught by the result digest.
    let mut states = done.into_iter();
    let mut pass = || -> Result<()> {
        if diffsize == DiffSize::Resize && !disk.is_device() && disk.size() < h.source_size {
            disk.fit_to(h.source_size)?;
            wrote.touched = true;
        }
        loop {
            let rec = match d.next(&mut dec) {
                Ok(Item::Record(rec, _)) => rec,
                Ok(Item::End(_)) => break,
                Err(_) if cut && d.cut => break,
                Err(e) => return Err(corrupt(what, e)),
            };
            let skip: Vec<bool> = states.by_ref().take(rec.ranges.len()).collect();
            if skip.len() != rec.ranges.len() {
                return Err(Error::Failed(format!(
                    "{what}: changed while it was applied"
                )));
            }
            stop_if_asked(stop, &disk, a, &mut undo, wrote);
            if let Some(u) = &mut undo {
                u.record(&disk, &rec, &skip)?;
            }
            wrote.touched = true;
            wrote.bytes += write_record(&disk, &rec, &skip)?;
            wrote.ranges += skip.iter().filter(|s| !**s).count() as u64;
        }
        written(stop, &disk, a, wrote);
        if let Some(u) = undo.take() {
            u.finish(&disk)?;
        }
        Ok(())
    };
    let passed = pass();
    if let Err(e) = passed {
        return Err(after_writing(e, &disk, a, wrote.ranges, wrote.bytes));
    }
    if let Err(e) = finish(&mut disk, &h, &trailer, (diffsize, &spans), what, log) {
        return Err(after_result(e, &disk, a, wrote));
    }
    log.info(format!(
        "{}: applied {what}: {} written in {pending} ranges{}",
        disk.label(),
        human_bytes(wrote.bytes),
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
