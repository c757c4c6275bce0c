//! `vxlab walk`: the lab built one kind of step at a time, every guest read before and after
//! each, so a student sees what each step changed in the kernel: the group joined when the
//! vxlan device comes up, the flood entry, the peer's MAC learned at the first ping.

use std::collections::BTreeMap;
use std::path::Path;

use super::{parallel_map, Engine, EngineError, Outcome};
use crate::observe::GuestState;
use crate::plan::{Effect, GuestPlan, Plan, Step};
use crate::progress::Progress;

/// The kinds of steps, in the order the walk runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageKind {
    /// Loopback and the underlay interface with its address.
    Underlay,
    /// The vxlan devices: created, MAC and MTU set, up; head-end flood entries.
    Vxlan,
    /// The overlay addresses on the vxlan devices.
    Overlay,
    /// The first ping across the overlay.
    FirstPing,
}

/// What one stage did and what every guest looked like before and after it.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Which stage.
    pub kind: StageKind,
    /// Commands run, by guest, as a student would type them.
    pub commands: BTreeMap<String, Vec<Vec<String>>>,
    /// Each guest before.
    pub before: BTreeMap<String, GuestState>,
    /// Each guest after.
    pub after: BTreeMap<String, GuestState>,
    /// The ping of [`StageKind::FirstPing`]: from, to, answered.
    pub ping: Option<(String, std::net::IpAddr, bool)>,
}

/// The stage a planned step belongs to.
pub fn stage_of(g: &GuestPlan, step: &Step) -> StageKind {
    let on_vtep = |dev: &str| g.vteps.iter().any(|v| v.device == dev);
    match &step.effect {
        Effect::CreateVtep { .. } | Effect::FloodEntry { .. } => StageKind::Vxlan,
        Effect::AddAddress { dev, .. } if on_vtep(dev) => StageKind::Overlay,
        Effect::AddAddress { .. } => StageKind::Underlay,
        Effect::Setting if step.argv.iter().any(|w| on_vtep(w)) => StageKind::Vxlan,
        Effect::Setting => StageKind::Underlay,
    }
}

impl Engine {
    fn observe_all(&self, plan: &Plan) -> Result<BTreeMap<String, GuestState>, EngineError> {
        let seen = parallel_map(&plan.guests, self.driver.parallel_commands(), |g| {
            self.observe(g).map(|s| (g.name.clone(), s))
        });
        seen.into_iter().collect()
    }

    /// Builds a lab that is not running stage by stage, calling `show` after each (it may
    /// wait for the student), then runs the checks.
    pub fn walk(
        &self,
        plan: &Plan,
        source: &Path,
        lab_text: &str,
        ui: &Progress,
        show: &mut dyn FnMut(&Stage),
    ) -> Result<Outcome, EngineError> {
        if self.state.read(&plan.lab).is_ok() {
            return Err(EngineError::Host(format!(
                "lab {} is running; `vxlab down {}` first, so the walk starts from nothing",
                plan.lab, plan.lab
            )));
        }
        // Guests are created with their tools, and nothing else yet.
        let (_lock, notes) = self.provision(plan, source, lab_text, ui, &|_| Ok(()))?;
        let mut before = self.observe_all(plan)?;
        for kind in [StageKind::Underlay, StageKind::Vxlan, StageKind::Overlay] {
            let commands: BTreeMap<String, Vec<Vec<String>>> = plan
                .guests
                .iter()
                .map(|g| {
                    let cmds = g
                        .steps
                        .iter()
                        .filter(|s| stage_of(g, s) == kind)
                        .map(|s| s.argv.clone())
                        .collect();
                    (g.name.clone(), cmds)
                })
                .collect();
            let ran = parallel_map(&plan.guests, self.driver.parallel_commands(), |g| {
                self.batch(g, &commands[&g.name], true).map(|_| ())
            });
            ran.into_iter().collect::<Result<(), _>>()?;
            let after = self.observe_all(plan)?;
            show(&Stage {
                kind,
                commands,
                before: std::mem::replace(&mut before, after.clone()),
                after,
                ping: None,
            });
        }
        // The first ping: one guest to its first peer, so the learning is visible.
        if let Some((g, peer)) = plan
            .guests
            .iter()
            .find_map(|g| Some((g, g.vteps.first()?.peers.first()?.clone())))
        {
            // IPv6 address autoconfiguration has already sent multicast frames over the
            // overlay, and the VTEPs learned each other from them: forget that, so the
            // learning the first ping causes shows.
            let forgot = parallel_map(&plan.guests, self.driver.parallel_commands(), |g| {
                g.vteps.iter().try_for_each(|v| self.forget(g, v))
            });
            forgot.into_iter().collect::<Result<(), _>>()?;
            before = self.observe_all(plan)?;
            let ping = crate::plan::PingPlan {
                from: g.name.clone(),
                to: peer.overlay,
                to_guest: Some(peer.guest.clone()),
                vxlan: g.vteps.first().map(|v| v.device.clone()),
                argv: crate::plan::ping_argv(peer.overlay, 3),
                expect: crate::lab::Expect::Success,
            };
            let answered = self
                .driver
                .ping(g, std::slice::from_ref(&ping))?
                .first()
                .copied()
                .unwrap_or(false);
            let after = self.observe_all(plan)?;
            show(&Stage {
                kind: StageKind::FirstPing,
                commands: [(g.name.clone(), vec![ping.argv.clone()])].into(),
                before: std::mem::replace(&mut before, after.clone()),
                after,
                ping: Some((g.name.clone(), peer.overlay, answered)),
            });
        }
        let mut outcome = self.verify_running(plan)?;
        outcome.notes.splice(0..0, notes);
        Ok(outcome)
    }
}
