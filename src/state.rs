//! A lab's state on the host: `<state dir>/<lab>/` holds a copy of the lab file, the list of
//! every resource vxlab created (each recorded before it is created), and a lock.
//!
//! vxlab runs as root, and a state directory may be one a user named (`VXLAB_STATE_DIR`).
//! Whatever another user could plant there (a symlink named `lab.yaml`, a forged resource in
//! `state.json`) must not make root write or delete elsewhere. So: a state directory, and each
//! lab's directory in it, must belong to the user running vxlab and be writable by no one
//! else (refused otherwise); directories are made 0700 and files 0600; files are opened with
//! `O_NOFOLLOW` and written through a new temporary file renamed into place; and `down`
//! deletes recorded paths only inside the lab's own directory.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::host::files;

/// Something vxlab created and `down` must remove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Resource {
    /// The host bridge.
    Bridge {
        /// Link name.
        name: String,
    },
    /// A host-side link (veth end).
    HostLink {
        /// Link name.
        name: String,
    },
    /// A named network namespace.
    Netns {
        /// Namespace name.
        name: String,
    },
    /// A libvirt domain.
    Domain {
        /// Domain name.
        name: String,
        /// The host it runs on, when the lab was placed on one of a class's hosts; absent for
        /// this machine's own libvirt (and in state written before hosts).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
    },
    /// The lab's bridge on another host: a libvirt network there, named after the bridge.
    Network {
        /// The host.
        host: String,
        /// The bridge.
        bridge: String,
    },
    /// A storage volume on another host: a guest's overlay, seed disk or console log.
    Volume {
        /// The host.
        host: String,
        /// Its storage pool.
        pool: String,
        /// The volume.
        name: String,
    },
    /// A file or directory vxlab wrote.
    Path {
        /// Where.
        path: PathBuf,
    },
    /// The firewall rules that fence the lab's bridge off from the host
    /// (`host::firewall`), marked with the lab's name.
    Fence {
        /// The bridge.
        bridge: String,
    },
    /// A kernel setting vxlab raised, with the value to restore.
    Sysctl {
        /// Key.
        key: String,
        /// Value before vxlab changed it.
        previous: String,
    },
}

impl Resource {
    /// Why vxlab could not have recorded this resource for lab `lab`, if it could not: the
    /// state file is then not vxlab's own, and `down` must not act on it (a forged
    /// `{"kind":"netns","name":"../../etc/passwd"}` would have root delete that file, a forged
    /// sysctl key write anywhere under `/proc/sys`, a forged link delete the host's `eth0`).
    /// Names are checked against the forms vxlab gives them; paths are checked where they
    /// are removed ([`LabLock::remove_path`]).
    pub fn not_of_lab(&self, lab: &str) -> Option<String> {
        // Lab and guest names are lowercase letters, digits and `-`; link names fit 15 bytes.
        let plain = |s: &str| {
            !s.is_empty()
                && !s.starts_with(['.', '-'])
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        // What the lab file's validation lets through as an interface name (`lab::validate`).
        let link = |s: &str| {
            !s.is_empty()
                && s.len() <= crate::lab::defaults::MAX_IFNAME
                && s != "."
                && s != ".."
                && !s.starts_with('-')
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        // A guest's name (`plan::instance_name`) and what is named after it: `vxlab-LAB.GUEST…`.
        let guest = |s: &str| {
            plain(s)
                && s.strip_prefix("vxlab-")
                    .and_then(|rest| rest.strip_prefix(lab))
                    .is_some_and(|rest| rest.len() > 1 && rest.starts_with('.'))
        };
        let ok = match self {
            Resource::Bridge { name } | Resource::Fence { bridge: name } => link(name),
            Resource::Network { bridge, host } => link(bridge) && plain(host),
            Resource::HostLink { name } => {
                link(name) && name.starts_with(&format!("{}-", crate::plan::host_link_prefix(lab)))
            }
            Resource::Netns { name } | Resource::Domain { name, .. } => guest(name),
            Resource::Volume { pool, name, host } => plain(pool) && plain(host) && guest(name),
            Resource::Sysctl { key, .. } => {
                let known = [false, true]
                    .iter()
                    .flat_map(|v6| crate::host::sysctl::neighbour_keys(*v6))
                    .chain([crate::host::neighbours::BACKLOG.to_string()]);
                known.into_iter().any(|k| k == *key)
            }
            Resource::Path { .. } => true,
        };
        (!ok).then(|| format!("lab {lab}'s state names {self}, which vxlab never makes for it"))
    }
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resource::Bridge { name } => write!(f, "bridge {name:?}"),
            Resource::HostLink { name } => write!(f, "link {name:?}"),
            Resource::Netns { name } => write!(f, "namespace {name:?}"),
            Resource::Domain { name, .. } => write!(f, "domain {name:?}"),
            Resource::Network { bridge, host } => {
                write!(f, "the network of bridge {bridge:?} on host {host:?}")
            }
            Resource::Volume { name, host, .. } => write!(f, "volume {name:?} on host {host:?}"),
            Resource::Path { path } => write!(f, "{}", path.display()),
            Resource::Sysctl { key, .. } => write!(f, "setting {key:?}"),
            Resource::Fence { bridge } => write!(f, "the firewall rules of bridge {bridge:?}"),
        }
    }
}

/// What the state file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabState {
    /// Lab name.
    pub lab: String,
    /// The lab file `up` was given.
    pub source: PathBuf,
    /// Resources in creation order.
    pub resources: Vec<Resource>,
    /// The `ip` and `bridge` each guest is configured with, by guest name.
    #[serde(default)]
    pub tools: std::collections::BTreeMap<String, crate::iproute2::Tools>,
    /// Which copy of the lab this is, in workshop mode: `check` and `down` derive it again
    /// from the lab file.
    #[serde(default)]
    pub instance: Option<crate::lab::instance::Instance>,
    /// The host of a class the lab was placed on, and how to reach it; absent for a lab on
    /// this machine. Every resource made there names it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<crate::hosts::HostSpec>,
    /// A random mark drawn when the lab first came up. A lab taken down and brought up again
    /// under the same name is another run with another mark: the class server then closes
    /// the first run's terminals and forgets its token, and the new run's student shells get
    /// another uid. (Empty in state written before the mark.)
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub made: String,
}

