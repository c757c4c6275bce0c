//! The checker: what the guests' kernels report against the plan, as pure data, with each
//! failure's fix, and the failures grouped cause first: per guest, the lowest broken layer
//! (see [`Layer`]) and the failures it explains, in that guest and in the others.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use serde::Serialize;

use crate::converge::{self, Finding, Kind, Layer};
use crate::lab::Expect;
use crate::observe::{BridgeState, FenceSeen, GuestState, HostEnd, HostSeen};
use crate::plan::{GuestPlan, Network, PingPlan, Plan};

/// The outcome of one ping.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PingResult {
    /// The planned ping.
    pub ping: PingPlan,
    /// Whether a reply came back from the address pinged, elsewhere than the pinging guest.
    pub replied: bool,
    /// The pinging guest holds the address itself, so its own kernel answered: the ping never
    /// left it (see [`answered_locally`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub answered_by_itself: bool,
}

/// Marks the pings a guest answered itself: it holds the address it pinged (a student added
/// the peer's address to it), so the reply came from its own kernel and proves nothing about
/// the peer. They count as not replied.
pub fn answered_locally(observed: &BTreeMap<String, GuestState>, pings: &mut [PingResult]) {
    for p in pings.iter_mut().filter(|p| p.replied) {
        let holds = observed.get(&p.ping.from).is_some_and(|st| {
            st.links
                .values()
                .any(|l| l.addresses.iter().any(|a| a.addr() == p.ping.to))
        });
        if holds {
            p.replied = false;
            p.answered_by_itself = true;
        }
    }
}

impl PingResult {
    /// Whether the outcome is the expected one.
    pub fn as_expected(&self) -> bool {
        self.replied == (self.ping.expect == Expect::Success)
    }
}

/// How to repair a failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fix {
    /// The exact commands, in the guest, as `plan` shows them; none when no command in the
    /// guest repairs it.
    pub commands: Vec<String>,
    /// The vxlab command that repairs it: `vxlab up LAB` or `vxlab reset LAB GUEST`; empty
    /// when nothing vxlab set up differs from the plan (see `hint`).
    pub vxlab: String,
    /// Where to look when vxlab has nothing to repair: what it found, and what may be
    /// dropping the packets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl std::fmt::Display for Fix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(hint) = &self.hint {
            return f.write_str(hint);
        }
        let cmds: Vec<String> = self.commands.iter().map(|c| format!("`{c}`")).collect();
        if cmds.is_empty() {
            write!(f, "`{}`", self.vxlab)
        } else {
            write!(f, "{}, or `{}` repairs it", cmds.join("; "), self.vxlab)
        }
    }
}

/// One thing that does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// What kind of thing.
    pub kind: Kind,
    /// Its layer.
    pub layer: Layer,
    /// Guest where it was seen.
    pub guest: String,
    /// The device it is about; empty for a guest or a ping.
    pub device: String,
    /// What was checked.
    pub what: String,
    /// What the plan says.
    pub expected: String,
    /// What the guest shows.
    pub seen: String,
    /// The other guest it involves, if any.
    pub peer: Option<String>,
    /// How to repair it.
    pub fix: Fix,
}

impl Failure {
    /// Where it was seen, for a reader: the guest, or `host` for the lab's side of the host
    /// (a failure of no guest; in `--json` its `guest` is empty).
    pub fn place(&self) -> &str {
        if self.guest.is_empty() {
            "host"
        } else {
            &self.guest
        }
    }
}

/// A cause and the failures it explains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnosis {
    /// The lowest broken layer of one guest.
    pub cause: Failure,
    /// Failures that follow from it, in this guest and in others.
    pub symptoms: Vec<Failure>,
}

/// All checks of a lab.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// Checks that held.
    pub passed: usize,
    /// Checks that did not, in plan order.
    pub failures: Vec<Failure>,
    /// The same failures, grouped cause first.
    pub diagnoses: Vec<Diagnosis>,
}

