//! The host-wide lock: one vxlab at a time between "is this bridge name and subnet free?" and
//! "create it".
//!
//! Each lab has its own lock in its state directory, but two labs started at once each found
//! the same bridge (8 of 15 runs) or subnet (11 of 15) free and both used it. This lock lives
//! under `/run/vxlab`, whatever `VXLAB_STATE_DIR` says, so labs in different state
//! directories take the same one. Hold it only around such check-then-create steps: it is
//! host-wide, and everyone else waits for it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::files;

/// Where host-wide records live: on a tmpfs, so they go when the host's links do (at boot).
pub const RUN_DIR: &str = "/run/vxlab";

/// Taking the host lock failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot take the host-wide lock {}", path.display())]
pub struct HostLockError {
    /// The lock file.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: io::Error,
}

/// An exclusive hold on the host; released when dropped.
#[derive(Debug)]
pub struct HostLock {
    _file: File,
}

/// Takes an exclusive `flock` on `file`, waiting if `wait`; false when busy and not waiting.
/// (Retried when a signal interrupts the wait.)
pub fn flock(file: &File, wait: bool) -> io::Result<bool> {
    let op = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    loop {
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if !wait => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// The process that holds a `flock` on the file `meta` describes, as `/proc/locks` lists it;
/// `None` when no one does. Looking takes no lock, so it never gets in a taker's way.
pub fn flock_holder(meta: &std::fs::Metadata) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let text = std::fs::read_to_string("/proc/locks").ok()?;
    let dev = meta.dev();
    // The kernel's device number split as glibc's major() and minor() do.
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    holder_listed(&text, (major, minor, meta.ino()))
}

/// The holder of a `FLOCK` on file `(major, minor, inode)` in the text of `/proc/locks`:
/// `1: FLOCK  ADVISORY  WRITE 2381 fd:01:1316092 0 EOF`. Waiters (`1: -> FLOCK …`) hold
/// nothing.
fn holder_listed(text: &str, file: (u64, u64, u64)) -> Option<u32> {
    text.lines().find_map(|line| {
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() < 6 || w[1] != "FLOCK" {
            return None;
        }
        let mut id = w[5].split(':');
        let major = u64::from_str_radix(id.next()?, 16).ok()?;
        let minor = u64::from_str_radix(id.next()?, 16).ok()?;
        let inode = id.next()?.parse::<u64>().ok()?;
        ((major, minor, inode) == file)
            .then(|| w[4].parse().ok())
            .flatten()
    })
}

/// Opens lock file `name` in `dir` (made 0700 and checked like a state directory).
pub(crate) fn open_lock_file(dir: &Path, name: &str) -> io::Result<File> {
    files::private_dir(dir)?;
    files::open_append(&dir.join(name), files::PRIVATE)
}

impl HostLock {
    /// Takes the host-wide lock in [`RUN_DIR`], waiting while another vxlab holds it.
    pub fn take() -> Result<HostLock, HostLockError> {
        Self::take_in(Path::new(RUN_DIR))
    }

    /// Takes the lock in `dir` instead of [`RUN_DIR`] (for tests).
    pub fn take_in(dir: &Path) -> Result<HostLock, HostLockError> {
        Self::acquire(dir, true).map(|l| l.expect("a waiting lock is always taken"))
    }

    /// Takes the lock in `dir` only if no one holds it.
    pub fn try_take_in(dir: &Path) -> Result<Option<HostLock>, HostLockError> {
        Self::acquire(dir, false)
    }

    fn acquire(dir: &Path, wait: bool) -> Result<Option<HostLock>, HostLockError> {
        let path = dir.join(LOCK_FILE);
        let err = |source| HostLockError {
            path: path.clone(),
            source,
        };
        let mut file = open_lock_file(dir, LOCK_FILE).map_err(err)?;
        if !flock(&file, wait).map_err(err)? {
            return Ok(None);
        }
        // Who holds it, for anyone wondering what they wait for.
        file.set_len(0).map_err(err)?;
        writeln!(file, "{}", std::process::id()).map_err(err)?;
        Ok(Some(HostLock { _file: file }))
    }

    /// The process that holds (or last held) the lock in `dir`, as written in its file.
    pub fn holder_in(dir: &Path) -> Option<u32> {
        let mut text = String::new();
        files::open_no_follow(&dir.join(LOCK_FILE))
            .ok()?
            .read_to_string(&mut text)
            .ok()?;
        text.trim().parse().ok()
    }
}

const LOCK_FILE: &str = "host.lock";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_of_a_lock_is_found_in_proc_locks_and_none_once_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let file = File::create(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(flock_holder(&meta), None);
        assert!(flock(&file, false).unwrap());
        assert_eq!(flock_holder(&meta), Some(std::process::id()));
        drop(file);
        assert_eq!(flock_holder(&meta), None);
    }

    #[test]
    fn proc_locks_lines_name_the_holder_not_the_waiters_nor_other_files() {
        let text = "1: POSIX  ADVISORY  WRITE 77 fd:01:42 0 EOF\n\
                    2: FLOCK  ADVISORY  WRITE 2381 fd:01:1316092 0 EOF\n\
                    2: -> FLOCK  ADVISORY  WRITE 2400 fd:01:1316092 0 EOF\n";
        assert_eq!(holder_listed(text, (0xfd, 1, 1316092)), Some(2381));
        assert_eq!(holder_listed(text, (0xfd, 1, 42)), None);
        assert_eq!(holder_listed(text, (0xfd, 2, 1316092)), None);
    }
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Barrier};

    #[test]
    fn one_holder_at_a_time_and_the_next_gets_it_when_released() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let held = HostLock::take_in(&run).unwrap();
        assert_eq!(HostLock::holder_in(&run), Some(std::process::id()));
        assert!(HostLock::try_take_in(&run).unwrap().is_none());
        let released = Arc::new(AtomicBool::new(false));
        let started = Arc::new(Barrier::new(2));
        let waiter = {
            let (run, released, started) = (run.clone(), released.clone(), started.clone());
            std::thread::spawn(move || {
                started.wait();
                let _l = HostLock::take_in(&run).unwrap();
                // It only got the lock once the holder let go.
                assert!(released.load(Ordering::SeqCst));
            })
        };
        started.wait();
        released.store(true, Ordering::SeqCst);
        drop(held);
        waiter.join().unwrap();
        assert!(HostLock::try_take_in(&run).unwrap().is_some());
    }

    #[test]
    fn a_run_dir_others_can_write_to_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let err = HostLock::take_in(dir.path()).unwrap_err();
        assert!(format!("{:#}", anyhow::Error::new(err)).contains("other users can write"),);
    }
}
