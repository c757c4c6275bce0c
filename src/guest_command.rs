//! Every command vxlab runs in a guest, built in one typed place. What `plan`, `walk`, a repair
//! line and the commands log show is the [`GuestCommand`] that ran, written as a student types
//! it; only the path of `ip` and `bridge` differs when vxlab built them (see [`Tools`]).

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::iproute2::Tools;
use crate::lab::{Flood, Mac};

/// A program vxlab runs in a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Program {
    /// iproute2's `ip`: the guest's own, or the one vxlab built.
    Ip,
    /// iproute2's `bridge`, likewise.
    Bridge,
    /// iputils' `ping`.
    Ping,
    /// `uname`.
    Uname,
    /// A POSIX shell, for the few checks that need one.
    Sh,
}

impl Program {
    /// The name a student types.
    pub fn name(self) -> &'static str {
        match self {
            Program::Ip => "ip",
            Program::Bridge => "bridge",
            Program::Ping => "ping",
            Program::Uname => "uname",
            Program::Sh => "sh",
        }
    }
}

/// What a command prints when it works, as its constructor knows it: what decides whether its
/// output can be told apart from others' in one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prints {
    /// Nothing: it changes something.
    Nothing,
    /// One JSON document.
    Json,
    /// Text, for a person or a parser of its own.
    Text,
}

/// One command for a guest: a program and its arguments, never a shell string. In JSON it is
/// the line a student types and its argument vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestCommand {
    /// The program.
    pub program: Program,
    /// Its arguments.
    pub args: Vec<String>,
    /// What it prints.
    pub prints: Prints,
}

impl GuestCommand {
    fn new(program: Program, prints: Prints, args: &[&str]) -> Self {
        GuestCommand {
            program,
            args: args.iter().map(|a| a.to_string()).collect(),
            prints,
        }
    }

    /// An `ip` command that changes something.
    fn ip(args: &[&str]) -> Self {
        Self::new(Program::Ip, Prints::Nothing, args)
    }

    /// A `bridge` command that changes something.
    fn bridge(args: &[&str]) -> Self {
        Self::new(Program::Bridge, Prints::Nothing, args)
    }

    /// The argument vector to run, with `ip` and `bridge` taken from `tools`.
    pub fn argv(&self, tools: &Tools) -> Vec<String> {
        let program = match self.program {
            Program::Ip => tools.ip.clone(),
            Program::Bridge => tools.bridge.clone(),
            other => other.name().to_string(),
        };
        std::iter::once(program)
            .chain(self.args.iter().cloned())
            .collect()
    }

    /// The words as a student types them.
    pub fn words(&self) -> Vec<String> {
        self.argv(&Tools::default())
    }
}

impl Serialize for GuestCommand {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("GuestCommand", 2)?;
        st.serialize_field("line", &self.to_string())?;
        st.serialize_field("argv", &self.words())?;
        st.end()
    }
}

impl fmt::Display for GuestCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&shell_words(&self.words()))
    }
}

/// Joins argv for display, quoting any word a POSIX shell would split or expand.
pub fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes one word for a POSIX shell; plain words stay as they are.
pub fn shell_quote(w: &str) -> String {
    let plain = !w.is_empty()
        && w.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b));
    if plain {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}

/// The all-zeros MAC of flood entries, as `bridge` writes it.
const ZERO_MAC: &str = "00:00:00:00:00:00";

/// `ip link set DEV up`.
pub fn link_up(dev: &str) -> GuestCommand {
    GuestCommand::ip(&["link", "set", "up", dev])
}

/// `ip link set DEV down`.
pub fn link_down(dev: &str) -> GuestCommand {
    GuestCommand::ip(&["link", "set", "down", dev])
}

/// `ip link set dev DEV mtu MTU`.
pub fn link_mtu(dev: &str, mtu: u32) -> GuestCommand {
    GuestCommand::ip(&["link", "set", "dev", dev, "mtu", &mtu.to_string()])
}

/// `ip link set dev DEV address MAC`.
pub fn link_address(dev: &str, mac: Mac) -> GuestCommand {
    GuestCommand::ip(&["link", "set", "dev", dev, "address", &mac.to_string()])
}

/// `ip link set dev DEV addrgenmode none`: no IPv6 link-local address, so the device sends no
/// IPv6 autoconfiguration traffic of its own.
pub fn link_no_ipv6_autoconf(dev: &str) -> GuestCommand {
    GuestCommand::ip(&["link", "set", "dev", dev, "addrgenmode", "none"])
}

