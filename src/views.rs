//! Teaching views: a guest's vxlan state as tables, each row with what it means. Pure: made
//! from the plan and what the guest's kernel reported.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::explain::{self, fdb_entry as fdb_meaning, group as group_meaning};
use crate::guest_command as cmd;
use crate::lab::{Flood, Mac};
use crate::observe::{GuestState, Route};
use crate::outcome::{Stage, StageKind};
use crate::plan::{GuestPlan, Plan};

/// One row of a table: the cells and what the row means.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Cells, in the table's column order.
    pub cells: Vec<String>,
    /// What this row means, in one line.
    pub meaning: String,
}

/// A titled table.
#[derive(Debug, Clone, Serialize)]
pub struct Table {
    /// The section.
    pub title: String,
    /// The command a student types to see the same.
    pub command: String,
    /// Column names.
    pub columns: Vec<String>,
    /// Rows.
    pub rows: Vec<Row>,
    /// A note under the table.
    pub note: Option<String>,
}

/// The parts of `vxlab show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// The vxlan devices and the underlay interface (`ip -d link`).
    Link,
    /// Multicast groups joined on the underlay (`ip maddr`).
    Maddr,
    /// The vxlan devices' forwarding databases (`bridge fdb`).
    Fdb,
    /// The routing table (`ip route`).
    Route,
}

/// The tables of `vxlab show` for guest `g` in state `st`: `only` one section, or all.
pub fn tables(plan: &Plan, g: &GuestPlan, st: &GuestState, only: Option<Section>) -> Vec<Table> {
    let want = |s: Section| only.is_none_or(|o| o == s);
    let mut out = Vec::new();
    if want(Section::Link) {
        out.push(links(g, st));
    }
    if want(Section::Maddr) {
        out.push(maddr(g, st));
    }
    if want(Section::Fdb) {
        out.extend(fdb(g, st, &explain::owners(plan)));
    }
    if want(Section::Route) {
        out.push(routes(g, &st.routes));
    }
    out
}

fn cols(c: &[&str]) -> Vec<String> {
    c.iter().map(|s| s.to_string()).collect()
}

/// A link's row: name, what it is, state, MTU, MAC, addresses.
fn link_row(l: &crate::observe::Link, kind: String, meaning: String) -> Row {
    Row {
        cells: vec![
            l.name.clone(),
            kind,
            if l.up { "UP" } else { "down" }.into(),
            l.mtu.to_string(),
            l.mac.map(|m| m.to_string()).unwrap_or_default(),
            l.addresses
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(" "),
        ],
        meaning,
    }
}

/// The links table: the underlay interface and every vxlan device.
pub fn links(g: &GuestPlan, st: &GuestState) -> Table {
    let mut rows = Vec::new();
    if let Some(l) = st.links.get(&g.interface) {
        rows.push(link_row(
            l,
            "underlay".into(),
            "the underlay: carries the VTEPs' UDP packets between the guests".into(),
        ));
    }
    for v in &g.vteps {
        let Some(l) = st.links.get(&v.device) else {
            rows.push(Row {
                cells: vec![v.device.clone(), "missing".into()],
                meaning: "the lab expects this vxlan device; it does not exist".into(),
            });
            continue;
        };
        let p = l.vxlan.as_ref();
        let flood = match p.and_then(|p| p.group) {
            Some(group) => format!("floods to group {group}"),
            None => "floods one copy per peer (head-end replication)".into(),
        };
        let kind = p
            .map(|p| {
                format!(
                    "vxlan id {} {}dev {} dstport {}{}",
                    p.vni,
                    p.group.map(|g| format!("group {g} ")).unwrap_or_default(),
                    p.dev.as_deref().unwrap_or("-"),
                    p.port,
                    if p.learning { "" } else { " nolearning" }
                )
            })
            .unwrap_or_else(|| "not a vxlan".into());
        let mut meaning = format!(
            "a VTEP: wraps each frame in UDP to port {} with VNI {}; {flood}; {}",
            v.port,
            v.vni,
            if v.learning {
                "learns which VTEP each source MAC sits behind"
            } else {
                "learns nothing: only static entries"
            }
        );
        if let Some(m) = &l.master {
            meaning.push_str(&format!(
                "; but it is a port of {m}, not in the lab: what it receives goes to {m}"
            ));
        }
        rows.push(link_row(l, kind, meaning));
    }
    // What the guest has besides (a device a student made): shown, and said what it is.
    let planned = |n: &str| n == "lo" || n == g.interface || g.vteps.iter().any(|v| v.device == n);
    for l in st.links.values().filter(|l| !planned(&l.name)) {
        let (kind, meaning) = match &l.vxlan {
            Some(p) => (
                format!("vxlan id {}", p.vni),
                "not in the lab: a vxlan device made in the guest (`vxlab up` removes it)".into(),
            ),
            None => (
                "other".into(),
                "not in the lab: a device made in the guest (vxlab leaves it alone)".into(),
            ),
        };
        rows.push(link_row(l, kind, meaning));
    }
    Table {
        title: "link".into(),
        command: "ip -d link show".into(),
        columns: cols(&["DEVICE", "KIND", "STATE", "MTU", "MAC", "ADDRESSES"]),
        rows,
        note: Some(
            "the vxlan MTU is the underlay's minus 50 bytes of outer headers (Ethernet 14, \
             IPv4 20, UDP 8, VXLAN 8)"
                .into(),
        ),
    }
}

