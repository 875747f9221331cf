//! A patch's target: reading a range of it and the digest of its whole
//! content, for applying a patch and for the undo patch saved beside it;
//! and, for applying, which target it is, opening it, and the checks that
//! it is the right one before anything is written (its size, the digest of
//! the whole target).

use std::path::{Path, PathBuf};

use super::format::{self, Header};
use crate::config::{Apply, DiffSize, Env};
use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::log::Log;

/// Read `len` bytes at `offset`, zeros past the end.
pub(super) fn read_range(disk: &Disk, offset: u64, buf: &mut Vec<u8>, len: usize) -> Result<()> {
    buf.clear();
    buf.resize(len, 0);
    disk.read_at(buf, offset)
        .map_err(|e| Error::io(disk.label(), format!("read at offset {offset}"), e))?;
    Ok(())
}

/// The page size behind a patch's grain: a grain is a range of the
/// two-level digests, [`RANGE_PAGES`](crate::proto::RANGE_PAGES) pages.
pub(super) fn grain_page(grain: u32) -> usize {
    (grain as usize / crate::proto::RANGE_PAGES).max(1)
}

/// The digest of the whole content of `disk` up to `size`, zeros past its
/// end, as the patch's trailer defines it. Blocks are summed in any order,
/// so a thread per core (up to 4) takes a share of them.
pub(super) fn result_digest(disk: &Disk, h: &Header, size: u64) -> Result<u128> {
    digest_target(disk, h, size, &[], &[])
}

/// [`result_digest`] with the `unknown` spans (absolute offset, length, in
/// order) read as zeros: the result digest of a patch of version 3.
pub(super) fn result_digest_masked(
    disk: &Disk,
    h: &Header,
    size: u64,
    unknown: &[(u64, u64)],
) -> Result<u128> {
    digest_target(disk, h, size, &[], unknown)
}

/// The hint a size refusal gives, ` (MODES)`: only when the target holds
/// the image the patch was made from (or its result) over the patch's
/// size, where another `--diffsize` then applies it. Otherwise no mode
/// would, and it says so instead. An undo patch has no image to check: its
/// records decide.
pub(super) fn size_hint(disk: &Disk, h: &Header, modes: &str) -> Result<String> {
    let Some(whole) = h.whole else {
        return Ok(format!(" ({modes})"));
    };
    let got = result_digest(disk, h, h.source_size)?;
    if got == whole.original || got == whole.result {
        return Ok(format!(" ({modes})"));
    }
    Ok(format!(
        ", and its first {} bytes are not the image the patch was made from either \
         (their digest differs), so no --diffsize applies it here",
        h.source_size
    ))
}

/// [`result_digest`], the grains at the offsets of `befores` (in offset
/// order) counted as their digest there instead of what they hold.
pub(super) fn digest_as_before(
    disk: &Disk,
    h: &Header,
    size: u64,
    befores: &[(u64, u128)],
) -> Result<u128> {
    digest_target(disk, h, size, befores, &[])
}