/// Which run of a lab, and which write of its state: what the class server compares to see
/// a lab made anew (another [`LabState::made`]) or changed (its state written again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// The run's mark.
    pub made: String,
    /// The state file's inode, modification time and length.
    written: (u64, i64, i64, u64),
    /// The process changing the lab now (holding its lock: an `up`, `reset` or `down`), if
    /// any.
    pub busy: Option<u32>,
}

impl Stamp {
    /// Whether `other` is the same run with the same write of its state (who holds the lock
    /// aside).
    pub fn same_state(&self, other: &Stamp) -> bool {
        (&self.made, self.written) == (&other.made, other.written)
    }
}

/// Who a lab's state belongs to: the lab file it was started from, or the lab it copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A lab started from this file.
    File(PathBuf),
    /// Workshop copy `instance` of lab `base`.
    Copy {
        /// The lab copied.
        base: String,
        /// The copy's instance name.
        instance: String,
    },
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::File(p) => write!(f, "the lab file {}", p.display()),
            Owner::Copy { base, instance } => write!(f, "copy {instance} of lab {base}"),
        }
    }
}

impl LabState {
    /// The state of a lab coming up for the first time, with a new mark, nothing made yet.
    pub fn new(
        lab: &str,
        source: &Path,
        instance: Option<crate::lab::instance::Instance>,
        host: Option<crate::hosts::HostSpec>,
    ) -> Result<LabState, StateError> {
        let made = crate::host::random::hex(8).map_err(|source| StateError::Io {
            what: "cannot draw a random mark for",
            path: PathBuf::from(lab),
            source,
        })?;
        // Recorded whole: a relative path means nothing to a vxlab run from elsewhere,
        // which would then take another file's lab for this one's.
        let source = fs::canonicalize(source)
            .or_else(|_| std::path::absolute(source))
            .unwrap_or_else(|_| source.to_path_buf());
        Ok(LabState {
            lab: lab.to_string(),
            source,
            resources: Vec::new(),
            tools: Default::default(),
            instance,
            host,
            made,
        })
    }

    /// Who this state belongs to.
    pub fn owner(&self) -> Owner {
        match &self.instance {
            Some(i) => Owner::Copy {
                base: i.base.clone(),
                instance: i.name.clone(),
            },
            None => Owner::File(self.source.clone()),
        }
    }
}

/// Refuses to let a lab started from `source` (as workshop copy `instance`, if any) take over
/// `existing`, the state of another lab that happens to have the same name: a standalone lab
/// `w-1` and copy 1 of lab `w`, two lab files both named `x`, or copy 1 of each of two
/// files that name their lab `w`. The same lab file under
/// another path counts as the same lab; a recorded file that no longer exists does not stand
/// in the way (the file was moved). `up` calls this before it records anything.
pub fn check_owner(
    existing: &LabState,
    source: &Path,
    instance: Option<&crate::lab::instance::Instance>,
) -> Result<(), StateError> {
    let same_copy = match (&existing.instance, instance) {
        (None, None) => true,
        (Some(a), Some(b)) => a.base == b.base && a.name == b.name,
        _ => false,
    };
    let same_file = || match (fs::canonicalize(&existing.source), fs::canonicalize(source)) {
        (Ok(a), Ok(b)) => a == b,
        // The recorded file is gone: nothing tells the two apart.
        (Err(_), _) => true,
        (Ok(_), Err(_)) => false,
    };
    if same_copy && same_file() {
        return Ok(());
    }
    Err(StateError::Taken {
        lab: existing.lab.clone(),
        owner: existing.owner(),
    })
}

/// Errors of the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Another vxlab process holds the lab.
    #[error("lab {lab} is busy: {holder}; wait for it to finish")]
    Busy {
        /// Lab name.
        lab: String,
        /// Who holds the lock, as far as known.
        holder: String,
    },
    /// The lab is not running.
    #[error("lab {0} is not running (no state in {1})")]
    NotRunning(String, PathBuf),
    /// Another lab of the same name holds this state.
    #[error(
        "a lab named {lab} is already running from {owner}; take it down first \
         (`vxlab down {lab}`) or give this lab another name"
    )]
    Taken {
        /// Lab name.
        lab: String,
        /// Whose state it is.
        owner: Owner,
    },
    /// The lab file of a running lab now names its guests otherwise than when the lab came
    /// up: a guest renamed, removed or moved. Each guest keeps its number (its host link,
    /// its MACs), so `up` does not reshape a running lab.
    #[error(
        "lab {lab} is running with guests {running}, and its file now has {wanted}: a running \
         lab's guests can be added at the end, but not renamed, removed or reordered (each \
         keeps its number, and with it its links and MACs); `vxlab down {lab}`, then `up` \
         again. Nothing was changed."
    )]
    Reshaped {
        /// Lab name.
        lab: String,
        /// Its guests as running, in order.
        running: String,
        /// Its guests as the file now has them.
        wanted: String,
    },
    /// A directory that others could write to, or that is not the user's own.
    #[error("refusing {}: {why}", path.display())]
    Unsafe {
        /// The directory or file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A recorded path outside the lab's own directory (a forged state file).
    #[error("refusing to delete {}: it is outside the lab's directory {}", path.display(), dir.display())]
    Foreign {
        /// The recorded path.
        path: PathBuf,
        /// The lab's directory.
        dir: PathBuf,
    },
    /// Reading or writing failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The user vxlab runs as.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Checks a directory that holds state: `meta` is its own metadata (not a symlink's target,
/// for a lab's directory).
fn check_dir(path: &Path, meta: &fs::Metadata) -> Result<(), StateError> {
    let why = if meta.file_type().is_symlink() {
        Some("it is a symlink".to_string())
    } else if !meta.is_dir() {
        Some("it is not a directory".to_string())
    } else {
        files::unsafe_dir(meta.uid(), meta.mode(), euid())
    };
    match why {
        None => Ok(()),
        Some(why) => Err(StateError::Unsafe {
            path: path.to_path_buf(),
            why,
        }),
    }
}

/// Makes directory `path` (0700) unless it exists. Its parent must exist.
fn make_dir(path: &Path) -> Result<(), StateError> {
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err("cannot create", path)(e)),
    }
}

/// Whether `path`, as written, names something strictly inside `dir`: absolute, without `..`
/// or `.` components, and starting with `dir`.
pub fn is_inside(dir: &Path, path: &Path) -> bool {
    path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && path.starts_with(dir)
        && path != dir
}

