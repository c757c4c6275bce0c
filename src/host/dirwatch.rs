//! Waiting for a change in a directory tree two levels deep, with inotify: the class server
//! learns that a lab came up or went down (a lab directory made or removed, its `state.json`
//! written) when it happens, instead of looking every few seconds.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What is watched in the root: directories made, removed or renamed.
const ROOT_EVENTS: u32 =
    libc::IN_CREATE | libc::IN_DELETE | libc::IN_MOVED_FROM | libc::IN_MOVED_TO;
/// What is watched in each directory under it: files written in place or renamed into place.
const DIR_EVENTS: u32 = libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO | libc::IN_DELETE;

/// An inotify watch on `root` and on every directory directly under it.
pub struct DirWatch {
    fd: OwnedFd,
    root: PathBuf,
    /// Watch descriptors of the directories under the root, by path.
    children: HashMap<PathBuf, i32>,
}

fn add_watch(fd: &OwnedFd, path: &Path, mask: u32) -> io::Result<i32> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))?;
    // SAFETY: a valid inotify fd and a NUL-terminated path that outlives the call.
    let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) };
    if wd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(wd)
    }
}

impl DirWatch {
    /// Watches `root` (which must exist) and the directories under it.
    pub fn new(root: &Path) -> io::Result<DirWatch> {
        // SAFETY: plain inotify_init1; the fd is owned at once.
        let raw = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        add_watch(&fd, root, ROOT_EVENTS | libc::IN_ONLYDIR)?;
        let mut w = DirWatch {
            fd,
            root: root.to_path_buf(),
            children: HashMap::new(),
        };
        w.follow_children();
        Ok(w)
    }

    /// Adds a watch on every directory now under the root (the kernel drops those of removed
    /// ones by itself).
    fn follow_children(&mut self) {
        let dirs: Vec<PathBuf> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        self.children.retain(|p, _| dirs.contains(p));
        for d in dirs {
            if !self.children.contains_key(&d) {
                if let Ok(wd) = add_watch(&self.fd, &d, DIR_EVENTS | libc::IN_ONLYDIR) {
                    self.children.insert(d, wd);
                }
            }
        }
    }

    /// Waits until something changed, or `timeout` passed; true when something changed.
    /// Every event waiting is taken at once, so a burst of changes is one wake-up.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            };
        }
        if n == 0 {
            return Ok(false);
        }
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: buf is writable for its length.
            let r = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if r <= 0 {
                break;
            }
        }
        // New lab directories are watched from now on.
        self.follow_children();
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lab_directory_and_its_state_file_wake_the_watcher() {
        let root = tempfile::tempdir().unwrap();
        let mut w = DirWatch::new(root.path()).unwrap();
        assert!(
            !w.wait(Duration::from_millis(10)).unwrap(),
            "nothing happened yet"
        );
        let lab = root.path().join("two-netns");
        std::fs::create_dir(&lab).unwrap();
        assert!(w.wait(Duration::from_secs(5)).unwrap());
        // A state file renamed into place, as vxlab writes it.
        std::fs::write(lab.join("state.json.tmp"), "{}").unwrap();
        assert!(w.wait(Duration::from_secs(5)).unwrap());
        std::fs::rename(lab.join("state.json.tmp"), lab.join("state.json")).unwrap();
        assert!(w.wait(Duration::from_secs(5)).unwrap());
        std::fs::remove_dir_all(&lab).unwrap();
        assert!(w.wait(Duration::from_secs(5)).unwrap());
        assert!(!w.wait(Duration::from_millis(10)).unwrap());
    }
}