/// The digest of the whole target, `befores` counted as their digests and
/// the `unknown` spans read as zeros.
fn digest_target(
    disk: &Disk,
    h: &Header,
    size: u64,
    befores: &[(u64, u128)],
    unknown: &[(u64, u64)],
) -> Result<u128> {
    let bs = u64::from(h.block_size);
    let grain = u64::from(h.grain);
    let blocks = size.div_ceil(bs);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4)) as u64;
    let share = blocks.div_ceil(threads.max(1)).max(1);
    let part = |first: u64, end: u64| -> Result<u128> {
        let mut buf = Vec::new();
        let mut digests = Vec::new();
        let mut sum = 0u128;
        for index in first..end {
            let offset = index * bs;
            let len = usize::try_from((size - offset).min(bs)).unwrap_or(0);
            read_range(disk, offset, &mut buf, len)?;
            zero_unknown(&mut buf, offset, unknown);
            crate::proto::digest_ranges(h.salt, &buf, grain_page(h.grain), &mut digests);
            let from = befores.partition_point(|&(at, _)| at < offset);
            for &(at, before) in befores[from..]
                .iter()
                .take_while(|&&(at, _)| at < offset + bs)
            {
                let within = at - offset;
                let slot = usize::try_from(within / grain).unwrap_or(usize::MAX);
                match digests.get_mut(slot) {
                    Some(d) if within % grain == 0 => *d = before,
                    _ => {
                        return Err(Error::Failed(format!(
                            "patch: corrupted: a range at offset {at} is not on a grain of {grain} bytes"
                        )));
                    }
                }
            }
            sum = sum.wrapping_add(format::block_hash(index, &digests));
        }
        Ok(sum)
    };
    std::thread::scope(|s| {
        let parts = (0..blocks)
            .step_by(usize::try_from(share).unwrap_or(usize::MAX))
            .map(|first| {
                let part = &part;
                crate::session::spawn_scoped(s, move || part(first, (first + share).min(blocks)))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut sum = 0u128;
        for p in parts {
            let got = p
                .join()
                .unwrap_or_else(|_| Err(Error::Failed("a digest thread panicked".into())))?;
            sum = sum.wrapping_add(got);
        }
        Ok(sum)
    })
}

/// The target: the one named, else the one the patch names. A named one
/// that is not the patch's is said in a warning.
pub(super) fn target_path(a: &Apply, h: &Header, log: &Log) -> Result<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let named = PathBuf::from(std::ffi::OsString::from_vec(h.name.clone()));
    if let Some(t) = &a.target {
        let given = std::path::absolute(t).unwrap_or_else(|_| t.clone());
        if !h.name.is_empty() && given != named {
            log.line(format!(
                "warning: --patch={} is not the target this patch was made against ({}); \
                 it is applied only if that whole target holds the same image",
                t.display(),
                named.display()
            ));
        }
        return Ok(t.clone());
    }
    if h.name.is_empty() {
        return Err(Error::usage(
            "--patch: the patch names no target; give one: --patch=DEVICE",
        ));
    }
    Ok(named)
}

/// Before the first write: the whole target must be the image the patch
/// was made from. `befores` are the patch's ranges (offset, digest before),
/// in offset order: a range the target holds patched already counts as it
/// was (an interrupted apply finishes); from a pipe there are none yet.
/// Returns whether the target is already the result.
pub(super) fn check_whole(
    disk: &Disk,
    h: &Header,
    befores: &[(u64, u128)],
    what: &str,
    piped: bool,
) -> Result<bool> {
    let Some(whole) = h.whole else {
        // An undo patch: its records' checks are all there is.
        return Ok(false);
    };
    let got = digest_as_before(disk, h, h.source_size, befores)?;
    if got == whole.original {
        return Ok(false);
    }
    if befores.is_empty() && got == whole.result {
        return Ok(true);
    }
    Err(Error::Failed(format!(
        "{}: not the image {what} was made from (the digest of the whole target differs, \
         though {} where the patch's records lie); the target is untouched",
        disk.label(),
        // From a file every range was compared already.
        if piped { "perhaps not" } else { "it agrees" },
    )))
}

