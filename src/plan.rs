//! The plan: a pure function of the lab giving every name vxlab will create and the exact
//! commands each guest runs. `vxlab plan` prints it and `up` executes it, so what a student
//! reads is what ran.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::converge::{self, UNDERLAY_MTU};
use crate::guest_command::{self as cmd, GuestCommand};
use crate::lab::{BuildMode, Check, DriverKind, Expect, Flood, Lab, Mac};
use crate::observe::{GuestState, Link, Route};

pub use crate::converge::Step;
pub use crate::guest_command::{shell_quote, shell_words};

/// Everything `up` will do, by guest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// Lab name.
    pub lab: String,
    /// Driver the guests run on.
    pub driver: DriverKind,
    /// Host bridge.
    pub bridge: String,
    /// The bridge's address with the underlay prefix length.
    pub gateway: IpNet,
    /// Guests in file order.
    pub guests: Vec<GuestPlan>,
    /// Pings run by the checks, in order.
    pub pings: Vec<PingPlan>,
    /// When iproute2 is built from source (before any vxlan step; see `iproute2:`).
    pub iproute2: BuildMode,
    /// Which copy of the lab this is, in workshop mode.
    pub instance: Option<crate::lab::instance::Instance>,
}

/// One guest's part of the plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuestPlan {
    /// Guest name from the lab.
    pub name: String,
    /// Name of the namespace or libvirt domain.
    pub instance: String,
    /// Host-side link that plugs this guest into the bridge (veth or tap).
    pub host_link: String,
    /// The guest's underlay interface.
    pub interface: String,
    /// MAC of the underlay interface.
    pub underlay_mac: Mac,
    /// Underlay address with the subnet's prefix length.
    pub underlay: IpNet,
    /// The underlay interface's MTU.
    pub underlay_mtu: u32,
    /// The guest's VTEPs.
    pub vteps: Vec<VtepPlan>,
    /// Commands in order: what brings a guest that has nothing yet to the plan.
    pub steps: Vec<Step>,
}

/// One vxlan device in one guest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VtepPlan {
    /// Device name.
    pub device: String,
    /// VNI.
    pub vni: u32,
    /// Flooding.
    pub flood: Flood,
    /// Underlay device.
    pub dev: String,
    /// UDP port.
    pub port: u16,
    /// Learning on or off.
    pub learning: bool,
    /// Whether every peer's MAC is written into the FDB with its VTEP.
    pub static_fdb: bool,
    /// MTU, when the lab sets one.
    pub mtu: Option<u32>,
    /// The device's MAC.
    pub mac: Mac,
    /// Overlay address.
    pub address: IpNet,
    /// The other members of the same vxlan.
    pub peers: Vec<Peer>,
}

/// Another VTEP of the same vxlan, as seen from one guest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Peer {
    /// Guest name.
    pub guest: String,
    /// Its vxlan device's MAC.
    pub mac: Mac,
    /// Its underlay address: the `dst` its FDB entry must carry.
    pub underlay: IpAddr,
    /// Its overlay address.
    pub overlay: IpAddr,
}

/// One ping of the checks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PingPlan {
    /// Sending guest.
    pub from: String,
    /// Address pinged.
    pub to: IpAddr,
    /// The guest that owns `to` in the lab, if any.
    pub to_guest: Option<String>,
    /// The vxlan whose subnet `to` is in, if any.
    pub vxlan: Option<String>,
    /// Expected outcome.
    pub expect: Expect,
    /// Whether it crosses the underlay or the overlay.
    pub over: Network,
    /// The command, as run in `from`.
    pub command: GuestCommand,
}

/// The network a ping crosses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The underlay, VTEP to VTEP: asked for only where an overlay ping failed, to tell a
    /// broken underlay from a broken overlay.
    Underlay,
    /// The overlay, through the vxlan devices.
    Overlay,
}

