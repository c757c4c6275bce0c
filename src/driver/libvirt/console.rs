//! A guest's serial console through libvirt's console stream (`virDomainOpenConsole`), over
//! the lab's own libvirt connection: the same for a guest on this machine and one on another
//! host, with no `virsh` and no SSH of vxlab's own.
//!
//! One thread receives from the stream (a blocking receive) and writes what comes; the
//! caller's thread waits in `poll` on the input and on that thread's end, so a console that
//! closes (the guest shut down, another client took it) ends the session at once. Leaving
//! aborts the stream and waits briefly for the receiving thread; the command ends then.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use virt::connect::Connect;
use virt::domain::Domain;
use virt::stream::Stream;

/// Ctrl-]: leaves the console, as it does in `virsh console` and telnet.
pub const ESCAPE: u8 = 0x1d;

/// How a console session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The user pressed [`ESCAPE`], or the input ended.
    Left,
    /// libvirt closed the console: the guest stopped, or another client took the console.
    Closed,
}

/// Why the console could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// No such domain, or libvirt refused the console (another session holds it).
    #[error("cannot open the serial console of domain {domain}: {source}")]
    Open {
        /// Domain.
        domain: String,
        /// libvirt's reason.
        source: virt::error::Error,
    },
    /// This terminal failed.
    #[error("console session: {0}")]
    Io(#[from] io::Error),
}

/// The part of `input` before [`ESCAPE`], and whether it was there.
pub fn before_escape(input: &[u8]) -> (&[u8], bool) {
    match input.iter().position(|b| *b == ESCAPE) {
        Some(i) => (&input[..i], true),
        None => (input, false),
    }
}

/// Attaches `input` and `output` to domain `domain`'s serial console until the user leaves
/// or the console closes. The console is not taken from another session that holds it.
/// `input` is read as it comes, unbuffered (a `File`, not `Stdin`, whose buffer `poll` cannot
/// see).
pub fn attach(
    conn: &Connect,
    domain: &str,
    input: &mut (impl Read + AsRawFd),
    output: impl Write + Send + 'static,
) -> Result<Ended, ConsoleError> {
    let open = |source| ConsoleError::Open {
        domain: domain.to_string(),
        source,
    };
    // The receiving thread holds one end of this pair; its end closing wakes the poll below.
    let (closed, receiving_end) = UnixStream::pair()?;
    let dom = Domain::lookup_by_name(conn, domain).map_err(open)?;
    let stream = Stream::new(conn, 0).map_err(open)?;
    dom.open_console(None, &stream, 0).map_err(open)?;
    let receiving = stream.clone();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let _wake = receiving_end;
        receive(&receiving, output);
        let _ = done.send(());
    });
    let ended = send_input(&stream, input, &closed);
    // Leaving: aborting the stream ends the receiving thread's blocking receive. The command
    // ends next, so a receive that is slow to notice is not waited for long.
    let _ = stream.clone().abort();
    let _ = finished.recv_timeout(std::time::Duration::from_secs(2));
    ended.map_err(ConsoleError::from)
}

/// Writes what the console says to `output` until the stream ends or fails.
fn receive(stream: &Stream, mut output: impl Write) {
    let mut buf = [0u8; 4096];
    loop {
        match stream.recv(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if output
                    .write_all(&buf[..n])
                    .and_then(|()| output.flush())
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Sends `input` to the console until [`ESCAPE`], the input's end, or `closed` wakes.
fn send_input(
    stream: &Stream,
    input: &mut (impl Read + AsRawFd),
    closed: &UnixStream,
) -> io::Result<Ended> {
    let mut buf = [0u8; 1024];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: input.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: closed.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll on two valid pollfd entries, their number passed with them.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents != 0 {
            return Ok(Ended::Closed);
        }
        if fds[0].revents == 0 {
            continue;
        }
        let n = input.read(&mut buf)?;
        if n == 0 {
            return Ok(Ended::Left);
        }
        let (keys, escaped) = before_escape(&buf[..n]);
        let mut sent = 0;
        while sent < keys.len() {
            match stream.send(&keys[sent..]) {
                Ok(k) => sent += k,
                Err(_) => return Ok(Ended::Closed),
            }
        }
        if escaped {
            return Ok(Ended::Left);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_before_ctrl_right_bracket_are_sent_and_it_leaves() {
        assert_eq!(before_escape(b"ls\r"), (&b"ls\r"[..], false));
        assert_eq!(before_escape(b"ab\x1dcd"), (&b"ab"[..], true));
        assert_eq!(before_escape(b"\x1d"), (&b""[..], true));
    }
}
