//! syslog, for a `--server` whose stderr is no place for log lines.
//!
//! Under inetd or xinetd (bdsync's netcat setup), or a remote shell
//! command ending in `2>&1`, a server's stderr is its protocol stream: a
//! log line there would corrupt the session. Then every line goes to
//! syslog instead, tagged `bsync`, as bdsync's server does; `-v`
//! (`--verbose`) raises what goes there, as it does on stderr.

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

static ON: AtomicBool = AtomicBool::new(false);

/// Whether fd 2 is a socket, or the same file as fd 0 or fd 1 (device and
/// inode): then it carries the session, not a log.
pub fn stderr_is_the_stream() -> bool {
    let stat = |fd| {
        // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes one `stat` into the live local `st`.
        (unsafe { libc::fstat(fd, &mut st) } == 0).then_some(st)
    };
    let Some(err) = stat(libc::STDERR_FILENO) else {
        return false;
    };
    if err.st_mode & libc::S_IFMT == libc::S_IFSOCK {
        return true;
    }
    [libc::STDIN_FILENO, libc::STDOUT_FILENO]
        .into_iter()
        .filter_map(stat)
        .any(|st| (st.st_dev, st.st_ino) == (err.st_dev, err.st_ino))
}

/// Send every log line to syslog from now on.
pub fn syslog_start() {
    // openlog keeps the pointer: the tag must live as long as the process.
    static TAG: &[u8] = b"bsync\0";
    // SAFETY: TAG is NUL-terminated and 'static.
    unsafe { libc::openlog(TAG.as_ptr().cast(), libc::LOG_PID, libc::LOG_DAEMON) };
    ON.store(true, Relaxed);
}

/// True once [`syslog_start`] was called.
pub fn syslog_is_on() -> bool {
    ON.load(Relaxed)
}

/// One line to syslog, at `LOG_INFO`.
pub fn syslog_line(msg: &str) {
    let Ok(text) = CString::new(msg.replace('\0', " ")) else {
        return;
    };
    // SAFETY: both strings are NUL-terminated; "%s" consumes the one
    // argument given.
    unsafe { libc::syslog(libc::LOG_INFO, c"%s".as_ptr(), text.as_ptr()) };
}
