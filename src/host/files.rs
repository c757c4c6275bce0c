//! Writing files where someone else may have planted a symlink.
//!
//! vxlab runs as root and writes into directories a user names (`capture --pcap FILE`,
//! `graph -o FILE`, `VXLAB_STATE_DIR`). Opening such a path for writing follows a symlink
//! planted there and overwrites whatever it points at. Here every file is written as a new
//! file beside it (`O_CREAT | O_EXCL | O_NOFOLLOW`: never an existing file, never through a
//! symlink) and renamed over the path, which replaces a symlink rather than following it. A
//! reader also never sees half a file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// Mode for files users read (the umask applies).
pub const SHARED: u32 = 0o666;
/// Mode for files only vxlab's user may read: state, keys, tokens.
pub const PRIVATE: u32 = 0o600;

/// Why a directory with owner `uid` and mode `mode` must not hold files that user `me` (vxlab)
/// trusts, if it must not: someone else owns it, or others can write to it.
pub fn unsafe_dir(uid: u32, mode: u32, me: u32) -> Option<String> {
    if uid != me {
        return Some(format!(
            "it belongs to uid {uid}, not to the user running vxlab (uid {me})"
        ));
    }
    if mode & 0o022 != 0 {
        return Some(format!(
            "other users can write to it (mode {:o}); make it writable only by its owner",
            mode & 0o7777
        ));
    }
    None
}

/// Makes directory `dir` (0700, parents as needed) unless it exists, and refuses it when it is
/// not a directory of the user running vxlab that only that user can write to.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let why = if !meta.is_dir() {
        Some("it is not a directory".to_string())
    } else {
        unsafe_dir(meta.uid(), meta.mode(), me)
    };
    match why {
        None => Ok(()),
        Some(why) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("refusing {}: {why}", dir.display()),
        )),
    }
}

/// Why a path to a directory vxlab keeps state in cannot be trusted, if it cannot: a directory
/// on the way there (the directory itself aside, which [`unsafe_dir`] judges) that someone
/// else owns or may write to, or a symlink on the way that someone else made. Either lets
/// another user point the path elsewhere between two runs (at a directory of root's, which
/// `down` then empties). Symlinks are followed as the kernel would, each judged where it is.
/// Sticky directories (`/tmp`) are fine: others cannot replace what is not theirs there.
pub fn untrusted_path(path: &Path, me: u32) -> Option<String> {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    use std::os::unix::fs::MetadataExt;
    let trusted = |uid: u32| uid == 0 || uid == me;
    // A directory on the way: its owner and who may write to it.
    let judge_dir = |dir: &Path| -> Option<String> {
        let meta = std::fs::metadata(dir).ok()?;
        let open = meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0;
        if !trusted(meta.uid()) {
            Some(format!(
                "{} on the way to it belongs to uid {}",
                dir.display(),
                meta.uid()
            ))
        } else if open {
            Some(format!(
                "{} on the way to it can be written by other users (mode {:o})",
                dir.display(),
                meta.mode() & 0o7777
            ))
        } else {
            None
        }
    };
    let parts =
        |p: &Path| -> Vec<OsString> { p.components().map(|c| c.as_os_str().to_owned()).collect() };
    let mut here = if path.is_absolute() {
        PathBuf::from("/")
    } else {
        std::env::current_dir().ok()?
    };
    let mut todo: VecDeque<OsString> = parts(path).into();
    let mut hops = 0;
    while let Some(part) = todo.pop_front() {
        match part.to_str() {
            Some("/") => here = PathBuf::from("/"),
            Some(".") => {}
            Some("..") => {
                here.pop();
            }
            _ => {
                if let Some(why) = judge_dir(&here) {
                    return Some(why);
                }
                let next = here.join(&part);
                let Ok(meta) = std::fs::symlink_metadata(&next) else {
                    // Not there (yet): nothing beyond it to judge.
                    return None;
                };
                if !meta.file_type().is_symlink() {
                    here = next;
                    continue;
                }
                if !trusted(meta.uid()) {
                    return Some(format!(
                        "the symlink {} on the way to it belongs to uid {}",
                        next.display(),
                        meta.uid()
                    ));
                }
                hops += 1;
                if hops > 40 {
                    return Some("too many symlinks on the way to it".into());
                }
                let target = std::fs::read_link(&next).ok()?;
                for p in parts(&target).into_iter().rev() {
                    todo.push_front(p);
                }
            }
        }
    }
    None
}

