//! Pipes and standard streams as a session's byte stream: waiting on a file
//! descriptor with a deadline (`poll`), and moving stdout out of the way.
//!
//! `bsync --server` speaks the protocol on stdin and stdout, which may be
//! pipes (a remote shell, `sh -c`), a socket (inetd, some sshd builds) or a
//! terminal by mistake; a pipe has no `SO_RCVTIMEO`, so the deadline is a
//! `poll` before every read and write.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use super::check;

/// Wait until `fd` is readable (`write == false`) or writable, or `limit`
/// passes (`Ok(false)`). Hang-ups and errors count as ready: the read or
/// write that follows reports them.
pub fn wait_ready(fd: BorrowedFd<'_>, write: bool, limit: Duration) -> io::Result<bool> {
    let events = if write { libc::POLLOUT } else { libc::POLLIN };
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    let ms = libc::c_int::try_from(limit.as_millis()).unwrap_or(libc::c_int::MAX);
    loop {
        // SAFETY: `pfd` is one live, writable pollfd and we pass a count of
        // 1; the fd is open for the borrow.
        let rc = unsafe { libc::poll(&raw mut pfd, 1, ms) };
        match check(rc) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Point file descriptor 1 at whatever 2 is, so that nothing printed by
/// mistake can corrupt a protocol that runs on the original stdout (kept
/// by the caller as a duplicate).
pub fn stdout_to_stderr() -> io::Result<()> {
    // SAFETY: dup2 on two descriptor numbers; it touches no memory. 1 and 2
    // are the process's standard descriptors, whatever they point at.
    check(unsafe { libc::dup2(2, 1) }).map(|_| ())
}
