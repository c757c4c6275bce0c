//! The engine: executes a plan through a driver, observes the guests, and verifies them.
//! Written once against [`Driver`] and [`HostNetwork`]; it never knows which kind of guest it
//! has.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ipnet::IpNet;

mod teach;
mod tools;
mod walk;

pub use walk::{Stage, StageKind};

pub use tools::host_build_root;

use crate::builder::{BuildError, Recipe};
use crate::driver::{Driver, DriverError};
use crate::host::netlink::NetlinkError;
use crate::host::process::{self, Output};
use crate::host::{sysctl, HostNetwork};
use crate::iproute2::{self, Readiness, Tools};
use crate::lab::{DriverKind, Flood};
use crate::observe::{self, GuestState, ParseError};
use crate::plan::{shell_words, Effect, GuestPlan, PingPlan, Plan};
use crate::progress::Progress;
use crate::state::{LabLock, LabState, Resource, StateDir, StateError};
use crate::verify::{self, PingResult, Verdict};

/// What went wrong while running a lab.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A driver operation failed.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// The lab's state could not be read, written or locked.
    #[error(transparent)]
    State(#[from] StateError),
    /// A host link could not be changed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// A planned command failed in a guest.
    #[error("guest {guest}: `{command}` failed: {stderr}")]
    Step {
        /// Guest.
        guest: String,
        /// The command as a student would type it.
        command: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A guest printed state vxlab cannot read.
    #[error("guest {guest}: cannot read its state")]
    Observe {
        /// Guest.
        guest: String,
        /// The parse failure.
        #[source]
        source: ParseError,
    },
    /// The host is not ready for the lab; the message says what to do.
    #[error("{0}")]
    Host(String),
    /// A guest cannot run vxlan, and vxlab cannot make it able to.
    #[error("guest {guest}: {why}")]
    NotReady {
        /// Guest.
        guest: String,
        /// Why, in words a student understands.
        why: String,
    },
    /// Building iproute2 for a guest failed.
    #[error("guest {guest}: {source}")]
    Build {
        /// Guest.
        guest: String,
        /// The build failure, with the log's tail and a hint.
        #[source]
        source: Box<BuildError>,
    },
}

/// The result of `up` or `check`.
#[derive(Debug)]
pub struct Outcome {
    /// What each guest's kernel reported after the pings.
    pub observed: BTreeMap<String, GuestState>,
    /// Every ping.
    pub pings: Vec<PingResult>,
    /// The checks.
    pub verdict: Verdict,
    /// Notes for the user (settings changed, resources adopted).
    pub notes: Vec<String>,
    /// The `ip` and `bridge` each guest runs, and how vxlab got them.
    pub tools: BTreeMap<String, Tools>,
    /// What each guest's kernel and `ip` can do, as checked with those tools.
    pub readiness: BTreeMap<String, Readiness>,
}

/// Runs labs.
pub struct Engine {
    driver: Box<dyn Driver>,
    host: Arc<dyn HostNetwork>,
    state: StateDir,
    /// What iproute2 is built from, when the lab names a source.
    recipe: Option<Recipe>,
    /// The tools each guest is configured with, by guest name.
    tools: Mutex<BTreeMap<String, Tools>>,
    /// The lab's state directory while `up` or `check` holds its lock: every command run in a
    /// guest is logged there, as the student would type it, with its exit status.
    log_dir: Mutex<Option<std::path::PathBuf>>,
}

impl Engine {
    /// An engine over `driver` and `host`, keeping state in `state`.
    pub fn new(driver: Box<dyn Driver>, host: Arc<dyn HostNetwork>, state: StateDir) -> Self {
        Engine {
            driver,
            host,
            state,
            recipe: None,
            tools: Mutex::default(),
            log_dir: Mutex::default(),
        }
    }

    /// The same engine, building iproute2 from `recipe` where guests need it.
    pub fn with_recipe(mut self, recipe: Option<Recipe>) -> Self {
        self.recipe = recipe;
        self
    }

    /// Brings the lab up (or converges a running one), then checks it.
    pub fn up(
        &self,
        plan: &Plan,
        source: &Path,
        lab_text: &str,
        ui: &Progress,
    ) -> Result<Outcome, EngineError> {
        let (_lock, notes) = self.provision(plan, source, lab_text, ui, &|g| self.configure(g))?;
        let mut outcome = self.verify_running(plan)?;
        outcome.notes.splice(0..0, notes);
        Ok(outcome)
    }

    /// Everything before the checks: the lab's state and lock, the bridge, every guest
    /// created in parallel with its tools ready, then `then` run on each guest. Returns the
    /// lock (held until dropped) and notes for the user.
    fn provision(
        &self,
        plan: &Plan,
        source: &Path,
        lab_text: &str,
        ui: &Progress,
        then: &(dyn Fn(&GuestPlan) -> Result<(), EngineError> + Sync),
    ) -> Result<(LabLock, Vec<String>), EngineError> {
        // Refuse before anything is written, the lock directory included.
        let known = match self.state.read(&plan.lab) {
            Ok(st) => st.resources,
            Err(StateError::NotRunning(..)) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        refuse_foreign_bridge(plan, &known)?;
        refuse_routed_subnet(plan)?;
        let lock = self.state.lock(&plan.lab)?;
        let mut st = lock.load()?.unwrap_or_else(|| LabState {
            lab: plan.lab.clone(),
            source: source.to_path_buf(),
            resources: Vec::new(),
            tools: BTreeMap::new(),
            instance: plan.instance.clone(),
        });
        lock.save_lab_copy(lab_text)?;
        lock.save(&st)?;

        let mut notes = Vec::new();
        if plan.driver == DriverKind::Netns {
            notes.extend(size_neighbour_tables(plan, &lock, &mut st)?);
        }
        lock.record(
            &mut st,
            vec![Resource::Bridge {
                name: plan.bridge.clone(),
            }],
        )?;
        self.host.ensure_bridge(&plan.bridge, plan.gateway)?;

        let guest_resources = plan
            .guests
            .iter()
            .flat_map(|g| self.driver.guest_resources(g))
            .collect();
        lock.record(&mut st, guest_resources)?;

        let state_dir = lock.dir();
        self.set_log_dir(Some(state_dir));
        let results: Vec<Result<(), EngineError>> = std::thread::scope(|s| {
            let handles: Vec<_> = plan
                .guests
                .iter()
                .map(|g| {
                    let bar = ui.line(&g.name);
                    s.spawn(move || {
                        let progress = |stage: &str| bar.set_message(stage.to_string());
                        let r = self
                            .driver
                            .create_guest(plan, g, &progress)
                            .map_err(EngineError::from)
                            .and_then(|()| {
                                let t =
                                    self.prepare_tools(plan.iproute2, g, state_dir, &progress)?;
                                self.set_tools(g, t);
                                bar.set_message("configuring vxlan");
                                then(g)
                            });
                        match &r {
                            Ok(()) => bar.finish_with_message("ready"),
                            Err(_) => bar.abandon_with_message("failed"),
                        }
                        r
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("guest thread panicked"))
                .collect()
        });
        // What each guest was configured with, failed guests' neighbours included.
        st.tools = self.tools.lock().unwrap_or_else(|p| p.into_inner()).clone();
        lock.save(&st)?;
        if let Some(e) = results.into_iter().find_map(Result::err) {
            return Err(e);
        }
        Ok((lock, notes))
    }

    /// Runs one guest's planned steps, skipping what is already in place. One batch reads
    /// the guest, one runs what is left: two round trips, whatever the driver.
    fn configure(&self, g: &GuestPlan) -> Result<(), EngineError> {
        let head_end: Vec<&str> = g
            .vteps
            .iter()
            .filter(|v| v.flood == Flood::HeadEnd)
            .map(|v| v.device.as_str())
            .collect();
        let json = self.tools_of(g).json;
        let mut reads = vec![
            observe::commands::links(json),
            observe::commands::addresses(json),
        ];
        reads.extend(head_end.iter().map(|d| observe::commands::fdb(json, d)));
        let outs = self.batch(g, &reads, false)?;
        let mut now = self.links_from(g, &reads, &outs)?;
        // A device that does not exist yet has no FDB to read: its command failed.
        let fdb: BTreeMap<&str, Vec<observe::FdbEntry>> = head_end
            .iter()
            .zip(&outs[2..])
            .filter(|(_, o)| o.success())
            .map(|(d, o)| Ok((*d, Self::parse(g, observe::read_fdb(json, &o.stdout))?)))
            .collect::<Result<_, EngineError>>()?;

        let mut todo: Vec<Vec<String>> = Vec::new();
        for step in &g.steps {
            match &step.effect {
                Effect::CreateVtep { vtep } => {
                    let v = &g.vteps[*vtep];
                    if let Some(link) = now.links.get(&v.device) {
                        let same = link.vxlan.as_ref().is_some_and(|p| {
                            p.vni == v.vni
                                && p.port == v.port
                                && p.learning == v.learning
                                && p.dev.as_deref() == Some(v.dev.as_str())
                                && p.group == group_of(&v.flood)
                        });
                        if same {
                            continue;
                        }
                        todo.push(
                            ["ip", "link", "del", "dev", &v.device]
                                .map(String::from)
                                .to_vec(),
                        );
                        // What was seen on the old device no longer holds.
                        now.links.remove(&v.device);
                    }
                }
                Effect::AddAddress { dev, address } => {
                    if now
                        .links
                        .get(dev)
                        .is_some_and(|l| l.addresses.contains(address))
                    {
                        continue;
                    }
                }
                Effect::FloodEntry { dev, dst } => {
                    let present = now.links.contains_key(dev)
                        && fdb.get(dev.as_str()).is_some_and(|es| {
                            es.iter().any(|e| e.mac.is_zero() && e.dst == Some(*dst))
                        });
                    if present {
                        continue;
                    }
                }
                Effect::Setting => {}
            }
            todo.push(step.argv.clone());
        }
        self.batch(g, &todo, true)?;
        Ok(())
    }

    /// Runs `cmds` in one batch; a failed command is an error (the batch stops there when
    /// `stop_on_failure`, otherwise the caller judges the outputs).
    fn batch(
        &self,
        g: &GuestPlan,
        cmds: &[Vec<String>],
        stop_on_failure: bool,
    ) -> Result<Vec<Output>, EngineError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let tools = self.tools_of(g);
        let cmds: Vec<Vec<String>> = cmds.iter().map(|c| tools.apply(c)).collect();
        let outs = self.driver.exec_batch(g, &cmds, stop_on_failure)?;
        self.log_commands(g, &cmds, &outs);
        if stop_on_failure {
            if let Some((argv, out)) = cmds.iter().zip(&outs).find(|(_, o)| !o.success()) {
                return Err(EngineError::Step {
                    guest: g.name.clone(),
                    command: shell_words(argv),
                    stderr: out.stderr.trim().to_string(),
                });
            }
        }
        Ok(outs)
    }

    /// Appends the commands that ran in `g` to its log, `commands-<guest>.log`.
    fn log_commands(&self, g: &GuestPlan, cmds: &[Vec<String>], outs: &[Output]) {
        let Some(dir) = self
            .log_dir
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return;
        };
        let text: String = cmds
            .iter()
            .zip(outs)
            .map(|(c, o)| format!("{}  # exit {}\n", shell_words(c), o.status))
            .collect();
        let path = dir.join(format!("commands-{}.log", g.name));
        // The log is for people; a lab does not fail because it could not be written.
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
    }

    fn set_log_dir(&self, dir: Option<&Path>) {
        *self.log_dir.lock().unwrap_or_else(|p| p.into_inner()) = dir.map(Path::to_path_buf);
    }

    fn parse<T>(g: &GuestPlan, r: Result<T, ParseError>) -> Result<T, EngineError> {
        r.map_err(|source| EngineError::Observe {
            guest: g.name.clone(),
            source,
        })
    }

    /// Links with their addresses, from the outputs of the links and addresses commands,
    /// which come first in `cmds`.
    fn links_from(
        &self,
        g: &GuestPlan,
        cmds: &[Vec<String>],
        outs: &[Output],
    ) -> Result<GuestState, EngineError> {
        for (argv, out) in cmds.iter().zip(outs).take(2) {
            if !out.success() {
                return Err(EngineError::Step {
                    guest: g.name.clone(),
                    command: shell_words(argv),
                    stderr: out.stderr.trim().to_string(),
                });
            }
        }
        let json = self.tools_of(g).json;
        Ok(GuestState::new(
            Self::parse(g, observe::read_links(json, &outs[0].stdout))?,
            Self::parse(g, observe::read_addresses(json, &outs[1].stdout))?,
        ))
    }

    /// Links with their addresses.
    fn read_links(&self, g: &GuestPlan) -> Result<GuestState, EngineError> {
        let json = self.tools_of(g).json;
        let cmds = [
            observe::commands::links(json),
            observe::commands::addresses(json),
        ];
        let outs = self.batch(g, &cmds, false)?;
        self.links_from(g, &cmds, &outs)
    }

    /// Everything a student would look at in one guest, in one batch: links, addresses, the
    /// groups joined on the underlay interface, each vxlan device's FDB.
    pub fn observe(&self, g: &GuestPlan) -> Result<GuestState, EngineError> {
        self.read_guest(g, false).map(|(st, _)| st)
    }

    /// [`Engine::observe`], with the readiness check in the same batch when `ready`.
    fn read_guest(
        &self,
        g: &GuestPlan,
        ready: bool,
    ) -> Result<(GuestState, Option<Readiness>), EngineError> {
        let tools = self.tools_of(g);
        let json = tools.json;
        let mut cmds = vec![
            observe::commands::links(json),
            observe::commands::addresses(json),
            observe::commands::groups(json, &g.interface),
        ];
        cmds.extend(
            g.vteps
                .iter()
                .map(|v| observe::commands::fdb(json, &v.device)),
        );
        let n = cmds.len();
        if ready {
            cmds.extend(iproute2::readiness_commands(&tools.ip));
        }
        let outs = self.batch(g, &cmds, false)?;
        let readiness = ready.then(|| Readiness::from_outputs(&tools.ip, &outs[n..]));
        let outs = &outs[..n];
        let mut st = self.links_from(g, &cmds, outs)?;
        st.groups = Self::parse(g, observe::read_groups(json, &outs[2].stdout))?;
        for (v, out) in g.vteps.iter().zip(&outs[3..]) {
            // A missing device has no FDB; verify reports the device itself.
            if out.success() {
                st.fdb.insert(
                    v.device.clone(),
                    Self::parse(g, observe::read_fdb(json, &out.stdout))?,
                );
            }
        }
        Ok((st, readiness))
    }

    /// Pings, then reads every guest, then verifies: what `check` does on a running lab.
    pub fn verify_running(&self, plan: &Plan) -> Result<Outcome, EngineError> {
        // A guest that cannot be pinged from or read is a failed check, not an aborted run;
        // why it failed goes into the notes.
        let mut notes = Vec::new();
        let pings = self.ping_all(plan, &mut notes);
        let mut observed = BTreeMap::new();
        let mut readiness = BTreeMap::new();
        let seen = parallel_map(&plan.guests, self.driver.parallel_commands(), |g| {
            self.read_guest(g, true)
        });
        for (g, r) in plan.guests.iter().zip(seen) {
            match r {
                Ok((s, ready)) => {
                    observed.insert(g.name.clone(), s);
                    readiness.extend(ready.map(|r| (g.name.clone(), r)));
                }
                Err(e) => notes.push(e.to_string()),
            }
        }
        let verdict = verify::verify(plan, &observed, &pings);
        Ok(Outcome {
            observed,
            pings,
            verdict,
            notes,
            tools: self.tools.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            readiness,
        })
    }

    /// Runs every planned ping, the guests' at once.
    fn ping_all(&self, plan: &Plan, notes: &mut Vec<String>) -> Vec<PingResult> {
        let replies = parallel_map(&plan.guests, self.driver.parallel_commands(), |g| {
            let mine: Vec<PingPlan> = plan
                .pings
                .iter()
                .filter(|p| p.from == g.name)
                .cloned()
                .collect();
            let (replied, error) = match self.driver.ping(g, &mine) {
                Ok(r) => (r, None),
                Err(e) => (vec![false; mine.len()], Some(e.to_string())),
            };
            (mine.into_iter().zip(replied), error)
        });
        let (replies, errors): (Vec<_>, Vec<_>) = replies.into_iter().unzip();
        notes.extend(errors.into_iter().flatten());
        // Each guest's results are in plan order; interleave them back into the plan's order.
        let mut by_guest: BTreeMap<&str, _> = plan
            .guests
            .iter()
            .map(|g| g.name.as_str())
            .zip(replies)
            .collect();
        plan.pings
            .iter()
            .filter_map(|p| by_guest.get_mut(p.from.as_str())?.next())
            .map(|(ping, replied)| PingResult { ping, replied })
            .collect()
    }

    /// Re-verifies a running lab under its lock.
    pub fn check(&self, plan: &Plan) -> Result<Outcome, EngineError> {
        let lock = self.state.lock(&plan.lab)?;
        self.load_tools(&lock)?;
        self.set_log_dir(Some(lock.dir()));
        self.verify_running(plan)
    }

    /// Removes every resource recorded for the lab, newest first, then its state.
    pub fn down(&self, lab: &str) -> Result<Vec<String>, EngineError> {
        let lock = self.state.lock(lab)?;
        let Some(st) = lock.load()? else {
            lock.remove()?;
            return Ok(vec![format!("lab {lab} is not running; nothing to remove")]);
        };
        let others_running = self.state.labs().iter().any(|l| l != lab);
        let mut notes = Vec::new();
        // Host links first and all at once: deleting one also deletes its peer in the guest.
        let host_links: Vec<String> = st
            .resources
            .iter()
            .filter_map(|r| match r {
                Resource::HostLink { name } => Some(name.clone()),
                _ => None,
            })
            .collect();
        self.host.delete_links(&host_links)?;
        for r in st.resources.iter().rev() {
            match r {
                Resource::HostLink { .. } => {}
                Resource::Bridge { name } => {
                    self.host.delete_link(name)?;
                }
                Resource::Path { path } => {
                    let _ = std::fs::remove_file(path).or_else(|_| std::fs::remove_dir_all(path));
                }
                Resource::Sysctl { key, previous } => {
                    if others_running {
                        notes.push(format!("left {key} raised: other labs are still running"));
                    } else if sysctl::write(key, previous).is_ok() {
                        notes.push(format!("restored {key} to {previous}"));
                    }
                }
                other => {
                    self.driver.remove(other)?;
                }
            }
        }
        lock.remove()?;
        Ok(notes)
    }

    /// Takes the tools `up` configured the guests with from the lab's state.
    fn load_tools(&self, lock: &LabLock) -> Result<(), EngineError> {
        if let Some(st) = lock.load()? {
            *self.tools.lock().unwrap_or_else(|p| p.into_inner()) = st.tools;
        }
        Ok(())
    }

    /// Whether each guest of a running lab exists and has its vxlan devices.
    pub fn health(&self, plan: &Plan) -> Vec<(String, Result<(), String>)> {
        parallel_map(&plan.guests, self.driver.parallel_commands(), |g| {
            let r = if !self.driver.guest_exists(g) {
                Err("guest missing".to_string())
            } else {
                match self.read_links(g) {
                    Err(e) => Err(e.to_string()),
                    Ok(st) => {
                        let missing: Vec<&str> = g
                            .vteps
                            .iter()
                            .filter(|v| !st.links.contains_key(&v.device))
                            .map(|v| v.device.as_str())
                            .collect();
                        if missing.is_empty() {
                            Ok(())
                        } else {
                            Err(format!("{} missing", missing.join(", ")))
                        }
                    }
                }
            };
            (g.name.clone(), r)
        })
    }
}

fn group_of(flood: &Flood) -> Option<IpAddr> {
    match flood {
        Flood::Group(ip) => Some(*ip),
        Flood::HeadEnd => None,
    }
}

/// A bridge of that name that this lab did not create belongs to someone else.
fn refuse_foreign_bridge(plan: &Plan, known: &[Resource]) -> Result<(), EngineError> {
    let ours = known.contains(&Resource::Bridge {
        name: plan.bridge.clone(),
    });
    let exists = Path::new("/sys/class/net").join(&plan.bridge).exists();
    if exists && !ours {
        return Err(EngineError::Host(format!(
            "a link named {} already exists on this host and lab {} did not create it; \
             choose another `underlay.bridge`",
            plan.bridge, plan.lab
        )));
    }
    Ok(())
}

/// The kernel's neighbour table is shared by every namespace; a full mesh of many namespace
/// guests overflows the default (`gc_thresh3` = 1024) and pings get lost. Raise it for the lab.
fn size_neighbour_tables(
    plan: &Plan,
    lock: &LabLock,
    st: &mut LabState,
) -> Result<Vec<String>, EngineError> {
    let (v4, v6) = plan.neighbours_needed();
    let mut notes = Vec::new();
    for (needed, ipv6) in [(v4, false), (v6, true)] {
        if needed == 0 {
            continue;
        }
        let keys = sysctl::neighbour_keys(ipv6);
        // gc_thresh2 is where garbage collection starts, gc_thresh3 the hard limit.
        for (key, target) in [(&keys[1], needed * 2), (&keys[2], needed * 4)] {
            let Ok(now) = sysctl::read(key) else { continue };
            let current: usize = now.parse().unwrap_or(usize::MAX);
            if current >= target {
                continue;
            }
            lock.record(
                st,
                vec![Resource::Sysctl {
                    key: key.clone(),
                    previous: now.clone(),
                }],
            )?;
            sysctl::write(key, &target.to_string())
                .map_err(|e| EngineError::Host(format!("cannot raise {key} to {target}: {e}")))?;
            notes.push(format!(
                "raised {key} from {now} to {target}: the lab needs about {needed} neighbour entries \
                 and all namespaces share one table"
            ));
        }
    }
    Ok(notes)
}

/// Refuses a lab whose underlay subnet the host already routes elsewhere: the lab would hijack
/// or be hijacked by that network.
fn refuse_routed_subnet(plan: &Plan) -> Result<(), EngineError> {
    let subnet = plan.gateway.trunc();
    let family = if subnet.addr().is_ipv4() { "-4" } else { "-6" };
    let argv = ["ip", "-j", family, "route", "show"].map(String::from);
    let Ok(out) = process::run(&argv, None) else {
        return Ok(());
    };
    #[derive(serde::Deserialize)]
    struct Route {
        dst: String,
        dev: Option<String>,
    }
    let routes: Vec<Route> = serde_json::from_str(&out.stdout).unwrap_or_default();
    for r in routes {
        let Ok(dst) = r.dst.parse::<IpNet>() else {
            continue;
        };
        if dst.prefix_len() == 0 || r.dev.as_deref() == Some(plan.bridge.as_str()) {
            continue;
        }
        if dst.contains(&subnet.network()) || subnet.contains(&dst.network()) {
            return Err(EngineError::Host(format!(
                "the underlay subnet {subnet} overlaps {} routed via {} on this host; \
                 choose another `underlay.subnet`",
                r.dst,
                r.dev.as_deref().unwrap_or("another route")
            )));
        }
    }
    Ok(())
}

/// Maps `f` over `items` with at most `workers` threads, keeping the order.
pub fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    workers: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let mut slots: Vec<Option<R>> = Vec::new();
    slots.resize_with(items.len(), || None);
    let done = std::sync::Mutex::new(slots);
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(1, items.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                done.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
            });
        }
    });
    done.into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .map(|r| r.expect("every item was mapped"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::netlink::NetlinkError;
    use std::sync::Mutex;

    /// Records what the engine asks of the host and the guests; every command succeeds.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<String>>,
        state: Option<StateDir>,
    }

    impl Recorder {
        fn log(&self, what: String) {
            self.calls.lock().unwrap().push(what);
        }
    }

    impl HostNetwork for Recorder {
        fn ensure_bridge(&self, name: &str, _: IpNet) -> Result<(), NetlinkError> {
            self.log(format!("bridge {name}"));
            Ok(())
        }
        fn delete_link(&self, name: &str) -> Result<bool, NetlinkError> {
            self.log(format!("del {name}"));
            Ok(true)
        }
        fn delete_links(&self, names: &[String]) -> Result<usize, NetlinkError> {
            self.log(format!("del {}", names.join(",")));
            Ok(names.len())
        }
    }

    impl Driver for Arc<Recorder> {
        fn guest_resources(&self, g: &GuestPlan) -> Vec<Resource> {
            vec![Resource::Domain {
                name: g.instance.clone(),
            }]
        }
        fn create_guest(
            &self,
            plan: &Plan,
            g: &GuestPlan,
            _: &dyn Fn(&str),
        ) -> Result<(), DriverError> {
            // The resource must be in the state file before the guest exists.
            let st = self.state.as_ref().unwrap().read(&plan.lab).unwrap();
            assert!(st.resources.contains(&Resource::Domain {
                name: g.instance.clone()
            }));
            self.log(format!("create {}", g.name));
            Ok(())
        }
        fn exec(&self, _: &GuestPlan, argv: &[String]) -> Result<Output, DriverError> {
            // A current guest: new kernel, an ip that knows vxlan, no state yet.
            let (stdout, stderr) = match argv.iter().map(String::as_str).collect::<Vec<_>>()[..] {
                ["uname", "-r"] => ("6.1.0-27-amd64", ""),
                ["ip", "link", "help"] => ("", "TYPE := { bridge | vxlan }"),
                ["ip" | "bridge", ..] => ("[]", ""),
                _ => ("", ""),
            };
            Ok(Output {
                status: 0,
                stdout: stdout.into(),
                stderr: stderr.into(),
            })
        }
        fn remove(&self, r: &Resource) -> Result<bool, DriverError> {
            self.log(format!("remove {r:?}"));
            Ok(true)
        }
        fn guest_exists(&self, _: &GuestPlan) -> bool {
            true
        }
        fn parallel_commands(&self) -> usize {
            2
        }
    }

    #[test]
    fn up_records_each_guest_before_creating_it_and_down_removes_all_in_reverse() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::at(tmp.path());
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/labs/two-vm.yaml"))
                .unwrap()
                .replace("vbr0", "vxfake0")
                .replace("192.168.10.", "198.18.10.");
        let lab = crate::lab::parse(&text, Path::new("two-vm.yaml")).unwrap();
        let plan = crate::plan::plan(&lab);
        let rec = Arc::new(Recorder {
            state: Some(state.clone()),
            ..Recorder::default()
        });
        let engine = Engine::new(Box::new(rec.clone()), rec.clone(), state.clone());
        let o = engine
            .up(&plan, Path::new("two-vm.yaml"), &text, &Progress::new())
            .unwrap();
        // The fake guests report nothing, so the checks must fail: nothing is taken on trust.
        assert!(!o.verdict.ok());
        assert_eq!(state.labs(), vec!["two-vm".to_string()]);
        rec.calls.lock().unwrap().clear();

        engine.down("two-vm").unwrap();
        assert_eq!(
            *rec.calls.lock().unwrap(),
            [
                "del ".to_string(),
                "remove Domain { name: \"vxlab-two-vm.vm-b\" }".into(),
                "remove Domain { name: \"vxlab-two-vm.vm-a\" }".into(),
                "del vxfake0".into(),
            ]
        );
        assert!(state.labs().is_empty());
        assert!(!tmp.path().join("two-vm").exists());
    }

    #[test]
    fn parallel_map_keeps_order() {
        let xs: Vec<u32> = (0..100).collect();
        assert_eq!(
            parallel_map(&xs, 7, |x| x * 2),
            xs.iter().map(|x| x * 2).collect::<Vec<_>>()
        );
        assert!(parallel_map(&Vec::<u32>::new(), 4, |x| *x).is_empty());
    }
}
