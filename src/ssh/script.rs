//! The shell lines bsync runs on the remote machine, and the quoting that
//! keeps paths and directory names one word each.
//!
//! The remote shell is assumed to be POSIX `sh` with `uname`, `head -c`,
//! `mkdir`, `mv` (and `mktemp` without a cache): no bash, no installed
//! bsync. The secret is never on a command line (a remote `ps`
//! would show it): it arrives on stdin and is read with the `read` builtin.

use crate::config::{Role, Transfer};

/// `uname -m` values (shell patterns) that run a binary built for `arch`
/// (a `std::env::consts::ARCH` name).
fn machine_patterns(arch: &str) -> Vec<&str> {
    match arch {
        "x86" => vec!["i[3-6]86", "x86_64"],
        "aarch64" => vec!["aarch64", "arm64"],
        "arm" => vec!["arm*"],
        "powerpc64" if cfg!(target_endian = "little") => vec!["ppc64le"],
        "powerpc64" => vec!["ppc64"],
        "powerpc" => vec!["ppc"],
        "loongarch64" => vec!["loongarch64"],
        other => vec![other],
    }
}

/// mktemp output we are willing to remove with `rm -rf` later.
pub(super) fn is_safe_dir(dir: &str) -> bool {
    dir.starts_with('/')
        && dir.contains("/bsync.")
        && dir
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
}

/// This executable as the remote must have it: its SHA-256 (64 hex
/// digits, which also name its cache directory) and its length.
#[derive(Clone, Debug)]
pub struct Binary {
    /// `sha256sum`'s digest of the executable.
    pub sha256: String,
    /// Its length in bytes.
    pub len: usize,
}

/// What the remote shell says on stdout before the server's port: the
/// line that asks for the executable.
pub(super) const SEND: &str = "send ";
/// The line that says the cached copy is good.
pub(super) const HAVE: &str = "have ";
/// The line that names a directory made with `mktemp -d` (no usable cache).
pub(super) const DIR: &str = "dir ";
/// The line that says an upload's remote path does not exist: the server
/// will make it a new file.
pub(super) const NEW: &str = "new";

