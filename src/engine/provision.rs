//! Everything before the checks: the lab's state and lock, the bridge, the guests created in
//! parallel with their tools ready, then each guest's own work.

use std::collections::BTreeMap;
use std::path::Path;

use super::guests::Runner;
use super::{go_on, preflight, repairs, Engine, EngineError};
use crate::converge::Step;
use crate::host::inventory;
use crate::iproute2::Tools;
use crate::observe::BridgeState;
use crate::outcome::Repair;
use crate::plan::{GuestPlan, Plan};
use crate::progress::Progress;
use crate::state::{self, LabLock, LabState, Resource, StateError};

/// What each guest gets once it exists and its tools are ready: the steps it ran.
pub(super) type GuestWork<'a> =
    dyn Fn(&Runner, &GuestPlan, &Tools) -> Result<Vec<Step>, EngineError> + Sync + 'a;

/// A lab whose guests exist and have done their work.
pub(super) struct Provisioned<'a> {
    /// The lab's lock, held until this is dropped.
    pub lock: LabLock,
    /// Runs commands in the guests, with the tools each was configured with.
    pub runner: Runner<'a>,
    /// Notes for the user.
    pub notes: Vec<String>,
    /// What ran in each guest, in order.
    pub ran: Vec<Repair>,
    /// Whether the lab was running before.
    pub was_running: bool,
}

impl Engine {
    /// Provisions `guests` of the lab: refuses what belongs to others before anything is
    /// written, takes the lock, records every resource before creating it, creates the bridge
    /// and the guests (in parallel), readies each guest's tools, then runs `work` in each.
    /// `lab_file` (the file's path and text) is kept as the lab's copy when given.
    pub(super) fn provision(
        &self,
        plan: &Plan,
        lab_file: Option<(&Path, &str)>,
        guests: &[&GuestPlan],
        ui: &Progress,
        work: &GuestWork,
    ) -> Result<Provisioned<'_>, EngineError> {
        let lock = self.state.lock(&plan.lab)?;
        let had_state = lock.load()?.is_some();
        let mut st = match lock.load()? {
            Some(st) => {
                // A lab of the same name from another file, or another copy, is not ours.
                if let Some((source, _)) = lab_file {
                    state::check_owner(&st, source, plan.instance.as_ref())?;
                    let names: Vec<&str> = plan.guests.iter().map(|g| g.name.as_str()).collect();
                    lock.check_guests(&names)?;
                }
                st
            }
            None => {
                let (source, _) = lab_file.ok_or_else(|| {
                    StateError::NotRunning(plan.lab.clone(), self.state.root().to_path_buf())
                })?;
                LabState::new(
                    &plan.lab,
                    source,
                    plan.instance.clone(),
                    self.placed_on.clone(),
                )?
            }
        };
        let was_running = !st.resources.is_empty();
        let bridge = self.host.bridge_resource(&plan.bridge);
        let guest_resources: Vec<Resource> = guests
            .iter()
            .flat_map(|g| self.driver.guest_resources(g))
            .collect();
        let mut wanted = vec![bridge.clone()];
        wanted.extend(guest_resources.iter().cloned());
        // Checking that the names and the subnet are free and taking them is one step for
        // the whole host: two labs started at once must not both find them free.
        let host = match self.host.exclusive() {
            Ok(host) => host,
            Err(e) => {
                // Stopped while waiting for another vxlab (Ctrl-C): nothing was made.
                if !had_state {
                    lock.remove()?;
                }
                return Err(e.into());
            }
        };
        let refused = preflight::refuse_foreign(self.host.as_ref(), plan, &wanted, &st.resources)
            .and_then(|()| preflight::refuse_routed_subnet(self.host.as_ref(), plan));
        if let Err(e) = refused {
            // Nothing was made: a new lab leaves no state behind, not even its lock.
            if !had_state {
                lock.remove()?;
            }
            return Err(e);
        }
        if let Some((_, text)) = lab_file {
            lock.save_lab_copy(text)?;
        }
        lock.save(&st)?;
        go_on()?;
        let id = lock.id();
        let mut notes = preflight::claim_neighbours(self.host.as_ref(), plan, &id)?;
        lock.record(&mut st, vec![bridge])?;
        // A running lab's bridge that is down or gone is repaired here, and said.
        let bridge_was = was_running.then(|| self.host.bridge_state(&plan.bridge));
        self.host.ensure_bridge(&plan.bridge, plan.gateway)?;
        match bridge_was {
            Some(BridgeState::Down) => notes.push(format!(
                "repaired on the host: the lab's bridge {} was down: `ip link set dev {} up`",
                plan.bridge, plan.bridge
            )),
            Some(BridgeState::Missing) => notes.push(format!(
                "repaired on the host: the lab's bridge {} was gone: made again with its \
                 address {}",
                plan.bridge, plan.gateway
            )),
            _ => {}
        }
        self.host
            .set_alias(&plan.bridge, &inventory::owner_alias(&plan.lab))?;
        // Students are root in their guests: the bridge is fenced off from the host.
        let fence = Resource::Fence {
            bridge: plan.bridge.clone(),
        };
        let fenced = st.resources.contains(&fence);
        lock.record(&mut st, vec![fence])?;
        let added = self
            .host
            .fence(&plan.bridge, &plan.lab)
            .map_err(|e| super::fence_failed("putting up", &plan.bridge, e))?;
        if fenced && added > 0 {
            notes.push(format!(
                "repaired on the host: {added} of the firewall rules that fence bridge {} off \
                 from the host were missing: put back (`vxlab plan` shows them)",
                plan.bridge
            ));
        }
        lock.record(&mut st, guest_resources)?;
        drop(host);

