//! Converge: how a guest's kernel differs from its plan, as pure data. Each [`Finding`] is one
//! thing compared (it holds or not), with the commands that repair it. `up` runs the repairs of
//! the findings that do not hold ([`converge`]), `check` reports them, and the plan's own steps
//! are [`converge`] from a guest that has nothing yet (see [`crate::plan::fresh_state`]), so a
//! repair line, `plan` and `walk` show the same commands.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::guest_command::{self as cmd, GuestCommand, VxlanDevice};
use crate::lab::Flood;
use crate::observe::{GuestState, Link, Route};
use crate::plan::{GuestPlan, VtepPlan};

/// The layers of a guest, bottom up: `check` reports the lowest broken one as the cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// The lab's side of the host: its bridge fenced off from the host.
    Host,
    /// The guest itself: running and answering.
    Guest,
    /// The underlay interface: present, up, its MTU.
    UnderlayLink,
    /// The underlay address and its route.
    UnderlayAddress,
    /// The other VTEPs answer over the underlay.
    UnderlayReach,
    /// The vxlan devices and their settings.
    VxlanDevice,
    /// Where unknown frames go: the group joined, the flood entries.
    Flooding,
    /// The overlay addresses and their routes.
    OverlayAddress,
    /// Neighbours and FDB entries: which MAC is behind which VTEP.
    Forwarding,
    /// Pings across the overlay.
    OverlayPing,
}

impl Layer {
    /// The layer in words.
    pub fn describe(self) -> &'static str {
        match self {
            Layer::Host => "host",
            Layer::Guest => "guest",
            Layer::UnderlayLink => "underlay link",
            Layer::UnderlayAddress => "underlay address",
            Layer::UnderlayReach => "underlay reachability",
            Layer::VxlanDevice => "vxlan device",
            Layer::Flooding => "flooding",
            Layer::OverlayAddress => "overlay address and routes",
            Layer::Forwarding => "forwarding",
            Layer::OverlayPing => "overlay ping",
        }
    }
}

/// What a finding is about, for `--json` readers.
#[derive(Debug, Clone, Copy, PartialEq, Hash, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The firewall rules that fence the lab's bridge off from the host are in place.
    Fence,
    /// The guest runs and answers.
    GuestReachable,
    /// A link vxlab needs exists.
    LinkExists,
    /// A link is up.
    LinkUp,
    /// A namespace guest's host end is up and on the lab's bridge.
    HostEnd,
    /// A link's MTU.
    LinkMtu,
    /// A planned address is on its device.
    Address,
    /// An address the plan does not have.
    ExtraAddress,
    /// The connected route of a planned address.
    Route,
    /// A route into a planned subnet that the plan does not have.
    ExtraRoute,
    /// A vxlan device exists and is a vxlan.
    VxlanExists,
    /// One of a vxlan device's creation settings (VNI, group, dev, port, learning).
    VxlanSetting,
    /// A vxlan device the plan does not have.
    ExtraVxlan,
    /// A vxlan device's MAC.
    Mac,
    /// IPv6 autoconfiguration is off on a vxlan device of an IPv4 overlay.
    Ipv6Autoconf,
    /// The multicast group is joined on the underlay device.
    GroupJoined,
    /// A planned flood entry.
    FloodEntry,
    /// A flood entry the plan does not have.
    ExtraFloodEntry,
    /// A planned static FDB entry.
    StaticEntry,
    /// A static FDB entry the plan does not have.
    ExtraStaticEntry,
    /// A neighbour entry for a peer's overlay address names another MAC.
    Neighbour,
    /// A neighbour set by hand (permanent), which the plan never has.
    ExtraNeighbour,
    /// A peer's underlay address answers.
    UnderlayPing,
    /// A peer's MAC was learned behind its VTEP.
    Learned,
    /// An overlay ping.
    OverlayPing,
    /// Each VTEP of a VNI has a MAC of its own.
    UniqueMac,
    /// A vxlan device is no port of a bridge the plan does not have.
    Port,
    /// A device resolves its neighbours (no `NOARP`).
    Arp,
}

/// One command of a plan or a repair, with what it establishes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// The command.
    pub command: GuestCommand,
    /// The layer it works on.
    pub layer: Layer,
    /// Why it runs, e.g. "flood entry to 239.1.1.1 was missing".
    pub why: String,
}

/// One thing compared between a guest's plan and its kernel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// The layer.
    pub layer: Layer,
    /// What kind of thing.
    pub kind: Kind,
    /// The device it is about.
    pub device: String,
    /// What was compared, as a failure names it: the thing ("vxlan0 flood entry to
    /// 239.1.1.1") or, for a yes-or-no state, the problem ("eth0 is down (underlay)").
    pub what: String,
    /// What the plan says.
    pub expected: String,
    /// What the kernel shows.
    pub seen: String,
    /// Whether it holds.
    pub holds: bool,
    /// The other guest it is about, if any (a static entry for vm-b is about vm-b).
    pub peer: Option<String>,
    /// The commands that make it hold; empty when no command in the guest can.
    pub repair: Vec<Step>,
}

/// The MTU every underlay interface has: what veth and virtio NICs start with.
pub const UNDERLAY_MTU: u32 = 1500;

/// Outer headers a vxlan device's MTU leaves room for: Ethernet 14, UDP 8, VXLAN 8, and the
/// outer IP header, 20 bytes for IPv4 and 40 for IPv6. The kernel's default MTU is the
/// underlay's minus this.
pub fn vxlan_headroom(underlay: IpAddr) -> u32 {
    if underlay.is_ipv4() {
        50
    } else {
        70
    }
}

