//! The command line: Go-style flags in, a validated [`Config`] out.
//!
//! Parsing happens in two steps, as in ripgrep's `lowargs`/`hiargs`: lexopt
//! fills [`RawArgs`] with what was typed (each value already parsed, so a bad
//! number names its flag), then [`RawArgs::validate`] checks the combination
//! and builds a [`Config`] whose fields can no longer be wrong. Nothing here
//! opens a file: a usage error leaves every disk untouched.
//!
//! Go's `flag` package accepts every flag with one dash or two and takes a
//! value as `-b 10`, `-b=10`, `--b 10` or `--b=10`; it has no clustered short
//! flags. `go_style` rewrites the arguments so lexopt sees only long options.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::aead::Key;
use crate::error::{Error, Result};

/// The protocol version spoken on the wire.
pub const PROTOCOL_VERSION: &str = "ver0.02";
/// Default block size: 10 MiB.
pub const DEFAULT_BLOCK_SIZE: usize = 10 * 1024 * 1024;
/// Largest block size accepted: every block is held in memory several times.
pub const MAX_BLOCK_SIZE: usize = 1024 * 1024 * 1024;
/// Most workers accepted.
pub const MAX_WORKERS: usize = 64;
/// Deepest prefetch queue accepted.
pub const MAX_PREFETCH: usize = 1024;

/// Every flag bsync knows, and whether it takes a value.
const FLAGS: &[(&str, bool)] = &[
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
    ("h", false),
    ("help", false),
    ("version", false),
];

/// zstd compression level names of `-L`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Fastest, larger output.
    Fast,
    /// Balanced.
    Default,
    /// Smaller output, slower.
    Better,
    /// Smallest output, slowest.
    Best,
}

impl Level {
    fn parse(s: &str) -> Option<Level> {
        match s {
            "fast" => Some(Level::Fast),
            "default" => Some(Level::Default),
            "better" => Some(Level::Better),
            "best" => Some(Level::Best),
            _ => None,
        }
    }
}

/// Which way the data flows between client and server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The client (or `-f` locally) is the source.
    Upload,
    /// The server (or the `-t` path locally) is the source.
    Download,
}

/// Where `-t` points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A path on this machine.
    Local(PathBuf),
    /// A path on another machine, reached over SSH.
    Remote(RemoteTarget),
}

/// `[user@]host[:port]:/path` of `-t`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteTarget {
    /// Login name; `None` leaves it to the ssh configuration.
    pub user: Option<String>,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// SSH port; `None` leaves it to the ssh configuration.
    pub port: Option<u16>,
    /// Path on the remote machine.
    pub path: String,
}

/// What this run does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `-a`: list block devices.
    ListDrives,
    /// No `-r`/`-t`: serve one session.
    Server {
        /// `-i`.
        bind: IpAddr,
        /// `-p`; 0 picks a free port.
        port: u16,
    },
    /// `-r HOST:PORT`.
    Client {
        /// Host name or address (IPv6 without brackets).
        host: String,
        /// Server port.
        port: u16,
    },
    /// `-t`.
    Target(Target),
}

/// Where log and progress lines go and how they look.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// `-l`: put in front of every line.
    pub prefix: String,
    /// `-q`: errors only.
    pub quiet: bool,
    /// `-v`: also say which kernel hints were applied or skipped, and why
    /// (`BSYNC_VERBOSE=1` does the same; see [`crate::progress::Log`]).
    pub verbose: bool,
    /// `-P`: no progress on a server.
    pub no_server_progress: bool,
}