        // Guests of a running lab that are gone (a namespace deleted, a domain destroyed) are
        // created anew below by `up`: said, not done silently. (`reset` says it itself, having
        // removed what was left of them.)
        if was_running && lab_file.is_some() {
            for g in guests.iter() {
                if !self.driver.guest_exists(g) {
                    notes.push(format!("{} was not running: it is created anew", g.name));
                } else if plan.driver == crate::lab::DriverKind::Netns
                    && self.host.host_end(&g.host_link, &plan.bridge).is_none()
                {
                    // `ip link del eth0` in the guest takes the host end with it.
                    notes.push(format!(
                        "{}: repaired on the host: its underlay link {} was gone (with its \
                         host end {}): made again on bridge {}",
                        g.name, g.interface, g.host_link, plan.bridge
                    ));
                }
            }
        }
        let runner = Runner::new(self.driver.as_ref(), Some(lock.dir()), BTreeMap::new());
        let state_dir = lock.dir();
        let results: Vec<Result<(Tools, Vec<Step>), EngineError>> = std::thread::scope(|s| {
            let handles: Vec<_> = guests
                .iter()
                .map(|g| {
                    let bar = ui.guest_line(&plan.lab, &g.name);
                    let runner = &runner;
                    s.spawn(move || {
                        let progress = |stage: &str| bar.set_message(stage.to_string());
                        let r = go_on()
                            .and_then(|()| Ok(self.driver.create_guest(plan, g, &progress)?))
                            .and_then(|()| {
                                go_on()?;
                                let tools = self.prepare_tools(
                                    runner,
                                    plan.iproute2,
                                    g,
                                    state_dir,
                                    &progress,
                                )?;
                                bar.set_message("configuring vxlan");
                                Ok((tools.clone(), work(runner, g, &tools)?))
                            });
                        match &r {
                            Ok(_) => bar.finish_with_message("ready"),
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
        let mut ran = Vec::new();
        let mut first_error = None;
        for (g, r) in guests.iter().zip(results) {
            match r {
                Ok((tools, steps)) => {
                    st.tools.insert(g.name.clone(), tools);
                    ran.extend(repairs(g, steps));
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        // What each guest was configured with, failed guests' neighbours included.
        lock.save(&st)?;
        if let Some(e) = first_error {
            return Err(e);
        }
        let runner = Runner::new(self.driver.as_ref(), Some(lock.dir()), st.tools.clone());
        Ok(Provisioned {
            lock,
            runner,
            notes,
            ran,
            was_running,
        })
    }
}