impl Verdict {
    /// True when every check held.
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// A finding of guest `guest`, or one made here.
struct Checked {
    guest: String,
    finding: Finding,
}

fn made(
    layer: Layer,
    kind: Kind,
    what: String,
    expected: impl Into<String>,
    seen: impl Into<String>,
    holds: bool,
    peer: Option<String>,
) -> Finding {
    Finding {
        layer,
        kind,
        device: String::new(),
        what,
        expected: expected.into(),
        seen: seen.into(),
        holds,
        peer,
        repair: Vec::new(),
    }
}

/// Checks every guest against its plan, and the pings; nothing of the host.
pub fn verify(plan: &Plan, seen: &BTreeMap<String, GuestState>, pings: &[PingResult]) -> Verdict {
    verify_lab(plan, &HostSeen::default(), seen, pings)
}

/// The check of the lab's side of the host, said as a finding of no guest: the fence of its
/// bridge whole. `up` (or a reset, which brings the host side up too) puts it back.
fn fence_finding(plan: &Plan, fence: FenceSeen) -> Finding {
    made(
        Layer::Host,
        Kind::Fence,
        format!(
            "the firewall rules that fence bridge {} off from the host",
            plan.bridge
        ),
        format!("all {} in place", fence.of),
        format!("{} of {} missing", fence.missing, fence.of),
        fence.missing == 0,
        None,
    )
}

/// Checks the lab's side of the host as `host` shows it, every guest against its plan, and
/// the pings.
pub fn verify_lab(
    plan: &Plan,
    host: &HostSeen,
    seen: &BTreeMap<String, GuestState>,
    pings: &[PingResult],
) -> Verdict {
    // Overlay pings that were answered, as (from, to): frames crossed both ways.
    let answered: HashSet<(&str, IpAddr)> = pings
        .iter()
        .filter(|r| r.replied && r.ping.over == Network::Overlay)
        .map(|r| (r.ping.from.as_str(), r.ping.to))
        .collect();
    let mut checked: Vec<Checked> = Vec::new();
    let mut add = |guest: &str, finding: Finding| {
        checked.push(Checked {
            guest: guest.to_string(),
            finding,
        })
    };
    if let Some(fence) = host.fence {
        add("", fence_finding(plan, fence));
    }
    for g in &plan.guests {
        match seen.get(&g.name) {
            Some(state) => {
                for f in converge::findings(g, state) {
                    add(&g.name, f);
                }
                for f in learned(g, state, &answered) {
                    add(&g.name, f);
                }
                if let Some(end) = &state.host_end {
                    add(&g.name, host_end_finding(g, end, &plan.bridge));
                }
            }
            None => add(
                &g.name,
                made(
                    Layer::Guest,
                    Kind::GuestReachable,
                    "guest reachable".into(),
                    "running",
                    "not reachable",
                    false,
                    None,
                ),
            ),
        }
    }
    for p in pings {
        let target = p
            .ping
            .to_guest
            .as_deref()
            .map(|g| format!(" ({g})"))
            .unwrap_or_default();
        let word = |ok: bool| if ok { REPLY } else { NO_REPLY };
        let (layer, kind, what) = match p.ping.over {
            Network::Overlay => (
                Layer::OverlayPing,
                Kind::OverlayPing,
                format!("ping {}{target}", p.ping.to),
            ),
            Network::Underlay => (
                Layer::UnderlayReach,
                Kind::UnderlayPing,
                format!("underlay ping {}{target}", p.ping.to),
            ),
        };
        let seen = if p.answered_by_itself {
            format!(
                "a reply from {} itself: it has {} too",
                p.ping.from, p.ping.to
            )
        } else {
            word(p.replied).to_string()
        };
        add(
            &p.ping.from,
            made(
                layer,
                kind,
                what,
                word(p.ping.expect == Expect::Success),
                seen,
                p.as_expected(),
                p.ping.to_guest.clone(),
            ),
        );
    }
    for (guest, f) in duplicate_macs(plan, seen) {
        add(&guest, f);
    }
    let passed = checked.iter().filter(|c| c.finding.holds).count();
    let failures: Vec<Failure> = checked
        .into_iter()
        .filter(|c| !c.finding.holds)
        .map(|c| failure(plan, &c.guest, c.finding))
        .collect();
    let diagnoses = diagnose(plan, &failures);
    Verdict {
        passed,
        failures,
        diagnoses,
    }
}

/// How a host end's fault ends when the lab's bridge itself is gone, or down: what
/// [`host_end_hint`] tells the two apart by.
const BRIDGE_GONE: &str = " is gone";
const BRIDGE_DOWN: &str = ", which is down";

/// What is wrong with a namespace guest's host end, if anything: down, or not on `bridge`;
/// said as what it is ("down, on bridge vxbr-seed", "up, on no bridge").
pub fn host_end_fault(end: &HostEnd, bridge: &str) -> Option<String> {
    if end.up && end.bridge.as_deref() == Some(bridge) && end.lab_bridge == BridgeState::Up {
        return None;
    }
    match end.lab_bridge {
        BridgeState::Missing => {
            return Some(format!(
                "on no bridge: the lab's bridge {bridge}{BRIDGE_GONE}"
            ))
        }
        BridgeState::Down if end.up && end.bridge.as_deref() == Some(bridge) => {
            return Some(format!("up, on bridge {bridge}{BRIDGE_DOWN}"))
        }
        _ => {}
    }
    Some(format!(
        "{}, {}",
        if end.up { "up" } else { "down" },
        end.bridge
            .as_deref()
            .map_or_else(|| "on no bridge".to_string(), |b| format!("on bridge {b}"))
    ))
}

/// The command, on the host, that puts a guest's host end back.
pub fn plug_command(link: &str, bridge: &str) -> String {
    format!("ip link set dev {link} master {bridge} up")
}

/// The check of a namespace guest's host end: up, and on the lab's bridge, which is up. The
/// guest's own eth0 cannot show it (off the bridge it even has carrier).
fn host_end_finding(g: &GuestPlan, end: &HostEnd, bridge: &str) -> Finding {
    let fault = host_end_fault(end, bridge);
    let mut f = made(
        Layer::UnderlayLink,
        Kind::HostEnd,
        format!("{}'s host end {}", g.interface, end.link),
        format!("up, on bridge {bridge}, which is up"),
        fault.clone().unwrap_or_else(|| "as planned".into()),
        fault.is_none(),
        None,
    );
    f.device = end.link.clone();
    f
}

/// How a broken host end is put right on the host, given what is wrong (see
/// [`host_end_fault`]): the command, or, for a bridge that is gone, `vxlab up` alone.
fn host_end_hint(seen: &str, link: &str, bridge: &str, vxlab: &str) -> String {
    if seen.ends_with(BRIDGE_GONE) {
        format!("`{vxlab}` makes the bridge again and puts each guest's host end back on it")
    } else if seen.ends_with(BRIDGE_DOWN) {
        format!("on the host, `ip link set dev {bridge} up`, or `{vxlab}` repairs it")
    } else {
        format!(
            "on the host, `{}`, or `{vxlab}` repairs it",
            plug_command(link, bridge)
        )
    }
}

/// The failure of a finding that does not hold, with its fix.
fn failure(plan: &Plan, guest: &str, f: Finding) -> Failure {
    // What `vxlab up` cannot repair, `reset` can: it forgets what was learned, and recreates
    // a guest that is gone or has lost its underlay.
    // A namespace guest's underlay link that is gone is made again by `up`, with the
    // guest's host end; a VM's is not.
    let reset = match f.kind {
        Kind::GuestReachable | Kind::Learned => true,
        Kind::LinkExists => f.repair.is_empty() && plan.driver != crate::lab::DriverKind::Netns,
        _ => false,
    };
    let vxlab = if reset {
        format!("vxlab reset {} {guest}", plan.lab)
    } else {
        format!("vxlab up {}", plan.lab)
    };
    // A host end is repaired on the host, not in the guest.
    let hint =
        (f.kind == Kind::HostEnd).then(|| host_end_hint(&f.seen, &f.device, &plan.bridge, &vxlab));
    Failure {
        kind: f.kind,
        layer: f.layer,
        guest: guest.to_string(),
        device: f.device,
        what: f.what,
        expected: f.expected,
        seen: f.seen,
        peer: f.peer,
        fix: Fix {
            commands: f.repair.iter().map(|s| s.command.to_string()).collect(),
            hint,
            vxlab,
        },
    }
}

/// Whether a failure is about a peer and may be that peer's doing: a ping, or what a guest
/// learned of the peer (an FDB entry, a neighbour its ARP resolved: a peer whose MAC changed
/// teaches it the new one). Anything else a guest's kernel shows is its own.
fn about_peer(f: &Failure) -> bool {
    f.peer.is_some()
        && matches!(
            f.kind,
            Kind::OverlayPing | Kind::UnderlayPing | Kind::Learned | Kind::Neighbour
        )
}

/// Whether failure `f` can follow from `cause`, a failure of the same guest at a lower or the
/// same layer. What the kernel learns or does (the group joined, learned entries, neighbours,
/// pings) follows from anything under it; so does everything on or above a device that is
/// missing, a connected route from its address, and whatever the cause's own repair
/// repairs. A setting vxlab wrote (a flood entry, an address, an MTU) does not follow from
/// another one: a flushed flood entry stays missing once eth0 is up again, so it is a cause
/// of its own, with its own repair.
fn follows(cause: &Failure, f: &Failure) -> bool {
    // A down `lo` breaks only what is on `lo`: pings between guests do not pass through it.
    if cause.device == "lo" && cause.kind == Kind::LinkUp {
        return f.device == "lo";
    }
    let dynamic = matches!(
        f.kind,
        Kind::GroupJoined
            | Kind::Learned
            | Kind::Neighbour
            | Kind::UnderlayPing
            | Kind::OverlayPing
            | Kind::GuestReachable
    );
    let on_missing = match cause.kind {
        Kind::GuestReachable | Kind::LinkExists => true,
        Kind::VxlanExists => f.device == cause.device,
        _ => false,
    };
    let route_of_address =
        cause.kind == Kind::Address && f.kind == Kind::Route && f.device == cause.device;
    // Repairing the cause repairs it too (a replaced address: the cause's fix removes the
    // address that took its place).
    let repaired_with = !f.fix.commands.is_empty()
        && f.fix
            .commands
            .iter()
            .all(|c| cause.fix.commands.contains(c));
    dynamic || on_missing || route_of_address || repaired_with
}

/// Whether failure `f` stops its device altogether (missing, down, misconfigured, in a
/// bridge) rather than a detail of it (its MAC, its MTU): of two causes on one layer, the
/// one that explains more.
fn stops_device(f: &Failure) -> bool {
    matches!(
        f.kind,
        Kind::LinkExists
            | Kind::VxlanExists
            | Kind::LinkUp
            | Kind::VxlanSetting
            | Kind::Port
            | Kind::Arp
            | Kind::GuestReachable
    )
}

/// A ping's outcome in words, as failures say it.
const REPLY: &str = "reply";
const NO_REPLY: &str = "no reply";

/// A ping that should have been answered and was not (not one answered that must fail).
fn is_lost_ping(f: &Failure) -> bool {
    matches!(f.kind, Kind::OverlayPing | Kind::UnderlayPing) && f.seen == NO_REPLY
}

/// Groups failures cause first. A guest's cause is its lowest broken layer among the failures
/// that are its own; its own entries about other peers on that layer, each with a repair of
/// its own, are causes too. What no cause explains (both ends look right, yet a ping fails)
/// is put on the guest the lost pings point to where they can (see [`blame`]), else it is a
/// cause in its own right; either way vxlab has nothing to repair there, and its fix says
/// where to look.
pub fn diagnose(plan: &Plan, failures: &[Failure]) -> Vec<Diagnosis> {
    // Per guest, the failure of the lowest layer among `among`; of equals, one that stops
    // the device altogether (missing, down, misconfigured, in a bridge) before a detail of
    // it (its MAC, its MTU), then the first.
    fn lowest(failures: &[Failure], among: impl Iterator<Item = usize>) -> BTreeMap<&str, usize> {
        let key = |i: usize| (failures[i].layer, !stops_device(&failures[i]), i);
        let mut best: BTreeMap<&str, usize> = BTreeMap::new();
        for i in among {
            let e = best.entry(failures[i].guest.as_str()).or_insert(i);
            if key(i) < key(*e) {
                *e = i;
            }
        }
        best
    }
    let own = lowest(
        failures,
        (0..failures.len()).filter(|i| !about_peer(&failures[*i])),
    );
    // Per guest, bottom up: its own failures that follow from none of the causes found below
    // them are causes too, each with its own repair (an entry for another peer, a flushed
    // flood entry while eth0 is down).
    let mut co_causes: Vec<usize> = Vec::new();
    let mut by_layer: Vec<usize> = (0..failures.len())
        .filter(|i| !about_peer(&failures[*i]) && !failures[*i].fix.commands.is_empty())
        .collect();
    by_layer.sort_by_key(|i| (failures[*i].layer, *i));
    for i in by_layer {
        let f = &failures[i];
        let Some(first) = own.get(f.guest.as_str()).copied() else {
            continue;
        };
        let explained = std::iter::once(first)
            .chain(co_causes.iter().copied())
            .any(|c| c == i || (failures[c].guest == f.guest && follows(&failures[c], f)));
        if !explained {
            co_causes.push(i);
        }
    }
    // The cause on guest `on` that `f` can follow from: one about the other guest `f`
    // involves first (a ping to vm-c goes with vm-b's missing entry for vm-c, not its entry
    // for vm-a), then the lowest.
    let cause_on = |on: &str, other: Option<&str>, f: &Failure, pick: &dyn Fn(&Failure) -> bool| {
        std::iter::once(own.get(on).copied())
            .flatten()
            .chain(co_causes.iter().copied())
            .filter(|c| failures[*c].guest == on && failures[*c].layer <= f.layer)
            .filter(|c| follows(&failures[*c], f) && pick(&failures[*c]))
            .min_by_key(|c| {
                let about = failures[*c].peer.is_some() && failures[*c].peer.as_deref() == other;
                (!about, failures[*c].layer, !stops_device(&failures[*c]), *c)
            })
    };
    let own_cause = |f: &Failure, pick: &dyn Fn(&Failure) -> bool| {
        cause_on(&f.guest, f.peer.as_deref(), f, pick)
    };
    // A guest whose own underlay is broken explains what follows from it; otherwise what is
    // about a broken peer is that peer's doing; otherwise its own lower layer explains it.
    let explained_by = |f: &Failure| -> Option<usize> {
        let mine = own.get(f.guest.as_str()).copied();
        if let Some(c) = own_cause(f, &|c| c.layer < Layer::UnderlayReach) {
            return Some(c);
        }
        // So does its own VTEP when it cannot carry any overlay traffic: missing, down, not
        // as made, in a bridge, or without its address. (A flood or static entry breaks the
        // way to one peer at most, and the peer may be broken too.)
        let whole_vtep = |c: &Failure| {
            c.peer.is_none()
                && c.layer >= Layer::VxlanDevice
                && matches!(
                    c.kind,
                    Kind::VxlanExists
                        | Kind::VxlanSetting
                        | Kind::Port
                        | Kind::Arp
                        | Kind::LinkUp
                        | Kind::Address
                )
        };
        if let Some(c) = own_cause(f, &whole_vtep) {
            return Some(c);
        }
        // The peer's causes that bear on this pair: its own (a missing device, address) or
        // its entry for this guest; not its entry for a third guest.
        if let Some(p) = f.peer.as_deref().filter(|_| about_peer(f)) {
            let on_pair = |c: &Failure| c.peer.is_none() || c.peer.as_deref() == Some(&f.guest);
            if let Some(c) = cause_on(p, Some(&f.guest), f, &on_pair) {
                return Some(c);
            }
        }
        own_cause(f, &|_| true).or_else(|| mine.filter(|c| failures[*c].layer <= f.layer))
    };
    let causes: Vec<usize> = own
        .values()
        .copied()
        .chain(co_causes.iter().copied())
        .collect();
    let orphans: Vec<usize> = (0..failures.len())
        .filter(|i| !causes.contains(i) && explained_by(&failures[*i]).is_none())
        .collect();
    // Lost pings that point at one guest are put on it; the rest stay on their own guest.
    let blamed = blame(plan, failures, &orphans);
    let left: Vec<usize> = orphans
        .iter()
        .copied()
        .filter(|i| !blamed.iter().any(|(_, of)| of.contains(i)))
        .collect();
    let orphan_cause = lowest(failures, left.iter().copied());

    // (cause, symptoms, where it sorts)
    let mut groups: Vec<(Failure, Vec<usize>, usize)> = Vec::new();
    for c in &causes {
        groups.push((failures[*c].clone(), Vec::new(), *c));
    }
    for c in orphan_cause.values() {
        let mut cause = failures[*c].clone();
        // A lost ping between guests whose kernels are as planned: nothing to repair.
        if is_lost_ping(&cause) {
            cause.fix = nothing_to_repair(&cause.guest, cause.peer.as_deref());
        }
        groups.push((cause, Vec::new(), *c));
    }
    for (cause, of) in &blamed {
        groups.push((cause.clone(), of.clone(), of[0]));
    }
    for (i, f) in failures.iter().enumerate() {
        let placed = causes.contains(&i)
            || orphan_cause.values().any(|c| *c == i)
            || blamed.iter().any(|(_, of)| of.contains(&i));
        if placed {
            continue;
        }
        let c = explained_by(f).or_else(|| orphan_cause.get(f.guest.as_str()).copied());
        if let Some(g) = c.and_then(|c| groups.iter().position(|(_, _, at)| *at == c)) {
            groups[g].1.push(i);
        }
    }
    // Per guest, bottom up; of causes on one layer, one that explains something first.
    let order = |(cause, symptoms, at): &(Failure, Vec<usize>, usize)| {
        let g = plan.guests.iter().position(|g| g.name == cause.guest);
        (g, cause.layer, symptoms.is_empty(), *at)
    };
    groups.sort_by_key(order);
    groups
        .into_iter()
        .map(|(cause, symptoms, _)| Diagnosis {
            cause,
            symptoms: symptoms.iter().map(|i| failures[*i].clone()).collect(),
        })
        .collect()
}

/// The fix of a lost ping between guests whose kernels show nothing wrong: vxlab has nothing to
/// repair, so it says where to look.
fn nothing_to_repair(guest: &str, peer: Option<&str>) -> Fix {
    let both = peer.map_or_else(|| guest.to_string(), |p| format!("{guest} or {p}"));
    Fix {
        commands: Vec::new(),
        vxlab: String::new(),
        hint: Some(format!(
            "nothing vxlab set up in {both} differs from the lab's plan, so there is nothing \
             to repair: something drops the packets (a firewall rule: `iptables -S`, \
             `nft list ruleset`; or `sysctl net.ipv4.icmp_echo_ignore_all`)"
        )),
    }
}

/// The guests lost pings point to, with the orphan pings each explains: the target of pings
/// whose reverse pings are answered (the path works both ways, the target does not answer),
/// or the one guest every lost ping of a kind starts or ends at while pings of that kind that
/// do not involve it are answered.
fn blame(plan: &Plan, failures: &[Failure], orphans: &[usize]) -> Vec<(Failure, Vec<usize>)> {
    let lost: HashSet<(&str, &str, Kind)> = failures
        .iter()
        .filter(|f| is_lost_ping(f))
        .filter_map(|f| Some((f.guest.as_str(), f.peer.as_deref()?, f.kind)))
        .collect();
    let kind_of = |p: &PingPlan| match p.over {
        Network::Overlay => Kind::OverlayPing,
        Network::Underlay => Kind::UnderlayPing,
    };
    let ran_fine = |from: &str, to: &str, kind: Kind| {
        plan.pings.iter().any(|p| {
            p.from == from
                && p.to_guest.as_deref() == Some(to)
                && kind_of(p) == kind
                && p.expect == Expect::Success
        }) && !lost.contains(&(from, to, kind))
    };
    // An overlay ping answered crossed the underlay both ways too (underlay pings run only
    // after a lost overlay ping).
    let answered = |from: &str, to: &str, kind: Kind| {
        ran_fine(from, to, kind)
            || (kind == Kind::UnderlayPing && ran_fine(from, to, Kind::OverlayPing))
    };
    let mut out: Vec<(Failure, Vec<usize>)> = Vec::new();
    let mut put = |target: &str, i: usize, why: &str| {
        let f = &failures[i];
        if let Some((c, of)) = out
            .iter_mut()
            .find(|(c, _)| c.guest == target && c.seen == why)
        {
            // The cause sits at the lowest layer of the pings it explains.
            if f.layer < c.layer {
                (c.layer, c.kind) = (f.layer, f.kind);
            }
            of.push(i);
            return;
        }
        out.push((
            Failure {
                kind: f.kind,
                layer: f.layer,
                guest: target.to_string(),
                device: String::new(),
                what: "answers no ping".into(),
                expected: "echo replies".into(),
                seen: why.to_string(),
                peer: None,
                fix: nothing_to_repair(target, None),
            },
            vec![i],
        ));
    };
    for &i in orphans {
        let f = &failures[i];
        let (Some(to), true) = (f.peer.as_deref(), is_lost_ping(f)) else {
            continue;
        };
        if answered(to, &f.guest, f.kind) {
            put(
                to,
                i,
                "none, though its own pings the other way are answered",
            );
            continue;
        }
        // Every lost ping of this kind starts or ends at one guest, and others are answered.
        let of_kind: Vec<(&str, &str)> = lost
            .iter()
            .filter(|(_, _, k)| *k == f.kind)
            .map(|(a, b, _)| (*a, *b))
            .collect();
        let common: Vec<&str> = [f.guest.as_str(), to]
            .into_iter()
            .filter(|g| of_kind.iter().all(|(a, b)| a == g || b == g))
            .collect();
        let others_answer = |g: &str| {
            plan.pings.iter().any(|p| {
                kind_of(p) == f.kind
                    && p.from != g
                    && p.to_guest.as_deref().is_some_and(|t| t != g)
                    && answered(&p.from, p.to_guest.as_deref().unwrap_or_default(), f.kind)
            })
        };
        if let [g] = common.as_slice() {
            if others_answer(g) {
                put(g, i, "none: every lost ping of its kind is to or from it");
            }
        }
    }
    out
}

/// A peer is learned once encapsulated frames from it arrived (after a ping either way), and
/// must then sit behind its own VTEP.
fn learned(g: &GuestPlan, state: &GuestState, answered: &HashSet<(&str, IpAddr)>) -> Vec<Finding> {
    let mut out = Vec::new();
    for v in g.vteps.iter().filter(|v| v.learning) {
        let entries = state
            .fdb
            .get(&v.device)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for peer in &v.peers {
            let talked = answered.contains(&(g.name.as_str(), peer.overlay))
                || answered.contains(&(peer.guest.as_str(), v.address.addr()));
            if !talked {
                continue;
            }
            let entry = entries.iter().find(|e| e.mac == peer.mac);
            let dst = entry.and_then(|e| e.dst);
            let mut f = made(
                Layer::Forwarding,
                Kind::Learned,
                format!("{} learned {} ({})", v.device, peer.guest, peer.mac),
                format!("dst {}", peer.underlay),
                match entry {
                    Some(_) => format!("dst {}", opt(dst)),
                    None => "not in the FDB".into(),
                },
                dst == Some(peer.underlay),
                Some(peer.guest.clone()),
            );
            f.device = v.device.clone();
            out.push(f);
        }
    }
    out
}

/// Guests cloned from one image can get the same "persistent" vxlan MAC from systemd; each
/// then drops the other's frames as its own, and the overlay fails while multicast works.
fn duplicate_macs(plan: &Plan, seen: &BTreeMap<String, GuestState>) -> Vec<(String, Finding)> {
    let mut out = Vec::new();
    let mut by_vni: BTreeMap<(u32, String), String> = BTreeMap::new();
    for g in &plan.guests {
        for v in &g.vteps {
            let mac = seen
                .get(&g.name)
                .and_then(|s| s.links.get(&v.device))
                .and_then(|l| l.mac);
            let Some(mac) = mac else { continue };
            if let Some(other) = by_vni.insert((v.vni, mac.to_string()), g.name.clone()) {
                let mut f = made(
                    Layer::VxlanDevice,
                    Kind::UniqueMac,
                    format!("{} MAC unique in VNI {}", v.device, v.vni),
                    "a MAC of its own",
                    format!("{mac}, the same as {other}'s"),
                    false,
                    Some(other),
                );
                f.device = v.device.clone();
                out.push((g.name.clone(), f));
            }
        }
    }
    out
}

fn opt(x: Option<impl ToString>) -> String {
    x.map(|v| v.to_string()).unwrap_or_else(|| "none".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorded;

    /// The seed lab on namespaces as recorded, each guest in the named state.
    fn world(a: &str, b: &str) -> (Plan, BTreeMap<String, GuestState>) {
        let (ra, rb) = (recorded(a), recorded(b));
        let w = [
            ("vm-a".to_string(), ra.state),
            ("vm-b".to_string(), rb.state),
        ]
        .into();
        (ra.plan, w)
    }

    fn all_replied(plan: &Plan) -> Vec<PingResult> {
        plan.pings
            .iter()
            .map(|p| PingResult {
                ping: p.clone(),
                replied: true,
                answered_by_itself: false,
            })
            .collect()
    }

    fn lost(plan: &Plan, from: &str) -> Vec<PingResult> {
        let mut pings = all_replied(plan);
        for p in pings.iter_mut().filter(|p| p.ping.from == from) {
            p.replied = false;
        }
        pings
    }

    #[test]
    fn a_healthy_seed_lab_passes() {
        let (p, w) = world("seed-healthy-vm-a", "seed-healthy-vm-b");
        let v = verify(&p, &w, &all_replied(&p));
        assert_eq!(v.failures, vec![]);
        assert!(v.passed > 30, "{}", v.passed);
    }

    #[test]
    fn vm_a_must_learn_vm_b_with_dst_192_168_10_3() {
        let (p, mut w) = world("seed-healthy-vm-a", "seed-healthy-vm-b");
        let fdb = w.get_mut("vm-a").unwrap().fdb.get_mut("vxlan0").unwrap();
        let peer = p.guest("vm-b").unwrap().vteps[0].mac;
        fdb.iter_mut().find(|e| e.mac == peer).unwrap().dst = Some("192.168.10.9".parse().unwrap());
        let v = verify(&p, &w, &all_replied(&p));
        assert_eq!(v.failures.len(), 1, "{:#?}", v.failures);
        let f = &v.failures[0];
        assert_eq!((f.guest.as_str(), f.kind), ("vm-a", Kind::Learned));
        assert_eq!(f.expected, "dst 192.168.10.3");
        assert_eq!(f.seen, "dst 192.168.10.9");
        assert_eq!(f.fix.vxlab, "vxlab reset two-netns vm-a");
    }

    #[test]
    fn a_downed_underlay_is_the_cause_of_the_lost_pings_on_both_sides() {
        let (p, w) = world("seed-eth0-down-vm-a", "seed-healthy-vm-b");
        let mut pings = lost(&p, "vm-a");
        pings.extend(
            lost(&p, "vm-b")
                .into_iter()
                .filter(|r| r.ping.from == "vm-b"),
        );
        let v = verify(&p, &w, &pings);
        assert_eq!(v.diagnoses.len(), 1, "{:#?}", v.diagnoses);
        let d = &v.diagnoses[0];
        assert_eq!(d.cause.guest, "vm-a");
        assert_eq!(d.cause.what, "eth0 is down (underlay)");
        assert_eq!(d.cause.fix.commands, ["ip link set up eth0"]);
        assert!(d
            .symptoms
            .iter()
            .any(|s| s.guest == "vm-b" && s.what == "ping 192.168.42.2 (vm-a)"));
    }

    #[test]
    fn a_changed_underlay_address_blames_its_own_guest_before_the_peer_that_learned_it() {
        let (p, mut w) = world("seed-underlay-22-vm-a", "seed-healthy-vm-b");
        // vm-b learned vm-a behind the address vm-a now has.
        let mac_a = p.guest("vm-a").unwrap().vteps[0].mac;
        let fdb = w.get_mut("vm-b").unwrap().fdb.get_mut("vxlan0").unwrap();
        fdb.iter_mut().find(|e| e.mac == mac_a).unwrap().dst =
            Some("192.168.10.22".parse().unwrap());
        let v = verify(&p, &w, &all_replied(&p));
        let d = &v.diagnoses[0];
        assert_eq!(
            (d.cause.guest.as_str(), d.cause.layer),
            ("vm-a", Layer::UnderlayAddress)
        );
        assert!(d
            .symptoms
            .iter()
            .any(|s| s.guest == "vm-b" && s.kind == Kind::Learned));
        // The address vm-a has instead goes with the cause, whose repair removes it.
        assert_eq!(
            d.cause.fix.commands,
            [
                "ip addr del 192.168.10.22/24 dev eth0",
                "ip addr add 192.168.10.2/24 dev eth0"
            ]
        );
        assert!(d
            .symptoms
            .iter()
            .any(|s| s.guest == "vm-a" && s.kind == Kind::ExtraAddress));
        assert_eq!(v.diagnoses.len(), 1, "{:#?}", v.diagnoses);
    }

    #[test]
    fn a_down_lo_is_a_cause_of_its_own_and_explains_no_lost_ping() {
        let (p, mut w) = world("seed-eth0-down-vm-a", "seed-healthy-vm-b");
        w.get_mut("vm-a").unwrap().links.get_mut("lo").unwrap().up = false;
        let v = verify(&p, &w, &lost(&p, "vm-a"));
        let causes: Vec<(&str, &str, usize)> = v
            .diagnoses
            .iter()
            .map(|d| {
                (
                    d.cause.guest.as_str(),
                    d.cause.device.as_str(),
                    d.symptoms.len(),
                )
            })
            .collect();
        // eth0 down explains the pings; lo down explains nothing and comes after it.
        assert_eq!(causes.len(), 2, "{:#?}", v.diagnoses);
        assert_eq!(v.diagnoses[1].cause.what, "lo up", "{:#?}", v.diagnoses);
        assert!(v.diagnoses[1].symptoms.is_empty());
        assert_eq!(v.diagnoses[0].cause.what, "eth0 is down (underlay)");
        assert!(v.diagnoses[0]
            .symptoms
            .iter()
            .any(|s| s.kind == Kind::OverlayPing));
    }

    #[test]
    fn a_flushed_flood_entry_is_a_cause_of_its_own_beside_a_downed_underlay() {
        // eth0 down does not remove the flood entry; a student who flushed it too must be told
        // both, each with its repair. The group not joined on a down eth0 follows from it.
        let (p, mut w) = world("seed-eth0-down-vm-a", "seed-healthy-vm-b");
        w.get_mut("vm-a")
            .unwrap()
            .fdb
            .get_mut("vxlan0")
            .unwrap()
            .retain(|e| e.mac != crate::lab::Mac([0; 6]));
        let v = verify(&p, &w, &lost(&p, "vm-a"));
        let causes: Vec<(&str, Kind)> = v
            .diagnoses
            .iter()
            .map(|d| (d.cause.guest.as_str(), d.cause.kind))
            .collect();
        assert_eq!(
            causes,
            [("vm-a", Kind::LinkUp), ("vm-a", Kind::FloodEntry)],
            "{:#?}",
            v.diagnoses
        );
        assert!(v.diagnoses[1].cause.fix.commands[0]
            .starts_with("bridge fdb append 00:00:00:00:00:00 dev vxlan0 dst 239.1.1.1"));
        assert!(v.diagnoses[0]
            .symptoms
            .iter()
            .any(|s| s.kind == Kind::OverlayPing));
    }

    #[test]
    fn a_deleted_vxlan_device_carries_the_command_that_makes_it() {
        let (p, w) = world("seed-vxlan-deleted-vm-a", "seed-healthy-vm-b");
        let v = verify(&p, &w, &lost(&p, "vm-a"));
        let f = v
            .failures
            .iter()
            .find(|f| f.what == "vxlan0 is missing")
            .unwrap();
        assert_eq!(
            f.fix.commands[0],
            "ip link add vxlan0 address 02:58:00:00:2a:01 type vxlan id 42 group 239.1.1.1 dev \
             eth0 dstport 4789"
        );
        assert_eq!(f.fix.vxlab, "vxlab up two-netns");
    }

    #[test]
    fn cloned_guests_with_one_mac_are_flagged_by_name() {
        let (p, mut w) = world("seed-healthy-vm-a", "seed-healthy-vm-b");
        let mac = w["vm-a"].links["vxlan0"].mac;
        w.get_mut("vm-b")
            .unwrap()
            .links
            .get_mut("vxlan0")
            .unwrap()
            .mac = mac;
        let v = verify(&p, &w, &all_replied(&p));
        assert!(v
            .failures
            .iter()
            .any(|f| f.guest == "vm-b" && f.seen.contains("the same as vm-a's")));
    }

    #[test]
    fn a_lost_ping_fails_and_an_expected_failure_passes() {
        let (p, w) = world("seed-healthy-vm-a", "seed-healthy-vm-b");
        let mut pings = all_replied(&p);
        pings[0].replied = false;
        let v = verify(&p, &w, &pings);
        assert!(v
            .failures
            .iter()
            .any(|f| f.what.starts_with("ping 192.168.42.3") && f.seen == "no reply"));
        pings[0].ping.expect = Expect::Fail;
        let v = verify(&p, &w, &pings);
        assert!(!v.failures.iter().any(|f| f.what.starts_with("ping")));
    }

    /// The seed's pings, those `lost` (from, over) left unanswered.
    fn pings_lost(plan: &Plan, lost: &[(&str, Network)]) -> Vec<PingResult> {
        let mut pings = all_replied(plan);
        for p in pings.iter_mut() {
            p.replied = !lost.contains(&(p.ping.from.as_str(), p.ping.over));
        }
        pings
    }

    #[test]
    fn a_wrong_neighbour_in_vm_a_is_the_cause_of_vm_bs_lost_ping_too() {
        let (p, mut w) = world("seed-healthy-vm-a", "seed-healthy-vm-b");
        w.get_mut("vm-a").unwrap().neighbours.insert(
            "vxlan0".into(),
            vec![crate::observe::Neighbour {
                dst: "192.168.42.3".parse().unwrap(),
                lladdr: Some("02:00:00:00:00:99".parse().unwrap()),
                permanent: true,
            }],
        );
        let lost = [("vm-a", Network::Overlay), ("vm-b", Network::Overlay)];
        let v = verify(&p, &w, &pings_lost(&p, &lost));
        assert_eq!(v.diagnoses.len(), 1, "{:#?}", v.diagnoses);
        let d = &v.diagnoses[0];
        assert_eq!(
            (d.cause.guest.as_str(), d.cause.kind),
            ("vm-a", Kind::ExtraNeighbour)
        );
        assert!(!d.cause.fix.commands.is_empty());
        assert!(d
            .symptoms
            .iter()
            .any(|s| s.guest == "vm-b" && s.kind == Kind::OverlayPing));
    }

    #[test]
    fn a_peer_whose_mac_changed_is_the_cause_of_what_the_other_resolved() {
        let (p, mut w) = world("seed-healthy-vm-a", "seed-healthy-vm-b");
        let new: crate::lab::Mac = "02:00:00:00:00:aa".parse().unwrap();
        w.get_mut("vm-a")
            .unwrap()
            .links
            .get_mut("vxlan0")
            .unwrap()
            .mac = Some(new);
        // vm-b's ARP resolved vm-a's overlay address to the MAC vm-a now has.
        w.get_mut("vm-b").unwrap().neighbours.insert(
            "vxlan0".into(),
            vec![crate::observe::Neighbour {
                dst: "192.168.42.2".parse().unwrap(),
                lladdr: Some(new),
                permanent: false,
            }],
        );
        let v = verify(&p, &w, &all_replied(&p));
        assert_eq!(v.diagnoses.len(), 1, "{:#?}", v.diagnoses);
        let d = &v.diagnoses[0];
        assert_eq!((d.cause.guest.as_str(), d.cause.kind), ("vm-a", Kind::Mac));
        assert!(
            d.symptoms
                .iter()
                .any(|s| s.guest == "vm-b" && s.kind == Kind::Neighbour),
            "{d:#?}"
        );
    }

    #[test]
    fn a_ping_the_guest_answered_itself_did_not_reach_the_peer() {
        // vm-a was given vm-b's overlay address too: its ping to 192.168.42.3 is answered by
        // its own kernel.
        let (p, mut w) = world("seed-healthy-vm-a", "seed-healthy-vm-b");
        let theirs: ipnet::IpNet = "192.168.42.3/24".parse().unwrap();
        w.get_mut("vm-a")
            .unwrap()
            .links
            .get_mut("vxlan0")
            .unwrap()
            .addresses
            .push(theirs);
        let mut pings = all_replied(&p);
        answered_locally(&w, &mut pings);
        let own = pings
            .iter()
            .find(|r| r.ping.from == "vm-a" && r.ping.to == theirs.addr())
            .unwrap();
        assert!(!own.replied && own.answered_by_itself);
        assert!(pings.iter().filter(|r| r.answered_by_itself).count() == 1);
        let v = verify(&p, &w, &pings);
        let f = v
            .failures
            .iter()
            .find(|f| f.kind == Kind::OverlayPing)
            .unwrap();
        assert_eq!(f.seen, "a reply from vm-a itself: it has 192.168.42.3 too");
        // It goes with the extra address, its cause.
        let d = v
            .diagnoses
            .iter()
            .find(|d| d.symptoms.iter().any(|s| s.kind == Kind::OverlayPing))
            .unwrap();
        assert_eq!(d.cause.kind, Kind::ExtraAddress, "{:#?}", v.diagnoses);
    }

    #[test]
    fn a_guest_that_answers_no_ping_while_its_own_are_answered_is_named_with_no_repair() {
        // vm-b ignores echo requests: vm-a's overlay ping to it is lost, and so the underlay
        // ping that follows; vm-b's own ping to vm-a is answered, both kernels as planned.
        let (p, w) = world("seed-healthy-vm-a", "seed-healthy-vm-b");
        let mut pings = pings_lost(&p, &[("vm-a", Network::Overlay)]);
        let b = p.guest("vm-b").unwrap().underlay.addr();
        pings.push(PingResult {
            ping: PingPlan::underlay("vm-a", "vm-b", b, p.driver),
            replied: false,
            answered_by_itself: false,
        });
        let v = verify(&p, &w, &pings);
        assert_eq!(v.diagnoses.len(), 1, "{:#?}", v.diagnoses);
        let d = &v.diagnoses[0];
        assert_eq!(d.cause.guest, "vm-b");
        assert_eq!(d.cause.what, "answers no ping");
        assert_eq!(d.cause.layer, Layer::UnderlayReach);
        assert_eq!(d.symptoms.len(), 2, "{d:#?}");
        assert!(d.symptoms.iter().all(|s| s.guest == "vm-a"), "{d:#?}");
        assert_eq!(d.cause.fix.vxlab, "");
        let said = d.cause.fix.to_string();
        assert!(
            said.contains("nothing vxlab set up in vm-b differs")
                && said.contains("icmp_echo_ignore_all")
                && !said.contains("vxlab up two-netns"),
            "{said}"
        );
    }

    #[test]
    fn pings_lost_both_ways_between_healthy_guests_say_vxlab_has_nothing_to_repair() {
        let (p, w) = world("seed-healthy-vm-a", "seed-healthy-vm-b");
        let lost = [("vm-a", Network::Overlay), ("vm-b", Network::Overlay)];
        let v = verify(&p, &w, &pings_lost(&p, &lost));
        assert_eq!(v.diagnoses.len(), 2, "{:#?}", v.diagnoses);
        for d in &v.diagnoses {
            assert_eq!(d.cause.kind, Kind::OverlayPing);
            assert!(d.cause.fix.to_string().contains("nothing vxlab set up in"));
            assert!(d.cause.fix.to_string().contains("iptables -S"));
        }
    }

    #[test]
    fn a_ping_that_must_fail_but_is_answered_blames_no_one_for_dropping_packets() {
        let (p, w) = world("seed-healthy-vm-a", "seed-healthy-vm-b");
        let mut pings = all_replied(&p);
        pings[0].ping.expect = Expect::Fail;
        let v = verify(&p, &w, &pings);
        assert_eq!(v.diagnoses.len(), 1, "{:#?}", v.diagnoses);
        let c = &v.diagnoses[0].cause;
        assert_eq!(
            (c.seen.as_str(), c.fix.hint.as_deref()),
            ("reply", None),
            "{c:#?}"
        );
    }

    #[test]
    fn an_unreachable_guest_is_a_failure_to_reset() {
        let (p, mut w) = world("seed-healthy-vm-a", "seed-healthy-vm-b");
        w.remove("vm-b");
        let v = verify(&p, &w, &all_replied(&p));
        let f = v
            .failures
            .iter()
            .find(|f| f.guest == "vm-b" && f.seen == "not reachable")
            .unwrap();
        assert_eq!(f.fix.vxlab, "vxlab reset two-netns vm-b");
    }
}
