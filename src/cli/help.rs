//! The text of `-h` and `--version`.
//!
//! Kept apart from the parser so the help reads as one page; a test in
//! `cli` checks that it names every flag the parser knows.

use std::fmt::Write as _;

use super::FLAGS;
use crate::error::{Error, Result};
use crate::proto::PROTOCOL_VERSION;

/// The `--version` text.
pub fn version_text() -> String {
    format!(
        "bsync {} (protocol {PROTOCOL_VERSION})\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// The `-h` text, grouped by task. The manual page and the shell
/// completions are made from it and from the flag table ([`manual`],
/// [`completions`]); no line is wider than 80 columns (a test says so).
pub const HELP: &str = "\
bsync - keep a block device or disk image identical to another, block by block

Only blocks that differ are written; zero blocks become holes or cleared
ranges. Every flag works with one dash or two, and as -flag=value.

COPY ON THIS MACHINE
  bsync -f SRC -t DST              make DST (file or device) identical to SRC
  bsync -f DST -t SRC -d           the same, reading from the -t path

OVER THE NETWORK (two machines)
  bsync -f DST -p PORT [-i ADDR]   run a server; in upload mode, writes DST
  bsync -f SRC -r HOST:PORT        connect and upload SRC
  bsync -f SRC -p PORT -d          run a server that is the source (download)
  bsync -f DST -r HOST:PORT -d     connect and download into DST
  bsync -f SRC -t user@host:/dev/vda   start the remote end over SSH

PATCHES, COMPARING, ANY REMOTE SHELL (bdsync's workflow)
  bsync -f SRC -t DST --compare    read both, change nothing, say what
                                   differs (also -r, -t user@host:)
  bsync -f SRC -t DST --write-patch FILE   a dry run leaving a patch
  bsync --patch[=DST] < PATCH      apply; refuses a target it was not made for
  bsync 'ssh host bsync --server' LOCDEV REMDEV > PATCH   bdsync's client
  -server       one session on stdin/stdout, for any remote shell (with -f:
                that path only, any other the client names is refused;
                without: the client names it)
  -write-patch FILE  with -r or -t: a patch instead of writing (- is stdout)
  -compare      with -r or -t: compare only, nothing written on either end;
                both ends say how many blocks and bytes differ; exit 0
                same, 3 differ
  -over-ssh     with -t user@host: carry the data inside ssh (automatic when
                the remote's port cannot be reached); ssh's cipher then
                encrypts it, in place of -e's
  -patch[=DEV]  apply the patch on stdin to DEV (or to the target it names);
                nothing is written unless the whole target is the image the
                patch was made from; Ctrl-C stops it between two records
  -diffsize[=MODE]  strict, resize or minsize: the size difference a patch
                may bridge (bdsync's client form and -patch) [strict]
  -remdata[=UNDO]  an undo patch: on stdout from bdsync's client form, into
                a new file UNDO (not -) while applying with -patch (each
                record on disk before its write; it restores the size too,
                and applies even cut short by a killed apply)
  -digest NAME  bdsync's client form: md5, sha1, sha256... are accepted;
                bsync checks its patches with its own digest
  -blocksize N  bdsync's name for -b
  -verbose      bdsync's name for -v (may be repeated)
  -progress     bdsync's: show progress (bsync does, unless -q)

WHAT AND HOW
  -f PATH       file or device to read (source) or write (destination);
                the writing end must give it [/dev/zero]
  -t TARGET     /path, user@host:/path or user@host:port:/path
                (IPv6: user@[::1]:/path)
  -r HOST:PORT  connect to a bsync server (IPv6: [::1]:8080)
  -d            download: the server (or -t path) is the source
  -b N          block size in bytes, or with K/M/G (binary) [10M]; at most 1G
  -s N          skip the first N blocks (resume; neither read nor checked);
                a failed run prints the -s and -b to resume with, where safe
                (never in a dry run, nor after the source changed) [0]

RESCUING A FAILING DISK
  bsync -f /dev/sdb -t sdb.img -rescue sdb.map     copy past read errors
  -rescue MAPFILE  a read error of the source no longer ends the run: the
                block is read again in smaller pieces down to sectors
                (O_DIRECT), only the sectors that fail are skipped, never
                written (the destination keeps what it had); MAPFILE is a
                GNU ddrescue map (+ read, - unreadable, ? not tried), kept
                during the run; run again with it to retry only what
                failed (on the end that reads the source; not with
                -compare); with -write-patch they are unknown in the
                patch, which keeps the target's bytes there, and what was
                read stays ? in the map (it is not at the destination)

SERVER
  -p PORT       port to listen on; 0 picks a free one and prints it [8080]
  -i ADDR       address to listen on [0.0.0.0]
  -P            print no progress on the server (-t sets it)

SPEED
  -w N          workers: parallel connections and CPU threads [1]
                (HDD: 1, SSD: 4-8)
  -prefetch N   pieces (512 KiB) read ahead locally; 0: workers x 4 [0]
  -n            no compression (the client chooses, for both directions)
  -L LEVEL      zstd level: fast, default, better, best [default] (client)
  -bwlimit RATE  at most RATE bytes/s of block data from the sending end,
                with K/M/G (binary), e.g. 20M
  -auto         measure round trip, throughput and zstd speed (a few hundred
                ms), then pick -b, -w, -prefetch and -L and say why in one
                line (client -r upload only)

SECURITY
  -e            encrypt with ChaCha20-Poly1305; with -t a fresh key is made and
                handed over SSH, in direct mode it needs -K
  -K HEX        shared 32-byte key as 64 hex digits (same on both ends); -K -
                reads it from stdin, off the command line where ps shows it
  -token-file FILE  without encryption, accept only clients that know the
                64-hex-digit token in FILE (- for stdin); give it to both ends
  -ssh CMD      remote shell for -t, quoted as in sh, e.g.
                \"ssh -i key -J jump\" [$BSYNC_SSH or ssh]

OUTPUT
  -q            quiet: errors only
  -v            verbose: say which kernel I/O hints were applied or skipped, and
                why (read-ahead, fadvise, mlock, huge pages, how zeros were
                cleared); BSYNC_VERBOSE=1 does the same
  -l PREFIX     put PREFIX in front of every log and progress line
  -json         print the closing summary as one JSON object on stdout
                (on stderr when stdout carries a patch)
  -a            list block devices
  -h, --help    this text
  --version     version and protocol version
  --help-man    the manual page, in roff (make install writes bsync.1)
  --completions SHELL  a completion script for bash, zsh or fish

ENVIRONMENT
  BSYNC_SSH     the remote shell of -t when -ssh is not given
  BSYNC_VERBOSE  anything but empty or 0: as -v
  BSYNC_NO_HINTS  anything but empty or 0: no kernel I/O hints (fadvise,
                read-ahead, mlock, huge pages), for comparing with plain I/O
  BSYNC_ALLOW_MOUNTED  anything but empty or 0: write to a mounted or busy
                device, or a file behind a loop device or swap, anyway (an
                expert's last resort, never the default)
  COLUMNS       the width of the progress line where the terminal gives none
  SOURCE_DATE_EPOCH  the date --help-man puts on the page

EXIT STATUS
  0             success
  1             transfer or I/O failure
  2             usage error (nothing was opened)
  3             --compare found differences
  4             -rescue finished but some sectors were unreadable (see the map)

EXAMPLES
  bsync -f /dev/vda -t root@newhost:/dev/vda
                migrate a disk over SSH
  bsync -e -L fast -w 4 -f /dev/sda -t backup@nas:/srv/sda.img
                encrypted, fast compression, four workers
  bsync -f disk.img -t /mnt/backup/disk.img
                on this machine: only the blocks that differ are written
";

/// The shells [`completions`] writes for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShellKind {
    /// bash (`complete -F`).
    Bash,
    /// zsh (`#compdef`, `_arguments`).
    Zsh,
    /// fish (`complete -c`).
    Fish,
}

impl ShellKind {
    /// `--completions`'s value.
    pub fn parse(s: &str) -> Result<ShellKind> {
        match s {
            "bash" => Ok(ShellKind::Bash),
            "zsh" => Ok(ShellKind::Zsh),
            "fish" => Ok(ShellKind::Fish),
            _ => Err(Error::usage(format!(
                "-completions: {s:?} is not a shell (bash, zsh, fish)"
            ))),
        }
    }
}

/// The flags, as completions offer them.
fn visible_flags() -> impl Iterator<Item = (&'static str, bool)> {
    FLAGS.iter().copied()
}

/// What `-h` says about `-flag`, on one line.
fn describe(flag: &str) -> String {
    let mut text = String::new();
    let mut lines = HELP.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.strip_prefix("  -") else {
            continue;
        };
        let names: Vec<&str> = rest
            .split("  ")
            .next()
            .unwrap_or_default()
            .split([',', ' ', '['])
            .map(|w| w.trim_start_matches('-'))
            .collect();
        if !names.contains(&flag) {
            continue;
        }
        text.push_str(term_and_text(line).1.trim());
        for more in lines.by_ref() {
            if !more.starts_with("   ") || more.trim_start().starts_with('-') {
                break;
            }
            text.push(' ');
            text.push_str(more.trim());
        }
        break;
    }
    text
}

/// `("-f PATH", "file or device...")` out of a two-column help line.
fn term_and_text(line: &str) -> (&str, &str) {
    let body = line.trim_start();
    match body.find("  ") {
        Some(i) => (&body[..i], body[i..].trim_start()),
        None => (body, ""),
    }
}

/// `SECURITY`, `OVER THE NETWORK (two machines)`: capitals up to any
/// parenthesis.
fn is_heading(line: &str) -> bool {
    let head = line.split(" (").next().unwrap_or_default();
    !head.is_empty() && head == head.to_uppercase() && head.chars().any(char::is_alphabetic)
}

/// roff-escape `s`: backslashes, dashes and a leading dot or quote.
fn roff(s: &str) -> String {
    let mut out = s.replace('\\', "\\e").replace('-', "\\-");
    if out.starts_with('.') || out.starts_with('\'') {
        out.insert_str(0, "\\&");
    }
    out
}

/// The manual page `bsync.1`, in roff, made from [`HELP`]: each heading a
/// section, each two-column line a tagged paragraph.
pub fn manual() -> String {
    let mut out = String::new();
    let version = env!("CARGO_PKG_VERSION");
    let _ = writeln!(
        out,
        ".TH BSYNC 1 \"{}\" \"bsync {version}\" \"User Commands\"",
        man_date()
    );
    let mut lines = HELP.lines();
    let title = lines.next().unwrap_or_default();
    let _ = writeln!(out, ".SH NAME\n{}", roff(title));
    let _ = writeln!(out, ".SH SYNOPSIS\n.B bsync\n[\\fIflags\\fR]");
    let _ = writeln!(out, ".SH DESCRIPTION");
    for line in lines {
        if line.is_empty() {
            out.push_str(".PP\n");
        } else if !line.starts_with(' ') && is_heading(line) {
            let _ = writeln!(out, ".SH {}", roff(line));
        } else if !line.starts_with(' ') {
            let _ = writeln!(out, "{}", roff(line));
        } else if line.starts_with("   ") {
            let _ = writeln!(out, "{}", roff(line.trim()));
        } else {
            let (term, text) = term_and_text(line);
            if text.is_empty() {
                let _ = writeln!(out, ".TP\n\\fB{}\\fR", roff(term));
            } else {
                let _ = writeln!(out, ".TP\n\\fB{}\\fR\n{}", roff(term), roff(text));
            }
        }
    }
    out.push_str(
        ".SH SEE ALSO\n.BR ssh (1),\n.BR ssh_config (5)\n.PP\n\\fBbsync \\-h\\fR prints \
         the text of this page; \\fBbsync \\-\\-completions\\fR \\fISHELL\\fR the completions \
         installed with it.\n",
    );
    out
}

/// The manual's date, `2026-12-02`: `SOURCE_DATE_EPOCH`'s (for
/// reproducible builds) or today's.
fn man_date() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    let (y, m, d, ..) = crate::sys::local_time(secs);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Values a flag's argument is completed from: `Some(words)`, or `None`
/// for a path.
fn value_words(flag: &str) -> Option<&'static str> {
    match flag {
        "f" | "t" | "token-file" | "write-patch" => None,
        "L" => Some("fast default better best"),
        "completions" => Some("bash zsh fish"),
        "digest" => Some("md5 sha1 sha256 sha512"),
        _ => Some(""),
    }
}

/// A completion script for `shell`, made from the flag table and `-h`.
pub fn completions(shell: ShellKind) -> String {
    let mut out = String::new();
    match shell {
        ShellKind::Bash => {
            let words: Vec<String> = visible_flags().map(|(n, _)| format!("-{n}")).collect();
            out.push_str("# bash completion for bsync (made by bsync --completions bash)\n");
            out.push_str("_bsync() {\n  local cur=\"${COMP_WORDS[COMP_CWORD]}\"\n");
            out.push_str("  local prev=\"${COMP_WORDS[COMP_CWORD-1]}\"\n  case \"${prev#-}\" in\n");
            for (name, takes) in visible_flags() {
                if !takes {
                    continue;
                }
                let pattern = format!("{name}|-{name}");
                match value_words(name) {
                    None => {
                        let _ = writeln!(
                            out,
                            "    {pattern}) compopt -o filenames 2>/dev/null; \
                             COMPREPLY=($(compgen -f -- \"$cur\")); return ;;"
                        );
                    }
                    Some(w) => {
                        let _ = writeln!(
                            out,
                            "    {pattern}) COMPREPLY=($(compgen -W \"{w}\" -- \"$cur\")); return ;;"
                        );
                    }
                }
            }
            // Every flag takes one dash or two; offer the form being typed.
            let _ = writeln!(
                out,
                "  esac\n  local words=\"{}\"\n  [[ $cur == --* ]] && words=\"-${{words// / -}}\"\n  \
                 COMPREPLY=($(compgen -W \"$words\" -- \"$cur\"))\n}}\ncomplete -F _bsync bsync",
                words.join(" ")
            );
        }
        ShellKind::Zsh => {
            out.push_str(
                "#compdef bsync\n# zsh completion for bsync (made by bsync --completions zsh)\n",
            );
            out.push_str("_arguments \\\n");
            for (name, takes) in visible_flags() {
                let desc = describe(name)
                    .replace('\'', "'\\''")
                    .replace('[', "\\[")
                    .replace(']', "\\]")
                    .replace(':', "\\:");
                let value = match (takes, value_words(name)) {
                    (false, _) => String::new(),
                    (true, None) => ":path:_files".into(),
                    (true, Some("")) => ": : ".into(),
                    (true, Some(w)) => format!(":value:({w})"),
                };
                let _ = writeln!(out, "  '-{name}[{desc}]{value}' \\");
            }
            out.push_str("  '--help[help]' '--version[version]'\n");
        }
        ShellKind::Fish => {
            out.push_str("# fish completion for bsync (made by bsync --completions fish)\n");
            for (name, takes) in visible_flags() {
                let desc = describe(name).replace('\\', "\\\\").replace('\'', "\\'");
                let value = match (takes, value_words(name)) {
                    (false, _) => String::new(),
                    (true, None) => " -r -F".into(),
                    (true, Some("")) => " -x".into(),
                    (true, Some(w)) => format!(" -x -a '{w}'"),
                };
                let _ = writeln!(out, "complete -c bsync -o {name}{value} -d '{desc}'");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lines_fit_in_80_columns() {
        for line in HELP.lines() {
            assert!(line.chars().count() <= 80, "{} columns: {line}", line.len());
        }
    }

    #[test]
    fn every_visible_flag_is_described() {
        for (name, _) in visible_flags() {
            if !matches!(name, "help" | "version") {
                assert!(!describe(name).is_empty(), "-{name} has no help line");
            }
        }
        assert!(describe("f").contains("the writing end must give it"));
    }

    #[test]
    fn manual_has_every_section_and_flag() {
        let man = manual();
        assert!(man.starts_with(".TH BSYNC 1"));
        for section in [
            "NAME",
            "SYNOPSIS",
            "OVER THE NETWORK (two machines)",
            "SECURITY",
            "ENVIRONMENT",
            "EXIT STATUS",
            "EXAMPLES",
        ] {
            assert!(man.contains(&format!(".SH {section}\n")), "{section}");
        }
        // Every variable a user may set has an entry (BSYNC_IO_TIMEOUT and
        // BSYNC_SYSFS are the tests').
        use crate::config::{ALLOW_MOUNTED_ENV, NO_HINTS_ENV, SSH_ENV, VERBOSE_ENV};
        for var in [
            SSH_ENV,
            VERBOSE_ENV,
            NO_HINTS_ENV,
            ALLOW_MOUNTED_ENV,
            "COLUMNS",
        ] {
            let entry = format!(".TP\n\\fB{}\\fR\n", roff(var));
            assert!(man.contains(&entry), "{var}: {man}");
        }
        // A default closes its entry, after the text it belongs to.
        assert!(
            describe("s").ends_with("the source changed) [0]"),
            "{}",
            describe("s")
        );
        assert!(man.contains(".TP\n\\fB\\-bwlimit RATE\\fR\n"), "{man}");
    }

    /// Issue 19, item 10: every option has an entry, every entry a body,
    /// the page a date, and SEE ALSO no README (it is not installed).
    #[test]
    fn manual_lists_every_option_with_a_body() {
        let man = manual();
        for (name, _) in FLAGS {
            let flag = roff(&format!("-{name}"));
            assert!(
                [" ", "\\fR", "["]
                    .iter()
                    .any(|end| man.contains(&format!("{flag}{end}"))),
                "the manual lacks -{name}"
            );
        }
        let lines: Vec<&str> = man.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if *line == ".TP" {
                let body = lines.get(i + 2).copied().unwrap_or_default();
                assert!(
                    !body.is_empty() && !body.starts_with('.'),
                    "no body under {}",
                    lines[i + 1]
                );
            }
        }
        let th = lines[0];
        assert!(!th.contains("\"\""), "no date: {th}");
        assert!(!man.to_lowercase().contains("readme"), "{man}");
    }

    #[test]
    fn completions_name_every_flag() {
        for shell in [ShellKind::Bash, ShellKind::Zsh, ShellKind::Fish] {
            let text = completions(shell);
            for (name, _) in visible_flags() {
                let flag = match shell {
                    ShellKind::Fish => format!("-o {name} "),
                    _ => format!("-{name}"),
                };
                assert!(text.contains(&flag), "{shell:?} lacks -{name}");
            }
            // Issue 19, item 11: -write-patch completes file names.
            for path in ["write-patch", "f", "t"] {
                let files = text.lines().any(|l| match shell {
                    ShellKind::Bash => l.contains(&format!("{path}|-{path}) compopt -o filenames")),
                    ShellKind::Zsh => {
                        l.starts_with(&format!("  '-{path}[")) && l.contains(":_files")
                    }
                    ShellKind::Fish => l.contains(&format!("-o {path} -r -F")),
                });
                assert!(files, "{shell:?}: -{path} completes no file name");
            }
        }
    }
}
