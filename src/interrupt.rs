//! Ctrl-C and SIGTERM during `up`, `reset` or `walk`: the step in flight finishes (its resource
//! is already recorded), nothing new starts, and the command says what is left and how to
//! remove or finish it. Without this, an interrupted child could leave a half-made resource.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    REQUESTED.store(true, Ordering::SeqCst);
}

/// From now on, SIGINT and SIGTERM ask vxlab to stop between steps instead of killing it.
pub fn install() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, handler as libc::sighandler_t);
        }
    }
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
