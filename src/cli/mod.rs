//! The command line: Go-style flags in, a validated [`Config`] out.
//!
//! Parsing happens in two steps, as in ripgrep's `lowargs`/`hiargs`: lexopt
//! fills [`RawArgs`] with what was typed (each value already parsed, so a bad
//! number names its flag), then [`RawArgs::validate`] (in `validate.rs`)
//! checks the combination and builds a [`Config`] in the roles' terms, whose
//! fields can no longer be wrong. Nothing here opens a file for writing: a
//! usage error leaves every disk untouched. The help text is in `help.rs`,
//! reading each flag's value from its text in `values.rs`.
//!
//! Go's `flag` package accepts every flag with one dash or two and takes a
//! value as `-b 10`, `-b=10`, `--b 10` or `--b=10`; it has no clustered short
//! flags. `go_style` rewrites the arguments so lexopt sees only long options.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::compress::Level;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::proto::MAX_LANES;

mod bdsync;
mod help;
mod paths;
mod validate;
mod values;

pub use help::{HELP, ShellKind, completions, manual, version_text};
use values::{
    Secret, parse_host_port, parse_ip, parse_key_arg, parse_level, parse_number, parse_port,
    parse_ssh, secret_path,
};
pub use values::{Target, parse_block_size, parse_rate, parse_target};

/// Default block size: 10 MiB.
pub const DEFAULT_BLOCK_SIZE: usize = 10 * 1024 * 1024;
/// Deepest prefetch queue accepted.
pub const MAX_PREFETCH: usize = 1024;

/// Every flag bsync knows, and whether it takes a value.
pub(super) const FLAGS: &[(&str, bool)] = &[
    ("a", false),
    ("f", true),
    ("r", true),
    ("b", true),
    ("s", true),
    ("p", true),
    ("i", true),
    ("n", false),
    ("e", false),
    ("K", true),
    ("token-file", true),
    ("ssh", true),
    ("L", true),
    ("t", true),
    ("l", true),
    ("w", true),
    ("prefetch", true),
    ("auto", false),
    ("q", false),
    ("v", false),
    ("d", false),
    ("P", false),
    ("server", false),
    ("write-patch", true),
    ("compare", false),
    ("over-ssh", false),
    ("bwlimit", true),
    ("json", false),
    ("rescue", true),
    ("h", false),
    ("help", false),
    ("version", false),
    ("help-man", false),
    ("completions", true),
    // bdsync's options, understood where they mean something in bsync.
    ("patch", false),
    ("verbose", false),
    ("progress", false),
    ("blocksize", true),
    ("diffsize", false),
    ("remdata", false),
    ("digest", true),
];

/// Flags that are other names of one flag: bdsync's and bsync's.
const ALIASES: &[(&str, &str)] = &[("verbose", "v"), ("blocksize", "b"), ("help", "h")];

/// What the user asked for: a run, or just help or the version.
#[derive(Debug)]
pub enum Command {
    /// Do the work.
    Run(Box<Config>),
    /// `-h`/`--help`.
    Help,
    /// `--version`.
    Version,
    /// `--help-man`: the manual page, in roff.
    Manual,
    /// `--completions SHELL`: a completion script for bash, zsh or fish.
    Completions(help::ShellKind),
}

/// The flags as typed, each value parsed but not yet checked against the others.
#[derive(Debug, Default)]
pub struct RawArgs {
    list_drives: bool,
    file: Option<PathBuf>,
    remote: Option<(String, u16)>,
    block_size: Option<usize>,
    skip: u64,
    port: Option<u16>,
    bind: Option<IpAddr>,
    no_compress: bool,
    encrypt: bool,
    key: Option<Secret>,
    token: Option<Secret>,
    ssh: Option<String>,
    level: Option<Level>,
    target: Option<Target>,
    prefix: String,
    workers: Option<usize>,
    prefetch: Option<usize>,
    auto: bool,
    quiet: bool,
    /// `-v`, or bdsync's `--verbose` (which may be repeated).
    verbose: bool,
    /// bdsync's `--progress`: the progress bsync shows anyway, unless `-q`.
    progress: bool,
    download: bool,
    no_server_progress: bool,
    bwlimit: Option<u64>,
    json: bool,
    /// `--rescue MAPFILE`.
    rescue: Option<PathBuf>,
    help: bool,
    version: bool,
    /// `--server`: a session on stdin/stdout.
    server: bool,
    /// `--write-patch FILE` (`-` is stdout).
    write_patch: Option<PathBuf>,
    /// `--compare`.
    compare: bool,
    /// `-over-ssh`: `-t` carries the data inside the ssh session.
    over_ssh: bool,
    manual: bool,
    completions: Option<help::ShellKind>,
    /// Flags given, by name, for the rules about where each applies.
    given: Vec<String>,
}