/// The groups joined on the underlay interface.
pub fn maddr(g: &GuestPlan, st: &GuestState) -> Table {
    Table {
        title: "maddr".into(),
        command: format!("ip maddr show dev {}", g.interface),
        columns: cols(&["GROUP", "DEVICE"]),
        rows: st
            .groups
            .iter()
            .map(|m| Row {
                cells: vec![m.group.to_string(), m.dev.clone()],
                meaning: group_meaning(g, m),
            })
            .collect(),
        note: None,
    }
}

/// Every vxlan device's FDB.
pub fn fdb(g: &GuestPlan, st: &GuestState, owners: &BTreeMap<Mac, String>) -> Vec<Table> {
    g.vteps
        .iter()
        .map(|v| Table {
            title: format!("fdb {}", v.device),
            command: format!("bridge fdb show dev {}", v.device),
            columns: cols(&["MAC", "DST", "VIA", "STATE"]),
            rows: st
                .fdb
                .get(&v.device)
                .into_iter()
                .flatten()
                .map(|e| Row {
                    cells: vec![
                        e.mac.to_string(),
                        e.dst.map(|d| d.to_string()).unwrap_or_default(),
                        e.via.clone().unwrap_or_default(),
                        if e.permanent { "permanent" } else { "learned" }.into(),
                    ],
                    meaning: fdb_meaning(v, e, owners),
                })
                .collect(),
            note: Some(
                "every row is in the vxlan device's own table, not a Linux bridge's (that is \
                 what `self` at the end of each line of `bridge fdb show` says); DST is the \
                 remote VTEP's underlay address"
                    .into(),
            ),
        })
        .collect()
}

/// The routing table.
pub fn routes(g: &GuestPlan, rs: &[Route]) -> Table {
    Table {
        title: "route".into(),
        command: "ip route show".into(),
        columns: cols(&["DESTINATION", "VIA", "DEVICE", "SOURCE"]),
        rows: rs
            .iter()
            .map(|r| {
                let dev = r.dev.clone().unwrap_or_default();
                let meaning = if let Some(v) = g.vteps.iter().find(|v| v.device == dev) {
                    format!(
                        "the overlay: sent into {} and carried in VXLAN {} over the underlay",
                        v.device, v.vni
                    )
                } else if dev == g.interface && r.gateway.is_none() {
                    "the underlay: the VTEPs reach each other directly here".into()
                } else if r.dst == "default" {
                    "everything else".into()
                } else {
                    "another route".into()
                };
                Row {
                    cells: vec![
                        r.dst.clone(),
                        r.gateway.map(|g| g.to_string()).unwrap_or_default(),
                        dev,
                        r.prefsrc.map(|s| s.to_string()).unwrap_or_default(),
                    ],
                    meaning,
                }
            })
            .collect(),
        note: None,
    }
}