/// The whole remote side of a `-t` run, one ssh session: check the
/// machine, make sure an intact copy of this executable is there, and run
/// it as a one-session server. In order:
///
/// 1. Read the secret from stdin with the `read` builtin: it is never in
///    any argv. Print `uname -sm`; stop (status 0, nothing written) unless
///    the machine runs this build. In an upload, print `new` if the remote
///    path does not exist (the server will create it).
/// 2. The copy lives in `${XDG_CACHE_HOME:-$HOME/.cache}/bsync/SHA256/bsync`
///    (directories 0700). If it is there and `sha256sum` agrees, print
///    `have PATH`. Otherwise print `send PATH` and read exactly the
///    executable's length from stdin with `head -c` into a temporary name
///    beside it; check it (`sha256sum`, or only its length where there is
///    no `sha256sum`: then every run sends it), then `mv` it into place, so
///    a copy under the final name is always whole. Without a usable cache
///    directory (no `$HOME`, not writable) the copy goes into a fresh
///    `mktemp -d` directory (printed as `dir PATH`) that the `EXIT` trap
///    removes.
/// 3. Serve: the server binds the address the SSH connection came in on
///    (the third field of `$SSH_CONNECTION`), falling back to all IPv4
///    addresses, and prints its port; the secret reaches it through a pipe
///    from the `printf` builtin. A watchdog reads the ssh session's stdin
///    to its end, which comes when this side goes away, and then stops
///    bsync. It holds none of ssh's output: where it outlives the script
///    (a remote shell started with SIGTERM ignored cannot kill it), the
///    session's end still reaches this side at once.
///
/// The `EXIT` trap removes a partial copy and the `mktemp` directory
/// however the shell ends. `role` is this (the local) end's; `t` the
/// transfer settings.
pub fn session_script(
    binary: &Binary,
    path: &str,
    role: Role,
    t: &Transfer,
    verbose: bool,
    encrypt: bool,
) -> String {
    let patterns: Vec<String> = machine_patterns(std::env::consts::ARCH)
        .iter()
        .map(|m| format!("Linux\\ {m}"))
        .collect();
    let args = server_args(Listen::Tcp { encrypt }, path, role, t, verbose);
    let new = match role {
        Role::Source => format!("[ -e {} ] || echo {NEW}; ", remote_path(path)),
        Role::Destination => String::new(),
    };
    // Hex digits only: no quoting needed, and nothing to inject.
    let sha: String = binary
        .sha256
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect();
    format!(
        "u=; d=; trap '[ -z \"$u\" ] || rm -f \"$u\"; [ -z \"$d\" ] || rm -rf \"$d\"' EXIT; \
         trap 'exit 143' TERM; trap 'exit 129' HUP; \
         IFS= read -r k || exit 1; \
         s=$(uname -sm) || exit 1; echo \"$s\"; case $s in {patterns}) ;; *) exit 0;; esac; \
         {new}h={sha}; n={len}; \
         v() {{ command -v sha256sum >/dev/null 2>&1 && set -- $(sha256sum <\"$1\") && [ \"$1\" = $h ]; }}; \
         c=${{XDG_CACHE_HOME:-}}; case $c in /*) ;; *) c=${{HOME:+$HOME/.cache}};; esac; b=; \
         case $c in /?*) c=$c/bsync/$h; (umask 077; mkdir -p \"$c\") 2>/dev/null && \
         chmod 700 \"${{c%/*}}\" \"$c\" 2>/dev/null && [ -w \"$c\" ] && b=$c/bsync;; esac; \
         if [ -z \"$b\" ]; then t=${{TMPDIR:-/tmp}}; \
         case $t in /*[!A-Za-z0-9._/-]*|[!/]*) t=/tmp;; esac; \
         d=$(mktemp -d \"$t/bsync.XXXXXXXXXX\") || exit 1; echo \"{DIR}$d\"; b=$d/bsync; fi; \
         if [ -f \"$b\" ] && [ -x \"$b\" ] && v \"$b\"; then echo \"{HAVE}$b\"; else \
         echo \"{SEND}$b\"; u=$b.$$; \
         head -c $n >\"$u\" && {{ v \"$u\" || {{ ! command -v sha256sum >/dev/null 2>&1 && \
         set -- $(wc -c <\"$u\") && [ \"$1\" = $n ]; }}; }} && chmod 700 \"$u\" && mv -f \"$u\" \"$b\" || \
         {{ echo \"bsync: the copy of bsync that arrived is incomplete or corrupt\" >&2; exit 1; }}; \
         u=; fi; \
         a=${{SSH_CONNECTION:-}}; a=${{a#* * }}; a=${{a%% *}}; \
         case $a in ''|*[!0-9A-Fa-f.:]*) a=0.0.0.0;; esac; \
         exec 3<&0; \
         printf '%s\\n' \"$k\" | \"$b\" {args} & p=$!; k=; \
         trap 'kill $p 2>/dev/null; exit 143' TERM; \
         trap 'kill $p 2>/dev/null; exit 129' HUP; \
         {{ while IFS= read -r x <&3; do :; done; kill $p 2>/dev/null; }} >/dev/null 2>&1 & w=$!; \
         wait $p; s=$?; kill $w 2>/dev/null; exit $s",
        patterns = patterns.join("|"),
        len = binary.len,
        args = args.join(" "),
    )
}

/// Where a remote server takes its one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Listen {
    /// On a free TCP port on the address ssh came in on, printed on
    /// stdout; the secret (a key with `encrypt`, else a token) on stdin.
    Tcp { encrypt: bool },
    /// `--server`: on its stdin and stdout, inside ssh.
    Stdio,
}

