//! Room in the kernel's neighbour table, shared by every lab on the host.
//!
//! All namespaces share one neighbour table per address family; a full mesh of many guests
//! overflows the default (`gc_thresh3` = 1024) and pings get lost, so labs raise
//! `gc_thresh2` and `gc_thresh3`. Recorded per lab, the raise was not handed over: lab B found
//! it already high and recorded nothing, and after both went down it stayed raised; in another
//! state directory, one lab's `down` lowered it under a lab still running.
//!
//! One host-wide ledger under `/run/vxlab` records who needs how much and what each setting
//! was before vxlab first raised it. [`Ledger::claim`] raises a setting only as far as the
//! claims need; [`Ledger::release`] lowers it to what the remaining claims need and restores
//! the original when no claim needs it. Both are pure; [`NeighbourClaims`] does the file and
//! `/proc/sys` work at the edge.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{files, lock, sysctl};

/// How many neighbour entries a lab needs, per address family, and how far its floods reach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeighbourNeeds {
    /// IPv4 entries.
    pub ipv4: usize,
    /// IPv6 entries.
    pub ipv6: usize,
    /// How many namespaces one multicast frame on the lab's bridge reaches.
    #[serde(default)]
    pub flood: usize,
}

/// The setting that bounds the frames waiting for the kernel on one CPU.
pub const BACKLOG: &str = "net.core.netdev_max_backlog";

/// Backlog room per namespace a flood reaches. The first ping to each peer floods an ARP
/// request to every VTEP, and the bridge hands a flood's copies to the veths all at once, each
/// into the CPU's backlog (1000 frames by default). A 200-guest mesh lost 66,000 frames there
/// and a ping after three tries; with room for 64 floods at once it lost none.
const BACKLOG_PER_NAMESPACE: u64 = 64;

/// The value each setting must reach for `needs`: garbage collection starts at `gc_thresh2`,
/// twice the entries; `gc_thresh3`, the hard limit, is four times; the backlog holds 64
/// floods.
pub fn targets(needs: NeighbourNeeds) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    if needs.flood > 0 {
        out.push((
            BACKLOG.to_string(),
            needs.flood as u64 * BACKLOG_PER_NAMESPACE,
        ));
    }
    for (entries, ipv6) in [(needs.ipv4, false), (needs.ipv6, true)] {
        if entries == 0 {
            continue;
        }
        let keys = sysctl::neighbour_keys(ipv6);
        let n = entries as u64;
        out.push((keys[1].clone(), n * 2));
        out.push((keys[2].clone(), n * 4));
    }
    out
}

/// The kernel's own value of a setting vxlab raises, as a fresh host has it.
fn kernel_default(key: &str) -> u64 {
    if key == BACKLOG {
        1000
    } else if key.ends_with("gc_thresh2") {
        512
    } else if key.ends_with("gc_thresh3") {
        1024
    } else {
        0
    }
}

/// A setting to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The sysctl.
    pub key: String,
    /// Its value now; `None` when it cannot be read here: vxlab runs in a network namespace
    /// other than the host's, where the kernel keeps these settings (and the limits they set
    /// bind every namespace), so it can neither read nor raise them.
    pub from: Option<u64>,
    /// The value to write.
    pub to: u64,
}

impl Change {
    /// The change in words, for `up` and `down` to print.
    pub fn describe(&self) -> String {
        let Some(from) = self.from else {
            return format!(
                "cannot raise {key} to {to} from this network namespace (the host's holds it): \
                 run `sysctl -w {key}={to}` on the host, or pings may be lost",
                key = self.key,
                to = self.to
            );
        };
        let verb = if self.to > from { "raised" } else { "lowered" };
        format!("{verb} {} from {from} to {}", self.key, self.to)
    }

    /// Whether the change is to be written (one that cannot be is only said).
    pub fn writable(&self) -> bool {
        self.from.is_some()
    }
}

/// The host-wide record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// What each lab needs, by lab id (its state directory).
    pub claims: BTreeMap<String, NeighbourNeeds>,
    /// Each setting's value before vxlab first raised it.
    pub original: BTreeMap<String, u64>,
    /// The value vxlab last wrote to each setting: a different value now means someone else
    /// changed it since, and vxlab leaves it alone.
    pub applied: BTreeMap<String, u64>,
}

