//! `vxlab walk`: the lab built one kind of step at a time, every guest read before and after
//! each, so a student sees what each step changed in the kernel: the group joined when the
//! vxlan device comes up, the flood entry, the peer's MAC learned at the first ping.

use std::collections::BTreeMap;
use std::path::Path;

use super::guests::Runner;
use super::{Engine, EngineError};
use crate::converge::{self, Layer, Step};
use crate::guest_command::GuestCommand;
use crate::lab::Expect;
use crate::observe::GuestState;
use crate::outcome::{Outcome, Stage, StageKind};
use crate::parallel::parallel_map;
use crate::plan::{self, Network, PingPlan, Plan};
use crate::progress::Progress;

/// The stage a planned step belongs to.
pub fn stage_of(step: &Step) -> StageKind {
    match step.layer {
        Layer::Guest | Layer::UnderlayLink | Layer::UnderlayAddress | Layer::UnderlayReach => {
            StageKind::Underlay
        }
        Layer::VxlanDevice | Layer::Flooding | Layer::Forwarding => StageKind::Vxlan,
        Layer::OverlayAddress => StageKind::Overlay,
        Layer::OverlayPing => StageKind::FirstPing,
    }
}

impl Engine {
    fn observe_all(
        &self,
        plan: &Plan,
        runner: &Runner,
    ) -> Result<BTreeMap<String, GuestState>, EngineError> {
        let seen = parallel_map(&plan.guests, self.driver.parallel_commands(), |g| {
            runner.observe(g).map(|s| (g.name.clone(), s))
        });
        seen.into_iter().collect()
    }

    /// Runs `cmds[guest]` in every guest at once; returns what each ran, as typed.
    fn run_stage(
        &self,
        plan: &Plan,
        runner: &Runner,
        cmds: &BTreeMap<String, Vec<GuestCommand>>,
        stop_on_failure: bool,
    ) -> Result<BTreeMap<String, Vec<String>>, EngineError> {
        let ran = parallel_map(&plan.guests, self.driver.parallel_commands(), |g| {
            let mine = cmds.get(&g.name).map(Vec::as_slice).unwrap_or_default();
            runner.batch(g, mine, stop_on_failure).map(|_| ())
        });
        ran.into_iter().collect::<Result<(), _>>()?;
        Ok(cmds
            .iter()
            .map(|(g, c)| (g.clone(), c.iter().map(GuestCommand::to_string).collect()))
            .collect())
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
        let guests: Vec<_> = plan.guests.iter().collect();
        let p = self.provision(plan, Some((source, lab_text)), &guests, ui, &|_, _, _| {
            Ok(Vec::new())
        })?;
        let runner = &p.runner;
        let mut before = self.observe_all(plan, runner)?;
        for kind in [StageKind::Underlay, StageKind::Vxlan, StageKind::Overlay] {
            let cmds: BTreeMap<String, Vec<GuestCommand>> = plan
                .guests
                .iter()
                .map(|g| {
                    let cmds = g
                        .steps
                        .iter()
                        .filter(|s| stage_of(s) == kind)
                        .map(|s| s.command.clone())
                        .collect();
                    (g.name.clone(), cmds)
                })
                .collect();
            let commands = self.run_stage(plan, runner, &cmds, true)?;
            let after = self.observe_all(plan, runner)?;
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
            let forget: BTreeMap<String, Vec<GuestCommand>> = plan
                .guests
                .iter()
                .map(|g| {
                    let steps = converge::forget(g, &before[&g.name]);
                    (
                        g.name.clone(),
                        steps.into_iter().map(|s| s.command).collect(),
                    )
                })
                .collect();
            let mut commands = self.run_stage(plan, runner, &forget, false)?;
            before = self.observe_all(plan, runner)?;
            let ping = PingPlan {
                from: g.name.clone(),
                to: peer.overlay,
                to_guest: Some(peer.guest.clone()),
                vxlan: g.vteps.first().map(|v| v.device.clone()),
                expect: Expect::Success,
                over: Network::Overlay,
                command: plan::ping_command(peer.overlay, 3),
            };
            let answered = self
                .driver
                .ping(g, std::slice::from_ref(&ping))?
                .first()
                .copied()
                .unwrap_or(false);
            commands
                .entry(g.name.clone())
                .or_default()
                .push(ping.command.to_string());
            let after = self.observe_all(plan, runner)?;
            show(&Stage {
                kind: StageKind::FirstPing,
                commands,
                before: std::mem::replace(&mut before, after.clone()),
                after,
                ping: Some((g.name.clone(), peer.overlay, answered)),
            });
        }
        let mut outcome = self.verify_running(plan, runner)?;
        outcome.notes.splice(0..0, p.notes);
        crate::health::save(p.lock.dir(), &outcome.verdict)?;
        Ok(outcome)
    }
}