/// The directory that holds every lab's state.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// `$VXLAB_STATE_DIR`, or `/var/lib/vxlab`.
    pub fn from_env() -> Self {
        let root = std::env::var_os("VXLAB_STATE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/vxlab"));
        StateDir { root }
    }

    /// A state directory at `root`.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    /// The directory that holds the labs.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of lab `lab`.
    pub fn lab_dir(&self, lab: &str) -> PathBuf {
        self.root.join(lab)
    }

    /// Checks the state directory itself (a symlink to it is fine: the user chose it), making
    /// it (0700) when it does not exist.
    fn check_root(&self, create: bool) -> Result<(), StateError> {
        if create && !self.root.exists() {
            if let Some(parent) = self.root.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
            }
            make_dir(&self.root)?;
        }
        let meta = fs::metadata(&self.root).map_err(io_err("cannot read", &self.root))?;
        check_dir(&self.root, &meta)?;
        match files::untrusted_path(&self.root, euid()) {
            None => Ok(()),
            Some(why) => Err(StateError::Unsafe {
                path: self.root.clone(),
                why,
            }),
        }
    }

    /// Checks lab `lab`'s directory, which must be a real directory of our own.
    fn check_lab_dir(&self, lab: &str) -> Result<PathBuf, StateError> {
        let dir = self.lab_dir(lab);
        let meta = fs::symlink_metadata(&dir).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StateError::NotRunning(lab.to_string(), self.root.clone())
            } else {
                io_err("cannot read", &dir)(e)
            }
        })?;
        check_dir(&dir, &meta)?;
        Ok(dir)
    }

    /// Directories of the state directory, by name, with whether they hold a state file
    /// (`None`: this user may not look; a lab directory is its owner's alone, 0700).
    fn entries(&self) -> Vec<(String, Option<bool>)> {
        let mut out: Vec<(String, Option<bool>)> = fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| {
                let has_state = match fs::symlink_metadata(e.path().join(STATE_FILE)) {
                    Ok(_) => Some(true),
                    Err(err) if err.kind() == io::ErrorKind::NotFound => Some(false),
                    Err(_) => None,
                };
                Some((e.file_name().into_string().ok()?, has_state))
            })
            .collect();
        out.sort();
        out
    }

    /// Lab directories this user may not look into (a state directory made 0755 by an older
    /// vxlab lists them, but each lab's is root's alone): whose labs `status` cannot tell.
    pub fn unreadable(&self) -> Vec<String> {
        self.entries()
            .into_iter()
            .filter_map(|(n, state)| state.is_none().then_some(n))
            .collect()
    }

    /// Names of labs that have state, sorted.
    pub fn labs(&self) -> Vec<String> {
        self.entries()
            .into_iter()
            .filter_map(|(n, state)| (state == Some(true)).then_some(n))
            .collect()
    }

    /// Lab directories without a state file, sorted: left by a vxlab killed after taking the
    /// lock and before recording anything, or by a `down` killed while it removed the
    /// directory (the state file goes first). Nothing of them runs.
    pub fn leftovers(&self) -> Vec<String> {
        self.entries()
            .into_iter()
            .filter_map(|(n, state)| (state == Some(false)).then_some(n))
            .collect()
    }

    /// Removes lab `lab`'s directory if it is a leftover (see [`StateDir::leftovers`]);
    /// returns whether it was. A directory whose lock is held belongs to a vxlab at work and
    /// is left alone (`Busy`). `down` calls this when a lab has no state.
    pub fn remove_leftover(&self, lab: &str) -> Result<bool, StateError> {
        if !crate::lab::is_lab_name(lab) {
            return Ok(false);
        }
        match self.check_lab_dir(lab) {
            Err(StateError::NotRunning(..)) => return Ok(false),
            Err(e) => return Err(e),
            Ok(dir) if dir.join(STATE_FILE).exists() => return Ok(false),
            Ok(dir) => {
                // vxlab makes a lab's lock first and removes it last: a directory without
                // one is vxlab's only if it is empty (a `down` killed before its `rmdir`).
                // Anything else in it is someone's, and stays.
                let locked = fs::symlink_metadata(dir.join(LOCK_FILE)).is_ok_and(|m| m.is_file());
                if !locked {
                    return match fs::remove_dir(&dir) {
                        Ok(()) => Ok(true),
                        Err(_) => Err(StateError::Unsafe {
                            path: dir,
                            why: "it holds files but no vxlab lock: not a directory vxlab \
                                  left; remove it yourself if it is"
                                .into(),
                        }),
                    };
                }
            }
        }
        let lock = self.lock(lab)?;
        if lock.dir.join(STATE_FILE).exists() {
            return Ok(false);
        }
        lock.remove()?;
        Ok(true)
    }

    /// Which run of lab `lab` this is and which write of its state, if it is running.
    pub fn stamp(&self, lab: &str) -> Option<Stamp> {
        let meta = fs::symlink_metadata(self.lab_dir(lab).join(STATE_FILE)).ok()?;
        let st = self.read(lab).ok()?;
        Some(Stamp {
            made: st.made,
            written: (meta.ino(), meta.mtime(), meta.mtime_nsec(), meta.len()),
            busy: self.changing(lab),
        })
    }

    /// The process holding lab `lab`'s lock to change it (an `up`, `reset` or `down`), if
    /// any; a check's lock does not count. The holder is the kernel's word; the file's word
    /// (its work) counts when it names that holder, since a new holder writes its own a
    /// moment after it locks.
    pub fn changing(&self, lab: &str) -> Option<u32> {
        let lock = self.lab_dir(lab).join(LOCK_FILE);
        fs::symlink_metadata(&lock)
            .ok()
            .and_then(|m| crate::host::lock::flock_holder(&m))
            .filter(|pid| {
                lock_file_says(&lock).is_none_or(|(said, work)| {
                    said != pid.to_string() || work != Work::Checking.word()
                })
            })
    }

    /// Reads lab `lab`'s state without locking.
    pub fn read(&self, lab: &str) -> Result<LabState, StateError> {
        self.check_root(false).map_err(|e| match e {
            StateError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                StateError::NotRunning(lab.to_string(), self.root.clone())
            }
            other => other,
        })?;
        let path = self.check_lab_dir(lab)?.join(STATE_FILE);
        let mut text = String::new();
        files::open_no_follow(&path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    StateError::NotRunning(lab.to_string(), self.root.clone())
                } else {
                    io_err("cannot read", &path)(e)
                }
            })?;
        serde_json::from_str(&text)
            .map_err(|e| io_err("corrupt state file", &path)(io::Error::other(e)))
    }

    /// Takes lab `lab`'s lock, failing at once when another process holds it. Makes the
    /// state directory and the lab's directory (0700) when needed, and refuses either when it
    /// is not the user's own or others can write to it.
    pub fn lock(&self, lab: &str) -> Result<LabLock, StateError> {
        self.take(lab, std::time::Duration::ZERO, Work::Changing)
    }

    /// The same, to check the lab, changing nothing in it: a watcher then does not show the
    /// lab as being changed.
    pub fn lock_to_check(&self, lab: &str) -> Result<LabLock, StateError> {
        self.take(lab, std::time::Duration::ZERO, Work::Checking)
    }

    /// Takes lab `lab`'s lock, waiting up to `wait` for a holder to let go. For `down` after
    /// a vxlab was killed: the kernel can still hold the dead process's lock for a moment
    /// (seen in 1 to 3 of 25 kill trials), and "busy" would be the wrong answer.
    pub fn lock_within(&self, lab: &str, wait: std::time::Duration) -> Result<LabLock, StateError> {
        self.take(lab, wait, Work::Changing)
    }

    fn take(
        &self,
        lab: &str,
        wait: std::time::Duration,
        work: Work,
    ) -> Result<LabLock, StateError> {
        if !crate::lab::is_lab_name(lab) {
            return Err(StateError::Unsafe {
                path: self.lab_dir(lab),
                why: "not a lab name (lowercase letters, digits and dashes)".into(),
            });
        }
        self.check_root(true)?;
        let dir = self.lab_dir(lab);
        let path = dir.join(LOCK_FILE);
        let open = || -> Result<File, StateError> {
            make_dir(&dir)?;
            self.check_lab_dir(lab)?;
            files::open_append(&path, files::PRIVATE).map_err(io_err("cannot open", &path))
        };
        let until = std::time::Instant::now() + wait;
        let mut tries = 0;
        let file = loop {
            let file = open()?;
            let file =
                if crate::host::lock::flock(&file, false).map_err(io_err("cannot lock", &path))? {
                    file
                } else {
                    let left = until.saturating_duration_since(std::time::Instant::now());
                    wait_for_lock(open()?, left).ok_or_else(|| StateError::Busy {
                        lab: lab.to_string(),
                        holder: holder(&path),
                    })?
                };
            // A lock on a file `down` removed (with its directory, maybe) while we waited
            // guards nothing: the next vxlab makes and locks a new one. Take the lock of the
            // file that is there.
            let held = file.metadata().map_err(io_err("cannot read", &path))?;
            let now = fs::symlink_metadata(&path).ok();
            if now.is_some_and(|m| (m.dev(), m.ino()) == (held.dev(), held.ino())) {
                break file;
            }
            tries += 1;
            if tries == 3 {
                return Err(StateError::Busy {
                    lab: lab.to_string(),
                    holder: "its lock file keeps being removed or replaced".into(),
                });
            }
        };
        file.set_len(0).map_err(io_err("cannot write", &path))?;
        // The pid and the work go in through a second descriptor on the same file, closed at
        // once (the lock stays with the first): the close is what tells a watcher of the
        // directory (the class server) that someone is at work on the lab now.
        fs::OpenOptions::new()
            .append(true)
            .open(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&file)
            ))
            .and_then(|mut f| writeln!(f, "{} {}", std::process::id(), work.word()))
            .map_err(io_err("cannot write", &path))?;
        Ok(LabLock {
            _file: file,
            dir,
            lab: lab.to_string(),
            root: self.root.clone(),
        })
    }
}

