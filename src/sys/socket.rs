//! TCP socket options for the data connection: keep-alive and buffer sizes.

use std::io;
use std::os::fd::AsRawFd;

/// Turn on TCP keep-alive with `idle` as both the idle time before the first
/// probe and the interval between probes.
pub fn set_keepalive(stream: &std::net::TcpStream, idle: std::time::Duration) -> io::Result<()> {
    let secs = libc::c_int::try_from(idle.as_secs().max(1)).unwrap_or(libc::c_int::MAX);
    setsockopt_int(stream, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    setsockopt_int(stream, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs)?;
    setsockopt_int(stream, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, secs)
}

/// Ask for `bytes` of send and receive buffer (the kernel may cap it).
pub fn set_socket_buffers(stream: &std::net::TcpStream, bytes: usize) -> io::Result<()> {
    let n = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    setsockopt_int(stream, libc::SOL_SOCKET, libc::SO_SNDBUF, n)?;
    setsockopt_int(stream, libc::SOL_SOCKET, libc::SO_RCVBUF, n)
}

/// Make closing `stream` send a reset (RST) instead of a clean FIN
/// (`SO_LINGER` with a zero timeout): what a crashed peer or a firewall
/// looks like. The fault tests use it to reset a connection.
pub fn reset_on_close(stream: &std::net::TcpStream) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the fd is open for the borrow of `stream`; we pass a pointer
    // to a live linger struct and its exact size, which SO_LINGER takes.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::linger>()).unwrap_or(8),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn setsockopt_int(
    stream: &std::net::TcpStream,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the fd is open for the borrow of `stream`; we pass a pointer to
    // a live c_int and its exact size, which is what these options take.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            // The size of a C int, 4: it fits.
            libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