/// `ip link set dev DEV arp on`: the device resolves its neighbours again.
pub fn link_arp_on(dev: &str) -> GuestCommand {
    GuestCommand::ip(&["link", "set", "dev", dev, "arp", "on"])
}

/// `ip link set dev DEV name NAME` (the device must be down).
pub fn link_rename(dev: &str, name: &str) -> GuestCommand {
    GuestCommand::ip(&["link", "set", "dev", dev, "name", name])
}

/// `ip link set dev DEV nomaster`: takes a device out of the bridge it is a port of.
pub fn link_nomaster(dev: &str) -> GuestCommand {
    GuestCommand::ip(&["link", "set", "dev", dev, "nomaster"])
}

/// `ip link del dev DEV`.
pub fn link_del(dev: &str) -> GuestCommand {
    GuestCommand::ip(&["link", "del", "dev", dev])
}

/// What `ip link add … type vxlan` is given.
#[derive(Debug, Clone, Copy)]
pub struct VxlanDevice<'a> {
    /// Device name.
    pub name: &'a str,
    /// VNI.
    pub vni: u32,
    /// How it floods.
    pub flood: &'a Flood,
    /// The guest's own underlay address: without a group the kernel needs it to pick the
    /// underlay's address family.
    pub local: IpAddr,
    /// Underlay device.
    pub dev: &'a str,
    /// UDP port, always given: the kernel's default is 8472, not IANA's 4789.
    pub port: u16,
    /// Learning.
    pub learning: bool,
    /// The device's MAC. It is given when the device is made, not set after: a device made
    /// without one has a random MAC, and udev (MACAddressPolicy=persistent) may replace it
    /// after vxlab set its own, which it never does to a MAC the creator gave.
    pub mac: Mac,
}

impl VxlanDevice<'_> {
    /// The `local` address the device is made with: only a device without a group has one.
    pub fn local(&self) -> Option<IpAddr> {
        match self.flood {
            Flood::Group(_) => None,
            Flood::HeadEnd => Some(self.local),
        }
    }
}

/// `ip link add NAME address MAC type vxlan id VNI (group G | local L) dev DEV dstport PORT
/// [nolearning]`.
pub fn link_add_vxlan(v: VxlanDevice<'_>) -> GuestCommand {
    let id = v.vni.to_string();
    let mac = v.mac.to_string();
    let mut c = GuestCommand::ip(&[
        "link", "add", v.name, "address", &mac, "type", "vxlan", "id", &id,
    ]);
    if let Flood::Group(g) = v.flood {
        c.args.extend(["group".into(), g.to_string()]);
    }
    if let Some(local) = v.local() {
        c.args.extend(["local".into(), local.to_string()]);
    }
    c.args.extend([
        "dev".into(),
        v.dev.to_string(),
        "dstport".into(),
        v.port.to_string(),
    ]);
    if !v.learning {
        c.args.push("nolearning".into());
    }
    c
}

/// `ip addr add ADDRESS dev DEV`; `nodad` for IPv6: duplicate address detection would hold
/// the address back for seconds, and vxlab already guarantees the addresses are unique.
pub fn addr_add(address: IpNet, dev: &str) -> GuestCommand {
    let mut c = GuestCommand::ip(&["addr", "add", &address.to_string(), "dev", dev]);
    if address.addr().is_ipv6() {
        c.args.push("nodad".into());
    }
    c
}

/// `ip addr del ADDRESS dev DEV`.
pub fn addr_del(address: IpNet, dev: &str) -> GuestCommand {
    GuestCommand::ip(&["addr", "del", &address.to_string(), "dev", dev])
}

/// `ip route add SUBNET dev DEV`: the connected route an address normally brings.
pub fn route_add(subnet: IpNet, dev: &str) -> GuestCommand {
    GuestCommand::ip(&["route", "add", &subnet.trunc().to_string(), "dev", dev])
}

