//! Named network namespaces, made and removed as `ip netns add` and `ip netns del` do, but
//! without forking.
//!
//! rtnetlink forks a child to create each namespace, and the child leaves through
//! `std::process::exit`. In a multithreaded process that exit path can block forever on a
//! lock another thread held at the fork (seen in 3 of 15 `up`s of a 100-guest lab). Here a
//! short-lived thread of our own unshares its network namespace, bind-mounts it onto
//! `/run/netns/NAME` and ends; the process never forks and the calling thread's namespace
//! never changes.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where named namespaces are bind-mounted, as `ip netns` keeps them.
pub const NETNS_DIR: &str = "/run/netns";

/// `statfs` type of the namespace file system (a bind-mounted namespace).
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// The bind mount of namespace `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Runs `f` on a short-lived thread that has entered the namespace bound at `netns`: setns
/// changes only that thread's network namespace, and sockets it opens and children it starts
/// stay in the namespace. The calling thread's namespace never changes.
pub fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let ns = std::fs::File::open(netns)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns with a valid namespace fd, on this thread only; the thread ends
            // with the scope.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("a thread inside a namespace panicked")))
    })
}

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn mount(source: Option<&Path>, target: &Path, flags: libc::c_ulong) -> io::Result<()> {
    let target = c_path(target)?;
    let source = source.map(c_path).transpose()?;
    let none = c"none";
    // SAFETY: every pointer is a valid NUL-terminated string or null, as mount(2) allows.
    check(unsafe {
        libc::mount(
            source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target.as_ptr(),
            none.as_ptr(),
            flags,
            std::ptr::null(),
        )
    })
}

/// Whether a namespace is mounted at `p` (and not, say, a plain file left by a killed run).
pub fn is_mounted(p: &Path) -> bool {
    let Ok(c) = c_path(p) else { return false };
    // SAFETY: statfs fills the zeroed struct we own from a valid path.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == NSFS_MAGIC
    }
}

/// Makes `/run/netns` a shared mount point, as `ip netns add` does, so namespaces mounted
/// later also appear in mount namespaces made from this one (`ip netns exec` makes one).
fn prepare_dir() -> io::Result<()> {
    // Once per process is enough, but a failure is retried on the next call.
    static READY: Mutex<bool> = Mutex::new(false);
    let mut ready = READY.lock().unwrap_or_else(|p| p.into_inner());
    if *ready {
        return Ok(());
    }
    let dir = Path::new(NETNS_DIR);
    std::fs::create_dir_all(dir)?;
    let shared = libc::MS_SHARED | libc::MS_REC;
    if let Err(e) = mount(None, dir, shared) {
        // Not a mount point yet: make it one by binding it onto itself.
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
        mount(Some(dir), dir, libc::MS_BIND | libc::MS_REC)?;
        mount(None, dir, shared)?;
    }
    *ready = true;
    Ok(())
}

/// Creates namespace `name`; returns false when it already exists. A plain file of that name
/// with nothing mounted on it (left by a run killed half-way) becomes the mount point.
pub fn add(name: &str) -> io::Result<bool> {
    prepare_dir()?;
    let target = path(name);
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&target)
    {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if is_mounted(&target) {
                return Ok(false);
            }
            if !std::fs::symlink_metadata(&target)?.file_type().is_file() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a namespace", target.display()),
                ));
            }
        }
        Err(e) => return Err(e),
    }
    let mount_point = target.clone();
    let made = std::thread::Builder::new()
        .name(format!("netns {name}"))
        .spawn(move || -> io::Result<()> {
            // SAFETY: unshare affects only this thread, which ends right after.
            check(unsafe { libc::unshare(libc::CLONE_NEWNET) })?;
            mount(
                Some(Path::new("/proc/thread-self/ns/net")),
                &mount_point,
                libc::MS_BIND,
            )
        })?
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")));
    if let Err(e) = made {
        let _ = std::fs::remove_file(&target);
        return Err(e);
    }
    Ok(true)
}

/// Ends every process that lives in the namespace bound at `netns` (a shell, a capture, the
/// class server's monitor): a namespace with a process in it outlives its deletion, devices
/// and all, and the process goes on in a lab that is gone. A process is in it when its
/// `/proc/PID/ns/net` is the same file (as `ip netns identify` finds it).
fn end_processes_in(netns: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(ns) = std::fs::metadata(netns) else {
        return;
    };
    let id = (ns.dev(), ns.ino());
    let of = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    // A name bound to the host's own namespace (`ip netns attach X 1`) is no lab's: its
    // processes are everyone's.
    if of(Path::new("/proc/self/ns/net")) == Some(id) {
        return;
    }
    let me = std::process::id();
    // Again until none is left: one may have started another between a look and its end.
    for _ in 0..8 {
        let mut ended = 0;
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != me && of(&entry.path().join("ns/net")) == Some(id) {
                // SAFETY: kill(2) with a pid read just now; at worst it is gone already.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
                ended += 1;
            }
        }
        if ended == 0 {
            return;
        }
    }
}

/// Deletes namespace `name`; returns false when there was none. A plain file of that name
/// with nothing mounted on it is removed too: an interrupted `ip netns add` or `up` leaves
/// one, and refusing it would make the lab impossible to take down.
pub fn delete(name: &str) -> io::Result<bool> {
    let target = path(name);
    let c = c_path(&target)?;
    end_processes_in(&target);
    let mut was_mounted = false;
    // A namespace mounted twice needs two unmounts; a few is plenty.
    for _ in 0..4 {
        // SAFETY: a valid NUL-terminated path.
        match check(unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) })
        {
            Ok(()) => was_mounted = true,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(false),
            // Nothing (more) mounted there.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
            Err(e) => return Err(e),
        }
    }
    // Only the plain file a namespace is mounted on is vxlab's to remove: a directory or
    // anything else of that name is someone else's, and left alone.
    match std::fs::symlink_metadata(&target) {
        Ok(m) if !m.file_type().is_file() => return Ok(was_mounted),
        _ => {}
    }
    match std::fs::remove_file(&target) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(was_mounted),
        Err(e) => Err(e),
    }
}
