//! The checker: compares what the guests' kernels report with the plan, as pure data.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use crate::lab::{Expect, Flood};
use crate::observe::GuestState;
use crate::plan::{GuestPlan, PingPlan, Plan, VtepPlan};

/// The outcome of one ping.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PingResult {
    /// The planned ping.
    pub ping: PingPlan,
    /// Whether a reply came back.
    pub replied: bool,
}

impl PingResult {
    /// Whether the outcome is the expected one.
    pub fn as_expected(&self) -> bool {
        self.replied == (self.ping.expect == Expect::Success)
    }
}

/// One thing that does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// Guest where it was seen.
    pub guest: String,
    /// What was checked.
    pub what: String,
    /// What the plan says.
    pub expected: String,
    /// What the guest shows.
    pub seen: String,
}

/// All checks of a lab.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// Checks that held.
    pub passed: usize,
    /// Checks that did not.
    pub failures: Vec<Failure>,
}

impl Verdict {
    /// True when every check held.
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

struct Tally {
    passed: usize,
    failures: Vec<Failure>,
}

impl Tally {
    fn check(
        &mut self,
        holds: bool,
        guest: &str,
        what: String,
        expected: String,
        seen: impl FnOnce() -> String,
    ) {
        if holds {
            self.passed += 1;
        } else {
            self.failures.push(Failure {
                guest: guest.to_string(),
                what,
                expected,
                seen: seen(),
            });
        }
    }
}

/// Checks every guest's devices, groups and FDB, and the pings.
pub fn verify(plan: &Plan, seen: &BTreeMap<String, GuestState>, pings: &[PingResult]) -> Verdict {
    let mut t = Tally {
        passed: 0,
        failures: Vec::new(),
    };
    for g in &plan.guests {
        match seen.get(&g.name) {
            Some(state) => guest(&mut t, g, state, pings),
            None => t.check(
                false,
                &g.name,
                "guest reachable".into(),
                "running".into(),
                || "not reachable".into(),
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
        let word = |ok: bool| if ok { "reply" } else { "no reply" };
        t.check(
            p.as_expected(),
            &p.ping.from,
            format!("ping {}{target}", p.ping.to),
            word(p.ping.expect == Expect::Success).into(),
            || word(p.replied).into(),
        );
    }
    duplicate_macs(&mut t, plan, seen);
    Verdict {
        passed: t.passed,
        failures: t.failures,
    }
}

fn guest(t: &mut Tally, g: &GuestPlan, state: &GuestState, pings: &[PingResult]) {
    for v in &g.vteps {
        let Some(link) = state.links.get(&v.device) else {
            t.check(
                false,
                &g.name,
                format!("{} exists", v.device),
                format!("vxlan VNI {}", v.vni),
                || "no such device".into(),
            );
            continue;
        };
        let Some(p) = &link.vxlan else {
            t.check(
                false,
                &g.name,
                format!("{} is a vxlan", v.device),
                "vxlan".into(),
                || "another kind of device".into(),
            );
            continue;
        };
        let name = |what: &str| format!("{} {what}", v.device);
        t.check(
            p.vni == v.vni,
            &g.name,
            name("vni"),
            v.vni.to_string(),
            || p.vni.to_string(),
        );
        let group = match v.flood {
            Flood::Group(ip) => Some(ip),
            Flood::HeadEnd => None,
        };
        t.check(p.group == group, &g.name, name("group"), opt(group), || {
            opt(p.group)
        });
        t.check(
            p.dev.as_deref() == Some(v.dev.as_str()),
            &g.name,
            name("dev"),
            v.dev.clone(),
            || opt(p.dev.as_ref()),
        );
        t.check(
            p.port == v.port,
            &g.name,
            name("port"),
            v.port.to_string(),
            || p.port.to_string(),
        );
        t.check(
            p.learning == v.learning,
            &g.name,
            name("learning"),
            v.learning.to_string(),
            || p.learning.to_string(),
        );
        t.check(
            link.mac == Some(v.mac),
            &g.name,
            name("mac"),
            v.mac.to_string(),
            || opt(link.mac),
        );
        t.check(link.up, &g.name, name("up"), "up".into(), || "down".into());
        if let Some(mtu) = v.mtu {
            t.check(
                link.mtu == mtu,
                &g.name,
                name("mtu"),
                mtu.to_string(),
                || link.mtu.to_string(),
            );
        }
        t.check(
            link.addresses.contains(&v.address),
            &g.name,
            name("address"),
            v.address.to_string(),
            || list(&link.addresses),
        );
        if let Some(group) = group {
            let joined: Vec<IpAddr> = state
                .groups
                .iter()
                .filter(|m| m.dev == v.dev)
                .map(|m| m.group)
                .collect();
            t.check(
                joined.contains(&group),
                &g.name,
                format!("{group} joined on {}", v.dev),
                "member".into(),
                || format!("groups on {}: {}", v.dev, list(&joined)),
            );
        }
        fdb(t, g, v, state, pings);
    }
}

fn fdb(t: &mut Tally, g: &GuestPlan, v: &VtepPlan, state: &GuestState, pings: &[PingResult]) {
    let entries = state
        .fdb
        .get(&v.device)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let floods: Vec<IpAddr> = entries
        .iter()
        .filter(|e| e.mac.is_zero())
        .filter_map(|e| e.dst)
        .collect();
    let wanted: Vec<IpAddr> = match v.flood {
        Flood::Group(ip) => vec![ip],
        Flood::HeadEnd => v.peers.iter().map(|p| p.underlay).collect(),
    };
    for dst in wanted {
        t.check(
            floods.contains(&dst),
            &g.name,
            format!("{} flood entry to {dst}", v.device),
            format!("00:00:00:00:00:00 dst {dst}"),
            || format!("flood entries to {}", list(&floods)),
        );
    }
    if v.static_fdb {
        for peer in &v.peers {
            let entry = entries.iter().find(|e| e.mac == peer.mac);
            t.check(
                entry.is_some_and(|e| e.permanent && e.dst == Some(peer.underlay)),
                &g.name,
                format!(
                    "{} static entry for {} ({})",
                    v.device, peer.guest, peer.mac
                ),
                format!("dst {} permanent", peer.underlay),
                || match entry {
                    Some(e) => format!(
                        "dst {}{}",
                        opt(e.dst),
                        if e.permanent {
                            " permanent"
                        } else {
                            " learned"
                        }
                    ),
                    None => "not in the FDB".into(),
                },
            );
        }
    }
    if !v.learning {
        return;
    }
    for peer in &v.peers {
        // A peer is learned once encapsulated frames from it arrived: after a ping either way.
        let talked = pings.iter().any(|r| {
            r.replied
                && ((r.ping.from == g.name && r.ping.to == peer.overlay)
                    || (r.ping.from == peer.guest && r.ping.to == v.address.addr()))
        });
        if !talked {
            continue;
        }
        let learned = entries.iter().find(|e| e.mac == peer.mac);
        t.check(
            learned.and_then(|e| e.dst) == Some(peer.underlay),
            &g.name,
            format!("{} learned {} ({})", v.device, peer.guest, peer.mac),
            format!("dst {}", peer.underlay),
            || match learned {
                Some(e) => format!("dst {}", opt(e.dst)),
                None => "not in the FDB".into(),
            },
        );
    }
}

/// Guests cloned from one image can get the same "persistent" vxlan MAC from systemd; each
/// then drops the other's frames as its own, and the overlay fails while multicast works.
fn duplicate_macs(t: &mut Tally, plan: &Plan, seen: &BTreeMap<String, GuestState>) {
    let mut by_vni: BTreeMap<(u32, String), String> = BTreeMap::new();
    for g in &plan.guests {
        for v in &g.vteps {
            let mac = seen
                .get(&g.name)
                .and_then(|s| s.links.get(&v.device))
                .and_then(|l| l.mac);
            let Some(mac) = mac else { continue };
            if let Some(other) = by_vni.insert((v.vni, mac.to_string()), g.name.clone()) {
                t.check(
                    false,
                    &g.name,
                    format!("{} MAC unique in VNI {}", v.device, v.vni),
                    "a MAC of its own".into(),
                    || format!("{mac}, the same as {other}'s"),
                );
            }
        }
    }
}

fn opt(x: Option<impl ToString>) -> String {
    x.map(|v| v.to_string()).unwrap_or_else(|| "none".into())
}

fn list<T: ToString>(xs: &[T]) -> String {
    if xs.is_empty() {
        "none".into()
    } else {
        xs.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::{FdbEntry, GroupMembership, Link, VxlanParams};
    use std::path::Path;

    fn seed_plan() -> Plan {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("labs/two-netns.yaml"),
        )
        .unwrap();
        crate::plan::plan(&crate::lab::parse(&text, Path::new("two-netns.yaml")).unwrap())
    }

    /// What a healthy seed guest reports after the pings.
    fn healthy(plan: &Plan, name: &str) -> GuestState {
        let g = plan.guest(name).unwrap();
        let v = &g.vteps[0];
        let peer = &v.peers[0];
        let mut s = GuestState::default();
        s.links.insert(
            "vxlan0".into(),
            Link {
                name: "vxlan0".into(),
                mac: Some(v.mac),
                mtu: 1450,
                up: true,
                vxlan: Some(VxlanParams {
                    vni: 42,
                    group: Some("239.1.1.1".parse().unwrap()),
                    dev: Some("eth0".into()),
                    port: 4789,
                    learning: true,
                }),
                addresses: vec![v.address],
            },
        );
        s.groups.push(GroupMembership {
            dev: "eth0".into(),
            group: "239.1.1.1".parse().unwrap(),
        });
        s.fdb.insert(
            "vxlan0".into(),
            vec![
                FdbEntry {
                    mac: crate::lab::Mac([0; 6]),
                    dst: Some("239.1.1.1".parse().unwrap()),
                    via: Some("eth0".into()),
                    permanent: true,
                },
                FdbEntry {
                    mac: peer.mac,
                    dst: Some(peer.underlay),
                    via: None,
                    permanent: false,
                },
            ],
        );
        s
    }

    fn all_replied(plan: &Plan) -> Vec<PingResult> {
        plan.pings
            .iter()
            .map(|p| PingResult {
                ping: p.clone(),
                replied: true,
            })
            .collect()
    }

    fn world(plan: &Plan) -> BTreeMap<String, GuestState> {
        ["vm-a", "vm-b"]
            .iter()
            .map(|n| (n.to_string(), healthy(plan, n)))
            .collect()
    }

    #[test]
    fn a_healthy_seed_lab_passes() {
        let p = seed_plan();
        let v = verify(&p, &world(&p), &all_replied(&p));
        assert_eq!(v.failures, vec![]);
        assert!(v.passed > 20);
    }

    #[test]
    fn vm_a_must_learn_vm_b_with_dst_192_168_10_3() {
        let p = seed_plan();
        let mut w = world(&p);
        w.get_mut("vm-a").unwrap().fdb.get_mut("vxlan0").unwrap()[1].dst =
            Some("192.168.10.9".parse().unwrap());
        let v = verify(&p, &w, &all_replied(&p));
        assert_eq!(v.failures.len(), 1);
        assert_eq!(v.failures[0].guest, "vm-a");
        assert_eq!(v.failures[0].expected, "dst 192.168.10.3");
        assert_eq!(v.failures[0].seen, "dst 192.168.10.9");
    }

    #[test]
    fn a_missing_group_and_a_deleted_device_are_named() {
        let p = seed_plan();
        let mut w = world(&p);
        w.get_mut("vm-a").unwrap().groups.clear();
        w.get_mut("vm-b").unwrap().links.clear();
        let v = verify(&p, &w, &all_replied(&p));
        assert!(v
            .failures
            .iter()
            .any(|f| f.guest == "vm-a" && f.what == "239.1.1.1 joined on eth0"));
        assert!(v
            .failures
            .iter()
            .any(|f| f.guest == "vm-b" && f.what == "vxlan0 exists"));
    }

    #[test]
    fn cloned_guests_with_one_mac_are_flagged_by_name() {
        let p = seed_plan();
        let mut w = world(&p);
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
        let p = seed_plan();
        let mut pings = all_replied(&p);
        pings[0].replied = false;
        let v = verify(&p, &world(&p), &pings);
        assert!(v
            .failures
            .iter()
            .any(|f| f.what.starts_with("ping 192.168.42.3") && f.seen == "no reply"));
        pings[0].ping.expect = Expect::Fail;
        let v = verify(&p, &world(&p), &pings);
        assert!(!v.failures.iter().any(|f| f.what.starts_with("ping")));
    }

    #[test]
    fn an_unreachable_guest_is_a_failure() {
        let p = seed_plan();
        let mut w = world(&p);
        w.remove("vm-b");
        assert!(verify(&p, &w, &all_replied(&p))
            .failures
            .iter()
            .any(|f| f.guest == "vm-b" && f.seen == "not reachable"));
    }
}
