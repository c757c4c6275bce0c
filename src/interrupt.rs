//! Ctrl-C and SIGTERM during `up`, `reset` or `walk`: the step in flight finishes (its resource
//! is already recorded), nothing new starts, and the command says what is left and how to
//! remove or finish it. Without this, an interrupted child could leave a half-made resource.
//! During `down`, the first one is answered and `down` goes on to the end.

use std::io::BufRead;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);
/// The write end of a pipe the handler writes a byte to, so that a wait on input can also
/// wait on the signal (a self-pipe); -1 before [`install`].
static WAKE: AtomicI32 = AtomicI32::new(-1);
static WAKE_READ: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(_: libc::c_int) {
    // An atomic store, sigaction(2) and write(2): all async-signal-safe.
    REQUESTED.store(true, Ordering::SeqCst);
    // The children got the signal too and may be gone: writing to one's input must be an
    // error vxlab reports as the interruption, not a SIGPIPE that kills it without a word.
    // SAFETY: a zeroed sigaction with SIG_IGN is a valid argument.
    unsafe {
        let mut ignore: libc::sigaction = std::mem::zeroed();
        ignore.sa_sigaction = libc::SIG_IGN;
        libc::sigaction(libc::SIGPIPE, &ignore, std::ptr::null_mut());
    }
    let fd = WAKE.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: one byte from a live buffer to a non-blocking pipe; a full pipe already
        // says what this byte would.
        unsafe {
            libc::write(fd, [1u8].as_ptr().cast(), 1);
        }
    }
}

/// From now on, SIGINT and SIGTERM ask vxlab to stop between steps instead of killing it.
pub fn install() {
    if WAKE.load(Ordering::SeqCst) < 0 {
        let mut fds = [-1; 2];
        // SAFETY: pipe2 fills the two-element array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } == 0 {
            WAKE_READ.store(fds[0], Ordering::SeqCst);
            WAKE.store(fds[1], Ordering::SeqCst);
        }
    }
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic and writes to a pipe, both
        // async-signal-safe.
        unsafe {
            libc::signal(sig, handler as libc::sighandler_t);
        }
    }
}

/// Whether a signal came while [`finish_first`] was in force.
static FINISHING: AtomicBool = AtomicBool::new(false);

const FINISH_MESSAGE: &[u8] = b"\nvxlab: down goes on to the end, as a half-removed lab helps no \
one; Ctrl-C again stops it at once, and `vxlab down` again removes the rest\n";

extern "C" fn on_signal_finish(sig: libc::c_int) {
    if FINISHING.swap(true, Ordering::SeqCst) {
        // The second: end as the signal would have.
        // SAFETY: signal(2) and raise(3) are async-signal-safe.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
        return;
    }
    // SAFETY: write(2) of a static buffer to stderr is async-signal-safe.
    unsafe {
        libc::write(2, FINISH_MESSAGE.as_ptr().cast(), FINISH_MESSAGE.len());
    }
}

/// For `down`: the first SIGINT or SIGTERM does not stop it but is answered at once with why
/// and how to stop it anyway; a second ends vxlab as the signal would. Without this Ctrl-C
/// killed `down` silently, leaving part of the lab.
pub fn finish_first() {
    let handler: extern "C" fn(libc::c_int) = on_signal_finish;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only uses async-signal-safe calls.
        unsafe {
            libc::signal(sig, handler as libc::sighandler_t);
        }
    }
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Blocks until Ctrl-C or SIGTERM comes (after [`install`]); at once if one already came.
pub fn wait_for_stop() {
    let mut fd = libc::pollfd {
        fd: WAKE_READ.load(Ordering::SeqCst),
        events: libc::POLLIN,
        revents: 0,
    };
    while !requested() {
        if fd.fd < 0 {
            // No pipe to wait on: poll the flag instead.
            std::thread::sleep(std::time::Duration::from_millis(100));
            continue;
        }
        // SAFETY: poll reads and writes the one pollfd it is given.
        unsafe { libc::poll(&mut fd, 1, -1) };
    }
}

/// Waits for the user to press Enter on standard input, or for Ctrl-C / SIGTERM, whichever
/// comes first: a pause must not outlast a stop that was asked for (a blocked read would, as
/// the handler lets reads restart). True for Enter.
pub fn wait_for_enter() -> bool {
    let stdin = std::io::stdin();
    if !wait_readable_or_stop(stdin.as_raw_fd()) {
        return false;
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line).is_ok_and(|read| read > 0)
}

/// Waits until `fd` has something to read (true), or Ctrl-C / SIGTERM comes first (false).
pub fn wait_readable_or_stop(fd: std::os::fd::RawFd) -> bool {
    let mut fds = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: WAKE_READ.load(Ordering::SeqCst),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        if requested() {
            return false;
        }
        // SAFETY: poll reads and writes the two pollfds it is given; a negative fd (no pipe)
        // is ignored by poll.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if requested() {
            return false;
        }
        if n > 0 && fds[0].revents != 0 {
            return true;
        }
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return false;
        }
    }
}
