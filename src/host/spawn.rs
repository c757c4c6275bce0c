//! Starting a guest process on this host, inside a network namespace: on a pseudo-terminal or
//! on pipes, and, for students, confined.
//!
//! A network namespace is not a machine: a root shell in one is root on the host. A confined
//! process therefore gets (all set up in the child between fork and exec):
//! - its own mount namespace, where `/sys` shows the guest's devices (as `ip netns exec` does),
//!   `/tmp` is its own, and the host's other namespaces (`/run/netns`) and vxlab's state (the
//!   tokens, keys and lab files) are hidden under empty file systems;
//! - an unprivileged uid of its own lab (see [`crate::terminal::student_uid`]) with only the
//!   network capabilities a student needs (`CAP_NET_ADMIN`, `CAP_NET_RAW`,
//!   `CAP_NET_BIND_SERVICE`), kept across exec as ambient capabilities, every other one dropped
//!   from the bounding set, and `no_new_privs` so no set-uid program gives root back;
//! - a cap on its number of processes;
//! - its own PID namespace with its own `/proc`: no host process is in sight, so none can be
//!   used to name its network namespace (`ip link … netns PID`, which `CAP_NET_ADMIN` would
//!   otherwise allow), and everything it started ends when it ends;
//! - private `/tmp`, `/dev/shm`, `/var/tmp` and `/run/lock`, and its own System V IPC and
//!   POSIX message queues (an IPC namespace).
//!
//! So it can change its own namespace's links, addresses and FDB, and nothing else: it cannot
//! reach another namespace (no `CAP_SYS_ADMIN`, their files are hidden, their processes out of
//! sight), write the host's files or read vxlab's secrets, or trace another copy's processes
//! (another uid).

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::terminal::{GuestProcess, Launch, ProcessControl, WinSize};

/// Processes one confined uid may have at once: plenty for a shell, a ping and a capture,
/// too few for a fork bomb to hurt the host.
const CONFINED_PROCESSES: libc::rlim_t = 256;

/// Capabilities a confined process keeps (numbers from `linux/capability.h`): bind low ports
/// (10), change links and addresses (12), open raw sockets for ping and tcpdump (13).
const KEPT_CAPS: [u32; 3] = [10, 12, 13];

/// The program itself could not be executed in the guest: it is not there, or it cannot be
/// run. (Everything else that fails in starting it is another error.)
#[derive(Debug, thiserror::Error)]
#[error("`{program}` {}", if *.found { "cannot be run there (permission denied)" } else { "is not installed in the guest" })]
pub struct NotExecuted {
    /// The program.
    pub program: String,
    /// Whether it is there (and so could not be run).
    pub found: bool,
}

/// Starts `launch` inside the network namespace bound at `netns`, with the host name
/// `hostname` (in a UTS namespace of its own, so `hostname` says the guest's name), hiding
/// `hide` (directories on the host) from it when it is confined.
pub fn spawn(
    launch: &Launch,
    netns: &Path,
    hostname: &str,
    hide: &[PathBuf],
) -> io::Result<GuestProcess> {
    let (program, args) = launch
        .argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let ns = File::open(netns)?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", if launch.confined { "/tmp" } else { "/root" })
        .envs(launch.env.iter().map(|(k, v)| (k, v)));
    let pty = match launch.tty {
        Some(size) => {
            let (master, slave) = open_pty(size)?;
            cmd.stdin(Stdio::from(slave.try_clone()?))
                .stdout(Stdio::from(slave.try_clone()?))
                .stderr(Stdio::from(slave));
            Some(master)
        }
        None => {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            None
        }
    };
    let setup = ChildSetup::new(launch, &ns, hostname, hide, pty.is_some())?;
    // SAFETY: the closure only makes system calls on values prepared before the fork; it does
    // not allocate or take locks.
    unsafe {
        cmd.pre_exec(move || setup.run());
    }
    let mut child = cmd.spawn().map_err(|e| match e.raw_os_error() {
        Some(errno @ (libc::ENOENT | libc::EACCES)) => io::Error::new(
            e.kind(),
            NotExecuted {
                program: program.clone(),
                found: errno == libc::EACCES,
            },
        ),
        _ => e,
    })?;
    // The child's copies of the slave end are the only ones left now: `cmd` holds the others.
    drop(cmd);
    let pid = child.id() as libc::pid_t;
    Ok(match pty {
        Some(master) => {
            let reader = File::from(master.try_clone()?);
            let resize = master.try_clone()?;
            GuestProcess {
                stdin: Box::new(File::from(master)),
                stdout: Box::new(PtyReader(reader)),
                stderr: None,
                control: Box::new(LocalControl {
                    child: Mutex::new(child),
                    pid,
                    ended: AtomicBool::new(false),
                    pty: Some(File::from(resize)),
                }),
            }
        }
        None => GuestProcess {
            stdin: Box::new(child.stdin.take().expect("piped")),
            stdout: Box::new(child.stdout.take().expect("piped")),
            stderr: Some(Box::new(child.stderr.take().expect("piped"))),
            control: Box::new(LocalControl {
                child: Mutex::new(child),
                pid,
                ended: AtomicBool::new(false),
                pty: None,
            }),
        },
    })
}

