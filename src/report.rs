//! What a student must see: per guest, the vxlan device as the kernel sees it, the group joined
//! on the underlay, the FDB with each entry explained, and the ping matrix.

use std::fmt::Write;

use serde::Serialize;

use crate::explain;
use crate::iproute2::{Readiness, Tools};
use crate::lab::{Expect, Mac};
use crate::observe::{FdbEntry, GuestState, VxlanParams};
use crate::outcome::{Outcome, Repair};
use crate::plan::{Network, Plan};
use crate::verify::{Diagnosis, Failure, PingResult};

/// The report of `up` and `check`, as printed by `--json`.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    /// Lab name.
    pub lab: &'a str,
    /// Driver.
    pub driver: String,
    /// Per guest, what its kernel reports.
    pub guests: Vec<GuestReport>,
    /// Every ping.
    pub pings: &'a [PingResult],
    /// Checks that held.
    pub passed: usize,
    /// Checks that did not.
    pub failures: &'a [Failure],
    /// The failures grouped cause first.
    pub diagnoses: &'a [Diagnosis],
    /// What `up` or `reset` changed in a lab that was running, and why.
    pub repairs: &'a [Repair],
    /// The guests `reset` removed and made anew.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub made_anew: &'a [String],
    /// Notes for the user.
    pub notes: &'a [String],
}

/// One guest in the report.
#[derive(Debug, Serialize)]
pub struct GuestReport {
    /// Guest name.
    pub name: String,
    /// Underlay address.
    pub underlay: String,
    /// Whether its state could be read.
    pub reachable: bool,
    /// The `ip` and `bridge` vxlab runs in it, and how it got them.
    pub iproute2: Option<Tools>,
    /// Its kernel and `ip`, as `check` found them.
    pub readiness: Option<Readiness>,
    /// Its VTEPs.
    pub vteps: Vec<VtepReport>,
}

/// One vxlan device in the report.
#[derive(Debug, Serialize)]
pub struct VtepReport {
    /// Device name.
    pub device: String,
    /// Parameters as the kernel reports them.
    pub kernel: Option<VxlanParams>,
    /// MAC.
    pub mac: Option<Mac>,
    /// MTU.
    pub mtu: Option<u32>,
    /// Groups joined on the underlay device. A group the kernel still lists on a device that
    /// is down is not joined in any way that counts: nothing of it arrives.
    pub joined: Vec<String>,
    /// The underlay device it sends from is down (its groups, listed or not, receive nothing).
    pub underlay_down: bool,
    /// FDB entries, each with its meaning.
    pub fdb: Vec<FdbRow>,
}

/// One FDB entry and what it means.
#[derive(Debug, Serialize)]
pub struct FdbRow {
    /// The entry.
    #[serde(flatten)]
    pub entry: FdbEntry,
    /// "flood", "learned vm-b", ...
    pub meaning: String,
}