/// A validated run configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// What to do.
    pub mode: Mode,
    /// `-f`.
    pub path: PathBuf,
    /// `-d` or not.
    pub direction: Direction,
    /// `-b`, in bytes, at least 1.
    pub block_size: usize,
    /// Whether `-b` was given (in download mode the source's wins).
    pub block_size_given: bool,
    /// `-s`: blocks to skip.
    pub skip: u64,
    /// `None` with `-n`.
    pub compression: Option<Level>,
    /// Whether to encrypt (`-e`, or implied by `-K`).
    pub encrypt: bool,
    /// `-K`: the shared key (read from stdin with `-K -`).
    pub key: Option<Key>,
    /// `-token-file`: a shared session token that a client must prove it
    /// knows (without encryption). A key, when there is one, serves as well.
    pub token: Option<Key>,
    /// `-ssh`: the remote shell command for `-t user@host:` (default `ssh`).
    pub ssh: Option<String>,
    /// `-w`, at least 1.
    pub workers: usize,
    /// Prefetch queue depth, resolved (never 0).
    pub prefetch: usize,
    /// `-auto`.
    pub auto: bool,
    /// `-l`, `-q`, `-v`, `-P`.
    pub log: LogOptions,
}

/// What the user asked for: a run, or just help or the version.
#[derive(Debug)]
pub enum Command {
    /// Do the work.
    Run(Box<Config>),
    /// `-h`/`--help`.
    Help,
    /// `--version`.
    Version,
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
    verbose: bool,
    download: bool,
    no_server_progress: bool,
    help: bool,
    version: bool,
}

/// Parse the program's arguments (without the program name).
pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Command> {
    let raw = RawArgs::parse(args)?;
    if raw.help {
        return Ok(Command::Help);
    }
    if raw.version {
        return Ok(Command::Version);
    }
    Ok(Command::Run(Box::new(raw.validate()?)))
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
        if takes_value && !has_value {
            if let Some(value) = args.next() {
                out.push(value);
            }
        }
    }
    out
}

impl RawArgs {
    /// Read the arguments into a [`RawArgs`], parsing each value.
    pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<RawArgs> {
        use lexopt::Arg::{Long, Short, Value};

        let mut raw = RawArgs::default();
        let mut parser = lexopt::Parser::from_args(go_style(args));
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
                "w" => raw.workers = Some(parse_count(p, &flag, MAX_WORKERS, 1)?),
                "prefetch" => raw.prefetch = Some(parse_count(p, &flag, MAX_PREFETCH, 0)?),
                "auto" => raw.auto = bool_flag(p, &flag)?,
                "q" => raw.quiet = bool_flag(p, &flag)?,
                "v" => raw.verbose = bool_flag(p, &flag)?,
                "d" => raw.download = bool_flag(p, &flag)?,
                "P" => raw.no_server_progress = bool_flag(p, &flag)?,
                "h" | "help" => raw.help = bool_flag(p, &flag)?,
                "version" => raw.version = bool_flag(p, &flag)?,
                _ => {
                    return Err(Error::usage(format!("unknown flag -{flag} (see bsync -h)")));
                }
            }
        }
        Ok(raw)
    }

    /// Check the flags against each other and resolve defaults.
    pub fn validate(self) -> Result<Config> {
        let workers = self.workers.unwrap_or(1);
        let prefetch = match self.prefetch {
            None | Some(0) => workers * 4,
            Some(n) => n,
        };
        if self.remote.is_some() && self.target.is_some() {
            return Err(Error::usage(
                "-r and -t cannot be combined: -r connects to a running server, -t starts one",
            ));
        }
        if self.no_compress && self.level.is_some() {
            return Err(Error::usage(
                "-L and -n cannot be combined: -n turns compression off",
            ));
        }
        if self.auto && self.remote.is_none() {
            return Err(Error::usage("-auto works only for a client (-r HOST:PORT)"));
        }
        if self.auto && self.download {
            return Err(Error::usage(
                "-auto tunes uploads only; it cannot be combined with -d",
            ));
        }
        let encrypt = self.encrypt || self.key.is_some();
        let ssh_target = self.target.as_ref().is_some_and(is_remote);
        if self.encrypt && self.key.is_none() && !ssh_target {
            return Err(Error::usage(
                "-e needs -t user@host:/path (bsync makes and hands over the key) \
                 or -K KEY (the same 64-hex-digit key on both ends)",
            ));
        }
        if self.target.is_some() && (self.key.is_some() || self.token.is_some()) {
            return Err(Error::usage(
                "-K and -token-file are for -r/-p network mode; with -t bsync makes \
                 its own token (and key, with -e)",
            ));
        }
        if self.ssh.is_some() && !ssh_target {
            return Err(Error::usage("-ssh applies only to -t user@host:/path"));
        }
        if self.key == Some(Secret::Stdin) && self.token == Some(Secret::Stdin) {
            return Err(Error::usage(
                "-K - and -token-file - cannot both read stdin; a key also serves as the token",
            ));
        }
        let mode = if self.list_drives {
            Mode::ListDrives
        } else if let Some((host, port)) = self.remote {
            Mode::Client { host, port }
        } else if let Some(target) = self.target {
            Mode::Target(target)
        } else {
            Mode::Server {
                bind: self.bind.unwrap_or(IpAddr::from([0, 0, 0, 0])),
                port: self.port.unwrap_or(8080),
            }
        };
        let is_server = matches!(mode, Mode::Server { .. });
        if is_server && self.skip > 0 {
            return Err(Error::usage(
                "-s belongs to the client (-r or -t); the server learns it in the handshake",
            ));
        }
        Ok(Config {
            mode,
            path: self.file.unwrap_or_else(|| PathBuf::from("/dev/zero")),
            direction: if self.download {
                Direction::Download
            } else {
                Direction::Upload
            },
            block_size: self.block_size.unwrap_or(DEFAULT_BLOCK_SIZE),
            block_size_given: self.block_size.is_some(),
            skip: self.skip,
            compression: if self.no_compress {
                None
            } else {
                Some(self.level.unwrap_or(Level::Default))
            },
            encrypt,
            key: self.key.map(|k| k.read("-K")).transpose()?,
            token: self.token.map(|t| t.read("-token-file")).transpose()?,
            ssh: self.ssh,
            workers,
            prefetch,
            auto: self.auto,
            log: LogOptions {
                prefix: self.prefix,
                quiet: self.quiet,
                verbose: self.verbose,
                no_server_progress: self.no_server_progress,
            },
        })
    }
}