/// Parse the program's arguments (without the program name).
pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Command> {
    let args: Vec<OsString> = args.into_iter().collect();
    if bdsync::is_bdsync_form(&args) {
        return bdsync::parse(&args).map(|c| Command::Run(Box::new(c)));
    }
    let raw = RawArgs::parse(args)?;
    if raw.help {
        return Ok(Command::Help);
    }
    if raw.version {
        return Ok(Command::Version);
    }
    if raw.manual {
        return Ok(Command::Manual);
    }
    if let Some(shell) = raw.completions {
        return Ok(Command::Completions(shell));
    }
    Ok(Command::Run(Box::new(raw.validate()?)))
}

/// A patch is binary: it is neither written to a terminal nor read from
/// one (a forgotten `< PATCH` would wait for typing), as gzip and zstd
/// refuse. Checked before the run opens anything.
pub fn terminal_refusal(config: &Config) -> Option<Error> {
    use crate::config::{Apply, DryRun, Mode};
    use std::io::IsTerminal;
    let to_stdout = matches!(config.mode, Mode::RemoteShell(_))
        || matches!(config.mode.dry(), Some(DryRun::Patch(None)));
    if to_stdout && std::io::stdout().is_terminal() {
        return Some(Error::usage(
            "a patch is binary and stdout is a terminal: redirect it (> PATCH, | gzip > PATCH.gz)",
        ));
    }
    if matches!(config.mode, Mode::Apply(Apply { patch: None, .. }))
        && std::io::stdin().is_terminal()
    {
        return Some(Error::usage(
            "--patch reads the patch on stdin, which is a terminal: bsync --patch[=DEV] < PATCH",
        ));
    }
    None
}

/// Rewrite Go-style arguments into the double-dash form lexopt reads.
///
/// Only arguments in flag position are touched: the value after a flag that
/// takes one is passed through as typed, so `-s -1` reaches the `-s` parser
/// (and fails there, naming `-s`) instead of becoming a flag.
fn go_style<I: IntoIterator<Item = OsString>>(args: I) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let Some(s) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if s == "--" {
            out.push(arg);
            out.extend(args);
            break;
        }
        let body = s.strip_prefix("--").or_else(|| s.strip_prefix('-'));
        let Some(body) = body.filter(|b| !b.is_empty()) else {
            out.push(arg);
            continue;
        };
        let (name, has_value) = match body.split_once('=') {
            Some((name, _)) => (name, true),
            None => (body, false),
        };
        out.push(OsString::from(format!("--{body}")));
        let takes_value = FLAGS.iter().any(|&(n, v)| n == name && v);
        if takes_value
            && !has_value
            && let Some(value) = args.next()
        {
            out.push(value);
        }
    }
    out
}

