//! bdsync's command line, as its users type it, with `bsync` as the
//! program:
//!
//! ```text
//! bsync [--verbose] [--remdata] [--diffsize[=MODE]] [--blocksize=N] [--rescue MAP] REMSHCMD LOCDEV REMDEV > PATCH
//! bsync --server                       (the main parser: a bsync flag too)
//! bsync --patch[=DSTDEV] [--diffsize[=MODE]] [--remdata=UNDO] < PATCH
//! ```
//!
//! It is recognised by its positional arguments (bsync's own flags take
//! none) or by `--patch`. bdsync options bsync does not offer are refused
//! with one line naming them (exit 2).

use std::ffi::OsString;
use std::path::PathBuf;

use super::{DEFAULT_BLOCK_SIZE, FLAGS, parse_block_size};
use crate::compress::Level;
use crate::config::{
    Apply, Config, DiffSize, Env, LogOptions, Mode, RemoteShell, Transfer, VERBOSE_ENV, env_flag,
};
use crate::error::{Error, Result};

/// bdsync options that bsync refuses, and why.
const REFUSED: &[(&str, &str)] = &[
    ("hash", "bsync always uses its own FNV-1a 128 digest"),
    ("checksum", "bsync always uses its own FNV-1a 128 digest"),
    ("zeroblocks", "bsync always sends zero ranges as markers"),
    (
        "flushcache",
        "bsync drops read pages behind its reader by itself",
    ),
    ("twopass", "bsync compares in one pass, per 64 KiB grain"),
    ("warndev", "bsync refuses mounted destinations by itself"),
];

/// Whether `args` are in bdsync's form: `--patch`, or three positionals
/// (anything else with positionals gets bsync's own "unexpected argument").
pub fn is_bdsync_form(args: &[OsString]) -> bool {
    let mut i = 0;
    let mut positionals = 0;
    while i < args.len() {
        let Some(s) = args[i].to_str() else {
            positionals += 1;
            i += 1;
            continue;
        };
        if s == "--" {
            positionals += args.len() - i - 1;
            break;
        }
        let body = s.strip_prefix("--").or_else(|| s.strip_prefix('-'));
        match body.filter(|b| !b.is_empty()) {
            None => positionals += 1,
            Some(b) => {
                let name = b.split_once('=').map_or(b, |(n, _)| n);
                if name == "patch" {
                    return true;
                }
                let takes_value = FLAGS.iter().any(|&(n, v)| n == name && v);
                if takes_value && !b.contains('=') {
                    i += 1;
                }
            }
        }
        i += 1;
    }
    positionals == 3
}

/// The digests bdsync's `--digest` names (OpenSSL's), accepted on the
/// client form so that bdsync's scripts run; bsync checks with its own.
const DIGESTS: &[&str] = &[
    "md4",
    "md5",
    "sha1",
    "sha224",
    "sha256",
    "sha384",
    "sha512",
    "sha512-224",
    "sha512-256",
    "sha3-224",
    "sha3-256",
    "sha3-384",
    "sha3-512",
    "ripemd160",
    "blake2b512",
    "blake2s256",
    "sm3",
    "whirlpool",
];

/// `--digest=NAME`: one of bdsync's digest names, or a usage error.
fn digest(v: Option<&str>) -> Result<String> {
    let name = v.unwrap_or_default();
    if DIGESTS.iter().any(|d| d.eq_ignore_ascii_case(name)) {
        return Ok(name.to_string());
    }
    Err(usage(format!(
        "--digest: {name:?} is not one of bdsync's digests ({})",
        DIGESTS.join(", ")
    )))
}

fn usage(msg: impl Into<String>) -> Error {
    Error::usage(msg.into())
}

fn diffsize(v: Option<&str>) -> Result<DiffSize> {
    match v {
        None | Some("strict") => Ok(DiffSize::Strict),
        Some("resize") => Ok(DiffSize::Resize),
        Some("minsize") => Ok(DiffSize::MinSize),
        Some(other) => Err(usage(format!(
            "--diffsize: {other:?} is not strict, resize or minsize"
        ))),
    }
}