/// `ip route del [TYPE] DST [via GW] [dev DEV]`: removes one route, named as `ip route show`
/// lists it. `kind` is one of the known route types, or left out.
pub fn route_del(
    kind: Option<&str>,
    dst: IpNet,
    gateway: Option<IpAddr>,
    dev: Option<&str>,
) -> GuestCommand {
    let mut c = GuestCommand::ip(&["route", "del"]);
    if let Some(k) = kind.filter(|k| crate::observe::ROUTE_TYPES.contains(k)) {
        c.args.push(k.to_string());
    }
    // `default` as `ip route` prints it, where `ip` can tell the family: IPv4, or from the
    // gateway.
    let default = dst.prefix_len() == 0 && (dst.addr().is_ipv4() || gateway.is_some());
    c.args.push(if default {
        "default".into()
    } else {
        dst.to_string()
    });
    if let Some(g) = gateway {
        c.args.extend(["via".into(), g.to_string()]);
    }
    if let Some(d) = dev {
        c.args.extend(["dev".into(), d.to_string()]);
    }
    c
}

/// `ip neigh flush dev DEV`: forgets the overlay neighbours (ARP or ND) on a device.
pub fn neigh_flush(dev: &str) -> GuestCommand {
    GuestCommand::ip(&["neigh", "flush", "dev", dev])
}

/// `ip neigh del ADDRESS dev DEV`.
pub fn neigh_del(address: IpAddr, dev: &str) -> GuestCommand {
    GuestCommand::ip(&["neigh", "del", &address.to_string(), "dev", dev])
}

/// `bridge fdb append 00:00:00:00:00:00 dev DEV dst DST [via VIA]`: a flood entry. `via` is
/// the underlay device a multicast `dst` is reached through.
pub fn flood_entry_add(dev: &str, dst: IpAddr, via: Option<&str>) -> GuestCommand {
    let dst = dst.to_string();
    let mut c = GuestCommand::bridge(&["fdb", "append", ZERO_MAC, "dev", dev, "dst", &dst]);
    if let Some(via) = via {
        c.args.extend(["via".into(), via.to_string()]);
    }
    c
}

/// `bridge fdb del 00:00:00:00:00:00 dev DEV dst DST`: removes one flood entry.
pub fn flood_entry_del(dev: &str, dst: IpAddr) -> GuestCommand {
    let dst = dst.to_string();
    GuestCommand::bridge(&["fdb", "del", ZERO_MAC, "dev", dev, "dst", &dst])
}

/// `bridge fdb replace MAC dev DEV dst DST`: adds or corrects a static entry.
pub fn fdb_replace(mac: Mac, dev: &str, dst: IpAddr) -> GuestCommand {
    let (mac, dst) = (mac.to_string(), dst.to_string());
    GuestCommand::bridge(&["fdb", "replace", &mac, "dev", dev, "dst", &dst])
}

/// `bridge fdb del MAC dev DEV`.
pub fn fdb_del(mac: Mac, dev: &str) -> GuestCommand {
    GuestCommand::bridge(&["fdb", "del", &mac.to_string(), "dev", dev])
}

/// `ping -c COUNT [-i INTERVAL] -W WAIT -q TO`: `count` echo requests, waiting at most `wait`
/// seconds for the last reply.
pub fn ping(to: IpAddr, count: u32, interval: Option<&str>, wait: u32) -> GuestCommand {
    ping_via(None, to, count, interval, wait)
}

/// [`ping`] sent out of device `dev` (`-I DEV`) when given: the kernel then treats `to` as on
/// that link even without a route to it, so the echo requests go into that vxlan anyway.
pub fn ping_via(
    dev: Option<&str>,
    to: IpAddr,
    count: u32,
    interval: Option<&str>,
    wait: u32,
) -> GuestCommand {
    let mut c = GuestCommand::new(Program::Ping, Prints::Text, &["-c", &count.to_string()]);
    if let Some(i) = interval {
        c.args.extend(["-i".into(), i.to_string()]);
    }
    if let Some(d) = dev {
        c.args.extend(["-I".into(), d.to_string()]);
    }
    c.args
        .extend(["-W".into(), wait.to_string(), "-q".into(), to.to_string()]);
    c
}

/// Commands that read a guest; with `json` each prints JSON (`-j`), otherwise text for an
/// `ip` that has no `-j`.
pub mod read {
    use super::{GuestCommand, Prints, Program};

    /// With `json`, `ip` reads all ask for details too (`-j -d`): the links need them, and
    /// reads with the same options run as one `ip -batch` process; the JSON of the others only
    /// gains fields. The text forms keep `-d` to the links, whose text parser expects it.
    fn with_json(program: Program, json: bool, args: &[&str]) -> GuestCommand {
        let mut all: Vec<&str> = Vec::with_capacity(args.len() + 2);
        if json {
            all.push("-j");
            if program == Program::Ip && args.first() != Some(&"-d") {
                all.push("-d");
            }
        }
        all.extend(args);
        let prints = if json { Prints::Json } else { Prints::Text };
        GuestCommand::new(program, prints, &all)
    }