/// The MTU a VTEP must have: the lab's, or the kernel's default.
pub fn vtep_mtu(g: &GuestPlan, v: &VtepPlan) -> u32 {
    v.mtu
        .unwrap_or(g.underlay_mtu - vxlan_headroom(g.underlay.addr()))
}

/// Link-local addresses come and go with the links themselves; the plan never names them.
fn is_link_local(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

/// Collects findings; `check` pushes one and says whether it holds.
struct Findings<'g> {
    guest: &'g GuestPlan,
    out: Vec<Finding>,
    /// The name the underlay interface goes by now, when a student renamed it (found by its
    /// MAC): the repair names it back, and a vxlan device on it is still on it.
    underlay_renamed: Option<String>,
}

/// A finding under construction.
struct Compared {
    layer: Layer,
    kind: Kind,
    device: String,
    what: String,
    expected: String,
}

fn compared(
    layer: Layer,
    kind: Kind,
    device: &str,
    what: impl Into<String>,
    expected: impl Into<String>,
) -> Compared {
    Compared {
        layer,
        kind,
        device: device.to_string(),
        what: what.into(),
        expected: expected.into(),
    }
}

impl Findings<'_> {
    /// Records `c`; when it does not hold, `seen` says what the kernel shows and `repair`
    /// gives the commands, each run because of `why`.
    fn push(
        &mut self,
        c: Compared,
        holds: bool,
        seen: impl FnOnce() -> String,
        repair: impl FnOnce() -> Vec<GuestCommand>,
    ) {
        let layer = c.layer;
        self.push_layered(c, holds, seen, || {
            repair().into_iter().map(|cmd| (layer, cmd)).collect()
        });
    }

    /// Like [`Findings::push`], for repairs whose commands work on several layers (a vxlan
    /// device made from nothing gets its overlay address and FDB entries too): each step
    /// keeps its own layer, so `walk` shows it in its own stage.
    fn push_layered(
        &mut self,
        c: Compared,
        holds: bool,
        seen: impl FnOnce() -> String,
        repair: impl FnOnce() -> Vec<(Layer, GuestCommand)>,
    ) {
        let (seen, repair) = if holds {
            (c.expected.clone(), Vec::new())
        } else {
            let seen = seen();
            let why = format!("{}: expected {}, seen {seen}", c.what, c.expected);
            let steps = repair()
                .into_iter()
                .map(|(layer, command)| Step {
                    command,
                    layer,
                    why: why.clone(),
                })
                .collect();
            (seen, steps)
        };
        self.out.push(Finding {
            layer: c.layer,
            kind: c.kind,
            device: c.device,
            what: c.what,
            expected: c.expected,
            seen,
            holds,
            peer: None,
            repair,
        });
    }

    /// Like [`Findings::push`], about `peer`.
    fn push_about(
        &mut self,
        peer: &str,
        c: Compared,
        holds: bool,
        seen: impl FnOnce() -> String,
        repair: impl FnOnce() -> Vec<GuestCommand>,
    ) {
        self.push(c, holds, seen, repair);
        if let Some(f) = self.out.last_mut() {
            f.peer = Some(peer.to_string());
        }
    }
}

/// Every comparison of guest `g`'s plan with `st`, in the order their repairs must run.
pub fn findings(g: &GuestPlan, st: &GuestState) -> Vec<Finding> {
    let mut f = Findings {
        guest: g,
        out: Vec::new(),
        underlay_renamed: None,
    };
    if let Some(lo) = st.links.get("lo") {
        f.push(
            compared(Layer::UnderlayLink, Kind::LinkUp, "lo", "lo up", "up"),
            lo.up,
            || "down".into(),
            || vec![cmd::link_up("lo")],
        );
    }
    let underlay_up = underlay(&mut f, st);
    extra_vxlans(&mut f, st);
    stray_addresses(&mut f, st);
    for v in &g.vteps {
        vtep(&mut f, v, st, underlay_up);
    }
    foreign_routes(&mut f, st);
    f.out
}

/// Routes the plan has no part in, through the lab's devices or through none (a blackhole,
/// an unreachable): a default route or a route to another network that a student added
/// sends the guest's traffic where the lesson does not go. (Routes into the planned subnets
/// are [`stray_routes`]; a guest's other devices, and IPv6 link-local routes the kernel
/// makes, are not the lab's business.)
fn foreign_routes(f: &mut Findings, st: &GuestState) {
    let g = f.guest;
    let planned: Vec<IpNet> = std::iter::once(g.underlay.trunc())
        .chain(g.vteps.iter().map(|v| v.address.trunc()))
        .collect();
    let lab_device = |d: &str| is_lab_device(g, d);
    for r in &st.routes {
        let dst: IpNet = match (r.prefix(), r.dst.as_str()) {
            (Some(p), _) => p,
            (None, "default") if r.ipv6 || matches!(r.gateway, Some(IpAddr::V6(_))) => {
                IpNet::V6(Default::default())
            }
            (None, "default") => IpNet::V4(Default::default()),
            _ => continue,
        };
        if planned.iter().any(|n| n.contains(&dst)) {
            continue;
        }
        if r.protocol.as_deref() == Some("kernel") && is_link_local(dst.addr()) {
            continue;
        }
        if !r.dev.as_deref().is_none_or(lab_device) {
            continue;
        }
        let layer = if r.dev.as_deref() == Some(g.interface.as_str()) {
            Layer::UnderlayAddress
        } else {
            Layer::OverlayAddress
        };
        // Said as `ip route` lists it (`default`, a host route without its /32).
        let words = route_words(r, dst).replacen(&dst.to_string(), &r.dst, 1);
        extra_route(
            f,
            layer,
            r.dev.as_deref().unwrap_or_default(),
            r,
            dst,
            words,
        );
    }
}