impl PingPlan {
    /// How many echo requests a check may send: an expected reply gets two more tries, since
    /// the first frame to a fresh VTEP can be lost while its neighbour entry resolves.
    pub fn tries(&self) -> u32 {
        match self.expect {
            Expect::Success => 3,
            Expect::Fail => 1,
        }
    }
}

/// Namespace or domain name of a guest: `vxlab-<lab>.<guest>`. Lab and guest names are made
/// of `[a-z0-9-]`, so the last `.` tells them apart: lab `n` guest `x-y` (`vxlab-n.x-y`) and lab
/// `n-x` guest `y` (`vxlab-n-x.y`) no longer share a name.
pub fn instance_name(lab: &str, guest: &str) -> String {
    format!("vxlab-{lab}.{guest}")
}

/// The lab and guest an [`instance_name`] belongs to, when it is one.
pub fn instance_owner(name: &str) -> Option<(&str, &str)> {
    let (lab, guest) = name.strip_prefix("vxlab-")?.rsplit_once('.')?;
    let ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    (ok(lab) && ok(guest)).then_some((lab, guest))
}

/// A short stable hash of a lab name, for names that must fit 15 bytes.
fn lab_hash(lab: &str) -> u32 {
    // FNV-1a: stable across Rust versions, unlike the std hasher.
    lab.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The underlay NIC's MAC of guest number `index`: QEMU's `52:54:00` prefix, the lab's byte,
/// then the guest's number.
pub fn underlay_mac(lab: &str, index: usize) -> Mac {
    let n = (index + 1) as u16;
    Mac([
        0x52,
        0x54,
        0x00,
        (lab_hash(lab) & 0xff) as u8,
        (n >> 8) as u8,
        n as u8,
    ])
}

/// What every host-side link of lab `lab` starts with: `vx` and 40 bits of the SHA-256 of the
/// lab name in base 32 (10 bytes).
///
/// No function of a 24-character lab name can be unique in the 15 bytes Linux allows a link
/// name, so this only makes a clash unlikely (one pair in about 10^12; the 24-bit hash it
/// replaces gave `rb-cocyv` and `rb-cpbha` the same links). What makes a clash harmless is
/// that `up` never adopts a link its own state did not record, and the link's alias names
/// its owner (see `host::inventory`).
pub fn host_link_prefix(lab: &str) -> String {
    use sha2::{Digest, Sha256};
    const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let digest = Sha256::digest(lab.as_bytes());
    let bits = digest[..5]
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    let code: String = (0..8)
        .rev()
        .map(|i| BASE32[((bits >> (5 * i)) & 31) as usize] as char)
        .collect();
    format!("vx{code}")
}

/// Host-side link name of guest number `index` (0-based): `<prefix>-<index>`, at most 14 bytes.
pub fn host_link_name(lab: &str, index: usize) -> String {
    format!("{}-{index}", host_link_prefix(lab))
}

/// The MAC vxlab gives guest number `index` (0-based) on VNI `vni`:
/// `02:LL:VV:VV:VV:GG`: locally administered, LL from the lab name, the VNI in the middle
/// (42 reads as `00:00:2a`), and the guest's number (1-based) last, so a student can read an
/// FDB entry as "vm-b on VNI 42", and cloned guests never share one.
pub fn derived_mac(lab: &str, vni: u32, index: usize) -> Mac {
    let v = vni.to_be_bytes();
    Mac([
        0x02,
        (lab_hash(lab) & 0xff) as u8,
        v[1],
        v[2],
        v[3],
        (index + 1) as u8,
    ])
}

/// The command that pings `to` once, waiting at most `wait` seconds for the reply.
pub fn ping_command(to: IpAddr, wait: u32) -> GuestCommand {
    cmd::ping(to, 1, None, wait)
}

/// How long a check's ping waits: a namespace answers in microseconds, while a guest under
/// software emulation that is still finishing its boot can take seconds.
pub fn ping_wait(driver: DriverKind) -> u32 {
    match driver {
        DriverKind::Netns => 1,
        DriverKind::Libvirt => 3,
    }
}

/// Builds the plan for a validated lab.
pub fn plan(lab: &Lab) -> Plan {
    let prefix = lab.underlay.subnet.prefix_len();
    let net = |ip: IpAddr| IpNet::new(ip, prefix).expect("prefix length came from a valid subnet");
    let index_of = |g: &str| lab.guests.iter().position(|x| x.name == g).unwrap_or(0);

    let guests = lab
        .guests
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let vteps: Vec<VtepPlan> = lab
                .vxlans
                .iter()
                .filter_map(|x| {
                    let me = x.members.iter().find(|m| m.guest == g.name)?;
                    let mac_of = |m: &crate::lab::Member| {
                        m.mac
                            .unwrap_or_else(|| derived_mac(&lab.name, x.vni, index_of(&m.guest)))
                    };
                    let peers = x
                        .members
                        .iter()
                        .filter(|m| m.guest != g.name)
                        .map(|m| Peer {
                            guest: m.guest.clone(),
                            mac: mac_of(m),
                            underlay: lab.guest(&m.guest).map(|p| p.address).unwrap_or(g.address),
                            overlay: m.address.addr(),
                        })
                        .collect();
                    Some(VtepPlan {
                        device: x.name.clone(),
                        vni: x.vni,
                        flood: x.flood.clone(),
                        dev: x.dev.clone(),
                        port: x.port,
                        learning: x.learning,
                        static_fdb: x.static_fdb,
                        mtu: x.mtu,
                        mac: mac_of(me),
                        address: me.address,
                        peers,
                    })
                })
                .collect();
            let underlay = net(g.address);
            let mut guest = GuestPlan {
                name: g.name.clone(),
                instance: instance_name(&lab.name, &g.name),
                host_link: host_link_name(&lab.name, i),
                interface: lab.underlay.interface.clone(),
                underlay_mac: underlay_mac(&lab.name, i),
                underlay,
                underlay_mtu: UNDERLAY_MTU,
                vteps,
                steps: Vec::new(),
            };
            guest.steps = converge::converge(&guest, &fresh_state(&guest, lab.driver));
            guest
        })
        .collect();

    Plan {
        lab: lab.name.clone(),
        driver: lab.driver,
        bridge: lab.underlay.bridge.clone(),
        gateway: net(lab.underlay.gateway),
        guests,
        pings: pings(lab),
        iproute2: lab.iproute2.build,
        instance: lab.instance.clone(),
    }
}