/// Builds the report from an outcome.
pub fn build<'a>(plan: &'a Plan, o: &'a Outcome) -> Report<'a> {
    let owners = explain::owners(plan);
    let guests = plan
        .guests
        .iter()
        .map(|g| {
            let st = o.observed.get(&g.name);
            let empty = GuestState::default();
            let s = st.unwrap_or(&empty);
            GuestReport {
                name: g.name.clone(),
                underlay: g.underlay.to_string(),
                reachable: st.is_some(),
                iproute2: o.tools.get(&g.name).cloned(),
                readiness: o.readiness.get(&g.name).cloned(),
                vteps: g
                    .vteps
                    .iter()
                    .map(|v| {
                        let link = s.links.get(&v.device);
                        let underlay_down = s.links.get(&v.dev).is_some_and(|l| !l.up);
                        VtepReport {
                            device: v.device.clone(),
                            kernel: link.and_then(|l| l.vxlan.clone()),
                            mac: link.and_then(|l| l.mac),
                            mtu: link.map(|l| l.mtu),
                            underlay_down,
                            joined: s
                                .groups
                                .iter()
                                .filter(|m| m.dev == v.dev && !underlay_down)
                                .filter(|m| {
                                    Some(m.group) == link.and_then(|l| l.vxlan.as_ref()?.group)
                                })
                                .map(|m| m.group.to_string())
                                .collect(),
                            fdb: s
                                .fdb
                                .get(&v.device)
                                .into_iter()
                                .flatten()
                                .map(|e| FdbRow {
                                    meaning: explain::fdb_entry(v, e, &owners),
                                    entry: e.clone(),
                                })
                                .collect(),
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    Report {
        lab: &plan.lab,
        driver: plan.driver.to_string(),
        guests,
        pings: &o.pings,
        passed: o.verdict.passed,
        failures: &o.verdict.failures,
        diagnoses: &o.verdict.diagnoses,
        repairs: &o.repairs,
        made_anew: &o.made_anew,
        notes: &o.notes,
    }
}

impl Report<'_> {
    /// The report as tables for people.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "lab {} ({} driver)", self.lab, self.driver);
        for n in self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        // Every command that ran, as `$` lines under the reason they share.
        if !self.repairs.is_empty() {
            let _ = writeln!(out, "what vxlab ran in guests that were running, and why:");
        }
        let mut last: Option<(&str, &str)> = None;
        for r in self.repairs {
            let key = (r.guest.as_str(), r.step.why.as_str());
            if last != Some(key) {
                let _ = writeln!(out, "{}: {}", r.guest, r.step.why);
                last = Some(key);
            }
            let _ = writeln!(out, "  $ {}", r.step.command);
        }
        for g in &self.guests {
            let _ = writeln!(out, "\n{}  underlay {}", g.name, g.underlay);
            if !g.reachable {
                let _ = writeln!(out, "  (not reachable)");
                continue;
            }
            if let Some(r) = &g.readiness {
                let _ = writeln!(out, "  ready: {}", r.summary());
            }
            if let Some(b) = g.iproute2.as_ref().and_then(|t| t.build.as_ref()) {
                let _ = writeln!(
                    out,
                    "  iproute2 built from {} because {}: {} {} at {} in {:.1} s (log {})",
                    b.source,
                    b.reason,
                    if b.reused {
                        "reused the build"
                    } else {
                        "built"
                    },
                    b.hash,
                    b.site,
                    b.seconds,
                    b.log.display()
                );
                if let Some(t) = &g.iproute2 {
                    let _ = writeln!(
                        out,
                        "  vxlab runs {} and {}; type that path to see what vxlab sees",
                        t.ip, t.bridge
                    );
                }
            }
            for v in &g.vteps {
                match &v.kernel {
                    None => {
                        let _ = writeln!(out, "  {}: missing", v.device);
                    }
                    Some(k) => {
                        let group = k
                            .group
                            .map(|g| g.to_string())
                            .unwrap_or_else(|| "none (head-end)".into());
                        let _ = writeln!(
                            out,
                            "  {}  vni {}  group {}  dev {}  port {}  learning {}  mtu {}  mac {}",
                            v.device,
                            k.vni,
                            group,
                            k.dev.as_deref().unwrap_or("-"),
                            k.port,
                            if k.learning { "on" } else { "off" },
                            v.mtu.map(|m| m.to_string()).unwrap_or_default(),
                            v.mac.map(|m| m.to_string()).unwrap_or_default(),
                        );
                        if k.group.is_some() {
                            let _ = writeln!(
                                out,
                                "    ip maddr: {}",
                                crate::explain::membership(
                                    &v.joined,
                                    k.dev.as_deref().unwrap_or("-"),
                                    v.underlay_down
                                )
                            );
                        }
                    }
                }
                let _ = writeln!(out, "    bridge fdb show dev {}:", v.device);
                for r in &v.fdb {
                    let e = &r.entry;
                    let dst = e.dst.map(|d| format!("dst {d}")).unwrap_or_default();
                    let via = e
                        .via
                        .as_ref()
                        .map(|d| format!("via {d}"))
                        .unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "      {}  {:<24} {:<9} {:<10} {}",
                        e.mac,
                        dst,
                        via,
                        if e.permanent { "permanent" } else { "" },
                        r.meaning
                    );
                }
            }
        }
        out.push_str(&self.ping_matrix());
        if self.failures.is_empty() {
            let _ = writeln!(out, "\nall {} checks passed", self.passed);
        } else {
            let _ = writeln!(
                out,
                "\n{} of {} checks failed; the cause first, then what it explains:",
                self.failures.len(),
                self.failures.len() + self.passed
            );
            for d in self.diagnoses {
                let c = &d.cause;
                let _ = writeln!(out, "  {}: {} ({})", c.place(), line(c), c.layer.describe());
                let _ = writeln!(out, "      fix: {}", c.fix);
                for s in &d.symptoms {
                    let _ = writeln!(out, "      explains {}: {}", s.place(), line(s));
                }
            }
        }
        out
    }

    fn ping_matrix(&self) -> String {
        let mut out = String::new();
        let mut vxlans: Vec<&str> = self
            .pings
            .iter()
            .filter_map(|p| p.ping.vxlan.as_deref())
            .collect();
        vxlans.sort();
        vxlans.dedup();
        let cell = |p: &PingResult| match (p.replied, p.ping.expect) {
            _ if p.answered_by_itself => "SELF (its own address)",
            (true, Expect::Success) => "ok",
            (false, Expect::Fail) => "none (expected)",
            (true, Expect::Fail) => "REPLY (expected none)",
            (false, Expect::Success) => "LOST",
        };
        for x in vxlans {
            let ps: Vec<&PingResult> = self
                .pings
                .iter()
                .filter(|p| p.ping.vxlan.as_deref() == Some(x))
                .collect();
            let mut names: Vec<&str> = ps.iter().map(|p| p.ping.from.as_str()).collect();
            names.extend(ps.iter().filter_map(|p| p.ping.to_guest.as_deref()));
            names.sort();
            names.dedup();
            let w = names.iter().map(|n| n.len()).max().unwrap_or(4).max(4) + 2;
            let _ = write!(out, "\nping matrix {x} (row pings column)\n{:w$}", "");
            for n in &names {
                let _ = write!(out, "{n:<w$}");
            }
            out.push('\n');
            for from in &names {
                let _ = write!(out, "{from:<w$}");
                for to in &names {
                    let c = ps
                        .iter()
                        .find(|p| p.ping.from == *from && p.ping.to_guest.as_deref() == Some(*to))
                        .map(|p| cell(p))
                        .unwrap_or("-");
                    let _ = write!(out, "{c:<w$}");
                }
                out.push('\n');
            }
        }
        let others: Vec<&PingResult> = self
            .pings
            .iter()
            .filter(|p| p.ping.over == Network::Overlay)
            .filter(|p| p.ping.expect == Expect::Fail || p.ping.vxlan.is_none())
            .collect();
        if !others.is_empty() {
            out.push_str("\nexplicit checks\n");
            for p in others {
                let _ = writeln!(out, "  {} -> {}: {}", p.ping.from, p.ping.to, cell(p));
            }
        }
        let underlay: Vec<&PingResult> = self
            .pings
            .iter()
            .filter(|p| p.ping.over == Network::Underlay)
            .collect();
        if !underlay.is_empty() {
            out.push_str("\nunderlay pings, where an overlay ping was lost\n");
            for p in underlay {
                let _ = writeln!(out, "  {} -> {}: {}", p.ping.from, p.ping.to, cell(p));
            }
        }
        out
    }
}

/// A failure in one line: what, expected, seen.
pub fn line(f: &Failure) -> String {
    format!("{}: expected {}, seen {}", f.what, f.expected, f.seen)
}
