//! The one error type of bsync and the exit-status table.
//!
//! Every failure becomes one line on stderr that names the side or peer, the
//! thing and the operation: `destination b.img: write at block 4711: No space
//! left on device`. The exit status is derived from the variant:
//!
//! | status | meaning                                   |
//! |--------|-------------------------------------------|
//! | 0      | success                                   |
//! | 1      | transfer or I/O failure (anything else)   |
//! | 2      | usage error: bad flags, nothing was opened |
//! | 3      | `--compare`: the two sides differ          |

use std::fmt;
use std::io;

/// Exit status for a usage error.
pub const EXIT_USAGE: i32 = 2;
/// Exit status for a transfer or I/O failure.
pub const EXIT_FAILURE: i32 = 1;
/// Exit status of `--compare` when the two sides differ.
pub const EXIT_DIFFER: i32 = 3;

/// Everything that can make a bsync run fail.
#[derive(Debug)]
pub enum Error {
    /// Bad command line: a flag, its value or a combination of flags.
    Usage(String),
    /// An I/O operation on a named thing failed.
    Io {
        /// What was being worked on, tagged with its side: `source a.img`.
        what: String,
        /// The operation: `read at block 12`, `open`, `connect`.
        op: String,
        /// The underlying OS error.
        source: io::Error,
    },
    /// The peer broke the wire protocol.
    Protocol {
        /// Who we were talking to.
        peer: String,
        /// What was wrong.
        what: String,
    },
    /// A blocking network operation ran past its deadline.
    Timeout {
        /// Who we were waiting for.
        peer: String,
        /// What we were waiting for.
        phase: String,
    },
    /// The peer closed the connection before we were done.
    Closed {
        /// Who closed it.
        peer: String,
        /// What we were waiting for.
        phase: String,
    },
    /// The remote end reported a failure of its own.
    Remote {
        /// Who said it.
        peer: String,
        /// What it said.
        msg: String,
    },
    /// The peer could not prove it holds the key or token.
    Auth {
        /// Who failed to authenticate.
        peer: String,
        /// Why: a wrong secret, or one end without one.
        why: String,
    },
    /// A condition that is neither I/O nor protocol: a destination device too
    /// small, an architecture mismatch, an unacknowledged block after retries.
    Failed(String),
    /// `--compare` found differences (not a failure: exit status 3).
    Differ(String),
}

/// The result type used throughout bsync.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The process exit status this error maps to.
    pub fn exit_status(&self) -> i32 {
        match self {
            Error::Usage(_) => EXIT_USAGE,
            Error::Differ(_) => EXIT_DIFFER,
            _ => EXIT_FAILURE,
        }
    }

    /// Shorthand for an [`Error::Io`].
    pub fn io(what: impl Into<String>, op: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            what: what.into(),
            op: op.into(),
            source,
        }
    }

    /// Shorthand for an [`Error::Usage`].
    pub fn usage(msg: impl Into<String>) -> Error {
        Error::Usage(msg.into())
    }

    /// Shorthand for an [`Error::Protocol`].
    pub fn protocol(peer: impl Into<String>, what: impl Into<String>) -> Error {
        Error::Protocol {
            peer: peer.into(),
            what: what.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(msg) => write!(f, "{msg}"),
            Error::Io { what, op, source } => write!(f, "{what}: {op}: {}", os_words(source)),
            Error::Protocol { peer, what } => write!(f, "protocol error from {peer}: {what}"),
            Error::Timeout { peer, phase } => {
                write!(f, "timed out waiting for {peer}: {phase}")
            }
            Error::Closed { peer, phase } => {
                write!(f, "{peer}: connection closed while waiting for {phase}")
            }
            Error::Remote { peer, msg } => write!(f, "{peer} failed: {msg}"),
            Error::Auth { peer, why } => write!(f, "authentication failed with {peer}: {why}"),
            Error::Failed(msg) | Error::Differ(msg) => write!(f, "{msg}"),
        }
    }
}

/// What the system says about `e`, in its own words: `Permission denied`,
/// without the ` (os error 13)` that Rust's `Display` adds. Every message
/// that shows an I/O error goes through here.
pub fn os_words(e: &io::Error) -> String {
    let text = e.to_string();
    match e.raw_os_error() {
        Some(code) => text
            .strip_suffix(&format!(" (os error {code})"))
            .unwrap_or(&text)
            .to_string(),
        None => text,
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_error_names_thing_and_operation() {
        let e = Error::io(
            "destination /dev/vdb",
            "write at block 4711",
            io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert_eq!(
            e.to_string(),
            "destination /dev/vdb: write at block 4711: No space left on device"
        );
        assert_eq!(e.exit_status(), EXIT_FAILURE);
    }

    #[test]
    fn usage_errors_exit_2() {
        assert_eq!(
            Error::usage("-b: must be at least 1").exit_status(),
            EXIT_USAGE
        );
    }
}
