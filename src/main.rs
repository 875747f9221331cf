//! The `bsync` command: parse the flags, run, turn the outcome into one line
//! on stderr and an exit status (0 ok, 1 transfer or I/O failure, 2 usage).

use std::io::Write;
use std::process::ExitCode;

use bsync::cli::{self, Command};

fn main() -> ExitCode {
    let status = match cli::parse(std::env::args_os().skip(1)) {
        // A closed stdout (`bsync -h | head -1`) is not an error.
        Ok(Command::Help) => {
            let _ = std::io::stdout().write_all(cli::HELP.as_bytes());
            0
        }
        Ok(Command::Version) => {
            let _ = std::io::stdout().write_all(cli::version_text().as_bytes());
            0
        }
        Ok(Command::Manual) => {
            let _ = std::io::stdout().write_all(cli::manual().as_bytes());
            0
        }
        Ok(Command::Completions(shell)) => {
            let _ = std::io::stdout().write_all(cli::completions(shell).as_bytes());
            0
        }
        Ok(Command::Run(config)) => {
            // A --server whose stderr is its protocol stream (inetd, `2>&1`)
            // logs to syslog instead.
            if matches!(config.mode, bsync::config::Mode::Stdio(_))
                && bsync::sys::stderr_is_the_stream()
            {
                bsync::sys::syslog_start();
            }
            match cli::terminal_refusal(&config).map_or_else(|| bsync::run(&config), Err) {
                Ok(()) => 0,
                Err(e) => {
                    let log = bsync::log::Log::new(&config.log);
                    log.line(format!("bsync: {e}"));
                    if let Some(hint) = bsync::progress::resume_hint_after(&e) {
                        log.line(hint);
                    }
                    e.exit_status()
                }
            }
        }
        Err(e) => {
            eprintln!("bsync: {e}");
            e.exit_status()
        }
    };
    ExitCode::from(u8::try_from(status).unwrap_or(1))
}
