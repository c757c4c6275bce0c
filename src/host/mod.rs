//! Side effects on the host, behind one trait: [`Host`] is what the engine may do to this
//! machine (links, routes, kernel settings, captures). [`LocalHost`] does it for real; tests
//! give the engine a recording fake, so an engine test touches nothing on the host.

pub mod capture;
pub mod dirwatch;
pub mod files;
pub mod firewall;
pub mod icmp;
pub mod inventory;
pub mod lock;
pub mod neighbours;
pub mod netlink;
pub mod netns;
pub mod process;
pub mod random;
pub mod rcu;
pub mod spawn;
pub mod sysctl;

use std::io;
use std::time::Duration;

use ipnet::IpNet;

use crate::packet::Frame;

pub use inventory::Presence;
pub use lock::HostLockError;
pub use neighbours::{Change, ClaimError, NeighbourNeeds};
pub use netlink::NetlinkError;

use crate::state::Resource;
use neighbours::{NeighbourClaims, ProcSys};

/// A route of the host's main table, as far as the engine cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoute {
    /// Destination prefix.
    pub dst: IpNet,
    /// Outgoing device.
    pub dev: Option<String>,
}

/// Frames seen on a host link.
pub trait Frames: Send {
    /// The next frame, or `None` when none came within the poll time.
    fn next_frame(&mut self) -> io::Result<Option<Frame>>;
}

/// What the engine does on the host.
pub trait Host: Send + Sync {
    /// Creates (or reuses) bridge `name` with its address, up.
    fn ensure_bridge(&self, name: &str, address: IpNet) -> Result<(), NetlinkError>;
    /// Deletes a link; false when it was not there.
    fn delete_link(&self, name: &str) -> Result<bool, NetlinkError>;
    /// Deletes several links at once; returns how many there were.
    fn delete_links(&self, names: &[String]) -> Result<usize, NetlinkError>;
    /// The host end of a namespace guest's underlay link, as the host shows it, with the
    /// state of the lab's bridge `bridge`; `None` where there is none or the host cannot tell.
    fn host_end(&self, _link: &str, _bridge: &str) -> Option<crate::observe::HostEnd> {
        None
    }
    /// Bridge `name` of this host: up, down or missing.
    fn bridge_state(&self, _name: &str) -> crate::observe::BridgeState {
        crate::observe::BridgeState::Up
    }
    /// Puts host link `link` back on `bridge`, up.
    fn plug(&self, link: &str, bridge: &str) -> Result<(), NetlinkError>;
    /// Names the owner of link `name` in its alias (`ip link show` prints it).
    fn set_alias(&self, name: &str, alias: &str) -> Result<(), NetlinkError>;
    /// Whether a resource of the host's kinds is there, and whose it is.
    fn probe(&self, resource: &Resource) -> Presence;
    /// The host's routes of one address family (prefix routes; the default route too).
    fn routes(&self, ipv6: bool) -> Vec<HostRoute>;
    /// Holds every other vxlab on this host off while one checks that a bridge, a subnet or
    /// a name is free and takes it; released when the guard is dropped.
    fn exclusive(&self) -> Result<Box<dyn Send>, HostLockError>;
    /// Records that lab `id` needs `needs` neighbour entries and raises the neighbour tables
    /// as far as every lab's needs require; returns what changed.
    fn claim_neighbours(&self, id: &str, needs: NeighbourNeeds) -> Result<Vec<Change>, ClaimError>;
    /// Drops lab `id`'s claim, lowering or restoring what no lab needs; returns what changed.
    fn release_neighbours(&self, id: &str) -> Result<Vec<Change>, ClaimError>;
    /// Fences lab `lab`'s bridge off from the host (see [`firewall`]), putting back what is
    /// missing; returns how many rules it added (0: the fence was whole, and only read).
    fn fence(&self, bridge: &str, lab: &str) -> io::Result<usize>;
    /// Takes that fence down; returns how many rules it removed.
    fn unfence(&self, bridge: &str, lab: &str) -> io::Result<usize>;
    /// How much of that fence is in place; only reads.
    fn fence_seen(&self, bridge: &str, lab: &str) -> io::Result<firewall::FenceSeen>;
    /// Writes a kernel setting (to restore one recorded by an older vxlab).
    fn write_sysctl(&self, key: &str, value: &str) -> io::Result<()>;
    /// Starts capturing every frame on host link `link`, reads waiting at most `poll`.
    fn capture(&self, link: &str, poll: Duration) -> io::Result<Box<dyn Frames>>;
    /// What the lab's bridge is recorded as: a link of this machine; on another host, what
    /// that host makes it from (see `driver::libvirt::remote::host`).
    fn bridge_resource(&self, bridge: &str) -> Resource {
        Resource::Bridge {
            name: bridge.to_string(),
        }
    }
}

/// The prefix routes (and the default route) in `ip -j route show` output.
pub fn parse_routes(json: &str, ipv6: bool) -> Vec<HostRoute> {
    #[derive(serde::Deserialize)]
    struct Route {
        dst: String,
        dev: Option<String>,
    }
    let routes: Vec<Route> = serde_json::from_str(json).unwrap_or_default();
    routes
        .into_iter()
        .filter_map(|r| {
            let dst = if r.dst == "default" {
                if ipv6 { "::/0" } else { "0.0.0.0/0" }.parse().ok()?
            } else {
                r.dst.parse().ok()?
            };
            Some(HostRoute { dst, dev: r.dev })
        })
        .collect()
}

