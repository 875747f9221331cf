//! Local mode through the real binary: `bsync -f SRC -t DST` must leave DST
//! byte for byte equal to SRC, write only what differs, keep zeros sparse,
//! and report what it did in the closing summary.

mod common;

use std::fs;
use std::path::Path;

use common::*;

/// Local mode compares bytes, so it writes only the 4 KiB pages that differ.
const GRAIN: usize = 4096;

/// The summary a local run over `src` and the destination `dst` (as it was
/// before the run) should print with block size `bs`, skipping `skip` blocks.
fn expect(src: &[u8], dst: &[u8], bs: usize, skip: usize) -> Expect {
    expect_summary(src, dst, bs, skip, GRAIN)
}

/// Compare a run's summary with what the files say it must be.
fn check_summary(stderr: &str, want: &Expect) {
    want.check(&summary(stderr));
}

/// Write `src` and `dst` (None: no destination file), run with `extra`,
/// check the result and the summary.
fn sync_and_check(dir: &TempDir, src: &[u8], dst: Option<&[u8]>, bs: usize, extra: &[&str]) {
    let (s, d) = (dir.join("src"), dir.join("dst"));
    write_file(&s, src);
    let _ = fs::remove_file(&d);
    if let Some(dst) = dst {
        write_file(&d, dst);
    }
    let err = run_ok(&mut local(&s, &d, extra));
    assert_same(&s, &d);
    check_summary(&err, &expect(src, dst.unwrap_or_default(), bs, 0));
}

#[test]
fn identical_files_write_nothing() {
    let dir = TempDir::new("identical");
    let (s, d) = (dir.join("src"), dir.join("dst"));
    let mut data = random_bytes(3 << 20 | 5, 1);
    data[1 << 20..2 << 20].fill(0);
    write_file(&s, &data);
    write_file(&d, &data);
    let before = age(&d);
    for extra in [&[][..], &["-b", "64K", "-w", "3"]] {
        let err = run_ok(&mut local(&s, &d, extra));
        let sum = summary(&err);
        assert_eq!((sum.changed, sum.zero), (0, 0), "{}", sum.line);
        assert_eq!(sum.same, sum.blocks, "{}", sum.line);
        assert!(sum.line.contains("written 0 B"), "{}", sum.line);
        assert!(!sum.line.contains("cleared"), "{}", sum.line);
        assert_eq!(mtime(&d), before, "the destination was modified");
        assert_same(&s, &d);
    }
}

#[test]
fn scattered_changes_write_only_changed_pages() {
    let dir = TempDir::new("scattered");
    let (s, d) = (dir.join("src"), dir.join("dst"));
    const MIB: usize = 1 << 20;
    let src = random_bytes(8 * MIB, 2);
    let mut dst = src.clone();
    // One byte in blocks 1 and 3, two bytes in different pages of block 6:
    // four 4 KiB pages to write in all.
    for at in [
        MIB + 100,
        3 * MIB + 500_000,
        6 * MIB + 10,
        6 * MIB + 900_000,
    ] {
        dst[at] ^= 0x5a;
    }
    write_file(&s, &src);
    for (extra, blocks, changed) in [(&["-b", "1M"][..], 8, 3), (&[][..], 1, 1)] {
        write_file(&d, &dst);
        let err = run_ok(&mut local(&s, &d, extra));
        assert_same(&s, &d);
        let sum = summary(&err);
        assert_eq!(
            sum.counts(),
            (blocks, blocks - changed, changed, 0),
            "{}",
            sum.line
        );
        assert!(sum.line.contains("written 16.0 KiB"), "{}", sum.line);
    }
}

#[test]
fn zero_block_over_stale_data_is_cleared() {
    let dir = TempDir::new("zero-stale");
    let (s, d) = (dir.join("src"), dir.join("dst"));
    const MIB: usize = 1 << 20;
    let mut src = random_bytes(4 * MIB, 3);
    src[2 * MIB..3 * MIB].fill(0);
    let mut dst = src.clone();
    dst[2 * MIB..3 * MIB].copy_from_slice(&random_bytes(MIB, 4));
    write_file(&s, &src);
    write_file(&d, &dst);
    let err = run_ok(&mut local(&s, &d, &["-b", "1M"]));
    assert_same(&s, &d);
    let sum = summary(&err);
    assert_eq!(sum.counts(), (4, 3, 0, 1), "{}", sum.line);
    assert!(sum.line.contains("written 0 B"), "{}", sum.line);
    assert!(sum.line.contains("cleared 1.0 MiB"), "{}", sum.line);
}

