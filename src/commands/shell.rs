//! `vxlab shell` and `vxlab exec`: a process in a guest, attached to this terminal. Output is
//! passed on as it comes, and the exit status is the guest process's.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::{driver, require_root, running_guest};
use crate::host::netlink::Netlink;
use crate::state::StateDir;
use crate::terminal::{self, GuestProcess, Launch, ProcessControl, WinSize};

/// How the end of a shell's input (a script piped in) is typed on its terminal: the last line
/// ended, Ctrl-D, and, should the shell not have read its terminal yet (its line editor then
/// sees that Ctrl-D as a NUL), `exit`. A command run with `exec -t` gets the Ctrl-D alone.
/// (A last line without its newline gets one Ctrl-D more first, see [`attach`].)
const SHELL_END_OF_INPUT: &[u8] = b"\n\x04exit\n";

/// `vxlab shell [--lab LAB] GUEST`: the student's shell in a guest, on a pseudo-terminal.
pub fn shell(lab: Option<&Path>, guest: &str) -> Result<u8> {
    require_root("shell")?;
    let (lab, p, i) = running_guest(lab, guest)?;
    let g = &p.guests[i];
    let st = StateDir::from_env().read(&lab.name)?;
    let tools = st.tools.get(guest).cloned().unwrap_or_default();
    let launch = terminal::shell(&lab.name, &st.made, g, &tools, local_size());
    let driver = driver(&lab, &Arc::new(Netlink::open()?), None)?;
    let process = driver
        .spawn(g, &launch)
        .with_context(|| format!("while opening a shell on {guest} in lab {}", lab.name))?;
    attach(process, &launch, SHELL_END_OF_INPUT)
}

/// `vxlab exec [--lab LAB] [-t] GUEST CMD...`
pub fn exec(lab: Option<&Path>, guest: &str, argv: &[String], tty: bool) -> Result<u8> {
    require_root("exec")?;
    let (lab, p, i) = running_guest(lab, guest)?;
    let g = &p.guests[i];
    let launch = terminal::command(argv, tty.then(local_size));
    let driver = driver(&lab, &Arc::new(Netlink::open()?), None)?;
    let process = driver.spawn(g, &launch).map_err(|e| {
        // As a shell says it: 127 for a command that is not there, 126 for one that cannot
        // be run; any other failure to start it is vxlab's own error.
        let not_run = std::iter::successors(std::error::Error::source(&e), |c| c.source())
            .filter_map(|c| c.downcast_ref::<std::io::Error>()?.get_ref())
            .find_map(|c| c.downcast_ref::<crate::host::spawn::NotExecuted>())
            .map(|n| n.found);
        let e = anyhow::Error::new(e);
        match not_run {
            Some(found) => e.context(NotStarted {
                command: argv[0].clone(),
                guest: guest.to_string(),
                code: if found {
                    super::exit::NOT_EXECUTABLE
                } else {
                    super::exit::NOT_FOUND
                },
            }),
            None => e.context(format!("while running {} on {guest}", argv[0])),
        }
    })?;
    attach(process, &launch, b"\x04")
}

/// `exec` could not start its command in the guest; `code` is what a shell would return.
#[derive(Debug, thiserror::Error)]
#[error("while running {command} on {guest}")]
pub struct NotStarted {
    command: String,
    guest: String,
    /// 127: not found; 126: not executable.
    pub code: u8,
}

/// This terminal's size, or the default when there is none.
fn local_size() -> WinSize {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize to a valid pointer.
    let ok = unsafe { libc::ioctl(std::io::stdout().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 && ws.ws_row > 0 {
        WinSize {
            cols: ws.ws_col,
            rows: ws.ws_row,
        }
    } else {
        WinSize::DEFAULT
    }
}

/// This terminal in raw mode (keys go to the guest as typed, Ctrl-C included) until dropped.
pub(crate) struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    pub(crate) fn enter() -> Option<RawMode> {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: termios is plain data; tcgetattr fills it.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr and tcsetattr on standard input with valid pointers.
        unsafe {
            if libc::tcgetattr(fd, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(fd, libc::TCSANOW, &raw) != 0 {
                return None;
            }
        }
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restoring the settings read in `enter`.
        unsafe {
            libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, &self.saved);
        }
    }
}

/// Copies `from` to `to` as it comes, flushing each piece; stops at the end or an error.
/// Copies until the end of `from`; returns the last byte passed on, if any.
fn pump(mut from: impl Read, mut to: impl Write) -> Option<u8> {
    let mut buf = [0u8; 8192];
    let mut last = None;
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return last,
            Ok(n) => {
                if to.write_all(&buf[..n]).and_then(|_| to.flush()).is_err() {
                    return last;
                }
                last = Some(buf[n - 1]);
            }
        }
    }
}

/// Connects the process to this terminal until it ends; returns its exit status.
fn attach(process: GuestProcess, launch: &Launch, end_of_input: &'static [u8]) -> Result<u8> {
    let GuestProcess {
        stdin,
        stdout,
        stderr,
        control,
    } = process;
    let control: Arc<dyn ProcessControl> = Arc::from(control);
    let raw = match launch.tty {
        Some(_) if std::io::stdin().is_terminal() => RawMode::enter(),
        _ => None,
    };
    if launch.tty.is_some() {
        follow_window_size(control.clone());
    }
    // Ctrl-C (in raw mode a key for the guest, not a signal) or SIGTERM ends the command in
    // the guest, as a closed terminal would; what it printed before is already out.
    crate::interrupt::install();
    let stopper = control.clone();
    std::thread::spawn(move || {
        crate::interrupt::wait_for_stop();
        stopper.hang_up();
    });
    // Input is never waited for: the process may end without reading it, and this thread
    // then ends with vxlab. On a terminal in the guest, the end of input (a script piped in,
    // /dev/null) cannot be said by closing it (it stays open for the output), so it is said
    // as a user at the keyboard says it, `end_of_input`.
    let on_pty = launch.tty.is_some();
    std::thread::spawn(move || {
        let mut stdin = stdin;
        let last = pump(std::io::stdin(), &mut stdin);
        if on_pty {
            // A last line without its newline takes one Ctrl-D to be read, and another to
            // end the input.
            if last.is_some_and(|b| b != b'\n') {
                let _ = stdin.write_all(b"\x04");
            }
            let _ = stdin.write_all(end_of_input).and_then(|()| stdin.flush());
        }
    });
    let err = stderr.map(|e| std::thread::spawn(move || pump(e, std::io::stderr())));
    pump(stdout, std::io::stdout());
    if let Some(t) = err {
        let _ = t.join();
    }
    let status = control.wait()?;
    drop(raw);
    if crate::interrupt::requested() {
        eprintln!("vxlab: interrupted; the command in the guest was ended");
        return Ok(super::exit::INTERRUPTED);
    }
    Ok(u8::try_from(status).unwrap_or(u8::MAX))
}

/// Passes every change of this terminal's size on to the process's terminal.
fn follow_window_size(control: Arc<dyn ProcessControl>) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut changes) = signal(SignalKind::window_change()) else {
                return;
            };
            while changes.recv().await.is_some() {
                let _ = control.resize(local_size());
            }
        });
    });
}