impl RawArgs {
    /// Read the arguments into a [`RawArgs`], parsing each value.
    pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<RawArgs> {
        use lexopt::Arg::{Long, Short, Value};

        let mut raw = RawArgs::default();
        let args = go_style(args);
        check_repeats(&args)?;
        let mut parser = lexopt::Parser::from_args(args);
        while let Some(arg) = parser.next().map_err(lexopt_error)? {
            let flag = match arg {
                Long(name) => name.to_string(),
                Short(c) => c.to_string(),
                Value(v) => {
                    return Err(Error::usage(format!(
                        "unexpected argument {:?}: bsync takes only flags (see bsync -h)",
                        v.to_string_lossy()
                    )));
                }
            };
            let p = &mut parser;
            raw.given.push(flag.clone());
            match flag.as_str() {
                "a" => raw.list_drives = bool_flag(p, &flag)?,
                "f" => raw.file = Some(path_value(p, &flag)?),
                "r" => raw.remote = Some(parse_host_port(&string_value(p, &flag)?, &flag)?),
                "b" => raw.block_size = Some(parse_block_size(&string_value(p, &flag)?)?),
                "s" => raw.skip = parse_number(&string_value(p, &flag)?, &flag)?,
                "p" => raw.port = Some(parse_port(&string_value(p, &flag)?, &flag, true)?),
                "i" => raw.bind = Some(parse_ip(&string_value(p, &flag)?)?),
                "n" => raw.no_compress = bool_flag(p, &flag)?,
                "e" => raw.encrypt = bool_flag(p, &flag)?,
                "K" => raw.key = Some(parse_key_arg(&string_value(p, &flag)?)?),
                "token-file" => raw.token = Some(secret_path(path_value(p, &flag)?)),
                "ssh" => raw.ssh = Some(parse_ssh(&string_value(p, &flag)?)?),
                "L" => raw.level = Some(parse_level(&string_value(p, &flag)?)?),
                "t" => raw.target = Some(parse_target(&path_value(p, &flag)?)?),
                "l" => raw.prefix = string_value(p, &flag)?,
                "w" => raw.workers = Some(parse_count(p, &flag, usize::from(MAX_LANES), 1)?),
                "prefetch" => raw.prefetch = Some(parse_count(p, &flag, MAX_PREFETCH, 0)?),
                "auto" => raw.auto = bool_flag(p, &flag)?,
                "q" => raw.quiet = bool_flag(p, &flag)?,
                "v" | "verbose" => raw.verbose = bool_flag(p, &flag)?,
                "progress" => raw.progress = bool_flag(p, &flag)?,
                "blocksize" => raw.block_size = Some(parse_block_size(&string_value(p, &flag)?)?),
                "d" => raw.download = bool_flag(p, &flag)?,
                "P" => raw.no_server_progress = bool_flag(p, &flag)?,
                "server" => raw.server = bool_flag(p, &flag)?,
                "write-patch" => raw.write_patch = Some(path_value(p, &flag)?),
                "compare" => raw.compare = bool_flag(p, &flag)?,
                "over-ssh" => raw.over_ssh = bool_flag(p, &flag)?,
                "h" | "help" => raw.help = bool_flag(p, &flag)?,
                "version" => raw.version = bool_flag(p, &flag)?,
                "bwlimit" => raw.bwlimit = Some(parse_rate(&string_value(p, &flag)?)?),
                "json" => raw.json = bool_flag(p, &flag)?,
                "rescue" => raw.rescue = Some(path_value(p, &flag)?),
                "help-man" => raw.manual = bool_flag(p, &flag)?,
                "completions" => {
                    raw.completions = Some(help::ShellKind::parse(&string_value(p, &flag)?)?);
                }
                _ => return Err(misplaced_flag(&flag)),
            }
        }
        Ok(raw)
    }
}

/// The error for a flag this form does not take: bdsync's options that
/// belong to its forms say which, rsync's `--dry-run` points to bsync's,
/// anything else is unknown.
fn misplaced_flag(flag: &str) -> Error {
    let forms = "bdsync's client (bsync [--diffsize[=MODE]] [--remdata] REMSHCMD LOCDEV REMDEV \
                 > PATCH) or --patch (bsync --patch[=DEV] [--diffsize[=MODE]] [--remdata=UNDO] < PATCH)";
    match flag {
        "diffsize" | "remdata" | "digest" | "patch" => Error::usage(format!(
            "--{flag} belongs to {forms}; with -f, -t or -r it has no meaning \
             (--write-patch FILE writes a patch, --patch applies it)"
        )),
        "dry-run" | "dryrun" => Error::usage(format!(
            "unknown flag -{flag}: bsync's dry runs are --compare (read both ends, say what \
             differs, change nothing) and --write-patch FILE (the same, leaving a patch)"
        )),
        _ => Error::usage(format!("unknown flag -{flag} (see bsync -h)")),
    }
}

/// A flag given twice with different values is refused, naming both: which
/// one wins would be a guess. `-v` counts, so it may repeat.
fn check_repeats(args: &[OsString]) -> Result<()> {
    // (name, value as compared, value as typed)
    let mut seen: Vec<(&str, String, String)> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let Some(body) = args[i].to_str().and_then(|s| s.strip_prefix("--")) else {
            i += 1;
            continue;
        };
        if body.is_empty() {
            break;
        }
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        let name = ALIASES
            .iter()
            .find(|(alias, _)| *alias == name)
            .map_or(name, |(_, canonical)| canonical);
        let takes_value = FLAGS.iter().any(|&(n, v)| n == name && v);
        let value = match value {
            Some(v) => v,
            None if takes_value => {
                i += 1;
                args.get(i)
                    .map(|v| v.to_string_lossy().into_owned())
                    .unwrap_or_default()
            }
            None => "true".to_string(),
        };
        i += 1;
        if matches!(name, "v" | "h") {
            continue;
        }
        let (value, typed) = if takes_value {
            // Sizes compare by what they mean: -b 1M and -b 1048576 agree.
            let parsed = match name {
                "b" => parse_block_size(&value).ok().map(|n| n as u64),
                "bwlimit" => parse_rate(&value).ok(),
                _ => None,
            };
            (
                parsed.map_or_else(|| value.clone(), |n| n.to_string()),
                value,
            )
        } else {
            let v = match value.as_str() {
                "true" | "1" | "t" | "T" | "TRUE" | "True" => "true".to_string(),
                "false" | "0" | "f" | "F" | "FALSE" | "False" => "false".to_string(),
                _ => value,
            };
            (v.clone(), v)
        };
        match seen.iter().find(|(n, _, _)| *n == name) {
            Some((_, first, shown)) if *first != value => {
                return Err(Error::usage(if name == "K" {
                    "-K is given twice with different keys: give it once".to_string()
                } else {
                    format!("-{name} is given twice, as {shown:?} and {typed:?}: give it once")
                }));
            }
            Some(_) => {}
            None => seen.push((name, value, typed)),
        }
    }
    Ok(())
}