/// Route `r` (to `dst`, said as `words`) on `dev`, which the plan does not have: a failing
/// finding of `layer`, repaired by deleting it.
fn extra_route(f: &mut Findings, layer: Layer, dev: &str, r: &Route, dst: IpNet, words: String) {
    f.push(
        compared(
            layer,
            Kind::ExtraRoute,
            dev,
            format!("route {words}, not in the plan"),
            "none",
        ),
        false,
        || words.clone(),
        || {
            vec![cmd::route_del(
                r.kind.as_deref(),
                dst,
                r.gateway,
                r.dev.as_deref(),
            )]
        },
    );
}

/// The commands that bring `st` to the plan, each once, in order.
pub fn converge(g: &GuestPlan, st: &GuestState) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for s in findings(g, st)
        .into_iter()
        .filter(|f| !f.holds)
        .flat_map(|f| f.repair)
    {
        if !steps.iter().any(|x| x.command == s.command) {
            steps.push(s);
        }
    }
    steps
}

fn addresses_of(l: &Link) -> Vec<IpNet> {
    l.addresses
        .iter()
        .filter(|a| !is_link_local(a.addr()))
        .copied()
        .collect()
}

fn list<T: ToString>(xs: &[T]) -> String {
    if xs.is_empty() {
        "none".into()
    } else {
        xs.iter().map(T::to_string).collect::<Vec<_>>().join(", ")
    }
}

/// Whether `r` is the connected route of `net` on `dev`.
fn is_connected(r: &Route, net: IpNet, dev: &str) -> bool {
    r.kind.is_none()
        && r.gateway.is_none()
        && r.dev.as_deref() == Some(dev)
        && r.prefix() == Some(net.trunc())
}

fn has_route(st: &GuestState, net: IpNet, dev: &str) -> bool {
    st.routes.iter().any(|r| is_connected(r, net, dev))
}

/// Routes into `net` other than its connected route on `dev`: a host route to a peer through
/// another device, a blackhole, a second route to the subnet. Each takes the guest's traffic
/// for a planned address away from where the plan sends it.
fn stray_routes<'a>(st: &'a GuestState, net: IpNet, dev: &str) -> Vec<(&'a Route, IpNet)> {
    let subnet = net.trunc();
    st.routes
        .iter()
        .filter(|r| !is_connected(r, net, dev))
        .filter_map(|r| Some((r, r.prefix()?)))
        .filter(|(_, p)| subnet.contains(p))
        .collect()
}

/// A route as `ip route show` lists it.
fn route_words(r: &Route, dst: IpNet) -> String {
    let mut w: Vec<String> = r.kind.iter().cloned().collect();
    w.push(dst.to_string());
    if let Some(g) = r.gateway {
        w.push(format!("via {g}"));
    }
    if let Some(d) = &r.dev {
        w.push(format!("dev {d}"));
    }
    w.join(" ")
}

/// The addresses of `dev`: `wanted` present, every other one gone, and its connected route
/// once the address is there and the device up. `layer` is the layer they belong to.
fn addresses(
    f: &mut Findings,
    layer: Layer,
    dev: &str,
    link: &Link,
    wanted: IpNet,
    st: &GuestState,
) {
    let have = addresses_of(link);
    let present = have.contains(&wanted);
    let extras: Vec<IpNet> = have.iter().filter(|a| **a != wanted).copied().collect();
    // The others go first: deleting a primary address also deletes the secondaries of its
    // subnet, and the planned one would be such a secondary.
    f.push(
        compared(
            layer,
            Kind::Address,
            dev,
            format!("{dev} address"),
            wanted.to_string(),
        ),
        present,
        || list(&have),
        || {
            let mut c: Vec<GuestCommand> = extras.iter().map(|a| cmd::addr_del(*a, dev)).collect();
            c.push(cmd::addr_add(wanted, dev));
            c
        },
    );
    for extra in &extras {
        f.push(
            compared(
                layer,
                Kind::ExtraAddress,
                dev,
                format!("extra address {extra} on {dev}, not in the plan"),
                "none",
            ),
            false,
            || extra.to_string(),
            || vec![cmd::addr_del(*extra, dev)],
        );
    }
    // The kernel adds the connected route with the address; it is missing only when removed.
    if present && link.up {
        let subnet = wanted.trunc();
        f.push(
            compared(
                layer,
                Kind::Route,
                dev,
                format!("route to {subnet} via {dev}"),
                format!("{subnet} dev {dev}"),
            ),
            has_route(st, wanted, dev),
            || "no such route".into(),
            || vec![cmd::route_add(wanted, dev)],
        );
    }
    for (r, dst) in stray_routes(st, wanted, dev) {
        extra_route(f, layer, dev, r, dst, route_words(r, dst));
    }
}

