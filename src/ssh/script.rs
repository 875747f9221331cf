//! The shell lines bsync runs on the remote machine, and the quoting that
//! keeps paths and directory names one word each.
//!
//! The remote shell is assumed to be POSIX `sh` and nothing else: no bash,
//! no installed bsync. The secret is never on a command line (a remote `ps`
//! would show it): it arrives on stdin and is read with the `read` builtin.

use crate::config::{Role, Transfer};

/// The `uname -sm` check and `mktemp -d`, as one remote shell line. The
/// directory is made only if the machine matches, so a mismatch leaves
/// nothing behind. `$TMPDIR` is used only if it is a plain absolute path.
pub(super) fn prepare_script() -> String {
    let patterns: Vec<String> = machine_patterns(std::env::consts::ARCH)
        .iter()
        .map(|m| format!("Linux\\ {m}"))
        .collect();
    format!(
        "s=$(uname -sm) || exit 1; echo \"$s\"; case $s in {}) ;; *) exit 0;; esac; \
         t=${{TMPDIR:-/tmp}}; case $t in /*[!A-Za-z0-9._/-]*|[!/]*) t=/tmp;; esac; \
         mktemp -d \"$t/bsync.XXXXXXXXXX\"",
        patterns.join("|")
    )
}

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

/// mktemp output we are willing to put in later commands unquoted by scp.
pub(super) fn is_safe_dir(dir: &str) -> bool {
    dir.starts_with('/')
        && dir.contains("/bsync.")
        && dir
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
}

/// The remote command that serves one session and then removes `dir`.
///
/// - The secret is read with the shell's `read` builtin and piped into
///   bsync with the `printf` builtin: it is never in any argv.
/// - The server binds the address the SSH connection came in on (the third
///   field of `$SSH_CONNECTION`), falling back to all IPv4 addresses.
/// - A watchdog reads the ssh session's stdin to its end, which comes when
///   this side goes away, and then stops bsync.
/// - The `EXIT` trap removes the directory however the shell ends.
///
/// `role` is this (the local) end's; `t` the transfer settings.
pub fn server_script(
    dir: &str,
    path: &str,
    role: Role,
    t: &Transfer,
    verbose: bool,
    encrypt: bool,
) -> String {
    let mut args = vec![
        "-p 0".to_string(),
        "-i \"$a\"".to_string(),
        "-P".to_string(),
    ];
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
    }
    args.push(if encrypt { "-K -" } else { "-token-file -" }.to_string());
    format!(
        "d={}; trap 'rm -rf \"$d\"' EXIT; \
         IFS= read -r k || exit 1; \
         a=${{SSH_CONNECTION:-}}; a=${{a#* * }}; a=${{a%% *}}; \
         case $a in ''|*[!0-9A-Fa-f.:]*) a=0.0.0.0;; esac; \
         exec 3<&0; \
         printf '%s\\n' \"$k\" | \"$d/bsync\" {} & p=$!; k=; \
         trap 'kill $p 2>/dev/null; exit 143' TERM; \
         trap 'kill $p 2>/dev/null; exit 129' HUP; \
         {{ while IFS= read -r x <&3; do :; done; kill $p 2>/dev/null; }} & w=$!; \
         wait $p; s=$?; kill $w 2>/dev/null; exit $s",
        quote(dir),
        args.join(" ")
    )
}

/// A remote path for the remote shell: quoted, except that a leading `~/`
/// still means the login's home directory, as it does for scp.
fn remote_path(path: &str) -> String {
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
        assert!(prepare_script().contains(&format!("Linux\\ {}", std::env::consts::ARCH)));
    }

    #[test]
    fn mktemp_output_is_checked() {
        assert!(is_safe_dir("/tmp/bsync.AbC123xyz_"));
        assert!(!is_safe_dir("tmp/bsync.x"));
        assert!(!is_safe_dir("/tmp/bsync.x y"));
        assert!(!is_safe_dir("/tmp/other"));
    }
}
