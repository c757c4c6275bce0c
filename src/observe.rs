//! What the kernel in a guest says, read from the JSON forms of `ip` and `bridge` into typed
//! values. Text is read only from an `ip` that has no `-j` (see [`text`]).

mod text;

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::lab::Mac;

/// One route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    /// The route's type when not a plain unicast one (`blackhole`, `unreachable`, ...); `-d`
    /// names `unicast` too, which is read as none.
    pub kind: Option<String>,
    /// Destination: a prefix or `default`.
    pub dst: String,
    /// Next hop, if any.
    pub gateway: Option<IpAddr>,
    /// Outgoing device.
    pub dev: Option<String>,
    /// Who added it (`kernel` for a connected route).
    pub protocol: Option<String>,
    /// Preferred source address.
    pub prefsrc: Option<IpAddr>,
    /// Read from the IPv6 table (`ip -6 route`): what a `default` with no gateway is.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ipv6: bool,
}

/// The route types `ip route` names before a destination; what `ip route del` is given back.
pub const ROUTE_TYPES: [&str; 8] = [
    "unicast",
    "local",
    "broadcast",
    "multicast",
    "throw",
    "unreachable",
    "prohibit",
    "blackhole",
];

impl Route {
    /// The destination as a prefix: a bare address is a host route; `default` is none.
    pub fn prefix(&self) -> Option<IpNet> {
        self.dst
            .parse()
            .ok()
            .or_else(|| self.dst.parse::<IpAddr>().ok().map(IpNet::from))
    }
}

#[derive(Deserialize)]
struct JRoute {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    dst: String,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    dev: Option<String>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    prefsrc: Option<IpAddr>,
}

/// Parses `ip -j route show`, or its text form when `json` is false.
pub fn read_routes(json: bool, out: &str) -> Result<Vec<Route>, ParseError> {
    if !json {
        return Ok(text::routes(out));
    }
    let raw: Vec<JRoute> = parse("ip -j route show", out)?;
    Ok(raw
        .into_iter()
        .map(|r| Route {
            kind: r.kind.filter(|k| k != "unicast"),
            dst: r.dst,
            gateway: r.gateway,
            dev: r.dev,
            protocol: r.protocol,
            prefsrc: r.prefsrc,
            ipv6: false,
        })
        .collect())
}

/// One neighbour entry (ARP or ND) on a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Neighbour {
    /// The neighbour's address.
    pub dst: IpAddr,
    /// Its MAC, when resolved.
    pub lladdr: Option<Mac>,
    /// Set by hand (`permanent`), not learned.
    pub permanent: bool,
}

#[derive(Deserialize)]
struct JNeigh {
    dst: IpAddr,
    #[serde(default)]
    lladdr: Option<String>,
    #[serde(default)]
    state: Vec<String>,
}

/// Parses `ip -j neigh show`, or its text form when `json` is false.
pub fn read_neighbours(json: bool, out: &str) -> Result<Vec<Neighbour>, ParseError> {
    if !json {
        return Ok(text::neighbours(out));
    }
    let raw: Vec<JNeigh> = parse("ip -j neigh show", out)?;
    Ok(raw
        .into_iter()
        .map(|n| Neighbour {
            dst: n.dst,
            lladdr: n.lladdr.and_then(|m| m.parse().ok()),
            permanent: n.state.iter().any(|s| s == "PERMANENT"),
        })
        .collect())
}

/// [`parse_links`], or the text fallback when `json` is false.
pub fn read_links(json: bool, out: &str) -> Result<Vec<Link>, ParseError> {
    if json {
        parse_links(out)
    } else {
        Ok(text::links(out))
    }
}

/// [`parse_addresses`], or the text fallback.
pub fn read_addresses(json: bool, out: &str) -> Result<BTreeMap<String, Vec<IpNet>>, ParseError> {
    if json {
        parse_addresses(out)
    } else {
        Ok(text::addresses(out))
    }
}

/// [`parse_groups`], or the text fallback.
pub fn read_groups(json: bool, out: &str) -> Result<Vec<GroupMembership>, ParseError> {
    if json {
        parse_groups(out)
    } else {
        Ok(text::groups(out))
    }
}

/// [`parse_fdb`], or the text fallback.
pub fn read_fdb(json: bool, out: &str) -> Result<Vec<FdbEntry>, ParseError> {
    if json {
        parse_fdb(out)
    } else {
        Ok(text::fdb(out))
    }
}