/// The underlay interface: present, MTU, address, up. Returns whether it is up.
fn underlay(f: &mut Findings, st: &GuestState) -> bool {
    let g = f.guest;
    let dev = g.interface.as_str();
    let Some(link) = st.links.get(dev) else {
        // Renamed: the one device with the underlay's MAC is named back (down, renamed, up;
        // its addresses and the vxlan devices on it stay). Two (a bridge takes its port's
        // MAC) are no answer: then a reset makes the guest anew.
        let same_mac: Vec<&Link> = st
            .links
            .values()
            .filter(|l| l.mac == Some(g.underlay_mac) && l.vxlan.is_none())
            .collect();
        let renamed = match same_mac.as_slice() {
            [one] if one.master.is_none() => Some(*one),
            _ => None,
        };
        f.underlay_renamed = renamed.map(|l| l.name.clone());
        f.push(
            compared(
                Layer::UnderlayLink,
                Kind::LinkExists,
                dev,
                format!("{dev} is missing (underlay)"),
                "the underlay interface",
            ),
            false,
            || match renamed {
                Some(l) => format!("renamed to {}", l.name),
                None => "no such device".into(),
            },
            || match renamed {
                Some(l) => vec![
                    cmd::link_down(&l.name),
                    cmd::link_rename(&l.name, dev),
                    cmd::link_up(dev),
                ],
                None => Vec::new(),
            },
        );
        return false;
    };
    f.push(
        compared(
            Layer::UnderlayLink,
            Kind::LinkMtu,
            dev,
            format!("{dev} mtu (underlay)"),
            g.underlay_mtu.to_string(),
        ),
        link.mtu == g.underlay_mtu,
        || link.mtu.to_string(),
        || vec![cmd::link_mtu(dev, g.underlay_mtu)],
    );
    arp(f, Layer::UnderlayLink, dev, link);
    addresses(f, Layer::UnderlayAddress, dev, link, g.underlay, st);
    f.push(
        compared(
            Layer::UnderlayLink,
            Kind::LinkUp,
            dev,
            format!("{dev} is down (underlay)"),
            "up",
        ),
        link.up,
        || "down".into(),
        || vec![cmd::link_up(dev)],
    );
    link.up
}

/// Whether `d` is one of the devices the plan gives guest `g`: its underlay or a VTEP.
fn is_lab_device(g: &GuestPlan, d: &str) -> bool {
    d == g.interface || g.vteps.iter().any(|v| v.device == d)
}

/// Device `dev` resolves neighbours: with `arp off` (NOARP) it sends no ARP request and
/// answers none, and nothing crosses.
fn arp(f: &mut Findings, layer: Layer, dev: &str, link: &Link) {
    f.push(
        compared(
            layer,
            Kind::Arp,
            dev,
            format!("{dev} has ARP off"),
            "arp on",
        ),
        link.arp,
        || "NOARP".into(),
        || vec![cmd::link_arp_on(dev)],
    );
}

/// Addresses inside the lab's subnets on devices the plan gives none: a peer's overlay
/// address on `lo` answers the guest's own pings to that peer, and the lab looks broken with
/// nothing of the plan missing.
fn stray_addresses(f: &mut Findings, st: &GuestState) {
    let g = f.guest;
    let lab_device = |d: &str| is_lab_device(g, d) || f.underlay_renamed.as_deref() == Some(d);
    let mut found = Vec::new();
    for l in st.links.values().filter(|l| !lab_device(&l.name)) {
        for a in addresses_of(l) {
            let overlay = g
                .vteps
                .iter()
                .find(|v| v.address.trunc().contains(&a.addr()));
            let (layer, subnet) = match overlay {
                Some(v) => (Layer::OverlayAddress, v.address.trunc()),
                None if g.underlay.trunc().contains(&a.addr()) => {
                    (Layer::UnderlayAddress, g.underlay.trunc())
                }
                None => continue,
            };
            let whose = g
                .vteps
                .iter()
                .flat_map(|v| v.peers.iter())
                .find(|p| p.overlay == a.addr())
                .map(|p| format!(", {}'s address", p.guest))
                .unwrap_or_default();
            found.push((layer, l.name.clone(), a, subnet, whose));
        }
    }
    for (layer, dev, a, subnet, whose) in found {
        f.push(
            compared(
                layer,
                Kind::ExtraAddress,
                &dev,
                format!("address {a} on {dev}, inside the lab's {subnet}{whose}, not in the plan"),
                "none",
            ),
            false,
            || a.to_string(),
            || vec![cmd::addr_del(a, &dev)],
        );
    }
}

/// vxlan devices the plan does not have: one may hold a planned VNI, and a student reading
/// `ip link` should see only the lab's.
fn extra_vxlans(f: &mut Findings, st: &GuestState) {
    let g = f.guest;
    for l in st.links.values().filter(|l| l.vxlan.is_some()) {
        if g.vteps.iter().any(|v| v.device == l.name) {
            continue;
        }
        let vni = l.vxlan.as_ref().map_or(0, |p| p.vni);
        f.push(
            compared(
                Layer::VxlanDevice,
                Kind::ExtraVxlan,
                &l.name,
                format!("{} is not in the lab", l.name),
                "no such device",
            ),
            false,
            || format!("vxlan VNI {vni}"),
            || vec![cmd::link_del(&l.name)],
        );
    }
}

/// What makes VTEP `v` from nothing: the device, its MAC, MTU, up, its address, and its
/// static and head-end FDB entries, each with the layer it works on.
pub fn create_vtep(g: &GuestPlan, v: &VtepPlan) -> Vec<(Layer, GuestCommand)> {
    let device = |c| (Layer::VxlanDevice, c);
    let mut c = vec![device(cmd::link_add_vxlan(vxlan_device(g, v)))];
    if let Some(mtu) = v.mtu {
        c.push(device(cmd::link_mtu(&v.device, mtu)));
    }
    if quiet_ipv6(v) {
        c.push(device(cmd::link_no_ipv6_autoconf(&v.device)));
    }
    c.push(device(cmd::link_up(&v.device)));
    c.push((Layer::OverlayAddress, cmd::addr_add(v.address, &v.device)));
    if v.static_fdb {
        c.extend(v.peers.iter().map(|p| {
            (
                Layer::Forwarding,
                cmd::fdb_replace(p.mac, &v.device, p.underlay),
            )
        }));
    }
    if v.flood == Flood::HeadEnd {
        c.extend(v.peers.iter().map(|p| {
            (
                Layer::Flooding,
                cmd::flood_entry_add(&v.device, p.underlay, None),
            )
        }));
    }
    c
}