impl Ledger {
    /// What the claims need of `key`, if any claim needs it.
    fn required(&self, key: &str) -> Option<u64> {
        self.claims
            .values()
            .flat_map(|n| targets(*n))
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v)
            .max()
    }

    /// Records that `lab` needs `needs` (replacing an earlier claim of its own) and returns
    /// the settings to raise; `current` reads a setting's present value.
    pub fn claim(
        &mut self,
        lab: &str,
        needs: NeighbourNeeds,
        current: impl Fn(&str) -> Option<u64>,
    ) -> Vec<Change> {
        self.claims.insert(lab.to_string(), needs);
        let mut changes = Vec::new();
        for (key, _) in targets(needs) {
            let Some(want) = self.required(&key) else {
                continue;
            };
            let Some(now) = current(&key) else {
                // Not here to raise: say so when the lab needs more than a fresh kernel has.
                if want > kernel_default(&key) {
                    changes.push(Change {
                        key,
                        from: None,
                        to: want,
                    });
                }
                continue;
            };
            if now >= want {
                continue;
            }
            self.original.entry(key.clone()).or_insert(now);
            self.applied.insert(key.clone(), want);
            changes.push(Change {
                key,
                from: Some(now),
                to: want,
            });
        }
        changes
    }

    /// Drops `lab`'s claim and returns the settings to lower: to what the other claims need,
    /// or back to the original when none needs the setting.
    pub fn release(&mut self, lab: &str, current: impl Fn(&str) -> Option<u64>) -> Vec<Change> {
        self.claims.remove(lab);
        let mut changes = Vec::new();
        let keys: Vec<String> = self.original.keys().cloned().collect();
        for key in keys {
            let original = self.original[&key];
            let needed = self.required(&key);
            let now = current(&key);
            let ours = now.is_some() && now == self.applied.get(&key).copied();
            let want = needed.map_or(original, |n| n.max(original));
            if needed.is_none() || !ours {
                // Nobody needs it any more, or someone else set it since: forget it.
                self.original.remove(&key);
                self.applied.remove(&key);
            }
            match now {
                Some(now) if ours && now != want => {
                    if needed.is_some() {
                        self.applied.insert(key.clone(), want);
                    }
                    changes.push(Change {
                        key,
                        from: Some(now),
                        to: want,
                    });
                }
                _ => {}
            }
        }
        changes
    }
}

/// Reading and writing kernel settings: `/proc/sys`, or a fake in tests.
pub trait Sysctls {
    /// The value of `key`.
    fn read(&self, key: &str) -> io::Result<String>;
    /// Sets `key` to `value`.
    fn write(&self, key: &str, value: &str) -> io::Result<()>;
}

/// The host's `/proc/sys`.
pub struct ProcSys;

impl Sysctls for ProcSys {
    fn read(&self, key: &str) -> io::Result<String> {
        sysctl::read(key)
    }
    fn write(&self, key: &str, value: &str) -> io::Result<()> {
        sysctl::write(key, value)
    }
}

/// The ledger file under a directory (`/run/vxlab`), with its own lock so that it can be used
/// while the host lock is held.
pub struct NeighbourClaims {
    dir: PathBuf,
    /// Whether a claim counts only while its lab's directory holds its state.
    prune: bool,
}

/// The ledger could not be read or written, or a setting could not be changed.
#[derive(Debug, thiserror::Error)]
#[error("neighbour-table record {}: {what}", path.display())]
pub struct ClaimError {
    /// The ledger file.
    pub path: PathBuf,
    /// What failed.
    pub what: String,
    /// Why.
    #[source]
    pub source: io::Error,
}

const LEDGER: &str = "neighbours.json";
const LEDGER_LOCK: &str = "neighbours.lock";

impl NeighbourClaims {
    /// The ledger in [`lock::RUN_DIR`].
    pub fn host() -> Self {
        NeighbourClaims {
            prune: true,
            ..Self::at(Path::new(lock::RUN_DIR))
        }
    }

    /// The ledger in `dir`, its claims named as the caller likes (for tests).
    pub fn at(dir: &Path) -> Self {
        NeighbourClaims {
            dir: dir.to_path_buf(),
            prune: false,
        }
    }

    /// Records that `lab` needs `needs` and raises what must be raised; returns what changed.
    /// `lab` identifies the lab host-wide: its state directory.
    pub fn claim(
        &self,
        lab: &str,
        needs: NeighbourNeeds,
        sys: &dyn Sysctls,
    ) -> Result<Vec<Change>, ClaimError> {
        self.update(sys, Order::RecordFirst, |ledger, current| {
            ledger.claim(lab, needs, current)
        })
    }