fn is_remote(t: &Target) -> bool {
    matches!(t, Target::Remote(_))
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

fn path_value(p: &mut lexopt::Parser, flag: &str) -> Result<PathBuf> {
    match p.value() {
        Ok(v) if v.is_empty() => Err(Error::usage(format!("-{flag}: empty path"))),
        Ok(v) => Ok(PathBuf::from(v)),
        Err(_) => Err(Error::usage(format!("-{flag}: missing value"))),
    }
}

fn string_value(p: &mut lexopt::Parser, flag: &str) -> Result<String> {
    let v = p
        .value()
        .map_err(|_| Error::usage(format!("-{flag}: missing value")))?;
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

fn parse_number(s: &str, flag: &str) -> Result<u64> {
    s.parse::<u64>().map_err(|_| {
        Error::usage(format!(
            "-{flag}: {s:?} is not a whole number (0 to {})",
            u64::MAX
        ))
    })
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

/// `-b`: decimal bytes with an optional binary suffix, `K`, `M` or `G`
/// (also `KiB`, `k`...).
pub fn parse_block_size(s: &str) -> Result<usize> {
    let bad = || {
        Error::usage(format!(
            "-b: {s:?} is not a block size (bytes, or a number with K, M or G, e.g. 4M)"
        ))
    };
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 10),
        Some((i, 'm' | 'M')) => (&t[..i], 20),
        Some((i, 'g' | 'G')) => (&t[..i], 30),
        _ => (t, 0),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let bytes = n.checked_mul(1 << shift).ok_or_else(bad)?;
    if bytes == 0 {
        return Err(Error::usage("-b: the block size must be at least 1 byte"));
    }
    match usize::try_from(bytes) {
        Ok(b) if b <= MAX_BLOCK_SIZE => Ok(b),
        _ => Err(Error::usage(format!(
            "-b: {s} is larger than the largest block size, 1G"
        ))),
    }
}

fn parse_port(s: &str, flag: &str, zero_ok: bool) -> Result<u16> {
    let lowest = if zero_ok { 0 } else { 1 };
    match s.parse::<u32>() {
        Ok(n) if n >= lowest && n <= 65535 => Ok(n as u16),
        _ => Err(Error::usage(format!(
            "-{flag}: {s:?} is not a port ({lowest} to 65535)"
        ))),
    }
}

fn parse_ip(s: &str) -> Result<IpAddr> {
    let inner = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    inner.parse().map_err(|_| {
        Error::usage(format!(
            "-i: {s:?} is not an IP address (e.g. 0.0.0.0, 192.168.1.50, ::)"
        ))
    })
}

/// `HOST:PORT`, with IPv6 literals as `[::1]:8080`.
fn parse_host_port(s: &str, flag: &str) -> Result<(String, u16)> {
    let bad = || {
        Error::usage(format!(
            "-{flag}: {s:?} is not HOST:PORT (IPv6 as [::1]:8080)"
        ))
    };
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, port) = rest.split_once("]:").ok_or_else(bad)?;
        (host, port)
    } else {
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        if host.contains(':') {
            return Err(bad());
        }
        (host, port)
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_string(), parse_port(port, flag, false)?))
}