/// A network device as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Link {
    /// Device name.
    pub name: String,
    /// MAC address, when the device has one.
    pub mac: Option<Mac>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// Resolves neighbours (ARP/ND): no `NOARP` flag.
    pub arp: bool,
    /// The vxlan parameters, when the device is a vxlan.
    pub vxlan: Option<VxlanParams>,
    /// How the kernel makes the device's IPv6 link-local address (`eui64`, `none`, ...), when
    /// `ip` says.
    pub addrgenmode: Option<String>,
    /// The device it is a port of (a bridge), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// Addresses on the device.
    pub addresses: Vec<IpNet>,
}

/// The parameters of a vxlan device (`ip -d link show`'s `info_data`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VxlanParams {
    /// VNI.
    pub vni: u32,
    /// Multicast group, if any.
    pub group: Option<IpAddr>,
    /// Local (source) VTEP address, if the device was made with one.
    pub local: Option<IpAddr>,
    /// Underlay device.
    pub dev: Option<String>,
    /// UDP destination port.
    pub port: u16,
    /// Learning.
    pub learning: bool,
}

/// One multicast group joined on a device (`ip maddr`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupMembership {
    /// Device that joined.
    pub dev: String,
    /// Group address.
    pub group: IpAddr,
}

/// One entry of a vxlan device's forwarding database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FdbEntry {
    /// Inner MAC; all zeros for the flood entry.
    pub mac: Mac,
    /// Remote VTEP the frames go to.
    pub dst: Option<IpAddr>,
    /// Underlay device for a multicast `dst`.
    pub via: Option<String>,
    /// Configured, not learned.
    pub permanent: bool,
}

/// Everything read from one guest.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct GuestState {
    /// Links by name.
    pub links: BTreeMap<String, Link>,
    /// Multicast groups joined, on the devices that were asked about.
    pub groups: Vec<GroupMembership>,
    /// FDB entries by vxlan device.
    pub fdb: BTreeMap<String, Vec<FdbEntry>>,
    /// Neighbours (ARP or ND) by vxlan device.
    pub neighbours: BTreeMap<String, Vec<Neighbour>>,
    /// The routing table (IPv4, and IPv6 where the guest has IPv6 addresses in the lab).
    pub routes: Vec<Route>,
    /// For a namespace guest, the host end of its underlay link, as the host shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_end: Option<HostEnd>,
}

/// How much of the fence around a lab's bridge is in place (`host::firewall`), as `check`
/// reads it on the lab's host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceSeen {
    /// Rules of the fence that are not in place.
    pub missing: usize,
    /// Rules the fence has.
    pub of: usize,
}

/// What the lab's host shows of the lab, beside its guests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSeen {
    /// The fence of the lab's bridge; `None` when it could not be read.
    pub fence: Option<FenceSeen>,
}

/// The host end of a namespace guest's underlay link (a veth on the lab's bridge).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEnd {
    /// Its name on the host.
    pub link: String,
    /// Whether it is up.
    pub up: bool,
    /// The bridge it is on, if any.
    pub bridge: Option<String>,
    /// The lab's bridge as the host shows it.
    #[serde(default)]
    pub lab_bridge: BridgeState,
}

/// A host bridge: up, down, or not there at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BridgeState {
    /// There and up.
    #[default]
    Up,
    /// There, administratively down: nothing crosses it.
    Down,
    /// Not there.
    Missing,
}

/// Output that is not the JSON vxlab expects.
#[derive(Debug, thiserror::Error)]
#[error("unexpected output from `{command}`")]
pub struct ParseError {
    /// Command whose output it was.
    pub command: String,
    /// Why it did not parse.
    #[source]
    pub source: serde_json::Error,
}

fn parse<T: for<'de> Deserialize<'de>>(command: &str, json: &str) -> Result<T, ParseError> {
    // `ip` prints nothing at all for an empty result in some versions.
    let json = if json.trim().is_empty() { "[]" } else { json };
    serde_json::from_str(json).map_err(|source| ParseError {
        command: command.to_string(),
        source,
    })
}

#[derive(Deserialize)]
struct JLink {
    ifname: String,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    mtu: u32,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    linkinfo: Option<JLinkInfo>,
    #[serde(default)]
    inet6_addr_gen_mode: Option<String>,
    #[serde(default)]
    master: Option<String>,
}

#[derive(Deserialize)]
struct JLinkInfo {
    #[serde(default)]
    info_kind: Option<String>,
    #[serde(default)]
    info_data: Option<JVxlan>,
}