/// A new, unique temporary path beside `path`.
fn temporary(path: &Path) -> io::Result<PathBuf> {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".{}.{n}.tmp", std::process::id()));
    Ok(path.with_file_name(tmp))
}

/// Creates a new file at `path` that did not exist, without following a symlink there.
pub fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Opens `path` for reading, refusing a symlink.
pub fn open_no_follow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Opens `path` for appending, creating it with `mode` if needed, refusing a symlink: for logs
/// that grow while a command runs.
pub fn open_append(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Writes `bytes` to `path` through a new temporary file in the same directory, renamed over
/// `path`. A symlink at `path` is replaced, never followed.
pub fn write_replacing(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temporary(path)?;
    let written = create_new(&tmp, mode)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    if written.is_ok() {
        sweep_orphans(path);
    }
    written
}

/// Removes the temporaries of `path` that a killed process left (`kill -9` between create and
/// rename), once per directory per process: those over a minute old (a write takes
/// microseconds) whose process this machine's /proc no longer lists. A live writer's are left
/// alone, and so is everything when /proc cannot tell.
fn sweep_orphans(path: &Path) {
    static SWEPT: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return;
    };
    {
        let mut swept = SWEPT.lock().unwrap_or_else(|p| p.into_inner());
        if swept.iter().any(|d| d == dir) || !Path::new("/proc/self").exists() {
            return;
        }
        swept.push(dir.to_path_buf());
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{name}.");
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = file
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix)?.strip_suffix(".tmp"))
            .and_then(|rest| rest.split_once('.'))
            .filter(|(_, n)| n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= ORPHAN_AGE));
        if old && !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// How old a temporary must be before a sweep may take it for a dead writer's.
const ORPHAN_AGE: std::time::Duration = std::time::Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_symlink_at_the_path_is_replaced_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let out = dir.path().join("capture.pcap");
        std::os::unix::fs::symlink(&victim, &out).unwrap();
        write_replacing(&out, b"frames", SHARED).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "frames");
        assert!(!std::fs::symlink_metadata(&out).unwrap().is_symlink());
        // Nothing else is left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn private_files_are_0600_and_a_directory_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("state.json");
        write_replacing(&f, b"{}", PRIVATE).unwrap();
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("x"), "").unwrap();
        assert!(write_replacing(&sub, b"", PRIVATE).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_killed_writers_temporaries_go_and_a_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("neighbours.json");
        // No process has pid u32::MAX (pid_max is at most 2^22).
        let orphan = dir
            .path()
            .join(format!(".neighbours.json.{}.3.tmp", u32::MAX));
        let live = dir
            .path()
            .join(format!(".neighbours.json.{}.999.tmp", std::process::id()));
        let other = dir.path().join(format!(".other.json.{}.1.tmp", u32::MAX));
        let young = dir
            .path()
            .join(format!(".neighbours.json.{}.4.tmp", u32::MAX));
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for p in [&orphan, &live, &other, &young] {
            let f = std::fs::File::create(p).unwrap();
            if p != &young {
                f.set_modified(hour_ago).unwrap();
            }
        }
        write_replacing(&f, b"{}", PRIVATE).unwrap();
        assert!(!orphan.exists(), "a dead writer's temporary stayed");
        assert!(live.exists(), "a live writer's temporary was removed");
        assert!(young.exists(), "a temporary being written was removed");
        assert!(other.exists(), "another file's temporary was touched");
        assert_eq!(std::fs::read(&f).unwrap(), b"{}");
    }

    #[test]
    fn opening_refuses_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t");
        std::fs::write(&target, "x").unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(open_no_follow(&link).is_err());
        assert!(open_append(&link, PRIVATE).is_err());
        assert!(create_new(&link, PRIVATE).is_err());
        assert!(open_no_follow(&target).is_ok());
    }
}
