//! What running a lab produced, as plain data: the result of `up`, `check` and `reset`, and the
//! stages of `walk`. The presentation (`report`, `views`) reads these and never the engine.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use crate::converge::Step;
use crate::host_side::HostPart;
use crate::iproute2::{Readiness, Tools};
use crate::observe::{GuestState, HostSeen};
use crate::verify::{PingResult, Verdict};

/// The result of `up`, `check` or `reset`.
#[derive(Debug)]
pub struct Outcome {
    /// What each guest's kernel reported after the pings.
    pub observed: BTreeMap<String, GuestState>,
    /// Every ping.
    pub pings: Vec<PingResult>,
    /// The checks.
    pub verdict: Verdict,
    /// What the host showed of the lab (its fence) for the checks.
    pub host: HostSeen,
    /// Notes for the user (settings changed, resources adopted).
    pub notes: Vec<String>,
    /// The `ip` and `bridge` each guest runs, and how vxlab got them.
    pub tools: BTreeMap<String, Tools>,
    /// What each guest's kernel and `ip` can do, as checked with those tools.
    pub readiness: BTreeMap<String, Readiness>,
    /// What `up` or `reset` changed in guests that were running before, in the order it ran.
    pub repairs: Vec<Repair>,
    /// The guests `reset` removed and made anew (gone, or not answering).
    pub made_anew: Vec<String>,
}

/// One command `up` or `reset` ran in a guest that was running, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Repair {
    /// The guest.
    pub guest: String,
    /// The command and why it ran.
    #[serde(flatten)]
    pub step: Step,
}

/// The kinds of steps, in the order the walk runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageKind {
    /// Loopback and the underlay interface with its address.
    Underlay,
    /// The vxlan devices: created, MAC and MTU set, up; flood and static entries.
    Vxlan,
    /// The overlay addresses on the vxlan devices.
    Overlay,
    /// The first ping across the overlay.
    FirstPing,
}

/// What one stage did and what every guest looked like before and after each part of it.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Which stage.
    pub kind: StageKind,
    /// What vxlab did on the host for this stage (the bridge and each guest's link), as the
    /// commands that do the same by hand.
    pub host: Vec<HostPart>,
    /// The stage's commands, one guest at a time, so every change is shown under the commands
    /// that caused it.
    pub parts: Vec<StagePart>,
    /// The ping of [`StageKind::FirstPing`]: from, to, answered.
    pub ping: Option<(String, IpAddr, bool)>,
}

/// One guest's commands in a stage, and every guest before and after them.
#[derive(Debug, Clone)]
pub struct StagePart {
    /// The guest the commands ran in.
    pub guest: String,
    /// The commands, as a student would type them.
    pub commands: Vec<String>,
    /// Every guest before the commands.
    pub before: BTreeMap<String, GuestState>,
    /// Every guest after them.
    pub after: BTreeMap<String, GuestState>,
}