/// What VTEP `v`'s device is made with: what `ip link add` is given and what a device found
/// in the guest is compared with.
fn vxlan_device<'a>(g: &GuestPlan, v: &'a VtepPlan) -> VxlanDevice<'a> {
    VxlanDevice {
        name: &v.device,
        vni: v.vni,
        flood: &v.flood,
        local: g.underlay.addr(),
        dev: &v.dev,
        port: v.port,
        learning: v.learning,
        mac: v.mac,
    }
}

/// On an overlay the lab addresses with IPv4 only, the device makes no IPv6 link-local
/// address: its autoconfiguration frames would cross the overlay before the student's first
/// ping and teach the VTEPs each other early.
fn quiet_ipv6(v: &VtepPlan) -> bool {
    v.address.addr().is_ipv4()
}

fn group_of(flood: &Flood) -> Option<IpAddr> {
    match flood {
        Flood::Group(ip) => Some(*ip),
        Flood::HeadEnd => None,
    }
}

fn opt<T: ToString>(x: Option<T>) -> String {
    x.map(|x| x.to_string()).unwrap_or_else(|| "none".into())
}

/// One VTEP: the device with every planned setting, the group, its addresses, flood and
/// static entries, and its neighbours.
fn vtep(f: &mut Findings, v: &VtepPlan, st: &GuestState, underlay_up: bool) {
    let g = f.guest;
    let d = v.device.as_str();
    let name = |what: &str| format!("{d} {what}");
    let Some(link) = st.links.get(d) else {
        f.push_layered(
            compared(
                Layer::VxlanDevice,
                Kind::VxlanExists,
                d,
                format!("{d} is missing"),
                format!("vxlan VNI {}", v.vni),
            ),
            false,
            || "no such device".into(),
            || create_vtep(g, v),
        );
        return;
    };
    let recreate = || {
        let mut c = vec![(Layer::VxlanDevice, cmd::link_del(d))];
        c.extend(create_vtep(g, v));
        c
    };
    let Some(p) = &link.vxlan else {
        f.push_layered(
            compared(
                Layer::VxlanDevice,
                Kind::VxlanExists,
                d,
                format!("{d} is not a vxlan"),
                format!("vxlan VNI {}", v.vni),
            ),
            false,
            || "another kind of device".into(),
            recreate,
        );
        return;
    };
    // The settings a vxlan device is created with: a difference means a new device.
    let group = group_of(&v.flood);
    let settings = [
        ("vni", v.vni.to_string(), p.vni.to_string()),
        ("group", opt(group), opt(p.group)),
        ("local", opt(vxlan_device(g, v).local()), opt(p.local)),
        (
            "dev",
            v.dev.clone(),
            // On the renamed underlay, which the repair names back.
            match (&p.dev, &f.underlay_renamed) {
                (Some(d), Some(r)) if d == r && v.dev == g.interface => v.dev.clone(),
                _ => opt(p.dev.as_ref()),
            },
        ),
        ("port", v.port.to_string(), p.port.to_string()),
        ("learning", v.learning.to_string(), p.learning.to_string()),
    ];
    let mut same = true;
    for (what, want, have) in settings {
        let holds = want == have;
        same &= holds;
        f.push_layered(
            compared(Layer::VxlanDevice, Kind::VxlanSetting, d, name(what), want),
            holds,
            || have,
            recreate,
        );
    }
    if !same {
        return;
    }
    f.push(
        compared(
            Layer::VxlanDevice,
            Kind::Mac,
            d,
            name("mac"),
            v.mac.to_string(),
        ),
        link.mac == Some(v.mac),
        || opt(link.mac),
        || vec![cmd::link_address(d, v.mac)],
    );
    // A port of a bridge hands every frame it receives to the bridge: the device's own
    // address, and the lab's overlay, see none of them.
    f.push(
        compared(
            Layer::VxlanDevice,
            Kind::Port,
            d,
            format!("{d} is a port of another device, not in the plan"),
            "no master",
        ),
        link.master.is_none(),
        || format!("master {}", link.master.as_deref().unwrap_or("-")),
        || vec![cmd::link_nomaster(d)],
    );
    arp(f, Layer::VxlanDevice, d, link);
    if quiet_ipv6(v) {
        // An `ip` too old to say counts as right: it cannot set it either.
        let mode = link.addrgenmode.as_deref();
        f.push(
            compared(
                Layer::VxlanDevice,
                Kind::Ipv6Autoconf,
                d,
                name("IPv6 autoconfiguration (addrgenmode)"),
                "none",
            ),
            mode.is_none_or(|m| m == "none"),
            || mode.unwrap_or("-").to_string(),
            || vec![cmd::link_no_ipv6_autoconf(d)],
        );
    }
    let mtu = vtep_mtu(g, v);
    f.push(
        compared(
            Layer::VxlanDevice,
            Kind::LinkMtu,
            d,
            name("mtu"),
            mtu.to_string(),
        ),
        link.mtu == mtu,
        || link.mtu.to_string(),
        || vec![cmd::link_mtu(d, mtu)],
    );
    f.push(
        compared(Layer::VxlanDevice, Kind::LinkUp, d, name("up"), "up"),
        link.up,
        || "down".into(),
        || vec![cmd::link_up(d)],
    );
    if let Some(group) = group {
        let joined: Vec<IpAddr> = st
            .groups
            .iter()
            .filter(|m| m.dev == v.dev)
            .map(|m| m.group)
            .collect();
        // The kernel joins when the device comes up over an up underlay; taking the device
        // down and up again makes it join anew.
        let repair = || {
            if link.up {
                vec![cmd::link_down(d), cmd::link_up(d)]
            } else {
                vec![cmd::link_up(d)]
            }
        };
        f.push(
            compared(
                Layer::Flooding,
                Kind::GroupJoined,
                &v.dev,
                format!("{group} joined on {}", v.dev),
                "member",
            ),
            joined.contains(&group) || !underlay_up,
            || format!("groups on {}: {}", v.dev, list(&joined)),
            repair,
        );
    }
    flood_entries(f, v, st);
    addresses(f, Layer::OverlayAddress, d, link, v.address, st);
    static_entries(f, v, st);
    neighbours(f, v, st);
}