/// The subnet of every address in `ip -j addr show` output, as a route via its link.
pub fn parse_address_prefixes(json: &str) -> Vec<HostRoute> {
    let by_link = crate::observe::parse_addresses(json).unwrap_or_default();
    by_link
        .into_iter()
        .flat_map(|(dev, nets)| {
            nets.into_iter().map(move |n| HostRoute {
                dst: n.trunc(),
                dev: Some(dev.clone()),
            })
        })
        .collect()
}

/// This machine.
pub struct LocalHost {
    netlink: std::sync::Arc<netlink::Netlink>,
}

impl LocalHost {
    /// The host, reached through `netlink` (which the namespace driver shares).
    pub fn new(netlink: std::sync::Arc<netlink::Netlink>) -> Self {
        LocalHost { netlink }
    }
}

impl Frames for capture::Capture {
    fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        self.next()
    }
}

impl Host for LocalHost {
    fn ensure_bridge(&self, name: &str, address: IpNet) -> Result<(), NetlinkError> {
        self.netlink.ensure_bridge(name, address)
    }
    fn delete_link(&self, name: &str) -> Result<bool, NetlinkError> {
        self.netlink.delete_link(name)
    }
    /// With grace periods expedited (see [`rcu`]): each vxlan device behind a host link
    /// otherwise costs one RCU grace period.
    fn delete_links(&self, names: &[String]) -> Result<usize, NetlinkError> {
        if names.is_empty() {
            return Ok(0);
        }
        rcu::Expedite::default().during(|| self.netlink.delete_links(names))
    }
    fn set_alias(&self, name: &str, alias: &str) -> Result<(), NetlinkError> {
        self.netlink.set_alias(name, alias)
    }
    fn host_end(&self, link: &str, bridge: &str) -> Option<crate::observe::HostEnd> {
        inventory::host_end(link, bridge)
    }
    fn bridge_state(&self, name: &str) -> crate::observe::BridgeState {
        inventory::bridge_state(name)
    }
    fn plug(&self, link: &str, bridge: &str) -> Result<(), NetlinkError> {
        self.netlink.plug(link, bridge)
    }
    fn probe(&self, resource: &Resource) -> Presence {
        inventory::probe(resource)
    }
    fn exclusive(&self) -> Result<Box<dyn Send>, HostLockError> {
        Ok(Box::new(lock::HostLock::take()?))
    }
    fn claim_neighbours(&self, id: &str, needs: NeighbourNeeds) -> Result<Vec<Change>, ClaimError> {
        NeighbourClaims::host().claim(id, needs, &ProcSys)
    }
    fn release_neighbours(&self, id: &str) -> Result<Vec<Change>, ClaimError> {
        NeighbourClaims::host().release(id, &ProcSys)
    }
    fn fence(&self, bridge: &str, lab: &str) -> io::Result<usize> {
        firewall::ensure(
            &firewall::local,
            &firewall::fence(bridge, lab, firewall::host_has_ipv6()),
        )
    }
    fn unfence(&self, bridge: &str, lab: &str) -> io::Result<usize> {
        firewall::remove(
            &firewall::local,
            &firewall::fence(bridge, lab, firewall::host_has_ipv6()),
        )
    }
    fn fence_seen(&self, bridge: &str, lab: &str) -> io::Result<firewall::FenceSeen> {
        firewall::missing(
            &firewall::local,
            &firewall::fence(bridge, lab, firewall::host_has_ipv6()),
        )
    }
    fn routes(&self, ipv6: bool) -> Vec<HostRoute> {
        let family = if ipv6 { "-6" } else { "-4" };
        let argv = ["ip", "-j", family, "route", "show"].map(String::from);
        let mut routes = match process::run(&argv, None) {
            Ok(out) => parse_routes(&out.stdout, ipv6),
            Err(_) => Vec::new(),
        };
        // A link that is down has no prefix route, but its addresses still claim the subnet
        // (another lab's bridge, set down by hand, comes up again).
        let argv = ["ip", "-j", family, "addr", "show"].map(String::from);
        if let Ok(out) = process::run(&argv, None) {
            routes.extend(parse_address_prefixes(&out.stdout));
        }
        routes
    }
    fn write_sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        sysctl::write(key, value)
    }
    fn capture(&self, link: &str, poll: Duration) -> io::Result<Box<dyn Frames>> {
        Ok(Box::new(capture::Capture::open(link, poll)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_address_claims_its_subnet_down_links_included() {
        let json = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP"],"addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
            {"ifindex":7,"ifname":"vxbr-x","flags":["BROADCAST"],"operstate":"DOWN","addr_info":[{"family":"inet","local":"192.168.98.1","prefixlen":24}]},
            {"ifindex":8,"ifname":"bare","addr_info":[]}]"#;
        let got: Vec<(String, Option<String>)> = parse_address_prefixes(json)
            .into_iter()
            .map(|r| (r.dst.to_string(), r.dev))
            .collect();
        assert_eq!(
            got,
            [
                ("127.0.0.0/8".to_string(), Some("lo".to_string())),
                ("192.168.98.0/24".to_string(), Some("vxbr-x".to_string())),
            ]
        );
        assert!(parse_address_prefixes("not json").is_empty());
    }
}