/// The flags seen so far that take a value: (name, as typed, value).
type Seen = Vec<(&'static str, String, String)>;

/// A flag given twice with different values is refused, naming both, as
/// bsync's own are: which one wins would be a guess (`--patch=A
/// --patch=B` once applied to B, silently).
fn once(seen: &mut Seen, name: &'static str, typed: &str, value: String) -> Result<()> {
    match seen.iter().find(|(n, ..)| *n == name) {
        Some((_, first, v)) if *v != value => Err(usage(format!(
            "--{name} is given twice, as {first:?} and {typed:?}: give it once"
        ))),
        Some(_) => Ok(()),
        None => {
            seen.push((name, typed.to_string(), value));
            Ok(())
        }
    }
}

/// Parse bdsync's client or patcher form into a plan.
pub fn parse(args: &[OsString]) -> Result<Config> {
    let mut verbose = 0u32;
    let mut progress = false;
    let mut remdata: Option<Option<PathBuf>> = None;
    let mut size: Option<DiffSize> = None;
    let mut block_size = None;
    let mut patch: Option<Option<PathBuf>> = None;
    let mut no_compress = false;
    let mut digest_name = None;
    let mut rescue: Option<PathBuf> = None;
    let mut positional: Vec<OsString> = Vec::new();
    let mut rest = false;
    let mut seen = Seen::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let s = match arg.to_str() {
            Some(s) if !rest => s,
            _ => {
                positional.push(arg.clone());
                continue;
            }
        };
        if s == "--" {
            rest = true;
            continue;
        }
        let Some(body) = s
            .strip_prefix("--")
            .or_else(|| s.strip_prefix('-'))
            .filter(|b| !b.is_empty())
        else {
            positional.push(arg.clone());
            continue;
        };
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        let raw = || value.unwrap_or_default().to_string();
        match (name, value) {
            ("verbose" | "v", None) => verbose += 1,
            ("progress", None) => progress = true,
            ("remdata", v) => {
                if v == Some("") {
                    return Err(usage(
                        "--remdata=: an empty file name; with --patch give a new file for \
                         the undo data: --remdata=FILE",
                    ));
                }
                once(&mut seen, "remdata", s, raw())?;
                remdata = Some(v.map(PathBuf::from));
            }
            ("diffsize", v) => {
                let mode = diffsize(v)?;
                once(&mut seen, "diffsize", s, format!("{mode:?}"))?;
                size = Some(mode);
            }
            ("blocksize" | "b", Some(v)) => {
                let n = parse_block_size(v)?;
                once(&mut seen, "blocksize", s, n.to_string())?;
                block_size = Some(n);
            }
            ("patch", v) => {
                if v == Some("") {
                    return Err(usage(
                        "--patch=: an empty target; give the device (--patch=DEV), or                          --patch alone for the one the patch names",
                    ));
                }
                once(&mut seen, "patch", s, raw())?;
                patch = Some(v.map(PathBuf::from));
            }
            ("n", None) => no_compress = true,
            ("digest", v) => {
                let name = digest(v)?;
                once(&mut seen, "digest", s, name.to_ascii_lowercase())?;
                digest_name = Some(name);
            }
            // bsync's own: LOCDEV is failing (unknown sectors in the patch).
            ("rescue", v) => {
                let map = match v {
                    Some(v) => OsString::from(v),
                    None => args
                        .next()
                        .cloned()
                        .ok_or_else(|| usage("--rescue needs a map file: --rescue MAPFILE"))?,
                };
                let shown = map.to_string_lossy().into_owned();
                once(&mut seen, "rescue", &format!("--rescue={shown}"), shown)?;
                rescue = Some(PathBuf::from(map));
            }
            ("server", _) => {
                return Err(usage(
                    "--server takes no device: run `bsync --server` alone (the client names the device)",
                ));
            }
            (n, _) => {
                if let Some((_, why)) = REFUSED.iter().find(|(r, _)| *r == n) {
                    return Err(usage(format!(
                        "--{n}: a bdsync option bsync does not offer ({why}); see README, \"For bdsync users\""
                    )));
                }
                return Err(usage(format!(
                    "-{n}: not an option of bdsync's form (bsync [--verbose] [--remdata] \
                     [--diffsize[=MODE]] [--blocksize=N] [--rescue MAP] REMSHCMD LOCDEV REMDEV, or bsync \
                     --patch[=DEV]); \
                     bsync's own flags take no positional arguments"
                )));
            }
        }
    }
    let log = LogOptions {
        prefix: String::new(),
        // bdsync is silent unless asked; so is this form.
        quiet: verbose == 0 && !progress,
        verbose: verbose > 1 || env_flag(VERBOSE_ENV),
        no_server_progress: true,
        // stdout is the patch.
        json: false,
    };
    // Compressing the patch is the costly part: a worker per core, up to 4.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let transfer = Transfer {
        block_size: block_size.unwrap_or(DEFAULT_BLOCK_SIZE),
        skip: 0,
        // Fast: a patch is often compressed again on its way (gzip in
        // bdsync's examples), and making it is the slow part.
        compression: (!no_compress).then_some(Level::Fast),
        workers,
        prefetch: workers * 4,
        bwlimit: None,
    };
    if rescue.is_some() && block_size.is_some_and(|b| b % 4096 != 0) {
        return Err(usage(
            "--rescue needs --blocksize a multiple of 4K, so that blocks start on the \
             sector boundaries it retries at",
        ));
    }
    if rescue.is_some() && (patch.is_some() || remdata.is_some()) {
        return Err(usage(
            "--rescue reads a failing LOCDEV for the client form's patch; it does not go \
             with --patch or --remdata",
        ));
    }
    let mode = if let Some(target) = patch {
        if !positional.is_empty() {
            return Err(usage(
                "--patch reads the patch on stdin and takes no other arguments: bsync --patch[=DEV] < PATCH",
            ));
        }
        if let Some(name) = digest_name {
            return Err(usage(format!(
                "--digest={name} belongs to bdsync's client form (the patch carries its digest): \
                 bsync --patch[=DEV] < PATCH"
            )));
        }
        let undo = match remdata {
            // A new file only: never the undo of an earlier apply, the
            // target, or the patch being read.
            Some(Some(p)) if p.as_os_str() == "-" => {
                return Err(usage(
                    "--remdata=-: the undo patch must be a file, not stdout: it is synced \
                     to disk record by record before the target changes; give a new file: \
                     --remdata=FILE",
                ));
            }
            Some(Some(p)) if std::fs::symlink_metadata(&p).is_ok() => {
                return Err(usage(format!(
                    "--remdata={}: exists; an undo patch is written only to a new file, \
                     so that it never replaces the undo of an earlier apply (keep that one, \
                     and name another)",
                    p.display()
                )));
            }
            Some(Some(p)) => Some(p),
            Some(None) => {
                return Err(usage(
                    "--remdata with --patch needs a file for the undo data: --remdata=FILE",
                ));
            }
            None => None,
        };
        Mode::Apply(Apply {
            patch: None,
            target,
            diffsize: size,
            undo,
        })
    } else {
        let [command, local, remote] = <[OsString; 3]>::try_from(positional).map_err(|p| {
            usage(format!(
                "bdsync's client form takes three arguments, REMSHCMD LOCDEV REMDEV; got {}",
                p.len()
            ))
        })?;
        let command = command
            .into_string()
            .map_err(|_| usage("REMSHCMD: not valid UTF-8"))?;
        let remote = remote
            .into_string()
            .map_err(|_| usage("REMDEV: not valid UTF-8"))?;
        if let Some(Some(_)) = remdata {
            return Err(usage(
                "--remdata takes no value in the client form: the undo patch goes to stdout",
            ));
        }
        if command.trim().is_empty() {
            return Err(usage("REMSHCMD is empty"));
        }
        if let Some(name) = digest_name {
            eprintln!(
                "bsync: --digest={name}: accepted for bdsync's scripts; bsync checks its \
                 patches with its own 128-bit digest (of each range, before and after, and of the result)"
            );
        }
        Mode::RemoteShell(RemoteShell {
            command,
            local: PathBuf::from(local),
            remote,
            undo: remdata.is_some(),
            diffsize: size.unwrap_or_default(),
        })
    };
    Ok(Config {
        mode,
        transfer,
        log,
        env: Env::from_process(),
        rescue,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn recognised_by_positionals_or_patch() {
        assert!(is_bdsync_form(&args(&[
            "ssh h bsync --server",
            "/dev/a",
            "/dev/b"
        ])));
        assert!(is_bdsync_form(&args(&["--patch=/dev/b"])));
        assert!(is_bdsync_form(&args(&["--patch"])));
        assert!(!is_bdsync_form(&args(&["-f", "a.img", "-t", "b.img"])));
        assert!(!is_bdsync_form(&args(&["--server"])));
        assert!(!is_bdsync_form(&args(&["-b=4M", "-f", "x", "-r", "h:1"])));
        assert!(!is_bdsync_form(&args(&["-n", "extra"])));
    }

    #[test]
    fn client_and_patch_forms() {
        let c = parse(&args(&[
            "--verbose",
            "--diffsize=resize",
            "sh -c x",
            "/a",
            "/b",
        ]))
        .unwrap();
        let Mode::RemoteShell(r) = c.mode else {
            panic!("not a client")
        };
        assert_eq!((r.command.as_str(), r.remote.as_str()), ("sh -c x", "/b"));
        assert_eq!(r.diffsize, DiffSize::Resize);
        assert!(!r.undo);
        let c = parse(&args(&["--patch=/dev/x", "--diffsize=minsize"])).unwrap();
        assert!(matches!(
            c.mode,
            Mode::Apply(Apply {
                diffsize: Some(DiffSize::MinSize),
                ..
            })
        ));
    }

    #[test]
    fn refused_options_are_usage_errors() {
        for bad in [
            &["--digest=nosuch", "c", "a", "b"][..],
            &["--patch", "--digest=md5"],
            &["--twopass", "c", "a", "b"],
            &["--diffsize=huge", "c", "a", "b"],
            &["--patch", "extra"],
            &["--patch", "--rescue=m"],
            &["--remdata", "--rescue", "m", "c", "a", "b"],
            &["--blocksize=1000", "--rescue=m", "c", "a", "b"],
            &["c", "a", "b", "--rescue"],
        ] {
            let e = parse(&args(bad)).unwrap_err();
            assert_eq!(e.exit_status(), 2, "{bad:?}");
        }
    }

    #[test]
    fn a_flag_given_twice_with_different_values_is_refused_naming_it() {
        for (bad, flag) in [
            (&["--patch=/a", "--patch=/b"][..], "--patch"),
            (&["--patch", "--patch=/b"], "--patch"),
            (
                &["--patch", "--diffsize=resize", "--diffsize"],
                "--diffsize",
            ),
            (&["--patch", "--remdata=u1", "--remdata=u2"], "--remdata"),
            (&["--blocksize=1M", "-b=2M", "c", "a", "b"], "--blocksize"),
            (
                &["--rescue", "m1", "--rescue=m2", "c", "a", "b"],
                "--rescue",
            ),
        ] {
            let e = parse(&args(bad)).unwrap_err();
            assert_eq!(e.exit_status(), 2, "{bad:?}");
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("{flag} is given twice")),
                "{bad:?}: {msg}"
            );
        }
        // The same value twice is no contradiction.
        for fine in [
            &["--patch=/a", "--patch=/a"][..],
            &["--patch", "--diffsize", "--diffsize=strict"],
            &["-b=1M", "--blocksize=1024K", "c", "a", "b"],
        ] {
            assert!(parse(&args(fine)).is_ok(), "{fine:?}");
        }
    }

    #[test]
    fn the_client_form_takes_a_rescue_map_with_or_without_an_equals_sign() {
        for form in [
            &["--rescue", "m.map", "c", "a", "b"][..],
            &["c", "a", "b", "--rescue=m.map"],
        ] {
            assert!(is_bdsync_form(&args(form)), "{form:?}");
            let c = parse(&args(form)).unwrap();
            assert_eq!(c.rescue.as_deref(), Some(std::path::Path::new("m.map")));
            assert!(matches!(c.mode, Mode::RemoteShell(_)), "{form:?}");
        }
    }
}