/// Where a secret comes from. Only `-K HEX` puts one on the command line,
/// where `ps` shows it; `-K -` and `-token-file` keep it off.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Secret {
    Hex(Key),
    Stdin,
    File(PathBuf),
}

impl Secret {
    /// Resolve to the 32 bytes, reading one line from stdin or the file.
    fn read(self, flag: &str) -> Result<Key> {
        let (line, from) = match self {
            Secret::Hex(key) => return Ok(key),
            Secret::Stdin => {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .map_err(|e| Error::io("stdin", format!("{flag}: read"), e))?;
                (line, "stdin".to_string())
            }
            Secret::File(path) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    Error::io(path.display().to_string(), format!("{flag}: read"), e)
                })?;
                (text, path.display().to_string())
            }
        };
        Key::from_hex(line.trim()).map_err(|_| {
            Error::usage(format!(
                "{flag}: {from} must hold exactly 64 hexadecimal digits"
            ))
        })
    }
}

fn parse_key_arg(s: &str) -> Result<Secret> {
    if s == "-" {
        return Ok(Secret::Stdin);
    }
    // Never echo the value: it is a secret.
    Key::from_hex(s)
        .map(Secret::Hex)
        .map_err(|_| Error::usage("-K: the key must be exactly 64 hexadecimal digits or -"))
}

fn secret_path(path: PathBuf) -> Secret {
    if path.as_os_str() == "-" {
        Secret::Stdin
    } else {
        Secret::File(path)
    }
}

fn parse_ssh(s: &str) -> Result<String> {
    if s.split_whitespace().next().is_none() {
        return Err(Error::usage("-ssh: empty command"));
    }
    Ok(s.to_string())
}

fn parse_level(s: &str) -> Result<Level> {
    Level::parse(s).ok_or_else(|| {
        Error::usage(format!(
            "-L: {s:?} is not a level (fast, default, better, best)"
        ))
    })
}