    /// Every link with details: `ip -j -d link show`.
    pub fn links(json: bool) -> GuestCommand {
        with_json(Program::Ip, json, &["-d", "link", "show"])
    }
    /// Every address: `ip -j -d addr show`.
    pub fn addresses(json: bool) -> GuestCommand {
        with_json(Program::Ip, json, &["addr", "show"])
    }
    /// Multicast memberships of `dev`: `ip -j -d maddr show dev DEV`.
    pub fn groups(json: bool, dev: &str) -> GuestCommand {
        with_json(Program::Ip, json, &["maddr", "show", "dev", dev])
    }
    /// Forwarding database of a vxlan device: `bridge -j fdb show dev DEV`.
    pub fn fdb(json: bool, dev: &str) -> GuestCommand {
        with_json(Program::Bridge, json, &["fdb", "show", "dev", dev])
    }
    /// Neighbours (ARP or ND) on a device: `ip -j -d neigh show dev DEV`.
    pub fn neighbours(json: bool, dev: &str) -> GuestCommand {
        with_json(Program::Ip, json, &["neigh", "show", "dev", dev])
    }
    /// The routing table: `ip -j -d route show`, or `ip -j -d -6 route show`.
    pub fn routes(json: bool, v6: bool) -> GuestCommand {
        if v6 {
            with_json(Program::Ip, json, &["-6", "route", "show"])
        } else {
            with_json(Program::Ip, json, &["route", "show"])
        }
    }

    /// Everything vxlab reads in one guest, in one batch: links, addresses and routes, the
    /// groups joined on every underlay device the guest uses, each vxlan device's neighbours,
    /// the IPv6 routes where the guest has IPv6, and each vxlan device's FDB. `ip` reads come
    /// together and `bridge` reads last, so a driver can run each kind as one process.
    #[derive(Debug, Clone)]
    pub struct GuestReads {
        /// The commands, in the order below.
        pub commands: Vec<GuestCommand>,
        /// Where the groups start (after links, addresses, routes).
        pub groups_at: usize,
        /// Where the neighbours start.
        pub neighbours_at: usize,
        /// Where the IPv6 routes are, if read.
        pub routes6_at: Option<usize>,
        /// Where the FDBs start; they run to the end.
        pub fdb_at: usize,
    }

    /// The reads of guest `g` (see [`GuestReads`]).
    pub fn guest(g: &crate::plan::GuestPlan, json: bool) -> GuestReads {
        let devs: std::collections::BTreeSet<&str> = std::iter::once(g.interface.as_str())
            .chain(g.vteps.iter().map(|v| v.dev.as_str()))
            .collect();
        let v6 = g.underlay.addr().is_ipv6() || g.vteps.iter().any(|v| v.address.addr().is_ipv6());
        let mut commands = vec![links(json), addresses(json), routes(json, false)];
        let groups_at = commands.len();
        commands.extend(devs.iter().map(|d| groups(json, d)));
        let neighbours_at = commands.len();
        commands.extend(g.vteps.iter().map(|v| neighbours(json, &v.device)));
        let routes6_at = v6.then(|| {
            commands.push(routes(json, true));
            commands.len() - 1
        });
        let fdb_at = commands.len();
        commands.extend(g.vteps.iter().map(|v| fdb(json, &v.device)));
        GuestReads {
            commands,
            groups_at,
            neighbours_at,
            routes6_at,
            fdb_at,
        }
    }
}

/// `ip monitor` of what the class server's live tables show (links, addresses, routes,
/// neighbours): it prints a line whenever one changes, and the server reads the guest again.
pub fn monitor() -> GuestCommand {
    GuestCommand::new(
        Program::Ip,
        Prints::Text,
        &["monitor", "link", "address", "route", "neigh"],
    )
}