#[test]
fn zero_block_over_stale_data_becomes_a_hole() {
    let dir = TempDir::new("zero-hole");
    let (s, d) = (dir.join("src"), dir.join("dst"));
    const MIB: usize = 1 << 20;
    let mut src = random_bytes(8 * MIB, 5);
    src[2 * MIB..6 * MIB].fill(0);
    write_file(&s, &src);
    write_file(&d, &random_bytes(8 * MIB, 6));
    let _ = fs::File::open(&d).and_then(|f| f.sync_all());
    assert!(allocated_bytes(&d) >= 8 * MIB as u64);
    run_ok(&mut local(&s, &d, &["-b", "1M"]));
    assert_same(&s, &d);
    let allocated = allocated_bytes(&d);
    assert!(
        allocated <= 4 * MIB as u64 + 256 * 1024,
        "4 MiB of zeros should be holes, but {allocated} bytes are allocated"
    );
}

#[test]
fn new_and_grown_destinations_stay_sparse() {
    let dir = TempDir::new("sparse");
    let (s, d) = (dir.join("src"), dir.join("dst"));
    const MIB: usize = 1 << 20;
    let size = 32 * MIB;
    let mut src = vec![0u8; size];
    for at in [0, 10 * MIB + 12345, size - 64 * 1024] {
        src[at..at + 64 * 1024].copy_from_slice(&random_bytes(64 * 1024, at as u64));
    }
    write_file(&s, &src);
    for existing in [None, Some(random_bytes(MIB, 7))] {
        let _ = fs::remove_file(&d);
        if let Some(bytes) = &existing {
            write_file(&d, bytes);
        }
        run_ok(&mut local(&s, &d, &[]));
        assert_same(&s, &d);
        let allocated = allocated_bytes(&d);
        // Data: about 256 KiB (the middle region spans two sub-blocks), plus
        // the old first MiB when the file grew.
        let limit = (2 * MIB) as u64;
        assert!(
            allocated <= limit,
            "{size}-byte destination (existing: {}) has {allocated} bytes allocated",
            existing.is_some()
        );
    }
}

#[test]
fn empty_source_truncates_destination() {
    let dir = TempDir::new("empty");
    let (s, d) = (dir.join("src"), dir.join("dst"));
    write_file(&s, b"");
    write_file(&d, &random_bytes(100_000, 8));
    let err = run_ok(&mut local(&s, &d, &[]));
    assert_eq!(file_len(&d), 0);
    assert_eq!(summary(&err).blocks, 0);
    // And again onto an already empty destination.
    run_ok(&mut local(&s, &d, &[]));
    assert_eq!(file_len(&d), 0);
}

#[test]
fn missing_destination_is_created() {
    let dir = TempDir::new("create");
    let src = random_bytes(1_000_003, 9);
    sync_and_check(&dir, &src, None, 10 << 20, &[]);
    sync_and_check(&dir, &src, None, 4096, &["-b", "4K"]);
}

#[test]
fn destination_grows_and_shrinks_to_source_size() {
    let dir = TempDir::new("resize");
    let (src, stale) = make_pair(3 << 20 | 7, 10);
    // Shorter: a stale prefix. Longer: everything plus a random tail.
    let shorter = stale[..1_000_000].to_vec();
    let mut longer = stale.clone();
    longer.extend(random_bytes(1 << 20, 11));
    for dst in [&shorter, &longer] {
        sync_and_check(&dir, &src, Some(dst), 10 << 20, &[]);
        sync_and_check(&dir, &src, Some(dst), 65536, &["-b", "64K"]);
        assert_eq!(file_len(&dir.join("dst")), src.len() as u64);
    }
}