fn lexopt_error(e: lexopt::Error) -> Error {
    match e {
        lexopt::Error::UnexpectedValue { option, .. } => Error::usage(format!(
            "-{}: takes no value",
            option.trim_start_matches('-')
        )),
        lexopt::Error::UnexpectedOption(o) => Error::usage(format!(
            "unknown flag -{} (see bsync -h)",
            o.trim_start_matches('-')
        )),
        other => Error::usage(other.to_string()),
    }
}

/// `-t -f a.img`: the value taken for `-t` is the next flag, given where
/// `-t`'s value was forgotten.
fn forgotten_value(flag: &str, v: &std::ffi::OsStr) -> Option<Error> {
    let name = v.to_str()?.strip_prefix('-')?;
    let name = name.strip_prefix('-').unwrap_or(name);
    let name = name.split('=').next().unwrap_or(name);
    FLAGS.iter().any(|&(f, _)| f == name).then(|| {
        Error::usage(format!(
            "-{flag}: missing value before {} (a path that begins with - is written ./{})",
            v.to_string_lossy(),
            v.to_string_lossy()
        ))
    })
}

fn path_value(p: &mut lexopt::Parser, flag: &str) -> Result<PathBuf> {
    let v = p
        .value()
        .map_err(|_| Error::usage(format!("-{flag}: missing value")))?;
    if v.is_empty() {
        return Err(Error::usage(format!("-{flag}: empty path")));
    }
    match forgotten_value(flag, &v) {
        Some(e) => Err(e),
        None => Ok(PathBuf::from(v)),
    }
}

fn string_value(p: &mut lexopt::Parser, flag: &str) -> Result<String> {
    let v = p
        .value()
        .map_err(|_| Error::usage(format!("-{flag}: missing value")))?;
    if let Some(e) = forgotten_value(flag, &v) {
        return Err(e);
    }
    v.into_string()
        .map_err(|v| Error::usage(format!("-{flag}: {v:?} is not valid UTF-8")))
}

/// A boolean flag; Go also accepts `-q=true` and `-q=false`.
fn bool_flag(p: &mut lexopt::Parser, flag: &str) -> Result<bool> {
    let Some(v) = p.optional_value() else {
        return Ok(true);
    };
    match v.to_str() {
        Some("true" | "1" | "t" | "T" | "TRUE" | "True") => Ok(true),
        Some("false" | "0" | "f" | "F" | "FALSE" | "False") => Ok(false),
        _ => Err(Error::usage(format!(
            "-{flag}: expected true or false, got {:?}",
            v.to_string_lossy()
        ))),
    }
}