/// The readiness commands, in the order [`crate::iproute2::Readiness::from_outputs`] reads
/// them: the kernel's release, the vxlan module, `ip link help`, whether `ip -j` prints JSON,
/// and `ip -V`.
pub fn readiness() -> Vec<GuestCommand> {
    vec![
        GuestCommand::new(Program::Uname, Prints::Text, &["-r"]),
        // Loaded or built in, or a module modprobe can find.
        GuestCommand::new(
            Program::Sh,
            Prints::Text,
            &["-c", "test -d /sys/module/vxlan || modprobe -n -q vxlan"],
        ),
        // Old releases print the help, type list included, on stderr.
        GuestCommand::new(Program::Ip, Prints::Text, &["link", "help"]),
        // Whether this `ip` knows `-j` is what is asked: its output may be text.
        GuestCommand::new(
            Program::Ip,
            Prints::Text,
            &["-j", "link", "show", "dev", "lo"],
        ),
        GuestCommand::new(Program::Ip, Prints::Text, &["-V"]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest_of(file: &str, name: &str) -> crate::plan::GuestPlan {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("labs")
            .join(file);
        let lab = crate::lab::parse(&std::fs::read_to_string(&path).unwrap(), &path).unwrap();
        crate::plan::plan(&lab).guest(name).unwrap().clone()
    }

    #[test]
    fn a_guest_is_read_ip_first_then_bridge_and_ipv6_routes_only_where_it_has_ipv6() {
        let r = read::guest(&guest_of("two-netns.yaml", "vm-a"), true);
        let lines: Vec<String> = r.commands.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "ip -j -d link show",
                "ip -j -d addr show",
                "ip -j -d route show",
                "ip -j -d maddr show dev eth0",
                "ip -j -d neigh show dev vxlan0",
                "bridge -j fdb show dev vxlan0",
            ]
        );
        assert_eq!(
            (r.groups_at, r.neighbours_at, r.routes6_at, r.fdb_at),
            (3, 4, None, 5)
        );
        let r = read::guest(&guest_of("ipv6.yaml", "vm-a"), false);
        let at = r.routes6_at.expect("an IPv6 overlay reads IPv6 routes");
        assert_eq!(r.commands[at].to_string(), "ip -6 route show");
        assert!(r.commands[r.fdb_at..]
            .iter()
            .all(|c| c.program == Program::Bridge));
        assert!(r.commands[..r.fdb_at]
            .iter()
            .all(|c| c.program == Program::Ip));
    }

    #[test]
    fn the_seed_commands_read_as_a_student_types_them() {
        let c = link_add_vxlan(VxlanDevice {
            name: "vxlan0",
            vni: 42,
            flood: &Flood::Group("239.1.1.1".parse().unwrap()),
            local: "192.168.10.2".parse().unwrap(),
            dev: "eth0",
            port: 4789,
            learning: true,
            mac: "02:ce:00:00:2a:01".parse().unwrap(),
        });
        assert_eq!(
            c.to_string(),
            "ip link add vxlan0 address 02:ce:00:00:2a:01 type vxlan id 42 group 239.1.1.1 dev \
             eth0 dstport 4789"
        );
        assert_eq!(link_up("vxlan0").to_string(), "ip link set up vxlan0");
        assert_eq!(
            addr_add("fd00:42::2/64".parse().unwrap(), "vxlan0").to_string(),
            "ip addr add fd00:42::2/64 dev vxlan0 nodad"
        );
        assert_eq!(
            read::fdb(true, "vxlan0").to_string(),
            "bridge -j fdb show dev vxlan0"
        );
        assert_eq!(read::links(false).to_string(), "ip -d link show");
    }

    #[test]
    fn built_tools_replace_only_the_program() {
        let tools = Tools {
            ip: "/opt/b/ip".into(),
            bridge: "/opt/b/bridge".into(),
            ..Tools::default()
        };
        assert_eq!(link_up("x").argv(&tools)[0], "/opt/b/ip");
        assert_eq!(
            fdb_del(Mac([2, 0, 0, 0, 0, 1]), "x").argv(&tools)[0],
            "/opt/b/bridge"
        );
        // A device named like the program is an argument, and stays one.
        assert_eq!(
            link_up("ip").argv(&tools),
            ["/opt/b/ip", "link", "set", "up", "ip"]
        );
        assert_eq!(
            ping("10.0.0.1".parse().unwrap(), 1, None, 1).argv(&tools)[0],
            "ping"
        );
    }

    #[test]
    fn quoting_keeps_plain_words_and_quotes_the_rest() {
        assert_eq!(shell_quote("192.168.42.2/24"), "192.168.42.2/24");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
