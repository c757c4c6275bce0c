//! What both SSH pumps share (a guest process's, `shell`, and a host connection's,
//! `remote::jump`): each drives libssh2 in non-blocking mode from one thread and waits in
//! `poll` on the SSH socket and its own local sockets.

use std::io;
use std::os::fd::AsRawFd;

/// Whether an I/O error only means "not now" in non-blocking mode.
pub(in crate::driver::libvirt) fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// What an ssh2 call came to in non-blocking mode: done (`Some`), not yet (`None`), or failed.
pub(in crate::driver::libvirt) fn progress<T>(r: Result<T, ssh2::Error>) -> io::Result<Option<T>> {
    match r.map_err(io::Error::from) {
        Ok(v) => Ok(Some(v)),
        Err(e) if would_block(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The `poll` entry for `session`'s socket: readable with `events`, and writable too while
/// libssh2 is blocked sending.
pub(in crate::driver::libvirt) fn session_fd(
    session: &ssh2::Session,
    events: libc::c_short,
) -> libc::pollfd {
    let sending = matches!(
        session.block_directions(),
        ssh2::BlockDirections::Outbound | ssh2::BlockDirections::Both
    );
    libc::pollfd {
        fd: session.as_raw_fd(),
        events: events | if sending { libc::POLLOUT } else { 0 },
        revents: 0,
    }
}

/// The `poll` entry for reading `fd` when `wanted`.
pub(in crate::driver::libvirt) fn readable(fd: &impl AsRawFd, wanted: bool) -> libc::pollfd {
    libc::pollfd {
        fd: fd.as_raw_fd(),
        events: if wanted { libc::POLLIN } else { 0 },
        revents: 0,
    }
}

/// Waits in `poll` on `fds` for at most `timeout_ms` (-1: no limit); a signal ends the wait
/// early, as an event would.
pub(in crate::driver::libvirt) fn wait(
    fds: &mut [libc::pollfd],
    timeout_ms: libc::c_int,
) -> io::Result<()> {
    // SAFETY: poll on a slice of valid pollfd entries, its length passed with it.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}
