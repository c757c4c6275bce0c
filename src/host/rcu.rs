//! Expedited RCU grace periods while vxlab deletes many vxlan devices.
//!
//! Closing a vxlan device releases its UDP socket, and the kernel waits for one RCU grace
//! period there (`udp_tunnel_sock_release` → `synchronize_rcu`) while it holds the RTNL lock.
//! The deletions cannot overlap, so a 100-guest lab's `down` spent 1.5 s of its 1.6 s asleep,
//! about 15 ms a device. With `/sys/kernel/rcu_expedited` set, each wait is an expedited grace
//! period, and the same `down` takes 0.25 s.
//!
//! The setting is the host's, so it is changed only for the deletion and then restored. A
//! record under `/run/vxlab` holds the value vxlab found, so a vxlab killed in between has the
//! next one restore it; a lock file there keeps two vxlabs from taking each other's value for
//! the original.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::{files, lock};

/// The kernel's switch.
const SWITCH: &str = "/sys/kernel/rcu_expedited";

/// Where the value vxlab found is kept while it is changed.
const RECORD: &str = "rcu_expedited.previous";
const LOCK: &str = "rcu_expedited.lock";

/// The switch and the records, in the real places or (for tests) others.
#[derive(Debug, Clone)]
pub struct Expedite {
    switch: PathBuf,
    dir: PathBuf,
}

impl Default for Expedite {
    fn default() -> Self {
        Expedite {
            switch: PathBuf::from(SWITCH),
            dir: PathBuf::from(lock::RUN_DIR),
        }
    }
}

impl Expedite {
    /// The switch at `switch`, the records in `dir`.
    pub fn at(switch: &Path, dir: &Path) -> Self {
        Expedite {
            switch: switch.to_path_buf(),
            dir: dir.to_path_buf(),
        }
    }

    /// Runs `f` with grace periods expedited, and restores the switch afterwards. Where the
    /// switch cannot be changed (no such file, not allowed), `f` runs as it is: slower, the
    /// same result.
    pub fn during<T>(&self, f: impl FnOnce() -> T) -> T {
        let Ok(held) = self.begin() else {
            return f();
        };
        let out = f();
        self.end(held);
        out
    }

    /// Takes the lock, restores what a killed vxlab left, records the value found and sets 1.
    fn begin(&self) -> io::Result<File> {
        let held = lock::open_lock_file(&self.dir, LOCK)?;
        lock::flock(&held, true)?;
        let record = self.dir.join(RECORD);
        let previous = match read_value(&record) {
            Ok(v) => v,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let now = std::fs::read_to_string(&self.switch)?.trim().to_string();
                files::write_replacing(&record, now.as_bytes(), files::PRIVATE)?;
                now
            }
            Err(e) => return Err(e),
        };
        if previous != "1" && std::fs::write(&self.switch, "1").is_err() {
            let _ = std::fs::remove_file(&record);
            return Err(io::Error::other("cannot set rcu_expedited"));
        }
        Ok(held)
    }

    /// Writes back the value recorded, then drops the record and the lock.
    fn end(&self, held: File) {
        let record = self.dir.join(RECORD);
        if let Ok(previous) = read_value(&record) {
            if std::fs::write(&self.switch, &previous).is_ok() {
                let _ = std::fs::remove_file(&record);
            }
        }
        drop(held);
    }
}

/// The value in a record file: "0" or "1", nothing else.
fn read_value(path: &Path) -> io::Result<String> {
    let mut text = String::new();
    files::open_no_follow(path)?.read_to_string(&mut text)?;
    match text.trim() {
        v @ ("0" | "1") => Ok(v.to_string()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} holds neither 0 nor 1", path.display()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(value: &str) -> (tempfile::TempDir, Expedite) {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("switch"), value).unwrap();
        let e = Expedite::at(&t.path().join("switch"), &t.path().join("run"));
        (t, e)
    }

    fn switch(t: &tempfile::TempDir) -> String {
        std::fs::read_to_string(t.path().join("switch")).unwrap()
    }

    #[test]
    fn on_during_the_work_and_restored_after() {
        let (t, e) = setup("0\n");
        let seen = e.during(|| switch(&t));
        assert_eq!(seen, "1");
        assert_eq!(switch(&t), "0");
        assert!(!t.path().join("run").join(RECORD).exists());
    }

    #[test]
    fn a_switch_already_on_stays_on() {
        let (t, e) = setup("1\n");
        e.during(|| ());
        assert_eq!(switch(&t).trim(), "1");
    }

    #[test]
    fn what_a_killed_vxlab_found_is_what_is_restored() {
        // A vxlab killed mid-deletion left the switch on and its record of the original.
        let (t, e) = setup("1");
        std::fs::create_dir_all(t.path().join("run")).unwrap();
        std::fs::write(t.path().join("run").join(RECORD), "0").unwrap();
        e.during(|| ());
        assert_eq!(switch(&t), "0");
    }

    #[test]
    fn without_a_switch_the_work_still_runs() {
        let t = tempfile::tempdir().unwrap();
        let e = Expedite::at(&t.path().join("absent"), &t.path().join("run"));
        assert_eq!(e.during(|| 7), 7);
        assert!(!t.path().join("absent").exists());
    }
}