/// A guest as the driver hands it over, before vxlab runs anything in it: a namespace has its
/// underlay interface down and without an address; a VM has brought its own up at boot.
pub fn fresh_state(g: &GuestPlan, driver: DriverKind) -> GuestState {
    let booted = driver == DriverKind::Libvirt;
    let link = |name: &str, mtu: u32, addresses: Vec<IpNet>| Link {
        name: name.to_string(),
        mac: None,
        mtu,
        up: booted,
        arp: true,
        vxlan: None,
        addrgenmode: Some("eui64".into()),
        master: None,
        addresses,
    };
    let mut links = vec![link("lo", 65536, Vec::new())];
    if booted {
        links.push(link(&g.interface, g.underlay_mtu, vec![g.underlay]));
    } else {
        links.push(link(&g.interface, g.underlay_mtu, Vec::new()));
    }
    GuestState {
        links: links.into_iter().map(|l| (l.name.clone(), l)).collect(),
        routes: booted
            .then(|| Route {
                kind: None,
                dst: g.underlay.trunc().to_string(),
                gateway: None,
                dev: Some(g.interface.clone()),
                protocol: Some("kernel".into()),
                prefsrc: Some(g.underlay.addr()),
                ipv6: g.underlay.addr().is_ipv6(),
            })
            .into_iter()
            .collect(),
        ..GuestState::default()
    }
}

