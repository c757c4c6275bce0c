//! Guest processes on libvirt guests: an SSH channel of their own, with a pseudo-terminal
//! when asked for, checked against the guest's pinned host key like every other connection.
//!
//! libssh2 serialises everything on a session, and a blocking read would hold it while the
//! user types; so one thread per process drives the channel in non-blocking mode, waiting in
//! `poll` on the SSH socket and on local socket pairs that carry input, output and control.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};

use super::pump::{self, would_block};
use super::LibvirtDriver;
use crate::driver::DriverError;
use crate::plan::{shell_words, GuestPlan};
use crate::terminal::{GuestProcess, Launch, ProcessControl, WinSize};

/// Starts `launch` in guest `g` over a new SSH session.
pub(super) fn spawn(
    driver: &LibvirtDriver,
    g: &GuestPlan,
    launch: &Launch,
) -> Result<GuestProcess, DriverError> {
    let (host_key, client) = (driver.host_key(g)?, driver.client_key(&g.name)?);
    let session = driver
        .connect_guest(g, &host_key, &client)
        .map_err(|e| DriverError::new(&g.name, "connecting over SSH", e))?
        .into_session();
    start(session, launch).map_err(|e| DriverError::new(&g.name, "starting a process", e))
}

/// Starts `launch` on a new channel of an authenticated `session`, which it then owns.
pub fn start(session: ssh2::Session, launch: &Launch) -> io::Result<GuestProcess> {
    let mut channel = session.channel_session()?;
    if let Some(size) = launch.tty {
        channel.request_pty(
            "xterm-256color",
            None,
            Some((size.cols.into(), size.rows.into(), 0, 0)),
        )?;
    }
    channel.exec(&command_line(launch))?;
    session.set_blocking(false);

    let (stdin_ours, stdin_theirs) = UnixStream::pair()?;
    let (stdout_ours, stdout_theirs) = UnixStream::pair()?;
    let (stderr_ours, stderr_theirs) = match launch.tty {
        None => {
            let (a, b) = UnixStream::pair()?;
            (Some(a), Some(b))
        }
        Some(_) => (None, None),
    };
    let (wake_ours, wake_theirs) = UnixStream::pair()?;
    let shared = Arc::new(Shared::default());
    let pump = Pump {
        session,
        channel,
        stdin: stdin_ours,
        stdout: stdout_ours,
        stderr: stderr_ours,
        wake: wake_ours,
        shared: shared.clone(),
    };
    std::thread::Builder::new()
        .name("ssh-process".into())
        .spawn(move || pump.run())?;
    Ok(GuestProcess {
        stdin: Box::new(stdin_theirs),
        stdout: Box::new(stdout_theirs),
        stderr: stderr_theirs.map(|s| Box::new(s) as Box<dyn Read + Send>),
        control: Box::new(Control {
            shared,
            wake: Mutex::new(wake_theirs),
        }),
    })
}

/// The command line sshd runs: sshd passes few environment variables, so `env` sets them.
fn command_line(launch: &Launch) -> String {
    let mut words: Vec<String> = vec!["exec".into(), "env".into()];
    words.extend(launch.env.iter().map(|(k, v)| format!("{k}={v}")));
    words.extend(launch.argv.iter().cloned());
    // `exec` must stay a word of the shell, not an argument of it.
    format!("exec {}", shell_words(&words[1..]))
}

/// What the control handle and the pump share.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    ended: Condvar,
}

#[derive(Default)]
struct State {
    resize: Option<WinSize>,
    hang_up: bool,
    status: Option<i32>,
}

struct Control {
    shared: Arc<Shared>,
    wake: Mutex<UnixStream>,
}