#[derive(Deserialize)]
struct JVxlan {
    #[serde(default)]
    id: Option<u32>,
    #[serde(default)]
    group: Option<IpAddr>,
    #[serde(default)]
    group6: Option<IpAddr>,
    #[serde(default)]
    local: Option<IpAddr>,
    #[serde(default)]
    local6: Option<IpAddr>,
    #[serde(default)]
    link: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    learning: Option<bool>,
}

/// Parses `ip -j -d link show`.
pub fn parse_links(json: &str) -> Result<Vec<Link>, ParseError> {
    let raw: Vec<JLink> = parse("ip -j -d link show", json)?;
    Ok(raw
        .into_iter()
        .map(|l| {
            let vxlan = l
                .linkinfo
                .filter(|i| i.info_kind.as_deref() == Some("vxlan"))
                .and_then(|i| i.info_data)
                .and_then(|d| {
                    Some(VxlanParams {
                        vni: d.id?,
                        group: d.group.or(d.group6),
                        local: d.local.or(d.local6),
                        dev: d.link,
                        port: d.port.unwrap_or(8472),
                        learning: d.learning.unwrap_or(true),
                    })
                });
            Link {
                mac: l.address.and_then(|a| a.parse().ok()),
                mtu: l.mtu,
                up: l.flags.iter().any(|f| f == "UP"),
                arp: !l.flags.iter().any(|f| f == "NOARP"),
                name: l.ifname,
                vxlan,
                addrgenmode: l.inet6_addr_gen_mode,
                master: l.master,
                addresses: Vec::new(),
            }
        })
        .collect())
}

#[derive(Deserialize)]
struct JAddrLink {
    ifname: String,
    #[serde(default)]
    addr_info: Vec<JAddr>,
}

#[derive(Deserialize)]
struct JAddr {
    local: Option<IpAddr>,
    prefixlen: Option<u8>,
}

/// Parses `ip -j addr show` into addresses by device.
pub fn parse_addresses(json: &str) -> Result<BTreeMap<String, Vec<IpNet>>, ParseError> {
    let raw: Vec<JAddrLink> = parse("ip -j addr show", json)?;
    Ok(raw
        .into_iter()
        .map(|l| {
            let nets = l
                .addr_info
                .iter()
                .filter_map(|a| IpNet::new(a.local?, a.prefixlen?).ok())
                .collect();
            (l.ifname, nets)
        })
        .collect())
}

#[derive(Deserialize)]
struct JMaddrDev {
    ifname: String,
    #[serde(default)]
    maddr: Vec<JMaddr>,
}

#[derive(Deserialize)]
struct JMaddr {
    #[serde(default)]
    family: Option<String>,
    #[serde(default)]
    address: Option<IpAddr>,
}

/// Parses `ip -j maddr show`: the IP groups joined (link-layer entries are left out).
pub fn parse_groups(json: &str) -> Result<Vec<GroupMembership>, ParseError> {
    let raw: Vec<JMaddrDev> = parse("ip -j maddr show", json)?;
    Ok(raw
        .into_iter()
        .flat_map(|d| {
            let dev = d.ifname;
            d.maddr.into_iter().filter_map(move |m| {
                m.family.as_ref()?;
                Some(GroupMembership {
                    dev: dev.clone(),
                    group: m.address?,
                })
            })
        })
        .collect())
}

#[derive(Deserialize)]
struct JFdb {
    mac: String,
    #[serde(default)]
    dst: Option<IpAddr>,
    #[serde(default, rename = "viaIf")]
    via: Option<String>,
    #[serde(default)]
    state: Option<String>,
    /// Set on the entries of the bridge the device is a port of: not the vxlan's own.
    #[serde(default)]
    master: Option<String>,
}

/// Parses `bridge -j fdb show dev DEV`: the vxlan device's own entries (those of a bridge it
/// was made a port of are the bridge's).
pub fn parse_fdb(json: &str) -> Result<Vec<FdbEntry>, ParseError> {
    let raw: Vec<JFdb> = parse("bridge -j fdb show", json)?;
    Ok(raw
        .into_iter()
        .filter(|e| e.master.is_none())
        .filter_map(|e| {
            Some(FdbEntry {
                mac: e.mac.parse().ok()?,
                dst: e.dst,
                via: e.via,
                permanent: e.state.as_deref() == Some("permanent"),
            })
        })
        .collect())
}

