//! A lab's state on the host: `<state dir>/<lab>/` holds a copy of the lab file, the list of
//! every resource vxlab created (each recorded before it is created), and a lock.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
    },
    /// A file or directory vxlab wrote.
    Path {
        /// Where.
        path: PathBuf,
    },
    /// A kernel setting vxlab raised, with the value to restore.
    Sysctl {
        /// Key.
        key: String,
        /// Value before vxlab changed it.
        previous: String,
    },
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
}

/// Errors of the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Another vxlab process holds the lab.
    #[error("lab {lab} is busy: another vxlab ({holder}) is changing it; wait for it to finish")]
    Busy {
        /// Lab name.
        lab: String,
        /// Who holds the lock, as far as known.
        holder: String,
    },
    /// The lab is not running.
    #[error("lab {0} is not running (no state in {1})")]
    NotRunning(String, PathBuf),
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

    /// Names of labs that have state, sorted.
    pub fn labs(&self) -> Vec<String> {
        let mut out: Vec<String> = fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join(STATE_FILE).exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        out.sort();
        out
    }

    /// Reads lab `lab`'s state without locking.
    pub fn read(&self, lab: &str) -> Result<LabState, StateError> {
        let path = self.lab_dir(lab).join(STATE_FILE);
        let text = fs::read_to_string(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StateError::NotRunning(lab.to_string(), self.root.clone())
            } else {
                io_err("cannot read", &path)(e)
            }
        })?;
        serde_json::from_str(&text)
            .map_err(|e| io_err("corrupt state file", &path)(io::Error::other(e)))
    }

    /// Takes lab `lab`'s lock, failing at once when another process holds it.
    pub fn lock(&self, lab: &str) -> Result<LabLock, StateError> {
        let dir = self.lab_dir(lab);
        fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err("cannot open", &path))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let holder = fs::read_to_string(&path)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .map(|pid| format!("pid {pid}"))
                .unwrap_or_else(|| "unknown process".into());
            return Err(StateError::Busy {
                lab: lab.to_string(),
                holder,
            });
        }
        file.set_len(0).map_err(io_err("cannot write", &path))?;
        writeln!(file, "{}", std::process::id()).map_err(io_err("cannot write", &path))?;
        Ok(LabLock {
            _file: file,
            dir,
            lab: lab.to_string(),
            root: self.root.clone(),
        })
    }
}

const STATE_FILE: &str = "state.json";
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

    /// The current state, if the lab has any.
    pub fn load(&self) -> Result<Option<LabState>, StateError> {
        match StateDir::at(&self.root).read(&self.lab) {
            Ok(s) => Ok(Some(s)),
            Err(StateError::NotRunning(..)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes the state atomically (write a temporary file, then rename).
    pub fn save(&self, state: &LabState) -> Result<(), StateError> {
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join("state.json.tmp");
        let text = serde_json::to_string_pretty(state).expect("state serializes");
        fs::write(&tmp, text).map_err(io_err("cannot write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("cannot write", &path))
    }

    /// Keeps a copy of the lab file, from which `check` and `down` re-plan the running lab.
    pub fn save_lab_copy(&self, text: &str) -> Result<(), StateError> {
        let path = self.dir.join(LAB_COPY);
        fs::write(&path, text).map_err(io_err("cannot write", &path))
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

    /// Removes the lab's state directory (after everything in it was torn down).
    pub fn remove(self) -> Result<(), StateError> {
        fs::remove_dir_all(&self.dir).map_err(io_err("cannot remove", &self.dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn resources_are_recorded_once_in_order_and_survive_a_reload() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::at(tmp.path());
        let lock = dir.lock("lab").unwrap();
        let mut st = LabState {
            lab: "lab".into(),
            source: "lab.yaml".into(),
            resources: vec![],
            tools: Default::default(),
            instance: None,
        };
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
}