fn parse_count(p: &mut lexopt::Parser, flag: &str, max: usize, min: usize) -> Result<usize> {
    let s = string_value(p, flag)?;
    let n = parse_number(&s, flag)?;
    match usize::try_from(n) {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(Error::usage(format!(
            "-{flag}: {s} is out of range ({min} to {max})"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aead::Key;
    use crate::auth::Secret;
    use crate::config::{Connect, Mode, RemoteTarget, Role, Serve, Ssh};
    use crate::proto::PROTOCOL_VERSION;

    fn run(args: &[&str]) -> Result<Command> {
        parse(args.iter().map(OsString::from))
    }

    /// The plan for `args`, with a writing end given when they give none.
    fn config(args: &[&str]) -> Config {
        let mut args = args.to_vec();
        if !args.contains(&"-f") {
            args.extend(["-f", "/nonexistent/bsync-test.img"]);
        }
        // A server says so (`bsync -f X` alone is refused).
        if !args
            .iter()
            .any(|a| ["-r", "-t", "-d", "-p", "-i", "-a"].contains(a))
        {
            args.extend(["-p", "8080"]);
        }
        let args = &args[..];
        match run(args) {
            Ok(Command::Run(c)) => *c,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn usage(args: &[&str]) -> String {
        match run(args) {
            Err(Error::Usage(msg)) => msg,
            other => panic!("{args:?} should be a usage error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_make_a_server() {
        let Ok(Command::Run(c)) = run(&["-d"]) else {
            panic!("-d alone should make a server")
        };
        assert_eq!(
            c.mode,
            Mode::Serve(Serve {
                bind: IpAddr::from([0, 0, 0, 0]),
                port: 8080,
                role: Role::Source,
                path: PathBuf::from("/dev/zero"),
                secret: None,
            })
        );
        let t = c.transfer;
        assert_eq!(t.block_size, 10_485_760);
        assert_eq!((t.workers, t.prefetch), (1, 4));
        assert_eq!(t.compression, Some(Level::Default));
    }

    #[test]
    fn roles_follow_the_direction() {
        let role = |args: &[&str]| match config(args).mode {
            Mode::Serve(Serve { role, .. })
            | Mode::Connect(Connect { role, .. })
            | Mode::Ssh(Ssh { role, .. }) => role,
            other => panic!("{args:?}: {other:?}"),
        };
        assert_eq!(role(&["-d"]), Role::Source);
        assert_eq!(role(&["-r", "h:1"]), Role::Source);
        assert_eq!(role(&["-r", "h:1", "-d"]), Role::Destination);
        assert_eq!(role(&["-t", "u@h:/x"]), Role::Source);
        assert_eq!(role(&["-t", "u@h:/x", "-d"]), Role::Destination);
        let local = |args: &[&str]| match config(args).mode {
            Mode::Local {
                source,
                destination,
                ..
            } => (source, destination),
            other => panic!("{args:?}: {other:?}"),
        };
        let (a, b) = (PathBuf::from("a"), PathBuf::from("b"));
        assert_eq!(local(&["-f", "a", "-t", "b"]), (a.clone(), b.clone()));
        assert_eq!(local(&["-f", "a", "-t", "b", "-d"]), (b, a));
    }

    #[test]
    fn one_dash_two_dashes_and_equals_are_the_same() {
        for args in [
            &["-prefetch", "8"][..],
            &["--prefetch", "8"],
            &["-prefetch=8"],
            &["--prefetch=8"],
        ] {
            assert_eq!(config(args).transfer.prefetch, 8, "{args:?}");
        }
        assert!(config(&["-q=true"]).log.quiet);
        assert!(!config(&["--q=false"]).log.quiet);
        assert!(config(&["-v"]).log.verbose);
        assert!(config(&["--v=true"]).log.verbose);
        assert!(!config(&[]).log.verbose);
    }

    #[test]
    fn prefetch_zero_means_four_per_worker() {
        assert_eq!(config(&["-w", "3", "-prefetch", "0"]).transfer.prefetch, 12);
    }

    #[test]
    fn block_size_suffixes_are_binary() {
        assert_eq!(parse_block_size("4096").ok(), Some(4096));
        assert_eq!(parse_block_size("4K").ok(), Some(4096));
        assert_eq!(parse_block_size("1m").ok(), Some(1 << 20));
        assert_eq!(parse_block_size("2MiB").ok(), Some(2 << 20));
        assert_eq!(parse_block_size("1G").ok(), Some(1 << 30));
        assert!(parse_block_size("2G").is_err());
        assert!(parse_block_size("0").is_err());
        assert!(parse_block_size("0K").is_err());
        assert!(parse_block_size("-1").is_err());
        assert!(parse_block_size("99999999999999999999G").is_err());
        assert!(parse_block_size("").is_err());
        assert!(parse_block_size("M").is_err());
    }

    #[test]
    fn remote_addresses() {
        let host_port = |args: &[&str]| match config(args).mode {
            Mode::Connect(Connect { host, port, .. }) => (host, port),
            other => panic!("{args:?}: {other:?}"),
        };
        assert_eq!(host_port(&["-r", "[::1]:9000"]), ("::1".into(), 9000));
        assert_eq!(
            host_port(&["-r", "example.org:22"]),
            ("example.org".into(), 22)
        );
        for bad in [
            "nohost", ":80", "h:0", "h:70000", "::1:80", "[::1]80", "h:x",
        ] {
            assert!(usage(&["-r", bad]).starts_with("-r:"), "{bad}");
        }
    }

    #[test]
    fn targets() {
        let local = |s: &str| Target::Local(PathBuf::from(s));
        for s in ["/tmp/a.img", "b.img", "./a:b", "/x:y"] {
            assert_eq!(parse_target(s.as_ref()).ok(), Some(local(s)), "{s}");
        }
        let remote = |user: Option<&str>, host: &str, port, path: &str| {
            Some(Target::Remote(RemoteTarget {
                user: user.map(String::from),
                host: host.into(),
                port,
                path: path.into(),
            }))
        };
        assert_eq!(
            parse_target("root@h:/dev/vda".as_ref()).ok(),
            remote(Some("root"), "h", None, "/dev/vda")
        );
        assert_eq!(
            parse_target("root@h:2222:/dev/vda".as_ref()).ok(),
            remote(Some("root"), "h", Some(2222), "/dev/vda")
        );
        assert_eq!(
            parse_target("h:/srv/x y.img".as_ref()).ok(),
            remote(None, "h", None, "/srv/x y.img")
        );
        assert_eq!(
            parse_target("u@[2001:db8::1]:/p".as_ref()).ok(),
            remote(Some("u"), "2001:db8::1", None, "/p")
        );
        assert_eq!(
            parse_target("u@[::1]:22:/p".as_ref()).ok(),
            remote(Some("u"), "::1", Some(22), "/p")
        );
        for bad in ["u@h:", "@h:/p", "u@:/p", "u@[::1/p", "u@h:99999:/p"] {
            assert!(parse_target(bad.as_ref()).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_values_name_their_flag() {
        let cases: &[&[&str]] = &[
            &["-b", "0"],
            &["-b", "ten"],
            &["-b"],
            &["-s", "-1"],
            &["-s", "x"],
            &["-p", "65536"],
            &["-p", "-1"],
            &["-i", "999.1.1.1"],
            &["-w", "0"],
            &["-w", "65"],
            &["-w", "x"],
            &["-prefetch", "-3"],
            &["-prefetch", "5000"],
            &["-K", "abcd"],
            &["-K", &"g".repeat(64)],
            &["-L", "ultra"],
            &["-f"],
            &["-f", ""],
            &["-q=maybe"],
            &["-t", "u@h:"],
        ];
        for args in cases {
            let msg = usage(args);
            let flag = args[0].split('=').next().unwrap_or_default();
            assert!(msg.starts_with(&format!("{flag}:")), "{args:?}: {msg}");
        }
    }

    #[test]
    fn contradictions_are_refused() {
        let key = "a".repeat(64);
        let cases: &[(&[&str], &str)] = &[
            (&["-e"], "-e needs"),
            (&["-e", "-r", "h:1"], "-e needs"),
            (&["-e", "-t", "/tmp/x"], "-e needs"),
            (&["-r", "h:1", "-t", "/x"], "-r and -t"),
            (&["-auto"], "-auto"),
            (&["-auto", "-t", "/x"], "-auto"),
            (&["-auto", "-r", "h:1", "-d"], "-auto"),
            (&["-n", "-L", "fast"], "-L and -n"),
            (&["-s", "3"], "-s belongs"),
            (&["-K", &key, "-t", "/x"], "-K and -token-file"),
            (&["-token-file", "f", "-t", "u@h:/x"], "-K and -token-file"),
            (&["-ssh", "ssh -4", "-r", "h:1"], "-ssh applies"),
            (&["-ssh", "ssh", "-t", "/x"], "-ssh applies"),
            (
                &["-K", "-", "-token-file", "-", "-r", "h:1"],
                "-K and -token-file cannot",
            ),
            (
                &["-K", &key, "-token-file", "f", "-r", "h:1"],
                "-K and -token-file cannot",
            ),
            (&["-p", "2222", "-t", "u@h:/x"], "-p is the port"),
            (&["-p", "1", "-r", "h:1"], "-p applies only"),
            (&["-i", "::", "-r", "h:1"], "-i applies only"),
            (&["-P", "-r", "h:1"], "-P applies only"),
            (&["-P", "-f", "a", "-t", "b"], "-P applies only"),
            (&["-b", "1M", "-d", "-r", "h:1"], "-b has no effect"),
            (&["-n", "-f", "x"], "-n has no effect on a server"),
            (
                &["-L", "best", "-d", "-f", "x"],
                "-L has no effect on a server",
            ),
            (&["-bwlimit", "1M", "-f", "a", "-t", "b"], "-bwlimit limits"),
            (&["-bwlimit", "1M", "-f", "a"], "-bwlimit limits"),
            (&["-bwlimit", "1M", "-d", "-r", "h:1"], "-bwlimit limits"),
            (&["-rescue", "m", "-f", "a"], "-rescue applies to the end"),
            (
                &["-rescue", "m", "-d", "-f", "a", "-r", "h:1"],
                "-rescue applies",
            ),
            (
                &["-rescue", "m", "-f", "a", "-t", "u@h:/b", "-d"],
                "-rescue applies",
            ),
            (&["-rescue", "m", "--server", "-f", "a"], "-rescue applies"),
            (
                &["-rescue", "m", "-compare", "-f", "a", "-t", "b"],
                "-rescue copies",
            ),
            (
                &["-rescue", "m", "-b", "1000", "-f", "a", "-t", "b"],
                "-rescue needs",
            ),
            (&["-t", "-"], "-t: - is not"),
            (
                &["-t", "root@newhost"],
                "-t: \"root@newhost\" looks like user@host",
            ),
            (
                &["-f", "/dev/zero", "-t", "/dev/null"],
                "-t: /dev/null is a character",
            ),
            (&["-r", "h:1", "-d"], "-f is missing"),
            (
                &["-f", "/dev/null", "-r", "h:1", "-d"],
                "-f: /dev/null is a character",
            ),
            (
                &[
                    "-b",
                    "1G",
                    "-w",
                    "64",
                    "-prefetch",
                    "1024",
                    "-f",
                    "x",
                    "-p",
                    "0",
                ],
                "-b/-w/-prefetch",
            ),
            (&["-ssh", " ", "-t", "u@h:/x"], "-ssh: empty"),
        ];
        for (args, want) in cases {
            let msg = usage(args);
            assert!(msg.starts_with(want), "{args:?}: {msg}");
        }
        let encrypts = |args: &[&str]| match config(args).mode {
            Mode::Connect(Connect { secret, .. }) | Mode::Serve(Serve { secret, .. }) => {
                secret.is_some_and(|s| s.encrypts())
            }
            Mode::Ssh(Ssh { encrypt, .. }) => encrypt,
            other => panic!("{args:?}: {other:?}"),
        };
        assert!(encrypts(&["-e", "-K", &key, "-r", "h:1"]));
        assert!(encrypts(&["-K", &key, "-r", "h:1"]), "-K implies -e");
        assert!(encrypts(&["-e", "-t", "u@h:/x"]));
        assert!(!encrypts(&["-t", "u@h:/x"]));
    }

    /// Issue 19, items 1, 5 and 12.
    #[test]
    fn bdsync_options_conflicts_and_a_bare_file() {
        assert!(config(&["--verbose"]).log.verbose);
        assert_eq!(config(&["--blocksize=4M"]).transfer.block_size, 4 << 20);
        assert_eq!(
            config(&["-b", "4M", "--blocksize", "4M"])
                .transfer
                .block_size,
            4 << 20
        );
        assert!(!config(&["--progress"]).log.quiet);
        for (args, want) in [
            (
                &["--diffsize=resize", "-f", "a", "-t", "b"][..],
                "--diffsize belongs to",
            ),
            (&["--remdata", "-f", "a", "-t", "b"], "--remdata belongs to"),
            (
                &["--dry-run", "-f", "a", "-t", "b"],
                "unknown flag -dry-run",
            ),
            (&["-q", "-v", "-p", "0"], "-q and -v"),
            (&["-q", "--verbose", "-p", "0"], "-q and -v"),
            (&["-q", "--progress", "-p", "0"], "-q and --progress"),
            (
                &["-t", "a", "-t", "b"],
                "-t is given twice, as \"a\" and \"b\"",
            ),
            (
                &["-b", "1M", "--blocksize=2M", "-p", "0"],
                "-b is given twice",
            ),
            (&["-q", "-q=false", "-p", "0"], "-q is given twice"),
            (
                &["-t", "-f", "a.img"],
                "-t: missing value before -f (a path that begins with - is written ./-f)",
            ),
            (&["-f", "--t=b.img"], "-f: missing value before --t=b.img"),
            (&["-r", "-w", "2"], "-r: missing value before -w"),
            (
                &["-f", "a.img", "-t", "root@host:2222"],
                "-t: \"root@host:2222\" names the file 2222 in the remote's home directory; \
                 for a port write host:2222:/path, for a file of that name host:./2222",
            ),
            (
                &["-f", "a.img", "-t", "new.img", "-rescue", "new.img"],
                "-rescue new.img: is the destination (-t)",
            ),
            (
                &["-f", "a.img", "-t", "b.img", "-rescue", "./a.img"],
                "-rescue ./a.img: is the source (-f)",
            ),
            (&["-f", "x"], "say where the data goes"),
            (&[], "say where the data goes"),
            (&["-v", "-f", "x", "-w", "2"], "say where the data goes"),
        ] {
            let msg = usage(args);
            assert!(msg.starts_with(want), "{args:?}: {msg}");
        }
        assert!(usage(&["--dry-run"]).contains("--compare"));
        let key = "a".repeat(64);
        let other = "b".repeat(64);
        let msg = usage(&["-K", &key, "-K", &other, "-r", "h:1"]);
        assert!(
            msg.starts_with("-K is given twice") && !msg.contains("aaaa"),
            "{msg}"
        );
        // The same value twice, and -v repeated, are fine.
        assert!(matches!(
            config(&["-t", "b", "-t", "b"]).mode,
            Mode::Local { .. }
        ));
        assert!(config(&["-v", "--verbose", "-v"]).log.verbose);
    }

    /// Issue 19, item 12: the original tool's README examples all say how
    /// they run, and still parse (its `-b` examples aside, whose buffers
    /// depend on this machine's memory).
    #[test]
    fn the_original_readme_examples_still_parse() {
        for line in [
            "-f /dev/shm/test-dst -p 8080",
            "-f /dev/shm/test-dst -p 8080 -i 192.168.1.50",
            "-f /dev/shm/test-src -p 8080 -d",
            "-f /dev/shm/test-dst -r 192.168.1.100:8080 -d",
            "-f /dev/shm/test-dst -t user@remote-server:/dev/shm/test-src -d",
            "-e -f /dev/shm/test-src -t user@remote-server:/dev/shm/test-dst",
            "-L fast -f /dev/shm/test-src -t user@remote-server:/dev/shm/test-dst",
            "-f /dev/sda -r remote-server:8080 -s 10",
            "-f /dev/sda -r remote-server:8080 -q",
            "-n -f /tmp/src.img -t /tmp/dst.img",
            "-e -L fast -w 4 -f /dev/sda -t user@remote:/backup/disk.img",
            "-f /tmp/sparse.img -t user@remote:/backup/sparse.img",
        ] {
            let args: Vec<&str> = line.split(' ').collect();
            assert!(
                matches!(run(&args), Ok(Command::Run(_))),
                "{line}: {:?}",
                run(&args)
            );
        }
    }

    /// Issue 19, item 6: a bare host name as `-t` is not a new local file.
    #[test]
    fn a_known_host_is_not_a_file_name() {
        use super::paths::known_host;
        let ssh = "Host *\n  ServerAliveInterval 30\nHost barhost other\n  HostName 10.0.0.9\nhost=lower\n";
        let hosts = "127.0.0.1 localhost\n10.0.0.7 foo.lan foo # comment nothost\n";
        assert_eq!(known_host("barhost", ssh, hosts), Some("~/.ssh/config"));
        assert_eq!(known_host("other", ssh, hosts), Some("~/.ssh/config"));
        assert_eq!(known_host("lower", ssh, hosts), Some("~/.ssh/config"));
        assert_eq!(known_host("foo", ssh, hosts), Some("/etc/hosts"));
        assert_eq!(known_host("nothost", ssh, hosts), None);
        assert_eq!(known_host("10.0.0.7", ssh, hosts), None);
        assert_eq!(known_host("disk.img", ssh, hosts), None);
    }

    #[test]
    fn unknown_flags_and_stray_arguments() {
        assert!(usage(&["-x"]).starts_with("unknown flag -x"));
        assert!(usage(&["--bogus=1"]).starts_with("unknown flag -bogus"));
        assert!(usage(&["-n=1", "extra"]).starts_with("unexpected argument"));
        assert!(usage(&["-nq"]).starts_with("unknown flag -nq"));
    }

    #[test]
    fn token_comes_from_a_file_and_is_checked() {
        let dir = std::env::temp_dir().join(format!("bsync-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        let bad = dir.join("bad");
        std::fs::write(&good, format!("{}\n", "0f".repeat(32))).unwrap();
        std::fs::write(&bad, "secret-but-short\n").unwrap();
        let c = config(&["-token-file", good.to_str().unwrap()]);
        let Mode::Serve(Serve { secret, .. }) = c.mode else {
            panic!("{c:?}")
        };
        assert_eq!(
            secret,
            Some(Secret::new(Key::from_bytes([0x0f; 32]), false))
        );
        let msg = usage(&["-token-file", bad.to_str().unwrap(), "-p", "0"]);
        assert!(msg.contains("64 hexadecimal digits"), "{msg}");
        assert!(!msg.contains("secret-but-short"), "{msg}");
        let missing = dir.join("missing");
        let err = run(&["-token-file", missing.to_str().unwrap(), "-p", "0"]).unwrap_err();
        assert_eq!(err.exit_status(), 2, "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn key_is_never_echoed() {
        let secret = format!("{}zz", "0123456789abcdef".repeat(3));
        let bad = format!("{secret}0123456789abcd");
        assert!(!usage(&["-K", &bad]).contains("0123456789"));
    }

    #[test]
    fn help_and_version() {
        assert!(matches!(run(&["-h"]), Ok(Command::Help)));
        assert!(matches!(run(&["--help"]), Ok(Command::Help)));
        assert!(matches!(run(&["-version"]), Ok(Command::Version)));
        assert!(version_text().contains(PROTOCOL_VERSION));
        for (flag, _) in FLAGS {
            if !matches!(*flag, "h" | "help" | "version") {
                assert!(
                    HELP.contains(&format!("-{flag} ")) || HELP.contains(&format!("-{flag}[")),
                    "help lacks -{flag}"
                );
            }
        }
    }
}