/// `-t`: a local path, or `[user@]host[:port]:/path` with IPv6 hosts in brackets.
///
/// A value is local when it has no `:`, or starts with `/` or `.` (so
/// `./a:b.img` stays local), as with scp.
pub fn parse_target(value: &std::path::Path) -> Result<Target> {
    let Some(s) = value.to_str() else {
        return Ok(Target::Local(value.to_path_buf()));
    };
    if !s.contains(':') || s.starts_with('/') || s.starts_with('.') {
        return Ok(Target::Local(value.to_path_buf()));
    }
    let bad = |why: &str| {
        Error::usage(format!(
            "-t: {s:?} {why} (expected /path, user@host:/path or user@host:port:/path)"
        ))
    };
    let (user, rest) = match s.split_once('@') {
        Some((u, r)) if !u.is_empty() && !u.contains(':') => (Some(u.to_string()), r),
        Some(_) => return Err(bad("has an empty or malformed user")),
        None => (None, s),
    };
    let (host, rest) = if let Some(r) = rest.strip_prefix('[') {
        let (h, r) = r.split_once(']').ok_or_else(|| bad("has an unclosed ["))?;
        let r = r.strip_prefix(':').ok_or_else(|| bad("needs : after ]"))?;
        (h, r)
    } else {
        rest.split_once(':')
            .ok_or_else(|| bad("needs a : before the path"))?
    };
    if host.is_empty() {
        return Err(bad("has an empty host"));
    }
    // A port is all digits followed by ':'; anything else is the path.
    let (port, path) = match rest.split_once(':') {
        Some((p, path)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            (Some(parse_port(p, "t", false)?), path)
        }
        _ => (None, rest),
    };
    if path.is_empty() {
        return Err(bad("has an empty path"));
    }
    Ok(Target::Remote(RemoteTarget {
        user,
        host: host.to_string(),
        port,
        path: path.to_string(),
    }))
}