/// A new pseudo-terminal of `size`: master (close-on-exec) and slave.
fn open_pty(size: WinSize) -> io::Result<(OwnedFd, File)> {
    let (mut master, mut slave) = (-1, -1);
    let ws = winsize(size);
    // SAFETY: openpty writes two file descriptors; the name buffer and termios are optional.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openpty returned two open descriptors that nothing else owns.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), File::from_raw_fd(slave)) };
    // The shell must not inherit the master end: it would keep its own terminal open forever.
    // SAFETY: fcntl on a descriptor we own.
    if unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((master, slave))
}

fn winsize(size: WinSize) -> libc::winsize {
    libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Reads a pty's master end: the kernel answers EIO once the last process on the terminal
/// has gone, which is the end of the output, not an error.
struct PtyReader(File);

impl Read for PtyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.read(buf) {
            Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(0),
            other => other,
        }
    }
}

struct LocalControl {
    child: Mutex<Child>,
    pid: libc::pid_t,
    ended: AtomicBool,
    pty: Option<File>,
}

impl ProcessControl for LocalControl {
    fn resize(&self, size: WinSize) -> io::Result<()> {
        let Some(pty) = &self.pty else {
            return Ok(());
        };
        let ws = winsize(size.clamped());
        // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer; the kernel then signals the
        // terminal's foreground process group (SIGWINCH).
        if unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn wait(&self) -> io::Result<i32> {
        let status = self
            .child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .wait()?;
        self.ended.store(true, Ordering::SeqCst);
        Ok(status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
    }

    fn hang_up(&self) {
        if !self.ended.load(Ordering::SeqCst) {
            // SAFETY: signalling our own child, which has not been reaped, and the process
            // group (or session) it leads: what a closed terminal would hang up.
            unsafe {
                libc::kill(-self.pid, libc::SIGHUP);
                libc::kill(self.pid, libc::SIGHUP);
            }
        }
    }
}

/// Everything the child does between fork and exec, prepared before the fork: the child may
/// not allocate.
struct ChildSetup {
    netns: libc::c_int,
    hostname: CString,
    session: bool,
    confine: Option<Confinement>,
}

struct Confinement {
    uid: libc::uid_t,
    root: CString,
    sys: CString,
    sysfs: CString,
    tmp: CString,
    tmpfs: CString,
    proc_dir: CString,
    procfs: CString,
    /// The host's other world-writable directories, each given a small private tmpfs.
    scratch: Vec<CString>,
    hide: Vec<CString>,
}

fn cstr(s: &[u8]) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
}

impl ChildSetup {
    fn new(
        launch: &Launch,
        ns: &File,
        hostname: &str,
        hide: &[PathBuf],
        session: bool,
    ) -> io::Result<Self> {
        let confine = if launch.confined {
            Some(Confinement {
                uid: launch.uid,
                root: cstr(b"/")?,
                sys: cstr(b"/sys")?,
                sysfs: cstr(b"sysfs")?,
                tmp: cstr(b"/tmp")?,
                tmpfs: cstr(b"tmpfs")?,
                proc_dir: cstr(b"/proc")?,
                procfs: cstr(b"proc")?,
                scratch: ["/dev/shm", "/var/tmp", "/run/lock"]
                    .iter()
                    .filter(|p| Path::new(p).is_dir())
                    .map(|p| cstr(p.as_bytes()))
                    .collect::<io::Result<_>>()?,
                hide: hide
                    .iter()
                    .filter(|p| p.is_dir())
                    .map(|p| cstr(p.as_os_str().as_bytes()))
                    .collect::<io::Result<_>>()?,
            })
        } else {
            None
        };
        // The namespace file stays open in the parent until spawn returns, after the exec.
        Ok(ChildSetup {
            netns: ns.as_raw_fd(),
            hostname: cstr(hostname.as_bytes())?,
            session,
            confine,
        })
    }

