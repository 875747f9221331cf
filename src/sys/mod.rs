//! Every raw OS call bsync makes, each behind a small safe wrapper.
//!
//! This is the only module allowed to write `unsafe` (`lib.rs` allows it
//! here, submodules included, and nowhere else); every `unsafe` block carries
//! a `// SAFETY:` comment. A wrapper turns a failed call into an `io::Error`
//! and never panics.
//!
//! One file per subject:
//!
//! - `file`: block-device ioctls, pread/pwrite, fadvise, writeback, and
//!   the chain that clears a range (punch hole → zero range → write zeros);
//! - `memory`: `PinnedBuf` (mlocked, huge-page mapped) and the memlock limit;
//! - `process`: random bytes, termination signals and `kill`;
//! - `socket`: TCP keep-alive and buffer sizes.
//!
//! Everything public is re-exported here: callers write `sys::NAME` and need
//! not know which file holds it.

use std::io;

mod file;
mod memory;
mod process;
pub mod simd;
mod socket;

pub use file::{
    Advice, Cleared, blk_zero_out, block_device_size, clear_range, fadvise, is_block_device,
    logical_sector_size, next_data, pread_full, punch_hole, pwrite_all, read_ahead, read_full_with,
    set_read_ahead, start_writeback, wait_writeback, write_all_with, writeback_unsupported,
    zero_range,
};
pub use memory::{HUGE_PAGE_SIZE, PinnedBuf, memlock_limit};
pub use process::{
    TERMINATION_SIGNALS, block_termination_signals, getrandom, kill, wait_termination_signal,
};
pub use socket::{reset_on_close, set_keepalive, set_socket_buffers};

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