/// The `--version` text.
pub fn version_text() -> String {
    format!(
        "bsync {} (protocol {PROTOCOL_VERSION})\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// The `-h` text, grouped by task.
pub const HELP: &str = "\
bsync - keep a block device or disk image identical to another, block by block

Only blocks that differ are written; zero blocks become holes or cleared
ranges. Every flag works with one dash or two, and as -flag=value.

COPY ON THIS MACHINE
  bsync -f SRC -t DST              make DST (file or device) identical to SRC
  bsync -f DST -t SRC -d           the same, reading from the -t path

OVER THE NETWORK (two machines)
  bsync -f DST [-p PORT] [-i ADDR]  run a server; in upload mode it writes DST
  bsync -f SRC -r HOST:PORT        connect and upload SRC
  bsync -f SRC -p PORT -d          run a server that is the source (download)
  bsync -f DST -r HOST:PORT -d     connect and download into DST
  bsync -f SRC -t user@host:/dev/vda   start the remote end over SSH

WHAT AND HOW
  -f PATH       file or device to read (source) or write (destination) [/dev/zero]
  -t TARGET     /path, user@host:/path or user@host:port:/path (IPv6: user@[::1]:/path)
  -r HOST:PORT  connect to a bsync server (IPv6: [::1]:8080)
  -d            download: the server (or -t path) is the source
  -b N          block size in bytes, or with K/M/G (binary) [10M]; at most 1G
  -s N          skip the first N blocks (resume; they are neither read nor checked) [0]

SERVER
  -p PORT       port to listen on; 0 picks a free one and prints it [8080]
  -i ADDR       address to listen on [0.0.0.0]
  -P            print no progress on the server (-t sets it)

SPEED
  -w N          workers: parallel connections and CPU threads [1] (HDD: 1, SSD: 4-8)
  -prefetch N   blocks read ahead; 0 means workers x 4 [0]
  -n            no compression
  -L LEVEL      zstd level: fast, default, better, best [default]
  -auto         measure link and CPU, then pick -b, -w and -L (client -r only)

SECURITY
  -e            encrypt with ChaCha20-Poly1305; with -t a fresh key is made and
                handed over SSH, in direct mode it needs -K
  -K HEX        shared 32-byte key as 64 hex digits (same on both ends); -K -
                reads it from stdin, off the command line where ps shows it
  -token-file FILE  without encryption, accept only clients that know the
                64-hex-digit token in FILE (- for stdin); give it to both ends
  -ssh CMD      remote shell for -t, e.g. \"ssh -i key -J jump\" [$BSYNC_SSH or ssh]

OUTPUT
  -q            quiet: errors only
  -v            verbose: say which kernel I/O hints were applied or skipped, and
                why (read-ahead, fadvise, mlock, huge pages, how zeros were
                cleared); BSYNC_VERBOSE=1 does the same
  -l PREFIX     put PREFIX in front of every log and progress line
  -a            list block devices
  -h, --help    this text
  --version     version and protocol version

EXIT STATUS
  0 success, 1 transfer or I/O failure, 2 usage error (nothing was opened)

EXAMPLES
  bsync -f /dev/vda -t root@newhost:/dev/vda       migrate a disk over SSH
  bsync -e -L fast -w 4 -f /dev/sda -t backup@nas:/srv/sda.img
  bsync -f disk.img -t /mnt/backup/disk.img        local, only changes written
";

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Command> {
        parse(args.iter().map(OsString::from))
    }

    fn config(args: &[&str]) -> Config {
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
        let c = config(&[]);
        assert_eq!(
            c.mode,
            Mode::Server {
                bind: IpAddr::from([0, 0, 0, 0]),
                port: 8080
            }
        );
        assert_eq!(c.path, PathBuf::from("/dev/zero"));
        assert_eq!(c.block_size, 10_485_760);
        assert_eq!((c.workers, c.prefetch), (1, 4));
        assert_eq!(c.compression, Some(Level::Default));
        assert_eq!(c.direction, Direction::Upload);
    }

    #[test]
    fn one_dash_two_dashes_and_equals_are_the_same() {
        for args in [
            &["-prefetch", "8"][..],
            &["--prefetch", "8"],
            &["-prefetch=8"],
            &["--prefetch=8"],
        ] {
            assert_eq!(config(args).prefetch, 8, "{args:?}");
        }
        assert!(config(&["-q=true"]).log.quiet);
        assert!(!config(&["--q=false"]).log.quiet);
        assert!(config(&["-v"]).log.verbose);
        assert!(config(&["--v=true"]).log.verbose);
        assert!(!config(&[]).log.verbose);
    }

    #[test]
    fn prefetch_zero_means_four_per_worker() {
        assert_eq!(config(&["-w", "3", "-prefetch", "0"]).prefetch, 12);
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
        let c = config(&["-r", "[::1]:9000"]);
        assert_eq!(
            c.mode,
            Mode::Client {
                host: "::1".into(),
                port: 9000
            }
        );
        let c = config(&["-r", "example.org:22"]);
        assert_eq!(
            c.mode,
            Mode::Client {
                host: "example.org".into(),
                port: 22
            }
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
            (&["-K", "-", "-token-file", "-", "-r", "h:1"], "-K - and"),
            (&["-ssh", " ", "-t", "u@h:/x"], "-ssh: empty"),
        ];
        for (args, want) in cases {
            let msg = usage(args);
            assert!(msg.starts_with(want), "{args:?}: {msg}");
        }
        assert!(config(&["-e", "-K", &key, "-r", "h:1"]).encrypt);
        assert!(config(&["-K", &key, "-r", "h:1"]).encrypt, "-K implies -e");
        assert!(config(&["-e", "-t", "u@h:/x"]).encrypt);
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
        assert_eq!(c.token, Some(Key::from_bytes([0x0f; 32])));
        assert!(!c.encrypt, "a token alone does not encrypt");
        let msg = usage(&["-token-file", bad.to_str().unwrap()]);
        assert!(msg.contains("64 hexadecimal digits"), "{msg}");
        assert!(!msg.contains("secret-but-short"), "{msg}");
        let missing = dir.join("missing");
        let err = run(&["-token-file", missing.to_str().unwrap()]).unwrap_err();
        assert_eq!(err.exit_status(), 1, "{err}");
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
                assert!(HELP.contains(&format!("-{flag} ")), "help lacks -{flag}");
            }
        }
    }
}
