//! The host-wide lock: one vxlab at a time between "is this bridge name and subnet free?" and
//! "create it".
//!
//! Each lab has its own lock in its state directory, but two labs started at once each found
//! the same bridge (8 of 15 runs) or subnet (11 of 15) free and both used it. This lock lives
//! under `/run/vxlab`, whatever `VXLAB_STATE_DIR` says, so labs in different state
//! directories take the same one. Hold it only around such check-then-create steps: it is
//! host-wide, and everyone else waits for it.

use std::fs::File;
use std::io::{self, Write};
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
    let held = flocks(&text);
    if let Some((pid, _)) = held.iter().find(|(_, f)| *f == (major, minor, meta.ino())) {
        return Some(*pid);
    }
    // On btrfs (and overlayfs over several devices) /proc/locks names the file system's
    // device, not the one stat(2) gives: a holder with the same inode number is confirmed
    // by a descriptor it has open on this very file.
    held.iter()
        .filter(|(_, f)| f.2 == meta.ino())
        .map(|(pid, _)| *pid)
        .find(|pid| has_open(*pid, (dev, meta.ino())))
}

/// Whether process `pid` has a descriptor open on the file with this device and inode.
fn has_open(pid: u32, file: (u64, u64)) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|fd| std::fs::metadata(fd.path()).is_ok_and(|m| (m.dev(), m.ino()) == file))
}

/// The `FLOCK`s held, as `/proc/locks` lists them: the holder's pid and the file's
/// `(major, minor, inode)`, from lines like `1: FLOCK  ADVISORY  WRITE 2381 fd:01:1316092 0
/// EOF`. Waiters (`1: -> FLOCK …`) hold nothing.
fn flocks(text: &str) -> Vec<(u32, (u64, u64, u64))> {
    text.lines()
        .filter_map(|line| {
            let w: Vec<&str> = line.split_whitespace().collect();
            if w.len() < 6 || w[1] != "FLOCK" {
                return None;
            }
            let mut id = w[5].split(':');
            let major = u64::from_str_radix(id.next()?, 16).ok()?;
            let minor = u64::from_str_radix(id.next()?, 16).ok()?;
            let inode = id.next()?.parse::<u64>().ok()?;
            Some((w[4].parse().ok()?, (major, minor, inode)))
        })
        .collect()
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
        Self::acquire_named(
            dir,
            LOCK_FILE,
            wait,
            "checks and takes names and subnets for one lab at a time",
        )
    }

    /// The host-wide lock of workshop pools in [`RUN_DIR`]: held while a class's copies are
    /// given underlays and brought up, so that two classes (of any state directories) never
    /// pick the same subnets. Waiting for it is said, and Ctrl-C stops the wait.
    pub fn take_pool() -> Result<HostLock, HostLockError> {
        Self::acquire_named(
            Path::new(RUN_DIR),
            POOL_LOCK_FILE,
            true,
            "gives one class at a time its copies' subnets and brings them up",
        )
        .map(|l| l.expect("a waiting lock is always taken"))
    }

    fn acquire_named(
        dir: &Path,
        name: &str,
        wait: bool,
        purpose: &str,
    ) -> Result<Option<HostLock>, HostLockError> {
        let path = dir.join(name);
        let err = |source| HostLockError {
            path: path.clone(),
            source,
        };
        let mut file = open_lock_file(dir, name).map_err(err)?;
        if !flock(&file, false).map_err(err)? {
            if !wait {
                return Ok(None);
            }
            // Said, and given up on Ctrl-C: a wait nobody can see or stop looks like a hang.
            eprintln!(
                "vxlab: waiting for {}, which {purpose}",
                file.metadata()
                    .ok()
                    .and_then(|m| flock_holder(&m))
                    .map_or("another vxlab".to_string(), |pid| {
                        format!("`{}`", super::process::described(pid))
                    })
            );
            if !wait_or_stop(&file).map_err(err)? {
                return Err(err(io::ErrorKind::Interrupted.into()));
            }
        }
        // Who holds it, for anyone wondering what they wait for.
        file.set_len(0).map_err(err)?;
        writeln!(file, "{}", std::process::id()).map_err(err)?;
        Ok(Some(HostLock { _file: file }))
    }
}

const LOCK_FILE: &str = "host.lock";
const POOL_LOCK_FILE: &str = "pool.lock";

/// Takes the `flock` on `file` in a thread while this one waits for it or for Ctrl-C /
/// SIGTERM; false when the stop came first (the lock, if the thread gets it later, goes
/// with the process).
fn wait_or_stop(file: &File) -> io::Result<bool> {
    let mut fds = [-1; 2];
    // SAFETY: pipe2 fills the two-element array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just made and are owned here alone.
    let (read, write) = unsafe {
        use std::os::fd::FromRawFd;
        (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))
    };
    // A second descriptor of the same open file: the lock it takes is the file's.
    let same = file.try_clone()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let got = flock(&same, true);
        let _ = tx.send(got);
        // Closing the pipe's write end wakes the waiter.
        drop(write);
    });
    if !crate::interrupt::wait_readable_or_stop(read.as_raw_fd()) {
        return Ok(false);
    }
    rx.recv().map_err(io::Error::other)?
}

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
    fn a_holder_is_confirmed_by_a_descriptor_it_has_open_on_the_file() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let _open = File::create(&a).unwrap();
        std::fs::write(&b, "").unwrap();
        let id = |p: &Path| {
            let m = std::fs::metadata(p).unwrap();
            (m.dev(), m.ino())
        };
        assert!(has_open(std::process::id(), id(&a)));
        assert!(!has_open(std::process::id(), id(&b)));
    }

    #[test]
    fn proc_locks_lines_give_the_holders_not_the_waiters_nor_other_kinds_of_lock() {
        let text = "1: POSIX  ADVISORY  WRITE 77 fd:01:42 0 EOF\n\
                    2: -> FLOCK  ADVISORY  WRITE 2400 fd:01:1316092 0 EOF\n\
                    2: FLOCK  ADVISORY  WRITE 2381 fd:01:1316092 0 EOF\n\
                    3: FLOCK  ADVISORY  WRITE 9 00:2e:7 0 EOF\n";
        assert_eq!(
            flocks(text),
            [(2381, (0xfd, 1, 1316092)), (9, (0, 0x2e, 7))]
        );
    }
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Barrier};

    #[test]
    fn one_holder_at_a_time_and_the_next_gets_it_when_released() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let held = HostLock::take_in(&run).unwrap();
        // Its file names the holder, for anyone wondering what they wait for.
        let text = std::fs::read_to_string(run.join(LOCK_FILE)).unwrap();
        assert_eq!(text.trim().parse::<u32>().ok(), Some(std::process::id()));
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