fn pings(lab: &Lab) -> Vec<PingPlan> {
    // By address: the guest that owns it and its vxlan (the first, as in the file).
    let mut owners: HashMap<IpAddr, (String, String)> = HashMap::new();
    for x in &lab.vxlans {
        for m in &x.members {
            owners
                .entry(m.address.addr())
                .or_insert_with(|| (m.guest.clone(), x.name.clone()));
        }
    }
    let mut out: Vec<PingPlan> = Vec::new();
    let mut seen: HashSet<(String, IpAddr)> = HashSet::new();
    let mut push = |from: &str, to: IpAddr, expect: Expect| {
        if !seen.insert((from.to_string(), to)) {
            return;
        }
        let (to_guest, vxlan) = owners.get(&to).cloned().unzip();
        out.push(PingPlan {
            from: from.to_string(),
            to,
            to_guest,
            vxlan,
            expect,
            over: Network::Overlay,
            command: ping_command(to, ping_wait(lab.driver)),
        });
    };
    // Explicit pairs first, so `ping: all` cannot override an expected failure.
    for c in &lab.checks {
        if let Check::Ping { from, to, expect } = c {
            push(from, *to, *expect);
        }
    }
    if lab.checks.contains(&Check::PingAll) {
        for x in &lab.vxlans {
            for a in &x.members {
                for b in x.members.iter().filter(|b| b.guest != a.guest) {
                    push(&a.guest, b.address.addr(), Expect::Success);
                }
            }
        }
    }
    out
}

impl Plan {
    /// The guest named `name`.
    pub fn guest(&self, name: &str) -> Option<&GuestPlan> {
        self.guests.iter().find(|g| g.name == name)
    }

    /// Neighbour entries the lab needs at once across all guests, by address family
    /// (IPv4, IPv6): one per underlay peer and one per overlay peer in every guest.
    pub fn neighbours_needed(&self) -> (usize, usize) {
        let n = self.guests.len();
        let (mut v4, mut v6) = (0, 0);
        let mut count = |ip: IpAddr, k: usize| {
            if ip.is_ipv4() {
                v4 += k
            } else {
                v6 += k
            }
        };
        count(self.gateway.addr(), n * n);
        for g in &self.guests {
            for v in &g.vteps {
                count(v.address.addr(), v.peers.len());
            }
        }
        (v4, v6)
    }

    /// Renders the plan as a student reads it: the commands per guest.
    pub fn render(&self) -> String {
        let mut out = format!(
            "# lab {} on {}: bridge {} ({})\n",
            self.lab, self.driver, self.bridge, self.gateway
        );
        out.push_str(&format!(
            "# first, in every guest: kernel {}.{} or newer with the vxlan module, and an ip \
             that knows `type vxlan` (iproute2 build: {})\n",
            crate::iproute2::MIN_KERNEL.0,
            crate::iproute2::MIN_KERNEL.1,
            self.iproute2
        ));
        out.push_str(
            "\n# on the host: vxlab's own work, as the commands that do the same by hand\n",
        );
        out.push_str(&crate::host_side::render(&crate::host_side::host_side(
            self,
        )));
        for g in &self.guests {
            out.push_str(&format!(
                "\n# {} (underlay {} on {}), in the guest: `{}`\n",
                g.name,
                g.underlay,
                g.interface,
                crate::host_side::enter(self, g)
            ));
            for s in &g.steps {
                out.push_str(&s.command.to_string());
                out.push('\n');
            }
        }
        if !self.pings.is_empty() {
            out.push_str("\n# checks\n");
            for p in &self.pings {
                let expect = match p.expect {
                    Expect::Success => "",
                    Expect::Fail => "   # must fail",
                };
                out.push_str(&format!("{}: {}{expect}\n", p.from, p.command));
            }
        }
        out
    }
}