impl Control {
    fn poke(&self) {
        // The pump reads these bytes only to wake up; a full buffer already wakes it.
        let _ = self
            .wake
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write(&[0]);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ProcessControl for Control {
    fn resize(&self, size: WinSize) -> io::Result<()> {
        self.state().resize = Some(size.clamped());
        self.poke();
        Ok(())
    }

    fn wait(&self) -> io::Result<i32> {
        let mut st = self.state();
        loop {
            if let Some(s) = st.status {
                return Ok(s);
            }
            st = self
                .shared
                .ended
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    fn hang_up(&self) {
        self.state().hang_up = true;
        self.poke();
    }
}

/// Drives one channel: the only code that touches the session after the start.
struct Pump {
    session: ssh2::Session,
    channel: ssh2::Channel,
    stdin: UnixStream,
    stdout: UnixStream,
    stderr: Option<UnixStream>,
    wake: UnixStream,
    shared: Arc<Shared>,
}

/// Whether a non-blocking ssh2 call is done (rather than not yet).
fn done(r: Result<(), ssh2::Error>) -> io::Result<bool> {
    pump::progress(r).map(|d| d.is_some())
}

impl Pump {
    fn run(mut self) {
        let status = self.drive().unwrap_or(255);
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        st.status = Some(status);
        self.shared.ended.notify_all();
        // Dropping the pump closes the local ends: readers see the end of the output.
    }

    /// Moves bytes until the channel closes; returns the exit status.
    fn drive(&mut self) -> io::Result<i32> {
        self.stdin.set_nonblocking(true)?;
        self.wake.set_nonblocking(true)?;
        let mut input: Vec<u8> = Vec::new();
        let mut input_open = true;
        let mut eof_sent = false;
        let mut closing = false;
        let mut buf = [0u8; 16384];
        loop {
            let mut busy = false;
            // Whether libssh2 was called to send: it may have read packets from the socket
            // meanwhile and keep them buffered, which poll cannot see, so the next turn must
            // read the channel before sleeping.
            let mut sent = false;
            // Output, both streams, until libssh2 has nothing more buffered.
            let out_done = copy_out(&mut self.channel.stream(0), &mut self.stdout, &mut buf)?;
            let err_done = match &mut self.stderr {
                Some(err) => copy_out(&mut self.channel.stderr(), err, &mut buf)?,
                None => true,
            };
            if out_done && err_done && self.channel.eof() {
                closing = true;
            }
            // Input.
            if input_open && input.is_empty() {
                match self.stdin.read(&mut buf) {
                    Ok(0) => input_open = false,
                    Ok(n) => input.extend_from_slice(&buf[..n]),
                    Err(e) if would_block(&e) => {}
                    Err(_) => input_open = false,
                }
            }
            if !input.is_empty() && !closing {
                match self.channel.write(&input) {
                    Ok(n) => {
                        input.drain(..n);
                        sent = true;
                    }
                    Err(e) if would_block(&e) => busy = true,
                    Err(_) => closing = true,
                }
            }
            if !input_open && input.is_empty() && !eof_sent && !closing {
                eof_sent = done(self.channel.send_eof())?;
                busy |= !eof_sent;
                sent |= eof_sent;
            }
            // Control.
            while matches!(self.wake.read(&mut buf), Ok(n) if n > 0) {}
            let (resize, hang_up) = {
                let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
                (st.resize.take(), st.hang_up)
            };
            if let Some(size) = resize {
                let r =
                    self.channel
                        .request_pty_size(size.cols.into(), size.rows.into(), None, None);
                if done(r)? {
                    sent = true;
                } else {
                    // Try again on the next turn.
                    self.shared
                        .state
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .resize = Some(size);
                    busy = true;
                }
            }
            if hang_up {
                closing = true;
            }
            if closing {
                if done(self.channel.close())? && done(self.channel.wait_close())? {
                    return Ok(self.channel.exit_status()?);
                }
                busy = true;
            }
            if !sent {
                self.wait_for_something(input_open && input.is_empty(), busy)?;
            }
        }
    }

    /// Sleeps until the SSH socket, the input (when `want_input`) or the control pipe has
    /// something; with `busy`, for at most 20 ms, to retry what libssh2 could not do yet.
    fn wait_for_something(&self, want_input: bool, busy: bool) -> io::Result<()> {
        let mut fds = [
            pump::session_fd(&self.session, libc::POLLIN),
            pump::readable(&self.wake, true),
            pump::readable(&self.stdin, want_input),
        ];
        pump::wait(&mut fds, if busy { 20 } else { -1 })
    }
}

/// Copies what the channel stream has now to `to`; true when the stream has ended.
fn copy_out(from: &mut impl Read, to: &mut UnixStream, buf: &mut [u8]) -> io::Result<bool> {
    loop {
        match from.read(buf) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                // The reader went away (the page closed): drop the output, keep going so the
                // channel still closes cleanly.
                let _ = to.write_all(&buf[..n]);
            }
            Err(e) if would_block(&e) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_quotes_every_word_and_sets_the_environment_with_env() {
        let launch = Launch {
            argv: vec!["bash".into(), "--norc".into(), "-i".into()],
            env: vec![("PS1".into(), "two-vm/vm-a# ".into())],
            tty: Some(WinSize::DEFAULT),
            confined: true,
            uid: 0,
        };
        assert_eq!(
            command_line(&launch),
            "exec env 'PS1=two-vm/vm-a# ' bash --norc -i"
        );
    }
}