/// A table as aligned text with the meaning of each row after it.
pub fn render(t: &Table) -> String {
    let mut widths: Vec<usize> = t.columns.iter().map(String::len).collect();
    for r in &t.rows {
        for (i, c) in r.cells.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.len());
            }
        }
    }
    let line = |cells: &[String]| -> String {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut o = String::new();
    let _ = writeln!(o, "{}  ({})", t.title, t.command);
    let _ = writeln!(o, "  {}", line(&t.columns));
    if t.rows.is_empty() {
        let _ = writeln!(o, "  (none)");
    }
    for r in &t.rows {
        let _ = writeln!(o, "  {}", line(&r.cells));
        let _ = writeln!(o, "      -> {}", r.meaning);
    }
    if let Some(n) = &t.note {
        let _ = writeln!(o, "  note: {n}");
    }
    o
}

/// The vxlan devices of `plan` whose overlay is IPv6: they make link-local addresses and send
/// autoconfiguration traffic as soon as they are up.
fn ipv6_overlays(plan: &Plan) -> Vec<String> {
    let mut out: Vec<String> = plan
        .guests
        .iter()
        .flat_map(|g| &g.vteps)
        .filter(|v| v.address.addr().is_ipv6())
        .map(|v| format!("{} (VNI {})", v.device, v.vni))
        .collect();
    out.dedup();
    out
}

/// What a walk stage is about, and what to look for.
fn stage_text(plan: &Plan, kind: StageKind) -> (&'static str, String) {
    let v6 = ipv6_overlays(plan);
    match kind {
        StageKind::Underlay => (
            "1. the underlay",
            "each guest gets its underlay address; the VTEPs will talk over this network".into(),
        ),
        StageKind::Vxlan => {
            let vteps = || plan.guests.iter().flat_map(|g| &g.vteps);
            let grouped = vteps().any(|v| matches!(v.flood, Flood::Group(_)));
            let head_end = vteps().any(|v| v.flood == Flood::HeadEnd);
            let mut flooding = Vec::new();
            if grouped {
                flooding.push(
                    "with a group, the kernel joins the group on the underlay device when the \
                     device comes up (see ip maddr), and the FDB gets its flood entry",
                );
            }
            if head_end {
                flooding.push(
                    "without a group, nothing is joined: one flood entry per peer (`bridge fdb \
                     append 00:00:00:00:00:00 … dst PEER`) sends each unknown frame to every \
                     peer's VTEP in turn",
                );
            }
            let mut why = format!(
                "a vxlan device is a VTEP; {}; on an IPv4 overlay `addrgenmode none` keeps the \
                 device from sending IPv6 autoconfiguration frames, so nothing crosses the \
                 overlay before the first ping",
                flooding.join("; ")
            );
            if !v6.is_empty() {
                why.push_str(&format!(
                    "; {} carr{} an IPv6 overlay: its devices make link-local addresses and send \
                     router solicitations and MLD reports as soon as they are up, and that \
                     autoconfiguration traffic teaches the VTEPs each other early (the learned \
                     `+ bridge fdb` lines here and in the next stage)",
                    v6.join(", "),
                    if v6.len() == 1 { "ies" } else { "y" }
                ));
            }
            ("2. the vxlan devices", why)
        }
        StageKind::Overlay => (
            "3. the overlay addresses",
            "the guests now share one Ethernet segment over VXLAN: each has an address in the \
             overlay subnet, routed into its vxlan device"
                .into(),
        ),
        StageKind::FirstPing => (
            "4. the first ping",
            "the ARP request is flooded (to the group, or to each peer), the peer's VTEP learns \
             the sender, its reply comes back unicast, and the sender learns the peer: its MAC \
             now maps to the peer's underlay address"
                .into(),
        ),
    }
}

