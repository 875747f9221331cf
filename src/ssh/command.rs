//! ssh command lines: the remote shell the user chose ([`Shell`]) and the
//! machine it reaches ([`Endpoint`]).
//!
//! The remote shell is `ssh`, or the `-ssh` flag, or `$BSYNC_SSH` (the flag
//! wins; `cli` resolves which), split into words as a POSIX shell would
//! ([`split_words`]: single and double quotes, backslashes) but without any
//! expansion: the first word is the program, the rest are ssh options.
//! Only the program is run, with those options: no `scp`, so any program
//! that takes ssh's options, a host and a command will do.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::process;
use crate::config::RemoteTarget;

/// The remote shell command: a program and the ssh options to give it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shell {
    /// The ssh program (`ssh`, a path, or a wrapper that speaks ssh's options).
    pub program: String,
    /// Options for every ssh call, in order.
    pub options: Vec<String>,
}

impl Shell {
    /// Split `cmd` into words ([`split_words`]); `None` when it has no
    /// words or a quote is left open (validation refuses both).
    pub fn parse(cmd: &str) -> Option<Shell> {
        let mut words = split_words(cmd).ok()?.into_iter();
        let program = words.next()?;
        Some(Shell {
            program,
            options: words.collect(),
        })
    }
}

/// Split `s` into words the way a POSIX shell does, without expanding
/// anything: whitespace separates words; `'...'` keeps everything
/// literally; `"..."` keeps everything but `\"`, `\\`, `\$` and `` \` ``;
/// a backslash outside quotes keeps the next character. An open quote or a
/// trailing backslash is an error, which says so.
pub fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                words.extend(word.take());
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("a single quote (') is not closed".into()),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err("a double quote (\") is not closed".into()),
                        },
                        Some(c) => w.push(c),
                        None => return Err("a double quote (\") is not closed".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err("it ends with a lone backslash".into()),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// One remote machine as ssh reaches it.
#[derive(Clone, Debug)]
pub(super) struct Endpoint {
    shell: Shell,
    user: Option<String>,
    /// The host as typed in `-t`.
    pub(super) host: String,
    port: Option<u16>,
}

impl Endpoint {
    /// `[user@]host[:port]` as `-t` gives it, before its `:/path`.
    pub(super) fn typed(&self) -> String {
        let mut s = self
            .user
            .as_ref()
            .map_or(String::new(), |u| format!("{u}@"));
        s.push_str(&super::bracketed(&self.host));
        if let Some(port) = self.port {
            s.push_str(&format!(":{port}"));
        }
        s
    }

    /// The machine `target` names, reached with the remote shell command
    /// `shell` (validation never lets an empty one through; it would mean
    /// plain `ssh`).
    pub(super) fn new(shell: &str, target: &RemoteTarget) -> Endpoint {
        Endpoint {
            shell: Shell::parse(shell).unwrap_or_else(|| Shell {
                program: "ssh".into(),
                options: Vec::new(),
            }),
            user: target.user.clone(),
            host: target.host.clone(),
            port: target.port,
        }
    }

    /// `ssh [options] [-l user] [-p port] host SCRIPT`; stdin closed.
    pub(super) fn command(&self, script: &str) -> Command {
        let mut cmd = self.ssh();
        cmd.arg(&self.host).arg(script);
        cmd
    }

    fn ssh(&self) -> Command {
        let mut cmd = Command::new(&self.shell.program);
        cmd.args(&self.shell.options);
        if let Some(user) = &self.user {
            cmd.arg("-l").arg(user);
        }
        if let Some(port) = self.port {
            cmd.arg("-p").arg(port.to_string());
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// The host name the data connection should use: ssh's configuration
    /// may map the name typed to another (`Host`/`HostName`), so ask
    /// `ssh -G`. Anything that goes wrong leaves the name as typed.
    pub(super) fn connect_host(&self) -> String {
        let mut cmd = self.ssh();
        cmd.arg("-G").arg(&self.host);
        process::bounded(cmd, "-G", Duration::from_secs(10))
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| {
                o.stdout
                    .lines()
                    .find_map(|l| l.strip_prefix("hostname ").map(|h| h.trim().to_string()))
            })
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| self.host.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(cmd: &str) -> Shell {
        Shell::parse(cmd).unwrap()
    }

    #[test]
    fn shell_splits_on_whitespace() {
        let s = shell("  ssh -i key\t-o  StrictHostKeyChecking=yes ");
        assert_eq!(s.program, "ssh");
        assert_eq!(s.options, ["-i", "key", "-o", "StrictHostKeyChecking=yes"]);
        assert_eq!(Shell::parse("  "), None);
    }

    #[test]
    fn shell_words_follow_posix_quoting() {
        let s = shell(r#"ssh -o "StrictHostKeyChecking no" -i '/my keys/id' -o User\ Name"#);
        assert_eq!(
            s.options,
            [
                "-o",
                "StrictHostKeyChecking no",
                "-i",
                "/my keys/id",
                "-o",
                "User Name"
            ]
        );
        assert_eq!(
            split_words(r#"a"b\"c"'d'"#),
            Ok(vec![r#"ab"cd"#.to_string()])
        );
        assert_eq!(
            split_words(r#"x "" y"#),
            Ok(vec!["x".into(), String::new(), "y".into()])
        );
        assert!(split_words("ssh 'open").is_err());
        assert!(split_words("ssh \"open").is_err());
        assert!(split_words("ssh \\").is_err());
    }
}
