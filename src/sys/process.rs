//! The process: random bytes from the kernel, and the signals and `kill`
//! the SSH launcher (`src/ssh/`) needs.
//!
//! `-t user@host:` leaves a binary on another machine, so an interrupted run
//! must still clean up there. Instead of async-signal handlers (which may do
//! almost nothing), the termination signals are blocked in every thread and
//! one ordinary thread takes them with sigwait(2), free to spawn `ssh` and
//! wait for it.

use std::fs::File;
use std::io;

use super::check;

/// Fill buf from the OS random source (getrandom(2), loop on EINTR and short
/// returns). Never fastrand. Kernels older than 3.17 lack the call (ENOSYS);
/// there it reads `/dev/urandom` instead.
pub fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the pointer and length describe `rest`, a live, writable,
        // exclusively borrowed slice; getrandom writes at most that many
        // bytes into it.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOSYS) => return urandom(rest),
                _ => return Err(e),
            }
        }
        // n >= 0 and <= rest.len() here, so the conversion cannot fail.
        done += usize::try_from(n).map_err(|_| io::Error::other("getrandom returned garbage"))?;
    }
    Ok(())
}

fn urandom(buf: &mut [u8]) -> io::Result<()> {
    use std::io::Read;
    File::open("/dev/urandom")?.read_exact(buf)
}

/// The signals that end a run: Ctrl-C, `kill`, a closed terminal.
pub const TERMINATION_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn termination_set() -> io::Result<libc::sigset_t> {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set it is given; the pointer is to
    // a live, writable sigset_t.
    check(unsafe { libc::sigemptyset(set.as_mut_ptr()) })?;
    for sig in TERMINATION_SIGNALS {
        // SAFETY: the set was initialised by sigemptyset above.
        check(unsafe { libc::sigaddset(set.as_mut_ptr(), sig) })?;
    }
    // SAFETY: initialised by sigemptyset and filled by sigaddset.
    Ok(unsafe { set.assume_init() })
}

/// Block [`TERMINATION_SIGNALS`] in the calling thread, and so in every
/// thread it starts afterwards. Call it before starting any thread, then take
/// the signals with [`wait_termination_signal`]. Child processes start with
/// an empty mask (the standard library resets it), so `ssh` still dies of
/// Ctrl-C as usual.
pub fn block_termination_signals() -> io::Result<()> {
    mask_termination_signals(libc::SIG_BLOCK)
}

/// Undo [`block_termination_signals`] in the calling thread (when no thread
/// could be started to take them).
pub fn unblock_termination_signals() -> io::Result<()> {
    mask_termination_signals(libc::SIG_UNBLOCK)
}

fn mask_termination_signals(how: libc::c_int) -> io::Result<()> {
    let set = termination_set()?;
    // SAFETY: `set` is an initialised sigset_t; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Wait until one of [`TERMINATION_SIGNALS`] is pending and take it; returns
/// its number. The signals must be blocked ([`block_termination_signals`]).
pub fn wait_termination_signal() -> io::Result<libc::c_int> {
    let set = termination_set()?;
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is initialised and `sig` is a live c_int for the
        // kernel to fill in.
        let rc = unsafe { libc::sigwait(&set, &mut sig) };
        match rc {
            0 => return Ok(sig),
            libc::EINTR => continue,
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// Send `sig` to process `pid` (kill(2)). The caller must know that `pid` is
/// its own child not yet waited for, so the number cannot have been reused.
pub fn kill(pid: u32, sig: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    if pid <= 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a single process",
        ));
    }
    // SAFETY: kill takes plain integers; pid > 0 names exactly one process.
    check(unsafe { libc::kill(pid, sig) }).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getrandom_fills_and_differs() {
        let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
        getrandom(&mut a).unwrap();
        getrandom(&mut b).unwrap();
        assert_ne!(a, b);
        assert_ne!(a, [0u8; 64]);
        // Larger than one getrandom call may return at once for some sources.
        let mut big = vec![0u8; 1 << 20];
        getrandom(&mut big).unwrap();
        assert!(big[big.len() - 64..].iter().any(|&x| x != 0));
        getrandom(&mut []).unwrap();
    }
}