/// The arguments of a remote bsync server for the local end in `role` of
/// `path`, moving data as `t` says: the one place they are made, for every
/// way a remote server is started. Each is one shell word or a flag and
/// its word.
pub(super) fn server_args(
    listen: Listen,
    path: &str,
    role: Role,
    t: &Transfer,
    verbose: bool,
) -> Vec<String> {
    let mut args = match listen {
        Listen::Tcp { .. } => vec!["-p 0".into(), "-i \"$a\"".into(), "-P".into()],
        Listen::Stdio => vec!["--server".to_string()],
    };
    args.push(if verbose { "-v" } else { "-q" }.to_string());
    args.push(format!("-f {}", remote_path(path)));
    if role == Role::Destination {
        // The source's block size is the one that counts: the server's.
        args.push("-d".to_string());
        args.push(format!("-b {}", t.block_size));
        // The remote sends: the limit is its to hold.
        if let Some(rate) = t.bwlimit {
            args.push(format!("-bwlimit {rate}"));
        }
    } else if listen == Listen::Stdio {
        args.push(format!("-b {}", t.block_size));
    }
    if let Listen::Tcp { encrypt } = listen {
        args.push(if encrypt { "-K -" } else { "-token-file -" }.to_string());
    }
    args
}

/// A remote path for the remote shell: quoted, except that a leading `~/`
/// still means the login's home directory, as it does for scp.
pub(super) fn remote_path(path: &str) -> String {
    match path.strip_prefix("~/") {
        Some(rest) if !rest.is_empty() => format!("~/{}", quote(rest)),
        _ if path == "~" || path == "~/" => "~".to_string(),
        _ => quote(path),
    }
}

/// `s` as one word for a POSIX shell: single quotes, with each `'` written
/// as `'\''`.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_survives_metacharacters() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote("$x\\y\"z"), "'$x\\y\"z'");
        assert_eq!(remote_path("~/disk img"), "~/'disk img'");
        assert_eq!(remote_path("/~/x"), "'/~/x'");
    }

    /// The quoting is only right if a real shell turns it back into the
    /// original string.
    #[test]
    fn quote_round_trips_through_sh() {
        let nasty = "a b'c\"d$e`f\\g*h;i|j&k(l)m\nn\t~o!p";
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", quote(nasty)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), nasty);
    }

    #[test]
    fn machines_match_the_build() {
        assert_eq!(machine_patterns("x86_64"), ["x86_64"]);
        assert_eq!(machine_patterns("x86"), ["i[3-6]86", "x86_64"]);
        let b = Binary {
            sha256: "ab".repeat(32),
            len: 7,
        };
        let t = Transfer {
            block_size: 1 << 20,
            skip: 0,
            compression: None,
            workers: 1,
            prefetch: 4,
            bwlimit: None,
        };
        let script = session_script(&b, "/x", Role::Source, &t, false, false);
        assert!(script.contains(&format!("Linux\\ {}", std::env::consts::ARCH)));
    }

    #[test]
    fn every_remote_server_gets_the_limit_and_the_verbosity() {
        let t = Transfer {
            block_size: 1 << 20,
            skip: 0,
            compression: None,
            workers: 1,
            prefetch: 4,
            bwlimit: Some(5_000_000),
        };
        for listen in [Listen::Tcp { encrypt: true }, Listen::Stdio] {
            let down = server_args(listen, "/x", Role::Destination, &t, true).join(" ");
            assert!(down.contains(" -d -b 1048576 -bwlimit 5000000"), "{down}");
            assert!(down.contains(" -v -f '/x'"), "{down}");
            // An upload's limit is this end's to hold.
            let up = server_args(listen, "/x", Role::Source, &t, false).join(" ");
            assert!(!up.contains("-bwlimit") && !up.contains(" -d"), "{up}");
            assert!(up.contains(" -q "), "{up}");
        }
        let stdio = server_args(Listen::Stdio, "/x", Role::Source, &t, false).join(" ");
        assert_eq!(stdio, "--server -q -f '/x' -b 1048576");
    }

    #[test]
    fn mktemp_output_is_checked() {
        assert!(is_safe_dir("/tmp/bsync.AbC123xyz_"));
        assert!(!is_safe_dir("tmp/bsync.x"));
        assert!(!is_safe_dir("/tmp/bsync.x y"));
        assert!(!is_safe_dir("/tmp/other"));
    }
}
