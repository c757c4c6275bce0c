//! The result of a lab's last check, kept beside its state so that `status` can say how the lab
//! was when it was last looked at, and how long ago.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::host::files;
use crate::state::StateError;
use crate::verify::Verdict;

const FILE: &str = "health.json";

/// A lab's last check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// When, in seconds since the epoch.
    pub at: u64,
    /// Checks that held.
    pub passed: usize,
    /// Checks that failed.
    pub failed: usize,
    /// The causes, one line each (`vm-a: eth0 is down (underlay): expected up, seen down`).
    pub causes: Vec<String>,
}

impl Health {
    /// The health a verdict shows, now.
    pub fn of(verdict: &Verdict) -> Health {
        Health {
            at: now(),
            passed: verdict.passed,
            failed: verdict.failures.len(),
            causes: verdict
                .diagnoses
                .iter()
                .map(|d| {
                    let c = &d.cause;
                    format!(
                        "{}: {}: expected {}, seen {}",
                        c.place(),
                        c.what,
                        c.expected,
                        c.seen
                    )
                })
                .collect(),
        }
    }

    /// One cell for a table: `ok` or the first cause and how many more.
    pub fn summary(&self) -> String {
        match self.causes.as_slice() {
            [] if self.failed == 0 => format!("ok ({} checks)", self.passed),
            [] => format!("{} checks failed", self.failed),
            [one] => format!("FAILING: {one}"),
            [first, rest @ ..] => format!(
                "FAILING: {first} (+{} more {})",
                rest.len(),
                if rest.len() == 1 { "cause" } else { "causes" }
            ),
        }
    }

    /// How long ago, in words: `12 s ago`, `5 min ago`, `3 h ago`.
    pub fn age(&self) -> String {
        let s = now().saturating_sub(self.at);
        match s {
            0..=119 => format!("{s} s ago"),
            120..=7199 => format!("{} min ago", s / 60),
            _ => format!("{} h ago", s / 3600),
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Keeps `verdict` as the lab's last check in its state directory `dir`.
pub fn save(dir: &Path, verdict: &Verdict) -> Result<(), StateError> {
    let path = dir.join(FILE);
    let text = serde_json::to_string_pretty(&Health::of(verdict)).expect("health serializes");
    files::write_replacing(&path, text.as_bytes(), files::PRIVATE).map_err(|source| {
        StateError::Io {
            what: "cannot write",
            path,
            source,
        }
    })
}

/// The lab's last check, if there was one.
pub fn load(dir: &Path) -> Option<Health> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut files::open_no_follow(&dir.join(FILE)).ok()?, &mut text)
        .ok()?;
    serde_json::from_str(&text).ok()
}
