//! `bsync -a`: list the machine's block devices from sysfs.
//!
//! The Go original only pointed Linux users at `lsblk`. A rescue system that
//! bsync is dropped onto may not have `lsblk`, but it always has sysfs, so we
//! read `/sys/block` ourselves and still print the `lsblk` line for the
//! details sysfs does not hold (filesystems, mount points).
//!
//! Everything here degrades quietly: a missing optional attribute is shown as
//! `-`, and a device that vanishes or reports a malformed size while we read
//! it is left out rather than failing the whole listing. Only a missing
//! `<root>/block` directory is an error. The sysfs root is a parameter
//! (`BSYNC_SYSFS` moves it, see [`crate::config::SYSFS_ENV`]) so that tests
//! (and curious users) can point at a fake tree.

use std::cmp::Ordering;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use crate::progress::human_bytes;

/// The guidance line printed after the table, and by the caller when sysfs
/// cannot be read at all.
pub const LSBLK_HINT: &str =
    "More detail (mount points, filesystems): lsblk -o NAME,SIZE,TYPE,FSTYPE,MOUNTPOINTS,MODEL";

/// sysfs reports `size` in 512-byte sectors whatever the logical block size.
const SECTOR: u64 = 512;

/// One block device (or partition) as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    /// Kernel name: `sda`, `nvme0n1`, `loop0`, `sda1`.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// `device/model`, trimmed; `None` when absent or blank.
    pub model: Option<String>,
    /// `queue/rotational`: spinning disk or not.
    pub rotational: Option<bool>,
    /// `removable`: removable medium (USB sticks, card readers).
    pub removable: Option<bool>,
    /// `ro`: the kernel refuses writes.
    pub read_only: Option<bool>,
    /// Subdirectories that contain a `partition` file, in name order.
    pub partitions: Vec<Drive>,
}

/// Read all block devices under `<root>/block` (root is `/sys` normally),
/// sorted by name (digit runs compare as numbers: `loop2` before `loop10`).
///
/// Devices with size 0 (empty loop devices, absent media) are still listed.
/// A device whose `size` is missing or malformed is left out.
///
/// # Errors
/// `<root>/block` cannot be listed; a missing directory gives
/// [`io::ErrorKind::NotFound`]. The message names the path.
pub fn scan(root: &Path) -> io::Result<Vec<Drive>> {
    let block = root.join("block");
    let entries = fs::read_dir(&block).map_err(|e| {
        let msg = if e.kind() == io::ErrorKind::NotFound {
            format!("no such directory {} (is sysfs mounted?)", block.display())
        } else {
            format!("{}: {}", block.display(), crate::error::os_words(&e))
        };
        io::Error::new(e.kind(), msg)
    })?;
    let mut drives = Vec::new();
    for entry in entries {
        // An entry that errors mid-listing is a device going away; the rest
        // of the listing is still worth showing.
        let Ok(entry) = entry else { continue };
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        // `/sys/block/sda` is a symlink into `/sys/devices/...`: joining
        // paths (rather than using the entry's file type) follows it.
        if let Some(drive) = read_device(&entry.path(), name, true) {
            drives.push(drive);
        }
    }
    drives.sort_by(|a, b| natural_cmp(&a.name, &b.name));
    Ok(drives)
}