impl GuestState {
    /// Joins links with their addresses.
    pub fn new(mut links: Vec<Link>, addresses: BTreeMap<String, Vec<IpNet>>) -> Self {
        for l in &mut links {
            l.addresses = addresses.get(&l.name).cloned().unwrap_or_default();
        }
        GuestState {
            links: links.into_iter().map(|l| (l.name.clone(), l)).collect(),
            ..GuestState::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;

    #[test]
    fn a_vxlan_device_shows_vni_group_dev_and_port() {
        let links = parse_links(&fixture("link.json")).unwrap();
        let v = links.iter().find(|l| l.name == "vxlan0").unwrap();
        assert_eq!(
            v.vxlan,
            Some(VxlanParams {
                vni: 42,
                group: Some("239.1.1.1".parse().unwrap()),
                local: None,
                dev: Some("eth0".into()),
                port: 4789,
                learning: true,
            })
        );
        assert_eq!(v.mac.unwrap().to_string(), "02:00:00:00:2a:01");
        assert_eq!(v.mtu, 1450);
        assert!(v.up);
        assert!(links
            .iter()
            .find(|l| l.name == "eth0")
            .unwrap()
            .vxlan
            .is_none());
    }

    #[test]
    fn ipv6_groups_and_unicast_devices_parse() {
        let v6 = parse_links(&fixture("link-v6.json")).unwrap();
        assert_eq!(
            v6[0].vxlan.as_ref().unwrap().group,
            Some("ff05::42".parse().unwrap())
        );
        let uni = parse_links(&fixture("link-unicast.json")).unwrap();
        let p = uni[0].vxlan.as_ref().unwrap();
        assert_eq!((p.group, p.learning), (None, false));
    }

    #[test]
    fn the_group_is_joined_on_eth0() {
        let g = parse_groups(&fixture("maddr.json")).unwrap();
        assert!(g.contains(&GroupMembership {
            dev: "eth0".into(),
            group: "239.1.1.1".parse().unwrap()
        }));
        assert!(g.iter().all(|m| m.dev == "eth0"));
        let g6 = parse_groups(&fixture("maddr-v6.json")).unwrap();
        assert!(g6.iter().any(|m| m.group.to_string() == "ff05::42"));
    }

    #[test]
    fn the_fdb_has_the_flood_entry_and_the_learned_peer() {
        let fdb = parse_fdb(&fixture("fdb.json")).unwrap();
        assert_eq!(
            fdb,
            vec![
                FdbEntry {
                    mac: "02:00:00:00:2a:02".parse().unwrap(),
                    dst: Some("192.168.77.3".parse().unwrap()),
                    via: None,
                    permanent: false,
                },
                FdbEntry {
                    mac: Mac([0; 6]),
                    dst: Some("239.1.1.1".parse().unwrap()),
                    via: Some("eth0".into()),
                    permanent: true,
                },
            ]
        );
        let uni = parse_fdb(&fixture("fdb-unicast.json")).unwrap();
        assert_eq!(uni.len(), 2);
        assert!(uni.iter().all(|e| e.mac.is_zero() && e.permanent));
    }

    #[test]
    fn addresses_are_grouped_by_device() {
        let a = parse_addresses(&fixture("addr.json")).unwrap();
        assert_eq!(a["vxlan0"][0], "192.168.42.2/24".parse::<IpNet>().unwrap());
        assert_eq!(a["vxlan0"][1].to_string(), "fe80::ff:fe00:2a01/64");
        assert_eq!(a["eth0"][0].to_string(), "192.168.77.2/24");
    }

    #[test]
    fn neighbours_carry_the_peer_mac() {
        let n = read_neighbours(true, &fixture("neigh.json")).unwrap();
        assert_eq!(n[1].dst.to_string(), "192.168.42.3");
        assert_eq!(n[1].lladdr.unwrap().to_string(), "02:00:00:00:2a:02");
        assert!(!n[1].permanent);
        let t = read_neighbours(
            false,
            "192.168.42.3 lladdr 02:00:00:00:2a:02 PERMANENT\n192.168.42.4  FAILED\n",
        )
        .unwrap();
        assert_eq!(t[0].lladdr, n[1].lladdr);
        assert!(t[0].permanent);
        assert_eq!(t[1].lladdr, None);
    }

    #[test]
    fn empty_output_is_an_empty_list_and_garbage_is_an_error() {
        assert!(parse_fdb("").unwrap().is_empty());
        assert!(parse_links("Device \"x\" does not exist.").is_err());
    }
}