#[test]
fn odd_sizes_and_block_sizes() {
    let dir = TempDir::new("odd");
    let (tiny_src, tiny_dst) = make_pair(3000, 12);
    sync_and_check(&dir, &tiny_src, Some(&tiny_dst), 1, &["-b", "1"]);
    sync_and_check(&dir, &tiny_src, None, 1, &["-b", "1"]);
    sync_and_check(
        &dir,
        &tiny_src,
        Some(&tiny_dst),
        1,
        &["-b", "1", "-w", "3", "-prefetch", "1"],
    );
    let (src, dst) = make_pair(3 << 20 | 123, 13);
    for bs in [4095, 65536, 1 << 20, 8 << 20] {
        let b = bs.to_string();
        sync_and_check(&dir, &src, Some(&dst), bs, &["-b", &b]);
        sync_and_check(&dir, &src, None, bs, &["-b", &b, "-w", "2"]);
    }
}

#[test]
fn skip_leaves_earlier_blocks_alone() {
    let dir = TempDir::new("skip");
    let (s, d) = (dir.join("src"), dir.join("dst"));
    let src = random_bytes(1 << 20, 14);
    let old = random_bytes(1 << 20, 15);
    write_file(&s, &src);
    write_file(&d, &old);
    let err = run_ok(&mut local(&s, &d, &["-b", "64K", "-s", "4"]));
    let got = read_file(&d);
    let cut = 4 * 65536;
    assert!(got[..cut] == old[..cut], "blocks 0..4 were touched");
    assert!(got[cut..] == src[cut..], "blocks 4.. were not synced");
    let sum = summary(&err);
    assert_eq!(sum.counts(), (12, 0, 12, 0), "{}", sum.line);
    // Only the 12 blocks after the skip are read, on both sides.
    assert!(sum.line.contains("read 1.5 MiB"), "{}", sum.line);
    assert!(sum.line.contains("written 768.0 KiB"), "{}", sum.line);
    // Issue 18, item 1: the summary says the skipped blocks were not verified.
    assert!(
        sum.line
            .contains("; blocks before 4 skipped (-s 4), not verified"),
        "{}",
        sum.line
    );
}

/// Issue 18, item 1: `-s` at or past the end of the source is refused
/// (exit 2, one line), not silently reduced to a run that verifies nothing
/// and exits 0.
#[test]
fn skip_at_or_past_the_end_is_refused() {
    let dir = TempDir::new("skip-end");
    let (s, d) = (dir.join("src"), dir.join("dst"));
    write_file(&s, &random_bytes(1 << 20, 14));
    for skip in ["16", "100"] {
        let err = run_status(&mut local(&s, &d, &["-b", "64K", "-s", skip]), 2);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(&format!("-s {skip}")), "{err}");
        assert!(err.contains("16 blocks"), "{err}");
        assert!(!d.exists(), "-s {skip}: the destination was created");
    }
    // The last block is still a valid resume point.
    run_ok(&mut local(&s, &d, &["-b", "64K", "-s", "15"]));
}

#[test]
fn workers_and_prefetch_do_not_change_the_result() {
    let dir = TempDir::new("workers");
    let (src, dst) = make_pair(4 << 20 | 99, 16);
    let mut runs: Vec<Vec<String>> = (1..=8).map(|w| vec!["-w".into(), w.to_string()]).collect();
    for p in [1, 3, 7] {
        for w in [1, 3, 8] {
            runs.push(vec![
                "-w".into(),
                w.to_string(),
                "-prefetch".into(),
                p.to_string(),
            ]);
        }
    }
    for run in runs {
        let mut extra: Vec<&str> = vec!["-b", "64K"];
        extra.extend(run.iter().map(String::as_str));
        sync_and_check(&dir, &src, Some(&dst), 65536, &extra);
    }
}

#[test]
fn download_direction_reads_the_target() {
    let dir = TempDir::new("download");
    let (s, d) = (dir.join("src"), dir.join("dst"));
    let (src, dst) = make_pair(2 << 20 | 1, 17);
    write_file(&s, &src);
    write_file(&d, &dst);
    // -d: the -t path is the source, -f the destination.
    let err = run_ok(
        bsync()
            .arg("-f")
            .arg(&d)
            .arg("-t")
            .arg(&s)
            .args(["-d", "-b", "1M"]),
    );
    assert!(read_file(&s) == src, "the source was modified");
    assert_same(&s, &d);
    check_summary(&err, &expect(&src, &dst, 1 << 20, 0));
}