/// The flood entries: to the group, or one per peer (head-end replication); no others.
fn flood_entries(f: &mut Findings, v: &VtepPlan, st: &GuestState) {
    let d = v.device.as_str();
    let entries = st.fdb.get(d).map(Vec::as_slice).unwrap_or_default();
    let floods: Vec<IpAddr> = entries
        .iter()
        .filter(|e| e.mac.is_zero())
        .filter_map(|e| e.dst)
        .collect();
    // Each wanted entry, with the peer it floods to under head-end replication.
    let (wanted, via): (Vec<(IpAddr, Option<&str>)>, Option<&str>) = match v.flood {
        Flood::Group(ip) => (vec![(ip, None)], Some(v.dev.as_str())),
        Flood::HeadEnd => (
            v.peers
                .iter()
                .map(|p| (p.underlay, Some(p.guest.as_str())))
                .collect(),
            None,
        ),
    };
    let dsts: Vec<IpAddr> = wanted.iter().map(|(ip, _)| *ip).collect();
    for extra in floods.iter().filter(|d| !dsts.contains(d)) {
        f.push(
            compared(
                Layer::Flooding,
                Kind::ExtraFloodEntry,
                d,
                format!("{d} floods only to {}", list(&dsts)),
                "no such entry",
            ),
            false,
            || format!("00:00:00:00:00:00 dst {extra}"),
            || vec![cmd::flood_entry_del(d, *extra)],
        );
    }
    for (dst, peer) in wanted {
        let c = compared(
            Layer::Flooding,
            Kind::FloodEntry,
            d,
            format!("{d} flood entry to {dst}"),
            format!("00:00:00:00:00:00 dst {dst}"),
        );
        let holds = floods.contains(&dst);
        let seen = || format!("flood entries to {}", list(&floods));
        let repair = || vec![cmd::flood_entry_add(d, dst, via)];
        match peer {
            Some(p) => f.push_about(p, c, holds, seen, repair),
            None => f.push(c, holds, seen, repair),
        }
    }
}

/// Static entries: each peer's MAC behind its VTEP when the lab says `fdb: static`, and no
/// permanent entry the plan does not have, whatever the mode.
fn static_entries(f: &mut Findings, v: &VtepPlan, st: &GuestState) {
    let d = v.device.as_str();
    let entries = st.fdb.get(d).map(Vec::as_slice).unwrap_or_default();
    let planned = |mac| v.static_fdb && v.peers.iter().any(|p| p.mac == mac);
    for e in entries
        .iter()
        .filter(|e| e.permanent && !e.mac.is_zero() && !planned(e.mac))
    {
        // Most often a student pinned a peer's MAC in a learning lab (a static lab's own
        // entries are compared below).
        let owner = v.peers.iter().find(|p| p.mac == e.mac);
        let (what, expected) = match owner {
            Some(p) => (
                format!("{d} static entry for {}'s MAC {}", p.guest, e.mac),
                format!("none: {d} learns {} behind VTEP {}", p.guest, p.underlay),
            ),
            None => (
                format!("{d} static entry for {}", e.mac),
                "none: the lab pins no such MAC".to_string(),
            ),
        };
        f.push(
            compared(Layer::Forwarding, Kind::ExtraStaticEntry, d, what, expected),
            false,
            || format!("{} dst {} permanent", e.mac, opt(e.dst)),
            || vec![cmd::fdb_del(e.mac, d)],
        );
    }
    if !v.static_fdb {
        return;
    }
    for peer in &v.peers {
        let entry = entries.iter().find(|e| e.mac == peer.mac);
        f.push_about(
            &peer.guest,
            compared(
                Layer::Forwarding,
                Kind::StaticEntry,
                d,
                format!("{d} static entry for {} ({})", peer.guest, peer.mac),
                format!("dst {} permanent", peer.underlay),
            ),
            entry.is_some_and(|e| e.permanent && e.dst == Some(peer.underlay)),
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
            || vec![cmd::fdb_replace(peer.mac, d, peer.underlay)],
        );
    }
}

/// A neighbour entry that maps a peer's overlay address to another MAC sends its frames
/// nowhere; it goes.
fn neighbours(f: &mut Findings, v: &VtepPlan, st: &GuestState) {
    let d = v.device.as_str();
    for n in st.neighbours.get(d).into_iter().flatten() {
        // The plan sets no neighbour by hand: a permanent one is never resolved by ARP, so
        // the lesson's first frame is not sent, and `reset` cannot flush it.
        if n.permanent {
            let peer = v.peers.iter().find(|p| p.overlay == n.dst);
            let whose = peer.map(|p| format!(" ({})", p.guest)).unwrap_or_default();
            f.push(
                compared(
                    Layer::Forwarding,
                    Kind::ExtraNeighbour,
                    d,
                    format!(
                        "{d} permanent neighbour {}{whose}, set by hand, not in the plan",
                        n.dst
                    ),
                    "none",
                ),
                false,
                || format!("{} lladdr {} permanent", n.dst, opt(n.lladdr)),
                || vec![cmd::neigh_del(n.dst, d)],
            );
            if let (Some(p), Some(last)) = (peer, f.out.last_mut()) {
                last.peer = Some(p.guest.clone());
            }
            continue;
        }
        let Some(peer) = v.peers.iter().find(|p| p.overlay == n.dst) else {
            continue;
        };
        let Some(mac) = n.lladdr else { continue };
        f.push_about(
            &peer.guest,
            compared(
                Layer::Forwarding,
                Kind::Neighbour,
                d,
                format!("{d} neighbour {} ({})", n.dst, peer.guest),
                peer.mac.to_string(),
            ),
            mac == peer.mac,
            || mac.to_string(),
            || vec![cmd::neigh_del(n.dst, d)],
        );
    }
}

