//! `vxlab walk`: the lab built one kind of step at a time, and within a stage one guest at a
//! time, every guest read before and after each guest's commands, so a student sees what those
//! commands changed in the kernel: the group joined when the vxlan device comes up, the flood
//! entry, the peer's MAC learned at the first ping.

use std::collections::BTreeMap;
use std::path::Path;

use super::guests::Runner;
use super::{Engine, EngineError};
use crate::converge::{Layer, Step};
use crate::guest_command::GuestCommand;
use crate::host_side::host_side;
use crate::lab::Expect;
use crate::observe::GuestState;
use crate::outcome::{Outcome, Stage, StageKind, StagePart};
use crate::parallel::parallel_map;
use crate::plan::{self, GuestPlan, Network, PingPlan, Plan};
use crate::progress::Progress;

/// The stage a planned step belongs to.
pub fn stage_of(step: &Step) -> StageKind {
    match step.layer {
        Layer::Host
        | Layer::Guest
        | Layer::UnderlayLink
        | Layer::UnderlayAddress
        | Layer::UnderlayReach => StageKind::Underlay,
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

    /// Runs `cmds` in `g`, then reads every guest: one part of a stage, whose changes are
    /// the effect of exactly these commands. `before` becomes what was read.
    fn run_part(
        &self,
        plan: &Plan,
        runner: &Runner,
        g: &GuestPlan,
        cmds: &[GuestCommand],
        before: &mut BTreeMap<String, GuestState>,
    ) -> Result<StagePart, EngineError> {
        runner.batch(g, cmds, true)?;
        let after = self.observe_all(plan, runner)?;
        Ok(StagePart {
            guest: g.name.clone(),
            commands: cmds.iter().map(GuestCommand::to_string).collect(),
            before: std::mem::replace(before, after.clone()),
            after,
        })
    }

    /// Builds a lab that is not running stage by stage, one guest at a time within a stage,
    /// calling `show` after each stage (it may wait for the student), then runs the checks.
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
            let mut parts = Vec::new();
            for g in &plan.guests {
                let cmds: Vec<GuestCommand> = g
                    .steps
                    .iter()
                    .filter(|s| stage_of(s) == kind)
                    .map(|s| s.command.clone())
                    .collect();
                if !cmds.is_empty() {
                    parts.push(self.run_part(plan, runner, g, &cmds, &mut before)?);
                }
            }
            show(&Stage {
                kind,
                host: if kind == StageKind::Underlay {
                    host_side(plan)
                } else {
                    Vec::new()
                },
                parts,
                ping: None,
            });
        }
        // The first ping: one guest to its first peer, so the learning is visible. On IPv4
        // overlays nothing was learned before it (the devices send no IPv6 autoconfiguration
        // traffic); the stages above showed what IPv6 overlays learned early.
        if let Some((g, v, peer)) = plan.guests.iter().find_map(|g| {
            let v = g.vteps.first()?;
            Some((g, v, v.peers.first()?))
        }) {
            let ping = PingPlan {
                from: g.name.clone(),
                to: peer.overlay,
                to_guest: Some(peer.guest.clone()),
                vxlan: Some(v.device.clone()),
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
            let after = self.observe_all(plan, runner)?;
            let part = StagePart {
                guest: g.name.clone(),
                commands: vec![ping.command.to_string()],
                before: std::mem::replace(&mut before, after.clone()),
                after,
            };
            show(&Stage {
                kind: StageKind::FirstPing,
                host: Vec::new(),
                parts: vec![part],
                ping: Some((g.name.clone(), peer.overlay, answered)),
            });
        }
        let mut outcome = self.verify_running(plan, runner)?;
        outcome.notes.splice(0..0, p.notes);
        crate::health::save(p.lock.dir(), &outcome.verdict)?;
        Ok(outcome)
    }
}
