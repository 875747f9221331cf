//! Log lines: every line goes to stderr (stdout is kept for data a script
//! reads, such as the port of `-p 0`), starts with the `-l` prefix, and
//! follows `-q` and `-v`; a `--server` whose stderr is its stream sends them
//! to syslog instead.
//!
//! On a terminal a log line printed while the live progress line is shown
//! (`progress::Reporter`) goes on its own line above it: [`Log::line`]
//! clears the live line, prints, and draws it again, under `LIVE`, the
//! lock both hold while writing to stderr.

use std::io::Write;
use std::sync::Mutex;

use crate::config::LogOptions;

/// Writes log lines to stderr with the `-l` prefix, unless quiet.
#[derive(Clone, Debug, Default)]
pub struct Log {
    prefix: String,
    quiet: bool,
    verbose: bool,
    /// `--json`: the closing summary also goes to stdout as JSON.
    json: bool,
}

impl Log {
    /// A log that follows `-l`, `-q` and `-v`.
    pub fn new(opts: &LogOptions) -> Log {
        Log {
            prefix: opts.prefix.clone(),
            quiet: opts.quiet,
            verbose: opts.verbose,
            json: opts.json,
        }
    }

    /// True when [`detail`](Self::detail) lines are printed.
    pub fn is_verbose(&self) -> bool {
        self.verbose
    }

    /// A line about how the I/O is done (hints applied or skipped), printed
    /// only with `-v`. Asking for it explicitly wins over `-q`.
    pub fn detail(&self, msg: impl std::fmt::Display) {
        if self.verbose {
            self.line(msg);
        }
    }

    /// True when only errors are printed.
    pub fn is_quiet(&self) -> bool {
        self.quiet
    }

    /// The prefix with a separating space, or nothing.
    pub fn prefix(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{} ", self.prefix)
        }
    }

    /// An informational line (dropped with `-q`).
    pub fn info(&self, msg: impl std::fmt::Display) {
        if !self.quiet {
            self.line(msg);
        }
    }

    /// `--json`: the closing summary also goes to stdout as JSON.
    pub fn json(&self) -> bool {
        self.json
    }

    /// A line printed even with `-q`.
    pub fn line(&self, msg: impl std::fmt::Display) {
        if crate::sys::syslog_is_on() {
            crate::sys::syslog_line(&format!("{}{msg}", self.prefix()));
            return;
        }
        let live = crate::lock::lock(&LIVE);
        let mut err = std::io::stderr().lock();
        // A closed stderr is not worth dying for.
        match live.as_deref() {
            Some(progress) => {
                let _ = write!(err, "\r\x1b[K{}{msg}\n{progress}", self.prefix());
            }
            None => {
                let _ = writeln!(err, "{}{msg}", self.prefix());
            }
        }
    }
}

/// The live progress line on the terminal, as drawn (prefix included);
/// `None` when none is shown. Held while writing to stderr, so a log line
/// and a redraw never interleave.
pub(crate) static LIVE: Mutex<Option<String>> = Mutex::new(None);
