//! Every raw OS call bsync makes, each behind a small safe wrapper.
//!
//! This is the only module allowed to write `unsafe` (`lib.rs` allows it
//! here, submodules included, and nowhere else); every `unsafe` block carries
//! a `// SAFETY:` comment. A wrapper turns a failed call into an `io::Error`
//! and never panics.
//!
//! One file per subject:
//!
//! - `file`: block-device ioctls, pread/pwrite, fadvise, cachestat, writeback, and
//!   the chain that clears a range (punch hole → zero range → write zeros);
//! - `memory`: `PinnedBuf` (mlocked, huge-page mapped) and the memlock limit;
//! - `pipe`: `poll` with a deadline, and stdout moved onto stderr, for
//!   sessions on stdin/stdout (`bsync --server`);
//! - `process`: random bytes, termination signals and `kill`;
//! - `socket`: TCP keep-alive and buffer sizes;
//! - `syslog`: whether stderr is the session's stream, and syslog for a
//!   server's log lines when it is.
//!
//! Everything public is re-exported here: callers write `sys::NAME` and need
//! not know which file holds it.

use std::io;

mod file;
mod memory;
mod pipe;
mod process;
pub mod simd;
mod socket;
mod syslog;

pub use file::{
    Advice, Cleared, blk_zero_out, block_device_size, cached_bytes, clear_range, fadvise,
    is_block_device, is_read_only_device, logical_sector_size, loop_backing, may_write, next_data,
    pread_full, punch_hole, pwrite_all, read_ahead, read_full_with, set_read_ahead,
    start_writeback, wait_writeback, write_all_with, writeback_unsupported, zero_range,
};
pub use memory::{HUGE_PAGE_SIZE, PinnedBuf, cgroup_memory_room, memlock_limit};
pub use pipe::{stdout_to_stderr, wait_ready};
pub use process::{
    TERMINATION_SIGNALS, block_termination_signals, getrandom, kill, unblock_termination_signals,
    wait_termination_signal,
};
pub use socket::{reset_on_close, set_keepalive, set_socket_buffers};
pub use syslog::{stderr_is_the_stream, syslog_is_on, syslog_line, syslog_start};

/// Columns of the terminal on standard error, if it is one (TIOCGWINSZ).
pub fn stderr_columns() -> Option<u16> {
    // SAFETY: an all-zero winsize is a valid value of this plain C struct.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize into the live local `ws`.
    let rc = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0).then_some(ws.ws_col)
}

/// The local wall-clock time of `secs` seconds after the epoch as
/// `(year, month, day, hour, minute, second)`, by `localtime_r` (which
/// honours `TZ` and `/etc/localtime`); UTC when that fails.
// The libc crate deprecates musl's `time_t` only to announce its change to
// 64 bits; the checked conversion below holds either way.
#[allow(deprecated)]
pub fn local_time(secs: u64) -> (i32, u32, u32, u32, u32, u32) {
    let t = libc::time_t::try_from(secs).unwrap_or(libc::time_t::MAX);
    // SAFETY: an all-zero `tm` is a valid value of this plain C struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals for the duration of the
    // call; localtime_r is the thread-safe variant.
    let ok = !unsafe { libc::localtime_r(&t, &mut tm) }.is_null();
    if !ok {
        // The time of day in UTC, without a date.
        let rem = secs % 86_400;
        let hms = |v: u64| u32::try_from(v).unwrap_or(0);
        return (0, 0, 0, hms(rem / 3600), hms(rem / 60 % 60), hms(rem % 60));
    }
    let u = |v: libc::c_int| u32::try_from(v).unwrap_or(0);
    (
        tm.tm_year + 1900,
        u(tm.tm_mon + 1),
        u(tm.tm_mday),
        u(tm.tm_hour),
        u(tm.tm_min),
        u(tm.tm_sec),
    )
}

/// Converts a `u64` offset or length into whatever integer type a libc call
/// wants, refusing values it cannot hold instead of wrapping them.
fn to_c<T: TryFrom<u64>>(v: u64) -> io::Result<T> {
    T::try_from(v).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("value {v} out of range for the OS call"),
        )
    })
}

/// Maps the `-1`-and-errno convention to `io::Result`.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
