//! The engine: sequences a lab's life (provision, converge, check, reset, remove) through a
//! [`Driver`] (the guests) and a [`Host`] (this machine). It decides nothing itself: what to
//! run in a guest comes from [`crate::converge`], whether a guest is right from
//! [`crate::verify`]; the engine runs them in order, in parallel across guests.

mod guests;
mod pings;
mod preflight;
mod provision;
mod teach;
mod tools;
mod walk;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

pub use tools::host_build_root;

use crate::builder::{BuildError, Recipe};
use crate::converge::{self, Step};
use crate::driver::{Driver, DriverError};
use crate::host::{ClaimError, Host, HostLockError, NetlinkError};
use crate::hosts::HostSpec;
use crate::lab::DriverKind;
use crate::observe::{GuestState, HostSeen, ParseError};
use crate::outcome::{Outcome, Repair};
use crate::parallel::parallel_map;
use crate::plan::{GuestPlan, Plan};
use crate::progress::Progress;
use crate::state::{Resource, StateDir, StateError};
use crate::verify::{self, Verdict};

use guests::Runner;
use provision::Provisioned;

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
    /// The host-wide lock could not be taken.
    #[error(transparent)]
    HostLock(#[from] HostLockError),
    /// The host-wide record of neighbour-table needs could not be kept.
    #[error(transparent)]
    Neighbours(#[from] ClaimError),
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
    /// The host is not ready for the lab; the message says what to do. Nothing was created.
    #[error("{0}")]
    Host(String),
    /// Putting up or taking down a lab's fence (`host::firewall`) failed, after the lab's
    /// bridge was made.
    #[error("{0}")]
    Fence(String),
    /// The lab has no guest of that name.
    #[error("lab {lab} has no guest named {guest}")]
    NoSuchGuest {
        /// Lab.
        lab: String,
        /// The name asked for.
        guest: String,
    },
    /// A guest cannot run vxlan, and vxlab cannot make it able to.
    #[error("guest {guest}: {why}")]
    NotReady {
        /// Guest.
        guest: String,
        /// Why, in words a student understands.
        why: String,
    },
    /// Ctrl-C or SIGTERM: vxlab stopped between steps; everything made so far is recorded.
    #[error("interrupted; everything made so far is recorded")]
    Interrupted,
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

impl EngineError {
    /// Whether the error came before anything was created on the host or in a guest.
    pub fn before_anything(&self) -> bool {
        matches!(
            self,
            EngineError::Host(_)
                | EngineError::NoSuchGuest { .. }
                | EngineError::HostLock(_)
                | EngineError::State(
                    StateError::Busy { .. }
                        | StateError::NotRunning(..)
                        | StateError::Taken { .. }
                        | StateError::Reshaped { .. }
                )
        )
    }
}

/// Runs labs.
pub struct Engine {
    driver: Box<dyn Driver>,
    host: Arc<dyn Host>,
    state: StateDir,
    /// What iproute2 is built from, when the lab names a source.
    recipe: Option<Recipe>,
    /// The host of a class a new lab is placed on, recorded in its state.
    placed_on: Option<HostSpec>,
}

impl Engine {
    /// An engine over `driver` and `host`, keeping state in `state`.
    pub fn new(driver: Box<dyn Driver>, host: Arc<dyn Host>, state: StateDir) -> Self {
        Engine {
            driver,
            host,
            state,
            recipe: None,
            placed_on: None,
        }
    }

    /// The same engine, recording `host` as the host a new lab runs on (the driver and the
    /// host given are that host's).
    pub fn placed_on(mut self, host: Option<HostSpec>) -> Self {
        self.placed_on = host;
        self
    }

    /// The same engine, building iproute2 from `recipe` where guests need it.
    pub fn with_recipe(mut self, recipe: Option<Recipe>) -> Self {
        self.recipe = recipe;
        self
    }

    /// Brings the lab up, or converges a running one to its plan, then checks it. In a lab that
    /// was running, every command that ran is in [`Outcome::repairs`] with its reason.
    pub fn up(
        &self,
        plan: &Plan,
        source: &Path,
        lab_text: &str,
        ui: &Progress,
    ) -> Result<Outcome, EngineError> {
        let plugged = std::sync::Mutex::new(Vec::new());
        let mut p = self.provision(
            plan,
            Some((source, lab_text)),
            &plan.guests.iter().collect::<Vec<_>>(),
            ui,
            &|runner, g, tools| self.repair_guest(plan, &plugged, runner, g, tools),
        )?;
        p.notes.extend(plugged.into_inner().expect("not poisoned"));
        self.finish(plan, p)
    }

    /// Returns guest `guest` (or every guest) of a running lab to its plan, and forgets what
    /// the VTEPs learned and the neighbours they resolved, so the lesson can be done again. A
    /// guest that is gone or does not answer is created anew.
    pub fn reset(
        &self,
        plan: &Plan,
        guest: Option<&str>,
        ui: &Progress,
    ) -> Result<Outcome, EngineError> {
        let chosen: Vec<&GuestPlan> = match guest {
            Some(name) => vec![plan.guest(name).ok_or_else(|| EngineError::NoSuchGuest {
                lab: plan.lab.clone(),
                guest: name.to_string(),
            })?],
            None => plan.guests.iter().collect(),
        };
        let st = self.state.read(&plan.lab)?;
        let before = Runner::new(self.driver.as_ref(), None, st.tools);
        let lost = parallel_map(&chosen, self.driver.parallel_commands(), |g| {
            !self.driver.guest_exists(g) || before.observe(g).is_err()
        });
        let mut notes = Vec::new();
        let mut made_anew = Vec::new();
        for (g, lost) in chosen.iter().zip(lost) {
            if lost {
                self.remove_guest(g)?;
                made_anew.push(g.name.clone());
                notes.push(format!(
                    "{} did not answer: it was removed and is created anew",
                    g.name
                ));
            }
        }
        let plugged = std::sync::Mutex::new(Vec::new());
        let mut p = self.provision(plan, None, &chosen, ui, &|runner, g, tools| {
            self.repair_guest(plan, &plugged, runner, g, tools)
        })?;
        p.notes.splice(0..0, notes);
        p.notes.extend(plugged.into_inner().expect("not poisoned"));
        // Checked first, then forgotten: the checks' pings teach the VTEPs, and a reset leaves
        // them knowing nothing, so that the student's first ping is the one that teaches them.
        let mut outcome = self.verify_running(plan, &p.runner)?;
        let runner = &p.runner;
        let forgot = parallel_map(&chosen, self.driver.parallel_commands(), |g| {
            let tools = runner.tools_of(g);
            let now = runner.observe_with(g, &tools)?;
            let forget = converge::forget(g, &now);
            // Best effort: an entry may age out between the read and the delete.
            runner.run_steps(g, &tools, &forget, false)?;
            Ok::<_, EngineError>((forget, runner.observe_with(g, &tools)?))
        });
        // A guest that could not forget is said; the others' forgetting still counts.
        let mut stopped = false;
        for (g, r) in chosen.iter().zip(forgot) {
            match r {
                Ok((forget, after)) => {
                    p.ran.extend(repairs(g, forget));
                    outcome.observed.insert(g.name.clone(), after);
                }
                Err(EngineError::Interrupted) => stopped = true,
                Err(e) => p
                    .notes
                    .push(format!("{} did not forget what it learned: {e}", g.name)),
            }
        }
        outcome.notes.splice(0..0, p.notes);
        outcome.notes.push(format!(
            "the checks ran before the forgetting: {} now know{} no peer, and the first ping \
             teaches {} again",
            names(&chosen),
            if chosen.len() == 1 { "s" } else { "" },
            if chosen.len() == 1 { "it" } else { "them" },
        ));
        outcome.repairs = p.ran;
        outcome.made_anew = made_anew;
        crate::health::save(p.lock.dir(), &outcome.verdict)?;
        if stopped {
            return Err(EngineError::Interrupted);
        }
        Ok(outcome)
    }

    /// Checks a provisioned lab and puts together what `up` or `reset` reports.
    fn finish(&self, plan: &Plan, p: Provisioned) -> Result<Outcome, EngineError> {
        let mut outcome = self.verify_running(plan, &p.runner)?;
        outcome.notes.splice(0..0, p.notes);
        if p.was_running {
            outcome.repairs = p.ran;
        }
        crate::health::save(p.lock.dir(), &outcome.verdict)?;
        Ok(outcome)
    }

    /// For a namespace lab, each observed guest's host end as the host shows it: a guest
    /// cannot see that its veth's other end is down or off the bridge.
    fn add_host_ends(&self, plan: &Plan, observed: &mut BTreeMap<String, GuestState>) {
        if plan.driver != DriverKind::Netns {
            return;
        }
        for g in &plan.guests {
            if let Some(s) = observed.get_mut(&g.name) {
                s.host_end = self.host.host_end(&g.host_link, &plan.bridge);
            }
        }
    }

    /// What `up` and `reset` do to a guest that is there: its host end plugged back (what was
    /// done goes into `plugged`, as notes), then the steps that take its kernel to its plan,
    /// run and returned.
    fn repair_guest(
        &self,
        plan: &Plan,
        plugged: &std::sync::Mutex<Vec<String>>,
        runner: &Runner,
        g: &GuestPlan,
        tools: &crate::iproute2::Tools,
    ) -> Result<Vec<Step>, EngineError> {
        if let Some(note) = self.plug_host_end(plan, g)? {
            plugged.lock().expect("not poisoned").push(note);
        }
        let st = runner.observe_with(g, tools)?;
        let steps = converge::converge(g, &st);
        runner.run_steps(g, tools, &steps, true)?;
        Ok(steps)
    }

    /// Puts a namespace guest's host end back on the lab's bridge, up, where it is not: the
    /// one repair made on the host. Returns what was done, as the command it amounts to.
    fn plug_host_end(&self, plan: &Plan, g: &GuestPlan) -> Result<Option<String>, EngineError> {
        if plan.driver != DriverKind::Netns {
            return Ok(None);
        }
        let Some(end) = self.host.host_end(&g.host_link, &plan.bridge) else {
            return Ok(None);
        };
        let Some(why) = verify::host_end_fault(&end, &plan.bridge) else {
            return Ok(None);
        };
        self.host.plug(&g.host_link, &plan.bridge)?;
        Ok(Some(format!(
            "{}: repaired on the host: {}'s host end {} was {why}: `{}`",
            g.name,
            g.interface,
            g.host_link,
            verify::plug_command(&g.host_link, &plan.bridge)
        )))
    }

    /// Removes one guest's resources (newest first), leaving the rest of the lab.
    fn remove_guest(&self, g: &GuestPlan) -> Result<(), EngineError> {
        for r in self.driver.guest_resources(g).iter().rev() {
            match r {
                Resource::HostLink { name } => {
                    self.host.delete_link(name)?;
                }
                other => {
                    self.driver.remove(other)?;
                }
            }
        }
        Ok(())
    }

    /// Pings, then reads every guest, then verifies: what `check` does on a running lab.
    fn verify_running(&self, plan: &Plan, runner: &Runner) -> Result<Outcome, EngineError> {
        // A guest that cannot be pinged from or read is a failed check, not an aborted run;
        // why it failed goes into the notes.
        let (pings, mut notes) = pings::ping_all(self.driver.as_ref(), plan);
        let mut observed = BTreeMap::new();
        let mut readiness = BTreeMap::new();
        let seen = parallel_map(&plan.guests, self.driver.parallel_commands(), |g| {
            runner.observe_ready(g)
        });
        // Guests left unread because Ctrl-C came are not unreachable guests: the check stops,
        // as a whole, with no verdict.
        if seen
            .iter()
            .any(|r| matches!(r, Err(EngineError::Interrupted)))
        {
            return Err(EngineError::Interrupted);
        }
        for (g, r) in plan.guests.iter().zip(seen) {
            match r {
                Ok((s, ready)) => {
                    observed.insert(g.name.clone(), s);
                    readiness.insert(g.name.clone(), ready);
                }
                Err(e) => notes.push(e.to_string()),
            }
        }
        self.add_host_ends(plan, &mut observed);
        let host = self.host_seen(plan, &mut notes);
        let mut pings = pings;
        verify::answered_locally(&observed, &mut pings);
        let verdict = verify::verify_lab(plan, &host, &observed, &pings);
        Ok(Outcome {
            observed,
            pings,
            verdict,
            host,
            notes,
            tools: runner.tools().clone(),
            readiness,
            repairs: Vec::new(),
            made_anew: Vec::new(),
        })
    }

    /// Re-verifies a running lab under its lock.
    pub fn check(&self, plan: &Plan) -> Result<Outcome, EngineError> {
        let lock = self.state.lock_to_check(&plan.lab)?;
        let st = lock.load()?.ok_or_else(|| {
            StateError::NotRunning(plan.lab.clone(), self.state.root().to_path_buf())
        })?;
        let runner = Runner::new(self.driver.as_ref(), Some(lock.dir()), st.tools);
        let outcome = self.verify_running(plan, &runner)?;
        crate::health::save(lock.dir(), &outcome.verdict)?;
        Ok(outcome)
    }

    /// A quick check for `status`: every guest read and compared with the plan, without the
    /// lock (it changes nothing); the pings only when all else holds, since they are then
    /// what is left to fail, and a lab whose pings fail is not healthy.
    /// What could not be read (the fence, when iptables fails) goes into `notes`.
    pub fn quick_check(
        &self,
        plan: &Plan,
        notes: &mut Vec<String>,
    ) -> Result<Verdict, EngineError> {
        let st = self.state.read(&plan.lab)?;
        let runner = Runner::new(self.driver.as_ref(), None, st.tools);
        let observe_all = || {
            let seen = parallel_map(&plan.guests, self.driver.parallel_commands(), |g| {
                if self.driver.guest_exists(g) {
                    runner.observe(g).ok()
                } else {
                    None
                }
            });
            let mut observed = plan
                .guests
                .iter()
                .zip(seen)
                .filter_map(|(g, s)| Some((g.name.clone(), s?)))
                .collect();
            self.add_host_ends(plan, &mut observed);
            observed
        };
        let host = self.host_seen(plan, notes);
        let verdict = verify::verify_lab(plan, &host, &observe_all(), &[]);
        if !verdict.ok() {
            return Ok(verdict);
        }
        // Read again after the pings, as `check` does: what the VTEPs learned ages out of an
        // idle lab (300 s), and the pings teach it again.
        let (mut pings, _) = pings::ping_all(self.driver.as_ref(), plan);
        let observed = observe_all();
        verify::answered_locally(&observed, &mut pings);
        Ok(verify::verify_lab(plan, &host, &observed, &pings))
    }

    /// What the host shows of lab `plan` beside its guests: how much of its bridge's fence
    /// is in place. A firewall that cannot be read is said in `notes`, and left unchecked.
    pub fn host_seen(&self, plan: &Plan, notes: &mut Vec<String>) -> HostSeen {
        match self.host.fence_seen(&plan.bridge, &plan.lab) {
            Ok(fence) => HostSeen { fence: Some(fence) },
            Err(e) => {
                notes.push(format!(
                    "the firewall rules that fence bridge {} off from the host could not be \
                     read: {e}",
                    plan.bridge
                ));
                HostSeen::default()
            }
        }
    }

    /// Why `down` of lab `lab` must leave recorded resource `r` alone, if it must: a name
    /// vxlab never gives (`Resource::not_of_lab`), or a link whose alias names another owner.
    fn not_ours(&self, lab: &str, r: &Resource) -> Option<String> {
        if let Some(why) = r.not_of_lab(lab) {
            return Some(why);
        }
        if !matches!(r, Resource::Bridge { .. } | Resource::HostLink { .. }) {
            return None;
        }
        let owner = match self.host.probe(r) {
            crate::host::inventory::Presence::Present { owner: Some(owner) } => owner,
            // A bridge vxlab made carries the lab's name in its alias from the moment after
            // it is made; one without is not known to be the lab's (eth0, docker0).
            crate::host::inventory::Presence::Present { owner: None }
                if matches!(r, Resource::Bridge { .. }) =>
            {
                return Some(format!(
                    "{r} carries no vxlab alias naming lab {lab}; if it is the lab's, `ip link \
                     del` it"
                ));
            }
            _ => return None,
        };
        let ours = crate::host::inventory::of_lab(&owner, lab).is_some();
        (!ours).then(|| format!("{r} belongs to {owner}"))
    }

    /// Removes every resource recorded for the lab, newest first, then its state.
    pub fn down(&self, lab: &str) -> Result<Vec<String>, EngineError> {
        // A vxlab killed a moment ago may still be letting go of the lock.
        let lock = self
            .state
            .lock_within(lab, std::time::Duration::from_secs(5))?;
        let Some(st) = lock.load()? else {
            lock.remove()?;
            return Ok(vec![format!("lab {lab} is not running; nothing to remove")]);
        };
        let mut notes = Vec::new();
        // Only what vxlab could have recorded for this lab, and no link that says it is
        // another's: a state file is data, and root acts on it.
        let resources: Vec<&Resource> = st
            .resources
            .iter()
            .filter(|r| match self.not_ours(lab, r) {
                Some(why) => {
                    notes.push(format!("left alone: {why}"));
                    false
                }
                None => true,
            })
            .collect();
        // Host links first and all at once: deleting one also deletes its peer in the guest.
        let host_links: Vec<String> = resources
            .iter()
            .filter_map(|r| match r {
                Resource::HostLink { name } => Some(name.clone()),
                _ => None,
            })
            .collect();
        self.host.delete_links(&host_links)?;
        for r in resources.into_iter().rev() {
            match r {
                Resource::HostLink { .. } => {}
                // A bridge on another host is a libvirt network there, removed by that host.
                Resource::Bridge { name } | Resource::Network { bridge: name, .. } => {
                    self.host.delete_link(name)?;
                }
                Resource::Path { path } => match lock.remove_path(path) {
                    Ok(_) => {}
                    // Only paths inside the lab's own directory go: a state file that names
                    // anything else was not written by vxlab.
                    Err(e @ StateError::Foreign { .. }) => notes.push(format!("left {e}")),
                    Err(e) => return Err(e.into()),
                },
                Resource::Fence { bridge } => match self.host.unfence(bridge, lab) {
                    Ok(_) => {}
                    // With no iptables there are no rules: the lab still goes.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        notes.push(format!("the firewall rules of bridge {bridge}: {e}"));
                    }
                    Err(e) => return Err(fence_failed("taking down", bridge, e)),
                },
                // Recorded by vxlab before the host-wide record of neighbour needs.
                Resource::Sysctl { key, previous } => {
                    if self.host.write_sysctl(key, previous).is_ok() {
                        notes.push(format!("restored {key} to {previous}"));
                    }
                }
                other => {
                    self.driver.remove(other)?;
                }
            }
        }
        let id = lock.id();
        notes.extend(
            self.host
                .release_neighbours(&id)?
                .iter()
                .map(|c| c.describe()),
        );
        lock.remove()?;
        Ok(notes)
    }
}

/// A fence command that failed: the interruption when Ctrl-C killed it (the whole process
/// group gets the signal), else what failed.
fn fence_failed(doing: &str, bridge: &str, e: std::io::Error) -> EngineError {
    if crate::interrupt::requested() {
        EngineError::Interrupted
    } else {
        EngineError::Fence(format!(
            "{doing} the firewall rules that fence bridge {bridge} off from the host: {e}"
        ))
    }
}

/// Stops between steps when Ctrl-C or SIGTERM asked for it.
fn go_on() -> Result<(), EngineError> {
    if crate::interrupt::requested() {
        Err(EngineError::Interrupted)
    } else {
        Ok(())
    }
}

/// Guest names as a list: `vm-a`, `vm-a and vm-b`, `vm-a, vm-b and vm-c`.
fn names(guests: &[&GuestPlan]) -> String {
    match guests {
        [] => String::new(),
        [one] => one.name.clone(),
        [rest @ .., last] => {
            let rest: Vec<&str> = rest.iter().map(|g| g.name.as_str()).collect();
            format!("{} and {}", rest.join(", "), last.name)
        }
    }
}

/// Records what `then` ran in guest `g`, for [`Outcome::repairs`].
fn repairs(g: &GuestPlan, steps: Vec<Step>) -> Vec<Repair> {
    steps
        .into_iter()
        .map(|step| Repair {
            guest: g.name.clone(),
            step,
        })
        .collect()
}

#[cfg(test)]
mod tests;