/// What a lab's lock is held for, as its file says after the holder's pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    /// `up`, `reset`, `down`: the lab is being changed.
    Changing,
    /// `check`: the lab is read and pinged, not changed.
    Checking,
}

impl Work {
    fn word(self) -> &'static str {
        match self {
            Work::Changing => "changing",
            Work::Checking => "checking",
        }
    }
}

/// What a lock file says: the holder's pid and its work (the last holder's, if none holds
/// it now).
fn lock_file_says(path: &Path) -> Option<(String, String)> {
    let mut s = String::new();
    files::open_no_follow(path)
        .ok()?
        .read_to_string(&mut s)
        .ok()?;
    let mut words = s.split_whitespace();
    let pid = words.next()?.to_string();
    Some((pid, words.next().unwrap_or_default().to_string()))
}

/// Who holds a lock and what for: `vxlab up labs/two-netns.yaml (pid 812) is changing it`.
/// The holder is the kernel's word; its work is the file's, when the file is the holder's
/// yet.
fn holder(path: &Path) -> String {
    let held = fs::symlink_metadata(path)
        .ok()
        .and_then(|m| crate::host::lock::flock_holder(&m));
    let says = lock_file_says(path);
    let Some(pid) = held.or_else(|| says.as_ref().and_then(|(pid, _)| pid.parse().ok())) else {
        return "another vxlab is at work on it".into();
    };
    let what = match says {
        Some((said, work)) if said == pid.to_string() && work == Work::Checking.word() => {
            "checking"
        }
        Some((said, _)) if said == pid.to_string() => "changing",
        _ => "at work on",
    };
    format!("{} is {what} it", crate::host::process::described(pid))
}

/// Waits up to `wait` for the lock on `file`, the kernel waking us when it is free. A waiter
/// that gives up leaves its thread blocked; if that thread gets the lock later, it finds no
/// one to hand it to and drops it at once.
fn wait_for_lock(file: File, wait: std::time::Duration) -> Option<File> {
    if wait.is_zero() {
        return None;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if crate::host::lock::flock(&file, true).is_ok() {
            // A failed send drops the file, and with it the lock.
            let _ = tx.send(file);
        }
    });
    rx.recv_timeout(wait).ok()
}

/// A lab's state file, in its directory.
pub const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "lock";
/// Name of the lab file copy in a lab's state directory.
pub const LAB_COPY: &str = "lab.yaml";

/// Exclusive hold on one lab's state; released when dropped.
#[derive(Debug)]
pub struct LabLock {
    _file: File,
    dir: PathBuf,
    lab: String,
    root: PathBuf,
}