#[test]
fn quiet_prints_nothing_on_success() {
    let dir = TempDir::new("quiet");
    let (s, d) = (dir.join("src"), dir.join("dst"));
    let (src, dst) = make_pair(1 << 20, 18);
    write_file(&s, &src);
    write_file(&d, &dst);
    let out = run(&mut local(&s, &d, &["-q", "-s", "1", "-b", "64K"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(out.stderr.is_empty(), "stderr: {}", stderr(&out));
    assert!(out.stdout.is_empty());
    let mut want = src.clone();
    want[..65536].copy_from_slice(&dst[..65536]);
    assert!(read_file(&d) == want);

    // Errors still show.
    let err = run_status(&mut local(&dir.join("nope"), &d, &["-q"]), 1);
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn prefix_starts_every_line() {
    let dir = TempDir::new("prefix");
    let (s, d) = (dir.join("src"), dir.join("dst"));
    let (src, dst) = make_pair(1 << 20, 19);
    write_file(&s, &src);
    write_file(&d, &dst);
    let err = run_ok(&mut local(
        &s,
        &d,
        &["-l", "[node 1]", "-s", "1", "-b", "64K"],
    ));
    assert!(
        err.lines().count() >= 2,
        "expected a skip note and a summary:\n{err}"
    );
    for line in err.lines() {
        assert!(line.starts_with("[node 1] "), "unprefixed line {line:?}");
    }
    summary(&err);

    let err = run_status(&mut local(&dir.join("nope"), &d, &["-l", "[node 1]"]), 1);
    for line in err.lines() {
        assert!(
            line.starts_with("[node 1] bsync: "),
            "unprefixed line {line:?}"
        );
    }
}

#[test]
fn missing_source_fails_naming_it() {
    let dir = TempDir::new("nosrc");
    let (s, d) = (dir.join("no-such-source.img"), dir.join("dst"));
    let err = run_status(&mut local(&s, &d, &[]), 1);
    assert!(err.contains(&s.display().to_string()), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        !d.exists(),
        "a destination was created for a missing source"
    );
}

#[test]
fn destination_equal_to_source_is_a_usage_error() {
    let dir = TempDir::new("same");
    let s = dir.join("src");
    let data = random_bytes(200_000, 20);
    write_file(&s, &data);
    let link = dir.join("hardlink");
    fs::hard_link(&s, &link).expect("hard link");
    let dotted = dir.path().join(".").join("src");
    let symlink = dir.join("symlink");
    std::os::unix::fs::symlink(&s, &symlink).expect("symlink");
    for dst in [&s, &link, &dotted, &symlink] {
        let err = run_status(&mut local(&s, dst, &[]), 2);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("-t"), "{err}");
        assert!(read_file(&s) == data, "the source was modified");
    }
}

#[test]
fn destination_in_missing_directory_fails_naming_it() {
    let dir = TempDir::new("nodir");
    let s = dir.join("src");
    write_file(&s, &random_bytes(1000, 21));
    let d = dir.join("no-such-dir").join("dst");
    let err = run_status(&mut local(&s, &d, &[]), 1);
    assert!(err.contains(&d.display().to_string()), "{err}");
    assert!(!d.exists());
}

#[test]
fn source_directory_fails_naming_it() {
    // Not a file or a device: refused before the destination is created.
    let dir = TempDir::new("dirsrc");
    let d = dir.join("dst");
    let err = run_status(&mut local(dir.path(), &d, &[]), 2);
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!d.exists(), "the destination was created");
}

#[test]
fn write_failure_exits_1_naming_destination() {
    // A 256 KiB tmpfs of our own (root only) runs out of space part way.
    let dir = TempDir::new("full");
    let s = dir.join("src");
    write_file(&s, &random_bytes(1024 * 1024, 24));
    let mnt = dir.join("small");
    std::fs::create_dir_all(&mnt).expect("mount point");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        return common::skip("cannot mount a small tmpfs (needs root)");
    }
    let d = mnt.join("dst");
    let out = run(&mut local(&s, &d, &["-b", "64K"]));
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&d.display().to_string()), "{err}");
    assert!(
        !err.contains("done:"),
        "a failed run printed a summary: {err}"
    );
    // Issue 15, item 5: the last line says where a resume may start.
    let last = err.lines().last().unwrap_or_default();
    let n: u64 = last
        .strip_prefix("resume with -s ")
        .and_then(|r| r.split([':', ' ']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume line last: {err}"));
    assert!(n <= 4, "only 256 KiB fit, yet resume at block {n}: {err}");
}

/// A writing end that is a character device is refused before the run.
#[test]
fn a_character_device_destination_is_refused() {
    let dir = TempDir::new("chardev");
    let s = dir.join("src");
    write_file(&s, &random_bytes(300_000, 24));
    for dev in ["/dev/full", "/dev/null"] {
        let err = run_status(&mut local(&s, Path::new(dev), &["-b", "64K"]), 2);
        assert!(err.contains("character device"), "{err}");
    }
}

// A forgotten -f leaves the default source /dev/zero, a character device
// whose size reads as 0: the run "succeeds" by truncating the destination.
#[test]
fn default_source_does_not_wipe_the_destination() {
    let dir = TempDir::new("devzero");
    let d = dir.join("precious.img");
    let data = random_bytes(100_000, 25);
    write_file(&d, &data);
    let out = run(bsync().arg("-t").arg(&d));
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(read_file(&d) == data, "the destination was changed");
}

#[test]
fn big_file_with_five_percent_of_4k_blocks_changed() {
    let dir = TempDir::new("big");
    const SIZE: usize = 64 << 20;
    const PAGE: usize = 4096;
    let src = random_bytes(SIZE, 22);
    let mut dst = src.clone();
    let mut rng = fastrand::Rng::with_seed(23);
    let pages = SIZE / PAGE;
    for _ in 0..pages / 20 {
        let p = rng.usize(..pages) * PAGE;
        rng.fill(&mut dst[p..p + PAGE]);
    }
    let check = |bs: usize, extra: &[&str]| {
        let (s, d) = (dir.join("src"), dir.join("dst"));
        write_file(&d, &dst);
        let err = run_ok(&mut local(&s, &d, extra));
        assert_same(&s, &d);
        let want = expect(&src, &dst, bs, 0);
        check_summary(&err, &want);
        // Only the changed pages are written: about 5 % of the file.
        assert!(want.written < SIZE as u64 / 10, "{want:?}");
    };
    write_file(&dir.join("src"), &src);
    check(10 << 20, &[]);
    check(1 << 20, &["-b", "1M", "-w", "4"]);
}

/// Regression guard for the helper itself: `expect` must see a difference.
#[test]
fn expect_model_counts_classes() {
    let src = [1u8, 0, 2, 2];
    let dst = [1u8, 9, 3, 2];
    let e = expect(&src, &dst, 1, 0);
    assert_eq!((e.blocks, e.same, e.changed, e.zero), (4, 2, 1, 1));
    assert_eq!((e.written, e.cleared), (1, 1));
    assert_eq!(expect(&src, &dst, 1, 3).blocks, 1);
}

/// A sparse file of `size` bytes with 64 KiB of data at each of `at`.
fn sparse_file(path: &Path, size: u64, at: &[u64]) {
    use std::os::unix::fs::FileExt;
    let f = fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    for &offset in at {
        f.write_all_at(&random_bytes(64 * 1024, offset), offset)
            .unwrap();
    }
}

#[test]
fn holes_are_neither_read_nor_compared() {
    // A 1 GiB sparse source with two data blocks into a new file: only the
    // blocks with data are read; the rest is known zero on both sides.
    let dir = TempDir::new("holes");
    let (s, d) = (dir.join("src"), dir.join("dst"));
    let size = 1u64 << 30;
    sparse_file(&s, size, &[0, size / 2 + 12345]);
    let err = run_ok(&mut local(&s, &d, &[]));
    let sum = summary(&err);
    assert!(
        sum.read <= (40 << 20) as f64,
        "holes were read: {}",
        sum.line
    );
    assert_eq!(file_len(&d), size);
    assert!(allocated_bytes(&d) < 32 << 20, "the copy is not sparse");
    assert_same(&s, &d);
}

#[test]
fn a_hole_in_the_source_clears_data_in_the_destination() {
    // The destination has data where the source has holes, and holes where
    // the source has data: both must be made right.
    let dir = TempDir::new("holes-clear");
    let (s, d) = (dir.join("src"), dir.join("dst"));
    let size = 64u64 << 20;
    sparse_file(&s, size, &[20 << 20]);
    sparse_file(&d, size, &[0, 40 << 20, (64 << 20) - 65536]);
    run_ok(&mut local(&s, &d, &["-b", "1M"]));
    assert_same(&s, &d);
}

/// Blocks are read in pieces of 512 KiB, but a block that is a hole goes
/// whole: against a side read in pieces it must still be made right, and
/// counted once.
#[test]
fn a_whole_hole_against_pieces_is_compared_piece_by_piece() {
    let dir = TempDir::new("holes-pieces");
    let (s, d) = (dir.join("src"), dir.join("dst"));
    let mib = 1u64 << 20;
    let size = 24 * mib;
    // Blocks of 4 MiB: the source has data in blocks 0 and 3, the
    // destination in blocks 1 (a hole in the source), 3 and 5, some of it
    // in the pieces of a block, some across them.
    sparse_file(&s, size, &[mib, 12 * mib + 700 * 1024]);
    sparse_file(
        &d,
        size,
        &[4 * mib, 5 * mib + 500 * 1024, 13 * mib, 23 * mib],
    );
    let (src, dst) = (read_file(&s), read_file(&d));
    let err = run_ok(&mut local(&s, &d, &["-b", "4M"]));
    assert_same(&s, &d);
    check_summary(&err, &expect(&src, &dst, 4 << 20, 0));
}

/// Issue 15, item 5: Ctrl-C during a local run ends with the block a resume
/// may start at; everything before it is already in the destination.
#[test]
fn an_interrupted_local_run_says_where_to_resume() {
    let dir = TempDir::new("local-int");
    let (s, d) = (dir.join("src"), dir.join("dst"));
    let data = random_bytes(32 << 20, 26);
    write_file(&s, &data);
    // Tiny blocks make the run last a few seconds.
    let child = local(&s, &d, &["-b", "512", "-prefetch", "1"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start bsync");
    std::thread::sleep(std::time::Duration::from_millis(600));
    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    assert!(sent.is_ok_and(|s| s.success()), "kill -INT failed");
    let out = child.wait_with_output().expect("wait");
    let err = stderr(&out);
    if out.status.code() == Some(0) {
        eprintln!("skipped: the run ended before the interrupt");
        return;
    }
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    let last = err.lines().last().unwrap_or_default();
    let n: usize = last
        .strip_prefix("resume with -s ")
        .and_then(|r| r.split([':', ' ']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume line last: {err}"));
    let have = read_file(&d);
    assert!(n > 0 && n * 512 <= data.len(), "{err}");
    assert!(
        have[..n * 512] == data[..n * 512],
        "a block before {n} is missing"
    );
}

/// Issue 18, item 5: a local sync's `-json` reports the changed data it
/// wrote (`bytes_changed` was always 0).
#[test]
fn local_json_reports_the_bytes_changed() {
    let dir = TempDir::new("local-json");
    let (s, d) = (dir.join("src"), dir.join("dst"));
    let (src, dst) = make_pair(2 << 20, 27);
    write_file(&s, &src);
    write_file(&d, &dst);
    let out = run(&mut local(&s, &d, &["-json", "-b", "64K"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |name: &str| -> u64 {
        json.split(&format!("\"{name}\":"))
            .nth(1)
            .and_then(|r| r.split([',', '}']).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {json}"))
    };
    let want = expect(&src, &dst, 64 << 10, 0).written;
    assert!(want > 0);
    assert_eq!(field("bytes_changed"), want, "{json}");
    assert_eq!(field("bytes_written"), want, "{json}");
    assert_same(&s, &d);
}

/// The new-user trial: `-s` with an empty source said "-s must be below
/// 0". It says the source is empty instead.
#[test]
fn skip_with_an_empty_source_says_it_is_empty() {
    let dir = TempDir::new("skip-empty");
    let (s, d) = (dir.join("src"), dir.join("dst"));
    write_file(&s, &[]);
    let err = run_status(&mut local(&s, &d, &["-s", "5"]), 2);
    assert_eq!(
        err.trim_end(),
        "bsync: -s 5: the source is empty (0 bytes), so there is no block to skip: run without -s"
    );
    assert!(!d.exists(), "the destination was created");
}