    /// Drops `lab`'s claim and lowers or restores what no longer needs to be high; returns
    /// what changed. A lab that claimed nothing changes nothing.
    pub fn release(&self, lab: &str, sys: &dyn Sysctls) -> Result<Vec<Change>, ClaimError> {
        self.update(sys, Order::SettingsFirst, |ledger, current| {
            ledger.release(lab, current)
        })
    }

    /// The ledger as it stands.
    pub fn ledger(&self) -> Result<Ledger, ClaimError> {
        self.load()
    }

    fn err(&self, what: &str) -> impl FnOnce(io::Error) -> ClaimError + '_ {
        let what = what.to_string();
        move |source| ClaimError {
            path: self.dir.join(LEDGER),
            what,
            source,
        }
    }

    fn load(&self) -> Result<Ledger, ClaimError> {
        let mut text = String::new();
        match files::open_no_follow(&self.dir.join(LEDGER)) {
            Ok(mut f) => {
                f.read_to_string(&mut text)
                    .map_err(self.err("cannot read"))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Ledger::default()),
            Err(e) => return Err(self.err("cannot open")(e)),
        }
        serde_json::from_str(&text).map_err(|e| self.err("corrupt")(io::Error::other(e)))
    }

    /// Under the ledger's lock: reads it, decides, and saves it and writes the settings in
    /// `order`, so that a kill in between leaves a record that errs on the side of
    /// restoring: a raise is recorded (with the original) before it is made, and a restore
    /// is made before the original is forgotten.
    fn update(
        &self,
        sys: &dyn Sysctls,
        order: Order,
        decide: impl FnOnce(&mut Ledger, &dyn Fn(&str) -> Option<u64>) -> Vec<Change>,
    ) -> Result<Vec<Change>, ClaimError> {
        let file = lock::open_lock_file(&self.dir, LEDGER_LOCK).map_err(self.err("cannot lock"))?;
        lock::flock(&file, true).map_err(self.err("cannot lock"))?;
        let mut ledger = self.load()?;
        // A lab whose directory lost its state without `down` (deleted by hand, a test's
        // temporary directory) needs nothing any more; what it raised is lowered with the
        // next release.
        if self.prune {
            ledger.claims.retain(|lab, _| {
                // A relative name (an older vxlab's) says nothing from here: kept.
                let dir = Path::new(lab);
                !dir.is_absolute() || dir.join(crate::state::STATE_FILE).exists()
            });
        }
        let current = |key: &str| sys.read(key).ok()?.trim().parse().ok();
        let changes = decide(&mut ledger, &current);
        let save = || {
            let text = serde_json::to_string_pretty(&ledger).expect("the ledger serializes");
            files::write_replacing(&self.dir.join(LEDGER), text.as_bytes(), files::PRIVATE)
                .map_err(self.err("cannot write"))
        };
        let write = || {
            for c in changes.iter().filter(|c| c.writable()) {
                sys.write(&c.key, &c.to.to_string())
                    .map_err(self.err(&format!("cannot set {} to {}", c.key, c.to)))?;
            }
            Ok(())
        };
        match order {
            Order::RecordFirst => save().and_then(|()| write()),
            Order::SettingsFirst => write().and_then(|()| save()),
        }?;
        Ok(changes)
    }
}

/// Which [`NeighbourClaims::update`] does first.
#[derive(Clone, Copy)]
enum Order {
    /// Save the ledger, then write the settings (a claim).
    RecordFirst,
    /// Write the settings, then save the ledger (a release).
    SettingsFirst,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    const V4_2: &str = "net.ipv4.neigh.default.gc_thresh2";
    const V4_3: &str = "net.ipv4.neigh.default.gc_thresh3";
    const V6_3: &str = "net.ipv6.neigh.default.gc_thresh3";

    /// A host's settings as recorded on a fresh Debian 12 machine.
    fn fresh() -> BTreeMap<String, u64> {
        [(512, 2), (1024, 3)]
            .into_iter()
            .flat_map(|(v, n)| {
                ["ipv4", "ipv6"].map(|f| (format!("net.{f}.neigh.default.gc_thresh{n}"), v))
            })
            .collect()
    }

    fn apply(host: &mut BTreeMap<String, u64>, changes: &[Change]) {
        for c in changes {
            host.insert(c.key.clone(), c.to);
        }
    }

    fn v4(n: usize) -> NeighbourNeeds {
        NeighbourNeeds {
            ipv4: n,
            ..Default::default()
        }
    }