impl PingPlan {
    /// The underlay ping that tells whether `from` reaches `peer`'s VTEP at `underlay`.
    pub fn underlay(from: &str, peer: &str, underlay: IpAddr, driver: DriverKind) -> PingPlan {
        PingPlan {
            from: from.to_string(),
            to: underlay,
            to_guest: Some(peer.to_string()),
            vxlan: None,
            expect: Expect::Success,
            over: Network::Underlay,
            command: ping_command(underlay, ping_wait(driver)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn seed() -> Lab {
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("labs/two-vm.yaml"))
                .unwrap();
        crate::lab::parse(&text, Path::new("labs/two-vm.yaml")).unwrap()
    }

    fn commands(plan: &Plan, guest: &str) -> Vec<String> {
        plan.guest(guest)
            .unwrap()
            .steps
            .iter()
            .map(|s| s.command.to_string())
            .collect()
    }

    #[test]
    fn the_seed_lab_runs_the_seed_commands_on_each_vm() {
        let p = plan(&seed());
        assert_eq!(
            commands(&p, "vm-a"),
            [
                "ip link add vxlan0 address 02:19:00:00:2a:01 type vxlan id 42 group 239.1.1.1 dev \
                 eth0 dstport 4789",
                "ip link set dev vxlan0 addrgenmode none",
                "ip link set up vxlan0",
                "ip addr add 192.168.42.2/24 dev vxlan0",
            ]
        );
        assert_eq!(
            commands(&p, "vm-b")[3],
            "ip addr add 192.168.42.3/24 dev vxlan0"
        );
    }

    #[test]
    fn vm_a_expects_vm_b_behind_its_underlay_address() {
        let p = plan(&seed());
        let peer = &p.guest("vm-a").unwrap().vteps[0].peers[0];
        assert_eq!(peer.guest, "vm-b");
        assert_eq!(peer.underlay.to_string(), "192.168.10.3");
        assert_eq!(peer.mac, derived_mac("two-vm", 42, 1));
    }

    #[test]
    fn derived_macs_are_local_unicast_and_name_vni_and_guest() {
        let m = derived_mac("lab", 42, 1);
        assert_eq!(m.0[0], 0x02);
        assert_eq!(&m.0[2..], &[0, 0, 42, 2]);
        assert_ne!(derived_mac("lab", 42, 0), derived_mac("lab", 43, 0));
    }

    #[test]
    fn host_links_fit_the_interface_name_limit() {
        assert!(host_link_name("a-very-long-lab-name-here", 249).len() <= 15);
        assert_eq!(host_link_name("two-netns", 3).len(), 12);
    }

    #[test]
    fn names_of_different_labs_and_guests_never_coincide() {
        // The two pairs that shared a namespace with `vxlab-{lab}-{guest}`.
        assert_ne!(instance_name("n", "x-y"), instance_name("n-x", "y"));
        assert_eq!(
            instance_owner(&instance_name("n-x", "y")),
            Some(("n-x", "y"))
        );
        assert_eq!(
            instance_owner(&instance_name("n", "x-y")),
            Some(("n", "x-y"))
        );
        assert_eq!(instance_owner("vxlab-seed"), None);
        assert_eq!(instance_owner("other.ns"), None);
        // The two labs whose 24-bit hashes gave both `vx5febf0-N`.
        assert_ne!(host_link_prefix("rb-cocyv"), host_link_prefix("rb-cpbha"));
        assert_ne!(host_link_name("rb-cocyv", 0), host_link_name("rb-cpbha", 0));
    }

    #[test]
    fn full_mesh_pings_both_ways() {
        let p = plan(&seed());
        let pairs: Vec<(String, String)> = p
            .pings
            .iter()
            .map(|x| (x.from.clone(), x.to.to_string()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("vm-a".into(), "192.168.42.3".into()),
                ("vm-b".into(), "192.168.42.2".into())
            ]
        );
    }
}