/// Print the device table, a blank line and [`LSBLK_HINT`] to `out`.
///
/// Partitions are indented under their disk. A partition that sysfs gives no
/// rotational/removable flag inherits its disk's, as `lsblk` does. A device of
/// size 0 is marked `(empty)`.
///
/// # Errors
/// Only errors from writing to `out`.
pub fn print(drives: &[Drive], out: &mut impl Write) -> io::Result<()> {
    if drives.is_empty() {
        writeln!(out, "no block devices found")?;
    } else {
        let mut rows = vec![Row::header()];
        for d in drives {
            rows.push(Row::new(d, None));
            for p in &d.partitions {
                rows.push(Row::new(p, Some(d)));
            }
        }
        let mut widths = [0usize; COLS];
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(&row.0) {
                *w = (*w).max(cell.chars().count());
            }
        }
        for row in &rows {
            let mut line = String::new();
            for (i, (cell, &w)) in row.0.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = w.saturating_sub(cell.chars().count());
                if i == SIZE_COL {
                    // Right-aligned so that the units line up.
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
    }
    writeln!(out)?;
    writeln!(out, "{LSBLK_HINT}")
}

/// Read one device directory; `None` if it has no usable `size`.
fn read_device(dir: &Path, name: String, with_partitions: bool) -> Option<Drive> {
    let sectors: u64 = read_attr(&dir.join("size"))?.parse().ok()?;
    let size = sectors.checked_mul(SECTOR)?;
    let model = read_attr(&dir.join("device").join("model"))
        .map(|m| {
            m.chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect()
        })
        .filter(|m: &String| !m.is_empty());
    let partitions = if with_partitions {
        read_partitions(dir)
    } else {
        Vec::new()
    };
    Some(Drive {
        name,
        size,
        model,
        rotational: read_flag(&dir.join("queue").join("rotational")),
        removable: read_flag(&dir.join("removable")),
        read_only: read_flag(&dir.join("ro")),
        partitions,
    })
}

fn read_partitions(dir: &Path) -> Vec<Drive> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut parts: Vec<Drive> = entries
        .filter_map(Result::ok)
        // Partitions are real subdirectories; not following symlinks keeps us
        // out of `subsystem`, `bdi`, `device` and friends.
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| e.path().join("partition").is_file())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            read_device(&e.path(), name, false)
        })
        .collect();
    parts.sort_by(|a, b| natural_cmp(&a.name, &b.name));
    parts
}