/// What changed in one guest's groups and FDBs, one line per change.
/// `pinged`: whether the part's commands sent traffic between the guests (a ping). Where
/// they did not, an FDB entry learned meanwhile was taught by other traffic (an IPv6
/// overlay's autoconfiguration), and says so.
fn changes(
    g: &GuestPlan,
    before: Option<&GuestState>,
    after: &GuestState,
    owners: &BTreeMap<Mac, String>,
    pinged: bool,
) -> Vec<String> {
    let empty = GuestState::default();
    let before = before.unwrap_or(&empty);
    let mut out = Vec::new();
    for v in &g.vteps {
        if let (None, Some(l)) = (before.links.get(&v.device), after.links.get(&v.device)) {
            if let Some(p) = &l.vxlan {
                out.push(format!(
                    "+ link {}: vxlan id {} {}dev {} dstport {}",
                    v.device,
                    p.vni,
                    p.group.map(|g| format!("group {g} ")).unwrap_or_default(),
                    p.dev.as_deref().unwrap_or("-"),
                    p.port
                ));
            }
        }
    }
    for m in after.groups.iter().filter(|m| !before.groups.contains(m)) {
        out.push(format!(
            "+ ip maddr: {} on {}: {}",
            m.group,
            m.dev,
            group_meaning(g, m)
        ));
    }
    for m in before.groups.iter().filter(|m| !after.groups.contains(m)) {
        out.push(format!("- ip maddr: {} left on {}", m.group, m.dev));
    }
    for v in &g.vteps {
        let old = before.fdb.get(&v.device).cloned().unwrap_or_default();
        for e in after.fdb.get(&v.device).into_iter().flatten() {
            if !old.contains(e) {
                let learned = !e.permanent && !e.mac.is_zero();
                let by = if learned && !pinged {
                    " (taught not by these commands but by the IPv6 autoconfiguration \
                     traffic the devices send once up: no ping crossed yet)"
                } else {
                    ""
                };
                out.push(format!(
                    "+ bridge fdb {}: {} dst {}: {}{by}",
                    v.device,
                    e.mac,
                    e.dst.map(|d| d.to_string()).unwrap_or_default(),
                    fdb_meaning(v, e, owners)
                ));
            }
        }
    }
    out
}

/// One stage of `vxlab walk` as text: what vxlab did on the host, then each guest's commands
/// followed by what they changed, in that guest or another.
pub fn walk_stage(plan: &Plan, stage: &Stage) -> String {
    let owners = explain::owners(plan);
    let (title, why) = stage_text(plan, stage.kind);
    let mut o = String::new();
    let _ = writeln!(o, "\n== {title}\n   {why}");
    if !stage.host.is_empty() {
        let _ = writeln!(o, "on the host, vxlab's own work (by hand it is):");
        for p in &stage.host {
            let _ = writeln!(o, "  # {} ({})", p.what, p.by.describe());
            for c in &p.commands {
                let _ = writeln!(o, "  $ {c}");
            }
        }
    }
    for part in &stage.parts {
        let _ = writeln!(o, "{}:", part.guest);
        for c in &part.commands {
            let _ = writeln!(o, "  $ {c}");
        }
        let mut any = false;
        for g in &plan.guests {
            let Some(after) = part.after.get(&g.name) else {
                continue;
            };
            let pinged = stage.kind == StageKind::FirstPing;
            for c in changes(g, part.before.get(&g.name), after, &owners, pinged) {
                let _ = writeln!(o, "  {} {}", g.name, c);
                any = true;
            }
        }
        if !any {
            let _ = writeln!(o, "  (no change in groups or FDB)");
        }
    }
    if let Some((from, to, ok)) = &stage.ping {
        let _ = writeln!(
            o,
            "ping {from} -> {to}: {}",
            if *ok { "answered" } else { "NO ANSWER" }
        );
    }
    o
}

/// The commands vxlab reads guest `g` with, as `$` lines (the JSON forms; an `ip` without
/// `-j` is read with the same commands less `-j`).
fn read_lines(g: &GuestPlan, with_readiness: bool) -> String {
    let mut cmds = cmd::read::guest(g, true).commands;
    if with_readiness {
        cmds.extend(cmd::readiness());
    }
    cmds.iter().map(|c| format!("  $ {c}\n")).collect()
}

