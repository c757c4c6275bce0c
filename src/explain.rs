//! What each row a student reads means: FDB entries and multicast groups, written once and used
//! by the report, the `show` tables, `walk` and the class pages alike.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::lab::{Flood, Mac};
use crate::observe::{FdbEntry, GroupMembership};
use crate::plan::{GuestPlan, Plan, VtepPlan};

/// The guests of the plan by their vxlan MACs.
pub fn owners(plan: &Plan) -> BTreeMap<Mac, String> {
    plan.guests
        .iter()
        .flat_map(|g| g.vteps.iter().map(move |v| (v.mac, g.name.clone())))
        .collect()
}

/// What one FDB entry of vxlan device `v` means, in one line.
pub fn fdb_entry(v: &VtepPlan, e: &FdbEntry, owners: &BTreeMap<Mac, String>) -> String {
    let at = e.dst.map_or_else(|| "?".to_string(), |d| d.to_string());
    if e.mac.is_zero() {
        // What a student sees flooded first: an IPv6 overlay resolves addresses by multicast.
        let first = if v.address.addr().is_ipv6() {
            "unknown and multicast frames (neighbour solicitations)"
        } else {
            "unknown and broadcast frames (ARP)"
        };
        return match e.dst {
            Some(d) if d.is_multicast() => format!("flood: {first} go to the group {d}"),
            Some(d) => format!(
                "flood: a copy of each unknown or broadcast frame goes to VTEP {d} \
                 (head-end replication)"
            ),
            None => "flood entry".into(),
        };
    }
    match (owners.get(&e.mac), e.permanent) {
        (Some(g), true) => format!("static: frames to {g} go to VTEP {at}, written by vxlab"),
        (None, true) => format!("static: frames to {} go to VTEP {at}, set by hand", e.mac),
        (Some(g), false) => {
            format!("learned: {g} is behind VTEP {at} (a frame from it came from there)")
        }
        (None, false) => format!(
            "learned: {} (not a MAC of this lab) is behind VTEP {at}",
            e.mac
        ),
    }
}

/// Whether a VTEP's group is joined on its underlay device `dev`, in a line: `joined` are
/// the groups the kernel lists there. A device that is down receives nothing, whatever the
/// kernel still lists.
pub fn membership(joined: &[String], dev: &str, dev_down: bool) -> String {
    if dev_down {
        format!(
            "group NOT joined: {dev} is down, nothing sent to the group arrives (the kernel may \
             still list it on a down device)"
        )
    } else if joined.is_empty() {
        "group NOT joined".into()
    } else {
        format!("{} joined on {dev}", joined.join(", "))
    }
}

/// Why a guest's underlay device is in multicast group `m`.
pub fn group(g: &GuestPlan, m: &GroupMembership) -> String {
    if let Some(v) = g
        .vteps
        .iter()
        .find(|v| v.flood == Flood::Group(m.group) && v.dev == m.dev)
    {
        return format!(
            "joined because {} (VNI {}) floods to it: the kernel joined when {} came up, and \
             the switch now sends the group's packets here",
            v.device, v.vni, v.device
        );
    }
    match m.group {
        IpAddr::V4(a) if a.octets() == [224, 0, 0, 1] => {
            "all-hosts group: every IPv4 multicast interface is in it".into()
        }
        IpAddr::V6(a) if a.segments()[0] == 0xff02 && a.segments()[5] == 1 => {
            "solicited-node group: IPv6 neighbour discovery for this interface's addresses".into()
        }
        IpAddr::V6(a) if a == std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1) => {
            "all-nodes group (link scope): every IPv6 interface is in it".into()
        }
        IpAddr::V6(a) if a == std::net::Ipv6Addr::new(0xff01, 0, 0, 0, 0, 0, 0, 1) => {
            "all-nodes group of interface-local scope: the interface's own, never on the wire"
                .into()
        }
        IpAddr::V6(a) if a == std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2) => {
            "all-routers group: routers join it; this guest routes".into()
        }
        _ => "joined by something other than the lab's vxlan devices".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Plan {
        crate::plan::plan(
            &crate::lab::load(std::path::Path::new(&format!(
                "{}/labs/two-vm.yaml",
                env!("CARGO_MANIFEST_DIR")
            )))
            .unwrap(),
        )
    }

    #[test]
    fn fdb_rows_say_flood_learned_and_static() {
        let plan = seed();
        let o = owners(&plan);
        let b = plan.guests[1].vteps[0].mac;
        let v = &plan.guests[0].vteps[0];
        let flood = FdbEntry {
            mac: Mac([0; 6]),
            dst: Some("239.1.1.1".parse().unwrap()),
            via: Some("eth0".into()),
            permanent: true,
        };
        assert_eq!(
            fdb_entry(v, &flood, &o),
            "flood: unknown and broadcast frames (ARP) go to the group 239.1.1.1"
        );
        let mut learned = FdbEntry {
            mac: b,
            dst: Some("192.168.10.3".parse().unwrap()),
            via: None,
            permanent: false,
        };
        assert_eq!(
            fdb_entry(v, &learned, &o),
            "learned: vm-b is behind VTEP 192.168.10.3 (a frame from it came from there)"
        );
        learned.permanent = true;
        assert!(fdb_entry(v, &learned, &o).starts_with("static: frames to vm-b go to VTEP"));
        // On an IPv6 overlay the first frames flooded are neighbour solicitations.
        let mut v6 = v.clone();
        v6.address = "fd00:42::2/64".parse().unwrap();
        assert_eq!(
            fdb_entry(&v6, &flood, &o),
            "flood: unknown and multicast frames (neighbour solicitations) go to the group \
             239.1.1.1"
        );
    }

    #[test]
    fn a_group_on_a_down_device_is_not_joined_whatever_the_kernel_lists() {
        let joined = vec!["239.1.1.1".to_string()];
        assert_eq!(
            membership(&joined, "eth0", false),
            "239.1.1.1 joined on eth0"
        );
        assert!(membership(&joined, "eth0", true).starts_with("group NOT joined: eth0 is down"));
        assert_eq!(membership(&[], "eth0", false), "group NOT joined");
    }

    #[test]
    fn the_seed_group_is_explained_by_its_vxlan_device() {
        let plan = seed();
        let m = GroupMembership {
            dev: "eth0".into(),
            group: "239.1.1.1".parse().unwrap(),
        };
        assert!(group(&plan.guests[0], &m).starts_with("joined because vxlan0 (VNI 42)"));
    }
}