/// A sysfs attribute, trimmed (sysfs ends values with a newline, SCSI pads
/// models with spaces). `None` if it cannot be read as text.
fn read_attr(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

fn read_flag(path: &Path) -> Option<bool> {
    match read_attr(path)?.as_str() {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

/// Name order with digit runs compared as numbers, so that `sda2` comes
/// before `sda10` and `loop2` before `loop10`.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a, b);
    loop {
        match (a.chars().next(), b.chars().next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.len() - a.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                let db = b.len() - b.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                let (na, nb) = (&a[..da], &b[..db]);
                // Compare numerically without parsing (no overflow): strip
                // leading zeros, then longer is larger, then lexically.
                let (ta, tb) = (na.trim_start_matches('0'), nb.trim_start_matches('0'));
                let ord = ta
                    .len()
                    .cmp(&tb.len())
                    .then_with(|| ta.cmp(tb))
                    .then_with(|| na.len().cmp(&nb.len()));
                if ord != Ordering::Equal {
                    return ord;
                }
                a = &a[da..];
                b = &b[db..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(&y);
                }
                a = &a[x.len_utf8()..];
                b = &b[y.len_utf8()..];
            }
        }
    }
}

const COLS: usize = 7;
const SIZE_COL: usize = 1;

/// One table line: NAME SIZE TYPE ROTA RM RO MODEL.
struct Row([String; COLS]);

impl Row {
    fn header() -> Self {
        Row(["NAME", "SIZE", "TYPE", "ROTA", "RM", "RO", "MODEL"].map(str::to_owned))
    }

    fn new(d: &Drive, parent: Option<&Drive>) -> Self {
        let indent = if parent.is_some() { "  " } else { "" };
        let rota = d.rotational.or(parent.and_then(|p| p.rotational));
        let rm = d.removable.or(parent.and_then(|p| p.removable));
        let mut model = d.model.clone().unwrap_or_default();
        if d.size == 0 {
            if !model.is_empty() {
                model.push(' ');
            }
            model.push_str("(empty)");
        }
        Row([
            format!("{indent}/dev/{}", d.name),
            human_bytes(d.size),
            if parent.is_some() { "part" } else { "disk" }.to_owned(),
            match rota {
                Some(true) => "hdd",
                Some(false) => "ssd",
                None => "-",
            }
            .to_owned(),
            yes_no(rm),
            yes_no(d.read_only),
            model,
        ])
    }
}

fn yes_no(v: Option<bool>) -> String {
    match v {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

    /// A unique temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, AtomicOrdering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("bsync-drives-test-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn put(path: &Path, content: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    /// Create `<root>/devices/<sub>/<name>` with the given attributes and
    /// link `<root>/block/<name>` to it, as the kernel does.
    fn device(root: &Path, sub: &str, name: &str, attrs: &[(&str, &str)]) -> PathBuf {
        let dir = root.join("devices").join(sub).join(name);
        fs::create_dir_all(&dir).unwrap();
        for (file, content) in attrs {
            put(&dir.join(file), content);
        }
        fs::create_dir_all(root.join("block")).unwrap();
        let target = Path::new("../devices").join(sub).join(name);
        std::os::unix::fs::symlink(target, root.join("block").join(name)).unwrap();
        dir
    }

    const TB_SECTORS: &str = "1953525168\n"; // a "1 TB" disk: 931.5 GiB

    /// The fake tree described in the module's brief.
    fn fake_sysfs() -> TempDir {
        let t = TempDir::new();
        let root = &t.0;
        let sda = device(
            root,
            "pci0000:00/ata1/host0/target0:0:0/0:0:0:0/block",
            "sda",
            &[
                ("size", TB_SECTORS),
                ("removable", "0\n"),
                ("ro", "0\n"),
                ("queue/rotational", "1\n"),
                ("device/model", "WDC WD10EZEX-00B \n"),
            ],
        );
        // Out of order on purpose, and sda10 to check numeric ordering.
        for (part, sectors) in [
            ("sda2", "1951424512\n"),
            ("sda10", "2048\n"),
            ("sda1", "2097152\n"),
        ] {
            put(&sda.join(part).join("size"), sectors);
            put(&sda.join(part).join("partition"), &part[3..]);
            put(&sda.join(part).join("ro"), "0\n");
        }
        // A subdirectory without `partition` is not a partition.
        put(&sda.join("holders").join("size"), "8\n");
        // A symlinked directory is never mistaken for one either.
        std::os::unix::fs::symlink(&sda, sda.join("subsystem")).unwrap();

        device(
            root,
            "pci0000:00/nvme/nvme0",
            "nvme0n1",
            &[
                ("size", "1000215216\n"),
                ("removable", "0\n"),
                ("ro", "0\n"),
                ("queue/rotational", "0\n"),
                ("device/model", "Samsung SSD 970 EVO Plus 500GB          \n"),
            ],
        );
        device(
            root,
            "usb1/1-1/host6/block",
            "sdb",
            &[
                ("size", "30031872\n"),
                ("removable", "1\n"),
                ("ro", "0\n"),
                ("queue/rotational", "1\n"),
                ("device/model", "Flash Disk\n"),
            ],
        );
        device(
            root,
            "virtual/block",
            "loop0",
            &[
                ("size", "0\n"),
                ("removable", "0\n"),
                ("ro", "1\n"),
                ("queue/rotational", "0\n"),
            ],
        );
        device(
            root,
            "virtual/block",
            "loop10",
            &[("size", "8192\n"), ("ro", "0\n")],
        );
        // Missing model, rotational and removable files.
        device(root, "virtio1/block", "vda", &[("size", "1048576\n")]);
        device(
            root,
            "virtual/block",
            "bad0",
            &[("size", "lots\n"), ("ro", "0\n")],
        );
        device(
            root,
            "virtual/block",
            "bad1",
            // Overflows u64 once multiplied by 512.
            &[("size", "36028797018963968\n")],
        );
        t
    }

    fn names(drives: &[Drive]) -> Vec<&str> {
        drives.iter().map(|d| d.name.as_str()).collect()
    }

    #[test]
    fn scan_reads_fake_sysfs() {
        let t = fake_sysfs();
        let drives = scan(&t.0).unwrap();
        assert_eq!(
            names(&drives),
            ["loop0", "loop10", "nvme0n1", "sda", "sdb", "vda"]
        );

        let sda = &drives[3];
        assert_eq!(sda.size, 1_953_525_168 * 512);
        assert_eq!(sda.model.as_deref(), Some("WDC WD10EZEX-00B"));
        assert_eq!(sda.rotational, Some(true));
        assert_eq!(sda.removable, Some(false));
        assert_eq!(sda.read_only, Some(false));
        assert_eq!(names(&sda.partitions), ["sda1", "sda2", "sda10"]);
        assert_eq!(sda.partitions[0].size, 2_097_152 * 512);
        assert_eq!(sda.partitions[1].size, 1_951_424_512 * 512);
        assert_eq!(sda.partitions[0].read_only, Some(false));
        assert_eq!(sda.partitions[0].rotational, None);
        assert!(sda.partitions[0].partitions.is_empty());

        let nvme = &drives[2];
        assert_eq!(
            nvme.model.as_deref(),
            Some("Samsung SSD 970 EVO Plus 500GB")
        );
        assert_eq!(nvme.rotational, Some(false));
        assert!(nvme.partitions.is_empty());

        let usb = &drives[4];
        assert_eq!(usb.removable, Some(true));
        assert_eq!(usb.read_only, Some(false));
        assert_eq!(usb.size, 30_031_872 * 512);

        let loop0 = &drives[0];
        assert_eq!(loop0.size, 0);
        assert_eq!(loop0.read_only, Some(true));
        assert_eq!(loop0.model, None);

        let vda = &drives[5];
        assert_eq!(
            *vda,
            Drive {
                name: "vda".into(),
                size: 512 << 20,
                model: None,
                rotational: None,
                removable: None,
                read_only: None,
                partitions: vec![],
            }
        );
    }

    #[test]
    fn print_shows_table_and_hint() {
        let t = fake_sysfs();
        let drives = scan(&t.0).unwrap();
        let mut out = Vec::new();
        print(&drives, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();

        assert!(lines[0].starts_with("NAME"), "{text}");
        for col in ["SIZE", "TYPE", "ROTA", "RM", "RO", "MODEL"] {
            assert!(lines[0].contains(col), "{text}");
        }
        let line = |prefix: &str| {
            *lines
                .iter()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no line {prefix:?} in\n{text}"))
        };
        let words = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();

        let sda = line("/dev/sda ");
        assert!(sda.contains("931.5 GiB"), "{sda}");
        assert_eq!(
            words(sda)[3..],
            ["disk", "hdd", "no", "no", "WDC", "WD10EZEX-00B"]
        );
        let sda1 = line("  /dev/sda1 ");
        assert!(sda1.contains("1.0 GiB"), "{sda1}");
        // Partitions inherit ROTA/RM from the disk, keep their own RO.
        assert_eq!(words(sda1)[3..], ["part", "hdd", "no", "no"]);
        let sda_at = lines.iter().position(|l| *l == sda).unwrap();
        assert!(lines[sda_at + 1].starts_with("  /dev/sda1 "), "{text}");
        assert!(lines[sda_at + 2].starts_with("  /dev/sda2 "), "{text}");
        assert!(lines[sda_at + 3].starts_with("  /dev/sda10 "), "{text}");

        assert!(line("/dev/nvme0n1 ").contains("ssd"));
        assert!(line("/dev/nvme0n1 ").ends_with("Samsung SSD 970 EVO Plus 500GB"));
        assert_eq!(words(line("/dev/sdb "))[3..7], ["disk", "hdd", "yes", "no"]);
        let loop0 = line("/dev/loop0 ");
        assert!(loop0.contains("0 B"), "{loop0}");
        assert!(loop0.ends_with("(empty)"), "{loop0}");
        assert_eq!(words(loop0)[3..7], ["disk", "ssd", "no", "yes"]);
        assert_eq!(words(line("/dev/vda "))[3..], ["disk", "-", "-", "-"]);

        // Columns line up: every SIZE ends where the header's SIZE ends.
        let size_end = lines[0].find("SIZE").unwrap() + 4;
        for l in &lines[1..lines.len() - 2] {
            assert!(l[..size_end].ends_with('B'), "misaligned: {l:?}");
        }
        assert!(!text.contains("bad0") && !text.contains("bad1"), "{text}");
        assert_eq!(lines[lines.len() - 2], "");
        assert_eq!(lines[lines.len() - 1], LSBLK_HINT);
        assert!(LSBLK_HINT.contains("lsblk"));
    }

    #[test]
    fn print_without_devices_still_gives_hint() {
        let mut out = Vec::new();
        print(&[], &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, format!("no block devices found\n\n{LSBLK_HINT}\n"));
    }

    #[test]
    fn scan_without_block_dir_is_not_found_naming_path() {
        let t = TempDir::new();
        let err = scan(&t.0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let want = t.0.join("block").display().to_string();
        assert!(err.to_string().contains(&want), "{err}");
    }

    #[test]
    fn scan_empty_block_dir_is_empty() {
        let t = TempDir::new();
        fs::create_dir(t.0.join("block")).unwrap();
        assert_eq!(scan(&t.0).unwrap(), []);
    }

    #[test]
    fn scan_real_sysfs() {
        if !Path::new("/sys/block").is_dir() {
            return;
        }
        for d in scan(Path::new("/sys")).unwrap() {
            assert!(!d.name.is_empty());
        }
    }

    #[test]
    fn natural_order() {
        let mut v = [
            "sda10", "sda2", "loop10", "loop2", "sda", "nvme0n1", "sda02",
        ];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            v,
            [
                "loop2", "loop10", "nvme0n1", "sda", "sda2", "sda02", "sda10"
            ]
        );
    }
}