    /// Runs in the child. Only system calls.
    fn run(&self) -> io::Result<()> {
        let check = |r: libc::c_int| {
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY: plain system calls on descriptors and C strings owned by `self`.
        unsafe {
            if self.session {
                // A session of its own with the pty as its controlling terminal: job control,
                // Ctrl-C and window-size changes reach the shell.
                check(libc::setsid())?;
                check(libc::ioctl(0, libc::TIOCSCTTY, 0))?;
            } else {
                // A process group of its own, so that ending it ends what it started too.
                check(libc::setpgid(0, 0))?;
            }
            // Signals as any program starts with them, whatever vxlab was started with (under
            // `nohup`, SIGHUP is ignored and would stay so across exec: a hang-up would then
            // not end the process).
            for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGQUIT, libc::SIGTERM] {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
            check(libc::setns(self.netns, libc::CLONE_NEWNET))?;
            check(libc::unshare(libc::CLONE_NEWUTS))?;
            check(libc::sethostname(
                self.hostname.as_ptr(),
                self.hostname.as_bytes().len(),
            ))?;
            if let Some(c) = &self.confine {
                c.apply()?;
            }
        }
        Ok(())
    }
}

impl Confinement {
    /// See the module's documentation.
    ///
    /// # Safety
    /// Only between fork and exec, in the child.
    unsafe fn apply(&self) -> io::Result<()> {
        let check = |r: libc::c_int| {
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        let null = std::ptr::null::<libc::c_char>();
        let none = std::ptr::null::<libc::c_void>();
        unsafe {
            // Its own mounts, and its own System V IPC and POSIX message queues: nothing there
            // is shared with another copy's student.
            check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC))?;
            // Nothing mounted here may leak back to the host.
            check(libc::mount(
                null,
                self.root.as_ptr(),
                null,
                libc::MS_REC | libc::MS_PRIVATE,
                none,
            ))?;
            // /sys as the guest's namespace sees it; the host's /sys lists the host's links.
            // (It may not be a mount point of its own: then there is nothing to take away.)
            libc::umount2(self.sys.as_ptr(), libc::MNT_DETACH);
            check(libc::mount(
                self.sysfs.as_ptr(),
                self.sys.as_ptr(),
                self.sysfs.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                none,
            ))?;
            let empty = c"mode=0755,size=64k".as_ptr().cast::<libc::c_void>();
            for dir in &self.hide {
                check(libc::mount(
                    self.tmpfs.as_ptr(),
                    dir.as_ptr(),
                    self.tmpfs.as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY,
                    empty,
                ))?;
            }
            check(libc::mount(
                self.tmpfs.as_ptr(),
                self.tmp.as_ptr(),
                self.tmpfs.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                c"mode=1777,size=64m".as_ptr().cast(),
            ))?;
            for dir in &self.scratch {
                check(libc::mount(
                    self.tmpfs.as_ptr(),
                    dir.as_ptr(),
                    self.tmpfs.as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    c"mode=1777,size=16m".as_ptr().cast(),
                ))?;
            }
            check(libc::chdir(self.tmp.as_ptr()))?;
            // A PID namespace of its own: the host's processes are out of sight, so no command
            // can name another namespace by a process's PID (`ip link … netns PID`), and when
            // the shell ends, everything it started ends with it. The first process of a PID
            // namespace is its init, so this process forks once more, waits for that one and
            // exits as it did.
            check(libc::unshare(libc::CLONE_NEWPID))?;
            let init = libc::fork();
            if init < 0 {
                return Err(io::Error::last_os_error());
            }
            if init > 0 {
                // Nothing of the spawner's stays open here: its exec-error pipe above all,
                // which would keep it waiting until the shell ends.
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                let mut status = 0;
                loop {
                    let r = libc::waitpid(init, &mut status, 0);
                    if r == init {
                        break;
                    }
                    if r < 0 && *libc::__errno_location() != libc::EINTR {
                        libc::_exit(127);
                    }
                }
                libc::_exit(if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    128 + libc::WTERMSIG(status)
                });
            }
            // The namespace's init: a /proc that shows its own processes only.
            check(libc::mount(
                self.procfs.as_ptr(),
                self.proc_dir.as_ptr(),
                self.procfs.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                none,
            ))?;
            let nproc = libc::rlimit {
                rlim_cur: CONFINED_PROCESSES,
                rlim_max: CONFINED_PROCESSES,
            };
            check(libc::setrlimit(libc::RLIMIT_NPROC, &nproc))?;
            // Drop every other capability from the bounding set while we may (CAP_SETPCAP).
            for cap in 0..64u32 {
                if !KEPT_CAPS.contains(&cap)
                    && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) < 0
                    && *libc::__errno_location() != libc::EINVAL
                {
                    return Err(io::Error::last_os_error());
                }
            }
            check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0))?;
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setresgid(self.uid, self.uid, self.uid))?;
            check(libc::setresuid(self.uid, self.uid, self.uid))?;
            // Set after the uid changed (which clears it): the waiting parent ended (killed,
            // hung up) ends this namespace too.
            check(libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ))?;
            set_caps()?;
            for cap in KEPT_CAPS {
                check(libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    cap as libc::c_ulong,
                    0,
                    0,
                ))?;
            }
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        }
        Ok(())
    }
}

/// Sets the permitted, effective and inheritable sets to [`KEPT_CAPS`] (inheritable is what
/// lets them be raised as ambient ones).
///
/// # Safety
/// Only between fork and exec, in the child.
unsafe fn set_caps() -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mask = KEPT_CAPS.iter().fold(0u32, |m, c| m | (1 << c));
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [
        Data {
            effective: mask,
            permitted: mask,
            inheritable: mask,
        },
        Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
    ];
    // SAFETY: capset reads a version 3 header and two data words.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