impl LabLock {
    /// The lab's state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Refuses a lab file whose guests (`wanted`, in order) are not the running lab's
    /// guests with new ones after them, judged by the lab's copy of the file it came up from.
    /// A lab without a readable copy is let through.
    pub fn check_guests(&self, wanted: &[&str]) -> Result<(), StateError> {
        let Ok((lab, _)) = crate::lab::load_recorded(&self.dir.join(LAB_COPY)) else {
            return Ok(());
        };
        let running: Vec<&str> = lab.guests.iter().map(|g| g.name.as_str()).collect();
        if wanted.starts_with(&running) {
            return Ok(());
        }
        Err(StateError::Reshaped {
            lab: self.lab.clone(),
            running: running.join(", "),
            wanted: wanted.join(", "),
        })
    }

    /// The lab's state directory as a whole path, the same from wherever vxlab runs: how
    /// host-wide records (the neighbour-table ledger) name the lab.
    pub fn id(&self) -> String {
        fs::canonicalize(&self.dir)
            .unwrap_or_else(|_| self.dir.clone())
            .display()
            .to_string()
    }

    /// The current state, if the lab has any.
    pub fn load(&self) -> Result<Option<LabState>, StateError> {
        match StateDir::at(&self.root).read(&self.lab) {
            Ok(s) => Ok(Some(s)),
            Err(StateError::NotRunning(..)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes file `name` of the lab's directory (0600), through a temporary file renamed
    /// into place: never through a symlink, never half-written.
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> Result<(), StateError> {
        let path = self.dir.join(name);
        files::write_replacing(&path, bytes, files::PRIVATE).map_err(io_err("cannot write", &path))
    }

    /// Opens file `name` of the lab's directory for appending (0600, never through a
    /// symlink): for the logs of commands run in guests.
    pub fn append_file(&self, name: &str) -> Result<File, StateError> {
        let path = self.dir.join(name);
        files::open_append(&path, files::PRIVATE).map_err(io_err("cannot open", &path))
    }

    /// Writes the state atomically.
    pub fn save(&self, state: &LabState) -> Result<(), StateError> {
        let text = serde_json::to_string_pretty(state).expect("state serializes");
        self.write_file(STATE_FILE, text.as_bytes())
    }

    /// Keeps a copy of the lab file, from which `check` and `down` re-plan the running lab.
    pub fn save_lab_copy(&self, text: &str) -> Result<(), StateError> {
        self.write_file(LAB_COPY, text.as_bytes())
    }

    /// Adds resources not yet recorded and saves, before they are created.
    pub fn record(&self, state: &mut LabState, resources: Vec<Resource>) -> Result<(), StateError> {
        let before = state.resources.len();
        for r in resources {
            if !state.resources.contains(&r) {
                state.resources.push(r);
            }
        }
        if state.resources.len() != before {
            self.save(state)?;
        }
        Ok(())
    }

    /// Deletes a recorded `Resource::Path`, only when it lies inside the lab's own directory
    /// (a forged state file must not make root delete an arbitrary file); returns whether
    /// there was anything. A symlink is removed, never followed.
    pub fn remove_path(&self, path: &Path) -> Result<bool, StateError> {
        let foreign = || StateError::Foreign {
            path: path.to_path_buf(),
            dir: self.dir.clone(),
        };
        if !is_inside(&self.dir, path) {
            return Err(foreign());
        }
        // A symlinked directory on the way would lead outside.
        let parent = path.parent().ok_or_else(foreign)?;
        match (fs::canonicalize(parent), fs::canonicalize(&self.dir)) {
            (Ok(p), Ok(d)) if p.starts_with(&d) => {}
            (Err(e), _) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            _ => return Err(foreign()),
        }
        let meta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("cannot read", path)(e)),
        };
        if meta.is_dir() {
            fs::remove_dir_all(path)
        } else {
            fs::remove_file(path)
        }
        .map_err(io_err("cannot remove", path))?;
        Ok(true)
    }

    /// Removes the lab's state directory (after everything in it was torn down). The state
    /// file goes first: a vxlab killed while the rest goes (in whatever order the directory
    /// lists it) leaves a directory without state, which the next `down` removes as a
    /// leftover ([`StateDir::remove_leftover`]). Taken the other way, a directory holding
    /// the state but no longer the lab file named no lab that `down` could find.
    pub fn remove(self) -> Result<(), StateError> {
        self.remove_with(|path| {
            if fs::symlink_metadata(path)?.is_dir() {
                fs::remove_dir_all(path)
            } else {
                fs::remove_file(path)
            }
        })
    }

    /// [`Self::remove`], each entry of the directory but the lock removed by `remove_entry`
    /// once the state file is gone, then the lock, then the directory: a directory that
    /// still has files has its lock, which is how a later `down` knows it for vxlab's.
    fn remove_with(
        self,
        mut remove_entry: impl FnMut(&Path) -> io::Result<()>,
    ) -> Result<(), StateError> {
        let gone = |r: io::Result<()>, path: &Path| match r {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("cannot remove", path)(e)),
        };
        let state = self.dir.join(STATE_FILE);
        gone(fs::remove_file(&state), &state)?;
        let entries = fs::read_dir(&self.dir).map_err(io_err("cannot read", &self.dir))?;
        for entry in entries {
            let path = entry.map_err(io_err("cannot read", &self.dir))?.path();
            if path.file_name() != Some(std::ffi::OsStr::new(LOCK_FILE)) {
                gone(remove_entry(&path), &path)?;
            }
        }
        let lock = self.dir.join(LOCK_FILE);
        gone(fs::remove_file(&lock), &lock)?;
        fs::remove_dir(&self.dir).map_err(io_err("cannot remove", &self.dir))
    }
}