/// What `reset` forgets so the lesson can be done again: the neighbours each VTEP resolved, and
/// the MACs it learned (flood and static entries stay).
pub fn forget(g: &GuestPlan, st: &GuestState) -> Vec<Step> {
    let mut steps = Vec::new();
    for v in g.vteps.iter().filter(|v| st.links.contains_key(&v.device)) {
        let d = v.device.as_str();
        let why = format!("reset: {d} forgets what it learned, so the lesson can be done again");
        let step = |command| Step {
            command,
            layer: Layer::Forwarding,
            why: why.clone(),
        };
        steps.push(step(cmd::neigh_flush(d)));
        for e in st.fdb.get(d).into_iter().flatten() {
            if !e.mac.is_zero() && !e.permanent {
                steps.push(step(cmd::fdb_del(e.mac, d)));
            }
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorded;

    /// The commands converge runs on a recorded state, as a student reads them.
    fn repairs(name: &str) -> Vec<String> {
        let r = recorded(name);
        let g = r.plan.guest(&r.guest).unwrap();
        converge(g, &r.state)
            .iter()
            .map(|s| s.command.to_string())
            .collect()
    }

    fn failing(name: &str) -> Vec<(Layer, String)> {
        let r = recorded(name);
        let g = r.plan.guest(&r.guest).unwrap();
        findings(g, &r.state)
            .into_iter()
            .filter(|f| !f.holds)
            .map(|f| (f.layer, f.what))
            .collect()
    }

    #[test]
    fn what_a_student_set_by_hand_beside_the_plan_is_undone() {
        // vm-b's address on lo, ARP off on vxlan0, a permanent neighbour for vm-b.
        assert_eq!(
            repairs("seed-hand-made-vm-a"),
            [
                "ip addr del 192.168.42.3/32 dev lo",
                "ip link set dev vxlan0 arp on",
                "ip neigh del 192.168.42.3 dev vxlan0",
            ]
        );
        let failing = failing("seed-hand-made-vm-a");
        assert!(failing.contains(&(
            Layer::OverlayAddress,
            "address 192.168.42.3/32 on lo, inside the lab's 192.168.42.0/24, vm-b's address, \
             not in the plan"
                .into()
        )));
        assert!(failing.contains(&(Layer::VxlanDevice, "vxlan0 has ARP off".into())));
        assert!(failing.iter().any(|(l, w)| *l == Layer::Forwarding
            && w.starts_with("vxlan0 permanent neighbour 192.168.42.3 (vm-b)")));
    }

    #[test]
    fn a_healthy_guest_needs_nothing() {
        for name in [
            "seed-healthy-vm-a",
            "seed-healthy-vm-b",
            "unicast-healthy-vm-a",
            "static-healthy-vm-a",
        ] {
            assert_eq!(repairs(name), Vec::<String>::new(), "{name}");
            assert_eq!(failing(name), vec![], "{name}");
        }
    }

    #[test]
    fn a_fresh_namespace_gets_exactly_the_plan() {
        let r = recorded("seed-fresh-vm-a");
        let g = r.plan.guest("vm-a").unwrap();
        assert_eq!(converge(g, &r.state), g.steps);
        // The pure model of a fresh namespace agrees with the recorded one.
        let model = crate::plan::fresh_state(g, crate::lab::DriverKind::Netns);
        assert_eq!(converge(g, &model), g.steps);
    }

    #[test]
    fn a_flushed_fdb_gets_its_flood_entry_back() {
        assert_eq!(
            repairs("seed-fdb-flushed-vm-a"),
            ["bridge fdb append 00:00:00:00:00:00 dev vxlan0 dst 239.1.1.1 via eth0"]
        );
    }

    #[test]
    fn a_downed_underlay_comes_up_and_is_the_lowest_failure() {
        assert_eq!(repairs("seed-eth0-down-vm-a"), ["ip link set up eth0"]);
        let f = failing("seed-eth0-down-vm-a");
        assert_eq!(
            f[0],
            (Layer::UnderlayLink, "eth0 is down (underlay)".into())
        );
    }

    #[test]
    fn a_changed_overlay_address_is_replaced_not_added_beside() {
        assert_eq!(
            repairs("seed-overlay-33-vm-b"),
            [
                "ip addr del 192.168.42.33/24 dev vxlan0",
                "ip addr add 192.168.42.3/24 dev vxlan0"
            ]
        );
    }

    #[test]
    fn a_changed_underlay_address_is_replaced() {
        assert_eq!(
            repairs("seed-underlay-22-vm-a"),
            [
                "ip addr del 192.168.10.22/24 dev eth0",
                "ip addr add 192.168.10.2/24 dev eth0"
            ]
        );
        assert_eq!(
            failing("seed-underlay-22-vm-a")[0],
            (Layer::UnderlayAddress, "eth0 address".into())
        );
    }

    #[test]
    fn a_deleted_vxlan_device_is_created_with_everything_on_it() {
        let r = recorded("seed-vxlan-deleted-vm-a");
        let g = r.plan.guest("vm-a").unwrap();
        let vxlan_steps: Vec<String> = g
            .steps
            .iter()
            .filter(|s| s.layer >= Layer::VxlanDevice)
            .map(|s| s.command.to_string())
            .collect();
        assert_eq!(repairs("seed-vxlan-deleted-vm-a"), vxlan_steps);
        assert_eq!(
            vxlan_steps[0],
            "ip link add vxlan0 address 02:58:00:00:2a:01 type vxlan id 42 group 239.1.1.1 dev \
             eth0 dstport 4789"
        );
    }

    #[test]
    fn a_vxlan_with_another_vni_is_replaced() {
        let steps = repairs("seed-vni-43-vm-a");
        assert_eq!(steps[0], "ip link del dev vxlan0");
        assert!(steps[1].contains(" type vxlan id 42 "));
        assert_eq!(
            failing("seed-vni-43-vm-a"),
            [(Layer::VxlanDevice, "vxlan0 vni".to_string())]
        );
    }

    #[test]
    fn a_head_end_vxlan_made_with_another_local_address_is_replaced() {
        let steps = repairs("unicast-wrong-local-vm-a");
        assert_eq!(steps[0], "ip link del dev vxlan0");
        assert_eq!(
            steps[1],
            "ip link add vxlan0 address 02:4a:00:00:64:01 type vxlan id 100 local 192.168.30.2 \
             dev eth0 dstport 4789"
        );
        assert_eq!(
            failing("unicast-wrong-local-vm-a")[0],
            (Layer::VxlanDevice, "vxlan0 local".to_string())
        );
    }

    #[test]
    fn routes_into_planned_subnets_that_the_plan_lacks_are_removed() {
        assert_eq!(
            repairs("seed-stray-routes-vm-a"),
            [
                "ip route del blackhole 192.168.10.3/32",
                "ip route del 192.168.42.3/32 dev lo"
            ]
        );
        let f = failing("seed-stray-routes-vm-a");
        assert_eq!(
            f,
            [
                (
                    Layer::UnderlayAddress,
                    "route blackhole 192.168.10.3/32, not in the plan".to_string()
                ),
                (
                    Layer::OverlayAddress,
                    "route 192.168.42.3/32 dev lo, not in the plan".to_string()
                )
            ]
        );
    }

    #[test]
    fn routes_elsewhere_through_the_labs_devices_are_removed_and_other_devices_left_alone() {
        assert_eq!(
            repairs("seed-foreign-routes-vm-a"),
            [
                "ip route del default via 192.168.42.3 dev vxlan0",
                "ip route del 10.9.0.0/16 dev vxlan0",
                "ip route del unreachable 172.16.0.0/12"
            ]
        );
        assert_eq!(
            failing("seed-foreign-routes-vm-a"),
            [
                (
                    Layer::OverlayAddress,
                    "route default via 192.168.42.3 dev vxlan0, not in the plan".to_string()
                ),
                (
                    Layer::OverlayAddress,
                    "route 10.9.0.0/16 dev vxlan0, not in the plan".to_string()
                ),
                (
                    Layer::OverlayAddress,
                    "route unreachable 172.16.0.0/12, not in the plan".to_string()
                )
            ]
        );
    }

    #[test]
    fn an_ipv6_default_route_without_a_gateway_is_removed_as_ipv6() {
        let r = recorded("seed-healthy-vm-a");
        let g = r.plan.guest(&r.guest).unwrap();
        let mut st = r.state.clone();
        st.routes.push(Route {
            kind: None,
            dst: "default".into(),
            gateway: None,
            dev: Some("vxlan0".into()),
            protocol: None,
            prefsrc: None,
            ipv6: true,
        });
        let steps: Vec<String> = converge(g, &st)
            .iter()
            .map(|s| s.command.to_string())
            .collect();
        assert_eq!(steps, ["ip route del ::/0 dev vxlan0"]);
    }

    #[test]
    fn head_end_flood_entries_are_exactly_one_per_peer() {
        assert_eq!(
            repairs("unicast-wrong-flood-vm-a"),
            [
                "bridge fdb del 00:00:00:00:00:00 dev vxlan0 dst 192.168.30.99",
                "bridge fdb append 00:00:00:00:00:00 dev vxlan0 dst 192.168.30.3"
            ]
        );
    }

    #[test]
    fn static_entries_are_corrected_and_foreign_ones_removed() {
        let steps = repairs("static-wrong-entries-vm-a");
        assert!(
            steps.contains(&"bridge fdb del 02:00:00:00:00:99 dev vxlan0".to_string()),
            "{steps:?}"
        );
        assert!(
            steps.iter().any(|s| s.starts_with("bridge fdb replace 02:")
                && s.ends_with("dev vxlan0 dst 192.168.60.4")),
            "{steps:?}"
        );
        assert!(
            steps.contains(&"ip neigh del 10.200.0.2 dev vxlan0".to_string()),
            "{steps:?}"
        );
        assert_eq!(steps.len(), 3, "{steps:?}");
    }

    #[test]
    fn forgetting_keeps_flood_and_static_entries() {
        let r = recorded("seed-healthy-vm-a");
        let g = r.plan.guest("vm-a").unwrap();
        let cmds: Vec<String> = forget(g, &r.state)
            .iter()
            .map(|s| s.command.to_string())
            .collect();
        assert_eq!(cmds[0], "ip neigh flush dev vxlan0");
        assert!(cmds[1..]
            .iter()
            .all(|c| c.starts_with("bridge fdb del 02:")));
        let r = recorded("static-healthy-vm-a");
        let g = r.plan.guest("vm-a").unwrap();
        assert_eq!(forget(g, &r.state).len(), 1, "static entries stay");
    }
}