    #[test]
    fn the_second_lab_finds_it_raised_and_the_last_one_out_restores_it() {
        let mut host = fresh();
        let mut ledger = Ledger::default();
        let read = |h: &BTreeMap<String, u64>| {
            let h = h.clone();
            move |k: &str| h.get(k).copied()
        };
        // Lab A: 100 guests (about 10,000 entries); lab B: 20 guests.
        let c = ledger.claim("/s1/a", v4(10_100), read(&host));
        assert_eq!(c.len(), 2);
        apply(&mut host, &c);
        assert_eq!(host[V4_3], 40_400);
        let c = ledger.claim("/s2/b", v4(420), read(&host));
        assert!(c.is_empty(), "{c:?}");
        // A leaves: lowered to what B needs, not to the original under B's feet.
        let c = ledger.release("/s1/a", read(&host));
        apply(&mut host, &c);
        assert_eq!((host[V4_2], host[V4_3]), (840, 1680));
        // B leaves: the original comes back and the ledger forgets it.
        let c = ledger.release("/s2/b", read(&host));
        apply(&mut host, &c);
        assert_eq!(host, fresh());
        assert_eq!(ledger, Ledger::default());
    }

    #[test]
    fn a_namespace_without_the_settings_says_what_to_raise_on_the_host_and_writes_nothing() {
        // vxlab itself in a network namespace: /proc/sys there has no neighbour limits.
        let mut ledger = Ledger::default();
        let none = |_: &str| None;
        assert!(ledger.claim("/s/small", v4(100), none).is_empty());
        let c = ledger.claim("/s/big", v4(1000), none);
        assert_eq!(
            c,
            vec![
                Change {
                    key: V4_2.into(),
                    from: None,
                    to: 2000
                },
                Change {
                    key: V4_3.into(),
                    from: None,
                    to: 4000
                }
            ]
        );
        assert!(c.iter().all(|c| !c.writable()));
        assert_eq!(
            c[1].describe(),
            "cannot raise net.ipv4.neigh.default.gc_thresh3 to 4000 from this network namespace \
             (the host's holds it): run `sysctl -w net.ipv4.neigh.default.gc_thresh3=4000` on \
             the host, or pings may be lost"
        );
        assert!(ledger.original.is_empty() && ledger.applied.is_empty());
        assert!(ledger.release("/s/big", none).is_empty());
    }

    #[test]
    fn a_lab_that_needs_less_than_the_host_has_changes_nothing_and_records_no_original() {
        let mut ledger = Ledger::default();
        let host = fresh();
        let c = ledger.claim("/s/small", v4(100), |k| host.get(k).copied());
        assert!(c.is_empty());
        assert!(ledger.original.is_empty());
        assert!(ledger
            .release("/s/small", |k| host.get(k).copied())
            .is_empty());
        assert_eq!(ledger, Ledger::default());
    }

    #[test]
    fn a_setting_someone_else_changed_since_is_left_alone() {
        let mut host = fresh();
        let mut ledger = Ledger::default();
        let c = ledger.claim("/s/a", v4(1000), |k| host.get(k).copied());
        apply(&mut host, &c);
        host.insert(V4_3.into(), 100_000);
        let c = ledger.release("/s/a", |k| host.get(k).copied());
        assert_eq!(
            c,
            vec![Change {
                key: V4_2.into(),
                from: Some(2000),
                to: 512
            }]
        );
        assert_eq!(ledger, Ledger::default());
    }

    #[test]
    fn families_are_handed_over_separately() {
        let mut host = fresh();
        let mut ledger = Ledger::default();
        let both = NeighbourNeeds {
            ipv4: 1000,
            ipv6: 1000,
            flood: 0,
        };
        let c = ledger.claim("/s/a", both, |k| host.get(k).copied());
        apply(&mut host, &c);
        let c = ledger.claim("/s/b", v4(1000), |k| host.get(k).copied());
        apply(&mut host, &c);
        let c = ledger.release("/s/a", |k| host.get(k).copied());
        apply(&mut host, &c);
        // B still needs IPv4; nobody needs IPv6 any more.
        assert_eq!(host[V4_3], 4000);
        assert_eq!(host[V6_3], 1024);
    }

    struct FakeSys(RefCell<BTreeMap<String, u64>>);

    impl Sysctls for FakeSys {
        fn read(&self, key: &str) -> io::Result<String> {
            self.0
                .borrow()
                .get(key)
                .map(u64::to_string)
                .ok_or_else(|| io::ErrorKind::NotFound.into())
        }
        fn write(&self, key: &str, value: &str) -> io::Result<()> {
            self.0
                .borrow_mut()
                .insert(key.into(), value.parse().map_err(io::Error::other)?);
            Ok(())
        }
    }