/// How the walk reads the guests, for its introduction: the commands it runs in every guest
/// after each guest's commands.
pub fn walk_reads(plan: &Plan) -> String {
    let Some(g) = plan.guests.first() else {
        return String::new();
    };
    let readiness: String = cmd::readiness()
        .iter()
        .map(|c| format!("  $ {c}\n"))
        .collect();
    format!(
        "first, vxlab checks that each guest can do vxlan (its kernel, its vxlan module, its \
         `ip`); in {g} it runs (likewise in the others):\n{readiness}\
         then, after each guest's commands, vxlab reads every guest and shows what changed \
         (`+` added, `-` gone); in {g} it runs (likewise in the others):\n{}",
        read_lines(g, false),
        g = g.name,
    )
}

/// The host side of guests made anew (by `reset`), as `$` lines under what each part makes.
pub fn remade_lines(plan: &Plan, guests: &[String]) -> String {
    let mut o = String::new();
    for g in guests {
        let _ = writeln!(o, "{g} was made anew; on the host that is (by hand):");
        for p in crate::host_side::host_side(plan)
            .iter()
            .filter(|p| p.guest.as_deref() == Some(g.as_str()))
        {
            let _ = writeln!(o, "  # {} ({})", p.what, p.by.describe());
            for c in &p.commands {
                let _ = writeln!(o, "  $ {c}");
            }
        }
    }
    o
}

/// What `vxlab reset` ran besides its repairs: the reads it decided them by, the checks'
/// reads and pings afterwards, and the reads around the forgetting, as `$` lines.
pub fn reset_reads(plan: &Plan, guest: Option<&str>) -> String {
    let Some(g) = guest.and_then(|n| plan.guest(n)).or(plan.guests.first()) else {
        return String::new();
    };
    let whom = match guest {
        Some(name) => name.to_string(),
        None => "each guest".to_string(),
    };
    format!(
        "to decide what to repair, vxlab read {whom}; in {} it ran:\n{}\
         after the repairs it checked the lab: every guest read again, with what tells its \
         tools apart:\n{}and every guest pinged its peers{}:\n{}\
         then it read {whom} again (the same reads), ran the forgetting commands above, and \
         read {whom} once more for the tables above\n",
        g.name,
        read_lines(g, false),
        read_lines(g, true),
        ping_how(plan),
        pings_lines(plan)
    )
}

/// The checks stage of `vxlab walk`: the pings each guest sends, as commands.
pub fn walk_checks(plan: &Plan) -> String {
    format!(
        "\n== 5. the checks\n   each guest pings its peers{}, then vxlab reads every guest \
         and compares it with the plan\n{}",
        ping_how(plan),
        pings_lines(plan)
    )
}

/// How the checks' pings are sent, where it is not as the command says.
fn ping_how(plan: &Plan) -> &'static str {
    match plan.driver {
        crate::lab::DriverKind::Netns => {
            " (in a namespace, from a raw socket: the same echo requests, without a process each)"
        }
        crate::lab::DriverKind::Libvirt => "",
    }
}

/// The checks' pings, guest by guest, as `$` lines.
fn pings_lines(plan: &Plan) -> String {
    let mut o = String::new();
    for g in &plan.guests {
        let mine: Vec<_> = plan.pings.iter().filter(|p| p.from == g.name).collect();
        if mine.is_empty() {
            continue;
        }
        let _ = writeln!(o, "{}:", g.name);
        for p in mine {
            let must_fail = if p.expect == crate::lab::Expect::Fail {
                "   # must fail"
            } else {
                ""
            };
            let _ = writeln!(o, "  $ {}{must_fail}", p.command);
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorded;

    #[test]
    fn devices_a_student_made_are_listed_and_said_to_be_outside_the_lab() {
        // Recorded with a veth pair side0/side1 made in vm-a.
        let r = recorded("seed-foreign-routes-vm-a");
        let g = r.plan.guest(&r.guest).unwrap();
        let t = links(g, &r.state);
        let names: Vec<&str> = t.rows.iter().map(|r| r.cells[0].as_str()).collect();
        assert_eq!(names, ["eth0", "vxlan0", "side0", "side1"]);
        assert!(t.rows[2]
            .meaning
            .starts_with("not in the lab: a device made in the guest"));
        // A healthy guest lists only the lab's devices.
        let r = recorded("seed-healthy-vm-a");
        let g = r.plan.guest(&r.guest).unwrap();
        assert_eq!(links(g, &r.state).rows.len(), 2);
    }
}
