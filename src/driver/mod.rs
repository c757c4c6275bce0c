//! Where guests live. The engine is written once against [`Driver`]; each kind of guest is a
//! sibling module: [`netns`] (a network namespace per guest) and, later, libvirt.

pub mod libvirt;
pub mod netns;

use std::path::Path;

use crate::guest_command::GuestCommand;
use crate::host::process::Output;
use crate::iproute2::Tools;
use crate::plan::{GuestPlan, PingPlan, Plan};
use crate::state::Resource;
use crate::terminal::{GuestProcess, Launch};

/// A driver operation on one guest failed.
#[derive(Debug, thiserror::Error)]
#[error("guest {guest}: {what}")]
pub struct DriverError {
    /// Guest name.
    pub guest: String,
    /// What was being done.
    pub what: String,
    /// Why it failed.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl DriverError {
    /// Wraps `source` as the failure of `what` on `guest`.
    pub fn new(
        guest: &str,
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        DriverError {
            guest: guest.to_string(),
            what: what.into(),
            source: source.into(),
        }
    }
}

/// Creates guests, runs commands in them, and removes what it created.
pub trait Driver: Sync {
    /// Resources guest `guest` will own, in creation order; the engine records them before
    /// calling [`Driver::create_guest`] and `down` removes them in reverse order.
    fn guest_resources(&self, guest: &GuestPlan) -> Vec<Resource>;

    /// Brings the guest up attached to the plan's bridge, ready for [`Driver::exec`]; adopts a
    /// guest that already exists. `progress` reports the stage the guest is in.
    fn create_guest(
        &self,
        plan: &Plan,
        guest: &GuestPlan,
        progress: &dyn Fn(&str),
    ) -> Result<(), DriverError>;

    /// Runs `argv` in the guest and waits for it.
    fn exec(&self, guest: &GuestPlan, argv: &[String]) -> Result<Output, DriverError>;

    /// Runs `cmds` in order, `ip` and `bridge` from `tools`, and returns the output of each
    /// that ran; with `stop_on_failure` nothing runs after the first command that fails. A
    /// driver whose round trips are expensive sends the whole batch at once; by default the
    /// commands run one by one.
    fn exec_batch(
        &self,
        guest: &GuestPlan,
        tools: &Tools,
        cmds: &[GuestCommand],
        stop_on_failure: bool,
    ) -> Result<Vec<Output>, DriverError> {
        let mut outs = Vec::with_capacity(cmds.len());
        for c in cmds {
            let out = self.exec(guest, &c.argv(tools))?;
            let failed = !out.success();
            outs.push(out);
            if failed && stop_on_failure {
                break;
            }
        }
        Ok(outs)
    }

    /// Copies the host file `local` to `remote` in the guest. By default the guest shares
    /// the host's files and this is a copy.
    fn upload(&self, guest: &GuestPlan, local: &Path, remote: &Path) -> Result<(), DriverError> {
        std::fs::copy(local, remote).map(|_| ()).map_err(|e| {
            DriverError::new(&guest.name, format!("copying to {}", remote.display()), e)
        })
    }

    /// Whether iproute2 builds for these guests run on the host, once for all of them (the
    /// guests share the host's files), rather than in each guest.
    fn builds_on_host(&self) -> bool {
        false
    }

    /// Runs the pings that start in `guest`, each up to [`PingPlan::tries`] times; returns,
    /// per ping, whether a reply came. By default each runs its planned `ping` command.
    fn ping(&self, guest: &GuestPlan, pings: &[PingPlan]) -> Result<Vec<bool>, DriverError> {
        let mut replied = vec![false; pings.len()];
        for round in 0..pings.iter().map(PingPlan::tries).max().unwrap_or(0) {
            let pending: Vec<usize> = (0..pings.len())
                .filter(|&i| !replied[i] && round < pings[i].tries())
                .collect();
            if pending.is_empty() {
                break;
            }
            let cmds: Vec<GuestCommand> =
                pending.iter().map(|&i| pings[i].command.clone()).collect();
            for (i, out) in
                pending
                    .iter()
                    .zip(self.exec_batch(guest, &Tools::default(), &cmds, false)?)
            {
                replied[*i] = out.success();
            }
        }
        Ok(replied)
    }

    /// Removes one resource of this driver's kinds; `Ok(false)` when it was already gone or is
    /// not this driver's.
    fn remove(&self, resource: &Resource) -> Result<bool, DriverError>;

    /// Whether the guest exists now.
    fn guest_exists(&self, guest: &GuestPlan) -> bool;

    /// How many commands the engine may run at once across all guests.
    fn parallel_commands(&self) -> usize;

    /// Starts `launch` in the guest and returns it running, its input and output as byte
    /// streams: `vxlab shell`, `vxlab exec` and the class server's terminals. By default a
    /// driver has no such processes.
    fn spawn(&self, guest: &GuestPlan, launch: &Launch) -> Result<GuestProcess, DriverError> {
        let _ = launch;
        Err(DriverError::new(
            &guest.name,
            "starting a process",
            "this driver cannot start interactive processes",
        ))
    }
}