    #[test]
    fn the_ledger_file_carries_claims_between_processes() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let sys = FakeSys(RefCell::new(fresh()));
        let changes = NeighbourClaims::at(&run)
            .claim("/s1/a", v4(1000), &sys)
            .unwrap();
        assert_eq!(
            changes[1].describe(),
            format!("raised {V4_3} from 1024 to 4000")
        );
        // Another process (another state directory) reads the same record.
        let other = NeighbourClaims::at(&run);
        assert_eq!(other.ledger().unwrap().original[V4_3], 1024);
        other.claim("/s2/b", v4(10), &sys).unwrap();
        other.release("/s1/a", &sys).unwrap();
        assert_eq!(sys.0.borrow()[V4_3], 1024);
        assert!(other.release("/s2/b", &sys).unwrap().is_empty());
        assert_eq!(other.ledger().unwrap(), Ledger::default());
    }

    /// Settings that cannot be written: a vxlab killed before it wrote them.
    struct StuckSys(FakeSys);

    impl Sysctls for StuckSys {
        fn read(&self, key: &str) -> io::Result<String> {
            self.0.read(key)
        }
        fn write(&self, _: &str, _: &str) -> io::Result<()> {
            Err(io::Error::other("killed"))
        }
    }

    #[test]
    fn a_release_stopped_before_it_lowers_the_table_still_knows_the_original() {
        let dir = tempfile::tempdir().unwrap();
        let claims = NeighbourClaims::at(&dir.path().join("run"));
        let sys = FakeSys(RefCell::new(fresh()));
        claims.claim("/s/a", v4(1000), &sys).unwrap();
        assert_eq!(sys.0.borrow()[V4_3], 4000);
        let stuck = StuckSys(FakeSys(RefCell::new(sys.0.borrow().clone())));
        assert!(claims.release("/s/a", &stuck).is_err());
        // The next `down` of the lab restores what the host had.
        assert_eq!(claims.ledger().unwrap().original[V4_3], 1024);
        claims.release("/s/a", &sys).unwrap();
        assert_eq!(sys.0.borrow()[V4_3], 1024);
    }

    #[test]
    fn a_lab_whose_state_is_gone_no_longer_holds_the_table_up() {
        let dir = tempfile::tempdir().unwrap();
        let claims = NeighbourClaims {
            prune: true,
            ..NeighbourClaims::at(&dir.path().join("run"))
        };
        let sys = FakeSys(RefCell::new(fresh()));
        // A big lab raised the table, then its state directory was deleted without `down`.
        let gone = dir.path().join("state-gone/big");
        std::fs::create_dir_all(&gone).unwrap();
        std::fs::write(gone.join(crate::state::STATE_FILE), "{}").unwrap();
        claims
            .claim(gone.to_str().unwrap(), v4(1000), &sys)
            .unwrap();
        assert_eq!(sys.0.borrow()[V4_3], 4000);
        std::fs::remove_dir_all(dir.path().join("state-gone")).unwrap();
        // The next lab comes and goes: the table is back where the host had it.
        let small = dir.path().join("state/small");
        std::fs::create_dir_all(&small).unwrap();
        std::fs::write(small.join(crate::state::STATE_FILE), "{}").unwrap();
        claims.claim(small.to_str().unwrap(), v4(10), &sys).unwrap();
        claims.release(small.to_str().unwrap(), &sys).unwrap();
        assert_eq!(sys.0.borrow()[V4_3], 1024);
        assert_eq!(claims.ledger().unwrap(), Ledger::default());
    }

    #[test]
    fn a_wide_flood_raises_the_backlog_and_a_small_lab_leaves_it() {
        let mut host = fresh();
        host.insert(BACKLOG.to_string(), 1000);
        let mut ledger = Ledger::default();
        let small = NeighbourNeeds {
            ipv4: 8,
            flood: 2,
            ..Default::default()
        };
        assert!(ledger
            .claim("/s/a", small, |k| host.get(k).copied())
            .is_empty());
        let wide = NeighbourNeeds {
            ipv4: 200 * 200,
            flood: 200,
            ..Default::default()
        };
        let c = ledger.claim("/s/b", wide, |k| host.get(k).copied());
        assert!(
            c.iter().any(|c| c.key == BACKLOG && c.to == 200 * 64),
            "{c:?}"
        );
        apply(&mut host, &c);
        let c = ledger.release("/s/b", |k| host.get(k).copied());
        apply(&mut host, &c);
        assert_eq!(host[BACKLOG], 1000);
    }
}
