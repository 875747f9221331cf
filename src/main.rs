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
        Ok(Command::Run(config)) => match bsync::run(&config) {
            Ok(()) => 0,
            Err(e) => {
                let log = bsync::progress::Log::new(&config.log);
                log.line(format!("bsync: {e}"));
                // A rescue that finished resumes from its map, not from -s.
                let finished = matches!(e, bsync::Error::Unreadable(_));
                if let Some(hint) = bsync::progress::resume_hint().filter(|_| !finished) {
                    log.line(hint);
                }
                e.exit_status()
            }
        },
        Err(e) => {
            eprintln!("bsync: {e}");
            e.exit_status()
        }
    };
    ExitCode::from(u8::try_from(status).unwrap_or(1))
}