/// Tightens a lab directory made by an older vxlab (0755) to 0700; used before writing keys
/// and tokens into it.
pub fn make_private(dir: &Path) -> Result<(), StateError> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err("cannot chmod", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(lab: &str) -> LabState {
        LabState {
            lab: lab.into(),
            source: "lab.yaml".into(),
            resources: vec![],
            tools: Default::default(),
            instance: None,
            host: None,
            made: String::new(),
        }
    }

    #[test]
    fn state_written_before_hosts_still_reads_and_a_placed_lab_records_its_host() {
        let old = r#"{"lab":"two-vm","source":"labs/two-vm.yaml","resources":[
            {"kind":"bridge","name":"vbr0"},{"kind":"domain","name":"vxlab-two-vm.vm-a"}]}"#;
        let st: LabState = serde_json::from_str(old).unwrap();
        assert_eq!(st.host, None);
        assert_eq!(
            st.resources[1],
            Resource::Domain {
                name: "vxlab-two-vm.vm-a".into(),
                host: None
            }
        );
        let mut placed = st.clone();
        placed.host = Some(crate::hosts::HostSpec {
            name: "h2".into(),
            uri: "qemu+ssh://root@10.0.0.12/system".into(),
            ssh: None,
        });
        placed.resources = vec![
            Resource::Network {
                host: "h2".into(),
                bridge: "vbr0-1".into(),
            },
            Resource::Volume {
                host: "h2".into(),
                pool: "vxlab".into(),
                name: "vxlab-two-vm-1.vm-a.qcow2".into(),
            },
            Resource::Domain {
                name: "vxlab-two-vm-1.vm-a".into(),
                host: Some("h2".into()),
            },
        ];
        let text = serde_json::to_string(&placed).unwrap();
        assert!(text.contains(r#""host":{"name":"h2""#), "{text}");
        assert_eq!(serde_json::from_str::<LabState>(&text).unwrap(), placed);
        // A lab on this machine writes what it always wrote.
        assert!(!serde_json::to_string(&st).unwrap().contains("host"));
    }

    #[test]
    fn a_second_lock_on_the_same_lab_is_refused_with_the_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::at(tmp.path());
        let held = dir.lock("two-vm").unwrap();
        let err = dir.lock("two-vm").unwrap_err();
        assert!(err.to_string().contains("lab two-vm is busy"), "{err}");
        assert!(err
            .to_string()
            .contains(&format!("pid {}", std::process::id())));
        drop(held);
        dir.lock("two-vm").unwrap();
    }

    #[test]
    fn a_waiting_lock_gets_the_lab_when_the_holder_lets_go_within_the_wait() {
        use std::time::Duration;
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::at(tmp.path());
        let held = dir.lock("lab").unwrap();
        let start = std::time::Instant::now();
        assert!(matches!(
            dir.lock_within("lab", Duration::from_millis(100)),
            Err(StateError::Busy { .. })
        ));
        assert!(start.elapsed() >= Duration::from_millis(100));
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(held);
        });
        dir.lock_within("lab", Duration::from_secs(10)).unwrap();
        release.join().unwrap();
    }

    #[test]
    fn a_waiter_whose_holder_removed_the_lab_locks_the_lab_made_anew_not_the_removed_file() {
        use std::time::Duration;
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::at(tmp.path().join("state"));
        let held = dir.lock("lab").unwrap();
        let ino = fs::metadata(held.dir().join(LOCK_FILE)).unwrap().ino();
        let d = dir.clone();
        let waiter = std::thread::spawn(move || d.lock_within("lab", Duration::from_secs(10)));
        // Until the kernel lists the waiter on the old file.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .any(|l| l.contains("-> FLOCK") && l.contains(&format!(":{ino} ")))
        {
            assert!(std::time::Instant::now() < deadline, "no waiter");
            std::thread::sleep(Duration::from_millis(10));
        }
        // `down` of the holder: the lab's directory goes, then the lock.
        fs::remove_dir_all(held.dir()).unwrap();
        drop(held);
        let got = waiter.join().unwrap().unwrap();
        let now = fs::metadata(got.dir().join(LOCK_FILE)).unwrap();
        assert_eq!(
            crate::host::lock::flock_holder(&now),
            Some(std::process::id()),
            "the lock held is not the lab's file"
        );
    }

    #[test]
    fn a_lab_locked_to_change_is_busy_and_one_locked_to_check_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::at(tmp.path());
        let lock = dir.lock("lab").unwrap();
        lock.save(&state("lab")).unwrap();
        assert_eq!(dir.stamp("lab").unwrap().busy, Some(std::process::id()));
        let err = dir.lock_to_check("lab").unwrap_err().to_string();
        assert!(
            err.ends_with(&format!(
                "(pid {}) is changing it; wait for it to finish",
                std::process::id()
            )),
            "{err}"
        );
        drop(lock);
        assert_eq!(dir.stamp("lab").unwrap().busy, None);
        let check = dir.lock_to_check("lab").unwrap();
        assert_eq!(dir.stamp("lab").unwrap().busy, None);
        assert!(
            dir.lock("lab")
                .unwrap_err()
                .to_string()
                .contains("is checking it"),
            "a check's lock is named as one"
        );
        drop(check);
    }

    #[test]
    fn resources_are_recorded_once_in_order_and_survive_a_reload() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::at(tmp.path());
        let lock = dir.lock("lab").unwrap();
        let mut st = state("lab");
        let br = Resource::Bridge {
            name: "vbr0".into(),
        };
        let ns = Resource::Netns { name: "ns".into() };
        lock.record(&mut st, vec![br.clone(), ns.clone()]).unwrap();
        lock.record(&mut st, vec![br.clone()]).unwrap();
        assert_eq!(dir.read("lab").unwrap().resources, vec![br, ns]);
        assert_eq!(dir.labs(), vec!["lab".to_string()]);
        lock.remove().unwrap();
        assert!(dir.labs().is_empty());
    }

    #[test]
    fn state_directories_are_0700_and_files_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        let dir = StateDir::at(&root);
        let lock = dir.lock("lab").unwrap();
        lock.save(&state("lab")).unwrap();
        lock.save_lab_copy("name: lab\n").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(lock.dir()), 0o700);
        for f in [STATE_FILE, LAB_COPY, LOCK_FILE] {
            assert_eq!(mode(&lock.dir().join(f)), 0o600, "{f}");
        }
        // Nothing but the three files: the temporary files were renamed.
        assert_eq!(fs::read_dir(lock.dir()).unwrap().count(), 3);
    }

    #[test]
    fn a_lab_directory_left_without_its_state_is_a_leftover_that_goes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::at(tmp.path());
        let lock = dir.lock("lab").unwrap();
        lock.save(&state("lab")).unwrap();
        lock.save_lab_copy("name: lab\n").unwrap();
        drop(lock);
        assert_eq!(dir.labs(), ["lab"]);
        // A `down` stopped as it removes the directory, at its very first file: the state
        // file is gone already, the lab file and the lock are left.
        let lock = dir.lock("lab").unwrap();
        assert!(lock
            .remove_with(|_| Err(io::Error::other("killed")))
            .is_err());
        assert!(dir.lab_dir("lab").join(LAB_COPY).exists());
        assert!(dir.labs().is_empty());
        assert_eq!(dir.leftovers(), ["lab"]);
        assert!(dir.remove_leftover("lab").unwrap());
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
        // A lab with state is no leftover, and stays.
        let lock = dir.lock("kept").unwrap();
        lock.save(&state("kept")).unwrap();
        drop(lock);
        assert!(!dir.remove_leftover("kept").unwrap());
        assert_eq!(dir.labs(), ["kept"]);
    }

    #[test]
    fn a_state_directory_others_can_write_to_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let err = StateDir::at(tmp.path()).lock("lab").unwrap_err();
        assert!(
            err.to_string().contains("other users can write to it"),
            "{err}"
        );
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
        assert!(files::unsafe_dir(1000, 0o40700, 0)
            .unwrap()
            .contains("uid 1000"));
        assert_eq!(files::unsafe_dir(0, 0o40755, 0), None);
    }

    #[test]
    fn symlinks_planted_in_a_lab_directory_are_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        fs::write(&victim, "root's file").unwrap();
        let dir = StateDir::at(tmp.path().join("state"));
        let lock = dir.lock("lab").unwrap();
        for name in [STATE_FILE, LAB_COPY, "state.json.tmp"] {
            std::os::unix::fs::symlink(&victim, lock.dir().join(name)).unwrap();
        }
        lock.save(&state("lab")).unwrap();
        lock.save_lab_copy("name: lab\n").unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "root's file");
        drop(lock);
        // A symlinked lock file, or a lab directory that is a symlink, is refused.
        fs::remove_file(dir.lab_dir("lab").join(LOCK_FILE)).unwrap();
        std::os::unix::fs::symlink(&victim, dir.lab_dir("lab").join(LOCK_FILE)).unwrap();
        assert!(dir.lock("lab").is_err());
        std::os::unix::fs::symlink(tmp.path(), dir.lab_dir("other")).unwrap();
        assert!(matches!(dir.lock("other"), Err(StateError::Unsafe { .. })));
        assert_eq!(fs::read_to_string(&victim).unwrap(), "root's file");
    }

    #[test]
    fn only_paths_inside_the_labs_own_directory_are_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        fs::write(&victim, "x").unwrap();
        let dir = StateDir::at(tmp.path().join("state"));
        let lock = dir.lock("lab").unwrap();
        let guest = lock.dir().join("guests").join("vm-a");
        fs::create_dir_all(&guest).unwrap();
        fs::write(guest.join("disk"), "").unwrap();
        assert!(lock.remove_path(&guest).unwrap());
        assert!(!guest.exists());
        assert!(!lock.remove_path(&guest).unwrap());
        for forged in [
            victim.clone(),
            lock.dir().join("..").join("..").join("victim"),
            lock.dir().to_path_buf(),
            PathBuf::from("victim"),
        ] {
            assert!(
                matches!(lock.remove_path(&forged), Err(StateError::Foreign { .. })),
                "{}",
                forged.display()
            );
        }
        // Through a symlinked directory inside the lab's directory.
        std::os::unix::fs::symlink(tmp.path(), lock.dir().join("up")).unwrap();
        assert!(lock
            .remove_path(&lock.dir().join("up").join("victim"))
            .is_err());
        assert!(victim.exists());
        assert!(is_inside(Path::new("/s/lab"), Path::new("/s/lab/guests/a")));
        assert!(!is_inside(Path::new("/s/lab"), Path::new("/s/lab/../x")));
    }

    #[test]
    fn a_state_file_naming_what_vxlab_never_makes_is_caught() {
        let lab = "w-1";
        let own = [
            Resource::Bridge {
                name: "vxbr-w-1".into(),
            },
            Resource::HostLink {
                name: crate::plan::host_link_name(lab, 3),
            },
            Resource::Netns {
                name: crate::plan::instance_name(lab, "vm-a"),
            },
            Resource::Domain {
                name: crate::plan::instance_name(lab, "vm-b"),
                host: None,
            },
            Resource::Volume {
                host: "h2".into(),
                pool: "vxlab".into(),
                name: format!("{}.seed.img", crate::plan::instance_name(lab, "vm-b")),
            },
            Resource::Sysctl {
                key: "net.ipv4.neigh.default.gc_thresh3".into(),
                previous: "1024".into(),
            },
        ];
        for r in &own {
            assert_eq!(r.not_of_lab(lab), None, "{r}");
        }
        let forged = [
            Resource::Netns {
                name: "../../etc/passwd".into(),
            },
            Resource::Netns {
                name: "/etc/passwd".into(),
            },
            // Another lab's guest: lab `w` must not take down lab `w-1`'s namespace.
            Resource::Netns {
                name: crate::plan::instance_name("w-12", "vm-a"),
            },
            Resource::Netns {
                name: "vxlab-w-1.".into(),
            },
            Resource::Domain {
                name: "production-db".into(),
                host: None,
            },
            Resource::Volume {
                host: "h2".into(),
                pool: "default".into(),
                name: "../images/debian.qcow2".into(),
            },
            Resource::Sysctl {
                key: "/etc/shadow".into(),
                previous: "x".into(),
            },
            Resource::Sysctl {
                key: "kernel.core_pattern".into(),
                previous: "|/bin/sh".into(),
            },
            Resource::HostLink {
                name: "eth0".into(),
            },
            // Another lab's host end.
            Resource::HostLink {
                name: crate::plan::host_link_name("w-12", 0),
            },
            Resource::Bridge {
                name: "br0/../x".into(),
            },
            Resource::Bridge {
                name: "a-name-longer-than-15".into(),
            },
        ];
        for r in &forged {
            let why = r.not_of_lab(lab).unwrap_or_else(|| panic!("{r} passed"));
            assert!(why.contains("never makes"), "{why}");
        }
    }

    #[test]
    fn a_directory_holding_only_a_lock_is_a_leftover_that_can_be_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::at(tmp.path());
        drop(dir.lock("killed").unwrap());
        let running = dir.lock("running").unwrap();
        running.save(&state("running")).unwrap();
        let busy = dir.lock("busy").unwrap();
        assert_eq!(
            dir.leftovers(),
            vec!["busy".to_string(), "killed".to_string()]
        );
        assert_eq!(dir.labs(), vec!["running".to_string()]);
        assert!(dir.remove_leftover("killed").unwrap());
        assert!(!dir.lab_dir("killed").exists());
        assert!(!dir.remove_leftover("running").unwrap());
        assert!(!dir.remove_leftover("never").unwrap());
        // A vxlab at work between its lock and its first record keeps its directory.
        assert!(matches!(
            dir.remove_leftover("busy"),
            Err(StateError::Busy { .. })
        ));
        drop(busy);
        assert!(dir.lab_dir("running").exists());
    }

    #[test]
    fn down_removes_only_what_vxlab_left_under_a_lab_name() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::at(tmp.path());
        drop(dir.lock("kept").unwrap());
        // Not a lab name: never looked at, never locked.
        let data = tmp.path().join("My_Data");
        fs::create_dir_all(data.join("sub")).unwrap();
        fs::write(data.join("sub/f"), "x").unwrap();
        assert!(!dir.remove_leftover("My_Data").unwrap());
        assert!(matches!(
            dir.lock("My_Data"),
            Err(StateError::Unsafe { .. })
        ));
        // A lab name, but files and no lock: not vxlab's leftover.
        let other = tmp.path().join("photos");
        fs::create_dir(&other).unwrap();
        fs::write(other.join("cat.jpg"), "x").unwrap();
        assert!(matches!(
            dir.remove_leftover("photos"),
            Err(StateError::Unsafe { .. })
        ));
        assert!(data.join("sub/f").exists() && other.join("cat.jpg").exists());
        // An empty one: a `down` killed before its last `rmdir`.
        fs::create_dir(tmp.path().join("empty")).unwrap();
        assert!(dir.remove_leftover("empty").unwrap());
        assert!(!tmp.path().join("empty").exists());
        // A `down` killed part-way through the lab's files leaves the lock with the rest.
        let lock = dir.lock("lab").unwrap();
        lock.save(&state("lab")).unwrap();
        lock.save_lab_copy("name: lab\n").unwrap();
        lock.write_file("commands-g0.log", b"$ ip link\n").unwrap();
        let mut calls = 0;
        assert!(lock
            .remove_with(|p| {
                calls += 1;
                if calls == 2 {
                    Err(io::Error::other("killed"))
                } else {
                    fs::remove_file(p)
                }
            })
            .is_err());
        assert!(dir.lab_dir("lab").join(LOCK_FILE).exists());
        assert!(dir.remove_leftover("lab").unwrap());
        assert!(!dir.lab_dir("lab").exists());
        assert!(dir.lab_dir("kept").exists());
    }

    #[test]
    fn a_state_directory_reached_through_what_others_control_is_refused() {
        use std::os::unix::fs::{chown, symlink};
        let tmp = tempfile::tempdir().unwrap();
        let mine = tmp.path().join("mine");
        fs::create_dir(&mine).unwrap();
        // Another user's directory on the way: they could swap what is under it.
        let theirs = tmp.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        let state = theirs.join("state");
        symlink(&mine, &state).unwrap();
        let nobody = 65534;
        chown(&theirs, Some(nobody), Some(nobody)).unwrap();
        let refused = StateDir::at(&state).lock("lab");
        assert!(
            matches!(&refused, Err(StateError::Unsafe { why, .. }) if why.contains("uid 65534")),
            "{refused:?}"
        );
        assert!(!mine.join("lab").exists());
        // Another user's symlink in a sticky directory: they could point it elsewhere.
        let sticky = tmp.path().join("sticky");
        fs::create_dir(&sticky).unwrap();
        fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777)).unwrap();
        let link = sticky.join("link");
        symlink(&mine, &link).unwrap();
        std::os::unix::fs::lchown(&link, Some(nobody), Some(nobody)).unwrap();
        assert!(StateDir::at(&link).lock("lab").is_err());
        // The same symlink made by this user, and the directory reached directly, are fine.
        let own = sticky.join("own");
        symlink(&mine, &own).unwrap();
        drop(StateDir::at(&own).lock("lab").unwrap());
        drop(StateDir::at(&mine).lock("lab").unwrap());
        // A directory on the way that others may write to, without the sticky bit.
        let open = tmp.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(StateDir::at(open.join("state")).lock("lab").is_err());
    }

    #[test]
    fn a_lab_of_the_same_name_from_elsewhere_is_not_adopted() {
        use crate::lab::instance::Instance;
        let tmp = tempfile::tempdir().unwrap();
        let file = |n: &str| {
            let p = tmp.path().join(n);
            fs::write(&p, "").unwrap();
            p
        };
        let (w1, other) = (file("w-1.yaml"), file("other.yaml"));
        let mut standalone = state("w-1");
        standalone.source = w1.clone();
        let copy = Instance {
            base: "w".into(),
            name: "1".into(),
            index: 1,
            underlay: None,
        };
        let err = check_owner(&standalone, &file("w.yaml"), Some(&copy)).unwrap_err();
        assert!(
            err.to_string().contains(&format!(
                "already running from the lab file {}",
                w1.display()
            )),
            "{err}"
        );
        assert!(check_owner(&standalone, &other, None).is_err());
        // The same file by another path is the same lab.
        let dotted = tmp.path().join(".").join("w-1.yaml");
        assert!(check_owner(&standalone, &dotted, None).is_ok());
        let mut copied = state("w-1");
        copied.instance = Some(copy.clone());
        let err = check_owner(&copied, &w1, None).unwrap_err();
        assert!(err.to_string().contains("copy 1 of lab w"), "{err}");
        // Copy 1 of another file that names its lab `w` too is another class's copy.
        copied.source = tmp.path().join("w.yaml");
        assert!(check_owner(&copied, &other, Some(&copy)).is_err());
        assert!(check_owner(&copied, &file("w.yaml"), Some(&copy)).is_ok());
        // A file named relative to where vxlab ran is recorded whole: run from elsewhere,
        // the name would say nothing.
        let st = LabState::new("rel", Path::new("Cargo.toml"), None, None).unwrap();
        assert!(st.source.is_absolute() && st.source.ends_with("Cargo.toml"));
        // A recorded file that is gone (moved) does not stand in the way.
        standalone.source = tmp.path().join("moved.yaml");
        assert!(check_owner(&standalone, &other, None).is_ok());
    }
}