/// Before the first write of an undo patch from a file: the whole target,
/// each of the undo's ranges (`puts`: offset, digest of what it puts back,
/// in offset order) counted as what it puts back, must digest to the
/// undo's result, the target before that apply. Else it changed since,
/// outside those ranges, and undoing would not give that image (the final
/// check would fail after writing). Where a range is not one grain of the
/// digest (bdsync's client-made undo patches), nothing is checked here.
pub(super) fn check_undo(
    disk: &Disk,
    h: &Header,
    puts: &[(u64, u32, u128)],
    result: u128,
    what: &str,
) -> Result<()> {
    let (bs, grain, size) = (u64::from(h.block_size), u64::from(h.grain), h.source_size);
    let one_grain = |&(at, len, _): &(u64, u32, u128)| {
        let block_end = (at / bs + 1) * bs;
        at % bs % grain == 0
            && at < size
            && u64::from(len) == grain.min(block_end - at).min(size - at)
    };
    if !puts.iter().all(one_grain) {
        return Ok(());
    }
    let befores: Vec<(u64, u128)> = puts.iter().map(|&(at, _, d)| (at, d)).collect();
    if digest_as_before(disk, h, size, &befores)? == result {
        return Ok(());
    }
    Err(Error::Failed(format!(
        "{}: not as the apply that wrote {what} left it: its ranges counted as what they \
         put back, the digest of the whole target is not the digest the target had before \
         that apply (it changed since that apply, outside the ranges the undo writes), so \
         undoing would not restore that image; the target is untouched",
        disk.label()
    )))
}

pub(super) fn open_target(path: &Path, env: &Env, log: &Log) -> Result<Disk> {
    if std::fs::metadata(path).is_err() {
        return Err(Error::Failed(format!(
            "target {}: does not exist; a patch only changes an existing copy",
            path.display()
        )));
    }
    Disk::open_destination(path, env, log)
}

/// Whether the target's size is acceptable as `diffsize` says. A larger
/// device with `resize` is, but cannot be cut: that is said (once it
/// applied, exit 0, the device as large as before, and not a word).
pub(super) fn check_size(disk: &Disk, h: &Header, diffsize: DiffSize, log: &Log) -> Result<()> {
    let (have, want) = (disk.size(), h.source_size);
    let refuse = |why: &str| {
        Err(Error::Failed(format!(
            "{}: {have} bytes, the patch makes {want} bytes: {why}; nothing was written",
            disk.label()
        )))
    };
    // Each hint names only a mode that then works for this target: one
    // its size allows, and only if it holds the patch's image.
    let hint = |modes: &str| size_hint(disk, h, modes);
    let grow = || {
        if disk.is_device() {
            Ok(" (a device cannot grow)".to_string())
        } else {
            hint("--diffsize=resize grows it")
        }
    };
    match diffsize {
        DiffSize::Strict if have < want => refuse(&format!("the target is smaller{}", grow()?)),
        DiffSize::Strict if have > want => refuse(&format!(
            "the target is larger{}",
            hint(if disk.is_device() {
                "--diffsize=minsize leaves the rest alone"
            } else {
                "--diffsize=minsize leaves the rest alone, --diffsize=resize truncates it"
            })?
        )),
        DiffSize::MinSize if have < want => refuse(&format!(
            "the target is smaller, and minsize needs one at least as large{}",
            grow()?
        )),
        DiffSize::Resize if have < want && disk.is_device() => {
            refuse("a device cannot grow (--diffsize=resize)")
        }
        DiffSize::Resize if have > want && disk.is_device() => {
            log.line(format!(
                "warning: {}: a block device cannot be resized (--diffsize=resize): it keeps \
                 its {have} bytes, and the {} past the patch's {want} are left alone, as \
                 with --diffsize=minsize",
                disk.label(),
                crate::units::human_bytes(have - want)
            ));
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Zero the bytes of `buf` (at `offset` of the target) that lie in the
/// `unknown` spans (absolute offset, length, in order).
pub(super) fn zero_unknown(buf: &mut [u8], offset: u64, unknown: &[(u64, u64)]) {
    let end = offset + buf.len() as u64;
    let from = unknown.partition_point(|&(at, n)| at + n <= offset);
    for &(at, n) in unknown[from..].iter().take_while(|&&(at, _)| at < end) {
        let lo = usize::try_from(at.max(offset) - offset).unwrap_or(buf.len());
        let hi = usize::try_from((at + n).min(end) - offset).unwrap_or(buf.len());
        buf[lo..hi].fill(0);
    }
}
